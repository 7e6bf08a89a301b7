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
# **Learning goals.** After this notebook you can
#
# - derive the gradient of `D_f` under sampling with the product rule, and say which
#   term the common stop-gradient recipe (OPD) drops;
# - compute the corrected advantage `w_f(u) = −f(u) + u f′(u)` (OPD+) for any generator;
# - predict from `f′(1)` whether OPD pulls a student towards the teacher or lets it
#   collapse onto one token.
#
# **Prerequisites.** Notebook 01 (f-divergences, generators, the shift `c(u − 1)`); the
# score-function (REINFORCE) gradient `∇E_p[g] = E_p[g ∇log p]` for a `g` that does not
# depend on the parameters; softmax. The [cheat sheet](../docs/cheatsheet.md) lists `f`,
# `f′(1)` and `w_f` of every divergence; the [glossary](../docs/glossary.md) defines
# *advantage*, *score function* and *stop-gradient*.
#
# Runtime: printed by the first code cell.
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
# 4. all eleven divergences side by side, in one figure with a dropdown;
# 5. four exercises: derive `w_f` for three divergences yourself, and predict which
#    divergences OPD fails on.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import opdplus
from opdplus import divergences, plotting, toy
from opdplus.classroom import runtime_note
from opdplus.exercises import check

runtime_note("02_stop_gradient_bias")

# %% tags=["parameters"]
PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")

# %%
assert PROFILE in ("smoke", "full"), f"PROFILE must be 'smoke' or 'full', got {PROFILE!r}"
DYN_STEPS = {"smoke": 600, "full": 3000}[PROFILE]  # expected-gradient steps in section 3
RECORD_EVERY = {"smoke": 5, "full": 10}[PROFILE]
EXPLORER_STEPS = {"smoke": 600, "full": 3000}[PROFILE]  # per divergence and estimator, sec. 4
print(f"opdplus {opdplus.__version__}, profile {PROFILE}")

# %% [markdown]
# ## 1. OPD vs OPD+ vs the exact gradient, for every divergence
#
# `toy.one_state_true_gradient` differentiates `D_f` with autograd (the oracle).
# `toy.one_state_expected_gradient` computes the *expectation* of the library's
# sampled-token loss gradient exactly, by weighting each of the 8 tokens by its
# probability. Both are gradients of the quantity we minimise (`D_f`, and the estimator's
# loss) with respect to the student's logits, in float64: a training step moves the
# logits *against* them.

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
# ### Where `w_f` comes from, in three lines
#
# At one state, `D_f(θ) = Σ_a p_θ(a) f(u(a))` with `u(a) = q(a)/p_θ(a)`. Two facts do all
# the work: `∇p = p ∇log p`, and, since the teacher `q` does not depend on `θ`,
# `∇u = −(q/p²) ∇p = −u ∇log p`. Then
#
# $$
# \begin{aligned}
# \nabla_\theta D_f &= \sum_a \Big[\nabla p(a)\, f(u) + p(a)\, f'(u)\, \nabla u\Big]
#   && \text{(product rule)}\\
# &= \sum_a p(a)\Big[f(u)\, \nabla\log p(a) - u f'(u)\, \nabla\log p(a)\Big]
#   && (\nabla p = p\,\nabla\log p,\ \nabla u = -u\,\nabla\log p)\\
# &= \mathbb{E}_{a\sim p}\Big[\big(f(u) - u f'(u)\big)\,\nabla\log p(a)\Big]
#   = -\,\mathbb{E}_{a\sim p}\big[w_f(u)\,\nabla\log p(a)\big].
# \end{aligned}
# $$
#
# A policy-gradient loss `−A ∇log p` with the detached advantage `A = w_f(u)` therefore
# has the exact gradient as its expectation. OPD keeps only the first term of the
# product rule (the score-function term, `A = −f(u)`) and drops
# `E_p[−u f′(u) ∇log p]`, which is zero only when `u f′(u)` is a constant (reverse KL:
# `u f′(u) = −1`, and `E_p[∇log p] = 0`).
#
# **The check.** For a softmax student, `∇_z log p(a) = e_a − p`, so the expected gradient
# of the loss with advantage `A` is `−Σ_a p_a A(u_a) (e_a − p) = −p ⊙ (A − Σ_a p_a A(u_a))`.
# The next cell computes it by hand with both advantages and checks it against the
# library's expectations and the autograd oracle: the OPD+ weights reproduce the exact
# gradient, the OPD weights miss exactly the dropped term. Being a gradient, it is the
# direction in which `D_f` *grows*: a small step against it lowers the divergence.

