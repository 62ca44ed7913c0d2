"""The append-only audit trail of everything the controller saw and did.

Records are JSON objects (ARCHITECTURE.md: ``ts``, ``kind``, ``target``,
``evidence``, ``action``, ``outcome``; incident records add ``detected_at`` and
``recovered_at``). They are buffered and flushed as a new, never-rewritten JSONL
file per flush under ``audit/<model>/``: appends work the same on a local disk and
on object stores (which cannot append to a file), and a crash loses at most the
records of one flush period, never an earlier file.

A file per flush adds up (one per controller step that recorded something), and a
restarted controller reads them all, so :func:`compact_audit` merges old ones: the
merged file is written durably, naming its sources on its first line, before any
source is deleted, and a reader skips every file a merged file names — a listing
taken between the two steps reads each record once, and a kill leaves either the
sources or both.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from raymedic.enums import plain
from raymedic.keys import audit_prefix
from raymedic.logs import get_logger
from raymedic.storage import Storage

__all__ = ["AuditLog", "AuditCompaction", "compact_audit", "read_audit"]

COMPACTED_KEY = "compacted"
"""The first line of a merged file: ``{"compacted": [the file names it replaces]}`` (not a record: no ``ts``)."""

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


def _parse(storage: Storage, key: str) -> tuple[list[dict[str, Any]], list[str]]:
    """A file's records and, for a merged file, the names of the files it replaces."""
    try:
        text = storage.read_bytes(key).decode("utf-8", errors="replace")
    except OSError as exc:  # gone between the listing and the read (a compaction), or unreadable
        log.warning("audit file %s could not be read (%s); skipping it", key, exc)
        return [], []
    records: list[dict[str, Any]] = []
    sources: list[str] = []
    torn = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if isinstance(rec, dict) and "ts" not in rec and isinstance(rec.get(COMPACTED_KEY), list):
            sources.extend(str(n) for n in rec[COMPACTED_KEY])
            continue
        # A torn or foreign line (or one that is not a record) must not stop a restart.
        if not isinstance(rec, dict) or not isinstance(rec.get("ts", 0), (int, float)):
            torn += 1
            continue
        records.append(rec)
    if torn:
        log.warning("audit file %s holds %d line(s) that are not records; skipped them", key, torn)
    return records, sources


def _read_files(storage: Storage, model: str) -> dict[str, tuple[list[dict[str, Any]], list[str]]]:
    """Every audit file's records and sources, by name, less the files a merged file replaces."""
    files = {f.rsplit("/", 1)[-1]: _parse(storage, f) for f in storage.list_files(audit_prefix(model), suffix=".jsonl")}
    replaced = {n for _, sources in files.values() for n in sources}
    return {name: parsed for name, parsed in files.items() if name not in replaced}


def read_audit(storage: Storage, model: str, *, since: float | None = None) -> list[dict[str, Any]]:
    """Every flushed record of ``model`` in time order (optionally those at or after ``since``)."""
    out = [r for records, _ in _read_files(storage, model).values() for r in records
           if since is None or r.get("ts", 0) >= since]
    out.sort(key=lambda r: r.get("ts", 0))
    return out


@dataclass(frozen=True)
class AuditCompaction:
    """What :func:`compact_audit` did: files merged into one, and the records they held."""

    merged_files: int = 0
    records: int = 0
    into: str | None = None


def compact_audit(storage: Storage, model: str, *, now: float, older_than_s: float = 3600.0,
                  min_files: int = 100) -> AuditCompaction:
    """Merge the audit files last written more than ``older_than_s`` ago into one, when there are at least
    ``min_files`` of them (merged files included, so merges merge too); nothing else is touched.

    Only the controller of ``model`` writes its audit, and it runs this: no two merges race.
    """
    prefix = audit_prefix(model)
    cutoff_us = int((now - older_than_s) * 1e6)
    files = _read_files(storage, model)
    # A file's name starts with its first record's time in µs: old enough when that is before the cutoff and
    # every record in it is too (a restarted controller may write an old record into a new file).
    old = sorted(name for name, (records, _) in files.items()
                 if name[:20].isdigit() and int(name[:20]) < cutoff_us
                 and all(r.get("ts", 0) * 1e6 < cutoff_us for r in records))
    if len(old) < min_files:
        return AuditCompaction()
    records = sorted((r for name in old for r in files[name][0]), key=lambda r: r.get("ts", 0))
    first_us = int(records[0]["ts"] * 1e6) if records else int(old[0][:20])
    into = f"{first_us:020d}-compacted-{secrets.token_hex(4)}.jsonl"
    body = json.dumps({COMPACTED_KEY: old}) + "\n" + "".join(json.dumps(r, default=str) + "\n" for r in records)
    storage.write_text(f"{prefix}/{into}", body)  # durable before any source goes
    for name in old:
        storage.delete(f"{prefix}/{name}")
    return AuditCompaction(merged_files=len(old), records=len(records), into=into)
