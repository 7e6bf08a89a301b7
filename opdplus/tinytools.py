"""The tiny tool world: five tools, tasks that need them, a ChatML tokenizer, seeded splits.

The tool-use half of the paper's evidence, in miniature (the tool-use counterpart of
``opdplus.tasks`` + ``opdplus.tinyworld``); models and training are in
``opdplus.tinytools_train``.

- **Tools** are plain Python functions with type hints and Google-style docstrings
  (``TOOLS``); their JSON schemas come from ``transformers.utils.get_json_schema``
  (``tool_schemas``). Arguments naming a unit, an item or a city carry an ``enum``, so a
  misspelt or made-up value is an invalid call, caught by ``jsonschema``.
- **Tasks** (``generate_task``) can only be solved with the tools: products and sums of
  numbers too long for a tiny model to compute in its head (``multiply``, ``add``), a
  distance from a table (``get_distance``), a unit conversion with odd factors
  (``convert_units``), and a price from a table times a quantity (``get_price`` then
  ``multiply``: two calls in sequence, the second using the first's result). Each task comes
  with its worked transcript as chat ``messages`` (user question, assistant tool calls,
  tool results, the final ``Answer: n``).
- **Tokenizer** (``build_tokenizer``): word level with single digits, a piece being a word,
  a digit or a run of punctuation, each with its leading space, plus ``\\n``. Whitespace is
  inside the pieces, so decoding is plain concatenation and a call's JSON decodes exactly.
  Its chat template follows the Hermes / Qwen2.5 ChatML convention: the tools in the system
  turn inside ``<tools>...</tools>``, calls as ``<tool_call>\\n{json}\\n</tool_call>``, tool
  results as ``<tool_response>`` inside a user turn, ``<|im_end|>`` ending every turn (EOS).
  Simplified: the system turn lists the tools as one JSON object, name -> argument names
  (~45 tokens; the full schemas with descriptions would be ~400 tokens, longer than every
  task, and a 1M-parameter model cannot read their prose). Validation uses the full schemas.
- **Grading** (``grade_transcript``): the final answer, and separately every call's
  validity (parses, names a known tool, arguments valid against the schema).

Splits are written as JSONL with a ``messages`` column (``datasets.load_dataset("json")``
reads them), byte for byte the same on every rebuild.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.utils import get_json_schema

from . import toolcalls
from .tasks import dumps_jsonl

DEFAULT_SEED = 2027
SPLIT_SIZES = {"test": 300, "validation": 200, "train": 2000}
REGENERATE = "regenerate it with `python scripts/build_tiny_tools.py`"

# ----------------------------------------------------------------------------- the tools

PRICES = {"apple": 3, "book": 14, "chair": 47, "clock": 23, "lamp": 38, "mug": 9,
          "pen": 2, "shirt": 19}
"""Price of one item, in dollars."""
CITIES = ("Berlin", "Lisbon", "Madrid", "Oslo", "Paris", "Prague", "Rome", "Vienna")
_CITY_XY = {"Berlin": (1090, 1230), "Lisbon": (-720, 70), "Madrid": (-300, 140),
            "Oslo": (870, 2100), "Paris": (250, 860), "Prague": (1160, 920),
            "Rome": (1100, 120), "Vienna": (1520, 770)}
FACTORS = {("mile", "foot"): 5280, ("mile", "yard"): 1760, ("yard", "inch"): 36,
           ("foot", "inch"): 12, ("day", "minute"): 1440, ("hour", "second"): 3600,
           ("day", "second"): 86400, ("pound", "ounce"): 16, ("week", "hour"): 168}
UNITS = ("day", "foot", "hour", "inch", "mile", "minute", "ounce", "pound", "second", "week",
         "yard")
PLURALS = {"foot": "feet", "inch": "inches"}


def _plural(word: str) -> str:
    return PLURALS.get(word, word + "s")


def distance_km(a: str, b: str) -> int:
    """The table behind ``get_distance``: a fixed map, rounded to whole kilometres."""
    (xa, ya), (xb, yb) = _CITY_XY[a], _CITY_XY[b]
    return round(((xa - xb) ** 2 + (ya - yb) ** 2) ** 0.5)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def get_price(item: str) -> int:
    """Look up the price of one item, in dollars.

    Args:
        item: The item, singular. (choices: ["apple", "book", "chair", "clock", "lamp", "mug", "pen", "shirt"])
    """
    if item not in PRICES:
        raise ValueError(f"no price for {item!r}")
    return PRICES[item]


def get_distance(origin: str, destination: str) -> int:
    """The road distance between two cities, in kilometres.

    Args:
        origin: The city to start from. (choices: ["Berlin", "Lisbon", "Madrid", "Oslo", "Paris", "Prague", "Rome", "Vienna"])
        destination: The city to go to. (choices: ["Berlin", "Lisbon", "Madrid", "Oslo", "Paris", "Prague", "Rome", "Vienna"])
    """
    if origin == destination:
        raise ValueError("origin and destination are the same city")
    return distance_km(origin, destination)


def convert_units(value: int, from_unit: str, to_unit: str) -> int:
    """Convert a whole number of one unit into a smaller unit.

    Args:
        value: How many of from_unit.
        from_unit: The unit to convert from, singular. (choices: ["day", "foot", "hour", "inch", "mile", "minute", "ounce", "pound", "second", "week", "yard"])
        to_unit: The unit to convert to, singular. (choices: ["day", "foot", "hour", "inch", "mile", "minute", "ounce", "pound", "second", "week", "yard"])
    """
    if (from_unit, to_unit) not in FACTORS:
        raise ValueError(f"cannot convert {from_unit} to {to_unit}")
    return value * FACTORS[(from_unit, to_unit)]


TOOLS = (add, multiply, get_price, get_distance, convert_units)
"""The world's tools, in the order the system turn lists them."""


