"""Soak: many concurrent streaming clients against one `kronk server start`, round after
round, then check the server is as it was.

    .venv/bin/python bench/soak.py                          # 64 clients, 1 round of 10 min
    .venv/bin/python bench/soak.py --clients 16 --rounds 3 --duration 60
    .venv/bin/python bench/soak.py --rounds 4 --duration 150 --prompt-cache-size 256MiB

Each client sends requests back to back until its round's time (or the round's request
budget, `--max-requests`) runs out: streamed chat, streamed completions, embeddings, and
streamed chat with a client function tool, drawn at random. A third of the clients
(`--disconnect-share`) hang up each streamed request at a random point. Every request is
short (`--max-tokens`, default 64). After each round: every slot and lease is free
(`/api/ps`), the server's resident memory (RSS) and open files (/proc/PID), and the host
prompt cache's bytes where `/api/ps` reports them: with a small `--prompt-cache-size`
the cache fills in the first rounds, and RSS should then stop growing (the last round's
within 5% of the one before). The run passes when no request failed except by its own
client's disconnect, the open files are back to where they were after the warm-up, every
slot is free, and the server then answers a plain request normally.
Not part of `make test`; it writes its section `soak` into bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llama_tools import (
    CpuWatch,
    bench_arguments,
    cache_dir,
    chosen_model,
    kronk_server_spec,
    log,
    publish,
    running,
    section_preamble,
)

KINDS = ("chat", "completions", "embeddings", "tools")
SOAK_HOME = cache_dir() / "kronk-soak-home"
SLOT_DEADLINE_S = 60.0  # for the slots to come free after a round
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOPICS = ("a haiku about rivers", "the rules of chess", "why the sky is blue", "a list of fruit")


@dataclass
class Round:
    number: int
    seconds: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)  # kind -> completed
    disconnects: int = 0  # streams this side hung up on purpose
    failures: list[str] = field(default_factory=list)
    rss_mb: float = 0.0
    open_files: int = 0
    prompt_cache_mb: float | None = None
    slots_free: bool = False


class Budget:
    """The round's remaining requests, shared by its clients (one event loop: no lock)."""

    def __init__(self, total: int, until: float) -> None:
        self.left = total
        self.until = until

    def take(self) -> bool:
        if self.left <= 0 or time.monotonic() >= self.until:
            return False
        self.left -= 1
        return True


def request_for(
    kind: str, model: str, max_tokens: int, rng: random.Random
) -> tuple[str, dict[str, Any]]:
    topic = rng.choice(TOPICS)
    if kind == "embeddings":
        return "/v1/embeddings", {"model": model, "input": [topic, f"{topic}, again"]}
    if kind == "completions":
        body = {"model": model, "prompt": f"Write {topic}:\n", "max_tokens": max_tokens}
        return "/v1/completions", {**body, "stream": True}
    messages = [{"role": "user", "content": f"Write {topic}."}]
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True}
    if kind == "tools":
        messages[0]["content"] = f"What is the weather in Paris? Then write {topic}."
        body["tools"] = [TOOL]
    return "/v1/chat/completions", {**body, "temperature": rng.choice((0.0, 0.7))}