# %%
p = torch.softmax(student_z, -1)
log_u = torch.log_softmax(teacher_z, -1) - torch.log_softmax(student_z, -1)


def expected_loss_gradient(adv: torch.Tensor) -> torch.Tensor:
    """E_{a~p}[-A(u_a) grad_z log p(a)] for a softmax student, in closed form."""
    return -p * (adv - (p * adv).sum())


for name in ("forward_kl", "jsd", "hellinger"):
    d = divergences.get(name, **toy.default_params().get(name, {}))
    exact = toy.one_state_true_gradient(student_z, teacher_z, d)
    for est in ("opd", "opd+"):
        by_hand = expected_loss_gradient(d.advantage(log_u, est))
        library = toy.one_state_expected_gradient(student_z, teacher_z, d, est)
        assert torch.allclose(by_hand, library, atol=1e-12)
    assert torch.allclose(expected_loss_gradient(d.advantage(log_u, "opd+")), exact, atol=1e-12)
    # the dropped term: E_p[u f'(u) grad log p], with u f'(u) = w_f(u) + f(u)
    u_fprime = d.advantage(log_u, "opd+") - d.advantage(log_u, "opd")
    dropped = expected_loss_gradient(d.advantage(log_u, "opd")) - exact
    assert torch.allclose(dropped, -expected_loss_gradient(u_fprime), atol=1e-12)
    # a gradient, not a descent direction: D_f falls along -exact and rises along +exact
    value = lambda z: float(d.full_vocab(z, teacher_z))  # noqa: E731
    assert value(student_z - 1e-3 * exact) < value(student_z) < value(student_z + 1e-3 * exact)
    print(f"{name:10s} |dropped term| = {float(dropped.norm()):.3f}, "
          f"|exact gradient| = {float(exact.norm()):.3f}")

# %% [markdown]
# The two advantage designs side by side. For reverse KL the OPD curve `−f = log u` and
# the OPD+ curve `w_f = log u − 1` differ by a constant, a baseline that changes no
# expected update. For the other members the curves differ in *shape*. (Section 4 has
# every divergence, one at a time.)

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
# Drag the slider to watch the distributions evolve: the OPD students (forward KL, JSD)
# pile onto one token while their OPD+ counterparts settle on the teacher (grey bars).
# The slider is plotly's own, so it also works in the static pages.

# %%
plotting.fig_dynamics_steps(
    {k: v for k, v in runs.items() if k[0] in ("forward_kl", "jsd")}, teacher_p,
    record_every=RECORD_EVERY,
)

# %% [markdown]
# ## 4. Every divergence, one at a time
#
# The same one-state runs for all eleven divergences of the library, both estimators. They
# use `one_state_dynamics(..., closed_form=True)`, the closed form
# `−p ⊙ (A − E_p[A])` checked in section 1, because it is about a hundred times faster than
# going through the training loss; the first assert confirms both give the same runs.
# Pick a divergence in the dropdown: the figure shows its generator, the two advantage
# designs, and where the two runs go. The title quotes `f′(1) = w_f(1)`: near the teacher
# OPD's expected drift is about `−f′(1)(q − p)`, so only `f′(1) < 0` pulls the student
# back (the reverse KLs); `f′(1) > 0` pushes it away and `f′(1) = 0` leaves it no
# restoring force.

# %%
everything = {}
for d in toy.family():
    for est in ("opd", "opd+"):
        everything[(d.name, est)] = toy.one_state_dynamics(
            teacher_z, d, est, steps=EXPLORER_STEPS, lr=1.0, record_every=RECORD_EVERY,
            closed_form=True)
for key in [("forward_kl", "opd"), ("jsd", "opd+")]:  # the same runs as section 3
    assert torch.allclose(everything[key]["probs"][:len(runs[key]["probs"])],
                          runs[key]["probs"], atol=1e-10), key
