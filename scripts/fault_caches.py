"""Fault-suite sections on real tiny caches (issue 11 §4, §5, §7): damaged and wrong caches, the local
world's own checks, a copied world, and a damaged checkpoint between two training attempts.

One tiny local world (two random teachers of widths 32 and 48, a shapes dataset, their caches: seconds)
serves every fault. Each fault is injected into a copy and driven through what a user runs:
``tinysiglip train`` for pixels (the sweep's check at open reads no pixels; every chunk is checked as
training reads it), a stub sweep with the real cache preparation (no ``--caches-fn``: caches are found
under ``$TINYSIGLIP_CACHE_DIR`` and opened with their teacher's identity before the first trial) for
embeddings and swapped teachers, and the local world itself for what it calls ready.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml
from cache_faults import fault_world, flip_chunk_bytes, write_nan_bytes
from fault_kit import HOOKS, ROOT, Row, _env, _verdict
from test_sweep_driver import STUDY


def _world(root: Path):
    with contextlib.redirect_stdout(io.StringIO()):
        return fault_world(root)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True, timeout=600
    )


def _train_config(path: Path, caches: dict[str, Path], **train) -> Path:
    config = {
        "data": {f"{split}_cache": str(p) for split, p in caches.items()},
        "student": {"name": "test_tiny"},
        "optim": {"batch_size": 16, "lr": 1e-3},
        "train": {"epochs": 2, "threads": 1, **train},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    return next((ln for ln in lines if ln.startswith("error:")), lines[-1] if lines else "")


def _clean_refusal(p: subprocess.CompletedProcess, *names: str) -> bool:
    return p.returncode == 2 and "Traceback" not in p.stderr and all(n in p.stderr for n in names)


def _cache_study(root: Path, world) -> tuple[Path, dict]:
    """A stub study whose teacher is the world's local-m folder and whose data is the world's shapes
    (COCO files), with its three caches built where the sweep looks for them."""
    from tinysiglip.cache import build_cache
    from tinysiglip.sweep.caches import load_split, planned_cache_path
    from tinysiglip.sweep.study import load_study

    shapes = world.shapes_dir
    splits = {
        s: {
            "captions": str(shapes / "annotations" / f"captions_{s}.json"),
            "images": str(shapes / "images" / s),
        }
        for s in ("train", "val", "test")
    }
    text = STUDY.replace("TRIALS", "1").replace("GPUS", "0").replace("CONC", "1")
    text = text.replace(
        "{t: {source: google/siglip2-base-patch16-224}}",
        f"{{t: {{source: {world.teacher_path('local-m')}}}}}",
    )
    text = text.replace(
        "{d: {kind: local_shapes}}",
        "{d: {splits: " + yaml.safe_dump(splits, default_flow_style=True).strip() + "}}",
    )
    study_file = root / "study.yaml"
    study_file.write_text(text)
    intact = root / "caches"
    planned = {}
    for spec in load_study(study_file, run_dir=root / "unused").caches_needed():
        out = planned_cache_path(spec, local=False, cache_dir=intact)
        if not out.exists():
            build_cache(
                str(world.teacher_path("local-m")),
                load_split(spec.dataset_spec, spec.split),
                out,
                progress=False,
            )
        planned[spec.split] = out.relative_to(intact)
    return study_file, planned


def _nan_through_hdf5(path: Path, dataset: str, row: int) -> None:
    """NaN written by a tool through HDF5, checksums brought up to date: only the finiteness check sees it."""
    from tinysiglip.cache.format import dataset_checksum, read_attrs, write_attrs

    with h5py.File(path, "r+") as handle:
        handle[dataset][row, :4] = np.nan
        checksums = read_attrs(handle.attrs)["checksums"]
        checksums[dataset] = dataset_checksum(handle[dataset])
        write_attrs(handle.attrs, {"checksums": checksums})


def _sweep_on_damaged(
    root: Path, name: str, study: Path, planned: dict, damage
) -> tuple[subprocess.CompletedProcess, Path, list]:
    caches = root / f"caches-{name}"
    shutil.copytree(root / "caches", caches)
    target = damage(caches, planned)
    run_dir = root / f"run-{name}"
    p = _cli(
        "tinysiglip.sweep",
        str(study),
        "--run-dir",
        str(run_dir),
        *HOOKS[:2],
        *HOOKS[-2:],
        TINYSIGLIP_CACHE_DIR=str(caches),
    )  # the stub trainer, the real cache preparation and teacher reference
    trials = []
    if (run_dir / "study.db").exists():
        from tinysiglip.results.store import open_store

        with open_store(f"sqlite:///{run_dir / 'study.db'}", create=False) as store:
            trials = store.runs("stubstudy")
    return p, target, trials


def cache_faults(root: Path) -> list[Row]:
    """Damaged and wrong caches refused before training uses them; the local world rebuilds what it
    cannot call ready; a copied world is still accepted."""
    from tinysiglip.cache import open_cache

    world, size = _world(root / "tiny_world")
    root = root / "caches"
    m = world.base / "caches" / "local-m"
    rows = []

    # pixels: no check at open reads them; `tinysiglip train` must stop at the first damaged chunk
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    flipped = work / "flipped_train.h5"
    shutil.copy(m / "train.h5", flipped)
    flip_chunk_bytes(flipped, "pixels", 5, 256)
    config = _train_config(work / "flipped.yaml", {"train": flipped, "val": m / "val.h5"})
    p = _cli("tinysiglip", "train", "--config", str(config), "--run-dir", str(work / "flipped-run"))
    wrote = sorted(x.name for x in (work / "flipped-run").glob("*"))
    ok = (
        p.returncode != 0
        and "Traceback" not in p.stderr
        and str(flipped) in p.stderr
        and "cache verify" in p.stderr
    )
    ok = ok and _result(work / "flipped-run").get("status") != "complete"
    rows.append(
        Row(
            "256 flipped bytes in train pixels -> train",
            f"exit {p.returncode}: {_error_line(p.stderr)[:50]}; wrote {wrote}",
            "stops naming the file and `cache verify`",
            _verdict(ok, "refused"),
        )
    )

    study, planned = _cache_study(root, world)
    for name, what, damage, names in (
        (
            "nan-test",
            "NaN bytes in test text embeddings -> sweep",
            lambda c, p: (write_nan_bytes(c / p["test"], "text_embeds", 3), c / p["test"])[1],
            ["text_embeds", "damaged"],
        ),
        (
            "nan-train",
            "NaN (checksum redone) in train embeddings -> sweep",
            lambda c, p: (_nan_through_hdf5(c / p["train"], "image_embeds", 2), c / p["train"])[1],
            ["image_embeds", "non-finite"],
        ),
        (
            "swapped",
            "local-s caches in local-m's place -> sweep",
            lambda c, p: (
                shutil.copy(world.base / "caches" / "local-s" / "train.h5", c / p["train"]),
                c / p["train"],
            )[1],
            ["embed_dim: expected", "another teacher"],
        ),
    ):
        p, target, runs = _sweep_on_damaged(root, name, study, planned, damage)
        ok = _clean_refusal(p, str(target), *names) and not runs
        rows.append(
            Row(
                what,
                f"exit {p.returncode}, {len(runs)} run(s) in the database",
                "exit 2 naming file and fault, no run",
                _verdict(ok, "refused"),
            )
        )

    # the local world: what it calls ready is verified; damaged files are set aside and rebuilt
    for split, what, damage, said in (
        ("train", "truncated train.h5 -> local world", lambda b: b[: len(b) // 2], "truncated"),
        (
            "val",
            "garbage val.h5 -> local world",
            lambda b: np.random.default_rng(0).bytes(8192),
            "not an HDF5 file",
        ),
    ):
        path = m / f"{split}.h5"
        path.write_bytes(damage(path.read_bytes()))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            world.ensure(("local-m",))
        try:
            open_cache(path, verify=True).close()
            intact = True
        except Exception:  # noqa: BLE001 - a cache that is still damaged is the FAIL this row looks for
            intact = False
        kept = path.with_name(f"{split}.h5.rejected").exists()
        ok = intact and kept and f"rebuilding {path}" in out.getvalue() and said in out.getvalue()
        rows.append(
            Row(
                what,
                f"rebuilt: {intact}, old kept: {kept}",
                "rebuilt, old file kept, reason said",
                _verdict(ok, "survived"),
            )
        )

    # a copied world: the teacher is known by its content, so the caches stay valid where they now are
    from tinysiglip.local_world import LocalWorld

    copy = root / "copied"
    shutil.copytree(world.root, copy)
    moved = LocalWorld(copy, size, progress=False)
    caches = moved.base / "caches" / "local-m"
    before = {p.name: p.stat().st_mtime_ns for p in caches.glob("*.h5")}
    out = io.StringIO()
    error = None
    with contextlib.redirect_stdout(out):
        try:
            moved.ensure(("local-m",))
            for split in ("train", "val", "test"):
                open_cache(
                    caches / f"{split}.h5", expect={"teacher_source": str(moved.teacher_path("local-m"))}
                ).close()
        except Exception as exc:  # noqa: BLE001 - refusing a copied world is this row's FAIL
            error = str(exc).splitlines()[0][:60]
    after = {p.name: p.stat().st_mtime_ns for p in caches.glob("*.h5")}
    ok = error is None and before == after and "rebuilding" not in out.getvalue()
    rows.append(
        Row(
            "copied world (cp -r) -> local world + open_cache",
            error or ("accepted as is" if before == after else "rebuilt"),
            "accepted, nothing rebuilt",
            _verdict(ok, "survived"),
        )
    )
    return rows


def checkpoint_fault(root: Path) -> list[Row]:
    """A trial's checkpoint damaged between two attempts: set aside, training starts over, says so."""
    from tinysiglip.train import run_training

    world, _ = _world(root / "tiny_world")
    root = root / "checkpoint"
    root.mkdir(parents=True, exist_ok=True)
    m = world.base / "caches" / "local-m"
    caches = {s: m / f"{s}.h5" for s in ("train", "val", "test")}
    config = _train_config(root / "train.yaml", caches)
    run_dir = root / "run"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        stopped = run_training(
            yaml.safe_load(config.read_text()), run_dir=run_dir, report=lambda e: e["epoch"] == 1
        )
    weights = run_dir / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    weights.write_bytes(bytes(data))
    p = _cli("tinysiglip", "train", "--config", str(config), "--run-dir", str(run_dir))
    straight = _cli("tinysiglip", "train", "--config", str(config), "--run-dir", str(root / "straight"))
    aside = sorted(x.name for x in run_dir.iterdir() if ".damaged-" in x.name)
    result, clean = _result(run_dir), _result(root / "straight")
    same = bool(clean.get("val_metrics")) and result.get("val_metrics") == clean["val_metrics"]
    ok = (
        stopped["status"] == "stopped"
        and p.returncode == 0
        and straight.returncode == 0
        and "damaged checkpoint" in p.stderr
        and len(aside) == 1
        and result.get("resumed_from_epoch") is None
        and same
    )
    return [
        Row(
            "checkpoint damaged between attempts",
            f"exit {p.returncode}, set aside: {aside[:1]}, same as a clean run: {same}",
            "set aside, warned, from scratch",
            _verdict(ok, "survived"),
        )
    ]


def _result(run_dir: Path) -> dict:
    import json

    path = run_dir / "result.json"
    return json.loads(path.read_text()) if path.exists() else {}
