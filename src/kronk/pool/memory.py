"""How much host memory a model will take, estimated before it is loaded, and what the
pool may spend.

The estimate reads the GGUF header only (`kronk.models.gguf_info`) and the settings the
model would be loaded with (Kronk(...) keyword arguments):

- weights: the file's tensor data;
- KV cache: layers x cells x (K + V elements per cell) x the cache type's bytes, where the
  cells are what llama.cpp allocates: one stream of `n_ctx` (padded to 256) per slot, and
  on sliding-window layers only `n_swa + n_ubatch` cells a stream;
- compute: llama.cpp's compute buffers and the vocabulary's own tables, an approximation
  fitted to measured process RSS (below);
- the draft model's weights, KV cache and compute, when speculative decoding loads one;
- the host prompt cache's budget (`prompt_cache_bytes`), which the model may grow into.

Compute was fitted on this machine's CPU build against the RSS of a fresh process after
a load plus a full 512-token prefill (the most the compute buffers are touched):
Qwen2.5-Coder-0.5B Q4_K_M (4 slots x 4096) measured 779 MiB against an estimate of 784
(weights + KV + compute, prompt cache empty): within 1%; the RSS right after the load,
before any prefill, is 734 MiB (the estimate is 7% above it). Gemma 3 270M (4 x 4096,
sliding window) measured 435 MiB after a prefill against 438 estimated. The tiny test
models (a few hundred KB of weights) measure 1-8 MiB: the first load in a process pays
llama.cpp's own start-up (thread pool, backend registry), which no model accounts for.
So: within 10% for real models, and within 8 MiB for tiny ones.

GPU memory is out of scope: on a CUDA or Metal build the weights and KV cache live (in
part) on the device, and this estimate still counts them as host memory.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kronk.llama.context import KV_TYPE_BYTES
from kronk.models.gguf_info import GGUFSummary, gguf_summary
from kronk.sdk import Kronk

# Kronk(...)'s own defaults: what a load uses for every setting nobody gave.
_DEFAULTS: dict[str, Any] = {
    name: p.default
    for name, p in inspect.signature(Kronk.__init__).parameters.items()
    if p.default is not inspect.Parameter.empty
}
_PAD = 256  # llama.cpp pads each KV stream (and the sliding-window cache) to 256 cells
# Layers in each period that use the sliding window, for architectures whose GGUF does not
# carry a pattern (llama.cpp's set_swa_pattern): layer i slides unless i % n == n - 1.
_SWA_PERIOD = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4, "llama4": 4}
_VOCAB_TABLE_BYTES = 170  # per vocabulary entry: llama.cpp's and kronk's token tables
_DRAFT_CELLS = 256  # a draft model's context: a short window per slot (engine/draft.py)
_MARGIN_FRACTION = 0.1  # of total RAM kept free when the budget is the default
_MARGIN_MIN = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model is expected to take, by part."""

    weights: int
    kv_cache: int
    compute: int
    draft: int  # the draft model's weights, KV cache and compute (0: none)
    prompt_cache: int  # the host prompt cache's budget

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.draft + self.prompt_cache

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def estimate_memory(path: Path, options: Mapping[str, Any]) -> MemoryEstimate:
    """The memory a load of `path` with Kronk(**options) will take (reads the header:
    call it from a worker thread). `options["draft_model"]`, a path, adds a draft."""
    summary = gguf_summary(path)
    opts = {**_DEFAULTS, **options}
    n_seq = int(opts["n_seq_max"])
    n_ctx = int(opts["n_ctx"])
    if summary.context_length:
        n_ctx = min(n_ctx, summary.context_length)  # as Kronk caps it
    n_ubatch = min(int(opts["n_ubatch"]), int(opts["n_batch"]))
    types = (str(opts["cache_type_k"]), str(opts["cache_type_v"]))
    embedding_only = summary.embedding_only
    kv = 0 if embedding_only else kv_cache_bytes(summary, n_ctx, n_seq, n_ubatch, types)
    draft = 0
    draft_path = opts.get("draft_model")
    speculative = str(opts.get("speculative", "auto")).lower()
    if draft_path is not None and speculative in ("auto", "draft"):  # modes that load one
        draft_summary = gguf_summary(Path(str(draft_path)))
        draft_ubatch = min(512, n_seq * 64)
        draft = (
            draft_summary.tensor_bytes
            + kv_cache_bytes(draft_summary, _DRAFT_CELLS, n_seq, draft_ubatch, types)
            + compute_bytes(draft_summary, draft_ubatch)
        )
    return MemoryEstimate(
        weights=summary.tensor_bytes,
        kv_cache=kv,
        compute=compute_bytes(summary, n_ctx if embedding_only else n_ubatch),
        draft=draft,
        prompt_cache=0 if embedding_only else int(opts["prompt_cache_bytes"]),
    )


