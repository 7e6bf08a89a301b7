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
# # 06 · The full recipe: math reasoning on a GPU
#
# **Learning goals.** After this notebook you can
#
# - set up a teacher/student pair from one model family and make the tokenizer pre-flight
#   pass (or know why it cannot);
# - budget the memory of a training step from two model configs before renting a GPU,
#   and redo that budget for another pair;
# - run OPD vs OPD+ with a sequence-KD warm start, in a notebook and from the command line
#   with Accelerate, and read the collapse signals from the History.
#
# **Prerequisites.** Notebooks 02 and 04 (the OPD and OPD+ advantages; a run and its
# collapse signals), 05 (where memory goes at a large vocabulary). Terms such as
# *sequence KD*, *avg@k* and *Wilson interval* are in the [glossary](../docs/glossary.md);
# the [cheat sheet](../docs/cheatsheet.md) gives each divergence's OPD behaviour.
#
# **Runtime:** printed by the first code cell.
#
# The paper's setting, at the size of a single-GPU public reproduction: an **instruct
# teacher** and a **smaller base student from the same family** (one tokenizer), on
# **GSM8K**, in **bf16**, with **Hugging Face Accelerate**:
#
# | | full profile (GPU, hub access) | smoke profile (CPU, offline) |
# |---|---|---|
# | teacher | Qwen/Qwen3-4B-Instruct-2507 | tiny-world teacher (1M) |
# | student | Qwen/Qwen3-0.6B-Base | tiny-world SFT student (0.3M) |
# | data | GSM8K train / 200 test questions | tiny-world train / test |
# | warm start | 20 steps of sequence-level KD on teacher samples | 2 such steps |
# | distillation | 40 steps x 16 prompts x 4 samples, lr 1e-5 | 16 steps x 8 x 4, lr 3e-4 |
# | precision | student fp32 master weights, bf16 autocast; teacher bf16 | float32 |
#
# Run the full profile on a GPU with `papermill 06_gpu_math_reasoning.ipynb out.ipynb -p
# PROFILE full`. The smoke profile runs **the same code** on the tiny world on a CPU
# (that is what the test suite executes): the profile picks model names and sizes, and
# `get_device` picks the device. Cells that need a GPU are marked and skipped in smoke.
#
# The public reproduction we follow (method notes §7) reports GSM8K avg@4: SFT init
# 0.331; forward-KL OPD collapses (0.039) while forward-KL OPD+ reaches 0.450. Its student
# was SFT-initialised on 2k GSM8K solutions; ours is warm-started on the teacher's own
# samples (`seqkd_warmup_steps`), so our numbers will differ.

# %%
# Only light imports here: the hub libraries read HF_HUB_OFFLINE once, when first imported,
# and whether to set it depends on the profile (next cell).
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import opdplus
from opdplus.classroom import runtime_note

runtime_note("06_gpu_math_reasoning")

# %% tags=["parameters"]
PROFILE = os.environ.get("OPDPLUS_PROFILE", "smoke")
LAUNCH_MULTI_GPU = False  # full profile only: also run the arms through `accelerate launch`

# %%
assert PROFILE in ("smoke", "full"), f"PROFILE must be 'smoke' or 'full', got {PROFILE!r}"
if PROFILE == "smoke":  # offline and self-contained; the full profile downloads Qwen3 and GSM8K
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import yaml
from IPython.display import display

from opdplus import cli, plotting, tasks, widgets
from opdplus.checkpoint import latest_checkpoint
from opdplus.evaluation import chat_prompt, evaluate, load_gsm8k
from opdplus.exercises import check
from opdplus.memory_budget import step_memory_estimate
from opdplus.models import get_device, load_causal_lm, load_tokenizer, param_count, seed_everything
from opdplus.sampler import TokenizerMismatchError, preflight
from opdplus.trainer import TrainConfig, train

