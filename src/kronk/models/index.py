"""The index of models that are verifiably on disk (`<models>/.index.yaml`).

Layout: each model lives in its own folder, `<models>/<id>/<file>...`; the first file is
the one to load (others are shards or projectors). The index records each file's size
and sha256 as verified when it arrived; a model is listed only once every file is in
place and checked, so an interrupted download never shows up as present.

The index is a cache of what the disk says, never the other way round: `rebuild()`
derives it from the folders (hashing every file against the index's earlier record or
the catalog; `.partial` downloads and hidden temp files are never models; temp files
whose writer was killed are deleted), and `verify()` re-hashes and drops what no longer
matches. It is written atomically under a lock, so concurrent kronk processes cannot lose
each other's updates or see a half-written file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kronk.errors import InvalidModelFileError, KronkError, ModelNotFoundError
from kronk.home import INDEX_FILE_NAME
from kronk.models.catalog import Catalog
from kronk.models.files import atomic_write_bytes, locked, remove_abandoned_temps, sha256_file
from kronk.models.names import PARTIAL_SUFFIX, check_file_name, check_model_id, is_safe_name

INDEX_SCHEMA = 1
LOCK_FILE_NAME = ".index.lock"

HashProgress = Callable[[str, int, int], None]  # (file name, bytes hashed, file size)


class IndexedFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not is_safe_name(value) or value.endswith(PARTIAL_SUFFIX):
            raise ValueError(f"unsafe file name {value!r}")
        return value


class IndexEntry(BaseModel):
    """One model present on disk."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    files: list[IndexedFile] = Field(min_length=1)
    catalog_id: str | None = None
    source: str | None = None  # where it came from (URL, package, local path)
    added: dt.datetime

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        if not is_safe_name(value):
            raise ValueError(f"unsafe model id {value!r}")
        return value

    @property
    def primary(self) -> IndexedFile:
        return self.files[0]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


class _IndexDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: int = Field(default=INDEX_SCHEMA, alias="schema")
    models: list[IndexEntry] = Field(default_factory=list)


@dataclass(frozen=True)
class FileCheck:
    name: str
    ok: bool
    problem: str | None = None


@dataclass(frozen=True)
class VerifyResult:
    id: str
    ok: bool
    files: tuple[FileCheck, ...]

    @property
    def problems(self) -> list[str]:
        return [f"{c.name}: {c.problem}" for c in self.files if c.problem]


