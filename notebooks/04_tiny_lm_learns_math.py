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
# # 04 · A tiny language model learns math: OPD vs OPD+
#
# **Learning goals.** After this notebook you can
#
# - read a real model's per-token log-probs, `log u` and the two advantage designs;
# - say what actually moves a token: its advantage *relative to the state's mean*,
#   `A − E_p[A]`, not the sign of `A`;
# - recognise a collapsing run from its logged signals (teacher KL, gradient norm,
#   completion length, accuracy), and say which one shows first;
# - say why the recipe trains with `γ = 0` and what a `γ = 1` arm looks like.
#
# **Prerequisites.** Notebook 02 (the advantages `−f(u)` and `w_f(u)`, the stop-gradient
# bias, why forward-KL OPD has the teacher as a repelling point) and 03 (the future term,
# `γ`, total variance). The [cheat sheet](../docs/cheatsheet.md) lists `f`, `f′(1)` and the
# collapse signals of every divergence; the [glossary](../docs/glossary.md) defines pass@1,
# Wilson interval and teacher KL.
#
# Runtime: printed by the first code cell.
#
# Notebooks 01–03 worked with exact expectations on toys. Here a real (tiny) causal
# language model samples its own solutions to word problems, and a teacher scores them
# token by token, on a laptop CPU.
#
# 1. **The tiny world**: a small teacher that solves most of the problems and a smaller
#    student that solves far fewer (sizes and accuracies are printed below), both shipped
#    with opdplus.
# 2. **One solution, token by token**: teacher and student log-probs of every token the
#    student wrote, and the advantage OPD and OPD+ would give each token under forward KL.
# 3. **Training, live**: forward-KL OPD, forward-KL OPD+ and reverse-KL OPD from the same
#    student, with the curves redrawn by a trainer callback while they run; then an optional
#    arm with the future term (`γ = 1`).
# 4. **Before and after**: accuracy on held-out test problems.
# 5. **The longer runs**: the reference results of `make reproduce` (all six arms), and JSD.
#
# The paper's headline, in miniature: with forward KL the stop-gradient advantage
# collapses the student, while OPD+ trains normally.

# %%
import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from IPython.display import display

import opdplus
from opdplus import divergences, miniature, plotting, run_signals, tasks, tinyworld, widgets
from opdplus.classroom import runtime_note
from opdplus.evaluation import evaluate
from opdplus.exercises import check
from opdplus.models import param_count, seed_everything
from opdplus.sampler import sample, score
from opdplus.trainer import teacher_kl_eval, train

runtime_note("04_tiny_lm_learns_math")

# %% tags=["parameters"]
PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")

# %%
assert PROFILE in ("smoke", "full"), f"PROFILE must be 'smoke' or 'full', got {PROFILE!r}"
# Sizes of the training runs: `make reproduce`'s smoke profile or its default profile
# (miniature.PROFILES["smoke"] / ["default"]; the steps and batch sizes are printed below).
RUN = miniature.PROFILES[{"smoke": "smoke", "full": "default"}[PROFILE]]
ARMS = {"smoke": [("forward_kl", "opd"), ("forward_kl", "opd+"), ("reverse_kl", "opd")],
        "full": list(miniature.ARMS)}[PROFILE]
# The optional arm of section 3: forward-KL OPD+ with the divergence-to-go (γ = 1). A few
# steps in smoke (enough to see its advantages' spread), a full run otherwise; 0 skips it.
GAMMA_ONE_STEPS = {"smoke": 4, "full": RUN.steps}[PROFILE]
TEST_PROBLEMS = {"smoke": 100, "full": 300}[PROFILE]  # greedy pass@1 on the test split
REDRAW_EVERY = {"smoke": 4, "full": 10}[PROFILE]  # live-plot refresh, in steps
SEED = 0
# One thread: on a shared 2-core machine, two OpenMP threads stall each other whenever one
# is descheduled (measured while calibrating the tiny world); one thread is steady.
torch.set_num_threads(1)
seed_everything(SEED)
print(f"opdplus {opdplus.__version__}, profile {PROFILE}: {len(ARMS)} arms x {RUN.steps} steps "
      f"of {RUN.prompts_per_step} prompts x {RUN.samples_per_prompt} samples")

