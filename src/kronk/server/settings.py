"""Server settings, from four places; each later one wins:

    defaults  <  the `server:` section of <home>/config.yaml  <  KRONK_* environment  <  flags

The home folder itself comes from `--home`, else `KRONK_HOME`, else `~/.kronk`.
A bad value is a ConfigError that names where it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator

from kronk.errors import ConfigError
from kronk.home import KronkHome
from kronk.models.catalog import SAMPLING_KEYS, yaml_problem

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
# llama.cpp's KV cache element types (kronk.llama.context.KV_CACHE_TYPES; a test keeps the
# two in step, and this module stays free of the llama.cpp import).
CacheType = Literal["f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "iq4_nl"]
FlashAttention = Literal["auto", "on", "off"]
# Who needs a token (docs/security.md): nobody, admins for management, or everyone.
AuthMode = Literal["open", "manage", "all"]
# Settings a model's own section and the server-wide ones share, with one set of bounds.
Parallel = Annotated[int | None, Field(ge=1, le=256)]  # slots per model
CtxSize = Annotated[int | None, Field(ge=8)]  # context window per slot
Threads = Annotated[int | None, Field(ge=1)]
MaxQueue = Annotated[int | None, Field(ge=0)]  # requests waiting for a slot, per model
# Speculative decoding (kronk.engine.speculative; docs/speculative.md).
SpecMode = Literal["auto", "ngram", "ngram-simple", "draft", "off"]
DraftMax = Annotated[int | None, Field(ge=1, le=64)]  # draft tokens a slot verifies a step
# Sizes in bytes, or with a unit: "512MiB", "2GB", "1.5GiB".
Bytes = Annotated[ByteSize | None, Field(ge=0)]

# Setting name -> its environment variable.
ENVIRONMENT: dict[str, str] = {
    "host": "KRONK_HOST",
    "port": "KRONK_PORT",
    "model": "KRONK_MODEL",
    "parallel": "KRONK_PARALLEL",
    "ctx_size": "KRONK_CTX_SIZE",
    "models_max": "KRONK_MODELS_MAX",
    "ttl": "KRONK_TTL",
    "threads": "KRONK_THREADS",
    "max_queue": "KRONK_MAX_QUEUE",
    "prompt_cache_size": "KRONK_PROMPT_CACHE_SIZE",
    "memory_budget": "KRONK_MEMORY_BUDGET",
    "queue_size": "KRONK_QUEUE_SIZE",
    "queue_timeout": "KRONK_QUEUE_TIMEOUT",
    "cache_type_k": "KRONK_CACHE_TYPE_K",
    "cache_type_v": "KRONK_CACHE_TYPE_V",
    "flash_attn": "KRONK_FLASH_ATTN",
    "log_level": "KRONK_LOG_LEVEL",
    "graceful_timeout": "KRONK_GRACEFUL_TIMEOUT",
    "keepalive": "KRONK_KEEPALIVE",
    "spec": "KRONK_SPEC",
    "draft_model": "KRONK_DRAFT_MODEL",
    "draft_max": "KRONK_DRAFT_MAX",
    "auth": "KRONK_AUTH",
    "allowed_origins": "KRONK_ALLOWED_ORIGINS",
    "insecure": "KRONK_INSECURE",
    "tools": "KRONK_TOOLS",
    "mcp_config": "KRONK_MCP_CONFIG",
}


def home_folder(flag: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The kronk home folder: the flag, else $KRONK_HOME, else ~/.kronk."""
    return KronkHome.resolve(flag or None, environ=environ).root


