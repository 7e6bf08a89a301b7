"""Plotly-native explorers of the exact toy: sliders and dropdowns that need no kernel.

An ipywidgets slider asks a running Python kernel to redraw; in a static HTML page (the
site, nbconvert, GitHub's viewer) it is dead. These builders precompute every state the
control can select and hand it to plotly's own ``sliders`` / ``updatemenus``, so moving
the control only swaps arrays inside the browser:

- ``fig_generator_sliders``: the α-divergence and the normalised JSD_β generators, one
  slider each, next to both KLs *and* the shifted KLs the two families actually reach
  at their ends (generators agree only up to ``c (u - 1)``, method.md §2-3);
- ``fig_divergence_explorer``: a dropdown over divergences showing f, the OPD and OPD+
  advantages and their one-state dynamics (runs from ``toy.one_state_dynamics``);
- ``fig_dynamics_steps``: a step slider over those runs' distributions.

As in ``plots_toy``, nothing here computes a gradient or runs dynamics: the builders
evaluate the library's closed forms (``f_log``, ``advantage``) and draw what they are
given. Every control's states are plain lists in the figure's JSON, which is what the
tests read. OPD and OPD+ differ by colour, marker and dash wherever one divergence is
shown (``ESTIMATOR_COLOR``, ``ESTIMATOR_MARKER``), by marker and dash elsewhere.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .divergences import Divergence, get, names, shifted
from .plot_style import (
    _LAYOUT,
    _SUBPLOT_LAYOUT,
    ESTIMATOR_COLORS,
    ESTIMATOR_DASH,
    ESTIMATOR_MARKER,
    TEACHER_COLOR,
    _np,
    arm_style,
    divergence_color,
    divergence_label,
    estimator_of,
)

ESTIMATOR_COLOR = ESTIMATOR_COLORS  # one style for every figure: plot_style's

ESTIMATOR_TEXT = {"opd": "OPD", "opd+": "OPD+"}
_MARKERS_SHOWN = 12  # markers per line: enough to read the symbol, few enough to see the line


def _est_marker(est: Optional[str], **extra) -> dict:
    """Marker of an estimator's line (symbol, size, at most ``_MARKERS_SHOWN`` drawn)."""
    return dict(symbol=ESTIMATOR_MARKER.get(est or "exact", "diamond"), size=9,
                maxdisplayed=_MARKERS_SHOWN, **extra)


def _log_u(log_u_range: Tuple[float, float], n: int) -> torch.Tensor:
    return torch.linspace(float(log_u_range[0]), float(log_u_range[1]), n, dtype=torch.float64)


def _y(d: Divergence, t: torch.Tensor) -> List[float]:
    return _np(d.f_log(t)).tolist()


def _slider(prefix: str, steps: List[dict], active: int, y: float) -> dict:
    return dict(active=active, steps=steps, y=y, yanchor="top", x=0.0, len=1.0,
                pad=dict(t=10, b=10), currentvalue=dict(prefix=prefix, font=dict(size=16)))


def _nearest(values: Sequence[float], value: float) -> int:
    return int(np.argmin(np.abs(np.asarray(values, dtype=float) - value)))


# ----------------------------------------------------------------------------- generators


