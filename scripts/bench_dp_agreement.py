#!/usr/bin/env python
"""Does a data-parallel run give the same releases as a single-process run? Measured, not assumed.

Trains `init` then `add-intent` several ways and compares the releases' predictions on held-out
utterances (share of identical predicted intents, largest |difference| of any probability,
accuracies):

* ``2 procs, batch B`` (torchrun, gloo) against ``1 proc, batch 2B``: the same global batches
  and learning-rate schedule, so only floating-point summation order differs;
* ``2 procs, batch B`` against ``1 proc, batch B`` (the same config file): the effective batch
  doubles, so the optimisation differs; compared with
* ``1 proc, batch B, seed 0`` against ``seed 1``: the run-to-run noise of the recipe itself.

    python scripts/bench_dp_agreement.py                       # tiny random RoBERTa, seconds
    python scripts/bench_dp_agreement.py --backbone minilm     # packaged all-MiniLM-L6-v2 on data/

Writes scripts/results/dp_agreement[_minilm].{json,md}. Every process runs with one thread
(OMP_NUM_THREADS=1) so that the two-process run uses the same per-process kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from intent_ci.config import PACKAGED_MINILM  # noqa: E402
from intent_ci.data import INTENT, TEXT, read_examples  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402


def run_job(script: str, args: list[str], procs: int) -> float:
    """Run scripts/<script> on `procs` processes; return its wall time."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    launcher = [sys.executable]
    if procs > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
    started = time.perf_counter()
    done = subprocess.run(
        [*launcher, str(REPO / "scripts" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} on {procs} processes failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def train_pair(
    root: Path, name: str, overrides: dict, data: dict[str, Path], procs: int
) -> tuple[Path, float]:
    """v1 from data['base'], v2 adding data['new']; return the registry and the wall time."""
    registry = root / name
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump(overrides))
    common = ["--config", str(config), "--registry", str(registry)]
    wall = run_job("init_release.py", ["--data", str(data["base"]), *common], procs)
    wall += run_job("add_intent.py", ["--data", str(data["new"]), *common], procs)
    return registry, wall


def predictions(
    registry: Path, release: str, test: Path
) -> tuple[list[str], torch.Tensor, list[str]]:
    """Probabilities on the test utterances whose intent the release knows."""
    clf = IntentClassifier.load(registry, release, device="cpu")
    data = read_examples(test)
    keep = [i for i, y in enumerate(data.dataset[INTENT]) if y in set(clf.intents)]
    texts = [data.dataset[TEXT][i] for i in keep]
    refs = [data.dataset[INTENT][i] for i in keep]
    probs = clf.predict_proba(texts)
    return [clf.intents[i] for i in probs.argmax(-1).tolist()], probs, refs


def compare(a: Path, b: Path, test: Path) -> dict:
    out = {}
    for release in ("v1", "v2"):
        pa, proba, refs = predictions(a, release, test)
        pb, probb, _ = predictions(b, release, test)
        out[release] = {
            "n": len(refs),
            "same_prediction": sum(x == y for x, y in zip(pa, pb, strict=True)) / len(refs),
            "max_abs_prob_diff": float((proba - probb).abs().max()),
            "accuracy_a": sum(x == y for x, y in zip(pa, refs, strict=True)) / len(refs),
            "accuracy_b": sum(x == y for x, y in zip(pb, refs, strict=True)) / len(refs),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=["tiny", "minilm"], default="tiny")
    parser.add_argument(
        "--out", default=None, help="output stem (default scripts/results/dp_agreement[_minilm])"
    )
    args = parser.parse_args()
    stem = Path(
        args.out
        or REPO
        / "scripts"
        / "results"
        / ("dp_agreement" + ("_minilm" if args.backbone == "minilm" else ""))
    )

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.backbone == "tiny":
            from tests.conftest import (
                BASE_INTENTS,
                build_tiny_roberta,
                tiny_overrides,
                write_intents,
            )

            backbone = build_tiny_roberta(root / "tiny-roberta")
            write_intents(root / "data" / "base", BASE_INTENTS, 40, seed=0)
            write_intents(root / "data" / "new", ["refund_status"], 40, seed=0)
            test = root / "data" / "test"
            write_intents(test, [*BASE_INTENTS, "refund_status"], 10, seed=7)
            data = {"base": root / "data" / "base", "new": root / "data" / "new"}
            base = tiny_overrides(backbone)
            batch = base["train"]["batch_size"]
            label = "tiny random RoBERTa (tests/conftest.py), 4+1 intents x 40 utterances"
        else:
            data = {
                "base": REPO / "data" / "base",
                "new": REPO / "data" / "new" / "refund_status.txt",
            }
            test = REPO / "data" / "test"
            base = {"model": {"backbone": PACKAGED_MINILM}, "train": {"batch_size": 16}}
            batch = 16
            label = "packaged all-MiniLM-L6-v2 on data/ (14 base intents + refund_status)"

        def cfg(batch_size: int, seed: int) -> dict:
            values = json.loads(json.dumps(base))
            values.setdefault("train", {}).update(batch_size=batch_size, seed=seed)
            return values

        runs = {
            "2p_b": train_pair(root, "2p_b", cfg(batch, 0), data, 2),
            "1p_2b": train_pair(root, "1p_2b", cfg(2 * batch, 0), data, 1),
            "1p_b": train_pair(root, "1p_b", cfg(batch, 0), data, 1),
            "1p_b_seed1": train_pair(root, "1p_b_seed1", cfg(batch, 1), data, 1),
        }
        result = {
            "backbone": label,
            "per_device_batch": batch,
            "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}",
            "load_average_at_start": os.getloadavg(),
            "command": shlex.join(["python", *sys.argv]),
            "wall_s": {k: round(v[1], 1) for k, v in runs.items()},
            "same_global_batch": compare(runs["2p_b"][0], runs["1p_2b"][0], test),
            "same_config": compare(runs["2p_b"][0], runs["1p_b"][0], test),
            "seed_noise": compare(runs["1p_b"][0], runs["1p_b_seed1"][0], test),
        }

    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render(result))
    print(render(result))


