"""The versioned model registry: immutable, checksummed versions plus movable aliases.

Layout below the storage root::

    registry/<model>/<member>/<version>/<files...>, metadata.json, MANIFEST.json
    registry/<model>/<member>/aliases.json           {alias: version}
    registry/<model>/<member>/alias_history.jsonl    one JSON line per alias move

A version becomes visible only once ``MANIFEST.json`` exists, and it is written
last, so a writer that crashes half way leaves nothing a reader can list or load.
Every file is checksummed in the manifest and re-verified on :meth:`ModelRegistry.load`:
serving refuses bytes it cannot vouch for rather than answering with a corrupted
model. The registry stores the bytes it is given and never unpickles anything.

Concurrency: one writer per (model, member) is assumed (the trainer or the
controller). Version ids are allocated as max existing + 1 and alias files are
read-modify-written, so two simultaneous writers could race; the controller
serialises its actions, which is why no lock is taken here.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

from raymedic.errors import ConfigError, IntegrityError, RegistryError, VersionNotFound
from raymedic.storage import Storage

__all__ = ["ModelRegistry", "VersionInfo", "LoadedVersion", "AliasMove", "CHAMPION", "PREVIOUS", "CHALLENGER",
           "LATEST"]

CHAMPION = "champion"
PREVIOUS = "previous"
# A candidate registered for comparison (a search's or a retrain's best); never served until promoted.
CHALLENGER = "challenger"
# A pseudo-ref, never stored: the newest complete version.
LATEST = "latest"

METADATA = "metadata.json"
MANIFEST = "MANIFEST.json"
CLAIM = ".claim"
"""Created exclusively first in a new version's directory: the writer that creates it owns the id."""
CLAIM_TRIES = 50
_ALIASES = "aliases.json"
_HISTORY = "alias_history.jsonl"
_ROOT = "registry"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# Canonical ids only (v0001 ... v9999, v10000 ...), so "v01" and "v0001" never both exist.
_VERSION = re.compile(r"v(?:\d{4}|[1-9]\d{4,})")
_LOOKS_LIKE_VERSION = re.compile(r"v\d+")
_RESERVED_METADATA = ("version", "model", "member", "created_at", "parent_version", "files")
_SHOWN_VERSIONS = 5


@dataclass(frozen=True)
class VersionInfo:
    """One complete version as recorded in its ``metadata.json``.

    ``metadata`` is the whole stored dict (the caller's keys plus ``version``,
    ``model``, ``member``, ``created_at``, ``parent_version`` and ``files``).
    """

    model: str
    member: str
    version: str
    created_at: float
    parent_version: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class LoadedVersion:
    """A version whose every file matched its manifest checksum (``metadata.json`` excluded)."""

    info: VersionInfo
    files: dict[str, bytes]


