"""The study file as pydantic models: what a user may write, with types, ranges and descriptions.

Grid cells, ``defaults`` and ``local.config`` are partial training configs built from the training
config's own section models (tinysiglip.config.training): a field added there is settable here with no
other change. The keys a study owns elsewhere (cache paths, epochs, seeds, the objective) are removed
from those sections, with the fix shown when someone sets them anyway. ``tinysiglip schema study``
exports :class:`StudyFile` as JSON Schema for editors.

Adding a field: add it to its model below (a new section goes on :class:`StudyFile`, with a default
so that existing files stay valid), read it in build.py and expose it on ``Study`` (plan.py); then
regenerate schemas/study.schema.json (`tinysiglip schema study > schemas/study.schema.json`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    field_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from tinysiglip.config.fields import (
    Description,
    Integer,
    Name,
    PathText,
    StrictModel,
    Text,
    partial,
    problem,
    tagged_union,
    without,
)
from tinysiglip.config.training import (
    DataConfig,
    LossConfig,
    ObjectiveConfig,
    OptimConfig,
    StudentConfig,
    TrainConfig,
)
from tinysiglip.sweep.search_space import SearchParams, SearchSpaceFile

# Training-config keys that a study's defaults / cells / local.config do not set, and where they belong.
OWNED_BY_STUDY = {
    "data.train_cache": "the driver fills cache paths; remove it",
    "data.val_cache": "the driver fills cache paths; remove it",
    "data.test_cache": "the driver fills cache paths; remove it",
    "data.expect": "the driver picks the caches and records their fingerprints; remove it",
    "train.epochs": "set budget.epochs (and final.epochs for the final runs)",
    "train.eval_every_epochs": "set budget.eval_every_epochs",
    "train.max_steps": "set budget.max_steps",
    "train.seed": "seeds come from sampler.seed / final.seeds; remove it",
    "objective": "set the study's top-level objective: {metric, direction}",
    "teacher": "name a key of the study's teachers (teacher: large); the study fills source and revision",
}


def _owned(section: str) -> dict[str, str]:
    return {k.split(".", 1)[1]: fix for k, fix in OWNED_BY_STUDY.items() if k.startswith(section + ".")}


# --------------------------------------------------------------------------------------------------
# Partial training configs


StudyData = without(DataConfig, _owned("data"), name="StudyData", doc=DataConfig.__doc__ or "")
StudyTrain = without(TrainConfig, _owned("train"), name="StudyTrain", doc=TrainConfig.__doc__ or "")


class ConfigPart(StrictModel):
    """Training-config sections set by a study; anything not set keeps the training default."""

    removed_keys = {"objective": OWNED_BY_STUDY["objective"]}

    data: StudyData = Field(default_factory=StudyData)  # type: ignore[valid-type]
    student: StudentConfig = Field(default_factory=StudentConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: StudyTrain = Field(default_factory=StudyTrain)  # type: ignore[valid-type]


class Defaults(ConfigPart):
    """The partial training config shared by every cell, and the cells' teacher and dataset."""

    teacher: Name | None = None
    """Key into teachers (may be left out when the study has one teacher)."""
    dataset: Name | None = None
    """Key into datasets (may be left out when the study has one dataset)."""


def _search_space_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "file"
    if isinstance(value, Mapping):
        return "inline" if value and set(value) <= {"params", "description"} else "params"
    return "inline" if isinstance(value, SearchSpaceFile) else None


SearchSpaceRef = tagged_union(
    {"file": Text, "inline": SearchSpaceFile, "params": SearchParams},
    what="search space",
    pick=_search_space_kind,
    fix="give the path of a search-space file (relative to this file), e.g. ../search_spaces/standard.yaml",
)


class GridCell(Defaults):
    """One cell of the grid: a partial training config over the defaults, searched as its own Optuna
    study (<study>/<cell>)."""

    description: Description = ""
    """What the cell tests (shown in the report's tables)."""
    search_space: SearchSpaceRef | None = None
    """This cell's search space instead of the study's (null: search nothing)."""


LocalConfig = without(
    ConfigPart,
    {
        "loss": "local mode keeps the study's loss; remove it",
        "teacher": "local mode keeps the study's teacher; remove it",
    },
    name="LocalConfig",
    doc="Training-config sections changed in the local world (e.g. a CPU-sized student, smaller batches).",
)


