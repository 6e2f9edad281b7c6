"""Scoring releases: overall, per intent, old versus new intents, out-of-scope rejection, and
deltas against another release.

The numbers come from the `intent_accuracy`, `oos_detection` and (for the paired comparison
against another release) `intent_regression` evaluate modules shipped in ``intent_ci/metrics/``,
loaded offline with ``evaluate.load(path)``. Rows labelled ``oos`` are out of scope: accuracy
and the per-intent figures are over the in-scope rows (the best intent, no rejection); the
out-of-scope figures use the release's calibrated threshold.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import evaluate

from intent_ci.data import INTENT, OOS_LABEL, TEXT, IntentData, check_known_intents
from intent_ci.metrics import INTENT_ACCURACY, INTENT_REGRESSION, OOS_DETECTION

if TYPE_CHECKING:  # the rules in intent_ci.gate use the metrics without loading model code
    from intent_ci.release import IntentClassifier, Prediction

OOS_METRICS = (
    "in_scope_accuracy",
    "in_scope_recall",
    "oos_recall",
    "oos_precision",
    "oos_f1",
    "auroc",
    "fpr_at_95",
)
"""The out-of-scope figures `eval` reports (see intent_ci/metrics/oos_detection)."""


@functools.lru_cache(maxsize=1)
def intent_accuracy_metric() -> evaluate.Metric:
    return evaluate.load(INTENT_ACCURACY)


@functools.lru_cache(maxsize=1)
def intent_regression_metric() -> evaluate.Metric:
    return evaluate.load(INTENT_REGRESSION)


@functools.lru_cache(maxsize=1)
def oos_detection_metric() -> evaluate.Metric:
    return evaluate.load(OOS_DETECTION)


def oos_scores(predictions: list[Prediction], references: list[str]) -> dict[str, Any]:
    """The out-of-scope figures of `predictions` (made with ``reject=True``) on `references`."""
    return oos_detection_metric().compute(
        predictions=[p.intent if p.in_scope else OOS_LABEL for p in predictions],
        references=references,
        scores=[p.score for p in predictions],
        oos_label=OOS_LABEL,
    )


def _paired_oos(
    ours: list[Prediction], theirs: list[Prediction], references: list[str]
) -> dict[str, int]:
    """Rows on which the two releases' accept/reject decisions differ, by kind."""
    counts = {
        "oos_accepted_by_this_only": 0,
        "oos_accepted_by_against_only": 0,
        "in_scope_rejected_by_this_only": 0,
        "in_scope_rejected_by_against_only": 0,
    }
    for a, b, ref in zip(ours, theirs, references, strict=True):
        if a.in_scope == b.in_scope:
            continue
        if ref == OOS_LABEL:
            counts[
                "oos_accepted_by_this_only" if a.in_scope else "oos_accepted_by_against_only"
            ] += 1
        else:
            key = (
                "in_scope_rejected_by_against_only"
                if a.in_scope
                else "in_scope_rejected_by_this_only"
            )
            counts[key] += 1
    return counts


def score(
    predictions: list[str], references: list[str], old_intents: list[str] | None = None
) -> dict[str, Any]:
    """Accuracy overall, per intent and (given `old_intents`) for old and new intents."""
    return intent_accuracy_metric().compute(
        predictions=predictions, references=references, old_intents=old_intents
    )


def group_accuracy(result: dict[str, Any], intents: list[str], name: str) -> dict[str, Any]:
    """Pooled accuracy of `intents` from a :func:`score` result: ``{name}_intents_accuracy``
    (None when none of them has test utterances) and ``{name}_n``."""
    rows = [result["per_intent"][i] for i in intents if i in result["per_intent"]]
    n = sum(r["n"] for r in rows)
    correct = sum(r["correct"] for r in rows)
    return {f"{name}_intents_accuracy": correct / n if n else None, f"{name}_n": n}


