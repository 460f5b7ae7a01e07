"""What every benchmark shares: llama.cpp's own tools, servers, and bench/RESULTS.md.

The reference tools (`llama-bench`, `llama-server`, `llama-parallel`, `llama-batched-bench`)
are built from the llama.cpp sources vendored in the llama-cpp-python sdist kronk depends
on, so both sides of every comparison run the same llama.cpp. They are built into a cache
folder outside the repo (`~/.cache/kronk-bench`, or $KRONK_BENCH_CACHE), never committed.

    .venv/bin/python bench/llama_tools.py llama-server llama-parallel   # build, print paths
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = REPO_ROOT / "bench" / "RESULTS.md"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
TOOLS = ("llama-bench", "llama-server", "llama-parallel", "llama-batched-bench")

# A CPU build of the tools and the examples. No HTTPS, no downloads: the server's web UI
# is left out (its prebuilt assets would come from the network) and nothing needs curl.
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_EXAMPLES=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
]
# As the Makefile builds llama-cpp-python: no AMX kernels on x86-64 (virtual machines that
# report AMX without enabling its tile state fault on them), so both sides run the same code.
if platform.machine() in ("x86_64", "AMD64"):
    _NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    CMAKE_FLAGS += [f"-DCMAKE_C_FLAGS={_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_NO_AMX}"]

RESULTS_HEADER = """\
# Benchmark results

Each benchmark lives in `bench/` and rewrites its own section below with its latest run:
the command, the date, the machine, and the numbers. `make bench` runs them all. Reference
tools (`llama-bench`, `llama-server`, `llama-parallel`, `llama-batched-bench`) are built by
`bench/llama_tools.py` from the llama.cpp sources vendored in the llama-cpp-python sdist
kronk depends on, so both sides run the same llama.cpp, with the same model and threads.
Numbers are medians over repetitions with their range, because another process on a small
shared machine can slow a single run several-fold; each section says how much of the CPU
other processes took while it ran. Benchmarks are not part of `make test`.

- **single_stream** (`bench/bench_single_stream.py`): one request at a time, 128 tokens,
  greedy, end-of-sequence ignored. kronk's SDK against `llama-bench` tg128, and kronk's
  server against `llama-server`, both driven by the same streaming HTTP client. Goal ≥ 0.97.
  And a long answer (a ~1000-token prompt, up to 512 greedy tokens, the same text from
  both servers): tokens/s ≥ 0.97× llama-server's, cold time to first token ≤ 1.0×.
- **parallel** (`bench/bench_parallel.py`): llama.cpp's `examples/parallel` scenario over
  HTTP: 8 clients, 128 requests, each the shared system transcript + up to 10 junk Q/A
  pairs + a question, greedy, stop at "User:". kronk's server against `llama-server -np 8`
  (and `llama-parallel` itself for reference). Goals: generation ≥ 1.05×, median and p90
  TTFT ≤ 0.9×, wall time ≤ 0.95×; also with `--parallel 4` and 16 (`parallel_4`, ...).
- **multiturn** (`bench/bench_multiturn.py`): a 20-turn chat that grows by one exchange a
  turn; prefilled and cached tokens and TTFT per turn. Goal: TTFT of turn 20 ≤ 1.3× turn 2.
- **overhead** (`bench/bench_overhead.py`): the engine's Python time per decode step as a
  share of the step, at 1, 4 and 8 streams, with `llama-batched-bench` generation speed.
- **kv_cache_types** (`bench/bench_kv_cache_types.py`): KV cache memory against quality.
- **server_threads** (`bench/bench_server_threads.py`): a kronk server's CPU per thread
  while 8 clients stream: llama.cpp's compute threads against everything else.
- **speculative** (`bench/bench_speculative.py`): speculative decoding on an edit (n-gram),
  a free chat on the 1.5B (n-gram and the 0.5B as draft) and 4 parallel streams, against
  plain decoding and llama-server's n-gram and draft modes; and the decode cost of the
  batch layouts a verification step can take. Goals: edit ≥ 2.2× plain and ≥ 1.0×
  llama-server's best n-gram mode; everything else ≥ 0.97× plain.
- **soak** (`bench/soak.py`): many streaming clients (64 by default, a third hanging up at
  random points) for rounds of minutes, mixed chat, completions, embeddings and tool calls;
  after each round every slot free, RSS, open files and the prompt cache's bytes. Passes
  with no failed request, open files back where they started and a normal answer after.