# --------------------------------------------------------------------------------------------------
# Teachers and datasets


class TeacherEntry(StrictModel):
    """A real teacher: Hub id or local folder."""

    source: PathText = Field(min_length=1, examples=["google/siglip2-large-patch16-256"])
    """Hugging Face Hub id (google/siglip2-*) or a local folder saved with save_pretrained."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); null for the default branch."""


TeacherRef = tagged_union(
    {"source": Text, "entry": TeacherEntry},
    what="teacher",
    pick=lambda v: (
        "source" if isinstance(v, str) else "entry" if isinstance(v, (Mapping, TeacherEntry)) else None
    ),
    fix="write {source: google/siglip2-large-patch16-256} (or just the Hub id)",
)


class KarpathyDataset(StrictModel):
    """COCO with Karpathy's splits (the published COCO 5k test)."""

    kind: Literal["karpathy"] = "karpathy"
    karpathy: PathText = Field(min_length=1, examples=["data/coco/dataset_coco.json"])
    """Karpathy's dataset_coco.json."""
    images: PathText = Field(min_length=1, examples=["data/coco"])
    """Folder holding train2014/ and val2014/."""


class CocoSplit(StrictModel):
    captions: PathText = Field(min_length=1, examples=["data/coco/annotations/captions_val2017.json"])
    """A COCO captions_*.json file."""
    images: PathText = Field(min_length=1, examples=["data/coco/val2017"])
    """Folder of that file's images."""


class CocoSplits(StrictModel):
    train: CocoSplit
    val: CocoSplit
    test: CocoSplit


class CocoDataset(StrictModel):
    """A dataset in the COCO captions format, one captions file per split."""

    kind: Literal["coco"] = "coco"
    splits: CocoSplits


class ShapesSizes(StrictModel):
    train: int | None = Field(None, ge=1)
    val: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)


class LocalShapes(StrictModel):
    """The local world's synthetic shapes dataset (what a dataset becomes with --local).

    The local world holds one shapes dataset, made once by ``tinysiglip local-world`` and shared by every
    study, so a study cannot change its seed, sizes or image size: those keys are refused (they used to
    be accepted and silently ignored)."""

    kind: Literal["local_shapes"] = "local_shapes"
    seed: int | None = Field(None, ge=0)
    """Refused: the local world's dataset has one seed."""
    sizes: ShapesSizes | None = None
    """Refused: choose the world's size with TINYSIGLIP_LOCAL_WORLD_SIZE (default or tiny)."""
    image_size: int | None = Field(None, ge=8)
    """Refused: the caches are at the local teacher's image size."""

    @field_validator("seed", "sizes", "image_size")
    @classmethod
    def _set_by_the_world(cls, value: Any, info: Any) -> Any:
        if value is not None:
            raise problem(
                f"the local world has one shapes dataset, made by `tinysiglip local-world`; a study cannot "
                f"set its {info.field_name}",
                "remove this key; the world's size is chosen with TINYSIGLIP_LOCAL_WORLD_SIZE=default|tiny",
            )
        return value


class LocalShapesEntry(LocalShapes):
    kind: Literal["local_shapes"]  # required under datasets: nothing else tells it apart


def _dataset_kind(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return None
    if "kind" in value:
        return value["kind"] if isinstance(value["kind"], str) else repr(value["kind"])
    return "karpathy" if "karpathy" in value else "coco" if "splits" in value else None


DatasetRef = tagged_union(
    {"karpathy": KarpathyDataset, "coco": CocoDataset, "local_shapes": LocalShapesEntry},
    key="kind",
    what="dataset kind",
    pick=_dataset_kind,
    fix="give {karpathy: <dataset_coco.json>, images: <root>}, or {splits: {train: {captions, images}, "
    "val: ..., test: ...}}, or {kind: local_shapes}",
)


# --------------------------------------------------------------------------------------------------
# Budget, search, resources


_DATACLASS_CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True)


# A (pydantic) dataclass rather than a model: the driver's --epochs override uses dataclasses.replace.
# That eval_every_epochs fits in epochs is checked when the study is built (build.py).
@pydantic_dataclass(frozen=True, config=_DATACLASS_CONFIG)
class Budget:
    """What one search trial may spend."""

    epochs: Integer = Field(ge=1)
    """Epochs per trial."""
    eval_every_epochs: Integer = Field(1, ge=1)
    """Evaluate (and consult the pruner) every this many epochs."""
    max_steps: Integer | None = Field(None, ge=1)
    """Optional cap on optimiser steps per trial."""


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


