"""The sweep driver under real Ray Tune + real Optuna on SQLite, with a stub training function.

The stub (tests/sweep_stubs.py) draws deterministic curves: a trial whose searched λ (loss.feat) is
below 0.5 is 5x worse (designed-bad, what the pruner must prune); a cell's scale is loss.contrast. The
"flat" cell searches only loss.feat in [0.5, 1]: all its trials are identical but 10x below the
"strong" cell, so any cross-cell comparison would prune them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tinysiglip.results.ranks import load_ranks
from tinysiglip.results.store import open_store

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [
    "--train-fn",
    "sweep_stubs:stub_train",
    "--caches-fn",
    "sweep_stubs:stub_caches",
    "--teacher-metrics-fn",
    "sweep_stubs:stub_teacher_metrics",
    "--num-cpus",
    "2",
]

STUDY = """\
study: stubstudy
teachers: {t: {source: google/siglip2-base-patch16-224}}
datasets: {d: {kind: local_shapes}}
defaults:
  student: {name: vit_small}
  loss: {feat: 1.0, affinity: 0.0, contrast: 1.0}
grid:
  strong: {description: designed-bad trials when loss.feat < 0.5, loss: {contrast: 1.0}}
  flat:
    description: identical trials, 10x below strong
    loss: {contrast: 0.1}
    search_space: {params: {loss.feat: {type: float, low: 0.5, high: 1.0}}}
