"""Serving logic of the OpenAI-compatible API.

Each endpoint leases its model from the pool, turns the validated request into a
`Kronk` call, and turns the SDK's OpenAI-shaped results back into JSON or a
server-sent event stream. Everything that can fail on bad input fails before the
first byte is sent, so errors get their proper status; a failure mid-stream becomes
an error event.

A client that goes away frees its slot at once: streams watch for the ASGI
disconnect message and close the SDK stream (which cancels the request in the
engine); non-streamed requests race their work against the disconnect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from kronk.errors import InvalidRequestError, KronkError, UnsupportedFeatureError
from kronk.models.resolver import ResolvedModel
from kronk.models.store import require_capability
from kronk.pool import ModelLease
from kronk.sdk import AsyncChatStream, AsyncCompletionStream
from kronk.server.openai.errors import api_error
from kronk.server.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ResponsesRequest,
    TokenizeRequest,
    template_messages,
)
from kronk.server.state import ServerState
from kronk.types import ChatCompletionChunk, Completion, CompletionUsage

log = logging.getLogger("kronk.server")

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, the log does

router = APIRouter()


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.kronk
    return state


# -- plumbing: SSE and disconnects ---------------------------------------------------------


def sse(data: Any, event: str | None = None) -> bytes:
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` response that stops, and runs `cleanup`, as soon as the
    client disconnects, rather than when the stream would have ended on its own."""

    def __init__(
        self, events: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._events = events
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                task.cancel()
            # Shielded: a server shutting down must still free the slot and the lease.
            await asyncio.shield(self._close())
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            raise pump.exception()  # type: ignore[misc]

    async def _pump(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        async for chunk in self._events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _close(self) -> None:
        with contextlib.suppress(BaseException):
            await self._events.aclose()  # type: ignore[attr-defined]
        await self._cleanup()


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, cancelling it if the client disconnects first (then None)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return None
    return task.result()


def _prune(value: Any) -> Any:
    """Drop None-valued keys, recursively (OpenAI leaves unset delta fields out)."""
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    dumped: dict[str, Any] = value.model_dump(mode="json")
    return dumped


def _usage_json(usage: CompletionUsage) -> dict[str, Any]:
    return usage.model_dump(mode="json")


async def _acquire(request: Request, model: str, capability: str | None = None) -> ModelLease:
    """Lease `model`; with `capability`, first refuse (without loading anything) a model
    whose catalog entry says it can't do that (e.g. chat with an embedding model)."""
    pool = server_state(request).pool
    if capability is not None:
        require_capability(pool.resolve(model), capability)
    return await pool.acquire(model)


# -- chat completions ----------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    messages = body.messages_for_template()
    kwargs = body.kronk_kwargs()
    lease = await _acquire(request, body.model, "chat")
    try:
        stream = lease.kronk.achat_stream(messages, **kwargs)
    except BaseException:
        lease.release()
        raise
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStreamResponse(
            _chat_events(stream, include_usage, request.url.path),
            _closer(stream.aclose, lease),
        )
    try:
        done = await unless_disconnected(request, _drain(stream))
    finally:
        await stream.aclose()
        lease.release()
    if done is None:
        return Response(status_code=CLIENT_CLOSED)
    completion = stream.turn.result()
    data = completion.model_dump(mode="json")
    for choice in data["choices"]:
        choice["message"] = _prune(choice["message"])
        if choice["message"].get("content") is None:
            choice["message"]["content"] = None
    return JSONResponse(data)


def _closer(
    close: Callable[[], Awaitable[None]], lease: ModelLease
) -> Callable[[], Awaitable[None]]:
    async def cleanup() -> None:
        try:
            await close()
        finally:
            lease.release()

    return cleanup


async def _drain(stream: AsyncChatStream | AsyncCompletionStream) -> bool:
    async for _ in stream:
        pass
    return True


def chunk_json(chunk: ChatCompletionChunk | Completion, include_usage: bool) -> dict[str, Any]:
    """An SDK chunk as OpenAI streams it: unset delta fields left out, usage only in
    its own final chunk (and as null before it when the client asked for usage)."""
    data = chunk.model_dump(mode="json")
    data.pop("usage", None)
    if include_usage:
        data["usage"] = None
    for choice in data["choices"]:
        if "delta" in choice:
            choice["delta"] = delta = _prune(choice["delta"])
            for call in delta.get("tool_calls", ()):
                # A call's first delta (the one naming it) carries "arguments": "" in
                # OpenAI's stream; accumulating clients start the string from it.
                function = call.get("function")
                if function is not None and "name" in function:
                    function.setdefault("arguments", "")
    return data


def usage_chunk(chunk: ChatCompletionChunk | Completion, usage: CompletionUsage) -> dict[str, Any]:
    return {
        "id": chunk.id,
        "object": chunk.object,
        "created": chunk.created,
        "model": chunk.model,
        "choices": [],
        "usage": _usage_json(usage),
    }


async def _chat_events(
    stream: AsyncChatStream, include_usage: bool, path: str
) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield sse(chunk_json(chunk, include_usage))
            if chunk.usage is not None and include_usage:
                yield sse(usage_chunk(chunk, chunk.usage))
    except KronkError as exc:
        log.warning("chat stream failed: %s", exc)
        yield sse(api_error(exc, path).body())
    yield SSE_DONE


# -- completions (legacy) ------------------------------------------------------------------


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    prompts = body.prompts()
    kwargs = body.kronk_kwargs()
    lease = await _acquire(request, body.model)
    streams: list[AsyncCompletionStream] = []
    try:
        for prompt in prompts:
            streams.append(lease.kronk.acomplete_stream(prompt, suffix=body.suffix, **kwargs))
    except BaseException:
        for opened in streams:
            await opened.aclose()
        lease.release()
        raise

    async def close_all() -> None:
        for opened in streams:
            await opened.aclose()

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStreamResponse(
            _completion_events(streams, include_usage, request.url.path),
            _closer(close_all, lease),
        )
    try:
        done = await unless_disconnected(request, asyncio.gather(*map(_drain, streams)))
    finally:
        await close_all()
        lease.release()
    if done is None:
        return Response(status_code=CLIENT_CLOSED)
    results = [s.turn.result() for s in streams]
    data = results[0].model_dump(mode="json")
    data["choices"] = []
    for i, result in enumerate(results):
        choice = result.choices[0].model_dump(mode="json")
        choice["index"] = i
        data["choices"].append(choice)
    data["usage"] = _usage_json(_sum_usage([r.usage for r in results if r.usage is not None]))
    return JSONResponse(data)


def _sum_usage(usages: Sequence[CompletionUsage]) -> CompletionUsage:
    if len(usages) == 1:
        return usages[0]
    total = CompletionUsage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
    for u in usages:
        total.prompt_tokens += u.prompt_tokens
        total.completion_tokens += u.completion_tokens
        total.total_tokens += u.total_tokens
        total.prompt_tokens_details.cached_tokens += u.prompt_tokens_details.cached_tokens
    return total


async def _merge(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Items of several streams as they come, each tagged with its stream's index."""
    pending: dict[asyncio.Future[T], int] = {
        asyncio.ensure_future(anext(s)): i for i, s in enumerate(streams)
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    item = future.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(streams[i]))] = i
                yield i, item
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _completion_events(
    streams: list[AsyncCompletionStream], include_usage: bool, path: str
) -> AsyncIterator[bytes]:
    usages: list[CompletionUsage] = []
    last: Completion | None = None
    try:
        async for index, chunk in _merge(streams):
            for choice in chunk.choices:
                choice.index = index
            last = chunk
            if chunk.usage is not None:
                usages.append(chunk.usage)
            yield sse(chunk_json(chunk, include_usage))
        if include_usage and last is not None and usages:
            yield sse(usage_chunk(last, _sum_usage(usages)))
    except KronkError as exc:
        log.warning("completion stream failed: %s", exc)
        yield sse(api_error(exc, path).body())
    yield SSE_DONE


# -- responses -----------------------------------------------------------------------------


@router.post("/v1/responses", response_model=None)
async def responses(body: ResponsesRequest, request: Request) -> Response:
    messages = body.messages()
    kwargs = body.kronk_kwargs()
    lease = await _acquire(request, body.model, "chat")
    try:
        stream = lease.kronk.achat_stream(messages, **kwargs)
    except BaseException:
        lease.release()
        raise
    builder = ResponseBuilder(body, lease.model_id)
    if body.stream:
        return EventStreamResponse(
            _response_events(stream, builder, request.url.path), _closer(stream.aclose, lease)
        )

    async def run() -> bool:
        async for chunk in stream:
            builder.on_chunk(chunk)
        builder.finish()
        return True

    try:
        done = await unless_disconnected(request, run())
    finally:
        await stream.aclose()
        lease.release()
    if done is None:
        return Response(status_code=CLIENT_CLOSED)
    return JSONResponse(builder.response())


async def _response_events(
    stream: AsyncChatStream, builder: ResponseBuilder, path: str
) -> AsyncIterator[bytes]:
    def out(events: list[dict[str, Any]]) -> list[bytes]:
        return [sse(e, e["type"]) for e in events]

    for item in out(builder.start()):
        yield item
    try:
        async for chunk in stream:
            for item in out(builder.on_chunk(chunk)):
                yield item
        events = builder.finish()
    except KronkError as exc:
        log.warning("responses stream failed: %s", exc)
        events = builder.fail(exc, path)
    for item in out(events):
        yield item


class ResponseBuilder:
    """Turns chat chunks into a Responses API object and its streaming events.

    Output items open as their first delta arrives: reasoning, then the message, then
    each function call (keyed by the tool call's index), and all close at the end.
    """

    def __init__(self, request: ResponsesRequest, model_id: str) -> None:
        self.request = request
        self.id = f"resp_{uuid.uuid4().hex}"
        self.model = model_id
        self.created_at = int(time.time())
        self.status = "in_progress"
        self.output: list[dict[str, Any]] = []
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self._seq = 0
        self._open: dict[str, dict[str, Any]] = {}  # "reasoning" | "message" | "call:N" -> item
        self._finish_reason: str | None = None

    # -- events --

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        snapshot = self.response()
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def on_chunk(self, chunk: ChatCompletionChunk) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if chunk.usage is not None:
            self.usage = _response_usage(chunk.usage)
        for choice in chunk.choices:
            delta = choice.delta
            if delta.reasoning_content:
                events += self._reasoning_delta(delta.reasoning_content)
            if delta.content:
                logprobs = choice.logprobs.content if choice.logprobs else None
                events += self._text_delta(delta.content, logprobs or [])
            for call in getattr(delta, "tool_calls", None) or []:
                events += self._call_delta(_as_dict(call))
            if choice.finish_reason is not None:
                self._finish_reason = choice.finish_reason
        return events

    def _add_item(self, key: str, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.output.append(item)
        self._open[key] = item
        index = len(self.output) - 1
        return [self._event("response.output_item.added", output_index=index, item=dict(item))]

    def _reasoning_delta(self, text: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        item = self._open.get("reasoning")
        if item is None:
            events += self._add_item(
                "reasoning",
                {"id": f"rs_{uuid.uuid4().hex}", "type": "reasoning", "summary": [], "content": []},
            )
            item = self._open["reasoning"]
            item["content"].append({"type": "reasoning_text", "text": ""})
        item["content"][0]["text"] += text
        events.append(
            self._event(
                "response.reasoning_text.delta",
                item_id=item["id"],
                output_index=self.output.index(item),
                content_index=0,
                delta=text,
            )
        )
        return events

    def _text_delta(self, text: str, logprobs: list[Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        item = self._open.get("message")
        if item is None:
            events += self._close("reasoning")
            events += self._add_item(
                "message",
                {
                    "id": f"msg_{uuid.uuid4().hex}",
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                },
            )
            item = self._open["message"]
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=self.output.index(item),
                    content_index=0,
                    part=dict(part, logprobs=[]),
                )
            )
        part = item["content"][0]
        part["text"] += text
        converted = [_response_logprob(lp) for lp in logprobs]
        part["logprobs"] += converted
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self.output.index(item),
                content_index=0,
                delta=text,
                logprobs=converted,
            )
        )
        return events

    def _call_delta(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        key = f"call:{call.get('index', 0)}"
        item = self._open.get(key)
        function = call.get("function") or {}
        if item is None:
            events += self._close("reasoning") + self._close("message")
            events += self._add_item(
                key,
                {
                    "id": f"fc_{uuid.uuid4().hex}",
                    "type": "function_call",
                    "status": "in_progress",
                    "call_id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                    "name": function.get("name") or "",
                    "arguments": "",
                },
            )
            item = self._open[key]
        elif function.get("name"):
            item["name"] += function["name"]
        fragment = function.get("arguments") or ""
        if fragment:
            item["arguments"] += fragment
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self.output.index(item),
                    delta=fragment,
                )
            )
        return events

    def _close(self, key: str, status: str = "completed") -> list[dict[str, Any]]:
        item = self._open.pop(key, None)
        if item is None:
            return []
        index = self.output.index(item)
        events: list[dict[str, Any]] = []
        if item["type"] == "message":
            item["status"] = status
            part = item["content"][0]
            events.append(
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=part["text"],
                    logprobs=part["logprobs"],
                )
            )
            events.append(
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=dict(part),
                )
            )
        elif item["type"] == "function_call":
            item["status"] = status
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        elif item["type"] == "reasoning":
            events.append(
                self._event(
                    "response.reasoning_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=item["content"][0]["text"],
                )
            )
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        return events

    def finish(self) -> list[dict[str, Any]]:
        truncated = self._finish_reason == "length"
        status = "incomplete" if truncated else "completed"
        events: list[dict[str, Any]] = []
        for key in list(self._open):
            events += self._close(key, status)
        self.status = status
        if truncated:
            self.incomplete = {"reason": "max_output_tokens"}
        kind = "response.incomplete" if truncated else "response.completed"
        events.append(self._event(kind, response=self.response()))
        return events

    def fail(self, exc: KronkError, path: str) -> list[dict[str, Any]]:
        error = api_error(exc, path)
        self.status = "failed"
        self.error = {"code": error.code or error.type, "message": error.message}
        return [self._event("response.failed", response=self.response())]

    # -- the response object --

    def response(self) -> dict[str, Any]:
        req = self.request
        fmt = req.text.format if req.text and req.text.format else None
        text_format: dict[str, Any] = {"type": "text"}
        if fmt is not None:
            text_format = fmt.model_dump(exclude_none=True, by_alias=True)
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "completed_at": int(time.time()) if self.status == "completed" else None,
            "error": self.error,
            "incomplete_details": self.incomplete,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": self.model,
            "output": [dict(item) for item in self.output],
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {
                "effort": req.reasoning.effort if req.reasoning else None,
                "summary": None,
            },
            "store": False,
            "temperature": req.temperature,
            "text": {"format": text_format},
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "tools": tools,
            "top_p": req.top_p,
            "truncation": "disabled",
            "usage": self.usage,
            "user": req.user,
            "metadata": req.metadata or {},
        }