def _unique(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        raise problem(f"repeated seed in {seeds}", "list each seed once")
    return seeds


Seed = Annotated[int, Field(ge=0)]
SeedList = Annotated[list[Seed], Field(min_length=1, json_schema_extra={"uniqueItems": True})]
Seeds = Annotated[
    list[Seed],
    BeforeValidator(_one_or_many, json_schema_input_type=Seed | SeedList),
    Field(min_length=1),
    AfterValidator(_unique),
]


class Final(StrictModel):
    """The final runs: each cell's best config retrained with these seeds and evaluated on test."""

    seeds: Seeds = Field([0, 1, 2], examples=[[0, 1, 2]])
    """Seeds of the final runs (mean ± std over them in the report)."""
    epochs: int | None = Field(None, ge=1)
    """Epochs of a final run (null: budget.epochs)."""


class LocalFinal(Final):
    """Final runs in the local world."""

    seeds: Seeds = Field([0, 1], examples=[[0, 1]])


class Resources(StrictModel):
    """What one trial asks Ray for."""

    cpus_per_trial: float = Field(1.0, gt=0)
    """CPUs per trial (also the trial's torch threads when it has no GPU)."""
    gpus_per_trial: float = Field(0.0, ge=0, json_schema_extra={"anyOf": [{"maximum": 1}, {"multipleOf": 1}]})
    """GPUs per trial: 0 (CPU), a fraction <= 1 (trials share a GPU) or a whole number."""
    custom: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    """Custom Ray resources per trial (``ray start --resources '{"bigmem": 1}'``): trials run only on
    nodes that have them."""

    @field_validator("custom")
    @classmethod
    def _not_builtin(cls, custom: dict[str, float]) -> dict[str, float]:
        clash = sorted(k for k in custom if k.upper() in ("CPU", "GPU", "MEMORY", "OBJECT_STORE_MEMORY"))
        if clash:
            raise problem(
                f"custom resources {clash} are Ray's built-in ones",
                "use cpus_per_trial / gpus_per_trial for CPUs and GPUs, and a name of your own here",
            )
        return custom

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, gpus: float) -> float:
        if gpus > 1 and not float(gpus).is_integer():
            raise problem(
                f"{gpus:g} GPUs per trial is impossible: fractions share one GPU, so above 1 it must be a "
                "whole number",
                f"use {int(gpus)} or {int(gpus) + 1}, or a fraction <= 1",
            )
        return gpus

    def as_ray(self) -> dict[str, float]:
        """Resources for tune.with_resources (always with a CPU count: DESIGN.md §3)."""
        out = {"cpu": self.cpus_per_trial}
        if self.gpus_per_trial:
            out["gpu"] = self.gpus_per_trial
        out.update(self.custom)
        return out


class LocalResources(Resources):
    gpus_per_trial: float = Field(0.0, ge=0, json_schema_extra={"maximum": 0})
    """The local world runs on CPU: 0."""

    @field_validator("gpus_per_trial")
    @classmethod
    def _cpu_only(cls, gpus: float) -> float:
        if gpus:
            raise problem("the local world runs on CPU", "set local.resources.gpus_per_trial: 0")
        return gpus


class CacheStaging(StrictModel):
    """Where trials read the teacher caches from.

    ``shared`` (default): every node reads the driver's cache paths (a shared file system mounted at the
    same path everywhere). ``node-local``: before a node's first trial each cache is copied once to that
    node's own disk (read from the driver's path, through Ray when the node cannot see it), verified
    against the cache's fingerprint and reused by later trials and studies."""

    stage: Literal["shared", "node-local"] = "shared"
    root: PathText | None = None
    """Node-local folder for staged copies (default: $TINYSIGLIP_STAGE_DIR, else
    ~/.cache/tinysiglip/caches on each node)."""

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: str | None) -> str | None:
        if root and not (root.startswith(("/", "~"))):
            raise problem(
                f"{root!r} is relative: each trial runs in a folder of its own on its node",
                "give an absolute path (or one starting with ~) on the nodes' local disk",
            )
        return root


