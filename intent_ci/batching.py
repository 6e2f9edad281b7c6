"""Dynamic batching for `intent-ci serve`: concurrent requests share one forward pass.

Requests are queued; one worker thread takes the first, lets others join it for at most
``max_wait_ms`` (requests that queued while the previous batch ran join at once), stops at
``max_batch_size`` texts, runs the batch in one call, and hands each request its own slice of
the results. Inference runs on that thread, never on the server's event loop, so the server
keeps accepting and answering other requests (health, metrics) while a batch runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

BatchFn = Callable[[list[str]], tuple[str, list[dict[str, Any]]]]
"""Runs one batch: texts in, ``(release name, one prediction dict per text)`` out."""


@dataclass
class BatchResult:
    """What one request gets back: the release that served it and its predictions."""

    release: str
    predictions: list[dict[str, Any]]
    batch_texts: int = field(default=0)


@dataclass
class _Job:
    texts: list[str]
    future: Future


_STOP = object()


class DynamicBatcher:
    """Batch concurrent `submit` calls into calls of `run` on one worker thread.

    Args:
        run: classifies one batch of texts (see `BatchFn`).
        max_batch_size: most texts in one call of `run`; a single request with more texts
            runs alone.
        max_wait_ms: how long the first request of a batch waits for others to join.
        on_batch: called on the worker thread with the size of every batch that ran.
    """

    def __init__(
        self,
        run: BatchFn,
        max_batch_size: int,
        max_wait_ms: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="intent-ci-batcher", daemon=True)
        self._thread.start()

    def submit(self, texts: list[str]) -> Future:
        """Queue `texts`; the future resolves to a `BatchResult` or to the batch's exception."""
        future: Future = Future()
        self._queue.put(_Job(list(texts), future))
        return future

    def close(self) -> None:
        """Finish every queued request, then stop the worker."""
        self._queue.put(_STOP)
        self._thread.join()

    def _collect(self, first: _Job) -> tuple[list[_Job], Any]:
        """`first` plus the requests that join it; also the item that did not fit (or None)."""
        jobs, size = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait_s
        while size < self.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP or size + len(item.texts) > self.max_batch_size:
                return jobs, item
            jobs.append(item)
            size += len(item.texts)
        return jobs, None

    def _work(self) -> None:
        carried: Any = None
        while True:
            item = carried if carried is not None else self._queue.get()
            if item is _STOP:
                return
            jobs, carried = self._collect(item)
            texts = [t for job in jobs for t in job.texts]
            try:
                release, predictions = self.run(texts)
            except Exception as err:  # every waiting request gets the error; the worker lives
                logger.exception("a batch of %d texts failed", len(texts))
                for job in jobs:
                    job.future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(len(texts))
            start = 0
            for job in jobs:
                end = start + len(job.texts)
                job.future.set_result(BatchResult(release, predictions[start:end], len(texts)))
                start = end
