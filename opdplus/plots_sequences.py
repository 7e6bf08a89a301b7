"""The γ slider of notebook 03: bias and spread of OPD and OPD+ as the future term comes in.

``fig_gamma_slider`` draws the data of ``opdplus.toy_variance.gamma_sweep`` (exact moments,
by enumeration) with plotly's own slider: every γ's traces are precomputed and the slider
only switches their visibility, so the figure works in a static HTML page with no kernel.
Three panels:

1. where one batch gradient lands along the exact gradient's direction: its mean and a
   ±2 SD bar, against the exact ``‖∇J_f‖``;
2. the relative bias ``‖E[ĝ] − ∇J_f‖ / ‖∇J_f‖`` against γ;
3. the total variance (trace of the covariance) of one batch gradient against γ.

Panels 2 and 3 show the whole curve, with the slider's γ marked. OPD and OPD+ differ in
colour *and* marker (readable in grey scale and on a projector), not by dash alone.
"""

from __future__ import annotations

from typing import List, Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plot_style import (
    _SUBPLOT_LAYOUT,
    ESTIMATOR_COLORS,
    TEACHER_COLOR,
    divergence_label,
)
from .plot_style import ESTIMATOR_MARKER as ESTIMATOR_SYMBOLS

LABELS = {"opd": "OPD −f(u)", "opd+": "OPD+ w_f(u)"}
_KEYS = ("proj_mean", "proj_sd", "rel_bias", "total_var")


def _check_sweep(sweep: Mapping, estimators: Sequence[str]) -> List[float]:
    gammas = list(sweep.get("gammas", []))
    if not gammas:
        raise ValueError("sweep has no 'gammas': build it with toy_variance.gamma_sweep(...)")
    for est in estimators:
        if est not in sweep:
            raise ValueError(f"sweep has no estimator {est!r}; it has "
                             f"{[k for k in sweep if k in ESTIMATOR_COLORS]}")
        for k in _KEYS:
            if len(sweep[est].get(k, [])) != len(gammas):
                raise ValueError(f"sweep[{est!r}][{k!r}] must have one value per gamma "
                                 f"({len(gammas)})")
    return [float(g) for g in gammas]


def fig_gamma_slider(sweep: Mapping, estimators: Sequence[str] = ("opd", "opd+"),
                     active: int = 0, title: str = "") -> go.Figure:
    """Bias and spread of each estimator against γ, with a plotly slider over γ.

    ``sweep``: ``toy_variance.gamma_sweep(...)``. ``active``: index of the γ shown first.
    The first ``2 * len(estimators)`` traces are the static curves (panels 2 and 3); then
    each γ owns ``3 * len(estimators)`` traces, visible only at its slider step.
    """
    gammas = _check_sweep(sweep, estimators)
    if not 0 <= active < len(gammas):
        raise ValueError(f"active must index the {len(gammas)} gammas, got {active}")
    target, B = float(sweep["target"]), sweep.get("batch_size", "?")
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=(
        f"one batch gradient ({B} sequences), along ∇J_f", "relative bias", "total variance"))
    style = {est: dict(color=ESTIMATOR_COLORS[est], symbol=ESTIMATOR_SYMBOLS[est])
             for est in estimators}
    for col, key in ((2, "rel_bias"), (3, "total_var")):
        for est in estimators:
            fig.add_trace(go.Scatter(
                x=gammas, y=sweep[est][key], mode="lines+markers", name=LABELS[est],
                legendgroup=est, showlegend=col == 2,
                line=dict(color=style[est]["color"], width=3),
                marker=dict(size=8, **style[est]),
                hovertemplate=f"{LABELS[est]}<br>γ=%{{x:g}}<br>%{{y:.4g}}<extra></extra>"),
                row=1, col=col)
    n_static = len(fig.data)
    per_gamma = 3 * len(estimators)
    for i, g in enumerate(gammas):
        for est in estimators:
            m, sd = sweep[est]["proj_mean"][i], sweep[est]["proj_sd"][i]
            fig.add_trace(go.Scatter(
                x=[m], y=[LABELS[est]], mode="markers", showlegend=False, legendgroup=est,
                visible=i == active, error_x=dict(type="constant", value=2 * sd, thickness=3,
                                                  color=style[est]["color"]),
                marker=dict(size=16, line=dict(width=2, color=style[est]["color"]), **style[est]),
                hovertemplate=(f"{LABELS[est]}, γ={g:g}<br>mean %{{x:.4f}}, ±2 SD {2 * sd:.4f}"
                               "<extra></extra>")), row=1, col=1)
            for col, key in ((2, "rel_bias"), (3, "total_var")):
                fig.add_trace(go.Scatter(
                    x=[g], y=[sweep[est][key][i]], mode="markers", showlegend=False,
                    legendgroup=est, visible=i == active,
                    marker=dict(size=20, color=style[est]["color"], symbol=style[est]["symbol"],
                                line=dict(width=2, color=TEACHER_COLOR)),
                    hovertemplate=f"{LABELS[est]}, γ={g:g}: %{{y:.4g}}<extra></extra>"),
                    row=1, col=col)
    fig.add_vline(x=target, line=dict(color=TEACHER_COLOR, width=2), row=1, col=1,
                  annotation_text="exact ‖∇J_f‖", annotation_position="top")
    steps = []
    for i, g in enumerate(gammas):
        visible = [True] * n_static + [False] * (per_gamma * len(gammas))
        for j in range(per_gamma):
            visible[n_static + i * per_gamma + j] = True
        steps.append(dict(method="update", label=f"{g:g}", args=[{"visible": visible}]))
    div = sweep.get("divergence")
    head = title or (f"{divergence_label(div) if div else ''}: what γ does to the "
                     "estimators (exact, by enumeration)").strip(": ")
    fig.update_layout(
        title=head, **_SUBPLOT_LAYOUT, height=480, font=dict(size=16),
        legend=dict(orientation="h", y=-0.32),
        sliders=[dict(active=active, steps=steps, currentvalue=dict(prefix="γ = "),
                      pad=dict(t=70))])
    fig.update_xaxes(title_text="projection on ∇J_f / ‖∇J_f‖ (nats per logit)",
                     row=1, col=1)
    fig.update_xaxes(title_text="γ (weight of the divergence-to-go)", row=1, col=2)
    fig.update_xaxes(title_text="γ (weight of the divergence-to-go)", row=1, col=3)
    fig.update_yaxes(title_text="estimator", row=1, col=1)
    fig.update_yaxes(title_text="‖E[ĝ] − ∇J_f‖ / ‖∇J_f‖", rangemode="tozero",
                     row=1, col=2)
    fig.update_yaxes(title_text="trace of Cov[ĝ] (nats² per logit²)", rangemode="tozero",
                     row=1, col=3)
    return fig


__all__ = ["ESTIMATOR_COLORS", "ESTIMATOR_SYMBOLS", "fig_gamma_slider"]
