"""Where a kronk server's CPU goes while it streams: llama.cpp's threads against the rest.

    .venv/bin/python bench/bench_server_threads.py        # or: make bench

Starts `kronk server start` with 8 slots, streams rounds of 8 concurrent 128-token
completions (greedy, EOS ignored) through the benchmarks' HTTP client, and reads every
server thread's CPU time from /proc before and after. The two busiest threads are
llama.cpp's compute (the engine thread inside `llama_decode`, and ggml's worker); all
others together are what kronk's server adds (event loop, HTTP, SSE, telemetry). On a
machine with as many cores as llama.cpp threads, that CPU comes straight off generation,
so its share per streamed token is the server's cost on top of llama.cpp. Linux only.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llama_tools import (
    CpuWatch,
    bench_arguments,
    cache_dir,
    chosen_model,
    kronk_server_spec,
    log,
    publish,
    section_preamble,
)
from stream_client import HttpTarget, served, stream_stories

STREAMS = 8
N_GEN = 128
CTX_PER_SLOT = 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process `pid`."""
    seconds: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        seconds[int(tid)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


@dataclass(frozen=True)
class Usage:
    wall_seconds: float
    tokens: int
    compute: tuple[float, float]  # CPU seconds of the two busiest threads
    rest: float  # CPU seconds of all other threads


def stream_rounds(target: HttpTarget, rounds: int) -> int:
    """`rounds` rounds of STREAMS concurrent completions; returns the tokens streamed."""
    return sum(
        r.completion_tokens
        for round_index in range(rounds)
        for r in stream_stories(
            target, STREAMS, first_index=round_index * STREAMS, max_tokens=N_GEN
        )
    )


def measure_server(model: Path, threads: int, rounds: int) -> Usage:
    spec = kronk_server_spec(model, parallel=STREAMS, ctx_per_slot=CTX_PER_SLOT, threads=threads)
    with served(spec) as target:
        # The spec's home holds the pid file of the server it started.
        pid = int((cache_dir() / "kronk-home" / "run" / "server.pid").read_text().split()[0])
        stream_rounds(target, 1)  # warm-up: first allocations, page faults
        before = thread_cpu_seconds(pid)
        start = time.perf_counter()
        tokens = stream_rounds(target, rounds)
        wall = time.perf_counter() - start
        after = thread_cpu_seconds(pid)
    used = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
    return Usage(wall, tokens, (used[0], used[1]), sum(used[2:]))


def format_report(model: Path, threads: int, watch: CpuWatch, usage: Usage) -> str:
    def row(label: str, seconds: float) -> str:
        share = 100 * seconds / usage.wall_seconds
        return f"| {label} | {seconds:.2f} | {share:.1f}% | {1000 * seconds / usage.tokens:.3f} |"

    return "\n".join(
        [
            *section_preamble("server_threads", model, threads, watch),
            f"- `kronk server start`, {STREAMS} slots × {CTX_PER_SLOT} tokens; {usage.tokens} "
            f"tokens streamed by {STREAMS} concurrent clients ({N_GEN} each, greedy, EOS "
            f"ignored) in {usage.wall_seconds:.1f} s; CPU time per thread from /proc",
            "",
            "| server threads | CPU s | of one core | CPU ms per streamed token |",
            "|---|---:|---:|---:|",
            row("llama.cpp compute, busiest thread", usage.compute[0]),
            row("llama.cpp compute, second thread", usage.compute[1]),
            row("all other threads (event loop, HTTP, SSE)", usage.rest),
            "",
        ]
    )


def main() -> int:
    parser = bench_arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 8 streams (default 3)")
    args = parser.parse_args()
    if not Path("/proc/self/task").is_dir():
        raise SystemExit("needs Linux's /proc")

    model = chosen_model(args)
    watch = CpuWatch()
    log(f"kronk server: {args.rounds} rounds of {STREAMS} streams")
    usage = measure_server(model, args.threads, args.rounds)
    section = format_report(model, args.threads, watch, usage)
    publish(section, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
