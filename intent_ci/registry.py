"""The per-release registry (``adapters/`` by default).

Layout::

    adapters/
      LATEST                  # text: the release `latest` points to
      ALIASES.json            # named pointers set by hand: {"production": "v3", ...}
      HISTORY.jsonl           # append-only log of every move of LATEST and of every alias
      .last-release           # high-water mark: the highest id ever handed out
      .lock                   # the file lock that serialises commits and LATEST moves
      v1/  manifest.json  labels.json  adapter_model.safetensors  adapter_config.json
           head.safetensors  replay.json  calibration.json
      v2/  ...

Guarantees, and how they are kept:

* **Atomic release.** A release is written into a staging folder inside the registry (same
  filesystem), every file is fsynced, ``manifest.json`` (with the sha256 and size of every other
  file) is written last, the folder is renamed into place and ``LATEST`` moves by atomic replace.
  A killed run leaves at most a staging folder or a ``.tmp-`` file tagged with its pid; the
  next write removes them, ``verify`` reports them, and nothing ever loads them.
* **Ids never reused.** The id is allocated under a file lock from the largest of the existing
  folders and the high-water mark, which is written before the folder appears. A release
  folder is never overwritten.
* **Concurrency policy.** Two ``add-intent`` runs at once both train; each takes the lock only to
  commit, so they commit one after the other, get distinct ids, and ``LATEST`` ends on the one
  that committed last. A run waits for the lock at most ``RegistryConfig.lock_timeout_s``
  seconds and then stops with an error; its staging folder is removed and nothing is committed.
* **No lost updates.** A run remembers ``LATEST`` when it starts. If another run moved
  ``LATEST`` before this one commits, its release is still written but ``LATEST`` stays where
  the other run put it, and :class:`~intent_ci.errors.LatestMovedError` names that release: two
  runs from one parent can never both succeed while ``LATEST`` lacks one's intents.
* **Aliases.** ``ALIASES.json`` maps names such as ``production`` to release ids. Only
  ``alias set`` / ``alias delete`` move them (atomic replace under the lock, logged); releases,
  ``rollback`` and ``pull`` move ``LATEST`` only. `Registry.resolve` accepts an alias wherever
  a release is taken.
* **Verification.** :meth:`Registry.integrity_problems` re-hashes files against the manifest;
  :meth:`Registry.lineage_problems` checks parents, cycles, label-map growth and backbone
  consistency from the manifests alone. Names (CLI arguments, the manifest's ``parent``, the
  content of ``LATEST``) are checked before any file is touched.

The registry is format-agnostic: which files a release holds is decided by
:mod:`intent_ci.release`; this module only stages, hashes, commits and checks them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from intent_ci.config import NAME_PATTERN, RegistryConfig
from intent_ci.errors import IntentCIError, LatestMovedError, ReleaseVerificationError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "LATEST"
ALIASES = "ALIASES.json"
HISTORY = "HISTORY.jsonl"
HIGH_WATER = ".last-release"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
TMP_PREFIX = ".tmp-"
RELEASE_ID = re.compile(r"^v([1-9][0-9]{0,8})$")
WINDOWS_DEVICES = {"con", "prn", "aux", "nul"} | {
    f"{d}{i}" for d in ("com", "lpt") for i in range(10)
}
RESERVED = {"latest", "staging", "lock", "history", "manifest"} | WINDOWS_DEVICES
"""Names that are never release names: pointers, registry files and Windows device names."""
ALIAS_RESERVED = RESERVED | {"main", "aliases"}
"""Never alias names either: ``main`` is the Hub branch that alias tags would clash with."""
MANIFEST_FORMAT = 1
LOCK_TIMEOUT_S = RegistryConfig().lock_timeout_s
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MAX_POINTER_BYTES = 256
_MAX_ALIASES_BYTES = 1 << 20
_ANY_LATEST = object()
"""`Registry.commit`'s default ``expect_latest``: move ``LATEST`` whatever it points to."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def no_registry(root: Path, hint: str) -> IntentCIError:
    """The error for a --registry path that holds no registry: a file there is named as such
    (`intent-ci init` would refuse it too), a missing folder gets `hint`."""
    if root.exists() and not root.is_dir():
        return IntentCIError(
            f"{root}: is a file, not a registry folder; pass --registry with the registry's folder"
        )
    return IntentCIError(f"no registry at {root}; {hint}")


