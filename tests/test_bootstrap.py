"""Paired bootstrap over test images (tinysiglip.results.bootstrap) and stored per-query ranks."""

from __future__ import annotations

import numpy as np
import pytest

from tinysiglip.results.bootstrap import bootstrap_recall, image_hits, resample_counts
from tinysiglip.results.ranks import QueryRanks


def _random_ranks(rng: np.random.Generator, owner: np.ndarray, p_hit: float) -> QueryRanks:
    n = int(owner.max()) + 1
    image = np.where(rng.random(n) < p_hit, 0, rng.integers(1, 50, n))
    text = np.where(rng.random(owner.size) < p_hit, 0, rng.integers(1, 50, owner.size))
    return QueryRanks(image, text, owner)


def _owner(rng: np.random.Generator, num_images: int) -> np.ndarray:
    """Captions grouped by image, 1-7 per image (unequal: T2I is a ratio, not a mean of images)."""
    return np.repeat(np.arange(num_images), rng.integers(1, 8, num_images))


def test_identical_runs_give_an_interval_of_exactly_zero():
    rng = np.random.default_rng(1)
    owner = _owner(rng, 60)
    a = [_random_ranks(rng, owner, 0.3), _random_ranks(rng, owner, 0.5)]
    b = [QueryRanks(r.image_ranks.copy(), r.text_ranks.copy(), owner) for r in a]
    result = bootstrap_recall({"a": a, "b": b}, [("a", "b")], resamples=1000, seed=3)
    for d in ("i2t", "t2i", "mean"):
        iv = result.differences[("a", "b")][d]
        assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)
        assert not iv.excludes_zero
        assert result.groups["a"][d] == result.groups["b"][d]
        assert result.groups["a"][d].low < result.groups["a"][d].high  # the groups themselves vary


def test_a_constant_shift_gives_the_shift():
    """A: every query correct. B: seed 0 every query correct, seed 1 none. Averaged over B's seeds
    every image and caption is hit half the time, so A - B is +50 in every resample."""
    rng = np.random.default_rng(2)
    owner = _owner(rng, 40)
    n, m = 40, owner.size
    hit = QueryRanks(np.zeros(n), np.zeros(m), owner)
    miss = QueryRanks(np.full(n, 3), np.full(m, 7), owner)
    result = bootstrap_recall({"a": [hit, hit], "b": [hit, miss]}, [("a", "b"), ("b", "a")], resamples=1000)
    for d in ("i2t", "t2i", "mean"):
        up, down = result.differences[("a", "b")][d], result.differences[("b", "a")][d]
        assert (up.estimate, up.low, up.high) == pytest.approx((50.0, 50.0, 50.0), abs=1e-9)
        assert (down.low, down.high) == pytest.approx((-50.0, -50.0), abs=1e-9)
        assert up.excludes_zero and down.excludes_zero
        assert result.groups["b"][d].estimate == pytest.approx(50.0)


def _slow_reference(groups, pair, num_images, resamples, seed, k=1, level=0.95):
    """Straight from the definition: per resample, the list of drawn images, each run's Recall@K on
    those images (with their captions) by loops, averaged over seeds, then A - B."""
    draws = []
    for counts in resample_counts(num_images, resamples, seed):
        for row in counts:
            draws.append([i for i in range(num_images) for _ in range(int(row[i]))])

    def run_value(r: QueryRanks, images: list[int]) -> tuple[float, float]:
        captions_of = {
            i: [j for j in range(r.caption_image.size) if r.caption_image[j] == i] for i in set(images)
        }
        i2t = sum(1 for i in images if r.image_ranks[i] < k) / len(images)
        caps = [j for i in images for j in captions_of[i]]
        t2i = sum(1 for j in caps if r.text_ranks[j] < k) / len(caps)
        return 100 * i2t, 100 * t2i

    def group_value(runs, images):
        values = np.array([run_value(r, images) for r in runs]).mean(axis=0)
        return np.array([values[0], values[1], values.mean()])

    a, b = pair
    diffs = np.array([group_value(groups[a], im) - group_value(groups[b], im) for im in draws])
    tail = (1 - level) / 2 * 100
    return np.percentile(diffs, [tail, 100 - tail], axis=0)


