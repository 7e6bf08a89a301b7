"""The tiny tool world's models: SFT on worked transcripts, greedy multi-turn evaluation, loaders.

- **SFT data** (``encode_transcript``, ``make_batch``): a task's chat ``messages`` rendered by
  the tokenizer's chat template with the world's tools, and a loss mask that covers only the
  assistant's tokens: each tool call block, the final answer and the ``<|im_end|>`` that
  ends each assistant turn. The system turn, the question, the tool results and the
  template tokens around them (``\\n<|im_start|>user\\n<tool_response>...``, the
  ``<|im_start|>assistant\\n`` header) are conditioned on but never trained on, exactly the
  tokens that ``opdplus.tooluse.rollout_with_tools`` inserts with completion mask 0.
- **Models**: the math world's tiny Llamas (``opdplus.tinyworld.ModelSpec``) with a longer
  context (a two-call transcript is ~155 tokens).
- **SFT** (``sft``): the math world's recipe (AdamW, warm-up, constant LR, linear decay at
  the end; ``tinyworld.SFTConfig`` and ``lr_at``), on fresh tasks every step.
- **Evaluation** (``evaluate``): greedy multi-turn rollouts with the real tools
  (``rollout_with_tools`` at temperature 0), graded on the final answer (Wilson interval)
  and, separately, on every call: parse rate and validity rate (parses, known tool,
  arguments valid against the schema), plus the share of calls equal to the reference call.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from . import tinytools as tt
from .evaluation import wilson_interval
from .tinyworld import ModelSpec, SFTConfig, build_model, lr_at, n_params  # noqa: F401

TEACHER = ModelSpec(layers=4, width=128, heads=4, max_positions=256)
STUDENT = TEACHER
"""The student is an earlier checkpoint of the teacher's own run (see the build script)."""
MAX_TURNS = 3
"""Assistant turns allowed: two calls and an answer (the longest task)."""
MAX_NEW_TOKENS = 40
"""Tokens per assistant turn (the longest call is ~30)."""

PRESETS = {
    ("teacher", "full"): SFTConfig(steps=1500, batch_size=16, eval_every=25, keep_best=True,
                                   stop_at_accuracy=0.97),
    # Stopped early on purpose: weaker than the teacher, and still learning.
    ("student", "full"): SFTConfig(steps=1500, batch_size=16, decay_frac=0.0, eval_every=50,
                                   stop_at_accuracy=0.3),
    ("teacher", "smoke"): SFTConfig(steps=60, batch_size=16, warmup_steps=10, eval_every=30),
    ("student", "smoke"): SFTConfig(steps=40, batch_size=16, warmup_steps=10, decay_frac=0.0,
                                    eval_every=20),
}


def preset(role: str, profile: str = "full") -> SFTConfig:
    """The recipes of ``scripts/build_tiny_tools.py``: role teacher/student, full/smoke."""
    if (role, profile) not in PRESETS:
        raise ValueError(f"no preset for {role!r}/{profile!r}; roles teacher, student and "
                         f"profiles full, smoke")
    return PRESETS[(role, profile)]


# ----------------------------------------------------------------------------- SFT data


def assistant_spans(tokenizer, messages: Sequence[dict]) -> Tuple[str, List[Tuple[int, int]]]:
    """The rendered conversation and the character spans the assistant wrote.

    An assistant turn's span runs from the end of the generation prompt before it to its
    ``<|im_end|>`` included (not the newline the template writes after it).
    """
    full = tt.render(tokenizer, messages)
    spans = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(tt.render(tokenizer, messages[:k], add_generation_prompt=True))
        end = len(tt.render(tokenizer, messages[:k + 1]))
        while full[end - 1] == "\n":
            end -= 1
        if not full[start:end].endswith(tt.IM_END):
            raise ValueError(f"assistant turn {k} does not end with {tt.IM_END}")
        spans.append((start, end))
    return full, spans


def encode_transcript(tokenizer, messages: Sequence[dict]) -> Tuple[List[int], List[int]]:
    """``(ids, loss_mask)`` of a conversation: mask 1 on the assistant's own tokens only."""
    full, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(a <= s < b for a, b in spans)) for s, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def make_batch(tokenizer, rows: Sequence[dict], device="cpu"):
    """Right-padded ``(input_ids_BT, attention_mask_BT, loss_mask_BT)`` of task rows."""
    enc = [encode_transcript(tokenizer, r["messages"]) for r in rows]
    T = max(len(ids) for ids, _ in enc)
    ids_BT = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    attn_BT = torch.zeros((len(rows), T), dtype=torch.long)
    mask_BT = torch.zeros((len(rows), T), dtype=torch.float32)
    for b, (ids, m) in enumerate(enc):
        ids_BT[b, :len(ids)] = torch.tensor(ids)
        attn_BT[b, :len(ids)] = 1
        mask_BT[b, :len(ids)] = torch.tensor(m, dtype=torch.float32)
    return ids_BT.to(device), attn_BT.to(device), mask_BT.to(device)


