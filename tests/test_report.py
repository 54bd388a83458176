"""Report tables and best-config export from a study database the real sweep wrote with the stub trainer.

The fixture database is built once per test session (``study_db``; shared with test_dashboards.py and
test_browser.py through the session's base temp folder): a stub study with ablation cells A1-A5
(A1: no KD; A5: all three losses on) and one scaling cell B1 (another teacher), run by the real driver
under Ray Tune + Optuna with tests/sweep_stubs.py (designed-bad trials when loss.feat < 0.5 get pruned).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDY_NAME = "stubrep"
STUDY_YAML = """\
study: stubrep
description: stub ablation (A1-A5) plus a scaling cell
teachers:
  base: {source: google/siglip2-base-patch16-224}
  large: {source: google/siglip2-large-patch16-256}
datasets: {d: {kind: local_shapes}}
defaults:
  teacher: base
  student: {name: vit_small}
  loss: {feat: 1.0, affinity: 1.0, contrast: 1.0}
grid:
  A1: {description: "no KD", loss: {feat: off, affinity: off}}
  A2: {description: "feature only", loss: {affinity: off, contrast: off}}
  A3: {description: "feature + contrastive", loss: {affinity: off}}
  A4: {description: "affinity + contrastive", loss: {feat: off}}
  A5: {description: "full"}
  B1: {description: "large -> vit_small", teacher: large}
search_space:
  params:
    lambda_feat: {type: float, low: 0.05, high: 2.0}
    optim.lr: {type: float, low: 1.0e-4, high: 2.0e-3, log: true}
