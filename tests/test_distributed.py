"""The release scripts under `torchrun --nproc_per_node 2` (Accelerate MULTI_CPU over gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier
from tests.conftest import BASE_INTENTS, tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def _torchrun(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        str(REPO / "scripts" / script),
        *args,
    ]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_init_and_add_intent_under_torchrun(tmp_path, tiny_backbone, data_dir):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_overrides(tiny_backbone)))
    registry = tmp_path / "adapters"

    init = _torchrun(
        "init_release.py",
        "--data",
        str(data_dir / "base"),
        "--config",
        str(config),
        "--registry",
        str(registry),
        cwd=tmp_path,
    )
    assert init.returncode == 0, init.stderr[-3000:]
    add = _torchrun(
        "add_intent.py",
        "--data",
        str(data_dir / "new" / "refund_status.txt"),
        "--registry",
        str(registry),
        cwd=tmp_path,
    )
    assert add.returncode == 0, add.stderr[-3000:]

    reg = Registry(registry)
    assert reg.releases() == ["v1", "v2"], (
        "exactly one release per job, written once by the main process"
    )
    assert not [p for p in registry.iterdir() if p.name.startswith(".staging-")]
    manifest = reg.verify("v2")
    assert manifest["training"]["processes"] == 2
    assert manifest["intents"] == [*BASE_INTENTS, "refund_status"]
    # Every example trained once per epoch in total, not once per rank.
    assert manifest["metrics"]["train_examples"] == 40 + 8 * len(BASE_INTENTS)
    assert manifest["metrics"]["replay_examples"] == 8 * len(BASE_INTENTS)
    # Progress and the summary come from the main process only.
    assert add.stdout.count("v2: 5 intents") == 1
    clf = IntentClassifier.load(registry, "v2")
    assert len(clf.predict(["refund credited please", "card lost"])) == 2
