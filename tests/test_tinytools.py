"""The tiny tool world: tools and schemas, tasks and splits, tokenizer and chat template,
the SFT loss mask, grading, the shipped checkpoints, and learning.

Threads: tiny models under the module's ``one_thread`` fixture (stable on a shared machine).
"""

import importlib.util
import json
import random

import pytest
import torch

from opdplus import tinytools as tt
from opdplus import tinytools_train as ttt
from opdplus import toolcalls
from opdplus.tooluse import ToolBox, tool_turn_ids

DATA = tt.default_data_dir()


@pytest.fixture(scope="module")
def tok():
    return tt.load_tokenizer()


@pytest.fixture(scope="module")
def test_rows():
    return tt.load_split("test")


# ----------------------------------------------------------------------------- tools, tasks


def test_schemas_come_from_the_functions_and_carry_enums():
    schemas = tt.tool_schemas()
    assert [s["function"]["name"] for s in schemas] == [fn.__name__ for fn in tt.TOOLS]
    conv = toolcalls.function_schema(schemas[4])
    props = conv["parameters"]["properties"]
    assert props["value"]["type"] == "integer"
    assert props["from_unit"]["enum"] == list(tt.UNITS)
    assert conv["parameters"]["required"] == ["value", "from_unit", "to_unit"]
    call = toolcalls.ParsedCall(raw="", name="convert_units",
                                arguments={"value": 3, "from_unit": "feet", "to_unit": "inch"})
    assert toolcalls.validate_call(call, schemas)[0] == "bad_arguments"  # plural: not in enum
    assert json.loads((DATA / "tools.json").read_text()) == schemas


def test_each_task_is_solved_by_its_calls_and_only_by_them(test_rows):
    schemas = tt.tool_schemas()
    kinds = {k: 0 for k in tt.KINDS}
    for row in test_rows:
        kinds[row["kind"]] += 1
        calls = ttt.reference_calls(row)
        assert len(calls) == (2 if row["kind"] == "price" else 1)
        results = []
        for c in calls:
            parsed = toolcalls.ParsedCall(raw="", name=c["name"], arguments=c["arguments"])
            assert toolcalls.validate_call(parsed, schemas) == (None, None)
            results.append(tt.run_tool(c["name"], c["arguments"]))
        assert results[-1] == row["answer"]
        if row["kind"] == "price":  # the second call uses the first call's result
            assert calls[1]["arguments"]["a"] == results[0]
        # The answer is never written in the question: it has to come from a tool.
        assert str(row["answer"]) not in row["question"].split()
    assert all(n >= 20 for n in kinds.values()), kinds
    # Products have at least four digits: beyond a tiny model's head arithmetic.
    assert all(r["answer"] >= 1000 for r in test_rows if r["kind"] == "multiply")


def test_tool_errors_are_exceptions_the_toolbox_reports():
    box = ToolBox(list(tt.TOOLS))
    bad = box.run(toolcalls.ParsedCall(raw="", name="convert_units", arguments={
        "value": 2, "from_unit": "inch", "to_unit": "mile"}))
    assert bad.error_kind == "tool_exception" and "cannot convert" in bad.text
    ok = box.run(toolcalls.ParsedCall(raw="", name="get_distance", arguments={
        "origin": "Paris", "destination": "Rome"}))
    assert ok.error_kind is None and int(ok.text) == tt.distance_km("Paris", "Rome")
    assert tt.distance_km("Paris", "Rome") == tt.distance_km("Rome", "Paris") > 0


def test_splits_are_disjoint_and_sized(test_rows):
    splits = {s: tt.load_split(s) for s in ("train", "validation")}
    splits["test"] = test_rows
    qs = {s: [r["question"] for r in rows] for s, rows in splits.items()}
    for s, rows in splits.items():
        assert len(rows) == tt.SPLIT_SIZES[s] and len(set(qs[s])) == len(qs[s])
    assert not set(qs["test"]) & set(qs["validation"])
    assert not (set(qs["test"]) | set(qs["validation"])) & set(qs["train"])


def test_datasets_reads_the_messages_column():
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(DATA / "validation.jsonl"), split="train")
    assert len(ds) == tt.SPLIT_SIZES["validation"]
    msgs = ds[0]["messages"]
    assert [m["role"] for m in msgs][:2] == ["user", "assistant"]
    call = msgs[1]["tool_calls"][0]["function"]
    assert isinstance(json.loads(call["arguments"]), dict)


