#!/usr/bin/env python
"""SetFit on the backbone intent-ci fine-tunes: the contrastive few-shot alternative, on CLINC150.

SetFit (Tunstall et al. 2022, the `setfit` library) fine-tunes the whole sentence encoder on
pairs of utterances (same intent: similar; different intents: not) and then fits a
logistic-regression head on the tuned embeddings. It is not incremental: every change to the
intent set retrains it on all the data, like intent-ci's full retrain and the frozen probe on
all data. So it is measured where those are, on every intent's training utterances after the
last release (P1 and P2 end on the same rows), and `scripts/bench_baselines.py --setfit FILE`
puts it beside the probes and intent-ci, paired by condition and seed.

Budget: SetFit draws `max_steps` x `batch_size` pairs. By default the pairs pass as many
utterances through the encoder as the full retrain does (`train.epochs` x the rows it trains
on: all but each intent's calibration hold-out; two utterances a pair), so the two fine-tunes
get the same number of encoder passes; SetFit's backward passes run through every weight,
intent-ci's through LoRA.

Two heads on the same tuned body:
    SetFit              the library's own: `Trainer.train()`, scikit-learn's
                        LogisticRegression with its defaults
    SetFit, C on val    logistic regression on the tuned embeddings with C chosen on val from
                        1, 10 and 100, as bench_baselines chooses it for the frozen probe

Conditions as bench_baselines: `full` (100 training utterances per intent) and `small` (a seeded
50 per intent, the same rows the other scripts draw for that seed). In `full` the seed moves only
SetFit's own randomness (pair sampling, shuffling).

    python scripts/bench_setfit.py --conditions full small --seeds 0 1 2
    python scripts/bench_setfit.py --smoke          # 12 intents, a few steps: checks it runs

Writes <out>.{json,md} (--out, default scripts/results/bench_setfit). Needs the `setfit` package (the `bench` extra).
CLINC150 (CC BY 3.0) is read from ../shared/datasets/clinc150/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_baselines as bb  # noqa: E402
import bench_incremental as bi  # noqa: E402
import numpy as np  # noqa: E402

from intent_ci.calibration import holdout_count  # noqa: E402
from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import PACKAGED_MINILM, OOSConfig, TrainConfig  # noqa: E402
from intent_ci.modeling import resolve_backbone_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HEADS = ("SetFit", "SetFit, C on val")


def retrain_passes(rows: list[tuple[str, str]]) -> int:
    """Utterances the shipped `init` recipe trains on, times its epochs, on `rows`: every row
    but each intent's calibration hold-out."""
    per_intent = Counter(i for _, i in rows)
    held = sum(holdout_count(n, OOSConfig()) for n in per_intent.values())
    return TrainConfig().epochs * (len(rows) - held)


def accuracy(pred, truth) -> float:
    return float((np.asarray(pred) == np.asarray(truth)).mean())


def run_one(
    raw: dict, backbone: str, rows: list[tuple[str, str]], seed: int, args, workdir: Path
) -> dict:
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    passes = retrain_passes(rows)
    max_steps = args.max_steps or math.ceil(passes / (2 * args.batch_size))
    model = SetFitModel.from_pretrained(backbone)
    training = TrainingArguments(
        output_dir=str(workdir),
        batch_size=args.batch_size,
        num_epochs=1,
        max_steps=max_steps,
        seed=seed,
        report_to="none",
        save_strategy="no",
        show_progress_bar=True,
    )
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=Dataset.from_dict(
            {"text": [t for t, _ in rows], "label": [i for _, i in rows]}
        ),
    )
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started

    out: dict = {
        "rows": len(rows),
        "max_steps": max_steps,
        "batch_size": args.batch_size,
        "pairs": max_steps * args.batch_size,
        "encoder_passes": 2 * max_steps * args.batch_size,
        "retrain_encoder_passes": passes,
        "train_s": round(train_s, 1),
        "heads": {},
    }
    texts = {s: [t for t, _ in raw[s]] for s in bi.SPLITS}
    truth = {s: [i for _, i in raw[s]] for s in bi.SPLITS}
    out["heads"]["SetFit"] = {s: accuracy(model.predict(texts[s]), truth[s]) for s in bi.SPLITS}

    x_train = np.asarray(model.encode([t for t, _ in rows]))
    y_train = np.array([i for _, i in rows])
    x = {s: np.asarray(model.encode(texts[s])) for s in bi.SPLITS}
    c, probe = bb.fit_c_on_val(x_train, y_train, x["val"], np.array(truth["val"]))
    out["heads"]["SetFit, C on val"] = {
        **{s: accuracy(probe.predict(x[s]), truth[s]) for s in bi.SPLITS},
        "C": c,
    }
    return out


