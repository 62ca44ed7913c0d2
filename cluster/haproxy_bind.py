#!/usr/bin/env python3
"""Ray Serve's HAProxy bound like the service's HTTP port: a wrapper Serve runs as its HAProxy binary.

Serve 2.60 renders HAProxy's config from a template that hard-codes two listeners on every
interface — the stats page (``bind *:8404``, ``RAY_SERVE_HAPROXY_STATS_PORT``) and the Prometheus
exporter (``bind :9101``, ``RAY_SERVE_HAPROXY_METRICS_PORT``) — whatever host the HTTP port is given
(``http_options.host: 127.0.0.1`` still left both open to the network), and its admin socket (which can
disable servers or point a backend at another address) with ``mode 666``. No Serve setting changes the
addresses, but ``RAY_SERVE_HAPROXY_BINARY_PATH`` picks the binary Serve runs for each start and reload:
:func:`cluster.connect.use_serve_fast_path` points it at this file, which rewrites the config Serve just
wrote (:func:`lock_down`, under Serve's own lock) and then ``exec``\\ s the real HAProxy with the same
arguments — same process id and command line, so Serve's reload and process checks see its HAProxy.

Only the standard library, on purpose: this runs as a script (``#!/usr/bin/env python3``) in the
environment of Serve's HAProxy manager, once per start or reload.
"""

from __future__ import annotations

import os
import re
import sys

__all__ = ["REAL_BINARY_ENV", "WILDCARD_HOSTS", "config_path", "lock_down", "main"]

REAL_BINARY_ENV = "RAYMEDIC_HAPROXY_BINARY"
"""The HAProxy binary this wrapper runs (what Serve would have run without it)."""

WILDCARD_HOSTS = frozenset({"", "*", "0.0.0.0", "::", "[::]"})
"""Bind hosts meaning every interface (Serve writes ``*`` for an HTTP host of 0.0.0.0 or ::)."""

_HTTP_BIND = re.compile(r"^frontend http_frontend[ \t]*\n[ \t]+bind (?P<host>\S*):(?P<port>\d+)", re.MULTILINE)
_WILDCARD_BIND = re.compile(r"^(?P<indent>[ \t]+)bind (?P<host>\*?):(?P<port>\d+)(?P<rest>.*)$", re.MULTILINE)
_FORWARD_FOR = "option forwardfor"
_NO_RETRY_BUT_ANSWERS = ("http-request disable-l7-retry if !{ path_reg ^/v1/models/[^/]+:(predict|feedback)$ } "
                         "!{ path_reg ^/v2/models/[^/]+/infer$ }")
_DEFAULT_RETRY_ON = re.compile(r"^(?P<indent>[ \t]+)retry-on conn-failure[ \t]*$", re.MULTILINE)
_SOCKET_MODE = re.compile(r"^(?P<head>[ \t]+stats socket \S+ mode )666\b", re.MULTILINE)


def lock_down(config: str) -> str:
    """``config`` (an HAProxy config as Serve renders it) with every listener Serve left on all
    interfaces bound to the HTTP frontend's host, and the admin socket private to its user (0600).

    An HTTP frontend on every interface (a pod's proxy) leaves the listeners as Serve wrote them: they
    are then as reachable as the service itself. The HTTP frontend also gets ``option forwardfor`` (the
    gateway tells clients apart by it) and answer routes are retried on another replica when one answered
    nothing (:func:`_frontend_rules`). Rewriting a config twice changes nothing.

    >>> cfg = ("global\\n    stats socket /tmp/a.sock mode 666 level admin\\ndefaults\\n    retry-on conn-failure\\n"
    ...        "frontend prometheus\\n"
    ...        "    bind :9101\\nfrontend http_frontend\\n    bind 127.0.0.1:8000\\nlisten stats\\n  bind *:8404\\n")
    >>> print(lock_down(cfg))  # doctest: +NORMALIZE_WHITESPACE
    global
        stats socket /tmp/a.sock mode 600 level admin
    defaults
        retry-on conn-failure empty-response
    frontend prometheus
        bind 127.0.0.1:9101
    frontend http_frontend
        bind 127.0.0.1:8000
        option forwardfor
        http-request disable-l7-retry if !{ path_reg ^/v1/models/[^/]+:(predict|feedback)$ } !{ path_reg ^/v2/models/[^/]+/infer$ }
    listen stats
      bind 127.0.0.1:8404
    >>> lock_down(cfg.replace("127.0.0.1:8000", "*:8000")).count("bind *:8404")
    1
    >>> lock_down(lock_down(cfg)) == lock_down(cfg)
    True
    """
    config = _SOCKET_MODE.sub(r"\g<head>600", config)
    config = _retry_empty_responses(_frontend_rules(config))
    http = _HTTP_BIND.search(config)
    if http is None or http.group("host") in WILDCARD_HOSTS:
        return config
    host = http.group("host")
    return _WILDCARD_BIND.sub(lambda m: f"{m.group('indent')}bind {host}:{m.group('port')}{m.group('rest')}", config)


