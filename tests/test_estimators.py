"""The sampled-token surrogate loss: its parts against naive loops and its gradient against autograd forms."""

import math

import pytest
import torch

from opdplus import divergences as D
from opdplus.estimators import (
    compute_advantages, future_sum, leave_one_out, logit_distillation_loss, pg_loss,
)

DT = torch.float64


def _batch(B=6, T=7, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(B, T, V, generator=g, dtype=DT)
    zt = 2 * torch.randn(B, T, V, generator=g, dtype=DT)
    tok = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3, 2:] = False
    return zs, zt, tok, mask


def _logp(z, tok):
    return torch.log_softmax(z, -1).gather(-1, tok[..., None]).squeeze(-1)


def test_future_sum_matches_a_double_loop():
    f = torch.randn(3, 6, dtype=DT)
    for gamma in (0.0, 0.5, 0.9, 1.0):
        naive = torch.zeros_like(f)
        for t in range(6):
            for tp in range(t + 1, 6):
                naive[:, t] += gamma ** (tp - t) * f[:, tp]
        torch.testing.assert_close(future_sum(f, gamma), naive, rtol=1e-12, atol=1e-12)


def test_leave_one_out_matches_a_loop():
    adv = torch.randn(6, 4, dtype=DT)
    mask = torch.rand(6, 4, generator=torch.Generator().manual_seed(1)) > 0.3
    G = 3
    b = leave_one_out(adv, mask, G)
    for i in range(6):
        grp = range((i // G) * G, (i // G + 1) * G)
        for t in range(4):
            others = [adv[j, t] for j in grp if j != i and mask[j, t]]
            exp = sum(others) / len(others) if others else 0.0
            assert abs(float(b[i, t]) - float(exp)) < 1e-12
    with pytest.raises(ValueError, match="group_size"):
        leave_one_out(adv, mask, 4)


@pytest.mark.parametrize("name", D.names())
def test_opd_plus_loss_has_the_gradient_of_the_autograd_form(name):
    """method.md §2: sum_t [ sg(f(u_t)) log p + f(u_t(theta)) ] has the OPD+ gradient."""
    d = D.get(name)
    zs, zt, tok, mask = _batch(seed=3)
    lq = _logp(zt, tok)
    z1 = zs.clone().requires_grad_(True)
    loss, _ = pg_loss(_logp(z1, tok), lq, mask, d, "opd+", clip_log_u=None)
    loss.backward()
    z2 = zs.clone().requires_grad_(True)
    lp = _logp(z2, tok)
    f_u = d.f(torch.exp(lq - lp))
    form = ((f_u.detach() * lp + f_u) * mask).sum() / mask.sum()
    form.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", D.names())
def test_opd_loss_is_reinforce_with_reward_minus_f(name):
    d = D.get(name)
    zs, zt, tok, mask = _batch(seed=4)
    lq = _logp(zt, tok)
    z1 = zs.clone().requires_grad_(True)
    pg_loss(_logp(z1, tok), lq, mask, d, "opd", clip_log_u=None)[0].backward()
    z2 = zs.clone().requires_grad_(True)
    lp = _logp(z2, tok)
    reward = -d.f(torch.exp(lq - lp.detach()))
    (-(reward * lp * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-9, atol=1e-12)


def test_masked_tokens_change_nothing():
    zs, zt, tok, mask = _batch(seed=5)
    lq = _logp(zt, tok)
    z = zs.clone().requires_grad_(True)
    loss, m = pg_loss(_logp(z, tok), lq, mask, "forward_kl", "opd+", gamma=1.0)
    loss.backward()
    g1 = z.grad.clone()
    lq2 = lq.clone()
    lq2[~mask] = -50.0  # garbage where the mask is off
    z.grad = None
    loss2, m2 = pg_loss(_logp(z, tok), lq2, mask, "forward_kl", "opd+", gamma=1.0)
    loss2.backward()
    assert float(loss2.detach()) == pytest.approx(float(loss.detach()), abs=1e-12)
    torch.testing.assert_close(z.grad, g1)
    assert (z.grad[~mask].abs().sum() == 0)
    assert m["tokens"] == int(mask.sum())


def test_clipping_bounds_log_u_and_reports_the_fraction():
    lp = torch.zeros(1, 4, dtype=DT)
    lq = torch.tensor([[-10.0, -1.0, 2.0, 9.0]], dtype=DT)
    mask = torch.ones(1, 4, dtype=torch.bool)
    _, m = pg_loss(lp.clone().requires_grad_(True), lq, mask, "forward_kl", "opd+",
                   clip_log_u=(-6.0, 6.0))
    assert m["clip_frac"] == pytest.approx(0.5)
    adv, _ = compute_advantages(lq - lp, mask, "forward_kl", "opd+", clip_log_u=(-6.0, 6.0))
    torch.testing.assert_close(adv, torch.exp(lq.clamp(-6, 6)))
    with pytest.raises(ValueError, match="clip_log_u"):
        compute_advantages(lq, mask, "forward_kl", clip_log_u=(1.0, 6.0))


def test_importance_ratio_reweights_off_policy_tokens():
    zs, zt, tok, mask = _batch(seed=6)
    lq = _logp(zt, tok)
    sampler = _logp(zs, tok) + 0.3 * torch.randn(zs.shape[:2], generator=torch.Generator().manual_seed(0),
                                                  dtype=DT)
    z1 = zs.clone().requires_grad_(True)
    loss, m = pg_loss(_logp(z1, tok), lq, mask, "jsd", "opd+", sampler_logp_BT=sampler,
                      clip_log_u=None)
    loss.backward()
    z2 = zs.clone().requires_grad_(True)
    lp = _logp(z2, tok)
    rho = torch.exp(lp.detach() - sampler)
    adv, _ = compute_advantages(lq - lp.detach(), mask, "jsd", "opd+", clip_log_u=None)
    (-(rho * adv * lp * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-9, atol=1e-12)
    assert m["ratio_max"] > 1.0
    # truncation caps the weight, and the gradient is min(rho, c) A grad log p (not zero)
    c = 1.0
    z3 = zs.clone().requires_grad_(True)
    loss3, m2 = pg_loss(_logp(z3, tok), lq, mask, "jsd", "opd+", sampler_logp_BT=sampler,
                        max_importance_ratio=c, clip_log_u=None)
    loss3.backward()
    # the metrics show the raw ratio's maximum and, beside it, how much was truncated
    assert m2["ratio_max"] == pytest.approx(float(rho[mask].max()), rel=1e-6)  # float32 log
    assert m2["ratio_max"] > c
    assert m2["ratio_trunc_frac"] == pytest.approx(float((rho[mask] > c).double().mean()))
    assert m["ratio_trunc_frac"] == 0.0
    z4 = zs.clone().requires_grad_(True)
    lp4 = _logp(z4, tok)
    (-(rho.clamp(max=c) * adv * lp4 * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(z3.grad, z4.grad, rtol=1e-9, atol=1e-12)
    assert (rho[mask] > c).any()  # some tokens were truncated, and still carry gradient


def test_global_token_count_makes_micro_batches_add_up():
    zs, zt, tok, mask = _batch(B=8, seed=7)
    lq = _logp(zt, tok)
    z = zs.clone().requires_grad_(True)
    pg_loss(_logp(z, tok), lq, mask, "reverse_kl", "opd+", gamma=0.5)[0].backward()
    full = z.grad.clone()
    z.grad = None
    N = int(mask.sum())
    for rows in (slice(0, 3), slice(3, 8)):  # uneven micro-batches, uneven token counts
        pg_loss(_logp(z[rows], tok[rows]), lq[rows], mask[rows], "reverse_kl", "opd+",
                gamma=0.5, num_tokens=N)[0].backward()
    torch.testing.assert_close(z.grad, full, rtol=1e-10, atol=1e-13)


def test_analytic_baseline_is_minus_reverse_kl_minus_one_for_reverse_kl():
    zs, zt, _, mask = _batch(seed=8)
    b = D.get("reverse_kl").expected_advantage(zs, zt, "opd+", mask)
    rkl = D.get("reverse_kl").full_vocab(zs, zt, mask)
    torch.testing.assert_close(b, (-rkl - 1) * mask, rtol=1e-10, atol=1e-12)
    b_opd = D.get("jsd").expected_advantage(zs, zt, "opd", mask)
    torch.testing.assert_close(b_opd, -D.get("jsd").full_vocab(zs, zt, mask), rtol=1e-10, atol=1e-12)


def test_metrics_report_the_teacher_kl_estimate_and_advantage_stats():
    zs, zt, tok, mask = _batch(seed=9)
    lp, lq = _logp(zs, tok), _logp(zt, tok)
    _, m = pg_loss(lp.clone().requires_grad_(True), lq, mask, "forward_kl", "opd+", clip_log_u=None)
    assert m["teacher_kl"] == pytest.approx(float((lp - lq)[mask].mean()), rel=1e-9)
    adv = torch.exp(lq - lp)[mask]
    assert m["adv_mean"] == pytest.approx(float(adv.mean()), rel=1e-6)
    assert m["adv_std"] == pytest.approx(float(adv.std()), rel=1e-6)


def test_logit_distillation_loss_is_the_mean_full_vocab_divergence():
    zs, zt, _, mask = _batch(seed=10)
    z = zs.clone().requires_grad_(True)
    loss, m = logit_distillation_loss(z, zt, mask, "forward_kl", chunk_size=4)
    ref = D.get("forward_kl").full_vocab(zs, zt)[mask].mean()
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-12)
    loss.backward()
    assert z.grad[~mask].abs().sum() == 0 and z.grad[mask].abs().sum() > 0


def test_bad_inputs_raise():
    lp = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="shapes differ"):
        pg_loss(lp, torch.zeros(2, 4), mask)
    with pytest.raises(ValueError, match="teacher log-probs contains non-finite"):
        pg_loss(lp, torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]]), mask)
    with pytest.raises(ValueError, match="gamma"):
        pg_loss(lp, lp, mask, gamma=1.5)
    with pytest.raises(ValueError, match="unknown baseline"):
        pg_loss(lp, lp, mask, baseline="mean")
    with pytest.raises(ValueError, match="needs baseline_BT"):
        pg_loss(lp, lp, mask, baseline="analytic")
    with pytest.raises(ValueError, match="unknown estimator"):
        pg_loss(lp, lp, mask, estimator="ppo")
    with pytest.raises(ValueError, match="unknown divergence"):
        pg_loss(lp, lp, mask, divergence="kl")


def test_prefix_weights_are_the_capped_prefix_products_of_the_ratios():
    """gamma > 0 with sampler log-probs: each term is weighted by R_t = prod_{k<=t} rho_k, capped
    at ``max_importance_ratio`` (built here by hand from the definition, with an explicit loop
    for the divergence-to-go)."""
    zs, zt, tok, mask = _batch(seed=11)
    lq = _logp(zt, tok)
    sampler = _logp(zs, tok) + 0.4 * torch.randn(zs.shape[:2], generator=torch.Generator().manual_seed(3),
                                                 dtype=DT)
    d, c, gamma = D.get("jsd", beta=0.5), 1.5, 1.0
    grads = {}
    for cap in (None, c):
        z = zs.clone().requires_grad_(True)
        loss, m = pg_loss(_logp(z, tok), lq, mask, d, "opd+", gamma=gamma, sampler_logp_BT=sampler,
                          max_importance_ratio=cap, clip_log_u=None)
        loss.backward()
        grads[cap] = z.grad
    z = zs.clone().requires_grad_(True)
    lp = _logp(z, tok)
    B, T = mask.shape
    log_u = (lq - lp.detach()) * mask
    R = torch.ones(B, T, dtype=DT)
    for b in range(B):
        acc = 0.0
        for t in range(T):
            if mask[b, t]:
                acc += float(lp.detach()[b, t] - sampler[b, t])
            R[b, t] = min(math.exp(acc), c)
    w = d.advantage(log_u, "opd+") * mask
    f = -d.advantage(log_u, "opd") * mask
    A = torch.zeros(B, T, dtype=DT)
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                A[b, t] = R[b, t] * w[b, t] - sum(gamma ** (s - t) * R[b, s] * f[b, s]
                                                  for s in range(t + 1, T) if mask[b, s])
    (-(A * lp * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(grads[c], z.grad, rtol=1e-9, atol=1e-12)
    assert bool(((R >= c) & mask.bool()).any()), "the cap must bind somewhere for this check"
    assert not torch.allclose(grads[None], grads[c]), "the cap changed nothing"
