"""A GPU replica's own device signals, and the fault double that stands in for a failing GPU.

Read in the replica, on golden probes only (user calls pay nothing), like its memory
(:mod:`serve_apps.memory`):

- **the replica's GPU memory** from PyTorch's caching allocator
  (``torch.cuda.memory_allocated`` / ``memory_reserved`` and the device's total): what an
  out-of-memory fault is about, per replica, which NVML cannot split between processes;
- **its node's devices as NVML reports them** (the ``pynvml`` Ray vendors in
  ``ray._private.thirdparty``, so nothing is installed for it): each visible device's memory,
  utilisation and uncorrected ECC errors. A read that *fails* is itself the signal: a device
  that fell off the bus, a driver that lost it, NVML unable to talk to it.

A replica without a GPU reads ``None``: ``GET /v1/status`` then says "no GPU" instead of a
row of zeros.

The fault double (``raymedic chaos gpu-fault --member M --kind oom|device-lost|ecc``, on a
machine with or without a GPU): the replica's inference raises exactly what PyTorch raises
for that fault — ``torch.cuda.OutOfMemoryError`` for ``oom``, a ``RuntimeError("CUDA error:
...")`` for the others, with the CUDA runtime's own wording — and its health reading reports
the fault as NVML would (``device-lost``: the read fails with NVML's "GPU is lost";
``ecc``: uncorrected ECC errors counted). The healing controller sees only those two
signals, the same ones a real fault gives it.
"""

from __future__ import annotations

import threading
from typing import Any

from raymedic.errors import InvalidRequest
from raymedic.keys import GPU_FAULT_KINDS

__all__ = ["GPU_FAULT_KINDS", "check_kind", "cuda_error", "gpu_reading", "nvml_reading", "raise_gpu_fault"]


CUDA_MESSAGES = {
    "oom": ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 15.77 GiB of which "
            "1.12 GiB is free. (raymedic chaos gpu-fault)"),
    "device-lost": ("CUDA error: unspecified launch failure\nCUDA kernel errors might be asynchronously reported "
                    "at some other API call (raymedic chaos gpu-fault: device lost)"),
    "ecc": ("CUDA error: uncorrectable ECC error encountered\nCUDA kernel errors might be asynchronously reported "
            "at some other API call (raymedic chaos gpu-fault)"),
}
"""The text PyTorch's exception carries for each fault kind (the CUDA runtime's own wording)."""
NVML_LOST = "NVML_ERROR_GPU_IS_LOST: GPU is lost (raymedic chaos gpu-fault)"


def check_kind(kind: Any) -> str:
    """A gpu-fault ``kind`` (None: ``oom``), or a 422 naming the choices."""
    kind = "oom" if kind is None else kind
    if kind not in GPU_FAULT_KINDS:
        raise InvalidRequest(f"gpu-fault kind must be one of {list(GPU_FAULT_KINDS)}, got {kind!r}")
    return kind


def cuda_error(kind: str) -> BaseException:
    """The exception PyTorch raises for ``kind`` (``torch.cuda.OutOfMemoryError`` for ``oom``, else a
    ``RuntimeError``); a plain ``RuntimeError`` with the same text where torch is not installed."""
    try:
        # lazy: torch is only in member replicas (imported there already); the gateway never calls this
        import torch

        oom: type[BaseException] = torch.cuda.OutOfMemoryError
    except ImportError:  # pragma: no cover - members always have torch
        oom = RuntimeError
    return (oom if kind == "oom" else RuntimeError)(CUDA_MESSAGES[kind])


def raise_gpu_fault(kind: str) -> None:
    """Raise what a failing GPU makes inference raise (see the module)."""
    raise cuda_error(kind)


_nvml_lock = threading.Lock()
_nvml: Any = None


def _nvml_module() -> Any:
    """Ray's vendored ``pynvml``, initialised once per process; raises what ``nvmlInit`` raises."""
    global _nvml
    with _nvml_lock:
        if _nvml is None:
            # lazy: only a GPU replica (or a probe of one) reads NVML
            from ray._private.thirdparty import pynvml

            pynvml.nvmlInit()
            _nvml = pynvml
        return _nvml


