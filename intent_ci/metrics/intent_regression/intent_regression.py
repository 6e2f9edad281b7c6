"""Paired old-intent regression between a baseline and a candidate release.

Both releases classify the same utterances; predictions are compared example by example.
For the baseline's intents ("old intents") it reports, overall and per intent:

* accuracy before and after, the drop (baseline minus candidate accuracy, as a fraction);
* ``broken`` (baseline right, candidate wrong) and ``fixed`` (baseline wrong, candidate right):
  the discordant pairs;
* ``p_value``: exact one-sided McNemar test of "the candidate is no worse" against "it is
  worse", i.e. P(X >= broken) for X ~ Binomial(broken + fixed, 1/2);
* ``ci_low``/``ci_high``: a two-sided ``1 - 2 * alpha`` interval for the drop (Bonett & Price
  2012 adjusted Wald interval for a difference of paired proportions, recommended by
  Fagerland, Lydersen & Laake 2014); its lower end is a one-sided level-``alpha`` bound,
  matching the one-sided test;
* per intent, ``p_adjusted``: Holm's step-down adjustment over the old intents
  (``correction="none"`` leaves p-values as they are).

New intents (in the references but not in ``old_intents``) get the candidate's accuracy with a
Wilson interval; ``confusions`` lists where newly broken old-intent utterances went. With
``rejected_label`` (e.g. ``"oos"``, what a release answers for an utterance it rejects as out of
scope), a broken utterance predicted as that label counts as rejected, not as moved to a new
intent.

Load it offline with ``evaluate.load("path/to/intent_regression.py")``::

    metric = evaluate.load(INTENT_REGRESSION)
    metric.compute(
        predictions=["a", "c"], baseline_predictions=["a", "b"], references=["a", "b"],
        old_intents=["a", "b"],
    )
"""

# One import per line: evaluate's import scanner reads this file as text.
import collections
import math
import statistics

import datasets
import evaluate

_DESCRIPTION = """Paired comparison of a candidate release with a baseline release on the same
utterances: old-intent accuracy drop with an exact McNemar test and a confidence interval,
the same per intent (with Holm's correction), new-intent accuracy, and newly confused pairs."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the candidate release's predicted intent per utterance.
    baseline_predictions (list of str): the baseline release's prediction for the same utterance.
    references (list of str): true intent per utterance.
    old_intents (list of str, optional): the baseline's intents; default: every reference intent.
    alpha (float, optional): one-sided level; intervals are two-sided at 1 - 2 * alpha. Default 0.05.
    correction (str, optional): "holm" (default) or "none", over the old intents' p-values.
    top_confusions (int, optional): how many newly confused (true -> predicted) pairs to list.
    rejected_label (str, optional): the prediction that means "rejected as out of scope"; never
        counted as a new intent. Default None (every prediction is an intent).
Returns:
    old {n, baseline_correct, candidate_correct, baseline_accuracy, candidate_accuracy, drop,
    broken, fixed, p_value, ci_low, ci_high}, per_intent {intent: the same + p_adjusted},
    new {n, correct, accuracy, ci_low, ci_high, per_intent}, confusions [{true, predicted,
    count, to_new_intent, rejected}], broken_to_new_intents, broken_rejected, confidence,
    correction.
"""

CORRECTIONS = ("holm", "none")


def binom_sf(k, n, p=0.5):
    """P(X >= k) for X ~ Binomial(n, p).

    With p = 1/2 (McNemar) the sum is done in exact integer arithmetic and rounded once;
    otherwise the terms are summed in log space with a shared scale.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.5:
        return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    logs = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
        for i in range(k, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def binom_cdf(k, n, p=0.5):
    """P(X <= k) for X ~ Binomial(n, p), as the upper tail of n - X ~ Binomial(n, 1 - p)."""
    return binom_sf(n - k, n, 1.0 - p)


def mcnemar_one_sided(broken, fixed):
    """Exact one-sided McNemar p-value for "more broken than fixed": P(X >= broken | broken + fixed).

    Under no change each discordant pair is equally likely to go either way, so
    broken ~ Binomial(broken + fixed, 1/2). No discordant pairs gives 1.
    """
    if broken < 0 or fixed < 0:
        raise ValueError(f"counts must be >= 0, got broken={broken}, fixed={fixed}")
    return binom_sf(broken, broken + fixed, 0.5)


def paired_drop_interval(broken, fixed, n, confidence):
    """Bonett-Price adjusted Wald interval for the drop (broken - fixed) / n of paired accuracy.

    Adds one pseudo-count to each discordant cell (and two to n), which keeps the interval
    sensible at 0 or n discordant pairs where the plain Wald interval collapses.
    """
    if n <= 0:
        return None, None
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p_broken = (broken + 1) / (n + 2)
    p_fixed = (fixed + 1) / (n + 2)
    centre = p_broken - p_fixed
    half = z * math.sqrt(max(0.0, p_broken + p_fixed - centre**2) / (n + 2))
    return max(-1.0, centre - half), min(1.0, centre + half)


def wilson_interval(correct, n, confidence):
    """Wilson score interval for an accuracy of correct / n."""
    if n <= 0:
        return None, None
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    phat = correct / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def holm_adjust(pvalues):
    """Holm's step-down adjusted p-values (family-wise error control), same keys as `pvalues`."""
    ordered = sorted(pvalues.items(), key=lambda item: (item[1], item[0]))
    m = len(ordered)
    adjusted = {}
    running = 0.0
    for rank, (key, p) in enumerate(ordered):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[key] = running
    return adjusted


