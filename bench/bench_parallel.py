"""llama.cpp's `examples/parallel` scenario over HTTP: kronk's server against llama-server.

    .venv/bin/python bench/bench_parallel.py        # or: make bench

8 clients send 128 requests between them, each as soon as its previous one ends. Each
prompt is the shared system transcript + up to 10 junk Q/A pairs + a question; decoding is
greedy, at most 128 tokens, stopping at "User:". The prompts are exactly those
`llama-parallel -ns 128 --junk 10` builds: the same strings, drawn from the same
std::mt19937(1234) sequence. Both servers have 8 slots of 2048 tokens (llama-server
`-np 8 -c 16384`) and are driven by the same client; `llama-parallel` itself runs once for
reference. Reports aggregate generation and prompt tokens/s, median and p90 time to first
token, wall time, and ratios. Goals, kronk / llama-server in the same run: generation
≥ 1.05, median and p90 TTFT ≤ 0.9, wall time ≤ 0.95. `--parallel 4` (or 16) runs the
scenario with that many clients and slots on both sides (section `parallel_4`, ...);
`--requests 32` makes a short run for iterating.

Without a kronk server (`kronk.cli.server` not there yet) kronk runs in-process through
the SDK with the same 8-thread client pattern; the section says so.
"""

from __future__ import annotations

import random
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llama_tools import (
    CpuWatch,
    Measurement,
    bench_arguments,
    chosen_model,
    ensure_tool,
    goal,
    kronk_server_spec,
    llama_server_spec,
    log,
    percentile,
    publish,
    ratio,
    run_tool,
    section_preamble,
)
from stream_client import SdkTarget, StreamResult, Target, measure, served

CLIENTS = 8
REQUESTS = 128
JUNK = 10
MAX_TOKENS = 128  # llama-parallel's default n_predict
TOTAL_CTX = 16384
SEED = 1234

# The data below is llama.cpp's examples/parallel/parallel.cpp (MIT licence, copyright the
# ggml authors), reproduced so that both servers get the very prompts llama-parallel uses.
SYSTEM = """\
Transcript of a never ending dialog, where the User interacts with an Assistant.
The Assistant is helpful, kind, honest, good at writing, and never fails to answer the \
User's requests immediately and with precision.

User:
Recommend a nice restaurant in the area.
Assistant:
I recommend the restaurant "The Golden Duck". It is a 5 star restaurant with a great view \
of the city. The food is delicious and the service is excellent. The prices are reasonable \
and the portions are generous. The restaurant is located at 123 Main Street, New York, NY \
10001. The phone number is (212) 555-1234. The hours are Monday through Friday from \
11:00 am to 10:00 pm. The restaurant is closed on Saturdays and Sundays.
User:
Who is Richard Feynman?
Assistant:
Richard Feynman was an American physicist who is best known for his work in quantum \
mechanics and particle physics. He was awarded the Nobel Prize in Physics in 1965 for his \
contributions to the development of quantum electrodynamics. He was a popular lecturer and \
author, and he wrote several books, including "Surely You're Joking, Mr. Feynman!" and \
"What Do You Care What Other People Think?".
"""

QUESTIONS = [
    "What is the tallest mountain in the world?",
    "Who was the first person to win two Nobel Prizes?",
    "Which country invented paper?",
    "What organ is primarily responsible for pumping blood throughout the body?",
    "Which planet is known for its prominent ring system?",
    "Who directed the movie 'Inception'?",
    "What is the freezing point of water in Fahrenheit?",
    "Which animal is known to have the longest lifespan?",
    "What language has the most native speakers worldwide?",
    "What is the capital city of Canada?",
    "Who is credited with inventing the World Wide Web?",
    "Which metal is liquid at room temperature?",
    "What is the term for an animal that eats both plants and meat?",
    "Who painted 'The Starry Night'?",
    "What gas do humans exhale that plants use for photosynthesis?",
    "What year did World War II end?",
    "Which continent has the most countries?",
    "Who wrote the novel 'Frankenstein'?",
    "What does DNA stand for?",
    "What is the main ingredient in traditional Japanese miso soup?",
]