def rows_from_tasks(tasks: Iterable[dict]) -> Iterator[dict]:
    """Task dicts (``tinytools.generate_task``) as rows with their ``messages``."""
    for t in tasks:
        yield {**t, "messages": tt.transcript(t)}


# ----------------------------------------------------------------------------- evaluation


def toolbox():
    """The world's tools in a ``ToolBox`` (errors become tool results, counted)."""
    from .tooluse import ToolBox

    return ToolBox(list(tt.TOOLS), max_result_chars=120)


def encode_prompts(tokenizer, questions: Sequence[str]) -> List[List[int]]:
    """Token ids of each question's prompt (tools in the system turn, generation prompt)."""
    return [tokenizer(tt.prompt_text(tokenizer, q), add_special_tokens=False)["input_ids"]
            for q in questions]


@dataclass
class ToolEval:
    """Greedy (or sampled) multi-turn results on a set of tasks."""

    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    calls: int
    """Calls made over all tasks."""
    parse_rate: Optional[float]
    """Calls that parse / calls."""
    call_validity: Optional[float]
    """Calls that parse, name a known tool and have schema-valid arguments / calls."""
    call_match: Optional[float]
    """Calls equal to the reference call at the same position / calls."""
    errors: dict
    """Error kind -> count (malformed, unknown_tool, bad_arguments, tool_exception)."""
    turn_limit_frac: float
    records: List[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "records"}


@torch.no_grad()
def evaluate(model, tokenizer, rows: Sequence[dict], *, batch_size: int = 100,
             temperature: float = 0.0, generator: Optional[torch.Generator] = None,
             max_new_tokens: int = MAX_NEW_TOKENS, max_turns: int = MAX_TURNS) -> ToolEval:
    """Run every task with the real tools and grade answers and calls (see module docstring)."""
    from .tooluse import rollout_with_tools

    was_training = model.training
    model.eval()
    box = toolbox()
    records = []
    turn_limit = 0
    try:
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            r = rollout_with_tools(
                model, tokenizer, encode_prompts(tokenizer, [x["question"] for x in chunk]),
                box, G=1, generator=generator, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, max_new_tokens=max_new_tokens,
                max_turns=max_turns, temperature=temperature, vocab_size=len(tokenizer))
            turn_limit += int(r.stopped_by_turn_limit_B.sum())
            for j, row in enumerate(chunk):
                log = r.call_log[j]
                ref = reference_calls(row)
                records.append({
                    "id": row.get("id", s + j), "kind": row.get("kind"),
                    "question": row["question"], "answer": row["answer"],
                    "final": r.final_texts[j], "pred": tt.final_answer(r.final_texts[j]),
                    "correct": tt.final_answer(r.final_texts[j]) == row["answer"]
                    and not log_is_open(r, j),
                    "calls": [{"name": c.name, "arguments": c.arguments,
                               "error": c.error_kind, "result": c.result} for c in log],
                    "matches": [k < len(ref) and c.name == ref[k]["name"]
                                and c.arguments == ref[k]["arguments"]
                                for k, c in enumerate(log)],
                })
    finally:
        model.train(was_training)
    n = len(records)
    calls = [c for rec in records for c in rec["calls"]]
    errors = {}
    for c in calls:
        if c["error"]:
            errors[c["error"]] = errors.get(c["error"], 0) + 1
    correct = sum(rec["correct"] for rec in records)
    lo, hi = wilson_interval(correct, n)
    nc = len(calls)
    rate = (lambda k: k / nc if nc else None)
    return ToolEval(
        accuracy=correct / n if n else 0.0, ci_low=lo, ci_high=hi, n=n, calls=nc,
        parse_rate=rate(nc - errors.get("malformed", 0)),
        call_validity=rate(sum(c["error"] in (None, "tool_exception") for c in calls)),
        call_match=rate(sum(m for rec in records for m in rec["matches"])),
        errors=errors, turn_limit_frac=turn_limit / n if n else 0.0, records=records)


def log_is_open(r, j: int) -> bool:
    """Row ``j`` ended without a final turn (cut by the turn or token limit)."""
    return bool(r.truncated[j])


def reference_calls(row: dict) -> List[dict]:
    """The worked transcript's calls, ``[{"name", "arguments"}]``."""
    out = []
    for m in row["messages"]:
        for tc in m.get("tool_calls") or []:
            f = tc["function"]
            args = f["arguments"]
            out.append({"name": f["name"],
                        "arguments": json.loads(args) if isinstance(args, str) else args})
    return out


