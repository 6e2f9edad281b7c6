#!/usr/bin/env python
"""Out-of-scope detection on CLINC150: which score, which target, and does it hold along a line?

Setup (issue 14): a release on the 150 in-scope intents (all-MiniLM-L6-v2, shipped defaults,
so 10% of each intent's training utterances are held out as its calibration set), with
`oos_test` (1,000 rows) as the out-of-scope test set and `oos_val` + `oos_train` (200 rows, every
out-of-scope row that is not test) as the out-of-scope val set. The threshold is calibrated on
the release's held-out in-scope utterances only: no out-of-scope row is used to set it.

Compared in one run, on val and test:

    max_logit, msp, energy       scores from the release's logits
    energy_knn                   the shipped feature score: mean of the standardised energy and
                                 the cosine to the nearest replay exemplar (the release's bank)
    mahalanobis                  -min class Mahalanobis distance of pooled features (shared
                                 covariance, fitted on the release's training rows)
    knn-cosine@k                 cosine to the k-th nearest training row's pooled features
    energy+knn@1                 energy_knn with every training row as the bank (a reference:
                                 a release keeps only its replay memory)
    frozen probe                 logistic regression on frozen mean-pooled MiniLM embeddings,
                                 energy score, threshold at 95% in-scope recall on val
    Larson et al. 2019           BERT with a threshold, quoted: in-scope accuracy 96.2%,
                                 out-of-scope recall 52.3%

Metrics: AUROC (in scope vs out of scope), FPR@95 (share of out-of-scope rows accepted when
95% of in-scope rows are), and at the release's own calibrated threshold: in-scope accuracy
(accepted and right, over all in-scope rows), in-scope recall and out-of-scope recall. The
default score and target are chosen on val; test is reported.

Along a release line: the P2 line of bench_incremental (base of 140 intents, then 10 releases of
1 intent, full data; same intent order and seed), with the achieved in-scope recall and the
out-of-scope recall on test after every release.

    python scripts/bench_oos.py                       # everything (cached under --workdir)
    python scripts/bench_oos.py --stage main          # only the 150-intent release and methods
    python scripts/bench_oos.py --stage line          # only the P2 line
    python scripts/bench_oos.py --stage report        # rebuild the outputs from the caches

Every stage caches what it computed (releases, logits, features, per-release results) under
--workdir, so a crash or a second run resumes where it stopped. CLINC150 (CC BY 3.0) is read
from ../shared/datasets/clinc150/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_incremental as bi  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from intent_ci.calibration import (  # noqa: E402
    make_bank,
    needs_bank,
    read_calibration,
    score_logits,
    score_parts,
    score_rows,
    standardisation,
    threshold_for_recall,
)
from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import (  # noqa: E402
    PACKAGED_MINILM,
    ModelConfig,
    OOSConfig,
    ReleaseConfig,
    apply_overrides,
)
from intent_ci.data import read_examples  # noqa: E402
from intent_ci.modeling import load_backbone  # noqa: E402
from intent_ci.pipeline import add_intents  # noqa: E402
from intent_ci.registry import Registry  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LARSON = {"in_scope_accuracy": 0.962, "oos_recall": 0.523}
"""Larson et al. 2019 (EMNLP), Table 2, BERT with a confidence threshold, CLINC150 full."""
ISSUE_PROBE = {"auroc": 0.972, "fpr_at_95": 0.133, "oos_recall": 0.834, "in_scope_accuracy": 0.925}
"""The frozen probe as measured when the issue was filed (quoted beside this run's probe)."""
FLOORS = {"auroc": 0.98, "fpr_at_95": 0.10, "in_scope_accuracy": 0.94, "oos_recall": 0.85}
LOGIT_SCORES = ("max_logit", "msp", "energy")
SHIPPED_SCORES = (*LOGIT_SCORES, "energy_knn")
"""What a release can compute (from its logits, pooled features and exemplar bank)."""
KNN_K = (1, 10, 50)
TARGETS = (0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995)


# ---- data -----------------------------------------------------------------------------------------
def load_clinc_oos(path: Path, smoke: bool = False) -> dict[str, list[tuple[str, str]]]:
    """CLINC150's splits; `smoke` keeps bench_incremental's smoke subset and 40 oos rows."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    data = bi.load_clinc(path, smoke=smoke)
    for split in ("oos_train", "oos_val", "oos_test"):
        data[split] = [(t, i) for t, i in raw[split]][: 40 if smoke else None]
    return data


# ---- metrics ----------------------------------------------------------------------------------------
def auroc(in_scores: np.ndarray, oos_scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(in_scores)), np.zeros(len(oos_scores))]
    return float(roc_auc_score(y, np.r_[in_scores, oos_scores]))


def fpr_at(in_scores: np.ndarray, oos_scores: np.ndarray, recall: float = 0.95) -> float:
    """Share of out-of-scope rows accepted at the threshold that accepts `recall` of in-scope."""
    t = threshold_for_recall(torch.from_numpy(in_scores), recall)
    return float((oos_scores >= t).mean())


def at_threshold(
    threshold: float, in_scores: np.ndarray, correct: np.ndarray, oos_scores: np.ndarray
) -> dict:
    accepted = in_scores >= threshold
    return {
        "in_scope_accuracy": float((accepted & correct).mean()),
        "in_scope_recall": float(accepted.mean()),
        "oos_recall": float((oos_scores < threshold).mean()),
    }


# ---- the 150-intent release ------------------------------------------------------------------------
def base_config(args: argparse.Namespace) -> ReleaseConfig:
    train = {"seed": args.seed}
    if args.smoke:
        train.update(epochs=1, add_intent_epochs=1)
    return apply_overrides(
        ReleaseConfig(), {"model": {"backbone": args.backbone}, "train": train}, source="bench_oos"
    )


def passes(clf: IntentClassifier, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and logits (the head applied to them: one encoder pass for both)."""
    features = clf.features(texts, batch_size=256)
    with torch.inference_mode():
        logits = clf.model.head(features.to(clf.device)).float().cpu()
    return features, logits


def cached_passes(cache: Path, clf: IntentClassifier, sets: dict[str, list[str]]) -> dict:
    out = {}
    for name, texts in sets.items():
        path = cache / f"{name}.safetensors"
        if path.is_file():
            out[name] = load_file(str(path))
            continue
        started = time.perf_counter()
        features, logits = passes(clf, texts)
        save_file({"features": features.contiguous(), "logits": logits.contiguous()}, str(path))
        print(f"    {name}: {len(texts)} rows in {time.perf_counter() - started:.0f} s", flush=True)
        out[name] = {"features": features, "logits": logits}
    return out


def mahalanobis_scorer(train_x: torch.Tensor, train_y: torch.Tensor, classes: int):
    x = train_x.double()
    means = torch.stack([x[train_y == c].mean(0) for c in range(classes)])
    centred = x - means[train_y]
    cov = centred.T @ centred / len(x)
    precision = torch.linalg.pinv(cov, hermitian=True)
    # (x - m)^T P (x - m) = |W^T x - W^T m|^2 with P = W W^T: one whitening, then distances.
    values, vectors = torch.linalg.eigh(precision)
    whiten = vectors * values.clamp(min=0).sqrt()
    centres = means @ whiten

    def score(f: torch.Tensor) -> np.ndarray:
        dist = torch.cdist(f.double() @ whiten, centres).square()
        return (-dist.min(-1).values).numpy()

    return score


def knn_scorer(train_x: torch.Tensor, k: int):
    bank = F.normalize(train_x.float(), dim=-1)

    def score(f: torch.Tensor) -> np.ndarray:
        sims = F.normalize(f.float(), dim=-1) @ bank.T
        return sims.topk(k, dim=-1).values[:, -1].numpy()

    return score


def shipped_feature_scorer(p: dict, score: str):
    """A release's own feature score, by the functions a release scores with: the bank from
    its replay memory's features, standardised on its calibration utterances."""
    bank = make_bank(p["memory"]["features"])
    cal = p["calibration"]
    stats = standardisation(score_parts(cal["logits"], cal["features"], bank))

    def scorer(split: str) -> np.ndarray:
        f = p[split]
        return score_rows(score, f["logits"], f["features"], bank=bank, standardise=stats).numpy()

    return scorer


def combined_scorer(a, b, reference: str):
    """The mean of two scores, each standardised on the `reference` set (the calibration
    utterances, so nothing out of scope sets it); an equal weight, not tuned."""
    ra, rb = a(reference), b(reference)

    def score(split: str) -> np.ndarray:
        return 0.5 * (a(split) - ra.mean()) / ra.std() + 0.5 * (b(split) - rb.mean()) / rb.std()

    return score


def run_main(args: argparse.Namespace, raw: dict, workdir: Path) -> dict:
    """Train (or reuse) the 150-intent release; score every method on val and test."""
    out_path = workdir / "main.json"
    if out_path.is_file() and not args.rescore:
        return json.loads(out_path.read_text())
    config = base_config(args)
    data = bi.train_rows(raw, sorted({i for _, i in raw["train"]}), None, args.seed)
    print("150-intent release (held-out calibration, shipped defaults) ...", flush=True)
    registry, cost = bi.cached_init(workdir, "oos-main", data, config, reuse=True)
    clf = IntentClassifier.load(registry, "v1")
    folder = registry.path("v1")
    manifest = registry.manifest("v1")
    calibration, _ = read_calibration(folder / "calibration.json")
    held = {t for ts in calibration.values() for t in ts}
    train = [(t, i) for t, i in zip(data["text"], data["intent"], strict=True) if t not in held]
    cal_rows = [(t, i) for i in clf.intents for t in calibration.get(i, [])]
    sets = {
        "train": [t for t, _ in train],
        "calibration": [t for t, _ in cal_rows],
        **{s: [t for t, _ in raw[s]] for s in ("val", "test", "oos_train", "oos_val", "oos_test")},
        # The release's replay memory: the bank of the shipped energy_knn score.
        "memory": [t for i in clf.intents for t in clf.release.replay.get(i, [])],
    }
    cache = folder.parent.parent / "passes"
    cache.mkdir(exist_ok=True)
    print("  forward passes (features + logits) ...", flush=True)
    p = cached_passes(cache, clf, sets)
    index = {name: i for i, name in enumerate(clf.intents)}
    labels = {
        "train": torch.tensor([index[i] for _, i in train]),
        **{s: np.array([index[i] for _, i in raw[s]]) for s in ("val", "test")},
    }

    def logit_scorer(method: str):
        return lambda s: score_logits(p[s]["logits"], method).numpy()

    def feature_scorer(fn):
        return lambda s: fn(p[s]["features"])

    scorers = {m: logit_scorer(m) for m in LOGIT_SCORES}
    maha = mahalanobis_scorer(p["train"]["features"], labels["train"], len(clf.intents))
    scorers["mahalanobis"] = feature_scorer(maha)
    for k in KNN_K:
        scorers[f"knn-cosine@{k}"] = feature_scorer(knn_scorer(p["train"]["features"], k))
    scorers["energy+knn@1"] = combined_scorer(
        scorers["energy"], scorers["knn-cosine@1"], "calibration"
    )
    scorers["energy_knn"] = shipped_feature_scorer(p, "energy_knn")
    correct = {s: p[s]["logits"].argmax(-1).numpy() == labels[s] for s in ("val", "test")}
    methods: dict[str, dict] = {}
    for name, scorer in scorers.items():
        started = time.perf_counter()
        cal = scorer("calibration")
        scores = {s: scorer(s) for s in ("val", "test", "oos_train", "oos_val", "oos_test")}
        scores["oos_val"] = np.r_[scores["oos_val"], scores["oos_train"]]  # all non-test oos
        row: dict = {"score_s": round(time.perf_counter() - started, 2)}
        for split in ("val", "test"):
            ins, oos = scores[split], scores[f"oos_{split}"]
            row[split] = {"auroc": auroc(ins, oos), "fpr_at_95": fpr_at(ins, oos)}
            row[split]["at_target"] = {
                str(t): {
                    "threshold": threshold_for_recall(torch.from_numpy(cal), t),
                    **at_threshold(
                        threshold_for_recall(torch.from_numpy(cal), t), ins, correct[split], oos
                    ),
                }
                for t in TARGETS
            }
        methods[name] = row
        print(
            f"  {name:<16} val AUROC {row['val']['auroc']:.4f} FPR@95 {row['val']['fpr_at_95']:.3f}"
            f" | test AUROC {row['test']['auroc']:.4f} FPR@95 {row['test']['fpr_at_95']:.3f}",
            flush=True,
        )
    result = {
        "seed": args.seed,
        "release": {
            "registry": str(registry.root),
            "cost": cost,
            "oos": manifest["oos"],
            "train_examples": manifest["metrics"]["train_examples"],
            "calibration_examples": manifest["metrics"]["calibration_examples"],
            "accuracy": {s: float(correct[s].mean()) for s in ("val", "test")},
        },
        "methods": methods,
    }
    out_path.write_text(json.dumps(result, indent=1))
    return result


def run_probe(args: argparse.Namespace, raw: dict, workdir: Path) -> dict:
    """Logistic regression on frozen mean-pooled embeddings; energy score; 95% on val."""
    out_path = workdir / "probe.json"
    if out_path.is_file():
        return json.loads(out_path.read_text())
    from sklearn.linear_model import LogisticRegression

    print("frozen probe ...", flush=True)
    backbone = load_backbone(ModelConfig(backbone=args.backbone))
    splits = ("train", "val", "test", "oos_val", "oos_test")
    x = {s: bi.embed(backbone, [t for t, _ in raw[s]]) for s in splits}
    y = {s: np.array([i for _, i in raw[s]]) for s in ("train", "val", "test")}
    best = None
    for c in (1.0, 10.0, 100.0):  # C chosen on val accuracy, as bench_incremental's probe
        model = LogisticRegression(C=c, max_iter=3000).fit(x["train"], y["train"])
        acc = float((model.predict(x["val"]) == y["val"]).mean())
        if best is None or acc > best[0]:
            best = (acc, c, model)
    _, c, model = best

    def energy(s: str) -> np.ndarray:
        logits = torch.from_numpy(model.decision_function(x[s]))
        return torch.logsumexp(logits, -1).numpy()

    scores = {s: energy(s) for s in ("val", "test", "oos_val", "oos_test")}
    threshold = threshold_for_recall(torch.from_numpy(scores["val"]), 0.95)
    result: dict = {"C": c}
    for split in ("val", "test"):
        ins, oos = scores[split], scores[f"oos_{split}"]
        correct = model.predict(x[split]) == y[split]
        result[split] = {
            "auroc": auroc(ins, oos),
            "fpr_at_95": fpr_at(ins, oos),
            "accuracy": float(correct.mean()),
            **at_threshold(threshold, ins, correct, oos),
        }
    print(f"  probe test: {result['test']}", flush=True)
    out_path.write_text(json.dumps(result, indent=1))
    return result


# ---- the P2 line --------------------------------------------------------------------------------------
def run_line(args: argparse.Namespace, raw: dict, workdir: Path) -> dict:
    """P2 of bench_incremental with the shipped defaults; per release: recall on test."""
    protocol = (bi.SMOKE_PROTOCOLS if args.smoke else bi.PROTOCOLS)["P2"]
    order = bi.intent_order(raw, args.seed)
    base_intents = order[: protocol.base]
    steps = [[i] for i in order[protocol.base : protocol.base + protocol.releases]]
    config = base_config(args)
    print(protocol.describe(), flush=True)
    previous = workdir / "line.json"
    if previous.is_file():
        # A finished line is kept: its releases are scored again (with pooled features when its
        # cached passes hold logits only), never retrained, whatever the recipe's cache key.
        recorded = json.loads(previous.read_text())
        base_cost = recorded["base_cost"]
        line = Path(recorded["logits"]).parent / "adapters"
        print(f"  reusing the line in {line}", flush=True)
    else:
        base_data = bi.train_rows(raw, base_intents, None, args.seed)
        base_registry, base_cost = bi.cached_init(workdir, "oos-p2-base", base_data, config, True)
        # The line lives beside its (cached) base, so a retrained base starts a fresh line.
        line = base_registry.root.parent / "P2-line" / "adapters"
        if not line.exists():
            import shutil

            shutil.copytree(base_registry.root, line)
    registry = Registry(line)
    results_dir = line.parent / "results"
    results_dir.mkdir(exist_ok=True)
    known = list(base_intents)
    rows = []
    for k in range(protocol.releases + 1):
        release = f"v{k + 1}"
        if k:
            known = known + steps[k - 1]
            if release not in registry.releases():
                started = time.perf_counter()
                made = add_intents(
                    read_examples(bi.train_rows(raw, steps[k - 1], None, args.seed)),
                    registry,
                    f"v{k}",
                )
                if made != release:
                    raise RuntimeError(f"expected {release}, the registry made {made}")
                print(f"  {release}: +{steps[k - 1][0]} in {time.perf_counter() - started:.0f} s")
        path = results_dir / f"{release}.json"
        cached = results_dir / f"{release}.safetensors"
        # A pass cached before feature scores existed holds logits only: run it again.
        if path.is_file() and "memory_features" in load_file(str(cached)):
            rows.append(json.loads(path.read_text()))
            continue
        clf = IntentClassifier.load(registry, release)
        known_set = set(known)
        test = [(t, i) for t, i in raw["test"] if i in known_set]
        texts = [t for t, _ in test] + [t for t, _ in raw["oos_test"]]
        logits, features = clf.logits_and_features(texts, batch_size=256)
        calibration, _ = read_calibration(registry.path(release) / "calibration.json")
        cal_texts = [t for i in clf.intents for t in calibration.get(i, [])]
        cal_logits, cal_features = clf.logits_and_features(cal_texts, batch_size=256)
        memory = [t for i in clf.intents for t in clf.release.replay.get(i, [])]
        memory_features = clf.features(memory, batch_size=256)
        oos = registry.manifest(release)["oos"]
        scores = clf.scores(logits, features).numpy()
        index = {name: i for i, name in enumerate(clf.intents)}
        truth = np.array([index[i] for _, i in test])
        n = len(test)
        preds = logits[:n].argmax(-1).numpy()
        save_file(
            {
                "test": logits[:n].contiguous(),
                "test_features": features[:n].contiguous(),
                "truth": torch.from_numpy(truth).contiguous(),
                "oos_test": logits[n:].contiguous(),
                "oos_test_features": features[n:].contiguous(),
                "calibration": cal_logits.contiguous(),
                "calibration_features": cal_features.contiguous(),
                "memory_features": memory_features.contiguous(),
            },
            str(cached),
        )
        row = {
            "release": release,
            "score": oos["score"],
            "target_recall": oos["target_recall"],
            "intents": len(known),
            "added": steps[k - 1] if k else [],
            "threshold": oos["threshold"],
            "calibration_size": oos["calibration"]["in_scope"],
            "calibration_recall": oos["in_scope_recall"],
            **at_threshold(oos["threshold"], scores[:n], preds == truth, scores[n:]),
            "accuracy": float((preds == truth).mean()),
            "auroc": auroc(scores[:n], scores[n:]),
        }
        path.write_text(json.dumps(row, indent=1))
        rows.append(row)
        print(
            f"  {release}: test in-scope recall {100 * row['in_scope_recall']:.2f}, "
            f"oos recall {100 * row['oos_recall']:.2f}",
            flush=True,
        )
    return {
        "protocol": protocol.__dict__,
        "base_cost": base_cost,
        "logits": str(results_dir),
        "releases": rows,
    }


def line_scores(t: dict, score: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of a line release's calibration, test and oos_test rows from its cached pass."""
    if needs_bank(score):
        bank = make_bank(t["memory_features"])
        stats = standardisation(score_parts(t["calibration"], t["calibration_features"], bank))
        return tuple(
            score_rows(score, t[s], t[f"{s}_features"], bank=bank, standardise=stats).numpy()
            for s in ("calibration", "test", "oos_test")
        )
    return tuple(score_logits(t[s], score).numpy() for s in ("calibration", "test", "oos_test"))


def line_at(line: dict, score: str, target: float) -> dict:
    """The line's figures for another score or target, from its cached logits: the threshold
    each release would have had (the release trains the same whatever these two are)."""
    rows = []
    for r in line["releases"]:
        t = load_file(str(Path(line["logits"]) / f"{r['release']}.safetensors"))
        cal, ins, oos = line_scores(t, score)
        threshold = threshold_for_recall(torch.from_numpy(cal), target)
        correct = t["test"].argmax(-1).numpy() == t["truth"].numpy()
        rows.append(
            {
                **r,
                "score": score,
                "target_recall": target,
                "threshold": threshold,
                **at_threshold(threshold, ins, correct, oos),
                "auroc": auroc(ins, oos),
            }
        )
    return {**line, "releases": rows, "target_recall": target, "recomputed_for": [score, target]}


# ---- choosing on val, reporting test ----------------------------------------------------------------------
def mean_tree(trees: list):
    """The element-wise mean of same-shaped JSON trees (numbers averaged; anything else taken
    from the first tree): every seed's main.json folded into one of the same shape."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: mean_tree([t[k] for t in trees if k in t]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        values = [t for t in trees if isinstance(t, (int, float))]
        return float(np.mean(values)) if values else None
    return first


def choose(main: dict) -> dict:
    """Score: best val AUROC among the scores a release can compute. Target: on val, the
    one whose calibrated threshold keeps both in-scope accuracy and oos recall furthest above
    their floors (largest smallest margin). With several seeds `main` is their mean tree, so
    both are chosen on the mean over seeds."""
    score = max(
        (m for m in SHIPPED_SCORES if m in main["methods"]),
        key=lambda m: main["methods"][m]["val"]["auroc"],
    )
    grid = main["methods"][score]["val"]["at_target"]

    def margin(t: str) -> float:
        r = grid[t]
        return min(
            r["in_scope_accuracy"] - FLOORS["in_scope_accuracy"],
            r["oos_recall"] - FLOORS["oos_recall"],
        )

    target = max(grid, key=margin)
    return {"score": score, "target_recall": float(target), "val_margin": margin(target)}


def floors_over_seeds(
    mains: list[dict], probe: dict, chosen: dict, line: dict | None
) -> list[dict]:
    """Every floor on every seed's release: the value is the mean, and a floor is met only
    when every seed meets it."""
    per_seed = [floors(m, probe, chosen, line if i == 0 else None) for i, m in enumerate(mains)]
    out = []
    for k, row in enumerate(per_seed[0]):
        rows = [p[k] for p in per_seed if k < len(p) and p[k]["what"] == row["what"]]
        values = [r["value"] for r in rows]
        out.append(
            {
                "what": row["what"],
                "value": None if None in values else float(np.mean(values)),
                "per_seed": values if len(mains) > 1 and None not in values else None,
                "bar": row["bar"],
                "ok": all(r["ok"] for r in rows),
            }
        )
    return out


def floors(main: dict, probe: dict, chosen: dict, line: dict | None) -> list[dict]:
    m = main["methods"][chosen["score"]]["test"]
    shipped = OOSConfig()
    at = m["at_target"][str(chosen["target_recall"])]
    rows = [
        ("AUROC", m["auroc"], f">= {FLOORS['auroc']}", m["auroc"] >= FLOORS["auroc"]),
        (
            "FPR@95",
            m["fpr_at_95"],
            f"<= {FLOORS['fpr_at_95']}",
            m["fpr_at_95"] <= FLOORS["fpr_at_95"],
        ),
        (
            "in-scope accuracy at the calibrated threshold",
            at["in_scope_accuracy"],
            ">= 0.94",
            at["in_scope_accuracy"] >= FLOORS["in_scope_accuracy"],
        ),
        (
            "oos recall at the calibrated threshold",
            at["oos_recall"],
            ">= 0.85",
            at["oos_recall"] >= FLOORS["oos_recall"],
        ),
        (
            "AUROC better than the frozen probe",
            m["auroc"] - probe["test"]["auroc"],
            "> 0",
            m["auroc"] > probe["test"]["auroc"],
        ),
        (
            "FPR@95 better than the frozen probe",
            m["fpr_at_95"] - probe["test"]["fpr_at_95"],
            "< 0",
            m["fpr_at_95"] < probe["test"]["fpr_at_95"],
        ),
    ]
    rows.append(
        (
            f"shipped default (OOSConfig: {shipped.score} @ {shipped.target_recall}) is the "
            "val choice",
            None,
            f"{chosen['score']} @ {chosen['target_recall']}",
            shipped.score == chosen["score"] and shipped.target_recall == chosen["target_recall"],
        )
    )
    if line is not None:
        target = line_target(line)
        worst = max(abs(r["in_scope_recall"] - target) for r in line["releases"])
        loss = line["releases"][0]["oos_recall"] - line["releases"][-1]["oos_recall"]
        rows.append(
            (
                "P2 line: largest |in-scope recall - target| on test",
                worst,
                "<= 0.015",
                worst <= 0.015,
            )
        )
        rows.append(("P2 line: oos recall lost v1 -> last", loss, "<= 0.02", loss <= 0.02))
    return [{"what": w, "value": v, "bar": b, "ok": ok} for w, v, b, ok in rows]


def line_target(line: dict) -> float:
    return line["releases"][0]["target_recall"]


def pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def partial_markdown(result: dict) -> str:
    """The report when a stage has not finished: what was measured, and what is missing."""
    lines = [
        "# Out-of-scope detection on CLINC150 (incomplete)",
        "",
        f"Made by `{result['command']}` ({result['date']}, {result['machine']}).",
        "",
        "Each stage is `python scripts/bench_oos.py --stage NAME` (main: the 150-intent release "
        "and the score methods; probe; line: the P2 line); this report reads their caches. "
        f"**Missing stages: {', '.join(result['missing'])}.** Their figures were not measured; "
        "every floor that needs them is a miss until `python scripts/bench_oos.py` finishes "
        "(it resumes from its caches).",
        "",
        "| method | AUROC | FPR@95 | in-scope acc. | in-scope recall | oos recall |",
        "|---|---|---|---|---|---|",
    ]
    if result["probe"]:
        p, pv = result["probe"]["test"], result["probe"]["val"]
        lines.append(
            f"| frozen probe (energy, 95% on val, C={result['probe']['C']}), test (val) "
            f"| {p['auroc']:.4f} ({pv['auroc']:.4f}) | {pct(p['fpr_at_95'])} ({pct(pv['fpr_at_95'])}) "
            f"| {pct(p['in_scope_accuracy'])} ({pct(pv['in_scope_accuracy'])}) "
            f"| {pct(p['in_scope_recall'])} ({pct(pv['in_scope_recall'])}) "
            f"| {pct(p['oos_recall'])} ({pct(pv['oos_recall'])}) |"
        )
    lines += [
        f"| frozen probe as quoted in the issue | {ISSUE_PROBE['auroc']} | {pct(ISSUE_PROBE['fpr_at_95'])} "
        f"| {pct(ISSUE_PROBE['in_scope_accuracy'])} | | {pct(ISSUE_PROBE['oos_recall'])} |",
        f"| Larson et al. 2019, BERT + threshold (quoted) | | | {pct(LARSON['in_scope_accuracy'])} "
        f"| | {pct(LARSON['oos_recall'])} |",
        "",
        "## Floors (test)",
        "",
        "| what | value | bar | met |",
        "|---|---|---|---|",
    ]
    for f in result["floors"]:
        value = "-" if f["value"] is None else f"{f['value']:.4f}"
        lines.append(f"| {f['what']} | {value} | {f['bar']} | {'yes' if f['ok'] else '**MISS**'} |")
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    if result.get("missing") and ("main" in result["missing"] or "probe" in result["missing"]):
        return partial_markdown(result)
    main, probe, chosen = result["main"], result["probe"], result["chosen"]
    t = str(chosen["target_recall"])
    lines = [
        "# Out-of-scope detection on CLINC150",
        "",
        f"Made by `{result['command']}` ({result['date']}, {result['machine']}).",
        "",
        (
            f"Every figure is the mean over seeds {', '.join(map(str, main['seeds']))} (each a "
            "release trained with that seed on its own calibration hold-out, by `python "
            "scripts/bench_oos.py --stage main --seed N --workdir DIR`; DIRs: "
            f"{', '.join(f'`{w}`' for w in result['workdirs'])}); each seed's figures are in the "
            "JSON (`per_seed`) and, for the chosen default, below. "
            if main.get("seeds")
            else ""
        )
        + f"Release: {main['release']['train_examples']:.0f} training utterances of 150 intents, "
        f"{main['release']['calibration_examples']:.0f} held out for calibration "
        f"(all-MiniLM-L6-v2, shipped defaults); classification accuracy (no rejection) "
        f"val {pct(main['release']['accuracy']['val'], 2)}, test {pct(main['release']['accuracy']['test'], 2)}. "
        "Out of scope: val is `oos_val` + `oos_train` (200 rows), test is `oos_test` (1,000); "
        "none sets a threshold. The release was trained once; its threshold for every score "
        "and target is recomputed from its cached pass over its calibration utterances (the "
        "score and target do not change training).",
        "",
        f"**Chosen on val**: score `{chosen['score']}` (best val AUROC among the scores a "
        f"release can compute: {', '.join(SHIPPED_SCORES)}), target in-scope recall "
        f"{chosen['target_recall']} (largest smallest margin above the in-scope accuracy and "
        "oos recall floors on val). `energy+knn@1` uses every training row as its bank, which "
        "no release keeps: a reference for what the replay-memory bank of `energy_knn` costs.",
        "",
        "## Methods (test; val in brackets)",
        "",
        f"At the threshold calibrated on the release's held-out utterances for target {t}.",
        "",
        "| method | AUROC | FPR@95 | in-scope acc. | in-scope recall | oos recall |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in main["methods"].items():
        a, v = row["test"], row["val"]
        at, av = a["at_target"][t], v["at_target"][t]
        lines.append(
            f"| {name} | {a['auroc']:.4f} ({v['auroc']:.4f}) | {pct(a['fpr_at_95'])} ({pct(v['fpr_at_95'])}) "
            f"| {pct(at['in_scope_accuracy'])} ({pct(av['in_scope_accuracy'])}) "
            f"| {pct(at['in_scope_recall'])} ({pct(av['in_scope_recall'])}) "
            f"| {pct(at['oos_recall'])} ({pct(av['oos_recall'])}) |"
        )
    p, pv = probe["test"], probe["val"]
    lines += [
        f"| frozen probe (energy, 95% on val, C={probe['C']}) | {p['auroc']:.4f} ({pv['auroc']:.4f}) "
        f"| {pct(p['fpr_at_95'])} ({pct(pv['fpr_at_95'])}) | {pct(p['in_scope_accuracy'])} "
        f"| {pct(p['in_scope_recall'])} | {pct(p['oos_recall'])} |",
        f"| frozen probe as quoted in the issue | {ISSUE_PROBE['auroc']} | {pct(ISSUE_PROBE['fpr_at_95'])} "
        f"| {pct(ISSUE_PROBE['in_scope_accuracy'])} | | {pct(ISSUE_PROBE['oos_recall'])} |",
        f"| Larson et al. 2019, BERT + threshold (quoted) | | | {pct(LARSON['in_scope_accuracy'])} "
        f"| | {pct(LARSON['oos_recall'])} |",
        "",
        f"## Target in-scope recall for `{chosen['score']}` (val; test)",
        "",
        "| target | threshold | val in-scope acc. | val oos recall | test in-scope acc. | test in-scope recall | test oos recall |",
        "|---|---|---|---|---|---|---|",
    ]
    grid_v = main["methods"][chosen["score"]]["val"]["at_target"]
    grid_t = main["methods"][chosen["score"]]["test"]["at_target"]
    for target in grid_v:
        lines.append(
            f"| {target} | {grid_v[target]['threshold']:.3f} | {pct(grid_v[target]['in_scope_accuracy'])} "
            f"| {pct(grid_v[target]['oos_recall'])} | {pct(grid_t[target]['in_scope_accuracy'])} "
            f"| {pct(grid_t[target]['in_scope_recall'])} | {pct(grid_t[target]['oos_recall'])} |"
        )
    if result.get("line"):
        line = result["line"]
        lines += [
            "",
            f"## Along the P2 line (test; target {line_target(line)})",
            "",
            "| release | intents | added | calibration rows | threshold | in-scope recall | oos recall | accuracy | AUROC |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in line["releases"]:
            lines.append(
                f"| {r['release']} | {r['intents']} | {', '.join(r['added']) or '-'} | {r['calibration_size']} "
                f"| {r['threshold']:.3f} | {pct(r['in_scope_recall'], 2)} | {pct(r['oos_recall'], 2)} "
                f"| {pct(r['accuracy'], 2)} | {r['auroc']:.4f} |"
            )
    if result.get("per_seed"):
        lines += [
            "",
            f"## Every seed (`{chosen['score']}` at target {t}, test)",
            "",
            "| seed | accuracy | AUROC | FPR@95 | in-scope acc. | in-scope recall | oos recall |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in result["per_seed"]:
            a = m["methods"][chosen["score"]]["test"]
            at = a["at_target"][t]
            lines.append(
                f"| {m['seed']} | {pct(m['release']['accuracy']['test'], 2)} | {a['auroc']:.4f} "
                f"| {pct(a['fpr_at_95'])} | {pct(at['in_scope_accuracy'], 2)} "
                f"| {pct(at['in_scope_recall'], 2)} | {pct(at['oos_recall'], 2)} |"
            )
    seeds_note = (
        f" (mean over seeds {', '.join(map(str, main['seeds']))}; met only when every seed meets it; "
        "the P2 line is seed 0's)"
        if main.get("seeds")
        else ""
    )
    lines += [
        "",
        f"## Floors (test){seeds_note}",
        "",
        "| what | value | per seed | bar | met |",
        "|---|---|---|---|---|",
    ]
    for f in result["floors"]:
        value = "-" if f["value"] is None else f"{f['value']:.4f}"
        each = ", ".join(f"{v:.4f}" for v in f["per_seed"]) if f.get("per_seed") else ""
        lines.append(
            f"| {f['what']} | {value} | {each} | {f['bar']} | {'yes' if f['ok'] else '**MISS**'} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result["main"] is None or result["probe"] is None:
        return  # nothing to compare yet; the Markdown says what is missing
    fig, axes = plt.subplots(1, 2 if result.get("line") else 1, figsize=(12, 4.5), squeeze=False)
    ax = axes[0][0]
    t = str(result["chosen"]["target_recall"])
    names = list(result["main"]["methods"])
    fpr = [100 * result["main"]["methods"][n]["test"]["fpr_at_95"] for n in names]
    oos = [100 * result["main"]["methods"][n]["test"]["at_target"][t]["oos_recall"] for n in names]
    names.append("frozen probe")
    fpr.append(100 * result["probe"]["test"]["fpr_at_95"])
    oos.append(100 * result["probe"]["test"]["oos_recall"])
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, fpr, 0.4, label="FPR@95 (lower is better)")
    ax.bar(xs + 0.2, oos, 0.4, label=f"oos recall at calibrated threshold ({t})")
    ax.axhline(100 * FLOORS["fpr_at_95"], color="C0", ls="--", lw=1)
    ax.axhline(100 * FLOORS["oos_recall"], color="C1", ls="--", lw=1)
    ax.set_xticks(xs, names, rotation=30, ha="right")
    ax.set_ylabel("% of oos_test")
    ax.set_title("CLINC150 test, 150-intent release")
    ax.legend(fontsize=8)
    if result.get("line"):
        ax = axes[0][1]
        rows = result["line"]["releases"]
        xs = [r["release"] for r in rows]
        target = 100 * line_target(result["line"])
        ax.plot(
            xs, [100 * r["in_scope_recall"] for r in rows], "o-", label="in-scope recall (test)"
        )
        ax.plot(xs, [100 * r["oos_recall"] for r in rows], "s-", label="oos recall (test)")
        ax.axhspan(target - 1.5, target + 1.5, color="C0", alpha=0.15, label="target ± 1.5")
        first = 100 * rows[0]["oos_recall"]
        ax.axhline(first - 2, color="C1", ls="--", lw=1, label="v1 oos recall - 2")
        ax.set_ylabel("%")
        ax.set_title("P2 line: 140 intents + 10 × 1")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(bi.DEFAULT_DATA))
    parser.add_argument("--backbone", default=PACKAGED_MINILM)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="runs/bench_oos")
    parser.add_argument("--out", default="scripts/results/bench_oos")
    parser.add_argument(
        "--stage", choices=("all", "main", "probe", "line", "report"), default="all"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; on a shared machine one thread per process wastes no time waiting "
        "for busy cores (run stages as separate processes to use more cores)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="12 intents, 1 epoch: checks the script runs"
    )
    parser.add_argument("--rescore", action="store_true", help="recompute main.json from caches")
    parser.add_argument(
        "--also-workdir",
        action="append",
        default=[],
        metavar="DIR",
        help="report: the workdir of another seed's main stage (repeatable); the default is "
        "chosen on the mean over every seed's val figures, and a floor is met only on every seed",
    )
    args = parser.parse_args()
    _quiet_libraries()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    raw = load_clinc_oos(Path(args.data), smoke=args.smoke)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.stage in ("all", "main"):
        run_main(args, raw, workdir)
    if args.stage in ("all", "probe"):
        run_probe(args, raw, workdir)
    if args.stage in ("all", "line"):
        line = run_line(args, raw, workdir)
        (workdir / "line.json").write_text(json.dumps(line, indent=1))
    if args.stage in ("main", "probe", "line"):
        print(f"stage {args.stage} done in {time.perf_counter() - started:.0f} s")
        return
    main_path, probe_path, line_path = (workdir / f"{n}.json" for n in ("main", "probe", "line"))
    main_result = json.loads(main_path.read_text()) if main_path.is_file() else None
    probe = json.loads(probe_path.read_text()) if probe_path.is_file() else None
    line = json.loads(line_path.read_text()) if line_path.is_file() else None
    mains = [main_result] if main_result is not None else []
    for other in args.also_workdir:
        path = Path(other) / "main.json"
        if not path.is_file():
            raise SystemExit(f"--also-workdir {other}: no main.json (run --stage main there)")
        mains.append(json.loads(path.read_text()))
    seeds = [m.get("seed") for m in mains]
    if len(mains) > 1 and (None in seeds or len(set(seeds)) != len(seeds)):
        raise SystemExit(
            f"every main.json must record a distinct seed, got {seeds}; rerun "
            "`--stage main --rescore --seed N` in a workdir that lacks one"
        )
    if len(mains) > 1:
        main_result = {**mean_tree(mains), "seeds": seeds}
    chosen = choose(main_result) if main_result is not None else None
    if (
        chosen is not None
        and line is not None
        and (
            line_target(line) != chosen["target_recall"]
            or line["releases"][0]["score"] != chosen["score"]
        )
    ):
        line = line_at(line, chosen["score"], chosen["target_recall"])
    result = {
        "command": shlex.join(["python", "scripts/bench_oos.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "chosen": chosen,
        "main": main_result,
        "per_seed": mains if len(mains) > 1 else None,
        "workdirs": [str(workdir), *args.also_workdir],
        "probe": probe,
        "line": line,
        "larson_2019": LARSON,
        "issue_probe": ISSUE_PROBE,
        # A stage that has not finished is reported as missing, never filled in.
        "missing": [
            n for n, v in (("main", main_result), ("probe", probe), ("line", line)) if v is None
        ],
    }
    result["floors"] = (
        floors_over_seeds(mains, probe, chosen, line)
        if main_result is not None and probe is not None
        else [
            {
                "what": "every floor",
                "value": None,
                "bar": "needs the main and probe stages",
                "ok": False,
            }
        ]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    plot(result, out.with_suffix(".png"))
    print(markdown(result))


if __name__ == "__main__":
    main()
