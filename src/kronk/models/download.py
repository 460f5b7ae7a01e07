"""HTTP(S) downloads that resume, verify, and cannot leave a corrupt file in place.

A file downloads into `<name>.partial` next to its destination. A later run resumes that
file with an HTTP `Range` request, hashing the bytes already there first, so the sha256
covers the whole file. Only when size and sha256 match (where known) is the partial
file renamed onto the destination; a mismatch deletes it and raises
`ModelIntegrityError` with expected and actual values. A lost connection keeps the
partial file and raises `DownloadError`, so running the same command again continues.

Servers that ignore `Range` (200 instead of 206) or answer with a range that does not
start where asked are handled by starting again from byte 0. A per-file lock (released
by the kernel when a process dies) stops two processes writing the same partial file.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import httpx

from kronk.errors import DownloadError, ModelIntegrityError
from kronk.models.files import LockBusyError, fsync_dir, try_lock, update_hash_from
from kronk.models.names import partial_path

DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
DEFAULT_PARALLEL = 4
# Progress events: at most this often, or on every 1% of the file, whichever comes first.
_PROGRESS_INTERVAL = 0.1
_SPEED_WINDOW = 5.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_USER_AGENT = "kronk-model-downloader"


class Cancellation:
    """Stops downloads running in worker threads. `set()` also shuts the sockets they are
    reading, so a read stalled on an unresponsive server ends now, not at its timeout."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            for sock in self._sockets:
                _shut(sock)

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True (at once) when cancelled."""
        return self._event.wait(seconds)

    @contextlib.contextmanager
    def watching(self, response: httpx.Response) -> Iterator[None]:
        """Shut `response`'s connection if cancelled while the block runs."""
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):  # another transport: the read timeout rules
            yield
            return
        with self._lock:
            if self._event.is_set():
                _shut(sock)
            self._sockets.add(sock)
        try:
            yield
        finally:
            with self._lock:
                self._sockets.discard(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


@dataclass(frozen=True)
class DownloadProgress:
    """Progress of one file, for progress bars.

    `bytes_done` includes bytes resumed from an earlier run; `speed` (bytes/s) counts only
    this run's network bytes over the last few seconds; `eta` is seconds left, None when
    unknown. `phase` is "download" here; model pulls also report "assemble", "verify" and
    "convert" with the same event type.
    """

    file: str
    bytes_done: int
    bytes_total: int | None
    speed: float
    eta: float | None
    phase: str = "download"


ProgressCallback = Callable[[DownloadProgress], None]


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: where from, where to, and what it must be (None = not known)."""

    url: str
    dest: Path
    size: int | None = None
    sha256: str | None = None
    token: str | None = None  # sent as `Authorization: Bearer` (Hugging Face tokens)


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str
    fetched: int  # bytes received over the network in this call
    resumed_from: int  # bytes already on disk that were kept


class ProgressMeter:
    """Turns byte counts into throttled `DownloadProgress` events with speed and ETA."""

    def __init__(
        self,
        file: str,
        total: int | None,
        emit: ProgressCallback | None,
        *,
        phase: str = "download",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.file = file
        self.total = total
        self.phase = phase
        self._emit = emit
        self._clock = clock
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._fetched = 0
        self._last_time = -math.inf
        self._last_done = -1
        self._last_phase = phase

    def update(self, done: int, *, fetched_delta: int = 0, force: bool = False) -> None:
        """Record progress; emit an event when due (a phase change or `force` always is)."""
        if self._emit is None:
            return
        now = self._clock()
        self._fetched += fetched_delta
        self._samples.append((now, self._fetched))
        while len(self._samples) > 2 and now - self._samples[0][0] > _SPEED_WINDOW:
            self._samples.popleft()
        if not force and self.phase == self._last_phase:
            step = max(1, (self.total or 0) // 100)
            due = (
                now - self._last_time >= _PROGRESS_INTERVAL
                or done - self._last_done >= step
                or (self.total is not None and done >= self.total)
            )
            if done == self._last_done or not due:
                return
        self._last_time, self._last_done, self._last_phase = now, done, self.phase
        self._emit(
            DownloadProgress(self.file, done, self.total, *self._speed_eta(now, done), self.phase)
        )

    def _speed_eta(self, now: float, done: int) -> tuple[float, float | None]:
        first_time, first_fetched = self._samples[0]
        elapsed = now - first_time
        speed = (self._fetched - first_fetched) / elapsed if elapsed > 0 else 0.0
        if self.total is None or speed <= 0:
            return speed, None
        return speed, max(0.0, (self.total - done) / speed)


class DownloadCancelledError(DownloadError):
    """The download was stopped because a sibling download failed or the user interrupted."""


class _Restart(Exception):
    """Start again from byte 0 (server ignored or mangled the range request)."""


class _Retryable(Exception):
    def __init__(self, error: DownloadError) -> None:
        super().__init__(str(error))
        self.error = error


class Downloader:
    """Downloads files over one shared HTTP client; use as a context manager or `close()`."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        retry_backoff: float = 1.0,
        max_parallel: int = DEFAULT_PARALLEL,
        client: httpx.Client | None = None,
    ) -> None:
        """`retries` resumes after a dropped connection or a 5xx this many times, waiting
        `retry_backoff * 2**n` seconds; `timeout` bounds connecting and each read."""
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.max_parallel = max(1, max_parallel)
        self._own_client = client is None
        self._client = client or httpx.Client(
            timeout=httpx.Timeout(timeout),
            follow_redirects=True,  # Hugging Face redirects to its CDN; httpx drops the
            # Authorization header when a redirect leaves the origin.
            headers={"User-Agent": _USER_AGENT},
        )

    def __enter__(self) -> Downloader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def download_all(
        self,
        files: Sequence[RemoteFile],
        progress: ProgressCallback | None = None,
    ) -> list[DownloadResult]:
        """Download `files` in parallel threads (at most `max_parallel` at once).

        `progress` is called from the worker threads. The first failure stops the other
        downloads (their partial files stay for a resume) and is raised; so is Ctrl-C.
        """
        if len(files) <= 1:
            return [self.download(f, progress) for f in files]
        cancel = Cancellation()
        pool = ThreadPoolExecutor(
            max_workers=min(self.max_parallel, len(files)), thread_name_prefix="kronk-download"
        )
        futures: list[Future[DownloadResult]] = [
            pool.submit(self.download, f, progress, cancel) for f in files
        ]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f in done and f.exception() is not None]
            if failed:
                cancel.set()
                wait(futures)
                error = failed[0].exception()
                assert error is not None
                raise error
            return [f.result() for f in futures]
        except BaseException:
            cancel.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def download(
        self,
        file: RemoteFile,
        progress: ProgressCallback | None = None,
        cancel: Cancellation | None = None,
    ) -> DownloadResult:
        """Download one file (resuming `<dest>.partial`), verify it, and move it into place."""
        dest = Path(file.dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_path(dest)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o666)
        with os.fdopen(fd, "r+b", buffering=0) as out:
            try:
                try_lock(out.fileno())
            except LockBusyError:
                raise DownloadError(
                    f"another kronk process is downloading {dest.name} into {dest.parent}; "
                    "wait for it to finish",
                    file.url,
                ) from None
            if file.sha256 is not None and _matches(dest, file.size, file.sha256):
                # Already complete and verified (e.g. a finished earlier run): nothing to do.
                partial.unlink(missing_ok=True)
                return DownloadResult(dest, dest.stat().st_size, file.sha256, 0, 0)
            try:
                # A lone download gets a cancellation nobody sets: one code path for both.
                return self._download_locked(
                    file, out, partial, progress, cancel if cancel is not None else Cancellation()
                )
            except BaseException:
                _remove_if_empty(partial, out)
                raise

    def _download_locked(
        self,
        file: RemoteFile,
        out: io.FileIO,
        partial: Path,
        progress: ProgressCallback | None,
        cancel: Cancellation,
    ) -> DownloadResult:
        meter = ProgressMeter(file.dest.name, file.size, progress)
        attempt = restarts = 0
        while True:
            try:
                return self._attempt(file, out, partial, meter, cancel)
            except _Restart:
                # Keep the (locked) file, drop its content: the next attempt starts at 0.
                out.truncate(0)
                restarts += 1
                if restarts > 2:
                    raise DownloadError(
                        f"{file.url} keeps answering range requests wrongly", file.url
                    ) from None
            except _Retryable as retry:
                if attempt >= self.retries:
                    raise retry.error from None
                attempt += 1
                wait_for = self.retry_backoff * 2 ** (attempt - 1)
                if cancel.wait(wait_for):
                    raise _cancelled(file) from None

    def _attempt(
        self,
        file: RemoteFile,
        out: io.FileIO,
        partial: Path,
        meter: ProgressMeter,
        cancel: Cancellation,
    ) -> DownloadResult:
        offset = os.fstat(out.fileno()).st_size
        if file.size is not None and offset > file.size:
            out.truncate(0)
            offset = 0
        hasher = hashlib.sha256()
        out.seek(0)
        # The kept prefix is hashed too, so the final digest covers the whole file.
        offset = update_hash_from(out, hasher, limit=offset)
        resumed_from = offset
        if file.size is not None and offset == file.size:
            return self._finish(file, out, partial, hasher, offset, 0, resumed_from, None)

        headers = {"Accept-Encoding": "identity"}
        if file.token:
            headers["Authorization"] = f"Bearer {file.token}"
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        done = offset
        total: int | None = file.size
        try:
            with (
                self._client.stream("GET", file.url, headers=headers) as response,
                cancel.watching(response),
            ):
                start, total = self._check_response(file, response, offset, partial)
                if start != offset:  # the server sends the whole file: start over
                    out.truncate(0)
                    hasher = hashlib.sha256()
                    done = resumed_from = 0
                out.seek(done)
                meter.total = total
                meter.update(done, force=True)
                # No chunk_size: httpx would hold bytes back until a chunk fills, and a
                # dropped connection would lose them instead of leaving them to resume.
                for chunk in response.iter_raw():
                    if cancel.is_set():
                        raise _cancelled(file)
                    out.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    if total is not None and done > total:
                        partial.unlink(missing_ok=True)
                        raise ModelIntegrityError(
                            f"{file.dest.name} from {file.url} does not match: expected "
                            f"{total} bytes, the server sent more; the download was deleted"
                        )
                    meter.update(done, fetched_delta=len(chunk))
                if cancel.is_set():  # its socket was shut mid-body
                    raise _cancelled(file)
        except httpx.TransportError as exc:
            if cancel.is_set():  # the cancel shut its socket
                raise _cancelled(file) from None
            error = _connection_error(file, exc, done, total, partial)
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                # Not a transfer cut short: retrying an unreachable host only delays the error.
                raise error from None
            raise _Retryable(error) from None
        meter.update(done, force=True)
        return self._finish(
            file, out, partial, hasher, done, done - resumed_from, resumed_from, total
        )

    def _check_response(
        self, file: RemoteFile, response: httpx.Response, offset: int, partial: Path
    ) -> tuple[int, int | None]:
        """Return (first byte the body starts at, total file size if known), or raise."""
        status = response.status_code
        if status == 416 and offset > 0:
            # Our partial file is not a prefix the server can continue (changed file).
            raise _Restart
        if status in (401, 403):
            hint = (
                " (a gated or private repository: set HF_TOKEN or pass --hf-token)"
                if file.token is None
                else " (the token was refused; check it has access to this repository)"
            )
            raise DownloadError(
                f"{file.url}: HTTP {status} {_reason(status)}{hint}", file.url, status
            )
        if status == 404:
            raise DownloadError(f"{file.url}: HTTP 404, no such file there", file.url, 404)
        if status >= 500 or status in (408, 429):
            raise _Retryable(
                DownloadError(
                    f"{file.url}: HTTP {status} {_reason(status)} from the server", file.url, status
                )
            )
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            start = int(match.group(1)) if match else -1
            if start not in (offset, 0):  # not the range asked for, nor the whole file
                raise _Restart
            total = None if match is None or match.group(3) == "*" else int(match.group(3))
            return start, self._expected_total(file, total, partial)
        if status == 200:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            return 0, self._expected_total(file, total, partial)
        raise DownloadError(f"{file.url}: unexpected HTTP {status}", file.url, status)

    def _expected_total(self, file: RemoteFile, total: int | None, partial: Path) -> int | None:
        if total is not None and file.size is not None and total != file.size:
            partial.unlink(missing_ok=True)
            raise ModelIntegrityError(
                f"{file.dest.name} from {file.url} does not match: expected {file.size} bytes, "
                f"the server has {total} bytes; nothing was kept"
            )
        return file.size if file.size is not None else total

    def _integrity_failure(
        self,
        file: RemoteFile,
        partial: Path,
        size: int,
        hasher: hashlib._Hash,
        expected_size: int | None,
    ) -> None:
        partial.unlink(missing_ok=True)
        expected = f"{expected_size} bytes" if expected_size is not None else "unknown size"
        if file.sha256:
            expected += f" with sha256 {file.sha256}"
        got = f"{size} bytes with sha256 {hasher.hexdigest()}"
        raise ModelIntegrityError(
            f"{file.dest.name} from {file.url} does not match: expected {expected}, "
            f"got {got}; the download was deleted"
        )

    def _finish(
        self,
        file: RemoteFile,
        out: io.FileIO,
        partial: Path,
        hasher: hashlib._Hash,
        size: int,
        fetched: int,
        resumed_from: int,
        total: int | None,
    ) -> DownloadResult:
        expected_size = file.size if file.size is not None else total
        digest = hasher.hexdigest()
        if (expected_size is not None and size != expected_size) or (
            file.sha256 is not None and digest != file.sha256.lower()
        ):
            self._integrity_failure(file, partial, size, hasher, expected_size)
        os.fsync(out.fileno())
        os.replace(partial, file.dest)
        fsync_dir(file.dest.parent)
        return DownloadResult(Path(file.dest), size, digest, fetched, resumed_from)


