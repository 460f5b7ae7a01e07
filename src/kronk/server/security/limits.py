"""Rate limits per token and family, in fixed windows (minute, hour, day, calendar month,
all UTC), counted in SQLite so they survive restarts and hold across processes.

One row per (token, family, window) holds the current window's start and count; a new
window overwrites the old row, so the table never grows past tokens x grants. Every check
is one IMMEDIATE transaction (SQLite's write lock): concurrent requests, from threads or
from another server on the same home, are counted one at a time and never over-admitted.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kronk.server.security.tokens import Limit, Window

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (
    token TEXT NOT NULL,
    family TEXT NOT NULL,
    window TEXT NOT NULL,
    start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (token, family, window)
)
"""


def window_bounds(window: Window, now: float) -> tuple[int, int]:
    """The start and end (epoch seconds) of the window holding `now`."""
    seconds = {"minute": 60, "hour": 3600, "day": 86400}.get(window)
    if seconds is not None:
        start = int(now) // seconds * seconds
        return start, start + seconds
    moment = datetime.fromtimestamp(now, UTC)
    first = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    following = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return int(first.timestamp()), int(following.timestamp())


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int  # of the tightest window (the one with the fewest requests left)
    remaining: int
    reset_s: float  # seconds until that window ends
    retry_after_s: float | None = None  # when refused: until the blocking window ends


_BUSY_S = 10.0  # how long a connection waits for another one's transaction


def _use_wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode (it stays so). SQLite does not wait out a busy lock for
    the switch, so two servers opening a new file at once would fail: retry a while."""
    deadline = time.monotonic() + _BUSY_S
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class RateLimiter:
    """Counts requests in `path` (created with its folder). `clock` gives epoch seconds;
    tests pass their own to roll windows over."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=_BUSY_S
            )
            _use_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")  # WAL keeps it consistent; no fsync a hit
            db.execute(_SCHEMA)
            self._db = db
        return self._db

    def hit(self, token: str, family: str, limits: Sequence[Limit]) -> Decision:
        """Count one request if every limit admits it; otherwise count nothing."""
        now = self.clock()
        bounds = [(lim, *window_bounds(lim.window, now)) for lim in limits]
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                used = []
                for lim, start, _end in bounds:
                    row = db.execute(
                        "SELECT start, count FROM counters WHERE token=? AND family=? AND window=?",
                        (token, family, lim.window),
                    ).fetchone()
                    used.append(row[1] if row is not None and row[0] == start else 0)
                blocked = [
                    end - now
                    for (lim, _s, end), n in zip(bounds, used, strict=True)
                    if n >= lim.count
                ]
                if not blocked:
                    for lim, start, _end in bounds:
                        db.execute(
                            "INSERT INTO counters VALUES (?, ?, ?, ?, 1) "
                            "ON CONFLICT (token, family, window) DO UPDATE SET "
                            "count = CASE WHEN start = excluded.start THEN count + 1 ELSE 1 END, "
                            "start = excluded.start",
                            (token, family, lim.window, start),
                        )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        counted = 0 if blocked else 1
        left = [
            (lim.count - n - counted, lim.count, end - now)
            for (lim, _s, end), n in zip(bounds, used, strict=True)
        ]
        remaining, limit, reset = min(left)
        return Decision(
            allowed=not blocked,
            limit=limit,
            remaining=max(0, remaining),
            reset_s=reset,
            retry_after_s=max(blocked) if blocked else None,
        )

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


__all__ = ["Decision", "RateLimiter", "window_bounds"]
