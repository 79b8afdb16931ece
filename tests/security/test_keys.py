"""API keys: hashing, the key file, the environment's keys, reloading, the Redis store."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flask_inference_gateway.security import keys
from flask_inference_gateway.security.keys import (
    KeyEntry,
    KeyStore,
    Principal,
    hash_key,
    new_key,
    parse_env_keys,
    read_key_file,
    write_key_file,
)
from flask_inference_gateway.security.keystores import FileEntries, KeyExists


def test_keys_are_random_and_stored_as_sha256() -> None:
    first, second = new_key(), new_key()
    assert first != second and first.startswith("gw-") and len(first) > 40
    assert hash_key("abc") == ("sha256:ba7816bf8f01cfea414140de5dae2223"
                               "b00361a396177a9cb410ff61f20015ad")


@pytest.mark.parametrize(("models", "model", "allowed"), [
    (None, "anything", True),
    (frozenset({"llama3.2"}), "llama3.2", True),
    (frozenset({"llama3.2"}), "llama3.2:latest", True),
    (frozenset({"llama3.2"}), "qwen", False),
    (frozenset({"llama3.2:latest"}), "llama3.2:8b", False),
], ids=["all", "listed", "latest-tag", "unlisted", "other-tag"])
def test_model_permission(models, model: str, allowed: bool) -> None:
    assert Principal("k", models).may_use(model) is allowed


def test_environment_keys_are_named_without_revealing_them() -> None:
    table = parse_env_keys("alice:secret-a, secret-b ,")
    names = sorted(p.name for p in table.values())
    assert names[0] == "alice" and names[1].startswith("env-")
    assert "secret" not in names[1]
    assert set(table) == {hash_key("secret-a"), hash_key("secret-b")}


def test_key_file_round_trip_is_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    entry = KeyEntry(name="bob", hash=hash_key("k"), models=["sim"], rate_limit="5/minute",
                     tokens_per_minute=100, max_streams=2)
    write_key_file(str(path), [entry])
    assert read_key_file(str(path)) == [entry]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "k\"" not in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["keys.json"]


def test_missing_key_file_has_no_keys(tmp_path: Path) -> None:
    assert read_key_file(str(tmp_path / "absent.json")) == []
    assert KeyStore("", FileEntries(str(tmp_path / "absent.json"))).empty


def test_authenticate_from_both_sources(tmp_path: Path) -> None:
    path = str(tmp_path / "keys.json")
    write_key_file(path, [KeyEntry(name="bob", hash=hash_key("bob-key"), max_streams=3)])
    store = KeyStore("alice:alice-key", FileEntries(path))
    assert store.authenticate("alice-key") == Principal("alice")
    assert store.authenticate("bob-key") == Principal("bob", max_streams=3)
    assert store.authenticate("bob-key ") is None
    assert store.authenticate("") is None


def test_key_file_changes_are_picked_up(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "RELOAD_CHECK_SECONDS", 0.0)
    path = str(tmp_path / "keys.json")
    write_key_file(path, [KeyEntry(name="old", hash=hash_key("old-key"))])
    store = KeyStore("", FileEntries(path))
    assert store.authenticate("old-key")
    write_key_file(path, [KeyEntry(name="new", hash=hash_key("new-key-longer"))])
    assert store.authenticate("old-key") is None
    assert store.authenticate("new-key-longer") == Principal("new")


def test_unreadable_key_file_keeps_the_previous_keys(tmp_path: Path, caplog,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "RELOAD_CHECK_SECONDS", 0.0)
    path = tmp_path / "keys.json"
    write_key_file(str(path), [KeyEntry(name="old", hash=hash_key("old-key"))])
    store = KeyStore("", FileEntries(str(path)))
    path.write_text("{not json at all")
    assert store.authenticate("old-key") == Principal("old")
    assert "unreadable" in caplog.text


def test_weight_and_priority_are_stored_and_old_files_still_load(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"keys": [{"name": "old", "hash": "sha256:00", "admin": false,'
                    ' "added_by_a_newer_gateway": 1}]}')
    old = read_key_file(str(path))[0]
    assert (old.weight, old.priority) == (1.0, False)
    assert old.principal().caller() == Principal("old").caller()
    entry = KeyEntry(name="batch", hash=hash_key("b"), weight=0.25, priority=True)
    write_key_file(str(path), [entry])
    assert read_key_file(str(path)) == [entry]
    principal = entry.principal()
    assert (principal.weight, principal.priority) == (0.25, True)


def test_file_entries_add_and_remove(tmp_path: Path) -> None:
    store = FileEntries(str(tmp_path / "keys.json"))
    store.add(KeyEntry(name="a", hash=hash_key("a-key")))
    for clash in (KeyEntry(name="a", hash=hash_key("other")),
                  KeyEntry(name="b", hash=hash_key("a-key"))):
        with pytest.raises(KeyExists):
            store.add(clash)
    assert [e.name for e in store.entries()] == ["a"]
    assert store.remove("a") and not store.remove("a")
    assert store.entries() == []


def test_no_store_and_no_environment_keys_is_empty() -> None:
    store = KeyStore("")
    assert store.empty and store.authenticate("anything") is None
