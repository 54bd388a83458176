"""Faults a sweep must survive (issue 11): signals, finals re-planned from the true best, one driver per
study, sampler seeds after a resume. Fast tests drive the pieces directly; the slow ones run the real
driver (Ray Tune + Optuna on SQLite) with the stub trainer of tests/sweep_stubs.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
import sqlalchemy
from test_sweep_driver import HOOKS, ROOT, check_db, env, sweep, write_study

from tinysiglip.results.store import open_store, optuna_storage
from tinysiglip.sweep.stopping import StopSignals, SweepInterrupted

# ----------------------------------------------------------------------------------------- fast


def test_stop_signals_first_signal_in_a_phase_asks_the_second_forces():
    said = []
    signals = StopSignals(said.append)
    with pytest.raises(SweepInterrupted) as exc:  # outside a Tune phase: stop at once
        signals._handle(signal.SIGTERM, None)
    assert exc.value.exit_code == 143 and isinstance(exc.value, KeyboardInterrupt)
    signals = StopSignals(said.append)
    with signals.phase():
        signals._handle(signal.SIGINT, None)  # in a phase: only asks
        assert signals.requested and "SIGINT received" in said[-1]
        with pytest.raises(SweepInterrupted) as exc:
            signals._handle(signal.SIGINT, None)
    assert exc.value.exit_code == 130


def _state_with_trials(tmp_path, values: list[float]):
    from tinysiglip.sweep.options import SweepOptions
    from tinysiglip.sweep.prepare import open_cell_studies
    from tinysiglip.sweep.state import SweepState
    from tinysiglip.sweep.study import load_study

    study = load_study(write_study(tmp_path, trials=len(values)), run_dir=tmp_path / "run")
    store = open_store(study.storage_url)
    ostudies = open_cell_studies(study, optuna_storage(study.storage_url))
    for cell, s in ostudies.items():
        space = dict(study.cell(cell).search_space)
        for i, v in enumerate(values):
            s.add_trial(
                optuna.trial.create_trial(params={"loss.feat": 0.5 + i / 10}, distributions=space, value=v)
            )
    said: list[str] = []
    state = SweepState(
        study=study,
        store=store,
        optuna_studies=ostudies,
        caches={},
        options=SweepOptions(echo=said.append),
        fingerprints={},
        run_dir=tmp_path / "run",
        gpu_fraction=0.0,
        cpus=1.0,
        train_fn="sweep_stubs:stub_train",
    )
    return study, store, state, said


def test_finals_of_a_superseded_best_are_marked_and_redone(tmp_path):
    from tinysiglip.sweep.final import queue_final_runs

    study, store, state, said = _state_with_trials(tmp_path, [1.0])
    assert queue_final_runs(state) == 4  # 2 cells x seeds 0, 1, all from trial 0
    for spec in state.final_queue:  # the first sweep ran its finals from trial 0
        rec = store.start_run(
            study_name=study.name,
            cell=spec["cell"],
            kind="final",
            optuna_study_name=spec["optuna_study"],
            source_trial_number=spec["source_trial"],
            seed=spec["seed"],
        )
        store.finish_run(rec.id, "complete", test_metrics={"i2t_r1": 1.0})
    state.final_queue.clear()
    assert queue_final_runs(state) == 0  # nothing changed: nothing to redo
    dist = optuna.distributions.FloatDistribution(0.01, 1.0)
    state.optuna["strong"].add_trial(  # a resumed search found a better trial in one cell
        optuna.trial.create_trial(params={"loss.feat": 0.9}, distributions={"loss.feat": dist}, value=5.0)
    )
    assert queue_final_runs(state) == 2
    assert {(q["cell"], q["source_trial"]) for q in state.final_queue} == {("strong", 1)}
    finals = store.runs(study.name, kind="final")
    assert len(finals) == 4  # kept, not deleted
    old = [r for r in finals if r.cell == "strong"]
    assert all(r.status == "superseded" and "trial 1 is now the best" in r.error for r in old)
    assert all(r.status == "complete" for r in finals if r.cell == "flat")
    assert store.find_final_run("stubstudy/strong", 0) is None  # the normal key is free for the redo
    assert any("best trial is now 1 (was 0): redone" in line for line in said)


# ----------------------------------------------------------------------------------------- slow


def _start(study, run_dir, *args, **env_extra):
    cmd = [sys.executable, "-m", "tinysiglip.sweep", str(study), "--run-dir", str(run_dir), *args, *HOOKS]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env(**env_extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _signal_when_running(proc, url: str, sig: int, timeout: float = 300) -> None:
    """Send ``sig`` to the driver once one more trial finished (in this run) and another is running
    (signal 0 sends nothing: it only waits for that moment)."""

    def complete() -> int:
        try:
            return len(open_store(url, create=False).runs("stubstudy", kind="trial", status="complete"))
        except Exception:  # noqa: BLE001 - the database is not there yet
            return 0

    before = complete()
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            runs = open_store(url, create=False).runs("stubstudy", kind="trial")
        except Exception:  # noqa: BLE001 - the database is not there yet
            continue
        n_complete = sum(r.status == "complete" for r in runs)
        if n_complete > before and any(r.status == "running" for r in runs):
            proc.send_signal(sig)
            return
    raise AssertionError("the sweep never had a finished and a running trial at once")


@pytest.mark.slow
def test_signals_stop_without_finals_and_resume_finishes_from_the_true_best(tmp_path):
    study = write_study(tmp_path, trials=6, conc=2)
    run_dir = tmp_path / "run"
    url = f"sqlite:///{run_dir / 'study.db'}"
    for sig, code, args in ((signal.SIGINT, 130, ()), (signal.SIGTERM, 143, ("--resume",))):
        proc = _start(study, run_dir, *args, TSL_STUB_SLEEP="0.6")
        _signal_when_running(proc, url, sig)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == code, (out, err)
        assert "stopped by" in err and "--resume" in err and "Traceback" not in err
        store = open_store(url, create=False)
        assert not store.runs("stubstudy", kind="final")  # no finals on a partial search
        running = [r for r in store.runs("stubstudy", kind="trial") if r.status == "running"]
        assert running and sum(r.wall_time_s for r in running) > 0  # a stopped attempt's time is kept
        ostates = [
            t.state
            for c in ("strong", "flat")
            for t in optuna.load_study(study_name=f"stubstudy/{c}", storage=url).trials
        ]
        assert optuna.trial.TrialState.RUNNING in ostates and optuna.trial.TrialState.FAIL not in ostates
    p = sweep(study, "--run-dir", str(run_dir), "--resume", *HOOKS)
    assert "final: 4 run(s)" in p.stdout
    check_db(url, trials=6)  # every trial finished once, finals from each cell's best


# ------------------------------------------------------------------------------ one driver per study


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lease_refuses_a_live_holder_and_takes_over_a_dead_or_silent_one(tmp_path):
    from tinysiglip.results.leases import LeaseHeld, acquire_lease, release_lease, renew_lease

    store = open_store(f"sqlite:///{tmp_path / 'study.db'}")
    mine, taken = acquire_lease(store, "s")
    assert taken is None and renew_lease(store, mine)
    with pytest.raises(LeaseHeld, match=rf"another driver: pid {mine.pid} on {mine.host}"):
        acquire_lease(store, "s", pid=mine.pid + 1)
    acquire_lease(store, "other")  # one lease per study
    release_lease(store, mine)
    dead = _dead_pid()
    gone, _ = acquire_lease(store, "s", pid=dead)
    ours, taken = acquire_lease(store, "s")  # same host, holder's process gone: taken over at once
    assert taken[0].pid == dead and "is gone" in taken[1]
    assert not renew_lease(store, gone)  # the dead one's lease is no longer its own
    far, _ = acquire_lease(store, "t", host="elsewhere", pid=1, ttl_s=30, now=time.time() - 100)
    with pytest.raises(LeaseHeld):
        acquire_lease(store, "t", now=far.heartbeat_at + 10)  # another host, heartbeat fresh: alive
    ours, taken = acquire_lease(store, "t")  # another host, 100 s without heartbeat: stale
    assert taken[0].host == "elsewhere" and "no heartbeat for 100s" in taken[1]


@pytest.mark.slow
def test_a_second_driver_is_refused_while_the_first_runs(tmp_path):
    study = write_study(tmp_path, trials=3, conc=2)
    run_dir = tmp_path / "run"
    url = f"sqlite:///{run_dir / 'study.db'}"
    first = _start(study, run_dir, TSL_STUB_SLEEP="0.6")
    try:
        _signal_when_running(first, url, 0)  # signal 0: only waits until the first driver is running
        for args in ((), ("--resume",)):
            p = sweep(study, "--run-dir", str(run_dir), *args, *HOOKS, check=False)
            assert p.returncode == 2, (p.stdout, p.stderr)
            assert f"another driver: pid {first.pid}" in p.stderr and "Traceback" not in p.stderr
        out, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, (out, err)
    store, runs = check_db(url, trials=3)  # nothing duplicated or left running by the refused drivers
    assert all(r.attempts == 1 for r in runs)
    with store.session() as s:
        assert not s.execute(sqlalchemy.text("SELECT * FROM tsl_leases")).all()  # released at the end


PG_URL = os.environ.get("TINYSIGLIP_TEST_POSTGRES_URL")

CREATE_TABLES = """
import sys, time
from tinysiglip.results.store import open_store, optuna_storage, schema_creation_lock
url, start, locked = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
time.sleep(max(0.0, start - time.time()))
if locked:
    with schema_creation_lock(url):
        open_store(url).close(); optuna_storage(url)
