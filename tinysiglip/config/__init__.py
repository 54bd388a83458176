"""The files users write, described once as pydantic models: the training config lives here, study
files (tinysiglip.sweep.study) are built from it, and both export their JSON Schema (`tinysiglip schema`).
"""

from tinysiglip.config.problems import Problem, format_problems, problems_from
from tinysiglip.config.training import (
    DEFAULT_CONFIG,
    LOSS_TERMS,
    METRICS,
    ConfigError,
    DataConfig,
    LossConfig,
    ObjectiveConfig,
    OptimConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    TrainingConfig,
    config_leaves,
    load_config_file,
    resolve_config,
)

__all__ = [
    "DEFAULT_CONFIG",
    "LOSS_TERMS",
    "METRICS",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "Problem",
    "StudentConfig",
    "TeacherConfig",
    "TrainConfig",
    "TrainingConfig",
    "config_leaves",
    "format_problems",
    "load_config_file",
    "problems_from",
    "resolve_config",
]
