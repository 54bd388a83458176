"""The study database: round trip on SQLite (and PostgreSQL when TINYSIGLIP_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import os
import uuid

import optuna
import pytest

from tinysiglip.results import (
    TABLE_NAMES,
    cost_summary,
    load_runs,
    open_store,
    optuna_storage,
    redact_url,
    run_key,
)

PG_URL = os.environ.get("TINYSIGLIP_TEST_POSTGRES_URL")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not PG_URL, reason="TINYSIGLIP_TEST_POSTGRES_URL not set"),
        ],
    ),
]


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite" else PG_URL
    s = open_store(url)
    yield s
    s.close()


class TestRoundTrip:
    def test_runs_evaluations_teacher(self, store):
        name = f"st_{uuid.uuid4().hex[:8]}"
        store.upsert_study(
            name,
            study_file="studies/x.yaml",
            study_text="study: x\n",
            local=True,
            settings={"objective": {"metric": "mean_r1", "direction": "maximize"}, "final_seeds": [0, 1]},
        )
        assert store.get_study(name).settings["final_seeds"] == [0, 1]
        r = store.start_run(
            study_name=name,
            cell="A1",
            kind="trial",
            optuna_study_name=f"{name}/A1",
            optuna_trial_number=0,
            config={"train": {"epochs": 5}},
            params={"loss.feat": 0.3},
            seed=0,
            epochs_budget=5,
            cpus=2,
            gpu_fraction=0.25,
            cache_fingerprints={"train": {"path": "/c/train.h5"}},
            run_dir="/runs/x",
        )
        assert (r.status, r.attempts, r.retries) == ("running", 1, 0)
        store.record_evaluation(r.id, epoch=1, step=10, metrics={"mean_r1": 1.5}, objective=1.5)
        store.record_evaluation(r.id, epoch=2, step=20, metrics={"mean_r1": 2.5}, objective=2.5)
        store.finish_run(r.id, "failed", error="RuntimeError: boom", wall_time_s=1800)
        # the retry continues the same row; a repeated evaluation replaces the old one
        r2 = store.start_run(
            study_name=name,
            cell="A1",
            kind="trial",
            optuna_study_name=f"{name}/A1",
            optuna_trial_number=0,
            seed=0,
            epochs_budget=5,
            cpus=2,
            gpu_fraction=0.25,
        )
        assert r2.id == r.id and r2.attempts == 2 and r2.retries == 1
        store.record_evaluation(r.id, epoch=2, step=20, metrics={"mean_r1": 2.6}, objective=2.6)
        done = store.finish_run(r.id, "pruned", epochs_done=2, wall_time_s=1800)
        assert done.status == "pruned" and done.error == "RuntimeError: boom"
        assert done.wall_time_s == pytest.approx(3600) and done.gpu_hours == pytest.approx(0.25)
        assert done.cpu_hours == pytest.approx(2.0) and done.epochs_saved == 3
        evals = store.evaluations(r.id)
        assert [(e.epoch, e.objective, e.attempt) for e in evals] == [(1, 1.5, 1), (2, 2.6, 2)]
        f = store.start_run(
            study_name=name,
            cell="A1",
            kind="final",
            optuna_study_name=f"{name}/A1",
            source_trial_number=0,
            seed=1,
            params={"loss.feat": 0.3},
        )
        store.finish_run(f.id, "complete", test_metrics={"i2t_r1": 50.0}, param_counts={"total": 3})
        assert store.find_final_run(f"{name}/A1", 1).test_metrics == {"i2t_r1": 50.0}
        assert [x.id for x in store.runs(name, kind="trial", status=["pruned"])] == [r.id]
        assert len(store.runs(name, cell="A1")) == 2
        assert set(store.evaluations_for_study(name)) == {r.id}
        cost = cost_summary(load_runs(store, name))["A1"]
        assert (
            cost["trials_pruned"] == 1
            and cost["final_complete"] == 1
            and cost["epochs_saved_by_pruning"] == 3
        )
        store.record_teacher_metrics(
            study_name=name,
            cell="A1",
            teacher_source="local-m",
            split="test",
            metrics={"i2t_r1": 70.0},
            teacher_params={"total": 100},
        )
        store.record_teacher_metrics(
            study_name=name, cell="A1", teacher_source="local-m", split="test", metrics={"i2t_r1": 71.0}
        )
        (tm,) = store.teacher_metrics(name)
        assert tm.metrics == {"i2t_r1": 71.0}
        assert store.delete_study_runs(name) == 2

    def test_frames_read_the_same_rows(self, store):
        """load_runs / load_curves on every backend: typed columns, JSON spread, the store left open."""
        from tinysiglip.results import load_curves, load_runs

        name = f"st_{uuid.uuid4().hex[:8]}"
        store.upsert_study(name, settings={})
        r = store.start_run(
            study_name=name,
            cell="A5",
            kind="trial",
            optuna_study_name=f"{name}/A5",
            optuna_trial_number=4,
            params={"loss.feat": 0.7, "student.name": "vit_tiny"},
            seed=0,
            epochs_budget=3,
            cpus=2,
        )
        store.record_evaluation(
            r.id, epoch=1, step=10, metrics={"mean_r1": 1.5, "i2t_r1": 2.0}, objective=1.5
        )
        store.finish_run(r.id, "pruned", epochs_done=1, wall_time_s=36, device="cpu")
        runs = load_runs(store, name)
        assert len(runs) == 1 and store.get_run(r.id) is not None
        row = runs.iloc[0]
        assert (row["run_id"], row["cell"], row["trial"], row["state"]) == (r.id, "A5", 4, "pruned")
        assert (row["params_loss.feat"], row["params_student.name"]) == (0.7, "vit_tiny")
        assert row["val_i2t_r1"] == 2.0 and row["cpu_hours"] == pytest.approx(0.02)
        assert row["started_at"].tzinfo is not None and row["node"] is None
        curves = load_curves(store, name)
        assert list(curves[["run_id", "epoch", "step", "objective", "val_mean_r1"]].iloc[0]) == [
            r.id,
            1,
            10,
            1.5,
            1.5,
        ]
        assert cost_summary(load_runs(store, name))["A5"]["epochs_saved_by_pruning"] == 2
        store.delete_study_runs(name)

    def test_optuna_shares_the_database(self, store):
        name = f"st_{uuid.uuid4().hex[:8]}/A1"
        study = optuna.create_study(storage=optuna_storage(store.url), study_name=name)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(optuna.load_study(study_name=name, storage=store.url).trials) == 2
        tables = set(store.table_names())
        assert (
            set(TABLE_NAMES) <= tables and {"studies", "trials", "version_info", "alembic_version"} <= tables
        )


def test_table_names_clear_of_optuna(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    optuna.create_study(storage=optuna_storage(url), study_name="s")
    from sqlalchemy import create_engine, inspect

    optuna_tables = set(inspect(create_engine(url)).get_table_names())
    assert optuna_tables and not optuna_tables & set(TABLE_NAMES)
    assert all(t.startswith("tsl_") for t in TABLE_NAMES)


def test_sqlite_is_wal(tmp_path):
    s = open_store(tmp_path / "w.db")
    with s.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def test_redact_url():
    assert (
        redact_url("postgresql+psycopg://alice:s3cret@db:5432/x")
        == "postgresql+psycopg://alice:***@db:5432/x"
    )
    assert "s3cret" not in redact_url("postgresql://alice:s3cret@db/x")
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert "pw" not in repr(open_store.__doc__ or "") and "s3cret" not in redact_url("weird://u:s3cret@h")


def test_run_keys_unique():
    assert run_key("trial", "s/A1", trial_number=3) == "trial:s/A1#3"
    assert run_key("final", "s/A1", seed=2) == "final:s/A1@seed2"
    with pytest.raises(ValueError):
        run_key("other", "s/A1")
