"""Serving logic of the Ollama-compatible API: chat, generate and embeddings.

Each endpoint resolves the Ollama model name (`name:tag`), leases the model from the
pool, applies the request's `keep_alive` to the pool's idle TTL for that model, and
builds Ollama's replies from `Kronk`'s neutral events: NDJSON lines when streamed (the
default, as in Ollama), one JSON object otherwise. Everything that can fail on bad
input fails before the first byte is sent; a failure mid-stream becomes an
`{"error": ...}` line, which Ollama's clients raise.

Model management (tags, show, ps, pull, ...) is in `models.py`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kronk.errors import ContextFullError, InvalidRequestError, KronkError, UnsupportedFeatureError
from kronk.llama import json_schema_to_grammar
from kronk.llama.grammar import JSON_OBJECT_SCHEMA
from kronk.models.resolver import ResolvedModel
from kronk.pool import ModelLease
from kronk.sdk import Kronk
from kronk.server.common import (
    acquire,
    answer,
    batches,
    server_state,
    start_all,
    streamed,
)
from kronk.server.errors import protocol_route
from kronk.server.ollama.errors import error_message, render
from kronk.server.ollama.protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    GenerationOptions,
    GenerationRequest,
    generation_options,
    keep_alive_seconds,
    resolve_name,
    response_format,
    template_kwargs,
)
from kronk.server.ollama.stream import Kind, ReplyBuilder, nanoseconds, ndjson
from kronk.server.sse import CLIENT_CLOSED, unless_disconnected
from kronk.server.tools import chat_streams, requested_tool_names
from kronk.streams import AsyncEventStream

router = APIRouter(route_class=protocol_route(render))
NDJSON = "application/x-ndjson"


async def _lease(
    request: Request, model: ResolvedModel, keep_alive: float | None, capability: str | None
) -> tuple[ModelLease, float]:
    """Lease `model` (loading it if needed) and apply the request's keep_alive; returns
    the lease and the seconds spent waiting for the load (Ollama's load_duration)."""
    started = time.monotonic()
    lease = await acquire(request, model.id, capability)
    # Every request sets the model's keep-alive, as in Ollama: one without keep_alive
    # puts the server's default back.
    server_state(request).pool.keep_alive(model.id, keep_alive)
    return lease, time.monotonic() - started


async def _only_load(
    request: Request, name: str, model: ResolvedModel, keep_alive: float | None, kind: Kind
) -> Response:
    """A request without a prompt or messages: Ollama's way to load a model ahead of use,
    or, with keep_alive 0, to unload it (a model that is not loaded stays so)."""
    started = time.monotonic()
    builder = ReplyBuilder(name, kind, started=started)
    pool = server_state(request).pool
    if keep_alive == 0:
        pool.keep_alive(model.id, 0)  # unloads once idle, if it is busy now
        await pool.unload(model.id)
        return JSONResponse(builder.loaded("unload"))
    lease, builder.load_seconds = await _lease(request, model, keep_alive, None)
    lease.release()
    return JSONResponse(builder.loaded("load"))


async def _check_thinking(kronk: Kronk, think: object, name: str) -> None:
    """`think` on a model that cannot think is a 400, as in Ollama."""
    if think is None or think is False:
        return
    info = await asyncio.to_thread(kronk.model_info)  # reads metadata: off the loop
    if "reasoning" not in info.capabilities:
        raise UnsupportedFeatureError(f"{name!r} does not support thinking", "think")


def _common_kwargs(options: GenerationOptions, kronk: Kronk) -> dict[str, Any]:
    return {**options.sampling, "max_tokens": options.max_tokens(kronk.engine.n_ctx)}


def _chat_kwargs(
    options: GenerationOptions, kronk: Kronk, fmt: dict[str, Any] | None, body: GenerationRequest
) -> dict[str, Any]:
    """Keyword arguments for `Kronk.achat_events`: options, format and thinking."""
    kwargs = _common_kwargs(options, kronk)
    if fmt is not None:
        kwargs["response_format"] = fmt
    if extra := template_kwargs(body.think):
        kwargs["chat_template_kwargs"] = extra
    return kwargs


def _builder(
    body: GenerationRequest, kind: Kind, started: float, load_seconds: float
) -> ReplyBuilder:
    return ReplyBuilder(
        body.model,
        kind,
        started=started,
        load_seconds=load_seconds,
        show_thinking=body.think is not False,
    )


async def _lines(stream: AsyncEventStream, builder: ReplyBuilder) -> AsyncIterator[bytes]:
    try:
        async for batch in batches(stream):
            for obj in builder.on_events(batch):
                yield ndjson(obj)
    except KronkError as exc:
        yield ndjson({"error": error_message(exc)})


async def _reply(
    request: Request,
    stream: AsyncEventStream,
    lease: ModelLease,
    builder: ReplyBuilder,
    as_stream: bool,
    keep_alive: float | None,
) -> Response:
    """Start the turn (bad input raises here, as a 400) and answer it, streamed or not."""
    await start_all([stream], lease)
    if as_stream:  # NDJSON has no keep-alive line: Ollama's clients parse every line
        return streamed(request, _lines(stream, builder), None, [stream], lease, NDJSON)
    events = await answer(request, stream, lease)
    if keep_alive == 0:  # keep_alive 0: gone before the answer, so the client sees it gone
        await server_state(request).pool.unload(lease.model_id)
    if events is None:
        return Response(status_code=CLIENT_CLOSED)
    builder.on_events(events)
    return JSONResponse(builder.final(streamed=False))


def _checked(
    body: GenerationRequest, request: Request, has_images: bool
) -> tuple[GenerationOptions, float | None, dict[str, Any] | None, ResolvedModel]:
    """What chat and generate check before leasing anything: unsupported fields, options,
    keep_alive, format, the model name (404) and images (400, after the 404)."""
    body.check_unsupported()
    options = generation_options(body.options)
    keep_alive = keep_alive_seconds(body.keep_alive)
    fmt = response_format(body.format)
    model = resolve_name(server_state(request).pool, body.model)
    if has_images:
        raise UnsupportedFeatureError(
            f"{model.id} does not support image input; kronk serves text models", "images"
        )
    return options, keep_alive, fmt, model


# -- chat ----------------------------------------------------------------------------------


@router.post("/api/chat", response_model=None)
async def chat(body: ChatRequest, request: Request) -> Response:
    started = time.monotonic()
    options, keep_alive, fmt, model = _checked(body, request, body.has_images())
    if not body.messages:
        return await _only_load(request, body.model, model, keep_alive, "chat")
    lease, load_seconds = await _lease(request, model, keep_alive, "chat")
    try:
        kronk = lease.kronk
        await _check_thinking(kronk, body.think, body.model)
        kwargs = _chat_kwargs(options, kronk, fmt, body)
        kwargs["tools"] = body.tool_dicts()
        requested = requested_tool_names(body.server_tool_entries())
    except BaseException:
        lease.release()
        raise
    # With server tools (docs/tools.md) the stream is a tool loop, read as one turn.
    state = server_state(request)
    messages = body.template_messages()
    (stream,) = await chat_streams(request, state, lease, messages, [kwargs], requested)
    builder = _builder(body, "chat", started, load_seconds)
    return await _reply(request, stream, lease, builder, body.stream, keep_alive)


# -- generate ------------------------------------------------------------------------------


async def _grammar(fmt: dict[str, Any] | None) -> str | None:
    """`format` as a GBNF grammar, for raw and fill-in-the-middle prompts (which have no
    chat template to put a response_format through). Built in a worker thread."""
    if fmt is None:
        return None
    spec = fmt.get("json_schema")
    schema = spec["schema"] if isinstance(spec, dict) else JSON_OBJECT_SCHEMA
    return await asyncio.to_thread(json_schema_to_grammar, schema)


@router.post("/api/generate", response_model=None)
async def generate(body: GenerateRequest, request: Request) -> Response:
    started = time.monotonic()
    options, keep_alive, fmt, model = _checked(body, request, bool(body.images))
    if body.only_loads:
        return await _only_load(request, body.model, model, keep_alive, "generate")
    plain = bool(body.suffix) or body.raw  # no chat template: the prompt goes in as is
    capability = "fim" if body.suffix else None if body.raw else "chat"
    lease, load_seconds = await _lease(request, model, keep_alive, capability)
    try:
        kronk = lease.kronk
        if plain:
            kwargs = _common_kwargs(options, kronk)
            grammar = await _grammar(fmt)
            if grammar is not None:
                if "grammar" in kwargs:
                    raise InvalidRequestError("use either format or options.grammar", "format")
                kwargs["grammar"] = grammar
            stream = kronk.acomplete_events(body.prompt, suffix=body.suffix or None, **kwargs)
        else:
            await _check_thinking(kronk, body.think, body.model)
            kwargs = _chat_kwargs(options, kronk, fmt, body)
            messages = [{"role": "user", "content": body.prompt}]
            if body.system:
                messages.insert(0, {"role": "system", "content": body.system})
            stream = kronk.achat_events(messages, **kwargs)
    except BaseException:
        lease.release()
        raise
    builder = _builder(body, "generate", started, load_seconds)
    return await _reply(request, stream, lease, builder, body.stream, keep_alive)


# -- embeddings ----------------------------------------------------------------------------


async def _embed(
    kronk: Kronk, texts: list[str], *, truncate: bool, normalize: bool
) -> tuple[list[list[float]], int]:
    """Vectors for `texts` and the tokens they took. With `truncate`, inputs longer than
    the model's embedding context are cut to fit (Ollama's default) instead of refused."""

    def tokenize() -> list[list[int]]:
        return [kronk.tokenize(t, add_special=True) for t in texts]

    tokens = await asyncio.to_thread(tokenize)
    try:
        result = await kronk.aembed(tokens, normalize=normalize)
    except ContextFullError as exc:
        if not truncate:
            raise InvalidRequestError(
                f"{exc}; set truncate to true to cut inputs to fit", "input"
            ) from None
        tokens = [t[: exc.n_ctx] for t in tokens]
        result = await kronk.aembed(tokens, normalize=normalize)
    return [item.embedding for item in result.data], sum(map(len, tokens))


def _shorten(vector: list[float], dimensions: int | None) -> list[float]:
    """The first `dimensions` values, normalised again (Ollama's `dimensions`)."""
    if dimensions is None or dimensions >= len(vector):
        return vector
    cut = np.asarray(vector[:dimensions], dtype=np.float32)
    norm = float(np.linalg.norm(cut))
    if norm > 0 and math.isfinite(norm):
        cut = cut / norm
    return [float(x) for x in cut]


@router.post("/api/embed", response_model=None)
async def embed(body: EmbedRequest, request: Request) -> Response:
    started = time.monotonic()
    generation_options(body.options)  # checked (unknown options are a 400), not used
    keep_alive = keep_alive_seconds(body.keep_alive)
    model = resolve_name(server_state(request).pool, body.model)
    texts = body.inputs()
    lease, load_seconds = await _lease(request, model, keep_alive, "embedding")
    async with lease:
        if not texts:  # Ollama loads the model and answers with no vectors
            vectors: list[list[float]] | None = []
            n_tokens = 0
        else:
            work = _embed(lease.kronk, texts, truncate=body.truncate, normalize=True)
            done = await unless_disconnected(request, work)
            if done is None:
                return Response(status_code=CLIENT_CLOSED)
            vectors, n_tokens = done
    assert vectors is not None
    if body.dimensions is not None and vectors and body.dimensions > len(vectors[0]):
        raise InvalidRequestError(
            f"dimensions must be at most {len(vectors[0])} for {model.id}", "dimensions"
        )
    return JSONResponse(
        {
            "model": body.model,
            "embeddings": [_shorten(v, body.dimensions) for v in vectors],
            "total_duration": nanoseconds(time.monotonic() - started),
            "load_duration": nanoseconds(load_seconds),
            "prompt_eval_count": n_tokens,
        }
    )


@router.post("/api/embeddings", response_model=None)
async def embeddings(body: EmbeddingsRequest, request: Request) -> Response:
    """The older endpoint: one prompt, one vector, not normalised (as Ollama's)."""
    generation_options(body.options)
    keep_alive = keep_alive_seconds(body.keep_alive)
    model = resolve_name(server_state(request).pool, body.model)
    lease, _ = await _lease(request, model, keep_alive, "embedding")
    async with lease:
        if not body.prompt:
            return JSONResponse({"embedding": []})
        work = _embed(lease.kronk, [body.prompt], truncate=True, normalize=False)
        done = await unless_disconnected(request, work)
    if done is None:
        return Response(status_code=CLIENT_CLOSED)
    return JSONResponse({"embedding": done[0][0]})


__all__ = ["router"]
