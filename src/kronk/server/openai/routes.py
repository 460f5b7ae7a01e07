"""Serving logic of the OpenAI-compatible API.

Each endpoint leases its model from the pool, turns the validated request into
`Kronk` event streams (prepared in worker threads), and builds OpenAI's objects from
the neutral events with `kronk.openai_objects`, as JSON or server-sent events.
Everything that can fail on bad input fails before the first byte is sent, so errors
get their proper status; a failure mid-stream becomes an error event. Every route
also answers without the `/v1` prefix, as llama-server does.

A client that goes away frees its slot at once: streams watch for the ASGI
disconnect message and close their event streams (which cancels the requests in the
engine); non-streamed requests race their work against the disconnect.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kronk.chat.events import ChatEvent
from kronk.errors import InvalidRequestError, KronkError, UnsupportedFeatureError
from kronk.models.aliases import AliasResolver, is_glob
from kronk.models.resolver import ResolvedModel
from kronk.openai_objects import ChatCompletionBuilder, CompletionBuilder
from kronk.server.common import (
    acquire,
    batches,
    close_all,
    collect,
    server_state,
    start_all,
    streamed,
)
from kronk.server.errors import protocol_route
from kronk.server.openai.errors import error_body, render
from kronk.server.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    template_messages,
)
from kronk.server.sse import (
    CLIENT_CLOSED,
    SSE_DONE,
    sse,
    sse_comment,
    unless_disconnected,
)
from kronk.server.tools import chat_streams, may_get_tools, requested_tool_names
from kronk.streams import AsyncEventStream
from kronk.types import ChatCompletion, ChatCompletionChunk, Completion, CompletionUsage

T = TypeVar("T")
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

router = APIRouter(route_class=protocol_route(render))
KEEPALIVE = sse_comment("keep-alive")


def openai_route(path: str, method: str = "POST") -> Callable[[Endpoint], Endpoint]:
    """Register a route at `/v1{path}` and, for clients with a bare base URL, `{path}`
    (both in the OpenAPI schema: the API fuzz covers what is served)."""

    def register(endpoint: Endpoint) -> Endpoint:
        for served in (f"/v1{path}", path):
            router.add_api_route(served, endpoint, methods=[method], response_model=None)
        return endpoint

    return register


def _prune(value: Any) -> Any:
    """Drop None-valued keys, recursively (OpenAI leaves unset delta fields out)."""
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def choice_kwargs(kwargs: dict[str, Any], index: int) -> dict[str, Any]:
    """The parameters of choice `index` of n: with a seed, each choice gets its own."""
    if index == 0 or kwargs.get("seed") is None:
        return kwargs
    return {**kwargs, "seed": (kwargs["seed"] + index) % 2**32}


def sum_usage(usages: Sequence[CompletionUsage], *, same_prompt: bool) -> CompletionUsage:
    """Usage of several choices: completion tokens add up; a prompt shared by all the
    choices (n > 1) counts once, as OpenAI counts it."""
    if len(usages) == 1:
        return usages[0]
    total = usages[0].model_copy(deep=True)
    for u in usages[1:]:
        if not same_prompt:
            total.prompt_tokens += u.prompt_tokens
            total.prompt_tokens_details.cached_tokens += u.prompt_tokens_details.cached_tokens
        total.completion_tokens += u.completion_tokens
        total.completion_tokens_details.reasoning_tokens += (
            u.completion_tokens_details.reasoning_tokens
        )
        total.draft_tokens += u.draft_tokens  # each choice drafted for itself
        total.draft_accepted += u.draft_accepted
    total.total_tokens = total.prompt_tokens + total.completion_tokens
    return total


async def merge(streams: Sequence[AsyncEventStream]) -> AsyncIterator[tuple[int, list[ChatEvent]]]:
    """The event batches of several streams as they come, each with its stream's index."""
    if len(streams) == 1:  # the usual case: no task and no wait per batch
        async for batch in batches(streams[0]):
            yield 0, batch
        return
    iterators = [batches(s) for s in streams]
    pending: dict[asyncio.Future[list[ChatEvent]], int] = {
        asyncio.ensure_future(anext(it)): i for i, it in enumerate(iterators)
    }
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                i = pending.pop(future)
                try:
                    batch = future.result()
                except StopAsyncIteration:
                    continue
                pending[asyncio.ensure_future(anext(iterators[i]))] = i
                yield i, batch
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def chunk_json(chunk: ChatCompletionChunk | Completion, include_usage: bool) -> dict[str, Any]:
    """A chunk as OpenAI streams it: unset delta fields left out, usage only in its own
    final chunk (and as null before it when the client asked for usage)."""
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
        "system_fingerprint": chunk.system_fingerprint,
        "choices": [],
        "usage": usage.model_dump(mode="json"),
    }


