"""What ``raymedic up`` started, remembered in the run file so later commands find and stop it.

``raymedic status``, ``chaos`` and ``down`` run in later processes than ``up``; the
run file under ``$RAYMEDIC_HOME`` tells them the service's URL, the cluster's
address and whether ``up`` started that cluster (only then may ``down`` stop it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["raymedic_home", "RunState", "write_run_state", "read_run_state", "clear_run_state"]



def raymedic_home() -> Path:
    """Per-user state (run file, default storage); ``RAYMEDIC_HOME`` overrides ``~/.raymedic``."""
    home = Path(os.environ.get("RAYMEDIC_HOME", "~/.raymedic")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


@dataclass(frozen=True)
class RunState:
    """What ``raymedic up`` started, so later commands can find and stop it."""

    ray_address: str
    dashboard_url: str
    http_url: str
    started_cluster: bool
    config_path: str
    model: str
    storage_path: str
    head_session: int | None = None
    """Session id of the single head ``up`` started (its processes; see :func:`stop_head`)."""
    cluster: dict | None = None
    """A multi-node cluster from ``up --nodes`` (:class:`cluster.nodes.LocalCluster` as a dict):
    ``down`` stops exactly its processes. None for a single ``ray start --head`` or a joined cluster."""


def _run_file() -> Path:
    return raymedic_home() / "run.json"


def write_run_state(state: RunState) -> None:
    """Record what ``up`` started, for the commands that run after it."""
    _run_file().write_text(json.dumps(asdict(state), indent=2))


def read_run_state() -> RunState | None:
    """What ``up`` recorded, or None (nothing started, or an unreadable file: treated as nothing)."""
    try:
        return RunState(**json.loads(_run_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def clear_run_state() -> None:
    """Forget the service (``down``): later commands no longer find it."""
    _run_file().unlink(missing_ok=True)
