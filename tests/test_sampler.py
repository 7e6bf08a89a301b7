"""Sampler, scoring and pre-flight: masks, determinism, exact sampler log-probs, padding."""

from dataclasses import replace

import pytest
import torch

from opdplus import models
from opdplus.sampler import (
    Rollout,
    Sampler,
    TokenizerMismatchError,
    completion_mask_from_ids,
    left_pad,
    preflight,
    rollout_from_sequences,
    sample,
    sampling_log_probs,
    score,
)
from opdplus.scoring import position_ids_from_mask, token_logp


# Tiny models: one thread is several times faster than two on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


WORDS = [f"w{i}" for i in range(30)]
EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def tok():
    return models.word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def lm(tok):
    return models.tiny_causal_lm("llama", len(tok), hidden_size=32, num_layers=2, seed=0)


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(p)["input_ids"] for p in ["w1 w2 w3 w4", "w5", "w6 w7"]]


def draw(model, prompts, seed=0, **kw):
    kw.setdefault("max_new_tokens", 8)
    g = torch.Generator().manual_seed(seed)
    return sample(
        model, prompts, G=kw.pop("G", 2), generator=g, eos_token_id=EOS, pad_token_id=PAD, **kw
    )


@torch.no_grad()
def full_logits_at_completion(model, r: Rollout) -> torch.Tensor:
    """(B, T, V) logits predicting each completion token, from one plain forward pass."""
    out = model(
        input_ids=r.input_ids,
        attention_mask=r.attention_mask,
        position_ids=position_ids_from_mask(r.attention_mask),
    ).logits
    P, L = r.prompt_len, r.input_ids.shape[1]
    return out[:, P - 1 : L - 1].float()


class ScriptedLM(torch.nn.Module):
    """Row b emits ``scripts[b][k]`` as its k-th completion token (logit 30 vs 0)."""

    def __init__(self, vocab, scripts, prompt_lens):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.vocab, self.scripts, self.prompt_lens = vocab, scripts, prompt_lens
        self.config = None

    def forward(
        self,
        input_ids,
        attention_mask,
        position_ids=None,
        cache=None,
        use_cache=False,
        logits_to_keep=0,
    ):
        B = input_ids.shape[0]
        produced = attention_mask.sum(-1) - torch.as_tensor(self.prompt_lens)
        logits = torch.zeros(B, 1, self.vocab)
        for b in range(B):
            s = self.scripts[b]
            logits[b, 0, s[min(int(produced[b]), len(s) - 1)]] = 30.0
        return type("Out", (), {"logits": logits + self.w})()


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("pad", [PAD, EOS])
def test_masks_keep_real_eos_and_drop_the_rest(pad):
    V = 12
    prompts = [[1, 5], [1]]
    model = ScriptedLM(V, scripts=[[5, 6, EOS, 9], [7]], prompt_lens=[2, 1])
    r = sample(
        model,
        prompts,
        G=1,
        generator=torch.Generator().manual_seed(0),
        eos_token_id=EOS,
        pad_token_id=pad,
        max_new_tokens=5,
    )
    assert r.prompt_len == 2
    assert r.attention_mask[:, :2].tolist() == [[1, 1], [0, 1]]  # left padding is not attended
    assert r.completion_ids.tolist() == [[5, 6, EOS, pad, pad], [7, 7, 7, 7, 7]]
    assert r.completion_mask.tolist() == [[True, True, True, False, False], [True] * 5]
    assert r.attention_mask[:, 2:].bool().tolist() == r.completion_mask.tolist()
    assert r.truncated.tolist() == [False, True]
    assert r.lengths.tolist() == [3, 5]
    assert torch.all(r.sampler_logp[~r.completion_mask] == 0)
    assert torch.all(r.sampler_logp[r.completion_mask] > -1e-6)  # scripted tokens have prob ~1


def test_sampling_stops_when_every_row_ended():
    model = ScriptedLM(12, scripts=[[5, EOS], [EOS]], prompt_lens=[1, 1])
    r = sample(
        model,
        [[1], [1]],
        G=1,
        generator=torch.Generator(),
        eos_token_id=EOS,
        pad_token_id=EOS,
        max_new_tokens=10,
    )
    assert r.completion_ids.shape[1] == 2
    assert r.completion_mask.tolist() == [[True, True], [True, False]]
    assert not r.truncated.any()


