#!/usr/bin/env python
"""Class-incremental CLINC150: does add-intent keep old intents as well as a full retrain, cheaply?

Protocols, on the 150 in-scope intents in a seeded shuffle (the seed is recorded):

    P1  base release of 75 intents, then 5 releases of 15 intents, full training data
    P2  base release of 140 intents, then 10 releases of 1 intent, full data ("add one intent")
    P3  base release of 140 intents, then 10 releases of 1 intent, 10 utterances each (few-shot)

Add-intent methods, all started from the same base release of a protocol:

    intent-ci       the shipped defaults: replay (at least as many old exemplars as new
                    examples) + class-balanced cross-entropy + old head rows kept fixed
    distill         intent-ci plus distillation from the parent's soft labels (weight 3.0),
                    the shipped recipe until replay alone matched it; the ablations below
                    are on top of it, as they were measured
    unfrozen-rows   distill with the old head rows trained too
    replay-floor    distill replaying only replay.train_per_intent exemplars per old intent
                    (replay.new_ratio 0), the recipe before new_ratio
    distill+replay  distill with plain cross-entropy and trained old rows (no correction of
                    the bias toward new intents)
    distill-only    distill without replay
    replay-only     distillation switched off (`distill.enabled: false`): what intent-ci now
                    does, kept so the commands in older results files still run
    naive           no distillation, no replay: sequential fine-tuning on the new intents only
                    (old head rows stay fixed, as in intent-ci; only LoRA and new rows train)
    l2, ewc         distill plus an L2 or EWC pull of the LoRA weights to the parent's (1.0)
    distill-1       distill with weight 1.0 instead of 3.0

Baselines: a full retrain (`init` with the same recipe on everything seen so far) at the final
step of each protocol, and logistic regression on frozen mean-pooled embeddings at every step.

    python scripts/bench_incremental.py                          # every method in every protocol
    python scripts/bench_incremental.py --no-reuse \
        --methods-for P1=intent-ci,replay-floor,distill+replay,distill-only,replay-only,naive \
        --methods-for P2=intent-ci,unfrozen-rows,naive \
        --methods-for P3=intent-ci,naive     # the committed run: 82 min, 2 cores
    python scripts/bench_incremental.py --protocols P2 --methods intent-ci naive
    python scripts/bench_incremental.py --protocols P2 --split val --out runs/sweep \\
        --method lr2='{"train": {"add_intent_lr_scale": 1.0}}'   # choose defaults on val

Every release is scored on both the val and the test split; defaults are chosen on val, the
README quotes test. Writes <out>.json, <out>.md and <out>.png. Registries are kept under
--workdir (the base and full-retrain releases are reused across runs when their recipe and
intents are unchanged; every add-intent gets the current defaults' add-intent fields plus the
method's overrides, whatever a reused base recorded). CLINC150 (CC BY 3.0) is read from
../shared/datasets/clinc150/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import PACKAGED_MINILM, ModelConfig, ReleaseConfig, apply_overrides  # noqa: E402
from intent_ci.data import read_examples  # noqa: E402
from intent_ci.modeling import load_backbone, pool  # noqa: E402
from intent_ci.pipeline import add_intents, init_release, update_release  # noqa: E402
from intent_ci.registry import Registry  # noqa: E402
from intent_ci.release import IntentClassifier  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"
SPLITS = ("val", "test")


@dataclass(frozen=True)
class Protocol:
    name: str
    base: int
    releases: int
    per_release: int
    shots: int | None  # training utterances per new intent; None = all 100

    def steps(self, order: list[str]) -> list[list[str]]:
        """The intents each release after the base adds, in `order`."""
        return [
            order[self.base + k * self.per_release : self.base + (k + 1) * self.per_release]
            for k in range(self.releases)
        ]

    def describe(self) -> str:
        data = f"{self.shots} utterances each" if self.shots else "full data"
        return (
            f"{self.name}: base {self.base} intents, then {self.releases} releases of "
            f"{self.per_release} intent{'s' if self.per_release > 1 else ''}, {data}"
        )


PROTOCOLS = {
    "P1": Protocol("P1", 75, 5, 15, None),
    "P2": Protocol("P2", 140, 10, 1, None),
    "P3": Protocol("P3", 140, 10, 1, 10),
}

# The teacher's weight before add-intent dropped it (`distill.weight` 3.0): the ablations
# below were measured on top of it and name it, so they still mean what their results say.
TEACHER = {"weight": 3.0}

METHODS: dict[str, dict] = {
    "intent-ci": {},
    # The recipe with distillation from the parent, as shipped until replay alone matched it.
    "distill": {"distill": TEACHER},
    "unfrozen-rows": {"train": {"freeze_old_rows": False}, "distill": TEACHER},
    "replay-floor": {"replay": {"new_ratio": 0.0}, "distill": TEACHER},
    "distill+replay": {
        "train": {"class_balanced": False, "freeze_old_rows": False},
        "distill": TEACHER,
    },
    "distill-only": {"replay": {"enabled": False}, "distill": TEACHER},
    "replay-only": {"distill": {"enabled": False}},
    "naive": {"distill": {"enabled": False}, "replay": {"enabled": False}},
    # The seed articles' regularisers on top of the recipe, at the weight where the L2 term at
    # an unregularised P2 release's LoRA step (sum of squares 1.36 on order 0) is 0.68, above
    # the release's final cross-entropy: a strong pull, one value each.
    "l2": {"distill": {**TEACHER, "l2_weight": 1.0}},
    "ewc": {"distill": {**TEACHER, "ewc_weight": 1.0}},
    # Distillation at a third of the teacher's weight (3.0): on P1 val replay alone ended
    # higher than the teacher but with a larger worst old-intent drop, so a weaker pull is the
    # one point between them that was tried.
    "distill-1": {"distill": {"weight": 1.0}},
    # The new intents through `update` with the head alone on the parent's embeddings (no
    # encoder training), the default `update` recipe, instead of `add-intent`.
    "head-alone": {"train": {"update_mode": "head"}},
}
VIA_UPDATE = {"head-alone"}
"""Methods whose releases are made by `intent_ci.pipeline.update_release`, not `add_intents`."""


# ---- data -------------------------------------------------------------------------------------
SMOKE_PROTOCOLS = {
    "P1": Protocol("P1", 6, 2, 2, None),
    "P2": Protocol("P2", 8, 2, 1, None),
    "P3": Protocol("P3", 8, 2, 1, 10),
}


def load_clinc(path: Path, smoke: bool = False) -> dict[str, list[tuple[str, str]]]:
    """CLINC150's in-scope splits; `smoke` keeps 12 intents and 20 training utterances each."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    data = {split: [(t, i) for t, i in raw[split]] for split in ("train", "val", "test")}
    if smoke:
        keep = set(sorted({i for _, i in data["train"]})[:12])
        seen: dict[str, int] = {}
        train = []
        for t, i in data["train"]:
            if i in keep and seen.get(i, 0) < 20:
                seen[i] = seen.get(i, 0) + 1
                train.append((t, i))
        data = {"train": train, **{s: [(t, i) for t, i in data[s] if i in keep] for s in SPLITS}}
    return data


