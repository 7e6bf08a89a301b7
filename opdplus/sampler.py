"""Rollouts: G samples per prompt from a causal LM, with exact sampler log-probs.

``sample(model, prompt_ids, G=..., generator=...)`` left-pads the prompts, repeats each
one G times (prompt-major: rows ``[g*G, (g+1)*G)`` share prompt g) and decodes with the
model's KV cache, one token per forward pass. We write the loop ourselves instead of
calling ``model.generate`` for two reasons: ``generate`` draws from the *global* RNG
(so a plot that samples would change the next rollout), and we want the log-prob of each
sampled token under the distribution actually sampled (temperature, top-k, top-p) without
a second pass. ``torch.multinomial(..., generator=gen)`` takes the sampler's own generator.

The ``Rollout`` keeps two masks apart on purpose:

- ``attention_mask`` (B, P+T): what the model may attend to (prompt and completion,
  never padding);
- ``completion_mask`` (B, T): the tokens in the loss, the ones the policy chose. It
  excludes the prompt, padding and everything after EOS, and keeps the real EOS even
  when pad == eos (the mask comes from the decoding state, not from token ids).

A later multi-turn tool-use rollout appends tool-result tokens with attention 1 and
completion-mask 0: conditioned on, never scored. Scoring (``score``) and the tokenizer
pre-flight (``preflight``) live in their own modules and are re-exported here.

Simplified: no beam search, no repetition penalties, no stop strings (only EOS ids).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

from .preflight import TokenizerMismatchError, preflight  # noqa: F401  (re-exported)
from .scoring import Scores, position_ids_from_mask, score  # noqa: F401  (re-exported)

IntOrList = Union[int, Sequence[int]]


@dataclass
class Rollout:
    """A batch of sequences, prompt (left-padded) then completion. B = P_prompts x G rows.

    Shapes: ``input_ids`` and ``attention_mask`` are (B, P+T) with P = ``prompt_len`` (the
    padded prompt length) and T the completion length; the ``_BT``-shaped tensors below
    cover the T completion positions only.
    """

    input_ids: Tensor
    """(B, P+T) long: prompt tokens, then sampled tokens; pad after EOS."""
    attention_mask: Tensor
    """(B, P+T) long: 1 where the model may attend (prompt and completion, not padding)."""
    completion_mask: Tensor
    """(B, T) bool: tokens in the loss (the policy's own choices, EOS included)."""
    sampler_logp: Optional[Tensor]
    """(B, T) float32: log-prob of each token under the distribution that drew it (0 off
    the mask); None when unknown (dataset sequences)."""
    truncated: Tensor
    """(B,) bool: hit ``max_new_tokens`` without EOS."""
    prompt_len: int
    """P, the padded prompt length: completion position t is sequence position P + t."""
    group_size: int = 1
    """G, samples per prompt; rows ``[g*G, (g+1)*G)`` share prompt g."""
    texts: List[str] = field(default_factory=list)
    """Decoded completions (special tokens skipped), when a tokenizer was given."""
    temperature: float = 1.0
    """Sampling temperature used (0 = greedy)."""
    top_p: float = 1.0
    """Nucleus mass used (1 = off)."""
    top_k: int = 0
    """Top-k used (0 = off)."""
    source: str = "student"
    """Who produced the completion: "student", "teacher" or "dataset"."""

    @property
    def completion_ids(self) -> Tensor:
        """(B, T) the completion tokens (pad where the mask is off)."""
        return self.input_ids[:, self.prompt_len :]

    @property
    def lengths(self) -> Tensor:
        """(B,) completion tokens in the loss per row."""
        return self.completion_mask.sum(-1)

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    @property
    def on_policy_untempered(self) -> bool:
        """True when the tokens were drawn from the unmodified policy (T = 1, no top-k/p)."""
        return self.temperature == 1.0 and self.top_p >= 1.0 and self.top_k == 0

    def to(self, device) -> "Rollout":
        mv = lambda x: None if x is None else x.to(device)  # noqa: E731
        return replace(
            self,
            input_ids=mv(self.input_ids),
            attention_mask=mv(self.attention_mask),
            completion_mask=mv(self.completion_mask),
            sampler_logp=mv(self.sampler_logp),
            truncated=mv(self.truncated),
        )


# ----------------------------------------------------------------------------- padding, masks


def left_pad(seqs: Sequence[Sequence[int]], pad_token_id: int, device=None):
    """Left-pad token lists into ``(ids_BP, mask_BP)``. Raises on an empty sequence."""
    if not seqs:
        raise ValueError("no prompts to pad")
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise ValueError(f"prompt {i} is empty (0 tokens); remove it or give it text")
    P = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), P), int(pad_token_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), P), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, P - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, P - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _eos_tensor(eos_token_id: IntOrList, device) -> Tensor:
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if not ids:
        raise ValueError("need at least one EOS token id")
    return torch.as_tensor(ids, dtype=torch.long, device=device)


