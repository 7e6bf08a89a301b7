"""The shared visual language of every figure: colours, dashes, patterns, axis helpers.

Both figure modules build on this one: ``plots_toy`` (the exact-toy figures of notebooks
01-03) and ``plots_runs`` (training runs, evaluations, measured costs: notebooks 04-06 and
the ``make reproduce`` report). Keeping the style here lets each figure module be imported
on its own while a divergence keeps one colour and an estimator one dash everywhere:

- one colour per divergence, keyed by its registry name (``DIVERGENCE_COLORS``);
  a shifted generator ``f + c(u - 1)`` keeps its base divergence's colour;
- one line dash per estimator (``ESTIMATOR_DASH``: exact solid, OPD dashed, OPD+
  dotted) and, for bars, one fill pattern per estimator (``ESTIMATOR_PATTERN``);
- the teacher is always drawn in ``TEACHER_COLOR``;
- every axis has a title with its unit (nats, probability, step, tokens, ...);
- readable on a projector: every figure uses the ``"opdplus"`` plotly template (large fonts,
  thick lines, big markers), and OPD vs OPD+ are told apart by colour AND marker, not by dash
  alone (a dash is lost at a distance; colour alone is lost to colour-blind readers):
  ``ESTIMATOR_MARKER`` gives each estimator a marker symbol, ``ESTIMATOR_COLORS`` a
  colour for figures of one divergence, and ``arm_trace_style`` /
  ``apply_projector_style`` combine them with the divergence colours (OPD drawn in a darker
  shade of its divergence's colour when several divergences share a figure).

Inputs are plain numbers, lists, numpy arrays or torch tensors (converted by ``_np``).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import plotly.graph_objects as go

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

ESTIMATOR_MARKER: Dict[str, str] = {"exact": "diamond", "opd": "x", "opd+": "circle"}
"""Marker symbol of each estimator (a cross for OPD, a disc for OPD+)."""

ESTIMATOR_COLORS: Dict[str, str] = {"exact": "#000000", "opd": "#d95f02", "opd+": "#1b9e77"}
"""Colour of each estimator when a figure shows one divergence (ColorBrewer Dark2's orange
and teal, told apart under the common colour-vision deficiencies; the same as the explorers'
of ``plots_explore``)."""

FONT_SIZE = 18
"""Base font size of every figure (axis titles 20, ticks 16, titles 22): readable from the
back of a lecture room at a projector's resolution."""

TEMPLATE_NAME = "opdplus"


def _register_template() -> str:
    """The ``"opdplus"`` template: plotly_white with large fonts, thick lines, big markers."""
    import plotly.io as pio

    if TEMPLATE_NAME not in pio.templates:
        t = go.layout.Template(pio.templates["plotly_white"])
        t.layout.font = dict(size=FONT_SIZE)
        t.layout.title.font = dict(size=FONT_SIZE + 4)
        t.layout.legend.font = dict(size=FONT_SIZE - 2)
        t.layout.xaxis.title.font = dict(size=FONT_SIZE + 2)
        t.layout.yaxis.title.font = dict(size=FONT_SIZE + 2)
        t.layout.xaxis.tickfont = dict(size=FONT_SIZE - 2)
        t.layout.yaxis.tickfont = dict(size=FONT_SIZE - 2)
        t.data.scatter = [go.Scatter(line=dict(width=3), marker=dict(size=9))]
        pio.templates[TEMPLATE_NAME] = t
    return TEMPLATE_NAME


_LAYOUT = dict(template=_register_template(), margin=dict(l=70, r=20, t=70, b=60))
_SUBPLOT_LAYOUT = dict(template=TEMPLATE_NAME, margin=dict(l=70, r=20, t=110, b=60))


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


def _shade(color: str, factor: float) -> str:
    """``color`` (``#rrggbb``) darkened towards black by ``factor`` in [0, 1]."""
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c * (1 - factor)):02x}" for c in rgb)


OPD_SHADE = 0.45
"""How much darker OPD is drawn than OPD+ of the same divergence (``arm_trace_style``)."""


def estimator_style(estimator: str) -> Dict[str, Any]:
    """Line and marker of an estimator in a one-divergence figure: colour, dash and marker."""
    if estimator not in ESTIMATOR_MARKER:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATOR_MARKER)}")
    color = ESTIMATOR_COLORS[estimator]
    return {"line": {"color": color, "dash": ESTIMATOR_DASH[estimator]},
            "marker": {"color": color, "symbol": ESTIMATOR_MARKER[estimator]}}


def arm_trace_style(arm: Union[str, Tuple[str, str]], index: int = 0,
                    one_divergence: bool = False) -> Dict[str, Any]:
    """``line`` and ``marker`` of a training arm for ``go.Scatter(**style)``: projector-ready.

    With ``one_divergence`` (a figure comparing estimators of one divergence) the colours are
    ``ESTIMATOR_COLORS``; otherwise the divergence's colour, darker for OPD. Either way OPD and
    OPD+ also differ by marker (``ESTIMATOR_MARKER``) and dash.
    """
    base = arm_style(arm, index)
    est = estimator_of("/".join(arm) if isinstance(arm, tuple) else str(arm))
    if est is None:
        return {"line": dict(base), "marker": {"color": base["color"]}}
    if one_divergence:
        return estimator_style(est)
    color = _shade(base["color"], OPD_SHADE) if est == "opd" else base["color"]
    return {"line": {"color": color, "dash": base["dash"]},
            "marker": {"color": color, "symbol": ESTIMATOR_MARKER[est]}}


def apply_projector_style(fig: go.Figure) -> go.Figure:
    """Restyle ``fig`` in place for a projector: the large-font template, and every line trace
    named after an estimator drawn with ``arm_trace_style`` (markers added to its lines).

    A figure whose estimator traces name at most one divergence is coloured by estimator.
    """
    fig.update_layout(template=TEMPLATE_NAME)
    named = [t for t in fig.data if t.type == "scatter" and t.name and estimator_of(t.name)]
    divs = set()
    for t in named:
        key = t.name.lower().replace(" ", "_").replace("-", "_")
        divs.add(next((n for n in sorted(names(), key=len, reverse=True) if n in key), None))
    one = len(divs - {None}) <= 1
    for t in named:
        st = arm_trace_style(t.name, one_divergence=one)
        t.update(line=st["line"], marker=st["marker"])
        if t.mode in (None, "lines"):
            t.mode = "lines+markers"
    return fig


def _finish(fig: go.Figure, title: str, x_title: str, y_title: str, **layout) -> go.Figure:
    fig.update_layout(title=title, **_LAYOUT, **layout)
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title)
    return fig


__all__ = [
    "DIVERGENCE_COLORS", "ESTIMATOR_DASH", "ESTIMATOR_PATTERN", "TEACHER_COLOR", "OTHER_COLORS",
    "divergence_color", "divergence_label", "estimator_of", "arm_style",
    "ESTIMATOR_MARKER", "ESTIMATOR_COLORS", "FONT_SIZE", "TEMPLATE_NAME", "estimator_style",
    "arm_trace_style", "apply_projector_style",
]
