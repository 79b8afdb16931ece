"""Heads parsed without the email parser read exactly as http.client reads them."""

from __future__ import annotations

import http.client
import io

import pytest

from flask_inference_gateway.core import heads
from flask_inference_gateway.core.heads import parse_headers

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
