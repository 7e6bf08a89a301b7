"""Tool calls in model output: parse them, check them against a schema, grade them BFCL-style.

Formats follow the Hermes / Qwen2.5 ChatML convention: a call is a JSON object
``{"name": ..., "arguments": {...}}`` between ``<tool_call>`` and ``</tool_call>``, and an
assistant turn may hold several such blocks. Schemas are JSON Schema in the OpenAI function
format (``{"type": "function", "function": {"name", "description", "parameters"}}``), or a
bare BFCL record (``{"name", "description", "parameters"}``) whose types are Python-flavoured
(``dict``, ``float``, ``tuple``, ``any``); ``to_json_schema`` maps those to JSON Schema.

- ``parse_tool_calls`` reads every marked block; it never raises on model text: a block that
  is not a call becomes a ``ParsedCall`` whose ``error`` starts with ``"malformed: "``.
  (Parsing lives in ``opdplus.callparsing``; it is re-exported here.)
- ``validate_call`` says whether a parsed call names a known tool and whether its arguments
  satisfy that tool's schema (``jsonschema``), returning an error kind from ``ERROR_KINDS``.
- ``grade_call`` adds the BFCL question: does the call equal one of the possible answers?
  It reads an answer in any syntax a function-calling benchmark meets (``extract_calls``:
  marked blocks, a bare JSON call or list of calls, BFCL's Python-call syntax) and restates
  the matching rules of BFCL's AST checker (``match_call``).

Model output is only ever read with ``json.loads`` (and, for BFCL's Python-call syntax, with
``ast.parse`` plus ``ast.literal_eval`` of each argument); nothing here runs ``eval``/``exec``.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple


from .callparsing import (  # noqa: F401  (re-exported: the tool-call API lives here)
    ERROR_KINDS,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ParsedCall,
    call_from_object,
    extract_calls,
    parse_call_json,
    parse_python_calls,
    parse_tool_calls,
)

# ----------------------------------------------------------------------------- schemas


def function_schema(schema: dict) -> dict:
    """The inner function schema ``{"name", "description", "parameters"}``.

    Accepts the OpenAI wrapper ``{"type": "function", "function": {...}}`` (what
    ``transformers.utils.get_json_schema`` returns) or a bare BFCL function record.
    """
    if not isinstance(schema, dict):
        raise TypeError(f"a tool schema must be a dict, got {type(schema).__name__}")
    inner = schema.get("function") if schema.get("type") == "function" else schema
    if not isinstance(inner, dict) or not isinstance(inner.get("name"), str):
        raise ValueError(
            "a tool schema needs a function name: pass the OpenAI wrapper "
            "{'type': 'function', 'function': {'name': ..., 'parameters': ...}} or a bare "
            f"{{'name': ..., 'parameters': ...}}; got keys {sorted(schema)}"
        )
    return inner


# BFCL writes Python's type names; JSON Schema has its own. None means "any type".
_TYPE_MAP: Dict[str, Optional[str]] = {
    "dict": "object",
    "object": "object",
    "float": "number",
    "number": "number",
    "integer": "integer",
    "int": "integer",
    "string": "string",
    "str": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "null": "null",
    "any": None,
}
# Keys under which a JSON Schema nests further schemas (one, a list of them, or a mapping).
_ONE = ("items", "additionalProperties", "not", "contains", "propertyNames")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAPPING = ("properties", "patternProperties", "$defs", "definitions")


def _map_type(t: Any) -> Optional[str]:
    if not isinstance(t, str) or t.lower() not in _TYPE_MAP:
        raise ValueError(
            f"unknown parameter type {t!r}; expected one of {sorted(_TYPE_MAP)} "
            "(JSON Schema or BFCL's Python-flavoured names)"
        )
    return _TYPE_MAP[t.lower()]


def to_json_schema(parameters: dict) -> dict:
    """A copy of ``parameters`` with BFCL's Python-flavoured types turned into JSON Schema.

    ``dict`` -> ``object``, ``float`` -> ``number``, ``tuple``/``list`` -> ``array``, ``any``
    -> no ``type`` at all; recursively through ``properties``, ``items`` and the other nested
    schemas. A schema already in JSON Schema comes back equal to the input.
    """
    if not isinstance(parameters, dict):
        raise TypeError(f"a parameters schema must be a dict, got {type(parameters).__name__}")
    out = copy.deepcopy(parameters)
    _convert_in_place(out)
    return out


def _convert_in_place(node: dict) -> None:
    if "type" in node:
        types = node["type"]
        if isinstance(types, list):
            mapped = [_map_type(t) for t in types]
            if None in mapped:
                del node["type"]
            else:
                node["type"] = list(dict.fromkeys(mapped))
        else:
            mapped_one = _map_type(types)
            if mapped_one is None:
                del node["type"]
            else:
                node["type"] = mapped_one
    for key in _ONE:
        if isinstance(node.get(key), dict):
            _convert_in_place(node[key])
    for key in _MANY:
        if isinstance(node.get(key), list):
            for sub in node[key]:
                if isinstance(sub, dict):
                    _convert_in_place(sub)
    for key in _MAPPING:
        if isinstance(node.get(key), dict):
            for sub in node[key].values():
                if isinstance(sub, dict):
                    _convert_in_place(sub)


def arguments_schema(schema: dict) -> dict:
    """The JSON Schema the arguments of a call to ``schema`` must satisfy.

    The top level rejects properties the function does not declare (unless the schema says
    otherwise with its own ``additionalProperties``): an invented argument is an error.
    """
    params = function_schema(schema).get("parameters") or {"type": "object", "properties": {}}
    out = to_json_schema(params)
    out.setdefault("type", "object")
    out.setdefault("additionalProperties", False)
    return out


@functools.lru_cache(maxsize=512)
def _validator(schema_json: str):
    """A checked ``jsonschema.Draft202012Validator`` per distinct schema (rollouts validate the
    same tools again and again; the schema is passed as its canonical JSON text so that it can
    be cached). ``jsonschema`` is imported here, not at module level: its import takes seconds
    (format checkers), and ``opdplus.trainer`` imports this module for every run."""
    import jsonschema

    schema = json.loads(schema_json)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_call(call: ParsedCall, schemas: Sequence[dict]) -> Tuple[Optional[str], Optional[str]]:
    """Check a parsed call against the available tools.

    Returns ``(None, None)`` when valid, else ``(error_kind, message)`` with ``error_kind``
    one of ``"malformed"``, ``"unknown_tool"``, ``"bad_arguments"``. Arguments are checked
    with ``jsonschema`` (Draft 2020-12): missing required arguments, wrong types (an integer
    is accepted where a number is expected, a boolean is not a number) and properties the
    function does not declare are all ``"bad_arguments"``.
    """
    if call.error is not None or call.name is None or call.arguments is None:
        return "malformed", call.error or "malformed: the call did not parse"
    by_name = {}
    for s in schemas:
        inner = function_schema(s)
        by_name.setdefault(inner["name"], s)
    if call.name not in by_name:
        known = ", ".join(sorted(by_name)) or "(none)"
        return "unknown_tool", f"unknown tool {call.name!r}; known tools: {known}"
    import jsonschema

    try:
        validator = _validator(json.dumps(arguments_schema(by_name[call.name]), sort_keys=True))
    except jsonschema.exceptions.SchemaError as exc:
        raise ValueError(
            f"the schema of tool {call.name!r} is not valid JSON Schema: {exc.message}"
        ) from exc
    error = jsonschema.exceptions.best_match(validator.iter_errors(call.arguments))
    if error is None:
        return None, None
    where = "/".join(str(p) for p in error.absolute_path)
    at = f" at {where!r}" if where else ""
    return "bad_arguments", f"bad arguments for {call.name!r}{at}: {error.message}"


# ----------------------------------------------------------------------------- BFCL matching
# The matching rules of BFCL's AST checker (bfcl_eval/eval_checker/ast_eval/ast_checker.py),
# restated: the expected function is called, every required argument is present, every given
# argument is declared and has a possible answer, its type is the declared one (an int is
# accepted for a float), its value is among the allowed values (strings compared after
# normalisation, lists and dicts compared structurally, dict values against their own
# allowed lists), and an argument left out must have "" among its allowed values.

# BFCL ignores spaces, these punctuation marks and case when it compares strings, so that
# "April 1, 2024" and "april 1,2024" are the same answer.
_IGNORED_IN_STRINGS = re.compile(r"[ ,./\-_*^]")


def normalise_string(s: str) -> str:
    """A string as BFCL compares it: without spaces and ``,./-_*^``, lower case, ' as "."""
    return _IGNORED_IN_STRINGS.sub("", s).lower().replace("'", '"')


