"""Out-of-scope rejection: a score per utterance, and a threshold calibrated for each release.

Every release carries its own rejection rule, because every release changes the score
distribution. The rule is made from utterances the release never trained on:

* `init` and `add-intent` hold out a seeded share of each new intent's utterances
  (:func:`holdout_split`); they are never trained on, and go into the release's
  ``calibration.json`` together with the parent's calibration utterances (still untrained-on
  for the child: replay draws only from the parent's training rows);
* the threshold is the ``1 - target_recall`` quantile of the release's scores on those
  utterances (:func:`threshold_for_recall`), so that share of in-scope utterances is accepted;
* rows labelled ``oos``, when given, are stored with them and measure the out-of-scope recall
  the threshold reaches; they do not move the threshold.

Scores (higher means more in scope): ``max_logit``, ``msp`` and ``energy`` read the logits
alone; ``energy_knn`` (the default) also reads the pooled features. It is the mean of two
standardised parts: the energy (logsumexp of the logits) and the cosine similarity to the
nearest exemplar of the release's replay memory, whose pooled features the release stores
(``oos_bank.safetensors``, unit length, float16). Each part is standardised by its mean and
standard deviation on the calibration utterances, recorded in the manifest (``standardise``),
so nothing out of scope sets them. scripts/bench_oos.py compares every score on CLINC150.

The manifest's ``oos`` field records the method, score, threshold, calibration set and the
in-scope recall achieved on it. A release made before this feature has no ``oos`` field: it
accepts every utterance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from intent_ci.config import NAME_PATTERN, OOS_SCORES, OOSConfig
from intent_ci.errors import IntentCIError, ReleaseVerificationError

CALIBRATION_FILE = "calibration.json"
BANK_FILE = "oos_bank.safetensors"
"""Pooled features of the replay memory's exemplars, for scores that read features."""
LOGIT_SCORES = ("max_logit", "msp", "energy")
BANK_SCORES = ("energy_knn",)
"""Scores that read the pooled features and the release's exemplar bank as well as the logits."""
FALLBACK_SCORE = "energy"
"""What a bank score falls back to when a release has no exemplars (replay memory off)."""
METHOD = "in-scope quantile"
"""How the threshold is set: the (1 - target_recall) quantile of in-scope calibration scores."""
_FORMAT = 1


def score_logits(logits: torch.Tensor, method: str) -> torch.Tensor:
    """The out-of-scope score of every row of `logits`; higher means more in scope.

    Args:
        logits: ``(n, intents)`` logits of a release.
        method: ``max_logit``, ``msp`` (max softmax probability) or ``energy`` (logsumexp).

    Raises:
        IntentCIError: for an unknown method.
    """
    logits = logits.float()
    if method == "max_logit":
        return logits.max(-1).values if len(logits) else torch.empty(0)
    if method == "msp":
        return logits.softmax(-1).max(-1).values if len(logits) else torch.empty(0)
    if method == "energy":
        return torch.logsumexp(logits, -1) if len(logits) else torch.empty(0)
    if method in BANK_SCORES:
        raise IntentCIError(f"out-of-scope score {method!r} needs pooled features and a bank")
    raise IntentCIError(f"unknown out-of-scope score {method!r}; expected one of {OOS_SCORES}")


def needs_bank(method: str) -> bool:
    """Whether `method` reads pooled features and the release's exemplar bank."""
    return method in BANK_SCORES


def make_bank(features: torch.Tensor) -> torch.Tensor:
    """The exemplar bank of `features`: unit-length rows, rounded to float16 as the release
    stores them, in float32. Calibration uses this rounded bank, so a loaded release scores
    exactly as it was calibrated."""
    return F.normalize(features.float(), dim=-1).half().float()


def nearest_similarity(
    features: torch.Tensor, bank: torch.Tensor, chunk: int = 4096
) -> torch.Tensor:
    """Cosine similarity of each row of `features` to its nearest row of `bank`."""
    if len(bank) == 0:
        raise IntentCIError("the exemplar bank is empty: no nearest exemplar to compare with")
    unit = F.normalize(features.float(), dim=-1)
    out = torch.empty(len(unit))
    for start in range(0, len(unit), chunk):
        out[start : start + chunk] = (unit[start : start + chunk] @ bank.T).max(-1).values
    return out


