"""Search-space files: named distributions over dotted training-config paths.

A search-space file (``search_spaces/*.yaml``)::

    description: lambdas, learning rate and weight decay for the full method
    params:
      lambda_feat:     {type: float, low: 0.1, high: 10.0, log: true}   # alias of loss.feat
      optim.lr:        {type: float, low: 1.0e-4, high: 2.0e-3, log: true}
      optim.warmup_fraction: {type: float, low: 0.0, high: 0.1}
      optim.batch_size: {type: categorical, choices: [128, 256]}

Names are dotted paths into the training config (``loss.feat``) or one of the friendly aliases in
``PARAM_ALIASES``; both resolve to the dotted path, which is the name Optuna stores.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna.distributions as od
import yaml

from tinysiglip.errors import TinySigLIPError
from tinysiglip.yaml_files import load_yaml


class StudyError(TinySigLIPError):
    """A study or search-space file is wrong. The message names the file, the dotted field and the fix."""

    def __init__(self, file: str | Path, field: str, problem: str, fix: str = ""):
        self.file = str(file)
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"{self.file}: {field}" if field else self.file
        super().__init__(f"{where}: {problem}" + (f". Fix: {fix}" if fix else ""))


def closest(word: str, valid: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid key, or ''."""
    match = difflib.get_close_matches(str(word), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def as_number(v):
    """A YAML number, or text such as '1e-4' that PyYAML leaves as a string; None otherwise."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str) and _FLOAT_TEXT.match(v.strip()):
        f = float(v)
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    return None


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

LOSS_TERMS = ("feat", "affinity", "contrast")

_DIST_KEYS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}


def parse_distribution(spec: Any, *, file: str, field: str) -> od.BaseDistribution:
    """One ``{type, low, high, log, step}`` / ``{type: categorical, choices}`` mapping -> distribution."""
    if not isinstance(spec, dict):
        raise StudyError(
            file,
            field,
            f"expected a mapping like {{type: float, low: 0.1, high: 10, log: true}}, got {spec!r}",
            "write the distribution as a mapping with type/low/high (or type: categorical, choices: [...])",
        )
    kind = spec.get("type", "float")
    if kind not in _DIST_KEYS:
        raise StudyError(
            file,
            f"{field}.type",
            f"unknown distribution type {kind!r}",
            f"use one of {', '.join(_DIST_KEYS)}" + closest(str(kind), _DIST_KEYS),
        )
    for key in spec:
        if key not in _DIST_KEYS[kind]:
            raise StudyError(
                file,
                f"{field}.{key}",
                f"unknown key {key!r} for a {kind} distribution",
                f"valid keys: {', '.join(_DIST_KEYS[kind])}" + closest(str(key), _DIST_KEYS[kind]),
            )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise StudyError(
                file, f"{field}.choices", "a categorical needs a non-empty list", "e.g. choices: [128, 256]"
            )
        for i, c in enumerate(choices):
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise StudyError(
                    file,
                    f"{field}.choices[{i}]",
                    f"choice {c!r} is not a scalar",
                    "use numbers, strings or booleans",
                )
        return od.CategoricalDistribution(choices)
    bounds = {}
    for key in ("low", "high"):
        if key not in spec:
            raise StudyError(file, f"{field}.{key}", f"missing {key!r}", f"add {key}: <number>")
        value = as_number(spec[key])
        if value is None or (kind == "int" and not float(value).is_integer()):
            raise StudyError(
                file,
                f"{field}.{key}",
                f"{key} must be {'an integer' if kind == 'int' else 'a number'}, got {spec[key]!r}",
                "write a plain number",
            )
        bounds[key] = value
    low, high = bounds["low"], bounds["high"]
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise StudyError(
            file, f"{field}.log", f"log must be true or false, got {log!r}", "write log: true or log: false"
        )
    step = spec.get("step")
    if step is not None:
        step = as_number(step)
    if step is not None and step <= 0 or ("step" in spec and spec["step"] is not None and step is None):
        raise StudyError(
            file,
            f"{field}.step",
            f"step must be a positive number, got {spec.get('step')!r}",
            "remove step or make it > 0",
        )
    if low >= high:
        raise StudyError(
            file, field, f"low ({low}) must be below high ({high})", "swap them or widen the range"
        )
    if log and low <= 0:
        raise StudyError(
            file,
            f"{field}.low",
            f"a log distribution needs low > 0, got {low}",
            "raise low above 0 or set log: false",
        )
    if log and step is not None:
        raise StudyError(
            file, f"{field}.step", "step cannot be combined with log: true", "remove step or log"
        )
    if kind == "int":
        return od.IntDistribution(int(low), int(high), log=log, step=int(step) if step else 1)
    return od.FloatDistribution(float(low), float(high), log=log, step=float(step) if step else None)


def canonical_name(name: str) -> str:
    return PARAM_ALIASES.get(name, name)


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


def load_search_space_file(path: Path, *, field: str, referenced_from: str) -> tuple[str, dict[str, Any]]:
    """(description, {name as written: raw spec}) of a search-space file; names are resolved by the caller."""
    data = read_yaml(path, what="search-space", field=field, referenced_from=referenced_from)
    fname = str(path)
    if not isinstance(data, dict):
        raise StudyError(
            fname,
            "",
            "a search-space file must be a mapping with a 'params' key",
            "see search_spaces/lambda_full.yaml",
        )
    for key in data:
        if key not in ("description", "params"):
            raise StudyError(
                fname,
                str(key),
                f"unknown key {key!r}",
                "valid keys: description, params" + closest(str(key), ("description", "params")),
            )
    params = data.get("params")
    if not isinstance(params, dict) or not params:
        raise StudyError(
            fname,
            "params",
            "missing or empty 'params' mapping",
            "add params: {lambda_feat: {type: float, low: 0.1, high: 10, log: true}}",
        )
    desc = data.get("description") or ""
    if not isinstance(desc, str):
        raise StudyError(fname, "description", "description must be text", "quote it")
    return desc, params