@dataclass(frozen=True)
class AliasMove:
    """One alias change, as appended to ``alias_history.jsonl`` (``None`` = unset)."""

    at: float
    action: str
    alias: str
    from_version: str | None
    to_version: str | None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(
            f"{kind} name {value!r} is invalid: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )


def _check_alias(alias: str) -> None:
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise ConfigError(
            f"alias {alias!r} is invalid: use 1-32 lowercase letters, digits, '_' or '-', "
            "starting with a letter (e.g. 'champion', 'canary')"
        )
    if _LOOKS_LIKE_VERSION.fullmatch(alias) or alias == LATEST:
        raise ConfigError(
            f"alias {alias!r} would be confused with a version id or the {LATEST!r} ref: "
            "pick another name (e.g. 'canary')"
        )


class ModelRegistry:
    """Versions and aliases of every (model, member) under one :class:`Storage` root.

    Versions are immutable once complete; only aliases move. ``clock`` exists so
    tests can pin ``created_at`` and alias-history timestamps.
    """

    def __init__(self, storage: Storage, *, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._clock = clock

    # ------------------------------------------------------------------ writing

    def register(
        self,
        model: str,
        member: str,
        *,
        files: Mapping[str, bytes],
        metadata: Mapping[str, Any],
        parent_version: str | None = None,
    ) -> VersionInfo:
        """Store ``files`` as the next version of (model, member); it is not promoted.

        Everything is validated before the first write so a bad call leaves no
        directory behind; the manifest goes last so a crash leaves no visible version.
        """
        _check_name("model", model)
        _check_name("member", member)
        blobs = self._check_files(files)
        user_meta = self._check_metadata(metadata)
        if parent_version is not None:
            if not isinstance(parent_version, str) or not _VERSION.fullmatch(parent_version):
                raise ConfigError(
                    f"parent_version {parent_version!r} is not a version id: pass an id such as "
                    "'v0003' (resolve an alias with ModelRegistry.resolve first) or None"
                )
            self._require_complete(model, member, parent_version, ref=parent_version)

        version = self._claim_next_version(model, member)
        base = self._version_key(model, member, version)
        manifest: dict[str, str] = {}
        for name, data in blobs.items():
            self._storage.write_bytes(f"{base}/{name}", data)
            manifest[name] = _sha256(data)
        meta = {
            "version": version,
            "model": model,
            "member": member,
            "created_at": float(self._clock()),
            "parent_version": parent_version,
            "files": {name: {"sha256": manifest[name], "size": len(data)} for name, data in blobs.items()},
            **user_meta,
        }
        meta_bytes = json.dumps(meta, indent=2).encode("utf-8")
        self._storage.write_bytes(f"{base}/{METADATA}", meta_bytes)
        manifest[METADATA] = _sha256(meta_bytes)
        self._storage.write_text(f"{base}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True))
        return self._info_from(json.loads(meta_bytes))

    @staticmethod
    def _check_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
        if not isinstance(files, Mapping) or not files:
            raise ConfigError(f"files must be a non-empty dict of name -> bytes, got {files!r:.80}")
        out: dict[str, bytes] = {}
        for name, data in files.items():
            if not isinstance(name, str) or not _FILE.fullmatch(name):
                raise ConfigError(
                    f"artifact file name {name!r} is invalid: use a plain name of letters, digits, "
                    "'_', '.' or '-' (no '/'), e.g. 'weights.safetensors'"
                )
            if name in (METADATA, MANIFEST):
                raise ConfigError(
                    f"artifact file name {name!r} is reserved by the registry: rename the file "
                    "(pass metadata through the metadata= argument)"
                )
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise ConfigError(
                    f"artifact file {name!r} is a {type(data).__name__}, not bytes: serialise it "
                    "first (e.g. safetensors or JSON encoded to UTF-8)"
                )
            out[name] = bytes(data)
        return out

    @staticmethod
    def _check_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(metadata, Mapping):
            raise ConfigError(f"metadata must be a dict, got {type(metadata).__name__}")
        clash = sorted(set(metadata) & set(_RESERVED_METADATA))
        if clash:
            raise ConfigError(
                f"metadata keys {clash} are set by the registry itself: rename them "
                f"(reserved: {', '.join(_RESERVED_METADATA)})"
            )
        try:
            json.dumps(dict(metadata))
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"metadata is not JSON-serialisable ({exc}): convert values to str/int/float/bool/"
                "list/dict (numpy scalars with .item(), arrays with .tolist())"
            ) from exc
        return dict(metadata)

    def _claim_next_version(self, model: str, member: str) -> str:
        """The next version id, claimed with an exclusive create: a ``raymedic train`` and a retrain job
        registering the same member at once would otherwise both take max+1 and write one version twice."""
        version = self._next_version(model, member)
        for _ in range(CLAIM_TRIES):
            if self._storage.claim(f"{self._version_key(model, member, version)}/{CLAIM}"):
                return version
            version = f"v{int(version[1:]) + 1:04d}"  # another writer took it: the one after
        raise RegistryError(f"could not allocate a version of {model}/{member} in {CLAIM_TRIES} tries: are many "
                            "writers registering it at once? Retry")

    def _next_version(self, model: str, member: str) -> str:
        # Incomplete directories count too: a crashed writer's id is never reused,
        # so a half-written v0004 can never be mistaken for a later, different v0004.
        ids = [int(n[1:]) for n in self._storage.listdir(self._member_key(model, member)) if _VERSION.fullmatch(n)]
        return f"v{max(ids, default=0) + 1:04d}"

    # ------------------------------------------------------------------ reading

    def models(self) -> list[str]:
        """Models with at least one complete version."""
        return [m for m in self._storage.listdir(_ROOT) if _NAME.fullmatch(m) and self.members(m)]

    def members(self, model: str) -> list[str]:
        """Members of ``model`` with at least one complete version."""
        _check_name("model", model)
        names = self._storage.listdir(f"{_ROOT}/{model}")
        return [m for m in names if _NAME.fullmatch(m) and self._complete_ids(model, m)]

    def versions(self, model: str, member: str) -> list[VersionInfo]:
        """Complete versions, oldest first."""
        _check_name("model", model)
        _check_name("member", member)
        return [self._read_info(model, member, v) for v in self._complete_ids(model, member)]

    def latest(self, model: str, member: str) -> VersionInfo | None:
        """The newest complete version, whatever the aliases say; None if there is none.

        A version whose upload did not finish is never returned, so a crashed
        registration cannot be mistaken for the newest model.
        """
        _check_name("model", model)
        _check_name("member", member)
        ids = self._complete_ids(model, member)
        return self._read_info(model, member, ids[-1]) if ids else None

    def info(self, model: str, member: str, ref: str = CHAMPION) -> VersionInfo:
        """Metadata of ``ref`` without reading (or verifying) its artifacts."""
        return self._read_info(model, member, self.resolve(model, member, ref))

    def resolve(self, model: str, member: str, ref: str = CHAMPION) -> str:
        """The version id ``ref`` (an alias, a version id or ``'latest'``) points at."""
        _check_name("model", model)
        _check_name("member", member)
        ids = self._complete_ids(model, member)
        if not ids:
            self._raise_no_member(model, member)
        if ref == LATEST:
            return ids[-1]
        if isinstance(ref, str) and _VERSION.fullmatch(ref):
            return self._require_complete(model, member, ref, ref=ref, ids=ids)
        aliases = self.aliases(model, member)
        if ref not in aliases:
            raise VersionNotFound(
                f"model {model!r} member {member!r} has no alias or version {ref!r}; "
                f"{self._describe(aliases, ids)}. Use one of those, or point the alias with "
                f"`raymedic promote --model {model} --member {member} --version <id>`"
            )
        return self._require_complete(model, member, aliases[ref], ref=ref, ids=ids)

    def load(self, model: str, member: str, ref: str = CHAMPION) -> LoadedVersion:
        """Read every file of ``ref`` and verify it against the manifest.

        Raises IntegrityError on any mismatch or missing file: a replica must fail
        loudly rather than serve a model nobody trained.
        """
        version = self.resolve(model, member, ref)
        base = self._version_key(model, member, version)
        where = f"model {model!r} member {member!r} version {version}"
        fix = (
            "the artifact was modified or corrupted; restore it or roll back with "
            f"`raymedic rollback --model {model} --member {member}`"
        )
        manifest = self._read_manifest(base, where, fix)
        blobs: dict[str, bytes] = {}
        for name, expected in manifest.items():
            key = f"{base}/{name}"
            try:
                data = self._storage.read_bytes(key)
            except OSError as exc:
                if self._storage.exists(key):
                    raise
                raise IntegrityError(f"{where}: file {name!r} listed in {MANIFEST} is missing; {fix}") from exc
            actual = _sha256(data)
            if actual != expected:
                raise IntegrityError(
                    f"{where}: file {name!r} has sha256 {actual[:12]}… but {MANIFEST} expects "
                    f"{expected[:12]}…; {fix}"
                )
            blobs[name] = data
        meta = json.loads(blobs.pop(METADATA))
        recorded = {n: f.get("sha256") for n, f in meta.get("files", {}).items()}
        if recorded != _manifest_files(manifest):
            raise IntegrityError(
                f"{where}: {MANIFEST} lists {sorted(_manifest_files(manifest))} but {METADATA} records "
                f"{sorted(recorded)} with different checksums; {fix}"
            )
        return LoadedVersion(info=self._info_from(meta), files=blobs)

    def _read_manifest(self, base: str, where: str, fix: str) -> dict[str, str]:
        try:
            manifest = json.loads(self._storage.read_text(f"{base}/{MANIFEST}"))
        except ValueError as exc:
            raise IntegrityError(f"{where}: {MANIFEST} is not valid JSON ({exc}); {fix}") from exc
        ok = (
            isinstance(manifest, dict)
            and METADATA in manifest
            and all(isinstance(n, str) and _FILE.fullmatch(n) and isinstance(h, str) for n, h in manifest.items())
        )
        if not ok:
            raise IntegrityError(f"{where}: {MANIFEST} is malformed (expected {{file name: sha256}}); {fix}")
        return manifest

    def _read_info(self, model: str, member: str, version: str) -> VersionInfo:
        key = f"{self._version_key(model, member, version)}/{METADATA}"
        try:
            return self._info_from(json.loads(self._storage.read_text(key)))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"model {model!r} member {member!r} version {version}: {METADATA} is unreadable ({exc}); "
                f"restore it or roll back with `raymedic rollback --model {model} --member {member}`"
            ) from exc

    @staticmethod
    def _info_from(meta: dict[str, Any]) -> VersionInfo:
        return VersionInfo(
            model=meta["model"],
            member=meta["member"],
            version=meta["version"],
            created_at=float(meta["created_at"]),
            parent_version=meta.get("parent_version"),
            metadata=meta,
        )

    # ------------------------------------------------------------------ aliases

    def aliases(self, model: str, member: str) -> dict[str, str]:
        """Current ``{alias: version}``; empty when none was ever set."""
        _check_name("model", model)
        _check_name("member", member)
        key = f"{self._member_key(model, member)}/{_ALIASES}"
        if not self._storage.exists(key):
            return {}
        try:
            data = json.loads(self._storage.read_text(key))
        except ValueError as exc:
            raise RegistryError(
                f"{key} is not valid JSON ({exc}): fix or delete it, then set the aliases again with "
                f"`raymedic promote --model {model} --member {member} --version <id>`"
            ) from exc
        return dict(data)

    def set_alias(self, model: str, member: str, alias: str, version: str) -> dict[str, str]:
        """Point ``alias`` at ``version`` (any ref; it must resolve to a complete version)."""
        _check_alias(alias)
        target = self.resolve(model, member, version)
        aliases = self.aliases(model, member)
        return self._move(model, member, aliases, {alias: target}, action="set_alias")

    def promote(self, model: str, member: str, version: str) -> dict[str, str]:
        """Make ``version`` the champion; the old champion becomes ``previous``.

        Idempotent: promoting the current champion changes nothing, so a retried
        promotion never overwrites ``previous`` with the champion itself.
        """
        target = self.resolve(model, member, version)
        aliases = self.aliases(model, member)
        current = aliases.get(CHAMPION)
        if current == target:
            return aliases
        moves: dict[str, str | None] = {CHAMPION: target}
        if current is not None:
            moves[PREVIOUS] = current
        return self._move(model, member, aliases, moves, action="promote")

    def rollback(self, model: str, member: str) -> dict[str, str]:
        """Swap ``champion`` and ``previous``, so a second rollback undoes the first."""
        aliases = self.aliases(model, member)
        previous = aliases.get(PREVIOUS)
        if previous is None:
            raise RegistryError(
                f"model {model!r} member {member!r} has no {PREVIOUS!r} version to roll back to "
                f"(aliases: {aliases or 'none'}); promote a specific version instead with "
                f"`raymedic promote --model {model} --member {member} --version <id>`"
            )
        self._require_complete(model, member, previous, ref=PREVIOUS)
        moves: dict[str, str | None] = {CHAMPION: previous, PREVIOUS: aliases.get(CHAMPION)}
        return self._move(model, member, aliases, moves, action="rollback")

    def demote(self, model: str, member: str, to_version: str, *, action: str = "probation-failed"
               ) -> dict[str, str]:
        """Make ``to_version`` the champion because the champion failed: the failed one becomes ``previous``
        (``raymedic rollback`` can still bring it back) and the move is recorded under ``action``, so the
        alias history says for good which version failed (a later rollback never picks it).

        Idempotent: when ``to_version`` is the champion already, nothing moves."""
        target = self.resolve(model, member, to_version)
        aliases = self.aliases(model, member)
        current = aliases.get(CHAMPION)
        if current == target:
            return aliases
        moves: dict[str, str | None] = {CHAMPION: target, PREVIOUS: current}
        return self._move(model, member, aliases, moves, action=action)

    def alias_history(self, model: str, member: str) -> list[AliasMove]:
        """Every recorded alias move, oldest first."""
        _check_name("model", model)
        _check_name("member", member)
        key = f"{self._member_key(model, member)}/{_HISTORY}"
        if not self._storage.exists(key):
            return []
        return [AliasMove(**json.loads(line)) for line in self._storage.read_text(key).splitlines() if line.strip()]

    def _move(
        self,
        model: str,
        member: str,
        aliases: dict[str, str],
        moves: Mapping[str, str | None],
        *,
        action: str,
    ) -> dict[str, str]:
        # aliases.json is the truth and is replaced atomically first; the history is
        # an audit trail rewritten whole afterwards (Storage has no append and the
        # file stays small), so a crash in between can lose a history line, never a move.
        now = float(self._clock())
        new = dict(aliases)
        events = []
        for alias, target in moves.items():
            old = new.get(alias)
            if old == target:
                continue
            if target is None:
                new.pop(alias, None)
            else:
                new[alias] = target
            events.append(AliasMove(at=now, action=action, alias=alias, from_version=old, to_version=target))
        if not events:
            return new
        base = self._member_key(model, member)
        self._storage.write_text(f"{base}/{_ALIASES}", json.dumps(new, indent=2, sort_keys=True))
        key = f"{base}/{_HISTORY}"
        history = self._storage.read_text(key) if self._storage.exists(key) else ""
        lines = "".join(json.dumps(asdict(e)) + "\n" for e in events)
        self._storage.write_text(key, history + lines)
        return new

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _member_key(model: str, member: str) -> str:
        return f"{_ROOT}/{model}/{member}"

    def _version_key(self, model: str, member: str, version: str) -> str:
        return f"{self._member_key(model, member)}/{version}"

    def _complete_ids(self, model: str, member: str) -> list[str]:
        # One recursive listing instead of an exists() per version: cheap on object stores.
        prefix = self._member_key(model, member) + "/"
        ids = set()
        for key in self._storage.list_files(prefix, suffix=f"/{MANIFEST}"):
            parts = key[len(prefix):].split("/") if key.startswith(prefix) else []
            if len(parts) == 2 and _VERSION.fullmatch(parts[0]):
                ids.add(parts[0])
        return sorted(ids, key=lambda v: int(v[1:]))

    def _require_complete(
        self,
        model: str,
        member: str,
        version: str,
        *,
        ref: str,
        ids: list[str] | None = None,
    ) -> str:
        ids = self._complete_ids(model, member) if ids is None else ids
        if version in ids:
            return version
        incomplete = self._storage.exists(self._version_key(model, member, version))
        why = "is incomplete (its writer never finished)" if incomplete else "does not exist"
        via = "" if ref == version else f" (alias {ref!r})"
        raise VersionNotFound(
            f"model {model!r} member {member!r} version {version}{via} {why}; "
            f"{self._describe(self.aliases(model, member), ids)}. Use one of those"
            + (f", or repoint {ref!r} with `raymedic promote`/`raymedic rollback`" if via else "")
        )

    def _raise_no_member(self, model: str, member: str) -> None:
        members = self.members(model)
        if members:
            raise VersionNotFound(
                f"model {model!r} has no registered member {member!r}; members: {', '.join(members)}. "
                "Use one of those or train the member with `raymedic train`"
            )
        models = self.models()
        raise VersionNotFound(
            f"no model {model!r} in the registry at {self._storage.uri}; models: "
            f"{', '.join(models) if models else 'none'}. Check the name or train it with `raymedic train`"
        )

    @staticmethod
    def _describe(aliases: Mapping[str, str], ids: list[str]) -> str:
        shown = ", ".join(f"{a}→{v}" for a, v in sorted(aliases.items())) or "none"
        recent = ", ".join(ids[-_SHOWN_VERSIONS:]) or "none"
        more = f" (latest {_SHOWN_VERSIONS} of {len(ids)})" if len(ids) > _SHOWN_VERSIONS else ""
        return f"aliases: {shown}; versions{more}: {recent}"


def _manifest_files(manifest: Mapping[str, str]) -> dict[str, str]:
    """The artifact entries of a manifest (everything but ``metadata.json``)."""
    return {n: h for n, h in manifest.items() if n != METADATA}