def _type_ok(value: Any, json_type: Optional[str], items: Optional[dict]) -> bool:
    """Does ``value`` have the declared type? (JSON Schema names; None means any type.)"""
    if json_type is None:
        return True
    if json_type == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if json_type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if json_type == "array":
        if not isinstance(value, list):
            return False
        # One level deep, as BFCL checks the items of an array.
        item_type = _declared_type(items) if isinstance(items, dict) else None
        return all(_type_ok(v, item_type, None) for v in value)
    expected = {"string": str, "boolean": bool, "object": dict, "null": type(None)}[json_type]
    return isinstance(value, expected)


def argument_type_ok(value: Any, prop: dict) -> bool:
    """Does ``value`` have the type a property schema declares (BFCL's rules, either naming)?"""
    return _type_ok(value, _declared_type(prop), prop.get("items"))


def _declared_type(prop: dict) -> Optional[str]:
    t = prop.get("type")
    if isinstance(t, list):  # a union: take it as "any" for BFCL's purposes
        return None
    return None if t is None else _map_type(t)


def _scalar_equal(value: Any, allowed: Any) -> bool:
    if isinstance(value, str) and isinstance(allowed, str):
        return normalise_string(value) == normalise_string(allowed)
    if isinstance(value, bool) or isinstance(allowed, bool):
        return type(value) is type(allowed) and value == allowed
    if isinstance(value, dict) and isinstance(allowed, dict):
        return _dict_matches(value, allowed)
    if isinstance(value, list) and isinstance(allowed, list):
        return len(value) == len(allowed) and all(map(_scalar_equal, value, allowed))
    if isinstance(value, (int, float)) and isinstance(allowed, (int, float)):
        return value == allowed
    return False


