#!/usr/bin/env python
"""Does training on out-of-scope rows help? Outlier exposure on CLINC150 val, over seeds.

Issue 14: rows labelled `oos` are used for calibration, "and for training too if that helps on
val". This script measures it. Per seed, two releases on the 150 in-scope intents with the
shipped defaults (all-MiniLM-L6-v2):

    calibration only     `train.outlier_weight: 0` (the default): `oos` rows never train; the
                         release bench_oos.py's main stage made, reused from its cache
    outlier exposure     `train.outlier_weight: W`: `init` is also given `oos_train` (100 rows),
                         trains 90 of them towards a flat answer over the intents (Hendrycks et
                         al. 2019) and holds back 10 to measure the out-of-scope recall

Both hold out the same in-scope calibration utterances and calibrate their threshold on them
at the shipped target. The choice is made on val: CLINC150 `val` (in scope) against `oos_val`
(100 rows; `oos_train` cannot be val here, since one arm trains on it). Test (`test` against
`oos_test`) is reported beside it and chooses nothing.

    python scripts/bench_oos_outlier.py --seed 0 --baseline-workdir runs/bench_oos
    python scripts/bench_oos_outlier.py --seed 1 --baseline-workdir runs/bench_oos_s1
    python scripts/bench_oos_outlier.py --seed 2 --baseline-workdir runs/bench_oos_s2
    python scripts/bench_oos_outlier.py --report     # scripts/results/bench_oos_outlier.{json,md}

Each seed writes `<workdir>/seed<N>.json`; releases and forward passes are cached, so a second
run only re-scores. CLINC150 (CC BY 3.0) is read from ../shared/datasets/clinc150/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_incremental as bi  # noqa: E402
import bench_oos as bo  # noqa: E402
import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from intent_ci.calibration import score_logits, threshold_for_recall  # noqa: E402
from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import PACKAGED_MINILM, OOSConfig, apply_overrides  # noqa: E402
from intent_ci.data import OOS_LABEL  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402

SCORES = ("energy", "energy_knn")
"""The shipped score and the logit score it builds on (outlier exposure acts on the logits)."""
RULE = (
    "outlier exposure helps when, on val, it lowers FPR@95 and raises the out-of-scope recall "
    "at the calibrated threshold of the shipped score on every seed, and costs the in-scope "
    "accuracy at that threshold no more than 0.2 points in the mean over seeds"
)


def arm(args: argparse.Namespace, raw: dict, weight: float) -> tuple[object, dict]:
    """The cached release of one arm (trained when missing) and its cost."""
    config = apply_overrides(
        bo.base_config(args), {"train": {"outlier_weight": weight}}, source="bench_oos_outlier"
    )
    data = bi.train_rows(raw, sorted({i for _, i in raw["train"]}), None, args.seed)
    if weight == 0:
        # Calibration only: the same weights whether or not `oos` rows are given, so this is
        # bench_oos's main release (found in its cache).
        return bi.cached_init(Path(args.baseline_workdir), "oos-main", data, config, reuse=True)
    oos = [t for t, _ in raw["oos_train"]]
    data = datasets.Dataset.from_dict(
        {"text": list(data["text"]) + oos, "intent": list(data["intent"]) + [OOS_LABEL] * len(oos)}
    )
    return bi.cached_init(Path(args.workdir), f"oos-outlier-w{weight:g}", data, config, True)


def measure(registry, raw: dict, target: float) -> dict:
    """AUROC, FPR@95 and the figures at the release's own calibrated threshold, val and test."""
    clf = IntentClassifier.load(registry, "v1")
    manifest = registry.manifest("v1")
    calibration = [t for i in clf.intents for t in clf.release.calibration[0].get(i, [])]
    sets = {
        "calibration": calibration,
        "memory": [t for i in clf.intents for t in clf.release.replay.get(i, [])],
        **{s: [t for t, _ in raw[s]] for s in ("val", "test", "oos_val", "oos_test")},
    }
    cache = registry.root.parent / "passes"
    cache.mkdir(exist_ok=True)
    p = bo.cached_passes(cache, clf, sets)
    index = {name: i for i, name in enumerate(clf.intents)}
    out: dict = {
        "manifest_oos": {k: manifest["oos"][k] for k in ("threshold", "score", "oos_recall")},
        "outlier_examples": manifest["metrics"].get("outlier_examples", 0),
    }
    for score in SCORES:
        if score == "energy_knn":
            scorer = bo.shipped_feature_scorer(p, score)
        else:
            scorer = lambda s, m=score: score_logits(p[s]["logits"], m).numpy()  # noqa: E731
        threshold = threshold_for_recall(torch.from_numpy(scorer("calibration")), target)
        row = {"threshold": threshold}
        for split in ("val", "test"):
            ins, oos = scorer(split), scorer(f"oos_{split}")
            labels = np.array([index[i] for _, i in raw[split]])
            correct = p[split]["logits"].argmax(-1).numpy() == labels
            row[split] = {
                "accuracy": float(correct.mean()),
                "auroc": bo.auroc(ins, oos),
                "fpr_at_95": bo.fpr_at(ins, oos),
                **bo.at_threshold(threshold, ins, correct, oos),
            }
        out[score] = row
    return out


