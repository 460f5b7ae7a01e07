"""Single-stream generation speed: kronk against llama.cpp's own `llama-bench`.

    .venv/bin/python bench/bench_single_stream.py        # or: make bench

Builds `llama-bench` from the llama.cpp sources vendored in the llama-cpp-python sdist
we depend on (same llama.cpp as our binding), in a cache folder outside the repo, so the
two numbers differ only by what kronk adds on top of llama.cpp. Then runs `llama-bench`
tg128 and kronk's `complete()` (128 tokens, greedy, EOS ignored) on the default model,
prints both and their ratio, and records the run in bench/RESULTS.md.

Not part of `make test`: it takes minutes and measures, it does not check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = REPO_ROOT / "bench" / "RESULTS.md"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
N_GEN = 128
PROMPT = "Write a long story about a dragon."

# Tuned for a CPU build; llama-bench needs neither tests, examples, the server nor HTTPS.
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
]

SECTION_NAME = "single_stream"
RESULTS_HEADER = """\
# Benchmark results

Each benchmark lives in `bench/` and rewrites its own section below with its latest run:
the command, the date, the machine, and the numbers. Reference tools are built from the
llama.cpp sources vendored in the llama-cpp-python sdist kronk depends on, so both sides
run the same llama.cpp. Speeds are medians over runs with their range, because another
process on a small shared machine can slow a single run several-fold; run benchmarks on
an otherwise idle machine. Benchmarks are not part of `make test`.

- **single_stream** (`bench/bench_single_stream.py`, `make bench`): one request at a
  time, 128 generated tokens, greedy, end-of-sequence ignored, default model
  (Qwen2.5-Coder-0.5B-Instruct Q4_K_M). Compares llama.cpp's `llama-bench` tg128 with
  kronk's `Kronk.complete()` generation speed (first to last token). The ratio says how
  much of llama.cpp's speed kronk keeps; near 1.0 is the goal.
"""


@dataclass(frozen=True)
class Measurement:
    """Generation speeds in tokens/s, one per timed run.

    Reported as the median: on a shared machine one run can be slowed several-fold by
    another process, and the median shrugs off such a run where the mean does not.
    """

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def ensure_llama_bench(cache_dir: Path, jobs: int) -> Path:
    """Return the llama-bench binary, downloading the sdist and building it if missing."""
    source_root = cache_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    build_dir = cache_dir / f"build-{LLAMA_CPP_PYTHON_VERSION}"
    binary = build_dir / "bin" / "llama-bench"
    if binary.exists():
        return binary

    sdist_dir = cache_dir / "sdist"
    sdist = sdist_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.exists():
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-d",
                str(sdist_dir),
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
            ]
        )
    llama_cpp_src = source_root / "vendor" / "llama.cpp"
    if not (llama_cpp_src / "CMakeLists.txt").exists():
        _log(f"unpacking {sdist.name}")
        with tarfile.open(sdist) as archive:
            archive.extractall(cache_dir, filter="data")
    _run(["cmake", "-S", str(llama_cpp_src), "-B", str(build_dir), *CMAKE_FLAGS])
    _run(["cmake", "--build", str(build_dir), "--target", "llama-bench", f"-j{jobs}"])
    if not binary.exists():
        raise SystemExit(f"build finished but {binary} is missing")
    return binary


def run_llama_bench(binary: Path, model: Path, threads: int, repetitions: int) -> Measurement:
    """llama-bench tg128 (no prompt), averaged over `repetitions` by llama-bench itself."""
    output = _run(
        [
            str(binary),
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
        ],
        capture=True,
    )
    results = json.loads(output)
    tg = [r for r in results if r["n_prompt"] == 0 and r["n_gen"] == N_GEN]
    if len(tg) != 1:
        raise SystemExit(f"unexpected llama-bench output: {output[:500]}")
    return Measurement(runs=tuple(float(x) for x in tg[0].get("samples_ts", [tg[0]["avg_ts"]])))


def run_kronk(model: Path, threads: int, repetitions: int) -> Measurement:
    """kronk's `complete()`: same model, threads and token count as llama-bench tg128."""
    from kronk import Kronk  # imported late: the build step works without the SDK

    rates = []
    with Kronk(model, n_ctx=2048, n_seq_max=1, n_threads=threads) as k:
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
    return Measurement(runs=tuple(rates))


