"""Multi-turn rollouts with tools: the student calls tools, reads their results, and goes on.

Usage::

    from opdplus.tooluse import Tool, ToolBox, encode_tool_prompts, rollout_with_tools

    box = ToolBox([Tool.from_function(add), Tool.from_function(lookup)], max_result_chars=200)
    prompt_ids = encode_tool_prompts(tokenizer, [[{"role": "user", "content": q}] for q in qs], box)
    r = rollout_with_tools(model, tokenizer, prompt_ids, box, G=4, generator=gen,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                           max_new_tokens=48, max_turns=4)
    r.final_texts[i]          # the last assistant turn of row i (special tokens skipped)
    r.call_log[i]             # row i's calls: CallRecord(turn, name, arguments, error_kind, ...)
    r.calls_B, r.turns_B, r.call_errors_B["bad_arguments"], r.stopped_by_turn_limit_B
    score(model, r)           # a ToolRollout is a Rollout: scoring and losses take it as is

    # training: the trainer draws its student (and teacher-sampled) rollouts through this
    train(student, teacher, tokenizer, prompts, config,
          rollout_fn=tool_rollout_fn(tokenizer, box, max_turns=4))

Tools use the field's conventions (Hermes / Qwen2.5 ChatML): a tool's JSON Schema comes
from a plain Python function (``transformers.utils.get_json_schema``), the schemas go to
the model through ``apply_chat_template(..., tools=...)``, and a call is a JSON object
``{"name", "arguments"}`` between ``<tool_call>`` markers (``opdplus.toolcalls`` parses and
validates it with ``jsonschema``; ``opdplus.toolbox`` holds the tools and renders the tool
turn; both are re-exported here). Model output is only ever read as JSON: nothing here
passes it to ``eval`` or ``exec``.

``rollout_with_tools`` generates in segments. In each segment every still-active row
decodes one assistant turn with ``opdplus.sampler.sample`` (which stops a row at EOS, the
template's end-of-turn token), from its whole context so far: re-prefilling the context
each turn is simple and exact (no KV cache is carried across turns). Each finished turn is
decoded with its special tokens and parsed; every call in it is run by the ``ToolBox``,
and the tool turn (the chat template's rendering of the results, plus the next
generation prompt) is appended as tokens. A turn without a call ends the row. So rows of
one batch hold different numbers of turns and lengths, and all are generated together.

The stitched ``ToolRollout`` is an ordinary ``Rollout`` whose completion covers every
turn: the model's tokens have ``completion_mask`` 1; the inserted tool-turn tokens have
attention 1 and ``completion_mask`` 0 (holes), so both student and teacher condition on
them, but they never enter a loss, the divergence-to-go, the teacher KL, the lengths or
the token count N (all of which read the completion mask).

Bad input never stops a rollout: a malformed call, an unknown tool, invalid arguments
and an exception inside the tool each become a tool-error message as that call's result,
and are counted per kind; a result longer than ``max_result_chars`` is cut with a marker;
a row that still calls tools at ``max_turns`` stops there and is marked truncated.

Simplified: the tool-turn tokens are the chat template's rendering after the assistant's
content, tokenised on their own (exact for ChatML, whose turns begin and end with special
tokens); the calls of a turn run one after the other in the calling process.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from .prompts import context_length
from .sampler import IntOrList, Rollout, left_pad, sample
from .toolbox import (  # noqa: F401  (re-exported: the tool-use API in one place)
    Tool,
    ToolBox,
    ToolResult,
    encode_tool_prompts,
    tool_turn_ids,
    truncate_result,
    turn_end_id,
)
from .toolcalls import ERROR_KINDS, parse_tool_calls
from .toolcalls import CallGrade, grade_call  # noqa: F401  (BFCL-style grading, re-exported)

# ----------------------------------------------------------------------------- the rollout


@dataclass(frozen=True)
class CallRecord:
    """One call a row made: in which assistant turn, what it asked, and how it went."""

    turn: int
    name: Optional[str]
    arguments: Optional[dict]
    error_kind: Optional[str]
    result: str
    raw: str


@dataclass
class ToolRollout(Rollout):
    """A ``Rollout`` over every turn of a conversation with tools (see the module docstring).

    The completion positions hold the model's turns (``completion_mask`` 1, with their
    sampler log-probs) and the inserted tool turns (``tool_mask_BT`` 1, ``completion_mask``
    0, ``sampler_logp`` 0, attention 1). ``truncated`` marks rows cut by a limit: a turn
    at ``max_new_tokens``, the turn limit, or the context length. ``texts`` are the whole
    completions, tool turns included (special tokens skipped).
    """

    tool_mask_BT: Optional[Tensor] = None
    """(B, T) bool: the inserted tool-turn tokens (results and the template around them)."""
    turns_B: Optional[Tensor] = None
    """(B,) long: assistant turns generated."""
    calls_B: Optional[Tensor] = None
    """(B,) long: calls run (turns cut by the turn limit run none)."""
    call_errors_B: Dict[str, Tensor] = field(default_factory=dict)
    """Per error kind of ``toolcalls.ERROR_KINDS``: (B,) long count of failed calls."""
    stopped_by_turn_limit_B: Optional[Tensor] = None
    """(B,) bool: still calling tools at ``max_turns`` (also counted in ``truncated``)."""
    call_log: List[List[CallRecord]] = field(default_factory=list)
    """Per row, every call in order."""
    final_texts: List[str] = field(default_factory=list)
    """Per row, the last assistant turn's text (special tokens skipped)."""
    max_turns: int = 0

    def to(self, device) -> "ToolRollout":
        moved = super().to(device)
        mv = lambda x: None if x is None else x.to(device)  # noqa: E731
        return replace(
            moved,
            tool_mask_BT=mv(self.tool_mask_BT),
            turns_B=mv(self.turns_B),
            calls_B=mv(self.calls_B),
            call_errors_B={k: v.to(device) for k, v in self.call_errors_B.items()},
            stopped_by_turn_limit_B=mv(self.stopped_by_turn_limit_B),
        )

    def tool_stats(self) -> Dict[str, float]:
        """Summable counts over the rows (keys ``TOOL_STAT_KEYS``), for the trainer's stats."""
        out = {
            "tool_rows": float(self.input_ids.shape[0]),
            "tool_turns": float(self.turns_B.sum()),
            "tool_calls": float(self.calls_B.sum()),
            "tool_turn_limit": float(self.stopped_by_turn_limit_B.sum()),
        }
        for k in ERROR_KINDS:
            out[f"tool_errors_{k}"] = float(self.call_errors_B[k].sum())
        return out


