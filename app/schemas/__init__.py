"""Marshmallow schemas: the single source of truth for every body, also fed to Swagger."""

from app.schemas.inference import ChatRequest, GenerateRequest

__all__ = ["ChatRequest", "GenerateRequest"]
