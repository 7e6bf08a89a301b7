"""The vendored BFCL subset, its regeneration script, the grader's oracle run, the evaluation.

- Files: each vendored file matches its provenance (sha256, ids, counts); the script that
  writes them is deterministic and independent of source order (checked on a small fake
  wheel: the real one is not downloaded at test time).
- Oracle: every vendored schema converts to valid JSON Schema; the ideal answer of every
  record (optional arguments left out, or all given) grades correct, in each accepted
  syntax; a perturbed answer (wrong name, wrong value) does not.
- Evaluation: exact counts through ``evaluate_bfcl`` with a scripted model, then (slow)
  SmolLM2-135M-Instruct on a few real records.
"""

import copy
import hashlib
import importlib.util
import json
import random
import zipfile
from pathlib import Path

import jsonschema
import pytest
import torch

from opdplus import bfcl, models
from opdplus import toolcalls as tc
from opdplus.evaluation import wilson_interval

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def records():
    return bfcl.load_bfcl()


@pytest.fixture(scope="module")
def vendor():
    return _script("vendor_bfcl")


# ----------------------------------------------------------------------------- files


def test_vendored_files_match_their_provenance(records, vendor):
    prov = json.loads((bfcl.BFCL_DIR / "provenance.json").read_text())
    assert prov["version"] == vendor.VERSION and prov["wheel_sha256"] == vendor.WHEEL_SHA256
    for category, n in vendor.SIZES.items():
        info = prov["categories"][category]
        data = (bfcl.BFCL_DIR / info["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        ids = [r["id"] for r in records if bfcl.category_of(r["id"]) == category]
        assert ids == info["ids"] and len(ids) == n == info["records"]
        assert ids == sorted(ids, key=vendor.id_number)
        # The selection rule, recomputed: the n smallest salted hashes of the source ids.
        assert info["records_in_source"] == {"simple_python": 400, "multiple": 200}[category]
    assert len({r["id"] for r in records}) == len(records) == sum(vendor.SIZES.values())
    licence = (bfcl.BFCL_DIR / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "bfcl-eval" in (bfcl.BFCL_DIR / "README.md").read_text()


def _fake_wheel(path: Path, order_seed: int) -> Path:
    """A zip laid out like the bfcl-eval wheel, 12 + 6 records, lines in a seeded order."""
    rng = random.Random(order_seed)
    with zipfile.ZipFile(path, "w") as z:
        for category, n in (("simple_python", 12), ("multiple", 6)):
            qs = [
                {
                    "id": f"{category}_{i}",
                    "question": [[{"role": "user", "content": f"q{i}"}]],
                    "function": [
                        {"name": f"f{i}", "parameters": {"type": "dict", "properties": {}}}
                    ],
                }
                for i in range(n)
            ]
            ans = [{"id": q["id"], "ground_truth": [{f"f{i}": {}}]} for i, q in enumerate(qs)]
            rng.shuffle(qs)
            rng.shuffle(ans)
            z.writestr(
                f"bfcl_eval/data/BFCL_v4_{category}.json", "".join(json.dumps(q) + "\n" for q in qs)
            )
            z.writestr(
                f"bfcl_eval/data/possible_answer/BFCL_v4_{category}.json",
                "".join(json.dumps(a) + "\n" for a in ans),
            )
    return path


def test_vendor_script_is_deterministic_and_order_free(tmp_path, vendor):
    sizes = {"simple_python": 5, "multiple": 3}
    a = vendor.build(_fake_wheel(tmp_path / "a.whl", 0), sizes)
    b = vendor.build(_fake_wheel(tmp_path / "b.whl", 1), sizes)
    assert set(a) == {"simple_python.jsonl", "multiple.jsonl", "provenance.json"}
    for name in ("simple_python.jsonl", "multiple.jsonl"):
        assert a[name] == b[name]  # same bytes whatever the order of the source lines
    rows = [json.loads(line) for line in a["simple_python.jsonl"].decode().splitlines()]
    assert len(rows) == 5
    for r in rows:  # joined by id: f<i> belongs to question q<i>
        i = vendor.id_number(r["id"])
        assert r["question"][0][0]["content"] == f"q{i}" and list(r["ground_truth"][0]) == [f"f{i}"]
    with pytest.raises(ValueError, match="asked for 7 records"):
        vendor.build(_fake_wheel(tmp_path / "c.whl", 2), {"multiple": 7})
    with pytest.raises(SystemExit, match="differs from the pinned"):
        vendor.main(["--wheel", str(tmp_path / "a.whl"), "--out", str(tmp_path / "out")])


def test_load_bfcl_reports_bad_rows_and_missing_files(tmp_path):
    (tmp_path / "multiple.jsonl").write_text('{"id": "multiple_0"}\n')
    with pytest.raises(ValueError, match=r"multiple.jsonl:1: expected a BFCL record"):
        bfcl.load_bfcl(["multiple"], data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="vendor_bfcl.py"):
        bfcl.load_bfcl(["simple_python"], data_dir=tmp_path)
    assert len(bfcl.load_bfcl(["multiple"], limit=3)) == 3


# ----------------------------------------------------------------------------- oracle


JSON_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def _types(node) -> set:
    """Every "type" value in a schema, however deep."""
    if isinstance(node, list):
        return set().union(*map(_types, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    own = {node["type"]} if isinstance(node.get("type"), str) else set()
    return own.union(*(_types(v) for k, v in node.items() if k not in ("enum", "default")))


def test_every_vendored_schema_is_valid_json_schema(records):
    seen = 0
    for r in records:
        for f in r["function"]:
            js = tc.to_json_schema(tc.function_schema(f)["parameters"])
            jsonschema.Draft202012Validator.check_schema(js)
            assert js["type"] == "object" and _types(js) <= JSON_TYPES, _types(js)
            seen += 1
    assert seen >= len(records)


def _python_syntax(record: dict, include_optional: bool) -> str:
    """The ideal answer written as BFCL's Python calls, ``[f(a=1), ...]``."""
    calls = tc.extract_calls(bfcl.ideal_output(record, include_optional))
    return (
        "["
        + ", ".join(
            f"{c.name}(" + ", ".join(f"{k}={v!r}" for k, v in c.arguments.items()) + ")"
            for c in calls
        )
        + "]"
    )


@pytest.mark.parametrize("include_optional", [False, True])
def test_oracle_every_possible_answer_grades_correct(records, include_optional):
    for r in records:
        ideal = bfcl.ideal_output(r, include_optional)
        bare = json.dumps([json.loads(c.raw) for c in tc.parse_tool_calls(ideal)])
        for text in (ideal, bare, _python_syntax(r, include_optional)):
            g = tc.grade_call(text, r["function"], r["ground_truth"])
            assert (g.parsed, g.valid, g.correct) == (True, True, True), (r["id"], text, g.reason)
    # The two renderings differ where the data has optional arguments with values.
    assert sum(bfcl.ideal_output(r, True) != bfcl.ideal_output(r) for r in records) > 20


def _perturb(value):
    """A value of the same type that no allowed list in the data contains."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value + 7919
    if isinstance(value, str):
        return value + " zq"
    if isinstance(value, list):
        return value + value[:1] if value else ["zq"]
    if isinstance(value, dict):
        return {**value, "zq_extra": 1}
    return None


def test_oracle_perturbed_answers_fail(records):
    changed = 0
    for r in records:
        call = tc.extract_calls(bfcl.ideal_output(r))[0]
        schema = next(f for f in r["function"] if f["name"] == call.name)
        # A wrong function name never passes.
        wrong = tc.grade_call(
            json.dumps({"name": call.name + "_x", "arguments": call.arguments}),
            r["function"],
            r["ground_truth"],
        )
        assert not wrong.correct and wrong.reason.startswith("unknown_tool")
        for arg in schema["parameters"].get("required", []):
            new = _perturb(call.arguments.get(arg))
            if new is None:
                continue
            args = copy.deepcopy(call.arguments)
            args[arg] = new
            g = tc.grade_call(
                json.dumps({"name": call.name, "arguments": args}), r["function"], r["ground_truth"]
            )
            assert not g.correct, (r["id"], arg, new)
            changed += 1
            break
    assert changed >= 0.95 * len(records)


# ----------------------------------------------------------------------------- evaluation

TOOLS_TEMPLATE = (
    "{% if tools %}<system> TOOLS {% for t in tools %}{{ t['function']['name'] }} "
    "{% endfor %}{% endif %}" + models.SIMPLE_CHAT_TEMPLATE
)


class ScriptedByPrompt(torch.nn.Module):
    """Emits, after each prompt, the tokens scripted for that prompt (then EOS forever)."""

    def __init__(self, vocab: int, scripts: dict, eos: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.vocab, self.scripts, self.eos = vocab, scripts, eos
        self.rows, self.step = [], 0

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False, **_):
        if input_ids.shape[1] > 1 or not self.rows:  # the prefill: recognise each prompt
            self.rows = [
                self.scripts[tuple(ids[m.bool()].tolist())]
                for ids, m in zip(input_ids, attention_mask)
            ]
            self.step = 0
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        for b, script in enumerate(self.rows):
            tok = script[self.step] if self.step < len(script) else self.eos
            logits[b, 0, tok] = 30.0
        self.step += 1
        return type("Out", (), {"logits": logits + self.w, "past_key_values": None})()


def test_evaluate_bfcl_counts_exactly_with_a_scripted_model(records):
    picked = records[:3] + [r for r in records if r["id"].startswith("multiple")][:3]
    ideal = [bfcl.ideal_output(r).replace("\n", " ") for r in picked]
    first = tc.extract_calls(ideal[1])[0]
    wrong_value = json.dumps(
        {
            "name": first.name,
            "arguments": {
                k: _perturb(v) if _perturb(v) is not None else v for k, v in first.arguments.items()
            },
        }
    )
    outputs = [
        ideal[0] + " <eos> junk after the end",  # correct; the text after EOS is cut
        f"<tool_call> {wrong_value} </tool_call>",  # parsed, valid, wrong value
        '<tool_call> {"name": "no_such_function", "arguments": {}} </tool_call>',  # not valid
        "I would rather not .",  # no call
        ideal[4],  # correct
        "<tool_call> {oops </tool_call>",  # malformed
    ]
    words = set()
    plain = models.word_tokenizer([], chat_template=models.SIMPLE_CHAT_TEMPLATE)
    prompts = [bfcl.bfcl_prompt(plain, r) for r in picked]
    for text in prompts + outputs:
        words.update(text.split())
    tok = models.word_tokenizer(sorted(words), chat_template=models.SIMPLE_CHAT_TEMPLATE)
    assert not bfcl.template_renders_tools(tok)
    scripts = {}
    for prompt, out in zip([bfcl.bfcl_prompt(tok, r) for r in picked], outputs):
        key = tuple(tok(prompt, add_special_tokens=False)["input_ids"])
        scripts[key] = tok(out, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    model = ScriptedByPrompt(len(tok), scripts, tok.eos_token_id)
    res = bfcl.evaluate_bfcl(model, tok, picked, max_new_tokens=200, batch_size=4, progress=False)
    assert res.prompt_mode == "system_message"
    assert [r["id"] for r in res.records] == [r["id"] for r in picked]
    assert [(r["parsed"], r["valid"], r["correct"]) for r in res.records] == [
        (True, True, True),
        (True, True, False),
        (True, False, False),
        (False, False, False),
        (True, True, True),
        (False, False, False),
    ]
    assert res.records[0]["output"] == ideal[0]  # cut at the first EOS
    assert (res.n, res.parsed, res.valid, res.correct) == (6, 4, 3, 2)
    assert res.accuracy == pytest.approx(2 / 6)
    assert res.accuracy_ci == pytest.approx(wilson_interval(2, 6))
    assert res.by_category == {
        "simple_python": {"n": 3, "parsed": 3, "valid": 2, "correct": 1},
        "multiple": {"n": 3, "parsed": 1, "valid": 1, "correct": 1},
    }


def test_prompt_uses_the_template_tools_when_it_renders_them(records):
    r = records[0]
    tok = models.word_tokenizer([], chat_template=TOOLS_TEMPLATE)
    assert bfcl.template_renders_tools(tok)
    text = bfcl.bfcl_prompt(tok, r)
    assert text.startswith(f"<system> TOOLS {r['function'][0]['name']} ")
    assert "<tool_call>" not in text  # the template's own rendering, not ours
    plain = models.word_tokenizer([], chat_template=models.SIMPLE_CHAT_TEMPLATE)
    text = bfcl.bfcl_prompt(plain, r)
    assert text.startswith("<system> ") and "<tools>" in text and "<tool_call>" in text
    listed = text.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert json.loads(listed)["function"]["parameters"]["type"] == "object"  # JSON Schema
    with pytest.raises(ValueError, match="mode must be one of"):
        bfcl.bfcl_prompt(plain, r, mode="xml")


@pytest.mark.slow
def test_smollm2_on_bfcl_pipeline(one_thread, records):
    """SmolLM2-135M-Instruct on two real records: every record graded, consistent counts."""
    pytest.importorskip("gguf")
    try:
        models.smollm2_package_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    model, tok = models.load_smollm2(device=models.get_device("auto"), dtype="auto")
    # SmolLM2's template ignores tools=, so the functions go in the system message.
    assert not bfcl.template_renders_tools(tok)
    # The record with the shortest function list in each category: short prompts, quick test.
    picked = [
        min(
            (r for r in records if bfcl.category_of(r["id"]) == c),
            key=lambda r: len(json.dumps(r["function"])),
        )
        for c in bfcl.CATEGORIES
    ]
    res = bfcl.evaluate_bfcl(model, tok, picked, max_new_tokens=16, batch_size=2, progress=False)
    assert res.prompt_mode == "system_message" and res.n == len(res.records) == 2
    assert [r["id"] for r in res.records] == [r["id"] for r in picked]
    assert 0 <= res.correct <= res.valid <= res.parsed <= res.n
    for rate, (lo, hi) in [
        (res.parse_rate, res.parse_ci),
        (res.validity_rate, res.validity_ci),
        (res.accuracy, res.accuracy_ci),
    ]:
        assert 0.0 <= lo <= rate <= hi <= 1.0
    for r in res.records:
        assert isinstance(r["output"], str) and (r["correct"] or r["reason"])


def test_reference_results_agree_with_the_grader(records):
    """data/reference/bfcl_smollm2.json (scripts/eval_bfcl.py): its counts, rates and
    intervals follow from its stored outputs, graded again by the current grader."""
    ref = json.loads((ROOT / "data" / "reference" / "bfcl_smollm2.json").read_text())
    by_id = {r["id"]: r for r in records}
    rows = [bfcl.grade_record(by_id[r["id"]], r["output"]) for r in ref["records"]]
    assert rows == ref["records"]
    again = bfcl.result_from_rows(
        rows, prompt_mode=ref["prompt_mode"], max_new_tokens=ref["max_new_tokens"]
    ).summary()
    for key, value in again.items():
        assert ref[key] == (list(value) if isinstance(value, tuple) else value), key
    assert 0 <= ref["correct"] <= ref["valid"] <= ref["parsed"] <= ref["n"] == len(rows)
    assert ref["commands"] and ref["commands"][0].startswith("python scripts/eval_bfcl.py")