def _dict_matches(value: dict, allowed: dict) -> bool:
    """A dict against one possible dict, whose values are themselves lists of allowed values."""
    for key, v in value.items():
        choices = allowed.get(key)
        if not isinstance(choices, list) or not value_allowed(v, choices):
            return False
    return all(key in value or "" in choices for key, choices in allowed.items())


def value_allowed(value: Any, allowed: Sequence[Any]) -> bool:
    """Is ``value`` one of BFCL's allowed values (the "" entry, meaning "may be omitted", aside)?

    A dict is compared with each possible dict key by key; a list element by element (in
    order); strings after ``normalise_string``; numbers by value (``2 == 2.0``); booleans only
    with booleans.
    """
    return any(_scalar_equal(value, a) for a in allowed if not (isinstance(a, str) and a == ""))


def match_call(name: str, arguments: dict, schema: dict, answer: dict) -> Optional[str]:
    """Why a call does not match one possible answer ``{func_name: {arg: [allowed...]}}``; None
    when it matches. ``schema`` is the expected function's schema (either format)."""
    ((expected, allowed_by_arg),) = answer.items()
    if name != expected:
        return f"wrong function: called {name!r}, expected {expected!r}"
    params = function_schema(schema).get("parameters") or {}
    props = params.get("properties") or {}
    for req in params.get("required") or []:
        if req not in arguments:
            return f"missing required argument {req!r}"
    for arg, value in arguments.items():
        if arg not in props or arg not in allowed_by_arg:
            return f"unexpected argument {arg!r}"
        if not argument_type_ok(value, props[arg]):
            return (
                f"argument {arg!r} has type {type(value).__name__}, declared "
                f"{props[arg].get('type')!r}"
            )
        if not value_allowed(value, allowed_by_arg[arg]):
            return f"argument {arg!r}={value!r} is not among the allowed {allowed_by_arg[arg]!r}"
    for arg, allowed in allowed_by_arg.items():
        if arg not in arguments and "" not in allowed:
            return f"argument {arg!r} is missing and may not be omitted"
    return None


