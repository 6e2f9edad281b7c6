"""Data parallelism: the release scripts under `torchrun --nproc_per_node 2` (Accelerate
MULTI_CPU over gloo), checked against single-process runs, plus killed ranks.

The two-process releases are trained once per module (`dp_registry`) and reused.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock
from safetensors.torch import load_file

from intent_ci.config import ReleaseConfig, apply_overrides
from intent_ci.data import INTENT, TEXT, read_examples
from intent_ci.pipeline import add_intents, init_release, update_release
from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier
from tests.conftest import BASE_INTENTS, make_utterances, snapshot, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
EXIT_TIMEOUT_S = 120  # every rank must be gone within this after a failure: no hangs

# Measured with scripts/bench_dp_agreement.py (scripts/results/dp_agreement.md): two processes
# at batch B against one process at batch 2B (the same global batches and schedule) gave 100%
# identical predictions and max |d prob| 1.6e-4 on the tiny model; the bound leaves room for
# other thread counts and CPUs, and one near-tie flipping.
SAME_PREDICTION_MIN = 0.97
MAX_PROB_DIFF = 2e-3


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def _torchrun_cmd(script: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(script),
        *args,
    ]


def _torchrun(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        _torchrun_cmd(REPO / "scripts" / script, *args),
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _known_test_dir(data_dir: Path, root: Path, intents: list[str]) -> Path:
    folder = root / f"test_{len(intents)}"
    folder.mkdir(exist_ok=True)
    for intent in intents:
        shutil.copy(data_dir / "test" / f"{intent}.txt", folder / f"{intent}.txt")
    return folder


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, tiny_backbone, data_dir):
    """v1 and v2 trained by `torchrun --nproc_per_node 2`, each scored on held-out data whose
    size is not a multiple of processes x eval batch (40 and 50 rows, 2 x 32)."""
    root = tmp_path_factory.mktemp("dp")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(tiny_backbone)))
    registry = root / "adapters"
    test_v1 = _known_test_dir(data_dir, root, BASE_INTENTS)
    test_v2 = _known_test_dir(data_dir, root, [*BASE_INTENTS, "refund_status"])
    init = _torchrun(
        "init_release.py",
        *("--data", str(data_dir / "base"), "--config", str(config)),
        *("--registry", str(registry), "--eval-data", str(test_v1)),
        cwd=root,
    )
    add = _torchrun(
        "add_intent.py",
        *("--data", str(data_dir / "new" / "refund_status.txt")),
        *("--registry", str(registry), "--eval-data", str(test_v2)),
        cwd=root,
    )
    return {"init": init, "add": add, "registry": registry, "test_v1": test_v1, "test": test_v2}


def _torchrun_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m intent_ci.cli ARGS`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    return subprocess.run(
        [*command, "-m", "intent_ci.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_single_process_commands_under_torchrun_run_once(dp_run, tmp_path):
    """A command that does not train works in one process even when launched on two: `retire`
    wrote a release per process (and the second found LATEST moved: exit 1), `eval --json`
    printed two JSON documents, and a user mistake was reported by every process."""
    registry = Path(shutil.copytree(dp_run["registry"], tmp_path / "adapters"))
    retire = _torchrun_cli("retire", "opening_hours", "--registry", str(registry), cwd=tmp_path)
    assert retire.returncode == 0, retire.stderr[-3000:]
    assert Registry(registry).releases() == ["v1", "v2", "v3"]
    assert retire.stdout.count("v3") >= 1 and retire.stdout == retire.stdout.strip() + "\n"
    test = dp_run["test"]
    args = ("eval", "--release", "v2", "--data", str(test), "--registry", str(registry))
    run = _torchrun_cli(*args, "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["release"] == "v2"  # one document
    bad = _torchrun_cli("eval", "--release", "v9", "--data", str(test), cwd=tmp_path)
    assert bad.returncode != 0
    assert bad.stderr.count("intent-ci: error: ") == 1, bad.stderr[-3000:]
    # A data-parallel command: every process reads the input and says so, the others naming
    # themselves (an error only one process meets must show, so none is silenced).
    missing = str(tmp_path / "missing.txt")
    add = _torchrun_cli("add-intent", "--data", missing, "--registry", str(registry), cwd=tmp_path)
    assert add.returncode != 0
    assert add.stderr.count("intent-ci: error: ") == 1, add.stderr[-3000:]
    assert add.stderr.count("intent-ci: error (process 2 of 2): ") == 1, add.stderr[-3000:]
    assert Registry(registry).releases() == ["v1", "v2", "v3"]


def test_discover_under_torchrun_shares_the_scoring_and_matches_one_process(
    dp_run, data_dir, tmp_path
):
    """`discover` on 2 processes: each scores and embeds half of the traffic, every process gets
    the gathered embeddings, the main one writes. The candidates are one process's."""
    from intent_ci.cli import main

    traffic = tmp_path / "traffic.txt"
    damage = (data_dir / "new" / "report_damage.txt").read_text().splitlines()
    known = (data_dir / "test" / "card_lost.txt").read_text().splitlines()
    traffic.write_text("\n".join(damage + damage[:5] + known) + "\n")
    config = tmp_path / "discover.yaml"
    config.write_text(
        "discover:\n  max_margin: 1.0\n  similarity: 0.3\n  features: release\n  batch_size: 8\n"
    )
    args = ("discover", "--registry", str(dp_run["registry"]), "--traffic", str(traffic))
    args += ("--config", str(config), "--release", "v2")
    run = _torchrun_cli(*args, "--out", str(tmp_path / "two"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote ") == 1 and run.stdout.count("traffic: ") == 1, run.stdout
    # The main process scored half of the 50 distinct utterances: 4 batches of 8, not 7.
    assert re.search(r"scoring traffic: 100%.*\| 4/4 ", run.stderr), run.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "candidates.json").read_text())
    one = json.loads((tmp_path / "one" / "candidates.json").read_text())
    assert two["candidates"], "the traffic should form candidates"
    assert two["considered"] == one["considered"]

    def shape(result: dict) -> list:
        return [
            (c["name"], c["size"], sorted(u["text"] for u in c["utterances"]))
            for c in result["candidates"]
        ]

    assert shape(two) == shape(one)


