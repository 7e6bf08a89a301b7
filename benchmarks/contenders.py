"""One contender of the step benchmark, in a process of its own: load, warm up, time steps.

``python benchmarks/contenders.py NAME --size tiny|smollm2 --steps K`` loads the size's teacher,
student and prompts, runs one warm-up step and then K timed steps of contender NAME, and prints
one JSON line: seconds per step, completion tokens per step, the step's own split, and the
process's peak RSS (``ru_maxrss``) before and after training (on CUDA, peak allocated memory).

Contenders (all on-policy, temperature 1, no top-k/top-p, full-vocabulary JSD at beta = 0.5
unless said otherwise):

- ``opd_logits``: ``opdplus.trainer.train`` with ``loss="logits"`` (the like-for-like mode);
- ``opd_pg``: ``opdplus.trainer.train`` with ``loss="pg"``, the sampled-token OPD+ estimator;
- ``trl_gkd``: TRL ``GKDTrainer`` with ``lmbda=1`` (every step on-policy), gradient
  checkpointing off (with it on, GKD also drops the KV cache in generation);
- ``trl_distill``: TRL ``DistillationTrainer``, gradient checkpointing off;
- ``bare``: the bare compute, plain transformers calls: ``generate`` with the KV cache (a row
  ends at EOS, as in every contender), the teacher's forward, the student's forward,
  cross-entropy and backward (full logits at every position), one fused AdamW step.
- ``floor``: the same three passes with logits only where a loss needs them (the completion
  positions, ``logits_to_keep``) and nothing else. No trainer that runs ``generate``, a teacher
  forward and a student forward and backward on these tokens can be faster, so its tokens/s
  over a TRL trainer's is the largest speed-up any implementation could show against it.

Every trainer gets the same models, prompts (chat template), batch (one sample per prompt),
rollout length, temperature and learning rate, fp32 on CPU (bf16 with ``--dtype bf16``), and
its fastest settings: fused AdamW where torch has it, no gradient checkpointing, no logging,
no checkpoints. TRL is optional (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONTENDERS = ("opd_logits", "opd_pg", "trl_gkd", "trl_distill", "bare", "floor")
TRL_CONTENDERS = ("trl_gkd", "trl_distill")

_SMOLLM2_TOPICS = ("a lighthouse keeper", "a lost robot", "the first snow of winter",
                   "a market in the rain", "a clockmaker's apprentice", "a river that sings",
                   "a forgotten library", "a night train to the sea", "a fox and a crow",
                   "a city under glass", "a kite that would not fly", "the last bakery in town",
                   "a map with no roads", "an old violin", "a garden on the moon",
                   "a letter never sent")


@dataclass(frozen=True)
class Size:
    """A benchmark size: which models, how many prompts, how long the rollouts."""

    name: str
    prompts: int
    max_new_tokens: int


SIZES = {
    "tiny": Size("tiny", prompts=16, max_new_tokens=48),
    "smollm2": Size("smollm2", prompts=8, max_new_tokens=32),
    # Only for the test suite's smoke run: the tiny world's models at a few tokens.
    "smoke": Size("smoke", prompts=2, max_new_tokens=4),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _rss_mb()


def load(size: Size, device: str, dtype: str):
    """(teacher, student, tokenizer, prompt strings) for ``size``, on ``device`` in ``dtype``."""
    import torch

    from opdplus import models, tasks, tinyworld

    # bf16: the teacher in bf16, the student in float32 under bf16 autocast (every contender).
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    if size.name == "smollm2":
        teacher, tok = models.load_smollm2(device=device, dtype=dt)
        student = models.truncated_student(teacher, 6).float()
        prompts = [f"Write a long story about {t}." for t in _SMOLLM2_TOPICS[: size.prompts]]
    else:
        tok = tinyworld.load_tokenizer()
        teacher = tinyworld.load_teacher(device=device, dtype=dt)
        student = tinyworld.load_student(device=device, dtype=torch.float32)
        prompts = [r["question"] for r in tasks.load_split("train")[: size.prompts]]
    for m in (teacher, student):
        m.config.use_cache = True
        m.generation_config.pad_token_id = tok.pad_token_id
    teacher.eval().requires_grad_(False)
    return teacher, student, tok, prompts


def fused_adamw(params, lr: float):
    """AdamW with the fused kernel where this torch has it (CPU and CUDA), else the default."""
    import torch

    try:
        return torch.optim.AdamW(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr)


# ----------------------------------------------------------------------------- contenders

LR = 1e-5


def run_opdplus(name, size, teacher, student, tok, prompts, steps, dtype) -> Dict:
    from opdplus import trainer
    from opdplus.config import TrainConfig

    stamps: List[float] = []
    cpu: List[float] = []
    cfg = TrainConfig(
        divergence="jsd", divergence_params={"beta": 0.5},
        loss="logits" if name == "opd_logits" else "pg", estimator="opd+",
        steps=steps + 1, lr=LR, prompts_per_step=size.prompts, samples_per_prompt=1,
        max_new_tokens=size.max_new_tokens, temperature=1.0, use_chat_template=True,
        checkpoint_every=0, checkpoint_minutes=0.0, progress=False,
        mixed_precision="bf16" if dtype == "bf16" else "no",
    )
    def stamp(step, rec, hist):
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())

    t0, c0 = time.perf_counter(), time.process_time()
    hist = trainer.train(student, teacher, tok, prompts, cfg, callbacks=[stamp])
    recs = list(hist)[1:]
    return {
        "step_s": _diffs(t0, stamps),
        "step_cpu_s": _diffs(c0, cpu),
        "tokens": [r["tokens"] for r in recs],
        "split": {k: [r[f"t_{k}"] for r in recs] for k in ("generate", "score", "backward")},
    }


def _diffs(start: float, stamps: List[float]) -> List[float]:
    """Durations between consecutive stamps, the first step (the warm-up) left out."""
    return [b - a for a, b in zip([start] + stamps, stamps)][1:]


class _StepClock:
    """A TrainerCallback that stamps the end of every optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if not clock.stamps:
                    clock.t_first, clock.c_first = time.perf_counter(), time.process_time()

            def on_step_end(self, args, state, control, **kw):
                clock.stamps.append(time.perf_counter())
                clock.cpu.append(time.process_time())

        self.stamps: List[float] = []
        self.cpu: List[float] = []
        self.t_first = self.c_first = None
        self.callback = CB()


