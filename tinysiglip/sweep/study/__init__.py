"""Study files: the experiment grid, its search space, budgets and resources, validated up front.

``load_study(path, local=False) -> Study`` reads a study YAML (``studies/*.yaml``), checks every field
before anything runs (problems are one ``StudyError`` naming the file, each dotted field and its fix),
and expands the grid into ``Cell`` objects: one Optuna study per cell (``<study>/<cell>``), each with
a partial training config (docs/architecture.md) and the search space that applies to it.

The file's schema is :class:`StudyFile` (models.py; ``tinysiglip schema study`` prints it as JSON
Schema). Study YAML (see studies/ablation_A.yaml)::

    # yaml-language-server: $schema=../schemas/study.schema.json
    study: ablation_A                 # default: the file's stem
    description: ...
    teachers: {large: {source: google/siglip2-large-patch16-256, revision: null}}
    datasets: {coco: {karpathy: data/coco/dataset_coco.json, images: data/coco}}
    defaults:                         # partial training config shared by all cells
      teacher: large                  # key into teachers (the only teacher: may be left out)
      dataset: coco                   # key into datasets
      student: {name: vit_small}
      loss: {feat: 1.0, affinity: 1.0, contrast: 1.0, contrastive: sigmoid}
      optim: {batch_size: 256}
    grid:                             # named cells, each a partial training config over defaults
      A1: {description: no KD, loss: {feat: off, affinity: off}}
    search_space: ../search_spaces/lambda_full.yaml   # relative to this file; a cell may override
    trials_per_cell: 20
    budget: {epochs: 10, eval_every_epochs: 1, max_steps: null}
    objective: {metric: mean_r1, direction: maximize}
    pruner: {type: median, n_startup_trials: 5, n_warmup_steps: 2, interval_steps: 1}
    sampler: {type: tpe, seed: 0, n_startup_trials: 5}
    final: {seeds: [0, 1, 2], epochs: null}
    resources: {cpus_per_trial: 4, gpus_per_trial: 0.25}
    max_failures: 2
    max_concurrent: null
    storage: null                     # SQLAlchemy URL; default sqlite:///<run_dir>/study.db
    run_dir: null                     # default runs/<study> (runs/<study>-local with --local)
    local:                            # what --local changes: same grid and search space, tiny world
      teachers: {large: local-m}
      trials_per_cell: 2
      budget: {epochs: 2}
      final: {seeds: [0, 1]}
      resources: {cpus_per_trial: 1, gpus_per_trial: 0}
      config: {optim: {batch_size: 32}, student: {scale: local}}   # CPU-sized student variants
"""

from tinysiglip.config.training import METRICS
from tinysiglip.sweep.search_space import StudyError
from tinysiglip.sweep.study.build import load_study
from tinysiglip.sweep.study.models import OWNED_BY_STUDY, StudyFile
from tinysiglip.sweep.study.plan import (
    Budget,
    CacheSpec,
    Cell,
    DatasetSpec,
    Objective,
    Resources,
    Study,
    TeacherSpec,
)

__all__ = [
    "METRICS",
    "OWNED_BY_STUDY",
    "Budget",
    "CacheSpec",
    "Cell",
    "DatasetSpec",
    "Objective",
    "Resources",
    "Study",
    "StudyError",
    "StudyFile",
    "TeacherSpec",
    "load_study",
]
