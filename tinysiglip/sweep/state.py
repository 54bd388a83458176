"""The sweep's live state in the driver: which Ray trial is which run, and what each event writes.

:class:`SweepState` is shared by the three Ray Tune plug-ins that run in the driver's Tune loop
(:class:`~.searcher.CellSearcher`, :class:`~.scheduler.OptunaPruningScheduler`,
:class:`~.callback.AttemptRecorder`): it hands out the next run's spec (a new or re-attached Optuna
trial, or a final run), starts its ``tsl_runs`` row, records every evaluation, asks the cell's pruner,
and tells Optuna and the database how each run ended. The driver builds it; nothing here starts Ray.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinysiglip.results.store import StudyStore
from tinysiglip.sweep.options import SweepOptions
from tinysiglip.sweep.trainable import finite_or_none

__all__ = ["Active", "NoPickleState", "SweepState", "trial_error"]


class NoPickleState:
    """Tune pickles its searcher, scheduler and callbacks with the experiment; the live sweep state
    (database engine, Optuna studies) is not saved with it: the database is the state that survives."""

    def __getstate__(self):
        d = dict(self.__dict__)
        d["state"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)


@dataclass
class Active:
    """One Ray trial's run as the driver knows it: its spec, its ``tsl_runs`` row, its Optuna trial."""

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
    node: dict | None = None  # where the current attempt runs (from its reports)


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
        signals=None,
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
        self.signals = signals  # :class:`~.stopping.StopSignals` of the driver (None in unit tests)

    @property
    def stopping(self) -> bool:
        """A signal asked the sweep to stop: runs that end now without a result are left for --resume."""
        return self.signals is not None and self.signals.requested

    def leave_unfinished(self) -> int:
        """After a stopped phase: every run still active keeps its RUNNING Optuna trial and its
        ``running`` row (``--resume`` re-attaches it from its checkpoint); its attempt's time is kept."""
        left = [a for a in self.active.values() if not a.done]
        for a in left:
            self._leave(a)
        return len(left)

    def _leave(self, a: Active) -> None:
        a.done = True
        self.store.add_wall_time(a.run_id, self._attempt_seconds(a))

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

    def _stage_spec(self, cfg: dict) -> dict:
        """What a trial needs to copy its caches to its node (``caches.stage: node-local``): the
        driver's node (which serves them through Ray), each cache's fingerprint and size."""
        import os

        import ray

        caches = {}
        for key, path in (cfg.get("data") or {}).items():
            if key.endswith("_cache") and path:
                fp = next((f for f in self.fingerprints.values() if f.get("path") == str(path)), {})
                size = os.path.getsize(path) if os.path.exists(path) else None
                caches[key] = {"fingerprint": fp.get("request_fingerprint"), "size": size}
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return {"root": self.study.cache_stage_root, "source_node": node, "caches": caches}

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
        if self.study.cache_stage == "node-local":
            spec["stage"] = self._stage_spec(spec["train_config"])
        rec = self.store.start_run(
            **self._run_fields(spec),
            optuna_trial_id=spec.get("optuna_trial_id"),
            source_trial_number=spec.get("source_trial"),
            config=spec["train_config"],
            params=spec["params"],
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

    def _run_fields(self, spec: dict) -> dict:
        """What every ``tsl_runs`` row of this run says, first attempt or retry."""
        return dict(
            study_name=self.study.name,
            cell=spec["cell"],
            kind=spec["kind"],
            optuna_study_name=spec["optuna_study"],
            optuna_trial_number=spec.get("number") if spec["kind"] == "trial" else None,
            seed=spec["seed"],
            objective_metric=self.study.objective.metric,
            objective_direction=self.study.objective.direction,
            epochs_budget=self._epochs_budget(spec["train_config"]),
            cpus=self.cpus,
            gpu_fraction=self.gpu_fraction,
        )

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
        self.store.start_run(**self._run_fields(a.spec))  # the new attempt's row
        a.restart_pending = False
        a.attempt_started = time.time()

    def attempt_failed(self, trial_id: str, error: str) -> None:
        """A failed attempt that Ray retries from the checkpoint: recorded failed, then running again."""
        a = self.active.get(trial_id)
        if a is None or self.stopping:  # a worker that died of the signal: left for --resume
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
        objective = finite_or_none(payload.get("objective"))
        a.last_eval = payload
        self._record_node(a, payload.get("node"))
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
        self._record_artifacts(a, a.ray_trial or self.ray_trials.get(trial_id), {})
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
            self._record_node(a, a.final.get("node"))

    def _record_node(self, a: Active, node: dict | None) -> None:
        """The node this attempt runs on (recorded once per attempt, and again when a retry moves)."""
        if not node or node == a.node:
            return
        a.node = dict(node)
        self.store.set_run_location(
            a.run_id,
            node_id=node.get("node_id"),
            node_host=node.get("node_host"),
            node_ip=node.get("node_ip"),
        )

    def _record_artifacts(self, a: Active, trial, res: dict) -> None:
        """Where the run's checkpoints (Tune's trial folder) and exported student are, in storage."""
        checkpoint_folder = student = None
        try:
            checkpoint_folder = _storage_uri(trial, trial.path) if trial is not None else None
            if res.get("student_path") and trial is not None and trial.checkpoint is not None:
                student = _storage_uri(trial, trial.checkpoint.path)
        except Exception:  # noqa: BLE001 - a trial object without storage (tests): paths unknown
            pass
        self.store.set_run_location(
            a.run_id, device=res.get("device"), student_path=student, checkpoint_path=checkpoint_folder
        )

    def on_trial_end(self, trial_id: str, *, error: bool) -> None:
        """Called once per Ray trial when it ends (completed, stopped by the pruner, or errored for good)."""
        import optuna

        a = self.active.get(trial_id)
        if a is None or a.done:
            return
        if self.stopping and not a.final:  # stopped by a signal before its end: left for --resume
            self._leave(a)
            return
        a.done = True
        seconds = self._attempt_seconds(a)
        res = a.final or {}
        err_text = None
        if error:
            err_text = trial_error(a.ray_trial or self.ray_trials.get(trial_id)) or "trial failed"
        elif not a.final:
            err_text = "the trial ended without a final result"
        elif a.final.get("status") == "diverged":  # deterministic: failed for good, never retried
            err_text = f"diverged (not retried): {a.final.get('error') or 'non-finite loss'}"
        objective = None
        if res.get("checkpoint_set_aside"):
            aside = res["checkpoint_set_aside"]
            self.echo(
                f"  [{a.cell}] {self._label(a)}: damaged checkpoint set aside ({aside}); it started over"
            )
        recorded = (
            {(e.epoch, e.step) for e in self.store.evaluations(a.run_id)} if res.get("val_history") else set()
        )
        for ev in res.get("val_history") or []:  # backfill evaluations a killed driver never recorded
            self._backfill(a, ev, recorded)
        if err_text is None:
            hist = res.get("val_history") or []
            objective = finite_or_none(hist[-1].get("objective")) if hist else None
            if objective is None and a.last_eval:
                objective = finite_or_none(a.last_eval.get("objective"))
            if objective is None and a.kind == "trial":
                err_text = "no finite objective was reported"
        self._record_artifacts(a, a.ray_trial or self.ray_trials.get(trial_id), res)
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
                self._save_test_ranks(a, res.get("test_ranks"))
                tm = res.get("test_metrics") or {}
                shown = ", ".join(f"{k}={v:.2f}" for k, v in tm.items() if isinstance(v, (int, float)))
                self.echo(f"  [{a.cell}] final seed {a.seed}: COMPLETE test {shown or '(no test metrics)'}")
            else:
                self.store.finish_run(a.run_id, "failed", error=err_text, **common)
                self.echo(f"  [{a.cell}] final seed {a.seed}: FAILED: {_last_line(err_text)}")

    def _save_test_ranks(self, a: Active, payload: dict | None) -> None:
        """A final run's per-query test ranks, for the report's paired bootstrap (informative: a bad
        payload is a warning, the run stays complete)."""
        if not payload:
            return
        from tinysiglip.results.ranks import QueryRanks, save_run_ranks

        try:
            save_run_ranks(self.store, a.run_id, QueryRanks.from_payload(payload))
        except (ValueError, TypeError) as exc:
            self.echo(f"  warning: [{a.cell}] final seed {a.seed}: test ranks not stored: {exc}")

    def _backfill(self, a: Active, ev: dict, recorded: set) -> None:
        try:
            epoch, step = int(ev.get("epoch") or 0), int(ev.get("step") or 0)
        except (TypeError, ValueError):
            return
        if (epoch, step) in recorded:  # recorded when reported: keep the attempt that reported it
            return
        objective = finite_or_none(ev.get("objective"))
        self.store.record_evaluation(
            a.run_id, epoch=epoch, step=step, metrics=ev.get("metrics") or {}, objective=objective
        )
        if a.kind == "trial" and a.optuna_trial is not None and objective is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a.optuna_trial.report(objective, step=epoch)

    def _label(self, a: Active) -> str:
        return f"trial {a.number}" if a.kind == "trial" else f"final seed {a.seed}"


def _storage_uri(trial, path: str | None) -> str | None:
    """A path in the trial's storage as a user can open it: a local path, or ``scheme://path``."""
    if not path:
        return None
    fs = getattr(getattr(trial, "storage", None), "storage_filesystem", None)
    scheme = getattr(fs, "type_name", "local")
    return path if scheme in ("local", None) or "://" in path else f"{scheme}://{path}"


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def trial_error(trial) -> str | None:
    """The text of the trial's last failure (Ray appends every failure to the trial's error file),
    without terminal colour codes (they would be stored in the database's error column)."""
    text = _trial_error(trial)
    return None if text is None else _ANSI.sub("", text)


def _trial_error(trial) -> str | None:
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
