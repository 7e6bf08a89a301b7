"""The study's figures: pure builders over the summary records (``study_report`` tables).

- ``fig_stability_map``: predicted vs observed per divergence and design, with a dropdown
  for the colour (collapsed fraction, accuracy, teacher KL growth);
- ``fig_criterion_slider``: the same map under other collapse-criterion factors (a slider);
- ``fig_shift_sweep``: final teacher KL against the shifted generator's f'(1), OPD vs OPD+;
- ``fig_gamma_baseline``: variance ratios, accuracy and steps to target per gamma and baseline.

OPD and OPD+ differ in colour and marker; the menus and sliders are plotly-native, so they
work in the static report and in a notebook rendered to HTML.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go

from . import study_plan as plan
from .plot_style import divergence_label
from .study_report import (BASELINE_COLORS, EST_STYLE, gamma_baseline_table, shift_table,
                           stability_table)



def fig_stability_map(records: Sequence[Mapping]) -> go.Figure:
    """Predicted vs observed: one row per divergence, OPD and OPD+ side by side.

    Colour: the fraction of seeds that collapsed; text: prediction and outcome. A dropdown
    (plotly-native, works in a static page) switches the colour to the final accuracy or the
    teacher KL ratio end / start.
    """
    st = stability_table(records)
    divs = list(dict.fromkeys(r["divergence"] for r in st))
    ests = ["opd", "opd+"]
    cell = {(r["divergence"], r["estimator"]): r for r in st}

    def grid(fn):
        return [[fn(cell[(d, e)]) if (d, e) in cell else None for e in ests] for d in divs]

    text = grid(lambda r: f"predicted: {r['predicted']}<br>observed: {r['observed']}")
    metrics = {
        "collapsed fraction": (grid(lambda r: r["collapsed_frac"]), "Reds", 0, 1),
        "final accuracy": (grid(lambda r: r["accuracy"][0]), "Viridis", 0, None),
        "teacher KL end / start": (grid(lambda r: (r["kl_final"][0] / r["kl_start"][0])
                                        if r["kl_start"][0] else None), "Reds", 0, None),
    }
    first = next(iter(metrics.values()))
    fig = go.Figure(go.Heatmap(
        z=first[0], x=["OPD", "OPD+"], y=[divergence_label(plan.divergence(d)) for d in divs],
        text=text, texttemplate="%{text}", colorscale=first[1], zmin=first[2], zmax=first[3],
        hovertemplate="%{y} %{x}<br>%{text}<br>value %{z:.3g}<extra></extra>"))
    buttons = [dict(label=k, method="restyle",
                    args=[{"z": [z], "colorscale": [cs], "zmin": [lo], "zmax": [hi],
                           "zauto": [hi is None]}]) for k, (z, cs, lo, hi) in metrics.items()]
    fig.update_layout(
        title="Stability map: predicted (written down first) vs observed",
        template="plotly_white", height=120 + 48 * len(divs), margin=dict(l=220, r=20, t=90, b=40),
        updatemenus=[dict(buttons=buttons, x=0, xanchor="left", y=1.12, yanchor="top")])
    fig.update_yaxes(autorange="reversed")
    return fig


def fig_criterion_slider(records: Sequence[Mapping], factors: Sequence[float] = (1.5, 2, 3, 4, 6, 10),
                         accuracy: float = plan.COLLAPSE_ACCURACY) -> go.Figure:
    """How much the map depends on the criterion: a slider over the teacher-KL factor.

    Each slider step recolours the map with the fraction of seeds that would count as
    collapsed under "accuracy < ``accuracy`` or final teacher KL > factor x start" (the
    study's fixed factor is ``plan.COLLAPSE_KL_FACTOR``). Plotly-native, so it works in a
    static page.
    """
    runs = [r for r in records if r["experiment"] == "stability"]
    divs = list(dict.fromkeys(r["divergence"] for r in runs))
    ests = ["opd", "opd+"]

    def z_for(k):
        z = []
        for d in divs:
            row = []
            for e in ests:
                rs = [r for r in runs if r["divergence"] == d and r["estimator"] == e]
                hit = [r["accuracy"] < accuracy or r["teacher_kl_final"] > k * r["teacher_kl_start"]
                       for r in rs]
                row.append(sum(hit) / len(hit) if hit else None)
            z.append(row)
        return z

    start = list(factors).index(plan.COLLAPSE_KL_FACTOR) if plan.COLLAPSE_KL_FACTOR in factors else 0
    fig = go.Figure(go.Heatmap(z=z_for(factors[start]), x=["OPD", "OPD+"],
                               y=[divergence_label(plan.divergence(d)) for d in divs],
                               colorscale="Reds", zmin=0, zmax=1, texttemplate="%{z:.2f}",
                               colorbar=dict(title="collapsed<br>fraction")))
    steps = [dict(method="restyle", label=f"{k:g}x", args=[{"z": [z_for(k)]}]) for k in factors]
    fig.update_layout(
        title="Collapse criterion: teacher KL end > factor x start (or accuracy below "
              f"{accuracy:g})", template="plotly_white", height=160 + 44 * len(divs),
        margin=dict(l=220, r=20, t=70, b=90),
        sliders=[dict(active=start, steps=steps, currentvalue=dict(prefix="factor: "))])
    fig.update_yaxes(autorange="reversed")
    return fig


def fig_shift_sweep(records: Sequence[Mapping]) -> go.Figure:
    """Final teacher KL vs the shifted generator's f'(1), OPD vs OPD+, one panel per divergence."""
    from plotly.subplots import make_subplots

    sh = shift_table(records)
    divs = list(dict.fromkeys(r["divergence"] for r in sh))
    fig = make_subplots(rows=1, cols=max(1, len(divs)),
                        subplot_titles=[divergence_label(plan.divergence(d)) for d in divs])
    for j, d in enumerate(divs, start=1):
        for e in ("opd", "opd+"):
            rs = sorted((r for r in sh if r["divergence"] == d and r["estimator"] == e),
                        key=lambda r: r["f1"])
            if not rs:
                continue
            m = [r["kl_final"][0] for r in rs]
            up = [(r["kl_final"][2] - r["kl_final"][0]) if r["kl_final"][2] is not None else 0 for r in rs]
            dn = [(r["kl_final"][0] - r["kl_final"][1]) if r["kl_final"][1] is not None else 0 for r in rs]
            s = EST_STYLE[e]
            fig.add_trace(go.Scatter(
                x=[r["f1"] for r in rs], y=m, mode="lines+markers", name=s["name"],
                legendgroup=e, showlegend=j == 1,
                marker=dict(symbol=s["symbol"], size=12, color=s["color"]),
                line=dict(color=s["color"], dash="dash" if e == "opd" else "dot"),
                error_y=dict(type="data", array=up, arrayminus=dn, visible=True),
                hovertemplate="f'(1) %{x}<br>teacher KL %{y:.3g}<extra>" + s["name"] + "</extra>"),
                row=1, col=j)
        fig.update_xaxes(title_text="f'(1) of the generator f + c(u−1)", row=1, col=j)
    fig.update_yaxes(title_text="final teacher KL, KL(student‖teacher) (nats/token)", type="log",
                     row=1, col=1)
    fig.update_layout(title="Generator shift: same divergence, different OPD", template="plotly_white",
                      height=430, margin=dict(l=70, r=20, t=90, b=60))
    return fig


def fig_gamma_baseline(records: Sequence[Mapping]) -> go.Figure:
    """Bars: gradient variance ratio and final accuracy per (divergence, γ, baseline).

    Colour: baseline; fill pattern: γ (none for 0, hatched for 1). A dropdown switches the
    metric (variance ratio at the SFT init / at the final weights / accuracy / steps to target).
    """
    gb = gamma_baseline_table(records)
    metrics = {"gradient variance ratio at SFT init": "var_ratio_init",
               "gradient variance ratio at final weights": "var_ratio_final",
               "final test accuracy": "accuracy", "steps to target": "steps_to_target"}
    fig = go.Figure()
    traces = []
    for g in sorted({r["gamma"] for r in gb}):
        for b in plan.BASELINES:
            rs = [r for r in gb if r["gamma"] == g and r["baseline"] == b]
            if not rs:
                continue
            traces.append(rs)
            key = next(iter(metrics.values()))
            fig.add_trace(go.Bar(
                x=[divergence_label(plan.divergence(r["divergence"])) for r in rs],
                y=[r[key][0] for r in rs], name=f"γ={g:g}, baseline {b}",
                marker=dict(color=BASELINE_COLORS[b], pattern_shape="/" if g else ""),
                error_y=dict(type="data", visible=True,
                             array=[(r[key][2] - r[key][0]) if r[key][2] is not None else 0 for r in rs],
                             arrayminus=[(r[key][0] - r[key][1]) if r[key][1] is not None else 0 for r in rs])))

    def args_for(key):
        ys, ups, dns = [], [], []
        for rs in traces:
            ys.append([r[key][0] for r in rs])
            ups.append([(r[key][2] - r[key][0]) if r[key][2] is not None else 0 for r in rs])
            dns.append([(r[key][0] - r[key][1]) if r[key][1] is not None else 0 for r in rs])
        return [{"y": ys, "error_y.array": ups, "error_y.arrayminus": dns}]

    fig.update_layout(
        barmode="group", template="plotly_white", height=450,
        title="What γ and the baselines buy (OPD+; error bars: 95% over seeds)",
        yaxis_title="ratio to γ=0, no baseline (same weights, same rollouts)",
        margin=dict(l=70, r=20, t=100, b=50),
        updatemenus=[dict(buttons=[dict(label=k, method="update",
                                        args=args_for(v) + [{"yaxis.title.text": k}])
                                   for k, v in metrics.items()],
                          x=0, xanchor="left", y=1.15, yanchor="top")])
    return fig
