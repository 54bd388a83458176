"""Cost forecast: steps x seconds per step, earlier runs' step times, replayed pruning, stored and compared."""

from __future__ import annotations

import math

import pytest

from tinysiglip.sweep.forecast import packed_wall_seconds

STUDY = """\
study: fc
teachers: {t: {source: TEACHER}}
datasets: {d: {kind: local_shapes}}
defaults:
  student: {name: test_tiny}
  loss: {feat: 1.0, affinity: 0.0, contrast: 1.0}
  optim: {batch_size: 32}
grid:
  one: {description: searched}
  two: {description: searched too, loss: {contrast: 0.5}}
search_space: {params: {loss.feat: {type: float, low: 0.01, high: 1.0}}}
trials_per_cell: 3
budget: {epochs: 4, eval_every_epochs: 1}
objective: {metric: mean_r1, direction: maximize}
pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 2}
sampler: {type: random, seed: 3}
final: {seeds: [0, 1], epochs: 5}
resources: {cpus_per_trial: 1, gpus_per_trial: 0}
max_concurrent: 2
"""


def test_packed_wall_time_is_the_longest_first_makespan():
    assert packed_wall_seconds([4.0, 3.0, 2.0, 1.0], 2) == 5.0
    assert packed_wall_seconds([4.0, 3.0], 8) == 4.0
    assert packed_wall_seconds([], 2) == 0.0
    assert math.isinf(packed_wall_seconds([1.0], 0))


