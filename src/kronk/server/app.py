"""The FastAPI application: routes, OpenAI-shaped errors, draining and the lifespan.

    app = create_app(ModelPool(resolver), settings=ServerSettings.load())

Every error leaves as OpenAI's error object (see `openai/errors.py`); malformed
input is a 400, never a 500. While the server drains for a graceful shutdown,
requests already in flight finish and new ones get 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from kronk.errors import KronkError
from kronk.pool import ModelPool
from kronk.server.openai.errors import APIError, api_error, validation_error
from kronk.server.openai.routes import router as openai_router
from kronk.server.settings import ServerSettings
from kronk.server.state import ServerState
from kronk.server.telemetry import install_telemetry

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
            error = APIError(
                503,
                "the server is shutting down",
                "service_unavailable_error",
                None,
                "shutting_down",
            )
            await error.response()(scope, receive, send)
            return
        self.state.request_started()
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.request_finished()


class JsonBodyMiddleware:
    """Read every POST body as JSON whatever its Content-Type says, as llama-server and
    OpenAI do: `curl -d '{...}'` sends form encoding, and a missing or wrong header
    should not turn a valid request into a confusing validation error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def create_app(
    pool: ModelPool,
    *,
    settings: ServerSettings,
    on_preload_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """The server's ASGI app over `pool`. With `settings.model` set, that model is
    loaded at startup (readiness says 503 until it is); if the load fails,
    `on_preload_failure` gets the message (the CLI stops the server)."""
    state = ServerState(pool=pool, settings=settings, preload=settings.model)

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
            yield
        finally:
            state.begin_drain()
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            await pool.close()

    app = FastAPI(
        title="kronk",
        summary="OpenAI-compatible local inference on llama.cpp",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.kronk = state
    app.include_router(openai_router)
    _install_error_handlers(app)
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(DrainMiddleware, state=state)
    install_telemetry(app, pool)  # outermost: times everything, 503s included
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def on_kronk_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, KronkError)
        error = api_error(exc, request.url.path)
        if error.status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return error.response()

    async def on_validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_error(exc.errors()).response()

    async def on_http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        body = APIError(exc.status_code, str(exc.detail), kind, None, code).body()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("%s %s crashed", request.method, request.url.path, exc_info=exc)
        return APIError(500, f"internal error: {type(exc).__name__}", "server_error").response()

    app.add_exception_handler(KronkError, on_kronk_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


__all__ = ["DrainMiddleware", "JsonBodyMiddleware", "create_app"]
