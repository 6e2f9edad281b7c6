#!/usr/bin/env python
"""How far can joining go? Looser joining rules for `intent-ci discover`, on val traffic.

`discover` joins an utterance left outside every candidate (considered but unclustered, or
accepted by the release) to the candidate whose centre is most similar, when that cosine is at
least `join_similarity` (0.4) AND higher than its cosine to every existing intent's centre.
The end-to-end gap of scripts/bench_discover.py is mostly the new intents' utterances that stay
outside the files, so this script asks what looser rules would add, and at what noise:

    known - d        the candidate need only be within d of the nearest existing intent's centre
                     (for every outside utterance, or for the accepted ones only)
    considered bar b the utterances the release rejected or hesitated on join at cosine >= b,
                     with or without the existing-intent comparison (accepted ones as shipped)
    --space backbone the shipped rule's form in the frozen backbone's features (candidate and
                     existing-intent centres there too), its bar gridded anew; the clusters
                     stay the release's

Each rule is applied exactly as `join_candidates` applies the shipped one: once, to the
candidates as clustered (their centres before anything joins), so the simulation is the rule
`discover` would run. Traffic and bases are bench_discover.py's val choices': each seed's
120-intent base release (4 epochs) with the shipped out-of-scope rule; the `val` utterances
of all 150 intents + `oos_val` (never the benchmark's traffic, never test).

    python scripts/discover_join_rules.py --seeds 0 1 2 --workdir runs/disc30
    python scripts/discover_join_rules.py --seeds 0 1 2 --workdir runs/disc30 --space backbone \\
        --out scripts/results/discover_join_rules_backbone

Writes <out>.json and <out>.md (default scripts/results/discover_join_rules).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_discover as bd  # noqa: E402

from intent_ci.config import DiscoverConfig  # noqa: E402
from intent_ci.discover import dedup_key, discover, embed, intent_prototypes  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = DiscoverConfig().join_similarity
COVERED, NOISE = "held_out_covered_share", "noise_share"
KEYS = ("recovered_share", "held_out_covered_share", "acc", "ari", "noise_share", "usable_share")


def rules() -> list[dict]:
    """The rules compared; each joins an outside utterance whose nearest candidate centre is at
    cosine `top` when: top >= bar, and (if `known`) top > (nearest existing centre) - delta.
    Considered and accepted utterances each get their own (bar, known, delta)."""
    shipped = {"bar": SHIPPED, "known": True, "delta": 0.0}

    def rule(name: str, considered: dict, accepted: dict) -> dict:
        return {"rule": name, "considered": considered, "accepted": accepted}

    out = [rule(f"shipped: bar {SHIPPED}, nearer than every existing intent", shipped, shipped)]
    for d in (0.02, 0.05, 0.1):
        loose = {**shipped, "delta": d}
        out.append(rule(f"within {d} of the nearest existing intent, all", loose, loose))
        out.append(
            rule(f"within {d} of the nearest existing intent, accepted only", shipped, loose)
        )
    for b in (0.3, 0.35):
        out.append(
            rule(
                f"considered at bar {b}, nearer than every existing intent",
                {**shipped, "bar": b},
                shipped,
            )
        )
    for b in (0.3, 0.35, 0.4, 0.45):
        free = {"bar": b, "known": False, "delta": 0.0}
        out.append(
            rule(f"considered at bar {b}, no comparison with existing intents", free, shipped)
        )
    return out


def backbone_rules() -> list[dict]:
    """Joining in the frozen backbone's space (`--space backbone`): the shipped rule's form
    (cosine >= bar to the nearest candidate centre and nearer it than every existing intent),
    its bar re-chosen, since cosines there have another scale. Clustering stays in the
    release's features."""
    out = []
    for b in (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6):
        rule = {"bar": b, "known": True, "delta": 0.0}
        out.append(
            {
                "rule": f"backbone space: bar {b}, nearer than every existing intent",
                "considered": rule,
                "accepted": rule,
            }
        )
    return out


