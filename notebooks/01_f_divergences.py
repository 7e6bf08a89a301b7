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
# # 01 · The f-divergence family
#
# **Learning goals.** After this notebook you can
#
# - write an f-divergence as `Σ_a p(a) f(q(a)/p(a))` and tell forward from reverse KL by
#   which distribution the expectation runs under;
# - explain why a generator `f` is defined only up to `c(u − 1)`, and what that does to
#   the curves you plot;
# - predict whether a divergence fits a bimodal teacher by seeking one mode or by
#   covering both.
#
# **Prerequisites.** Probability distributions over a finite vocabulary, expectations,
# the natural logarithm, a derivative. No earlier notebook. Terms such as *generator*,
# *mode-seeking* and *mass-covering* are defined in the [glossary](../docs/glossary.md);
# the [cheat sheet](../docs/cheatsheet.md) lists every divergence used here on one page.
#
# Runtime: printed by the first code cell.
#
# On-policy distillation trains a student `p` to match a frozen teacher `q` by
# minimising an f-divergence at every state the student visits:
#
# $$D_f(s) = \sum_a p(a)\, f\!\left(\frac{q(a)}{p(a)}\right) = \mathbb{E}_{a\sim p}[f(u)],\qquad u = q/p,$$
#
# with a convex generator `f` and `f(1) = 0`. The choice of `f` decides *what kind* of
# student you get. This notebook
#
# 1. evaluates the whole family on a toy categorical pair and checks the basic facts
#    (zero at `p = q`, non-negative, the two KL directions, the limits that connect
#    the members);
# 2. fits a unimodal student to a bimodal teacher under each divergence and measures
#    the difference between **mode-seeking** (reverse KL) and **mass-covering**
#    (forward KL);
# 3. lets you move β, α and the teacher's shape with sliders;
# 4. ends with three exercises (checked against the library) and a short quiz.
#
# Every claim below is an `assert`, so running the notebook checks it.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math

import torch

import opdplus
from opdplus import divergences, plotting, toy, widgets
from opdplus.classroom import runtime_note
from opdplus.exercises import check

runtime_note("01_f_divergences")

# %% tags=["parameters"]
PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")

# %%
assert PROFILE in ("smoke", "full"), f"PROFILE must be 'smoke' or 'full', got {PROFILE!r}"
FIT_STEPS = {"smoke": 300, "full": 1500}[PROFILE]  # Adam steps per fit in section 2
WIDGET_FIT_STEPS = {"smoke": 150, "full": 400}[PROFILE]  # per slider move (kept snappy)
print(f"opdplus {opdplus.__version__}, profile {PROFILE}")

# %% [markdown]
# ## 1. The family on a toy categorical pair
#
# A teacher `q` and a student `p` over 6 tokens, drawn once from a fixed seed. The next
# cell *is* the definition, written out: `Σ_a p(a) f(q(a)/p(a))`. We check it against
# the library's `full_vocab`, which computes the same number in a numerically safe form
# (it takes logits; log-probabilities are valid logits).

# %%
gen = torch.Generator().manual_seed(0)
q = torch.softmax(1.5 * torch.randn(6, generator=gen, dtype=torch.float64), -1)  # teacher
p = torch.softmax(1.5 * torch.randn(6, generator=gen, dtype=torch.float64), -1)  # student

