"""What both adapters need to carry a request across kinds: refusals, extras, tool links.

Ollama links a tool result to its call by the tool's name, OpenAI by the
call's id; a conversation written for one arrives with only its own link, so
the other is found from the assistant's earlier calls.
"""

from __future__ import annotations

from typing import Any

from flask_inference_gateway.core.errors import ValidationFailed
from flask_inference_gateway.core.types import GenerationRequest, Message, Tool

OTHER = {"ollama": "an OpenAI-compatible backend (vLLM, llama.cpp)", "openai": "an Ollama backend"}
SERVED_BY = {"ollama": "an Ollama backend", "openai": "an OpenAI-compatible backend"}


def refuse(kind: str, names: list[str], what: str) -> ValidationFailed:
    """Return the 422 for fields a backend of ``kind`` cannot take, saying who would."""
    message = (f"{what} The model is served by {SERVED_BY[kind]} here; {OTHER[kind]} "
               "would take it.")
    fields: dict[str, Any] = {}
    for name in names:
        *parents, leaf = name.split(".")
        node = fields
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = [message]
    return ValidationFailed(fields=fields)


def extras_for(kind: str, request: GenerationRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the unknown fields and options a backend of ``kind`` gets, or refuse them."""
    extra = request.extra
    if extra is None or not (extra.fields or extra.options):
        return {}, {}
    if extra.kind != kind:
        raise refuse(kind, extra.names(), "The gateway does not know this field, so it can "
                     "pass it only to a backend of the API's own kind.")
    return dict(extra.fields), dict(extra.options)


def call_id(message_index: int, call_index: int) -> str:
    """Return the id given to a tool call that came without one."""
    return f"call_{message_index}_{call_index}"


def linked(messages: tuple[Message, ...]) -> list[tuple[Message, list[str], str, str]]:
    """Return each message with its calls' ids, and a tool result's call id and tool name.

    A call without an id gets ``call_id``; a result without an id answers the
    latest unanswered call of its tool, one without a name takes its call's.
    """
    names: dict[str, str] = {}  # call id -> tool name
    open_calls: list[tuple[str, str]] = []  # (id, name) not yet answered
    out = []
    for m_index, message in enumerate(messages):
        ids = [call.id or call_id(m_index, c_index)
               for c_index, call in enumerate(message.tool_calls)]
        for ident, call in zip(ids, message.tool_calls, strict=True):
            names[ident] = call.name
            open_calls.append((ident, call.name))
        ident, name = message.tool_call_id, message.tool_name
        if message.role == "tool":
            if not ident:
                ident = next((i for i, n in reversed(open_calls) if n == name), "")
            name = name or names.get(ident, "")
            open_calls = [(i, n) for i, n in open_calls if i != ident]
        out.append((message, ids, ident, name))
    return out


def tool_body(tool: Tool, *, strict: bool = False) -> dict[str, Any]:
    """Return a tool as both kinds take it: ``{"type": "function", "function": {...}}``."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.parameters or {"type": "object", "properties": {}}
    if strict and tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}
