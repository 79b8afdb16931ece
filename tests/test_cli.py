"""flask keys create|ensure|list|revoke."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from flask import Flask

from flask_inference_gateway.security.keys import hash_key


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
