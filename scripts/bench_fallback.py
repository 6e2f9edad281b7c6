#!/usr/bin/env python
"""Does `init`'s fallback keep a release from losing to the frozen probe? (CLINC150)

`init` compares the fine-tuned release with the head alone on the frozen encoder, on the
calibration utterances it held out (`intent_ci.fallback`), and ships the better. Two parts:

choose      `fallback.head_epochs` on the **val** split: the head alone is fitted (the library's
            `fit_head`, started from class-mean prototypes as `init` starts it) on frozen
            embeddings of a seeded N utterances per intent, for N in --sizes, at each epoch
            count of --epochs-grid; the logistic-regression probe (C chosen on val) is the
            reference. Rule, fixed before the run: the fewest epochs whose mean val accuracy
            over sizes and seeds is within 0.1 points of the best.

guarantee   for N in --sizes and each seed: `init` with the shipped config and
            `fallback.enabled: true` on N utterances per intent. Reported: the two held-out
            accuracies and the choice from the manifest;
            on **test**, the release, its fine-tuned and head-alone arms (the arm not chosen
            is made by the same `init` with the choice forced the other way:
            `fallback.enabled: false`, or `fallback.min_gain: 100` with `significance: 1`;
            training comes before the choice, so it is the same training) and the probe on
            all N utterances per intent (C chosen on val), which the issue asks the release
            never to lose to; the arms on **val** too.

    python scripts/bench_fallback.py --choose --sizes 10 50 100   # embeddings are cached
    python scripts/bench_fallback.py --choose --sizes 10 50 100 --epochs-grid 160 \
        --choice-from scripts/results/fallback_head_epochs.json     # extends the grid
    python scripts/bench_fallback.py --sizes 10 50 --seeds 0 1 2

Writes <out>.json and <out>.md (default scripts/results/bench_fallback; the choice goes to
scripts/results/fallback_head_epochs). CLINC150 (CC BY 3.0) is read from
../shared/datasets/clinc150/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_incremental as bi  # noqa: E402
import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_baselines import Embedded, fit_c_on_val, t_interval  # noqa: E402

from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import PACKAGED_MINILM, ReleaseConfig, apply_overrides  # noqa: E402
from intent_ci.modeling import build_head, class_prototypes  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402
from intent_ci.training import fit_head  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WITHIN = 0.1  # points: the choice rule's tolerance


def sample(emb: Embedded, raw: dict, n: int, seed: int) -> list[int]:
    """Row numbers of `raw['train']`: the seeded `n` per intent every script here draws."""
    rows = []
    for intent in sorted(emb.rows):
        rows += bi.seeded_sample(list(emb.rows[intent]), n, intent, seed)
    return rows


def probe(emb: Embedded, rows: list[int]) -> dict:
    """Logistic regression on frozen embeddings of `rows`, C chosen on val; val and test."""
    x, y = emb.x["train"][rows], emb.y["train"][rows]
    c, model = fit_c_on_val(x, y, emb.x["val"], emb.y["val"])
    return {
        "C": c,
        **{s: 100 * float((model.predict(emb.x[s]) == emb.y[s]).mean()) for s in bi.SPLITS},
    }


def head_alone(
    emb: Embedded, x: np.ndarray, labels: list[str], config: ReleaseConfig, epochs: int
) -> dict:
    """The library's head-alone fit on embeddings `x`; accuracy on val and test."""
    intents = sorted(set(labels))
    index = {i: k for k, i in enumerate(intents)}
    targets = [index[i] for i in labels]
    pooled = torch.from_numpy(x).float()
    torch.manual_seed(config.train.seed)
    head = build_head(config.model, pooled.shape[1], len(intents), "mean")
    with torch.no_grad():
        head.out_proj.weight.copy_(class_prototypes(pooled, torch.tensor(targets), len(intents)))
    fitted, _ = fit_head(head, pooled, targets, config.train, epochs)
    out = {}
    with torch.no_grad():
        for split in bi.SPLITS:
            pred = fitted(torch.from_numpy(emb.x[split]).float()).argmax(-1).numpy()
            out[split] = 100 * float((np.array(intents)[pred] == emb.y[split]).mean())
    return out


def choose(emb: Embedded, raw: dict, args, config: ReleaseConfig) -> dict:
    """Val accuracy of the head alone over the epoch grid; `args.choice_from` (an earlier
    choice's JSON) supplies the lines and grid points it already has, so a grid is extended
    without refitting them."""
    done = {}
    grid = list(args.epochs_grid)
    if args.choice_from:
        earlier = json.loads(Path(args.choice_from).read_text(encoding="utf-8"))["choice"]
        done = {(r["size"], r["seed"]): r for r in earlier["runs"]}
        grid = sorted({*grid, *(int(e) for e in earlier["mean_val"])})
    runs = []
    for n in args.sizes:
        for seed in args.seeds:
            rows = sample(emb, raw, n, seed)
            cfg = apply_overrides(config, {"train": {"seed": seed}}, source="bench")
            labels = list(emb.y["train"][rows])
            line = done.get((n, seed)) or {"size": n, "seed": seed, "probe": probe(emb, rows)}
            line.setdefault("head", {})
            for epochs in grid:
                if str(epochs) not in line["head"]:
                    line["head"][str(epochs)] = head_alone(
                        emb, emb.x["train"][rows], labels, cfg, epochs
                    )
            print(json.dumps(line), flush=True)
            runs.append(line)
    means = {str(e): float(np.mean([r["head"][str(e)]["val"] for r in runs])) for e in grid}
    best = max(means.values())
    chosen = min(e for e in grid if means[str(e)] >= best - WITHIN)
    return {"runs": runs, "mean_val": means, "chosen": chosen, "rule_points": WITHIN}


