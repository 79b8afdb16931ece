"""Tool calls on the wire: OpenAI's (arguments as JSON text) and Ollama's (as an object).

The gateway's own API writes them as Ollama does, since its clients read
JSON objects, not JSON text inside JSON.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from flask_inference_gateway.core.pieces import ToolCall


def arguments_object(arguments: str) -> Any:
    """Return a call's arguments as an object; text that is not JSON stays text."""
    try:
        return orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return arguments  # what the model said, cut short or malformed: the client decides


def openai_call(call: ToolCall) -> dict[str, Any]:
    """Return a whole call as OpenAI writes it in a message."""
    return {"id": call.id or new_call_id(), "type": "function",
            "function": {"name": call.name, "arguments": call.arguments or "{}"}}


def ollama_call(call: ToolCall) -> dict[str, Any]:
    """Return a whole call as Ollama writes it in a message."""
    return {"id": call.id or new_call_id(),
            "function": {"index": call.index, "name": call.name,
                         "arguments": arguments_object(call.arguments)}}


def new_call_id() -> str:
    """Return an id for a call that came without one."""
    return f"call_{uuid.uuid4().hex[:24]}"


class CallFragments:
    """Give a stream's tool call fragments what an OpenAI client needs of the first one:
    an id, the type and the name; later fragments carry only more arguments."""

    def __init__(self) -> None:
        self.started: set[int] = set()

    def delta(self, call: ToolCall) -> dict[str, Any]:
        """Return one fragment as an entry of ``delta.tool_calls``."""
        first = call.index not in self.started
        self.started.add(call.index)
        function = {"name": call.name} if first or call.name else {}
        function["arguments"] = call.arguments
        if not first:
            return {"index": call.index, "function": function}
        return {"index": call.index, "id": call.id or new_call_id(), "type": "function",
                "function": function}


def reason_with_calls(done_reason: str | None, called: bool) -> str | None:
    """Return "tool_calls" for a turn that ended in tool calls (Ollama says "stop")."""
    return "tool_calls" if called and done_reason in (None, "stop") else done_reason
