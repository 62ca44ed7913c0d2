"""Client access decisions, pure: the key check, the token bucket, the per-client limiter, the config."""

from __future__ import annotations

import hashlib

import pytest

from raymedic.config import parse_config
from raymedic.errors import ClientDenied, ConfigError, TooManyRequests
from serve_apps.access import ClientAccess, RateLimiter, TokenBucket, client_key_table


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def test_a_bucket_allows_its_burst_then_its_rate_and_says_how_long_to_wait():
    b = TokenBucket(rate_per_s=4.0, burst=3, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.25)  # refused: nothing taken
    assert b.take(0.1) == pytest.approx(0.15)
    assert b.take(0.25) == 0.0
    assert [b.take(100.0) for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # refilled to the burst, never past it
    assert b.take(50.0) > 0  # a clock going back gives no tokens
    with pytest.raises(ValueError, match="rate_per_s > 0"):
        TokenBucket(rate_per_s=0, burst=1, now=0.0)


def test_the_limiter_keeps_one_bucket_per_client_and_forgets_the_least_recent():
    lim = RateLimiter(rate_per_s=1.0, burst=1, max_clients=2)
    assert lim.wait_s("a", 0.0) == 0.0 and lim.wait_s("a", 0.0) > 0
    assert lim.wait_s("b", 0.0) == 0.0 and lim.wait_s("c", 0.0) == 0.0  # "a" is evicted (least recent)
    assert lim.wait_s("a", 0.0) == 0.0  # a new, full bucket: as it would have been after a quiet spell


def test_keys_are_checked_by_hash_and_a_refusal_names_what_to_send():
    access = ClientAccess({_sha("k1"): "shop"})
    assert access.client({"authorization": "Bearer k1"}) == "shop"
    assert access.client({"x-api-key": "k1"}) == "shop"
    with pytest.raises(ClientDenied, match="send Authorization: Bearer <your client key>") as err:
        access.client({})
    assert err.value.http_status == 401
    with pytest.raises(ClientDenied, match="unknown client key"):
        access.client({"authorization": "Bearer k2"})
    assert ClientAccess(None).client({}) is None  # authentication off


def test_feedback_past_the_rate_is_a_429_with_retry_after():
    now = [0.0]
    access = ClientAccess(None, feedback_rate_per_s=0.25, feedback_burst=1, clock=lambda: now[0])
    access.admit_feedback("10.0.0.1")
    with pytest.raises(TooManyRequests, match="at most 0.25/s") as err:
        access.admit_feedback("10.0.0.1")
    assert err.value.http_status == 429 and err.value.retry_after_s == 4
    access.admit_feedback("10.0.0.2")
    now[0] = 4.0
    access.admit_feedback("10.0.0.1")
    ClientAccess(None).admit_feedback("anyone")  # no limit configured


def test_client_keys_come_from_the_environment_a_file_or_a_hash(tmp_path, monkeypatch):
    (tmp_path / "key").write_text("file-key\n")
    monkeypatch.setenv("SHOP_KEY", "env-key")
    gw = parse_config({"gateway": {"client_auth": True, "clients": [
        {"name": "shop", "key_env": "SHOP_KEY"}, {"name": "lab", "key_file": str(tmp_path / "key")},
        {"name": "ops", "key_sha256": _sha("hash-key")}]}}).gateway
    assert client_key_table(gw) == {_sha("env-key"): "shop", _sha("file-key"): "lab", _sha("hash-key"): "ops"}
    assert client_key_table(parse_config({}).gateway) is None  # off by default
    monkeypatch.delenv("SHOP_KEY")
    with pytest.raises(ConfigError, match=r"'shop': \$SHOP_KEY is not set in the deploying process"):
        client_key_table(gw)
    (tmp_path / "key").write_text("")
    monkeypatch.setenv("SHOP_KEY", "env-key")
    with pytest.raises(ConfigError, match="key_file .* is empty"):
        client_key_table(gw)


@pytest.mark.parametrize("gateway, fix", [
    ({"client_auth": True}, "client_auth is on but gateway.clients is empty"),
    ({"clients": [{"name": "a"}]}, "needs exactly one of key_sha256, key_env, key_file"),
    ({"clients": [{"name": "a", "key_env": "A", "key_file": "/k"}]}, "needs exactly one of"),
    ({"clients": [{"name": "a", "key_env": "A"}, {"name": "a", "key_env": "B"}]}, "names must be unique"),
    ({"clients": [{"name": "a", "key_sha256": "not-hex"}]}, "key_sha256"),
])
def test_client_configs_that_cannot_work_are_refused_with_the_fix(gateway, fix):
    with pytest.raises(ConfigError, match=fix):
        parse_config({"gateway": gateway})


def test_two_clients_with_one_key_are_refused(monkeypatch):
    monkeypatch.setenv("K", "same")
    gw = parse_config({"gateway": {"client_auth": True, "clients": [
        {"name": "a", "key_env": "K"}, {"name": "b", "key_sha256": _sha("same")}]}}).gateway
    with pytest.raises(ConfigError, match="'a' and 'b' have the same key"):
        client_key_table(gw)


def test_clients_behind_trusted_proxies_are_told_apart_by_the_forwarded_address():
    """Behind Serve's HAProxy every feedback request reached the gateway from the proxy's address, so a
    per-address limit paced every client together: the client is now the rightmost X-Forwarded-For
    address past trusted hops, and a header from an untrusted caller (or past a forged hop) is ignored."""
    from serve_apps.access import TrustedProxies, forwarded_for

    now = [0.0]
    access = ClientAccess(None, feedback_rate_per_s=1.0, feedback_burst=1, clock=lambda: now[0],
                          proxies=TrustedProxies(["127.0.0.0/8", "host"], host=["192.0.2.2", "fd00::2"]))
    haproxy = "192.0.2.2"  # the node's own address: where Serve's HAProxy calls the gateway from
    a = access.address(haproxy, ["203.0.113.7"])
    b = access.address(haproxy, ["203.0.113.8, 127.0.0.1"])  # a front proxy on loopback, then HAProxy
    assert (a, b) == ("203.0.113.7", "203.0.113.8")
    access.admit_feedback(a)
    access.admit_feedback(b)  # its own bucket
    with pytest.raises(TooManyRequests, match="'203.0.113.7'"):
        access.admit_feedback(access.address(haproxy, ["203.0.113.7"]))
    # A caller that is no proxy cannot pick its bucket; nor can a client forge hops to the left.
    assert access.address("198.51.100.9", ["203.0.113.8"]) == "198.51.100.9"
    assert access.address(haproxy, ["127.0.0.1", "198.51.100.9"]) == "198.51.100.9"
    assert access.address("::ffff:192.0.2.2", ["203.0.113.9"]) == "203.0.113.9"
    assert access.address(None, []) == "unknown"
    assert forwarded_for(["a, b", " c "]) == ["a", "b", "c"]
    assert ClientAccess(None).address("192.0.2.2", ["203.0.113.7"]) == "192.0.2.2"  # no proxies trusted


def test_trusted_proxies_that_are_not_networks_are_refused_with_the_fix():
    assert parse_config({"gateway": {"trusted_proxies": ["10.0.0.0/8", "fd00::/8", "192.0.2.9", "host"]}})
    with pytest.raises(ConfigError, match="'10.0.0/33' is not a network or an address: write e.g. 10.0.0.0/8"):
        parse_config({"gateway": {"trusted_proxies": ["10.0.0/33"]}})
