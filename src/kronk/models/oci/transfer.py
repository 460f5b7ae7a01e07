"""`push_model` and `pull_model`: a local model to a registry, and a registry's model in.

Pulls go through the same `Downloader` as every other pull (each blob's sha256 checked
while it streams, `Range` resume of `<file>.partial`, one Cancellation for Ctrl-C), then
the GGUF check, then the index: nothing unverified is ever listed. Pushes hash the local
file first and refuse one that no longer matches the index; blobs the registry already
has are skipped (HEAD); the rest go up in chunks that resume; the manifest goes last, so
a tag never names blobs that are not there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kronk.errors import InvalidRequestError, ModelIntegrityError
from kronk.models.download import (
    Cancellation,
    Downloader,
    ProgressCallback,
    ProgressMeter,
    RemoteFile,
)
from kronk.models.files import sha256_file
from kronk.models.index import IndexedFile, IndexEntry, utc_now
from kronk.models.names import check_model_id, is_safe_name, sanitize_file_name, sanitize_model_id
from kronk.models.oci.auth import lookup_credentials
from kronk.models.oci.client import DEFAULT_CHUNK_SIZE, RegistryClient, upload_state_file
from kronk.models.oci.layout import (
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    OLLAMA_MODEL,
    TITLE_ANNOTATION,
    Blob,
    KronkConfig,
    Manifest,
    ModelFacts,
    build_push,
    parse_kronk_config,
    parse_manifest,
    require_model_layers,
)
from kronk.models.oci.reference import DEFAULT_TAG, Reference, parse_reference

if TYPE_CHECKING:
    from kronk.models.store import LocalModel, ModelStore

INSECURE_ENV = "KRONK_INSECURE_REGISTRIES"
UPLOADS_DIR = "oci-uploads"


@dataclass(frozen=True)
class PushResult:
    reference: str  # registry/repository:tag
    digest: str  # the manifest's
    uploaded_bytes: int  # sent in this call (a resumed upload sends only the rest)
    skipped: tuple[str, ...]  # digests the registry already had


def insecure_registries(env: Mapping[str, str] | None = None) -> set[str]:
    """Registries reached over plain HTTP without `--insecure` (`KRONK_INSECURE_REGISTRIES`)."""
    text = (os.environ if env is None else env).get(INSECURE_ENV, "")
    return {item.strip() for item in text.split(",") if item.strip()}


def push_model(
    store: ModelStore,
    model_id: str,
    target: str,
    *,
    insecure: bool = False,
    facts: ModelFacts | None = None,
    capabilities: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cancel: Cancellation | None = None,
) -> PushResult:
    """Push the local model `model_id` to `target` (`[oci://]REGISTRY/REPO[:TAG]`).

    `facts` fills Ollama's config fields and `capabilities` kronk's (default: the catalog's).
    """
    ref = parse_reference(target, param="target")
    if ref.digest is not None:
        raise InvalidRequestError(f"push to a tag, not a digest: {target!r}", "target")
    if chunk_size <= 0:
        raise InvalidRequestError("the chunk size must be positive", "chunk_size")
    local = store.get(model_id)
    if len(local.files) != 1:
        raise InvalidRequestError(
            f"{model_id} has {len(local.files)} files; push handles single-file models", "model"
        )
    indexed = local.files[0]
    model_blob = Blob(OLLAMA_MODEL, f"sha256:{indexed.sha256}", indexed.size)
    _check_local_file(local.path, indexed, progress)
    manifest, blobs = build_push(
        model_blob, _kronk_config(store, local, capabilities), facts or _catalog_facts(local)
    )
    uploads = store.home.run_dir / UPLOADS_DIR
    uploaded = 0
    skipped: list[str] = []
    with RegistryClient(
        ref,
        credentials=lookup_credentials(ref.registry, store.home),
        insecure=insecure or ref.registry in insecure_registries(),
        push=True,
        **_client_options(store),
    ) as client:
        for blob, data in blobs:
            name = local.path.name if data is None else blob.media_type.rsplit(".", 1)[-1]
            meter = ProgressMeter(name, blob.size, progress, phase="upload")
            if client.has_blob(blob):
                skipped.append(blob.digest)
                meter.update(blob.size, force=True)
                continue
            state = upload_state_file(uploads, client.base, ref.repository, blob.digest)
            uploaded += client.upload(
                blob,
                local.path if data is None else data,
                state_file=state if data is None else None,  # small blobs simply start over
                meter=meter,
                chunk_size=chunk_size,
                cancel=cancel,
            )
        digest = client.put_manifest(ref.tag or DEFAULT_TAG, manifest, DOCKER_MANIFEST)
    return PushResult(str(ref), digest, uploaded, tuple(skipped))


def pull_model(
    store: ModelStore,
    reference: str,
    *,
    insecure: bool = False,
    sha256: str | None = None,
    model_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> LocalModel:
    """Pull `[oci://]REGISTRY/REPO[:TAG|@DIGEST]` (kronk's, Ollama's or Docker Model Runner's
    layout) into the store. `sha256` pins the GGUF file; `model_id` names it (default:
    the repository's last component, plus the tag unless it is `latest`)."""
    ref = parse_reference(reference)
    with RegistryClient(
        ref,
        credentials=lookup_credentials(ref.registry, store.home),
        insecure=insecure or ref.registry in insecure_registries(),
        **_client_options(store),
    ) as client:
        manifest, manifest_digest = _fetch_manifest(client, ref)
        where = f"{ref.registry}/{ref.repository}@{manifest_digest}"
        layers = require_model_layers(manifest, where)
        if sha256 is not None and layers[0].hex != sha256:
            raise ModelIntegrityError(
                f"{where}: its model layer is sha256 {layers[0].hex}, not {sha256}; "
                "nothing was downloaded"
            )
        kronk = parse_kronk_config(client.get_small_blob(manifest.config)) or {}
        new_id = check_model_id(model_id) if model_id is not None else _default_id(ref)
        files = _file_names(layers, kronk, ref)
        existing = store.index.get(new_id)
        if existing is not None and store.index.intact(existing):
            if existing.primary.sha256 == layers[0].hex:
                return store.get(new_id)
            raise InvalidRequestError(
                f"a different model named {new_id!r} is already here (from {existing.source}); "
                f"remove it with `kronk model remove {new_id}` or pull with --id",
                "model",
            )
        folder = store.home.models_dir / new_id
        remote = [
            RemoteFile(client.blob_url(b), folder / name, b.size, b.hex)
            for b, name in zip(layers, files, strict=True)
        ]
        options = store.download_options
        with Downloader(
            client=client.http,
            retries=options["retries"],
            retry_backoff=options["retry_backoff"],
            max_parallel=options["max_parallel"],
        ) as downloader:
            results = downloader.download_all(remote, progress)
    from kronk.models.store import require_gguf

    require_gguf([r.path for r in results])
    primary = results[0].sha256
    known = store.catalog.find_by_sha256(primary)
    catalog_id = known[0].id if known and len(known[0].files) == 1 else None
    store.index.add(
        IndexEntry(
            id=new_id,
            files=[IndexedFile(name=r.path.name, size=r.size, sha256=r.sha256) for r in results],
            catalog_id=catalog_id,
            source=ref.pinned(manifest_digest),
            added=utc_now(),
        )
    )
    return store.get(new_id)


# -- helpers ------------------------------------------------------------------------------


def _client_options(store: ModelStore) -> dict[str, Any]:
    options = store.download_options
    return {k: options[k] for k in ("timeout", "retries", "retry_backoff")}


def _fetch_manifest(client: RegistryClient, ref: Reference) -> tuple[Manifest, str]:
    where = f"{ref.registry}/{ref.repository}:{ref.reference}"
    data, media_type, digest = client.get_manifest(ref.reference)
    parsed = parse_manifest(data, media_type, where)
    if isinstance(parsed, list):
        # An index: models have no platform, so its first image manifest is the model.
        chosen = next((m for m in parsed if m.media_type in MANIFEST_TYPES), None)
        if chosen is None:
            raise InvalidRequestError(f"{where}: the index lists no image manifest", "model")
        data, media_type, digest = client.get_manifest(chosen.digest)
        parsed = parse_manifest(data, media_type, where)
        if isinstance(parsed, list):
            raise InvalidRequestError(f"{where}: an index inside an index", "model")
    return parsed, digest


def _default_id(ref: Reference) -> str:
    tag = ref.tag if ref.tag not in (None, DEFAULT_TAG) else None
    return sanitize_model_id(f"{ref.name}-{tag}" if tag else ref.name)


def _file_names(layers: Sequence[Blob], kronk: Mapping[str, Any], ref: Reference) -> list[str]:
    """kronk's own file name, else the layer's title annotation, else from the repository.
    Shards without names get llama.cpp's split naming, so the loader finds them all."""
    names: list[str] = []
    for i, layer in enumerate(layers):
        title = layer.annotations.get(TITLE_ANNOTATION, "")
        if i == 0 and isinstance(kronk.get("file"), str) and is_safe_name(kronk["file"]):
            name = kronk["file"]
        elif title:
            name = sanitize_file_name(title)
        elif len(layers) == 1:
            name = f"{ref.name}.gguf"
        else:
            name = f"{ref.name}-{i + 1:05d}-of-{len(layers):05d}.gguf"
        if not name.lower().endswith(".gguf"):
            name += ".gguf"
        if name in names:
            raise InvalidRequestError(f"two model layers are both named {name!r}", "model")
        names.append(name)
    return names


def _check_local_file(path: Path, indexed: IndexedFile, progress: ProgressCallback | None) -> None:
    meter = ProgressMeter(path.name, indexed.size, progress, phase="verify")
    digest = sha256_file(path, progress=lambda done: meter.update(done))
    if digest != indexed.sha256:
        raise ModelIntegrityError(
            f"{path} changed since it was indexed (sha256 {digest}, the index says "
            f"{indexed.sha256}); nothing was pushed; check it with `kronk model verify`"
        )


def _kronk_config(
    store: ModelStore, local: LocalModel, capabilities: Sequence[str] | None
) -> KronkConfig:
    from kronk import __version__

    entry = local.catalog
    if capabilities is None and entry is not None:
        capabilities = sorted(entry.capabilities)
    template: dict[str, str | None] = {"source": "gguf"}
    if entry is not None:
        template = {"source": entry.chat_template.source}
        if entry.chat_template.file is not None:
            template["file"] = entry.chat_template.file
    return KronkConfig(
        model_id=local.id,
        file=local.path.name,
        sha256=local.files[0].sha256,
        size=local.files[0].size,
        capabilities=capabilities,
        catalog_id=local.catalog_id,
        sampling_defaults=dict(entry.defaults.sampling) if entry is not None else {},
        n_ctx=entry.defaults.n_ctx if entry is not None else None,
        chat_template=template,
        kronk_version=__version__,
    )


def _catalog_facts(local: LocalModel) -> ModelFacts:
    entry = local.catalog
    if entry is None:
        return ModelFacts()
    return ModelFacts(entry.family, entry.parameters or "", entry.quantization or "")
