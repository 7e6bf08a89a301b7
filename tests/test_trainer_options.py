"""Every ``TrainConfig`` mode: one step's gradient and loss against a recomputation by hand.

For each mode the trainer's step (``collect_rollouts`` + ``accumulate_gradients``) is
compared with the same rollouts scored again and fed to ``pg_loss`` /
``logit_distillation_loss`` with the option spelled out, or to plain torch. Each case
also checks that the option *matters* on these rollouts (the recomputation without it
gives another gradient), so a trainer that silently ignored it would fail.

Also here, the fast unit checks of the step's plumbing: gradient clipping, the prompt
order, and the data-parallel token count (two ranks simulated in one process).
"""

import contextlib
import math

import pytest
import torch

from opdplus import models
from opdplus.config import TrainConfig
from opdplus.divergences import get as get_divergence
from opdplus.estimators import logit_distillation_loss, pg_loss
from opdplus.prompts import prompt_indices
from opdplus.sampler import score
from opdplus.step import shard_kind, train_step
from opdplus.trainer import _make_accelerator, accumulate_gradients, collect_rollouts, setup

WORDS = [f"w{i}" for i in range(40)]
TOK = models.word_tokenizer(WORDS)
V = len(TOK)
IDS = dict(eos_token_id=2, pad_token_id=0, bos_token_id=1)
PROMPTS = [" ".join(f"w{(i * 7 + j * 3) % 40}" for j in range(1 + i % 4)) for i in range(64)]
RECORDS = [{"prompt": p, "completion": "w1 w2 w3"} for p in PROMPTS]
# 4 prompts x 2 samples in 2 micro-batches: gradient accumulation is always on.
BASE = TrainConfig(
    steps=3,
    prompts_per_step=4,
    samples_per_prompt=2,
    micro_batch_prompts=2,
    max_new_tokens=8,
    lr=1e-2,
    progress=False,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def pair(seed=0):
    teacher = models.peaky_teacher(V, seed=1 + seed, **IDS)
    student = models.tiny_causal_lm("llama", V, hidden_size=32, num_layers=1, seed=2 + seed, **IDS)
    return teacher, student


def grads_of(model):
    g = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return g


def assert_same(got, want):
    assert set(got) == set(want)
    for k in got:
        torch.testing.assert_close(got[k], want[k], atol=1e-7, rtol=1e-5, msg=k)


def differ(a, b):
    scale = max(float(v.abs().max()) for v in b.values())
    return max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-3 * scale


def trainer_step(cfg, step=0, prompts=RECORDS):
    """The trainer's accumulated gradient and statistics for one step (no update)."""
    teacher, student = pair()
    state = setup(student, teacher, TOK, prompts, cfg)
    rollouts = collect_rollouts(state, step)
    stats = accumulate_gradients(state, rollouts)
    return state, rollouts, stats, grads_of(student)


def by_hand(state, rollouts, loss_fn):
    """Sum of ``loss_fn(kind, r, s, t, N)`` over the micro-batches, back-propagated."""
    n_total = float(sum(r.num_tokens for _, r in rollouts))
    student, teacher = state.unwrapped, state.teacher
    total = 0.0
    for kind, r in rollouts:
        s = score(student, r, grad=True, return_logits=True, vocab_size=state.vocab_size)
        t = score(teacher, r, return_logits=True, vocab_size=state.vocab_size)
        loss = loss_fn(kind, r, s, t, n_total)
        loss.backward()
        total += float(loss.detach())
    return total, grads_of(student)


def pg(divergence="reverse_kl", estimator="opd+", off_policy=False, **kw):
    """A ``loss_fn`` for ``by_hand``: ``pg_loss`` with the given options."""

    def fn(kind, r, s, t, n):
        return pg_loss(
            s.logp_BT,
            t.logp_BT,
            r.completion_mask,
            divergence,
            estimator,
            sampler_logp_BT=r.sampler_logp if off_policy else None,
            num_tokens=n,
            **kw,
        )[0]

    return fn


def analytic_baseline_pg(divergence, clip):
    """``pg_loss`` with b_t = E_{a ~ p}[w_f(u(a))], summed over the vocabulary in plain torch."""
    d = get_divergence(divergence)

    def fn(kind, r, s, t, n):
        logp_NV = torch.log_softmax(s.logits_NV.detach().float(), -1)
        logq_NV = torch.log_softmax(t.logits_NV.float(), -1)
        w_NV = d.advantage((logq_NV - logp_NV).clamp(-clip, clip), "opd+")
        b_BT = torch.zeros(r.completion_mask.shape)
        b_BT[r.completion_mask] = (logp_NV.exp() * w_NV).sum(-1)
        return pg(divergence, baseline="analytic", baseline_BT=b_BT, clip_log_u=(-clip, clip))(
            kind, r, s, t, n
        )

    return fn


def full_vocab_kl(direction):
    """Reverse KL(student || teacher) or forward KL(teacher || student) per visited state."""

    def fn(kind, r, s, t, n):
        logp = torch.log_softmax(s.logits_NV.float(), -1)
        logq = torch.log_softmax(t.logits_NV.float(), -1)
        if direction == "reverse":
            per_state = (logp.exp() * (logp - logq)).sum(-1)
        else:
            per_state = (logq.exp() * (logq - logp)).sum(-1)
        return per_state.sum() / n

    return fn


def sequence_nll(kind, r, s, t, n):
    return -(s.logp_BT * r.completion_mask).sum() / n


CLIP = (-6.0, 6.0)
CASES = {
    "gamma=0.5": (
        dict(gamma=0.5, divergence="forward_kl"),
        pg("forward_kl", gamma=0.5, clip_log_u=CLIP),
        [pg("forward_kl", gamma=0.0, clip_log_u=CLIP)],
    ),
    "gamma=1": (
        dict(gamma=1.0),
        pg(gamma=1.0, clip_log_u=CLIP),
        [pg(gamma=0.5, clip_log_u=CLIP), pg(gamma=0.0, clip_log_u=CLIP)],
    ),
    "analytic baseline": (
        dict(baseline="analytic", divergence="forward_kl"),
        analytic_baseline_pg("forward_kl", 6.0),
        [pg("forward_kl", clip_log_u=CLIP)],
    ),
    "leave-one-out baseline": (
        dict(baseline="loo"),
        pg(baseline="loo", group_size=2, clip_log_u=CLIP),
        [pg(clip_log_u=CLIP)],
    ),
    "temperature, top-k, top-p: importance ratio": (
        dict(temperature=0.7, top_k=5, top_p=0.9),
        pg(off_policy=True, clip_log_u=CLIP),
        [pg(off_policy=False, clip_log_u=CLIP)],
    ),
    "temperature 1.5: importance ratio capped at 1": (
        dict(temperature=1.5, max_importance_ratio=1.0),
        pg(off_policy=True, max_importance_ratio=1.0, clip_log_u=CLIP),
        [pg(off_policy=True, clip_log_u=CLIP), pg(off_policy=False, clip_log_u=CLIP)],
    ),
    "temperature 1.5, gamma=0.5: prefix-product weights": (
        dict(temperature=1.5, gamma=0.5, max_importance_ratio=3.0),
        pg(off_policy=True, gamma=0.5, max_importance_ratio=3.0, clip_log_u=CLIP),
        [pg(off_policy=True, gamma=0.5, max_importance_ratio=3.0, clip_log_u=CLIP,
            prefix_weights=False)],
    ),
    "OPD, JSD(0.3), tight clip": (
        dict(estimator="opd", divergence="jsd", divergence_params={"beta": 0.3}, clip_log_u=0.5),
        pg(get_divergence("jsd", beta=0.3), "opd", clip_log_u=(-0.5, 0.5)),
        [
            pg(get_divergence("jsd", beta=0.3), "opd", clip_log_u=CLIP),
            pg(get_divergence("jsd", beta=0.3), "opd+", clip_log_u=(-0.5, 0.5)),
            pg(get_divergence("jsd", beta=0.7), "opd", clip_log_u=(-0.5, 0.5)),
        ],
    ),
    "teacher-sampled shards": (
        dict(mix_lambda=1.0),
        pg(off_policy=True, clip_log_u=CLIP),
        [pg(off_policy=False, clip_log_u=CLIP)],
    ),
    "logits loss, reverse KL": (
        dict(loss="logits"),
        full_vocab_kl("reverse"),
        [full_vocab_kl("forward")],
    ),
    "logits loss, forward KL": (
        dict(loss="logits", divergence="forward_kl"),
        full_vocab_kl("forward"),
        [full_vocab_kl("reverse")],
    ),
    "dataset shards, logits loss": (
        dict(mix_lambda=1.0, mix_source="dataset", loss="logits"),
        full_vocab_kl("reverse"),
        [full_vocab_kl("forward")],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_one_step_gradient_equals_the_recomputation(name):
    change, oracle, contrasts = CASES[name]
    state, rollouts, stats, got = trainer_step(BASE.replace(**change))
    loss, want = by_hand(state, rollouts, oracle)
    assert_same(got, want)
    assert stats["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert stats["tokens"] == sum(r.num_tokens for _, r in rollouts)
    for other in contrasts:  # the option changes the gradient on these very rollouts
        assert differ(by_hand(state, rollouts, other)[1], want)
    kinds = {k for k, _ in rollouts}
    if change.get("mix_lambda") == 1.0:
        assert kinds == {change.get("mix_source", "teacher")}
        assert stats["offpolicy"] == len(rollouts) and stats["kl_tokens"] == 0
    else:
        assert kinds == {"student"} and stats["offpolicy"] == 0


def test_teacher_shards_are_sampled_by_the_teacher():
    state, rollouts, _, _ = trainer_step(BASE.replace(mix_lambda=1.0))
    for _, r in rollouts:
        assert r.source == "teacher"
        m = r.completion_mask
        t = score(state.teacher, r, vocab_size=state.vocab_size).logp_BT
        torch.testing.assert_close(r.sampler_logp[m], t[m], atol=2e-4, rtol=1e-4)


def test_dataset_shards_hold_each_prompts_completion():
    state, rollouts, _, _ = trainer_step(
        BASE.replace(mix_lambda=1.0, mix_source="dataset", loss="logits"), prompts=RECORDS
    )
    for _, r in rollouts:
        assert r.source == "dataset"
        for row in range(r.completion_mask.shape[0]):
            ids = r.completion_ids[row][r.completion_mask[row]].tolist()
            assert TOK.decode(ids, skip_special_tokens=True).split() == ["w1", "w2", "w3"]


def test_mixing_draws_each_micro_batch_with_probability_lambda():
    cfg = BASE.replace(mix_lambda=0.3)
    draws = [shard_kind(cfg, s, k) == "teacher" for s in range(500) for k in range(4)]
    n, p = len(draws), 0.3
    assert abs(sum(draws) / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert shard_kind(cfg.replace(seed=1), 0, 0) in ("teacher", "student")
    assert [shard_kind(cfg, 7, k) for k in range(4)] == [shard_kind(cfg, 7, k) for k in range(4)]
    # a step whose two micro-batches differ in kind: each gets its own loss
    step = next(s for s in range(50) if {shard_kind(cfg, s, k) for k in range(2)} == {
        "student", "teacher"})
    state, rollouts, stats, got = trainer_step(cfg, step=step)
    assert [k for k, _ in rollouts] == [shard_kind(cfg, step, k) for k in range(2)]

    def mixed(kind, r, s, t, n):
        return pg(off_policy=kind == "teacher", clip_log_u=CLIP)(kind, r, s, t, n)

    _, want = by_hand(state, rollouts, mixed)
    assert_same(got, want)
    assert stats["offpolicy"] == 1
    student_tokens = sum(r.num_tokens for k, r in rollouts if k == "student")
    assert stats["kl_tokens"] == student_tokens < stats["tokens"]


def test_sequence_kd_warmup_maximises_the_likelihood_of_teacher_samples():
    cfg = BASE.replace(seqkd_warmup_steps=1)
    state, rollouts, stats, got = trainer_step(cfg, step=0)
    assert {k for k, _ in rollouts} == {"seqkd"} and all(r.source == "teacher" for _, r in rollouts)
    loss, want = by_hand(state, rollouts, sequence_nll)
    assert_same(got, want)
    assert stats["loss"] == pytest.approx(loss, rel=1e-6) and loss > 0  # a negative log-likelihood
    # sign: a small step against the trainer's gradient raises the teacher samples' likelihood
    student = state.unwrapped
    with torch.no_grad():
        for n, p in student.named_parameters():
            p -= 1e-2 * got[n]
    after, _ = by_hand(state, rollouts, sequence_nll)
    assert after < loss
    assert [k for k, _ in collect_rollouts(state, 1)] == ["student", "student"]


# ----------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("max_norm", [0.05, None])
def test_update_uses_the_clipped_gradient_and_reports_the_raw_norm(max_norm):
    teacher, student = pair()
    state = setup(student, teacher, TOK, PROMPTS, BASE.replace(max_grad_norm=max_norm))
    rollouts = collect_rollouts(state, 0)
    _, raw = by_hand(state, rollouts, pg(clip_log_u=CLIP))
    raw_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in raw.values()))
    seen = {}
    step_fn = state.optimizer.step

    def spy(*a, **kw):
        seen.update({n: p.grad.detach().clone() for n, p in student.named_parameters()})
        return step_fn(*a, **kw)

    state.optimizer.step = spy
    rec = train_step(state, 0)
    assert rec["grad_norm"] == pytest.approx(raw_norm, rel=1e-5)
    scale = 1.0 if max_norm is None else max_norm / raw_norm
    assert scale < 0.5 or max_norm is None  # the clip binds
    assert_same(seen, {k: v * scale for k, v in raw.items()})


# ----------------------------------------------------------------------------- prompt order


def _prompt_of(r, row):
    ids = r.input_ids[row, : r.prompt_len][r.attention_mask[row, : r.prompt_len].bool()]
    return TOK.decode(ids.tolist(), skip_special_tokens=True)


def test_each_step_takes_the_next_prompts_of_a_seeded_permutation():
    prompts = [f"w{i} w{i + 1}" for i in range(8)]
    cfg = BASE.replace(max_new_tokens=1)
    teacher, student = pair()
    state = setup(student, teacher, TOK, prompts, cfg)

    def step_prompts(step):
        out = []
        for _, r in collect_rollouts(state, step):
            rows = [_prompt_of(r, i) for i in range(r.completion_mask.shape[0])]
            assert rows[0::2] == rows[1::2]  # G = 2 samples per prompt, prompt-major
            out += rows[0::2]
        return out

    epoch0 = step_prompts(0) + step_prompts(1)
    epoch1 = step_prompts(2) + step_prompts(3)
    assert sorted(epoch0) == sorted(epoch1) == sorted(prompts)  # each prompt once per epoch
    assert epoch0 != epoch1 and epoch0 != prompts  # shuffled, afresh every epoch
    assert epoch0 == [prompts[i] for i in prompt_indices(8, 0, 0, 8)]
    other = setup(student, teacher, TOK, prompts, cfg.replace(seed=5))
    assert [_prompt_of(r, 0) for _, r in collect_rollouts(other, 0)] != [
        _prompt_of(r, 0) for _, r in collect_rollouts(state, 0)
    ]


# ----------------------------------------------------------------------------- data parallel


class _Rank:
    """Rank ``rank`` of two, in one process: the token count's all-reduce adds the other
    rank's count; everything else is the real (single-process) accelerator."""

    def __init__(self, real, rank):
        self._real, self.process_index, self.num_processes = real, rank, 2
        self.partner_tokens, self.reduced = 0.0, []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def reduce(self, x, reduction="sum"):
        out = x + self.partner_tokens if not self.reduced else x
        self.reduced.append(float(out.reshape(-1)[0]))
        return out

    def no_sync(self, model):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()


def test_data_parallel_ranks_average_to_the_single_process_gradient():
    cfg = BASE.replace(micro_batch_prompts=1, max_new_tokens=12)  # 4 shards: 2 per rank
    teacher, student = pair()
    single = setup(student, teacher, TOK, PROMPTS, cfg)
    rollouts = collect_rollouts(single, 0)
    accumulate_gradients(single, rollouts)
    want = grads_of(student)
    ranks = []
    for rank in (0, 1):
        teacher, student = pair()
        acc = _Rank(_make_accelerator(cfg, student), rank)
        state = setup(student, teacher, TOK, PROMPTS, cfg, accelerator=acc)
        mine = collect_rollouts(state, 0)
        for (_, a), (_, b) in zip(mine, rollouts[rank::2]):  # shards k = rank, rank + 2
            assert torch.equal(a.input_ids, b.input_ids)
        ranks.append((acc, state, mine, student))
    counts = [sum(r.num_tokens for _, r in mine) for _, _, mine, _ in ranks]
    assert counts[0] != counts[1]  # unequal shares: a per-rank normaliser would be wrong
    grads = []
    for (acc, state, mine, student), other in zip(ranks, counts[::-1]):
        acc.partner_tokens = float(other)
        accumulate_gradients(state, mine)
        assert acc.reduced[0] == sum(counts)
        grads.append(grads_of(student))
    assert_same({k: (grads[0][k] + grads[1][k]) / 2 for k in want}, want)  # DDP averages
