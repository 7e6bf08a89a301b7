"""Exact spread of the estimators on the tabular toy (opdplus.toy_variance) and the γ slider.

Oracles: autograd of ``pg_loss`` on one sequence, ``TabularToy.expected_gradient`` (the
exact mean), ``TabularToy.sampled_gradients`` (an independent Monte Carlo path, compared
within its standard error), and enumeration of whole groups for leave-one-out.
"""

import pytest
import torch

from opdplus import divergences as D
from opdplus import estimators, toy
from opdplus import toy_variance as tv
from opdplus.plots_sequences import ESTIMATOR_SYMBOLS, fig_gamma_slider

FAMILY = toy.family()
IDS = [d.name for d in FAMILY]


@pytest.fixture(scope="module")
def tt():
    return toy.TabularToy.random(vocab=3, horizon=3, seed=0)


def _autograd_one(tt, seq_T, div, est, gamma, **kw):
    seqs = seq_T[None]
    z = tt.student_logits.detach().clone().requires_grad_(True)
    lp = tt.token_logps(seqs, z)
    lq = tt.token_logps(seqs, tt.teacher_logits)
    loss, _ = estimators.pg_loss(lp, lq, torch.ones_like(lp, dtype=torch.bool), div, est,
                                 gamma=gamma, clip_log_u=None, num_tokens=1, **kw)
    (g,) = torch.autograd.grad(loss, z)
    return g


@pytest.mark.parametrize("est,gamma", [("opd", 0.0), ("opd+", 0.0), ("opd+", 0.5), ("opd", 1.0)])
def test_per_sequence_gradient_is_the_autograd_gradient_of_pg_loss(tt, est, gamma):
    d = D.get("jsd")
    g = tv.per_sequence_gradients(tt, d, est, gamma)
    for i in (0, 5, 13, 26):
        assert torch.allclose(g[i], _autograd_one(tt, tt.sequences[i], d, est, gamma), atol=1e-12)


def test_per_sequence_gradient_with_the_analytic_baseline(tt):
    d = D.get("forward_kl")
    table = d.expected_advantage(tt.student_logits, tt.teacher_logits, "opd+")
    rows = tv._rows(tt, tt.sequences)
    g = tv.per_sequence_gradients(tt, d, "opd+", 1.0, baseline="analytic", baseline_ST=table[rows])
    for i in (1, 20):
        ref = _autograd_one(tt, tt.sequences[i], d, "opd+", 1.0, baseline="analytic",
                            baseline_BT=table[rows][i:i + 1])
        assert torch.allclose(g[i], ref, atol=1e-12)
    p = tv.sequence_probs(tt)
    plain = tv.per_sequence_gradients(tt, d, "opd+", 1.0)
    # same mean (no bias), less spread
    assert torch.allclose((p[:, None, None] * g).sum(0), (p[:, None, None] * plain).sum(0),
                          atol=1e-12)
    assert tv.total_variance(g, p) < tv.total_variance(plain, p)


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_mean_of_per_sequence_gradients_is_the_expected_gradient(tt, d):
    p = tv.sequence_probs(tt)
    assert abs(float(p.sum()) - 1.0) < 1e-12
    for est, gamma in (("opd", 0.0), ("opd+", 1.0), ("opd+", 0.3)):
        mean = (p[:, None, None] * tv.per_sequence_gradients(tt, d, est, gamma)).sum(0)
        assert torch.allclose(mean, tt.expected_gradient(d, est, gamma), atol=1e-12), est


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_the_ascent_advantage_gives_minus_the_gradient_of_J(tt, d):
    """Notebook 03's formula, sign included:
    E[Σ_t ∇log p(y_t|s_t) (w_f(u_t) − Σ_{t'>t} f(u_t'))] = −∇J_f."""
    seqs = tt.sequences
    z = tt.student_logits.detach().clone().requires_grad_(True)
    lp = tt.token_logps(seqs, z)
    lq = tt.token_logps(seqs, tt.teacher_logits)
    f = d.f_log(lq - lp.detach())
    w = d.advantage(lq - lp.detach(), "opd+")
    adv = w - estimators.future_sum(f, 1.0)
    p = lp.detach().sum(1).exp()
    (ascent,) = torch.autograd.grad((p[:, None] * adv * lp).sum(), z)
    exact = tt.true_gradient(d)
    assert torch.allclose(ascent, -exact, atol=1e-12)
    assert not torch.allclose(ascent, exact, atol=1e-6)  # the sign matters


