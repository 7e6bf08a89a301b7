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
# # 02 · The stop-gradient bias, and the OPD+ fix
#
# With sampled tokens, on-policy distillation uses a policy-gradient surrogate with a
# detached per-token advantage `A(u)`, `u = q/p` the teacher-over-student ratio of the
# sampled token. The common recipe (**OPD**) treats the divergence as a reward and uses
# `A = −f(u)`. But `f(u)` depends on the student through `u`, and stopping its gradient
# drops a term:
#
# $$\nabla_\theta D_f = \mathbb{E}_{a\sim p}\big[(f(u) - u f'(u))\,\nabla\log p(a)\big],$$
#
# so the right ascent advantage is **OPD+**'s `w_f(u) = −f(u) + u f'(u)`. The dropped
# term vanishes only when `u f'(u)` is constant, which is reverse KL.
#
# Everything here happens at **one state** (a categorical over 8 tokens), where the
# expectation over sampled tokens can be computed exactly. We check:
#
# 1. OPD+ equals the exact gradient for every divergence; OPD only for reverse KL;
# 2. the generator-shift argument: two generators of the *same* divergence give the same
#    OPD+ update but different OPD updates;
# 3. the consequence: expected-gradient dynamics under OPD collapse to one token for
#    forward KL, JSD and Hellinger, while OPD+ converges to the teacher;
# 4. an exercise: derive `w_f` for squared Hellinger yourself.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import opdplus
from opdplus import divergences, plotting, toy, widgets

# %% tags=["parameters"]
PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")

# %%
assert PROFILE in ("smoke", "full"), f"PROFILE must be 'smoke' or 'full', got {PROFILE!r}"
DYN_STEPS = {"smoke": 600, "full": 3000}[PROFILE]  # expected-gradient steps in section 3
RECORD_EVERY = {"smoke": 5, "full": 10}[PROFILE]
print(f"opdplus {opdplus.__version__}, profile {PROFILE}")

# %% [markdown]
# ## 1. OPD vs OPD+ vs the exact gradient, for every divergence
#
# `toy.one_state_true_gradient` differentiates `D_f` with autograd (the oracle).
# `toy.one_state_expected_gradient` computes the *expectation* of the library's
# sampled-token loss gradient exactly, by weighting each of the 8 tokens by its
# probability. Both are gradients of a descent objective with respect to the student's
# logits, in float64.

# %%
gen = torch.Generator().manual_seed(0)
teacher_z = 2.0 * torch.randn(8, generator=gen, dtype=torch.float64)
student_z = 1.0 * torch.randn(8, generator=gen, dtype=torch.float64)

agreement = {}
for d in toy.family():
    exact = toy.one_state_true_gradient(student_z, teacher_z, d)
    agreement[d.name] = {
        est: toy.gradient_agreement(
            toy.one_state_expected_gradient(student_z, teacher_z, d, est), exact)
        for est in ("opd", "opd+")
    }

print(f"{'divergence':16s} {'OPD rel.err':>12s} {'OPD cos':>8s} {'OPD+ rel.err':>13s}")
for name, a in agreement.items():
    print(f"{name:16s} {a['opd']['rel_error']:12.3g} {a['opd']['cosine']:8.3f} "
          f"{a['opd+']['rel_error']:13.1e}")

# %% [markdown]
# - OPD+ matches the exact gradient to rounding error for **every** divergence.
# - OPD matches only for **reverse KL**. For every other member its expected update is
#   a different vector (relative errors of order one).
# - For **forward KL** the OPD update even points *against* the true gradient
#   (negative cosine): it pushes up tokens the student already over-weights.

# %%
for name, a in agreement.items():
    assert a["opd+"]["rel_error"] < 1e-9, (name, a)  # OPD+ is exact for every f
    if name == "reverse_kl":
        assert a["opd"]["rel_error"] < 1e-9, a  # ... and so is OPD, for reverse KL only
    else:
        assert a["opd"]["rel_error"] > 0.1, (name, a)
assert agreement["forward_kl"]["opd"]["cosine"] < -0.5, agreement["forward_kl"]
plotting.fig_gradient_agreement(agreement, title="Expected update vs exact gradient at one state")

# %% [markdown]
# ### Where `w_f` comes from, in one line
#
# For a softmax student, `∇_z log p(a) = e_a − p`. So the expected descent direction of
# an advantage `A` is `−Σ_a p_a A(u_a) (e_a − p) = −p ⊙ (A − Σ_a p_a A(u_a))`. The next
# cell computes it by hand with both advantages and checks it against the library's
# expectations and the autograd oracle. The OPD+ weights reproduce the exact gradient;
# the OPD weights miss `E_p[u f'(u) ∇log p]`, the term the stop-gradient drops.

