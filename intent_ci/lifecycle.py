"""What happens to releases after training: verify, roll back, compare, retire intents.

* :func:`verify_registry` re-hashes files, checks label maps, head rows and adapter configs, and
  walks the lineage (parents exist, no cycles, label maps only grow, one backbone), for one
  release or all of them. ``--backbone`` also loads each backbone and compares its weights.
* :func:`rollback` moves ``LATEST`` back to an existing release by atomic replace, under the
  registry lock, and records the move in ``HISTORY.jsonl``. It never deletes anything.
* :func:`diff_releases` lists intents added and removed, per-intent metric deltas where both
  manifests hold evaluation results, and config changes field by field.
* :func:`retire_intents` makes a new release in which some intents are no longer predicted:
  the parent's adapter byte for byte, its head without those rows, its labels and replay memory
  without those intents. Every other intent's logit is bit-identical to the parent's, so only
  utterances the parent gave to a retired intent change their prediction. No training. Its
  calibration set loses the retired intents' utterances and its out-of-scope threshold is set
  again on the rest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from intent_ci.calibration import (
    BANK_FILE,
    CALIBRATION_FILE,
    calibrate_release_scores,
    calibration_rows,
    exemplar_texts,
    make_bank,
    read_calibration,
    write_calibration,
)
from intent_ci.config import NAME_PATTERN, OOS_SCORES, ModelConfig, OOSConfig, ReleaseConfig
from intent_ci.data import (
    INTENT,
    OOS_LABEL,
    SOURCE,
    TEXT,
    check_known_intents,
    normalise,
    read_examples,
)
from intent_ci.errors import IntentCIError, ReleaseVerificationError
from intent_ci.registry import Registry, check_release_name, no_registry
from intent_ci.release import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    HEAD_WEIGHTS,
    LABELS,
    IntentClassifier,
    library_versions,
    load_release,
    release_problems,
    verify_release,
    write_bank,
    write_staged,
    write_staged_json,
)
from intent_ci.replay import REPLAY_FILE, memory_bytes_per_intent, read_memory, write_memory

logger = logging.getLogger(__name__)


def _registry(registry: str | Path | Registry) -> Registry:
    return registry if isinstance(registry, Registry) else Registry(registry)


# ---- verify ------------------------------------------------------------------------------------
@dataclass
class ReleaseCheck:
    """The verification result of one release."""

    release: str
    problems: list[str] = field(default_factory=list)
    intents: int | None = None
    parent: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    """Results of `verify_registry`: per release, for the registry itself, and notes."""

    registry: str
    releases: list[ReleaseCheck]
    registry_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.registry_problems and all(r.ok for r in self.releases)

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "ok": self.ok,
            "releases": [
                {
                    "release": r.release,
                    "ok": r.ok,
                    "intents": r.intents,
                    "parent": r.parent,
                    "problems": r.problems,
                }
                for r in self.releases
            ],
            "registry_problems": self.registry_problems,
            "notes": self.notes,
        }


def _backbone_problems(registry: Registry, checks: list[ReleaseCheck]) -> None:
    """Load each distinct backbone once and compare its weights with the manifests' fingerprint."""
    from intent_ci.modeling import load_backbone

    loaded: dict[str, tuple[str | None, str | None]] = {}
    for check in checks:
        if not check.ok:
            continue
        manifest = registry.manifest(check.release)
        model = manifest["config"].get("model") or {}
        key = json.dumps([model.get("backbone"), model.get("revision"), model.get("pooling")])
        if key not in loaded:
            try:
                cfg = ModelConfig(
                    backbone=str(model.get("backbone")),
                    revision=model.get("revision"),
                    pooling=str(model.get("pooling", "auto")),
                )
                loaded[key] = (load_backbone(cfg).fingerprint, None)
            except IntentCIError as err:
                loaded[key] = (None, str(err))
        fingerprint, error = loaded[key]
        recorded = manifest["backbone"].get("fingerprint")
        if error is not None:
            check.problems.append(f"backbone check: {error}")
        elif fingerprint != recorded:
            check.problems.append(
                f"release {check.release} was trained on backbone {model.get('backbone')!r} with weights "
                f"{str(recorded)[:19]}…, but the weights loaded here are {str(fingerprint)[:19]}…"
            )


