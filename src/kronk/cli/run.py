"""`kronk run MODEL`: chat with a model in the terminal.

Answers stream as they are generated; reasoning (a model's `<think>` part) is shown dimmed.
Ctrl-C stops the current answer and keeps the session; Ctrl-D or `/exit` leaves. With
stdin from a pipe it reads one message per line (echoing it), so scripts can use it too.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from kronk.cli.common import (
    HomeOption,
    ProgressBars,
    console,
    err_console,
    open_store,
    print_error,
    report_errors,
)
from kronk.errors import (
    ContextFullError,
    KronkError,
    ModelNotFoundError,
    UnsupportedFeatureError,
)
from kronk.models.resolver import ResolvedModel
from kronk.models.store import ModelStore, require_capability
from kronk.sdk import Kronk
from kronk.types import ChoiceDelta

PROMPT = ">>> "
EXIT_COMMANDS = frozenset({"/exit", "/bye", "/quit"})
MULTILINE_FENCE = '"""'
HELP_TEXT = (
    "/exit, /bye or Ctrl-D  leave\n"
    "/clear                 forget the conversation (keeps --system)\n"
    "Ctrl-C                 stop the answer being written\n"
    '"""                    start and end a message of several lines'
)


@dataclass
class Answer:
    """One assistant turn as the terminal saw it."""

    content: str
    reasoning: str
    finish_reason: str | None
    completion_tokens: int
    seconds: float
    cancelled: bool = False


class AnswerPrinter:
    """Writes streamed deltas: reasoning dimmed, then the answer, then one newline."""

    def __init__(self, out: Console) -> None:
        self.out = out
        self._in_reasoning = False
        self._wrote = False

    def write(self, delta: ChoiceDelta) -> None:
        if delta.reasoning_content:
            self._in_reasoning = True
            self._emit(delta.reasoning_content, "dim")
        if delta.content:
            if self._in_reasoning:
                self._in_reasoning = False
                self._emit("\n\n", None)  # the reasoning ends; the answer starts below it
            self._emit(delta.content, None)

    def finish(self, note: str | None = None, *, own_line: bool = False) -> None:
        """End the answer, with `note` after it (on a line of its own if asked)."""
        if note:
            separator = ("\n" if own_line else " ") if self._wrote else ""
            self._emit(separator + note, "dim italic")
        self.out.print()

    def _emit(self, text: str, style: str | None) -> None:
        self._wrote = True
        self.out.print(text, style=style, end="", markup=False, highlight=False, soft_wrap=True)


