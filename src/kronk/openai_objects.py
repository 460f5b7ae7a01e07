"""OpenAI-shaped objects built from a turn's neutral events.

The SDK's `chat_stream` / `complete_stream` chunks and `chat` / `complete` results come
from here, and the server's OpenAI routes serialise the same objects: one adapter for
the OpenAI shapes, fed by `kronk.chat.events` like every other protocol.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from functools import cache
from importlib import metadata

from kronk.chat.events import (
    ChatEvent,
    ContentDelta,
    ReasoningDelta,
    ServerToolCall,
    ServerToolResult,
    StopReason,
    ToolCallArgumentsDelta,
    ToolCallEnd,
    ToolCallStart,
    TurnFinished,
    TurnUsage,
)
from kronk.engine.request import TokenLogprob
from kronk.errors import InvalidRequestError
from kronk.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionMessageToolCall,
    ChatCompletionTokenLogprob,
    Choice,
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
    ChoiceLogprobs,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionTokensDetails,
    CompletionUsage,
    FinishReason,
    FunctionCall,
    PromptTokensDetails,
    ServerToolCallInfo,
    TopLogprob,
)

_FINISH_REASONS: dict[StopReason, FinishReason] = {
    "end": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "cancelled": "cancelled",
}


@cache
def system_fingerprint() -> str:
    """Which build answered: kronk's version and the llama.cpp (llama-cpp-python) it runs."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "unknown"

    return f"fp_kronk-{version('kronk')}_llama.cpp-{version('llama-cpp-python')}"


def finish_reason(finished: TurnFinished) -> FinishReason:
    """OpenAI's finish_reason for a finished turn; a failed turn raises its error."""
    if finished.error is not None:
        raise finished.error
    return _FINISH_REASONS[finished.reason]


def completion_usage(usage: TurnUsage) -> CompletionUsage:
    u = usage.engine
    return CompletionUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=usage.reasoning_tokens),
        time_to_first_token=u.time_to_first_token,
        queue_seconds=u.queue_seconds,
        prompt_seconds=u.prompt_seconds,
        generation_seconds=u.generation_seconds,
        tokens_per_second=u.tokens_per_second,
        prompt_tokens_per_second=u.prompt_tokens_per_second,
        draft_tokens=u.draft_tokens,
        draft_accepted=u.draft_accepted,
    )


def chat_logprobs(items: Sequence[TokenLogprob]) -> list[ChatCompletionTokenLogprob]:
    return [
        ChatCompletionTokenLogprob(
            token=lp.token,
            logprob=lp.logprob,
            bytes=lp.bytes,
            top_logprobs=[
                TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top
            ],
        )
        for lp in items
    ]


class ChatCompletionBuilder:
    """Chunks as a turn streams (`on_events`), and the whole `ChatCompletion` at the end."""

    def __init__(self, model: str, *, index: int = 0, id: str | None = None) -> None:
        self.id = id or f"chatcmpl-{uuid.uuid4().hex}"
        self.model = model
        self.index = index  # the choice's index (n > 1)
        self.created = int(time.time())
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._logprobs: list[ChatCompletionTokenLogprob] = []
        self._calls: list[ToolCallEnd] = []
        self._server_calls: dict[str, ServerToolCallInfo] = {}
        self.finished: TurnFinished | None = None

    def first_chunks(self) -> list[ChatCompletionChunk]:
        return [self._chunk(ChoiceDelta(role="assistant", content=""))]

    def _server_tool(self, event: ServerToolCall | ServerToolResult) -> ChatCompletionChunk:
        """A server tool's call or result, as its own delta (kronk's extension)."""
        if isinstance(event, ServerToolCall):
            info = ServerToolCallInfo(
                id=event.id, name=event.name, source=event.source, arguments=event.arguments
            )
            self._server_calls[event.id] = info
        else:
            info = ServerToolCallInfo(
                id=event.id,
                name=event.name,
                source=event.source,
                output=event.content,
                is_error=event.is_error,
            )
            known = self._server_calls.get(event.id)
            arguments = known.arguments if known is not None else None
            self._server_calls[event.id] = info.model_copy(update={"arguments": arguments})
        return self._chunk(ChoiceDelta(server_tool_calls=[info]))

    def on_events(self, events: Sequence[ChatEvent]) -> list[ChatCompletionChunk]:
        """The chunks for the events of one engine step: text first (content and reasoning
        in one delta, as OpenAI-compatible servers send them), then tool-call deltas."""
        content = reasoning = ""
        logprobs: list[ChatCompletionTokenLogprob] = []
        calls: list[ChoiceDeltaToolCall] = []
        chunks: list[ChatCompletionChunk] = []
        for event in events:
            if isinstance(event, ContentDelta):
                content += event.text
                logprobs += chat_logprobs(event.logprobs)
            elif isinstance(event, ReasoningDelta):
                reasoning += event.text
            elif isinstance(event, ToolCallStart):
                function = ChoiceDeltaToolCallFunction(name=event.name, arguments="")
                calls.append(
                    ChoiceDeltaToolCall(
                        index=event.index, id=event.id, type="function", function=function
                    )
                )
            elif isinstance(event, ToolCallArgumentsDelta):
                _add_arguments(calls, event)
            elif isinstance(event, ToolCallEnd):
                self._calls.append(event)
            elif isinstance(event, TurnFinished):
                self.finished = event
            elif isinstance(event, ServerToolCall | ServerToolResult):
                # Text before the call goes out first, so the client sees things in order.
                chunks += self._text_chunks(content, reasoning, logprobs)
                content = reasoning = ""
                logprobs = []
                chunks.append(self._server_tool(event))
        chunks = self._text_chunks(content, reasoning, logprobs) + chunks
        chunks += [self._chunk(ChoiceDelta(tool_calls=[call])) for call in calls]
        if self.finished is not None:
            final = self._chunk(ChoiceDelta(), finish_reason=finish_reason(self.finished))
            final.usage = completion_usage(self.finished.usage)
            chunks.append(final)
        return chunks

    def _text_chunks(
        self, content: str, reasoning: str, logprobs: list[ChatCompletionTokenLogprob]
    ) -> list[ChatCompletionChunk]:
        chunks: list[ChatCompletionChunk] = []
        self._content.append(content)
        self._reasoning.append(reasoning)
        self._logprobs += logprobs
        if content or reasoning or logprobs:
            delta = ChoiceDelta(content=content or None, reasoning_content=reasoning or None)
            chunks.append(
                self._chunk(delta, logprobs=ChoiceLogprobs(content=logprobs) if logprobs else None)
            )
        return chunks

    def _chunk(
        self,
        delta: ChoiceDelta,
        *,
        finish_reason: FinishReason | None = None,
        logprobs: ChoiceLogprobs | None = None,
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[
                ChunkChoice(
                    index=self.index, delta=delta, finish_reason=finish_reason, logprobs=logprobs
                )
            ],
            system_fingerprint=system_fingerprint(),
        )

    def result(self) -> ChatCompletion:
        if self.finished is None:
            raise InvalidRequestError("the stream was closed before it finished")
        reason = finish_reason(self.finished)
        content: str | None = "".join(self._content)
        if self._calls and not (content or "").strip():
            content = None  # OpenAI's shape for an answer that is only tool calls
        tool_calls = [
            ChatCompletionMessageToolCall(
                id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)
            )
            for c in self._calls
        ]
        message = ChatCompletionMessage(
            content=content,
            reasoning_content="".join(self._reasoning) or None,
            tool_calls=tool_calls or None,
            server_tool_calls=list(self._server_calls.values()) or None,
        )
        choice = Choice(
            index=self.index,
            message=message,
            finish_reason=reason,
            logprobs=ChoiceLogprobs(content=self._logprobs) if self._logprobs else None,
        )
        return ChatCompletion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=completion_usage(self.finished.usage),
            system_fingerprint=system_fingerprint(),
        )


