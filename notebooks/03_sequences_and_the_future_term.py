# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Sequences and the future term
#
# **Learning goals.** After this notebook you can
#
# - write the exact gradient of the sequence objective, with its *divergence-to-go*, and say
#   which sign the advantage has;
# - say what the discount `γ` trades: bias (the future term dropped) against variance;
# - measure an estimator's noise as its **total variance** (the trace of its covariance);
# - explain why leave-one-out and analytic baselines add no bias, and when they help.
#
# **Prerequisites.** Notebooks 01 (f-divergences, the generator `f`) and 02 (the one-state
# advantage `w_f(u) = −f(u) + u f′(u)` and the stop-gradient bias of OPD); the score-function
# identity `E_{a~p}[∇log p(a)] = 0`. Terms are defined in the [glossary](../docs/glossary.md);
# the formulas of every divergence are on the [cheat sheet](../docs/cheatsheet.md).
#
# Runtime: printed by the first code cell.
#
# Notebook 02 fixed the advantage at one state. A language model generates sequences,
# and the objective (minimised) sums the divergence over the states the student *visits*:
#
# $$J_f(\theta) = \mathbb{E}_{y\sim p_\theta}\Big[\sum_t f(u_t)\Big].$$
#
# Those states depend on θ, so the exact gradient has a second term, the
# [divergence-to-go](../docs/glossary.md). Written with the **ascent advantage** (the
# bracket, what the update multiplies `∇log p` by to go *down* `J_f`):
#
# $$-\nabla J_f = \mathbb{E}\Big[\sum_t \nabla\log p_\theta(y_t\mid s_t)\,\underbrace{\Big(w_f(u_t) - \sum_{t'>t}\gamma^{t'-t} f(u_{t'})\Big)}_{A_t}\Big]\quad\text{with } \gamma = 1.$$
#
# The minus sign on the left is the point: `A_t` is to be *maximised* (the library's
# `pg_loss = −Σ_t A_t log p / N` has gradient `∇J_f` in expectation). A token is pushed up
# when its own term `w_f(u_t)` is large and when the divergence still to come after it is
# small. The first code cell of section 1 checks this identity, sign included.
#
# The common recipe uses `γ = 0` (drop the future). Here we use a **tabular
# autoregressive toy** (3 tokens, 3 steps: 27 sequences) small enough to enumerate, so
# every expectation is exact, and ask:
#
# 1. what `γ` changes: `γ = 1` is unbiased for every f, `γ = 0` is biased for every f,
#    reverse KL included (it is the exact gradient of a *different* objective);
# 2. what Monte Carlo estimates look like around those exact values, and how noisy each
#    estimator is (exactly, by enumeration);
# 3. how baselines (leave-one-out, analytic) cut the variance without adding bias;
# 4. why practice keeps `γ = 0` anyway.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import opdplus
from opdplus import divergences, estimators, plotting, toy
from opdplus import toy_variance as tv
from opdplus.classroom import runtime_note
from opdplus.exercises import check
from opdplus.plots_sequences import fig_gamma_slider

runtime_note("03_sequences_and_the_future_term")

# %% tags=["parameters"]
PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")

# %%
assert PROFILE in ("smoke", "full"), f"PROFILE must be 'smoke' or 'full', got {PROFILE!r}"
MC_BATCHES = {"smoke": 120, "full": 2000}[PROFILE]  # independent Monte Carlo batches
BATCH_SIZE = 16  # sequences per batch
GAMMAS = [i / 10 for i in range(11)]  # the γ slider's stops
print(f"opdplus {opdplus.__version__}, profile {PROFILE}")

# %% [markdown]
# ## 1. The toy, and the exact gradients
#
# Student and teacher are tables of next-token logits, one row per prefix (13 rows: the
# empty prefix, 3 of length 1, 9 of length 2). `toy.true_gradient` differentiates the
# enumerated `J_f` with autograd; `toy.expected_gradient(div, est, gamma)` is the exact
# expectation of the library's `pg_loss` gradient.
#
# First, the formula at the top, written out over all 27 sequences: `Σ_y p(y) Σ_t A_t ∇log p`
# with `γ = 1` must be **minus** the autograd gradient of `J_f`, for every divergence.

