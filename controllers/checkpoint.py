"""The controller's checkpoint: its memory, written before any action runs, read back on restart.

Ray restarts a killed controller (``max_restarts=-1``), and ``__init__`` runs again
with an empty memory. Everything a restarted controller must not forget is in one
JSON document under :func:`raymedic.keys.controller_state_key`: the healing
policy's incidents and action ledger (so no restart is done twice), the ensemble
weights, the published epoch, the data alerts, the performance monitors and the
retraining playbook. The document's shape is a contract with checkpoints written
by earlier versions of the controller::

    {"policy": {...}, "weights": {...}, "epoch": 12, "data_alerts": {...},
     "performance": {...}, "playbook": {...}, "saved_at": 1700000000.0}
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from raymedic.keys import controller_state_key
from raymedic.logs import get_logger
from raymedic.storage import Storage

__all__ = ["Checkpoint", "load_checkpoint"]

log = get_logger(__name__)

Part = Callable[[], Any]


def load_checkpoint(storage: Storage, model: str) -> dict[str, Any] | None:
    """The last checkpoint of ``model``'s controller, or None (none yet, or unreadable: start fresh,
    which loses memory but never blocks healing)."""
    key = controller_state_key(model)
    try:
        if storage.exists(key):
            return json.loads(storage.read_text(key))
    except Exception:
        log.exception("controller checkpoint %s unreadable; starting fresh", key)
    return None


class Checkpoint:
    """Writes the controller's memory as one document, from the parts that own it.

    Each part is read when the checkpoint is written, so the document is always the
    parts' state at that moment. ``dirty`` tells the step that something changed
    outside a policy step (a gateway's labels fired a detector, new weights were
    published) and must be written with the next checkpoint.

    Args:
        storage: Where the document lives.
        model: Whose controller it is.
        policy, weights, epoch, data_alerts, performance, playbook, disk: Each part's state (``disk``: the
            disk keeper's cooldown and proposal, optional; ``nodes``: the node keeper's phases, drains and
            proposals, in the first model's checkpoint only; ``sync``: the last batch taken from each gateway;
            ``groups``: the incident groups already audited, optional).
        clock: Wall-clock time for ``saved_at``.
    """

    def __init__(self, storage: Storage, model: str, *, policy: Part, weights: Part, epoch: Part,
                 data_alerts: Part, performance: Part, playbook: Part, disk: Part | None = None,
                 nodes: Part | None = None, sync: Part | None = None, groups: Part | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._key = controller_state_key(model)
        self._parts = {"policy": policy, "weights": weights, "epoch": epoch, "data_alerts": data_alerts,
                       "performance": performance, "playbook": playbook}
        if disk is not None:
            self._parts["disk"] = disk
        if nodes is not None:
            self._parts["nodes"] = nodes
        if sync is not None:
            self._parts["sync"] = sync
        if groups is not None:
            self._parts["groups"] = groups
        self._clock = clock
        self.dirty = True
        self.saves = 0

    def document(self) -> dict[str, Any]:
        """The document as it would be written now."""
        return {**{name: part() for name, part in self._parts.items()}, "saved_at": self._clock()}

    def save(self) -> None:
        """Write the document (blocking: run it in a thread from the loop); clears ``dirty``."""
        self._storage.write_text(self._key, json.dumps(self.document()))
        self.dirty = False
        self.saves += 1

    def mark_dirty(self) -> None:
        """Something checkpointed changed: the next step writes a checkpoint."""
        self.dirty = True
