"""Multi-turn rollouts with tools: the tool box, the rollout loop, and their exactness.

The model under test is a tiny Llama that memorised a handful of scripted conversations
(one per question letter; a few dozen Adam steps), so greedy rollouts make exactly the calls we
want, good and bad, while sampled rollouts at temperature 1 wander into varied turns.
"""

import ast
import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from opdplus import models
from opdplus.config import TrainConfig
from opdplus.estimators import pg_loss
from opdplus.sampler import Rollout, score
from opdplus.toolcalls import ERROR_KINDS, ParsedCall, parse_tool_calls
from opdplus.trainer import accumulate_gradients, collect_rollouts, setup, train
from opdplus.tooluse import (
    TOOL_STAT_KEYS,
    Tool,
    ToolBox,
    ToolRollout,
    encode_tool_prompts,
    rollout_with_tools,
    tool_rollout_fn,
    tool_turn_ids,
    turn_end_id,
)

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- a ChatML world

CHATML_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\\n<tools>\\n' }}"
    "{%- for t in tools %}{{- t | tojson + '\\n' }}{%- endfor %}"
    "{{- '</tools><|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""ChatML with tools (Hermes / Qwen2.5 convention): tool results in a user turn."""


def chatml_char_tokenizer():
    """Characters as tokens, plus ChatML's turn tokens and the tool markers as whole tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    words = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
             '{"name": "', '", "arguments": ', "assistant", "user", "error"]  # fmt: skip
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + words + chars + ["<unk>"])}
    tk = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.add_tokens([AddedToken(w, special=False, normalized=False) for w in words])
    tok.chat_template = CHATML_TOOLS
    return tok


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first summand
        b: the second summand
    """
    return a + b


def div(a: int, b: int) -> float:
    """Divide two integers.

    Args:
        a: the numerator
        b: the denominator
    """
    return a / b


def rep(n: int) -> str:
    """Repeat the letter x.

    Args:
        n: how many times
    """
    return "x" * n


BUDGET = 12


def call(name, args):
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": args}) + "\n</tool_call>"


# question -> the assistant turns the model memorises (the tool turns come from the box)
MALFORMED = '<tool_call>\n{"name": add}\n</tool_call>'
SCRIPTS = {
    "a": [call("add", {"a": 12, "b": 7}), "19"],  # one call, then the answer
    "b": ["hi"],  # no call
    # two bad calls in one turn (invalid JSON, unknown tool), then a wrong type + missing arg
    "c": [MALFORMED + call("mul", {"a": 2}), call("add", {"a": "x"}), "?"],
    "d": [call("div", {"a": 1, "b": 0}) + call("rep", {"n": 30}), "x"],  # raises; too long
    "e": [call("add", {"a": 1, "b": 1})] * 3,  # a loop of calls
}
MAX_TURNS = 3


@pytest.fixture(scope="module")
def world():
    """Tokenizer, tool box, prompts and a tiny LM that memorised ``SCRIPTS``."""
    tok = chatml_char_tokenizer()
    box = ToolBox([add, div, rep], max_result_chars=BUDGET)
    end = turn_end_id(tok, tok.eos_token_id)
    prompts = [
        tok(
            tok.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )["input_ids"]
        for q in SCRIPTS
    ]
    seqs, weights = [], []
    for p, turns in zip(prompts, SCRIPTS.values()):
        s, w = list(p), [0] * len(p)
        for t in turns:
            ids = tok(t, add_special_tokens=False)["input_ids"] + [end]
            s, w = s + ids, w + [1] * len(ids)
            calls = parse_tool_calls(t)
            if calls:
                ins = tool_turn_ids(tok, [box.run(c).text for c in calls], end)
                s, w = s + ins, w + [0] * len(ins)
        seqs.append(s)
        weights.append(w)
    L = max(map(len, seqs))
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    att, wt = torch.zeros_like(ids), torch.zeros(len(seqs), L)
    for i, (s, w) in enumerate(zip(seqs, weights)):
        ids[i, : len(s)], att[i, : len(s)], wt[i, : len(s)] = torch.tensor(s), 1, torch.tensor(w)
    V = len(tok)
    lm = models.tiny_causal_lm("llama", V, hidden_size=64, num_layers=2, max_positions=512, seed=0)
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    w, target = wt[:, 1:].bool(), ids[:, 1:]
    for _ in range(300):
        lp = torch.log_softmax(lm(input_ids=ids, attention_mask=att).logits[:, :-1].float(), -1)
        with torch.no_grad():  # memorised: every scripted token is the argmax by a margin
            top = lp.topk(2, -1)
            gap = top.values[..., 0] - top.values[..., 1]
            margin = torch.where(top.indices[..., 0] == target, gap, 0)
            if float(margin[w].min()) > 1.0:
                break
        loss = -(lp.gather(-1, target[..., None]).squeeze(-1) * w).sum() / w.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    else:
        raise AssertionError("the scripted conversations were not memorised in 300 steps")
    lm.eval()
    return dict(tok=tok, box=box, end=end, prompts=prompts, lm=lm, V=V)


