"""The regression gate: may a candidate release ship? (`intent-ci check`)

The candidate and a baseline release (default: the candidate's parent) classify the same test
utterances, and their predictions are paired example by example. The baseline's intents are the
*old* intents; the candidate's other intents are *new*. Five rules, all set in `GateConfig`:

1. **old_accuracy**: old-intent accuracy overall. Fails when the drop is larger than
   ``max_drop`` points *and* an exact one-sided McNemar test (on the discordant pairs) finds the
   candidate worse at level ``alpha``. The size condition keeps small, real but acceptable costs
   of adding intents green; the test keeps noise green: when nothing really changed, this rule
   fails with probability at most ``alpha``. The report gives the drop's ``1 - 2 alpha``
   Bonett-Price interval, whose lower end is the matching one-sided bound.
2. **per_intent**: an old intent fails when its drop is larger than ``per_intent_max_drop``
   points *and* significant on its own utterances: exact McNemar, Holm-adjusted over all old
   intents (``per_intent_correction``), at level ``alpha``: when no intent really changed, the
   chance that any of them fails is at most ``alpha``.
3. **golden**: utterances that must stay right. Any golden utterance the baseline got right
   and the candidate gets wrong fails, named in the report.
4. **new_intents**: the candidate's pooled accuracy on its new intents' utterances is at least
   ``min_new_accuracy``.
5. **confusions**: where newly broken old-intent utterances went (old intent -> new intent is
   the usual cause of a regression). Reported, never failing.

The statistics come from the `intent_regression` evaluate module shipped in
``intent_ci/metrics/``. This module holds the rules only, as pure functions of paired
predictions: the thresholds are `intent_ci.config.GateConfig`, the check that loads both
releases and scores them is `intent_ci.check.run_check`, and the report files (``report.json``,
``report.md``, ``report.png``) are written by `intent_ci.gate_report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from intent_ci.config import GateConfig
from intent_ci.data import GoldenExample
from intent_ci.evaluation import intent_regression_metric


@dataclass
class RuleResult:
    """The outcome of one rule: ``pass``, ``fail``, ``info`` (never fails) or ``skipped``."""

    name: str
    status: str
    summary: str
    intents: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def _points(fraction: float | None) -> float | None:
    return None if fraction is None else 100.0 * fraction


def format_p(value: float) -> str:
    """A p-value for people; exact tails below the smallest float come out as 0."""
    if value == 0:
        return "< 1e-300"
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def format_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def format_points(points: float) -> str:
    """Points with one decimal, never "-0.0"."""
    return f"{points + 0.0:.1f}" if round(points, 1) != 0 else "0.0"


def rule_old_accuracy(stats: dict[str, Any], cfg: GateConfig) -> RuleResult:
    """Old-intent accuracy overall: fail when drop > max_drop and McNemar p <= alpha."""
    old = stats["old"]
    drop = 100.0 * old["drop"]
    low, high = 100.0 * old["ci_low"], 100.0 * old["ci_high"]
    large = drop > cfg.max_drop
    significant = old["p_value"] <= cfg.alpha
    failed = large and significant
    summary = (
        f"old intents {100 * old['baseline_accuracy']:.1f}% -> {100 * old['candidate_accuracy']:.1f}% "
        f"on {old['n']} utterances: drop {format_points(drop)} points "
        f"({100 * stats['confidence']:.0f}% CI {format_points(low)} to {format_points(high)}), "
        f"{old['broken']} broken / {old['fixed']} fixed, McNemar p = {format_p(old['p_value'])}"
    )
    if failed:
        summary += f"; larger than {cfg.max_drop:g} points and significant at {cfg.alpha:g}"
    elif large:
        summary += f"; larger than {cfg.max_drop:g} points but not significant at {cfg.alpha:g}"
    return RuleResult(
        "old_accuracy",
        "fail" if failed else "pass",
        summary,
        details={
            "n": old["n"],
            "baseline_accuracy": old["baseline_accuracy"],
            "candidate_accuracy": old["candidate_accuracy"],
            "drop_points": drop,
            "ci_points": [low, high],
            "confidence": stats["confidence"],
            "broken": old["broken"],
            "fixed": old["fixed"],
            "p_value": old["p_value"],
            "max_drop": cfg.max_drop,
            "alpha": cfg.alpha,
            "drop_larger_than_max": large,
            "significant": significant,
        },
    )


def per_intent_rows(stats: dict[str, Any], cfg: GateConfig) -> list[dict[str, Any]]:
    """One row per old intent, worst drop first, with whether it fails the per-intent rule."""
    rows = []
    for intent, row in stats["per_intent"].items():
        drop = 100.0 * row["drop"]
        large = drop > cfg.per_intent_max_drop
        significant = row["p_adjusted"] <= cfg.alpha
        rows.append(
            {
                "intent": intent,
                "n": row["n"],
                "baseline_accuracy": row["baseline_accuracy"],
                "candidate_accuracy": row["candidate_accuracy"],
                "drop_points": drop,
                "ci_points": [_points(row["ci_low"]), _points(row["ci_high"])],
                "broken": row["broken"],
                "fixed": row["fixed"],
                "p_value": row["p_value"],
                "p_adjusted": row["p_adjusted"],
                "fails": large and significant,
            }
        )
    return sorted(rows, key=lambda r: (-r["drop_points"], r["p_adjusted"], r["intent"]))


def rule_per_intent(rows: list[dict[str, Any]], cfg: GateConfig) -> RuleResult:
    """Per old intent: fail when drop > per_intent_max_drop and the adjusted p-value <= alpha."""
    failing = [r for r in rows if r["fails"]]
    if failing:
        summary = f"{len(failing)} of {len(rows)} old intents dropped significantly: " + ", ".join(
            f"{r['intent']} (drop {format_points(r['drop_points'])} points, p = {format_p(r['p_adjusted'])})"
            for r in failing
        )
    else:
        worst = rows[0] if rows else None
        summary = (
            f"no old intent dropped by more than {cfg.per_intent_max_drop:g} points significantly"
        )
        if worst is not None and worst["drop_points"] > 0:
            summary += (
                f" (largest drop: {worst['intent']} {format_points(worst['drop_points'])} points, "
                f"p = {format_p(worst['p_adjusted'])})"
            )
    correction = "Holm-adjusted " if cfg.per_intent_correction == "holm" else ""
    return RuleResult(
        "per_intent",
        "fail" if failing else "pass",
        summary,
        intents=[r["intent"] for r in failing],
        details={
            "per_intent_max_drop": cfg.per_intent_max_drop,
            "alpha": cfg.alpha,
            "correction": cfg.per_intent_correction,
            "test": f"exact one-sided McNemar per intent, {correction}p-values",
        },
    )


def rule_golden(rows: list[dict[str, Any]] | None) -> RuleResult:
    """Fail on any golden utterance the baseline got right and the candidate gets wrong."""
    if rows is None:
        return RuleResult("golden", "skipped", "no golden file given (--golden)")
    broken = [r for r in rows if r["status"] == "broken"]
    wrong = [r for r in rows if r["status"] in ("still_wrong", "new_wrong")]
    kept = sum(r["status"] == "ok" for r in rows)
    if broken:
        summary = f"{len(broken)} of {len(rows)} golden utterances broken: " + "; ".join(
            f"{r['text']!r} ({r['intent']} -> {r['candidate']})" for r in broken
        )
    else:
        summary = f"all {kept} golden utterances the baseline got right are still right"
    if wrong:
        summary += f"; {len(wrong)} wrong in the candidate but not counted (see the table)"
    return RuleResult(
        "golden",
        "fail" if broken else "pass",
        summary,
        intents=sorted({r["intent"] for r in broken}),
        details={"n": len(rows), "broken": len(broken), "not_counted": len(wrong)},
    )


def rule_new_intents(stats: dict[str, Any], new_intents: list[str], cfg: GateConfig) -> RuleResult:
    """The candidate's pooled accuracy on its new intents must be at least min_new_accuracy."""
    new = stats["new"]
    untested = [i for i in new_intents if i not in new["per_intent"]]
    note = f"; no test utterances for {', '.join(untested)}" if untested else ""
    if not new["n"]:
        summary = (
            f"no test utterances for the new intents ({', '.join(untested)})"
            if untested
            else "the candidate adds no intents"
        )
        return RuleResult("new_intents", "skipped", summary, intents=untested)
    failed = new["accuracy"] < cfg.min_new_accuracy
    low = [i for i, row in new["per_intent"].items() if row["accuracy"] < cfg.min_new_accuracy]
    summary = (
        f"new intents {100 * new['accuracy']:.1f}% on {new['n']} utterances "
        f"({100 * stats['confidence']:.0f}% CI {100 * new['ci_low']:.1f}% to {100 * new['ci_high']:.1f}%), "
        f"{'below' if failed else 'at least'} {100 * cfg.min_new_accuracy:g}%"
    )
    if low:
        summary += f"; below {100 * cfg.min_new_accuracy:g}% on their own: {', '.join(low)}"
    return RuleResult(
        "new_intents",
        "fail" if failed else "pass",
        summary + note,
        intents=low if failed else [],
        details={
            "n": new["n"],
            "accuracy": new["accuracy"],
            "ci": [new["ci_low"], new["ci_high"]],
            "min_new_accuracy": cfg.min_new_accuracy,
            "untested": untested,
        },
    )


