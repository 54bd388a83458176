"""Stand-ins for the real thing, made offline: SigLIP 2 checkpoints in their Hub layout and COCO-like photos.

The tiny teachers of ``tiny.py`` exercise the code paths; these exercise the *facts* of the real
checkpoints that tiny ones hide: a 256,000-entry Gemma vocabulary with ids spread over the whole range
(so a student that sized its table by the largest id would pay for 256k rows), the real processor files
(224 px squares for the fixed-resolution checkpoint, 16 px patches within 256 patches for NaFlex), the
real widths (768), and non-square JPEG photos such as COCO's 640x427 and 375x500.

What is real and what is not (written from knowledge of the checkpoints, not copied from the Hub,
which this machine cannot reach):

- ``config.json``: the values of ``google/siglip2-base-patch16-224`` (``model_type: siglip``) and
  ``google/siglip2-base-patch16-naflex`` (``model_type: siglip2``): width 768, MLP 3072, 12 heads, patch 16,
  224 px / 256 patches, text length 64, vocabulary 256,000, ``gelu_pytorch_tanh``, LayerNorm eps 1e-6.
  Layer counts are cut (1 per tower by default); the weights are random.
- ``preprocessor_config.json``: bilinear (``resample: 2``), rescale 1/255, mean = std = 0.5, no crop.
- ``tokenizer_config.json``: ``GemmaTokenizer``, ``<pad>/<eos>/<bos>/<unk>/<mask>`` at ids 0-4, no BOS,
  EOS appended. NOT verified against the Hub files: ``add_eos_token``/``add_bos_token``,
  ``model_max_length``, the text config's ``pad/bos/eos_token_id`` (left at the class defaults) and the
  ids of byte-fallback tokens (placed at 217-472 as in Gemma). The Hub repos also ship a SentencePiece
  ``tokenizer.model``; transformers 5 reads ``tokenizer.json`` only, so none is written here.
- The vocabulary: a BPE learnt on the given captions, its tokens scattered over ids 473..255,999 by a
  seeded permutation, the rest filled with ``<unusedN>`` entries no merge can produce.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

StandinName = Literal["siglip2-base-patch16-224", "siglip2-base-patch16-naflex"]
STANDINS: tuple[str, ...] = ("siglip2-base-patch16-224", "siglip2-base-patch16-naflex")
GEMMA_VOCAB_SIZE = 256_000
GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")  # ids 0..4
BYTE_FALLBACK_START = 217  # <0x00> .. <0xFF> occupy 217..472 in Gemma's vocabulary

_TOWER = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-06,
    "attention_dropout": 0.0,
}
_TEXT = {**_TOWER, "vocab_size": GEMMA_VOCAB_SIZE, "max_position_embeddings": 64, "projection_size": 768}

REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "siglip2-base-patch16-224": {
        "architectures": ["SiglipModel"],
        "model_type": "siglip",
        "initializer_factor": 1.0,
        "text_config": {**_TEXT, "model_type": "siglip_text_model"},
        "vision_config": {
            **_TOWER,
            "model_type": "siglip_vision_model",
            "image_size": 224,
            "patch_size": 16,
            "num_channels": 3,
        },
    },
    "siglip2-base-patch16-naflex": {
        "architectures": ["Siglip2Model"],
        "model_type": "siglip2",
        "initializer_factor": 1.0,
        "text_config": {**_TEXT, "model_type": "siglip2_text_model"},
        "vision_config": {
            **_TOWER,
            "model_type": "siglip2_vision_model",
            "num_patches": 256,
            "patch_size": 16,
            "num_channels": 3,
            "vision_use_head": True,
        },
    },
}

_IMAGE_COMMON = {
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "rescale_factor": 0.00392156862745098,
}
PREPROCESSOR_CONFIGS: dict[str, dict[str, Any]] = {
    "siglip2-base-patch16-224": {
        **_IMAGE_COMMON,
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "SiglipProcessor",
        "size": {"height": 224, "width": 224},
    },
    "siglip2-base-patch16-naflex": {
        **_IMAGE_COMMON,
        "image_processor_type": "Siglip2ImageProcessor",
        "processor_class": "Siglip2Processor",
        "max_num_patches": 256,
        "patch_size": 16,
    },
}


def _tokenizer_config(processor_class: str) -> dict[str, Any]:
    return {
        "add_bos_token": False,
        "add_eos_token": True,
        "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "<eos>",
        "mask_token": "<mask>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "padding_side": "right",
        "processor_class": processor_class,
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


SPECIAL_TOKENS_MAP = {
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "mask_token": "<mask>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}

DEFAULT_CAPTIONS = (
    "A man riding a wave on top of a surfboard.",
    "A giraffe standing next to a tall tree in a field.",
    "Two dogs playing in the snow near a fence.",
    "A kitchen with a stove, a sink and a white refrigerator.",
    "A red double decker bus driving down a city street.",
    "A plate of food with broccoli, rice and chicken.",
    "A person holding an umbrella on a rainy sidewalk.",
    "A cat sleeping on a laptop keyboard.",
)


def gemma_style_vocab(
    texts: Iterable[str], *, vocab_size: int = GEMMA_VOCAB_SIZE, learned: int = 4096, seed: int = 0
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a Gemma-layout BPE: specials 0-4, byte fallback at 217-472, the BPE's learnt
    tokens scattered over the rest of the id range, the gaps filled with unreachable ``<unusedN>``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    backend = Tokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "\u2581")])
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="\u2581", behavior="merged_with_next", invert=False)
    trainer = trainers.BpeTrainer(
        vocab_size=learned, special_tokens=list(GEMMA_SPECIALS), show_progress=False
    )
    backend.train_from_iterator([t.lower() for t in texts], trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    learnt = sorted((i, t) for t, i in model["vocab"].items() if t not in GEMMA_SPECIALS)
    vocab = {token: index for index, token in enumerate(GEMMA_SPECIALS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = BYTE_FALLBACK_START + byte
    free = np.setdiff1d(np.arange(len(GEMMA_SPECIALS), vocab_size), np.arange(BYTE_FALLBACK_START, 473))
    if len(learnt) > len(free):
        raise ValueError(f"vocab_size {vocab_size} is too small for {len(learnt)} learnt tokens")
    scattered = np.random.default_rng(seed).choice(free, size=len(learnt), replace=False)
    for (_, token), index in zip(learnt, scattered.tolist()):
        vocab.setdefault(token, int(index))
    taken = np.zeros(vocab_size, dtype=bool)
    taken[list(vocab.values())] = True
    for n, index in enumerate(np.flatnonzero(~taken).tolist()):
        vocab[f"<unused{n}>"] = index
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return vocab, merges


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save_standin_teacher(
    path: str | Path,
    name: StandinName = "siglip2-base-patch16-224",
    *,
    captions: Iterable[str] = DEFAULT_CAPTIONS,
    vision_layers: int = 1,
    text_layers: int = 1,
    width: int | None = None,
    heads: int | None = None,
    seed: int = 0,
) -> Path:
    """Save a random-weight stand-in of a real SigLIP 2 checkpoint in its Hub layout; returns ``path``.

    ``width``/``heads`` shrink both towers for fast tests (None: the real 768 / 12); the vocabulary,
    the processor and tokenizer files and the image geometry stay real whatever the width.
    """
    import torch
    from transformers import GemmaTokenizer, Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    if name not in REAL_CONFIGS:
        raise ValueError(f"unknown stand-in {name!r}; choose one of {', '.join(STANDINS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps(REAL_CONFIGS[name]))
    for tower, layers in (("vision_config", vision_layers), ("text_config", text_layers)):
        config[tower]["num_hidden_layers"] = int(layers)
        if width is not None:
            config[tower]["hidden_size"] = int(width)
            config[tower]["intermediate_size"] = 4 * int(width)
            config[tower]["num_attention_heads"] = int(heads or max(1, width // 64))
    if width is not None:
        config["text_config"]["projection_size"] = int(width)
    kind_config = SiglipConfig if config["model_type"] == "siglip" else Siglip2Config
    model_class = SiglipModel if config["model_type"] == "siglip" else Siglip2Model
    model_config = kind_config(
        text_config=config["text_config"],
        vision_config=config["vision_config"],
        initializer_factor=config["initializer_factor"],
    )
    torch.manual_seed(seed)
    model = model_class(model_config).eval()
    with torch.no_grad():  # SigLIP's initial values (the real checkpoint's learnt ones differ)
        model.logit_scale.fill_(float(np.log(10.0)))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(path)

    vocab, merges = gemma_style_vocab(captions, seed=seed)
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=False, add_eos_token=True)
    tokenizer.save_pretrained(path)
    processor_class = PREPROCESSOR_CONFIGS[name]["processor_class"]
    _write_json(path / "tokenizer_config.json", _tokenizer_config(processor_class))
    _write_json(path / "special_tokens_map.json", SPECIAL_TOKENS_MAP)
    _write_json(path / "preprocessor_config.json", PREPROCESSOR_CONFIGS[name])
    return path


# ------------------------------------------------------------------------------------------------
# photos

COCO_LIKE_SIZES: tuple[tuple[int, int], ...] = (
    (640, 427),
    (375, 500),
    (500, 333),
    (427, 640),
    (640, 480),
    (480, 640),
    (612, 612),
    (640, 360),
)


def photo_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8: a sky-to-ground gradient, textured blobs and sensor noise, so that JPEG
    coding, resizing and patching behave as on photos (flat synthetic images hide resampling)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(40, 220, 3), rng.uniform(20, 200, 3)
    horizon = rng.uniform(0.3, 0.7) * height
    t = np.clip((y - horizon) / (0.15 * height) + 0.5, 0, 1)[..., None]
    image = top * (1 - t) + bottom * t + 25 * np.sin(x[..., None] / rng.uniform(7, 30) + rng.uniform(0, 6))
    for _ in range(int(rng.integers(4, 9))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.3) * width, rng.uniform(0.05, 0.3) * height
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
        shade = rng.uniform(0, 255, 3) + 30 * np.sin((x + y)[..., None] / rng.uniform(2, 9))
        image = np.where(inside[..., None], shade, image)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_photos(
    folder: str | Path,
    sizes: Sequence[tuple[int, int]] = COCO_LIKE_SIZES,
    *,
    seed: int = 0,
    first_id: int = 1,
    quality: int = 90,
    grayscale_every: int = 0,
) -> dict[int, Path]:
    """JPEGs named like COCO 2017 files (``000000000001.jpg``); returns {image_id: path}.
    ``grayscale_every=k`` saves every k-th one in mode L, as COCO holds a few grayscale photos."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, (width, height) in enumerate(sizes):
        image_id = first_id + index
        image = Image.fromarray(photo_like(width, height, seed * 100_003 + image_id))
        if grayscale_every and (index + 1) % grayscale_every == 0:
            image = image.convert("L")
        path = folder / f"{image_id:012d}.jpg"
        image.save(path, quality=quality)
        written[image_id] = path
    return written


def write_coco_captions(
    annotation_file: str | Path, images: dict[int, Path], *, captions: Sequence[str] = DEFAULT_CAPTIONS
) -> Path:
    """A ``captions_*.json`` in the COCO schema over ``images`` (five captions each, from ``captions``)."""
    from PIL import Image

    annotation_file = Path(annotation_file)
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    entries, annotations = [], []
    for n, (image_id, path) in enumerate(sorted(images.items())):
        with Image.open(path) as image:
            width, height = image.size
        entries.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        for k in range(5):
            caption = captions[(n + k) % len(captions)]
            annotations.append({"image_id": image_id, "id": len(annotations) + 1, "caption": caption})
    payload = {"info": {"description": "tinysiglip stand-in"}, "images": entries, "annotations": annotations}
    annotation_file.write_text(json.dumps(payload))
    return annotation_file
