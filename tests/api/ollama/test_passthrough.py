"""An Ollama client in front of Ollama reads the backend's own lines, as it sent them."""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
import pytest
from flask.testing import FlaskClient

from tests.api.ollama.test_routes import body_for
from tests.fake_ollama import FakeOllama
from tests.observability.test_record import access_lines


@pytest.mark.parametrize("kind", ["generate", "chat"])
def test_the_client_reads_exactly_what_ollama_sent(client: FlaskClient, fake_ollama: FakeOllama,
                                                   kind: str) -> None:
    response = client.post(f"/api/{kind}", json=body_for(kind, "[[sim:tokens=5]] hi"))
    assert response.status_code == 200 and response.mimetype == "application/x-ndjson"
    assert response.get_data() == fake_ollama.streams_sent[-1]
    assert orjson.loads(response.get_data().splitlines()[-1])["eval_count"] == 5


def test_thinking_and_tool_calls_pass_in_ollamas_own_lines(client: FlaskClient,
                                                           fake_ollama: FakeOllama) -> None:
    body = body_for("chat", "[[sim:think=2]] [[sim:tool=get_weather]] hi",
                    tools=[{"type": "function", "function": {"name": "get_weather",
                                                            "parameters": {"type": "object"}}}])
    response = client.post("/api/chat", json=body)
    assert response.get_data() == fake_ollama.streams_sent[-1]
    lines = [orjson.loads(line) for line in response.get_data().splitlines()]
    assert any(line["message"].get("tool_calls") for line in lines)


def test_a_failure_mid_stream_is_the_gateways_error_line(client: FlaskClient) -> None:
    response = client.post("/api/generate", json=body_for("generate", "[[sim:die-after=2]] hi"))
    lines = [orjson.loads(line) for line in response.get_data().splitlines()]
    assert [line["response"] for line in lines[:2]] == [" tok0", " tok1"]
    assert set(lines[-1]) == {"error"} and "stream" in lines[-1]["error"]


def test_the_backend_is_asked_what_the_gateway_decides(client: FlaskClient,
                                                       fake_ollama: FakeOllama) -> None:
    client.post("/api/generate", json=body_for("generate"))
    assert fake_ollama.requests_seen[-1]["options"]["num_predict"] == 4096  # policy holds


def test_off_the_gateway_writes_its_own_lines(make_client: Callable[..., FlaskClient],
                                              fake_ollama: FakeOllama) -> None:
    client = make_client(GATEWAY_STREAM_PASSTHROUGH="0")
    response = client.post("/api/generate", json=body_for("generate", "[[sim:tokens=2]] hi"))
    assert response.get_data() != fake_ollama.streams_sent[-1]
    assert [orjson.loads(x)["response"] for x in response.get_data().splitlines()] == [
        " tok0", " tok1", ""]


def test_prompt_logging_decodes_every_token(make_client: Callable[..., FlaskClient],
                                            fake_ollama: FakeOllama,
                                            caplog: pytest.LogCaptureFixture) -> None:
    client = make_client(GATEWAY_LOG_PROMPTS="1")
    with caplog.at_level(logging.INFO, "flask_inference_gateway.access"):
        response = client.post("/api/generate", json=body_for("generate", "[[sim:tokens=2]] hi"))
        assert response.get_data() != fake_ollama.streams_sent[-1]  # the gateway's own lines
        response.close()  # which finishes the access line
    (line,) = access_lines(caplog)
    assert line.output == " tok0 tok1"
