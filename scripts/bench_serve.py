#!/usr/bin/env python
"""`intent-ci serve` under closed-loop load, against the same release used in-process.

    python scripts/bench_serve.py                       # builds a MiniLM registry if needed
    python scripts/bench_serve.py --registry runs/qs    # or serve the latest release of a registry

writes ``scripts/results/bench_serve.{json,md,png}``. What it does, in one run:

1. **In-process baseline** (`IntentClassifier.load(..., merge_lora=True)`, the release the server
   loads): `predict` on all of data/test in batches of 64 (utterances/s), and one utterance
   per call (latency), before and after the server phases, and again right before each server
   cell: the machine is shared, its load changes from minute to minute, and each floor
   compares a cell with the baseline measured just before it.
2. **Server cells**: `intent-ci serve` started as a real subprocess on 127.0.0.1, then closed-loop
   clients (each sends its next request when the previous answer arrives) at concurrency 1, 8
   and 32, with 1 and 16 texts per request, each cell bounded by a request count and a time
   limit. Requests/s, utterances/s, p50/p95/p99 latency and failures per cell.
3. **Swap under load**: 8 clients keep sending while `intent-ci add-intent` makes a new release
   (the server follows `latest`, loads and verifies it, swaps) and `intent-ci rollback` moves
   `latest` back. Every request must succeed; the releases seen in the answers are recorded.
4. **ONNX Runtime vs torch** on the merged model, same padded batches: time per batch of 64 and
   per single utterance, and max |Δprob| over data/test. ONNX would be adopted only if faster
   with max |Δprob| ≤ 1e-4.

Floors (issue 15): concurrency 32 × 1 text ≥ 70% of the in-process batch utterances/s; p99 at
concurrency 1 × 1 text ≤ 2 × the in-process single-utterance median latency; zero failed
requests, including the swap phase. The client runs in this process, on the same cores as the
server: its own cost (HTTP, JSON) is part of what the server's numbers pay for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from intent_ci.data import read_examples  # noqa: E402
from intent_ci.registry import Registry  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402

RESULTS = REPO / "scripts" / "results"
CELLS = [(c, n) for c in (1, 8, 32) for n in (1, 16)]
FLOOR_SHARE = 0.70
FLOOR_LATENCY_FACTOR = 2.0
ONNX_TOLERANCE = 1e-4


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "intent_ci.cli", *args], env=env, text=True, **kwargs
    )


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def latency_summary(seconds: list[float]) -> dict[str, float]:
    ms = [1000 * s for s in seconds]
    return {f"p{q}_ms": round(pct(ms, q), 2) for q in (50, 95, 99)}


# ---- 1. in-process baseline ------------------------------------------------------------------
def in_process(clf: IntentClassifier, texts: list[str], rounds: int, singles: int) -> dict:
    clf.predict(texts[:64])  # warm-up: first calls allocate
    batch_s = []
    for _ in range(rounds):
        start = time.perf_counter()
        clf.predict(texts, batch_size=64)
        batch_s.append(time.perf_counter() - start)
    if not singles:
        return {"batch_utterances_per_s": round(len(texts) / float(np.median(batch_s)), 1)}
    single = []
    for text in (texts * 4)[:singles]:
        start = time.perf_counter()
        clf.predict([text])
        single.append(time.perf_counter() - start)
    return {
        "batch_utterances_per_s": round(len(texts) / float(np.median(batch_s)), 1),
        "batch_rounds": rounds,
        "single_calls": singles,
        "single_median_ms": round(1000 * float(np.median(single)), 2),
        "single_p99_ms": round(1000 * pct(single, 99), 2),
    }


# ---- 2./3. closed-loop load on the real server -----------------------------------------------
class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON: the load generator's client.

    httpx spends about a millisecond of CPU per request; on a 2-core machine that CPU is taken
    from the server being measured, and for one-utterance requests it is comparable to
    MiniLM's own cost. Load generators (wrk, oha) are lean for this reason; this one is too:
    a request line, three headers, and a response read by its Content-Length.
    """

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, payload: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n"
            % (path.encode(), self.host.encode(), len(payload))
            + payload
        )
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            return int(head[9:12]), await self.reader.readexactly(length)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(
    url: str,
    concurrency: int,
    per_request: int,
    texts: list[str],
    *,
    max_requests: int,
    max_seconds: float,
    stop: asyncio.Event | None = None,
) -> dict:
    """`concurrency` clients, each sending its next request when its previous answer arrives."""
    latencies: list[float] = []
    failures: list[str] = []
    releases: Counter = Counter()
    sent = 0
    deadline = time.monotonic() + max_seconds

    async def worker(w: int) -> None:
        nonlocal sent
        connection = Connection(url)
        i = w
        while sent < max_requests and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            sent += 1
            batch = [texts[(i * per_request + k) % len(texts)] for k in range(per_request)]
            i += concurrency
            start = time.perf_counter()
            try:
                status, body = await connection.post(
                    "/predict", json.dumps({"texts": batch}).encode()
                )
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
                failures.append(repr(err))
                continue
            if status != 200:
                failures.append(f"{status} {body[:200]!r}")
                continue
            latencies.append(time.perf_counter() - start)
            releases[json.loads(body)["release"]] += 1
        connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - start
    done = len(latencies)
    return {
        "concurrency": concurrency,
        "texts_per_request": per_request,
        "requests": done,
        "failed": len(failures),
        "failures": failures[:5],
        "seconds": round(elapsed, 2),
        "requests_per_s": round(done / elapsed, 1),
        "utterances_per_s": round(done * per_request / elapsed, 1),
        **latency_summary(latencies),
        "releases": dict(releases),
    }


