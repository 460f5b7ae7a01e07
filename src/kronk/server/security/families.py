"""Which endpoint family each path belongs to: the one table grants are checked against.

A token grants families (`chat`, `embeddings`, ...), never single paths, so a protocol
added later needs one row here, not a new kind of grant. Every OpenAI path is listed
with and without `/v1`, because the router answers both (llama-server does the same).
"""

from __future__ import annotations

from typing import Literal, get_args

Family = Literal[
    "chat",
    "responses",
    "completions",
    "embeddings",
    "tokenize",
    "models",
    "tools",
    "manage",
    "metrics",
]
FAMILIES: tuple[Family, ...] = get_args(Family)

# Answered without credentials in every mode: probes must work before anyone has a token,
# and the browser UI's static files (the same for everyone, no data in them) must load
# before the user can paste a token into it; a navigation cannot send one anyway.
OPEN_PATHS = frozenset({"/health", "/health/ready", "/"})
OPEN_PREFIXES = ("/ui/",)

# OpenAI paths, each also served under /v1.
_OPENAI: dict[str, Family] = {
    "/chat/completions": "chat",
    "/responses": "responses",  # and /responses/input_tokens below it
    "/completions": "completions",
    "/embeddings": "embeddings",
    "/tokenize": "tokenize",
    "/detokenize": "tokenize",
    "/models": "models",  # and /models/{id}
    "/tools": "tools",  # server-side tools: reserved for the tools work
}

# A path belongs to a row when it equals the row's path or lies below it (segment-wise:
# /v1/models/x is under /v1/models, /v1/modelsx is not).
PATH_FAMILIES: dict[str, Family] = {
    **{f"/v1{path}": family for path, family in _OPENAI.items()},
    **_OPENAI,
    # Anthropic Messages (+ /v1/messages/count_tokens)
    "/v1/messages": "chat",
    # Ollama
    "/api/chat": "chat",
    "/api/generate": "completions",
    "/api/embed": "embeddings",
    "/api/embeddings": "embeddings",
    "/api/tags": "models",
    "/api/show": "models",
    "/api/ps": "models",
    "/api/version": "models",
    "/api/pull": "manage",
    "/api/push": "manage",
    "/api/create": "manage",
    "/api/blobs": "manage",
    "/api/delete": "manage",
    "/api/copy": "manage",
    # kronk's own: the browser UI's management endpoints, and security ones to come
    "/manage": "manage",
    "/security": "manage",
    # kronk as an MCP server: its tools act with the server's rights (tools.md)
    "/mcp": "tools",
    # The API's own description: as readable as the model listing, no more.
    "/docs": "models",
    "/openapi.json": "models",
    "/metrics": "metrics",
}


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path == "/ui" or path.startswith(OPEN_PREFIXES)


def family_for(path: str) -> Family | None:
    """The family `path` belongs to; None for the open probes and for paths no route
    serves (those need a valid token in `all` mode and no grant)."""
    path = path.rstrip("/") or "/"
    probe = path
    while probe:
        family = PATH_FAMILIES.get(probe)
        if family is not None:
            return family
        probe = probe.rpartition("/")[0]
    return None


__all__ = ["FAMILIES", "OPEN_PATHS", "PATH_FAMILIES", "Family", "family_for", "is_open"]
