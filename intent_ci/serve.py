"""`intent-ci serve`: an HTTP server (Starlette on uvicorn) that answers with a release.

Endpoints:

=====================  =========================================================================
``POST /predict``      ``{"texts": [...]}`` -> ``{"release": "v3", "predictions": [{"intent",
                       "confidence", "in_scope", "score"}, ...]}``, one per text, in order
``GET /healthz``       liveness: 200 while the process answers
``GET /readyz``        200 only while a verified release is loaded (503 while loading, and
                       while shutting down)
``GET /release``       the served release: name, manifest summary, load time; the release
                       being loaded and the last one refused, if any
``GET /metrics``       Prometheus text format
=====================  =========================================================================

Concurrent requests are batched into one forward pass on a worker thread
(:mod:`intent_ci.batching`); the release is kept loaded and follows the registry without
downtime (:mod:`intent_ci.follow`); every classified text can be written to a JSONL traffic
log (:mod:`intent_ci.traffic`). Bad requests get a 4xx JSON body ``{"error": ..., "field":
...}`` naming the field, and the server carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from intent_ci.batching import DynamicBatcher
from intent_ci.config import ServeConfig
from intent_ci.errors import IntentCIError
from intent_ci.follow import ReleaseFollower, ServedRelease
from intent_ci.registry import Registry
from intent_ci.traffic import TrafficLog

logger = logging.getLogger(__name__)

ENDPOINTS = {
    "/predict": "POST",
    "/healthz": "GET",
    "/readyz": "GET",
    "/release": "GET",
    "/metrics": "GET",
}


class RequestError(Exception):
    """A bad request: answered with `status` and ``{"error": message, "field": field}``."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