def nvml_reading(fault: str | None = None) -> dict[str, Any]:
    """This node's GPUs as NVML reports them: ``{"state": "ok", "devices": [...]}`` or
    ``{"state": "error", "error": "..."}`` when a read fails (the signal), ``ecc`` when a device counts
    uncorrected ECC errors. ``fault`` is the fault double's kind (what NVML would say then)."""
    if fault == "device-lost":
        return {"state": "error", "error": NVML_LOST, "devices": []}
    try:
        nv = _nvml_module()
        devices = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            util = nv.nvmlDeviceGetUtilizationRates(h)
            try:
                ecc = int(nv.nvmlDeviceGetTotalEccErrors(h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                                         nv.NVML_VOLATILE_ECC))
            except nv.NVMLError:  # ECC not supported on this board (most consumer GPUs): not a fault
                ecc = None
            devices.append({"index": i, "memory_used_bytes": int(mem.used), "memory_total_bytes": int(mem.total),
                            "utilization_pct": int(util.gpu), "ecc_uncorrected": ecc})
    except Exception as exc:  # noqa: BLE001  (any NVML failure is the device's health signal, not ours)
        return {"state": "error", "error": f"{type(exc).__name__}: {exc}"[:200], "devices": []}
    if fault == "ecc" and devices:
        devices[0] = {**devices[0], "ecc_uncorrected": (devices[0]["ecc_uncorrected"] or 0) + 1}
    state = "ecc" if any(d["ecc_uncorrected"] for d in devices) else "ok"
    return {"state": state, "devices": devices}


_DOUBLE_NVML: dict[str, dict[str, Any]] = {
    "oom": {"state": "ok", "devices": []},
    "device-lost": {"state": "error", "error": NVML_LOST, "devices": []},
    "ecc": {"state": "ecc", "devices": [], "ecc_uncorrected": 1},
}


def gpu_reading(device: str, fault: str | None = None) -> dict[str, Any] | None:
    """The replica's GPU signals now, or None for a replica with no GPU and no GPU fault injected.

    Args:
        device: the replica's torch device (``"cuda:0"``, ``"cpu"``).
        fault: the fault double's kind, if one is injected.

    Returns:
        ``device``, ``memory_allocated_bytes`` / ``memory_reserved_bytes`` / ``memory_total_bytes`` (the
        replica's, from torch; None off a GPU), ``utilization_pct`` (its device's, from NVML), ``nvml`` (see
        :func:`nvml_reading`), ``fault`` (the double's kind or None) and ``health``: ``ok``, or ``fault``
        when the double is on, NVML's read failed or it counts uncorrected ECC errors.
    """
    on_gpu = device.startswith("cuda")
    if not on_gpu and fault is None:
        return None
    out: dict[str, Any] = {"device": device, "memory_allocated_bytes": None, "memory_reserved_bytes": None,
                           "memory_total_bytes": None, "utilization_pct": None, "fault": fault}
    if on_gpu:
        try:
            import torch  # lazy: a GPU replica has it loaded already

            index = torch.device(device).index or 0
            out.update(memory_allocated_bytes=int(torch.cuda.memory_allocated(index)),
                       memory_reserved_bytes=int(torch.cuda.memory_reserved(index)),
                       memory_total_bytes=int(torch.cuda.get_device_properties(index).total_memory))
        except Exception as exc:  # noqa: BLE001  (a CUDA call that fails is the signal)
            out["torch_error"] = f"{type(exc).__name__}: {exc}"[:200]
    # Off a GPU only the double speaks: what NVML would report for its fault (oom is a process's, not the
    # device's: NVML reads fine then).
    nvml = nvml_reading(fault) if on_gpu else _DOUBLE_NVML[str(fault)]
    out["nvml"] = nvml
    if nvml and nvml.get("devices"):
        out["utilization_pct"] = nvml["devices"][0]["utilization_pct"]
    bad = fault is not None or "torch_error" in out or (nvml is not None and nvml["state"] in ("error", "ecc"))
    out["health"] = "fault" if bad else "ok"
    return out
