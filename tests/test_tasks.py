"""The word-problem generator: determinism, knobs, correct worked solutions, shipped splits."""

import json
import random
import re

import pytest

from opdplus import tasks
from opdplus.evaluation import target_of

STEP_RE = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)\.$")


def check_solution(row, cfg=tasks.TaskConfig()):
    """Recompute a worked solution step by step, independently of the generator."""
    *steps, marker, final = row["answer"].split(" ")
    assert marker == "####" and int(final) == row["final"]
    assert len(steps) == row["steps"]
    assert cfg.min_steps <= len(steps) <= cfg.max_steps
    # The question states the start amount, then each operand in order.
    q_numbers = [int(n) for n in re.findall(r"\d+", row["question"])]
    value = q_numbers[0]
    assert 2 <= value <= cfg.max_start
    for step, k_in_question in zip(steps, q_numbers[1:]):
        a, op, k, b = STEP_RE.match(step).groups()
        a, k, b = int(a), int(k), int(b)
        assert a == value and k == k_in_question and op in cfg.ops
        expected = {"+": a + k, "-": a - k, "*": a * k, "/": a / k}[op]
        assert b == expected and 1 <= b <= cfg.max_value
        value = b
    assert len(q_numbers) == len(steps) + 1
    assert value == row["final"]


def test_generator_is_deterministic_and_seed_dependent():
    a = [tasks.generate_problem(random.Random(7)) for _ in range(3)]
    b = [tasks.generate_problem(random.Random(7)) for _ in range(3)]
    c = [tasks.generate_problem(random.Random(8)) for _ in range(3)]
    assert a == b and a != c


def test_default_problems_have_correct_worked_solutions():
    rng = random.Random(0)
    rows = [tasks.generate_problem(rng) for _ in range(500)]
    for row in rows:
        check_solution(row)
        assert target_of(row) == str(row["final"])
    # All three operations and all step counts occur.
    assert set(re.findall(r"\d([-+*/])\d", " ".join(r["answer"] for r in rows))) == set("+-*")
    assert {r["steps"] for r in rows} == {1, 2, 3}


@pytest.mark.parametrize("cfg", [
    tasks.TaskConfig(min_steps=2, max_steps=2),
    tasks.TaskConfig(max_start=9, max_operand=9, max_value=30, ops="+-"),
    tasks.TaskConfig(min_steps=3, max_steps=4, ops="+-*/", max_factor=3),
])
def test_difficulty_knobs(cfg):
    rng = random.Random(1)
    rows = [tasks.generate_problem(rng, cfg) for _ in range(300)]
    for row in rows:
        check_solution(row, cfg)
    if "/" in cfg.ops:
        assert any("/" in r["answer"] for r in rows)


@pytest.mark.parametrize("kwargs", [dict(min_steps=0), dict(min_steps=3, max_steps=2),
                                    dict(max_start=200), dict(ops="*"), dict(ops="+x"),
                                    dict(max_factor=1)])
def test_config_rejects_bad_knobs(kwargs):
    with pytest.raises(ValueError):
        tasks.TaskConfig(**kwargs)


def test_stream_skips_excluded_questions():
    first = [p["question"] for _, p in zip(range(200), tasks.problem_stream(3))]
    held = set(first[::2])
    again = [p["question"] for _, p in zip(range(200), tasks.problem_stream(3, exclude=held))]
    assert not held & set(again)
    assert [q for q in first if q not in held] == again[:len(first) - len(held)]


def test_shipped_splits_regenerate_byte_for_byte():
    data = tasks.default_data_dir()
    meta = json.loads((data / "task_config.json").read_text())
    cfg = tasks.TaskConfig(**meta["config"])
    splits = tasks.generate_splits(meta["seed"], cfg, meta["sizes"])
    for split, rows in splits.items():
        assert tasks.dumps_jsonl(rows).encode() == (data / f"{split}.jsonl").read_bytes(), split


def test_shipped_splits_are_disjoint_and_sized():
    splits = {s: tasks.load_split(s) for s in ("train", "validation", "test")}
    assert 200 <= len(splits["test"]) <= 500
    assert 150 <= len(splits["validation"]) <= 250
    assert len(splits["train"]) >= 2000
    qs = {s: [r["question"] for r in rows] for s, rows in splits.items()}
    for s in qs:
        assert len(set(qs[s])) == len(qs[s]), f"duplicate question in {s}"
    assert not set(qs["test"]) & set(qs["train"])
    assert not set(qs["validation"]) & set(qs["train"])
    assert not set(qs["test"]) & set(qs["validation"])
    assert tasks.heldout_questions() == set(qs["test"]) | set(qs["validation"])
    for row in splits["test"]:
        check_solution(row)


def test_write_splits_roundtrip(tmp_path):
    tasks.write_splits(tmp_path, seed=5, sizes={"test": 20, "validation": 10, "train": 30})
    rows = tasks.load_split("test", tmp_path)
    assert rows == tasks.generate_splits(5, sizes={"test": 20, "validation": 10,
                                                   "train": 30})["test"]
    with pytest.raises(FileNotFoundError, match="build_tiny_world.py"):
        tasks.load_split("test", tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown split"):
        tasks.load_split("dev", tmp_path)


def test_template_text_covers_every_generated_word():
    words = set(re.findall(r"[A-Za-z]+", tasks.template_text()))
    rng = random.Random(2)
    cfg = tasks.TaskConfig(ops="+-*/")
    for _ in range(300):
        p = tasks.generate_problem(rng, cfg)
        assert set(re.findall(r"[A-Za-z]+", p["question"])) <= words


def test_gsm_symbolic_rows_are_gsm8k_format():
    pytest.importorskip("reasoning_gym")
    from fractions import Fraction

    rows = tasks.gsm_symbolic_rows(40, seed=1)
    assert len(rows) == 40
    for r in rows:
        # reasoning_gym's worked solution ends "#### n" (sometimes "n.0"); ours reads it.
        assert Fraction(target_of(r)) == Fraction(r["final"])


@pytest.mark.parametrize("ops", ["-/", "-", "-*", "-*/", "+", "+*", "+/", "+*/"])
def test_every_accepted_ops_setting_generates_for_every_seed(ops):
    # Without both + and -, values can reach dead ends (1 with "-/", max_value with "+");
    # the generator must steer clear of them instead of raising IndexError.
    cfg = tasks.TaskConfig(ops=ops, max_value=40, max_start=30, max_operand=20, max_factor=4)
    used = set()
    for seed in range(400):
        row = tasks.generate_problem(random.Random(seed), cfg)
        check_solution(row, cfg)
        used |= set(re.findall(r"\d([-+*/])\d", row["answer"]))
    assert used == set(ops)  # every allowed operation still occurs


def test_ops_that_cannot_reach_the_step_count_are_rejected_with_the_fix():
    # only subtraction from at most 3: a 3-step problem would need a start of at least 4
    with pytest.raises(ValueError, match=r"3-step problem.*raise max_start"):
        tasks.TaskConfig(ops="-", max_start=3)
    tasks.TaskConfig(ops="-", max_start=4)  # 4-1-1-1 = 1 is fine
