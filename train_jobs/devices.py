"""Where training and serving run, and in which precision: pure decisions, no Ray, no CUDA calls.

The callers read the world (``ray.cluster_resources()``, ``torch.cuda.is_available()``,
``torch.cuda.is_bf16_supported()``) and hand the facts in, so every branch is tested on a
machine without a GPU.

* Training asked for GPUs (``training.use_gpu``) on a cluster with none would leave Ray
  Train waiting forever for resources that never come; it trains on CPU instead, with one
  warning line saying so and how to fix it.
* Mixed precision on a GPU: bfloat16 where the device supports it (same exponent range as
  float32, so no loss scaling), else float16 with a ``GradScaler`` (small gradients would
  underflow to zero without it); on CPU always float32 (autocast there is slower for these
  small networks and would change today's numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["AmpPlan", "Precision", "TrainDevice", "choose_precision", "choose_training_device", "serving_device"]


@dataclass(frozen=True)
class TrainDevice:
    """Whether a Ray Train run asks for GPUs, and the warning to log when the request was overridden."""

    use_gpu: bool
    warning: str | None = None


def choose_training_device(*, requested_gpu: bool, cluster_gpus: float, num_workers: int) -> TrainDevice:
    """GPUs for training only where the cluster has one per worker (``ScalingConfig`` asks one each).

    >>> choose_training_device(requested_gpu=True, cluster_gpus=2, num_workers=2)
    TrainDevice(use_gpu=True, warning=None)
    >>> choose_training_device(requested_gpu=True, cluster_gpus=0, num_workers=1).use_gpu
    False
    """
    if not requested_gpu:
        return TrainDevice(use_gpu=False)
    if cluster_gpus >= num_workers:
        return TrainDevice(use_gpu=True)
    have = "no GPU resources" if cluster_gpus <= 0 else f"{cluster_gpus:g} GPU(s) for {num_workers} workers"
    return TrainDevice(use_gpu=False, warning=(
        f"training.use_gpu is true but the Ray cluster has {have}: training on CPU instead of waiting for GPUs "
        "that are not there. Add GPU nodes (on an autoscaling cluster whose GPU nodes scale from zero, start "
        "one first), lower training.num_workers, or set training.use_gpu: false to silence this"))


class Precision(Enum):
    """The dtype the forward pass runs in under ``torch.autocast``."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


@dataclass(frozen=True)
class AmpPlan:
    """Mixed precision for one device: the autocast dtype and whether gradients need a ``GradScaler``."""

    precision: Precision
    scaler: bool = False

    @property
    def enabled(self) -> bool:
        """Whether autocast is on at all (off: plain float32, exactly as before)."""
        return self.precision is not Precision.FLOAT32


def choose_precision(*, device_type: str, enabled: bool, bf16_supported: bool) -> AmpPlan:
    """The mixed precision a device supports (``training.mixed_precision``; CPU always float32).

    >>> choose_precision(device_type="cuda", enabled=True, bf16_supported=False)
    AmpPlan(precision=<Precision.FLOAT16: 'float16'>, scaler=True)
    >>> choose_precision(device_type="cpu", enabled=True, bf16_supported=True).enabled
    False
    """
    if not enabled or device_type != "cuda":
        return AmpPlan(Precision.FLOAT32)
    if bf16_supported:
        return AmpPlan(Precision.BFLOAT16)
    return AmpPlan(Precision.FLOAT16, scaler=True)


def serving_device(*, requested_gpu: bool, cuda_available: bool) -> tuple[str, str | None]:
    """A member replica's device, and a warning when it asked for a GPU it cannot see.

    >>> serving_device(requested_gpu=True, cuda_available=False)[0]
    'cpu'
    """
    if requested_gpu and cuda_available:
        return "cuda", None
    if requested_gpu:
        return "cpu", ("the member has num_gpus > 0 but this replica sees no CUDA device: serving on CPU (check "
                       "the node's GPU drivers and that the member's replicas land on GPU nodes)")
    return "cpu", None
