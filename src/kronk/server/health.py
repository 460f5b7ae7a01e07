"""Liveness and readiness probes. (`/api/ps`, the loaded models, is in `ollama/models.py`.)"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kronk.server.common import server_state
from kronk.server.security import may_see_paths

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/health/ready", response_model=None)
async def ready(request: Request) -> Response:
    """Readiness: the preloaded model (if any) is loaded and the server is not draining."""
    state = server_state(request)
    body: dict[str, Any] = {"status": "ready" if state.ready else "loading"}
    if state.draining:
        body["status"] = "draining"
    elif state.preload_error is not None:
        body["status"] = "failed"
        # The load error names files: only callers who may manage the server see it.
        shown = may_see_paths(request)
        body["error"] = state.preload_error if shown else "the model failed to load (see the log)"
    body["models"] = [m.id for m in state.pool.loaded() if m.status == "ready"]
    return JSONResponse(body, status_code=200 if state.ready else 503)


__all__ = ["router"]
