"""Self-contained Plotly HTML dashboards from the study database.

    python -m tinysiglip.dashboards --storage URL [--study NAME|all] [--out DIR]
    python -m tinysiglip.dashboards --study-file studies/ablation_A.yaml [--local] [--out DIR]

Which plots go on which page, for which study, is declared in ``dashboards/*.yaml``::

    name: default                 # file prefix of its pages ("default": no prefix)
    studies: ["*"]                # fnmatch patterns of study names; an exact name beats a pattern
    pages:                        # page name -> plots on it (one HTML file per page and study)
      overview: [ablation_bars, scaling, cost_over_time]

Plots: ``ablation_bars``, ``parallel_coordinates``, ``learning_curves``, ``optimization_history``,
``param_importances``, ``scaling``, ``cost_over_time``, ``pruner_replay``. Data come from :mod:`.dashboard_data` (plain
dicts from the study's DataFrames); :mod:`.plots` turns them into Plotly figures.

Each study's folder holds its pages and one ``plotly.min.js`` they load by a relative path: the folder
opens offline, from anywhere, with no CDN; ``index.html`` links every page. Nothing is served.
"""

from __future__ import annotations

import argparse
import fnmatch
import html
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tinysiglip.errors import TinySigLIPError
from tinysiglip.results.dashboard_data import DATA_FUNCTIONS
from tinysiglip.results.plots import PLOTS
from tinysiglip.results.report_data import study_report_data
from tinysiglip.results.sources import add_source_arguments, default_out_dir, open_studies
from tinysiglip.results.store import StudyStore, redact_url

__all__ = ["PLOTLY_JS", "DashboardError", "Declaration", "load_declarations", "main", "write_dashboards"]

DECLARATIONS_DIR = Path(__file__).resolve().parents[2] / "dashboards"
PLOTLY_JS = "plotly.min.js"  # written once per study folder, next to its pages


class DashboardError(TinySigLIPError):
    """A dashboard declaration is invalid."""


# ------------------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Declaration:
    name: str
    studies: tuple[str, ...]
    pages: dict[str, tuple[str, ...]]
    title: str
    path: Path

    def matches(self, study: str) -> int:
        """2 exact name, 1 pattern, 0 no match."""
        if study in self.studies:
            return 2
        return 1 if any(fnmatch.fnmatchcase(study, p) for p in self.studies) else 0


