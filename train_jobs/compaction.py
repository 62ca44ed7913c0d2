"""Compaction and rotation of the prediction and feedback logs under ``storage_path``.

Every gateway replica writes one small Parquet part per flush (``gateway.log_flush_s``,
0.5 s) into the hour's folder (``logs/<model>/predictions/hour=YYYYMMDDHH/``), so a
busy service leaves thousands of files an hour: each costs an inode, a block and a
list call when the retrain job reads the log. This module merges each hour's parts
into one file and drops prediction rows older than ``data.prediction_log_retention_h``
— except rows that have an acknowledged label, which are kept forever so every label
stays joinable with the features it labels (:func:`train_jobs.labeled.recent_labeled`).
Feedback parts are merged too, never filtered: an acknowledged label is never dropped.

Safety (a crash at any point loses no row and leaves no duplicate a reader sees):

- the merged file is written atomically and durably *before* any old part is
  deleted; a crash between leaves both, and every reader dedupes on
  ``inference_id`` (the retrain reader keeps one row per id, :class:`KnownIds` a
  set), as does the next compaction, so compacting is idempotent;
- only the parts listed before the merge are deleted: a part a gateway writes
  meanwhile is left for the next run;
- the labelled ids are read again after the merged file is written, and a row
  dropped for age whose label arrived meanwhile is written back before the old parts
  go (the window left is the few milliseconds of the deletes themselves).

No Ray here: the controller runs it in a worker thread, a test on a temporary directory.
"""

from __future__ import annotations

import calendar
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from raymedic.keys import feedback_prefix, predictions_prefix
from raymedic.logs import get_logger
from raymedic.storage import Storage

__all__ = ["COMPACT_TAG", "SMALL_FILE_BYTES", "CompactionReport", "FolderResult", "LogStats", "compact_log",
           "labelled_ids", "log_stats"]

log = get_logger(__name__)

SMALL_FILE_BYTES = 1 << 20
"""A part under 1 MiB counts as small: merging it saves a file for little rewriting."""
COMPACT_TAG = "compact"
"""The writer tag in a merged part's name (``part-<ms>-compact-<hex>.parquet``), where a gateway's id stands
in the parts it writes."""


@dataclass(frozen=True)
class LogStats:
    """The size of one of a model's logs (predictions or feedback): what the disk rule reads.

    Attributes:
        files: Parquet parts.
        small_files: Parts under :data:`SMALL_FILE_BYTES`.
        bytes: Their total size.
        folders: Hour folders.
        oldest_hour: The oldest hour folder's name (``YYYYMMDDHH``), or None.
    """

    files: int = 0
    small_files: int = 0
    bytes: int = 0
    folders: int = 0
    oldest_hour: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "small_files": self.small_files, "bytes": self.bytes,
                "folders": self.folders, "oldest_hour": self.oldest_hour}


@dataclass(frozen=True)
class FolderResult:
    """What compacting one hour folder did."""

    folder: str
    files_before: int
    files_after: int
    rows_before: int
    rows_after: int
    dropped_expired: int
    kept_labelled: int
    bytes_before: int
    bytes_after: int


@dataclass
class CompactionReport:
    """The whole run, audited as the action's evidence."""

    folders: list[FolderResult] = field(default_factory=list)
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        f = self.folders
        return {"folders_compacted": len(f), "folders_skipped": self.skipped, "failed": self.failed,
                "files_before": sum(r.files_before for r in f), "files_after": sum(r.files_after for r in f),
                "rows_dropped_expired": sum(r.dropped_expired for r in f),
                "rows_kept_labelled": sum(r.kept_labelled for r in f),
                "duplicates_removed": sum(r.rows_before - r.rows_after - r.dropped_expired for r in f),
                "bytes_freed": sum(r.bytes_before - r.bytes_after for r in f),
                "duration_s": round(self.duration_s, 3)}


def _hour_folders(storage: Storage, prefix: str) -> list[str]:
    return [h for h in storage.listdir(prefix) if h.startswith("hour=")]


