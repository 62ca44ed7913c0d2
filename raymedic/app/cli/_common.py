"""What the sub-commands share: progress lines, the config, the service's URL, the admin call.

Everything here is light (the standard library, the config, the run file): the
parser imports every command module, and ``raymedic --help`` must not wait for
Ray, PyTorch or pyarrow.
"""

from __future__ import annotations

import argparse
import os
import secrets
import urllib.parse
from pathlib import Path
from typing import Any

from cluster.runstate import raymedic_home, read_run_state
from raymedic.app.http import request_json
from raymedic.config import RaymedicConfig, ServeFile, load_config
from raymedic.errors import RaymedicError
from raymedic.keys import ADMIN_TOKEN_ENV

__all__ = ["progress", "config_from", "service_url", "unreachable", "token_file", "ensure_admin_token",
           "admin_token", "admin_headers", "admin"]


def progress(msg: str) -> None:
    """Print one ``[raymedic] ...`` progress line at once.

    Flushed so that a user watching a long ``up`` or ``bench`` sees each step as it
    happens, even when stdout is a pipe.
    """
    print(f"[raymedic] {msg}", flush=True)


def config_from(args: argparse.Namespace) -> tuple[ServeFile, RaymedicConfig]:
    """The config file named by ``--config`` with the command's overrides applied, resolved.

    ``--storage-path`` and ``--chaos`` win over the file, so a user can point one
    run elsewhere or enable chaos without editing the YAML.

    Args:
        args: The parsed flags; ``storage_path`` and ``chaos`` are optional.

    Returns:
        The Serve file (host, port, path) and the resolved raymedic config.
    """
    sf = load_config(args.config)
    cfg = sf.config
    if getattr(args, "storage_path", None):
        cfg = cfg.model_copy(update={"storage_path": args.storage_path})
    if getattr(args, "chaos", False):
        cfg = cfg.model_copy(update={"chaos": cfg.chaos.model_copy(update={"enabled": True})})
    return sf, cfg.resolved()


def service_url(args: argparse.Namespace) -> str:
    """Where the gateway answers: ``--url``, else the run file ``raymedic up`` wrote, else the config.

    The run file comes before the config because ``up --port`` may have moved the
    service off the config's port.
    """
    if getattr(args, "url", None):
        return args.url.rstrip("/")
    state = read_run_state()
    if state:
        return state.http_url
    sf = load_config(args.config)
    return f"http://{sf.http_host}:{sf.http_port}"


def unreachable(url: str, exc: OSError) -> RaymedicError:
    """The error for a gateway that does not answer, with the command that starts one."""
    return RaymedicError(f"no raymedic service answers at {url} ({exc}); start it with `raymedic up`")


def token_file() -> Path:
    """Where ``raymedic up`` keeps the admin token it generated (under ``RAYMEDIC_HOME``)."""
    return raymedic_home() / "admin_token"


def ensure_admin_token() -> str | None:
    """Make sure the deploy carries an admin token: ``$RAYMEDIC_ADMIN_TOKEN``, else a generated one.

    The admin routes refuse every call without a token, so a deploy without one
    could never be paused or healed by hand. A generated token is written to a
    ``0600`` file so later commands (and only this user) can read it.

    Returns:
        A line for ``up`` to print about where the token is, or None when the user chose their own.
    """
    if os.environ.get(ADMIN_TOKEN_ENV):
        return None
    path = token_file()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24))
    os.environ[ADMIN_TOKEN_ENV] = path.read_text().strip()
    return f"token in {path} (the CLI reads it; set {ADMIN_TOKEN_ENV} to choose your own)"


def admin_token() -> str:
    """The token the admin routes expect: ``$RAYMEDIC_ADMIN_TOKEN``, else the one ``up`` generated.

    Raises:
        RaymedicError: Neither is there; the message names the variable to set.
    """
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        return token
    path = token_file()
    if path.is_file():
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise RaymedicError(f"cannot read the admin token in {path} ({exc.strerror}); fix its permissions or "
                                f"set {ADMIN_TOKEN_ENV} to the token the service was deployed with") from None
    raise RaymedicError(f"no admin token: set {ADMIN_TOKEN_ENV} to the token the service was deployed with")


def admin_headers() -> dict[str, str]:
    """The admin token as a request header where this user has one, else none.

    For reads that work without it but show more with it (``GET /v1/status`` leaves out process ids,
    node ids, paths and the webhook for a caller without the token).
    """
    try:
        return {"Authorization": f"Bearer {admin_token()}"}
    except RaymedicError:
        return {}


def admin(args: argparse.Namespace, route: str, body: Any = None) -> Any:
    """POST to ``/v1/admin/<route>`` with the admin token; the gateway's answer, or a fixable error.

    Every operator command goes through here so that they all fail the same way:
    an unreachable service names ``raymedic up``; a 404 on a chaos route says how
    to enable chaos; any other 4xx/5xx shows the gateway's own ``error`` text.

    Args:
        args: The parsed flags (``--url``, ``--config``).
        route: The admin route below ``/v1/admin/``, e.g. ``pause`` or ``chaos/clear``.
        body: The JSON body (default: an empty object).

    Returns:
        The decoded JSON answer.

    Raises:
        RaymedicError: The service is unreachable or refused the call.
    """
    url = service_url(args)
    token = admin_token()  # its own error when unreadable, not "no service answers"
    model = getattr(args, "model", None)
    query = f"?model={urllib.parse.quote(model, safe='')}" if model else ""  # a service of several models
    try:
        reply = request_json("POST", f"{url}/v1/admin/{route}{query}", body if body is not None else {},
                             headers={"Authorization": f"Bearer {token}"}, timeout_s=30)
    except OSError as exc:
        raise unreachable(url, exc) from None
    said = str(reply.body.get("error", reply.body)) if isinstance(reply.body, dict) else str(reply.body)
    if reply.status == 404 and route.startswith("chaos"):
        raise RaymedicError(f"{said} — chaos routes exist only when chaos is "
                            "enabled: `raymedic up --chaos` or chaos.enabled: true in the config")
    if reply.status >= 400:
        raise RaymedicError(said)
    return reply.body
