"""The gateway's own API: /v1/generate, /v1/chat, their streams (SSE) and WebSockets."""