# %%
p = torch.softmax(student_z, -1)
log_u = torch.log_softmax(teacher_z, -1) - torch.log_softmax(student_z, -1)


def expected_descent(adv: torch.Tensor) -> torch.Tensor:
    """-E_{a~p}[A(u_a) grad_z log p(a)] for a softmax student, in closed form."""
    return -p * (adv - (p * adv).sum())


for name in ("forward_kl", "jsd", "hellinger"):
    d = divergences.get(name, **toy.default_params().get(name, {}))
    exact = toy.one_state_true_gradient(student_z, teacher_z, d)
    for est in ("opd", "opd+"):
        by_hand = expected_descent(d.advantage(log_u, est))
        library = toy.one_state_expected_gradient(student_z, teacher_z, d, est)
        assert torch.allclose(by_hand, library, atol=1e-12)
    assert torch.allclose(expected_descent(d.advantage(log_u, "opd+")), exact, atol=1e-12)
    # the dropped term: E_p[u f'(u) grad log p], with u f'(u) = w_f(u) + f(u)
    u_fprime = d.advantage(log_u, "opd+") - d.advantage(log_u, "opd")
    dropped = expected_descent(d.advantage(log_u, "opd")) - exact
    assert torch.allclose(dropped, -expected_descent(u_fprime), atol=1e-12)
    print(f"{name:10s} |dropped term| = {float(dropped.norm()):.3f}, "
          f"|exact gradient| = {float(exact.norm()):.3f}")

# %% [markdown]
# The two advantage designs side by side. For reverse KL the OPD curve `−f = log u` and
# the OPD+ curve `w_f = log u − 1` differ by a constant, a baseline that changes no
# expected update. For the other members the curves differ in *shape*.

# %%
plotting.fig_advantages(["reverse_kl", "forward_kl", "jsd", "hellinger"])

# %% [markdown]
# ## 2. The generator-shift argument
#
# `f` is only defined up to `f(u) + c(u − 1)`: the extra term adds `c Σ_a (q_a − p_a) = 0`
# to the divergence. An estimator of the divergence's gradient should not care which
# generator you wrote. OPD+'s advantage shifts by the constant `c` (a baseline, no change
# in expectation). OPD's shifts by `−c(u − 1)`, which changes the expected update.
#
# Even reverse KL loses its OPD unbiasedness if it is written as `−log u + (u − 1)` (the
# α → 0 limit of the α-divergence).

# %%
for name in ("reverse_kl", "forward_kl", "jsd"):
    d = divergences.get(name, **toy.default_params().get(name, {}))
    for c in (1.0, -2.0):
        d_shift = divergences.shifted(d, c)
        same_value = torch.allclose(d.full_vocab(student_z, teacher_z),
                                    d_shift.full_vocab(student_z, teacher_z), atol=1e-12)
        plus = [toy.one_state_expected_gradient(student_z, teacher_z, x, "opd+")
                for x in (d, d_shift)]
        opd = [toy.one_state_expected_gradient(student_z, teacher_z, x, "opd")
               for x in (d, d_shift)]
        opd_change = float((opd[0] - opd[1]).norm() / opd[0].norm())
        assert same_value, (name, c)  # same divergence ...
        assert torch.allclose(plus[0], plus[1], atol=1e-12), (name, c)  # ... same OPD+ update
        assert opd_change > 0.05, (name, c, opd_change)  # ... but a different OPD update
        print(f"{name:10s} c={c:+.0f}: D_f unchanged, OPD+ update unchanged, "
              f"OPD update changed by {opd_change:.0%}")

# reverse KL written with the shifted generator is no longer unbiased under OPD:
rk_shift = divergences.shifted(divergences.get("reverse_kl"), 1.0)
a = toy.gradient_agreement(toy.one_state_expected_gradient(student_z, teacher_z, rk_shift, "opd"),
                           toy.one_state_true_gradient(student_z, teacher_z, rk_shift))
assert a["rel_error"] > 0.1, a
print(f"OPD on −log u + (u − 1): relative error {a['rel_error']:.2f} (vs ~1e-16 for −log u)")

# %% [markdown]
# ## 3. What the bias does: dynamics at one state
#
# Near `p = q` the expected OPD logit drift is about `−f′(1)(q − p)`, while the true
# descent drift is `+f″(1)(q − p)`. For forward KL, `f′(1) = 1`: under OPD the teacher
# is a **repelling** point. For JSD and Hellinger, `f′(1) = 0`: OPD has no first-order
# restoring force at all. First, the drift right next to the teacher:

