"""The model registry on a real local Storage: versions, integrity, aliases (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raymedic.errors import ConfigError, IntegrityError, RegistryError, VersionNotFound
from raymedic.storage import Storage
from train_jobs.registry import AliasMove, ModelRegistry

FILES = {"weights.safetensors": b"\x00\x01weights", "architecture.json": b'{"kind": "mlp"}'}


class FakeClock:
    """A clock that advances one second per call, so timestamps are distinct and exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(str(tmp_path / "store"))


@pytest.fixture
def reg(storage: Storage) -> ModelRegistry:
    return ModelRegistry(storage, clock=FakeClock())


def _register(reg: ModelRegistry, n: int = 1, *, member: str = "mlp") -> list[str]:
    return [
        reg.register("synthetic", member, files={**FILES, "note.txt": f"v{i}".encode()}, metadata={"i": i}).version
        for i in range(n)
    ]


def _version_path(storage: Storage, version: str, name: str) -> Path:
    path = storage.local_path(f"registry/synthetic/mlp/{version}/{name}")
    assert path is not None
    return path


def test_register_load_round_trip(reg: ModelRegistry) -> None:
    info = reg.register("synthetic", "mlp", files=FILES, metadata={"metrics": {"acc": 0.9}, "kind": "mlp"})
    assert (info.model, info.member, info.version, info.parent_version) == ("synthetic", "mlp", "v0001", None)
    assert info.created_at == 1001.0
    loaded = reg.load("synthetic", "mlp", "v0001")
    assert loaded.files == FILES
    meta = loaded.info.metadata
    assert meta["metrics"] == {"acc": 0.9} and meta["kind"] == "mlp"
    assert meta["version"] == "v0001" and meta["model"] == "synthetic" and meta["member"] == "mlp"
    assert meta["files"]["weights.safetensors"]["size"] == len(FILES["weights.safetensors"])
    assert len(meta["files"]["weights.safetensors"]["sha256"]) == 64
    assert loaded.info == info == reg.info("synthetic", "mlp", "v0001")
    assert reg.models() == ["synthetic"] and reg.members("synthetic") == ["mlp"]


def test_versions_increment_and_parent(reg: ModelRegistry) -> None:
    assert reg.latest("synthetic", "mlp") is None
    assert _register(reg, 3) == ["v0001", "v0002", "v0003"]
    child = reg.register("synthetic", "mlp", files=FILES, metadata={}, parent_version="v0002")
    assert child.version == "v0004" and child.parent_version == "v0002"
    assert [v.version for v in reg.versions("synthetic", "mlp")] == ["v0001", "v0002", "v0003", "v0004"]
    assert reg.latest("synthetic", "mlp").version == "v0004"  # type: ignore[union-attr]
    assert reg.resolve("synthetic", "mlp", "latest") == "v0004"
    with pytest.raises(VersionNotFound, match="v0009"):
        reg.register("synthetic", "mlp", files=FILES, metadata={}, parent_version="v0009")


def test_promote_rollback_and_double_rollback(reg: ModelRegistry) -> None:
    _register(reg, 3)
    assert reg.promote("synthetic", "mlp", "v0001") == {"champion": "v0001"}
    assert reg.promote("synthetic", "mlp", "v0002") == {"champion": "v0002", "previous": "v0001"}
    assert reg.resolve("synthetic", "mlp") == "v0002"
    assert reg.load("synthetic", "mlp").files["note.txt"] == b"v1"
    assert reg.rollback("synthetic", "mlp") == {"champion": "v0001", "previous": "v0002"}
    assert reg.rollback("synthetic", "mlp") == {"champion": "v0002", "previous": "v0001"}
    assert reg.aliases("synthetic", "mlp") == {"champion": "v0002", "previous": "v0001"}