def fig_generator_sliders(
    alphas: Optional[Sequence[float]] = None,
    betas: Optional[Sequence[float]] = None,
    alpha: float = 0.5,
    beta: float = 0.5,
    log_u_range: Tuple[float, float] = (-3.0, 3.0),
    n: int = 121,
    y_range: Optional[Tuple[float, float]] = (-1.5, 5.0),
) -> go.Figure:
    """Generators over log u with an α slider (α-divergence) and a β slider (JSD_β/(β(1−β))).

    Traces: 0 reverse KL ``−log u``, 1 forward KL ``u log u``, 2 reverse KL ``+ (u − 1)``,
    3 forward KL ``− (u − 1)`` (long dashes: the same two divergences written with other
    generators), 4 the α-divergence at the α slider, 5 the normalised JSD_β at the β
    slider. As α → 0 the α curve lands on trace 2, not on trace 0, and as α → 1 on
    trace 3: the α family connects the two KL *divergences*, whose generators are
    defined only up to ``c (u − 1)``. Normalised JSD_β does the same from β → 0
    (forward KL − (u − 1)) to β → 1 (reverse KL + (u − 1)). Each slider step restyles
    one trace (``y`` and legend name), precomputed for every value in ``alphas`` /
    ``betas`` (defaults: α from −1 to 2 by 0.1, including the limit forms at 0 and 1;
    β from 0.01 to 0.99).
    """
    alphas = [k / 10 for k in range(-10, 21)] if alphas is None else [float(a) for a in alphas]
    betas = ([0.01] + [k / 20 for k in range(1, 20)] + [0.99] if betas is None
             else [float(b) for b in betas])
    if not alphas or not betas:
        raise ValueError("fig_generator_sliders needs at least one α and one β value")
    t = _log_u(log_u_range, n)
    x = _np(t).tolist()
    rev, fwd = get("reverse_kl"), get("forward_kl")
    fig = go.Figure()
    for d, dash, name in (
        (rev, "solid", "reverse KL, KL(student‖teacher): −log u"),
        (fwd, "solid", "forward KL, KL(teacher‖student): u log u"),
        (shifted(rev, 1.0), "longdash", "reverse KL written as −log u + (u − 1)"),
        (shifted(fwd, -1.0), "longdash", "forward KL written as u log u − (u − 1)"),
    ):
        fig.add_scatter(x=x, y=_y(d, t), mode="lines", name=name,
                        line=dict(color=divergence_color(d), dash=dash,
                                  width=2 if dash == "solid" else 3))
    a_ys = [_y(get("alpha", alpha=a), t) for a in alphas]
    b_ys = [_y(get("jsd", beta=b, normalized=True), t) for b in betas]
    ia, ib = _nearest(alphas, alpha), _nearest(betas, beta)
    a_name = "α-divergence, α = {:g}".format
    b_name = "JSD_β / (β(1−β)), β = {:g}".format
    fig.add_scatter(x=x, y=a_ys[ia], mode="lines", name=a_name(alphas[ia]),
                    line=dict(color=divergence_color("alpha"), width=4))
    fig.add_scatter(x=x, y=b_ys[ib], mode="lines", name=b_name(betas[ib]),
                    line=dict(color=divergence_color("jsd"), width=4, dash="dot"))
    a_steps = [dict(method="restyle", label=f"{a:g}", args=[{"y": [y], "name": [a_name(a)]}, [4]])
               for a, y in zip(alphas, a_ys)]
    b_steps = [dict(method="restyle", label=f"{b:g}", args=[{"y": [y], "name": [b_name(b)]}, [5]])
               for b, y in zip(betas, b_ys)]
    fig.update_layout(
        title="Generators f(u): α and β move between the two KLs, up to c (u − 1)",
        sliders=[_slider("α = ", a_steps, ia, -0.14), _slider("β = ", b_steps, ib, -0.36)],
        height=720, legend=dict(yanchor="top", y=1.0, x=1.02), **{**_LAYOUT, "margin": dict(
            l=60, r=20, t=60, b=230)},
    )
    fig.update_xaxes(title_text="log u = log q − log p (nats)")
    fig.update_yaxes(title_text="f(u)")
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig


# ----------------------------------------------------------------------------- divergences


def _run(runs: Mapping[Any, Mapping[str, Any]], name: str, est: str) -> Mapping[str, Any]:
    for key in ((name, est), f"{name}/{est}"):
        if key in runs:
            return runs[key]
    raise ValueError(
        f"runs has no one-state dynamics for ({name!r}, {est!r}): pass "
        f"toy.one_state_dynamics(...) for every (divergence, estimator) pair shown, "
        f"keyed (name, estimator)")