def _paired_row(baseline_correct, candidate_correct, broken, fixed, n, confidence):
    low, high = paired_drop_interval(broken, fixed, n, confidence)
    return {
        "n": n,
        "baseline_correct": baseline_correct,
        "candidate_correct": candidate_correct,
        "baseline_accuracy": baseline_correct / n if n else None,
        "candidate_accuracy": candidate_correct / n if n else None,
        "drop": (baseline_correct - candidate_correct) / n if n else None,
        "broken": broken,
        "fixed": fixed,
        "p_value": mcnemar_one_sided(broken, fixed),
        "ci_low": low,
        "ci_high": high,
    }


def compare(
    predictions,
    references,
    baseline_predictions,
    old_intents=None,
    alpha=0.05,
    correction="holm",
    top_confusions=10,
    rejected_label=None,
):
    """The metric's computation as a plain function (see the module docstring)."""
    if not len(predictions) == len(references) == len(baseline_predictions):
        raise ValueError(
            f"{len(predictions)} predictions, {len(baseline_predictions)} baseline predictions and "
            f"{len(references)} references; they must be paired one to one"
        )
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    confidence = 1.0 - 2.0 * alpha
    old = set(references) if old_intents is None else set(old_intents)

    # Per old intent: [baseline correct, candidate correct, broken, fixed, n].
    cells = collections.defaultdict(lambda: [0, 0, 0, 0, 0])
    new_cells = collections.defaultdict(lambda: [0, 0])
    confusions = collections.Counter()
    for cand, base, ref in zip(predictions, baseline_predictions, references, strict=True):
        if ref not in old:
            new_cells[ref][0] += cand == ref
            new_cells[ref][1] += 1
            continue
        row = cells[ref]
        base_ok, cand_ok = base == ref, cand == ref
        row[0] += base_ok
        row[1] += cand_ok
        row[2] += base_ok and not cand_ok
        row[3] += cand_ok and not base_ok
        row[4] += 1
        if base_ok and not cand_ok:
            confusions[(ref, cand)] += 1

    per_intent = {
        intent: _paired_row(*cells[intent], confidence=confidence) for intent in sorted(cells)
    }
    raw = {intent: row["p_value"] for intent, row in per_intent.items()}
    adjusted = holm_adjust(raw) if correction == "holm" else raw
    for intent, row in per_intent.items():
        row["p_adjusted"] = adjusted[intent]

    totals = [sum(row[i] for row in cells.values()) for i in range(5)]
    new_correct = sum(c for c, _ in new_cells.values())
    new_n = sum(n for _, n in new_cells.values())
    new_low, new_high = wilson_interval(new_correct, new_n, confidence)

    def to_new(pred):
        return pred not in old and pred != rejected_label

    broken_to_new = sum(k for (_, pred), k in confusions.items() if to_new(pred))
    broken_rejected = sum(k for (_, pred), k in confusions.items() if pred == rejected_label)
    return {
        "old": _paired_row(*totals, confidence=confidence),
        "per_intent": per_intent,
        "new": {
            "n": new_n,
            "correct": new_correct,
            "accuracy": new_correct / new_n if new_n else None,
            "ci_low": new_low,
            "ci_high": new_high,
            "per_intent": {
                intent: {"n": n, "correct": c, "accuracy": c / n}
                for intent, (c, n) in sorted(new_cells.items())
            },
        },
        "confusions": [
            {
                "true": t,
                "predicted": p,
                "count": k,
                "to_new_intent": to_new(p),
                "rejected": p == rejected_label,
            }
            for (t, p), k in sorted(confusions.items(), key=lambda item: (-item[1], item[0]))[
                :top_confusions
            ]
        ],
        "broken_to_new_intents": broken_to_new,
        "broken_rejected": broken_rejected,
        "confidence": confidence,
        "correction": correction,
    }


class IntentRegression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "baseline_predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                }
            ),
        )

    def _compute(
        self,
        predictions,
        baseline_predictions,
        references,
        old_intents=None,
        alpha=0.05,
        correction="holm",
        top_confusions=10,
        rejected_label=None,
    ):
        return compare(
            predictions,
            references,
            baseline_predictions,
            old_intents=old_intents,
            alpha=alpha,
            correction=correction,
            top_confusions=top_confusions,
            rejected_label=rejected_label,
        )