def verify_registry(
    registry: str | Path | Registry, release: str | None = None, *, backbone: bool = False
) -> VerifyReport:
    """Verify one release (with its whole lineage) or, with ``release=None``, every release.

    Args:
        registry: the registry folder.
        release: a release name or ``latest``; None checks all releases and the registry itself
            (``LATEST``, stray ``vN`` entries such as symlinks or folders without a manifest).
        backbone: also load each backbone and compare its weights with the recorded fingerprint.

    Raises:
        IntentCIError: for an invalid or unknown release name or a missing registry (usage
            errors); problems of the releases themselves are returned, not raised.
    """
    registry = _registry(registry)
    if release is not None:
        names = [registry.resolve(release)]
        registry_problems: list[str] = []
    else:
        if not registry.exists():
            raise no_registry(registry.root, "nothing to verify")
        names = registry.releases()
        registry_problems = registry.registry_problems()
    checks = []
    for name in names:
        problems = release_problems(registry, name, whole_chain=release is not None)
        check = ReleaseCheck(name, problems)
        try:
            manifest = registry.manifest(name)
            check.intents, check.parent = len(manifest["intents"]), manifest.get("parent")
        except IntentCIError:
            pass
        checks.append(check)
    if backbone:
        _backbone_problems(registry, checks)
    notes = [
        f"{entry}: left by a run that was killed; never loaded, removed by the next write"
        for entry in registry.stale_staging()
    ]
    return VerifyReport(str(registry.root), checks, registry_problems, notes)


# ---- rollback ----------------------------------------------------------------------------------
def rollback(registry: str | Path | Registry, release: str) -> tuple[str | None, str]:
    """Point ``LATEST`` at `release` again; nothing is deleted, the move is logged.

    The target must pass the same checks a load runs (hashes, label map, adapter schema,
    lineage). A damaged ``LATEST`` does not stop a rollback: that is how it gets repaired.

    Returns:
        ``(previous, release)``: what ``LATEST`` pointed to before (None if nothing or damaged)
        and the release it points to now. ``previous == release`` means nothing changed.

    Raises:
        IntentCIError: for an invalid or unknown release, or one that fails verification.
    """
    registry = _registry(registry)
    if release == "latest":
        raise IntentCIError("rollback needs a release name such as v2, not `latest`")
    target = registry.resolve(release)
    problems = release_problems(registry, target)
    if problems:
        raise ReleaseVerificationError(
            f"cannot roll back to {target}, it fails verification: {problems[0]}"
        )
    current = registry.latest_or_none()
    if current == target:
        return current, target
    previous = registry.move_latest(target, "rollback")
    logger.debug("LATEST: %s -> %s", previous, target)
    return previous, target


def history(registry: str | Path | Registry) -> list[dict[str, Any]]:
    """The moves of ``LATEST`` recorded in ``HISTORY.jsonl``, oldest first."""
    return _registry(registry).history()


# ---- diff --------------------------------------------------------------------------------------
def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(values, dict) and values:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: values}


def _ancestors(registry: Registry, name: str) -> list[str]:
    chain, seen = [], {name}
    parent = registry.manifest(name).get("parent")
    while parent is not None and parent not in seen and parent in registry.releases():
        chain.append(parent)
        seen.add(parent)
        parent = registry.manifest(parent).get("parent")
    return chain