Builder = ChatCompletionBuilder | CompletionBuilder


async def _stream_choices(
    streams: Sequence[AsyncEventStream],
    builders: Sequence[Builder],
    include_usage: bool,
    same_prompt: bool,
    path: str,
) -> AsyncIterator[bytes]:
    """Server-sent chunks of every choice, as each choice's events come."""
    usages: list[CompletionUsage] = []
    last: ChatCompletionChunk | Completion | None = None
    try:
        for builder in builders:
            for chunk in builder.first_chunks():
                yield sse(chunk_json(chunk, include_usage))
        async for index, batch in merge(streams):
            chunks = builders[index].on_events(batch)
            for chunk in chunks:
                last = chunk
                if chunk.usage is not None:
                    usages.append(chunk.usage)
            if chunks:  # one write per engine step, however many chunks it made
                yield b"".join(sse(chunk_json(chunk, include_usage)) for chunk in chunks)
        if include_usage and last is not None and usages:
            yield sse(usage_chunk(last, sum_usage(usages, same_prompt=same_prompt)))
    except KronkError as exc:
        yield sse(error_body(exc, path))
    yield SSE_DONE


async def _answer(
    request: Request,
    streams: Sequence[AsyncEventStream],
    builders: Sequence[Builder],
    lease_release: Callable[[], None],
) -> bool:
    """Run every choice to its end (False if the client went away first)."""
    try:
        done = await unless_disconnected(request, asyncio.gather(*map(collect, streams)))
    finally:
        await close_all(streams)
        lease_release()
    if done is None:
        return False
    for builder, events in zip(builders, done, strict=True):
        builder.on_events(events)
    return True


# -- chat completions ----------------------------------------------------------------------


