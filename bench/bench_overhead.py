"""The engine's own cost: Python time per decode step, at 1, 4 and 8 concurrent streams.

    .venv/bin/python bench/bench_overhead.py        # or: make bench

Runs kronk in-process with 8 slots; for each concurrency, that many threads stream
128-token greedy completions (EOS ignored) at once. The engine's stats split each step's
time into llama_decode, llama.cpp's samplers, and the rest: kronk's Python bookkeeping
(building the batch, detokenizing, stop strings, events). The share of that rest is what
kronk adds on top of llama.cpp per token. For the same concurrencies, `llama-batched-bench`
(random tokens, no sampling, no Python) gives llama.cpp's own generation speed, and the
ratio says how much of it kronk keeps.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llama_tools import (
    CpuWatch,
    Measurement,
    bench_arguments,
    chosen_model,
    ensure_tool,
    log,
    publish,
    ratio,
    run_tool,
    section_preamble,
)
from stream_client import SdkTarget, stream_stories

if TYPE_CHECKING:
    from kronk import Kronk

CONCURRENCIES = (1, 4, 8)
N_GEN = 128
CTX_PER_SLOT = 1024
PROMPT_TOKENS = 16  # llama-batched-bench prompt length; kronk's prompts are about as long


@dataclass(frozen=True)
class StepTimes:
    """Engine time over one run, from the difference of two `stats()` snapshots."""

    steps: int
    step_seconds: float
    decode_seconds: float
    sample_seconds: float
    generation_rate: float  # tokens/s over all streams, first to last token

    @property
    def python_seconds(self) -> float:
        return self.step_seconds - self.decode_seconds - self.sample_seconds

    @property
    def python_share(self) -> float:
        return self.python_seconds / self.step_seconds

    @property
    def python_per_decode(self) -> float:
        return self.python_seconds / self.decode_seconds


def run_streams(kronk: Kronk, streams: int) -> StepTimes:
    """`streams` threads, one 128-token completion each, all at once."""
    before = kronk.stats()
    done = stream_stories(SdkTarget(kronk), streams, max_tokens=N_GEN)
    after = kronk.stats()
    first = min(r.started + r.ttft for r in done)
    last = max(r.started + r.ttft + r.first_to_last for r in done)
    return StepTimes(
        steps=after.steps - before.steps,
        step_seconds=after.step_seconds - before.step_seconds,
        decode_seconds=after.decode_seconds - before.decode_seconds,
        sample_seconds=after.sample_seconds - before.sample_seconds,
        generation_rate=sum(r.completion_tokens - 1 for r in done) / (last - first),
    )


def run_kronk(model: Path, threads: int, repetitions: int) -> dict[int, list[StepTimes]]:
    from kronk import Kronk

    runs: dict[int, list[StepTimes]] = {n: [] for n in CONCURRENCIES}
    with Kronk(model, n_ctx=CTX_PER_SLOT, n_seq_max=max(CONCURRENCIES), n_threads=threads) as kronk:
        run_streams(kronk, max(CONCURRENCIES))  # warm-up: allocations, page faults
        for rep in range(repetitions):
            for streams in CONCURRENCIES:
                runs[streams].append(run_streams(kronk, streams))
                log(
                    f"run {rep + 1}: {streams} streams, python "
                    f"{100 * runs[streams][-1].python_share:.1f}% of the step"
                )
    return runs


def run_batched_bench(model: Path, threads: int, repetitions: int) -> dict[int, Measurement]:
    """llama-batched-bench's generation speed (S_TG) at each concurrency."""
    rates: dict[int, list[float]] = {n: [] for n in CONCURRENCIES}
    for _ in range(repetitions):
        output = run_tool(
            [
                str(ensure_tool("llama-batched-bench")),
                "-m",
                str(model),
                "-c",
                str(CTX_PER_SLOT * max(CONCURRENCIES)),
                "-npp",
                str(PROMPT_TOKENS),
                "-ntg",
                str(N_GEN),
                "-npl",
                ",".join(str(n) for n in CONCURRENCIES),
                "-t",
                str(threads),
                "-tb",
                str(threads),
                "--output-format",
                "jsonl",
            ],
            with_stderr=True,
        )
        for line in output.splitlines():
            if line.startswith("{") and '"speed_tg"' in line:
                row = json.loads(line)
                rates[int(row["pl"])].append(float(row["speed_tg"]))
    if any(len(r) != repetitions for r in rates.values()):
        raise SystemExit(f"unexpected llama-batched-bench output:\n{output[-2000:]}")
    return {n: Measurement(tuple(r)) for n, r in rates.items()}


def format_report(
    model: Path,
    threads: int,
    watch: CpuWatch,
    kronk: dict[int, list[StepTimes]],
    llama: dict[int, Measurement],
) -> str:
    repetitions = len(kronk[CONCURRENCIES[0]])
    lines = [
        *section_preamble("overhead", model, threads, watch),
        f"- kronk in-process, {max(CONCURRENCIES)} slots × {CTX_PER_SLOT} tokens; each stream "
        f"{N_GEN} tokens, greedy, EOS ignored; medians of {repetitions} runs. Python = step − "
        "llama_decode − samplers. llama-batched-bench: "
        f"`-npp {PROMPT_TOKENS} -ntg {N_GEN} -npl {','.join(map(str, CONCURRENCIES))}` "
        "(no sampling)",
        "",
        "| streams | ms/step | decode ms | sample ms | Python ms | Python / step "
        "| Python / decode | kronk t/s | batched-bench S_TG t/s | kronk / batched-bench |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for streams in CONCURRENCIES:
        runs = kronk[streams]
        med = statistics.median
        per_step = [1000 / r.steps for r in runs]
        step_ms = med([r.step_seconds * k for r, k in zip(runs, per_step, strict=True)])
        decode_ms = med([r.decode_seconds * k for r, k in zip(runs, per_step, strict=True)])
        sample_ms = med([r.sample_seconds * k for r, k in zip(runs, per_step, strict=True)])
        python_ms = med([r.python_seconds * k for r, k in zip(runs, per_step, strict=True)])
        rate = Measurement(tuple(r.generation_rate for r in runs))
        lines.append(
            f"| {streams} | {step_ms:.2f} | {decode_ms:.2f} | {sample_ms:.2f} | "
            f"{python_ms:.2f} | {100 * med([r.python_share for r in runs]):.1f}% | "
            f"{100 * med([r.python_per_decode for r in runs]):.1f}% | {rate.cell()} | "
            f"{llama[streams].cell()} | {ratio(rate.median, llama[streams].median)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = bench_arguments(__doc__)
    parser.add_argument("--repetitions", type=int, default=3, help="runs each (default 3)")
    args = parser.parse_args()

    model = chosen_model(args)
    watch = CpuWatch()
    log(f"llama-batched-bench x{args.repetitions}")
    llama = run_batched_bench(model, args.threads, args.repetitions)
    log("kronk streams")
    kronk = run_kronk(model, args.threads, args.repetitions)
    section = format_report(model, args.threads, watch, kronk, llama)
    publish(section, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
