"""The one prediction path behind ``:predict`` (V1) and ``/infer`` (V2).

Validate the instances (4xx that say what to fix), fan out to every member (and,
during a trial, to the challengers), combine the answers (weighted soft voting,
degraded fallback), log each answered row for feedback joins and drift, and
answer. V2 only translates its tensors to instances before and its answer after,
so the two protocols cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Sequence

import numpy as np

from raymedic.config import RaymedicConfig
from raymedic.errors import ServiceUnavailable
from raymedic.keys import challenger_source
from serve_apps.combine import combine
from serve_apps.gateway.fanout import FanOut
from serve_apps.gateway.link import LinkState
from serve_apps.gateway.trial import Trials, members_on_trial
from serve_apps.predlog import KnownIds, PredictionLog, new_inference_id
from serve_apps.quality import InputTally
from serve_apps.review import ReviewBook, ReviewItem
from serve_apps.stages import NULL_TIMER, NullTimer, StageTimer
from serve_apps.telemetry import CallRecorder, RecentOutputs
from serve_apps.validation import InputPolicy, parse_instances
from train_jobs.schema import ModelSchema

__all__ = ["Predictor"]


class Predictor:
    """Answers a predict body; only the event loop uses it.

    Args:
        config: the service config (limits, deadline, fallback member, model name).
        schema: the model's input schema and classes.
        policies: the per-feature missing/unknown-value policies.
        fanout: the member calls.
        trials: challenger calls and shadow logging.
        state: the controller's last state (weights, trial).
        predlog: the prediction log (buffered; flushed by the gateway).
        known: the inference ids feedback may refer to.
        recent: recent answers, for feedback losses.
        calls: telemetry for the controller (answer confidences).
        tally: input statistics for drift detection.
        review: the review queue (answers under ``review.threshold`` are flagged and queued); None: none.
    """

    def __init__(self, *, config: RaymedicConfig, schema: ModelSchema, policies: Sequence[InputPolicy],
                 fanout: FanOut, trials: Trials, state: LinkState, predlog: PredictionLog, known: KnownIds,
                 recent: RecentOutputs, calls: CallRecorder, tally: InputTally,
                 review: ReviewBook | None = None) -> None:
        self._cfg = config
        self._schema = schema
        self._policies = tuple(policies)
        self._fanout = fanout
        self._trials = trials
        self._state = state
        self._predlog = predlog
        self._known = known
        self._recent = recent
        self._calls = calls
        self._tally = tally
        self._review = review if review is not None and review.enabled else None

    def log(self, records: list[dict[str, Any]]) -> None:
        """Buffer answered rows for the prediction log (member outputs as JSON text, the log's column type)."""
        self._predlog.append({**r, "member_outputs": json.dumps(r["member_outputs"])} for r in records)

    async def answer(self, body: Any, *, timer: StageTimer | NullTimer = NULL_TIMER) -> dict[str, Any]:
        """Validate, fan out, combine, log: the answer to a V1 predict body.

        ``timer`` gets each stage's time (``gateway.profile``; :mod:`serve_apps.stages`).

        Raises:
            InvalidRequest: the body is not valid for the schema (4xx that says what to fix).
            ServiceUnavailable: no member answered in time (503 with Retry-After).
        """
        gw = self._cfg.gateway
        parsed = parse_instances(body, self._schema, max_batch=gw.max_batch_size,
                                 reject_out_of_range=gw.reject_out_of_range, policies=self._policies,
                                 max_tensor_elements=gw.max_tensor_elements)
        rows = parsed.rows
        timer.mark("validate")
        trial = self._state.trial
        on_trial = members_on_trial(trial)
        challengers = {m: asyncio.ensure_future(self._trials.call(m, rows, v)) for m, v in on_trial.items()}
        answers = await self._fanout.answers(rows)
        served = {m: a.probabilities for m, a in answers.items()}
        canary: dict[str, np.ndarray] = {}
        if challengers and trial["mode"] == "canary":  # its answer in the champion's place; the champion's kept
            got = await asyncio.gather(*challengers.values())
            canary = {m: p for m, p in zip(challengers, got) if p is not None and m in answers}
            served.update(canary)
        timer.mark("fanout")
        if timer.enabled and answers:
            slowest = max(answers.values(), key=lambda a: a.latency_s if a.call_s is None else a.call_s)
            timer.note("member_call", slowest.latency_s if slowest.call_s is None else slowest.call_s)
            if slowest.infer_s is not None:
                timer.note("member_infer", slowest.infer_s)
        combo = combine(served, self._state.weights, fallback=self._cfg.fallback_member, min_members=gw.min_members)
        if combo is None:
            self._calls.request_failed()
            raise ServiceUnavailable(
                f"no ensemble member answered within {gw.member_timeout_s:.1f} s "
                "(each tried on two replicas); retry shortly", retry_after_s=1)
        classes = self._schema.classes
        probs = combo.probabilities
        labels = [classes[int(k)] for k in probs.argmax(axis=1)]
        timer.mark("combine")
        now = time.time()
        ids = [new_inference_id(now) for _ in rows]
        # The versions that answered (a promotion swaps replicas one by one: each answer names its own).
        version = ",".join(f"{m}:{on_trial[m] if m in canary else answers[m].version}" for m in combo.members_used)
        outputs = [
            {m: {"probabilities": served[m][i].round(6).tolist(),
                 "replica": "challenger" if m in canary else answers[m].replica,
                 "version": on_trial[m] if m in canary else answers[m].version,
                 # the champion a canary stood in for: a label joined on another gateway
                 # replica (from this log) still pairs the two for the trial
                 **({"champion": {"probabilities": answers[m].probabilities[i].round(6).tolist(),
                                  "version": answers[m].version}} if m in canary else {})}
             for m in answers}
            for i in range(len(rows))
        ]
        self._known.add(ids)
        self._recent.add(ids, {m: a.probabilities for m, a in answers.items()}, ensemble=probs,
                         versions={m: a.version for m, a in answers.items()})
        for m, p in canary.items():
            self._recent.add_source(ids, challenger_source(m), p)
        records = [{"inference_id": ids[i], "ts": now, "model": self._cfg.model, "model_version": version,
                    "features": json.dumps(rows[i]), "member_outputs": outputs[i],
                    "prediction": json.dumps(labels[i]), "probabilities": probs[i].tolist(),
                    "degraded": combo.degraded} for i in range(len(rows))]
        if challengers and trial["mode"] != "canary":  # shadow: compared later, never awaited by the client
            self._trials.shadow(records, challengers, on_trial, log_records=self.log)
        else:
            self.log(records)
        timer.mark("log")
        self._calls.add_confidence(probs.max(axis=1).tolist(), probs.argmax(axis=1).tolist())
        self._calls.request_answered(degraded=combo.degraded)
        self._tally.add(rows)
        timer.mark("telemetry")
        out = {"predictions": labels, "probabilities": probs.round(6).tolist(), "inference_ids": ids,
               "model_version": version, "degraded": combo.degraded}
        if self._review is not None:  # only with review.threshold set: other answers are as they always were
            flags = out["review"] = self._review.flags(probs)
            self._review.queue([ReviewItem(inference_id=ids[i], ts=now, model_version=version,
                                           prediction=records[i]["prediction"],
                                           probabilities=tuple(probs[i].round(6).tolist()),
                                           member_outputs=json.dumps(outputs[i]))
                                for i in range(len(rows)) if flags[i]])
        if parsed.warnings:
            out["warnings"] = parsed.warnings
        return out