def test_init_and_add_intent_under_torchrun(dp_run):
    init, add, registry = dp_run["init"], dp_run["add"], dp_run["registry"]
    # torchrun exits 0 only if every rank did.
    assert init.returncode == 0, init.stderr[-3000:]
    assert add.returncode == 0, add.stderr[-3000:]

    reg = Registry(registry)
    assert reg.releases() == ["v1", "v2"], (
        "exactly one release per job, written once by the main process"
    )
    assert not [p for p in registry.iterdir() if p.name.startswith(".staging-")]
    manifest = reg.verify("v2")
    assert manifest["training"]["processes"] == 2
    assert manifest["intents"] == [*BASE_INTENTS, "refund_status"]
    # Every example trained once per epoch in total, not once per rank, and Accelerate's
    # repeats that even out the last batch (200 = 6 x 32 + 8 rows) are not trained on.
    epochs = manifest["config"]["train"]["add_intent_epochs"]
    # 40 new utterances, 4 of them held out for out-of-scope calibration, + 8 replayed per intent
    assert manifest["metrics"]["calibration_examples"] == 4
    assert manifest["metrics"]["train_examples"] == 36 + 8 * len(BASE_INTENTS)
    assert manifest["metrics"]["replay_examples"] == 8 * len(BASE_INTENTS)
    assert manifest["metrics"]["train"]["examples_trained"] == (36 + 8 * 4) * epochs
    assert (
        reg.manifest("v1")["metrics"]["train"]["examples_trained"]
        == 144 * reg.manifest("v1")["config"]["train"]["epochs"]  # 160 less 16 held out
    )
    # Evaluation through gather_for_metrics: 40 and 50 rows on 2 ranks x 32 count exactly once.
    assert reg.manifest("v1")["metrics"]["eval"]["n"] == 40
    assert manifest["metrics"]["eval"]["n"] == 50
    # The summary and the progress bars come from the main process only.
    assert add.stdout.count("v2: 5 intents") == 1
    assert init.stderr.count("train:   0%") == 1 and add.stderr.count("train:   0%") == 1
    clf = IntentClassifier.load(registry, "v2")
    assert len(clf.predict(["refund credited please", "card lost"])) == 2


