"""Search spaces: named distributions over dotted training-config paths.

A search-space file (``search_spaces/*.yaml``, JSON Schema: ``tinysiglip schema search-space``)::

    description: lambdas, learning rate and weight decay for the full method
    params:
      lambda_feat:     {type: float, low: 0.1, high: 10.0, log: true}   # alias of loss.feat
      optim.lr:        {type: float, low: 1.0e-4, high: 2.0e-3, log: true}
      optim.warmup_fraction: {type: float, low: 0.0, high: 0.1}
      optim.batch_size: {type: categorical, choices: [128, 256]}

Names are dotted paths into the training config (``loss.feat``) or one of the friendly aliases in
``PARAM_ALIASES``; both resolve to the dotted path, which is the name Optuna stores. Every bound and
choice is checked against that field of the training config (tinysiglip.config): a λ range cannot go
below 0, a learning rate cannot reach 0, an integer field needs an integer distribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import optuna.distributions as od
import yaml
from pydantic import AfterValidator, Field, ValidationError, WithJsonSchema, model_validator

from tinysiglip.config.fields import Description, StrictModel, problem, tagged_union
from tinysiglip.config.problems import Problem, closest, format_problems, problems_from
from tinysiglip.config.training import LOSS_TERMS, TrainingConfig, config_leaves
from tinysiglip.errors import TinySigLIPError
from tinysiglip.yaml_files import load_yaml

__all__ = [
    "LOSS_TERMS",
    "NOT_SEARCHABLE_PREFIXES",
    "PARAM_ALIASES",
    "Distribution",
    "SearchSpaceFile",
    "StudyError",
    "canonical_name",
    "describe_distribution",
    "distribution_bounds",
    "load_search_space",
    "read_yaml",
    "resolve_search_space",
]


class StudyError(TinySigLIPError):
    """A study or search-space file is wrong. The message names the file, the dotted field and the fix;
    ``problems`` holds every problem found in the file (the first is also ``field``/``problem``/``fix``)."""

    def __init__(
        self,
        file: str | Path,
        field: str,
        problem: str,
        fix: str = "",
        *,
        problems: list[Problem] | None = None,
    ):
        self.file = str(file)
        self.problems = list(problems) if problems else [Problem(field, problem, fix)]
        self.field, self.problem, self.fix = (
            self.problems[0].field,
            self.problems[0].problem,
            self.problems[0].fix,
        )
        super().__init__(format_problems(self.file, self.problems))

    @classmethod
    def of(cls, file: str | Path, problems: list[Problem]) -> StudyError:
        first = problems[0]
        return cls(file, first.field, first.problem, first.fix, problems=problems)


# Friendly names -> dotted training-config paths.
PARAM_ALIASES: dict[str, str] = {
    "lambda_feat": "loss.feat",
    "lambda_affinity": "loss.affinity",
    "lambda_aff": "loss.affinity",
    "lambda_contrast": "loss.contrast",
    "lambda_con": "loss.contrast",
    "lr": "optim.lr",
    "learning_rate": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "warmup_fraction": "optim.warmup_fraction",
    "warmup": "optim.warmup_fraction",
    "batch_size": "optim.batch_size",
    "grad_clip": "optim.grad_clip",
    "contrastive": "loss.contrastive",
}

# Training-config paths that a search space may not sample: the driver / study own them.
NOT_SEARCHABLE_PREFIXES = ("teacher", "data", "objective", "train.seed", "train.device", "train.epochs")


class FloatRange(StrictModel):
    """A float between low and high (Optuna FloatDistribution)."""

    type: Literal["float"] = "float"
    low: float
    """Smallest value (included)."""
    high: float
    """Largest value (included)."""
    log: bool = False
    """Sample uniformly in log space (needs low > 0)."""
    step: float | None = Field(None, gt=0)
    """Sample only low, low + step, ... (not with log)."""

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        _check_range(self.low, self.high, self.log, self.step)
        return self

    def to_optuna(self) -> od.BaseDistribution:
        return od.FloatDistribution(self.low, self.high, log=self.log, step=self.step)


class IntRange(StrictModel):
    """An integer between low and high (Optuna IntDistribution)."""

    type: Literal["int"]
    low: int
    """Smallest value (included)."""
    high: int
    """Largest value (included)."""
    log: bool = False
    """Sample uniformly in log space (needs low > 0)."""
    step: int | None = Field(None, ge=1)
    """Sample only low, low + step, ... (not with log)."""

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        _check_range(self.low, self.high, self.log, self.step)
        return self

    def to_optuna(self) -> od.BaseDistribution:
        return od.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low >= high:
        raise problem(f"low ({low}) must be below high ({high})", "swap them or widen the range")
    if log and low <= 0:
        raise problem(
            f"a log distribution needs low > 0, got {low}", "raise low above 0 or set log: false", field="low"
        )
    if log and step is not None:
        raise problem("step cannot be combined with log: true", "remove step or log", field="step")


def _scalar(value: Any) -> Any:
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise problem(f"choice {value!r} is not a scalar", "use numbers, strings or booleans")
    return value


Scalar = Annotated[
    Any, AfterValidator(_scalar), WithJsonSchema({"type": ["string", "number", "boolean", "null"]})
]


class Choices(StrictModel):
    """One of a list of values (Optuna CategoricalDistribution)."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1, examples=[[128, 256]])
    """The values to choose from."""

    def to_optuna(self) -> od.BaseDistribution:
        return od.CategoricalDistribution(list(self.choices))