def accuracy(clf: IntentClassifier, rows: list[tuple[str, str]]) -> float:
    preds = clf.predict([t for t, _ in rows], batch_size=256, reject=False)
    return 100 * sum(p.intent == i for p, (_, i) in zip(preds, rows, strict=True)) / len(rows)


def guarantee(emb: Embedded, raw: dict, args, config: ReleaseConfig) -> list[dict]:
    lines = []
    workdir = Path(args.workdir)
    for n in args.sizes:
        for seed in args.seeds:
            rows = sample(emb, raw, n, seed)
            texts = [raw["train"][r][0] for r in rows]
            intents = [raw["train"][r][1] for r in rows]
            data = datasets.Dataset.from_dict({"text": texts, "intent": intents})
            # The check is opt-in (off by default); this benchmark measures it on.
            cfg = apply_overrides(
                config, {"train": {"seed": seed}, "fallback": {"enabled": True}}, source="bench"
            )
            started = time.perf_counter()
            registry, cost = bi.cached_init(workdir / f"n{n}_seed{seed}", "init", data, cfg, True)
            manifest = registry.manifest("v1")
            record = manifest["metrics"]["fallback"]
            clf = IntentClassifier.load(registry, "v1")
            release = {s: accuracy(clf, raw[s]) for s in bi.SPLITS}
            # The arm not chosen, made exactly: the same init (training comes before the
            # choice, so it is the same training) with the choice forced the other way.
            if record["chosen"] == "head-only":
                other, force = "fine-tuned", {"enabled": False}
            else:
                other, force = "head-only", {"min_gain": 100.0, "significance": 1.0}
            forced = apply_overrides(cfg, {"fallback": force}, source="bench")
            other_reg, _ = bi.cached_init(workdir / f"n{n}_seed{seed}", other, data, forced, True)
            other_clf = IntentClassifier.load(other_reg, "v1")
            other_acc = {s: accuracy(other_clf, raw[s]) for s in bi.SPLITS}
            tuned, alone = (release, other_acc) if other == "head-only" else (other_acc, release)
            fitted_probe = probe(emb, rows)
            line = {
                "size": n,
                "seed": seed,
                "fallback": record,
                **{
                    s: {
                        "release": release[s],
                        "fine_tuned": tuned[s],
                        "head_alone": alone[s],
                        "probe_all_data": fitted_probe[s],
                    }
                    for s in bi.SPLITS
                },
                "init_cost": cost,
                "wall_s": round(time.perf_counter() - started, 1),
            }
            print(json.dumps(line), flush=True)
            lines.append(line)
    return lines


def fmt(values: list[float]) -> str:
    mean, lo, hi = t_interval(values)
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]" if len(values) > 1 else f"{mean:+.2f}"


def markdown_choice(result: dict) -> str:
    c = result["choice"]
    grid = list(c["mean_val"])
    out = [
        "# Choosing `fallback.head_epochs` on CLINC150 val",
        "",
        f"Backbone `{result['backbone']}`, {result['date']}. Produced by `{result['command']}`.",
        "",
        "The head alone (cosine head from class-mean prototypes, the library's `fit_head`) on "
        "frozen mean-pooled embeddings of a seeded N utterances per intent; val accuracy (%). "
        f"Rule, fixed before the run: the fewest epochs within {c['rule_points']} points of the "
        "best mean.",
        "",
        "| N per intent | seed | probe (LR, C on val) | "
        + " | ".join(f"{e} epochs" for e in grid)
        + " |",
        "|---|---|---|" + "---|" * len(grid),
    ]
    for r in c["runs"]:
        cells = " | ".join(f"{r['head'][e]['val']:.2f}" for e in grid)
        out.append(f"| {r['size']} | {r['seed']} | {r['probe']['val']:.2f} | {cells} |")
    means = " | ".join(f"{c['mean_val'][e]:.2f}" for e in grid)
    probe_mean = np.mean([r["probe"]["val"] for r in c["runs"]])
    out += [f"| mean | | {probe_mean:.2f} | {means} |", "", f"Chosen: **{c['chosen']}** epochs."]
    return "\n".join(out) + "\n"