def _trl_common(size, steps, dtype, out):
    return dict(
        output_dir=out, max_steps=steps + 1, per_device_train_batch_size=size.prompts,
        gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="constant",
        gradient_checkpointing=False, bf16=dtype == "bf16", fp16=False,
        report_to="none", save_strategy="no", logging_steps=10_000, disable_tqdm=True,
        dataloader_num_workers=0, optim="adamw_torch_fused", max_grad_norm=1.0,
        temperature=1.0, beta=0.5, disable_dropout=True, seed=0,
    )


def run_trl(name, size, teacher, student, tok, prompts, steps, dtype) -> Dict:
    import torch
    from datasets import Dataset

    clock = _StepClock()
    tokens: List[int] = []
    with tempfile.TemporaryDirectory() as out:
        common = _trl_common(size, steps, dtype, out)
        if not torch.cuda.is_available():
            common["use_cpu"] = True
        if name == "trl_gkd":
            from trl.experimental.gkd import GKDConfig, GKDTrainer

            data = Dataset.from_list([
                {"messages": [{"role": "user", "content": p},
                              {"role": "assistant", "content": "."}]}
                for p in prompts])
            args = GKDConfig(**common, lmbda=1.0, max_new_tokens=size.max_new_tokens,
                             max_length=4096, seq_kd=False)
            tr = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                            processing_class=tok, callbacks=[clock.callback])
            orig = tr.generate_on_policy_outputs

            def counted(model, inputs, gen_config):
                ids, attn, labels = orig(model, inputs, gen_config)
                tokens.append(int((labels != -100).sum()))
                return ids, attn, labels

            tr.generate_on_policy_outputs = counted
        else:
            from trl import DistillationConfig, DistillationTrainer

            data = Dataset.from_list(
                [{"prompt": [{"role": "user", "content": p}]} for p in prompts])
            args = DistillationConfig(**common, max_completion_length=size.max_new_tokens,
                                      top_k=0, top_p=1.0, shuffle_dataset=False)
            tr = DistillationTrainer(model=student, teacher_model=teacher, args=args,
                                     train_dataset=data, processing_class=tok,
                                     callbacks=[clock.callback])
            orig = tr._compute_loss

            def counted(unwrapped, inputs, n):
                if torch.is_grad_enabled():
                    tokens.append(int(inputs["completion_mask"].sum()))
                return orig(unwrapped, inputs, n)

            tr._compute_loss = counted
        tr.train()
    return {"step_s": _diffs(clock.t_first, clock.stamps),
            "step_cpu_s": _diffs(clock.c_first, clock.cpu), "tokens": tokens[1:], "split": {}}


