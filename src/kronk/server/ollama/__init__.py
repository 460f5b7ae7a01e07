"""The Ollama-compatible API (`/api/...`): request models (protocol), errors, replies
built from neutral events (stream), chat/generate/embeddings (routes), and model
management (models)."""

from kronk.server.ollama import models as _models  # noqa: F401  (registers its routes)
from kronk.server.ollama.routes import router

__all__ = ["router"]
