"""Prompt data for the trainer: reading, validating and tokenising, and the per-step order.

A prompt is a string, a mapping with a ``prompt`` field (and optionally ``completion``,
used by off-policy mixing with ``mix_source="dataset"``), or a list of token ids. The
``prompt`` field may also be a chat: a list of ``{"role", "content"}`` messages, rendered
with the tokenizer's chat template.
``load_prompts`` reads any table through Hugging Face ``datasets``: a local JSONL, JSON,
CSV or Parquet file, or a hub dataset id with a config and a split; the prompt column is
named or found (``prompt``, then ``question``, then ``messages``).
Everything a user can get wrong (an empty prompt, a prompt longer than the context, a
malformed row) is reported here, by index, by file and line (JSONL) or by file and row,
before any model runs.

The order is a fresh seeded permutation of all prompts per epoch, computed from
``(seed, epoch)`` alone, so a resumed run sees exactly the prompts it would have seen.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union

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


PROMPT_COLUMNS = ("prompt", "question", "messages")
"""Columns tried, in this order, when ``load_prompts`` is not told which one holds the prompt."""
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""File suffix -> ``datasets`` builder of a local prompts file."""


def _chat_error(value: Any) -> Optional[str]:
    """Why ``value`` is not a chat (a non-empty list of role/content string pairs), or None."""
    if not isinstance(value, (list, tuple)) or not value:
        return "expected a non-empty list of messages"
    for j, m in enumerate(value):
        if not (
            isinstance(m, Mapping)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            return f"message {j} is not a {{'role': str, 'content': str}} mapping: {m!r}"
    if not any(m["content"].strip() for m in value):
        return "every message is empty"
    return None


def _as_prompt_row(
    row: Mapping[str, Any], column: str, json_rows: bool = True
) -> Tuple[Optional[dict], str]:
    """A trainer prompt record from one table row, or (None, why not).

    A chat whose last message is the assistant's becomes the prompt (the messages before
    it) and the ``completion`` (that message), which ``mix_source="dataset"`` trains on.
    """
    value = row.get(column)
    if isinstance(value, str):
        if not value.strip():
            return None, f"the {column!r} field is empty"
        return {**row, "prompt": value}, ""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping):
        why = _chat_error(value)
        if why:
            return None, f"the {column!r} chat is malformed: {why}"
        msgs = [{"role": m["role"], "content": m["content"]} for m in value]
        out = {k: v for k, v in row.items() if k != column}
        if msgs[-1]["role"] == "assistant" and len(msgs) > 1:
            out.setdefault("completion", msgs[-1]["content"])
            msgs = msgs[:-1]
        return {**out, "prompt": msgs}, ""
    if value is None and not json_rows:  # CSV reads an empty cell as a missing value
        return None, f"the {column!r} field is empty"
    what = "a JSON object with a string" if json_rows else "a string in the"
    return None, (
        f"expected {what} {column!r} field or a list of chat messages, "
        f"got {type(value).__name__} {value!r}"[:300]
    )


class _Rows(list):
    """Parsed JSONL objects, for the rows ``datasets`` cannot type (a column mixing types)."""

    @property
    def column_names(self) -> List[str]:
        return list(dict.fromkeys(k for r in self for k in r))

    def to_list(self) -> List[dict]:
        return list(self)


