"""The sweep driver: Ray Tune over a study's grid, one Optuna study per cell, the study database.

Flow of :func:`run_sweep`:

1. check resources (a study asking for GPUs on a machine without one stops here unless ``--local``),
   open the study database (:mod:`tinysiglip.store`) and Optuna's ``RDBStorage`` on the same URL, and
   refuse to touch a study that already has runs unless ``resume``;
2. make sure every cache exists (``tinysiglip.sweep.caches.ensure_study_caches``; built once, before any
   trial) and record the teacher's own test metrics per cell;
3. search: Ray Tune runs :func:`tsl_trainable` for every trial; :class:`~.searcher.CellSearcher` asks
   the cell's Optuna study (round-robin over cells) and tells it the outcome,
   :class:`~.scheduler.OptunaPruningScheduler` reports every evaluation to Optuna and stops (PRUNED)
   what the cell's pruner prunes; a failing trial is retried from its checkpoint by Ray
   (``FailureConfig(max_failures)``) and recorded failed (with its error) in between;
4. final runs: each cell's best COMPLETE trial re-run with every final seed, evaluated on the test split.

The driver process is the only writer of the database; workers only call ``tune.report``. The database
is the state that survives a restart: with ``resume`` a trial that a killed driver left RUNNING is
re-attached (same Optuna trial, same ``tsl_runs`` row, same run dir, so it resumes from its
checkpoint), finished trials and complete final runs are skipped.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinysiglip.errors import TinySigLIPError
from tinysiglip.results.store import StudyStore, open_store, optuna_storage, redact_url

__all__ = ["SweepError", "SweepOptions", "SweepState", "run_sweep", "tsl_trainable"]

DEFAULT_TRAIN_FN = "tinysiglip.train:run_training"


class SweepError(TinySigLIPError):
    """The sweep cannot start or continue (the message says what to do)."""


class TrialDiverged(RuntimeError):
    """run_training returned status "diverged" (NaN loss): a failure Ray retries from the checkpoint."""


@dataclass
class SweepOptions:
    resume: bool = False
    max_concurrent: int | None = None
    dashboard: bool = False
    trials_per_cell: int | None = None  # small-budget overrides (tests, smoke runs)
    epochs: int | None = None
    seeds: list[int] | None = None
    num_cpus: int | None = None
    skip_final: bool = False
    train_fn: str | Callable | None = None  # "module:function" importable by Ray workers
    log_to_driver: bool = False
    echo: Callable[[str], None] = field(default=print)


# ------------------------------------------------------------------------------------------ trainable


def _import_fn(path: str) -> Callable:
    module, _, name = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _fn_path(fn: str | Callable | None) -> str:
    if fn is None:
        return DEFAULT_TRAIN_FN
    if isinstance(fn, str):
        return fn
    return f"{fn.__module__}:{fn.__qualname__}"


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def tsl_trainable(config: dict) -> None:
    """The one Ray Tune trainable: run the training function for one trial or final run.

    Every evaluation goes to ``tune.report`` (the driver records it and decides on pruning); the final
    result is reported once more with ``tsl_event="final"``. A diverged run raises, so Ray retries it
    (from ``run_dir/checkpoint``) up to the study's ``max_failures``."""
    from ray import tune

    spec = config["tsl"]
    train_fn = _import_fn(spec["train_fn"])

    def report(event: dict) -> None:
        metrics = event.get("metrics") or {}
        tune.report(
            {
                "tsl_event": "eval",
                "epoch": int(event.get("epoch", 0)),
                "step": int(event.get("step", 0)),
                "objective": _finite(event.get("objective")),
                "tsl_payload": json.dumps(
                    {
                        "epoch": event.get("epoch"),
                        "step": event.get("step"),
                        "metrics": metrics,
                        "objective": _finite(event.get("objective")),
                    },
                    default=str,
                ),
            }
        )
        return None

    result = train_fn(spec["train_config"], run_dir=spec["run_dir"], report=report)
    if result.get("status") == "diverged":
        raise TrialDiverged(result.get("error") or "training diverged (non-finite loss)")
    if result.get("status") not in (None, "complete", "stopped"):
        raise RuntimeError(f"training ended with status {result.get('status')!r}: {result.get('error')}")
    payload = {k: v for k, v in result.items() if k not in ("config",)}
    tune.report({"tsl_event": "final", "tsl_payload": json.dumps(payload, default=str)})


