"""Plotly figures for the dashboards: each ``draw_*`` turns the dict of the data function of the same
name (:mod:`.dashboard_data`) into ``[(title, figure)]``; nothing here reads the database."""

from __future__ import annotations

import math

from tinysiglip.results.dashboard_data import DATA_FUNCTIONS

__all__ = ["PLOTS", "STATE_COLORS"]

STATE_COLORS = {"complete": "#1f77b4", "pruned": "#d62728", "failed": "#7f7f7f", "running": "#ff7f0e"}
METRIC_COLORS = {"i2t_r1": "#1f77b4", "t2i_r1": "#ff7f0e"}
TEACHER_COLOR = "#222222"

# Each draw_* takes the dict from the data function of the same name and returns [(title, figure)].


def _go():
    import plotly.graph_objects as go

    return go


def _short(source: str) -> str:
    return str(source).rstrip("/").split("/")[-1]


def _integer_ticks(fig, axis: str, largest: float) -> None:
    """Ticks on whole numbers only (epochs, trial numbers), about ten of them at most."""
    step = max(1, math.ceil(float(largest or 1) / 10))
    fig.update_layout({axis: {"tickmode": "linear", "tick0": 0, "dtick": step, "tickformat": "d"}})


def _teacher_line(fig, ref: dict, *, color: str, what: str) -> None:
    """A horizontal reference line for the teacher, named ``teacher ...`` (legend and label)."""
    text = f"teacher {_short(ref['source'])} ({ref['split']}) {what} {ref['value']:.1f}"
    fig.add_hline(
        y=ref["value"],
        line={"dash": "dash", "color": color, "width": 1.5},
        name=text,
        showlegend=True,
        label={"text": text, "textposition": "end", "font": {"size": 11, "color": color}},
    )


