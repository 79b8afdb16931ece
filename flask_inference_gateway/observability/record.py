"""One record per request: filled in as the request goes, written out once when it ends.

The API opens the record when a gateway route is entered (``api/records.py``)
and finishes it when the server closes the response, which for a stream is
after its last byte (or after the client left). Finishing updates every metric
and writes one access log line, so the two always agree. The layers below
fill it in through typed setters (``observability/context.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from flask_inference_gateway.core.types import StreamOutcome, Usage
from flask_inference_gateway.observability import metrics

access_log = logging.getLogger("flask_inference_gateway.access")


@dataclass
class RequestRecord:
    """What is known about one request; ``finish`` turns it into metrics and a log line."""

    request_id: str
    method: str
    route: str
    started: float = field(default_factory=time.monotonic)
    status: int = 0
    key: str | None = None
    model: str | None = None
    backend: str | None = None
    usage: Usage | None = None
    stream: StreamOutcome | None = None  # set when a relayed stream closed
    error: str | None = None
    error_message: str | None = None
    limit: str | None = None
    prompt: Any = None  # only with GATEWAY_LOG_PROMPTS=1
    output: str | None = None  # likewise
    _finished: bool = False

    def finish(self) -> None:
        """Record the outcome in the metrics and the access log, once."""
        if self._finished:
            return
        self._finished = True
        duration = time.monotonic() - self.started
        fields = self._fields(duration)
        self._count(duration, fields)
        access_log.info("%s %s %s", self.method, self.route, self.status, extra=fields)

    def _stream_facts(self) -> tuple[Usage | None, float | None, str | None]:
        """Return the usage, first-piece time and upstream outcome of the request."""
        stream = self.stream
        if stream is None:
            outcome = None if self.backend is None else (self.error or "ok")
            return self.usage, None, outcome
        return stream.usage, stream.first_piece_at, stream.result

    def _fields(self, duration: float) -> dict[str, Any]:
        usage, first_piece, outcome = self._stream_facts()
        fields: dict[str, Any] = {
            "request_id": self.request_id, "method": self.method, "route": self.route,
            "status": self.status, "duration_ms": round(duration * 1000, 1), "key": self.key,
            "model": self.model, "backend": self.backend, "upstream": outcome,
            "ttft_ms": round((first_piece - self.started) * 1000, 1) if first_piece else None,
            # A stream cut short never got the backend's prompt count.
            "prompt_tokens": usage.prompt_tokens if usage and (
                self.stream is None or self.stream.finished) else None,
            "completion_tokens": usage.completion_tokens if usage else None,
        }
        if self.stream is not None:
            fields.update(stream=True, pieces=self.stream.pieces,
                          client_left=outcome == "cancelled")
        if self.error or (self.stream is not None and self.stream.error):
            fields["error"] = self.error or (self.stream.error if self.stream else None)
            fields["error_message"] = self.error_message or (
                self.stream.error_message if self.stream else None)
        if self.prompt is not None:
            fields.update(prompt=self.prompt, output=self.output or (
                self.stream.text if self.stream else None))
        return {k: v for k, v in fields.items() if v is not None}

    def _count(self, duration: float, fields: dict[str, Any]) -> None:
        model = self.model or ""
        metrics.child(metrics.REQUESTS, self.route, self.method, str(self.status), model).inc()
        metrics.child(metrics.DURATION, self.route).observe(duration)
        metrics.IN_FLIGHT.dec()
        if self.backend and fields.get("upstream"):
            metrics.child(metrics.UPSTREAM, self.backend, fields["upstream"]).inc()
        if fields.get("client_left"):
            metrics.DISCONNECTS.inc()
        if "ttft_ms" in fields:
            metrics.child(metrics.TTFT, model).observe(fields["ttft_ms"] / 1000)
        self._count_tokens(model, fields)
        if self.status == 429 or self.error == "limits_unavailable":
            metrics.RATE_LIMITED.labels(self.limit or "requests").inc()
        elif self.status in (401, 403):
            metrics.AUTH_REJECTED.labels(self.error or str(self.status)).inc()

    def _count_tokens(self, model: str, fields: dict[str, Any]) -> None:
        completion = fields.get("completion_tokens")
        if completion is None:
            return
        key = metrics.key_label(self.key or "anonymous")
        metrics.child(metrics.PROMPT_TOKENS, model, key).inc(fields.get("prompt_tokens", 0))
        metrics.child(metrics.COMPLETION_TOKENS, model, key).inc(completion)
        first = self.stream.first_piece_at if self.stream else None
        generating = time.monotonic() - (first or self.started)
        if completion and generating > 0:
            metrics.child(metrics.TOKEN_RATE, model).observe(completion / generating)
