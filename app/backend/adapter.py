"""What every model-server adapter shares: the gateway's timeouts on whole answers and streams."""

from __future__ import annotations

from typing import Any

from app.backend.base import LineDecoder, Timeouts, TokenStream, call_timeout
from app.backend.http import HttpBackend, read_json


class Adapter(HttpBackend):
    """An HttpBackend that applies the gateway's Timeouts and deadlines to every call."""

    def __init__(self, base_url: str, *, timeouts: Timeouts, pool_size: int,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(base_url, pool_size=pool_size, headers=headers)
        self.timeouts = timeouts

    def post_whole(self, path: str, payload: dict[str, Any], deadline: float | None,
                   read: float) -> Any:
        """POST ``payload`` and return the JSON answer, waiting ``read`` at most."""
        deadline = deadline or self.timeouts.deadline()
        response = self.post(path, payload, stream=False,
                             timeout=call_timeout(self.timeouts, deadline, read))
        return read_json(response, path)

    def post_stream(self, path: str, payload: dict[str, Any], decode: LineDecoder,
                    model: str, deadline: float | None) -> TokenStream:
        """POST ``payload`` and return its streamed answer; the caller must close it."""
        deadline = deadline or self.timeouts.deadline()
        # Servers send their headers with the first token: the first-token timeout.
        response = self.post(path, payload, stream=True,
                             timeout=call_timeout(self.timeouts, deadline,
                                                  self.timeouts.first_token))
        return TokenStream(response, model, decode, self.timeouts, deadline)