# -------------------------------------------------------------------------------------------- state


@dataclass
class Active:
    spec: dict
    run_id: int
    kind: str
    cell: str
    optuna_trial: Any = None  # optuna.Trial (search phase)
    number: int | None = None
    seed: int | None = None
    ray_trial: Any = None
    attempt_started: float | None = None
    restart_pending: bool = False
    done: bool = False
    last_eval: dict | None = None
    final: dict | None = None


class SweepState:
    """Shared by the searcher, the scheduler and the callback (all run in the driver's Tune loop)."""

    def __init__(
        self,
        *,
        study,
        store: StudyStore,
        optuna_studies: dict,
        caches: dict,
        options: SweepOptions,
        fingerprints: dict,
        run_dir: Path,
        gpu_fraction: float,
        cpus: float,
        train_fn: str,
    ):
        self.study = study
        self.store = store
        self.optuna = optuna_studies
        self.caches = caches
        self.options = options
        self.fingerprints = fingerprints
        self.run_dir = run_dir
        self.gpu_fraction = gpu_fraction
        self.cpus = cpus
        self.train_fn = train_fn
        self.echo = options.echo
        self.active: dict[str, Active] = {}
        self.ray_trials: dict[str, Any] = {}
        self.reattach: list[tuple[Any, Any]] = []  # (cell, FrozenTrial) RUNNING in storage
        self.new_left: dict[str, int] = {}
        self.final_queue: list[dict] = []
        self._rr = 0
        self.counts = {"complete": 0, "pruned": 0, "failed": 0}

    # ------------------------------------------------------------------------------ configs
    def cell_config(self, cell, params: dict, *, seed: int | None, final: bool) -> dict:
        cfg = cell.apply(dict(params), seed=seed, final=final)
        data = cfg.setdefault("data", {})
        for split in ("train", "val", "test"):
            path = self.caches.get((cell.teacher, cell.dataset, split))
            if split == "test" and not final:
                continue
            if path is not None:
                data[f"{split}_cache"] = str(path)
        train = cfg.setdefault("train", {})
        if self.options.epochs is not None:
            train["epochs"] = int(self.options.epochs)
        if self.study.local:
            train["device"] = "cpu"
        if self.gpu_fraction and self.gpu_fraction < 1:
            train["gpu_memory_fraction"] = float(self.gpu_fraction)
        if not self.gpu_fraction and not train.get("threads"):
            train["threads"] = max(1, int(self.cpus))
        cfg.setdefault(
            "objective", {"metric": self.study.objective.metric, "direction": self.study.objective.direction}
        )
        return cfg

    def _cell_fps(self, cell, final: bool) -> dict:
        out = {}
        for split in ("train", "val", "test") if final else ("train", "val"):
            key = (cell.teacher, cell.dataset, split)
            if key in self.fingerprints:
                out[split] = self.fingerprints[key]
        return out

    def _epochs_budget(self, cfg: dict) -> int | None:
        try:
            return int(cfg["train"]["epochs"])
        except (KeyError, TypeError, ValueError):
            return None

    # ------------------------------------------------------------------------------ search phase
    def exhausted(self, phase: str) -> bool:
        if phase == "search":
            return not self.reattach and not any(self.new_left.values())
        return not self.final_queue

    def next_spec(self, trial_id: str, phase: str) -> dict | None:
        if phase == "final":
            if not self.final_queue:
                return None
            spec = self.final_queue.pop(0)
            return self._start(trial_id, spec)
        import optuna

        if self.reattach:
            cell, frozen = self.reattach.pop(0)
            ostudy = self.optuna[cell.name]
            trial = optuna.trial.Trial(ostudy, frozen._trial_id)
            params = dict(frozen.params)
        else:
            cells = [c for c in self.study.cells if self.new_left.get(c.name, 0) > 0]
            if not cells:
                return None
            cell = cells[self._rr % len(cells)]
            self._rr += 1
            self.new_left[cell.name] -= 1
            ostudy = self.optuna[cell.name]
            trial = ostudy.ask(fixed_distributions=dict(cell.search_space))
            params = dict(trial.params)
        cfg = self.cell_config(cell, params, seed=None, final=False)
        spec = {
            "kind": "trial",
            "study": self.study.name,
            "cell": cell.name,
            "optuna_study": cell.study_name,
            "number": trial.number,
            "optuna_trial_id": trial._trial_id,
            "params": params,
            "seed": int(cfg.get("train", {}).get("seed", 0) or 0),
            "run_dir": str(self.run_dir / "trials" / cell.name / str(trial.number)),
            "train_config": cfg,
            "train_fn": self.train_fn,
        }
        return self._start(trial_id, spec, optuna_trial=trial)

    def _start(self, trial_id: str, spec: dict, optuna_trial=None) -> dict:
        cell = self.study.cell(spec["cell"])
        rec = self.store.start_run(
            study_name=self.study.name,
            cell=spec["cell"],
            kind=spec["kind"],
            optuna_study_name=spec["optuna_study"],
            optuna_trial_number=spec.get("number") if spec["kind"] == "trial" else None,
            optuna_trial_id=spec.get("optuna_trial_id"),
            source_trial_number=spec.get("source_trial"),
            config=spec["train_config"],
            params=spec["params"],
            seed=spec["seed"],
            objective_metric=self.study.objective.metric,
            objective_direction=self.study.objective.direction,
            epochs_budget=self._epochs_budget(spec["train_config"]),
            cpus=self.cpus,
            gpu_fraction=self.gpu_fraction,
            cache_fingerprints=self._cell_fps(cell, spec["kind"] == "final"),
            run_dir=spec["run_dir"],
        )
        self.active[trial_id] = Active(
            spec=spec,
            run_id=rec.id,
            kind=spec["kind"],
            cell=spec["cell"],
            optuna_trial=optuna_trial,
            number=spec.get("number"),
            seed=spec["seed"],
            ray_trial=self.ray_trials.get(trial_id),
        )
        return spec

    # ------------------------------------------------------------------------------ events
    def register_ray_trial(self, trial) -> None:
        self.ray_trials[trial.trial_id] = trial
        if trial.trial_id in self.active:
            self.active[trial.trial_id].ray_trial = trial

    def attempt_started(self, trial_id: str) -> None:
        a = self.active.get(trial_id)
        if a is None:
            return
        if a.restart_pending:
            self._restart(a)
        if a.attempt_started is None:
            a.attempt_started = time.time()

    def _attempt_seconds(self, a: Active) -> float:
        if a.attempt_started is None:
            return 0.0
        s = time.time() - a.attempt_started
        a.attempt_started = None
        return s

    def _restart(self, a: Active) -> None:
        s = a.spec
        self.store.start_run(
            study_name=self.study.name,
            cell=s["cell"],
            kind=s["kind"],
            optuna_study_name=s["optuna_study"],
            optuna_trial_number=s.get("number") if s["kind"] == "trial" else None,
            seed=s["seed"],
            objective_metric=self.study.objective.metric,
            objective_direction=self.study.objective.direction,
            epochs_budget=self._epochs_budget(s["train_config"]),
            cpus=self.cpus,
            gpu_fraction=self.gpu_fraction,
        )
        a.restart_pending = False
        a.attempt_started = time.time()

    def attempt_failed(self, trial_id: str, error: str) -> None:
        """A failed attempt that Ray retries from the checkpoint: recorded failed, then running again."""
        a = self.active.get(trial_id)
        if a is None:
            return
        self.store.finish_run(a.run_id, "failed", error=error, wall_time_s=self._attempt_seconds(a))
        a.restart_pending = True
        a.attempt_started = time.time()
        self.echo(
            f"  [{a.cell}] {self._label(a)}: attempt failed, retrying from checkpoint: {_last_line(error)}"
        )

    def on_eval(self, trial_id: str, result: dict) -> bool:
        """Record one evaluation; for a search trial report it to Optuna and return True to prune."""
        a = self.active.get(trial_id)
        if a is None or a.done:
            return False
        if a.restart_pending:
            self._restart(a)
        payload = json.loads(result.get("tsl_payload") or "{}")
        epoch = int(payload.get("epoch") or result.get("epoch") or 0)
        step = int(payload.get("step") or result.get("step") or 0)
        objective = _finite(payload.get("objective"))
        a.last_eval = payload
        self.store.record_evaluation(
            a.run_id, epoch=epoch, step=step, metrics=payload.get("metrics") or {}, objective=objective
        )
        if a.kind != "trial" or a.optuna_trial is None or objective is None:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a step re-reported after a resume is ignored by Optuna
            a.optuna_trial.report(objective, step=epoch)
        budget = self._epochs_budget(a.spec.get("train_config") or {})
        if budget is not None and epoch >= budget:
            return False  # its last evaluation: pruning now would save nothing and lose a complete value
        if not a.optuna_trial.should_prune():
            return False
        import optuna

        self.optuna[a.cell].tell(a.optuna_trial, state=optuna.trial.TrialState.PRUNED)
        a.done = True
        rec = self.store.finish_run(
            a.run_id,
            "pruned",
            objective=objective,
            epochs_done=epoch,
            steps=step,
            wall_time_s=self._attempt_seconds(a),
        )
        self.counts["pruned"] += 1
        budget = rec.epochs_budget or 0
        self.echo(
            f"  [{a.cell}] {self._label(a)}: PRUNED at epoch {epoch}/{budget} "
            f"{self.study.objective.metric}={objective:.3f}"
        )
        return True

    def on_final(self, trial_id: str, result: dict) -> None:
        a = self.active.get(trial_id)
        if a is not None:
            a.final = json.loads(result.get("tsl_payload") or "{}")

    def on_trial_end(self, trial_id: str, *, error: bool) -> None:
        """Called once per Ray trial when it ends (completed, stopped by the pruner, or errored for good)."""
        import optuna

        a = self.active.get(trial_id)
        if a is None or a.done:
            return
        a.done = True
        seconds = self._attempt_seconds(a)
        res = a.final or {}
        err_text = None
        if error:
            err_text = _trial_error(a.ray_trial or self.ray_trials.get(trial_id)) or "trial failed"
        elif not a.final:
            err_text = "the trial ended without a final result"
        objective = None
        for ev in res.get("val_history") or []:  # backfill evaluations a killed driver never recorded
            self._backfill(a, ev)
        if err_text is None:
            hist = res.get("val_history") or []
            objective = _finite(hist[-1].get("objective")) if hist else None
            if objective is None and a.last_eval:
                objective = _finite(a.last_eval.get("objective"))
            if objective is None and a.kind == "trial":
                err_text = "no finite objective was reported"
        common = dict(
            epochs_done=res.get("epochs_done"),
            steps=res.get("steps"),
            val_metrics=res.get("val_metrics"),
            param_counts=res.get("param_counts"),
            device=res.get("device"),
            wall_time_s=seconds,
        )
        if a.kind == "trial":
            if err_text is None:
                self.optuna[a.cell].tell(a.optuna_trial, objective)
                self.store.finish_run(a.run_id, "complete", objective=objective, **common)
                self.counts["complete"] += 1
                self.echo(
                    f"  [{a.cell}] {self._label(a)}: COMPLETE {self.study.objective.metric}={objective:.3f}"
                    f" ({seconds:.0f}s)"
                )
            else:
                self.optuna[a.cell].tell(a.optuna_trial, state=optuna.trial.TrialState.FAIL)
                self.store.finish_run(a.run_id, "failed", error=err_text, **common)
                self.counts["failed"] += 1
                self.echo(f"  [{a.cell}] {self._label(a)}: FAILED: {_last_line(err_text)}")
        else:
            if err_text is None:
                self.store.finish_run(
                    a.run_id, "complete", objective=objective, test_metrics=res.get("test_metrics"), **common
                )
                tm = res.get("test_metrics") or {}
                shown = ", ".join(f"{k}={v:.2f}" for k, v in tm.items() if isinstance(v, (int, float)))
                self.echo(f"  [{a.cell}] final seed {a.seed}: COMPLETE test {shown or '(no test metrics)'}")
            else:
                self.store.finish_run(a.run_id, "failed", error=err_text, **common)
                self.echo(f"  [{a.cell}] final seed {a.seed}: FAILED: {_last_line(err_text)}")

    def _backfill(self, a: Active, ev: dict) -> None:
        try:
            epoch, step = int(ev.get("epoch") or 0), int(ev.get("step") or 0)
        except (TypeError, ValueError):
            return
        objective = _finite(ev.get("objective"))
        self.store.record_evaluation(
            a.run_id, epoch=epoch, step=step, metrics=ev.get("metrics") or {}, objective=objective
        )
        if a.kind == "trial" and a.optuna_trial is not None and objective is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a.optuna_trial.report(objective, step=epoch)

    def _label(self, a: Active) -> str:
        return f"trial {a.number}" if a.kind == "trial" else f"final seed {a.seed}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _trial_error(trial) -> str | None:
    """The text of the trial's last failure (Ray appends every failure to the trial's error file)."""
    if trial is None:
        return None
    try:
        path = trial.error_file
        if path and os.path.exists(path):
            text = Path(path).read_text(errors="replace")
            marker = text.rfind("Failure #")
            return (text[marker:] if marker >= 0 else text)[-8000:]
    except Exception:
        pass
    try:
        err = trial.get_error()
        return None if err is None else str(err)[-8000:]
    except Exception:
        return None


