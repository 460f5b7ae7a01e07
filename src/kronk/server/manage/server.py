"""`/manage/running`, `/manage/unload` and `/manage/server`: the loaded models with their
slots, KV cache and idle-unload countdown, and the server's settings and build."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from functools import cache
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from kronk import __version__
from kronk.pool import LoadedModel
from kronk.server.common import server_state
from kronk.server.manage.routes import router
from kronk.server.sse import EventStreamResponse, sse

# Settings whose values are secrets: reported as set or not, never echoed.
_SECRET_WORDS = ("token", "key", "secret", "password")


class UnloadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)


def running_json(model: LoadedModel, live: dict[str, float], now: float) -> dict[str, Any]:
    """A loaded model, with each slot's KV use and state (idle, cached, prefilling with
    done/total prompt tokens, generating with tokens so far) and the seconds until the
    idle TTL unloads it (None: in use, or kept for ever)."""
    states = [asdict(s) for s in model.slot_states]
    slots = [
        {
            "slot": i,
            "tokens": tokens,
            "kv_bytes": kv,
            "fill": tokens / model.n_ctx,
            **(states[i] if i < len(states) else {"state": "cached" if tokens else "idle"}),
        }
        for i, (tokens, kv) in enumerate(zip(model.slot_tokens, model.slot_kv_bytes, strict=False))
        if model.n_ctx
    ]
    unload_in = max(0.0, model.expires_at - now) if model.expires_at is not None else None
    return {**asdict(model), **live, "slot_detail": slots, "unload_in": unload_in}


@router.get("/running")
async def running(request: Request) -> dict[str, Any]:
    pool = server_state(request).pool
    live = request.app.state.telemetry.live()
    now = time.time()
    models = [running_json(m, live.get(m.id, {}), now) for m in pool.loaded()]
    return {"object": "list", "models": models, "time": now}


@router.post("/unload")
async def unload(body: UnloadBody, request: Request) -> dict[str, Any]:
    """Unload an idle model now; 409 while requests hold it."""
    pool = server_state(request).pool
    if not any(m.id == body.model for m in pool.loaded()):
        raise HTTPException(404, f"model {body.model!r} is not loaded")
    if not await pool.unload(body.model):
        raise HTTPException(409, f"model {body.model!r} is serving requests; try again later")
    return {"model": body.model, "unloaded": True}


def redact(settings: dict[str, Any]) -> dict[str, Any]:
    """Secrets (tokens, keys) as whether they are set, at any depth."""
    out: dict[str, Any] = {}
    for name, value in settings.items():
        if any(word in name.lower() for word in _SECRET_WORDS) and value:
            out[name] = "(set)"
        elif isinstance(value, dict):
            out[name] = redact(value)
        else:
            out[name] = value
    return out


@cache
def build() -> dict[str, Any]:
    """llama.cpp's build (the same report as `kronk libs`); loading the library and
    listing its folder is slow enough to do once."""
    from kronk.cli.libs import collect
    from kronk.llama.build_info import llama_cpp_commit

    info = collect()
    return {
        "llama_cpp_python": info["llama_cpp_python"],
        "llama_cpp_commit": llama_cpp_commit(),
        "ggml_version": info["ggml_version"],
        "backends": info["backends"],
        "gpu_offload": info["gpu_offload"],
        "cpu_features": info["cpu_features"],
    }


def auth_mode(request: Request) -> str:
    """The security mode ("open", "manage", "all"); "open" when security is absent."""
    security = getattr(request.app.state, "security", None)
    return str(getattr(security, "mode", "open"))


@router.get("/server")
async def server_info(request: Request) -> dict[str, Any]:
    state = server_state(request)
    settings = state.settings
    return {
        "version": __version__,
        "base_url": settings.base_url,
        "settings": redact(settings.model_dump(mode="json")),
        "llama_cpp": await asyncio.to_thread(build),
        "status": "draining" if state.draining else ("ready" if state.ready else "loading"),
        "links": {
            "metrics": "/metrics",
            "health": "/health",
            "ready": "/health/ready",
            "openapi": "/openapi.json",
        },
        # The UI shows a sign-in box when auth is on (security's mode is not "open").
        "auth": {"enabled": auth_mode(request) != "open", "mode": auth_mode(request)},
    }


@router.get("/running/events", response_model=None)
async def running_events(request: Request, interval: float = 1.0) -> EventStreamResponse:
    """`/manage/running` as a server-sent event every `interval` seconds (0.2 to 60),
    so the Running page's countdowns and slots stay live without polling."""
    interval = min(60.0, max(0.2, interval))

    state = server_state(request)

    async def snapshots() -> AsyncIterator[bytes]:
        # Ends when the server drains: an open page must not hold up a shutdown.
        while not state.draining:
            yield sse(await running(request), event="running")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.drain_started.wait(), interval)

    async def nothing() -> None:
        return None

    return EventStreamResponse(snapshots(), nothing)
