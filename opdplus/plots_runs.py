"""Figures of training runs: learning curves, accuracies, per-token views, measured costs.

Pure builders ``fig_*(...) -> plotly.graph_objects.Figure`` for notebooks 04-06, the live
training widget and the ``make reproduce`` report. They read a training ``History`` (a
list of per-step dicts), evaluation summaries, per-token vectors or measured costs, and
draw them in the shared style of ``opdplus.plot_style`` (so ``"forward_kl/opd+"`` is red
and dotted here as in the toy figures). Per-token heatmaps (``fig_token_heatmap``) use a
sequential scale for one-signed values and a diverging one centred at 0 for signed values
such as advantages. Nothing here calls ``.show()``; this module does not import the
exact-toy figures (``opdplus.plots_toy``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plot_style import (
    _SUBPLOT_LAYOUT,
    ESTIMATOR_PATTERN,
    OTHER_COLORS,
    TEACHER_COLOR,
    _finish,
    _np,
    arm_style,
    estimator_of,
)
from .plots_sequences import ESTIMATOR_SYMBOLS

METRIC_LABELS: Dict[str, str] = {
    "loss": "surrogate loss (nats per token)",
    "teacher_kl": "KL(student‖teacher) on rollouts (nats per token)",
    "grad_norm": "gradient norm (L2)",
    "completion_len": "mean completion length (tokens)",
    "accuracy": "accuracy (fraction correct)",
    "clip_frac": "clipped log u (fraction of tokens)",
    "truncation_frac": "truncated completions (fraction)",
    "adv_mean": "advantage mean (nats)",
    "adv_std": "advantage std (nats)",
}
"""Axis title (with unit) for the per-step metrics of a training History."""

DEFAULT_METRICS = ("loss", "teacher_kl", "grad_norm", "completion_len", "accuracy")


# ----------------------------------------------------------------------------- training curves


def _history_rows(history: Any) -> List[Mapping[str, Any]]:
    """Per-step dicts from a History: a list of dicts, or an object with ``.rows``/``.steps``."""
    for attr in ("rows", "steps", "records"):
        rows = getattr(history, attr, None)
        if rows is not None and not callable(rows):
            return list(rows)
    return list(history)


def fig_learning_curves(
    histories: Mapping[Any, Any],
    metrics: Optional[Sequence[str]] = None,
    x: str = "step",
    cols: int = 3,
    title: str = "Training curves",
) -> go.Figure:
    """One panel per metric, one trace per arm: ``histories[arm] = History``.

    A History is a list of per-step dicts (keys like ``step``, ``loss``,
    ``teacher_kl``, ``grad_norm``, ``completion_len``, ``accuracy``). ``metrics``
    defaults to the ``DEFAULT_METRICS`` present in any arm; a step where a metric is
    missing (e.g. accuracy evaluated every k steps) is skipped, not drawn as 0. The
    arm's key picks its style through ``arm_style`` (``"forward_kl/opd+"`` is red, dotted)
    and its marker through ``ESTIMATOR_SYMBOLS`` (OPD a cross, OPD+ a disc), so the two
    estimators of one divergence differ by more than the dash.
    """
    rows = {arm: _history_rows(h) for arm, h in histories.items()}
    present = {k for rs in rows.values() for r in rs for k in r}
    metrics = [m for m in (metrics or DEFAULT_METRICS) if m in present]
    if not metrics:
        raise ValueError(f"none of the metrics are in the histories (keys: {sorted(present)})")
    ncols = min(cols, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    specs = [[{} if r * ncols + c < len(metrics) else None for c in range(ncols)]
             for r in range(nrows)]  # no empty, untitled axes in the last row
    fig = make_subplots(rows=nrows, cols=ncols, subplot_titles=metrics, specs=specs,
                        horizontal_spacing=0.1, vertical_spacing=0.18 if nrows > 1 else 0.1)
    for i, (arm, rs) in enumerate(rows.items()):
        st = arm_style(arm, i)
        name = "/".join(arm) if isinstance(arm, tuple) else str(arm)
        symbol = ESTIMATOR_SYMBOLS.get(estimator_of(name) or "", "square")
        for j, m in enumerate(metrics):
            pts = [(r.get(x, k), r[m]) for k, r in enumerate(rs) if r.get(m) is not None]
            r_, c_ = divmod(j, ncols)
            fig.add_scatter(
                x=[p[0] for p in pts], y=[float(p[1]) for p in pts], mode="lines+markers",
                name=name, legendgroup=name, showlegend=(j == 0),
                line=dict(color=st["color"], dash=st["dash"]),
                marker=dict(size=7, symbol=symbol),
                row=r_ + 1, col=c_ + 1,
            )
            fig.update_yaxes(title_text=METRIC_LABELS.get(m, m), row=r_ + 1, col=c_ + 1)
    fig.update_xaxes(title_text=x)
    fig.update_layout(title=title, height=320 * nrows + 100, **_SUBPLOT_LAYOUT)
    return fig


def fig_accuracy(
    results: Mapping[Any, Union[float, Mapping[str, float], Sequence[float]]],
    title: str = "Accuracy",
    y_title: str = "accuracy (fraction correct)",
    reference: Optional[Mapping[str, float]] = None,
) -> go.Figure:
    """One bar per arm with its 95% interval: ``results[arm] = (accuracy, low, high)``.

    A value may also be a mapping with ``accuracy``, ``ci_low``, ``ci_high`` (an
    ``EvalResult.summary()``) or a bare number (no interval). Bars take the arm's style
    (``arm_style``: divergence colour, estimator fill pattern). ``reference`` draws
    labelled horizontal lines, e.g. ``{"SFT init": 0.27, "teacher": 0.9}``.
    """
    if not results:
        raise ValueError("no results to draw")
    fig = go.Figure()
    for i, (arm, v) in enumerate(results.items()):
        if isinstance(v, Mapping):
            acc, lo, hi = v["accuracy"], v.get("ci_low"), v.get("ci_high")
        elif isinstance(v, (int, float)):
            acc, lo, hi = v, None, None
        else:
            acc, lo, hi = v
        name = "/".join(arm) if isinstance(arm, tuple) else str(arm)
        err = None
        if lo is not None and hi is not None:
            err = dict(type="data", symmetric=False, array=[float(hi) - float(acc)],
                       arrayminus=[float(acc) - float(lo)], color="black", thickness=1.2)
        pattern = ESTIMATOR_PATTERN.get(estimator_of(name) or "exact", "")
        fig.add_bar(x=[name], y=[float(acc)], name=name, error_y=err,
                    marker=dict(color=arm_style(arm, i)["color"], pattern_shape=pattern,
                                line=dict(color="black", width=0.5)))
    for j, (label, y) in enumerate((reference or {}).items()):
        fig.add_hline(y=float(y), line=dict(color=TEACHER_COLOR if "teacher" in label.lower()
                                            else "#888888", dash="dash", width=1),
                      annotation_text=f"{label} {float(y):.2f}", annotation_position="top left")
    fig = _finish(fig, f"{title}<br><sup>bars: 95% interval</sup>", "arm", y_title,
                  showlegend=False)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(margin=dict(l=60, r=20, t=90, b=50))
    return fig


# ----------------------------------------------------------------------------- tokens and costs


def fig_token_heatmap(
    tokens: Sequence[str],
    panels: Mapping[str, Mapping[str, Any]],
    title: str = "Per-token view of one completion",
    x_title: str = "completion token (position: token)",
    clip_quantile: float = 0.95,
    text_format: str = ".2f",
) -> go.Figure:
    """Per-token values over one completion: one heatmap panel per quantity, one row per series.

    ``panels[panel_title][row_label]`` is a length-``len(tokens)`` vector; the panel
    title is the y-axis title and carries the unit (e.g. ``"log-probability (nats)"``).
    Each panel has its own colour bar: a panel whose values all have one sign uses the
    sequential ``Viridis`` scale; one with both signs uses the diverging ``RdBu`` scale
    centred at 0, so the *sign* of an advantage reads as colour (blue up, red down).
    The colour range stops at the ``clip_quantile`` of |value| so one extreme token does
    not wash out the rest; every cell also prints its exact value. Tokens are placed by
    position (repeated tokens stay separate columns).
    """
    if not panels:
        raise ValueError("no panels to draw")
    n = len(tokens)
    names = list(panels)
    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        row_heights=[max(1, len(panels[p])) for p in names])
    for i, ptitle in enumerate(names):
        rows = {str(k): _np(v).ravel() for k, v in panels[ptitle].items()}
        for label, z in rows.items():
            if z.size != n:
                raise ValueError(f"panel {ptitle!r} row {label!r} has {z.size} values for "
                                 f"{n} tokens")
        z = np.stack(list(rows.values()))
        finite = np.abs(z[np.isfinite(z)])
        top = float(np.quantile(finite, clip_quantile)) if finite.size else 1.0
        top = top if top > 0 else 1.0
        if np.nanmin(z) < 0 < np.nanmax(z):
            scale = dict(colorscale="RdBu", zmid=0.0, zmin=-top, zmax=top)
        else:
            lo, hi = (-top, 0.0) if np.nanmax(z) <= 0 else (0.0, top)
            scale = dict(colorscale="Viridis", zmin=lo, zmax=hi)
        yaxis = fig.layout["yaxis" if i == 0 else f"yaxis{i + 1}"]
        d0, d1 = yaxis.domain
        fig.add_heatmap(
            z=z, x=list(range(n)), y=list(rows), **scale, name=ptitle,
            texttemplate=f"%{{z:{text_format}}}", textfont=dict(size=9),
            customdata=np.tile(np.asarray(list(tokens), dtype=object), (len(rows), 1)),
            hovertemplate="%{y} at %{x} (%{customdata}): %{z:.4g}<extra></extra>",
            colorbar=dict(y=(d0 + d1) / 2, len=max(d1 - d0, 0.1), thickness=12),
            row=i + 1, col=1,
        )
        fig.update_yaxes(title_text=ptitle, autorange="reversed", row=i + 1, col=1)
    ticks = [f"{k}: {t}" for k, t in enumerate(tokens)]
    fig.update_xaxes(tickvals=list(range(n)), ticktext=ticks, tickangle=-60)
    fig.update_xaxes(title_text=x_title, row=len(names), col=1)
    fig.update_layout(title=title, height=110 * sum(max(1, len(panels[p])) for p in names) + 220,
                      **_SUBPLOT_LAYOUT)
    return fig


def fig_measurements(
    table: Mapping[str, Mapping[str, float]],
    title: str = "Measured costs",
    x_title: str = "variant",
) -> go.Figure:
    """Side-by-side bars of measured costs: ``table[metric_with_unit][variant] = value``.

    One panel per metric (its key, which must name the unit, is the y-axis title), one
    bar per variant in a fixed colour per variant across panels; each bar is labelled
    with its value. For memory, time or FLOP comparisons measured in a notebook.
    """
    if not table:
        raise ValueError("no measurements to draw")
    metrics = list(table)
    variants: List[str] = []
    for m in metrics:
        variants += [v for v in table[m] if v not in variants]
    colors = {v: OTHER_COLORS[i % len(OTHER_COLORS)] for i, v in enumerate(variants)}
    fig = make_subplots(rows=1, cols=len(metrics), horizontal_spacing=0.12,
                        subplot_titles=metrics)
    for j, m in enumerate(metrics):
        xs = list(table[m])
        ys = [float(table[m][v]) for v in xs]
        fig.add_bar(x=xs, y=ys, marker_color=[colors[v] for v in xs], showlegend=False,
                    text=[f"{y:.3g}" for y in ys], textposition="outside", name=m,
                    row=1, col=j + 1)
        fig.update_yaxes(title_text=m, rangemode="tozero", row=1, col=j + 1)
        top = max(ys) if ys else 1.0
        fig.update_yaxes(range=[0, 1.15 * top if top > 0 else 1.0], row=1, col=j + 1)
    fig.update_xaxes(title_text=x_title)
    fig.update_layout(title=title, **_SUBPLOT_LAYOUT)
    return fig


__all__ = [
    "METRIC_LABELS", "DEFAULT_METRICS",
    "fig_learning_curves", "fig_accuracy", "fig_token_heatmap", "fig_measurements",
]
