"""Pulls, imports and verifications with live progress, as server-sent events.

Each job runs in a worker thread (downloads and hashing block); its progress events
cross to the event loop through a queue and leave as SSE:

    event: started   {"job": "<id>", "kind": "pull", "ref": "..."}
    event: progress  {"file", "phase", "bytes", "total", "percent", "speed", "eta"}
    event: done      {"model": {...}}            (a pull or import)
    event: done      {"results": [...]}          (a verification)
    event: error     {"error": {"message", "type", "param", "code"}}

A job stops when its client closes the stream or when `DELETE /manage/jobs/{id}` asks:
the next progress callback in the worker raises, which ends the download with its
partial file kept, so pulling again resumes. A download stalled without progress stops
at the downloader's own timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from kronk.models.download import DownloadCancelledError, DownloadProgress
from kronk.server.errors import ErrorInfo, error_info
from kronk.server.openai.errors import error_body
from kronk.server.sse import EventStreamResponse, sse, sse_comment, with_keepalive

# At most this often per file and phase (plus every phase change and file end): a
# browser repaints a progress bar at this rate anyway.
PROGRESS_INTERVAL_S = 0.2
KEEPALIVE_S = 5.0

Work = Callable[[Callable[[DownloadProgress], None]], dict[str, Any]]


@dataclass(eq=False)
class Job:
    kind: str
    ref: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)  # the worker ended
    started_at: float = field(default_factory=time.time)
    last: dict[str, Any] | None = None  # the latest progress event, for `GET /manage/jobs`

    def describe(self) -> dict[str, Any]:
        return {
            "job": self.id,
            "kind": self.kind,
            "ref": self.ref,
            "started_at": self.started_at,
            "cancelled": self.cancelled.is_set(),
            "progress": self.last,
        }


class Jobs:
    """The jobs running now, so a second client (or `DELETE`) can find them. The registry
    is only touched from worker threads' ends and the loop; dict operations are atomic."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job

    def discard(self, job: Job) -> None:
        self._jobs.pop(job.id, None)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return list(self._jobs.values())


def jobs_of(request: Request) -> Jobs:
    """The app's job registry, created on first use."""
    jobs: Jobs | None = getattr(request.app.state, "manage_jobs", None)
    if jobs is None:
        jobs = request.app.state.manage_jobs = Jobs()
    return jobs


def progress_event(event: DownloadProgress) -> dict[str, Any]:
    total = event.bytes_total
    percent = min(100.0, 100.0 * event.bytes_done / total) if total else None
    return {
        "file": event.file,
        "phase": event.phase,
        "bytes": event.bytes_done,
        "total": total,
        "percent": percent,
        "speed": event.speed,
        "eta": event.eta,
    }


class _Relay:
    """DownloadProgress in a worker thread -> throttled dicts on the loop's queue; raises
    in the worker once the job is cancelled (that is how the download stops)."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]):
        self._job = job
        self._loop = loop
        self._queue = queue
        self._last: dict[tuple[str, str], float] = {}

    def __call__(self, event: DownloadProgress) -> None:
        if self._job.cancelled.is_set():
            raise DownloadCancelledError(f"{self._job.kind} of {self._job.ref} cancelled", "")
        key = (event.file, event.phase)
        now = time.monotonic()
        done = event.bytes_total is not None and event.bytes_done >= event.bytes_total
        if not done and key in self._last and now - self._last[key] < PROGRESS_INTERVAL_S:
            return
        self._last[key] = now
        item = progress_event(event)
        self._job.last = item
        self._loop.call_soon_threadsafe(self._queue.put_nowait, ("progress", item))


def _error_payload(exc: BaseException) -> dict[str, Any]:
    info = error_info(exc) if isinstance(exc, Exception) else None
    if info is None:
        info = ErrorInfo("server", f"internal error: {type(exc).__name__}")
    return error_body(info, "/manage")


def job_stream(request: Request, job: Job, work: Work) -> EventStreamResponse:
    """Run `work(progress)` in a thread and stream its progress and result as SSE."""
    jobs = jobs_of(request)
    jobs.add(job)

    async def events() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def run() -> None:
            try:
                result = work(_Relay(job, loop, queue))
            except BaseException as exc:  # every failure goes to the client
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))
            else:
                loop.call_soon_threadsafe(queue.put_nowait, ("done", result))
            finally:
                # Listed until the worker really ends: a cancelled download still holds
                # its partial file's lock until its next progress callback.
                jobs.discard(job)
                job.finished.set()

        # Not awaited: a cancelled job's worker ends at its next progress callback, and
        # the stream must not wait for that.
        loop.run_in_executor(None, run)
        yield sse({"job": job.id, "kind": job.kind, "ref": job.ref}, event="started")
        while True:
            kind, payload = await queue.get()
            if kind == "progress":
                yield sse(payload, event="progress")
            elif kind == "done":
                yield sse(payload, event="done")
                return
            else:
                yield sse(_error_payload(payload), event="error")
                return

    async def cleanup() -> None:
        job.cancelled.set()  # a no-op for a finished job; stops one whose client left

    return EventStreamResponse(
        with_keepalive(events(), sse_comment("keep-alive"), KEEPALIVE_S), cleanup
    )


__all__ = ["Job", "Jobs", "job_stream", "jobs_of", "progress_event"]
