"""What a stream carries besides text: thinking, tool calls, log probabilities.

A stream's pieces are plain ``str`` for text, the common case (encoders keep a
fast path for it), or a ``Delta`` when the backend sent more. A stream passed
on to a client of the backend's own API carries ``Frame``s instead: the
backend's bytes, written as they came (upstream/verbatim.py). ``Answer``
assembles pieces into a whole answer: text and thinking concatenated, tool
call fragments merged by index (OpenAI-compatible servers stream a call's
arguments in fragments; Ollama sends each call whole).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Union


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool the model asked for, or a fragment of one in a stream.

    ``arguments`` is JSON text (OpenAI's form; Ollama's object is dumped). In a
    stream, the first fragment of a call carries its ``id`` and ``name``, later
    ones only more ``arguments``, all with the same ``index``.
    """

    index: int = 0
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece that carries more than text."""

    text: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[dict[str, Any], ...] = ()  # per token: token, logprob, bytes, top_logprobs


Frame = bytes  # a line of the backend's own stream, relayed as it came
Piece = Union[str, Delta, Frame]


def text_of(piece: Piece) -> str:
    """Return the text of one piece."""
    return piece if type(piece) is str else piece.text  # type: ignore[union-attr]


class Answer:
    """Assemble pieces into a whole answer."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._thinking: list[str] = []
        self._calls: dict[int, ToolCall] = {}
        self.logprobs: list[dict[str, Any]] = []

    def add(self, piece: Piece) -> None:
        """Add one piece."""
        if type(piece) is str:
            self._text.append(piece)  # type: ignore[arg-type]
            return
        self._text.append(piece.text)  # type: ignore[union-attr]
        self._thinking.append(piece.thinking)  # type: ignore[union-attr]
        self.logprobs.extend(piece.logprobs)  # type: ignore[union-attr]
        for call in piece.tool_calls:  # type: ignore[union-attr]
            self.add_call(call)

    def add_call(self, call: ToolCall) -> None:
        """Merge one tool call fragment into the call with its index."""
        known = self._calls.get(call.index)
        if known is None:
            self._calls[call.index] = call
            return
        self._calls[call.index] = replace(known, id=known.id or call.id,
                                          name=known.name or call.name,
                                          arguments=known.arguments + call.arguments)

    @property
    def text(self) -> str:
        """Return the text."""
        return "".join(self._text)

    @property
    def thinking(self) -> str:
        """Return the model's thinking."""
        return "".join(self._thinking)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """Return the whole tool calls, by index (arguments ``{}`` when none came)."""
        return tuple(replace(call, arguments=call.arguments or "{}")
                     for _, call in sorted(self._calls.items()))