def _make_callback(state: SweepState):
    from ray.tune import Callback

    class RecorderCallback(_NoPickleState, Callback):
        def __init__(self, state):
            super().__init__()
            self.state = state

        def on_trial_start(self, iteration, trials, trial, **info):
            self.state.attempt_started(trial.trial_id)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.state.attempt_failed(trial.trial_id, _trial_error(trial) or "trial failed (retrying)")

    return RecorderCallback(state)


class _NoPickleState:
    """Tune pickles its searcher, scheduler and callbacks with the experiment; the live sweep state
    (database engine, Optuna studies) is not saved with it: the database is the state that survives."""

    def __getstate__(self):
        d = dict(self.__dict__)
        d["state"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)


# ------------------------------------------------------------------------------------------ helpers


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def check_resources(study, *, gpus_available: int | None = None) -> None:
    gpus = float(study.resources.gpus_per_trial or 0)
    if study.local or gpus <= 0:
        return
    n = _gpu_count() if gpus_available is None else gpus_available
    if n <= 0:
        raise SweepError(
            f"{study.path}: resources.gpus_per_trial={gpus:g} but this machine has no GPU "
            "(torch.cuda.is_available() is False). Run it on a GPU machine, set resources.gpus_per_trial: 0, "
            "or run the local world with --local."
        )
    if gpus > n:
        raise SweepError(f"{study.path}: resources.gpus_per_trial={gpus:g} but this machine has {n} GPU(s)")


