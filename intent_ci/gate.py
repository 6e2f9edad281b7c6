"""The regression gate: may a candidate release ship? (`intent-ci check`)

The candidate and a baseline release classify the same test utterances, and their predictions
are paired example by example. The baseline (default: the registry's ``production`` alias,
otherwise the candidate's parent) has the *old* intents; the candidate's other intents are
*new*. The rules, all set in `GateConfig`:

1. **old_accuracy**: old-intent accuracy overall may drop by ``max_drop`` points. Under the
   default ``decision: significant`` the rule fails when the drop is larger than ``max_drop``
   *and* an exact one-sided McNemar test (on the discordant pairs) finds the candidate worse at
   level ``alpha``: when nothing really changed it fails with probability at most ``alpha``.
   Under ``decision: non_inferiority`` it passes only when the one-sided ``1 - alpha`` upper
   bound of the drop (the upper end of the ``1 - 2 alpha`` Bonett-Price interval) is below
   ``max_drop``. scripts/gate_oc.py gives both rules' pass probability against the true drop.
2. **per_intent**: an old intent fails when its drop is larger than ``per_intent_max_drop``
   points *and* significant on its own utterances: exact McNemar, Holm-adjusted over all old
   intents (``per_intent_correction``), at level ``alpha``.
3. **golden**: utterances that must stay right. Any golden utterance the baseline got right
   and the candidate gets wrong fails, named in the report.
4. **new_intents**: every new intent with at least ``min_new_intent_utterances`` test
   utterances must reach ``min_new_intent_accuracy`` on its own, and the pooled accuracy over
   all new intents ``min_new_accuracy``. An intent with fewer utterances is named as not judged.
5. **confusions**: where newly broken old-intent utterances went. Reported, never failing.
6. **drift**: what the whole release line has cost, against the line's base release (or another
   given release), on that release's intents, with its own budget ``max_drift`` and its own
   ``drift_decision`` (default ``upper_bound``: fail when the drop is significant and its upper
   bound is not below ``max_drift``). Each release can pass against its parent while the line
   drifts.
7. **also_against**: old_accuracy and per_intent against each extra baseline asked for.
8. **retired**: for a release made by ``retire``, the retired intents are not old intents; the
   test utterances labelled with them are reported with where the candidate sends them now.
9. **out_of_scope**: when the test data holds rows labelled ``oos``, the share of them the
   candidate accepts (answers with an intent) may exceed the baseline's by
   ``max_oos_accept_increase`` points, decided like old_accuracy on the paired accept/reject
   decisions. With ``reject`` (the default) an in-scope utterance a release rejects is an error
   in every accuracy rule.

The statistics come from the `intent_regression` evaluate module shipped in
``intent_ci/metrics/``. This module holds the rules only, as pure functions of paired
predictions: the thresholds are `intent_ci.config.GateConfig`, the check that loads both
releases and scores them is `intent_ci.check.run_check`, and the report files (``report.json``,
``report.md``, ``report.png``) are written by `intent_ci.gate_report`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from intent_ci.config import GateConfig
from intent_ci.data import OOS_LABEL, GoldenExample
from intent_ci.evaluation import intent_regression_metric
from intent_ci.metrics.intent_regression.intent_regression import (
    mcnemar_one_sided,
    paired_drop_interval,
)


@dataclass
class RuleResult:
    """The outcome of one rule: ``pass``, ``fail``, ``info`` (never fails) or ``skipped``."""

    name: str
    status: str
    summary: str
    intents: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    against: str | None = None  # the release this rule compares the candidate with


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


# Each decision in words; ``{}`` is the budget's name or value.
DECISION_RULES = {
    "significant": "fail when the drop exceeds {} points and an exact one-sided McNemar test is "
    "significant at alpha",
    "upper_bound": "fail when an exact one-sided McNemar test is significant at alpha and the "
    "one-sided 1 - alpha upper bound of the drop is not below {} points",
    "non_inferiority": "pass only when the one-sided 1 - alpha upper bound of the drop is below "
    "{} points",
}


def drop_decision(
    drop_points: float,
    ci_high_points: float,
    p_value: float,
    budget: float,
    cfg: GateConfig,
    decision: str | None = None,
) -> tuple[bool, str]:
    """Whether a paired drop fails its budget, and the reason in words.

    ``significant``: fail when ``drop > budget`` and McNemar ``p <= alpha``.
    ``upper_bound``: fail when McNemar ``p <= alpha`` and the one-sided ``1 - alpha`` upper bound
    of the drop (``ci_high_points``) is not below ``budget``.
    ``non_inferiority``: pass only when that upper bound is below ``budget``.

    Args:
        decision: one of the two; default ``cfg.decision`` (the drift rule passes
            ``cfg.drift_decision``).
    """
    decision = decision or cfg.decision
    bound = f"its one-sided {100 * (1 - cfg.alpha):g}% upper bound {format_points(ci_high_points)}"
    if decision == "non_inferiority":
        if ci_high_points < budget:
            return False, f"{bound} is below {budget:g} points"
        return True, f"{bound} is not below {budget:g} points (non-inferiority not shown)"
    if decision == "upper_bound":
        significant = p_value <= cfg.alpha
        if ci_high_points < budget:
            return False, ""
        if significant:
            return True, (
                f"significant at {cfg.alpha:g} and {bound} is not below {budget:g} points"
            )
        return False, f"{bound} is not below {budget:g} points but the drop is not significant"
    large, significant = drop_points > budget, p_value <= cfg.alpha
    if large and significant:
        return True, f"larger than {budget:g} points and significant at {cfg.alpha:g}"
    if large:
        return False, f"larger than {budget:g} points but not significant at {cfg.alpha:g}"
    return False, ""


def _drop_rule(
    name: str,
    old: dict[str, Any],
    confidence: float,
    budget: float,
    budget_field: str,
    cfg: GateConfig,
    *,
    against: str | None,
    what: str = "old intents",
    decision: str | None = None,
) -> RuleResult:
    decision = decision or cfg.decision
    drop = 100.0 * old["drop"]
    low, high = 100.0 * old["ci_low"], 100.0 * old["ci_high"]
    failed, why = drop_decision(drop, high, old["p_value"], budget, cfg, decision)
    summary = (
        f"{what} {100 * old['baseline_accuracy']:.1f}% -> {100 * old['candidate_accuracy']:.1f}% "
        f"on {old['n']} utterances: drop {format_points(drop)} points "
        f"({100 * confidence:.0f}% CI {format_points(low)} to {format_points(high)}), "
        f"{old['broken']} broken / {old['fixed']} fixed, McNemar p = {format_p(old['p_value'])}"
    )
    if why:
        summary += f"; {why}"
    return RuleResult(
        name,
        "fail" if failed else "pass",
        summary,
        against=against,
        details={
            "n": old["n"],
            "baseline_accuracy": old["baseline_accuracy"],
            "candidate_accuracy": old["candidate_accuracy"],
            "drop_points": drop,
            "ci_points": [low, high],
            "confidence": confidence,
            "broken": old["broken"],
            "fixed": old["fixed"],
            "p_value": old["p_value"],
            budget_field: budget,
            "alpha": cfg.alpha,
            "decision": decision,
            "drop_larger_than_max": drop > budget,
            "significant": old["p_value"] <= cfg.alpha,
        },
    )


def rule_old_accuracy(
    stats: dict[str, Any], cfg: GateConfig, against: str | None = None
) -> RuleResult:
    """Old-intent accuracy overall against the baseline, within ``max_drop`` (see `drop_decision`)."""
    return _drop_rule(
        "old_accuracy",
        stats["old"],
        stats["confidence"],
        cfg.max_drop,
        "max_drop",
        cfg,
        against=against,
    )


def rule_drift(
    stats: dict[str, Any] | None, cfg: GateConfig, against: str, skipped: str | None = None
) -> RuleResult:
    """Accuracy on `against`'s intents (the line's base by default), within ``max_drift``,
    decided by ``drift_decision``.

    Args:
        stats: paired statistics of the candidate against `against`, with `against`'s intents
            (less retired ones) as the old intents; None when the rule cannot run.
        skipped: why the rule did not run (when `stats` is None).
    """
    if stats is None or not stats["old"]["n"]:
        return RuleResult(
            "drift",
            "skipped",
            skipped or f"no test utterances of {against}'s intents",
            against=against,
        )
    return _drop_rule(
        "drift",
        stats["old"],
        stats["confidence"],
        cfg.max_drift,
        "max_drift",
        cfg,
        against=against,
        what=f"{against}'s intents",
        decision=cfg.drift_decision,
    )


def rule_also_against(stats: dict[str, Any], cfg: GateConfig, against: str) -> RuleResult:
    """old_accuracy and per_intent against one extra baseline (``--also-against``)."""
    overall = _drop_rule(
        "also_against",
        stats["old"],
        stats["confidence"],
        cfg.max_drop,
        "max_drop",
        cfg,
        against=against,
    )
    rows = per_intent_rows(stats, cfg)
    failing = [r["intent"] for r in rows if r["fails"]]
    if failing:
        overall.status = "fail"
        overall.summary += (
            f"; {len(failing)} old intents dropped significantly: {', '.join(failing)}"
        )
    overall.intents = failing
    overall.details["failing_intents"] = failing
    return overall


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


def new_intent_rows(
    stats: dict[str, Any], new_intents: list[str], cfg: GateConfig
) -> list[dict[str, Any]]:
    """One row per new intent, worst first: ``pass``, ``fail`` (below its floor), ``too_few``
    (fewer than ``min_new_intent_utterances`` test utterances: not judged) or ``untested``."""
    per_intent = stats["new"]["per_intent"]
    rows = []
    for intent in dict.fromkeys([*new_intents, *per_intent]):
        row = per_intent.get(intent)
        if row is None:
            rows.append({"intent": intent, "n": 0, "accuracy": None, "status": "untested"})
            continue
        if row["n"] < cfg.min_new_intent_utterances:
            status = "too_few"
        else:
            status = "fail" if row["accuracy"] < cfg.min_new_intent_accuracy else "pass"
        rows.append(
            {"intent": intent, "n": row["n"], "accuracy": row["accuracy"], "status": status}
        )
    order = {"fail": 0, "too_few": 1, "pass": 2, "untested": 3}
    return sorted(rows, key=lambda r: (order[r["status"]], r["accuracy"] or 0.0, r["intent"]))


def rule_new_intents(stats: dict[str, Any], new_intents: list[str], cfg: GateConfig) -> RuleResult:
    """Each new intent reaches ``min_new_intent_accuracy`` on its own (when it has at least
    ``min_new_intent_utterances`` test utterances) and all of them ``min_new_accuracy`` pooled."""
    new = stats["new"]
    rows = new_intent_rows(stats, new_intents, cfg)
    untested = [r["intent"] for r in rows if r["status"] == "untested"]
    too_few = [r for r in rows if r["status"] == "too_few"]
    below_floor = [r["intent"] for r in rows if r["status"] == "fail"]
    notes = []
    if too_few:
        notes.append(
            f"not judged on their own, fewer than {cfg.min_new_intent_utterances} test utterances: "
            + ", ".join(f"{r['intent']} ({r['n']})" for r in too_few)
        )
    if untested:
        notes.append(f"no test utterances for {', '.join(untested)}")
    if not new["n"]:
        summary = (
            f"no test utterances for the new intents ({', '.join(untested)})"
            if untested
            else "the candidate adds no intents"
        )
        return RuleResult("new_intents", "skipped", summary, intents=untested)
    pooled_failed = new["accuracy"] < cfg.min_new_accuracy
    low = [i for i, row in new["per_intent"].items() if row["accuracy"] < cfg.min_new_accuracy]
    failed = pooled_failed or bool(below_floor)
    summary = (
        f"new intents {100 * new['accuracy']:.1f}% pooled on {new['n']} utterances "
        f"({100 * stats['confidence']:.0f}% CI {100 * new['ci_low']:.1f}% to {100 * new['ci_high']:.1f}%), "
        f"{'below' if pooled_failed else 'at least'} {100 * cfg.min_new_accuracy:g}%"
    )
    if below_floor:
        summary += (
            f"; below the per-intent floor of {100 * cfg.min_new_intent_accuracy:g}%: "
            + ", ".join(
                f"{r['intent']} ({format_pct(r['accuracy'])} of {r['n']})"
                for r in rows
                if r["status"] == "fail"
            )
        )
    elif low:
        summary += f"; below {100 * cfg.min_new_accuracy:g}% on their own: {', '.join(low)}"
    judged = sum(r["status"] in ("pass", "fail") for r in rows)
    if not below_floor and judged:
        summary += (
            f"; all {judged} judged intents at least {100 * cfg.min_new_intent_accuracy:g}% each"
        )
    failing = sorted(set(below_floor) | (set(low) if pooled_failed else set()))
    return RuleResult(
        "new_intents",
        "fail" if failed else "pass",
        "; ".join([summary, *notes]),
        intents=failing,
        details={
            "n": new["n"],
            "accuracy": new["accuracy"],
            "ci": [new["ci_low"], new["ci_high"]],
            "min_new_accuracy": cfg.min_new_accuracy,
            "min_new_intent_accuracy": cfg.min_new_intent_accuracy,
            "min_new_intent_utterances": cfg.min_new_intent_utterances,
            "below_floor": below_floor,
            "too_few": [r["intent"] for r in too_few],
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
    rejected = stats["broken_rejected"]
    return RuleResult(
        "confusions",
        "info",
        f"{stats['broken_to_new_intents']} of {broken} newly broken old-intent utterances went to "
        f"new intents{f', {rejected} rejected as out of scope' if rejected else ''}; top: {top}",
        details={
            "broken": broken,
            "to_new_intents": stats["broken_to_new_intents"],
            "rejected": rejected,
        },
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


def moved_rows(
    references: list[str],
    candidate: list[str],
    baseline: list[str],
    retired: list[str],
) -> list[dict[str, Any]]:
    """Where the test utterances of retired intents go now: per retired intent, how many there
    are, how many the baseline still got right, and the candidate's predictions by count."""
    rows = []
    for intent in retired:
        idx = [i for i, ref in enumerate(references) if ref == intent]
        if not idx:
            continue
        moved = Counter(candidate[i] for i in idx)
        rows.append(
            {
                "intent": intent,
                "n": len(idx),
                "baseline_correct": sum(baseline[i] == intent for i in idx),
                "to": dict(moved.most_common()),
            }
        )
    return rows


