"""The student's image tower: any timm model, pooled features, at the teacher's resolution."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["create_image_tower"]


def _head_width(model: nn.Module) -> int:
    width = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not width:
        raise ValueError(f"cannot tell the pooled feature width of {type(model).__name__}")
    return int(width)


def create_image_tower(
    image_model: str,
    *,
    image_size: int,
    pretrained: bool = False,
    drop_path_rate: float | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, int]:
    """timm model with ``num_classes=0`` (pooled features) -> (module, feature width).

    ViT-like models get ``img_size=image_size`` and ``dynamic_img_size=True`` (other resolutions are
    handled by interpolating the position embeddings); models that do not take ``img_size`` (CNNs)
    are built without it and take any size.
    """
    import timm  # lazy: keeps ``import tinysiglip.students`` cheap

    if not timm.is_model(image_model):
        raise ValueError(f"unknown timm image model {image_model!r}")
    base = dict(kwargs)
    base.setdefault("num_classes", 0)
    if drop_path_rate is not None:
        base["drop_path_rate"] = drop_path_rate
    sized = dict(base)
    sized.setdefault("img_size", image_size)
    sized.setdefault("dynamic_img_size", True)
    try:
        model = timm.create_model(image_model, pretrained=pretrained, **sized)
    except TypeError as e:
        if "img_size" not in str(e) and "dynamic_img_size" not in str(e):
            raise
        try:
            model = timm.create_model(image_model, pretrained=pretrained, **{**base, "img_size": image_size})
        except TypeError as e2:
            if "img_size" not in str(e2):
                raise
            model = timm.create_model(image_model, pretrained=pretrained, **base)
    return model, _head_width(model)
