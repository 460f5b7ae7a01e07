"""`kronk server start -d | stop | logs | status` as a user runs them, in subprocesses,
against a tiny model given by path."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from kronk.cli.server import pid_alive
from kronk.llama import LlamaModel
from kronk.server.settings import ENVIRONMENT
from support.tiny_gguf import write_not_gguf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def kronk_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONK_")}
    return {**env, "KRONK_HOME": str(home), **extra}


def kronk(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kronk.cli.main", "server", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "kronk-home"


def test_detached_server_serves_logs_and_stops(tiny_llama_path: Path, home: Path) -> None:
    # Each setting from another layer: the config file, the environment, a flag.
    home.mkdir(parents=True)
    # The model's own section sets the keys' cache type; --cache-type-v sets the values'.
    (home / "config.yaml").write_text(
        "server:\n  ctx-size: 256\n  parallel: 2\n  ttl: 600\n"
        "models:\n  tiny-llama:\n    cache-type-k: f32\n"
    )
    env = kronk_env(home, KRONK_CTX_SIZE="128")
    port = free_port()
    started = kronk(
        "start",
        "-d",
        "--port",
        str(port),
        "--model",
        str(tiny_llama_path),
        "--threads",
        "1",
        "--parallel",
        "1",
        "--cache-type-v",
        "bf16",
        env=env,
    )
    assert started.returncode == 0, started.stderr + started.stdout
    assert f"http://127.0.0.1:{port}/v1" in started.stdout
    pid = int((home / "run" / "server.pid").read_text())
    try:
        assert pid_alive(pid)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0
        )
        assert [m.id for m in client.models.list()] == ["tiny-llama"]
        reply = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.choices[0].message.content is not None
        (loaded,) = httpx.get(f"http://127.0.0.1:{port}/api/ps", timeout=30).json()["models"]
        assert loaded["n_ctx"] == 128  # KRONK_CTX_SIZE beat the config file's 256
        assert loaded["slots"] == 1  # --parallel beat the config file's 2
        assert loaded["expires_at"] - loaded["last_used"] == pytest.approx(600)  # config ttl
        # 4-byte keys (the model's section) and 2-byte values (the flag) per KV element.
        model = LlamaModel.load(tiny_llama_path)
        k_elements, v_elements = model.kv_elements_per_token()
        model.close()
        per_token = loaded["slot_kv_bytes"][0] / loaded["slot_tokens"][0]
        assert per_token == pytest.approx(4 * k_elements + 2 * v_elements)

        twice = kronk("start", "-d", "--port", str(free_port()), env=env)
        assert twice.returncode == 1 and "already running" in twice.stderr

        status = kronk("status", env=env)
        assert status.returncode == 0 and f"pid {pid}" in status.stdout
        assert "tiny-llama: ready" in status.stdout

        logs = kronk("logs", "-n", "200", env=env)
        assert logs.returncode == 0
        assert "loaded tiny-llama" in logs.stdout
    finally:
        stopped = kronk("stop", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped (pid {pid})" in stopped.stdout
    assert not pid_alive(pid)
    assert not (home / "run" / "server.pid").exists()
    assert "no kronk server is running" in kronk("stop", env=env).stdout
    assert kronk("status", env=env).returncode == 1


def test_stop_removes_a_stale_pid_file(home: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(gone.stdout)
    (home / "run").mkdir(parents=True)
    (home / "run" / "server.pid").write_text(f"{dead_pid}\n")
    result = kronk("stop", env=kronk_env(home))
    assert result.returncode == 0
    assert "stale" in result.stdout
    assert not (home / "run" / "server.pid").exists()


def test_bad_settings_and_unknown_models_fail_clearly(home: Path) -> None:
    bad_env = kronk("start", env=kronk_env(home, KRONK_PORT="eleven"))
    assert bad_env.returncode == 2 and "KRONK_PORT" in bad_env.stderr
    missing_file = kronk("start", "--model", str(home / "missing.gguf"), env=kronk_env(home))
    assert missing_file.returncode == 1 and "no such file" in missing_file.stderr
    unknown = kronk("start", "--model", "no-such-model", env=kronk_env(home))
    assert unknown.returncode == 1 and "no-such-model" in unknown.stderr


def test_a_model_that_fails_to_load_stops_the_detached_server(tmp_path: Path, home: Path) -> None:
    broken = write_not_gguf(tmp_path / "broken.gguf")
    result = kronk(
        "start", "-d", "--port", str(free_port()), "--model", str(broken), env=kronk_env(home)
    )
    assert result.returncode == 1
    assert "exited with status 1" in result.stderr
    assert "GGUF" in result.stderr  # the log's tail says why
    assert not (home / "run" / "server.pid").exists()


def test_logs_follow_prints_lines_as_they_are_appended(home: Path) -> None:
    log_file = home / "logs" / "server.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text("old line\nlast line\n")
    follower = subprocess.Popen(
        [sys.executable, "-m", "kronk.cli.main", "server", "logs", "-f", "-n", "1"],
        stdout=subprocess.PIPE,
        env=kronk_env(home, PYTHONUNBUFFERED="1"),
    )
    try:
        assert read_line(follower) == "last line"
        with log_file.open("a") as f:
            f.write("new line\n")
        assert read_line(follower) == "new line"
        assert follower.poll() is None  # still following
    finally:
        follower.terminate()
        follower.wait(30)


def read_line(proc: subprocess.Popen[bytes], deadline_s: float = 60.0) -> str:
    """The next line `proc` prints, waiting at most `deadline_s` for it."""
    assert proc.stdout is not None
    deadline = time.monotonic() + deadline_s
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no full line within {deadline_s}s (got {line!r})"
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            byte = os.read(proc.stdout.fileno(), 1)
            assert byte, f"the process ended (got {line!r})"
            line += byte
    return line.decode().rstrip("\n")


def test_start_help_names_every_environment_twin(home: Path) -> None:
    shown = kronk("start", "--help", env=kronk_env(home, COLUMNS="200"))
    assert shown.returncode == 0
    for var in [*ENVIRONMENT.values(), "KRONK_HOME"]:
        assert f"env: {var}" in shown.stdout, var


def test_logs_without_a_log_file(home: Path) -> None:
    result = kronk("logs", env=kronk_env(home))
    assert result.returncode == 1 and "no log yet" in result.stderr
