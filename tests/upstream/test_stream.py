"""TokenStream priming and interruption, deadlines, and the first-token timeout."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from flask_inference_gateway.core.errors import (
    BackendError,
    BackendStreamBroken,
    BackendTimeout,
    ShuttingDown,
)
from flask_inference_gateway.core.types import Timeouts
from flask_inference_gateway.upstream import stream as base_module
from flask_inference_gateway.upstream.http import call_timeout
from flask_inference_gateway.upstream.ollama import LineDecoder, OllamaBackend
from flask_inference_gateway.upstream.stream import TokenStream, interrupt_all, parse_object
from tests.fake_ollama import FakeOllama
from tests.requests import typed

FINAL = b'{"done":true,"done_reason":"stop","eval_count":2}\n'


class FakeResponse:
    """A streamed response whose body arrives in the given chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.read, self.closed = chunks, 0, False
        self.raw, self.headers = None, {}

    def iter_content(self, chunk_size: int | None) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk

    def close(self) -> None:
        self.closed = True


def stream_of(*chunks: bytes) -> tuple[TokenStream, FakeResponse]:
    response = FakeResponse(list(chunks))
    return TokenStream(response, "m", LineDecoder(), Timeouts()), response  # type: ignore[arg-type]


def test_call_timeout_never_reaches_past_the_deadline() -> None:
    timeouts = Timeouts(connect=5.0)
    assert call_timeout(timeouts, time.monotonic() + 100, 30.0) == (5.0, 30.0)
    connect, read = call_timeout(timeouts, time.monotonic() + 2, 30.0)
    assert connect == pytest.approx(2, abs=0.1) and read == pytest.approx(2, abs=0.1)
    with pytest.raises(BackendTimeout, match="ran out of time"):
        call_timeout(timeouts, time.monotonic() - 0.01, 30.0)


def test_deadline_is_the_total_timeout_from_now() -> None:
    assert Timeouts(total=42).deadline() == pytest.approx(time.monotonic() + 42, abs=0.1)


@pytest.mark.parametrize(("line", "message"), [
    (b'{"error": "CUDA out of memory"}', "failed mid-stream: CUDA out of memory"),
    (b'{"error": {"message": "engine dead", "code": 500}}', "failed mid-stream: engine dead"),
    (b"not json", "not JSON"),
    (b"[1]", "not a JSON object"),
], ids=["ollama-error", "openai-error", "not-json", "not-an-object"])
def test_parse_object_raises_backend_errors(line: bytes, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        parse_object(line)


@pytest.mark.parametrize("line", [b'{"response": "a"}', b'{"response": "a", "error": null}'],
                         ids=["plain", "null-error"])
def test_parse_object_returns_objects(line: bytes) -> None:
    assert parse_object(line)["response"] == "a"


def test_prime_reads_up_to_the_first_pieces_and_keeps_them() -> None:
    stream, response = stream_of(b'{"response":""}\n', b'{"response":"a"}\n',
                                 b'{"response":"b"}\n', FINAL)
    stream.keep_text = True
    stream.prime()
    assert response.read == 2 and stream.pieces == 1 and stream.first_piece_at is not None
    assert [p for batch in stream.batches(60) for p in batch] == ["a", "b"]
    assert stream.text() == "ab" and stream.finished
    stream.close()


def test_prime_of_an_empty_generation_returns_at_its_end() -> None:
    stream, _ = stream_of(FINAL)
    stream.prime()
    assert stream.finished and list(stream) == []
    stream.close()


@pytest.mark.parametrize(("chunks", "error", "kind"), [
    ([b'{"response":""}\n'], BackendStreamBroken, "backend_stream_broken"),
    ([b'{"error":"model failed to load"}\n'], BackendError, "backend_error"),
], ids=["cut", "error-line"])
def test_prime_failures_are_recorded(chunks: list[bytes], error: type, kind: str) -> None:
    stream, _ = stream_of(*chunks)
    with pytest.raises(error):
        stream.prime()
    assert stream.error == kind and stream.pieces == 0
    stream.close()


def backend_for(fake: FakeOllama, **timeouts: float) -> OllamaBackend:
    return OllamaBackend(fake.url, timeouts=Timeouts(connect=1.0, **timeouts), pool_size=2)


class SlowServer(threading.Thread):
    """Answer one request with a chunked NDJSON stream, pausing where told."""

    def __init__(self, script: list[bytes | float]) -> None:
        super().__init__(daemon=True)
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]

    def run(self) -> None:
        conn, _ = self.listener.accept()
        with conn, self.listener:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, body = request.split(b"\r\n\r\n", 1)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            try:
                for step in [*self.script, b""]:
                    if isinstance(step, float):
                        time.sleep(step)
                    else:
                        conn.sendall(b"%x\r\n%s\r\n" % (len(step), step))
            except OSError:
                pass


