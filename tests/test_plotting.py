"""Unit tests of the figure builders (opdplus.plotting) and the widget wiring (opdplus.widgets).

The builders are pure, so the tests inspect the returned figures: how many traces,
which colour and dash each uses, that every axis carries a title, and that the
numbers drawn are the library's (e.g. f(1) = 0 on the generator plot).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from opdplus import divergences, plotting, toy, widgets


def axis_titles(fig: go.Figure) -> dict:
    """{axis name: title text} for every x/y axis of a figure.

    An axis that shares (``matches``) another and hides its tick labels is the upper
    panel of a shared axis, titled once at the bottom; it is left out.
    """
    layout = fig.layout.to_plotly_json()
    return {k: (v.get("title") or {}).get("text", "") for k, v in layout.items()
            if k.startswith(("xaxis", "yaxis"))
            and not (v.get("matches") and v.get("showticklabels") is False)}


def assert_axes_titled(fig: go.Figure) -> None:
    titles = axis_titles(fig)
    assert titles, "figure has no axes"
    for name, text in titles.items():
        assert text and text.strip(), f"axis {name} has no title"


def trace_colors(fig: go.Figure) -> dict:
    """{trace name: line colour (or marker colour)} for scatter traces."""
    out = {}
    for t in fig.data:
        line = getattr(t, "line", None)
        out[t.name] = line.color if line is not None and line.color else t.marker.color
    return out


# ----------------------------------------------------------------------------- style


def test_every_divergence_has_its_own_colour():
    assert set(plotting.DIVERGENCE_COLORS) == set(divergences.names())
    assert len(set(plotting.DIVERGENCE_COLORS.values())) == len(plotting.DIVERGENCE_COLORS)
    assert plotting.TEACHER_COLOR not in plotting.DIVERGENCE_COLORS.values()
    d = divergences.get("forward_kl")
    assert plotting.divergence_color(divergences.shifted(d, 2.0)) == plotting.divergence_color(d)
    with pytest.raises(ValueError, match="no colour"):
        plotting.divergence_color("not_a_divergence")


def test_estimator_styles_are_distinct():
    assert len(set(plotting.ESTIMATOR_DASH.values())) == 3
    assert len(set(plotting.ESTIMATOR_PATTERN.values())) == 3
    assert plotting.estimator_of("forward_kl/opd+") == "opd+"
    assert plotting.estimator_of("opd γ=0") == "opd"
    assert plotting.estimator_of("exact") == "exact"
    assert plotting.estimator_of("loo G=4") is None
    st = plotting.arm_style("skew_reverse_kl/opd")
    assert st == {"color": plotting.DIVERGENCE_COLORS["skew_reverse_kl"], "dash": "dash"}
    assert plotting.arm_style(("jsd", "opd+"))["dash"] == plotting.ESTIMATOR_DASH["opd+"]
    red = plotting.DIVERGENCE_COLORS["forward_kl"]
    assert plotting.arm_style("Forward KL, OPD+") == {"color": red, "dash": "dot"}
    assert plotting.arm_style("sft init", index=1)["color"] == plotting.OTHER_COLORS[1]


# ----------------------------------------------------------------------------- builders


def test_fig_generators_draws_f_with_f_of_one_zero():
    fig = plotting.fig_generators(log_u_range=(-2.0, 2.0), n=81)
    assert len(fig.data) == len(divergences.names())
    assert_axes_titled(fig)
    for trace, name in zip(fig.data, divergences.names()):
        assert trace.line.color == plotting.DIVERGENCE_COLORS[name]
        x, y = np.asarray(trace.x), np.asarray(trace.y)
        assert abs(y[np.argmin(np.abs(x))]) < 1e-12  # f(1) = 0 at log u = 0
    # the values are the library's, not a copy
    d = divergences.get("forward_kl")
    t = torch.tensor(fig.data[1].x)
    np.testing.assert_allclose(fig.data[1].y, d.f_log(t).numpy())


def test_fig_generators_y_axis_is_f_not_a_divergence():
    """f < 0 for reverse KL at u > 1: the axis must not call f a (non-negative) divergence."""
    fig = plotting.fig_generators(["reverse_kl"], log_u_range=(-2.0, 2.0), n=41)
    assert fig.layout.yaxis.title.text == "f(u)"
    assert min(fig.data[0].y) < -1.9  # f(u) = -log u reaches -2 at log u = 2
    assert "divergence" not in fig.layout.yaxis.title.text


def test_figure_modules_import_on_their_own():
    """Exact-toy and training-run figures are separate modules; plotting re-exports both."""
    import ast
    import subprocess
    import sys

    from opdplus import plots_runs, plots_toy

    code = ("import sys, opdplus.{mod}; "
            "print(sorted(m for m in sys.modules if m.startswith('opdplus.')))")
    loaded = {}
    for mod in ("plots_toy", "plots_runs"):
        out = subprocess.run([sys.executable, "-c", code.format(mod=mod)], capture_output=True,
                             text=True, check=True)
        loaded[mod] = set(ast.literal_eval(out.stdout))
    assert "opdplus.plots_runs" not in loaded["plots_toy"]
    assert "opdplus.plots_toy" not in loaded["plots_runs"]
    assert "opdplus.plotting" not in loaded["plots_toy"] | loaded["plots_runs"]
    assert plotting.fig_generators is plots_toy.fig_generators
    assert plotting.fig_learning_curves is plots_runs.fig_learning_curves
    assert set(plotting.__all__) == set(plots_toy.__all__) | set(plots_runs.__all__) | {
        "DIVERGENCE_COLORS", "ESTIMATOR_DASH", "ESTIMATOR_PATTERN", "TEACHER_COLOR",
        "OTHER_COLORS", "divergence_color", "divergence_label", "estimator_of", "arm_style"}
    for name in plotting.__all__:
        assert hasattr(plotting, name), name


def test_fig_advantages_shows_both_designs():
    names = ["reverse_kl", "forward_kl", "jsd"]
    fig = plotting.fig_advantages(names)
    assert len(fig.data) == 2 * len(names)
    assert_axes_titled(fig)
    dashes = [t.line.dash for t in fig.data]
    assert dashes == [plotting.ESTIMATOR_DASH["opd"], plotting.ESTIMATOR_DASH["opd+"]] * len(names)
    # reverse KL: -f and w_f differ by the constant 1; forward KL: not a constant
    gap_rev = np.asarray(fig.data[0].y) - np.asarray(fig.data[1].y)
    gap_fwd = np.asarray(fig.data[2].y) - np.asarray(fig.data[3].y)
    np.testing.assert_allclose(gap_rev, 1.0, atol=1e-12)
    assert np.ptp(gap_fwd) > 1.0


def test_fig_categorical_bars_and_lines():
    q = torch.softmax(torch.randn(6, generator=torch.Generator().manual_seed(0)), -1)
    p = torch.full((6,), 1 / 6)
    fig = plotting.fig_categorical(q, {"reverse_kl": p, "forward_kl/opd": p})
    assert [type(t).__name__ for t in fig.data] == ["Bar", "Bar", "Bar"]
    assert fig.data[0].marker.color == plotting.TEACHER_COLOR
    assert fig.data[1].marker.color == plotting.DIVERGENCE_COLORS["reverse_kl"]
    assert fig.data[2].marker.pattern.shape == plotting.ESTIMATOR_PATTERN["opd"]
    assert fig.layout.yaxis.title.text == "probability"
    assert_axes_titled(fig)
    lines = plotting.fig_categorical(q, p, style="lines")
    assert len(lines.data) == 2 and lines.data[1].mode == "lines+markers"
    with pytest.raises(ValueError, match="shape"):
        plotting.fig_categorical(q, torch.ones(5) / 5)
    with pytest.raises(ValueError, match="style"):
        plotting.fig_categorical(q, p, style="pie")


def _one_state_agreement(names):
    g = torch.Generator().manual_seed(0)
    zt = 2 * torch.randn(5, generator=g, dtype=torch.float64)
    zs = torch.randn(5, generator=g, dtype=torch.float64)
    out = {}
    for name in names:
        exact = toy.one_state_true_gradient(zs, zt, name)
        out[name] = {
            e: toy.gradient_agreement(toy.one_state_expected_gradient(zs, zt, name, e), exact)
            for e in ("opd", "opd+")
        }
    return out


def test_fig_gradient_agreement():
    names = ["reverse_kl", "forward_kl", "hellinger"]
    agreement = _one_state_agreement(names)
    fig = plotting.fig_gradient_agreement(agreement)
    assert len(fig.data) == 4  # 2 estimators x (relative error, cosine)
    assert_axes_titled(fig)
    assert fig.layout.yaxis.type == "log"
    for trace in fig.data:
        assert list(trace.x) == names
        assert list(trace.marker.color) == [plotting.DIVERGENCE_COLORS[n] for n in names]
    cos_opd = next(t for t in fig.data if t.name == "opd" and t.xaxis == "x2")
    assert cos_opd.y[1] == pytest.approx(agreement["forward_kl"]["opd"]["cosine"])
    rel_plus = next(t for t in fig.data if t.name == "opd+" and t.xaxis == "x")
    assert all(v >= 1e-17 for v in rel_plus.y)  # exact zeros are floored, not lost


def test_fig_dynamics_styles_and_marker():
    zt = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    runs = {(n, e): toy.one_state_dynamics(zt, n, e, steps=20, lr=1.0, record_every=5)
            for n in ("forward_kl", "reverse_kl") for e in ("opd", "opd+")}
    fig = plotting.fig_dynamics(runs, record_every=5, upto=10)
    assert len(fig.data) == 2 * len(runs)
    assert_axes_titled(fig)
    assert list(fig.data[0].x) == [0, 5, 10, 15, 20]
    first = fig.data[0]
    assert first.line.color == plotting.DIVERGENCE_COLORS["forward_kl"]
    assert first.line.dash == plotting.ESTIMATOR_DASH["opd"]
    assert len(fig.layout.shapes) == 2  # the step marker in both panels


def test_fig_mc_histograms():
    rng = np.random.default_rng(0)
    samples = {"none": rng.normal(1.0, 1.0, 200), "loo G=4": rng.normal(1.0, 0.5, 200)}
    fig = plotting.fig_mc_histograms(samples, exact=1.0)
    assert [type(t).__name__ for t in fig.data] == ["Histogram", "Histogram"]
    assert fig.data[0].xbins.size == fig.data[1].xbins.size  # shared bins
    assert len(fig.layout.shapes) == 4  # exact + mean per row
    assert_axes_titled(fig)
    means = sorted(s.x0 for s in fig.layout.shapes if s.line.color != "black")
    assert means == pytest.approx(sorted(float(v.mean()) for v in samples.values()))


def test_fig_learning_curves_from_histories():
    hist = lambda scale: [{"step": s, "loss": scale / (s + 1), "teacher_kl": 1 - 0.1 * s,
                           "grad_norm": 1.0, **({"accuracy": 0.1 * s} if s % 2 == 0 else {})}
                          for s in range(5)]
    histories = {"forward_kl/opd": hist(2.0), "forward_kl/opd+": hist(1.0), "baseline": hist(3.0)}
    fig = plotting.fig_learning_curves(histories)
    metrics = ["loss", "teacher_kl", "grad_norm", "accuracy"]  # completion_len absent
    assert len(fig.data) == len(histories) * len(metrics)
    assert [a.text for a in fig.layout.annotations] == metrics
    assert_axes_titled(fig)
    by_name = {}
    for t in fig.data:
        by_name.setdefault(t.name, []).append(t)
    assert by_name["forward_kl/opd"][0].line.dash == plotting.ESTIMATOR_DASH["opd"]
    assert by_name["forward_kl/opd+"][0].line.dash == plotting.ESTIMATOR_DASH["opd+"]
    assert by_name["forward_kl/opd"][0].line.color == plotting.DIVERGENCE_COLORS["forward_kl"]
    accuracy = by_name["baseline"][3]
    assert list(accuracy.x) == [0, 2, 4]  # missing evaluations are skipped, not zeros
    assert plotting.METRIC_LABELS["accuracy"] in axis_titles(fig).values()
    with pytest.raises(ValueError, match="none of the metrics"):
        plotting.fig_learning_curves(histories, metrics=["nonexistent"])


def test_one_colour_per_divergence_across_builders():
    """forward KL is the same red in every figure that draws it."""
    red = plotting.DIVERGENCE_COLORS["forward_kl"]
    zt = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    figs = {
        "generators": (plotting.fig_generators(["forward_kl"]), 0),
        "advantages": (plotting.fig_advantages(["forward_kl"]), 0),
        "categorical": (plotting.fig_categorical([0.5, 0.5], {"forward_kl": [0.2, 0.8]}), 1),
        "dynamics": (plotting.fig_dynamics(
            {("forward_kl", "opd"): toy.one_state_dynamics(zt, "forward_kl", "opd", steps=3)}), 0),
        "curves": (plotting.fig_learning_curves({"forward_kl/opd+": [{"step": 0, "loss": 1.0}]}),
                   0),
    }
    for name, (fig, i) in figs.items():
        assert trace_colors(fig)[fig.data[i].name] == red, name
    agreement = plotting.fig_gradient_agreement(
        {"forward_kl": {"opd": {"rel_error": 1.0, "cosine": -0.9}}})
    assert list(agreement.data[0].marker.color) == [red]


# ----------------------------------------------------------------------------- widgets


def test_divergence_explorer_updates_on_slider_change():
    box = widgets.divergence_explorer(beta=0.5, alpha=0.5)
    assert isinstance(box, widgets.FigureBox)
    assert box.output.outputs, "the figure was not written to the output area"
    before = box.figure
    jsd_before = np.asarray(before.data[5].y)  # JSD's w_f trace
    box.controls["beta"].value = 0.2
    after = box.figure
    assert after is not before
    assert "β=0.2" in after.data[4].name
    assert not np.allclose(np.asarray(after.data[5].y), jsd_before)
    # the α slider moves only the α-divergence traces
    box.controls["alpha"].value = 1.5
    np.testing.assert_allclose(box.figure.data[5].y, after.data[5].y)
    assert not np.allclose(box.figure.data[7].y, after.data[7].y)
    gens = widgets.divergence_explorer(kind="generators")
    assert len(gens.figure.data) == 4
    with pytest.raises(ValueError, match="kind"):
        widgets.divergence_explorer(kind="nope")


def test_teacher_shape_explorer_calls_the_fit_with_slider_values():
    calls = []

    def fit(separation, left_weight):
        calls.append((separation, left_weight))
        grid = np.linspace(-1, 1, 4)
        teacher = np.array([left_weight, 0, 0, 1 - left_weight])
        return teacher, {"reverse_kl": np.full(4, 0.25)}, grid

    box = widgets.teacher_shape_explorer(fit, separation=2.0, left_weight=0.5)
    assert calls == [(2.0, 0.5)]
    box.controls["left_weight"].value = 0.3
    assert calls[-1] == (2.0, 0.3)
    assert box.figure.data[0].y[0] == pytest.approx(0.3)
    assert "left weight 0.30" in box.figure.layout.title.text


def test_dynamics_explorer_moves_through_steps():
    zt = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    runs = {("forward_kl", e): toy.one_state_dynamics(zt, "forward_kl", e, steps=40, lr=1.0,
                                                      record_every=10) for e in ("opd", "opd+")}
    box = widgets.dynamics_explorer(runs, torch.softmax(zt, -1), record_every=10)
    slider = box.controls["step"]
    assert (slider.min, slider.max, slider.step) == (0, 40, 10)
    assert box.figure.layout.title.text.endswith("step 40")
    slider.value = 0
    assert box.figure.layout.title.text.endswith("step 0")
    np.testing.assert_allclose(box.figure.data[1].y, 1 / 3)  # the uniform start
    slider.value = 20
    assert box.figure.layout.title.text.endswith("step 20")
    at_step_20 = runs[("forward_kl", "opd")]["probs"][2].numpy()  # recorded every 10 steps
    np.testing.assert_allclose(box.figure.data[1].y, at_step_20)
    assert not np.allclose(box.figure.data[1].y, 1 / 3)


# ----------------------------------------------------------------------------- notebooks 04-06


def test_fig_accuracy_draws_each_arm_with_its_interval_and_style():
    results = {"forward_kl/opd": (0.03, 0.01, 0.08),
               "forward_kl/opd+": {"accuracy": 0.29, "ci_low": 0.21, "ci_high": 0.39},
               "teacher": 0.9}
    fig = plotting.fig_accuracy(results, reference={"SFT init": 0.27})
    assert [t.name for t in fig.data] == list(results)
    assert_axes_titled(fig)
    opd, plus, teacher = fig.data
    assert opd.marker.color == plotting.DIVERGENCE_COLORS["forward_kl"]
    assert opd.marker.pattern.shape == plotting.ESTIMATOR_PATTERN["opd"]
    assert plus.marker.pattern.shape == plotting.ESTIMATOR_PATTERN["opd+"]
    assert plus.y[0] == pytest.approx(0.29)
    assert plus.error_y.array[0] == pytest.approx(0.10)  # up to ci_high
    assert plus.error_y.arrayminus[0] == pytest.approx(0.08)  # down to ci_low
    assert teacher.error_y.array is None  # a bare number has no interval
    assert fig.layout.shapes[0].y0 == pytest.approx(0.27)  # the reference line
    with pytest.raises(ValueError, match="no results"):
        plotting.fig_accuracy({})


def test_fig_token_heatmap_panels_scales_and_token_positions():
    tokens = ["1", "5", "=", "1", "5", "."]  # repeated tokens must stay separate columns
    logp = {"student log p": [-0.1, -2.0, -0.5, -0.3, -4.0, -0.2],
            "teacher log q": [-0.2, -0.1, -0.4, -0.3, -0.1, -0.1]}
    adv = {"OPD −f(u)": [0.1, -5.0, 0.0, 0.0, -40.0, 0.1],
           "OPD+ w_f(u)": [0.9, 6.7, 1.1, 1.0, 50.0, 1.1]}
    fig = plotting.fig_token_heatmap(tokens, {"log-probability (nats)": logp,
                                              "advantage (nats)": adv}, clip_quantile=0.75)
    assert len(fig.data) == 2 and all(t.type == "heatmap" for t in fig.data)
    assert_axes_titled(fig)
    lp, ad = fig.data
    np.testing.assert_allclose(np.asarray(ad.z), np.array(list(adv.values())))
    assert list(lp.y) == list(logp) and list(ad.y) == list(adv)
    assert list(lp.x) == list(range(len(tokens)))
    # one sign -> sequential scale ending at 0; both signs -> diverging, centred at 0
    assert lp.zmax == 0.0 and lp.zmin < 0
    assert ad.zmid == 0.0 and ad.zmin == -ad.zmax
    assert ad.zmax < 50.0  # clipped at the quantile so one extreme token does not dominate
    assert lp.colorbar.y != ad.colorbar.y  # one colour bar per panel, beside its panel
    ticktext = fig.layout.xaxis2.ticktext
    assert list(ticktext) == [f"{i}: {t}" for i, t in enumerate(tokens)]
    with pytest.raises(ValueError, match="6 tokens"):
        plotting.fig_token_heatmap(tokens, {"x": {"row": [1.0, 2.0]}})
    with pytest.raises(ValueError, match="no panels"):
        plotting.fig_token_heatmap(tokens, {})


def test_fig_measurements_one_panel_per_metric_same_colour_per_variant():
    table = {"peak memory (MiB)": {"naive": 600.0, "library": 40.0},
             "time (s)": {"naive": 2.0, "library": 1.5}}
    fig = plotting.fig_measurements(table)
    assert len(fig.data) == 2
    assert_axes_titled(fig)
    assert [a.text for a in fig.layout.annotations] == list(table)
    assert list(fig.data[0].y) == [600.0, 40.0]
    assert list(fig.data[0].marker.color) == list(fig.data[1].marker.color)
    with pytest.raises(ValueError, match="no measurements"):
        plotting.fig_measurements({})


def test_training_monitor_is_a_trainer_callback_that_redraws():
    mon = widgets.TrainingMonitor(metrics=["loss", "teacher_kl"], every=2)
    assert mon.refresh() is None and not mon.output.outputs  # nothing before the first step
    runs = {}
    for arm in ("forward_kl/opd", "forward_kl/opd+"):
        cb = mon.callback(arm, last_step=4)
        history = runs.setdefault(arm, [])
        for step in range(5):
            rec = {"step": step, "loss": 1.0 / (step + 1), "teacher_kl": 0.5 + step,
                   "grad_norm": 2.0}
            history.append(rec)
            cb(step, rec, history)
    # every 2nd step (steps 1, 3) plus the last step (4), for each arm
    assert mon.redraws == 6
    assert mon.output.outputs, "the figure was not written to the output area"
    assert "forward_kl/opd+" in mon.status.value and "step 4" in mon.status.value
    names = [t.name for t in mon.figure.data]
    assert names == ["forward_kl/opd", "forward_kl/opd", "forward_kl/opd+", "forward_kl/opd+"]
    np.testing.assert_allclose(mon.figure.data[3].y, [0.5, 1.5, 2.5, 3.5, 4.5])
    with pytest.raises(ValueError, match="every"):
        widgets.TrainingMonitor(every=0)
