"""The healing controller actor: one detached, named, self-restarting Ray actor for the whole service.

The service may serve several models (``raymedic up`` serves every model with
champions). One actor (``raymedic-controller``, the name gateways and the CLI
look up) heals them all, each through its own
:class:`~controllers.loop.ModelController`: its own loop task, state,
checkpoint, audit log and retrain jobs, acting only on its model's member
deployments. Every actor method takes the ``model`` it is about; ``None`` is the
service's first model, so a client of a one-model service never names it.

The models come from storage (:data:`~raymedic.keys.CONTROLLER_MODELS_KEY`), not
from the constructor's arguments: an actor Ray restarts after a crash heals what
was deployed last, and ``reload`` after a redeploy starts the models added and
stops those no longer served.
"""

from __future__ import annotations

import json
import os
from typing import Any, Awaitable, Callable

from controllers.loop import ModelController
from controllers.models.jobs import current_runtime_env
from controllers.nodes import NodeKeeper
from raymedic.errors import RaymedicError
from raymedic.keys import CONTROLLER_MODELS_KEY
from raymedic.logs import get_logger
from raymedic.storage import Storage

__all__ = ["HealingController", "served_models"]

log = get_logger(__name__)


def served_models(storage: Storage, default: str) -> list[str]:
    """The models last deployed (the service's first model first); ``[default]`` when none were recorded
    (a service deployed before several models existed)."""
    try:
        models = json.loads(storage.read_text(CONTROLLER_MODELS_KEY))["models"]
    except (RaymedicError, OSError, KeyError, ValueError, TypeError):
        return [default]
    return [str(m) for m in models] or [default]


