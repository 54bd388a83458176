"""A study on a real two-node Ray cluster made on this machine (slow).

Two ``ray start`` processes (head + a worker with a custom resource ``node2``), each with its own temp
dir, port and auth token file, so no other Ray on the machine sees them or is touched; they are stopped
by PID (never ``ray stop``). Nodes get only ``tests/`` on PYTHONPATH (for the stub trainer): the
``tinysiglip`` package reaches their workers through the sweep's runtime environment (``py_modules``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from test_sweep_driver import HOOKS  # the stub trainer's hooks

from tinysiglip.results.store import open_store

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: str) -> list[str]:
    kids = subprocess.run(["pgrep", "-P", pid], capture_output=True, text=True).stdout.split()
    out = []
    for k in kids:
        out += [k, *_descendants(k)]
    return out


class LocalCluster:
    """A head and worker nodes started with ``ray start``; ``stop_node`` kills one node's processes."""

    def __init__(self, base: Path, *, worker_prefix: list[str] | None = None):
        self.base = base
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        token = base / "token"
        token.write_text(uuid.uuid4().hex)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "PYTHONPATH": str(ROOT / "tests"),  # the stub trainer only: tinysiglip comes via py_modules
        }
        self.env.pop("RAY_ADDRESS", None)
        self.token_path = token
        self.worker_prefix = worker_prefix or []

    def _start(self, name: str, args: list[str], prefix: list[str] | None = None) -> None:
        cmd = [
            *(prefix or []),
            RAY,
            "start",
            *args,
            "--temp-dir",
            str(self.base / name),
            "--disable-usage-stats",
        ]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")

    def start(self) -> LocalCluster:
        self._start(
            "h", ["--head", "--num-cpus", "1", "--port", str(self.port), "--include-dashboard", "false"]
        )
        self._start(
            "w",
            ["--address", self.address, "--num-cpus", "1", "--resources", '{"node2": 1}'],
            self.worker_prefix,
        )
        return self

    def node_pids(self, name: str) -> list[str]:
        roots = subprocess.run(
            ["pgrep", "-f", str(self.base / name)], capture_output=True, text=True
        ).stdout.split()
        pids = []
        for r in roots:
            pids += [r, *_descendants(r)]
        return sorted(set(pids) - {str(os.getpid())})

    def stop_node(self, name: str) -> None:
        for pid in self.node_pids(name):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self.stop_node("w")
        self.stop_node("h")


@pytest.fixture
def cluster_dir():
    base = Path(tempfile.mkdtemp(prefix="cluster-", dir="/tmp"))  # short: Ray's socket paths have a limit
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def two_nodes(cluster_dir):
    c = LocalCluster(cluster_dir)
    try:
        yield c.start()
    finally:
        c.stop()


def _sweep(cluster: LocalCluster, study: Path, *args, **env):
    cmd = [sys.executable, "-m", "tinysiglip.sweep", str(study), "--address", cluster.address, *args]
    full_env = {**cluster.env, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), **env}
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


def test_study_on_two_nodes_records_both(two_nodes, tmp_path):
    from test_sweep_driver import check_db, write_study

    study = write_study(tmp_path, trials=3, conc=2)
    # a trial needing 2 CPUs fits no 1-CPU node: the dry run says so from the cluster's own nodes
    big = tmp_path / "big.yaml"
    big.write_text(study.read_text().replace("cpus_per_trial: 1", "cpus_per_trial: 2"))
    dry = _sweep(two_nodes, big, "--dry-run")
    assert dry.returncode == 2, dry.stdout + dry.stderr
    assert "2 CPU per trial, but the biggest node has 1" in dry.stderr and "1 node2" in dry.stderr

    run_dir = tmp_path / "run"
    p = _sweep(two_nodes, study, "--run-dir", str(run_dir), "--seeds", "0", *HOOKS, TSL_STUB_SLEEP="1")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert f"attached to the cluster at {two_nodes.address} (--address)" in out
    assert str(two_nodes.token_path) in out and two_nodes.token_path.read_text() not in out

    store, runs = check_db(f"sqlite:///{run_dir / 'study.db'}", trials=3, seeds=(0,))
    assert all(r.node_id and r.node_host and r.node_ip for r in runs), runs
    assert all(r.device == "cpu" for r in runs if r.status == "complete"), runs
    assert len({r.node_id for r in runs}) == 2, "the trials did not spread over both nodes"
    # every evaluation reported its checkpoint through Tune: they live under the artifacts location
    assert all(r.checkpoint_path and Path(r.checkpoint_path).is_relative_to(run_dir / "ray") for r in runs)
    assert all(list(Path(r.checkpoint_path).glob("checkpoint_*/state.json")) for r in runs)


