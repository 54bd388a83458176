"""A loaded study: what the driver runs (cells with their configs and search spaces, budgets, resources).

Built from a validated study file by tinysiglip.sweep.study.build; the driver reads these objects and
may change the run-time settings it is given on its command line (trials per cell, epochs, seeds).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna.distributions as od

from tinysiglip.config.problems import closest
from tinysiglip.config.training import ObjectiveConfig
from tinysiglip.sweep.search_space import StudyError, canonical_name
from tinysiglip.sweep.study.models import Budget, Resources

__all__ = [
    "Budget",
    "CacheSpec",
    "Cell",
    "DatasetSpec",
    "Objective",
    "Resources",
    "Study",
    "TeacherSpec",
    "make_pruner",
]

# The study's objective: the validation metric and its direction (the training config's own section).
Objective = ObjectiveConfig


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


def set_dotted(config: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


@dataclass
class Cell:
    name: str
    study_name: str  # the Optuna study name: "<study>/<cell>"
    teacher: str
    dataset: str
    base_config: dict  # partial training config: what the study sets for this cell
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
            set_dotted(config, path, value)
        if seed is not None:
            set_dotted(config, "train.seed", int(seed))
        if final and self.final_epochs is not None:
            set_dotted(config, "train.epochs", int(self.final_epochs))
        return config


def make_pruner(settings: dict, *, max_epochs: int | None = None):
    """A fresh Optuna pruner from validated ``pruner`` settings (``{"type": ..., settings}``); steps are
    evaluation epochs. ``max_epochs`` is Hyperband's longest bracket when the settings leave it open.
    Shared by the sweep and the pruner replay (:mod:`tinysiglip.results.replay`)."""
    import optuna

    p = dict(settings)
    kind = p.pop("type")
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(**p)
    if kind == "percentile":
        return optuna.pruners.PercentilePruner(**p)
    if kind == "hyperband":
        if p.get("max_resource") is None:
            p["max_resource"] = max_epochs or "auto"
        return optuna.pruners.HyperbandPruner(**p)
    if kind == "wilcoxon":  # replay only: study files do not offer it (steps are few epochs, not instances)
        return optuna.pruners.WilcoxonPruner(**p)
    return optuna.pruners.SuccessiveHalvingPruner(**p)


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
    pruner: dict  # {"type": ..., settings}: the validated pruner section with its defaults
    sampler: dict  # {"type": ..., settings}
    final_seeds: list[int]
    resources: Resources
    max_failures: int
    max_concurrent: int | None
    local: bool
    budget: Budget | None = None
    final_epochs: int | None = None
    cache_stage: str = "shared"  # "node-local": trials copy the caches to their node first (caches.stage)
    cache_stage_root: str | None = None  # node-local folder of the staged copies (caches.root)

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

    def make_sampler(self, seed: int | None = None):
        """A fresh Optuna sampler for one cell's study, from the ``sampler`` settings (``seed`` replaces
        the study's: :mod:`tinysiglip.sweep.sampling` seeds one per trial)."""
        import optuna

        s = dict(self.sampler)
        if seed is not None:
            s["seed"] = int(seed)
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
        return make_pruner(self.pruner, max_epochs=self.budget.epochs if self.budget else None)

    @property
    def n_search_trials(self) -> int:
        return sum(c.trials for c in self.cells)

    @property
    def n_final_runs(self) -> int:
        return len(self.cells) * len(self.final_seeds)

    def describe(self) -> str:
        """The --dry-run table: cells, fixed settings, searched params, trials, final seeds, resources."""
        from tinysiglip.sweep.study.describe import describe_study

        return describe_study(self)
