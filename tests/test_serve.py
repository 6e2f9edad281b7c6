"""`intent-ci serve`: a real uvicorn server on 127.0.0.1, a real HTTP client, real releases.

Most tests run the server on a thread of the test process (a socket bound to a free port,
uvicorn serving it); one starts the `intent-ci serve` command as a subprocess and stops it
with SIGTERM. Every request count and wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from intent_ci.config import ServeConfig
from intent_ci.errors import IntentCIError
from intent_ci.lifecycle import rollback
from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier
from intent_ci.serve import IntentServer
from intent_ci.traffic import TRAFFIC_GLOB, text_sha256

TEXTS = [
    "my card was stolen",
    "what is my balance",
    "when do you open on the weekend",
    "please send money to my payee",
    "hello can you help me",
]


@pytest.fixture
def registry(tmp_path, trained_registry) -> Path:
    """A private copy of the session's registry (v1, v2; LATEST = v2) that a test may change."""
    return Path(shutil.copytree(trained_registry, tmp_path / "adapters"))


@contextlib.contextmanager
def running(registry: Path, **fields) -> Iterator[tuple[httpx.Client, IntentServer]]:
    """Serve `registry` on 127.0.0.1 (a free port) on a thread; yield a client and the server.

    Waits until the first release is loaded (or refused); stops the server on exit, which
    also closes the traffic log.
    """
    fields.setdefault("poll_interval_s", 0.1)
    intent_server = IntentServer(registry, ServeConfig(**fields))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(intent_server.app, access_log=False, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_for(lambda: server.started, what="server start")
        wait_for(
            lambda: intent_server.follower.current is not None or intent_server.follower.refused,
            what="first load",
        )
        yield client, intent_server
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    if thread.is_alive():
        raise RuntimeError("the server did not stop within 30 s")


def wait_for(condition: Callable[[], object], *, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def served_release(client: httpx.Client) -> str | None:
    return client.get("/release").json()["release"]


def test_predictions_match_the_classifier_and_concurrent_requests_share_batches(registry):
    expected = IntentClassifier.load(registry, "v2").predict(TEXTS)
    with running(registry, max_wait_ms=50) as (client, _):
        response = client.post("/predict", json={"texts": TEXTS})
        assert response.status_code == 200
        body = response.json()
        assert body["release"] == "v2"
        assert [p["intent"] for p in body["predictions"]] == [p.intent for p in expected]
        for got, want in zip(body["predictions"], expected, strict=True):
            assert got["confidence"] == pytest.approx(want.confidence, abs=1e-5)
            assert got["score"] == pytest.approx(want.score, abs=1e-4)
            assert got["in_scope"] == want.in_scope
            assert set(got) == {"intent", "confidence", "in_scope", "score"}

        # Eight clients at once, one text each: the batcher must put some of them together.
        results: list[httpx.Response] = []
        barrier = threading.Barrier(8)

        def one(text: str) -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
                barrier.wait()
                results.append(own.post("/predict", json={"texts": [text]}))

        threads = [threading.Thread(target=one, args=(TEXTS[i % 5],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in results] == [200] * 8
        for r in results:
            text_intent = r.json()["predictions"][0]["intent"]
            assert text_intent in {p.label for p in expected}
        metrics = client.get("/metrics").text
        batches = _sample(metrics, "intent_ci_serve_batch_texts_count")
        texts = _sample(metrics, "intent_ci_serve_batch_texts_sum")
        assert texts == len(TEXTS) + 8
        assert batches < 1 + 8, "eight concurrent requests ran as eight batches"
        assert _sample(metrics, 'intent_ci_serve_release_info{loaded_at="', contains="v2") == 1


def _sample(metrics: str, prefix: str, contains: str = "") -> float:
    for line in metrics.splitlines():
        if line.startswith(prefix) and contains in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {prefix}…{contains} in /metrics:\n{metrics}")


BAD_REQUESTS = [
    # (what, method, path, body bytes or JSON, expected status, expected field)
    ("not JSON", "POST", "/predict", b"where is my refund", 400, "body"),
    ("JSON that is not an object", "POST", "/predict", b'["hi"]', 400, "body"),
    ("not UTF-8", "POST", "/predict", b'{"texts": ["\xff\xfe"]}', 400, "body"),
    ("missing texts", "POST", "/predict", {"text": ["hi"]}, 422, "text"),
    ("no fields", "POST", "/predict", {}, 422, "texts"),
    ("texts is a string", "POST", "/predict", {"texts": "my card was stolen"}, 422, "texts"),
    ("a text is a number", "POST", "/predict", {"texts": ["hi", 3]}, 422, "texts[1]"),
    ("a text is null", "POST", "/predict", {"texts": [None]}, 422, "texts[0]"),
    ("a text is a list", "POST", "/predict", {"texts": [["hi"]]}, 422, "texts[0]"),
    ("empty list", "POST", "/predict", {"texts": []}, 422, "texts"),
    ("empty text", "POST", "/predict", {"texts": ["  "]}, 422, "texts[0]"),
    ("too many texts", "POST", "/predict", {"texts": ["hi"] * 9}, 422, "texts"),
    ("text too long", "POST", "/predict", {"texts": ["hi", "x" * 101]}, 422, "texts[1]"),
    ("lone surrogate", "POST", "/predict", b'{"texts": ["\\ud800"]}', 422, "texts[0]"),
    ("body too large", "POST", "/predict", {"texts": ["card " * 300]}, 413, "body"),
    ("wrong method", "GET", "/predict", None, 405, "method"),
    ("wrong method on healthz", "POST", "/healthz", b"{}", 405, "method"),
    ("wrong path", "GET", "/predictions", None, 404, "path"),
    # not Starlette's redirect to /predict, whose location comes from the Host header
    ("trailing slash", "POST", "/predict/", {"texts": ["card lost"]}, 404, "path"),
]


def test_bad_requests_get_a_4xx_naming_the_field_and_the_server_stays_up(registry):
    limits = {"max_texts": 8, "max_text_chars": 100, "max_body_bytes": 1000}
    with running(registry, **limits) as (client, _):
        for what, method, path, body, status, field in BAD_REQUESTS:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            response = client.request(method, path, **({} if body is None else kwargs))
            assert response.status_code == status, (what, response.text)
            error = response.json()
            assert error["field"] == field, (what, error)
            assert isinstance(error["error"], str) and error["error"], what
            assert client.get("/healthz").status_code == 200
        assert client.get("/predict").headers["allow"] == "POST"
        ok = client.post("/predict", json={"texts": ["my card was stolen"]})
        assert ok.status_code == 200
        metrics = client.get("/metrics").text
        assert _sample(metrics, "intent_ci_serve_errors_total", 'status="422"') >= 10
        assert _sample(metrics, "intent_ci_serve_errors_total", 'status="404"') == 2


def _hammer(client: httpx.Client, stop: threading.Event, seen: list, failures: list) -> None:
    """Send one-text requests until `stop`; record each response's release, and any failure."""
    with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
        i = 0
        while not stop.is_set():
            try:
                response = own.post("/predict", json={"texts": [TEXTS[i % len(TEXTS)]]})
                if response.status_code != 200:
                    failures.append(f"{response.status_code}: {response.text}")
                else:
                    seen.append(response.json()["release"])
            except httpx.HTTPError as err:
                failures.append(repr(err))
            i += 1


def test_swaps_on_add_intent_and_rollback_under_load_without_a_failed_request(registry, data_dir):
    from intent_ci.pipeline import add_intents

    with running(registry) as (client, server):
        stop, seen, failures = threading.Event(), [], []
        clients = [
            threading.Thread(target=_hammer, args=(client, stop, seen, failures)) for _ in range(4)
        ]
        for t in clients:
            t.start()
        try:
            wait_for(lambda: len(seen) >= 20, what="traffic on v2")
            assert add_intents(data_dir / "new" / "report_damage.txt", registry, "v2") == "v3"
            wait_for(lambda: "v3" in seen[-8:], what="v3 to be served")
            rollback(registry, "v1")
            wait_for(lambda: seen[-8:] == ["v1"] * 8, what="v1 to be served after the rollback")
        finally:
            stop.set()
            for t in clients:
                t.join()
        assert failures == []
        assert seen[0] == "v2" and seen[-1] == "v1" and set(seen) == {"v1", "v2", "v3"}
        assert seen.index("v3") < seen.index("v1")
        answer = client.post("/predict", json={"texts": TEXTS}).json()
        assert answer["release"] == "v1"
        assert {p["intent"] for p in answer["predictions"]} <= set(
            Registry(registry).manifest("v1")["intents"]
        )
        metrics = client.get("/metrics").text
        assert _sample(metrics, "intent_ci_serve_reloads_total", 'outcome="swapped"') == 2
        assert "intent_ci_serve_errors_total{" not in metrics


def _tampered_copy(registry: Path, source: str, name: str) -> None:
    """A release folder `name` made from `source`, with one byte of its head flipped."""
    target = registry / name
    shutil.copytree(registry / source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["release"], manifest["parent"] = name, source
    (target / "manifest.json").write_text(json.dumps(manifest))
    head = bytearray((target / "head.safetensors").read_bytes())
    head[-1] ^= 0x01
    (target / "head.safetensors").write_bytes(bytes(head))


def test_a_tampered_release_is_refused_and_the_old_one_keeps_serving(registry):
    with running(registry) as (client, _):
        _tampered_copy(registry, "v2", "v3")
        Registry(registry).move_latest("v3", "test: a damaged release becomes latest")
        wait_for(
            lambda: (client.get("/release").json()["refused"] or {}).get("release") == "v3",
            what="v3 to be refused",
        )
        release = client.get("/release").json()
        assert release["release"] == "v2"
        assert "head.safetensors" in release["refused"]["reason"]
        assert client.get("/readyz").status_code == 200
        time.sleep(0.3)  # a few more polls: the refused release is not tried again, nor served
        assert client.post("/predict", json={"texts": TEXTS}).json()["release"] == "v2"
        metrics = client.get("/metrics").text
        assert _sample(metrics, "intent_ci_serve_reloads_total", 'outcome="refused"') == 1
        assert _sample(metrics, "intent_ci_serve_refused_info", 'release="v3"') == 1
        rollback(registry, "v1")  # following goes on after a refusal
        wait_for(lambda: served_release(client) == "v1", what="v1 after the rollback")


def test_readiness_follows_whether_a_verified_release_is_loaded(registry):
    _tampered_copy(registry, "v2", "v3")
    Registry(registry).move_latest("v3", "test: a damaged release is latest at start")
    with running(registry) as (client, server):
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "v3 was refused" in ready.json()["reason"]
        refused = client.post("/predict", json={"texts": ["hi"]})
        assert refused.status_code == 503 and refused.json()["field"] is None
        assert client.get("/release").status_code == 503
        assert "intent_ci_serve_ready 0.0" in client.get("/metrics").text
        rollback(registry, "v2")
        wait_for(lambda: client.get("/readyz").status_code == 200, what="ready on v2")
        assert client.get("/readyz").json() == {"ready": True, "release": "v2"}
        assert "intent_ci_serve_ready 1.0" in client.get("/metrics").text


def test_a_pinned_release_never_moves_and_one_that_fails_stops_the_server(registry):
    with running(registry, release="v1") as (client, server):
        assert Registry(registry).latest() == "v2"
        time.sleep(0.5)  # five poll intervals
        assert client.post("/predict", json={"texts": TEXTS}).json()["release"] == "v1"
        release = client.get("/release").json()
        assert release["release"] == "v1" and release["follows"] is False
        assert release["manifest"]["intents"] == Registry(registry).manifest("v1")["intents"]

    _tampered_copy(registry, "v2", "v3")
    reasons: list[str] = []
    server = IntentServer(registry, ServeConfig(release="v3"), on_fatal=reasons.append)
    server.follower.start()
    server.follower.stop()  # joins after the one load attempt a pinned release gets
    assert server.follower.current is None
    assert len(reasons) == 1 and "release v3 cannot be served" in reasons[0]
    assert server.fatal == reasons[0]


def _read_log(folder: Path):
    from datasets import load_dataset

    files = sorted(str(p) for p in folder.glob(TRAFFIC_GLOB))
    return files, load_dataset("json", data_files=files, split="train")


def test_traffic_log_rows_rotation_and_datasets(registry, tmp_path):
    log = tmp_path / "traffic"
    with running(registry, traffic_log=str(log), log_max_bytes=600) as (client, _):
        answers = [client.post("/predict", json={"texts": TEXTS}).json() for _ in range(3)]
    files, rows = _read_log(log)
    assert len(files) >= 3, "600-byte files should have rotated"
    assert all(os.path.getsize(f) <= 600 for f in files)
    assert rows.num_rows == 3 * len(TEXTS)
    assert set(rows.column_names) == {
        "timestamp",
        "text",
        "release",
        "intent",
        "confidence",
        "in_scope",
        "score",
    }
    assert rows["text"] == TEXTS * 3
    assert rows["release"] == ["v2"] * 15
    predicted = [p for a in answers for p in a["predictions"]]
    assert rows["intent"] == [p["intent"] for p in predicted]
    assert rows["confidence"] == pytest.approx([p["confidence"] for p in predicted])
    assert all(t.endswith("Z") and "T" in t for t in rows["timestamp"])


def test_traffic_log_with_line_separators_and_escapes_reads_back(registry, tmp_path):
    """json.dumps(ensure_ascii=False) leaves U+2028 unescaped, and a control character takes 6
    characters in JSON: `discover` and `update` read every row the server wrote."""
    from intent_ci.data import read_examples
    from intent_ci.discover import read_traffic

    log = tmp_path / "traffic"
    texts = ["where is my refund\u2028please", "\x01" * 490 + "card", "my card was stolen"]
    with running(registry, traffic_log=str(log)) as (client, _):
        assert client.post("/predict", json={"texts": texts}).status_code == 200
    traffic = read_traffic([log], progress=False)
    assert traffic.total == 3 and len(traffic.texts) == 3
    assert any(t.startswith("where is my refund") for t in traffic.texts)
    # reviewed, the same log feeds `update`: one row per utterance, each on its own line
    (file,) = log.glob(TRAFFIC_GLOB)
    rows = [json.loads(line) for line in file.read_text(encoding="utf-8").split("\n") if line]
    reviewed = tmp_path / "reviewed.jsonl"
    reviewed.write_text(
        "".join(
            json.dumps({**row, "label": "card_lost"}, ensure_ascii=False) + "\n" for row in rows
        ),
        encoding="utf-8",
    )
    data = read_examples(reviewed)
    assert data.dataset["text"] == texts
    assert [s.rsplit(":", 1)[1] for s in data.dataset["source"]] == ["1", "2", "3"]


def test_a_client_that_hangs_up_mid_body_is_a_499_not_a_500(registry):
    with running(registry) as (client, server):
        port = client.base_url.port
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"texts": ["wh'
            )
            time.sleep(0.3)

        def counted() -> bool:
            return 'status="499"' in client.get("/metrics").text

        wait_for(counted, what="the 499 in /metrics", timeout=10)
        metrics = client.get("/metrics").text
        assert _sample(metrics, "intent_ci_serve_requests_total", 'status="499"') == 1
        assert 'status="500"' not in metrics
        assert client.post("/predict", json={"texts": TEXTS}).status_code == 200


def test_redacted_traffic_log_stores_hashes_not_texts(registry, tmp_path):
    log = tmp_path / "traffic"
    with running(registry, traffic_log=str(log), log_redact=True) as (client, _):
        client.post("/predict", json={"texts": TEXTS})
    files, rows = _read_log(log)
    assert "text" not in rows.column_names
    assert rows["text_sha256"] == [text_sha256(t) for t in TEXTS]
    raw = "".join(Path(f).read_text() for f in files)
    assert not any(t in raw for t in TEXTS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        # an empty host made uvicorn listen on every interface
        (["--host", ""], r"config field `serve.host`: must not be empty"),
        (["--host", "999.999.1.1"], r"--host '999.999.1.1': not an address this machine can"),
        (["--traffic-log", ""], r"config field `serve.traffic_log`: must not be empty"),
    ],
)
def test_serve_refuses_a_bad_address_or_log_folder_before_loading(registry, capsys, flags, message):
    from intent_ci.cli import main

    assert main(["serve", "--registry", str(registry), *flags]) == 2
    err = capsys.readouterr().err
    assert re.search(r"^intent-ci: error: " + message, err, re.M), err
    assert len(err.strip().splitlines()) == 1 and "Uvicorn" not in err


def test_cli_serves_until_sigterm_and_shuts_down_cleanly(registry, tmp_path):
    port, log = _free_port(), tmp_path / "traffic"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "intent_ci.cli", "serve", "--registry", str(registry)]
    bad = subprocess.run([*command, "--release", "v9"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown release 'v9'" in bad.stderr
    assert "Traceback" not in bad.stderr
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--traffic-log", str(log), "--max-wait-ms", "1"]
        + ["--drain-s", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited early:\n{proc.stdout.read()}")
                with contextlib.suppress(httpx.HTTPError):
                    return client.get("/readyz").status_code == 200
                return False

            wait_for(ready, what="intent-ci serve to be ready", timeout=90)
            answer = client.post("/predict", content=json.dumps({"texts": TEXTS}))
            assert answer.status_code == 200 and answer.json()["release"] == "v2"
            # The drain: from the signal on /readyz says not ready (a load balancer stops
            # sending), while /predict still answers for --drain-s seconds.
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            wait_for(
                lambda: client.get("/readyz").status_code == 503,
                what="503 after SIGTERM",
                timeout=2,
            )
            assert client.get("/readyz").json() == {"ready": False, "reason": "shutting down"}
            assert "intent_ci_serve_ready 0.0" in client.get("/metrics").text
            answer = client.post("/predict", content=json.dumps({"texts": TEXTS}))
            assert answer.status_code == 200 and answer.json()["release"] == "v2"
            assert time.monotonic() - signalled < 3, "the drain ended before the checks"
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert "traffic log: 10 rows" in output  # the drain's request too
    assert sum(1 for f in log.glob(TRAFFIC_GLOB) for _ in f.open()) == 2 * len(TEXTS)


def test_follows_an_alias_when_it_moves(registry):
    Registry(registry).set_alias("production", "v1")
    with running(registry, release="production") as (client, _):
        assert client.post("/predict", json={"texts": TEXTS}).json()["release"] == "v1"
        assert client.get("/release").json()["follows"] is True
        Registry(registry).set_alias("production", "v2")
        wait_for(lambda: served_release(client) == "v2", what="the alias's new release")
        assert client.post("/predict", json={"texts": TEXTS}).json()["release"] == "v2"


def test_onnx_runtime_answers_like_torch(registry):
    expected = IntentClassifier.load(registry, "v2").predict(TEXTS)
    with running(registry, runtime="onnx") as (client, server):
        assert type(server.follower.current.classifier.model).__name__ == "OnnxLogits"
        body = client.post("/predict", json={"texts": TEXTS}).json()
    assert [p["intent"] for p in body["predictions"]] == [p.intent for p in expected]
    for got, want in zip(body["predictions"], expected, strict=True):
        assert got["confidence"] == pytest.approx(want.confidence, abs=1e-4)
        assert got["score"] == pytest.approx(want.score, abs=1e-3)
        assert got["in_scope"] == want.in_scope


def test_replicas_sharing_a_log_folder_pid_and_start_second_write_separate_files(
    registry, tmp_path, monkeypatch
):
    """Containers sharing a log folder can all be pid 1 and start in the same second: each
    replica must still write files of its own, within --log-max-bytes."""
    import types

    import intent_ci.traffic as traffic

    fixed = types.SimpleNamespace(strftime=lambda fmt, t: "20260101T000000Z", gmtime=time.gmtime)
    monkeypatch.setattr(traffic, "time", fixed)
    log, max_bytes = tmp_path / "traffic", 3000
    with running(registry, traffic_log=str(log), log_max_bytes=max_bytes) as (a, _):
        with running(registry, traffic_log=str(log), log_max_bytes=max_bytes) as (b, _):
            for i in range(6):
                for name, client in (("a", a), ("b", b)):
                    texts = [f"replica {name} card lost {i} {j}" for j in range(8)]
                    assert client.post("/predict", json={"texts": texts}).status_code == 200
    files = sorted(log.glob(TRAFFIC_GLOB))
    assert len(files) >= 4, [f.name for f in files]  # both replicas rotated
    for f in files:
        rows = [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
        assert len({r["text"].split()[1] for r in rows}) == 1, f"{f.name} holds both replicas"
        assert f.stat().st_size <= max_bytes, f"{f.name}: {f.stat().st_size} bytes"
    assert sum(1 for f in files for _ in f.open()) == 2 * 6 * 8


def test_discover_skips_a_log_file_its_killed_server_left_without_a_row(registry, tmp_path):
    """A server killed between opening a log file and writing its first row out leaves it
    empty or holding half a row; discover reads the rest of the folder, with a warning."""
    from intent_ci.discover import read_traffic

    log = tmp_path / "traffic"
    with running(registry, traffic_log=str(log)) as (client, _):
        assert client.post("/predict", json={"texts": TEXTS}).status_code == 200
    (written,) = log.glob(TRAFFIC_GLOB)
    first_row = written.read_text(encoding="utf-8").splitlines()[0]
    (log / "traffic-20260101T000000Z-7-00c0ffee-00002.jsonl").write_bytes(b"")
    (log / "traffic-20260101T000000Z-8-00c0ffee-00001.jsonl").write_text(
        first_row[:40], encoding="utf-8"
    )
    assert read_traffic([log], progress=False).total == len(TEXTS)
    # Outside the serve log's names an empty file is still the user's mistake.
    (log / "mine.jsonl").write_bytes(b"")
    with pytest.raises(IntentCIError, match=r"mine\.jsonl: traffic file is empty"):
        read_traffic([log], progress=False)


def test_a_release_refused_while_incomplete_is_served_once_its_files_arrive(registry):
    """A registry copied by hand or seen through a shared filesystem can show a release before
    all its files: refused then, retried once its files change."""
    with running(registry) as (client, _):
        staging = registry / ".v3-staging"
        shutil.copytree(registry / "v2", staging)
        manifest = json.loads((staging / "manifest.json").read_text())
        manifest["release"] = "v3"
        (staging / "manifest.json").write_text(json.dumps(manifest))
        head = (staging / "head.safetensors").read_bytes()
        (staging / "head.safetensors").unlink()  # not there yet
        staging.rename(registry / "v3")
        Registry(registry).move_latest("v3", "test: a release whose head arrives late")
        wait_for(
            lambda: (client.get("/release").json()["refused"] or {}).get("release") == "v3",
            what="v3 to be refused while incomplete",
        )
        assert served_release(client) == "v2"
        (registry / "v3" / "head.safetensors").write_bytes(head)  # the file arrives
        wait_for(lambda: served_release(client) == "v3", what="v3 once complete", timeout=10)
        answer = client.post("/predict", json={"texts": ["my card was stolen"]}).json()
        assert answer["release"] == "v3"
