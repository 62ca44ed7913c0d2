"""The operator's API: pause and resume, approval mode, approve or reject a restart, retrain, trial,
roll back, promote, and notes of what was done from outside.

The gateway's admin routes and the CLI reach these through the controller actor;
an answer is a plain dict, and a request that cannot be carried out comes back as
``{"error": "<what is wrong and what to do>", "status": <HTTP code>}`` (the gateway
turns it into that 4xx), never as an exception. Every change an operator makes is
audited with who made it and checkpointed at once, so it survives a controller
restart.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from controllers.audit import AuditLog
from controllers.checkpoint import Checkpoint
from controllers.checks import ModelChecks
from controllers.models.healer import ModelHealer, Registry
from controllers.policies.playbook import Playbook
from controllers.policies.replica import Approval, ControlMode, HealingPolicy
from controllers.recorder import Recorder

__all__ = ["Operator"]


class Operator:
    """The logic behind the controller's operator methods.

    Args:
        model: The model healed.
        policy: The replica policy (paused, approval mode, proposals).
        playbook: The retraining playbook (whether a trial is running).
        healer: Carries out retrains, trials and rollbacks.
        checks: Told to run the playbook on the next step after a retrain request.
        recorder: Records policy events.
        audit: The audit trail.
        checkpoint: Written after every change.
        registry: The model registry (which members have a previous version).
        members: The members' names now.
        clock: Wall-clock time.
    """

    def __init__(self, *, model: str, policy: HealingPolicy, playbook: Playbook, healer: ModelHealer,
                 checks: ModelChecks, recorder: Recorder, audit: AuditLog, checkpoint: Checkpoint,
                 registry: Registry, members: Callable[[], list[str]], clock: Callable[[], float]) -> None:
        self.model = model
        self._policy = policy
        self._playbook = playbook
        self._healer = healer
        self._checks = checks
        self._recorder = recorder
        self._audit = audit
        self._checkpoint = checkpoint
        self._registry = registry
        self._members = members
        self._clock = clock

    async def _persist(self) -> None:
        await asyncio.to_thread(self._checkpoint.save)
        await asyncio.to_thread(self._audit.flush)

    async def set_paused(self, paused: bool, who: str = "operator") -> dict[str, Any]:
        """Pause (detect and record, act on nothing, keep routing as it is) or resume healing."""
        if self._policy.paused != paused:
            self._policy.paused = paused
            self._audit.record("pause" if paused else "resume", self.model, evidence={"by": who},
                               action="pause" if paused else "resume", outcome="ok")
            await self._persist()
        return {"paused": self._policy.paused}

    async def decide(self, incident_id: str, approve: bool, who: str = "operator") -> dict[str, Any]:
        """Approve or reject a proposed restart (approval mode)."""
        try:
            ev = self._policy.decide(incident_id, approve, who, self._clock())
        except KeyError:
            pending = [i.id for i in self._policy.proposals()]
            return {"error": f"no incident {incident_id!r}; pending proposals: {pending}", "status": 404}
        except ValueError as exc:
            return {"error": f"{exc}; `raymedic status` lists the pending proposals", "status": 409}
        self._recorder.event(ev)
        await self._persist()
        return {"incident": incident_id, "approval": str(Approval.APPROVED if approve else Approval.REJECTED)}

    async def decide_model(self, proposal_id: str, approve: bool, who: str = "operator") -> dict[str, Any]:
        """Approve or reject a proposed model action (retrain, search, promote, rollback; ``model-NNNNNN``):
        audited with who answered, checkpointed at once; an approved one runs on the next step."""
        out = self._healer.decide(proposal_id, approve, who)
        if "error" not in out:
            await self._persist()
            if approve:
                self._checks.soon()  # the next step runs the playbook, which carries it out
        return out

    async def set_mode(self, mode: str, who: str = "operator") -> dict[str, Any]:
        """auto: heal on its own; approve: propose restarts, compactions, drains and every model action
        (retrain, search, promote, rollback) and wait for an operator."""
        try:
            wanted = ControlMode(mode)
        except ValueError:
            return {"error": f"mode must be 'auto' or 'approve', got {mode!r}", "status": 422}
        if self._policy.mode != wanted:
            self._policy.approval = wanted == ControlMode.APPROVE
            self._audit.record("mode", self.model, evidence={"by": who}, action=str(wanted), outcome="ok")
            await self._persist()
        return {"mode": str(wanted)}

    def request_retrain(self, reason: str = "", who: str = "operator") -> dict[str, Any]:
        """Retrain now (gated like an automatic one); answered at once, the job runs in the background."""
        out = self._healer.request(f"{reason} (by {who})" if reason else f"requested by {who}")
        if "error" not in out:
            self._checks.soon()  # the next step runs the playbook
        return out

    def rollback(self, members: list[str] | None = None, who: str = "operator") -> dict[str, Any]:
        """Champion back to the previous version (all members, or ``members``), swapped in on every
        replica; during a live trial, rolling back ends the trial and the champion stays."""
        known = self._members()
        bad = [m for m in members or () if m not in known]
        if bad:
            return {"error": f"unknown member(s) {bad}; members are {known}", "status": 404}
        trial = self._playbook.rollout
        if trial is not None:
            if not self._healer.spawn(self._healer.rollback(members, f"operator: {who}")):
                return {"error": "a deployment is in progress; retry when `raymedic status` shows it done",
                        "status": 409}
            return {"rollback": "trial ended", "trial": trial["record"], "champion_kept": True,
                    "members": sorted(trial["versions"])}
        names = members or known
        missing = [m for m in names if "previous" not in self._registry.aliases(self.model, m)]
        if missing:
            return {"error": f"no previous version to roll back to for {missing}", "status": 409}
        if not self._healer.spawn(self._healer.rollback(names, f"operator: {who}")):
            return {"error": "a promotion or rollback is already being deployed; retry when `raymedic status` "
                             "shows it done", "status": 409}
        return {"rollback": "started", "members": names,
                "champion_now": {m: self._registry.aliases(self.model, m)["previous"] for m in names}}

    def promote(self, member: str, version: str, reason: str = "", who: str = "operator") -> dict[str, Any]:
        """Make a registered version (an id or an alias) the champion of ``member``, swapped in on every
        replica like the controller's own promotions; refused (404) for an unknown member or version, naming
        what exists, and (409) during a live trial or another deployment. Not refused while paused, like
        :meth:`rollback`: an operator's own action is what a pause leaves to the operator."""
        return self._healer.request_promote(member, version, reason=reason, who=who)

    def trial(self, member: str, version: str = "challenger", who: str = "operator",
              mode: str | None = None) -> dict[str, Any]:
        """Put a registered version of a member on live trial (canary/shadow) next to its champion."""
        out = self._healer.request_trial(member, version, mode)
        if "error" not in out:
            self._audit.record("trial-requested", f"{self.model}/{member}", evidence={"by": who, "ref": version},
                               action="trial", outcome="ok")
        return out

    async def note(self, kind: str, target: str, evidence: dict[str, Any]) -> None:
        """Record something done to the service from outside (e.g. an injected fault), once: a note that
        carries a ``note_id`` already in the audit (Ray replaying the call on a restarted controller, which
        reloads its audit tail) is not recorded again."""
        note_id = evidence.get("note_id")
        if note_id is not None and any(isinstance(ev := r.get("evidence"), dict) and ev.get("note_id") == note_id
                                       for r in self._audit.tail(200)):
            return
        self._audit.record(kind, target, evidence=evidence, action="external", outcome="ok")
        await asyncio.to_thread(self._audit.flush)
