"""What a GGUF file says about itself, read without loading it: for /api/tags and
/api/show, which describe models that need not be loaded (and loading one could evict
another), and for the pool's memory estimate before a load (`kronk.pool.memory`). A
header walk reads the metadata and the tensor shapes only (about 0.1 s on the default
model, most of it the token list); results are cached per file version.
Call `gguf_summary` from a worker thread.
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf.constants import LlamaFileType

# GGUF value types: fixed sizes and struct formats of the scalars.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_SHORT_ARRAY = 4096  # numeric arrays up to this long are kept (per-layer values)
# Token texts llama.cpp recognises as fill-in-the-middle prefix tokens (llama-vocab.cpp).
_FIM_PREFIXES = frozenset(
    {b"<|fim_prefix|>", b"<fim-prefix>", b"<fim_prefix>", b"<PRE>", b"\xe2\x96\x81<PRE>"}
)
_ENCODER_ARCHS = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "neo-bert", "modern-bert"}
)

Scalar = int | float | bool | str


@dataclass(frozen=True)
class GGUFSummary:
    metadata: dict[str, Scalar]  # scalar values only; arrays (token lists, ...) are left out
    n_params: int
    has_fim: bool
    chat_template: str | None = None
    # Bytes of tensor data (the weights): the file after its header, alignment included.
    tensor_bytes: int = 0
    n_vocab: int = 0  # tokens in the vocabulary
    # Short numeric arrays (per-layer head counts, sliding-window patterns), by key.
    arrays: dict[str, tuple[int | float | bool, ...]] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return value if isinstance(value, int) else None

    @property
    def embedding_only(self) -> bool:
        return self.architecture in _ENCODER_ARCHS

    @property
    def quantization(self) -> str | None:
        """The file type as Ollama names quantization levels ("Q4_K_M", "F16")."""
        file_type = self.metadata.get("general.file_type")
        if not isinstance(file_type, int):
            return None
        try:
            return str(LlamaFileType(file_type).name).removeprefix("MOSTLY_")
        except ValueError:
            return f"file type {file_type}"


class _Reader:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> int | float | bool:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value  # type: ignore[no-any-return]

    def u32(self) -> int:
        return int(self.unpack("<I"))

    def u64(self) -> int:
        return int(self.unpack("<Q"))

    def raw_string(self) -> bytes:
        n = self.u64()
        start, self.pos = self.pos, self.pos + n
        if self.pos > len(self.buf):
            raise ValueError("truncated")
        return self.buf[start : self.pos]

    def string(self) -> str:
        return self.raw_string().decode("utf-8", errors="replace")

    def scalar(self, kind: int) -> Scalar:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        raise ValueError(f"unknown GGUF value type {kind}")

    def numbers(self, kind: int, count: int) -> tuple[int | float | bool, ...]:
        return tuple(self.unpack(_SCALARS[kind]) for _ in range(count))

    def strings(self, count: int) -> set[bytes]:
        return {self.raw_string() for _ in range(count)}

    def skip(self, kind: int) -> None:
        """Skip an array's items (nothing shown reads them)."""
        count = self.u64()  # read first: `pos += u64()` would add to the old position
        if kind in _SCALARS:
            self.pos += struct.calcsize(_SCALARS[kind]) * count
        elif kind == _STRING:
            for _ in range(count):
                self.raw_string()
        elif kind == _ARRAY:
            for _ in range(count):
                self.skip(self.u32())
        else:
            raise ValueError(f"unknown GGUF value type {kind}")


def gguf_summary(path: Path) -> GGUFSummary:
    """The summary of the GGUF file at `path` (ValueError or OSError if unreadable)."""
    stat = path.stat()
    return _cached(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached(path: Path, _size: int, _mtime_ns: int) -> GGUFSummary:
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        r = _Reader(buf)
        r.pos = 8  # magic, version
        n_tensors, n_kv = r.u64(), r.u64()
        metadata: dict[str, Scalar] = {}
        arrays: dict[str, tuple[int | float | bool, ...]] = {}
        has_fim = False
        n_vocab = 0
        for _ in range(n_kv):
            key, kind = r.string(), r.u32()
            if kind != _ARRAY:
                metadata[key] = r.scalar(kind)
                continue
            item = r.u32()
            if key == "tokenizer.ggml.tokens" and item == _STRING:
                n_vocab = r.u64()
                has_fim = not _FIM_PREFIXES.isdisjoint(r.strings(n_vocab))
            elif item in _SCALARS and not key.startswith("tokenizer."):
                count = r.u64()
                if count <= _SHORT_ARRAY:
                    arrays[key] = r.numbers(item, count)
                else:
                    r.pos += struct.calcsize(_SCALARS[item]) * count
            else:
                r.skip(item)
        n_params = 0
        for _ in range(n_tensors):
            r.string()
            dims = [r.u64() for _ in range(r.u32())]
            r.pos += 12  # type (u32) and offset (u64)
            n_params += functools.reduce(lambda a, b: a * b, dims, 1)
        alignment = metadata.get("general.alignment", 32)
        align = alignment if isinstance(alignment, int) and alignment > 0 else 32
        data_start = -(-r.pos // align) * align
        tensor_bytes = max(0, len(buf) - data_start)
    template = metadata.pop("tokenizer.chat_template", None)
    return GGUFSummary(
        metadata=metadata,
        n_params=n_params,
        has_fim=has_fim,
        chat_template=template if isinstance(template, str) else None,
        tensor_bytes=tensor_bytes,
        n_vocab=n_vocab,
        arrays=arrays,
    )


def parameter_size(n_params: int) -> str:
    """Ollama's parameter_size: "494.03M", "7.6B"."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n_params >= scale:
            return f"{n_params / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(n_params)


__all__ = ["GGUFSummary", "gguf_summary", "parameter_size"]
