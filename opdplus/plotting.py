"""Pure figure builders: ``fig_*(...) -> plotly.graph_objects.Figure``.

Nothing here calls ``.show()`` or touches a kernel, so tests build every figure
directly and notebooks, widgets and the ``make reproduce`` report share them.

One visual language everywhere:

- one colour per divergence, keyed by its registry name (``DIVERGENCE_COLORS``);
  a shifted generator ``f + c(u - 1)`` keeps its base divergence's colour;
- one line dash per estimator (``ESTIMATOR_DASH``: exact solid, OPD dashed, OPD+
  dotted) and, for bars, one fill pattern per estimator (``ESTIMATOR_PATTERN``);
- the teacher is always drawn in ``TEACHER_COLOR``;
- every axis has a title with its unit (nats, probability, step, tokens, ...);
- per-token heatmaps (``fig_token_heatmap``) use a sequential scale for one-signed
  values and a diverging one centred at 0 for signed values such as advantages.

Inputs are plain numbers, lists, numpy arrays or torch tensors (converted by
``_np``). Beyond evaluating the library's own closed forms (``f`` and the
advantages) the builders compute no divergence or gradient: notebooks and the
trainer do that, so a figure cannot hide a bug in the maths.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .divergences import Divergence, Shifted, get, names

# ----------------------------------------------------------------------------- the style

DIVERGENCE_COLORS: Dict[str, str] = {
    "reverse_kl": "#1f77b4",  # blue
    "forward_kl": "#d62728",  # red
    "jsd": "#2ca02c",  # green
    "tv": "#7f7f7f",  # grey
    "hellinger": "#9467bd",  # purple
    "pearson_chi2": "#ff7f0e",  # orange
    "neyman_chi2": "#17becf",  # cyan
    "alpha": "#e377c2",  # pink
    "skew_kl": "#bcbd22",  # olive
    "skew_reverse_kl": "#393b79",  # indigo
    "jeffreys": "#8c564b",  # brown
}
"""Colour of each registered divergence (every name of ``divergences.names()``)."""

ESTIMATOR_DASH: Dict[str, str] = {"exact": "solid", "opd": "dash", "opd+": "dot"}
"""Line dash of each estimator: the exact gradient, OPD (stop-gradient), OPD+."""

ESTIMATOR_PATTERN: Dict[str, str] = {"exact": "", "opd": "/", "opd+": "."}
"""Bar fill pattern of each estimator (bars cannot be dashed)."""

TEACHER_COLOR = "#222222"
OTHER_COLORS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3")
"""Palette for traces that are not a divergence (e.g. baselines in a histogram)."""

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

_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=60, b=50))
_SUBPLOT_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=100, b=50))


def _np(x: Any) -> np.ndarray:
    """A float numpy array from a list, array or (possibly grad-tracking) tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def _div_name(div: Union[str, Divergence]) -> str:
    if isinstance(div, Shifted):
        return _div_name(div.base)
    if isinstance(div, Divergence):
        return div.name
    return str(div)


def divergence_color(div: Union[str, Divergence]) -> str:
    """The colour of a divergence (registry name or object; shifted ones use the base)."""
    name = _div_name(div)
    if name not in DIVERGENCE_COLORS:
        known = ", ".join(DIVERGENCE_COLORS)
        raise ValueError(f"no colour for divergence {name!r}; known: {known}")
    return DIVERGENCE_COLORS[name]


def divergence_label(div: Union[str, Divergence]) -> str:
    """Human title of a divergence, with its parameters (e.g. ``Jensen–Shannon (β) β=0.5``)."""
    d = get(div) if isinstance(div, str) else div
    symbol = {"beta": "β", "alpha": "α"}
    ps = " ".join(f"{symbol.get(k, k)}={v:g}" for k, v in d.params.items() if k != "normalized")
    return f"{d.title} {ps}".strip()


def estimator_of(key: str) -> Optional[str]:
    """The estimator a trace key names: ``"opd+"``, ``"opd"``, ``"exact"`` or None.

    Accepts decorated keys such as ``"opd+ γ=1"`` or ``"forward_kl/opd"``.
    """
    k = str(key).lower()
    for est in ("opd+", "exact"):
        if est in k:
            return est
    if re.search(r"(^|[^a-z])opd($|[^a-z+])", k):
        return "opd"
    return None


def arm_style(arm: Union[str, Tuple[str, str]], index: int = 0) -> Dict[str, str]:
    """Colour and dash of a training arm such as ``"forward_kl/opd+"`` or ``("jsd", "opd")``.

    The colour comes from the registered divergence name the arm contains (spaces and
    hyphens read as underscores, so ``"forward KL"`` works too; the longest match wins,
    so ``skew_reverse_kl`` is not taken for ``reverse_kl``), the dash from its estimator.
    Arms naming no divergence fall back to ``OTHER_COLORS[index]``.
    """
    text = "/".join(arm) if isinstance(arm, tuple) else str(arm)
    key = text.lower().replace(" ", "_").replace("-", "_")
    found = next((n for n in sorted(names(), key=len, reverse=True) if n in key), None)
    color = DIVERGENCE_COLORS[found] if found else OTHER_COLORS[index % len(OTHER_COLORS)]
    return {"color": color, "dash": ESTIMATOR_DASH.get(estimator_of(text) or "exact", "solid")}


def _finish(fig: go.Figure, title: str, x_title: str, y_title: str, **layout) -> go.Figure:
    fig.update_layout(title=title, **_LAYOUT, **layout)
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


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

    Every curve passes through 0 at log u = 0 (f(1) = 0). Defaults to the whole registry.
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
        "log u = log q − log p (nats)", "f(u) (per-token divergence, nats)",
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
    """The two advantage designs over log u: OPD's −f(u) (dashed) and OPD+'s w_f(u) (dotted).

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
                x=_np(t), y=_np(d.advantage(t, est)), mode="lines",
                name=f"{lab}: {text} ({est.upper()})", legendgroup=lab,
                line=dict(color=c, dash=ESTIMATOR_DASH[est]),
            )
    fig = _finish(
        fig, "Advantage designs: OPD −f(u) (dashed) vs OPD+ w_f(u) = −f + u f′ (dotted)",
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
        for col, y in ((1, tv), (2, mp)):
            fig.add_scatter(x=steps, y=y, mode="lines", name=name, legendgroup=name,
                            showlegend=(col == 1), line=dict(color=st["color"], dash=st["dash"]),
                            row=1, col=col)
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
    arm's key picks its style through ``arm_style`` (``"forward_kl/opd+"`` is red, dotted).
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
        for j, m in enumerate(metrics):
            pts = [(r.get(x, k), r[m]) for k, r in enumerate(rs) if r.get(m) is not None]
            r_, c_ = divmod(j, ncols)
            fig.add_scatter(
                x=[p[0] for p in pts], y=[float(p[1]) for p in pts], mode="lines+markers",
                name=name, legendgroup=name, showlegend=(j == 0),
                line=dict(color=st["color"], dash=st["dash"]), marker=dict(size=4),
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
    "DIVERGENCE_COLORS", "ESTIMATOR_DASH", "ESTIMATOR_PATTERN", "TEACHER_COLOR", "OTHER_COLORS",
    "METRIC_LABELS", "DEFAULT_METRICS",
    "divergence_color", "divergence_label", "estimator_of", "arm_style",
    "fig_generators", "fig_advantages", "fig_categorical", "fig_gradient_agreement",
    "fig_dynamics", "fig_mc_histograms", "fig_learning_curves", "fig_accuracy",
    "fig_token_heatmap", "fig_measurements",
]