NOTE = (
    "Two processes at batch B take the same global batches, class weights and learning-rate "
    "schedule as one process at batch 2B (`intent_ci.training.global_batch_loss`). Without "
    "dropout (the tiny config) only floating-point summation order differs. With dropout (MiniLM "
    "runs the default LoRA and head dropout of 0.1) every process draws its own masks, so the "
    "two runs differ like two seeds do; compare with the seed-noise rows."
)


def render(result: dict) -> str:
    names = {
        "same_global_batch": "A: 2 procs x B, B: 1 proc x 2B",
        "same_config": "A: 2 procs x B, B: 1 proc x B",
        "seed_noise": "A: 1 proc x B seed 0, B: seed 1",
    }
    lines = [
        f"# Data-parallel vs single-process agreement ({result['backbone']})",
        "",
        f"`{result['command']}` on {result['hardware']}; load average at start "
        f"{result['load_average_at_start'][0]:.1f}.",
        f"Per-device batch B = {result['per_device_batch']}. Predictions on held-out utterances of "
        "the intents each release knows.",
        "",
        "| comparison | release | n | same prediction | max abs prob diff | accuracy A | accuracy B |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, title in names.items():
        for release, row in result[key].items():
            lines.append(
                f"| {title} | {release} | {row['n']} | {100 * row['same_prediction']:.1f}% | "
                f"{row['max_abs_prob_diff']:.2e} | {100 * row['accuracy_a']:.1f}% | "
                f"{100 * row['accuracy_b']:.1f}% |"
            )
    lines += [
        "",
        NOTE,
        "",
        "Wall time per run (init + add-intent, seconds): "
        + ", ".join(f"{k} {v}" for k, v in result["wall_s"].items()),
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