def fig_divergence_explorer(
    runs: Mapping[Any, Mapping[str, Any]],
    divergences: Optional[Sequence[Union[str, Divergence]]] = None,
    record_every: int = 1,
    log_u_range: Tuple[float, float] = (-3.0, 3.0),
    n: int = 121,
    f_range: Tuple[float, float] = (-1.5, 5.0),
    adv_range: Tuple[float, float] = (-5.0, 5.0),
) -> go.Figure:
    """A dropdown over divergences: f, the OPD and OPD+ advantages, and their dynamics.

    Four panels: the generator f(u); the advantages −f(u) (OPD) and w_f(u) (OPD+); the
    total variation to the teacher and the student's largest probability along the
    one-state expected-gradient runs ``runs[(name, "opd" | "opd+")]`` (from
    ``toy.one_state_dynamics``, recorded every ``record_every`` steps). Seven traces
    per divergence, in the order f, OPD adv, OPD+ adv, OPD tv, OPD+ tv, OPD max,
    OPD+ max; the dropdown entry of a divergence makes its seven visible and sets the
    title, which quotes f′(1) = w_f(1) (the sign that decides OPD's drift at the
    teacher, method.md §2) and the runs' final distance to the teacher.
    """
    divs = [get(d) if isinstance(d, str) else d for d in (divergences or names())]
    if not divs:
        raise ValueError("fig_divergence_explorer needs at least one divergence")
    t = _log_u(log_u_range, n)
    x = _np(t).tolist()
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.1, vertical_spacing=0.16,
                        subplot_titles=("generator f(u)", "advantage A(u)",
                                        "distance to the teacher", "collapse to one token"))
    titles = []
    for i, d in enumerate(divs):
        first = i == 0
        lab = divergence_label(d)
        fig.add_scatter(x=x, y=_y(d, t), mode="lines", name="f(u)", visible=first,
                        line=dict(color=divergence_color(d), width=3), row=1, col=1)
        for est, text in (("opd", "OPD: A = −f(u)"), ("opd+", "OPD+: A = w_f(u)")):
            fig.add_scatter(x=x, y=_np(d.advantage(t, est)).tolist(), mode="lines+markers",
                            name=text, legendgroup=est, visible=first,
                            line=dict(color=ESTIMATOR_COLOR[est], dash=ESTIMATOR_DASH[est],
                                      width=3),
                            marker=_est_marker(est, color=ESTIMATOR_COLOR[est]), row=1, col=2)
        final = {}
        for key, row_col in (("tv", (2, 1)), ("max_prob", (2, 2))):
            for est in ("opd", "opd+"):
                y = _np(_run(runs, d.name, est)[key])
                final[(key, est)] = float(y[-1])
                fig.add_scatter(x=(np.arange(len(y)) * record_every).tolist(), y=y.tolist(),
                                mode="lines+markers", name=f"{ESTIMATOR_TEXT[est]} run",
                                legendgroup=est, showlegend=False, visible=first,
                                line=dict(color=ESTIMATOR_COLOR[est], dash=ESTIMATOR_DASH[est],
                                          width=3),
                                marker=_est_marker(est, color=ESTIMATOR_COLOR[est]),
                                row=row_col[0], col=row_col[1])
        f_prime_one = float(d.w_log(torch.zeros((), dtype=torch.float64)))  # w_f(1) = f'(1)
        titles.append(f"{lab}: f′(1) = {f_prime_one:+.2f}<br><sup>final distance to the "
                      f"teacher: OPD {final[('tv', 'opd')]:.3f}, "
                      f"OPD+ {final[('tv', 'opd+')]:.3f}</sup>")
    per = 7
    buttons = []
    for i, d in enumerate(divs):
        visible = [i * per <= k < (i + 1) * per for k in range(per * len(divs))]
        buttons.append(dict(method="update", label=divergence_label(d),
                            args=[{"visible": visible}, {"title.text": titles[i]}]))
    fig.update_layout(
        height=780, **{**_SUBPLOT_LAYOUT, "margin": dict(l=60, r=20, t=150, b=50)},
        updatemenus=[dict(type="dropdown", buttons=buttons, active=0, x=0.0, xanchor="left",
                          y=1.08, yanchor="bottom", font=dict(size=15))],
    )
    fig.update_layout(title=dict(text=titles[0], y=0.96, yanchor="top", x=0.02,
                                 xanchor="left"))
    fig.update_xaxes(title_text="log u = log q − log p (nats)", range=list(log_u_range), row=1)
    fig.update_xaxes(title_text="step", row=2)
    fig.update_yaxes(title_text="f(u)", range=list(f_range), row=1, col=1)
    fig.update_yaxes(title_text="advantage A(u) (nats)", range=list(adv_range), row=1, col=2)
    fig.update_yaxes(title_text="total variation to teacher (probability)", range=[0, 1],
                     row=2, col=1)
    fig.update_yaxes(title_text="largest student probability (probability)", range=[0, 1.02],
                     row=2, col=2)
    return fig


