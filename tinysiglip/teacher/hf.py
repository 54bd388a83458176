"""Load a SigLIP / SigLIP 2 teacher (Hub id or local folder) and embed images and captions with it.

Two views of an image give the teacher's image embedding:

- the teacher's own view, ``embed_images(list[PIL])``: the processor + model on the original image,
  what any user of the checkpoint does. For a NaFlex (``Siglip2Model``) teacher the processor keeps
  the aspect ratio: a 640x427 photo becomes 13x19 patches within ``max_num_patches``.
- the student's view, ``embed_pixels(uint8)`` on ``resize_to_uint8(pil)``: the square the cache stores
  and the student reads. ``resize_to_uint8`` resizes exactly as the loaded image processor does
  (torchvision backend: ``tvF.resize`` with antialias on the uint8 tensor; PIL backend:
  ``PIL.Image.resize``).

For fixed-resolution teachers (``SiglipModel``) the processor itself squashes every image to the
square, so the two views agree to float rounding (tests/test_teacher.py). For NaFlex teachers they do
NOT: the square has another patch grid than the processor's aspect-kept one, and on real photos the
two embeddings of one image differ (cosine 0.88 min / 0.975 mean, issue 10). The cache therefore
stores the teacher's own view by default (``teacher_view="teacher"``) and the student's view only
when asked (``"student"``); see ``tinysiglip.cache.build``. Mixing backends (PIL-resized pixels
through a torchvision processor) differs by a few intensity levels, not by float rounding.

Text: captions are lowercased, right-padded to ``max_length=64`` (the text tower pools the LAST
position, and big_vision trained with right padding; transformers' ``Siglip2Tokenizer`` defaults to
left padding, which we override) and fed without an attention mask, as big_vision trained them.

Identity: ``content_fingerprint()`` hashes the teacher's files (weights, config, processor and
tokenizer files; ``tinysiglip.teacher.identity``), so a copied folder is the same teacher and a
retrained one is not.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tinysiglip.errors import TinySigLIPError

MAX_TEXT_LENGTH = 64
TEACHER_VIEWS = ("teacher", "student")
TeacherView = Literal["teacher", "student"]


class TeacherLoadError(TinySigLIPError):
    """The teacher could not be loaded (Hub unreachable, missing files, unsupported model type)."""


def _hub_unreachable_message(source: str, cause: BaseException) -> str:
    return (
        f"Could not load teacher {source!r}: the Hugging Face Hub could not be reached "
        f"({type(cause).__name__}: {cause}). "
        "Either download it on a machine with Hub access "
        f"(`huggingface-cli download {source} --local-dir <folder>` or "
        f"`huggingface_hub.snapshot_download({source!r}, local_dir=<folder>)`), copy the folder here "
        "and pass that folder as the teacher; or set HF_HOME to a populated Hugging Face cache that "
        "already holds it; or use the local world (`tinysiglip teacher train-local ...`, then pass the "
        "trained teacher's folder)."
    )


def _looks_like_hub_failure(error: BaseException) -> bool:
    """True when ``error`` (or its cause chain) says the Hub could not be reached or the id was not
    found offline, as opposed to a broken local checkpoint."""
    try:
        from huggingface_hub import errors as hub_errors
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        hub_errors = None
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 10:
        name = type(current).__name__
        if hub_errors is not None and isinstance(
            current,
            (
                hub_errors.OfflineModeIsEnabled,
                hub_errors.LocalEntryNotFoundError,
                hub_errors.RepositoryNotFoundError,
            ),
        ):
            return True
        if name in {"ConnectionError", "ConnectTimeout", "ReadTimeout", "ConnectError", "TimeoutException"}:
            return True
        text = str(current).lower()
        if any(
            marker in text
            for marker in (
                "offline",
                "couldn't connect",
                "could not connect",
                "connection",
                "we couldn't connect",
                "not a local folder and is not a valid model identifier",
                "cannot find the requested files",
            )
        ):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _sha256_json(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_embedding(output: Any) -> torch.Tensor:
    """``get_*_features`` returns BaseModelOutputWithPooling in transformers 5.x (a tensor before)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None and isinstance(output, (tuple, list)):
        pooled = output[1] if len(output) > 1 else output[0]
    if pooled is None:
        raise TypeError(f"cannot find the pooled embedding in {type(output).__name__}")
    return pooled