# %%
noise = torch.randn(8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
near_z = teacher_z + 0.01 * noise  # a student within 1% of the teacher (in logits)
near = {}
for name in ("reverse_kl", "forward_kl", "jsd", "hellinger"):
    exact = toy.one_state_true_gradient(near_z, teacher_z, name)
    opd = toy.one_state_expected_gradient(near_z, teacher_z, name, "opd")
    near[name] = {**toy.gradient_agreement(opd, exact),
                  "norm_ratio": float(opd.norm() / exact.norm())}
    print(f"{name:10s} OPD vs exact near the teacher: cosine {near[name]['cosine']:+.3f}, "
          f"|OPD| / |exact| = {near[name]['norm_ratio']:.4f}")
assert near["forward_kl"]["cosine"] < -0.99  # pushed away from the teacher
assert near["jsd"]["norm_ratio"] < 0.05 and near["hellinger"]["norm_ratio"] < 0.05  # no pull back
assert near["reverse_kl"]["cosine"] > 0.999

# %% [markdown]
# Now run expected-gradient descent on the student's logits from a uniform start
# (`toy.one_state_dynamics`, learning rate 1), with each estimator's *exact* expected
# update, so no sampling noise is involved. We track the total variation to the teacher
# and the student's largest probability.

# %%
runs = {}
for name in ("forward_kl", "jsd", "hellinger", "reverse_kl"):
    for est in ("opd", "opd+"):
        runs[(name, est)] = toy.one_state_dynamics(teacher_z, name, est, steps=DYN_STEPS, lr=1.0,
                                                   record_every=RECORD_EVERY)

for (name, est), r in runs.items():
    print(f"{name:10s} {est:4s} final TV to teacher {float(r['tv'][-1]):.4f}, "
          f"largest probability {float(r['max_prob'][-1]):.4f}")

teacher_p = torch.softmax(teacher_z, -1)
for name in ("forward_kl", "jsd", "hellinger"):
    assert runs[(name, "opd")]["max_prob"][-1] > 0.99, name  # OPD collapses to one token
    assert runs[(name, "opd")]["tv"][-1] > 0.5, name  # ... far from the teacher
for name in ("forward_kl", "jsd", "hellinger", "reverse_kl"):
    assert runs[(name, "opd+")]["tv"][-1] < 0.02, name  # OPD+ converges to the teacher
assert runs[("reverse_kl", "opd")]["tv"][-1] < 0.02  # reverse KL is fine either way
plotting.fig_dynamics(runs, record_every=RECORD_EVERY)

# %% [markdown]
# Drag the slider to watch the distributions evolve: the OPD students (forward KL, JSD,
# Hellinger) pile onto one token while their OPD+ counterparts settle on the teacher.

# %%
widgets.dynamics_explorer(
    {k: v for k, v in runs.items() if k[0] in ("forward_kl", "jsd")}, teacher_p,
    record_every=RECORD_EVERY,
)

# %% [markdown]
# ## 4. Exercise: `w_f` for squared Hellinger
#
# Squared Hellinger has `f(u) = (√u − 1)²`. Derive `w_f(u) = −f(u) + u f′(u)` and write
# it below as a function of the tensor `u`.
#
# **The cell ships with a working answer so the notebook runs end to end.** To do the
# exercise, delete the body of `my_w_hellinger`, write your own, and run the check cell
# after it: it compares your function with the library's `advantage(log_u, "opd+")`
# using `allclose`.

# %%
# --- EXERCISE: replace the body with your own derivation ---
def my_w_hellinger(u: torch.Tensor) -> torch.Tensor:
    """w_f(u) = -f(u) + u f'(u) for f(u) = (sqrt(u) - 1)**2."""
    return torch.sqrt(u) - 1.0  # answer: -(u - 2 sqrt(u) + 1) + u (1 - 1/sqrt(u))


# %%
# --- CHECK: your answer against the library ---
log_u_grid = torch.linspace(-6.0, 6.0, 101, dtype=torch.float64)
library_w = divergences.get("hellinger").advantage(log_u_grid, "opd+")
assert torch.allclose(my_w_hellinger(log_u_grid.exp()), library_w, rtol=1e-9, atol=1e-12), \
    "not yet: compare your w_f with -f(u) + u f'(u) at a few values of u"
print("correct: your w_f matches the library's OPD+ advantage for squared Hellinger")

# %% [markdown]
# **Next:** notebook 03 moves from one state to whole sequences, where a *second*,
# separate bias appears: the future term that `γ = 0` drops.
