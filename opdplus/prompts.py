"""Prompt data for the trainer: reading, validating and tokenising, and the per-step order.

A prompt is a string, a mapping with a ``prompt`` field (and optionally ``completion``,
used by off-policy mixing with ``mix_source="dataset"``), or a list of token ids.
Everything a user can get wrong (an empty prompt, a prompt longer than the context, a
malformed JSONL row) is reported here, by index or by file and line, before any model
runs.

The order is a fresh seeded permutation of all prompts per epoch, computed from
``(seed, epoch)`` alone, so a resumed run sees exactly the prompts it would have seen.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Union

import torch

PromptLike = Union[str, Mapping[str, Any], Sequence[int]]


def derive_seed(seed: int, *keys) -> int:
    """A 63-bit seed from ``seed`` and any keys (stable across processes and Python runs)."""
    h = hashlib.blake2b(repr((int(seed),) + tuple(keys)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> 1


@dataclass
class EncodedPrompts:
    """Token ids of every prompt (and of its reference completion, when given)."""

    prompt_ids: List[List[int]]
    completion_ids: Optional[List[List[int]]] = None
    truncated: int = 0
    """How many prompts were cut on the left (``prompt_truncation="left"``)."""

    def __len__(self) -> int:
        return len(self.prompt_ids)


def load_prompts_jsonl(path: Union[str, Path], field: str = "prompt") -> List[dict]:
    """Rows of a JSONL file, each an object with a non-empty string ``field``.

    A malformed row raises ``ValueError`` naming the file and the 1-based line.
    Blank lines are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise ValueError(
                    f"{path}:{line_no}: expected a JSON object with a string {field!r} field"
                )
            if not row[field].strip():
                raise ValueError(f"{path}:{line_no}: the {field!r} field is empty")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts found")
    return rows


def _text_of(p: PromptLike, i: int) -> Union[str, List[int]]:
    if isinstance(p, str):
        return p
    if isinstance(p, Mapping):
        if "prompt" not in p:
            raise ValueError(f"prompt {i} is a mapping without a 'prompt' field: {sorted(p)}")
        return p["prompt"]
    if isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p):
        return list(p)
    raise ValueError(
        f"prompt {i} has type {type(p).__name__}; expected str, a mapping or a list of token ids"
    )


def encode_prompts(
    tokenizer,
    prompts: Sequence[PromptLike],
    *,
    max_prompt_tokens: int,
    truncation: str = "error",
    use_chat_template: bool = False,
    max_completion_tokens: Optional[int] = None,
) -> EncodedPrompts:
    """Tokenise and validate all prompts (and ``completion`` fields, when every prompt has one).

    ``truncation="error"`` raises on a prompt longer than ``max_prompt_tokens``;
    ``"left"`` keeps its last ``max_prompt_tokens`` tokens (the question usually ends a prompt).
    Completions are cut to ``max_completion_tokens`` and get an EOS appended when missing.
    """
    if len(prompts) == 0:
        raise ValueError("no prompts given")
    ids, n_cut = [], 0
    for i, p in enumerate(prompts):
        text = _text_of(p, i)
        if isinstance(text, list):
            toks = text
        else:
            if not text.strip():
                raise ValueError(f"prompt {i} is empty; remove it or give it text")
            if use_chat_template:
                if not getattr(tokenizer, "chat_template", None):
                    raise ValueError(
                        "use_chat_template=True but the tokenizer has no chat template"
                    )
                toks = tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True
                )
                if isinstance(toks, Mapping):  # some versions return a BatchEncoding
                    toks = toks["input_ids"]
            else:
                toks = tokenizer(text)["input_ids"]
        toks = list(toks)
        if not toks:
            raise ValueError(f"prompt {i} encodes to 0 tokens; remove it or give it text")
        if len(toks) > max_prompt_tokens:
            if truncation == "error":
                raise ValueError(
                    f"prompt {i} has {len(toks)} tokens, more than the {max_prompt_tokens} allowed "
                    "(context length minus max_new_tokens, or max_prompt_tokens); shorten it, "
                    "lower "
                    "max_new_tokens, or set prompt_truncation='left'"
                )
            toks, n_cut = toks[-max_prompt_tokens:], n_cut + 1
        ids.append(toks)
    completions = None
    if all(isinstance(p, Mapping) and isinstance(p.get("completion"), str) for p in prompts):
        eos = tokenizer.eos_token_id
        completions = []
        for p in prompts:
            c = tokenizer(p["completion"], add_special_tokens=False)["input_ids"]
            if eos is not None and (not c or c[-1] != eos):
                c = c + [eos]
            completions.append(c[:max_completion_tokens] if max_completion_tokens else c)
    return EncodedPrompts(ids, completions, n_cut)


def prompt_indices(n_prompts: int, seed: int, start: int, count: int) -> List[int]:
    """Indices ``start .. start+count-1`` of the endless stream of per-epoch permutations."""
    out, cache = [], {}
    for i in range(start, start + count):
        epoch, j = divmod(i, n_prompts)
        if epoch not in cache:
            g = torch.Generator().manual_seed(derive_seed(seed, "prompt-order", epoch))
            cache[epoch] = torch.randperm(n_prompts, generator=g).tolist()
        out.append(cache[epoch][j])
    return out


def context_length(model) -> Optional[int]:
    """The model's maximum sequence length from its config (None when it has none)."""
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None