def draw(world, temperature=0.0, G=1, seed=0, prompts=None, **kw):
    g = torch.Generator().manual_seed(seed)
    args = dict(max_new_tokens=64, max_turns=MAX_TURNS)
    args.update(kw)
    return rollout_with_tools(
        world["lm"], world["tok"], world["prompts"] if prompts is None else prompts, world["box"],
        G=G, generator=g, eos_token_id=world["end"], pad_token_id=0, temperature=temperature,
        **args,
    )  # fmt: skip


def transcript(tok, r, i):
    live = r.attention_mask[i, r.prompt_len :].bool()
    return tok.decode(r.completion_ids[i][live].tolist(), skip_special_tokens=False)


# ----------------------------------------------------------------------------- the tool box


def test_tool_schema_comes_from_the_function_signature_and_docstring():
    t = Tool.from_function(add)
    fn = t.schema["function"]
    assert t.schema["type"] == "function" and t.name == fn["name"] == "add"
    assert fn["parameters"]["properties"]["a"] == {
        "type": "integer",
        "description": "the first summand",
    }
    assert fn["parameters"]["required"] == ["a", "b"]
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        ToolBox([add, add])
    with pytest.raises(ValueError, match="max_result_chars"):
        ToolBox([add], max_result_chars=0)


@pytest.mark.parametrize(
    "text, kind, needle",
    [
        ('{"name": "add", "arguments": {"a": 2, "b": 3}}', None, "5"),
        ('{"name": add}', "malformed", "invalid JSON"),
        ('{"arguments": {"a": 1}}', "malformed", 'missing "name"'),
        ('{"name": "mul", "arguments": {}}', "unknown_tool", "'mul'"),
        ('{"name": "add", "arguments": {"a": "2", "b": 3}}', "bad_arguments", "not of type"),
        ('{"name": "add", "arguments": {"a": 2}}', "bad_arguments", "'b' is a required"),
        # model text is data, never code: an expression stays a (wrongly typed) string
        ('{"name": "add", "arguments": {"a": "__import__(\'os\')", "b": 1}}', "bad_arguments", ""),
        ('{"name": "div", "arguments": {"a": 1, "b": 0}}', "tool_exception", "ZeroDivisionError"),
    ],
)
def test_toolbox_turns_every_bad_call_into_an_error_result(text, kind, needle):
    box = ToolBox([add, div], max_result_chars=1000)
    (c,) = parse_tool_calls(f"<tool_call>\n{text}\n</tool_call>")
    res = box.run(c)
    assert res.error_kind == kind and needle in res.text and not res.truncated
    if kind is not None:
        assert res.text.startswith(f"error ({kind}): ")


def test_long_results_are_truncated_with_a_marker():
    box = ToolBox([rep], max_result_chars=10)
    res = box.run(ParsedCall(raw="", name="rep", arguments={"n": 25}))
    assert res.truncated and res.error_kind is None
    assert res.text == "x" * 10 + "...[truncated 15 chars]"
    short = box.run(ParsedCall(raw="", name="rep", arguments={"n": 10}))
    assert short.text == "x" * 10 and not short.truncated