search_space: {params: {loss.feat: {type: float, low: 0.01, high: 1.0}}}
trials_per_cell: TRIALS
budget: {epochs: 4, eval_every_epochs: 1}
objective: {metric: mean_r1, direction: maximize}
pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 0}
sampler: {type: random, seed: 3}
final: {seeds: [0, 1]}
resources: {cpus_per_trial: 1, gpus_per_trial: GPUS}
max_failures: 2
max_concurrent: CONC
"""


def write_study(tmp_path, trials=6, gpus=0, conc=1) -> Path:
    p = tmp_path / "stub.yaml"
    p.write_text(STUDY.replace("TRIALS", str(trials)).replace("GPUS", str(gpus)).replace("CONC", str(conc)))
    return p


def env(**extra):
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), e.get("PYTHONPATH", "")])
    e.update(extra)
    return e


def sweep(study: Path, *args, check=True, **env_extra):
    cmd = [sys.executable, "-m", "tinysiglip.sweep", str(study), *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env(**env_extra), capture_output=True, text=True, timeout=1800)
    if check and p.returncode != 0:
        raise AssertionError(f"sweep failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def bad(run) -> bool:
    return float(run.params["loss.feat"]) < 0.5


# ----------------------------------------------------------------------------------------- fast


def test_dry_run_creates_nothing(tmp_path):
    study = write_study(tmp_path, gpus=0.5)
    run_dir = tmp_path / "run"
    p = sweep(study, "--dry-run", "--run-dir", str(run_dir), "--trials-per-cell", "3", "--seeds", "0,1,2")
    assert "stubstudy/strong" in p.stdout and "plan:" in p.stdout
    assert "total: 6 search trials + 6 final runs" in p.stdout
    assert not run_dir.exists()


def test_gpu_request_without_gpu_errors_unless_local(tmp_path):
    from tinysiglip.sweep.driver import SweepError, check_resources, run_sweep
    from tinysiglip.sweep.study import load_study

    study = load_study(write_study(tmp_path, gpus=0.5), run_dir=tmp_path / "run")
    with pytest.raises(SweepError, match="no GPU.*--local"):
        run_sweep(study, gpus_available=0)
    assert not (tmp_path / "run").exists()  # stopped before anything ran or the DB existed
    check_resources(
        load_study(write_study(tmp_path, gpus=0.5), local=True, run_dir=tmp_path / "r2"), gpus_available=0
    )


def test_existing_study_needs_resume(tmp_path):
    from tinysiglip.results.store import optuna_storage
    from tinysiglip.sweep.driver import SweepError, run_sweep
    from tinysiglip.sweep.study import load_study

    study = load_study(write_study(tmp_path), run_dir=tmp_path / "run")
    s = optuna.create_study(
        storage=optuna_storage(study.storage_url), study_name="stubstudy/strong", direction="maximize"
    )
    s.optimize(lambda t: 1.0, n_trials=1)
    with pytest.raises(SweepError, match="--resume"):
        run_sweep(study)


def test_cli_rejects_bad_overrides(tmp_path):
    p = sweep(write_study(tmp_path), "--epochs", "0", "--dry-run", check=False)
    assert p.returncode == 2 and "--epochs" in p.stderr


# ----------------------------------------------------------------------------------------- slow


def check_db(url: str, trials: int, seeds=(0, 1)):
    store = open_store(url)
    runs = store.runs("stubstudy")
    keys = [r.run_key for r in runs]
    assert len(keys) == len(set(keys))
    for cell in ("strong", "flat"):
        ostudy = optuna.load_study(study_name=f"stubstudy/{cell}", storage=url)
        otrials = ostudy.get_trials(deepcopy=False)
        assert len(otrials) == trials and all(t.state.is_finished() for t in otrials)
        cell_runs = {r.optuna_trial_number: r for r in runs if r.cell == cell and r.kind == "trial"}
        assert sorted(cell_runs) == [t.number for t in otrials]
        for t in otrials:
            r = cell_runs[t.number]
            assert r.status == t.state.name.lower().replace("fail", "failed"), (r, t)
            assert r.params == t.params
            evals = store.evaluations(r.id)
            assert {e.epoch: e.objective for e in evals} == {
                k: v for k, v in t.intermediate_values.items()
            } or r.status == "failed"
            if r.status == "pruned":
                assert t.intermediate_values and r.epochs_done < r.epochs_budget
        finals = [r for r in runs if r.cell == cell and r.kind == "final"]
        assert sorted(r.seed for r in finals) == list(seeds)
        assert all(r.status == "complete" and r.test_metrics for r in finals)
        assert all(r.source_trial_number == ostudy.best_trial.number for r in finals)
        stored = load_ranks(store, "stubstudy").runs  # the per-query ranks of each final run
        for r in finals:
            ranks = stored[(cell, r.seed)]
            assert 100 * (ranks.image_ranks < 1).mean() == pytest.approx(r.test_metrics["i2t_r1"], abs=0.5)
    return store, runs


@pytest.mark.slow
def test_sweep_prunes_retries_and_records(tmp_path):
    study = write_study(tmp_path, trials=6)
    run_dir = tmp_path / "run"
    p = sweep(study, "--run-dir", str(run_dir), *HOOKS, check=False, TSL_STUB_FAULTS="raise_once:0,always:3")
    assert "optuna-dashboard sqlite:///" in p.stdout and "pruned" in p.stdout
    # trial 3 of each cell fails every attempt: the sweep says which and exits non-zero (issue 9)
    assert p.returncode == 1, p.stderr
    assert "trial:stubstudy/strong#3" in p.stderr and "trial:stubstudy/flat#3" in p.stderr
    assert "FAILED trial:stubstudy/strong#3 after 3 attempt(s)" in p.stdout
    url = f"sqlite:///{run_dir / 'study.db'}"
    store, runs = check_db(url, trials=6)
    strong = [r for r in runs if r.cell == "strong" and r.kind == "trial"]
    flat = [r for r in runs if r.cell == "flat" and r.kind == "trial"]
    pruned = [r for r in strong if r.status == "pruned"]
    assert pruned, "the pruner pruned nothing"
    assert all(bad(r) for r in pruned)  # only designed-bad trials are pruned ...
    assert all(r.epochs_done < r.epochs_budget for r in pruned)  # ... and never at their last epoch
    assert not any(r.status == "pruned" for r in flat)  # ... and never against another cell's trials
    assert all(r.status != "pruned" for r in strong if not bad(r))
    for cell_runs in (strong, flat):
        (always,) = [r for r in cell_runs if r.optuna_trial_number == 3]
        assert always.status == "failed" and always.attempts == 3 and "stub failure" in always.error
        once = next(r for r in cell_runs if r.optuna_trial_number == 0)
        assert once.attempts == 2 and "stub failure in epoch 2" in once.error and once.status == "complete"
    assert store.teacher_metrics("stubstudy")
    # rerunning without --resume refuses; with --resume there is nothing left to do
    p2 = sweep(study, "--run-dir", str(run_dir), *HOOKS, check=False)
    assert p2.returncode == 2 and "--resume" in p2.stderr
    p3 = sweep(study, "--run-dir", str(run_dir), "--resume", *HOOKS, check=False)
    assert p3.returncode == 1 and "trial:stubstudy/strong#3" in p3.stderr  # still failed, still said
    store2, runs2 = check_db(url, trials=6)
    assert [(r.id, r.status, r.attempts) for r in runs2] == [(r.id, r.status, r.attempts) for r in runs]


@pytest.mark.slow
def test_kill_and_resume(tmp_path):
    study = write_study(tmp_path, trials=5, conc=2)
    run_dir = tmp_path / "run"
    url = f"sqlite:///{run_dir / 'study.db'}"
    cmd = [sys.executable, "-m", "tinysiglip.sweep", str(study), "--run-dir", str(run_dir), *HOOKS]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(TSL_STUB_SLEEP="0.7"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    killed_with = None
    while time.time() < deadline:
        time.sleep(0.5)
        if not (run_dir / "study.db").exists():
            continue
        try:
            runs = open_store(url, create=False).runs("stubstudy", kind="trial")
        except Exception:
            continue
        finished = [r for r in runs if r.status in ("complete", "pruned")]
        running = [r for r in runs if r.status == "running"]
        if len(finished) >= 3 and running:
            proc.send_signal(signal.SIGKILL)
            killed_with = (len(finished), len(running))
            break
    proc.wait(timeout=60)
    assert killed_with, "the driver never reached the kill point"
    time.sleep(3)
    sweep(study, "--run-dir", str(run_dir), "--resume", *HOOKS, TSL_STUB_SLEEP="0.2")
    store, runs = check_db(url, trials=5)
    reattached = [r for r in runs if r.kind == "trial" and r.attempts > 1]
    assert reattached, "no RUNNING trial was re-attached"
    for r in reattached:  # resumed from its checkpoint; a finished run's record is complete
        epochs = [e.epoch for e in store.evaluations(r.id)]
        assert len(epochs) == len(set(epochs))
        if r.status == "complete":
            assert epochs == list(range(1, r.epochs_budget + 1))


@pytest.fixture(scope="session")
def tiny_world_env(tmp_path_factory):
    """The smallest local world (tiny data, short teacher training), shared by every shipped study.

    ``TINYSIGLIP_LOCAL_WORLD`` may point at a world kept between runs (CI keeps none)."""
    root = os.environ.get("TINYSIGLIP_TEST_LOCAL_WORLD") or str(tmp_path_factory.mktemp("local_world"))
    return {"TINYSIGLIP_LOCAL_WORLD": root, "TINYSIGLIP_LOCAL_WORLD_SIZE": "tiny"}


@pytest.mark.slow
@pytest.mark.parametrize("study_file", sorted(p.name for p in (ROOT / "studies").glob("*.yaml")))
def test_shipped_study_local_smallest_budget(tmp_path, study_file, tiny_world_env):
    """Every shipped study runs end to end in the local world (real caches, real training)."""
    run_dir = tmp_path / "run"
    sweep(
        ROOT / "studies" / study_file,
        "--local",
        "--run-dir",
        str(run_dir),
        "--trials-per-cell",
        "1",
        "--epochs",
        "1",
        "--seeds",
        "0",
        **tiny_world_env,
    )
    url = f"sqlite:///{run_dir / 'study.db'}"
    store = open_store(url)
    runs = store.runs()
    assert runs and all(r.status in ("complete", "pruned") for r in runs)
    finals = [r for r in runs if r.kind == "final"]
    assert finals and all(r.test_metrics and r.param_counts for r in finals)
    assert store.teacher_metrics()
    # where each run ran and where its artifacts are (issue 9): the students went through Tune's storage
    assert all(r.node_host and r.node_id and r.checkpoint_path for r in runs)
    assert all(r.device == "cpu" for r in runs if r.status == "complete")
    for r in finals:
        assert Path(r.student_path).is_relative_to(run_dir / "ray"), r.student_path
        assert (Path(r.student_path) / "model.safetensors").is_file()
    study_name = finals[0].study_name
    ranks = load_ranks(store, study_name)  # per-query test ranks of every final run and teacher
    assert sorted(ranks.runs) == sorted((r.cell, r.seed) for r in finals)
    assert set(ranks.teachers) == {t.cell for t in store.teacher_metrics(study_name) if t.split == "test"}
    for r in finals:
        assert 100 * (ranks.runs[(r.cell, r.seed)].text_ranks < 1).mean() == pytest.approx(
            r.test_metrics["t2i_r1"]
        )
