"""One optimizer step of on-policy distillation: sample, count, score + back-propagate, update.

``train_step(state, step)`` is everything ``opdplus.trainer.train`` does per step:

1. **Sample** (``collect_rollouts``). The step's prompts are cut into micro-batches
   ("shards") of ``micro_batch_prompts`` prompts; process r handles shards k with
   ``k % processes == r``. Each shard is sampled G times per prompt with a generator
   seeded from ``(seed, step, k)``: the rollouts, and so the whole run, do not depend on
   how many processes share the work, and a resumed run repeats them exactly. A shard
   may instead be off-policy (``mix_lambda``: teacher samples or dataset completions)
   or, during ``seqkd_warmup_steps``, a teacher sample to imitate (``shard_kind``).
2. **Count.** N = completion tokens over all shards of all processes (one all-reduce).
3. **Score and back-propagate** (``accumulate_gradients``), shard by shard: student
   log-probs with grad, teacher log-probs without, then ``pg_loss`` (OPD / OPD+) or
   ``logit_distillation_loss``, each divided by N / W (W processes: DDP averages the
   gradients, so the result is sum / N). DDP synchronises on the last shard only.
4. **Update.** Clip the global gradient norm, AdamW, LR schedule. A non-finite loss or
   gradient on any process skips the update on all of them (the caller counts skips).

Statistics are summed over shards and processes and turned into the step's record
(``_record``): loss, teacher reverse KL on the student's rollouts, gradient norm,
completion length, truncation and clip fractions, advantage mean/std, timings.

Simplified: rollouts are generated shard by shard with the training model (no separate
inference engine); the teacher is a full replica on every process.
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import torch

from .checkpoint import History
from .config import TrainConfig
from .estimators import logit_distillation_loss, pg_loss
from .prompts import EncodedPrompts, derive_seed, prompt_indices
from .sampler import Rollout, rollout_from_sequences, sample, score
from .scoring import scatter_rows
from .tooluse import TOOL_STAT_KEYS, tool_record


@dataclass
class RunState:
    """Everything one process needs between steps (built by ``setup``)."""

    config: TrainConfig
    accelerator: Any
    model: torch.nn.Module  # the student, as prepared by Accelerate (maybe DDP/FSDP-wrapped)
    teacher: torch.nn.Module
    optimizer: Any
    scheduler: Any
    tokenizer: Any
    data: EncodedPrompts
    vocab_size: int
    eos_ids: List[int]
    pad_id: int
    generator: torch.Generator
    shard_prompts: int  # prompts per micro-batch
    shards_per_process: int
    history: History = field(default_factory=History)
    start_step: int = 0
    nonfinite_steps: int = 0
    # Draws the sampled shards instead of ``sample`` (same keywords, returns a Rollout), e.g.
    # ``opdplus.tooluse.tool_rollout_fn``; None: ``sample``.
    rollout_fn: Any = None

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def generation_model(self) -> torch.nn.Module:
        # FSDP shards the weights: only the wrapped forward gathers them. Otherwise the plain
        # module avoids DDP's per-forward buffer broadcast during decoding.
        if str(self.accelerator.distributed_type).endswith("FSDP"):
            return self.model
        return self.unwrapped


def shard_kind(config: TrainConfig, step: int, shard: int) -> str:
    """What shard ``shard`` of step ``step`` trains on: student, teacher, dataset or seqkd."""
    if step < config.seqkd_warmup_steps:
        return "seqkd"
    if config.mix_lambda > 0:
        u = random.Random(derive_seed(config.seed, "mix", step, shard)).random()
        if u < config.mix_lambda:
            return config.mix_source
    return "student"


def collect_rollouts(state: RunState, step: int) -> List[Tuple[str, Rollout]]:
    """This process's micro-batches of step ``step``: a list of (kind, Rollout)."""
    c, acc = state.config, state.accelerator
    n_shards = state.shards_per_process * acc.num_processes
    order = prompt_indices(len(state.data), c.seed, step * c.prompts_per_step, c.prompts_per_step)
    out = []
    for k in range(acc.process_index, n_shards, acc.num_processes):
        idx = order[k * state.shard_prompts : (k + 1) * state.shard_prompts]
        prompts = [state.data.prompt_ids[i] for i in idx]
        kind = shard_kind(c, step, k)
        if kind == "dataset":
            r = rollout_from_sequences(
                [p for p in prompts for _ in range(c.samples_per_prompt)],
                [state.data.completion_ids[i] for i in idx for _ in range(c.samples_per_prompt)],
                pad_token_id=state.pad_id,
                eos_token_id=state.eos_ids,
                group_size=c.samples_per_prompt,
                device=acc.device,
            )
        else:
            state.generator.manual_seed(derive_seed(c.seed, "sample", step, k))
            policy = state.generation_model if kind == "student" else state.teacher
            with acc.autocast():
                r = (state.rollout_fn or sample)(
                    policy,
                    prompts,
                    G=c.samples_per_prompt,
                    generator=state.generator,
                    eos_token_id=state.eos_ids,
                    pad_token_id=state.pad_id,
                    max_new_tokens=c.max_new_tokens,
                    temperature=c.temperature,
                    top_p=c.top_p,
                    top_k=c.top_k,
                    vocab_size=state.vocab_size,
                    source="student" if kind == "student" else "teacher",
                )
        out.append((kind, r))
    return out