def apply_overrides(study, options: SweepOptions) -> None:
    if options.trials_per_cell is not None:
        study.trials_per_cell = int(options.trials_per_cell)
        for c in study.cells:
            c.trials = (
                int(options.trials_per_cell) if c.search_space else min(1, int(options.trials_per_cell))
            )
    if options.epochs is not None:
        for c in study.cells:
            c.base_config.setdefault("train", {})["epochs"] = int(options.epochs)
            c.final_epochs = None
        if getattr(study, "budget", None) is not None:
            from dataclasses import replace

            study.budget = replace(study.budget, epochs=int(options.epochs))
        study.final_epochs = None
    if options.seeds is not None:
        study.final_seeds = [int(s) for s in options.seeds]
    if options.max_concurrent is not None:
        study.max_concurrent = int(options.max_concurrent)


def plan_text(study) -> str:
    """What a sweep of this study would run: the --dry-run summary after ``study.describe()``."""
    res = study.resources
    gpus = 0 if study.local else res.gpus_per_trial
    lines = ["", "plan:"]
    total = 0
    for c in study.cells:
        lines.append(
            f"  {c.study_name}: {c.trials} trial(s), {len(c.search_space)} searched param(s), "
            f"{len(study.final_seeds)} final run(s) (seeds {', '.join(map(str, study.final_seeds))})"
        )
        total += c.trials
    lines.append(f"  total: {total} search trials + {len(study.cells) * len(study.final_seeds)} final runs")
    lines.append(
        f"  resources per trial: {res.cpus_per_trial:g} CPU, {gpus:g} GPU; max concurrent: "
        f"{study.max_concurrent or 'as resources allow'}; max failures per trial: {study.max_failures}"
    )
    lines.append(f"  storage: {redact_url(study.storage_url)}   run dir: {study.run_dir}")
    return "\n".join(lines)


