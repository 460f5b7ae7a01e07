"""The engine: one thread owns a model's llama context and runs continuous batching.

Each step decodes the pending prompt chunks (chunked prefill), samples the first token
of every prompt that completed, then decodes the next token of every generating
sequence, those included, and samples them. A request joins at the next step after a
slot frees up, so new requests start while others stream and a long prompt never
stalls them.

Everything else talks to the thread through a locked queue; events flow back
through each request's sink. Per-step Python work is O(active sequences).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from kronk.engine.checks import token_logprobs, validate_request
from kronk.engine.config import EngineConfig, EngineStats, generation_context
from kronk.engine.embedding import Embedder, EmbedJob
from kronk.engine.invariance import (
    MAX_DRAFT,
    chunk_size,
    kept_after_request,
    short_passes,
)
from kronk.engine.prompt_cache import PromptCache
from kronk.engine.request import (
    Admitted,
    Event,
    EventSink,
    Failed,
    Finished,
    FinishReason,
    GenerationRequest,
    RequestHandle,
    TextDelta,
    Usage,
)
from kronk.engine.slots import Active, Placement, Slot, slot_state
from kronk.engine.speculator import Speculator
from kronk.engine.stops import StopMatcher
from kronk.errors import (
    EngineBusyError,
    EngineClosedError,
    InvalidRequestError,
    KronkError,
    UnsupportedFeatureError,
)
from kronk.llama import Batch, LlamaContext, LlamaModel, SamplerChain
from kronk.telemetry.tracing import current_span

log = logging.getLogger("kronk.engine")

# Told about every request that ends (telemetry); runs on the engine thread, or on the
# submitting thread for a request that submit() rejects.
RequestListener = Callable[[GenerationRequest, Finished | Failed], None]


__all__ = ["Engine", "EngineConfig", "EngineStats", "RequestListener"]


class Engine:
    """Serves generation and embedding requests for one loaded model."""

    def __init__(
        self,
        model: LlamaModel,
        config: EngineConfig | None = None,
        *,
        draft_model: LlamaModel | None = None,
    ) -> None:
        """`draft_model` (owned by the caller, like `model`) drafts tokens for verification
        when `config.speculative` allows; its vocabulary must match the model's."""
        self.model = model
        self.vocab = model.vocab
        config = config or EngineConfig()
        if config.batch_invariant and config.speculative.draft_max > MAX_DRAFT:
            spec = dataclasses.replace(config.speculative, draft_max=MAX_DRAFT)
            config = dataclasses.replace(config, speculative=spec)
        self.config = config
        if config.n_ctx < 8:
            raise InvalidRequestError("n_ctx must be at least 8 tokens", "n_ctx")
        if config.max_queue < 0:
            raise InvalidRequestError("max_queue must be >= 0", "max_queue")
        self.embedding_only = model.is_embedding_only
        self._ctx: LlamaContext | None = None
        self._speculator: Speculator | None = None
        self._stats = EngineStats(config.n_seq_max, 0, 0, 0, 0, 0, 0, 0)
        self._embedder = Embedder(model, config, eager=self.embedding_only)
        self.n_ctx = self._embedder.n_ctx
        if not self.embedding_only:
            self._ctx = generation_context(model, config)
            # llama.cpp pads the KV cache up; the window we promise is what was asked for.
            self.n_ctx = min(config.n_ctx, self._ctx.n_ctx_seq)
            self._batch = Batch(self._ctx.n_batch, 1)
            if config.speculative.mode != "off":
                try:
                    self._speculator = Speculator(
                        config, self._ctx, self.n_ctx, model, draft_model, self._stats
                    )
                except BaseException:
                    self._batch.close()
                    self._ctx.close()
                    raise
        self._stats.n_ctx = self.n_ctx
        self._slots = [Slot(i) for i in range(config.n_seq_max)]
        self._prompt_cache = PromptCache(config.prompt_cache_bytes, config.prompt_cache_min_tokens)
        if self._ctx is not None:
            self._placement = Placement(
                self._ctx,
                self._slots,
                self._prompt_cache,
                config.shared_prefix_min_tokens,
                model.n_swa,
                invariant=config.batch_invariant,
            )
        self._lock = threading.Condition()
        self._queue: deque[tuple[RequestHandle, SamplerChain, float]] = deque()
        self._jobs: deque[EmbedJob] = deque()
        self._closing = False
        self._listeners: list[RequestListener] = []
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
        validate_request(request, self.vocab.n_tokens, self.n_ctx)
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
        self._embedder.check(inputs, self.vocab.n_tokens)
        future: concurrent.futures.Future[list[npt.NDArray[np.float32]]] = (
            concurrent.futures.Future()
        )
        with self._lock:
            if self._closing:
                raise EngineClosedError("the model is being unloaded")
            self._jobs.append(EmbedJob(inputs, normalize, future))
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
            self._stats.prompt_cache_budget = self._prompt_cache.max_bytes
            self._stats.prompt_cache_hits = self._prompt_cache.hits
            self._stats.slot_tokens = [len(s.tokens) for s in self._slots]
            self._stats.slot_states = [slot_state(s) for s in self._slots]
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
                    self._embedder.run(job)
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
        """Move queued requests into free slots (called with the lock held), in order,
        except that one whose prefix another slot is prefilling waits for it."""
        waiting: list[tuple[RequestHandle, SamplerChain, float]] = []
        while self._queue:
            free = [s for s in self._slots if s.active is None]
            if not free:
                break
            handle, chain, submitted = item = self._queue.popleft()
            prompt = list(handle.request.prompt)
            if self._placement.coming_soon(prompt):
                waiting.append(item)
                continue
            lookup_start = time.perf_counter()
            slot = self._choose_slot(free)
            keep = self._placement.place(slot, prompt)
            admitted = time.perf_counter()
            active = Active(
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
            if self._speculator is not None:
                self._speculator.admit(slot, active)
            self._stats.requests_total += 1
            self._stats.tokens_cached += keep
            self._emit(active, Admitted(len(prompt), keep))
        self._queue.extendleft(reversed(waiting))
        timeout = self.config.queue_timeout
        while (
            timeout is not None
            and self._queue
            and time.perf_counter() - self._queue[0][2] > timeout
        ):
            handle, chain, _ = self._queue.popleft()  # waited too long for a slot
            chain.close()
            busy = f"server busy: no slot of {len(self._slots)} came free within {timeout:g} s"
            self._emit_to(handle, Failed(EngineBusyError(f"{busy}; retry later")))

    @staticmethod
    def _choose_slot(free: list[Slot]) -> Slot:
        """The lowest-numbered free slot. With a KV stream per slot, llama.cpp decodes a
        batch in one pass per run of consecutive sequence ids, so running sequences packed
        at the lowest ids cost one pass a step, not one each. `Placement.place` then brings the
        prompt's cached prefix into that slot from wherever kronk holds it."""
        return min(free, key=lambda s: s.seq_id)

    def _step(self) -> None:
        assert self._ctx is not None
        step_start = time.perf_counter()
        # Drop cancelled requests first so their slots don't cost a decode.
        for slot in self._slots:
            if slot.active is not None and slot.active.handle.cancelled:
                self._finish(slot, "cancelled")
        active = [(s, s.active) for s in self._slots if s.active is not None]
        invariant = self.config.batch_invariant
        # 1. Prompt chunks, oldest request first, up to n_batch tokens (chunked prefill: a
        # long prompt never stalls the streams), in a decode of their own: llama.cpp
        # computes them in passes apart from the generating tokens anyway, and this way a
        # request's first token goes out a generation pass sooner.
        prefilling = sorted(
            ((s, a) for s, a in active if a.next_token is None), key=lambda p: p[1].admitted
        )
        if invariant:
            prefilling = prefilling[:1]  # a prompt chunk goes in a pass of its own
        budget = self._batch.capacity
        chunks: dict[int, int] = {}  # seq id -> prompt tokens it prefills this step
        for slot, a in prefilling:
            remaining = len(a.request.prompt) - a.prompt_done
            take = chunk_size(remaining, budget) if invariant else min(budget, remaining)
            if take > 0:
                chunks[slot.seq_id] = take
                budget -= take
        prompts = [(s, a) for s, a in active if s.seq_id in chunks]
        for group in [[p] for p in prompts] if invariant else [prompts] if prompts else []:
            self._decode(group, chunks, record=False)
        # 2. The next token of every generating sequence, with those whose prompt just
        # completed (their first token is out; their second comes in this pass).
        now_active = [(s, s.active) for s in self._slots if s.active is not None]
        generating = [(s, a) for s, a in now_active if a.next_token is not None]
        if self._speculator is not None and generating:
            self._speculator.plan(generating, self._batch.capacity - len(generating))
        if invariant:  # drafts are capped, so no sequence's feed reaches MIN_PASS alone
            passes = short_passes(generating, [1 + len(a.draft) for _, a in generating])
        else:
            passes = [generating] if generating else []
        for group in passes:  # each a decode of generating slots alone: a cost sample
            self._decode(group, chunks, record=self._speculator is not None)
        if prompts or passes:
            self._stats.steps += 1
            self._stats.step_seconds += time.perf_counter() - step_start

    def _decode(
        self, group: list[tuple[Slot, Active]], chunks: dict[int, int], record: bool
    ) -> None:
        """Feed `group`'s tokens (a generating sequence's next token and draft, a
        prefilling one's chunk) in one llama_decode, then sample what produced logits.
        `record`: the pass is a plain generation step, timed for the speculator."""
        assert self._ctx is not None
        batch = self._batch
        batch.clear()
        # Tokens go in sequence-id order: with a KV stream per slot, llama.cpp splits a
        # batch into one compute pass per run of consecutive sequence ids.
        fed: list[tuple[Slot, list[int]]] = []
        for slot, a in group:
            if a.next_token is not None:
                feed = [a.next_token, *a.draft]
                # A draft needs logits at every position: each is checked by the sampler.
                a.batch_index = batch.n_tokens
                batch.add_sequence(
                    feed, len(slot.tokens), slot.seq_id, output_last=True, output_all=True
                )
                fed.append((slot, feed))
            else:
                chunk = list(a.request.prompt[a.prompt_done : a.prompt_done + chunks[slot.seq_id]])
                completes = a.prompt_done + len(chunk) == len(a.request.prompt)
                index = batch.add_sequence(
                    chunk, len(slot.tokens), slot.seq_id, output_last=completes
                )
                a.batch_index = index if completes else None
                a.prompt_done += len(chunk)
                fed.append((slot, chunk))
        decode_start = time.perf_counter()
        try:
            self._ctx.decode(batch)
        except KronkError as exc:
            for slot, _ in fed:
                self._fail(slot, exc)
            return
        now = time.perf_counter()
        self._stats.decode_seconds += now - decode_start
        if record:
            assert self._speculator is not None
            self._speculator.record_step([(s.seq_id, len(t)) for s, t in fed], now - decode_start)
        for slot, tokens in fed:
            slot.tokens.extend(tokens)
            if slot.active is not None and slot.active.next_token is None:
                self._stats.tokens_prefilled += len(tokens)
        for slot, _ in fed:
            sampled = slot.active
            if sampled is not None and sampled.batch_index is not None:
                if sampled.draft:
                    self._verify(slot, sampled, sampled.batch_index, now)
                else:
                    self._sample(slot, sampled, sampled.batch_index, now)

    def _verify(self, slot: Slot, a: Active, index: int, now: float) -> None:
        """Keep the longest prefix of the draft that the request's own sampler chain
        produces, token by token, from the logits at each draft position.

        Each kept token is exactly what plain decoding would have sampled there (the same
        chain: grammar, penalties, DRY, XTC, logit bias and random state advance as they
        would), so the output is the target's, greedy or not. The sample at the first
        mismatch is the step's last token. The tokens are picked first and delivered
        after, so the KV cells of rejected ones are gone before any event goes out.
        """
        assert self._ctx is not None and self._speculator is not None
        draft, a.draft = a.draft, []
        # The slot holds the request's tokens up to its last one; each draft token joins
        # as it is delivered (so limits see what plain decoding would have seen).
        del slot.tokens[len(slot.tokens) - len(draft) :]
        picked: list[int] = []
        error: KronkError | None = None
        for m in range(len(draft) + 1):
            try:
                token = self._pick(a, index + m)
            except KronkError as exc:  # delivered after the tokens picked before it
                error = exc
                break
            picked.append(token)
            ends = self.vocab.is_eog(token) and not a.request.ignore_eos
            if m == len(draft) or token != draft[m] or ends:
                break
        accepted = max(0, len(picked) - 1) if error is None else len(picked)
        self._ctx.seq_remove(slot.seq_id, len(slot.tokens) + accepted, -1)
        assert a.drafting is not None
        a.drafting.drafted += len(draft)
        a.drafting.accepted += accepted
        self._speculator.verified(a, len(draft), accepted)
        for i, token in enumerate(picked):
            if a.handle.cancelled:  # the caller saw enough: emit no more of this draft
                return
            if self._deliver(slot, a, token, index + i, now) is None:
                return
            if i < accepted:
                slot.tokens.append(token)
        if error is not None:
            self._fail(slot, error)

    def _pick(self, a: Active, index: int) -> int:
        """Run the request's sampler chain on the logits at `index` (records the token in
        the chain). Raises KronkError where the request cannot go on."""
        assert self._ctx is not None
        sample_start = time.perf_counter()
        try:
            token = a.chain.sample(self._ctx.ptr, index)
        except KronkError:  # e.g. a grammar with no way forward: the caller's error
            raise
        except Exception as exc:  # a sampler must never take the engine down
            raise KronkError(f"sampling failed: {exc}") from exc
        self._stats.sample_seconds += time.perf_counter() - sample_start
        return token

    def _sample(self, slot: Slot, a: Active, index: int, now: float) -> int | None:
        """Sample and deliver the request's next token; None when that ended it."""
        try:
            token = self._pick(a, index)
        except KronkError as exc:
            self._fail(slot, exc)
            return None
        return self._deliver(slot, a, token, index, now)

    def _deliver(self, slot: Slot, a: Active, token: int, index: int, now: float) -> int | None:
        """Emit a generated token and decide whether the request goes on (returns it) or
        ends (None)."""
        assert self._ctx is not None
        request = a.request
        a.generated += 1
        self._stats.tokens_generated += 1
        if a.generated == 1:
            a.first_token_at = now
        a.last_token_at = now
        logprobs = (
            token_logprobs(self._ctx, self.vocab, index, token, request.logprobs)
            if request.logprobs is not None
            else []
        )
        if self.vocab.is_eog(token) and not request.ignore_eos:
            if logprobs:
                self._emit(a, TextDelta("", logprobs))
            self._finish(slot, "stop")
            return None
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
            if self._speculator is not None:
                self._speculator.accepted_token(a, token)
            return token
        return None

    def _finish(self, slot: Slot, reason: FinishReason) -> None:
        a = slot.active
        assert a is not None
        slot.active = None
        a.chain.close()
        if a.drafting is not None and self._ctx is not None:
            # Ended inside a verified draft: drop the cells after its last fed token, so
            # the slot holds what plain decoding would have left there.
            self._ctx.seq_remove(slot.seq_id, len(slot.tokens), -1)
        if self.config.batch_invariant:
            self._placement.keep(slot, kept_after_request(len(a.request.prompt), len(slot.tokens)))
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
            draft_tokens=a.drafting.drafted if a.drafting is not None else 0,
            draft_accepted=a.drafting.accepted if a.drafting is not None else 0,
        )
        if self._speculator is not None:
            self._speculator.finish(a)
        self._emit(a, Finished(reason, usage, a.stops.matched if reason == "stop" else None))

    def _fail(self, slot: Slot, error: KronkError) -> None:
        a = slot.active
        assert a is not None
        slot.active = None
        a.chain.close()
        # The KV state of a failed sequence is unknown: forget it.
        assert self._ctx is not None
        self._ctx.seq_remove(slot.seq_id)
        slot.tokens.clear()
        self._emit(a, Failed(error))

    def _emit(self, a: Active, event: Event) -> None:
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
        if self._speculator is not None:
            self._speculator.close()
        if self._ctx is not None:
            self._batch.close()
            self._ctx.close()
        self._embedder.close()

    # -- embeddings (engine thread) --------------------------------------------------


def _emit(handle: RequestHandle, event: Event) -> None:
    # A sink that raises (e.g. its event loop is gone) must not take the engine down.
    try:
        handle.sink(event)
    except Exception:
        log.exception("event sink raised")