Distribution = tagged_union(
    {"float": FloatRange, "int": IntRange, "categorical": Choices},
    key="type",
    what="distribution type",
    default="float",
    fix="write the distribution as a mapping with type/low/high (or type: categorical, choices: [...]), "
    "e.g. {type: float, low: 0.1, high: 10, log: true}",
)

# A search space as written: parameter name (dotted path or alias) -> distribution.
SearchParams = Annotated[dict[str, Distribution], Field(min_length=1)]


class SearchSpaceFile(StrictModel):
    """A search-space file (search_spaces/*.yaml), referenced by a study's search_space."""

    description: Description = ""
    """What the search is for."""
    params: SearchParams = Field(
        examples=[{"lambda_feat": {"type": "float", "low": 0.1, "high": 10, "log": True}}]
    )
    """Parameter name (a dotted training-config path such as optim.lr, or an alias such as lambda_feat)
    -> distribution."""


def canonical_name(name: str) -> str:
    return PARAM_ALIASES.get(name, name)


_LEAVES = config_leaves()
_SECTIONS = {name: info.annotation for name, info in TrainingConfig.model_fields.items()}


def _leaf_kind(path: str) -> str:
    """The kind ("int", "float" or "other") of of distribution the config field at ``path`` can take."""
    annotation = _LEAVES[path].annotation
    args = set(getattr(annotation, "__args__", ())) | {annotation}
    if float in args:
        return "float"
    if int in args and bool not in args:
        return "int"
    return "other"


def _value_problems(path: str, value: Any, where: str) -> list[Problem]:
    """Problems of ``value`` as the training-config field ``path`` (its type, range and checks)."""
    section, key = path.split(".", 1)
    model = _SECTIONS[section]
    try:
        model.model_validate({key: value})
    except ValidationError as error:
        return [
            Problem(where + p.field[len(key) :], p.problem, p.fix)
            for p in problems_from(error, model)
            if p.field == key or p.field.startswith(key + ".")
        ]
    return []


def _against_config(path: str, spec: StrictModel, where: str) -> list[Problem]:
    if isinstance(spec, Choices):
        return [
            p for i, c in enumerate(spec.choices) for p in _value_problems(path, c, f"{where}.choices[{i}]")
        ]
    kind = _leaf_kind(path)
    if kind == "other":
        return [
            Problem(
                f"{where}.type",
                f"{path} is not a number, so it has no range",
                "use type: categorical with choices",
            )
        ]
    if kind == "int" and not isinstance(spec, IntRange):
        return [Problem(f"{where}.type", f"{path} is an integer", "use type: int (or categorical)")]
    return _value_problems(path, spec.low, f"{where}.low") or _value_problems(
        path, spec.high, f"{where}.high"
    )


