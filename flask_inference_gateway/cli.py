"""``flask --app wsgi keys ...``: create, list, revoke and import API keys.

Every command works on the store GATEWAY_KEYS_BACKEND names: the key file
(GATEWAY_API_KEYS_FILE) or Redis (GATEWAY_REDIS_URL), shared by every replica.
"""

from __future__ import annotations

import math
from typing import Any

import click
from flask.cli import AppGroup

from flask_inference_gateway.api.state import gateway
from flask_inference_gateway.core.parse import parse_limit
from flask_inference_gateway.security.keys import (
    EntryStore,
    KeyEntry,
    StoreUnavailable,
    hash_key,
    new_key,
    read_key_file,
)
from flask_inference_gateway.security.keystores import KeyExists, open_entries


class KeysGroup(AppGroup):
    """The ``keys`` commands; a key store that does not answer is one line, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand, turning a store outage into a clear error."""
        try:
            return super().invoke(ctx)
        except StoreUnavailable as exc:
            raise click.ClickException(f"the key store cannot be reached: {exc}") from None


keys_cli = KeysGroup("keys", help="Manage the gateway's API keys (GATEWAY_KEYS_BACKEND: "
                                  "the key file, or Redis).")


def entry_store() -> EntryStore:
    """Return the configured key store, or stop with a clear message."""
    store = open_entries(gateway().settings)
    if store is None:
        raise click.ClickException("GATEWAY_API_KEYS_FILE is empty: set it to a file path, "
                                   "or set GATEWAY_KEYS_BACKEND=redis.")
    return store


def check_limit(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Validate a --rate option."""
    if value is None:
        return None
    try:
        return parse_limit(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def check_weight(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    """Validate a --weight option: a finite number above 0."""
    if not math.isfinite(value) or value <= 0:
        raise click.BadParameter(f"{value} is not a number above 0.")
    return value


def create_entry(store: EntryStore, name: str, **settings: Any) -> str:
    """Store a new key named ``name`` and return the key itself."""
    raw = new_key()
    try:
        store.add(KeyEntry(name=name, hash=hash_key(raw), **settings))
    except KeyExists:
        raise click.ClickException(f"a key named {name!r} exists; revoke it first") from None
    return raw


@keys_cli.command("create")
@click.option("--name", required=True, help="A name for the key; logs and metrics show it.")
@click.option("--models", help="Comma-separated models the key may use (default: all).")
@click.option("--rate", callback=check_limit, help="Request-rate limit, e.g. '10/minute'.")
@click.option("--tokens-per-minute", type=click.IntRange(min=0), help="Token budget.")
@click.option("--max-streams", type=click.IntRange(min=0), help="Concurrent streams.")
@click.option("--admin", is_flag=True, help="May manage models (Ollama's /api/pull, /api/delete, "
                                             "/api/create, /api/copy, /api/push).")
@click.option("--weight", type=float, default=1.0, show_default=True, callback=check_weight,
              help="Share of backend slots while requests queue, against other keys' weights.")
@click.option("--priority", is_flag=True, help="Queued requests go before other keys' ones.")
def create(name: str, models: str | None, rate: str | None, tokens_per_minute: int | None,
           max_streams: int | None, admin: bool, weight: float, priority: bool) -> None:
    """Create a key and print it once; only its hash is stored."""
    model_list = [m.strip() for m in models.split(",") if m.strip()] if models else None
    raw = create_entry(entry_store(), name, models=model_list, rate_limit=rate,
                       tokens_per_minute=tokens_per_minute, max_streams=max_streams,
                       admin=admin, weight=weight, priority=priority)
    click.echo(f"Created key {name!r}. Store it now; it is not shown again:\n{raw}")


@keys_cli.command("ensure")
def ensure() -> None:
    """Create and print a first key named 'default' when no key exists yet."""
    store = entry_store()
    if store.entries() or gateway().settings.api_keys:
        click.echo(f"API keys exist in {store.where} or GATEWAY_API_KEYS; none created.")
        return
    try:
        raw = new_key()
        store.add(KeyEntry(name="default", hash=hash_key(raw)))
    except KeyExists:  # another replica's 'ensure' was first
        click.echo(f"API keys exist in {store.where}; none created.")
        return
    click.echo(f"Created the first API key 'default' in {store.where}. Store it now; it is not "
               f"shown again:\n{raw}\nUse it as: curl -H 'Authorization: Bearer {raw}' ...")


@keys_cli.command("list")
def list_keys() -> None:
    """List key names and settings (never the keys or their hashes)."""
    entries = entry_store().entries()
    if not entries:
        click.echo("No keys.")
    for entry in entries:
        click.echo(f"{entry.name}\tmodels={','.join(entry.models or ['*'])}"
                   f"\trate={entry.rate_limit or 'default'}"
                   f"\ttokens/min={entry.tokens_per_minute or 'default'}"
                   f"\tstreams={entry.max_streams or 'default'}"
                   f"\tadmin={'yes' if entry.admin else 'no'}"
                   f"\tweight={entry.weight:g}\tpriority={'yes' if entry.priority else 'no'}"
                   f"\tcreated={entry.created_at}")


@keys_cli.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Delete the key named NAME; running gateways stop accepting it within a second."""
    if not entry_store().remove(name):
        raise click.ClickException(f"no key named {name!r}")
    click.echo(f"Revoked {name!r}.")


@keys_cli.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def import_keys(path: str) -> None:
    """Copy the keys of the key file PATH into the configured store; names there are kept."""
    try:
        entries = read_key_file(path)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise click.ClickException(f"{path} is not a key file: {exc}") from None
    store = entry_store()
    skipped = []
    for entry in entries:
        try:
            store.add(entry)
        except KeyExists:
            skipped.append(entry.name)
    imported = len(entries) - len(skipped)
    click.echo(f"Imported {imported} keys from {path} into {store.where}; skipped "
               f"{len(skipped)} that exist there" + (f": {', '.join(skipped)}." if skipped
                                                     else "."))
