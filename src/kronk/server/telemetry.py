"""Telemetry for the server: `GET /metrics`, HTTP metrics and request spans, and the
hooks that attach each loaded model's engine to them."""

from __future__ import annotations

import threading
import time

from fastapi import APIRouter, FastAPI, Request, Response
from opentelemetry.trace import StatusCode
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kronk.engine.engine import EngineStats
from kronk.pool import ModelPool, PoolEvent
from kronk.sdk import Kronk
from kronk.telemetry import tracing
from kronk.telemetry.metrics import CONTENT_TYPE, Metrics


class ModelTelemetry:
    """Follows the pool: every model that loads is watched until it unloads."""

    def __init__(self, metrics: Metrics, pool: ModelPool) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self._models: dict[str, Kronk] = {}
        self._load_started: dict[str, float] = {}
        metrics.set_stats_source(self.stats)
        pool.add_listener(self._on_pool_event)

    def stats(self) -> dict[str, EngineStats]:
        with self._lock:
            models = dict(self._models)
        return {model_id: k.stats() for model_id, k in models.items()}

    def live(self) -> dict[str, dict[str, float]]:
        """Each loaded model's live stats (`Metrics.live`), for `/api/ps`."""
        return {model_id: self.metrics.live(model_id, s) for model_id, s in self.stats().items()}

    def _on_pool_event(self, event: PoolEvent) -> None:
        if event.kind == "loading":
            self._load_started[event.model] = time.perf_counter()
        elif event.kind == "loaded" and event.kronk is not None:
            started = self._load_started.pop(event.model, None)
            if started is not None:
                self.metrics.model_load.labels(event.model).observe(time.perf_counter() - started)
            self.metrics.watch(event.model, event.kronk.engine)
            with self._lock:
                self._models[event.model] = event.kronk
        elif event.kind in ("unloaded", "failed"):
            self._load_started.pop(event.model, None)
            with self._lock:
                self._models.pop(event.model, None)


class TelemetryMiddleware:
    """Counts and times every HTTP request by route template (streams until their last
    byte) and wraps it in a span."""

    def __init__(self, app: ASGIApp, metrics: Metrics, fastapi_app: FastAPI) -> None:
        self.app = app
        self.metrics = metrics
        self.fastapi_app = fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(scope)
        status = 500
        start = time.perf_counter()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with tracing.tracer.start_as_current_span(f"{scope['method']} {route}") as span:
            span.set_attribute("http.request.method", scope["method"])
            span.set_attribute("http.route", route)
            try:
                await self.app(scope, receive, send_and_record)
            finally:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:  # client errors are not the server's (OTel HTTP semantics)
                    span.set_status(StatusCode.ERROR)
                self.metrics.observe_http(
                    scope["method"], route, status, time.perf_counter() - start
                )

    def _route(self, scope: Scope) -> str:
        # The template ("/v1/models/{model_id}"), so labels don't grow with ids.
        for candidate in self.fastapi_app.router.routes:
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                return str(getattr(candidate, "path", scope["path"]))
        return "unmatched"


def install_telemetry(app: FastAPI, pool: ModelPool, metrics: Metrics | None = None) -> Metrics:
    """Add `GET /metrics`, HTTP metrics, spans (exported when an OTLP endpoint is set in
    the environment) and per-model metrics to `app`."""
    metrics = metrics or Metrics()
    tracing.configure_tracing(tracing.otlp_traces_url())
    app.state.telemetry = ModelTelemetry(metrics, pool)
    app.state.kronk.tools.observer = metrics.observe_tool  # server-side tool calls
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(_request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.include_router(router)
    app.add_middleware(TelemetryMiddleware, metrics=metrics, fastapi_app=app)
    return metrics


__all__ = ["ModelTelemetry", "TelemetryMiddleware", "install_telemetry"]