# %%
ROOT = Path(opdplus.__file__).resolve().parents[1]
TINY = tasks.default_data_dir()
RECIPES = {
    "full": dict(
        teacher="Qwen/Qwen3-4B-Instruct-2507", student="Qwen/Qwen3-0.6B-Base",
        tokenizer="Qwen/Qwen3-4B-Instruct-2507", student_tokenizer="Qwen/Qwen3-0.6B-Base",
        prompt_suffix="\nPlease reason step by step, and put your final answer within \\boxed{}.",
        warm_steps=20, steps=40, prompts_per_step=16, samples_per_prompt=4,
        micro_batch_prompts=4, max_new_tokens=512, lr=1e-5, eval_every=10, val_problems=100,
        test_problems=200, eval_k=4, eval_batch=64, checkpoint_every=10,
        out=ROOT / "runs" / "06_gpu_math_reasoning"),
    "smoke": dict(
        teacher=TINY / "teacher", student=TINY / "student",  # each with its tokenizer
        tokenizer=TINY / "teacher", student_tokenizer=TINY / "student",
        prompt_suffix="",
        warm_steps=2, steps=16, prompts_per_step=8, samples_per_prompt=4,
        micro_batch_prompts=4, max_new_tokens=48, lr=3e-4, eval_every=8, val_problems=50,
        test_problems=100, eval_k=1, eval_batch=64, checkpoint_every=0,
        out=None),  # a fresh scratch directory, made below
}
RECIPE = RECIPES[PROFILE]
ARMS = [("forward_kl", "opd"), ("forward_kl", "opd+")]  # add ("jsd", ...), ("reverse_kl", ...)
SEED = 0

DEVICE = get_device("auto")  # cuda -> mps -> cpu
ON_GPU = DEVICE.type == "cuda"
# bf16 where the hardware has it: the teacher in bf16; the student keeps float32 master
# weights (AdamW updates of lr 1e-5 vanish in bf16's 8-bit mantissa) and computes in bf16
# under autocast (mixed_precision="bf16").
TEACHER_DTYPE = "bfloat16" if ON_GPU else "float32"
MIXED_PRECISION = "bf16" if ON_GPU else "no"
if DEVICE.type == "cpu":
    torch.set_num_threads(1)  # steady on a shared 2-core machine (see notebook 04)
seed_everything(SEED)
if RECIPE["out"] is None:
    RECIPE["out"] = Path(tempfile.mkdtemp(prefix="opdplus-06-"))
RECIPE["out"].mkdir(parents=True, exist_ok=True)
print(f"opdplus {opdplus.__version__}, profile {PROFILE}, device {DEVICE}, "
      f"teacher {TEACHER_DTYPE}, mixed precision {MIXED_PRECISION}, output {RECIPE['out']}")

# %% [markdown]
# ## 1. Teacher, student and one tokenizer
#
# Sampled-token distillation compares the two models' log-probs of the same token id, so
# the student must come from the teacher's family. Base and instruct checkpoints of one
# family share the vocabulary but may differ in special tokens and chat template (a base
# model's EOS is often `<|endoftext|>`, the instruct model's `<|im_end|>`). `preflight`
# finds that before any compute. When only those differ, the student is trained with the
# **teacher's** tokenizer (it learns the teacher's turn format on the way); when the
# vocabularies differ, nothing can fix it and we stop.

# %%
teacher = load_causal_lm(RECIPE["teacher"], device=DEVICE, dtype=TEACHER_DTYPE)
student = load_causal_lm(RECIPE["student"], device=DEVICE, dtype="float32")
tok = load_tokenizer(RECIPE["tokenizer"])
student_tok = load_tokenizer(RECIPE["student_tokenizer"])
SHARED_TOKENIZER = None  # the CLI's --tokenizer (section 7): None while the two match
try:
    vocab = preflight(tok, student_tok, teacher, student)
    print("the student's own tokenizer matches the teacher's")
except TokenizerMismatchError as err:
    assert tok.get_vocab() == student_tok.get_vocab(), "different vocabularies: another student"
    print(f"student tokenizer differs ({err}); training it with the teacher's tokenizer")
    vocab = preflight(tok, tok, teacher, student)
    SHARED_TOKENIZER = str(RECIPE["tokenizer"])