@openai_route("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    messages = body.messages_for_template()
    kwargs = body.kronk_kwargs(may_get_tools(server_state(request).settings))
    requested = requested_tool_names(body.server_tool_entries())
    lease = await acquire(request, body.model, "chat")
    # With server tools (docs/tools.md) each choice is a tool loop, read as one stream.
    choices = [choice_kwargs(kwargs, i) for i in range(body.n)]
    state = server_state(request)
    streams = await chat_streams(request, state, lease, messages, choices, requested)
    await start_all(streams, lease)
    first = ChatCompletionBuilder(lease.model_id)
    builders = [first] + [
        ChatCompletionBuilder(lease.model_id, index=i, id=first.id) for i in range(1, body.n)
    ]
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _stream_choices(streams, builders, include_usage, True, request.url.path)
        return streamed(request, events, KEEPALIVE, streams, lease)
    if not await _answer(request, streams, builders, lease.release):
        return Response(status_code=CLIENT_CLOSED)
    results = [b.result() for b in builders if isinstance(b, ChatCompletionBuilder)]
    return JSONResponse(_chat_json(results))


def _chat_json(results: list[ChatCompletion]) -> dict[str, Any]:
    data = results[0].model_dump(mode="json")
    data["choices"] = []
    for result in results:
        choice = result.choices[0].model_dump(mode="json")
        message = _prune(choice["message"])
        message.setdefault("content", None)  # OpenAI sends content: null with tool calls
        choice["message"] = message
        data["choices"].append(choice)
    usage = sum_usage([r.usage for r in results], same_prompt=True)
    data["usage"] = usage.model_dump(mode="json")
    return data


# -- completions (legacy) ------------------------------------------------------------------


@openai_route("/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    prompts = body.prompts()
    kwargs = body.kronk_kwargs()
    lease = await acquire(request, body.model)
    kronk = lease.kronk
    streams: list[AsyncEventStream] = []
    builders: list[Builder] = []
    try:
        for prompt in prompts:
            echo = kronk.echo_text(prompt, kwargs)
            for i in range(body.n):
                builders.append(CompletionBuilder(lease.model_id, echo=echo, index=len(builders)))
                choice = choice_kwargs(kwargs, i)
                streams.append(kronk.acomplete_events(prompt, suffix=body.suffix, **choice))
    except BaseException:
        lease.release()
        raise
    await start_all(streams, lease)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _stream_choices(streams, builders, include_usage, False, request.url.path)
        return streamed(request, events, KEEPALIVE, streams, lease)
    if not await _answer(request, streams, builders, lease.release):
        return Response(status_code=CLIENT_CLOSED)
    results = [b.result() for b in builders if isinstance(b, CompletionBuilder)]
    data = results[0].model_dump(mode="json")
    data["choices"] = [r.choices[0].model_dump(mode="json") for r in results]
    usage = _completion_usage(results, body.n)
    data["usage"] = usage.model_dump(mode="json")
    return JSONResponse(data)


def _completion_usage(results: list[Completion], n: int) -> CompletionUsage:
    """Usage over prompts x n choices: each prompt counted once."""
    per_prompt = [
        sum_usage([r.usage for r in results[i : i + n] if r.usage is not None], same_prompt=True)
        for i in range(0, len(results), n)
    ]
    return sum_usage(per_prompt, same_prompt=False)


# -- embeddings ----------------------------------------------------------------------------


@openai_route("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    inputs = body.inputs()
    async with await acquire(request, body.model, "embedding") as lease:
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


@openai_route("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict[str, Any]:
    text_param = body.text_param()
    messages = template_messages(body.messages or []) if text_param is None else None
    async with await acquire(request, body.model) as lease:
        kronk = lease.kronk

        def run() -> tuple[list[int], list[Any]]:  # in a worker thread: prompts can be long
            if messages is not None:
                prompt = kronk.render_chat(messages)
                tokens = kronk.tokenize(prompt, add_special=False, parse_special=True)
            else:
                assert text_param is not None
                add_special = body.add_special
                if add_special is None:
                    add_special = bool(body.add_special_tokens)
                tokens = kronk.tokenize(
                    text_param[0], add_special=add_special, parse_special=body.parse_special
                )
            if not body.with_pieces:
                return tokens, list(tokens)
            return tokens, [{"id": t, "piece": kronk.detokenize([t], special=True)} for t in tokens]

        tokens, pieces = await asyncio.to_thread(run)
        n_ctx = kronk.engine.n_ctx
    return {"model": lease.model_id, "tokens": pieces, "count": len(tokens), "max_model_len": n_ctx}


@openai_route("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict[str, Any]:
    async with await acquire(request, body.model) as lease:
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


@openai_route("/models", "GET")
async def list_models(request: Request) -> dict[str, Any]:
    """The models on disk, then each plain alias (a glob is no model name to list)."""
    pool = server_state(request).pool
    models = pool.available()
    cards = [_model_card(m) for m in models]
    known = {m.id: m for m in models}
    aliases = pool.resolver.aliases if isinstance(pool.resolver, AliasResolver) else {}
    for alias, target in aliases.items():
        if not is_glob(alias) and target in known and alias not in known:
            cards.append({**_model_card(known[target]), "id": alias, "alias_of": target})
    return {"object": "list", "data": cards}


@openai_route("/models/{model_id:path}", "GET")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    return _model_card(server_state(request).pool.resolve(model_id))


__all__ = ["chunk_json", "merge", "openai_route", "router", "sum_usage", "usage_chunk"]
