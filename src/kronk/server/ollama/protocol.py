"""Request bodies of kronk's Ollama-compatible API, validated by pydantic.

Field names follow Ollama's API (`/api/chat`, `/api/generate`, `/api/embed`, ...).
Sampling `options` are mapped onto kronk's one declaration of the sampling parameters
(`kronk.options.SamplingOptions`): the names both share pass through, Ollama's own
(`num_predict`) are renamed, load-time options that cannot change a loaded model
(`num_ctx`, `num_gpu`, ...) are accepted and ignored, and anything else is a 400, so a
typo does not quietly give a different answer. Unknown top-level fields are a 400 too;
fields kronk has no use for are declared and ignored.

Serving logic lives in `routes.py` and `models.py`; these classes only check input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from kronk.errors import InvalidRequestError, ModelNotFoundError, UnsupportedFeatureError
from kronk.models.resolver import ResolvedModel
from kronk.options import SAMPLER_FIELDS, SamplingOptions, parse_options
from kronk.pool import ModelPool
from kronk.server.body import check_body
from kronk.server.tool_params import (
    ServerTool,
    function_tools,
    server_tool_entries,
    tool_kind,
)


class OllamaRequest(BaseModel):
    """Base of every request body: unknown fields are errors, NaN is not a number, and
    the body is checked as a whole first (nesting depth, valid Unicode)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _well_formed(cls, data: Any) -> Any:
        check_body(data)
        return data


class NamedRequest(OllamaRequest):
    """A request naming one model; older clients call the field `name`."""

    model: str = Field("", description="the model (older clients send `name`)")
    name: str | None = None

    @model_validator(mode="after")
    def _model_or_name(self) -> NamedRequest:
        if not self.model and self.name:
            self.model = self.name
        if not self.model:
            raise InvalidRequestError("model is required", "model")
        return self


# keep_alive: a Go duration ("5m", "1h30m", "-1s"), or a number of seconds.
KeepAlive = str | float | None
_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def keep_alive_seconds(value: KeepAlive) -> float | None:
    """Seconds to keep the model loaded after the request; negative means for ever and
    None "the server's default". Strings are Go durations, as Ollama parses them."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)  # "300": seconds, as Ollama also takes them
    except ValueError:
        pass
    parts = _DURATION.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise InvalidRequestError(
            f"keep_alive must be a duration such as '5m', '1h' or '-1', or a number of "
            f"seconds; got {value!r}",
            "keep_alive",
        )
    return sign * sum(float(n) * _UNITS[u] for n, u in parts)


# -- options -------------------------------------------------------------------------------

# Ollama options that choose how a model is loaded (or samplers llama.cpp dropped): they
# cannot change a model that is already loaded and shared, so they are accepted and ignored.
IGNORED_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "embedding_only",
        "num_thread",
        "numa",
        "num_keep",
        "tfs_z",
        "penalize_newline",
        "mirostat_tau",
        "mirostat_eta",
    }
)
# Ollama's num_predict: -1 generates until the model stops, -2 until the context is full.
UNLIMITED, FILL_CONTEXT = -1, -2


@dataclass(frozen=True)
class GenerationOptions:
    """`options` as kronk takes them: sampler keyword arguments and a token limit."""

    sampling: dict[str, Any]
    num_predict: int | None = None

    def max_tokens(self, n_ctx: int) -> int:
        """The token limit for a model with `n_ctx` tokens of context: generation can
        never go past the context, so a larger (or unlimited) num_predict is the context."""
        if self.num_predict is None or self.num_predict < 0:
            return n_ctx
        return min(self.num_predict, n_ctx)


def generation_options(options: Mapping[str, Any] | None) -> GenerationOptions:
    """Ollama's `options`, checked against kronk's sampling declaration."""
    sampling: dict[str, Any] = {}
    num_predict: int | None = None
    for key, value in (options or {}).items():
        if value is None or key in IGNORED_OPTIONS:
            continue
        if key == "num_predict":
            num_predict = _num_predict(value)
        elif key == "mirostat":
            if value not in (0, False):
                raise UnsupportedFeatureError(
                    "the mirostat sampler is not supported; leave options.mirostat at 0",
                    "options.mirostat",
                )
        elif key in SAMPLER_FIELDS:
            sampling[key] = value
        else:
            raise InvalidRequestError(f"unknown option {key!r}", f"options.{key}")
    try:
        parse_options(SamplingOptions, sampling)
    except InvalidRequestError as exc:
        param = f"options.{exc.param}" if exc.param else "options"
        raise InvalidRequestError(
            exc.message.replace(repr(exc.param), repr(param)), param
        ) from None
    return GenerationOptions(sampling, num_predict)


def _num_predict(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InvalidRequestError("options.num_predict must be an integer", "options.num_predict")
    count = int(value)
    if count == 0 or count < FILL_CONTEXT:
        raise InvalidRequestError(
            "options.num_predict must be positive, -1 (no limit) or -2 (fill the context)",
            "options.num_predict",
        )
    return count


# -- formats and thinking ------------------------------------------------------------------

Format = Literal["", "json"] | dict[str, Any] | None


def response_format(fmt: Format) -> dict[str, Any] | None:
    """Ollama's `format` ("json" or a JSON schema) as the SDK's response_format."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if not isinstance(fmt, dict):  # pydantic lets no other string through
        raise InvalidRequestError("format must be 'json' or a JSON schema object", "format")
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}


Think = bool | Literal["high", "medium", "low"] | None


