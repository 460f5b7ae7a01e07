"""Graceful shutdown of a real `kronk server start` process, stopped by SIGTERM.

Draining: new requests get 503 in their protocol's shape and readiness says
"draining", while a stream in flight runs to its end. At the `--graceful-timeout`
deadline what still runs is cancelled: a stream ends with the finish reason `cancelled`
(then usage and `[DONE]`, not a cut connection), a model download stops with its
partial file kept and the index untouched. Either way the process exits 0.

The streams run on the real default model (tens of tokens per second here) with
`ignore_eos`, so a stream is still running when the signal arrives; every assertion
about what was cut compares token counts, not times.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kronk.models.names import PARTIAL_SUFFIX
from kronk.models.store import ModelStore
from support.file_server import FileServer

READY_DEADLINE_S = 180.0
EXIT_MARGIN_S = 60.0  # unloading the model and closing connections, on a busy machine
LONG = 1500  # tokens the cut stream asks for: far more than the deadline lets it make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    """A `kronk server start` process in the foreground, and its address."""

    def __init__(self, model: Path, home: Path, graceful_timeout: float) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.model = ""  # the served model's id, once ready
        env = {k: v for k, v in os.environ.items() if not k.startswith("KRONK_")}
        env["KRONK_HOME"] = str(home)
        home.mkdir(parents=True, exist_ok=True)
        self.log = home.parent / f"server-{self.port}.log"
        with self.log.open("wb") as log:  # a file: a pipe nobody reads could fill up
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "kronk.cli.main", "server", "start"),
                    *("--model", str(model), "--port", str(self.port), "--threads", "2"),
                    *("--parallel", "2", "--ctx-size", "2048", "--log-level", "warning"),
                    *("--graceful-timeout", str(graceful_timeout)),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr()
            try:
                if httpx.get(f"{self.base_url}/health/ready", timeout=5).status_code == 200:
                    models = httpx.get(f"{self.base_url}/v1/models", timeout=5).json()["data"]
                    self.model = models[0]["id"]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready after {READY_DEADLINE_S}s")

    def wait_draining(self, http: httpx.Client) -> None:
        """Poll readiness (bounded) until it says the server drains."""
        deadline = time.monotonic() + 30
        while (ready := http.get("/health/ready")).status_code != 503:
            assert time.monotonic() < deadline, "the server never started draining"
            time.sleep(0.02)
        assert ready.json()["status"] == "draining"

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def serve(default_model_path: Path, tmp_path: Path) -> Iterator[Any]:
    started: list[Served] = []

    def start(graceful_timeout: float) -> Served:
        served = Served(default_model_path, tmp_path / "home", graceful_timeout)
        started.append(served)
        served.wait_ready()
        return served

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait(30)


def long_chat(model: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Count from 1 to 10000."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def data_lines(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: "):
            yield line[len("data: ") :]


def until_content(data: Iterator[str]) -> None:
    for item in data:
        chunk = json.loads(item)
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            return
    raise AssertionError("the stream ended before any content")


def finish(rest: list[str]) -> tuple[str, dict[str, Any]]:
    """The finish reason and usage at a stream's end (which must be `[DONE]`)."""
    assert rest[-1] == "[DONE]", rest[-3:]
    chunks = [json.loads(item) for item in rest[:-1]]
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    return reasons[-1], chunks[-1]["usage"]


def assert_refused(http: httpx.Client) -> None:
    """New requests are turned away, each protocol in its own shape and status (Anthropic
    says 529 `overloaded_error` for a server going away: its clients retry that)."""
    chat = http.post("/v1/chat/completions", json={**long_chat("m", 1), "stream": False})
    assert chat.status_code == 503
    assert chat.json()["error"]["code"] == "shutting_down"
    body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    messages = http.post("/v1/messages", json=body)
    assert messages.status_code == 529
    assert messages.json()["type"] == "error"
    assert messages.json()["error"]["type"] == "overloaded_error"
    ollama = http.post("/api/chat", json={"model": "m", "messages": []})
    assert ollama.status_code == 503 and isinstance(ollama.json()["error"], str)
    assert http.get("/health").status_code == 200  # alive while draining


def test_sigterm_lets_the_running_stream_finish_and_refuses_new_requests(serve: Any) -> None:
    served: Served = serve(600)  # a loaded machine must not cut the stream short
    tokens = 120
    with (
        httpx.Client(base_url=served.base_url, timeout=120) as http,
        http.stream("POST", "/v1/chat/completions", json=long_chat(served.model, tokens)) as resp,
    ):
        data = data_lines(resp.iter_lines())
        until_content(data)
        served.proc.send_signal(signal.SIGTERM)
        served.wait_draining(http)
        assert_refused(http)
        rest = list(data)
    reason, usage = finish(rest)
    assert (reason, usage["completion_tokens"]) == ("length", tokens)  # ran to its end
    assert served.proc.wait(EXIT_MARGIN_S) == 0, served.stderr()


def test_at_the_deadline_streams_end_cancelled_and_downloads_keep_their_partial_file(
    serve: Any, tiny_llama_path: Path, tmp_path: Path
) -> None:
    deadline_s = 2.0
    served: Served = serve(deadline_s)
    tiny = tiny_llama_path.read_bytes()
    with FileServer() as files, httpx.Client(base_url=served.base_url, timeout=120) as http:
        url = files.add("/held.gguf", tiny, pause_after=len(tiny) // 2)
        pull = http.stream("POST", "/manage/pull", json={"model": url, "id": "held"})
        chat = http.stream("POST", "/v1/chat/completions", json=long_chat(served.model, LONG))
        with pull as pulling, chat as resp:
            assert pulling.status_code == 200
            assert files.wait_paused(1)  # half the file is on disk, the rest held back
            data = data_lines(resp.iter_lines())
            until_content(data)
            served.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            served.wait_draining(http)
            assert_refused(http)
            rest = list(data)  # ends once the deadline cancels it
            # The download was cancelled at the same moment; its worker notices at the
            # next progress callback, once more bytes arrive.
            files.release()
            events = [line for line in pulling.iter_lines() if line.startswith("event: ")]
        reason, usage = finish(rest)
        assert reason == "cancelled" and 0 < usage["completion_tokens"] < LONG
        assert events[-1] == "event: error"
        assert served.proc.wait(deadline_s + EXIT_MARGIN_S) == 0, served.stderr()
        assert time.monotonic() - signalled < deadline_s + EXIT_MARGIN_S
    store = ModelStore(tmp_path / "home")
    assert "held" not in {m.id for m in store.list_local()}  # the index is untouched
    partials = list((tmp_path / "home").rglob(f"*{PARTIAL_SUFFIX}"))
    assert partials and 0 < partials[0].stat().st_size < len(tiny)  # kept for a resume
