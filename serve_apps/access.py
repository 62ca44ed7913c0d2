"""Who may call predict and feedback, and how fast feedback may come: the gateway's client access.

Pure decisions, kept apart from HTTP so they test in microseconds: :class:`ClientKeys` tells a
client from its key (only the keys' sha256 is held, compared in constant time),
:class:`TrustedProxies` tells a client from its address behind proxies (Serve's HAProxy calls every
gateway from its node's address), and :class:`RateLimiter` paces feedback per client with one
:class:`TokenBucket` each. The routes call :class:`ClientAccess`, which holds them as the config says
(``gateway.client_auth``, ``gateway.clients``, ``gateway.feedback_rate_per_s``, ``gateway.feedback_burst``,
``gateway.trusted_proxies``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence

import psutil

from raymedic.config import GatewayConfig
from raymedic.errors import ClientDenied, ConfigError, TooManyRequests

__all__ = ["MAX_TRACKED_CLIENTS", "ClientAccess", "ClientKeys", "RateLimiter", "TokenBucket", "TrustedProxies",
           "client_key_table", "forwarded_for", "host_addresses", "presented_key"]

MAX_TRACKED_CLIENTS = 10_000
"""Buckets one gateway replica keeps (least recently used first out): clients keyed by address are
unbounded, and a bucket evicted after a quiet spell would have been full again anyway."""


def host_addresses() -> list[str]:
    """Every IP address of this machine's interfaces (what ``trusted_proxies: [host]`` trusts)."""
    return sorted({a.address.split("%", 1)[0] for addrs in psutil.net_if_addrs().values() for a in addrs
                   if a.family in (2, 10)})  # AF_INET, AF_INET6


def forwarded_for(values: Iterable[str]) -> list[str]:
    """The addresses of X-Forwarded-For header values, in order (a proxy appends its caller's)."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


class TrustedProxies:
    """Which callers' X-Forwarded-For to believe, and so who the client is.

    >>> t = TrustedProxies(["127.0.0.0/8", "10.0.0.0/8"], host=[])
    >>> t.client("10.1.2.3", ["203.0.113.7", "127.0.0.1"])  # a front proxy on loopback, then HAProxy
    '203.0.113.7'
    >>> t.client("10.1.2.3", ["198.51.100.1", "203.0.113.7"])  # the first hop a client reached: forged left
    '203.0.113.7'
    >>> t.client("198.51.100.9", ["203.0.113.7"])  # not a proxy: its header says nothing
    '198.51.100.9'
    >>> t.client("10.1.2.3", ["not an address"])  # garbage past a trusted hop: the hop is the client
    '10.1.2.3'
    """

    def __init__(self, entries: Sequence[str], *, host: Sequence[str] | None = None) -> None:
        nets = [ipaddress.ip_network(e, strict=False) for e in entries if e != "host"]
        if "host" in entries:
            nets += [ipaddress.ip_network(a) for a in (host_addresses() if host is None else host)]
        self._nets = nets

    def trusts(self, address: str) -> bool:
        """Whether ``address`` is a proxy whose forwarding header is believed (False for non-addresses)."""
        try:
            ip = ipaddress.ip_address(address.removeprefix("::ffff:"))
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self._nets)

    def client(self, peer: str, forwarded: Sequence[str]) -> str:
        """The client behind ``peer`` (the caller's address): walking X-Forwarded-For right to left past
        trusted hops, the first address that is not one; the leftmost if every hop is trusted."""
        who = peer
        for hop in reversed(forwarded):
            if not self.trusts(who):
                break
            try:
                ipaddress.ip_address(hop.removeprefix("::ffff:"))
            except ValueError:
                break  # a hop that is no address ends what can be believed
            who = hop
        return who


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
        proxies: whose X-Forwarded-For tells a client's address (None: the caller's address only).
        clock: a monotonic clock.
    """

    def __init__(self, keys: Mapping[str, str] | None, *, feedback_rate_per_s: float | None = None,
                 feedback_burst: int = 40, proxies: TrustedProxies | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._keys = ClientKeys(keys) if keys is not None else None
        self._proxies = proxies
        self._limiter = (RateLimiter(rate_per_s=feedback_rate_per_s, burst=feedback_burst)
                         if feedback_rate_per_s else None)
        self._clock = clock

    @classmethod
    def from_config(cls, gw: GatewayConfig, keys: Mapping[str, str] | None) -> ClientAccess:
        """The access the gateway config asks for, with the key table the app builder shipped."""
        return cls(keys if gw.client_auth else None, feedback_rate_per_s=gw.feedback_rate_per_s,
                   feedback_burst=gw.feedback_burst, proxies=TrustedProxies(gw.trusted_proxies))

    def address(self, peer: str | None, forwarded: Sequence[str]) -> str:
        """The client's address: the caller's, or what trusted proxies forwarded (X-Forwarded-For values)."""
        if peer is None:
            return "unknown"
        return self._proxies.client(peer, forwarded_for(forwarded)) if self._proxies else peer

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
