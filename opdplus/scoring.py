"""Scoring a rollout: per-token log-probs of the sampled tokens under a model.

``score(model, rollout, grad=...)`` runs one forward pass over prompt + completion and
returns ``logp_BT``, the log-prob of each completion token (0 off the completion mask).
Use ``grad=True`` for the student, ``grad=False`` (the default) for the teacher.

Only the positions that predict a masked completion token reach the LM head: the
model's own ``logits_to_keep`` takes a boolean (B, L) mask and returns the logits packed
as ``(N, V)`` (N = masked tokens), so prompt, padding and after-EOS positions cost no
``V``-sized work. The log-softmax then runs in float32, ``chunk_size`` positions at a
time; with grad each chunk is recomputed in the backward pass, so at most one
``(chunk, V)`` float32 block is alive (V = 150k stays cheap).

``return_logits=True`` also returns those packed logits (``logits_NV``, the model's
dtype, sliced to ``vocab_size``), which is what ``logit_distillation_loss`` and the
analytic baseline ``Divergence.expected_advantage`` need; ``scatter_rows`` puts an
``(N,)`` result back into the (B, T) frame.

Position ids come from the attention mask (``cumsum - 1``, ``rollout.position_ids_from_mask``),
exactly as in the sampler, so left padding and masked-out tool results do not shift
positions. This module imports ``opdplus.rollout`` and never ``opdplus.sampler``.

Simplified: the packed-logits path needs a transformers version whose ``logits_to_keep``
accepts a boolean mask (5.x); older versions get the last T + 1 positions as (B, T+1, V)
and are indexed afterwards, which costs the full (B, T, V) memory.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .rollout import Rollout, position_ids_from_mask  # noqa: F401  (position ids re-exported)


@dataclass
class Scores:
    """What ``score`` returns."""

    logp_BT: Tensor
    """(B, T) float32 log-prob of each completion token; 0 where the mask is off."""
    logits_NV: Optional[Tensor] = None
    """(N, V) logits at the N masked positions (row-major over (B, T)), if requested."""


def _chunk_logp(logits_CV: Tensor, targets_C: Tensor, vocab_size: Optional[int]) -> Tensor:
    z = logits_CV if vocab_size is None else logits_CV[:, :vocab_size]
    z = z.float()
    return z.gather(-1, targets_C[:, None]).squeeze(-1) - torch.logsumexp(z, -1)


def token_logp(
    logits_NV: Tensor, targets_N: Tensor, vocab_size: Optional[int] = None, chunk_size: int = 1024
) -> Tensor:
    """log softmax(logits)[target] in float32, ``chunk_size`` rows at a time (recomputed)."""
    if vocab_size is not None and targets_N.numel() and int(targets_N.max()) >= vocab_size:
        raise ValueError(f"a target token id is >= vocab_size {vocab_size}")
    parts = []
    use_ckpt = torch.is_grad_enabled() and logits_NV.requires_grad
    for s in range(0, logits_NV.shape[0], chunk_size):
        a, b = logits_NV[s : s + chunk_size], targets_N[s : s + chunk_size]
        parts.append(
            checkpoint(_chunk_logp, a, b, vocab_size, use_reentrant=False)
            if use_ckpt
            else _chunk_logp(a, b, vocab_size)
        )
    return torch.cat(parts) if parts else logits_NV.new_zeros(0, dtype=torch.float32)


def scatter_rows(values_N: Tensor, mask_BT: Tensor) -> Tensor:
    """Put ``(N,)`` values (row-major over the mask) back into a (B, T) tensor, 0 elsewhere."""
    out = torch.zeros(mask_BT.shape, dtype=values_N.dtype, device=values_N.device)
    return out.masked_scatter(mask_BT.bool(), values_N)


@functools.lru_cache(maxsize=1)
def _bool_logits_to_keep() -> bool:
    """Whether this transformers version packs logits with a boolean (B, L) ``logits_to_keep``."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:
        return False
    h = torch.arange(6.0).view(1, 3, 2)
    try:
        out = slice_logits_to_keep(h, torch.tensor([[False, True, False]]))
    except Exception:
        return False
    return tuple(out.shape) == (1, 2)


def packed_logits(
    model, input_ids: Tensor, attention_mask: Tensor, prompt_len: int, mask_BT: Tensor
) -> Tensor:
    """``(N, V)`` logits that predict the masked completion tokens, in the model's dtype.

    The logit at sequence position ``P + t - 1`` predicts completion token t.
    """
    B, L = input_ids.shape
    T = L - prompt_len
    if mask_BT.shape != (B, T):
        raise ValueError(f"completion mask {tuple(mask_BT.shape)} does not match ({B}, {T})")
    if prompt_len < 1:
        raise ValueError(
            "a rollout needs at least one prompt position (e.g. BOS) to predict token 0"
        )
    keep_BL = torch.zeros((B, L), dtype=torch.bool, device=input_ids.device)
    keep_BL[:, prompt_len - 1 : L - 1] = mask_BT.bool()
    packed = _bool_logits_to_keep()
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        logits_to_keep=keep_BL if packed else T + 1,  # fallback: the last T + 1 positions
    )
    logits = out.logits
    if logits.ndim == 3:  # (B, k, V) for the last k positions: index the kept ones
        logits = logits[keep_BL[:, L - logits.shape[1] :]]
    return logits


def score(
    model,
    rollout: Rollout,
    *,
    grad: bool = False,
    return_logits: bool = False,
    vocab_size: Optional[int] = None,
    chunk_size: int = 1024,
) -> Scores:
    """Per-token log-probs of ``rollout``'s completion tokens under ``model``.

    ``grad``: keep the graph (the student); otherwise run under ``no_grad`` (the teacher).
    ``vocab_size``: normalise over the first ``vocab_size`` logits only (see ``preflight``).
    ``return_logits``: also return the packed ``(N, V)`` logits at the masked positions.
    """
    mask_BT = rollout.completion_mask.bool()
    with torch.set_grad_enabled(grad):
        logits_NV = packed_logits(
            model, rollout.input_ids, rollout.attention_mask, rollout.prompt_len, mask_BT
        )
        targets_N = rollout.completion_ids[mask_BT]
        logp_N = token_logp(logits_NV, targets_N, vocab_size, chunk_size)
        logp_BT = scatter_rows(logp_N, mask_BT)
    if return_logits and vocab_size is not None:
        logits_NV = logits_NV[:, :vocab_size]
    return Scores(logp_BT=logp_BT, logits_NV=logits_NV if return_logits else None)