# ----------------------------------------------------------------------------- dynamics


def fig_dynamics_steps(
    runs: Mapping[Any, Mapping[str, Any]],
    teacher_probs: Any,
    record_every: int = 1,
    max_steps: int = 26,
    title: str = "Student distributions along the expected-gradient runs",
) -> go.Figure:
    """A step slider over ``toy.one_state_dynamics`` runs: every student at that step.

    Trace 0 is the teacher (bars); then one line-with-markers per run (divergence
    colour, estimator dash and marker). At most ``max_steps`` recorded steps, spaced
    geometrically (dense early, where the runs move) and always including the first
    and the last, become slider steps; each
    restyles the runs' ``y`` to ``runs[key]["probs"][k]``. The slider starts at the end.
    """
    if not runs:
        raise ValueError("fig_dynamics_steps needs at least one run")
    q = _np(teacher_probs)
    probs = {("/".join(k) if isinstance(k, tuple) else str(k)): _np(r["probs"])
             for k, r in runs.items()}
    recorded = min(len(p) for p in probs.values())
    for name, p in probs.items():
        if p.shape[1:] != q.shape:
            raise ValueError(f"run {name!r} has distributions of shape {p.shape[1:]}, "
                             f"the teacher {q.shape}")
    # geometric spacing: the runs change fastest at the start (collapse takes tens of steps)
    ks = sorted({0} | {int(round(v)) for v in np.geomspace(1, max(recorded - 1, 1),
                                                            max(1, max_steps - 1))})
    tokens = list(range(len(q)))
    fig = go.Figure()
    fig.add_bar(x=tokens, y=q.tolist(), name="teacher q", marker_color=TEACHER_COLOR,
                opacity=0.3)
    for i, (name, p) in enumerate(probs.items()):
        st = arm_style(name, i)
        fig.add_scatter(x=tokens, y=p[ks[-1]].tolist(), name=name, mode="lines+markers",
                        line=dict(color=st["color"], dash=st["dash"], width=3),
                        marker=dict(symbol=ESTIMATOR_MARKER.get(estimator_of(name) or "exact"),
                                    size=12, color=st["color"]))
    idx = list(range(1, len(probs) + 1))
    steps = [dict(method="restyle", label=str(k * record_every),
                  args=[{"y": [p[k].tolist() for p in probs.values()]}, idx]) for k in ks]
    fig.update_layout(title=title, sliders=[_slider("step ", steps, len(ks) - 1, -0.15)],
                      height=560, **{**_LAYOUT, "margin": dict(l=60, r=20, t=60, b=140)})
    fig.update_xaxes(title_text="token", dtick=1)
    fig.update_yaxes(title_text="probability", range=[0, 1.02])
    return fig


__all__ = ["ESTIMATOR_MARKER", "ESTIMATOR_COLOR", "fig_generator_sliders",
           "fig_divergence_explorer", "fig_dynamics_steps"]