def intent_order(raw: dict, seed: int) -> list[str]:
    intents = sorted({i for _, i in raw["train"]})
    random.Random(seed).shuffle(intents)
    return intents


def seeded_sample(items: list, k: int, intent: str, seed: int) -> list:
    """The seeded `k` of one intent's `items` that every script here draws (the few-shot
    protocols, the small condition and bench_baselines' probes see the same rows)."""
    return random.Random(f"{seed}-{intent}").sample(items, min(k, len(items)))


CONDITIONS = {"full": None, "small": 50}
"""Training utterances per intent in each data condition (None: all of CLINC150's 100)."""


def condition_rows(train: list[tuple[str, str]], per_intent: int | None, seed: int) -> list:
    """`train` cut to a seeded `per_intent` utterances of every intent (the sample that
    `train_rows(..., shots=per_intent)` draws), in their original order; None keeps all."""
    if per_intent is None:
        return train
    by_intent: dict[str, list[str]] = {}
    for t, i in train:
        by_intent.setdefault(i, []).append(t)
    keep = {
        (t, i) for i, rows in by_intent.items() for t in seeded_sample(rows, per_intent, i, seed)
    }
    return [(t, i) for t, i in train if (t, i) in keep]


def train_rows(raw: dict, intents: list[str], shots: int | None, seed: int) -> datasets.Dataset:
    """Training utterances of `intents`; with `shots`, a seeded sample of that many per intent."""
    texts, labels = [], []
    for intent in intents:
        rows = [t for t, i in raw["train"] if i == intent]
        if shots is not None:
            rows = seeded_sample(rows, shots, intent, seed)
        texts += rows
        labels += [intent] * len(rows)
    return datasets.Dataset.from_dict({"text": texts, "intent": labels})


# ---- measuring --------------------------------------------------------------------------------
def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM); and the GPU's."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_gpu_mb() -> float | None:
    """Peak GPU memory torch allocated since the last reset; None without a GPU."""
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def peak_rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def score(clf: IntentClassifier, raw: dict, known: list[str], old: set[str]) -> dict:
    """Accuracy on the val and test utterances of the intents `clf` knows."""
    known_set = set(known)
    out = {}
    for split in SPLITS:
        rows = [(t, i) for t, i in raw[split] if i in known_set]
        preds = [p.label for p in clf.predict([t for t, _ in rows], batch_size=256)]
        per: dict[str, list[int]] = {}
        for pred, (_, ref) in zip(preds, rows, strict=True):
            per.setdefault(ref, [0, 0])
            per[ref][0] += pred == ref
            per[ref][1] += 1

        def acc(keep: set[str], per=per) -> float | None:
            c = sum(v[0] for k, v in per.items() if k in keep)
            n = sum(v[1] for k, v in per.items() if k in keep)
            return c / n if n else None

        out[split] = {
            "accuracy": acc(known_set),
            "old_intents_accuracy": acc(old),
            "new_intents_accuracy": acc(known_set - old),
            "per_intent": {k: v[0] / v[1] for k, v in sorted(per.items())},
        }
    return out


