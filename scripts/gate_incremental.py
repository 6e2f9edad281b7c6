#!/usr/bin/env python
"""The regression gate on the incremental benchmark's releases: pass intent-ci, fail naive.

`scripts/bench_incremental.py` leaves one registry per protocol and method under its
--workdir (runs/incremental/<protocol>/<method>/adapters). This script runs `intent-ci check`
with the default GateConfig on them, the way CI would:

* every release against its parent, in the protocols named by --per-release (default P1 and
  P2: the CI check of each release as it is made);
* every protocol's final release against the protocol's base release v1 (what a release line
  has cost the base intents in total).

Every check runs with the shipped workflow's defaults, so each one also applies the drift rule
(GateConfig.max_drift) against the line's base release v1: the column "drift vs v1" shows
whether the default workflow catches a line that drifts while every release passes against
its parent.

Test data is the CLINC150 test split, restricted to the intents the candidate knows (30
utterances per intent), written as JSONL, the way a user's test file would be.

    python scripts/bench_incremental.py ...      # first: makes the registries
    python scripts/gate_incremental.py           # about 10 minutes on 2 CPU cores

Writes scripts/results/gate_incremental.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gate_clinc import headline  # noqa: E402

from intent_ci.check import run_check  # noqa: E402
from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import GateConfig  # noqa: E402
from intent_ci.gate import format_p  # noqa: E402
from intent_ci.registry import Registry  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"
METHODS = ("intent-ci", "naive")


def test_file(raw: dict, intents: list[str], folder: Path) -> Path:
    keep = set(intents)
    path = folder / f"test-{len(keep)}-{abs(hash(tuple(sorted(keep))))}.jsonl"
    if not path.exists():
        with path.open("w", encoding="utf-8") as f:
            for text, intent in raw["test"]:
                if intent in keep:
                    f.write(json.dumps({"text": text, "intent": intent}) + "\n")
    return path


def check(registry: Path, candidate: str, baseline: str, raw: dict, work: Path) -> dict:
    started = time.perf_counter()
    intents = Registry(registry).manifest(candidate)["intents"]
    report = run_check(
        registry,
        candidate,
        test_file(raw, intents, work),
        baseline=baseline,
        report_dir=None,
    )
    drift = next(r for r in report["rules"] if r["name"] == "drift")
    return {
        "candidate": candidate,
        "baseline": baseline,
        "old_intents": len(Registry(registry).manifest(baseline)["intents"]),
        **headline(report),
        "drift_against": drift["against"],
        "drift_status": drift["status"],
        "drift_drop_points": drift["details"].get("drop_points"),
        "check_wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=str(REPO / "runs" / "incremental"))
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CLINC150 data_full.json")
    parser.add_argument("--per-release", nargs="*", default=["P1", "P2"])
    parser.add_argument("--out", default=str(REPO / "scripts" / "results" / "gate_incremental"))
    args = parser.parse_args()
    _quiet_libraries()
    raw = json.loads(Path(args.data).read_text(encoding="utf-8"))
    workdir = Path(args.workdir)
    work = Path(tempfile.mkdtemp(prefix="gate-incremental-"))
    result: dict = {
        "workdir": str(workdir),
        "gate_config": GateConfig().__dict__,
        "command": shlex.join(["python", "scripts/gate_incremental.py", *sys.argv[1:]]),
        "checks": [],
    }
    for protocol in sorted(p.name for p in workdir.iterdir() if p.name.startswith("P")):
        for method in METHODS:
            registry = workdir / protocol / method / "adapters"
            if not registry.is_dir():
                continue
            releases = Registry(registry).releases()
            pairs = []
            if protocol in args.per_release:
                pairs += [
                    (r, Registry(registry).manifest(r)["parent"], "parent") for r in releases[1:]
                ]
            pairs.append((releases[-1], "v1", "base"))
            for candidate, baseline, kind in pairs:
                row = {"protocol": protocol, "method": method, "against": kind}
                row.update(check(registry, candidate, baseline, raw, work))
                result["checks"].append(row)
                print(
                    f"{protocol} {method} {candidate} vs {baseline}: {row['verdict']} "
                    f"(drop {row['old_drop_points']:.2f}, {len(row['failing_intents'])} intents)",
                    flush=True,
                )
    rows = result["checks"]
    result["bar"] = {
        "intent_ci_checks": sum(r["method"] == "intent-ci" for r in rows),
        "intent_ci_passed": sum(
            r["method"] == "intent-ci" and r["verdict"] == "pass" for r in rows
        ),
        "naive_checks": sum(r["method"] == "naive" for r in rows),
        "naive_failed": sum(r["method"] == "naive" and r["verdict"] == "fail" for r in rows),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


def drift(x: dict) -> str:
    if x["drift_status"] == "skipped":
        return "-"
    return f"{x['drift_status']}: {x['drift_drop_points']:.2f} vs {x['drift_against']}"


def markdown(r: dict) -> str:
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    b = r["bar"]
    lines = [
        "# The regression gate on the incremental benchmark's releases",
        "",
        "`intent-ci check` with the default GateConfig on the registries that "
        "`scripts/bench_incremental.py` left in `runs/incremental/`, on the CLINC150 test split "
        f"(the candidate's intents, 30 utterances each). Produced by `{r['command']}`. "
        "The drift column is the default drift rule (`drift_decision: upper_bound`, `max_drift` "
        "2 points) against the line's base; `-` where it is skipped (one release from the "
        "baseline, which old_accuracy judges).",
        "",
        f"intent-ci releases passed: **{b['intent_ci_passed']} of {b['intent_ci_checks']}**; "
        f"naive fine-tuning releases failed: **{b['naive_failed']} of {b['naive_checks']}**.",
        "",
        "| protocol | method | candidate vs baseline | verdict | failed rules | old intents: baseline -> candidate | drop (90% CI), points | broken / fixed | McNemar p | failing intents | new intents | drift vs line's base |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["checks"]:
        low, high = x["old_drop_ci_points"]
        lines.append(
            f"| {x['protocol']} | {x['method']} | {x['candidate']} vs {x['baseline']} "
            f"| **{x['verdict'].upper()}** | {', '.join(x['failed_rules']) or '-'} "
            f"| {pct(x['old_baseline_accuracy'])} -> {pct(x['old_candidate_accuracy'])} "
            f"| {x['old_drop_points']:.2f} ({low:.2f} to {high:.2f}) | {x['broken']} / {x['fixed']} "
            f"| {format_p(x['mcnemar_p'])} | {len(x['failing_intents'])} of {x['old_intents']} "
            f"| {pct(x['new_accuracy'])} | {drift(x)} |"
        )
    lines += [
        "",
        "naive = add-intent without distillation and without replay (bench_incremental's "
        "`naive` method). Against `parent`: the CI check of each release as it is made; against "
        "`base`: the protocol's final release against its first.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