def _fingerprint(path: Path) -> dict:
    out: dict[str, Any] = {"path": str(path)}
    try:
        from tinysiglip.cache import open_cache

        meta = open_cache(path).meta
        for k, v in meta.items():
            if "fingerprint" in k or k in ("teacher_source", "teacher_revision", "dataset_name", "split"):
                out[k] = v
    except Exception as exc:  # noqa: BLE001 - a fingerprint is informative, never fatal
        out["error"] = str(exc)[:200]
    return out


def teacher_reference_metrics(path: Path) -> tuple[dict, dict]:
    """Retrieval metrics of the teacher's own cached test embeddings, and the teacher's parameter counts."""
    from tinysiglip.cache import open_cache
    from tinysiglip.evaluate import retrieval_metrics

    cache = open_cache(path)
    metrics = retrieval_metrics(cache.image_embeds(), cache.text_embeds(), cache.caption_image_index())
    params = cache.meta.get("teacher_params") or cache.meta.get("teacher_param_counts") or {}
    if not isinstance(params, dict):
        params = {"total": params}
    return dict(metrics), params


def _default_ensure_caches(study):
    from tinysiglip.sweep.caches import ensure_study_caches

    return ensure_study_caches(study, progress=True)


def _dashboard_kwargs(options: SweepOptions) -> dict:
    if not options.dashboard:
        return {"include_dashboard": False}
    try:
        from ray._private.utils import get_dashboard_dependency_error

        missing = get_dashboard_dependency_error()
    except Exception as exc:  # noqa: BLE001
        missing = exc
    if missing is not None:
        options.echo(
            "--dashboard: the Ray dashboard needs ray[default], which is not installed "
            f"({missing}). Install it with `pip install 'tinysiglip[dashboard]'` (or `pip install 'ray[default]'`);"
            " continuing without the dashboard."
        )
        return {"include_dashboard": False}
    return {"include_dashboard": True, "dashboard_host": "127.0.0.1"}


