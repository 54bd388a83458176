"""Running on a Ray cluster, the pure parts: which Ray (attach or private), what the nodes offer, whether a
trial fits one, what trials check on their node, and the study database's added columns.

The real two-node cluster runs in tests/test_cluster_ray.py (slow)."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tinysiglip.results.store import open_store
from tinysiglip.sweep.cluster import (
    ClusterTarget,
    check_fits,
    check_reachable,
    node_capacities,
    resolve_target,
    token_auth_note,
    trial_request,
)
from tinysiglip.sweep.options import SweepError

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------- address


def test_address_flag_then_environment_then_recorded_cluster():
    never = lambda: pytest.fail("the recorded cluster must not be consulted")  # noqa: E731
    t = resolve_target("10.0.0.1:6379", {"RAY_ADDRESS": "10.0.0.2:6379"}, recorded=never)
    assert t == ClusterTarget("10.0.0.1:6379", "--address") and t.attach
    t = resolve_target(None, {"RAY_ADDRESS": "auto"}, recorded=never)
    assert t == ClusterTarget("auto", "RAY_ADDRESS")
    assert not resolve_target("local", {"RAY_ADDRESS": "10.0.0.2:6379"}, recorded=never).attach
    alive = resolve_target(None, {}, recorded=lambda: "192.0.2.2:6379", reachable=lambda a: True)
    assert alive.address == "192.0.2.2:6379" and "ray start" in alive.source
    stale = resolve_target(None, {}, recorded=lambda: "192.0.2.2:6379", reachable=lambda a: False)
    assert not stale.attach and "not running" in stale.source  # a stale file: private Ray, not a hang
    assert resolve_target(None, {}, recorded=lambda: None) == ClusterTarget(None, "private")


def test_unreachable_address_is_a_clean_error():
    port = free_port()  # nothing listens there any more
    with pytest.raises(
        SweepError, match=rf"cannot reach a Ray cluster at 127.0.0.1:{port} \(from --address\)"
    ):
        check_reachable(ClusterTarget(f"127.0.0.1:{port}", "--address"))
    check_reachable(ClusterTarget(None, "private"))  # nothing to reach


def test_cli_unreachable_address_exits_2(tmp_path):
    from test_sweep_driver import write_study

    port = free_port()
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinysiglip.sweep",
            str(write_study(tmp_path)),
            "--address",
            f"127.0.0.1:{port}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port}" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()


def test_token_note_says_where_the_token_is_never_what(monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef")
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    note = token_auth_note(env)
    if note is None:
        pytest.skip("this Ray has no token authentication")
    assert str(token_file) in note and "0123456789abcdef" not in note
    assert "RAY_AUTH_TOKEN environment variable" in token_auth_note({**env, "RAY_AUTH_TOKEN": "secret"})


def test_worker_runtime_env_ships_the_package_and_settings():
    import tinysiglip
    from tinysiglip.sweep.runner import worker_runtime_env

    env = worker_runtime_env({"TSL_STUB_SLEEP": "1", "TINYSIGLIP_LOCAL_WORLD": "/w", "HOME": "/root"})
    assert env["env_vars"] == {"TSL_STUB_SLEEP": "1", "TINYSIGLIP_LOCAL_WORLD": "/w"}
    assert env["py_modules"] == [str(Path(tinysiglip.__file__).parent)]
    in_job = worker_runtime_env({"RAY_JOB_CONFIG_JSON_ENV_VAR": "{}"})
    assert "py_modules" not in in_job  # a submitted job's working_dir already carries the project


def test_inside_a_ray_job_the_jobs_own_variables_are_not_sent_again():
    """Ray refuses a driver runtime env naming a variable the submitted job's runtime env sets (found
    with `ray job submit --runtime-env-json '{"env_vars": {"TSL_STUB_SLEEP": "1"}}'` on a 2-node cluster)."""
    import json

    from tinysiglip.sweep.runner import worker_runtime_env

    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip", "env_vars": {"TSL_STUB_SLEEP": "1"}}}
    environ = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job), "TSL_STUB_SLEEP": "1", "TINYSIGLIP_X": "2"}
    assert worker_runtime_env(environ) == {"env_vars": {"TINYSIGLIP_X": "2"}}
    unreadable = {"RAY_JOB_CONFIG_JSON_ENV_VAR": "not json", "TSL_STUB_SLEEP": "1"}
    assert worker_runtime_env(unreadable) == {}  # cannot tell: the job's own environment stands


# ----------------------------------------------------------------------------------- resources

HEAD = {
    "NodeID": "aa" * 28,
    "Alive": True,
    "NodeManagerHostname": "head",
    "Resources": {
        "CPU": 2.0,
        "memory": 1e9,
        "object_store_memory": 1e8,
        "node:192.0.2.2": 1.0,
        "node:__internal_head__": 1.0,
    },
}
GPU_WORKER = {
    "NodeID": "bb" * 28,
    "Alive": True,
    "NodeManagerHostname": "gpu1",
    "Resources": {"CPU": 8.0, "GPU": 2.0, "accelerator_type:H100": 1.0, "bigmem": 1.0},
}
DEAD = {"NodeID": "cc" * 28, "Alive": False, "NodeManagerHostname": "gone", "Resources": {"CPU": 64.0}}


def test_node_capacities_keep_alive_nodes_and_study_resources():
    head, gpu = node_capacities([HEAD, GPU_WORKER, DEAD])
    assert (head.host, head.cpu, head.gpu, head.custom) == ("head", 2.0, 0.0, {})
    assert (gpu.host, gpu.cpu, gpu.gpu, gpu.custom) == ("gpu1", 8.0, 2.0, {"bigmem": 1.0})


def test_gpu_trial_fits_a_gpu_worker_behind_a_cpu_only_head():
    nodes = node_capacities([HEAD, GPU_WORKER])
    assert check_fits({"cpu": 4, "gpu": 0.25}, nodes, where="s.yaml").host == "gpu1"
    assert check_fits({"cpu": 1, "bigmem": 1}, nodes, where="s.yaml").host == "gpu1"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"cpu": 16}, r"16 CPU per trial, but the biggest node has 8 \(gpu1 \(8 CPU, 2 GPU, 1 bigmem\)\)"),
        ({"cpu": 1, "gpu": 4}, r"4 GPU per trial, but the biggest node has 2 \(gpu1"),
        ({"cpu": 1, "tpu": 1}, r"1 tpu per trial, but the biggest node has 0"),
    ],
)
def test_trial_that_fits_no_node_names_resource_and_biggest_node(request_, message):
    with pytest.raises(SweepError, match=message) as err:
        check_fits(request_, node_capacities([HEAD, GPU_WORKER, DEAD]), where="s.yaml")
    assert "gone" not in str(err.value)  # a dead node offers nothing


def test_resources_that_fit_only_apart_are_an_error():
    small_gpu = {**GPU_WORKER, "Resources": {"CPU": 1.0, "GPU": 1.0}}
    with pytest.raises(SweepError, match="no single node has all of 2 cpu, 1 gpu"):
        check_fits({"cpu": 2, "gpu": 1}, node_capacities([HEAD, small_gpu]), where="s.yaml")


def _study(tmp_path, resources: str, local=False):
    from test_sweep_driver import write_study

    from tinysiglip.sweep.study import load_study

    path = write_study(tmp_path)
    path.write_text(path.read_text().replace("resources: {cpus_per_trial: 1, gpus_per_trial: 0}", resources))
    return load_study(path, local=local, run_dir=tmp_path / "run")


def test_study_custom_resources_reach_the_request_and_the_check(tmp_path):
    from tinysiglip.sweep.preflight import check_resources

    study = _study(tmp_path, "resources: {cpus_per_trial: 2, gpus_per_trial: 0.5, custom: {bigmem: 1}}")
    assert trial_request(study) == {"cpu": 2.0, "gpu": 0.5, "bigmem": 1.0}
    assert study.resources.as_ray() == {"cpu": 2.0, "gpu": 0.5, "bigmem": 1.0}
    check_resources(study, nodes=[HEAD, GPU_WORKER])  # the GPU worker takes it
    with pytest.raises(SweepError, match="1 bigmem per trial"):
        check_resources(study, nodes=[HEAD, {**GPU_WORKER, "Resources": {"CPU": 8.0, "GPU": 1.0}}])
    with pytest.raises(SweepError, match="bigmem"):  # this machine has no custom resources
        check_resources(study, gpus_available=1, cpus_available=4)


def test_more_cpus_per_trial_than_this_machine_is_an_error_not_a_hang(tmp_path):
    from tinysiglip.sweep.preflight import check_resources

    study = _study(tmp_path, "resources: {cpus_per_trial: 64, gpus_per_trial: 0}")
    with pytest.raises(SweepError, match=r"64 CPU per trial, but the biggest node has 2 \(this machine"):
        check_resources(study, cpus_available=2)


def test_custom_resource_named_like_a_builtin_is_refused(tmp_path):
    from tinysiglip.errors import TinySigLIPError

    with pytest.raises(TinySigLIPError, match="built-in"):
        _study(tmp_path, "resources: {cpus_per_trial: 1, custom: {GPU: 1}}")


# ------------------------------------------------------------------------------------- trials


def test_trial_refuses_a_cache_its_node_cannot_read(tmp_path):
    from tinysiglip.sweep.trainable import CacheNotReadable, check_caches_readable

    readable = tmp_path / "train.h5"
    readable.write_bytes(b"x")
    node = {"node_host": "worker7", "node_ip": "10.0.0.7", "node_id": "abc"}
    cfg = {"data": {"train_cache": str(readable), "val_cache": str(tmp_path / "nope" / "val.h5")}}
    with pytest.raises(CacheNotReadable) as err:
        check_caches_readable(cfg, node)
    text = str(err.value)
    assert "worker7 (10.0.0.7, Ray node abc)" in text and str(tmp_path / "nope" / "val.h5") in text
    assert "data.val_cache" in text and "train.h5" not in text and "shared file system" in text
    cfg["data"]["val_cache"] = str(readable)
    check_caches_readable(cfg, node)


# ------------------------------------------------------------------------------------- database


def test_old_database_gains_the_location_columns_and_keeps_its_rows(tmp_path):
    db = tmp_path / "old.db"
    store = open_store(db)
    rec = store.start_run(
        study_name="s", cell="c", kind="trial", optuna_study_name="s/c", optuna_trial_number=0
    )
    store.close()
    con = sqlite3.connect(db)  # make it a database of the previous schema
    for col in ("node_id", "node_host", "node_ip", "student_path", "checkpoint_path"):
        con.execute(f"ALTER TABLE tsl_runs DROP COLUMN {col}")
    con.commit()
    con.close()

    store = open_store(db, create=False)
    (old,) = store.runs("s")
    assert old.id == rec.id and old.node_host is None and old.status == "running"
    store.set_run_location(rec.id, node_id="n1", node_host="worker7", node_ip="10.0.0.7", device="cpu")
    store.set_run_location(rec.id, student_path="/shared/ray/x/checkpoint_000003")
    got = store.get_run(rec.id)
    assert (got.node_id, got.node_host, got.node_ip, got.device) == ("n1", "worker7", "10.0.0.7", "cpu")
    assert got.student_path == "/shared/ray/x/checkpoint_000003"
    from tinysiglip.results.frames import load_runs

    assert {"node_host", "student_path", "checkpoint_path"} <= set(load_runs(store, "s").columns)


def test_artifacts_location_takes_a_uri_as_is_and_a_path_absolute(tmp_path, monkeypatch):
    from tinysiglip.sweep.runner import artifacts_location

    assert artifacts_location("s3://bucket/tsl", tmp_path) == "s3://bucket/tsl"
    assert artifacts_location(None, tmp_path) == str(tmp_path / "ray") and (tmp_path / "ray").is_dir()
    monkeypatch.chdir(tmp_path)
    assert artifacts_location("shared/ray", tmp_path / "run") == str(tmp_path / "shared" / "ray")


def test_storage_uri_names_the_filesystem():
    from types import SimpleNamespace

    from tinysiglip.sweep.state import _storage_uri

    def trial(kind):
        return SimpleNamespace(storage=SimpleNamespace(storage_filesystem=SimpleNamespace(type_name=kind)))

    assert _storage_uri(trial("local"), "/shared/ray/t1") == "/shared/ray/t1"
    assert (
        _storage_uri(trial("s3"), "bucket/tsl/t1/checkpoint_000002") == "s3://bucket/tsl/t1/checkpoint_000002"
    )
    assert _storage_uri(trial("s3"), None) is None


def test_failed_runs_are_named_with_node_and_last_error_line(tmp_path):
    from tinysiglip.sweep.summary import failed_run_lines

    store = open_store(tmp_path / "s.db")
    ok = store.start_run(
        study_name="s", cell="c", kind="trial", optuna_study_name="s/c", optuna_trial_number=0
    )
    bad = store.start_run(study_name="s", cell="c", kind="final", optuna_study_name="s/c", seed=1)
    store.finish_run(ok.id, "complete", objective=1.0)
    store.set_run_location(bad.id, node_host="worker7")
    store.finish_run(bad.id, "failed", error="Traceback ...\nCacheNotReadable: node worker7 cannot read x.h5")
    keys, lines = failed_run_lines(store, "s")
    assert keys == ["final:s/c@seed1"]
    assert lines == [
        "  FAILED final:s/c@seed1 after 1 attempt(s) on worker7: CacheNotReadable: node worker7 cannot read x.h5"
    ]
