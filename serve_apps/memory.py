"""A replica's own memory reading, the signal the controller's leak rule needs.

``psutil`` on the replica's own process (not ``ps`` output): its resident memory,
and its node's total and available memory (the node's headroom to Ray's memory
monitor threshold is the limit when a member sets none). Read on each golden
probe only, so user calls pay nothing for it.
"""

from __future__ import annotations

import os
from typing import Any

import psutil

__all__ = ["memory_reading", "own_process"]

_process: psutil.Process | None = None
_pid: int | None = None


def own_process() -> psutil.Process:
    """This process's ``psutil`` handle, made again after a fork (a forked child must read itself)."""
    global _process, _pid
    if _process is None or _pid != os.getpid():
        _process, _pid = psutil.Process(), os.getpid()
    return _process


def memory_reading() -> dict[str, Any]:
    """``{"rss_bytes", "node_total_bytes", "node_available_bytes"}`` read now (about 30 µs)."""
    vm = psutil.virtual_memory()
    return {"rss_bytes": int(own_process().memory_info().rss), "node_total_bytes": int(vm.total),
            "node_available_bytes": int(vm.available)}
