"""Response types shaped like OpenAI's, so code written for the `openai` client reads the
same against kronk: `resp.choices[0].message.content`, `chunk.choices[0].delta.content`,
`resp.usage.prompt_tokens`. Kronk's additions (reasoning_content, timings) are extra
fields that OpenAI-shaped code simply ignores.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "cancelled"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = Field(
        default_factory=CompletionTokensDetails
    )
    # kronk timings, in seconds and tokens per second
    time_to_first_token: float = 0.0
    queue_seconds: float = 0.0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    tokens_per_second: float = 0.0
    prompt_tokens_per_second: float = 0.0
    # speculative decoding: draft tokens verified, and those kept (docs/speculative.md)
    draft_tokens: int = 0
    draft_accepted: int = 0


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatCompletionTokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[ChatCompletionTokenLogprob] | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ChatCompletionMessageToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ServerToolCallInfo(BaseModel):
    """A tool kronk ran for the model (kronk's extension; docs/tools.md). Streamed twice:
    with `arguments` when the model calls it, with `output` and `is_error` when it ran."""

    id: str
    name: str
    source: str  # "builtin" or "mcp:SERVER"
    arguments: str | None = None
    output: str | None = None
    is_error: bool | None = None


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    server_tool_calls: list[ServerToolCallInfo] | None = None


class Choice(BaseModel):
    index: int = 0
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None


class ChoiceDeltaToolCallFunction(BaseModel):
    name: str | None = None  # in a call's first delta only
    arguments: str | None = None  # a fragment; the fragments of a call add up to its arguments


class ChoiceDeltaToolCall(BaseModel):
    """Part of a streamed tool call. The first delta of a call carries `id`, `type` and the
    function's name; later ones carry argument fragments. `index` says which call."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ChoiceDeltaToolCallFunction | None = None


class ChoiceDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ChoiceDeltaToolCall] | None = None
    server_tool_calls: list[ServerToolCallInfo] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChoiceDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | None = None  # on the last chunk
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions format: parallel lists per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelInfo(BaseModel):
    """What a loaded model is and what it can do."""

    id: str
    path: str
    architecture: str
    description: str
    n_params: int
    size_bytes: int
    n_ctx_train: int
    n_ctx: int  # per slot
    n_slots: int
    n_embd: int
    n_swa: int
    has_chat_template: bool
    capabilities: list[str]  # chat, completion, fim, tools, reasoning, embedding
    metadata: dict[str, Any] = Field(default_factory=dict)
