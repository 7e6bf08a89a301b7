"""The distillation loop: ``train(student, teacher, tokenizer, prompts, config) -> History``.

``train`` validates everything a user can get wrong before any compute (``setup``:
prompts, tokenizers and vocabulary, the batch split over processes, an existing or
missing checkpoint), then runs ``config.steps`` optimizer steps (``opdplus.step``:
sample -> score -> loss -> AdamW, with the loss normalised by the global completion-token
count) and returns a ``History``: one dict per step with loss, teacher KL, gradient norm,
completion length, truncation and clip fractions, advantage statistics, throughput and
timings, plus the numbers of each evaluation.

Around the steps: a tqdm progress bar, callbacks ``cb(step, record, history)`` for live
plots, ``OUT/history.json`` rewritten after every step, periodic evaluation, atomic
checkpoints (``opdplus.checkpoint``; by default every ``checkpoint_every`` steps or
``checkpoint_minutes`` of wall clock, whichever comes first) and exact resumption, and a
guard that skips steps with a non-finite loss or gradient and stops after
``max_nonfinite_steps`` of them.

Distribution is Hugging Face Accelerate (``accelerate launch``; DDP tested on two CPU
processes, an FSDP config is documented in ``configs/``). Dropout stays off (``eval()``):
the loss needs the log-probs of the policy that sampled. Evaluation, callbacks and files
run on the main process only.

Simplified: a constant learning rate after a linear warm-up; no sharded generation engine.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from .checkpoint import (
    CheckpointError,
    History,
    checkpoint_root,
    latest_checkpoint,
    load_model_weights,
    load_training_state,
    read_trainer_state,
    save_checkpoint,
)
from .config import RESUMABLE_CHANGES, TrainConfig, preset  # noqa: F401  (re-exported)
from .progress import enabled as progress_enabled
from .preflight import preflight
from .prompts import PromptLike, context_length, encode_prompts
from .sampler import sample, score
from .step import RunState, accumulate_gradients, collect_rollouts, shard_kind, train_step  # noqa: F401

Callback = Callable[[int, Dict[str, Any], History], None]
EvalFn = Callable[[torch.nn.Module, int], Dict[str, float]]

VOLATILE_KEYS = (
    "t_generate",
    "t_score",
    "t_backward",
    "t_eval",
    "t_step",
    "tokens_per_s",
    "time",
    "peak_mem_mb",
)
"""Record keys that measure the machine, not the run (left out when comparing runs)."""


class NonFiniteLossError(RuntimeError):
    """Too many steps had a non-finite loss or gradient."""


def _eos_ids(tokenizer, *models) -> List[int]:
    ids = []
    for src in [tokenizer.eos_token_id] + [
        getattr(getattr(m, "generation_config", None), "eos_token_id", None) for m in models
    ]:
        for i in [src] if isinstance(src, int) else list(src or []):
            if i not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before training")
    return ids


def make_adamw(params: List[torch.nn.Parameter], **kw) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where it exists for these parameters, else the default.

    On CPU the default implementation loops over the tensors in Python, several times slower
    than the fused kernel for a 135M-parameter student (``benchmarks/``); the fused kernel
    computes the same update up to float rounding. Other devices, or a torch without it, fall
    back to the default.
    """
    params = list(params)
    kinds = {p.device.type for p in params}
    if params and kinds <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params):
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):  # a torch without this fused kernel
            pass
    return torch.optim.AdamW(params, **kw)


