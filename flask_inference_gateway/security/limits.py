"""Request-rate limits per key with Flask-Limiter; Redis makes them exact across workers."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response
from flask_limiter import Limiter, RateLimitExceeded

from flask_inference_gateway.core.errors import GatewayError, LimitsUnavailable, RateLimited
from flask_inference_gateway.fleet.store import connect
from flask_inference_gateway.security.keys import Principal
from flask_inference_gateway.settings import Settings

log = logging.getLogger(__name__)

# While Redis is down and the gateway fails open, Flask-Limiter counts in
# memory against this limit, which no client reaches: requests pass, the outage
# is logged once, and Redis is probed again with backoff until it answers.
FAIL_OPEN_LIMIT = "1000000/second"


class GatewayLimiter(Limiter):
    """Flask-Limiter speaking the gateway's errors: 429 with Retry-After, 503 on store failure.

    Flask-Limiter's own header injection is off: it would put Retry-After on
    every response (and stretch a backend's 503 Retry-After to the window's
    reset); ``add_headers`` writes the X-RateLimit-* headers instead.
    """

    _refusing = False  # fail-closed outage in progress: logged once

    def _check_request_limit(self, callable_name: str | None = None,
                             in_middleware: bool = True) -> None:
        try:
            super()._check_request_limit(callable_name, in_middleware)
        except RateLimitExceeded as exc:
            limit = self.current_limit
            retry = max(1, math.ceil(limit.reset_at - time.time())) if limit else 1
            raise RateLimited(f"Rate limit of {exc.description} exceeded; retry after the "
                              "time in Retry-After.", headers={"Retry-After": str(retry)},
                              limit="requests") from exc
        except Exception as exc:  # the store failed and the gateway fails closed
            if not self._refusing:
                self._refusing = True
                log.warning("rate-limit store unreachable, refusing requests: %s", exc)
            raise LimitsUnavailable() from exc
        if self._refusing:
            self._refusing = False
            log.warning("rate-limit store reachable again")

    def add_headers(self, response: Response) -> Response:
        """Tell the client its limit, what is left, and when the window resets."""
        try:
            limit = self.current_limit  # reads the window from the store
            if limit is not None and not self._storage_dead:
                response.headers["X-RateLimit-Limit"] = str(limit.limit.amount)
                response.headers["X-RateLimit-Remaining"] = str(limit.remaining)
                response.headers["X-RateLimit-Reset"] = str(limit.reset_at)
        except Exception as exc:  # the store failed after the request was let in
            log.debug("no rate-limit headers: the store failed: %s", exc)
        return response


def storage_settings(settings: Settings) -> dict[str, Any]:
    """Return Flask-Limiter's storage arguments for the configured store."""
    url = settings.redis_url
    if not url:
        return {"storage_uri": "memory://"}
    timeout = settings.redis_timeout
    fail_open = settings.redis_fail_open
    return {"storage_uri": url,
            # The process's one pool (fleet/store.py): timed calls, enough connections
            # for a gevent worker's thousand requests, idle ones closed with the rest.
            "storage_options": {"connection_pool": connect(url, timeout).connection_pool},
            "in_memory_fallback_enabled": fail_open,
            "in_memory_fallback": [FAIL_OPEN_LIMIT] if fail_open else None}


def build_limiter(settings: Settings, blueprint: Blueprint, *, key_func: Callable[[], str],
                  identify: Callable[[], Principal | GatewayError],
                  exempt_when: Callable[[], bool]) -> GatewayLimiter:
    """Return a limiter that applies each key's request-rate limit to ``blueprint``.

    ``key_func`` names what is counted (the key, else the address), ``identify``
    returns the caller (whose key may have a limit of its own), ``exempt_when``
    spares public routes.
    """
    default = settings.rate_limit

    def limit_for_caller() -> str:
        result = identify()
        if isinstance(result, Principal) and result.rate_limit:
            return result.rate_limit
        return default

    limiter = GatewayLimiter(key_func=key_func, strategy="moving-window",
                             headers_enabled=False, key_prefix="gateway",
                             **storage_settings(settings))
    # One shared counter per key for every gateway route, not one per route.
    limiter.shared_limit(limit_for_caller, scope="gateway", exempt_when=exempt_when)(blueprint)
    blueprint.after_request(limiter.add_headers)
    return limiter
