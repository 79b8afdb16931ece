"""Ollama's API under /api: generate, chat, embed, model lists and model management."""