trials_per_cell: 3
budget: {epochs: 3, eval_every_epochs: 1}
objective: {metric: mean_r1, direction: maximize}
pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 0}
sampler: {type: random, seed: 1}
final: {seeds: [0, 1]}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
max_failures: 1
max_concurrent: 2
"""
HOOKS = [
    "--train-fn",
    "sweep_stubs:stub_train",
    "--caches-fn",
    "sweep_stubs:stub_caches",
    "--teacher-metrics-fn",
    "sweep_stubs:stub_teacher_metrics",
    "--num-cpus",
    "2",
]


def build_study_db(base: Path) -> tuple[str, Path]:
    """(storage URL, study file): run the stub sweep into ``base/run/study.db`` unless it is there."""
    study_file = base / "stubrep.yaml"
    run_dir = base / "run"
    db = run_dir / "study.db"
    done = base / "done"
    if not done.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        base.mkdir(parents=True, exist_ok=True)
        study_file.write_text(STUDY_YAML)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "tinysiglip.sweep", str(study_file), "--run-dir", str(run_dir), *HOOKS]
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise AssertionError(f"stub sweep failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        done.write_text("ok")
    return f"sqlite:///{db}", study_file


def shared_study_db(tmp_path_factory) -> tuple[str, Path]:
    return build_study_db(tmp_path_factory.getbasetemp() / "stub_study_db")


@pytest.fixture(scope="session")
def study_db(tmp_path_factory):
    return shared_study_db(tmp_path_factory)


@pytest.fixture(scope="module")
def report(study_db, tmp_path_factory):
    from tinysiglip.results.report import main

    url, _ = study_db
    out = tmp_path_factory.mktemp("report")
    assert main(["--storage", url, "--study", STUDY_NAME, "--out", str(out)]) == 0
    return out


def md_rows(path: Path) -> list[list[str]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]


def test_report_writes_every_format(report):
    for stem in (
        "table1_main",
        "table2_ablation",
        "table_scaling",
        "table_cells",
        "table_best_params",
        "table_cost",
    ):
        for ext in (".md", ".csv", ".tex"):
            assert (report / f"{stem}{ext}").is_file(), stem + ext
        tex = (report / f"{stem}.tex").read_text()
        assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
        assert "tsl\\_runs.id" in tex
        assert "Computed from tsl_runs.id" in (report / f"{stem}.md").read_text()
    assert "Table 2" in (report / "report.md").read_text()


def test_table2_matches_database(report, study_db):
    from tinysiglip.results.store import open_store

    store = open_store(study_db[0], create=False)
    rows = md_rows(report / "table2_ablation.md")
    assert [r[1] for r in rows] == ["A5", "A1", "A2", "A3", "A4"]  # full method first
    # Strategy says each thing once: the config's short name; "Losses on" and the CSV's description the rest
    assert [r[0] for r in rows] == [
        "Full method",
        "No KD",
        "w/o affinity & contrastive",
        "w/o affinity",
        "w/o feature",
    ]
    assert rows[0][2] == "feat+affinity+contrast" and rows[0][5] == "-"
    with (report / "table2_ablation.csv").open() as f:
        csv_rows = {r["cell"]: r for r in csv.DictReader(f)}
    for cell in ("A1", "A2", "A3", "A4", "A5"):
        finals = store.runs(STUDY_NAME, cell=cell, kind="final", status="complete")
        vals = [r.test_metrics["i2t_r1"] for r in finals]
        r = csv_rows[cell]
        assert float(r["i2t_r1_mean"]) == pytest.approx(sum(vals) / len(vals))
        assert int(r["i2t_r1_n"]) == len(vals) == 2
        assert sorted(map(int, r["runs"].split())) == sorted(x.id for x in finals)
    assert csv_rows["A5"]["description"] == "full" and csv_rows["A1"]["strategy"] == "No KD"
    a5 = csv_rows["A5"]
    a1 = csv_rows["A1"]
    expected = (float(a1["i2t_r1_mean"]) + float(a1["t2i_r1_mean"])) / 2 - (
        float(a5["i2t_r1_mean"]) + float(a5["t2i_r1_mean"])
    ) / 2
    # the runs stored per-query ranks: the delta is the bootstrap's, with its bounds in the CSV
    assert float(a1["delta"]) == pytest.approx(expected)
    assert float(a1["delta_low"]) <= float(a1["delta"]) <= float(a1["delta_high"]) < 0
    text = (report / "table2_ablation.md").read_text()
    assert "(n=2)" in text and " ± " in text and "Full method = A5" in text


def test_every_printed_difference_has_an_interval(report):
    """Stub ranks: A1 hits 6 of 100 images, A3 and A5 the same 30: A1 - A5 is clearly negative,
    A3 - A5 exactly 0 (identical ranks give an interval of exactly 0, unmarked)."""
    rows = {r[1]: r for r in md_rows(report / "table2_ablation.md")}
    assert rows["A1"][5].startswith("-18.0 [") and rows["A1"][5].endswith("]*")
    assert rows["A1"][6].startswith("-24.0 [") and rows["A1"][6].endswith("]*")  # Δ I2T R@1
    assert rows["A3"][5] == "+0.0 [+0.0, +0.0]"
    assert rows["A5"][8].startswith("[") and " / [" in rows["A5"][8]  # its own R@1 intervals
    text = (report / "table2_ablation.md").read_text()
    assert "paired bootstrap over the 100 test images" in text and "2000 resamples" in text
    table1 = md_rows(report / "table1_main.md")
    delta = next(r for r in table1 if r[0] == "Δ distilled − no KD")
    assert delta[1] in ("A3 − A1", "A5 − A1") and delta[2].startswith("+24.0 [") and delta[2].endswith("*")
    with (report / "table1_main.csv").open() as f:
        by_model = {r["model"]: r for r in csv.DictReader(f)}
    teacher = next(r for r in table1 if r[0].startswith("Teacher"))
    assert teacher[8].startswith("[") and " / [" in teacher[8]  # the teacher's own R@1 intervals
    above = next(r for r in table1 if r[0] == "Δ teacher − distilled")
    assert above[2].startswith("+20.0 [") and above[5].startswith("+25.0 [") and above[5].endswith("*")
    row = by_model["Δ distilled − no KD"]
    assert float(row["delta_i2t_r1_low"]) <= 24.0 <= float(row["delta_i2t_r1_high"])
    student = by_model["Student, no KD"]
    assert float(student["i2t_r1_ci_low"]) <= 6.0 <= float(student["i2t_r1_ci_high"])
    scaling = md_rows(report / "table_scaling.md")
    assert [r[3] for r in scaling] == ["B1", "A5"] or [r[3] for r in scaling] == ["A5", "B1"]


def test_a_database_without_ranks_gets_standard_errors_and_says_so(study_db, tmp_path):
    from sqlalchemy import text

    from tinysiglip.results.report import main
    from tinysiglip.results.store import open_store

    copy = tmp_path / "study.db"
    shutil.copy(Path(study_db[0].removeprefix("sqlite:///")), copy)
    store = open_store(f"sqlite:///{copy}", create=False)
    with store.engine.begin() as c:
        c.execute(text("drop table tsl_query_ranks"))  # a database made before ranks were stored
    out = tmp_path / "rep"
    assert main(["--storage", f"sqlite:///{copy}", "--study", STUDY_NAME, "--out", str(out)]) == 0
    rows = {r[1]: r for r in md_rows(out / "table2_ablation.md")}
    assert " ± " in rows["A1"][5] and "[" not in rows["A1"][5]
    assert "No 95% intervals" in (out / "table2_ablation.md").read_text()
    with (out / "table2_ablation.csv").open() as f:
        assert "delta_mean" in next(csv.reader(f))


def test_table1_teacher_nokd_best(report):
    rows = md_rows(report / "table1_main.md")
    assert rows[0][0].startswith("Teacher (google/siglip2-base") and rows[0][2] == "50.0"
    assert rows[1][1] == "A1"
    assert rows[2][1] in ("A3", "A5")  # the distilled cells with the best objective (stub: equal)
    with (report / "table1_main.csv").open() as f:
        r = list(csv.DictReader(f))
    assert r[1]["params_image"] and r[1]["params_text"]


def test_cost_table_counts(report, study_db):
    from tinysiglip.results import cost_summary, load_runs, open_store

    store = open_store(study_db[0], create=False)
    summary = cost_summary(load_runs(store, STUDY_NAME))
    with (report / "table_cost.csv").open() as f:
        rows = {r["cell"]: r for r in csv.DictReader(f)}
    total = rows["Total (study)"]
    assert int(total["trials"]) == summary["__total__"]["trials"] == 18
    assert int(total["trials_pruned"]) == summary["__total__"]["trials_pruned"] > 0
    assert int(total["epochs_saved_by_pruning"]) == summary["__total__"]["epochs_saved_by_pruning"] > 0
    assert "CPU-h" in (report / "table_cost.md").read_text()


def test_best_configs_are_train_configs(report, study_db):
    from tinysiglip.results.store import open_store
    from tinysiglip.train import resolve_config

    store = open_store(study_db[0], create=False)
    for cell in ("A1", "A5", "B1"):
        path = report / "best_configs" / f"{cell}.yaml"
        text = path.read_text()
        assert text.startswith("# Best config of study 'stubrep', cell " + repr(cell))
        config = yaml.safe_load(text)
        resolved = resolve_config(config, source=str(path))
        assert resolved["teacher"]["source"].startswith("google/siglip2-")
        assert resolved["train"]["seed"] in (0, 1)
        run_id = int(text.split("tsl_runs.id ")[1].split()[0])
        run = store.get_run(run_id)
        assert run.kind == "final" and run.cell == cell and run.config["loss"] == config["loss"]


def test_flags_missing_and_failed_seeds(study_db, tmp_path):
    """A cell with a failed final run is marked † with a footnote; n counts complete runs only."""
    from tinysiglip.results.report import main
    from tinysiglip.results.store import open_store

    url = study_db[0]
    db = Path(url.removeprefix("sqlite:///"))
    copy = tmp_path / "study.db"
    shutil.copy(db, copy)
    store = open_store(f"sqlite:///{copy}", create=False)
    victim = store.runs(STUDY_NAME, cell="A3", kind="final")[0]
    store.finish_run(victim.id, "failed", error="boom")
    out = tmp_path / "rep"
    assert main(["--storage", f"sqlite:///{copy}", "--out", str(out)]) == 0
    text = (out / "table2_ablation.md").read_text()
    assert "| A3† |" in text and "(n=1)" in text
    assert "† A3: 1 of 2 final seeds complete" in text and str(victim.id) in text


def test_generic_tables_when_no_ablation(tmp_path, study_db):
    """A study without A-style cells still gets the per-cell and cost tables."""
    from tinysiglip.results.report import build_tables
    from tinysiglip.results.report_data import study_report_data
    from tinysiglip.results.store import open_store

    url = study_db[0]
    copy = tmp_path / "study.db"
    shutil.copy(Path(url.removeprefix("sqlite:///")), copy)
    store = open_store(f"sqlite:///{copy}", create=False)
    store.delete_study_runs(STUDY_NAME)  # nothing left but the study row
    tables = build_tables(study_report_data(store, STUDY_NAME))
    assert [t.key for t in tables] == ["table_cells", "table_best_params", "table_cost"]
    for t in tables:
        t.markdown(), t.latex(), t.csv_rows()


def test_cli_study_file_and_errors(study_db, tmp_path, capsys):
    from tinysiglip.results.report import main

    url, study_file = study_db
    out = tmp_path / "r"
    assert (
        main(
            [
                "--study-file",
                str(study_file),
                "--run-dir",
                str(Path(url.removeprefix("sqlite:///")).parent),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Table 2" in printed and str(out / "report.md") in printed
    assert main(["--storage", url, "--study", "nope"]) == 2
    assert "no study nope" in capsys.readouterr().err
    # a study run with --storage (a cluster's PostgreSQL): the study from the file, the database from the URL
    assert main(["--study-file", str(study_file), "--storage", url, "--out", str(tmp_path / "r2")]) == 0
    assert (tmp_path / "r2" / "report.md").is_file()
    assert (
        main(["--study-file", str(study_file), "--storage", url + ".other", "--out", str(tmp_path / "r3")])
        == 2
    )
    assert main(["--out", str(tmp_path / "r4")]) == 2
    assert "--storage URL, --study-file STUDY.yaml, or both" in capsys.readouterr().err


def test_python_m_entry_points():
    """`python -m tinysiglip.report` / `.dashboards` (Makefile, README) still reach the package's mains."""
    for module, prog in (
        ("tinysiglip.report", "tinysiglip report"),
        ("tinysiglip.dashboards", "tinysiglip dashboards"),
    ):
        p = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert p.returncode == 0 and f"usage: {prog}" in p.stdout, p.stderr
