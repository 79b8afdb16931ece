"""Open, stamp and finish the record of each request the gateway serves (Flask hooks)."""

from __future__ import annotations

import itertools
import os
import re

from flask import Response, g, request

from flask_inference_gateway.observability import context, metrics
from flask_inference_gateway.observability.record import RequestRecord

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_ID_SEED = os.urandom(8).hex()
_ids = itertools.count()


def request_id_from_client() -> str:
    """Return the client's X-Request-ID when well-formed, else a new id."""
    sent = request.headers.get("X-Request-ID")
    if sent and REQUEST_ID.fullmatch(sent):
        return sent
    # A random part drawn once per process, then a counter: unique, and no
    # system call per request.
    return f"{_ID_SEED}{next(_ids):016x}"


def begin() -> None:
    """Open the current request's record (a before_request hook)."""
    current_record()


def current_record() -> RequestRecord:
    """Return the current request's record, creating it on first use."""
    record = g.get("gateway_record")
    if record is None:
        rule = request.url_rule
        record = RequestRecord(request_id_from_client(), request.method,
                               rule.rule if rule is not None else "unmatched")
        g.gateway_record = record
        context.attach(record)
        metrics.IN_FLIGHT.inc()
    return record


def end(response: Response) -> Response:
    """Stamp the response with its request id; finish the record when it is sent."""
    record = current_record()
    record.status = response.status_code
    # The caller was identified before the record opened (rate limits come first).
    record.key = record.key or getattr(g.get("gateway_identity"), "name", None)
    response.headers["X-Request-ID"] = record.request_id
    response.call_on_close(record.finish)
    return response


def detach(_exc: BaseException | None = None) -> None:
    """Forget the record at teardown; a stream still holds it until it is sent."""
    context.attach(None)