def _scan_jsonl(path: Path) -> Tuple[_Rows, List[int], Optional[str]]:
    """The objects and line numbers of the non-blank lines, or the first bad line's error."""
    rows, lines = _Rows(), []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                return rows, lines, f"{path}:{line_no}: not valid JSON ({e.msg})"
            if not isinstance(row, dict):
                return rows, lines, (
                    f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append(row)
            lines.append(line_no)
    return rows, lines, None


def _quiet_datasets():
    """``datasets`` with its progress bars off (restored by the returned function)."""
    import datasets

    was_on = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    return datasets, (datasets.enable_progress_bars if was_on else (lambda: None))


def load_prompts(
    source: Union[str, Path],
    *,
    column: Optional[str] = None,
    config: Optional[str] = None,
    split: Optional[str] = None,
) -> Tuple[List[dict], str]:
    """Prompt records from a local JSONL / JSON / CSV / Parquet file or a hub dataset.

    ``source``: an existing file (format from its suffix), or else a hub dataset id
    (``openai/gsm8k``) loaded with ``config`` and ``split`` (default ``"train"``); a path
    that looks like a file (a known suffix) but does not exist is an error, not a hub id.
    ``column``: the prompt column; None tries ``PROMPT_COLUMNS`` in order. Its values are
    strings, or chats (lists of ``{"role", "content"}`` messages).
    Returns the records (each row with ``prompt`` set, ready for ``train``) and the
    column used. A malformed row raises ``ValueError`` naming the file and the 1-based
    line (JSONL) or row, and what is wrong.
    """
    datasets, restore = _quiet_datasets()
    try:
        table, where, lines = _read_table(datasets, source, config, split)
    finally:
        restore()
    names = list(table.column_names)
    if column is None:
        column = next((c for c in PROMPT_COLUMNS if c in names), None)
        if column is None:
            raise ValueError(
                f"{where}: no prompt column; looked for {list(PROMPT_COLUMNS)} among the "
                f"columns {names}. Name one with --prompt-column (column=...)"
            )
    elif column not in names:
        raise ValueError(f"{where}: no column {column!r}; the columns are {names}")
    rows = []
    json_rows = where.endswith((".json", ".jsonl"))
    for i, row in enumerate(table.to_list()):
        rec, why = _as_prompt_row(row, column, json_rows)
        if rec is None:
            at = f"{where}:{lines[i]}" if lines else f"{where}, row {i + 1}"
            raise ValueError(f"{at}: {why}")
        rows.append(rec)
    if not rows:
        raise ValueError(f"{where}: no prompts found")
    return rows, column


def _read_table(datasets, source, config, split):
    """(``datasets.Dataset``, a name for messages, JSONL line numbers or None)."""
    path = Path(source).expanduser()
    fmt = LOCAL_FORMATS.get(path.suffix.lower())
    if path.is_dir():
        raise ValueError(f"prompts {path} is a directory; give a JSONL, JSON, CSV or Parquet file")
    if path.is_file() or fmt is not None or str(source).startswith((".", "/", "~")):
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {path} does not exist")
        if fmt is None:
            raise ValueError(
                f"prompts file {path}: unknown format {path.suffix!r}; use one of "
                f"{', '.join(LOCAL_FORMATS)}"
            )
        if config is not None or split is not None:
            raise ValueError(
                f"prompts file {path}: a config or split applies only to a hub dataset id"
            )
        jsonl = path.suffix.lower() == ".jsonl" or (
            fmt == "json" and path.read_text(encoding="utf-8").lstrip()[:1] == "{"
        )
        parsed, lines, bad = _scan_jsonl(path) if jsonl else (None, None, None)
        if bad:  # datasets' own message would not say which line
            raise ValueError(bad)
        try:
            with tempfile.TemporaryDirectory(prefix="opdplus-prompts-") as cache:
                table = datasets.load_dataset(
                    fmt, data_files=str(path), split="train", cache_dir=cache,
                    keep_in_memory=True,
                )
        except Exception as e:
            if parsed is not None:  # valid JSON that arrow cannot type: check the rows as parsed
                return parsed, str(path), lines
            cause = e.__cause__ or e
            raise ValueError(
                f"prompts file {path} could not be read as {fmt}: {type(cause).__name__}: "
                f"{cause}"
            ) from None
        if lines is not None and len(lines) != len(table):
            lines = None
        return table, str(path), lines
    split = split or "train"
    where = f"hub dataset {source!r} (config {config!r}, split {split!r})"
    try:
        table = datasets.load_dataset(str(source), config, split=split)
    except Exception as e:
        hint = ""
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
            hint = (
                "; HF_HUB_OFFLINE is set and the dataset is not in the local cache: run once "
                "with network access (HF_HUB_OFFLINE=0) or pass a local file"
            )
        raise ValueError(f"could not load {where}: {type(e).__name__}: {e}{hint}") from None
    return table, where, None


def _text_of(p: PromptLike, i: int) -> Union[str, List[int], List[dict]]:
    if isinstance(p, str):
        return p
    if isinstance(p, Mapping):
        if "prompt" not in p:
            raise ValueError(f"prompt {i} is a mapping without a 'prompt' field: {sorted(p)}")
        text = p["prompt"]
        if isinstance(text, (list, tuple)) and text and isinstance(text[0], Mapping):
            why = _chat_error(text)
            if why:
                raise ValueError(f"prompt {i} is a malformed chat: {why}")
            return list(text)
        if not isinstance(text, str):
            raise ValueError(
                f"prompt {i}: the 'prompt' field must be a string or a list of chat messages, "
                f"got {type(text).__name__}"
            )
        return text
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
        if isinstance(text, list) and text and isinstance(text[0], Mapping):
            # a chat is rendered with the template whatever ``use_chat_template`` says
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    f"prompt {i} is a chat (a list of messages) but the tokenizer has no chat "
                    "template; give plain-text prompts or a tokenizer with a template"
                )
            toks = tokenizer.apply_chat_template(text, tokenize=True, add_generation_prompt=True)
            if isinstance(toks, Mapping):
                toks = toks["input_ids"]
        elif isinstance(text, list):
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