def test_mask_from_ids_with_pad_equal_eos():
    ids = torch.tensor([[5, EOS, EOS, EOS], [5, 6, 7, EOS]])
    assert completion_mask_from_ids(ids, EOS).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    # a length cut: the second row really has 3 tokens, its trailing EOS is padding
    m = completion_mask_from_ids(ids, EOS, lengths_B=torch.tensor([4, 3]))
    assert m.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    r = rollout_from_sequences(
        [[1, 4], [1]], [[5, 6, EOS], [7, 8]], pad_token_id=EOS, eos_token_id=EOS
    )
    assert r.completion_mask.tolist() == [[True, True, True], [True, True, False]]
    assert r.truncated.tolist() == [False, True]
    assert r.sampler_logp is None and r.source == "dataset"


def test_real_model_masks_are_consistent(lm, prompts):
    r = draw(lm, prompts, G=3, max_new_tokens=12)
    m = r.completion_mask
    # prefix-closed: once off, stays off
    assert torch.all(m[:, 1:] <= m[:, :-1])
    for b in range(m.shape[0]):
        toks = r.completion_ids[b][m[b]].tolist()
        assert EOS not in toks[:-1]
        assert (toks[-1] == EOS) == (not bool(r.truncated[b]))


def test_rows_are_prompt_major(lm, prompts):
    G = 3
    r = draw(lm, prompts, G=G)
    P = r.prompt_len
    assert r.input_ids.shape[0] == len(prompts) * G and r.group_size == G
    for g, p in enumerate(prompts):
        block = r.input_ids[g * G : (g + 1) * G, :P]
        assert all(row[P - len(p) :].tolist() == p for row in block)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_rollout_regardless_of_global_rng(lm, prompts):
    torch.manual_seed(1)
    a = draw(lm, prompts, seed=7)
    torch.manual_seed(2)
    torch.rand(100)  # e.g. a plot that samples
    b = draw(lm, prompts, seed=7)
    c = draw(lm, prompts, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.sampler_logp, b.sampler_logp)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_sampler_object_reseed_and_state(lm, prompts):
    s = Sampler(eos_token_id=EOS, pad_token_id=PAD, max_new_tokens=6, seed=3)
    a = s(lm, prompts, G=2)
    state = s.state_dict()
    b = s(lm, prompts, G=2)
    s.load_state_dict(state)
    assert torch.equal(s(lm, prompts, G=2).input_ids, b.input_ids)
    s.reseed(3)
    assert torch.equal(s(lm, prompts, G=2).input_ids, a.input_ids)


# ----------------------------------------------------------------------------- sampler log-probs


@pytest.mark.parametrize("arch", models.ARCHS)
def test_sampler_logp_equals_rescoring_at_temperature_one(arch, tok, prompts):
    model = models.tiny_causal_lm(arch, len(tok), hidden_size=32, num_layers=2, seed=1)
    r = draw(model, prompts, G=2, max_new_tokens=10)
    s = score(model, r)
    m = r.completion_mask
    torch.testing.assert_close(s.logp_BT[m], r.sampler_logp[m], atol=2e-5, rtol=0)
    assert torch.all(s.logp_BT[~m] == 0)


def test_sampler_logp_under_temperature_and_top_k(lm, prompts):
    T, k = 0.7, 5
    r = draw(lm, prompts, G=3, max_new_tokens=10, temperature=T, top_k=k)
    assert (r.temperature, r.top_k) == (T, k) and not r.on_policy_untempered
    z = full_logits_at_completion(lm, r) / T
    kth = z.topk(k, -1).values[..., -1:]
    manual = torch.log_softmax(z.masked_fill(z < kth, float("-inf")), -1)
    picked = manual.gather(-1, r.completion_ids[..., None]).squeeze(-1)
    m = r.completion_mask
    torch.testing.assert_close(r.sampler_logp[m], picked[m], atol=2e-5, rtol=0)
    in_top_k = (z.topk(k, -1).indices == r.completion_ids[..., None]).any(-1)
    assert in_top_k[m].all()


def test_sampler_logp_under_top_p(lm, prompts):
    p = 0.6
    r = draw(lm, prompts, G=3, max_new_tokens=10, top_p=p)
    probs = torch.softmax(full_logits_at_completion(lm, r), -1)
    m = r.completion_mask
    for b, t in m.nonzero().tolist():
        row = probs[b, t]
        order = row.argsort(descending=True)
        kept, mass = [], 0.0
        for i in order.tolist():  # smallest prefix of most likely tokens reaching mass p
            kept.append(i)
            mass += float(row[i])
            if mass >= p:
                break
        tok_id = int(r.completion_ids[b, t])
        assert tok_id in kept
        expected = torch.log(row[tok_id] / row[kept].sum())
        assert abs(float(r.sampler_logp[b, t]) - float(expected)) < 1e-4