class MedianPruner(StrictModel):
    """Prune a trial whose value is below the median of earlier trials at the same epoch."""

    type: Literal["median"] = "median"
    n_startup_trials: int = Field(5, ge=0)
    """Trials that are never pruned (the pruner needs something to compare with)."""
    n_warmup_steps: int = Field(1, ge=0)
    """Evaluations of a trial before it may be pruned."""
    interval_steps: int = Field(1, ge=1)
    n_min_trials: int = Field(1, ge=1)


class PercentilePruner(MedianPruner):
    """Prune a trial below the given percentile of earlier trials at the same epoch."""

    type: Literal["percentile"]
    percentile: float = Field(25.0, gt=0, lt=100)


def _auto_or_count(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise problem(f"expected auto or a whole number >= 1, got {value!r}", "write auto or e.g. 1")


AutoOrCount = Annotated[
    int | Literal["auto"],
    BeforeValidator(_auto_or_count),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]}),
]


class HyperbandPruner(StrictModel):
    type: Literal["hyperband"]
    min_resource: int = Field(1, ge=1)
    max_resource: AutoOrCount | None = None
    """Epochs of the longest bracket (null: budget.epochs)."""
    reduction_factor: int = Field(3, ge=2)


class SuccessiveHalvingPruner(StrictModel):
    type: Literal["successive_halving"]
    min_resource: AutoOrCount = 1
    reduction_factor: int = Field(4, ge=2)
    min_early_stopping_rate: int = Field(0, ge=0)


class NoPruner(StrictModel):
    type: Literal["none"]


PRUNERS = {
    "median": MedianPruner,
    "percentile": PercentilePruner,
    "hyperband": HyperbandPruner,
    "successive_halving": SuccessiveHalvingPruner,
    "none": NoPruner,
}
Pruner = tagged_union(
    PRUNERS, key="type", default="median", what="pruner type", fix="use one of " + ", ".join(PRUNERS)
)


class TpeSampler(StrictModel):
    type: Literal["tpe"] = "tpe"
    seed: int = Field(0, ge=0)
    n_startup_trials: int = Field(5, ge=0)
    """Random trials before TPE models the good and bad regions."""
    multivariate: bool = False
    constant_liar: bool = False
    """Keep parallel trials apart (useful with many concurrent trials)."""


class RandomSampler(StrictModel):
    type: Literal["random"]
    seed: int = Field(0, ge=0)


SAMPLERS = {"tpe": TpeSampler, "random": RandomSampler}
Sampler = tagged_union(SAMPLERS, key="type", default="tpe", what="sampler type", fix="use tpe or random")


