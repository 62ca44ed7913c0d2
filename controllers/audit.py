"""The append-only audit trail of everything the controller saw and did.

Records are JSON objects (ARCHITECTURE.md: ``ts``, ``kind``, ``target``,
``evidence``, ``action``, ``outcome``; incident records add ``detected_at`` and
``recovered_at``). They are buffered and flushed as a new, never-rewritten JSONL
file per flush under ``audit/<model>/``: appends work the same on a local disk and
on object stores (which cannot append to a file), and a crash loses at most the
records of one flush period, never an earlier file.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from raymedic.enums import plain
from raymedic.keys import audit_prefix
from raymedic.logs import get_logger
from raymedic.storage import Storage

__all__ = ["AuditLog", "read_audit"]

log = get_logger(__name__)


class AuditLog:
    """Buffered writer plus a bounded in-memory tail for status pages.

    ``writer`` names this process in the file names, so two controllers (an old one
    still flushing, a restarted one) never write the same file.
    """

    def __init__(self, storage: Storage, model: str, *, writer: str, tail: int = 200) -> None:
        self._storage = storage
        self._model = model
        self._writer = writer
        self._buf: list[dict[str, Any]] = []
        self._tail: deque[dict[str, Any]] = deque(maxlen=tail)
        self._seq = 0
        for rec in read_audit(storage, model)[-tail:]:
            self._tail.append(rec)

    def record(self, kind: str, target: str, *, evidence: Any = None, action: str = "", outcome: str = "",
               ts: float | None = None, **extra: Any) -> dict[str, Any]:
        """Buffer one record (written at the next :meth:`flush`) and keep it in the tail.

        Record fields are the ARCHITECTURE.md contract: ``ts``, ``kind``, ``target``,
        ``evidence``, ``action``, ``outcome``, ``model``, then any ``extra``.
        """
        rec = plain({"ts": time.time() if ts is None else ts, "kind": kind, "target": target,
                      "evidence": evidence if evidence is not None else {}, "action": action, "outcome": outcome,
                      "model": self._model, **extra})
        self._buf.append(rec)
        self._tail.append(rec)
        return rec

    def flush(self) -> int:
        """Write buffered records as one new file; returns how many."""
        if not self._buf:
            return 0
        batch, self._buf = self._buf, []
        self._seq += 1
        key = f"{audit_prefix(self._model)}/{int(batch[0]['ts'] * 1e6):020d}-{self._writer}-{self._seq:06d}.jsonl"
        try:
            self._storage.write_text(key, "".join(json.dumps(r, default=str) + "\n" for r in batch))
        except Exception:
            self._buf = batch + self._buf  # keep them for the next flush
            raise
        return len(batch)

    def has(self, kind: str, incident: str) -> bool:
        """Whether a record of ``kind`` for ``incident`` is in the tail (flushed, buffered, or read back at
        start): an action a restarted controller replays records its outcome only if it is not there yet."""
        return any(r.get("kind") == kind and r.get("incident") == incident for r in self._tail)

    def reaches(self, ts: float) -> bool:
        """Whether the tail holds every record since ``ts`` (so :meth:`has` can tell a record is missing)."""
        return len(self._tail) < (self._tail.maxlen or 0) or (bool(self._tail) and self._tail[0]["ts"] <= ts)

    def tail(self, n: int = 50) -> list[dict[str, Any]]:
        """The last ``n`` records (flushed or not), oldest first."""
        return list(self._tail)[-n:]


def read_audit(storage: Storage, model: str, *, since: float | None = None) -> list[dict[str, Any]]:
    """Every flushed record of ``model`` in time order (optionally those at or after ``since``)."""
    out: list[dict[str, Any]] = []
    for f in storage.list_files(audit_prefix(model), suffix=".jsonl"):
        try:
            text = storage.read_bytes(f).decode("utf-8", errors="replace")
        except OSError as exc:  # gone between the listing and the read (a compaction), or unreadable
            log.warning("audit file %s could not be read (%s); skipping it", f, exc)
            continue
        torn = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict):  # a torn or foreign line: one bad line must not stop a restart
                torn += 1
                continue
            ts = rec.get("ts", 0)
            if not isinstance(ts, (int, float)):
                torn += 1
                continue
            if since is None or ts >= since:
                out.append(rec)
        if torn:
            log.warning("audit file %s holds %d line(s) that are not records; skipped them", f, torn)
    out.sort(key=lambda r: r.get("ts", 0))
    return out
