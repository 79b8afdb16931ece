"""Read an HTTP head's header lines, as http.client does, without the email parser.

http.client (for backend responses) and gevent's WSGI server (for client
requests) parse every head with the ``email`` package's feed parser: a few
per cent of the gateway's CPU per request. A head of plain ``Name: value``
lines is split directly into the same message object; any other head
(folded lines, bare line feeds, a line without a colon) still goes through
the email parser, so what a caller reads is the same either way.

A client's request head is also checked here for what gevent's server lets
through or reads differently from a proxy in front: an HTTP version other
than 1.x, and a body whose length two headers tell two ways (RFC 9112, 6);
one refused gets the head and JSON body of the gateway's error answer from here.
"""

from __future__ import annotations

import email.parser
import http.client
import json
import re
from typing import Any, BinaryIO

from flask_inference_gateway.core.errors import BadRequest, GatewayError

TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
HTTP_1 = re.compile(r"HTTP/1\.[0-9]")  # RFC 9112, 2.3: a later 1.x reads as 1.1


def parse_headers(fp: BinaryIO, _class: type = http.client.HTTPMessage) -> Any:
    """Read a head's header lines from ``fp`` into ``_class``, as http.client's does."""
    lines = http.client._read_headers(fp)  # enforces http.client's line and count limits
    text = b"".join(lines).decode("iso-8859-1")
    message = _class()
    for line in text.split("\r\n"):
        name, colon, value = line.partition(":")
        if not line:
            continue
        if not colon or not TOKEN_CHARS.issuperset(name or " ") or "\n" in value \
                or "\r" in value:
            # Folded lines, bare LFs, a missing colon: the email parser's rules.
            return email.parser.Parser(_class=_class).parsestr(text)
        message[name] = value.lstrip(" \t")
    return message


def check_request_line(line: str) -> None:
    """Refuse (BadRequest) a request line that names a version other than HTTP/1.x."""
    words = line.split()
    # gevent's server refuses HTTP/2.0 but crashes on "HTTP/1" (a traceback per request).
    if len(words) == 3 and not HTTP_1.fullmatch(words[2]):
        raise BadRequest("This server speaks HTTP/1.1; the request line names another "
                         "HTTP version.")


def parse_request_headers(fp: BinaryIO, _class: type = http.client.HTTPMessage) -> Any:
    """Read a request's header lines; refuse (BadRequest) too many, too long or ambiguous ones."""
    try:
        message = parse_headers(fp, _class)
    except http.client.LineTooLong:
        raise BadRequest(f"A header line is longer than {http.client._MAXLINE} bytes.") from None
    except http.client.HTTPException:  # the only other: more than _MAXHEADERS lines
        raise BadRequest(f"The request has more than {http.client._MAXHEADERS} header "
                         "lines.") from None
    problem = framing_problem(message)
    if problem:
        raise BadRequest(problem)
    return message


def framing_problem(message: Any) -> str | None:
    """Return why the body length of a request's headers is ambiguous, or None if it is not."""
    lengths = [value.strip(" \t") for value in message.get_all("content-length", ())]
    codings = message.get_all("transfer-encoding", ())
    # Where a proxy in front and this server disagree on where a body ends, the
    # rest of it is read as a second request (request smuggling): refuse instead.
    if codings and lengths:
        return "The request has both Transfer-Encoding and Content-Length; send only one."
    if codings and (len(codings) > 1 or codings[0].strip(" \t").lower() != "chunked"):
        return "Transfer-Encoding must be 'chunked' alone; no other coding is accepted."
    if not all(value.isascii() and value.isdigit() for value in lengths):
        return "Content-Length must be a whole number of bytes."
    if len({value.lstrip("0") for value in lengths}) > 1:
        # Repeats of one value are one length (RFC 9110, 8.6): only differing ones are refused.
        return "The request has Content-Length headers with different values."
    return None


def error_body(error: GatewayError) -> bytes:
    """Return ``error`` as the gateway's JSON error body."""
    error_json = {"error": {"type": error.type, "message": error.message}}
    return json.dumps(error_json, separators=(",", ":")).encode()


def error_head(error: GatewayError, body: bytes) -> tuple[str, list[tuple[str, str]]]:
    """Return the status and headers of an answer that carries ``body`` and closes."""
    return (f"{error.status} {http.HTTPStatus(error.status).phrase}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
             ("Connection", "close")])


def error_answer(error: GatewayError) -> bytes:
    """Return a whole HTTP answer carrying ``error``, after which the connection closes."""
    body = error_body(error)
    status, headers = error_head(error, body)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"HTTP/1.1 {status}\r\n{lines}\r\n".encode("latin-1") + body