# %% [markdown]
# ## 1. The tiny world
#
# GSM8K-style word problems with 1–3 steps of `+`, `−` and `×`, and a worked solution in
# GSM8K's format (`... #### 25`). The tokenizer is word level with one token per digit, so
# arithmetic is done digit by digit. Teacher and student are small Llamas trained from
# scratch by supervised fine-tuning (`scripts/build_tiny_world.py`;
# `data/tiny_world/*/provenance.json` says how).

# %%
tok = tinyworld.load_tokenizer()
teacher, student0 = tinyworld.load_teacher(), tinyworld.load_student()
test = tasks.load_split("test")[:TEST_PROBLEMS]
val = tasks.load_split("validation")[:RUN.val_problems]
train_prompts = [{"prompt": r["question"]} for r in tasks.load_split("train")]

example = test[0]
prompt_text = tok.apply_chat_template([{"role": "user", "content": example["question"]}],
                                      tokenize=False, add_generation_prompt=True)
print(f"vocabulary: {len(tok)} tokens; teacher {param_count(teacher):,} parameters, "
      f"student {param_count(student0):,}")
print("prompt:  ", prompt_text)
print("tokens:  ", tok.tokenize(example["answer"]))
print("solution:", example["answer"])

# %% [markdown]
# Greedy accuracy (pass@1, with a Wilson 95% interval) on held-out test problems.

# %%
before = {"teacher": evaluate(teacher, tok, test, max_new_tokens=RUN.max_new_tokens),
          "SFT student": evaluate(student0, tok, test, max_new_tokens=RUN.max_new_tokens)}
for name, r in before.items():
    print(f"{name:12s} {r.accuracy:.2f}  [{r.ci_low:.2f}, {r.ci_high:.2f}] on {r.n} problems")
for i in range(3):
    rec_t, rec_s = before["teacher"].records[i], before["SFT student"].records[i]
    print(f"\n{rec_t['question']}  (answer {rec_t['target']})\n  teacher: {rec_t['completions'][0]}"
          f"\n  student: {rec_s['completions'][0]}")

# %%
init_acc, teacher_acc = before["SFT student"].accuracy, before["teacher"].accuracy
assert 0.80 <= teacher_acc <= 1.0, teacher_acc  # shipped teacher: 0.90 on all 300, 0.96 on 100
assert 0.15 <= init_acc <= 0.35, init_acc  # shipped student: 0.27
assert teacher_acc > init_acc + 0.4  # plenty of room for distillation

# %% [markdown]
# ## 2. One solution, token by token
#
# The student samples a solution (temperature 1, from its own `torch.Generator`). The
# library's `score` gives the log-prob of each sampled token under the student and under
# the teacher; their difference is `log u = log q − log p`. Under **forward KL**,
# KL(teacher‖student), `f(u) = u log u`, so the two advantage designs are
#
# - OPD: `−f(u) = −u log u`
# - OPD+: `w_f(u) = −f(u) + u f′(u) = u`
#
# Look at the signs. A token the teacher likes *more* than the student (`log u > 0`) gets
# a **negative** OPD advantage; a token the teacher likes *less* (`log u < 0`) gets a
# positive one. OPD+ gives every token a weight `u ≥ 0` that grows with how much more the
# teacher likes it. (The sign alone is not the whole story: see below the heatmap.)

# %%
# the first test problem the SFT student gets wrong (greedy): where the two disagree
hard = next(test[i] for i, r in enumerate(before["SFT student"].records) if not r["correct"][0])
gen = torch.Generator().manual_seed(SEED)
prompt_ids = tok.apply_chat_template([{"role": "user", "content": hard["question"]}],
                                     tokenize=True, add_generation_prompt=True)
prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
rollout = sample(student0, [prompt_ids], G=1, generator=gen, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id, max_new_tokens=RUN.max_new_tokens, tokenizer=tok)
mask = rollout.completion_mask[0]
scored_s = score(student0, rollout, return_logits=True)  # with the full-vocabulary logits
scored_t = score(teacher, rollout, return_logits=True)
logp_student = scored_s.logp_BT[0][mask]  # (T,) log p(y_t | s_t)
logp_teacher = scored_t.logp_BT[0][mask]  # (T,) log q(y_t | s_t)
log_u = logp_teacher - logp_student
tokens = tok.convert_ids_to_tokens(rollout.completion_ids[0][mask].tolist())
forward_kl, reverse_kl = divergences.get("forward_kl"), divergences.get("reverse_kl")
adv = {"OPD −f(u)": forward_kl.advantage(log_u, "opd"),
       "OPD+ w_f(u)": forward_kl.advantage(log_u, "opd+")}
print(f"{hard['question']}\nstudent wrote: {rollout.texts[0]}   (teacher: {hard['answer']})")

# the library's advantages are the closed forms above
u = log_u.double().exp()
assert torch.allclose(adv["OPD+ w_f(u)"].double(), u, rtol=1e-5)
assert torch.allclose(adv["OPD −f(u)"].double(), -u * log_u.double(), rtol=1e-5, atol=1e-6)
# ... and their signs disagree exactly where the teacher and student disagree
up, down = log_u > 0.05, log_u < -0.05  # teacher likes the token more / less than the student
assert up.any() and down.any(), "this sample has tokens of both kinds"
assert (adv["OPD −f(u)"][up] < 0).all() and (adv["OPD+ w_f(u)"][up] > 1).all()
assert (adv["OPD −f(u)"][down] > 0).all() and (adv["OPD+ w_f(u)"][down] < 1).all()
print(f"{int(up.sum())} tokens the teacher prefers (log u > 0), "
      f"{int(down.sum())} it likes less (log u < 0), of {len(tokens)}")

# %% [markdown]
# The heatmap shows all of it at once (hover for exact values). For reverse KL the two
# designs differ only by the constant 1 (`log u` vs `log u − 1`), which is why OPD is
# unbiased there; its rows are in the last panel for comparison.

# %%
plotting.fig_token_heatmap(
    tokens,
    {"log-prob (nats)": {"student log p": logp_student, "teacher log q": logp_teacher},
     "log u (nats)": {"log q − log p": log_u},
     "forward-KL advantage (nats)": adv,
     "reverse-KL advantage (nats)": {"OPD −f(u)": reverse_kl.advantage(log_u, "opd"),
                                     "OPD+ w_f(u)": reverse_kl.advantage(log_u, "opd+")}},
    title="One student solution: log-probs, log u and the advantage of each token",
)

# %% [markdown]
# ### What moves a token: `A − E_p[A]`
#
# Reading an advantage by its sign alone is a trap. The update multiplies `A` by
# `∇log p(y_t|s_t)`, and at a state `E_{a~p}[∇log p(a)] = 0`: adding a constant to every
# token's advantage changes nothing in expectation. What moves the logit of token `a` is
# (in expectation, per state) `p(a) · (A(a) − E_p[A])`: the advantage **relative to the
# state's mean**.
#
# For forward-KL OPD+ that mean is `E_p[u] = Σ_a p(a) q(a)/p(a) = Σ_a q(a) = 1`. So the
# OPD+ weight `u`, positive for every token, acts as `u − 1`: up when the teacher likes the
# token more (`q > p`), down when it likes it less, exactly right. For OPD the mean is
# `E_p[−u log u] = −KL(teacher‖student)(s)`, so the centred OPD advantage is
# `−u log u + KL(teacher‖student)(s)`: every token the teacher likes less (`u < 1`, so
# `−u log u > 0`) is pushed **up**, and a token the teacher likes much more is pushed down.
#
# The next cell takes the full-vocabulary logits of both models at every position of the
# sampled solution and checks all of it with the library's `Divergence.expected_advantage`.

# %%
z_student, z_teacher = scored_s.logits_NV.double(), scored_t.logits_NV.double()  # (T, V)
p_TV = torch.softmax(z_student, -1)
u_TV = (torch.log_softmax(z_teacher, -1) - torch.log_softmax(z_student, -1)).exp()
assert torch.allclose((p_TV * u_TV).sum(-1), torch.ones(len(tokens), dtype=torch.float64),
                      atol=1e-9)  # E_p[u] = 1 at every state
mean_adv = {est: forward_kl.expected_advantage(z_student, z_teacher, est)
            for est in ("opd", "opd+")}  # E_p[A] at every state
