"""Captioned-image datasets: COCO captions, Karpathy's split file, and the synthetic shapes world."""

from tinysiglip.data.coco import (
    KARPATHY_SPLITS,
    karpathy_image_ids,
    load_coco_captions,
    load_karpathy_split,
    read_image_id_list,
)
from tinysiglip.data.images import BadImageError, check_images, find_bad_images, open_rgb, to_rgb
from tinysiglip.data.records import (
    CaptionDataset,
    DatasetError,
    ImageRecord,
    exclude_images,
    normalize_caption,
)
from tinysiglip.data.shapes import DEFAULT_SIZES, ShapesPaths, make_shapes

__all__ = [
    "DEFAULT_SIZES",
    "KARPATHY_SPLITS",
    "BadImageError",
    "CaptionDataset",
    "DatasetError",
    "ImageRecord",
    "ShapesPaths",
    "check_images",
    "exclude_images",
    "find_bad_images",
    "karpathy_image_ids",
    "load_coco_captions",
    "load_karpathy_split",
    "make_shapes",
    "normalize_caption",
    "open_rgb",
    "read_image_id_list",
    "to_rgb",
]
