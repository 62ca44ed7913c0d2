"""Named crash points for kill tests: a real SIGKILL of this process at an exact moment, once.

A test facility, never on by default. Killing a process from outside at "right after
it submitted the job" is a race the test loses most of the time; instead the code
calls :func:`failpoint` at the few boundaries where a crash is worst (between an
action and its record or checkpoint), and a test arms one by name. An armed point
kills its process with ``SIGKILL`` — no exception, no ``finally``, no flush: what a
kernel OOM kill or a lost node does — so what a restarted process finds is what a
real crash leaves.

Arming is explicit and lives on disk, so it reaches every process of a cluster and
survives the kill:

- ``RAYMEDIC_FAILPOINTS`` (:data:`FAILPOINTS_ENV`) names a directory (tests put it
  under ``storage_path``). Unset (the default), every :func:`failpoint` call returns
  at once and nothing is ever read.
- ``<dir>/<name>.armed`` arms point ``name`` (:func:`arm`). The first process that
  reaches it renames the file to ``<name>.fired`` (an atomic claim: one firing
  across processes) and kills itself, so the restarted process passes the same
  point and does not crash-loop. :func:`fired` tells a test it happened.

The variable must be in the environment of the processes it should reach (Ray
workers inherit the environment of the process that started the local cluster).

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> failpoint(Point.AFTER_DETECT, directory=d)    # not armed: nothing happens
>>> fired(d, Point.AFTER_DETECT)
False
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from raymedic.enums import StrEnum
from raymedic.logs import get_logger

__all__ = ["FAILPOINTS_ENV", "Point", "arm", "disarm", "failpoint", "fired"]

log = get_logger(__name__)

FAILPOINTS_ENV = "RAYMEDIC_FAILPOINTS"
"""The directory of armed failpoints (unset: the facility is off; tests only)."""


class Point(StrEnum):
    """The crash points the code has, each at a boundary where a crash must lose and repeat nothing."""

    AFTER_DETECT = "controller.after-detect"
    """The controller decided restarts: intents checkpointed and detections audited, no restart run yet."""
    AFTER_SUBMIT = "controller.after-submit"
    """The controller's retrain job went out; its job id is neither checkpointed nor audited yet."""
    MID_PROMOTION = "controller.mid-promotion"
    """The registry names the promoted versions champion; replicas not swapped, promotion not audited."""


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def failpoint(name: str, *, directory: str | None = None, kill: Callable[[], None] = _kill_self) -> None:
    """Crash here if ``name`` is armed (once); otherwise return at once.

    Args:
        name: The point (a :class:`Point`).
        directory: The armed points' directory (default: ``$RAYMEDIC_FAILPOINTS``; unset: off).
        kill: What firing does (default: SIGKILL of this process; a unit test passes a recorder).
    """
    where = directory if directory is not None else os.environ.get(FAILPOINTS_ENV)
    if not where:
        return
    armed = Path(where) / f"{name}.armed"
    try:
        os.rename(armed, Path(where) / f"{name}.fired")  # the claim: only one process wins it
    except OSError:
        return  # not armed, or another process fired it
    log.warning("failpoint %s fired: SIGKILL of process %d (a kill test armed it)", name, os.getpid())
    kill()


def arm(directory: str | os.PathLike[str], name: str) -> Path:
    """Arm ``name`` under ``directory`` for one firing (the directory is created); the armed file."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.fired").unlink(missing_ok=True)
    path = d / f"{name}.armed"
    path.write_text("")
    return path


def disarm(directory: str | os.PathLike[str], name: str) -> None:
    """Take back an armed ``name`` that has not fired (a bench whose situation never reached the point must
    not leave it to kill a later, unrelated step); its ``.fired`` mark, if any, stays."""
    (Path(directory) / f"{name}.armed").unlink(missing_ok=True)


def fired(directory: str | os.PathLike[str], name: str) -> bool:
    """Whether ``name`` fired (since it was last armed)."""
    return (Path(directory) / f"{name}.fired").exists()