@lru_cache(maxsize=1)
def _schemas_json() -> str:
    return json.dumps([get_json_schema(fn) for fn in TOOLS])


def tool_schemas() -> List[dict]:
    """The OpenAI-format JSON schema of every tool (fresh copies: safe to mutate)."""
    return json.loads(_schemas_json())


def run_tool(name: str, arguments: dict) -> int:
    """Run a tool by name (trusted callers only: the generator and tests)."""
    return {fn.__name__: fn for fn in TOOLS}[name](**arguments)


# ----------------------------------------------------------------------------- tasks

KINDS = ("multiply", "add", "distance", "convert", "price")
KIND_WEIGHTS = (0.25, 0.15, 0.15, 0.2, 0.25)

_PHRASES = {
    "multiply": ("What is {a} times {b}?", "Multiply {a} by {b}.", "Compute {a} * {b}."),
    "add": ("What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."),
    "distance": ("How far is it from {o} to {d}?", "What is the distance from {o} to {d}?"),
    "convert": ("How many {t} are in {v} {f}?", "Convert {v} {f} to {t}."),
    "price": ("How much do {n} {i} cost?", "What is the price of {n} {i}?"),
}


@dataclass(frozen=True)
class TaskConfig:
    """Difficulty knobs of the generator."""

    mul_a: tuple = (100, 999)
    """Range of the first factor (the second is a 2-digit number)."""
    add_range: tuple = (100, 9999)
    """Range of both summands."""
    max_quantity: int = 49
    """Largest quantity in a price task and value in a conversion."""

    def __post_init__(self):
        if not 1 <= self.mul_a[0] <= self.mul_a[1] or not 1 <= self.add_range[0] <= \
                self.add_range[1]:
            raise ValueError("ranges must be (low, high) with 1 <= low <= high")
        if self.max_quantity < 2:
            raise ValueError("max_quantity must be >= 2")


def _call(name: str, **arguments) -> dict:
    return {"name": name, "arguments": arguments}


