"""Pruner replay: hand-made learning curves with known outcomes, through the real Optuna pruners."""

from __future__ import annotations

import pytest

from tinysiglip.results.replay import (
    RecordedTrial,
    ReplayError,
    parse_pruner_spec,
    replay_pruner,
    replay_study,
    replay_text,
)

MEDIAN = {
    "type": "median",
    "n_startup_trials": 2,
    "n_warmup_steps": 2,
    "interval_steps": 1,
    "n_min_trials": 1,
}
NONE = {"type": "none"}


def write_study(
    url: str, curves: dict[int, list[float]], *, cell: str = "A1", states=None, direction="maximize"
):
    """One cell's trials recorded one after another (trial number = key), as the sweep records them."""
    from tinysiglip.results import open_store

    states = states or {}
    with open_store(url) as store:
        store.upsert_study(
            "toy",
            settings={"objective": {"metric": "mean_r1", "direction": direction}, "pruner": MEDIAN},
        )
        for number, values in curves.items():
            run = store.start_run(
                study_name="toy",
                cell=cell,
                kind="trial",
                optuna_study_name=f"toy/{cell}",
                optuna_trial_number=number,
                objective_metric="mean_r1",
                objective_direction=direction,
                epochs_budget=4,
            )
            for epoch, value in enumerate(values, start=1):
                store.record_evaluation(run.id, epoch=epoch, step=10 * epoch, metrics={}, objective=value)
            store.finish_run(run.id, states.get(number, "complete"), objective=values[-1])


def test_none_saves_nothing_and_median_prunes_the_clearly_bad_trial_after_warm_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    good = {n: [10.0 + n, 20.0 + n, 30.0 + n, 40.0 + n] for n in range(3)}
    write_study(url, {**good, 3: [1.0, 1.0, 1.0, 1.0], 4: [11.0, 21.0, 31.0, 45.0]})
    result = replay_study(url, "toy", {"none": NONE, "median": MEDIAN})
    none, median = result.pruner("none"), result.pruner("median")
    assert (none.epochs_recorded, none.epochs_used, none.epochs_saved, none.trials_pruned) == (20, 20, 0, 0)
    assert none.best_survived == 1 and none.cells[0].regret("maximize") == 0
    # trial 3 is below the median of the complete trials from epoch 2 on (warm-up: 2 epochs): pruned there
    cell = median.cells[0]
    assert cell.pruned == (3,) and median.epochs_used == 18 and median.epochs_saved == 2
    assert cell.best_trial == 4 and cell.best_survives and cell.regret("maximize") == 0
    assert result.order == {"A1": "recorded"} and result.left_out == {}


