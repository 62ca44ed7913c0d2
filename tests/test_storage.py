"""Durable writes on the local filesystem (no Ray): a short ``os.write`` is continued, a write that cannot
finish leaves nothing behind (no torn file renamed into place, no temporary file), and the directories a
durable write creates are fsynced into their parents."""

from __future__ import annotations

import errno
import os

import pytest

from raymedic import storage as storage_module
from raymedic.storage import Storage


def test_a_short_write_is_continued_until_every_byte_is_written(tmp_path, monkeypatch):
    real = os.write
    calls = []

    def short(fd, data):
        calls.append(len(data))
        return real(fd, bytes(data[:7]))  # a write that takes 7 bytes at a time

    monkeypatch.setattr(storage_module.os, "write", short)
    st = Storage(str(tmp_path))
    st.write_bytes("a/b.bin", b"x" * 50)
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"x" * 50 and len(calls) == 8


def test_a_write_the_disk_cannot_take_leaves_nothing(tmp_path, monkeypatch):
    st = Storage(str(tmp_path))
    st.write_bytes("k/label.bin", b"old")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_module.os, "write", full)
    with pytest.raises(OSError) as e:
        st.write_bytes("k/label.bin", b"new" * 100)
    assert e.value.errno == errno.ENOSPC
    assert (tmp_path / "k" / "label.bin").read_bytes() == b"old"  # the old file, not a torn new one
    assert os.listdir(tmp_path / "k") == ["label.bin"]  # no temporary file left


def test_zero_bytes_written_is_a_full_disk_not_a_loop(tmp_path, monkeypatch):
    monkeypatch.setattr(storage_module.os, "write", lambda fd, data: 0)
    with pytest.raises(OSError, match="disk full"):
        Storage(str(tmp_path)).write_bytes("x.bin", b"abc")
    assert os.listdir(tmp_path) == []


def test_the_directories_a_durable_write_creates_are_fsynced_into_their_parents(tmp_path, monkeypatch):
    synced = []
    real = storage_module._fsync_dir
    monkeypatch.setattr(storage_module, "_fsync_dir", lambda path: (synced.append(path), real(path)))
    st = Storage(str(tmp_path))
    st.write_bytes("feedback/m/hour=2026120700/part-1.parquet", b"rows")
    root = str(tmp_path)
    assert synced == [f"{root}/feedback/m/hour=2026120700", f"{root}/feedback/m", f"{root}/feedback", root]
    synced.clear()
    st.write_bytes("feedback/m/hour=2026120700/part-2.parquet", b"rows")  # folder exists: only its own entry
    assert synced == [f"{root}/feedback/m/hour=2026120700"]
    synced.clear()
    st.write_bytes("feedback/m/hour=2026120701/part-3.parquet", b"rows", durable=False)
    assert synced == []


def test_files_and_directories_under_storage_are_private_to_the_service_user(tmp_path):
    st = Storage(str(tmp_path / "store"))
    st.write_bytes("feedback/m/hour=2026120700/part-1.parquet", b"labels")
    st.write_text("controller/checkpoint.json", "{}", durable=False)
    st.makedirs("predictions/m")
    store = tmp_path / "store"
    for d in (store, store / "feedback", store / "feedback" / "m", store / "predictions" / "m"):
        assert d.stat().st_mode & 0o777 == 0o700, d
    for f in (store / "feedback/m/hour=2026120700/part-1.parquet", store / "controller/checkpoint.json"):
        assert f.stat().st_mode & 0o777 == 0o600, f


def test_claim_is_an_exclusive_create(tmp_path):
    st = Storage(str(tmp_path))
    assert st.claim("registry/m/a/v0002/.claim") is True
    assert st.claim("registry/m/a/v0002/.claim") is False  # the second writer learns it lost
    assert (tmp_path / "registry/m/a/v0002/.claim").stat().st_mode & 0o777 == 0o600
