"""Figures of the exact toy: generators, advantages, distributions, gradients, dynamics.

Pure builders ``fig_*(...) -> plotly.graph_objects.Figure`` for notebooks 01-03 (and the
widgets over them): the f-divergence generators and the two advantage designs over log u,
teacher vs student categorical distributions, the estimators' agreement with the exact
gradient, the one-state expected-gradient dynamics and Monte Carlo histograms; and,
re-exported from ``opdplus.plots_explore``, the plotly-native explorers (sliders and
dropdowns that keep working in a static page). Nothing here calls ``.show()``. Beyond
evaluating the library's own closed forms (``f`` and the advantages) the builders
compute no divergence or gradient: notebooks and ``opdplus.toy`` do that, so a figure
cannot hide a bug in the maths. Style: ``opdplus.plot_style``.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .divergences import Divergence, get, names
from .plot_style import (
    _SUBPLOT_LAYOUT,
    ESTIMATOR_DASH,
    ESTIMATOR_PATTERN,
    TEACHER_COLOR,
    _finish,
    _np,
    arm_style,
    divergence_color,
    divergence_label,
    estimator_of,
)
from .plots_explore import (  # the plotly-native explorers (sliders, dropdowns)
    ESTIMATOR_COLOR,
    ESTIMATOR_MARKER,
    _est_marker,
    fig_divergence_explorer,
    fig_dynamics_steps,
    fig_generator_sliders,
)

# ----------------------------------------------------------------------------- generators


def _log_u_grid(log_u_range: Tuple[float, float], n: int) -> torch.Tensor:
    return torch.linspace(float(log_u_range[0]), float(log_u_range[1]), n, dtype=torch.float64)


def fig_generators(
    divergences: Optional[Sequence[Union[str, Divergence]]] = None,
    log_u_range: Tuple[float, float] = (-3.0, 3.0),
    n: int = 241,
    y_range: Optional[Tuple[float, float]] = (-1.0, 6.0),
) -> go.Figure:
    """The generators f(u) of the family, plotted against log u (one line per divergence).

    Every curve passes through 0 at log u = 0 (f(1) = 0). f is a generator, not a
    divergence, and takes negative values (reverse KL: f(u) = −log u < 0 for u > 1), so
    the y axis is titled plainly "f(u)". Defaults to the whole registry.
    ``y_range`` clips the view (Pearson χ² reaches ~360 at log u = 3); None shows all.
    """
    divs = [get(d) if isinstance(d, str) else d for d in (divergences or names())]
    t = _log_u_grid(log_u_range, n)
    fig = go.Figure()
    for d in divs:
        fig.add_scatter(
            x=_np(t), y=_np(d.f_log(t)), mode="lines", name=divergence_label(d),
            line=dict(color=divergence_color(d), dash=ESTIMATOR_DASH["exact"]),
        )
    fig = _finish(
        fig, "Generators f(u) of the f-divergence family",
        "log u = log q − log p (nats)", "f(u)",
    )
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig


def fig_advantages(
    divergences: Optional[Sequence[Union[str, Divergence]]] = None,
    log_u_range: Tuple[float, float] = (-3.0, 3.0),
    n: int = 241,
    y_range: Optional[Tuple[float, float]] = (-5.0, 5.0),
) -> go.Figure:
    """The two advantage designs over log u: OPD's −f(u) (dashed, ×) and OPD+'s w_f(u) (dotted, ●).

    Two traces per divergence, in its colour. For reverse KL the two curves differ by
    the constant 1, which is why OPD is unbiased there and only there.
    """
    divs = [get(d) if isinstance(d, str) else d for d in (divergences or names())]
    t = _log_u_grid(log_u_range, n)
    fig = go.Figure()
    for d in divs:
        c, lab = divergence_color(d), divergence_label(d)
        for est, text in (("opd", "−f(u)"), ("opd+", "w_f(u)")):
            fig.add_scatter(
                x=_np(t), y=_np(d.advantage(t, est)), mode="lines+markers",
                name=f"{lab}: {text} ({est.upper()})", legendgroup=lab,
                line=dict(color=c, dash=ESTIMATOR_DASH[est]), marker=_est_marker(est, color=c),
            )
    fig = _finish(
        fig, "Advantage designs: OPD −f(u) (dashed, ×) vs OPD+ w_f(u) = −f + u f′ (dotted, ●)",
        "log u = log q − log p (nats)", "advantage A(u) (nats)",
    )
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig


# ----------------------------------------------------------------------------- distributions


def fig_categorical(
    teacher: Any,
    students: Union[Any, Mapping[str, Any]],
    labels: Optional[Sequence[Any]] = None,
    style: str = "bars",
    title: str = "Teacher vs student",
    x_title: str = "token",
) -> go.Figure:
    """Teacher probabilities (bars) against one or more students.

    ``students`` is one probability vector or a mapping ``label -> probabilities``;
    a label that names a divergence (e.g. ``"reverse_kl"`` or ``"forward_kl/opd"``)
    gets its colour and its estimator's dash (lines) or fill pattern (bars).
    ``style="bars"`` draws students as grouped bars (few tokens), ``"lines"`` as
    lines with markers (a long 1-D grid).
    """
    if style not in ("bars", "lines"):
        raise ValueError(f"style must be 'bars' or 'lines', got {style!r}")
    q = _np(teacher)
    studs = dict(students) if isinstance(students, Mapping) else {"student": students}
    x = list(labels) if labels is not None else list(range(len(q)))
    fig = go.Figure()
    fig.add_bar(x=x, y=q, name="teacher q", marker_color=TEACHER_COLOR, opacity=0.35)
    for i, (name, p) in enumerate(studs.items()):
        p = _np(p)
        if p.shape != q.shape:
            raise ValueError(f"student {name!r} has shape {p.shape}, teacher {q.shape}")
        st = arm_style(name, i)
        if style == "bars":
            pattern = ESTIMATOR_PATTERN.get(estimator_of(str(name)) or "exact", "")
            fig.add_bar(x=x, y=p, name=str(name),
                        marker=dict(color=st["color"], pattern_shape=pattern))
        else:
            fig.add_scatter(x=x, y=p, name=str(name), mode="lines+markers",
                            line=dict(color=st["color"], dash=st["dash"]), marker=dict(size=4))
    return _finish(fig, title, x_title, "probability", barmode="group")


# ----------------------------------------------------------------------------- gradients


def fig_gradient_agreement(
    agreement: Mapping[str, Mapping[str, Mapping[str, float]]],
    title: str = "Estimator vs exact gradient",
) -> go.Figure:
    """Relative error and cosine of each estimator against the exact gradient, per divergence.

    ``agreement[divergence][estimator] = {"rel_error": ..., "cosine": ...}`` (as
    returned by ``toy.gradient_agreement``). Left panel: relative error on a log
    axis (floored at 1e-17 so exact zeros stay visible); right panel: cosine. One
    bar trace per estimator and panel, bars coloured by divergence.
    """
    divs = list(agreement)
    ests: List[str] = []
    for d in divs:
        ests += [e for e in agreement[d] if e not in ests]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12, subplot_titles=(
        "relative error ‖E[ĝ] − ∇D‖ / ‖∇D‖", "cosine(E[ĝ], ∇D)"))
    colors = [divergence_color(d) for d in divs]
    for col, key in ((1, "rel_error"), (2, "cosine")):
        for est in ests:
            vals = [agreement[d][est][key] if est in agreement[d] else None for d in divs]
            if key == "rel_error":
                vals = [None if v is None else max(abs(v), 1e-17) for v in vals]
            fig.add_bar(
                x=divs, y=vals, name=est, legendgroup=est, showlegend=(col == 1),
                marker=dict(color=colors, pattern_shape=ESTIMATOR_PATTERN.get(
                    estimator_of(est) or "exact", ""), line=dict(color="black", width=0.5)),
                row=1, col=col,
            )
    fig.update_layout(title=title, barmode="group", **_SUBPLOT_LAYOUT)
    fig.update_xaxes(title_text="divergence")
    fig.update_yaxes(title_text="relative error (dimensionless, log scale)", type="log",
                     exponentformat="power", row=1, col=1)
    fig.update_yaxes(title_text="cosine similarity (dimensionless)", range=[-1.05, 1.05],
                     row=1, col=2)
    return fig


def fig_dynamics(
    runs: Mapping[Any, Mapping[str, Any]],
    record_every: int = 1,
    upto: Optional[int] = None,
    title: str = "Expected-gradient dynamics at one state",
) -> go.Figure:
    """Total variation to the teacher and the student's largest probability over steps.

    ``runs[(divergence, estimator)]`` (or ``runs["divergence/estimator"]``) is the
    output of ``toy.one_state_dynamics`` (``tv`` and ``max_prob`` per recorded step).
    ``upto`` draws a vertical marker at that step (the widget's step slider).
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("distance to the teacher", "collapse to one token"))
    for i, (key, run) in enumerate(runs.items()):
        st = arm_style(key, i)
        name = "/".join(key) if isinstance(key, tuple) else str(key)
        tv, mp = _np(run["tv"]), _np(run["max_prob"])
        steps = np.arange(len(tv)) * record_every
        marker = _est_marker(estimator_of(name), color=st["color"])
        for col, y in ((1, tv), (2, mp)):
            fig.add_scatter(x=steps, y=y, mode="lines+markers", name=name, legendgroup=name,
                            showlegend=(col == 1), line=dict(color=st["color"], dash=st["dash"]),
                            marker=marker, row=1, col=col)
    if upto is not None:
        for col in (1, 2):
            fig.add_vline(x=upto, line=dict(color="black", width=1), row=1, col=col)
    fig.update_layout(title=title, **_SUBPLOT_LAYOUT)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="total variation to teacher (probability)", range=[0, 1],
                     row=1, col=1)
    fig.update_yaxes(title_text="largest student probability (probability)", range=[0, 1.02],
                     row=1, col=2)
    return fig


