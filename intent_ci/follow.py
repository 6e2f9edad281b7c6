"""Which release `intent-ci serve` answers with, and how it follows the registry.

A `ReleaseFollower` loads the served release on a background thread: verified (hashes, label
map, adapter schema, lineage, backbone fingerprint) and with LoRA merged into the encoder.
When the reference it follows (``latest`` or an alias) moves to another release, it loads and
verifies that one in the background while the old one keeps answering, then swaps with one
reference assignment. A batch reads the reference once, so requests in flight finish on the
release they started on, and none waits for or fails because of the swap. A release that fails
verification is never served: the old one stays, and the refusal is logged and kept for
``/release`` and ``/metrics``. A pinned release (``v3``) is loaded once and never moves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from intent_ci.errors import IntentCIError
from intent_ci.registry import RELEASE_ID, Registry

logger = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The parts of a manifest a caller of ``/release`` wants: lineage, intents, backbone."""
    backbone = manifest.get("backbone") or {}
    evaluation = (manifest.get("metrics") or {}).get("eval") or {}
    return {
        "parent": manifest.get("parent"),
        "created_at": manifest.get("created_at"),
        "intents": manifest.get("intents"),
        "new_intents": manifest.get("new_intents") or [],
        "retired_intents": manifest.get("retired_intents") or [],
        "backbone": {k: backbone.get(k) for k in ("name", "revision", "pooling")},
        "eval_accuracy": evaluation.get("accuracy"),
    }


@dataclass(frozen=True)
class ServedRelease:
    """A verified, loaded release and when it was loaded.

    Attributes:
        classifier: an `intent_ci.release.IntentClassifier` with LoRA merged.
    """

    name: str
    classifier: Any
    loaded_at: str
    load_seconds: float

    def describe(self) -> dict[str, Any]:
        return {
            "release": self.name,
            "loaded_at": self.loaded_at,
            "load_seconds": round(self.load_seconds, 3),
            "manifest": manifest_summary(self.classifier.manifest),
        }


def load_for_serving(registry: Registry, name: str, runtime: str = "torch") -> Any:
    """Load and verify `name`, with LoRA merged into the encoder (the serving path).

    Args:
        runtime: ``torch``, or ``onnx`` to run the merged model with ONNX Runtime (see
            `intent_ci.onnx_model.use_onnx_runtime`).

    Raises:
        IntentCIError: for an unknown release, one that fails verification, or (runtime onnx)
            an export whose probabilities differ from torch's.
    """
    from intent_ci.release import IntentClassifier

    classifier = IntentClassifier.load(registry, name, merge_lora=True)
    if runtime == "onnx":
        from intent_ci.onnx_model import use_onnx_runtime

        use_onnx_runtime(classifier)
    return classifier


class ReleaseFollower:
    """Keep the served release loaded, and follow `ref` through the registry unless pinned.

    Args:
        registry: where releases live.
        ref: ``latest``, an alias (both followed), or a release id such as ``v3`` (pinned).
        poll_interval_s: seconds between checks of where `ref` points.
        runtime: ``torch`` or ``onnx`` (see `load_for_serving`).
        on_swap: called on the follower's thread with each release that starts being served.
        on_refuse: called with ``(release, reason)`` for each release that fails to load.
        on_fatal: called with the reason when a pinned release fails to load (nothing can
            ever be served).
    """

    def __init__(
        self,
        registry: Registry,
        ref: str,
        poll_interval_s: float,
        *,
        runtime: str = "torch",
        on_swap: Callable[[ServedRelease], None] | None = None,
        on_refuse: Callable[[str, str], None] | None = None,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.ref = ref
        self.poll_interval_s = poll_interval_s
        self.runtime = runtime
        self.on_swap = on_swap
        self.on_refuse = on_refuse
        self.on_fatal = on_fatal
        self.current: ServedRelease | None = None
        """The release requests are answered with; replaced whole, never mutated."""
        self.loading: str | None = None
        self.refused: dict[str, str] | None = None
        """The last release that failed to load: ``{"release", "reason", "at"}``."""
        self._last_problem: str | None = None
        self._refused_files: tuple | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="intent-ci-follower", daemon=True)

    @property
    def pinned(self) -> bool:
        """True for a release id (``v3``): never moves. ``latest`` and aliases are followed."""
        return bool(RELEASE_ID.match(self.ref))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; a load in progress finishes first (it cannot be interrupted)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            fatal = self.step()
            if fatal or (self.pinned and self.current is not None):
                return
            self._stop.wait(self.poll_interval_s)

    def step(self) -> bool:
        """Check where `ref` points; load, verify and swap in a release it newly names.

        Returns:
            True when a pinned release failed to load (the caller should stop the server).
        """
        try:
            target = self.registry.resolve(self.ref)
        except IntentCIError as err:
            message = str(err)
            if message != self._last_problem:  # log a lasting problem once, not every poll
                logger.warning(
                    "cannot resolve %r in %s: %s; still serving %s",
                    self.ref,
                    self.registry.root,
                    message,
                    self.current.name if self.current else "nothing",
                )
                self._last_problem = message
            if self.pinned and self.current is None:
                self._fatal(message)
                return True
            return False
        self._last_problem = None
        current = self.current
        if current is not None and current.name == target:
            return False
        if (
            self.refused is not None
            and self.refused["release"] == target
            and self._refused_files == self._files_of(target)
        ):
            return False  # unchanged since it was refused: it would fail again
        files = self._files_of(target)
        self.loading = target
        started = time.perf_counter()
        try:
            classifier = load_for_serving(self.registry, target, self.runtime)
        except Exception as err:  # whatever went wrong, the old release keeps answering
            reason = str(err) or type(err).__name__
            self.refused = {"release": target, "reason": reason, "at": utc_now()}
            # a release seen half-copied (a registry synced by hand, a shared filesystem that
            # shows files late) is tried again once its files change
            self._refused_files = files
            logger.error(
                "refusing release %s: %s; still serving %s",
                target,
                reason,
                current.name if current else "nothing",
            )
            if self.on_refuse is not None:
                self.on_refuse(target, reason)
            if self.pinned:
                self._fatal(f"release {target} cannot be served: {reason}")
                return True
            return False
        finally:
            self.loading = None
        served = ServedRelease(target, classifier, utc_now(), time.perf_counter() - started)
        self.current = served  # the swap: one reference assignment
        logger.info(
            "serving %s (%s) after %.1f s of loading and verification%s",
            target,
            self.ref,
            served.load_seconds,
            f"; was {current.name}" if current else "",
        )
        if self.on_swap is not None:
            self.on_swap(served)
        return False

    def _files_of(self, release: str) -> tuple:
        """Name, size and mtime of every file of `release`: changes when its files do."""
        folder = Path(self.registry.root) / release
        try:
            return tuple(
                sorted(
                    (str(p.relative_to(folder)), st.st_size, st.st_mtime_ns)
                    for p in folder.rglob("*")
                    if p.is_file() and (st := p.stat())
                )
            )
        except OSError:
            return ()

    def _fatal(self, reason: str) -> None:
        if self.on_fatal is not None:
            self.on_fatal(reason)
