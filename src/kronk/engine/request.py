"""The internal request and event model shared by the SDK and every protocol adapter.

An adapter turns its protocol's request into a `GenerationRequest`, submits it, and
turns the `Event`s it receives back into its protocol's responses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kronk.errors import KronkError
from kronk.llama.sampler import SamplingParams

FinishReason = Literal["stop", "length", "cancelled"]
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16


@dataclass(frozen=True)
class TopLogprob:
    token: str
    token_id: int
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class TokenLogprob:
    """Log probability of a generated token under the model (before sampler shaping),
    with the `top` most likely alternatives."""

    token: str
    token_id: int
    logprob: float
    bytes: list[int]
    top: list[TopLogprob]


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens reused from the KV cache, not recomputed
    queue_seconds: float  # waiting for a free slot
    time_to_first_token: float  # from submit to the first generated token
    prompt_seconds: float  # prefill: from admission to the first generated token
    generation_seconds: float  # from the first generated token to the last
    # For telemetry spans: the slot that served the request (-1: never admitted), the
    # time its admission spent finding and preparing cached KV (part of queue_seconds),
    # and the time spent turning its tokens into text (spread over the decode).
    slot: int = -1
    cache_lookup_seconds: float = 0.0
    detokenize_seconds: float = 0.0
    # Speculative decoding: draft tokens the model verified, and those it kept (each kept
    # one is a generated token that cost no decode step of its own).
    draft_tokens: int = 0
    draft_accepted: int = 0

    @property
    def tokens_per_second(self) -> float:
        """Decode speed: tokens after the first, over the time they took."""
        if self.completion_tokens < 2 or self.generation_seconds <= 0:
            return 0.0
        return (self.completion_tokens - 1) / self.generation_seconds

    @property
    def prompt_tokens_per_second(self) -> float:
        computed = self.prompt_tokens - self.cached_tokens
        return computed / self.prompt_seconds if self.prompt_seconds > 0 else 0.0


@dataclass(frozen=True)
class TextDelta:
    """New text (possibly empty while held back for a stop string or a split UTF-8
    character) and the log probabilities of the tokens generated with it."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class Admitted:
    """The request has a slot: its prefill starts, `cached_tokens` of the prompt reused."""

    prompt_tokens: int
    cached_tokens: int


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None  # the stop string that ended it (reason "stop")


@dataclass(frozen=True)
class Failed:
    error: KronkError


Event = Admitted | TextDelta | Finished | Failed
EventSink = Callable[[Event], None]


@dataclass
class GenerationRequest:
    """One generation: prompt tokens in, a stream of events out."""

    prompt: Sequence[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until a stop, EOG, or the context is full
    stop: Sequence[str] = ()
    logprobs: int | None = None  # None: off; N: the chosen token plus N alternatives
    ignore_eos: bool = False
    # Special tokens to emit as their text (tool-call and channel markers that are control
    # tokens in some vocabularies); every other special token renders as nothing.
    render_special: frozenset[int] = frozenset()
    # False: never draft for this request (plain decoding), whatever the model's setting.
    speculative: bool = True
    # The caller's tracing span (set at submit), so listeners can attach the engine's
    # phases to it. Opaque to the engine.
    span: Any = None


class RequestHandle:
    """The caller's side of a submitted request: cancel it from any thread."""

    def __init__(
        self,
        request: GenerationRequest,
        sink: EventSink,
        on_cancel: Callable[[RequestHandle], None],
    ) -> None:
        self.request = request
        self.sink = sink
        self._cancelled = threading.Event()
        self._on_cancel = on_cancel

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the engine's next step. Idempotent."""
        if not self._cancelled.is_set():
            self._cancelled.set()
            self._on_cancel(self)
