"""Study files: every shipped study loads in both worlds, and every bad field is a clear StudyError."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna.distributions as od
import pytest
import yaml

from tinysiglip.config import TrainingConfig
from tinysiglip.errors import TinySigLIPError
from tinysiglip.sweep import Cell, Study, StudyError, load_study

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "studies").glob("*.yaml"))
EXPECTED_CELLS = {
    "ablation_A": ["A1", "A2", "A3", "A4", "A5"],
    "scaling_B": ["B1", "B2", "B3", "B4", "B5"],
    "architectures_C": ["C1", "C2"],
    "lambda_full": ["full"],
}


def test_all_shipped_studies_present():
    assert {p.stem for p in SHIPPED} == set(EXPECTED_CELLS)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
@pytest.mark.parametrize("local", [False, True], ids=["real", "local"])
def test_shipped_study_loads(path, local):
    study = load_study(path, local=local)
    assert isinstance(study, Study)
    assert [c.name for c in study.cells] == EXPECTED_CELLS[study.name]
    assert study.local is local
    assert study.trials_per_cell >= 1 and study.final_seeds
    for cell in study.cells:
        assert isinstance(cell, Cell)
        assert cell.study_name == f"{study.name}/{cell.name}"
        assert cell.teacher in study.teachers and cell.dataset in study.datasets
        cfg = cell.base_config
        assert set(cfg) <= set(TrainingConfig.model_fields)
        assert "data" not in cfg or not {"train_cache", "val_cache", "test_cache"} & set(cfg["data"])
        assert all(isinstance(cfg["loss"][t], float) for t in ("feat", "affinity", "contrast"))
        assert any(cfg["loss"][t] > 0 for t in ("feat", "affinity", "contrast"))
        assert cfg["train"]["epochs"] == study.budget.epochs
        assert cfg["objective"]["metric"] == study.objective.metric
        assert cfg["teacher"]["source"] == study.teachers[cell.teacher].effective_source
        for name, dist in cell.search_space.items():
            assert isinstance(dist, od.BaseDistribution)
            assert "." in name
    if local:
        assert study.resources.gpus_per_trial == 0
        assert study.run_dir == Path("runs") / f"{study.name}-local"
        assert all(d.kind == "local_shapes" for d in study.datasets.values())
        assert all(t.local_source and t.local_source.startswith("local-") for t in study.teachers.values())
        assert all(c.base_config["train"]["device"] == "cpu" for c in study.cells)
    else:
        assert study.run_dir == Path("runs") / study.name
        assert study.storage_url == f"sqlite:///{(Path.cwd() / 'runs' / study.name).as_posix()}/study.db"
        assert study.resources.gpus_per_trial == 0.25 and study.resources.cpus_per_trial == 4
        assert study.final_seeds == [0, 1, 2]
        assert all(t.local_source is None for t in study.teachers.values())
    # the samplers / pruners build
    study.make_sampler()
    study.make_pruner()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_local_keeps_grid_and_search_space(path):
    real, local = load_study(path), load_study(path, local=True)
    assert [c.name for c in real.cells] == [c.name for c in local.cells]
    assert [c.study_name for c in real.cells] == [c.study_name for c in local.cells]
    for r, lc in zip(real.cells, local.cells):
        assert list(r.search_space) == list(lc.search_space)
        assert r.base_config["loss"] == lc.base_config["loss"]
        assert r.base_config["student"]["name"] == lc.base_config["student"]["name"]
        assert r.teacher == lc.teacher
    assert local.trials_per_cell < real.trials_per_cell
    assert local.budget.epochs < real.budget.epochs


def test_seed_plan_values():
    a = load_study(ROOT / "studies/ablation_A.yaml")
    assert a.teachers["large"].source == "google/siglip2-large-patch16-256"
    losses = {
        c.name: {t for t, v in c.base_config["loss"].items() if isinstance(v, float) and v > 0}
        for c in a.cells
    }
    assert losses == {
        "A1": {"contrast"},
        "A2": {"feat"},
        "A3": {"feat", "contrast"},
        "A4": {"affinity", "contrast"},
        "A5": {"feat", "affinity", "contrast"},
    }
    assert {c.base_config["student"]["name"] for c in a.cells} == {"vit_small"}

    b = load_study(ROOT / "studies/scaling_B.yaml")
    pairs = {c.name: (b.teachers[c.teacher].source, c.base_config["student"]["name"]) for c in b.cells}
    assert pairs == {
        "B1": ("google/siglip2-base-patch16-224", "vit_tiny"),
        "B2": ("google/siglip2-large-patch16-256", "vit_tiny"),
        "B3": ("google/siglip2-base-patch16-224", "vit_small"),
        "B4": ("google/siglip2-large-patch16-256", "vit_small"),
        "B5": ("google/siglip2-so400m-patch14-224", "vit_small"),
    }
    assert all(c.base_config["loss"][t] > 0 for c in b.cells for t in ("feat", "affinity", "contrast"))
    bl = load_study(ROOT / "studies/scaling_B.yaml", local=True)
    assert {k: t.local_source for k, t in bl.teachers.items()} == {
        "base": "local-s",
        "large": "local-m",
        "so400m": "local-l",
    }

    c = load_study(ROOT / "studies/architectures_C.yaml")
    assert [x.base_config["student"]["name"] for x in c.cells] == ["resnet50", "mobilenetv3"]

    lam = load_study(ROOT / "studies/lambda_full.yaml")
    (full,) = lam.cells
    assert lam.trials_per_cell > a.trials_per_cell
    assert {"loss.feat", "loss.affinity", "loss.contrast"} <= set(full.search_space)
    assert full.search_space["loss.feat"].low < a.cell("A5").search_space["loss.feat"].low


def test_disabled_loss_lambda_not_searched():
    a = load_study(ROOT / "studies/ablation_A.yaml")
    for cell in a.cells:
        for term in ("feat", "affinity", "contrast"):
            if cell.base_config["loss"][term] == 0.0:
                assert f"loss.{term}" not in cell.search_space, (cell.name, term)
    assert set(a.cell("A3").search_space) == {"loss.feat", "loss.contrast", "optim.lr", "optim.weight_decay"}
    assert set(a.cell("A4").search_space) == {
        "loss.affinity",
        "loss.contrast",
        "optim.lr",
        "optim.weight_decay",
    }
    # a single remaining loss is not searched either (its scale is redundant with lr under AdamW)
    assert set(a.cell("A1").search_space) == {"optim.lr", "optim.weight_decay"}
    assert a.cell("A2").base_config["loss"]["feat"] == 1.0


def test_caches_needed():
    a = load_study(ROOT / "studies/ablation_A.yaml")
    assert [c.key for c in a.caches_needed()] == ["large/coco/train", "large/coco/val", "large/coco/test"]
    assert [c.key for c in a.caches_needed(include_test=False)] == ["large/coco/train", "large/coco/val"]
    b = load_study(ROOT / "studies/scaling_B.yaml", local=True)
    keys = [c.key for c in b.caches_needed()]
    assert len(keys) == len(set(keys)) == 9
    assert {k.split("/")[0] for k in keys} == {"base", "large", "so400m"}
    spec = b.caches_needed()[0]
    assert spec.teacher_spec.local_source == "local-s" and spec.dataset_spec.kind == "local_shapes"


def test_apply_sets_dotted_params_and_seed():
    a = load_study(ROOT / "studies/ablation_A.yaml")
    cell = a.cell("A3")
    before = copy.deepcopy(cell.base_config)
    cfg = cell.apply({"loss.feat": 2.5, "lambda_contrast": 0.3, "optim.lr": 1e-3}, seed=7)
    assert cfg["loss"]["feat"] == 2.5 and cfg["loss"]["contrast"] == 0.3 and cfg["optim"]["lr"] == 1e-3
    assert cfg["loss"]["affinity"] == 0.0
    assert cfg["train"]["seed"] == 7
    assert cell.base_config == before  # not mutated
    assert "seed" not in cell.apply({}).get("train", {})
    with pytest.raises(StudyError, match="loss.affinity"):
        cell.apply({"loss.affinity": 1.0})
    lam = load_study(ROOT / "studies/lambda_full.yaml")
    assert lam.cells[0].apply({}, seed=0, final=True)["train"]["epochs"] == lam.budget.epochs


def test_describe_mentions_every_cell():
    for path in SHIPPED:
        for local in (False, True):
            study = load_study(path, local=local)
            text = study.describe()
            for cell in study.cells:
                assert cell.study_name in text
            assert "final runs" in text and "GPU" in text and str(study.final_seeds) in text


def test_cli_overrides_and_run_dir(tmp_path):
    a = load_study(ROOT / "studies/ablation_A.yaml", storage="postgresql+psycopg://u@h/db")
    assert a.storage_url == "postgresql+psycopg://u@h/db"
    a = load_study(ROOT / "studies/ablation_A.yaml", run_dir=tmp_path / "r")
    assert a.storage_url == f"sqlite:///{(tmp_path / 'r').as_posix()}/study.db"


def test_study_error_is_a_tinysiglip_error():
    assert issubclass(StudyError, TinySigLIPError)


# --------------------------------------------------------------------------------------------------
# Error cases: each names the file and the dotted field.

BASE = {
    "study": "t",
    "teachers": {"large": {"source": "google/siglip2-large-patch16-256"}},
    "datasets": {"coco": {"karpathy": "data/coco/dataset_coco.json", "images": "data/coco"}},
    "defaults": {
        "teacher": "large",
        "dataset": "coco",
        "student": {"name": "vit_small"},
        "optim": {"batch_size": 256},
    },
    "grid": {"A1": {"loss": {"feat": "off", "affinity": False}}, "A3": {"loss": {"affinity": 0}}},
    "search_space": "space.yaml",
    "trials_per_cell": 4,
    "budget": {"epochs": 3},
    "final": {"seeds": [0, 1]},
    "resources": {"cpus_per_trial": 2, "gpus_per_trial": 0.5},
    "local": {"teachers": {"large": "local-m"}},
}
SPACE = {
    "params": {
        "lambda_feat": {"type": "float", "low": 0.1, "high": 10, "log": True},
        "loss.contrast": {"type": "float", "low": 0.1, "high": 10, "log": True},
        "lr": {"type": "float", "low": "1e-4", "high": 2.0e-3, "log": True},
    }
}


def _write(tmp_path, study=None, space=None, *, edit=None, space_edit=None, raw=None):
    study = copy.deepcopy(study or BASE)
    space = copy.deepcopy(space or SPACE)
    if edit:
        edit(study)
    if space_edit:
        space_edit(space)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    p = tmp_path / "mystudy.yaml"
    p.write_text(raw if raw is not None else yaml.safe_dump(study, sort_keys=False))
    return p


def test_minimal_valid(tmp_path):
    s = load_study(_write(tmp_path))
    assert [c.name for c in s.cells] == ["A1", "A3"]
    assert set(s.cell("A1").search_space) == {"optim.lr"}
    assert set(s.cell("A3").search_space) == {"loss.feat", "loss.contrast", "optim.lr"}
    assert s.cell("A3").search_space["optim.lr"].low == pytest.approx(1e-4)
    assert s.cell("A1").base_config["train"]["gpu_memory_fraction"] == 0.5
    assert load_study(_write(tmp_path), local=True).resources.gpus_per_trial == 0


def _set(path, value):
    def edit(d):
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    return edit


def _delete(path):
    def edit(d):
        node = d
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return edit


ERROR_CASES = {
    "unknown top key": (_set("trials_per_cel", 3), "trials_per_cel", "trials_per_cell"),
    "unknown config key": (_set("grid.A3.loss.feet", 1.0), "grid.A3.loss.feet", "feat"),
    "unknown section": (_set("defaults.optimizer", {"lr": 1}), "defaults.optimizer", "optim"),
    "wrong type": (_set("grid.A3.optim", {"batch_size": "big"}), "grid.A3.optim.batch_size", "integer"),
    "wrong type section": (_set("budget", [10]), "budget", "mapping"),
    "negative lambda": (_set("grid.A3.loss.feat", -1.0), "grid.A3.loss.feat", "negative"),
    "all losses off": (
        _set("grid.A3.loss", {"feat": 0, "affinity": 0, "contrast": "off"}),
        "grid.A3.loss",
        "all three",
    ),
    "unknown student": (_set("grid.A3.student", {"name": "vit_huge"}), "grid.A3.student.name", "vit_small"),
    "unknown teacher key": (_set("grid.A3.teacher", "largee"), "grid.A3.teacher", "large"),
    "unknown dataset key": (_set("defaults.dataset", "cocoo"), "defaults.dataset", "coco"),
    "gpus negative": (_set("resources.gpus_per_trial", -0.5), "resources.gpus_per_trial", ">= 0"),
    "gpus 1.5": (_set("resources.gpus_per_trial", 1.5), "resources.gpus_per_trial", "whole number"),
    "cpus zero": (_set("resources.cpus_per_trial", 0), "resources.cpus_per_trial", "> 0"),
    "trials zero": (_set("trials_per_cell", 0), "trials_per_cell", ">= 1"),
    "empty seeds": (_set("final.seeds", []), "final.seeds", "seed"),
    "missing search space file": (_set("search_space", "../nope/space.yaml"), "search_space", "not found"),
    "cell missing search space": (
        _set("grid.A3.search_space", "other.yaml"),
        "grid.A3.search_space",
        "other.yaml",
    ),
    "owned elsewhere": (_set("defaults.train", {"epochs": 5}), "defaults.train.epochs", "budget.epochs"),
    "cache paths": (_set("defaults.data", {"train_cache": "x.h5"}), "defaults.data.train_cache", "driver"),
    "bad metric": (_set("objective", {"metric": "mean_r2"}), "objective.metric", "mean_r1"),
    "bad pruner": (_set("pruner", {"type": "medain"}), "pruner.type", "median"),
    "bad pruner key": (_set("pruner", {"type": "median", "warmup": 3}), "pruner.warmup", "n_warmup_steps"),
    "bad storage": (_set("storage", "not a url"), "storage", "SQLAlchemy"),
    "bad override": (
        _set("grid.A3.student", {"overrides": {"text_layer": 2}}),
        "grid.A3.student.overrides.text_layer",
        "text_layers",
    ),
    "eval beyond budget": (
        _set("budget", {"epochs": 2, "eval_every_epochs": 3}),
        "budget.eval_every_epochs",
        "at most 2",
    ),
    "bad cell name": (_set("grid", {"A/1": {}}), "grid.A/1", "rename"),
    "local unknown key": (_set("local.grid", {}), "local.grid", "valid keys"),
    "local gpus": (_set("local.resources", {"gpus_per_trial": 1}), "local.resources.gpus_per_trial", "CPU"),
    "local loss": (_set("local.config", {"loss": {"feat": 0}}), "local.config.loss", "local mode keeps"),
    "local teacher key": (_set("local.teachers", {"big": "local-m"}), "local.teachers.big", "large"),
    "local world dataset sizes": (
        _set("local.datasets", {"coco": {"kind": "local_shapes", "sizes": {"train": 10}}}),
        "local.datasets.coco.sizes",
        "TINYSIGLIP_LOCAL_WORLD_SIZE",
    ),
    "missing grid": (_delete("grid"), "grid", "missing"),
    "missing teacher source": (
        _set("teachers.large", {"revision": "main"}),
        "teachers.large.source",
        "source",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_names_file_and_field(tmp_path, case):
    edit, fld, hint = ERROR_CASES[case]
    p = _write(tmp_path, edit=edit)
    with pytest.raises(StudyError) as info:
        load_study(p)
    msg = str(info.value)
    assert "mystudy.yaml" in msg, msg
    assert fld in msg, msg
    assert hint in msg, msg
    assert "Fix:" in msg or "not found" in msg, msg


def test_missing_search_space_file_shows_resolved_path(tmp_path):
    p = _write(tmp_path, edit=_set("search_space", "../nope/space.yaml"))
    with pytest.raises(StudyError) as info:
        load_study(p)
    assert str((tmp_path / "../nope/space.yaml").resolve()) in str(info.value)


SPACE_ERRORS = {
    "low >= high": (
        "lambda_feat",
        {"type": "float", "low": 5, "high": 1},
        "params.lambda_feat",
        "below high",
    ),
    "log low <= 0": ("lambda_feat", {"low": 0, "high": 1, "log": True}, "params.lambda_feat.low", "low > 0"),
    "negative lambda": ("lambda_feat", {"low": -1, "high": 1}, "params.lambda_feat.low", "negative"),
    "unknown param": ("optim.lrr", {"low": 0.1, "high": 1}, "params.optim.lrr", "optim.lr"),
    "unknown dist type": ("lr", {"type": "loguniform", "low": 0.1, "high": 1}, "params.lr.type", "float"),
    "unknown dist key": ("lr", {"low": 0.1, "high": 1, "logg": True}, "params.lr.logg", "log"),
    "not searchable": (
        "train.seed",
        {"type": "int", "low": 0, "high": 9},
        "params.train.seed",
        "cannot be searched",
    ),
    "bad categorical": (
        "loss.contrastive",
        {"type": "categorical", "choices": ["sigmoid", "clip"]},
        "params.loss.contrastive.choices[1]",
        "infonce",
    ),
    "alias duplicate": ("loss.feat", {"low": 0.1, "high": 1}, "params.loss.feat", "already"),
    "lr range": ("lr", {"low": 0.0, "high": 1e-3}, "params.lr.low", "> 0"),
    "int for float leaf": (
        "optim.batch_size",
        {"type": "float", "low": 8, "high": 64},
        "params.optim.batch_size.type",
        "int",
    ),
    "not a mapping": ("lr", [1e-4, 1e-3], "params.lr", "mapping"),
}


@pytest.mark.parametrize("case", list(SPACE_ERRORS))
def test_search_space_errors_name_file_and_field(tmp_path, case):
    name, spec, fld, hint = SPACE_ERRORS[case]

    def space_edit(space):
        space["params"][name] = spec

    p = _write(tmp_path, space_edit=space_edit)
    with pytest.raises(StudyError) as info:
        load_study(p)
    msg = str(info.value)
    assert "space.yaml" in msg, msg
    assert fld in msg, msg
    assert hint in msg, msg


def test_invalid_yaml_reports_line(tmp_path):
    p = _write(tmp_path, raw="study: t\ngrid:\n  A1: {loss: {feat: 1.0}\nteachers: {}\n")
    with pytest.raises(StudyError) as info:
        load_study(p)
    assert "mystudy.yaml" in str(info.value) and "line " in str(info.value)


def test_duplicate_key_is_an_error(tmp_path):
    p = _write(tmp_path, raw="study: t\ntrials_per_cell: 2\ntrials_per_cell: 3\n")
    with pytest.raises(StudyError, match="duplicate key 'trials_per_cell'"):
        load_study(p)


def test_yaml_is_never_evaluated(tmp_path):
    p = _write(tmp_path, raw="study: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(StudyError, match="mystudy.yaml"):
        load_study(p)


def test_local_block_validated_in_real_mode(tmp_path):
    p = _write(tmp_path, edit=_set("local.budget", {"epochs": 0}))
    with pytest.raises(StudyError, match=r"local\.budget\.epochs"):
        load_study(p)


def test_local_defaults_infer_teacher_size(tmp_path):
    p = _write(tmp_path, edit=_delete("local"))
    s = load_study(p, local=True)
    assert s.teachers["large"].local_source == "local-m"
    assert s.trials_per_cell == 2 and s.final_seeds == [0, 1] and s.budget.epochs == 2


def test_lambda_on_takes_default(tmp_path):
    def edit(d):
        d["defaults"]["loss"] = {"feat": 2.0}
        d["grid"]["A3"] = {"loss": {"feat": "on", "affinity": "off"}, "search_space": None}

    s = load_study(_write(tmp_path, edit=edit))
    cell = s.cell("A3")
    assert cell.base_config["loss"]["feat"] == 2.0 and cell.base_config["loss"]["contrast"] == 1.0
    assert cell.search_space == {} and cell.trials == 1


@pytest.mark.parametrize(
    ("pruner", "sampler"),
    [
        ({"type": "percentile", "percentile": 40}, {"type": "random", "seed": 3}),
        ({"type": "hyperband", "reduction_factor": 3}, {"type": "tpe", "multivariate": True}),
        ({"type": "successive_halving"}, {"type": "tpe", "constant_liar": True}),
        ({"type": "none"}, {"type": "tpe"}),
    ],
)
def test_pruner_and_sampler_types(tmp_path, pruner, sampler):
    import optuna

    def edit(d):
        d["pruner"], d["sampler"] = pruner, sampler

    s = load_study(_write(tmp_path, edit=edit))
    assert isinstance(s.make_pruner(), optuna.pruners.BasePruner)
    assert isinstance(s.make_sampler(), optuna.samplers.BaseSampler)
    if pruner["type"] == "hyperband":
        assert s.pruner["max_resource"] is None  # filled from budget.epochs by make_pruner


def test_student_names_without_registry(tmp_path, monkeypatch):
    from tinysiglip.config import training as config_mod

    monkeypatch.setattr(config_mod, "_student_cache", (config_mod._FALLBACK_STUDENTS, None))
    assert load_study(_write(tmp_path, edit=_set("grid.A3.student", {"name": "mobilenetv3"})))
    with pytest.raises(StudyError, match=r"grid\.A3\.student\.name"):
        load_study(_write(tmp_path, edit=_set("grid.A3.student", {"name": "mobilenet"})))


def test_every_training_config_field_is_reachable_from_a_study(tmp_path):
    """A study sets every field of the training config: in its cells (the same models), or through the
    study's own sections (teacher keys, budget, seeds, objective), or the driver fills it (caches)."""
    from tinysiglip.config import config_leaves
    from tinysiglip.sweep.study import OWNED_BY_STUDY

    def owner(path):
        return next((k for k in OWNED_BY_STUDY if path == k or path.startswith(k + ".")), None)

    leaves = config_leaves()
    settable = {
        path: info.get_default(call_default_factory=True) for path, info in leaves.items() if not owner(path)
    }
    defaults = {"teacher": "large", "dataset": "coco"}
    for path, value in settable.items():
        section, key = path.split(".")
        defaults.setdefault(section, {})[key] = value

    def edit(d):
        d["defaults"] = defaults
        d["grid"]["plain"] = {}
        d["budget"]["max_steps"] = 7

    study = load_study(_write(tmp_path, edit=edit))
    config = study.cell("plain").apply({}, seed=5)
    flat = {f"{s}.{k}": v for s, section in config.items() for k, v in section.items()}
    for path in leaves:
        if owner(path) is None:
            assert flat[path] == settable[path], path
        elif path.startswith("data."):
            assert "driver" in OWNED_BY_STUDY[owner(path)], path
        else:  # set from the study's own sections
            assert path in flat, path
    assert flat["train.max_steps"] == 7 and flat["train.seed"] == 5
    assert flat["teacher.source"] == "google/siglip2-large-patch16-256"