def rule_retired(retired: list[str], moved: list[dict[str, Any]]) -> RuleResult:
    """Informational: retired intents are left out; their test utterances are reported."""
    if not retired:
        return RuleResult("retired", "skipped", "the candidate retires no intent")
    if not moved:
        return RuleResult(
            "retired",
            "info",
            f"retired {', '.join(retired)}: not old intents; no test utterances labelled with them",
            intents=list(retired),
        )
    parts = [
        f"{m['intent']} ({m['n']}) -> "
        + ", ".join(f"{to} x{k}" for to, k in list(m["to"].items())[:3])
        for m in moved
    ]
    return RuleResult(
        "retired",
        "info",
        f"retired {', '.join(retired)}: not old intents; their "
        f"{sum(m['n'] for m in moved)} test utterances left out of the rules and now go to: "
        + "; ".join(parts),
        intents=list(retired),
        details={"moved": moved},
    )


def rule_out_of_scope(
    candidate_accepts: list[bool],
    baseline_accepts: list[bool],
    cfg: GateConfig,
    against: str | None = None,
) -> RuleResult:
    """Out-of-scope test rows: the candidate may accept at most ``max_oos_accept_increase``
    points more of them than the baseline (see `drop_decision`), paired row by row.

    Args:
        candidate_accepts, baseline_accepts: per ``oos`` row, whether the release answered it
            with an intent (``in_scope``) rather than rejecting it.
    """
    n = len(candidate_accepts)
    newly_accepted = sum(
        c and not b for c, b in zip(candidate_accepts, baseline_accepts, strict=True)
    )
    newly_rejected = sum(
        b and not c for c, b in zip(candidate_accepts, baseline_accepts, strict=True)
    )
    base_rate, cand_rate = sum(baseline_accepts) / n, sum(candidate_accepts) / n
    increase = 100.0 * (newly_accepted - newly_rejected) / n
    confidence = 1 - 2 * cfg.alpha
    low, high = (
        100.0 * x for x in paired_drop_interval(newly_accepted, newly_rejected, n, confidence)
    )
    p_value = mcnemar_one_sided(newly_accepted, newly_rejected)
    failed, why = drop_decision(increase, high, p_value, cfg.max_oos_accept_increase, cfg)
    summary = (
        f"out-of-scope rows accepted {100 * base_rate:.1f}% -> {100 * cand_rate:.1f}% of {n}: "
        f"{'+' if increase > 0 else ''}{format_points(increase)} points "
        f"({100 * confidence:.0f}% CI {format_points(low)} to {format_points(high)}), "
        f"{newly_accepted} newly accepted / {newly_rejected} newly rejected, "
        f"McNemar p = {format_p(p_value)}"
    )
    if why:
        summary += f"; {why}"
    return RuleResult(
        "out_of_scope",
        "fail" if failed else "pass",
        summary,
        against=against,
        details={
            "n": n,
            "baseline_accept_rate": base_rate,
            "candidate_accept_rate": cand_rate,
            "increase_points": increase,
            "ci_points": [low, high],
            "newly_accepted": newly_accepted,
            "newly_rejected": newly_rejected,
            "p_value": p_value,
            "max_oos_accept_increase": cfg.max_oos_accept_increase,
            "decision": cfg.decision,
        },
    )


