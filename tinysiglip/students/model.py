"""TinySigLIP: timm image tower + compact text tower + projection heads to the teacher width."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tinysiglip.errors import TinySigLIPError

from .image_tower import create_image_tower
from .text import TextTower
from .vocab import TokenVocab

CONFIG_NAME = "student_config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.json"
PROCESSOR_SUBDIR = "processor"
STUDENT_FORMAT_VERSION = 1


def _count(module_or_params: Any) -> int:
    params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else module_or_params
    return int(sum(p.numel() for p in params))


class StudentFileError(TinySigLIPError, ValueError):
    """A saved student's files cannot be read (the user's to fix: a clean error, not a traceback)."""


class TinySigLIP(nn.Module):
    """Student for SigLIP distillation.

    ``encode_image`` takes float pixels ALREADY normalised with the teacher's mean/std, (B, 3, H, W);
    ``encode_text`` takes the teacher's token ids, (B, L<=64). Both return (B, embed_dim) projected,
    NOT L2-normalised embeddings. ``logit_scale`` (log-space, init log 10) and ``logit_bias``
    (init -10) are learnable scalars for the sigmoid loss: ``logits = logit_scale.exp() * cos + logit_bias``.
    """

    def __init__(
        self,
        image_tower: nn.Module,
        image_width: int,
        text_tower: TextTower,
        *,
        embed_dim: int,
        config: Mapping[str, Any] | None = None,
        logit_scale_init: float = math.log(10.0),
        logit_bias_init: float = -10.0,
    ) -> None:
        super().__init__()
        self.image_tower = image_tower
        self.text_tower = text_tower
        self.embed_dim = int(embed_dim)
        self.image_proj = nn.Linear(int(image_width), self.embed_dim)
        self.text_proj = nn.Linear(text_tower.width, self.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        self.logit_bias = nn.Parameter(torch.tensor(float(logit_bias_init)))
        self.config: dict[str, Any] = json.loads(json.dumps(dict(config or {})))
        self.processor_dir: Path | None = None
        self._encoder: TinySigLIPEncoder | None = None

    # ------------------------------------------------------------------ core
    @classmethod
    def from_config(cls, config: Mapping[str, Any], vocab: TokenVocab) -> TinySigLIP:
        """Build a student from its architecture config (what ``create_student`` resolves from the
        registry and ``save_pretrained`` writes): ``embed_dim``, ``image_size``, ``pretrained`` and
        ``resolved`` (timm image model + kwargs, text tower shape). Weights are freshly initialised."""
        resolved = config["resolved"]
        image_tower, image_width = create_image_tower(
            resolved["image_model"],
            image_size=int(config["image_size"]),
            pretrained=bool(config.get("pretrained", False)),
            drop_path_rate=resolved["drop_path_rate"],
            **resolved["image_kwargs"],
        )
        text_tower = TextTower(
            vocab,
            width=int(resolved["text_width"]),
            layers=int(resolved["text_layers"]),
            heads=int(resolved["text_heads"]),
            mlp_ratio=float(resolved["text_mlp_ratio"]),
            max_length=int(resolved["text_max_length"]),
            dropout=float(resolved["text_dropout"]),
        )
        config = {**config, "image_width": image_width}
        return cls(image_tower, image_width, text_tower, embed_dim=int(config["embed_dim"]), config=config)

    @property
    def vocab(self) -> TokenVocab:
        return self.text_tower.vocab

    @property
    def image_size(self) -> int | None:
        return self.config.get("image_size")

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W) floats, got {tuple(pixels.shape)}")
        if not pixels.is_floating_point():
            raise ValueError(
                "pixels must be float and normalised with the teacher's mean/std (got integer tensor)"
            )
        feats = self.image_tower(pixels.to(self.image_proj.weight.dtype))
        if feats.ndim != 2:  # some timm models return (B, C, 1, 1) or tokens
            feats = feats.flatten(2).mean(-1) if feats.ndim == 4 else feats.reshape(feats.shape[0], -1)
        return self.image_proj(feats)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_proj(self.text_tower(input_ids))

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "image_embeds": self.encode_image(pixels),
            "text_embeds": self.encode_text(input_ids),
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part; text_tower includes its (compact) token embedding table."""
        counts = {
            "image_tower": _count(self.image_tower),
            "text_tower": _count(self.text_tower),
            "heads": _count(self.image_proj)
            + _count(self.text_proj)
            + self.logit_scale.numel()
            + self.logit_bias.numel(),
        }
        counts["total"] = sum(counts.values())
        return counts

    # ------------------------------------------------------------ save / load
    def save_pretrained(
        self,
        save_dir: str | Path,
        *,
        processor: Any = None,
        processor_dir: str | Path | None = None,
        extra_config: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``model.safetensors``, ``student_config.json``, ``vocab.json`` (and ``processor/``).

        ``processor`` / ``processor_dir``: the teacher's processor -- a directory (teacher checkpoint
        or processor folder; only processor/tokenizer files are loaded and re-saved, never the
        teacher weights), an object with ``save_pretrained`` (processor, tokenizer, image processor),
        or a list/tuple of such objects (e.g. ``[tokenizer, image_processor]``).
        """
        from safetensors.torch import save_file

        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(save_dir / WEIGHTS_NAME), metadata={"format": "pt"})
        config = {
            "format_version": STUDENT_FORMAT_VERSION,
            **self.config,
            "extra": json.loads(json.dumps(dict(extra_config or {}))),
            "parameter_counts": self.parameter_counts(),
        }
        (save_dir / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
        self.vocab.save(save_dir / VOCAB_NAME)
        sources = [s for s in (processor, processor_dir) if s is not None]
        for src in sources:
            _save_processor(src, save_dir / PROCESSOR_SUBDIR)
        return save_dir

    @classmethod
    def from_pretrained(cls, load_dir: str | Path, *, map_location: str | torch.device = "cpu") -> TinySigLIP:
        return load_student(load_dir, map_location=map_location)

    # --------------------------------------------------- processor-based API
    def attach_processor(
        self, processor_dir: str | Path | None = None, *, tokenizer=None, image_processor=None
    ):
        """Use this processor for ``encode_images`` / ``encode_texts`` (loaded lazily)."""
        if processor_dir is not None:
            self.processor_dir = Path(processor_dir)
        self._encoder = TinySigLIPEncoder(
            self, processor_dir=self.processor_dir, tokenizer=tokenizer, image_processor=image_processor
        )
        return self._encoder

    def _get_encoder(self) -> TinySigLIPEncoder:
        if self._encoder is None:
            if self.processor_dir is None:
                raise RuntimeError(
                    "no processor attached: load the student with from_pretrained(dir) from a directory "
                    "saved with save_pretrained(..., processor=...), or call attach_processor(...)"
                )
            self.attach_processor()
        return self._encoder

    def encode_images(self, images: list, *, batch_size: int = 64) -> torch.Tensor:
        """PIL images -> (N, embed_dim) L2-normalised embeddings (through the teacher's processor)."""
        return self._get_encoder().encode_images(images, batch_size=batch_size)

    def encode_texts(self, texts: list[str], *, batch_size: int = 256) -> torch.Tensor:
        """Captions -> (N, embed_dim) L2-normalised embeddings (lowercased, padded to 64)."""
        return self._get_encoder().encode_texts(texts, batch_size=batch_size)


def _save_processor(src: Any, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(src, (list, tuple)):
        for item in src:
            _save_processor(item, out_dir)
        return
    if hasattr(src, "save_pretrained"):
        src.save_pretrained(str(out_dir))
        return
    path = Path(src)
    if not path.is_dir():
        raise ValueError(
            f"processor source {src!r} is neither a directory nor an object with save_pretrained"
        )
    tokenizer, image_processor, processor = _load_processor_parts(path)
    if processor is not None:
        processor.save_pretrained(str(out_dir))
        return
    if tokenizer is None and image_processor is None:
        raise ValueError(f"no tokenizer or image processor could be loaded from {path}")
    for part in (tokenizer, image_processor):
        if part is not None:
            part.save_pretrained(str(out_dir))


def _load_processor_parts(path: Path):
    """-> (tokenizer, image_processor, processor_or_None) from a local directory (no Hub)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    processor = tokenizer = image_processor = None
    errors = []
    try:
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - fall back to the separate parts
        errors.append(f"AutoProcessor: {e}")
    if processor is not None:
        tokenizer = getattr(processor, "tokenizer", None)
        image_processor = getattr(processor, "image_processor", None)
        if tokenizer is None and image_processor is None:
            # AutoProcessor may return a bare tokenizer or image processor.
            if hasattr(processor, "pad_token_id"):
                tokenizer = processor
            elif hasattr(processor, "image_mean"):
                image_processor = processor
            processor = None
        elif tokenizer is None or image_processor is None:
            processor = None
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # noqa: BLE001
            errors.append(f"AutoTokenizer: {e}")
    if image_processor is None:
        try:
            image_processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # noqa: BLE001
            errors.append(f"AutoImageProcessor: {e}")
    return tokenizer, image_processor, processor


class TinySigLIPEncoder:
    """Inference wrapper: PIL images / raw captions -> L2-normalised student embeddings.

    Uses the teacher's processor saved with the student (``<dir>/processor``): captions are lowercased,
    padded to ``max_length=64`` (``padding="max_length"``, ``truncation=True``); images go through the
    image processor's resize / rescale / mean-std normalisation. transformers is imported lazily.
    """

    def __init__(
        self,
        model: TinySigLIP,
        *,
        processor_dir: str | Path | None = None,
        tokenizer: Any = None,
        image_processor: Any = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model
        self.processor_dir = Path(processor_dir) if processor_dir is not None else None
        self._tokenizer = tokenizer
        self._image_processor = image_processor
        self._loaded = False
        self.device = torch.device(device) if device is not None else None
        self.max_length = int(model.text_tower.max_length)

    @classmethod
    def from_pretrained(
        cls, load_dir: str | Path, *, device: str | torch.device = "cpu"
    ) -> TinySigLIPEncoder:
        model = load_student(load_dir, map_location=device)
        return cls(model, processor_dir=model.processor_dir, device=device)

    def _load(self) -> None:
        if self._loaded or (self._tokenizer is not None and self._image_processor is not None):
            return
        self._loaded = True
        if self.processor_dir is None or not self.processor_dir.is_dir():
            return
        tok, img, _ = _load_processor_parts(self.processor_dir)
        self._tokenizer = self._tokenizer or tok
        self._image_processor = self._image_processor or img

    @property
    def tokenizer(self):
        self._load()
        if self._tokenizer is None:
            raise RuntimeError(f"no tokenizer found for this student (processor dir: {self.processor_dir})")
        return self._tokenizer

    @property
    def image_processor(self):
        self._load()
        if self._image_processor is None:
            raise RuntimeError(
                f"no image processor found for this student (processor dir: {self.processor_dir})"
            )
        return self._image_processor

    def _device(self) -> torch.device:
        return self.device or self.model.logit_scale.device

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is not None and pad != self.model.vocab.pad_id:
            raise ValueError(
                f"tokenizer pad id {pad} differs from the student's vocab pad id {self.model.vocab.pad_id}: "
                "this processor is not the teacher's the student was trained with"
            )
        enc = self.tokenizer(
            [t.lower() for t in texts],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        return enc["input_ids"]

    def preprocess(self, images: list) -> torch.Tensor:
        """PIL images -> (B, 3, H, W) float pixels normalised like the teacher's."""
        proc = self.image_processor
        rgb = [im.convert("RGB") if getattr(im, "mode", "RGB") != "RGB" else im for im in images]
        pixels = proc(images=rgb, return_tensors="pt")["pixel_values"]
        if pixels.ndim == 4:
            return pixels
        # Patchified (naflex) processors: resize to the student's square size and normalise ourselves.
        import numpy as np
        from PIL import Image

        size = int(self.model.image_size)
        mean = torch.tensor(proc.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(proc.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        resample = getattr(proc, "resample", Image.BILINEAR)
        arr = np.stack([np.asarray(im.resize((size, size), resample=resample)) for im in rgb])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
        return (x - mean) / std

    def _run(self, fn, batches) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            outs = []
            with torch.inference_mode():
                for b in batches:
                    outs.append(F.normalize(fn(b.to(self._device())).float(), dim=-1).cpu())
        finally:
            self.model.train(was_training)
        if not outs:
            return torch.zeros(0, self.model.embed_dim)
        return torch.cat(outs)

    def encode_images(self, images: list, *, batch_size: int = 64) -> torch.Tensor:
        images = list(images)
        batches = (self.preprocess(images[i : i + batch_size]) for i in range(0, len(images), batch_size))
        return self._run(self.model.encode_image, batches)

    def encode_texts(self, texts: list[str], *, batch_size: int = 256) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        batches = (self.tokenize(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size))
        return self._run(self.model.encode_text, batches)


def load_student(load_dir: str | Path, *, map_location: str | torch.device = "cpu") -> TinySigLIP:
    """Rebuild a student saved by ``save_pretrained`` and load its weights (strict). Returns eval mode."""
    from safetensors.torch import load_file

    load_dir = Path(load_dir)
    cfg_path = load_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: not a TinySigLIP student directory")
    try:
        config = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StudentFileError(
            f"{cfg_path}: not valid JSON ({error}); re-export the student (rerun `tinysiglip train` with the "
            "same --run-dir) or restore the file"
        ) from None
    version = config.get("format_version", STUDENT_FORMAT_VERSION)
    if version != STUDENT_FORMAT_VERSION:
        raise ValueError(f"unsupported student format_version {version}")
    vocab = TokenVocab.load(load_dir / VOCAB_NAME)
    if "resolved" not in config:
        raise ValueError(
            f"{cfg_path} records no resolved architecture: not saved by TinySigLIP.save_pretrained"
        )
    # Rebuilt from the architecture it was saved with: no registry look-up, no pretrained download.
    architecture = {
        "name": config.get("name"),
        "overrides": config.get("overrides", {}),
        "embed_dim": config["embed_dim"],
        "image_size": config["image_size"],
        "pretrained": False,
        "scale": config.get("scale", "full"),
        "resolved": config["resolved"],
    }
    model = TinySigLIP.from_config(architecture, vocab)
    model.config["pretrained"] = bool(config.get("pretrained", False))
    if config.get("extra"):
        model.config["extra"] = config["extra"]
    if config.get("training_cache"):  # teacher fingerprint, view, width, size of its training cache
        model.config["training_cache"] = config["training_cache"]
    state = load_file(str(load_dir / WEIGHTS_NAME), device="cpu")
    model.load_state_dict(state, strict=True)
    model.to(map_location)
    proc_dir = load_dir / PROCESSOR_SUBDIR
    model.processor_dir = proc_dir if proc_dir.is_dir() else None
    return model.eval()
