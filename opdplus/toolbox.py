"""Tools for a model to call, and the chat template's tool turn around their results.

- ``Tool.from_function(fn)``: a tool whose JSON Schema (OpenAI function format) comes from a
  plain function's type hints and Google-style docstring (``transformers``'
  ``get_json_schema``).
- ``ToolBox(tools, max_result_chars=...)``: the tools of one environment. ``box.schemas``
  go to ``apply_chat_template(..., tools=box.schemas)``; ``box.run(call)`` validates a
  parsed call (``opdplus.toolcalls``, ``jsonschema``) and runs it. Each kind of bad call
  (malformed, unknown tool, bad arguments, an exception inside the tool) comes back as a
  tool-error message for the model to read, never as a Python exception, and a result
  longer than the budget is cut with a marker. Arguments reach a tool as decoded JSON
  values; nothing here passes model output to ``eval`` or ``exec``.
- ``tool_turn_ids(tokenizer, results, end_id)``: the tokens the chat template puts after
  an assistant turn that called tools: the tool turn holding the results, then the next
  generation prompt. They are found by rendering a conversation and keeping what follows
  the assistant's content (a sentinel string) and its end-of-turn token, and are
  tokenised on their own, which is exact for templates whose turns begin and end with
  special tokens (ChatML; checked in the tests against the whole conversation tokenised).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .rollout import IntOrList
from .toolcalls import ParsedCall, validate_call

# ----------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Tool:
    """A callable the model may call, with its JSON Schema (OpenAI function format)."""

    name: str
    fn: Callable[..., Any]
    schema: dict
    """``{"type": "function", "function": {"name", "description", "parameters"}}``."""

    @classmethod
    def from_function(cls, fn: Callable[..., Any]) -> "Tool":
        """A tool from a plain function with type hints and a Google-style docstring."""
        from transformers.utils import get_json_schema

        schema = get_json_schema(fn)
        return cls(name=schema["function"]["name"], fn=fn, schema=schema)


@dataclass(frozen=True)
class ToolResult:
    """What a call returned, as the text the model will read."""

    text: str
    error_kind: Optional[str] = None
    """None for a successful call; else one of ``toolcalls.ERROR_KINDS``."""
    truncated: bool = False
    """The result was longer than the tool box's budget and was cut."""


def truncate_result(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters plus a marker saying how much was dropped."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}...[truncated {len(text) - max_chars} chars]"


def _result_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


class ToolBox:
    """The tools of one environment: their schemas, and ``run(call) -> ToolResult``.

    ``run`` never raises on model output: each error kind of ``toolcalls.ERROR_KINDS``
    comes back as ``ToolResult(text="error (<kind>): ...", error_kind=kind)``. Every result
    (errors included) is cut to ``max_result_chars`` with a marker.
    """

    def __init__(
        self, tools: Sequence[Union[Tool, Callable[..., Any]]], max_result_chars: int = 1000
    ):
        if max_result_chars < 1:
            raise ValueError(f"max_result_chars must be >= 1, got {max_result_chars}")
        self.tools: Dict[str, Tool] = {}
        for t in tools:
            t = t if isinstance(t, Tool) else Tool.from_function(t)
            if t.name in self.tools:
                raise ValueError(f"two tools are named {t.name!r}; tool names must be unique")
            self.tools[t.name] = t
        self.max_result_chars = int(max_result_chars)

    @property
    def schemas(self) -> List[dict]:
        """The tools' schemas, for ``apply_chat_template(..., tools=box.schemas)``."""
        return [t.schema for t in self.tools.values()]

    @property
    def names(self) -> List[str]:
        return list(self.tools)

    def run(self, call: ParsedCall) -> ToolResult:
        """Validate ``call`` against the schemas, then run it; errors become results."""
        kind, message = validate_call(call, self.schemas)
        if kind is not None:
            return self._result(f"error ({kind}): {message}", kind)
        try:
            value = self.tools[call.name].fn(**call.arguments)
        except Exception as exc:  # the tool's own failure is the model's to read
            return self._result(
                f"error (tool_exception): {call.name} raised {type(exc).__name__}: {exc}",
                "tool_exception",
            )
        return self._result(_result_text(value), None)

    def _result(self, text: str, kind: Optional[str]) -> ToolResult:
        cut = truncate_result(text, self.max_result_chars)
        return ToolResult(text=cut, error_kind=kind, truncated=cut != text)


def encode_tool_prompts(
    tokenizer, conversations: Sequence[Sequence[dict]], toolbox: ToolBox
) -> List[List[int]]:
    """Token ids of each conversation with the tools in its system turn, ending in the
    generation prompt (``apply_chat_template(..., tools=toolbox.schemas)``)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; tools are described through it")
    out = []
    for msgs in conversations:
        text = tokenizer.apply_chat_template(
            list(msgs), tools=toolbox.schemas, tokenize=False, add_generation_prompt=True
        )
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


# ----------------------------------------------------------------------------- the tool turn

_SENTINEL = "OPDPLUS-ASSISTANT-CONTENT-5f1c"


def _after_assistant(tokenizer, tool_texts: Sequence[str]) -> str:
    """The template's text after an assistant turn's content, up to the next generation
    prompt, with one tool message per entry of ``tool_texts`` (none: the turn's closing)."""
    msgs = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _SENTINEL}]
    msgs += [{"role": "tool", "content": t} for t in tool_texts]
    full = tokenizer.apply_chat_template(
        msgs, tokenize=False, add_generation_prompt=bool(tool_texts)
    )
    k = full.find(_SENTINEL)
    if k < 0:
        raise ValueError(
            "the chat template does not write an assistant message's content verbatim; "
            "tool turns cannot be located in it"
        )
    return full[k + len(_SENTINEL) :]


def turn_end_id(tokenizer, eos_token_id: IntOrList) -> int:
    """The EOS id that the chat template writes right after an assistant turn's content."""
    closing = _after_assistant(tokenizer, [])
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    for i in ids:
        s = tokenizer.decode([int(i)], skip_special_tokens=False)
        if s and closing.startswith(s):
            return int(i)
    raise ValueError(
        f"none of the EOS ids {ids} ends an assistant turn in this chat template (it closes "
        f"a turn with {closing[:30]!r}); pass the template's end-of-turn token as EOS"
    )


def tool_turn_ids(tokenizer, results: Sequence[str], end_id: int) -> List[int]:
    """Token ids inserted after an assistant turn that ended with ``end_id``: the template's
    tool turn holding ``results`` and the next generation prompt.

    Found as the string difference of two renderings, then tokenised on its own.
    """
    end = tokenizer.decode([int(end_id)], skip_special_tokens=False)
    rest = _after_assistant(tokenizer, list(results))
    if not rest.startswith(end):
        raise ValueError(
            f"the chat template does not close an assistant turn with {end!r} "
            f"(it writes {rest[:30]!r})"
        )
    return tokenizer(rest[len(end) :], add_special_tokens=False)["input_ids"]