forward_kl_at_state = forward_kl.full_vocab(z_student, z_teacher)  # KL(teacher‖student) per state
assert torch.allclose(mean_adv["opd+"], torch.ones_like(mean_adv["opd+"]), atol=1e-9)
assert torch.allclose(mean_adv["opd"], -forward_kl_at_state, atol=1e-9)
centred = {"OPD": adv["OPD −f(u)"].double() - mean_adv["opd"],
           "OPD+": adv["OPD+ w_f(u)"].double() - mean_adv["opd+"]}
assert torch.allclose(centred["OPD+"], u - 1, rtol=1e-5, atol=1e-5)  # OPD+ acts as u − 1
assert (centred["OPD+"][up] > 0).all() and (centred["OPD+"][down] < 0).all()  # the right way
assert (centred["OPD"][down] > 0).all()  # OPD pushes up every token the teacher likes less
print(f"tokens the teacher likes more: OPD pushes {int((centred['OPD'][up] < 0).sum())} of "
      f"{int(up.sum())} down; tokens it likes less: OPD pushes all {int(down.sum())} up")

# %% [markdown]
# ### Exercise 04.1: the state's mean advantage
#
# Write `my_expected_advantage(student_logits, teacher_logits, div, est)`: for logits of
# shape `(T, V)` (one row per state), `E_{a~p}[A(a)]` per row, where `p = softmax(student)`
# and `A` is `div.advantage(log u, est)`. The check compares it with
# `Divergence.expected_advantage` on the sampled solution above, for forward and reverse KL
# and both designs, to rounding error.

# %%
def my_expected_advantage(student_logits, teacher_logits, div, est):
    """E_{a~p}[A(a)] at every row: shape (T,)."""
    ### BEGIN SOLUTION
    log_p = torch.log_softmax(student_logits.double(), -1)
    log_u_V = torch.log_softmax(teacher_logits.double(), -1) - log_p
    return (log_p.exp() * div.advantage(log_u_V, est)).sum(-1)
    ### END SOLUTION


# %%
def _check_expected_advantage():
    for div in (forward_kl, reverse_kl):
        for est in ("opd", "opd+"):
            got = my_expected_advantage(z_student, z_teacher, div, est)
            want = div.expected_advantage(z_student, z_teacher, est)
            assert tuple(got.shape) == tuple(want.shape), (
                f"shape {tuple(got.shape)}, expected {tuple(want.shape)}: one value per state")
            assert torch.allclose(got.double(), want, atol=1e-9), f"{div.name} {est}: differs"


check("04.1", _check_expected_advantage,
      hint="log u over the whole vocabulary is log_softmax(teacher) − log_softmax(student); "
           "weight each token's advantage by the student's probability and sum over V")

# %% [markdown]
# ## 3. Training, with live curves
#
# Each arm starts from the same SFT student and uses the same prompts, seeds and
# hyper-parameters (`miniature.train_config`: AdamW at lr 3e-4, gradient clipping at 1,
# temperature 1, `log u` clipped to ±6, γ = 0); only the divergence and the advantage
# design change. Validation accuracy is measured every few steps through `eval_fn`.
#
# The figure below is a `widgets.TrainingMonitor`: its `callback(arm)` is passed to
# `train(..., callbacks=[...])` and redraws the curves while the runs go. Watch for the
# collapse signals of the method notes: teacher KL rising instead of falling, and an
# exploding gradient norm (clipping at 1 keeps the step size bounded, so the norm is a
# symptom here, not the cause).

# %%
def eval_fn(model, step):
    """Greedy validation accuracy (never the test split)."""
    return {"accuracy": evaluate(model, tok, val, max_new_tokens=RUN.max_new_tokens).accuracy}


monitor = widgets.TrainingMonitor(metrics=["teacher_kl", "grad_norm", "completion_len",
                                           "accuracy"], every=REDRAW_EVERY, cols=2)
display(monitor)

# Teacher KL per token on fixed validation rollouts: the same seed before and after each
# run (common random numbers), so a change means the student changed, not the sampling.
val_kl = teacher_kl_eval(teacher, tok, [{"prompt": r["question"]} for r in val[:16]],
                         samples_per_prompt=4, max_new_tokens=RUN.max_new_tokens,
                         use_chat_template=True)
