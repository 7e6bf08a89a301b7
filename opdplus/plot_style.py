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
- every axis has a title with its unit (nats, probability, step, tokens, ...).

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


__all__ = [
    "DIVERGENCE_COLORS", "ESTIMATOR_DASH", "ESTIMATOR_PATTERN", "TEACHER_COLOR", "OTHER_COLORS",
    "divergence_color", "divergence_label", "estimator_of", "arm_style",
]
