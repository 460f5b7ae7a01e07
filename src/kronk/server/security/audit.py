"""The audit log: one JSON object a line for every management action and every refused
request (bad or missing credentials, missing grant, browser protections, rate limits).

Entries name the token by its id (`jti`) and key id, never the token itself; header
values are never copied. The file rotates at `max_bytes`, keeping `backups` old ones
(audit.log.1 is the newest of those). Writing is best effort: a full disk must not turn
requests into 500s, and a home that does not exist is not created for it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("kronk.server")


class AuditLog:
    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 10 * 2**20,
        backups: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.clock = clock
        self._lock = threading.Lock()
        self._warned = False

    def record(self, event: str, **fields: Any) -> None:
        entry = {"time": round(self.clock(), 3), "event": event, **fields}
        line = json.dumps(entry, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            try:
                self._write(line.encode("utf-8"))
            except OSError as exc:
                if not self._warned:  # once: a broken log must not flood the server's log
                    log.warning("cannot write the audit log %s: %s", self.path, exc)
                    self._warned = True

    def _write(self, data: bytes) -> None:
        folder = self.path.parent
        if not folder.exists():
            if not folder.parent.exists():
                raise FileNotFoundError(f"{folder.parent} does not exist")
            folder.mkdir(exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            self._rotate()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)


__all__ = ["AuditLog"]