for name, m in (("teacher", teacher), ("student", student)):
    print(f"{name}: {param_count(m) / 1e6:,.1f}M parameters, {next(m.parameters()).dtype}, "
          f"{m.config.num_hidden_layers} layers")
print(f"shared vocabulary: {vocab:,} logits per position")
assert param_count(student) < param_count(teacher) / 3

# %% [markdown]
# ## 2. Data
#
# GSM8K rows are `{"question", "answer"}` with the answer ending in `#### n`; the tiny
# world writes the same format, so the grader and loaders are shared. The student sees
# only the question (rendered with the teacher's chat template); the teacher's
# reference solutions are never used, only its log-probs. Validation questions come
# from the training split and are held out of the training prompts.

# %%
if PROFILE == "full":
    pool, test = load_gsm8k("train"), load_gsm8k("test")[:RECIPE["test_problems"]]
    train_rows, val = pool[:-RECIPE["val_problems"]], pool[-RECIPE["val_problems"]:]
else:
    train_rows = tasks.load_split("train")
    val = tasks.load_split("validation")[:RECIPE["val_problems"]]
    test = tasks.load_split("test")[:RECIPE["test_problems"]]
suffix = RECIPE["prompt_suffix"]


def prompt_fn(question):
    return chat_prompt(tok, question + suffix)


held_out = {r["question"] for r in val} | {r["question"] for r in test}
n_rows = len(train_rows)
train_rows = [r for r in train_rows if r["question"] not in held_out]  # no leaks, ever
prompts = [{"prompt": r["question"] + suffix} for r in train_rows]
print(f"{n_rows - len(train_rows)} training rows dropped (also held out)")
print(f"{len(prompts)} training prompts, {len(val)} validation, {len(test)} test questions")
print(prompt_fn(test[0]["question"]))

# %% [markdown]
# ## 3. Expected memory and time
#
# Before renting a GPU: a rough budget of one training step, from the model configs
# alone. These are **estimates, not measurements** (section 6 measures the peak on a GPU
# run). Terms: the teacher's weights; the student's float32 weights, gradients and two
# AdamW moments (16 bytes per parameter); the KV cache while one micro-batch samples;
# bf16 logits at the completion positions of one micro-batch for both models plus their
# gradient (the float32 log-softmax works in chunks, so it adds little); and the
# student's activations kept for the backward pass (about 34 bytes per token, per unit
# of width, per layer in 16-bit, Korthikanti et al. 2022).
#
# The terms are computed by `opdplus.memory_budget.step_memory_estimate` (read its
# source: five lines of arithmetic, one per term).

# %%
# The full recipe's numbers, from the two models' config.json (checked against the
# loaded models when PROFILE == "full").
QWEN3 = {
    "teacher": SimpleNamespace(num_hidden_layers=36, hidden_size=2560, num_attention_heads=32,
                               num_key_value_heads=8, head_dim=128, vocab_size=151936,
                               params=4.02e9),
    "student": SimpleNamespace(num_hidden_layers=28, hidden_size=1024, num_attention_heads=16,
                               num_key_value_heads=8, head_dim=128, vocab_size=151936,
                               params=0.596e9),
}
full_estimate = step_memory_estimate(QWEN3["teacher"], QWEN3["student"], QWEN3["teacher"].params,
                                     QWEN3["student"].params, RECIPES["full"], prompt_tokens=200)
here_estimate = step_memory_estimate(
    teacher.config, student.config, param_count(teacher), param_count(student), RECIPE,
    prompt_tokens=max(len(tok(prompt_fn(r["question"]))["input_ids"]) for r in test[:32]),
    teacher_bytes=2 if TEACHER_DTYPE == "bfloat16" else 4, act_bytes=2 if ON_GPU else 4)
print(f"{'term':50s} {'full recipe (GiB)':>18s} {'this run (GiB)':>15s}")
for k in full_estimate:
    print(f"{k:50s} {full_estimate[k]:18.2f} {here_estimate[k]:15.4f}")
print(f"{'total (estimate)':50s} {sum(full_estimate.values()):18.1f} "
      f"{sum(here_estimate.values()):15.4f}")