def _resample_code(resample: Any) -> int:
    """PIL resample code (0 nearest, 2 bilinear, 3 bicubic, ...) from what the processor stores."""
    if resample is None:
        return 2
    try:
        return int(resample)
    except (TypeError, ValueError):
        pass
    from torchvision.transforms import InterpolationMode

    mapping = {
        InterpolationMode.NEAREST: 0,
        InterpolationMode.NEAREST_EXACT: 0,
        InterpolationMode.LANCZOS: 1,
        InterpolationMode.BILINEAR: 2,
        InterpolationMode.BICUBIC: 3,
        InterpolationMode.BOX: 4,
        InterpolationMode.HAMMING: 5,
    }
    return mapping.get(resample, 2)


@dataclass
class Teacher:
    """A frozen SigLIP / SigLIP 2 model plus its processor (see docs/architecture.md)."""

    model: Any
    processor: Any
    source: str
    revision: str | None = None
    device: str = "cpu"
    max_length: int = MAX_TEXT_LENGTH
    folder: Path | None = None  # where the teacher's files lie (None: built in memory)
    kind: Literal["siglip", "siglip2"] = field(init=False)
    embed_dim: int = field(init=False)
    image_size: int = field(init=False)
    patch_size: int = field(init=False)
    image_mean: tuple[float, float, float] = field(init=False)
    image_std: tuple[float, float, float] = field(init=False)
    rescale_factor: float = field(init=False)
    resample: int = field(init=False)
    logit_scale: float = field(init=False)
    logit_bias: float = field(init=False)

    def __post_init__(self) -> None:
        config = self.model.config
        model_type = getattr(config, "model_type", None)
        if model_type not in ("siglip", "siglip2"):
            raise TeacherLoadError(
                f"Teacher {self.source!r} has model_type {model_type!r}; expected 'siglip' (SigLIP 2 "
                "fixed-resolution checkpoints) or 'siglip2' (NaFlex checkpoints)."
            )
        self.kind = model_type
        image_processor = self.processor.image_processor
        vision = config.vision_config
        self.patch_size = int(vision.patch_size)
        self.embed_dim = int(vision.hidden_size)
        if self.kind == "siglip":
            size = image_processor.size
            height = size["height"] if "height" in size else size.get("shortest_edge")
            width = size["width"] if "width" in size else height
            if height != width:
                raise TeacherLoadError(f"Teacher {self.source!r}: non-square processor size {dict(size)}")
            self.image_size = int(height)
        else:
            # NaFlex: a square image of side p * floor(sqrt(max_num_patches)) uses the patch budget.
            patch_size = int(getattr(image_processor, "patch_size", self.patch_size))
            max_num_patches = int(getattr(image_processor, "max_num_patches", vision.num_patches))
            if patch_size != self.patch_size:
                raise TeacherLoadError(
                    f"Teacher {self.source!r}: processor patch_size {patch_size} != model {self.patch_size}"
                )
            self.image_size = patch_size * math.isqrt(max_num_patches)
        self.image_mean = tuple(float(v) for v in image_processor.image_mean)
        self.image_std = tuple(float(v) for v in image_processor.image_std)
        self.rescale_factor = float(image_processor.rescale_factor)
        self.resample = _resample_code(getattr(image_processor, "resample", None))
        self.logit_scale = float(self.model.logit_scale.detach().exp().item())
        self.logit_bias = float(self.model.logit_bias.detach().item())
        self._content_files: dict[str, str] | None = None
        self._fingerprints: dict[str, str] | None = None
        tokenizer = self.processor.tokenizer
        # big_vision trained with right padding and pools the last position: never pad on the left.
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "right"

    # -- properties -------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_processor(self):
        return self.processor.image_processor

    @property
    def uses_torchvision_resize(self) -> bool:
        from transformers.image_processing_backends import TorchvisionBackend

        return isinstance(self.image_processor, TorchvisionBackend)

    # -- text -------------------------------------------------------------------------------------

    def tokenize(self, captions: list[str]) -> torch.LongTensor:
        """(B, 64) token ids: lowercased, right-padded to max_length, truncated."""
        encoded = self.tokenizer(
            [caption.lower() for caption in captions],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        return encoded["input_ids"].long()

    @torch.no_grad()
    def embed_token_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 text embeddings, NOT normalised (no attention mask, as trained)."""
        input_ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        output = self.model.get_text_features(input_ids=input_ids)
        return _as_embedding(output).float().cpu()

    def embed_texts(self, captions: list[str]) -> torch.Tensor:
        return self.embed_token_ids(self.tokenize(captions))

    def special_token_ids(self) -> list[int]:
        tokenizer = self.tokenizer
        ids = set(getattr(tokenizer, "all_special_ids", []) or [])
        for name in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id"):
            value = getattr(tokenizer, name, None)
            if isinstance(value, int):
                ids.add(value)
        return sorted(int(i) for i in ids)

    # -- images -----------------------------------------------------------------------------------

    def resize_to_uint8(self, image) -> np.ndarray:
        """(3, H, W) uint8 square pixels, resized exactly as the loaded image processor resizes."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise TypeError(f"resize_to_uint8 takes a PIL image, got {type(image).__name__}")
        if image.mode != "RGB":
            image = image.convert("RGB")
        side = self.image_size
        if self.uses_torchvision_resize:
            from torchvision.transforms.v2 import functional as tvF
            from transformers.image_utils import pil_torch_interpolation_mapping

            tensor = tvF.pil_to_tensor(image)
            interpolation = pil_torch_interpolation_mapping[self.resample]
            resized = tvF.resize(tensor, [side, side], interpolation=interpolation, antialias=True)
            return resized.numpy().astype(np.uint8, copy=False)
        resized = image.resize((side, side), resample=self.resample)
        return np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1).copy()

    def normalize_pixels(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> float32 model input (rescale + mean/std of the processor)."""
        pixels = torch.as_tensor(pixels_uint8).to(self.device, torch.float32) * self.rescale_factor
        mean = torch.tensor(self.image_mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def naflex_inputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Square (B, C, H, W) -> Siglip2 inputs in the processor's layout: patches flattened as
        (p, p, C), row-major over the patch grid; all patches valid."""
        batch, channels, height, width = pixel_values.shape
        p = self.patch_size
        grid_h, grid_w = height // p, width // p
        patches = pixel_values.reshape(batch, channels, grid_h, p, grid_w, p)
        patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, grid_h * grid_w, p * p * channels)
        return {
            "pixel_values": patches,
            "pixel_attention_mask": torch.ones(
                batch, grid_h * grid_w, dtype=torch.int32, device=patches.device
            ),
            "spatial_shapes": torch.tensor(
                [[grid_h, grid_w]] * batch, dtype=torch.long, device=patches.device
            ),
        }

    @torch.no_grad()
    def embed_pixels(self, pixels_uint8: torch.Tensor) -> torch.Tensor:
        """(B, D) float32 image embeddings, NOT normalised, from (B, 3, S, S) uint8 pixels."""
        pixels = torch.as_tensor(pixels_uint8)
        if pixels.ndim == 3:
            pixels = pixels.unsqueeze(0)
        if pixels.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"embed_pixels expects (B, 3, {self.image_size}, {self.image_size}) uint8, got {tuple(pixels.shape)}"
            )
        pixel_values = self.normalize_pixels(pixels)
        if self.kind == "siglip2":
            output = self.model.get_image_features(**self.naflex_inputs(pixel_values))
        else:
            output = self.model.get_image_features(pixel_values=pixel_values)
        return _as_embedding(output).float().cpu()

    @torch.no_grad()
    def embed_images(self, images: list) -> torch.Tensor:
        """(B, D) float32 embeddings through the processor + model (NaFlex keeps the aspect ratio)."""
        inputs = self.image_processor(images=list(images), return_tensors="pt")
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].float()
        return _as_embedding(self.model.get_image_features(**inputs)).float().cpu()

    # -- the two views --------------------------------------------------------------------------

    @property
    def max_num_patches(self) -> int | None:
        """NaFlex patch budget as the processor file configures it (None for fixed-resolution teachers)."""
        if self.kind != "siglip2":
            return None
        return int(
            getattr(self.image_processor, "max_num_patches", self.model.config.vision_config.num_patches)
        )

    def views_differ(self) -> bool:
        """True when the teacher's own view of an image is not the stored square (NaFlex teachers)."""
        return self.kind == "siglip2"

    def describe_view(self, view: TeacherView) -> str:
        """One line for metadata and ``cache info``: how the stored image embeddings were computed."""
        if view not in TEACHER_VIEWS:
            raise ValueError(f"teacher view must be one of {', '.join(TEACHER_VIEWS)}, got {view!r}")
        if not self.views_differ():
            return "processor on the original image = the stored square (fixed-resolution teacher)"
        if view == "teacher":
            return (
                f"processor on the original image: aspect ratio kept, at most {self.max_num_patches} "
                f"patches of {self.patch_size} px (the student reads the stored {self.image_size} px square)"
            )
        return f"the stored {self.image_size} px square as {math.isqrt(self.max_num_patches or 0)}^2 patches"

    def view_inputs(self, image) -> dict[str, torch.Tensor]:
        """The processor's model inputs for ONE original image (batch of 1), ready for ``embed_view_inputs``.
        Per image, so that a thread pool can prepare a batch while the model runs."""
        inputs = self.image_processor(images=[image], return_tensors="pt")
        return {key: value for key, value in inputs.items()}

    @torch.no_grad()
    def embed_view_inputs(self, inputs: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """(B, D) float32 embeddings of images prepared one by one by ``view_inputs``."""
        batch = {key: torch.cat([item[key] for item in inputs]).to(self.device) for key in inputs[0]}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].float()
        return _as_embedding(self.model.get_image_features(**batch)).float().cpu()

    # -- identity ---------------------------------------------------------------------------------

    def fingerprints(self) -> dict[str, str]:
        """sha256 of the image-processor config and of the tokenizer (vocabulary + special tokens).
        Computed once per loaded teacher (a 256k-entry vocabulary takes seconds to serialise)."""
        if self._fingerprints is None:
            self._fingerprints = self._compute_fingerprints()
        return dict(self._fingerprints)

    def _compute_fingerprints(self) -> dict[str, str]:
        processor_dict = self.image_processor.to_dict()
        processor_dict.pop("_processor_class", None)
        tokenizer = self.tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            tokenizer_payload: Any = json.loads(backend.to_str())
            # The fast tokenizer records the padding/truncation of its last call: state, not identity.
            tokenizer_payload.pop("padding", None)
            tokenizer_payload.pop("truncation", None)
        else:
            tokenizer_payload = {"vocab": tokenizer.get_vocab()}
        tokenizer_payload = {
            "tokenizer": tokenizer_payload,
            "special_tokens": {str(k): str(v) for k, v in tokenizer.special_tokens_map.items()},
            "special_ids": self.special_token_ids(),
        }
        return {"processor": _sha256_json(processor_dict), "tokenizer": _sha256_json(tokenizer_payload)}

    def content_files(self) -> dict[str, str]:
        """{file name: sha256} of the files that make this teacher (see ``tinysiglip.teacher.identity``).

        A teacher built in memory (no folder) is hashed from its state dict, config and processor
        fingerprints instead; such a fingerprint never equals a folder's."""
        if self._content_files is None:
            from tinysiglip.teacher.identity import file_fingerprints

            if self.folder is not None:
                self._content_files = file_fingerprints(self.folder)
            else:
                self._content_files = self._in_memory_fingerprints()
        return dict(self._content_files)

    def content_fingerprint(self) -> str:
        from tinysiglip.teacher.identity import combine

        return combine(self.content_files())

    def _in_memory_fingerprints(self) -> dict[str, str]:
        weights = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            weights.update(name.encode())
            weights.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        config = self.model.config.to_dict()
        for key in ("transformers_version", "_name_or_path", "_commit_hash"):
            config.pop(key, None)
        return {
            "(in memory) state_dict": weights.hexdigest(),
            "(in memory) config": _sha256_json(config),
            **{f"(in memory) {k}": v for k, v in self.fingerprints().items()},
        }

    def info(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "revision": self.revision,
            "kind": self.kind,
            "model_class": type(self.model).__name__,
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "resample": self.resample,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "logit_scale": self.logit_scale,
            "logit_bias": self.logit_bias,
            "max_length": self.max_length,
            "vocab_size": int(self.model.config.text_config.vocab_size),
            "fingerprints": self.fingerprints(),
            "content_fingerprint": self.content_fingerprint(),
            "max_num_patches": self.max_num_patches,
            "views_differ": self.views_differ(),
        }