def test_no_eval_or_exec_in_the_tool_modules():
    for name in ("tooluse.py", "toolbox.py", "toolcalls.py", "callparsing.py", "bfcl.py"):
        tree = ast.parse((ROOT / "opdplus" / name).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        called = {n.func.id for n in calls if isinstance(n.func, ast.Name)}
        assert not called & {"eval", "exec", "compile", "__import__"}, name


# ----------------------------------------------------------------------------- the tool turn


def check_tool_turn(tok, question, results):
    """tokens(conversation up to the model's EOS) + tool_turn_ids == tokens(whole conversation)."""
    end = turn_end_id(tok, tok.eos_token_id)
    msgs = [{"role": "user", "content": question}]
    msgs.append({"role": "assistant", "content": call("add", {"a": 2, "b": 3})})
    before = tok.apply_chat_template(msgs, tokenize=False)
    full = tok.apply_chat_template(
        msgs + [{"role": "tool", "content": r} for r in results],
        tokenize=False,
        add_generation_prompt=True,
    )
    eos = tok.decode([end], skip_special_tokens=False)
    cut = before.rindex(eos) + len(eos)  # the model's turn ends at its EOS
    head = tok(before[:cut], add_special_tokens=False)["input_ids"]
    ins = tool_turn_ids(tok, results, end)
    assert head + ins == tok(full, add_special_tokens=False)["input_ids"]
    return tok.decode(ins, skip_special_tokens=False)


def test_tool_turn_tokens_match_the_whole_conversation_tokenised():
    text = check_tool_turn(chatml_char_tokenizer(), "q", ["5", "error (unknown_tool): no"])
    assert text == (
        "\n<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n"
        "error (unknown_tool): no\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )


def test_tool_prompts_list_the_schemas_and_the_end_of_turn_must_be_an_eos():
    tok, box = chatml_char_tokenizer(), ToolBox([add, div, rep])
    (ids,) = encode_tool_prompts(tok, [[{"role": "user", "content": "q"}]], box)
    text = tok.decode(ids, skip_special_tokens=False)
    assert text.startswith("<|im_start|>system\n<tools>\n") and text.endswith("assistant\n")
    assert json.loads(text.split("\n")[2]) == box.schemas[0]
    with pytest.raises(ValueError, match="none of the EOS ids"):
        turn_end_id(tok, [0])


def test_tool_turn_tokens_for_the_tiny_tool_world():
    """Every tool turn of the tiny tool world's worked transcripts, rebuilt as a rollout does."""
    tt = pytest.importorskip("opdplus.tinytools")
    tok = tt.load_tokenizer()
    end = turn_end_id(tok, tok.eos_token_id)
    eos = tok.decode([end], skip_special_tokens=False)
    checked = 0
    for row in tt.load_split("validation")[:30]:
        msgs = row["messages"]
        for i in range(len(msgs) - 1):
            if msgs[i]["role"] != "assistant" or msgs[i + 1]["role"] != "tool":
                continue
            j = i + 1
            while j < len(msgs) and msgs[j]["role"] == "tool":
                j += 1
            before = tt.render(tok, msgs[: i + 1])
            head = tok(before[: before.rindex(eos) + len(eos)], add_special_tokens=False)
            ins = tool_turn_ids(tok, [m["content"] for m in msgs[i + 1 : j]], end)
            full = tt.render(tok, msgs[:j], add_generation_prompt=True)
            assert head["input_ids"] + ins == tok(full, add_special_tokens=False)["input_ids"]
            checked += 1
    assert checked >= 30


@pytest.mark.slow
def test_tool_turn_tokens_for_smollm2():
    from transformers import AutoTokenizer

    cache = models._default_cache_dir()
    if (cache / models._CACHE_MARKER).is_file():
        tok = models.load_tokenizer(cache)
    else:
        pytest.importorskip("gguf")
        pkg = str(models.smollm2_package_dir())
        tok = AutoTokenizer.from_pretrained(pkg, gguf_file=models.SMOLLM2_GGUF)
    text = check_tool_turn(tok, "What is 2+3?", ["5"])
    assert text == "\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------------- the rollout loop


def test_scripted_rollouts_cover_every_bad_input_and_the_turn_limit(world):
    tok = world["tok"]
    r = draw(world)
    assert isinstance(r, ToolRollout) and isinstance(r, Rollout)
    a, b, c, d, e = range(5)
    # every row followed its script exactly (greedy decoding of the memorised conversations)
    for i, turns in enumerate(SCRIPTS.values()):
        parts = transcript(tok, r, i).split("<|im_start|>assistant\n")
        said = [s.split("<|im_end|>")[0] for s in parts]
        assert said == turns[:MAX_TURNS]
    assert r.turns_B.tolist() == [2, 1, 3, 2, 3]
    assert r.calls_B.tolist() == [1, 0, 3, 2, 2]  # the call at the turn limit is not run
    errs = {k: v.tolist() for k, v in r.call_errors_B.items()}
    assert errs == {
        "malformed": [0, 0, 1, 0, 0],
        "unknown_tool": [0, 0, 1, 0, 0],
        "bad_arguments": [0, 0, 1, 0, 0],
        "tool_exception": [0, 0, 0, 1, 0],
    }
    assert [(x.turn, x.error_kind) for x in r.call_log[c]] == [
        (1, "malformed"), (1, "unknown_tool"), (2, "bad_arguments")
    ]
    for x in r.call_log[c] + r.call_log[d][:1]:
        assert x.result.startswith(f"error ({x.error_kind[:5]}")  # cut at the budget
    assert r.call_log[c][1].name == "mul" and r.call_log[c][0].name is None
    assert [x.error_kind for x in r.call_log[d]] == ["tool_exception", None]
    assert r.call_log[d][1].result == "x" * BUDGET + f"...[truncated {30 - BUDGET} chars]"
    assert r.stopped_by_turn_limit_B.tolist() == r.truncated.tolist() == [0, 0, 0, 0, 1]
    assert [r.final_texts[i] for i in (a, b, c, d)] == ["19", "hi", "?", "x"]
    # both results of a two-call turn go into one tool turn
    assert "<tool_response>\n19\n</tool_response>" in transcript(tok, r, a)
    assert transcript(tok, r, d).count("<|im_start|>user\n<tool_response>") == 1
    assert transcript(tok, r, d).count("<tool_response>") == 2
    # the masks: the model's tokens, then the inserted ones, then padding
    live = r.attention_mask[:, r.prompt_len :].bool()
    assert torch.equal(r.completion_mask | r.tool_mask_BT, live)
    assert not (r.completion_mask & r.tool_mask_BT).any()
    assert r.tool_mask_BT[b].sum() == 0 and r.tool_mask_BT[a].sum() > 0
    assert torch.all(r.sampler_logp[r.tool_mask_BT] == 0)
    # a batch of different turns and lengths, generated together
    assert len(set(r.turns_B.tolist())) == 3 and len(set(live.sum(-1).tolist())) == 5


def test_turn_and_length_limits(world):
    row = list(SCRIPTS).index("a")
    one = draw(world, prompts=[world["prompts"][row]], max_turns=1)
    assert one.turns_B.tolist() == [1] and one.calls_B.tolist() == [0]
    assert one.stopped_by_turn_limit_B.tolist() == [True] and one.truncated.tolist() == [True]
    assert one.tool_mask_BT.sum() == 0
    cut = draw(world, prompts=[world["prompts"][row]], max_new_tokens=5)
    assert cut.truncated.tolist() == [True] and cut.stopped_by_turn_limit_B.tolist() == [False]
    assert cut.completion_mask.sum() == 5 and cut.calls_B.tolist() == [0]
    ctx = draw(world, prompts=[world["prompts"][row]], max_context_tokens=100)
    assert ctx.truncated.tolist() == [True] and ctx.turns_B.tolist() == [1]  # no room for turn 2
    with pytest.raises(ValueError, match="max_turns"):
        draw(world, max_turns=0)


def test_sampled_rollouts_group_by_prompt_and_repeat_with_the_seed(world):
    a = draw(world, temperature=1.0, G=2, seed=5, max_new_tokens=32)
    b = draw(world, temperature=1.0, G=2, seed=5, max_new_tokens=32)
    assert a.group_size == 2 and a.input_ids.shape[0] == 2 * len(SCRIPTS)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.sampler_logp, b.sampler_logp)
    for g, p in enumerate(world["prompts"]):
        for i in range(2 * g, 2 * g + 2):
            assert a.input_ids[i, a.prompt_len - len(p) : a.prompt_len].tolist() == p


# ----------------------------------------------------------------------------- exactness


@pytest.fixture(scope="module")
def sampled(world):
    """Temperature-1 rollouts: varied turns (and calls that sometimes go wrong)."""
    r = draw(world, temperature=1.0, G=2, seed=3)
    assert r.tool_mask_BT.any() and len(set(r.turns_B.tolist())) > 1
    return r


def test_sampler_logp_equals_a_fresh_forward_pass(world, sampled):
    """The re-prefilled, KV-cached decoding of each turn scores like one pass over it all."""
    m = sampled.completion_mask
    fresh = score(world["lm"], sampled).logp_BT
    torch.testing.assert_close(fresh[m], sampled.sampler_logp[m], atol=2e-5, rtol=0)
    assert fresh[m].std() > 0.1  # real sampling, not a near-deterministic replay


def _alone(r, i):
    live = r.attention_mask[i].bool()
    n = int(r.attention_mask[i, r.prompt_len :].sum())
    P = int(r.attention_mask[i, : r.prompt_len].sum())
    return Rollout(
        input_ids=r.input_ids[i][live][None],
        attention_mask=torch.ones(1, P + n, dtype=torch.long),
        completion_mask=r.completion_mask[i, :n][None],
        sampler_logp=r.sampler_logp[i, :n][None],
        truncated=r.truncated[i : i + 1],
        prompt_len=P,
    )


def test_batched_multi_turn_scoring_equals_scoring_each_rollout_alone(world, sampled):
    r = sampled
    teacher = models.peaky_teacher(world["V"], seed=4, max_positions=512)
    for model in (world["lm"], teacher):
        batched = score(model, r).logp_BT
        for i in range(r.input_ids.shape[0]):
            a = _alone(r, i)
            one = score(model, a).logp_BT[0]
            n = a.completion_mask.shape[1]
            torch.testing.assert_close(batched[i, :n], one, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- through the step


def _train_setup(world, **change):
    student = copy.deepcopy(world["lm"])
    teacher = models.peaky_teacher(world["V"], seed=4, max_positions=512)
    cfg = TrainConfig(
        steps=2, prompts_per_step=4, samples_per_prompt=2, micro_batch_prompts=2,
        max_new_tokens=64, lr=1e-3, progress=False, seed=1, **change,
    )  # fmt: skip
    fn = tool_rollout_fn(world["tok"], world["box"], max_turns=MAX_TURNS)
    state = setup(student, teacher, world["tok"], world["prompts"], cfg, rollout_fn=fn)
    return state, student, teacher


class Perturb:
    """Adds noise to the final hidden states at chosen sequence positions of known rollouts.

    The hidden state at sequence position s produces the logits that predict token s + 1.
    """

    def __init__(self, models_, rollouts, which):
        self.rollouts, self.which, self.handles, self.current = rollouts, which, [], None
        for m in models_:
            self.handles.append(m.register_forward_pre_hook(self._remember, with_kwargs=True))
            self.handles.append(m.model.norm.register_forward_hook(self._perturb))

    def _remember(self, module, args, kwargs):
        self.current = kwargs["input_ids"]

    def _perturb(self, module, args, out):
        for r in self.rollouts:
            if r.input_ids.shape == self.current.shape and torch.equal(r.input_ids, self.current):
                P = r.prompt_len
                pos = torch.zeros(out.shape[:2], dtype=torch.bool)
                pos[:, P - 1 : -1] = self.which(r)  # predicts completion token t
                g = torch.Generator().manual_seed(0)
                noise = 5.0 * torch.randn(out.shape, generator=g)
                return torch.where(pos[..., None], out + noise, out)
        raise AssertionError("a forward pass on an unknown batch")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _grads_and_stats(state, student, rollouts):
    stats = accumulate_gradients(state, rollouts)
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)
    return grads, stats


@pytest.mark.parametrize("change", [dict(gamma=0.0), dict(gamma=1.0), dict(loss="logits")])
def test_tool_tokens_reach_neither_the_loss_nor_its_gradient(world, change):
    state, student, teacher = _train_setup(world, **change)
    rollouts = collect_rollouts(state, 0)
    rs = [r for _, r in rollouts]
    assert all(isinstance(r, ToolRollout) for r in rs) and any(r.tool_mask_BT.any() for r in rs)
    base_g, base_st = _grads_and_stats(state, student, rollouts)
    with Perturb([student, teacher], rs, lambda r: r.tool_mask_BT):
        tool_g, tool_st = _grads_and_stats(state, student, rollouts)
    for k in base_g:
        assert torch.equal(base_g[k], tool_g[k]), k
    for k in ("loss", "kl_sum", "tokens", "len_sum", "rows", "adv_sum"):
        assert base_st[k] == tool_st[k], k
    # the same perturbation at the model's own tokens does change both (the check can fail)
    with Perturb([student, teacher], rs, lambda r: r.completion_mask):
        own_g, own_st = _grads_and_stats(state, student, rollouts)
    assert own_st["loss"] != base_st["loss"]
    assert any(not torch.equal(base_g[k], own_g[k]) for k in base_g)
    # N, the lengths and the teacher-KL token count hold the model's tokens only
    n_model = sum(int(r.completion_mask.sum()) for r in rs)
    n_tool = sum(int(r.tool_mask_BT.sum()) for r in rs)
    assert n_tool > 0 and base_st["tokens"] == base_st["kl_tokens"] == base_st["len_sum"] == n_model
    assert base_st["tool_calls"] == sum(int(r.calls_B.sum()) for r in rs)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_pg_loss_ignores_log_probs_at_tool_positions(world, sampled, gamma):
    """Estimator level: any log-probs written into the holes change neither loss nor grad
    (the divergence-to-go sums over the model's tokens only)."""
    r, lm = sampled, world["lm"]
    teacher = models.peaky_teacher(world["V"], seed=4, max_positions=512)
    t = score(teacher, r).logp_BT
    holes = r.tool_mask_BT.float()
    g = torch.Generator().manual_seed(1)

    def loss_and_grad(junk_s, junk_t, mask):
        lm.zero_grad(set_to_none=True)
        s = score(lm, r, grad=True).logp_BT
        loss, _ = pg_loss(s + junk_s * holes, t + junk_t * holes, mask, "reverse_kl", "opd+",
                          gamma=gamma, clip_log_u=None)  # fmt: skip
        loss.backward()
        grads = [p.grad.clone() for p in lm.parameters() if p.grad is not None]
        lm.zero_grad(set_to_none=True)
        return float(loss.detach()), grads

    junk = lambda: 3.0 * torch.randn(r.completion_mask.shape, generator=g)  # noqa: E731
    base = loss_and_grad(0.0, 0.0, r.completion_mask)
    moved = loss_and_grad(junk(), junk(), r.completion_mask)
    assert base[0] == moved[0] and all(torch.equal(a, b) for a, b in zip(base[1], moved[1]))
    # had the mask kept the tool tokens, the junk would count
    wide = r.completion_mask | r.tool_mask_BT
    assert loss_and_grad(0.0, 0.0, wide)[0] != loss_and_grad(junk(), junk(), wide)[0]


def test_student_and_teacher_see_the_same_tool_tokens(world):
    state, student, teacher = _train_setup(world)
    rollouts = collect_rollouts(state, 0)
    seen = {"student": [], "teacher": []}
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, a, kw, who=who: seen[who].append(
                (kw["input_ids"], kw["attention_mask"], kw["position_ids"])
            ),
            with_kwargs=True,
        )
        for who, m in (("student", student), ("teacher", teacher))
    ]
    try:
        accumulate_gradients(state, rollouts)
    finally:
        for h in hooks:
            h.remove()
    assert len(seen["student"]) == len(seen["teacher"]) == len(rollouts)
    for (_, r), s, t in zip(rollouts, seen["student"], seen["teacher"]):
        for a, b in zip(s, t):
            assert torch.equal(a, b)
        assert torch.equal(s[0], r.input_ids) and torch.equal(s[1], r.attention_mask)
        P = r.prompt_len
        assert torch.all(s[1][:, P:][r.tool_mask_BT] == 1)  # attended by both
        # positions run on through the inserted tokens: no gap, no repeat
        live = s[1].bool()
        for i in range(r.input_ids.shape[0]):
            assert s[2][i][live[i]].tolist() == list(range(int(live[i].sum())))


