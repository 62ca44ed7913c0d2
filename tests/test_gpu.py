"""GPU faults without a GPU: the fault double, the classification of what it raises, and the node rule.

Pure: no Ray cluster. The real-Ray path (chaos gpu-fault → the replica restarted, no failed request)
is in tests/test_healing.py.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from controllers.policies.gpu import (
    GpuFault,
    GpuNodeWatch,
    gpu_error_kind,
    reading_fault,
)
from controllers.policies.replica import (
    CallStats,
    FaultKind,
    Probe,
    ProbeOutcome,
    ReplicaSnapshot,
    assess,
)
from controllers.probes import error_detail
from raymedic.config import ControllerConfig
from raymedic.errors import InvalidRequest
from raymedic.keys import GPU_FAULT_KINDS
from serve_apps.chaos import ReplicaFault
from serve_apps.gpu import CUDA_MESSAGES, cuda_error, gpu_reading, nvml_reading


def _raised(fault: ReplicaFault) -> BaseException:
    async def call() -> None:
        await fault.before_inference()

    with pytest.raises(BaseException) as err:
        asyncio.run(call())
    return err.value


@pytest.mark.parametrize("kind, torch_type", [("oom", torch.cuda.OutOfMemoryError), ("device-lost", RuntimeError),
                                              ("ecc", RuntimeError)])
def test_the_double_raises_what_torch_raises_and_its_reading_reports_the_fault(kind, torch_type):
    async def set_it() -> ReplicaFault:
        f = ReplicaFault()
        assert f.set("gpu-fault", gpu_kind=kind) == {"mode": "gpu-fault", "kind": kind}
        return f

    fault = asyncio.run(set_it())
    exc = _raised(fault)
    assert type(exc) is torch_type
    assert str(exc).startswith("CUDA out of memory" if kind == "oom" else "CUDA error: ")
    assert gpu_error_kind(error_detail(exc)) == GpuFault(kind)  # the controller reads it as the GPU's
    reading = gpu_reading("cpu", fault.gpu_kind)
    assert reading["health"] == "fault" and reading["fault"] == kind and reading_fault(reading) == GpuFault(kind)

    async def clear() -> None:
        fault.set(None)

    asyncio.run(clear())
    assert fault.gpu_kind is None and gpu_reading("cpu", fault.gpu_kind) is None  # no GPU: no reading at all


def test_the_double_refuses_an_unknown_kind_with_the_choices():
    async def set_it() -> None:
        ReplicaFault().set("gpu-fault", gpu_kind="melted")

    with pytest.raises(InvalidRequest, match=r"one of \['oom', 'device-lost', 'ecc'\]"):
        asyncio.run(set_it())
    assert set(CUDA_MESSAGES) == set(GPU_FAULT_KINDS)


def test_a_failed_nvml_read_is_the_signal_not_an_exception():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: NVML reads")
    out = nvml_reading()
    assert out["state"] == "error" and out["error"] and out["devices"] == []
    assert reading_fault({"health": "fault", "nvml": out}) == GpuFault.DEVICE_LOST


def test_only_gpu_errors_are_gpu_faults():
    assert gpu_error_kind("RayTaskError(OutOfMemoryError): ray::ServeReplica... CUDA out of memory") == GpuFault.OOM
    assert gpu_error_kind("RuntimeError: CUDA error: an illegal memory access was encountered") == \
        GpuFault.DEVICE_LOST
    assert gpu_error_kind("NVMLError_GpuIsLost: GPU is lost") == GpuFault.DEVICE_LOST
    for other in ("", "InjectedFault: injected fault", "ValueError: shapes (3,) and (4,) not aligned",
                  "MemoryError: cannot allocate"):
        assert gpu_error_kind(other) is None, other
    assert str(cuda_error("oom")).startswith("CUDA out of memory")


def _failing(detail: str) -> ReplicaSnapshot:
    probes = tuple(Probe(10.0 + i, ProbeOutcome.ERROR, 0.01, detail=detail) for i in range(2))
    return ReplicaSnapshot(member="mlp", replica="a", state="RUNNING", probes=probes, alive=True)


def test_a_failing_replica_with_a_gpu_error_is_a_gpu_incident_and_any_other_stays_an_error():
    cfg = ControllerConfig()
    peer = ReplicaSnapshot(member="mlp", replica="b", state="RUNNING", alive=True,
                           probes=(Probe(10.0, ProbeOutcome.OK, 0.01),), calls=CallStats(ok=5))
    gpu = assess(_failing("RuntimeError: CUDA error: uncorrectable ECC error encountered"), [peer], cfg)
    assert gpu is not None and gpu.kind == FaultKind.GPU and gpu.evidence["gpu_fault"] == "ecc"
    assert gpu.evidence["probe_errors"] == 2
    plain = assess(_failing("InjectedFault: injected fault"), [peer], cfg)
    assert plain is not None and plain.kind == FaultKind.ERROR and "gpu_fault" not in plain.evidence


def test_a_node_is_decided_on_after_n_faulty_replicas_in_the_window_once_per_cooldown():
    w = GpuNodeWatch(faults=3, window_s=60.0, cooldown_s=120.0)
    w.record(node="n1", now=0.0, kind=GpuFault.ECC, source="mlp/a")
    w.record(node="n1", now=1.0, kind=GpuFault.ECC, source="mlp/a")  # the same replica again: one fault
    w.record(node="n2", now=1.0, kind=GpuFault.OOM, source="mlp/x")
    w.record(node=None, now=1.0, kind=GpuFault.OOM, source="mlp/y")  # node unknown: nothing to count against
    w.record(node="n1", now=30.0, kind=GpuFault.DEVICE_LOST, source="mlp/b")
    assert w.decide(now=31.0) == []
    assert w.decide(now=61.0) == [] and w.report(now=61.0)["n1"]["faults_in_window"] == 1  # "a" left the window
    w.record(node="n1", now=62.0, kind=GpuFault.ECC, source="mlp/c")
    w.record(node="n1", now=63.0, kind=GpuFault.ECC, source="mlp/d")
    (d,) = w.decide(now=64.0)
    assert (d.node_id, d.faults, d.kinds, d.sources) == ("n1", 3, ("device-lost", "ecc"), ("mlp/b", "mlp/c", "mlp/d"))
    assert d.target == "node/n1" and d.action == "drain GPU members from node n1"
    w.record(node="n1", now=70.0, kind=GpuFault.ECC, source="mlp/e")
    assert w.decide(now=71.0) == []  # cooldown
    w.record(node="n1", now=180.0, kind=GpuFault.ECC, source="mlp/f")
    w.record(node="n1", now=181.0, kind=GpuFault.ECC, source="mlp/g")
    w.record(node="n1", now=182.0, kind=GpuFault.ECC, source="mlp/h")
    assert [x.node_id for x in w.decide(now=190.0)] == ["n1"]  # the cooldown is over and it keeps failing
    assert w.report(now=190.0)["n1"]["drain_decided_at"] == 190.0


def test_the_node_rule_refuses_impossible_settings():
    with pytest.raises(ValueError, match="faults >= 1"):
        GpuNodeWatch(faults=0, window_s=60.0, cooldown_s=0.0)


def test_the_gpu_node_drain_drains_a_worker_through_ray_and_only_proposes_on_the_head(monkeypatch):
    """Ray drains nodes, not devices: a worker whose GPU keeps failing is drained (Serve moves its
    replicas, replacement first); the head node never is (the decision stays a proposal); a failed drain
    is the outcome, never an exception."""
    import asyncio

    from controllers import actuators
    from controllers.outcome import Outcome

    drained: list[tuple[str, str]] = []
    monkeypatch.setattr(actuators, "_is_head_node", lambda node_id: node_id == "head")
    monkeypatch.setattr(actuators, "drain_node", lambda node_id, msg: (drained.append((node_id, msg)),
                                                                       Outcome.done("ok"))[1])
    act = actuators.RayActuators()
    out = asyncio.run(act.drain_gpu_node("w1", [("cnn", "r1"), ("cnn", "r2")]))
    assert out.text.startswith("ok: node w1 draining") and drained == [("w1", drained[0][1])]
    assert "cnn/r1, cnn/r2" in drained[0][1]
    out = asyncio.run(act.drain_gpu_node("head", [("cnn", "r3")]))
    assert out.text.startswith("proposed: node head is the head node") and len(drained) == 1
    assert asyncio.run(act.drain_gpu_node("w2", [])).text.startswith("ok: no GPU replica") and len(drained) == 1
    monkeypatch.setattr(actuators, "drain_node", lambda node_id, msg: Outcome.done("refused: not alive"))
    assert asyncio.run(act.drain_gpu_node("w3", [("cnn", "r4")])).text == "refused: not alive"
