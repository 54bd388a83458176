"""HDF5 teacher cache: build it once (resumable, atomic), read it in every trial (torch Datasets)."""

from tinysiglip.cache.build import build_cache
from tinysiglip.cache.format import (
    DATASETS,
    FORMAT_VERSION,
    IDENTITY_KEYS,
    CacheError,
    partial_path,
)
from tinysiglip.cache.leakage import LeakageError, LeakageReport, check_leakage
from tinysiglip.cache.loader import TrainBatches, TrainLoader, batches_on_device
from tinysiglip.cache.reader import (
    CachedCaptions,
    CachedImages,
    TeacherCache,
    TrainPairs,
    open_cache,
    pixels_to_float,
    read_meta,
)

__all__ = [
    "DATASETS",
    "FORMAT_VERSION",
    "IDENTITY_KEYS",
    "CacheError",
    "LeakageError",
    "LeakageReport",
    "CachedCaptions",
    "CachedImages",
    "TeacherCache",
    "TrainBatches",
    "TrainLoader",
    "batches_on_device",
    "TrainPairs",
    "build_cache",
    "check_leakage",
    "open_cache",
    "partial_path",
    "pixels_to_float",
    "read_meta",
]