def test_total_variance_matches_monte_carlo_within_its_standard_error(tt):
    d, B, n = D.get("jsd"), 4, 300
    exact = tv.batch_moments(tt, d, "opd+", 1.0, batch_size=B)["total_var"]
    g = tt.sampled_gradients(d, "opd+", 1.0, batches=n, batch_size=B,
                             generator=torch.Generator().manual_seed(3)).flatten(1)
    sq = ((g - g.mean(0)) ** 2).sum(1)  # ‖g_i − ḡ‖², whose mean estimates the trace
    mc, se = float(sq.sum() / (n - 1)), float(sq.std() / n ** 0.5)
    assert abs(mc - exact) < 4 * se, (mc, exact, se)


def test_total_variance_scales_as_one_over_batch(tt):
    g, p = tv.per_sequence_gradients(tt, "jsd", "opd", 0.0), tv.sequence_probs(tt)
    assert tv.total_variance(g, p, 16) == pytest.approx(tv.total_variance(g, p, 1) / 16, rel=1e-12)
    # E‖g‖² − ‖E g‖², a second formula
    flat = g.flatten(1)
    alt = float((p * (flat ** 2).sum(1)).sum() - ((p[:, None] * flat).sum(0) ** 2).sum())
    assert tv.total_variance(g, p) == pytest.approx(alt, rel=1e-9)


def test_notebook_03_variance_ordering_for_jsd(tt):
    """The corrected claim: γ = 0 is much less noisy for OPD+, but not for OPD."""
    v = {(e, g): tv.batch_moments(tt, "jsd", e, g, batch_size=16)["total_var"]
         for e, g in (("opd+", 0.0), ("opd+", 1.0), ("opd", 0.0))}
    assert v["opd+", 0.0] < 0.1 * v["opd+", 1.0]
    assert v["opd", 0.0] > v["opd+", 1.0]


def test_gamma_sweep_bias(tt):
    s = tv.gamma_sweep(tt, "jsd", [0.0, 0.5, 1.0], batch_size=16)
    assert s["opd+"]["rel_bias"][-1] < 1e-9 and min(s["opd+"]["rel_bias"][:-1]) > 0.1
    assert min(s["opd"]["rel_bias"]) > 0.1
    assert s["opd+"]["proj_mean"][-1] == pytest.approx(s["target"], rel=1e-9)


@pytest.mark.parametrize("d", [D.get("reverse_kl"), D.get("jsd"), D.get("forward_kl")],
                         ids=["reverse_kl", "jsd", "forward_kl"])
def test_leave_one_out_is_unbiased_exactly(tt, d):
    loo = tv.loo_expected_gradient(tt, d, "opd+", 1.0, group_size=2)
    assert toy.gradient_agreement(loo, tt.true_gradient(d))["rel_error"] < 1e-9
    loo0 = tv.loo_expected_gradient(tt, d, "opd", 0.0, group_size=2)
    assert torch.allclose(loo0, tt.expected_gradient(d, "opd", 0.0), atol=1e-12)


def test_a_group_mean_that_includes_the_sample_itself_is_biased(tt):
    """The negative control: the enumeration can see bias, so the test above can fail."""
    import itertools

    d, G = D.get("reverse_kl"), 2
    S = len(tt.sequences)
    idx = torch.tensor(list(itertools.product(range(S), repeat=G)))
    seqs = tt.sequences[idx.flatten()]
    adv = tv._advantages(tt, seqs, d, "opd+", 1.0)
    group_mean = adv.view(-1, G, adv.shape[1]).mean(1, keepdim=True)
    adv = adv - group_mean.expand(-1, G, -1).reshape_as(adv)
    g = tv._grads_from_advantages(tt, seqs, adv).view(len(idx), G, tt.num_prefixes, tt.vocab)
    mean = (tv.sequence_probs(tt)[idx].prod(1)[:, None, None] * g.mean(1)).sum(0)
    exact = tt.true_gradient(d)
    assert torch.allclose(mean, (1 - 1 / G) * exact, atol=1e-12)  # shrunk by 1 − 1/G


