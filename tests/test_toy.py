"""Exact oracles: one categorical state and the enumerated tabular autoregressive toy (method.md §8)."""

import math

import pytest
import torch

from opdplus import divergences as D
from opdplus import toy

FAMILY = toy.family()
IDS = [d.name for d in FAMILY]


def _state(seed=0, V=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, generator=g, dtype=torch.float64), 1.5 * torch.randn(V, generator=g,
                                                                               dtype=torch.float64)


# ----------------------------------------------------------------------------- one state


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_state_opd_plus_is_the_exact_gradient(d, seed):
    z, q = _state(seed)
    exact = toy.one_state_true_gradient(z, q, d)
    est = toy.one_state_expected_gradient(z, q, d, "opd+")
    assert toy.gradient_agreement(est, exact)["rel_error"] < 1e-9


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_one_state_opd_is_biased_except_for_reverse_kl(d):
    z, q = _state(0)
    exact = toy.one_state_true_gradient(z, q, d)
    agree = toy.gradient_agreement(toy.one_state_expected_gradient(z, q, d, "opd"), exact)
    if d.name == "reverse_kl":
        assert agree["rel_error"] < 1e-9
    else:
        assert agree["rel_error"] > 0.05
    if d.name == "forward_kl":
        assert agree["cosine"] < -0.5  # points against the true gradient


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_generator_shift_moves_opd_but_not_opd_plus(d):
    z, q = _state(3)
    s = D.shifted(d, 1.3)
    assert toy.gradient_agreement(toy.one_state_true_gradient(z, q, s),
                                  toy.one_state_true_gradient(z, q, d))["rel_error"] < 1e-9
    plus = toy.gradient_agreement(toy.one_state_expected_gradient(z, q, s, "opd+"),
                                  toy.one_state_expected_gradient(z, q, d, "opd+"))
    opd = toy.gradient_agreement(toy.one_state_expected_gradient(z, q, s, "opd"),
                                 toy.one_state_expected_gradient(z, q, d, "opd"))
    assert plus["rel_error"] < 1e-9
    assert opd["rel_error"] > 0.05


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "hellinger"])
def test_dynamics_opd_collapses_and_opd_plus_converges(name):
    _, q = _state(4)
    opd = toy.one_state_dynamics(q, name, "opd", steps=1500, lr=0.5)
    plus = toy.one_state_dynamics(q, name, "opd+", steps=1500, lr=0.5)
    assert float(opd["max_prob"][-1]) > 0.95  # one-hot
    assert float(opd["tv"][-1]) > 0.3
    assert float(plus["tv"][-1]) < 1e-3  # the teacher
    assert float(plus["tv"][-1]) < float(plus["tv"][0]) / 100


def test_dynamics_reverse_kl_opd_also_converges():
    _, q = _state(4)
    opd = toy.one_state_dynamics(q, "reverse_kl", "opd", steps=1500, lr=0.5)
    assert float(opd["tv"][-1]) < 1e-3


# ----------------------------------------------------------------------------- sequences


@pytest.fixture(scope="module")
def seq_toy():
    return toy.TabularToy.random(vocab=4, horizon=3, seed=11)


def test_enumeration_is_a_probability_distribution(seq_toy):
    lp = seq_toy.token_logps(seq_toy.sequences, seq_toy.student_logits)
    assert seq_toy.sequences.shape == (4 ** 3, 3)
    assert abs(float(lp.sum(1).exp().sum()) - 1.0) < 1e-12
    # J for reverse KL equals the sum over steps of the expected per-state reverse KL,
    # which for sequences is KL(student || teacher) of the joint distributions
    lq = seq_toy.token_logps(seq_toy.sequences, seq_toy.teacher_logits)
    joint_kl = float((lp.sum(1).exp() * (lp.sum(1) - lq.sum(1))).sum())
    assert float(seq_toy.objective("reverse_kl")) == pytest.approx(joint_kl, rel=1e-12)


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_gamma_one_opd_plus_is_the_exact_sequence_gradient(seq_toy, d):
    exact = seq_toy.true_gradient(d)
    est = seq_toy.expected_gradient(d, "opd+", gamma=1.0)
    assert toy.gradient_agreement(est, exact)["rel_error"] < 1e-9


