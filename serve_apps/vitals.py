"""A replica's process vitals besides memory: CPU time share, open file descriptors, event-loop lag.

Read by the replica itself on each golden probe (like :mod:`serve_apps.memory`), so
user calls pay nothing and the controller needs no per-node agent to see them:

- **CPU share**: the replica process's user + system CPU time since its previous
  reading, over the wall time between the two (1.0 = one whole core). A replica
  near its ``num_cpus`` while its peers idle is busy with something other than
  inference; a whole node's replicas near their share say the node is starved.
- **Open file descriptors**: a replica that leaks sockets or files runs into the
  process's ``ulimit -n`` and then fails every call that opens one.
- **Event-loop lag**: how late a timer on the replica's event loop wakes up (the
  worst over the time since the previous reading). With Serve's fast path user
  code runs on that loop, so a blocking call in user code stalls every request the
  replica holds; a lag of hundreds of ms is seen here before requests time out.
  Ray Serve measures the same (its ``serve_event_loop_scheduling_latency_ms``
  histogram) but only into Prometheus; the probe needs the figure in its answer.

>>> v = ProcessVitals()
>>> sorted(v.reading())
['cpu_share', 'loop_lag_ms', 'open_fds']
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import psutil

from serve_apps.memory import own_process

__all__ = ["LAG_INTERVAL_S", "ProcessVitals"]

LAG_INTERVAL_S = 0.25
"""How often the lag watch's timer is due: 4 wake-ups a second per replica is no load, and a stall of
more than this is seen within one period."""


class ProcessVitals:
    """The vitals of the process it runs in; :meth:`reading` is cheap (two ``/proc`` reads, ~50 µs).

    Invariant: each reading covers the time since the previous one (CPU share and worst lag), so the
    controller's probe period is the window; the first CPU share covers the process's life so far.
    """

    def __init__(self, *, lag_interval_s: float = LAG_INTERVAL_S) -> None:
        self._interval = lag_interval_s
        self._pid: int | None = None  # the process the previous reading was of (a fork starts over)
        self._last: tuple[float, float] | None = None  # (wall time, cpu seconds) of the previous reading
        self._worst_lag_s: float | None = None  # None until the watch has woken up once
        self._watch: asyncio.Task | None = None

    def watch_loop(self) -> None:
        """Start the lag watch on the running event loop (once; again if that loop went away)."""
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._run(), name="raymedic-loop-lag")

    async def _run(self) -> None:
        while True:
            due = time.monotonic() + self._interval
            await asyncio.sleep(self._interval)
            late = max(0.0, time.monotonic() - due)
            self._worst_lag_s = late if self._worst_lag_s is None else max(self._worst_lag_s, late)

    def reading(self) -> dict[str, Any]:
        """``{"cpu_share", "open_fds", "loop_lag_ms"}`` now; ``loop_lag_ms`` is None until the watch ran."""
        proc = own_process()
        if self._pid != os.getpid():
            self._pid, self._last = os.getpid(), None
        times = proc.cpu_times()
        cpu, now = float(times.user + times.system), time.time()
        since, cpu_before = self._last if self._last is not None else (proc.create_time(), 0.0)
        self._last = (now, cpu)
        wall = now - since
        share = round((cpu - cpu_before) / wall, 4) if wall > 0 else None
        try:
            fds: int | None = proc.num_fds()
        except (AttributeError, psutil.Error):  # num_fds is POSIX only
            fds = None
        lag, self._worst_lag_s = self._worst_lag_s, (0.0 if self._worst_lag_s is not None else None)
        return {"cpu_share": share, "open_fds": fds, "loop_lag_ms": None if lag is None else round(lag * 1e3, 2)}
