"""``intent-ci check``: load the candidate and its baseline, score both, apply the gate.

The rules themselves are pure functions in `intent_ci.gate`; this module resolves the releases,
reads and checks the inputs, runs both models over the same utterances (one model in memory at a
time), and hands the paired predictions to the rules and the report to `intent_ci.gate_report`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from intent_ci.config import GateConfig, ReleaseConfig
from intent_ci.data import (
    INTENT,
    OOS_LABEL,
    TEXT,
    check_known_intents,
    read_examples,
    read_golden,
)
from intent_ci.errors import IntentCIError
from intent_ci.gate import (
    DECISION_RULES,
    golden_rows,
    judge,
    moved_rows,
    new_intent_rows,
    paired_statistics,
    rule_also_against,
    rule_drift,
    rule_out_of_scope,
    rule_retired,
)
from intent_ci.gate_report import REPORT_FILES, write_report
from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier, load_release, verify_release

logger = logging.getLogger(__name__)

EXIT_PASS, EXIT_REGRESSION = 0, 1


def _prepare_report_dir(report_dir: Path) -> None:
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        for name in REPORT_FILES:
            (report_dir / name).unlink(missing_ok=True)
    except OSError as err:
        raise IntentCIError(
            f"--report-dir {report_dir}: cannot write there ({err.strerror})"
        ) from None


def _known(intents: list[str]) -> str:
    return f"{len(intents)} intents: {', '.join(intents[:8])}{', …' if len(intents) > 8 else ''}"


PRODUCTION_ALIAS = "production"


def lineage(registry: Registry, release: str) -> list[str]:
    """`release`, its parent, the parent's parent, ... up to the line's base release (no parent)."""
    chain = [release]
    while parent := registry.manifest(chain[-1]).get("parent"):
        if parent in chain:  # a registry never holds a cycle; stop rather than loop
            break
        chain.append(parent)
    return chain


def retired_in_line(registry: Registry, release: str) -> list[str]:
    """Intents retired anywhere in `release`'s lineage that `release` does not predict."""
    known = set(registry.manifest(release)["intents"])
    retired: dict[str, None] = {}
    for name in lineage(registry, release):
        for intent in registry.manifest(name).get("retired_intents") or []:
            if intent not in known:
                retired[intent] = None
    return list(retired)


def comparable_intents(
    registry: Registry, candidate: str, baseline: str, retired: list[str], role: str = "baseline"
) -> list[str]:
    """`baseline`'s intents that the candidate is judged on: all of them, less retired ones.

    Raises:
        IntentCIError: when `baseline` is on another line (another base release), or the
            candidate lacks an intent of `baseline` that its line never retired.
    """
    cand_base, other_base = lineage(registry, candidate)[-1], lineage(registry, baseline)[-1]
    if cand_base != other_base:
        raise IntentCIError(
            f"{role} {baseline} is not on candidate {candidate}'s line (their base releases are "
            f"{other_base} and {cand_base}); the {role} must be an earlier release of the same "
            "lineage"
        )
    cand_intents = set(registry.manifest(candidate)["intents"])
    intents = registry.manifest(baseline)["intents"]
    missing = [i for i in intents if i not in cand_intents and i not in retired]
    if missing:
        raise IntentCIError(
            f"candidate {candidate} does not predict {len(missing)} intent(s) of {role} {baseline} "
            f"({', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}); the {role} must be an "
            "earlier release of the same lineage"
        )
    return [i for i in intents if i in cand_intents]


def resolve_pair(registry: Registry, candidate: str, baseline: str | None) -> tuple[str, str, str]:
    """The candidate's and the baseline's release names, and where the baseline came from.

    The baseline defaults to the registry's ``production`` alias when it is set (and is not
    the candidate itself), otherwise to the candidate's parent.

    Returns:
        ``(candidate, baseline, source)``, source one of ``--baseline``, ``production alias``,
        ``parent``.

    Raises:
        IntentCIError: for an unknown release, a base release without a baseline, the same
            release twice, or a baseline with intents the candidate does not predict (retired
            intents aside).
    """
    cand = registry.resolve(candidate)
    source = "--baseline"
    if baseline is None:
        production = registry.aliases().get(PRODUCTION_ALIAS)
        parent = registry.manifest(cand).get("parent")
        if production is not None and production != cand:
            # resolved by name: a dangling alias is then reported as ALIASES.json's `production`
            baseline, source = PRODUCTION_ALIAS, "production alias"
        elif parent:
            baseline, source = parent, "parent"
        else:
            raise IntentCIError(
                f"release {cand} is a base release (no parent); pass --baseline to compare it "
                "with another release"
            )
    base = registry.resolve(baseline)
    if base == cand:
        raise IntentCIError(
            f"candidate and baseline are both {cand}; compare two different releases"
        )
    role = "baseline" if source != "production alias" else "baseline (the production alias)"
    comparable_intents(registry, cand, base, retired_in_line(registry, cand), role=role)
    return cand, base, source