def passes(rule: dict, top: np.ndarray, nearest_known: np.ndarray) -> np.ndarray:
    ok = top >= rule["bar"]
    if rule["known"]:
        ok &= top > nearest_known - rule["delta"]
    return ok


def run_seed(args: argparse.Namespace, raw: dict, seed: int) -> dict:
    workdir = Path(args.workdir) / f"w{seed}"
    split = bd.seed_split(raw, seed)
    held = set(split["held_out"])
    base, _ = bd.base_release(workdir, split, args.backbone, seed, args.base_epochs)
    clf = IntentClassifier.load(bd.calibrated_base(workdir, base, split, raw, seed), "latest")
    val = list(raw["val"]) + [(t, "oos") for t, _ in raw["oos_val"]]
    traffic, true_of = bd.traffic_file(workdir / f"seed{seed}" / "val_traffic.txt", val)
    found = discover(clf, traffic, DiscoverConfig(join_similarity=None))  # clusters, no joining
    x = found.scored.features
    if x is None:
        raise SystemExit("the release's features are needed (DiscoverConfig.features: release)")
    if args.space == "backbone":  # join in the frozen backbone's space; clusters as they are
        x = embed(clf, traffic.texts, "backbone", 128, desc="backbone features")
        prototypes, _, _ = intent_prototypes(clf, "backbone", 128)
    else:
        prototypes = found.plot["prototypes"]
    index = {dedup_key(t): i for i, t in enumerate(traffic.texts)}
    labels = np.full(len(traffic.texts), -1)
    new = [c for c in found.candidates if c.belongs_to is None]
    for k, cand in enumerate(new):
        for u in cand.utterances:
            labels[index[dedup_key(u["text"])]] = k
    considered = np.zeros(len(labels), dtype=bool)
    considered[found.chosen] = True
    centres = np.stack([x[labels == k].mean(0) for k in range(len(new))])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    sims = x @ centres.T
    best = sims.argmax(axis=1)
    top = sims[np.arange(len(x)), best]
    nearest_known = (x @ np.stack(list(prototypes.values())).T).max(axis=1)
    outside = labels < 0
    truth = np.array(true_of)
    mine = np.isin(truth, list(held))
    out = {
        "seed": seed,
        "candidates": len(new),
        "held_out_utterances": int(mine.sum()),
        "held_out_outside_considered": int((mine & outside & considered).sum()),
        "held_out_outside_accepted": int((mine & outside & ~considered).sum()),
        "rules": [],
    }
    for rule in rules() if args.space == "release" else backbone_rules():
        joined = labels.copy()
        jc = outside & considered & passes(rule["considered"], top, nearest_known)
        ja = outside & ~considered & passes(rule["accepted"], top, nearest_known)
        joined[jc | ja] = best[jc | ja]
        m = bd.cluster_metrics(joined, true_of, held)
        m["usable_share"] = m["held_out_covered_share"] * (m.get("acc") or 0.0)
        out["rules"].append(
            {
                "rule": rule["rule"],
                **{k: round(float(m[k] or 0.0), 4) for k in KEYS},
                "joined_considered": int(jc.sum()),
                "joined_accepted": int(ja.sum()),
                "joined_held_out": int(((jc | ja) & mine).sum()),
            }
        )
        print(f"seed {seed}: {out['rules'][-1]}", flush=True)
    return out


