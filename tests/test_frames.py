"""load_runs / load_curves / load_teachers against the stub study database, checked against raw SQL."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from test_report import STUDY_NAME, shared_study_db

ROOT = Path(__file__).resolve().parents[1]
RENAMES = {
    "id": "run_id",
    "study_name": "study",
    "status": "state",
    "optuna_trial_number": "trial",
    "source_trial_number": "source_trial",
}
SPREAD = {
    "params": "params_",
    "val_metrics": "val_",
    "test_metrics": "test_",
    "param_counts": "param_counts_",
}


@pytest.fixture(scope="session")
def study_db(tmp_path_factory):
    return shared_study_db(tmp_path_factory)


def sql_rows(url: str, query: str) -> list[dict]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(query)]


def same(frame_value, sql_value) -> bool:
    if sql_value is None:
        return (
            frame_value is None
            or frame_value is pd.NA
            or (isinstance(frame_value, float) and math.isnan(frame_value))
        )
    if isinstance(sql_value, float):
        return frame_value == pytest.approx(sql_value)
    return frame_value == sql_value


def test_load_runs_equals_the_sql_rows(study_db):
    from tinysiglip.results import load_runs

    url = study_db[0]
    runs = load_runs(url).set_index("run_id", drop=False)
    rows = sql_rows(url, "SELECT * FROM tsl_runs ORDER BY id")
    assert list(runs["run_id"]) == [r["id"] for r in rows] and len(rows) == 30
    assert runs["node"].isna().all()  # promised column, NULL until runs record their node
    checked = set()
    for row in rows:
        got = runs.loc[row["id"]]
        for column, value in row.items():
            if column in SPREAD:  # JSON of flat values: one column per key
                for key, v in (json.loads(value) if value else {}).items():
                    assert same(got[SPREAD[column] + key], v), (row["id"], column, key)
                    checked.add(SPREAD[column] + key)
            elif column in ("config", "cache_fingerprints"):  # nested JSON: kept as dicts
                assert got[column] == (json.loads(value) if value else None)
            elif column.endswith("_at"):
                assert got[column] == pd.Timestamp(value, tz="UTC"), column
            else:
                assert same(got[RENAMES.get(column, column)], value), (row["id"], column)
    assert {
        "params_loss.feat",
        "params_optim.lr",
        "val_mean_r1",
        "test_i2t_r1",
        "param_counts_total",
    } <= checked
    # a key missing in a run's JSON is NaN there, not 0
    a1_trials = runs[(runs["cell"] == "A1") & (runs["kind"] == "trial")]
    assert a1_trials["params_loss.feat"].isna().all()  # A1 has feat off: nothing to search


def test_load_runs_selects_and_accepts_a_store(study_db):
    from tinysiglip.results import StoreError, load_runs, open_store

    url = study_db[0]
    with open_store(url, create=False) as store:
        by_store = load_runs(store, study=STUDY_NAME)
        assert store.studies()  # still open: load_runs leaves a store it was given open
    pd.testing.assert_frame_equal(by_store, load_runs(url))
    pd.testing.assert_frame_equal(load_runs(url, study=[STUDY_NAME]), by_store)
    empty = load_runs(url, study="no_such_study")
    assert empty.empty and {"run_id", "study", "cell", "state", "objective", "node"} <= set(empty.columns)
    assert str(by_store["trial"].dtype) == "Int64" and str(by_store["objective"].dtype) == "float64"
    with pytest.raises(StoreError, match="no study database at .*missing.db"):
        load_runs(Path(url.removeprefix("sqlite:///")).parent / "missing.db")


def test_load_curves_equals_the_sql_rows(study_db):
    from tinysiglip.results import load_curves

    url = study_db[0]
    curves = load_curves(url, STUDY_NAME)
    rows = sql_rows(
        url,
        "SELECT e.*, r.study_name, r.cell, r.kind, r.optuna_trial_number, r.seed, r.status "
        "FROM tsl_evaluations e JOIN tsl_runs r ON r.id = e.run_id ORDER BY e.run_id, e.epoch, e.step",
    )
    assert len(curves) == len(rows) > 0
    assert list(curves.columns[:10]) == [
        "run_id", "study", "cell", "kind", "trial", "seed", "state", "epoch", "step", "objective",
    ]  # fmt: skip
    for (_, got), row in zip(curves.iterrows(), rows, strict=True):
        assert got["evaluation_id"] == row["id"] and got["run_id"] == row["run_id"]
        for column in ("epoch", "step", "objective", "attempt", "cell", "kind", "seed"):
            assert same(got[column], row[column]), column
        assert (got["study"], got["state"]) == (row["study_name"], row["status"])
        assert same(got["trial"], row["optuna_trial_number"])
        for key, v in json.loads(row["metrics"]).items():
            assert got[f"val_{key}"] == pytest.approx(v)
    assert set(curves["kind"]) == {"trial", "final"}


def test_cost_summary_equals_sql_sums(study_db):
    """The cost table's figures (report, dashboards, the sweep's summary) against SQL aggregates."""
    from tinysiglip.results import cost_summary, load_runs

    url = study_db[0]
    cost = cost_summary(load_runs(url, STUDY_NAME))
    for cell in ("A1", "A3", "__total__"):
        where = f"study_name = '{STUDY_NAME}'" + ("" if cell == "__total__" else f" AND cell = '{cell}'")
        (sql,) = sql_rows(
            url,
            "SELECT SUM(kind = 'trial') AS trials, SUM(kind = 'trial' AND status = 'pruned') AS pruned, "
            "SUM(kind = 'final' AND status = 'complete') AS final_complete, "
            "COALESCE(SUM(CASE WHEN kind = 'trial' AND status = 'pruned' THEN epochs_budget - epochs_done END), 0) "
            "AS saved, SUM(cpu_hours) AS cpu_hours, SUM(wall_time_s) AS wall FROM tsl_runs WHERE " + where,
        )
        got = cost[cell]
        assert (got["trials"], got["trials_pruned"], got["final_complete"]) == (
            sql["trials"], sql["pruned"], sql["final_complete"],
        )  # fmt: skip
        assert got["epochs_saved_by_pruning"] == sql["saved"]
        assert got["cpu_hours"] == pytest.approx(sql["cpu_hours"]) and got["wall_time_s"] == pytest.approx(
            sql["wall"]
        )
    assert cost["__total__"]["trials_pruned"] > 0 and cost["A3"]["epochs_saved_by_pruning"] > 0


def test_load_teachers(study_db):
    from tinysiglip.results import load_teachers

    url = study_db[0]
    teachers = load_teachers(url, STUDY_NAME)
    rows = sql_rows(url, "SELECT * FROM tsl_teacher_metrics ORDER BY id")
    assert list(teachers["teacher_metrics_id"]) == [r["id"] for r in rows]
    for (_, got), row in zip(teachers.iterrows(), rows, strict=True):
        assert got["teacher_source"] == row["teacher_source"] and got["split"] == row["split"]
        for key, v in json.loads(row["metrics"]).items():
            assert got[key] == pytest.approx(v)


def test_new_run_columns_appear_without_code_changes(tmp_path, monkeypatch):
    """A column a later schema adds to tsl_runs (a node name, per-query ranks) shows up in load_runs."""
    from sqlalchemy import JSON, Column, MetaData, String, create_engine

    from tinysiglip.results import frames
    from tinysiglip.results.schema import RunRow

    table = RunRow.__table__.to_metadata(MetaData())
    table.append_column(Column("node", String(255)))
    table.append_column(Column("test_ranks", JSON))
    url = f"sqlite:///{tmp_path / 'new.db'}"
    engine = create_engine(url)
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {"run_key": "trial:s/A1#0", "study_name": "s", "cell": "A1", "kind": "trial", "status": "complete",
                 "attempts": 1, "retries": 0, "wall_time_s": 1.0, "gpu_fraction": 0.0, "gpu_hours": 0.0,
                 "cpu_hours": 0.0, "node": "gpu-node-3", "test_ranks": [1, 4, 2]},
            ],
        )  # fmt: skip
    monkeypatch.setattr(frames, "RUNS", table)
    runs = frames.load_runs(url)
    assert runs.loc[0, "node"] == "gpu-node-3" and runs.loc[0, "test_ranks"] == [1, 4, 2]
    assert list(runs.columns).count("node") == 1


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"```python\n(from tinysiglip.results import load_runs\n.*?)```", text, re.S)
    assert match, "README.md: the load_runs example is missing"
    return match.group(1)


def test_readme_load_runs_example_runs(study_db, capsys):
    """The README's notebook example, run on the stub study: the λ_feat of the best A5 trials."""
    url, _ = study_db
    code = readme_example()
    assert 'load_runs("sqlite:///runs/ablation_A-local/study.db", study="ablation_A")' in code
    code = code.replace("sqlite:///runs/ablation_A-local/study.db", url).replace(
        '"ablation_A"', f'"{STUDY_NAME}"'
    )
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    best = namespace["best"]
    rows = sql_rows(
        url,
        f"SELECT id, objective, params FROM tsl_runs WHERE study_name = '{STUDY_NAME}' AND cell = 'A5' "
        "AND kind = 'trial' AND status = 'complete' ORDER BY objective DESC, id",
    )
    assert list(best["run_id"]) == [r["id"] for r in rows[: len(best)]]
    assert list(best["params_loss.feat"]) == pytest.approx(
        [json.loads(r["params"])["loss.feat"] for r in rows[: len(best)]]
    )
    assert "params_loss.feat" in capsys.readouterr().out