def _hiding(folder: Path) -> list[str]:
    """A command prefix that runs ``ray start`` in its own mount namespace where ``folder`` is empty."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not available")
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "none", str(folder)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.strip()}")
    script = f'mount -t tmpfs none "{folder}" && exec "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def _sweep_on_a_blind_worker(cluster_dir, tmp_path, study_extra: str = "", **env):
    """A sweep whose every trial runs on a worker node that sees an empty cache folder."""
    from test_sweep_driver import write_study

    run_dir = tmp_path / "run"
    caches = run_dir / "fake_caches"  # where stub_caches writes them; empty on the worker node
    caches.mkdir(parents=True)
    cluster = LocalCluster(cluster_dir, worker_prefix=_hiding(caches))
    try:
        cluster.start()
        study = write_study(tmp_path, trials=1, conc=2)  # custom node2: every trial runs on the worker
        study.write_text(
            study.read_text().replace("cpus_per_trial: 1,", "cpus_per_trial: 1, custom: {node2: 1},")
            + study_extra
        )
        p = _sweep(cluster, study, "--run-dir", str(run_dir), "--seeds", "0", *HOOKS, **env)
    finally:
        cluster.stop()
    return p, run_dir, caches


def test_node_that_cannot_see_the_caches_fails_clearly_and_the_sweep_exits_nonzero(cluster_dir, tmp_path):
    p, run_dir, caches = _sweep_on_a_blind_worker(cluster_dir, tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "trial:stubstudy/strong#0" in p.stderr and "trial:stubstudy/flat#0" in p.stderr
    assert "FAILED trial:stubstudy/strong#0 after 3 attempt(s)" in p.stdout and "Traceback" not in p.stdout
    runs = open_store(f"sqlite:///{run_dir / 'study.db'}").runs("stubstudy")
    assert {r.status for r in runs} == {"failed"} and all(r.kind == "trial" for r in runs)
    for r in runs:
        assert "cannot read the cache(s) this run needs" in r.error
        assert str(caches) in r.error and "shared file system" in r.error
        assert "stage: node-local" in r.error


def test_node_local_staging_lets_a_blind_worker_run_the_study(cluster_dir, tmp_path):
    stage = tmp_path / "stage"
    p, run_dir, caches = _sweep_on_a_blind_worker(
        cluster_dir, tmp_path, f"caches: {{stage: node-local, root: {stage}}}\n", TSL_STUB_RECORD_CACHES="1"
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    runs = open_store(f"sqlite:///{run_dir / 'study.db'}").runs("stubstudy")
    assert runs and {r.status for r in runs} == {"complete"}, runs
    # every cache was copied once, from the driver's disk (the worker cannot see it), byte for byte
    staged = sorted(stage.glob("*/*.h5"))
    sources = sorted(caches.glob("*.h5"))
    assert sorted(p.name for p in staged) == sorted(s.name for s in sources)
    for copy in staged:
        assert copy.read_bytes() == (caches / copy.name).read_bytes()
    assert not list(stage.glob("*/*.partial"))
    for r in runs:  # each run read the staged copies, never the driver's paths
        got = json.loads((Path(r.run_dir) / "caches_read.json").read_text())
        assert got and all(Path(path).parent.parent == stage for path, _ in got.values()), got
        assert all(
            head == (caches / Path(path).name).read_bytes()[:40].decode() for path, head in got.values()
        )


def _node_id(cluster: LocalCluster, name: str) -> str:
    import re

    for pid in cluster.node_pids(name):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        m = re.search(r"--node[-_]id=([0-9a-f]{20,})", cmd)
        if m:
            return m.group(1)
    raise AssertionError(f"no node id in the command lines of node {name}")


def test_lost_node_trial_moves_and_resumes_from_its_tune_checkpoint(two_nodes, tmp_path):
    from test_sweep_driver import check_db, write_study

    worker = _node_id(two_nodes, "w")
    run_dir = tmp_path / "run"
    url = f"sqlite:///{run_dir / 'study.db'}"
    study = write_study(tmp_path, trials=2, conc=2)
    cmd = [sys.executable, "-m", "tinysiglip.sweep", str(study), "--address", two_nodes.address]
    env = {
        **two_nodes.env,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
        "TSL_STUB_SLEEP": "2",
    }
    log = tmp_path / "sweep.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [*cmd, "--run-dir", str(run_dir), "--seeds", "0", *HOOKS], cwd=ROOT, env=env, stdout=f, stderr=f
        )
    moved = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and moved is None:
        time.sleep(0.5)
        try:
            running = open_store(url, create=False).runs("stubstudy", kind="trial", status="running")
        except Exception:
            continue
        for r in running:
            if r.node_id == worker and (r.epochs_done or 0) >= 1:
                two_nodes.stop_node("w")  # the node is lost ...
                shutil.rmtree(Path(r.run_dir) / "checkpoint", ignore_errors=True)  # ... with its disk
                moved = r
                break
    assert moved is not None, "no trial ran an epoch on the worker node:\n" + log.read_text()[-3000:]
    assert proc.wait(timeout=400) == 0, log.read_text()[-5000:]

    store, runs = check_db(url, trials=2, seeds=(0,))
    after = store.get_run(moved.id)
    assert after.attempts == 2 and after.node_id != worker, after  # retried, on the other node
    evals = store.evaluations(moved.id)
    epochs = [e.epoch for e in evals]
    assert len(epochs) == len(set(epochs)) and epochs == list(range(1, max(epochs) + 1))
    before = [e for e in evals if e.epoch <= moved.epochs_done]  # done before the node was lost
    assert before and all(e.attempt == 1 for e in before), [(e.epoch, e.attempt) for e in evals]
    assert any(e.attempt == 2 for e in evals) or max(epochs) == moved.epochs_done  # the retry went on
    # its checkpoints in the artifacts location: the newest ones only (what a retry resumes from)
    kept = [
        json.loads((c / "state.json").read_text())["epoch"]
        for c in Path(after.checkpoint_path).glob("checkpoint_*")
    ]
    assert 1 <= len(kept) <= 2 and max(kept) == max(epochs), kept
    assert after.status in ("complete", "pruned")


LISTENERS = r"""
import os, re, subprocess, sys
from types import SimpleNamespace
import ray
from tinysiglip.sweep.options import SweepOptions
from tinysiglip.sweep.runner import start_ray

assert start_ray(SimpleNamespace(local=True), SweepOptions(num_cpus=1, address="local"))
ray.get(ray.remote(lambda: 1).remote())  # a worker process too

def tree(pid):
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [k for c in kids for k in [c, *tree(c)]]

pids = set(tree(os.getpid()))
for line in subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines():
    owners = set(re.findall(r"pid=(\d+)", line))
    if owners & pids:
        print("LISTEN", line.split()[3])
ray.shutdown()
"""


def test_private_ray_listens_on_loopback_only(tmp_path):
    if shutil.which("ss") is None:
        pytest.skip("ss is not available")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run(
        [sys.executable, "-c", LISTENERS], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr
    addresses = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("LISTEN ")]
    assert len(addresses) >= 2, p.stdout  # GCS and raylet at least
    assert all(a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")) for a in addresses), addresses