def run_check(
    registry: str | Path,
    candidate: str,
    data: str | Path,
    *,
    baseline: str | None = None,
    also_against: list[str] | tuple[str, ...] = (),
    drift_against: str | None = None,
    golden: str | Path | None = None,
    config: GateConfig | None = None,
    report_dir: str | Path | None = "reports",
) -> dict[str, Any]:
    """Score candidate and baselines on the same utterances, apply the rules, write the reports.

    Every input is checked before a model is loaded. Stale ``report.*`` files in `report_dir`
    are removed first, so a report on disk always belongs to the last run.

    Args:
        registry: the registry folder.
        candidate: release name, alias or ``latest``.
        data: labelled test utterances (any format `intent-ci` reads).
        baseline: release to compare with; default: the ``production`` alias when it is set,
            otherwise the candidate's parent.
        also_against: more releases to compare with (rules old_accuracy and per_intent).
        drift_against: the release the drift rule compares with; default: the line's base
            release (the root of the candidate's lineage).
        golden: YAML of ``utterance: intent`` pairs that must stay right.
        config: thresholds; default `GateConfig()`.
        report_dir: where report.json, report.md and report.png go; None writes nothing.

    Returns:
        The report (what report.json holds); ``report["verdict"]`` is ``"pass"`` or ``"fail"``.

    Raises:
        IntentCIError: for an unknown release, a base release without a baseline, a baseline
            with intents the candidate lacks (other than retired ones), test data with unknown
            intents or without old-intent utterances, and bad golden files.
    """
    cfg = config or GateConfig()
    reg = Registry(registry)
    cand_name, base_name, base_source = resolve_pair(reg, candidate, baseline)
    cand_manifest = reg.manifest(cand_name)
    cand_intents = list(cand_manifest["intents"])
    retired = retired_in_line(reg, cand_name)
    base_all = list(reg.manifest(base_name)["intents"])
    base_intents = comparable_intents(reg, cand_name, base_name, retired)
    old_set = set(base_intents)
    new_intents = [i for i in cand_intents if i not in old_set]

    extra: list[str] = []
    for ref in also_against:
        name = reg.resolve(ref)
        if name in (cand_name, base_name):
            raise IntentCIError(
                f"--also-against {ref}: {name} is the "
                f"{'candidate' if name == cand_name else 'baseline'} already; name another release"
            )
        comparable_intents(reg, cand_name, name, retired, role="--also-against release")
        if name not in extra:
            extra.append(name)
    line = lineage(reg, cand_name)
    drift_name = reg.resolve(drift_against) if drift_against is not None else line[-1]
    if drift_against is not None and drift_name == cand_name:
        raise IntentCIError(
            f"--drift-against {drift_against}: {drift_name} is the candidate already; name an "
            "earlier release of its line"
        )
    if drift_name != cand_name:
        comparable_intents(reg, cand_name, drift_name, retired, role="drift release")

    data_cfg = ReleaseConfig.from_dict(
        cand_manifest["config"], source=f"release {cand_name} manifest field `config`"
    ).data
    test = read_examples(data, data_cfg)
    check_known_intents(test, cand_intents + retired, cand_name)
    texts, refs = list(test.dataset[TEXT]), list(test.dataset[INTENT])
    if not any(r in old_set for r in refs):
        raise IntentCIError(
            f"{data}: none of its {len(refs)} utterances belongs to an intent of baseline "
            f"{base_name} ({_known(base_intents)}); the gate compares old intents, so the test data "
            "needs their utterances"
        )
    golden_examples = read_golden(golden) if golden is not None else []
    for g in golden_examples:
        if g.intent not in cand_intents:
            raise IntentCIError(
                f"{golden}:{g.line}: intent {g.intent!r} is not in release {cand_name} "
                f"(it knows {_known(cand_intents)})"
            )
    out_dir = Path(report_dir) if report_dir is not None else None
    if out_dir is not None:
        _prepare_report_dir(out_dir)

    inputs = texts + [g.text for g in golden_examples]
    releases = list(dict.fromkeys([cand_name, base_name, *extra, drift_name]))
    for name in releases:  # a damaged release is refused before any work starts (and is logged)
        verify_release(reg, name)
    logger.info(
        "scoring %s on %d test and %d golden utterances",
        ", ".join(releases),
        len(texts),
        len(golden_examples),
    )
    predicted: dict[str, list[str]] = {}
    accepted: dict[str, list[bool]] = {}
    for name in releases:
        classifier = IntentClassifier(load_release(reg, name))
        out = classifier.predict(inputs, batch_size=cfg.batch_size, reject=cfg.reject)
        # What a user gets: a rejected utterance is answered with the fallback, never an intent.
        predicted[name] = [p.intent if p.in_scope else OOS_LABEL for p in out]
        accepted[name] = [p.in_scope for p in out]
        del classifier  # one model in memory at a time
    n = len(texts)
    # Utterances of retired intents are judged by nobody: the candidate cannot predict them.
    # Out-of-scope rows have a rule of their own.
    keep = [i for i, ref in enumerate(refs) if ref not in retired and ref != OOS_LABEL]
    kept_refs = [refs[i] for i in keep]

    def paired(name: str, old: list[str]) -> dict[str, Any]:
        cand, other = predicted[cand_name], predicted[name]
        return paired_statistics(
            [cand[i] for i in keep], [other[i] for i in keep], kept_refs, old, cfg
        )

    cand_pred, base_pred = predicted[cand_name], predicted[base_name]
    stats = paired(base_name, base_intents)
    golden_results = (
        golden_rows(golden_examples, cand_pred[n:], base_pred[n:], old_set)
        if golden is not None
        else None
    )
    if drift_name == cand_name:
        drift = rule_drift(
            None, cfg, drift_name, skipped=f"the candidate {cand_name} is its line's base release"
        )
    elif drift_name == base_name and line[1:2] == [drift_name]:
        # One release from the drift release, which is also the baseline: the line's cost is this
        # release's cost, and old_accuracy (under `decision`) judges it.
        drift = rule_drift(
            None,
            cfg,
            drift_name,
            skipped=f"{cand_name} is one release from {drift_name}, the baseline: old_accuracy "
            "judges that release's cost",
        )
    else:
        drift_intents = comparable_intents(reg, cand_name, drift_name, retired)
        drift = rule_drift(paired(drift_name, drift_intents), cfg, drift_name)
    drift.details["line"] = line
    also = [
        rule_also_against(
            paired(name, comparable_intents(reg, cand_name, name, retired)), cfg, name
        )
        for name in extra
    ]
    oos_rows = [i for i, ref in enumerate(refs) if ref == OOS_LABEL]
    out_of_scope = (
        rule_out_of_scope(
            [accepted[cand_name][i] for i in oos_rows],
            [accepted[base_name][i] for i in oos_rows],
            cfg,
            base_name,
        )
        if oos_rows
        else None
    )
    rejection = {
        name: {
            "in_scope_n": len(keep),
            "in_scope_rejected": sum(not accepted[name][i] for i in keep),
            "oos_n": len(oos_rows),
            "oos_accepted": sum(accepted[name][i] for i in oos_rows),
        }
        for name in (cand_name, base_name)
    }
    gone = [i for i in retired if i in base_all or i in refs]
    moved = moved_rows(refs[:n], cand_pred[:n], base_pred[:n], gone)
    verdict, rules, rows = judge(
        stats,
        cfg,
        new_intents=new_intents,
        golden=golden_results,
        baseline=base_name,
        drift=drift,
        also_against=also,
        retired=rule_retired(gone, moved) if gone else None,
        out_of_scope=out_of_scope,
    )
    first = rules[0].details
    report = {
        "verdict": verdict,
        "candidate": cand_name,
        "baseline": base_name,
        "baseline_source": base_source,
        "registry": str(registry),
        "data": str(data),
        "golden": str(golden) if golden is not None else None,
        "failed_rules": [r.name for r in rules if r.status == "fail"],
        "rules": [dataclasses.asdict(r) for r in rules],
        "old_intents": {
            "intents": base_intents,
            "without_test_data": [i for i in base_intents if i not in set(refs)],
            **{k: v for k, v in first.items() if k not in ("max_drop", "alpha", "decision")},
        },
        "per_intent": rows,
        "new_intents": {
            "intents": new_intents,
            "n": stats["new"]["n"],
            "accuracy": stats["new"]["accuracy"],
            "ci": [stats["new"]["ci_low"], stats["new"]["ci_high"]],
            "per_intent": stats["new"]["per_intent"],
            "rows": new_intent_rows(stats, new_intents, cfg),
        },
        "drift": {"against": drift_name, "line": line, **drift.details},
        "also_against": [{"baseline": r.against, **r.details} for r in also],
        "retired": {"intents": gone, "moved": moved},
        "rejection": rejection,
        "golden_results": golden_results,
        "golden_failures": [r for r in golden_results or [] if r["status"] == "broken"],
        "confusions": stats["confusions"],
        "statistics": {
            "test": "exact one-sided McNemar (binomial on the discordant pairs, p = 1/2)",
            "interval": "Bonett-Price adjusted Wald interval for the paired drop, two-sided "
            f"{100 * stats['confidence']:.0f}% (its ends are the one-sided "
            f"{100 * (1 - cfg.alpha):.0f}% bounds)",
            "per_intent_correction": cfg.per_intent_correction,
            "rule": (
                f"old_accuracy and also_against: {DECISION_RULES[cfg.decision].format('max_drop')}"
                f"; drift: {DECISION_RULES[cfg.drift_decision].format('max_drift')}"
            )
            + "; per_intent fails when drop > per_intent_max_drop and the corrected p <= alpha",
        },
        "config": dataclasses.asdict(cfg),
    }
    if out_dir is not None:
        report["files"] = write_report(report, out_dir)
    return report