@dataclass(frozen=True)
class CallGrade:
    """The grade of one answer to a function-calling question (``grade_call``)."""

    parsed: bool
    """At least one call was found and every call found parsed."""
    valid: bool
    """Parsed, and every call names a known function with arguments valid for its schema."""
    correct: bool
    """Valid, and the calls match the possible answer (BFCL's rules)."""
    reason: str
    """Empty when correct; else why not, starting with the error kind or "mismatch"."""
    call: Optional[ParsedCall]
    """The first call found (None when there was none)."""
    calls: Tuple[ParsedCall, ...] = ()
    """Every call found, in order."""


def grade_call(output: str, functions: Sequence[dict], possible_answer: list) -> CallGrade:
    """Grade a model's raw answer against BFCL's possible answer.

    ``functions`` are the schemas the model was given (BFCL records or OpenAI-format);
    ``possible_answer`` is BFCL's ``ground_truth``: a list with one ``{func_name: {arg:
    [allowed values]}}`` per expected call. The calls are read by ``extract_calls``; their
    number must equal the number of expected calls, and each expected call must be matched
    by a different call, in any order. A correct answer is always valid: a call that breaks
    its schema (for example a value outside an ``enum``) is not correct even where BFCL's
    checker, which does not read enums, would accept it.
    """
    if not isinstance(possible_answer, list) or not all(
        isinstance(a, dict) and len(a) == 1 for a in possible_answer
    ):
        raise ValueError(
            "possible_answer must be BFCL's ground_truth: a list of {func_name: {arg: [allowed "
            f"values]}} dicts with one key each; got {possible_answer!r:.200}"
        )
    calls = tuple(extract_calls(output))
    first = calls[0] if calls else None
    if not calls:
        return CallGrade(False, False, False, "malformed: no tool call found", None, calls)
    bad = next((c for c in calls if c.error is not None), None)
    if bad is not None:
        return CallGrade(False, False, False, bad.error or "malformed", first, calls)
    for c in calls:
        kind, message = validate_call(c, functions)
        if kind is not None:
            text = message if message.startswith(kind) else f"{kind}: {message}"
            return CallGrade(True, False, False, text, first, calls)
    if len(calls) != len(possible_answer):
        why = f"mismatch: {len(calls)} calls, expected {len(possible_answer)}"
        return CallGrade(True, True, False, why, first, calls)
    schemas = {function_schema(s)["name"]: s for s in functions}
    unused = list(range(len(calls)))
    for answer in possible_answer:
        (expected,) = answer
        if expected not in schemas:
            raise ValueError(f"the possible answer names {expected!r}, absent from the functions")
        reasons = []
        for i in unused:
            why = match_call(calls[i].name, calls[i].arguments, schemas[expected], answer)
            if why is None:
                unused.remove(i)
                break
            reasons.append(why)
        else:
            return CallGrade(True, True, False, f"mismatch: {reasons[0]}", first, calls)
    return CallGrade(True, True, True, "", first, calls)
