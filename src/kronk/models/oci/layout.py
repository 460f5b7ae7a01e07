"""What a model looks like in a registry: the manifests kronk writes and those it reads.

kronk pushes Ollama's layout, so Ollama can pull what kronk pushes:

- manifest `application/vnd.docker.distribution.manifest.v2+json` (schema 2);
- config `application/vnd.docker.container.image.v1+json`: Ollama's fields
  (`model_format`, `model_family`, `model_type`, `file_type`, `rootfs`, ...) and one more
  object, `kronk`, with what kronk knows of the model (Ollama ignores unknown fields);
- layers: the GGUF file as `application/vnd.ollama.image.model`, and the sampling
  defaults Ollama understands as `application/vnd.ollama.image.params` (JSON).

kronk pulls that layout (from kronk or Ollama), and Docker Model Runner's artifacts:
an OCI image manifest whose config is `application/vnd.docker.ai.model.config.v0.1+json`
and whose GGUF layers are `application/vnd.docker.ai.gguf.v3`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kronk.errors import InvalidRequestError
from kronk.models.oci.errors import RegistryError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_PARAMS = "application/vnd.ollama.image.params"
OLLAMA_TEMPLATE = "application/vnd.ollama.image.template"
OLLAMA_SYSTEM = "application/vnd.ollama.image.system"
OLLAMA_LICENSE = "application/vnd.ollama.image.license"
OLLAMA_PROJECTOR = "application/vnd.ollama.image.projector"

DMR_CONFIG = "application/vnd.docker.ai.model.config.v0.1+json"
DMR_GGUF = "application/vnd.docker.ai.gguf.v3"

TITLE_ANNOTATION = "org.opencontainers.image.title"
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))
GGUF_LAYER_TYPES = (OLLAMA_MODEL, DMR_GGUF)
KRONK_CONFIG_SCHEMA = 1
# Manifests and configs are small; a bigger one is not a model manifest (or is hostile).
MAX_METADATA_BYTES = 4 * 1024 * 1024

# kronk's sampling names -> Ollama's (the params layer); what Ollama does not know stays in
# the config's `kronk` object only.
_OLLAMA_PARAMS = {
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "max_tokens": "num_predict",
}


@dataclass(frozen=True)
class Blob:
    """A blob's descriptor as the manifest lists it."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")

    def descriptor(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Blob
    layers: tuple[Blob, ...]

    def model_layers(self) -> list[Blob]:
        """The GGUF layers, in manifest order (the first is the file llama.cpp loads)."""
        return [layer for layer in self.layers if layer.media_type in GGUF_LAYER_TYPES]

    @property
    def flavour(self) -> str:
        """ "docker-model-runner" or "ollama" (kronk pushes the Ollama layout)."""
        return "docker-model-runner" if self.config.media_type == DMR_CONFIG else "ollama"


def blob_of(data: bytes, media_type: str) -> Blob:
    return Blob(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """Deterministic bytes: the same model pushed twice gives the same digests."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ModelFacts:
    """What the GGUF file says (shown by `ollama show`); empty strings when unknown."""

    architecture: str = ""
    parameters: str = ""  # e.g. "494M"
    quantization: str = ""  # e.g. "Q4_K_M"


@dataclass(frozen=True)
class KronkConfig:
    """The `kronk` object of the config blob (see docs/distribution.md)."""

    model_id: str
    file: str
    sha256: str
    size: int
    capabilities: Sequence[str] | None = None  # None: known only once loaded
    catalog_id: str | None = None
    sampling_defaults: Mapping[str, float | int] = field(default_factory=dict)
    n_ctx: int | None = None
    chat_template: Mapping[str, str | None] = field(default_factory=lambda: {"source": "gguf"})
    kronk_version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": KRONK_CONFIG_SCHEMA,
            "model_id": self.model_id,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "capabilities": sorted(self.capabilities) if self.capabilities is not None else None,
            "catalog_id": self.catalog_id,
            "sampling_defaults": dict(self.sampling_defaults),
            "n_ctx": self.n_ctx,
            "chat_template": dict(self.chat_template),
            "kronk_version": self.kronk_version,
        }


def ollama_params(config: KronkConfig) -> dict[str, Any]:
    """The params layer: the defaults Ollama knows, under Ollama's names."""
    params: dict[str, Any] = {
        _OLLAMA_PARAMS[k]: v for k, v in config.sampling_defaults.items() if k in _OLLAMA_PARAMS
    }
    if config.n_ctx is not None:
        params["num_ctx"] = config.n_ctx
    return params


def build_push(
    model: Blob, config: KronkConfig, facts: ModelFacts
) -> tuple[bytes, list[tuple[Blob, bytes | None]]]:
    """The manifest bytes, and every blob it names with its bytes (None: the model file)."""
    blobs: list[tuple[Blob, bytes | None]] = [(model, None)]
    params = ollama_params(config)
    if params:
        data = canonical_json(params)
        blobs.append((blob_of(data, OLLAMA_PARAMS), data))
    layers = [b for b, _ in blobs]
    config_doc = {
        # Ollama's ConfigV2.
        "model_format": "gguf",
        "model_family": facts.architecture,
        "model_families": [facts.architecture] if facts.architecture else [],
        "model_type": facts.parameters,
        "file_type": facts.quantization,
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]},
        "kronk": config.to_json(),
    }
    config_data = canonical_json(config_doc)
    config_blob = blob_of(config_data, DOCKER_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [b.descriptor() for b in layers],
    }
    return canonical_json(manifest), [*blobs, (config_blob, config_data)]