def completion_live(comp_BT, eos_ids):
    """(B, T) bool: the sampled tokens up to and including each row's first EOS (the padding
    ``generate`` adds after a row ends is not a token), the convention of every contender."""
    import torch

    is_eos = torch.isin(comp_BT, eos_ids).long()
    return (is_eos.cumsum(1) - is_eos) == 0


def run_bare(name, size, teacher, student, tok, prompts, steps, dtype) -> Dict:
    """The bare compute of one step, with plain transformers calls; see the module docstring.

    ``name == "floor"``: logits only at the T + 1 last positions (the completion's predictions),
    the least any trainer of these three passes computes."""
    import torch
    import torch.nn.functional as F

    device = next(student.parameters()).device
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                     add_generation_prompt=True) for p in prompts]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    P = enc["input_ids"].shape[1]
    eos = student.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=device)
    student.train(False)
    student.requires_grad_(True)
    opt = fused_adamw(student.parameters(), LR)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    out = {"step_s": [], "step_cpu_s": [], "tokens": [], "split": {"generate": [], "teacher": [],
                                                   "student": [], "adamw": []},
           "loss": []}
    torch.manual_seed(0)
    for i in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad(), autocast:
            seq = student.generate(**enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                   max_new_tokens=size.max_new_tokens, use_cache=True,
                                   pad_token_id=tok.pad_token_id)
        live = completion_live(seq[:, P:], eos)
        attn = torch.cat([enc["attention_mask"], live.long()], 1)
        t1 = time.perf_counter()
        T = seq.shape[1] - P
        keep = {"logits_to_keep": T + 1} if name == "floor" else {}
        with torch.no_grad(), autocast:
            teacher(input_ids=seq, attention_mask=attn, **keep).logits
        t2 = time.perf_counter()
        with autocast:
            logits = student(input_ids=seq, attention_mask=attn, **keep).logits
            loss = F.cross_entropy(logits[:, -T - 1:-1].float().flatten(0, 1),
                                   seq[:, P:].masked_fill(~live, -100).flatten())
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i:
            out["step_s"].append(t4 - t0)
            out["step_cpu_s"].append(time.process_time() - c0)
            out["tokens"].append(int(live.sum()))
            out["loss"].append(float(loss.detach()))
            for k, v in zip(("generate", "teacher", "student", "adamw"),
                            (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                out["split"][k].append(v)
    return out


RUNNERS = {"opd_logits": run_opdplus, "opd_pg": run_opdplus, "trl_gkd": run_trl,
           "trl_distill": run_trl, "bare": run_bare, "floor": run_bare}


def run(name: str, size_name: str, steps: int, device: str = "cpu", dtype: str = "fp32",
        threads: int = 0) -> Dict:
    """Run contender ``name`` at ``size_name`` in this process; returns its JSON record."""
    import torch

    if name not in RUNNERS:
        raise ValueError(f"unknown contender {name!r}; expected one of {CONTENDERS}")
    if size_name not in SIZES:
        raise ValueError(f"unknown size {size_name!r}; expected one of {tuple(SIZES)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1 (after one warm-up step), got {steps}")
    if threads:
        torch.set_num_threads(threads)
    size = SIZES[size_name]
    rss0 = _rss_mb()
    teacher, student, tok, prompts = load(size, device, dtype)
    dev = next(student.parameters()).device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    loaded = _peak_mb(dev)
    res = RUNNERS[name](name, size, teacher, student, tok, prompts, steps, dtype)
    if len(res["step_s"]) != steps:
        raise RuntimeError(f"{name}: timed {len(res['step_s'])} steps, expected {steps}")
    return {
        "contender": name, "size": size_name, "device": str(dev), "dtype": dtype,
        "threads": torch.get_num_threads(), "prompts": size.prompts,
        "max_new_tokens": size.max_new_tokens, **res,
        "rss_start_mb": rss0, "mem_loaded_mb": loaded, "peak_mem_mb": _peak_mb(dev),
        "pid": os.getpid(),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("contender", choices=CONTENDERS)
    ap.add_argument("--size", default="smollm2", choices=tuple(SIZES))
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OPDPLUS_QUIET", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    print(json.dumps(run(a.contender, a.size, a.steps, a.device, a.dtype, a.threads)))


if __name__ == "__main__":
    main()
