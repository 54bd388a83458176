"""The training config, described once: sections, defaults, types and ranges as pydantic models.

``tinysiglip.train`` runs what ``resolve_config`` returns (a plain nested dict that travels with every
checkpoint and result); study files set parts of it in their ``defaults``, grid cells and ``local``
profile (tinysiglip.sweep.study builds those partial sections from these very models); ``tinysiglip
schema config`` prints its JSON Schema for editors.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import Field, ValidationError, field_validator

from tinysiglip.config.fields import Lambda, PathText, StrictModel, Text, problem
from tinysiglip.config.problems import Problem, closest, format_problems, problems_from
from tinysiglip.errors import TinySigLIPError
from tinysiglip.yaml_files import load_yaml

__all__ = [
    "DEFAULT_CONFIG",
    "LOSS_TERMS",
    "METRICS",
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "StudentConfig",
    "TeacherConfig",
    "TrainConfig",
    "TrainingConfig",
    "config_leaves",
    "load_config_file",
    "resolve_config",
]

Metric = Literal["mean_r1", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
# What tinysiglip.train reports after every evaluation: val Recall@K both ways and their mean R@1.
METRICS: tuple[str, ...] = get_args(Metric)
LOSS_TERMS = ("feat", "affinity", "contrast")


class ConfigError(TinySigLIPError):
    """A training config names an unknown key or holds a value of the wrong kind."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


class TeacherConfig(StrictModel):
    """The teacher the caches were built with (provenance only: training reads the caches)."""

    source: PathText | None = None
    """Hugging Face Hub id (google/siglip2-large-patch16-256) or local folder of the teacher."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the teacher; null for the default branch."""


class DataConfig(StrictModel):
    """The HDF5 teacher caches a run reads (built by `tinysiglip cache build`)."""

    train_cache: PathText | None = None
    """Training split cache (required to train)."""
    val_cache: PathText | None = None
    """Validation split cache: evaluated every eval_every_epochs (what a sweep prunes on); required."""
    test_cache: PathText | None = None
    """Test split cache: final runs evaluate here once, at the end."""
    expect: dict[str, Any] = Field(default_factory=dict)
    """Cache metadata the run must find (fingerprints); a mismatch refuses to train."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes (0: load in the training process)."""
    embeddings_in_memory: bool = True
    """Read the teacher embeddings into memory once instead of from the file every batch."""
    allow_leakage: bool = False
    """Train on images of the val/test caches anyway (refused otherwise; recorded on the run)."""


# Student names when tinysiglip.students cannot be imported (keep in step with its registry).
_FALLBACK_STUDENTS = ("vit_tiny", "vit_small", "resnet50", "mobilenetv3", "test_tiny")
_student_cache: tuple[tuple[str, ...], dict | None] | None = None


def _students() -> tuple[tuple[str, ...], dict | None]:
    """(registered student names, override keys or None), from the registry, imported on first use."""
    global _student_cache
    if _student_cache is None:
        try:
            from tinysiglip.students import OVERRIDE_KEYS, list_students

            _student_cache = (tuple(list_students()), dict(OVERRIDE_KEYS))
        except Exception:  # noqa: BLE001 - registry not importable: check names against the known ones
            _student_cache = (_FALLBACK_STUDENTS, None)
    return _student_cache


def _registered_names(schema: dict[str, Any]) -> None:
    schema["examples"] = list(_students()[0])  # editors offer them; the loader checks the registry


def _override_keys(schema: dict[str, Any]) -> None:
    keys = _students()[1]
    if keys is not None:
        schema["propertyNames"] = {"enum": list(keys)}


