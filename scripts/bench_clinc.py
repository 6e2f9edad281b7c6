#!/usr/bin/env python
"""CLINC150 end to end: a base release on 100 intents, then one add-intent release with the other 50.

Also fits the cheap baseline on the same split: logistic regression on frozen mean-pooled
embeddings of the same backbone (C chosen on the validation split). The fine-tuned release
must beat it; a fine-tuned model that loses to a linear probe means the recipe is wrong.

    python scripts/bench_clinc.py                      # packaged all-MiniLM-L6-v2, offline
    python scripts/bench_clinc.py --backbone /path/to/encoder --out scripts/results/bench_clinc_x

Writes <out>.json, <out>.md and <out>.png. Reads CLINC150 (CC BY 3.0) from
../shared/datasets/clinc150/data_full.json; the dataset is never copied into the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import PACKAGED_MINILM, ReleaseConfig, apply_overrides  # noqa: E402
from intent_ci.data import read_examples  # noqa: E402
from intent_ci.evaluation import evaluate_release  # noqa: E402
from intent_ci.modeling import load_backbone, pool  # noqa: E402
from intent_ci.pipeline import add_intents, init_release  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"


def split_rows(raw: dict, split: str, intents: set[str]) -> datasets.Dataset:
    rows = [(t, i) for t, i in raw[split] if i in intents]
    return datasets.Dataset.from_dict(
        {"text": [t for t, _ in rows], "intent": [i for _, i in rows]}
    )


@torch.no_grad()
def embed(backbone, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Frozen encoder, mean pooling: the features the linear probe sees."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = backbone.tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        hidden = backbone.encoder(**batch).last_hidden_state
        out.append(F.normalize(pool(hidden, batch["attention_mask"], "mean"), dim=-1))
    return torch.cat(out).numpy()


def linear_probe(
    backbone,
    train: datasets.Dataset,
    val: datasets.Dataset,
    test: datasets.Dataset,
    old_intents: list[str] | None = None,
) -> dict:
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    x_train, x_val, x_test = (embed(backbone, d["text"]) for d in (train, val, test))
    embed_s = time.perf_counter() - started
    best = None
    for c in (1.0, 10.0, 100.0):  # chosen on validation, never on test
        fit_start = time.perf_counter()
        model = LogisticRegression(C=c, max_iter=3000).fit(x_train, train["intent"])
        val_acc = float((model.predict(x_val) == np.array(val["intent"])).mean())
        if best is None or val_acc > best[0]:
            best = (val_acc, c, model, time.perf_counter() - fit_start)
    val_acc, c, model, fit_s = best
    predictions = model.predict(x_test)
    truth = np.array(test["intent"])
    result = {
        "C": c,
        "val_accuracy": val_acc,
        "test_accuracy": float((predictions == truth).mean()),
        "embed_s": round(embed_s, 1),
        "fit_s": round(fit_s, 1),
    }
    if old_intents is not None:
        # How much a jointly trained probe loses on the old intents once the new ones compete:
        # the part of the old-intent drop that no incremental method can avoid.
        mask = np.isin(truth, list(old_intents))
        result["old_intents_test_accuracy"] = float((predictions[mask] == truth[mask]).mean())
    return result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CLINC150 data_full.json")
    parser.add_argument("--backbone", default=PACKAGED_MINILM)
    parser.add_argument(
        "--base-intents", type=int, default=100, help="first N intents (sorted names) in v1"
    )
    parser.add_argument("--registry", help="registry folder (default: a temporary folder)")
    parser.add_argument("--out", default=str(REPO / "scripts" / "results" / "bench_clinc"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _quiet_libraries()
    torch.manual_seed(args.seed)

    raw = json.loads(Path(args.data).read_text(encoding="utf-8"))
    intents = sorted({i for _, i in raw["train"]})
    base, added = intents[: args.base_intents], intents[args.base_intents :]
    base_set, all_set = set(base), set(intents)
    splits = {
        name: {s: split_rows(raw, s, keep) for s in ("train", "val", "test")}
        for name, keep in (("base", base_set), ("all", all_set))
    }
    new_train = split_rows(raw, "train", set(added))

    config = apply_overrides(
        ReleaseConfig(),
        {"model": {"backbone": args.backbone}, "train": {"seed": args.seed}},
        source="bench",
    )
    registry = (
        Path(args.registry) if args.registry else Path(tempfile.mkdtemp(prefix="clinc-registry-"))
    )
    result: dict = {
        "dataset": "CLINC150 data_full (in-scope only)",
        "backbone": args.backbone,
        "base_intents": len(base),
        "added_intents": len(added),
        "seed": args.seed,
        "config": config.to_dict(),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
        },
    }

    backbone = load_backbone(config.model)
    print(f"linear probe on frozen mean-pooled {args.backbone} embeddings ...", flush=True)
    result["linear_probe_base"] = linear_probe(
        backbone, *(splits["base"][s] for s in ("train", "val", "test"))
    )
    result["linear_probe_all"] = linear_probe(
        backbone, *(splits["all"][s] for s in ("train", "val", "test")), old_intents=base
    )
    del backbone

    print(f"v1: base release on {len(base)} intents ...", flush=True)
    started = time.perf_counter()
    v1 = init_release(read_examples(splits["base"]["train"]), registry, config)
    v1_s = time.perf_counter() - started
    print(f"v2: add {len(added)} intents ...", flush=True)
    started = time.perf_counter()
    v2 = add_intents(read_examples(new_train), registry, v1)
    v2_s = time.perf_counter() - started

    clf1, clf2 = IntentClassifier.load(registry, v1), IntentClassifier.load(registry, v2)
    for split in ("val", "test"):
        r1 = evaluate_release(clf1, read_examples(splits["base"][split]))
        r2 = evaluate_release(clf2, read_examples(splits["all"][split]), old_intents=base)
        result[split] = {
            "v1_accuracy": r1["accuracy"],
            "v2_accuracy": r2["accuracy"],
            "v2_old_intents_accuracy": r2["old_intents_accuracy"],
            "v2_new_intents_accuracy": r2["new_intents_accuracy"],
            "old_intent_drop_points": 100 * (r1["accuracy"] - r2["old_intents_accuracy"]),
        }
        if split == "test":
            result["per_intent_test"] = {
                i: {
                    "v1": r1["per_intent"].get(i, {}).get("accuracy"),
                    "v2": r2["per_intent"][i]["accuracy"],
                }
                for i in intents
            }
    m1, m2 = (clf.manifest["metrics"] for clf in (clf1, clf2))
    result["timing"] = {
        "v1_wall_s": round(v1_s, 1),
        "v1_train_s": round(m1["train"]["wall_time_s"], 1),
        "v1_examples_trained": m1["train"]["examples_trained"],
        "v2_wall_s": round(v2_s, 1),
        "v2_train_s": round(m2["train"]["wall_time_s"], 1),
        "v2_examples_trained": m2["train"]["examples_trained"],
        "v2_replay_examples": m2["replay_examples"],
        "peak_rss_mb": round(peak_rss_mb()),
    }
    t = result["test"]
    result["bar"] = {
        "v1_beats_linear_probe": t["v1_accuracy"] > result["linear_probe_base"]["test_accuracy"],
        "old_intent_drop_within_1_point": t["old_intent_drop_points"] <= 1.0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result, out), encoding="utf-8")
    plot(result, out.with_suffix(".png"))
    print(markdown(result, out))


def markdown(r: dict, out: Path) -> str:
    t, v, tm = r["test"], r["val"], r["timing"]
    lp, lpa = r["linear_probe_base"], r["linear_probe_all"]
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    lines = [
        f"# CLINC150: base release on {r['base_intents']} intents, then add {r['added_intents']}",
        "",
        f"Backbone `{r['backbone']}`, seed {r['seed']}, {r['machine']['cpu_count']} CPU cores. "
        f"Produced by `python scripts/bench_clinc.py` ({out.name}.json has every number).",
        "",
        "| model | intents | test accuracy | val accuracy |",
        "|---|---|---|---|",
        f"| linear probe, frozen mean-pooled embeddings (C={lp['C']:g}) | {r['base_intents']} | {pct(lp['test_accuracy'])} | {pct(lp['val_accuracy'])} |",
        f"| **v1** intent-ci base release | {r['base_intents']} | **{pct(t['v1_accuracy'])}** | {pct(v['v1_accuracy'])} |",
        f"| linear probe (C={lpa['C']:g}) | {r['base_intents'] + r['added_intents']} | {pct(lpa['test_accuracy'])} | {pct(lpa['val_accuracy'])} |",
        f"| **v2** = v1 + {r['added_intents']} intents (add-intent) | {r['base_intents'] + r['added_intents']} | **{pct(t['v2_accuracy'])}** | {pct(v['v2_accuracy'])} |",
        f"| v2 on the old {r['base_intents']} intents | {r['base_intents']} | {pct(t['v2_old_intents_accuracy'])} | {pct(v['v2_old_intents_accuracy'])} |",
        f"| v2 on the new {r['added_intents']} intents | {r['added_intents']} | {pct(t['v2_new_intents_accuracy'])} | {pct(v['v2_new_intents_accuracy'])} |",
        "",
        f"Old-intent change v1 -> v2 on test: {-t['old_intent_drop_points']:+.2f} points. "
        f"For reference, the linear probe trained jointly on all {r['base_intents'] + r['added_intents']} intents "
        f"scores {pct(lpa['old_intents_test_accuracy'])} on the old intents, "
        f"{100 * (lpa['old_intents_test_accuracy'] - lp['test_accuracy']):+.2f} points from the {r['base_intents']}-intent probe: "
        "that much of the drop comes from new intents competing with old ones, not from forgetting.",
        "",
        "| cost | v1 (init) | v2 (add-intent) |",
        "|---|---|---|",
        f"| training wall time | {tm['v1_train_s']} s | {tm['v2_train_s']} s |",
        f"| whole job (load, feature pass, train, write) | {tm['v1_wall_s']} s | {tm['v2_wall_s']} s |",
        f"| examples trained (epochs x set) | {tm['v1_examples_trained']} | {tm['v2_examples_trained']} (incl. {tm['v2_replay_examples']} replay per epoch) |",
        "",
        f"Linear probe: embedding {lp['embed_s'] + lpa['embed_s']:.0f} s, fits {lp['fit_s']} s and {lpa['fit_s']} s. "
        f"Peak RSS {tm['peak_rss_mb']} MB.",
        "",
        f"Bar: v1 beats the linear probe: **{r['bar']['v1_beats_linear_probe']}**; "
        f"old-intent drop <= 1.0 point: **{r['bar']['old_intent_drop_within_1_point']}**.",
        "",
        f"![per-intent accuracy]({out.name}.png)",
        "",
    ]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = r["per_intent_test"]
    old = [(i, v) for i, v in per.items() if v["v1"] is not None]
    new = [(i, v) for i, v in per.items() if v["v1"] is None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    deltas = sorted(100 * (v["v2"] - v["v1"]) for _, v in old)
    ax1.bar(range(len(deltas)), deltas, color=["#c0392b" if d < 0 else "#27ae60" for d in deltas])
    ax1.axhline(0, color="black", lw=0.8)
    ax1.set_title(f"Old intents: per-intent test accuracy change v1 -> v2 (n={len(old)})")
    ax1.set_ylabel("points")
    ax1.set_xlabel("old intents, sorted by change")
    t = r["test"]
    labels = [
        "probe\n(100)",
        "v1\n(100)",
        "v2 old\n(100)",
        "v2 new\n(50)",
        "v2 all\n(150)",
        "probe\n(150)",
    ]
    values = [
        r["linear_probe_base"]["test_accuracy"],
        t["v1_accuracy"],
        t["v2_old_intents_accuracy"],
        t["v2_new_intents_accuracy"],
        t["v2_accuracy"],
        r["linear_probe_all"]["test_accuracy"],
    ]
    bars = ax2.bar(
        labels,
        [100 * v for v in values],
        color=["#95a5a6", "#2980b9", "#2980b9", "#8e44ad", "#2c3e50", "#95a5a6"],
    )
    for bar, value in zip(bars, values, strict=True):
        ax2.text(
            bar.get_x() + bar.get_width() / 2,
            100 * value + 0.1,
            f"{100 * value:.1f}",
            ha="center",
            fontsize=8,
        )
    ax2.set_ylim(max(0, 100 * min(values) - 5), 100)
    ax2.set_title("Test accuracy (%)")
    del new
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