def diff_releases(registry: str | Path | Registry, a: str, b: str) -> dict[str, Any]:
    """What changed from release `a` to release `b`, from their manifests.

    Returns:
        A JSON-ready dict: ``relation`` (lineage between the two), ``intents_added``,
        ``intents_removed``, ``retired_intents`` (declared by `b`), ``intents_updated`` and
        ``corrections`` (by the update releases from `a` to `b`, or by `b` when it does not
        descend from `a`), ``metrics`` (overall and
        per-intent accuracy in each and the delta b - a, where both manifests hold an
        evaluation), ``config_changes`` and ``backbone_changes`` (field, a, b).

    Raises:
        IntentCIError: for invalid or unknown names, or a release that fails its hash check.
    """
    registry = _registry(registry)
    name_a, name_b = registry.resolve(a), registry.resolve(b)
    ma, mb = registry.verify(name_a), registry.verify(name_b)
    if name_a == name_b:
        relation = "same release"
    elif name_a in _ancestors(registry, name_b):
        relation = f"{name_b} descends from {name_a}"
    elif name_b in _ancestors(registry, name_a):
        relation = f"{name_a} descends from {name_b}"
    else:
        relation = "neither descends from the other"
    intents_a, intents_b = ma["intents"], mb["intents"]
    result: dict[str, Any] = {
        "a": name_a,
        "b": name_b,
        "relation": relation,
        "intents_added": [i for i in intents_b if i not in intents_a],
        "intents_removed": [i for i in intents_a if i not in intents_b],
        "retired_intents": mb.get("retired_intents", []),
    }
    # Intents updated (and utterances corrected) by the releases from `a` (excluded) to `b`
    # (included), when `b` descends from `a`; else by `b` alone.
    ancestors_b = _ancestors(registry, name_b)
    between = [name_b] if name_a != name_b else []
    if name_a in ancestors_b:
        between += ancestors_b[: ancestors_b.index(name_a)]
    updated: list[str] = []
    corrections: list[dict[str, Any]] = []
    for name in reversed(between):
        manifest = mb if name == name_b else registry.manifest(name)
        updated += [i for i in manifest.get("updated_intents") or [] if i not in updated]
        corrections += [{**c, "release": name} for c in manifest.get("corrections") or []]
    result["intents_updated"] = [i for i in updated if i in intents_a]
    result["corrections"] = corrections
    eval_a = (ma.get("metrics") or {}).get("eval") or {}
    eval_b = (mb.get("metrics") or {}).get("eval") or {}
    metrics: dict[str, Any] = {}
    if eval_a and eval_b:
        metrics["data"] = {"a": eval_a.get("data"), "b": eval_b.get("data")}
        for key in ("accuracy", "old_intents_accuracy", "new_intents_accuracy"):
            va, vb = eval_a.get(key), eval_b.get(key)
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                metrics[key] = {"a": va, "b": vb, "delta": vb - va}
        per_a, per_b = eval_a.get("per_intent") or {}, eval_b.get("per_intent") or {}
        per_intent = {}
        for intent in intents_b:
            ra, rb = per_a.get(intent), per_b.get(intent)
            if isinstance(ra, dict) and isinstance(rb, dict):
                va, vb = ra.get("accuracy"), rb.get("accuracy")
                if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                    per_intent[intent] = {"a": va, "b": vb, "delta": vb - va}
        metrics["per_intent"] = per_intent
    result["metrics"] = metrics
    config_a, config_b = _flatten(ma["config"]), _flatten(mb["config"])
    result["config_changes"] = [
        {"field": key, "a": config_a.get(key), "b": config_b.get(key)}
        for key in sorted(set(config_a) | set(config_b))
        if config_a.get(key) != config_b.get(key)
    ]
    backbone_a, backbone_b = _flatten(ma["backbone"]), _flatten(mb["backbone"])
    result["backbone_changes"] = [
        {"field": key, "a": backbone_a.get(key), "b": backbone_b.get(key)}
        for key in sorted(set(backbone_a) | set(backbone_b))
        if backbone_a.get(key) != backbone_b.get(key)
    ]
    return result


# ---- out-of-scope threshold of a release that trains nothing -----------------------------------
def recalibrate(
    registry: Registry,
    parent: str,
    keep: list[str],
    in_scope: dict[str, list[str]],
    oos: list[str],
    cfg: OOSConfig,
    replay: dict[str, list[str]],
) -> tuple[dict[str, Any], torch.Tensor | None]:
    """The ``oos`` record of a release made from `parent` without training (retire, calibrate).

    Scores the calibration utterances with the parent's model; for the intents in `keep`
    (a subset of the parent's, in order) only their logits count, which are bit-identical to
    the new release's because its head rows are the parent's rows, copied exactly. The encoder
    is the parent's too, so a score that reads features gets its exemplar bank from the
    parent's encoder on the new release's `replay` memory.

    Returns:
        The record, and the exemplar bank to store (None when the score reads no features).

    Raises:
        IntentCIError: if the parent fails to load (verification, backbone).
    """
    classifier = IntentClassifier(load_release(registry, parent), device="cpu")
    columns = [classifier.intents.index(i) for i in keep]
    rows = calibration_rows(in_scope, keep)
    texts = [t for t, _ in rows] + list(oos)
    bank = None
    features = None
    bank_texts, without = exemplar_texts(cfg.score, replay, keep)
    if bank_texts:
        logits, features = classifier.logits_and_features(texts + bank_texts)
        bank = make_bank(features[len(texts) :])
        logits, features = logits[: len(texts)], features[: len(texts)]
    else:
        logits = classifier.logits(texts)
    record = calibrate_release_scores(
        logits[:, columns],
        features,
        len(rows),
        bank,
        cfg,
        intents=sum(1 for i in keep if in_scope.get(i)),
        without_exemplars=without,
    )
    return record, (bank if "bank" in record else None)