def _probs(registry: Path, release: str, test: Path) -> tuple[list[str], torch.Tensor]:
    clf = IntentClassifier.load(registry, release, device="cpu")
    data = read_examples(test)
    keep = [i for i, y in enumerate(data.dataset[INTENT]) if y in clf.intents]
    probs = clf.predict_proba([data.dataset[TEXT][i] for i in keep])
    return [clf.intents[i] for i in probs.argmax(-1).tolist()], probs


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


# Manifest fields that legitimately differ between a 2-process and a 1-process run.
DIFFERS = (
    "training.processes",  # 2 vs 1
    "created_at",
    "metrics.wall_time_s",
    "metrics.compute_s",
    "metrics.train.wall_time_s",
    "metrics.train.steps",  # batches per rank: half as many on two ranks
    "metrics.train.loss_per_epoch",  # the same up to float summation order
    "files.",  # weights equal up to float summation order, so hashes differ
)


def test_data_parallel_matches_one_process_with_the_same_global_batch(
    dp_run, tmp_path, tiny_backbone, data_dir
):
    """2 processes x batch 16 take the same steps as 1 process x batch 32: same release
    content, predictions equal up to float summation order."""
    registry = tmp_path / "adapters"
    config = apply_overrides(
        ReleaseConfig(), tiny_overrides(tiny_backbone, train={"batch_size": 32}), source="test"
    )
    init_release(data_dir / "base", registry, config, eval_data=dp_run["test_v1"])
    add_intents(data_dir / "new" / "refund_status.txt", registry, "v1", eval_data=dp_run["test"])
    single, dp = Registry(registry), Registry(dp_run["registry"])
    for release, test in (("v1", dp_run["test_v1"]), ("v2", dp_run["test"])):
        a, b = _flatten(single.verify(release)), _flatten(dp.verify(release))
        assert a.keys() == b.keys()
        differing = {
            k
            for k in a
            if a[k] != b[k]
            and not k.startswith(DIFFERS)
            and not k.startswith("metrics.eval.")  # compared with a tolerance below
            and k != "config.train.batch_size"
            and k != "oos.threshold"  # a score of the weights: compared with a tolerance below
            and not k.startswith("oos.standardise.")  # the same, compared below
        }
        assert not differing, {k: (a[k], b[k]) for k in differing}
        assert a["config.train.batch_size"] == 2 * b["config.train.batch_size"]
        assert a["training.processes"] == 1 and b["training.processes"] == 2
        assert a["metrics.train.steps"] == b["metrics.train.steps"]
        # energy_knn is in standard deviations of the calibration scores: an absolute tolerance.
        assert a["oos.threshold"] == pytest.approx(b["oos.threshold"], abs=5e-3)
        for k in (k for k in a if k.startswith("oos.standardise.")):
            assert a[k] == pytest.approx(b[k], rel=1e-3), k
        loss_a = [e["loss"] for e in a["metrics.train.loss_per_epoch"]]
        loss_b = [e["loss"] for e in b["metrics.train.loss_per_epoch"]]
        assert loss_a == pytest.approx(loss_b, rel=1e-3)
        assert a["metrics.eval.n"] == b["metrics.eval.n"]
        assert abs(a["metrics.eval.accuracy"] - b["metrics.eval.accuracy"]) <= (
            1 - SAME_PREDICTION_MIN
        )
        heads = [load_file(str(r.path(release) / "head.safetensors")) for r in (single, dp)]
        assert {k: v.shape for k, v in heads[0].items()} == {
            k: v.shape for k, v in heads[1].items()
        }
        replay = [(r.path(release) / "replay.json").read_text() for r in (single, dp)]
        assert replay[0] == replay[1], "the same exemplars, chosen from the same features"

        preds_a, probs_a = _probs(registry, release, test)
        preds_b, probs_b = _probs(dp_run["registry"], release, test)
        same = sum(x == y for x, y in zip(preds_a, preds_b, strict=True)) / len(preds_a)
        assert same >= SAME_PREDICTION_MIN, f"{release}: {same:.1%} identical predictions"
        assert (probs_a - probs_b).abs().max().item() <= MAX_PROB_DIFF


