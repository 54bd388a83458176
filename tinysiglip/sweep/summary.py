"""What a sweep leaves for its caller: per cell, the best trial, how trials ended, pruning savings and
cost; printed as a table at the end of ``python -m tinysiglip.sweep``."""

from __future__ import annotations

from dataclasses import dataclass, field

from tinysiglip.results.frames import cost_summary, load_runs
from tinysiglip.results.store import StudyStore

__all__ = ["SweepSummary", "failed_run_lines", "summarize", "summary_lines"]


@dataclass
class SweepSummary:
    study: str
    storage_url: str
    cells: dict[str, dict]
    wall_time_s: float
    ray_start_s: float
    search_s: float
    final_s: float
    failed_runs: list[str] = field(default_factory=list)  # run keys of runs that failed every attempt

    @property
    def ok(self) -> bool:
        """False when any trial or final run failed for good (the sweep then exits non-zero)."""
        return not self.failed_runs


def failed_run_lines(
    store: StudyStore, study_name: str, skip: set[str] | frozenset[str] = frozenset()
) -> tuple[list[str], list[str]]:
    """(run keys, printable lines) of the study's runs that failed every attempt, with where and why;
    ``skip``: failed trials that ``--retry-failed`` ran again."""
    keys, lines = [], []
    for r in store.runs(study_name, status="failed"):
        if r.run_key in skip:
            continue
        keys.append(r.run_key)
        where = getattr(r, "node_host", None)
        error = [ln.strip() for ln in (r.error or "").splitlines() if ln.strip()]
        lines.append(
            f"  FAILED {r.run_key} after {r.attempts} attempt(s)"
            + (f" on {where}" if where else "")
            + (f": {error[-1][:300]}" if error else "")
        )
    return keys, lines


def summarize(study, store: StudyStore, ostudies: dict) -> dict[str, dict]:
    import optuna

    cost = cost_summary(load_runs(store, study.name))
    out = {}
    for c in study.cells:
        trials = ostudies[c.name].get_trials(deepcopy=False)
        states = [t.state for t in trials]
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = ostudies[c.name].best_trial if complete else None
        k = cost.get(c.name, {})
        out[c.name] = {
            "optuna_study": c.study_name,
            "best_value": None if best is None else best.value,
            "best_trial": None if best is None else best.number,
            "best_params": None if best is None else dict(best.params),
            "complete": states.count(optuna.trial.TrialState.COMPLETE),
            "pruned": states.count(optuna.trial.TrialState.PRUNED),
            "failed": states.count(optuna.trial.TrialState.FAIL),
            "running": states.count(optuna.trial.TrialState.RUNNING),
            "epochs_saved_by_pruning": k.get("epochs_saved_by_pruning", 0),
            "final_complete": k.get("final_complete", 0),
            "final_failed": k.get("final_failed", 0),
            "cpu_hours": k.get("cpu_hours", 0.0),
            "gpu_hours": k.get("gpu_hours", 0.0),
        }
    return out


def summary_lines(summary: dict[str, dict], study) -> list[str]:
    m = study.objective.metric
    lines = [
        "",
        f"{'cell':<8} {'best ' + m:>14} {'complete':>8} {'pruned':>6} {'failed':>6} {'epochs saved':>12} "
        f"{'finals':>6}",
    ]
    tot_saved = tot_pruned = 0
    for name, s in summary.items():
        best = "-" if s["best_value"] is None else f"{s['best_value']:.3f}"
        lines.append(
            f"{name:<8} {best:>14} {s['complete']:>8} {s['pruned']:>6} {s['failed']:>6} "
            f"{s['epochs_saved_by_pruning']:>12} {s['final_complete']:>6}"
        )
        tot_saved += s["epochs_saved_by_pruning"]
        tot_pruned += s["pruned"]
    lines.append(f"pruned {tot_pruned} trial(s), saving {tot_saved} trial-epoch(s)")
    return lines