def test_promote_is_idempotent(reg: ModelRegistry) -> None:
    _register(reg, 2)
    reg.promote("synthetic", "mlp", "v0001")
    first = reg.promote("synthetic", "mlp", "v0002")
    n_moves = len(reg.alias_history("synthetic", "mlp"))
    assert reg.promote("synthetic", "mlp", "v0002") == first == {"champion": "v0002", "previous": "v0001"}
    assert len(reg.alias_history("synthetic", "mlp")) == n_moves


def test_rollback_without_previous(reg: ModelRegistry) -> None:
    _register(reg, 1)
    reg.promote("synthetic", "mlp", "v0001")
    with pytest.raises(RegistryError, match="no 'previous' version"):
        reg.rollback("synthetic", "mlp")


def test_alias_history_recorded(reg: ModelRegistry) -> None:
    _register(reg, 2)
    reg.promote("synthetic", "mlp", "v0001")
    reg.promote("synthetic", "mlp", "v0002")
    reg.rollback("synthetic", "mlp")
    reg.set_alias("synthetic", "mlp", "canary", "latest")
    history = reg.alias_history("synthetic", "mlp")
    assert [(h.action, h.alias, h.from_version, h.to_version) for h in history] == [
        ("promote", "champion", None, "v0001"),
        ("promote", "champion", "v0001", "v0002"),
        ("promote", "previous", None, "v0001"),
        ("rollback", "champion", "v0002", "v0001"),
        ("rollback", "previous", "v0001", "v0002"),
        ("set_alias", "canary", None, "v0002"),
    ]
    assert all(isinstance(h, AliasMove) and h.at > 1000.0 for h in history)


def test_tampered_artifact_raises_integrity_error(reg: ModelRegistry, storage: Storage) -> None:
    _register(reg, 1)
    reg.promote("synthetic", "mlp", "v0001")
    path = _version_path(storage, "v0001", "weights.safetensors")
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        reg.load("synthetic", "mlp")
    msg = str(err.value)
    assert "'weights.safetensors'" in msg and "v0001" in msg and "'mlp'" in msg
    assert "raymedic rollback --model synthetic --member mlp" in msg


def test_deleted_artifact_raises_integrity_error(reg: ModelRegistry, storage: Storage) -> None:
    _register(reg, 1)
    _version_path(storage, "v0001", "architecture.json").unlink()
    with pytest.raises(IntegrityError, match="'architecture.json' listed in MANIFEST.json is missing"):
        reg.load("synthetic", "mlp", "v0001")


def test_tampered_metadata_raises_integrity_error(reg: ModelRegistry, storage: Storage) -> None:
    _register(reg, 1)
    path = _version_path(storage, "v0001", "metadata.json")
    meta = json.loads(path.read_text())
    meta["i"] = 42
    path.write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="'metadata.json'"):
        reg.load("synthetic", "mlp", "v0001")


def test_incomplete_version_is_invisible_and_its_id_not_reused(reg: ModelRegistry, storage: Storage) -> None:
    _register(reg, 2)
    _version_path(storage, "v0002", "MANIFEST.json").unlink()  # as if the writer crashed
    assert [v.version for v in reg.versions("synthetic", "mlp")] == ["v0001"]
    assert reg.resolve("synthetic", "mlp", "latest") == "v0001"
    assert reg.latest("synthetic", "mlp").version == "v0001"  # type: ignore[union-attr]
    with pytest.raises(VersionNotFound, match="v0002 is incomplete"):
        reg.resolve("synthetic", "mlp", "v0002")
    with pytest.raises(VersionNotFound):
        reg.promote("synthetic", "mlp", "v0002")
    assert _register(reg, 1) == ["v0003"]


def test_unknown_refs_raise_version_not_found(reg: ModelRegistry) -> None:
    _register(reg, 2)
    reg.promote("synthetic", "mlp", "v0002")
    with pytest.raises(VersionNotFound, match=r"no alias or version 'canary'.*champion→v0002.*v0001, v0002"):
        reg.resolve("synthetic", "mlp", "canary")
    with pytest.raises(VersionNotFound, match=r"v0007 does not exist.*versions: v0001, v0002"):
        reg.load("synthetic", "mlp", "v0007")
    with pytest.raises(VersionNotFound, match=r"no registered member 'cnn'; members: mlp"):
        reg.resolve("synthetic", "cnn", "champion")
    with pytest.raises(VersionNotFound, match=r"no model 'other'.*models: synthetic"):
        reg.load("other", "mlp")