def fig_mc_histograms(
    samples: Mapping[str, Any],
    exact: Union[float, Mapping[str, float]],
    title: str = "Monte Carlo estimates vs the exact value",
    x_title: str = "estimate (nats)",
    nbins: int = 50,
) -> go.Figure:
    """Histograms of Monte Carlo estimates, one row per label, against the exact value(s).

    ``samples[label]`` is a 1-D array of independent estimates. ``exact`` is one
    number (the same for every row) or one per label. In each row the exact value is a
    solid black line and the sample mean a dotted line in the row's colour, so a bias
    shows as a gap between the two. All rows share the x axis and the bin edges.
    """
    data = {str(k): _np(v).ravel() for k, v in samples.items()}
    if not data:
        raise ValueError("no samples to draw")
    pooled = np.concatenate(list(data.values()))
    lo, hi = float(pooled.min()), float(pooled.max())
    size = (hi - lo) / nbins if hi > lo else 1.0
    n = len(data)
    fig = make_subplots(rows=n, cols=1, shared_xaxes=True, vertical_spacing=0.04)
    for i, (label, xs) in enumerate(data.items()):
        c = arm_style(label, i)["color"]
        fig.add_histogram(x=xs, name=f"{label} (n={xs.size})", marker_color=c, opacity=0.8,
                          xbins=dict(start=lo, end=hi + size, size=size), row=i + 1, col=1)
        target = exact[label] if isinstance(exact, Mapping) else exact
        fig.add_vline(x=float(target), line=dict(color="black", dash=ESTIMATOR_DASH["exact"],
                                                 width=2), row=i + 1, col=1)
        fig.add_vline(x=float(xs.mean()), line=dict(color=c, dash=ESTIMATOR_DASH["opd+"], width=3),
                      row=i + 1, col=1)
        fig.update_yaxes(title_text="batches (count)", row=i + 1, col=1)
    fig.update_xaxes(title_text=x_title, row=n, col=1)
    fig.update_layout(
        title=f"{title}<br><sup>solid black: exact value; dotted: Monte Carlo mean</sup>",
        height=140 * n + 180, bargap=0.05, **_SUBPLOT_LAYOUT)
    return fig


__all__ = [
    "fig_generators", "fig_advantages", "fig_categorical", "fig_gradient_agreement",
    "fig_dynamics", "fig_mc_histograms",
    # plotly-native explorers (opdplus.plots_explore), working in a static page
    "ESTIMATOR_MARKER", "ESTIMATOR_COLOR", "fig_generator_sliders", "fig_divergence_explorer",
    "fig_dynamics_steps",
]