def test_sampling_log_probs_greedy_and_filters():
    z = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert sampling_log_probs(z, temperature=0.0).tolist() == [
        [float("-inf"), 0.0, float("-inf"), float("-inf")]
    ]
    lp = sampling_log_probs(z, top_k=2)
    assert torch.isinf(lp[0, [0, 3]]).all() and abs(float(lp.exp().sum()) - 1) < 1e-6


# ----------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("arch", models.ARCHS)
def test_left_padding_does_not_change_scores(arch, tok, prompts):
    model = models.tiny_causal_lm(arch, len(tok), hidden_size=32, num_layers=2, seed=2)
    r = draw(model, prompts, G=1, max_new_tokens=6)
    batch = score(model, r).logp_BT
    for b, p in enumerate(prompts):
        start = r.prompt_len - len(p)
        alone = Rollout(
            input_ids=r.input_ids[b : b + 1, start:],
            attention_mask=r.attention_mask[b : b + 1, start:],
            completion_mask=r.completion_mask[b : b + 1],
            sampler_logp=None,
            truncated=r.truncated[b : b + 1],
            prompt_len=len(p),
        )
        torch.testing.assert_close(score(model, alone).logp_BT[0], batch[b], atol=2e-5, rtol=0)


def test_score_grad_logits_and_loss_mask_holes(lm, prompts):
    r = draw(lm, prompts, G=2, max_new_tokens=8)
    student = score(lm, r, grad=True, return_logits=True)
    assert student.logp_BT.requires_grad
    assert student.logits_NV.shape == (r.num_tokens, lm.config.vocab_size)
    student.logp_BT.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lm.parameters())
    lm.zero_grad(set_to_none=True)
    teacher = score(lm, r)
    assert not teacher.logp_BT.requires_grad
    torch.testing.assert_close(teacher.logp_BT, student.logp_BT.detach())
    # a tool-result hole: attended, not scored; other positions keep their log-probs
    hole = r.completion_mask.clone()
    hole[:, 2:4] = False
    holed = score(lm, replace(r, completion_mask=hole)).logp_BT
    assert torch.all(holed[:, 2:4] == 0)
    torch.testing.assert_close(holed[hole], teacher.logp_BT[hole], atol=1e-6, rtol=0)


