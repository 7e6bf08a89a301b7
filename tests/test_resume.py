"""Resuming a run that has every kind of state gives the uninterrupted run, exactly.

State that a checkpoint must carry: the learning-rate warm-up (scheduler), AdamW's
moments, the mixing draws (seeded per step and micro-batch), the sampler's generator,
the History (with its evaluations) and the skipped-step count. One run is stopped after
2 of 4 steps and resumed; its History, weights and learning rates must equal those of a
run that never stopped. The warm-up is checked against its closed form as well, so a
resumed scheduler that restarted from step 0 cannot hide.
"""

import pytest
import torch

from opdplus import models
from opdplus.config import TrainConfig
from opdplus.trainer import VOLATILE_KEYS, teacher_kl_eval, train

WORDS = [f"w{i}" for i in range(40)]
TOK = models.word_tokenizer(WORDS)
V = len(TOK)
IDS = dict(eos_token_id=2, pad_token_id=0, bos_token_id=1)
PROMPTS = [" ".join(f"w{(i * 7 + j * 3) % 40}" for j in range(1 + i % 4)) for i in range(64)]
LR, WARMUP = 1e-2, 3
CFG = TrainConfig(
    steps=4,
    prompts_per_step=4,
    samples_per_prompt=2,
    micro_batch_prompts=2,  # gradient accumulation over 2 micro-batches
    max_new_tokens=8,
    lr=LR,
    warmup_steps=WARMUP,
    mix_lambda=0.5,  # teacher-sampled micro-batches, drawn per step and micro-batch
    eval_every=2,
    checkpoint_every=2,
    progress=False,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def pair():
    teacher = models.peaky_teacher(V, seed=1, **IDS)
    student = models.tiny_causal_lm("llama", V, hidden_size=32, num_layers=1, seed=2, **IDS)
    return teacher, student


def strip(history):
    return [{k: v for k, v in r.items() if k not in VOLATILE_KEYS} for r in history]


def run(out_dir, steps, resume=False):
    teacher, student = pair()
    ev = teacher_kl_eval(teacher, TOK, PROMPTS[:4], samples_per_prompt=2, max_new_tokens=8)
    h = train(
        student,
        teacher,
        TOK,
        PROMPTS,
        CFG.replace(steps=steps),
        eval_fn=ev,
        out_dir=out_dir,
        resume=resume,
    )
    return h, {k: v.detach().clone() for k, v in student.state_dict().items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    ref = run(root / "ref", 4)
    first = run(root / "run", 2)
    resumed = run(root / "run", 4, resume=True)
    return ref, first, resumed


def test_resumed_history_and_weights_equal_the_uninterrupted_run(runs):
    (h_ref, w_ref), (h_first, _), (h_res, w_res) = runs
    assert len(h_first) == 2 and len(h_res) == len(h_ref) == 4
    assert strip(h_res) == strip(h_ref)  # float equality on CPU
    assert all(torch.equal(w_res[k], w_ref[k]) for k in w_ref)


def test_the_resumed_steps_exercise_the_state(runs):
    (h_ref, w_ref), (h_first, w_first), _ = runs
    # learning rate: linear warm-up lr * (s + 1) / (warmup + 1), then constant
    assert [r["lr"] for r in h_ref] == pytest.approx(
        [LR * min(1.0, (s + 1) / (WARMUP + 1)) for s in range(4)], rel=1e-12
    )
    # evaluations after steps 2 and 4, one of them in the resumed part
    assert [("eval_teacher_kl" in r) for r in h_ref] == [False, True, False, True]
    # both kinds of micro-batch occur after the restart (mixing draws must line up)
    assert 0 < sum(r["offpolicy_shards"] for r in h_ref[2:]) < 4
    assert not all(torch.equal(w_first[k], w_ref[k]) for k in w_ref)  # the resumed steps trained
