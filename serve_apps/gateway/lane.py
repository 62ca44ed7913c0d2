"""One model's lane through the gateway: everything the gateway keeps per model it serves.

A gateway serves one or several models (``raymedic up`` serves every model with
champions). What must never mix between two models lives in a :class:`ModelLane`:
the schema and input policies, the member handles and their call statistics, the
weights and versions the model's controller publishes (its own :class:`ControllerLink`
and sync), the prediction and feedback logs, the input tally for its drift monitors,
its live trials. A fault, a trial or a retrain of one model therefore changes only
its own lane; what the lanes share is the HTTP server, admission (one replica's
capacity) and Serve's view of the application.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from raymedic.config import RaymedicConfig
from raymedic.errors import UnknownModel
from raymedic.storage import Storage
from serve_apps.combine import equal_weights
from serve_apps.gateway.fanout import FanOut, ServeMemberClient, serve_coalescer
from serve_apps.gateway.feedback import FeedbackIntake
from serve_apps.gateway.link import ControllerLink, LinkState, export_call_metrics
from serve_apps.gateway.predict import Predictor
from serve_apps.gateway.trial import Trials, challenger_handle
from serve_apps.labels import LabelBook
from serve_apps.predlog import FeedbackLog, KnownIds, PredictionLog
from serve_apps.quality import InputTally
from serve_apps.review import ReviewBook
from serve_apps.serve_state import AppView
from serve_apps.telemetry import CallRecorder, HedgeBudget, LatencyWindow, LocalEjector, RecentOutputs
from serve_apps.validation import input_policies
from train_jobs.schema import ModelSchema

__all__ = ["ModelLane", "LaneBinding", "pick_lane"]

LaneBinding = dict[str, Any]
"""What the application builder binds per model: ``{"config": <RaymedicConfig of that model as JSON>,
"members": {member: handle}, "versions": {member: version}, "schema": <ModelSchema dict>}``."""


class ModelLane:
    """One model served by the gateway; only the gateway's event loop uses it.

    Args:
        config: this model's config alone (``RaymedicConfig.for_model``).
        members: member name → its deployment handle.
        versions: member name → the version deployed (the controller swaps versions later).
        schema: the members' shared schema.
        storage: the service's storage (logs are kept per model).
        tag: this gateway replica's id.
    """

    def __init__(self, *, config: RaymedicConfig, members: Mapping[str, Any], versions: Mapping[str, str],
                 schema: ModelSchema, storage: Storage, tag: str) -> None:
        cfg = self.cfg = config
        gw = cfg.gateway
        self.model = cfg.model
        self.members = dict(members)
        self.schema = schema
        self.policies = input_policies(schema, cfg.data)
        self.order = [m.name for m in cfg.members]
        self.tally = InputTally(schema, sample_per_batch=cfg.data.sample_per_batch,
                                tensor_rows_per_batch=cfg.data.tensor_rows_per_batch)
        self.state = LinkState(weights=equal_weights(self.order), versions=dict(versions))
        self.predlog = PredictionLog(storage, cfg.model, tag=tag, max_pending=gw.log_max_pending_rows)
        known = KnownIds(storage, cfg.model)
        self.calls = CallRecorder()
        self.latency = LatencyWindow()  # this replica's answered predictions of this model, for the SLO
        recent = RecentOutputs()
        self.link = ControllerLink(self.state, tag=tag, order=self.order, period_s=gw.sync_period_s,
                                   enabled=cfg.controller.enabled, model=cfg.model)
        fanout = FanOut({m: ServeMemberClient(self.members[m], timed=gw.profile) for m in self.order}, order=self.order, settings=gw,
                        calls=self.calls, ejector=LocalEjector(gw.eject_s), hedges=HedgeBudget(gw.hedge_budget),
                        steering=self.state, coalesce=serve_coalescer(gw))
        self.review = ReviewBook(storage, cfg.model, settings=cfg.review, tag=tag,
                                 feature_names=[f.name for f in schema.features])
        self.trials = Trials(calls=self.calls, recent=recent, member_timeout_s=gw.member_timeout_s,
                             handle_for=lambda m: challenger_handle(m, cfg.deployment_of(m)))
        self.predictor = Predictor(config=cfg, schema=schema, policies=self.policies, fanout=fanout,
                                   trials=self.trials, state=self.state, predlog=self.predlog, known=known,
                                   recent=recent, calls=self.calls, tally=self.tally,
                                   review=self.review)
        self.feedback_intake = FeedbackIntake(schema=schema, settings=gw,
                                              feedback=FeedbackLog(storage, cfg.model, tag=tag),
                                              known=known, recent=recent, calls=self.calls, predictions=self.predlog,
                                              labels=LabelBook(storage, cfg.model, horizon_s=gw.label_horizon_s,
                                                               refresh_s=gw.log_flush_s),
                                              review=self.review, shadowed=self.trials.settle)

    def view(self, view: AppView | None) -> AppView | None:
        """Serve's view as this model's code reads it: its members by name, the gateway."""
        return view.of_model({m: self.cfg.deployment_of(m) for m in self.order}) if view is not None else None

    def telemetry(self) -> dict[str, Any]:
        """What this model's controller gets each period (drained here, so each call is reported once),
        also exported as metrics."""
        batch = self.calls.drain()
        batch["data"] = self.tally.drain()
        batch["latency"] = self.latency.report(now=time.monotonic())
        export_call_metrics(batch, model=self.model)
        return batch

    async def close(self) -> None:
        """Graceful shutdown: shadowed requests not logged yet are cancelled (they log what they have),
        and what is buffered is written, so no accepted prediction goes unlogged."""
        await self.trials.close()
        self.predlog.flush()
        self.review.flush()  # after the predictions: a queued item on storage finds its answer there


def pick_lane(lanes: Mapping[str, ModelLane], model: str | None) -> ModelLane:
    """The lane of ``model``; ``None`` (a route without a model, e.g. ``/v1/status``) means the first.

    Raises:
        UnknownModel: (404) a model this gateway does not serve, naming those it does.
    """
    if model is None:
        return next(iter(lanes.values()))
    lane = lanes.get(model)
    if lane is None:
        raise UnknownModel(f"model {model!r} is not served here; GET /v1/models lists {list(lanes)}")
    return lane