ANSWERS = [
    "The tallest mountain in the world is Mount Everest.",
    "Marie Curie was the first person to win two Nobel Prizes.",
    "Paper was invented in China.",
    "The heart is the organ responsible for pumping blood.",
    "Saturn is known for its prominent ring system.",
    "Christopher Nolan directed the movie 'Inception'.",
    "The freezing point of water in Fahrenheit is 32°F.",
    "The bowhead whale is known to have the longest lifespan among mammals.",
    "Mandarin Chinese has the most native speakers in the world.",
    "The capital city of Canada is Ottawa.",
    "Tim Berners-Lee is credited with inventing the World Wide Web.",
    "Mercury is the metal that is liquid at room temperature.",
    "An animal that eats both plants and meat is called an omnivore.",
    "'The Starry Night' was painted by Vincent van Gogh.",
    "Humans exhale carbon dioxide, which plants use in photosynthesis.",
    "World War II ended in 1945.",
    "Africa is the continent with the most countries.",
    "The novel 'Frankenstein' was written by Mary Shelley.",
    "DNA stands for Deoxyribonucleic Acid.",
    "The main ingredient in traditional Japanese miso soup is fermented soybean paste.",
]

USER_PROMPTS = [
    "What is the meaning of life?",
    "Tell me an interesting fact about llamas.",
    "What is the best way to cook a steak?",
    "Are you familiar with the Special Theory of Relativity and can you explain it to me?",
    "Recommend some interesting books to read.",
    "What is the best way to learn a new language?",
    "How to get a job at Google?",
    "If you could have any superpower, what would it be?",
    "I want to learn how to play the piano. What would be the best way to do it?",
]


def mt19937(seed: int) -> random.Random:
    """A Random whose getrandbits(32) yields what C++'s std::mt19937(seed)() yields.

    Both are MT19937; only the seeding differs (Python seeds by array), so set the
    state C++'s way: the 624 words of init_genrand(seed), position at the end.
    """
    state = [seed & 0xFFFFFFFF]
    for i in range(1, 624):
        previous = state[-1]
        state.append((1812433253 * (previous ^ (previous >> 30)) + i) & 0xFFFFFFFF)
    rng = random.Random()
    rng.setstate((3, (*state, 624), None))
    return rng


def build_prompts(count: int = REQUESTS, junk: int = JUNK) -> list[str]:
    """The prompts llama-parallel sends, in order: the rng is drawn per request as it is
    started, and the draws do not depend on which client takes it."""
    rng = mt19937(SEED)

    def draw() -> int:
        return rng.getrandbits(32)

    prompts = []
    for _ in range(count):
        question = USER_PROMPTS[draw() % len(USER_PROMPTS)]
        parts = [SYSTEM]
        for _ in range(draw() % max(1, junk)):
            r = draw() % len(QUESTIONS)
            parts.append(f"User:\n{QUESTIONS[r]}\nAssistant:\n {ANSWERS[r]}\n")
        parts.append(f"User:\n{question}\nAssistant:\n")
        prompts.append("".join(parts))
    return prompts


@dataclass(frozen=True)
class Run:
    """One pass of all requests through one server."""

    wall_seconds: float
    results: list[StreamResult]

    @property
    def generation_rate(self) -> float:
        return self.completion_tokens / self.wall_seconds

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.results)

    @property
    def prompt_rate(self) -> float:
        return sum(r.prompt_tokens for r in self.results) / self.wall_seconds

    @property
    def ttft_median(self) -> float:
        return statistics.median(r.ttft for r in self.results)

    @property
    def ttft_p90(self) -> float:
        return percentile([r.ttft for r in self.results], 0.9)

    @property
    def cached_share(self) -> float:
        prompt = sum(r.prompt_tokens for r in self.results)
        return sum(r.cached_tokens for r in self.results) / prompt if prompt else 0.0