def run_seed(args: argparse.Namespace) -> dict:
    raw = bo.load_clinc_oos(Path(args.data))
    target = OOSConfig().target_recall
    result = {"seed": args.seed, "target_recall": target, "arms": {}}
    for weight in (0.0, args.weight):
        started = time.perf_counter()
        registry, cost = arm(args, raw, weight)
        print(f"weight {weight:g}: {registry.root}", flush=True)
        result["arms"][f"{weight:g}"] = {
            "outlier_weight": weight,
            "cost": cost,
            **measure(registry, raw, target),
            "measure_s": round(time.perf_counter() - started, 1),
        }
        row = result["arms"][f"{weight:g}"]["energy_knn"]["val"]
        print(
            f"  val: AUROC {row['auroc']:.4f} FPR@95 {row['fpr_at_95']:.3f} "
            f"in-scope acc {row['in_scope_accuracy']:.4f} oos recall {row['oos_recall']:.3f}",
            flush=True,
        )
    return result


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def report(args: argparse.Namespace) -> None:
    seeds = [json.loads(p.read_text()) for p in sorted(Path(args.workdir).glob("seed*.json"))]
    if not seeds:
        raise SystemExit(f"no seed*.json under {args.workdir}: run a seed first")
    weights = list(seeds[0]["arms"])
    base, oe = weights[0], weights[1]
    metrics = (
        "accuracy",
        "auroc",
        "fpr_at_95",
        "in_scope_accuracy",
        "in_scope_recall",
        "oos_recall",
    )
    summary: dict = {}
    for score in SCORES:
        summary[score] = {}
        for split in ("val", "test"):
            summary[score][split] = {
                w: {
                    m: float(np.mean([s["arms"][w][score][split][m] for s in seeds]))
                    for m in metrics
                }
                for w in weights
            }
    val = [
        (s["arms"][base]["energy_knn"]["val"], s["arms"][oe]["energy_knn"]["val"]) for s in seeds
    ]
    acc_drop = float(np.mean([a["in_scope_accuracy"] - b["in_scope_accuracy"] for a, b in val]))
    helps = (
        all(b["fpr_at_95"] < a["fpr_at_95"] for a, b in val)
        and all(b["oos_recall"] > a["oos_recall"] for a, b in val)
        and acc_drop <= 0.002
    )
    result = {
        "command": "python scripts/bench_oos_outlier.py --report",
        "seeds": seeds,
        "summary": summary,
        "rule": RULE,
        "helps_on_val": helps,
        "val_in_scope_accuracy_drop": acc_drop,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Outlier exposure: does training on `oos` rows help? (CLINC150, MiniLM)",
        "",
        f"Made by `python scripts/bench_oos_outlier.py` (seeds {', '.join(str(s['seed']) for s in seeds)};"
        " per-seed commands in the script's docstring), then `--report`. Shipped defaults, "
        f"threshold calibrated on held-out in-scope utterances at target {seeds[0]['target_recall']}. "
        "Val: `val` against `oos_val` (100 rows); test: `test` against `oos_test` (1,000 rows). "
        "Accuracy: top-1 over in-scope rows, no rejection; in-scope accuracy: accepted and right. "
        f"Outlier exposure trains on 90 of `oos_train`'s 100 rows at `train.outlier_weight: {oe}`.",
        "",
        f"Decision rule (val only): {RULE}.",
        "",
        f"**Helps on val: {'yes' if helps else 'no'}** (mean in-scope accuracy change at the "
        f"threshold {-100 * acc_drop:+.2f} points).",
        "",
    ]
    for score in SCORES:
        lines += [
            f"## Score `{score}`" + (" (shipped)" if score == "energy_knn" else ""),
            "",
            "| seed | split | arm | accuracy % | AUROC | FPR@95 % | in-scope acc % "
            "| in-scope recall % | oos recall % |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in seeds:
            for split in ("val", "test"):
                for w in weights:
                    r = s["arms"][w][score][split]
                    name = "calibration only" if w == base else f"outlier exposure {w}"
                    lines.append(
                        f"| {s['seed']} | {split} | {name} | {pct(r['accuracy'])} | {r['auroc']:.4f} "
                        f"| {pct(r['fpr_at_95'])} "
                        f"| {pct(r['in_scope_accuracy'])} | {pct(r['in_scope_recall'])} | {pct(r['oos_recall'])} |"
                    )
        for split in ("val", "test"):
            for w in weights:
                r = summary[score][split][w]
                name = "calibration only" if w == base else f"outlier exposure {w}"
                lines.append(
                    f"| **mean** | {split} | {name} | {pct(r['accuracy'])} | {r['auroc']:.4f} "
                    f"| {pct(r['fpr_at_95'])} "
                    f"| {pct(r['in_scope_accuracy'])} | {pct(r['in_scope_recall'])} | {pct(r['oos_recall'])} |"
                )
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(bi.DEFAULT_DATA))
    parser.add_argument("--backbone", default=PACKAGED_MINILM)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight", type=float, default=0.5, help="train.outlier_weight of the arm")
    parser.add_argument("--workdir", default="runs/bench_oos_outlier")
    parser.add_argument(
        "--baseline-workdir",
        default="runs/bench_oos",
        help="bench_oos.py's --workdir for this seed: its main release is the calibration-only arm",
    )
    parser.add_argument("--out", default="scripts/results/bench_oos_outlier")
    parser.add_argument("--report", action="store_true", help="merge seed*.json into --out")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.smoke = False
    _quiet_libraries()
    torch.set_num_threads(args.threads)
    if args.report:
        report(args)
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result = run_seed(args)
    (workdir / f"seed{args.seed}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
