"""Accuracy of a model on GSM8K-format math: generation, ``evaluate``, loaders.

- Grading and intervals live in ``opdplus.grading`` (re-exported here): ``extract_answer``
  reads ``#### n`` or ``\\boxed{n}`` (one number, else wrong), ``grade`` compares exact
  fractions, ``wilson_interval`` and ``avg_at_k_interval`` give the 95% intervals.
- ``evaluate`` generates for a list of GSM8K-format rows and returns pass@1 (k = 1) or
  avg@k (k > 1) with a 95% interval:
  * k = 1: each problem is one Bernoulli trial, so the Wilson score interval.
  * k > 1: avg@k is the mean over problems of the fraction of the k samples that are
    correct, with the Wilson interval on all n k samples shrunk by the design effect of
    the within-problem correlation (``avg_at_k_interval``): honest at 0 and at 1.
- ``generate`` asks the model for the last prompt position's logits only
  (``logits_to_keep=1``): the prompt pass never builds ``(B, T, V)`` logits.
- ``evaluate`` shows a ``tqdm.auto`` bar when watched (``opdplus.progress``).
- ``load_gsm8k`` loads ``openai/gsm8k`` (config ``main``) from the hub or a local JSONL file
  in GSM8K's format; each bad row is reported with its file and line number.

Simplified: generation is a plain KV-cached loop (greedy or temperature sampling with the
caller's ``torch.Generator``; no top-p, no stop strings other than EOS); prompts come from
the tokenizer's chat template unless ``prompt_fn`` is given.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch

from .grading import (  # noqa: F401 - re-exported: the grading API predates its own module
    Z95,
    avg_at_k_interval,
    design_effect,
    extract_answer,
    grade,
    mean_interval,
    target_of,
    to_fraction,
    wilson_interval,
)
from .progress import bar as progress_bar

# ----------------------------------------------------------------------------- generation


def _cache_of(out) -> dict:
    """The KV cache of a forward output, as the keyword the next call takes.

    transformers >= 5.2x names it ``cache``; earlier versions ``past_key_values``.
    """
    cache = getattr(out, "cache", None)
    return {"cache": cache} if cache is not None else {"past_key_values": out.past_key_values}


def _last_position_only(model) -> dict:
    """The keyword that makes ``model`` compute logits at the last position only, if any.

    A prompt forward pass otherwise materialises ``(B, T, V)`` logits (64 prompts of 150
    tokens at V = 49k: 1.9 GB in float32) to read one position of each row.
    """
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return {}
    for name in ("logits_to_keep", "num_logits_to_keep"):  # transformers >= 4.50, older
        if name in params:
            return {name: 1}
    return {}


@torch.no_grad()
def generate(model, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor,
             max_new_tokens: int, eos_token_id, pad_token_id: int, greedy: bool = True,
             temperature: float = 1.0,
             generator: Optional[torch.Generator] = None,
             vocab_size: Optional[int] = None) -> torch.Tensor:
    """Continue left-padded prompts; returns the new tokens ``(B, <= max_new_tokens)``.

    ``eos_token_id``: one id or a list (chat models end a turn with e.g. ``<|im_end|>`` as
    well as the tokenizer's EOS). Rows that produced an EOS are filled with
    ``pad_token_id`` after it. ``vocab_size`` slices off padded embedding rows. Sampling
    draws from ``generator`` only, so it never touches the global RNG.
    """
    eos = torch.as_tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
        device=input_ids_BT.device)
    attn = attention_mask_BT.long()
    # Left padding: positions count real tokens only, so a prompt's first token is at 0.
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids_BT, attention_mask=attn, position_ids=pos, use_cache=True,
                **_last_position_only(model))
    done = torch.zeros(input_ids_BT.shape[0], dtype=torch.bool, device=input_ids_BT.device)
    new = []
    for _ in range(max_new_tokens):
        logits_BV = out.logits[:, -1, :vocab_size].float()
        if greedy:
            tok = logits_BV.argmax(-1)
        else:
            probs = torch.softmax(logits_BV / temperature, dim=-1)
            tok = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
        new.append(tok)
        done |= torch.isin(tok, eos)
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=pos,
                    use_cache=True, **_cache_of(out))
    if not new:
        return input_ids_BT.new_zeros((input_ids_BT.shape[0], 0))
    return torch.stack(new, dim=1)


def _eos_ids(model, tokenizer) -> List[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (end-of-turn tokens)."""
    ids = {tokenizer.eos_token_id}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([gen] if isinstance(gen, int) else list(gen or []))
    return sorted(i for i in ids if i is not None)


def chat_prompt(tokenizer, question: str) -> str:
    """The tokenizer's chat-template prompt for one user question (generation prompt on)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)


@dataclass
class EvalResult:
    """Accuracy of a model on a problem set, with its 95% interval and per-problem records."""

    accuracy: float
    ci_low: float
    ci_high: float
    n: int
    k: int
    metric: str
    """"pass@1" (k = 1) or "avg@k"."""
    ci_method: str
    records: List[dict] = field(default_factory=list)
    """Per problem: id, question, target, completions, predictions, correct, score."""

    def summary(self) -> dict:
        """Everything but the records (for provenance files and logs)."""
        return {k: v for k, v in self.__dict__.items() if k != "records"}


def evaluate(model, tokenizer, problems: Sequence[dict], k: int = 1, greedy: bool = True,
             max_new_tokens: int = 64, batch_size: int = 64,
             generator: Optional[torch.Generator] = None, device="cpu",
             temperature: float = 1.0,
             prompt_fn: Optional[Callable[[str], str]] = None,
             progress: Optional[bool] = None) -> EvalResult:
    """Greedy pass@1, or avg@k over k samples per problem, of ``model`` on GSM8K-format rows.

    Prompts are ``prompt_fn(question)`` (default: the tokenizer's chat template) tokenized
    without extra special tokens, left-padded in batches of ``batch_size`` rows.
    ``progress``: a ``tqdm.auto`` bar over the samples with the running accuracy;
    ``None`` shows it only when stderr is a terminal and ``OPDPLUS_QUIET`` is unset
    (``opdplus.progress``), so tests and notebooks under nbval stay quiet.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if greedy and k > 1:
        raise ValueError("greedy decoding gives k identical samples: use greedy=False for k > 1")
    if not greedy and generator is None:
        generator = torch.Generator(device=device).manual_seed(0)
    prompt_fn = prompt_fn or (lambda q: chat_prompt(tokenizer, q))
    targets = [target_of(p) for p in problems]
    prompts = [prompt_fn(p["question"]) for p in problems]
    # Row i of the flat list is sample (i % k) of problem (i // k): prompt-major.
    flat = [pr for pr in prompts for _ in range(k)]
    eos_ids = _eos_ids(model, tokenizer)
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    texts: List[str] = []
    bar = progress_bar(total=len(flat), desc=f"evaluate ({'pass@1' if k == 1 else f'avg@{k}'})",
                       unit="sample", progress=progress)
    n_right = 0
    try:
        for s in range(0, len(flat), batch_size):
            enc = tokenizer(flat[s:s + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            new_BT = generate(model, enc["input_ids"], enc["attention_mask"], max_new_tokens,
                              eos_ids, tokenizer.pad_token_id, greedy=greedy,
                              temperature=temperature, generator=generator,
                              vocab_size=len(tokenizer))
            batch = tokenizer.batch_decode(new_BT, skip_special_tokens=True)
            n_right += sum(grade(c, targets[(s + j) // k]) for j, c in enumerate(batch))
            texts += batch
            bar.update(len(batch))
            bar.set_postfix(acc=f"{n_right / len(texts):.3f}")
    finally:
        bar.close()
        model.train(was_training)
        tokenizer.padding_side = side
    records = []
    for i, (p, t) in enumerate(zip(problems, targets)):
        comps = texts[i * k:(i + 1) * k]
        correct = [grade(c, t) for c in comps]
        records.append({"id": p.get("id", i), "question": p["question"], "target": t,
                        "completions": comps, "predictions": [extract_answer(c) for c in comps],
                        "correct": correct, "score": sum(correct) / k})
    scores = [r["score"] for r in records]
    n = len(records)
    acc = sum(scores) / n if n else 0.0
    if k == 1:
        lo, hi = wilson_interval(int(sum(scores)), n)
        metric, method = "pass@1", "Wilson score interval, 95%"
    else:
        lo, hi = avg_at_k_interval(scores, k)
        metric, method = f"avg@{k}", ("Wilson score interval on all samples with the design "
                                      "effect of within-problem correlation, 95%")
    return EvalResult(acc, lo, hi, n, k, metric, method, records)


# ----------------------------------------------------------------------------- GSM8K


def read_gsm8k_jsonl(path: Union[str, Path]) -> List[dict]:
    """Rows of a JSONL file in GSM8K's format; a bad row raises naming file and line.

    Each non-blank line must be a JSON object with string ``question`` and ``answer``, the
    answer containing ``#### <number>``. Extra keys are kept.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in ("question", "answer"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise ValueError(f"{where}: missing or empty string field {key!r}")
            if extract_answer(row["answer"]) is None:
                raise ValueError(f"{where}: 'answer' has no final '#### <number>'")
            rows.append(row)
    return rows


def load_gsm8k(split: str = "test", path: Optional[Union[str, Path]] = None) -> List[dict]:
    """GSM8K rows ``{"question", "answer"}``: from ``path`` (JSONL) or from the hub.

    With no ``path``, loads ``openai/gsm8k`` (config ``main``) through ``datasets``; offline
    (``HF_HUB_OFFLINE=1`` and nothing cached) this raises an error that says to pass ``path``.
    """
    if path is not None:
        return read_gsm8k_jsonl(path)
    if split not in ("train", "test"):
        raise ValueError(f"GSM8K has splits 'train' and 'test', got {split!r}")
    try:
        import datasets

        ds = datasets.load_dataset("openai/gsm8k", "main", split=split)
    except Exception as e:  # offline, no cache, or no network: say how to proceed
        raise RuntimeError(
            f"could not load openai/gsm8k ({type(e).__name__}: {e}). Offline, pass "
            f"path= a local JSONL in GSM8K's format (question, answer ending '#### n')."
        ) from e
    return [{"question": r["question"], "answer": r["answer"]} for r in ds]
