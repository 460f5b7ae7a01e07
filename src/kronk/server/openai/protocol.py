"""Request bodies of kronk's OpenAI-compatible API, validated by pydantic.

Field names and ranges follow OpenAI's API; llama.cpp's extra samplers (top_k, min_p,
typical_p, repeat_penalty, DRY, XTC, grammar, ...) use llama-server's names and ride
along as extra body fields. OpenAI parameters kronk has no use for (metadata, store,
service_tier, ...) are accepted and ignored, so no client is turned away for sending
them; any other unknown field is a 400 naming it, because a typo such as
`temprature` should not quietly give a different answer.

Serving logic lives in `routes.py`; these classes only describe and check the input,
and turn it into keyword arguments for `kronk.Kronk`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from kronk.errors import InvalidRequestError, UnsupportedFeatureError
from kronk.options import SamplingOptions, sampler_kwargs
from kronk.server.body import check_body
from kronk.server.tool_params import (
    ServerTool,
    function_tools,
    server_tool_entries,
    tool_kind,
)

StopParam = str | list[str]
TokenIds = list[Annotated[int, Field(ge=0)]]
PromptParam = str | list[str] | TokenIds | list[TokenIds]


class RequestModel(BaseModel):
    """Base of every request body: unknown fields are errors, NaN is not a number."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RequestBody(RequestModel):
    """A whole request body, checked as a whole before its fields are: its nesting is
    bounded, and its text must be valid Unicode (JSON can spell a lone surrogate,
    `"\\ud800"`, which Python decodes but UTF-8 cannot encode, so it would otherwise fail
    deep inside tokenization)."""

    @model_validator(mode="before")
    @classmethod
    def _well_formed(cls, data: Any) -> Any:
        check_body(data)
        return data


class SamplingFields(RequestBody, SamplingOptions):
    """What every generation endpoint takes: kronk's one declaration of the sampling
    parameters and their bounds (`kronk.options.SamplingOptions`), plus OpenAI's
    bookkeeping fields. None means "the model's default"."""

    # Accepted and ignored: OpenAI's bookkeeping fields, and llama-server hints that
    # kronk always follows anyway (it always reuses cached prompt prefixes).
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    cache_prompt: bool | None = None
    timings_per_token: bool | None = None
    id_slot: int | None = None

    def sampling_kwargs(self) -> dict[str, Any]:
        """The sampler parameters that were set, as Kronk keyword arguments."""
        return sampler_kwargs(self)


class StreamOptions(RequestModel):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # ignored: no padding against length attacks
    continuous_usage_stats: bool | None = None  # vLLM's; ignored


# -- chat completions ----------------------------------------------------------------------


class ContentPart(BaseModel):
    """One part of a message's content; only text parts are read."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class CalledFunction(BaseModel):
    """The function of a call in an earlier assistant turn. `arguments` is JSON text as
    OpenAI sends it; an object is taken too (the chat template wants one anyway)."""

    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str | dict[str, Any]


class MessageToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    """A message in OpenAI's form. Extra keys (e.g. a template's own) pass through."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(RequestModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


