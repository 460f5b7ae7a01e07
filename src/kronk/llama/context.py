"""A llama.cpp context: KV cache, decode, logits, embeddings, per-sequence memory ops.

A context is not thread-safe: exactly one thread (the engine's) may use it.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from kronk.errors import ContextFullError, DecodeError, InvalidRequestError, ModelLoadError
from kronk.llama._lib import lib, llama_errors
from kronk.llama.batch import Batch
from kronk.llama.compute import on_compute_thread
from kronk.llama.model import LlamaModel

# KV cache element types users may pick (llama.cpp's `-ctk/-ctv`).
KV_CACHE_TYPES: dict[str, int] = {
    "f32": lib.GGML_TYPE_F32,
    "f16": lib.GGML_TYPE_F16,
    "bf16": 30,  # GGML_TYPE_BF16; not exported by the binding
    "q8_0": lib.GGML_TYPE_Q8_0,
    "q5_0": lib.GGML_TYPE_Q5_0,
    "q5_1": lib.GGML_TYPE_Q5_1,
    "q4_0": lib.GGML_TYPE_Q4_0,
    "q4_1": lib.GGML_TYPE_Q4_1,
    "iq4_nl": lib.GGML_TYPE_IQ4_NL,
}

# Bytes per element of each KV cache type (quantized types store 32-element blocks).
KV_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "iq4_nl": 18 / 32,
}

FlashAttention = Literal["auto", "on", "off"]
Pooling = Literal["model", "none", "mean", "cls", "last", "rank"]

_FLASH = {"auto": lib.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": 1, "off": 0}
_POOLING = {"model": -1, "none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}


def default_threads() -> int:
    """Physical-ish core count: llama.cpp generation is memory bound, so more threads
    than cores only adds contention."""
    return max(
        1,
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
    )


@dataclass(frozen=True)
class ContextParams:
    n_ctx: int = 4096  # total KV cells; with kv_unified=False each sequence gets n_ctx / n_seq_max
    n_batch: int = 512
    n_ubatch: int = 512
    n_seq_max: int = 1
    n_threads: int | None = None
    n_threads_batch: int | None = None
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: FlashAttention = "auto"
    embeddings: bool = False
    pooling: Pooling = "model"
    kv_unified: bool = False
    swa_full: bool = False

    def validate(self) -> None:
        for name in ("type_k", "type_v"):
            value = getattr(self, name)
            if value not in KV_CACHE_TYPES:
                raise InvalidRequestError(
                    f"{name} must be one of {', '.join(KV_CACHE_TYPES)}; got {value!r}", name
                )
        if self.flash_attn not in _FLASH:
            raise InvalidRequestError("flash_attn must be 'auto', 'on' or 'off'", "flash_attn")
        if self.pooling not in _POOLING:
            raise InvalidRequestError(f"pooling must be one of {', '.join(_POOLING)}", "pooling")
        for name in ("n_ctx", "n_batch", "n_ubatch", "n_seq_max"):
            if getattr(self, name) < 1:
                raise InvalidRequestError(f"{name} must be at least 1", name)


class LlamaContext:
    """Owns `llama_context *` for one model."""

    def __init__(self, model: LlamaModel, params: ContextParams) -> None:
        params.validate()
        self.model = model
        self.params = params
        cp = lib.llama_context_default_params()
        cp.n_ctx = params.n_ctx
        cp.n_batch = params.n_batch
        cp.n_ubatch = min(params.n_ubatch, params.n_batch)
        cp.n_seq_max = params.n_seq_max
        threads = params.n_threads or default_threads()
        cp.n_threads = threads
        cp.n_threads_batch = params.n_threads_batch or threads
        cp.type_k = KV_CACHE_TYPES[params.type_k]
        cp.type_v = KV_CACHE_TYPES[params.type_v]
        cp.flash_attn_type = _FLASH[params.flash_attn]
        cp.embeddings = params.embeddings
        cp.pooling_type = _POOLING[params.pooling]
        cp.kv_unified = params.kv_unified
        cp.swa_full = params.swa_full
        cp.no_perf = True
        with llama_errors() as reasons:
            self._ptr: Any = lib.llama_init_from_model(model.ptr, cp)
        if not self._ptr:
            quantized_v = params.type_v not in ("f16", "f32", "bf16")
            hint = (
                f" ({reasons[0]})"  # llama.cpp's own reason, when it gave one
                if reasons
                else " (a quantized V cache needs flash attention: set flash_attn='on' or 'auto')"
                if quantized_v and params.flash_attn == "off"
                else ""
            )
            raise ModelLoadError(
                f"llama.cpp could not create a context of {params.n_ctx} tokens{hint}; "
                "try a smaller context or another cache type"
            )
        self._mem = lib.llama_get_memory(self._ptr)
        self.n_ctx = int(lib.llama_n_ctx(self._ptr))
        self.n_ctx_seq = int(lib.llama_n_ctx_seq(self._ptr))
        self.n_batch = int(lib.llama_n_batch(self._ptr))
        self.n_ubatch = int(lib.llama_n_ubatch(self._ptr))
        self.n_threads = int(lib.llama_n_threads(self._ptr))
        self.n_threads_batch = int(lib.llama_n_threads_batch(self._ptr))
        self.n_seq_max = int(lib.llama_n_seq_max(self._ptr))
        self.n_vocab = model.vocab.n_tokens
        self.n_embd = model.n_embd
        self.pooling_type = int(lib.llama_pooling_type(self._ptr))
        # Computed once: stats read it often, and must still work once the model is freed.
        k, v = model.kv_elements_per_token()
        self._kv_bytes_per_token = (
            k * KV_TYPE_BYTES[params.type_k] + v * KV_TYPE_BYTES[params.type_v]
        )
        self._closed = False

    @property
    def ptr(self) -> Any:
        return self._ptr

    @property
    def kv_bytes_per_token(self) -> float:
        """KV cache bytes one token of one sequence takes (all layers, K and V)."""
        return self._kv_bytes_per_token

    @property
    def kv_cache_bytes(self) -> int:
        """Size of the whole KV cache (an upper bound for sliding-window models)."""
        return int(self.n_ctx * self.kv_bytes_per_token)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            lib.llama_free(self._ptr)

    # -- compute -----------------------------------------------------------------

    def decode(self, batch: Batch) -> None:
        """Run the model on `batch`. Raises ContextFullError when the KV cache has no room."""

        def run() -> tuple[int, list[str]]:
            with llama_errors() as reasons:
                return int(lib.llama_decode(self._ptr, batch.raw)), reasons

        ret, reasons = on_compute_thread(run)  # compute.py says why
        if ret == 0:
            return
        # llama.cpp logs why when it can (e.g. a batch its KV layout cannot split).
        why = f" ({reasons[0]})" if reasons else ""
        if ret == 1:  # no KV cells for the batch
            raise ContextFullError(
                f"context of {self.n_ctx_seq} tokens per sequence is full{why}",
                batch.n_tokens,
                self.n_ctx_seq,
            )
        if ret == 2:
            raise DecodeError("decode was aborted")
        raise DecodeError(f"llama_decode failed with code {ret}{why}")

    def logits(self, index: int) -> npt.NDArray[np.float32]:
        """Logits of the batch token at `index` (a view, valid until the next decode)."""
        ptr = lib.llama_get_logits_ith(self._ptr, index)
        if not ptr:
            raise DecodeError(f"no logits for batch index {index}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def sequence_embedding(self, seq_id: int) -> npt.NDArray[np.float32]:
        """Pooled embedding of a sequence (copy)."""
        ptr = lib.llama_get_embeddings_seq(self._ptr, seq_id)
        if not ptr:
            raise DecodeError(f"no pooled embedding for sequence {seq_id}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    def token_embedding(self, index: int) -> npt.NDArray[np.float32]:
        """Embedding of the batch token at `index` (copy); for pooling 'none'."""
        ptr = lib.llama_get_embeddings_ith(self._ptr, index)
        if not ptr:
            raise DecodeError(f"no embedding for batch index {index}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy()

    # -- memory (KV cache) per sequence --------------------------------------------

    def seq_remove(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        """Drop positions [p0, p1) of a sequence (-1 = open end). False if a partial removal
        is impossible (e.g. recurrent models); removing a whole sequence never fails."""
        return bool(lib.llama_memory_seq_rm(self._mem, seq_id, p0, p1))

    def seq_copy(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        lib.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    def seq_keep(self, seq_id: int) -> None:
        lib.llama_memory_seq_keep(self._mem, seq_id)

    def seq_pos_min(self, seq_id: int) -> int:
        """Smallest position still cached for the sequence, -1 if empty. Above 0 after a
        sliding-window cache has dropped old positions."""
        return int(lib.llama_memory_seq_pos_min(self._mem, seq_id))

    def seq_pos_max(self, seq_id: int) -> int:
        return int(lib.llama_memory_seq_pos_max(self._mem, seq_id))

    def clear_memory(self) -> None:
        lib.llama_memory_clear(self._mem, True)

    # -- per-sequence state (host-memory prompt cache) -----------------------------

    def seq_state_get(self, seq_id: int) -> bytes:
        size = int(lib.llama_state_seq_get_size(self._ptr, seq_id))
        buf = (ctypes.c_uint8 * size)()
        written = int(lib.llama_state_seq_get_data(self._ptr, buf, size, seq_id))
        return bytes(buf[:written])

    def seq_state_set(self, seq_id: int, state: bytes) -> bool:
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        return int(lib.llama_state_seq_set_data(self._ptr, buf, len(state), seq_id)) > 0