val_kl_init = val_kl(student0)["teacher_kl"]
histories, after, students, val_kl_after = {}, {}, {}, {}
for div, est in ARMS:
    arm = f"{div}/{est}"
    student = tinyworld.load_student()  # a fresh copy of the SFT initialisation
    cfg = miniature.train_config(RUN, div, est, SEED)
    histories[arm] = train(student, teacher, tok, train_prompts, cfg, eval_fn=eval_fn,
                           callbacks=[monitor.callback(arm, last_step=cfg.steps - 1)])
    after[arm] = evaluate(student, tok, test, max_new_tokens=RUN.max_new_tokens)
    val_kl_after[arm] = val_kl(student)["teacher_kl"]
    students[arm] = student
    print(f"{arm:16s} test accuracy {init_acc:.2f} -> {after[arm].accuracy:.2f}")

# %% [markdown]
# The collapse signals, summarised per arm (means over the first and last four steps):

# %%
def head(h, key, n=4):
    return sum(r[key] for r in h[:n]) / n


def tail(h, key, n=4):
    return sum(r[key] for r in h[-n:]) / n


summary = {arm: {"kl_start": head(h, "teacher_kl"), "kl_end": tail(h, "teacher_kl"),
                 "max_grad_norm": max(r["grad_norm"] for r in h),
                 "accuracy": after[arm].accuracy, "val_kl": val_kl_after[arm]}
           for arm, h in histories.items()}
print(f"{'arm':16s} {'teacher KL start':>16s} {'end':>6s} {'max grad norm':>14s} "
      f"{'test acc':>9s} {'val KL':>7s}  (SFT student: test acc {init_acc:.2f}, "
      f"val KL {val_kl_init:.2f})")
for arm, s in summary.items():
    print(f"{arm:16s} {s['kl_start']:16.2f} {s['kl_end']:6.2f} {s['max_grad_norm']:14.1f} "
          f"{s['accuracy']:9.2f} {s['val_kl']:7.2f}")

# %% [markdown]
# What the runs show (the table above has the numbers of this run; the asserts below keep
# wide margins, calibrated on several seeds):
#
# - **Forward-KL OPD collapses.** Test accuracy falls far below the SFT start, the teacher
#   KL (per token, on the student's own rollouts) climbs several-fold, and the largest
#   gradient norm is many times OPD+'s.
# - **Forward-KL OPD+ trains normally**: accuracy stays at or a little above the SFT
#   start and the teacher KL stays low. In this short smoke run the gain is within the
#   noise of the test set (compare the Wilson intervals); the longer runs of section 5
#   show it.
# - **Reverse-KL OPD is fine**, as notebook 02 predicts: its OPD advantage differs from
#   OPD+ by a constant.
# - **Both working arms move towards the teacher**: the teacher KL on fixed validation
#   rollouts ("val KL", same sampling seed before and after) falls below the SFT
#   student's. The KL on the training rollouts is no such measure: the rollouts change
#   with the student, and in a short run it can drift up even for these arms.

# %%
fwd_opd, fwd_plus = summary["forward_kl/opd"], summary["forward_kl/opd+"]
rev_opd = summary["reverse_kl/opd"]
assert fwd_opd["accuracy"] < 0.15 and fwd_opd["accuracy"] < init_acc - 0.1  # collapsed
assert fwd_opd["kl_end"] > 2.0 and fwd_opd["kl_end"] > 2 * fwd_opd["kl_start"]  # KL rose
assert fwd_opd["max_grad_norm"] > 5 * fwd_plus["max_grad_norm"]  # exploding gradients
assert fwd_plus["accuracy"] >= init_acc - 0.05  # OPD+ did not collapse ...
assert fwd_plus["kl_end"] < 1.0 and fwd_plus["kl_end"] < fwd_opd["kl_end"] / 2  # ... or drift
assert rev_opd["accuracy"] >= init_acc - 0.05 and rev_opd["kl_end"] < 1.0  # reverse KL: fine
# ... and both moved the student towards the teacher, which a step that did nothing would not
# (the validation rollouts are fixed, so an unchanged student keeps its KL exactly). Smoke,
# seeds 0 / 1 / 2, val KL 0.88 at the start: forward-KL OPD+ ends at 0.80 / 0.71 / 0.67
# (x0.91 / 0.81 / 0.76), reverse-KL OPD at 0.60 / 0.57 / 0.68 (x0.69 / 0.65 / 0.77).
assert fwd_plus["val_kl"] < 0.95 * val_kl_init, (fwd_plus["val_kl"], val_kl_init)
assert rev_opd["val_kl"] < 0.85 * val_kl_init, (rev_opd["val_kl"], val_kl_init)