def test_data_parallel_release_has_the_content_of_a_one_process_release(dp_run, trained_registry):
    """Same config file, 1 vs 2 processes: same intents, head size and manifest fields."""
    single, dp = Registry(trained_registry), Registry(dp_run["registry"])
    for release in ("v1", "v2"):
        a, b = _flatten(single.verify(release)), _flatten(dp.verify(release))
        # Eval scores and neighbours (old intents above a share of the parent's predictions)
        # are data, keyed by intent: a float-level difference in the parent can move a share
        # across the threshold.
        data_keys = ("metrics.eval.", "metrics.neighbours.")
        assert {k for k in a if not k.startswith(data_keys)} - {"metrics.eval"} == {
            k for k in b if not k.startswith(data_keys)
        }
        if release != "v1":
            neighbours = [r.verify(release)["metrics"]["neighbours"] for r in (single, dp)]
            assert neighbours[0].keys() == neighbours[1].keys() == set(a["new_intents"])
        for key in ("intents", "new_intents", "parent", "parent_intents", "replay.intents"):
            assert a[key] == b[key], key
        assert {k: v for k, v in a.items() if k.startswith("config.")} == {
            k: v for k, v in b.items() if k.startswith("config.")
        }
        assert {k: v for k, v in a.items() if k.startswith("backbone.")} == {
            k: v for k, v in b.items() if k.startswith("backbone.")
        }
        assert a["metrics.train.examples_trained"] == b["metrics.train.examples_trained"]
        heads = [load_file(str(r.path(release) / "head.safetensors")) for r in (single, dp)]
        assert {k: v.shape for k, v in heads[0].items()} == {
            k: v.shape for k, v in heads[1].items()
        }


