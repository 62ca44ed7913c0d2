"""The controller kill rows of ``raymedic bench durability``: SIGKILL the controller at a named point, count.

The promise under test: a controller SIGKILLed at the worst moment and restarted by Ray does every action
once and keeps every record. The bench arms a failpoint (:mod:`raymedic.failpoints`: a real SIGKILL of the
controller's own process, once), brings about the situation that reaches it on the bench's own service,
waits for Ray to restart the controller from its checkpoint and for the action to finish, and reads what
the audit holds from the arming on (:func:`controllers.audit.read_audit`). Each kill's window is judged by
:func:`controllers.exactly_once.exactly_once` — the same check ``tests/test_controller_kills.py`` makes —
and the kills of one point are summed into one row of the table.

The points driven (each is a few tens of seconds on a 2-core machine):

- ``after-detect``: a ``wrong`` chaos fault on one replica; the controller decides its restart, checkpoints
  the intent, audits the detection and is killed before the restart runs; done when the incident is
  recovered (the replica replaced).
- ``after-submit``: an operator retrain (the admin route); the controller submits the Ray job and is killed
  before it checkpoints or audits the job id; done when the job is followed to its end. The bench runs these
  before any label is sent, so the job finds too few labels and ends at once (skipped): what is measured is
  that there is one job and one record of it, not a training.

- ``mid-promotion``: the champion of the config's first member registered again as a new version (the
  same weights: it ties live, and a tie is promoted) and put on live trial by the admin route, with labelled
  traffic until the trial decides; the controller is killed after the registry names it champion and before
  the replicas swap and the promotion is audited; done when the member serves it and the promotion is in the
  audit. Its service runs trials on every request with a small verdict (:data:`TRIAL_ROLLOUT`), and each kill
  adds one version per kill to the bench's kept registry (the champion's own weights, so later runs measure
  the same model).

A deadline that passes is a row's ``timed out`` figure (what was waited for is in the kill's ``each``
entry), never a crash: the point's remaining kills are skipped (they would only wait out the same
deadlines) and the other point and the gateway figures still come.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from controllers.audit import read_audit
from controllers.client import get_controller
from controllers.exactly_once import INCIDENT_ACTIONS, exactly_once
from raymedic.app.http import request_json
from raymedic.bench.cluster import Progress, RaymedicSystem, wait_until
from raymedic.bench.faults import fault_member
from raymedic.errors import RaymedicError
from raymedic.failpoints import Point, arm, disarm, fired
from raymedic.keys import ADMIN_TOKEN_ENV
from raymedic.storage import Storage
from train_jobs.registry import ModelRegistry
from train_jobs.synthetic import SyntheticGenerator, SyntheticSpec

__all__ = ["ACTION_KINDS", "KILL_POINTS", "TRIAL_ROLLOUT", "ControllerKillSettings", "controller_rows", "kill_outcome",
           "point_label", "run_controller_kills"]

ACTION_KINDS = (*INCIDENT_ACTIONS, "retrain-submitted", "promote")
"""Audit record kinds that are actions the controller took (a restart, a job submitted, a promotion)."""

KILL_POINTS: tuple[Point, ...] = (Point.AFTER_DETECT, Point.AFTER_SUBMIT, Point.MID_PROMOTION)
"""The points this bench drives, in the order it drives them (the retrains before any label is sent)."""

TRIAL_ROLLOUT = {"mode": "canary", "share": 1.0, "min_labels": 20, "max_labels": 200}
"""The rollout settings of the bench's service: a trial sees every request and decides on 20 labels, so a
mid-promotion kill is seconds of traffic, not minutes (the config's own rollout is kept otherwise)."""
TRIAL_BATCH_ROWS = 10
"""Rows per labelled request while a trial waits for its verdict."""


@dataclass(frozen=True)
class ControllerKillSettings:
    """How many kills per point and how long each may take; small enough for a 2-core machine."""

    kills: int = 3
    """Controller SIGKILLs per kill point (0: none)."""
    timeout_s: float = 180.0
    """Deadline of one kill: the point firing, Ray's restart and the action's end, each."""
    settle_s: float = 10.0
    """After the action's end, how long the audit may take to hold the kill's last records before one
    counts missing: the status shows an incident recovered a moment before its ``recovered`` record is
    buffered for the audit (the record is written; the bench must not read before it is)."""


def point_label(point: Point) -> str:
    """The table's name of a point: ``controller.after-detect`` → ``after-detect``."""
    return str(point).removeprefix("controller.")


def kill_outcome(point: Point, records: Iterable[Mapping[str, Any]], *, fired: bool,
                 timed_out: str | None = None) -> dict[str, Any]:
    """One kill's figures from the audit records of its window (arming to settled).

    ``actions`` counts the records of :data:`ACTION_KINDS` (a ``promote`` only when it succeeded);
    ``duplicate actions`` counts the extra times an action was done (an action done twice counts 1);
    ``missing records`` counts the records :func:`controllers.exactly_once.missing_records` finds lacking.

    >>> recs = [{"kind": "detected-wrong", "incident": "inc-1"}, {"kind": "restart", "incident": "inc-1"},
    ...         {"kind": "restart", "incident": "inc-1"}, {"kind": "recovered", "incident": "inc-1",
    ...                                                    "action": "restart"}]
    >>> o = kill_outcome(Point.AFTER_DETECT, recs, fired=True)
    >>> (o["kill point"], o["actions"], o["duplicate actions"], o["missing records"], o["duplicates"])
    ('after-detect', 2, 1, 0, ['restart inc-1 x2'])
    """
    recs = list(records)
    verdict = exactly_once(recs)
    actions = sum(1 for r in recs if r.get("kind") in ACTION_KINDS
                  and (r.get("kind") != "promote" or str(r.get("outcome", "")).startswith("ok")))
    return {"kill point": point_label(point), "fired": fired, "actions": actions,
            "duplicate actions": sum(d.count - 1 for d in verdict.duplicates),
            "missing records": len(verdict.missing),
            "duplicates": [f"{d.action} {d.key} x{d.count}" for d in verdict.duplicates],
            "missing": [f"{m.what} of {m.key} ({m.seen} seen)" for m in verdict.missing],
            "timed_out": timed_out}


def controller_rows(outcomes: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows: the kills of each point summed (``kills``: how many fired; ``timed out``: kills
    whose point, restart or action missed its deadline), in the order the points first appear; each row
    keeps its kills under ``each``.

    >>> a = {"kill point": "after-detect", "fired": True, "actions": 1, "duplicate actions": 0,
    ...      "missing records": 0, "timed_out": None}
    >>> b = {**a, "fired": False, "actions": 0, "timed_out": "the point to fire"}
    >>> [(r["kill point"], r["kills"], r["actions"], r["timed out"]) for r in controller_rows([a, b])]
    [('after-detect', 1, 1, 1)]
    """
    rows: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        row = rows.setdefault(o["kill point"], {"kill point": o["kill point"], "kills": 0, "actions": 0,
                                                 "duplicate actions": 0, "missing records": 0, "timed out": 0,
                                                 "each": []})
        row["kills"] += bool(o["fired"])
        for key in ("actions", "duplicate actions", "missing records"):
            row[key] += o[key]
        row["timed out"] += o.get("timed_out") is not None
        row["each"].append(dict(o))
    return list(rows.values())


class _Killer:
    """Drives one kill at a time on the bench's deployed service (see the module's docstring)."""

    def __init__(self, system: RaymedicSystem, points: Path, settings: ControllerKillSettings,
                 progress: Progress) -> None:
        self.system, self.points, self.s, self.progress = system, points, settings, progress
        self.cfg = system.config
        self.storage = Storage(self.cfg.storage_path)
        self._pid: int | None = None
        self._restart_s: float | None = None
        self._since = time.time()

    def _status(self) -> dict[str, Any]:
        r = request_json("GET", f"{self.system.url}/v1/status", timeout_s=10)
        if r.status != 200:
            raise RaymedicError(f"/v1/status answered {r.status}")
        return r.body

    def _admin(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        r = request_json("POST", f"{self.system.url}/v1/admin/{route}", body,
                         headers={"Authorization": f"Bearer {os.environ[ADMIN_TOKEN_ENV]}"}, timeout_s=30)
        if r.status != 200:
            raise RaymedicError(f"the bench's {route} request was refused: {r.status} {r.body}")
        return r.body

    def _wait(self, predicate: Callable[[], Any], what: str) -> Any:
        return wait_until(predicate, self.s.timeout_s, what)

    def _killed_and_back(self, point: Point, pid: int | None) -> float:
        """Wait for ``point`` to fire and Ray to run a controller resumed from its checkpoint; seconds."""
        self._wait(lambda: fired(self.points, point), f"failpoint {point} to fire")
        t = time.monotonic()
        self._wait(lambda: (c := self._status()["controller"]).get("pid") not in (None, pid)
                   and c.get("resumed_from_checkpoint"), "Ray to restart the controller from its checkpoint")
        return time.monotonic() - t

    def _cause(self, point: Point, k: int) -> None:
        """Bring about the situation that reaches ``point``, and wait until its action is done."""
        if point == Point.AFTER_DETECT:
            member = fault_member("wrong", self.cfg)
            replica = self.system.inject("wrong", member)["replica"]
            self._restart_s = self._killed_and_back(point, self._pid)
            self._wait(lambda: any(i["replica"] == replica and i["status"] != "open"
                                   for i in self._status()["incidents"]),
                       f"the wrong replica {member}/{replica} to be replaced after the kill")
        elif point == Point.MID_PROMOTION:
            member, challenger = self._challenger()
            record = self._admin("trial", {"member": member, "version": challenger})["trial"]
            seeds = iter(range(1000 * (k + 1), 1000 * (k + 2)))
            self._wait(lambda: self._labelled(next(seeds)) and fired(self.points, point),
                       "the live trial to promote the challenger (and the failpoint to fire)")
            self._restart_s = self._killed_and_back(point, self._pid)
            self._wait(lambda: {m["name"]: m["version"] for m in self._status()["members"]}[member] == challenger,
                       f"{member} to serve {challenger} after the kill")
            self._wait(lambda: any(r["kind"] == "promote" and r.get("incident") == record
                                   for r in self._audit(self._since)),
                       "the promotion to be audited")
        else:
            tag = f"bench controller kill {k}"
            self._admin("retrain", {"reason": tag})
            self._restart_s = self._killed_and_back(point, self._pid)
            self._wait(lambda: any(tag in h.get("reason", "") and h.get("job_status")
                                   for h in (self._status()["controller"].get("retraining") or {})
                                   .get("history", [])),
                       "the retrain job submitted before the kill to be followed to its end")

    def _challenger(self) -> tuple[str, str]:
        """The first member's champion registered again as a new version: (member, its version)."""
        member = self.cfg.members[0].name
        registry = ModelRegistry(self.storage)
        champion = registry.load(self.cfg.model, member)
        meta = {k: v for k, v in champion.info.metadata.items()
                if k not in ("version", "model", "member", "created_at", "parent_version", "files")}
        files = {k: v for k, v in champion.files.items() if k != "metadata.json"}
        info = registry.register(self.cfg.model, member, files=files, metadata=meta,
                                 parent_version=champion.info.version)
        return member, info.version

    def _labelled(self, seed: int) -> bool:
        """One labelled request of :data:`TRIAL_BATCH_ROWS` synthetic rows (a trial's verdict needs labels)."""
        rows = SyntheticGenerator(SyntheticSpec(seed=self.cfg.training.seed)).sample(TRIAL_BATCH_ROWS, seed=seed)
        features = [c for c in rows.columns if c != "label"]
        base = f"{self.system.url}/v1/models/{self.cfg.model}"
        r = request_json("POST", f"{base}:predict", {"instances": rows[features].to_dict("records")}, timeout_s=30)
        if r.status != 200:
            return False
        f = request_json("POST", f"{base}:feedback", {"inference_ids": r.body["inference_ids"],
                                                       "labels": rows["label"].tolist()}, timeout_s=30)
        return f.status == 200

    def _settled(self, point: Point) -> None:
        """Before a kill: the service whole (no avoided replica); no retrain job, trial or deployment running."""
        self._wait(self.system.ready, "the service to be whole before the kill")
        self._wait(lambda: not any((r := self._status()["controller"].get("retraining") or {}).get(k)
                                   for k in ("job", "trial", "deploying")),
                   "the previous retrain job, trial or deployment to end")

    def one(self, point: Point, k: int) -> dict[str, Any]:
        """Kill the controller once at ``point``; the kill's figures (a missed deadline is one of them)."""
        timed_out, self._restart_s = None, None
        self._since = time.time()
        try:
            self._settled(point)
            self._since = time.time()
            self._pid = self._status()["controller"]["pid"]
            arm(self.points, point)
            t0 = time.monotonic()
            self._cause(point, k)
            done_s = round(time.monotonic() - t0, 1)
        except (TimeoutError, RaymedicError) as exc:
            timed_out, done_s = str(exc), None
        has_fired = fired(self.points, point)
        disarm(self.points, point)  # an unfired point must not kill a later step of the run
        records = self._audit(self._since)
        settle = time.monotonic() + (0.0 if timed_out else self.s.settle_s)
        while exactly_once(records).missing and time.monotonic() < settle:
            time.sleep(0.5)
            records = self._audit(self._since)
        out = kill_outcome(point, records, fired=has_fired, timed_out=timed_out)
        out.update(restart_s=None if self._restart_s is None else round(self._restart_s, 1), done_s=done_s)
        return out

    def _audit(self, since: float) -> list[dict[str, Any]]:
        """The audit from ``since`` on, with what the controller still buffers written out first."""
        try:
            handle = get_controller()
            if handle is not None:
                ray.get(handle.flush.remote(), timeout=30)
        except (ray.exceptions.RayError, TimeoutError) as exc:  # a controller still restarting: read what is written
            self.progress(f"could not flush the controller's audit ({type(exc).__name__}); reading what is "
                          "written")
        return read_audit(self.storage, self.cfg.model, since=since)


def run_controller_kills(system: RaymedicSystem, *, points_dir: str | os.PathLike[str],
                         settings: ControllerKillSettings, progress: Progress) -> list[dict[str, Any]]:
    """``settings.kills`` controller kills at each of :data:`KILL_POINTS` on ``system``'s deployed service
    (its processes started with ``RAYMEDIC_FAILPOINTS`` = ``points_dir``); the table's rows."""
    killer = _Killer(system, Path(points_dir), settings, progress)
    outcomes = []
    for point in KILL_POINTS:
        for k in range(settings.kills):
            o = killer.one(point, k)
            outcomes.append(o)
            how = (f"timed out: {o['timed_out']}" if o["timed_out"] else
                   f"restarted in {o['restart_s']} s, done in {o['done_s']} s")
            progress(f"controller kill {k + 1}/{settings.kills} {point_label(point)}: {how}; {o['actions']} "
                     f"action(s), {o['duplicate actions']} duplicate(s), {o['missing records']} missing record(s)")
            if o["timed_out"]:  # the service did not settle: more kills here would only wait out deadlines
                break
    return controller_rows(outcomes)
