"""Alerts to an operator's webhook: a JSON POST per incident event, off the controller's loop.

Chat and paging tools (Slack/Teams incoming webhooks, Alertmanager receivers,
PagerDuty via a relay) all take a JSON POST. Delivery must never slow healing:
events go into a bounded queue drained by a background task, each POST has a
short timeout and a few retries with backoff, and when the queue is full the
oldest alert is dropped and counted (a flood of alerts is itself the message).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import deque
from urllib.parse import urlsplit
from typing import Any

from controllers.outcome import Backoff
from raymedic.logs import get_logger

__all__ = ["WebhookNotifier", "redact_url"]

log = get_logger(__name__)

FIRST_RETRY_S = 0.5
"""Wait before the first retry of a failed POST; it doubles per retry."""


class WebhookNotifier:
    """Queue alerts and POST them to ``url`` in order."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, retries: int = 3, capacity: int = 500) -> None:
        self.url, self.timeout_s, self.retries = url, timeout_s, retries
        self._queue: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.sent = self.failed = self.dropped = 0

    def notify(self, alert: dict[str, Any]) -> None:
        """Queue one alert (call from the event loop); starts the sender on first use."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(alert)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _post(self, alert: dict[str, Any]) -> None:
        req = urllib.request.Request(self.url, data=json.dumps(alert, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "raymedic"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            resp.read()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            alert = self._queue[0]
            backoff = Backoff.doubling(FIRST_RETRY_S, cap_s=FIRST_RETRY_S * 2 ** max(0, self.retries - 1))
            for attempt in range(self.retries + 1):
                try:
                    await asyncio.to_thread(self._post, alert)
                    self.sent += 1
                    break
                except Exception as exc:
                    if attempt == self.retries:
                        self.failed += 1
                        log.warning("webhook %s failed after %d tries: %r; alert dropped, the next one is "
                                    "sent", self.url, attempt + 1, exc)
                    else:
                        await asyncio.sleep(backoff.failed())
            if self._queue and self._queue[0] is alert:
                self._queue.popleft()

    def stats(self) -> dict[str, Any]:
        """Delivery counts for the controller's status (an operator sees a webhook that fails)."""
        return {"url": redact_url(self.url), "sent": self.sent, "failed": self.failed, "dropped": self.dropped,
                "queued": len(self._queue)}


def redact_url(url: str) -> str:
    """``url`` as ``/v1/status`` may show it: scheme and host only. ``/v1/status`` needs no token, and a
    Slack-style webhook's path *is* its secret (anyone holding it can post to the channel).

    >>> redact_url("https://hooks.slack.com/services/T000/B000/XXXXSECRET")
    'https://hooks.slack.com/…'
    >>> redact_url("http://user:pw@alerts.internal:9000/hook?token=abc")
    'http://alerts.internal:9000/…'
    """
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return "…"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"
