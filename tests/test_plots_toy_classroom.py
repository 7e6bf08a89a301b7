"""The plotly-native explorers of notebooks 01-02 (opdplus.plots_explore, via plots_toy).

They must work in a static page, so every state a slider or dropdown can select is
precomputed into the figure's JSON: the tests read those states back and compare them
with the library (the generators, the advantages, the dynamics runs), check that the
states differ from one another, and that OPD and OPD+ are told apart by colour and
marker, not by dash alone. Also: the closed-form one-state expected gradient that the
explorer's dynamics use equals the pg_loss route it replaces.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opdplus import divergences, plots_toy, plotting, toy

LOG_U = dict(log_u_range=(-2.0, 2.0), n=41)


def _t(fig_trace_x) -> torch.Tensor:
    return torch.tensor(np.asarray(fig_trace_x, dtype=float), dtype=torch.float64)


@pytest.fixture(scope="module")
def family_runs():
    """Short one-state runs of every divergence, both estimators (closed form: fast)."""
    zt = 2.0 * torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    runs = {(d.name, e): toy.one_state_dynamics(zt, d, e, steps=40, lr=1.0, record_every=4,
                                                closed_form=True)
            for d in toy.family() for e in ("opd", "opd+")}
    return zt, runs


# ----------------------------------------------------------------------------- 01: α and β


def test_generator_sliders_hold_the_library_generators_for_every_step():
    alphas = [k / 10 for k in range(-10, 21)]
    fig = plots_toy.fig_generator_sliders(alphas=alphas, **LOG_U)
    a_slider, b_slider = fig.layout.sliders
    assert len(a_slider.steps) == len(alphas) == 31
    assert len(b_slider.steps) == 21
    t = _t(fig.data[0].x)
    for a, step in zip(alphas, a_slider.steps):
        assert step.method == "restyle" and list(step.args[1]) == [4]  # moves the α trace only
        expected = divergences.get("alpha", alpha=a).f_log(t).numpy()
        np.testing.assert_allclose(step.args[0]["y"][0], expected, rtol=1e-12, atol=1e-12)
        assert step.label == f"{a:g}"
    for step in b_slider.steps:
        beta = float(step.label)
        expected = divergences.get("jsd", beta=beta, normalized=True).f_log(t).numpy()
        np.testing.assert_allclose(step.args[0]["y"][0], expected, rtol=1e-12, atol=1e-12)
        assert list(step.args[1]) == [5]
    ys = [np.asarray(s.args[0]["y"][0]) for s in a_slider.steps]
    assert all(np.abs(y1 - y0).max() > 1e-3 for y0, y1 in zip(ys, ys[1:]))  # every step moves
    # the shown curve is the active step's
    np.testing.assert_allclose(fig.data[4].y, a_slider.steps[a_slider.active].args[0]["y"][0])
    assert fig.layout.yaxis.title.text == "f(u)"


def test_alpha_ends_land_on_the_shifted_kl_generators_not_the_plain_ones():
    """The correction of 01's text: α → 0 gives −log u + (u − 1), not −log u."""
    fig = plots_toy.fig_generator_sliders(alphas=[0.0, 0.5, 1.0], **LOG_U)
    names = [t.name for t in fig.data]
    assert "reverse KL written as −log u + (u − 1)" in names[2]
    steps = fig.layout.sliders[0].steps
    at0, at1 = (np.asarray(steps[i].args[0]["y"][0]) for i in (0, 2))
    rev, fwd, rev_shift, fwd_shift = (np.asarray(fig.data[i].y) for i in range(4))
    np.testing.assert_allclose(at0, rev_shift, atol=1e-12)
    np.testing.assert_allclose(at1, fwd_shift, atol=1e-12)
    u_minus_1 = np.expm1(np.asarray(fig.data[0].x))
    np.testing.assert_allclose(at0 - rev, u_minus_1, atol=1e-12)  # differs by exactly (u − 1)
    assert np.abs(at0 - rev).max() > 5.0 and np.abs(at1 - fwd).max() > 5.0
    # normalised JSD_β at β near 1 sits near the shifted reverse KL as well
    b = plots_toy.fig_generator_sliders(betas=[0.999], **LOG_U).layout.sliders[1].steps[0]
    near = np.asarray(b.args[0]["y"][0])
    assert np.abs(near - rev_shift).max() < 0.01 < np.abs(near - rev).max()
    with pytest.raises(ValueError, match="at least one"):
        plots_toy.fig_generator_sliders(alphas=[])