class CtrlC:
    """While entered (on the main thread), Ctrl-C inside `held()` is raised as
    KeyboardInterrupt only when the block ends.

    A KeyboardInterrupt that lands inside a terminal write leaves rich's buffer behind,
    and the text is printed twice; holding it until the write is done avoids that.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self._holding = False
        self._pending = False

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            # Only in place of Python's own handlers: an ignored or foreign one stays.
            if previous is signal.default_int_handler or callable(previous):
                self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *_: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _on_sigint(self, _signum: int, _frame: object) -> None:
        if self._holding:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self, *, raise_pending: bool = True) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            pending, self._pending = self._pending, False
            if pending and raise_pending:
                raise KeyboardInterrupt


class ChatSession:
    """A conversation with one loaded model: its history and the sampling parameters."""

    def __init__(
        self,
        kronk: Kronk,
        *,
        out: Console,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        verbose: bool = False,
    ) -> None:
        self.kronk = kronk
        self.out = out
        self.system = system
        self.params = dict(params or {})
        self.verbose = verbose
        self.messages: list[dict[str, str]] = []
        self.clear()

    def clear(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, text: str) -> Answer:
        """Stream one answer to `text`. Ctrl-C (KeyboardInterrupt) while it streams cancels
        the generation, leaves the history as it was, and returns a cancelled Answer."""
        self.messages.append({"role": "user", "content": text})
        printer = AnswerPrinter(self.out)
        content: list[str] = []
        reasoning: list[str] = []
        finish_reason: str | None = None
        tokens = 0
        rate = 0.0
        started = time.monotonic()
        try:
            with (
                CtrlC() as ctrl_c,
                self.kronk.chat_stream(self.messages, **self.params) as stream,
            ):
                try:
                    for chunk in stream:
                        if chunk.usage is not None:
                            tokens = chunk.usage.completion_tokens
                            rate = chunk.usage.tokens_per_second
                        for choice in chunk.choices:
                            finish_reason = choice.finish_reason or finish_reason
                            content.append(choice.delta.content or "")
                            reasoning.append(choice.delta.reasoning_content or "")
                            with ctrl_c.held():
                                printer.write(choice.delta)
                except KeyboardInterrupt:
                    # Cancel the generation and wait until its slot is free, so the next
                    # question starts clean (a second Ctrl-C meanwhile changes nothing).
                    with ctrl_c.held(raise_pending=False):
                        stream.close()
                    self.messages.pop()
                    printer.finish("[cancelled]")
                    return Answer(
                        "".join(content), "".join(reasoning), None, tokens, 0.0, cancelled=True
                    )
        except BaseException:
            if self.messages and self.messages[-1] == {"role": "user", "content": text}:
                self.messages.pop()
            raise
        seconds = time.monotonic() - started
        answer = Answer("".join(content), "".join(reasoning), finish_reason, tokens, seconds)
        self.messages.append({"role": "assistant", "content": answer.content})
        if self.verbose:
            printer.finish(
                f"({tokens} tokens, {rate:.1f} tokens/s, finish: {finish_reason})", own_line=True
            )
        else:
            printer.finish("(stopped at --max-tokens)" if finish_reason == "length" else None)
        return answer

    def loop(self, read_line: Callable[[str], str], *, echo: bool = False) -> None:
        """Read messages until /exit or end of input. `read_line(prompt)` returns a line or
        raises EOFError (Ctrl-D, end of a pipe) or KeyboardInterrupt (Ctrl-C)."""
        while True:
            try:
                text = self._read_message(read_line, echo)
            except EOFError:
                self.out.print()
                return
            except KeyboardInterrupt:
                self.out.print("\n[dim](Ctrl-C stops an answer; /exit or Ctrl-D leaves)[/dim]")
                continue
            command = text.strip()
            if not command:
                continue
            if command in EXIT_COMMANDS:
                return
            if command == "/clear":
                self.clear()
                self.out.print("[dim]conversation cleared[/dim]")
                continue
            if command in ("/help", "/?"):
                self.out.print(escape(HELP_TEXT), style="dim", highlight=False)
                continue
            try:
                self.ask(text)
            except KronkError as exc:  # context full, bad parameter: report, keep going
                print_error(exc)
                if isinstance(exc, ContextFullError):
                    self.out.print("[dim](/clear starts a new conversation)[/dim]")
            except KeyboardInterrupt:  # Ctrl-C before the answer's stream existed
                self.out.print("[dim][cancelled][/dim]")

    def _read_message(self, read_line: Callable[[str], str], echo: bool) -> str:
        line = self._read(read_line, PROMPT, echo)
        first = line.lstrip()
        if not first.startswith(MULTILINE_FENCE):
            return line
        # """ opens a message of several lines; a line ending with """ closes it.
        rest = first[len(MULTILINE_FENCE) :]
        if rest.strip() and rest.rstrip().endswith(MULTILINE_FENCE):
            return rest.rstrip()[: -len(MULTILINE_FENCE)]
        lines = [rest] if rest.strip() else []
        while True:
            more = self._read(read_line, "... ", echo)
            if more.rstrip().endswith(MULTILINE_FENCE):
                lines.append(more.rstrip()[: -len(MULTILINE_FENCE)])
                return "\n".join(lines).strip("\n")
            lines.append(more)

    def _read(self, read_line: Callable[[str], str], prompt: str, echo: bool) -> str:
        line = read_line(prompt)
        if echo:  # input from a pipe is not on the screen: show what was asked
            self.out.print(line, markup=False, highlight=False, soft_wrap=True)
        return line


def resolve_model(store: ModelStore, name: str) -> ResolvedModel:
    """A GGUF path, a local model id, or a catalog id (pulled first if not yet here)."""
    path = Path(name).expanduser()
    if path.is_file() or name.lower().endswith(".gguf") or "/" in name:
        # Kronk reports a missing or broken file itself, with the path in the message.
        return ResolvedModel(id=path.stem, path=path.absolute())
    try:
        return store.resolve(name)
    except ModelNotFoundError:
        if name not in store.catalog or store.index.get(name) is not None:
            raise
    err_console.print(f"{escape(name)} is not here yet; pulling it first")
    with ProgressBars(f"pulling {name}") as bars:
        store.pull(name, progress=bars)
    return store.resolve(name)


def run(
    model: Annotated[
        str, typer.Argument(help="A catalog id, a local model id, or a path to a .gguf file.")
    ],
    system: Annotated[
        str | None, typer.Option("--system", help="System prompt for the conversation.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (default: the model's).")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Most tokens per answer (default: until it stops).")
    ] = None,
    ctx_size: Annotated[
        int | None, typer.Option(help="Context window in tokens (default: the catalog's or 4096).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads (default: the performance cores).")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tokens and speed after each answer.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Chat with a model in the terminal (streams; Ctrl-C stops an answer, Ctrl-D leaves)."""
    store = open_store(home)
    resolved = resolve_model(store, model)
    require_capability(resolved, "chat")
    options: dict[str, Any] = {**resolved.load_options, "n_seq_max": 1}
    if ctx_size is not None:
        options["n_ctx"] = ctx_size
    if threads is not None:
        options["n_threads"] = threads
    params: dict[str, Any] = {}
    if temperature is not None:
        params["temperature"] = temperature
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    with err_console.status(f"loading {escape(resolved.id)}"):
        kronk = Kronk(resolved.path, model_id=resolved.id, **options)
    with kronk:
        if "chat" not in kronk.model_info().capabilities:
            raise UnsupportedFeatureError(
                f"{resolved.id} is an embedding model and cannot chat; pick a chat model "
                "(`kronk catalog list --category text-generation`)",
                "model",
            )
        interactive = sys.stdin.isatty()
        if interactive:
            err_console.print(
                f"[dim]chatting with {escape(resolved.id)} — /help for commands, "
                "Ctrl-D or /exit to leave[/dim]"
            )
        session = ChatSession(kronk, out=console, system=system, params=params, verbose=verbose)
        session.loop(_prompt_reader(console), echo=not interactive)


def _prompt_reader(out: Console) -> Callable[[str], str]:
    if sys.stdin.isatty():
        # Loaded, readline gives input() line editing and history (not on Windows).
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401

    def read_line(prompt: str) -> str:
        return out.input(f"[bold]{escape(prompt)}[/bold]")

    return read_line


def register(app: typer.Typer) -> None:
    app.command("run")(report_errors(run))
