"""The per-release registry (``adapters/`` by default).

Layout::

    adapters/
      LATEST                  # text: the release `latest` points to
      v1/  manifest.json  labels.json  adapter_model.safetensors  adapter_config.json
           head.safetensors  replay.json
      v2/  ...

A release is written into a staging folder on the same filesystem, every file is fsynced,
``manifest.json`` (with the sha256 of every other file) is written last, and the folder is
renamed into place under a file lock that also allocates the id, so ids are never reused and a
killed run leaves no partial release. ``LATEST`` moves by atomic replace. A release never changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from intent_ci.config import NAME_PATTERN
from intent_ci.errors import IntentCIError, ReleaseVerificationError

MANIFEST = "manifest.json"
LATEST = "LATEST"
HIGH_WATER = ".last-release"
STAGING_PREFIX = ".staging-"
RELEASE_ID = re.compile(r"^v([1-9][0-9]{0,8})$")
RESERVED = {"latest", "staging", "lock"}
MANIFEST_FORMAT = 1
LOCK_TIMEOUT_S = 600.0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_release_name(name: str) -> str:
    """Release names follow the intent-name rule and are not reserved words.

    Raises:
        IntentCIError: for path separators, traversal, reserved words or bad characters.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in RESERVED:
        raise IntentCIError(
            f"invalid release name {name!r}; expected e.g. v3 (lowercase letters, digits, '_' or '-', "
            "at most 64 characters, not a reserved word)"
        )
    return name


