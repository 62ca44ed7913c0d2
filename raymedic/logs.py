"""One ``raymedic`` logger root, configured once.

Every module logs through :func:`get_logger` (``get_logger(__name__)``), so all of
raymedic's lines sit under one root an operator can tune (``RAYMEDIC_LOG_LEVEL``,
or ``logging.getLogger("raymedic").setLevel(...)``) without touching Ray's own
loggers. The CLI calls :func:`configure` once; a Serve replica calls
:func:`use_serve_handlers` so raymedic's lines land in the replica's log file in
the Ray dashboard next to Serve's own.
"""

from __future__ import annotations

import logging
import os

__all__ = ["ROOT", "get_logger", "configure", "use_serve_handlers"]

ROOT = "raymedic"
LEVEL_ENV = "RAYMEDIC_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` under the ``raymedic`` root (``controllers.loop`` →
    ``raymedic.controllers.loop``; names already under the root are kept)."""
    if name == ROOT or name.startswith(ROOT + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{ROOT}.{name}")


def configure(level: str | None = None) -> None:
    """Configure logging for a command-line process: once, at ``level`` (default
    ``$RAYMEDIC_LOG_LEVEL`` or WARNING)."""
    logging.basicConfig(level=level or os.environ.get(LEVEL_ENV, "WARNING"), format=FORMAT)


def use_serve_handlers() -> None:
    """Send the ``raymedic`` root's records to Serve's replica log handlers (call in a deployment's
    constructor): Serve attaches its handlers to the ``ray.serve`` logger only, and a line that does
    not reach them is missing from the replica's log in the dashboard."""
    root = logging.getLogger(ROOT)
    for handler in logging.getLogger("ray.serve").handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    if root.handlers:
        root.setLevel(logging.INFO)
        root.propagate = False