def parse_manifest(data: bytes, media_type: str, where: str) -> Manifest | list[Blob]:
    """A manifest, or an index's list of manifests; `RegistryError` when neither."""
    try:
        document = json.loads(data)
    except ValueError:
        raise RegistryError(f"{where}: the manifest is not JSON", where) from None
    if not isinstance(document, dict):
        raise RegistryError(f"{where}: the manifest is not a JSON object", where)
    kind = document.get("mediaType") or media_type.split(";")[0].strip()
    if kind in INDEX_TYPES or "manifests" in document:
        return [_blob(m, where) for m in _list(document, "manifests", where)]
    if kind not in MANIFEST_TYPES:
        raise RegistryError(f"{where}: unsupported manifest type {kind!r}", where)
    config = _blob(document.get("config"), where)
    layers = tuple(_blob(layer, where) for layer in _list(document, "layers", where))
    return Manifest(kind, config, layers)


def parse_kronk_config(data: bytes) -> dict[str, Any] | None:
    """The `kronk` object of a config blob, if it has one (Ollama's and DMR's do not)."""
    try:
        document = json.loads(data)
    except ValueError:
        return None
    kronk = document.get("kronk") if isinstance(document, dict) else None
    return kronk if isinstance(kronk, dict) else None


def _list(document: dict[str, Any], key: str, where: str) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        raise RegistryError(f"{where}: the manifest has no {key!r} list", where)
    return value


def _blob(value: Any, where: str) -> Blob:
    if not isinstance(value, dict):
        raise RegistryError(f"{where}: a manifest descriptor is not an object", where)
    digest, size, media_type = value.get("digest"), value.get("size"), value.get("mediaType")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71:
        raise RegistryError(f"{where}: unsupported digest {digest!r} (only sha256)", where)
    if not all(c in "0123456789abcdef" for c in digest[7:]):
        raise RegistryError(f"{where}: malformed digest {digest!r}", where)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{where}: descriptor {digest} has no valid size", where)
    annotations = value.get("annotations")
    return Blob(
        media_type if isinstance(media_type, str) else "",
        digest,
        size,
        {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {},
    )


def require_model_layers(manifest: Manifest, where: str) -> list[Blob]:
    layers = manifest.model_layers()
    if not layers:
        kinds = ", ".join(sorted({layer.media_type for layer in manifest.layers})) or "none"
        raise InvalidRequestError(
            f"{where} holds no GGUF model layer ({' or '.join(GGUF_LAYER_TYPES)}); its layers "
            f"are: {kinds}",
            "model",
        )
    return layers
