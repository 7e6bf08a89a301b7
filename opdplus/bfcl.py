"""BFCL-style function-calling evaluation on the vendored subset in ``data/bfcl/``.

The records are BFCL v4 "simple_python" and "multiple" questions (Apache-2.0, see
``data/bfcl/README.md``): ``{"id", "question", "function", "ground_truth"}``, the question
and its possible answer joined by id. This module

- loads them (``load_bfcl``) and checks each row's shape, naming file and line;
- builds the prompt (``bfcl_prompt``): the functions go to the model through the tokenizer's
  chat template with ``tools=`` when the template renders them (``template_renders_tools``);
  a template that ignores ``tools`` (SmolLM2's does) gets them in a system message in the
  Hermes style instead, with the same ``<tools>``/``<tool_call>`` conventions;
- renders the ideal answer of a record (``ideal_output``), the oracle the grader must accept;
- generates greedily in batches and grades every answer (``evaluate_bfcl``): parse rate,
  validity rate and accuracy, each with a Wilson interval.

Simplified: one generated turn per question (no execution of the call, as in BFCL's AST
categories); prompts are sorted by length before batching so that padding stays small.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jinja2
import torch

from .evaluation import generate, wilson_interval
from .progress import bar
from .toolcalls import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    argument_type_ok,
    function_schema,
    grade_call,
    to_json_schema,
)

BFCL_DIR = Path(__file__).resolve().parents[1] / "data" / "bfcl"
CATEGORIES = ("simple_python", "multiple")
PROMPT_MODES = ("chat_template_tools", "system_message")

# Our wording of the Hermes-style function-calling system prompt (the format, not the
# text, is the convention: tools as JSON inside <tools>, calls as JSON inside <tool_call>).
SYSTEM_PROMPT = (
    "You can call functions to answer the user. The functions you may call are listed as "
    "JSON schemas between <tools> and </tools>:\n<tools>\n{tools}\n</tools>\n"
    "Answer with a function call: a JSON object with the function's name and its arguments, "
    "between <tool_call> and </tool_call>, like this:\n"
    '<tool_call>\n{{"name": "function_name", "arguments": {{"argument": "value"}}}}\n'
    "</tool_call>\nUse only the functions and arguments listed, and take the argument values "
    "from the user's request."
)


# ----------------------------------------------------------------------------- data


def category_of(record_id: str) -> str:
    """``simple_python_12`` -> ``simple_python``."""
    return record_id.rsplit("_", 1)[0]


def load_bfcl(
    categories: Sequence[str] = CATEGORIES,
    limit: Optional[int] = None,
    data_dir: Union[str, Path, None] = None,
) -> List[dict]:
    """The vendored records of ``categories`` (the first ``limit`` of each, if given)."""
    root = Path(data_dir) if data_dir is not None else BFCL_DIR
    records: List[dict] = []
    for category in categories:
        path = root / f"{category}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such file; known categories {CATEGORIES}. Regenerate data/bfcl/ "
                "with: python scripts/vendor_bfcl.py"
            )
        rows = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    rows.append(_checked_record(line, f"{path}:{lineno}"))
        records += rows[:limit] if limit is not None else rows
    return records


def _checked_record(line: str, where: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not valid JSON ({exc.msg})") from None
    ok = (
        isinstance(row, dict)
        and isinstance(row.get("id"), str)
        and isinstance(row.get("question"), list)
        and row["question"]
        and isinstance(row["question"][0], list)
        and isinstance(row.get("function"), list)
        and isinstance(row.get("ground_truth"), list)
    )
    if not ok:
        raise ValueError(
            f"{where}: expected a BFCL record {{'id': str, 'question': [[messages]], "
            "'function': [schemas], 'ground_truth': [{name: {arg: [allowed]}}]}"
        )
    return row


# ----------------------------------------------------------------------------- prompts


def tool_schemas(functions: Sequence[dict]) -> List[dict]:
    """BFCL function records as OpenAI-format tool schemas with JSON Schema parameters."""
    out = []
    for f in functions:
        inner = dict(function_schema(f))
        if "parameters" in inner:
            inner["parameters"] = to_json_schema(inner["parameters"])
        out.append({"type": "function", "function": inner})
    return out


def template_renders_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template shows ``tools=`` to the model at all."""
    probe = "opdplus_probe_tool_7f3a"
    tool = {
        "type": "function",
        "function": {
            "name": probe,
            "description": "probe",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    messages = [{"role": "user", "content": "hi"}]
    try:
        text = tokenizer.apply_chat_template(messages, tools=[tool], tokenize=False)
    except jinja2.TemplateError:  # a template that refuses tools does not render them
        return False
    return probe in text


def bfcl_prompt(tokenizer, record: dict, mode: Optional[str] = None) -> str:
    """The generation prompt for one record (``mode`` from ``PROMPT_MODES``; default: the
    template's own tool rendering when it has one, else the system message)."""
    if mode is None:
        mode = PROMPT_MODES[0] if template_renders_tools(tokenizer) else PROMPT_MODES[1]
    if mode not in PROMPT_MODES:
        raise ValueError(f"mode must be one of {PROMPT_MODES}, got {mode!r}")
    messages = list(record["question"][0])
    tools = tool_schemas(record["function"])
    if mode == "chat_template_tools":
        return tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True
        )
    listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    system = {"role": "system", "content": SYSTEM_PROMPT.format(tools=listing)}
    rest = [m for m in messages if m.get("role") != "system"]
    own = "\n".join(m["content"] for m in messages if m.get("role") == "system")
    if own:  # keep a question's own system text after the tool instructions
        system["content"] += "\n\n" + own
    return tokenizer.apply_chat_template(
        [system] + rest, tokenize=False, add_generation_prompt=True
    )


# ----------------------------------------------------------------------------- oracle


def _render_value(value: Any, include_optional: bool) -> Any:
    """A concrete value from a possible-answer value (a dict's values are allowed lists)."""
    if isinstance(value, dict):
        return _render_args(value, {}, (), include_optional)
    if isinstance(value, list):
        return [_render_value(v, include_optional) for v in value]
    return value


def _render_args(allowed_by_arg: dict, props: dict, required: Sequence[str], include_optional):
    args = {}
    for arg, allowed in allowed_by_arg.items():
        optional = "" in allowed and arg not in required
        if optional and not include_optional:
            continue
        candidates = [a for a in allowed if not (isinstance(a, str) and a == "")]
        if arg in props:  # skip an allowed value of the wrong declared type (data quirks)
            candidates = [
                a for a in candidates if argument_type_ok(_render_value(a, True), props[arg])
            ]
        if candidates:
            args[arg] = _render_value(candidates[0], include_optional)
    return args


def ideal_output(record: dict, include_optional: bool = False) -> str:
    """The model output that answers ``record`` as its first possible answer says.

    Required arguments take their first allowed value; optional ones (``""`` allowed) are
    left out, or with ``include_optional`` given their first allowed value of the declared
    type. Each expected call is one ``<tool_call>`` block.
    """
    schemas = {function_schema(f)["name"]: function_schema(f) for f in record["function"]}
    blocks = []
    for answer in record["ground_truth"]:
        ((name, allowed_by_arg),) = answer.items()
        params = schemas[name].get("parameters") or {}
        args = _render_args(
            allowed_by_arg,
            params.get("properties") or {},
            params.get("required") or [],
            include_optional,
        )
        call = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
        blocks.append(f"{TOOL_CALL_OPEN}\n{call}\n{TOOL_CALL_CLOSE}")
    return "\n".join(blocks)


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class BfclResult:
    """Parse rate, validity rate and accuracy of a model on BFCL records (Wilson, 95%)."""

    n: int
    parsed: int
    valid: int
    correct: int
    parse_rate: float
    parse_ci: Tuple[float, float]
    validity_rate: float
    validity_ci: Tuple[float, float]
    accuracy: float
    accuracy_ci: Tuple[float, float]
    by_category: Dict[str, Dict[str, int]]
    """Per category: n, parsed, valid, correct."""
    prompt_mode: str
    """How the functions reached the model: one of ``PROMPT_MODES``."""
    max_new_tokens: int
    records: List[dict] = field(default_factory=list, compare=False)
    """Per record: id, output, parsed, valid, correct, reason."""

    def summary(self) -> dict:
        """Everything but the per-record outputs (for results files)."""
        d = asdict(self)
        d.pop("records")
        return d


def grade_record(record: dict, output: str) -> dict:
    """One graded answer: id, output, parsed, valid, correct, reason."""
    g = grade_call(output, record["function"], record["ground_truth"])
    return {
        "id": record["id"],
        "output": output,
        "parsed": g.parsed,
        "valid": g.valid,
        "correct": g.correct,
        "reason": g.reason,
    }


def result_from_rows(rows: Sequence[dict], *, prompt_mode: str, max_new_tokens: int) -> BfclResult:
    """Counts, rates and Wilson intervals (95%) over graded rows (``grade_record``)."""
    n = len(rows)
    counts = [sum(bool(r[k]) for r in rows) for k in ("parsed", "valid", "correct")]
    by_cat: Dict[str, Dict[str, int]] = {}
    for r in rows:
        c = by_cat.setdefault(category_of(r["id"]), {"n": 0, "parsed": 0, "valid": 0, "correct": 0})
        c["n"] += 1
        for k in ("parsed", "valid", "correct"):
            c[k] += bool(r[k])
    rates = [(k / n if n else 0.0, wilson_interval(k, n)) for k in counts]
    return BfclResult(
        n,
        *counts,
        *rates[0],
        *rates[1],
        *rates[2],
        by_category=by_cat,
        prompt_mode=prompt_mode,
        max_new_tokens=max_new_tokens,
        records=list(rows),
    )


def _eos_ids(model, tokenizer) -> List[int]:
    ids = {tokenizer.eos_token_id}
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([gen] if isinstance(gen, int) else list(gen or []))
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    device: Union[str, torch.device, None] = None,
    progress: Optional[bool] = None,
) -> List[str]:
    """Greedy continuations of ``prompts``, decoded with special tokens kept (the call
    markers may be special tokens) and cut at the first end-of-turn token."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(
            f"need max_new_tokens >= 1 and batch_size >= 1, got {max_new_tokens}, {batch_size}"
        )
    device = device if device is not None else next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together
    texts: List[str] = [""] * len(ids)
    was_training = model.training
    model.eval()
    try:
        for s in bar(
            range(0, len(order), batch_size), desc="BFCL", unit="batch", progress=progress
        ):
            rows = order[s : s + batch_size]
            width = max(len(ids[i]) for i in rows)
            input_BT = torch.full((len(rows), width), pad, dtype=torch.long)
            attn_BT = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # left padding
                input_BT[r, width - len(ids[i]) :] = torch.tensor(ids[i])
                attn_BT[r, width - len(ids[i]) :] = 1
            new_BT = generate(
                model,
                input_BT.to(device),
                attn_BT.to(device),
                max_new_tokens,
                eos,
                pad,
                greedy=True,
                vocab_size=len(tokenizer),
            )
            for r, i in enumerate(rows):
                toks = new_BT[r].tolist()
                cut = next((k for k, t in enumerate(toks) if t in eos), len(toks))
                texts[i] = tokenizer.decode(toks[:cut], skip_special_tokens=False)
    finally:
        model.train(was_training)
    return texts


def evaluate_bfcl(
    model,
    tokenizer,
    records: Sequence[dict],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    mode: Optional[str] = None,
    device: Union[str, torch.device, None] = None,
    progress: Optional[bool] = None,
) -> BfclResult:
    """Generate one answer per record (greedy, at most ``max_new_tokens``) and grade it."""
    if not records:
        raise ValueError("evaluate_bfcl needs at least one record (see load_bfcl)")
    if mode is None:
        mode = PROMPT_MODES[0] if template_renders_tools(tokenizer) else PROMPT_MODES[1]
    prompts = [bfcl_prompt(tokenizer, r, mode) for r in records]
    outputs = generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    rows = [grade_record(rec, out) for rec, out in zip(records, outputs)]
    return result_from_rows(rows, prompt_mode=mode, max_new_tokens=max_new_tokens)