class ModelSettings(BaseModel):
    """One model's own settings: `models: {<id>: {...}}` in the config file. They beat
    the server-wide values and the catalog entry's, for that model only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parallel: Parallel = None
    ctx_size: CtxSize = None
    threads: Threads = None
    max_queue: MaxQueue = None
    prompt_cache_size: Bytes = None  # host memory for saved prompt KV states (0: off)
    cache_type_k: CacheType | None = None
    cache_type_v: CacheType | None = None
    flash_attn: FlashAttention | None = None
    batch_invariant: bool | None = None
    spec: SpecMode | None = None
    draft_model: str | None = None  # a model id or a GGUF path with this model's vocabulary
    draft_max: DraftMax = None
    # Server-side tools offered to every request for this model (docs/tools.md), on top
    # of the server-wide `tools`.
    tools: list[str] | None = None
    # Sampling defaults (temperature, top_k, ...), over the catalog entry's, key by key.
    sampling: dict[str, float | int] | None = None

    @field_validator("sampling")
    @classmethod
    def _known_sampling_keys(
        cls, value: dict[str, float | int] | None
    ) -> dict[str, float | int] | None:
        unknown = sorted(set(value or ()) - SAMPLING_KEYS)
        if unknown:
            raise ValueError(f"unknown sampling defaults {unknown}; known: {sorted(SAMPLING_KEYS)}")
        return value

    def load_options(self) -> dict[str, Any]:
        """The Kronk(...) keyword arguments these settings set."""
        chosen = {
            "n_ctx": self.ctx_size,
            "n_seq_max": self.parallel,
            "n_threads": self.threads,
            "max_queue": self.max_queue,
            "prompt_cache_bytes": self.prompt_cache_size,
            "cache_type_k": self.cache_type_k,
            "cache_type_v": self.cache_type_v,
            "flash_attn": self.flash_attn,
            "batch_invariant": self.batch_invariant,
            "speculative": self.spec,
            "draft_model": self.draft_model,
            "draft_max": self.draft_max,
            "sampling_defaults": self.sampling,
        }
        return {
            key: int(value) if isinstance(value, ByteSize) else value
            for key, value in chosen.items()
            if value is not None
        }


class ServerSettings(BaseModel):
    """How `kronk server start` runs. None means "the catalog entry's value, else the SDK's
    default" for the per-model settings (parallel, ctx_size, threads, max_queue)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    home: Path = Field(default_factory=home_folder)
    model: str | None = None  # preload this one (a model id, or a path to a GGUF file)
    parallel: Parallel = None
    ctx_size: CtxSize = None
    models_max: int = Field(3, ge=1)
    ttl: float = 300.0  # idle seconds before unloading; 0 at once, negative never
    threads: Threads = None
    max_queue: MaxQueue = None
    prompt_cache_size: Bytes = None  # per model; None: the SDK's 1 GiB
    # The pool (kronk.pool): the memory the loaded models' estimates may add up to (None:
    # the RAM available at start less a margin; 0: no limit), and the requests that may
    # wait for room to load a model, each for up to queue_timeout seconds.
    memory_budget: Bytes = None
    queue_size: int = Field(64, ge=0)
    queue_timeout: float = Field(300.0, ge=0)
    cache_type_k: CacheType | None = None  # KV cache element types, per model
    cache_type_v: CacheType | None = None
    flash_attn: FlashAttention | None = None
    spec: SpecMode | None = None  # None: the SDK's default, auto
    draft_model: str | None = None
    draft_max: DraftMax = None
    log_level: LogLevel = "info"
    graceful_timeout: float = Field(30.0, ge=0)  # seconds in-flight requests get to finish
    # Seconds between keep-alives on a stream that has nothing to send yet (queued or
    # prefilling): an SSE comment for OpenAI, a ping event for Anthropic.
    keepalive: float = Field(5.0, gt=0)
    # Model names that stand for others: {"claude-*": "qwen2.5-coder-0.5b-instruct"}.
    # Globs allowed; from the config file's `aliases:` section and `--alias NAME=MODEL`.
    aliases: dict[str, str] = Field(default_factory=dict)
    # Per-model settings, from the config file's `models:` section only.
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    # Security (docs/security.md). `open` is refused off loopback unless `insecure`.
    auth: AuthMode = "open"
    # Web origins besides the server's own that may call it (globs, like OLLAMA_ORIGINS);
    # a comma-separated list in the environment and on the command line.
    allowed_origins: tuple[str, ...] = ()
    insecure: bool = False
    # Server-side tools (docs/tools.md): those offered to every request (web_search,
    # web_fetch, mcp:NAME; comma-separated on the command line), the `{"mcpServers"}`
    # file, and the config file's top-level `tools:` (limits, allow-list, search
    # backend) and `mcp_servers:` sections.
    tools: tuple[str, ...] = ()
    mcp_config: Path | None = None
    tool_settings: dict[str, Any] = Field(default_factory=dict)
    mcp_servers: dict[str, Any] = Field(default_factory=dict)

    @field_validator("allowed_origins", "tools", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:  # comma-separated in env and flags
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    # -- where its files live (KronkHome owns the layout of the home folder) ----------------

    @property
    def paths(self) -> KronkHome:
        return KronkHome.resolve(self.home)

    @property
    def pid_file(self) -> Path:
        return self.paths.run_dir / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.paths.logs_dir / "server.log"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def load_defaults(self) -> dict[str, Any]:
        """Kronk(...) keyword arguments the user set for every model."""
        return ModelSettings(
            parallel=self.parallel,
            ctx_size=self.ctx_size,
            threads=self.threads,
            max_queue=self.max_queue,
            prompt_cache_size=self.prompt_cache_size,
            cache_type_k=self.cache_type_k,
            cache_type_v=self.cache_type_v,
            flash_attn=self.flash_attn,
            spec=self.spec,
            draft_model=self.draft_model,
            draft_max=self.draft_max,
        ).load_options()

    def pool_options(self) -> dict[str, Any]:
        """ModelPool(...) keyword arguments: what loads, what fits, who waits."""
        return {
            "models_max": self.models_max,
            "ttl_seconds": self.ttl,
            "memory_budget": None if self.memory_budget is None else int(self.memory_budget),
            "queue_size": self.queue_size,
            "queue_timeout": self.queue_timeout,
            "load_defaults": self.load_defaults(),
            "model_options": self.model_options(),
        }

    def model_options(self) -> dict[str, dict[str, Any]]:
        """Kronk(...) keyword arguments the user set for single models, by model id."""
        return {model_id: m.load_options() for model_id, m in self.models.items()}

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> ServerSettings:
        """Merge defaults, the config file, the environment and `flags` (None = not given)."""
        environ = os.environ if environ is None else environ
        flags = {key: value for key, value in (flags or {}).items() if value is not None}
        home = home_folder(flags.pop("home", None), environ)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}

        config_file = KronkHome.resolve(home).config_file
        config = _read_config_file(config_file)
        for key, value in _server_section(config_file, config).items():
            values[key] = value
            sources[key] = f"{config_file} (server.{key})"
        models = _models_section(config_file, config)
        aliases = _aliases_section(config_file, config)
        for key, var in ENVIRONMENT.items():
            raw = environ.get(var)
            if raw is not None and raw.strip() != "":
                values[key] = raw.strip()
                sources[key] = f"environment variable {var}"
        for key, value in flags.items():
            if key not in cls.model_fields:
                raise ConfigError(f"unknown server setting {key!r}")
            if key == "aliases":  # --alias adds to (and overrides) the config's aliases
                aliases = {**aliases, **value}
                continue
            values[key] = value
            sources[key] = f"--{key.replace('_', '-')}"
        try:
            tool_sections = {
                "tool_settings": config.get("tools") or {},
                "mcp_servers": config.get("mcp_servers") or {},
            }
            return cls.model_validate(
                {**tool_sections, **values, "home": home, "models": models, "aliases": aliases}
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [str(part) for part in err["loc"]]
            key = loc[0] if loc else ""
            if key == "models":
                where = f"{config_file} (models.{'.'.join(loc[1:])})"
                raise ConfigError(f"bad model setting in {where}: {err['msg']}") from None
            where = sources.get(key, key)
            raise ConfigError(f"bad value for {key} from {where}: {err['msg']}") from None


def _read_config_file(path: Path) -> dict[str, Any]:
    """The config file's top-level mapping ({} when there is no file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({yaml_problem(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def _server_section(path: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """The `server:` section, keys with dashes or underscores ({} when absent)."""
    section = config.get("server")
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'server' must be a mapping of settings")
    out: dict[str, Any] = {}
    for raw_key, value in section.items():
        key = str(raw_key).replace("-", "_")
        if key in ("home", "models", "aliases"):
            where = "inside the home folder's config" if key == "home" else "in 'server'"
            raise ConfigError(f"{path}: '{key}' cannot be set {where}")
        if key not in ServerSettings.model_fields:
            known = ", ".join(
                k for k in ServerSettings.model_fields if k not in ("home", "models", "aliases")
            )
            raise ConfigError(f"{path}: unknown server setting {raw_key!r} (known: {known})")
        out[key] = value
    return out


def _aliases_section(path: Path, config: Mapping[str, Any]) -> dict[str, str]:
    """The `aliases:` section: name (or glob) -> model id."""
    section = config.get("aliases")
    if section is None:
        return {}
    if not isinstance(section, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in section.items()
    ):
        raise ConfigError(f"{path}: 'aliases' must map names (or globs) to model ids")
    return dict(section)


def _models_section(path: Path, config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The `models:` section: model id -> its settings, keys with dashes or underscores."""
    section = config.get("models")
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'models' must map model ids to their settings")
    out: dict[str, dict[str, Any]] = {}
    for model_id, settings in section.items():
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: models.{model_id} must be a mapping of settings")
        out[str(model_id)] = {str(k).replace("-", "_"): v for k, v in settings.items()}
    return out


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENVIRONMENT",
    "ModelSettings",
    "ServerSettings",
    "home_folder",
]
