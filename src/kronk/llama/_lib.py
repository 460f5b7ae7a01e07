"""The one import of llama-cpp-python's low-level module, and process-wide setup.

Everything in `kronk.llama` goes through `lib`; nothing above this package touches
ctypes. Backend initialisation and llama.cpp's log routing happen once per process.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

import llama_cpp.llama_cpp as lib

__all__ = ["ensure_backend", "lib", "supports_gpu_offload", "system_info"]

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


@lib.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, _user_data: Any) -> None:
    # Level 5 (CONT) continues the previous message at its level.
    global _last_level
    py_level = _last_level if level == 5 else _LEVELS.get(level, logging.DEBUG)
    _last_level = py_level
    if log.isEnabledFor(py_level):
        log.log(py_level, "%s", text.decode("utf-8", errors="replace").rstrip("\n"))


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