class StudentConfig(StrictModel):
    """The student: a registered name (tinysiglip.students) and its options."""

    name: Text = Field("vit_small", json_schema_extra=_registered_names)
    """A student of the registry (tinysiglip.students.list_students())."""
    pretrained: bool = False
    """Start the image tower from timm's pretrained weights (needs the Hub)."""
    scale: Literal["full", "local"] = "full"
    """full: the real architecture; local: the same family shrunk to run on a CPU (local world)."""
    overrides: dict[str, Any] = Field(default_factory=dict, json_schema_extra=_override_keys)
    """Architecture overrides passed to create_student, e.g. {text_layers: 6}."""

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        names, _ = _students()
        if name not in names:
            raise problem(
                f"unknown student {name!r}",
                "use a registered student: " + ", ".join(names) + closest(name, names),
            )
        return name

    @field_validator("overrides")
    @classmethod
    def _known_overrides(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        _, keys = _students()
        for key in overrides if keys is not None else ():
            if key not in keys:
                raise problem(
                    f"unknown student override {key!r}",
                    "valid overrides: " + ", ".join(keys) + closest(key, keys),
                    field=str(key),
                )
        return overrides


class LossConfig(StrictModel):
    """Loss weights λ (0 or off switches a term off and skips its computation) and the contrastive form."""

    feat: Lambda = 1.0
    """λ_feat: MSE between L2-normalised student and teacher embeddings."""
    affinity: Lambda = 1.0
    """λ_affinity: KL between teacher and student in-batch affinities, image->text and text->image."""
    contrast: Lambda = 1.0
    """λ_contrast: the student's own contrastive loss on the image-caption pairs."""
    contrastive: Literal["sigmoid", "infonce"] = "sigmoid"
    """Form of the contrastive term: SigLIP's sigmoid loss or CLIP's InfoNCE."""
    init_logit_scale: float = Field(10.0, gt=0)
    """Initial temperature of the student's logits (SigLIP: 10)."""
    init_logit_bias: float = -10.0
    """Initial logit bias (SigLIP: -10; small batches learn faster near -log(batch size))."""


class OptimConfig(StrictModel):
    """AdamW with linear warmup and cosine decay."""

    lr: float = Field(5.0e-4, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.05, ge=0)
    """AdamW weight decay (not applied to biases, norms and the logit scale/bias)."""
    batch_size: int = Field(64, ge=2)
    """Image-caption pairs per step (in-batch negatives need at least 2)."""
    warmup_fraction: float = Field(0.05, ge=0, le=1)
    """Fraction of the steps spent warming the learning rate up."""
    grad_clip: float | None = Field(1.0, ge=0)
    """Gradient-norm clip; null or 0 for none."""


class TrainConfig(StrictModel):
    """Length of the run, evaluation, devices and checkpoints."""

    epochs: int = Field(5, ge=1)
    """Passes over the training cache (one caption per image, redrawn each epoch)."""
    max_steps: int | None = Field(None, ge=1)
    """Optional cap on optimiser steps."""
    eval_every_epochs: int = Field(1, ge=1)
    """Evaluate on the validation cache every this many epochs (each evaluation is reported)."""
    seed: int = Field(0, ge=0)
    """Seed of the student's initialisation and of the caption draws."""
    device: Text = "auto"
    """auto (cuda when available, else cpu), cpu, cuda or cuda:N."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto: bf16 autocast on GPU, fp32 on CPU."""
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    """A trial that shares a GPU caps its own memory to this fraction."""
    checkpoint: bool = True
    """Write a checkpoint after every epoch; a rerun with the same run folder resumes from it."""
    threads: int | None = Field(None, ge=1)
    """torch.set_num_threads on CPU (null: torch's default)."""


class ObjectiveConfig(StrictModel):
    """The validation metric a run (and a sweep) optimises."""

    metric: Metric = "mean_r1"
    """Validation Recall@K: mean_r1 is the mean of image->text and text->image R@1."""
    direction: Literal["maximize", "minimize"] = "maximize"
    """Whether larger values of the metric are better."""


class TrainingConfig(StrictModel):
    """A training run of tinysiglip.train (`tinysiglip train --config FILE`): every key is optional."""

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)

    @field_validator("loss")
    @classmethod
    def _something_to_train(cls, loss: LossConfig) -> LossConfig:
        # "on" means the default weight of the layer below; below a training config is the default.
        on = {t: LossConfig.model_fields[t].default for t in LOSS_TERMS if getattr(loss, t) == "on"}
        loss = loss.model_copy(update=on) if on else loss
        if not any(getattr(loss, t) > 0 for t in LOSS_TERMS):
            raise problem(
                "all three losses are off: nothing to train",
                "switch on at least one of feat, affinity, contrast",
            )
        return loss


DEFAULT_CONFIG: dict[str, Any] = TrainingConfig().model_dump()


def config_leaves(model: type[StrictModel] = TrainingConfig, prefix: str = "") -> dict[str, Any]:
    """``{"loss.feat": FieldInfo, ...}``: every settable field of the training config, by dotted path."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, StrictModel):
            out.update(config_leaves(sub, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = info
    return out


def resolve_config(partial: Mapping[str, Any] | None = None, *, source: str = "config") -> dict[str, Any]:
    """Defaults + ``partial``; unknown keys and impossible values are errors naming the field."""
    try:
        model = TrainingConfig.model_validate(copy.deepcopy(dict(partial or {})))
    except ValidationError as error:
        problems = problems_from(error, TrainingConfig)
        raise ConfigError(format_problems(source, problems), problems) from None
    return model.model_dump()


def load_config_file(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML config and apply ``section.key=value`` overrides (values parsed as YAML scalars)."""
    path = Path(path)
    try:
        partial = load_yaml(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:  # a folder, unreadable, not text
        raise ConfigError(
            f"config file {path} cannot be read ({getattr(error, 'strerror', None) or error}); "
            "give a YAML file such as configs/local_A1.yaml"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(partial, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        node = partial
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = load_yaml(raw)
    return resolve_config(partial, source=str(path))