def default_model_path() -> Path:
    """The default model in the test cache (shared with the tests), assembled if missing."""
    from kronk.tools.pypi_chunks import DEFAULT_MODEL, ensure_model

    cache = Path(os.environ.get("KRONK_TEST_CACHE", "~/.cache/kronk-test")).expanduser()
    path = cache / DEFAULT_MODEL.filename
    if not path.exists():
        _log(f"assembling the default model into {cache}")
    return ensure_model(DEFAULT_MODEL, cache)


def format_report(
    command: str,
    model: Path,
    threads: int,
    llama: Measurement | None,
    kronk: Measurement | None,
) -> str:
    """The markdown section for RESULTS.md (also printed)."""

    def cell(m: Measurement | None) -> str:
        return f"{m.median:.1f} ({min(m.runs):.1f}–{max(m.runs):.1f})" if m else "not run"

    ratio = f"{kronk.median / llama.median:.3f}" if (llama and kronk) else "n/a"
    lines = [
        f"## {SECTION_NAME}",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command}`",
        f"- machine: {_cpu_name()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}",
        f"- llama.cpp: from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist; "
        f"threads {threads}; model `{model.name}`",
        "",
        "| llama-bench tg128 t/s, median (range) | kronk complete t/s, median (range) "
        "| kronk / llama-bench |",
        "|---:|---:|---:|",
        f"| {cell(llama)} | {cell(kronk)} | {ratio} |",
        "",
    ]
    return "\n".join(lines)


def update_results(section: str, results_file: Path = RESULTS_FILE) -> None:
    """Replace this bench's section in RESULTS.md (or append it), keeping the others."""
    begin, end = f"<!-- BEGIN {SECTION_NAME} -->", f"<!-- END {SECTION_NAME} -->"
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    text = results_file.read_text() if results_file.exists() else RESULTS_HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block
    results_file.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF model (default: the default model)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    parser.add_argument("--repetitions", type=int, default=3, help="timed runs each (default 3)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("KRONK_BENCH_CACHE", "~/.cache/kronk-bench")),
        help="where the sdist and the llama-bench build go (env KRONK_BENCH_CACHE)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="parallel build jobs (default 2)")
    parser.add_argument(
        "--build-only", action="store_true", help="only build llama-bench and print its path"
    )
    parser.add_argument(
        "--no-record", action="store_true", help="print results but leave RESULTS.md alone"
    )
    args = parser.parse_args()

    cache_dir = args.cache_dir.expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    binary = ensure_llama_bench(cache_dir, args.jobs)
    if args.build_only:
        print(binary)
        return 0

    model = args.model.resolve() if args.model else default_model_path()
    _log(f"llama-bench tg{N_GEN} on {model.name}")
    llama = run_llama_bench(binary, model, args.threads, args.repetitions)
    _log(f"kronk complete() x{args.repetitions} on {model.name}")
    kronk = run_kronk(model, args.threads, args.repetitions)

    section = format_report(_command_line(), model, args.threads, llama, kronk)
    print(section)
    if not args.no_record:
        update_results(section)
        _log(f"recorded in {RESULTS_FILE.relative_to(REPO_ROOT)}")
    return 0


def _command_line() -> str:
    python = Path(sys.executable)
    try:
        python_shown = str(python.relative_to(REPO_ROOT))
    except ValueError:
        python_shown = str(python)
    script = Path(sys.argv[0]).resolve()
    try:
        script_shown = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_shown = str(script)
    return shlex.join([python_shown, script_shown, *sys.argv[1:]])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _run(command: list[str], *, capture: bool = False) -> str:
    _log("$ " + shlex.join(command))
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        raise SystemExit(f"{command[0]} not found")
    result = subprocess.run(
        command, check=False, text=True, stdout=subprocess.PIPE if capture else None
    )
    if result.returncode != 0:
        raise SystemExit(f"command failed (exit {result.returncode}): {shlex.join(command)}")
    return result.stdout or ""


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
