"""Dashboards from the stub study database; the Optuna API reads the same database."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from test_report import STUDY_NAME, shared_study_db


@pytest.fixture(scope="session")
def study_db(tmp_path_factory):
    return shared_study_db(tmp_path_factory)


@pytest.fixture(scope="module")
def dashboards(study_db, tmp_path_factory):
    from tinysiglip.results.dashboards import main

    out = tmp_path_factory.mktemp("dash")
    assert main(["--storage", study_db[0], "--out", str(out)]) == 0
    return out


def test_every_cell_loads_with_optuna_api(study_db):
    """What optuna-dashboard sees: one Optuna study per cell, trial states as the driver recorded them."""
    from tinysiglip.results.store import open_store

    url = study_db[0]
    store = open_store(url, create=False)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage=url)}
    cells = store.cells(STUDY_NAME)
    assert {f"{STUDY_NAME}/{c}" for c in cells} <= names
    pruned_cells = []
    for cell in cells:
        study = optuna.load_study(study_name=f"{STUDY_NAME}/{cell}", storage=url)
        trials = study.get_trials(deepcopy=False)
        runs = {r.optuna_trial_number: r for r in store.runs(STUDY_NAME, cell=cell, kind="trial")}
        assert sorted(runs) == [t.number for t in trials]
        for t in trials:
            assert t.state.name.lower() == runs[t.number].status
            if t.state == optuna.trial.TrialState.PRUNED:
                assert float(t.params["loss.feat"]) < 0.5  # the stub's designed-bad trials
                pruned_cells.append(cell)
    # cells searching loss.feat have designed-bad trials; cells with feat off have nothing to prune
    assert pruned_cells and not {"A1", "A4"} & set(pruned_cells)


def test_pages_share_one_plotly_js(dashboards):
    """plotly.js is written once per study folder and loaded from there by a relative path (offline)."""
    index = (dashboards / "index.html").read_text()
    folder = dashboards / STUDY_NAME
    pages = sorted(folder.glob("*.html"))
    assert {p.stem for p in pages} == {"results", "search", "curves", "cost", "pruning"}
    assert [p.name for p in folder.glob("*.js")] == ["plotly.min.js"]
    assert (folder / "plotly.min.js").read_text(encoding="utf-8").lstrip("/* \n").startswith("plotly.js v")
    for p in pages:
        text = p.read_text()
        assert f"{STUDY_NAME}/{p.name}" in index
        assert text.count("<script src=") == 1 and '<script src="plotly.min.js"></script>' in text
        assert "plotly.js v" not in text and "cdn" not in text.lower()
        assert int(text.split('data-tsl-plots="')[1].split('"')[0]) >= 1
    # a page is about the size of its figures' data, not of plotly.js (4.8 MB)
    assert max(p.stat().st_size for p in pages) < 1_000_000


def test_data_functions_from_db(study_db):
    from tinysiglip.results import cost_summary, load_runs, load_teachers
    from tinysiglip.results import dashboard_data as dd
    from tinysiglip.results.report_data import study_report_data
    from tinysiglip.results.store import open_store

    store = open_store(study_db[0], create=False)
    data = study_report_data(store, STUDY_NAME)
    bars = dd.ablation_bars(data)
    assert [r["cell"] for r in bars["rows"]][0] == "A5" and all(r["i2t_r1"]["n"] == 2 for r in bars["rows"])
    teacher = load_teachers(store, STUDY_NAME).set_index("cell").loc["A5"]
    assert [t["value"] for t in bars["teachers"]["i2t_r1"]] == [teacher["i2t_r1"]]  # ablation: one teacher
    assert [t["value"] for t in bars["teachers"]["t2i_r1"]] == [teacher["t2i_r1"]]

    curves = dd.learning_curves(data)
    runs = [r for c in curves["cells"] for r in c["runs"]]
    pruned = [r for r in runs if r["state"] == "pruned"]
    assert pruned and all(r["epochs"][-1] < r["epochs_budget"] for r in pruned)
    assert {r["kind"] for r in runs} == {"trial", "final"}  # final runs are on the overlay too
    assert len(runs) == len(store.runs(STUDY_NAME))  # every run reported evaluations
    for r in runs:
        evals = store.evaluations(r["run_id"])
        assert r["epochs"] == [e.epoch for e in evals] and r["values"] == [e.objective for e in evals]
    assert curves["max_epoch"] == 3 and all(isinstance(e, int) for r in runs for e in r["epochs"])
    # the teacher's mean R@1 (objective metric mean_r1) for each teacher of the study: base and large
    assert sorted(t["source"] for t in curves["teachers"]) == [
        "google/siglip2-base-patch16-224",
        "google/siglip2-large-patch16-256",
    ]
    assert all(t["value"] == (teacher["i2t_r1"] + teacher["t2i_r1"]) / 2 for t in curves["teachers"])

    imp = dd.param_importances(data)
    assert imp["cells"]  # A1/A4 have complete trials only
    for c in imp["cells"]:
        assert sum(c["importances"].values()) == pytest.approx(1.0)
    scaling = dd.scaling(data)
    assert {p["cell"] for s in scaling["series"] for p in s["points"]} == {"A5", "B1"}
    cost = dd.cost_over_time(data)
    assert cost["points"][-1]["pruned"] == sum(1 for r in store.runs(STUDY_NAME) if r.status == "pruned")
    assert (
        cost["points"][-1]["epochs_saved"]
        == cost_summary(load_runs(store, STUDY_NAME))["__total__"]["epochs_saved_by_pruning"]
    )


def test_figures_have_teacher_lines_and_integer_epochs(study_db):
    from tinysiglip.results import dashboard_data as dd
    from tinysiglip.results.plots import PLOTS
    from tinysiglip.results.report_data import study_report_data

    data = study_report_data(study_db[0], STUDY_NAME)
    ((_, curves),) = PLOTS["learning_curves"](dd.learning_curves(data))
    assert curves.layout.xaxis.dtick == 1 and curves.layout.xaxis.tickformat == "d"
    widths = {t.line.width for t in curves.data if t.mode == "lines+markers"}
    assert widths == {1, 3.5}  # thin search trials, bold final runs
    colors = {t.legendgroup: t.line.color for t in curves.data if t.mode == "lines+markers"}
    assert len(set(colors.values())) == len(colors) == len(data.cells)  # one colour per cell
    for fig in (curves, PLOTS["ablation_bars"](dd.ablation_bars(data))[0][1]):
        names = [s.name for s in fig.layout.shapes if s.name and s.name.startswith("teacher ")]
        assert names, fig.layout.title.text


def test_declarations_validate(tmp_path):
    from tinysiglip.results.dashboards import DashboardError, declarations_for, load_declarations

    decls = load_declarations()
    assert [d.name for d in declarations_for("anything", decls)] == ["default"]
    assert [d.name for d in declarations_for("scaling_B", decls)] == ["scaling"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\npages: {p: [ablation_bar]}\n")
    with pytest.raises(DashboardError, match="unknown plot 'ablation_bar'.*did you mean 'ablation_bars'"):
        load_declarations(tmp_path)
    bad.write_text("name: bad\nplots: [scaling]\n")
    with pytest.raises(DashboardError, match="unknown key"):
        load_declarations(tmp_path)
    assert Path(load_declarations()[0].path).parent.name == "dashboards"
