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

The manifest's ``oos`` field records the method, score, threshold, calibration set and the
in-scope recall achieved on it. A release made before this feature has no ``oos`` field: it
accepts every utterance.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import torch

from intent_ci.config import NAME_PATTERN, OOS_SCORES, OOSConfig
from intent_ci.errors import IntentCIError, ReleaseVerificationError

CALIBRATION_FILE = "calibration.json"
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
    raise IntentCIError(f"unknown out-of-scope score {method!r}; expected one of {OOS_SCORES}")


def holdout_split(
    texts: list[str], intents: list[str], cfg: OOSConfig, seed: str
) -> tuple[list[int], list[int]]:
    """Seeded per-intent split of rows into training rows and held-out calibration rows.

    Each intent with ``n`` utterances gives ``min(floor(n * holdout_share),
    holdout_max_per_intent)`` calibration rows, never leaving fewer than ``holdout_min_train``
    to train on. The choice depends only on `seed`, the intent and its utterances.

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
        n = len(rows)
        k = min(int(n * cfg.holdout_share), cfg.holdout_max_per_intent, n - cfg.holdout_min_train)
        if k <= 0:
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
        record["note"] = (
            "no calibration utterances (every intent has too few utterances to hold any out); "
            "every utterance is in scope"
        )
        return record
    threshold = threshold_for_recall(in_scope_scores, cfg.target_recall)
    record["threshold"] = threshold
    record["in_scope_recall"] = int((in_scope_scores >= threshold).sum()) / len(in_scope_scores)
    if len(oos_scores):
        record["oos_recall"] = int((oos_scores < threshold).sum()) / len(oos_scores)
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
