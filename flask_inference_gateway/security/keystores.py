"""Where named API keys live: a key file on one machine, or Redis shared by every replica.

Both hold only ``hash_key`` digests and each key's settings. In Redis, the
hash ``gw:keys`` maps a key's digest to its entry as JSON, and every change
bumps the counter ``gw:keys:version``, which each gateway worker checks at
most once a second: a revoke holds on every replica within a second.
"""

from __future__ import annotations

import json
import logging
import os
from urllib.parse import urlsplit

import redis

from flask_inference_gateway.fleet.store import connect
from flask_inference_gateway.security.keys import (
    EntryStore,
    KeyEntry,
    KeyStore,
    StoreUnavailable,
    read_key_file,
    write_key_file,
)
from flask_inference_gateway.settings import ConfigError, Settings

log = logging.getLogger(__name__)

KEYS_HASH = "gw:keys"
VERSION_KEY = "gw:keys:version"

# A version counter that starts at the clock's seconds: after Redis lost its
# data, a fresh counter cannot come back to a value a gateway already holds.
BUMP = """
if redis.replicate_commands then redis.replicate_commands() end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], redis.call('TIME')[1])
end
redis.call('INCR', KEYS[2])
"""

# ARGV: digest, name, entry JSON. Returns 1, or 0 when the name or digest is taken.
ADD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end
for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, entry = pcall(cjson.decode, raw)
  if ok and type(entry) == 'table' and entry.name == ARGV[2] then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
""" + BUMP + "return 1"

# ARGV: name. Returns how many entries had that name (0 or 1).
REMOVE = """
local all, removed = redis.call('HGETALL', KEYS[1]), 0
for i = 1, #all, 2 do
  local ok, entry = pcall(cjson.decode, all[i + 1])
  if ok and type(entry) == 'table' and entry.name == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    removed = removed + 1
  end
end
if removed > 0 then
""" + BUMP + "end\nreturn removed"


class KeyExists(Exception):
    """A key with this name (or this very key) is stored already."""


class FileEntries:
    """Entries in a JSON key file, written atomically with mode 0600."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.where = path

    def stamp(self) -> object:
        """Return the file's modification time and size (None: no file)."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def load(self) -> tuple[object, list[KeyEntry]]:
        """Return the stamp and the entries."""
        return self.stamp(), read_key_file(self.path)

    def entries(self) -> list[KeyEntry]:
        """Return every entry, in the file's order."""
        return read_key_file(self.path)

    def add(self, entry: KeyEntry) -> None:
        """Append ``entry``; raise KeyExists when its name or hash is taken."""
        entries = read_key_file(self.path)
        if any(e.name == entry.name or e.hash == entry.hash for e in entries):
            raise KeyExists(entry.name)
        write_key_file(self.path, [*entries, entry])

    def remove(self, name: str) -> bool:
        """Delete the entry named ``name``; return whether there was one."""
        entries = read_key_file(self.path)
        kept = [entry for entry in entries if entry.name != name]
        if len(kept) == len(entries):
            return False
        write_key_file(self.path, kept)
        return True


def public_url(url: str) -> str:
    """Return ``url`` without its user name and password, fit for messages."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


class RedisEntries:
    """Entries in Redis: ``gw:keys`` (digest → entry JSON) and its ``gw:keys:version``."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout
        self.where = f"Redis {public_url(url)}"

    def _client(self) -> redis.Redis:
        return connect(self.url, self.timeout)  # per process: right after a fork, too

    def _unavailable(self, exc: redis.RedisError) -> StoreUnavailable:
        return StoreUnavailable(f"{self.where}: {exc}")

    def stamp(self) -> object:
        """Return the version counter (None before the first change)."""
        try:
            return self._client().get(VERSION_KEY)
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def load(self) -> tuple[object, list[KeyEntry]]:
        """Return the version and the entries, read in one transaction."""
        try:
            with self._client().pipeline(transaction=True) as pipe:
                version, table = pipe.get(VERSION_KEY).hgetall(KEYS_HASH).execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        return version, parse_entries(table)

    def entries(self) -> list[KeyEntry]:
        """Return every entry, oldest first."""
        return sorted(self.load()[1], key=lambda e: (e.created_at, e.name))

    def add(self, entry: KeyEntry) -> None:
        """Store ``entry``; raise KeyExists when its name or hash is taken."""
        text = json.dumps(entry.to_dict(), separators=(",", ":"))
        if not self._run(ADD, entry.hash, entry.name, text):
            raise KeyExists(entry.name)

    def remove(self, name: str) -> bool:
        """Delete the entry named ``name``; return whether there was one."""
        return bool(self._run(REMOVE, name))

    def _run(self, script: str, *args: str) -> int:
        try:
            return int(self._client().eval(script, 2, KEYS_HASH, VERSION_KEY, *args))
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc


def parse_entries(table: dict[bytes, bytes]) -> list[KeyEntry]:
    """Return the entries of ``gw:keys``; one that does not parse is left out and logged."""
    entries, bad = [], 0
    for digest, text in table.items():
        try:
            entry = KeyEntry.from_dict(json.loads(text))
        except (ValueError, TypeError, AttributeError):
            bad += 1
            continue
        if entry.hash != digest.decode():
            bad += 1
            continue
        entries.append(entry)
    if bad:
        log.error("%d entries of %s do not parse; they authenticate nobody", bad, KEYS_HASH)
    return entries


def open_entries(settings: Settings) -> EntryStore | None:
    """Return the store GATEWAY_KEYS_BACKEND names (None: no key file configured)."""
    if settings.keys_backend == "redis":
        if not settings.redis_url:
            raise ConfigError("GATEWAY_KEYS_BACKEND=redis needs GATEWAY_REDIS_URL.")
        return RedisEntries(settings.redis_url, settings.redis_timeout)
    return FileEntries(settings.api_keys_file) if settings.api_keys_file else None


def open_key_store(settings: Settings) -> KeyStore:
    """Return the key store that authenticates this gateway's requests."""
    return KeyStore(settings.api_keys, open_entries(settings),
                    fail_open=settings.redis_fail_open)