def resolve_search_space(
    params: dict[str, Any], where: str
) -> tuple[dict[str, od.BaseDistribution], list[Problem]]:
    """Validated distributions by name as written -> ``{dotted path: Optuna distribution}`` + problems.

    ``where`` is the dotted place of the params in their file (``params``, ``search_space``).
    """
    out: dict[str, od.BaseDistribution] = {}
    problems: list[Problem] = []
    valid = sorted([*_LEAVES, *PARAM_ALIASES])
    for name, spec in params.items():
        fld, path = f"{where}.{name}", canonical_name(str(name))
        if path not in _LEAVES:
            problems.append(
                Problem(
                    fld,
                    f"unknown parameter {name!r}",
                    "use a dotted training-config path (loss.feat, optim.lr) or an alias ("
                    + ", ".join(PARAM_ALIASES)
                    + ")"
                    + closest(str(name), valid),
                )
            )
        elif any(path == p or path.startswith(p + ".") for p in NOT_SEARCHABLE_PREFIXES):
            problems.append(
                Problem(
                    fld,
                    f"{path} cannot be searched (the study/driver sets it)",
                    "remove it from the search space",
                )
            )
        elif path in out:
            problems.append(
                Problem(
                    fld,
                    f"{name!r} names {path}, which is already in this search space",
                    "keep one of the two entries",
                )
            )
        else:
            found = _against_config(path, spec, fld)
            problems.extend(found)
            if not found:
                out[path] = spec.to_optuna()
    return out, problems


def distribution_bounds(dist: od.BaseDistribution) -> tuple[Any, Any] | None:
    if isinstance(dist, (od.FloatDistribution, od.IntDistribution)):
        return dist.low, dist.high
    return None


def describe_distribution(dist: od.BaseDistribution) -> str:
    if isinstance(dist, od.CategoricalDistribution):
        return "{" + ", ".join(repr(c) for c in dist.choices) + "}"
    kind = "int" if isinstance(dist, od.IntDistribution) else "float"
    text = f"{kind}[{dist.low:g}, {dist.high:g}]"
    if dist.log:
        text += " log"
    if getattr(dist, "step", None) not in (None, 1) or (kind == "float" and dist.step is not None):
        text += f" step {dist.step:g}"
    return text


def read_yaml(path: Path, *, what: str, field: str = "", referenced_from: str | None = None) -> Any:
    """Parse a YAML file safely (never evaluates anything); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        where = f" (resolved relative to {referenced_from})" if referenced_from else ""
        raise StudyError(
            referenced_from or path,
            field,
            f"{what} file not found: {path}{where}",
            "check the path; relative paths are resolved against the directory of the study file",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StudyError(
            path, "", f"cannot read {what} file: {e}", "check the file's permissions and encoding"
        ) from e
    try:
        return load_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown line"
        problem = getattr(e, "problem", None) or str(e)
        raise StudyError(
            path, f"<{line}>", f"invalid YAML at {line}: {problem}", "fix the YAML syntax there"
        ) from e


def load_search_space(path: Path, *, field: str, referenced_from: str) -> dict[str, od.BaseDistribution]:
    """``{dotted path: distribution}`` of a search-space file; every problem of the file at once."""
    data = read_yaml(path, what="search-space", field=field, referenced_from=referenced_from)
    used_by = f" (search space of {referenced_from}, {field})"
    try:
        model = SearchSpaceFile.model_validate(data if data is not None else {})
    except ValidationError as error:
        found = problems_from(error, SearchSpaceFile)
    else:
        space, found = resolve_search_space(model.params, "params")
        if not found:
            return space
    raise StudyError.of(path, [Problem(p.field, p.problem + used_by, p.fix) for p in found])