def completion_mask_from_ids(
    completion_ids_BT: Tensor, eos_token_id: IntOrList, lengths_B=None
) -> Tensor:
    """Mask of the tokens up to and including the first EOS (all, if there is none).

    For sequences that did not come from ``sample`` (dataset or external completions).
    ``lengths_B`` additionally cuts each row at its true length, which is what makes
    pad == eos safe: padding beyond the length is never mistaken for a kept EOS.
    """
    B, T = completion_ids_BT.shape
    is_eos = torch.isin(completion_ids_BT, _eos_tensor(eos_token_id, completion_ids_BT.device))
    if lengths_B is not None:
        pos = torch.arange(T, device=completion_ids_BT.device)
        is_eos = is_eos & (pos[None] < lengths_B[:, None])
    # eos strictly before position t  <=>  exclusive cumulative count > 0
    before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    mask = ~before
    if lengths_B is not None:
        mask &= torch.arange(T, device=completion_ids_BT.device)[None] < lengths_B[:, None]
    return mask


def rollout_from_sequences(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_id: IntOrList,
    group_size: int = 1,
    source: str = "dataset",
    device=None,
) -> Rollout:
    """A ``Rollout`` from given prompt and completion tokens (sampler log-probs unknown).

    Completions are right-padded; the mask keeps each completion up to its first EOS.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    ids_BP, attn_BP = left_pad(prompt_ids, pad_token_id, device)
    T = max(1, max(len(c) for c in completion_ids))
    comp = torch.full((len(completion_ids), T), int(pad_token_id), dtype=torch.long, device=device)
    for i, c in enumerate(completion_ids):
        if len(c):
            comp[i, : len(c)] = torch.as_tensor(list(c), dtype=torch.long, device=device)
    lengths = torch.as_tensor([len(c) for c in completion_ids], device=device)
    cmask = completion_mask_from_ids(comp, eos_token_id, lengths)
    has_eos = (torch.isin(comp, _eos_tensor(eos_token_id, comp.device)) & cmask).any(-1)
    return Rollout(
        input_ids=torch.cat([ids_BP, comp], 1),
        attention_mask=torch.cat([attn_BP, cmask.long()], 1),
        completion_mask=cmask,
        sampler_logp=None,
        truncated=~has_eos,
        prompt_len=ids_BP.shape[1],
        group_size=group_size,
        source=source,
    )


# ------------------------------------------------------------------------- the sampled distribution


def sampling_log_probs(
    logits_BV: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Tensor:
    """Log-probs of the distribution that is sampled: softmax(logits / T), then top-k, then top-p.

    Float32; filtered-out tokens get -inf. ``temperature == 0`` means greedy: the argmax
    gets log-prob 0 (probability 1). Top-p keeps the smallest set of most likely tokens
    whose mass reaches ``top_p`` (always at least one) and renormalises.
    """
    z = logits_BV.float()
    if temperature == 0.0:
        out = torch.full_like(z, float("-inf"))
        return out.scatter(-1, z.argmax(-1, keepdim=True), 0.0)
    z = z / temperature
    if 0 < top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    logp = torch.log_softmax(z, -1)
    if top_p < 1.0:
        sorted_lp, order = torch.sort(logp, dim=-1, descending=True)
        probs = sorted_lp.exp()
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= top_p  # the first token always stays (mass_before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), -1)
    return logp


# ----------------------------------------------------------------------------- sampling


def _cache_for(model):
    from transformers import DynamicCache

    cfg = getattr(model, "config", None)
    try:
        return DynamicCache(config=cfg)
    except TypeError:  # older transformers
        return DynamicCache()


def _cache_kwarg(model) -> str:
    """Name of the KV-cache argument: ``cache`` (transformers >= 5.x) or ``past_key_values``.

    Passing the wrong name would be swallowed by ``**kwargs`` and silently disable the
    cache (every step would then see one token without its context), so we look it up.
    """
    inner = getattr(model, "module", model)  # DDP / FSDP1 wrappers keep the model in .module
    try:
        params = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return "cache"
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    return "cache"


@torch.no_grad()
def sample(
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    G: int = 1,
    generator: Optional[torch.Generator] = None,
    eos_token_id: IntOrList,
    pad_token_id: Optional[int] = None,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    vocab_size: Optional[int] = None,
    tokenizer=None,
    source: str = "student",
) -> Rollout:
    """Sample G completions per prompt with the KV cache; see the module docstring.

    ``model``: a causal LM (or an Accelerate-wrapped one) taking ``input_ids``,
    ``attention_mask``, ``position_ids``, ``cache`` and ``logits_to_keep``.
    ``vocab_size``: sample only among the first ``vocab_size`` logits (the shared real
    vocabulary from ``preflight``; padded embedding rows are never drawn).
    ``generator`` must live on the model's device; with the same generator state and
    model, the rollout is identical.
    """
    if G < 1 or max_new_tokens < 1:
        raise ValueError(
            f"need G >= 1 and max_new_tokens >= 1, got G={G}, max_new_tokens={max_new_tokens}"
        )
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(
            f"bad sampling params: temperature={temperature}, top_p={top_p}, top_k={top_k}"
        )
    device = next(model.parameters()).device
    eos = _eos_tensor(eos_token_id, device)
    pad = int(eos[0]) if pad_token_id is None else int(pad_token_id)
    rows = [list(p) for p in prompt_ids for _ in range(G)]
    ids_BP, attn_BP = left_pad(rows, pad, device)
    B, P = ids_BP.shape

    cache, cache_kw = _cache_for(model), _cache_kwarg(model)
    attn = attn_BP
    step_ids, step_pos = ids_BP, position_ids_from_mask(attn_BP)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    toks, logps, live = [], [], []
    for _ in range(max_new_tokens):
        out = model(
            input_ids=step_ids,
            attention_mask=attn,
            position_ids=step_pos,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        )
        logits_BV = out.logits[:, -1]
        if vocab_size is not None:
            logits_BV = logits_BV[:, :vocab_size]
        logp_BV = sampling_log_probs(logits_BV, temperature, top_k, top_p)
        if temperature == 0.0:
            tok = logp_BV.argmax(-1)
        else:
            tok = torch.multinomial(logp_BV.exp(), 1, generator=generator).squeeze(-1)
        tok_lp = logp_BV.gather(-1, tok[:, None]).squeeze(-1)
        alive = ~finished
        tok = torch.where(alive, tok, torch.full_like(tok, pad))
        toks.append(tok)
        logps.append(torch.where(alive, tok_lp, torch.zeros_like(tok_lp)))
        live.append(alive)
        finished = finished | (alive & torch.isin(tok, eos))
        attn = torch.cat([attn, alive.long()[:, None]], 1)
        if bool(finished.all()):
            break
        step_ids = tok[:, None]
        step_pos = (attn.sum(-1, keepdim=True) - 1).clamp_min(0)  # position of the new token
    comp_BT = torch.stack(toks, 1)
    cmask_BT = torch.stack(live, 1)
    texts = []
    if tokenizer is not None:
        texts = [
            tokenizer.decode(r[m].tolist(), skip_special_tokens=True)
            for r, m in zip(comp_BT, cmask_BT)
        ]
    return Rollout(
        input_ids=torch.cat([ids_BP, comp_BT], 1),
        attention_mask=attn,
        completion_mask=cmask_BT,
        sampler_logp=torch.stack(logps, 1).float(),
        truncated=~finished,
        prompt_len=P,
        group_size=G,
        texts=texts,
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        source=source,
    )


class Sampler:
    """Sampling settings plus the sampler's own ``torch.Generator`` (same seed, same rollouts).

    ``sampler(model, prompt_ids, G)`` returns a ``Rollout``. Nothing here touches the
    global RNG, so drawing a plot or evaluating between two calls changes nothing.
    ``reseed(seed)`` restarts the stream (the trainer reseeds per step and micro-batch so
    that a run's rollouts do not depend on the number of processes).
    """

    def __init__(
        self,
        *,
        eos_token_id: IntOrList,
        pad_token_id: Optional[int] = None,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        vocab_size: Optional[int] = None,
        seed: int = 0,
        device: Union[str, torch.device] = "cpu",
    ):
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.vocab_size = vocab_size
        self.generator = torch.Generator(device=torch.device(device))
        self.generator.manual_seed(int(seed))

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def __call__(
        self, model, prompt_ids, G: int = 1, tokenizer=None, source: str = "student"
    ) -> Rollout:
        return sample(
            model,
            prompt_ids,
            G=G,
            generator=self.generator,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            vocab_size=self.vocab_size,
            tokenizer=tokenizer,
            source=source,
        )
