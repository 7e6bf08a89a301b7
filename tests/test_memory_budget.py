"""opdplus.memory_budget: every term against a hand computation, and its errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from opdplus.memory_budget import GIB, step_memory_estimate

RECIPE = {"micro_batch_prompts": 2, "samples_per_prompt": 3, "max_new_tokens": 4}


def _student(**kw):
    base = {"num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2,
            "num_key_value_heads": 1, "vocab_size": 10}
    return SimpleNamespace(**{**base, **kw})


def test_every_term_by_hand():
    # rows 6, seq 6 + 4 = 10, completion tokens 24, head_dim 8 / 2 = 4
    got = step_memory_estimate(None, _student(), 100, 50, RECIPE, prompt_tokens=6,
                               teacher_bytes=2, act_bytes=2)
    by_hand = {
        "teacher weights": 2 * 100,
        "student weights + grads + AdamW (fp32)": 16 * 50,
        "KV cache while sampling": (2 * 2 * 1 * 4 * 2) * 6 * 10,
        "logits at completion positions (2 models + grad)": 3 * 2 * 24 * 10,
        "student activations for backward": 17 * 2 * 6 * 10 * 8 * 2,
    }
    assert got == {k: v / GIB for k, v in by_hand.items()}


def test_explicit_head_dim_and_byte_sizes():
    wide = step_memory_estimate(None, _student(head_dim=16), 1, 1, RECIPE, prompt_tokens=6,
                                teacher_bytes=4, act_bytes=4)
    assert wide["KV cache while sampling"] * GIB == (2 * 2 * 1 * 16 * 4) * 6 * 10
    assert wide["teacher weights"] * GIB == 4


def test_bad_input_names_the_missing_field():
    with pytest.raises(ValueError, match="vocab_size"):
        step_memory_estimate(None, SimpleNamespace(num_hidden_layers=2, hidden_size=8,
                                                   num_attention_heads=2,
                                                   num_key_value_heads=1),
                             1, 1, RECIPE, prompt_tokens=1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        step_memory_estimate(None, _student(), 1, 1, {"micro_batch_prompts": 1,
                                                      "samples_per_prompt": 1}, prompt_tokens=1)
    with pytest.raises(ValueError, match=">= 0"):
        step_memory_estimate(None, _student(), 1, 1, RECIPE, prompt_tokens=-1)