def test_all_problems_of_a_file_are_reported_together(tmp_path):
    def edit(d):
        d["trials_per_cell"] = 0
        d["grid"]["A3"]["optim"] = {"lr": -1}
        d["grid"]["A3"]["description"] = "two\nlines"
        d["resources"]["gpus_per_trial"] = 1.5

    with pytest.raises(StudyError) as info:
        load_study(_write(tmp_path, edit=edit))
    fields = [p.field for p in info.value.problems]
    assert fields == [
        "grid.A3.optim.lr",
        "grid.A3.description",
        "trials_per_cell",
        "resources.gpus_per_trial",
    ]
    assert "4 problems" in str(info.value) and "newline" in str(info.value)

    def cross(d):  # problems only the whole file can show are also listed together
        d["grid"]["A1"]["teacher"] = "big"
        d["grid"]["A3"]["loss"] = {"feat": 0, "affinity": 0, "contrast": 0}
        d["local"]["teachers"] = {"huge": "local-l"}

    with pytest.raises(StudyError) as info:
        load_study(_write(tmp_path, edit=cross))
    assert [p.field for p in info.value.problems] == [
        "grid.A1.teacher",
        "grid.A3.loss",
        "local.teachers.huge",
    ]


@pytest.mark.parametrize("field", ["study", "description"])
def test_names_and_descriptions_refuse_control_characters(tmp_path, field):
    p = _write(tmp_path, edit=_set(field, "ablation\nA" if field == "study" else "line one\x1b[2J"))
    with pytest.raises(StudyError, match=field):
        load_study(p)


def test_empty_study_file_says_so(tmp_path):
    for raw in ("", "# to be written\n"):
        p = _write(tmp_path, raw=raw)
        with pytest.raises(StudyError, match="mystudy.yaml.*the file is empty"):
            load_study(p)


def test_storage_with_an_unknown_database_driver(tmp_path):
    p = _write(tmp_path, edit=_set("storage", "nosuchdb://u@h/db"))
    with pytest.raises(StudyError, match="storage: no database driver for 'nosuchdb'"):
        load_study(p)