final_tv = {key: float(r["tv"][-1]) for key, r in everything.items()}
assert all(final_tv[(d.name, "opd+")] < 0.02 for d in toy.family())  # OPD+ always converges
assert {n for (n, est), tv in final_tv.items() if est == "opd" and tv < 0.02} == \
    {"reverse_kl", "skew_reverse_kl"}  # OPD only for the two with f'(1) < 0
explorer = plotting.fig_divergence_explorer(everything, toy.family(), record_every=RECORD_EVERY)
assert len(explorer.layout.updatemenus[0].buttons) == len(divergences.names()) == 11
print(f"{len(explorer.layout.updatemenus[0].buttons)} divergences in the dropdown")
explorer

# %% [markdown]
# ## 5. Exercises
#
# Each exercise is an answer cell (replace the body of the function) followed by a check
# cell that compares your answer with the library in float64.
#
# ### Exercise 02.1: `w_f` for squared Hellinger
#
# Squared Hellinger has `f(u) = (√u − 1)²`. Derive `w_f(u) = −f(u) + u f′(u)` and write
# it as a function of the tensor `u`.

# %%
def my_w_hellinger(u: torch.Tensor) -> torch.Tensor:
    """w_f(u) = -f(u) + u f'(u) for f(u) = (sqrt(u) - 1)**2."""
    ### BEGIN SOLUTION
    return torch.sqrt(u) - 1.0  # -(u - 2 sqrt(u) + 1) + u (1 - 1/sqrt(u))
    ### END SOLUTION


# %%
log_u_grid = torch.linspace(-6.0, 6.0, 101, dtype=torch.float64)


def matches_library(mine: torch.Tensor, d) -> None:
    """Assert that an advantage on log_u_grid equals the library's OPD+ advantage of d."""
    library = d.advantage(log_u_grid, "opd+")
    worst = int((mine - library).abs().argmax())
    assert torch.allclose(mine, library, rtol=1e-9, atol=1e-12), (
        f"at u = {float(log_u_grid[worst].exp()):.4g} yours is {float(mine[worst]):.6g}, "
        f"w_f is {float(library[worst]):.6g}")


check("02.1", lambda: matches_library(my_w_hellinger(log_u_grid.exp()),
                                      divergences.get("hellinger")),
      hint="f'(u) = 1 - 1/sqrt(u), so u f'(u) = u - sqrt(u); subtract f(u) = u - 2 sqrt(u) + 1.")

# %% [markdown]
# ### Exercise 02.2: `w_f` for Pearson χ²
#
# Pearson χ² (teacher‖student) has `f(u) = (u − 1)²`. Derive its OPD+ advantage. Compare
# it with OPD's `−f(u)`: at which `u` does each design say "push this token up"?

# %%
def my_w_pearson(u: torch.Tensor) -> torch.Tensor:
    """w_f(u) = -f(u) + u f'(u) for f(u) = (u - 1)**2."""
    ### BEGIN SOLUTION
    return u**2 - 1.0  # -(u - 1)^2 + 2 u (u - 1)
    ### END SOLUTION


# %%
check("02.2", lambda: matches_library(my_w_pearson(log_u_grid.exp()),
                                      divergences.get("pearson_chi2")),
      hint="f'(u) = 2(u - 1); expand -(u - 1)^2 + 2u(u - 1) and simplify.")

# %% [markdown]
# ### Exercise 02.3: `w_f` for the generalised JSD_β
#
# The generalised Jensen–Shannon divergence with mixture `m = βu + 1 − β` has
# `f(u) = β u log(u/m) − (1 − β) log m`. Derive `w_f(u)` as a function of `u` and `β`.
# (It simplifies a lot: collect the terms in `log m` and use `u ∂m/∂u = βu = m − (1 − β)`.)
# The check tries β = 0.1, 0.5 and 0.9 against the library's (unnormalised) `jsd`.

# %%
def my_w_jsd(u: torch.Tensor, beta: float) -> torch.Tensor:
    """w_f(u) for f(u) = beta u log(u/m) - (1 - beta) log m, m = beta u + 1 - beta."""
    ### BEGIN SOLUTION
    return (1.0 - beta) * torch.log(1.0 - beta + beta * u)
    ### END SOLUTION


