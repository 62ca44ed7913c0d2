"""GPU faults: which replica errors are a GPU's, and when a node's device keeps failing (pure: no Ray).

Two decisions, both on plain data with ``now`` passed in:

- **a replica's fault is a GPU's** (:func:`gpu_error_kind`, :func:`reading_fault`): its
  inference raised what PyTorch raises for a failing device — ``torch.cuda.OutOfMemoryError``
  ("CUDA out of memory"), a ``RuntimeError("CUDA error: ...")`` (an uncorrectable ECC error, a
  device that fell off the bus) — or its GPU health reading says so (an NVML read that failed,
  uncorrected ECC errors). Such a replica is healed on the error path (avoided at once,
  restarted, :func:`controllers.policies.replica.assess`) under its own incident kind, ``gpu``,
  so the audit says what broke.
- **a node's device keeps failing** (:class:`GpuNodeWatch`): ``controller.gpu_node_faults``
  GPU faults on one node within ``gpu_node_window_s`` (each faulty replica counted once, whether
  its incident or its NVML reading showed it: a device that keeps failing fails each replacement
  in turn) decide "drain GPU members from node X"
  (:class:`DrainGpuNode`), once per ``gpu_node_cooldown_s``. A restart alone would put the
  replacement on the same bad device; the drain moves the GPU members off it.

>>> gpu_error_kind("RayTaskError(OutOfMemoryError): CUDA out of memory. Tried to allocate 2.00 GiB")
<GpuFault.OOM: 'oom'>
>>> gpu_error_kind("RuntimeError: CUDA error: uncorrectable ECC error encountered")
<GpuFault.ECC: 'ecc'>
>>> gpu_error_kind("InjectedFault: injected fault: this replica's inference path raises") is None
True
>>> w = GpuNodeWatch(faults=2, window_s=60.0, cooldown_s=300.0)
>>> w.record(node="n1", now=0.0, kind=GpuFault.OOM, source="mlp/a")
>>> w.decide(now=1.0)
[]
>>> w.record(node="n1", now=30.0, kind=GpuFault.ECC, source="mlp/b")
>>> [(d.node_id, d.faults) for d in w.decide(now=31.0)]
[('n1', 2)]
>>> w.decide(now=32.0)  # cooldown: decided once
[]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from raymedic.enums import StrEnum

__all__ = ["DRAIN_ACTION", "DrainGpuNode", "GpuFault", "GpuNodeWatch", "gpu_error_kind", "reading_fault"]

DRAIN_ACTION = "drain GPU members from node"
"""The ``action`` of a :class:`DrainGpuNode` audit event (followed by the node id)."""


class GpuFault(StrEnum):
    """What went wrong with a GPU, as the replica's error or its health reading shows it."""

    OOM = "oom"
    """GPU memory exhausted in the replica (``torch.cuda.OutOfMemoryError``)."""
    DEVICE_LOST = "device-lost"
    """A CUDA error with no more specific cause, or NVML could not read the device (fallen off the bus)."""
    ECC = "ecc"
    """An uncorrectable ECC error (the CUDA error, or NVML's uncorrected ECC counter)."""


_OOM_MARKS = ("OutOfMemoryError", "CUDA out of memory")
_ECC_MARKS = ("ECC error", "ecc error", "ECC_ERROR", "uncorrectable ECC")
_DEVICE_MARKS = ("CUDA error", "cudaError", "NVML", "GPU is lost", "CUBLAS_STATUS", "CUDNN_STATUS")


def gpu_error_kind(detail: str) -> GpuFault | None:
    """The GPU fault an error text shows (a probe's ``Type: message``), or None for any other error."""
    if not detail:
        return None
    if any(m in detail for m in _OOM_MARKS):
        return GpuFault.OOM
    if any(m in detail for m in _ECC_MARKS):
        return GpuFault.ECC
    if any(m in detail for m in _DEVICE_MARKS):
        return GpuFault.DEVICE_LOST
    return None