@dataclass(frozen=True)
class RebuildReport:
    models: tuple[IndexEntry, ...]
    dropped: tuple[tuple[str, str], ...]  # (folder, why it is not a model)
    ignored: tuple[Path, ...] = field(default_factory=tuple)  # partial downloads, temp files
    removed: tuple[Path, ...] = field(default_factory=tuple)  # temp files of killed writers


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class ModelIndex:
    """Read and update `.index.yaml` for one models folder."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.path = self.models_dir / INDEX_FILE_NAME
        self._lock_path = self.models_dir / LOCK_FILE_NAME

    # -- reading -------------------------------------------------------------------

    def entries(self) -> list[IndexEntry]:
        """Everything the index records, sorted by id (without touching the files)."""
        return sorted(self._read(), key=lambda e: e.id)

    def get(self, model_id: str) -> IndexEntry | None:
        return next((e for e in self._read() if e.id == model_id), None)

    def model_dir(self, model_id: str) -> Path:
        return self.models_dir / check_model_id(model_id)

    def file_path(self, model_id: str, name: str) -> Path:
        return self.model_dir(model_id) / check_file_name(name)

    def primary_path(self, entry: IndexEntry) -> Path:
        return self.file_path(entry.id, entry.primary.name)

    def intact(self, entry: IndexEntry) -> bool:
        """Cheap check (no hashing): every file exists with its recorded size."""
        for spec in entry.files:
            try:
                if self.file_path(entry.id, spec.name).stat().st_size != spec.size:
                    return False
            except OSError:
                return False
        return True

    # -- updating ------------------------------------------------------------------

    def add(self, entry: IndexEntry) -> None:
        """Record `entry` (replacing one with the same id). Call only after its files are
        verified and in place."""
        with locked(self._lock_path):
            entries = [e for e in self._read() if e.id != entry.id]
            entries.append(entry)
            self._write(entries)

    def remove(self, model_id: str) -> bool:
        """Drop `model_id` from the index; returns whether it was there."""
        with locked(self._lock_path):
            entries = self._read()
            kept = [e for e in entries if e.id != model_id]
            if len(kept) == len(entries):
                return False
            self._write(kept)
            return True

    def rebuild(
        self, catalog: Catalog | None = None, *, progress: HashProgress | None = None
    ) -> RebuildReport:
        """Derive the index from the model folders; see the module docstring."""
        with locked(self._lock_path):
            try:
                previous = {e.id: e for e in self._read()}
            except KronkError:
                previous = {}  # an unreadable index is exactly what rebuild replaces
            models: list[IndexEntry] = []
            dropped: list[tuple[str, str]] = []
            ignored: list[Path] = []
            removed = remove_abandoned_temps(self.models_dir)
            folders = sorted(self.models_dir.iterdir()) if self.models_dir.is_dir() else []
            for folder in folders:
                if folder.name.startswith(".") or not folder.is_dir():
                    continue
                if not is_safe_name(folder.name):
                    dropped.append((folder.name, "not a valid model id"))
                    continue
                removed.extend(remove_abandoned_temps(folder))
                ignored.extend(
                    p
                    for p in sorted(folder.iterdir())
                    if p.name.startswith(".") or p.name.endswith(PARTIAL_SUFFIX)
                )
                entry, problem = self._scan_folder(
                    folder, previous.get(folder.name), catalog, progress
                )
                if entry is not None:
                    models.append(entry)
                else:
                    dropped.append((folder.name, problem or "no model files"))
            self._write(models)
        return RebuildReport(tuple(models), tuple(dropped), tuple(ignored), tuple(removed))

    def verify(
        self,
        model_id: str | None = None,
        *,
        prune: bool = True,
        progress: HashProgress | None = None,
    ) -> list[VerifyResult]:
        """Re-hash the files of one model (or all); with `prune`, drop failures from the index.

        `ModelNotFoundError` if `model_id` is not in the index.
        """
        entries = self.entries()
        if model_id is not None:
            entries = [e for e in entries if e.id == model_id]
            if not entries:
                raise ModelNotFoundError(
                    f"model {model_id!r} is not in the local index; `kronk model list` shows "
                    "what is, `kronk model index` rescans the models folder",
                    model_id,
                )
        results = []
        for entry in entries:
            checks = tuple(
                self._check_file(
                    self.file_path(entry.id, spec.name), spec.size, spec.sha256, progress
                )
                for spec in entry.files
            )
            results.append(VerifyResult(entry.id, all(c.ok for c in checks), checks))
        failed = {r.id for r in results if not r.ok}
        if prune and failed:
            with locked(self._lock_path):
                self._write([e for e in self._read() if e.id not in failed])
        return results

    # -- internals -----------------------------------------------------------------

    def _scan_folder(
        self,
        folder: Path,
        previous: IndexEntry | None,
        catalog: Catalog | None,
        progress: HashProgress | None,
    ) -> tuple[IndexEntry | None, str | None]:
        """An index entry for `folder` if its files verify, else (None, reason)."""
        catalog_entry = None
        if catalog is not None:
            catalog_entry = catalog.find(
                previous.catalog_id if previous and previous.catalog_id else folder.name
            )
        expected: list[tuple[str, int | None, str | None]]
        if previous is not None:
            expected = [(f.name, f.size, f.sha256) for f in previous.files]
        elif catalog_entry is not None:
            expected = [(f.name, f.size, f.sha256) for f in catalog_entry.files]
        else:
            names = _model_files(folder)
            if not names:
                return None, "no .gguf file"
            expected = [(n, None, None) for n in names]

        files: list[IndexedFile] = []
        for name, size, sha in expected:
            path = folder / name
            check = self._check_file(path, size, sha, progress)
            if not check.ok:
                return None, f"{name}: {check.problem}"
            if sha is None:
                # Nothing to compare with: the file must at least be a complete GGUF file.
                problem = _gguf_problem(path)
                if problem:
                    return None, f"{name}: {problem}"
            files.append(
                IndexedFile(
                    name=name, size=path.stat().st_size, sha256=sha or self._hash(path, progress)
                )
            )
        catalog_id = catalog_entry.id if catalog_entry is not None else None
        if catalog_id is None and catalog is not None:
            match = catalog.find_by_sha256(files[0].sha256)
            catalog_id = match[0].id if match else None
        return (
            IndexEntry(
                id=folder.name,
                files=files,
                catalog_id=catalog_id,
                source=previous.source if previous else "found on disk",
                added=previous.added if previous else utc_now(),
            ),
            None,
        )

    def _check_file(
        self, path: Path, size: int | None, sha256: str | None, progress: HashProgress | None
    ) -> FileCheck:
        try:
            actual = path.stat().st_size
        except OSError:
            return FileCheck(path.name, False, "missing")
        if size is not None and actual != size:
            return FileCheck(path.name, False, f"size {actual} bytes, expected {size}")
        if sha256 is not None:
            got = self._hash(path, progress)
            if got != sha256:
                return FileCheck(path.name, False, f"sha256 {got}, expected {sha256}")
        return FileCheck(path.name, True)

    @staticmethod
    def _hash(path: Path, progress: HashProgress | None) -> str:
        if progress is None:
            return sha256_file(path)
        size = path.stat().st_size
        return sha256_file(path, progress=lambda done: progress(path.name, done, size))

    def _read(self) -> list[IndexEntry]:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KronkError(f"cannot read the model index {self.path}: {exc}") from None
        try:
            raw = yaml.safe_load(text) or {}
            return _IndexDocument.model_validate(raw).models
        except (yaml.YAMLError, ValidationError) as exc:
            raise KronkError(
                f"the model index {self.path} is damaged ({type(exc).__name__}); "
                "rebuild it from the files on disk with `kronk model index`"
            ) from None

    def _write(self, entries: list[IndexEntry]) -> None:
        document = {
            "schema": INDEX_SCHEMA,
            "models": [e.model_dump(mode="json") for e in sorted(entries, key=lambda e: e.id)],
        }
        header = b"# Written by kronk; rebuild with `kronk model index`. Do not edit by hand.\n"
        body = yaml.safe_dump(document, sort_keys=False, allow_unicode=True).encode()
        atomic_write_bytes(self.path, header + body)


def _model_files(folder: Path) -> list[str]:
    """The GGUF files of a folder no index or catalog describes, the one to load first.

    Split shards sort `-00001-of-0000N` first; vision projectors (`mmproj*`) go last.
    """
    names = [
        p.name
        for p in folder.iterdir()
        if p.is_file() and is_safe_name(p.name) and p.name.lower().endswith(".gguf")
    ]
    return sorted(names, key=lambda n: (n.lower().startswith("mmproj"), n))


def _gguf_problem(path: Path) -> str | None:
    if not path.name.lower().endswith(".gguf"):
        return None
    from kronk.llama import validate_gguf  # lazy: loads the native library

    try:
        validate_gguf(path)
    except InvalidModelFileError as exc:
        return str(exc)
    return None