def kv_cache_bytes(
    summary: GGUFSummary, n_ctx: int, n_seq: int, n_ubatch: int, types: tuple[str, str]
) -> int:
    """llama.cpp's KV cache for `n_seq` streams of `n_ctx` cells (kv_unified off)."""
    arch = summary.architecture
    meta, arrays = summary.metadata, summary.arrays
    n_layer = _int(meta.get(f"{arch}.block_count"))
    n_embd = _int(meta.get(f"{arch}.embedding_length"))
    n_head = _per_layer(meta, arrays, f"{arch}.attention.head_count", n_layer, 1)
    n_head_kv = _per_layer(meta, arrays, f"{arch}.attention.head_count_kv", n_layer, 0)
    n_head_kv = [kv or h for kv, h in zip(n_head_kv, n_head, strict=True)]  # absent: MHA
    head_dim = n_embd // max(1, max(n_head, default=1))
    k_dim = _int(meta.get(f"{arch}.attention.key_length")) or head_dim
    v_dim = _int(meta.get(f"{arch}.attention.value_length")) or head_dim
    cell_bytes = k_dim * KV_TYPE_BYTES[types[0]] + v_dim * KV_TYPE_BYTES[types[1]]
    per_cell = [h * cell_bytes for h in n_head_kv]
    full_cells = _pad(_pad(n_ctx * n_seq) // n_seq)  # llama.cpp's n_ctx_seq
    n_swa = _int(meta.get(f"{arch}.attention.sliding_window"))
    swa_cells = _pad(min(full_cells, n_swa + n_ubatch)) if n_swa > 0 else full_cells
    sliding = _sliding_layers(summary, n_layer) if n_swa > 0 else [False] * n_layer
    cells = [swa_cells if s else full_cells for s in sliding]
    return int(sum(c * b for c, b in zip(cells, per_cell, strict=True)) * n_seq)


def compute_bytes(summary: GGUFSummary, n_ubatch: int) -> int:
    """llama.cpp's compute buffers as far as a step touches them (activations of a full
    micro-batch, twice over for the graph's intermediate tensors) plus the vocabulary's
    tables; fitted as the module docstring says."""
    arch = summary.architecture
    n_embd = _int(summary.metadata.get(f"{arch}.embedding_length"))
    n_ff = _int(summary.metadata.get(f"{arch}.feed_forward_length")) or 4 * n_embd
    n_vocab = summary.n_vocab or _int(summary.metadata.get(f"{arch}.vocab_size"))
    return 2 * n_ubatch * (4 * n_ff + 8 * n_embd) * 4 + _VOCAB_TABLE_BYTES * n_vocab


def try_estimate(path: Path, options: Mapping[str, Any]) -> MemoryEstimate | None:
    """The estimate, or None for a file whose header cannot be read: the load then fails
    with the validator's or llama.cpp's own words."""
    try:
        return estimate_memory(path, options)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def size_text(n: int) -> str:
    """Bytes for people: "463 MiB", "1.75 GiB"."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def too_large(model_id: str, estimate: MemoryEstimate, budget: int) -> str:
    """Why a model can never be loaded under `budget`: its estimate, part by part."""
    parts = ", ".join(
        f"{name.replace('_', ' ')} {size_text(n)}" for name, n in asdict(estimate).items() if n
    )
    return (
        f"{model_id} needs an estimated {size_text(estimate.total)} ({parts}), more than the "
        f"memory budget of {size_text(budget)}; lower its ctx-size, parallel or "
        "prompt-cache-size, or raise memory-budget"
    )


def default_budget() -> int:
    """The budget when none is set: RAM available now, less a margin (10% of the total,
    at least 1 GiB). 0 when /proc/meminfo cannot be read (no limit then)."""
    info = _meminfo()
    available, total = info.get("MemAvailable", 0), info.get("MemTotal", 0)
    if not available:
        return 0
    return max(0, available - max(_MARGIN_MIN, int(total * _MARGIN_FRACTION)))


def process_rss() -> int:
    """This process's resident memory in bytes (0 where /proc is missing)."""
    try:
        with open(f"/proc/{os.getpid()}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[name] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _sliding_layers(summary: GGUFSummary, n_layer: int) -> list[bool]:
    arch = summary.architecture
    pattern = summary.arrays.get(f"{arch}.attention.sliding_window_pattern")
    if pattern is not None and len(pattern) == n_layer:
        return [bool(x) for x in pattern]
    period = _SWA_PERIOD.get(arch)
    if period is None:  # a window without a known pattern: count every layer in full
        return [False] * n_layer
    return [i % period != period - 1 for i in range(n_layer)]


def _per_layer(
    meta: Mapping[str, Any],
    arrays: Mapping[str, tuple[int | float | bool, ...]],
    key: str,
    n_layer: int,
    default: int,
) -> list[int]:
    values = arrays.get(key)
    if values is not None and len(values) == n_layer:
        return [int(v) for v in values]
    return [_int(meta.get(key)) or default] * n_layer


def _pad(n: int) -> int:
    return -(-n // _PAD) * _PAD


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


__all__ = [
    "MemoryEstimate",
    "compute_bytes",
    "default_budget",
    "estimate_memory",
    "kv_cache_bytes",
    "process_rss",
    "size_text",
    "too_large",
    "try_estimate",
]
