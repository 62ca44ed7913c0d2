"""HTTPS for real: a config with ``http_options.ssl_certfile``/``ssl_keyfile`` is served over TLS.

Serve 2.60 terminates TLS in its Python proxy only (its HAProxy ingress renders no TLS
bind), so an HTTPS config runs that proxy, as ``raymedic up`` does. The certificate is
made here (its own CA, for 127.0.0.1): a client that trusts it gets answers and can
label them; one that does not is refused by the handshake, and plain HTTP on the same
port gets no answer — nothing is served in the clear.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request

import pytest

from raymedic.app.http import request_json
from tests.conftest import ONE_REPLICA_MEMBERS, local_service

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("https")
    with local_service(tmp, tls=True, members=ONE_REPLICA_MEMBERS,
                       gateway={"replicas": 1, "num_cpus": 0.2}) as (url, cfg):
        yield url, cfg, tmp / "tls" / "cert.pem"


def test_an_https_config_is_served_over_tls_only(svc):
    url, cfg, cert = svc
    assert url.startswith("https://")
    row = {f"f{i}": 0.1 * i for i in range(10)}
    r = request_json("POST", f"{url}/v1/models/{cfg.model}:predict", {"instances": [row, row]})
    assert r.status == 200 and len(r.body["predictions"]) == 2, r.body
    fb = request_json("POST", f"{url}/v1/models/{cfg.model}:feedback",
                      {"inference_ids": r.body["inference_ids"][:1], "labels": [1]})
    assert fb.status == 200 and fb.body["accepted"] == 1, fb.body
    # The server's certificate is the one configured: a client trusting only it verifies the handshake ...
    trusting = ssl.create_default_context(cafile=str(cert))
    with urllib.request.urlopen(f"{url}/healthz", context=trusting, timeout=10) as resp:
        assert resp.status == 200
    # ... and one trusting nothing refuses it.
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"{url}/healthz", context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), timeout=10)
    assert isinstance(refused.value.reason, ssl.SSLError), refused.value
    # Plain HTTP on the HTTPS port: no HTTP answer at all (uvicorn drops a request that is not a handshake).
    host, port = url.removeprefix("https://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse()
    conn.close()