def _headroom(fig, values: list[float], *, floor: float | None = None) -> None:
    """A y range with room above the highest bar, point or teacher line for the line's label."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return
    low, high = min(values), max(values)
    pad = 0.1 * ((high - low) or abs(high) or 1.0)
    bottom = low - pad if floor is None else min(floor, low)
    fig.update_yaxes(range=[bottom, high + 1.5 * pad])


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
                marker={"color": METRIC_COLORS[m]},
                error_y={"type": "data", "array": [r[m]["std"] for r in rows], "visible": True},
                text=[f"{r[m]['mean']:.1f} ± {r[m]['std']:.1f} (n={r[m]['n']})" for r in rows],
                textposition="outside",
                customdata=[" ".join(map(str, r["run_ids"])) for r in rows],
                hovertemplate="%{x}<br>%{text}<br>tsl_runs.id %{customdata}<extra>" + name + "</extra>",
            )
        )
        for ref in d.get("teachers", {}).get(m, []):
            _teacher_line(fig, ref, color=METRIC_COLORS[m], what=name)
    refs = [ref["value"] for m in ("i2t_r1", "t2i_r1") for ref in d.get("teachers", {}).get(m, [])]
    tops = [r[m]["mean"] + (r[m]["std"] or 0.0) for r in rows for m in ("i2t_r1", "t2i_r1")]
    _headroom(fig, [*tops, *refs], floor=0.0)
    title = "Ablation: test R@1 per cell" if d.get("ablation") else "Test R@1 per cell"
    fig.update_layout(
        barmode="group",
        title=title + " (mean ± std over final-run seeds; † = missing or failed seeds; dashed = teacher)",
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


def _palette(n: int) -> list[str]:
    from plotly.colors import qualitative

    colors = qualitative.Plotly if n <= len(qualitative.Plotly) else qualitative.Dark24
    return [colors[i % len(colors)] for i in range(n)]


def draw_learning_curves(d: dict) -> list:
    """One overlay for the study: a colour per cell, search trials thin (dotted when pruned, ✕ where
    pruned), final runs bold, the teacher as a dashed reference line."""
    go = _go()
    if not d["cells"]:
        return []
    fig = go.Figure()
    for cell, color in zip(d["cells"], _palette(len(d["cells"])), strict=True):
        # the bold final runs first, so that the cell's legend entry shows a final run when there is one
        ordered = sorted(cell["runs"], key=lambda r: (r["kind"] != "final", r["run_id"]))
        for i, run in enumerate(ordered):
            final = run["kind"] == "final"
            who = f"seed {run['seed']}" if final else f"trial {run['number']}"
            fig.add_trace(
                go.Scatter(
                    x=run["epochs"],
                    y=run["values"],
                    mode="lines+markers",
                    name=cell["label"],
                    legendgroup=cell["cell"],
                    showlegend=i == 0,
                    opacity=1.0 if final else 0.55,
                    line={
                        "color": color,
                        "width": 3.5 if final else 1,
                        "dash": "dot" if run["state"] == "pruned" else "solid",
                    },
                    marker={"size": 6 if final else 3},
                    hovertemplate=(
                        f"{cell['cell']} {'final run' if final else 'search'} {who}, {run['state']} "
                        f"(tsl_runs.id {run['run_id']})<br>epoch %{{x}}: %{{y:.3f}}<extra></extra>"
                    ),
                )
            )
        pruned = [r for r in cell["runs"] if r["state"] == "pruned" and r["epochs"]]
        if pruned:
            fig.add_trace(
                go.Scatter(
                    x=[r["epochs"][-1] for r in pruned],
                    y=[r["values"][-1] for r in pruned],
                    mode="markers",
                    marker={"symbol": "x", "size": 11, "color": color},
                    legendgroup=cell["cell"],
                    showlegend=False,
                    text=[
                        f"trial {r['number']} pruned at epoch {r['epochs'][-1]}/{r['epochs_budget']} "
                        f"(tsl_runs.id {r['run_id']})"
                        for r in pruned
                    ],
                    hovertemplate="%{text}<extra></extra>",
                )
            )
    for ref in d.get("teachers", []):
        _teacher_line(fig, ref, color=TEACHER_COLOR, what=d["metric"])
    values = [v for cell in d["cells"] for run in cell["runs"] for v in run["values"]]
    _headroom(fig, [*values, *(ref["value"] for ref in d.get("teachers", []))])
    _integer_ticks(fig, "xaxis", d.get("max_epoch") or 1)
    fig.update_layout(
        title=f"Learning curves (val {d['metric']}): thin = search trials, bold = final runs, "
        "✕ = pruned here, dashed = teacher",
        xaxis_title="epoch",
        yaxis_title=d["metric"],
        legend={"groupclick": "togglegroup"},
    )
    return [("Learning curves", fig)]


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
        _integer_ticks(fig, "xaxis", max((p["number"] or 0) for p in pts))
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


def draw_pruner_replay(d: dict) -> list:
    go = _go()
    pruners = d["pruners"]
    if not pruners:
        return []
    labels = [p["label"] for p in pruners]
    summary = go.Figure(
        go.Bar(
            x=labels,
            y=[p["epochs_used"] for p in pruners],
            marker={
                "color": ["#7f7f7f" if p["settings"].get("type") == "none" else "#1f77b4" for p in pruners]
            },
            text=[
                f"saved {p['epochs_saved']} ({100 * p['saved_fraction']:.0f}%), best kept "
                f"{p['best_kept']}/{len(p['cells'])}"
                for p in pruners
            ],
            textposition="outside",
            hovertemplate="%{x}<br>trial-epochs used %{y}<br>%{text}<extra></extra>",
        )
    )
    summary.update_layout(
        title="Pruner replay: trial-epochs each pruner would have used", yaxis_title="trial-epochs"
    )
    _headroom(summary, [p["epochs_used"] for p in pruners], floor=0)
    per_cell = go.Figure()
    for p in pruners:
        cells = p["cells"]
        per_cell.add_trace(
            go.Bar(
                name=p["label"],
                x=[c["cell"] for c in cells],
                y=[c["epochs_used"] for c in cells],
                text=["kept" if c["best_kept"] else f"−{c['regret']:.3g}" for c in cells],
                textposition="outside",
                customdata=[
                    f"best #{c['best_trial']}, pruned trials {c['pruned'] or '-'}, of {c['epochs_recorded']} epochs"
                    for c in cells
                ],
                hovertemplate="%{x}: %{y} trial-epochs<br>%{customdata}<br>best trial %{text}<extra>"
                + p["label"]
                + "</extra>",
            )
        )
    per_cell.update_layout(
        barmode="group",
        title="Per cell: trial-epochs used; label = best trial kept, else regret in the objective",
        yaxis_title="trial-epochs",
    )
    return [("Pruner replay", summary), ("Pruner replay per cell", per_cell)]


PLOTS = {
    "ablation_bars": draw_ablation_bars,
    "parallel_coordinates": draw_parallel_coordinates,
    "learning_curves": draw_learning_curves,
    "optimization_history": draw_optimization_history,
    "param_importances": draw_param_importances,
    "scaling": draw_scaling,
    "cost_over_time": draw_cost_over_time,
    "pruner_replay": draw_pruner_replay,
}
assert set(PLOTS) == set(DATA_FUNCTIONS)