# %%
tt = toy.TabularToy.random(vocab=3, horizon=3, seed=0)
print(f"{tt.num_prefixes} prefixes x {tt.vocab} tokens, {len(tt.sequences)} sequences")

for d in toy.family():
    z = tt.student_logits.detach().clone().requires_grad_(True)
    logp_ST = tt.token_logps(tt.sequences, z)  # (27, 3), with grad
    log_u_ST = tt.token_logps(tt.sequences, tt.teacher_logits) - logp_ST.detach()
    f_ST = d.f_log(log_u_ST)
    A_ST = d.advantage(log_u_ST, "opd+") - estimators.future_sum(f_ST, 1.0)  # w_f − future
    p_S = logp_ST.detach().sum(1).exp()  # p(y) of each sequence
    (ascent,) = torch.autograd.grad((p_S[:, None] * A_ST * logp_ST).sum(), z)
    assert torch.allclose(ascent, -tt.true_gradient(d), atol=1e-12), d.name  # −∇J_f, not +
print("E[Σ_t A_t ∇log p] = −∇J_f for all", len(toy.family()), "divergences")

# %%
variants = [("opd+", 1.0), ("opd", 1.0), ("opd+", 0.0), ("opd", 0.0)]
by_gamma = {1.0: {}, 0.0: {}}
for d in toy.family():
    exact = tt.true_gradient(d)
    for est, gamma in variants:
        by_gamma[gamma].setdefault(d.name, {})[est] = toy.gradient_agreement(
            tt.expected_gradient(d, est, gamma), exact)

print(f"{'divergence':16s} " + " ".join(f"{f'{e} γ={g:g}':>10s}" for e, g in variants))
for name in by_gamma[1.0]:
    errs = [by_gamma[g][name][e]["rel_error"] for e, g in variants]
    print(f"{name:16s} " + " ".join(f"{x:10.2g}" for x in errs))

# %% [markdown]
# Relative errors against the exact `∇J_f`:
#
# - **OPD+ with γ = 1 is exact for every divergence** (rounding error only).
# - **OPD with γ = 1** is exact only for reverse KL (the one-state bias of notebook 02).
# - **Anything with γ = 0 is biased, reverse KL included**: dropping the future term is a
#   second, separate bias.

# %%
for name in by_gamma[1.0]:
    assert by_gamma[1.0][name]["opd+"]["rel_error"] < 1e-9, name
    assert by_gamma[0.0][name]["opd+"]["rel_error"] > 0.1, name
    assert by_gamma[0.0][name]["opd"]["rel_error"] > 0.1, name
    if name == "reverse_kl":
        assert by_gamma[1.0][name]["opd"]["rel_error"] < 1e-9
    else:
        assert by_gamma[1.0][name]["opd"]["rel_error"] > 0.1, name
plotting.fig_gradient_agreement(by_gamma[1.0], title="γ = 1 (with the divergence-to-go)")

# %%
plotting.fig_gradient_agreement(by_gamma[0.0], title="γ = 0 (the common recipe: future dropped)")

# %% [markdown]
# ### Exercise 03.1: the divergence-to-go
#
# Write `my_future_sum(f_BT, gamma)`: for every position `t`, the discounted sum of the
# divergence still to come, `Σ_{t'>t} γ^{t'−t} f_{t'}` (0 at the last position). It is the
# term that `γ = 0` drops. The check compares it with `estimators.future_sum` on random
# inputs, for several `γ`, to rounding error.

# %%
def my_future_sum(f_BT, gamma):
    """Σ_{t'>t} γ^(t'−t) f_{t'} along the last dimension; same shape as f_BT."""
    ### BEGIN SOLUTION
    T = f_BT.shape[-1]
    out = torch.zeros_like(f_BT)
    for t in range(T):
        for later in range(t + 1, T):
            out[..., t] += gamma ** (later - t) * f_BT[..., later]
    return out
    ### END SOLUTION


