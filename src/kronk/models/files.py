"""File helpers for model management: hashing, atomic writes, inter-process locks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

try:  # POSIX only; elsewhere concurrent kronk processes are simply not serialised.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

HASH_BLOCK = 4 * 1024 * 1024


class LockBusyError(Exception):
    """Another process holds the lock (only raised for non-blocking locks)."""


def sha256_file(
    path: Path, *, progress: Callable[[int], None] | None = None, limit: int | None = None
) -> str:
    """Hex sha256 of `path` (of its first `limit` bytes when given); `progress(bytes_done)`."""
    hasher = hashlib.sha256()
    with path.open("rb") as source:
        update_hash_from(source, hasher, limit=limit, progress=progress)
    return hasher.hexdigest()


def update_hash_from(
    source: IO[bytes],
    hasher: hashlib._Hash,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Feed `source` (up to `limit` bytes) into `hasher`; returns the byte count."""
    done = 0
    while limit is None or done < limit:
        want = HASH_BLOCK if limit is None else min(HASH_BLOCK, limit - done)
        block = source.read(want)
        if not block:
            break
        hasher.update(block)
        done += len(block)
        if progress is not None:
            progress(done)
    return done


def temp_path_for(dest: Path) -> Path:
    """A unique hidden name next to `dest`: same file system (atomic rename), never listed.

    The name carries this process's id, so `remove_abandoned_temps` can tell a temp file
    whose writer was killed from one that is still being written."""
    return dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")


_TEMP_NAME = re.compile(r"\..+\.(?P<pid>\d+)-[0-9a-f]{12}\.tmp")


def remove_abandoned_temps(folder: Path) -> list[Path]:
    """Delete the temp files (and staging folders) in `folder` whose writing process is
    gone, e.g. an import killed mid-copy; returns what was deleted."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in sorted(folder.iterdir()):
        match = _TEMP_NAME.fullmatch(path.name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if os.name != "posix":  # no safe liveness probe (os.kill would terminate): keep
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def atomic_write_bytes(dest: Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write `data` to `dest` so readers see the old file or the new one, never a mix.

    `mode` (less the umask) applies from the first byte: 0o600 keeps secrets private."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(dest)
    try:
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, dest)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def try_lock(fd: int) -> None:
    """Take an exclusive lock on `fd` without waiting; raise `LockBusyError` if held.

    The kernel drops the lock when the process dies, so a killed pull never leaves a
    stale lock behind.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockBusyError from None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the lock file `path` (created if needed), waiting for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