class HealingController:
    """The controller actor; created by :func:`controllers.client.ensure_controller`.

    Args:
        storage_path: The service's storage (config, registry, checkpoints, audit).
        model: The service's first model when it was created (used only if storage names none).
    """

    def __init__(self, storage_path: str, model: str) -> None:
        self._storage = Storage(storage_path)
        self._storage_path = storage_path
        self._models: dict[str, ModelController] = {}
        for name in served_models(self._storage, model):
            self._models[name] = self._new(name)

    def _new(self, name: str) -> ModelController:
        """The first model's controller runs the node keeper (nodes are shared); the others avoid what it evicts."""
        if not self._models:
            return ModelController(self._storage_path, name)
        return ModelController(self._storage_path, name, evicting=self._evicting, nodes=self._keeper)

    def _keeper(self) -> NodeKeeper | None:
        """The service's node keeper (the first model's controller runs it)."""
        return next((c.node_keeper for c in self._models.values() if c.node_keeper is not None), None)

    def _evicting(self) -> frozenset[str]:
        keeper = self._keeper()
        return keeper.evicting() if keeper is not None else frozenset()

    # ---- which model ------------------------------------------------------------------------

    @property
    def _first(self) -> str:
        return next(iter(self._models))

    def _of(self, model: str | None) -> ModelController | None:
        return self._models.get(self._first if model is None else model)

    async def _ask(self, model: str | None, call: Callable[[ModelController], Awaitable[Any]]) -> Any:
        """``call`` on ``model``'s controller, or the refusal (404) naming the models healed here."""
        ctl = self._of(model)
        if ctl is None:
            return {"error": f"model {model!r} is not healed here; the service serves {list(self._models)}",
                    "status": 404}
        return await call(ctl)

    # ---- the actor's API: each call for one model (None: the first) ---------------------------

    async def sync(self, gateway: str, batch: dict[str, Any], epoch: int,
                   model: str | None = None) -> dict[str, Any] | None:
        """A gateway's period for ``model``: its telemetry in, weights/avoid out if they changed."""
        ctl = self._of(model)
        return None if ctl is None else await ctl.sync(gateway, batch, epoch)

    async def status(self, model: str | None = None) -> dict[str, Any]:
        """``model``'s part of ``/v1/status`` (and ``raymedic status``), with the models healed."""
        async def status(ctl: ModelController) -> dict[str, Any]:
            return {**await ctl.status(), "models": list(self._models)}

        return await self._ask(model, status)

    async def set_paused(self, paused: bool, who: str = "operator", model: str | None = None) -> dict[str, Any]:
        """Pause or resume the healing of ``model``."""
        return await self._ask(model, lambda ctl: ctl.set_paused(paused, who))

    async def decide(self, incident_id: str, approve: bool, who: str = "operator",
                     model: str | None = None) -> dict[str, Any]:
        """Approve or reject a proposed action of ``model``'s (approval mode)."""
        return await self._ask(model, lambda ctl: ctl.decide(incident_id, approve, who))

    async def set_mode(self, mode: str, who: str = "operator", model: str | None = None) -> dict[str, Any]:
        """auto: heal ``model`` on its own; approve: propose restarts and wait for an operator."""
        return await self._ask(model, lambda ctl: ctl.set_mode(mode, who))

    async def request_retrain(self, reason: str = "", who: str = "operator",
                              model: str | None = None) -> dict[str, Any]:
        """Retrain ``model`` now (gated like an automatic retrain)."""
        return await self._ask(model, lambda ctl: ctl.request_retrain(reason, who))

    async def rollback(self, members: list[str] | None = None, who: str = "operator",
                       model: str | None = None) -> dict[str, Any]:
        """``model``'s champions back to their previous versions (all members, or ``members``)."""
        return await self._ask(model, lambda ctl: ctl.rollback(members, who))

    async def promote(self, member: str, version: str, reason: str = "", who: str = "operator",
                      model: str | None = None) -> dict[str, Any]:
        """Make a registered version of one of ``model``'s members its champion (an operator's promotion)."""
        return await self._ask(model, lambda ctl: ctl.promote(member, version, reason, who))

    async def trial(self, member: str, version: str = "challenger", who: str = "operator",
                    mode: str | None = None, model: str | None = None) -> dict[str, Any]:
        """Put a registered version of one of ``model``'s members on live trial."""
        return await self._ask(model, lambda ctl: ctl.trial(member, version, who, mode))

    async def note(self, kind: str, target: str, evidence: dict[str, Any], model: str | None = None) -> None:
        """Record something done to ``model``'s service from outside (e.g. an injected fault)."""
        ctl = self._of(model)
        if ctl is not None:
            await ctl.note(kind, target, evidence)

    async def reload(self) -> dict[str, Any]:
        """Re-read what is deployed (after ``raymedic up`` redeploys): models added start healing, models
        no longer served stop, the others re-read their config and versions."""
        wanted = served_models(self._storage, self._first)
        for name in [m for m in self._models if m not in wanted]:
            log.info("model %s is no longer served: its healing stops", name)
            self._models.pop(name).stop()
        reloaded: dict[str, Any] = {}
        for name in wanted:
            if name not in self._models:
                self._models[name] = self._new(name)
            reloaded[name] = (await self._models[name].reload())["versions"]
        self._models = {name: self._models[name] for name in wanted}  # the service's order
        first = reloaded[self._first]
        return {"model": self._first, "models": list(self._models), "versions": first, "by_model": reloaded}

    async def ping(self, model: str | None = None) -> dict[str, Any]:
        """Liveness and identity: ``ensure_controller`` checks it heals the storage it should, in the
        runtime_env it should; ``running`` is ``model``'s loop (None: every model's)."""
        ctl = self._of(model)
        info = await (ctl or self._models[self._first]).ping()
        running = info["running"] if model is not None else all(
            [(await c.ping())["running"] for c in self._models.values()])
        return {**info, "pid": os.getpid(), "model": self._first, "models": list(self._models),
                "storage_path": self._storage_path, "runtime_env": current_runtime_env(), "running": running}

    async def flush(self, model: str | None = None) -> int:
        """Write the buffered audit records now (``model``'s, or every model's); how many."""
        controllers = [self._of(model)] if model is not None else list(self._models.values())
        return sum([await c.flush() for c in controllers if c is not None])
