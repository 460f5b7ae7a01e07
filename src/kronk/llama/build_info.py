"""Which llama.cpp the installed llama-cpp-python was built from (for `kronk version`).

ggml records the llama.cpp commit it was compiled from; llama-cpp-python does not say
which one it vendors anywhere else that is installed.
"""

from __future__ import annotations

import ctypes


def _ggml_string(name: str) -> str | None:
    try:
        from llama_cpp._ggml import libggml  # loads libggml (and libggml-base beside it)
    except (ImportError, OSError):
        return None
    try:
        func = getattr(libggml, name)
    except AttributeError:  # a ggml from before these functions existed
        return None
    func.argtypes = []
    func.restype = ctypes.c_char_p
    value = func()
    text = value.decode("utf-8", errors="replace").strip() if isinstance(value, bytes) else ""
    return text or None


def llama_cpp_commit() -> str | None:
    """The short llama.cpp commit (e.g. "0c1e570", "-dirty" when built from a patched tree)."""
    commit = _ggml_string("ggml_commit")
    return None if commit in (None, "unknown") else commit


def ggml_version() -> str | None:
    return _ggml_string("ggml_version")
