"""The sweep service: study files (this package's ``study`` package), the Ray Tune driver and the store."""

from tinysiglip.sweep.study import (
    CacheSpec,
    Cell,
    DatasetSpec,
    Objective,
    Resources,
    Study,
    StudyError,
    StudyFile,
    TeacherSpec,
    load_study,
)

__all__ = [
    "CacheSpec",
    "Cell",
    "DatasetSpec",
    "Objective",
    "Resources",
    "Study",
    "StudyError",
    "StudyFile",
    "TeacherSpec",
    "load_study",
]
