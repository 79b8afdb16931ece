"""``flask --app wsgi keys ...``: create, list and revoke API keys in the key file."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from flask_inference_gateway.api.state import gateway
from flask_inference_gateway.security.keys import (
    KeyEntry,
    hash_key,
    new_key,
    read_key_file,
    write_key_file,
)
from flask_inference_gateway.core.parse import parse_limit

keys_cli = AppGroup("keys", help="Manage the gateway's API keys (GATEWAY_API_KEYS_FILE).")


def key_file() -> str:
    """Return the configured key file, or stop with a clear message."""
    path = gateway().settings.api_keys_file
    if not path:
        raise click.ClickException("GATEWAY_API_KEYS_FILE is empty: set it to a file path.")
    return path


def check_limit(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Validate a --rate option."""
    if value is None:
        return None
    try:
        return parse_limit(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def create_entry(path: str, name: str, **settings: object) -> str:
    """Store a new key named ``name`` and return the key itself."""
    entries = read_key_file(path)
    if any(entry.name == name for entry in entries):
        raise click.ClickException(f"a key named {name!r} exists; revoke it first")
    raw = new_key()
    entries.append(KeyEntry(name=name, hash=hash_key(raw), **settings))  # type: ignore[arg-type]
    write_key_file(path, entries)
    return raw


@keys_cli.command("create")
@click.option("--name", required=True, help="A name for the key; logs and metrics show it.")
@click.option("--models", help="Comma-separated models the key may use (default: all).")
@click.option("--rate", callback=check_limit, help="Request-rate limit, e.g. '10/minute'.")
@click.option("--tokens-per-minute", type=click.IntRange(min=0), help="Token budget.")
@click.option("--max-streams", type=click.IntRange(min=0), help="Concurrent streams.")
@click.option("--admin", is_flag=True, help="May manage models (Ollama's /api/pull, /api/delete, "
                                             "/api/create, /api/copy, /api/push).")
def create(name: str, models: str | None, rate: str | None, tokens_per_minute: int | None,
           max_streams: int | None, admin: bool) -> None:
    """Create a key and print it once; only its hash is stored."""
    model_list = [m.strip() for m in models.split(",") if m.strip()] if models else None
    raw = create_entry(key_file(), name, models=model_list, rate_limit=rate,
                       tokens_per_minute=tokens_per_minute, max_streams=max_streams, admin=admin)
    click.echo(f"Created key {name!r}. Store it now; it is not shown again:\n{raw}")


@keys_cli.command("ensure")
def ensure() -> None:
    """Create and print a first key named 'default' when no key exists yet."""
    path = key_file()
    if read_key_file(path) or gateway().settings.api_keys:
        click.echo(f"API keys exist in {path} or GATEWAY_API_KEYS; none created.")
        return
    raw = create_entry(path, "default")
    click.echo(f"Created the first API key 'default' in {path}. Store it now; it is not "
               f"shown again:\n{raw}\nUse it as: curl -H 'Authorization: Bearer {raw}' ...")


@keys_cli.command("list")
def list_keys() -> None:
    """List key names and settings (never the keys or their hashes)."""
    entries = read_key_file(key_file())
    if not entries:
        click.echo("No keys.")
    for entry in entries:
        click.echo(f"{entry.name}\tmodels={','.join(entry.models or ['*'])}"
                   f"\trate={entry.rate_limit or 'default'}"
                   f"\ttokens/min={entry.tokens_per_minute or 'default'}"
                   f"\tstreams={entry.max_streams or 'default'}"
                   f"\tadmin={'yes' if entry.admin else 'no'}\tcreated={entry.created_at}")


@keys_cli.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Delete the key named NAME; running gateways stop accepting it within a second."""
    path = key_file()
    entries = read_key_file(path)
    kept = [entry for entry in entries if entry.name != name]
    if len(kept) == len(entries):
        raise click.ClickException(f"no key named {name!r}")
    write_key_file(path, kept)
    click.echo(f"Revoked {name!r}.")
