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
from intent_ci.data import INTENT, TEXT, check_known_intents, read_examples, read_golden
from intent_ci.errors import IntentCIError
from intent_ci.gate import golden_rows, judge, paired_statistics
from intent_ci.gate_report import REPORT_FILES, write_report
from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier, load_release

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


def resolve_pair(registry: Registry, candidate: str, baseline: str | None) -> tuple[str, str]:
    """The candidate's and the baseline's release names; the baseline defaults to the parent.

    Raises:
        IntentCIError: for an unknown release, a base release without a baseline, the same
            release twice, or a baseline with intents the candidate does not predict.
    """
    cand = registry.resolve(candidate)
    if baseline is None:
        parent = registry.manifest(cand).get("parent")
        if not parent:
            raise IntentCIError(
                f"release {cand} is a base release (no parent); pass --baseline to compare it "
                "with another release"
            )
        baseline = parent
    base = registry.resolve(baseline)
    if base == cand:
        raise IntentCIError(
            f"candidate and baseline are both {cand}; compare two different releases"
        )
    cand_intents = set(registry.manifest(cand)["intents"])
    missing = [i for i in registry.manifest(base)["intents"] if i not in cand_intents]
    if missing:
        raise IntentCIError(
            f"candidate {cand} does not predict {len(missing)} intent(s) of baseline {base} "
            f"({', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}); the baseline must be an "
            "earlier release of the same lineage"
        )
    return cand, base


def run_check(
    registry: str | Path,
    candidate: str,
    data: str | Path,
    *,
    baseline: str | None = None,
    golden: str | Path | None = None,
    config: GateConfig | None = None,
    report_dir: str | Path | None = "reports",
) -> dict[str, Any]:
    """Score candidate and baseline on the same utterances, apply the rules, write the reports.

    Every input is checked before a model is loaded. Stale ``report.*`` files in `report_dir`
    are removed first, so a report on disk always belongs to the last run.

    Args:
        registry: the registry folder.
        candidate: release name or ``latest``.
        data: labelled test utterances (any format `intent-ci` reads).
        baseline: release to compare with; default: the candidate's parent.
        golden: YAML of ``utterance: intent`` pairs that must stay right.
        config: thresholds; default `GateConfig()`.
        report_dir: where report.json, report.md and report.png go; None writes nothing.

    Returns:
        The report (what report.json holds); ``report["verdict"]`` is ``"pass"`` or ``"fail"``.

    Raises:
        IntentCIError: for an unknown release, a base release without a baseline, a baseline
            with intents the candidate lacks, test data with unknown intents or without
            old-intent utterances, and bad golden files.
    """
    cfg = config or GateConfig()
    reg = Registry(registry)
    cand_name, base_name = resolve_pair(reg, candidate, baseline)
    cand_manifest = reg.manifest(cand_name)
    cand_intents = list(cand_manifest["intents"])
    base_intents = list(reg.manifest(base_name)["intents"])
    old_set = set(base_intents)
    new_intents = [i for i in cand_intents if i not in old_set]

    data_cfg = ReleaseConfig.from_dict(
        cand_manifest["config"], source=f"release {cand_name} manifest field `config`"
    ).data
    test = read_examples(data, data_cfg)
    check_known_intents(test, cand_intents, cand_name)
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
    logger.info(
        "scoring %s and %s on %d test and %d golden utterances",
        cand_name,
        base_name,
        len(texts),
        len(golden_examples),
    )
    predicted: dict[str, list[str]] = {}
    for name in (cand_name, base_name):
        classifier = IntentClassifier(load_release(reg, name))
        predicted[name] = [p.label for p in classifier.predict(inputs, batch_size=cfg.batch_size)]
        del classifier  # one model in memory at a time
    cand_pred, base_pred = predicted[cand_name], predicted[base_name]
    n = len(texts)
    stats = paired_statistics(cand_pred[:n], base_pred[:n], refs, base_intents, cfg)
    golden_results = (
        golden_rows(golden_examples, cand_pred[n:], base_pred[n:], old_set)
        if golden is not None
        else None
    )
    verdict, rules, rows = judge(stats, cfg, new_intents=new_intents, golden=golden_results)
    report = {
        "verdict": verdict,
        "candidate": cand_name,
        "baseline": base_name,
        "registry": str(registry),
        "data": str(data),
        "golden": str(golden) if golden is not None else None,
        "failed_rules": [r.name for r in rules if r.status == "fail"],
        "rules": [dataclasses.asdict(r) for r in rules],
        "old_intents": {
            "intents": base_intents,
            "without_test_data": [i for i in base_intents if i not in set(refs)],
            **{k: v for k, v in rules[0].details.items() if k not in ("max_drop", "alpha")},
        },
        "per_intent": rows,
        "new_intents": {
            "intents": new_intents,
            "n": stats["new"]["n"],
            "accuracy": stats["new"]["accuracy"],
            "ci": [stats["new"]["ci_low"], stats["new"]["ci_high"]],
            "per_intent": stats["new"]["per_intent"],
        },
        "golden_results": golden_results,
        "golden_failures": [r for r in golden_results or [] if r["status"] == "broken"],
        "confusions": stats["confusions"],
        "statistics": {
            "test": "exact one-sided McNemar (binomial on the discordant pairs, p = 1/2)",
            "interval": "Bonett-Price adjusted Wald interval for the paired drop, two-sided "
            f"{100 * stats['confidence']:.0f}% (its lower end is the one-sided "
            f"{100 * (1 - cfg.alpha):.0f}% bound)",
            "per_intent_correction": cfg.per_intent_correction,
            "rule": "old_accuracy fails when drop > max_drop and p <= alpha; per_intent fails "
            "when drop > per_intent_max_drop and the corrected p <= alpha",
        },
        "config": dataclasses.asdict(cfg),
    }
    if out_dir is not None:
        report["files"] = write_report(report, out_dir)
    return report
