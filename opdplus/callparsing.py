"""Reading tool calls out of model text: marked blocks, bare JSON, BFCL's Python-call syntax.

- ``parse_tool_calls``: every ``<tool_call>...</tool_call>`` block (the Hermes / Qwen2.5
  ChatML convention), each a JSON object ``{"name": ..., "arguments": {...}}``. It never
  raises on model text: a block that is not a call becomes a ``ParsedCall`` whose ``error``
  starts with ``"malformed: "``, and an unclosed block is malformed rather than dropped.
- ``extract_calls``: what a function-calling benchmark accepts as an answer: marked blocks,
  else the whole answer as a JSON call or list of calls, else BFCL's ``f(a=1)`` syntax.

Model text is only ever read with ``json.loads``, or with ``ast.parse`` plus
``ast.literal_eval`` of each argument for the Python syntax; nothing runs ``eval``/``exec``.
The public face of this module is ``opdplus.toolcalls``, which re-exports it.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any, List, Optional

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# The kinds of error a tool call can cause, in the order a rollout meets them. The first
# three are decided by ``opdplus.toolcalls.validate_call``; "tool_exception" comes from running
# a tool.
ERROR_KINDS = ("malformed", "unknown_tool", "bad_arguments", "tool_exception")


@dataclass(frozen=True)
class ParsedCall:
    """One tool call read from model output."""

    raw: str
    """The text between the markers (or the whole candidate when there are no markers)."""
    name: Optional[str]
    """The function's name; None when the call did not parse."""
    arguments: Optional[dict]
    """The arguments as a dict; None when the call did not parse."""
    error: Optional[str] = None
    """None when the call parsed; else a message starting with ``"malformed: "``."""

    @property
    def ok(self) -> bool:
        """True when the call parsed to a name and a dict of arguments."""
        return self.error is None


def _malformed(raw: str, why: str) -> ParsedCall:
    return ParsedCall(raw=raw, name=None, arguments=None, error=f"malformed: {why}")


def call_from_object(obj: Any, raw: str) -> ParsedCall:
    """A ``ParsedCall`` from an already-decoded JSON value ``{"name", "arguments"}``.

    ``"parameters"`` is accepted in place of ``"arguments"`` (some templates use it); arguments
    given as a JSON-encoded string are decoded; absent arguments mean a call with none.
    """
    if not isinstance(obj, dict):
        return _malformed(raw, f"a call must be a JSON object, got {type(obj).__name__}")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return _malformed(raw, 'missing "name" (a non-empty string naming the function)')
    key = "arguments" if "arguments" in obj else "parameters" if "parameters" in obj else None
    args = {} if key is None else obj[key]
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            return _malformed(raw, f'"{key}" is a string that is not valid JSON ({exc.msg})')
    if not isinstance(args, dict):
        return _malformed(raw, f'"{key}" must be a JSON object, got {type(args).__name__}')
    return ParsedCall(raw=raw, name=name, arguments=args)


def parse_call_json(raw: str) -> ParsedCall:
    """Parse the text of one call block (the JSON between the markers)."""
    text = raw.strip()
    if not text:
        return _malformed(raw, "empty call block")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return _malformed(raw, f"invalid JSON ({exc.msg} at position {exc.pos})")
    except RecursionError:
        return _malformed(raw, "JSON nested too deeply")
    return call_from_object(obj, raw)


def parse_tool_calls(text: str) -> List[ParsedCall]:
    """Every ``<tool_call>...</tool_call>`` block of ``text``, in order.

    A block opened and never closed (the turn ended or another block opened first) is a
    malformed call, so a truncated call is counted rather than silently dropped. Text outside
    the blocks, and a stray closing marker, are ignored. No blocks gives an empty list.
    """
    calls: List[ParsedCall] = []
    pos = 0
    while True:
        start = text.find(TOOL_CALL_OPEN, pos)
        if start < 0:
            return calls
        body = start + len(TOOL_CALL_OPEN)
        end = text.find(TOOL_CALL_CLOSE, body)
        reopen = text.find(TOOL_CALL_OPEN, body)
        if end < 0 or 0 <= reopen < end:
            stop = len(text) if reopen < 0 else reopen
            where = "another <tool_call> opened first" if reopen >= 0 else "the text ended"
            calls.append(_malformed(text[body:stop], f"unclosed {TOOL_CALL_OPEN} block ({where})"))
            if reopen < 0:
                return calls
            pos = reopen
            continue
        calls.append(parse_call_json(text[body:end]))
        pos = end + len(TOOL_CALL_CLOSE)


# ----------------------------------------------------------------------------- extraction


def _dotted_name(node: ast.AST) -> Optional[str]:
    """``math.factorial`` from the AST of a callee; None for anything but names and dots."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted_name(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def parse_python_calls(text: str) -> Optional[List[ParsedCall]]:
    """BFCL's Python-call syntax, ``f(a=1)`` or ``[f(a=1), g.h(b="x")]``; None if it is not that.

    The text is read with ``ast.parse`` and each keyword value with ``ast.literal_eval``, so
    only literals are accepted (a value that is an expression or a variable makes the call
    malformed) and nothing is ever executed. Positional arguments are malformed too: BFCL's
    calls name every argument.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    body = tree.body
    nodes = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    if not nodes or not all(isinstance(n, ast.Call) for n in nodes):
        return None
    calls = []
    for node in nodes:
        raw = ast.get_source_segment(text.strip(), node) or ""
        name = _dotted_name(node.func)
        if name is None:
            calls.append(_malformed(raw, "the callee is not a (dotted) function name"))
        elif node.args or any(k.arg is None for k in node.keywords):
            calls.append(_malformed(raw, "arguments must be given by keyword (name=value)"))
        else:
            try:
                args = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                calls.append(_malformed(raw, "an argument value is not a literal"))
                continue
            # Python tuples become lists, as they would through JSON.
            calls.append(ParsedCall(raw=raw, name=name, arguments=_tuples_to_lists(args)))
    return calls


def _tuples_to_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_tuples_to_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _tuples_to_lists(v) for k, v in value.items()}
    return value


def _strip_fence(text: str) -> str:
    """The body of a Markdown code fence (```json ... ```) around the whole text, if any."""
    t = text.strip()
    if t.startswith("```") and t.endswith("```") and len(t) >= 6:
        body = t[3:-3]
        first, _, rest = body.partition("\n")
        return (rest if first.strip().isalpha() or not first.strip() else body).strip()
    return t


def extract_calls(output: str) -> List[ParsedCall]:
    """The calls in a model's answer to a function-calling question, in any accepted syntax.

    In order of preference: ``<tool_call>`` blocks (``parse_tool_calls``); else the whole
    answer (optionally inside one Markdown code fence) as a JSON call object or a JSON list of
    them; else the whole answer as BFCL's Python-call syntax (``parse_python_calls``). Prose
    around a bare call is not searched: an answer that is not a call is no call. An empty
    list means no call was found at all.
    """
    if TOOL_CALL_OPEN in output:
        return parse_tool_calls(output)
    text = _strip_fence(output)
    if not text:
        return []
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        return [call_from_object(obj, text)]
    if isinstance(obj, list) and obj and all(isinstance(o, dict) for o in obj):
        return [call_from_object(o, json.dumps(o)) for o in obj]
    return parse_python_calls(text) or []
