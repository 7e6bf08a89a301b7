"""Tool calls: parsing model text, schema conversion and validation, BFCL-style grading.

Hand-built records, one per rule. The vendored BFCL records are checked in test_bfcl.py.
"""

import jsonschema
import pytest

from opdplus import toolcalls as tc
from opdplus.toolcalls import ParsedCall, grade_call, parse_tool_calls, validate_call

CALC = {
    "type": "function",
    "function": {
        "name": "calc",
        "description": "Add two numbers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}

# A BFCL record (Python-flavoured types) with every kind of argument the rules distinguish.
AREA = {
    "name": "geometry.area",
    "description": "Area of a shape.",
    "parameters": {
        "type": "dict",
        "properties": {
            "base": {"type": "integer", "description": "base"},
            "height": {"type": "float", "description": "height"},
            "unit": {"type": "string", "description": "unit"},
            "sides": {"type": "array", "items": {"type": "integer"}, "description": "sides"},
            "options": {"type": "dict", "description": "options", "properties": {}},
            "exact": {"type": "boolean", "description": "exact"},
        },
        "required": ["base", "height"],
    },
}
OTHER = {
    "name": "circle_area",
    "description": "Area of a circle.",
    "parameters": {
        "type": "dict",
        "properties": {"radius": {"type": "float", "description": "radius"}},
        "required": ["radius"],
    },
}
ANSWER = [
    {
        "geometry.area": {
            "base": [10],
            "height": [5.0],
            "unit": ["square meters", "m2", ""],
            "sides": [[3, 4, 5], ""],
            "options": [{"precision": [2], "mode": ["fast", ""]}, ""],
            "exact": [True, ""],
        }
    }
]


def block(obj_text: str) -> str:
    return f"{tc.TOOL_CALL_OPEN}\n{obj_text}\n{tc.TOOL_CALL_CLOSE}"


# ----------------------------------------------------------------------------- parsing


def test_parse_blocks_in_order_with_text_around():
    text = (
        "Let me compute. "
        + block('{"name": "calc", "arguments": {"a": 12, "b": 7}}')
        + " and "
        + block('{"name": "calc", "parameters": {"a": 1.5, "b": 2}}')
        + " done"
    )
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("calc", {"a": 12, "b": 7}, None),
        ("calc", {"a": 1.5, "b": 2}, None),
    ]
    assert calls[0].raw.strip() == '{"name": "calc", "arguments": {"a": 12, "b": 7}}'
    assert parse_tool_calls("no call here </tool_call>") == []


def test_parse_arguments_given_as_json_string_and_absent():
    (c,) = parse_tool_calls(block('{"name": "f", "arguments": "{\\"x\\": [1, 2]}"}'))
    assert c.ok and c.arguments == {"x": [1, 2]}
    (c,) = parse_tool_calls(block('{"name": "now"}'))
    assert c.ok and c.arguments == {}


@pytest.mark.parametrize(
    "body, why",
    [
        ('{"name": "calc", "arguments": {"a": 1,}}', "invalid JSON"),
        ('{"arguments": {"a": 1}}', 'missing "name"'),
        ('{"name": "", "arguments": {}}', 'missing "name"'),
        ('["calc", {"a": 1}]', "must be a JSON object"),
        ('{"name": "calc", "arguments": [1, 2]}', '"arguments" must be a JSON object'),
        ('{"name": "calc", "arguments": "{not json"}', "not valid JSON"),
        ("", "empty call block"),
    ],
)
def test_parse_malformed_blocks(body, why):
    (c,) = parse_tool_calls(block(body))
    assert c.name is None and c.arguments is None and not c.ok
    assert c.error.startswith("malformed: ") and why in c.error


def test_parse_unclosed_blocks_are_malformed_not_dropped():
    good = block('{"name": "calc", "arguments": {"a": 1, "b": 2}}')
    calls = parse_tool_calls(good + '<tool_call>{"name": "calc", "argu')
    assert [c.ok for c in calls] == [True, False]
    assert "unclosed" in calls[1].error and calls[1].raw == '{"name": "calc", "argu'
    # A block opened again before it closed: the first is malformed, the second still parses.
    calls = parse_tool_calls('<tool_call>{"name": "x"' + good)
    assert [c.ok for c in calls] == [False, True] and calls[1].arguments == {"a": 1, "b": 2}


def test_pathological_text_never_raises():
    deep = "[" * 100_000
    (c,) = parse_tool_calls(block(deep))
    assert not c.ok and "malformed: " in c.error
    assert tc.extract_calls(deep) == []
    assert tc.extract_calls("f(a=" + deep + ")") == []


def test_parsed_call_is_frozen():
    (c,) = parse_tool_calls(block('{"name": "calc", "arguments": {}}'))
    with pytest.raises(AttributeError):
        c.name = "other"


# ----------------------------------------------------------------------------- schemas


def test_function_schema_accepts_both_formats_and_names_the_fix():
    assert tc.function_schema(CALC)["name"] == "calc"
    assert tc.function_schema(AREA) is AREA
    with pytest.raises(ValueError, match="needs a function name"):
        tc.function_schema({"type": "function", "parameters": {}})
    with pytest.raises(TypeError):
        tc.function_schema(["calc"])


def test_to_json_schema_maps_python_types_recursively():
    bfcl = {
        "type": "dict",
        "properties": {
            "x": {"type": "float"},
            "pt": {"type": "tuple", "items": {"type": "float"}},
            "blob": {"type": "any", "description": "anything"},
            "cfg": {
                "type": "dict",
                "properties": {"rows": {"type": "array", "items": {"type": "dict"}}},
            },
        },
        "required": ["x"],
    }
    js = tc.to_json_schema(bfcl)
    assert js["type"] == "object"
    assert js["properties"]["x"] == {"type": "number"}
    assert js["properties"]["pt"] == {"type": "array", "items": {"type": "number"}}
    assert js["properties"]["blob"] == {"description": "anything"}  # untyped
    assert js["properties"]["cfg"]["properties"]["rows"]["items"] == {"type": "object"}
    assert bfcl["properties"]["x"] == {"type": "float"}  # the input is left alone
    jsonschema.Draft202012Validator.check_schema(js)
    # Already JSON Schema: unchanged.
    assert tc.to_json_schema(CALC["function"]["parameters"]) == CALC["function"]["parameters"]
    with pytest.raises(ValueError, match="unknown parameter type 'decimal'"):
        tc.to_json_schema({"type": "object", "properties": {"d": {"type": "decimal"}}})


def test_validate_call_error_kinds():
    ok = ParsedCall(raw="", name="calc", arguments={"a": 1, "b": 2})  # int where number: fine
    assert validate_call(ok, [CALC]) == (None, None)
    (bad,) = parse_tool_calls(block("{oops"))
    assert validate_call(bad, [CALC])[0] == "malformed"
    kind, msg = validate_call(ParsedCall(raw="", name="calc2", arguments={}), [CALC, AREA])
    assert kind == "unknown_tool" and "calc2" in msg and "geometry.area" in msg
    for args, fragment in [
        ({"a": 1}, "'b' is a required property"),
        ({"a": "1", "b": 2}, "'1' is not of type 'number'"),
        ({"a": True, "b": 2}, "True is not of type 'number'"),  # a bool is not a number
        ({"a": 1, "b": 2.5}, "2.5 is not of type 'integer'"),
        ({"a": 1, "b": 2, "c": 3}, "'c' was unexpected"),
    ]:
        kind, msg = validate_call(ParsedCall(raw="", name="calc", arguments=args), [CALC])
        assert kind == "bad_arguments" and fragment in msg, (args, msg)
    assert set(tc.ERROR_KINDS[:3]) == {"malformed", "unknown_tool", "bad_arguments"}


def test_validate_call_rejects_an_invalid_schema_by_name():
    broken = {"name": "f", "parameters": {"type": "object", "required": "x"}}
    with pytest.raises(ValueError, match="schema of tool 'f' is not valid JSON Schema"):
        validate_call(ParsedCall(raw="", name="f", arguments={}), [broken])


def test_validate_call_with_a_schema_from_get_json_schema():
    from transformers.utils import get_json_schema

    def convert(amount: float, unit: str = "km") -> float:
        """Convert a distance.

        Args:
            amount: The distance.
            unit: The target unit.
        """
        return amount

    schema = get_json_schema(convert)
    good = ParsedCall(raw="", name="convert", arguments={"amount": 3})
    assert validate_call(good, [schema]) == (None, None)
    bad = ParsedCall(raw="", name="convert", arguments={"unit": "mi"})
    assert validate_call(bad, [schema])[0] == "bad_arguments"


def test_validate_call_nested_bfcl_schema():
    args = {"base": 1, "height": 2, "sides": [1, 2], "options": {"anything": "goes"}}
    assert validate_call(ParsedCall("", "geometry.area", args), [AREA]) == (None, None)
    args["sides"] = [1, "2"]
    kind, msg = validate_call(ParsedCall("", "geometry.area", args), [AREA])
    assert kind == "bad_arguments" and "'sides/1'" in msg


# ----------------------------------------------------------------------------- extraction


def test_extract_calls_accepts_bare_json_fences_and_python_syntax():
    one = '{"name": "calc", "arguments": {"a": 1, "b": 2}}'
    for text in [one, f"  {one}\n", f"```json\n{one}\n```", f"[{one}]", block(one)]:
        (c,) = tc.extract_calls(text)
        assert (c.name, c.arguments) == ("calc", {"a": 1, "b": 2}), text
    calls = tc.extract_calls("[geometry.area(base=10, height=5.0, sides=(3, 4)), calc(a=1, b=2)]")
    assert [(c.name, c.arguments) for c in calls] == [
        ("geometry.area", {"base": 10, "height": 5.0, "sides": [3, 4]}),
        ("calc", {"a": 1, "b": 2}),
    ]
    assert tc.extract_calls("The answer is 42.") == []
    assert tc.extract_calls("Sure! " + one) == []  # prose around a bare call is not searched
    assert tc.extract_calls("") == []


@pytest.mark.parametrize(
    "text, why",
    [
        ("calc(1, 2)", "by keyword"),
        ("calc(a=x, b=2)", "not a literal"),
        ("calc(a=__import__('os').getcwd(), b=2)", "not a literal"),
        ("(lambda: 1)()", "not a (dotted) function name"),
        ("calc(**{'a': 1})", "by keyword"),
    ],
)
def test_python_syntax_is_read_as_literals_never_run(text, why):
    (c,) = tc.extract_calls(text)
    assert not c.ok and why in c.error


# ----------------------------------------------------------------------------- grading


def grade(args: dict, name: str = "geometry.area", functions=(AREA, OTHER), answer=None):
    out = block(f'{{"name": "{name}", "arguments": {_json(args)}}}')
    return grade_call(out, list(functions), answer or ANSWER)


def _json(obj) -> str:
    import json

    return json.dumps(obj)


def test_grade_correct_minimal_and_full_answers():
    g = grade({"base": 10, "height": 5.0})  # every optional argument omitted
    assert (g.parsed, g.valid, g.correct, g.reason) == (True, True, True, "")
    assert g.call.name == "geometry.area" and len(g.calls) == 1
    full = {
        "base": 10,
        "height": 5,  # an int for a float
        "unit": "Square-Meters",  # case, spaces and punctuation are normalised
        "sides": [3, 4, 5],
        "options": {"precision": 2},  # a dict's optional key may be omitted too
        "exact": True,
    }
    assert grade(full).correct


@pytest.mark.parametrize(
    "args, name, reason",
    [
        ({"radius": 10.0}, "circle_area", "mismatch: wrong function"),
        ({"base": 10}, "geometry.area", "bad_arguments"),  # missing required: schema says so
        ({"base": "10", "height": 5.0}, "geometry.area", "bad_arguments"),  # wrong type
        ({"base": 11, "height": 5.0}, "geometry.area", "not among the allowed"),
        ({"base": 10, "height": 5.0, "unit": "feet"}, "geometry.area", "not among the allowed"),
        ({"base": 10, "height": 5.0, "sides": [5, 4, 3]}, "geometry.area", "not among"),
        ({"base": 10, "height": 5.0, "sides": [3, 4]}, "geometry.area", "not among"),
        (
            {"base": 10, "height": 5.0, "options": {"precision": 2, "extra": 1}},
            "geometry.area",
            "not among",
        ),
        ({"base": 10, "height": 5.0, "options": {"mode": "fast"}}, "geometry.area", "not among"),
        ({"base": 10, "height": 5.0, "exact": 1}, "geometry.area", "bad_arguments"),
        ({"base": 10, "height": 5.0, "colour": "red"}, "geometry.area", "bad_arguments"),
        ({"base": 10, "height": 5.0}, "area", "unknown_tool"),
    ],
)
def test_grade_each_rule_fails(args, name, reason):
    g = grade(args, name=name)
    assert not g.correct and reason in g.reason, g.reason
    assert g.parsed
    assert g.valid == (not reason.startswith(("bad_arguments", "unknown_tool")))


def test_grade_rules_checked_by_the_matcher_itself():
    # match_call judges what the schema cannot: allowed values, omissions, undeclared answers.
    no_unit = [{"geometry.area": {"base": [10], "height": [5.0], "unit": ["m2"]}}]
    g = grade({"base": 10, "height": 5.0}, answer=no_unit)
    assert g.valid and not g.correct and "may not be omitted" in g.reason
    no_sides = [{"geometry.area": {"base": [10], "height": [5.0]}}]
    g = grade({"base": 10, "height": 5.0, "sides": [1]}, answer=no_sides)
    assert g.valid and not g.correct and "unexpected argument 'sides'" in g.reason
    why = tc.match_call("geometry.area", {"height": 5.0}, AREA, ANSWER[0])
    assert why == "missing required argument 'base'"
    why = tc.match_call("geometry.area", {"base": 10.0, "height": 5.0}, AREA, ANSWER[0])
    assert "has type float" in why  # a float is not accepted for an integer
    assert tc.match_call("geometry.area", {"base": 10, "height": 5}, AREA, ANSWER[0]) is None


def test_value_allowed_structural_rules():
    assert tc.value_allowed("New York, NY", ["new york ny"])
    assert tc.value_allowed("it's", ['it"s'])
    assert not tc.value_allowed("", [""])  # "" means "may be omitted", not a value
    assert tc.value_allowed(2, [2.0]) and not tc.value_allowed(True, [1])
    assert not tc.value_allowed(1, [True])
    rows = [{"field": ["age"], "op": [">"]}, {"field": ["job"], "op": ["="]}]
    assert tc.value_allowed([{"field": "Age", "op": ">"}, {"field": "job", "op": "="}], [rows])
    assert not tc.value_allowed([{"field": "job", "op": "="}, {"field": "age", "op": ">"}], [rows])
    assert tc.value_allowed(
        ["Lakers", "Clippers"], [["clippers", "lakers"], ["lakers", "clippers"]]
    )


def test_grade_number_of_calls_and_unordered_matching():
    two = [{"circle_area": {"radius": [1.0]}}, {"circle_area": {"radius": [2.0]}}]
    a = '{"name": "circle_area", "arguments": {"radius": 2}}'
    b = '{"name": "circle_area", "arguments": {"radius": 1}}'
    assert grade_call(block(a) + block(b), [OTHER], two).correct  # any order
    g = grade_call(block(a), [OTHER], two)
    assert g.valid and not g.correct and "1 calls, expected 2" in g.reason
    g = grade_call(block(a) + block(a), [OTHER], two)
    assert g.valid and not g.correct  # one call cannot match two expected calls


def test_grade_unparsed_and_enum():
    g = grade_call("I cannot help with that.", [OTHER], [{"circle_area": {"radius": [1.0]}}])
    assert (g.parsed, g.valid, g.correct, g.call) == (False, False, False, None)
    g = grade_call(block("{bad json"), [OTHER], [{"circle_area": {"radius": [1.0]}}])
    assert not g.parsed and g.reason.startswith("malformed: ") and g.call is not None
    enum_fn = {
        "name": "paint",
        "parameters": {
            "type": "dict",
            "properties": {"colour": {"type": "string", "enum": ["Red", "Blue"]}},
            "required": ["colour"],
        },
    }
    answer = [{"paint": {"colour": ["Red", "red"]}}]
    assert grade_call('paint(colour="Red")', [enum_fn], answer).correct
    g = grade_call('paint(colour="red")', [enum_fn], answer)  # matches, but breaks the enum
    assert not g.valid and not g.correct and g.reason.startswith("bad_arguments")


def test_grade_rejects_a_malformed_possible_answer():
    with pytest.raises(ValueError, match="ground_truth"):
        grade_call("circle_area(radius=1.0)", [OTHER], {"circle_area": {"radius": [1.0]}})
    with pytest.raises(ValueError, match="absent from the functions"):
        grade_call("circle_area(radius=1.0)", [OTHER], [{"square_area": {"side": [1.0]}}])


def test_no_eval_or_exec_where_model_text_is_read():
    import ast
    from pathlib import Path

    root = Path(tc.__file__).resolve().parent
    for name in ("callparsing.py", "toolcalls.py", "bfcl.py"):
        tree = ast.parse((root / name).read_text())
        called = {
            n.func.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        assert not called & {"eval", "exec", "compile", "__import__"}, name