# ----------------------------------------------------------------------------- 02: dropdown


def test_divergence_explorer_has_one_dropdown_entry_per_divergence(family_runs):
    _, runs = family_runs
    fig = plotting.fig_divergence_explorer(runs, record_every=4, **LOG_U)
    (menu,) = fig.layout.updatemenus
    assert len(menu.buttons) == len(divergences.names()) == 11
    assert len(fig.data) == 7 * 11
    masks = np.array([b.args[0]["visible"] for b in menu.buttons])
    assert (masks.sum(1) == 7).all() and (masks.sum(0) == 1).all()  # disjoint, covering
    assert [bool(t.visible) for t in fig.data] == list(masks[0])  # starts on the first entry
    t = _t(fig.data[0].x)
    f_curves = []
    for i, d in enumerate(toy.family()):
        f, adv_opd, adv_plus, tv_opd, tv_plus, mp_opd, mp_plus = fig.data[7 * i: 7 * i + 7]
        assert masks[i, 7 * i] and menu.buttons[i].label == plotting.divergence_label(d)
        np.testing.assert_allclose(f.y, d.f_log(t).numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(adv_opd.y, d.advantage(t, "opd").numpy(), atol=1e-12)
        np.testing.assert_allclose(adv_plus.y, d.advantage(t, "opd+").numpy(), atol=1e-12)
        for trace, est, key in ((tv_opd, "opd", "tv"), (tv_plus, "opd+", "tv"),
                                (mp_opd, "opd", "max_prob"), (mp_plus, "opd+", "max_prob")):
            np.testing.assert_allclose(trace.y, runs[(d.name, est)][key].numpy())
            assert list(trace.x) == [4 * k for k in range(11)]
        # f'(1) in the title is the generator's derivative at u = 1 (autograd)
        u = torch.ones((), dtype=torch.float64, requires_grad=True)
        (fp,) = torch.autograd.grad(d.f(u), u)
        if d.name != "tv":  # |u − 1| has no derivative at 1; the title shows w_f(1) = 0.5
            assert f"f′(1) = {float(fp):+.2f}" in menu.buttons[i].args[1]["title.text"]
        f_curves.append(np.asarray(f.y))
    for i in range(11):  # every entry draws a different generator
        for j in range(i):
            assert np.abs(f_curves[i] - f_curves[j]).max() > 1e-3, (i, j)


def test_divergence_explorer_tells_opd_from_opd_plus_by_colour_and_marker(family_runs):
    _, runs = family_runs
    fig = plotting.fig_divergence_explorer(runs, ["forward_kl"], record_every=4, **LOG_U)
    for a, b in ((1, 2), (3, 4), (5, 6)):  # OPD, OPD+ pairs
        opd, plus = fig.data[a], fig.data[b]
        assert opd.line.color != plus.line.color
        assert opd.marker.symbol != plus.marker.symbol
        assert opd.line.dash != plus.line.dash
        assert "markers" in opd.mode and "markers" in plus.mode
    assert fig.data[1].marker.symbol == plotting.ESTIMATOR_MARKER["opd"]
    with pytest.raises(ValueError, match="one_state_dynamics"):
        plotting.fig_divergence_explorer({}, ["forward_kl"])


def test_existing_builders_mark_opd_and_opd_plus_differently():
    """fig_advantages and fig_dynamics: OPD vs OPD+ by marker as well as dash."""
    adv = plotting.fig_advantages(["forward_kl"])
    assert adv.data[0].marker.symbol == plotting.ESTIMATOR_MARKER["opd"]
    assert adv.data[1].marker.symbol == plotting.ESTIMATOR_MARKER["opd+"]
    zt = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)
    runs = {("jsd", e): toy.one_state_dynamics(zt, "jsd", e, steps=4) for e in ("opd", "opd+")}
    dyn = plotting.fig_dynamics(runs)
    assert dyn.data[0].marker.symbol != dyn.data[2].marker.symbol
    assert "markers" in dyn.data[0].mode


