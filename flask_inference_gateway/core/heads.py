"""Read an HTTP head's header lines, as http.client does, without the email parser.

http.client (for backend responses) and gevent's WSGI server (for client
requests) parse every head with the ``email`` package's feed parser: a few
per cent of the gateway's CPU per request. A head of plain ``Name: value``
lines is split directly into the same message object; any other head
(folded lines, bare line feeds, a line without a colon) still goes through
the email parser, so what a caller reads is the same either way.
"""

from __future__ import annotations

import email.parser
import http.client
from typing import Any, BinaryIO

TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


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
