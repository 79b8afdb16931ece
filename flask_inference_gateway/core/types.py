"""The typed objects that travel between the layers: requests in, completions and usage out.

A dialect's schema (native, OpenAI, Ollama) loads a body straight into a
``GenerationRequest`` or an ``EmbeddingRequest``; the service applies policy to
it (``with_model``), routing picks a backend for it, and an upstream adapter
turns it into its server's wire format. Nothing here imports Flask or
``requests``.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field, replace
from typing import Any

from flask_inference_gateway.core.pieces import ToolCall


def never_gone() -> bool:
    """Report a client that is always there (no connection to watch)."""
    return False


class Op(enum.Enum):
    """What a generation asks for: to continue a prompt, or to answer a conversation."""

    GENERATE = "generate"
    CHAT = "chat"


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a conversation."""

    role: str  # system, user, assistant or tool
    content: str
    images: tuple[str, ...] = ()  # base64-encoded image files, as Ollama takes them
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str = ""  # a tool result: the call it answers (OpenAI's link)
    tool_name: str = ""  # a tool result: the tool that answered (Ollama's link)
    thinking: str = ""  # an assistant's earlier thinking (Ollama sends it back)


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; ``parameters`` is its JSON Schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """Whether the model must call a tool: none, auto, required, or the tool ``name``."""

    mode: str  # none, auto, required or function
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Extra:
    """Fields the gateway does not know, for a backend of the client's own kind.

    The client spoke ``kind``'s dialect (ollama or openai); a backend of that
    kind receives ``fields`` in its body (and Ollama's ``options`` in its
    options), since a new server release may add fields the gateway has never
    heard of. A backend of the other kind cannot take them: a 422 names them.
    """

    kind: str
    fields: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()

    def names(self) -> list[str]:
        """Return the unknown fields' names, options as ``options.name``."""
        return [name for name, _ in self.fields] + [f"options.{n}" for n, _ in self.options]


@dataclass(frozen=True, slots=True)
class Options:
    """Sampling options; None: the backend's default.

    Every backend kind understands the first eight; ``repeat_penalty`` and
    ``num_ctx`` are Ollama's (``OLLAMA_ONLY``), refused for other backends.
    """

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repeat_penalty: float | None = None
    num_ctx: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the options that are set, by the gateway's names, as JSON values."""
        values = {name: getattr(self, name) for name in OPTION_NAMES}
        if self.stop is not None:
            values["stop"] = list(self.stop)
        return {name: value for name, value in values.items() if value is not None}


OPTION_NAMES = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "presence_penalty",
                "frequency_penalty", "repeat_penalty", "num_ctx")
OLLAMA_ONLY = ("repeat_penalty", "num_ctx")


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """Structured output: any JSON object, or JSON that matches ``schema``."""

    schema: dict[str, Any] | None = None  # None: any JSON object (JSON mode)
    name: str = "response"  # what OpenAI-compatible servers call the schema
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation, as every layer below the API sees it.

    ``model`` is empty when the client named none (the service fills in the
    default). ``prompt`` and ``system`` belong to ``Op.GENERATE``, ``messages``
    to ``Op.CHAT``. ``stream`` and ``include_usage`` say how the client wants
    its answer; the backend is called the same way either way.
    """

    op: Op
    options: Options
    model: str = ""
    prompt: str = ""
    system: str | None = None
    messages: tuple[Message, ...] = ()
    stream: bool = False
    include_usage: bool = False  # OpenAI's stream_options.include_usage
    response_format: ResponseFormat | None = None  # structured output
    images: tuple[str, ...] = ()  # Op.GENERATE's images (base64); chat's are per message
    keep_alive: Any = None  # Ollama's memory hint, as the client sent it
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    think: bool | str | None = None  # thinking: on, off, or low, medium or high effort
    logprobs: bool = False
    top_logprobs: int | None = None
    extra: Extra | None = None  # unknown fields, for a backend of the client's kind
    # The client's API (ollama or openai) when a backend of that kind may stream
    # its own bytes back to it as they come (upstream/verbatim.py).
    passthrough: str | None = None

    @property
    def empty(self) -> bool:
        """Return whether there is nothing to generate (Ollama: only load the model)."""
        return not (self.prompt or self.messages)

    def with_model(self, model: str) -> GenerationRequest:
        """Return this request for ``model``."""
        return replace(self, model=model)

    def prompt_text(self) -> str:
        """Return every piece of text the model reads: system prompt, prompt, messages."""
        calls = [call.arguments for m in self.messages for call in m.tool_calls]
        return ((self.system or "") + self.prompt + "".join(m.content for m in self.messages)
                + "".join(calls))

    def estimate_prompt_tokens(self) -> int:
        """Estimate the prompt's tokens (about 4 characters each) for a stream cut short."""
        return max(1, len(self.prompt_text()) // 4)

    def loggable_prompt(self) -> Any:
        """Return the prompt or the conversation as the access log shows it."""
        if self.op is Op.CHAT:
            return [{"role": m.role, "content": m.content} for m in self.messages]
        return self.prompt


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """Texts to embed with one model; ``encoding`` is how the client wants the vectors."""

    inputs: tuple[str, ...]
    model: str = ""
    encoding: str = "float"  # OpenAI's encoding_format: float or base64

    def with_model(self, model: str) -> EmbeddingRequest:
        """Return this request for ``model``."""
        return replace(self, model=model)


@dataclass(slots=True)
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        """Return prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        """Return the usage object of the gateway's responses."""
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.total}


@dataclass(slots=True)
class Completion:
    """A whole generation, as returned by a non-streaming call."""

    model: str
    text: str
    done_reason: str | None
    usage: Usage
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: list[dict[str, Any]] | None = None  # per token, when asked for
    final: dict[str, Any] = field(default_factory=dict)  # the backend's last object


@dataclass(slots=True)
class Embeddings:
    """One vector per input, and the tokens the inputs took."""

    model: str
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Caller:
    """Who waits for a backend slot: fair queueing serves callers in turn, by weight.

    ``priority`` callers are served before every other waiting request.
    """

    name: str = "anonymous"
    weight: float = 1.0
    priority: bool = False


ANONYMOUS = Caller()


@dataclass(slots=True)
class Probe:
    """What a backend's health probe found: its models, those in memory, its version."""

    models: list[dict[str, Any]]  # OpenAI-style model objects
    loaded: set[str]
    version: str = ""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long a backend may take: to connect, to the first token, between tokens, in all."""

    connect: float = 5.0
    first_token: float = 300.0
    between_tokens: float = 60.0
    total: float = 900.0

    def deadline(self) -> float:
        """Return the ``time.monotonic()`` by which a request started now must end."""
        return time.monotonic() + self.total


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    """How a closed stream ended: what the access log and the metrics record of it."""

    finished: bool  # the backend sent its final line
    pieces: int  # pieces relayed to the client
    usage: Usage  # the backend's counts, or (0, pieces) for a stream cut short
    first_piece_at: float | None  # time.monotonic() of the first piece
    error: str | None = None  # the type of the error that ended it, if one did
    error_message: str | None = None
    text: str | None = None  # the pieces, only when prompts are logged

    @property
    def result(self) -> str:
        """Return the upstream outcome: ok, cancelled, or the error type."""
        return self.error or ("ok" if self.finished else "cancelled")