def template_kwargs(think: Think) -> dict[str, Any]:
    """Chat template variables for `think`: false turns a reasoning model's thinking off;
    a level is passed on to templates that take one (gpt-oss)."""
    if think is False:
        return {"enable_thinking": False}
    if isinstance(think, str):
        return {"enable_thinking": True, "reasoning_effort": think}
    return {}


# -- chat ----------------------------------------------------------------------------------


class CalledFunction(OllamaRequest):
    index: int | None = None
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(OllamaRequest):
    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class Message(OllamaRequest):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def for_template(self, index: int) -> dict[str, Any]:
        """The message as chat templates expect it (OpenAI's shape)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.thinking:
            out["reasoning_content"] = self.thinking
        if self.tool_calls:
            out["tool_calls"] = [
                {
                    "id": call.id or f"call_{index}_{i}",
                    "type": "function",
                    "function": {"name": call.function.name, "arguments": call.function.arguments},
                }
                for i, call in enumerate(self.tool_calls)
            ]
        name = self.tool_name or self.name
        if name is not None:
            out["name"] = name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(OllamaRequest):
    type: Literal["function"] = "function"
    function: ToolFunction


# A `tools` entry: a function, or a tool kronk runs itself (docs/tools.md).
ToolEntry = Annotated[Annotated[Tool, Tag("function-tool")] | ServerTool, Discriminator(tool_kind)]


class GenerationRequest(NamedRequest):
    """What /api/chat and /api/generate share."""

    format: Format = None
    options: dict[str, Any] | None = None
    stream: bool = True  # Ollama streams unless told not to
    keep_alive: KeepAlive = None
    think: Think = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Accepted and ignored: kronk never shifts or truncates a prompt silently (a prompt
    # that does not fit is an error).
    truncate: bool | None = None
    shift: bool | None = None

    def check_unsupported(self) -> None:
        if self.logprobs:
            raise UnsupportedFeatureError(
                "logprobs are not supported on the Ollama API; use /v1/chat/completions",
                "logprobs",
            )


class ChatRequest(GenerationRequest):
    messages: list[Message] = Field(default_factory=list)  # empty: only load the model
    tools: list[ToolEntry] | None = None  # server tools: docs/tools.md

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.for_template(i) for i, m in enumerate(self.messages)]

    def has_images(self) -> bool:
        return any(m.images for m in self.messages)

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        return function_tools(self.tools)

    def server_tool_entries(self) -> list[dict[str, Any]]:
        """The request's server tools (kronk's extension; docs/tools.md)."""
        return server_tool_entries(self.tools)


class GenerateRequest(GenerationRequest):
    prompt: str = ""  # empty (and no suffix): only load the model
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None
    # Image generation (Ollama's experimental diffusion models): refused when set.
    width: int | None = None
    height: int | None = None
    steps: int | None = None

    def check_unsupported(self) -> None:
        super().check_unsupported()
        if self.template:
            raise UnsupportedFeatureError(
                "template is not supported: kronk renders prompts with the model's own chat "
                "template (a Jinja file can replace it in the server's config); use raw for "
                "a prompt you formatted yourself",
                "template",
            )
        if self.context:
            raise UnsupportedFeatureError(
                "context is not supported (Ollama deprecated it); send the conversation "
                "to /api/chat instead",
                "context",
            )
        for field in ("width", "height", "steps"):
            if getattr(self, field) is not None:
                raise UnsupportedFeatureError("image generation is not supported", field)

    @property
    def only_loads(self) -> bool:
        return not self.prompt and not self.suffix


# -- embeddings ----------------------------------------------------------------------------


class EmbedRequest(NamedRequest):
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingsRequest(NamedRequest):
    """The older /api/embeddings: one prompt, one vector."""

    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


# -- model management ----------------------------------------------------------------------


class ShowRequest(NamedRequest):
    verbose: bool = False
    system: str | None = None  # ignored (Ollama's old Modelfile override)
    template: str | None = None
    options: dict[str, Any] | None = None


class PullRequest(NamedRequest):
    insecure: bool = False
    stream: bool = True
    username: str | None = None  # ignored: registry logins are `kronk registry login`
    password: str | None = None


class DeleteRequest(NamedRequest):
    pass


class CopyRequest(OllamaRequest):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


# -- names ---------------------------------------------------------------------------------


def candidate_ids(name: str) -> list[str]:
    """The ids an Ollama model name may stand for: the name itself, then without
    `:latest`, then `base-tag` for other tags (`llama3:8b` -> `llama3-8b`)."""
    out = [name]
    base, colon, tag = name.rpartition(":")
    if colon and base and "/" not in tag:
        out.append(base if tag == "latest" else f"{base}-{tag}")
    return out


def resolve_name(pool: ModelPool, name: str) -> ResolvedModel:
    """The model an Ollama name stands for; the first name's ModelNotFoundError if none."""
    first: ModelNotFoundError | None = None
    for candidate in candidate_ids(name):
        try:
            return pool.resolve(candidate)
        except ModelNotFoundError as exc:
            first = first or exc
    assert first is not None
    raise first


__all__ = [
    "ChatRequest",
    "CopyRequest",
    "DeleteRequest",
    "EmbedRequest",
    "EmbeddingsRequest",
    "GenerateRequest",
    "GenerationOptions",
    "PullRequest",
    "ShowRequest",
    "candidate_ids",
    "generation_options",
    "keep_alive_seconds",
    "resolve_name",
    "response_format",
    "template_kwargs",
]