def describe_os_error(err: BaseException) -> str:
    """A short reason for a failed write: ``No space left on device`` rather than a repr.

    Works for `OSError` and for libraries (safetensors) that only report ``os error 28``.
    """
    if isinstance(err, OSError) and err.errno is not None:
        return os.strerror(err.errno)
    match = re.search(r"os error (\d+)", str(err))
    if match:
        return os.strerror(int(match.group(1)))
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_release_name(name: Any, where: str = "") -> str:
    """Release names follow the intent-name rule and are not reserved words.

    Args:
        name: the name to check (from the command line, a manifest or ``LATEST``).
        where: prefix naming where the name came from, e.g. ``"adapters/v2/manifest.json:
            field `parent`: "``.

    Raises:
        IntentCIError: for path separators, traversal, absolute paths, reserved words or bad
            characters, before any file is touched.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in RESERVED:
        raise IntentCIError(
            f"{where}invalid release name {name!r}; expected e.g. v3 (lowercase letters, digits, '_' or '-', "
            "at most 64 characters, not a reserved word)"
        )
    return name


def check_alias_name(name: Any, where: str = "") -> str:
    """Alias names follow the release-name rule, and can never be taken for a release id.

    Args:
        name: the alias (from the command line or ``ALIASES.json``).
        where: prefix naming where the name came from.

    Raises:
        IntentCIError: for a bad name, a reserved word (``latest``, ...) or a name of the form
            ``vN``, which would shadow a release id.
    """
    if isinstance(name, str) and re.match(r"^v[0-9]+$", name):
        raise IntentCIError(
            f"{where}alias {name!r} looks like a release id (v1, v2, …) and would shadow one; "
            "choose a name such as production or staging-eu"
        )
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or name in ALIAS_RESERVED:
        raise IntentCIError(
            f"{where}invalid alias {name!r}; expected e.g. production (lowercase letters, digits, "
            f"'_' or '-', at most 64 characters, not a reserved word: {', '.join(sorted(ALIAS_RESERVED - WINDOWS_DEVICES))})"
        )
    return name


def owner_alive(entry_name: str, prefix: str) -> bool:
    """Whether the process whose id follows `prefix` in `entry_name` (``<prefix><pid>-...``)
    is still running; a name without a process id has no live owner."""
    pid = entry_name[len(prefix) :].split("-", 1)[0]
    return pid.isdigit() and _alive(int(pid))


class Registry:
    """A folder of immutable releases with a `latest` pointer.

    Args:
        root: the registry folder (created on the first commit).
        config: lock timeout and other commit settings.
    """

    def __init__(self, root: str | Path, config: RegistryConfig | None = None) -> None:
        self.root = Path(root)
        self.config = config or RegistryConfig()

    # ---- reading -------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.root.is_dir()

    def releases(self) -> list[str]:
        """Complete releases (real folders named ``vN`` with a manifest), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = RELEASE_ID.match(entry.name)
            if match and entry.is_dir() and not entry.is_symlink() and (entry / MANIFEST).is_file():
                found.append((int(match.group(1)), entry.name))
        return [name for _, name in sorted(found)]

    def latest(self) -> str | None:
        """The release ``LATEST`` points to, or None before the first release.

        Raises:
            ReleaseVerificationError: if ``LATEST`` is a link or not a file, is not a release
                name, or names a release that is not complete.
        """
        pointer = self.root / LATEST
        if pointer.is_symlink():
            raise ReleaseVerificationError(
                f"{pointer}: is a symbolic link; LATEST must be a regular file inside the registry"
            )
        if not pointer.is_file():
            if pointer.exists():
                raise ReleaseVerificationError(
                    f"{pointer}: is not a file; LATEST must be a file holding a release name such "
                    "as v3. Remove it, then point it with `intent-ci rollback RELEASE`"
                )
            return None
        with pointer.open("rb") as handle:
            raw = handle.read(_MAX_POINTER_BYTES + 1)
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            name = None
        if name is None or len(raw) > _MAX_POINTER_BYTES:
            raise ReleaseVerificationError(
                f"{pointer}: expected a release name such as v3, got {len(raw)} bytes that are not one"
            )
        try:
            check_release_name(name, f"{pointer}: ")
        except IntentCIError as err:
            raise ReleaseVerificationError(str(err)) from None
        if name not in self.releases():
            raise ReleaseVerificationError(
                f"{pointer}: points to {name!r}, which is not a complete release in {self.root}; "
                f"releases: {', '.join(self.releases()) or 'none'}"
            )
        return name

    def _latest_missing(self) -> str | None:
        """Why ``LATEST`` is absent although the registry has releases (a run killed between
        committing its first release and pointing LATEST at it, or a hand edit); None otherwise."""
        releases = self.releases()
        if not releases or (self.root / LATEST).exists():
            return None
        return (
            f"{self.root / LATEST}: missing, though {self.root} has releases "
            f"({', '.join(releases)}); point it at one with `intent-ci rollback {releases[-1]}`"
        )

    def aliases(self) -> dict[str, str]:
        """The aliases in ``ALIASES.json`` (alias -> release id), sorted by name; {} if none.

        Raises:
            ReleaseVerificationError: if the file is a link, not a JSON object of valid alias
                names to release ids, or too large.
        """
        path = self.root / ALIASES
        if path.is_symlink():
            raise ReleaseVerificationError(
                f"{path}: is a symbolic link; {ALIASES} must be a regular file inside the registry"
            )
        if not path.is_file():
            return {}
        with path.open("rb") as handle:
            raw = handle.read(_MAX_ALIASES_BYTES + 1)
        try:
            data = json.loads(raw.decode("utf-8")) if len(raw) <= _MAX_ALIASES_BYTES else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            raise ReleaseVerificationError(
                f"{path}: expected a JSON object of aliases to release ids, e.g. "
                '{"production": "v3"}; repair or remove it by hand (HISTORY.jsonl records every '
                "alias move), then check with `intent-ci verify --all`"
            )
        for alias, release in data.items():
            try:
                check_alias_name(alias, f"{path}: ")
                if not isinstance(release, str) or not RELEASE_ID.match(release):
                    raise IntentCIError(
                        f"{path}: alias {alias!r} points to {release!r}; expected a release id such as v3"
                    )
            except IntentCIError as err:
                raise ReleaseVerificationError(str(err)) from None
        return dict(sorted(data.items()))

    def resolve(self, ref: str) -> str:
        """Turn ``latest``, an alias or a release name into an existing release name.

        The name is checked before the registry folder is looked at. An alias is resolved
        through ``ALIASES.json``; a name of the form ``vN`` is always a release id.

        Raises:
            IntentCIError: for an invalid name, an empty registry, a missing release or an
                alias that points to a release that is not there.
        """
        if ref != "latest":
            check_release_name(ref)
        if not self.root.is_dir():
            raise no_registry(self.root, f"create one with `intent-ci init --registry {self.root}`")
        if ref == "latest":
            latest = self.latest()
            if latest is None and (missing := self._latest_missing()):
                raise ReleaseVerificationError(missing)
            if latest is None:
                raise IntentCIError(
                    f"registry {self.root} has no releases yet; run `intent-ci init` first"
                )
            return latest
        releases = self.releases()
        if RELEASE_ID.match(ref):
            if ref not in releases:
                raise IntentCIError(
                    f"unknown release {ref!r} in {self.root}; releases: {', '.join(releases) or 'none'}"
                )
            return ref
        aliases = self.aliases()
        if ref in aliases:
            if aliases[ref] not in releases:
                raise ReleaseVerificationError(
                    f"{self.root / ALIASES}: alias {ref!r} points to {aliases[ref]!r}, which is not a "
                    f"complete release in {self.root}; move it with `intent-ci alias set {ref} RELEASE`"
                )
            return aliases[ref]
        raise IntentCIError(
            f"unknown release or alias {ref!r} in {self.root}; releases: {', '.join(releases) or 'none'}"
            f"; aliases: {', '.join(aliases) or 'none'}"
        )

    def path(self, release: str) -> Path:
        return self.root / check_release_name(release)

    def manifest(self, release: str) -> dict[str, Any]:
        """The release's manifest, parsed and shape-checked.

        Raises:
            ReleaseVerificationError: if it is missing, not JSON, or a field has the wrong shape
                (each message names the file and the field).
        """
        path = self.path(release) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReleaseVerificationError(
                f"{path}: missing; {release} is not a complete release"
            ) from None
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise ReleaseVerificationError(f"{path}: not valid JSON ({err})") from None
        check_manifest(data, path)
        if data["release"] != release:
            raise ReleaseVerificationError(
                f"{path}: names release {data['release']!r} but sits in folder {release!r}"
            )
        return data

    def integrity_problems(self, release: str) -> list[str]:
        """Every way the release's files differ from its manifest (empty when intact).

        Checks, in order: the manifest itself, missing files, unlisted files, then per file:
        a regular file (no links), the recorded size, the recorded sha256.
        """
        try:
            manifest = self.manifest(release)
        except IntentCIError as err:
            return [str(err)]
        folder = self.path(release)
        if folder.is_symlink():
            return [f"{folder}: is a symlink; releases must be real folders inside the registry"]
        problems = []
        present = {p.name for p in folder.iterdir()} - {MANIFEST}
        expected = set(manifest["files"])
        for name in sorted(expected - present):
            problems.append(f"{folder / name}: listed in the manifest but missing")
        for name in sorted(present - expected):
            problems.append(f"{folder / name}: not listed in the manifest; releases never change")
        for name, meta in sorted(manifest["files"].items()):
            file = folder / name
            if name not in present:
                continue
            if file.is_symlink() or not file.is_file():
                problems.append(f"{file}: must be a regular file, not a link or folder")
                continue
            size, actual = file.stat().st_size, sha256_file(file)
            if actual == meta["sha256"] and size == meta["bytes"]:
                continue
            mismatch = f"{file}: sha256 {actual[:12]}… does not match the manifest's {meta['sha256'][:12]}…; "
            if size != meta["bytes"]:
                problems.append(
                    mismatch + f"{size} bytes where the manifest records {meta['bytes']}: the file "
                    "is truncated or was altered (an interrupted download or copy?)"
                )
            else:
                problems.append(mismatch + "the release was altered or damaged")
        return problems

    def verify(self, release: str) -> dict[str, Any]:
        """Re-hash every file of a release against its manifest; return the manifest.

        Raises:
            ReleaseVerificationError: naming the first missing, extra, resized or altered file.
        """
        problems = self.integrity_problems(release)
        if problems:
            raise ReleaseVerificationError(problems[0])
        return self.manifest(release)

    def lineage_problems(self, release: str, *, whole_chain: bool = True) -> list[str]:
        """Problems with the release's ancestry, read from manifests alone.

        Every parent must be a valid name of a complete release and the chain must end without
        a cycle. For each parent -> child edge: the child's intents start with the parent's
        intents in order (label maps only grow or stay, as in an ``update`` whose
        ``updated_intents`` must all be the parent's), unless the child was made by ``retire``
        and says so in ``retired_intents``, in which case it holds the parent's intents minus those;
        ``parent_intents`` matches the parent; the backbone (fingerprint, type, size, pooling)
        and the ``model`` config are the parent's.

        Args:
            release: the release whose lineage is checked.
            whole_chain: check every edge up to the root (loading); False checks the release's
                own edge and only the existence and acyclicity of the rest (``verify --all``,
                which checks every other edge under its own release).
        """
        try:
            child = self.manifest(release)
        except IntentCIError as err:
            return [str(err)]
        problems: list[str] = []
        chain = [release]
        complete = set(self.releases())
        name, manifest, first = release, child, True
        while manifest.get("parent") is not None:
            parent = manifest["parent"]
            where = f"{self.root / name / MANIFEST}: field `parent`: "
            if parent in chain:
                problems.append(
                    f"{self.root / name / MANIFEST}: lineage has a cycle: "
                    + " -> ".join([*chain, parent])
                )
                break
            chain.append(parent)
            if parent not in complete:
                problems.append(
                    f"{where}parent {parent!r} is not a complete release in {self.root}; "
                    f"releases: {', '.join(sorted(complete, key=_release_number)) or 'none'}"
                )
                break
            try:
                parent_manifest = self.manifest(parent)
            except IntentCIError as err:
                problems.append(f"{where}parent {parent!r} is unreadable: {err}")
                break
            if first or whole_chain:
                problems.extend(
                    edge_problems(self.root / name / MANIFEST, manifest, parent_manifest)
                )
            name, manifest, first = parent, parent_manifest, False
        if child.get("parent") is None and child.get("retired_intents"):
            problems.append(
                f"{self.root / release / MANIFEST}: field `retired_intents` is set but the release has no parent"
            )
        return problems

    def registry_problems(self) -> list[str]:
        """Problems of the registry as a whole: ``LATEST``, aliases, stray or linked ``vN`` entries."""
        problems = []
        try:
            if self.latest() is None and (missing := self._latest_missing()):
                problems.append(missing)
        except IntentCIError as err:
            problems.append(str(err))
        if not self.root.is_dir():
            return problems
        complete = set(self.releases())
        try:
            for alias, release in self.aliases().items():
                if release not in complete:
                    problems.append(
                        f"{self.root / ALIASES}: alias {alias!r} points to {release!r}, which is not "
                        f"a complete release; move it with `intent-ci alias set {alias} RELEASE`"
                    )
        except IntentCIError as err:
            problems.append(str(err))
        for entry in sorted(self.root.iterdir()):
            if not RELEASE_ID.match(entry.name) or entry.name in complete:
                continue
            if entry.is_symlink():
                problems.append(
                    f"{entry}: is a symbolic link to {os.readlink(entry)}; releases must be real "
                    "folders inside the registry (never loaded)"
                )
            elif entry.is_dir():
                problems.append(
                    f"{entry}: folder without {MANIFEST}; not a release (a partial copy?), never loaded"
                )
            else:
                problems.append(f"{entry}: not a folder; not a release, never loaded")
        return problems

    def history(self) -> list[dict[str, Any]]:
        """Entries of ``HISTORY.jsonl``, oldest first; unreadable (torn) lines are skipped."""
        path = self.root / HISTORY
        if not path.is_file() or path.is_symlink():
            return []
        entries = []
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            try:
                entry = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                logger.warning("%s:%d: unreadable history line skipped", path, number)
                continue
            if isinstance(entry, dict):
                entries.append(entry)
        return entries

    # ---- writing -------------------------------------------------------------------------
    def _lock(self) -> FileLock:
        return FileLock(str(self.root / LOCK), timeout=self.config.lock_timeout_s)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry lock (commits and LATEST moves take it).

        Raises:
            IntentCIError: if another run holds it for longer than the configured timeout.
        """
        lock = self._lock()
        try:
            lock.acquire()
        except Timeout:
            raise IntentCIError(
                f"{self.root}: another intent-ci run has held the registry lock ({self.root / LOCK}) "
                f"for over {self.config.lock_timeout_s:g} s; nothing was committed. Try again when it "
                "has finished, or raise --lock-timeout"
            ) from None
        except OSError as err:
            raise IntentCIError(
                f"{self.root / LOCK}: cannot take the registry lock ({describe_os_error(err)}); "
                "nothing was changed. Make the registry writable, or choose another --registry"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def stale_staging(self) -> list[Path]:
        """Leftovers of runs that are no longer alive: staging folders and ``.tmp-`` files."""
        if not self.root.is_dir():
            return []
        stale = []
        for entry in sorted(self.root.iterdir()):
            for prefix in (STAGING_PREFIX, TMP_PREFIX):
                if entry.name.startswith(prefix) and not owner_alive(entry.name, prefix):
                    stale.append(entry)
        return stale

    def clean_stale_staging(self) -> list[str]:
        """Remove the leftovers of dead runs; return their names."""
        removed = []
        for entry in self.stale_staging():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            removed.append(entry.name)
        if removed:
            logger.info("removed leftovers of killed runs: %s", ", ".join(removed))
        return removed

    @contextlib.contextmanager
    def stage(self) -> Iterator[Path]:
        """A private staging folder inside the registry; removed if the block fails.

        Leftovers of dead runs are removed first. A failed write (full disk, file size limit)
        becomes an `IntentCIError`; the registry is left as it was.

        Raises:
            IntentCIError: if a file cannot be written.
        """
        staging = self.root / f"{STAGING_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.clean_stale_staging()
            staging.mkdir()
        except OSError as err:
            raise IntentCIError(
                f"{self.root}: cannot write a release here ({describe_os_error(err)}); nothing was "
                "written. Make the registry writable, or choose another --registry"
            ) from None
        try:
            yield staging
        except OSError as err:
            raise IntentCIError(
                f"{self.root}: could not write the new release ({describe_os_error(err)}); "
                "nothing was committed and the registry is unchanged"
            ) from None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def commit(
        self, staging: Path, manifest: dict[str, Any], *, expect_latest: Any = _ANY_LATEST
    ) -> str:
        """Allocate the next id, write the manifest last, rename into place, move `latest`.

        Everything that needs disk space (high-water mark, manifest, the new ``LATEST``) is
        written and fsynced before the rename, so once the release is visible only renames remain.

        Args:
            staging: the staging folder holding the release's files.
            manifest: the manifest without ``format``, ``release`` and ``files`` (added here).
            expect_latest: what ``LATEST`` pointed to when the run started (a release id, or
                None for an empty registry). If another run has moved ``LATEST`` since, the
                release is still written but ``LATEST`` does not move, and `LatestMovedError`
                is raised. Left out, ``LATEST`` moves whatever it points to.

        Raises:
            LatestMovedError: when ``LATEST`` moved since `expect_latest` (the release exists).
            IntentCIError: if the lock cannot be taken in time or a write fails.
        """
        for file in sorted(staging.iterdir()):
            _fsync_file(file)
        files = {
            p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(staging.iterdir())
        }
        with self.locked():
            # The high-water mark remembers ids of releases deleted by hand, and incomplete
            # folders are skipped too, so a number is never handed out twice.
            taken = {
                int(m.group(1)) for e in self.root.iterdir() if (m := RELEASE_ID.match(e.name))
            }
            release = f"v{max(max(taken, default=0), self._high_water()) + 1}"
            previous = self.latest_or_none()
            move = expect_latest is _ANY_LATEST or previous == expect_latest
            self._write_small(self.root / HIGH_WATER, release + "\n")
            final = dict(manifest, format=MANIFEST_FORMAT, release=release, files=files)
            final.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            manifest_path = staging / MANIFEST
            manifest_path.write_text(
                json.dumps(final, indent=2, sort_keys=False) + "\n", encoding="utf-8"
            )
            _fsync_file(manifest_path)
            _fsync_dir(staging)
            pointer_tmp = self._prepare_small(LATEST, release + "\n") if move else None
            os.rename(staging, self.root / release)
            # From here on the release exists: a failure must not claim that nothing was committed.
            try:
                if pointer_tmp is not None:
                    self._replace_small(pointer_tmp, self.root / LATEST)
                _fsync_dir(self.root)
            except OSError as err:
                raise IntentCIError(
                    f"{self.root / release}: the release was written, but moving LATEST to it failed "
                    f"({describe_os_error(err)}); check with `intent-ci verify --all`, then "
                    f"`intent-ci rollback {release}`"
                ) from None
            self._log_history(
                {
                    "event": "release" if move else "release_not_latest",
                    "release": release,
                    "parent": final.get("parent"),
                    "latest": release if move else previous,
                    "previous_latest": previous,
                }
            )
        if not move:
            raise LatestMovedError(
                release, previous, self._moved_message(release, final, expect_latest, previous)
            )
        return release

    def _moved_message(
        self, release: str, manifest: dict[str, Any], expected: str | None, latest: str | None
    ) -> str:
        """Why `release` did not become latest, and what to do (see `LatestMovedError`)."""
        started = f"LATEST was {expected}" if expected else "the registry had no release"
        now = latest or "nothing"
        missing: list[str] = []
        if latest is not None:
            with contextlib.suppress(IntentCIError):
                ours = set(manifest.get("intents") or [])
                missing = [i for i in self.manifest(latest)["intents"] if i not in ours]
        lacks = (
            f" and lacks {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}"
            if missing
            else ""
        )
        return (
            f"{release} was written (parent {manifest.get('parent') or '-'}), but LATEST did not move "
            f"to it: {started} when this run started, and another run has since moved it to {now}"
            f"{lacks}. LATEST stays at {now}, so no run's intents are lost. Add this run's intents on "
            f"top of {now} (`intent-ci add-intent --from {now} ...`), or, to ship {release} as it "
            f"is, `intent-ci rollback {release}`"
        )

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
        with self.locked():
            if target.exists() or target.is_symlink():
                same = (target / MANIFEST).is_file() and sha256_file(target / MANIFEST) == digest
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
                if int(release[1:]) > self._high_water():
                    self._write_small(self.root / HIGH_WATER, release + "\n")
                os.rename(folder, target)
                moved = True
            previous = self.latest_or_none()
            if latest and (previous is None or int(previous[1:]) < int(release[1:])):
                self._write_small(self.root / LATEST, release + "\n")
                self._log_history({"event": "pull", "latest": release, "previous_latest": previous})
            _fsync_dir(self.root)
        return moved

    def move_latest(self, release: str, event: str) -> str | None:
        """Point ``LATEST`` at an existing release by atomic replace, under the lock; log it.

        Args:
            release: a complete release.
            event: what to record in ``HISTORY.jsonl`` (e.g. ``"rollback"``).

        Returns:
            The release ``LATEST`` pointed to before.

        Raises:
            IntentCIError: for an unknown release or a lock timeout.
        """
        release = self.resolve(release)
        self.clean_stale_staging()
        with self.locked():
            previous = self.latest_or_none()
            try:
                pointer_tmp = self._prepare_small(LATEST, release + "\n")
                self._replace_small(pointer_tmp, self.root / LATEST)
                _fsync_dir(self.root)
            except OSError as err:
                raise IntentCIError(
                    f"{self.root / LATEST}: could not move LATEST to {release} "
                    f"({describe_os_error(err)}); it still points to {previous or 'nothing'}"
                ) from None
            self._log_history({"event": event, "latest": release, "previous_latest": previous})
        return previous

    def set_alias(self, alias: str, ref: str) -> str | None:
        """Point `alias` at a release (``ALIASES.json`` by atomic replace, under the lock; logged).

        Args:
            alias: the alias name, e.g. ``production``.
            ref: a release id, ``latest`` or another alias; the release id it resolves to now
                is stored, so the alias does not follow later moves of ``LATEST``.

        Returns:
            The release the alias pointed to before, or None if it is new.

        Raises:
            IntentCIError: for a bad alias name, an unknown release, a damaged ``ALIASES.json``
                or a lock timeout.
        """
        check_alias_name(alias)
        release = self.resolve(ref)
        self.clean_stale_staging()
        with self.locked():
            aliases = self.aliases()
            previous = aliases.get(alias)
            if previous != release:
                aliases[alias] = release
                self._write_aliases(aliases)
                self._log_history(
                    {"event": "alias_set", "alias": alias, "release": release, "previous": previous}
                )
        return previous

    def delete_alias(self, alias: str) -> str:
        """Remove `alias` (atomic replace under the lock; logged). Releases are untouched.

        Returns:
            The release the alias pointed to.

        Raises:
            IntentCIError: for a bad or unknown alias, or a lock timeout.
        """
        check_alias_name(alias)
        if not self.root.is_dir():
            raise no_registry(self.root, "create one with `intent-ci init`")
        self.clean_stale_staging()
        with self.locked():
            aliases = self.aliases()
            if alias not in aliases:
                raise IntentCIError(
                    f"unknown alias {alias!r} in {self.root}; aliases: {', '.join(aliases) or 'none'}"
                )
            previous = aliases.pop(alias)
            self._write_aliases(aliases)
            self._log_history(
                {"event": "alias_delete", "alias": alias, "release": None, "previous": previous}
            )
        return previous

    def _write_aliases(self, aliases: dict[str, str]) -> None:
        """Replace ``ALIASES.json`` atomically (caller holds the lock)."""
        try:
            self._write_small(
                self.root / ALIASES, json.dumps(aliases, indent=2, sort_keys=True) + "\n"
            )
            _fsync_dir(self.root)
        except OSError as err:
            raise IntentCIError(
                f"{self.root / ALIASES}: could not write the aliases ({describe_os_error(err)}); "
                "they are unchanged"
            ) from None

    def latest_or_none(self) -> str | None:
        """Like `latest`, but None when ``LATEST`` is missing or damaged (rollback repairs it)."""
        try:
            return self.latest()
        except IntentCIError:
            return None

    def _high_water(self) -> int:
        try:
            match = RELEASE_ID.match((self.root / HIGH_WATER).read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            return 0
        return int(match.group(1)) if match else 0

    def _prepare_small(self, name: str, text: str) -> Path:
        """Write and fsync ``.tmp-<pid>-<name>``; removed again if that fails."""
        tmp = self.root / f"{TMP_PREFIX}{os.getpid()}-{name.lstrip('.')}"
        try:
            tmp.write_text(text, encoding="utf-8")
            _fsync_file(tmp)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return tmp

    def _replace_small(self, tmp: Path, path: Path) -> None:
        os.replace(tmp, path)

    def _write_small(self, path: Path, text: str) -> None:
        """Write a small file by atomic replace (fsynced temp file, then rename)."""
        self._replace_small(self._prepare_small(path.name, text), path)

    def _log_history(self, event: dict[str, Any]) -> None:
        """Record a move of LATEST; the move has happened, so a failed append only warns."""
        try:
            self._append_history(event)
        except OSError as err:
            logger.warning(
                "%s: could not append to the history (%s); LATEST moved anyway",
                self.root / HISTORY,
                describe_os_error(err),
            )

    def _append_history(self, event: dict[str, Any]) -> None:
        """Append one fsynced line to ``HISTORY.jsonl`` (caller holds the lock)."""
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event}
        data = (json.dumps(entry, sort_keys=True) + "\n").encode("utf-8")
        fd = os.open(self.root / HISTORY, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # end a line torn by a crash, so this one stays readable
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)


def _release_number(name: str) -> int:
    match = RELEASE_ID.match(name)
    return int(match.group(1)) if match else 0


def _is_name_list(value: Any, *, allow_empty: bool = True) -> bool:
    return (
        isinstance(value, list)
        and (allow_empty or bool(value))
        and all(isinstance(v, str) and NAME_PATTERN.match(v) for v in value)
        and len(set(value)) == len(value)
    )


def check_manifest(data: Any, path: Path) -> None:
    """Check the shape of a parsed manifest; every message names the file and the field.

    Raises:
        ReleaseVerificationError: for a missing or mistyped field, an invalid name (intents,
            ``parent``, file names), a malformed hash, or an unsupported format.
    """
    if not isinstance(data, dict):
        raise ReleaseVerificationError(f"{path}: expected a JSON object")
    required = {
        "format": int,
        "release": str,
        "intents": list,
        "files": dict,
        "backbone": dict,
        "config": dict,
    }
    kinds = {int: "an integer", str: "a string", list: "a list", dict: "an object"}
    for key, kind in required.items():
        value = data.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ReleaseVerificationError(f"{path}: field `{key}` missing or not {kinds[kind]}")
    if data["format"] != MANIFEST_FORMAT:
        raise ReleaseVerificationError(
            f"{path}: format {data['format']} is not supported (expected {MANIFEST_FORMAT})"
        )
    try:
        check_release_name(data["release"], f"{path}: field `release`: ")
        if data.get("parent") is not None:
            check_release_name(data["parent"], f"{path}: field `parent`: ")
    except IntentCIError as err:
        raise ReleaseVerificationError(str(err)) from None
    if not _is_name_list(data["intents"], allow_empty=False):
        raise ReleaseVerificationError(
            f"{path}: field `intents` must be a non-empty list of unique intent names"
        )
    optional = {
        "metrics": dict,
        "replay": dict,
        "oos": dict,
        "training": dict,
        "versions": dict,
        "memory_changes": dict,
        "corrections": list,
    }
    for key, kind in optional.items():
        if data.get(key) is not None and not isinstance(data[key], kind):
            raise ReleaseVerificationError(f"{path}: field `{key}` must be {kinds[kind]} or null")
    for number, correction in enumerate(data.get("corrections") or []):
        if not isinstance(correction, dict) or not all(
            isinstance(correction.get(k), str) for k in ("text", "intent", "previous")
        ):
            raise ReleaseVerificationError(
                f"{path}: field `corrections[{number}]` must be an object with `text`, `intent` "
                "and `previous` strings"
            )
    for key in ("new_intents", "parent_intents", "retired_intents", "updated_intents"):
        if key in data and not _is_name_list(data[key]):
            raise ReleaseVerificationError(
                f"{path}: field `{key}` must be a list of unique intent names"
            )
    for name, meta in data["files"].items():
        if (
            not isinstance(name, str)
            or name in ("", ".", "..", MANIFEST)
            or "/" in name
            or "\\" in name
            or "\x00" in name
            or name.startswith(".")
        ):
            raise ReleaseVerificationError(
                f"{path}: field `files` lists {name!r}; expected plain file names inside the release"
            )
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("sha256"), str)
            or not _SHA256.match(meta["sha256"])
            or not isinstance(meta.get("bytes"), int)
            or isinstance(meta.get("bytes"), bool)
            or meta["bytes"] < 0
        ):
            raise ReleaseVerificationError(
                f'{path}: field `files.{name}` must be {{"sha256": 64 hex digits, "bytes": size}}'
            )


def update_training(manifest: dict[str, Any]) -> str | None:
    """What an `update` release trained, read from its manifest: ``lora`` (LoRA and head),
    ``head`` (the head alone, every row), ``head-changed-rows`` (the head alone, only the
    changed intents' rows: `train.update_head_rows: changed`), or None (not an update, or one
    made before `metrics.update_mode` was recorded)."""
    mode = (manifest.get("metrics") or {}).get("update_mode")
    if mode == "head":
        train = (manifest.get("config") or {}).get("train") or {}
        return "head-changed-rows" if train.get("update_head_rows") == "changed" else "head"
    return mode if mode == "lora" else None


def _backbone_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    backbone = manifest["backbone"]
    return {k: backbone.get(k) for k in ("fingerprint", "model_type", "hidden_size", "pooling")}


RECALIBRATED_FILES = {"calibration.json", "oos_bank.safetensors"}
"""The only files a release made by `calibrate` may hold that differ from its parent's: the
calibration set, and the exemplar bank (its parent's encoder on its parent's memory, present
only when the score reads it)."""


def _calibrated_edge_problems(
    path: Path, child: dict[str, Any], parent: dict[str, Any]
) -> list[str]:
    """A release made by `calibrate` trains nothing: its parent's intents and files, byte for
    byte, except its calibration set."""
    pname = parent["release"]
    if child["calibrated_from"] != pname:
        return [
            f"{path}: field `calibrated_from` is {child['calibrated_from']!r} but the parent is {pname}"
        ]
    problems = []
    if child["intents"] != parent["intents"] or child.get("new_intents"):
        problems.append(
            f"{path}: a release made by calibrate must predict exactly parent {pname}'s intents"
        )
    # Files pushed to the Hub with --no-replay keep their sha256 under `omitted_files`.
    mine = {**(child.get("omitted_files") or {}), **(child.get("files") or {})}
    theirs = {**(parent.get("omitted_files") or {}), **(parent.get("files") or {})}
    for name in sorted(set(mine) | set(theirs)):
        if name in RECALIBRATED_FILES:
            continue
        a, b = mine.get(name) or {}, theirs.get(name) or {}
        if a.get("sha256") != b.get("sha256"):
            problems.append(
                f"{path}: a release made by calibrate trains nothing, but its {name} differs "
                f"from parent {pname}'s"
            )
    return problems


def edge_problems(path: Path, child: dict[str, Any], parent: dict[str, Any]) -> list[str]:
    """Problems of one parent -> child edge of the lineage (see `Registry.lineage_problems`)."""
    problems = []
    old, new = parent["intents"], child["intents"]
    retired = child.get("retired_intents") or []
    pname = parent["release"]
    if retired:
        unknown = [i for i in retired if i not in old]
        expected = [i for i in old if i not in retired]
        if unknown:
            problems.append(
                f"{path}: field `retired_intents` names {', '.join(map(repr, unknown))}, which "
                f"parent {pname} does not have"
            )
        elif new != expected:
            problems.append(
                f"{path}: a release made by retire must hold its parent {pname}'s intents minus "
                f"{', '.join(retired)}, in order; it holds {len(new)} intents that differ"
            )
        if child.get("new_intents"):
            problems.append(f"{path}: a release made by retire cannot add intents")
        if child.get("updated_intents"):
            problems.append(f"{path}: a release made by retire cannot update intents")
    elif new[: len(old)] != old:
        position = next(
            (i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), len(new)
        )
        found = repr(new[position]) if position < len(new) else "nothing"
        problems.append(
            f"{path}: label map shrank or was reordered: the intents must start with parent "
            f"{pname}'s {len(old)} intents in order, but position {position} holds {found} where "
            f"{pname} has {old[position]!r} (only releases made by retire, which list "
            "`retired_intents`, may drop intents)"
        )
    elif "new_intents" in child and child["new_intents"] != new[len(old) :]:
        problems.append(
            f"{path}: field `new_intents` does not list the intents after parent {pname}'s"
        )
    if "parent_intents" in child and child["parent_intents"] != old:
        problems.append(f"{path}: field `parent_intents` differs from parent {pname}'s intents")
    if "calibrated_from" in child:
        problems.extend(_calibrated_edge_problems(path, child, parent))
    # An update release changes intents the parent has: they must be the parent's (and so not
    # new), or the gate would judge them as new intents instead of old ones that must not drop.
    strays = [i for i in child.get("updated_intents") or [] if i not in old]
    if strays:
        problems.append(
            f"{path}: field `updated_intents` names {', '.join(map(repr, strays))}, which parent "
            f"{pname} does not have (intents a release adds belong in `new_intents`)"
        )
    mine, theirs = _backbone_identity(child), _backbone_identity(parent)
    for key in mine:
        if mine[key] != theirs[key]:
            problems.append(
                f"{path}: field `backbone.{key}` is {str(mine[key])[:30]!r} but parent {pname} has "
                f"{str(theirs[key])[:30]!r}; a lineage shares one backbone"
            )
    child_model, parent_model = child["config"].get("model"), parent["config"].get("model")
    if child_model != parent_model:
        if isinstance(child_model, dict) and isinstance(parent_model, dict):
            changed = sorted(
                str(k)
                for k in set(child_model) | set(parent_model)
                if child_model.get(k) != parent_model.get(k)
            )
        else:
            changed = ["not a mapping"]
        problems.append(
            f"{path}: field `config.model` differs from parent {pname}'s "
            f"({', '.join(changed)}); the model config is fixed by the base release"
        )
    return problems


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