else:
    open_store(url).close(); optuna_storage(url)
"""


def create_tables_at_once(url: str, n: int, locked: bool) -> list[subprocess.CompletedProcess]:
    start = time.time() + 3  # every process imports first, then all create at the same moment
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE_TABLES, url, str(start), "1" if locked else "0"],
            cwd=ROOT,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    return [(p, *p.communicate(timeout=120)) for p in procs]


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="TINYSIGLIP_TEST_POSTGRES_URL not set")
def test_drivers_creating_tables_at_once_on_empty_postgres(tmp_path):
    admin = sqlalchemy.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"tsl_race_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        url = sqlalchemy.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        results = create_tables_at_once(url, 4, locked=True)
        assert all(p.returncode == 0 for p, _, _ in results), [err for _, _, err in results]
        assert {"tsl_runs", "tsl_leases", "trials"} <= set(
            sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_table_names()
        )
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


# ------------------------------------------------------------------------------ sampling after resume


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_resumed_and_concurrent_drivers_never_repeat_a_draw(tmp_path, kind):
    from tinysiglip.sweep.prepare import open_cell_studies
    from tinysiglip.sweep.study import load_study

    text = write_study(tmp_path, trials=6).read_text()
    if kind == "tpe":
        text = text.replace(
            "sampler: {type: random, seed: 3}", "sampler: {type: tpe, seed: 3, n_startup_trials: 2}"
        )
    (tmp_path / "tpe.yaml").write_text(text)
    study = load_study(tmp_path / "tpe.yaml", run_dir=tmp_path / "run")
    space = dict(study.cell("strong").search_space)

    def driver():  # what every driver (fresh, resumed, second) builds for itself
        return open_cell_studies(study, optuna_storage(study.storage_url))["strong"]

    first = driver()
    t = first.ask(fixed_distributions=space)
    first.tell(t, 1.0)
    resumed, concurrent = driver(), driver()  # a resume, and a second driver at the same time
    for _ in range(3):
        for s in (resumed, concurrent):
            t = s.ask(fixed_distributions=space)
            s.tell(t, float(t.params["loss.feat"]))
    values = [t.params["loss.feat"] for t in first.trials]
    assert len(values) == 7 and len(set(values)) == 7, values
    # reproducible: a fresh database draws the same value for the same trial number
    again = open_cell_studies(study, optuna_storage(f"sqlite:///{tmp_path / 'again.db'}"))["strong"]
    assert again.ask(fixed_distributions=space).params["loss.feat"] == values[0]
    # the fault this guards against: a sampler seeded once per driver repeats trial 0's draw
    old = optuna.create_study(
        storage=optuna_storage(study.storage_url), study_name="strong-old", sampler=study.make_sampler()
    )
    old.tell(old.ask(fixed_distributions=space), 1.0)
    repeat = optuna.load_study(
        study_name="strong-old", storage=optuna_storage(study.storage_url), sampler=study.make_sampler()
    )
    assert repeat.ask(fixed_distributions=space).params == old.trials[0].params


# ------------------------------------------------------------------------------ budgets and failures


def test_resume_with_another_budget_or_search_space_is_refused(tmp_path):
    from tinysiglip.sweep.options import SweepError, SweepOptions
    from tinysiglip.sweep.prepare import check_resume_compatible

    study, store, state, _ = _state_with_trials(tmp_path, [1.0])
    store.start_run(
        study_name=study.name,
        cell="strong",
        kind="trial",
        optuna_study_name="stubstudy/strong",
        optuna_trial_number=0,
        epochs_budget=4,
    )
    check_resume_compatible(study, store, state.optuna, SweepOptions())  # as started: fine
    wide = optuna.distributions.FloatDistribution(0.01, 1.0)  # a flat trial drawn from another range
    state.optuna["flat"].add_trial(
        optuna.trial.create_trial(params={"loss.feat": 0.7}, distributions={"loss.feat": wide}, value=1.0)
    )
    with pytest.raises(SweepError) as exc:
        check_resume_compatible(study, store, state.optuna, SweepOptions(epochs=2))
    assert "cell strong: epochs per trial 4 -> 2 (resume with --epochs 4)" in str(exc.value)
    assert "cell flat: search space loss.feat: float(low=0.01, high=1.0) -> float(low=0.5, high=1.0)" in str(
        exc.value
    )  # every difference at once


def test_retry_failed_needs_resume(tmp_path):
    p = sweep(write_study(tmp_path), "--retry-failed", check=False)
    assert p.returncode == 2 and "--retry-failed" in p.stderr and "--resume" in p.stderr


@pytest.mark.slow
def test_divergence_is_not_retried_and_retry_failed_reruns_failed_trials(tmp_path):
    study = write_study(tmp_path, trials=4)
    run_dir = tmp_path / "run"
    url = f"sqlite:///{run_dir / 'study.db'}"
    p = sweep(
        study, "--run-dir", str(run_dir), *HOOKS, check=False, TSL_STUB_FAULTS="diverge_once:1,always:2"
    )
    assert p.returncode == 1 and "4 run(s) failed" in p.stderr  # failed runs: a non-zero exit naming them
    store = open_store(url, create=False)
    for cell in ("strong", "flat"):
        runs = {r.optuna_trial_number: r for r in store.runs("stubstudy", cell=cell, kind="trial")}
        assert (
            runs[1].status == "failed" and runs[1].attempts == 1 and "diverged (not retried)" in runs[1].error
        )
        assert (
            runs[2].status == "failed" and runs[2].attempts == 3
        )  # an exception is retried (max_failures 2)
    p = sweep(study, "--run-dir", str(run_dir), "--resume", "--retry-failed", *HOOKS)
    assert "2 failed trial(s) queued again" not in p.stdout and "4 failed trial(s) queued again" in p.stdout
    for cell in ("strong", "flat"):
        ostudy = optuna.load_study(study_name=f"stubstudy/{cell}", storage=url)
        states = [t.state.name for t in ostudy.trials]
        assert len(states) == 6 and states.count("FAIL") == 2  # the failed ones stay in the history
        assert states.count("COMPLETE") + states.count("PRUNED") == 4  # the budget, retries included
        retries = {t.user_attrs["tsl_retry_of"]: t for t in ostudy.trials if "tsl_retry_of" in t.user_attrs}
        assert sorted(retries) == [1, 2]
        assert all(retries[n].params == ostudy.trials[n].params for n in retries)  # same parameters again
    p = sweep(study, "--run-dir", str(run_dir), "--resume", "--retry-failed", *HOOKS)  # nothing left to retry
    assert "0 failed trial(s) queued again" in p.stdout and "search: 0 trial(s)" in p.stdout
    p = sweep(study, "--run-dir", str(run_dir), "--resume", "--epochs", "2", *HOOKS, check=False)
    assert p.returncode == 2 and "epochs per trial 4 -> 2" in p.stderr


# ------------------------------------------------------------------------------ the fault suite


@pytest.mark.slow
def test_fault_suite_quick_subset(tmp_path):
    """scripts/fault_suite.py --quick: every injected fault survived or refused cleanly."""
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fault_suite.py"), "--quick", "--keep", str(tmp_path)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0 and " 0 FAIL" in p.stdout, p.stdout + p.stderr
    assert "13 faults injected" in p.stdout  # bad inputs are counted on a line of their own
