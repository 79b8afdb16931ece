"""API keys: named principals, stored only as SHA-256 hashes, re-read when the file changes."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from flask_inference_gateway.core.types import Caller

log = logging.getLogger(__name__)

KEY_PREFIX = "gw-"
RELOAD_CHECK_SECONDS = 1.0
INDEX_CHARS = 15  # "sha256:" and 8 hex digits


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
    """One named key as the key file stores it."""

    name: str
    hash: str
    models: list[str] | None = None
    rate_limit: str | None = None
    tokens_per_minute: int | None = None
    max_streams: int | None = None
    admin: bool = False
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def principal(self) -> Principal:
        """Return the principal this entry authenticates."""
        return Principal(self.name, frozenset(self.models) if self.models else None,
                         self.rate_limit, self.tokens_per_minute, self.max_streams, self.admin)


def read_key_file(path: str) -> list[KeyEntry]:
    """Return the entries of a key file; a missing file has none."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return []
    return [KeyEntry(**entry) for entry in data.get("keys", [])]


def write_key_file(path: str, entries: list[KeyEntry]) -> None:
    """Replace the key file atomically, readable by its owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"keys": [asdict(e) for e in entries]}, handle, indent=2)
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


class KeyStore:
    """Authenticate raw keys against the environment's keys and the key file."""

    def __init__(self, env_keys: str, key_file: str) -> None:
        self.key_file = key_file
        self._env = parse_env_keys(env_keys)
        self._file: dict[str, Principal] = {}
        self._index: dict[str, list[tuple[str, Principal]]] = {}
        self._file_stamp: tuple[float, int] | None = None
        self._next_check = 0.0
        self._build_index()
        self.reload()

    def _build_index(self) -> None:
        index: dict[str, list[tuple[str, Principal]]] = {}
        for table in (self._env, self._file):
            for stored, principal in table.items():
                index.setdefault(stored[:INDEX_CHARS], []).append((stored, principal))
        self._index = index

    @property
    def empty(self) -> bool:
        """Return whether no key at all is configured."""
        self._maybe_reload()
        return not self._env and not self._file

    def authenticate(self, raw: str) -> Principal | None:
        """Return the principal whose key is ``raw``, or None.

        Candidates are found by the first bytes of the key's SHA-256 digest
        (which say nothing useful about any key); the whole digest is then
        checked with a constant-time comparison.
        """
        self._maybe_reload()
        digest = hash_key(raw)
        for stored, principal in self._index.get(digest[:INDEX_CHARS], ()):
            if hmac.compare_digest(stored, digest):
                return principal
        return None

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RELOAD_CHECK_SECONDS
            self.reload()

    def reload(self) -> None:
        """Re-read the key file if it changed; keep the old keys if it is unreadable."""
        if not self.key_file:
            return
        try:
            stat = os.stat(self.key_file)
            stamp: tuple[float, int] | None = (stat.st_mtime, stat.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._file_stamp:
            return
        try:
            entries = read_key_file(self.key_file)
        except (OSError, ValueError, TypeError) as exc:
            log.error("key file %s is unreadable, keeping the previous keys: %s",
                      self.key_file, exc)
            return
        self._file = {entry.hash: entry.principal() for entry in entries}
        self._file_stamp = stamp
        self._build_index()
        log.info("loaded %d API keys from %s", len(self._file), self.key_file)

    def describe(self) -> dict[str, Any]:
        """Return counts for logs and readiness output (never keys or hashes)."""
        return {"env_keys": len(self._env), "file_keys": len(self._file)}
