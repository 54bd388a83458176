"""The final phase's plan: each cell's best COMPLETE trial, re-run once per final seed on the test split.

A final run already complete in the database (from an earlier, interrupted sweep) is not queued again,
unless the cell's best trial changed since (a resumed search found a better one): that final run is
marked ``superseded`` (kept, not deleted) and redone from the true best.
"""

from __future__ import annotations

from tinysiglip.sweep.state import SweepState

__all__ = ["queue_final_runs"]


def queue_final_runs(state: SweepState) -> int:
    """Append the final runs still to do to ``state.final_queue``; returns the queue's length."""
    import optuna

    study, store = state.study, state.store
    for c in study.cells:
        ostudy = state.optuna[c.name]
        complete = [
            t for t in ostudy.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
        ]
        if not complete:
            state.echo(f"  [{c.name}] no COMPLETE trial: no final runs")
            continue
        best = ostudy.best_trial
        for seed in study.final_seeds:
            rec = store.find_final_run(c.study_name, seed)
            if rec is not None and rec.source_trial_number not in (None, best.number):
                store.supersede_run(
                    rec.id,
                    f"superseded: trial {best.number} is now the best (this run re-ran trial "
                    f"{rec.source_trial_number})",
                )
                state.echo(
                    f"  [{c.name}] final seed {seed}: best trial is now {best.number} (was "
                    f"{rec.source_trial_number}): redone"
                )
                rec = None
            if rec is not None and rec.status == "complete":
                continue
            cfg = state.cell_config(c, best.params, seed=seed, final=True)
            state.final_queue.append(
                {
                    "kind": "final",
                    "study": study.name,
                    "cell": c.name,
                    "optuna_study": c.study_name,
                    "source_trial": best.number,
                    "params": dict(best.params),
                    "seed": int(seed),
                    "run_dir": str(state.run_dir / "final" / c.name / f"seed{seed}"),
                    "train_config": cfg,
                    "train_fn": state.train_fn,
                }
            )
    return len(state.final_queue)
