"""The gateway deployment: wiring, background tasks and graceful shutdown.

One :class:`Gateway` replica serves every model of the service, each through its
own lane (:mod:`serve_apps.gateway.lane`: the member fan-out, the prediction path,
feedback intake, the controller link and logs of that model). It runs the
background tasks (the prediction logs' flush and one controller sync per model),
and on shutdown writes what is buffered so no accepted prediction goes unlogged.
The routes come from the mixins (:mod:`serve_apps.gateway.routes`), which reach
the lanes through the attributes set here.
"""

# No `from __future__ import annotations`: FastAPI must see real types on Serve ingress methods.

import asyncio
import uuid

from ray import serve

from raymedic.config import RaymedicConfig
from raymedic.logs import get_logger, use_serve_handlers
from raymedic.storage import Storage
from serve_apps.access import ClientAccess
from serve_apps.gateway.admin import AdminRoutes
from serve_apps.gateway.api import api
from serve_apps.gateway.chaos_routes import ChaosRoutes
from serve_apps.gateway.lane import LaneBinding, ModelLane
from serve_apps.gateway.routes import mount
from serve_apps.gateway.status import AppViewCache
from serve_apps.gateway.v1 import V1Routes
from serve_apps.gateway.v2_routes import V2Routes
from serve_apps.telemetry import Admission
from train_jobs.schema import ModelSchema

__all__ = ["Gateway"]

log = get_logger(__name__)

mount(api)  # before @serve.ingress(api) below: it binds the routes registered by then


@serve.deployment(name="gateway")
@serve.ingress(api)
class Gateway(V1Routes, V2Routes, AdminRoutes, ChaosRoutes):
    """Serve ingress for the service's models, one :class:`~serve_apps.gateway.lane.ModelLane` each. Only the
    event loop mutates its state.

    Args:
        models: one binding per model served, the first the default of routes without a model
            (:data:`~serve_apps.gateway.lane.LaneBinding`: its config alone, member handles, versions, schema).
        admin_token_sha256: the admin token's sha256, or None to disable admin routes.
        client_keys: the client keys' sha256 → client name (:func:`serve_apps.access.client_key_table`), or
            None with ``gateway.client_auth`` off.
    """

    def __init__(self, models: list[LaneBinding], admin_token_sha256: str | None = None,
                 client_keys: dict[str, str] | None = None) -> None:
        use_serve_handlers()
        configs = [RaymedicConfig.model_validate(b["config"]) for b in models]
        self._cfg = gw_cfg = configs[0]  # the settings every model shares (gateway, chaos, storage)
        try:
            tag = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (unit use)
            tag = uuid.uuid4().hex[:8]
        self._tag = tag
        storage = Storage(gw_cfg.storage_path)
        self._lanes = {cfg.model: ModelLane(config=cfg, members=b["members"], versions=b["versions"],
                                            schema=ModelSchema.from_dict(b["schema"]), storage=storage, tag=tag)
                       for cfg, b in zip(configs, models, strict=True)}
        self._admin_sha = admin_token_sha256
        self._chaos = gw_cfg.chaos.enabled
        self._admission = Admission(gw_cfg.gateway.max_inflight)
        self._access = ClientAccess.from_config(gw_cfg.gateway, client_keys)
        self._views = AppViewCache()
        loop = asyncio.get_event_loop()
        self._flusher = loop.create_task(self._flush_forever())
        self._syncers = [loop.create_task(lane.link.sync_forever(lane.telemetry))
                         for lane in self._lanes.values() if lane.link.enabled]
        self._reviewers = [loop.create_task(self._review_forever(lane)) for lane in self._lanes.values()
                           if lane.review.enabled]

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.gateway.log_flush_s)
            for lane in self._lanes.values():
                try:
                    await asyncio.to_thread(lane.predlog.flush)
                except Exception:
                    log.exception("prediction log flush of %s failed; retrying next period", lane.model)
                if lane.review.enabled:  # after the predictions: a queued item on storage finds its answer
                    try:
                        await asyncio.to_thread(lane.review.flush)
                    except Exception:
                        log.exception("review log flush of %s failed; retrying next period", lane.model)

    async def _review_forever(self, lane: ModelLane) -> None:
        """Merge the other replicas' review items and the labels that clear them, every ``review.refresh_s``
        (its own task: a first read of a long queue never delays the prediction log's flush)."""
        while True:
            await asyncio.sleep(lane.cfg.review.refresh_s)
            try:
                await asyncio.to_thread(lane.review.refresh)
            except Exception:
                log.exception("review queue refresh of %s failed; retrying next period", lane.model)

    async def __del__(self) -> None:
        # Graceful shutdown: write what is buffered so no accepted prediction goes unlogged.
        self._flusher.cancel()
        for task in self._syncers + self._reviewers:
            task.cancel()
        for lane in self._lanes.values():
            await lane.close()