def _response_usage(usage: CompletionUsage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.prompt_tokens_details.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def _response_logprob(lp: Any) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.bytes or [],
        "top_logprobs": [
            {"token": t.token, "logprob": t.logprob, "bytes": t.bytes or []}
            for t in lp.top_logprobs
        ],
    }


# -- embeddings ----------------------------------------------------------------------------


@router.post("/v1/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    inputs = body.inputs()
    async with await _acquire(request, body.model, "embedding") as lease:
        result = await unless_disconnected(request, lease.kronk.aembed(inputs))
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        n_embd = len(result.data[0].embedding) if result.data else 0
        if body.dimensions is not None:
            _check_dimensions(body.dimensions, n_embd, lease.resolved)
    data = []
    for item in result.data:
        vector = np.asarray(item.embedding, dtype=np.float32)
        if body.dimensions is not None and body.dimensions < n_embd:
            vector = vector[: body.dimensions]
            norm = float(np.linalg.norm(vector))
            if norm > 0 and math.isfinite(norm):
                vector = vector / norm
        encoded: list[float] | str
        if body.encoding_format == "base64":
            encoded = base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
        else:
            encoded = vector.tolist()
        data.append({"object": "embedding", "index": item.index, "embedding": encoded})
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": result.model,
            "usage": result.usage.model_dump(mode="json"),
        }
    )


