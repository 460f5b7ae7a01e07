"""Speculative decoding: kronk's drafts against plain decoding and against llama-server's.

    .venv/bin/python bench/bench_speculative.py [--rounds N] [--draft-max N] [--no-llama-server]

Three workloads, all greedy, streamed over HTTP by the same client, timed from the first
to the last token (tokens after the first over that time):
- edit: "rewrite this ~100-line file with one class renamed" (src/kronk/engine/stops.py),
  single stream, on the default 0.5B model: kronk `--spec off` / `--spec ngram` (the
  anchored drafter) / `--spec ngram-simple` against llama-server plain and with each
  n-gram `--spec-type` it has;
- chat: a free question to the 1.5B Qwen coder, single stream: kronk `--spec off`,
  `--spec auto` (n-gram) and `--spec draft` (the 0.5B drafts) against llama-server plain
  and with the 0.5B as `--model-draft`;
- parallel: 4 streams at once, both workloads on the 0.5B, kronk `--spec auto` against
  `--spec off`.
Each configuration is a fresh server; configurations alternate within a round, so a slow
spell of the shared machine hits all of them. Outputs are compared with plain decoding
(identical text expected), and kronk's drafted and accepted tokens are read from its
/api/ps. Records the run in bench/RESULTS.md.

Not part of `make test`: it takes many minutes and measures, it does not check.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from llama_tools import (
    REPO_ROOT,
    CpuWatch,
    ServerSpec,
    bench_arguments,
    chosen_model,
    ensure_tool,
    goal,
    kronk_server_spec,
    llama_server_spec,
    log,
    publish,
    run_tool,
    section_preamble,
)
from stream_client import HttpTarget, served

EDIT_FILE = REPO_ROOT / "src" / "kronk" / "engine" / "stops.py"
EDIT_PROMPT = (
    "Rewrite this Python file with the class StopMatcher renamed to StopFinder everywhere. "
    "Answer with the whole file in one code block and nothing else.\n\n```python\n{code}```"
)
CHAT_PROMPT = "Explain how a hash map works and when to use one, with a short Python example."
PARALLEL_EDITS = ("StopFinder", "StopScanner", "StopWatcher", "StopTracker")
CTX = 4096
BIG_MODEL = Path("~/.cache/kronk-test/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf").expanduser()
NGRAM_TYPES = ("ngram-simple", "ngram-mod")  # ngram-map-k is ngram-simple with counts


def edit_messages(new_name: str = "StopFinder") -> list[dict[str, str]]:
    text = EDIT_PROMPT.format(code=EDIT_FILE.read_text()).replace("StopFinder", new_name)
    return [{"role": "user", "content": text}]


def chat_messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": CHAT_PROMPT}]


@dataclass
class Run:
    """One streamed answer, timed by the client."""

    text: str
    tokens: int
    rate: float  # tokens after the first over first-to-last token, per second
    drafted: int = 0  # llama-server reports its own per request in `timings`
    accepted: int = 0


@dataclass
class Side:
    """One configuration of one workload over all rounds."""

    name: str
    runs: list[Run] = field(default_factory=list)
    drafted: int = 0
    accepted: int = 0

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.runs) if self.runs else 0.0

    def cell(self) -> str:
        rates = [r.rate for r in self.runs]
        if not rates:
            return "not run"
        if len(rates) == 1:
            return f"{rates[0]:.1f}"
        return f"{statistics.median(rates):.1f} ({min(rates):.1f}–{max(rates):.1f})"

    def acceptance(self) -> str:
        drafted = self.drafted or sum(r.drafted for r in self.runs)
        accepted = self.accepted or sum(r.accepted for r in self.runs)
        if not drafted:
            return "-"
        return f"{accepted}/{drafted} ({accepted / drafted:.0%})"


def stream(target: HttpTarget, messages: list[dict[str, str]], max_tokens: int) -> Run:
    payload = {"messages": messages, "max_tokens": max_tokens, "temperature": 0}
    first = last = 0.0
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for chunk in target.chunks("chat/completions", payload):
        choices = chunk.get("choices") or []
        text = str((choices[0].get("delta") or {}).get("content") or "") if choices else ""
        if text:
            last = time.perf_counter()
            first = first or last
            pieces.append(text)
        usage = chunk.get("usage") or usage
        timings = chunk.get("timings") or timings
    tokens = int(usage.get("completion_tokens", 0))
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return Run(
        "".join(pieces),
        tokens,
        rate,
        int(timings.get("draft_n", 0)),
        int(timings.get("draft_n_accepted", 0)),
    )


def kronk_drafts(url: str) -> tuple[int, int]:
    """Drafted and accepted tokens since the load, from kronk's /api/ps."""
    models = httpx.get(f"{url}/api/ps", timeout=10).json().get("models", [])
    return (
        sum(int(m.get("draft_tokens", 0)) for m in models),
        sum(int(m.get("draft_accepted", 0)) for m in models),
    )


