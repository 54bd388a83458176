"""The --dry-run text of a study: cells, fixed settings, searched params, trials, final runs, resources."""

from __future__ import annotations

from typing import Any

from tinysiglip.config.training import LOSS_TERMS
from tinysiglip.sweep.search_space import describe_distribution

FREE_FORM = ("student.overrides", "data.expect")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def _fmt_settings(d: dict) -> str:
    items = dict(d)
    head = str(items.pop("type", items.pop("kind", "")))
    rest = ", ".join(f"{k}={_fmt(v)}" for k, v in items.items())
    return f"{head} ({rest})" if rest else head


def _fmt_lambda(v: Any, term: str, space: dict) -> str:
    if f"loss.{term}" in space:
        return "search"
    if not v:
        return "off"
    return _fmt(v)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"loss.feat": 1.0, ...}: a nested config by dotted path (free-form sections kept whole)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v and path not in FREE_FORM:
            out.update(flatten(v, path + "."))
        else:
            out[path] = v
    return out


def describe_study(study) -> str:
    """What ``Study.describe()`` returns (see there)."""
    lines = [f"study {study.name}{' (local)' if study.local else ''}: {study.description}".rstrip(": ")]
    lines.append(f"  file: {study.path}")
    lines.append(f"  run dir: {study.run_dir}    storage: {study.storage_url}")
    header = ("cell", "teacher", "student", "λ feat", "λ aff", "λ con", "searched", "trials")
    rows = []
    for c in study.cells:
        loss = c.base_config.get("loss", {})
        t = study.teachers[c.teacher]
        rows.append(
            (
                c.name,
                f"{c.teacher} ({t.effective_source})",
                str(c.base_config.get("student", {}).get("name", "?")),
                *(_fmt_lambda(loss.get(k), k, c.search_space) for k in LOSS_TERMS),
                ", ".join(c.search_space) or "-",
                str(c.trials),
            )
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
    lines.append(fmt.format(*header))
    lines.append(fmt.format(*("-" * w for w in widths)))
    lines.extend(fmt.format(*r) for r in rows)
    lines.append("")
    for c in study.cells:
        lines.append(f"  {c.study_name}: {c.description}".rstrip(": "))
        fixed = {k: v for k, v in flatten(c.base_config).items() if not k.startswith("teacher.")}
        lines.append(
            "    fixed: " + ", ".join(f"{k}={_fmt(v)}" for k, v in fixed.items() if k not in c.search_space)
        )
        for name, dist in c.search_space.items():
            lines.append(f"    search {name}: {describe_distribution(dist)}")
        for note in c.notes:
            lines.append(f"    note: {note}")
    b = study.budget
    lines.append("")
    if b:
        lines.append(
            f"  budget: {b.epochs} epochs per trial, evaluate every {b.eval_every_epochs}"
            + (f", max {b.max_steps} steps" if b.max_steps else "")
        )
    lines.append(f"  objective: {study.objective.direction} val {study.objective.metric}")
    lines.append("  pruner: " + _fmt_settings(study.pruner) + "  (per cell; steps are epochs)")
    lines.append("  sampler: " + _fmt_settings(study.sampler))
    lines.append(
        f"  search trials: {study.n_search_trials} ({len(study.cells)} cells x {study.trials_per_cell}); "
        f"final runs: {study.n_final_runs} (best config per cell x seeds {study.final_seeds}"
        + (f", {study.final_epochs} epochs" if study.final_epochs else "")
        + ")"
    )
    r = study.resources
    lines.append(
        f"  resources per trial: {r.cpus_per_trial:g} CPU, {r.gpus_per_trial:g} GPU; "
        f"max concurrent: {study.max_concurrent or 'as resources allow'}; retries per trial: {study.max_failures}"
    )
    lines.append("  caches: " + ", ".join(c.key for c in study.caches_needed()))
    for key, t in study.teachers.items():
        src = f"{t.local_source} (local world; real: {t.source})" if t.local_source else t.source
        lines.append(f"  teacher {key}: {src}" + (f" @ {t.revision}" if t.revision else ""))
    for key, d in study.datasets.items():
        lines.append(f"  dataset {key}: {_fmt_settings(d.as_dict())}")
    return "\n".join(lines)