def markdown(result: dict) -> str:
    lines = [
        "# SetFit on the same backbone: every intent's data at once (CLINC150)",
        "",
        f"Backbone `{result['backbone']}`, {result['machine']}, {result['date']}. Produced by "
        f"`{result['command']}`; the JSON file of the same name has every number. Accuracy in % on the 150 "
        "in-scope intents after training on every training utterance of the condition (what "
        "the full retrain and the probe on all data see after the last release of P1 and P2).",
        "",
        "| condition | seed | rows | steps x batch (pairs) | encoder passes (retrain's) | "
        "train s | SetFit val / test | SetFit, C on val: val / test (C) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for key, r in result["runs"].items():
        condition, seed = key.split("/")
        own, tuned = r["heads"]["SetFit"], r["heads"]["SetFit, C on val"]
        lines.append(
            f"| {condition} | {seed} | {r['rows']} | {r['max_steps']} x {r['batch_size']} "
            f"({r['pairs']}) | {r['encoder_passes']} ({r['retrain_encoder_passes']}) | "
            f"{r['train_s']} | {100 * own['val']:.2f} / {100 * own['test']:.2f} | "
            f"{100 * tuned['val']:.2f} / {100 * tuned['test']:.2f} ({tuned['C']:g}) |"
        )
    lines += ["", "Mean and 95% t-interval over seeds, test:", ""]
    for condition in result["conditions"]:
        for head in HEADS:
            values = [
                100 * r["heads"][head]["test"]
                for k, r in result["runs"].items()
                if k.startswith(condition + "/")
            ]
            if values:
                mean, lo, hi = bb.t_interval(values)
                ci = "" if math.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]"
                lines.append(f"- {condition}, {head}: {mean:.2f}{ci} ({len(values)} seeds)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(bi.DEFAULT_DATA), help="CLINC150 data_full.json")
    parser.add_argument("--backbone", default=PACKAGED_MINILM)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--conditions", nargs="+", default=list(bi.CONDITIONS), choices=list(bi.CONDITIONS)
    )
    parser.add_argument("--batch-size", type=int, default=TrainConfig().batch_size)
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="pairs drawn = steps x batch size (default: the full retrain's encoder passes)",
    )
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_setfit"))
    parser.add_argument("--out", default=str(REPO / "scripts" / "results" / "bench_setfit"))
    parser.add_argument("--smoke", action="store_true", help="12 intents, 8 steps")
    parser.add_argument(
        "--report-from", metavar="JSON", help="train nothing: rewrite the report of this file"
    )
    args = parser.parse_args()
    if args.report_from:
        result = json.loads(Path(args.report_from).read_text(encoding="utf-8"))
        bb.write_report(result, Path(args.out), markdown)
        return
    _quiet_libraries()
    if args.smoke:
        args.max_steps = args.max_steps or 8

    raw = bi.load_clinc(Path(args.data), smoke=args.smoke)
    backbone = resolve_backbone_path(args.backbone)
    result: dict = {
        "command": shlex.join(["python", "scripts/bench_setfit.py", *sys.argv[1:]]),
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})",
        "backbone": args.backbone.split("/")[-1],
        "conditions": args.conditions,
        "runs": {},
    }
    for condition in args.conditions:
        per_intent = bi.CONDITIONS[condition]
        if args.smoke and per_intent:
            per_intent = 10
        for seed in args.seeds:
            rows = bi.condition_rows(raw["train"], per_intent, seed)
            run = run_one(
                raw, backbone, rows, seed, args, Path(args.workdir) / f"{condition}_{seed}"
            )
            result["runs"][f"{condition}/{seed}"] = run
            print(
                f"{condition} seed {seed}: "
                + ", ".join(f"{h} test {100 * run['heads'][h]['test']:.2f}" for h in HEADS),
                flush=True,
            )
            bb.write_report(result, Path(args.out), markdown)  # after every run: nothing lost


if __name__ == "__main__":
    main()
