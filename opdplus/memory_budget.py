"""A rough memory budget of one distillation step, from two model configs: an estimate.

Before renting a GPU you want to know whether a teacher/student pair and a batch size fit.
:func:`step_memory_estimate` adds up the big terms of one training step from the models'
``config.json`` numbers alone (no weights are loaded), so it can be run for any pair:

* the teacher's weights (``teacher_bytes`` per parameter: 2 in bf16);
* the student's float32 weights, gradients and two AdamW moments: 16 bytes per parameter;
* the KV cache while one micro-batch samples: per token, ``layers x 2 (K and V) x
  kv_heads x head_dim`` values;
* the logits at the completion positions of one micro-batch, for both models plus the
  student's gradient (3 tensors of ``N x V``; the float32 log-softmax works in chunks, so
  it adds little);
* the student's activations kept for the backward pass: about 34 bytes per token, per unit
  of width, per layer in 16-bit (Korthikanti et al. 2022), i.e. ``17 x act_bytes``.

Simplified: attention scores, the optimizer's temporaries, the allocator's fragmentation and
the framework's own buffers are left out, so a measured peak is higher. Notebook 06 compares
the estimate with ``torch.cuda.max_memory_allocated`` on a GPU run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GIB = 2**30

RECIPE_KEYS = ("micro_batch_prompts", "samples_per_prompt", "max_new_tokens")
CONFIG_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
               "vocab_size")


def _need(obj: Any, keys, what: str) -> None:
    get = obj.get if isinstance(obj, Mapping) else (lambda k: getattr(obj, k, None))
    missing = [k for k in keys if get(k) is None]
    if missing:
        raise ValueError(f"step_memory_estimate: {what} lacks {missing}; pass a model config "
                         f"(or a SimpleNamespace) with {list(keys)}")


def step_memory_estimate(t_cfg: Any, s_cfg: Any, n_teacher: float, n_student: float,
                         recipe: Mapping[str, Any], prompt_tokens: int, teacher_bytes: int = 2,
                         act_bytes: int = 2) -> dict[str, float]:
    """Estimated peak memory of one training step, GiB per term (an estimate, not a measurement).

    ``t_cfg``/``s_cfg``: the teacher's and student's configs (``num_hidden_layers``,
    ``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``, ``vocab_size``, and
    ``head_dim`` where it is not ``hidden_size / num_attention_heads``); ``n_teacher`` and
    ``n_student``: parameter counts; ``recipe``: ``micro_batch_prompts``,
    ``samples_per_prompt`` and ``max_new_tokens``; ``prompt_tokens``: the longest prompt.
    The KV cache, logits and activations are the student's (the teacher only scores, under
    ``no_grad``, one micro-batch at a time).
    """
    _need(s_cfg, CONFIG_KEYS, "the student's config")
    _need(recipe, RECIPE_KEYS, "the recipe")
    if prompt_tokens < 0 or n_teacher < 0 or n_student < 0:
        raise ValueError("step_memory_estimate: prompt_tokens and parameter counts must be >= 0")
    rows = recipe["micro_batch_prompts"] * recipe["samples_per_prompt"]
    seq = prompt_tokens + recipe["max_new_tokens"]
    n_completion = rows * recipe["max_new_tokens"]
    head_dim = getattr(s_cfg, "head_dim", None) or s_cfg.hidden_size // s_cfg.num_attention_heads
    kv_per_token = s_cfg.num_hidden_layers * 2 * s_cfg.num_key_value_heads * head_dim * act_bytes
    terms = {
        "teacher weights": teacher_bytes * n_teacher,
        "student weights + grads + AdamW (fp32)": 16 * n_student,
        "KV cache while sampling": kv_per_token * rows * seq,
        "logits at completion positions (2 models + grad)": 3 * act_bytes * n_completion
        * s_cfg.vocab_size,
        "student activations for backward": 17 * act_bytes * rows * seq * s_cfg.hidden_size
        * s_cfg.num_hidden_layers,
    }
    return {k: v / GIB for k, v in terms.items()}
