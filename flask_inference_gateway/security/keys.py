"""API keys: named principals, stored only as SHA-256 hashes, reloaded when their store changes."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Protocol

from flask_inference_gateway.core.errors import LimitsUnavailable
from flask_inference_gateway.core.types import Caller
from flask_inference_gateway.fleet.store import Outage

log = logging.getLogger(__name__)

KEY_PREFIX = "gw-"
RELOAD_CHECK_SECONDS = 1.0
INDEX_CHARS = 15  # "sha256:" and 8 hex digits
KEYS_UNAVAILABLE = "The API key store cannot be reached; retry shortly."


def hash_key(raw: str) -> str:
    """Return the stored form of a key: 'sha256:<hex>'."""
    return "sha256:" + hashlib.sha256(raw.encode()).hexdigest()


def new_key() -> str:
    """Return a fresh random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what that key may do; None means the gateway's default."""

    name: str
    models: frozenset[str] | None = None
    rate_limit: str | None = None
    tokens_per_minute: int | None = None
    max_streams: int | None = None
    admin: bool = False  # may manage models (Ollama's /api/pull, /api/delete, ...)
    weight: float = 1.0  # share of backend slots while requests queue (fair queueing)
    priority: bool = False  # queued requests are served before everyone else's

    def caller(self) -> Caller:
        """Return who this key is to the admission queue."""
        return Caller(self.name, self.weight, self.priority)

    def may_use(self, model: str) -> bool:
        """Return whether this key may run ``model`` (a bare name also allows ':latest')."""
        if self.models is None:
            return True
        return model in self.models or model.removesuffix(":latest") in self.models


@dataclass
class KeyEntry:
    """One named key as a key store holds it: its hash and settings, never the key."""

    name: str
    hash: str
    models: list[str] | None = None
    rate_limit: str | None = None
    tokens_per_minute: int | None = None
    max_streams: int | None = None
    admin: bool = False
    weight: float = 1.0
    priority: bool = False
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyEntry:
        """Build an entry from its stored form; fields a newer gateway added are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})

    def to_dict(self) -> dict[str, Any]:
        """Return the entry's stored form."""
        return asdict(self)

    def principal(self) -> Principal:
        """Return the principal this entry authenticates."""
        return Principal(self.name, frozenset(self.models) if self.models else None,
                         self.rate_limit, self.tokens_per_minute, self.max_streams, self.admin,
                         float(self.weight), self.priority)


def read_key_file(path: str) -> list[KeyEntry]:
    """Return the entries of a key file; a missing file has none."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return []
    return [KeyEntry.from_dict(entry) for entry in data.get("keys", [])]


def write_key_file(path: str, entries: list[KeyEntry]) -> None:
    """Replace the key file atomically, readable by its owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"keys": [e.to_dict() for e in entries]}, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def parse_env_keys(raw: str) -> dict[str, Principal]:
    """Return {hash: principal} for GATEWAY_API_KEYS ('key' or 'name:key', comma-separated)."""
    found: dict[str, Principal] = {}
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, key = item.partition(":")
        if not sep:
            key = item
            name = "env-" + hash_key(item)[7:15]  # names a key without revealing it
        found[hash_key(key)] = Principal(name)
    return found


class StoreUnavailable(Exception):
    """A shared key store (Redis) did not answer; the message names it, never a secret."""


class EntryStore(Protocol):
    """Where named key entries live (security/keystores.py: a key file, or Redis)."""

    where: str  # for messages and logs: a path or a URL without its password

    def stamp(self) -> object:
        """Return a value that changes whenever the entries change."""

    def load(self) -> tuple[object, list[KeyEntry]]:
        """Return the stamp and the entries, read together."""

    def entries(self) -> list[KeyEntry]:
        """Return every entry."""

    def add(self, entry: KeyEntry) -> None:
        """Store a new entry; raise KeyExists when its name or hash is taken."""

    def remove(self, name: str) -> bool:
        """Delete the entry named ``name``; return whether there was one."""


class KeyStore:
    """Authenticate raw keys against the environment's keys and an entry store.

    The store is checked at most once a second and reloaded when its stamp
    changed. When it cannot be reached, the keys loaded last stay in force; a
    store never loaded fails closed (503) when ``fail_open`` is false.
    """

    def __init__(self, env_keys: str, source: EntryStore | None = None, *,
                 fail_open: bool = True) -> None:
        self.source = source
        self.fail_open = fail_open
        self._env = parse_env_keys(env_keys)
        self._stored: dict[str, Principal] = {}
        self._index: dict[str, list[tuple[str, Principal]]] = {}
        self._stamp: object = None
        self._loaded = source is None  # no store: nothing to load
        self._unreachable = False
        self._outage = Outage(f"API keys in {source.where if source else 'none'}",
                              fail_open=fail_open)
        self._next_check = 0.0
        self._build_index()
        self.reload()

    def _build_index(self) -> None:
        index: dict[str, list[tuple[str, Principal]]] = {}
        for table in (self._env, self._stored):
            for stored, principal in table.items():
                index.setdefault(stored[:INDEX_CHARS], []).append((stored, principal))
        self._index = index

    @property
    def empty(self) -> bool:
        """Return whether no key at all is configured (a store not read yet may hold some)."""
        self._maybe_reload()
        return not self._env and not self._stored and self._loaded

    def authenticate(self, raw: str) -> Principal | None:
        """Return the principal whose key is ``raw``, or None.

        Candidates are found by the first bytes of the key's SHA-256 digest
        (which say nothing useful about any key); the whole digest is then
        checked with a constant-time comparison. Raises LimitsUnavailable for
        an unknown key while a store never loaded is unreachable (fail closed).
        """
        self._maybe_reload()
        digest = hash_key(raw)
        for stored, principal in self._index.get(digest[:INDEX_CHARS], ()):
            if hmac.compare_digest(stored, digest):
                return principal
        if self._unreachable and not self._loaded and not self.fail_open:
            raise LimitsUnavailable(KEYS_UNAVAILABLE)
        return None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_CHECK_SECONDS
            self.reload()

    def reload(self) -> None:
        """Reload the entries if their store changed; keep the old ones if it fails."""
        if self.source is None:
            return
        try:
            if self._loaded and self.source.stamp() == self._stamp:
                self._store_answered()
                return
            stamp, entries = self.source.load()
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("API keys in %s are unreadable, keeping the previous keys: %s",
                      self.source.where, exc)
            return
        self._store_answered()
        self._stored = {entry.hash: entry.principal() for entry in entries}
        self._stamp, self._loaded = stamp, True
        self._build_index()
        log.info("loaded %d API keys from %s", len(self._stored), self.source.where)

    def _store_answered(self) -> None:
        self._unreachable = False
        self._outage.recovered()

    def _store_failed(self, exc: StoreUnavailable) -> None:
        self._unreachable = True
        # Keys loaded before the outage stay valid, so only a store never loaded
        # fails closed; the warning (once per outage) says which applies.
        self._outage.fail_open = self.fail_open or self._loaded
        with contextlib.suppress(LimitsUnavailable):  # raised to requests by authenticate
            self._outage.failed(exc)

    def describe(self) -> dict[str, Any]:
        """Return counts for logs and readiness output (never keys or hashes)."""
        return {"env_keys": len(self._env), "stored_keys": len(self._stored)}