def markdown(result: dict) -> str:
    lines = result["lines"]
    out = [
        "# `init`'s fallback to the head alone, against the frozen probe (CLINC150)",
        "",
        f"Backbone `{result['backbone']}`, {result['date']}. Produced by `{result['command']}`; "
        "the JSON file of the same name has every number. Held-out: `init`'s calibration utterances "
        "(10% of each intent, at most 20). Test: CLINC150's in-scope test split, no rejection.",
        "",
        "`only FT / only head`: held-out rows only the fine-tuned release / only the head alone "
        "got right; p: the one-sided exact McNemar test that the head alone is better, which must "
        f"be at most `fallback.significance` ({result['config'].get('significance', 'n/a')}) "
        "to fall back.",
        "",
        "| N per intent | seed | held-out: fine-tuned | head alone | only FT / only head | p | "
        "chosen | val: fine-tuned / head alone | test: release | fine-tuned | head alone | "
        "probe, all data | release - probe |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ln in lines:
        f, t, v = ln["fallback"], ln["test"], ln.get("val")
        counts = (
            f"{f['only_fine_tuned_right']} / {f['only_head_right']}"
            if "only_head_right" in f
            else "n/a"
        )
        p = f"{f['p_value']:.3g}" if "p_value" in f else "n/a"
        val = f"{v['fine_tuned']:.2f} / {v['head_alone']:.2f}" if v else "n/a"
        out.append(
            f"| {ln['size']} | {ln['seed']} | {f['fine_tuned_accuracy']:.2f} "
            f"({f['held_back_examples']}) | {f['head_only_accuracy']:.2f} | {counts} | {p} | "
            f"{f['chosen']} | {val} | "
            f"{t['release']:.2f} | {t['fine_tuned']:.2f} | {t['head_alone']:.2f} | "
            f"{t['probe_all_data']:.2f} | {t['release'] - t['probe_all_data']:+.2f} |"
        )
    out += ["", "Mean over seeds, with a 95% Student-t interval (points, test):", ""]
    out += [
        "| N per intent | release - probe | fine-tuned - probe | head alone - probe | "
        "release - better arm | fallback cost (s) |",
        "|---|---|---|---|---|---|",
    ]
    for n in sorted({ln["size"] for ln in lines}):
        group = [ln for ln in lines if ln["size"] == n]
        t = [ln["test"] for ln in group]
        out.append(
            f"| {n} | {fmt([x['release'] - x['probe_all_data'] for x in t])} | "
            f"{fmt([x['fine_tuned'] - x['probe_all_data'] for x in t])} | "
            f"{fmt([x['head_alone'] - x['probe_all_data'] for x in t])} | "
            f"{fmt([x['release'] - max(x['fine_tuned'], x['head_alone']) for x in t])} | "
            f"{np.mean([ln['fallback']['seconds'] for ln in group]):.1f} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(bi.DEFAULT_DATA), help="CLINC150 data_full.json")
    parser.add_argument("--backbone", default=PACKAGED_MINILM)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--choose", action="store_true", help="choose head_epochs on val")
    parser.add_argument("--epochs-grid", type=int, nargs="+", default=[4, 10, 20, 40])
    parser.add_argument(
        "--choice-from",
        metavar="JSON",
        help="with --choose: an earlier choice's results; its grid points are kept, not refitted",
    )
    parser.add_argument("--workdir", default=str(REPO / "runs" / "fallback"))
    parser.add_argument(
        "--embeddings",
        default=str(REPO / "runs" / "bench_baselines" / "embeddings.npz"),
        help="frozen embeddings cache shared with scripts/bench_baselines.py",
    )
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--report-from",
        metavar="JSON",
        nargs="+",
        help="train nothing: one report from the lines of several results files (runs of "
        "different --sizes or --seeds made in parallel)",
    )
    args = parser.parse_args()
    if args.report_from:
        parts = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.report_from]
        result = {**parts[0], "lines": [ln for part in parts for ln in part["lines"]]}
        result["command"] = " and ".join(f"`{part['command']}`" for part in parts).strip("`")
        out = Path(args.out or REPO / "scripts" / "results" / "bench_fallback")
        out.with_suffix(".json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
        print(markdown(result))
        return
    _quiet_libraries()
    raw = bi.load_clinc(Path(args.data))
    emb = Embedded(raw, args.backbone, Path(args.embeddings))
    config = apply_overrides(
        ReleaseConfig(), {"model": {"backbone": args.backbone}}, source="bench"
    )
    result = {
        "backbone": args.backbone,
        "date": str(date.today()),
        "command": shlex.join(["python", "scripts/bench_fallback.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "config": config.to_dict()["fallback"],
    }
    if args.choose:
        result["choice"] = choose(emb, raw, args, config)
        out = Path(args.out or REPO / "scripts" / "results" / "fallback_head_epochs")
        text = markdown_choice(result)
    else:
        result["lines"] = guarantee(emb, raw, args, config)
        out = Path(args.out or REPO / "scripts" / "results" / "bench_fallback")
        text = markdown(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
