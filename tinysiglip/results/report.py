"""Report: tables and best-config export for each study, from the study database only.

    python -m tinysiglip.report --storage URL [--study NAME|all] [--out DIR]
    python -m tinysiglip.report --study-file studies/ablation_A.yaml [--local] [--out DIR]

For each study it writes Markdown (``report.md`` with every table, plus one ``.md`` per table), CSV and
LaTeX (booktabs) tables (:mod:`.tables`) into the output folder (default ``<run_dir>/report`` for a
SQLite database under a run folder, else ``reports/<study>``), and one training config per cell under
``best_configs/<cell>.yaml`` that ``tinysiglip train --config FILE --run-dir DIR`` accepts. The CSV files
are the tables as computed from :func:`~tinysiglip.results.frames.load_runs` rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from tinysiglip.results.escaping import markdown_text, one_line
from tinysiglip.results.report_data import CellData, StudyData, study_report_data
from tinysiglip.results.sources import add_source_arguments, default_out_dir, open_studies
from tinysiglip.results.store import StudyStore, redact_url
from tinysiglip.results.tables import build_tables

__all__ = ["best_config", "build_parser", "export_best_configs", "main", "write_report"]

# -------------------------------------------------------------------------------------- best configs


def best_config_source(data: StudyData, cell: CellData) -> tuple[dict[str, Any], int | None, str] | None:
    """(run row, seed, kind): the best complete final run, else the best trial with the first final seed."""
    if cell.best_final is not None:
        return cell.best_final, cell.best_final["seed"], "final run"
    if cell.best_trial is not None:
        seed = data.final_seeds[0] if data.final_seeds else cell.best_trial["seed"]
        return cell.best_trial, seed, "search trial"
    return None


def best_config(data: StudyData, cell: CellData) -> tuple[dict, str] | None:
    """The standalone training config of a cell's best run and its header comment."""
    src = best_config_source(data, cell)
    if src is None:
        return None
    run, seed, kind = src
    config = json.loads(json.dumps(run["config"] or {}))
    train = config.setdefault("train", {})
    if seed is not None:
        train["seed"] = int(seed)
    fps = run["cache_fingerprints"] or {}
    expect = {k: v for k, v in (fps.get("train") or {}).items() if k not in ("path", "error")}
    data_cfg = config.setdefault("data", {})
    if expect:
        data_cfg["expect"] = expect
    for split in ("val", "test"):  # what the run used, as a record (train checks val/test itself)
        if not data_cfg.get(f"{split}_cache") and (fps.get(split) or {}).get("path") and kind == "final run":
            data_cfg[f"{split}_cache"] = fps[split]["path"]
    lines = [
        f"Best config of study {data.name!r}, cell {cell.name!r} ({cell.description or cell.strategy})",
        f"from tsl_runs.id {run['run_id']} ({run['run_key']}): {kind}, status {run['state']}, "
        f"val {run['objective_metric'] or data.metric} = {run['objective']}",
    ]
    if kind == "final run" and run["source_trial"] is not None:
        lines.append(f"final run of search trial #{run['source_trial']}; seed {seed}")
    elif kind == "search trial":
        lines.append(f"no complete final run: the best trial's config with the study's first seed ({seed})")
    lines += [
        f"teacher: {(config.get('teacher') or {}).get('source')}; cache fingerprints in data.expect",
        "reproduce: tinysiglip train --config THIS_FILE --run-dir DIR",
    ]
    # a comment line per header line, whatever the description holds (a line break would start live YAML)
    return config, "\n".join("# " + one_line(ln) for ln in lines) + "\n"


def export_best_configs(data: StudyData, out_dir: Path, *, validate: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    resolve = None
    if validate:
        from tinysiglip.train import resolve_config as resolve
    for cell in data.cells:
        got = best_config(data, cell)
        if got is None:
            continue
        config, header = got
        path = out_dir / f"{cell.name}.yaml"
        if resolve is not None:
            resolve(config, source=str(path))
        path.write_text(header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False))
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------- write


def write_report(
    storage: StudyStore | str | Path, study_name: str, out_dir: Path, *, validate: bool = True
) -> dict:
    """Write every table and the best configs of one study; returns {"tables", "paths", "data"}."""
    data = study_report_data(storage, study_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = build_tables(data)
    paths: list[Path] = []
    parts = [
        f"# Report: {markdown_text(study_name)}",
        "",
        f"Database: {redact_url(data.storage_url)}  ",
        f"Objective: {data.metric} ({data.direction}); final seeds: {data.final_seeds}; "
        f"local world: {data.local}",
        "",
    ]
    for t in tables:
        for ext, text in ((".md", t.markdown()), (".tex", t.latex())):
            p = out_dir / f"{t.key}{ext}"
            p.write_text(text)
            paths.append(p)
        p = out_dir / f"{t.key}.csv"
        t.write_csv(p)
        paths.append(p)
        parts.append(t.markdown())
    report = out_dir / "report.md"
    report.write_text("\n".join(parts))
    paths.insert(0, report)
    paths += export_best_configs(data, out_dir / "best_configs", validate=validate)
    return {"tables": tables, "paths": paths, "data": data}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tinysiglip report",
        description="Tables (Markdown, CSV, LaTeX) and best configs from the study database.",
    )
    add_source_arguments(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default <run_dir>/report or reports/<study>)")
    p.add_argument("--no-validate", action="store_true", help="skip resolve_config on exported configs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    opened = open_studies(args)
    if opened is None:
        return 2
    url, store, names = opened
    written: list[Path] = []
    for name in names:
        out = Path(args.out) / name if args.out and len(names) > 1 else None
        out = out or (
            Path(args.out) if args.out else default_out_dir(url, "report", name, multi=len(names) > 1)
        )
        result = write_report(store, name, out, validate=not args.no_validate)
        shown = next((t for t in result["tables"] if t.key == "table2_ablation"), None)
        shown = shown or next(t for t in result["tables"] if t.key == "table_cells")
        print(f"\n== {name} ==\n")
        print(shown.markdown())
        written += result["paths"]
        print(f"report for {name}: {out.resolve() / 'report.md'}")
    print("\nwritten:")
    for p in written:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