def test_agrees_with_a_slow_reference_on_a_small_case():
    rng = np.random.default_rng(5)
    owner = _owner(rng, 25)
    groups = {
        "a": [_random_ranks(rng, owner, 0.6), _random_ranks(rng, owner, 0.4)],
        "b": [
            _random_ranks(rng, owner, 0.3),
            _random_ranks(rng, owner, 0.35),
            _random_ranks(rng, owner, 0.2),
        ],
    }
    result = bootstrap_recall(groups, [("a", "b")], resamples=300, seed=11)
    low, high = _slow_reference(groups, ("a", "b"), 25, 300, 11)
    for j, d in enumerate(("i2t", "t2i", "mean")):
        iv = result.differences[("a", "b")][d]
        assert iv.low == pytest.approx(low[j], abs=1e-9) and iv.high == pytest.approx(high[j], abs=1e-9)
    # the point estimate is the full test set's difference of seed means
    full = [np.mean([(r.image_ranks < 1).mean() for r in groups[g]]) * 100 for g in ("a", "b")]
    assert result.differences[("a", "b")]["i2t"].estimate == pytest.approx(full[0] - full[1])


def test_seeded_and_reproducible_and_covers_a_real_difference():
    rng = np.random.default_rng(7)
    owner = _owner(rng, 400)
    groups = {"good": [_random_ranks(rng, owner, 0.6)], "bad": [_random_ranks(rng, owner, 0.3)]}
    one = bootstrap_recall(groups, [("good", "bad")], resamples=1000, seed=4)
    two = bootstrap_recall(groups, [("good", "bad")], resamples=1000, seed=4)
    other = bootstrap_recall(groups, [("good", "bad")], resamples=1000, seed=5)
    assert one == two and one != other
    diff = one.differences[("good", "bad")]["i2t"]
    assert diff.excludes_zero and diff.low < 30 < diff.high  # true difference +30 points
    assert diff.fmt(signed=True, mark=True).endswith("]*")


def test_resample_counts_draw_every_image_set_of_the_right_size():
    chunks = list(resample_counts(30, 600, seed=0))
    assert sum(c.shape[0] for c in chunks) == 600
    assert all((c.sum(axis=1) == 30).all() for c in chunks)


def test_groups_on_different_test_sets_are_refused():
    rng = np.random.default_rng(3)
    a = _random_ranks(rng, _owner(rng, 20), 0.5)
    b = _random_ranks(rng, _owner(rng, 21), 0.5)
    with pytest.raises(ValueError, match="different test set"):
        bootstrap_recall({"a": [a], "b": [b]}, [("a", "b")])
    with pytest.raises(ValueError, match="unknown groups: c"):
        bootstrap_recall({"a": [a]}, [("a", "c")])
    with pytest.raises(ValueError, match="different test sets"):
        image_hits([a, b])


def test_query_ranks_validate_their_arrays():
    with pytest.raises(ValueError, match="caption_image points outside"):
        QueryRanks([0, 1], [0, 0, 0], [0, 1, 2])
    with pytest.raises(ValueError, match="text_ranks has 2 entries"):
        QueryRanks([0, 1], [0, 0], [0, 1, 1])
    with pytest.raises(ValueError, match="lacks caption_image"):
        QueryRanks.from_payload({"image_ranks": [0], "text_ranks": [0]})


# ------------------------------------------------------------------------------ ranks in the database


def _final_run(store, cell: str, seed: int):
    return store.start_run(
        study_name="s",
        cell=cell,
        kind="final",
        optuna_study_name=f"s/{cell}",
        seed=seed,
        source_trial_number=0,
    )


