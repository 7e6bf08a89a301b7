"""The projector style: large fonts, and OPD vs OPD+ told apart by colour AND marker."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from opdplus import divergences as D
from opdplus import plot_style as S


def test_estimators_differ_by_colour_and_marker_in_every_style():
    for est_a, est_b in (("opd", "opd+"), ("opd", "exact"), ("opd+", "exact")):
        a, b = S.estimator_style(est_a), S.estimator_style(est_b)
        assert a["marker"]["symbol"] != b["marker"]["symbol"]
        assert a["line"]["color"] != b["line"]["color"]
    for name in D.names():  # several divergences in one figure: still colour and marker
        opd, plus = S.arm_trace_style(f"{name}/opd"), S.arm_trace_style(f"{name}/opd+")
        assert opd["line"]["color"] != plus["line"]["color"], name
        assert opd["marker"]["symbol"] != plus["marker"]["symbol"], name
        assert plus["line"]["color"] == S.DIVERGENCE_COLORS[name]  # hue still the divergence's
    shades = {S.arm_trace_style(f"{n}/opd")["line"]["color"] for n in D.names()}
    assert len(shades) == len(D.names()), "darkened OPD colours must stay distinct"
    with pytest.raises(ValueError, match="unknown estimator"):
        S.estimator_style("ppo")


def test_shade_darkens():
    assert S._shade("#ffffff", 0.5) == "#808080" and S._shade("#1f77b4", 0.0) == "#1f77b4"


def test_template_has_projector_fonts():
    t = pio.templates[S.TEMPLATE_NAME]
    assert t.layout.font.size >= 16 and t.layout.xaxis.tickfont.size >= 14
    assert t.data.scatter[0].line.width >= 3
    fig = go.Figure(layout=dict(**S._LAYOUT))
    assert fig.layout.template.layout.font.size == S.FONT_SIZE


def test_apply_projector_style_recolours_by_estimator_for_one_divergence():
    fig = go.Figure([go.Scatter(y=[1, 2], name="forward_kl/opd", mode="lines"),
                     go.Scatter(y=[2, 1], name="forward_kl/opd+", mode="lines"),
                     go.Scatter(y=[0, 0], name="teacher", line=dict(color="#222222"))])
    S.apply_projector_style(fig)
    opd, plus, teacher = fig.data
    assert opd.line.color == S.ESTIMATOR_COLORS["opd"] != plus.line.color
    assert opd.marker.symbol == "x" and plus.marker.symbol == "circle"
    assert opd.mode == "lines+markers" and teacher.line.color == "#222222"
    two = go.Figure([go.Scatter(y=[1], name=n) for n in
                     ("forward_kl/opd", "forward_kl/opd+", "jsd/opd", "jsd/opd+")])
    S.apply_projector_style(two)
    colors = [t.line.color for t in two.data]
    assert len(set(colors)) == 4 and colors[1] == S.DIVERGENCE_COLORS["forward_kl"]


def test_exported_key_figures_tell_opd_from_opd_plus():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "export_figures.py"
    spec = importlib.util.spec_from_file_location("export_figures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fig = S.apply_projector_style(mod.fig_dynamics())
    style = {t.name: (t.line.color, t.marker.symbol) for t in fig.data if t.showlegend is not False}
    for div in ("forward_kl", "jsd", "reverse_kl"):
        opd, plus = style[f"{div}/opd"], style[f"{div}/opd+"]
        assert opd[0] != plus[0] and opd[1] != plus[1], div
    assert fig.layout.template.layout.font.size == S.FONT_SIZE