def _check_dimensions(dimensions: int, n_embd: int, resolved: ResolvedModel) -> None:
    if dimensions > n_embd:
        raise InvalidRequestError(
            f"dimensions must be at most {n_embd} for {resolved.id}", "dimensions"
        )
    # Truncating is only meaningful for models trained for it (Matryoshka embeddings);
    # a catalog entry that knows a model's capabilities says so, else the caller decides.
    caps = resolved.capabilities
    if dimensions < n_embd and caps is not None and "matryoshka" not in caps:
        raise UnsupportedFeatureError(
            f"{resolved.id} does not support shortened embeddings; its vectors have {n_embd} "
            "dimensions",
            "dimensions",
        )


# -- tokens --------------------------------------------------------------------------------


@router.post("/v1/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    text_param = body.text_param()
    async with await _acquire(request, body.model) as lease:
        kronk = lease.kronk
        if text_param is not None:
            add_special = body.add_special
            if add_special is None:
                add_special = bool(body.add_special_tokens)
            tokens = kronk.tokenize(
                text_param[0], add_special=add_special, parse_special=body.parse_special
            )
        else:
            messages = template_messages(body.messages or [])
            prompt = kronk.render_chat(messages)
            tokens = kronk.tokenize(prompt, add_special=False, parse_special=True)
        pieces: list[Any] = tokens
        if body.with_pieces:
            pieces = [{"id": t, "piece": kronk.detokenize([t], special=True)} for t in tokens]
        n_ctx = kronk.engine.n_ctx
    return {"model": lease.model_id, "tokens": pieces, "count": len(tokens), "max_model_len": n_ctx}


@router.post("/v1/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    async with await _acquire(request, body.model) as lease:
        n_vocab = lease.kronk.model.vocab.n_tokens
        bad = [t for t in body.tokens if t >= n_vocab]
        if bad:
            raise InvalidRequestError(
                f"token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})", "tokens"
            )
        text = lease.kronk.detokenize(body.tokens)
    # llama-server calls it content, vLLM prompt: answer both.
    return {"model": lease.model_id, "content": text, "prompt": text}


# -- models, loaded models, health ---------------------------------------------------------


def _model_card(model: ResolvedModel) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": model.owned_by,
    }
    if model.capabilities is not None:
        card["capabilities"] = sorted(model.capabilities)
    return card


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    models = server_state(request).pool.available()
    return {"object": "list", "data": [_model_card(m) for m in models]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    return _model_card(server_state(request).pool.resolve(model_id))


@router.get("/api/ps")
async def loaded_models(request: Request) -> dict[str, Any]:
    """Loaded (and loading) models: slots in use, memory, last use, TTL expiry, and live
    stats (recent speeds, time to first token, prompt-cache hit ratio, KV cache use)."""
    live = request.app.state.telemetry.live()
    return {
        "models": [
            {"name": m.id, **asdict(m), **live.get(m.id, {})}
            for m in server_state(request).pool.loaded()
        ]
    }


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/health/ready", response_model=None)
async def ready(request: Request) -> Response:
    """Readiness: the preloaded model (if any) is loaded and the server is not draining."""
    state = server_state(request)
    body: dict[str, Any] = {"status": "ready" if state.ready else "loading"}
    if state.draining:
        body["status"] = "draining"
    elif state.preload_error is not None:
        body["status"] = "failed"
        body["error"] = state.preload_error
    body["models"] = [m.id for m in state.pool.loaded() if m.status == "ready"]
    return JSONResponse(body, status_code=200 if state.ready else 503)


__all__ = ["EventStreamResponse", "ResponseBuilder", "router", "sse", "unless_disconnected"]
