"""Self-contained Plotly HTML dashboards from the study database.

    python -m tinysiglip.dashboards --storage URL [--study NAME|all] [--out DIR]
    python -m tinysiglip.dashboards --study-file studies/ablation_A.yaml [--local] [--out DIR]

Which plots go on which page, for which study, is declared in ``dashboards/*.yaml``::

    name: default                 # file prefix of its pages ("default": no prefix)
    studies: ["*"]                # fnmatch patterns of study names; an exact name beats a pattern
    pages:                        # page name -> plots on it (one HTML file per page and study)
      overview: [ablation_bars, scaling, cost_over_time]

Plots: ``ablation_bars``, ``parallel_coordinates``, ``learning_curves``, ``optimization_history``,
``param_importances``, ``scaling``, ``cost_over_time``. Data come from :mod:`tinysiglip.results.dashboard_data`
(plain dicts from the database); the ``draw_*`` functions here only turn them into Plotly figures.
Each page inlines plotly.js (no CDN, opens offline); ``index.html`` links every page. Nothing is served.
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
from tinysiglip.results.report_data import study_report_data
from tinysiglip.results.store import StudyStore, redact_url

__all__ = ["DashboardError", "Declaration", "PLOTS", "load_declarations", "main", "write_dashboards"]

DECLARATIONS_DIR = Path(__file__).resolve().parents[2] / "dashboards"
STATE_COLORS = {"complete": "#1f77b4", "pruned": "#d62728", "failed": "#7f7f7f", "running": "#ff7f0e"}


class DashboardError(TinySigLIPError):
    """A dashboard declaration is invalid."""


# ------------------------------------------------------------------------------------------ drawing
# Each draw_* takes the dict from the data function of the same name and returns [(title, figure)].


def _go():
    import plotly.graph_objects as go

    return go


def draw_ablation_bars(d: dict) -> list:
    go = _go()
    rows = d["rows"]
    if not rows:
        return []
    labels = [r["label"] + (" †" if r["flagged"] else "") for r in rows]
    fig = go.Figure()
    for m, name in (("i2t_r1", "I2T R@1"), ("t2i_r1", "T2I R@1")):
        fig.add_trace(
            go.Bar(
                name=name,
                x=labels,
                y=[r[m]["mean"] for r in rows],
                error_y={"type": "data", "array": [r[m]["std"] for r in rows], "visible": True},
                text=[f"{r[m]['mean']:.1f} ± {r[m]['std']:.1f} (n={r[m]['n']})" for r in rows],
                textposition="outside",
                customdata=[" ".join(map(str, r["run_ids"])) for r in rows],
                hovertemplate="%{x}<br>%{text}<br>tsl_runs.id %{customdata}<extra>" + name + "</extra>",
            )
        )
    title = "Ablation: test R@1 per cell" if d.get("ablation") else "Test R@1 per cell"
    fig.update_layout(
        barmode="group",
        title=title + " (mean ± std over final-run seeds; † = missing or failed seeds)",
        yaxis_title="Recall@1 (%)",
    )
    return [(title, fig)]


def draw_parallel_coordinates(d: dict) -> list:
    go = _go()
    out = []
    for c in d["cells"]:
        trials = c["trials"]
        objective = [t["objective"] for t in trials]
        dims = [
            {
                "label": p,
                "values": [t["values"][p] if t["values"][p] is not None else float("nan") for t in trials],
            }
            for p in c["params"]
        ]
        dims.append({"label": d["metric"], "values": objective})
        dims.append(
            {"label": "pruned (1=yes)", "values": [1 if t["state"] == "pruned" else 0 for t in trials]}
        )
        fig = go.Figure(
            go.Parcoords(
                line={
                    "color": objective,
                    "colorscale": "Viridis",
                    "showscale": True,
                    "colorbar": {"title": d["metric"]},
                },
                dimensions=dims,
            )
        )
        fig.update_layout(title=f"{c['cell']}: searched λ and hyper-parameters, coloured by {d['metric']}")
        out.append((f"Parallel coordinates: {c['cell']}", fig))
    return out


def draw_learning_curves(d: dict) -> list:
    go = _go()
    out = []
    for c in d["cells"]:
        fig = go.Figure()
        for t in c["trials"]:
            pruned = t["state"] == "pruned"
            color = STATE_COLORS.get(t["state"], "#333")
            fig.add_trace(
                go.Scatter(
                    x=t["epochs"],
                    y=t["values"],
                    mode="lines+markers",
                    name=f"trial {t['number']} ({t['state']})",
                    line={"color": color, "dash": "dash" if pruned else "solid"},
                    hovertemplate=f"trial {t['number']} (tsl_runs.id {t['run_id']})<br>epoch %{{x}}: %{{y:.3f}}",
                )
            )
            if pruned:
                fig.add_trace(
                    go.Scatter(
                        x=[t["epochs"][-1]],
                        y=[t["values"][-1]],
                        mode="markers",
                        marker={"symbol": "x", "size": 14, "color": STATE_COLORS["pruned"]},
                        name=f"trial {t['number']} pruned at epoch {t['epochs'][-1]}/{t['epochs_budget']}",
                    )
                )
        fig.update_layout(
            title=f"{c['cell']}: learning curves (val {d['metric']}); ✕ = pruned here",
            xaxis_title="epoch",
            yaxis_title=d["metric"],
        )
        out.append((f"Learning curves: {c['cell']}", fig))
    return out


def draw_optimization_history(d: dict) -> list:
    go = _go()
    out = []
    for c in d["cells"]:
        pts = c["points"]
        fig = go.Figure()
        for state in ("complete", "pruned", "failed"):
            sel = [p for p in pts if p["state"] == state]
            if sel:
                fig.add_trace(
                    go.Scatter(
                        x=[p["number"] for p in sel],
                        y=[p["value"] for p in sel],
                        mode="markers",
                        name=state,
                        marker={"color": STATE_COLORS[state], "size": 9},
                    )
                )
        fig.add_trace(
            go.Scatter(
                x=[p["number"] for p in pts],
                y=c["best"],
                mode="lines",
                name=f"best so far ({d['direction']})",
                line={"shape": "hv", "color": "#2ca02c"},
            )
        )
        fig.update_layout(
            title=f"{c['cell']}: optimisation history", xaxis_title="trial", yaxis_title=d["metric"]
        )
        out.append((f"Optimisation history: {c['cell']}", fig))
    return out


def draw_param_importances(d: dict) -> list:
    go = _go()
    out = []
    for c in d["cells"]:
        items = sorted(c["importances"].items(), key=lambda kv: kv[1])
        fig = go.Figure(
            go.Bar(
                x=[v for _, v in items], y=[k for k, _ in items], orientation="h", marker={"color": "#9467bd"}
            )
        )
        fig.update_layout(
            title=f"{c['cell']}: parameter importances (optuna.importance, {c['n_trials']} complete trials)",
            xaxis_title="importance",
        )
        out.append((f"Parameter importances: {c['cell']}", fig))
    return out


def draw_scaling(d: dict) -> list:
    go = _go()
    if not d["series"]:
        return []
    fig = go.Figure()
    for s in d["series"]:
        pts = sorted(s["points"], key=lambda p: (p["teacher_params"] or 0, p["teacher"]))
        fig.add_trace(
            go.Scatter(
                x=[p["teacher"].split("/")[-1] for p in pts],
                y=[p["mean"] for p in pts],
                error_y={"type": "data", "array": [p["std"] for p in pts], "visible": True},
                mode="lines+markers",
                name=f"student {s['student']}",
                text=[f"{p['cell']}: {p['mean']:.1f} ± {p['std']:.1f} (n={p['n']})" for p in pts],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    teachers = {}
    for s in d["series"]:
        for p in s["points"]:
            if p["teacher_mean_r1"] is not None:
                teachers[p["teacher"]] = p["teacher_mean_r1"]
    if teachers:
        fig.add_trace(
            go.Scatter(
                x=[k.split("/")[-1] for k in teachers],
                y=list(teachers.values()),
                mode="markers",
                marker={"symbol": "star", "size": 14, "color": "#333"},
                name="teacher (cached test embeddings)",
            )
        )
    fig.update_layout(
        title="Teacher × student scaling: test mean R@1 (mean ± std over seeds)",
        xaxis_title="teacher",
        yaxis_title="mean R@1 (%)",
    )
    return [("Teacher × student scaling", fig)]


def draw_cost_over_time(d: dict) -> list:
    go = _go()
    pts = d["points"]
    if not pts:
        return []
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [p["time"] for p in pts]
    fig.add_trace(
        go.Scatter(
            x=x, y=[p["hours"] for p in pts], mode="lines+markers", name=f"cumulative {d['hours_label']}"
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=x, y=[p["pruned"] for p in pts], mode="lines", name="trials pruned", line={"shape": "hv"}
        ),
        secondary_y=True,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[p["epochs_saved"] for p in pts],
            mode="lines",
            name="trial-epochs saved",
            line={"shape": "hv"},
        ),
        secondary_y=True,
    )
    fig.update_layout(title="Cost and pruning over time (runs in finishing order)", xaxis_title="finished at")
    fig.update_yaxes(title_text=d["hours_label"], secondary_y=False)
    fig.update_yaxes(title_text="count", secondary_y=True)
    return [("Cost and pruning over time", fig)]


PLOTS = {
    "ablation_bars": draw_ablation_bars,
    "parallel_coordinates": draw_parallel_coordinates,
    "learning_curves": draw_learning_curves,
    "optimization_history": draw_optimization_history,
    "param_importances": draw_param_importances,
    "scaling": draw_scaling,
    "cost_over_time": draw_cost_over_time,
}
assert set(PLOTS) == set(DATA_FUNCTIONS)


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
    """sections: (plot name, [(title, fig)], note). plotly.js is inlined once, in the first figure."""
    parts, first, n = [], True, 0
    for plot, figs, note in sections:
        parts.append(f'<section id="{plot}"><h2>{html.escape(plot.replace("_", " "))}</h2>')
        if note:
            parts.append(f'<p class="note">{html.escape(note)}</p>')
        if not figs:
            parts.append('<p class="note">nothing to plot for this study</p>')
        for fig_title, fig in figs:
            fig.update_layout(height=480)
            div = fig.to_html(
                full_html=False, include_plotlyjs=True if first else False, config={"responsive": True}
            )
            first = False
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
    )


def write_dashboards(
    store: StudyStore, study_names: list[str], out_dir: Path, decls: list[Declaration] | None = None
) -> list[Path]:
    """Write every declared page of every study, and ``index.html``; returns the page paths."""
    decls = decls if decls is not None else load_declarations()
    out_dir.mkdir(parents=True, exist_ok=True)
    pages: list[tuple[str, str, Path]] = []
    db = redact_url(store.url)
    for study in study_names:
        data = study_report_data(store, study)
        cache: dict[str, dict] = {}
        for decl in declarations_for(study, decls):
            for page, plots in decl.pages.items():
                sections = []
                for plot in plots:
                    if plot not in cache:
                        cache[plot] = DATA_FUNCTIONS[plot](store, data)
                    d = cache[plot]
                    sections.append((plot, PLOTS[plot](d), d.get("note", "")))
                stem = page if decl.name == "default" else f"{decl.name}_{page}"
                path = out_dir / study.replace("/", "_") / f"{stem}.html"
                path.parent.mkdir(parents=True, exist_ok=True)
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


def default_out_dir(url: str, study: str, *, multi: bool) -> Path:
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
        if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
            return Path(u.database).resolve().parent / "dashboards"
    except Exception:  # noqa: BLE001
        pass
    return Path("reports") / ("dashboards" if multi else study) / ("" if multi else "dashboards")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tinysiglip dashboards",
        description="Self-contained Plotly HTML dashboards from the study database.",
    )
    from tinysiglip.results.report import add_source_arguments

    add_source_arguments(p)
    p.add_argument("--out", metavar="DIR", help="output folder (default <run_dir>/dashboards)")
    p.add_argument(
        "--declarations", metavar="DIR", default=str(DECLARATIONS_DIR), help="dashboards/*.yaml folder"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    from tinysiglip.results.report import open_studies

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
    out = Path(args.out) if args.out else default_out_dir(url, names[0], multi=len(names) > 1)
    paths = write_dashboards(store, names, out, decls)
    print(f"dashboards: {(out / 'index.html').resolve()}")
    for p in paths:
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