@pytest.mark.parametrize(("script", "ends"), [
    ([0.5, b'{"response":"a"}\n', b'{"response":"b"}\n', FINAL], None),
    ([b'{"response":"a"}\n', 0.5, b'{"response":"b"}\n', FINAL], BackendTimeout),
], ids=["slow-first-token", "slow-second-token"])
def test_first_token_may_take_longer_than_the_gap_between_tokens(
        script: list[bytes | float], ends: type | None) -> None:
    server = SlowServer(script)
    server.start()
    backend = OllamaBackend(server.url, timeouts=Timeouts(connect=1.0, first_token=3.0,
                                                          between_tokens=0.2), pool_size=1)
    stream = backend.stream(typed("generate", {"model": "sim", "prompt": "x"}))
    started = time.monotonic()
    stream.prime()  # waits through the silence: nothing may reach the client yet
    primed = time.monotonic() - started
    batches: list[list[str]] = []
    if ends is None:
        batches.extend(stream.batches(0.05))
        assert 0.4 < primed < 1.5
        assert [p for b in batches for p in b] == ["a", "b"] and stream.finished
    else:
        with pytest.raises(ends):
            batches.extend(stream.batches(0.05))
        assert batches[:1] == [["a"]] and [] in batches  # heartbeats, then the timeout
    stream.close()
    server.join(2)


def test_no_first_token_in_time(fake_ollama: FakeOllama) -> None:
    backend = backend_for(fake_ollama, first_token=0.3, between_tokens=5.0)
    stream = backend.stream(typed("generate", {"model": "sim", "prompt": "[[sim:hang]]"}))
    started = time.monotonic()
    with pytest.raises(BackendTimeout, match="first-token timeout"):
        stream.prime()
    assert 0.25 < time.monotonic() - started < 1.5
    assert stream.error == "backend_timeout"
    stream.close()


def test_total_deadline_ends_a_slow_stream(fake_ollama: FakeOllama) -> None:
    backend = backend_for(fake_ollama, first_token=5.0, between_tokens=5.0)
    deadline = time.monotonic() + 0.4
    stream = backend.stream(typed("generate", {"model": "sim",
                                         "prompt": "[[sim:itl=0.1]] [[sim:tokens=100]]"}),
                            deadline)
    pieces: list[str] = []
    with pytest.raises(BackendTimeout, match="total deadline"):
        pieces.extend(stream)
    assert time.monotonic() - deadline < 0.5 and 0 < len(pieces) < 100
    stream.close()


@pytest.mark.parametrize("primed", [True, False], ids=["streaming", "priming"])
def test_interrupt_all_ends_open_streams(fake_ollama: FakeOllama, primed: bool) -> None:
    backend = backend_for(fake_ollama, first_token=5.0, between_tokens=5.0)
    prompt = "[[sim:itl=0.05]] [[sim:tokens=500]]" if primed else "[[sim:hang]]"
    stream = backend.stream(typed("generate", {"model": "sim", "prompt": prompt}))
    if primed:
        stream.prime()
    timer = threading.Timer(0.2, interrupt_all, [ShuttingDown("draining")])
    timer.start()
    started = time.monotonic()
    with pytest.raises(ShuttingDown, match="draining"):
        list(stream) if primed else stream.prime()
    timer.join()
    assert time.monotonic() - started < 2
    assert (stream.error, stream.error_message) == ("shutting_down", "draining")
    stream.close()
    assert stream not in base_module._LIVE
    assert fake_ollama.wait_for("cancelled", 1, timeout=2)


def test_interrupt_after_the_end_or_close_changes_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    aborted: list[object] = []
    monkeypatch.setattr(base_module, "abort_response", aborted.append)
    ended, response = stream_of(b'{"response":"a"}\n', FINAL)
    assert list(ended) == ["a"]
    ended.interrupt(ShuttingDown())
    ended.close()
    assert aborted == [] and response.closed and ended.error is None
    unread, response = stream_of(b'{"response":"a"}\n', FINAL)
    unread.close()  # an unread stream is aborted once, on close
    unread.interrupt(ShuttingDown())
    assert aborted == [response]
