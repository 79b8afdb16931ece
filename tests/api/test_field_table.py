"""docs/fields.md names every field each dialect's request schemas take."""

from __future__ import annotations

import re

import pytest
from marshmallow import Schema, fields

from flask_inference_gateway.api.native import schemas as native
from flask_inference_gateway.api.ollama import schemas as ollama
from flask_inference_gateway.api.openai import schemas as openai
from tests.conftest import ROOT

TABLE = (ROOT / "docs" / "fields.md").read_text()
SECTIONS = {"OpenAI API": (openai.ChatCompletionRequest, openai.CompletionRequest),
            "Ollama API": (ollama.OllamaGenerateRequest, ollama.OllamaChatRequest),
            "Gateway API": (native.GenerateRequest, native.ChatRequest)}


def section(title: str) -> str:
    """Return the text of the section whose heading starts with ``title``."""
    match = re.search(rf"^## {title}.*?(?=^## |\Z)", TABLE, re.MULTILINE | re.DOTALL)
    assert match, f"docs/fields.md has no section {title!r}"
    return match.group(0)


def field_names(schema: type[Schema]) -> set[str]:
    """Return the schema's field names, and those of the messages and options it nests."""
    names = set()
    for name, field in schema().fields.items():
        names.add(field.data_key or name)
        inner = field.inner if isinstance(field, fields.List) else field
        if isinstance(inner, fields.Nested) and name in ("messages", "options"):
            names |= set(inner.schema.fields)
    return names


@pytest.mark.parametrize("title", SECTIONS)
def test_every_field_is_in_the_table(title: str) -> None:
    text = section(title)
    named = set(re.findall(r"`([^`]+)`", text))
    words = {word for span in named for word in re.findall(r"[a-z_]+", span)}
    missing = {name for schema in SECTIONS[title] for name in field_names(schema)} - words
    assert not missing, f"docs/fields.md, {title}: no row names {sorted(missing)}"
