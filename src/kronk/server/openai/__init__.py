"""The OpenAI-compatible API: request models (protocol), errors, and serving logic
(routes; the Responses API in responses)."""

from kronk.server.openai import responses as _responses  # noqa: F401  (registers its routes)
from kronk.server.openai.routes import router

__all__ = ["router"]
