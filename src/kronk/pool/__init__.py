"""The model pool: which models are loaded, for whom, and for how long.

`scheduler.py` decides what is loaded (by count and by memory) and who waits;
`lease.py` is a request's hold on a loaded model; `memory.py` estimates what a load
will take; `report.py` is what `/api/ps` and `kronk model ps` show of it.
"""

from kronk.pool.lease import ModelLease, load_options
from kronk.pool.memory import MemoryEstimate, estimate_memory
from kronk.pool.report import LoadedModel
from kronk.pool.scheduler import ModelPool, PoolEvent, PoolListener

__all__ = [
    "LoadedModel",
    "MemoryEstimate",
    "ModelLease",
    "ModelPool",
    "PoolEvent",
    "PoolListener",
    "estimate_memory",
    "load_options",
]