async def one_request(
    http: httpx.AsyncClient, kind: str, body: dict[str, Any], path: str, cut_after: int | None
) -> bool:
    """Send one request; True if this side hung up on purpose. Raises on any failure."""
    if not body.get("stream"):
        response = await http.post(path, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{kind}: {response.status_code} {response.text[:200]}")
        return False
    async with http.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{kind}: {response.status_code} {(await response.aread())[:200]!r}")
        events = 0
        last = ""
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            last = line
            if line.startswith('data: {"error"'):
                raise RuntimeError(f"{kind}: error event {line[:200]}")
            events += 1
            if cut_after is not None and events >= cut_after:
                return True  # leaving the block closes the connection mid-stream
        if last != "data: [DONE]":
            raise RuntimeError(f"{kind}: the stream ended without [DONE]")
    return False


async def client(
    index: int,
    base_url: str,
    model: str,
    args: Any,
    budget: Budget,
    result: Round,
    kinds: tuple[str, ...] = KINDS,
) -> None:
    """One client (index -1: the warm-up, which sends `kinds` in order and never hangs up)."""
    rng = random.Random(f"{args.seed}-{result.number}-{index}")
    order = iter(kinds)
    disconnects = 0 <= index < round(args.clients * args.disconnect_share)
    timeout = httpx.Timeout(300.0, connect=30.0)
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as http:
        while budget.take():
            kind = next(order) if index < 0 else rng.choice(kinds)
            path, body = request_for(kind, model, args.max_tokens, rng)
            cut_after = rng.randint(1, args.max_tokens) if disconnects else None
            try:
                cut = await one_request(http, kind, body, path, cut_after)
            except (httpx.HTTPError, RuntimeError) as exc:
                result.failures.append(f"client {index}: {type(exc).__name__}: {exc}")
                continue
            result.requests[kind] += 1
            result.disconnects += cut


def process_stats(pid: int) -> tuple[float, int]:
    """(resident memory in MB, open file descriptors) of the server process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss_kb / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def settle(http: httpx.AsyncClient) -> tuple[bool, float | None]:
    """Poll /api/ps (bounded) until no slot or lease is held; the prompt cache's MB."""
    deadline = time.monotonic() + SLOT_DEADLINE_S
    while True:
        models = (await http.get("/api/ps")).json()["models"]
        free = all(m.get("slots_in_use", 0) == 0 and m.get("leases", 0) == 0 for m in models)
        cache = [m["prompt_cache_bytes"] for m in models if "prompt_cache_bytes" in m]
        cache_mb = sum(cache) / 2**20 if cache else None
        if free or time.monotonic() > deadline:
            if not free:
                held = [(m["model"], m.get("slots_in_use"), m.get("leases")) for m in models]
                log(f"still held after {SLOT_DEADLINE_S:.0f}s (model, slots, leases): {held}")
            return free, cache_mb
        await asyncio.sleep(0.1)  # polling another process's state


async def answers_normally(http: httpx.AsyncClient, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
    response = await http.post("/v1/chat/completions", json=body)
    return response.status_code == 200 and bool(response.json()["choices"][0]["message"])


async def soak(base_url: str, pid: int, model: str, args: Any) -> tuple[list[Round], int, bool]:
    async with httpx.AsyncClient(base_url=base_url, timeout=120.0) as http:
        # Warm-up: one request of each kind, so what loads once is counted before the start.
        warm = Round(0)
        budget = Budget(len(KINDS), time.monotonic() + 600)
        await client(-1, base_url, model, args, budget, warm)
        await settle(http)
        _, files_before = process_stats(pid)
        rounds: list[Round] = []
        for number in range(1, args.rounds + 1):
            result = Round(number)
            started = time.monotonic()
            budget = Budget(args.max_requests, started + args.duration)
            await asyncio.gather(
                *(client(i, base_url, model, args, budget, result) for i in range(args.clients))
            )
            result.seconds = time.monotonic() - started
            result.slots_free, result.prompt_cache_mb = await settle(http)
            result.rss_mb, result.open_files = process_stats(pid)
            log(
                f"round {number}: {sum(result.requests.values())} requests, "
                f"{result.disconnects} cut, {len(result.failures)} failed, "
                f"RSS {result.rss_mb:.0f} MB, open files {result.open_files}"
            )
            rounds.append(result)
        normal = await answers_normally(http, model)
    return rounds, files_before, normal


def section(
    args: Any, model: Path, watch: CpuWatch, rounds: list[Round], files_before: int, normal: bool
) -> str:
    failures = [f for r in rounds for f in r.failures]
    files_after = rounds[-1].open_files if rounds else files_before
    slots_free = all(r.slots_free for r in rounds)
    passed = not failures and files_after == files_before and slots_free and normal
    lines = section_preamble("soak", model, args.threads, watch)
    lines += [
        f"- `kronk server start --parallel {args.parallel}"
        f"{f' --prompt-cache-size {args.prompt_cache_size}' if args.prompt_cache_size else ''}`; "
        f"{args.clients} clients "
        f"({round(args.clients * args.disconnect_share)} hanging up at random points), "
        f"{args.rounds} round(s) of {args.duration:.0f} s, at most {args.max_requests} "
        f"requests a round, {args.max_tokens} tokens a request; kinds drawn from "
        f"{', '.join(KINDS)}",
        f"- result: **{'pass' if passed else 'FAIL'}** — failed requests {len(failures)}, "
        f"open files {files_before} -> {files_after}, every slot free after each round: "
        f"{'yes' if slots_free else 'NO'}, a plain request afterwards: "
        f"{'answered' if normal else 'NOT answered'}",
        "",
        "| round | s | requests | chat | completions | embeddings | tools | cut | failed "
        "| RSS MB | open files | prompt cache MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        cache = f"{r.prompt_cache_mb:.0f}" if r.prompt_cache_mb is not None else "—"
        kinds = " | ".join(str(r.requests[k]) for k in KINDS)
        lines.append(
            f"| {r.number} | {r.seconds:.0f} | {sum(r.requests.values())} | {kinds} | "
            f"{r.disconnects} | {len(r.failures)} | {r.rss_mb:.0f} | {r.open_files} | {cache} |"
        )
    if len(rounds) >= 2:
        growth = 100 * (rounds[-1].rss_mb / rounds[-2].rss_mb - 1)
        lines += ["", f"RSS, last round against the one before: {growth:+.1f}%"]
    if failures:
        lines += ["", "First failures:", "", *(f"- {f}" for f in failures[:10])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = bench_arguments(__doc__ or "")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds a round (600)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (1)")
    parser.add_argument("--max-requests", type=int, default=20000, help="requests a round at most")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens a request at most")
    parser.add_argument("--parallel", type=int, default=8, help="server slots (8)")
    parser.add_argument("--disconnect-share", type=float, default=1 / 3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prompt-cache-size",
        help="the server's host prompt cache per model, e.g. 256MiB (default: the server's)",
    )
    args = parser.parse_args()
    model = chosen_model(args)
    watch = CpuWatch()
    spec = kronk_server_spec(
        model,
        parallel=args.parallel,
        ctx_per_slot=2048,
        threads=args.threads,
        extra=[
            *("--max-queue", str(args.clients)),
            *(("--prompt-cache-size", args.prompt_cache_size) if args.prompt_cache_size else ()),
        ],
        home=SOAK_HOME,  # its own: it may run beside a benchmark's server
    )
    with running(spec) as base_url:
        pid = int((SOAK_HOME / "run" / "server.pid").read_text())
        rounds, files_before, normal = asyncio.run(soak(base_url, pid, spec.model_id, args))
    publish(section(args, model, watch, rounds, files_before, normal), args)
    failed = any(r.failures for r in rounds) or not normal
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