def _check_fresh(study, store: StudyStore, ostudies: dict) -> None:
    n_runs = len(store.runs(study.name))
    n_trials = sum(len(s.get_trials(deepcopy=False)) for s in ostudies.values())
    if n_runs or n_trials:
        raise SweepError(
            f"study {study.name!r} already has {n_trials} Optuna trial(s) and {n_runs} run(s) in "
            f"{redact_url(study.storage_url)}. Rerun with --resume to finish it, or give a new --storage URL "
            "(or another run_dir) to start over."
        )


# ------------------------------------------------------------------------------------------ driver


@dataclass
class SweepSummary:
    study: str
    storage_url: str
    cells: dict[str, dict]
    wall_time_s: float
    ray_start_s: float
    search_s: float
    final_s: float


def run_sweep(
    study,
    options: SweepOptions | None = None,
    *,
    ensure_caches: Callable | None = None,
    teacher_metrics: Callable | None = None,
    gpus_available: int | None = None,
) -> SweepSummary:
    """Run (or with ``options.resume`` finish) a study. ``ensure_caches(study) -> {(teacher, dataset,
    split): path}`` and ``teacher_metrics(path) -> (metrics, params)`` default to the real ones."""
    import optuna
    import ray
    from ray import tune

    from tinysiglip.sweep.scheduler import OptunaPruningScheduler
    from tinysiglip.sweep.searcher import CellSearcher

    options = options or SweepOptions()
    echo = options.echo
    t0 = time.time()
    apply_overrides(study, options)
    check_resources(study, gpus_available=gpus_available)
    run_dir = Path(study.run_dir).resolve()
    url = study.storage_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not options.log_to_driver:  # failures are recorded in the database and echoed in one line
        import logging

        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    store = open_store(url)
    storage = optuna_storage(url)
    ostudies = {}
    for c in study.cells:
        ostudies[c.name] = optuna.create_study(
            storage=storage,
            study_name=c.study_name,
            load_if_exists=True,
            direction=study.objective.direction,
            sampler=study.make_sampler(),
            pruner=study.make_pruner(),
        )
    if not options.resume:
        _check_fresh(study, store, ostudies)
    try:
        text = Path(study.path).read_text()
    except Exception:  # noqa: BLE001
        text = None
    store.upsert_study(
        study.name,
        study_file=study.path,
        study_text=text,
        local=bool(study.local),
        settings={
            "objective": {"metric": study.objective.metric, "direction": study.objective.direction},
            "trials_per_cell": study.trials_per_cell,
            "cells": {
                c.name: {
                    "optuna_study": c.study_name,
                    "trials": c.trials,
                    "teacher": c.teacher,
                    "dataset": c.dataset,
                    "description": c.description,
                }
                for c in study.cells
            },
            "final_seeds": list(study.final_seeds),
            "resources": {
                "cpus_per_trial": study.resources.cpus_per_trial,
                "gpus_per_trial": 0 if study.local else study.resources.gpus_per_trial,
            },
            "pruner": dict(study.pruner),
            "sampler": dict(study.sampler),
            "max_failures": study.max_failures,
            "epochs": options.epochs if options.epochs is not None else getattr(study.budget, "epochs", None),
        },
    )
    echo(f"study {study.name}: {len(study.cells)} cells, storage {redact_url(url)}, run dir {run_dir}")
    echo(f"  watch it: optuna-dashboard {redact_url(url)}")

    # resume bookkeeping: runs the DB says were left running by a killed driver
    reattach = []
    for c in study.cells:
        for ft in ostudies[c.name].get_trials(deepcopy=False):
            if ft.state == optuna.trial.TrialState.RUNNING:
                reattach.append((c, ft))
            elif ft.state.is_finished():
                rec = store.find_trial_run(c.study_name, ft.number)
                if rec is not None and rec.status == "running":  # killed between tell and DB write
                    status = {"COMPLETE": "complete", "PRUNED": "pruned"}.get(ft.state.name, "failed")
                    store.finish_run(
                        rec.id,
                        status,
                        objective=ft.value if ft.value is not None else None,
                        error=None if status != "failed" else "marked failed in Optuna",
                    )
        if reattach and options.resume:
            pass
    if reattach:
        echo(f"  resuming: {len(reattach)} trial(s) left running are re-attached from their checkpoints")

    # caches (built once, before any trial) and the teacher reference per cell
    caches = (ensure_caches or _default_ensure_caches)(study)
    caches = {tuple(k): Path(v) for k, v in caches.items()}
    fingerprints = {
        k: _fingerprint(p) if ensure_caches is None else {"path": str(p)} for k, p in caches.items()
    }
    tm_fn = (
        teacher_metrics
        if teacher_metrics is not None
        else (teacher_reference_metrics if ensure_caches is None else None)
    )
    if tm_fn is not None:
        for c in study.cells:
            path = caches.get((c.teacher, c.dataset, "test"))
            if path is None:
                continue
            try:
                metrics, tparams = tm_fn(path)
            except Exception as exc:  # noqa: BLE001 - the reference is informative, never fatal
                echo(f"  warning: teacher metrics for {c.name} failed: {exc}")
                continue
            store.record_teacher_metrics(
                study_name=study.name,
                cell=c.name,
                teacher_source=study.teachers[c.teacher].effective_source
                if hasattr(study, "teachers")
                else c.teacher,
                split="test",
                metrics=metrics,
                teacher_params=tparams,
                cache_path=path,
                cache_fingerprint=json.dumps(fingerprints.get((c.teacher, c.dataset, "test")), default=str),
            )

    gpu_fraction = 0.0 if study.local else float(study.resources.gpus_per_trial or 0.0)
    cpus = float(study.resources.cpus_per_trial or 1.0)
    state = SweepState(
        study=study,
        store=store,
        optuna_studies=ostudies,
        caches=caches,
        options=options,
        fingerprints=fingerprints,
        run_dir=run_dir,
        gpu_fraction=gpu_fraction,
        cpus=cpus,
        train_fn=_fn_path(options.train_fn),
    )
    state.reattach = list(reattach)
    for c in study.cells:
        n = len(ostudies[c.name].get_trials(deepcopy=False))
        state.new_left[c.name] = max(0, int(c.trials) - n)

    # Ray
    t_ray = time.time()
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(
            num_cpus=options.num_cpus or os.cpu_count() or 1,
            num_gpus=0 if study.local else _gpu_count(),
            log_to_driver=options.log_to_driver,
            configure_logging=True,
            logging_level="WARNING",
            **_dashboard_kwargs(options),
        )
    ray_start_s = time.time() - t_ray
    resources = {"cpu": cpus, "gpu": gpu_fraction}
    trainable = tune.with_resources(tsl_trainable, resources)
    ray_dir = run_dir / "ray"
    ray_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    def tune_phase(phase: str, n: int) -> float:
        if n <= 0:
            return 0.0
        ts = time.time()
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=CellSearcher(state, phase),
                scheduler=OptunaPruningScheduler(state),
                num_samples=n,
                max_concurrent_trials=study.max_concurrent or None,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"{phase}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(ray_dir),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=int(study.max_failures)),
                callbacks=[_make_callback(state)],
            ),
        )
        tuner.fit()
        return time.time() - ts

    n_search = len(state.reattach) + sum(state.new_left.values())
    echo(
        f"search: {n_search} trial(s) to run "
        f"({sum(len(s.get_trials(deepcopy=False)) for s in ostudies.values()) - len(reattach)} already finished)"
    )
    search_s = tune_phase("search", n_search)

    # final runs: each cell's best COMPLETE trial, once per final seed
    final_s = 0.0
    if not options.skip_final:
        for c in study.cells:
            ostudy = ostudies[c.name]
            complete = [
                t for t in ostudy.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE
            ]
            if not complete:
                echo(f"  [{c.name}] no COMPLETE trial: no final runs")
                continue
            best = ostudy.best_trial
            for seed in study.final_seeds:
                rec = store.find_final_run(c.study_name, seed)
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
                        "run_dir": str(run_dir / "final" / c.name / f"seed{seed}"),
                        "train_config": cfg,
                        "train_fn": state.train_fn,
                    }
                )
        n_final = len(state.final_queue)
        echo(f"final: {n_final} run(s) to run")
        final_s = tune_phase("final", n_final)

    summary = summarize(study, store, ostudies)
    for line in summary_lines(summary, study):
        echo(line)
    total = time.time() - t0
    echo(
        f"done in {total:.0f}s (Ray start {ray_start_s:.1f}s, search {search_s:.0f}s, final {final_s:.0f}s); "
        f"database {redact_url(url)}"
    )
    store.close()
    if started_ray:
        ray.shutdown()
    return SweepSummary(
        study=study.name,
        storage_url=url,
        cells=summary,
        wall_time_s=total,
        ray_start_s=ray_start_s,
        search_s=search_s,
        final_s=final_s,
    )


def summarize(study, store: StudyStore, ostudies: dict) -> dict[str, dict]:
    import optuna

    cost = store.cost_summary(study.name)
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
