"""One thread for all of llama.cpp's compute in the process.

llama.cpp's CPU backend runs each decode on an OpenMP team, and OpenMP (libgomp) keeps a
team of worker threads for every thread that ever started one, for as long as that
thread lives. Once the teams hold more threads than there are cores, libgomp stops
letting idle workers spin and puts them to sleep after every pass, and each decode pays
for waking them. Measured on 2 cores with the default model: 35 ms a token with one
decoding thread, 50 ms as soon as a second long-lived thread had decoded once (a warm-up
on the loading thread, or a second model loaded and idle).

So every decode, of every context, runs here, on one long-lived thread: the engines'
threads hand their batches over and wait (the hand-off costs microseconds against
milliseconds of compute). On a CPU, two models decoding at once would only share the
same cores anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kronk-compute")
_local = threading.local()


def _marked(fn: Callable[[], T]) -> T:
    _local.compute = True
    return fn()


def on_compute_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on the compute thread and return what it returns (or raise what it
    raised). Called from the compute thread itself, it runs `fn` at once."""
    if getattr(_local, "compute", False):
        return fn()
    future = _executor.submit(_marked, fn)
    try:
        return future.result()
    except BaseException:
        # Ctrl-C while the call runs: let it finish first, or the caller could free the
        # context (or batch) the compute thread is still using.
        wait([future])
        raise