def test_bad_inputs_are_named(tt):
    with pytest.raises(ValueError, match="leave-one-out"):
        tv.per_sequence_gradients(tt, "jsd", "opd+", 1.0, baseline="loo")
    g, p = tv.per_sequence_gradients(tt, "jsd", "opd", 0.0), tv.sequence_probs(tt)
    with pytest.raises(ValueError, match="batch_size"):
        tv.total_variance(g, p, 0)
    with pytest.raises(ValueError, match="probabilities"):
        tv.total_variance(g, p[:-1])
    with pytest.raises(ValueError, match="group_size"):
        tv.loo_expected_gradient(tt, "jsd", "opd+", 1.0, group_size=1)
    with pytest.raises(ValueError, match="gamma"):
        tv.gamma_sweep(tt, "jsd", [], 16)


# ----------------------------------------------------------------------------- the γ slider


@pytest.fixture(scope="module")
def sweep(tt):
    return tv.gamma_sweep(tt, "jsd", [0.0, 0.5, 1.0], batch_size=16)


def _shown(fig, visible):
    return [t for t, v in zip(fig.data, visible) if v]


def test_gamma_slider_steps_switch_precomputed_traces(sweep):
    fig = fig_gamma_slider(sweep)
    (slider,) = fig.layout.sliders
    assert [s.label for s in slider.steps] == ["0", "0.5", "1"]
    assert slider.active == 0
    n_static, per_gamma = 4, 6
    assert len(fig.data) == n_static + 3 * per_gamma
    masks = [s.args[0]["visible"] for s in slider.steps]
    for i, m in enumerate(masks):
        assert all(m[:n_static]) and sum(m) == n_static + per_gamma
        assert all(m[n_static + i * per_gamma: n_static + (i + 1) * per_gamma])
    # the figure starts in the state of its active step
    assert [t.visible is not False for t in fig.data] == masks[0]
    # moving the slider moves the OPD+ point to the exact gradient
    first = [t for t in _shown(fig, masks[0]) if t.xaxis == "x" and "OPD+" in t.y[0]][0]
    last = [t for t in _shown(fig, masks[-1]) if t.xaxis == "x" and "OPD+" in t.y[0]][0]
    assert first.x[0] != last.x[0]
    assert last.x[0] == pytest.approx(sweep["target"], rel=1e-9)


def test_gamma_slider_tells_opd_from_opd_plus_by_colour_and_marker(sweep):
    fig = fig_gamma_slider(sweep, active=2)
    opd = [t for t in fig.data if t.legendgroup == "opd"]
    plus = [t for t in fig.data if t.legendgroup == "opd+"]
    assert opd and plus
    assert {t.marker.symbol for t in opd} == {ESTIMATOR_SYMBOLS["opd"]}
    assert {t.marker.symbol for t in plus} == {ESTIMATOR_SYMBOLS["opd+"]}
    assert {t.marker.color for t in opd}.isdisjoint({t.marker.color for t in plus})
    for t in fig.data:
        if t.mode == "lines+markers":
            assert t.line.dash in (None, "solid")  # never told apart by dash alone


def test_gamma_slider_rejects_bad_sweeps(sweep):
    with pytest.raises(ValueError, match="gamma_sweep"):
        fig_gamma_slider({"gammas": []})
    with pytest.raises(ValueError, match="estimator 'opd'"):
        fig_gamma_slider({k: v for k, v in sweep.items() if k != "opd"})
    bad = {**sweep, "opd": {**sweep["opd"], "total_var": [1.0]}}
    with pytest.raises(ValueError, match="one value per gamma"):
        fig_gamma_slider(bad)
    with pytest.raises(ValueError, match="active"):
        fig_gamma_slider(sweep, active=3)
