"""Challenger calls during a live trial, and the shadow requests' delayed logging.

While the controller runs a trial (``/v1/admin/trial``, or a retrain's candidate),
a share of requests also goes to the member's challenger, a separate canary
application. In ``canary`` mode the challenger's answer stands in for the
champion's (which is kept beside it in the log); in ``shadow`` mode the client
gets the champion's answer and never waits for the challenger: the request is
logged once the challenger answered or gave up, so a label that reaches another
gateway replica finds both answers in the prediction log.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from ray import serve

from raymedic.keys import canary_app_name, challenger_source
from raymedic.logs import get_logger
from serve_apps.telemetry import CallRecorder, RecentOutputs

__all__ = ["Trials", "challenger_handle", "members_on_trial"]

log = get_logger(__name__)

Records = list[dict[str, Any]]


def challenger_handle(member: str, deployment: str | None = None) -> Any:
    """The Serve handle of ``member``'s challenger: its canary application is named after the member's
    deployment (``deployment``, default the member's name), inside which it is named after the member."""
    return serve.get_deployment_handle(member, app_name=canary_app_name(deployment or member))


def members_on_trial(trial: Mapping[str, Any] | None, draw: Callable[[], float] = random.random) -> dict[str, str]:
    """The members whose challengers this request goes to (member → challenger version): all of the
    trial's, for a ``share`` of requests, else none.

    Args:
        trial: the trial the controller published (``{"members", "share", "mode", ...}``), or None.
        draw: a uniform draw in [0, 1) (``random.random``).
    """
    return trial["members"] if trial and draw() < float(trial["share"]) else {}


async def _await(call: Any) -> Any:
    return await call


class Trials:
    """Challenger calls and shadow logging for one gateway replica; only the event loop uses it.

    Args:
        calls: records each challenger call's outcome (failures can end the trial).
        recent: recent answers, joined with labels (a challenger's answer joins them here).
        member_timeout_s: a challenger's deadline (the same as a member's).
        handle_for: member → its challenger's handle (looked up once per member).
    """

    def __init__(self, *, calls: CallRecorder, recent: RecentOutputs, member_timeout_s: float,
                 handle_for: Callable[[str], Any] = challenger_handle) -> None:
        self._calls = calls
        self._recent = recent
        self._timeout_s = member_timeout_s
        self._handle_for = handle_for
        self._handles: dict[str, Any] = {}
        self._shadow: dict[asyncio.Task, Callable[[], None]] = {}  # waiting → how to log it
        self._shadow_ids: dict[asyncio.Task, frozenset[str]] = {}  # waiting → the answers it will log

    async def call(self, name: str, rows: list[list[Any]], version: str) -> np.ndarray | None:
        """A challenger's answer within the member deadline, or None (a failure is counted as a failed
        call; an answer of another version, from an older trial's replica, is ignored)."""
        t0 = time.perf_counter()  # measured as the members' calls are: the trial compares their p99
        try:
            if name not in self._handles:
                self._handles[name] = self._handle_for(name)
            out = await asyncio.wait_for(_await(self._handles[name].predict.remote(rows)), self._timeout_s)
        except Exception as exc:
            self._calls.challenger_call(name, ok=False)
            log.debug("challenger of %s failed: %r", name, exc)
            return None
        if out.get("version") != version:  # an older trial's replica still answering: not this challenger
            return None
        self._calls.challenger_call(name, ok=True, latency_s=time.perf_counter() - t0)
        return np.asarray(out["probabilities"], dtype=float)

    def shadow(self, records: Records, challengers: dict[str, asyncio.Future], on_trial: Mapping[str, str], *,
               log_records: Callable[[Records], None]) -> None:
        """Log a shadowed request once its challengers answered, in the background: the client never
        waits on it, and :meth:`close` still logs it at shutdown."""
        done = False

        def log_once() -> None:
            # Idempotent: the background task logs it, or close() does if the task never got to run.
            nonlocal done
            if not done:
                done = True
                self._join(records, challengers, on_trial)
                log_records(records)

        logged = asyncio.ensure_future(self._log_after(challengers, log_once))
        self._shadow[logged] = log_once
        self._shadow_ids[logged] = frozenset(r["inference_id"] for r in records)
        logged.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task) -> None:
        self._shadow.pop(task, None)
        self._shadow_ids.pop(task, None)

    async def settle(self, inference_ids: Iterable[str]) -> None:
        """Wait until the answers among ``inference_ids`` that a shadow trial still holds are logged.

        A client has its answer (and its id) before the challengers answered; a label for it acknowledged
        before the answer reached the prediction log would, after a SIGKILL of this replica, name an
        answer no log holds. The wait is bounded by the challenger deadline; usually nothing is waiting.
        """
        wanted = set(inference_ids)
        waiting = [t for t, ids in self._shadow_ids.items() if not ids.isdisjoint(wanted)]
        if waiting:
            await asyncio.wait(waiting)  # never cancels them: each logs in its own finally

    async def _log_after(self, challengers: dict[str, asyncio.Future], log_once: Callable[[], None]) -> None:
        """Log a shadowed request once its challengers answered (or gave up): the log is where another
        gateway replica finds both answers when the label reaches it there. The client never waits on it."""
        try:
            await asyncio.wait(list(challengers.values()), timeout=self._timeout_s + 1.0)
        finally:
            log_once()

    def _join(self, records: Records, challengers: dict[str, asyncio.Future], on_trial: Mapping[str, str]) -> None:
        """Put each challenger that answered next to its champion, in the records and the recent answers."""
        ids = [r["inference_id"] for r in records]
        for m, task in challengers.items():
            if not task.done() or task.cancelled() or task.exception() is not None or task.result() is None:
                continue
            p = np.asarray(task.result())
            self._recent.add_source(ids, challenger_source(m), p)  # the trial's pair, joined here
            for i, r in enumerate(records):
                if m in r["member_outputs"]:
                    r["member_outputs"][m]["challenger"] = {"probabilities": p[i].round(6).tolist(),
                                                            "version": on_trial[m]}

    async def close(self) -> None:
        """Shutdown: cancel the shadowed requests still waiting; cancelled, each logs what it has."""
        pending = dict(self._shadow)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for log_once in pending.values():  # a task cancelled before it first ran never reached its finally
            log_once()
