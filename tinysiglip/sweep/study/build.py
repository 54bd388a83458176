"""Reading a study file: validate it against the models (every problem of the file at once), then
expand the grid into cells, each with its partial training config and the search space that applies.

Two rounds, because the second needs a well-formed file: the models (types, ranges, unknown keys), then
what only the whole file can say (a cell's teacher key exists, a cell trains something, a search space
fits the config fields it samples, the local profile maps every teacher).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna.distributions as od
from pydantic import TypeAdapter, ValidationError

from tinysiglip.config.fields import NAME_PATTERN
from tinysiglip.config.problems import Problem, closest, problems_from
from tinysiglip.config.training import LOSS_TERMS, TrainingConfig
from tinysiglip.sweep.search_space import (
    SearchSpaceFile,
    StudyError,
    load_search_space,
    read_yaml,
    resolve_search_space,
)
from tinysiglip.sweep.study.models import (
    Budget,
    CocoDataset,
    GridCell,
    KarpathyDataset,
    LocalShapes,
    Pruner,
    Resources,
    Sampler,
    StorageUrl,
    StudyFile,
    TeacherEntry,
)
from tinysiglip.sweep.study.plan import Cell, DatasetSpec, Study, TeacherSpec

__all__ = ["load_study"]

# SigLIP 2 size -> local-world teacher size, used when a study's local.teachers leaves a key out.
_LOCAL_TEACHER_BY_SIZE = (("so400m", "local-l"), ("large", "local-m"), ("base", "local-s"))


def load_study(
    path: str | Path, *, local: bool = False, storage: str | None = None, run_dir: str | Path | None = None
) -> Study:
    """Read and validate a study file; ``local`` applies its ``local:`` block (the --local world).

    ``storage`` / ``run_dir`` are the CLI overrides (--storage); they win over the file. A file with
    problems raises one StudyError that lists them all.
    """
    path = Path(path)
    raw = read_yaml(path, what="study")
    if raw is None:
        raise StudyError(
            path, "", "the file is empty (or only comments)", "start from studies/ablation_A.yaml"
        )
    if not isinstance(raw, dict):
        raise StudyError(
            path, "", "a study file must be a YAML mapping", "start from studies/ablation_A.yaml"
        )
    try:
        model = StudyFile.model_validate(raw)
    except ValidationError as error:
        raise StudyError.of(path, problems_from(error, StudyFile)) from None
    worlds = [_Expansion(model, path, local=local, storage=storage, run_dir=run_dir)]
    if not local and "local" in model.model_fields_set:  # so that CI's --local run is not the first to fail
        worlds.append(_Expansion(model, path, local=True))
    studies = [world.study() for world in worlds]
    problems = list(dict.fromkeys(p for world in worlds for p in world.problems))
    if problems:
        raise StudyError.of(path, problems)
    for world in worlds:
        if world.other_file_error is not None:
            raise world.other_file_error
    return studies[0]


@dataclass
class _Settings:
    """The study-wide settings of one world (the file's, or the file's with its local profile)."""

    trials_per_cell: int
    budget: Budget
    final_seeds: list[int]
    final_epochs: int | None
    resources: Resources
    pruner: dict
    sampler: dict
    max_failures: int
    max_concurrent: int | None
    storage: str | None
    run_dir: str | None


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _local_teacher_for(source: str) -> str | None:
    s = source.lower()
    for size, local in _LOCAL_TEACHER_BY_SIZE:
        if size in s:
            return local
    return None


def _shapes(key: str, options: LocalShapes | None) -> DatasetSpec:
    given = options.model_dump(exclude_unset=True, exclude_none=True, exclude={"kind"}) if options else {}
    return DatasetSpec(key, "local_shapes", options=given)


class _Expansion:
    """One world (real or local) of a validated study file; its problems are collected, not raised."""

    def __init__(
        self, model: StudyFile, path: Path, *, local: bool, storage: str | None = None, run_dir: Any = None
    ):
        self.model, self.path, self.local = model, path, local
        self.storage, self.run_dir = storage, run_dir
        self.problems: list[Problem] = []
        self.other_file_error: StudyError | None = None  # the first error found in a search-space file
        self.spaces: dict[Path, dict[str, od.BaseDistribution]] = {}

    def add(self, field: str, problem: str, fix: str = "") -> None:
        self.problems.append(Problem(field, problem, fix))

    def add_validation(self, error: ValidationError, root: Any, prefix: str) -> None:
        self.problems.extend(problems_from(error, root, prefix=prefix))

    # ------------------------------------------------------------------------------------------ study
    def study(self) -> Study:
        """The study of this world; meaningful only when no problems were found (see ``problems``)."""
        m = self.model
        name = m.study or self.path.stem
        if m.study is None and not re.fullmatch(NAME_PATTERN, name):
            self.add("study", f"the file name {name!r} is not a valid study name", "add study: <name>")
        teachers, datasets, settings = self._teachers(), self._datasets(), self._settings()
        top = self._space(m.search_space, "search_space")
        local_config = m.local.config.model_dump(exclude_unset=True) if self.local else {}
        if self.local:
            local_config.setdefault("train", {}).setdefault("device", "cpu")
        cells = [
            self._cell(name, cell_name, cell or GridCell(), teachers, datasets, settings, top, local_config)
            for cell_name, cell in m.grid.items()
        ]
        run = (
            Path(self.run_dir)
            if self.run_dir is not None
            else Path(settings.run_dir)
            if settings.run_dir
            else Path("runs") / (f"{name}-local" if self.local else name)
        )
        storage_url = (
            self._cli_storage() or settings.storage or f"sqlite:///{run.absolute().as_posix()}/study.db"
        )
        return Study(
            name=name,
            path=self.path,
            description=m.description,
            run_dir=run,
            storage_url=storage_url,
            teachers=teachers,
            datasets=datasets,
            cells=[c for c in cells if c is not None],
            trials_per_cell=settings.trials_per_cell,
            objective=m.objective,
            pruner=settings.pruner,
            sampler=settings.sampler,
            final_seeds=settings.final_seeds,
            resources=settings.resources,
            max_failures=settings.max_failures,
            max_concurrent=settings.max_concurrent,
            local=self.local,
            budget=settings.budget,
            final_epochs=settings.final_epochs,
            cache_stage=m.caches.stage,
            cache_stage_root=m.caches.root,
        )

    def _cli_storage(self) -> str | None:
        if not self.storage:
            return None
        try:
            return TypeAdapter(StorageUrl).validate_python(self.storage)
        except ValidationError as error:
            raise StudyError.of(self.path, problems_from(error, StorageUrl, prefix="--storage")) from None

    # ------------------------------------------------------------------------------ teachers, datasets
    def _teachers(self) -> dict[str, TeacherSpec]:
        out = {}
        for key, ref in self.model.teachers.items():
            entry = ref if isinstance(ref, TeacherEntry) else TeacherEntry(source=ref)
            out[key] = TeacherSpec(key, entry.source, entry.revision)
        if not self.local:
            return out
        chosen = self.model.local.teachers
        for key in chosen:
            if key not in out:
                self.add(
                    f"local.teachers.{key}",
                    f"no teacher {key!r} in teachers",
                    "map the study's teacher keys: " + ", ".join(out) + closest(key, out),
                )
        for key, t in out.items():
            local_source = chosen.get(key) or _local_teacher_for(t.source)
            if local_source is None:
                self.add(
                    f"local.teachers.{key}",
                    f"no local-world teacher for {t.source!r}",
                    f"add local: {{teachers: {{{key}: local-m}}}}",
                )
            out[key] = TeacherSpec(key, t.source, t.revision, local_source=local_source)
        return out

    def _datasets(self) -> dict[str, DatasetSpec]:
        if self.local:
            chosen = self.model.local.datasets
            for key in chosen:
                if key not in self.model.datasets:
                    self.add(
                        f"local.datasets.{key}",
                        f"no dataset {key!r} in datasets",
                        "use the study's dataset keys: "
                        + ", ".join(self.model.datasets)
                        + closest(key, self.model.datasets),
                    )
            return {key: _shapes(key, chosen.get(key)) for key in self.model.datasets}
        out = {}
        for key, ds in self.model.datasets.items():
            if isinstance(ds, KarpathyDataset):
                out[key] = DatasetSpec(key, "karpathy", karpathy=Path(ds.karpathy), images=Path(ds.images))
            elif isinstance(ds, CocoDataset):
                splits = {
                    split: {"captions": Path(files.captions), "images": Path(files.images)}
                    for split, files in (
                        ("train", ds.splits.train),
                        ("val", ds.splits.val),
                        ("test", ds.splits.test),
                    )
                }
                out[key] = DatasetSpec(key, "coco", splits=splits)
            else:
                out[key] = _shapes(key, ds)
        return out

    # ---------------------------------------------------------------------------------- settings
    def _settings(self) -> _Settings:
        m = self.model
        settings = _Settings(
            trials_per_cell=m.trials_per_cell,
            budget=m.budget,
            final_seeds=list(m.final.seeds),
            final_epochs=m.final.epochs,
            resources=m.resources,
            pruner=m.pruner.model_dump(),
            sampler=m.sampler.model_dump(),
            max_failures=m.max_failures,
            max_concurrent=m.max_concurrent,
            storage=m.storage,
            run_dir=m.run_dir,
        )
        self._check_budget(m.budget, "budget")
        if not self.local:
            return settings
        lp = m.local
        settings.trials_per_cell = lp.trials_per_cell
        settings.budget = self._local_budget()
        settings.final_seeds, settings.final_epochs = list(lp.final.seeds), lp.final.epochs
        settings.resources = lp.resources
        settings.pruner = self._changed(Pruner, settings.pruner, lp.pruner, "local.pruner")
        settings.sampler = self._changed(Sampler, settings.sampler, lp.sampler, "local.sampler")
        if lp.max_failures is not None:
            settings.max_failures = lp.max_failures
        if "max_concurrent" in lp.model_fields_set:
            settings.max_concurrent = lp.max_concurrent
        settings.storage = lp.storage  # never the real database
        settings.run_dir = lp.run_dir or (f"{m.run_dir}-local" if m.run_dir else None)
        return settings

    def _local_budget(self) -> Budget:
        base, given = self.model.budget, self.model.local.budget
        epochs = given.epochs
        every = given.eval_every_epochs if given.eval_every_epochs is not None else None
        try:
            budget = Budget(
                epochs=epochs,
                eval_every_epochs=every if every is not None else min(base.eval_every_epochs, epochs or 1),
                max_steps=given.max_steps if "max_steps" in given.model_fields_set else base.max_steps,
            )
        except ValidationError as error:
            self.add_validation(error, Budget, "local.budget")
            return base
        self._check_budget(budget, "local.budget")
        return budget

    def _check_budget(self, budget: Budget, where: str) -> None:
        if budget.eval_every_epochs > budget.epochs:
            self.add(
                f"{where}.eval_every_epochs",
                f"evaluating every {budget.eval_every_epochs} epochs in a {budget.epochs}-epoch run gives no "
                "evaluation to prune on",
                f"set it to at most {budget.epochs}",
            )

    def _changed(self, union: Any, base: dict, change: dict, where: str) -> dict:
        """The study's pruner/sampler settings with the local profile's changes (a new type starts over)."""
        if not change:
            return base
        keep = "type" not in change or change["type"] == base["type"]
        try:
            return TypeAdapter(union).validate_python({**(base if keep else {}), **change}).model_dump()
        except ValidationError as error:
            self.add_validation(error, union, where)
            return base

    # ----------------------------------------------------------------------------- search spaces
    def _space(self, ref: Any, fld: str) -> tuple[dict[str, od.BaseDistribution], Path | None]:
        if ref is None:
            return {}, None
        if isinstance(ref, str):
            path = (self.path.parent / ref).resolve()
            if path not in self.spaces:
                try:
                    self.spaces[path] = load_search_space(path, field=fld, referenced_from=str(self.path))
                except StudyError as error:
                    if error.file == str(self.path):
                        self.problems.extend(error.problems)
                    elif self.other_file_error is None:
                        self.other_file_error = error
                    self.spaces[path] = {}
            return dict(self.spaces[path]), path
        inline = isinstance(ref, SearchSpaceFile)
        space, found = resolve_search_space(ref.params if inline else ref, f"{fld}.params" if inline else fld)
        self.problems.extend(found)
        return space, None

    # ------------------------------------------------------------------------------------- cells
    def _key(self, kind: str, table: dict, cell: GridCell, fld: str) -> str | None:
        """The teacher or dataset key a cell uses (its own, the defaults', or the only one defined)."""
        own = getattr(cell, kind)
        key = own or getattr(self.model.defaults, kind)
        key_fld = f"{fld}.{kind}" if own else f"defaults.{kind}"
        if key is None and len(table) == 1:
            key = next(iter(table))
        if key is None:
            self.add(
                key_fld,
                f"no {kind} for this cell",
                f"set defaults.{kind} (or the cell's {kind}) to one of: " + ", ".join(table),
            )
        elif key not in table:
            self.add(
                key_fld,
                f"unknown {kind} {key!r}",
                f"define it under {kind}s or use one of: " + ", ".join(table) + closest(key, table),
            )
            key = None
        return key

    def _cell(
        self,
        study_name: str,
        name: str,
        cell: GridCell,
        teachers: dict[str, TeacherSpec],
        datasets: dict[str, DatasetSpec],
        settings: _Settings,
        top: tuple[dict[str, od.BaseDistribution], Path | None],
        local_config: dict,
    ) -> Cell | None:
        fld = f"grid.{name}"
        teacher_key = self._key("teacher", teachers, cell, fld)
        dataset_key = self._key("dataset", datasets, cell, fld)
        defaults = self.model.defaults.model_dump(exclude_unset=True, exclude={"teacher", "dataset"})
        own = cell.model_dump(
            exclude_unset=True, exclude={"teacher", "dataset", "description", "search_space"}
        )
        config = _deep_merge(_deep_merge(defaults, own), local_config)

        # Loss weights are always explicit; "on" takes the defaults' λ (or the training default 1.0).
        loss = config.setdefault("loss", {})
        for term in LOSS_TERMS:
            value = loss.get(term, 1.0)
            if value == "on":
                default = defaults.get("loss", {}).get(term, 1.0)
                value = default if isinstance(default, float) and default > 0 else 1.0
            loss[term] = float(value)
        if "name" not in config.get("student", {}):
            self.add(
                f"{fld}.student.name",
                "no student for this cell",
                "set defaults.student.name (e.g. vit_small)",
            )
        if teacher_key is not None:
            t = teachers[teacher_key]
            config["teacher"] = {
                "source": t.effective_source,
                "revision": None if t.local_source else t.revision,
            }
        train = config.setdefault("train", {})
        train["epochs"] = settings.budget.epochs
        train["eval_every_epochs"] = settings.budget.eval_every_epochs
        if settings.budget.max_steps is not None:
            train["max_steps"] = settings.budget.max_steps
        train.setdefault("threads", max(1, int(settings.resources.cpus_per_trial)))
        if 0 < settings.resources.gpus_per_trial < 1:
            train.setdefault("gpu_memory_fraction", settings.resources.gpus_per_trial)
        config["objective"] = self.model.objective.model_dump()
        try:  # what the cell will train is a valid training config (e.g. not every loss off)
            TrainingConfig.model_validate(config)
        except ValidationError as error:
            self.add_validation(error, TrainingConfig, fld)

        if "search_space" in cell.model_fields_set:
            space, space_file = self._space(cell.search_space, f"{fld}.search_space")
        else:
            space, space_file = dict(top[0]), top[1]
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
                f"loss.{on[0]} fixed at {loss[on[0]]:g}: it is the only loss, and AdamW makes its scale "
                "redundant with optim.lr"
            )
        if teacher_key is None or dataset_key is None:
            return None
        return Cell(
            name=name,
            study_name=f"{study_name}/{name}",
            teacher=teacher_key,
            dataset=dataset_key,
            base_config=config,
            search_space=space,
            description=cell.description,
            search_space_file=space_file,
            trials=settings.trials_per_cell if space else 1,
            final_epochs=settings.final_epochs,
            notes=notes,
            source_file=str(self.path),
        )
