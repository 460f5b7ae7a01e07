"""The FastAPI application: each protocol's router, draining and the lifespan.

    app = create_app(ModelPool(resolver), settings=ServerSettings.load())

Each protocol's router renders its own errors (see `errors.py`); what happens outside
any route (an unknown path, draining) is rendered in the shape of the protocol whose
paths it is under. Malformed input is a 400, never a 500; a POST body that is not JSON
is a 415 (`security/`: what a web page could otherwise send). While the server drains for
a graceful shutdown, requests already in flight finish and new ones get 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from kronk.errors import KronkError
from kronk.pool import ModelPool
from kronk.server import health
from kronk.server.anthropic import RequestIdMiddleware
from kronk.server.anthropic import router as anthropic_router
from kronk.server.errors import ErrorInfo, error_info, render_for_path
from kronk.server.manage import router as manage_router
from kronk.server.mcp_endpoint import install_mcp
from kronk.server.ollama import router as ollama_router
from kronk.server.openai import router as openai_router
from kronk.server.openapi import install_openapi
from kronk.server.security import install_security
from kronk.server.settings import ServerSettings
from kronk.server.state import ServerState
from kronk.server.telemetry import install_telemetry
from kronk.server.tools import server_tools
from kronk.ui import install_ui

log = logging.getLogger("kronk.server")

# Answered even while draining (and not counted as in flight): probes must see the
# server going down, with readiness saying why.
_ALWAYS_OPEN = frozenset({"/health", "/health/ready", "/metrics"})


class DrainMiddleware:
    """Counts requests in flight and turns new ones away once the server drains."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _ALWAYS_OPEN:
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            info = ErrorInfo("unavailable", "the server is shutting down", None, "shutting_down")
            await render_for_path(info, scope["path"])(scope, receive, send)
            return
        self.state.request_started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.request_finished()


def create_app(
    pool: ModelPool,
    *,
    settings: ServerSettings,
    on_preload_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """The server's ASGI app over `pool`. With `settings.model` set, that model is
    loaded at startup (readiness says 503 until it is); if the load fails,
    `on_preload_failure` gets the message (the CLI stops the server)."""
    state = ServerState(
        pool=pool, settings=settings, preload=settings.model, tools=server_tools(settings)
    )

    async def preload(name: str) -> None:
        try:
            await pool.load(name)
        except KronkError as exc:
            state.preload_error = str(exc)
            log.error("could not load %s: %s", name, exc)
            if on_preload_failure is not None:
                on_preload_failure(str(exc))
            return
        state.preload_done = True
        log.info("%s is ready; the OpenAI API is at %s/v1", name, settings.base_url)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(preload(state.preload)) if state.preload else None
        if task is None:
            log.info("the OpenAI API is at %s/v1; models load on first use", settings.base_url)
        try:
            async with mcp_sessions:  # /mcp, kronk as an MCP server (docs/tools.md)
                yield
        finally:
            state.begin_drain()
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            await pool.close()
            await state.tools.aclose()  # stops the MCP servers kronk started

    app = FastAPI(
        title="kronk",
        summary="OpenAI-compatible local inference on llama.cpp",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.kronk = state
    mcp_sessions = install_mcp(app, state.tools, settings.host)
    app.include_router(health.router)
    app.include_router(openai_router)
    app.include_router(ollama_router)
    app.include_router(anthropic_router)
    app.include_router(manage_router)
    install_ui(app)  # /ui/ and the redirect from /
    install_openapi(app)  # /openapi.json with kronk's 400s, not FastAPI's 422s
    _install_error_handlers(app)
    install_security(app, settings)  # browser checks, tokens, grants, limits (security.md)
    app.add_middleware(DrainMiddleware, state=state)
    app.add_middleware(RequestIdMiddleware)
    install_telemetry(app, pool)  # outermost: times everything, 503s included
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """For errors raised outside a protocol router's routes (unknown paths, wrong
    methods, ...): rendered by the protocol whose paths they are under."""

    async def on_error(request: Request, exc: Exception) -> Response:
        info = error_info(exc)
        if info is None:
            log.exception("%s %s crashed", request.method, request.url.path, exc_info=exc)
            info = ErrorInfo("server", f"internal error: {type(exc).__name__}")
        return render_for_path(info, request.url.path)

    for kind in (KronkError, RequestValidationError, HTTPException, Exception):
        app.add_exception_handler(kind, on_error)


__all__ = ["DrainMiddleware", "create_app"]
