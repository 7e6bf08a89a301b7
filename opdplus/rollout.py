"""The rollout data type and its padding, mask and position helpers.

A ``Rollout`` is what the sampler produces and what scoring, the loss and the tool-use
turns consume: prompt (left-padded) then completion, with two masks kept apart on purpose:

- ``attention_mask`` (B, P+T): what the model may attend to (prompt and completion,
  never padding);
- ``completion_mask`` (B, T): the tokens in the loss, the ones the policy chose. It
  excludes the prompt, padding and everything after EOS, and keeps the real EOS even
  when pad == eos (the mask comes from the decoding state, not from token ids).

It lives in its own module, below both ``sampler`` and ``scoring``, so the dependency runs
one way: ``rollout`` <- ``scoring`` <- ``sampler``. Position ids come from the attention
mask (``position_ids_from_mask``), in sampling and in scoring alike, so left padding and
masked-out tool results never shift positions. ``opdplus.sampler`` re-exports every name
here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

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


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions that skip padding: ``cumsum(mask) - 1``, clamped at 0 (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