# %%
plotting.fig_learning_curves(histories, metrics=["loss", "teacher_kl", "grad_norm",
                                                 "completion_len", "accuracy"],
                             title=f"Tiny world, {RUN.steps} steps per arm (seed {SEED})")

# %% [markdown]
# ### Why `γ = 0`, and an optional arm with `γ = 1`
#
# Every arm above drops the divergence-to-go (`γ = 0`), so even OPD+ follows the gradient of
# the frozen-state objective of notebook 03, not of `J_f`. Practice keeps it for the two
# reasons notebook 03 measured: the **fixed point is the same** (at `p = q` every `u = 1`,
# the future term vanishes and `w_f(1)` is a constant, so both `γ = 0` and `γ = 1` stop at
# the teacher), and **the variance is far smaller** at `γ = 0` (notebook 03 printed the total
# variance of both on its toy; with completions of a few dozen tokens, the divergence-to-go
# sums a few dozen noisy terms).
#
# The optional arm below is forward-KL OPD+ with `γ = 1`, from the same student and seed
# (`GAMMA_ONE_STEPS` in the third cell; a few steps in the smoke profile, 0 to skip). Its
# first batch of rollouts is the very batch the `γ = 0` arm drew (same seed, same
# student), so their advantages can be compared token for token: the divergence-to-go
# spreads them out. In the full profile compare its teacher KL and accuracy with the `γ = 0`
# arm's.

# %%
if GAMMA_ONE_STEPS:
    gamma_cfg = dataclasses.replace(miniature.train_config(RUN, "forward_kl", "opd+", SEED),
                                    gamma=1.0, steps=GAMMA_ONE_STEPS)
    student_g1 = tinyworld.load_student()
    h_g1 = train(student_g1, teacher, tok, train_prompts, gamma_cfg,
                 eval_fn=eval_fn if GAMMA_ONE_STEPS >= RUN.eval_every else None)
    h_g0 = histories["forward_kl/opd+"][:GAMMA_ONE_STEPS]
    print(f"{'step':>4s} {'adv std, γ=0':>13s} {'γ=1':>8s} {'grad norm, γ=0':>15s} {'γ=1':>8s}")
    for r0, r1 in zip(h_g0, h_g1):
        print(f"{r0['step']:4d} {r0['adv_std']:13.3f} {r1['adv_std']:8.3f} "
              f"{r0['grad_norm']:15.2f} {r1['grad_norm']:8.2f}")
    # the same first batch, more spread advantages with the divergence-to-go
    assert h_g1[0]["completion_len"] == h_g0[0]["completion_len"]  # the very same rollouts
    assert h_g1[0]["adv_std"] > 1.5 * h_g0[0]["adv_std"], (h_g1[0]["adv_std"], h_g0[0]["adv_std"])
    if GAMMA_ONE_STEPS == RUN.steps:
        histories["forward_kl/opd+ γ=1"] = h_g1

# %% [markdown]
# ## 4. Before and after
#
# Test accuracy of every arm against the SFT start and the teacher (dashed lines).

# %%
plotting.fig_accuracy({arm: r.summary() for arm, r in after.items()},
                      title=f"Greedy test accuracy after {RUN.steps} steps "
                            f"({TEST_PROBLEMS} problems)",
                      reference={"SFT init": init_acc, "teacher": teacher_acc})

# %% [markdown]
# What a collapsed student writes: the same three problems as in section 1.

# %%
for i in range(3):
    print(f"{after['forward_kl/opd'].records[i]['question']}  (answer {test[i]['final']})")
    for arm in ("forward_kl/opd", "forward_kl/opd+"):
        print(f"  {arm:16s} {after[arm].records[i]['completions'][0]!r}")