# %%
def test_02_3():
    for beta in (0.1, 0.5, 0.9):
        matches_library(my_w_jsd(log_u_grid.exp(), beta), divergences.get("jsd", beta=beta))


check("02.3", test_02_3,
      hint="f'(u) = beta log(u/m) + beta - beta^2 u/m - (1 - beta) beta/m; in u f'(u) - f(u) "
           "the beta u log(u/m) terms cancel, and beta u = m - (1 - beta).")

# %% [markdown]
# ### Exercise 02.4: predict where OPD fails
#
# Without looking at the dropdown's titles: using `f′(1)` (exercise 01.1 and the
# [cheat sheet](../docs/cheatsheet.md)), name every divergence of the library
# (`divergences.names()`, parameters as in `toy.default_params()`) for which OPD does
# **not** bring the student of section 4 to the teacher. The check compares your set
# with the runs of section 4 (final total variation to the teacher above 0.02).

# %%
def my_opd_failures() -> set:
    """Registry names of the divergences whose OPD runs miss the teacher."""
    ### BEGIN SOLUTION
    return {"forward_kl", "jsd", "tv", "hellinger", "pearson_chi2", "neyman_chi2", "alpha",
            "skew_kl", "jeffreys"}
    ### END SOLUTION


# %%
def test_02_4():
    mine = set(my_opd_failures())
    unknown = mine - set(divergences.names())
    assert not unknown, f"{sorted(unknown)} are not registry names (see divergences.names())"
    failed = {n for (n, est), tv in final_tv.items() if est == "opd" and tv > 0.02}
    assert mine == failed, (f"{len(mine - failed)} of your names converge under OPD and "
                            f"{len(failed - mine)} failures are missing")


check("02.4", test_02_4,
      hint="OPD's drift near the teacher is about -f'(1)(q - p): only f'(1) < 0 pulls the "
           "student back. f'(1) = 0 (and total variation's kink) gives no pull at all.")

# %% [markdown]
# ## What to try next
#
# - Start the dynamics of section 3 from a random student instead of the uniform one
#   (`student_logits_V=`): does every OPD collapse land on the same token?
# - Shift a generator by `c(u − 1)` (`divergences.shifted`) and rerun section 4 for it:
#   which `c` makes OPD with forward KL converge, and why does OPD+ not care?
# - Lower the learning rate of the dynamics: does OPD still collapse, only later?
# - Read the skew KL row of the [cheat sheet](../docs/cheatsheet.md): its OPD+ advantage
#   is bounded. Why might a bounded advantage matter once tokens are sampled?
#
# ## Quiz
#
# **Q1.** Which term of the product rule does the stop-gradient recipe drop, and for which
# divergence is it zero?
#
# ### BEGIN SOLUTION
# The term from differentiating `f(u)` through `u`: `E_p[−u f′(u) ∇log p]`. It vanishes
# when `u f′(u)` is constant, i.e. for reverse KL (`u f′(u) = −1`), because
# `E_p[∇log p] = 0`.
# ### END SOLUTION
#
# **Q2.** Two generators `f` and `f + c(u − 1)` describe the same divergence. How does
# each advantage design change between them?
#
# ### BEGIN SOLUTION
# OPD+'s `w_f` shifts by the constant `c`, a baseline that leaves the expected update
# unchanged. OPD's `−f` shifts by `−c(u − 1)`, which depends on the token and changes the
# expected update: OPD gives two different answers for one divergence.
# ### END SOLUTION
#
# **Q3.** With forward KL, OPD's advantage is `−u log u`. Why is the teacher a repelling
# point under OPD?
#
# ### BEGIN SOLUTION
# Near `p = q` OPD's expected logit drift is about `−f′(1)(q − p)`, and forward KL has
# `f′(1) = +1`: the drift points away from the teacher, so any small difference grows
# until the student sits on one token. The correct drift, OPD+'s, is `+f″(1)(q − p)`.
# ### END SOLUTION

# %% [markdown]
# **Next:** notebook 03 moves from one state to whole sequences, where a *second*,
# separate bias appears: the future term that `γ = 0` drops.
