"""Feedback labels: written durably, then joined to the answers they label.

A label is written (and fsynced) before its 2xx, so an acknowledged label is never
lost. It may name an answer another gateway replica gave less than one log flush
ago, so an id unknown here is looked for again once that replica's log had time to
reach storage. Each known label turns into per-member losses (the ensemble
weights) and labelled answers (the controller's accuracy and drift windows).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from raymedic.config import GatewayConfig
from serve_apps.predlog import MAX_CLOCK_SKEW_S, FeedbackLog, KnownIds, PredictionLog, inference_time
from serve_apps.telemetry import CallRecorder, RecentOutputs
from serve_apps.validation import parse_feedback
from train_jobs.schema import ModelSchema

__all__ = ["FeedbackIntake"]


class FeedbackIntake:
    """Takes a feedback body; only the event loop uses it.

    Args:
        schema: the model's classes (labels are checked against them).
        settings: the gateway config (batch limit, log flush period).
        feedback: the durable feedback log.
        known: the inference ids answered (here or by another gateway replica).
        recent: recent answers, for the losses.
        calls: telemetry for the controller (losses, labelled answers).
    """

    def __init__(self, *, schema: ModelSchema, settings: GatewayConfig, feedback: FeedbackLog, known: KnownIds,
                 recent: RecentOutputs, calls: CallRecorder, predictions: PredictionLog | None = None) -> None:
        self._schema = schema
        self._settings = settings
        self._feedback = feedback
        self._known = known
        self._recent = recent
        self._calls = calls
        self._predictions = predictions

    async def accept(self, body: Any) -> dict[str, Any]:
        """Write the labels for known ids and join them to their answers: ``{"accepted", "unknown_ids"}``.

        Raises:
            InvalidRequest: the body is not valid feedback (4xx that says what to fix).
        """
        flush_s = self._settings.log_flush_s
        fb = parse_feedback(body, self._schema, max_batch=self._settings.max_batch_size)
        now = time.time()
        times = {i: inference_time(i) for i in fb.inference_ids}
        # Not one of ours (no time in it, or a time still to come): unknown without reading any log.
        never = [i for i, t in times.items() if t is None or t > now + MAX_CLOCK_SKEW_S]
        never_set = set(never)
        maybe = [i for i in fb.inference_ids if i not in never_set]
        unknown = await asyncio.to_thread(self._known.unknown, maybe) if maybe else []
        # An id issued by another gateway replica reaches the durable log within one flush period: wait
        # for it only when such an id is that recent.
        newest = max((times[i] for i in unknown), default=0.0)
        wait = min(newest + flush_s + 0.5 - now, flush_s + 0.5)
        if unknown and wait > 0:
            await asyncio.sleep(wait)
            unknown = await asyncio.to_thread(self._known.unknown, unknown)
        unknown_set = never_set | set(unknown)
        unknown = [i for i in fb.inference_ids if i in unknown_set]
        keep = [(i, lab) for i, lab in zip(fb.inference_ids, fb.labels) if i not in unknown_set]
        if keep:
            kept = [i for i, _ in keep]
            if self._predictions is not None and self._predictions.holds(kept):
                # Their answers still sit in this replica's buffer: write them (fsynced) before the labels,
                # or a SIGKILL of this replica after the 2xx would leave labels no answer ever joins.
                await asyncio.to_thread(self._predictions.flush, durable=True)
            await asyncio.to_thread(self._feedback.write, kept, [lab for _, lab in keep])
            classes = [self._schema.class_index(lab) for _, lab in keep]
            kept_ids = kept
            for i in kept_ids:  # answered by another replica: its logged answer joins the label here
                if i not in self._recent and (logged := self._known.answer(i)) is not None:
                    self._recent.add_logged(i, *logged)
            self._calls.add_losses(self._recent.losses(kept_ids, classes))
            self._calls.add_labelled(self._recent.labelled(kept_ids, classes))
        return {"accepted": len(keep), "unknown_ids": unknown}
