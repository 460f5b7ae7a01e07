"""`kronk libs`: which llama.cpp kronk runs on, and rebuilding it for another backend.

llama-cpp-python is built from source (the Makefile chooses the backend with
`KRONK_BACKEND`), so what is installed is worth reporting: its version, the llama.cpp
libraries it ships, the compute backends compiled in, and the CPU features llama.cpp
detected. `--upgrade` rebuilds it with the same CMake arguments the Makefile uses.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from kronk.cli.common import (
    CommandError,
    HomeOption,
    JsonOption,
    console,
    err_console,
    print_json,
    print_table,
    report_errors,
)
from kronk.errors import ConfigError

DIST_NAME = "llama-cpp-python"
BACKEND_ENV = "KRONK_BACKEND"
EXTRA_CMAKE_ENV = "LLAMA_CMAKE_ARGS"
# Keep in step with the Makefile's KRONK_BACKEND -> BACKEND_CMAKE_ARGS table.
BACKEND_CMAKE_ARGS: Mapping[str, str] = {
    "cpu": "",
    "cuda": "-DGGML_CUDA=on",
    "vulkan": "-DGGML_VULKAN=on",
    "metal": "-DGGML_METAL=on",
}
# `pip index versions` asks the package index; offline it must not hold the command up.
PIP_INDEX_TIMEOUT_S = 10.0

# libggml-cpu.so.0.25.3 (Linux), libggml-cpu.0.25.3.dylib (macOS), ggml-cpu.dll (Windows).
_LIB_FILE = re.compile(
    r"^(?:lib)?(ggml|ggml-[a-z0-9_]+|llama)(?:\.(\d+(?:\.\d+)*))?\.(?:so|dylib|dll)"
    r"(?:\.(\d+(?:\.\d+)*))?$"
)


@dataclass(frozen=True)
class RebuildPlan:
    """The pip command that rebuilds llama-cpp-python for one backend."""

    backend: str
    version: str
    cmake_args: str
    argv: tuple[str, ...]

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        return {**base, "CMAKE_ARGS": self.cmake_args}

    def shell_text(self) -> str:
        return f"CMAKE_ARGS={shlex.quote(self.cmake_args)} {shlex.join(self.argv)}"


def rebuild_plan(
    backend: str, *, extra_cmake_args: str = "", version: str, python: str = sys.executable
) -> RebuildPlan:
    """The Makefile's rebuild, as a command: from the sdist, no wheel cache (pip's cache
    does not know about CMAKE_ARGS and would hand back a build for another backend)."""
    if backend not in BACKEND_CMAKE_ARGS:
        raise ConfigError(
            f"{BACKEND_ENV} must be one of {', '.join(BACKEND_CMAKE_ARGS)} (got {backend!r})"
        )
    cmake_args = " ".join(a for a in (BACKEND_CMAKE_ARGS[backend], extra_cmake_args.strip()) if a)
    argv = (
        python,
        "-m",
        "pip",
        "install",
        "--no-cache-dir",
        "--no-binary",
        DIST_NAME,
        "--force-reinstall",
        "--no-deps",
        f"{DIST_NAME}=={version}",
    )
    return RebuildPlan(backend, version, cmake_args, argv)


def required_version() -> str | None:
    """The llama-cpp-python version kronk pins (the C API its binding facade wraps)."""
    try:
        requirements = metadata.requires("kronk") or []
    except metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        match = re.fullmatch(r"llama[-_]cpp[-_]python\s*==\s*([^\s;]+)", requirement.strip())
        if match:
            return match.group(1)
    return None


def installed_version() -> str | None:
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        return None


def parse_pip_index_versions(output: str) -> str | None:
    """The latest version from `pip index versions` output (its first line names it)."""
    match = re.search(r"^llama[-_]cpp[-_]python \(([^)\s]+)\)", output, re.MULTILINE | re.I)
    return match.group(1) if match else None


def latest_published(timeout: float = PIP_INDEX_TIMEOUT_S) -> str | None:
    """The newest llama-cpp-python on the package index pip is configured for; None when
    it cannot be asked (offline, pip too old, timeout)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "index",
        "versions",
        DIST_NAME,
        "--disable-pip-version-check",
        "--timeout",
        str(max(1, int(timeout))),
        "--retries",
        "0",
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_pip_index_versions(result.stdout) if result.returncode == 0 else None