def _recorded_oos_config(manifest: dict[str, Any]) -> OOSConfig:
    """The release's out-of-scope settings: its config's, with the score and target it used."""
    cfg = OOSConfig(**(manifest["config"].get("oos") or {}))
    record = manifest.get("oos") or {}
    return dataclasses.replace(
        cfg,
        score=record.get("score", cfg.score),
        target_recall=record.get("target_recall", cfg.target_recall),
    )


# ---- retire ------------------------------------------------------------------------------------
def retire_intents(
    intents: list[str], registry: str | Path | Registry = "adapters", parent: str = "latest"
) -> str:
    """Make a release of `parent` that no longer predicts `intents`; return its id.

    The new release keeps the parent's adapter files byte for byte, drops the retired rows
    from the head (the other rows, and the dense layer, are copied exactly), and drops the
    intents from the label map and the replay memory. Its manifest lists ``retired_intents``,
    which is what lets its label map shrink in the lineage check. The parent is untouched and
    stays loadable; ``rollback`` brings it back.

    Raises:
        IntentCIError: for invalid intent or release names (before any file is read), intents
            the parent does not have, retiring every intent, or a parent that fails its checks.
        LatestMovedError: when another run moved ``LATEST`` meanwhile (the release is written).
    """
    if isinstance(intents, str) or not intents:
        raise IntentCIError("retire needs at least one intent name")
    for intent in intents:
        if not isinstance(intent, str) or not NAME_PATTERN.match(intent):
            raise IntentCIError(
                f"invalid intent name {intent!r}; expected lowercase letters, digits, '_' or '-', "
                "starting with a letter or digit, at most 64 characters"
            )
    if len(set(intents)) != len(intents):
        raise IntentCIError(f"intent(s) listed twice: {', '.join(intents)}")
    registry = _registry(registry)
    if parent != "latest":
        check_release_name(parent)
    name = registry.resolve(parent)
    # As in add-intent: LATEST moves only if no other run moved it since this one read it.
    expect_latest = name if parent == "latest" else registry.latest_or_none()
    manifest = verify_release(registry, name)
    labels = manifest["intents"]
    unknown = [i for i in intents if i not in labels]
    if unknown:
        raise IntentCIError(
            f"intent(s) {', '.join(map(repr, unknown))} are not in release {name} (it has "
            f"{len(labels)} intents: {', '.join(labels[:8])}{', …' if len(labels) > 8 else ''}); "
            "nothing to retire"
        )
    keep = [i for i in labels if i not in intents]
    if not keep:
        raise IntentCIError(
            f"cannot retire every intent of release {name}; a release predicts at least one intent"
        )
    folder = registry.path(name)
    rows = [labels.index(i) for i in keep]
    head = {k: v.clone() for k, v in load_file(str(folder / HEAD_WEIGHTS)).items()}
    head["out_proj.weight"] = head["out_proj.weight"][rows].contiguous()
    if "out_proj.bias" in head:
        head["out_proj.bias"] = head["out_proj.bias"][rows].contiguous()
    memory = read_memory(folder / REPLAY_FILE) if (folder / REPLAY_FILE).is_file() else {}
    replay = {k: v for k, v in memory.items() if k in keep}
    calibration = None
    oos_record = None
    bank = None
    if CALIBRATION_FILE in manifest["files"]:
        # The retired intents' utterances leave the calibration set: the release no longer
        # predicts them, so they are neither in scope nor known out-of-scope examples.
        in_scope, oos = read_calibration(folder / CALIBRATION_FILE)
        calibration = ({i: in_scope[i] for i in keep if i in in_scope}, oos)
        oos_record, bank = recalibrate(
            registry, name, keep, calibration[0], oos, _recorded_oos_config(manifest), replay
        )
    elif (manifest.get("oos") or {}).get("threshold") is not None:
        # Dropping intents changes every score, and the utterances to set the threshold again
        # are not here (a release pulled with --no-replay): say so, the child accepts everything.
        logger.warning(
            "release %s has an out-of-scope threshold but not the calibration utterances it was "
            "set on (pulled with --no-replay?); without %s its scores change, so the new release "
            "has no threshold and accepts every utterance until `intent-ci calibrate --release "
            "<new release> --data <labelled utterances>` sets one",
            name,
            ", ".join(intents),
        )
    new_manifest = {
        "parent": name,
        "intents": keep,
        "new_intents": [],
        "parent_intents": labels,
        "retired_intents": list(intents),
        "backbone": manifest["backbone"],
        "config": manifest["config"],
        "metrics": {},
        "replay": {
            "intents": len(replay),
            "exemplars": sum(len(v) for v in replay.values()),
            "bytes_per_intent": round(memory_bytes_per_intent(replay), 1),
        },
        "versions": library_versions(),
    }
    if oos_record is not None:
        new_manifest["oos"] = oos_record
    if REPLAY_FILE not in manifest["files"]:
        # No memory to carry (a parent pulled with --no-replay): the child has none either,
        # and says why, so add-intent refuses it as it refuses the parent.
        new_manifest["omitted_files"] = {
            REPLAY_FILE: {"reason": f"parent release {name} has no replay memory to keep"}
        }
    with registry.stage() as staging:
        for file in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            write_staged(staging / file, lambda f=file: shutil.copyfile(folder / f, staging / f))
        path = staging / HEAD_WEIGHTS
        write_staged(path, lambda: save_file(head, str(path)))
        write_staged_json(staging / LABELS, {"intents": keep}, indent=1)
        if REPLAY_FILE in manifest["files"]:  # a release pulled with --no-replay has none
            write_staged(staging / REPLAY_FILE, lambda: write_memory(replay, staging / REPLAY_FILE))
        if calibration is not None:
            path = staging / CALIBRATION_FILE
            write_staged(path, lambda: write_calibration(calibration[0], calibration[1], path))
        if bank is not None:
            write_bank(bank, staging / BANK_FILE)
        release = registry.commit(staging, new_manifest, expect_latest=expect_latest)
    logger.info("wrote release %s: %s without %s", release, name, ", ".join(intents))
    return release


