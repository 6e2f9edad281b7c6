#!/usr/bin/env python
"""Choose the base-release recipe on the CLINC150 *validation* split (never on test).

Trains a full release on all 150 intents once per override set and reports val accuracy (test
is recorded too, but never used to choose):

    python scripts/sweep_init.py '{}' '{"train": {"epochs": 4}}' \\
        '{"model": {"lora_target_modules": ["query", "key", "value", "dense"]}}'

Writes scripts/results/sweep_init.{json,md}. Releases are cached under runs/incremental/cache,
where scripts/bench_incremental.py reuses them. `--condition small` trains on the seeded 50
utterances per intent of bench_incremental's small condition (the same rows, so its cached
retrains are reused with the same --workdir and --seed):

    python scripts/sweep_init.py '{}' '{"train": {"epochs": 8}}' --condition small --seed 1 \
        --workdir runs/small/seed1 --out scripts/results/init_epochs_small/seed1
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_incremental import (  # noqa: E402
    CONDITIONS,
    DEFAULT_DATA,
    REPO,
    SPLITS,
    cached_init,
    condition_rows,
    intent_order,
    load_clinc,
    score,
    train_rows,
)

from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import PACKAGED_MINILM, ReleaseConfig, apply_overrides  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="+", help="JSON override sets for the release config")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--backbone", default=PACKAGED_MINILM)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--condition",
        choices=list(CONDITIONS),
        default="full",
        help="training utterances per intent: all (full) or bench_incremental's seeded 50 (small)",
    )
    parser.add_argument("--workdir", default=str(REPO / "runs" / "incremental"))
    parser.add_argument("--out", default=str(REPO / "scripts" / "results" / "sweep_init"))
    parser.add_argument(
        "--append", action="store_true", help="add the rows to an existing result file"
    )
    args = parser.parse_args()
    _quiet_libraries()
    raw = load_clinc(Path(args.data))
    raw["train"] = condition_rows(raw["train"], CONDITIONS[args.condition], args.seed)
    intents = intent_order(raw, args.seed)
    data = train_rows(raw, intents, None, args.seed)
    results = []
    for spec in args.overrides:
        config = apply_overrides(
            ReleaseConfig(),
            {"model": {"backbone": args.backbone}, "train": {"seed": args.seed}},
            source="sweep",
        )
        config = apply_overrides(config, json.loads(spec), source=spec)
        registry, cost = cached_init(Path(args.workdir), "retrain", data, config, reuse=True)
        scores = score(IntentClassifier.load(registry, "v1"), raw, intents, set())
        row = {
            "overrides": json.loads(spec),
            "seed": args.seed,
            "condition": args.condition,
            "training_utterances": len(data),
            "command": shlex.join(["python", "scripts/sweep_init.py", *sys.argv[1:]]),
            **{f"{s}_accuracy": scores[s]["accuracy"] for s in SPLITS},
            "compute_s": cost["compute_s"],
            "examples_processed": cost["examples_processed"],
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    if args.append and out.with_suffix(".json").is_file():
        results = json.loads(out.with_suffix(".json").read_text(encoding="utf-8")) + results
    write(results, out, args.backbone)


def describe(results: list[dict]) -> str:
    """The rows' training data and seeds, e.g. ``15,000 utterances, seed 0``; rows made before
    the fields were recorded are the full condition, seed 0."""
    sizes = sorted({r.get("training_utterances", 15000) for r in results})
    seeds = sorted({r.get("seed", 0) for r in results})
    conditions = sorted({r.get("condition", "full") for r in results})
    return (
        f"{' / '.join(f'{n:,}' for n in sizes)} utterances"
        + (f", condition {', '.join(conditions)}" if conditions != ["full"] else "")
        + f", seed {', '.join(map(str, seeds))}"
    )


def commands(results: list[dict]) -> str:
    """The commands that made the rows (rows made before they were recorded: the generic one)."""
    made = list(dict.fromkeys(r.get("command", "") for r in results))
    return " and ".join(
        f"`{c}`" if c else "`python scripts/sweep_init.py [--append] OVERRIDES ...`" for c in made
    )


def write(results: list[dict], out: Path, backbone: str) -> None:
    """JSON plus a Markdown table, best val accuracy first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    best = max(results, key=lambda r: r["val_accuracy"])
    lines = [
        "# Base-release recipe, chosen on the CLINC150 validation split",
        "",
        f"One release on all 150 intents per row ({describe(results)}), backbone `{backbone}`. "
        f"Produced by {commands(results)}; the choice "
        "uses val only, test is shown for the record. Compute times are left out: the rows ran on "
        "a shared 2-core machine under different loads (`scripts/bench_incremental.py` times the "
        "chosen recipe on a quiet machine).",
        "",
        "| overrides | val accuracy | test accuracy | examples processed |",
        "|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: -r["val_accuracy"]):
        mark = " **(chosen)**" if r is best else ""
        lines.append(
            f"| `{json.dumps(r['overrides'])}`{mark} | {100 * r['val_accuracy']:.2f}% | "
            f"{100 * r['test_accuracy']:.2f}% | {r['examples_processed']:,} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
