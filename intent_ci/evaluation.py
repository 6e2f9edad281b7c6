"""Scoring releases: overall, per intent, old versus new intents, and deltas against another release.

The numbers come from the `intent_accuracy` and (for the paired comparison against another
release) `intent_regression` evaluate modules shipped in ``intent_ci/metrics/``, loaded offline
with ``evaluate.load(path)``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import evaluate

from intent_ci.data import INTENT, TEXT, IntentData, check_known_intents
from intent_ci.metrics import INTENT_ACCURACY, INTENT_REGRESSION

if TYPE_CHECKING:  # the rules in intent_ci.gate use the metrics without loading model code
    from intent_ci.release import IntentClassifier


@functools.lru_cache(maxsize=1)
def intent_accuracy_metric() -> evaluate.Metric:
    return evaluate.load(INTENT_ACCURACY)


@functools.lru_cache(maxsize=1)
def intent_regression_metric() -> evaluate.Metric:
    return evaluate.load(INTENT_REGRESSION)


def score(
    predictions: list[str], references: list[str], old_intents: list[str] | None = None
) -> dict[str, Any]:
    """Accuracy overall, per intent and (given `old_intents`) for old and new intents."""
    return intent_accuracy_metric().compute(
        predictions=predictions, references=references, old_intents=old_intents
    )


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

    Raises:
        IntentCIError: if `data` holds intents the release does not know.
    """
    check_known_intents(data, classifier.intents, classifier.name)
    texts, refs = data.dataset[TEXT], data.dataset[INTENT]
    if old_intents is None:
        old_intents = list(classifier.manifest.get("parent_intents") or classifier.intents)
    preds = [p.label for p in classifier.predict(texts)]
    result = {"release": classifier.name, **score(preds, refs, old_intents)}
    result["old_intents"] = sorted(set(old_intents) & set(refs))
    result["new_intents"] = sorted(set(refs) - set(old_intents))
    if against is not None:
        known = set(against.intents)
        keep = [i for i, ref in enumerate(refs) if ref in known]
        sub_texts = [texts[i] for i in keep]
        sub_refs = [refs[i] for i in keep]
        their_preds = [p.label for p in against.predict(sub_texts)]
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
        }
    return result
