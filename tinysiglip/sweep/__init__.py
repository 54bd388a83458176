"""The sweep service: study files (this package's ``study`` module), the Ray Tune driver and the store."""

from tinysiglip.sweep.study import (
    TRAINING_CONFIG_KEYS,
    CacheSpec,
    Cell,
    DatasetSpec,
    Objective,
    Resources,
    Study,
    StudyError,
    TeacherSpec,
    load_study,
)

__all__ = [
    "TRAINING_CONFIG_KEYS",
    "CacheSpec",
    "Cell",
    "DatasetSpec",
    "Objective",
    "Resources",
    "Study",
    "StudyError",
    "TeacherSpec",
    "load_study",
]
