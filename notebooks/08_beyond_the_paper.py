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
# # 08 · Beyond the paper: which divergences collapse under OPD, and why
#
# **Learning goals.** After this notebook you can
#
# - predict, from `f′(1)` and `f″(1)` alone, whether OPD and OPD+ keep a student near its
#   teacher, and check the prediction against measured runs;
# - say why writing a divergence with another generator `f + c(u − 1)` changes OPD but not
#   OPD+, and whether choosing `f′(1) < 0` rescues OPD;
# - read a variance ratio and a steps-to-target number with their intervals, and say what
#   the future term `γ` and a baseline buy.
#
# **Prerequisites.** Notebook 02 (the two advantages `−f(u)` and `w_f(u)`, the repelling
# teacher of forward-KL OPD), 03 (`γ`, baselines, variance) and 04 (the tiny math world and
# its collapse signals). The [cheat sheet](../docs/cheatsheet.md) lists `f′(1)` for every
# divergence; the [glossary](../docs/glossary.md) defines teacher KL, Wilson interval and
# baseline.
#
# Runtime: printed by the first code cell.
#
# The paper tests three divergences. The package has eleven, the exact future term and two
# unbiased baselines, so `python -m opdplus study` (`make study`) asks three more questions,
# each against a prediction written down **before** running:
#
# 1. **The stability map**: all 11 divergences × {OPD, OPD+} × seeds.
# 2. **The generator shift**: forward KL and JSD written with `f′(1) = −1, 0, +1`.
# 3. **What γ and the baselines buy**: OPD+ with `γ ∈ {0, 1}` × baseline ∈ {none, analytic,
#    leave-one-out}.
#
# This notebook reads the study's results: the smoke run's output in `results/study_smoke/`
# when it is there (`python -m opdplus study --profile smoke`), otherwise the reference copy
# of the default run shipped in `data/reference/study/`.

# %%
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from IPython.display import Markdown, display

import opdplus
from opdplus import study, study_plan as plan, study_report as rep
from opdplus.classroom import runtime_note
from opdplus.divergences import get, shifted
from opdplus.exercises import check

runtime_note("08_beyond_the_paper")

# %% tags=["parameters"]
PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")
SOURCE = "auto"  # "auto": the smoke run's output if present, else the reference; or a folder

# %%
ROOT = Path(opdplus.__file__).resolve().parents[1]
REFERENCE = ROOT / "data" / "reference" / "study"
SMOKE = ROOT / "results" / "study_smoke"
if SOURCE == "auto":
    folder = SMOKE if (SMOKE / "summary.json").exists() else REFERENCE
else:
    folder = Path(SOURCE)
records = json.loads((folder / "summary.json").read_text())
meta = json.loads((folder / "meta.json").read_text())
print(f"reading {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}: "
      f"profile {meta['profile']!r}, {len(records)} records, made {meta['date']}")
assert all(list(r)[: len(study.SUMMARY_FIELDS)] == list(study.SUMMARY_FIELDS) for r in records)
assert {r["experiment"] for r in records} <= set(study.EXPERIMENTS)

# %% [markdown]
# ## 1. The prediction, before any run
#
# Near `p = q`, write `u = q/p ≈ 1` and expand the advantage to first order. OPD's expected
# update of the logits drifts along `−f′(1) (q − p)`; OPD+'s along `+f″(1) (q − p)`
# (the method's §2; the [cheat sheet](../docs/cheatsheet.md) lists `f′(1)` per divergence). So:
#
# - **OPD** is pulled back to the teacher only if `f′(1) < 0`. With `f′(1) > 0` the teacher
#   repels; with `f′(1) = 0` nothing pulls back to first order, and the student drifts.
# - **OPD+** is pulled back whenever `f″(1) > 0`, i.e. for every strictly convex `f`.
# - **Total variation** has a kink at 1 (no derivative), so the argument is silent: the
#   study marks it "not predicted" instead of guessing.
#
# The table below is computed by the library (`study_plan.predictions`), and the same rows
# were committed in `data/reference/study/predictions.json` before the default run.

# %%
preds = plan.predictions()
shipped = json.loads((REFERENCE / "predictions.json").read_text())
assert shipped["rows"] == json.loads(json.dumps(preds)), "the plan moved after it was committed"
print(plan.criterion_text())
display(Markdown(rep._md(
    ["divergence", "c", "design", "f′(1)", "f″(1)", "predicted"],
    [[p["divergence"], f"{p['shift']:g}", p["estimator"], rep._num(p["f1"]), rep._num(p["f2"]),
      rep._pred_text(p["predicted_collapse"])] for p in preds if p["shift"] == 0])))

# %% [markdown]
# ### Exercise 08.1: f′(1) by autograd
#
# Write `my_slope_at_one(div)`: the derivative of the generator `div.f(u)` at `u = 1`, as a
# float, using `torch.autograd` in float64. The check compares it with the library's
# `study_plan.derivatives_at_one` for every smooth divergence and for a shifted one.