def test_build_script_regenerates_data_and_tokenizer(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "build_tiny_tools", DATA.parent.parent / "scripts" / "build_tiny_tools.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    try:
        assert script.main(["--stage", "data", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    for name in ("test.jsonl", "validation.jsonl", "train.jsonl", "task_config.json",
                 "tools.json", "tokenizer/tokenizer.json", "tokenizer/chat_template.jinja"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_task_config_rejects_bad_ranges():
    with pytest.raises(ValueError, match="ranges"):
        tt.TaskConfig(mul_a=(10, 5))
    with pytest.raises(ValueError, match="max_quantity"):
        tt.TaskConfig(max_quantity=1)


# ----------------------------------------------------------------------------- tokenizer


def test_shipped_tokenizer_matches_a_rebuild(tok):
    fresh = tt.build_tokenizer()
    assert fresh.get_vocab() == tok.get_vocab()
    assert fresh.chat_template == tok.chat_template
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert 100 <= len(tok) <= 200


def test_every_transcript_round_trips_and_calls_decode_exactly(tok, test_rows):
    lengths = []
    for row in test_rows + tt.load_split("validation"):
        text = tt.render(tok, row["messages"])
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=False) == text
        lengths.append(len(ids))
        # The call's JSON, decoded from the assistant's tokens, is the reference call.
        got, mask = ttt.encode_transcript(tok, row["messages"])
        mine = tok.decode([i for i, m in zip(got, mask) if m], skip_special_tokens=False)
        parsed = toolcalls.parse_tool_calls(mine)
        assert [(c.name, c.arguments) for c in parsed] == [
            (c["name"], c["arguments"]) for c in ttt.reference_calls(row)]
    # Tokens per example (the README states them): short enough for a 256-token context.
    assert 100 <= sum(lengths) / len(lengths) <= 160 and max(lengths) <= 180


def test_chat_template_follows_the_chatml_tool_convention(tok, test_rows):
    row = next(r for r in test_rows if r["kind"] == "price")
    text = tt.render(tok, row["messages"])
    system = text[:text.index("<|im_start|>user")]
    assert system.startswith("<|im_start|>system\n<tools>") and "</tools><|im_end|>\n" in system
    names = json.loads(system[system.index("<tools>") + 7:system.index("</tools>")])
    assert list(names) == [fn.__name__ for fn in tt.TOOLS]
    assert names["convert_units"] == ["value", "from_unit", "to_unit"]
    result = row["messages"][2]["content"]
    assert (f"<|im_start|>user\n<tool_response>\n{result}\n</tool_response><|im_end|>\n"
            f"<|im_start|>assistant\n") in text
    assert text.count("<tool_call>\n{\"name\": ") == 2 and text.count("\n</tool_call><|im_end|>") == 2
    prompt = tt.prompt_text(tok, row["question"])
    assert text.startswith(prompt) and prompt.endswith("<|im_start|>assistant\n")
    # The end-of-turn token is special (skipped), the call markers are not (kept).
    ids = tok(text, add_special_tokens=False)["input_ids"]
    plain = tok.decode(ids, skip_special_tokens=True)
    assert "<|im_end|>" not in plain and "<tool_call>" in plain and "<tool_response>" in plain
    with pytest.raises(Exception, match="unknown role"):
        tt.render(tok, [{"role": "robot", "content": "x"}])


# ----------------------------------------------------------------------------- SFT mask


def test_loss_mask_covers_exactly_the_assistant_turns(tok, test_rows):
    for row in [r for r in test_rows if r["kind"] == "price"][:3] + test_rows[:5]:
        ids, mask = ttt.encode_transcript(tok, row["messages"])
        segments, cur = [], []
        for i, m in zip(ids, mask):
            if m:
                cur.append(i)
            elif cur:
                segments.append(cur)
                cur = []
        if cur:
            segments.append(cur)
        turns = [m for m in row["messages"] if m["role"] == "assistant"]
        assert len(segments) == len(turns)
        for seg, m in zip(segments, turns):
            alone = tok.apply_chat_template([m], tokenize=False)
            want = alone[len("<|im_start|>assistant\n"):].rstrip("\n")
            assert tok.decode(seg, skip_special_tokens=False) == want
            assert seg[-1] == tok.eos_token_id


def test_sft_layout_is_the_rollout_layout(tok, test_rows):
    """Between two assistant turns, the SFT sequence holds exactly the tokens a tool rollout
    inserts (``tooluse.tool_turn_ids``): the teacher trained on what distillation shows it."""
    for row in [r for r in test_rows if r["kind"] == "price"][:3] + test_rows[:3]:
        ids, mask = ttt.encode_transcript(tok, row["messages"])
        prompt = tok(tt.prompt_text(tok, row["question"]), add_special_tokens=False)["input_ids"]
        assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)])
        holes, cur, seen = [], [], False
        for i, m in zip(ids[len(prompt):], mask[len(prompt):]):
            if m:
                seen = True
                if cur:
                    holes.append(cur)
                    cur = []
            elif seen:
                cur.append(i)
        results = [m["content"] for m in row["messages"] if m["role"] == "tool"]
        assert holes == [tool_turn_ids(tok, [r], tok.eos_token_id) for r in results]


