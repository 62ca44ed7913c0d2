"""One gateway's sync: take its batch of telemetry, answer with the published state if it changed.

Each gateway replica calls the controller once per ``gateway.sync_period_s`` with
everything it saw since its last call: how its member calls ended (per replica),
a sample of the rows it served (data checks), labelled answers and their losses
(ensemble weights, performance monitors, the live trial), the challengers' call
counts. One call per period keeps the controller's load flat whatever the
request rate. The answer is the published state, or None when the gateway
already holds this epoch.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from controllers.checkpoint import Checkpoint
from controllers.deployment import Deployment
from controllers.monitors.performance import PerformanceMonitor
from controllers.policies.calls import CallLog
from controllers.policies.playbook import Playbook
from controllers.policies.probation import CallSample, ChampionWindow
from controllers.policies.weights import HedgeWeights
from controllers.publish import ControlState
from raymedic.keys import CHALLENGER_SUFFIX, challenger_source

__all__ = ["CountedLabels", "GatewaySync", "MAX_GATEWAYS_KEPT", "serving_losses", "split_labels"]

MAX_GATEWAYS_KEPT = 256
"""Gateway replicas whose last batch is remembered (the newest; a replica id is never reused)."""


def serving_losses(losses: Mapping[str, list[float]], versions: Mapping[str, str]) -> dict[str, list[float]]:
    """The losses of answers given by the versions serving now.

    Gateways key losses ``member@version``; a plain ``member`` key is taken as it is.
    Labels arrive late: those for answers of a version a promotion replaced would
    charge the new one for its predecessor's mistakes.

    >>> serving_losses({"mlp@v2": [0.1], "mlp@v1": [0.9], "lr": [0.2]}, {"mlp": "v2", "lr": "v7"})
    {'mlp': [0.1], 'lr': [0.2]}
    """
    out: dict[str, list[float]] = {}
    for key, values in losses.items():
        member, _, version = key.partition("@")
        if not version or version == versions.get(member):
            out.setdefault(member, []).extend(values)
    return out


class CountedLabels:
    """The answers whose label was counted (bounded; the newest are kept).

    Each gateway replica refuses a label it knows was given (``serve_apps.labels``),
    but two replicas reached by one answer's label within the same moment both take
    it. Counted here, once, whatever the gateways did: replaying a label to every
    replica cannot steer the weights. Not checkpointed: the gateways' books, read
    from the durable feedback log, already stop any repeat that is not such a race.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._ids: "OrderedDict[str, None]" = OrderedDict()
        self._capacity = capacity

    def first(self, ids: Iterable[str]) -> set[str]:
        """The ids among ``ids`` not counted before; from now on they are."""
        fresh = set()
        for i in ids:
            if i not in self._ids:
                self._ids[i] = None
                fresh.add(i)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return fresh


def split_labels(records: Sequence[Mapping[str, Any]], counted: set[str]
                 ) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """The losses per ``member@version`` and the labelled answers of the records in ``counted``.

    >>> split_labels([{"id": "a", "losses": {"mlp@v1": 0.2}, "labelled": {"y": 1}},
    ...               {"id": "b", "losses": {"mlp@v1": 0.9}, "labelled": {"y": 0}}], {"a"})
    ({'mlp@v1': [0.2]}, [{'y': 1}])
    """
    losses: dict[str, list[float]] = {}
    labelled = []
    for r in records:
        if r.get("id") not in counted:
            continue
        for key, value in (r.get("losses") or {}).items():
            losses.setdefault(key, []).append(float(value))
        if r.get("labelled"):
            labelled.append(r["labelled"])
    return losses, labelled


