"""Run the server under uvicorn with a graceful shutdown.

The first SIGTERM/SIGINT starts draining: new requests get 503 (in their protocol's
shape) and readiness says "draining", while those in flight (streams included) finish,
for up to `graceful_timeout` seconds. At that deadline what still runs is cancelled:
every model is unloaded, so generations end with the finish reason `cancelled` and their
streams close normally, and model downloads stop at their next progress callback with
their partial file kept (a later pull resumes it). Then uvicorn stops and the lifespan
cleans up. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from kronk.server.manage.pulls import Jobs
from kronk.server.state import ServerState

log = logging.getLogger("kronk.server")

# After the deadline's cancellations: long enough for a cancelled stream to send its last
# event, or a download its error; what still runs after it is cut with its connection.
CANCEL_GRACE_S = 5.0


class KronkServer(uvicorn.Server):
    """uvicorn's Server with draining before exit."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app_state = app.state
        self.kronk_state: ServerState = app.state.kronk
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self._loop is None:
            super().handle_exit(sig, frame)  # second signal (or not serving yet): now
            return
        self.begin_shutdown()

    def begin_shutdown(self, exit_code: int = 0) -> None:
        """Drain, then stop. Safe to call from any thread (and from a signal handler)."""
        if exit_code:
            self.exit_code = exit_code
        loop = self._loop
        if loop is None or loop.is_closed():
            self.should_exit = True
            return
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        state = self.kronk_state
        state.begin_drain()
        timeout = state.settings.graceful_timeout
        if state.inflight:
            log.info("draining: waiting for %d requests (up to %.0fs)", state.inflight, timeout)
        if not await state.wait_idle(timeout):
            log.warning(
                "%d requests still running after %.0fs; cancelling them", state.inflight, timeout
            )
            await self._cancel_running()
            if not await state.wait_idle(CANCEL_GRACE_S):
                log.warning("%d requests did not end; closing their connections", state.inflight)
        self.should_exit = True

    async def _cancel_running(self) -> None:
        """End what still runs at the deadline, each the way it ends when its client
        leaves: generations as cancelled (unloading the models cancels them), downloads
        at their next progress callback, partial file kept."""
        jobs: Jobs | None = getattr(self.app_state, "manage_jobs", None)
        for job in jobs.all() if jobs is not None else ():
            job.cancelled.set()
        await self.kronk_state.pool.close()


def make_server(app: FastAPI, *, host: str, port: int, log_level: str) -> KronkServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        # Requests have drained already; this only bounds closing idle connections.
        timeout_graceful_shutdown=5,
        log_config=None,  # kronk's own logging setup (the CLI's) applies
        server_header=False,
    )
    return KronkServer(config, app)


__all__ = ["KronkServer", "make_server"]
