"""kronk's HTTP server: the OpenAI-compatible API over the model pool."""
