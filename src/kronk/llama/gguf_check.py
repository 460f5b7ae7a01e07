"""Validate a GGUF file before llama.cpp sees it.

llama.cpp can abort the whole process on some malformed files, so a file is
checked in Python first: magic, version, a well-formed header, and that every
tensor's data lies inside the file (which is what a truncated download breaks).

This is a purpose-built header walk rather than `gguf.GGUFReader`: the reader maps
every tensor and decodes every metadata array, which takes ~10 s on a 0.5B model;
this takes milliseconds and reads no tensor data.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from kronk.errors import InvalidModelFileError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> fixed byte size (strings and arrays are variable).
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


class _Truncated(Exception):
    pass


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise _Truncated
        data = self.buf[self.pos : end]
        self.pos = end
        return data

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> bytes:
        return self.take(self.u64())

    def skip_value(self, value_type: int) -> None:
        if value_type in _FIXED_SIZES:
            self.take(_FIXED_SIZES[value_type])
        elif value_type == _STRING:
            self.skip(self.u64())
        elif value_type == _ARRAY:
            item_type, count = self.u32(), self.u64()
            if item_type in _FIXED_SIZES:
                self.skip(_FIXED_SIZES[item_type] * count)
            else:
                for _ in range(count):
                    self.skip_value(item_type)
        else:
            raise ValueError(f"unknown metadata value type {value_type}")

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise _Truncated
        self.pos += n


def _tensor_nbytes(ggml_type: int, dims: list[int]) -> int:
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    n_elements = 1
    for d in dims:
        n_elements *= d
    return int(n_elements // block_size * type_size)


def validate_gguf(path: str | Path) -> None:
    """Raise `InvalidModelFileError` unless `path` is a complete, readable GGUF file."""
    path = Path(path)
    if not path.exists():
        raise InvalidModelFileError(f"model file not found: {path}")
    if not path.is_file():
        raise InvalidModelFileError(f"model path is not a file: {path}")
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
        except (ValueError, KeyError, struct.error) as exc:
            raise InvalidModelFileError(f"model file is corrupt: {path} ({exc})") from exc


def _walk(cur: _Cursor, size: int, path: Path) -> None:
    cur.take(4)
    version = cur.u32()
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = cur.u64(), cur.u64()
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = cur.string()
        value_type = cur.u32()
        if key == b"general.alignment" and value_type == _UINT32:
            alignment = cur.u32()
        else:
            cur.skip_value(value_type)
    tensors: list[tuple[str, int, int]] = []
    for _ in range(n_tensors):
        name = cur.string().decode("utf-8", errors="replace")
        n_dims = cur.u32()
        if n_dims > 8:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
        dims = [cur.u64() for _ in range(n_dims)]
        ggml_type = cur.u32()
        offset = cur.u64()
        tensors.append((name, offset, _tensor_nbytes(ggml_type, dims)))
    data_start = (cur.pos + alignment - 1) // alignment * alignment
    for name, offset, nbytes in tensors:
        end = data_start + offset + nbytes
        if end > size:
            raise InvalidModelFileError(
                f"model file is truncated: {path} (tensor {name!r} ends at byte {end}, "
                f"the file has {size}); download it again"
            )
