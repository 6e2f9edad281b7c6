#!/usr/bin/env python
"""The regression gate on CLINC150: it must pass the recipe's release and fail naive fine-tuning.

Trains (or reuses, with --registry) three releases on the packaged all-MiniLM-L6-v2 encoder:

* v1: the first 100 intents (sorted names);
* v2: v1 + the other 50 intents with the recommended add-intent recipe (defaults);
* v3: v1 + the same 50 intents by naive fine-tuning: no distillation, no replay, the full base
  learning rates (``train.add_intent_lr_scale: 1``), i.e. fine-tuning on the new data alone.

Then runs `intent-ci check` (defaults of GateConfig) for v2 and v3 against v1 on the CLINC150
test split of all 150 intents (30 utterances per intent).

    python scripts/gate_clinc.py                             # trains all three (about 20 minutes)
    python scripts/bench_clinc.py --registry runs/clinc      # v1 and v2 ...
    python scripts/gate_clinc.py --registry runs/clinc       # ... reused here; only v3 is trained

Writes scripts/results/gate_clinc.{json,md} and the two report.png files as
gate_clinc_recommended.png and gate_clinc_naive.png. Reads CLINC150 (CC BY 3.0) from
../shared/datasets/clinc150/data_full.json; the dataset is never copied into the repo.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402

from intent_ci.check import run_check  # noqa: E402
from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import (  # noqa: E402
    PACKAGED_MINILM,
    GateConfig,
    ReleaseConfig,
    apply_overrides,
)
from intent_ci.data import read_examples  # noqa: E402
from intent_ci.gate import format_p  # noqa: E402
from intent_ci.pipeline import add_intents, init_release  # noqa: E402
from intent_ci.registry import Registry  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"
# Naive fine-tuning: what add-intent becomes without its two safeguards and its smaller steps.
NAIVE = {
    "distill": {"enabled": False},
    "replay": {"enabled": False},
    "train": {"add_intent_lr_scale": 1.0},
}


def headline(report: dict) -> dict:
    """The numbers of an `intent-ci check` report that the benchmark tables show."""
    old = report["old_intents"]
    per_intent = next(r for r in report["rules"] if r["name"] == "per_intent")
    return {
        "verdict": report["verdict"],
        "failed_rules": report["failed_rules"],
        "old_baseline_accuracy": old["baseline_accuracy"],
        "old_candidate_accuracy": old["candidate_accuracy"],
        "old_drop_points": old["drop_points"],
        "old_drop_ci_points": old["ci_points"],
        "broken": old["broken"],
        "fixed": old["fixed"],
        "mcnemar_p": old["p_value"],
        "failing_intents": per_intent["intents"],
        "new_accuracy": report["new_intents"]["accuracy"],
    }


def rows(raw: dict, split: str, keep: set[str]) -> datasets.Dataset:
    pairs = [(t, i) for t, i in raw[split] if i in keep]
    return datasets.Dataset.from_dict(
        {"text": [t for t, _ in pairs], "intent": [i for _, i in pairs]}
    )


def build_releases(raw: dict, registry: Path, backbone: str, base_count: int, seed: int) -> dict:
    """v1, v2 (recipe) and v3 (naive) in an empty registry; returns wall times in seconds."""
    intents = sorted({i for _, i in raw["train"]})
    base, added = set(intents[:base_count]), set(intents[base_count:])
    config = apply_overrides(
        ReleaseConfig(), {"model": {"backbone": backbone}, "train": {"seed": seed}}, source="bench"
    )
    times = {}
    have = Registry(registry).releases() if registry.exists() else []
    if have[:1] == ["v1"]:
        if set(Registry(registry).manifest("v1")["intents"]) != base:
            raise SystemExit(f"{registry}/v1 does not hold the first {base_count} intents")
    else:
        started = time.perf_counter()
        print(f"v1: {len(base)} intents ...", flush=True)
        init_release(read_examples(rows(raw, "train", base)), registry, config)
        times["v1_s"] = round(time.perf_counter() - started, 1)
    new = read_examples(rows(raw, "train", added))
    for name, overrides in (("v2", None), ("v3", NAIVE)):
        if name in have:  # e.g. v1 and v2 made by scripts/bench_clinc.py --registry DIR
            manifest = Registry(registry).manifest(name)
            if manifest["parent"] != "v1" or sorted(manifest["new_intents"]) != sorted(added):
                raise SystemExit(f"{registry}/{name} is not v1 + the other {len(added)} intents")
            continue
        started = time.perf_counter()
        print(
            f"{name}: add {len(added)} intents ({'naive' if overrides else 'recipe'}) ...",
            flush=True,
        )
        add_intents(new, registry, "v1", overrides=overrides, overrides_source="gate_clinc naive")
        times[f"{name}_s"] = round(time.perf_counter() - started, 1)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CLINC150 data_full.json")
    parser.add_argument("--backbone", default=PACKAGED_MINILM)
    parser.add_argument("--base-intents", type=int, default=100)
    parser.add_argument(
        "--registry", help="registry folder to create or reuse (default: temporary)"
    )
    parser.add_argument("--out", default=str(REPO / "scripts" / "results" / "gate_clinc"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _quiet_libraries()

    raw = json.loads(Path(args.data).read_text(encoding="utf-8"))
    registry = Path(args.registry or tempfile.mkdtemp(prefix="clinc-gate-"))
    times = build_releases(raw, registry, args.backbone, args.base_intents, args.seed)
    manifests = {name: Registry(registry).manifest(name) for name in ("v1", "v2", "v3")}

    # The test split of all 150 intents as JSONL (a file intent-ci reads like any user's data).
    work = Path(tempfile.mkdtemp(prefix="clinc-gate-work-"))
    test_file = work / "clinc150_test.jsonl"
    with test_file.open("w", encoding="utf-8") as f:
        for text, intent in raw["test"]:
            f.write(json.dumps({"text": text, "intent": intent}) + "\n")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "dataset": "CLINC150 data_full test split (in-scope, 150 intents x 30)",
        "backbone": args.backbone,
        "base_intents": args.base_intents,
        "registry": str(registry),
        "gate_config": dataclasses.asdict(GateConfig()),
        "train_wall_s": times,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "releases": {},
    }
    for name, label in (("v2", "recommended"), ("v3", "naive")):
        started = time.perf_counter()
        report = run_check(registry, name, test_file, baseline="v1", report_dir=work / name)
        shutil.copyfile(work / name / "report.png", out.parent / f"{out.name}_{label}.png")
        result["releases"][label] = {
            "release": name,
            "config_overrides": NAIVE if label == "naive" else {},
            **headline(report),
            "top_confusions": report["confusions"][:5],
            "rules": {r["name"]: r["summary"] for r in report["rules"]},
            "check_wall_s": round(time.perf_counter() - started, 1),
            "train_metrics": manifests[name]["metrics"].get("train"),
        }
    result["bar"] = {
        "recommended_passes": result["releases"]["recommended"]["verdict"] == "pass",
        "naive_fails": result["releases"]["naive"]["verdict"] == "fail",
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result, out), encoding="utf-8")
    print(markdown(result, out))


def markdown(r: dict, out: Path) -> str:
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    lines = [
        "# The regression gate on CLINC150",
        "",
        f"`intent-ci check` with the default GateConfig, candidates against v1 (first 100 intents) "
        f"on the CLINC150 test split of all 150 intents. Backbone `{r['backbone']}`. Produced by "
        "`python scripts/gate_clinc.py`.",
        "",
        "| release | verdict | failed rules | old intents v1 -> candidate | drop (90% CI) | broken / fixed | McNemar p | failing intents | new intents |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, x in r["releases"].items():
        low, high = x["old_drop_ci_points"]
        lines.append(
            f"| {x['release']} {label} | **{x['verdict'].upper()}** | {', '.join(x['failed_rules']) or '-'} "
            f"| {pct(x['old_baseline_accuracy'])} -> {pct(x['old_candidate_accuracy'])} "
            f"| {x['old_drop_points']:.2f} ({low:.2f} to {high:.2f}) | {x['broken']} / {x['fixed']} "
            f"| {format_p(x['mcnemar_p'])} | {len(x['failing_intents'])} of {r['base_intents']} "
            f"| {pct(x['new_accuracy'])} |"
        )
    lines += [
        "",
        "Naive fine-tuning = add-intent with "
        + json.dumps(r["releases"]["naive"]["config_overrides"])
        + ".",
        "",
        f"Bar: recommended release passes: **{r['bar']['recommended_passes']}**; naive fine-tuning "
        f"fails: **{r['bar']['naive_fails']}**.",
        "",
    ]
    if r["train_wall_s"]:
        lines += [
            "Training wall time: "
            + ", ".join(f"{k[:-2]} {v} s" for k, v in r["train_wall_s"].items())
            + f" ({r['machine']['torch_threads']} torch thread(s), {r['machine']['cpu_count']} CPUs"
            + (", shared with other jobs)." if r["machine"].get("shared") else ")."),
            "",
        ]
    reused = [k for k in ("v1", "v2", "v3") if f"{k}_s" not in r["train_wall_s"]]
    if reused:
        lines += [
            f"{' and '.join(reused)} reused from `{r['registry']}` (made by "
            "`scripts/bench_clinc.py --registry`; its wall times are in bench_clinc.md).",
            "",
        ]
    for label in r["releases"]:
        lines += [f"![{label}]({out.name}_{label}.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
