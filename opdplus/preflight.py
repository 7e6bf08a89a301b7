"""Pre-flight: check that teacher and student share a tokenizer, before any compute.

Sampled-token distillation compares ``log q(y_t)`` and ``log p(y_t)`` for the *same*
token id, so a silent tokenizer mismatch gives a meaningless loss that still trains.
``preflight`` compares, in this order, and raises ``TokenizerMismatchError`` naming the
first difference:

1. the vocabularies (token string <-> id);
2. the special tokens (bos, eos, pad, unk and the other added special tokens);
3. one sample conversation: the rendered chat template (as text) and its token ids;
4. the models' output-embedding sizes against the tokenizer.

Embedding tables are often padded past the real vocabulary (e.g. to a multiple of 64).
When both tables cover the tokenizer, the answer is the real vocabulary size
``len(tokenizer)``, whether the tables differ or are padded alike: slice both models'
logits to it (``score(..., vocab_size=)``, ``sample(..., vocab_size=)``).
"""

from __future__ import annotations

from typing import Optional

SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are a careful tutor."},
    {"role": "user", "content": "What is 12 * 7? Answer with a number."},
    {"role": "assistant", "content": "12 * 7 = 84. #### 84"},
]
SPECIAL_ATTRS = ("bos_token", "eos_token", "pad_token", "unk_token")


class TokenizerMismatchError(ValueError):
    """Teacher and student tokenizers (or embedding sizes) are incompatible."""


def _first_vocab_difference(tv: dict, sv: dict) -> str:
    t_by_id = {i: t for t, i in tv.items()}
    s_by_id = {i: t for t, i in sv.items()}
    for i in sorted(set(t_by_id) | set(s_by_id)):
        a, b = t_by_id.get(i), s_by_id.get(i)
        if a != b:
            return (
                f"token id {i} is {a!r} in the teacher's vocabulary and {b!r} in the student's "
                f"(sizes {len(tv)} vs {len(sv)})"
            )
    return f"vocabularies differ (sizes {len(tv)} vs {len(sv)})"


def _first_text_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, i - 20)
    return f"at character {i}: teacher {a[lo : i + 20]!r} vs student {b[lo : i + 20]!r}"


def _render(tok) -> Optional[str]:
    """The sample conversation through the chat template; without the system turn when the
    template refuses one (many do: Gemma's, the tiny world's)."""
    if not getattr(tok, "chat_template", None):
        return None
    try:
        return tok.apply_chat_template(SAMPLE_CONVERSATION, tokenize=False)
    except Exception:  # jinja2 TemplateError raised by the template itself
        return tok.apply_chat_template(SAMPLE_CONVERSATION[1:], tokenize=False)


def _output_rows(model) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def preflight(teacher_tok, student_tok, teacher_model=None, student_model=None) -> int:
    """Check tokenizer compatibility; return the vocabulary size to slice logits to.

    Raises ``TokenizerMismatchError`` naming the first difference and the fix.
    Models are optional (tokenizer-only check; then ``len(tokenizer)`` is returned).
    """
    tv, sv = teacher_tok.get_vocab(), student_tok.get_vocab()
    if tv != sv:
        raise TokenizerMismatchError(
            "teacher and student tokenizers differ: "
            + _first_vocab_difference(tv, sv)
            + ". Sampled-token distillation needs one shared tokenizer; pick a student from the "
            "teacher's model family."
        )
    for attr in SPECIAL_ATTRS:
        a, b = getattr(teacher_tok, attr, None), getattr(student_tok, attr, None)
        if a != b:
            raise TokenizerMismatchError(
                f"special token {attr} differs: teacher {a!r}, student {b!r}. Set the same "
                f"{attr} on "
                "both tokenizers (e.g. tokenizer.pad_token = tokenizer.eos_token)."
            )
    ts, ss = sorted(teacher_tok.all_special_tokens), sorted(student_tok.all_special_tokens)
    if ts != ss:
        only_t, only_s = sorted(set(ts) - set(ss)), sorted(set(ss) - set(ts))
        raise TokenizerMismatchError(
            f"special tokens differ: only the teacher has {only_t}, only the student has {only_s}"
        )
    rt, rs = _render(teacher_tok), _render(student_tok)
    if (rt is None) != (rs is None):
        who = "teacher" if rt is None else "student"
        raise TokenizerMismatchError(
            f"only one tokenizer has a chat template (the {who}'s is missing); copy the other's "
            "chat_template so both render conversations the same way"
        )
    if rt is not None and rt != rs:
        raise TokenizerMismatchError(
            "the chat templates render the sample conversation differently "
            + _first_text_difference(rt, rs)
        )
    text = rt if rt is not None else " ".join(m["content"] for m in SAMPLE_CONVERSATION)
    it = teacher_tok(text, add_special_tokens=False)["input_ids"]
    is_ = student_tok(text, add_special_tokens=False)["input_ids"]
    if it != is_:
        k = next((i for i, (a, b) in enumerate(zip(it, is_)) if a != b), min(len(it), len(is_)))
        raise TokenizerMismatchError(
            f"the tokenizers split the sample conversation differently from token {k}: teacher "
            f"{it[k : k + 5]} vs student {is_[k : k + 5]} (same vocabulary, different merges or "
            "normaliser)"
        )
    real = len(teacher_tok)
    if teacher_model is None or student_model is None:
        return real
    rows = {"teacher": _output_rows(teacher_model), "student": _output_rows(student_model)}
    for who, n in rows.items():
        if n < real:
            raise TokenizerMismatchError(
                f"the {who} model has {n} output-embedding rows but the tokenizer has {real} "
                "tokens; "
                "resize its embeddings (model.resize_token_embeddings(len(tokenizer)))"
            )
    # Padded rows (e.g. Qwen3: 151,936 rows for 151,669 tokens) are never real tokens: slice
    # them off even when both tables are padded alike, so nothing samples or normalises over them.
    return real
