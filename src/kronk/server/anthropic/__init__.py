"""The Anthropic Messages API: request models (protocol), the message and its stream
built from neutral events (messages), errors, and serving logic (routes)."""

from kronk.server.anthropic.routes import RequestIdMiddleware, router

__all__ = ["RequestIdMiddleware", "router"]
