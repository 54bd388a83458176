"""The cases of scripts/bad_inputs.py, by category, and the small local fixtures they use."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import yaml
from bad_inputs import SECRET, Case
from cache_faults import flip_chunk_bytes, write_nan_bytes  # the issue-11 cache damage
from test_sweep_driver import HOOKS  # the stub trainer and caches of the sweep tests

# ------------------------------------------------------------------------------------------ fixtures


class Fixtures:
    """Everything the cases need, made once under ``root``."""

    def __init__(self, root: Path):
        from tinysiglip.cache import build_cache
        from tinysiglip.data import make_shapes
        from tinysiglip.teacher import load_teacher
        from tinysiglip.teacher.standins import write_coco_captions, write_photos
        from tinysiglip.teacher.tiny import save_tiny_teacher

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.teacher = save_tiny_teacher(root / "teacher")
        shapes = make_shapes(root / "shapes", seed=0, sizes={"train": 24, "val": 8, "test": 8}, image_size=32)
        teacher = load_teacher(self.teacher)
        self.caches = {
            split: build_cache(
                teacher, shapes.load(split), root / f"{split}.h5", batch_size=32, progress=False
            )
            for split in ("train", "val", "test")
        }
        self.coco_images = root / "coco" / "val2017"
        photos = write_photos(self.coco_images, [(48, 32)] * 4)
        self.captions = write_coco_captions(root / "coco" / "captions_val2017.json", photos)
        self.photos = photos
        self.text = root / "notes.txt"
        self.text.write_text("these are my notes, not a database\n")
        self.binary = root / "random.bin"
        self.binary.write_bytes(bytes(range(256)) * 16)
        self.empty = root / "empty.db"
        self.empty.write_bytes(b"")
        self.foreign = root / "foreign.db"
        with contextlib.closing(sqlite3.connect(self.foreign)) as db:
            db.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
            db.commit()
        self.studydb = root / "studies.db"  # a real study database with no study in it
        from tinysiglip.results.store import open_store

        open_store(self.studydb).close()
        self.config = root / "train.yaml"
        self.config.write_text(yaml.safe_dump(self.train_config()))

    def train_config(self, **caches: str) -> dict:
        data = {f"{s}_cache": str(self.caches[s]) for s in ("train", "val", "test")}
        data.update({f"{k}_cache": v for k, v in caches.items()})
        return {
            "student": {"name": "test_tiny"},
            "data": data,
            "teacher": {"source": str(self.teacher)},
            "optim": {"batch_size": 8},
            "train": {"epochs": 1, "device": "cpu"},
        }

    def damaged_cache(self, name: str, damage) -> Path:
        path = self.root / "damaged" / f"{name}.h5"
        path.parent.mkdir(exist_ok=True)
        shutil.copyfile(self.caches["train"], path)
        damage(path)
        return path

    def coco(self, name: str, edit=None, *, raw: str | None = None) -> tuple[Path, Path]:
        """A copy of the COCO-like folder and captions file, with ``edit(data, images_dir)`` applied."""
        base = self.root / "coco-cases" / name
        images = base / "images"
        shutil.copytree(self.coco_images, images)
        captions = base / "captions_val2017.json"
        data = json.loads(self.captions.read_text())
        if edit:
            edit(data, images)
        captions.write_text(raw if raw is not None else json.dumps(data))
        return captions, images


# ------------------------------------------------------------------------------------------ study files

STUDY = {
    "study": "badstudy",
    "teachers": {"t": {"source": "google/siglip2-base-patch16-224"}},
    "datasets": {"d": {"kind": "local_shapes"}},
    "defaults": {"student": {"name": "vit_small"}, "loss": {"feat": 1.0, "affinity": 0.0, "contrast": 1.0}},
    "grid": {"strong": {"loss": {"contrast": 1.0}}, "weak": {"loss": {"contrast": 0.1}}},
    "search_space": "space.yaml",
    "trials_per_cell": 4,
    "budget": {"epochs": 3, "eval_every_epochs": 1},
    "objective": {"metric": "mean_r1", "direction": "maximize"},
    "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
    "sampler": {"type": "random", "seed": 3},
    "final": {"seeds": [0, 1]},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    "max_concurrent": 2,
}
SPACE = {
    "params": {
        "loss.feat": {"type": "float", "low": 0.01, "high": 1.0},
        "optim.lr": {"low": 1e-4, "high": 1e-2, "log": True},
    }
}


def _set(dotted: str, value):
    def edit(d: dict) -> None:
        *parents, last = dotted.split(".")
        for key in parents:
            d = d.setdefault(key, {})
        d[last] = value

    return edit


def _delete(dotted: str):
    def edit(d: dict) -> None:
        *parents, last = dotted.split(".")
        for key in parents:
            d = d[key]
        del d[last]

    return edit


def _edits(*edits):
    def edit(d: dict) -> None:
        for e in edits:
            e(d)

    return edit


def _space(name: str, spec):
    return lambda s: s["params"].__setitem__(name, spec)


# name -> (study edit | raw text | bytes, search-space edit | raw text | None, needles)
STUDY_CASES: dict[str, tuple] = {
    "YAML syntax: unclosed brace": (
        "study: badstudy\ngrid:\n  A1: {loss: {feat: 1.0}\n",
        None,
        ("study.yaml", "line"),
    ),
    "YAML syntax: tab indentation": ("study: badstudy\ngrid:\n\tA1: {}\n", None, ("study.yaml", "line")),
    "YAML syntax: unterminated quote": ('study: "badstudy\ntrials_per_cell: 2\n', None, ("study.yaml",)),
    "not a mapping: a list": ("- study: badstudy\n- grid: {}\n", None, ("study.yaml", "mapping")),
    "not a mapping: a scalar": ("just some words\n", None, ("study.yaml", "mapping")),
    "empty file": ("", None, ("study.yaml", "empty")),
    "comments only": ("# my study, to be written\n", None, ("study.yaml", "empty")),
    "duplicate key": (
        "study: a\ntrials_per_cell: 2\ntrials_per_cell: 3\n",
        None,
        ("study.yaml", "trials_per_cell"),
    ),
    "python tag (never evaluated)": (
        "study: !!python/object/apply:os.system ['echo hi']\n",
        None,
        ("study.yaml",),
    ),
    "unknown top key (typo)": (_set("trials_per_cel", 3), None, ("trials_per_cel", "trials_per_cell")),
    "unknown config key (typo)": (
        _set("grid.strong.loss.feet", 1.0),
        None,
        ("grid.strong.loss.feet", "feat"),
    ),
    "unknown section (typo)": (_set("defaults.optimizer", {"lr": 1}), None, ("defaults.optimizer", "optim")),
    "wrong type: trials_per_cell text": (_set("trials_per_cell", "ten"), None, ("trials_per_cell",)),
    "wrong type: budget a list": (_set("budget", [10]), None, ("budget", "mapping")),
    "wrong type: batch_size text": (
        _set("grid.strong.optim", {"batch_size": "big"}),
        None,
        ("grid.strong.optim.batch_size",),
    ),
    "wrong type: seeds text": (_set("final.seeds", ["a"]), None, ("final.seeds",)),
    "zero epochs": (_set("budget.epochs", 0), None, ("budget.epochs",)),
    "negative epochs": (_set("budget.epochs", -3), None, ("budget.epochs",)),
    "zero trials_per_cell": (_set("trials_per_cell", 0), None, ("trials_per_cell",)),
    "zero max_concurrent": (_set("max_concurrent", 0), None, ("max_concurrent",)),
    "negative cpus_per_trial": (_set("resources.cpus_per_trial", -1), None, ("resources.cpus_per_trial",)),
    "fractional gpus > 1": (_set("resources.gpus_per_trial", 1.5), None, ("resources.gpus_per_trial",)),
    "empty final seeds": (_set("final.seeds", []), None, ("final.seeds",)),
    "negative loss weight": (
        _set("grid.strong.loss.feat", -1.0),
        None,
        ("grid.strong.loss.feat", "negative"),
    ),
    "all losses off": (
        _set("grid.strong.loss", {"feat": 0, "affinity": 0, "contrast": 0}),
        None,
        ("grid.strong.loss",),
    ),
    "unknown student": (
        _set("defaults.student.name", "vit_huge"),
        None,
        ("defaults.student.name", "vit_small"),
    ),
    "unknown teacher key": (_set("grid.strong.teacher", "tt"), None, ("grid.strong.teacher",)),
    "unknown pruner type": (_set("pruner.type", "medain"), None, ("pruner.type", "median")),
    "unknown metric": (_set("objective.metric", "mean_r2"), None, ("objective.metric", "mean_r1")),
    "unknown dataset kind": (_set("datasets.d.kind", "imagenet"), None, ("datasets.d.kind",)),
    "cell name with a newline": (_set("grid", {"A\n1": {}}), None, ("grid",)),
    "cell name with an escape code": (_set("grid", {"A\x1b[31m1": {}}), None, ("grid",)),
    "study name with a newline": (_set("study", "bad\nstudy"), None, ("study",)),
    "study name with a control char": (_set("study", "bad\x07study"), None, ("study",)),
    "teacher key with a newline": (
        _edits(
            _set("teachers", {"t\nx": {"source": "google/siglip2-base-patch16-224"}}),
            _set("defaults.teacher", "t\nx"),
        ),
        None,
        ("teachers",),
    ),
    "search space: low > high": (
        None,
        _space("loss.feat", {"type": "float", "low": 5, "high": 1}),
        ("space.yaml", "params.loss.feat"),
    ),
    "search space: log with low 0": (
        None,
        _space("optim.lr", {"low": 0, "high": 1e-2, "log": True}),
        ("space.yaml", "params.optim.lr.low"),
    ),
    "search space: log with low < 0": (
        None,
        _space("optim.lr", {"low": -1e-3, "high": 1e-2, "log": True}),
        ("space.yaml", "params.optim.lr.low"),
    ),
    "search space: unknown type": (
        None,
        _space("optim.lr", {"type": "loguniform", "low": 1e-4, "high": 1e-2}),
        ("space.yaml", "params.optim.lr.type"),
    ),
    "search space: empty params": (None, lambda s: s.__setitem__("params", {}), ("space.yaml", "params")),
    "search space: unknown parameter": (
        None,
        _space("optim.lrr", {"low": 0.1, "high": 1}),
        ("space.yaml", "params.optim.lrr", "optim.lr"),
    ),
    "search space: not a mapping": (
        None,
        _space("optim.lr", [1e-4, 1e-3]),
        ("space.yaml", "params.optim.lr"),
    ),
    "search space: broken YAML": (None, "params: {optim.lr: {low: 1e-4,\n", ("space.yaml",)),
    "search space: empty file": (None, "", ("space.yaml",)),
    "missing search space file": (
        _set("search_space", "../nope/space.yaml"),
        None,
        ("search_space", "space.yaml"),
    ),
    "storage: not a URL": (_set("storage", "not a url"), None, ("storage",)),
    "storage: unknown database driver": (_set("storage", "nosuchdb://u@h/db"), None, ("storage",)),
    "storage: in-memory SQLite": (_set("storage", "sqlite:///:memory:"), None, ("memory",)),
    "several problems at once": (
        _edits(_set("trials_per_cel", 3), _set("budget.epochs", 0), _set("pruner.type", "medain")),
        None,
        ("trials_per_cel", "budget.epochs", "pruner.type"),
    ),
    "several problems in the search space": (
        None,
        _edits(
            _space("optim.lr", {"low": 1e-2, "high": 1e-4, "log": True}),
            _space("loss.feat", {"low": 2, "high": 1}),
        ),
        ("params.optim.lr", "params.loss.feat"),
    ),
}


def study_cases(fx: Fixtures) -> list[Case]:
    cases = []
    for k, (name, (edit, space_edit, needles)) in enumerate(STUDY_CASES.items()):
        folder = fx.root / "studies" / f"{k:02d}"
        folder.mkdir(parents=True)
        study, space = json.loads(json.dumps(STUDY)), json.loads(json.dumps(SPACE))
        study_path, space_path = folder / "study.yaml", folder / "space.yaml"
        if callable(edit):
            edit(study)
        if callable(space_edit):
            space_edit(space)
        study_path.write_text(edit if isinstance(edit, str) else yaml.safe_dump(study, sort_keys=False))
        space_path.write_text(space_edit if isinstance(space_edit, str) else yaml.safe_dump(space))
        run_dir = folder / "run"
        argv = ["sweep", str(study_path), "--dry-run", "--run-dir", str(run_dir)]
        cases.append(
            Case("study", name, argv, needles, absent=(run_dir,), unchanged=(study_path, space_path))
        )
    run_dir = fx.root / "studies" / "run"
    cases += [
        Case(
            "study",
            "a directory as the study file",
            ["sweep", str(fx.root / "studies"), "--dry-run", "--run-dir", str(run_dir)],
            (str(fx.root / "studies"),),
            absent=(run_dir,),
        ),
        Case(
            "study",
            "a binary file as the study file",
            ["sweep", str(fx.binary), "--dry-run", "--run-dir", str(run_dir)],
            ("random.bin",),
            absent=(run_dir,),
        ),
        Case(
            "study",
            "a study file that does not exist",
            ["sweep", str(fx.root / "nope.yaml"), "--dry-run", "--run-dir", str(run_dir)],
            ("nope.yaml",),
            absent=(run_dir,),
        ),
    ]
    return cases


# ------------------------------------------------------------------------------------------ sweep flags


def sweep_flag_cases(fx: Fixtures) -> list[Case]:
    folder = fx.root / "sweepflags"
    folder.mkdir()
    study = folder / "study.yaml"
    study.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    pg = f"postgresql+psycopg://tsl:{SECRET}@127.0.0.1:1/studies"
    counter = iter(range(1000))

    def case(name, flags, needles, *, dry=True):
        run_dir = folder / f"run{next(counter)}"
        # a real (not dry) sweep gets the stub trainer and caches, so a case that is not refused costs seconds
        mode = ["--dry-run"] if dry else HOOKS
        argv = ["sweep", str(study), "--run-dir", str(run_dir), *mode, *flags]
        return Case("sweep flags", name, argv, needles, absent=(run_dir,), unchanged=(study,))

    return [
        case("--epochs 0", ["--epochs", "0"], ("--epochs",)),
        case("--epochs -1", ["--epochs", "-1"], ("--epochs",)),
        case("--trials-per-cell -1", ["--trials-per-cell", "-1"], ("--trials-per-cell",)),
        case("--trials-per-cell abc", ["--trials-per-cell", "abc"], ("--trials-per-cell",)),
        case("--seeds a,b", ["--seeds", "a,b"], ("--seeds",)),
        case("--seeds ,", ["--seeds", ","], ("--seeds",)),
        case("--max-concurrent 0", ["--max-concurrent", "0"], ("--max-concurrent",)),
        case("--num-cpus 0", ["--num-cpus", "0"], ("--num-cpus",)),
        case(
            "--retry-failed without --resume", ["--retry-failed"], ("--retry-failed", "--resume"), dry=False
        ),
        case("--storage sqlite:///:memory:", ["--storage", "sqlite:///:memory:"], ("memory",)),
        case("--storage not a URL", ["--storage", "my database"], ("storage",)),
        case(
            "--storage unreachable PostgreSQL with a password",
            ["--storage", pg, "--no-final"],
            ("127.0.0.1",),
            dry=False,
        ),
        case(
            "--address of a port nothing listens on",
            ["--address", "127.0.0.1:1"],
            ("127.0.0.1:1",),
            dry=False,
        ),
        case("--artifacts unwritable", ["--artifacts", "/proc/nope/artifacts"], ("--artifacts",), dry=False),
        Case(
            "sweep flags",
            "--run-dir unwritable",
            ["sweep", str(study), "--run-dir", "/proc/nope/run", *HOOKS],
            ("/proc/nope",),
            unchanged=(study,),
        ),
        case("unknown flag (typo --epocs)", ["--epocs", "3"], ("--epocs",)),
        case("--forecast --num-gpus -1", ["--forecast", "--num-gpus", "-1"], ("--num-gpus",)),
    ]


# ------------------------------------------------------------------------------------------ train


def train_cases(fx: Fixtures) -> list[Case]:
    folder = fx.root / "train"
    folder.mkdir()
    run_dir = folder / "run"

    def config(name: str, content) -> Path:
        path = folder / f"{name}.yaml"
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return path

    def case(name, cfg, needles, *, extra=(), run=run_dir):
        argv = ["tinysiglip", "train", "--config", str(cfg), "--run-dir", str(run), *extra]
        return Case(
            "train", name, argv, needles, absent=(run,) if run != Path("/proc/nope") else (), unchanged=(cfg,)
        )

    good = fx.train_config()
    garbage = folder / "garbage.h5"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00garbage" * 64)
    truncated = fx.damaged_cache(
        "train-truncated", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    )
    with_ = lambda **kw: {**good, "data": {**good["data"], **kw}}  # noqa: E731
    return [
        case("unknown key (typo)", config("typo", {**good, "optim": {"lrr": 1e-3}}), ("optim.lrr",)),
        case("unknown section", config("section", {**good, "optimizer": {"lr": 1e-3}}), ("optimizer",)),
        case("wrong type", config("type", {**good, "optim": {"batch_size": "big"}}), ("optim.batch_size",)),
        case("negative lr", config("neglr", {**good, "optim": {"lr": -1.0}}), ("optim.lr",)),
        case("zero epochs", config("zero", {**good, "train": {"epochs": 0}}), ("train.epochs",)),
        case("config file missing", folder / "nope.yaml", ("nope.yaml",)),
        case("config broken YAML", config("broken", "student: {name: test_tiny\n"), ("broken.yaml",)),
        case("config not a mapping", config("list", "- student\n- data\n"), ("list.yaml", "mapping")),
        case("config a directory", folder, (str(folder),)),
        case("--set without =", config("ok1", good), ("optim.lr",), extra=("--set", "optim.lr")),
        case("--set unknown field", config("ok2", good), ("optim.lrr",), extra=("--set", "optim.lrr=1e-3")),
        case(
            "--set wrong type", config("ok3", good), ("train.epochs",), extra=("--set", "train.epochs=many")
        ),
        case(
            "train cache missing", config("nocache", with_(train_cache=str(folder / "nope.h5"))), ("nope.h5",)
        ),
        case("train cache garbage", config("garbage", with_(train_cache=str(garbage))), ("garbage.h5",)),
        case("train cache a text file", config("textcache", with_(train_cache=str(fx.text))), ("notes.txt",)),
        case("train cache a directory", config("dircache", with_(train_cache=str(folder))), (str(folder),)),
        case(
            "train cache truncated",
            config("trunc", with_(train_cache=str(truncated))),
            ("train-truncated.h5",),
        ),
        case("no caches given", config("nodata", {"student": {"name": "test_tiny"}}), ("train_cache",)),
        case("--run-dir /proc/nope", config("ok4", good), ("--run-dir",), run=Path("/proc/nope")),
        case(
            "train.device banana",
            config("banana", {**good, "train": {"epochs": 1, "device": "banana"}}),
            ("banana",),
        ),
        case(
            "test cache missing",
            config("notest", with_(test_cache=str(folder / "notest.h5"))),
            ("notest.h5",),
        ),
        case("val cache a text file", config("textval", with_(val_cache=str(fx.text))), ("notes.txt",)),
        case(
            "unknown precision",
            config("fp8", {**good, "train": {"epochs": 1, "precision": "fp8"}}),
            ("train.precision",),
        ),
    ]


# ------------------------------------------------------------------------------------------ eval, report, dashboards


def results_cases(fx: Fixtures) -> list[Case]:
    folder = fx.root / "results"
    folder.mkdir()
    out = folder / "out"
    test_cache = str(fx.caches["test"])
    empty_student = folder / "empty-student"
    empty_student.mkdir()
    bad_student = folder / "bad-student"
    bad_student.mkdir()
    (bad_student / "student_config.json").write_text("{ not json")
    pg = f"postgresql+psycopg://tsl:{SECRET}@127.0.0.1:1/studies"

    def ev(name, args, needles, absent=()):
        return Case("eval/report", name, ["tinysiglip", "eval", *args], needles, absent=absent)

    def tool(t, name, storage, needles, *, extra=(), unchanged=()):
        argv = ["tinysiglip", t, *(["--storage", storage] if storage else []), "--out", str(out / t), *extra]
        return Case("eval/report", f"{t}: {name}", argv, needles, absent=(out / t,), unchanged=unchanged)

    cases = [
        ev("--student /nonexistent", ["--student", "/nonexistent", "--cache", test_cache], ("/nonexistent",)),
        ev("--student a file", ["--student", str(fx.text), "--cache", test_cache], ("notes.txt",)),
        ev(
            "--student an empty folder",
            ["--student", str(empty_student), "--cache", test_cache],
            ("student_config.json",),
        ),
        ev(
            "--student with a broken config",
            ["--student", str(bad_student), "--cache", test_cache],
            ("student_config.json",),
        ),
        ev(
            "--device banana",
            ["--student", str(bad_student), "--cache", test_cache, "--device", "banana"],
            ("banana",),
        ),
        ev(
            "--json into /proc",
            ["--teacher", "--cache", test_cache, "--json", "/proc/nope/m.json"],
            ("--json",),
        ),
        ev("--json is a folder", ["--teacher", "--cache", test_cache, "--json", str(folder)], ("--json",)),
        ev("--cache missing", ["--teacher", "--cache", str(folder / "nope.h5")], ("nope.h5",)),
        ev("--cache a text file", ["--teacher", "--cache", str(fx.text)], ("notes.txt",)),
        ev("neither --student nor --teacher", ["--cache", test_cache], ("--student",)),
    ]
    for t in ("report", "dashboards"):
        cases += [
            tool(t, "in-memory database", "sqlite:///:memory:", ("memory",)),
            tool(t, "/dev/null", "/dev/null", ("/dev/null",)),
            tool(t, "an empty file", str(fx.empty), ("empty.db",), unchanged=(fx.empty,)),
            tool(t, "a foreign SQLite database", str(fx.foreign), ("foreign.db",), unchanged=(fx.foreign,)),
            tool(t, "a text file", str(fx.text), ("notes.txt",), unchanged=(fx.text,)),
            tool(
                t,
                "a study not in the database",
                str(fx.studydb),
                ("nosuchstudy",),
                extra=("--study", "nosuchstudy"),
                unchanged=(fx.studydb,),
            ),
            tool(t, "a database file that does not exist", str(folder / "nope.db"), ("nope.db",)),
            tool(t, "unreachable PostgreSQL with a password", pg, ("127.0.0.1",)),
            tool(t, "no database named", None, ("--storage",)),
        ]
    cases[-1].absent += (folder / "nope.db",)
    return cases


# ------------------------------------------------------------------------------------------ caches and datasets


def cache_cases(fx: Fixtures) -> list[Case]:
    folder = fx.root / "cachecases"
    folder.mkdir()
    truncated = fx.damaged_cache(
        "truncated", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    )
    garbage = fx.damaged_cache("garbage", lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(4096)))
    flipped = fx.damaged_cache("flipped", lambda p: flip_chunk_bytes(p, "pixels", 5, 256))
    nan_img = fx.damaged_cache("nan-image", lambda p: write_nan_bytes(p, "image_embeds", 0))
    nan_txt = fx.damaged_cache("nan-text", lambda p: write_nan_bytes(p, "text_embeds", 3))
    good = fx.train_config()

    def train_on(name, cache, needles, *, read_while_training=False):
        cfg = folder / f"train-{name}.yaml"
        cfg.write_text(yaml.safe_dump({**good, "data": {**good["data"], "train_cache": str(cache)}}))
        run = folder / f"run-{name}"
        argv = ["tinysiglip", "train", "--config", str(cfg), "--run-dir", str(run)]
        # damage inside the pixels is found by the chunk checksums as the rows are read (by design: reading
        # every pixel at open is `cache verify`'s job): the run has started, but nothing may claim success
        absent = (run / "result.json", run / "student", run / "checkpoint") if read_while_training else (run,)
        return Case(
            "caches/datasets", f"train on a {name} cache", argv, needles, absent=absent, unchanged=(cache,)
        )

    def verify(name, cache, needles, codes=(2,), why=""):
        return Case(
            "caches/datasets",
            f"cache verify: {name}",
            ["tinysiglip", "cache", "verify", str(cache)],
            needles,
            codes=codes,
            unchanged=(cache,) if Path(cache).is_file() else (),
            why_code=why,
        )

    def build(name, edit=None, *, raw=None, extra=(), needles=(), captions_images=None):
        captions, images = captions_images or fx.coco(name.replace(" ", "-"), edit, raw=raw)
        out = folder / f"build-{name.replace(' ', '-')}.h5"
        argv = [
            "tinysiglip",
            "cache",
            "build",
            "--teacher",
            str(fx.teacher),
            "--coco-captions",
            str(captions),
            "--images",
            str(images),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ]
        return Case(
            "caches/datasets", f"cache build: {name}", argv, needles, absent=(out,), unchanged=(captions,)
        )

    def missing_image(data, images):
        (images / data["images"][1]["file_name"]).unlink()

    def corrupt_jpeg(data, images):
        path = images / data["images"][2]["file_name"]
        path.write_bytes(path.read_bytes()[:200])

    def empty_caption(data, images):
        data["annotations"][3]["caption"] = "   "

    def unknown_image(data, images):
        data["annotations"][0]["image_id"] = 987654

    def no_images_key(data, images):
        del data["images"]

    def garbage_jpeg(data, images):
        (images / data["images"][0]["file_name"]).write_bytes(b"\x00garbage" * 100)

    def caption_not_text(data, images):
        data["annotations"][0]["caption"] = 42

    def no_annotations(data, images):
        data["annotations"] = []

    return [
        verify("truncated h5", truncated, ("truncated.h5",)),
        verify("garbage h5", garbage, ("garbage.h5",)),
        verify("a text file", fx.text, ("notes.txt",)),
        verify(
            "flipped bytes in pixels",
            flipped,
            ("flipped.h5", "pixels"),
            codes=(1, 2),
            why="verify reports damage found",
        ),
        verify(
            "NaN image embeddings",
            nan_img,
            ("nan-image.h5", "image_embeds"),
            codes=(1, 2),
            why="verify reports damage found",
        ),
        verify(
            "NaN text embeddings",
            nan_txt,
            ("nan-text.h5", "text_embeds"),
            codes=(1, 2),
            why="verify reports damage found",
        ),
        verify("file missing", folder / "nope.h5", ("nope.h5",)),
        verify("a directory", folder, (str(folder),)),
        Case(
            "caches/datasets",
            "cache info: garbage h5",
            ["tinysiglip", "cache", "info", str(garbage)],
            ("garbage.h5",),
            unchanged=(garbage,),
        ),
        train_on("truncated", truncated, ("truncated.h5",)),
        train_on("garbage", garbage, ("garbage.h5",)),
        train_on("flipped-pixels", flipped, ("flipped.h5", "pixels"), read_while_training=True),
        train_on("NaN-embedding", nan_img, ("nan-image.h5",)),
        Case(
            "caches/datasets",
            "eval --teacher on NaN text embeddings",
            ["tinysiglip", "eval", "--teacher", "--cache", str(nan_txt)],
            ("nan-text.h5",),
            unchanged=(nan_txt,),
        ),
        build("missing image", missing_image, needles=("000000000002.jpg",)),
        build("corrupt JPEG", corrupt_jpeg, needles=("000000000003.jpg",)),
        build("garbage JPEG", garbage_jpeg, needles=("000000000001.jpg",)),
        build("broken annotations JSON", raw='{"images": [', needles=("captions_val2017.json",)),
        build("annotations not JSON", raw="images,annotations\n1,2\n", needles=("captions_val2017.json",)),
        build("annotations without images", no_images_key, needles=("images",)),
        build("empty caption", empty_caption, needles=("caption",)),
        build("caption not text", caption_not_text, needles=("caption",)),
        build("caption of an unknown image", unknown_image, needles=("987654",)),
        build("no annotations", no_annotations, needles=("captions_val2017.json",)),
        build("images folder missing", needles=("nope",), captions_images=(fx.captions, fx.root / "nope")),
        build(
            "captions file missing",
            needles=("nope.json",),
            captions_images=(fx.root / "nope.json", fx.coco_images),
        ),
        build(
            "teacher folder missing", needles=("noteacher",), extra=("--teacher", str(fx.root / "noteacher"))
        ),
        build("--out into /proc", needles=("/proc/nope",), extra=("--out", "/proc/nope/x.h5")),
        Case(
            "caches/datasets",
            "cache build: --karpathy without --split",
            [
                "tinysiglip",
                "cache",
                "build",
                "--teacher",
                str(fx.teacher),
                "--karpathy",
                str(fx.root / "shapes" / "dataset_shapes.json"),
                "--images",
                str(fx.root / "shapes" / "images"),
                "--out",
                str(folder / "k.h5"),
            ],
            ("--split",),
            absent=(folder / "k.h5",),
        ),
    ]


CATEGORIES = {
    "study": study_cases,
    "sweep flags": sweep_flag_cases,
    "train": train_cases,
    "eval/report": results_cases,
    "caches/datasets": cache_cases,
}