def release_costs(registry: Registry, release: str) -> dict:
    """A release's compute from its manifest. Examples are rows through the encoder: an
    `update` with `train.update_mode: head` trains the head alone on fixed embeddings, so its
    training rows (`head_examples_trained`) pass no encoder and count in seconds only."""
    m = registry.manifest(release)["metrics"]
    head_only = m.get("update_mode") == "head"
    trained = 0 if head_only else m["train"]["examples_trained"]
    return {
        "compute_s": m["compute_s"],
        "job_s": m["wall_time_s"],
        "train_loop_s": round(m["train"]["wall_time_s"], 2),
        "examples_trained": trained,
        "head_examples_trained": m["train"]["examples_trained"] if head_only else 0,
        "forward_only_examples": m["forward_only_examples"],
        "fisher_examples": m.get("fisher_examples", 0),
        "examples_processed": trained + m["forward_only_examples"] + m.get("fisher_examples", 0),
        "replay_examples": m.get("replay_examples", 0),
    }


def config_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# Fields only add-intent reads: an init release does not depend on them.
ADD_INTENT_ONLY = {
    "train": (
        "add_intent_epochs",
        "update_epochs",
        "update_mode",
        "update_head_epochs",
        "update_head_rows",
        "add_intent_lr_scale",
        "freeze_old_rows",
        "neighbour_rows",
    ),
    "distill": (
        "enabled",
        "temperature",
        "weight",
        "feature_weight",
        "l2_weight",
        "ewc_weight",
        "anchor_per_pass",
        "anchor_adaptive",
        "updated_exemplars",
        "update_weight",
        "update_head_weight",
    ),
    "replay": ("enabled", "train_per_intent", "new_ratio", "neighbour_share"),
}


def add_intent_recipe(config: ReleaseConfig, overrides: dict) -> dict:
    """`overrides` on top of `config`'s ADD_INTENT_ONLY fields. A child release starts from
    its parent's recorded config, and a cached base records the add-intent fields of the code
    that made it; passing them explicitly makes a method mean today's recipe plus its
    overrides, whatever the cache recorded."""
    merged = {
        section: {key: getattr(getattr(config, section), key) for key in keys}
        for section, keys in ADD_INTENT_ONLY.items()
    }
    for section, values in overrides.items():
        merged[section] = {**merged.get(section, {}), **values}
    return merged


# Fields that set only a release's out-of-scope record (score, threshold), never its weights:
# a cached release is reused whatever they are, and a bench that needs the record for other
# values recomputes it (bench_oos from cached passes, bench_discover with `intent-ci calibrate`).
CALIBRATION_ONLY = {"oos": ("score", "target_recall")}
LEGACY_CALIBRATION = {"score": "max_logit", "target_recall": 0.95}
"""The out-of-scope defaults every cache made before CALIBRATION_ONLY was keyed with."""


# Fields added after caches were made, with the value that trains what the caches hold: at
# that value a field stays out of the key, so those caches are still found.
ADDED_LATER = {
    "train": {"outlier_weight": 0.0, "lora": True},
    "fallback": {"head_epochs": 80, "min_gain": 0.0},  # (off, the section leaves the key)
}


def init_recipe(config: ReleaseConfig, legacy: bool = False) -> dict:
    """The part of `config` an init release depends on (the cache key of bases and retrains).

    `legacy`: the key of a cache made when the out-of-scope score and target were part of it
    (with the defaults of that time, `LEGACY_CALIBRATION`)."""
    recipe = config.to_dict()
    if not config.fallback.enabled:
        recipe.pop("fallback")  # nothing else in it trains anything while the check is off
    for section, fields in ADDED_LATER.items():
        if section not in recipe:
            continue
        for key, value in fields.items():
            if recipe[section].get(key) == value:
                recipe[section].pop(key)
        if not recipe[section]:
            recipe.pop(section)  # a section added later, at the values the caches were made with
    for section, keys in ADD_INTENT_ONLY.items():
        for key in keys:
            recipe[section].pop(key, None)
    for section, keys in CALIBRATION_ONLY.items():
        for key in keys:
            if legacy:
                recipe[section][key] = LEGACY_CALIBRATION[key]
            else:
                recipe[section].pop(key, None)
    return recipe


_MADE_THIS_RUN: set[Path] = set()  # cache folders whose release this run trained


def init_cache_folder(
    workdir: Path, kind: str, data: datasets.Dataset, config: ReleaseConfig, reuse: bool = True
) -> Path:
    """Where `cached_init` keeps (or finds) the `init` release of this recipe and data."""
    key = config_key(kind, init_recipe(config), list(data["intent"]), list(data["text"]))
    folder = workdir / "cache" / f"{kind}-{key}"
    legacy_key = config_key(
        kind, init_recipe(config, True), list(data["intent"]), list(data["text"])
    )
    legacy = workdir / "cache" / f"{kind}-{legacy_key}"
    if reuse and not folder.exists() and (legacy / "cost.json").is_file():
        folder = legacy  # the same weights, made when the key held the out-of-scope score
    return folder