def test_train_with_tool_rollouts_logs_tool_metrics(world):
    state, student, teacher = _train_setup(world)
    fn = tool_rollout_fn(world["tok"], world["box"], max_turns=MAX_TURNS)
    hist = train(student, teacher, world["tok"], world["prompts"], state.config, rollout_fn=fn)
    assert len(hist) == 2
    for rec in hist:
        assert rec["loss"] is not None and rec["tokens"] > 0
        assert rec["tool_turns"] >= 1 and rec["tool_calls"] >= 0
        assert 0 <= rec["tool_turn_limit_frac"] <= 1
        for k in ERROR_KINDS:
            assert isinstance(rec[f"tool_call_errors_{k}"], int)
    assert sum(r["tool_calls"] for r in hist) > 0
    # a run without tools keeps its records free of tool keys
    plain = train(copy.deepcopy(world["lm"]), teacher, world["tok"], world["prompts"],
                  state.config.replace(steps=1, max_new_tokens=8))  # fmt: skip
    assert not any(k.startswith("tool_") for k in plain[0])
    assert set(TOOL_STAT_KEYS) >= {"tool_calls", "tool_turns", "tool_turn_limit"}


def test_rollout_moves_between_devices_whole(world):
    r = draw(world, prompts=world["prompts"][:2])
    m = r.to("cpu")
    assert isinstance(m, ToolRollout) and torch.equal(m.tool_mask_BT, r.tool_mask_BT)
    assert set(m.call_errors_B) == set(ERROR_KINDS) and m.call_log == r.call_log
    assert replace(r, source="teacher").turns_B is r.turns_B