"""


# -- building llama.cpp's tools ---------------------------------------------------------------


def cache_dir() -> Path:
    path = Path(os.environ.get("KRONK_BENCH_CACHE", "~/.cache/kronk-bench")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def build_dir() -> Path:
    return cache_dir() / f"build-{LLAMA_CPP_PYTHON_VERSION}-noamx"


def ensure_tools(names: Sequence[str], jobs: int = 2) -> dict[str, Path]:
    """Return the binaries named (targets in TOOLS), building those that are missing.

    The first build downloads the sdist and takes several minutes on two cores; later
    calls only check that the binaries exist.
    """
    unknown = set(names) - set(TOOLS)
    if unknown:
        raise SystemExit(f"unknown llama.cpp tool(s): {sorted(unknown)}; known: {TOOLS}")
    binaries = {name: build_dir() / "bin" / name for name in names}
    missing = [name for name, path in binaries.items() if not path.exists()]
    if missing:
        source = _llama_cpp_source()
        # Re-running configure is cheap and picks up flags an older build dir lacks.
        _run(["cmake", "-S", str(source), "-B", str(build_dir()), *CMAKE_FLAGS])
        _run(["cmake", "--build", str(build_dir()), "--target", *missing, f"-j{jobs}"])
        still_missing = [str(binaries[name]) for name in missing if not binaries[name].exists()]
        if still_missing:
            raise SystemExit(f"build finished but these are missing: {still_missing}")
    return binaries


def ensure_tool(name: str, jobs: int = 2) -> Path:
    return ensure_tools([name], jobs)[name]


def _llama_cpp_source() -> Path:
    """The vendored llama.cpp of the llama-cpp-python sdist, downloaded and unpacked once."""
    root = cache_dir()
    source = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").exists():
        return source
    sdist_dir = root / "sdist"
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
    log(f"unpacking {sdist.name}")
    with tarfile.open(sdist) as archive:
        archive.extractall(root, filter="data")
    return source


# -- the model --------------------------------------------------------------------------------


def default_model_path() -> Path:
    """The default model in the test cache (shared with the tests), assembled if missing."""
    from kronk.tools.pypi_chunks import DEFAULT_MODEL, ensure_model

    cache = Path(os.environ.get("KRONK_TEST_CACHE", "~/.cache/kronk-test")).expanduser()
    if not (cache / DEFAULT_MODEL.filename).exists():
        log(f"assembling the default model into {cache}")
    return ensure_model(DEFAULT_MODEL, cache)


# -- servers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """How to start one OpenAI-compatible server and know it is ready."""

    name: str
    command: list[str]
    port: int
    health_path: str
    model_id: str  # what requests name in their "model" field

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def llama_server_spec(
    model: Path, *, parallel: int, ctx_size: int, threads: int, extra: Sequence[str] = ()
) -> ServerSpec:
    """llama-server with `parallel` slots sharing `ctx_size` tokens (ctx_size/parallel each)."""
    port = free_port()
    command = [
        str(ensure_tool("llama-server")),
        "--model",
        str(model),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--parallel",
        str(parallel),
        "--ctx-size",
        str(ctx_size),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        *extra,
    ]
    return ServerSpec("llama-server", command, port, "/health", model.stem)


def kronk_server_spec(
    model: Path,
    *,
    parallel: int,
    ctx_per_slot: int,
    threads: int,
    extra: Sequence[str] = (),
    home: Path | None = None,
) -> ServerSpec:
    """`kronk server start` with `parallel` slots of `ctx_per_slot` tokens each.

    It gets a home folder of its own (its pid file must not clash with a server the user
    runs; `home` gives another, for a server beside a benchmark's) and logs warnings only,
    as llama-server does not log each request either.
    """
    port = free_port()
    home = home or cache_dir() / "kronk-home"
    command = [
        sys.executable,
        "-m",
        "kronk.cli.main",
        "server",
        "start",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--parallel",
        str(parallel),
        "--ctx-size",
        str(ctx_per_slot),
        "--threads",
        str(threads),
        "--home",
        str(home),
        "--log-level",
        "warning",
        *extra,
    ]
    return ServerSpec("kronk server", command, port, "/health/ready", model.stem)


@contextmanager
def running(spec: ServerSpec, timeout: float = 180.0) -> Iterator[str]:
    """Start the server, wait until it says it is ready, yield its base URL, stop it.

    Its output goes to a log file in the cache folder, named in the error if it fails.
    """
    log_path = cache_dir() / f"{spec.name.replace(' ', '-')}.log"
    log(f"starting {spec.name} (log: {log_path})")
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            spec.command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )
        try:
            _wait_ready(spec, process, log_path, timeout)
            yield spec.base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(
    spec: ServerSpec, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    url = spec.base_url + spec.health_path
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{spec.name} exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)  # polling a child process that has no readiness signal
    raise SystemExit(f"{spec.name} was not ready after {timeout:.0f}s (log: {log_path})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- statistics -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One quantity measured in several runs, reported as the median and the range.

    On a shared machine one run can be slowed several-fold by another process; the median
    shrugs off such a run where the mean does not.
    """

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def cell(self, digits: int = 1) -> str:
        if len(self.runs) == 1:
            return f"{self.runs[0]:.{digits}f}"
        return f"{self.median:.{digits}f} ({min(self.runs):.{digits}f}–{max(self.runs):.{digits}f})"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (`fraction` in 0..1) of a non-empty sample."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> str:
    if numerator is None or denominator is None or denominator == 0:
        return "n/a"
    return f"{numerator / denominator:.{digits}f}"


def goal(
    value: float | None, *, at_least: float | None = None, at_most: float | None = None
) -> str:
    """A goal and whether `value` meets it, for a table cell: "≥ 0.97: met"."""
    text = f"≥ {at_least}" if at_least is not None else f"≤ {at_most}"
    if value is None:
        return text
    met = (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    return f"{text}: {'met' if met else '**missed**'}"


# -- RESULTS.md -------------------------------------------------------------------------------


class CpuWatch:
    """How much of the CPU other processes took while a benchmark ran.

    Busy time of the whole machine (/proc/stat) minus this process's own, its threads and
    its waited-for children (servers, llama.cpp tools) included, over the elapsed time of
    all cores. Read it after every child has been waited for.
    """

    def __init__(self) -> None:
        self._start = _cpu_snapshot()

    def others_share(self) -> float:
        start, end = self._start, _cpu_snapshot()
        capacity = (end[0] - start[0]) * (os.cpu_count() or 1) * os.sysconf("SC_CLK_TCK")
        others = (end[1] - start[1]) - (end[2] - start[2])
        return max(0.0, others / capacity) if capacity > 0 else 0.0


def _cpu_snapshot() -> tuple[float, int, int]:
    """(now, machine busy jiffies, this process's jiffies including waited-for children)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    # The command name (field 2) may hold spaces; the numbers start after its ')'.
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = map(int, own[11:15])
    machine = user + nice + system + irq + softirq + steal
    return time.monotonic(), machine, utime + stime + cutime + cstime


def section_preamble(name: str, model: Path, threads: int, watch: CpuWatch) -> list[str]:
    """The first lines of every section: what ran, when, where, and how busy the machine was."""
    others = watch.others_share()
    busy = " — busy machine: treat these numbers with care" if others > 0.1 else ""
    return [
        f"## {name}",
        "",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `{command_line()}`",
        f"- machine: {_cpu_name()}, {os.cpu_count()} cores, {platform.system()} "
        f"{platform.machine()}, Python {platform.python_version()}; other processes took "
        f"{100 * others:.0f}% of the CPU during the run{busy}",
        f"- llama.cpp: from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist; "
        f"threads {threads}; model `{model.name}`",
    ]


def bench_arguments(doc: str) -> argparse.ArgumentParser:
    """A parser with what every benchmark takes: --model, --threads and --no-record.
    `doc` is the script's docstring; its first paragraph becomes the description."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF model (default: the default model)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    parser.add_argument(
        "--no-record", action="store_true", help="print results but leave RESULTS.md alone"
    )
    return parser


def chosen_model(args: argparse.Namespace) -> Path:
    """The --model given, else the default model."""
    return Path(args.model).resolve() if args.model else default_model_path()


def publish(section: str, args: argparse.Namespace) -> None:
    """Print a results section and record it in RESULTS.md unless --no-record."""
    print(section)
    if not args.no_record:
        update_results(section)
        log("recorded in bench/RESULTS.md")


def update_results(section: str, results_file: Path = RESULTS_FILE) -> None:
    """Replace the section (named by its `## name` heading) in RESULTS.md, or append it.

    Other sections are kept; the header above them is refreshed from RESULTS_HEADER.
    """
    heading = re.match(r"## (\S+)", section)
    if heading is None:
        raise ValueError("a results section starts with '## <name>'")
    name = heading.group(1)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    text = results_file.read_text() if results_file.exists() else ""
    first_block = text.find("<!-- BEGIN ")
    body = text[first_block:] if first_block >= 0 else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(body):
        body = pattern.sub(lambda _: block, body)
    else:
        body = (body.rstrip() + "\n\n" if body else "") + block
    temporary = results_file.with_suffix(".md.tmp")
    temporary.write_text(RESULTS_HEADER + "\n" + body)
    os.replace(temporary, results_file)


def command_line() -> str:
    """This process's command line, paths relative to the repo where they are inside it."""

    def shown(path: Path) -> str:
        try:
            return str(path.relative_to(REPO_ROOT))
        except ValueError:
            return str(path)

    return shlex.join(
        [shown(Path(sys.executable)), shown(Path(sys.argv[0]).resolve()), *sys.argv[1:]]
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# -- processes and logging --------------------------------------------------------------------


def run_tool(command: list[str], *, with_stderr: bool = False) -> str:
    """Run a command to completion and return its stdout, and its stderr if asked
    (llama.cpp's examples log their results there); otherwise stderr passes through."""
    return _run(command, capture=True, with_stderr=with_stderr)


def _run(command: list[str], *, capture: bool = False, with_stderr: bool = False) -> str:
    log("$ " + shlex.join(command))
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        raise SystemExit(f"{command[0]} not found")
    result = subprocess.run(
        command,
        check=False,
        text=True,
        errors="replace",
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if with_stderr else None,
    )
    if result.returncode != 0:
        tail = (result.stdout or "")[-2000:]
        raise SystemExit(
            f"command failed (exit {result.returncode}): {shlex.join(command)}\n{tail}"
        )
    return result.stdout or ""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description="Build llama.cpp's reference tools.")
    parser.add_argument("tools", nargs="*", default=list(TOOLS), help=f"default: {TOOLS}")
    parser.add_argument("--jobs", type=int, default=2, help="parallel build jobs (default 2)")
    args = parser.parse_args()
    for path in ensure_tools(args.tools, args.jobs).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