def test_a_head_alone_update_under_torchrun_matches_one_process(dp_run, tmp_path):
    """`update` (the default `update_mode: head`) on 2 processes: every rank fits the same head
    on the gathered embeddings (the tiny RoBERTa's dense layer means its memory gets a sharded
    forward pass), the main process writes one release, and it predicts as a one-process
    update of the same parent does."""
    rows = [(t, "transfer_money") for t in make_utterances("transfer_money", 70, seed=11)[-6:]]
    more = tmp_path / "more.csv"
    more.write_text("text,intent\n" + "".join(f"{t},{i}\n" for t, i in rows), encoding="utf-8")
    dp_dir, single_dir = tmp_path / "dp", tmp_path / "single"
    shutil.copytree(dp_run["registry"], dp_dir)
    shutil.copytree(dp_run["registry"], single_dir)
    run = _torchrun(
        "update_release.py", "--data", str(more), "--registry", str(dp_dir), cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    update_release(more, single_dir, "v2")
    dp, single = Registry(dp_dir), Registry(single_dir)
    assert dp.releases() == single.releases() == ["v1", "v2", "v3"]
    a, b = dp.verify("v3"), single.verify("v3")
    assert a["training"]["processes"] == 2 and b["training"]["processes"] == 1
    assert a["metrics"]["update_mode"] == b["metrics"]["update_mode"] == "head"
    for key in ("train_examples", "replay_examples", "forward_only_examples", "distilled_examples"):
        assert a["metrics"][key] == b["metrics"][key], key
    assert a["metrics"]["train"]["examples_trained"] == b["metrics"]["train"]["examples_trained"]
    adapter = "adapter_model.safetensors"
    for registry in (dp, single):
        assert (registry.path("v3") / adapter).read_bytes() == (
            registry.path("v2") / adapter
        ).read_bytes()
    assert (dp.path("v3") / "replay.json").read_text() == (
        single.path("v3") / "replay.json"
    ).read_text()
    preds_a, probs_a = _probs(dp_dir, "v3", dp_run["test"])
    preds_b, probs_b = _probs(single_dir, "v3", dp_run["test"])
    same = sum(x == y for x, y in zip(preds_a, preds_b, strict=True)) / len(preds_a)
    assert same >= SAME_PREDICTION_MIN, f"{same:.1%} identical predictions"
    assert (probs_a - probs_b).abs().max().item() <= MAX_PROB_DIFF


def test_sharding_of_training_batches_gradients_and_gathered_passes(tmp_path, tiny_backbone):
    """tests/dist_worker.py on 2 ranks: each example trained once per epoch, the DDP gradient
    equals the global batch's, gathered passes count every row once, in order, and a release
    written from FSDP2-sharded weights equals one written from the whole model."""
    done = subprocess.run(
        _torchrun_cmd(REPO / "tests" / "dist_worker.py", str(tiny_backbone), str(tmp_path)),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in range(2):
        seen = [r["epochs"][epoch] for r in ranks]
        assert seen[0]["steps"] == seen[1]["steps"] == 5  # 10 batches of 4 over 2 ranks
        raw = seen[0]["all"] + seen[1]["all"]
        kept = seen[0]["kept"] + seen[1]["kept"]
        assert len(raw) > 37 and len(set(raw)) < len(raw), "Accelerate repeats rows to even out"
        assert sorted(kept) == list(range(37)), "every example exactly once per epoch"
    assert ranks[0]["epochs"][0]["kept"] != ranks[0]["epochs"][1]["kept"], "reshuffled per epoch"
    for r in ranks:
        assert r["global_rows"] == 5  # 37 = 4 x 8 + 5: the last global batch has 5 real rows
        assert r["global_ce"] == pytest.approx(r["plain_ce"], rel=1e-5)
        assert r["max_grad_diff"] <= 1e-5 * max(1.0, r["max_grad"])
        assert r["eval_batches_per_rank"] == 3  # 5 batches of 8, evened out to 3 per rank
        assert r["feature_rows"] == r["logit_rows"] == 37
        assert r["feature_order"] == list(range(37))
        assert r["max_logit_diff"] <= 1e-5
        assert r["fsdp_sharded"] and r["whole_state_is_none"]
        assert r["fsdp_max_logit_diff"] <= 1e-5
    for name in ("adapter_model.safetensors", "head.safetensors", "adapter_config.json"):
        assert (tmp_path / "sharded" / name).read_bytes() == (
            tmp_path / "whole" / name
        ).read_bytes()


# ---- killed ranks ---------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                found.append(int(entry.name))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _launch_add_intent(registry: Path, data: Path, config: Path, log: Path) -> subprocess.Popen:
    """torchrun add-intent in its own process group, stderr to `log`."""
    return subprocess.Popen(
        _torchrun_cmd(
            REPO / "scripts" / "add_intent.py",
            *("--data", str(data), "--registry", str(registry), "--config", str(config)),
        ),
        cwd=registry.parent,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        start_new_session=True,
    )


def _kill_rank_and_wait(run: subprocess.Popen, rank: int) -> tuple[int, list[int]]:
    """SIGKILL one rank; return torchrun's exit status and the worker pids it had."""
    workers = _children(run.pid)
    target = [pid for pid in workers if _rank_of(pid) == rank]
    assert len(target) == 1, f"expected one rank-{rank} worker among {workers}"
    os.kill(target[0], signal.SIGKILL)
    try:
        status = run.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # our own process group only
        raise AssertionError("a rank hung after another was killed") from None
    return status, workers


def _assert_all_gone(pids: list[int]) -> None:
    def gone() -> bool:
        return all(not (Path("/proc") / str(p)).exists() for p in pids)

    _wait_for(gone, EXIT_TIMEOUT_S, f"workers {pids} to exit")


@pytest.fixture
def dp_registry_copy(dp_run, tmp_path):
    registry = tmp_path / "adapters"
    shutil.copytree(dp_run["registry"], registry)
    return registry


def test_killing_a_rank_mid_training_leaves_no_release(dp_registry_copy, data_dir, tmp_path):
    registry = dp_registry_copy
    before = snapshot(registry)
    config = tmp_path / "long.yaml"  # long enough to be killed in the middle of training
    config.write_text(yaml.safe_dump({"train": {"add_intent_epochs": 400}}))
    log = tmp_path / "stderr.txt"
    run = _launch_add_intent(registry, data_dir / "new" / "report_damage.txt", config, log)
    _wait_for(lambda: "train:" in log.read_text(errors="replace"), 300, "training to start")
    time.sleep(random.Random(6).uniform(0.3, 1.5))  # seeded: somewhere inside training
    status, workers = _kill_rank_and_wait(run, rank=1)
    assert status != 0
    _assert_all_gone(workers)
    assert "train: 100%" not in log.read_text(errors="replace"), "killed after training ended"
    reg = Registry(registry)
    assert reg.releases() == ["v1", "v2"] and reg.latest() == "v2"
    visible = {k: v for k, v in snapshot(registry).items() if not k.startswith(".")}
    assert visible == {k: v for k, v in before.items() if not k.startswith(".")}


def test_killing_a_rank_while_the_release_is_committed(dp_registry_copy, data_dir, tmp_path):
    """Rank 0 stages the release and waits for the registry lock (held here); rank 1 dies.
    No release appears, the staging leftover is never loaded, and the next run removes it."""
    registry = dp_registry_copy
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump({"train": {"add_intent_epochs": 1}}))
    log = tmp_path / "stderr.txt"
    with FileLock(str(registry / ".lock")):
        run = _launch_add_intent(registry, data_dir / "new" / "report_damage.txt", config, log)

        def staged() -> bool:
            return any(
                p.name.startswith(".staging-") and (p / "replay.json").exists()
                for p in registry.iterdir()
            )

        _wait_for(staged, 300, "rank 0 to stage the release")
        status, workers = _kill_rank_and_wait(run, rank=1)
        assert status != 0
        _assert_all_gone(workers)
    reg = Registry(registry)
    assert reg.releases() == ["v1", "v2"] and reg.latest() == "v2"
    leftovers = reg.stale_staging()
    assert len(leftovers) == 1, "rank 0 was killed while its release was staged"

    release = add_intents(
        data_dir / "new" / "report_damage.txt",
        registry,
        overrides={"train": {"add_intent_epochs": 1}},
    )
    assert release == "v3"
    assert not [p for p in registry.iterdir() if p.name.startswith(".staging-")]


def test_latest_moved_while_a_torchrun_add_intent_trained(dp_registry_copy, data_dir, tmp_path):
    """The no-lost-update rule under torchrun: the main process writes the release, finds that
    LATEST moved, and every rank stops with the same error (torchrun exits 1, nothing hangs)."""
    registry = dp_registry_copy
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump({"train": {"add_intent_epochs": 1}}))
    log = tmp_path / "stderr.txt"
    with FileLock(str(registry / ".lock")):
        run = _launch_add_intent(registry, data_dir / "new" / "report_damage.txt", config, log)
        _wait_for(
            lambda: any(
                p.name.startswith(".staging-") and (p / "replay.json").exists()
                for p in registry.iterdir()
            ),
            300,
            "rank 0 to stage the release",
        )
        # What another run's commit does under the lock: LATEST moves by atomic replace.
        (registry / ".tmp-other-LATEST").write_text("v1\n", encoding="utf-8")
        os.replace(registry / ".tmp-other-LATEST", registry / "LATEST")
    try:
        status = run.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # our own process group only
        raise AssertionError("a rank hung after the commit was refused") from None
    err = log.read_text(errors="replace")
    assert status == 1, err[-3000:]
    refusals = [line for line in err.splitlines() if "but LATEST did not move to it" in line]
    assert len(refusals) == 2, err[-3000:]  # one per rank
    assert all("v3 was written (parent v2)" in line for line in refusals)
    reg = Registry(registry)
    assert reg.releases() == ["v1", "v2", "v3"] and reg.latest() == "v1"


