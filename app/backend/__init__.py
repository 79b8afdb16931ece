"""All upstream I/O: adapters that speak each backend's wire format, and the router."""

from app.backend.base import Completion, Embeddings, Timeouts, TokenStream, Usage
from app.backend.ollama import OllamaBackend
from app.backend.openai import OpenAIBackend
from app.backend.pool import BackendPool
from app.backend.router import Router

__all__ = ["BackendPool", "Completion", "Embeddings", "OllamaBackend", "OpenAIBackend", "Router",
           "Timeouts", "TokenStream", "Usage"]
