"""The tiny world's task: GSM8K-style word problems with worked solutions.

A problem is a short story about one person and one kind of item, changed by 1-3
arithmetic steps, with a worked solution in GSM8K's answer format::

    question: Ben has 15 stickers. Then he ends up with 2 times as many. He gives away 5.
              How many stickers does Ben have?
    answer:   15*2=30. 30-5=25. #### 25

Rows are plain dicts, ``{"id", "question", "answer", "final", "steps"}``: ``question`` and
``answer`` are exactly GSM8K's two fields (solution, then ``#### n``), so the same grader and
loaders serve both; ``final`` is the integer answer and ``steps`` the number of operations.

Why our own generator and not reasoning_gym's: reasoning_gym's ``gsm_symbolic`` has worked
GSM8K-format solutions, but its ~85 templates use long free English, percentages and
fractions, and answers into the thousands: a vocabulary of thousands of words and problems
far beyond a 1M-parameter model trained from scratch in minutes on a CPU. Its
``basic_arithmetic``/``chain_sum``/``products`` have the difficulty knobs we want but are bare
expressions with no word problem and no worked solution. So this module writes only what
reasoning_gym lacks -- a small templated generator that emits the step-by-step solution --
and ``gsm_symbolic_rows`` adapts reasoning_gym's generator (when installed) into the same row
format, as an offline GSM8K-like set for real pretrained models; its scorer also serves the
tests as an independent check of our grading.

Simplified on purpose: eight names, eight items, a few phrasings per operation, only
non-negative integers (every intermediate value stays in ``[1, max_value]``), and division
only when it is exact. Generation uses Python's ``random.Random`` (its integer draws are
stable across Python versions), so a seed fixes every split byte for byte.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

NAMES: Tuple[Tuple[str, str], ...] = (
    ("Ben", "he"), ("Ann", "she"), ("Tom", "he"), ("Mia", "she"),
    ("Sam", "he"), ("Eva", "she"), ("Leo", "he"), ("Zoe", "she"),
)
ITEMS: Tuple[str, ...] = ("stickers", "apples", "marbles", "coins", "books", "cards", "pens",
                          "shells")
# One phrasing per line; {p} is the pronoun, {P} the capitalised pronoun, {k} the operand.
PHRASES: Dict[str, Tuple[str, ...]] = {
    "+": ("Then {p} gets {k} more.", "{P} finds {k} more.", "{P} buys {k} more."),
    "-": ("{P} gives away {k}.", "{P} loses {k}.", "Then {p} sells {k}."),
    "*": ("Then {p} ends up with {k} times as many.", "{P} now has {k} times as many."),
    "/": ("{P} splits them into {k} equal groups and keeps one group.",),
}
SPLIT_SIZES: Dict[str, int] = {"test": 300, "validation": 200, "train": 3000}
"""Shipped split sizes. Test is generated first, so it never depends on the other sizes."""
DEFAULT_SEED = 2026


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs of the word-problem generator."""

    min_steps: int = 1
    """Fewest arithmetic operations in a problem."""
    max_steps: int = 3
    """Most arithmetic operations in a problem."""
    max_start: int = 50
    """The starting amount is drawn from ``[2, max_start]``."""
    max_operand: int = 50
    """Largest amount added or taken away in one step."""
    max_factor: int = 5
    """Largest multiplier or divisor (the smallest is 2)."""
    max_value: int = 150
    """Cap on every intermediate value and on the answer (the number range)."""
    ops: str = "+-*"
    """Operations to draw from, a subset of ``"+-*/"``."""

    def __post_init__(self):
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"need 1 <= min_steps <= max_steps, got {self.min_steps}, "
                             f"{self.max_steps}")
        if not 2 <= self.max_start <= self.max_value:
            raise ValueError(f"need 2 <= max_start <= max_value, got {self.max_start}, "
                             f"{self.max_value}")
        if self.max_operand < 1 or self.max_factor < 2:
            raise ValueError("need max_operand >= 1 and max_factor >= 2")
        if not self.ops or set(self.ops) - set("+-*/") or not set(self.ops) & set("+-"):
            raise ValueError(f"ops must be a subset of '+-*/' containing + or -, got "
                             f"{self.ops!r}")
        # Without both + and -, a value can be a dead end (1 with ops "-/": nothing keeps
        # it in [1, max_value]); the generator avoids them, but a start must exist that
        # supports every step count.
        for n in range(self.min_steps, self.max_steps + 1):
            if not _starts(self, n):
                raise ValueError(
                    f"ops {self.ops!r} cannot make a {n}-step problem from a start in "
                    f"[2, {self.max_start}] within [1, {self.max_value}]; raise max_start "
                    f"or max_value, lower max_steps, or add '+' and '-' to ops")


