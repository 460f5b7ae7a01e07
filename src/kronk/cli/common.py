"""Pieces every kronk command shares: the `--home` option, the consoles, `--json` output,
one error handler, and progress bars for downloads and hashing.

Errors: a command decorated with `@report_errors` turns any `KronkError` into one red line
on stderr that names the next command to try (once), and exit status 1. A user's mistake
never shows a traceback; a bug in kronk still does, because hiding it would help nobody.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.table import Table
from rich.text import Text

from kronk.errors import (
    CatalogError,
    DownloadError,
    InvalidModelFileError,
    KronkError,
    ModelIntegrityError,
    ModelNotFoundError,
)
from kronk.home import KronkHome
from kronk.models.download import DownloadProgress
from kronk.models.store import ModelStore

P = ParamSpec("P")
R = TypeVar("R")

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="kronk home folder (env: KRONK_HOME; default: ~/.kronk).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

# Results go to stdout; progress, warnings and errors to stderr, so `--json | jq` works.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_table(table: Table) -> None:
    """Print `table` to stdout at its natural width: rich would otherwise cut columns
    short with an ellipsis to fit the terminal (or 80 columns in a pipe); a narrow
    terminal wraps the lines instead, and nothing is lost."""
    natural = Measurement.get(console, console.options.update(width=1 << 16), table).maximum
    fitted = console.width
    console.width = max(fitted, natural)
    try:
        console.print(table)
    finally:
        console.width = fitted


# A command that leaves the process because of a KronkError exits with this status.
ERROR_EXIT = 1
INTERRUPTED_EXIT = 130

_BACKTICKED_COMMAND = re.compile(r"`(kronk [^`]+)`")


class CommandError(KronkError):
    """A failure the CLI itself detects, with the command that would help (`hint`)."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = ERROR_EXIT) -> None:
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code


def resolve_home(home: Path | None) -> KronkHome:
    """`--home`, else `KRONK_HOME`, else `~/.kronk` (see `kronk.home`)."""
    return KronkHome.resolve(home)


def open_store(home: Path | None) -> ModelStore:
    """The model store of the chosen home. An unusable catalog copy in the home is logged
    by `Catalog` as a warning, which `report_errors` prints as one `warning:` line."""
    return ModelStore(resolve_home(home))


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, no colours, no wrapping."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def human_size(n_bytes: int | None) -> str:
    return "?" if n_bytes is None else decimal(n_bytes)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)


# -- errors ---------------------------------------------------------------------------------


def next_command(exc: KronkError) -> str | None:
    """The command to suggest after `exc`: its own hint, else the first `kronk ...` command
    the message names, else a sensible default for its class."""
    if isinstance(exc, CommandError) and exc.hint:
        return exc.hint
    # A concrete command beats a template such as `kronk model pull <id|url>`.
    named = [m.group(1) for m in _BACKTICKED_COMMAND.finditer(str(exc)) if "<" not in m.group(1)]
    if named:
        return named[0]
    if isinstance(exc, ModelNotFoundError):
        return "kronk model list"
    if isinstance(exc, ModelIntegrityError):
        return "kronk model verify"
    if isinstance(exc, InvalidModelFileError):
        return "kronk model verify"
    if isinstance(exc, DownloadError):
        if exc.status in (401, 403):
            return "the same pull with --hf-token TOKEN (or set HF_TOKEN)"
        return "the same command again (downloads resume where they stopped)"
    if isinstance(exc, CatalogError):
        return "kronk catalog update --file PATH"
    return None


