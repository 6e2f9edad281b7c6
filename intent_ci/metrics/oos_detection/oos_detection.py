"""Out-of-scope detection: rejection quality of a release on labelled data with ``oos`` rows.

Load it offline with ``evaluate.load("path/to/oos_detection.py")``::

    metric = evaluate.load(OOS_DETECTION)
    metric.compute(
        predictions=["a", "oos", "b"],   # the intent, or "oos" where the release rejected it
        references=["a", "oos", "oos"],  # "oos" marks an out-of-scope row
        scores=[23.1, 11.0, 19.5],       # the release's out-of-scope score (higher: in scope)
    )
"""

# One import per line: evaluate's import scanner reads this file as text.
import datasets
import evaluate
import numpy
from sklearn import metrics

_DESCRIPTION = """How well a release answers "none of these": in-scope accuracy with rejection,
in-scope recall, out-of-scope recall, precision and F1, and the threshold-free AUROC and FPR@95
of its out-of-scope score."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the predicted intent per utterance, or `oos_label` where the
        release rejected the utterance as out of scope.
    references (list of str): the true intent, or `oos_label` for an out-of-scope utterance.
    scores (list of float): the release's out-of-scope score per utterance (higher means more
        in scope), for the threshold-free AUROC and FPR@95.
    oos_label (str, optional): the out-of-scope label. Default "oos".
    recall_at (float, optional): the in-scope recall at which the FPR is read. Default 0.95.
Returns:
    in_scope_n, oos_n, in_scope_accuracy (accepted and right, over all in-scope rows),
    in_scope_recall (accepted, over all in-scope rows), oos_recall (rejected, over all
    out-of-scope rows), oos_precision (out of scope, over all rejected rows), oos_f1,
    auroc (in scope vs out of scope by score), fpr_at_95 (share of out-of-scope rows accepted at
    the threshold that accepts `recall_at` of in-scope rows). A figure that needs rows of a kind
    the data does not hold is None.
"""


def _share(count, total):
    return count / total if total else None


class OOSDetection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "scores": datasets.Value("float64"),
                }
            ),
        )

    def _compute(self, predictions, references, scores, oos_label="oos", recall_at=0.95):
        if not len(predictions) == len(references) == len(scores):
            raise ValueError(
                f"{len(predictions)} predictions, {len(references)} references and "
                f"{len(scores)} scores; expected one of each per utterance"
            )
        pred = numpy.array(predictions, dtype=object)
        ref = numpy.array(references, dtype=object)
        score = numpy.array(scores, dtype=float)
        is_oos = ref == oos_label
        rejected = pred == oos_label
        in_n, oos_n = int((~is_oos).sum()), int(is_oos.sum())
        caught = int((rejected & is_oos).sum())
        precision = _share(caught, int(rejected.sum()))
        recall = _share(caught, oos_n)
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        result = {
            "in_scope_n": in_n,
            "oos_n": oos_n,
            "in_scope_accuracy": _share(int((pred == ref)[~is_oos].sum()), in_n),
            "in_scope_recall": _share(int((~rejected)[~is_oos].sum()), in_n),
            "oos_recall": recall,
            "oos_precision": precision,
            "oos_f1": f1,
            "auroc": None,
            "fpr_at_95": None,
        }
        if in_n and oos_n:
            in_scope = (~is_oos).astype(int)
            result["auroc"] = float(metrics.roc_auc_score(in_scope, score))
            fpr, tpr, _ = metrics.roc_curve(in_scope, score, drop_intermediate=False)
            # The first point (highest threshold) that accepts `recall_at` of in-scope rows.
            result["fpr_at_95"] = float(fpr[numpy.searchsorted(tpr, recall_at - 1e-12)])
        return result
