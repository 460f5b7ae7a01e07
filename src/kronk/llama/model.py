"""A loaded GGUF model: weights, metadata and vocab."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kronk.errors import EngineClosedError, ModelLoadError
from kronk.llama._lib import ensure_backend, lib, llama_errors
from kronk.llama.gguf_check import validate_gguf
from kronk.llama.vocab import Vocab

# Called with load progress in [0, 1]; returning False cancels the load.
LoadProgress = Callable[[float], bool]


@dataclass(frozen=True)
class ModelParams:
    n_gpu_layers: int = 0  # -1 offloads every layer
    use_mmap: bool = True
    use_mlock: bool = False
    # Repacked CPU weights are faster, but their batched kernels sum in a different order
    # than the single-token ones, so greedy output can depend on what else is in the batch.
    repack: bool = True


class LlamaModel:
    """Owns `llama_model *`. Load with `LlamaModel.load`; free with `close()`."""

    def __init__(self, ptr: Any, path: Path) -> None:
        self._ptr = ptr
        self.path = path
        self.vocab = Vocab(lib.llama_model_get_vocab(ptr))
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | Path,
        params: ModelParams | None = None,
        *,
        progress: LoadProgress | None = None,
    ) -> LlamaModel:
        path = Path(path).expanduser()
        validate_gguf(path)
        ensure_backend()
        params = params or ModelParams()
        if params.use_mlock and not lib.llama_supports_mlock():
            raise ModelLoadError("use_mlock is not supported on this system")
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = params.n_gpu_layers if params.n_gpu_layers >= 0 else 999_999
        # llama_load_mode: 0 none, 1 mmap, 2 mlock, 3 mmap + mlock
        mparams.load_mode = int(params.use_mmap) | (int(params.use_mlock) << 1)
        mparams.use_extra_bufts = params.repack
        callback = None
        if progress is not None:

            def _on_progress(fraction: float, _user: Any) -> bool:
                try:
                    return bool(progress(float(fraction)))
                except Exception:
                    return False  # a broken callback cancels rather than crash the loader

            callback = lib.llama_progress_callback(_on_progress)
            mparams.progress_callback = callback
        with llama_errors() as reasons:
            ptr = lib.llama_model_load_from_file(str(path).encode("utf-8"), mparams)
        if not ptr:
            reason = reasons[0] if reasons else "unsupported architecture or corrupt file"
            raise ModelLoadError(f"llama.cpp could not load {path}: {reason}")
        if lib.llama_vocab_type(lib.llama_model_get_vocab(ptr)) == lib.LLAMA_VOCAB_TYPE_NONE:
            # llama.cpp loads such a file but aborts on the first tokenize.
            lib.llama_model_free(ptr)
            raise ModelLoadError(f"{path} has no tokenizer (vocabulary); kronk needs one")
        return cls(ptr, path)

    @property
    def ptr(self) -> Any:
        """`llama_model *`; raises once the model is closed (never a dangling pointer)."""
        if self._closed:
            raise EngineClosedError(f"model {self.path.name} was closed")
        return self._ptr

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                lib.llama_model_free(self._ptr)

    # -- metadata ----------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """One GGUF metadata value as a string (arrays are summarised by llama.cpp)."""
        buf = ctypes.create_string_buffer(4096)
        n = lib.llama_model_meta_val_str(self.ptr, key.encode("utf-8"), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            lib.llama_model_meta_val_str(self.ptr, key.encode("utf-8"), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(512)
        for i in range(int(lib.llama_model_meta_count(self.ptr))):
            n = lib.llama_model_meta_key_by_index(self.ptr, i, buf, len(buf))
            if n < 0:
                continue
            key = buf.value.decode("utf-8", errors="replace")
            value = self.meta(key)
            if value is not None:
                out[key] = value
        return out

    @property
    def architecture(self) -> str:
        return self.meta("general.architecture") or "unknown"

    @property
    def name(self) -> str:
        return self.meta("general.name") or self.path.stem

    @property
    def chat_template(self) -> str | None:
        """The model's own Jinja chat template (full text), if it has one."""
        ptr = lib.llama_model_chat_template(self.ptr, None)
        return ptr.decode("utf-8", errors="replace") if ptr else None

    @property
    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        lib.llama_model_desc(self.ptr, buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    @property
    def n_ctx_train(self) -> int:
        return int(lib.llama_model_n_ctx_train(self.ptr))

    @property
    def n_embd(self) -> int:
        return int(lib.llama_model_n_embd(self.ptr))

    @property
    def n_layer(self) -> int:
        return int(lib.llama_model_n_layer(self.ptr))

    @property
    def n_head(self) -> int:
        return int(lib.llama_model_n_head(self.ptr))

    @property
    def n_head_kv(self) -> int:
        return int(lib.llama_model_n_head_kv(self.ptr))

    def kv_elements_per_token(self) -> tuple[int, int]:
        """K and V cache elements one token takes across all layers."""
        arch = self.architecture
        head_dim = self.n_embd // max(1, self.n_head)
        key_length = int(self.meta(f"{arch}.attention.key_length") or head_dim)
        value_length = int(self.meta(f"{arch}.attention.value_length") or head_dim)
        return (
            self.n_layer * self.n_head_kv * key_length,
            self.n_layer * self.n_head_kv * value_length,
        )

    @property
    def n_swa(self) -> int:
        """Sliding-window size; 0 when the model attends to the whole context."""
        return int(lib.llama_model_n_swa(self.ptr))

    @property
    def n_params(self) -> int:
        return int(lib.llama_model_n_params(self.ptr))

    @property
    def size_bytes(self) -> int:
        return int(lib.llama_model_size(self.ptr))

    @property
    def has_encoder(self) -> bool:
        return bool(lib.llama_model_has_encoder(self.ptr))

    @property
    def has_decoder(self) -> bool:
        return bool(lib.llama_model_has_decoder(self.ptr))

    @property
    def is_embedding_only(self) -> bool:
        """Encoder-only models (BERT and friends) produce embeddings, not text."""
        return (self.has_encoder and not self.has_decoder) or self.architecture in _ENCODER_ARCHS

    @property
    def pooling(self) -> str | None:
        value = self.meta(f"{self.architecture}.pooling_type")
        return _POOLING_NAMES.get(int(value)) if value is not None and value.isdigit() else None


_ENCODER_ARCHS = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "neo-bert", "modern-bert"}
)
_POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