# %%
def my_slope_at_one(div):
    """f'(1) of the generator of ``div`` (a float)."""
    ### BEGIN SOLUTION
    u = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(div.f(u), u)
    return float(g)
    ### END SOLUTION


# %%
def _check_slope():
    for name in ("reverse_kl", "forward_kl", "jsd", "hellinger", "skew_kl", "jeffreys"):
        d = plan.divergence(name)
        want = plan.derivatives_at_one(d)[0]
        got = my_slope_at_one(d)
        assert abs(got - want) < 1e-9, f"{name}: got {got}, expected {want}"
    got = my_slope_at_one(shifted(get("forward_kl"), -2.0))
    assert abs(got + 1.0) < 1e-9, f"forward KL + (−2)(u − 1): got {got}, expected −1"


check("08.1", _check_slope,
      hint="make u a float64 tensor with requires_grad=True, then torch.autograd.grad(div.f(u), u)")

# %% [markdown]
# ## 2. The stability map: predicted vs observed
#
# Each cell is one divergence under one design; its colour is the fraction of seeds that
# collapsed by the criterion fixed in advance, its text the prediction and the outcome. Use
# the dropdown to colour by final accuracy or by how much the teacher KL grew.

# %%
ok, n = rep.agreement(records)
print(f"prediction held in {ok} of {n} predicted runs")
fig = rep.fig_stability_map(records)
fig.show()
display(Markdown(rep.format_tables(records)["stability"]))

# %%
stab = {(r["divergence"], r["estimator"]): r for r in rep.stability_table(records)}
fo, fp = stab[("forward_kl", "opd")], stab[("forward_kl", "opd+")]
# forward-KL OPD: the teacher repels (f'(1) = +1); its teacher KL runs away from OPD+'s
assert fo["kl_final"][0] > 2 * fp["kl_final"][0]
assert fo["predicted_collapse"] is True and fp["predicted_collapse"] is False
# total variation: no derivative at 1, no prediction
assert all(r["predicted_collapse"] is None for r in records if r["divergence"] == "tv")

# %% [markdown]
# The criterion is a choice, so test how much the map depends on it. The slider recolours the
# map for other teacher-KL factors (the study's own, fixed in advance, is 3×).

# %%
rep.fig_criterion_slider(records).show()

# %% [markdown]
# ### Exercise 08.2: the criterion
#
# Write `my_collapsed(accuracy, kl_start, kl_final)`: `True` when the final test accuracy is
# below `plan.COLLAPSE_ACCURACY` or the final teacher KL exceeds `plan.COLLAPSE_KL_FACTOR`
# times its start. The check replays every record of the study.

# %%
def my_collapsed(accuracy, kl_start, kl_final):
    """The study's collapse criterion for one run."""
    ### BEGIN SOLUTION
    return accuracy < plan.COLLAPSE_ACCURACY or kl_final > plan.COLLAPSE_KL_FACTOR * kl_start
    ### END SOLUTION


# %%
def _check_collapsed():
    for r in records:
        got = bool(my_collapsed(r["accuracy"], r["teacher_kl_start"], r["teacher_kl_final"]))
        assert got == r["collapsed"], (
            f"{r['divergence']}/{r['estimator']} seed {r['seed']}: got {got}, study says "
            f"{r['collapsed']} (accuracy {r['accuracy']:.3f}, teacher KL "
            f"{r['teacher_kl_start']:.2f} -> {r['teacher_kl_final']:.2f})")


check("08.2", _check_collapsed,
      hint="two conditions joined by `or`: the accuracy threshold and the KL factor")

# %% [markdown]
# ## 3. The generator shift
#
# `f` and `f + c(u − 1)` are the same divergence. OPD+'s advantage only gains the constant
# `c` (a baseline, harmless in expectation); OPD's gains `−c(u − 1)`, which moves its expected
# update. Choosing `c` sets `f′(1)` to anything, so: **does `f′(1) < 0` stop OPD's collapse,
# and where does OPD go then?**
#
# First the exact answer at one state: expected-gradient descent on one categorical
# student, from a fixed start (the exact toy of notebook 02).

# %%
toy = meta["toy_shift"]
display(Markdown(rep.format_toy(toy)))
# OPD+ heads for the teacher whatever c is; OPD with f'(1) >= 0 ends on one token
assert all(r["tv_final"] < r["tv_start"] / 10 for r in toy if r["estimator"] == "opd+")
assert all(r["max_prob"] > 0.999 for r in toy if r["estimator"] == "opd" and r["f1"] >= 0)

# %% [markdown]
# Read the `f′(1) = −1` rows: the teacher is now attracting for OPD, but only locally. At one
# state that is enough for JSD, while forward KL's shifted OPD advantage is unbounded in `u`,
# and from this start the student still runs to one token. The linear argument is a
# statement about a neighbourhood of the teacher, not about where training starts.
#
# Then the tiny world (the final teacher KL shows whether OPD ends at the teacher or
# elsewhere; error bars are 95% intervals over seeds):

