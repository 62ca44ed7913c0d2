"""Fault injection for drills, demos, tests and benchmarks.

Faults look like the real ones from the outside:

- ``kill``: SIGKILL to the replica's worker process, sent on the replica's own
  node (as an OOM killer or a crashed host would), not a polite Ray call;
- ``hang``: the replica's inference path blocks while its process, event loop and
  Serve health checks stay fine (the "half-alive" replica);
- ``slow``: every inference waits ``delay_ms`` more (gray failure);
- ``wrong``: answers stay well-formed with HTTP 200 but the class probabilities
  are rotated, so predictions are plausible and wrong;
- ``error``: every call of the replica raises, while its process and Serve's
  health checks stay fine (a CUDA error, a state broken by a bad reload).

A fault lives in the replica's memory only: a replacement replica starts clean,
which is exactly what a restart is supposed to buy.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np

from raymedic.errors import InjectedFault, InvalidRequest
from raymedic.keys import CHAOS_FAULTS

__all__ = ["FAULTS", "ReplicaFault", "sigkill_replica"]

FAULTS = CHAOS_FAULTS
IN_REPLICA = tuple(f for f in FAULTS if f != "kill")  # kill is a signal, not a state of the replica


@dataclass
class ReplicaFault:
    """The fault state of one replica; ``None`` mode means healthy."""

    mode: str | None = None
    delay_s: float = 0.0

    def __post_init__(self) -> None:
        self._released = asyncio.Event()

    def set(self, mode: str | None, delay_ms: float | None = None) -> dict[str, Any]:
        """Set (or clear, with None) the fault; a new mode first releases calls a previous hang held, so
        clearing a hang frees the replica at once.

        Raises:
            InvalidRequest: a mode that cannot live in a replica (``kill`` is a signal), or ``slow`` without a delay.
        """
        if mode is not None and mode not in IN_REPLICA:
            raise InvalidRequest(f"fault {mode!r} cannot be set inside a replica; use one of {list(IN_REPLICA)}")
        if mode == "slow" and (delay_ms is None or not 0 < delay_ms <= 60_000):
            raise InvalidRequest("slow needs --delay-ms between 1 and 60000")
        self._released.set()  # wake anything a previous hang held
        self._released = asyncio.Event()
        self.mode = mode
        self.delay_s = (delay_ms or 0) / 1000.0
        return {"mode": mode, "delay_ms": delay_ms}

    async def before_inference(self) -> None:
        """Hold a call (``hang``: until cleared), delay it (``slow``): the faults a deadline must catch; or
        fail it (``error``).

        Raises:
            InjectedFault: with the ``error`` fault, on every call.
        """
        if self.mode == "error":
            raise InjectedFault("injected fault: this replica's inference path raises (raymedic chaos error)")
        if self.mode == "hang":
            await self._released.wait()
        elif self.mode == "slow":
            await asyncio.sleep(self.delay_s)

    def after_inference(self, probabilities: np.ndarray) -> np.ndarray:
        """Corrupt an answer (``wrong``: classes rotated) while keeping it well-formed: the fault only golden
        probes and labels can see.
        """
        if self.mode == "wrong":
            return np.roll(probabilities, 1, axis=1)
        return probabilities


def _kill(pid: int) -> dict[str, Any]:
    os.kill(pid, signal.SIGKILL)
    return {"pid": pid, "signal": "SIGKILL"}


def sigkill_replica(pid: int, node_id: str | None, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """SIGKILL ``pid`` on ``node_id`` via a zero-CPU task pinned to that node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(_kill)
    if node_id:
        task = task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False))
    return ray.get(task.remote(pid), timeout=timeout_s)