class GatewaySync:
    """Ingests gateway batches into the controller's evidence and models.

    Args:
        deployment: The deployment now (data monitor, classes, serving versions).
        calls: The per-replica call log the policy's evidence is reduced from.
        playbook: The retraining playbook (the live trial's paired answers and call counts).
        performance: The accuracy and drift monitors on labelled answers.
        hedge: The ensemble weights (updated on the serving versions' losses).
        control: The published state (its epoch decides whether to answer).
        checkpoint: Marked dirty when a detector fires on the labels.
        document: The published state as gateways get it.
        clock: Wall-clock time.
        champion_calls: Each member's recent calls of its serving version (a promotion's probation baseline);
            None: none kept.

    Attributes:
        gateways: gateway tag → when it last synced (status shows who is connected).
        latency: gateway tag → its last report of predict latencies (the SLO's evidence).
        trial_losses: ``member@version`` on trial → [loss sum, labels]: a promoted challenger's
            weight starts from the losses it earned on its trial.
    """

    def __init__(self, *, deployment: Callable[[], Deployment], calls: CallLog, playbook: Playbook,
                 performance: PerformanceMonitor, hedge: HedgeWeights, control: ControlState,
                 checkpoint: Checkpoint, document: Callable[[], dict[str, Any]],
                 clock: Callable[[], float] = time.time, state: Mapping[str, Any] | None = None,
                 champion_calls: ChampionWindow | None = None) -> None:
        self._deployment = deployment
        self._calls = calls
        self._playbook = playbook
        self._perf = performance
        self._hedge = hedge
        self._control = control
        self._checkpoint = checkpoint
        self._document = document
        self._clock = clock
        self._champion_calls = champion_calls
        self.gateways: dict[str, float] = {}
        self.latency: dict[str, dict[str, Any]] = {}  # gateway → its latest predict latencies (LatencyWindow)
        self.trial_losses: dict[str, list[float]] = {}
        # gateway → the seq of the last batch taken: Ray replays a call whose actor died mid-call on the
        # restarted actor (max_task_retries=-1), and a batch taken before the crash and checkpointed would
        # be counted twice (losses into the weights, labels into the accuracy windows).
        self._last_seq: dict[str, int] = {str(k): int(v) for k, v in ((state or {}).get("last_seq") or {}).items()}
        self._counted = CountedLabels()

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``sync`` part: the last batch taken per gateway."""
        return {"last_seq": dict(self._last_seq)}

    def sync(self, gateway: str, batch: Mapping[str, Any], epoch: int) -> dict[str, Any] | None:
        """Take ``gateway``'s batch; the published state if the gateway's ``epoch`` is not the current one."""
        now = self._clock()
        dep = self._deployment()
        self.gateways[gateway] = now
        seq = batch.get("seq")
        if isinstance(seq, int):
            if seq <= self._last_seq.get(gateway, 0):  # a replay of a batch already taken
                return self._reply(epoch)
            self._last_seq[gateway] = seq
            if len(self._last_seq) > MAX_GATEWAYS_KEPT:  # gateway replicas come and go: keep the newest
                for old in sorted(self._last_seq, key=lambda g: self.gateways.get(g, 0.0))[:-MAX_GATEWAYS_KEPT]:
                    del self._last_seq[old]
        if batch.get("latency"):
            self.latency[gateway] = dict(batch["latency"])
        self._calls.ingest(gateway, now=now, replicas=batch.get("replicas") or {})
        if batch.get("data") and dep.monitor is not None:
            dep.monitor.add(batch["data"])
        trial = self._playbook.trial_members()
        self._member_calls(batch.get("replicas") or {}, dep.versions, trial, now)
        for member, calls in (batch.get("challenger_calls") or {}).items():
            if member in trial:
                self._playbook.observe_rollout(member, challenger=CallSample(
                    int(calls.get("ok", 0)), int(calls.get("failed", 0)),
                    [float(x) for x in calls.get("latencies") or ()]))
        records = batch.get("labels") or []
        losses, labelled = split_labels(records, self._counted.first(r.get("id") for r in records))
        if labelled and dep.n_classes:
            labelled = self._trial_pairs(labelled, trial)
            if self._perf.add_labelled(labelled, now):
                self._checkpoint.mark_dirty()  # the error-stream test fired: its state goes into the next checkpoint
        if batch.get("confidence"):
            self._perf.add_confidence(batch["confidence"], batch.get("predicted"))
        if losses:
            self._hedge.update(serving_losses(losses, dep.versions))
            for member, version in trial.items():
                tally = self.trial_losses.setdefault(f"{member}@{version}", [0.0, 0])
                values = losses.get(challenger_source(member)) or ()
                tally[0] += float(sum(values))
                tally[1] += len(values)
        return self._reply(epoch)

    def _member_calls(self, replicas: Mapping[str, Mapping[str, Any]], versions: Mapping[str, str],
                      trial: Mapping[str, str], now: float) -> None:
        """Each member's calls of this batch (its replicas summed), for the live signals: the serving
        champion's window (a promotion's baseline), the version on probation, the champion's side of a trial."""
        per: dict[str, CallSample] = {}
        for key, report in replicas.items():
            member = key.split("/", 1)[0]
            one = CallSample.of_report(report)
            if one.calls:
                per.setdefault(member, CallSample()).add(ok=one.ok, failed=one.failed, latencies=one.latencies)
        for member, sample in per.items():
            version = versions.get(member)
            if version is None:
                continue
            if self._champion_calls is not None:
                self._champion_calls.add(member, version, sample, now=now)
            self._playbook.observe_probation(member, version, sample)
            if member in trial:
                self._playbook.observe_rollout(member, champion=sample)

    def _reply(self, epoch: int) -> dict[str, Any] | None:
        """The published state for a gateway at ``epoch``: None when it has the current one (or nothing
        is published yet)."""
        if epoch == self._control.epoch or not self._control.published:
            return None
        return self._document()

    def _trial_pairs(self, labelled: list[dict[str, Any]], trial: Mapping[str, str]) -> list[dict[str, Any]]:
        """Feed paired answers (champion and challenger on one labelled request) to the trial; return
        the pairs without the challengers' answers, which are not ensemble sources."""
        out = []
        for pair in labelled:
            p = pair.get("p") or {}
            y = int(pair["y"])
            for member in trial:
                chal = p.get(challenger_source(member))
                if chal is not None and p.get(member) is not None:
                    self._playbook.observe_rollout(member, champion_correct=int(np.argmax(p[member])) == y,
                                                   challenger_correct=int(np.argmax(chal)) == y)
            out.append({"y": y, "p": {k: v for k, v in p.items() if CHALLENGER_SUFFIX not in k}, "ts": pair.get("ts")})
        return out
