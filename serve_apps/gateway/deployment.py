"""The gateway deployment: wiring, background tasks and graceful shutdown.

One :class:`Gateway` replica serves one model: it builds the components (the
member fan-out, the prediction path, feedback intake, the controller link, the
status views) over shared telemetry, runs two background tasks (the prediction
log's flush and the controller sync), and on shutdown writes what is buffered so
no accepted prediction goes unlogged. The routes come from the mixins
(:mod:`serve_apps.gateway.routes`), which reach the components through the
attributes set here.
"""

# No `from __future__ import annotations`: FastAPI must see real types on Serve ingress methods.

import asyncio
import uuid
from typing import Any

from ray import serve

from raymedic.config import RaymedicConfig
from raymedic.logs import get_logger, use_serve_handlers
from raymedic.storage import Storage
from serve_apps.combine import equal_weights
from serve_apps.gateway.admin import AdminRoutes
from serve_apps.gateway.api import api
from serve_apps.gateway.chaos_routes import ChaosRoutes
from serve_apps.gateway.fanout import FanOut, ServeMemberClient, serve_coalescer
from serve_apps.gateway.feedback import FeedbackIntake
from serve_apps.gateway.link import ControllerLink, LinkState, export_call_metrics
from serve_apps.gateway.predict import Predictor
from serve_apps.gateway.routes import mount
from serve_apps.gateway.status import AppViewCache
from serve_apps.gateway.trial import Trials
from serve_apps.gateway.v1 import V1Routes
from serve_apps.gateway.v2_routes import V2Routes
from serve_apps.predlog import FeedbackLog, KnownIds, PredictionLog
from serve_apps.quality import InputTally
from serve_apps.telemetry import Admission, CallRecorder, HedgeBudget, LocalEjector, RecentOutputs
from serve_apps.validation import input_policies
from train_jobs.schema import ModelSchema

__all__ = ["Gateway"]

log = get_logger(__name__)

mount(api)  # before @serve.ingress(api) below: it binds the routes registered by then


@serve.deployment(name="gateway")
@serve.ingress(api)
class Gateway(V1Routes, V2Routes, AdminRoutes, ChaosRoutes):
    """Serve ingress for one model. Only the event loop mutates its state.

    Args:
        config: the service config (``RaymedicConfig`` as JSON data).
        members: member name → its deployment handle.
        versions: member name → the version deployed (the controller swaps versions later).
        schema: the members' shared schema (``ModelSchema`` as a dict).
        admin_token_sha256: the admin token's sha256, or None to disable admin routes.
    """

    def __init__(self, config: dict[str, Any], members: dict[str, Any], versions: dict[str, str],
                 schema: dict[str, Any], admin_token_sha256: str | None = None) -> None:
        use_serve_handlers()
        self._cfg = RaymedicConfig.model_validate(config)
        gw = self._cfg.gateway
        self._members = members
        self._schema = ModelSchema.from_dict(schema)
        self._policies = input_policies(self._schema, self._cfg.data)
        self._tally = InputTally(self._schema, sample_per_batch=self._cfg.data.sample_per_batch,
                                 tensor_rows_per_batch=self._cfg.data.tensor_rows_per_batch)
        self._order = [m.name for m in self._cfg.members]
        self._state = LinkState(weights=equal_weights(self._order), versions=dict(versions))
        storage = Storage(self._cfg.storage_path)
        try:
            tag = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (unit use)
            tag = uuid.uuid4().hex[:8]
        self._tag = tag
        self._predlog = PredictionLog(storage, self._cfg.model, tag=tag, max_pending=gw.log_max_pending_rows)
        known = KnownIds(storage, self._cfg.model)
        self._admin_sha = admin_token_sha256
        self._calls = CallRecorder()
        self._admission = Admission(gw.max_inflight)
        recent = RecentOutputs()
        self._views = AppViewCache()
        self._link = ControllerLink(self._state, tag=tag, order=self._order, period_s=gw.sync_period_s,
                                    enabled=self._cfg.controller.enabled)
        fanout = FanOut({m: ServeMemberClient(members[m]) for m in self._order}, order=self._order, settings=gw,
                        calls=self._calls, ejector=LocalEjector(gw.eject_s), hedges=HedgeBudget(gw.hedge_budget),
                        steering=self._state, coalesce=serve_coalescer(gw))
        self._trials = Trials(calls=self._calls, recent=recent, member_timeout_s=gw.member_timeout_s)
        self._predictor = Predictor(config=self._cfg, schema=self._schema, policies=self._policies, fanout=fanout,
                                    trials=self._trials, state=self._state, predlog=self._predlog, known=known,
                                    recent=recent, calls=self._calls, tally=self._tally)
        self._feedback_intake = FeedbackIntake(schema=self._schema, settings=gw,
                                               feedback=FeedbackLog(storage, self._cfg.model, tag=tag),
                                               known=known, recent=recent, calls=self._calls)
        loop = asyncio.get_event_loop()
        self._flusher = loop.create_task(self._flush_forever())
        self._syncer = loop.create_task(self._link.sync_forever(self._telemetry)) if self._link.enabled else None

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.gateway.log_flush_s)
            try:
                await asyncio.to_thread(self._predlog.flush)
            except Exception:
                log.exception("prediction log flush failed; retrying next period")

    def _telemetry(self) -> dict[str, Any]:
        """What the controller gets each period (drained here, so each call is reported once), also
        exported as metrics."""
        batch = self._calls.drain()
        batch["data"] = self._tally.drain()
        export_call_metrics(batch, model=self._cfg.model)
        return batch

    async def __del__(self) -> None:
        # Graceful shutdown: write what is buffered so no accepted prediction goes unlogged.
        self._flusher.cancel()
        if self._syncer is not None:
            self._syncer.cancel()
        await self._trials.close()  # shadowed requests not logged yet: cancelled, they log what they have
        self._predlog.flush()