def cached_init(
    workdir: Path, kind: str, data: datasets.Dataset, config: ReleaseConfig, reuse: bool
) -> tuple[Registry, dict]:
    """An `init` release on `data`, reused from an earlier run when recipe and data match."""
    folder = init_cache_folder(workdir, kind, data, config, reuse)
    registry = Registry(folder / "adapters")
    # --no-reuse still shares a release between protocols of this run (P2 and P3 start from the
    # same base; P1 and P2 end on the same full retrain): the cost was measured in this run.
    made_now = folder in _MADE_THIS_RUN
    if (reuse or made_now) and registry.releases() == ["v1"] and (folder / "cost.json").is_file():
        print(f"  reusing {folder}", flush=True)
        return registry, json.loads((folder / "cost.json").read_text())
    if folder.exists():
        shutil.rmtree(folder)
    reset_peak_rss()
    started = time.perf_counter()
    init_release(read_examples(data), registry, config)
    cost = release_costs(registry, "v1")
    cost["wall_s"] = round(time.perf_counter() - started, 2)
    cost["peak_rss_mb"] = peak_rss_mb()
    cost["peak_gpu_mb"] = peak_gpu_mb()
    (folder / "cost.json").write_text(json.dumps(cost, indent=1))
    _MADE_THIS_RUN.add(folder)
    return registry, cost


# ---- the protocols ----------------------------------------------------------------------------
def run_method(
    name: str,
    overrides: dict,
    protocol: Protocol,
    base_registry: Registry,
    steps: list[list[str]],
    base_intents: list[str],
    raw: dict,
    workdir: Path,
    seed: int,
    base_scores: dict,
    config: ReleaseConfig,
) -> dict:
    recipe = add_intent_recipe(config, overrides)
    root = workdir / protocol.name / name
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(base_registry.root, root / "adapters")
    registry = Registry(root / "adapters")
    known = list(base_intents)
    history = [{"release": "v1", "intents": len(known), "added": [], "scores": base_scores}]
    for added in steps:
        old = set(known)
        data = train_rows(raw, added, protocol.shots, seed)
        reset_peak_rss()
        started = time.perf_counter()
        job = update_release if name in VIA_UPDATE else add_intents
        release = job(read_examples(data), registry, "latest", overrides=recipe)
        wall = time.perf_counter() - started
        cost = release_costs(registry, release)
        cost.update(wall_s=round(wall, 2), peak_rss_mb=peak_rss_mb(), peak_gpu_mb=peak_gpu_mb())
        known += added
        clf = IntentClassifier.load(registry, release)
        scores = score(clf, raw, known, old)
        manifest = registry.manifest(release)
        entry = {
            "release": release,
            "intents": len(known),
            "added": added,
            "scores": scores,
            "cost": cost,
            "replay_bytes_per_intent": manifest["replay"]["bytes_per_intent"],
            "replay_exemplars": manifest["replay"]["exemplars"],
        }
        for split in SPLITS:
            prev = history[-1]["scores"][split]["accuracy"]
            entry.setdefault("old_intent_drop_points", {})[split] = round(
                100 * (prev - scores[split]["old_intents_accuracy"]), 9
            )
        history.append(entry)
        t = scores["test"]
        print(
            f"  {protocol.name} {name} {release}: val acc {100 * scores['val']['accuracy']:.2f}; "
            f"test acc {100 * t['accuracy']:.2f} "
            f"old {100 * t['old_intents_accuracy']:.2f} (drop {entry['old_intent_drop_points']['test']:+.2f}) "
            f"new {100 * t['new_intents_accuracy']:.2f}; {cost['compute_s']:.1f} s, "
            f"{cost['examples_processed']} examples",
            flush=True,
        )
    return {"overrides": overrides, "registry": str(registry.root), "releases": history}


def forgetting(history: list[dict], split: str) -> float:
    """Mean over intents learned before the last release of (best earlier accuracy - final)."""
    final = history[-1]["scores"][split]["per_intent"]
    learned_before = [i for step in history[:-1] for i in step["scores"][split]["per_intent"]]
    drops = []
    for intent in set(learned_before):
        best = max(
            s["scores"][split]["per_intent"][intent]
            for s in history[:-1]
            if intent in s["scores"][split]["per_intent"]
        )
        drops.append(best - final[intent])
    return 100 * float(np.mean(drops)) if drops else 0.0