@pytest.mark.parametrize("d", FAMILY, ids=IDS)
def test_gamma_zero_is_biased_for_every_divergence(seq_toy, d):
    exact = seq_toy.true_gradient(d)
    for est in ("opd", "opd+"):
        got = seq_toy.expected_gradient(d, est, gamma=0.0)
        assert toy.gradient_agreement(got, exact)["rel_error"] > 0.05


def test_analytic_and_leave_one_out_baselines_add_no_bias(seq_toy):
    d = D.get("jsd")
    exact = seq_toy.true_gradient(d)
    # analytic baseline: per-state expectation of the immediate advantage, from full logits
    seqs = seq_toy.sequences
    rows = torch.stack([seq_toy._row_index(seqs[:, :t]) for t in range(seq_toy.horizon)], 1)
    b = d.expected_advantage(seq_toy.student_logits[rows], seq_toy.teacher_logits[rows], "opd+")
    got = seq_toy.expected_gradient(d, "opd+", gamma=1.0, baseline="analytic", baseline_BT=b)
    assert toy.gradient_agreement(got, exact)["rel_error"] < 1e-9


def _mc_check(seq_toy, d, estimator, gamma, batches=300, batch_size=32, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    samples = seq_toy.sampled_gradients(d, estimator, gamma, batches, batch_size, g, **kw)
    exact = seq_toy.true_gradient(d)
    # Projections on fixed directions: the exact gradient and three random unit vectors.
    dirs = [exact / exact.norm()]
    gd = torch.Generator().manual_seed(99)
    for _ in range(3):
        r = torch.randn(exact.shape, generator=gd, dtype=exact.dtype)
        dirs.append(r / r.norm())
    out = []
    for v in dirs:
        proj = (samples * v).flatten(1).sum(1)  # (batches,)
        mean, se = float(proj.mean()), float(proj.std() / math.sqrt(batches))
        out.append(((mean - float((exact * v).sum())) / se, se))
    return out, samples


@pytest.mark.parametrize("name", ["forward_kl", "jsd", "reverse_kl", "tv"])
def test_monte_carlo_gamma_one_agrees_within_four_standard_errors(seq_toy, name):
    zs, _ = _mc_check(seq_toy, name, "opd+", 1.0)
    for z, se in zs:
        assert abs(z) < 4.0, f"{name}: {z:.2f} standard errors off"


def test_monte_carlo_detects_the_gamma_zero_bias(seq_toy):
    """gamma = 0: the Monte Carlo mean matches its own enumerated expectation, not the exact gradient."""
    g = torch.Generator().manual_seed(1)
    samples = seq_toy.sampled_gradients("forward_kl", "opd+", 0.0, 300, 32, g)
    exact = seq_toy.true_gradient("forward_kl")
    expected0 = seq_toy.expected_gradient("forward_kl", "opd+", gamma=0.0)
    v = (expected0 - exact) / (expected0 - exact).norm()  # the bias direction
    proj = (samples * v).flatten(1).sum(1)
    se = float(proj.std() / math.sqrt(300))
    assert abs(float(proj.mean()) - float((expected0 * v).sum())) < 4 * se
    assert abs(float(proj.mean()) - float((exact * v).sum())) > 10 * se


def test_leave_one_out_reduces_variance_without_bias(seq_toy):
    """G = 4 samples per prompt (one prompt here): LOO is unbiased and lowers the variance."""
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    plain = seq_toy.sampled_gradients("reverse_kl", "opd+", 1.0, 300, 8, g1)
    loo = seq_toy.sampled_gradients("reverse_kl", "opd+", 1.0, 300, 8, g2, baseline="loo",
                                    group_size=4)
    exact = seq_toy.true_gradient("reverse_kl")
    v = exact / exact.norm()
    for s in (plain, loo):
        proj = (s * v).flatten(1).sum(1)
        z = (float(proj.mean()) - float((exact * v).sum())) / float(proj.std() / math.sqrt(300))
        assert abs(z) < 4.0
    var_plain = float(plain.var(0).sum())
    var_loo = float(loo.var(0).sum())
    assert var_loo < 0.8 * var_plain


# ----------------------------------------------------------------------------- temperature


def _tempered_expectation_row_by_row(tt, d, temperature, gamma, **kw):
    """sum_y p_T(y) grad pg_loss(y): one pg_loss call per sequence, as sampled in training."""
    from opdplus.estimators import pg_loss

    z = tt.student_logits.detach().clone().requires_grad_(True)
    seqs = tt.sequences
    lp = tt.token_logps(seqs, z)
    lq = tt.token_logps(seqs, tt.teacher_logits)
    ls = tt.token_logps(seqs, tt.student_logits / temperature)  # the sampler's log-probs
    total = 0.0
    for i in range(seqs.shape[0]):
        loss, _ = pg_loss(lp[i:i + 1], lq[i:i + 1], torch.ones(1, tt.horizon, dtype=torch.bool),
                          d, "opd+", sampler_logp_BT=ls[i:i + 1], gamma=gamma,
                          clip_log_u=None, num_tokens=1, **kw)
        total = total + ls[i].sum().exp() * loss
    (g,) = torch.autograd.grad(total, z)
    return g


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl"])
@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_tempered_rollouts_with_gamma_one_give_the_exact_sequence_gradient(seq_toy, name,
                                                                           temperature):
    # Rollouts from softmax(z / T): the per-token ratio corrects each action, and the
    # prefix-product ratios correct the tempered distribution of the visited states.
    exact = seq_toy.true_gradient(name)
    by_rows = _tempered_expectation_row_by_row(seq_toy, name, temperature, 1.0)
    assert toy.gradient_agreement(by_rows, exact)["rel_error"] < 1e-9
    est = seq_toy.expected_gradient(name, "opd+", gamma=1.0, temperature=temperature)
    assert toy.gradient_agreement(est, exact)["rel_error"] < 1e-9
    # per-token ratios alone leave the state distribution tempered: biased
    per_token = seq_toy.expected_gradient(name, "opd+", gamma=1.0, temperature=temperature,
                                          prefix_weights=False)
    by_rows_pt = _tempered_expectation_row_by_row(seq_toy, name, temperature, 1.0,
                                                  prefix_weights=False)
    assert toy.gradient_agreement(per_token, by_rows_pt)["rel_error"] < 1e-9
    assert toy.gradient_agreement(per_token, exact)["rel_error"] > 0.01


def test_tempered_gamma_zero_keeps_per_token_ratios(seq_toy):
    # gamma = 0 targets the divergence at the visited states: unchanged, per-token rho only.
    got = seq_toy.expected_gradient("jsd", "opd+", gamma=0.0, temperature=0.7)
    by_rows = _tempered_expectation_row_by_row(seq_toy, "jsd", 0.7, 0.0)
    assert toy.gradient_agreement(got, by_rows)["rel_error"] < 1e-9
    on_policy = seq_toy.expected_gradient("jsd", "opd+", gamma=0.0)
    assert toy.gradient_agreement(got, on_policy)["rel_error"] > 0.01


def test_monte_carlo_tempered_gamma_one_agrees_within_four_standard_errors(seq_toy):
    zs, _ = _mc_check(seq_toy, "forward_kl", "opd+", 1.0, batches=200, temperature=1.3)
    for z, se in zs:
        assert abs(z) < 4.0, f"{z:.2f} standard errors off"