def _file_sizes(storage: Storage, key: str) -> dict[str, int]:
    """Part key → size in bytes, for the ``.parquet`` files directly below ``key``."""
    sel = pafs.FileSelector(storage.path(key), allow_not_found=True, recursive=False)
    return {f"{key}/{info.base_name}": int(info.size or 0) for info in storage.filesystem.get_file_info(sel)
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")}


def log_stats(storage: Storage, model: str) -> dict[str, LogStats]:
    """Files and bytes of ``model``'s ``predictions`` and ``feedback`` logs (a listing; no file is read)."""
    out = {}
    for name, prefix in (("predictions", predictions_prefix(model)), ("feedback", feedback_prefix(model))):
        files = small = size = 0
        hours = _hour_folders(storage, prefix)
        for h in hours:
            for n in _file_sizes(storage, f"{prefix}/{h}").values():
                files += 1
                small += n < SMALL_FILE_BYTES
                size += n
        out[name] = LogStats(files=files, small_files=small, bytes=size, folders=len(hours),
                             oldest_hour=hours[0].removeprefix("hour=") if hours else None)
    return out


def labelled_ids(storage: Storage, model: str) -> set[str]:
    """Every inference id that has an acknowledged label (the whole feedback log's id column)."""
    out: set[str] = set()
    prefix = feedback_prefix(model)
    keys = [key for h in _hour_folders(storage, prefix) for key in _file_sizes(storage, f"{prefix}/{h}")]
    for _, table in storage.read_parquet_parts(keys, columns=["inference_id"]):  # an unreadable part: warned
        out.update(table.column("inference_id").to_pylist())
    return out


def _hour_end(folder: str) -> float | None:
    """Unix time at which an ``hour=YYYYMMDDHH`` folder's hour ends (None if the name is not one)."""
    try:
        return calendar.timegm(time.strptime(folder.removeprefix("hour="), "%Y%m%d%H")) + 3600.0
    except ValueError:
        return None


def _merged_name(key: str) -> str:
    return f"{key}/part-{int(time.time() * 1000):013d}-{COMPACT_TAG}-{secrets.token_hex(4)}.parquet"


def _dedupe(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """``table`` without the rows whose ``keys`` repeat an earlier row's (what a crash between a merged
    file's write and the old parts' deletes leaves, and nothing else), in the original order."""
    if table.num_rows == 0:
        return table
    seen: set[tuple[Any, ...]] = set()
    first: list[int] = []
    for i, k in enumerate(zip(*(table.column(c).to_pylist() for c in keys))):
        if k not in seen:
            seen.add(k)
            first.append(i)
    if len(first) == table.num_rows:
        return table
    return table.take(pa.array(first, type=pa.int64()))


def _compact_folder(storage: Storage, key: str, *, cutoff: float | None, labelled: set[str],
                    relabel: Any, min_files: int, labelled_cutoff: float | None = None) -> FolderResult | None:
    """Merge one hour folder (and drop its expired, unlabelled rows when ``cutoff`` is given, and every row
    before ``labelled_cutoff``, labelled or not); None when there is nothing to do (already one file with
    nothing expired in it)."""
    sizes = _file_sizes(storage, key)
    if not sizes:
        return None
    end = _hour_end(key.rsplit("/", 1)[-1])
    may_expire = cutoff is not None and end is not None and end - 3600.0 < cutoff
    if len(sizes) < max(min_files, 2) and not may_expire:
        return None
    # A part that cannot be read is skipped with a warning and left where it is (never merged away).
    read = list(storage.read_parquet_parts(sorted(sizes)))
    if not read:
        return None
    parts = [key for key, _ in read]
    table = pa.concat_tables([t for _, t in read], promote_options="default")
    rows_before = table.num_rows
    predictions = "ts" in table.column_names
    # A prediction id is unique; a label row is the same only when id, label and time all are (a client's
    # correction is a new row: kept, the reader takes the latest).
    table = _dedupe(table, ("inference_id",) if predictions else ("inference_id", "label", "received_at"))
    dropped = kept_labelled = 0
    if predictions and cutoff is not None and table.num_rows:
        old = pc.less(table.column("ts"), cutoff)
        is_labelled = pc.is_in(table.column("inference_id"), value_set=pa.array(sorted(labelled), pa.string()))
        if labelled_cutoff is not None:  # past it a label no longer keeps the row's raw features
            is_labelled = pc.and_(is_labelled, pc.greater_equal(table.column("ts"), labelled_cutoff))
        keep = pc.or_(pc.invert(old), is_labelled)
        kept_labelled = int(pc.sum(pc.and_(old, is_labelled)).as_py() or 0)
        dropped_table = table.filter(pc.invert(keep))
        table = table.filter(keep)
        dropped = dropped_table.num_rows
    else:
        dropped_table = None
    if len(parts) == 1 and table.num_rows == rows_before:
        return None  # one file already, nothing dropped: compacting again changes nothing
    rows_after = table.num_rows
    written = None
    if table.num_rows:
        written = _merged_name(key)
        storage.write_parquet(written, table, durable=True)
    if dropped_table is not None and dropped_table.num_rows:
        # A label may have arrived for a dropped row while this ran: write such rows back before deleting.
        late = relabel()
        back = dropped_table.filter(pc.is_in(dropped_table.column("inference_id"),
                                             value_set=pa.array(sorted(late), pa.string())))
        if labelled_cutoff is not None:
            back = back.filter(pc.greater_equal(back.column("ts"), labelled_cutoff))
        if back.num_rows:
            storage.write_parquet(_merged_name(key), back, durable=True)
            dropped -= back.num_rows
            kept_labelled += back.num_rows
            rows_after += back.num_rows
    for p in parts:
        if p != written:
            storage.delete(p)
    after = _file_sizes(storage, key)
    if not after and end is not None and cutoff is not None and end < cutoff:
        storage.delete(key)  # an expired hour left empty: no gateway writes there any more
    return FolderResult(folder=key, files_before=len(parts), files_after=len(after), rows_before=rows_before, rows_after=rows_after,
                        dropped_expired=dropped, kept_labelled=kept_labelled,
                        bytes_before=sum(sizes.values()), bytes_after=sum(after.values()))


def compact_log(storage: Storage, model: str, *, retention_s: float | None, now: float | None = None,
                min_files: int = 2, labelled_retention_s: float | None = None) -> CompactionReport:
    """Merge ``model``'s log parts into one file per hour folder and drop prediction rows older than
    ``retention_s`` that have no acknowledged label (and older than ``labelled_retention_s``, any row).

    Args:
        storage: The service's storage.
        model: Whose logs.
        retention_s: Prediction rows older than this (by their ``ts``) are dropped unless labelled;
            None keeps every row (merge only).
        now: The time the retention counts back from (default: now).
        min_files: A folder with fewer parts than this (and nothing expired) is left alone.
        labelled_retention_s: Prediction rows older than this are dropped even with a label (their raw
            features go; the label rows stay); None keeps labelled rows forever. Only with ``retention_s``.

    Returns:
        What was done; a folder that failed is named in ``failed`` and left as it was (or, if the
        failure came between the write and the deletes, with duplicates every reader removes).
    """
    t0 = time.monotonic()
    now = time.time() if now is None else now
    cutoff = None if retention_s is None else now - retention_s
    labelled_cutoff = None if labelled_retention_s is None or cutoff is None else now - labelled_retention_s
    report = CompactionReport()
    labelled = labelled_ids(storage, model) if cutoff is not None else set()
    for prefix, cut in ((feedback_prefix(model), None), (predictions_prefix(model), cutoff)):
        for h in _hour_folders(storage, prefix):
            key = f"{prefix}/{h}"
            try:
                res = _compact_folder(storage, key, cutoff=cut, labelled=labelled, min_files=min_files,
                                      relabel=lambda: labelled_ids(storage, model) - labelled,
                                      labelled_cutoff=labelled_cutoff if cut is not None else None)
            except Exception as exc:
                log.exception("could not compact %s; it stays as it is until the next run", key)
                report.failed.append(f"{key}: {exc}")
                continue
            if res is None:
                report.skipped += 1
            else:
                report.folders.append(res)
    report.duration_s = time.monotonic() - t0
    return report