def test_a_late_bloomer_pruned_early_is_reported_with_its_regret(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    curves = {0: [10.0, 20.0, 30.0, 40.0], 1: [12.0, 22.0, 32.0, 42.0], 2: [1.0, 2.0, 3.0, 50.0]}
    write_study(url, curves)
    median = replay_study(url, "toy", {"median": {**MEDIAN, "n_warmup_steps": 1}}).pruner("median")
    cell = median.cells[0]
    assert cell.pruned == (2,) and median.epochs_saved == 3  # stopped after its first epoch
    assert cell.best_trial == 2 and not cell.best_survives
    assert cell.survivor_trial == 1 and cell.regret("maximize") == pytest.approx(8.0)


def test_minimised_objective_regret_is_positive_when_the_best_is_lost(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    curves = {0: [5.0, 4.0, 3.0, 2.0], 1: [5.0, 4.0, 3.0, 1.5], 2: [9.0, 9.0, 9.0, 0.5]}
    write_study(url, curves, direction="minimize")
    result = replay_study(url, "toy", {"median": {**MEDIAN, "n_warmup_steps": 1}})
    cell = result.pruner("median").cells[0]
    assert cell.pruned == (2,) and cell.regret("minimize") == pytest.approx(1.0)


def test_pruned_and_failed_trials_are_left_out_and_counted(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    write_study(url, {0: [1.0, 2.0], 1: [0.5], 2: [3.0, 4.0], 3: [0.1]}, states={1: "pruned", 3: "failed"})
    result = replay_study(url, "toy", {"none": NONE})
    assert result.left_out == {"pruned": 1, "failed": 1}
    assert result.pruner("none").cells[0].trials == 2
    text = replay_text(result)
    assert "1 pruned" in text and "1 failed" in text and "none" in text


def _trial(number: int, values: list[float], times: list[float]) -> RecordedTrial:
    return RecordedTrial(
        "A1", number, number + 1, values[-1], tuple(range(1, len(values) + 1)), tuple(values), tuple(times)
    )


def test_trials_that_ran_side_by_side_are_replayed_interleaved():
    """Trial 1's first epoch was evaluated while trial 0 was still running: the median pruner had no
    complete trial to compare with then, so trial 1 could only be pruned at its second evaluation.
    Replayed one trial after the other, it would have been pruned one epoch earlier."""
    settings = {**MEDIAN, "n_startup_trials": 1, "n_warmup_steps": 0}
    side_by_side = [_trial(0, [10.0, 20.0], [1.0, 3.0]), _trial(1, [1.0, 2.0], [2.0, 4.0])]
    one_after_other = [_trial(0, [10.0, 20.0], [1.0, 2.0]), _trial(1, [1.0, 2.0], [3.0, 4.0])]
    replay, order = replay_pruner(side_by_side, settings, direction="maximize")
    assert order == {"A1": "recorded"} and replay.cells[0].pruned == (1,) and replay.epochs_saved == 0
    replay, _ = replay_pruner(one_after_other, settings, direction="maximize")
    assert replay.cells[0].pruned == (1,) and replay.epochs_saved == 1


def test_pruner_specs_are_validated_with_the_study_file_defaults():
    label, settings = parse_pruner_spec("median:n_warmup_steps=3")
    assert label == "median:n_warmup_steps=3"
    assert settings == {
        "type": "median",
        "n_startup_trials": 5,
        "n_warmup_steps": 3,
        "interval_steps": 1,
        "n_min_trials": 1,
    }
    with pytest.raises(ReplayError, match="unknown pruner 'bogus'"):
        parse_pruner_spec("bogus")
    with pytest.raises(ReplayError, match="n_warmup"):
        parse_pruner_spec("median:n_warmup=1")
    with pytest.raises(ReplayError, match="KEY=VALUE"):
        parse_pruner_spec("median:3")


def test_prune_replay_command_prints_every_pruner(tmp_path, capsys):
    from tinysiglip.cli import main

    url = f"sqlite:///{tmp_path / 'study.db'}"
    write_study(url, {0: [1.0, 2.0, 3.0, 4.0], 1: [2.0, 3.0, 4.0, 5.0], 2: [0.0, 0.0, 0.0, 0.0]})
    assert main(["prune-replay", "--storage", url]) == 0
    out = capsys.readouterr().out
    for label in ("none", "median", "percentile", "successive_halving", "hyperband"):
        assert f"\n{label} " in out
    assert "pruner replay of toy: 3 complete trial(s) in 1 cell(s), 12 trial-epochs with no pruning" in out
    assert main(["prune-replay", "--storage", url, "--study", "nope"]) == 2


def test_dashboard_page_data_and_figures(tmp_path):
    from tinysiglip.results.dashboard_data import pruner_replay
    from tinysiglip.results.plots import draw_pruner_replay
    from tinysiglip.results.report_data import study_report_data

    url = f"sqlite:///{tmp_path / 'study.db'}"
    write_study(
        url,
        {0: [1.0, 2.0, 3.0, 4.0], 1: [2.0, 3.0, 4.0, 5.0], 2: [0.0, 0.0, 0.0, 0.0], 3: [0.5]},
        states={3: "pruned"},
    )
    d = pruner_replay(study_report_data(url, "toy"))
    by_label = {p["label"]: p for p in d["pruners"]}
    assert by_label["none"]["epochs_used"] == 12 and by_label["none"]["epochs_saved"] == 0
    # the study's own median (2 start-up trials, 2 warm-up epochs) stops trial 2 at epoch 2
    assert by_label["median"]["cells"][0]["pruned"] == [2] and by_label["median"]["epochs_saved"] == 2
    assert "Not replayed (their curves stop early): 1 pruned." in d["note"]
    figures = draw_pruner_replay(d)
    assert [title for title, _ in figures] == ["Pruner replay", "Pruner replay per cell"]
    assert list(figures[0][1].data[0].y) == [p["epochs_used"] for p in d["pruners"]]
    assert len(figures[1][1].data) == len(d["pruners"])


def test_with_pruned_trials_a_pruner_that_lets_one_run_on_pays_its_budget(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    write_study(url, {0: [1.0, 2.0], 1: [0.5], 2: [3.0, 4.0], 3: [0.1]}, states={1: "pruned", 3: "failed"})
    quick = {**MEDIAN, "n_startup_trials": 1, "n_warmup_steps": 0}
    result = replay_study(url, "toy", {"none": NONE, "median": quick}, include_pruned=True)
    assert result.left_out == {"failed": 1}
    none, median = result.pruner("none"), result.pruner("median")
    # no pruning: trial 1 runs its whole 4-epoch budget; its outcome is unknown, so trial 2 stays the best
    assert none.epochs_recorded == 2 + 4 + 2 and none.epochs_used == 8 and none.trials_ran_on == 1
    assert none.cells[0].ran_on == (1,) and none.cells[0].best_trial == 2 and none.cells[0].best_survives
    # the median of trial 0 at epoch 1 is 1.0: trial 1 (0.5) is stopped there, as the study did
    assert median.cells[0].pruned == (1,) and median.epochs_used == 2 + 1 + 2 and median.epochs_saved == 3
    assert median.trials_ran_on == 0
    text = replay_text(result)
    assert "complete and pruned trial(s)" in text and "ran on" in text


def test_wilcoxon_prunes_a_trial_worse_than_the_best_at_every_step(tmp_path):
    """Optuna's WilcoxonPruner (scipy's signed-rank test against the best trial's curve) is replayed too."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    write_study(url, {0: [10.0 * e for e in range(1, 9)], 1: [float(e) for e in range(1, 9)]})
    result = replay_study(url, "toy", dict([("none", NONE), parse_pruner_spec("wilcoxon")]))
    wilcoxon = result.pruner("wilcoxon")
    assert wilcoxon.cells[0].pruned == (1,) and wilcoxon.epochs_saved > 0
    assert wilcoxon.cells[0].best_survives and result.pruner("none").epochs_saved == 0
