"""The traffic log of `intent-ci serve`: one JSON line per classified utterance.

Each row holds ``timestamp`` (UTC, ISO 8601), ``text`` (or ``text_sha256`` when redacted),
``release``, ``intent``, ``confidence``, ``in_scope`` and ``score``. Files are named
``traffic-<UTC start time>-<pid>-<random>-<n>.jsonl`` inside the log folder (the random part
keeps replicas apart that share a folder, a start second and a pid, as containers do; a file
is created, never appended to); a file that reaches
``ServeConfig.log_max_bytes`` is closed and the next row starts a new one. Files are never
renamed or deleted (unlike `logging.handlers.RotatingFileHandler`, which renames every backup
on each rollover and drops the oldest), so a reader that has seen a closed file never needs to
read it again, several replicas can share one folder, and nothing is lost. Every file is
complete JSON Lines that ``datasets.load_dataset("json", data_files=...)`` reads directly.

Rows are written by a thread of their own, so a slow disk never delays a response.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import secrets
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from intent_ci.errors import IntentCIError

logger = logging.getLogger(__name__)

TRAFFIC_GLOB = "traffic-*.jsonl"
"""The names of traffic log files inside a log folder."""
_STOP = object()


def text_sha256(text: str) -> str:
    """The hash stored instead of a text by ``--log-redact`` (hex sha256 of its UTF-8 bytes)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TrafficLog:
    """Append rows to size-rotated JSONL files from a background thread.

    Args:
        folder: the log folder (created if missing).
        max_bytes: size at which a file is closed and the next row starts a new one.
        redact: store ``text_sha256`` instead of ``text``.

    Raises:
        IntentCIError: if the folder cannot be created or written.
    """

    def __init__(self, folder: str | Path, max_bytes: int, *, redact: bool = False) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.redact = redact
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".write-test-{os.getpid()}"
            probe.write_text("", encoding="utf-8")
            probe.unlink()
        except OSError as err:
            raise IntentCIError(
                f"--traffic-log {self.folder}: cannot write there ({err.strerror or err})"
            ) from None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
        self._stamp += f"-{secrets.token_hex(4)}"
        self._files = 0
        self._handle: TextIO | None = None
        self._size = 0
        self.rows_written = 0
        self._thread = threading.Thread(target=self._run, name="intent-ci-traffic-log", daemon=True)
        self._thread.start()

    def record(self, release: str, texts: list[str], predictions: list[dict[str, Any]]) -> None:
        """Queue one row per text (`predictions` as /predict returns them); never blocks."""
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for text, prediction in zip(texts, predictions, strict=True):
            row: dict[str, Any] = {"timestamp": now}
            if self.redact:
                row["text_sha256"] = text_sha256(text)
            else:
                row["text"] = text
            row["release"] = release
            row.update(prediction)
            self._queue.put(row)

    def close(self) -> None:
        """Write every queued row, then close the current file."""
        self._queue.put(_STOP)
        self._thread.join()

    def _open_next(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._files += 1
        path = self.folder / f"traffic-{self._stamp}-{self._files:05d}.jsonl"
        self._handle = path.open("x", encoding="utf-8")  # never another process's file
        self._size = 0

    def _write(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        size = len(line.encode("utf-8"))
        if self._handle is None or (self._size and self._size + size > self.max_bytes):
            self._open_next()
        self._handle.write(line)
        self._size += size
        self.rows_written += 1

    def _run(self) -> None:
        failed = False
        while True:
            item = self._queue.get()
            # Drain what is queued before flushing, so a busy server flushes once per burst.
            items = [item]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(i is _STOP for i in items)
            try:
                for row in items:
                    if row is not _STOP and not failed:
                        self._write(row)
                if self._handle is not None:
                    self._handle.flush()
            except OSError as err:
                # The server keeps answering; losing the log is reported once, not per row.
                failed = True
                logger.error("traffic log %s: write failed (%s); logging stops", self.folder, err)
            if stop:
                if self._handle is not None:
                    try:
                        self._handle.close()
                    except OSError:
                        pass
                return
