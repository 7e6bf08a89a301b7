"""The f-divergence family against independent closed forms, autograd and torch.distributions."""

import math

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from opdplus import divergences as D

DT = torch.float64

# Independent reference generators, written from the table in method.md §3 in the most
# literal form (no log-space tricks), for moderate u only.
REF_F = {
    "reverse_kl": lambda u: -torch.log(u),
    "forward_kl": lambda u: u * torch.log(u),
    "jsd": lambda u, beta=0.5: beta * u * torch.log(u / (beta * u + 1 - beta))
    - (1 - beta) * torch.log(beta * u + 1 - beta),
    "tv": lambda u: 0.5 * (u - 1).abs(),
    "hellinger": lambda u: (torch.sqrt(u) - 1) ** 2,
    "pearson_chi2": lambda u: (u - 1) ** 2,
    "neyman_chi2": lambda u: (1 - u) ** 2 / u,
    "alpha": lambda u, alpha=0.5: (u**alpha - alpha * u - (1 - alpha)) / (alpha * (alpha - 1)),
    "skew_kl": lambda u, alpha=0.1: u * torch.log(u / (alpha * u + 1 - alpha)),
    "skew_reverse_kl": lambda u, alpha=0.1: -torch.log(alpha + (1 - alpha) * u),
    "jeffreys": lambda u: (u - 1) * torch.log(u),
}
REF_W = {
    "reverse_kl": lambda u: torch.log(u) - 1,
    "forward_kl": lambda u: u,
    "jsd": lambda u, beta=0.5: (1 - beta) * torch.log(1 - beta + beta * u),
    "tv": lambda u: 0.5 * torch.sign(u - 1),
    "hellinger": lambda u: torch.sqrt(u) - 1,
    "pearson_chi2": lambda u: u**2 - 1,
    "neyman_chi2": lambda u: 2 * (1 - 1 / u),
    "alpha": lambda u, alpha=0.5: (u**alpha - 1) / alpha,
    "skew_kl": lambda u, alpha=0.1: (1 - alpha) * u / (alpha * u + 1 - alpha),
    "skew_reverse_kl": lambda u, alpha=0.1: torch.log(alpha + (1 - alpha) * u)
    - (1 - alpha) * u / (alpha + (1 - alpha) * u),
    "jeffreys": lambda u: u + torch.log(u) - 1,
}

# Every registry row, plus parameter values that exercise the branches.
CASES = [(n, {}) for n in D.names()] + [
    ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.9}), ("jsd", {"beta": 0.3, "normalized": True}),
    ("alpha", {"alpha": -1.0}), ("alpha", {"alpha": 0.0}), ("alpha", {"alpha": 0.2}),
    ("alpha", {"alpha": 0.8}), ("alpha", {"alpha": 1.0}), ("alpha", {"alpha": 2.0}),
    ("alpha", {"alpha": 3.0}), ("skew_kl", {"alpha": 0.0}), ("skew_kl", {"alpha": 0.5}),
    ("skew_reverse_kl", {"alpha": 0.0}), ("skew_reverse_kl", {"alpha": 0.5}),
]
IDS = [n + "".join(f"-{k}={v}" for k, v in p.items()) for n, p in CASES]

# u grid away from 1 (TV is not differentiable there)
U = torch.exp(torch.linspace(-4, 4, 81, dtype=DT))
U = U[(U - 1).abs() > 1e-6]


