"""`kronk server start|stop|status|logs`: run the OpenAI-compatible server.

`start` runs in the foreground (Ctrl-C drains and stops it); `start -d` starts the
same command as a detached process that writes <home>/run/server.pid and appends to
<home>/logs/server.log, and returns once the server is ready. `stop` sends SIGTERM
to the pid in the pid file and waits for the graceful shutdown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from kronk.errors import ConfigError, KronkError
from kronk.models.aliases import parse_alias
from kronk.pool import ModelPool, PoolEvent
from kronk.server.settings import ServerSettings, home_folder

app = typer.Typer(
    help="Run the OpenAI-compatible server (default http://127.0.0.1:11435/v1).",
    no_args_is_help=True,
)

err_console = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="kronk home folder (env: KRONK_HOME; default: ~/.kronk)"),
]


# -- start ---------------------------------------------------------------------------------


@app.command()
def start(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on (env: KRONK_HOST; default: 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (env: KRONK_PORT; default: 11435)")] = None,
    home: HomeOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Load this model at start: a model id or a .gguf path (env: KRONK_MODEL)"
        ),
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option(
            help="Parallel slots per model (env: KRONK_PARALLEL; default: catalog, else 4)"
        ),
    ] = None,
    ctx_size: Annotated[
        int | None,
        typer.Option(
            help="Context window per slot, in tokens "
            "(env: KRONK_CTX_SIZE; default: catalog, else 4096)"
        ),
    ] = None,
    models_max: Annotated[
        int | None, typer.Option(help="Models loaded at once (env: KRONK_MODELS_MAX; default: 3)")
    ] = None,
    ttl: Annotated[
        float | None,
        typer.Option(
            help="Idle seconds before unloading a model; 0 at once, -1 never "
            "(env: KRONK_TTL; default: 300)"
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="CPU threads per model (env: KRONK_THREADS)")
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(
            help="Requests that may wait for a slot, per model (env: KRONK_MAX_QUEUE; default: 64)"
        ),
    ] = None,
    prompt_cache_size: Annotated[
        str | None,
        typer.Option(
            help="Host memory per model for KV states of long prompts that lost their slot, "
            "e.g. 512MiB; 0 turns it off (env: KRONK_PROMPT_CACHE_SIZE; default: 1GiB)"
        ),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            help="Memory the loaded models' estimates may add up to, e.g. 8GiB; 0: no limit "
            "(env: KRONK_MEMORY_BUDGET; default: the RAM available at start less 10%)"
        ),
    ] = None,
    queue_size: Annotated[
        int | None,
        typer.Option(
            help="Requests that may wait for room to load their model "
            "(env: KRONK_QUEUE_SIZE; default: 64)"
        ),
    ] = None,
    queue_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a request waits for a slot or for room to load its model before "
            "a 503 (529 for Anthropic) "
            "(env: KRONK_QUEUE_TIMEOUT; default: 300)"
        ),
    ] = None,
    cache_type_k: Annotated[
        str | None,
        typer.Option(
            help="KV cache type of keys: f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_1, iq4_nl "
            "(env: KRONK_CACHE_TYPE_K; default: f16)"
        ),
    ] = None,
    cache_type_v: Annotated[
        str | None,
        typer.Option(
            help="KV cache type of values; a quantized one needs flash attention "
            "(env: KRONK_CACHE_TYPE_V; default: f16)"
        ),
    ] = None,
    flash_attn: Annotated[
        str | None,
        typer.Option(help="Flash attention: auto|on|off (env: KRONK_FLASH_ATTN; default: auto)"),
    ] = None,
    spec: Annotated[
        str | None,
        typer.Option(
            help="Speculative decoding: auto (n-gram drafts where they pay), ngram, "
            "ngram-simple (4-token lookup), draft (a draft model), off (env: KRONK_SPEC; "
            "default: auto)"
        ),
    ] = None,
    draft_model: Annotated[
        str | None,
        typer.Option(
            help="Draft model (id or .gguf) with the target's vocabulary; default for "
            "--spec draft: the one the catalog names (env: KRONK_DRAFT_MODEL)"
        ),
    ] = None,
    draft_max: Annotated[
        int | None,
        typer.Option(
            help="Most draft tokens a slot verifies per step (env: KRONK_DRAFT_MAX; default: 64)"
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="critical|error|warning|info|debug|trace (env: KRONK_LOG_LEVEL; default: info)"
        ),
    ] = None,
    graceful_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds in-flight requests get to finish on stop "
            "(env: KRONK_GRACEFUL_TIMEOUT; default: 30)"
        ),
    ] = None,
    alias: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=MODEL: serve MODEL under another name too; repeatable; globs allowed, "
            "e.g. --alias 'claude-*=qwen2.5-coder-0.5b-instruct' (config: aliases:)"
        ),
    ] = None,
    keepalive: Annotated[
        float | None,
        typer.Option(
            help="Seconds between keep-alives on streams still queued or prefilling "
            "(env: KRONK_KEEPALIVE; default: 5)"
        ),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            help="Who needs a token: open (nobody), manage (management), all "
            "(env: KRONK_AUTH; default: open)"
        ),
    ] = None,
    allowed_origins: Annotated[
        str | None,
        typer.Option(
            help="Other web origins that may call it, comma-separated, globs allowed "
            "(env: KRONK_ALLOWED_ORIGINS)"
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Allow --auth open on a non-loopback address (env: KRONK_INSECURE)"
        ),
    ] = False,
    tools: Annotated[
        str | None,
        typer.Option(
            help="Server-side tools offered to every chat request, comma-separated: "
            "web_search, web_fetch, mcp:NAME (env: KRONK_TOOLS; docs/tools.md)"
        ),
    ] = None,
    mcp_config: Annotated[
        Path | None,
        typer.Option(
            help='MCP servers, an {"mcpServers": {...}} JSON file (env: KRONK_MCP_CONFIG)',
            dir_okay=False,
        ),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Run in the background (see `kronk server logs`)")
    ] = False,
) -> None:
    """Start the server. Settings: flags > KRONK_* environment > <home>/config.yaml > defaults."""
    flags: dict[str, Any] = {
        "host": host,
        "port": port,
        "home": home,
        "model": model,
        "parallel": parallel,
        "ctx_size": ctx_size,
        "models_max": models_max,
        "ttl": ttl,
        "threads": threads,
        "max_queue": max_queue,
        "prompt_cache_size": prompt_cache_size,
        "memory_budget": memory_budget,
        "queue_size": queue_size,
        "queue_timeout": queue_timeout,
        "cache_type_k": cache_type_k,
        "cache_type_v": cache_type_v,
        "flash_attn": flash_attn,
        "spec": spec.lower() if spec else None,
        "draft_model": draft_model,
        "draft_max": draft_max,
        "log_level": log_level.lower() if log_level else None,
        "graceful_timeout": graceful_timeout,
        "keepalive": keepalive,
        "aliases": None,  # parsed below, where a bad one is reported as an error
        "auth": auth.lower() if auth else None,
        "allowed_origins": allowed_origins,
        "insecure": True if insecure else None,  # absent: the environment or config decides
        "tools": tools,
        "mcp_config": mcp_config.resolve() if mcp_config else None,
    }
    try:
        flags["aliases"] = dict(parse_alias(a) for a in alias) if alias else None
        settings = ServerSettings.load(flags)
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    from kronk.server.security import open_bind_problem
    from kronk.server.security.browser import is_loopback
    from kronk.server.security.keys import KeyStore

    problem = open_bind_problem(settings)
    if problem is not None:
        err_console.print(f"[red]error:[/red] {escape(problem)}")
        raise typer.Exit(2)
    if settings.auth != "open" and not KeyStore(settings.paths.keys_dir).keys():
        err_console.print(
            f"[yellow]warning:[/yellow] --auth {settings.auth} but no signing key yet, so no "
            "token is accepted: run `kronk security key create`"
        )
    if settings.auth == "open" and not is_loopback(settings.host):
        err_console.print(
            "[yellow]warning:[/yellow] auth is open on a non-loopback address (--insecure): "
            "anyone who can reach it may use and manage this server"
        )
    if detach:
        raise typer.Exit(_start_detached(settings, flags))
    raise typer.Exit(run_foreground(settings))


def run_foreground(settings: ServerSettings) -> int:
    """Serve until stopped; returns the exit code."""
    from kronk.server.app import create_app
    from kronk.server.resolvers import build_resolver
    from kronk.server.runner import make_server

    _configure_logging(settings.log_level)
    try:
        resolver, settings = build_resolver(settings)
        if settings.model is not None:
            resolver.resolve(settings.model)  # an unknown --model fails now, not after binding
    except KronkError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        return 1
    running = read_running_pid(settings.pid_file)
    if running is not None and running != os.getpid():
        err_console.print(f"[red]error:[/red] a kronk server is already running (pid {running})")
        return 1
    pool = ModelPool(resolver, **settings.pool_options())
    holder: list[Any] = []

    def on_preload_failure(_message: str) -> None:
        holder[0].begin_shutdown(exit_code=1)

    app_ = create_app(pool, settings=settings, on_preload_failure=on_preload_failure)
    server = make_server(app_, host=settings.host, port=settings.port, log_level=settings.log_level)
    holder.append(server)
    progress = _LoadProgressBar(pool) if err_console.is_terminal else None
    _write_pid_file(settings.pid_file, os.getpid())
    _write_atomic(
        _address_file(settings), json.dumps({"pid": os.getpid(), "url": settings.base_url})
    )
    try:
        server.run()
    finally:
        if progress is not None:
            progress.close()
        if read_pid_file(settings.pid_file) == os.getpid():
            settings.pid_file.unlink(missing_ok=True)
            _address_file(settings).unlink(missing_ok=True)
    if not server.started and server.exit_code == 0:
        return 1
    return server.exit_code


class _LoadProgressBar:
    """A rich progress bar per model while it loads (foreground, interactive only)."""

    def __init__(self, pool: ModelPool) -> None:
        self._progress = Progress(
            TextColumn("loading [bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}
        self._remove = pool.add_listener(self._on_event)

    def _on_event(self, event: PoolEvent) -> None:
        if event.kind == "loading":
            if not self._tasks:
                self._progress.start()
            self._tasks[event.model] = self._progress.add_task(event.model, total=1.0)
        elif event.kind == "progress" and event.model in self._tasks:
            self._progress.update(self._tasks[event.model], completed=event.progress)
        elif event.kind in ("loaded", "failed") and event.model in self._tasks:
            self._progress.remove_task(self._tasks.pop(event.model))
            if not self._tasks:
                self._progress.stop()
            if event.kind == "loaded":
                err_console.print(f"[green]loaded[/green] {escape(event.model)}", highlight=False)

    def close(self) -> None:
        self._remove()
        self._progress.stop()


def _configure_logging(level: str) -> None:
    numeric = 5 if level == "trace" else getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(
        level=numeric, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", force=True
    )


def _start_detached(settings: ServerSettings, flags: dict[str, Any]) -> int:
    running = read_running_pid(settings.pid_file)
    if running is not None:
        err_console.print(f"[red]error:[/red] a kronk server is already running (pid {running})")
        return 1
    argv = [sys.executable, "-m", "kronk.cli.main", "server", "start"]
    for name, value in {**flags, "home": settings.home}.items():
        if name == "aliases":
            for alias, target in (value or {}).items():
                argv += ["--alias", f"{alias}={target}"]
        elif value is True:  # a switch (--insecure)
            argv.append(f"--{name.replace('_', '-')}")
        elif value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    settings.paths.logs_dir.mkdir(parents=True, exist_ok=True)
    with settings.log_file.open("ab") as log_file:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this terminal must not reach it
            close_fds=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"{settings.base_url}/health/ready"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        code = child.poll()
        if code is not None:
            err_console.print(f"[red]error:[/red] the server exited with status {code}; log:")
            for line in tail_lines(settings.log_file, 20):
                err_console.print(line, markup=False, highlight=False)
            return 1
        if settings.port and _answers(url):
            typer.echo(
                f"kronk server started (pid {child.pid}) at {settings.base_url}/v1\n"
                f"logs: {settings.log_file}  (kronk server logs -f)"
            )
            return 0
        time.sleep(0.2)
    err_console.print(
        f"[yellow]the server (pid {child.pid}) is not ready yet; see its log[/yellow]"
    )
    return 1


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- stop, status, logs --------------------------------------------------------------------


@app.command()
def stop(
    home: HomeOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the shutdown")] = 60.0,
    force: Annotated[bool, typer.Option(help="SIGKILL it if it has not stopped in time")] = False,
) -> None:
    """Stop the server gracefully: in-flight requests finish, new ones get 503."""
    paths = _settings_paths(home)
    pid_file = paths.pid_file
    pid = read_pid_file(pid_file)
    if pid is None:
        typer.echo("no kronk server is running")
        return
    if not pid_alive(pid):
        pid_file.unlink(missing_ok=True)
        _address_file(paths).unlink(missing_ok=True)
        typer.echo(f"no kronk server is running (removed the stale pid file for pid {pid})")
        return
    os.kill(pid, signal.SIGTERM)
    if wait_for_exit(pid, timeout):
        pid_file.unlink(missing_ok=True)
        _address_file(paths).unlink(missing_ok=True)
        typer.echo(f"kronk server stopped (pid {pid})")
        return
    if force:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for_exit(pid, 10)
        pid_file.unlink(missing_ok=True)
        _address_file(paths).unlink(missing_ok=True)
        typer.echo(f"kronk server killed (pid {pid})")
        return
    err_console.print(f"[red]error:[/red] pid {pid} still running after {timeout:.0f}s (--force)")
    raise typer.Exit(1)


@app.command()
def status(home: HomeOption = None) -> None:
    """Whether the server runs, where, and which models it has loaded."""
    try:
        settings = ServerSettings.load({"home": home})
    except ConfigError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    pid = read_running_pid(settings.pid_file)
    if pid is None:
        typer.echo("not running")
        raise typer.Exit(1)
    base_url = _running_url(settings, pid)
    typer.echo(f"running (pid {pid}) at {base_url}/v1")
    try:
        response = httpx.get(f"{base_url}/api/ps", headers=_admin_headers(settings), timeout=5)
        models = response.json()["models"]
    except (httpx.HTTPError, ValueError, KeyError):
        return
    for m in models:
        typer.echo(
            f"  {m['id']}: {m['status']}, {m['slots_in_use']}/{m['slots']} slots busy, "
            f"{m['memory_bytes'] / 2**20:.0f} MiB"
        )


def _admin_headers(settings: ServerSettings) -> dict[str, str]:
    """The first key's admin token, if there is one: `status` works with --auth all."""
    from kronk.server.security.keys import ADMIN_TOKEN_FILE

    try:
        token = (settings.paths.keys_dir / ADMIN_TOKEN_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return {}
    return {"authorization": f"Bearer {token}"} if token else {}


@app.command()
def logs(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="Lines to show first (0: all)")] = 100,
    home: HomeOption = None,
) -> None:
    """Print the server's log (of `start -d`)."""
    log_file = _settings_paths(home).log_file
    if not log_file.exists():
        err_console.print(f"no log yet at {log_file}")
        raise typer.Exit(1)
    shown, end = _tail(log_file, lines)
    for line in shown:
        typer.echo(line)
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            _follow(log_file, end)


