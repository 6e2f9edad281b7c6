#!/usr/bin/env python
"""Variants of the shipped recipe (L2 to the parent, EWC, replay without distillation, a
smaller distillation weight) over intent orders, on val (issue 19).

Reads bench_incremental results of one protocol (any methods, one or more intent orders) and
writes <out>.json and <out>.md: per method, the final val accuracy, the worst old-intent val
drop of a single release and the examples processed per release, each order listed and the
mean over orders. The variants were run as methods of their own on the base release the
shipped recipe's runs used (same cache, same order):

    python scripts/bench_incremental.py --protocols P2 --methods l2 --no-retrain --no-probe \\
        --seed S --split val --workdir runs/reg/l2_sS --out runs/reg/bench_incremental_p2_l2_sS
    (the same with --methods ewc, replay-only or distill-1), then
    python scripts/regulariser_report.py --protocol P2 \\
        --run scripts/results/orders/bench_incremental_p2_seed0.json --run ... \\
        --out scripts/results/regularisers/p2_val

Rule, fixed before the runs: a variant replaces the shipped recipe (`intent-ci`) as the default
only if, over the orders, it raises the mean final val accuracy and lowers the mean worst
old-intent val drop, and raises the final val accuracy on every order.

`--rule matches` applies the test the 50-utterance condition was held to when replay alone
replaced distillation (fixed before those runs): a variant matches the recipe if its mean final
val accuracy is at most 0.1 point lower and its worst old-intent val drop is at most 0.1 point
higher on the mean or its paired 95% t-interval over the orders holds zero.

`--rule raises` (fixed before the `replay.new_ratio: 2.0` runs): a variant replaces the recipe
if its mean final val accuracy is at least 0.1 point higher, no order is more than 0.1 point
lower, and its worst old-intent val drop passes the `matches` test. `--baseline NAME` names the
method the variants are compared with (the shipped recipe's line; default `intent-ci`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_baselines import t_interval  # noqa: E402


def summarise(path: Path, protocol: str) -> dict[str, dict]:
    result = json.loads(path.read_text())
    out = {}
    for method, run in result["protocols"][protocol]["methods"].items():
        releases = run["releases"]
        drops = [
            r["old_intent_drop_points"]["val"] for r in releases if r.get("old_intent_drop_points")
        ]
        examples = [r["cost"]["examples_processed"] for r in releases if r.get("cost")]
        out[method] = {
            "file": str(path),
            "command": result["command"],
            "seed": result["seed"],
            "overrides": run["overrides"],
            "final_val_accuracy": releases[-1]["scores"]["val"]["accuracy"],
            "worst_val_old_intent_drop_points": max(drops),
            "mean_examples_per_release": float(np.mean(examples)),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, type=Path)
    parser.add_argument("--protocol", default="P2")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--rule",
        choices=["improves", "matches", "raises"],
        default="improves",
        help="improves: the regulariser rule; matches: the small condition's test; raises: "
        "the new_ratio test (docstring)",
    )
    parser.add_argument(
        "--baseline", default="intent-ci", help="the method the variants are compared with"
    )
    args = parser.parse_args()
    baseline = args.baseline

    rows: dict[str, dict[int, dict]] = {}
    for path in args.run:
        for method, row in summarise(path, args.protocol).items():
            rows.setdefault(method, {})[row["seed"]] = row
    if baseline not in rows:
        raise SystemExit(f"no {baseline} run among --run: the rule compares against it")
    seeds = sorted(rows[baseline])
    summary = {}
    for method, by_seed in rows.items():
        common = [s for s in seeds if s in by_seed]
        summary[method] = {
            "seeds": common,
            **{
                field: float(np.mean([by_seed[s][field] for s in common]))
                for field in (
                    "final_val_accuracy",
                    "worst_val_old_intent_drop_points",
                    "mean_examples_per_release",
                )
            },
        }
    base = rows[baseline]
    verdicts = {}
    for method, by_seed in rows.items():
        if method == baseline:
            continue
        common = [s for s in seeds if s in by_seed]
        gains = [by_seed[s]["final_val_accuracy"] - base[s]["final_val_accuracy"] for s in common]
        base_acc = np.mean([base[s]["final_val_accuracy"] for s in common])
        base_drop = np.mean([base[s]["worst_val_old_intent_drop_points"] for s in common])
        drop_diffs = [
            by_seed[s]["worst_val_old_intent_drop_points"]
            - base[s]["worst_val_old_intent_drop_points"]
            for s in common
        ]
        if args.rule == "improves":
            passes = (
                summary[method]["final_val_accuracy"] > base_acc
                and summary[method]["worst_val_old_intent_drop_points"] < base_drop
                and all(g > 0 for g in gains)
            )
        else:
            drop_ci = t_interval(drop_diffs)
            drop_ok = np.mean(drop_diffs) <= 0.1 + 1e-9 or drop_ci[0] <= 0 <= drop_ci[1]
            gain = 100 * (summary[method]["final_val_accuracy"] - base_acc)
            if args.rule == "matches":
                passes = gain >= -0.1 - 1e-9 and drop_ok
            else:
                passes = (
                    gain >= 0.1 - 1e-9 and all(100 * g >= -0.1 - 1e-9 for g in gains) and drop_ok
                )
        verdicts[method] = {
            "orders": common,
            "gain_points_per_order": [100 * g for g in gains],
            "worst_drop_change_points_per_order": drop_diffs,
            "worst_drop_change_ci": list(t_interval(drop_diffs)),
            "rule": args.rule,
            "replaces_default": bool(len(common) == len(seeds) and passes),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"protocol": args.protocol, "rows": rows, "summary": summary, "verdicts": verdicts}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1))

    options = "" if args.rule == "improves" else f" --rule {args.rule}"
    options += "" if baseline == "intent-ci" else f" --baseline {baseline}"
    lines = [
        f"# {args.protocol} on val: variants of the shipped recipe, over intent orders",
        "",
        "Made by `python scripts/regulariser_report.py --protocol "
        f"{args.protocol}{options} {' '.join(f'--run {p}' for p in args.run)} --out {args.out}`; "
        "each "
        "run's command is in the JSON. Val decides; the base release and intent order of each "
        "seed are shared by every method.",
        "",
        "| method | overrides | orders | final val accuracy % (each order) | mean | worst "
        "old-intent val drop, points (mean) | examples per release |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, by_seed in rows.items():
        s = summary[method]
        each = ", ".join(f"{100 * by_seed[k]['final_val_accuracy']:.2f}" for k in s["seeds"])
        overrides = json.dumps(next(iter(by_seed.values()))["overrides"]) or "{}"
        lines.append(
            f"| {method} | `{overrides}` | {', '.join(map(str, s['seeds']))} | {each} "
            f"| {100 * s['final_val_accuracy']:.2f} | {s['worst_val_old_intent_drop_points']:.2f} "
            f"| {s['mean_examples_per_release']:.0f} |"
        )
    if args.rule == "improves":
        rule = __doc__.split("Rule, fixed before the runs: ")[1].split("`--rule matches`")[0]
        rule = "Rule, fixed before the runs: " + " ".join(rule.split())
        rule += " The shipped default changes only when a variant passes on both P1 and P2"
    else:
        text = __doc__.split(f"`--rule {args.rule}`")[1]
        text = text.split("`--rule raises`")[0].split("`--baseline")[0]
        rule = f"`--rule {args.rule}` " + " ".join(text.split()).rstrip(".")
    lines += ["", f"{rule} (docs/benchmarks.md).", ""]
    for method, v in verdicts.items():
        gains = ", ".join(f"{g:+.2f}" for g in v["gain_points_per_order"])
        drops = ", ".join(f"{d:+.2f}" for d in v["worst_drop_change_points_per_order"])
        lo, hi = v["worst_drop_change_ci"][1:]
        verb = ("replaces" if v["replaces_default"] else "does not replace") + " the shipped recipe"
        if args.rule == "matches":
            verb = "matches" if v["replaces_default"] else "does not match"
            verb += f" {baseline}"
        elif args.rule == "raises":
            verb = ("replaces" if v["replaces_default"] else "does not replace") + f" {baseline}"
        lines.append(
            f"- **{method}**: {verb} by the rule "
            f"(final val accuracy against {baseline}, per order: {gains} points; worst drop, "
            f"per order: {drops} points, 95% interval [{lo:+.2f}, {hi:+.2f}])"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
