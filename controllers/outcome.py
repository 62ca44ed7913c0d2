"""What one attempt at an action came to, as a value, and how long to wait before the next one.

An actuator never raises into the controller's loop: inside, it raises
:class:`raymedic.errors.TemporaryError` (worth trying again after a delay) or
:class:`raymedic.errors.PermanentError` (would fail the same way again); at its edge
it turns the attempt into an :class:`Outcome`. The loop then decides with plain
data, and the audit records the outcome's text, which is the same text the
controller has always written (``"ok"``, ``"ok: already gone"``,
``"error: <Type>: <message>"``).

>>> Outcome.done().text, Outcome.done("ok: already gone").ok
('ok', True)
>>> from raymedic.errors import TemporaryError
>>> failed = Outcome.from_error(TemporaryError(error_text(TimeoutError("GCS busy")), delay_s=2.0))
>>> failed.kind, failed.text, failed.delay_s, failed.ok
(<OutcomeKind.TEMPORARY: 'temporary'>, 'error: TimeoutError: GCS busy', 2.0, False)

Retries follow a :class:`Backoff`: its last delay repeats, and a success starts it over.

>>> b = Backoff.doubling(0.5, cap_s=2.0)
>>> [b.failed() for _ in range(5)], b.failures
([0.5, 1.0, 2.0, 2.0, 2.0], 5)
>>> b.succeeded(); b.failed()
0.5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from raymedic.enums import StrEnum
from raymedic.errors import ConfigError, PermanentError, TemporaryError

__all__ = ["OutcomeKind", "Outcome", "error_text", "Backoff"]


class OutcomeKind(StrEnum):
    """How an attempt ended: the three answers a reconcile loop needs (kopf's vocabulary)."""

    DONE = "done"
    """The world is as the action wanted (also when it already was: idempotent actions)."""
    TEMPORARY = "temporary"
    """It did not work now; trying again after ``delay_s`` may."""
    PERMANENT = "permanent"
    """It cannot work; trying again would fail the same way."""


def error_text(exc: BaseException) -> str:
    """The audit text of a failed attempt, ``"error: <Type>: <message>"``: operators grep the audit
    trail for the exception type, so the format is fixed."""
    return f"error: {type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Outcome:
    """One attempt's result as data the loop can record and reason about without a ``try``.

    Attributes:
        kind: done, temporary failure or permanent failure.
        text: What the audit trail records as the action's outcome (a contract: kept byte for byte).
        delay_s: For a temporary failure, how long to wait before another attempt.
    """

    kind: OutcomeKind
    text: str
    delay_s: float | None = None

    @classmethod
    def done(cls, text: str = "ok") -> "Outcome":
        """A successful attempt (``text`` says how, e.g. ``"ok: already gone"``)."""
        return cls(OutcomeKind.DONE, text)

    @classmethod
    def temporary(cls, text: str, *, delay_s: float) -> "Outcome":
        """A failure worth retrying after ``delay_s``."""
        return cls(OutcomeKind.TEMPORARY, text, delay_s)

    @classmethod
    def permanent(cls, text: str) -> "Outcome":
        """A failure that retrying would not change."""
        return cls(OutcomeKind.PERMANENT, text)

    @classmethod
    def from_error(cls, exc: BaseException) -> "Outcome":
        """The outcome an actuator's edge makes of what its inside raised.

        A :class:`TemporaryError` keeps its delay; a :class:`PermanentError` is permanent; anything
        else (a bug, an API we did not expect to fail) counts as permanent with its
        ``error: <Type>: <message>`` text, so it is recorded and not retried in a tight loop.
        The two raymedic errors carry the full audit text as their message already.
        """
        if isinstance(exc, TemporaryError):
            return cls.temporary(str(exc), delay_s=exc.delay_s)
        if isinstance(exc, PermanentError):
            return cls.permanent(str(exc))
        return cls.permanent(error_text(exc))

    @property
    def ok(self) -> bool:
        """Whether the action took effect (the loop may consider the target handled)."""
        return self.kind is OutcomeKind.DONE

    def __str__(self) -> str:
        return self.text


class Backoff:
    """Delays between attempts after failures in a row: the last delay repeats; a success resets it.

    The same sequence serves stateless callers that count failures themselves
    (:meth:`delay_after`, e.g. a checkpointed failure count) and stateful ones
    (:meth:`failed` / :meth:`succeeded`, e.g. one alert's delivery retries).
    """

    def __init__(self, delays_s: Sequence[float]) -> None:
        delays = tuple(float(d) for d in delays_s)
        if not delays or any(d < 0 for d in delays):
            raise ConfigError(f"a backoff needs at least one delay, none negative; got {list(delays_s)!r}: "
                              "pass e.g. (1.0, 2.0, 4.0)")
        self.delays_s = delays
        self._failures = 0

    @classmethod
    def doubling(cls, first_s: float, *, cap_s: float) -> "Backoff":
        """``first_s``, twice that, ... never more than ``cap_s`` (then ``cap_s`` again and again):
        the n-th delay is ``min(cap_s, first_s * 2 ** (n - 1))``."""
        if first_s <= 0 or cap_s <= 0:
            raise ConfigError(f"a doubling backoff needs first_s > 0 and cap_s > 0; got first_s={first_s!r}, "
                              f"cap_s={cap_s!r}: pass positive seconds")
        delays, d = [], float(first_s)
        while d < cap_s:
            delays.append(d)
            d *= 2
        delays.append(float(cap_s))
        return cls(delays)

    def delay_after(self, failures: int) -> float:
        """The wait after ``failures`` failures in a row (1 = the first failure); 0 before any."""
        if failures <= 0:
            return 0.0
        return self.delays_s[min(failures, len(self.delays_s)) - 1]

    @property
    def failures(self) -> int:
        """Failures in a row since the last success (stateful use)."""
        return self._failures

    def failed(self) -> float:
        """Count one more failure; the delay to wait before the next attempt."""
        self._failures += 1
        return self.delay_after(self._failures)

    def succeeded(self) -> None:
        """An attempt worked: the next failure waits the first delay again."""
        self._failures = 0
