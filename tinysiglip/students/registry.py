"""Student registry (timm-style): named image tower + compact text tower configurations.

The registry turns a name (+ scale and overrides) into the resolved architecture and builds the model
from it (:meth:`TinySigLIP.from_config`). The dependency is one-way: the model never reads the
registry; a saved student carries its resolved architecture and is rebuilt from that alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .model import TinySigLIP
from .vocab import TokenVocab


@dataclass(frozen=True)
class StudentSpec:
    """A named student: a timm image tower and the compact text tower's shape."""

    name: str
    image_model: str
    text_layers: int = 4
    text_width: int = 384
    text_heads: int = 6
    text_mlp_ratio: float = 4.0
    text_max_length: int = 64
    image_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # ``scale="local"``: the same family shrunk to run on a 2-core CPU in the local world (64 px,
    # minutes per study). Relative sizes are kept (ViT-Small local is twice as wide as ViT-Tiny local).
    local_overrides: dict[str, Any] = field(default_factory=dict)


# Keys a caller may override in ``create_student(..., **overrides)``.
OVERRIDE_KEYS: dict[str, str] = {
    "image_model": "raw timm model name for the image tower",
    "image_kwargs": "extra keyword arguments for timm.create_model (JSON-serialisable dict)",
    "drop_path_rate": "stochastic depth rate of the image tower",
    "text_layers": "text transformer layers (4-6 typical)",
    "text_width": "text transformer width",
    "text_heads": "text attention heads",
    "text_mlp_ratio": "text MLP hidden / width",
    "text_max_length": "text positions (the teacher pads to 64)",
    "text_dropout": "dropout inside the text transformer",
}

_STUDENTS: dict[str, StudentSpec] = {}


def register_student(spec: StudentSpec, *, overwrite: bool = False) -> StudentSpec:
    if spec.name in _STUDENTS and not overwrite:
        raise ValueError(f"student {spec.name!r} is already registered")
    _STUDENTS[spec.name] = spec
    return spec


def list_students() -> list[str]:
    return sorted(_STUDENTS)


def get_student_spec(name: str) -> StudentSpec:
    try:
        return _STUDENTS[name]
    except KeyError:
        raise ValueError(
            f"unknown student {name!r}; valid student names: {', '.join(list_students())}"
        ) from None


_LOCAL_TEXT = {"text_layers": 2, "text_width": 128, "text_heads": 4}
register_student(
    StudentSpec(
        "vit_tiny",
        "vit_tiny_patch16_224",
        description="ViT-Ti/16 (~5.5M image params)",
        local_overrides={"image_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2}, **_LOCAL_TEXT},
    )
)
register_student(
    StudentSpec(
        "vit_small",
        "vit_small_patch16_224",
        description="ViT-S/16 (~22M image params)",
        local_overrides={"image_kwargs": {"depth": 2, "embed_dim": 128, "num_heads": 4}, **_LOCAL_TEXT},
    )
)
register_student(
    StudentSpec(
        "resnet50",
        "resnet50",
        description="ResNet-50 (~23.5M image params)",
        local_overrides={"image_model": "test_resnet", **_LOCAL_TEXT},
    )
)
register_student(
    StudentSpec(
        "mobilenetv3",
        "mobilenetv3_large_100",
        description="MobileNetV3-Large 1.0 (~4.2M image params)",
        local_overrides={"image_model": "mobilenetv3_small_050", **_LOCAL_TEXT},
    )
)
register_student(
    StudentSpec(
        "test_tiny",
        "test_vit",
        text_layers=2,
        text_width=64,
        text_heads=2,
        description="tiny random student for tests (timm test_vit + 2-layer width-64 text tower)",
    )
)


SCALES = ("full", "local")


def resolve_config(name: str, overrides: dict[str, Any], scale: str = "full") -> dict[str, Any]:
    """Student spec (+ its local variant) + overrides -> the full resolved architecture (plain dict)."""
    spec = get_student_spec(name)
    if scale not in SCALES:
        raise ValueError(f"unknown student scale {scale!r}; valid scales: {', '.join(SCALES)}")
    if scale == "local" and spec.local_overrides:
        local = dict(spec.local_overrides)
        merged_kwargs = {**local.get("image_kwargs", {}), **overrides.get("image_kwargs", {})}
        overrides = {**local, **overrides}
        if merged_kwargs:
            overrides["image_kwargs"] = merged_kwargs
    unknown = sorted(set(overrides) - set(OVERRIDE_KEYS))
    if unknown:
        raise ValueError(
            f"unknown student override(s) {unknown} for {name!r}; valid overrides: {', '.join(OVERRIDE_KEYS)}"
        )
    try:
        json.dumps(overrides)
    except TypeError as e:
        raise ValueError(f"student overrides must be JSON-serialisable: {e}") from None
    resolved = {
        "image_model": spec.image_model,
        "image_kwargs": dict(spec.image_kwargs),
        "drop_path_rate": None,
        "text_layers": spec.text_layers,
        "text_width": spec.text_width,
        "text_heads": spec.text_heads,
        "text_mlp_ratio": spec.text_mlp_ratio,
        "text_max_length": spec.text_max_length,
        "text_dropout": 0.0,
    }
    for key, value in overrides.items():
        if key == "image_kwargs":
            if not isinstance(value, dict):
                raise ValueError("image_kwargs must be a dict")
            resolved["image_kwargs"].update(value)
        else:
            resolved[key] = value
    return resolved


def create_student(
    name: str,
    *,
    embed_dim: int,
    image_size: int,
    vocab: TokenVocab,
    pretrained: bool = False,
    scale: str = "full",
    **overrides: Any,
) -> TinySigLIP:
    """Build a :class:`TinySigLIP` student.

    Args:
        name: a registered student (``list_students()``): vit_tiny, vit_small, resnet50, mobilenetv3,
            test_tiny.
        embed_dim: the teacher's embedding width (both projection heads map to it).
        image_size: square side of the teacher's pixels (from the cache).
        vocab: the :class:`TokenVocab` of teacher ids the text tower embeds.
        pretrained: ImageNet weights for the timm image tower (downloads through timm/HF Hub).
        scale: ``"full"`` (the named architecture) or ``"local"`` (the same family shrunk for the
            local world's CPU runs; see ``StudentSpec.local_overrides``).
        **overrides: see ``OVERRIDE_KEYS`` (``text_layers``, ``text_width``, ``image_model``, ...).
    """
    if not isinstance(vocab, TokenVocab):
        raise TypeError(f"vocab must be a TokenVocab, got {type(vocab).__name__}")
    config = {
        "name": name,
        "overrides": dict(overrides),
        "embed_dim": int(embed_dim),
        "image_size": int(image_size),
        "pretrained": bool(pretrained),
        "scale": scale,
        "resolved": resolve_config(name, overrides, scale),
    }
    return TinySigLIP.from_config(config, vocab)
