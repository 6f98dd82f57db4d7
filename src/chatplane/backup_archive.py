"""The backup archive: one uncompressed tar whose first member is `manifest.json`.

The manifest names every other member with its size and sha256, so a restore can prove the
whole archive intact (no flipped byte, no truncation, nothing added) before it touches
anything. Members are written and read by this module only; a restore never lets `tarfile`
extract, so links, devices and paths outside the staging directory cannot occur.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from chatplane.errors import ChatplaneError

FORMAT = "chatplane-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".tar"
_CHUNK = 1024 * 1024


class BackupError(ChatplaneError):
    code = "backup_failed"
    status = 400
    title = "The backup or restore failed"


class ArchiveDamaged(BackupError):
    code = "backup_archive_damaged"
    title = "The archive is damaged"


@dataclass(frozen=True)
class ArchivedFile:
    name: str  # POSIX path inside the archive
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    shape: str  # "embedded" (SQLite) or "scaled" (Postgres)
    schema_revision: str
    chatplane_version: str
    created_at: datetime
    # Which database it came from (no secrets): retention prunes only its own archives.
    source: str
    files: tuple[ArchivedFile, ...] = field(default=())
    format_version: int = FORMAT_VERSION

    def to_json(self) -> bytes:
        body = {
            "format": FORMAT,
            "format_version": self.format_version,
            "chatplane_version": self.chatplane_version,
            "created_at": self.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "shape": self.shape,
            "schema_revision": self.schema_revision,
            "source": self.source,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(body, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            body = json.loads(raw)
            if not isinstance(body, dict) or body.get("format") != FORMAT:
                raise ArchiveDamaged("not a chatplane backup (its manifest is not ours)")
            version = int(body["format_version"])
            if version > FORMAT_VERSION:
                raise BackupError(
                    f"the archive has format version {version}; this chatplane reads up to "
                    f"{FORMAT_VERSION}: restore it with a newer chatplane"
                )
            files = tuple(
                ArchivedFile(
                    name=_safe_name(str(f["name"])), size=int(f["size"]), sha256=f["sha256"]
                )
                for f in body["files"]
            )
            return cls(
                shape=str(body["shape"]),
                schema_revision=str(body["schema_revision"]),
                chatplane_version=str(body["chatplane_version"]),
                created_at=datetime.fromisoformat(str(body["created_at"]).replace("Z", "+00:00")),
                source=str(body.get("source", "")),
                files=files,
                format_version=version,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveDamaged(f"the archive's manifest is unreadable ({exc})") from exc


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or name == MANIFEST:
        raise ArchiveDamaged(f"the archive names a file outside its tree: {name!r}")
    return str(path)


def hash_file(path: Path) -> ArchivedFile:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return ArchivedFile(name="", size=size, sha256=digest.hexdigest())


def write_archive(destination: Path, manifest: Manifest, sources: dict[str, Path]) -> None:
    """Write the archive next to `destination`, flush it to disk, then rename it into place:
    a crash never leaves a half-written file under the final name."""
    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    try:
        with (
            partial.open("wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            body = manifest.to_json()
            tar.addfile(_member(MANIFEST, len(body), manifest.created_at), io.BytesIO(body))
            for item in manifest.files:
                with sources[item.name].open("rb") as handle:
                    tar.addfile(_member(item.name, item.size, manifest.created_at), handle)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, destination)
        fsync_dir(destination.parent)
    finally:
        partial.unlink(missing_ok=True)


def _member(name: str, size: int, when: datetime) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(when.timestamp())
    return info


def read_manifest(path: Path) -> Manifest:
    """The manifest only (the first member): cheap, and checks nothing else."""
    with _open(path) as tar:
        return _first_manifest(tar)


def verify_and_extract(path: Path, staging: Path) -> tuple[Manifest, dict[str, Path]]:
    """Check every member against the manifest while copying it into `staging`.

    Returns the manifest and where each file landed. Raises `ArchiveDamaged` on any
    difference: a checksum or size, a member missing, added or repeated, a truncated tar."""
    extracted: dict[str, Path] = {}
    with _open(path) as tar:
        manifest = _first_manifest(tar)
        expected = {f.name: f for f in manifest.files}
        for member in _members(tar):
            name = member.name
            if name not in expected or name in extracted:
                raise ArchiveDamaged(f"the archive holds an unexpected member {name!r}")
            if not member.isreg():
                raise ArchiveDamaged(f"the archive member {name!r} is not a regular file")
            target = staging / "files" / _safe_name(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is None:  # pragma: no cover - isreg() members always have data
                raise ArchiveDamaged(f"cannot read {name!r}")
            got = _copy_hashing(source, target)
            want = expected[name]
            if got.size != want.size or got.sha256 != want.sha256:
                raise ArchiveDamaged(f"{name} does not match its checksum: the archive is damaged")
            extracted[name] = target
        missing = sorted(set(expected) - set(extracted))
        if missing:
            raise ArchiveDamaged(f"the archive is truncated: {', '.join(missing)} missing")
    return manifest, extracted


def _copy_hashing(source: IO[bytes], target: Path) -> ArchivedFile:
    digest = hashlib.sha256()
    size = 0
    try:
        with target.open("wb") as out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise ArchiveDamaged(f"the archive is truncated or damaged ({exc})") from exc
    return ArchivedFile(name=target.name, size=size, sha256=digest.hexdigest())


class _open:
    """`tarfile.open` whose failures read as a damaged archive."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> tarfile.TarFile:
        try:
            self.tar = tarfile.open(self.path, mode="r:")
        except FileNotFoundError as exc:
            raise BackupError(f"no archive at {self.path}") from exc
        except (tarfile.TarError, EOFError) as exc:
            raise ArchiveDamaged(f"{self.path} is not a readable tar archive ({exc})") from exc
        return self.tar

    def __exit__(self, *_: Any) -> None:
        self.tar.close()


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        try:
            member = tar.next()
        except (tarfile.TarError, EOFError) as exc:
            raise ArchiveDamaged(f"the archive is truncated or damaged ({exc})") from exc
        if member is None:
            return
        yield member


def _first_manifest(tar: tarfile.TarFile) -> Manifest:
    first = next(_members(tar), None)
    if first is None or first.name != MANIFEST or not first.isreg():
        raise ArchiveDamaged("not a chatplane backup: manifest.json is not its first member")
    handle = tar.extractfile(first)
    if handle is None:  # pragma: no cover
        raise ArchiveDamaged("the manifest is unreadable")
    try:
        raw = handle.read()
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveDamaged(f"the archive is truncated ({exc})") from exc
    return Manifest.from_json(raw)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