def test_batch_masks_and_loss_match_a_hand_computation(tok, test_rows, one_thread):
    rows = test_rows[:3]
    ids, attn, mask = ttt.make_batch(tok, rows)
    for b, row in enumerate(rows):
        assert attn[b].sum() == len(ttt.encode_transcript(tok, row["messages"])[0])
    model = ttt.build_model(ttt.STUDENT, tok, seed=0).double()
    loss = ttt.completion_loss(model, ids, attn, mask)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits, -1)
    total = sum(-logp[b, t - 1, ids[b, t]].item() for b in range(ids.shape[0])
                for t in range(1, ids.shape[1]) if mask[b, t])
    assert loss.item() == pytest.approx(total / mask[:, 1:].sum().item(), rel=1e-10)


# ----------------------------------------------------------------------------- grading


def test_grade_transcript_reads_answers_and_counts_every_call():
    good = ['<tool_call>\n{"name": "get_price", "arguments": {"item": "pen"}}\n</tool_call>',
            '<tool_call>\n{"name": "multiply", "arguments": {"a": 2, "b": 7}}\n</tool_call>',
            "Answer: 14"]
    g = tt.grade_transcript(good, 14)
    assert g == {"correct": True, "calls": 2, "parsed": 2, "valid": 2, "errors": {}}
    bad = ['<tool_call>\n{"name": "get_price", "arguments": {"item": "pens"}}\n</tool_call>',
           '<tool_call>\n{"name": "times", "arguments": {}}\n</tool_call>',
           '<tool_call>\n{"name": "multiply", "arguments": {"a": 2,\n</tool_call>',
           "Answer: 15"]
    g = tt.grade_transcript(bad, 14)
    assert not g["correct"] and (g["calls"], g["parsed"], g["valid"]) == (3, 2, 0)
    assert g["errors"] == {"bad_arguments": 1, "unknown_tool": 1, "malformed": 1}
    assert tt.final_answer("Answer: 3 and then Answer: -12") == -12
    assert tt.final_answer("no answer") is None
    assert not tt.grade_transcript([], 14)["correct"]


def test_evaluate_scores_a_perfect_and_a_broken_policy(tok, test_rows, one_thread):
    """``evaluate`` runs the real multi-turn loop: a model that writes the reference
    transcript token by token scores 1, an untrained one scores 0 with its calls counted."""
    rows = [r for r in test_rows if r["kind"] == "price"][:2] + test_rows[:2]
    res = ttt.evaluate(ttt.build_model(ttt.STUDENT, tok, seed=1), tok, rows, max_new_tokens=12)
    assert res.accuracy == 0.0 and res.n == len(rows) and res.ci_low == 0.0

    # An oracle: a real tiny Llama (so the sampler's cache works) whose last-position logits
    # are replaced by a point mass on the next reference token of the row it is decoding.
    oracle = ttt.build_model(ttt.STUDENT, tok, seed=2)
    seqs = [ttt.encode_transcript(tok, r["messages"])[0] for r in rows]
    forward, ctx = oracle.forward, {}

    def oracle_forward(input_ids=None, attention_mask=None, **kw):
        out = forward(input_ids=input_ids, attention_mask=attention_mask, **kw)
        B, T = input_ids.shape
        for b in range(B):
            new = input_ids[b][attention_mask[b, -T:].bool()].tolist()
            ctx[b] = new if attention_mask.shape[1] == T else ctx[b] + new
        logits = torch.full_like(out.logits, -30.0)
        for b in range(B):
            seq = next(s for s in seqs if s[:len(ctx[b])] == ctx[b])
            logits[b, -1, seq[len(ctx[b])] if len(ctx[b]) < len(seq) else tok.eos_token_id] = 0
        out.logits = logits
        return out

    oracle.forward = oracle_forward
    out = ttt.evaluate(oracle, tok, rows)
    assert out.accuracy == 1.0 and out.call_validity == 1.0 and out.call_match == 1.0
    assert out.calls == sum(len(ttt.reference_calls(r)) for r in rows)


