"""Node-local staging of teacher caches (``caches: {stage: node-local}``): one verified copy per node."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tinysiglip.cache import open_cache
from tinysiglip.cache.format import CacheError
from tinysiglip.cache.staging import stage_cache, staged_path


def _fingerprint(path: Path) -> str:
    return open_cache(path).meta["request_fingerprint"]


def _serving(path: Path, calls: list, *, delay: float = 0.0, mangle=None):
    """A ``fetch`` like the driver's: yields the file's bytes in chunks and counts how often it ran."""

    def fetch():
        calls.append(1)
        data = path.read_bytes()
        if mangle:
            data = mangle(data)
        for i in range(0, len(data), 1 << 16):
            time.sleep(delay)
            yield data[i : i + (1 << 16)]

    return fetch


def test_concurrent_callers_make_one_copy_that_later_calls_reuse(tiny_caches, tmp_path):
    source = tiny_caches["train"]
    fp = _fingerprint(source)
    hidden = tmp_path / "not-on-this-node" / "train.h5"  # the node cannot open the source path
    calls, results, errors = [], [], []

    def trial():
        try:
            results.append(
                stage_cache(
                    hidden,
                    fingerprint=fp,
                    root=tmp_path / "stage",
                    size=source.stat().st_size,
                    fetch=_serving(source, calls, delay=0.001),
                )
            )
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=trial) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(calls) == 1, "several trials copied the cache"
    assert len(set(results)) == 1 and results[0] == staged_path(hidden, fp, tmp_path / "stage")
    assert results[0].read_bytes() == source.read_bytes()
    assert open_cache(results[0], expect={"request_fingerprint": fp}).meta["split"] == "train"
    assert not list(results[0].parent.glob("*.partial"))

    # another study (another source path, same fingerprint) reuses the copy without fetching
    again = stage_cache(
        tmp_path / "elsewhere" / "train.h5",
        fingerprint=fp,
        root=tmp_path / "stage",
        fetch=_serving(source, calls),
    )
    assert again == results[0] and len(calls) == 1


def test_a_readable_source_is_copied_directly(tiny_caches, tmp_path):
    source = tiny_caches["val"]
    staged = stage_cache(source, fingerprint=_fingerprint(source), root=tmp_path / "stage")
    assert staged != source and staged.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "another cache"])
def test_a_bad_copy_is_refused_and_nothing_is_kept(tiny_caches, tmp_path, damage):
    source = tiny_caches["train"]
    fp = _fingerprint(source)
    if damage == "truncated":
        served, mangle = source, lambda data: data[: len(data) // 2]
    else:  # the val cache's bytes where the train cache was asked for
        served, mangle = tiny_caches["val"], None
    with pytest.raises(CacheError) as info:
        stage_cache(
            tmp_path / "hidden" / "train.h5",
            fingerprint=fp,
            root=tmp_path / "stage",
            size=source.stat().st_size if damage == "truncated" else None,
            fetch=_serving(served, [], mangle=mangle),
        )
    assert "is not the cache it should be" in str(info.value)
    folder = staged_path(tmp_path / "hidden" / "train.h5", fp, tmp_path / "stage").parent
    assert sorted(p.name for p in folder.iterdir()) == ["train.h5.lock"]


def test_a_damaged_staged_copy_is_replaced(tiny_caches, tmp_path):
    source = tiny_caches["test"]
    fp = _fingerprint(source)
    target = staged_path(source, fp, tmp_path / "stage")
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes()[:1000])  # a copy cut short by a full disk, say
    said = []
    staged = stage_cache(source, fingerprint=fp, root=tmp_path / "stage", echo=said.append)
    assert staged == target and staged.read_bytes() == source.read_bytes()
    assert any("replacing the damaged staged copy" in s for s in said)


def test_an_unreadable_source_without_fetch_is_a_clear_error(tmp_path):
    with pytest.raises(CacheError, match="cannot read it"):
        stage_cache(tmp_path / "missing.h5", fingerprint=None, root=tmp_path / "stage")


def test_study_file_caches_section(tmp_path):
    from test_sweep_driver import write_study

    from tinysiglip.sweep.search_space import StudyError
    from tinysiglip.sweep.study import load_study

    path = write_study(tmp_path)
    assert load_study(path).cache_stage == "shared"
    path.write_text(path.read_text() + f"caches: {{stage: node-local, root: {tmp_path / 'stage'}}}\n")
    study = load_study(path)
    assert (study.cache_stage, study.cache_stage_root) == ("node-local", str(tmp_path / "stage"))
    text = path.read_text()
    path.write_text(text.replace("node-local", "nodelocal").replace(str(tmp_path / "stage"), "scratch/stage"))
    with pytest.raises(StudyError) as info:
        load_study(path)
    assert "caches.stage" in str(info.value) and "caches.root: 'scratch/stage' is relative" in str(info.value)


def test_a_trial_reads_the_staged_copies(tiny_caches, tmp_path):
    """What the trainable does before training with ``caches.stage: node-local`` (no Ray needed when
    the node can read the source itself)."""
    from tinysiglip.sweep.trainable import stage_run_caches

    config = {"data": {"train_cache": str(tiny_caches["train"]), "val_cache": str(tiny_caches["val"])}}
    stage = {
        "root": str(tmp_path / "stage"),
        "source_node": None,
        "caches": {
            k: {"fingerprint": _fingerprint(Path(v)), "size": Path(v).stat().st_size}
            for k, v in config["data"].items()
        },
    }
    staged = stage_run_caches(config, stage, echo=lambda _m: None)
    for key in ("train_cache", "val_cache"):
        assert Path(staged["data"][key]).parent.parent == tmp_path / "stage"
        assert Path(staged["data"][key]).read_bytes() == Path(config["data"][key]).read_bytes()
    assert config["data"]["train_cache"] == str(tiny_caches["train"])  # the caller's config is untouched