def download_file(
    url: str,
    dest: Path,
    *,
    size: int | None = None,
    sha256: str | None = None,
    token: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
) -> DownloadResult:
    """Download one file; see `Downloader.download`."""
    with Downloader(timeout=timeout, retries=retries) as downloader:
        return downloader.download(RemoteFile(url, Path(dest), size, sha256, token), progress)


def download_files(
    files: Sequence[RemoteFile],
    *,
    progress: ProgressCallback | None = None,
    max_parallel: int = DEFAULT_PARALLEL,
    timeout: float = DEFAULT_TIMEOUT,
    retries: int = DEFAULT_RETRIES,
) -> list[DownloadResult]:
    """Download several files in parallel; see `Downloader.download_all`."""
    with Downloader(timeout=timeout, retries=retries, max_parallel=max_parallel) as downloader:
        return downloader.download_all(files, progress)


def _matches(path: Path, size: int | None, sha256: str) -> bool:
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return False
    if size is not None and actual != size:
        return False
    hasher = hashlib.sha256()
    with path.open("rb") as existing:
        update_hash_from(existing, hasher)
    return hasher.hexdigest() == sha256.lower()


def _remove_if_empty(partial: Path, out: io.FileIO) -> None:
    """Drop a partial file that holds nothing to resume (still ours: same inode)."""
    try:
        mine = os.fstat(out.fileno())
        if mine.st_size == 0 and os.stat(partial).st_ino == mine.st_ino:
            partial.unlink()
    except OSError:
        pass


def _cancelled(file: RemoteFile) -> DownloadCancelledError:
    return DownloadCancelledError(
        f"download of {file.dest.name} stopped; its partial file is kept for a resume", file.url
    )


def _connection_error(
    file: RemoteFile, exc: httpx.TransportError, done: int, total: int | None, partial: Path
) -> DownloadError:
    host = urlsplit(file.url).netloc
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return DownloadError(f"could not connect to {host} for {file.url}: {exc}", file.url)
    of_total = f" of {total}" if total is not None else ""
    return DownloadError(
        f"connection to {host} lost after {done}{of_total} bytes of {file.dest.name} "
        f"({type(exc).__name__}: {exc}); the partial download is kept in {partial}; "
        "run the same command again to resume",
        file.url,
    )


def _reason(status: int) -> str:
    return {401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests"}.get(
        status, httpx.codes.get_reason_phrase(status)
    )
