#!/usr/bin/env python
"""Replay memory size as a trade-off: accuracy against bytes per intent (issue 19).

Reads bench_incremental results that differ only in `replay.per_intent` (the memory kept per
intent, which also sizes the out-of-scope exemplar bank), for one or more intent orders, and
writes <out>.json and <out>.md:

    python scripts/bench_incremental.py --protocols P1 --methods intent-ci --no-retrain \\
        --no-probe --init-config '{"replay": {"per_intent": 10}}' --seed 0 --split val \\
        --workdir runs/incremental_mem10 --out runs/bench_incremental_mem10
    python scripts/memory_size_report.py --run runs/bench_incremental_mem10.json \\
        --run scripts/results/gate_p1_rerun/bench_incremental_p1.json --run ...

`--protocol` picks the protocol read (P1 by default; P2 and the small condition's files hold
the same fields). `--run FILE:METHOD` names the line to read in a file that holds several
(the small condition's files ran `intent-ci` with distillation beside `replay-only`). Every
size is paired with `--reference` (20, the default memory) order by order: the final val
accuracy gained and the change of the worst old-intent val drop.

Val decides; test is reported beside it. With several orders (seeds), each size's figures are
the mean over the orders it ran on, and each order is listed. Bytes per intent: the replay
memory's utterances as stored (`replay_bytes_per_intent`), and the float16 bank of their
pooled features (per_intent x hidden x 2 bytes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

FIELDS = (
    "final_val_accuracy",
    "final_test_accuracy",
    "worst_val_old_intent_drop_points",
    "mean_examples_per_release",
    "replay_bytes_per_intent",
)


def run_arg(value: str) -> tuple[Path, str | None]:
    """``FILE`` or ``FILE:METHOD``."""
    head, sep, method = value.rpartition(":")
    if sep and head.endswith(".json") and method:
        return Path(head), method
    return Path(value), None


def summarise(path: Path, hidden: int, protocol: str = "P1", method: str | None = None) -> dict:
    result = json.loads(path.read_text())
    per_intent = result["init_config"]["replay"]["per_intent"]
    if protocol not in result["protocols"]:
        raise SystemExit(f"{path}: no {protocol} run (it has {', '.join(result['protocols'])})")
    methods = result["protocols"][protocol]["methods"]
    if method is None:
        # The shipped recipe's line: `intent-ci`, or the one method of a file that ran another
        # name for it (`replay-only` before add-intent dropped distillation).
        method = "intent-ci" if "intent-ci" in methods else next(iter(methods))
        if method != "intent-ci" and len(methods) != 1:
            raise SystemExit(f"{path}: no intent-ci line, and {len(methods)} others to choose from")
    elif method not in methods:
        raise SystemExit(f"{path}: no {method!r} line in {protocol} (it has {', '.join(methods)})")
    releases = methods[method]["releases"]
    last = releases[-1]
    drops = [
        r["old_intent_drop_points"]["val"] for r in releases if r.get("old_intent_drop_points")
    ]
    examples = [r["cost"]["examples_processed"] for r in releases if r.get("cost")]
    return {
        "file": str(path),
        "command": result["command"],
        "seed": result["seed"],
        "method": method,
        "per_intent": per_intent,
        "final_val_accuracy": last["scores"]["val"]["accuracy"],
        "final_test_accuracy": last["scores"]["test"]["accuracy"],
        "worst_val_old_intent_drop_points": max(drops),
        "mean_examples_per_release": float(np.mean(examples)),
        "replay_bytes_per_intent": last["replay_bytes_per_intent"],
        "bank_bytes_per_intent": per_intent * hidden * 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="JSON[:METHOD]")
    parser.add_argument("--protocol", default="P1")
    parser.add_argument("--reference", type=int, default=20, help="the size others are paired with")
    parser.add_argument("--hidden", type=int, default=384, help="pooled size (MiniLM: 384)")
    parser.add_argument("--out", default="scripts/results/replay_memory_size")
    args = parser.parse_args()
    runs = sorted(
        (
            summarise(path, args.hidden, args.protocol, method)
            for path, method in map(run_arg, args.run)
        ),
        key=lambda r: (r["per_intent"], r["seed"]),
    )
    sizes: dict[int, list[dict]] = {}
    for r in runs:
        sizes.setdefault(r["per_intent"], []).append(r)
    seeds = {k: sorted(r["seed"] for r in v) for k, v in sizes.items()}
    if len({tuple(s) for s in seeds.values()}) != 1:
        raise SystemExit(f"every size must run on the same orders (seeds), got {seeds}")
    rows = [
        {
            "per_intent": k,
            "seeds": seeds[k],
            **{f: float(np.mean([r[f] for r in v])) for f in FIELDS},
            "bank_bytes_per_intent": v[0]["bank_bytes_per_intent"],
        }
        for k, v in sizes.items()
    ]
    paired = {}
    if args.reference in sizes:
        ref = {r["seed"]: r for r in sizes[args.reference]}
        for k, v in sizes.items():
            if k == args.reference:
                continue
            gains = [
                100 * (r["final_val_accuracy"] - ref[r["seed"]]["final_val_accuracy"]) for r in v
            ]
            drops = [
                r["worst_val_old_intent_drop_points"]
                - ref[r["seed"]]["worst_val_old_intent_drop_points"]
                for r in v
            ]
            paired[k] = {
                "seeds": [r["seed"] for r in v],
                "val_gain_points": gains,
                "mean_val_gain_points": float(np.mean(gains)),
                "worst_drop_change_points": drops,
                "mean_worst_drop_change_points": float(np.mean(drops)),
            }
    out = Path(args.out)
    payload = {"protocol": args.protocol, "reference": args.reference, "rows": rows}
    payload.update(paired=paired, runs=runs)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    orders = ", ".join(map(str, next(iter(seeds.values()))))
    lines = [
        f"# Replay memory size on {args.protocol} (MiniLM, intent orders {orders})",
        "",
        f"Made by `python scripts/memory_size_report.py {' '.join('--run ' + p for p in args.run)}"
        f" --protocol {args.protocol} --out {args.out}` from bench_incremental runs (commands in the JSON). Mean over the "
        "orders; val decides.",
        "",
        "| exemplars per intent | final val accuracy | final test accuracy | worst old-intent drop on val (points) | examples per release | replay text bytes / intent | bank bytes / intent |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['per_intent']} | {100 * r['final_val_accuracy']:.2f}% "
            f"| {100 * r['final_test_accuracy']:.2f}% "
            f"| {r['worst_val_old_intent_drop_points']:.2f} "
            f"| {r['mean_examples_per_release']:,.0f} | {r['replay_bytes_per_intent']:,.0f} "
            f"| {r['bank_bytes_per_intent']:,} |"
        )
    lines += ["", "Each order (final val / test accuracy; worst old-intent val drop):", ""]
    for r in runs:
        lines.append(
            f"- {r['per_intent']} per intent, order {r['seed']} (`{r['method']}`): "
            f"{100 * r['final_val_accuracy']:.2f}% / {100 * r['final_test_accuracy']:.2f}%; "
            f"{r['worst_val_old_intent_drop_points']:.2f}"
        )
    for k, p in paired.items():
        gains = ", ".join(f"{g:+.2f}" for g in p["val_gain_points"])
        drops = ", ".join(f"{d:+.2f}" for d in p["worst_drop_change_points"])
        lines += [
            "",
            f"{k} against {args.reference} per intent, orders {', '.join(map(str, p['seeds']))}: "
            f"final val {gains} points (mean {p['mean_val_gain_points']:+.2f}); worst old-intent "
            f"val drop {drops} (mean {p['mean_worst_drop_change_points']:+.2f}).",
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
