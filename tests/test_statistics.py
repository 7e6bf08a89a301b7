"""The numbers a run reports, against oracles.

- A step's record pools sums over micro-batches (means, standard deviations, fractions,
  the per-token teacher KL); here it is compared with the same quantities computed
  directly on the whole batch, with the reverse-KL OPD+ advantage written in closed form
  (w_f(u) = log u - 1).
- ``evaluate`` runs on a scripted model whose answers are known: problem i is answered
  right with probability p_i (1, 0, 3/4 or 1/4). Greedy pass@1 is then exact, and avg@k
  is exact on the p = 0 and p = 1 problems and a binomial draw on the others.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from opdplus import evaluation as ev
from opdplus import models, tasks, tinyworld
from opdplus.config import TrainConfig
from opdplus.sampler import score
from opdplus.step import train_step
from opdplus.trainer import collect_rollouts, setup

WORDS = [f"w{i}" for i in range(40)]
TOK = models.word_tokenizer(WORDS)
V = len(TOK)
IDS = dict(eos_token_id=2, pad_token_id=0, bos_token_id=1)
PROMPTS = [" ".join(f"w{(i * 7 + j * 3) % 40}" for j in range(1 + i % 4)) for i in range(64)]

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- step statistics


def test_step_record_pools_micro_batches_like_the_whole_batch():
    clip = 1.0
    cfg = TrainConfig(
        steps=2,
        prompts_per_step=4,
        samples_per_prompt=2,
        micro_batch_prompts=1,  # 4 micro-batches of unequal lengths
        max_new_tokens=12,
        lr=1e-2,
        clip_log_u=clip,
        progress=False,
    )
    teacher = models.peaky_teacher(V, seed=1, **IDS)
    student = models.tiny_causal_lm("llama", V, hidden_size=32, num_layers=1, seed=2, **IDS)
    state = setup(student, teacher, TOK, PROMPTS, cfg)
    rollouts = [r for _, r in collect_rollouts(state, 0)]
    assert len({r.num_tokens for r in rollouts}) > 1
    log_u, lengths, truncated = [], [], []
    for r in rollouts:
        m = r.completion_mask
        s = score(student, r, grad=True, vocab_size=V).logp_BT
        t = score(teacher, r, vocab_size=V).logp_BT
        log_u.append((t - s)[m])
        lengths += m.sum(-1).tolist()
        truncated += r.truncated.tolist()
    log_u = torch.cat(log_u)  # every completion token of the step, with grad through s
    n = log_u.numel()
    adv = log_u.detach().clamp(-clip, clip) - 1.0  # reverse KL: w_f(u) = log u - 1
    # the surrogate on the whole batch: -sum(rho A) / N with rho = exp(log p - sg(log p))
    (-(adv * torch.exp(log_u.detach() - log_u)).sum() / n).backward()
    grad_norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in student.parameters()))
    student.zero_grad(set_to_none=True)
    want = {
        "loss": float(-adv.sum() / n),
        "teacher_kl": float(-log_u.detach().mean()),
        "clip_frac": float((log_u.detach().abs() > clip).float().mean()),
        "adv_mean": float(adv.mean()),
        "adv_std": float(adv.std()),
        "completion_len": sum(lengths) / len(lengths),
        "truncation_frac": sum(truncated) / len(truncated),
        "grad_norm": grad_norm,
    }
    assert 0 < want["clip_frac"] < 1 and 0 < want["truncation_frac"] < 1
    rec = train_step(state, 0)
    assert rec["tokens"] == n and rec["lr"] == cfg.lr and not rec["skipped"]
    assert rec["offpolicy_shards"] == 0
    assert isinstance(rec["sample"], str)  # the first completion, decoded for the log
    for k, v in want.items():
        assert rec[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


# ----------------------------------------------------------------------------- evaluation


class ScriptedModel(torch.nn.Module):
    """Answers problem i "Ben #### <final>" with probability p_i, else "Tom #### <final + 1>".

    The first token decides (its logits are log p_i and log(1 - p_i)); the rest is
    forced. The "cache" is each row's problem and tokens so far.
    """

    def __init__(self, tok, problems, p_right):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # evaluate() asks for a device
        self.vocab, self.eos = len(tok), tok.eos_token_id
        self.right, self.wrong = tok.convert_tokens_to_ids(["Ben", "Tom"])
        enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        self.problem_of = {
            tuple(enc(tinyworld.format_prompt(p["question"]))): i for i, p in enumerate(problems)
        }
        assert len(self.problem_of) == len(problems)
        self.tail = {
            (i, ok): enc(f" #### {p['final'] + (0 if ok else 1)}") + [self.eos]
            for i, p in enumerate(problems)
            for ok in (True, False)
        }
        self.p_right = p_right

    def forward(self, input_ids, attention_mask, past_key_values=None, **kw):
        if past_key_values is None:
            rows = [
                (self.problem_of[tuple(ids[m.bool()].tolist())], [])
                for ids, m in zip(input_ids, attention_mask)
            ]
        else:
            rows = [(i, done + [int(t)]) for (i, done), t in zip(past_key_values, input_ids[:, -1])]
        logits = torch.full((len(rows), 1, self.vocab), -1e9)
        for b, (i, done) in enumerate(rows):
            if not done:
                p = self.p_right[i]
                logits[b, 0, self.right] = math.log(p) if p > 0 else -1e9
                logits[b, 0, self.wrong] = math.log(1 - p) if p < 1 else -1e9
            else:
                tail = self.tail[i, done[0] == self.right]
                logits[b, 0, tail[len(done) - 1] if len(done) <= len(tail) else self.eos] = 0.0
        return SimpleNamespace(logits=logits, past_key_values=rows)


P_RIGHT = [1.0, 0.0, 0.75, 0.25] * 3


@pytest.fixture(scope="module")
def scripted():
    tok = tinyworld.tiny_world_tokenizer()
    problems = tasks.generate_split("test", len(P_RIGHT), seed=11)
    return tok, problems, ScriptedModel(tok, problems, P_RIGHT)


def _kw():
    return dict(max_new_tokens=8, batch_size=5, prompt_fn=tinyworld.format_prompt)


def test_greedy_pass_at_1_on_known_answers(scripted):
    tok, problems, model = scripted
    res = ev.evaluate(model, tok, problems, **_kw())
    right = [p > 0.5 for p in P_RIGHT]
    assert [r["correct"] for r in res.records] == [[ok] for ok in right]
    assert [r["predictions"] for r in res.records] == [
        [str(p["final"] + (0 if ok else 1))] for p, ok in zip(problems, right)
    ]
    assert res.metric == "pass@1" and res.n == 12 and res.k == 1
    assert res.accuracy == 0.5
    assert (res.ci_low, res.ci_high) == ev.wilson_interval(6, 12)


def test_avg_at_k_on_known_answers(scripted):
    tok, problems, model = scripted
    k = 16
    g = torch.Generator().manual_seed(0)
    res = ev.evaluate(model, tok, problems, k=k, greedy=False, generator=g, **_kw())
    assert res.metric == f"avg@{k}" and res.k == k and res.n == 12
    for rec, p, prob in zip(res.records, problems, P_RIGHT):
        assert len(rec["completions"]) == len(rec["correct"]) == k
        assert rec["predictions"] == [
            str(p["final"]) if ok else str(p["final"] + 1) for ok in rec["correct"]
        ]
        assert rec["score"] == sum(rec["correct"]) / k
        if prob in (0.0, 1.0):
            assert rec["score"] == prob  # exact
    scores = [r["score"] for r in res.records]
    assert res.accuracy == pytest.approx(sum(scores) / len(scores), abs=1e-15)
    assert (res.ci_low, res.ci_high) == ev.avg_at_k_interval(scores, k)
    for prob in (0.75, 0.25):  # binomial: within 4 standard errors of p
        hits = [c for r, q in zip(res.records, P_RIGHT) if q == prob for c in r["correct"]]
        se = math.sqrt(prob * (1 - prob) / len(hits))
        assert abs(sum(hits) / len(hits) - prob) < 4 * se, (prob, sum(hits), len(hits))


def test_pg_loss_metrics_down_to_two_tokens():
    """The metrics of ``pg_loss`` by hand, at the smallest batch with a spread (two tokens)."""
    from opdplus.estimators import pg_loss

    s = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[-3.0, -1.0, -9.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    _, m = pg_loss(s, t, mask, "reverse_kl", "opd+", clip_log_u=(-1.5, 1.5))
    log_u = torch.tensor([-2.0, 1.0], dtype=torch.float64)
    adv = log_u.clamp(-1.5, 1.5) - 1.0  # reverse KL: w_f(u) = log u - 1
    assert m["tokens"] == 2 and m["clip_frac"] == 0.5
    assert m["teacher_kl"] == pytest.approx(float(-log_u.mean()))
    assert m["adv_mean"] == pytest.approx(float(adv.mean()))
    assert m["adv_std"] == pytest.approx(float((adv[0] - adv[1]).abs() / math.sqrt(2)))
    assert m["loss"] == pytest.approx(float(-adv.sum() / 2))
    # the default clip is +-6 nats (the trainer always passes its own)
    s2, t2 = s.detach(), t.clone()
    t2[0, 0] = -20.0  # log u = -19: clipped by the default
    default = pg_loss(s2, t2, mask, "reverse_kl", "opd+")[1]
    assert default == pg_loss(s2, t2, mask, "reverse_kl", "opd+", clip_log_u=(-6.0, 6.0))[1]
    assert default["clip_frac"] == 0.5


def test_logit_distillation_metrics_by_hand():
    from opdplus.estimators import logit_distillation_loss

    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss, m = logit_distillation_loss(s, t, mask, "forward_kl", num_tokens=10)
    logp, logq = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    kl = (logq.exp() * (logq - logp)).sum(-1)[mask]  # forward KL(teacher || student) per state
    assert m["tokens"] == 3
    assert m["divergence_mean"] == pytest.approx(float(kl.mean()))
    assert float(loss) == pytest.approx(float(kl.sum() / 10)) == m["loss"]
    one = torch.tensor([[True, False, False], [False, False, False]])
    loss1, _ = logit_distillation_loss(s, t, one, "forward_kl")  # N = 1 token: its own KL
    assert float(loss1) == pytest.approx(float((logq.exp() * (logq - logp)).sum(-1)[0, 0]))