TOOL_STAT_KEYS = ("tool_rows", "tool_turns", "tool_calls", "tool_turn_limit") + tuple(
    f"tool_errors_{k}" for k in ERROR_KINDS
)
"""Keys of ``ToolRollout.tool_stats`` (summed over micro-batches and processes)."""


def tool_record(st: Dict[str, float]) -> Dict[str, Any]:
    """A step's tool metrics from summed ``tool_stats``: {} when no tool rollout was drawn.

    ``tool_calls`` and ``tool_turns`` are per rollout, ``tool_turn_limit_frac`` the share of
    rollouts stopped by the turn limit, ``tool_call_errors_<kind>`` counts over the step and
    ``tool_call_valid_frac`` the share of calls that ran without error.
    """
    rows = st.get("tool_rows", 0.0)
    if rows <= 0:
        return {}
    calls = st["tool_calls"]
    errors = sum(st[f"tool_errors_{k}"] for k in ERROR_KINDS)
    rec = {
        "tool_calls": calls / rows,
        "tool_turns": st["tool_turns"] / rows,
        "tool_turn_limit_frac": st["tool_turn_limit"] / rows,
        "tool_call_valid_frac": (calls - errors) / calls if calls > 0 else None,
    }
    rec.update({f"tool_call_errors_{k}": int(st[f"tool_errors_{k}"]) for k in ERROR_KINDS})
    return rec


