#!/usr/bin/env python
"""Updating existing intents on CLINC150: does `intent-ci update` match a retrain, cheaply?

Setup (per seed; every intent's 100 training utterances in a seeded order):

    thin start   a base release (`init`) on the first 20 utterances of all 150 intents
    3 updates    each adds the next 30 utterances of 50 intents, a different 50 each time
                 (a seeded split of the 150), so every intent ends with 50

Compared in one run:

    intent-ci       `update` with the shipped defaults (`train.update_mode: head`: the head
                    alone on the parent's embeddings of the new rows and of its whole replay
                    memory, distillation on the untouched intents' rows)
    lora            `update_mode: lora`: LoRA and head on the new rows plus replayed exemplars
                    through the encoder (distillation off the updated rows, updated head rows
                    train), as `add-intent` trains
    naive           the lora updates without distillation or replay: fine-tuning on the new
                    rows only (add-intent-style; untouched head rows stay fixed)
    full retrain    `init` on the final data (50 per intent), the same recipe as the base
    retrain/update  what retraining after every update would cost: `init` on 20+30k rows per
                    intent. Its examples are exact (the rows `init` trains on, each intent's
                    less its out-of-scope calibration hold-out, x (epochs + one feature pass));
                    its seconds are the final retrain's seconds per example times those
                    examples

Reported per update: the updated intents' test accuracy before and after, the untouched
intents' change, and cost (compute seconds, examples processed) against the retrains. The same
accuracies on the val split are recorded beside them (never used for the corrections when a
choice is made: run choices with --no-corrections), so update defaults can be chosen on val:

    python scripts/bench_update.py --seeds 0 --methods intent-ci --no-corrections \
        --method epochs-1='{"train": {"update_epochs": 1}}' --out runs/update_choice/seed0

Corrections: the base release's misclassified *val* utterances, with their true labels, in one
update of the base; test accuracy of the intents involved (true and predicted intents of those
utterances) and of the untouched ones, before and after. With --corrections-from train the
corrected utterances are instead the base's misclassified training utterances that no release
of the run trains on, scored on val as well, so a corrections recipe can be chosen on val.

    python scripts/bench_update.py --seeds 0           # one seed, ~1 h on 2 shared CPU cores
    python scripts/bench_update.py --seeds 0 1 2       # the issue's three seeds
    python scripts/bench_update.py --smoke --out /tmp/bench_update_smoke   # checks it runs

Writes <out>.json, <out>.md and <out>.png (default scripts/results/bench_update). Base and
retrain releases are cached under --workdir by recipe and data (scripts/bench_incremental.py).
CLINC150 (CC BY 3.0) is read from ../shared/datasets/clinc150/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import datasets  # noqa: E402
import torch  # noqa: E402
from bench_incremental import (  # noqa: E402
    DEFAULT_DATA,
    cached_init,
    load_clinc,
    peak_rss_mb,
    release_costs,
    reset_peak_rss,
)

from intent_ci.calibration import holdout_count  # noqa: E402
from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import PACKAGED_MINILM, ReleaseConfig, apply_overrides  # noqa: E402
from intent_ci.data import read_examples  # noqa: E402
from intent_ci.pipeline import update_release  # noqa: E402
from intent_ci.registry import Registry  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "intent-ci": {},
    "lora": {"train": {"update_mode": "lora"}},
    "naive": {
        "train": {"update_mode": "lora"},
        "distill": {"enabled": False},
        "replay": {"enabled": False},
    },
}
FLOORS = {
    "final_vs_retrain_points": -0.5,  # final accuracy at most 0.5 points below the retrain
    "untouched_drop_points": 0.3,  # untouched intents lose at most 0.3 points per update
    "cost_ratio": 0.10,  # each update at most 10% of the retrain's compute
}


# ---- data -------------------------------------------------------------------------------------
def plan(raw: dict, seed: int, start: int, step: int, updates: int) -> tuple[dict, list[list[str]]]:
    """Each intent's training utterances in a seeded order, and the seeded update groups."""
    intents = sorted({i for _, i in raw["train"]})
    ordered = {}
    for intent in intents:
        rows = [t for t, i in raw["train"] if i == intent]
        random.Random(f"{seed}-{intent}").shuffle(rows)
        if len(rows) < start + step:
            raise SystemExit(f"{intent} has {len(rows)} training utterances; need {start + step}")
        ordered[intent] = rows
    shuffled = list(intents)
    random.Random(seed).shuffle(shuffled)
    size = len(intents) // updates
    groups = [shuffled[k * size : (k + 1) * size] for k in range(updates)]
    return ordered, groups


