#!/usr/bin/env python
"""Choose the settings of `update` with `train.update_mode: head` on the CLINC150 **val** split.

With the head alone an update never passes a training row through the encoder: the head
trains on the parent's pooled embeddings, which stay fixed. So its three settings (passes,
learning rate, distillation weight) can be compared on embeddings computed once per seed,
in a minute a setting, where a full `intent-ci update` line takes several. This script
replays `scripts/bench_update.py`'s setup on those fixed embeddings:

    base         the cached base release of bench_update's seed (20 utterances for each of the
                 150 intents; --workdir as bench_update's), whose replay memory it starts from
    3 updates    the same seeded groups: +30 utterances for 50 intents each
    each update  the library's `intent_ci.training.fit_head` from the parent's head on the
                 embeddings of every memory exemplar plus the new rows, class-balanced
                 cross-entropy plus distillation from the parent's head on the rows of the
                 intents the update does not touch (as `update` does in head mode; one
                 setting lets the teacher speak for the updated intents' old exemplars too);
                 the updated intents' memory is then re-chosen by herding over their old
                 exemplars and new rows

Every setting starts from torch's generator seeded with the seed (the head's dropout draws
from it), so its numbers do not depend on the settings run before it; `--draws N` repeats
each with N sets of dropout masks and averages them, for settings closer than one run's
spread. One setting keeps the untouched intents' rows frozen (`train.update_head_rows:
changed`): only the updated intents' rows and their neighbours' train. One keeps up to 50
exemplars per updated intent instead of the parent's memory size (every row in this setup).

Only the val split is scored. Rule, fixed before the runs: the setting with the highest mean
final val accuracy over the seeds among those whose untouched intents lose at most 0.3 val
points in every update of every seed. `scripts/bench_update.py --method
head='{"train": {"update_mode": "head"}}'` then measures the chosen setting through the real
`update` (val and test).

    python scripts/sweep_update_head.py --seeds 0 1 2 --workdir runs/update

Writes <out>.json and <out>.md (default scripts/results/update_head/sweep).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_incremental import DEFAULT_DATA, init_cache_folder, load_clinc  # noqa: E402
from bench_update import plan, rows_for  # noqa: E402

from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import (  # noqa: E402
    PACKAGED_MINILM,
    DistillConfig,
    ReleaseConfig,
    ReplayConfig,
    TrainConfig,
    apply_overrides,
)
from intent_ci.discover import encode  # noqa: E402
from intent_ci.registry import Registry  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402
from intent_ci.replay import find_neighbours, herding  # noqa: E402
from intent_ci.training import fit_head  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Setting(NamedTuple):
    """One way to train the head in an update."""

    epochs: int  # passes over the rows
    lr: float
    weight: float  # distillation weight
    # whether the teacher also speaks for the updated intents' old exemplars, as
    # `distill.updated_exemplars` makes it in lora mode
    updated_exemplars: bool = False
    # whether the untouched intents' rows stay the parent's, as `train.freeze_old_rows` keeps
    # them in add-intent: all but the updated intents' and their neighbours'
    frozen_untouched_rows: bool = False
    # how many exemplars an updated intent's memory keeps; None: the parent's size, as
    # `replay.per_intent` does
    updated_memory: int | None = None


SETTINGS = {
    "30 passes, lr 0.01, weight 3": Setting(30, 0.01, 3.0),
    "30 passes, lr 0.01, weight 0 (no teacher)": Setting(30, 0.01, 0.0),
    "30 passes, lr 0.01, weight 1": Setting(30, 0.01, 1.0),
    "30 passes, lr 0.01, weight 10": Setting(30, 0.01, 10.0),
    "30 passes, lr 0.005, weight 3": Setting(30, 0.005, 3.0),
    "30 passes, lr 0.005, weight 1": Setting(30, 0.005, 1.0),
    "80 passes, lr 0.01, weight 3": Setting(80, 0.01, 3.0),
    "30 passes, lr 0.01, weight 1, teacher on updated exemplars": Setting(
        30, 0.01, 1.0, updated_exemplars=True
    ),
    "30 passes, lr 0.01, weight 1, untouched rows frozen": Setting(
        30, 0.01, 1.0, frozen_untouched_rows=True
    ),
    "30 passes, lr 0.01, weight 1, memory 50": Setting(30, 0.01, 1.0, updated_memory=50),
}
UNTOUCHED_FLOOR = -0.3  # val points the untouched intents may lose in one update


def embeddings(clf: IntentClassifier, ordered: dict, raw: dict, cache: Path, end: int) -> dict:
    """Unit-length pooled embeddings of every intent's first `end` training utterances and of
    the val split, from the base release; cached in `cache`."""
    if cache.is_file():
        return torch.load(cache)
    texts = [t for i in clf.intents for t in ordered[i][:end]]
    train, _ = encode(clf, texts, "release", 128)
    val, _ = encode(clf, [t for t, _ in raw["val"]], "release", 128)
    out = {
        "train": torch.from_numpy(train).view(len(clf.intents), end, -1),
        "val": torch.from_numpy(val),
    }
    torch.save(out, cache)
    return out


def run_setting(
    setting: Setting,
    seed: int,
    draw: int,
    clf,
    feats,
    ordered,
    groups,
    raw,
    args,
) -> list[dict]:
    epochs, lr, weight, updated_exemplars, freeze, keep = setting
    # The head's dropout draws from torch's global generator: seed it, so that a setting's
    # numbers do not depend on which settings ran before it in the same process; `draw`
    # picks another set of dropout masks (the rows' order stays the seed's).
    torch.manual_seed(seed + 1000 * draw)
    intents = clf.intents
    index = {n: k for k, n in enumerate(intents)}
    cfg = TrainConfig(seed=seed)
    distill = DistillConfig(weight=weight)
    truth = torch.tensor([index[i] for _, i in raw["val"]])

    def accuracy(head, keep=None) -> float:
        with torch.no_grad():
            right = head(feats["val"]).argmax(-1) == truth
        if keep is not None:
            right = right[torch.tensor([i in keep for _, i in raw["val"]])]
        return 100 * right.float().mean().item()

    # Memory as positions in each intent's ordered utterances.
    memory = {
        i: [ordered[i][: args.start].index(t) for t in clf.release.replay[i]] for i in intents
    }
    head = copy.deepcopy(clf.model.head).float().eval()
    steps = []
    for group in groups:
        changing = set(group)
        rows = []
        for i in intents:
            new = set(range(args.start, args.start + args.step)) if i in changing else set()
            rows += [
                (index[i], j, i not in changing or (updated_exemplars and j in memory[i]))
                for j in sorted(set(memory[i]) | new)
            ]
        pooled = torch.stack([feats["train"][c, j] for c, j, _ in rows])
        labels = [c for c, _, _ in rows]
        taught = torch.tensor([t for _, _, t in rows])
        with torch.no_grad():
            teacher = head(pooled)
        before = accuracy(head, set(intents) - changing)
        frozen = None
        if freeze:
            # The parent's neighbours of each updated intent (`replay.neighbour_share`) train
            # their rows too, as in `update`.
            new = [(index[i], j) for i in group for j in range(args.start, args.start + args.step)]
            with torch.no_grad():
                says = head(torch.stack([feats["train"][c, j] for c, j in new])).argmax(-1)
            found = find_neighbours(
                [intents[k] for k in says.tolist()],
                [intents[c] for c, _ in new],
                ReplayConfig().neighbour_share,
            )
            moving = changing | {old for olds in found.values() for old in olds}
            frozen = [index[i] for i in intents if i not in moving]
        head, _ = fit_head(
            head,
            pooled,
            labels,
            cfg,
            epochs,
            lr=lr,
            teacher_logits=teacher,
            distill=distill,
            teacher_rows=taught,
            frozen_rows=frozen,
            main_process=False,
        )
        steps.append(
            {
                "val_accuracy": accuracy(head),
                "untouched_change_points": accuracy(head, set(intents) - changing) - before,
            }
        )
        for i in group:
            pool = sorted(set(memory[i]) | set(range(args.start, args.start + args.step)))
            chosen = herding(feats["train"][index[i], pool], keep or len(memory[i]))
            memory[i] = [pool[k] for k in chosen]
    return steps


def markdown(result: dict) -> str:
    lines = [
        "# `update` with the head alone: its settings on CLINC150 val",
        "",
        f"Backbone `{result['backbone']}`, seeds {', '.join(map(str, result['seeds']))}, "
        f"{result['date']}. Produced by `{result['command']}`; the JSON has every number.",
        "",
        *(
            [
                f"Each seed ran {result['draws']} dropout draws of every setting; a seed's "
                "accuracy is the mean of its draws, the worst untouched change the worst of any.",
                "",
            ]
            if result["draws"] > 1
            else []
        ),
        "bench_update's setup replayed on fixed embeddings (its cached base release of each "
        "seed; 3 updates of +30 utterances for 50 intents) with the library's `fit_head`; val "
        "only. Rule, fixed before the runs: the highest mean final val accuracy among the "
        f"settings whose untouched intents lose at most {-UNTOUCHED_FLOOR} val points in every "
        "update of every seed.",
        "",
        "| setting | final val accuracy per seed | mean | worst untouched change in one update |",
        "|---|---|---|---|",
    ]
    for name, row in result["summary"].items():
        mark = " **(chosen)**" if name == result["chosen"] else ""
        lines.append(
            f"| {name}{mark} | {', '.join(f'{v:.2f}' for v in row['final'])} | "
            f"{row['mean_final']:.2f} | {row['worst_untouched']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CLINC150 data_full.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--step", type=int, default=30)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument(
        "--draws",
        type=int,
        default=1,
        help="dropout draws per seed and setting (the head's dropout masks; rows keep the "
        "seed's order); a seed's final accuracy is the mean over its draws",
    )
    parser.add_argument(
        "--workdir", default=str(REPO / "runs" / "update"), help="bench_update.py's --workdir"
    )
    parser.add_argument(
        "--out", default=str(REPO / "scripts" / "results" / "update_head" / "sweep")
    )
    args = parser.parse_args()
    _quiet_libraries()
    torch.set_num_threads(1)
    raw = load_clinc(Path(args.data))
    started = time.perf_counter()
    per_seed = {}
    backbone = None
    for seed in args.seeds:
        ordered, groups = plan(raw, seed, args.start, args.step, args.updates)
        # The base release bench_update made for this seed, found by the same recipe-and-data
        # key it was cached under (bench_update's default config, its seed).
        config = apply_overrides(
            ReleaseConfig(),
            {"model": {"backbone": PACKAGED_MINILM}, "train": {"seed": seed}},
            source="bench",
        )
        base_data = rows_for(ordered, {i: (0, args.start) for i in sorted(ordered)})
        folder = init_cache_folder(Path(args.workdir) / f"seed{seed}", "base", base_data, config)
        if not (folder / "cost.json").is_file():
            raise SystemExit(
                f"{folder}: no cached base release; run scripts/bench_update.py --seeds {seed} "
                f"--workdir {args.workdir} first"
            )
        clf = IntentClassifier.load(Registry(folder / "adapters"), "v1")
        backbone = clf.release.manifest["backbone"]["name"]
        cache = folder / f"embeddings_{args.start + args.step}.pt"
        feats = embeddings(clf, ordered, raw, cache, args.start + args.step)
        per_seed[seed] = {}
        for name in args.settings:
            t0 = time.perf_counter()
            per_seed[seed][name] = [
                run_setting(SETTINGS[name], seed, draw, clf, feats, ordered, groups, raw, args)
                for draw in range(args.draws)
            ]
            final = [f"{d[-1]['val_accuracy']:.2f}" for d in per_seed[seed][name]]
            print(
                f"seed {seed} {name}: final val {', '.join(final)} "
                f"({time.perf_counter() - t0:.0f} s)"
            )
    summary = {}
    for name in args.settings:
        runs = [per_seed[s][name] for s in args.seeds]  # per seed, per draw, per update
        final = [sum(d[-1]["val_accuracy"] for d in r) / len(r) for r in runs]
        summary[name] = {
            "final": [round(f, 2) for f in final],  # per seed, mean over its draws
            "mean_final": round(sum(final) / len(final), 2),
            "worst_untouched": round(
                min(u["untouched_change_points"] for r in runs for d in r for u in d), 2
            ),
        }
    eligible = {n: r for n, r in summary.items() if r["worst_untouched"] >= UNTOUCHED_FLOOR}
    result = {
        "backbone": backbone,
        "seeds": args.seeds,
        "draws": args.draws,
        "date": str(date.today()),
        "command": shlex.join(["python", "scripts/sweep_update_head.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
        "settings": {n: SETTINGS[n]._asdict() for n in args.settings},
        "per_seed": per_seed,
        "summary": summary,
        "chosen": max(eligible, key=lambda n: eligible[n]["mean_final"]) if eligible else None,
        "total_s": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
