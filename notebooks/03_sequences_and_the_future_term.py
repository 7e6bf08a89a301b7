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
# Notebook 02 fixed the advantage at one state. A language model generates sequences,
# and the objective sums the divergence over the states the student *visits*:
#
# $$J_f(\theta) = \mathbb{E}_{y\sim p_\theta}\Big[\sum_t f(u_t)\Big].$$
#
# Those states depend on θ, so the exact gradient has a second term, the
# divergence-to-go:
#
# $$\nabla J_f = \mathbb{E}\Big[\sum_t \nabla\log p_\theta(y_t\mid s_t)\,\Big(w_f(u_t) - \sum_{t'>t}\gamma^{t'-t} f(u_{t'})\Big)\Big]\quad\text{with } \gamma = 1.$$
#
# The common recipe uses `γ = 0` (drop the future). Here we use a **tabular
# autoregressive toy** (3 tokens, 3 steps: 27 sequences) small enough to enumerate, so
# every expectation is exact, and ask:
#
# 1. what `γ` changes: `γ = 1` is unbiased for every f, `γ = 0` is biased for every f,
#    reverse KL included (it is the exact gradient of a *different* objective);
# 2. what Monte Carlo estimates look like around those exact values;
# 3. how baselines (leave-one-out, analytic) cut the variance without adding bias.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import opdplus
from opdplus import divergences, estimators, plotting, toy

# %% tags=["parameters"]
PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")

# %%
assert PROFILE in ("smoke", "full"), f"PROFILE must be 'smoke' or 'full', got {PROFILE!r}"
MC_BATCHES = {"smoke": 120, "full": 2000}[PROFILE]  # independent Monte Carlo batches
BATCH_SIZE = 16  # sequences per batch
print(f"opdplus {opdplus.__version__}, profile {PROFILE}")

# %% [markdown]
# ## 1. The toy, and the exact gradients
#
# Student and teacher are tables of next-token logits, one row per prefix (13 rows: the
# empty prefix, 3 of length 1, 9 of length 2). `toy.true_gradient` differentiates the
# enumerated `J_f` with autograd; `toy.expected_gradient(div, est, gamma)` is the exact
# expectation of the library's `pg_loss` gradient.

# %%
tt = toy.TabularToy.random(vocab=3, horizon=3, seed=0)
print(f"{tt.num_prefixes} prefixes x {tt.vocab} tokens, {len(tt.sequences)} sequences")

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
# score with `pg_loss`, differentiate), with an optional analytic baseline that section 3
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


check = mc_gradients("jsd", "opd+", 1.0, batches=5, batch_size=BATCH_SIZE, seed=7)
library = tt.sampled_gradients("jsd", "opd+", 1.0, batches=5, batch_size=BATCH_SIZE,
                               generator=torch.Generator().manual_seed(7))
assert torch.equal(check, library)

# %% [markdown]
# Each batch gives a gradient vector (13 × 3 numbers). To draw them we project every
# estimate onto the direction of the exact gradient `∇J_f`: an unbiased estimator's
# projections scatter around `‖∇J_f‖`. We use **JSD**: OPD+ with `γ = 1`, OPD+ with
# `γ = 0`, and OPD with `γ = 0` (the common recipe).

# %%
def summarise(grads, direction):
    """Projections on a unit direction, their mean and its standard error."""
    proj = grads.flatten(1) @ direction.flatten()
    return {"proj": proj, "mean": float(proj.mean()),
            "se": float(proj.std() / len(proj) ** 0.5), "total_var": float(grads.var(0).sum())}


jsd_exact = tt.true_gradient("jsd")
unit = jsd_exact / jsd_exact.norm()
mc = {}
for est, gamma in [("opd+", 1.0), ("opd+", 0.0), ("opd", 0.0)]:
    label = f"{est} γ={gamma:g}"
    mc[label] = summarise(mc_gradients("jsd", est, gamma, MC_BATCHES, BATCH_SIZE, seed=1), unit)
    mc[label]["expected"] = float((tt.expected_gradient("jsd", est, gamma) * unit).sum())
target = float(jsd_exact.norm())
print(f"exact ‖∇J_f‖ = {target:.4f}")
for label, s in mc.items():
    print(f"{label:10s} MC mean {s['mean']:+.4f} ± {s['se']:.4f} (SE), exact expectation "
          f"{s['expected']:+.4f}, bias {(s['mean'] - target) / s['se']:+.1f} SE")

# %% [markdown]
# Every Monte Carlo mean agrees with its estimator's exact expectation (so the sampling
# is right), but only OPD+ with `γ = 1` is centred on the true gradient. With `γ = 0`
# the estimates are much less noisy and confidently wrong: for JSD their projection
# on the true direction is near zero (OPD+) or negative (OPD). Low variance is no
# evidence of being right.

# %%
for label, s in mc.items():
    assert abs(s["mean"] - s["expected"]) < 4 * s["se"], (label, s["mean"], s["expected"])
assert abs(mc["opd+ γ=1"]["mean"] - target) < 4 * mc["opd+ γ=1"]["se"]  # unbiased
assert abs(mc["opd+ γ=0"]["mean"] - target) > 6 * mc["opd+ γ=0"]["se"]  # biased
assert mc["opd γ=0"]["mean"] < 0 < target  # the common recipe points the wrong way here
assert mc["opd+ γ=0"]["total_var"] < mc["opd+ γ=1"]["total_var"]  # ... with less noise
plotting.fig_mc_histograms(
    {label: s["proj"] for label, s in mc.items()}, target,
    title=f"JSD: {MC_BATCHES} batches of {BATCH_SIZE} sequences, projected on ∇J_f",
    x_title="projection of the batch gradient on ∇J_f / ‖∇J_f‖ (nats per logit)",
)

# %% [markdown]
# ## 3. Baselines: less variance, no bias
#
# A detached per-state baseline `b(s_t)` subtracted from `A_t` adds no bias, because
# `E_{a~p(·|s)}[∇log p(a|s)] = 0`. Two options in the library:
#
# - **leave-one-out** (`baseline="loo"`, `group_size=G`): subtract the mean advantage of
#   the other `G − 1` samples of the same prompt at the same position;
# - **analytic** (`baseline="analytic"`): `b(s) = E_{a~p}[w_f(u(a))]`, computed exactly
#   from the full vocabulary (`Divergence.expected_advantage`); for reverse KL it is
#   `−KL(student‖teacher)(s) − 1`.
#
# We use reverse KL with `γ = 1`. First, the analytic baseline's bias, exactly, by
# enumeration; then the variances by Monte Carlo.

# %%
rk = divergences.get("reverse_kl")
rk_exact = tt.true_gradient(rk)
table = rk.expected_advantage(tt.student_logits, tt.teacher_logits, "opd+")
# the documented closed form for reverse KL
assert torch.allclose(table, -rk.full_vocab(tt.student_logits, tt.teacher_logits) - 1, atol=1e-12)
with_baseline = tt.expected_gradient(rk, "opd+", 1.0, baseline="analytic", baseline_BT=table[ROWS])
assert toy.gradient_agreement(with_baseline, rk_exact)["rel_error"] < 1e-9  # no bias, exactly

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
# A caveat worth seeing for yourself (change `rk` to `divergences.get("forward_kl")` above):
# with `γ = 1` most of the variance comes from the divergence-to-go, which these per-state
# baselines do not model, and a small leave-one-out group (`G = 4`) can even *add*
# variance, since it subtracts a noisy mean of only three other samples.
#
# **Next:** notebooks 04–06 train real (tiny) language models with these estimators.