def drive(target: Target, prompts: list[str], clients: int = CLIENTS) -> Run:
    """`clients` threads take the next prompt as soon as their previous request ends."""
    results: list[StreamResult | None] = [None] * len(prompts)
    errors: list[BaseException] = []
    finished: list[int] = []
    next_index = iter(range(len(prompts)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                index = next(next_index, None)
            if index is None or errors:
                return
            payload = {
                "prompt": prompts[index],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "stop": ["User:"],
            }
            try:
                results[index] = measure(target, "completions", payload)
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                finished.append(index)
                if len(finished) % 32 == 0:
                    log(f"  {len(finished)}/{len(prompts)} requests done")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return Run(wall, [r for r in results if r is not None])


def run_llama_server(model: Path, threads: int, prompts: list[str], clients: int) -> Run:
    spec = llama_server_spec(
        model, parallel=clients, ctx_size=TOTAL_CTX, threads=threads, extra=["--cont-batching"]
    )
    with served(spec) as target:
        return drive(target, prompts, clients)


def run_kronk_server(model: Path, threads: int, prompts: list[str], clients: int) -> Run:
    spec = kronk_server_spec(
        model, parallel=clients, ctx_per_slot=TOTAL_CTX // clients, threads=threads
    )
    with served(spec) as target:
        return drive(target, prompts, clients)


def run_kronk_sdk(model: Path, threads: int, prompts: list[str], clients: int) -> Run:
    from kronk import Kronk

    with Kronk(model, n_ctx=TOTAL_CTX // clients, n_seq_max=clients, n_threads=threads) as k:
        return drive(SdkTarget(k), prompts, clients)


@dataclass(frozen=True)
class ParallelSummary:
    """The totals llama-parallel prints at the end."""

    prompt_rate: float
    generation_rate: float
    total_rate: float
    cache_misses: int


def run_llama_parallel(model: Path, threads: int, requests: int, clients: int) -> ParallelSummary:
    output = run_tool(
        [
            str(ensure_tool("llama-parallel")),
            "-m",
            str(model),
            "-np",
            str(clients),
            "-ns",
            str(requests),
            "--top-k",
            "1",
            "-pps",
            "--junk",
            str(JUNK),
            "-c",
            str(TOTAL_CTX),
            "-t",
            str(threads),
        ],
        with_stderr=True,
    )

    def number(label: str) -> float:
        found = re.search(label + r".*?speed:\s*([\d.]+)", output)
        if found is None:
            raise SystemExit(f"llama-parallel printed no '{label}':\n{output[-2000:]}")
        return float(found.group(1))

    misses = re.search(r"Cache misses:\s*(\d+)", output)
    return ParallelSummary(
        prompt_rate=number("Total prompt tokens"),
        generation_rate=number("Total gen tokens"),
        total_rate=number(r"Total speed \(AVG\)"),
        cache_misses=int(misses.group(1)) if misses else -1,
    )


def section_name(clients: int) -> str:
    """RESULTS.md keeps the default scenario as `parallel`, others beside it."""
    return "parallel" if clients == CLIENTS else f"parallel_{clients}"


def format_report(
    model: Path,
    threads: int,
    watch: CpuWatch,
    kronk_mode: str,
    requests: int,
    clients: int,
    llama: list[Run],
    kronk: list[Run],
    reference: ParallelSummary | None,
) -> str:
    def stat(runs: list[Run], value: Callable[[Run], float]) -> Measurement | None:
        return Measurement(tuple(value(r) for r in runs)) if runs else None

    # label, value of a run, digits, goal for kronk / llama-server as (at_least, at_most)
    rows: list[tuple[str, Callable[[Run], float], int, tuple[float | None, float | None]]] = [
        ("generation tokens/s, aggregate", lambda r: r.generation_rate, 1, (1.05, None)),
        ("prompt tokens/s (cached included)", lambda r: r.prompt_rate, 1, (None, None)),
        ("TTFT median, s", lambda r: r.ttft_median, 3, (None, 0.9)),
        ("TTFT p90, s", lambda r: r.ttft_p90, 3, (None, 0.9)),
        ("wall time, s", lambda r: r.wall_seconds, 1, (None, 0.95)),
        ("completion tokens, all requests", lambda r: r.completion_tokens, 0, (None, None)),
        ("prompt tokens taken from cache, %", lambda r: 100 * r.cached_share, 1, (None, None)),
    ]
    lines = [
        *section_preamble(section_name(clients), model, threads, watch),
        f"- {clients} clients, {requests} requests, prompts as `llama-parallel --junk {JUNK}`, "
        f"greedy, max {MAX_TOKENS} tokens, stop at `User:`, {len(llama)} runs each, fresh "
        "servers every run",
        f"- llama-server: `-np {clients} -c {TOTAL_CTX} --cont-batching -t {threads}`; "
        f"kronk: {kronk_mode}, {clients} slots × {TOTAL_CTX // clients} tokens",
        "",
        "| median (range) | llama-server | kronk | kronk / llama-server | goal |",
        "|---|---:|---:|---:|---|",
    ]
    for label, value, digits, (at_least, at_most) in rows:
        a, b = stat(llama, value), stat(kronk, value)
        cells = [m.cell(digits) if m else "not run" for m in (a, b)]
        r = ratio(b.median if b else None, a.median if a else None)
        target = ""
        if at_least is not None or at_most is not None:
            measured = b.median / a.median if a and b else None
            target = goal(measured, at_least=at_least, at_most=at_most)
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {r} | {target} |")
    if llama and kronk:
        # Greedy, yet not bit-identical: a different batch composition changes the float
        # sums, so some answers stop at "User:" a few tokens earlier or later.
        pairs = list(zip(llama[0].results, kronk[0].results, strict=False))
        same = sum(a.text == b.text for a, b in pairs)
        lines += ["", f"Answers identical to llama-server's (first runs): {same} of {len(pairs)}."]
    if reference:
        kronk_gen = stat(kronk, lambda r: r.generation_rate)
        lines += [
            "",
            f"`llama-parallel -np {clients} -ns {requests} --top-k 1 -pps --junk {JUNK} "
            f"-c {TOTAL_CTX} -t {threads}` (in-process, no HTTP, system prompt shared): "
            f"prompt {reference.prompt_rate:.1f} t/s (system prompt not counted), generation "
            f"{reference.generation_rate:.1f} t/s, total {reference.total_rate:.1f} t/s, "
            f"cache misses {reference.cache_misses}; kronk generation / llama-parallel "
            f"= {ratio(kronk_gen.median if kronk_gen else None, reference.generation_rate)}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = bench_arguments(__doc__)
    parser.add_argument("--repetitions", type=int, default=3, help="runs each (default 3)")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="default 128")
    parser.add_argument(
        "--parallel",
        type=int,
        default=CLIENTS,
        help=f"clients and slots on each server (default {CLIENTS})",
    )
    parser.add_argument(
        "--kronk",
        choices=["server", "sdk"],
        default="server",
        help="how to run kronk: its server (default), or in-process through the SDK",
    )
    parser.add_argument("--skip-llama-parallel", action="store_true")
    args = parser.parse_args()

    model = chosen_model(args)
    prompts = build_prompts(args.requests)
    use_server = args.kronk == "server"
    run_kronk = run_kronk_server if use_server else run_kronk_sdk
    kronk_mode = (
        "`kronk server start`"
        if use_server
        else f"in-process SDK (`Kronk.complete_stream`, {args.parallel} client threads)"
    )
    watch = CpuWatch()
    llama_runs: list[Run] = []
    kronk_runs: list[Run] = []
    # Alternate, so that a slow spell of the machine hits both sides rather than one.
    for rep in range(args.repetitions):
        log(f"run {rep + 1}/{args.repetitions}: llama-server")
        llama_runs.append(run_llama_server(model, args.threads, prompts, args.parallel))
        log(f"  generation {llama_runs[-1].generation_rate:.1f} t/s")
        log(f"run {rep + 1}/{args.repetitions}: kronk ({'server' if use_server else 'SDK'})")
        kronk_runs.append(run_kronk(model, args.threads, prompts, args.parallel))
        log(f"  generation {kronk_runs[-1].generation_rate:.1f} t/s")
    reference = None
    if not args.skip_llama_parallel:
        log("llama-parallel (reference)")
        reference = run_llama_parallel(model, args.threads, args.requests, args.parallel)

    section = format_report(
        model,
        args.threads,
        watch,
        kronk_mode,
        args.requests,
        args.parallel,
        llama_runs,
        kronk_runs,
        reference,
    )
    publish(section, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
