"""Validate a GGUF file before llama.cpp sees it.

llama.cpp aborts the whole process on some malformed files (a failed `GGML_ASSERT` is
not an error it returns), so a file is checked in Python first: magic, version, a
well-formed header, that every tensor's data lies inside the file (which is what a
truncated download breaks), and the few metadata values that llama.cpp asserts on
rather than reports (layer and expert counts, RoPE scaling type, duplicate tokens).

This is a purpose-built header walk rather than `gguf.GGUFReader`: the reader maps
every tensor and decodes every metadata array, which takes ~10 s on a 0.5B model;
this reads no tensor data and decodes only the values it checks (about 0.1 s on
the default model, most of it walking the 150k-entry token and merge lists). Tensor sizes come
from the `gguf` package's table of GGML types.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from kronk.errors import InvalidModelFileError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> fixed byte size (strings and arrays are variable).
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
# Integer value types -> struct format.
_INT_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
_STRING, _ARRAY = 8, 9
_MAX_ARRAY_NESTING = 8  # GGUF allows arrays of arrays; real files nest at most once
_MAX_DIMS = 4  # GGML_MAX_DIMS

# llama.cpp's hard limits (src/llama-hparams.h), enforced with GGML_ASSERT at load.
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
ROPE_SCALING_TYPES = frozenset({"none", "linear", "yarn", "longrope"})

# Per-architecture keys ("<arch>.<suffix>") whose values llama.cpp asserts on.
_CHECKED_SUFFIXES = frozenset(
    {
        "block_count",
        "nextn_predict_layers",
        "expert_count",
        "expert_used_count",
        "expert_group_count",
        "expert_group_used_count",
        "rope.scaling.type",
    }
)
_TOKENS_KEY = "tokenizer.ggml.tokens"
_DENSE_WHEN_ONE_EXPERT = frozenset({"hunyuan-dense", "hunyuan_vl"})


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


@dataclass
class _Header:
    architecture: str | None = None
    alignment: int = DEFAULT_ALIGNMENT
    # Values of "<anything>.<checked suffix>"; resolved against the architecture at the end.
    values: dict[str, int | str | list[int]] = field(default_factory=dict)
    duplicate_token: bytes | None = None


class _Cursor:
    """Reads little-endian GGUF fields straight from the mapping (no copies on skips)."""

    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0

    def _advance(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise _Truncated
        self.pos = start + n
        return start

    def take(self, n: int) -> bytes:
        start = self._advance(n)
        return self.buf[start : self.pos]

    def unpack(self, fmt: str, n: int) -> int:
        return int(struct.unpack_from(fmt, self.buf, self._advance(n))[0])

    def u32(self) -> int:
        return self.unpack("<I", 4)

    def u64(self) -> int:
        return self.unpack("<Q", 8)

    def string(self) -> bytes:
        return self.take(self.u64())

    def skip(self, n: int) -> None:
        self._advance(n)

    def skip_value(self, value_type: int, depth: int = 0) -> None:
        if value_type in _FIXED_SIZES:
            self.skip(_FIXED_SIZES[value_type])
        elif value_type == _STRING:
            self.skip(self.u64())
        elif value_type == _ARRAY:
            if depth >= _MAX_ARRAY_NESTING:
                raise _Corrupt(f"metadata arrays nested more than {_MAX_ARRAY_NESTING} deep")
            item_type, count = self.u32(), self.u64()
            if item_type in _FIXED_SIZES:
                self.skip(_FIXED_SIZES[item_type] * count)
            elif item_type == _STRING:
                self._strings(count, None)
            else:
                for _ in range(count):  # each item takes >= 8 bytes, so the file bounds this
                    self.skip_value(item_type, depth + 1)
        else:
            raise _Corrupt(f"unknown metadata value type {value_type}")

    def read_value(self, value_type: int) -> int | str | list[int] | None:
        """An integer, a string or an array of integers; None (skipped) for anything else."""
        if value_type in _INT_FORMATS:
            return self.unpack(_INT_FORMATS[value_type], _FIXED_SIZES[value_type])
        if value_type == _STRING:
            return self.string().decode("utf-8", errors="replace")
        if value_type == _ARRAY:
            start = self.pos
            item_type, count = self.u32(), self.u64()
            if item_type in _INT_FORMATS and count <= LLAMA_MAX_LAYERS:
                size = _FIXED_SIZES[item_type]
                return [self.unpack(_INT_FORMATS[item_type], size) for _ in range(count)]
            self.pos = start
        self.skip_value(value_type)
        return None

    def first_duplicate_string(self) -> bytes | None:
        """Walk an array of strings (the token list); return the first repeated one."""
        array_start = self.pos
        item_type, count = self.u32(), self.u64()
        start = self.pos
        if item_type != _STRING:  # not a token list; llama.cpp says so itself
            self.pos = array_start
            self.skip_value(_ARRAY)
            return None
        seen: set[bytes] = set()
        self._strings(count, seen)
        if len(seen) == count:
            return None
        end, self.pos = self.pos, start
        repeat = self._first_repeat(count)
        self.pos = end
        return repeat

    def _strings(self, count: int, into: set[bytes] | None) -> None:
        """Skip `count` strings (token lists and merges: 10^5 of them), adding each to `into`.
        A tight loop: this is most of the time the whole check takes."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, struct.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated
            end = pos + 8 + unpack("<Q", buf, pos)[0]
            if end > size:
                raise _Truncated
            if into is not None:
                into.add(buf[pos + 8 : end])
            pos = end
        self.pos = pos

    def _first_repeat(self, count: int) -> bytes | None:
        seen: set[bytes] = set()
        for _ in range(count):
            token = self.string()
            if token in seen:
                return token
            seen.add(token)
        return None