def rule_confusions(stats: dict[str, Any]) -> RuleResult:
    """Where newly broken old-intent utterances went; informational."""
    broken = stats["old"]["broken"]
    pairs = stats["confusions"]
    if not broken:
        return RuleResult("confusions", "info", "no old-intent utterance newly misclassified")
    top = ", ".join(
        f"{c['true']} -> {c['predicted']}{' (new)' if c['to_new_intent'] else ''} x{c['count']}"
        for c in pairs[:3]
    )
    return RuleResult(
        "confusions",
        "info",
        f"{stats['broken_to_new_intents']} of {broken} newly broken old-intent utterances went to "
        f"new intents; top: {top}",
        details={"broken": broken, "to_new_intents": stats["broken_to_new_intents"]},
    )


def golden_rows(
    golden: list[GoldenExample], candidate: list[str], baseline: list[str], old_intents: set[str]
) -> list[dict[str, Any]]:
    """Pair each golden utterance with both predictions; ``broken`` = baseline right, candidate wrong.

    Other statuses: ``ok``, ``fixed``, ``still_wrong`` (old intent the baseline got wrong too),
    ``new_ok`` / ``new_wrong`` (an intent the baseline cannot predict).
    """
    rows = []
    for g, cand, base in zip(golden, candidate, baseline, strict=True):
        if g.intent not in old_intents:
            status = "new_ok" if cand == g.intent else "new_wrong"
        elif base == g.intent:
            status = "ok" if cand == g.intent else "broken"
        else:
            status = "fixed" if cand == g.intent else "still_wrong"
        rows.append(
            {
                "text": g.text,
                "intent": g.intent,
                "line": g.line,
                "baseline": base,
                "candidate": cand,
                "status": status,
            }
        )
    return rows


