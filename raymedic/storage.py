"""Everything raymedic persists goes through one ``storage_path``.

``storage_path`` is a local directory by default and any ``pyarrow.fs`` URI
(``s3://bucket/prefix``, ``gs://...``) on a cluster, so the registry, the
prediction and feedback logs and the controller's checkpoints work the same on a
laptop and on a multi-node cluster. Paths given to :class:`Storage` are relative,
``/``-separated keys below the root.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymedic.errors import ConfigError
from raymedic.logs import get_logger

__all__ = ["Storage"]

log = get_logger(__name__)


PRIVATE_FILE_MODE = 0o600
"""Files under a local ``storage_path``: only the service's user reads the logged features, labels, audit."""
PRIVATE_DIR_MODE = 0o700

class Storage:
    """A root on a ``pyarrow.fs`` filesystem with atomic, durable writes where possible.

    On the local filesystem a write goes to a temporary file, is fsynced and renamed
    into place, so a reader never sees half a file and a crash right after a
    ``write_*(durable=True)`` call returns cannot lose the data. Object stores give
    atomic whole-object puts by themselves.
    """

    def __init__(self, uri: str) -> None:
        if not uri:
            raise ConfigError("storage_path is empty: give a directory or a URI such as s3://bucket/raymedic")
        if "://" not in uri:
            uri = str(Path(uri).expanduser().resolve())
            _make_private_dirs(uri)  # an existing directory keeps the mode its owner gave it
        try:
            self._fs, self._root = pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, ValueError, OSError) as exc:
            raise ConfigError(
                f"storage_path {uri!r} cannot be opened ({exc}); use a local directory "
                "or a pyarrow.fs URI such as s3://bucket/prefix"
            ) from exc
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        self.uri = uri

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem under the root, for readers that take one (``pq.read_table``)."""
        return self._fs

    def path(self, key: str) -> str:
        """The filesystem path for ``key`` (for pyarrow readers)."""
        key = key.strip("/")
        return f"{self._root.rstrip('/')}/{key}" if key else self._root

    def local_path(self, key: str) -> Path | None:
        """A local ``Path`` for ``key``, or None on remote storage."""
        return Path(self.path(key)) if self._local else None

    def exists(self, key: str) -> bool:
        """Whether ``key`` names a file or a directory (checkpoints and aliases may not exist yet)."""
        return self._fs.get_file_info(self.path(key)).type != pafs.FileType.NotFound

    def is_dir(self, key: str) -> bool:
        """Whether ``key`` is a directory: a Parquet log is a directory of part files."""
        return self._fs.get_file_info(self.path(key)).type == pafs.FileType.Directory

    def listdir(self, key: str) -> list[str]:
        """Names (not paths) directly below ``key``; empty when it does not exist."""
        sel = pafs.FileSelector(self.path(key), allow_not_found=True, recursive=False)
        return sorted(info.base_name for info in self._fs.get_file_info(sel))

    def list_files(self, key: str, *, suffix: str = "") -> list[str]:
        """Keys of every file below ``key`` (recursive), relative to the root."""
        sel = pafs.FileSelector(self.path(key), allow_not_found=True, recursive=True)
        root = self._root.rstrip("/") + "/"
        return sorted(
            info.path.removeprefix(root)
            for info in self._fs.get_file_info(sel)
            if info.type == pafs.FileType.File and info.path.endswith(suffix)
        )

    def makedirs(self, key: str) -> None:
        """Create ``key`` and its parents; object stores have no directories and ignore it. Local
        directories raymedic creates are private to the service's user (``0o700``), like its files
        (``0o600``): they hold every request's features, the labels and the audit trail."""
        if self._local:
            _make_private_dirs(self.path(key))
            return
        self._fs.create_dir(self.path(key), recursive=True)

    def read_bytes(self, key: str) -> bytes:
        """The whole file at ``key`` (artifacts are read whole so their sha256 can be checked)."""
        with self._fs.open_input_stream(self.path(key)) as f:
            return f.read()

    def read_text(self, key: str) -> str:
        """The file at ``key`` as UTF-8 text (JSON documents, audit lines)."""
        return self.read_bytes(key).decode("utf-8")

    def write_bytes(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Write ``data`` at ``key`` atomically: a reader sees the old file or the new one, never half
        of one; ``durable`` also fsyncs the file and its directory before returning (an acknowledged
        label or an action's intent must survive a crash right after), and every directory this write
        created along with the parent it was created in (a new ``hour=`` folder is itself an entry that
        a crash could lose).

        Raises:
            OSError: the bytes could not all be written (a full disk: ``ENOSPC``); nothing is left at
                ``key`` or in a temporary file.
        """
        if self._local:
            final = self.path(key)
            created = _make_private_dirs(os.path.dirname(final))
            tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
            try:
                try:
                    _write_all(fd, data)
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            if durable:
                _fsync_entries(final, created)
            return
        if "/" in key:
            self.makedirs(key.rsplit("/", 1)[0])
        with self._fs.open_output_stream(self.path(key)) as f:
            f.write(data)

    def claim(self, key: str, data: bytes = b"") -> bool:
        """Create ``key`` only if nothing is there yet: True when this call created it, False when another
        writer had (an exclusive create: two processes allocating the same next id learn which one won).
        Durable like :meth:`write_bytes`. Object stores have no create-if-absent in ``pyarrow.fs``: there
        a check-then-put narrows the race but cannot close it.
        """
        if not self._local:
            if self.exists(key):
                return False
            self.write_bytes(key, data)
            return True
        final = self.path(key)
        created = _make_private_dirs(os.path.dirname(final))
        try:
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        except FileExistsError:
            return False
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_entries(final, created)
        return True

    def write_text(self, key: str, text: str, *, durable: bool = True) -> None:
        """:meth:`write_bytes` of UTF-8 ``text``."""
        self.write_bytes(key, text.encode("utf-8"), durable=durable)

    def write_parquet(self, key: str, table: pa.Table, *, durable: bool = True) -> None:
        """Write ``table`` as one Parquet file at ``key``, atomically like :meth:`write_bytes`."""
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(key, buf.getvalue(), durable=durable)

    def read_parquet(self, key: str, *, columns: list[str] | None = None) -> pa.Table:
        """Read one file or every ``.parquet`` file below a directory key."""
        if self.is_dir(key):
            files = [self.path(k) for k in self.list_files(key, suffix=".parquet")]
            if not files:
                return pa.table({})
            tables = [pq.read_table(p, filesystem=self._fs, columns=columns) for p in files]
            return pa.concat_tables(tables, promote_options="default")
        return pq.read_table(self.path(key), filesystem=self._fs, columns=columns)

    def read_parquet_parts(self, keys: Iterable[str], *, columns: list[str] | None = None
                           ) -> Iterator[tuple[str, pa.Table]]:
        """Each of ``keys`` that reads as Parquet, with its key; one that does not (torn, garbage, empty,
        missing a column asked for, gone) is skipped with a warning that names it, and left in place.

        Why skip: every write of raymedic's is whole or absent, so a part that is visible and unreadable
        came from outside it (a bad copy, a disk fault) and stays so; one such file must not stop a
        gateway's lookup of known ids, a retrain's join or a compaction, which read every part of a log.
        """
        for key in keys:
            try:
                table = pq.read_table(self.path(key), filesystem=self._fs, columns=columns)
            except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
                log.warning("skipping unreadable Parquet part %s (%s: %s); it is left where it is: move it "
                            "out of storage_path to inspect it, or delete it", key, type(exc).__name__,
                            str(exc)[:200])
                continue
            yield key, table

    def delete(self, key: str) -> None:
        """Remove the file or directory at ``key``; a missing key is not an error (deleting is idempotent)."""
        info = self._fs.get_file_info(self.path(key))
        if info.type == pafs.FileType.Directory:
            self._fs.delete_dir(self.path(key))
        elif info.type == pafs.FileType.File:
            self._fs.delete_file(self.path(key))


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written: one call may write fewer (a signal, a nearly full disk),
    and a short write fsynced and renamed into place would be a torn file that looks whole."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "no byte could be written (is the disk full?)")
        view = view[n:]


def _make_private_dirs(path: str) -> list[str]:
    """Create ``path`` and its missing parents (``0o700``); the directories this call created, deepest
    first (another process creating one at the same moment is fine)."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, PRIVATE_DIR_MODE)
    return missing


def _fsync_entries(final: str, created: list[str]) -> None:
    """Make a new file's entry durable: its directory, then each directory created for it (deepest
    first), since a directory's own entry lives in its parent."""
    for directory in [os.path.dirname(final)] + [os.path.dirname(d) for d in created]:
        _fsync_dir(directory)


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