def is_newer(candidate: str, current: str) -> bool:
    """Compare release numbers ("0.3.40" > "0.3.36"); pre-release tags are ignored."""

    def release(version: str) -> tuple[int, ...]:
        head = re.match(r"\d+(?:\.\d+)*", version)
        return tuple(int(p) for p in head.group(0).split(".")) if head else ()

    return release(candidate) > release(current)


def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """llama.cpp's "CPU : SSE3 = 1 | AVX = 1 | ... | CUDA : ARCHS = 890 | ..." as
    {"CPU": {"SSE3": "1", ...}, "CUDA": {...}}."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for part in (p.strip() for p in text.split("|")):
        if not part:
            continue
        if " : " in part:
            name, _, part = part.partition(" : ")
            current = sections.setdefault(name.strip(), {})
        if current is None:
            current = sections.setdefault("", {})
        key, _, value = part.partition("=")
        if key.strip():
            current[key.strip()] = value.strip()
    return sections


def library_folder() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return folder if folder.is_dir() else None


def shipped_libraries(folder: Path | None) -> dict[str, str | None]:
    """Library name -> version, from the file names in llama-cpp-python's lib folder
    (e.g. libggml-cuda.so.0.25.3 -> "ggml-cuda": "0.25.3")."""
    found: dict[str, str | None] = {}
    if folder is None:
        return found
    for path in sorted(folder.iterdir()):
        match = _LIB_FILE.match(path.name)
        if match:
            name, version = match.group(1), match.group(2) or match.group(3)
            known = found.get(name)
            # libx.so, libx.so.0 and libx.so.0.25.3 are one library: keep the full version.
            if known is None or (version is not None and len(version) > len(known)):
                found[name] = version
    return found


def installed_backend() -> str:
    """The GPU backend the installed build has (so a rebuild keeps it), else "cpu"."""
    libraries = shipped_libraries(library_folder())
    return next((b for b in ("cuda", "vulkan", "metal") if f"ggml-{b}" in libraries), "cpu")


def collect() -> dict[str, Any]:
    """Everything `kronk libs` reports, without asking the package index."""
    from kronk.llama import supports_gpu_offload, system_info

    folder = library_folder()
    libraries = shipped_libraries(folder)
    info_text = system_info()
    sections = parse_system_info(info_text)
    backends = sorted(
        n.removeprefix("ggml-") for n in libraries if n.startswith("ggml-") and n != "ggml-base"
    )
    cpu = sections.get("CPU", {})
    return {
        "llama_cpp_python": installed_version(),
        "kronk_requires": required_version(),
        "llama_library_version": libraries.get("llama"),
        "ggml_version": libraries.get("ggml-base") or libraries.get("ggml"),
        "backends": backends,
        "gpu_offload": supports_gpu_offload(),
        "cpu_features": [k for k, v in cpu.items() if v == "1"],
        "system_info": sections,
        "system_info_text": info_text,
        "library_folder": str(folder) if folder else None,
        "rebuild_backend": os.environ.get(BACKEND_ENV) or installed_backend(),
    }


# -- the command ------------------------------------------------------------------------------


def libs(
    ctx: typer.Context,
    json_output: JsonOption = False,
    upgrade: Annotated[
        bool,
        typer.Option(
            "--upgrade",
            help=(
                f"Rebuild llama-cpp-python from source for ${BACKEND_ENV} (cpu, cuda, vulkan, "
                f"metal; default: the installed build's; extra CMake flags from "
                f"${EXTRA_CMAKE_ENV}). Takes several minutes."
            ),
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="With --upgrade: do not ask for confirmation.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="With --upgrade: print the command, run nothing.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check", help="Ask the package index whether a newer version exists."
        ),
    ] = True,
    home: HomeOption = None,  # taken by every command; libs keeps nothing in the home
) -> None:
    """Show llama-cpp-python and llama.cpp: version, backends, CPU features, updates."""
    if ctx.invoked_subcommand is not None:
        return  # `kronk libs check ...`
    if upgrade:
        _upgrade(yes=yes, dry_run=dry_run)
        return
    info = collect()
    latest = latest_published() if check else None
    installed = info["llama_cpp_python"]
    info["latest_published"] = latest
    info["newer_available"] = (
        None if latest is None or installed is None else is_newer(latest, installed)
    )
    if json_output:
        print_json(info)
        return
    if latest is None:
        published = "unknown (the package index did not answer)" if check else "not checked"
    elif info["newer_available"]:
        published = f"{latest} available"
        if info["kronk_requires"]:
            published += (
                f" (kronk is tested with {info['kronk_requires']}; keep it unless kronk moves)"
            )
    else:
        published = f"{latest} (up to date)"
    rows = [
        (
            "llama-cpp-python",
            f"{installed or 'not installed'}"
            + (f" (kronk requires =={info['kronk_requires']})" if info["kronk_requires"] else ""),
        ),
        ("latest published", published),
        (
            "llama.cpp",
            f"libllama {info['llama_library_version'] or '?'}, ggml {info['ggml_version'] or '?'}",
        ),
        ("backends", ", ".join(info["backends"]) or "?"),
        ("GPU offload", "yes" if info["gpu_offload"] else "no (CPU only)"),
        ("CPU features", " ".join(info["cpu_features"]) or "-"),
        ("--upgrade builds", f"{info['rebuild_backend']} (set ${BACKEND_ENV} to change)"),
        ("library folder", info["library_folder"] or "?"),
    ]
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, escape(value))
    print_table(table)


def _upgrade(*, yes: bool, dry_run: bool) -> None:
    version = required_version() or installed_version()
    if version is None:
        raise CommandError("cannot tell which llama-cpp-python version to build", hint="make venv")
    plan = rebuild_plan(
        os.environ.get(BACKEND_ENV) or installed_backend(),
        extra_cmake_args=os.environ.get(EXTRA_CMAKE_ENV, ""),
        version=version,
    )
    err_console.print(
        f"[yellow]This rebuilds llama-cpp-python {plan.version} from source for the "
        f"[bold]{plan.backend}[/bold] backend. It compiles llama.cpp: expect several minutes "
        "(more for cuda), a C/C++ compiler and CMake are required, and kronk cannot run "
        "models until it finishes.[/yellow]",
        soft_wrap=True,
    )
    console.print(escape(plan.shell_text()), soft_wrap=True)
    if dry_run:
        return
    if not yes and not typer.confirm("Rebuild now?", default=False):
        raise CommandError("nothing rebuilt", hint="kronk libs --upgrade --yes")
    code = subprocess.run(plan.argv, env=plan.environment(os.environ), check=False).returncode
    if code != 0:
        # pip replaces the installed build only after the new one compiled.
        raise CommandError(
            f"the rebuild failed (pip exited with status {code}; its output is above)",
            hint="kronk libs (shows the build still installed)",
        )
    console.print(f"[green]rebuilt[/green] llama-cpp-python {plan.version} for {plan.backend}")


def check(
    version: Annotated[
        str | None,
        typer.Option(
            "--version", help="The llama-cpp-python release to compare (default: the latest)."
        ),
    ] = None,
    old: Annotated[
        str | None,
        typer.Option("--old", help="Compare from this release instead of the installed one."),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Keep downloaded sdists here (default: nowhere)."),
    ] = None,
    json_output: JsonOption = False,
    home: HomeOption = None,  # taken by every command; the check keeps nothing in the home
) -> None:
    """Compare a llama-cpp-python release's C API with what kronk's binding uses.

    Reads llama.h and the ctypes binding from the release's sdist (pip download) and
    reports removed, renamed or changed functions, struct fields and constants kronk
    uses, new deprecations, and new samplers and functions worth adopting. Exits with
    status 1 when something kronk uses would break.
    """
    from kronk.tools import libs_check

    target = version or latest_published()
    if target is None:
        raise CommandError(
            "the package index did not say which llama-cpp-python is the latest",
            hint="kronk libs check --version X",
        )
    base = old or installed_version() or "installed"
    with err_console.status(f"reading llama.h of {DIST_NAME} {base} and {target}"):
        before = libs_check.release_api(old, cache) if old else libs_check.installed_api()
        after = libs_check.release_api(target, cache)
    report = libs_check.compare(
        before, after, old_name=base, new_name=target, used=libs_check.facade_usage()
    )
    if json_output:
        print_json(report.to_json())
    else:
        for line in libs_check.render(report):
            console.print(escape(line), soft_wrap=True, highlight=False)
    if report.breaking:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help=libs.__doc__, invoke_without_command=True)
    group.callback(invoke_without_command=True)(report_errors(libs))
    group.command("check")(report_errors(check))
    app.add_typer(group, name="libs")
