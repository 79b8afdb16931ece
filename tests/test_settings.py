"""Settings come from GATEWAY_* variables, typed, with documented defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app import create_app
from flask_inference_gateway.settings import SETTINGS, ConfigError, Settings, coerce, markdown_table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def setting(settings: Settings, name: str) -> object:
    """Return the value of the GATEWAY_* variable ``name`` in ``settings``."""
    return getattr(settings, name.removeprefix("GATEWAY_").lower())


def test_defaults_without_environment() -> None:
    settings = Settings.from_environ({})
    assert setting(settings, "GATEWAY_OLLAMA_URL") == ("http://127.0.0.1:11434",)
    assert setting(settings, "GATEWAY_OPENAI_URL") == ()
    assert setting(settings, "GATEWAY_BIND") == "0.0.0.0:8080"
    assert setting(settings, "GATEWAY_AUTH_DISABLED") is False
    assert {f.name for f in dataclasses.fields(Settings)} == {s.attribute for s in SETTINGS}


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings.from_environ({}).max_tokens = 1  # type: ignore[misc]


@pytest.mark.parametrize(("name", "raw", "value"), [
    ("GATEWAY_OLLAMA_URL", "http://gpu:11434/", ("http://gpu:11434",)),
    ("GATEWAY_OLLAMA_URL", "http://a:1, https://b:2/", ("http://a:1", "https://b:2")),
    ("GATEWAY_OLLAMA_URL", "", ()),
    ("GATEWAY_QUEUE_TIMEOUT", "0", 0.0),
    ("GATEWAY_WORKERS", "4", 4),
    ("GATEWAY_READ_TIMEOUT", "2.5", 2.5),
    ("GATEWAY_AUTH_DISABLED", "1", True),
    ("GATEWAY_RATE_LIMIT_DISABLED", "true", True),
    ("GATEWAY_AUTH_DISABLED", "off", False),
], ids=["url-slash", "url-list", "url-empty", "float-zero", "int", "float", "bool-1",
        "bool-true", "bool-off"])
def test_values_are_parsed(name: str, raw: str, value: object) -> None:
    assert setting(Settings.from_environ({name: raw}), name) == value


@pytest.mark.parametrize(("name", "raw"), [
    ("GATEWAY_OLLAMA_URL", "gpu:11434"),
    ("GATEWAY_WORKERS", "two"),
    ("GATEWAY_WORKERS", "0"),
    ("GATEWAY_READ_TIMEOUT", "-1"),
    ("GATEWAY_OPENAI_URL", "http://ok:1,vllm:8000"),
    ("GATEWAY_QUEUE_TIMEOUT", "-1"),
    ("GATEWAY_AUTH_DISABLED", "maybe"),
], ids=["url-scheme", "int-word", "int-zero", "negative-timeout", "url-in-list",
        "negative-queue-timeout", "bool-word"])
def test_bad_values_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_environ({name: raw})


def test_app_config_overrides_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DEFAULT_MODEL", "from-env")
    monkeypatch.setenv("GATEWAY_MAX_TOKENS", "99")
    app = create_app({"GATEWAY_DEFAULT_MODEL": "from-override"})
    state = app.extensions["inference_gateway"]
    assert state.settings.default_model == "from-override"
    assert state.settings.max_tokens == 99


def test_reference_table_in_the_docs_is_current() -> None:
    # Regenerate with: python3 scripts/gen_config_table.py
    assert markdown_table() in DOCS.read_text()


@pytest.mark.parametrize(("value", "parsed"), [
    ("http://a:1,http://b:2", ("http://a:1", "http://b:2")),
    (("http://a:1",), ("http://a:1",)),
], ids=["string-is-parsed", "tuple-is-kept"])
def test_settings_given_in_code_are_coerced(value: object, parsed: tuple) -> None:
    assert coerce("GATEWAY_OLLAMA_URL", value) == parsed


def test_settings_given_in_code_are_checked() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_OPENAI_URL"):
        create_app({"GATEWAY_OPENAI_URL": "vllm:8000"})


def test_a_gateway_needs_a_backend() -> None:
    with pytest.raises(ConfigError, match="No backend"):
        create_app({"GATEWAY_OLLAMA_URL": "", "GATEWAY_OPENAI_URL": ""})
