"""Make sure every teacher cache a study needs exists, building the missing ones once, before trials.

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


def ensure_study_caches(
    study, *, progress: bool = True, cache_dir: str | Path | None = None
) -> dict[CacheKey, Path]:
    """``{(teacher key, dataset key, split): complete cache path}`` for every cache the study uses."""
    from tinysiglip.cache import build_cache, open_cache
    from tinysiglip.cache.format import normalise_source

    paths: dict[CacheKey, Path] = {}
    specs = study.caches_needed()
    if study.local:
        from tinysiglip.local_world import local_world

        world = local_world(progress=progress)
        for spec in specs:
            teacher = spec.teacher_spec.effective_source
            paths[(spec.teacher, spec.dataset, spec.split)] = world.cache_path(teacher, spec.split)
        return paths

    # Absolute paths: they go into trial configs, and Ray runs each trial in a folder of its own.
    root = Path(cache_dir).expanduser().absolute() if cache_dir else default_cache_dir()
    import torch

    from tinysiglip.teacher import load_teacher

    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = {}
    for spec in specs:
        teacher = spec.teacher_spec
        out = root / _folder_name(teacher.source, teacher.revision) / spec.dataset / f"{spec.split}.h5"
        if progress:
            print(f"[caches] {spec.key}: {out}", flush=True)
        dataset = load_split(spec.dataset_spec, spec.split)
        if out.exists():  # a complete cache of this teacher and data is reused without loading the teacher
            open_cache(
                out,
                expect={
                    "teacher_source": normalise_source(teacher.source),
                    "teacher_revision": teacher.revision,
                    "dataset_fingerprint": dataset.fingerprint(),
                },
            )
        else:
            if spec.teacher not in loaded:
                loaded[spec.teacher] = load_teacher(teacher.source, revision=teacher.revision, device=device)
            build_cache(loaded[spec.teacher], dataset, out, progress=progress, device=device)
        paths[(spec.teacher, spec.dataset, spec.split)] = out
    return paths