def generate_task(rng: random.Random, config: TaskConfig = TaskConfig()) -> dict:
    """One task: ``{"kind", "question", "calls", "answer"}`` (calls in order, answer an int)."""
    kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
    if kind == "multiply":
        a, b = rng.randint(*config.mul_a), rng.randint(11, 99)
        q, calls = rng.choice(_PHRASES[kind]).format(a=a, b=b), [_call("multiply", a=a, b=b)]
    elif kind == "add":
        a, b = rng.randint(*config.add_range), rng.randint(*config.add_range)
        q, calls = rng.choice(_PHRASES[kind]).format(a=a, b=b), [_call("add", a=a, b=b)]
    elif kind == "distance":
        o, d = rng.sample(CITIES, 2)
        q = rng.choice(_PHRASES[kind]).format(o=o, d=d)
        calls = [_call("get_distance", origin=o, destination=d)]
    elif kind == "convert":
        f, t = rng.choice(sorted(FACTORS))
        v = rng.randint(2, config.max_quantity)
        q = rng.choice(_PHRASES[kind]).format(v=v, f=_plural(f), t=_plural(t))
        calls = [_call("convert_units", value=v, from_unit=f, to_unit=t)]
    else:  # price: look up, then multiply by the quantity (the second call uses the result)
        item, n = rng.choice(sorted(PRICES)), rng.randint(2, config.max_quantity)
        q = rng.choice(_PHRASES[kind]).format(n=n, i=_plural(item))
        calls = [_call("get_price", item=item), _call("multiply", a=PRICES[item], b=n)]
    result = None
    for c in calls:
        result = run_tool(c["name"], c["arguments"])
    return {"kind": kind, "question": q, "calls": calls, "answer": result}


def final_text(answer: int) -> str:
    """The assistant's last turn."""
    return f"Answer: {answer}"