def _gather_worker(rank: int, store_file: str, result_dir: str) -> None:
    """One of two gloo processes: compute its share of rows, gather the rest, save the result."""
    from intent_ci.discover import gather_rows

    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store_file}", rank=rank, world_size=2
    )
    try:
        order = random.Random(0).sample(range(11), 11)  # 11 rows: shares of 6 and 5
        full = torch.arange(11 * 3, dtype=torch.float32).reshape(11, 3)
        logits = -full[:, :2].clone()
        mine = order[rank::2]
        out = torch.full_like(full, float("nan"))
        part = torch.full_like(logits, float("nan"))
        out[mine], part[mine] = full[mine], logits[mine]
        gather_rows([out, part], order, chunk_rows=2)  # 3 rounds, the last one uneven
        torch.save({"out": out, "logits": part}, Path(result_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_gather_rows_fills_every_process_in_uneven_chunks(tmp_path):
    """`discover`'s gather: each of two real gloo processes ends with every row of both tensors,
    exactly, with shares of unequal length sent in chunks smaller than a share."""
    torch.multiprocessing.spawn(
        _gather_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True
    )
    full = torch.arange(11 * 3, dtype=torch.float32).reshape(11, 3)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["out"], full), rank
        assert torch.equal(got["logits"], -full[:, :2]), rank