_STAT_KEYS = (
    "loss",
    "tokens",
    "kl_sum",
    "kl_tokens",
    "clipped",
    "adv_sum",
    "adv_sq",
    "adv_n",
    "rows",
    "len_sum",
    "truncated",
    "nonfinite",
    "offpolicy",
    "ratio_trunc",
) + TOOL_STAT_KEYS


def _micro_loss(
    state: RunState, kind: str, r: Rollout, n_norm: float
) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Loss of one micro-batch (normalised by ``n_norm``) and its summable statistics."""
    c = state.config
    mask = r.completion_mask
    need_logits = kind != "seqkd" and (c.loss == "logits" or c.baseline == "analytic")
    with state.accelerator.autocast():
        s = score(
            state.model,
            r,
            grad=True,
            return_logits=need_logits,
            vocab_size=state.vocab_size,
            chunk_size=c.logp_chunk_size,
        )
        t = score(
            state.teacher,
            r,
            grad=False,
            return_logits=need_logits,
            vocab_size=state.vocab_size,
            chunk_size=c.logp_chunk_size,
        )
    st = dict.fromkeys(_STAT_KEYS, 0.0)
    st["tokens"] = float(mask.sum())
    finite = bool(
        torch.isfinite(s.logp_BT.detach()[mask]).all() and torch.isfinite(t.logp_BT[mask]).all()
    )
    if not finite:  # keep every process's backward calls aligned; the step is skipped later
        st["nonfinite"] = 1.0
        return s.logp_BT.sum() * float("nan"), st
    if kind == "student":
        st["kl_sum"] = float(((s.logp_BT.detach() - t.logp_BT) * mask).sum())
        st["kl_tokens"] = st["tokens"]
        st["rows"] = float(mask.shape[0])
        st["len_sum"] = float(mask.sum())
        st["truncated"] = float(r.truncated.sum())
        st.update(r.tool_stats() if hasattr(r, "tool_stats") else {})
    else:
        st["offpolicy"] = 1.0
    if kind == "seqkd":
        loss = -(s.logp_BT * mask).sum() / n_norm
    elif c.loss == "logits":
        ones = torch.ones(s.logits_NV.shape[0], dtype=torch.bool, device=s.logits_NV.device)
        loss, _ = logit_distillation_loss(
            s.logits_NV, t.logits_NV, ones, c.divergence_obj, num_tokens=n_norm
        )
    else:
        baseline_BT = None
        if c.baseline == "analytic":
            b_N = c.divergence_obj.expected_advantage(
                s.logits_NV.detach(), t.logits_NV, c.estimator, clip_log_u=c.clip_range
            )
            baseline_BT = scatter_rows(b_N.float(), mask)
        loss, m = pg_loss(
            s.logp_BT,
            t.logp_BT,
            mask,
            c.divergence_obj,
            c.estimator,
            # On-policy at temperature 1 the sampler *is* the student: rho = 1 exactly, rather
            # than exp(full-forward - cached-decoding log-prob), which differs by rounding.
            sampler_logp_BT=(None if r.source == "student" and r.on_policy_untempered
                             else r.sampler_logp),
            gamma=c.gamma,
            baseline=c.baseline,
            baseline_BT=baseline_BT,
            group_size=r.group_size,
            clip_log_u=c.clip_range,
            max_importance_ratio=c.max_importance_ratio,
            num_tokens=n_norm,
            # Tempered student rollouts with gamma > 0: prefix-product weights restore the
            # student's state distribution (estimators). Teacher shards are mixed in for
            # their states (GKD-style): the per-token ratio only.
            prefix_weights=None if r.source == "student" else False,
        )
        n = m["tokens"]
        st["clipped"] = m["clip_frac"] * n
        st["adv_sum"] = m["adv_mean"] * n
        st["adv_sq"] = m["adv_std"] ** 2 * max(n - 1, 0) + n * m["adv_mean"] ** 2
        st["adv_n"] = float(n)
        st["ratio_trunc"] = m["ratio_trunc_frac"] * n
        if n:  # the raw importance ratio's maximum (a max, not summed with the others)
            st["ratio_max"] = m["ratio_max"]
    st["loss"] = float(loss.detach())
    return loss, st


def accumulate_gradients(state: RunState, rollouts: List[Tuple[str, Rollout]]) -> Dict[str, float]:
    """Back-propagate every micro-batch (DDP syncs on the last); return the summed statistics.

    Also returns the timing of scoring and backward for this process.
    """
    acc = state.accelerator
    n_local = torch.tensor(float(sum(r.num_tokens for _, r in rollouts)), device=acc.device)
    n_global = float(acc.reduce(n_local, "sum"))
    n_norm = max(n_global, 1.0) / acc.num_processes  # DDP averages over processes
    totals = dict.fromkeys(_STAT_KEYS, 0.0)
    ratio_max = float("-inf")
    t_score = t_back = 0.0
    for i, (kind, r) in enumerate(rollouts):
        sync = i == len(rollouts) - 1
        with contextlib.nullcontext() if sync else acc.no_sync(state.model):
            t0 = time.perf_counter()
            loss, st = _micro_loss(state, kind, r, n_norm)
            t1 = time.perf_counter()
            acc.backward(loss)
            t_back += time.perf_counter() - t1
            t_score += t1 - t0
        ratio_max = max(ratio_max, st.pop("ratio_max", float("-inf")))
        for k, v in st.items():
            totals[k] += v
    vec = torch.tensor([totals[k] for k in _STAT_KEYS], dtype=torch.float64, device=acc.device)
    summed = acc.reduce(vec, "sum").tolist()
    out = dict(zip(_STAT_KEYS, summed))
    out["loss"] /= acc.num_processes
    if acc.num_processes > 1:
        ratio_max = float(acc.gather(torch.tensor([ratio_max], device=acc.device)).max())
    out["ratio_max"] = ratio_max if math.isfinite(ratio_max) else None
    out["t_score"], out["t_backward"] = t_score, t_back
    return out


def _record(
    step: int, st: Dict[str, float], grad_norm: float, lr: float, skipped: bool
) -> Dict[str, Any]:
    def ratio(a, b):
        return st[a] / st[b] if st[b] > 0 else None

    adv_mean = ratio("adv_sum", "adv_n")
    adv_var = (
        (st["adv_sq"] - st["adv_n"] * adv_mean**2) / (st["adv_n"] - 1)
        if adv_mean is not None and st["adv_n"] > 1
        else None
    )
    return {
        "step": step,
        "loss": None if skipped else st["loss"],
        "teacher_kl": ratio("kl_sum", "kl_tokens"),
        "grad_norm": grad_norm,
        "completion_len": ratio("len_sum", "rows"),
        "truncation_frac": ratio("truncated", "rows"),
        "clip_frac": ratio("clipped", "adv_n"),
        "ratio_max": st.get("ratio_max"),  # raw per-token importance ratio, not truncated
        "ratio_trunc_frac": ratio("ratio_trunc", "adv_n"),
        "adv_mean": adv_mean,
        "adv_std": math.sqrt(max(adv_var, 0.0)) if adv_var is not None else None,
        "tokens": int(st["tokens"]),
        "offpolicy_shards": int(st["offpolicy"]),
        "lr": lr,
        "skipped": skipped,
        **tool_record(st),
    }


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train_step(state: RunState, step: int) -> Dict[str, Any]:
    """One optimizer step (sample, score, backward, update); returns its History record."""
    c, acc = state.config, state.accelerator
    t0 = time.perf_counter()
    rollouts = collect_rollouts(state, step)
    t_gen = time.perf_counter() - t0
    st = accumulate_gradients(state, rollouts)
    skipped, grad_norm, unscaled = st["nonfinite"] > 0, None, False
    if not skipped:
        max_norm = c.max_grad_norm if c.max_grad_norm is not None else float("inf")
        grad_norm = float(acc.clip_grad_norm_(state.model.parameters(), max_norm))
        unscaled = True
        skipped = not math.isfinite(grad_norm)
    lr = state.scheduler.get_last_lr()[0]
    fp16_overflow = skipped and unscaled and getattr(acc, "scaler", None) is not None
    if fp16_overflow:
        # fp16 loss scaling: an overflow is routine. The scaler's own step skips the update
        # and backs off the scale; without it the next unscale_ would raise.
        state.optimizer.step()
    elif skipped:
        state.nonfinite_steps += 1
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # a skipped first step makes torch warn about the call order
        warnings.simplefilter("ignore", UserWarning)
        state.scheduler.step()
    rec = _record(step, st, grad_norm, lr, skipped)
    t_step = time.perf_counter() - t0
    rec.update(
        nonfinite_steps=state.nonfinite_steps,
        t_generate=t_gen,
        t_score=st["t_score"],
        t_backward=st["t_backward"],
        t_step=t_step,
        tokens_per_s=st["tokens"] / max(t_step, 1e-9),
        peak_mem_mb=_peak_mem_mb(acc.device),
    )
    if rollouts and rollouts[0][1].num_tokens and state.tokenizer is not None:
        r = rollouts[0][1]
        rec["sample"] = state.tokenizer.decode(
            r.completion_ids[0][r.completion_mask[0]].tolist(), skip_special_tokens=True
        )
    return rec
