"""Who is calling: API keys from the Authorization or X-API-Key header."""

from __future__ import annotations

from flask import current_app, g, request

from flask_inference_gateway.api.state import gateway
from flask_inference_gateway.core.errors import GatewayError, Unauthorized
from flask_inference_gateway.security.keys import Principal

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


def authenticate(raw: str | None) -> Principal | GatewayError:
    """Return the principal of the key ``raw`` (None: no key sent), or the error."""
    keys = gateway().keys
    if keys is None:
        return Principal("addr:" + client_address())
    if keys.empty:
        return Unauthorized(NO_KEYS)
    if raw is None:
        return Unauthorized()
    return keys.authenticate(raw) or Unauthorized("The API key is not valid.")


def identify() -> Principal | GatewayError:
    """Authenticate the current request once; return its principal or the error."""
    cached = g.get("gateway_identity")
    if cached is None:
        cached = g.gateway_identity = authenticate(presented_key())
    return cached


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


def authenticates_itself() -> bool:
    """Return whether the current route checks the key itself (WebSocket: in a message)."""
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "authenticates_itself", False))


def require_key() -> None:
    """Refuse a request to a protected route that carries no valid key."""
    if not is_public() and not authenticates_itself():
        current_principal()


def rate_limit_key() -> str:
    """Return what request-rate limits count by: the key's name, else the address."""
    result = identify()
    return result.name if isinstance(result, Principal) else "addr:" + client_address()
