"""What the HTTP layer shares across requests: the pool, the settings and the server's
own lifecycle (preloading, draining for a graceful shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from kronk.agent.registry import ToolRegistry
from kronk.pool import ModelPool
from kronk.server.settings import ServerSettings


@dataclass(eq=False)
class ServerState:
    pool: ModelPool
    settings: ServerSettings
    preload: str | None = None  # the model loaded at start, if any
    preload_done: bool = False
    preload_error: str | None = None
    draining: bool = False  # shutting down: new requests get 503, in-flight ones finish
    inflight: int = 0  # HTTP requests (and streams) being served
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    drain_started: asyncio.Event = field(default_factory=asyncio.Event)  # set with draining
    # Server-side tools (docs/tools.md): MCP servers start on first use, stop with it.
    tools: ToolRegistry = field(default_factory=ToolRegistry)

    @property
    def ready(self) -> bool:
        return not self.draining and (self.preload is None or self.preload_done)

    def request_started(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def request_finished(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    def begin_drain(self) -> None:
        self.draining = True
        self.drain_started.set()
        if self.inflight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no request is in flight; False if `timeout` ran out first."""
        if self.inflight == 0:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self.inflight == 0