def markdown(result: dict) -> str:
    seeds = result["seeds"]
    lines = [
        "# How far joining can go: looser rules for `intent-ci discover`, on val traffic"
        + (" (joining in the backbone's features)" if result.get("space") == "backbone" else ""),
        "",
        f"Command: `{result['command']}`"
        + (f", reported by `{result['reported_by']}`" if result.get("reported_by") else "")
        + "  ",
        f"Date: {result['date']}; backbone {result['backbone']}; each seed's 120-intent base "
        f"release ({result['base_epochs']} epochs) with the shipped out-of-scope rule; traffic: "
        "the `val` utterances of all 150 intents + `oos_val` (never the benchmark's traffic, "
        "never test); every other DiscoverConfig field at its default. Each rule is applied "
        "once to the candidates as clustered, as `join_candidates` applies the shipped one. "
        + (
            "Joining compares in the frozen backbone's features (the release's LoRA off): "
            "candidate centres from the clustered members and existing intents' centres from "
            "their replay exemplars, both in those features; clustering is the release's. "
            if result.get("space") == "backbone"
            else ""
        )
        + "Mean over seeds "
        + ", ".join(str(s["seed"]) for s in seeds)
        + ".",
        "",
        "Held-out utterances outside every candidate before joining (per seed): "
        + "; ".join(
            f"seed {s['seed']}: {s['held_out_outside_considered']} considered, "
            f"{s['held_out_outside_accepted']} accepted, of {s['held_out_utterances']}"
            for s in seeds
        )
        + ".",
        "",
        "| rule | recovered | held-out covered | ACC | ARI | noise | usable | joined (held-out) "
        "| covered per seed | noise per seed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for k, name in enumerate(r["rule"] for r in seeds[0]["rules"]):
        per = [s["rules"][k] for s in seeds]
        mean = {key: float(np.mean([p[key] for p in per])) for key in KEYS}
        joined = np.mean([p["joined_considered"] + p["joined_accepted"] for p in per])
        joined_held = np.mean([p["joined_held_out"] for p in per])
        lines.append(
            f"| {name} | {100 * mean['recovered_share']:.1f}% "
            f"| {100 * mean['held_out_covered_share']:.1f}% | {100 * mean['acc']:.1f} "
            f"| {100 * mean['ari']:.1f} | {100 * mean['noise_share']:.1f}% "
            f"| {100 * mean['usable_share']:.1f}% | {joined:.0f} ({joined_held:.0f}) "
            f"| {' / '.join(f'{100 * p[COVERED]:.1f}' for p in per)} "
            f"| {' / '.join(f'{100 * p[NOISE]:.1f}' for p in per)} |"
        )
    lines += [
        "",
        "Recovered: a candidate of >= 5 utterances, >= 70% from one held-out intent. Covered: "
        "held-out utterances in some new-intent candidate. Noise: candidate utterances from "
        "known intents or `oos`. Usable: covered x ACC. Joined: distinct utterances that joined "
        "after clustering (of them, held-out intents' utterances), mean over seeds.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(bd.DEFAULT_DATA), help="CLINC150 data_full.json")
    parser.add_argument("--backbone", default=bd.PACKAGED_MINILM)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--base-epochs", type=int, default=4)
    parser.add_argument(
        "--workdir",
        default=str(REPO / "runs" / "discover_join"),
        help="base releases are cached in <workdir>/w<seed> (bench_discover.py's layout)",
    )
    parser.add_argument(
        "--space",
        choices=("release", "backbone"),
        default="release",
        help="the features joining compares in: the release's (as `discover` does) or the "
        "frozen backbone's (its bar re-gridded); clustering is the release's either way",
    )
    parser.add_argument("--out", default=str(REPO / "scripts" / "results" / "discover_join_rules"))
    parser.add_argument(
        "--report-from",
        metavar="JSON",
        help="train and score nothing: rewrite <out>.md from this script's JSON",
    )
    args = parser.parse_args()
    out = Path(args.out)
    if args.report_from:
        result = json.loads(Path(args.report_from).read_text(encoding="utf-8"))
        result["reported_by"] = shlex.join(
            ["python", "scripts/discover_join_rules.py", *sys.argv[1:]]
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
        print(f"wrote {out}.json and {out}.md")
        return
    raw = bd.load_raw(Path(args.data))
    result = {
        "command": shlex.join(["python", "scripts/discover_join_rules.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "backbone": args.backbone,
        "base_epochs": args.base_epochs,
        "space": args.space,
        "seeds": [run_seed(args, raw, seed) for seed in args.seeds],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(f"wrote {out}.json and {out}.md")


if __name__ == "__main__":
    main()
