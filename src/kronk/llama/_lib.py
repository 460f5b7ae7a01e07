"""The one import of llama-cpp-python's low-level module, and process-wide setup.

Everything in `kronk.llama` goes through `lib`; nothing above this package touches
ctypes. Backend initialisation and llama.cpp's log routing happen once per process.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import llama_cpp.llama_cpp as lib

__all__ = ["ensure_backend", "lib", "llama_errors", "supports_gpu_offload", "system_info"]

log = logging.getLogger("kronk.llama")

_init_lock = threading.Lock()
_initialised = False

# ggml log levels (NONE, DEBUG, INFO, WARN, ERROR; 5 = CONT) -> logging levels.
# llama.cpp is chatty at INFO during load, so its INFO goes to DEBUG here.
_LEVELS = {
    0: logging.DEBUG,
    1: logging.DEBUG,
    2: logging.DEBUG,
    3: logging.WARNING,
    4: logging.ERROR,
}
_last_level = logging.DEBUG

# Error lines llama.cpp logs on a thread inside `llama_errors()`: its C API returns only
# NULL or a code, and the reason ("missing tensor ...") is in the log.
_capture = threading.local()


@lib.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, _user_data: Any) -> None:
    # Level 5 (CONT) continues the previous message at its level.
    global _last_level
    py_level = _last_level if level == 5 else _LEVELS.get(level, logging.DEBUG)
    _last_level = py_level
    lines: list[str] | None = getattr(_capture, "lines", None)
    if lines is not None and py_level >= logging.ERROR:
        lines.append(text.decode("utf-8", errors="replace"))
    if log.isEnabledFor(py_level):
        log.log(py_level, "%s", text.decode("utf-8", errors="replace").rstrip("\n"))


# "llama_model_load: error loading model: " and the like, in front of the reason itself.
_PREFIX = re.compile(r"^(?:[\w:]+: )+?(?:error loading model: )?")


@contextmanager
def llama_errors() -> Iterator[list[str]]:
    """Collect what llama.cpp logs as errors on this thread while the block runs, one
    reason per entry with llama.cpp's function-name prefixes removed (first = most specific).
    The list is filled when the block exits."""
    collected: list[str] = []
    previous = getattr(_capture, "lines", None)
    _capture.lines = collected
    reasons: list[str] = []
    try:
        yield reasons
    finally:
        _capture.lines = previous
        for line in "".join(collected).splitlines():
            reason = _PREFIX.sub("", line.strip(), count=1)
            if reason and reason not in reasons:
                reasons.append(reason)


def ensure_backend() -> None:
    """Initialise llama.cpp's backends once and route its logs into `logging`."""
    global _initialised
    with _init_lock:
        if _initialised:
            return
        lib.llama_log_set(_log_callback, ctypes.c_void_p(0))
        lib.llama_backend_init()
        _initialised = True


def system_info() -> str:
    """llama.cpp's build and CPU feature line (AVX2, F16C, ...)."""
    ensure_backend()
    return bytes(lib.llama_print_system_info()).decode("utf-8", errors="replace").strip()


def supports_gpu_offload() -> bool:
    ensure_backend()
    return bool(lib.llama_supports_gpu_offload())
