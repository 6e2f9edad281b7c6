#!/usr/bin/env python
"""Out-of-scope detection against the size of the exemplar bank, on releases already made.

The shipped score (`energy_knn`) reads a release's exemplar bank: the pooled features of its
whole replay memory. A larger memory (`replay.per_intent`) makes a larger bank. This script
isolates that effect: for each given release it scores the same model with the bank of its
whole memory and with the bank of the first k exemplars per intent (herding is greedy, so the
first k herded exemplars are what a memory of k would have kept from the same features).
Each bank is standardised on the release's calibration utterances and thresholded at the
release's own target recall, as a release calibrates itself.

Reported per release and as the mean over releases, on val (the release's intents' val rows
against every non-test out-of-scope row, `oos_val` + `oos_train`) and test (`test` against
`oos_test`): AUROC, FPR@95, and at the calibrated threshold in-scope accuracy (accepted and
right), in-scope recall and out-of-scope recall. Val decides.

    python scripts/oos_bank_size.py --release runs/x/adapters:v6 --release runs/y/adapters:v11 \\
        --prefix 20 --out scripts/results/memory_size/oos_bank

CLINC150 (CC BY 3.0) is read from ../shared/datasets/clinc150/.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_oos as bo  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from intent_ci.calibration import (  # noqa: E402
    make_bank,
    read_calibration,
    score_parts,
    score_rows,
    standardisation,
    threshold_for_recall,
)
from intent_ci.registry import Registry  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402

METRICS = ("auroc", "fpr_at_95", "in_scope_accuracy", "in_scope_recall", "oos_recall")


def release_arg(value: str) -> tuple[Path, str]:
    root, sep, name = value.rpartition(":")
    if not sep or not root or not name:
        raise argparse.ArgumentTypeError(f"--release {value!r}: expected REGISTRY:RELEASE")
    return Path(root), name


def prefix_bank(memory: dict[str, list[str]], intents: list[str], k: int | None) -> list[int]:
    """Rows of the whole-memory bank (head-row order) that a bank of the first `k` exemplars
    per intent keeps; None keeps every row."""
    rows, start = [], 0
    for intent in intents:
        n = len(memory.get(intent, []))
        rows.extend(range(start, start + (n if k is None else min(k, n))))
        start += n
    return rows


def measure(
    passes: dict[str, dict[str, torch.Tensor]],
    truth: dict[str, np.ndarray],
    bank_features: torch.Tensor,
    target: float,
) -> dict:
    """`energy_knn` with the bank of `bank_features`, as a release would calibrate it."""
    bank = make_bank(bank_features)
    cal = passes["calibration"]
    stats = standardisation(score_parts(cal["logits"], cal["features"], bank))

    def scores(name: str) -> np.ndarray:
        p = passes[name]
        return score_rows(
            "energy_knn", p["logits"], p["features"], bank=bank, standardise=stats
        ).numpy()

    threshold = threshold_for_recall(torch.from_numpy(scores("calibration")), target)
    out: dict = {"threshold": threshold}
    for split in ("val", "test"):
        ins, oos = scores(split), scores(f"oos_{split}")
        correct = passes[split]["logits"].argmax(-1).numpy() == truth[split]
        out[split] = {
            "auroc": bo.auroc(ins, oos),
            "fpr_at_95": bo.fpr_at(ins, oos),
            **bo.at_threshold(threshold, ins, correct, oos),
        }
    return out


def run_release(raw: dict, root: Path, name: str, prefixes: list[int]) -> dict:
    registry = Registry(root)
    clf = IntentClassifier.load(registry, name)
    manifest = registry.manifest(name)
    oos = manifest.get("oos") or {}
    if oos.get("score") != "energy_knn":
        raise SystemExit(
            f"{root}:{name}: its out-of-scope score is {oos.get('score')!r}, not energy_knn"
        )
    calibration, _ = read_calibration(registry.path(name) / "calibration.json")
    known = set(clf.intents)
    index = {intent: i for i, intent in enumerate(clf.intents)}
    memory = clf.release.replay
    sets = {
        "calibration": [t for i in clf.intents for t in calibration.get(i, [])],
        "val": [t for t, i in raw["val"] if i in known],
        "test": [t for t, i in raw["test"] if i in known],
        "oos_val": [t for t, _ in raw["oos_val"] + raw["oos_train"]],
        "oos_test": [t for t, _ in raw["oos_test"]],
        "memory": [t for i in clf.intents for t in memory.get(i, [])],
    }
    truth = {s: np.array([index[i] for _, i in raw[s] if i in known]) for s in ("val", "test")}
    passes = {}
    for set_name, texts in tqdm(sets.items(), desc=f"{root}:{name}", leave=False):
        logits, features = clf.logits_and_features(texts, batch_size=256)
        passes[set_name] = {"logits": logits, "features": features}
    target = float(oos["target_recall"])
    per_intent = {i: len(memory.get(i, [])) for i in clf.intents}
    banks = {"whole memory": None, **{f"first {k}": k for k in prefixes}}
    return {
        "registry": str(root),
        "release": name,
        "intents": len(clf.intents),
        "exemplars_per_intent": max(per_intent.values()),
        "target_recall": target,
        "banks": {
            label: {
                "rows": len(rows := prefix_bank(memory, clf.intents, k)),
                **measure(passes, truth, passes["memory"]["features"][rows], target),
            }
            for label, k in banks.items()
        },
    }


def mean_of(releases: list[dict]) -> dict:
    labels = list(releases[0]["banks"])
    return {
        label: {
            split: {
                m: float(np.mean([r["banks"][label][split][m] for r in releases])) for m in METRICS
            }
            for split in ("val", "test")
        }
        for label in labels
    }


def fmt(metric: str, value: float) -> str:
    """AUROC as a fraction, every other metric as a percentage."""
    return f"{value:.4f}" if metric == "auroc" else f"{100 * value:.2f}%"


def markdown(result: dict) -> str:
    lines = [
        "# Out-of-scope detection against the exemplar bank's size",
        "",
        f"Made by `{result['command']}`. Same models, banks differ only in size: the whole replay "
        "memory, or its first k exemplars per intent (herding's order). `energy_knn`, each bank "
        "standardised and thresholded on the release's calibration utterances at its target "
        "recall. Val: the release's intents' val rows against `oos_val` + `oos_train`; test: "
        "`test` against `oos_test`. Val decides.",
        "",
        f"## Mean over {len(result['releases'])} releases (val; test)",
        "",
        "| bank | " + " | ".join(METRICS) + " |",
        "|---|" + "---:|" * len(METRICS),
    ]
    for label, row in result["mean"].items():
        cells = [f"{fmt(m, row['val'][m])} ({fmt(m, row['test'][m])})" for m in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Each release (val AUROC / val oos recall at the calibrated threshold)", ""]
    for r in result["releases"]:
        cells = "; ".join(
            f"{label} ({b['rows']:,} rows): {b['val']['auroc']:.4f} / {100 * b['val']['oos_recall']:.1f}%"
            for label, b in r["banks"].items()
        )
        lines.append(f"- `{r['registry']}:{r['release']}` ({r['intents']} intents): {cells}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(bo.bi.DEFAULT_DATA))
    parser.add_argument(
        "--release", type=release_arg, action="append", required=True, help="REGISTRY:RELEASE"
    )
    parser.add_argument(
        "--prefix", type=int, action="append", default=None, help="k of a first-k bank (repeatable)"
    )
    parser.add_argument("--out", required=True, help="output path without extension")
    args = parser.parse_args()
    prefixes = args.prefix or [20]
    if any(k < 1 for k in prefixes):
        raise SystemExit(f"--prefix: expected positive sizes, got {prefixes}")
    raw = bo.load_clinc_oos(Path(args.data))
    started = time.perf_counter()
    releases = [run_release(raw, root, name, prefixes) for root, name in args.release]
    result = {
        "command": "python scripts/oos_bank_size.py " + shlex.join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "total_s": round(time.perf_counter() - started, 1),
        "releases": releases,
        "mean": mean_of(releases),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