def error_response(status: int, field: str | None, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


def prediction_row(prediction: Any) -> dict[str, Any]:
    """One utterance's answer: its best intent, that intent's softmax probability, and the
    release's out-of-scope decision and score (see `intent_ci.release.Prediction`)."""
    return {
        "intent": prediction.intent,
        "confidence": prediction.confidence,
        "in_scope": prediction.in_scope,
        "score": prediction.score,
    }


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def parse_texts(body: bytes, config: ServeConfig) -> list[str]:
    """The texts of a /predict body, checked against the limits in `config`.

    Raises:
        RequestError: 400 for a body that is not a JSON object, 422 naming the field (``texts``
            or ``texts[i]``) for a missing, mistyped, empty, too long or too many texts.
    """
    try:
        payload = json.loads(body)
    except UnicodeDecodeError as err:
        raise RequestError(
            400, "body", f"body is not UTF-8 ({err.reason} at byte {err.start})"
        ) from None
    except (ValueError, RecursionError) as err:
        raise RequestError(
            400, "body", f'body is not JSON ({err}); expected {{"texts": [...]}}'
        ) from None
    if not isinstance(payload, dict):
        raise RequestError(
            400, "body", f'expected a JSON object {{"texts": [...]}}, got {_kind(payload)}'
        )
    unknown = sorted(str(k) for k in payload if k != "texts")
    if unknown:
        raise RequestError(
            422, unknown[0], f"unknown field {unknown[0]!r}; the body holds only `texts`"
        )
    if "texts" not in payload:
        raise RequestError(422, "texts", 'missing field `texts`; expected {"texts": [...]}')
    texts = payload["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, "texts", f"`texts` must be a list of strings, got {_kind(texts)}")
    if not texts:
        raise RequestError(422, "texts", "`texts` is empty; send at least one text")
    if len(texts) > config.max_texts:
        raise RequestError(
            422,
            "texts",
            f"`texts` holds {len(texts)} texts; at most {config.max_texts} per request "
            "(serve.max_texts)",
        )
    for i, text in enumerate(texts):
        where = f"texts[{i}]"
        if not isinstance(text, str):
            raise RequestError(422, where, f"`{where}` must be a string, got {_kind(text)}")
        if not text.strip():
            raise RequestError(422, where, f"`{where}` is empty or only whitespace")
        if len(text) > config.max_text_chars:
            raise RequestError(
                422,
                where,
                f"`{where}` has {len(text)} characters; at most {config.max_text_chars} "
                "(serve.max_text_chars)",
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(
                422, where, f"`{where}` is not valid Unicode (a lone surrogate escape)"
            ) from None
    return texts


CLIENT_CLOSED = 499
"""Status recorded for a request whose client went away mid-body (nginx's "client closed
request"); nobody receives it."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes.

    Raises:
        RequestError: 413 naming ``body``; 499 if the client disconnects before the end.
    """
    too_big = RequestError(413, "body", f"body is larger than {limit} bytes (serve.max_body_bytes)")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:
        # nginx's 499: the client's doing, so neither a 5xx in the metrics nor a logged traceback
        raise RequestError(
            CLIENT_CLOSED, "body", "the client closed the connection before sending its body"
        ) from None
    return b"".join(chunks)


class ServeMetrics:
    """The Prometheus metrics of one server, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "intent_ci_serve_requests",
            "HTTP requests by endpoint, method and status code",
            ["endpoint", "method", "status"],
            registry=r,
        )
        self.errors = Counter(
            "intent_ci_serve_errors",
            "HTTP requests answered with a 4xx or 5xx status, by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "intent_ci_serve_request_seconds",
            "Time from request to response, by endpoint",
            ["endpoint"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_texts = Histogram(
            "intent_ci_serve_batch_texts",
            "Texts per forward pass (dynamic batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.utterances = Counter(
            "intent_ci_serve_utterances",
            "Classified texts by release and in_scope",
            ["release", "in_scope"],
            registry=r,
        )
        self.out_of_scope_share = Gauge(
            "intent_ci_serve_out_of_scope_share",
            "Share of classified texts predicted out of scope since the server started",
            registry=r,
        )
        self.release = Info("intent_ci_serve_release", "The release being served", registry=r)
        self.ready = Gauge(
            "intent_ci_serve_ready", "1 while a verified release is loaded", registry=r
        )
        self.reloads = Counter(
            "intent_ci_serve_reloads",
            "Releases loaded after the first, and releases refused, by outcome",
            ["outcome"],
            registry=r,
        )
        self.refused = Info(
            "intent_ci_serve_refused",
            "The last release that failed verification and is not served",
            registry=r,
        )
        self._seen = 0
        self._out_of_scope = 0
        self._lock = threading.Lock()

    def count_predictions(self, release: str, predictions: list[dict[str, Any]]) -> None:
        out = sum(1 for p in predictions if not p["in_scope"])
        if out:
            self.utterances.labels(release, "false").inc(out)
        if len(predictions) - out:
            self.utterances.labels(release, "true").inc(len(predictions) - out)
        with self._lock:
            self._seen += len(predictions)
            self._out_of_scope += out
            self.out_of_scope_share.set(self._out_of_scope / self._seen)


class MetricsMiddleware:
    """Count and time every HTTP request, whatever answered it (route, 404, 405, 413...)."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            code = str(status[0])
            self.metrics.requests.labels(endpoint, scope["method"], code).inc()
            if status[0] >= 400:
                self.metrics.errors.labels(endpoint, code).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class IntentServer:
    """The served release, the batcher, the traffic log and the HTTP app around them.

    Args:
        registry: where releases live.
        config: what to serve and how (see `ServeConfig`).
        on_fatal: called with the reason when the server cannot serve anything, ever (a pinned
            release that fails verification); `serve` stops uvicorn there.

    Raises:
        IntentCIError: if the traffic log folder cannot be written.
    """

    def __init__(
        self,
        registry: str | Path | Registry,
        config: ServeConfig,
        *,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry if isinstance(registry, Registry) else Registry(registry)
        self.config = config
        self.metrics = ServeMetrics()
        self.fatal: str | None = None
        self._on_fatal = on_fatal
        self.shutting_down = False
        self.loads = 0
        self.traffic = (
            TrafficLog(config.traffic_log, config.log_max_bytes, redact=config.log_redact)
            if config.traffic_log
            else None
        )
        self.follower = ReleaseFollower(
            self.registry,
            config.release,
            config.poll_interval_s,
            runtime=config.runtime,
            on_swap=self._swapped,
            on_refuse=self._refused,
            on_fatal=self._fatal,
        )
        self.batcher: DynamicBatcher | None = None
        self.metrics.ready.set(0)
        self.app = self._build_app()

    # ---- events from the follower and the batcher (their threads) ------------------------
    def _swapped(self, served: ServedRelease) -> None:
        self.loads += 1
        if self.loads > 1:
            self.metrics.reloads.labels("swapped").inc()
        self.metrics.release.info(
            {"release": served.name, "ref": self.config.release, "loaded_at": served.loaded_at}
        )
        self.metrics.ready.set(0 if self.shutting_down else 1)

    def _refused(self, release: str, reason: str) -> None:
        self.metrics.reloads.labels("refused").inc()
        self.metrics.refused.info({"release": release, "reason": reason[:300]})

    def _fatal(self, reason: str) -> None:
        self.fatal = reason
        if self._on_fatal is not None:
            self._on_fatal(reason)

    def _run_batch(self, texts: list[str]) -> tuple[str, list[dict[str, Any]]]:
        served = self.follower.current  # read once: the whole batch runs on one release
        if served is None:
            raise RuntimeError("no release is loaded")
        predictions = served.classifier.predict(
            texts, batch_size=self.config.max_batch_size, reject=True
        )
        return served.name, [prediction_row(p) for p in predictions]

    # ---- the HTTP app ---------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.batcher = DynamicBatcher(
            self._run_batch,
            self.config.max_batch_size,
            self.config.max_wait_ms,
            on_batch=self.metrics.batch_texts.observe,
        )
        self.follower.start()
        try:
            yield
        finally:
            self.shutting_down = True
            self.metrics.ready.set(0)
            await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stop following, finish queued batches, write out the traffic log."""
        self.follower.stop()
        if self.batcher is not None:
            self.batcher.close()
        if self.traffic is not None:
            self.traffic.close()
            logger.info(
                "traffic log: %d rows in %s", self.traffic.rows_written, self.traffic.folder
            )

    def begin_shutdown(self) -> None:
        """From the first SIGINT/SIGTERM on: /readyz answers 503 while requests are still served.

        Runs in the signal handler, so it only sets a flag: the `ready` gauge's lock may be held
        by the very code the signal interrupted; /metrics reads the flag.
        """
        self.shutting_down = True

    async def predict(self, request: Request) -> Response:
        body = await read_body(request, self.config.max_body_bytes)
        texts = parse_texts(body, self.config)
        if self.follower.current is None or self.batcher is None:
            return error_response(503, None, self._not_ready_reason(), **{"Retry-After": "1"})
        try:
            result = await asyncio.wrap_future(self.batcher.submit(texts))
        except Exception as err:
            return error_response(500, None, f"inference failed: {err}")
        self.metrics.count_predictions(result.release, result.predictions)
        if self.traffic is not None:
            self.traffic.record(result.release, texts, result.predictions)
        return JSONResponse({"release": result.release, "predictions": result.predictions})

    def _not_ready_reason(self) -> str:
        if self.shutting_down:
            return "shutting down"
        if self.follower.loading:
            return f"loading and verifying release {self.follower.loading}"
        if self.follower.refused:
            refused = self.follower.refused
            return (
                f"no verified release loaded; {refused['release']} was refused: {refused['reason']}"
            )
        return "no verified release loaded yet"

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        served = self.follower.current
        if served is None or self.shutting_down:
            return JSONResponse({"ready": False, "reason": self._not_ready_reason()}, 503)
        return JSONResponse({"ready": True, "release": served.name})

    async def release(self, request: Request) -> Response:
        served = self.follower.current
        body = served.describe() if served else {"release": None}
        body.update(
            ref=self.config.release,
            follows=not self.follower.pinned,
            loading=self.follower.loading,
            refused=self.follower.refused,
        )
        return JSONResponse(body, status_code=200 if served else 503)

    async def prometheus(self, request: Request) -> Response:
        if self.shutting_down:
            self.metrics.ready.set(0)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _request_error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, RequestError):
            return error_response(exc.status, exc.field, exc.message)
        if not isinstance(exc, HTTPException):
            raise exc
        listed = ", ".join(f"{m} {p}" for p, m in ENDPOINTS.items())
        if exc.status_code == 404:
            return error_response(
                404, "path", f"no endpoint {request.url.path}; endpoints: {listed}"
            )
        if exc.status_code == 405:
            allowed = ENDPOINTS.get(request.url.path, "")
            return error_response(
                405,
                "method",
                f"{request.method} is not allowed on {request.url.path}; use {allowed}",
                Allow=allowed,
            )
        return error_response(exc.status_code, None, str(exc.detail))

    def _build_app(self) -> Any:
        routes = [
            Route("/predict", self.predict, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/release", self.release, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]
        app = Starlette(
            routes=routes,
            lifespan=self._lifespan,
            exception_handlers={
                RequestError: self._request_error,
                HTTPException: self._request_error,
            },
        )
        # A wrong path is a 404, not a redirect built from the request's Host header.
        app.router.redirect_slashes = False
        return MetricsMiddleware(app, self.metrics)


def _draining_server(config: Any, on_signal: Callable[[], None], drain_s: float) -> Any:
    """A uvicorn server that, on the first SIGINT/SIGTERM, calls `on_signal` (readiness goes
    503) and keeps serving `drain_s` seconds before its graceful shutdown; a second signal
    shuts down at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        draining = False

        def handle_exit(self, sig: int, frame: Any) -> None:
            on_signal()
            if drain_s > 0 and not self.draining and not self.should_exit:
                self.draining = True
                logger.info(
                    "draining for %.1f s: /readyz answers 503, requests are served", drain_s
                )
                timer = threading.Timer(drain_s, self._drained, (sig, frame))
                timer.daemon = True
                timer.start()
                return
            super().handle_exit(sig, frame)

        def _drained(self, sig: int, frame: Any) -> None:
            if not self.should_exit:  # a second signal may have stopped it already
                super().handle_exit(sig, frame)

    return DrainingServer(config)


def _no_op(signum: int, frame: Any) -> None:
    """Installed for SIGINT/SIGTERM around uvicorn, which re-raises the signal it shut down on."""


def serve(registry: str | Path | Registry, config: ServeConfig) -> None:
    """Run the server until SIGINT or SIGTERM, then shut down cleanly.

    On a signal, uvicorn stops accepting connections and finishes the requests in flight; then
    the follower stops, queued batches finish and the traffic log is written out.

    Raises:
        IntentCIError: for a missing registry or unknown release (before listening), a
            traffic log folder that cannot be written, an address that cannot be bound, or a
            pinned release that fails verification.
    """
    import uvicorn

    registry = registry if isinstance(registry, Registry) else Registry(registry)
    registry.resolve(config.release)  # an unknown release or registry is a usage error
    try:  # an address that does not resolve is refused before the release loads
        socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise IntentCIError(
            f"--host {config.host!r}: not an address this machine can listen on ({err}); "
            "expected an IP address or a resolvable host name, e.g. 127.0.0.1"
        ) from None
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    server: uvicorn.Server | None = None

    def stop(reason: str) -> None:
        if server is not None:
            server.should_exit = True

    intent_server = IntentServer(registry, config, on_fatal=stop)
    server = _draining_server(
        uvicorn.Config(
            intent_server.app,
            host=config.host,
            port=config.port,
            access_log=False,
            timeout_graceful_shutdown=30,
            log_level="info",
        ),
        intent_server.begin_shutdown,
        config.drain_s,
    )
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, _no_op) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    except SystemExit as err:
        raise IntentCIError(
            f"the server on {config.host}:{config.port} did not start (exit {err.code}; "
            "see the error above: is the port in use?)"
        ) from None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if not server.started:
            intent_server.close()
    if intent_server.fatal:
        raise IntentCIError(intent_server.fatal)