# ----------------------------------------------------------------------------- shipped


def test_shipped_checkpoints_and_provenance(tok):
    for role, spec in (("teacher", ttt.TEACHER), ("student", ttt.STUDENT)):
        prov = ttt.load_provenance(role)
        model = ttt.load_teacher() if role == "teacher" else ttt.load_student()
        assert prov["n_params"] == ttt.n_params(model)
        assert model.config.num_hidden_layers == spec.layers
        assert model.config.vocab_size == len(tok)
        t = prov["test"]
        assert t["n"] == tt.SPLIT_SIZES["test"] and t["ci_low"] <= t["accuracy"] <= t["ci_high"]
        for key in ("parse_rate", "call_validity", "call_match", "errors"):
            assert key in t
        for key in ("script", "seed", "steps", "kept_step", "train_wall_s", "threads", "date",
                    "hardware", "sft_config"):
            assert key in prov, key
        # The tokenizer ships beside each model, identical to the world's.
        assert tt.load_tokenizer(DATA / role).get_vocab() == tok.get_vocab()
        assert (DATA / role / "model.safetensors").stat().st_size < 6e6
    teacher, student = ttt.load_provenance("teacher"), ttt.load_provenance("student")
    assert student["kept_step"] < teacher["kept_step"] <= teacher["steps"]


def test_shipped_results_agree_with_a_fresh_evaluation(tok, test_rows, one_thread):
    """The first 40 test tasks, re-run greedily, agree with the provenance's accuracy on all
    300 within three binomial standard errors of a 40-task subset (plus a little for other
    hardware's rounding at near-ties)."""
    for role, load in (("teacher", ttt.load_teacher), ("student", ttt.load_student)):
        res = ttt.evaluate(load(), tok, test_rows[:40])
        p = ttt.load_provenance(role)["test"]["accuracy"]
        assert res.n == 40
        assert abs(res.accuracy - p) <= 3 * (max(p * (1 - p), 0.01) / 40) ** 0.5 + 0.05


def test_shipped_pair_has_a_clear_gap_that_lies_in_the_calls():
    """What the shipped pair is for: a teacher clearly above the student (their 95% intervals
    apart), a student in 0.2-0.4, and a student whose calls almost always parse, so its gap is
    in what it calls, not in the format. (The teacher's 0.8 aim is not reached by the
    1500-step recipe: its accuracy is in its provenance and in the README.)"""
    teacher, student = ttt.load_provenance("teacher")["test"], ttt.load_provenance("student")["test"]
    assert teacher["ci_low"] > student["ci_high"]
    assert 0.2 <= student["accuracy"] <= 0.4
    assert student["parse_rate"] >= 0.9
    assert student["call_match"] < teacher["call_match"] - 0.1


def test_missing_files_say_how_to_regenerate(tmp_path):
    for loader in (ttt.load_teacher, ttt.load_student, tt.load_tokenizer):
        with pytest.raises(FileNotFoundError, match="build_tiny_tools.py"):
            loader(tmp_path)
    with pytest.raises(FileNotFoundError, match="build_tiny_tools.py"):
        tt.load_split("test", tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        tt.load_split("dev")


# ----------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_short_sft_learns_the_call_format(tok, one_thread):
    """A small model (2 layers, width 96) trained from scratch for 150 steps: the
    assistant-token loss falls below a third of its start, and most greedy calls on held-out
    tasks parse (the format is learned long before the arguments are right)."""
    model = ttt.build_model(ttt.ModelSpec(layers=2, width=96, heads=4, max_positions=256),
                            tok, seed=0)
    val = tt.load_split("validation")[:40]
    cfg = ttt.SFTConfig(steps=150, batch_size=16, warmup_steps=20, decay_frac=0.2, eval_every=0)
    stream = ttt.rows_from_tasks(tt.task_stream(5, exclude=tt.heldout_questions()))
    run = ttt.sft(model, tok, stream, cfg, progress=False)
    first = sum(r["loss"] for r in run.history[:5]) / 5
    last = sum(r["loss"] for r in run.history[-10:]) / 10
    assert first > 3.0 and last < first / 3, (first, last)
    res = ttt.evaluate(model, tok, val)
    assert res.calls >= len(val) * 0.8 and res.parse_rate >= 0.8, res.summary()
    json.dumps(run.history)


def test_seeded_generation_is_deterministic():
    a = tt.generate_task(random.Random(3))
    b = tt.generate_task(random.Random(3))
    assert a == b and tt.transcript(a) == tt.transcript(b)
