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


def test_pages_are_self_contained(dashboards):
    index = (dashboards / "index.html").read_text()
    pages = sorted((dashboards / STUDY_NAME).glob("*.html"))
    assert {p.stem for p in pages} == {"results", "search", "curves", "cost"}
    for p in pages:
        text = p.read_text()
        assert f"{STUDY_NAME}/{p.name}" in index
        assert "plotly.js v" in text  # inlined once per page
        assert "<script src=" not in text  # no external script (CDN or file)
        assert int(text.split('data-tsl-plots="')[1].split('"')[0]) >= 1


def test_data_functions_from_db(study_db):
    from tinysiglip.results import dashboard_data as dd
    from tinysiglip.results.report_data import study_report_data
    from tinysiglip.results.store import open_store

    store = open_store(study_db[0], create=False)
    data = study_report_data(store, STUDY_NAME)
    bars = dd.ablation_bars(store, data)
    assert [r["cell"] for r in bars["rows"]][0] == "A5" and all(r["i2t_r1"]["n"] == 2 for r in bars["rows"])
    curves = dd.learning_curves(store, data)
    pruned = [t for c in curves["cells"] for t in c["trials"] if t["state"] == "pruned"]
    assert pruned and all(t["epochs"][-1] < t["epochs_budget"] for t in pruned)
    imp = dd.param_importances(store, data)
    assert imp["cells"]  # A1/A4 have complete trials only
    for c in imp["cells"]:
        assert sum(c["importances"].values()) == pytest.approx(1.0)
    scaling = dd.scaling(store, data)
    assert {p["cell"] for s in scaling["series"] for p in s["points"]} == {"A5", "B1"}
    cost = dd.cost_over_time(store, data)
    assert cost["points"][-1]["pruned"] == sum(1 for r in store.runs(STUDY_NAME) if r.status == "pruned")


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