@torch.no_grad()
def embed(backbone, texts: list[str], batch_size: int = 256) -> np.ndarray:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = backbone.encoder.to(device)
    out = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(texts), batch_size):
        rows = order[start : start + batch_size]
        batch = backbone.tokenizer(
            [texts[i] for i in rows],
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        batch = batch.to(device)
        hidden = encoder(**batch).last_hidden_state
        pooled = pool(hidden, batch["attention_mask"], "mean")
        out.append(F.normalize(pooled, dim=-1).float().cpu())
    result = torch.empty(len(texts), out[0].shape[1])
    result[order] = torch.cat(out)
    return result.numpy()


class Probe:
    """Logistic regression on frozen mean-pooled embeddings; embeddings computed once."""

    def __init__(self, backbone_name: str, raw: dict) -> None:
        started = time.perf_counter()
        backbone = load_backbone(ModelConfig(backbone=backbone_name))
        self.x = {s: embed(backbone, [t for t, _ in raw[s]]) for s in ("train", *SPLITS)}
        self.y = {s: np.array([i for _, i in raw[s]]) for s in ("train", *SPLITS)}
        self.texts = {s: [t for t, _ in raw[s]] for s in ("train",)}
        self.embed_s = time.perf_counter() - started
        self.c: float | None = None

    def fit_score(self, train: datasets.Dataset, known: list[str], old: set[str]) -> dict:
        from sklearn.linear_model import LogisticRegression

        keep = set(zip(train["text"], train["intent"], strict=True))
        mask = np.array(
            [(t, i) in keep for t, i in zip(self.texts["train"], self.y["train"], strict=True)]
        )
        known_set = set(known)
        candidates = [self.c] if self.c is not None else [1.0, 10.0, 100.0]
        best = None
        started = time.perf_counter()
        for c in candidates:  # C chosen on val once, at the first step, then kept
            model = LogisticRegression(C=c, max_iter=3000).fit(
                self.x["train"][mask], self.y["train"][mask]
            )
            vmask = np.isin(self.y["val"], list(known_set))
            val_acc = float((model.predict(self.x["val"][vmask]) == self.y["val"][vmask]).mean())
            if best is None or val_acc > best[0]:
                best = (val_acc, c, model)
        fit_s = time.perf_counter() - started
        _, self.c, model = best
        out = {"C": self.c, "fit_s": round(fit_s, 2)}
        for split in SPLITS:
            m = np.isin(self.y[split], list(known_set))
            pred, truth = model.predict(self.x[split][m]), self.y[split][m]
            old_m = np.isin(truth, list(old))
            out[split] = {
                "accuracy": float((pred == truth).mean()),
                "old_intents_accuracy": float((pred[old_m] == truth[old_m]).mean()),
                "new_intents_accuracy": float((pred[~old_m] == truth[~old_m]).mean())
                if (~old_m).any()
                else None,
            }
        return out


def run_protocol(
    protocol: Protocol,
    methods: dict[str, dict],
    raw: dict,
    order: list[str],
    config: ReleaseConfig,
    args: argparse.Namespace,
    probe: Probe | None,
) -> dict:
    print(protocol.describe(), flush=True)
    workdir = Path(args.workdir)
    base_intents = order[: protocol.base]
    steps = protocol.steps(order)
    base_data = train_rows(raw, base_intents, None, args.seed)
    base_registry, base_cost = cached_init(workdir, "base", base_data, config, args.reuse)
    base_scores = score(IntentClassifier.load(base_registry, "v1"), raw, base_intents, set())
    result: dict = {
        "protocol": protocol.__dict__,
        "base_intents": base_intents,
        "steps": steps,
        "base": {"cost": base_cost, "scores": base_scores},
        "methods": {},
    }
    for name, overrides in methods.items():
        result["methods"][name] = run_method(
            name,
            overrides,
            protocol,
            base_registry,
            steps,
            base_intents,
            raw,
            workdir,
            args.seed,
            base_scores,
            config,
        )
    everything = base_intents + [i for s in steps for i in s]
    if not args.no_retrain:
        print(f"  {protocol.name} full retrain on {len(everything)} intents ...", flush=True)
        full_data = datasets.concatenate_datasets(
            [base_data, train_rows(raw, everything[protocol.base :], protocol.shots, args.seed)]
        )
        reg, cost = cached_init(workdir, "retrain", full_data, config, args.reuse)
        scores = score(IntentClassifier.load(reg, "v1"), raw, everything, set(base_intents))
        result["full_retrain"] = {"cost": cost, "scores": scores, "registry": str(reg.root)}
        print(f"  full retrain: test acc {100 * scores['test']['accuracy']:.2f}", flush=True)
    if probe is not None:
        probe_steps = []
        for k in range(protocol.releases + 1):
            known = everything[: protocol.base + k * protocol.per_release]
            old = set(everything[: protocol.base + (k - 1) * protocol.per_release]) if k else set()
            train = datasets.concatenate_datasets(
                [base_data]
                + (
                    [train_rows(raw, known[protocol.base :], protocol.shots, args.seed)]
                    if k
                    else []
                )
            )
            probe_steps.append(probe.fit_score(train, known, old))
        result["linear_probe"] = probe_steps
    return result


# ---- summary ----------------------------------------------------------------------------------
def summarise(result: dict, split: str) -> dict:
    """Headline numbers per protocol and method on `split`."""
    out = {}
    for pname, p in result["protocols"].items():
        retrain = p.get("full_retrain")
        rows = {}
        for name, m in p["methods"].items():
            rel = m["releases"][1:]
            final = m["releases"][-1]["scores"][split]
            rows[name] = {
                "final_accuracy": final["accuracy"],
                "final_old_intents_accuracy": final["old_intents_accuracy"],
                "mean_new_intents_accuracy": float(
                    np.mean([r["scores"][split]["new_intents_accuracy"] for r in rel])
                ),
                "min_new_intents_accuracy": min(
                    r["scores"][split]["new_intents_accuracy"] for r in rel
                ),
                "max_old_intent_drop_points": round(
                    max(r["old_intent_drop_points"][split] for r in rel), 9
                ),
                "mean_forgetting_points": forgetting(m["releases"], split),
                "median_compute_s": statistics.median(r["cost"]["compute_s"] for r in rel),
                "median_examples_processed": statistics.median(
                    r["cost"]["examples_processed"] for r in rel
                ),
                "max_peak_rss_mb": max((r["cost"]["peak_rss_mb"] or 0) for r in rel),
                "max_peak_gpu_mb": max((r["cost"].get("peak_gpu_mb") or 0) for r in rel) or None,
                "final_replay_bytes_per_intent": m["releases"][-1]["replay_bytes_per_intent"],
            }
            if retrain:
                # Rounded: accuracies are counts over the same utterances, so a gap of exactly
                # 45 of 4,500 is -1.0 points, not -1.0000000000000009.
                rows[name]["vs_full_retrain_points"] = round(
                    100 * (final["accuracy"] - retrain["scores"][split]["accuracy"]), 9
                )
                rows[name]["median_compute_ratio"] = (
                    rows[name]["median_compute_s"] / retrain["cost"]["compute_s"]
                )
                rows[name]["median_examples_ratio"] = (
                    rows[name]["median_examples_processed"] / retrain["cost"]["examples_processed"]
                )
        out[pname] = rows
    return out


def targets(result: dict) -> list[dict]:
    """The issue's targets, checked on test with the shipped method (`intent-ci`)."""
    checks = []
    s = result["summary"]["test"]
    protocols = result["protocols"]

    def add(name: str, value: float | None, bar: str, ok: bool | None) -> None:
        checks.append({"target": name, "value": value, "bar": bar, "met": ok})

    for pname, p in protocols.items():
        if "full_retrain" not in p or "intent-ci" not in p["methods"]:
            continue
        retrain = p["full_retrain"]["scores"]["test"]["accuracy"]
        probe = p.get("linear_probe", [{}])[-1].get("test", {}).get("accuracy")
        row = s[pname]["intent-ci"]
        if pname in ("P1", "P2"):
            add(f"{pname} full retrain accuracy", retrain, ">= 96.0%", retrain >= 0.96)
            if probe is not None:
                add(
                    f"{pname} full retrain beats the linear probe",
                    retrain - probe,
                    "> 0",
                    retrain > probe,
                )
            add(
                f"{pname} final accuracy vs full retrain (points)",
                row["vs_full_retrain_points"],
                ">= -1.0",
                row["vs_full_retrain_points"] >= -1.0,
            )
            bar = 0.5 if pname == "P2" else 1.0
            add(
                f"{pname} largest old-intent drop in one release (points)",
                row["max_old_intent_drop_points"],
                f"<= {bar}",
                row["max_old_intent_drop_points"] <= bar,
            )
        if pname == "P2":
            add(
                "P2 median add-intent compute / full retrain",
                row["median_compute_ratio"],
                "<= 5%",
                row["median_compute_ratio"] <= 0.05,
            )
            add(
                "P2 median examples processed / full retrain",
                row["median_examples_ratio"],
                "<= 5%",
                row["median_examples_ratio"] <= 0.05,
            )
        if pname == "P3":
            add(
                "P3 mean new-intent accuracy (10 utterances)",
                row["mean_new_intents_accuracy"],
                ">= 85%",
                row["mean_new_intents_accuracy"] >= 0.85,
            )
            add(
                "P3 largest old-intent drop in one release (points)",
                row["max_old_intent_drop_points"],
                "<= 0.5",
                row["max_old_intent_drop_points"] <= 0.5,
            )
    return checks


def markdown(result: dict, out: Path) -> str:
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    split = result["report_split"]
    s = result["summary"][split]
    lines = [
        "# Class-incremental CLINC150: add-intent against a full retrain",
        "",
        f"Backbone `{result['backbone']}`, intent order seed {result['seed']}, "
        + (
            f"data condition `{result['data_condition']}` "
            f"({CONDITIONS[result['data_condition']]} training utterances per intent), "
            if result.get("data_condition", "full") != "full"
            else ""
        )
        + f"{result['machine']['cpu_count']} CPU cores ({result['machine']['processor']}), "
        f"{result['date']}. Produced by `{result['command']}`; {out.name}.json has every number "
        f"(val and test). Scores below are on the **{split}** split.",
        "",
    ]
    for pname, p in result["protocols"].items():
        proto = PROTOCOLS[pname]
        lines += [f"## {proto.describe()}", ""]
        if "full_retrain" in p:
            fr = p["full_retrain"]
            lines.append(
                f"Full retrain on all {len(p['base_intents']) + sum(len(x) for x in p['steps'])} intents: "
                f"**{pct(fr['scores'][split]['accuracy'])}**, {fr['cost']['compute_s']:.0f} s compute, "
                f"{fr['cost']['examples_processed']} examples processed."
            )
        if "linear_probe" in p:
            lines.append(
                f"Linear probe on frozen embeddings at the final step: {pct(p['linear_probe'][-1][split]['accuracy'])}."
            )
        lines += [
            "",
            "| method | final acc | vs retrain (pts) | worst old-intent drop / release (pts) | forgetting (pts) | new-intent acc (mean, min) | median cost / release | examples / release |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in s[pname].items():
            ratio = (
                f" ({100 * row['median_compute_ratio']:.1f}% of retrain)"
                if "median_compute_ratio" in row
                else ""
            )
            eratio = (
                f" ({100 * row['median_examples_ratio']:.1f}%)"
                if "median_examples_ratio" in row
                else ""
            )
            vs = (
                f"{row['vs_full_retrain_points']:+.2f}"
                if "vs_full_retrain_points" in row
                else "n/a"
            )
            lines.append(
                f"| {'**' + name + '**' if name == 'intent-ci' else name} | {pct(row['final_accuracy'])} | {vs} | "
                f"{row['max_old_intent_drop_points']:.2f} | {row['mean_forgetting_points']:.2f} | "
                f"{pct(row['mean_new_intents_accuracy'])}, {pct(row['min_new_intents_accuracy'])} | "
                f"{row['median_compute_s']:.1f} s{ratio} | {row['median_examples_processed']:.0f}{eratio} |"
            )
        lines += ["", "Accuracy on all intents known after each release:", ""]
        names = list(p["methods"])
        lines.append(
            "| release | intents | "
            + " | ".join(names)
            + (" | linear probe |" if "linear_probe" in p else " |")
        )
        lines.append("|---" * (2 + len(names) + ("linear_probe" in p)) + "|")
        for k, (release, intents) in enumerate(release_sizes(p)):
            cells = [
                pct(p["methods"][n]["releases"][k]["scores"][split]["accuracy"]) for n in names
            ]
            if "linear_probe" in p:
                cells.append(pct(p["linear_probe"][k][split]["accuracy"]))
            lines.append(f"| {release} | {intents} | " + " | ".join(cells) + " |")
        lines.append("")
    if result["targets"]:
        lines += [
            "## Targets (test split, shipped defaults)",
            "",
            "| target | value | bar | met |",
            "|---|---|---|---|",
        ]
        for c in result["targets"]:
            v = c["value"]
            shown = (
                f"{100 * v:.2f}%"
                if "accuracy" in c["target"] and "points" not in c["target"] and abs(v) <= 1
                else f"{100 * v:.1f}%"
                if "/" in c["target"]
                else f"{v:+.2f}"
                if "points" in c["target"] or "beats" in c["target"]
                else f"{v}"
            )
            if "beats" in c["target"]:
                shown = f"{100 * v:+.2f} points"
            lines.append(
                f"| {c['target']} | {shown} | {c['bar']} | {'yes' if c['met'] else '**no**'} |"
            )
        lines.append("")
        if result.get("report_rebuilt_by"):
            lines += [
                f"Summary and targets rebuilt from the JSON by `{result['report_rebuilt_by']}`, "
                "which compares points rounded to 1e-9 (accuracies are counts over the same "
                "utterances); nothing was retrained.",
                "",
            ]
    lines += [
        "Cost is the release's compute: the feature pass, the teacher's soft labels, the replay draw, "
        "training and the choice of exemplars (loading the parent and writing the release excluded; "
        "both are in the JSON as `job_s`). Examples processed = examples trained (epochs x set) + "
        "forward-only passes. Forgetting = mean over old intents of (best earlier accuracy - final accuracy).",
        "",
        f"![accuracy per release]({out.name}.png)",
        "",
    ]
    return "\n".join(lines)


def release_sizes(p: dict) -> list[tuple[str, int]]:
    """(release name, intents known) after the base and after every step of protocol result `p`."""
    sizes = [len(p["base_intents"])]
    for step in p["steps"]:
        sizes.append(sizes[-1] + len(step))
    return [(f"v{k + 1}", n) for k, n in enumerate(sizes)]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = result["report_split"]
    protocols = result["protocols"]
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.6), squeeze=False)
    colours = {
        "intent-ci": "#1f77b4",
        "distill": "#e377c2",
        "unfrozen-rows": "#17becf",
        "replay-floor": "#8c564b",
        "distill+replay": "#2ca02c",
        "distill-only": "#9467bd",
        "replay-only": "#ff7f0e",
        "naive": "#d62728",
        "l2": "#7f7f7f",
        "ewc": "#bcbd22",
    }
    for ax, (pname, p) in zip(axes[0], protocols.items(), strict=True):
        for name, m in p["methods"].items():
            xs = [r["intents"] for r in m["releases"]]
            ys = [100 * r["scores"][split]["accuracy"] for r in m["releases"]]
            ax.plot(
                xs,
                ys,
                marker="o",
                ms=3,
                label=name,
                color=colours.get(name),
                lw=2 if name == "intent-ci" else 1.2,
            )
        if "linear_probe" in p:
            xs = [n for _, n in release_sizes(p)]
            ax.plot(
                xs,
                [100 * r[split]["accuracy"] for r in p["linear_probe"]],
                ls="--",
                color="grey",
                label="linear probe",
            )
        if "full_retrain" in p:
            n = len(p["base_intents"]) + sum(len(s) for s in p["steps"])
            ax.scatter(
                [n],
                [100 * p["full_retrain"]["scores"][split]["accuracy"]],
                marker="*",
                s=160,
                color="black",
                zorder=5,
                label="full retrain",
            )
        ax.set_title(PROTOCOLS[pname].describe(), fontsize=9)
        ax.set_xlabel("intents known")
        ax.set_ylabel(f"{split} accuracy, all known intents (%)")
        lows = [
            100 * r["scores"][split]["accuracy"]
            for m in p["methods"].values()
            for r in m["releases"]
        ]
        lows += [100 * r[split]["accuracy"] for r in p.get("linear_probe", [])]
        if "full_retrain" in p:
            lows.append(100 * p["full_retrain"]["scores"][split]["accuracy"])
        ax.set_ylim(max(min(lows, default=90) - 2, 0), 100)
        ax.grid(alpha=0.3)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CLINC150 data_full.json")
    parser.add_argument("--backbone", default=PACKAGED_MINILM)
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument(
        "--methods",
        nargs="*",
        default=[m for m in METHODS if m != "replay-only"],  # replay-only is intent-ci
        choices=list(METHODS),
    )
    parser.add_argument(
        "--method",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra add-intent override set",
    )
    parser.add_argument(
        "--methods-for",
        action="append",
        default=[],
        metavar="PROTOCOL=NAME,NAME",
        help="run only these methods in one protocol (e.g. P3=intent-ci,naive)",
    )
    parser.add_argument(
        "--init-config", default="{}", help="JSON overrides for the base and full-retrain releases"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="intent order, few-shot samples and training seed"
    )
    parser.add_argument(
        "--condition",
        default="full",
        choices=list(CONDITIONS),
        help="training utterances per intent: full (CLINC150's 100) or small (a seeded 50, the "
        "size of Larson et al. 2019's small condition); every method and baseline sees the same",
    )
    parser.add_argument(
        "--split", default="test", choices=SPLITS, help="split the Markdown and targets report"
    )
    parser.add_argument("--no-retrain", action="store_true", help="skip the full-retrain baseline")
    parser.add_argument("--no-probe", action="store_true", help="skip the linear-probe baseline")
    parser.add_argument(
        "--reuse",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse cached base/retrain releases",
    )
    parser.add_argument("--workdir", default=str(REPO / "runs" / "incremental"))
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="12 intents, 20 utterances, 1 epoch: checks the script runs",
    )
    parser.add_argument("--out", default=str(REPO / "scripts" / "results" / "bench_incremental"))
    parser.add_argument(
        "--report-from",
        metavar="JSON",
        help="train nothing: rebuild summary, targets, Markdown and plot from a results JSON",
    )
    args = parser.parse_args()
    if args.report_from:
        result = json.loads(Path(args.report_from).read_text(encoding="utf-8"))
        result["report_rebuilt_by"] = " ".join(
            ["python scripts/bench_incremental.py", *sys.argv[1:]]
        )
        write_outputs(result, Path(args.out))
        return
    _quiet_libraries()
    torch.manual_seed(args.seed)

    raw = load_clinc(Path(args.data), smoke=args.smoke)
    raw["train"] = condition_rows(raw["train"], CONDITIONS[args.condition], args.seed)
    if args.smoke:
        PROTOCOLS.update(SMOKE_PROTOCOLS)
        args.init_config = json.dumps({"train": {"epochs": 1}, **json.loads(args.init_config)})
    order = intent_order(raw, args.seed)
    methods = {name: METHODS[name] for name in args.methods}
    for spec in args.method:
        name, _, value = spec.partition("=")
        methods[name] = json.loads(value)
    config = apply_overrides(
        ReleaseConfig(),
        {"model": {"backbone": args.backbone}, "train": {"seed": args.seed}},
        source="bench",
    )
    config = apply_overrides(config, json.loads(args.init_config), source="--init-config")
    started = time.perf_counter()
    probe = None
    if not args.no_probe:
        print("embedding CLINC150 with the frozen backbone for the linear probe ...", flush=True)
        probe = Probe(args.backbone, raw)
    result: dict = {
        "dataset": "CLINC150 data_full, in-scope intents",
        "data_condition": args.condition,
        "backbone": args.backbone,
        "seed": args.seed,
        "intent_order": order,
        "command": shlex.join(["python", "scripts/bench_incremental.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "init_config": config.to_dict(),
        "methods": methods,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
        },
        "report_split": args.split,
        "protocols": {},
    }
    if probe is not None:
        result["linear_probe_embed_s"] = round(probe.embed_s, 1)
    only: dict[str, list[str]] = {}
    for spec in args.methods_for:
        pname, _, names = spec.partition("=")
        only[pname] = [n for n in names.split(",") if n]
        unknown = sorted(set(only[pname]) - set(methods)) + sorted({pname} - set(PROTOCOLS))
        if unknown:
            parser.error(f"--methods-for {spec}: unknown {', '.join(unknown)}")
    result["methods_per_protocol"] = {p: only.get(p, list(methods)) for p in args.protocols}
    for pname in args.protocols:
        chosen = {n: methods[n] for n in result["methods_per_protocol"][pname]}
        result["protocols"][pname] = run_protocol(
            PROTOCOLS[pname], chosen, raw, order, config, args, probe
        )
        partial = Path(args.workdir) / "partial.json"  # survives a run that dies later
        partial.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    result["total_s"] = round(time.perf_counter() - started, 1)
    write_outputs(result, Path(args.out))


def write_outputs(result: dict, out: Path) -> None:
    """Summary and targets from the per-release records, then <out>.json, .md and .png."""
    result["summary"] = {split: summarise(result, split) for split in SPLITS}
    result["targets"] = targets(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result, out), encoding="utf-8")
    plot(result, out.with_suffix(".png"))
    print(markdown(result, out))


if __name__ == "__main__":
    main()