def test_ranks_round_trip_through_the_store_and_reruns_replace_them(tmp_path):
    from sqlalchemy import text

    from tinysiglip.results import open_existing, open_store
    from tinysiglip.results.ranks import load_ranks, save_run_ranks, save_teacher_ranks

    rng = np.random.default_rng(0)
    owner = _owner(rng, 30)
    store = open_store(tmp_path / "study.db")
    runs = {(c, s): _final_run(store, c, s) for c in ("A1", "A2") for s in (0, 1)}
    stored = {}
    for key, rec in runs.items():
        stored[key] = _random_ranks(rng, owner, 0.4)
        save_run_ranks(store, rec.id, _random_ranks(rng, owner, 0.9))  # replaced by the rerun below
        save_run_ranks(store, rec.id, stored[key])
        store.finish_run(rec.id, "complete")
    running = _final_run(store, "A3", 0)  # not complete: left out
    save_run_ranks(store, running.id, _random_ranks(rng, owner, 0.4))
    teacher = store.record_teacher_metrics(
        study_name="s", cell="A1", teacher_source="t", split="test", metrics={"i2t_r1": 1.0}
    )
    teacher_ranks = _random_ranks(rng, owner, 0.7)
    save_teacher_ranks(store, teacher.id, teacher_ranks)

    loaded = load_ranks(open_existing(f"sqlite:///{tmp_path / 'study.db'}"), "s")
    assert sorted(loaded.runs) == sorted(stored)
    for key, ranks in stored.items():
        got = loaded.runs[key]
        assert np.array_equal(got.image_ranks, ranks.image_ranks)
        assert np.array_equal(got.text_ranks, ranks.text_ranks)
        assert np.array_equal(got.caption_image, owner)
    assert np.array_equal(loaded.teachers["A1"].text_ranks, teacher_ranks.text_ranks)
    assert [r.image_ranks.tolist() for r in loaded.cell_runs("A2")] == [
        stored[("A2", s)].image_ranks.tolist() for s in (0, 1)
    ]
    with store.engine.connect() as c:
        assert c.execute(text("select count(*) from tsl_query_ranks")).scalar() == 6
    assert load_ranks(store, "s", split="val").runs == {}
    assert store.delete_study_runs("s") == 5
    assert load_ranks(store, "s").runs == {}


def test_a_database_made_before_ranks_reads_as_no_ranks_and_gains_the_table(tmp_path):
    from sqlalchemy import text

    from tinysiglip.results import open_existing, open_store
    from tinysiglip.results.ranks import load_ranks, save_run_ranks

    path = tmp_path / "old.db"
    store = open_store(path)
    run = _final_run(store, "A1", 0)
    store.finish_run(run.id, "complete", test_metrics={"i2t_r1": 5.0})
    with store.engine.begin() as c:
        c.execute(text("drop table tsl_query_ranks"))  # the schema before this table
    store.close()
    old = open_existing(path)
    assert load_ranks(old, "s").runs == {} and "tsl_query_ranks" not in old.table_names()
    reopened = open_store(path)  # opened for writing: the missing table is created
    save_run_ranks(reopened, run.id, QueryRanks([0, 2], [1, 0, 0], [0, 1, 1]))
    assert load_ranks(reopened, "s").runs[("A1", 0)].text_ranks.tolist() == [1, 0, 0]


def test_a_complete_training_run_returns_the_ranks_of_its_test_metrics(tiny_caches, tmp_path):
    from tinysiglip.evaluate import recall_at_k
    from tinysiglip.train import run_training

    config = {
        "data": {
            k: str(tiny_caches[s])
            for k, s in (("train_cache", "train"), ("val_cache", "val"), ("test_cache", "test"))
        },
        "student": {"name": "test_tiny"},
        "optim": {"batch_size": 16, "lr": 1e-3},
        "train": {"epochs": 1, "threads": 1},
    }
    result = run_training(config, run_dir=tmp_path / "run")
    ranks = QueryRanks.from_payload(result["test_ranks"])
    metrics = recall_at_k(ranks.image_ranks, ranks.text_ranks)
    assert metrics == {k: result["test_metrics"][k] for k in metrics}
    saved = np.load(tmp_path / "run" / "test_ranks.npz")
    assert saved["text_ranks"].tolist() == ranks.text_ranks.tolist()
    assert "test_ranks" not in (tmp_path / "run" / "result.json").read_text()
