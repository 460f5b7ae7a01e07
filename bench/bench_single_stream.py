"""Single-stream generation speed: kronk against llama.cpp's own tools.

    .venv/bin/python bench/bench_single_stream.py        # or: make bench

Two pairs, each 128 tokens, greedy, end-of-sequence ignored, one request at a time:
- kronk's SDK `complete()` against `llama-bench` tg128 (generation only);
- kronk's server against `llama-server`, both with one slot and driven by the same
  streaming HTTP client, timed from the first to the last streamed token.
And a long answer over HTTP, server against server: a chat request with a ~1000-token
prompt (a code edit of Python's bisect module) answered greedily in up to 512 tokens,
first on a freshly started server (cold time to first token: nothing cached), then again
(tokens/s); the cold answers must be the same text on both servers.
kronk runs without speculative decoding (`--spec off`), so both sides do the same
work, one decode per token; what drafts add is `bench/bench_speculative.py`'s subject.
The sides alternate in rounds (3 rounds of 3 runs each by default), so a slow spell
of a shared machine hits all of them. Prints both and their ratios and records the run
in bench/RESULTS.md. The goals: tokens/s at least 0.97 of llama.cpp's (kronk should lose
almost nothing on top of it), cold time to first token at most 1.0 of llama-server's.

Not part of `make test`: it takes minutes and measures, it does not check.
"""

from __future__ import annotations

import bisect
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from llama_tools import (
    CpuWatch,
    Measurement,
    ServerSpec,
    bench_arguments,
    chosen_model,
    ensure_tool,
    goal,
    kronk_server_spec,
    llama_server_spec,
    log,
    publish,
    ratio,
    run_tool,
    section_preamble,
)
from stream_client import measure, served

N_GEN = 128
PROMPT = "Write a long story about a dragon."
SERVER_CTX = 2048
GOAL = 0.97  # kronk / llama.cpp
TTFT_GOAL = 1.0  # kronk / llama-server, cold
LONG_TOKENS = 512
LONG_PROMPT = (
    "Rename the parameters `lo` and `hi` to `low` and `high` everywhere in this Python "
    "module, and add type hints to every function. Reply with the whole module, in one "
    "code block.\n\n```python\n" + inspect.getsource(bisect) + "```"
)


def run_llama_bench(model: Path, threads: int, repetitions: int) -> Measurement:
    """llama-bench tg128 (no prompt); llama-bench repeats it and reports every run."""
    output = run_tool(
        [
            str(ensure_tool("llama-bench")),
            "-m",
            str(model),
            "-p",
            "0",
            "-n",
            str(N_GEN),
            "-t",
            str(threads),
            "-r",
            str(repetitions),
            "-o",
            "json",
        ]
    )
    results = json.loads(output)
    tg = [r for r in results if r["n_prompt"] == 0 and r["n_gen"] == N_GEN]
    if len(tg) != 1:
        raise SystemExit(f"unexpected llama-bench output: {output[:500]}")
    return Measurement(tuple(float(x) for x in tg[0].get("samples_ts", [tg[0]["avg_ts"]])))


def run_kronk_sdk(model: Path, threads: int, repetitions: int) -> Measurement:
    """kronk's `complete()`: same model, threads and token count as llama-bench tg128."""
    from kronk import Kronk  # imported late: building the tools works without the SDK

    rates = []
    with Kronk(model, n_ctx=SERVER_CTX, n_seq_max=1, n_threads=threads, speculative=False) as k:
        # Warm-up: first-call costs (buffer allocation, page faults) are not generation speed.
        k.complete(PROMPT, max_tokens=16, temperature=0, ignore_eos=True)
        for _ in range(repetitions):
            usage = k.complete(PROMPT, max_tokens=N_GEN, temperature=0, ignore_eos=True).usage
            if usage is None:
                raise SystemExit("kronk returned no usage to time")
            # The first token comes out of the prompt pass; generation_seconds spans the
            # completion_tokens - 1 decode steps after it. llama-bench tg times decode
            # steps only, so count steps, not tokens, to compare like with like.
            steps = usage.completion_tokens - 1
            if steps < 1 or usage.generation_seconds <= 0:
                raise SystemExit(f"kronk generated too little to time: {usage}")
            rates.append(steps / usage.generation_seconds)
    return Measurement(tuple(rates))