def test_names_are_the_public_registry():
    assert D.names() == [
        "reverse_kl", "forward_kl", "jsd", "tv", "hellinger", "pearson_chi2", "neyman_chi2",
        "alpha", "skew_kl", "skew_reverse_kl", "jeffreys",
    ]


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_generator_is_zero_at_one_and_convex(name, params):
    d = D.get(name, **params)
    assert abs(float(d.f(torch.tensor(1.0, dtype=DT)))) < 1e-15
    u = torch.linspace(0.05, 6.0, 400, dtype=DT)
    fu = d.f(u)
    second = fu[2:] - 2 * fu[1:-1] + fu[:-2]  # uniform grid: >= 0 iff convex (discretely)
    assert second.min() > -1e-12


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_generator_and_advantage_match_the_table(name, params):
    d = D.get(name, **params)
    ref_params = {k: v for k, v in params.items() if k != "normalized"}
    scale = 1.0 / (params["beta"] * (1 - params["beta"])) if params.get("normalized") else 1.0
    if name == "alpha" and params.get("alpha") in (0.0, 1.0):
        a = params["alpha"]  # limit forms: reverse KL + (u-1), forward KL - (u-1)
        f_ref = (-torch.log(U) + U - 1) if a == 0.0 else (U * torch.log(U) - U + 1)
        w_ref = torch.log(U) if a == 0.0 else U - 1
    else:
        f_ref = scale * REF_F[name](U, **ref_params)
        w_ref = scale * REF_W[name](U, **ref_params)
    torch.testing.assert_close(d.f(U), f_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d.advantage(torch.log(U), "opd+"), w_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(d.advantage(torch.log(U), "opd"), -f_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_opd_plus_advantage_is_minus_f_plus_u_fprime_by_autograd(name, params):
    d = D.get(name, **params)
    u = U.clone().requires_grad_(True)
    fu = d.f(u)
    (fprime,) = torch.autograd.grad(fu.sum(), u)
    expected = -fu.detach() + U * fprime
    torch.testing.assert_close(d.advantage(torch.log(U), "opd+"), expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_advantages_stay_finite_in_float32_for_log_u_up_to_50(name, params):
    d = D.get(name, **params)
    t32 = torch.linspace(-50, 50, 2001, dtype=torch.float32)
    t64 = t32.double()
    for est in ("opd", "opd+"):
        a = d.advantage(t32, est)
        assert a.dtype == torch.float32
        assert torch.isfinite(a).all(), f"{est} overflowed"
        ref = d.advantage(t64, est)
        big = torch.finfo(torch.float32).max
        representable = ref.abs() < big
        # where the true value fits in float32 it is accurate; beyond, it saturates
        torch.testing.assert_close(a[representable].double(), ref[representable], rtol=2e-6, atol=1e-6)
        assert (a[~representable].abs() == big).all()


def _rand_logits(shape, seed, scale=2.0, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_full_vocab_equals_the_explicit_sum_and_is_a_divergence(name, params):
    d = D.get(name, **params)
    zs, zt = _rand_logits((3, 5, 7), 0), _rand_logits((3, 5, 7), 1)
    p, q = torch.softmax(zs, -1), torch.softmax(zt, -1)
    explicit = (p * d.f(q / p)).sum(-1)
    got = d.full_vocab(zs, zt)
    torch.testing.assert_close(got, explicit, rtol=1e-10, atol=1e-12)
    assert (got > 0).all()
    assert d.full_vocab(zs, zs.clone()).abs().max() < 1e-12


@pytest.mark.parametrize("name,params", CASES, ids=IDS)
def test_full_vocab_chunks_mask_and_analytic_gradient(name, params):
    d = D.get(name, **params)
    zs, zt = _rand_logits((4, 6, 9), 2), _rand_logits((4, 6, 9), 3)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(4)) > 0.3
    full = d.full_vocab(zs, zt)
    for chunk in (1, 5, 1000):
        torch.testing.assert_close(d.full_vocab(zs, zt, chunk_size=chunk), full, rtol=0, atol=1e-13)
        torch.testing.assert_close(d.full_vocab(zs, zt, mask, chunk_size=chunk), full * mask,
                                   rtol=0, atol=1e-13)
    # gradient (through chunk checkpointing) equals dD/dz_b = p_b (c_b - sum_a p_a c_a), c = -w_f
    z = zs.clone().requires_grad_(True)
    d.full_vocab(z, zt, mask, chunk_size=5).sum().backward()
    p = torch.softmax(zs, -1)
    c = -d.advantage(torch.log_softmax(zt, -1) - torch.log_softmax(zs, -1), "opd+")
    analytic = p * (c - (p * c).sum(-1, keepdim=True)) * mask[..., None]
    torch.testing.assert_close(z.grad, analytic, rtol=1e-9, atol=1e-12)


def test_direction_is_pinned_against_torch_distributions():
    zs, zt = _rand_logits((5, 11), 5), _rand_logits((5, 11), 6)
    student, teacher = Categorical(logits=zs), Categorical(logits=zt)
    fwd = D.get("forward_kl").full_vocab(zs, zt)
    rev = D.get("reverse_kl").full_vocab(zs, zt)
    torch.testing.assert_close(fwd, kl_divergence(teacher, student), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(rev, kl_divergence(student, teacher), rtol=1e-10, atol=1e-12)
    assert (fwd - rev).abs().max() > 1e-2  # the two directions really differ here
    jef = D.get("jeffreys").full_vocab(zs, zt)
    torch.testing.assert_close(jef, fwd + rev, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl", "jsd", "tv", "hellinger",
                                  "skew_kl", "skew_reverse_kl", "jeffreys"])
def test_full_vocab_is_finite_when_the_student_gives_a_token_almost_no_mass(name):
    d = D.get(name)
    zs = torch.tensor([[0.0, 0.0, -80.0]], dtype=torch.float32)  # p(2) ~ 1e-35
    zt = torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float32)
    val32 = d.full_vocab(zs, zt)
    val64 = d.full_vocab(zs.double(), zt.double())
    assert torch.isfinite(val32).all()
    torch.testing.assert_close(val32.double(), val64, rtol=1e-5, atol=1e-6)


def test_jsd_normalised_limits_are_forward_and_reverse_kl():
    zs, zt = _rand_logits((6, 8), 7, 1.0), _rand_logits((6, 8), 8, 1.0)
    fwd = D.get("forward_kl").full_vocab(zs, zt)
    rev = D.get("reverse_kl").full_vocab(zs, zt)
    errs_f, errs_r = [], []
    for eps in (1e-2, 1e-3, 1e-4):
        lo = D.get("jsd", beta=eps, normalized=True).full_vocab(zs, zt)
        hi = D.get("jsd", beta=1 - eps, normalized=True).full_vocab(zs, zt)
        errs_f.append(float((lo - fwd).abs().max() / fwd.abs().max()))
        errs_r.append(float((hi - rev).abs().max() / rev.abs().max()))
    assert errs_f[-1] < 1e-3 and errs_r[-1] < 1e-3
    assert errs_f[0] > errs_f[1] > errs_f[2] and errs_r[0] > errs_r[1] > errs_r[2]  # converging
    # unnormalised JSD_beta goes to 0 at both ends: the trap the normalisation avoids
    assert D.get("jsd", beta=1e-4).full_vocab(zs, zt).abs().max() < 1e-3 * fwd.abs().max()


def test_alpha_special_cases():
    u = U
    f = lambda name, **p: D.get(name, **p).f(u)  # noqa: E731
    torch.testing.assert_close(f("alpha", alpha=0.5), 2 * f("hellinger"), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f("alpha", alpha=2.0), 0.5 * f("pearson_chi2"), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f("alpha", alpha=-1.0), 0.5 * f("neyman_chi2"), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(f("alpha", alpha=0.0), f("reverse_kl") + (u - 1), rtol=1e-12, atol=0)
    torch.testing.assert_close(f("alpha", alpha=1.0), f("forward_kl") - (u - 1), rtol=1e-12, atol=0)
    # continuity into the limit forms, no cancellation near them
    for a0 in (0.0, 1.0):
        for eps in (1e-6, -1e-6):
            near = D.get("alpha", alpha=a0 + eps)
            torch.testing.assert_close(near.f(u), f("alpha", alpha=a0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(near.advantage(torch.log(u)),
                                       D.get("alpha", alpha=a0).advantage(torch.log(u)),
                                       rtol=1e-4, atol=1e-5)


def test_generator_shift_keeps_divergence_and_shifts_advantages():
    d = D.get("forward_kl")
    s = D.shifted(d, 0.7)
    zs, zt = _rand_logits((4, 6), 9), _rand_logits((4, 6), 10)
    torch.testing.assert_close(s.full_vocab(zs, zt), d.full_vocab(zs, zt), rtol=1e-12, atol=1e-12)
    t = torch.log(U)
    torch.testing.assert_close(s.advantage(t, "opd+"), d.advantage(t, "opd+") + 0.7)
    torch.testing.assert_close(s.advantage(t, "opd"), d.advantage(t, "opd") - 0.7 * (U - 1))


# ----------------------------------------------------------------------------- bad input


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid names are: reverse_kl, forward_kl, jsd"):
        D.get("kl")


@pytest.mark.parametrize("name,params,msg", [
    ("jsd", {"beta": 0.0}, "beta must lie strictly between 0 and 1"),
    ("jsd", {"beta": 1.0}, "beta must lie strictly between 0 and 1"),
    ("jsd", {"beta": -0.2}, "beta"),
    ("jsd", {"beta": float("nan")}, "beta"),
    ("alpha", {"alpha": float("inf")}, "alpha must be a finite"),
    ("skew_kl", {"alpha": 1.0}, r"alpha must lie in \[0, 1\)"),
    ("skew_reverse_kl", {"alpha": -0.1}, r"alpha must lie in \[0, 1\)"),
    ("tv", {"beta": 0.5}, "takes parameters"),
])
def test_parameters_out_of_range_are_rejected(name, params, msg):
    with pytest.raises(ValueError, match=msg):
        D.get(name, **params)


def test_bad_tensors_are_rejected_with_a_clear_error():
    d = D.get("forward_kl")
    zs = torch.zeros(2, 3, 5)
    with pytest.raises(ValueError, match="vocabulary 5 vs 7"):
        d.full_vocab(zs, torch.zeros(2, 3, 7))
    with pytest.raises(ValueError, match="differ in shape"):
        d.full_vocab(zs, torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="mask shape"):
        d.full_vocab(zs, zs, mask=torch.ones(2, 4, dtype=torch.bool))
    bad = zs.clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="student logits contains non-finite values \\(1 NaN"):
        d.full_vocab(bad, zs)
    bad[0, 1, 2] = float("inf")
    with pytest.raises(ValueError, match="teacher logits contains non-finite"):
        d.full_vocab(zs, bad)
    with pytest.raises(ValueError, match="log_u contains NaN"):
        d.advantage(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="unknown estimator"):
        d.advantage(torch.zeros(3), "opd++")


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("name", ["pearson_chi2", "neyman_chi2"])
def test_chi2_full_vocab_is_finite_in_float32_when_a_log_prob_is_below_minus_88(name):
    # Student log p = -90 and teacher log q = -60 on token 1 (the other way round for
    # Neyman, whose perspective divides by q): e^-90 underflows to 0 in float32, and the
    # plain (q - p)^2 * exp(-log p) was 0 * inf = NaN.
    zs = torch.tensor([[0.0, -90.0, 0.5], [1.0, 0.0, -90.0]])
    zt = torch.tensor([[0.0, -60.0, 0.2], [1.0, 0.3, -60.0]])
    if name == "neyman_chi2":
        zs, zt = zt, zs
    d = D.get(name)
    val32 = d.full_vocab(zs, zt)
    val64 = d.full_vocab(zs.double(), zt.double())
    p, q = torch.softmax(zs.double(), -1), torch.softmax(zt.double(), -1)
    explicit64 = (p * d.f(q / p)).sum(-1)
    torch.testing.assert_close(val64, explicit64, rtol=1e-12, atol=0)
    assert torch.isfinite(val32).all()
    torch.testing.assert_close(val32.double(), val64, rtol=1e-5, atol=0)
    z = zs.clone().requires_grad_(True)
    d.full_vocab(z, zt).sum().backward()
    assert torch.isfinite(z.grad).all()
    # and the token's own term is the float64 value e^(2(-60) + 90) = e^-30 (p tiny, q not)
    lp, lq = torch.log_softmax(zs, -1), torch.log_softmax(zt, -1)
    a, b = (lp, lq) if name == "pearson_chi2" else (lq, lp)
    term = d.perspective(lp, lq)[0, 1].double()
    ref = math.exp(2 * float(b[0, 1]) - float(a[0, 1])) * (1 - math.exp(float(a[0, 1] - b[0, 1]))) ** 2
    assert math.isclose(float(term), ref, rel_tol=1e-5)


def _alpha_divergence_decimal(zs, zt, alpha):
    """sum_a p f(q/p) for the Amari alpha-divergence in 50-digit decimal arithmetic."""
    from decimal import Decimal, localcontext

    out = []
    with localcontext() as ctx:
        ctx.prec = 50
        a = Decimal(alpha)
        for row_s, row_t in zip(zs.tolist(), zt.tolist()):
            es = [Decimal(x).exp() for x in row_s]
            et = [Decimal(x).exp() for x in row_t]
            p = [e / sum(es) for e in es]
            q = [e / sum(et) for e in et]
            tot = Decimal(0)
            for pa, qa in zip(p, q):
                u = qa / pa
                tot += pa * ((a * u.ln()).exp() - a * u - (1 - a)) / (a * (a - 1))
            out.append(float(tot))
    return torch.tensor(out, dtype=DT)


@pytest.mark.parametrize("alpha", [1e-6, -1e-6, 1e-4, 1 - 1e-6, 1 + 1e-6, 1 - 1e-4, 0.3, 2.0])
def test_alpha_full_vocab_is_accurate_next_to_the_kl_limits(alpha):
    # The plain perspective (p^(1-a) q^a - a q - (1-a) p) / (a (a-1)) cancels: relative
    # error ~ eps / |a|, 0.12 in float32 at a = 1e-6. Reference: 50-digit decimals.
    zs, zt = _rand_logits((4, 7), 11, 1.0), _rand_logits((4, 7), 12, 1.0)
    zs, zt = zs.float(), zt.float()  # the decimal reference starts from the float32 logits
    ref = _alpha_divergence_decimal(zs.double(), zt.double(), alpha)
    d = D.get("alpha", alpha=alpha)
    torch.testing.assert_close(d.full_vocab(zs.double(), zt.double()), ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(d.full_vocab(zs, zt).double(), ref, rtol=2e-5, atol=0)


def test_alpha_full_vocab_is_finite_when_a_power_overflows():
    # a = 0.2: p u^a = exp(lp + a t) with t = 200; expm1(a t) alone is inf in float32.
    zs = torch.tensor([[0.0, -200.0, 0.0]])
    zt = torch.tensor([[0.0, 0.0, 0.0]])
    for alpha in (0.2, 0.8):
        d = D.get("alpha", alpha=alpha)
        v32, v64 = d.full_vocab(zs, zt), d.full_vocab(zs.double(), zt.double())
        assert torch.isfinite(v32).all()
        torch.testing.assert_close(v32.double(), v64, rtol=1e-5, atol=0)


def test_full_vocab_has_no_double_backward_and_says_so():
    d = D.get("forward_kl")
    zs = _rand_logits((3, 4, 6), 13).requires_grad_(True)
    zt = _rand_logits((3, 4, 6), 14)
    (g,) = torch.autograd.grad(d.full_vocab(zs, zt).sum(), zs, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        torch.autograd.grad(g.sum(), zs)


def test_full_vocab_checks_for_nan_only_at_masked_in_positions():
    d = D.get("reverse_kl")
    zs, zt = _rand_logits((2, 3, 5), 15), _rand_logits((2, 3, 5), 16)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    bad_s, bad_t = zs.clone(), zt.clone()
    bad_s[0, 1] = float("nan")  # masked-out positions: padding may hold anything
    bad_t[1, 2] = float("inf")
    got = d.full_vocab(bad_s, bad_t, mask)
    torch.testing.assert_close(got, d.full_vocab(zs, zt, mask), rtol=0, atol=0)
    z = bad_s.clone().requires_grad_(True)
    d.full_vocab(z, bad_t, mask).sum().backward()
    assert torch.isfinite(z.grad).all() and (z.grad[0, 1] == 0).all()
    torch.testing.assert_close(
        D.get("reverse_kl").expected_advantage(bad_s, bad_t, mask=mask),
        D.get("reverse_kl").expected_advantage(zs, zt, mask=mask), rtol=0, atol=0)
    bad_s[0, 2, 3] = float("nan")  # a masked-in position
    with pytest.raises(ValueError, match="student logits contains non-finite values \\(1 NaN"):
        d.full_vocab(bad_s, zt, mask)