async def batch_sizes(url: str) -> tuple[float, float]:
    """(batches, texts) run by the server so far, from its /metrics."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        metrics = (await client.get("/metrics")).text
    values = {}
    for line in metrics.splitlines():
        for key in ("intent_ci_serve_batch_texts_count", "intent_ci_serve_batch_texts_sum"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    return values["intent_ci_serve_batch_texts_count"], values["intent_ci_serve_batch_texts_sum"]


async def served(url: str) -> str | None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return (await client.get("/release")).json()["release"]


async def wait_served(url: str, release: str, timeout: float) -> float:
    start = time.monotonic()
    while await served(url) != release:
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"the server did not switch to {release} within {timeout} s")
        await asyncio.sleep(0.2)
    return time.monotonic() - start


async def swap_under_load(url: str, registry: Path, texts: list[str], new_intent: Path) -> dict:
    """8 clients run while add-intent makes a release and rollback moves latest back.

    add-intent trains one epoch (``train.add_intent_epochs: 1``): what is measured here is the
    swap, not the new release's accuracy, and one epoch keeps the phase short on a busy machine.
    """
    overrides = registry.parent / "one_epoch.yaml"
    overrides.write_text("train:\n  add_intent_epochs: 1\n")
    stop = asyncio.Event()
    before = Registry(registry).latest()
    events: dict = {"served_before": before}

    async def driver() -> None:
        try:
            start = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "intent_ci.cli", "add-intent", "--data", str(new_intent),
                "--registry", str(registry), "--config", str(overrides),
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"add-intent failed: {err.decode()[-500:]}")
            new = Registry(registry).latest()
            events.update(added=new, add_intent_s=round(time.monotonic() - start, 1))
            events["swap_after_commit_s"] = round(await wait_served(url, new, 300), 2)
            rolled = await asyncio.to_thread(
                cli, "rollback", before, "--registry", str(registry), capture_output=True
            )
            if rolled.returncode != 0:
                raise RuntimeError(f"rollback failed: {rolled.stderr}")
            events["rollback_swap_s"] = round(await wait_served(url, before, 300), 2)
            await asyncio.sleep(2)  # traffic on the rolled-back release too
        finally:
            stop.set()

    load, _ = await asyncio.gather(
        closed_loop(url, 8, 1, texts, max_requests=10**9, max_seconds=1800, stop=stop), driver()
    )
    return {**events, **load}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    registry: Path, port: int, log: Path, threads: int, runtime: str = "torch"
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "intent_ci.cli", "serve", "--registry", str(registry)]
    command += ["--port", str(port), "--poll-interval-s", "0.5", "--threads", str(threads)]
    command += ["--runtime", runtime]
    proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"intent-ci serve exited:\n{log.read_text()[-2000:]}")
            try:
                if client.get("/readyz").status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
    proc.kill()
    raise TimeoutError("intent-ci serve was not ready within 600 s")


# ---- 4. ONNX Runtime against torch ---------------------------------------------------------
class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def onnx_against_torch(clf: IntentClassifier, texts: list[str], rounds: int) -> dict:
    import onnxruntime as ort

    model = _Logits(clf.model).eval()
    tok, max_length = clf.tokenizer, clf.release.config.model.max_length
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "release.onnx"
        example = tok(texts[:2], padding=True, return_tensors="pt")
        torch.onnx.export(
            model,
            (example["input_ids"], example["attention_mask"]),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in ("input_ids", "attention_mask")}
            | {"logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the same threads as torch
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def batches(size: int) -> list[dict[str, torch.Tensor]]:
        out = []
        for i in range(0, len(texts), size):
            enc = tok(texts[i : i + size], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")  # fmt: skip
            out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        return out

    def run_torch(b):
        with torch.inference_mode():
            return model(**b).softmax(-1).numpy()

    def run_ort(b):
        logits = session.run(["logits"], {k: v.numpy() for k, v in b.items()})[0]
        return torch.from_numpy(logits).softmax(-1).numpy()

    result: dict = {}
    for name, size in (("batch64", 64), ("single", 1)):
        data = batches(size)
        if name == "single":
            data = data[:120]
        max_diff = max(float(np.abs(run_torch(b) - run_ort(b)).max()) for b in data)
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for r in range(rounds):
            # alternate the order each round, so load changes on the shared machine hit both
            order = [("torch", run_torch), ("onnxruntime", run_ort)]
            for engine, fn in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                for b in data:
                    fn(b)
                times[engine].append(time.perf_counter() - start)
        n = sum(len(b["input_ids"]) for b in data)
        result[name] = {
            "utterances": n,
            "torch_utterances_per_s": round(n / float(np.median(times["torch"])), 1),
            "onnxruntime_utterances_per_s": round(n / float(np.median(times["onnxruntime"])), 1),
            "max_abs_dprob": max_diff,
        }
    faster = all(
        r["onnxruntime_utterances_per_s"] > r["torch_utterances_per_s"] for r in result.values()
    )
    close = all(r["max_abs_dprob"] <= ONNX_TOLERANCE for r in result.values())
    result["adopt"] = faster and close
    result["versions"] = {"onnxruntime": ort.__version__, "torch": torch.__version__}
    return result


# ---- report ----------------------------------------------------------------------------------
def write_report(result: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    base, floors = result["in_process"], result["floors"]
    lines = [
        "# `intent-ci serve` under closed-loop load (MiniLM, CPU)",
        "",
        f"`{result['command']}` on {result['machine']}. Release {result['release']} "
        f"({result['intents']} intents, all-MiniLM-L6-v2, LoRA merged), utterances from data/test "
        f"({result['utterances']}). Server: `intent-ci serve` defaults (max batch 64, max wait 2 ms), "
        f"its own process, `--threads {result['threads']}`; the in-process baseline also runs "
        f"{result['threads']} torch thread(s); clients: a lean asyncio HTTP/1.1 client in this process, on the same cores. 1-minute load "
        f"average {result['load_before']:.1f} before and {result['load_after']:.1f} after "
        f"({'2 cores: other jobs shared the machine' if max(result['load_before'], result['load_after']) > 1.5 else 'a quiet machine'}). "
        f"{result['wall_s']:.0f} s in all.",
        "",
        "## In-process baseline (`IntentClassifier.predict`)",
        "",
        "| when | batch of 64: utterances/s | one utterance per call: median ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for when in ("before", "after"):
        b = base[when]
        lines.append(
            f"| {when} the server runs | {b['batch_utterances_per_s']} | "
            f"{b['single_median_ms']} | {b['single_p99_ms']} |"
        )
    lines += [
        "",
        "## Server, closed loop",
        "",
        "| concurrency | texts/request | requests | failed | requests/s | utterances/s | p50 ms | p95 ms | p99 ms | texts per forward pass | in-process utterances/s just before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        lines.append(
            f"| {c['concurrency']} | {c['texts_per_request']} | {c['requests']} | {c['failed']} | "
            f"{c['requests_per_s']} | {c['utterances_per_s']} | {c['p50_ms']} | {c['p95_ms']} | "
            f"{c['p99_ms']} | {c['mean_batch_texts']} | {c['in_process']['batch_utterances_per_s']} |"
        )
    s = result["swap"]
    lines += [
        "",
        "## Swap under load (8 clients, 1 text each)",
        "",
        f"`intent-ci add-intent` (one epoch) made {s['added']} ({s['add_intent_s']} s, while the clients ran); "
        f"the server served it {s['swap_after_commit_s']} s after the commit; `intent-ci rollback "
        f"{s['served_before']}` was served {s['rollback_swap_s']} s later. {s['requests']} requests, "
        f"**{s['failed']} failed**; answers by release: "
        + ", ".join(f"{k}: {v}" for k, v in s["releases"].items())
        + f". Latency p50/p95/p99 {s['p50_ms']}/{s['p95_ms']}/{s['p99_ms']} ms (the add-intent "
        "training shared the cores).",
        "",
        "## Floors",
        "",
        "| floor | measured | bar | met |",
        "|---|---|---|---|",
    ]
    for f in floors:
        lines.append(
            f"| {f['floor']} | {f['measured']} | {f['bar']} | {'yes' if f['met'] else '**no**'} |"
        )
    o = result["onnx"]
    lines += [
        "",
        "## ONNX Runtime vs torch (merged release, same padded batches, CPU)",
        "",
        "| input | torch utterances/s | ONNX Runtime utterances/s | max abs Δprob |",
        "|---|---|---|---|",
    ]
    for name in ("batch64", "single"):
        r = o[name]
        lines.append(
            f"| {name} ({r['utterances']} utterances) | {r['torch_utterances_per_s']} | "
            f"{r['onnxruntime_utterances_per_s']} | {r['max_abs_dprob']:.2e} |"
        )
    lines += [
        "",
        f"Adopt ONNX Runtime (faster on both and max |Δprob| ≤ {ONNX_TOLERANCE:g}): "
        f"**{'yes' if o['adopt'] else 'no'}**. Tokenization is outside both timings.",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    plot(result, out.with_suffix(".png"))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = result["cells"]
    labels = [f"c{c['concurrency']}×{c['texts_per_request']}" for c in cells]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(labels, [c["utterances_per_s"] for c in cells], color="tab:blue")
    paired = [c["in_process"]["batch_utterances_per_s"] for c in cells]
    a.plot(
        labels, paired, "k_", markersize=30, mew=2, label="in-process, batches of 64, just before"
    )
    a.plot(labels, [FLOOR_SHARE * p for p in paired], "r_", markersize=30, label="70% of it")
    a.set_ylabel("utterances/s")
    a.set_title("throughput (concurrency × texts/request)")
    a.legend(fontsize=8)
    x = np.arange(len(cells))
    for q, color in (("p50_ms", "tab:green"), ("p99_ms", "tab:orange")):
        b.plot(x, [c[q] for c in cells], "o-", color=color, label=q.replace("_ms", ""))
    b.set_xticks(x, labels)
    b.set_yscale("log")
    b.set_ylabel("latency, ms")
    b.set_title("request latency")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_registry(path: Path) -> None:
    """A MiniLM release as `intent-ci quickstart` makes its v1: the 14 intents of data/base."""
    made = cli("init", "--data", str(REPO / "data" / "base"), "--backbone",
               "packaged:all-MiniLM-L6-v2", "--registry", str(path), capture_output=True)  # fmt: skip
    if made.returncode != 0:
        raise SystemExit(f"init failed:\n{made.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--registry",
        type=Path,
        default=Path("runs/bench_serve_registry"),
        help="MiniLM registry to serve (copied; made by quickstart if missing)",
    )
    parser.add_argument("--requests", type=int, default=2000, help="most requests per cell")
    parser.add_argument("--seconds", type=float, default=20, help="longest time per cell")
    parser.add_argument("--rounds", type=int, default=5, help="in-process and ONNX rounds")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_serve")
    # One torch thread per process by default: on a shared 2-core machine OpenMP threads that
    # wait for busy cores slow every forward pass several-fold (tests/conftest.py). The server
    # (--threads), add-intent (OMP_NUM_THREADS) and the in-process baseline all get the same.
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"],
                        help="the server's --runtime (the in-process baseline is torch)")  # fmt: skip
    parser.add_argument(
        "--cells",
        nargs="*",
        default=[f"{c}x{n}" for c, n in CELLS],
        help="CONCURRENCYxTEXTS cells to run (default: all six)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="cells only: no swap phase, no ONNX comparison, no report files",
    )
    args = parser.parse_args()  # fmt: skip
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    load_before = os.getloadavg()[0]
    if not Registry(args.registry).releases():
        build_registry(args.registry)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    registry = Path(shutil.copytree(args.registry, work / "adapters"))
    texts = list(read_examples(REPO / "data" / "test").dataset["text"])
    release = Registry(registry).latest()

    clf = IntentClassifier.load(registry, release, merge_lora=True)
    before = in_process(clf, texts, args.rounds, singles=200)
    print("in-process before:", before, flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(registry, port, work / "serve.log", args.threads, args.runtime)
    cells = []
    try:
        for concurrency, per_request in (tuple(map(int, c.split("x"))) for c in args.cells):
            asyncio.run(closed_loop(url, concurrency, per_request, texts, max_requests=2 * concurrency,
                                    max_seconds=30))  # fmt: skip  # warm-up, not recorded
            # The in-process baseline again, right before the cell: on a shared machine the load
            # changes from minute to minute, so each cell is compared with its own baseline.
            paired = in_process(clf, texts, 2, singles=100 if concurrency == 1 else 0)
            batches, ran = asyncio.run(batch_sizes(url))
            cell = asyncio.run(closed_loop(url, concurrency, per_request, texts,
                                           max_requests=args.requests, max_seconds=args.seconds))  # fmt: skip
            batches_after, ran_after = asyncio.run(batch_sizes(url))
            cell["in_process"] = paired
            cell["mean_batch_texts"] = round((ran_after - ran) / max(1, batches_after - batches), 1)
            print(cell, flush=True)
            cells.append(cell)
        if args.quick:
            Path(args.out).with_suffix(".json").write_text(json.dumps(cells, indent=2) + "\n")
            return
        swap = asyncio.run(
            swap_under_load(url, registry, texts, REPO / "data" / "new" / "report_damaged_item.txt")
        )
        print("swap:", swap, flush=True)
    finally:
        server.terminate()
        server.wait(timeout=120)
    after = in_process(clf, texts, args.rounds, singles=200)
    print("in-process after:", after, flush=True)
    onnx = onnx_against_torch(clf, texts, args.rounds)
    print("onnx:", onnx, flush=True)

    c32 = next(c for c in cells if c["concurrency"] == 32 and c["texts_per_request"] == 1)
    c1 = next(c for c in cells if c["concurrency"] == 1 and c["texts_per_request"] == 1)
    best_batch = c32["in_process"]["batch_utterances_per_s"]
    best_single = c1["in_process"]["single_median_ms"]
    failed = sum(c["failed"] for c in cells) + swap["failed"]
    floors = [
        {
            "floor": "concurrency 32 × 1 text: utterances/s vs in-process batches of 64 (measured just before the cell)",
            "measured": f"{c32['utterances_per_s']} ({c32['utterances_per_s'] / best_batch:.0%})",
            "bar": f">= {FLOOR_SHARE:.0%} of {best_batch}",
            "met": c32["utterances_per_s"] >= FLOOR_SHARE * best_batch,
        },
        {
            "floor": "concurrency 1 × 1 text: p99 latency vs in-process single-utterance median (measured just before the cell)",
            "measured": f"{c1['p99_ms']} ms",
            "bar": f"<= {FLOOR_LATENCY_FACTOR:g} × {best_single} ms",
            "met": c1["p99_ms"] <= FLOOR_LATENCY_FACTOR * best_single,
        },
        {
            "floor": "failed requests (all cells and the swap phase)",
            "measured": str(failed),
            "bar": "0",
            "met": failed == 0,
        },
    ]
    result = {
        "command": shlex.join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"torch {torch.__version__}",
        "release": release,
        "threads": args.threads,
        "intents": len(clf.intents),
        "utterances": len(texts),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "in_process": {"before": before, "after": after},
        "cells": cells,
        "swap": swap,
        "floors": floors,
        "onnx": onnx,
        "wall_s": time.perf_counter() - started,
    }
    write_report(result, args.out)
    shutil.rmtree(work, ignore_errors=True)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