def transcript(task: dict) -> List[dict]:
    """The worked chat ``messages``: user, then (assistant call, tool result) per call, then
    the final answer. Arguments are JSON strings, as in the OpenAI format."""
    msgs = [{"role": "user", "content": task["question"]}]
    for c in task["calls"]:
        msgs.append({"role": "assistant", "content": "", "tool_calls": [{
            "type": "function",
            "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}]})
        msgs.append({"role": "tool", "name": c["name"],
                     "content": str(run_tool(c["name"], c["arguments"]))})
    msgs.append({"role": "assistant", "content": final_text(task["answer"])})
    return msgs


def task_stream(seed: int, config: TaskConfig = TaskConfig(),
                exclude: Optional[Set[str]] = None) -> Iterator[dict]:
    """Endless fresh tasks; any whose question is in ``exclude`` is skipped."""
    rng = random.Random(seed)
    exclude = set() if exclude is None else exclude
    while True:
        t = generate_task(rng, config)
        if t["question"] not in exclude:
            yield t


def generate_splits(seed: int = DEFAULT_SEED, config: TaskConfig = TaskConfig(),
                    sizes: Optional[Dict[str, int]] = None) -> Dict[str, List[dict]]:
    """Test, then validation, then train; no question appears twice across or within splits."""
    sizes = sizes or SPLIT_SIZES
    out: Dict[str, List[dict]] = {}
    seen: Set[str] = set()
    for k, split in enumerate(("test", "validation", "train")):
        rows = []
        for t in task_stream(seed * 1000 + k, config, exclude=seen):
            seen.add(t["question"])
            rows.append({"id": f"{split}-{len(rows):05d}", "kind": t["kind"],
                         "question": t["question"], "answer": t["answer"],
                         "messages": transcript(t)})
            if len(rows) == sizes[split]:
                break
        out[split] = rows
    return out


def default_data_dir() -> Path:
    """``data/tiny_tools`` of the source tree this package was imported from."""
    return Path(__file__).resolve().parent.parent / "data" / "tiny_tools"


def write_splits(out_dir, seed: int = DEFAULT_SEED, config: TaskConfig = TaskConfig(),
                 sizes: Optional[Dict[str, int]] = None) -> Dict[str, Path]:
    """Write ``{split}.jsonl``, ``tools.json`` (the schemas) and ``task_config.json``."""
    from dataclasses import asdict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = generate_splits(seed, config, sizes)
    paths = {}
    for split, rows in splits.items():
        paths[split] = out_dir / f"{split}.jsonl"
        paths[split].write_text(dumps_jsonl(rows), encoding="utf-8")
    (out_dir / "tools.json").write_text(json.dumps(tool_schemas(), indent=1) + "\n")
    meta = {"seed": seed, "config": asdict(config), "sizes": {s: len(r) for s, r in
                                                             splits.items()},
            "kinds": dict(zip(KINDS, KIND_WEIGHTS)),
            "generator": "opdplus.tinytools.generate_splits"}
    (out_dir / "task_config.json").write_text(json.dumps(meta, indent=2) + "\n")
    return paths


def load_split(split: str, data_dir=None) -> List[dict]:
    """Rows of a shipped split (``train``, ``validation`` or ``test``)."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(SPLIT_SIZES)}")
    path = Path(data_dir or default_data_dir()) / f"{split}.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; {REGENERATE}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        if not isinstance(row.get("messages"), list) or not isinstance(row.get("answer"), int):
            raise ValueError(f"{path}:{n}: expected 'messages' (a list) and 'answer' (an int)")
        rows.append(row)
    return rows


def heldout_questions(data_dir=None) -> Set[str]:
    """Questions of the validation and test splits: training must never see them."""
    return {r["question"] for s in ("validation", "test") for r in load_split(s, data_dir)}


# ----------------------------------------------------------------------------- tokenizer

PAD, UNK, IM_START, IM_END = "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"
MARKERS = ("<tools>", "</tools>", toolcalls.TOOL_CALL_OPEN, toolcalls.TOOL_CALL_CLOSE,
           "<tool_response>", "</tool_response>")
"""Added tokens that are not special: they survive ``skip_special_tokens=True``."""
# A piece: a word, a digit or a punctuation run, with its leading space; or one newline or
# other whitespace character. Every character belongs to exactly one piece, so decoding is
# concatenation and reproduces the text exactly.
PIECE = r" ?[A-Za-z_]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s"

# Hermes / Qwen2.5-style ChatML. The tools: one JSON object {name: [argument names]}.
CHAT_TEMPLATE = (
    "{% set nl = '\\n' %}"
    "{% if tools %}<|im_start|>system{{ nl }}<tools>{{ '{' }}"
    "{% for t in tools %}{% set f = t.function if t.function is defined else t %}"
    "\"{{ f.name }}\": [{% for k in f.parameters.properties %}\"{{ k }}\""
    "{% if not loop.last %}, {% endif %}{% endfor %}]{% if not loop.last %}, {% endif %}"
    "{% endfor %}}</tools><|im_end|>{{ nl }}{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'user' or m.role == 'system' %}"
    "<|im_start|>{{ m.role }}{{ nl }}{{ m.content }}<|im_end|>{{ nl }}"
    "{% elif m.role == 'assistant' %}<|im_start|>assistant{{ nl }}{{ m.content or '' }}"
    "{% for tc in m.tool_calls or [] %}{% set c = tc.function if tc.function is defined "
    "else tc %}{% if not loop.first %}{{ nl }}{% endif %}<tool_call>{{ nl }}"
    "{\"name\": \"{{ c.name }}\", \"arguments\": {% if c.arguments is string %}"
    "{{ c.arguments }}{% else %}{{ c.arguments | tojson }}{% endif %}}{{ nl }}</tool_call>"
    "{% endfor %}<|im_end|>{{ nl }}"
    "{% elif m.role == 'tool' %}<|im_start|>user{{ nl }}<tool_response>{{ nl }}{{ m.content }}"
    "{{ nl }}</tool_response><|im_end|>{{ nl }}"
    "{% else %}{{ raise_exception('unknown role ' + m.role) }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{{ nl }}{% endif %}"
)


def pieces(text: str) -> List[str]:
    """The pre-tokenizer's pieces of ``text``, with the special and marker tokens split out
    first (as the tokenizer does) and left out."""
    added = "|".join(re.escape(t) for t in (PAD, UNK, IM_START, IM_END) + MARKERS)
    return [p for part in re.split(added, text) for p in re.findall(PIECE, part)]


def _vocab_texts() -> List[str]:
    """Every piece the world can write: templates, tools, names, and all digits."""
    texts = [p.format(a="1", b="1", o=c, d=c, v="1", f=_plural(u), t=_plural(u), n="1",
                      i=_plural(i))
             for ps in _PHRASES.values() for p in ps for c in CITIES for u in UNITS
             for i in PRICES]
    texts += [json.dumps({"name": fn.__name__, "arguments": {}}) for fn in TOOLS]
    texts += ['"' + w + '"' for w in list(CITIES) + list(UNITS) + list(PRICES)]
    texts += [" " + str(d) for d in range(10)] + [str(d) for d in range(10)]
    texts += [final_text(1), "system\nuser\nassistant\n"]
    return texts


def _make_tokenizer(ordered: Sequence[str]) -> PreTrainedTokenizerFast:
    specials = [PAD, UNK, IM_START, IM_END]
    tok = Tokenizer(models.WordLevel({p: i for i, p in enumerate(ordered)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECE), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in MARKERS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[IM_START], chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False, model_max_length=256)


def build_tokenizer(extra_texts: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """The tool world's tokenizer: every piece the world can write (and those of
    ``extra_texts``), ids in a fixed order (specials, markers, then the pieces sorted)."""
    specials = [PAD, UNK, IM_START, IM_END]
    draft = _make_tokenizer(specials + list(MARKERS))  # renders the template; no vocabulary
    rng = random.Random(0)
    samples = []
    while {t["kind"] for t in samples} != set(KINDS):
        samples.append(generate_task(rng))
    rendered = [render(draft, transcript(t)) for t in samples]
    found = {p for t in _vocab_texts() + rendered + list(extra_texts) for p in pieces(t)}
    return _make_tokenizer(specials + list(MARKERS) + sorted(found - set(specials) - set(MARKERS)))


def load_tokenizer(path=None) -> PreTrainedTokenizerFast:
    """The shipped tokenizer (``data/tiny_tools/tokenizer``, or a model folder beside it)."""
    from transformers import AutoTokenizer

    path = Path(path) if path is not None else default_data_dir() / "tokenizer"
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"the tiny-tools tokenizer not found at {path}; {REGENERATE}")
    return AutoTokenizer.from_pretrained(str(path))


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """The chat template applied to ``messages`` with the world's tools."""
    return tokenizer.apply_chat_template(list(messages), tools=tool_schemas(), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def prompt_text(tokenizer, question: str) -> str:
    """System turn with the tools, the user question, and the assistant generation prompt."""
    return render(tokenizer, [{"role": "user", "content": question}], add_generation_prompt=True)


# ----------------------------------------------------------------------------- grading

_ANSWER_RE = re.compile(r"Answer: (-?[0-9]+)")


def final_answer(text: str) -> Optional[int]:
    """The integer after the last ``Answer:`` in ``text``; None when there is none."""
    found = _ANSWER_RE.findall(text or "")
    return int(found[-1]) if found else None


def grade_transcript(assistant_turns: Sequence[str], answer: int) -> dict:
    """Grade a rollout from its assistant turns (raw text, markers kept).

    Returns ``correct`` (the last turn's ``Answer:`` equals ``answer``), ``calls``,
    ``parsed`` (calls that parse), ``valid`` (parse, known tool, arguments valid against the
    schema) and ``errors`` (kind -> count).
    """
    schemas = tool_schemas()
    calls = [c for t in assistant_turns for c in toolcalls.parse_tool_calls(t)]
    errors: Dict[str, int] = {}
    valid = 0
    for c in calls:
        kind, _ = toolcalls.validate_call(c, schemas)
        if kind is None:
            valid += 1
        else:
            errors[kind] = errors.get(kind, 0) + 1
    last = assistant_turns[-1] if assistant_turns else ""
    return {"correct": final_answer(last) == answer and not toolcalls.parse_tool_calls(last),
            "calls": len(calls), "parsed": sum(c.ok for c in calls), "valid": valid,
            "errors": errors}
