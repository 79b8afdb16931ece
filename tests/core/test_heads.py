"""Heads parsed without the email parser read as http.client reads them; bad ones are refused."""

from __future__ import annotations

import http.client
import io
import json

import pytest

from flask_inference_gateway.core import heads
from flask_inference_gateway.core.errors import BadRequest, HTTPError
from flask_inference_gateway.core.heads import (
    check_request_line,
    error_answer,
    parse_headers,
    parse_request_headers,
)

HEADS = {
    "plain": b"Content-Type: application/json\r\nContent-Length: 12\r\n\r\n",
    "duplicates": b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-A: 1\r\n\r\n",
    "odd spacing": b"X-A:no-space\r\nX-B: \t tabbed  \r\nX-Empty:\r\nX-C:  \r\n\r\n",
    "folded": b"X-Long: first\r\n second\r\nX-B: 2\r\n\r\n",
    "no colon": b"X-A: 1\r\nnot a header\r\nX-B: 2\r\n\r\n",
    "bare LF": b"X-A: 1\nX-B: 2\n\n",
    "space in name": b"X A: 1\r\nX-B: 2\r\n\r\n",
    "latin-1": b"X-Name: caf\xe9\r\n\r\n",
    "empty": b"\r\n",
}


@pytest.mark.parametrize("head", HEADS.values(), ids=HEADS.keys())
def test_parse_headers_reads_what_http_client_reads(head: bytes) -> None:
    ours, theirs = parse_headers(io.BytesIO(head)), http.client.parse_headers(io.BytesIO(head))
    assert ours.items() == theirs.items()
    assert [type(d) for d in ours.defects] == [type(d) for d in theirs.defects]
    assert isinstance(ours, http.client.HTTPMessage)


def test_parse_headers_keeps_http_clients_limits() -> None:
    head = b"".join(b"X-%d: 1\r\n" % i for i in range(http.client._MAXHEADERS + 1)) + b"\r\n"
    with pytest.raises(http.client.HTTPException):
        parse_headers(io.BytesIO(head))


def test_a_plain_head_skips_the_email_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the email parser ran")
    monkeypatch.setattr(heads.email.parser.Parser, "parsestr", refuse)
    assert parse_headers(io.BytesIO(HEADS["plain"]))["content-length"] == "12"


def request_head(*lines: str) -> io.BytesIO:
    return io.BytesIO("".join(line + "\r\n" for line in lines).encode() + b"\r\n")


FRAMINGS = {
    "no body": ((), None),
    "a length": (("Content-Length: 12",), None),
    "chunked": (("Transfer-Encoding: Chunked ",), None),
    "one length twice": (("Content-Length: 5", "Content-Length: 005"), None),
    "two lengths": (("Content-Length: 30", "Content-Length: 5"), "different values"),
    "a length and chunked": (("Content-Length: 5", "Transfer-Encoding: chunked"), "both"),
    "chunked twice": (("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), "alone"),
    "gzip then chunked": (("Transfer-Encoding: gzip, chunked",), "alone"),
    "a length list": (("Content-Length: 5, 5",), "whole number"),
    "negative": (("Content-Length: -1",), "whole number"),
    "underscored": (("Content-Length: 1_0",), "whole number"),  # int() reads it as 10
    "superscript": (("Content-Length: \u00b2",), "whole number"),  # str.isdigit() says yes
}


@pytest.mark.parametrize(("lines", "problem"), FRAMINGS.values(), ids=FRAMINGS.keys())
def test_a_request_whose_body_length_is_ambiguous_is_refused(
        lines: tuple[str, ...], problem: str | None) -> None:
    head = request_head(*lines)
    if problem is None:
        assert parse_request_headers(head).get_all("content-length") == \
            http.client.parse_headers(request_head(*lines)).get_all("content-length")
    else:
        with pytest.raises(BadRequest, match=problem):
            parse_request_headers(head)


def test_a_request_head_too_big_is_a_bad_request_saying_why() -> None:
    with pytest.raises(BadRequest, match="more than 100 header lines"):
        parse_request_headers(request_head(*(f"X-{i}: 1" for i in range(101))))
    with pytest.raises(BadRequest, match="longer than 65536 bytes"):
        parse_request_headers(request_head("X-A: " + "a" * 70000))


@pytest.mark.parametrize("line", ["GET / HTTP/1.1", "POST /v1/chat HTTP/1.0", "GET / HTTP/1.2",
                                  "GET /"])
def test_a_request_line_of_http_1_passes(line: str) -> None:
    check_request_line(line + "\r\n")


@pytest.mark.parametrize("line", ["GET / HTTP/2.0", "GET / HTTP/1", "GET / http/1.1",
                                  "GET / HTTP/1.1x"])
def test_a_request_line_of_another_version_is_refused(line: str) -> None:
    with pytest.raises(BadRequest, match="HTTP/1.1"):
        check_request_line(line + "\r\n")


def test_an_error_answer_is_whole_json_in_the_gateways_shape_and_closes() -> None:
    answer = error_answer(HTTPError(414, "Too long."))
    head, body = answer.split(b"\r\n\r\n")
    assert head.split(b"\r\n") == [b"HTTP/1.1 414 Request-URI Too Long",
                                    b"Content-Type: application/json",
                                    b"Content-Length: %d" % len(body), b"Connection: close"]
    assert json.loads(body) == {"error": {"type": "http_error", "message": "Too long."}}
