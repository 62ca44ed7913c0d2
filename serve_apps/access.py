"""Who may call predict and feedback, and how fast feedback may come: the gateway's client access.

Two pure decisions, kept apart from HTTP so they test in microseconds: :class:`ClientKeys` tells a
client from its key (only the keys' sha256 is held, compared in constant time), and
:class:`RateLimiter` paces feedback per client with one :class:`TokenBucket` each. The routes call
:class:`ClientAccess`, which holds both as the config says (``gateway.client_auth``,
``gateway.clients``, ``gateway.feedback_rate_per_s``, ``gateway.feedback_burst``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from raymedic.config import GatewayConfig
from raymedic.errors import ClientDenied, ConfigError, TooManyRequests

__all__ = ["MAX_TRACKED_CLIENTS", "ClientAccess", "ClientKeys", "RateLimiter", "TokenBucket", "client_key_table",
           "presented_key"]

MAX_TRACKED_CLIENTS = 10_000
"""Buckets one gateway replica keeps (least recently used first out): clients keyed by address are
unbounded, and a bucket evicted after a quiet spell would have been full again anyway."""


def client_key_table(gw: GatewayConfig) -> dict[str, str] | None:
    """sha256 → client name for the gateway (None with ``client_auth`` off), read where the config says.

    Raises:
        ConfigError: a key cannot be read, or two clients share one key.
    """
    if not gw.client_auth:
        return None
    table: dict[str, str] = {}
    for client in gw.clients:
        sha = client.sha256()
        if sha in table:
            raise ConfigError(f"gateway.clients {table[sha]!r} and {client.name!r} have the same key: give each "
                              "client its own")
        table[sha] = client.name
    return table


def presented_key(headers: Mapping[str, str]) -> str:
    """The key a request presents: ``Authorization: Bearer KEY``, else ``X-API-Key: KEY``; '' if none."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip()


class ClientKeys:
    """The clients that may call, by their keys' sha256 (the keys themselves are never held).

    >>> keys = ClientKeys({hashlib.sha256(b"k1").hexdigest(): "shop"})
    >>> keys.client("k1")
    'shop'
    >>> keys.client("k2") is None
    True
    """

    def __init__(self, table: Mapping[str, str]) -> None:
        self._table = dict(table)

    def client(self, key: str) -> str | None:
        """The name of the client whose key this is, or None; every entry is compared (constant time)."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        found = None
        for sha, name in self._table.items():
            if hmac.compare_digest(digest, sha):
                found = name
        return found


class TokenBucket:
    """``burst`` requests at once, then ``rate_per_s`` on average: each request takes a token, tokens
    come back at ``rate_per_s`` up to ``burst``.

    >>> b = TokenBucket(rate_per_s=2.0, burst=2, now=0.0)
    >>> [b.take(0.0), b.take(0.0), b.take(0.0)]  # two at once, the third waits half a second
    [0.0, 0.0, 0.5]
    >>> b.take(0.5)
    0.0
    """

    def __init__(self, *, rate_per_s: float, burst: int, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate_per_s > 0 and burst >= 1 (got {rate_per_s}, {burst})")
        self.rate_per_s, self.burst = rate_per_s, burst
        self._tokens, self._at = float(burst), now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is one (nothing taken)."""
        self._tokens = min(float(self.burst), self._tokens + max(0.0, now - self._at) * self.rate_per_s)
        self._at = max(self._at, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


class RateLimiter:
    """One :class:`TokenBucket` per client, at most :data:`MAX_TRACKED_CLIENTS` of them (LRU).

    >>> lim = RateLimiter(rate_per_s=1.0, burst=1)
    >>> lim.wait_s("a", 0.0), lim.wait_s("b", 0.0), lim.wait_s("a", 0.0)  # one bucket each
    (0.0, 0.0, 1.0)
    """

    def __init__(self, *, rate_per_s: float, burst: int, max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.rate_per_s, self.burst, self.max_clients = rate_per_s, burst, max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def wait_s(self, who: str, now: float) -> float:
        """0.0 if ``who`` may go now (a token taken), else the seconds until it may."""
        bucket = self._buckets.pop(who, None) or TokenBucket(rate_per_s=self.rate_per_s, burst=self.burst, now=now)
        self._buckets[who] = bucket  # most recently used last
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return bucket.take(now)


class ClientAccess:
    """The gateway's checks before predict and feedback, as the config says; only the event loop uses it.

    Args:
        keys: sha256 → client name (:func:`client_key_table`), or None when client authentication is off.
        feedback_rate_per_s: feedback requests per second per client, or None for no limit.
        feedback_burst: the bucket's size.
        clock: a monotonic clock.
    """

    def __init__(self, keys: Mapping[str, str] | None, *, feedback_rate_per_s: float | None = None,
                 feedback_burst: int = 40, clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = ClientKeys(keys) if keys is not None else None
        self._limiter = (RateLimiter(rate_per_s=feedback_rate_per_s, burst=feedback_burst)
                         if feedback_rate_per_s else None)
        self._clock = clock

    @classmethod
    def from_config(cls, gw: GatewayConfig, keys: Mapping[str, str] | None) -> ClientAccess:
        """The access the gateway config asks for, with the key table the app builder shipped."""
        return cls(keys if gw.client_auth else None, feedback_rate_per_s=gw.feedback_rate_per_s,
                   feedback_burst=gw.feedback_burst)

    def client(self, headers: Mapping[str, str]) -> str | None:
        """The calling client's name (None with authentication off).

        Raises:
            ClientDenied: no key, or one no client has (401, saying what to send).
        """
        if self._keys is None:
            return None
        key = presented_key(headers)
        if not key:
            raise ClientDenied("missing client key: this service needs one for predict and feedback; send "
                               "Authorization: Bearer <your client key> (or X-API-Key: <key>)")
        name = self._keys.client(key)
        if name is None:
            raise ClientDenied("unknown client key: send the key this service issued to you (gateway.clients) "
                               "as Authorization: Bearer <key>")
        return name

    def admit_feedback(self, who: str) -> None:
        """Let one feedback request of ``who`` (a client name or a remote address) through, or refuse it.

        Raises:
            TooManyRequests: past its rate (429 with the seconds until its next request fits).
        """
        if self._limiter is None:
            return
        wait = self._limiter.wait_s(who, self._clock())
        if wait > 0:
            raise TooManyRequests(
                f"too many feedback requests from {who!r}: at most {self._limiter.rate_per_s:g}/s "
                f"(bursts of {self._limiter.burst}); retry after {math.ceil(wait)} s or send more labels per "
                "request", retry_after_s=max(1, math.ceil(wait)))
