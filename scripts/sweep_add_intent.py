#!/usr/bin/env python
"""Choose add-intent defaults on the CLINC150 *validation* split (never on test).

Starts from the v1 of a registry made by `scripts/bench_clinc.py --registry DIR` (100 base
intents), adds the other 50 intents once per override set, and reports on the validation split
the old-intent drop from v1 and the new-intent accuracy:

    python scripts/bench_clinc.py --registry runs/clinc
    python scripts/sweep_add_intent.py runs/clinc '{}' '{"distill": {"weight": 1.0}}' \\
        '{"train": {"add_intent_lr_scale": 1.0}}'

Writes scripts/results/sweep_add_intent.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402

from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.data import read_examples  # noqa: E402
from intent_ci.evaluation import evaluate_release  # noqa: E402
from intent_ci.pipeline import add_intents  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("registry", help="registry whose v1 holds the 100 base intents")
    parser.add_argument(
        "overrides", nargs="+", help='JSON override sets, e.g. \'{"distill": {"weight": 1.0}}\''
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--out", default=str(REPO / "scripts" / "results" / "sweep_add_intent"))
    args = parser.parse_args()
    _quiet_libraries()

    raw = json.loads(Path(args.data).read_text(encoding="utf-8"))
    v1 = IntentClassifier.load(args.registry, "v1")
    base = v1.intents
    added = sorted({i for _, i in raw["train"]} - set(base))

    def rows(split: str, keep: set[str]):
        kept = [(t, i) for t, i in raw[split] if i in keep]
        return read_examples(
            datasets.Dataset.from_dict(
                {"text": [t for t, _ in kept], "intent": [i for _, i in kept]}
            )
        )

    new_train, val_all, val_base = (
        rows("train", set(added)),
        rows("val", set(base) | set(added)),
        rows("val", set(base)),
    )
    v1_val = evaluate_release(v1, val_base)["accuracy"]
    results = []
    for spec in args.overrides:
        overrides = json.loads(spec)
        with tempfile.TemporaryDirectory() as tmp:
            registry = Path(tmp) / "adapters"
            shutil.copytree(args.registry, registry)
            started = time.perf_counter()
            release = add_intents(new_train, registry, "v1", overrides=overrides)
            seconds = time.perf_counter() - started
            scored = evaluate_release(
                IntentClassifier.load(registry, release), val_all, old_intents=base
            )
        results.append(
            {
                "overrides": overrides,
                "v1_val_accuracy": v1_val,
                "old_intents_val_accuracy": scored["old_intents_accuracy"],
                "new_intents_val_accuracy": scored["new_intents_accuracy"],
                "old_intent_drop_points": 100 * (v1_val - scored["old_intents_accuracy"]),
                "wall_s": round(seconds, 1),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# add-intent defaults, chosen on the CLINC150 validation split",
        "",
        f"v1 (100 intents) validation accuracy: {100 * v1_val:.2f}%. Each row adds the other {len(added)} intents.",
        "",
        "| overrides | old-intent drop (points) | new-intent accuracy | wall time |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| `{json.dumps(r['overrides'])}` | {r['old_intent_drop_points']:.2f} | "
            f"{100 * r['new_intents_val_accuracy']:.2f}% | {r['wall_s']} s |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