assert sum(full_estimate.values()) < 60  # the full recipe fits one 80 GB GPU, with room

# %% [markdown]
# **Time (estimate, not measured).** On a GPU, one step is dominated by sampling: the
# student decodes up to 512 tokens one forward pass at a time (HF eager decoding of a
# 0.6B model takes roughly 20–30 ms per token for 16 rows), i.e. about 10–15 s per
# micro-batch and 40–60 s for the four micro-batches of a step; the teacher's scoring
# (4B forwards over ~45k tokens per step) and the student's backward add a few seconds. So
# about **1 minute per step, 1 hour per arm** of 60 steps, plus 3–5 minutes per
# evaluation of 200 x 4 answers and about a minute per validation pass. A vLLM-style
# sampler would cut the sampling share several-fold. In smoke, section 5 prints the
# measured step time of this machine.
#
# ## 4. Before training

# %%
def accuracy(model, rows, k=RECIPE["eval_k"], seed=0):
    """Greedy pass@1 (k = 1) or avg@k at temperature 1, batched."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    return evaluate(model, tok, rows, k=k, greedy=(k == 1), generator=gen, device=DEVICE,
                    max_new_tokens=RECIPE["max_new_tokens"], batch_size=RECIPE["eval_batch"],
                    prompt_fn=prompt_fn)


before = {"teacher": accuracy(teacher, test),
          "student (before warm start)": accuracy(student, test)}
for name, r in before.items():
    print(f"{name:28s} {r.metric} {r.accuracy:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] on {r.n}")
assert before["teacher"].accuracy > before["student (before warm start)"].accuracy

# %% [markdown]
# ## 5. Warm start, then OPD vs OPD+
#
# Each arm is one `train` call from the same initial student: `warm_steps` of
# sequence-level KD (the student imitates teacher samples, a supervised loss), then
# on-policy distillation with the arm's divergence and advantage. Checkpoints go to
# `out/<arm>/checkpoint/`; a killed notebook resumes each arm where it stopped.

# %%
initial_state = {k: v.detach().to("cpu", copy=True) for k, v in student.state_dict().items()}


def config_for(divergence, estimator):
    return TrainConfig(
        divergence=divergence, estimator=estimator, seqkd_warmup_steps=RECIPE["warm_steps"],
        steps=RECIPE["warm_steps"] + RECIPE["steps"], lr=RECIPE["lr"], max_grad_norm=1.0,
        prompts_per_step=RECIPE["prompts_per_step"],
        samples_per_prompt=RECIPE["samples_per_prompt"],
        micro_batch_prompts=RECIPE["micro_batch_prompts"],
        max_new_tokens=RECIPE["max_new_tokens"], temperature=1.0, clip_log_u=6.0, gamma=0.0,
        use_chat_template=True, eval_every=RECIPE["eval_every"],
        checkpoint_every=RECIPE["checkpoint_every"], mixed_precision=MIXED_PRECISION,
        seed=SEED, progress=PROFILE == "full")


def eval_fn(model, step):
    return {"accuracy": accuracy(model, val, k=1).accuracy}


monitor = widgets.TrainingMonitor(metrics=["teacher_kl", "grad_norm", "completion_len",
                                           "accuracy"], every=4, cols=2)
display(monitor)
histories, after = {}, {}
for div, est in ARMS:
    arm = f"{div}/{est}"
    out = RECIPE["out"] / arm.replace("/", "_").replace("+", "plus")
    student.load_state_dict(initial_state)
    cfg = config_for(div, est)
    histories[arm] = train(student, teacher, tok, prompts, cfg, eval_fn=eval_fn,
                           callbacks=[monitor.callback(arm, last_step=cfg.steps - 1)],
                           out_dir=out, resume=latest_checkpoint(out) is not None)
    after[arm] = accuracy(student, test)
    print(f"{arm:16s} test {after[arm].metric} {after[arm].accuracy:.3f}")

# %% [markdown]
# The collapse signals (method notes §6), over the on-policy steps only:

# %%
def on_policy(h, key):
    return [r[key] for r in h if r.get("teacher_kl") is not None and r.get(key) is not None]


summary = {}
for arm, h in histories.items():
    kl = on_policy(h, "teacher_kl")
    summary[arm] = {"kl_start": sum(kl[:4]) / 4, "kl_end": sum(kl[-4:]) / 4,
                    "max_grad_norm": max(on_policy(h, "grad_norm")),
                    "len_end": sum(on_policy(h, "completion_len")[-4:]) / 4,
                    "accuracy": after[arm].accuracy,
                    "s_per_step": sum(r["t_step"] for r in h) / len(h)}
for arm, s in summary.items():
    print(f"{arm:16s} teacher KL {s['kl_start']:.2f} -> {s['kl_end']:.2f}, max grad norm "
          f"{s['max_grad_norm']:.1f}, length {s['len_end']:.0f}, test {s['accuracy']:.3f}, "
          f"{s['s_per_step']:.2f} s/step")

opd, plus = summary["forward_kl/opd"], summary["forward_kl/opd+"]
assert plus["accuracy"] > opd["accuracy"] + 0.1  # OPD+ keeps what OPD destroys
assert opd["kl_end"] > 2 * plus["kl_end"]  # OPD drifts away from the teacher
assert opd["max_grad_norm"] > 5 * plus["max_grad_norm"]  # ... with exploding gradients

# %%
plotting.fig_learning_curves(histories, metrics=["loss", "teacher_kl", "grad_norm",
                                                 "completion_len", "accuracy"],
                             title=f"{PROFILE} profile: warm start, then on-policy distillation")

# %%
plotting.fig_accuracy({arm: r.summary() for arm, r in after.items()},
                      title=f"Test {next(iter(after.values())).metric} after "
                            f"{RECIPE['steps']} on-policy steps",
                      reference={"student before warm start":
                                 before["student (before warm start)"].accuracy,
                                 "teacher": before["teacher"].accuracy})

# %% [markdown]
# ## 6. On the GPU: measured memory (full profile only)
#
# The estimate of section 3 against PyTorch's record of the peak allocation, and the
# hard-coded config numbers against the models actually loaded.

# %%
if PROFILE == "full":  # needs the GPU run
    peak = torch.cuda.max_memory_allocated(DEVICE) / 2**30
    print(f"{torch.cuda.get_device_name(DEVICE)}: peak allocated {peak:.1f} GiB "
          f"(estimate {sum(full_estimate.values()):.1f} GiB per step, plus evaluation)")
    for who, m in (("teacher", teacher), ("student", student)):
        for key in ("num_hidden_layers", "hidden_size", "num_key_value_heads", "vocab_size"):
            assert getattr(m.config, key) == getattr(QWEN3[who], key), (who, key)
else:
    print("smoke profile: skipped (runs with PROFILE = 'full' on a GPU)")

# %% [markdown]
# ## 7. The same run from the command line, with Accelerate
#
# For several GPUs (or to run outside a notebook) the CLI takes the same settings from a
# YAML file: every `TrainConfig` field plus the run options. `accelerate launch` starts
# one process per GPU (`configs/accelerate_ddp.yaml`: data parallel; `prompts_per_step`
# is the global batch, and the loss is normalised by the completion tokens of all
# processes, so the result does not depend on the number of GPUs). For a student too
# large to replicate, `configs/accelerate_fsdp.yaml` shards it.
#
# The CLI loads each model's tokenizer from its directory (the tiny-world checkpoints ship
# theirs). When the student's own tokenizer differs from the teacher's only in special
# tokens, as a base student's does, `tokenizer:` in the file (the `--tokenizer` flag) gives
# both models the teacher's, as section 1 did. `--num_processes` must divide the
# number of micro-batches per step (16 prompts / 4 per micro-batch = 4: one, two or four
# GPUs); the trainer says so before any compute otherwise.

# %%
cli_teacher, cli_student = str(RECIPE["teacher"]), str(RECIPE["student"])  # as loaded above
shared = {"tokenizer": SHARED_TOKENIZER} if SHARED_TOKENIZER else {}
prompts_file = RECIPE["out"] / "prompts.jsonl"
prompts_file.write_text("".join(json.dumps(p) + "\n" for p in prompts))

cfg = config_for("forward_kl", "opd+")
run_file = RECIPE["out"] / "forward_kl_opdplus.yaml"
run_file.write_text(yaml.safe_dump({
    "teacher": cli_teacher, "student": cli_student, **shared, "prompts": str(prompts_file),
    "out": str(RECIPE["out"] / "cli" / "forward_kl_opdplus"), "device": "auto",
    "teacher_dtype": TEACHER_DTYPE, "student_dtype": "float32", **cfg.to_dict()},
    sort_keys=False))
launch = ["accelerate", "launch", "--config_file", str(ROOT / "configs" / "accelerate_ddp.yaml"),
          "--num_processes", "4", "-m", "opdplus.cli", "train", "--config", str(run_file)]
print(" ".join(launch), "\n")
print(run_file.read_text())

# the file says exactly what this notebook trained
parsed = cli.resolve_options(cli.build_parser().parse_args(launch[launch.index("train"):]))
assert parsed["config"] == cfg
assert parsed["student"] == cli_student and parsed["teacher"] == cli_teacher
assert parsed["tokenizer"] == SHARED_TOKENIZER

# %% [markdown]
# In smoke, the command runs here for three steps in one CPU process (flags on the command
# line override the file). In the full profile, with `LAUNCH_MULTI_GPU = True`, it runs
# on every visible GPU.

# %%
# The child's progress bars would come back as raw text (and look like errors in
# JupyterLab): opdplus's are off under OPDPLUS_QUIET, transformers' and the hub's under
# HF_HUB_DISABLE_PROGRESS_BARS. Offline in smoke (HF_HUB_OFFLINE is inherited).
env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
       "OPDPLUS_QUIET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
launcher = [sys.executable, "-m", "accelerate.commands.launch"] + launch[2:]
if PROFILE == "full":  # needs GPUs
    if LAUNCH_MULTI_GPU:
        shards = RECIPE["prompts_per_step"] // RECIPE["micro_batch_prompts"]
        n_gpus = max(n for n in range(1, torch.cuda.device_count() + 1) if shards % n == 0)
        launcher[launcher.index("--num_processes") + 1] = str(n_gpus)
        subprocess.run(launcher, env=env, check=True)
else:
    launcher[launcher.index("--num_processes") + 1] = "1"
    proc = subprocess.run(launcher + ["--steps", "3", "--eval-samples", "1", "--no-progress",
                                      "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr and "it/s]" not in proc.stderr, "a progress bar got through"
    if proc.stderr.strip():  # warnings, if any, in full (no bars left to cut)
        print("the CLI's stderr:\n" + proc.stderr.strip()[-1500:])
    cli_history = json.loads((RECIPE["out"] / "cli" / "forward_kl_opdplus" / "history.json")
                             .read_text())
    assert [r["step"] for r in cli_history] == [0, 1, 2]  # two warm-start steps, one on-policy
    assert cli_history[-1]["teacher_kl"] is not None and cli_history[0]["teacher_kl"] is None
    print("CLI run OK:", [{k: r.get(k) for k in ("step", "loss", "tokens")} for r in cli_history])

# %%
if PROFILE == "smoke":  # the scratch directory: models, configs, histories of this run
    shutil.rmtree(RECIPE["out"], ignore_errors=True)

# %% [markdown]
# ## 8. Exercises
#
# ### Exercise 06.1: the memory budget of another pair
#
# A larger pair from the same family: **Qwen3-8B** teaching **Qwen3-1.7B**, with the full
# recipe's batch (micro-batches of 4 prompts x 4 samples, 512 new tokens, prompts of up to
# 200 tokens), the teacher in bf16 and 16-bit activations. Their `config.json` numbers are
# below. Compute the five terms of section 3 **by hand** (no call to the library), in
# GiB, as a dict with the same keys as `full_estimate`. The check compares each term with
# `opdplus.memory_budget.step_memory_estimate`. Then answer for yourself: does one step fit
# an 80 GB GPU, and which term would you attack first if it did not?

# %%
QWEN3_8B_TO_1_7B = {  # from the models' config.json; parameter counts from their model cards
    "teacher": SimpleNamespace(num_hidden_layers=36, hidden_size=4096, num_attention_heads=32,
                               num_key_value_heads=8, head_dim=128, vocab_size=151936,
                               params=8.19e9),
    "student": SimpleNamespace(num_hidden_layers=28, hidden_size=2048, num_attention_heads=16,
                               num_key_value_heads=8, head_dim=128, vocab_size=151936,
                               params=1.72e9),
}


def my_budget_gib(pair, prompt_tokens=200, micro_batch_prompts=4, samples_per_prompt=4,
                  max_new_tokens=512):
    """The five terms of section 3 for `pair`, in GiB, keyed like `full_estimate`."""
    ### BEGIN SOLUTION
    t, s = pair["teacher"], pair["student"]
    rows = micro_batch_prompts * samples_per_prompt
    seq = prompt_tokens + max_new_tokens
    gib = 2**30
    return {
        "teacher weights": 2 * t.params / gib,
        "student weights + grads + AdamW (fp32)": 16 * s.params / gib,
        "KV cache while sampling": s.num_hidden_layers * 2 * s.num_key_value_heads * s.head_dim
        * 2 * rows * seq / gib,
        "logits at completion positions (2 models + grad)": 3 * 2 * rows * max_new_tokens
        * s.vocab_size / gib,
        "student activations for backward": 17 * 2 * rows * seq * s.hidden_size
        * s.num_hidden_layers / gib,
    }
    ### END SOLUTION


# %%
def test_06_1():
    pair = QWEN3_8B_TO_1_7B
    mine = my_budget_gib(pair)
    library = step_memory_estimate(pair["teacher"], pair["student"], pair["teacher"].params,
                                   pair["student"].params, RECIPES["full"], prompt_tokens=200)
    assert set(mine) == set(library), f"use the keys of full_estimate: {sorted(library)}"
    for k in library:
        assert abs(mine[k] - library[k]) <= 1e-9 * max(1.0, library[k]), \
            f"{k}: yours {mine[k]:.4f} GiB, the library's {library[k]:.4f} GiB"


check("06.1", test_06_1, hint="bytes per value: 2 for bf16 weights and 16-bit activations, 16 "
      "per student parameter for fp32 weights + grads + two AdamW moments; rows = prompts x "
      "samples, seq = prompt + new tokens; the KV cache stores K and V per layer per kv head; "
      "divide bytes by 2**30.")

# %% [markdown]
# ### Exercise 06.2: read the collapse signals from a History
#
# A History is a list of per-step dicts. The warm-start steps are supervised, so their
# `teacher_kl` is `None`. Write a function that returns, over the **on-policy steps
# only**, the mean teacher KL of the first four and of the last four steps and the
# largest gradient norm. The check compares it with section 5's `summary` for both arms.

# %%
def my_collapse_signals(history):
    """{"kl_start", "kl_end", "max_grad_norm"} over the steps whose teacher_kl is not None."""
    ### BEGIN SOLUTION
    on = [r for r in history if r.get("teacher_kl") is not None]
    kl = [r["teacher_kl"] for r in on]
    return {"kl_start": sum(kl[:4]) / 4, "kl_end": sum(kl[-4:]) / 4,
            "max_grad_norm": max(r["grad_norm"] for r in on if r.get("grad_norm") is not None)}
    ### END SOLUTION


# %%
def test_06_2():
    for arm, h in histories.items():
        mine = my_collapse_signals(h)
        for key in ("kl_start", "kl_end", "max_grad_norm"):
            assert abs(mine[key] - summary[arm][key]) < 1e-12, \
                f"{arm} {key}: yours {mine[key]}, section 5's {summary[arm][key]}"


check("06.2", test_06_2, hint="keep the records whose 'teacher_kl' is not None (the on-policy "
      "steps), then average the first four and the last four values.")

# %% [markdown]
# ### Exercise 06.3: how many GPUs can run this recipe?
#
# `accelerate launch --num_processes n` splits a step's micro-batches over `n` processes;
# the trainer refuses a split that is not even (before any compute). For a `TrainConfig`,
# return the process counts from 1 to `max_gpus` that it accepts. The check compares your
# list with what `TrainConfig.micro_batches(n)` accepts, for the full recipe and two
# variants.

# %%
def my_gpu_counts(cfg, max_gpus=8):
    """The numbers of processes n in 1..max_gpus over which cfg's step splits evenly."""
    ### BEGIN SOLUTION
    m = cfg.micro_batch_prompts
    if m is None:
        return [n for n in range(1, max_gpus + 1) if cfg.prompts_per_step % n == 0]
    shards = cfg.prompts_per_step // m
    return [n for n in range(1, max_gpus + 1) if shards % n == 0]
    ### END SOLUTION