@pytest.fixture
def study(tmp_path, monkeypatch, tiny_caches, tiny_teacher_dir):
    """A two-cell study whose training caches are the tiny test caches (96 images: 3 steps of 32)."""
    from tinysiglip.sweep.caches import planned_cache_path
    from tinysiglip.sweep.study import load_study

    monkeypatch.setenv("TINYSIGLIP_CACHE_DIR", str(tmp_path / "caches"))
    path = tmp_path / "fc.yaml"
    path.write_text(STUDY.replace("TEACHER", str(tiny_teacher_dir("siglip"))))
    loaded = load_study(path, storage=f"sqlite:///{tmp_path / 'fc.db'}", run_dir=tmp_path / "run")
    for spec in loaded.caches_needed():
        target = planned_cache_path(spec, local=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(tiny_caches[spec.split])
    return loaded


def record_earlier_study(url: str, config: dict, *, seconds_per_step: float) -> None:
    """An earlier study in the same database: 4 trials of one cell, trial 3 clearly bad (the study's
    median pruner stops it after its 2 warm-up epochs: 2 of 16 trial-epochs saved), all of ``config``."""
    from tinysiglip.results import open_store

    curves = {
        0: [1.0, 2.0, 3.0, 4.0],
        1: [1.5, 2.5, 3.5, 4.5],
        2: [1.6, 2.6, 3.6, 4.6],
        3: [0.1, 0.1, 0.1, 0.1],
    }
    with open_store(url) as store:
        store.upsert_study("earlier", settings={"objective": {"metric": "mean_r1", "direction": "maximize"}})
        for number, values in curves.items():
            run = store.start_run(
                study_name="earlier",
                cell="one",
                kind="trial",
                optuna_study_name="earlier/one",
                optuna_trial_number=number,
                config=config,
                epochs_budget=4,
            )
            for epoch, value in enumerate(values, start=1):
                store.record_evaluation(run.id, epoch=epoch, step=3 * epoch, metrics={}, objective=value)
            store.finish_run(
                run.id, "complete", objective=values[-1], steps=12, wall_time_s=12 * seconds_per_step
            )


def test_forecast_measures_steps_when_the_database_has_none(study):
    from tinysiglip.sweep.forecast import forecast_study

    fc = forecast_study(study, num_cpus=4, num_gpus=0, measure_steps=2, echo=lambda *a, **k: None)
    assert [c.cell for c in fc.cells] == ["one", "two"]
    one = fc.cells[0]
    assert (one.steps_per_epoch, one.search_trials, one.search_epochs, one.final_runs, one.final_epochs) == (
        3,
        3,
        4,
        2,
        5,
    )
    assert one.trial_epochs == 3 * 4 + 2 * 5 and fc.trial_epochs == 2 * 22
    assert one.step_seconds > 0 and one.step_source.startswith("measured here")
    assert (
        fc.saved_fraction is None and fc.device_hours(pruned=True) is None and "unknown" in fc.pruning_source
    )
    # one CPU per trial: CPU-hours = Σ steps x seconds per step / 3600
    steps = sum(3 * (3 * 4) + 2 * (3 * 5) for _ in fc.cells)
    assert fc.device_hours() == pytest.approx(steps * one.step_seconds / 3600)
    assert fc.concurrency == 2  # max_concurrent caps the 4 CPUs


def test_forecast_uses_earlier_runs_and_their_replayed_pruning(study):
    from tinysiglip.results.store import open_store
    from tinysiglip.sweep.caches import planned_cache_path
    from tinysiglip.sweep.forecast import _cell_configs, forecast_study, store_forecast

    caches = {s.split: planned_cache_path(s, local=False) for s in study.caches_needed()}
    search_config, _ = _cell_configs(study, study.cells[0], caches)
    # runs record the config as the sweep gave it (partial): it must still match the resolved one
    given = {
        "student": {"name": "test_tiny"},
        "optim": {"batch_size": 32},
        "data": dict(search_config["data"]),
    }
    record_earlier_study(study.storage_url, given, seconds_per_step=0.5)
    fc = forecast_study(study, num_cpus=1, num_gpus=0, echo=lambda *a, **k: None)
    one, two = fc.cells
    assert one.step_seconds == pytest.approx(0.5) and one.step_source == "database: median of 4 run(s)"
    assert two.step_source == one.step_source  # loss weights do not change what a step costs
    assert fc.saved_fraction == pytest.approx(2 / 16)
    search_s = 3 * 12 * 0.5 * (1 - 2 / 16)
    final_s = 2 * 15 * 0.5
    assert one.seconds(fc.saved_fraction) == pytest.approx(search_s + final_s)
    # one run at a time: wall time = every run back to back
    assert fc.wall_seconds() == pytest.approx(sum(c.seconds() for c in fc.cells))
    store_forecast(study.storage_url, fc)
    with open_store(study.storage_url) as store:
        stored = store.latest_forecast("fc")
    assert stored.trial_epochs == fc.trial_epochs and stored.device_hours_pruned == pytest.approx(
        fc.device_hours(pruned=True)
    )
    assert stored.cells["one"]["step_seconds"] == pytest.approx(0.5) and stored.concurrency == 1
    # after the sweep: the report's forecast table puts the forecast next to what the runs used
    from tinysiglip.results.report_data import study_report_data
    from tinysiglip.results.tables import table_forecast

    with open_store(study.storage_url) as store:
        store.upsert_study("fc", settings={"objective": {"metric": "mean_r1", "direction": "maximize"}})
        for cell in ("one", "two"):
            run = store.start_run(
                study_name="fc",
                cell=cell,
                kind="trial",
                optuna_study_name=f"fc/{cell}",
                optuna_trial_number=0,
                cpus=1,
            )
            store.finish_run(
                run.id, "complete", epochs_done=4, steps=12, wall_time_s=3600 * fc.device_hours(pruned=True)
            )
    table = table_forecast(study_report_data(study.storage_url, "fc"))
    rows = {r["cell"]: r for r in table.rows}
    assert rows["one"]["epochs_forecast"] == 22 and rows["one"]["epochs_actual"] == 4
    assert rows["Total (study)"]["hours_actual"] == pytest.approx(2 * fc.device_hours(pruned=True), rel=1e-3)
    assert rows["Total (study)"]["ratio"] == pytest.approx(2.0, abs=0.01)
    assert "replay of earlier" in " ".join(table.notes) and "database: median of 4 run(s)" in table.markdown()


def test_old_database_without_the_forecast_table(tmp_path):
    """A database made before forecasts existed reads as 'no forecast'; opening it to write adds the table."""
    import sqlite3

    from tinysiglip.results.store import open_existing, open_store

    path = tmp_path / "old.db"
    open_store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE tsl_forecasts")
    with open_existing(path) as store:
        assert store.latest_forecast("any") is None
    with open_store(path) as store:
        store.record_forecast("any", trial_epochs=3)
        assert store.latest_forecast("any").trial_epochs == 3


def test_dry_run_forecast_command_prints_and_stores(study, capsys):
    from tinysiglip.cli import main
    from tinysiglip.results.store import open_store
    from tinysiglip.sweep.caches import planned_cache_path
    from tinysiglip.sweep.forecast import _cell_configs

    caches = {s.split: planned_cache_path(s, local=False) for s in study.caches_needed()}
    record_earlier_study(
        study.storage_url, _cell_configs(study, study.cells[0], caches)[0], seconds_per_step=0.25
    )
    argv = [
        str(study.path),
        "--storage",
        study.storage_url,
        "--run-dir",
        str(study.run_dir),
        "--num-cpus",
        "2",
    ]
    assert main(["sweep", *argv, "--dry-run", "--forecast"]) == 0
    out = capsys.readouterr().out
    assert "plan:" in out and "forecast for fc" in out and "total: 44 trial-epochs" in out
    assert "12.5% of search trial-epochs saved" in out and "stored in" in out
    assert not (study.run_dir).exists()  # a dry run runs nothing
    assert main(["forecast", *argv]) == 0  # the subcommand is the same as --dry-run --forecast
    assert "forecast for fc" in capsys.readouterr().out
    with open_store(study.storage_url) as store:
        assert store.latest_forecast("fc").id == 2 and store.runs("fc") == []