def _make_accelerator(config: TrainConfig, student: torch.nn.Module):
    """An ``Accelerator`` on the student's device type, with ``config.mixed_precision``."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    on_cpu = next(student.parameters()).device.type == "cpu"
    mp = None if config.mixed_precision == "auto" else config.mixed_precision
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and AcceleratorState._shared_state:
        # Accelerate keeps one process-wide state and refuses a second Accelerator with
        # another device or precision; a single process (a notebook running several
        # trainings) may safely start afresh.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=on_cpu, mixed_precision=mp)


def setup(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    tokenizer,
    prompts: Sequence[PromptLike],
    config: TrainConfig,
    *,
    accelerator=None,
    out_dir: Union[str, Path, None] = None,
    resume: bool = False,
    teacher_tokenizer=None,
    rollout_fn=None,
) -> RunState:
    """Validate inputs, prepare models and optimizer, and restore a checkpoint when resuming.

    All checks a user can fail (prompts, tokenizer/vocabulary, batch split, existing or
    missing checkpoint) run here, before any sampling.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    acc = accelerator if accelerator is not None else _make_accelerator(config, student)
    shard_prompts, shards_per_process = config.micro_batches(acc.num_processes)
    # ``tokenizer`` is the student's; the teacher's, when given, must match it exactly.
    vocab_size = preflight(teacher_tokenizer or tokenizer, tokenizer, teacher, student)
    limits = [c for c in (context_length(student), context_length(teacher)) if c]
    room = (min(limits) - config.max_new_tokens) if limits else None
    if room is not None and room < 1:
        raise ValueError(
            f"max_new_tokens ({config.max_new_tokens}) leaves no room for a prompt in the "
            f"models' context of {min(limits)} tokens"
        )
    caps = [x for x in (config.max_prompt_tokens, room) if x is not None]
    max_prompt = min(caps) if caps else 10**9
    data = encode_prompts(
        tokenizer,
        prompts,
        max_prompt_tokens=max_prompt,
        truncation=config.prompt_truncation,
        use_chat_template=config.use_chat_template,
        max_completion_tokens=config.max_new_tokens,
    )
    if config.mix_lambda > 0 and config.mix_source == "dataset" and data.completion_ids is None:
        raise ValueError("mix_source='dataset' needs a 'completion' string in every prompt record")
    eos_ids = _eos_ids(tokenizer, student)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    if out_dir is not None and acc.is_main_process:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    ckpt = latest_checkpoint(out_dir) if out_dir is not None else None
    if resume and ckpt is None:
        raise CheckpointError(_no_checkpoint_message(out_dir, config))
    if not resume and ckpt is not None:
        raise CheckpointError(
            f"{out_dir} already holds a checkpoint ({ckpt.name}); pass resume=True to "
            "continue it, or choose another out_dir"
        )
    if resume:  # verify and check compatibility before touching the student
        _check_resumable(read_trainer_state(ckpt).get("config", {}), config, ckpt)
        load_model_weights(ckpt, student)

    student.eval()  # dropout off: the loss needs the log-probs of the policy that sampled
    teacher.eval().requires_grad_(False)
    teacher.to(acc.device)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_adamw(
        params, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
    )
    warm = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (warm + 1))
    )
    # The scheduler is not prepared: Accelerate would step it once per process.
    model, optimizer = acc.prepare(student, optimizer)
    state = RunState(
        config=config,
        accelerator=acc,
        model=model,
        teacher=teacher,
        optimizer=optimizer,
        scheduler=scheduler,
        tokenizer=tokenizer,
        data=data,
        vocab_size=vocab_size,
        eos_ids=eos_ids,
        pad_id=pad_id,
        generator=torch.Generator(device=acc.device),
        shard_prompts=shard_prompts,
        shards_per_process=shards_per_process,
        rollout_fn=rollout_fn,
    )
    if resume:
        saved = load_training_state(
            ckpt,
            accelerator=acc,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            sampler_generator=state.generator,
        )
        state.history = saved["history"]
        state.start_step = int(saved["step"])
        state.nonfinite_steps = int(saved.get("nonfinite_steps", 0))
    return state


def _no_checkpoint_message(out_dir: Union[str, Path, None], config: TrainConfig) -> str:
    """Why ``resume`` cannot go on, and, when a ``history.json`` shows lost steps, how many."""
    if out_dir is None:
        return "resume requested but no out_dir was given; pass the out_dir of the run to resume"
    msg = f"resume requested but there is no checkpoint in {checkpoint_root(out_dir)}"
    hist = Path(out_dir) / "history.json"
    try:
        lost = len(History.load(hist)) if hist.is_file() else 0
    except (OSError, ValueError):
        lost = 0
    if not lost:
        return msg + "; run without resume to start fresh"
    every = (
        f"checkpoint_every={config.checkpoint_every}, checkpoint_minutes="
        f"{config.checkpoint_minutes:g}"
    )
    return (
        f"{msg}, although {hist} records {lost} finished step(s): the run stopped before its "
        f"first checkpoint, so those {lost} step(s) are lost. Start again without resume "
        f"(history.json is rewritten). A killed run loses only the steps since its last "
        f"checkpoint; keep periodic checkpoints on, and shorten the intervals if that is too "
        f"much to lose (now {every}; 0 turns one off)"
    )


