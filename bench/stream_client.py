"""One streaming OpenAI-API client for every benchmark, so both servers are timed alike.

A `Target` turns a request payload (OpenAI's JSON body) into a stream of chunk dicts:
`HttpTarget` posts it to a server's /v1 API and reads the server-sent events; `SdkTarget`
hands the same payload to an in-process `kronk.Kronk` (for when no server is running).
`measure()` times the stream on the client side: time to first token, first to last
token, and reads token counts from the final chunk's `usage` (both llama-server and kronk
send one; llama-server also sends `timings`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import httpx

from llama_tools import ServerSpec, running

if TYPE_CHECKING:
    from kronk import Kronk

Endpoint = Literal["completions", "chat/completions"]


@dataclass(frozen=True)
class StreamResult:
    """One streamed request, timed by the client."""

    started: float  # time.perf_counter() when the request was sent
    ttft: float  # seconds from sending to the first chunk that carries text
    seconds: float  # sending to the end of the stream
    first_to_last: float  # first to last chunk that carries text
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens the server took from its cache
    server_prefill: float | None  # the server's own prompt-processing time, if it says

    @property
    def prefilled_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def generation_rate(self) -> float:
        """Tokens/s after the first token: decode steps over the time they took."""
        steps = self.completion_tokens - 1
        return steps / self.first_to_last if steps > 0 and self.first_to_last > 0 else 0.0


class Target(Protocol):
    name: str

    def chunks(self, endpoint: Endpoint, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Send a streaming request; yield its chunks as JSON objects."""
        ...


class HttpTarget:
    """A server's OpenAI-compatible API; one HTTP connection per calling thread."""

    def __init__(self, name: str, base_url: str, model: str) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(600.0))
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def chunks(self, endpoint: Endpoint, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        body = {
            "model": self.model,
            **payload,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with self._client().stream("POST", f"/v1/{endpoint}", json=body) as response:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"{self.name}: HTTP {response.status_code}: {response.text}")
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                yield json.loads(data)

    def close(self) -> None:
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()


@contextmanager
def served(spec: ServerSpec) -> Iterator[HttpTarget]:
    """Start the server and yield a target that talks to it; stop it afterwards."""
    with running(spec) as url:
        target = HttpTarget(spec.name, url, spec.model_id)
        try:
            yield target
        finally:
            target.close()


class SdkTarget:
    """kronk in-process: the payload's parameters go straight to `Kronk`'s stream calls."""

    def __init__(self, kronk: Kronk) -> None:
        self.name = "kronk SDK"
        self.kronk = kronk

    def chunks(self, endpoint: Endpoint, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        params = {k: v for k, v in payload.items() if k not in ("model", "prompt", "messages")}
        if endpoint == "completions":
            stream: Any = self.kronk.complete_stream(payload["prompt"], **params)
        else:
            stream = self.kronk.chat_stream(payload["messages"], **params)
        with stream:
            for chunk in stream:
                yield chunk.model_dump()


def measure(target: Target, endpoint: Endpoint, payload: dict[str, Any]) -> StreamResult:
    """Send one streaming request and time it."""
    started = time.perf_counter()
    first = last = 0.0
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for chunk in target.chunks(endpoint, payload):
        text = _chunk_text(chunk)
        if text:
            last = time.perf_counter()
            first = first or last
            pieces.append(text)
        usage = chunk.get("usage") or usage
        timings = chunk.get("timings") or timings
    ended = time.perf_counter()
    if not usage:
        raise RuntimeError(f"{target.name} sent no usage in its stream")
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens")
    if cached is None:
        cached = timings.get("cache_n", 0)
    # kronk puts its timings in usage; llama-server in `timings`, in milliseconds.
    prefill = usage.get("prompt_seconds")
    if prefill is None and "prompt_ms" in timings:
        prefill = timings["prompt_ms"] / 1000
    return StreamResult(
        started=started,
        ttft=(first or ended) - started,
        seconds=ended - started,
        first_to_last=last - first,
        text="".join(pieces),
        prompt_tokens=int(usage["prompt_tokens"]),
        completion_tokens=int(usage["completion_tokens"]),
        cached_tokens=int(cached),
        server_prefill=None if prefill is None else float(prefill),
    )


def stream_stories(
    target: Target, streams: int, *, first_index: int = 0, max_tokens: int = 128
) -> list[StreamResult]:
    """`streams` threads, started together, each streaming one greedy story completion of
    `max_tokens` tokens (EOS ignored); the results in thread order. Raises if one failed."""
    results: list[StreamResult | None] = [None] * streams
    start_together = threading.Barrier(streams)

    def client(slot: int) -> None:
        payload = {
            "prompt": f"Write a long story about dragon number {first_index + slot}.",
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
        }
        start_together.wait()
        results[slot] = measure(target, "completions", payload)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [r for r in results if r is not None]
    if len(done) != streams:
        raise SystemExit(f"a stream to {target.name} failed")
    return done


def _chunk_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:
        return str(choice["text"] or "")
    delta = choice.get("delta") or {}
    return str(delta.get("content") or "") + str(delta.get("reasoning_content") or "")