# A `tools` entry: a function, or a tool kronk runs itself (docs/tools.md).
ChatToolEntry = Annotated[
    Annotated[ChatTool, Tag("function-tool")] | ServerTool, Discriminator(tool_kind)
]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(RequestModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


ToolChoice = Literal["none", "auto", "required"] | dict[str, Any]


class ChatCompletionRequest(SamplingFields):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ChatToolEntry] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # "none" or "minimal" turn a reasoning model's thinking off (enable_thinking=False).
    reasoning_effort: str | None = None
    # Accepted and ignored: output kinds kronk does not produce.
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None
    # Legacy function calling: rejected with a pointer to `tools`.
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None

    def messages_for_template(self) -> list[dict[str, Any]]:
        """Messages as the chat template expects them, with unsupported content refused."""
        return template_messages(self.messages)

    def kronk_kwargs(self, server_tools: bool = False) -> dict[str, Any]:
        """Keyword arguments for `Kronk.achat_stream` besides the messages. With
        `server_tools` (the request may get some), the SDK checks tool_choice against
        every tool instead."""
        if self.functions is not None or self.function_call is not None:
            param = "functions" if self.functions is not None else "function_call"
            raise UnsupportedFeatureError(
                "functions/function_call are deprecated; use tools and tool_choice", param
            )
        kwargs = self.sampling_kwargs()
        for name in ("max_tokens", "max_completion_tokens", "top_logprobs"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        if self.logprobs:
            kwargs["logprobs"] = True
        if self.response_format is not None:
            kwargs["response_format"] = response_format_dict(self.response_format)
        template_kwargs = dict(self.chat_template_kwargs or {})
        if self.reasoning_effort in ("none", "minimal"):
            template_kwargs.setdefault("enable_thinking", False)
        if template_kwargs:
            kwargs["chat_template_kwargs"] = template_kwargs
        tools = self.tool_dicts()
        if tools is not None:
            kwargs["tools"] = tools
        if server_tools or self.server_tool_entries():
            if self.tool_choice is not None:
                kwargs["tool_choice"] = self.tool_choice
        elif self.tool_choice is not None and (tools or self.tool_choice not in ("auto", "none")):
            kwargs["tool_choice"] = check_tool_choice(self.tool_choice, tools)
        if self.parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = self.parallel_tool_calls
        return kwargs

    def tool_dicts(self) -> list[dict[str, Any]] | None:
        return function_tools(self.tools)

    def server_tool_entries(self) -> list[dict[str, Any]]:
        """The request's server tools (kronk's extension; docs/tools.md)."""
        return server_tool_entries(self.tools)


def response_format_dict(fmt: ResponseFormat) -> dict[str, Any]:
    """OpenAI's response_format as the SDK takes it (schema under json_schema.schema)."""
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    spec = fmt.json_schema
    if spec is None or spec.json_schema is None:
        raise InvalidRequestError(
            "response_format json_schema needs json_schema.schema", "response_format.json_schema"
        )
    out: dict[str, Any] = {"name": spec.name, "schema": spec.json_schema}
    if spec.strict is not None:
        out["strict"] = spec.strict
    return {"type": "json_schema", "json_schema": out}


def check_tool_choice(
    choice: str | dict[str, Any], tools: list[dict[str, Any]] | None
) -> str | dict[str, Any]:
    """Validate tool_choice against the tools (chat form: {"type": "function",
    "function": {"name": ...}})."""
    if isinstance(choice, str):
        if choice == "required" and not tools:
            raise InvalidRequestError("tool_choice 'required' needs tools", "tool_choice")
        return choice
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequestError(
            "tool_choice must be 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    known = {t["function"]["name"] for t in tools or ()}
    if name not in known:
        raise InvalidRequestError(
            f"tool_choice names {name!r}, which is not in tools", "tool_choice"
        )
    return {"type": "function", "function": {"name": name}}


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them; non-text content is refused."""
    return [_template_message(m, f"messages[{i}]") for i, m in enumerate(messages)]


def _template_message(message: ChatMessage, where: str) -> dict[str, Any]:
    out = message.model_dump(exclude_none=True)
    if message.role == "developer":
        out["role"] = "system"  # templates know no "developer"; it is OpenAI's new "system"
    elif message.role == "function":
        out["role"] = "tool"
    if isinstance(message.content, list):
        parts = []
        for j, part in enumerate(message.content):
            if part.type not in ("text", "input_text", "output_text") or part.text is None:
                raise UnsupportedFeatureError(
                    f"content part of type {part.type!r} is not supported; send text",
                    f"{where}.content[{j}]",
                )
            parts.append({"type": "text", "text": part.text})
        out["content"] = parts
    elif message.content is None and message.role in ("system", "user"):
        raise InvalidRequestError(f"a {message.role} message needs content", f"{where}.content")
    return out


# -- completions ---------------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    model: str = Field(min_length=1)
    prompt: PromptParam
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(16, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    best_of: int | None = Field(None, ge=1)

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts (the legacy API takes a batch)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise InvalidRequestError("prompt must not be empty", "prompt")
        out: list[str | list[int]] = []
        if all(isinstance(x, int) for x in p):
            out.append([x for x in p if isinstance(x, int)])
            return out
        for x in p:
            if isinstance(x, int):
                raise InvalidRequestError("prompt mixes token ids and texts", "prompt")
            out.append(x)
        return out

    def kronk_kwargs(self) -> dict[str, Any]:
        if self.best_of not in (None, 1):
            raise UnsupportedFeatureError("only best_of=1 is supported", "best_of")
        kwargs = self.sampling_kwargs()
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.logprobs is not None:
            kwargs["logprobs"] = self.logprobs
        if self.echo:
            kwargs["echo"] = True
        return kwargs


# -- embeddings ----------------------------------------------------------------------------


class EmbeddingRequest(RequestBody):
    model: str = Field(min_length=1)
    input: PromptParam
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    def inputs(self) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(self.input, list) and not self.input:
            raise InvalidRequestError("input must not be empty", "input")
        return self.input


# -- tokens --------------------------------------------------------------------------------


class TokenizeRequest(RequestBody):
    """llama-server's `content` or vLLM's `prompt`/`messages`: one of them."""

    model: str = Field(min_length=1)
    content: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special: bool | None = None
    add_special_tokens: bool | None = None  # vLLM's name for add_special
    parse_special: bool = False
    with_pieces: bool = False

    def text_param(self) -> tuple[str, str] | None:
        """(text, its parameter name), or None when `messages` was sent instead."""
        given: list[tuple[str, str]] = []
        for text, param in ((self.content, "content"), (self.prompt, "prompt")):
            if text is not None:
                given.append((text, param))
        if len(given) + (self.messages is not None) != 1:
            raise InvalidRequestError("send exactly one of content, prompt or messages", "content")
        return given[0] if given else None


class DetokenizeRequest(RequestBody):
    model: str = Field(min_length=1)
    tokens: TokenIds


__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "DetokenizeRequest",
    "EmbeddingRequest",
    "StreamOptions",
    "TokenizeRequest",
    "template_messages",
]
