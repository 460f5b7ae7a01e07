"""An engine's settings and its counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from kronk.engine.speculative import SpeculativeConfig
from kronk.llama import Batch, ContextParams, LlamaContext, LlamaModel
from kronk.llama.context import FlashAttention


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
    queue_timeout: float | None = None  # seconds a request may wait for a slot (None: no limit)
    embedding_batch: int = 8  # inputs embedded together in one decode
    # Host memory for KV states of long prompts that lost their slot (0 disables).
    prompt_cache_bytes: int = 1 << 30
    prompt_cache_min_tokens: int = 64  # shorter prefixes are cheap to recompute
    # Copy another slot's KV (or restore a saved state) when it saves at least this many
    # tokens of prefill over the slot's own cache.
    shared_prefix_min_tokens: int = 32
    # Drafts verified in the same decode as everything else (docs/speculative.md).
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    # Greedy output independent of other requests and of what the caches hold, at some
    # cost in speed (engine/invariance.py). The model must be loaded without repacking.
    batch_invariant: bool = False


@dataclass(frozen=True)
class SlotState:
    """What one slot is doing: "idle" (empty KV cache), "cached" (no request, `tokens`
    held for reuse), "prefilling" (`done` of `total` prompt tokens in the KV cache) or
    "generating" (`generated` tokens so far)."""

    state: str
    tokens: int = 0  # tokens the slot's KV cache holds now
    done: int = 0
    total: int = 0
    generated: int = 0


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
    prompt_cache_budget: int = 0  # the most prompt_cache_bytes may reach
    prompt_cache_hits: int = 0
    kv_cache_bytes: int = 0  # the whole KV cache, all slots
    kv_bytes_per_token: float = 0.0
    slot_tokens: list[int] = field(default_factory=list)  # tokens each slot's KV cache holds
    slot_states: list[SlotState] = field(default_factory=list)  # what each slot is doing
    steps: int = 0
    step_seconds: float = 0.0  # whole decode steps: Python bookkeeping + llama_decode + sampling
    decode_seconds: float = 0.0  # inside llama_decode alone
    sample_seconds: float = 0.0  # inside llama.cpp's samplers
    # Speculative decoding: draft tokens fed for verification, and those the target kept.
    draft_tokens: int = 0
    draft_accepted: int = 0
    draft_seconds: float = 0.0  # inside the draft model (its decodes and picks)
    draft_model_bytes: int = 0  # the draft model's KV cache (its weights are the pool's)

    @property
    def acceptance_rate(self) -> float:
        return self.draft_accepted / self.draft_tokens if self.draft_tokens else 0.0


def generation_context(model: LlamaModel, config: EngineConfig) -> LlamaContext:
    """The context the slots share, warmed up. One KV stream per slot (kv_unified=False):
    each request gets the full n_ctx window and sequences never share attention buffers."""
    ctx = LlamaContext(
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
            flash_attn=_flash_attention(config),
            kv_unified=False,
        ),
    )
    try:
        warm_up(ctx, model)
    except BaseException:
        ctx.close()
        raise
    return ctx


def _flash_attention(config: EngineConfig) -> FlashAttention:
    """Batch-invariant mode turns "auto" off: llama.cpp's flash-attention kernel adds a
    rounding boundary at 64 tokens of a sequence in one pass (engine/invariance.py)."""
    if config.batch_invariant and config.flash_attn == "auto":
        return "off"
    return config.flash_attn  # type: ignore[return-value]


def warm_up(ctx: LlamaContext, model: LlamaModel) -> None:
    """Decode two tokens once and forget them, as llama-server does when it starts: the
    first pass pages the weights in from the mapped file and sets up the compute graph,
    which would otherwise fall on the first request's time to first token."""
    special = model.vocab.special
    tokens = [t for t in (special.bos, special.eos) if t is not None] or [0]
    batch = Batch(len(tokens), 1)
    try:
        batch.add_sequence(tokens, 0, 0, output_last=True)
        ctx.decode(batch)
    finally:
        batch.close()
        ctx.clear_memory()