# ----------------------------------------------------------------------------- 02: steps


def test_dynamics_steps_slider_shows_each_recorded_distribution(family_runs):
    zt, runs = family_runs
    chosen = {k: v for k, v in runs.items() if k[0] in ("forward_kl", "jsd")}
    fig = plotting.fig_dynamics_steps(chosen, torch.softmax(zt, -1), record_every=4,
                                      max_steps=6)
    (slider,) = fig.layout.sliders
    labels = [int(s.label) for s in slider.steps]
    assert labels[0] == 0 and labels[-1] == 40 and 4 <= len(labels) <= 6
    assert labels[1] - labels[0] < labels[-1] - labels[-2]  # dense early, where runs move
    assert labels == sorted(set(labels))
    for step in slider.steps:
        k = int(step.label) // 4
        assert list(step.args[1]) == [1, 2, 3, 4]
        for y, run in zip(step.args[0]["y"], chosen.values()):
            np.testing.assert_allclose(y, run["probs"][k].numpy())
    first, last = (np.asarray(slider.steps[i].args[0]["y"][0]) for i in (0, -1))
    assert np.abs(first - last).max() > 0.1  # the distributions move along the run
    np.testing.assert_allclose(fig.data[1].y, last)  # starts at the end
    assert fig.data[1].marker.symbol != fig.data[2].marker.symbol  # forward KL OPD vs OPD+
    with pytest.raises(ValueError, match="shape"):
        plotting.fig_dynamics_steps(chosen, torch.ones(5) / 5)


# ----------------------------------------------------------------------------- toy


@pytest.mark.parametrize("seed", [0, 1])
def test_closed_form_expected_gradient_equals_the_pg_loss_expectation(seed):
    g = torch.Generator().manual_seed(seed)
    zt = 2.0 * torch.randn(7, generator=g, dtype=torch.float64)
    zs = torch.randn(7, generator=g, dtype=torch.float64)
    for d in toy.family() + [divergences.shifted(divergences.get("reverse_kl"), 1.0)]:
        for est in ("opd", "opd+"):
            via_loss = toy.one_state_expected_gradient(zs, zt, d, est)
            closed = toy.one_state_expected_gradient_closed_form(zs, zt, d, est)
            np.testing.assert_allclose(closed.numpy(), via_loss.numpy(), rtol=1e-10,
                                       atol=1e-13, err_msg=f"{d.name} {est}")


def test_expected_gradient_is_a_gradient_so_descent_moves_against_it():
    """'Expected gradient', not 'descent direction': a step along −g lowers D_f (OPD+)."""
    g = torch.Generator().manual_seed(4)
    zt = 2.0 * torch.randn(6, generator=g, dtype=torch.float64)
    zs = torch.randn(6, generator=g, dtype=torch.float64)
    for name in ("forward_kl", "jsd", "reverse_kl"):
        d = divergences.get(name)
        grad = toy.one_state_expected_gradient(zs, zt, d, "opd+")
        value = lambda z: float(d.full_vocab(z, zt))  # noqa: E731
        assert value(zs - 1e-3 * grad) < value(zs) < value(zs + 1e-3 * grad), name


def test_closed_form_dynamics_match_the_pg_loss_dynamics():
    zt = torch.tensor([2.0, 0.5, -1.0, 0.0], dtype=torch.float64)
    for est in ("opd", "opd+"):
        slow = toy.one_state_dynamics(zt, "forward_kl", est, steps=15, lr=1.0, record_every=5)
        fast = toy.one_state_dynamics(zt, "forward_kl", est, steps=15, lr=1.0, record_every=5,
                                      closed_form=True)
        for key in ("probs", "tv", "max_prob"):
            np.testing.assert_allclose(fast[key].numpy(), slow[key].numpy(), atol=1e-12)
