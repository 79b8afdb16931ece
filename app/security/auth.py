"""Who is calling: API keys from the Authorization or X-API-Key header."""

from __future__ import annotations

from flask import current_app, g, request

from app.errors import GatewayError, Unauthorized
from app.security.keys import Principal
from app.state import gateway

# restx's own endpoints: Swagger UI, the spec, the API root.
PUBLIC_RESTX_ENDPOINTS = frozenset({"doc", "specs", "root"})
NO_KEYS = ("No API key is configured on this gateway: create one with "
           "'flask --app wsgi keys create --name NAME', or set GATEWAY_API_KEYS.")


def presented_key() -> str | None:
    """Return the key the client sent, if any."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key") or None


def client_address() -> str:
    """Return the client's address (ProxyFix has applied trusted X-Forwarded-For)."""
    return request.remote_addr or "unknown"


def identify() -> Principal | GatewayError:
    """Authenticate the current request once; return its principal or the error."""
    cached = g.get("gateway_identity")
    if cached is not None:
        return cached
    keys = gateway().keys
    result: Principal | GatewayError
    if keys is None:
        result = Principal("addr:" + client_address())
    elif keys.empty:
        result = Unauthorized(NO_KEYS)
    elif (raw := presented_key()) is None:
        result = Unauthorized()
    else:
        result = keys.authenticate(raw) or Unauthorized("The API key is not valid.")
    g.gateway_identity = result
    return result


def current_principal() -> Principal:
    """Return the caller's principal, or raise 401."""
    result = identify()
    if isinstance(result, GatewayError):
        raise result
    return result


def is_public() -> bool:
    """Return whether the current route is open without a key (health, docs, preflight)."""
    if request.method == "OPTIONS":
        return True
    endpoint = request.endpoint or ""
    if endpoint.rsplit(".", 1)[-1] in PUBLIC_RESTX_ENDPOINTS:
        return True
    view = current_app.view_functions.get(endpoint)
    return bool(getattr(getattr(view, "view_class", None), "public", False))


def require_key() -> None:
    """Refuse a request to a protected route that carries no valid key."""
    if not is_public():
        current_principal()


def rate_limit_key() -> str:
    """Return what request-rate limits count by: the key's name, else the address."""
    result = identify()
    return result.name if isinstance(result, Principal) else "addr:" + client_address()