family = toy.family()  # one instance of every registered divergence
print(f"{'divergence':48s} {'D_f(p, q)':>10s} {'D_f at p=q':>11s} {'|f(1)|':>7s}")
values = {}
for d in family:
    by_hand = (p * d.f(q / p)).sum()  # the definition
    library = d.full_vocab(p.log(), q.log())
    at_teacher = d.full_vocab(q.log(), q.log())
    f_one = d.f(torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(by_hand, library, rtol=1e-9, atol=1e-12), d.name
    assert abs(float(f_one)) < 1e-12, (d.name, float(f_one))  # f(1) = 0
    assert abs(float(at_teacher)) < 1e-12, d.name  # D_f(q, q) = 0
    assert float(library) > 0, d.name  # non-negative, and > 0 when p != q
    values[d.name] = float(library)
    print(f"{plotting.divergence_label(d):48s} {float(library):10.4f} "
          f"{abs(float(at_teacher)):11.1e} {abs(float(f_one)):7.1e}")

# %% [markdown]
# **Which KL is which.** With `u = q/p`, `f(u) = u log u` gives
# `Σ p (q/p) log(q/p) = Σ q log(q/p)`: the **forward** KL, KL(teacher‖student). And
# `f(u) = −log u` gives `Σ p log(p/q)`: the **reverse** KL, KL(student‖teacher).
# The two are different numbers, and Jeffreys is their sum.

# %%
forward_kl_by_hand = (q * (q / p).log()).sum()  # KL(teacher || student)
reverse_kl_by_hand = (p * (p / q).log()).sum()  # KL(student || teacher)
assert math.isclose(values["forward_kl"], float(forward_kl_by_hand), rel_tol=1e-9)
assert math.isclose(values["reverse_kl"], float(reverse_kl_by_hand), rel_tol=1e-9)
assert abs(values["forward_kl"] - values["reverse_kl"]) > 0.1  # the direction matters
assert math.isclose(values["jeffreys"], values["forward_kl"] + values["reverse_kl"], rel_tol=1e-9)
print(f"KL(teacher‖student) = {values['forward_kl']:.4f} nats, "
      f"KL(student‖teacher) = {values['reverse_kl']:.4f} nats")

# %% [markdown]
# **The members are connected.** As a *divergence* (a number), the α-divergence runs from
# reverse KL (α → 0) to forward KL (α → 1) and equals twice the squared Hellinger
# distance at α = ½. (Its *generator* gets there only up to a term `c(u − 1)`: section 3
# shows the curves.) The
# generalized JSD_β, divided by β(1 − β), runs from forward KL (β → 0) to reverse KL
# (β → 1). Unnormalised, JSD_β tends to 0 at both ends, which is why the library
# refuses β = 0 or 1 instead of silently changing the objective.

# %%
def D(name, **params):
    """D_f(student p, teacher q) for a registry name, as a float (nats)."""
    return float(divergences.get(name, **params).full_vocab(p.log(), q.log()))


eps = 1e-4
assert math.isclose(D("alpha", alpha=eps), values["reverse_kl"], rel_tol=1e-3)
assert math.isclose(D("alpha", alpha=1 - eps), values["forward_kl"], rel_tol=1e-3)
assert math.isclose(D("alpha", alpha=0.5), 2 * values["hellinger"], rel_tol=1e-9)
assert math.isclose(D("jsd", beta=eps, normalized=True), values["forward_kl"], rel_tol=1e-3)
assert math.isclose(D("jsd", beta=1 - eps, normalized=True), values["reverse_kl"], rel_tol=1e-3)
assert D("jsd", beta=eps) < 1e-3 and D("jsd", beta=1 - eps) < 1e-3  # the trap at the ends
try:
    divergences.get("jsd", beta=0.0)
    raise AssertionError("beta = 0 should be refused")
except ValueError as err:
    print("refused as it should be:", str(err)[:70], "...")

# %% [markdown]
# The generators themselves, over `log u` (so `u = 1` sits at 0, where every curve
# touches zero). Reverse KL is linear in `log u`; forward KL and Pearson χ² grow
# exponentially for tokens the teacher likes far more than the student does.

# %%
plotting.fig_generators()

# %% [markdown]
# ### Exercise 01.1: the generators at `u = 1`
#
# Every generator has `f(1) = 0`. Its first two derivatives there decide how the
# divergence behaves near `p = q`: `f″(1) > 0` is the curvature that makes `p = q` a
# minimum, and (notebook 02) the sign of `f′(1)` decides whether the common
# stop-gradient recipe pulls the student towards the teacher or pushes it away.
#
# By hand, compute `f′(1)` and `f″(1)` for forward KL `u log u`, reverse KL `−log u`,
# squared Hellinger `(√u − 1)²` and Pearson χ² `(u − 1)²`, and return them as a dict
# `name -> (f′(1), f″(1))`. The check differentiates the library's generators with
# autograd, in float64.

# %%
def my_f_derivatives_at_one() -> dict:
    """{registry name: (f'(1), f''(1))} for four generators, derived by hand."""
    ### BEGIN SOLUTION
    return {
        "forward_kl": (1.0, 1.0),  # f' = log u + 1, f'' = 1/u
        "reverse_kl": (-1.0, 1.0),  # f' = -1/u, f'' = 1/u^2
        "hellinger": (0.0, 0.5),  # f' = 1 - u^(-1/2), f'' = u^(-3/2) / 2
        "pearson_chi2": (0.0, 2.0),  # f' = 2(u - 1), f'' = 2
    }
    ### END SOLUTION


# %%
def derivatives_at_one(name: str) -> tuple:
    """(f'(1), f''(1)) of the library's generator, by autograd in float64."""
    u = torch.ones((), dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(divergences.get(name).f(u), u, create_graph=True)
    (d2,) = torch.autograd.grad(d1, u)
    return float(d1), float(d2)


def test_01_1():
    mine = my_f_derivatives_at_one()
    wanted = ["forward_kl", "reverse_kl", "hellinger", "pearson_chi2"]
    assert sorted(mine) == sorted(wanted), f"return a dict with exactly the keys {wanted}"
    for name in wanted:
        (d1, d2), (m1, m2) = derivatives_at_one(name), mine[name]
        assert math.isclose(m1, d1, rel_tol=1e-12, abs_tol=1e-12), \
            f"{name}: your f'(1) = {m1} is not right"
        assert math.isclose(m2, d2, rel_tol=1e-12, abs_tol=1e-12), \
            f"{name}: your f''(1) = {m2} is not right"


check("01.1", test_01_1, hint="differentiate f twice, then put u = 1; for u log u: "
      "f' = log u + 1 and f'' = 1/u. For the square root write √u = u^(1/2).")

# %% [markdown]
# Whatever `f′(1)` is, `f″(1) > 0` for every smooth member of the family (convexity), so
# `p = q` is always the minimum of the divergence. Total variation `½|u − 1|` has no
# derivative at `u = 1`: its kink is why it is left out here.

# %%
for d in toy.family():
    if d.name != "tv":
        u = torch.ones((), dtype=torch.float64, requires_grad=True)
        (g1,) = torch.autograd.grad(d.f(u), u, create_graph=True)
        (g2,) = torch.autograd.grad(g1, u)
        assert float(g2) > 0, (d.name, float(g2))  # curvature at the minimum p = q
        print(f"{d.name:16s} f'(1) = {float(g1):+.3f}   f''(1) = {float(g2):.3f}")

# %% [markdown]
# ## 2. Mode-seeking vs mass-covering
#
# The teacher is bimodal on a grid of 40 bins over `[−5, 5]`: two discretised
# Gaussians (standard deviation 0.6) `separation` apart. The student can only be
# unimodal: a discretised Gaussian with a learnable mean `μ` and log-scale. We fit it by
# gradient descent on `full_vocab` under each divergence, from the same start (a narrow
# bump at `μ = 1.5`, a little right of centre).
#
# The fitting code below is the lesson (the library has no "fit a Gaussian" helper).

# %%
GRID = torch.linspace(-5.0, 5.0, 40, dtype=torch.float64)
MODE_SD = 0.6


def teacher_logits(separation: float, left_weight: float) -> torch.Tensor:
    """Log-probabilities of a two-mode mixture on GRID (modes at ±separation/2)."""
    centres = torch.tensor([-separation / 2, separation / 2], dtype=torch.float64)
    weights = torch.tensor([left_weight, 1.0 - left_weight], dtype=torch.float64)
    dens = (weights[:, None] * torch.exp(-(GRID - centres[:, None]) ** 2 / (2 * MODE_SD**2))).sum(0)
    return (dens / dens.sum()).log()


def student_logits(mu: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """A discretised Gaussian on GRID, as logits."""
    return -((GRID - mu) ** 2) / (2 * torch.exp(2 * log_scale))


def fit_unimodal(name: str, teacher_z: torch.Tensor, steps: int, lr: float = 0.05,
                 mu0: float = 1.5, scale0: float = 0.6) -> dict:
    """Fit the Gaussian student to the teacher: Adam on D_f (registry `name`) over μ, log-scale."""
    d = divergences.get(name, **toy.default_params().get(name, {}))
    mu = torch.tensor(mu0, dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(math.log(scale0), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([mu, log_scale], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = d.full_vocab(student_logits(mu, log_scale), teacher_z)
        loss.backward()
        opt.step()
    with torch.no_grad():
        probs = torch.softmax(student_logits(mu, log_scale), -1)
        mean = float((probs * GRID).sum())
        sd = float((probs * (GRID - mean) ** 2).sum().sqrt())  # of the discretised student
        return {"probs": probs, "mu": float(mu), "sd": sd, "D": float(loss),
                "mass_right": float(probs[GRID > 0].sum())}


zt = teacher_logits(separation=5.0, left_weight=0.5)
FIT_NAMES = ["reverse_kl", "forward_kl", "jsd", "hellinger", "jeffreys"]
fits = {name: fit_unimodal(name, zt, FIT_STEPS) for name in FIT_NAMES}
print(f"{'divergence':12s} {'μ':>7s} {'sd':>6s} {'mass x>0':>9s} {'D_f at end':>11s}")
for name, r in fits.items():
    print(f"{name:12s} {r['mu']:7.3f} {r['sd']:6.3f} {r['mass_right']:9.3f} {r['D']:11.4f}")

# %% [markdown]
# What the fits show (the asserts hold the measured numbers with margins):
#
# - **Reverse KL locks onto one mode.** `KL(student‖teacher)` is an expectation under
#   the *student*: it punishes student mass where the teacher has none (the valley
#   between the modes) and does not care about teacher mass the student ignores.
#   The student settles on the right-hand mode with that mode's own width.
# - **Forward KL spreads across both.** `KL(teacher‖student)` is an expectation under
#   the *teacher*: every teacher mode must be covered, so the student centres between
#   them and widens until it covers both, at the price of mass in the valley.
# - From this start, JSD and Hellinger behave like reverse KL (their curves lie on top
#   of the reverse-KL one in the figure below); Jeffreys, which contains forward KL, covers.

# %%
rev, fwd = fits["reverse_kl"], fits["forward_kl"]
assert rev["mass_right"] > 0.99, rev  # essentially all mass on one mode
assert abs(rev["sd"] - MODE_SD) < 0.1, rev  # ... with that mode's width
assert 0.4 < fwd["mass_right"] < 0.6, fwd  # mass split across both modes
assert fwd["sd"] > 2.0 and fwd["sd"] > 3 * rev["sd"], (fwd, rev)  # wide enough to cover both


# Each divergence prefers its own answer: evaluate both fitted students under both.
def D_at(name, probs):
    return float(divergences.get(name).full_vocab(probs.log(), zt))


assert D_at("reverse_kl", rev["probs"]) < D_at("reverse_kl", fwd["probs"])
assert D_at("forward_kl", fwd["probs"]) < D_at("forward_kl", rev["probs"])
print(f"reverse KL of the two students: {D_at('reverse_kl', rev['probs']):.3f} (mode) vs "
      f"{D_at('reverse_kl', fwd['probs']):.3f} (spread) nats")
print(f"forward KL of the two students: {D_at('forward_kl', rev['probs']):.3f} (mode) vs "
      f"{D_at('forward_kl', fwd['probs']):.3f} (spread) nats")

# %%
plotting.fig_categorical(
    zt.exp(), {name: r["probs"] for name, r in fits.items()},
    labels=GRID.tolist(), style="lines",
    title="Unimodal students fitted to a bimodal teacher", x_title="grid position x (bin centre)",
)

# %% [markdown]
# ## 3. Try it
#
# **α and β (works without a kernel).** The generators of the α-divergence and of the
# normalised JSD_β, `JSD_β / (β(1 − β))`, one slider each, next to the two KLs. The
# sliders are plotly's own: every position is computed in advance, so they also work in
# the static HTML pages.
#
# What to look for: the α curve does **not** move from the reverse-KL curve `−log u` to
# the forward-KL curve `u log u` (solid lines). It moves from `−log u + (u − 1)` at α → 0
# to `u log u − (u − 1)` at α → 1 (long dashes). Those are the same two *divergences*
# written with other generators: adding `c(u − 1)` to `f` adds
# `c Σ_a p(a)(q(a)/p(a) − 1) = c Σ_a (q(a) − p(a)) = 0` to `D_f`, so a generator is defined
# only up to `c(u − 1)`. The α-divergence picks `c = +1` at one end and `c = −1` at the
# other. Normalised JSD_β does the same, from β → 0 (forward KL − (u − 1)) to β → 1
# (reverse KL + (u − 1)). Notebook 02 shows why the choice of `c`, harmless for the
# divergence, is not harmless for the common training recipe.

# %%
fig = plotting.fig_generator_sliders()
t = torch.tensor(fig.data[0].x, dtype=torch.float64)  # the plotted log u grid
u_minus_1 = torch.expm1(t)
alpha_at = {float(st.label): torch.tensor(st.args[0]["y"][0], dtype=torch.float64)
            for st in fig.layout.sliders[0].steps}
rev_f, fwd_f = divergences.get("reverse_kl").f_log(t), divergences.get("forward_kl").f_log(t)
# the ends of the α slider are the *shifted* KL generators, not the plain ones
assert torch.allclose(alpha_at[0.0], rev_f + u_minus_1, atol=1e-12)
assert torch.allclose(alpha_at[1.0], fwd_f - u_minus_1, atol=1e-12)
assert (alpha_at[0.0] - rev_f).abs().max() > 5 and (alpha_at[1.0] - fwd_f).abs().max() > 5
# ... and yet the divergences are the same numbers (section 1 checked the limits)
for c in (1.0, -1.0):
    shifted_kl = divergences.shifted(divergences.get("reverse_kl"), c)
    assert math.isclose(float(shifted_kl.full_vocab(p.log(), q.log())), values["reverse_kl"],
                        rel_tol=1e-12)
print(f"{len(fig.layout.sliders[0].steps)} α positions, "
      f"{len(fig.layout.sliders[1].steps)} β positions")
fig

# %% [markdown]
# **The teacher's shape (needs a running kernel).** Reverse- and forward-KL fits for a
# teacher whose modes you move apart or reweight: every slider move runs two new fits,
# so this one stays an ipywidgets explorer (drag a slider and release it to redraw).
# With the modes close together the two fits agree; pull them apart and reverse KL
# commits to one side.

# %%
def fit_for_slider(separation: float, left_weight: float):
    """(teacher probs, {name: fitted student probs}, grid) for the teacher-shape explorer."""
    z = teacher_logits(separation, left_weight)
    students = {n: fit_unimodal(n, z, WIDGET_FIT_STEPS, lr=0.1)["probs"]
                for n in ("reverse_kl", "forward_kl")}
    return z.exp(), students, GRID.tolist()


widgets.teacher_shape_explorer(fit_for_slider)

# %% [markdown]
# ## 4. Exercises
#
# ### Exercise 01.2: a shifted generator, the same divergence
#
# Write the reverse-KL generator shifted by `c(u − 1)`, `f_c(u) = −log u + c(u − 1)`, as a
# function of the tensor `u` and the number `c`. The check compares it with the library's
# `divergences.shifted(reverse KL, c)` on a grid of `u`, then plugs your `f_c` into the
# definition `Σ_a p(a) f_c(q(a)/p(a))` with the `p` and `q` of section 1 and confirms that
# the divergence does not depend on `c`.

# %%
def my_shifted_reverse_kl_generator(u: torch.Tensor, c: float) -> torch.Tensor:
    """f_c(u) = -log u + c (u - 1)."""
    ### BEGIN SOLUTION
    return -torch.log(u) + c * (u - 1.0)
    ### END SOLUTION


# %%
def test_01_2():
    u_grid = torch.logspace(-3, 3, 61, dtype=torch.float64)
    for c in (-2.0, 0.5, 3.0):
        library = divergences.shifted(divergences.get("reverse_kl"), c)
        mine = my_shifted_reverse_kl_generator(u_grid, c)
        assert torch.allclose(mine, library.f(u_grid), rtol=1e-12, atol=1e-12), \
            f"your f_c differs from -log u + c (u - 1) at c = {c}"
        by_definition = float((p * my_shifted_reverse_kl_generator(q / p, c)).sum())
        assert math.isclose(by_definition, values["reverse_kl"], rel_tol=1e-12), \
            f"sum_a p f_c(q/p) = {by_definition} at c = {c}, not KL(student‖teacher)"


check("01.2", test_01_2, hint="start from the reverse-KL generator -log u and add c (u - 1); "
      "use torch.log so it works elementwise on a tensor.")

# %% [markdown]
# ### Exercise 01.3: where the α slider ends
#
# Show that as α → 1 the α-divergence generator `(u^α − αu − (1 − α)) / (α(α − 1))`
# tends to `u log u − (u − 1)`. (Hint for the derivation: put α = 1 + ε and expand
# `u^α = u · e^{ε log u} ≈ u (1 + ε log u)`.) Write the limit as a function of `u`. The
# check compares it with the library's exact limit form at α = 1 and with its value at
# α = 1 − 10⁻⁶.

# %%
def my_alpha_one_limit(u: torch.Tensor) -> torch.Tensor:
    """lim_{alpha -> 1} of the alpha-divergence generator."""
    ### BEGIN SOLUTION
    return u * torch.log(u) - (u - 1.0)
    ### END SOLUTION


# %%
def test_01_3():
    u_grid = torch.logspace(-2, 2, 41, dtype=torch.float64)
    mine = my_alpha_one_limit(u_grid)
    exact = divergences.get("alpha", alpha=1.0).f(u_grid)
    near = divergences.get("alpha", alpha=1.0 - 1e-6).f(u_grid)
    assert torch.allclose(mine, exact, rtol=1e-12, atol=1e-12), \
        "your limit differs from the library's alpha = 1 generator"
    assert torch.allclose(mine, near, rtol=1e-5, atol=1e-5), \
        "your limit differs from the generator at alpha = 1 - 1e-6"


check("01.3", test_01_3, hint="with alpha = 1 + eps the numerator is about "
      "eps (u log u - u + 1) and the denominator about eps; the result is forward KL's "
      "generator shifted by c (u - 1) with c = -1.")

# %% [markdown]
# ## What to try next
#
# - Change the seed of the toy pair in section 1: which asserts keep holding, and why?
# - Fit the unimodal student under `pearson_chi2` and `neyman_chi2` (add them to
#   `FIT_NAMES`): which one seeks a mode, which one covers?
# - Move the β slider to both ends and compare with the α slider: which KL sits at which
#   end of each family?
# - Look up each row of the [cheat sheet](../docs/cheatsheet.md) and predict from `f`
#   alone whether its fit to the bimodal teacher is mode-seeking.
#
# ## Quiz
#
# **Q1.** `f(u) = u log u` with `u = q/p` (teacher over student): is that
# KL(teacher‖student) or KL(student‖teacher), and under which distribution does its
# expectation effectively run?
#
# ### BEGIN SOLUTION
# `Σ_a p (q/p) log(q/p) = Σ_a q log(q/p)`: the forward KL, KL(teacher‖student), an
# expectation under the teacher. It is mass-covering: every teacher mode must get
# student mass.
# ### END SOLUTION
#
# **Q2.** Why may you add `c(u − 1)` to a generator without changing the divergence?
#
# ### BEGIN SOLUTION
# `Σ_a p(a) c (q(a)/p(a) − 1) = c (Σ_a q(a) − Σ_a p(a)) = c (1 − 1) = 0`. Only the
# divergence is fixed by the definition; the generator is not.
# ### END SOLUTION
#
# **Q3.** A student must cover every answer a teacher might give, even at the cost of
# putting some mass where the teacher puts none. Forward or reverse KL?
#
# ### BEGIN SOLUTION
# Forward KL, KL(teacher‖student): it is an expectation under the teacher, so a teacher
# mode without student mass costs a lot; reverse KL prefers to lock onto one mode.
# ### END SOLUTION
#
# **Next:** notebook 02 turns from the value of `D_f` to its *gradient* under
# sampling, and shows why the common stop-gradient advantage `−f(u)` is right only for
# reverse KL.
