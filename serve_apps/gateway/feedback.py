"""Feedback labels: written durably, then joined to the answers they label.

A label is written (and fsynced) before its 2xx, so an acknowledged label is never
lost. It may name an answer another gateway replica gave less than one log flush
ago, so an id unknown here is looked for again once that replica's log had time to
reach storage. Each known label turns into per-member losses (the ensemble
weights) and labelled answers (the controller's accuracy and drift windows).

A label is final (:mod:`serve_apps.labels`): the same label again is a no-op
(``repeated_ids``), a different one a 409 before anything of the request is
written, and only an answer's first label is counted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Iterable

from raymedic.config import GatewayConfig
from raymedic.errors import LabelConflict
from serve_apps.labels import LabelBook
from serve_apps.predlog import MAX_CLOCK_SKEW_S, FeedbackLog, KnownIds, PredictionLog, inference_time
from serve_apps.review import ReviewBook
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
        predictions: this replica's prediction log (answers still buffered are written before their labels).
        labels: the labels already given (None: this replica's own only).
        shadowed: waits until answers a shadow trial still holds back are logged (None: no trials here).
        review: the review queue, whose items a label clears (None: none).
    """

    def __init__(self, *, schema: ModelSchema, settings: GatewayConfig, feedback: FeedbackLog, known: KnownIds,
                 recent: RecentOutputs, calls: CallRecorder, predictions: PredictionLog | None = None,
                 labels: LabelBook | None = None, review: ReviewBook | None = None,
                 shadowed: Callable[[Iterable[str]], Awaitable[None]] | None = None) -> None:
        self._schema = schema
        self._settings = settings
        self._feedback = feedback
        self._known = known
        self._recent = recent
        self._calls = calls
        self._predictions = predictions
        self._review = review if review is not None and review.enabled else None
        self._labels = labels if labels is not None else LabelBook(None, "", horizon_s=settings.label_horizon_s)
        self._shadowed = shadowed

    async def accept(self, body: Any) -> dict[str, Any]:
        """Write the labels for known ids and join them to their answers:
        ``{"accepted", "unknown_ids", "repeated_ids"}``.

        Raises:
            InvalidRequest: the body is not valid feedback (4xx that says what to fix).
            LabelConflict: (409) an id already has another label; nothing of the request was written.
        """
        flush_s = self._settings.log_flush_s
        fb = parse_feedback(body, self._schema, max_batch=self._settings.max_batch_size)
        now = time.time()
        times = {i: inference_time(i) for i in fb.inference_ids}
        # Not one of ours (no time in it, or a time still to come): unknown without reading any log.
        never = [i for i, t in times.items() if t is None or t > now + MAX_CLOCK_SKEW_S]
        never_set = set(never)
        maybe = [i for i in fb.inference_ids if i not in never_set]
        # Ids this replica issued are known from memory: the log is read (in a thread) only for the others.
        missing = self._known.missing(maybe)
        unknown = await asyncio.to_thread(self._known.unknown, missing) if missing else []
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
        repeated: list[str] = []
        if keep:
            if self._labels.due():  # what other replicas labelled meanwhile (read in a thread, learnt here)
                self._labels.learn(await asyncio.to_thread(self._labels.fetch))
            ids, labs = [i for i, _ in keep], [lab for _, lab in keep]
            found = self._labels.sort(ids, labs)
            if found.conflicts:
                shown = ", ".join(f"{i} has {had!r} (you sent {sent!r})" for i, had, sent in found.conflicts[:5])
                raise LabelConflict(
                    f"{len(found.conflicts)} inference id(s) already have another label: {shown}. A label is "
                    "final: nothing of this request was written; send the others again without these ids")
            repeated = found.repeated
            counted = set(found.counted)
            keep = [keep[k] for k in found.new]
            counted_ids = [ids[k] for k in found.new if k in counted]
            counted_classes = [self._schema.class_index(labs[k]) for k in found.new if k in counted]
        if keep:
            kept, kept_labels = [i for i, _ in keep], [lab for _, lab in keep]
            self._labels.reserve(kept, kept_labels)  # before the write: a concurrent request sees them
            try:
                if self._shadowed is not None:
                    await self._shadowed(kept)  # a shadowed answer reaches the log buffer first
                if self._predictions is not None and self._predictions.holds(kept):
                    # Their answers still sit in this replica's buffer: write them (fsynced) before the labels,
                    # or a SIGKILL of this replica after the 2xx would leave labels no answer ever joins.
                    await asyncio.to_thread(self._predictions.flush, durable=True)
                await asyncio.to_thread(self._feedback.write, kept, kept_labels)
            except BaseException:
                self._labels.release(kept)  # never acknowledged: a retry must be able to give them
                raise
            for i in counted_ids:  # answered by another replica: its logged answer joins the label here
                if i not in self._recent and (logged := self._known.answer(i)) is not None:
                    self._recent.add_logged(i, *logged)
            self._calls.add_labels(self._recent.label_records(counted_ids, counted_classes))
            if self._review is not None:  # a reviewer's label (or any label) clears its item once written
                self._review.clear(kept)
        return {"accepted": len(keep), "unknown_ids": unknown, "repeated_ids": repeated}