def _settings_override(kinds: Mapping[str, type], what: str) -> Any:
    """A local.pruner / local.sampler: keys of the study's settings to change, or a whole new ``type``.

    Validated in full once merged with the study's settings (build.py); the JSON Schema accepts the
    keys of any type, each with its type and range.
    """
    partials = tuple(partial(m, name=f"Partial{m.__name__}", doc=m.__doc__ or "") for m in kinds.values())

    def mapping(value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise problem(f"expected a mapping, got {value!r}", f"write {what}: {{key: value, ...}}")
        return dict(value)

    return Annotated[dict[str, Any], PlainValidator(mapping, json_schema_input_type=Union[partials])]  # noqa: UP007


def _storage_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        make_url(url)
    except Exception as error:  # noqa: BLE001 - any parse failure is the user's to fix
        raise problem(
            f"not a SQLAlchemy URL: {url!r} ({error})",
            "e.g. sqlite:///runs/study.db or postgresql+psycopg://user@host/db",
        ) from None
    parsed = make_url(url)
    try:
        parsed.get_dialect()  # an unknown database kind or a driver not installed here
    except Exception as error:  # noqa: BLE001 - NoSuchModuleError, ImportError: the user's to fix
        raise problem(
            f"no database driver for {parsed.drivername!r} ({type(error).__name__}: {error})",
            "use sqlite:///PATH or postgresql+psycopg://user@host/db (with psycopg installed)",
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise problem(
            f"{url!r} is an in-memory database: the whole study would be lost when the sweep ends",
            "give a file, e.g. sqlite:///runs/study.db",
        )
    return url


StorageUrl = Annotated[str, AfterValidator(_storage_url)]


LocalBudget = partial(Budget, name="LocalBudget", doc="Budget of a local trial.", defaults={"epochs": 2})
LocalPruner = _settings_override(PRUNERS, "pruner")
LocalSampler = _settings_override(SAMPLERS, "sampler")


class LocalProfile(StrictModel):
    """What --local changes: same grid and search space, the local world's data and teachers, tiny
    budgets, CPU."""

    teachers: dict[Name, Text] = Field(default_factory=dict)
    """Study teacher key -> local-world teacher (local-s, local-m, local-l); left out: by model size."""
    datasets: dict[Name, LocalShapes | None] = Field(default_factory=dict)
    """Study dataset key -> options of the synthetic shapes dataset that replaces it."""
    trials_per_cell: int = Field(2, ge=1)
    budget: LocalBudget = Field(default_factory=LocalBudget)  # type: ignore[valid-type]
    """epochs default 2; eval_every_epochs and max_steps default to the study's."""
    final: LocalFinal = Field(default_factory=LocalFinal)
    resources: LocalResources = Field(default_factory=LocalResources)
    config: LocalConfig = Field(default_factory=LocalConfig)
    pruner: LocalPruner = Field(default_factory=dict)  # type: ignore[valid-type]
    """Pruner settings to change (the study's type unless a type is given)."""
    sampler: LocalSampler = Field(default_factory=dict)  # type: ignore[valid-type]
    """Sampler settings to change (the study's type unless a type is given)."""
    max_failures: int | None = Field(None, ge=0)
    max_concurrent: int | None = Field(None, ge=1)
    storage: StorageUrl | None = None
    """Database of local runs (default: a SQLite file in the local run folder, never the real one)."""
    run_dir: Text | None = None
    """Local run folder (default: the study's run folder + '-local')."""


class StudyFile(StrictModel):
    """A study (studies/*.yaml): the experiment grid, its search space, budgets and resources.

    Run it with `python -m tinysiglip.sweep FILE` (`--local` for the local world, `--dry-run` to see
    the plan).
    """

    study: Name | None = None
    """Study name (default: the file's stem); cells become Optuna studies <study>/<cell>."""
    description: Description = ""
    teachers: dict[Name, TeacherRef] = Field(  # type: ignore[valid-type]
        min_length=1, examples=[{"large": {"source": "google/siglip2-large-patch16-256"}}]
    )
    """Key -> teacher; cells name one by key."""
    datasets: dict[Name, DatasetRef] = Field(  # type: ignore[valid-type]
        min_length=1, examples=[{"coco": {"karpathy": "data/coco/dataset_coco.json", "images": "data/coco"}}]
    )
    """Key -> dataset; cells name one by key."""
    defaults: Defaults = Field(default_factory=Defaults)
    grid: dict[Name, GridCell | None] = Field(min_length=1, examples=[{"full": {}}])
    """Cell name -> the cell's partial training config over the defaults."""
    search_space: SearchSpaceRef | None = None  # type: ignore[valid-type]
    """Search space of every cell (a path relative to this file, or inline params); a cell may override it."""
    trials_per_cell: int = Field(20, ge=1)
    """Search trials per cell (1 for a cell with nothing to search)."""
    budget: Budget = Field(examples=[{"epochs": 10}])
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    pruner: Pruner = Field(default_factory=MedianPruner)  # type: ignore[valid-type]
    """Optuna pruner, per cell; its steps are evaluation epochs."""
    sampler: Sampler = Field(default_factory=TpeSampler)  # type: ignore[valid-type]
    """Optuna sampler, one per cell."""
    final: Final = Field(default_factory=Final)
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(2, ge=0)
    """Retries of a failed trial (from its checkpoint)."""
    max_concurrent: int | None = Field(None, ge=1)
    """Trials at once (null: as many as the resources allow)."""
    caches: CacheStaging = Field(
        default_factory=CacheStaging, examples=[{"stage": "node-local", "root": "/local/scratch/tsl-caches"}]
    )
    storage: StorageUrl | None = None
    """SQLAlchemy URL of the study database (default: sqlite:///<run_dir>/study.db)."""
    run_dir: PathText | None = None
    """Run folder (default: runs/<study>)."""
    local: LocalProfile = Field(default_factory=LocalProfile)
