"""Study files: the experiment grid, its search space, budgets and resources, validated up front.

``load_study(path, local=False) -> Study`` reads a study YAML (``studies/*.yaml``), checks every field
before anything runs (each problem is a ``StudyError`` naming the file, the dotted field and the fix),
and expands the grid into ``Cell`` objects: one Optuna study per cell (``<study>/<cell>``), each with
a partial training config (docs/architecture.md) and the search space that applies to it.

Study YAML (see studies/ablation_A.yaml)::

    study: ablation_A                 # default: the file's stem
    description: ...
    teachers: {large: {source: google/siglip2-large-patch16-256, revision: null}}
    datasets: {coco: {karpathy: data/coco/dataset_coco.json, images: data/coco}}
    defaults:                         # partial training config shared by all cells
      teacher: large                  # key into teachers (the only teacher: may be left out)
      dataset: coco                   # key into datasets
      student: {name: vit_small}
      loss: {feat: 1.0, affinity: 1.0, contrast: 1.0, contrastive: sigmoid}
      optim: {batch_size: 256}
    grid:                             # named cells, each a partial training config over defaults
      A1: {description: no KD, loss: {feat: off, affinity: off}}
    search_space: ../search_spaces/lambda_full.yaml   # relative to this file; a cell may override
    trials_per_cell: 20
    budget: {epochs: 10, eval_every_epochs: 1, max_steps: null}
    objective: {metric: mean_r1, direction: maximize}
    pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 2, interval_steps: 1}
    sampler: {type: tpe, seed: 0, n_startup_trials: 5}
    final: {seeds: [0, 1, 2], epochs: null}
    resources: {cpus_per_trial: 4, gpus_per_trial: 0.25}
    max_failures: 2
    max_concurrent: null
    storage: null                     # SQLAlchemy URL; default sqlite:///<run_dir>/study.db
    run_dir: null                     # default runs/<study> (runs/<study>-local with --local)
    local:                            # what --local changes: same grid and search space, tiny world
      teachers: {large: local-m}
      trials_per_cell: 2
      budget: {epochs: 2}
      final: {seeds: [0, 1]}
      resources: {cpus_per_trial: 1, gpus_per_trial: 0}
      config: {optim: {batch_size: 32}, student: {scale: local}}   # CPU-sized student variants
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna.distributions as od

from tinysiglip.sweep.search_space import (
    LOSS_TERMS,
    NOT_SEARCHABLE_PREFIXES,
    PARAM_ALIASES,
    StudyError,
    as_number,
    canonical_name,
    closest,
    describe_distribution,
    distribution_bounds,
    load_search_space_file,
    parse_distribution,
    read_yaml,
)

__all__ = [
    "METRICS",
    "TRAINING_CONFIG_KEYS",
    "CacheSpec",
    "Cell",
    "DatasetSpec",
    "Key",
    "Objective",
    "Resources",
    "Study",
    "StudyError",
    "TeacherSpec",
    "load_study",
]


# --------------------------------------------------------------------------------------------------
# The training-config schema (docs/architecture.md, "The training config"). tinysiglip.train owns the
# defaults; this copy only says which keys exist and what their values may be.


@dataclass(frozen=True)
class Key:
    kind: str  # "str" | "int" | "float" | "bool" | "dict" | "lambda" | "choice"
    nullable: bool = False
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min itself not allowed
    doc: str = ""

    def describe(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "lambda":
            text = "a λ >= 0 (or off)"
        else:
            text = {
                "str": "text",
                "int": "an integer",
                "float": "a number",
                "bool": "true/false",
                "dict": "a mapping",
            }[self.kind]
            if self.min is not None and self.max is not None:
                text += f" in {'(' if self.min_open else '['}{self.min:g}, {self.max:g}]"
            elif self.min is not None:
                text += f" {'>' if self.min_open else '>='} {self.min:g}"
        return text + (" or null" if self.nullable else "")


TRAINING_CONFIG_KEYS: dict[str, Any] = {
    "teacher": {"source": Key("str"), "revision": Key("str", nullable=True)},
    "data": {
        "train_cache": Key("str", nullable=True),
        "val_cache": Key("str", nullable=True),
        "test_cache": Key("str", nullable=True),
        "expect": Key("dict"),
        "num_workers": Key("int", min=0),
        "embeddings_in_memory": Key("bool"),
        "allow_leakage": Key("bool"),
    },
    "student": {"name": Key("str"), "pretrained": Key("bool"), "scale": Key("str"), "overrides": Key("dict")},
    "loss": {
        "feat": Key("lambda"),
        "affinity": Key("lambda"),
        "contrast": Key("lambda"),
        "contrastive": Key("choice", choices=("sigmoid", "infonce")),
        "init_logit_scale": Key("float", min=0, min_open=True),
        "init_logit_bias": Key("float"),
    },
    "optim": {
        "lr": Key("float", min=0, min_open=True),
        "weight_decay": Key("float", min=0),
        "batch_size": Key("int", min=2),
        "warmup_fraction": Key("float", min=0, max=1),
        "grad_clip": Key("float", nullable=True, min=0),
    },
    "train": {
        "epochs": Key("int", min=1),
        "max_steps": Key("int", nullable=True, min=1),
        "eval_every_epochs": Key("int", min=1),
        "seed": Key("int", min=0),
        "device": Key("str"),
        "precision": Key("str"),
        "gpu_memory_fraction": Key("float", nullable=True, min=0, max=1, min_open=True),
        "checkpoint": Key("bool"),
        "threads": Key("int", nullable=True, min=1),
    },
    "objective": {
        "metric": Key("str"),
        "direction": Key("choice", choices=("maximize", "minimize")),
    },
}

# Metrics that tinysiglip.train reports after every evaluation (val Recall@K and their mean R@1).
METRICS = ("mean_r1", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")

# Keys of the training config that a study's defaults / cells must not set, and where they belong.
_OWNED_ELSEWHERE = {
    "data.train_cache": "the driver fills cache paths; remove it",
    "data.val_cache": "the driver fills cache paths; remove it",
    "data.test_cache": "the driver fills cache paths; remove it",
    "data.expect": "the driver fills cache fingerprints; remove it",
    "train.epochs": "set budget.epochs (and final.epochs for the final runs)",
    "train.eval_every_epochs": "set budget.eval_every_epochs",
    "train.max_steps": "set budget.max_steps",
    "train.seed": "seeds come from sampler.seed / final.seeds; remove it",
    "objective": "set the study's top-level objective: {metric, direction}",
    "objective.metric": "set the study's top-level objective.metric",
    "objective.direction": "set the study's top-level objective.direction",
}

# Student names when tinysiglip.students cannot be imported (keep in step with its registry).
_FALLBACK_STUDENTS = ("vit_tiny", "vit_small", "resnet50", "mobilenetv3", "test_tiny")

# SigLIP 2 size -> local-world teacher size, used when a study's local.teachers leaves a key out.
_LOCAL_TEACHER_BY_SIZE = (("so400m", "local-l"), ("large", "local-m"), ("base", "local-s"))

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

_TOP_KEYS = (
    "study",
    "description",
    "teachers",
    "datasets",
    "defaults",
    "grid",
    "search_space",
    "trials_per_cell",
    "budget",
    "objective",
    "pruner",
    "sampler",
    "final",
    "resources",
    "max_failures",
    "max_concurrent",
    "storage",
    "run_dir",
    "local",
)
_LOCAL_KEYS = (
    "teachers",
    "datasets",
    "trials_per_cell",
    "budget",
    "final",
    "resources",
    "config",
    "pruner",
    "sampler",
    "max_failures",
    "max_concurrent",
    "storage",
    "run_dir",
)
_CELL_EXTRA_KEYS = ("description", "search_space", "teacher", "dataset")
_PRUNER_KEYS = {
    "median": {"n_startup_trials": 5, "n_warmup_steps": 1, "interval_steps": 1, "n_min_trials": 1},
    "percentile": {
        "percentile": 25.0,
        "n_startup_trials": 5,
        "n_warmup_steps": 1,
        "interval_steps": 1,
        "n_min_trials": 1,
    },
    "hyperband": {"min_resource": 1, "max_resource": None, "reduction_factor": 3},
    "successive_halving": {"min_resource": 1, "reduction_factor": 4, "min_early_stopping_rate": 0},
    "none": {},
}
_SAMPLER_KEYS = {
    "tpe": {"seed": 0, "n_startup_trials": 5, "multivariate": False, "constant_liar": False},
    "random": {"seed": 0},
}


# --------------------------------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class TeacherSpec:
    key: str
    source: str  # Hub id or local path of the real teacher
    revision: str | None = None
    local_source: str | None = None  # set in local mode: a local-world teacher size ("local-m")

    @property
    def effective_source(self) -> str:
        return self.local_source or self.source


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    kind: str  # "karpathy" | "coco" | "local_shapes"
    karpathy: Path | None = None  # kind karpathy: Karpathy's dataset_coco.json
    images: Path | None = None  # kind karpathy: root holding train2014/ and val2014/
    splits: dict[str, dict[str, Path]] = field(default_factory=dict)  # kind coco: split -> {captions, images}
    options: dict[str, Any] = field(default_factory=dict)  # kind local_shapes: seed / sizes / image_size

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "karpathy":
            out.update(karpathy=str(self.karpathy), images=str(self.images))
        elif self.kind == "coco":
            out["splits"] = {s: {k: str(v) for k, v in d.items()} for s, d in self.splits.items()}
        out.update(self.options)
        return out


@dataclass(frozen=True)
class CacheSpec:
    teacher: str  # key into Study.teachers
    dataset: str  # key into Study.datasets
    split: str  # "train" | "val" | "test"
    teacher_spec: TeacherSpec
    dataset_spec: DatasetSpec

    @property
    def key(self) -> str:
        return f"{self.teacher}/{self.dataset}/{self.split}"


@dataclass(frozen=True)
class Objective:
    metric: str = "mean_r1"
    direction: str = "maximize"


@dataclass(frozen=True)
class Resources:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def as_ray(self) -> dict[str, float]:
        """Resources for tune.with_resources (always with a CPU count: DESIGN.md §3)."""
        out = {"cpu": self.cpus_per_trial}
        if self.gpus_per_trial:
            out["gpu"] = self.gpus_per_trial
        return out


@dataclass(frozen=True)
class Budget:
    epochs: int
    eval_every_epochs: int = 1
    max_steps: int | None = None


@dataclass
class Cell:
    name: str
    study_name: str  # the Optuna study name: "<study>/<cell>"
    teacher: str
    dataset: str
    base_config: dict
    search_space: dict[str, od.BaseDistribution]
    description: str = ""
    search_space_file: Path | None = None
    trials: int = 1  # search trials for this cell (1 when nothing is searched)
    final_epochs: int | None = None
    notes: list[str] = field(default_factory=list)  # e.g. which λ were left out of the search and why
    source_file: str = ""

    def apply(self, params: dict, *, seed: int | None = None, final: bool = False) -> dict:
        """base_config with sampled params set at their dotted paths (+ train.seed; final.epochs if final)."""
        config = copy.deepcopy(self.base_config)
        for name, value in params.items():
            path = canonical_name(name)
            if path not in self.search_space:
                raise StudyError(
                    self.source_file,
                    f"grid.{self.name}.params.{name}",
                    f"{name!r} is not in cell {self.name}'s search space",
                    "searched params: "
                    + (", ".join(self.search_space) or "none")
                    + closest(path, self.search_space),
                )
            _set_dotted(config, path, value)
        if seed is not None:
            _set_dotted(config, "train.seed", int(seed))
        if final and self.final_epochs is not None:
            _set_dotted(config, "train.epochs", int(self.final_epochs))
        return config


@dataclass
class Study:
    name: str
    path: Path
    description: str
    run_dir: Path
    storage_url: str
    teachers: dict[str, TeacherSpec]
    datasets: dict[str, DatasetSpec]
    cells: list[Cell]
    trials_per_cell: int
    objective: Objective
    pruner: dict
    sampler: dict
    final_seeds: list[int]
    resources: Resources
    max_failures: int
    max_concurrent: int | None
    local: bool
    budget: Budget | None = None
    final_epochs: int | None = None

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no cell {name!r}; cells: {', '.join(c.name for c in self.cells)}")

    def caches_needed(self, *, include_test: bool = True) -> list[CacheSpec]:
        """Unique (teacher, dataset, split): train + val for every cell, test for the final runs."""
        seen: dict[tuple[str, str, str], CacheSpec] = {}
        splits = ("train", "val", "test") if include_test else ("train", "val")
        for split in splits:
            for c in self.cells:
                k = (c.teacher, c.dataset, split)
                if k not in seen:
                    seen[k] = CacheSpec(
                        c.teacher, c.dataset, split, self.teachers[c.teacher], self.datasets[c.dataset]
                    )
        return list(seen.values())

    def make_sampler(self):
        """A fresh Optuna sampler for one cell's study, from the ``sampler`` settings."""
        import optuna

        s = dict(self.sampler)
        kind = s.pop("type")
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=s["seed"])
        kw = {"seed": s["seed"], "n_startup_trials": s["n_startup_trials"]}
        if s.get("multivariate"):
            kw["multivariate"] = True
        if s.get("constant_liar"):
            kw["constant_liar"] = True
        return optuna.samplers.TPESampler(**kw)

    def make_pruner(self):
        """A fresh Optuna pruner from the ``pruner`` settings. Steps are evaluation epochs."""
        import optuna

        p = dict(self.pruner)
        kind = p.pop("type")
        if kind == "none":
            return optuna.pruners.NopPruner()
        if kind == "median":
            return optuna.pruners.MedianPruner(**p)
        if kind == "percentile":
            return optuna.pruners.PercentilePruner(**p)
        if kind == "hyperband":
            if p.get("max_resource") is None:
                p["max_resource"] = self.budget.epochs if self.budget else "auto"
            return optuna.pruners.HyperbandPruner(**p)
        return optuna.pruners.SuccessiveHalvingPruner(**p)

    @property
    def n_search_trials(self) -> int:
        return sum(c.trials for c in self.cells)

    @property
    def n_final_runs(self) -> int:
        return len(self.cells) * len(self.final_seeds)

    def describe(self) -> str:
        """The --dry-run table: cells, fixed settings, searched params, trials, final seeds, resources."""
        lines = [f"study {self.name}{' (local)' if self.local else ''}: {self.description}".rstrip(": ")]
        lines.append(f"  file: {self.path}")
        lines.append(f"  run dir: {self.run_dir}    storage: {self.storage_url}")
        header = ("cell", "teacher", "student", "λ feat", "λ aff", "λ con", "searched", "trials")
        rows = []
        for c in self.cells:
            loss = c.base_config.get("loss", {})
            t = self.teachers[c.teacher]
            rows.append(
                (
                    c.name,
                    f"{c.teacher} ({t.effective_source})",
                    str(c.base_config.get("student", {}).get("name", "?")),
                    *(_fmt_lambda(loss.get(k), k, c.search_space) for k in LOSS_TERMS),
                    ", ".join(c.search_space) or "-",
                    str(c.trials),
                )
            )
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
        lines.append(fmt.format(*header))
        lines.append(fmt.format(*("-" * w for w in widths)))
        lines.extend(fmt.format(*r) for r in rows)
        lines.append("")
        for c in self.cells:
            lines.append(f"  {c.study_name}: {c.description}".rstrip(": "))
            fixed = {k: v for k, v in _flatten(c.base_config).items() if not k.startswith("teacher.")}
            lines.append(
                "    fixed: "
                + ", ".join(f"{k}={_fmt(v)}" for k, v in fixed.items() if k not in c.search_space)
            )
            for name, dist in c.search_space.items():
                lines.append(f"    search {name}: {describe_distribution(dist)}")
            for note in c.notes:
                lines.append(f"    note: {note}")
        b = self.budget
        lines.append("")
        if b:
            lines.append(
                f"  budget: {b.epochs} epochs per trial, evaluate every {b.eval_every_epochs}"
                + (f", max {b.max_steps} steps" if b.max_steps else "")
            )
        lines.append(f"  objective: {self.objective.direction} val {self.objective.metric}")
        lines.append("  pruner: " + _fmt_settings(self.pruner) + "  (per cell; steps are epochs)")
        lines.append("  sampler: " + _fmt_settings(self.sampler))
        lines.append(
            f"  search trials: {self.n_search_trials} ({len(self.cells)} cells x {self.trials_per_cell}); "
            f"final runs: {self.n_final_runs} (best config per cell x seeds {self.final_seeds}"
            + (f", {self.final_epochs} epochs" if self.final_epochs else "")
            + ")"
        )
        r = self.resources
        lines.append(
            f"  resources per trial: {r.cpus_per_trial:g} CPU, {r.gpus_per_trial:g} GPU; "
            f"max concurrent: {self.max_concurrent or 'as resources allow'}; retries per trial: {self.max_failures}"
        )
        lines.append("  caches: " + ", ".join(c.key for c in self.caches_needed()))
        for key, t in self.teachers.items():
            src = f"{t.local_source} (local world; real: {t.source})" if t.local_source else t.source
            lines.append(f"  teacher {key}: {src}" + (f" @ {t.revision}" if t.revision else ""))
        for key, d in self.datasets.items():
            lines.append(f"  dataset {key}: {_fmt_settings(d.as_dict())}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Helpers


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def _fmt_settings(d: dict) -> str:
    items = dict(d)
    head = str(items.pop("type", items.pop("kind", "")))
    rest = ", ".join(f"{k}={_fmt(v)}" for k, v in items.items())
    return f"{head} ({rest})" if rest else head


def _fmt_lambda(v: Any, term: str, space: dict) -> str:
    if f"loss.{term}" in space:
        return "search"
    if not v:
        return "off"
    return _fmt(v)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and path not in ("student.overrides", "data.expect"):
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def _set_dotted(config: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node = config
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _get_dotted(config: dict, path: str, default: Any = None) -> Any:
    node: Any = config
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _schema_leaf(path: str) -> Key | None:
    node: Any = TRAINING_CONFIG_KEYS
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node if isinstance(node, Key) else None


def _all_leaf_paths(schema: dict = TRAINING_CONFIG_KEYS, prefix: str = "") -> list[str]:
    out = []
    for k, v in schema.items():
        out.extend(_all_leaf_paths(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])
    return out


_student_cache: tuple[tuple[str, ...], dict | None] | None = None


def _students() -> tuple[tuple[str, ...], dict | None]:
    """(valid student names, override keys or None) from the registry, imported lazily."""
    global _student_cache
    if _student_cache is None:
        try:
            from tinysiglip.students.registry import OVERRIDE_KEYS, list_students

            _student_cache = (tuple(list_students()), dict(OVERRIDE_KEYS))
        except Exception:  # registry not importable (yet): validate names against the planned ones
            _student_cache = (_FALLBACK_STUDENTS, None)
    return _student_cache


class _Checker:
    """Field-by-field validation of one study file; every error names this file."""

    def __init__(self, file: Path):
        self.file = str(file)

    def fail(self, fld: str, problem: str, fix: str = "") -> StudyError:
        return StudyError(self.file, fld, problem, fix)

    def keys(self, d: dict, valid: tuple | list | dict, fld: str) -> None:
        for k in d:
            if k not in valid:
                where = f"{fld}.{k}" if fld else str(k)
                raise self.fail(
                    where,
                    f"unknown key {k!r}",
                    "valid keys here: " + ", ".join(map(str, valid)) + closest(str(k), valid),
                )

    def mapping(self, v: Any, fld: str, *, allow_none: bool = True) -> dict:
        if v is None and allow_none:
            return {}
        if not isinstance(v, dict):
            raise self.fail(
                fld,
                f"expected a mapping, got {type(v).__name__} {v!r}",
                f"write {fld.split('.')[-1]}: {{key: value, ...}}",
            )
        for k in v:
            if not isinstance(k, str):
                raise self.fail(f"{fld}.{k}", f"key {k!r} is not text", "quote the key")
        return v

    def integer(self, v: Any, fld: str, *, min: int | None = None, nullable: bool = False) -> int | None:
        if v is None and nullable:
            return None
        n = as_number(v)
        if n is None or not float(n).is_integer():
            raise self.fail(fld, f"expected an integer, got {v!r}", "write a whole number")
        n = int(n)
        if min is not None and n < min:
            raise self.fail(fld, f"must be >= {min}, got {n}", f"set it to at least {min}")
        return n

    def number(self, v: Any, fld: str) -> float:
        n = as_number(v)
        if n is None or not math.isfinite(n):
            raise self.fail(fld, f"expected a number, got {v!r}", "write a plain number")
        return float(n)

    def text(self, v: Any, fld: str, *, nullable: bool = False) -> str | None:
        if v is None and nullable:
            return None
        if not isinstance(v, str) or not v.strip():
            raise self.fail(
                fld,
                f"expected non-empty text, got {v!r}",
                "write a string (quote it if YAML reads it as something else)",
            )
        return v

    def name(self, v: Any, fld: str) -> str:
        v = str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        self.text(v, fld)
        if not _NAME_RE.match(v):
            raise self.fail(
                fld,
                f"name {v!r} has characters other than letters, digits, '_', '.', '-'",
                "rename it (no '/' or spaces)",
            )
        return v

    # -- the training-config part ------------------------------------------------------------------
    def value(self, key: Key, v: Any, fld: str) -> Any:
        if v is None:
            if key.nullable:
                return None
            raise self.fail(
                fld, f"must not be null; expected {key.describe()}", "give a value or remove the key"
            )
        if key.kind == "lambda":
            if v is False or (isinstance(v, str) and v.strip().lower() == "off"):
                return 0.0
            if v is True or (isinstance(v, str) and v.strip().lower() == "on"):
                return "on"
            n = as_number(v)
            if n is None or not math.isfinite(n):
                raise self.fail(
                    fld,
                    f"a loss weight λ must be a number >= 0 or off, got {v!r}",
                    "write e.g. 1.0, or off to switch the term off",
                )
            if n < 0:
                raise self.fail(
                    fld,
                    f"negative λ ({n:g}): a loss weight must be >= 0",
                    "use a λ >= 0; 0 or off switches the term off",
                )
            return float(n)
        if key.kind == "choice":
            if v not in key.choices:
                raise self.fail(
                    fld,
                    f"{v!r} is not {key.describe()}",
                    "use " + " or ".join(map(str, key.choices)) + closest(str(v), key.choices),
                )
            return v
        if key.kind == "str":
            return self.text(v, fld)
        if key.kind == "bool":
            if not isinstance(v, bool):
                raise self.fail(fld, f"expected true or false, got {v!r}", "write true or false")
            return v
        if key.kind == "dict":
            return copy.deepcopy(self.mapping(v, fld))
        n = self.integer(v, fld) if key.kind == "int" else self.number(v, fld)
        too_low = key.min is not None and (n <= key.min if key.min_open else n < key.min)
        too_high = key.max is not None and n > key.max
        if too_low or too_high:
            raise self.fail(fld, f"{n:g} is out of range: expected {key.describe()}", f"use {key.describe()}")
        return n

    def partial_config(
        self, d: Any, fld: str, *, extra: tuple[str, ...] = (), forbid: tuple[str, ...] = ()
    ) -> dict:
        """Check a partial training config (+ ``extra`` top-level keys, returned untouched)."""
        d = self.mapping(d, fld)
        out: dict[str, Any] = {}
        for k, v in d.items():
            sub = f"{fld}.{k}"
            if k in extra:
                out[k] = v
                continue
            if k not in TRAINING_CONFIG_KEYS:
                raise self.fail(
                    sub,
                    f"unknown key {k!r}",
                    "valid keys here: "
                    + ", ".join(list(dict.fromkeys([*extra, *TRAINING_CONFIG_KEYS])))
                    + closest(k, list(dict.fromkeys([*extra, *TRAINING_CONFIG_KEYS]))),
                )
            if k in forbid:
                raise self.fail(
                    sub, f"{k!r} cannot be set here", f"local mode keeps the study's {k}; remove it"
                )
            if k in _OWNED_ELSEWHERE:
                raise self.fail(sub, f"{k!r} is not set in a training-config section", _OWNED_ELSEWHERE[k])
            section = TRAINING_CONFIG_KEYS[k]
            v = self.mapping(v, sub, allow_none=False)
            checked = {}
            for kk, vv in v.items():
                path = f"{k}.{kk}"
                if kk not in section:
                    raise self.fail(
                        f"{sub}.{kk}",
                        f"unknown key {kk!r}",
                        f"valid keys of {k}: " + ", ".join(section) + closest(kk, section),
                    )
                if path in _OWNED_ELSEWHERE:
                    raise self.fail(f"{sub}.{kk}", f"{path} is not set here", _OWNED_ELSEWHERE[path])
                checked[kk] = self.value(section[kk], vv, f"{sub}.{kk}")
            if k == "student":
                self.student(checked, sub)
            out[k] = checked
        return out

    def student(self, s: dict, fld: str) -> None:
        names, override_keys = _students()
        if "name" in s and s["name"] not in names:
            raise self.fail(
                f"{fld}.name",
                f"unknown student {s['name']!r}",
                "use a registered student: " + ", ".join(names) + closest(s["name"], names),
            )
        if override_keys is not None:
            for k in s.get("overrides", {}):
                if k not in override_keys:
                    raise self.fail(
                        f"{fld}.overrides.{k}",
                        f"unknown student override {k!r}",
                        "valid overrides: " + ", ".join(override_keys) + closest(k, override_keys),
                    )


# --------------------------------------------------------------------------------------------------
# Sections


def _teachers(c: _Checker, raw: Any) -> dict[str, TeacherSpec]:
    raw = c.mapping(raw, "teachers", allow_none=False)
    if not raw:
        raise c.fail(
            "teachers",
            "no teacher defined",
            "add teachers: {large: {source: google/siglip2-large-patch16-256}}",
        )
    out = {}
    for key, spec in raw.items():
        fld = f"teachers.{key}"
        c.name(key, fld)
        if isinstance(spec, str):
            spec = {"source": spec}
        spec = c.mapping(spec, fld, allow_none=False)
        c.keys(spec, ("source", "revision"), fld)
        if "source" not in spec:
            raise c.fail(
                f"{fld}.source", "missing source", "add source: google/siglip2-... (Hub id) or a local path"
            )
        rev = spec.get("revision")
        out[key] = TeacherSpec(
            key,
            c.text(spec["source"], f"{fld}.source"),
            None if rev is None else str(c.text(str(rev), f"{fld}.revision")),
        )
    return out


def _dataset(c: _Checker, key: str, spec: Any, fld: str) -> DatasetSpec:
    spec = c.mapping(spec, fld, allow_none=False)
    kind = spec.get("kind")
    if kind is None:
        kind = "karpathy" if "karpathy" in spec else "coco" if "splits" in spec else None
    if kind not in ("karpathy", "coco", "local_shapes"):
        raise c.fail(
            f"{fld}.kind" if "kind" in spec else fld,
            f"cannot tell how to load dataset {key!r}" if kind is None else f"unknown dataset kind {kind!r}",
            "give {karpathy: <dataset_coco.json>, images: <root>}, or {splits: {train: {captions, images}, val: ..., test: ...}}, "
            "or {kind: local_shapes}",
        )
    if kind == "karpathy":
        c.keys(spec, ("kind", "karpathy", "images"), fld)
        for k in ("karpathy", "images"):
            if k not in spec:
                raise c.fail(
                    f"{fld}.{k}",
                    f"missing {k}",
                    "a karpathy dataset needs karpathy: <dataset_coco.json> and images: <root>",
                )
        return DatasetSpec(
            key,
            kind,
            karpathy=Path(c.text(spec["karpathy"], f"{fld}.karpathy")),
            images=Path(c.text(spec["images"], f"{fld}.images")),
        )
    if kind == "coco":
        c.keys(spec, ("kind", "splits"), fld)
        splits = c.mapping(spec.get("splits"), f"{fld}.splits", allow_none=False)
        c.keys(splits, ("train", "val", "test"), f"{fld}.splits")
        out: dict[str, dict[str, Path]] = {}
        for split in ("train", "val", "test"):
            if split not in splits:
                raise c.fail(
                    f"{fld}.splits.{split}",
                    f"missing split {split!r}",
                    "give captions: <captions_*.json> and images: <dir> for train, val and test",
                )
            s = c.mapping(splits[split], f"{fld}.splits.{split}", allow_none=False)
            c.keys(s, ("captions", "images"), f"{fld}.splits.{split}")
            for k in ("captions", "images"):
                if k not in s:
                    raise c.fail(f"{fld}.splits.{split}.{k}", f"missing {k}", f"add {k}: <path>")
            out[split] = {k: Path(c.text(s[k], f"{fld}.splits.{split}.{k}")) for k in ("captions", "images")}
        return DatasetSpec(key, kind, splits=out)
    return _local_dataset(c, key, spec, fld)


def _local_dataset(c: _Checker, key: str, spec: Any, fld: str) -> DatasetSpec:
    spec = c.mapping(spec, fld)
    c.keys(spec, ("kind", "seed", "sizes", "image_size"), fld)
    if spec.get("kind", "local_shapes") != "local_shapes":
        raise c.fail(
            f"{fld}.kind",
            f"local datasets are kind local_shapes, got {spec['kind']!r}",
            "write kind: local_shapes or leave it out",
        )
    opts: dict[str, Any] = {}
    if "seed" in spec:
        opts["seed"] = c.integer(spec["seed"], f"{fld}.seed", min=0)
    if "image_size" in spec:
        opts["image_size"] = c.integer(spec["image_size"], f"{fld}.image_size", min=8)
    if "sizes" in spec:
        sizes = c.mapping(spec["sizes"], f"{fld}.sizes", allow_none=False)
        c.keys(sizes, ("train", "val", "test"), f"{fld}.sizes")
        opts["sizes"] = {k: c.integer(v, f"{fld}.sizes.{k}", min=1) for k, v in sizes.items()}
    return DatasetSpec(key, "local_shapes", options=opts)


def _datasets(c: _Checker, raw: Any) -> dict[str, DatasetSpec]:
    raw = c.mapping(raw, "datasets", allow_none=False)
    if not raw:
        raise c.fail(
            "datasets",
            "no dataset defined",
            "add datasets: {coco: {karpathy: data/coco/dataset_coco.json, images: data/coco}}",
        )
    out = {}
    for key, spec in raw.items():
        c.name(key, f"datasets.{key}")
        out[key] = _dataset(c, key, spec, f"datasets.{key}")
    return out


def _budget(c: _Checker, raw: dict, fld: str, base: Budget | None = None) -> Budget:
    c.keys(raw, ("epochs", "eval_every_epochs", "max_steps"), fld)
    if base is None and "epochs" not in raw:
        raise c.fail(f"{fld}.epochs", "missing epochs", "add budget: {epochs: 10}")
    epochs = c.integer(raw["epochs"], f"{fld}.epochs", min=1) if "epochs" in raw else base.epochs
    every = (
        c.integer(raw["eval_every_epochs"], f"{fld}.eval_every_epochs", min=1)
        if "eval_every_epochs" in raw
        else (min(base.eval_every_epochs, epochs) if base else 1)
    )
    max_steps = (
        c.integer(raw["max_steps"], f"{fld}.max_steps", min=1, nullable=True)
        if "max_steps" in raw
        else (base.max_steps if base else None)
    )
    if every > epochs:
        raise c.fail(
            f"{fld}.eval_every_epochs",
            f"evaluating every {every} epochs in a {epochs}-epoch run gives no evaluation to prune on",
            f"set it to at most {epochs}",
        )
    return Budget(epochs, every, max_steps)


def _objective(c: _Checker, raw: Any) -> Objective:
    raw = c.mapping(raw, "objective")
    c.keys(raw, ("metric", "direction"), "objective")
    metric = raw.get("metric", "mean_r1")
    if metric not in METRICS:
        raise c.fail(
            "objective.metric",
            f"unknown metric {metric!r}",
            "use one of " + ", ".join(METRICS) + closest(str(metric), METRICS),
        )
    direction = raw.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise c.fail(
            "objective.direction",
            f"direction must be maximize or minimize, got {direction!r}",
            "write maximize" + closest(str(direction), ("maximize", "minimize")),
        )
    return Objective(metric, direction)


def _settings(c: _Checker, raw: dict, fld: str, table: dict[str, dict], default_type: str) -> dict:
    kind = raw.get("type", default_type)
    if kind not in table:
        raise c.fail(
            f"{fld}.type",
            f"unknown {fld.split('.')[-1]} type {kind!r}",
            "use one of " + ", ".join(table) + closest(str(kind), table),
        )
    allowed = table[kind]
    c.keys(raw, ("type", *allowed), fld)
    out: dict[str, Any] = {"type": kind}
    for k, default in allowed.items():
        v = raw.get(k, default)
        f = f"{fld}.{k}"
        if k == "percentile":
            v = c.number(v, f)
            if not 0 < v < 100:
                raise c.fail(f, f"percentile must be in (0, 100), got {v:g}", "e.g. percentile: 25")
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise c.fail(f, f"expected true or false, got {v!r}", "write true or false")
        elif k == "max_resource" or (k == "min_resource" and kind == "successive_halving"):
            if v not in (None, "auto"):
                v = c.integer(v, f, min=1)
        elif k == "reduction_factor":
            v = c.integer(v, f, min=2)
        elif k in ("interval_steps", "n_min_trials", "min_resource"):
            v = c.integer(v, f, min=1)
        else:
            v = c.integer(v, f, min=0)
        out[k] = v
    return out


def _resources(c: _Checker, raw: dict, fld: str, base: Resources | None = None) -> Resources:
    c.keys(raw, ("cpus_per_trial", "gpus_per_trial"), fld)
    cpus = (
        c.number(raw["cpus_per_trial"], f"{fld}.cpus_per_trial")
        if "cpus_per_trial" in raw
        else (base.cpus_per_trial if base else 1.0)
    )
    gpus = (
        c.number(raw["gpus_per_trial"], f"{fld}.gpus_per_trial")
        if "gpus_per_trial" in raw
        else (base.gpus_per_trial if base else 0.0)
    )
    if cpus <= 0:
        raise c.fail(
            f"{fld}.cpus_per_trial",
            f"a trial needs CPUs: cpus_per_trial must be > 0, got {cpus:g}",
            "e.g. cpus_per_trial: 4",
        )
    if gpus < 0:
        raise c.fail(
            f"{fld}.gpus_per_trial",
            f"gpus_per_trial must be >= 0, got {gpus:g}",
            "use 0 (CPU), a fraction like 0.25, or a whole number",
        )
    if gpus > 1 and not float(gpus).is_integer():
        raise c.fail(
            f"{fld}.gpus_per_trial",
            f"{gpus:g} GPUs per trial is impossible: fractions share one GPU, so above 1 it must be a whole number",
            f"use {math.floor(gpus):g} or {math.ceil(gpus):g}, or a fraction <= 1",
        )
    return Resources(cpus, gpus)


def _final(
    c: _Checker, raw: dict, fld: str, base: tuple[list[int], int | None] | None = None
) -> tuple[list[int], int | None]:
    c.keys(raw, ("seeds", "epochs"), fld)
    if "seeds" in raw:
        seeds = raw["seeds"]
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = [seeds]
        if not isinstance(seeds, list) or not seeds:
            raise c.fail(
                f"{fld}.seeds",
                f"final runs need at least one seed, got {raw['seeds']!r}",
                "e.g. seeds: [0, 1, 2]",
            )
        seeds = [c.integer(s, f"{fld}.seeds[{i}]", min=0) for i, s in enumerate(seeds)]
        if len(set(seeds)) != len(seeds):
            raise c.fail(f"{fld}.seeds", f"repeated seed in {seeds}", "list each seed once")
    elif base is not None:
        seeds = base[0]
    else:
        raise c.fail(f"{fld}.seeds", "missing seeds", "add final: {seeds: [0, 1, 2]}")
    epochs = (
        c.integer(raw["epochs"], f"{fld}.epochs", min=1, nullable=True)
        if "epochs" in raw
        else (base[1] if base else None)
    )
    return seeds, epochs


def _storage(c: _Checker, v: Any, fld: str) -> str | None:
    if v is None:
        return None
    url = c.text(v, fld)
    try:
        from sqlalchemy.engine import make_url

        make_url(url)
    except Exception as e:
        raise c.fail(
            fld,
            f"not a SQLAlchemy URL: {url!r} ({e})",
            "e.g. sqlite:///runs/study.db or postgresql+psycopg://user@host/db",
        ) from None
    return url


def _local_teacher_for(source: str) -> str | None:
    s = source.lower()
    for size, local in _LOCAL_TEACHER_BY_SIZE:
        if size in s:
            return local
    return None


# --------------------------------------------------------------------------------------------------
# Search spaces


def _search_space(
    c: _Checker, ref: Any, fld: str, study_dir: Path, cache: dict
) -> tuple[dict[str, od.BaseDistribution], Path | None]:
    if ref is None:
        return {}, None
    if isinstance(ref, dict):  # inline: {params: {...}} or directly {name: spec}
        params = ref.get("params", ref) if set(ref) <= {"params", "description"} else ref
        return _parse_space(c.file, f"{fld}.params" if "params" in ref else fld, params), None
    ref = c.text(ref, fld)
    path = (study_dir / ref).resolve()
    if path not in cache:
        _, params = load_search_space_file(path, field=fld, referenced_from=c.file)
        try:
            cache[path] = _parse_space(str(path), "params", params)
        except StudyError as e:  # say which study uses the broken search space
            raise StudyError(
                e.file, e.field, f"{e.problem} (search space of {c.file}, {fld})", e.fix
            ) from None
    return dict(cache[path]), path


def _parse_space(file: str, fld: str, params: Any) -> dict[str, od.BaseDistribution]:
    if not isinstance(params, dict):
        raise StudyError(
            file,
            fld,
            "the search space must map parameter names to distributions",
            "e.g. {lambda_feat: {type: float, low: 0.1, high: 10, log: true}}",
        )
    out: dict[str, od.BaseDistribution] = {}
    valid = sorted([*_all_leaf_paths(), *PARAM_ALIASES])
    for name, spec in params.items():
        f = f"{fld}.{name}"
        path = canonical_name(str(name))
        leaf = _schema_leaf(path)
        if leaf is None:
            raise StudyError(
                file,
                f,
                f"unknown parameter {name!r}",
                "use a dotted training-config path (loss.feat, optim.lr) or an alias ("
                + ", ".join(PARAM_ALIASES)
                + ")"
                + closest(str(name), valid),
            )
        if any(path == p or path.startswith(p + ".") for p in NOT_SEARCHABLE_PREFIXES):
            raise StudyError(
                file,
                f,
                f"{path} cannot be searched (the study/driver sets it)",
                "remove it from the search space",
            )
        if path in out:
            raise StudyError(
                file,
                f,
                f"{name!r} names {path}, which is already in this search space",
                "keep one of the two entries",
            )
        dist = parse_distribution(spec, file=file, field=f)
        _check_dist_against(leaf, dist, file, f, path)
        out[path] = dist
    return out


def _check_dist_against(leaf: Key, dist: od.BaseDistribution, file: str, fld: str, path: str) -> None:
    checker = _Checker(Path(file))
    if isinstance(dist, od.CategoricalDistribution):
        for i, choice in enumerate(dist.choices):
            checker.value(leaf, choice, f"{fld}.choices[{i}]")
        return
    if leaf.kind not in ("float", "int", "lambda"):
        raise StudyError(
            file,
            f"{fld}.type",
            f"{path} is {leaf.describe()}, not a number range",
            "use type: categorical with choices",
        )
    if leaf.kind == "int" and not isinstance(dist, od.IntDistribution):
        raise StudyError(file, f"{fld}.type", f"{path} is an integer", "use type: int (or categorical)")
    low, high = distribution_bounds(dist)
    if leaf.kind == "lambda" and low < 0:
        raise StudyError(
            file,
            f"{fld}.low",
            f"negative λ ({low:g}): loss weights must be >= 0",
            "set low >= 0 (a log range needs low > 0)",
        )
    for bound, v in (("low", low), ("high", high)):
        checker.value(leaf, v, f"{fld}.{bound}")


# --------------------------------------------------------------------------------------------------
# load_study


def load_study(
    path: str | Path, *, local: bool = False, storage: str | None = None, run_dir: str | Path | None = None
) -> Study:
    """Read and validate a study file; ``local`` applies its ``local:`` block (the --local world).

    ``storage`` / ``run_dir`` are the CLI overrides (--storage); they win over the file.
    """
    path = Path(path)
    c = _Checker(path)
    raw = read_yaml(path, what="study")
    if not isinstance(raw, dict):
        raise c.fail("", "a study file must be a YAML mapping", "start from studies/ablation_A.yaml")
    c.keys(raw, _TOP_KEYS, "")
    for required in ("teachers", "datasets", "grid"):
        if required not in raw:
            raise c.fail(
                required, f"missing {required!r}", "see studies/ablation_A.yaml for a complete study"
            )

    name = c.name(raw.get("study", path.stem), "study")
    description = raw.get("description") or ""
    if not isinstance(description, str):
        raise c.fail("description", "description must be text", "quote it")
    teachers = _teachers(c, raw["teachers"])
    datasets = _datasets(c, raw["datasets"])

    trials_per_cell = c.integer(raw.get("trials_per_cell", 20), "trials_per_cell", min=1)
    budget = _budget(
        c, c.mapping(raw.get("budget"), "budget", allow_none=False) if "budget" in raw else {}, "budget"
    )
    objective = _objective(c, raw.get("objective"))
    pruner = _settings(c, c.mapping(raw.get("pruner"), "pruner"), "pruner", _PRUNER_KEYS, "median")
    sampler = _settings(c, c.mapping(raw.get("sampler"), "sampler"), "sampler", _SAMPLER_KEYS, "tpe")
    final_seeds, final_epochs = _final(
        c, c.mapping(raw.get("final"), "final") if "final" in raw else {"seeds": [0, 1, 2]}, "final"
    )
    resources = _resources(c, c.mapping(raw.get("resources"), "resources"), "resources")
    max_failures = c.integer(raw.get("max_failures", 2), "max_failures", min=0)
    max_concurrent = c.integer(raw.get("max_concurrent"), "max_concurrent", min=1, nullable=True)
    file_storage = _storage(c, raw.get("storage"), "storage")
    file_run_dir = c.text(raw.get("run_dir"), "run_dir", nullable=True)

    defaults = c.partial_config(raw.get("defaults"), "defaults", extra=("teacher", "dataset"))
    grid = c.mapping(raw["grid"], "grid", allow_none=False)
    if not grid:
        raise c.fail("grid", "the grid has no cells", "add at least one cell, e.g. grid: {full: {}}")
    cells_raw = {}
    for cell_name, cell in grid.items():
        c.name(cell_name, f"grid.{cell_name}")
        cells_raw[str(cell_name)] = c.partial_config(cell, f"grid.{cell_name}", extra=_CELL_EXTRA_KEYS)

    # ---- local overrides
    local_config: dict = {}
    local_raw = c.mapping(raw.get("local"), "local")
    c.keys(local_raw, _LOCAL_KEYS, "local")
    if local:
        lt = c.mapping(local_raw.get("teachers"), "local.teachers")
        for key in lt:
            if key not in teachers:
                raise c.fail(
                    f"local.teachers.{key}",
                    f"no teacher {key!r} in teachers",
                    "map the study's teacher keys: " + ", ".join(teachers) + closest(key, teachers),
                )
        mapped = {}
        for key, t in teachers.items():
            local_name = (
                c.text(lt[key], f"local.teachers.{key}") if key in lt else _local_teacher_for(t.source)
            )
            if local_name is None:
                raise c.fail(
                    f"local.teachers.{key}",
                    f"no local-world teacher for {t.source!r}",
                    f"add local: {{teachers: {{{key}: local-m}}}}",
                )
            mapped[key] = TeacherSpec(key, t.source, t.revision, local_source=local_name)
        teachers = mapped
        ld = c.mapping(local_raw.get("datasets"), "local.datasets")
        for key in ld:
            if key not in datasets:
                raise c.fail(
                    f"local.datasets.{key}",
                    f"no dataset {key!r} in datasets",
                    "use the study's dataset keys: " + ", ".join(datasets) + closest(key, datasets),
                )
        datasets = {key: _local_dataset(c, key, ld.get(key), f"local.datasets.{key}") for key in datasets}
        trials_per_cell = c.integer(local_raw.get("trials_per_cell", 2), "local.trials_per_cell", min=1)
        budget = _budget(
            c, {"epochs": 2, **c.mapping(local_raw.get("budget"), "local.budget")}, "local.budget", budget
        )
        final_seeds, final_epochs = _final(
            c,
            {"seeds": [0, 1], "epochs": None, **c.mapping(local_raw.get("final"), "local.final")},
            "local.final",
            (final_seeds, final_epochs),
        )
        resources = _resources(
            c,
            {
                "cpus_per_trial": 1,
                "gpus_per_trial": 0,
                **c.mapping(local_raw.get("resources"), "local.resources"),
            },
            "local.resources",
        )
        if resources.gpus_per_trial:
            raise c.fail(
                "local.resources.gpus_per_trial",
                "the local world runs on CPU",
                "set local.resources.gpus_per_trial: 0",
            )
        if "pruner" in local_raw:
            lp = c.mapping(local_raw["pruner"], "local.pruner")
            base = {k: v for k, v in pruner.items() if "type" not in lp or lp["type"] == pruner["type"]}
            pruner = _settings(c, {**base, **lp}, "local.pruner", _PRUNER_KEYS, pruner["type"])
        if "sampler" in local_raw:
            ls = c.mapping(local_raw["sampler"], "local.sampler")
            base = {k: v for k, v in sampler.items() if "type" not in ls or ls["type"] == sampler["type"]}
            sampler = _settings(c, {**base, **ls}, "local.sampler", _SAMPLER_KEYS, sampler["type"])
        if "max_failures" in local_raw:
            max_failures = c.integer(local_raw["max_failures"], "local.max_failures", min=0)
        if "max_concurrent" in local_raw:
            max_concurrent = c.integer(
                local_raw["max_concurrent"], "local.max_concurrent", min=1, nullable=True
            )
        file_storage = _storage(c, local_raw.get("storage"), "local.storage")  # never the real database
        lrd = c.text(local_raw.get("run_dir"), "local.run_dir", nullable=True)
        file_run_dir = lrd if lrd else (f"{file_run_dir}-local" if file_run_dir else None)
        local_config = c.partial_config(local_raw.get("config"), "local.config", forbid=("loss", "teacher"))
        local_config.setdefault("train", {}).setdefault("device", "cpu")
    elif local_raw:  # validate the local block too, so CI's --local run is not the first to see its errors
        load_study(path, local=True)

    # ---- cells
    study_dir = path.parent
    space_cache: dict = {}
    top_space, top_space_file = _search_space(
        c, raw.get("search_space"), "search_space", study_dir, space_cache
    )
    cells: list[Cell] = []
    for cell_name, cell in cells_raw.items():
        fld = f"grid.{cell_name}"
        extras = {k: cell.pop(k) for k in _CELL_EXTRA_KEYS if k in cell}
        if not isinstance(extras.get("description", ""), (str, type(None))):
            raise c.fail(f"{fld}.description", "description must be text", "quote it")
        if not isinstance(extras.get("search_space"), (str, dict, type(None))):
            raise c.fail(
                f"{fld}.search_space",
                "expected a path to a search-space file",
                "e.g. search_space: ../search_spaces/lambda_full.yaml",
            )
        teacher_key = _cell_key(c, "teacher", teachers, extras, defaults, fld)
        dataset_key = _cell_key(c, "dataset", datasets, extras, defaults, fld)

        d = {k: v for k, v in defaults.items() if k not in ("teacher", "dataset")}
        config = _deep_merge(d, cell)
        config = _deep_merge(config, local_config)
        # Loss weights are always explicit; "on" takes the default λ (or 1.0).
        loss = config.setdefault("loss", {})
        for term in LOSS_TERMS:
            v = loss.get(term, 1.0)
            if v == "on":
                dv = defaults.get("loss", {}).get(term, 1.0)
                v = dv if isinstance(dv, float) and dv > 0 else 1.0
            loss[term] = float(v)
        if not any(loss[t] > 0 for t in LOSS_TERMS):
            raise c.fail(
                f"{fld}.loss",
                "all three losses are off: nothing to train",
                "switch on at least one of feat, affinity, contrast",
            )
        student = config.setdefault("student", {})
        if "name" not in student:
            raise c.fail(
                f"{fld}.student.name",
                "no student for this cell",
                "set defaults.student.name (e.g. vit_small)",
            )
        t = teachers[teacher_key]
        config["teacher"] = {"source": t.effective_source, "revision": None if t.local_source else t.revision}
        train = config.setdefault("train", {})
        train["epochs"] = budget.epochs
        train["eval_every_epochs"] = budget.eval_every_epochs
        if budget.max_steps is not None:
            train["max_steps"] = budget.max_steps
        train.setdefault("threads", max(1, int(resources.cpus_per_trial)))
        if 0 < resources.gpus_per_trial < 1:
            train.setdefault("gpu_memory_fraction", resources.gpus_per_trial)
        config["objective"] = {"metric": objective.metric, "direction": objective.direction}

        if "search_space" in extras:
            space, space_file = _search_space(
                c, extras["search_space"], f"{fld}.search_space", study_dir, space_cache
            )
        else:
            space, space_file = dict(top_space), top_space_file
        notes = []
        off = [t for t in LOSS_TERMS if loss[t] == 0 and f"loss.{t}" in space]
        for term in off:
            del space[f"loss.{term}"]
        if off:
            notes.append("not searched (loss off, λ = 0): " + ", ".join(f"loss.{t}" for t in off))
        on = [t for t in LOSS_TERMS if loss[t] > 0]
        if len(on) == 1 and f"loss.{on[0]}" in space:
            del space[f"loss.{on[0]}"]
            notes.append(
                f"loss.{on[0]} fixed at {loss[on[0]]:g}: it is the only loss, and AdamW makes its scale redundant with optim.lr"
            )
        cells.append(
            Cell(
                name=cell_name,
                study_name=f"{name}/{cell_name}",
                teacher=teacher_key,
                dataset=dataset_key,
                base_config=config,
                search_space=space,
                description=str(extras.get("description") or ""),
                search_space_file=space_file,
                trials=trials_per_cell if space else 1,
                final_epochs=final_epochs,
                notes=notes,
                source_file=str(path),
            )
        )

    run = (
        Path(run_dir)
        if run_dir is not None
        else Path(file_run_dir)
        if file_run_dir
        else Path("runs") / (f"{name}-local" if local else name)
    )
    storage_url = (
        _storage(c, storage, "--storage")
        if storage
        else file_storage
        or f"sqlite:///{run.absolute().as_posix()}/study.db"  # printable, usable from anywhere
    )
    return Study(
        name=name,
        path=path,
        description=description,
        run_dir=run,
        storage_url=storage_url,
        teachers=teachers,
        datasets=datasets,
        cells=cells,
        trials_per_cell=trials_per_cell,
        objective=objective,
        pruner=pruner,
        sampler=sampler,
        final_seeds=final_seeds,
        resources=resources,
        max_failures=max_failures,
        max_concurrent=max_concurrent,
        local=local,
        budget=budget,
        final_epochs=final_epochs,
    )


def _cell_key(c, kind: str, table: dict, extras: dict, defaults: dict, fld: str) -> str:
    """The teacher or dataset key a cell uses (its own, the defaults', or the only one defined)."""
    key = extras.get(kind, defaults.get(kind))
    if key is None and len(table) == 1:
        key = next(iter(table))
    key_fld = f"{fld}.{kind}" if kind in extras else f"defaults.{kind}"
    if key is None:
        raise c.fail(
            key_fld,
            f"no {kind} for this cell",
            f"set defaults.{kind} (or the cell's {kind}) to one of: " + ", ".join(table),
        )
    c.text(key, key_fld)
    if key not in table:
        raise c.fail(
            key_fld,
            f"unknown {kind} {key!r}",
            f"define it under {kind}s or use one of: " + ", ".join(table) + closest(str(key), table),
        )
    return key