# %% [markdown]
# ## 5. The longer runs: all six arms, and how JSD collapses
#
# `make reproduce` runs all six arms (reverse KL, forward KL and JSD, each with OPD and
# OPD+) for several seeds in its default profile, and its results ship in
# `data/reference/tiny_world_default/summary.json`. The next cell reads them; every number
# quoted about those runs comes from this file.

# %%
REFERENCE = os.path.join(os.path.dirname(opdplus.__file__), os.pardir, "data", "reference")
with open(os.path.join(REFERENCE, "tiny_world_default", "summary.json")) as fh:
    reference = json.load(fh)
ref_init = next(r for r in reference if r["estimator"] == "sft-init")
ref_arms = {}
for r in reference:
    if r["divergence"] != "-":
        ref_arms.setdefault(f"{r['divergence']}/{r['estimator']}", []).append(r)
print(f"default profile: {miniature.PROFILES['default'].steps} steps per arm, seeds "
      f"{sorted({r['seed'] for rs in ref_arms.values() for r in rs})}; SFT init "
      f"{ref_init['accuracy']:.2f} on {ref_init['n_test']} test problems")
print(f"{'arm':16s} {'test acc (per seed)':>20s} {'final teacher KL':>17s} {'max grad norm':>14s}")
for arm, rs in ref_arms.items():
    acc = " / ".join(f"{r['accuracy']:.2f}" for r in rs)
    kl = " / ".join(f"{r['final_teacher_kl']:.1f}" for r in rs)
    gn = " / ".join(f"{r['max_grad_norm']:.0f}" for r in rs)
    print(f"{arm:16s} {acc:>20s} {kl:>17s} {gn:>14s}")

# %%
default_steps = miniature.PROFILES["default"].steps
assert all(r["steps"] == default_steps for rs in ref_arms.values() for r in rs)
for seed_rows in zip(ref_arms["jsd/opd"], ref_arms["forward_kl/opd"], ref_arms["jsd/opd+"]):
    jsd_opd, fkl_opd, jsd_plus = seed_rows
    assert jsd_opd["accuracy"] < 0.05 and jsd_opd["final_teacher_kl"] > 5  # JSD OPD collapsed
    assert jsd_opd["max_grad_norm"] < fkl_opd["max_grad_norm"] / 5  # ... with no gradient blow-up
    assert jsd_plus["accuracy"] > ref_init["accuracy"]  # JSD OPD+ learned
for arm in ("forward_kl/opd+", "reverse_kl/opd", "reverse_kl/opd+"):
    assert all(r["accuracy"] > ref_init["accuracy"] for r in ref_arms[arm]), arm

# %% [markdown]
# JSD has `f′(1) = 0`, so OPD has no restoring force and drifts away from the teacher
# (notebook 02). In the reference runs JSD OPD ends at zero accuracy with a large teacher
# KL, like forward-KL OPD, but its largest gradient norm stays far below forward-KL OPD's:
# a run watched only through its gradient norm would look much healthier than it is.
# JSD OPD+ and forward-KL OPD+ both end above the SFT start.
#
# *When* does each signal show the collapse? The per-step Histories of the two JSD arms
# (seed 0, default profile) ship in `data/reference/tiny_world_jsd/`
# (`scripts/jsd_histories.py` wrote them). `opdplus.run_signals` states the criterion: a
# signal *departs* at the first step where its mean over a few logged values has moved by
# a factor 2 from its start, in its collapse direction (teacher KL and gradient norm up,
# accuracy down, completion length either way). Validation accuracy is only measured every
# `eval_every` steps.

# %%
JSD_DIR = os.path.join(REFERENCE, "tiny_world_jsd")
jsd_hist = {}
for arm, name in (("jsd/opd", "jsd__opd_s0.json"), ("jsd/opd+", "jsd__opdplus_s0.json")):
    with open(os.path.join(JSD_DIR, name)) as fh:
        jsd_hist[arm] = json.load(fh)
plotting.fig_learning_curves(jsd_hist, metrics=["teacher_kl", "grad_norm", "completion_len",
                                                "accuracy"], cols=2,
                             title="JSD, default profile, seed 0 (reference Histories)")

