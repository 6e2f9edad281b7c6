"""Intent accuracy: overall, per intent, old versus new intents, and top confusions.

Load it offline with ``evaluate.load("path/to/intent_accuracy.py")``::

    metric = evaluate.load(INTENT_ACCURACY)
    metric.compute(predictions=["a", "b"], references=["a", "a"], old_intents=["a"])
"""

# One import per line: evaluate's import scanner reads this file as text.
import collections

import datasets
import evaluate

_DESCRIPTION = """Accuracy of string intent labels, broken down per intent and into old intents
(those the parent release already predicted) and new intents (those this release added)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): predicted intent per utterance.
    references (list of str): true intent per utterance.
    old_intents (list of str, optional): intents known before this release; the rest are new.
    top_confusions (int, optional): how many (true -> predicted) error pairs to list. Default 10.
Returns:
    accuracy, n, per_intent {intent: {accuracy, n, correct}}, old_intents_accuracy, old_n,
    new_intents_accuracy, new_n, confusions [{true, predicted, count}].
"""


def _accuracy(correct, total):
    return correct / total if total else None


class IntentAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, old_intents=None, top_confusions=10):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        per = collections.defaultdict(lambda: [0, 0])
        confusions = collections.Counter()
        for pred, ref in zip(predictions, references, strict=True):
            per[ref][1] += 1
            if pred == ref:
                per[ref][0] += 1
            else:
                confusions[(ref, pred)] += 1
        correct = sum(c for c, _ in per.values())
        result = {
            "accuracy": _accuracy(correct, len(references)),
            "n": len(references),
            "per_intent": {
                intent: {"accuracy": _accuracy(c, n), "n": n, "correct": c}
                for intent, (c, n) in sorted(per.items())
            },
            "confusions": [
                {"true": t, "predicted": p, "count": k}
                for (t, p), k in confusions.most_common(top_confusions)
            ],
        }
        if old_intents is not None:
            old = set(old_intents)
            old_c = sum(c for i, (c, n) in per.items() if i in old)
            old_n = sum(n for i, (c, n) in per.items() if i in old)
            new_c = sum(c for i, (c, n) in per.items() if i not in old)
            new_n = sum(n for i, (c, n) in per.items() if i not in old)
            result.update(
                old_intents_accuracy=_accuracy(old_c, old_n),
                old_n=old_n,
                new_intents_accuracy=_accuracy(new_c, new_n),
                new_n=new_n,
            )
        return result