def evaluate_release(
    classifier: IntentClassifier,
    data: IntentData,
    *,
    old_intents: list[str] | None = None,
    against: IntentClassifier | None = None,
) -> dict[str, Any]:
    """Score `classifier` on `data`; optionally compare it with another release on the same utterances.

    Args:
        old_intents: intents counted as old; default: the parent release's intents (all
            intents for a base release).
        against: a second release; it is scored on the utterances of intents it knows, and
            per-intent accuracy deltas (this release minus `against`) are reported, with the
            paired statistics of the drop (`against.paired`: exact McNemar p-value and 90%
            interval, see `intent_regression`).

    Returns:
        ``accuracy``, ``per_intent``, old/new intent figures and ``confusions`` over the in-scope
        rows (best intent, no rejection); the out-of-scope figures of `OOS_METRICS` (with the
        release's calibrated threshold; the oos ones None without ``oos`` rows) and
        ``oos_threshold``, ``oos_score``; with `against`, ``against`` (accuracy deltas, paired
        statistics) and ``against.oos`` (each out-of-scope figure for both releases and the
        delta, this minus `against`, on the rows both can be scored on, and the counts of rows
        whose accept/reject decisions differ).

    Raises:
        IntentCIError: if `data` holds intents the release does not know.
    """
    check_known_intents(data, classifier.intents, classifier.name)
    all_texts, all_refs = data.dataset[TEXT], data.dataset[INTENT]
    predictions = classifier.predict(all_texts)
    in_rows = [i for i, ref in enumerate(all_refs) if ref != OOS_LABEL]
    refs = [all_refs[i] for i in in_rows]
    if old_intents is None:
        old_intents = list(classifier.manifest.get("parent_intents") or classifier.intents)
    preds = [predictions[i].intent for i in in_rows]
    result = {"release": classifier.name, **score(preds, refs, old_intents)}
    result["old_intents"] = sorted(set(old_intents) & set(refs))
    result["new_intents"] = sorted(set(refs) - set(old_intents))
    result.update(oos_scores(predictions, all_refs))
    result["oos_threshold"] = classifier.threshold
    result["oos_score"] = classifier.score_method
    # An update release's updated intents are old intents that were meant to move; they are
    # also reported on their own (and stay in the old-intent figures, which must not drop).
    updated = list(classifier.manifest.get("updated_intents") or [])
    if updated:
        result["updated_intents"] = sorted(set(updated) & set(refs))
        result.update(group_accuracy(result, updated, "updated"))
    if against is not None:
        known = set(against.intents)
        keep = [i for i, ref in enumerate(refs) if ref in known]
        sub_refs = [refs[i] for i in keep]
        # Out of scope, paired: every `oos` row, and the in-scope rows of intents both know.
        rows = [i for i, ref in enumerate(all_refs) if ref == OOS_LABEL or ref in known]
        their_all = against.predict([all_texts[i] for i in rows])
        our_all = [predictions[i] for i in rows]
        paired_refs = [all_refs[i] for i in rows]
        theirs_oos, ours_oos = oos_scores(their_all, paired_refs), oos_scores(our_all, paired_refs)
        oos_against = {
            key: {
                "this": ours_oos[key],
                "against": theirs_oos[key],
                "delta": None
                if ours_oos[key] is None or theirs_oos[key] is None
                else ours_oos[key] - theirs_oos[key],
            }
            for key in OOS_METRICS
        }
        oos_against["n"] = len(rows)
        oos_against["paired"] = _paired_oos(our_all, their_all, paired_refs)
        their_by_row = dict(zip(rows, their_all, strict=True))
        their_preds = [their_by_row[in_rows[i]].intent for i in keep]
        our_preds = [preds[i] for i in keep]
        theirs = score(their_preds, sub_refs) if keep else None
        ours = score(our_preds, sub_refs) if keep else None
        paired = (
            intent_regression_metric().compute(
                predictions=our_preds,
                baseline_predictions=their_preds,
                references=sub_refs,
                old_intents=against.intents,
            )["old"]
            if keep
            else None
        )
        result["against"] = {
            "release": against.name,
            "n": len(keep),
            "accuracy": theirs["accuracy"] if theirs else None,
            "this_release_accuracy": ours["accuracy"] if ours else None,
            "delta": (ours["accuracy"] - theirs["accuracy"]) if theirs else None,
            "paired": paired,
            "per_intent_delta": {
                intent: ours["per_intent"][intent]["accuracy"]
                - theirs["per_intent"][intent]["accuracy"]
                for intent in sorted(theirs["per_intent"])
            }
            if theirs
            else {},
            "oos": oos_against,
        }
    return result