@torch.no_grad()
def rollout_with_tools(
    model,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    toolbox: ToolBox,
    *,
    G: int = 1,
    generator: Optional[torch.Generator] = None,
    eos_token_id: IntOrList,
    pad_token_id: Optional[int] = None,
    max_new_tokens: int = 32,
    max_turns: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    vocab_size: Optional[int] = None,
    source: str = "student",
    max_context_tokens: Optional[int] = None,
) -> ToolRollout:
    """G multi-turn rollouts per prompt, all rows together; see the module docstring.

    ``prompt_ids`` end with the generation prompt (``encode_tool_prompts``).
    ``max_new_tokens`` caps each assistant turn (a turn cut there ends its row, truncated);
    ``max_turns`` caps the assistant turns (a row still calling tools at the limit ends,
    truncated, with ``stopped_by_turn_limit_B``). ``max_context_tokens`` (default: the
    model's context length) ends a row, truncated, before a turn that might not fit.
    The other arguments are those of ``opdplus.sampler.sample``.
    """
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    eos = [eos_token_id] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]
    pad = eos[0] if pad_token_id is None else int(pad_token_id)
    end_id = turn_end_id(tokenizer, eos)
    limit_ctx = max_context_tokens if max_context_tokens is not None else context_length(model)
    device = next(model.parameters()).device

    rows = [list(p) for p in prompt_ids for _ in range(G)]
    B = len(rows)
    ctx = [list(r) for r in rows]  # each row's context so far (prompt + every turn)
    comp: List[List[int]] = [[] for _ in range(B)]
    mine: List[List[bool]] = [[] for _ in range(B)]  # True: the model chose this token
    logp: List[List[float]] = [[] for _ in range(B)]
    turns, calls = [0] * B, [0] * B
    errors = {k: [0] * B for k in ERROR_KINDS}
    at_limit, truncated = [False] * B, [False] * B
    log: List[List[CallRecord]] = [[] for _ in range(B)]
    final = [""] * B

    active = list(range(B))
    while active:
        if limit_ctx is not None:
            for i in [i for i in active if len(ctx[i]) + max_new_tokens > limit_ctx]:
                truncated[i] = True  # the next turn might not fit in the context
            active = [i for i in active if not truncated[i]]
            if not active:
                break
        seg = sample(
            model,
            [ctx[i] for i in active],
            G=1,
            generator=generator,
            eos_token_id=eos,
            pad_token_id=pad,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            vocab_size=vocab_size,
            source=source,
        )
        still = []
        for j, i in enumerate(active):
            m = seg.completion_mask[j]
            toks = seg.completion_ids[j][m].tolist()
            comp[i] += toks
            mine[i] += [True] * len(toks)
            logp[i] += seg.sampler_logp[j][m].tolist()
            ctx[i] += toks
            turns[i] += 1
            final[i] = tokenizer.decode(toks, skip_special_tokens=True)
            if bool(seg.truncated[j]):
                truncated[i] = True
                continue
            parsed = parse_tool_calls(tokenizer.decode(toks, skip_special_tokens=False))
            if not parsed or toks[-1] != end_id:
                continue  # a final answer (or another EOS, which ends the conversation)
            if turns[i] >= max_turns:
                at_limit[i] = truncated[i] = True
                continue
            results = []
            for c in parsed:
                res = toolbox.run(c)
                results.append(res.text)
                calls[i] += 1
                if res.error_kind is not None:
                    errors[res.error_kind][i] += 1
                log[i].append(
                    CallRecord(turns[i], c.name, c.arguments, res.error_kind, res.text, c.raw)
                )
            ins = tool_turn_ids(tokenizer, results, end_id)
            comp[i] += ins
            mine[i] += [False] * len(ins)
            logp[i] += [0.0] * len(ins)
            ctx[i] += ins
            still.append(i)
        active = still
    return _stitch(
        rows, comp, mine, logp, pad, device,
        G=G, temperature=temperature, top_p=top_p, top_k=top_k, source=source,
        truncated=truncated, turns=turns, calls=calls, errors=errors, at_limit=at_limit,
        log=log, final=final, max_turns=max_turns, tokenizer=tokenizer,
    )  # fmt: skip


def _stitch(rows, comp, mine, logp, pad, device, *, tokenizer, **kw) -> ToolRollout:
    """One Rollout-shaped batch: prompts left-padded, every turn's tokens right-padded."""
    ids_BP, attn_BP = left_pad(rows, pad, device)
    B, T = len(rows), max(1, max(len(c) for c in comp))
    comp_BT = torch.full((B, T), pad, dtype=torch.long)
    live_BT = torch.zeros((B, T), dtype=torch.bool)
    mine_BT = torch.zeros((B, T), dtype=torch.bool)
    logp_BT = torch.zeros((B, T), dtype=torch.float32)
    for i, c in enumerate(comp):
        n = len(c)
        if n:
            comp_BT[i, :n] = torch.as_tensor(c, dtype=torch.long)
            live_BT[i, :n] = True
            mine_BT[i, :n] = torch.as_tensor(mine[i], dtype=torch.bool)
            logp_BT[i, :n] = torch.as_tensor(logp[i], dtype=torch.float32)
    long = lambda x: torch.as_tensor(x, dtype=torch.long, device=device)  # noqa: E731
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in comp]
    return ToolRollout(
        input_ids=torch.cat([ids_BP, comp_BT.to(device)], 1),
        attention_mask=torch.cat([attn_BP, live_BT.long().to(device)], 1),
        completion_mask=mine_BT.to(device),
        sampler_logp=logp_BT.to(device),
        truncated=torch.as_tensor(kw["truncated"], dtype=torch.bool, device=device),
        prompt_len=ids_BP.shape[1],
        group_size=kw["G"],
        texts=texts,
        temperature=float(kw["temperature"]),
        top_p=float(kw["top_p"]),
        top_k=int(kw["top_k"]),
        source=kw["source"],
        tool_mask_BT=(live_BT & ~mine_BT).to(device),
        turns_B=long(kw["turns"]),
        calls_B=long(kw["calls"]),
        call_errors_B={k: long(v) for k, v in kw["errors"].items()},
        stopped_by_turn_limit_B=torch.as_tensor(kw["at_limit"], dtype=torch.bool, device=device),
        call_log=kw["log"],
        final_texts=kw["final"],
        max_turns=kw["max_turns"],
    )


def tool_rollout_fn(
    tokenizer, toolbox: ToolBox, *, max_turns: int = 4, **fixed
) -> Callable[..., ToolRollout]:
    """A ``rollout_fn`` for ``opdplus.trainer.train``: ``sample``'s keyword interface
    (policy, prompt_ids, G=, generator=, eos_token_id=, ...) drawing tool rollouts.

    ``fixed`` (e.g. ``max_context_tokens``) is passed to every ``rollout_with_tools`` call.
    """

    def rollout_fn(policy, prompt_ids, **kw) -> ToolRollout:
        return rollout_with_tools(
            policy, tokenizer, prompt_ids, toolbox, max_turns=max_turns, **fixed, **kw
        )

    return rollout_fn

