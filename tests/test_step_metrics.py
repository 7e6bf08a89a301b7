"""The step record's importance-ratio metrics: the raw maximum, and the truncated fraction."""

import math

import pytest

from opdplus import models
from opdplus.config import TrainConfig
from opdplus.trainer import train

WORDS = [f"w{i}" for i in range(40)]
TOK = models.word_tokenizer(WORDS)
V = len(TOK)
IDS = dict(eos_token_id=2, pad_token_id=0, bos_token_id=1)
PROMPTS = [{"prompt": " ".join(f"w{(i * 7 + j * 3) % 40}" for j in range(1 + i % 4))}
           for i in range(32)]
SMALL = TrainConfig(
    steps=2, prompts_per_step=4, samples_per_prompt=2, max_new_tokens=8, lr=1e-2, progress=False
)

pytestmark = pytest.mark.usefixtures("one_thread")


def pair(seed=0):
    teacher = models.peaky_teacher(V, arch="llama", seed=1 + seed, **IDS)
    student = models.tiny_causal_lm("llama", V, hidden_size=32, num_layers=1, seed=2 + seed, **IDS)
    return teacher, student


def test_ratio_max_is_the_raw_ratio_and_the_truncated_fraction_is_beside_it():
    teacher, student = pair()
    # Temperature 0.5: rho = p / p_T exceeds 1 on every token that is not the student's
    # favourite, so with max_importance_ratio = 1 the raw maximum is above the cap.
    h = train(student, teacher, TOK, PROMPTS,
              SMALL.replace(temperature=0.5, max_importance_ratio=1.0))
    for rec in h:
        assert rec["ratio_max"] is not None and rec["ratio_max"] > 1.0
        assert 0.0 < rec["ratio_trunc_frac"] < 1.0
    # on-policy at temperature 1: rho = 1 exactly, nothing truncated
    teacher, student = pair()
    h1 = train(student, teacher, TOK, PROMPTS, SMALL.replace(max_importance_ratio=1.0))
    assert [r["ratio_max"] for r in h1] == [1.0, 1.0]
    assert [r["ratio_trunc_frac"] for r in h1] == [0.0, 0.0]


def test_tempered_rollouts_with_gamma_train_with_prefix_weights():
    teacher, student = pair(1)
    h = train(student, teacher, TOK, PROMPTS,
              SMALL.replace(temperature=1.3, gamma=1.0, divergence="forward_kl",
                            max_importance_ratio=20.0))
    for rec in h:
        assert rec["loss"] is not None and math.isfinite(rec["loss"]) and rec["grad_norm"] > 0
        assert rec["ratio_max"] > 1.0 and 0.0 <= rec["ratio_trunc_frac"] <= 1.0
