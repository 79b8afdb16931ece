"""All upstream I/O: adapters that speak each backend's wire format over requests."""

from app.backend.base import Completion, TokenStream, Usage
from app.backend.ollama import OllamaBackend

__all__ = ["Completion", "OllamaBackend", "TokenStream", "Usage"]
