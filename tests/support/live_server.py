"""Run the real kronk server (uvicorn, real sockets) in a background thread for tests.

    with live_server({"tiny": tiny_llama_path}, load_defaults={"n_ctx": 256}) as srv:
        client = srv.openai()
        client.chat.completions.create(model="tiny", messages=[...])

The server listens on a free loopback port; readiness is polled on /health/ready with
a bounded deadline.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
from fastapi import FastAPI

from kronk.models.aliases import AliasResolver
from kronk.models.resolver import ResolvedModel, StaticResolver
from kronk.pool import ModelPool
from kronk.server.app import create_app
from kronk.server.runner import KronkServer, make_server
from kronk.server.settings import AuthMode, ServerSettings
from kronk.server.state import ServerState

READY_DEADLINE_S = 120.0


@dataclass
class LiveServer:
    base_url: str
    app: FastAPI
    server: KronkServer
    pool: ModelPool
    thread: threading.Thread

    @property
    def state(self) -> ServerState:
        state: ServerState = self.app.state.kronk
        return state

    def openai(self, **kwargs: Any) -> openai.OpenAI:
        # No retries: a 429 or 503 must reach the test, not be retried away.
        kwargs.setdefault("api_key", "unused")  # a token, on a server with auth
        return openai.OpenAI(base_url=f"{self.base_url}/v1", max_retries=0, **kwargs)

    def async_openai(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, **kwargs
        )

    def anthropic(self, **kwargs: Any) -> anthropic.Anthropic:
        kwargs.setdefault("api_key", "unused")
        return anthropic.Anthropic(base_url=self.base_url, max_retries=0, **kwargs)

    def async_anthropic(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=self.base_url, api_key="unused", max_retries=0, **kwargs
        )

    def http(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, **{"timeout": 120, **kwargs})

    def stop(self, timeout: float = 60.0) -> None:
        self.server.begin_shutdown()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"


def wait_ready(base_url: str, thread: threading.Thread, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("the server thread died during startup")
        try:
            if httpx.get(f"{base_url}/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{base_url} not ready after {deadline_s}s")


@contextmanager
def live_server(
    models: Mapping[str, Path | ResolvedModel],
    *,
    load_defaults: Mapping[str, Any] | None = None,
    models_max: int = 3,
    ttl_seconds: float = 300.0,
    preload: str | None = None,
    graceful_timeout: float = 30.0,
    home: Path | None = None,
    aliases: Mapping[str, str] | None = None,
    keepalive: float = 5.0,
    auth: AuthMode = "open",
    allowed_origins: tuple[str, ...] = (),
    settings_extra: Mapping[str, Any] | None = None,  # more ServerSettings fields
) -> Iterator[LiveServer]:
    resolved = {
        name: m if isinstance(m, ResolvedModel) else ResolvedModel(id=name, path=m)
        for name, m in models.items()
    }
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = ServerSettings(
        host="127.0.0.1",
        port=port,
        home=home or Path("/nonexistent-kronk-home"),
        model=preload,
        graceful_timeout=graceful_timeout,
        log_level="warning",
        keepalive=keepalive,
        auth=auth,
        allowed_origins=allowed_origins,
        **(settings_extra or {}),
    )
    defaults = {"n_threads": 2, **(load_defaults or {})}
    pool = ModelPool(
        AliasResolver(StaticResolver(resolved), aliases),
        models_max=models_max,
        ttl_seconds=ttl_seconds,
        load_defaults=defaults,
        # What fits and who waits, from settings_extra (memory_budget, queue_size, ...).
        **{
            key: value
            for key, value in settings.pool_options().items()
            if key in ("memory_budget", "queue_size", "queue_timeout")
        },
    )
    app = create_app(pool, settings=settings)
    server = make_server(app, host="127.0.0.1", port=port, log_level="warning")
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="kronk-test-server", daemon=True
    )
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    live = LiveServer(base_url, app, server, pool, thread)
    try:
        wait_ready(base_url, thread, READY_DEADLINE_S)
        yield live
    finally:
        if thread.is_alive():
            live.stop()
        sock.close()