def _follow(path: Path, position: int) -> None:
    """Print what is appended to `path` after byte `position` (where the tail ended, so
    no line written in between is lost), until interrupted."""
    while True:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size < position:  # truncated or replaced: start over
            position = 0
        if size > position:
            with path.open("rb") as f:
                f.seek(position)
                data = f.read()
            position += len(data)
            sys.stdout.write(data.decode("utf-8", errors="replace"))
            sys.stdout.flush()
        time.sleep(0.25)


# -- pid files and processes ---------------------------------------------------------------


def _settings_paths(home: Path | None) -> ServerSettings:
    # Only the home folder matters here, so a broken config file can't block stop/logs.
    return ServerSettings.model_construct(home=home_folder(home))


def tail_lines(path: Path, count: int) -> list[str]:
    """The last `count` lines of a text file (all of them for 0)."""
    return _tail(path, count)[0]


def _tail(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` lines of a text file (all for 0), and the byte offset they end at."""
    with path.open("rb") as f:
        if count > 0:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * count - 4096))
        data = f.read()
        end = f.tell()
    text = data.decode("utf-8", errors="replace")
    kept: deque[str] = deque(text.splitlines(), maxlen=count or None)
    return list(kept), end


def _address_file(settings: ServerSettings) -> Path:
    """Where a running server says which address it listens on (flags may differ from
    what a later `status` would compute from the config)."""
    return settings.paths.run_dir / "server.json"


def _running_url(settings: ServerSettings, pid: int) -> str:
    try:
        info = json.loads(_address_file(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return settings.base_url
    if isinstance(info, dict) and info.get("pid") == pid and isinstance(info.get("url"), str):
        return str(info["url"])
    return settings.base_url


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_pid_file(path: Path, pid: int) -> None:
    _write_atomic(path, f"{pid}\n")


def read_pid_file(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (FileNotFoundError, ValueError):
        return None


def read_running_pid(path: Path) -> int | None:
    """The pid in `path` if that process still runs; a stale file is removed."""
    pid = read_pid_file(path)
    if pid is None:
        return None
    if pid_alive(pid):
        return pid
    path.unlink(missing_ok=True)
    return None


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not count; on Linux, nor does a reused pid
    that is not a Python process)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)
    cmd = cmdline.lower()
    return state != "Z" and (b"kronk" in cmd or b"python" in cmd)


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for `pid` to exit."""
    deadline = time.monotonic() + timeout
    pidfd: int | None = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)
    try:
        while pid_alive(pid):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if pidfd is not None:
                select.select([pidfd], [], [], min(left, 0.5))  # readable once it exits
            else:
                time.sleep(min(left, 0.1))
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


__all__ = ["app", "run_foreground"]