def _parse_declaration(path: Path) -> Declaration:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DashboardError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise DashboardError(f"{path}: a dashboard declaration must be a mapping (name, studies, pages)")
    unknown = set(raw) - {"name", "title", "studies", "pages", "description"}
    if unknown:
        raise DashboardError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: name, title, description, studies, pages"
        )
    name = str(raw.get("name") or path.stem)
    studies = raw.get("studies", ["*"])
    if isinstance(studies, str):
        studies = [studies]
    if not isinstance(studies, list) or not all(isinstance(s, str) for s in studies):
        raise DashboardError(f"{path}: studies: a list of study names or patterns, got {studies!r}")
    pages = raw.get("pages")
    if not isinstance(pages, dict) or not pages:
        raise DashboardError(f"{path}: pages: a mapping of page name -> list of plots, got {pages!r}")
    out: dict[str, tuple[str, ...]] = {}
    for page, plots in pages.items():
        if not isinstance(plots, list) or not plots:
            raise DashboardError(f"{path}: pages.{page}: a non-empty list of plots, got {plots!r}")
        for p in plots:
            if p not in PLOTS:
                import difflib

                close = difflib.get_close_matches(str(p), list(PLOTS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise DashboardError(
                    f"{path}: pages.{page}: unknown plot {p!r}{hint} (plots: {', '.join(PLOTS)})"
                )
        out[str(page)] = tuple(plots)
    return Declaration(name, tuple(studies), out, str(raw.get("title") or name), path)


def load_declarations(folder: Path = DECLARATIONS_DIR) -> list[Declaration]:
    files = sorted(Path(folder).glob("*.yaml")) + sorted(Path(folder).glob("*.yml"))
    if not files:
        raise DashboardError(f"no dashboard declarations (*.yaml) in {folder}")
    decls = [_parse_declaration(p) for p in files]
    names = [d.name for d in decls]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise DashboardError(f"{folder}: dashboard name(s) declared twice: {', '.join(sorted(dup))}")
    return decls


def declarations_for(study: str, decls: list[Declaration]) -> list[Declaration]:
    """The declarations naming this study exactly, else those whose pattern matches it."""
    exact = [d for d in decls if d.matches(study) == 2]
    return exact or [d for d in decls if d.matches(study) == 1]


# --------------------------------------------------------------------------------------------- pages

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script src="{plotly_js}"></script>
<style>body{{font-family:sans-serif;margin:1.5em;}} .note{{color:#555;background:#f4f4f4;padding:.4em .8em;}}
.plot{{margin-bottom:2em;}} nav a{{margin-right:1em;}}</style></head>
<body data-tsl-plots="{n}">
<nav><a href="{index}">index</a></nav>
<h1>{title}</h1>
<p>Study <b>{study}</b> — database {db}. Every point is read from the study database.</p>
{body}
</body></html>
"""


def render_page(title: str, study: str, db: str, sections: list[tuple[str, list, str]], index: str) -> str:
    """sections: (plot name, [(title, fig)], note). plotly.js is loaded from the page's own folder."""
    parts, n = [], 0
    for plot, figs, note in sections:
        parts.append(f'<section id="{plot}"><h2>{html.escape(plot.replace("_", " "))}</h2>')
        if note:
            parts.append(f'<p class="note">{html.escape(note)}</p>')
        if not figs:
            parts.append('<p class="note">nothing to plot for this study</p>')
        for fig_title, fig in figs:
            fig.update_layout(height=520)
            div = fig.to_html(full_html=False, include_plotlyjs=False, config={"responsive": True})
            n += 1
            parts.append(f'<div class="plot" title="{html.escape(fig_title)}">{div}</div>')
        parts.append("</section>")
    return _PAGE.format(
        title=html.escape(title),
        study=html.escape(study),
        db=html.escape(db),
        body="\n".join(parts),
        n=n,
        index=index,
        plotly_js=PLOTLY_JS,
    )


def write_plotly_js(folder: Path) -> Path:
    """The plotly.js bundled with the installed plotly package, once per folder (rewritten only when
    it differs, e.g. after a plotly upgrade)."""
    from plotly.offline import get_plotlyjs

    path = folder / PLOTLY_JS
    text = get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(text.encode()) or path.read_text() != text:
        tmp = path.with_suffix(".js.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


def write_dashboards(
    storage: StudyStore | str | Path,
    study_names: list[str],
    out_dir: Path,
    decls: list[Declaration] | None = None,
) -> list[Path]:
    """Write every declared page of every study, its ``plotly.min.js`` and ``index.html``; returns the
    page paths."""
    decls = decls if decls is not None else load_declarations()
    out_dir.mkdir(parents=True, exist_ok=True)
    pages: list[tuple[str, str, Path]] = []
    db = ""
    for study in study_names:
        data = study_report_data(storage, study)
        db = redact_url(data.storage_url)
        folder = out_dir / study.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        write_plotly_js(folder)
        cache: dict[str, dict] = {}
        for decl in declarations_for(study, decls):
            for page, plots in decl.pages.items():
                sections = []
                for plot in plots:
                    if plot not in cache:
                        cache[plot] = DATA_FUNCTIONS[plot](data)
                    d = cache[plot]
                    sections.append((plot, PLOTS[plot](d), d.get("note", "")))
                stem = page if decl.name == "default" else f"{decl.name}_{page}"
                path = folder / f"{stem}.html"
                title = f"{study}: {page}" + ("" if decl.name == "default" else f" ({decl.title})")
                path.write_text(render_page(title, study, db, sections, "../index.html"), encoding="utf-8")
                pages.append((study, title, path))
    links = "\n".join(
        f'<li><a href="{html.escape(str(p.relative_to(out_dir)))}">{html.escape(t)}</a></li>'
        for _, t, p in pages
    )
    (out_dir / "index.html").write_text(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>TinySigLIP dashboards</title></head>"
        f"<body><h1>TinySigLIP dashboards</h1><p>Database {html.escape(db)}</p><ul>{links}</ul></body></html>\n",
        encoding="utf-8",
    )
    return [p for _, _, p in pages]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tinysiglip dashboards",
        description="Self-contained Plotly HTML dashboards from the study database.",
    )
    add_source_arguments(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default <run_dir>/dashboards)")
    p.add_argument(
        "--declarations", metavar="DIR", default=str(DECLARATIONS_DIR), help="dashboards/*.yaml folder"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        decls = load_declarations(Path(args.declarations))
    except TinySigLIPError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    opened = open_studies(args)
    if opened is None:
        return 2
    url, store, names = opened
    out = Path(args.out) if args.out else default_out_dir(url, "dashboards", names[0], multi=len(names) > 1)
    paths = write_dashboards(store, names, out, decls)
    print(f"dashboards: {(out / 'index.html').resolve()}")
    for p in paths:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