def _tensor_nbytes(ggml_type: int, dims: list[int]) -> int | None:
    """Bytes of a tensor's data; None for a type the installed `gguf` package does not know
    (newer than it), which llama.cpp's own reader then checks."""
    try:
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return None
    n_elements = 1
    for d in dims:
        n_elements *= d
    return int(n_elements // block_size * type_size)


def validate_gguf(path: str | Path) -> None:
    """Raise `InvalidModelFileError` unless `path` is a complete, readable GGUF file whose
    header llama.cpp can take without aborting."""
    path = Path(path)
    if not path.exists():
        raise InvalidModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise InvalidModelFileError(f"model path is not a file: {path}")
    try:
        size = path.stat().st_size
        if size < 24:
            raise InvalidModelFileError(f"model file is not a GGUF file: {path} ({size} bytes)")
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != GGUF_MAGIC:
                raise InvalidModelFileError(
                    f"model file is not a GGUF file: {path} "
                    f"(starts with {buf[:4]!r}, expected {GGUF_MAGIC!r})"
                )
            try:
                _walk(_Cursor(buf), size, path)
            except _Truncated:
                raise InvalidModelFileError(
                    f"model file is truncated: {path} (header runs past the end of the file); "
                    "download it again"
                ) from None
            except (_Corrupt, struct.error) as exc:
                raise InvalidModelFileError(f"model file is corrupt: {path} ({exc})") from None
    except OSError as exc:
        raise InvalidModelFileError(f"cannot read model file {path}: {exc.strerror}") from exc


def _walk(cur: _Cursor, size: int, path: Path) -> None:
    cur.take(4)
    version = cur.u32()
    if version not in (2, 3):
        raise _Corrupt(f"unsupported GGUF version {version}")
    n_tensors, n_kv = cur.u64(), cur.u64()
    header = _Header()
    for _ in range(n_kv):
        key = cur.string().decode("utf-8", errors="replace")
        value_type = cur.u32()
        _read_kv(cur, header, key, value_type)
    _check_metadata(header)
    alignment = header.alignment
    tensors: list[tuple[str, int, int | None]] = []
    for _ in range(n_tensors):
        name = cur.string().decode("utf-8", errors="replace")
        n_dims = cur.u32()
        if n_dims > _MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
        dims = [cur.u64() for _ in range(n_dims)]
        ggml_type = cur.u32()
        offset = cur.u64()
        tensors.append((name, offset, _tensor_nbytes(ggml_type, dims)))
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    for name, offset, nbytes in tensors:
        end = data_start + offset + (nbytes or 0)
        if end > size:
            raise InvalidModelFileError(
                f"model file is truncated: {path} (tensor {name!r} ends at byte {end}, "
                f"the file has {size}); download it again"
            )


def _read_kv(cur: _Cursor, header: _Header, key: str, value_type: int) -> None:
    if key == "general.alignment" and value_type == 4:
        alignment = cur.u32()
        # llama.cpp refuses these too, but a zero would break our own arithmetic first.
        if alignment == 0 or alignment & (alignment - 1):
            raise _Corrupt(f"general.alignment {alignment} is not a power of 2")
        header.alignment = alignment
    elif key == "general.architecture" and value_type == _STRING:
        header.architecture = cur.string().decode("utf-8", errors="replace")
    elif key == _TOKENS_KEY and value_type == _ARRAY:
        header.duplicate_token = cur.first_duplicate_string()
    elif key.partition(".")[2] in _CHECKED_SUFFIXES:
        value = cur.read_value(value_type)
        if value is not None:
            header.values[key] = value
    else:
        cur.skip_value(value_type)


def _check_metadata(header: _Header) -> None:
    """llama.cpp's GGML_ASSERTs on generic hyperparameters (llama_model::load_hparams) and
    on the vocabulary, as errors instead of a process abort."""
    if header.duplicate_token is not None:
        token = header.duplicate_token.decode("utf-8", errors="replace")
        raise _Corrupt(f"the vocabulary lists token {token!r} twice")
    arch = header.architecture
    if arch is None:
        return  # llama.cpp reports a missing architecture itself

    def count(suffix: str) -> int | None:
        value = header.values.get(f"{arch}.{suffix}")
        if isinstance(value, list):
            return max(value, default=0)
        return value if isinstance(value, int) else None

    n_layer = count("block_count")
    if n_layer is not None and not 0 < n_layer <= LLAMA_MAX_LAYERS:
        raise _Corrupt(f"{arch}.block_count is {n_layer}; llama.cpp needs 1..{LLAMA_MAX_LAYERS}")
    nextn = count("nextn_predict_layers")
    if nextn is not None and n_layer is not None and nextn > n_layer:
        raise _Corrupt(f"{arch}.nextn_predict_layers ({nextn}) exceeds block_count ({n_layer})")
    n_expert = count("expert_count") or 0
    used = count("expert_used_count") or 0
    groups = count("expert_group_count") or 0
    group_used = count("expert_group_used_count") or 0
    if arch in _DENSE_WHEN_ONE_EXPERT and n_expert <= 1:
        n_expert = used = 0  # llama.cpp resets these for them before it checks
    if n_expert > LLAMA_MAX_EXPERTS:
        raise _Corrupt(f"{arch}.expert_count is {n_expert}; llama.cpp allows {LLAMA_MAX_EXPERTS}")
    if n_expert > 0:
        experts_ok = (
            0 < used <= n_expert
            and groups < n_expert
            and (groups <= 1 or (n_expert % groups == 0 and 0 < group_used < groups))
        )
    else:
        experts_ok = used == 0 and groups == 0
    if not experts_ok:
        raise _Corrupt(
            f"inconsistent expert counts ({arch}.expert_count {n_expert}, expert_used_count "
            f"{used}, expert_group_count {groups}, expert_group_used_count {group_used})"
        )
    scaling = header.values.get(f"{arch}.rope.scaling.type")
    if isinstance(scaling, str) and scaling not in ROPE_SCALING_TYPES:
        raise _Corrupt(
            f"{arch}.rope.scaling.type {scaling!r} is not one of "
            + ", ".join(sorted(ROPE_SCALING_TYPES))
        )
