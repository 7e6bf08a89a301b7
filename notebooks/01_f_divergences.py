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
# 3. lets you move β, α and the teacher's shape with sliders.
#
# Every claim below is an `assert`, so running the notebook checks it.

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math

import torch

import opdplus
from opdplus import divergences, plotting, toy, widgets

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
# **The members are connected.** The α-divergence runs from reverse KL (α → 0) to
# forward KL (α → 1) and equals twice the squared Hellinger distance at α = ½. The
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
# Two explorers, both thin wrappers over the builders used above (drag a slider and
# release it to redraw):
#
# - **β and α.** The generators of JSD_β and of the α-divergence, next to the two KLs.
#   Watch the α curve move from the reverse-KL shape (α near 0) to the forward-KL shape
#   (α near 1).
# - **The teacher's shape.** Reverse- and forward-KL fits for a teacher whose modes you
#   move apart or reweight. With the modes close together the two fits agree; pull
#   them apart and reverse KL commits to one side.

# %%
widgets.divergence_explorer(kind="generators")


# %%
def fit_for_slider(separation: float, left_weight: float):
    """(teacher probs, {name: fitted student probs}, grid) for the teacher-shape explorer."""
    z = teacher_logits(separation, left_weight)
    students = {n: fit_unimodal(n, z, WIDGET_FIT_STEPS, lr=0.1)["probs"]
                for n in ("reverse_kl", "forward_kl")}
    return z.exp(), students, GRID.tolist()


widgets.teacher_shape_explorer(fit_for_slider)

# %% [markdown]
# **Next:** notebook 02 turns from the value of `D_f` to its *gradient* under
# sampling, and shows why the common stop-gradient advantage `−f(u)` is right only for
# reverse KL.