# %% [markdown]
# ### Exercise 04.2: which signal exposes JSD's collapse first?
#
# Look at the curves above, or think about notebook 02 first: JSD OPD has no restoring
# force, so nothing pushes back as the student drifts. Which of `"teacher_kl"`,
# `"grad_norm"`, `"completion_len"` and `"accuracy"` departs first (by the criterion of
# `run_signals`) in the JSD OPD run? Return its name, and in a sentence (a comment) say why.

# %%
def my_first_signal():
    """One of "teacher_kl", "grad_norm", "completion_len", "accuracy"."""
    ### BEGIN SOLUTION
    # The teacher KL: the student drifts away from the teacher from the first steps and
    # nothing pulls it back, so the KL rises steadily; the gradient norm only spikes now and
    # then (JSD's advantages are bounded), the length runs to the cap only once the text has
    # degenerated, and the accuracy is measured only every eval_every steps.
    return "teacher_kl"
    ### END SOLUTION


# %%
jsd_departures = run_signals.departures(jsd_hist["jsd/opd"])
print("JSD OPD, first step at which each signal departs:", jsd_departures)
print("JSD OPD+ (the control):", run_signals.departures(jsd_hist["jsd/opd+"]))


def _check_first_signal():
    answer = my_first_signal()
    assert answer in run_signals.SIGNALS, f"{answer!r} is not one of {run_signals.SIGNALS}"
    truth = run_signals.first_signal(jsd_hist["jsd/opd"])
    assert answer == truth, (f"{answer!r} departs at step {jsd_departures[answer]}, but "
                             f"{truth!r} already at step {jsd_departures[truth]}")


check("04.2", _check_first_signal,
      hint="JSD's OPD advantage is bounded, so watch what drifts rather than what explodes; "
           "the printed departures are the answer key, so predict before you read them")

# %%
# the criterion flags the collapse, not a healthy run: the OPD+ control never crosses it
assert run_signals.first_signal(jsd_hist["jsd/opd+"], ("teacher_kl", "accuracy")) is None
assert run_signals.first_signal(jsd_hist["jsd/opd"]) is not None

# %% [markdown]
# ## What to try next
#
# - Change `ARMS` to add `("jsd", "opd")` and `("jsd", "opd+")` (the full profile runs all
#   six arms with the default profile's steps): does the teacher KL rise already in the
#   smoke profile's few steps?
# - Set `GAMMA_ONE_STEPS = RUN.steps` in the smoke profile: does `γ = 1` train as well as
#   `γ = 0` in this short run, and what happens to the gradient norm?
# - In section 2, pick a token the teacher likes much more than the student and compute its
#   centred OPD advantage by hand from `forward_kl_at_state`.
# - `make reproduce` runs all six arms with several seeds; notebook 05 leaves the tiny
#   vocabulary for a real model, where memory and speed start to matter.
#
# ## Quiz
#
# **Q1.** Under forward KL, OPD+ gives every sampled token a positive advantage `u`. Why
# doesn't it push every token up?
#
# ### BEGIN SOLUTION
# Because a constant added to every token's advantage changes nothing in expectation
# (`E_p[∇log p] = 0`); what moves a token is `u − E_p[u] = u − 1`, positive only where the
# teacher likes the token more than the student does.
# ### END SOLUTION
#
# **Q2.** JSD OPD collapsed in the reference runs, yet its largest gradient norm stayed far
# below forward-KL OPD's. Which signals would you log to catch it, and why does the gradient
# norm miss it?
#
# ### BEGIN SOLUTION
# The teacher KL on the rollouts (it rises first), then the accuracy and the completion
# length. JSD's OPD advantage is bounded, so a drifting student produces no exploding
# gradients: JSD has `f′(1) = 0`, no restoring force, and simply wanders off.
# ### END SOLUTION
#
# **Q3.** Why do the arms train with `γ = 0` although it is biased?
#
# ### BEGIN SOLUTION
# It has the same fixed point `p = q` as the exact gradient (the future term vanishes there)
# and much less variance, since the divergence-to-go sums `f` over all later tokens.
# ### END SOLUTION