def run_server(spec: ServerSpec, repetitions: int) -> Measurement:
    """One streaming client, one request at a time; tokens/s from first to last token."""
    payload = {"prompt": PROMPT, "max_tokens": N_GEN, "temperature": 0, "ignore_eos": True}
    rates = []
    with served(spec) as target:
        measure(target, "completions", {**payload, "max_tokens": 16})  # warm-up
        for _ in range(repetitions):
            result = measure(target, "completions", payload)
            if result.completion_tokens != N_GEN:
                raise SystemExit(f"{spec.name} generated {result.completion_tokens} tokens")
            rates.append(result.generation_rate)
    return Measurement(tuple(rates))


@dataclass
class LongAnswer:
    """One server's long-answer runs: cold TTFT per fresh server, tokens/s of every run."""

    ttft: list[float]
    rates: list[float]
    texts: set[str]  # the cold answers (a warm rerun decodes the last prompt token alone,
    # which may tip a near-tie the other way, on either server)
    prompt_tokens: int = 0
    completion_tokens: int = 0


def run_long_answer(spec: ServerSpec, repetitions: int, into: LongAnswer) -> None:
    """The long answer on a fresh server: the first request is cold (its TTFT counts),
    every request's first-to-last tokens/s counts."""
    payload = {
        "messages": [{"role": "user", "content": LONG_PROMPT}],
        "max_tokens": LONG_TOKENS,
        "temperature": 0,
    }
    with served(spec) as target:
        for i in range(repetitions):
            result = measure(target, "chat/completions", payload)
            if i == 0:
                into.ttft.append(result.ttft)
                into.texts.add(result.text)
            into.rates.append(result.generation_rate)
            into.prompt_tokens, into.completion_tokens = (
                result.prompt_tokens,
                result.completion_tokens,
            )


# The four sides measured, in the order each round runs them.
SIDES = ("llama-bench", "sdk", "llama-server", "kronk-server")


def format_report(
    model: Path,
    threads: int,
    watch: CpuWatch,
    pairs: list[tuple[str, Measurement | None, str, Measurement | None]],
    long: tuple[LongAnswer, LongAnswer] | None = None,
) -> str:
    """The markdown section for RESULTS.md (also printed)."""

    def cell(m: Measurement | None) -> str:
        return m.cell() if m else "not run"

    lines = [
        *section_preamble("single_stream", model, threads, watch),
        f"- {N_GEN} tokens, greedy, EOS ignored; servers: one slot, context {SERVER_CTX}, "
        "streamed over HTTP to the same client, timed first to last token; kronk without "
        "speculative decoding (`--spec off`, SDK `speculative=False`): the same work",
    ]
    if pairs:
        lines += [
            "",
            "| llama.cpp | t/s, median (range) | kronk | t/s, median (range) "
            "| kronk / llama.cpp | goal |",
            "|---|---:|---|---:|---:|---|",
        ]
    for llama_name, llama, kronk_name, kronk in pairs:
        value = kronk.median / llama.median if kronk and llama else None
        lines.append(
            f"| {llama_name} | {cell(llama)} | {kronk_name} | {cell(kronk)} "
            f"| {ratio(kronk.median if kronk else None, llama.median if llama else None)} "
            f"| {goal(value, at_least=GOAL)} |"
        )
    if long is not None:
        lines += ["", *long_answer_report(*long)]
    return "\n".join(lines) + "\n"