def rows_for(ordered: dict, counts: dict[str, tuple[int, int]]) -> datasets.Dataset:
    """Utterances ``ordered[intent][a:b]`` for each ``intent: (a, b)``."""
    texts, labels = [], []
    for intent, (a, b) in counts.items():
        texts += ordered[intent][a:b]
        labels += [intent] * (b - a)
    return datasets.Dataset.from_dict({"text": texts, "intent": labels})


# ---- scoring ----------------------------------------------------------------------------------
def per_intent(clf: IntentClassifier, rows: list[tuple[str, str]]) -> dict[str, list[int]]:
    """``{intent: [correct, n]}`` of `clf` on labelled `rows`."""
    preds = [p.label for p in clf.predict([t for t, _ in rows], batch_size=256)]
    out: dict[str, list[int]] = {}
    for pred, (_, ref) in zip(preds, rows, strict=True):
        out.setdefault(ref, [0, 0])
        out[ref][0] += pred == ref
        out[ref][1] += 1
    return out


def pooled(per: dict[str, list[int]], intents) -> float | None:
    keep = set(intents)
    n = sum(v[1] for k, v in per.items() if k in keep)
    return sum(v[0] for k, v in per.items() if k in keep) / n if n else None


def points(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else round(100 * (after - before), 6)


# ---- one seed ---------------------------------------------------------------------------------
def run_updates(
    name: str,
    overrides: dict,
    base: Registry,
    groups: list[list[str]],
    ordered: dict,
    args: argparse.Namespace,
    raw: dict,
    base_test: dict,
    workdir: Path,
    into: dict,
    base_val: dict | None = None,
) -> None:
    root = workdir / name
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(base.root, root / "adapters")
    registry = Registry(root / "adapters")
    everything = sorted(ordered)
    before, before_val = base_test, base_val
    steps: list[dict] = []
    into[name] = {"overrides": overrides, "updates": steps}  # filled as updates finish
    for k, group in enumerate(groups, start=1):
        data = rows_for(ordered, {i: (args.start, args.start + args.step) for i in group})
        reset_peak_rss()
        started = time.perf_counter()
        release = update_release(
            read_examples(data, known_intents=everything), registry, "latest", overrides=overrides
        )
        wall = time.perf_counter() - started
        cost = release_costs(registry, release)
        cost.update(wall_s=round(wall, 2), peak_rss_mb=peak_rss_mb())
        clf = IntentClassifier.load(registry, release)
        after = per_intent(clf, raw["test"])
        after_val = per_intent(clf, raw["val"]) if before_val is not None else None
        untouched = [i for i in everything if i not in set(group)]
        manifest = registry.manifest(release)
        step = {
            "release": release,
            "updated": group,
            "rows": len(data),
            "updated_before": pooled(before, group),
            "updated_after": pooled(after, group),
            "untouched_before": pooled(before, untouched),
            "untouched_after": pooled(after, untouched),
            "accuracy": pooled(after, everything),
            "corrections": len(manifest["corrections"]),
            "cost": cost,
            "per_intent_test": {i: v[0] / v[1] for i, v in sorted(after.items())},
        }
        step["updated_change_points"] = points(step["updated_after"], step["updated_before"])
        step["untouched_change_points"] = points(step["untouched_after"], step["untouched_before"])
        if after_val is not None:
            step["val"] = {
                "accuracy": pooled(after_val, everything),
                "updated_change_points": points(
                    pooled(after_val, group), pooled(before_val, group)
                ),
                "untouched_change_points": points(
                    pooled(after_val, untouched), pooled(before_val, untouched)
                ),
            }
        steps.append(step)
        print(
            f"  {name} update {k} ({release}): updated {100 * step['updated_before']:.2f} -> "
            f"{100 * step['updated_after']:.2f}, untouched {step['untouched_change_points']:+.2f} "
            f"pts, all {100 * step['accuracy']:.2f}; {cost['compute_s']:.0f} s, "
            f"{cost['examples_processed']} examples",
            flush=True,
        )
        before, before_val = after, after_val


def run_corrections(
    base: Registry,
    raw: dict,
    base_test: dict,
    workdir: Path,
    everything: list[str],
    overrides: dict | None = None,
    pool: list[tuple[str, str]] | None = None,
    base_val: dict | None = None,
) -> dict:
    """Send the base release's misclassified val utterances, correctly labelled, as one update
    (with `overrides` of the update's config, e.g. a recipe being compared; None: as shipped).

    `pool`: labelled utterances to take the misclassified ones from instead of val (training
    utterances no release of the run trains on); the corrections' effect is then scored on
    val too (`base_val`), so a corrections recipe can be chosen there."""
    clf = IntentClassifier.load(base, "v1")
    source = raw["val"] if pool is None else pool
    preds = [p.label for p in clf.predict([t for t, _ in source], batch_size=256)]
    wrong = [(t, i, p) for (t, i), p in zip(source, preds, strict=True) if p != i]
    involved = sorted({i for _, i, _ in wrong} | {p for _, _, p in wrong})
    untouched = [i for i in everything if i not in set(involved)]
    root = workdir / "corrections"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(base.root, root / "adapters")
    registry = Registry(root / "adapters")
    data = datasets.Dataset.from_dict(
        {"text": [t for t, _, _ in wrong], "intent": [i for _, i, _ in wrong]}
    )
    reset_peak_rss()
    started = time.perf_counter()
    release = update_release(
        read_examples(data, known_intents=everything), registry, "v1", overrides=overrides
    )
    wall = time.perf_counter() - started
    cost = release_costs(registry, release)
    cost.update(wall_s=round(wall, 2), peak_rss_mb=peak_rss_mb())
    new = IntentClassifier.load(registry, release)
    after = per_intent(new, raw["test"])
    fixed = [p.label for p in new.predict([t for t, _, _ in wrong], batch_size=256)]
    result = {
        "release": release,
        "corrected_utterances": len(wrong),
        "corrections_listed": len(registry.manifest(release)["corrections"]),
        "corrected_now_right": sum(f == i for f, (_, i, _) in zip(fixed, wrong, strict=True)),
        "involved_intents": len(involved),
        "untouched_intents": len(untouched),
        "involved_before": pooled(base_test, involved),
        "involved_after": pooled(after, involved),
        "untouched_before": pooled(base_test, untouched),
        "untouched_after": pooled(after, untouched),
        "accuracy_before": pooled(base_test, everything),
        "accuracy_after": pooled(after, everything),
        "cost": cost,
        "overrides": overrides or {},
        "source": "val" if pool is None else "held-back train",
    }
    if pool is not None and base_val is not None:
        after_val = per_intent(new, raw["val"])
        result["involved_change_points_val"] = points(
            pooled(after_val, involved), pooled(base_val, involved)
        )
        result["untouched_change_points_val"] = points(
            pooled(after_val, untouched), pooled(base_val, untouched)
        )
    result["involved_change_points"] = points(result["involved_after"], result["involved_before"])
    result["untouched_change_points"] = points(
        result["untouched_after"], result["untouched_before"]
    )
    print(
        f"  corrections: {len(wrong)} {result['source']} utterances, involved "
        f"{result['involved_change_points']:+.2f} pts, untouched {result['untouched_change_points']:+.2f} pts; "
        f"{result['corrected_now_right']} of them now right",
        flush=True,
    )
    return result


def retrain_costs(config: ReleaseConfig, counts: list[list[int]], measured: dict) -> list[dict]:
    """Cost of an `init` on each data size (every intent's utterance count): exact examples,
    seconds scaled from `measured` (an `init` with the same recipe).

    `init` trains on each intent's utterances less its out-of-scope calibration hold-out
    (`holdout_count`), `epochs` passes, plus one feature pass."""
    per_example = measured["compute_s"] / measured["examples_processed"]
    out = []
    for per_intent in counts:
        trained = sum(n - holdout_count(n, config.oos) for n in per_intent)
        examples = trained * (config.train.epochs + 1)
        out.append(
            {
                "rows": sum(per_intent),
                "trained_rows": trained,
                "examples_processed": examples,
                "compute_s": round(per_example * examples, 2),
            }
        )
    return out


def refresh_retrain_costs(result: dict) -> None:
    """Each seed's retrain-after-every-update costs, from the setup, its update groups and the
    measured full retrain (else the base release, an `init` with the retrain's recipe, when the
    retrain was not run): computed when the report is written, so a rebuilt report
    (--report-from) uses the same arithmetic."""
    config = apply_overrides(
        ReleaseConfig(),
        {"oos": result["config"]["oos"], "train": {"epochs": result["config"]["train"]["epochs"]}},
        source="results JSON",
    )
    start, step = result["setup"]["start"], result["setup"]["step"]
    for seed_result in result["seeds"]:
        groups = seed_result.get("groups")
        if not groups:
            continue
        intents = seed_result.get("intents", sum(len(g) for g in groups))
        counts = []
        for k in range(len(groups)):
            grown = sum(len(g) for g in groups[: k + 1])
            counts.append([start + step] * grown + [start] * (intents - grown))
        for key, measured in (
            ("retrain_per_update", seed_result.get("full_retrain")),
            ("retrain_per_update_from_base", seed_result.get("base")),
        ):
            if measured:
                seed_result[key] = retrain_costs(config, counts, measured["cost"])


def methods(args: argparse.Namespace) -> dict[str, dict]:
    """The update override sets to run: the named built-ins, then every --method NAME=JSON."""
    chosen = {name: METHODS[name] for name in args.methods}
    for spec in args.method:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise SystemExit(f"--method {spec!r}: expected NAME=JSON")
        try:
            chosen[name] = json.loads(value)
        except json.JSONDecodeError as err:
            raise SystemExit(f"--method {name}: not JSON ({err})") from None
    return chosen


def run_seed(
    seed: int, raw: dict, config: ReleaseConfig, args: argparse.Namespace, result: dict
) -> None:
    """Fill `result` (already in the run's results) as each part finishes."""
    print(f"seed {seed}", flush=True)
    workdir = Path(args.workdir) / f"seed{seed}"
    config = apply_overrides(config, {"train": {"seed": seed}}, source="bench")
    ordered, groups = plan(raw, seed, args.start, args.step, args.updates)
    everything = sorted(ordered)
    base_data = rows_for(ordered, {i: (0, args.start) for i in everything})
    final_counts = {
        i: (0, args.start + (args.step if any(i in g for g in groups) else 0)) for i in everything
    }
    result.update(seed=seed, groups=groups, intents=len(everything), methods={})
    if methods(args) or not args.no_corrections:
        base, base_cost = cached_init(workdir, "base", base_data, config, args.reuse)
        base_clf = IntentClassifier.load(base, "v1")
        base_test = per_intent(base_clf, raw["test"])
        base_val = per_intent(base_clf, raw["val"])
        result["base"] = {
            "cost": base_cost,
            "accuracy": pooled(base_test, everything),
            "accuracy_val": pooled(base_val, everything),
        }
        print(f"  base: test acc {100 * result['base']['accuracy']:.2f}", flush=True)
    if not args.no_corrections:
        held_back = (
            [(t, i) for i in everything for t in ordered[i][args.start + args.step :]]
            if args.corrections_from == "train"
            else None
        )
        result["corrections"] = run_corrections(
            base,
            raw,
            base_test,
            workdir,
            everything,
            args.corrections_overrides,
            held_back,
            base_val,
        )
    for name, overrides in methods(args).items():
        run_updates(
            name,
            overrides,
            base,
            groups,
            ordered,
            args,
            raw,
            base_test,
            workdir,
            result["methods"],
            base_val,
        )
    if not args.no_retrain:
        # the retrain's own training seed (`--retrain-train-seed`): the same data and recipe
        retrain_seed = seed if args.retrain_train_seed is None else args.retrain_train_seed
        retrain_config = apply_overrides(config, {"train": {"seed": retrain_seed}}, source="bench")
        retrain, cost = cached_init(
            workdir, "retrain", rows_for(ordered, final_counts), retrain_config, args.reuse
        )
        retrain_clf = IntentClassifier.load(retrain, "v1")
        retrain_test = per_intent(retrain_clf, raw["test"])
        result["full_retrain"] = {
            "train_seed": retrain_seed,
            "cost": cost,
            "accuracy": pooled(retrain_test, everything),
            "accuracy_val": pooled(per_intent(retrain_clf, raw["val"]), everything),
        }
        print(
            f"  full retrain: test acc {100 * result['full_retrain']['accuracy']:.2f}", flush=True
        )


# ---- summary and report -----------------------------------------------------------------------
def retrains(seed_result: dict) -> tuple[list[dict], bool]:
    """Retrain cost after each update: measured-final-retrain scaled, else base scaled."""
    if seed_result.get("retrain_per_update"):
        return seed_result["retrain_per_update"], True
    return seed_result.get("retrain_per_update_from_base") or [], False


def summarise(result: dict) -> dict:
    """Per seed and method: final accuracy vs retrain, worst untouched drop, cost ratios."""
    out: dict = {}
    for seed_result in result["seeds"]:
        retrain = seed_result.get("full_retrain")
        per_update, measured = retrains(seed_result)
        for name, m in seed_result["methods"].items():
            steps = m["updates"]
            if not steps:
                continue
            row = {
                "updates_done": len(steps),
                "final_accuracy": steps[-1]["accuracy"],
                "worst_untouched_change_points": min(s["untouched_change_points"] for s in steps),
                "updated_change_points": [s["updated_change_points"] for s in steps],
            }
            if retrain and len(steps) == result["setup"]["updates"]:
                row["vs_retrain_points"] = points(steps[-1]["accuracy"], retrain["accuracy"])
            if all("val" in s for s in steps):
                row["val"] = {
                    "final_accuracy": steps[-1]["val"]["accuracy"],
                    "worst_untouched_change_points": min(
                        s["val"]["untouched_change_points"] for s in steps
                    ),
                }
                if (
                    retrain
                    and "accuracy_val" in retrain
                    and len(steps) == result["setup"]["updates"]
                ):
                    row["val"]["vs_retrain_points"] = points(
                        steps[-1]["val"]["accuracy"], retrain["accuracy_val"]
                    )
            if per_update:
                final = per_update[-1]
                row["retrain_cost_from"] = "final retrain" if measured else "base release"
                row["cost_ratio_examples"] = [
                    s["cost"]["examples_processed"] / final["examples_processed"] for s in steps
                ]
                row["cost_ratio_seconds"] = [
                    s["cost"]["compute_s"] / final["compute_s"] for s in steps
                ]
                row["cost_ratio_examples_vs_step_retrain"] = [
                    s["cost"]["examples_processed"] / r["examples_processed"]
                    for s, r in zip(steps, per_update, strict=False)
                ]
            out.setdefault(name, {})[str(seed_result["seed"])] = row
    return out


def floors(result: dict) -> list[dict]:
    """The issue's floors, on test, for `intent-ci`, every seed; unmeasured ones say so."""
    checks = []

    def add(name: str, value, bar: str, ok: bool | None) -> None:
        checks.append({"floor": name, "value": value, "bar": bar, "met": ok})

    for seed_result in result["seeds"]:
        seed = str(seed_result["seed"])
        row = result["summary"].get("intent-ci", {}).get(seed)
        if row is not None:
            add(
                f"seed {seed}: final accuracy vs full retrain (points)",
                row.get("vs_retrain_points"),
                f">= {FLOORS['final_vs_retrain_points']}",
                None
                if "vs_retrain_points" not in row
                else row["vs_retrain_points"] >= FLOORS["final_vs_retrain_points"],
            )
            add(
                f"seed {seed}: worst untouched-intent change in one update (points, "
                f"{row['updates_done']} of {result['setup']['updates']} updates)",
                row["worst_untouched_change_points"],
                f">= -{FLOORS['untouched_drop_points']}",
                row["worst_untouched_change_points"] >= -FLOORS["untouched_drop_points"],
            )
            if "cost_ratio_examples" in row:
                worst = max(max(row["cost_ratio_examples"]), max(row["cost_ratio_seconds"]))
                add(
                    f"seed {seed}: most expensive update / full retrain, examples or seconds "
                    f"(retrain seconds scaled from the {row['retrain_cost_from']})",
                    round(worst, 4),
                    f"<= {FLOORS['cost_ratio']:.0%}",
                    worst <= FLOORS["cost_ratio"],
                )
        c = seed_result.get("corrections")
        if c and c.get("source", "val") == "val":  # the experiment
            add(
                f"seed {seed}: corrections raise the involved intents (points)",
                c["involved_change_points"],
                "> 0",
                c["involved_change_points"] > 0,
            )
            add(
                f"seed {seed}: corrections' untouched-intent change (points)",
                c["untouched_change_points"],
                f">= -{FLOORS['untouched_drop_points']}",
                c["untouched_change_points"] >= -FLOORS["untouched_drop_points"],
            )
    return checks


def markdown(result: dict, out: Path) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    pts = lambda x: "n/a" if x is None else f"{x:+.2f}"  # noqa: E731
    lines = [
        "# Updating existing intents on CLINC150: `intent-ci update` against a retrain",
        "",
        f"Backbone `{result['backbone']}`, seeds {', '.join(str(s['seed']) for s in result['seeds'])}; "
        f"{result['machine']['cpu_count']} CPU cores, {result['date']}. Produced by "
        + (
            " and ".join(f"`{c}`" for c in result["command"])
            + (
                " (in parallel)" * (len(result["command"]) > 1)
                + f", reported by `{result['report_command']}`"
                if result.get("report_command")
                else " (in parallel, merged with `--report-from`)"
            )
            if isinstance(result["command"], list)
            else f"`{result['command']}`"
        )
        + f"; {out.name}.json has every number. Accuracies are on the CLINC150 **test** split "
        "(in-scope intents), except in the val section at the end.",
        "",
        f"Thin start: {result['setup']['start']} utterances for each of the 150 intents; then "
        f"{result['setup']['updates']} updates of +{result['setup']['step']} utterances for 50 "
        "intents each (a different 50 each time).",
        "",
        "## Floors",
        "",
        "| floor | value | bar | met |",
        "|---|---|---|---|",
    ]
    for c in result["floors"]:
        value = c["value"]
        if value is None:
            shown = "not measured"
        elif "examples or seconds" in c["floor"]:
            shown = f"{100 * value:.1f}%"
        else:
            shown = f"{value:+.2f}"
        met = {True: "yes", False: "**no**", None: "**not measured**"}[c["met"]]
        lines.append(f"| {c['floor']} | {shown} | {c['bar']} | {met} |")
    if result.get("stopped_early"):
        lines += [
            "",
            f"The run was stopped early ({result['stopped_early']}); parts not listed "
            "below were not reached.",
        ]
    for s in result["seeds"]:
        lines += ["", f"## Seed {s['seed']}", ""]
        if "base" in s:
            lines.append(
                f"Base release ({result['setup']['start']} per intent): "
                f"{pct(s['base']['accuracy'])}, {s['base']['cost']['compute_s']:.0f} s compute, "
                f"{s['base']['cost']['examples_processed']} examples processed."
            )
        if "full_retrain" in s:
            fr = s["full_retrain"]
            lines.append(
                f"Full retrain on the final data (50 per intent): **{pct(fr['accuracy'])}**, "
                f"{fr['cost']['compute_s']:.0f} s compute, {fr['cost']['examples_processed']} "
                "examples processed"
                + (
                    f"; train.seed {fr['train_seed']} (`--retrain-train-seed`), val "
                    f"{pct(fr['accuracy_val'])}."
                    if fr.get("train_seed", s["seed"]) != s["seed"]
                    else "."
                )
            )
        lines += [
            "",
            "| method | update | updated intents before -> after | untouched change (pts) | all intents | compute s | examples | vs full retrain (s / examples) | vs retrain at this step (examples) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        per_update, measured = retrains(s)
        final_cost = per_update[-1] if per_update else None
        for name, m in s["methods"].items():
            for k, step in enumerate(m["updates"]):
                c = step["cost"]
                ratio = (
                    f"{100 * c['compute_s'] / final_cost['compute_s']:.1f}% / "
                    f"{100 * c['examples_processed'] / final_cost['examples_processed']:.1f}%"
                    if final_cost
                    else "n/a"
                )
                step_retrain = per_update[k] if k < len(per_update) else None
                sratio = (
                    f"{100 * c['examples_processed'] / step_retrain['examples_processed']:.1f}%"
                    if step_retrain
                    else "n/a"
                )
                lines.append(
                    f"| {name} | {k + 1} ({step['release']}) | {pct(step['updated_before'])} -> "
                    f"{pct(step['updated_after'])} | {pts(step['untouched_change_points'])} | "
                    f"{pct(step['accuracy'])} | {c['compute_s']:.0f} | {c['examples_processed']} | "
                    f"{ratio} | {sratio} |"
                )
        if per_update:
            total = sum(r["examples_processed"] for r in per_update)
            source = "the measured final retrain" if measured else "the measured base release"
            lines += [
                "",
                "Retraining after every update instead: "
                + ", ".join(
                    f"{r['rows']} rows ({r['trained_rows']} trained) = {r['examples_processed']} "
                    f"examples (~{r['compute_s']:.0f} s)"
                    for r in per_update
                )
                + f"; {total} examples in all (exact), seconds scaled from {source}. The cost "
                "ratios in the table divide by the last of these (the retrain on the final data).",
            ]
        c = s.get("corrections")
        if c:
            lines += [
                "",
                "Corrections"
                + (
                    f" (update overrides `{json.dumps(c['overrides'])}`)"
                    if c.get("overrides")
                    else ""
                )
                + f": {c['corrected_utterances']} {c.get('source', 'val')} utterances the base "
                "release got "
                f"wrong, sent with their true labels in one update ({c['corrections_listed']} "
                f"listed as corrections; {c['corrected_now_right']} predicted right afterwards). "
                f"Test accuracy of the {c['involved_intents']} intents involved: "
                f"{pct(c['involved_before'])} -> {pct(c['involved_after'])} "
                f"({pts(c['involved_change_points'])} pts); the {c['untouched_intents']} untouched "
                f"intents: {pct(c['untouched_before'])} -> {pct(c['untouched_after'])} "
                f"({pts(c['untouched_change_points'])} pts); cost {c['cost']['compute_s']:.0f} s, "
                f"{c['cost']['examples_processed']} examples."
                + (
                    f" On val: involved {pts(c['involved_change_points_val'])} pts, untouched "
                    f"{pts(c['untouched_change_points_val'])} pts."
                    if c.get("untouched_change_points_val") is not None
                    else ""
                ),
            ]
    lines += val_table(result)
    lines += [
        "",
        "Cost is the release's compute: feature pass, teacher pass, replay draw, training and "
        "exemplar choice (loading and writing excluded); examples processed = rows through a "
        "training step + rows through a forward-only pass.",
        "",
    ]
    return "\n".join(lines)


def val_table(result: dict) -> list[str]:
    """Per method and seed, the val split's final accuracy, gap to the retrain, worst untouched
    change and examples per update: what update defaults are chosen on. Empty for results
    made before val was scored."""
    rows = [
        (name, seed, row)
        for name, per_seed in result["summary"].items()
        for seed, row in per_seed.items()
        if "val" in row
    ]
    if not rows:
        return []
    by_seed = {str(s["seed"]): s for s in result["seeds"]}
    lines = [
        "",
        "## Val split (what update defaults are chosen on)",
        "",
        "| method | seed | after the updates | − full retrain (pts) | worst untouched change in one update (pts) | examples per update |",
        "|---|---|---|---|---|---|",
    ]
    for name, seed, row in rows:
        v = row["val"]
        steps = by_seed[seed]["methods"][name]["updates"]
        gap = v.get("vs_retrain_points")
        lines.append(
            f"| {name} | {seed} | {100 * v['final_accuracy']:.2f}% | "
            f"{'n/a' if gap is None else f'{gap:+.2f}'} | "
            f"{v['worst_untouched_change_points']:+.2f} | "
            f"{', '.join(str(s['cost']['examples_processed']) for s in steps)} |"
        )
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for s in result["seeds"]:
        if "base" not in s:
            continue
        base = s["base"]["accuracy"]
        for name, m in s["methods"].items():
            ys = [base] + [step["accuracy"] for step in m["updates"]]
            ax.plot(
                range(len(ys)),
                [100 * y for y in ys],
                marker="o",
                label=f"{name} (seed {s['seed']})",
            )
        if "full_retrain" in s:
            ax.axhline(
                100 * s["full_retrain"]["accuracy"],
                linestyle="--",
                color="grey",
                label=f"full retrain (seed {s['seed']})",
            )
    ax.set_xlabel("update (0 = base release, 20 utterances per intent)")
    ax.set_ylabel("CLINC150 test accuracy (%)")
    ax.set_xticks(range(result["setup"]["updates"] + 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def renamed(part: dict, spec: str) -> dict:
    """`part` with method OLD called NEW in every seed (`spec` is ``FILE:OLD=NEW``); the
    command that made the merged report records the renaming."""
    old, _, new = spec.rpartition(":")[2].partition("=")
    if not old or not new:
        raise SystemExit(f"--rename {spec!r}: expected FILE:OLD=NEW")
    seeds = []
    for s in part["seeds"]:
        found = s.get("methods", {})
        if old not in found:
            raise SystemExit(f"--rename {spec!r}: seed {s['seed']} has no method {old!r}")
        seeds.append({**s, "methods": {new if k == old else k: v for k, v in found.items()}})
    return {**part, "seeds": seeds}


def merge(parts: list[dict]) -> dict:
    """One result from parts run in parallel: seeds matched by number, methods united, every
    other per-seed entry (base, full retrain, corrections) taken from the part that has it."""
    commands = [
        c
        for p in parts
        for c in (p["command"] if isinstance(p["command"], list) else [p["command"]])
    ]
    result = {**parts[0], "seeds": [], "command": list(dict.fromkeys(commands))}
    result.pop("report_command", None)
    by_seed: dict[int, dict] = {}
    for part in parts:
        for s in part["seeds"]:
            seen = by_seed.setdefault(s["seed"], {"seed": s["seed"], "methods": {}})
            seen["methods"].update(s.get("methods", {}))
            for key, value in s.items():
                if key != "methods":
                    seen.setdefault(key, value)
    result["seeds"] = [by_seed[k] for k in sorted(by_seed)]
    return result


def write_outputs(result: dict, out: Path) -> None:
    refresh_retrain_costs(result)
    result["summary"] = summarise(result)
    result["floors"] = floors(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result, out), encoding="utf-8")
    plot(result, out.with_suffix(".png"))
    print(markdown(result, out))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CLINC150 data_full.json")
    parser.add_argument("--backbone", default=PACKAGED_MINILM)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra update override set, run beside --methods",
    )
    parser.add_argument("--start", type=int, default=20, help="utterances per intent in the base")
    parser.add_argument("--step", type=int, default=30, help="utterances added per updated intent")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--no-retrain", action="store_true")
    parser.add_argument(
        "--retrain-train-seed",
        type=int,
        default=None,
        help="train.seed of the full retrain (default: the benchmark seed, as the base's); the "
        "data and the rest of the recipe stay the seed's",
    )
    parser.add_argument("--no-corrections", action="store_true")
    parser.add_argument(
        "--corrections-from",
        choices=("val", "train"),
        default="val",
        help="where the corrected utterances come from: the base's misclassified val utterances "
        "(the issue's experiment, test-only) or its misclassified training utterances that no "
        "release of the run trains on (each intent's beyond --start + --step), scored on val "
        "too so that a corrections recipe can be chosen on val",
    )
    parser.add_argument(
        "--corrections-overrides",
        metavar="JSON",
        type=json.loads,
        default=None,
        help="config overrides of the corrections update (default: the shipped recipe), e.g. "
        '\'{"distill": {"enabled": false}}\'',
    )
    parser.add_argument(
        "--reuse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse cached base/retrain releases",
    )
    parser.add_argument("--workdir", default=str(REPO / "runs" / "update"))
    parser.add_argument(
        "--smoke", action="store_true", help="12 intents, 1 epoch, small steps: checks it runs"
    )
    parser.add_argument("--out", default=str(REPO / "scripts" / "results" / "bench_update"))
    parser.add_argument(
        "--report-from",
        metavar="JSON",
        nargs="+",
        help="train nothing: rebuild the report from results JSONs; several (parts of one run "
        "made in parallel processes, e.g. --methods naive --no-retrain --no-corrections) are "
        "merged seed by seed",
    )
    parser.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="FILE:OLD=NEW",
        help="with --report-from: call method OLD of the part read from FILE NEW (e.g. a line "
        "run as `intent-ci` under an earlier default, beside the current one)",
    )
    args = parser.parse_args()
    if args.report_from:
        parts = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.report_from]
        for spec in args.rename:
            source = spec.rpartition(":")[0]
            if source not in args.report_from:
                raise SystemExit(f"--rename {spec!r}: {source!r} is not one of --report-from")
            k = args.report_from.index(source)
            parts[k] = renamed(parts[k], spec)
        merged = merge(parts)
        merged["report_command"] = shlex.join(["python", "scripts/bench_update.py", *sys.argv[1:]])
        write_outputs(merged, Path(args.out))
        return
    _quiet_libraries()
    raw = load_clinc(Path(args.data), smoke=args.smoke)
    config = apply_overrides(
        ReleaseConfig(), {"model": {"backbone": args.backbone}}, source="bench"
    )
    if args.smoke:
        # 12 intents with 20 utterances: 4 + 4 per intent, 3 updates of 4 intents.
        args.start, args.step = 4, 4
        config = apply_overrides(
            config, {"train": {"epochs": 1, "add_intent_epochs": 1}}, source="--smoke"
        )
    started = time.perf_counter()
    result: dict = {
        "dataset": "CLINC150 data_full, in-scope intents",
        "backbone": args.backbone,
        "command": shlex.join(["python", "scripts/bench_update.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "setup": {"start": args.start, "step": args.step, "updates": args.updates},
        "config": config.to_dict(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
        },
        "seeds": [],
    }
    # A run stopped with SIGTERM (e.g. `timeout`) still writes what it finished, marked partial.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped by SIGTERM"))
    try:
        for seed in args.seeds:
            result["seeds"].append({})
            run_seed(seed, raw, config, args, result["seeds"][-1])
    except SystemExit as stop:
        result["stopped_early"] = str(stop)
        raise
    finally:
        result["total_s"] = round(time.perf_counter() - started, 1)
        result["seeds"] = [s for s in result["seeds"] if s]
        write_outputs(result, Path(args.out))


if __name__ == "__main__":
    main()
