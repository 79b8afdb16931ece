"""flask keys create|ensure|list|revoke|import, on the key file and on Redis."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from flask import Flask

from flask_inference_gateway.security.keys import (
    KeyEntry,
    hash_key,
    new_key,
    read_key_file,
    write_key_file,
)
from tests.conftest import free_port
from tests.integration.redis_server import RedisServer


@pytest.fixture
def cli_app(make_app, tmp_path: Path) -> Flask:
    return make_app(GATEWAY_API_KEYS="", GATEWAY_API_KEYS_FILE=str(tmp_path / "k.json"))


def printed_key(output: str) -> str:
    match = re.search(r"gw-[\w-]{40,}", output)
    assert match, output
    return match.group(0)


def test_create_prints_the_key_once_and_stores_its_hash(cli_app: Flask, tmp_path: Path) -> None:
    result = cli_app.test_cli_runner().invoke(args=[
        "keys", "create", "--name", "alice", "--models", "llama3.2, sim", "--rate", "5/minute",
        "--tokens-per-minute", "1000", "--max-streams", "2"])
    assert result.exit_code == 0, result.output
    raw = printed_key(result.output)
    stored = (tmp_path / "k.json").read_text()
    assert raw not in stored
    entry = json.loads(stored)["keys"][0]
    assert entry["hash"] == hash_key(raw)
    assert (entry["models"], entry["rate_limit"], entry["tokens_per_minute"],
            entry["max_streams"]) == (["llama3.2", "sim"], "5/minute", 1000, 2)
    client = cli_app.test_client()
    ok = client.post("/v1/generate", json={"prompt": "hi", "model": "sim"},
                     headers={"Authorization": f"Bearer {raw}"})
    assert ok.status_code == 200


@pytest.mark.parametrize("admin", [True, False], ids=["admin", "not-admin"])
def test_admin_keys_may_manage_models(cli_app: Flask, tmp_path: Path, admin: bool) -> None:
    runner = cli_app.test_cli_runner()
    raw = printed_key(runner.invoke(args=["keys", "create", "--name", "ops"]
                                    + (["--admin"] if admin else [])).output)
    assert json.loads((tmp_path / "k.json").read_text())["keys"][0]["admin"] is admin
    assert f"admin={'yes' if admin else 'no'}" in runner.invoke(args=["keys", "list"]).output
    answer = cli_app.test_client().post("/api/pull", json={"model": "sim"},
                                         headers={"Authorization": f"Bearer {raw}"})
    assert (answer.status_code == 403) is not admin
    answer.close()  # an admin's pull streams progress: let it release the backend's answer


@pytest.mark.parametrize("args", [
    ["keys", "create"], ["keys", "create", "--name", "x", "--rate", "often"],
    ["keys", "create", "--name", "x", "--max-streams", "-1"], ["keys", "revoke", "nobody"],
], ids=["no-name", "bad-rate", "negative-streams", "revoke-unknown"])
def test_bad_arguments_fail_clearly(cli_app: Flask, args: list[str]) -> None:
    result = cli_app.test_cli_runner().invoke(args=args)
    assert result.exit_code != 0
    assert "Error" in result.output


def test_names_are_unique(cli_app: Flask) -> None:
    runner = cli_app.test_cli_runner()
    assert runner.invoke(args=["keys", "create", "--name", "bob"]).exit_code == 0
    again = runner.invoke(args=["keys", "create", "--name", "bob"])
    assert again.exit_code != 0 and "exists" in again.output


def test_list_shows_no_secrets_and_revoke_removes(cli_app: Flask, tmp_path: Path) -> None:
    runner = cli_app.test_cli_runner()
    raw = printed_key(runner.invoke(args=["keys", "create", "--name", "carol"]).output)
    listing = runner.invoke(args=["keys", "list"]).output
    assert "carol" in listing and raw not in listing and "sha256" not in listing
    assert runner.invoke(args=["keys", "revoke", "carol"]).exit_code == 0
    assert runner.invoke(args=["keys", "list"]).output.strip() == "No keys."


def test_ensure_creates_a_first_key_only_once(cli_app: Flask) -> None:
    runner = cli_app.test_cli_runner()
    first = runner.invoke(args=["keys", "ensure"])
    assert first.exit_code == 0 and printed_key(first.output)
    second = runner.invoke(args=["keys", "ensure"])
    assert second.exit_code == 0 and "none created" in second.output
    assert not re.search(r"gw-[\w-]{40,}", second.output)


def test_weight_and_priority_are_stored_and_listed(cli_app: Flask, tmp_path: Path) -> None:
    runner = cli_app.test_cli_runner()
    assert runner.invoke(args=["keys", "create", "--name", "batch", "--weight", "0.5",
                               "--priority"]).exit_code == 0
    assert runner.invoke(args=["keys", "create", "--name", "plain"]).exit_code == 0
    stored = {e["name"]: e for e in json.loads((tmp_path / "k.json").read_text())["keys"]}
    assert (stored["batch"]["weight"], stored["batch"]["priority"]) == (0.5, True)
    assert (stored["plain"]["weight"], stored["plain"]["priority"]) == (1.0, False)
    lines = runner.invoke(args=["keys", "list"]).output.splitlines()
    assert "\tweight=0.5\tpriority=yes\t" in lines[0] and lines[0].startswith("batch\t")
    assert "\tweight=1\tpriority=no\t" in lines[1]


@pytest.mark.parametrize("weight", ["0", "-1", "nan", "inf", "heavy"])
def test_a_weight_must_be_a_number_above_zero(cli_app: Flask, tmp_path: Path,
                                              weight: str) -> None:
    result = cli_app.test_cli_runner().invoke(
        args=["keys", "create", "--name", "w", "--weight", weight])
    assert result.exit_code == 2 and "--weight" in result.output, result.output
    assert not (tmp_path / "k.json").exists()


def write_old_file(path: Path, names: list[str]) -> dict[str, str]:
    """Write a key file with a key per name; return {name: key}."""
    raw = {name: new_key() for name in names}
    write_key_file(str(path), [KeyEntry(name, hash_key(key), max_streams=3, weight=2.0)
                               for name, key in raw.items()])
    return raw


def test_import_copies_new_names_and_skips_existing_ones(cli_app: Flask,
                                                         tmp_path: Path) -> None:
    runner = cli_app.test_cli_runner()
    kept = printed_key(runner.invoke(args=["keys", "create", "--name", "bob"]).output)
    raw = write_old_file(tmp_path / "old.json", ["ann", "bob", "cy"])
    result = runner.invoke(args=["keys", "import", str(tmp_path / "old.json")])
    assert result.exit_code == 0, result.output
    assert "Imported 2 keys" in result.output and "skipped 1 that exist there: bob." in \
        result.output
    entries = {e.name: e for e in read_key_file(str(tmp_path / "k.json"))}
    assert sorted(entries) == ["ann", "bob", "cy"]
    assert entries["ann"].hash == hash_key(raw["ann"]) and entries["ann"].max_streams == 3
    assert entries["bob"].hash == hash_key(kept)  # the existing key is left as it was
    client = cli_app.test_client()
    ok = client.get("/v1/models", headers={"Authorization": f"Bearer {raw['cy']}"})
    assert ok.status_code == 200
    again = runner.invoke(args=["keys", "import", str(tmp_path / "old.json")])
    assert "Imported 0 keys" in again.output and "skipped 3" in again.output


@pytest.mark.parametrize("content", [None, "{not json", '["a"]'],
                         ids=["missing", "not-json", "not-a-key-file"])
def test_import_of_something_else_fails_clearly(cli_app: Flask, tmp_path: Path,
                                                content: str | None) -> None:
    path = tmp_path / "other.json"
    if content is not None:
        path.write_text(content)
    result = cli_app.test_cli_runner().invoke(args=["keys", "import", str(path)])
    assert result.exit_code != 0 and "Error" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture
def redis_app(make_app, module_redis: RedisServer) -> Flask:
    """Return an app whose keys live in the module's Redis, emptied for this test."""
    with module_redis.client() as client:
        client.flushdb()
    return make_app(GATEWAY_API_KEYS="", GATEWAY_KEYS_BACKEND="redis",
                    GATEWAY_REDIS_URL=module_redis.url, GATEWAY_RATE_LIMIT_DISABLED=True)