def print_error(exc: KronkError) -> None:
    """One red line (plus any detail lines the message carries) and the next command."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    hint = next_command(exc)
    if hint and f"`{hint}`" in lines[0]:
        hint = None  # the message already names it; saying it twice reads as noise
    suffix = f" — try: {hint}" if hint else ""
    if len(lines) == 1:
        err_console.print(
            f"[red]error:[/red] [red]{escape(lines[0])}[/red]{suffix}", soft_wrap=True
        )
        return
    # Multi-line messages carry tool output (pip's error); keep it readable below.
    err_console.print(f"[red]error:[/red] [red]{escape(lines[0])}[/red]", soft_wrap=True)
    for line in lines[1:]:
        err_console.print(f"  {escape(line)}", style="dim", soft_wrap=True)
    if hint:
        err_console.print(f"try: {escape(hint)}", soft_wrap=True)


def report_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command: KronkError and OSError become a message and exit status 1,
    Ctrl-C exits quietly with 130. kronk's own warnings are printed for the duration."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _cli_logging():
            try:
                return func(*args, **kwargs)
            except CommandError as exc:
                print_error(exc)
                raise typer.Exit(exc.exit_code) from None
            except KronkError as exc:
                print_error(exc)
                raise typer.Exit(ERROR_EXIT) from None
            except OSError as exc:  # disk full, permission denied: the user's to fix
                print_error(KronkError(str(exc)))
                raise typer.Exit(ERROR_EXIT) from None
            except KeyboardInterrupt:
                err_console.print("[yellow]interrupted[/yellow]")
                raise typer.Exit(INTERRUPTED_EXIT) from None

    return wrapper


class _WarningHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            warn(record.getMessage())


@contextlib.contextmanager
def _cli_logging() -> Iterator[None]:
    """Show kronk's warnings as `warning:` lines while a command runs, and keep
    llama.cpp's chatter (loader notes) out of the terminal.

    Scoped to the command and undone afterwards: tests run many commands in one process,
    and other tests rely on kronk's loggers propagating as usual.
    """
    kronk_log = logging.getLogger("kronk")
    llama_log = logging.getLogger("kronk.llama")
    handler = _WarningHandler(logging.WARNING)
    saved = (kronk_log.propagate, kronk_log.level, llama_log.level)
    kronk_log.addHandler(handler)
    kronk_log.propagate = False
    if kronk_log.level in (logging.NOTSET,) or kronk_log.level > logging.WARNING:
        kronk_log.setLevel(logging.WARNING)
    llama_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        kronk_log.removeHandler(handler)
        kronk_log.propagate, _, _ = saved
        kronk_log.setLevel(saved[1])
        llama_log.setLevel(saved[2])


# -- progress -------------------------------------------------------------------------------


class _SpeedColumn(TextColumn):
    """The speed the event reports (network bytes only; blank in other phases)."""

    def __init__(self) -> None:
        super().__init__("{task.fields[speed]}", style="progress.data.speed")


class _BytesColumn(DownloadColumn):
    """Bytes done of bytes total; blank for the placeholder shown before any progress."""

    def render(self, task: Task) -> Text:
        return Text("") if task.fields.get("waiting") else super().render(task)


class ProgressBars:
    """Live progress for `DownloadProgress` events: one bar per file, with its phase
    (download, assemble, verify, convert), bytes, speed and ETA.

    Use as a context manager and pass the instance as the `progress` callback. Events may
    come from several download threads at once. Until the first event arrives a spinner
    says what is going on (pip may take a while before the first bytes).
    """

    def __init__(
        self,
        waiting: str | None = None,
        *,
        console: Console | None = None,
        transient: bool = False,
    ) -> None:
        self._progress = Progress(
            SpinnerColumn(finished_text="[green]✓[/green]"),
            TextColumn("{task.description}"),
            TextColumn("{task.fields[phase]}", style="cyan"),
            BarColumn(bar_width=30),
            _BytesColumn(),
            _SpeedColumn(),
            TextColumn("{task.fields[eta]}", style="progress.remaining"),
            console=console or err_console,
            transient=transient,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        self._waiting: TaskID | None = None
        if waiting is not None:
            self._waiting = self._progress.add_task(
                escape(waiting), total=None, phase="", speed="", eta="", waiting=True
            )
        self.events = 0

    def __enter__(self) -> ProgressBars:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._drop_waiting()
            keep = bool(self._tasks) and not self._progress.live.transient
        if keep:
            self._progress.stop()
        else:
            # Nothing to keep on screen: stop without Progress.stop()'s closing newline
            # (printed when the output is not a terminal), so no empty line is left.
            self._progress.live.transient = True
            self._progress.live.stop()

    def __call__(self, event: DownloadProgress) -> None:
        with self._lock:
            self.events += 1
            self._drop_waiting()
            task = self._tasks.get(event.file)
            if task is None:
                task = self._progress.add_task(
                    escape(event.file), total=event.bytes_total, phase="", speed="", eta=""
                )
                self._tasks[event.file] = task
            downloading = event.phase in ("download", "upload")  # network phases
            self._progress.update(
                task,
                completed=event.bytes_done,
                total=event.bytes_total,
                phase=event.phase,
                speed=f"{decimal(int(event.speed))}/s" if downloading and event.speed > 0 else "",
                eta=_eta_text(event.eta) if downloading else "",
            )

    def on_hash(self, name: str, done: int, total: int) -> None:
        """Adapter for `HashProgress` callbacks (index rebuild, verify)."""
        self(DownloadProgress(name, done, total, 0.0, None, "verify"))

    def _drop_waiting(self) -> None:
        if self._waiting is not None:
            self._progress.remove_task(self._waiting)
            self._waiting = None


def _eta_text(eta: float | None) -> str:
    if eta is None:
        return ""
    seconds = int(eta + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"ETA {hours}:{minutes:02d}:{secs:02d}" if hours else f"ETA {minutes}:{secs:02d}"


__all__ = [
    "ERROR_EXIT",
    "CommandError",
    "HomeOption",
    "JsonOption",
    "ProgressBars",
    "console",
    "err_console",
    "human_size",
    "next_command",
    "open_store",
    "print_error",
    "print_json",
    "report_errors",
    "resolve_home",
    "warn",
]