# %%
def accepted(cfg, max_gpus=8):
    ok = []
    for n in range(1, max_gpus + 1):
        try:
            cfg.micro_batches(n)
            ok.append(n)
        except ValueError:
            pass
    return ok


def test_06_3():
    full = TrainConfig(prompts_per_step=16, micro_batch_prompts=4, samples_per_prompt=4)
    for cfg in (full, TrainConfig(prompts_per_step=24, micro_batch_prompts=2),
                TrainConfig(prompts_per_step=12, micro_batch_prompts=None)):
        assert my_gpu_counts(cfg) == accepted(cfg), \
            (f"prompts_per_step={cfg.prompts_per_step}, micro_batch_prompts="
             f"{cfg.micro_batch_prompts}: yours {my_gpu_counts(cfg)}, the trainer accepts "
             f"{accepted(cfg)}")


check("06.3", test_06_3, hint="count the micro-batches of a step (prompts_per_step / "
      "micro_batch_prompts); each process must get the same number of them. With "
      "micro_batch_prompts=None each process takes one micro-batch of its own share.")

# %% [markdown]
# ## What to try next
#
# - Add `("jsd", "opd")`, `("jsd", "opd+")` and the reverse-KL arms to `ARMS` for the
#   paper's full comparison (JSD collapses under OPD through drifting length and teacher
#   KL rather than gradient norm).
# - Try `gamma=1.0` (the divergence-to-go of notebook 03) or `baseline="loo"` in
#   `config_for`.
# - Set `warm_steps` to 0 in the smoke recipe: does OPD+ still beat OPD without the
#   sequence-KD warm start?
# - Redo exercise 06.1 with `micro_batch_prompts=1` and with 1,024 new tokens: which term
#   grows, and which does not move?
#
# ## Quiz
#
# **Q1.** The student keeps float32 master weights although it computes in bf16. Why?
#
# ### BEGIN SOLUTION
# bf16 has an 8-bit mantissa: an AdamW update of lr 1e-5 times a weight near 1 is below
# half a unit in the last place, so it would round away and the weights would not move.
# The float32 copy accumulates the small updates; bf16 is used only for the arithmetic.
# ### END SOLUTION
#
# **Q2.** In the memory budget, which terms grow with the batch (rows) and the sequence
# length, and which do not?
#
# ### BEGIN SOLUTION
# The KV cache, the logits and the activations grow with rows x length (the logits with
# rows x new tokens x vocabulary); the teacher's weights and the student's weights,
# gradients and AdamW moments do not. Smaller micro-batches (more gradient accumulation)
# shrink the first group only.
# ### END SOLUTION
#
# **Q3.** The warm-start steps have no teacher KL in the History. Why, and why does that
# matter when you read the collapse signals?
#
# ### BEGIN SOLUTION
# The warm start is supervised sequence-level KD on teacher samples: there is no student
# rollout to score, so no on-policy teacher KL. The collapse signals must be read over the
# on-policy steps only, or the warm start's numbers would be mixed into "start" and "max".
# ### END SOLUTION
#
# **Next:** notebook 07 takes on-policy distillation to tool use: multi-turn rollouts,
# a loss mask with holes, and BFCL-style grading.