# ---- calibrate ---------------------------------------------------------------------------------
MIN_CALIBRATION_UTTERANCES = 10
"""`calibrate` refuses fewer distinct in-scope utterances: one utterance repeated has no spread
to standardise `energy_knn` by (its threshold came out at 0 and rejected most in-scope traffic)."""


def calibrate_release(
    data: Any,
    registry: str | Path | Registry = "adapters",
    parent: str = "latest",
    *,
    target_recall: float | None = None,
    score: str | None = None,
) -> str:
    """Make a release of `parent` whose out-of-scope threshold is set on `data`; return its id.

    Releases are immutable, so recalibrating makes a new release, which trains nothing: the
    parent's adapter, head, labels and replay memory byte for byte, a ``calibration.json`` of
    `data` (its in-scope rows, and its ``oos`` rows to measure out-of-scope recall), and a
    manifest whose ``calibrated_from`` names the parent.

    Args:
        data: labelled utterances of the parent's intents (any source `read_examples` takes);
            rows labelled ``oos`` are out-of-scope examples.
        registry: the registry.
        parent: the release to recalibrate.
        target_recall: in-scope recall to calibrate for; default the parent's.
        score: out-of-scope score (`intent_ci.config.OOS_SCORES`); default the parent's.

    Raises:
        IntentCIError: for an unknown release, data with intents the release does not predict,
            no in-scope rows, utterances the release trained on (its replay memory), or a
            target outside [0.5, 1).
    """
    registry = _registry(registry)
    if parent != "latest":
        check_release_name(parent)
    name = registry.resolve(parent)
    # As in add-intent: LATEST moves only if no other run moved it since this one read it.
    expect_latest = name if parent == "latest" else registry.latest_or_none()
    manifest = verify_release(registry, name)
    cfg = _recorded_oos_config(manifest)
    if target_recall is not None:
        if isinstance(target_recall, bool) or not isinstance(target_recall, (int, float)):
            raise IntentCIError(f"--target-recall: expected a number, got {target_recall!r}")
        if not 0.5 <= target_recall < 1:
            raise IntentCIError(
                f"--target-recall: must be in [0.5, 1) (a share of in-scope utterances to "
                f"accept), got {target_recall}"
            )
        cfg = dataclasses.replace(cfg, target_recall=float(target_recall))
    if score is not None:
        if score not in OOS_SCORES:
            raise IntentCIError(f"--score: expected one of {', '.join(OOS_SCORES)}, got {score!r}")
        cfg = dataclasses.replace(cfg, score=score)
    config = manifest["config"]
    data_cfg = ReleaseConfig.from_dict(config, source=f"{registry.path(name) / 'manifest.json'}")
    examples = read_examples(data, data_cfg.data)
    labels = manifest["intents"]
    check_known_intents(examples, labels, name)
    folder = registry.path(name)
    memory = read_memory(folder / REPLAY_FILE) if REPLAY_FILE in manifest["files"] else {}
    trained = {normalise(t) for texts in memory.values() for t in texts}
    in_scope: dict[str, list[str]] = {}
    oos: list[str] = []
    rows = examples.dataset
    for text, intent, where in zip(rows[TEXT], rows[INTENT], rows[SOURCE], strict=True):
        if intent == OOS_LABEL:
            oos.append(text)
            continue
        if normalise(text) in trained:
            raise IntentCIError(
                f"{where}: release {name} trained on this utterance (it is in its replay "
                "memory); calibrate on utterances the release never trained on"
            )
        in_scope.setdefault(intent, []).append(text)
    if not in_scope:
        raise IntentCIError(
            f"{examples.origin}: no in-scope utterances (only rows labelled 'oos'); the "
            "threshold is set on utterances of the release's intents"
        )
    distinct = len({normalise(t) for texts in in_scope.values() for t in texts})
    if distinct < MIN_CALIBRATION_UTTERANCES:
        raise IntentCIError(
            f"{examples.origin}: {distinct} distinct in-scope utterance(s); calibrating needs at "
            f"least {MIN_CALIBRATION_UTTERANCES} (the threshold is a quantile of their scores, "
            "and the score is standardised by their spread)"
        )
    ordered = {i: in_scope[i] for i in labels if i in in_scope}
    record, bank = recalibrate(registry, name, labels, ordered, oos, cfg, memory)
    record["note"] = f"recalibrated on {examples.origin}"
    new_config = json.loads(json.dumps(config))
    new_config["oos"] = dataclasses.asdict(cfg)
    new_manifest = {
        "parent": name,
        "intents": labels,
        "new_intents": [],
        "parent_intents": labels,
        "calibrated_from": name,
        "backbone": manifest["backbone"],
        "config": new_config,
        "metrics": {},
        "replay": manifest.get("replay", {}),
        "oos": record,
        "versions": library_versions(),
    }
    if REPLAY_FILE not in manifest["files"] and REPLAY_FILE in (
        manifest.get("omitted_files") or {}
    ):
        # a parent without its memory (pulled with --no-replay, or retired from such a release)
        new_manifest["omitted_files"] = {REPLAY_FILE: manifest["omitted_files"][REPLAY_FILE]}
    copied = [ADAPTER_WEIGHTS, ADAPTER_CONFIG, HEAD_WEIGHTS, LABELS]
    if REPLAY_FILE in manifest["files"]:
        copied.append(REPLAY_FILE)
    with registry.stage() as staging:
        for file in copied:
            write_staged(staging / file, lambda f=file: shutil.copyfile(folder / f, staging / f))
        path = staging / CALIBRATION_FILE
        write_staged(path, lambda: write_calibration(ordered, oos, path))
        if bank is not None:
            write_bank(bank, staging / BANK_FILE)
        release = registry.commit(staging, new_manifest, expect_latest=expect_latest)
    logger.info("wrote release %s: %s recalibrated on %s", release, name, examples.origin)
    return release