def load_teacher(source: str | Path, *, revision: str | None = None, device: str = "cpu") -> Teacher:
    """Load a SiglipModel / Siglip2Model and its processor through AutoModel / AutoProcessor.

    ``source`` is a Hub id (``google/siglip2-base-patch16-224``) or a local folder. The model is put in
    eval mode, float32, on ``device``. Raises TeacherLoadError with the way out when the Hub cannot be
    reached.
    """
    from transformers import AutoModel, AutoProcessor

    source_str = str(source)
    local = Path(source_str).expanduser()
    is_local = local.is_dir()
    if not is_local and source_str.startswith((".", "/", "~")):
        raise TeacherLoadError(f"Teacher folder {source_str!r} does not exist.")
    if is_local and not (local / "config.json").is_file():
        raise TeacherLoadError(
            f"Teacher folder {str(local)!r} has no config.json: it is not a saved Hugging Face model "
            "(expected the output of save_pretrained, e.g. `tinysiglip teacher train-local`)."
        )
    load_from = str(local) if is_local else source_str
    try:
        model = AutoModel.from_pretrained(load_from, revision=revision, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(load_from, revision=revision)
    except (OSError, ValueError) as error:  # huggingface_hub's offline/connection errors are OSErrors
        if not is_local and _looks_like_hub_failure(error):
            raise TeacherLoadError(_hub_unreachable_message(source_str, error)) from error
        raise TeacherLoadError(f"Could not load teacher {source_str!r}: {error}") from error
    except Exception as error:
        if not is_local and _looks_like_hub_failure(error):
            raise TeacherLoadError(_hub_unreachable_message(source_str, error)) from error
        raise
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise TeacherLoadError(
            f"Teacher {source_str!r}: AutoProcessor gave {type(processor).__name__}, which lacks an image "
            "processor or a tokenizer."
        )
    model = model.to(device=device, dtype=torch.float32).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    from tinysiglip.teacher.identity import teacher_folder

    return Teacher(
        model=model,
        processor=processor,
        source=str(local.resolve()) if is_local else source_str,
        revision=revision,
        device=device,
        folder=local.resolve() if is_local else teacher_folder(source_str, revision),
    )