def _check_resumable(saved: Dict[str, Any], config: TrainConfig, ckpt: Path) -> None:
    now = config.to_dict()
    diff = sorted(
        k
        for k in set(saved) | set(now)
        if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)
    )
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
        raise CheckpointError(
            f"the config differs from the one saved in {ckpt} ({details}); only "
            f"{', '.join(RESUMABLE_CHANGES)} may change when resuming"
        )


# ----------------------------------------------------------------------------- the loop


def train(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    tokenizer,
    prompts: Sequence[PromptLike],
    config: TrainConfig,
    eval_fn: Optional[EvalFn] = None,
    callbacks: Sequence[Callback] = (),
    out_dir: Union[str, Path, None] = None,
    resume: bool = False,
    accelerator=None,
    teacher_tokenizer=None,
    rollout_fn=None,
) -> History:
    """Distil ``teacher`` into ``student`` on ``prompts``; see the module docstring.

    ``eval_fn(model, step) -> dict`` runs after every ``config.eval_every``-th step and
    after the last; its numbers join that step's record under their own names (e.g.
    ``accuracy``), except a name the trainer already uses, which gets the prefix ``eval_``
    (the ``teacher_kl`` of an evaluation becomes ``eval_teacher_kl``).
    ``callbacks``: ``cb(step, record, history)`` after each step (live plots).
    ``out_dir``: writes ``history.json`` after every step and checkpoints under
    ``out_dir/checkpoint/``; ``resume=True`` continues from the newest checkpoint and
    then yields the same History as an uninterrupted run.
    ``teacher_tokenizer``: the teacher's own tokenizer, if it was loaded separately; it is
    compared with ``tokenizer`` (vocabulary, special tokens, chat template) before any
    compute, and a difference raises ``TokenizerMismatchError``.
    ``rollout_fn``: draws the student's (and teacher-sampled) rollouts in place of
    ``opdplus.sampler.sample``, with its keywords; ``opdplus.tooluse.tool_rollout_fn`` gives
    multi-turn rollouts with tools, whose metrics (``tool_calls``, ``tool_turns``,
    ``tool_call_errors_<kind>``, ...) join each step's record.
    The student is trained in place; the returned History is also in ``out_dir``.
    """
    state = setup(
        student,
        teacher,
        tokenizer,
        prompts,
        config,
        accelerator=accelerator,
        out_dir=out_dir,
        resume=resume,
        teacher_tokenizer=teacher_tokenizer,
        rollout_fn=rollout_fn,
    )
    acc, c, history = state.accelerator, config, state.history
    main = acc.is_main_process
    if eval_fn is not None and str(acc.distributed_type).endswith("FSDP"):
        warnings.warn(
            "eval_fn is skipped under FSDP (it runs on the main process only and the "
            "student is sharded); evaluate the saved checkpoints instead"
        )
        eval_fn = None
    t_start = t_saved = time.perf_counter()
    bar = tqdm(
        range(state.start_step, c.steps),
        initial=state.start_step,
        total=c.steps,
        disable=not (main and c.progress and progress_enabled(None)),
        desc=f"{c.divergence} {c.estimator}",
    )
    for step in bar:
        rec = train_step(state, step)
        if rec["skipped"] and state.nonfinite_steps > c.max_nonfinite_steps:
            history.append(rec)
            if main and out_dir is not None:
                history.save(Path(out_dir) / "history.json")
            raise NonFiniteLossError(
                f"step {step}: {state.nonfinite_steps} steps had a non-finite loss or gradient "
                f"(limit max_nonfinite_steps={c.max_nonfinite_steps}); the weights are those of "
                "the last good step. Lower lr, keep clip_log_u, or check the teacher's outputs "
                "(fp16 overflow?)"
            )
        last = step == c.steps - 1
        if (
            eval_fn is not None
            and main
            and (last or (c.eval_every and (step + 1) % c.eval_every == 0))
        ):
            t0 = time.perf_counter()
            with torch.no_grad():
                res = eval_fn(state.unwrapped, step)
            rec.update({(f"eval_{k}" if k in rec else k): v for k, v in (res or {}).items()})
            rec["t_eval"] = time.perf_counter() - t0
        rec["time"] = time.perf_counter() - t_start
        history.append(rec)
        if main:
            bar.set_postfix(
                loss=rec["loss"], teacher_kl=rec["teacher_kl"], grad_norm=rec["grad_norm"]
            )
            if out_dir is not None:
                history.save(Path(out_dir) / "history.json")
            for cb in callbacks:
                cb(step, rec, history)
        if out_dir is not None and _checkpoint_due(acc, c, step, last, t_saved):
            save_checkpoint(
                acc,
                out_dir,
                step + 1,
                state.model,
                state.optimizer,
                state.scheduler,
                history,
                {
                    "step": step + 1,
                    "nonfinite_steps": state.nonfinite_steps,
                    "world_size": acc.num_processes,
                    "config": c.to_dict(),
                },
                sampler_generator=state.generator,
                tokenizer=tokenizer,
                keep=c.keep_checkpoints,
            )
            t_saved = time.perf_counter()
    bar.close()
    return history