def _frontend_rules(config: str) -> str:
    """Two rules in the HTTP frontend, right after its ``bind``:

    - ``option forwardfor``: HAProxy appends its caller's address to X-Forwarded-For, the only way a
      gateway (reached from the proxy's address) tells clients apart.
    - L7 retries for the answer routes only: a gateway replica lost mid-request (SIGKILLed, out of memory,
      its node gone) answered nothing, and Serve's default (``retry-on conn-failure``) failed that request
      although another replica could answer it. Predict, infer and feedback are safe to send again (an
      answer is a pure function of its input; a label is final, so the same label again is a no-op);
      admin routes (a rollback) are not, so :func:`_retry_empty_responses` is disabled for everything else.
    """
    http = _HTTP_BIND.search(config)
    if http is None:
        return config
    end = config.find("\n", http.end())
    end = len(config) if end < 0 else end
    if config[end:].lstrip("\n").lstrip(" \t").startswith(_FORWARD_FOR):
        return config
    return f"{config[:end]}\n    {_FORWARD_FOR}\n    {_NO_RETRY_BUT_ANSWERS}{config[end:]}"


def _retry_empty_responses(config: str) -> str:
    """Serve's default ``retry-on conn-failure`` with ``empty-response`` added (an operator's own
    ``RAY_SERVE_HAPROXY_RETRY_ON`` is left as it is)."""
    return _DEFAULT_RETRY_ON.sub(r"\g<indent>retry-on conn-failure empty-response", config)


def config_path(args: list[str]) -> str | None:
    """The config file of an HAProxy command line (``-f PATH``), or None."""
    for i, arg in enumerate(args[:-1]):
        if arg == "-f":
            return args[i + 1]
    return None


def _rewrite(path: str) -> None:
    """Apply :func:`lock_down` to the config at ``path`` in place, under the lock Serve writes it with."""
    import fcntl

    with open(path + ".lock", "a") as lock:  # Serve's own lock file next to the config
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        with open(path) as f:
            old = f.read()
        new = lock_down(old)
        if new != old:
            with open(path, "w") as f:
                f.write(new)


def main(argv: list[str]) -> int:
    """Rewrite the config named by ``-f`` and ``exec`` the real HAProxy (:data:`REAL_BINARY_ENV`).

    A config that cannot be rewritten is left as Serve wrote it (HAProxy still starts; the reason goes to
    stderr, which Serve keeps next to its admin socket): the ingress matters more than the stats bind.
    """
    real = os.environ.get(REAL_BINARY_ENV)
    if not real or os.path.basename(real) == os.path.basename(__file__):  # never exec a wrapper (a loop)
        print(f"raymedic haproxy wrapper: {REAL_BINARY_ENV} is not set; set it to the HAProxy binary, or unset "
              "RAY_SERVE_HAPROXY_BINARY_PATH to let Serve find its own", file=sys.stderr)
        return 127
    path = config_path(argv[1:])
    if path is not None:
        try:
            _rewrite(path)
        except OSError as exc:
            print(f"raymedic haproxy wrapper: {path} left as written ({exc})", file=sys.stderr)
    os.execv(real, [real, *argv[1:]])
    return 127  # not reached: execv replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv))