# %%
def _check_future_sum():
    f_BT = torch.randn(4, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for gamma in (0.0, 0.5, 0.9, 1.0):
        mine = my_future_sum(f_BT, gamma)
        assert tuple(mine.shape) == tuple(f_BT.shape), f"shape {tuple(mine.shape)}, expected (4, 7)"
        assert torch.allclose(mine, estimators.future_sum(f_BT, gamma), atol=1e-12), (
            f"γ = {gamma}: differs from estimators.future_sum")


check("03.1", _check_future_sum,
      hint="strictly later positions only (t' > t), weight γ**(t' − t); the last entry is 0")

# %% [markdown]
# ### What γ = 0 does optimise
#
# With `γ = 0`, OPD+ is the exact gradient of `Σ_t E_{s_t}[D_f(s_t)]` with the
# distribution of visited states **held fixed** (the DAgger / GKD view): each state's
# divergence is differentiated, but not the probability of reaching it. The next cell
# builds that objective by hand from the tables and checks it.
#
# It needs the row of each prefix. The toy's documented layout: prefixes of length k
# occupy rows `[offset_k, offset_k + V^k)` in base-V order, `offset_k = Σ_{j<k} V^j`.

# %%
def prefix_rows(seqs_BT: torch.Tensor, vocab: int) -> torch.Tensor:
    """Row of the state before each token: (B, T) indices into the logits tables."""
    B, T = seqs_BT.shape
    rows = torch.zeros(B, T, dtype=torch.long)
    for t in range(T):
        idx = torch.zeros(B, dtype=torch.long)
        for j in range(t):
            idx = idx * vocab + seqs_BT[:, j]
        rows[:, t] = idx + sum(vocab**j for j in range(t))
    return rows


ROWS = prefix_rows(tt.sequences, tt.vocab)  # (27, 3)
for name in ("reverse_kl", "jsd"):
    d = divergences.get(name, **toy.default_params().get(name, {}))
    z = tt.student_logits.detach().clone().requires_grad_(True)
    D_row = d.full_vocab(z, tt.teacher_logits)  # D_f at every prefix, differentiable
    with torch.no_grad():  # visit probabilities, frozen
        p_seq = tt.token_logps(tt.sequences, tt.student_logits).sum(1).exp()
    frozen_objective = (p_seq[:, None] * D_row[ROWS]).sum()
    (g_frozen,) = torch.autograd.grad(frozen_objective, z)
    assert torch.allclose(g_frozen, tt.expected_gradient(d, "opd+", 0.0), atol=1e-12), name
    print(f"{name}: OPD+ with γ = 0 == exact gradient of the frozen-state objective")

# %% [markdown]
# ## 2. Monte Carlo around the exact values
#
# Training never sees expectations: it sees one batch of sampled sequences per step.
# The next cell is the whole Monte Carlo estimator written out (sample from the student,
# score with `pg_loss`, differentiate), with an optional baseline that section 3
# uses. With `baseline="none"` it must reproduce the library's `toy.sampled_gradients`
# draw for draw, which the cell after it checks.

# %%
def mc_gradients(div, est, gamma, batches, batch_size, seed, baseline="none", group_size=1):
    """(batches, rows, V): the pg_loss gradient on independent batches of student samples."""
    d = divergences.get(div, **toy.default_params().get(div, {})) if isinstance(div, str) else div
    table = d.expected_advantage(tt.student_logits, tt.teacher_logits, est)  # (rows,) E_p[A]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        seqs = tt.sample(batch_size, gen)  # (B, T)
        z = tt.student_logits.detach().clone().requires_grad_(True)
        logp = tt.token_logps(seqs, z)  # (B, T), with grad
        teacher_logp = tt.token_logps(seqs, tt.teacher_logits)
        baseline_BT = table[prefix_rows(seqs, tt.vocab)] if baseline == "analytic" else None
        loss, _ = estimators.pg_loss(
            logp, teacher_logp, torch.ones_like(logp, dtype=torch.bool), d, est, gamma=gamma,
            baseline=baseline, baseline_BT=baseline_BT, group_size=group_size,
            clip_log_u=None, num_tokens=batch_size)  # per-sequence normalisation, like J_f
        (g,) = torch.autograd.grad(loss, z)
        out.append(g)
    return torch.stack(out)


mine = mc_gradients("jsd", "opd+", 1.0, batches=5, batch_size=BATCH_SIZE, seed=7)
library = tt.sampled_gradients("jsd", "opd+", 1.0, batches=5, batch_size=BATCH_SIZE,
                               generator=torch.Generator().manual_seed(7))
assert torch.equal(mine, library)

# %% [markdown]
# Each batch gives a gradient vector (13 × 3 = 39 numbers). Its noise is measured by the
# **total variance**: the trace of its covariance, `E‖ĝ − E[ĝ]‖²`, summed over all 39
# coordinates. A 1-D projection would hide the noise in the other 38 directions.
#
# To *draw* the estimates we still project them, onto the direction of the exact gradient
# `∇J_f`: an unbiased estimator's projections scatter around `‖∇J_f‖`. We use **JSD**:
# OPD+ with `γ = 1`, OPD+ with `γ = 0`, and OPD with `γ = 0` (the common recipe).

# %%
def summarise(grads, direction):
    """Projections on a unit direction, their mean and its standard error; the total variance
    (trace of the sample covariance) and its standard error."""
    proj = grads.flatten(1) @ direction.flatten()
    sq = ((grads.flatten(1) - grads.flatten(1).mean(0)) ** 2).sum(1)  # ‖g_i − ḡ‖²
    n = len(proj)
    return {"proj": proj, "mean": float(proj.mean()), "se": float(proj.std() / n ** 0.5),
            "total_var": float(sq.sum() / (n - 1)), "total_var_se": float(sq.std() / n ** 0.5)}


jsd_exact = tt.true_gradient("jsd")
unit = jsd_exact / jsd_exact.norm()
mc = {}
for est, gamma in [("opd+", 1.0), ("opd+", 0.0), ("opd", 0.0)]:
    label = f"{est} γ={gamma:g}"
    mc[label] = summarise(mc_gradients("jsd", est, gamma, MC_BATCHES, BATCH_SIZE, seed=1), unit)
    mc[label]["expected"] = float((tt.expected_gradient("jsd", est, gamma) * unit).sum())
    # the same total variance, exactly: enumerate all 27 sequences (opdplus.toy_variance)
    mc[label]["exact_var"] = tv.batch_moments(tt, "jsd", est, gamma, BATCH_SIZE)["total_var"]
target = float(jsd_exact.norm())
print(f"exact ‖∇J_f‖ = {target:.4f}; total variance of one batch gradient "
      f"({BATCH_SIZE} sequences)")
for label, s in mc.items():
    print(f"{label:10s} MC mean {s['mean']:+.4f} ± {s['se']:.4f} (SE), exact expectation "
          f"{s['expected']:+.4f}, bias {(s['mean'] - target) / s['se']:+.1f} SE; total variance "
          f"exact {s['exact_var']:.4f}, MC {s['total_var']:.4f} ± {s['total_var_se']:.4f}")

# %% [markdown]
# Every Monte Carlo mean agrees with its estimator's exact expectation (so the sampling
# is right), and so does every Monte Carlo total variance. But only OPD+ with `γ = 1` is
# centred on the true gradient.
#
# With `γ = 0`, **OPD+**'s estimates are much less noisy than with `γ = 1` (compare the
# printed total variances) and confidently wrong: their projection on the true direction
# is near zero. **OPD** with `γ = 0` is *not* less noisy: its total variance is larger
# than that of unbiased OPD+ with `γ = 1`, and it points the wrong way. Low variance is no
# evidence of being right, and dropping the future does not by itself buy low variance.

# %%
for label, s in mc.items():
    assert abs(s["mean"] - s["expected"]) < 4 * s["se"], (label, s["mean"], s["expected"])
    assert abs(s["total_var"] - s["exact_var"]) < 4 * s["total_var_se"], label  # MC ≈ exact
assert abs(mc["opd+ γ=1"]["mean"] - target) < 4 * mc["opd+ γ=1"]["se"]  # unbiased
assert abs(mc["opd+ γ=0"]["mean"] - target) > 6 * mc["opd+ γ=0"]["se"]  # biased
assert mc["opd γ=0"]["mean"] < 0 < target  # the common recipe points the wrong way here
# the variances, exact: OPD+ γ=0 far below OPD+ γ=1, which is below OPD γ=0
assert mc["opd+ γ=0"]["exact_var"] < 0.1 * mc["opd+ γ=1"]["exact_var"]
assert mc["opd+ γ=1"]["exact_var"] < mc["opd γ=0"]["exact_var"]
plotting.fig_mc_histograms(
    {label: s["proj"] for label, s in mc.items()}, target,
    title=f"JSD: {MC_BATCHES} batches of {BATCH_SIZE} sequences, projected on ∇J_f",
    x_title="projection of the batch gradient on ∇J_f / ‖∇J_f‖ (nats per logit)",
)

# %% [markdown]
# ### The γ slider
#
# Between the two ends, `γ` weighs the divergence-to-go. The figure below is computed
# exactly (enumeration, `toy_variance.gamma_sweep`) for every `γ` in `GAMMAS` and uses
# plotly's own slider, so it also works in a static page without a kernel. Drag it: OPD+'s
# batch gradient (disc) slides onto the exact `‖∇J_f‖` as `γ → 1` while its spread widens;
# OPD's (cross) never gets there.

# %%
sweep = tv.gamma_sweep(tt, "jsd", GAMMAS, BATCH_SIZE)
plus, opd = sweep["opd+"], sweep["opd"]
assert plus["rel_bias"][-1] < 1e-9 and min(plus["rel_bias"][:-1]) > 0.1  # unbiased only at γ = 1
assert all(b > a for a, b in zip(plus["rel_bias"][1:], plus["rel_bias"]))  # bias falls with γ
assert all(b > a for a, b in zip(plus["total_var"], plus["total_var"][1:]))  # variance grows
assert min(opd["rel_bias"]) > 0.5  # OPD: biased at every γ
fig_gamma_slider(sweep)

# %% [markdown]
# ### Exercise 03.2: total variance from per-sequence gradients
#
# `tv.per_sequence_gradients(tt, div, est, gamma)` returns `g(y)`, the gradient that one
# sequence `y` contributes, for all 27 sequences `(S, R, V)`; `tv.sequence_probs(tt)` their
# probabilities `p(y)`. A batch of `B` independent sequences averages `B` draws of `g`.
# Write `my_total_variance(g_SRV, p_S, batch_size)`: the trace of the covariance of that
# batch average. The check compares it with the library, exactly, for three estimators.

# %%
def my_total_variance(g_SRV, p_S, batch_size):
    """tr Cov of the mean of `batch_size` independent draws of g (a float)."""
    ### BEGIN SOLUTION
    g_SN = g_SRV.flatten(1)
    mean_N = (p_S[:, None] * g_SN).sum(0)
    return float((p_S * ((g_SN - mean_N) ** 2).sum(1)).sum()) / batch_size
    ### END SOLUTION


# %%
def _check_total_variance():
    p_S = tv.sequence_probs(tt)
    for est, gamma in [("opd+", 1.0), ("opd+", 0.0), ("opd", 0.0)]:
        g_SRV = tv.per_sequence_gradients(tt, "jsd", est, gamma)
        want = tv.total_variance(g_SRV, p_S, BATCH_SIZE)
        got = float(my_total_variance(g_SRV, p_S, BATCH_SIZE))
        assert abs(got - want) <= 1e-12 + 1e-9 * want, (
            f"{est} γ={gamma}: {got:.6g}, expected {want:.6g}")


check("03.2", _check_total_variance,
      hint="weight each sequence by p(y), subtract the weighted mean, sum the squares over "
           "all R×V entries, and divide by the batch size (independent draws)")

# %% [markdown]
# ## 3. Baselines: less variance, no bias
#
# Subtracting a detached baseline from `A_t` adds no bias as long as the baseline is
# independent of the token it multiplies, given the state: then
# `E[∇log p(y_t|s_t) · b] = E[b · E_{a~p(·|s_t)}[∇log p(a|s_t)]] = 0`. Two options in the
# library:
#
# - **analytic** (`baseline="analytic"`): a per-state baseline
#   `b(s_t) = E_{a~p}[w_f(u(a))]`, computed exactly from the full vocabulary
#   (`Divergence.expected_advantage`); for reverse KL it is `−KL(student‖teacher)(s) − 1`.
# - **leave-one-out** (`baseline="loo"`, `group_size=G`): subtract the mean advantage of
#   the other `G − 1` samples of the same prompt at the same *position*. This is **not** a
#   per-state baseline `b(s_t)`: the other samples have different prefixes, so they sit in
#   other states. It is unbiased for another reason: the other samples are drawn
#   independently of sample `i`, so the baseline is independent of `y_i` and
#   `E[∇log p(y_i,t|s_i,t) · b] = E[b] · 0`. (Including sample `i` itself in the mean would
#   break this and shrink the gradient by a factor `1 − 1/G`.)
#
# We use reverse KL with `γ = 1`. First, the bias of both baselines, exactly, by
# enumeration (for leave-one-out, of every *pair* of sequences, `G = 2`: 27² groups); then
# the variances by Monte Carlo.

# %%
rk = divergences.get("reverse_kl")
rk_exact = tt.true_gradient(rk)
table = rk.expected_advantage(tt.student_logits, tt.teacher_logits, "opd+")
# the documented closed form for reverse KL
assert torch.allclose(table, -rk.full_vocab(tt.student_logits, tt.teacher_logits) - 1, atol=1e-12)
with_baseline = tt.expected_gradient(rk, "opd+", 1.0, baseline="analytic", baseline_BT=table[ROWS])
assert toy.gradient_agreement(with_baseline, rk_exact)["rel_error"] < 1e-9  # no bias, exactly
loo_pairs = tv.loo_expected_gradient(tt, rk, "opd+", 1.0, group_size=2)
assert toy.gradient_agreement(loo_pairs, rk_exact)["rel_error"] < 1e-9  # no bias, exactly
print("analytic and leave-one-out (G = 2): exact expectation == ∇J_f")

unit = rk_exact / rk_exact.norm()
settings = {"none": {}, "loo G=4": dict(baseline="loo", group_size=4),
            "loo G=16": dict(baseline="loo", group_size=16), "analytic": dict(baseline="analytic")}
base_mc = {
    label: summarise(mc_gradients(rk, "opd+", 1.0, MC_BATCHES, BATCH_SIZE, seed=2, **kw), unit)
    for label, kw in settings.items()
}
target = float(rk_exact.norm())
for label, s in base_mc.items():
    print(f"{label:9s} total variance {s['total_var']:.3f} "
          f"({s['total_var'] / base_mc['none']['total_var']:.0%} of none), "
          f"bias {(s['mean'] - target) / s['se']:+.1f} SE")

# %%
for label, s in base_mc.items():
    assert abs(s["mean"] - target) < 4 * s["se"], label  # all unbiased
    if label != "none":
        assert s["total_var"] < 0.75 * base_mc["none"]["total_var"], label  # all cut the variance
plotting.fig_mc_histograms(
    {label: s["proj"] for label, s in base_mc.items()}, target,
    title="Reverse KL, OPD+ γ = 1: baselines narrow the spread, the centre stays put",
    x_title="projection of the batch gradient on ∇J_f / ‖∇J_f‖ (nats per logit)",
)

# %% [markdown]
# ### Exercise 03.3: leave-one-out
#
# Write `my_leave_one_out(adv_BT, group_size)`: rows come grouped by prompt (rows
# `[g·G, (g+1)·G)` share one), and every entry gets the mean of the *other* `G − 1` rows
# of its group at the same position. (All tokens are real here: no mask.) The check
# compares it with `estimators.leave_one_out`, exactly.

# %%
def my_leave_one_out(adv_BT, group_size):
    """Per-position mean of the other rows of the same group: same shape as adv_BT."""
    ### BEGIN SOLUTION
    B, T = adv_BT.shape
    groups = adv_BT.reshape(B // group_size, group_size, T)
    others = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return others.reshape(B, T)
    ### END SOLUTION


# %%
def _check_leave_one_out():
    adv_BT = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for G in (2, 3, 4):
        want = estimators.leave_one_out(adv_BT, torch.ones_like(adv_BT, dtype=torch.bool), G)
        got = my_leave_one_out(adv_BT, G)
        assert tuple(got.shape) == (12, 5), f"shape {tuple(got.shape)}, expected (12, 5)"
        assert torch.allclose(got, want, atol=1e-12), (
            f"G = {G}: differs from estimators.leave_one_out")


check("03.3", _check_leave_one_out,
      hint="reshape to (B/G, G, T); the others' sum is the group sum minus the row itself; "
           "divide by G − 1, not G")

# %% [markdown]
# A caveat worth seeing for yourself (change `rk` to `divergences.get("forward_kl")` above):
# with `γ = 1` most of the variance comes from the divergence-to-go, which these per-state
# baselines do not model, and a small leave-one-out group (`G = 4`) can even *add*
# variance, since it subtracts a noisy mean of only three other samples.
#
# ## 4. Why practice keeps γ = 0
#
# `γ = 0` is biased for every divergence, yet it is the paper's default and the common
# recipe, and notebook 04 trains with it. Two reasons, both visible in this toy:
#
# 1. **The same fixed point.** At `p = q` every `u = 1` and `f(1) = 0`, so the
#    divergence-to-go is 0 and `w_f(1) = f′(1)` is the same constant for every token,
#    whose expected update `f′(1)·E_p[∇log p] = 0`. Both `γ = 0` and `γ = 1` stop at the
#    teacher; `γ = 0` optimises the frozen-state objective of section 1, whose minimum is
#    also `p = q`. (The next cell checks it on a toy whose student *is* the teacher.)
# 2. **Variance.** The divergence-to-go sums `f` over every later token, so its noise grows
#    with the length of the completion; at `γ = 0` OPD+ has far less total variance
#    (section 2's numbers, printed again below). On a real LM with hundreds of tokens the
#    ratio is larger still.
#
# What `γ = 0` gives up is the signal that steers the student *into states* where the
# teacher agrees with it. Notebook 04 has an optional arm with `γ = 1` to try on a real
# (tiny) model.

# %%
same = toy.TabularToy(tt.teacher_logits.clone(), tt.teacher_logits, tt.vocab, tt.horizon)
for d in toy.family():
    for gamma in (0.0, 1.0):
        g = same.expected_gradient(d, "opd+", gamma)
        assert g.abs().max() < 1e-12, (d.name, gamma)  # p = q is a fixed point at both ends
ratio = mc["opd+ γ=1"]["exact_var"] / mc["opd+ γ=0"]["exact_var"]
print(f"p = q: zero expected gradient for every divergence, γ = 0 and γ = 1.\n"
      f"JSD, OPD+: total variance γ = 1 / γ = 0 = {ratio:.0f}x (horizon {tt.horizon} tokens)")
assert ratio > 10

# %% [markdown]
# ## What to try next
#
# - Make the toy longer (`toy.TabularToy.random(vocab=3, horizon=5)`, 243 sequences) and
#   redo the γ slider: how does the total variance at `γ = 1` grow with the horizon?
# - Replace JSD by forward KL in section 2 and in the slider: where is OPD's bias largest?
# - Add `("opd+", 0.5)` to section 2: is an intermediate `γ` a good compromise in
#   mean squared error, `bias² + total variance`?
# - Notebook 04 trains a real (tiny) LM; see the [cheat sheet](../docs/cheatsheet.md) for the
#   collapse signals of each divergence.
#
# ## Quiz
#
# **Q1.** The ascent advantage of OPD+ with `γ = 1` is `A_t = w_f(u_t) − Σ_{t'>t} f(u_{t'})`.
# Why a *minus* in front of the future sum?
#
# ### BEGIN SOLUTION
# `J_f` is minimised and `A_t` is maximised: a token that leads into states with a large
# divergence still to come must be pushed *down*, so the future divergence enters the
# ascent advantage with a minus sign (`E[Σ ∇log p · A] = −∇J_f`).
# ### END SOLUTION
#
# **Q2.** OPD+ with `γ = 0` had far smaller total variance than with `γ = 1`. Does that make
# it the better estimator?
#
# ### BEGIN SOLUTION
# Not by itself: it is biased (the exact gradient of the frozen-state objective, not of
# `J_f`), and low variance says nothing about the mean. It is a good choice because its bias
# does not move the fixed point `p = q` and its variance is small, not because it is exact.
# And OPD with `γ = 0` is both biased and noisier than OPD+ with `γ = 1`.
# ### END SOLUTION
#
# **Q3.** Leave-one-out subtracts the other samples' mean advantage at the same position.
# Those samples sit in other states. Why is it still unbiased?
#
# ### BEGIN SOLUTION
# Because the other samples are independent of sample `i`: the baseline does not depend on
# `y_i`, so `E[∇log p(y_i,t|s_i,t) · b] = E[b] · E[∇log p] = 0`. It is not a function of
# `s_t` at all; independence, not conditioning on the state, is what removes the bias.
# ### END SOLUTION