def _checkpoint_due(acc, c: TrainConfig, step: int, last: bool, t_saved: float) -> bool:
    """Checkpoint after this step? At the last step, every ``checkpoint_every`` steps, or once
    ``checkpoint_minutes`` have passed since the last save, whichever comes first.

    Saving is a collective call, so under several processes the main process's clock
    decides for all (each process reading its own clock could disagree, and hang).
    """
    due = last or bool(c.checkpoint_every and (step + 1) % c.checkpoint_every == 0)
    if due or not c.checkpoint_minutes:
        return due
    due = time.perf_counter() - t_saved >= 60.0 * c.checkpoint_minutes
    if acc.num_processes > 1:
        from accelerate.utils import broadcast

        flag = broadcast(torch.tensor([int(due)], device=acc.device), from_process=0)
        due = bool(flag.item())
    return due


# ----------------------------------------------------------------------------- evaluation helper


def teacher_kl_eval(
    teacher: torch.nn.Module,
    tokenizer,
    prompts: Sequence[PromptLike],
    *,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 1234,
    use_chat_template: bool = False,
) -> EvalFn:
    """An ``eval_fn``: teacher reverse KL, KL(student || teacher) per token, on fresh rollouts.

    Every call samples with the same seed (common random numbers), so two evaluations
    differ because the student changed, not because of sampling noise. Returns
    ``{"teacher_kl", "completion_len", "truncation_frac"}``.
    """
    data = encode_prompts(
        tokenizer, prompts, max_prompt_tokens=10**9, use_chat_template=use_chat_template
    )
    eos = _eos_ids(tokenizer, teacher)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    vocab = preflight(tokenizer, tokenizer)

    @torch.no_grad()
    def evaluate(model: torch.nn.Module, step: int = -1) -> Dict[str, float]:
        dev = next(model.parameters()).device
        g = torch.Generator(device=dev).manual_seed(seed)
        r = sample(
            model,
            data.prompt_ids,
            G=samples_per_prompt,
            generator=g,
            eos_token_id=eos,
            pad_token_id=pad,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            vocab_size=vocab,
        )
        lp = score(model, r, vocab_size=vocab).logp_BT
        t_dev = next(teacher.parameters()).device
        lq = score(teacher, r.to(t_dev), vocab_size=vocab).logp_BT.to(dev)
        m = r.completion_mask
        return {
            "teacher_kl": float(((lp - lq) * m).sum() / m.sum().clamp_min(1)),
            "completion_len": float(m.sum(-1).float().mean()),
            "truncation_frac": float(r.truncated.float().mean()),
        }

    return evaluate