def test_token_logp_chunks_match_and_slice_vocab():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 9, generator=g, requires_grad=True)
    targets = torch.randint(0, 7, (10,), generator=g)
    a = token_logp(logits, targets, vocab_size=7, chunk_size=3)
    (ga,) = torch.autograd.grad(a.sum(), logits)
    ref = torch.log_softmax(logits[:, :7], -1).gather(-1, targets[:, None]).squeeze(-1)
    (gr,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(ga, gr)
    with pytest.raises(ValueError, match="vocab_size"):
        token_logp(logits, torch.full((10,), 8), vocab_size=7)


def test_left_pad_rejects_empty():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        left_pad([[1], []], 0)


# ----------------------------------------------------------------------------- pre-flight


def test_preflight_accepts_identical_and_returns_vocab(tok):
    twin = models.word_tokenizer(WORDS)
    V = len(tok)
    assert preflight(tok, twin) == V
    a = models.tiny_causal_lm("llama", V, hidden_size=16, num_layers=1)
    b = models.tiny_causal_lm("gpt2", V, hidden_size=16, num_layers=1)
    assert preflight(tok, twin, a, b) == V


def test_preflight_names_the_first_difference(tok):
    other = models.word_tokenizer(WORDS[:-1] + ["zzz"])
    with pytest.raises(TokenizerMismatchError, match=r"token id \d+ is 'w29'.*'zzz'"):
        preflight(tok, other)
    with pytest.raises(TokenizerMismatchError, match="pad_token"):
        preflight(tok, models.word_tokenizer(WORDS, pad_is_eos=True))
    chat = models.word_tokenizer(WORDS, chat_template=models.SIMPLE_CHAT_TEMPLATE)
    with pytest.raises(TokenizerMismatchError, match="only one tokenizer has a chat template"):
        preflight(chat, tok)
    other_chat = models.word_tokenizer(
        WORDS, chat_template=models.SIMPLE_CHAT_TEMPLATE.replace("> ", ">: ")
    )
    with pytest.raises(TokenizerMismatchError, match="chat templates render"):
        preflight(chat, other_chat)


def test_preflight_slices_padded_embeddings_and_sampler_respects_it(tok, prompts):
    V = len(tok)
    teacher = models.tiny_causal_lm("llama", V, hidden_size=16, num_layers=1, tie_embeddings=False)
    student = models.tiny_causal_lm(
        "llama", V + 8, hidden_size=16, num_layers=1, tie_embeddings=False
    )
    assert preflight(tok, tok, teacher, student) == V
    with torch.no_grad():
        student.lm_head.weight[V:] = (
            50.0 * student.lm_head.weight[:8].sign()
        )  # padded rows would win
    r = draw(student, prompts, max_new_tokens=6, vocab_size=V)
    assert int(r.completion_ids.max()) < V
    s = score(student, r, vocab_size=V, return_logits=True)
    assert s.logits_NV.shape[-1] == V
    torch.testing.assert_close(
        s.logp_BT[r.completion_mask], r.sampler_logp[r.completion_mask], atol=2e-5, rtol=0
    )
    # padded alike (both V + 8 rows): still sliced to the real vocabulary
    twin = models.tiny_causal_lm("llama", V + 8, hidden_size=16, num_layers=1, tie_embeddings=False)
    assert preflight(tok, tok, twin, student) == V
    small = models.tiny_causal_lm("llama", V - 1, hidden_size=16, num_layers=1)
    with pytest.raises(TokenizerMismatchError, match="resize"):
        preflight(tok, tok, teacher, small)


def test_scoring_without_packed_logits_support_gives_the_same(lm, prompts, monkeypatch):
    from opdplus import scoring

    r = draw(lm, prompts, G=2, max_new_tokens=8)
    packed = score(lm, r, return_logits=True)
    monkeypatch.setattr(
        scoring, "_bool_logits_to_keep", lambda: False
    )  # e.g. an older transformers
    fallback = score(lm, r, return_logits=True)
    torch.testing.assert_close(fallback.logp_BT, packed.logp_BT)
    torch.testing.assert_close(fallback.logits_NV, packed.logits_NV)


def test_qwen_sized_vocabulary(prompts):
    """V = 151,936 (Qwen's padded table): sampling and chunked scoring agree at full size."""
    V = 151_936
    big = models.tiny_causal_lm("qwen2", V, hidden_size=16, num_layers=1, num_heads=2, seed=0)
    r = draw(big, prompts, G=2, max_new_tokens=4)
    s = score(big, r, chunk_size=5)
    m = r.completion_mask
    torch.testing.assert_close(s.logp_BT[m], r.sampler_logp[m], atol=2e-5, rtol=0)


def test_rollout_module_is_below_sampler_and_scoring():
    """The dependency runs one way: rollout <- scoring <- sampler (never scoring -> sampler)."""
    import ast
    import subprocess
    import sys
    import typing

    from opdplus import rollout, sampler, scoring

    code = (
        "import sys, opdplus.{mod}; "
        "print(sorted(m for m in sys.modules if m.startswith('opdplus.')))"
    )
    loaded = {}
    for mod in ("rollout", "scoring", "sampler"):
        out = subprocess.run([sys.executable, "-c", code.format(mod=mod)], capture_output=True,
                             text=True, check=True)
        loaded[mod] = set(ast.literal_eval(out.stdout))
    assert "opdplus.sampler" not in loaded["scoring"], loaded["scoring"]
    assert loaded["scoring"] >= {"opdplus.rollout", "opdplus.scoring"}
    assert not {"opdplus.sampler", "opdplus.scoring"} & loaded["rollout"], loaded["rollout"]
    # one type, re-exported: old imports keep working and name the same objects
    assert sampler.Rollout is rollout.Rollout
    assert sampler.position_ids_from_mask is scoring.position_ids_from_mask
    assert sampler.left_pad is rollout.left_pad
    assert sampler.completion_mask_from_ids is rollout.completion_mask_from_ids
    assert sampler.rollout_from_sequences is rollout.rollout_from_sequences
    # score's annotation resolves to the real type (it was a forward reference to sampler)
    assert typing.get_type_hints(scoring.score)["rollout"] is rollout.Rollout