def score_parts(
    logits: torch.Tensor, features: torch.Tensor, bank: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The unstandardised parts of ``energy_knn``: ``energy`` and ``knn`` (nearest cosine)."""
    return {"energy": score_logits(logits, "energy"), "knn": nearest_similarity(features, bank)}


def standardisation(parts: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each part (on the in-scope calibration utterances)."""
    return {
        name: {"mean": float(v.double().mean()), "std": max(float(v.double().std()), 1e-6)}
        for name, v in parts.items()
    }


def score_rows(
    method: str,
    logits: torch.Tensor,
    features: torch.Tensor | None = None,
    *,
    bank: torch.Tensor | None = None,
    standardise: dict[str, dict[str, float]] | None = None,
) -> torch.Tensor:
    """The out-of-scope score of every row; higher means more in scope.

    Args:
        method: a logit score (see :func:`score_logits`) or ``energy_knn``, the mean of the
            standardised energy and nearest-exemplar cosine similarity.
        logits: ``(n, intents)``.
        features: ``(n, hidden)`` pooled features (``energy_knn`` only).
        bank: the release's exemplar bank (:func:`make_bank`; ``energy_knn`` only).
        standardise: the manifest's ``oos.standardise`` (``energy_knn`` only).

    Raises:
        IntentCIError: for an unknown method, or ``energy_knn`` without what it reads.
    """
    if method not in BANK_SCORES:
        return score_logits(logits, method)
    if features is None or bank is None or standardise is None:
        raise IntentCIError(
            f"out-of-scope score {method!r} needs pooled features, the exemplar bank and the "
            "calibration's standardisation"
        )
    if len(logits) == 0:
        return torch.empty(0)
    parts = score_parts(logits, features, bank)
    return sum(
        0.5 * (parts[name] - stats["mean"]) / stats["std"] for name, stats in standardise.items()
    )


def holdout_count(n: int, cfg: OOSConfig) -> int:
    """Calibration rows an intent with `n` utterances gives: ``min(floor(n * holdout_share),
    holdout_max_per_intent)``, never leaving fewer than ``holdout_min_train`` to train on; 0
    with the calibration off."""
    if not cfg.enabled:
        return 0
    return max(
        0, min(int(n * cfg.holdout_share), cfg.holdout_max_per_intent, n - cfg.holdout_min_train)
    )


def holdout_split(
    texts: list[str], intents: list[str], cfg: OOSConfig, seed: str
) -> tuple[list[int], list[int]]:
    """Seeded per-intent split of rows into training rows and held-out calibration rows.

    Each intent gives `holdout_count` calibration rows. The choice depends only on `seed`, the
    intent and its utterances.

    Returns:
        ``(train_rows, calibration_rows)``: row indices into `texts`, each in row order.
    """
    if not cfg.enabled:
        return list(range(len(texts))), []
    by_intent: dict[str, list[int]] = {}
    for row, intent in enumerate(intents):
        by_intent.setdefault(intent, []).append(row)
    held: set[int] = set()
    for intent, rows in by_intent.items():
        k = holdout_count(len(rows), cfg)
        if k == 0:
            continue
        ordered = sorted(rows, key=lambda r: texts[r])  # independent of input row order
        held.update(random.Random(f"{seed}-{intent}").sample(ordered, k))
    return [r for r in range(len(texts)) if r not in held], sorted(held)


def threshold_for_recall(scores: torch.Tensor, target_recall: float) -> float:
    """The largest threshold that accepts (score >= threshold) at least `target_recall` of `scores`.

    This is the ``1 - target_recall`` quantile, taken at an observed score so the recall it
    reaches on `scores` is exact: ``ceil(target * n)`` of ``n`` accepted (more with ties).

    Raises:
        IntentCIError: for empty scores.
    """
    if len(scores) == 0:
        raise IntentCIError("cannot calibrate a threshold on no in-scope utterances")
    ordered = torch.sort(scores.float()).values
    accept = math.ceil(target_recall * len(ordered) - 1e-9)
    return float(ordered[len(ordered) - accept])


def calibrate(
    in_scope_scores: torch.Tensor,
    oos_scores: torch.Tensor,
    cfg: OOSConfig,
    *,
    intents: int,
) -> dict[str, Any]:
    """The manifest's ``oos`` record: the threshold for `cfg.target_recall` and what it achieves.

    Args:
        in_scope_scores: scores of the in-scope calibration utterances.
        oos_scores: scores of the ``oos`` calibration utterances (may be empty).
        cfg: score method and target recall.
        intents: how many intents the calibration utterances cover.

    Returns:
        ``method``, ``score``, ``target_recall``, ``threshold`` (None when there is nothing to
        calibrate on: every utterance is then accepted), ``calibration`` (file and sizes),
        ``in_scope_recall`` and ``oos_recall`` achieved on the calibration set.
    """
    record: dict[str, Any] = {
        "method": METHOD,
        "score": cfg.score,
        "target_recall": cfg.target_recall,
        "threshold": None,
        "calibration": {
            "file": CALIBRATION_FILE,
            "in_scope": len(in_scope_scores),
            "intents": intents,
            "oos": len(oos_scores),
        },
        "in_scope_recall": None,
        "oos_recall": None,
    }
    if len(in_scope_scores) == 0:
        why = (
            "`oos.holdout_share` or `oos.holdout_max_per_intent` is 0, so none is held out"
            if cfg.holdout_share == 0 or cfg.holdout_max_per_intent == 0
            else "every intent has too few utterances to hold any out"
        )
        record["note"] = f"no calibration utterances ({why}); every utterance is in scope"
        return record
    threshold = threshold_for_recall(in_scope_scores, cfg.target_recall)
    record["threshold"] = threshold
    record["in_scope_recall"] = int((in_scope_scores >= threshold).sum()) / len(in_scope_scores)
    if len(oos_scores):
        record["oos_recall"] = int((oos_scores < threshold).sum()) / len(oos_scores)
    return record


def bank_rows(replay: dict[str, list[str]], intents: list[str]) -> list[tuple[str, str]]:
    """``(intent, text)`` of every exemplar in the bank's row order: `replay` intent by intent,
    in head-row order (`intents`)."""
    return [(intent, t) for intent in intents for t in replay.get(intent, [])]


def exemplar_texts(
    score: str, replay: dict[str, list[str]], intents: list[str]
) -> tuple[list[str], list[str]]:
    """The utterances whose pooled features make the exemplar bank of `score` (`replay` in
    head-row order), and the intents with no exemplar.

    No utterances when `score` reads no bank, or when some intent has no exemplar: a bank
    missing an intent would make that intent's own utterances look out of scope
    (:func:`calibrate_release_scores` then falls back to ``energy``).
    """
    if not needs_bank(score):
        return [], []
    missing = [intent for intent in intents if not replay.get(intent)]
    if missing:
        return [], missing
    return [t for _, t in bank_rows(replay, intents)], []


def calibrate_release_scores(
    logits: torch.Tensor,
    features: torch.Tensor | None,
    in_scope_rows: int,
    bank: torch.Tensor | None,
    cfg: OOSConfig,
    *,
    intents: int,
    without_exemplars: list[str] | None = None,
) -> dict[str, Any]:
    """The manifest's ``oos`` record of a release, from its pass over the calibration set.

    Args:
        logits, features: of the calibration utterances, in-scope rows first, then ``oos``.
            `features` may be None for a logit score.
        in_scope_rows: how many leading rows are in scope.
        bank: the release's exemplar bank (:func:`make_bank`), or None when it has no replay
            memory.
        cfg: score method and target recall.
        intents: how many intents the calibration utterances cover.
        without_exemplars: intents of the release with no exemplar in its memory (a release
            made with ``replay.enabled: false`` from a parent pulled without its memory). A
            bank score needs every intent in the bank, else an intent's own utterances would
            look out of scope; it falls back to ``energy``, and the record says why.

    Returns:
        :func:`calibrate`'s record; for a bank score also ``standardise`` (each part's mean and
        standard deviation on the in-scope rows) and ``bank`` (file and rows).
    """
    extra: dict[str, Any] = {}
    standardise = None
    if needs_bank(cfg.score):
        why = None
        if without_exemplars:
            why = f"{len(without_exemplars)} intents have no replay exemplars"
        elif bank is None or len(bank) == 0 or features is None:
            why = "the release has no replay exemplars"
        elif in_scope_rows < 2:
            why = "it has fewer than 2 calibration utterances"
        if why is not None:
            extra["note"] = (
                f"score {cfg.score} needs exemplars of every intent and calibration utterances, "
                f"but {why}: calibrated on {FALLBACK_SCORE} instead"
            )
            cfg = dataclasses.replace(cfg, score=FALLBACK_SCORE)
        else:
            parts = score_parts(logits[:in_scope_rows], features[:in_scope_rows], bank)
            standardise = standardisation(parts)
            extra["standardise"] = standardise
            extra["bank"] = {"file": BANK_FILE, "rows": len(bank)}
    scores = score_rows(cfg.score, logits, features, bank=bank, standardise=standardise)
    record = calibrate(scores[:in_scope_rows], scores[in_scope_rows:], cfg, intents=intents)
    if "note" in extra and "note" in record:
        extra["note"] = f"{record['note']}; {extra['note']}"
    record.update(extra)
    return record


def write_calibration(in_scope: dict[str, list[str]], oos: list[str], path: Path) -> None:
    """Write ``calibration.json``: held-out utterances per intent, and ``oos`` utterances."""
    payload = {"format": _FORMAT, "in_scope": in_scope, "oos": oos}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def read_calibration(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """Read ``calibration.json``.

    Returns:
        ``(in_scope, oos)``: utterances per intent, and out-of-scope utterances.

    Raises:
        ReleaseVerificationError: if the file is not JSON of the expected shape.
    """
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ReleaseVerificationError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ReleaseVerificationError(
            f"{path}: expected an object with format {_FORMAT}, `in_scope` and `oos`"
        )
    in_scope, oos = payload.get("in_scope"), payload.get("oos")
    if not isinstance(in_scope, dict) or not isinstance(oos, list):
        raise ReleaseVerificationError(
            f"{path}: `in_scope` must map intents to utterance lists and `oos` be a list"
        )
    for intent, texts in in_scope.items():
        if not NAME_PATTERN.match(intent) or not isinstance(texts, list):
            raise ReleaseVerificationError(f"{path}: invalid entry for intent {intent!r}")
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise ReleaseVerificationError(f"{path}: intent {intent!r} has a non-text utterance")
    if not all(isinstance(t, str) and t.strip() for t in oos):
        raise ReleaseVerificationError(f"{path}: `oos` holds a non-text utterance")
    return in_scope, oos


def calibration_rows(in_scope: dict[str, list[str]], intents: list[str]) -> list[tuple[str, str]]:
    """``(text, intent)`` of every in-scope calibration utterance, in head-row order of `intents`."""
    return [(text, intent) for intent in intents for text in in_scope.get(intent, [])]