def reading_fault(reading: Mapping[str, Any] | None) -> GpuFault | None:
    """The GPU fault a replica's health reading (:func:`serve_apps.gpu.gpu_reading`) reports, or None.

    >>> reading_fault({"health": "fault", "nvml": {"state": "error", "error": "GPU is lost"}})
    <GpuFault.DEVICE_LOST: 'device-lost'>
    >>> reading_fault({"health": "ok", "nvml": {"state": "ok"}}) is None
    True
    """
    if not reading or reading.get("health") != "fault":
        return None
    nvml = reading.get("nvml") or {}
    if nvml.get("state") == "error":
        return GpuFault.DEVICE_LOST
    if nvml.get("state") == "ecc":
        return GpuFault.ECC
    try:
        return GpuFault(reading.get("fault"))
    except ValueError:
        return GpuFault.DEVICE_LOST  # a CUDA call of the reading itself failed


@dataclass(frozen=True)
class DrainGpuNode:
    """The decision that a node's device keeps failing: move its GPU members off it."""

    node_id: str
    faults: int
    window_s: float
    kinds: tuple[str, ...]
    sources: tuple[str, ...]
    """The replicas that failed there, as ``member/replica``."""

    @property
    def target(self) -> str:
        """The audit target: ``node/<id>``."""
        return f"node/{self.node_id}"

    @property
    def action(self) -> str:
        """The audit action: what was decided, in words."""
        return f"{DRAIN_ACTION} {self.node_id}"

    @property
    def evidence(self) -> dict[str, Any]:
        """The audit evidence: the faults counted, their kinds and sources, over which window."""
        return {"faults": self.faults, "window_s": self.window_s, "kinds": list(self.kinds),
                "sources": list(self.sources)}


@dataclass
class GpuNodeWatch:
    """GPU faults per node over a window, and the drain decisions they call for.

    Invariant: only :meth:`record` and :meth:`decide` change the memory; a source (one replica) counts
    once in the window, however many probes, incidents or readings show it.
    """

    faults: int
    window_s: float
    cooldown_s: float
    _seen: dict[str, deque[tuple[float, str, str]]] = field(default_factory=dict)  # node → (ts, kind, source)
    _decided_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.faults < 1 or self.window_s <= 0 or self.cooldown_s < 0:
            raise ValueError(f"GpuNodeWatch needs faults >= 1, window_s > 0 and cooldown_s >= 0; got "
                             f"{self.faults}, {self.window_s}, {self.cooldown_s}")

    def record(self, *, node: str | None, now: float, kind: GpuFault | str, source: str) -> None:
        """One GPU fault seen on ``node`` (None: the node is not known, nothing to count against)."""
        if not node:
            return
        seen = self._seen.setdefault(node, deque())
        if any(s == source for _, _, s in seen):
            return
        seen.append((now, str(kind), source))

    def _trim(self, now: float) -> None:
        for node in list(self._seen):
            seen = self._seen[node]
            while seen and now - seen[0][0] > self.window_s:
                seen.popleft()
            if not seen:
                del self._seen[node]

    def decide(self, *, now: float) -> list[DrainGpuNode]:
        """The nodes whose device keeps failing now (each decided at most once per cooldown)."""
        self._trim(now)
        out = []
        for node, seen in sorted(self._seen.items()):
            if len(seen) < self.faults or now - self._decided_at.get(node, -float("inf")) < self.cooldown_s:
                continue
            self._decided_at[node] = now
            out.append(DrainGpuNode(node, len(seen), self.window_s, tuple(sorted({k for _, k, _ in seen})),
                                    tuple(s for _, _, s in seen)))
        return out

    def report(self, *, now: float) -> dict[str, dict[str, Any]]:
        """Per node with GPU faults in the window: how many, of which kinds, and when it was last decided on."""
        self._trim(now)
        return {node: {"faults_in_window": len(seen), "kinds": sorted({k for _, k, _ in seen}),
                       "drain_decided_at": self._decided_at.get(node)}
                for node, seen in sorted(self._seen.items())}