def long_answer_report(llama: LongAnswer, kronk: LongAnswer) -> list[str]:
    rates = Measurement(tuple(llama.rates)), Measurement(tuple(kronk.rates))
    ttft = Measurement(tuple(llama.ttft)), Measurement(tuple(kronk.ttft))
    same = len(llama.texts) == 1 and llama.texts == kronk.texts
    return [
        f"Long answer: chat, {kronk.prompt_tokens}-token prompt (llama-server counted "
        f"{llama.prompt_tokens}), a code edit of Python's bisect module, greedy, at most "
        f"{LONG_TOKENS} tokens ({kronk.completion_tokens} generated; llama-server "
        f"{llama.completion_tokens}); the same text from both servers on every cold start: "
        f"{'yes' if same else '**no**'}. Cold TTFT: the first request on a fresh server "
        "(each round), nothing cached.",
        "",
        "| | llama-server | kronk server | kronk / llama-server | goal |",
        "|---|---:|---:|---:|---|",
        f"| tokens/s, median (range) | {rates[0].cell()} | {rates[1].cell()} "
        f"| {ratio(rates[1].median, rates[0].median)} "
        f"| {goal(rates[1].median / rates[0].median, at_least=GOAL)} |",
        f"| cold TTFT, s | {ttft[0].cell(3)} | {ttft[1].cell(3)} "
        f"| {ratio(ttft[1].median, ttft[0].median)} "
        f"| {goal(ttft[1].median / ttft[0].median, at_most=TTFT_GOAL)} |",
    ]


def main() -> int:
    parser = bench_arguments(__doc__)
    parser.add_argument(
        "--repetitions", type=int, default=3, help="timed runs each, per round (default 3)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument(
        "--only",
        choices=["short", "long"],
        help=f"only the {N_GEN}-token pairs, or only the long answer (default: both)",
    )
    args = parser.parse_args()

    model = chosen_model(args)
    watch = CpuWatch()
    samples: dict[str, list[float]] = {name: [] for name in SIDES}
    long = (LongAnswer([], [], set()), LongAnswer([], [], set()))
    # Rounds alternate the sides, so a slow spell of a shared machine hits all of them
    # rather than whichever ran during it.
    for round_ in range(1, args.rounds + 1):
        llama_spec = llama_server_spec(model, parallel=1, ctx_size=SERVER_CTX, threads=args.threads)
        kronk_spec = kronk_server_spec(
            model,
            parallel=1,
            ctx_per_slot=SERVER_CTX,
            threads=args.threads,
            extra=["--spec", "off"],  # the same work as llama-server: no drafts
        )
        if args.only != "long":
            log(f"round {round_}/{args.rounds}: llama-bench tg{N_GEN}")
            samples["llama-bench"] += run_llama_bench(model, args.threads, args.repetitions).runs
            log(f"round {round_}/{args.rounds}: kronk complete() x{args.repetitions}")
            samples["sdk"] += run_kronk_sdk(model, args.threads, args.repetitions).runs
            log(f"round {round_}/{args.rounds}: llama-server, one streaming client")
            samples["llama-server"] += run_server(llama_spec, args.repetitions).runs
            log(f"round {round_}/{args.rounds}: kronk server, one streaming client")
            samples["kronk-server"] += run_server(kronk_spec, args.repetitions).runs
        if args.only != "short":
            for spec, into in zip((llama_spec, kronk_spec), long, strict=True):
                log(f"round {round_}/{args.rounds}: {spec.name}, long answer")
                run_long_answer(spec, args.repetitions, into)
    pairs: list[tuple[str, Measurement | None, str, Measurement | None]] = []
    if args.only != "long":
        llama_bench, kronk_sdk, llama_server, kronk_server = (
            Measurement(tuple(samples[name])) for name in SIDES
        )
        pairs = [
            (f"llama-bench tg{N_GEN}", llama_bench, "SDK `complete()`", kronk_sdk),
            ("llama-server", llama_server, "kronk server", kronk_server),
        ]
    section = format_report(
        model, args.threads, watch, pairs, long if args.only != "short" else None
    )
    publish(section, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
