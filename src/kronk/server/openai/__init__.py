"""The OpenAI-compatible API: request models (protocol) and serving logic (routes)."""
