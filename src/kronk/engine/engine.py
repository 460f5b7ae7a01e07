"""The engine: one thread owns a model's llama context and runs continuous batching.

Each step builds one batch holding the next token of every generating sequence plus
as much pending prompt as fits (chunked prefill), decodes it once, and samples every
sequence that produced logits. A request joins at the next step after a slot frees
up, so new requests start while others stream and a long prompt never stalls them.

Everything else talks to the thread through a locked queue; events flow back
through each request's sink. Per-step Python work is O(active sequences).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from kronk.engine.detokenizer import IncrementalDecoder
from kronk.engine.prompt_cache import PromptCache, common_prefix
from kronk.engine.request import (
    MAX_STOP_STRINGS,
    MAX_TOP_LOGPROBS,
    Admitted,
    Event,
    EventSink,
    Failed,
    Finished,
    FinishReason,
    GenerationRequest,
    RequestHandle,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from kronk.engine.stops import StopMatcher
from kronk.errors import (
    ContextFullError,
    EngineBusyError,
    EngineClosedError,
    InvalidRequestError,
    KronkError,
    UnsupportedFeatureError,
)
from kronk.llama import Batch, ContextParams, LlamaContext, LlamaModel, SamplerChain
from kronk.telemetry.tracing import current_span

log = logging.getLogger("kronk.engine")

# Told about every request that ends (telemetry); runs on the engine thread, or on the
# submitting thread for a request that submit() rejects.
RequestListener = Callable[[GenerationRequest, Finished | Failed], None]


@dataclass(frozen=True)
class EngineConfig:
    """How one loaded model is served."""

    n_ctx: int = 4096  # context window of each slot (one request), in tokens
    n_seq_max: int = 4  # parallel slots
    n_batch: int = 512  # tokens per decode step (generation tokens + prefill chunk)
    n_ubatch: int = 512
    n_threads: int | None = None
    n_threads_batch: int | None = None
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: str = "auto"
    max_queue: int = 64  # requests waiting for a slot before submit() says busy
    embedding_batch: int = 8  # inputs embedded together in one decode
    # Host memory for KV states of long prompts that lost their slot (0 disables).
    prompt_cache_bytes: int = 1 << 30
    prompt_cache_min_tokens: int = 64  # shorter prefixes are cheap to recompute
    # Copy another slot's KV (or restore a saved state) when it saves at least this many
    # tokens of prefill over the slot's own cache.
    shared_prefix_min_tokens: int = 32


@dataclass
class EngineStats:
    slots: int
    slots_busy: int
    queued: int
    n_ctx: int
    requests_total: int
    tokens_generated: int
    tokens_prefilled: int
    tokens_cached: int
    prompt_cache_entries: int = 0
    prompt_cache_bytes: int = 0
    prompt_cache_hits: int = 0
    kv_cache_bytes: int = 0  # the whole KV cache, all slots
    kv_bytes_per_token: float = 0.0
    slot_tokens: list[int] = field(default_factory=list)  # tokens each slot's KV cache holds
    steps: int = 0
    step_seconds: float = 0.0  # whole decode steps: Python bookkeeping + llama_decode + sampling
    decode_seconds: float = 0.0  # inside llama_decode alone
    sample_seconds: float = 0.0  # inside llama.cpp's samplers


@dataclass
class _Active:
    """A request in a slot: its progress, sampler and output processing."""

    handle: RequestHandle
    chain: SamplerChain
    submitted: float
    admitted: float
    prompt_done: int  # prompt tokens already in the KV cache
    cached: int
    decoder: IncrementalDecoder = field(default_factory=IncrementalDecoder)
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    generated: int = 0
    next_token: int | None = None  # sampled, not yet fed to the model
    batch_index: int | None = None  # where its logits are in the current batch
    first_token_at: float = 0.0
    last_token_at: float = 0.0
    cache_lookup_seconds: float = 0.0  # telemetry: choosing the slot and placing cached KV
    detokenize_seconds: float = 0.0  # telemetry: pieces, UTF-8 assembly and stop matching

    @property
    def request(self) -> GenerationRequest:
        return self.handle.request


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what this sequence's KV cache holds
    active: _Active | None = None


@dataclass
class _EmbedJob:
    inputs: list[list[int]]
    normalize: bool
    future: concurrent.futures.Future[list[npt.NDArray[np.float32]]]


class Engine:
    """Serves generation and embedding requests for one loaded model."""

    def __init__(self, model: LlamaModel, config: EngineConfig | None = None) -> None:
        self.model = model
        self.vocab = model.vocab
        self.config = config = config or EngineConfig()
        if config.n_ctx < 8:
            raise InvalidRequestError("n_ctx must be at least 8 tokens", "n_ctx")
        if config.max_queue < 0:
            raise InvalidRequestError("max_queue must be >= 0", "max_queue")
        self.embedding_only = model.is_embedding_only
        self._ctx: LlamaContext | None = None
        self._emb_ctx: LlamaContext | None = None
        if not self.embedding_only:
            # One KV stream per slot (kv_unified=False): each request gets the full
            # n_ctx window and sequences never share attention buffers.
            self._ctx = LlamaContext(
                model,
                ContextParams(
                    n_ctx=config.n_ctx * config.n_seq_max,
                    n_batch=config.n_batch,
                    n_ubatch=config.n_ubatch,
                    n_seq_max=config.n_seq_max,
                    n_threads=config.n_threads,
                    n_threads_batch=config.n_threads_batch,
                    type_k=config.type_k,
                    type_v=config.type_v,
                    flash_attn=config.flash_attn,  # type: ignore[arg-type]
                    kv_unified=False,
                ),
            )
            # llama.cpp pads the KV cache up; the window we promise is what was asked for.
            self.n_ctx = min(config.n_ctx, self._ctx.n_ctx_seq)
            self._batch = Batch(self._ctx.n_batch, 1)
        else:
            self._emb_ctx = self._new_embedding_context()
            self.n_ctx = self._emb_ctx.n_ctx
        self._slots = [_Slot(i) for i in range(config.n_seq_max)]
        self._prompt_cache = PromptCache(config.prompt_cache_bytes, config.prompt_cache_min_tokens)
        self._lock = threading.Condition()
        self._queue: deque[tuple[RequestHandle, SamplerChain, float]] = deque()
        self._jobs: deque[_EmbedJob] = deque()
        self._closing = False
        self._listeners: list[RequestListener] = []
        self._stats = EngineStats(config.n_seq_max, 0, 0, self.n_ctx, 0, 0, 0, 0)
        self._thread = threading.Thread(
            target=self._run, name=f"kronk-engine-{model.name}", daemon=True
        )
        self._thread.start()

    # -- public API (any thread) ---------------------------------------------------

    def submit(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        """Queue a request. Raises at once for bad input, a full context or a full queue;
        everything later arrives as events on `sink` (called on the engine thread)."""
        try:
            return self._enqueue(request, sink)
        except KronkError as exc:
            self._notify(request, Failed(exc))  # listeners count rejections as errors
            raise

    def _enqueue(self, request: GenerationRequest, sink: EventSink) -> RequestHandle:
        if self.embedding_only:
            raise UnsupportedFeatureError(
                f"{self.model.name} is an embedding model; it cannot generate text", "model"
            )
        self._validate(request)
        if request.span is None:
            request.span = current_span()
        extra_bias = {t: -math.inf for t in self.vocab.eog_tokens} if request.ignore_eos else None
        chain = SamplerChain(self.vocab, request.sampling, extra_bias=extra_bias, n_ctx=self.n_ctx)
        handle = RequestHandle(request, sink, self._cancel_queued)
        with self._lock:
            if self._closing:
                chain.close()
                raise EngineClosedError("the model is being unloaded")
            free = sum(1 for s in self._slots if s.active is None)
            if len(self._queue) >= free + self.config.max_queue:
                chain.close()
                raise EngineBusyError(
                    f"server busy: all {len(self._slots)} slots in use and "
                    f"{len(self._queue)} requests waiting"
                )
            self._queue.append((handle, chain, time.perf_counter()))
            self._lock.notify()
        return handle

    def embed(
        self, inputs: list[list[int]], *, normalize: bool = True
    ) -> list[npt.NDArray[np.float32]]:
        """Embed token sequences (batched together on the engine thread)."""
        if not inputs:
            raise InvalidRequestError("input must not be empty", "input")
        limit = self._embedding_limit()
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise InvalidRequestError(f"input[{i}] is empty", "input")
            if len(tokens) > limit:
                raise ContextFullError(
                    f"input[{i}] has {len(tokens)} tokens; the embedding context holds {limit}",
                    len(tokens),
                    limit,
                )
            self._check_token_ids(tokens, "input")
        future: concurrent.futures.Future[list[npt.NDArray[np.float32]]] = (
            concurrent.futures.Future()
        )
        with self._lock:
            if self._closing:
                raise EngineClosedError("the model is being unloaded")
            self._jobs.append(_EmbedJob(inputs, normalize, future))
            self._lock.notify()
        return future.result()

    def add_listener(self, listener: RequestListener) -> None:
        """Call `listener` (on the engine thread) whenever a request ends: telemetry hooks."""
        self._listeners.append(listener)

    def stats(self) -> EngineStats:
        with self._lock:
            self._stats.slots_busy = sum(1 for s in self._slots if s.active is not None)
            self._stats.queued = len(self._queue)
            self._stats.prompt_cache_entries = len(self._prompt_cache)
            self._stats.prompt_cache_bytes = self._prompt_cache.bytes
            self._stats.prompt_cache_hits = self._prompt_cache.hits
            self._stats.slot_tokens = [len(s.tokens) for s in self._slots]
            if self._ctx is not None:
                self._stats.kv_cache_bytes = self._ctx.kv_cache_bytes
                self._stats.kv_bytes_per_token = self._ctx.kv_bytes_per_token
            return EngineStats(**vars(self._stats))

    def close(self) -> None:
        """Stop the thread: queued requests fail, running ones end as cancelled."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._lock.notify()
        self._thread.join()

    # -- validation --------------------------------------------------------------

    def _check_token_ids(self, tokens: list[int] | tuple[int, ...] | object, param: str) -> None:
        n_vocab = self.vocab.n_tokens
        assert isinstance(tokens, list | tuple)
        if tokens and (min(tokens) < 0 or max(tokens) >= n_vocab):
            raise InvalidRequestError(
                f"{param} has token ids outside the vocabulary (0..{n_vocab - 1})", param
            )

    def _validate(self, request: GenerationRequest) -> None:
        prompt = list(request.prompt)
        if not prompt:
            raise InvalidRequestError("the prompt is empty", "prompt")
        self._check_token_ids(prompt, "prompt")
        if len(prompt) >= self.n_ctx:
            raise ContextFullError(
                f"the prompt has {len(prompt)} tokens but the context holds {self.n_ctx} "
                "(including at least one generated token); shorten the prompt or raise n_ctx",
                len(prompt),
                self.n_ctx,
            )
        if request.max_tokens is not None and request.max_tokens < 1:
            raise InvalidRequestError(
                f"max_tokens must be at least 1; got {request.max_tokens}", "max_tokens"
            )
        if request.logprobs is not None and not 0 <= request.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(
                f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}; got {request.logprobs}",
                "top_logprobs",
            )
        if len(request.stop) > MAX_STOP_STRINGS:
            raise InvalidRequestError(
                f"at most {MAX_STOP_STRINGS} stop strings are allowed", "stop"
            )
        if any(not isinstance(s, str) for s in request.stop):
            raise InvalidRequestError("stop strings must be strings", "stop")

    # -- the engine thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    while not (self._closing or self._queue or self._jobs or self._any_active()):
                        self._lock.wait()
                    if self._closing:
                        break
                    jobs = list(self._jobs)
                    self._jobs.clear()
                    self._admit_queued()
                for job in jobs:
                    self._run_embed_job(job)
                if self._any_active():
                    self._step()
        except BaseException:  # a bug here must not leave callers waiting forever
            log.exception("engine thread crashed")
            raise
        finally:
            self._shutdown()

    def _any_active(self) -> bool:
        return any(s.active is not None for s in self._slots)

    def _cancel_queued(self, handle: RequestHandle) -> None:
        with self._lock:
            for item in self._queue:
                if item[0] is handle:
                    self._queue.remove(item)
                    item[1].close()
                    now = time.perf_counter()
                    usage = Usage(len(handle.request.prompt), 0, 0, now - item[2], 0.0, 0.0, 0.0)
                    self._emit_to(handle, Finished("cancelled", usage))
                    return
            self._lock.notify()  # wake the loop so a running request is dropped promptly

    def _admit_queued(self) -> None:
        """Move queued requests into free slots (called with the lock held)."""
        while self._queue:
            free = [s for s in self._slots if s.active is None]
            if not free:
                return
            handle, chain, submitted = self._queue.popleft()
            prompt = list(handle.request.prompt)
            lookup_start = time.perf_counter()
            slot = self._choose_slot(free)
            keep = self._place(slot, prompt)
            admitted = time.perf_counter()
            active = _Active(
                handle=handle,
                chain=chain,
                submitted=submitted,
                admitted=admitted,
                prompt_done=keep,
                cached=keep,
                stops=StopMatcher(list(handle.request.stop)),
                cache_lookup_seconds=admitted - lookup_start,
            )
            slot.active = active
            self._stats.requests_total += 1
            self._stats.tokens_cached += keep
            self._emit(active, Admitted(len(prompt), keep))

    @staticmethod
    def _choose_slot(free: list[_Slot]) -> _Slot:
        """The lowest-numbered free slot. With a KV stream per slot, llama.cpp decodes a
        batch in one pass per run of consecutive sequence ids, so running sequences packed
        at the lowest ids cost one pass a step, not one each. `_place` then brings the
        prompt's cached prefix into that slot from wherever kronk holds it."""
        return min(free, key=lambda s: s.seq_id)

    def _place(self, slot: _Slot, prompt: list[int]) -> int:
        """Prepare `slot`'s KV cache for `prompt`, reusing every prefix kronk still holds.

        In order: the slot's own cache; another slot sharing a longer prefix (its KV is
        copied, as llama.cpp's `parallel -pps` does for a shared system prompt); a state
        saved in host memory. Returns how many prompt tokens need no prefill.
        """
        assert self._ctx is not None
        ctx = self._ctx
        own = common_prefix(slot.tokens, prompt)
        if (
            own < len(slot.tokens)
            and self._prompt_cache.worth_saving(slot.tokens)
            and not self._held_elsewhere(slot)
        ):
            # The slot is about to lose the rest of a long sequence: keep it in host memory.
            self._prompt_cache.put(slot.tokens, ctx.seq_state_get(slot.seq_id))
        others = [s for s in self._slots if s is not slot and s.tokens]
        donor = max(others, key=lambda s: common_prefix(s.tokens, prompt), default=None)
        donor_len = common_prefix(donor.tokens, prompt) if donor is not None else 0
        saved, saved_len = self._prompt_cache.best_match(prompt)
        gain = self.config.shared_prefix_min_tokens
        if donor is not None and donor_len >= own + gain and donor_len >= saved_len:
            ctx.seq_remove(slot.seq_id)
            ctx.seq_copy(donor.seq_id, slot.seq_id)  # whole sequence; trimmed below
            slot.tokens = list(donor.tokens)
        elif saved is not None and saved_len >= own + gain:
            ctx.seq_remove(slot.seq_id)
            if ctx.seq_state_set(slot.seq_id, saved.state):
                slot.tokens = list(saved.tokens)
                self._prompt_cache.take(saved)
            else:
                slot.tokens = []
        return self._trim(slot, prompt)

    def _held_elsewhere(self, slot: _Slot) -> bool:
        """Whether another slot's cache holds all of `slot`'s tokens (e.g. it was copied)."""
        n = len(slot.tokens)
        return any(s is not slot and s.tokens[:n] == slot.tokens for s in self._slots)

    def _trim(self, slot: _Slot, prompt: list[int]) -> int:
        """Trim the slot's KV cache to the part of `prompt` it holds; return its length."""
        assert self._ctx is not None
        keep = common_prefix(slot.tokens, prompt)
        keep = min(keep, len(prompt) - 1)  # the last prompt token must be decoded for logits
        n_swa = self.model.n_swa
        if keep > 0 and n_swa > 0 and self._ctx.seq_pos_min(slot.seq_id) > max(0, keep - n_swa):
            keep = 0  # the sliding window already dropped positions the new tokens would attend to
        if keep == 0 or not self._ctx.seq_remove(slot.seq_id, keep, -1):
            self._ctx.seq_remove(slot.seq_id)
            keep = 0
        del slot.tokens[keep:]
        return keep

    def _step(self) -> None:
        assert self._ctx is not None
        step_start = time.perf_counter()
        ctx, batch = self._ctx, self._batch
        batch.clear()
        # Drop cancelled requests first so their slots don't cost a decode.
        for slot in self._slots:
            if slot.active is not None and slot.active.handle.cancelled:
                self._finish(slot, "cancelled")
        active = [(s, s.active) for s in self._slots if s.active is not None]
        # Prompt chunks share what the generating sequences leave of the batch, oldest
        # request first (chunked prefill: a long prompt never stalls the streams).
        prefilling = sorted(
            ((s, a) for s, a in active if a.next_token is None), key=lambda p: p[1].admitted
        )
        budget = batch.capacity - (len(active) - len(prefilling))
        chunks: dict[int, int] = {}  # seq id -> prompt tokens it prefills this step
        for slot, a in prefilling:
            chunks[slot.seq_id] = take = min(budget, len(a.request.prompt) - a.prompt_done)
            budget -= take
        # Tokens go in sequence-id order: with a KV stream per slot, llama.cpp splits a
        # batch into one compute pass per run of consecutive sequence ids.
        fed: list[tuple[_Slot, list[int]]] = []
        for slot, a in active:
            if a.next_token is not None:
                a.batch_index = batch.add(a.next_token, len(slot.tokens), slot.seq_id, True)
                fed.append((slot, [a.next_token]))
            elif chunks[slot.seq_id] > 0:
                chunk = list(a.request.prompt[a.prompt_done : a.prompt_done + chunks[slot.seq_id]])
                completes = a.prompt_done + len(chunk) == len(a.request.prompt)
                index = batch.add_sequence(
                    chunk, len(slot.tokens), slot.seq_id, output_last=completes
                )
                a.batch_index = index if completes else None
                a.prompt_done += len(chunk)
                fed.append((slot, chunk))
        if batch.n_tokens == 0:
            return
        decode_start = time.perf_counter()
        try:
            ctx.decode(batch)
        except KronkError as exc:
            for slot, _ in fed:
                self._fail(slot, exc)
            return
        now = time.perf_counter()
        self._stats.decode_seconds += now - decode_start
        for slot, tokens in fed:
            slot.tokens.extend(tokens)
            if slot.active is not None and slot.active.next_token is None:
                self._stats.tokens_prefilled += len(tokens)
        for slot, _ in fed:
            sampled = slot.active
            if sampled is not None and sampled.batch_index is not None:
                self._sample(slot, sampled, sampled.batch_index, now)
        self._stats.steps += 1
        self._stats.step_seconds += time.perf_counter() - step_start

    def _sample(self, slot: _Slot, a: _Active, index: int, now: float) -> None:
        assert self._ctx is not None
        request = a.request
        sample_start = time.perf_counter()
        try:
            token = a.chain.sample(self._ctx.ptr, index)
        except KronkError as exc:  # e.g. a grammar with no way forward: the caller's error
            self._fail(slot, exc)
            return
        except Exception as exc:  # a sampler must never take the engine down
            self._fail(slot, KronkError(f"sampling failed: {exc}"))
            return
        self._stats.sample_seconds += time.perf_counter() - sample_start
        a.generated += 1
        self._stats.tokens_generated += 1
        if a.generated == 1:
            a.first_token_at = now
        a.last_token_at = now
        logprobs = (
            self._logprobs(index, token, request.logprobs) if request.logprobs is not None else []
        )
        if self.vocab.is_eog(token) and not request.ignore_eos:
            if logprobs:
                self._emit(a, TextDelta("", logprobs))
            self._finish(slot, "stop")
            return
        detokenize_start = time.perf_counter()
        piece = self.vocab.piece(token, special=token in request.render_special)
        text, stopped = a.stops.push(a.decoder.push(piece))
        a.detokenize_seconds += time.perf_counter() - detokenize_start
        if text or logprobs:
            self._emit(a, TextDelta(text, logprobs))
        if stopped:
            self._finish(slot, "stop")
        elif a.generated == request.max_tokens or len(slot.tokens) + 1 >= self.n_ctx:
            self._finish(slot, "length")
        else:
            a.next_token = token

    def _logprobs(self, index: int, token: int, top_n: int) -> list[TokenLogprob]:
        assert self._ctx is not None
        logits = self._ctx.logits(index).astype(np.float64)
        shifted = logits - logits.max()
        log_probs = shifted - math.log(float(np.exp(shifted).sum()))
        top: list[TopLogprob] = []
        if top_n > 0:
            ids = np.argpartition(-log_probs, top_n)[:top_n]
            ids = ids[np.argsort(-log_probs[ids])]
            top = [self._top_logprob(int(t), float(log_probs[t])) for t in ids]
        chosen = self._top_logprob(token, float(log_probs[token]))
        return [TokenLogprob(chosen.token, token, chosen.logprob, chosen.bytes, top)]

    def _top_logprob(self, token: int, logprob: float) -> TopLogprob:
        piece = self.vocab.piece(token, special=True)
        return TopLogprob(piece.decode("utf-8", errors="replace"), token, logprob, list(piece))

    def _finish(self, slot: _Slot, reason: FinishReason) -> None:
        a = slot.active
        assert a is not None
        slot.active = None
        a.chain.close()
        if reason != "cancelled" and not a.stops.stopped:
            # Release what was held back for a possible stop string or split character.
            tail, stopped = a.stops.push(a.decoder.flush())
            if not stopped:
                tail += a.stops.flush()
            if tail:
                self._emit(a, TextDelta(tail))
        first = a.first_token_at or time.perf_counter()
        usage = Usage(
            prompt_tokens=len(a.request.prompt),
            completion_tokens=a.generated,
            cached_tokens=a.cached,
            queue_seconds=a.admitted - a.submitted,
            time_to_first_token=(first - a.submitted) if a.generated else 0.0,
            prompt_seconds=(first - a.admitted) if a.generated else 0.0,
            generation_seconds=a.last_token_at - a.first_token_at if a.generated else 0.0,
            slot=slot.seq_id,
            cache_lookup_seconds=a.cache_lookup_seconds,
            detokenize_seconds=a.detokenize_seconds,
        )
        self._emit(a, Finished(reason, usage, a.stops.matched if reason == "stop" else None))

    def _fail(self, slot: _Slot, error: KronkError) -> None:
        a = slot.active
        assert a is not None
        slot.active = None
        a.chain.close()
        # The KV state of a failed sequence is unknown: forget it.
        assert self._ctx is not None
        self._ctx.seq_remove(slot.seq_id)
        slot.tokens.clear()
        self._emit(a, Failed(error))

    def _emit(self, a: _Active, event: Event) -> None:
        self._emit_to(a.handle, event)

    def _emit_to(self, handle: RequestHandle, event: Event) -> None:
        _emit(handle, event)
        if isinstance(event, Finished | Failed):
            self._notify(handle.request, event)

    def _notify(self, request: GenerationRequest, event: Finished | Failed) -> None:
        for listener in self._listeners:
            try:
                listener(request, event)
            except Exception:
                log.exception("engine listener raised")

    def _shutdown(self) -> None:
        closed = EngineClosedError("the model was unloaded")
        with self._lock:
            self._closing = True
            queued = list(self._queue)
            self._queue.clear()
            jobs = list(self._jobs)
            self._jobs.clear()
        for handle, chain, _ in queued:
            chain.close()
            self._emit_to(handle, Failed(closed))
        for job in jobs:
            job.future.set_exception(closed)
        for slot in self._slots:
            if slot.active is not None:
                self._finish(slot, "cancelled")
        if self._ctx is not None:
            self._batch.close()
            self._ctx.close()
        if self._emb_ctx is not None:
            self._emb_ctx.close()

    # -- embeddings (engine thread) --------------------------------------------------

    def _embedding_limit(self) -> int:
        if self._emb_ctx is not None:
            return self._emb_ctx.n_batch
        return min(self.model.n_ctx_train, self.config.n_ctx)

    def _new_embedding_context(self) -> LlamaContext:
        n = min(self.model.n_ctx_train, self.config.n_ctx)
        # Encoders pool as their GGUF says; a decoder's last token sums up its input.
        pooling = "model" if self.model.pooling not in (None, "none") else "last"
        return LlamaContext(
            self.model,
            ContextParams(
                n_ctx=n,
                n_batch=n,
                n_ubatch=n,  # non-causal models need a whole input in one micro-batch
                n_seq_max=self.config.embedding_batch,
                n_threads=self.config.n_threads,
                n_threads_batch=self.config.n_threads_batch,
                embeddings=True,
                pooling=pooling,  # type: ignore[arg-type]
                kv_unified=True,
            ),
        )

    def _run_embed_job(self, job: _EmbedJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            if self._emb_ctx is None:
                self._emb_ctx = self._new_embedding_context()
            job.future.set_result(self._embed_all(self._emb_ctx, job.inputs, job.normalize))
        except KronkError as exc:
            job.future.set_exception(exc)
        except Exception as exc:
            job.future.set_exception(KronkError(f"embedding failed: {exc}"))

    def _embed_all(
        self, ctx: LlamaContext, inputs: list[list[int]], normalize: bool
    ) -> list[npt.NDArray[np.float32]]:
        out: list[npt.NDArray[np.float32]] = []
        batch = Batch(ctx.n_batch, 1)
        try:
            group: list[list[int]] = []
            for tokens in itertools.chain(inputs, [None]):  # None flushes the last group
                full = tokens is None or (
                    group
                    and (
                        sum(map(len, group)) + len(tokens) > ctx.n_batch
                        or len(group) == ctx.n_seq_max
                    )
                )
                if full and group:
                    out.extend(self._embed_group(ctx, batch, group))
                    group = []
                if tokens is not None:
                    group.append(tokens)
        finally:
            batch.close()
        if normalize:
            out = [v / n if (n := float(np.linalg.norm(v))) > 0 else v for v in out]
        return out

    def _embed_group(
        self, ctx: LlamaContext, batch: Batch, group: list[list[int]]
    ) -> list[npt.NDArray[np.float32]]:
        batch.clear()
        for seq_id, tokens in enumerate(group):
            # Pooling reads every token's output.
            batch.add_sequence(tokens, 0, seq_id, output_last=True, output_all=True)
        ctx.clear_memory()
        ctx.decode(batch)
        return [ctx.sequence_embedding(seq_id) for seq_id in range(len(group))]


def _emit(handle: RequestHandle, event: Event) -> None:
    # A sink that raises (e.g. its event loop is gone) must not take the engine down.
    try:
        handle.sink(event)
    except Exception:
        log.exception("event sink raised")