def _operand_choices(op: str, v: int, cfg: TaskConfig) -> Sequence[int]:
    """The operands that keep the next value an integer in ``[1, max_value]``."""
    if op == "+":
        return range(1, min(cfg.max_operand, cfg.max_value - v) + 1)
    if op == "-":
        return range(1, min(cfg.max_operand, v - 1) + 1)
    if op == "*":
        return range(2, min(cfg.max_factor, cfg.max_value // v) + 1)
    return [k for k in range(2, cfg.max_factor + 1) if v % k == 0]  # "/": exact only


def _apply(op: str, a: int, k: int) -> int:
    return {"+": a + k, "-": a - k, "*": a * k, "/": a // k}[op]


@lru_cache(maxsize=32)
def _reachable(cfg: TaskConfig) -> Tuple[frozenset, ...]:
    """``out[r]``: the values from which r more operations can be made (all in range).

    Dynamic programming over ``[1, max_value]``, r = 0 .. max_steps. With both + and - in
    ops every value qualifies (one of them applies anywhere in the range), so nothing is
    computed.
    """
    values = frozenset(range(1, cfg.max_value + 1))
    if "+" in cfg.ops and "-" in cfg.ops:
        return (values,) * (cfg.max_steps + 1)
    out = [values]
    for _ in range(cfg.max_steps):
        prev = out[-1]
        out.append(frozenset(v for v in values if any(
            _apply(op, v, k) in prev for op in cfg.ops for k in _operand_choices(op, v, cfg))))
    return tuple(out)


def _choices(cfg: TaskConfig, op: str, value: int, steps_after: int) -> Sequence[int]:
    """Operands of ``op`` at ``value`` that leave ``steps_after`` more steps possible."""
    ks = _operand_choices(op, value, cfg)
    if "+" in cfg.ops and "-" in cfg.ops:
        return ks  # no dead ends (see _reachable)
    ok = _reachable(cfg)[steps_after]
    return [k for k in ks if _apply(op, value, k) in ok]


def _starts(cfg: TaskConfig, steps: int) -> Sequence[int]:
    """Start values from which a ``steps``-step problem can be generated."""
    if "+" in cfg.ops and "-" in cfg.ops:
        return range(2, cfg.max_start + 1)
    ok = _reachable(cfg)[steps]
    return [v for v in range(2, cfg.max_start + 1) if v in ok]


def generate_problem(rng: random.Random, config: TaskConfig = TaskConfig()) -> dict:
    """One problem drawn from ``rng``: ``{"question", "answer", "final", "steps"}``."""
    name, pron = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    n_steps = rng.randint(config.min_steps, config.max_steps)
    # rng.choice over a list draws exactly as rng.randint over the same range, so the
    # shipped splits (ops "+-*", where nothing is filtered out) are unchanged.
    value = rng.choice(_starts(config, n_steps))  # non-empty: checked by TaskConfig
    sentences = [f"{name} has {value} {item}."]
    work = []
    for i in range(n_steps):
        left = n_steps - i - 1
        feasible = [op for op in config.ops if len(_choices(config, op, value, left)) > 0]
        op = rng.choice(feasible)  # non-empty: value was reachable with this many steps left
        k = rng.choice(_choices(config, op, value, left))
        phrase = rng.choice(PHRASES[op])
        sentences.append(phrase.format(p=pron, P=pron.capitalize(), k=k))
        new = _apply(op, value, k)
        work.append(f"{value}{op}{k}={new}.")
        value = new
    sentences.append(f"How many {item} does {name} have?")
    return {
        "question": " ".join(sentences),
        "answer": " ".join(work) + f" #### {value}",
        "final": value,
        "steps": n_steps,
    }


def template_text() -> str:
    """Every word and symbol the generator can write (a tokenizer built on it covers all)."""
    words = [n for n, _ in NAMES] + [p for _, p in NAMES] + [p.capitalize() for _, p in NAMES]
    phrases = [ph.replace("{p}", "").replace("{P}", "").replace("{k}", "")
               for group in PHRASES.values() for ph in group]
    return " ".join(words + list(ITEMS) + phrases + ["has . How many does have ?",
                                                      "+ - * / = #### 0 1 2 3 4 5 6 7 8 9"])


def problem_stream(seed: int, config: TaskConfig = TaskConfig(),
                   exclude: Optional[Set[str]] = None) -> Iterator[dict]:
    """Endless fresh problems; any whose question is in ``exclude`` is skipped.

    Pass ``exclude=heldout_questions()`` to train on the fly without ever seeing a
    validation or test question.
    """
    rng = random.Random(seed)
    exclude = set() if exclude is None else exclude  # kept by reference: callers may grow it
    while True:
        p = generate_problem(rng, config)
        if p["question"] not in exclude:
            yield p


def generate_split(split: str, n: int, seed: int = DEFAULT_SEED,
                   config: TaskConfig = TaskConfig(),
                   exclude: Optional[Set[str]] = None) -> List[dict]:
    """``n`` distinct problems for ``split``, none with a question in ``exclude``."""
    # A per-split integer seed: splits are independent streams, so changing one size never
    # changes another split.
    split_seed = seed * 1000 + sorted(SPLIT_SIZES).index(split)
    seen = set(exclude or ())
    rows = []
    for p in problem_stream(split_seed, config, exclude=seen):
        seen.add(p["question"])  # the stream re-checks membership, so this also dedups
        rows.append({"id": f"{split}-{len(rows):05d}", **p})
        if len(rows) == n:
            return rows
    raise AssertionError("unreachable")


def generate_splits(seed: int = DEFAULT_SEED, config: TaskConfig = TaskConfig(),
                    sizes: Optional[Dict[str, int]] = None) -> Dict[str, List[dict]]:
    """Test, then validation, then train: each excludes the questions of those before it."""
    sizes = sizes or SPLIT_SIZES
    out: Dict[str, List[dict]] = {}
    seen: Set[str] = set()
    for split in ("test", "validation", "train"):
        out[split] = generate_split(split, sizes[split], seed, config, exclude=seen)
        seen |= {r["question"] for r in out[split]}
    return out


# ----------------------------------------------------------------------------- files


def default_data_dir() -> Path:
    """``data/tiny_world`` of the source tree this package was imported from."""
    return Path(__file__).resolve().parent.parent / "data" / "tiny_world"


def dumps_jsonl(rows: Iterable[dict]) -> str:
    """The exact bytes we ship: one compact JSON object per line, keys in row order."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_splits(out_dir: Path, seed: int = DEFAULT_SEED, config: TaskConfig = TaskConfig(),
                 sizes: Optional[Dict[str, int]] = None) -> Dict[str, Path]:
    """Write ``{split}.jsonl`` and ``task_config.json`` (seed, knobs, sizes) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = generate_splits(seed, config, sizes)
    paths = {}
    for split, rows in splits.items():
        paths[split] = out_dir / f"{split}.jsonl"
        paths[split].write_text(dumps_jsonl(rows), encoding="utf-8")
    meta = {"seed": seed, "config": asdict(config),
            "sizes": {s: len(r) for s, r in splits.items()},
            "generator": "opdplus.tasks.generate_splits"}
    (out_dir / "task_config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return paths


def load_split(split: str, data_dir: Optional[Path] = None) -> List[dict]:
    """Rows of a shipped split (``train``, ``validation`` or ``test``), checked row by row."""
    from .evaluation import read_gsm8k_jsonl  # the GSM8K-format reader and its row checks

    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLIT_SIZES)}")
    path = Path(data_dir or default_data_dir()) / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; regenerate the tiny world with "
                                f"`python scripts/build_tiny_world.py`")
    return read_gsm8k_jsonl(path)


def heldout_questions(data_dir: Optional[Path] = None) -> Set[str]:
    """Questions of the validation and test splits: training must never see them."""
    return {r["question"] for s in ("validation", "test") for r in load_split(s, data_dir)}


def gsm_symbolic_rows(n: int, seed: int = 0) -> List[dict]:
    """``n`` GSM8K-format rows from reasoning_gym's ``gsm_symbolic`` (needs reasoning-gym).

    An offline stand-in for GSM8K when evaluating real pretrained models: the questions are
    GSM8K templates with new numbers, and ``answer`` is reasoning_gym's worked solution, which
    ends in ``#### n`` like GSM8K's.
    """
    try:
        import reasoning_gym
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("gsm_symbolic_rows needs reasoning-gym: pip install 'opdplus[test]'") \
            from e
    ds = reasoning_gym.create_dataset("gsm_symbolic", seed=seed, size=n)
    return [{"id": f"gsm_symbolic-{i:05d}", "question": e["question"],
             "answer": e["metadata"]["answer_cot"], "final": e["answer"]}
            for i, e in enumerate(ds)]