def judge(
    stats: dict[str, Any],
    cfg: GateConfig,
    *,
    new_intents: list[str] | None = None,
    golden: list[dict[str, Any]] | None = None,
) -> tuple[str, list[RuleResult], list[dict[str, Any]]]:
    """Apply the five rules to the paired statistics of the `intent_regression` metric.

    Returns:
        ``(verdict, rules, per_intent_rows)``; verdict is ``"fail"`` when any rule fails.
    """
    rows = per_intent_rows(stats, cfg)
    if new_intents is None:
        new_intents = sorted(stats["new"]["per_intent"])
    rules = [
        rule_old_accuracy(stats, cfg),
        rule_per_intent(rows, cfg),
        rule_golden(golden),
        rule_new_intents(stats, new_intents, cfg),
        rule_confusions(stats),
    ]
    verdict = "fail" if any(r.status == "fail" for r in rules) else "pass"
    return verdict, rules, rows


def paired_statistics(
    predictions: list[str],
    baseline_predictions: list[str],
    references: list[str],
    old_intents: list[str],
    cfg: GateConfig,
) -> dict[str, Any]:
    """The `intent_regression` metric on paired predictions, with the gate's alpha and correction."""
    return intent_regression_metric().compute(
        predictions=predictions,
        baseline_predictions=baseline_predictions,
        references=references,
        old_intents=old_intents,
        alpha=cfg.alpha,
        correction=cfg.per_intent_correction,
        top_confusions=cfg.top_confusions,
    )
