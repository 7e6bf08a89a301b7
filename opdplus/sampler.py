"""Rollouts: G samples per prompt from a causal LM, with exact sampler log-probs.

``sample(model, prompt_ids, G=..., generator=...)`` left-pads the prompts, repeats each
one G times (prompt-major: rows ``[g*G, (g+1)*G)`` share prompt g) and decodes with the
model's KV cache, one token per forward pass. We write the loop ourselves instead of
calling ``model.generate`` for two reasons: ``generate`` draws from the *global* RNG
(so a plot that samples would change the next rollout), and we want the log-prob of each
sampled token under the distribution actually sampled (temperature, top-k, top-p) without
a second pass. ``torch.multinomial(..., generator=gen)`` takes the sampler's own generator.

The ``Rollout`` data type, with its two masks (``attention_mask``: what the model may
attend to; ``completion_mask``: the tokens in the loss) and its padding and position
helpers, lives in ``opdplus.rollout``, which both this module and ``scoring`` import (so
the dependency runs one way). A later multi-turn tool-use rollout appends tool-result
tokens with attention 1 and completion-mask 0: conditioned on, never scored. The rollout
type and helpers, scoring (``score``) and the tokenizer pre-flight (``preflight``) are
re-exported here, so ``from opdplus.sampler import Rollout`` keeps working.

Simplified: no beam search, no repetition penalties, no stop strings (only EOS ids).
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .preflight import TokenizerMismatchError, preflight  # noqa: F401  (re-exported)
from .rollout import (  # noqa: F401  (re-exported: the data type and its helpers)
    IntOrList,
    Rollout,
    _eos_tensor,
    completion_mask_from_ids,
    left_pad,
    position_ids_from_mask,
    rollout_from_sequences,
)
from .scoring import Scores, score  # noqa: F401  (re-exported)

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