def test_every_command_works_on_redis(redis_app: Flask, module_redis: RedisServer,
                                      tmp_path: Path) -> None:
    runner = redis_app.test_cli_runner()
    first = runner.invoke(args=["keys", "ensure"])
    assert first.exit_code == 0 and "in Redis redis://127.0.0.1" in first.output, first.output
    created = runner.invoke(args=["keys", "create", "--name", "dana", "--weight", "3",
                                  "--priority", "--models", "sim"])
    raw = printed_key(created.output)
    old = write_old_file(tmp_path / "old.json", ["dana", "eve"])
    imported = runner.invoke(args=["keys", "import", str(tmp_path / "old.json")])
    assert "Imported 1 keys" in imported.output and ": dana." in imported.output
    listing = runner.invoke(args=["keys", "list"]).output
    assert sorted(line.split("\t")[0] for line in listing.splitlines()) == [
        "dana", "default", "eve"]
    assert "dana\tmodels=sim\t" in listing and "weight=3\tpriority=yes" in listing
    with module_redis.client() as client:
        stored = b"".join(v for pair in client.hgetall("gw:keys").items() for v in pair)
    assert raw.encode() not in stored and old["eve"].encode() not in stored
    assert runner.invoke(args=["keys", "revoke", "dana"]).exit_code == 0
    assert "dana" not in runner.invoke(args=["keys", "list"]).output
    assert runner.invoke(args=["keys", "revoke", "dana"]).exit_code == 1
    again = runner.invoke(args=["keys", "ensure"])
    assert "none created" in again.output


@pytest.mark.parametrize("args", [["list"], ["create", "--name", "x"], ["revoke", "x"],
                                  ["ensure"]], ids=["list", "create", "revoke", "ensure"])
def test_unreachable_redis_is_one_line_not_a_traceback(make_app, args: list[str]) -> None:
    url = f"redis://:pw@127.0.0.1:{free_port()}/0"
    app = make_app(GATEWAY_API_KEYS="", GATEWAY_KEYS_BACKEND="redis", GATEWAY_REDIS_URL=url,
                   GATEWAY_RATE_LIMIT_DISABLED=True)
    result = app.test_cli_runner().invoke(args=["keys", *args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith("Error: the key store cannot be reached: Redis redis://127")
    assert len(result.output.strip().splitlines()) == 1 and "pw" not in result.output