def _add_arguments(calls: list[ChoiceDeltaToolCall], event: ToolCallArgumentsDelta) -> None:
    """Append an arguments fragment, merged into the previous fragment of the same call."""
    last = calls[-1] if calls else None
    if (
        last is not None
        and last.index == event.index
        and last.id is None
        and last.function is not None
        and last.function.arguments is not None
    ):
        last.function.arguments += event.arguments
    else:
        function = ChoiceDeltaToolCallFunction(arguments=event.arguments)
        calls.append(ChoiceDeltaToolCall(index=event.index, function=function))


class CompletionBuilder:
    """Chunks and the result of a text completion (the legacy completions API)."""

    def __init__(self, model: str, *, echo: str = "", index: int = 0) -> None:
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.model = model
        self.index = index
        self.created = int(time.time())
        self._echo = echo
        self._text: list[str] = [echo]
        self._logprobs: CompletionLogprobs | None = None
        self._offset = len(echo)
        self.finished: TurnFinished | None = None

    def first_chunks(self) -> list[Completion]:
        return [self._chunk(self._echo)] if self._echo else []

    def on_events(self, events: Sequence[ChatEvent]) -> list[Completion]:
        chunks: list[Completion] = []
        for event in events:
            if isinstance(event, ContentDelta):
                logprobs = self._add_logprobs(event.logprobs) if event.logprobs else None
                self._text.append(event.text)
                chunks.append(self._chunk(event.text, logprobs=logprobs))
            elif isinstance(event, TurnFinished):
                self.finished = event
                final = self._chunk("", finish_reason=finish_reason(event))
                final.usage = completion_usage(event.usage)
                chunks.append(final)
        return chunks

    def _add_logprobs(self, items: Sequence[TokenLogprob]) -> CompletionLogprobs:
        chunk = CompletionLogprobs()
        for lp in items:
            chunk.tokens.append(lp.token)
            chunk.token_logprobs.append(lp.logprob)
            chunk.top_logprobs.append({t.token: t.logprob for t in lp.top})
            chunk.text_offset.append(self._offset)
            self._offset += len(lp.token)
        if self._logprobs is None:
            self._logprobs = CompletionLogprobs()
        for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            getattr(self._logprobs, name).extend(getattr(chunk, name))
        return chunk

    def _chunk(
        self,
        text: str,
        *,
        finish_reason: FinishReason | None = None,
        logprobs: CompletionLogprobs | None = None,
    ) -> Completion:
        choice = CompletionChoice(
            index=self.index, text=text, finish_reason=finish_reason, logprobs=logprobs
        )
        return Completion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            system_fingerprint=system_fingerprint(),
        )

    def result(self) -> Completion:
        if self.finished is None:
            raise InvalidRequestError("the stream was closed before it finished")
        choice = CompletionChoice(
            index=self.index,
            text="".join(self._text),
            finish_reason=finish_reason(self.finished),
            logprobs=self._logprobs,
        )
        return Completion(
            id=self.id,
            created=self.created,
            model=self.model,
            choices=[choice],
            usage=completion_usage(self.finished.usage),
            system_fingerprint=system_fingerprint(),
        )


__all__ = [
    "ChatCompletionBuilder",
    "CompletionBuilder",
    "chat_logprobs",
    "completion_usage",
    "finish_reason",
    "system_fingerprint",
]
