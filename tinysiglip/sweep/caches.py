"""Make sure every teacher cache a study needs exists and can be trusted, before the first trial.

Missing caches are built once. Then every cache is opened with its full checks (metadata, shapes,
embedding checksums and finiteness; ``open_cache``), compared with the teacher the study names (by
the content of the teacher's files and its embedding width, without loading the model), and the
train cache of every (teacher, dataset) is checked for images of its val/test caches (the leakage
guard; a cell's ``data.allow_leakage: true`` overrides it, and the run records it).

Real studies put caches under ``$TINYSIGLIP_CACHE_DIR`` (default ``caches/``), one file per
(teacher, dataset, split): ``caches/<teacher source as a folder name>/<dataset key>/<split>.h5``, so
studies that share a teacher and a dataset (A, C and the λ study all use Large on COCO) share the
caches. In ``--local`` mode the local world makes the data, the teachers and the caches.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tinysiglip.errors import TinySigLIPError

CacheKey = tuple[str, str, str]


def default_cache_dir() -> Path:
    return Path(os.environ.get("TINYSIGLIP_CACHE_DIR", "caches")).expanduser().absolute()


def _folder_name(source: str, revision: str | None) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", source.strip("/"))
    return f"{name}@{revision}" if revision else name


def planned_cache_path(spec, *, local: bool, cache_dir: str | Path | None = None) -> Path:
    """Where the sweep keeps (or would build) this cache; nothing is built, trained or opened."""
    if local:
        from tinysiglip.local_world import local_world

        world = local_world(progress=False)
        return world.base / "caches" / spec.teacher_spec.effective_source / f"{spec.split}.h5"
    root = Path(cache_dir).expanduser().absolute() if cache_dir else default_cache_dir()
    teacher = spec.teacher_spec
    return root / _folder_name(teacher.source, teacher.revision) / spec.dataset / f"{spec.split}.h5"


def load_split(dataset_spec, split: str):
    """A study dataset's split through the real loaders (Karpathy split file or COCO captions files)."""
    from tinysiglip.data import load_coco_captions, load_karpathy_split

    if dataset_spec.kind == "karpathy":
        return load_karpathy_split(dataset_spec.karpathy, dataset_spec.images, split)
    if dataset_spec.kind == "coco":
        if split not in dataset_spec.splits:
            raise TinySigLIPError(
                f"dataset {dataset_spec.key!r} names no {split!r} split; add datasets.{dataset_spec.key}.splits.{split}"
            )
        files = dataset_spec.splits[split]
        return load_coco_captions(files["captions"], files["images"], split=split)
    raise TinySigLIPError(
        f"dataset {dataset_spec.key!r} of kind {dataset_spec.kind!r} has no loader outside --local"
    )


def expected_identity(source: str, revision: str | None, *, echo=print) -> dict:
    """What a cache of this teacher must record: its content fingerprint and embedding width, read
    from the teacher's files without loading the model. When the files are not on this machine
    (a Hub id not in the local cache) only the recorded source can be compared, and we say so."""
    from tinysiglip.teacher.identity import config_facts, file_fingerprints, teacher_folder

    folder = teacher_folder(source, revision)
    if folder is None:
        echo(
            f"[caches] warning: the files of teacher {source!r} are not on this machine; its caches are "
            "matched by the recorded source only, not by content"
        )
        return {"teacher_source": source, "teacher_revision": revision}
    from tinysiglip.teacher.identity import combine

    files = file_fingerprints(folder)
    expected = {"teacher_fingerprint": combine(files), "teacher_files": files}
    facts = config_facts(folder)
    if "embed_dim" in facts:
        expected["embed_dim"] = facts["embed_dim"]
    return expected


def _allow_leakage(study, teacher: str, dataset: str) -> bool:
    return any(
        bool((c.base_config.get("data") or {}).get("allow_leakage"))
        for c in study.cells
        if (c.teacher, c.dataset) == (teacher, dataset)
    )


def check_study_caches(study, paths: dict[CacheKey, Path], expected: dict[str, dict], *, echo=print) -> None:
    """Open every cache with its full checks and its teacher's identity, then run the leakage guard
    per (teacher, dataset). Raises before any trial starts."""
    from tinysiglip.cache import check_leakage, open_cache

    caches = {key: open_cache(path, expect=expected.get(key[0])) for key, path in paths.items()}
    for (teacher, dataset, split), cache in caches.items():
        if split != "train":
            continue
        evaluation = {s: caches.get((teacher, dataset, s)) for s in ("val", "test")}
        allow = _allow_leakage(study, teacher, dataset)
        report = check_leakage(
            cache,
            evaluation,
            allow=allow,
            override_hint="set data.allow_leakage: true in the study's defaults",
        )
        if report.describe_near():
            echo(
                f"[caches] {teacher}/{dataset}: near-duplicates (reported, not refused):\n{report.describe_near()}"
            )
        if report.leaked:
            echo(
                f"[caches] {teacher}/{dataset}: train/test leakage ALLOWED by data.allow_leakage:\n{report.describe()}"
            )
    echo(
        f"[caches] {len(caches)} cache(s) checked: complete, intact, of their teacher, no train/test leakage"
    )


def ensure_study_caches(
    study, *, progress: bool = True, cache_dir: str | Path | None = None
) -> dict[CacheKey, Path]:
    """``{(teacher key, dataset key, split): complete cache path}`` for every cache the study uses,
    each opened and checked (see the module doc) before it is returned."""
    from tinysiglip.cache import build_cache, open_cache

    echo = print if progress else (lambda *a, **k: None)
    paths: dict[CacheKey, Path] = {}
    specs = study.caches_needed()
    if study.local:
        from tinysiglip.local_world import local_world

        world = local_world(progress=progress)
        expected = {}
        for spec in specs:
            teacher = spec.teacher_spec.effective_source
            paths[(spec.teacher, spec.dataset, spec.split)] = world.cache_path(teacher, spec.split)
            if spec.teacher not in expected:
                expected[spec.teacher] = expected_identity(str(world.teacher_path(teacher)), None, echo=echo)
        check_study_caches(study, paths, expected, echo=echo)
        return paths

    # Absolute paths: they go into trial configs, and Ray runs each trial in a folder of its own.
    root = Path(cache_dir).expanduser().absolute() if cache_dir else default_cache_dir()
    import torch

    from tinysiglip.teacher import load_teacher

    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = {}
    expected = {}
    for spec in specs:
        teacher = spec.teacher_spec
        if spec.teacher not in expected:
            expected[spec.teacher] = expected_identity(teacher.source, teacher.revision, echo=echo)
        out = planned_cache_path(spec, local=False, cache_dir=root)
        echo(f"[caches] {spec.key}: {out}", flush=True)
        dataset = load_split(spec.dataset_spec, spec.split)
        if out.exists():  # a complete cache of this teacher and data is reused without loading the teacher
            open_cache(
                out,
                expect={
                    **expected[spec.teacher],
                    "dataset_fingerprint": dataset.fingerprint(),
                    "teacher_view": "teacher",
                },
            )
        else:
            from tinysiglip.cache.build import bad_images_report_path
            from tinysiglip.data import check_images

            dataset = check_images(dataset, skip_bad=False, report_path=bad_images_report_path(out))
            if spec.teacher not in loaded:
                loaded[spec.teacher] = load_teacher(teacher.source, revision=teacher.revision, device=device)
            build_cache(loaded[spec.teacher], dataset, out, progress=progress, device=device)
        paths[(spec.teacher, spec.dataset, spec.split)] = out
    check_study_caches(study, paths, expected, echo=echo)
    return paths