# %%
if any(r["experiment"] == "shift" for r in records):
    rep.fig_shift_sweep(records).show()
    display(Markdown(rep.format_tables(records)["shift"]))

# %% [markdown]
# ## 4. What γ and the baselines buy
#
# OPD+ is unbiased per state; `γ = 1` adds the divergence-to-go (exact sequence gradient),
# and a baseline subtracts a per-state constant (unbiased, less variance). The variance is
# the trace of the covariance of the stochastic gradient over repeated rollout batches of the
# same prompts, at the same weights, as a ratio to `γ = 0` without baseline (same seed, same
# rollouts). Switch the metric with the dropdown.

# %%
gb_rows = rep.gamma_baseline_table(records)
rep.fig_gamma_baseline(records).show()
display(Markdown(rep.format_tables(records)["gamma_baseline"]))
for r in gb_rows:
    if r["gamma"] == 0.0 and r["baseline"] == "none" and r["var_ratio_init"][0] is not None:
        assert abs(r["var_ratio_init"][0] - 1.0) < 1e-12  # the reference row is its own unit

# %% [markdown]
# ### Exercise 08.3: a variance ratio by hand
#
# Write `my_variance_ratio(records, divergence, gamma, baseline)`: for each seed, the run's
# `grad_var_init` divided by the same seed's `γ = 0`, no-baseline run; return the geometric
# mean over seeds, `exp(mean(log ratio))`, the average that suits ratios (2 and 1/2 average
# to 1; an arithmetic mean lets one wild seed dominate). (Only records with
# `experiment == "gamma_baseline"` count.)

# %%
def my_variance_ratio(records, divergence, gamma, baseline):
    """Geometric mean over seeds of grad_var_init / (the same seed's gamma=0, baseline=none)."""
    ### BEGIN SOLUTION
    gb = [r for r in records if r["experiment"] == "gamma_baseline" and r["divergence"] == divergence]
    ref = {r["seed"]: r["grad_var_init"] for r in gb if r["gamma"] == 0.0 and r["baseline"] == "none"}
    xs = [r["grad_var_init"] / ref[r["seed"]] for r in gb
          if r["gamma"] == gamma and r["baseline"] == baseline]
    return math.exp(sum(math.log(x) for x in xs) / len(xs))
    ### END SOLUTION


# %%
def _check_ratio():
    for r in gb_rows:
        want = r["var_ratio_init"][0]
        if want is None:  # no gamma = 0 / none run for these seeds
            continue
        got = my_variance_ratio(records, r["divergence"], r["gamma"], r["baseline"])
        assert math.isclose(got, want, rel_tol=1e-9), (
            f"{r['divergence']} γ={r['gamma']:g} {r['baseline']}: got {got}, expected {want}")


check("08.3", _check_ratio,
      hint="build {seed: grad_var_init} for gamma 0 / 'none' first, divide seed by seed, "
           "then average the logarithms")

# %% [markdown]
# ## What to try next
#
# - Run the smoke study yourself (`python -m opdplus study --profile smoke`, a few minutes
#   on 2 cores) and rerun this notebook: it reads `results/study_smoke/` when it exists.
# - Add a row: `opdplus.divergences.get("alpha", alpha=2.0)` has `f′(1) = 0`. What does the
#   argument predict for OPD, and which notebook-02 toy would you run to check it quickly?
# - Pick `c` so that forward KL has `f′(1) = −3` and run the one-state toy
#   (`study_report.toy_shift_check` shows how): does a stronger restoring force widen the
#   basin around the teacher?
# - The variance ratios were measured at the SFT weights and at each run's final weights.
#   Which of the two is the fairer comparison, and why?
#
# ## Quiz
#
# **Q1.** JSD has `f′(1) = 0`. Why does OPD still collapse, and why does OPD+ not?
#
# ### BEGIN SOLUTION
# OPD's expected update near the teacher is `−f′(1)(q − p)` to first order: zero, so nothing
# pulls the student back and sampling noise plus second-order terms carry it away. OPD+'s is
# `+f″(1)(q − p)` with `f″(1) = 1/4 > 0`, a restoring force.
# ### END SOLUTION
#
# **Q2.** Adding `c(u − 1)` to `f` does not change the divergence. Why does it change OPD
# but not (in expectation) OPD+?
#
# ### BEGIN SOLUTION
# OPD's advantage is `−f(u)`, which gains `−c(u − 1)`, a token-dependent term that changes
# the expected update. OPD+'s advantage `w_f(u) = −f + u f′` gains exactly `c`, a constant per
# state, and `E_p[c ∇log p] = 0`.
# ### END SOLUTION
#
# **Q3.** A baseline leaves the expected gradient unchanged. What can it change, and how did
# the study measure that?
#
# ### BEGIN SOLUTION
# Only the variance (and so the speed and stability of training at a fixed batch). The study
# measured the trace of the gradient covariance over repeated rollout batches at fixed
# weights, as a ratio to γ = 0 without baseline, on the same rollouts.
# ### END SOLUTION