def test_no_champion_yet(reg: ModelRegistry) -> None:
    _register(reg, 1)
    with pytest.raises(VersionNotFound, match="aliases: none; versions: v0001"):
        reg.resolve("synthetic", "mlp")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "../etc"}, "model name '../etc' is invalid"),
        ({"member": ""}, "member name '' is invalid"),
        ({"files": {"a/b.bin": b"x"}}, "file name 'a/b.bin' is invalid"),
        ({"files": {"MANIFEST.json": b"x"}}, "is reserved"),
        ({"files": {"metadata.json": b"x"}}, "is reserved"),
        ({"files": {"w.bin": "text"}}, "is a str, not bytes"),
        ({"files": {}}, "non-empty"),
        ({"metadata": {"obj": object()}}, "not JSON-serialisable"),
        ({"metadata": {"version": "x"}}, "set by the registry"),
        ({"parent_version": "champion"}, "not a version id"),
    ],
)
def test_bad_register_arguments(reg: ModelRegistry, storage: Storage, kwargs: dict, match: str) -> None:
    args = {"model": "synthetic", "member": "mlp", "files": FILES, "metadata": {}} | kwargs
    with pytest.raises(ConfigError, match=match):
        reg.register(args.pop("model"), args.pop("member"), **args)
    assert storage.listdir("registry/synthetic/mlp") == []  # validation happens before any write


@pytest.mark.parametrize("alias", ["Champion", "v0001", "v12", "latest", "", "a" * 33, "canary/x"])
def test_bad_alias_names(reg: ModelRegistry, alias: str) -> None:
    _register(reg, 1)
    with pytest.raises(ConfigError, match="alias"):
        reg.set_alias("synthetic", "mlp", alias, "v0001")


def test_file_uri_storage_works_the_same(tmp_path: Path) -> None:
    uri = (tmp_path / "remote").as_uri()
    assert uri.startswith("file:///")
    reg = ModelRegistry(Storage(uri))
    assert reg.models() == []
    v1 = reg.register("synthetic", "mlp", files=FILES, metadata={"a": 1}).version
    v2 = reg.register("synthetic", "mlp", files=FILES, metadata={"a": 2}).version
    reg.promote("synthetic", "mlp", v1)
    reg.promote("synthetic", "mlp", v2)
    reg.rollback("synthetic", "mlp")
    assert reg.load("synthetic", "mlp").info.metadata["a"] == 1
    assert [v.version for v in reg.versions("synthetic", "mlp")] == ["v0001", "v0002"]
    assert (tmp_path / "remote" / "registry" / "synthetic" / "mlp" / "v0002" / "MANIFEST.json").exists()
    assert reg.models() == ["synthetic"]


def test_two_writers_that_pick_the_same_next_version_get_different_ones(storage: Storage):
    """A ``raymedic train`` and a retrain job both list v0001 as the newest and take v0002: the exclusive
    claim gives it to one, the other registers v0003; neither overwrites the other's files."""
    a, b = ModelRegistry(storage), ModelRegistry(storage)
    a.register("churn", "mlp", files={"weights.bin": b"first"}, metadata={})
    b._next_version = lambda model, member: "v0002"  # b decided before a's next version appeared
    va = a.register("churn", "mlp", files={"weights.bin": b"a"}, metadata={})
    vb = b.register("churn", "mlp", files={"weights.bin": b"b"}, metadata={})
    assert (va.version, vb.version) == ("v0002", "v0003")
    assert a.load("churn", "mlp", "v0002").files["weights.bin"] == b"a"
    assert a.load("churn", "mlp", "v0003").files["weights.bin"] == b"b"