class Registry:
    """A folder of immutable releases with a `latest` pointer."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- reading -------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.root.is_dir()

    def releases(self) -> list[str]:
        """Complete releases (folders named ``vN`` with a manifest), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = RELEASE_ID.match(entry.name)
            if match and entry.is_dir() and not entry.is_symlink() and (entry / MANIFEST).is_file():
                found.append((int(match.group(1)), entry.name))
        return [name for _, name in sorted(found)]

    def latest(self) -> str | None:
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        if name not in self.releases():
            raise ReleaseVerificationError(
                f"{pointer}: points to {name!r}, which is not a complete release in {self.root}; "
                f"releases: {', '.join(self.releases()) or 'none'}"
            )
        return name

    def resolve(self, ref: str) -> str:
        """Turn ``latest`` or a release name into an existing release name.

        Raises:
            IntentCIError: if the registry is empty or the release does not exist.
        """
        if not self.root.is_dir():
            raise IntentCIError(
                f"no registry at {self.root}; create one with `intent-ci init --registry {self.root}`"
            )
        if ref == "latest":
            latest = self.latest()
            if latest is None:
                raise IntentCIError(
                    f"registry {self.root} has no releases yet; run `intent-ci init` first"
                )
            return latest
        check_release_name(ref)
        if ref not in self.releases():
            raise IntentCIError(
                f"unknown release {ref!r} in {self.root}; releases: {', '.join(self.releases()) or 'none'}"
            )
        return ref

    def path(self, release: str) -> Path:
        return self.root / check_release_name(release)

    def manifest(self, release: str) -> dict[str, Any]:
        """The release's manifest, parsed and shape-checked.

        Raises:
            ReleaseVerificationError: if it is missing, not JSON or lacks required fields.
        """
        path = self.path(release) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReleaseVerificationError(
                f"{path}: missing; {release} is not a complete release"
            ) from None
        except (UnicodeDecodeError, ValueError) as err:
            raise ReleaseVerificationError(f"{path}: not valid JSON ({err})") from None
        required = {
            "format": int,
            "release": str,
            "intents": list,
            "files": dict,
            "backbone": dict,
            "config": dict,
        }
        if not isinstance(data, dict):
            raise ReleaseVerificationError(f"{path}: expected a JSON object")
        for key, kind in required.items():
            if not isinstance(data.get(key), kind):
                raise ReleaseVerificationError(
                    f"{path}: field `{key}` missing or not a {kind.__name__}"
                )
        if data["release"] != release:
            raise ReleaseVerificationError(
                f"{path}: names release {data['release']!r} but sits in folder {release!r}"
            )
        if data["format"] != MANIFEST_FORMAT:
            raise ReleaseVerificationError(
                f"{path}: format {data['format']} is not supported (expected {MANIFEST_FORMAT})"
            )
        return data

    def verify(self, release: str) -> dict[str, Any]:
        """Re-hash every file of a release against its manifest; return the manifest.

        Raises:
            ReleaseVerificationError: naming the first missing, extra or altered file.
        """
        manifest = self.manifest(release)
        folder = self.path(release)
        if folder.is_symlink():
            raise ReleaseVerificationError(f"{folder}: is a symlink; releases must be real folders")
        present = {p.name for p in folder.iterdir()} - {MANIFEST}
        expected = set(manifest["files"])
        for name in sorted(expected - present):
            raise ReleaseVerificationError(f"{folder / name}: listed in the manifest but missing")
        for name in sorted(present - expected):
            raise ReleaseVerificationError(
                f"{folder / name}: not listed in the manifest; releases never change"
            )
        for name, meta in sorted(manifest["files"].items()):
            file = folder / name
            if file.is_symlink() or not file.is_file():
                raise ReleaseVerificationError(
                    f"{file}: must be a regular file, not a link or folder"
                )
            actual = sha256_file(file)
            if actual != meta.get("sha256"):
                raise ReleaseVerificationError(
                    f"{file}: sha256 {actual[:12]}… does not match the manifest's {str(meta.get('sha256'))[:12]}…; "
                    "the release was altered or damaged"
                )
        return manifest

    # ---- writing -------------------------------------------------------------------------
    def _lock(self) -> FileLock:
        return FileLock(str(self.root / ".lock"), timeout=LOCK_TIMEOUT_S)

    def stale_staging(self) -> list[Path]:
        """Staging folders left by runs that are no longer alive (never loaded)."""
        if not self.root.is_dir():
            return []
        stale = []
        for entry in self.root.iterdir():
            if not entry.name.startswith(STAGING_PREFIX):
                continue
            pid = entry.name[len(STAGING_PREFIX) :].split("-", 1)[0]
            if not pid.isdigit() or not _alive(int(pid)):
                stale.append(entry)
        return stale

    def clean_stale_staging(self) -> list[str]:
        removed = []
        for entry in self.stale_staging():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        return removed

    @contextlib.contextmanager
    def stage(self) -> Iterator[Path]:
        """A private staging folder inside the registry; removed if the block fails."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        try:
            yield staging
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def commit(self, staging: Path, manifest: dict[str, Any]) -> str:
        """Allocate the next id, write the manifest last, rename into place, move `latest`.

        Raises:
            IntentCIError: if the lock cannot be taken in time.
        """
        for file in sorted(staging.iterdir()):
            _fsync_file(file)
        files = {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(staging.iterdir())
        }
        try:
            with self._lock():
                # The high-water mark remembers ids of releases deleted by hand, and incomplete
                # folders are skipped too, so a number is never handed out twice.
                taken = {
                    int(m.group(1)) for e in self.root.iterdir() if (m := RELEASE_ID.match(e.name))
                }
                release = f"v{max(max(taken, default=0), self._high_water()) + 1}"
                self._write_small(self.root / HIGH_WATER, release + "\n")
                final = dict(manifest, format=MANIFEST_FORMAT, release=release, files=files)
                final.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                manifest_path = staging / MANIFEST
                manifest_path.write_text(
                    json.dumps(final, indent=2, sort_keys=False) + "\n", encoding="utf-8"
                )
                _fsync_file(manifest_path)
                _fsync_dir(staging)
                os.rename(staging, self.root / release)
                self._point_latest(release)
                _fsync_dir(self.root)
        except Timeout:
            raise IntentCIError(
                f"{self.root}: another intent-ci run holds the registry lock for over {LOCK_TIMEOUT_S:.0f}s"
            ) from None
        return release

    def adopt(self, folder: Path, *, latest: bool = False) -> bool:
        """Move a complete release made elsewhere (e.g. pulled from the Hub) in under its own id.

        `folder` is named after the release (``v3``) and holds its files and manifest; it should
        sit in a staging folder of this registry, so that moving it in is one rename. Its files
        are verified against its manifest first, and its parent must already be here, so lineage
        stays whole (adopt ancestors oldest first).

        Args:
            folder: the release folder to move in; left in place when nothing is moved.
            latest: move ``LATEST`` to this release if there is none yet or it names an older one.

        Returns:
            True if the release was moved in; False if this registry already holds it,
            byte-identical (a no-op).

        Raises:
            ReleaseVerificationError: if `folder` fails verification.
            IntentCIError: if the id is taken by a different release, the parent is missing,
                or the lock cannot be taken in time.
        """
        release = folder.name
        if not RELEASE_ID.match(release):
            raise IntentCIError(f"{folder}: release folders are named v1, v2, …; got {release!r}")
        manifest = Registry(folder.parent).verify(release)
        digest = sha256_file(folder / MANIFEST)
        for file in folder.iterdir():
            _fsync_file(file)
        _fsync_dir(folder)
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / release
        try:
            with self._lock():
                if target.exists() or target.is_symlink():
                    same = (target / MANIFEST).is_file() and sha256_file(
                        target / MANIFEST
                    ) == digest
                    if not same:
                        raise IntentCIError(
                            f"{target}: already holds a different release {release}; a release is "
                            "never overwritten (pull into another --registry)"
                        )
                    self.verify(release)
                    moved = False
                else:
                    parent = manifest.get("parent")
                    if parent is not None and parent not in self.releases():
                        raise IntentCIError(
                            f"{folder / MANIFEST}: parent {parent} of {release} is not in {self.root}; "
                            "adopt the ancestors first, oldest first"
                        )
                    os.rename(folder, target)
                    if int(release[1:]) > self._high_water():
                        self._write_small(self.root / HIGH_WATER, release + "\n")
                    moved = True
                if latest:
                    current = self.latest()
                    if current is None or int(current[1:]) < int(release[1:]):
                        self._point_latest(release)
                _fsync_dir(self.root)
        except Timeout:
            raise IntentCIError(
                f"{self.root}: another intent-ci run holds the registry lock for over {LOCK_TIMEOUT_S:.0f}s"
            ) from None
        return moved

    def _high_water(self) -> int:
        try:
            match = RELEASE_ID.match((self.root / HIGH_WATER).read_text(encoding="utf-8").strip())
        except OSError:
            return 0
        return int(match.group(1)) if match else 0

    def _write_small(self, path: Path, text: str) -> None:
        """Write a small file by atomic replace (fsynced temp file, then rename)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        _fsync_file(tmp)
        os.replace(tmp, path)

    def _point_latest(self, release: str) -> None:
        self._write_small(self.root / LATEST, release + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