# ----------------------------------------------------------------------------- SFT


@dataclass
class SFTRun:
    """What ``sft`` did: per-step history and the evaluation it kept."""

    history: List[dict] = field(default_factory=list)
    steps_done: int = 0
    wall_s: float = 0.0
    best_step: Optional[int] = None
    best_val_accuracy: Optional[float] = None


def completion_loss(model, ids_BT, attn_BT, loss_mask_BT) -> torch.Tensor:
    """Mean next-token cross-entropy over the assistant's tokens of the whole batch."""
    from .tinyworld import completion_loss as loss

    return loss(model, ids_BT, attn_BT, loss_mask_BT)


def sft(model, tokenizer, rows: Union[Sequence[dict], Iterable[dict]],
        config: SFTConfig = SFTConfig(), eval_rows: Optional[Sequence[dict]] = None,
        device="cpu", callback: Optional[Callable[[dict], None]] = None,
        progress: bool = True, max_seconds: Optional[float] = None,
        on_eval: Optional[Callable[[dict, bool], None]] = None) -> SFTRun:
    """Train ``model`` in place on task rows with ``messages`` (a list or an endless stream).

    With ``eval_rows`` and ``config.eval_every``, greedy multi-turn accuracy on them is
    measured every ``eval_every`` steps and at the end (use validation rows, never test);
    ``on_eval(row, is_best)`` runs after each (e.g. to save a snapshot). ``max_seconds``
    stops training at the first evaluation after that much wall time (a time budget on a
    shared machine; the history records where it stopped).
    """
    from tqdm.auto import tqdm

    from .tinyworld import _batches

    model.to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=config.lr, betas=config.betas)
    run, best_state = SFTRun(), None
    t0 = time.perf_counter()
    batches = _batches(rows, config.batch_size, config.seed)
    bar = tqdm(range(config.steps), disable=not progress, desc="sft", leave=False)
    for step in bar:
        lr = lr_at(step, config)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = completion_loss(model, *make_batch(tokenizer, next(batches), device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        row = {"step": step + 1, "loss": loss.item(), "lr": lr, "grad_norm": gnorm.item()}
        last = step + 1 == config.steps
        if eval_rows and config.eval_every and ((step + 1) % config.eval_every == 0 or last):
            res = evaluate(model, tokenizer, eval_rows)
            row.update(val_accuracy=res.accuracy, val_call_validity=res.call_validity,
                       val_call_match=res.call_match)
            bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{res.accuracy:.3f}")
            is_best = run.best_val_accuracy is None or res.accuracy > run.best_val_accuracy
            if is_best:
                run.best_step, run.best_val_accuracy = step + 1, res.accuracy
                if config.keep_best:
                    best_state = copy.deepcopy(model.state_dict())
            if on_eval:
                on_eval(row, is_best)
            model.train()
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                row["stopped_by_time_budget"] = True
        row["elapsed_s"] = time.perf_counter() - t0
        run.history.append(row)
        run.steps_done = step + 1
        if callback:
            callback(row)
        stop = config.stop_at_accuracy
        if (stop is not None and row.get("val_accuracy", -1.0) >= stop) or \
                row.get("stopped_by_time_budget"):
            break
    bar.close()
    if config.keep_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    run.wall_s = time.perf_counter() - t0
    return run


# ----------------------------------------------------------------------------- loaders


def _load_model(role: str, path, device, dtype):
    from transformers import LlamaForCausalLM

    path = Path(path) if path is not None else tt.default_data_dir() / role
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"the tiny-tools {role} checkpoint not found at {path}; "
                                f"{tt.REGENERATE}")
    return LlamaForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()


def load_teacher(path=None, device="cpu", dtype=torch.float32):
    """The shipped teacher (``data/tiny_tools/teacher``), in eval mode."""
    return _load_model("teacher", path, device, dtype)


def load_student(path=None, device="cpu", dtype=torch.float32):
    """The shipped student (``data/tiny_tools/student``): the SFT start of distillation."""
    return _load_model("student", path, device, dtype)


def load_provenance(role: str, path=None) -> dict:
    """The provenance JSON of a shipped checkpoint."""
    p = (Path(path) if path is not None else tt.default_data_dir() / role) / "provenance.json"
    if not p.exists():
        raise FileNotFoundError(f"the {role} provenance not found at {p}; {tt.REGENERATE}")
    return json.loads(p.read_text())


def seeded_rows(seed: int, n: int, exclude=None) -> List[dict]:
    """``n`` fresh task rows from a seeded stream (for tests and notebooks)."""
    stream = rows_from_tasks(tt.task_stream(seed, exclude=exclude))
    return [next(stream) for _ in range(n)]