def run_side(
    side: Side,
    spec: ServerSpec,
    jobs: Sequence[tuple[list[dict[str, str]], int]],
    *,
    kronk: bool,
) -> list[Run]:
    """Start the server, warm it up, run `jobs` (messages, max_tokens) at once, stop it."""
    log(f"{side.name}: {len(jobs)} stream(s)")
    with served(spec) as target:
        stream(target, chat_messages(), 8)  # warm-up: buffers, page faults
        results: list[Run | None] = [None] * len(jobs)
        start = threading.Barrier(len(jobs))

        def client(i: int) -> None:
            start.wait()
            results[i] = stream(target, *jobs[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(jobs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if kronk:
            drafted, accepted = kronk_drafts(target.base_url)
            side.drafted += drafted
            side.accepted += accepted
    done = [r for r in results if r is not None]
    if len(done) != len(jobs):
        raise SystemExit(f"a stream of {side.name} failed")
    side.runs += done
    return done


LAYOUTS: dict[str, list[int]] = {
    # tokens fed per slot (slots 0..3, one KV stream each), as a verification step would
    "4 slots x 1 token (plain step)": [1, 1, 1, 1],
    "4 slots x 5 tokens (equal drafts: one pass)": [5, 5, 5, 5],
    "1 slot x 5 + 3 x 1 (one long draft: two passes)": [5, 1, 1, 1],
    "1 slot x 17 + 3 x 1 (two passes)": [17, 1, 1, 1],
    "1 slot x 1 (plain, single stream)": [1],
    "1 slot x 5": [5],
    "1 slot x 17": [17],
    "1 slot x 41": [41],
    "1 slot x 65 (a draft of 64)": [65],
}


def measure_layouts(model: Path, threads: int, repetitions: int = 7) -> list[str]:
    """Decode time of the batch layouts a verification step can take, on the model's own
    context (one KV stream per slot, 512 tokens of context each): the measured basis of
    the engine's cost model (`StepCost`: a linear fit and a cost per pass size)."""
    from kronk.engine.speculative import pass_sizes
    from kronk.llama import Batch, ContextParams, LlamaContext, LlamaModel

    llama = LlamaModel.load(model)
    ctx = LlamaContext(
        llama, ContextParams(n_ctx=4 * 1024, n_seq_max=4, n_threads=threads, kv_unified=False)
    )
    batch = Batch(512, 1)
    rows = ["| layout | passes | decode ms, median (range) |", "|---|---:|---:|"]
    try:
        prompt = llama.vocab.tokenize("def f(x):\n    return x * 2\n" * 20)
        for seq in range(4):  # some context to attend to, as in a real step
            batch.clear()
            batch.add_sequence(prompt, 0, seq, output_last=True)
            ctx.decode(batch)
        for name, lengths in LAYOUTS.items():
            times = []
            for _ in range(repetitions):
                batch.clear()
                for seq, n in enumerate(lengths):
                    batch.add_sequence(
                        prompt[:n], len(prompt), seq, output_last=True, output_all=True
                    )
                start = time.perf_counter()
                ctx.decode(batch)
                times.append(1000 * (time.perf_counter() - start))
                for seq in range(len(lengths)):
                    ctx.seq_remove(seq, len(prompt), -1)
            passes = len(pass_sizes(list(enumerate(lengths)), ctx.n_ubatch))
            rows.append(
                f"| {name} | {passes} | {statistics.median(times):.1f} "
                f"({min(times):.1f}–{max(times):.1f}) |"
            )
    finally:
        batch.close()
        ctx.close()
        llama.close()
    return rows


def supported_spec_types() -> list[str]:
    """The n-gram `--spec-type` values this llama-server build knows."""
    help_text = run_tool([str(ensure_tool("llama-server")), "--help"], with_stderr=True)
    return [t for t in NGRAM_TYPES if t in help_text]


@dataclass
class Workload:
    title: str
    model: Path
    jobs: list[tuple[list[dict[str, str]], int]]
    kronk: dict[str, list[str]]  # side name -> kronk server flags
    llama: dict[str, list[str]]  # side name -> llama-server flags
    parallel: int = 1
    sides: dict[str, Side] = field(default_factory=dict)

    def run_round(self, threads: int, *, with_llama: bool) -> None:
        for name, flags in self.kronk.items():
            spec = kronk_server_spec(
                self.model,
                parallel=self.parallel,
                ctx_per_slot=CTX,
                threads=threads,
                extra=flags,
            )
            side = self.sides.setdefault(name, Side(name))
            run_side(side, spec, self.jobs, kronk=True)
        if not with_llama:
            return
        for name, flags in self.llama.items():
            spec = llama_server_spec(
                self.model,
                parallel=self.parallel,
                ctx_size=CTX * self.parallel,
                threads=threads,
                extra=flags,
            )
            side = self.sides.setdefault(name, Side(name))
            run_side(side, spec, self.jobs, kronk=False)

    def table(self, plain: dict[str, str], goals: dict[str, tuple[str, float]]) -> list[str]:
        """Rows: each side's speed, its ratio to its own plain side, whether its text is
        the plain side's, acceptance, and the goal where one applies."""
        lines = [
            f"**{self.title}**",
            "",
            "| side | tok/s per stream, median (range) | / its plain | same text as plain "
            "| draft tokens accepted | goal |",
            "|---|---:|---:|---|---:|---|",
        ]
        for name, side in self.sides.items():
            base = self.sides.get(plain.get(name, ""))
            speedup = side.rate / base.rate if base and base.rate and base is not side else None
            same = "-"
            if base is not None and base is not side and base.runs and side.runs:
                n = min(len(base.runs), len(side.runs))
                equal = sum(base.runs[i].text == side.runs[i].text for i in range(n))
                same = f"{equal}/{n}"
            target = goals.get(name)
            value = None
            if target is not None:
                other = self.sides.get(target[0])
                value = side.rate / other.rate if other and other.rate else None
            lines.append(
                f"| {name} | {side.cell()} | "
                f"{f'{speedup:.2f}×' if speedup else '-'} | {same} | {side.acceptance()} | "
                f"{goal(value, at_least=target[1]) + f' (vs {target[0]})' if target else ''} |"
            )
        return lines


def best(sides: dict[str, Side], prefix: str) -> Side | None:
    matching = [s for name, s in sides.items() if name.startswith(prefix) and s.runs]
    return max(matching, key=lambda s: s.rate, default=None)


def main() -> int:
    parser = bench_arguments(__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    parser.add_argument(
        "--draft-max", type=int, default=64, help="kronk --draft-max, llama-server's draft (64)"
    )
    parser.add_argument("--edit-tokens", type=int, default=1200)
    parser.add_argument("--chat-tokens", type=int, default=256)
    parser.add_argument(
        "--no-llama-server", action="store_true", help="kronk's sides only (no build needed)"
    )
    parser.add_argument(
        "--only", choices=("edit", "chat", "parallel"), action="append", help="workloads to run"
    )
    parser.add_argument(
        "--layouts-only", action="store_true", help="only time the batch layouts and print them"
    )
    args = parser.parse_args()
    small = chosen_model(args)
    with_llama = not args.no_llama_server
    draft_max = ["--draft-max", str(args.draft_max)]
    ngram_types = supported_spec_types() if with_llama else []
    if with_llama:
        log(f"llama-server n-gram modes: {', '.join(ngram_types) or 'none'}")
    workloads: dict[str, Workload] = {
        "edit": Workload(
            "edit: rewrite a 109-line file with a class renamed, 1 stream, 0.5B",
            small,
            [(edit_messages(), args.edit_tokens)],
            {
                "kronk off": ["--spec", "off"],
                "kronk ngram": ["--spec", "ngram", *draft_max],
                "kronk ngram-simple": ["--spec", "ngram-simple", *draft_max],
            },
            {
                "llama-server plain": [],
                **{
                    f"llama-server {t}": ["--spec-type", t]  # its defaults (see the preamble)
                    for t in ngram_types
                },
            },
        ),
        "chat": Workload(
            "chat: a free question, 1 stream, 1.5B target",
            BIG_MODEL,
            [(chat_messages(), args.chat_tokens)],
            {
                "kronk off": ["--spec", "off"],
                "kronk auto (n-gram)": ["--spec", "auto", *draft_max],
                "kronk draft (0.5B)": ["--spec", "draft", "--draft-model", str(small), *draft_max],
            },
            {
                "llama-server plain": [],
                "llama-server draft (0.5B)": [
                    "--model-draft",
                    str(small),
                    "--threads-draft",
                    str(args.threads),
                    "--spec-draft-n-max",
                    str(args.draft_max),
                ],
            },
        ),
        "parallel": Workload(
            "parallel: 4 streams at once (2 edits, 2 chats), 0.5B",
            small,
            [
                (edit_messages(PARALLEL_EDITS[0]), args.edit_tokens // 2),
                (edit_messages(PARALLEL_EDITS[1]), args.edit_tokens // 2),
                (chat_messages(), args.chat_tokens),
                ([{"role": "user", "content": "Write a haiku about the sea."}], args.chat_tokens),
            ],
            {"kronk off": ["--spec", "off"], "kronk auto": ["--spec", "auto", *draft_max]},
            {},
            parallel=4,
        ),
    }
    chosen = args.only or list(workloads)
    log("batch layouts of a verification step")
    layouts = measure_layouts(small, args.threads)
    if args.layouts_only:
        print("\n".join(layouts))
        return 0
    if "chat" in chosen and not BIG_MODEL.exists():
        raise SystemExit(f"{BIG_MODEL} is missing: assemble qwen2.5-coder-1.5b-instruct first")
    watch = CpuWatch()
    for round_ in range(1, args.rounds + 1):
        for key in chosen:
            log(f"round {round_}/{args.rounds}: {key}")
            workloads[key].run_round(args.threads, with_llama=with_llama)

    lines = [
        *section_preamble("speculative", small, args.threads, watch),
        f"- greedy, streamed chat completions, {args.rounds} round(s); kronk `--draft-max "
        f"{args.draft_max}` (adaptive); llama-server's n-gram modes at their defaults "
        "(ngram-simple: 12-token match, drafts of 48; ngram-mod: 24-token match, drafts of "
        f"48-64), its draft model with `--spec-draft-n-max {args.draft_max}`",
        "",
    ]
    for key in chosen:
        w = workloads[key]
        goals: dict[str, tuple[str, float]] = {}
        if key == "edit":
            goals["kronk ngram"] = ("kronk off", 2.2)
            top = best(w.sides, "llama-server ngram")
            if top is not None:
                goals[f"kronk ngram vs {top.name}"] = (top.name, 1.0)
                w.sides[f"kronk ngram vs {top.name}"] = w.sides["kronk ngram"]
        elif key == "chat":
            goals["kronk auto (n-gram)"] = ("kronk off", 0.97)
            goals["kronk draft (0.5B)"] = ("kronk off", 0.97)
        else:
            goals["kronk auto"] = ("kronk off", 0.97)
        plain = {n: "kronk off" if n.startswith("kronk") else "llama-server plain" for n in w.sides}
        lines += [*w.table(plain, goals), ""]
    lines += [
        "**batch layouts** (one KV stream per slot; what the engine's cost model fits):",
        "",
        *layouts,
        "",
    ]
    publish("\n".join(lines), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