def judge(
    stats: dict[str, Any],
    cfg: GateConfig,
    *,
    new_intents: list[str] | None = None,
    golden: list[dict[str, Any]] | None = None,
    baseline: str | None = None,
    drift: RuleResult | None = None,
    also_against: list[RuleResult] | None = None,
    retired: RuleResult | None = None,
    out_of_scope: RuleResult | None = None,
) -> tuple[str, list[RuleResult], list[dict[str, Any]]]:
    """Apply the rules to the paired statistics of the `intent_regression` metric.

    Args:
        stats: the candidate against the baseline (`paired_statistics`).
        new_intents: the candidate's intents that the baseline lacks; default: the reference
            intents outside the old intents.
        golden: `golden_rows`, or None when no golden file was given.
        baseline: the baseline's name, recorded on the rules that compare with it.
        drift, also_against, retired, out_of_scope: rules computed outside the paired
            statistics (`rule_drift`, `rule_also_against`, `rule_retired`,
            `rule_out_of_scope`), added to the verdict.

    Returns:
        ``(verdict, rules, per_intent_rows)``; verdict is ``"fail"`` when any rule fails.
    """
    rows = per_intent_rows(stats, cfg)
    if new_intents is None:
        new_intents = sorted(stats["new"]["per_intent"])
    rules = [
        rule_old_accuracy(stats, cfg, baseline),
        rule_per_intent(rows, cfg),
        rule_golden(golden),
        rule_new_intents(stats, new_intents, cfg),
        rule_confusions(stats),
    ]
    rules[1].against = rules[2].against = rules[4].against = baseline
    rules += [r for r in (drift, *(also_against or []), retired, out_of_scope) if r is not None]
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
        rejected_label=OOS_LABEL,
    )
