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
``intent_ci/metrics/``. Reports land in ``--report-dir``: ``report.json``, ``report.md`` (for a
pull request or ``$GITHUB_STEP_SUMMARY``) and ``report.png`` (needs matplotlib).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from intent_ci.config import NAME_PATTERN, ReleaseConfig, _coerce, _suggest
from intent_ci.data import INTENT, TEXT, check_known_intents, normalise, read_examples
from intent_ci.errors import IntentCIError
from intent_ci.evaluation import intent_regression_metric
from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier, load_release

logger = logging.getLogger(__name__)

EXIT_PASS, EXIT_REGRESSION = 0, 1
REPORT_FILES = ("report.json", "report.md", "report.png")
CORRECTIONS = ("holm", "none")


def _check(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise IntentCIError(f"config field `gate.{name}`: {message}")


@dataclass
class GateConfig:
    """Thresholds of the regression gate. Drops are in percentage points, accuracies in [0, 1]."""

    max_drop: float = field(
        default=2.0,
        metadata={
            "help": "Largest acceptable drop of old-intent accuracy overall, in points; the rule "
            "fails only when the drop is larger AND significant (McNemar at `alpha`). More intents "
            "compete even when nothing is forgotten: on CLINC150 a linear probe trained from scratch "
            "scores 96.5% on the 100-intent test set and 95.5% on the 150-intent one, and the "
            "recommended recipe's v1 -> v2 old-intent drop is 1.2 points "
            "(scripts/results/bench_clinc.md). 2 points leaves room for that; naive fine-tuning "
            "loses tens of points. With 30 test utterances for each of 14 old intents, 2 points are "
            "about 8 net flips of 420."
        },
    )
    per_intent_max_drop: float = field(
        default=10.0,
        metadata={
            "help": "Largest acceptable drop of one old intent's accuracy, in points; an intent fails "
            "when its drop is larger AND significant after Holm's correction. With 30 test "
            "utterances per intent one flip is 3.3 points, so one or two flips (6.7 points) never "
            "fail; significance asks for more: with 14 intents, 9 one-way flips of 30 for the "
            "worst intent (0.5^9 = 0.002 < 0.05/14), with 150 intents 12 (0.5^12 < 0.05/150)."
        },
    )
    alpha: float = field(
        default=0.05,
        metadata={
            "help": "One-sided significance level of the exact McNemar tests (rules old_accuracy and "
            "per_intent). Intervals are two-sided at 1 - 2 alpha (90% by default) so that their "
            "lower end is the matching one-sided bound. When nothing really changed, each of the two "
            "rules goes red by chance at most this often (both together at most 2 alpha), and less "
            "with their size conditions."
        },
    )
    per_intent_correction: str = field(
        default="holm",
        metadata={
            "help": "`holm`: Holm's step-down correction over the old intents' p-values, so that the "
            "chance that any unchanged intent fails stays below `alpha` however many intents there "
            "are (the price: an isolated intent needs more flips to be flagged, see "
            "per_intent_max_drop); `none`: each intent tested at `alpha` on its own."
        },
    )
    min_new_accuracy: float = field(
        default=0.8,
        metadata={
            "help": "Smallest acceptable accuracy of the candidate on its new intents' test utterances "
            "(pooled), a fraction. 0.8 is 24 of 30 utterances; the recommended recipe reaches 0.96 "
            "on CLINC150's 50 added intents. Skipped when the test data has no new-intent utterances."
        },
    )
    top_confusions: int = field(
        default=10,
        metadata={"help": "Newly confused (true -> predicted) pairs listed in the report."},
    )
    batch_size: int = field(
        default=64, metadata={"help": "Utterances per forward pass when scoring both releases."}
    )

    def __post_init__(self) -> None:
        _check(
            0 <= self.max_drop <= 100,
            "max_drop",
            f"must be in [0, 100] (percentage points), got {self.max_drop}",
        )
        _check(
            0 <= self.per_intent_max_drop <= 100,
            "per_intent_max_drop",
            f"must be in [0, 100] (percentage points), got {self.per_intent_max_drop}",
        )
        _check(0 < self.alpha < 0.5, "alpha", f"must be in (0, 0.5), got {self.alpha}")
        _check(
            self.per_intent_correction in CORRECTIONS,
            "per_intent_correction",
            f"expected one of {', '.join(CORRECTIONS)}; got {self.per_intent_correction!r}",
        )
        _check(
            0 <= self.min_new_accuracy <= 1,
            "min_new_accuracy",
            f"must be a fraction in [0, 1] (0.8 = 80%), got {self.min_new_accuracy}",
        )
        _check(
            self.top_confusions >= 0,
            "top_confusions",
            f"must be >= 0, got {self.top_confusions}",
        )
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


def gate_config_from_dict(values: Any, *, source: str = "config") -> GateConfig:
    """Build a `GateConfig` from ``{"gate": {key: value}}``, rejecting unknown sections and keys.

    Raises:
        IntentCIError: naming `source` and the key, with the closest valid key.
    """
    if not isinstance(values, dict):
        raise IntentCIError(f"{source}: expected a mapping with a `gate:` section")
    valid = [f.name for f in fields(GateConfig)]
    for section in values:
        if section != "gate":
            hint = (
                f" Put `{section}` under a `gate:` section."
                if section in valid
                else _suggest(str(section), ["gate"])
            )
            raise IntentCIError(f"{source}: unknown section `{section}`.{hint}")
    section_values = values.get("gate") or {}
    if not isinstance(section_values, dict):
        raise IntentCIError(f"{source}: section `gate` must be a mapping of key: value")
    hints = get_type_hints(GateConfig)
    kwargs: dict[str, Any] = {}
    for key, value in section_values.items():
        if key not in valid:
            raise IntentCIError(f"{source}: unknown key `gate.{key}`." + _suggest(str(key), valid))
        kwargs[key] = _coerce(value, hints[key], f"{source}: `gate.{key}`")
    try:
        return GateConfig(**kwargs)
    except IntentCIError as err:
        raise IntentCIError(f"{source}: {err}") from None


def _load_yaml(path: Path, what: str) -> Any:
    if not path.is_file():
        raise IntentCIError(f"{path}: {what} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise IntentCIError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise IntentCIError(_yaml_error(path, err)) from None


def _yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """``file:line: not valid YAML: problem (context at line N)`` from a PyYAML error."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    message = f"{where}: not valid YAML: {getattr(err, 'problem', None) or err}"
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None:
        message += f" ({context} at line {context_mark.line + 1})"
    return message


def load_gate_config(path: str | Path | None) -> GateConfig:
    """Read a gate YAML file (a ``gate:`` section of overrides); defaults when `path` is None.

    Raises:
        IntentCIError: if the file is missing, not YAML, or holds unknown or invalid keys.
    """
    if path is None:
        return GateConfig()
    path = Path(path)
    values = _load_yaml(path, "gate config file")
    return GateConfig() if values is None else gate_config_from_dict(values, source=str(path))


# ---- golden utterances ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GoldenExample:
    """One utterance that must stay right, and where it was written."""

    text: str
    intent: str
    line: int


def read_golden(path: str | Path) -> list[GoldenExample]:
    """Read a golden-utterance YAML file: a mapping of ``utterance: intent``, one per line.

    ::

        "where is my refund": refund_status
        "i lost my card": card_lost

    Raises:
        IntentCIError: naming the file and line of a YAML error, a non-string utterance or
            intent, an invalid intent name, an utterance listed twice, or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        raise IntentCIError(f"{path}: golden file not found")
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError as err:
        raise IntentCIError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise IntentCIError(_yaml_error(path, err)) from None
    expected = 'expected a mapping of `"utterance": intent` lines'
    if node is None:
        raise IntentCIError(f"{path}: no golden utterances; {expected}")
    if not isinstance(node, yaml.MappingNode):
        raise IntentCIError(f"{path}:{node.start_mark.line + 1}: {expected}")
    examples: list[GoldenExample] = []
    seen: dict[str, int] = {}
    for key, value in node.value:
        line = key.start_mark.line + 1
        where = f"{path}:{line}"
        if not isinstance(key, yaml.ScalarNode) or key.tag != "tag:yaml.org,2002:str":
            raise IntentCIError(f"{where}: the utterance must be a string; {expected}")
        text = key.value.strip()
        if not text:
            raise IntentCIError(f"{where}: empty utterance; {expected}")
        if not isinstance(value, yaml.ScalarNode) or value.tag != "tag:yaml.org,2002:str":
            raise IntentCIError(
                f"{where}: the intent of {text!r} must be a single intent name; {expected}"
            )
        intent = value.value.strip()
        if not NAME_PATTERN.match(intent):
            raise IntentCIError(
                f"{where}: invalid intent name {intent!r}; expected lowercase letters, digits, '_' "
                "or '-', starting with a letter or digit, at most 64 characters"
            )
        norm = normalise(text)
        if norm in seen:
            raise IntentCIError(
                f"{where}: utterance {text!r} is already listed at line {seen[norm]}; "
                "list each golden utterance once"
            )
        seen[norm] = line
        examples.append(GoldenExample(text, intent, line))
    if not examples:
        raise IntentCIError(f"{path}: no golden utterances; {expected}")
    return examples


# ---- rules ----------------------------------------------------------------------------------------
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


def _p(value: float) -> str:
    """A p-value for people; exact tails below the smallest float come out as 0."""
    if value == 0:
        return "< 1e-300"
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(points: float) -> str:
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
        f"on {old['n']} utterances: drop {_num(drop)} points "
        f"({100 * stats['confidence']:.0f}% CI {_num(low)} to {_num(high)}), "
        f"{old['broken']} broken / {old['fixed']} fixed, McNemar p = {_p(old['p_value'])}"
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
            f"{r['intent']} (drop {_num(r['drop_points'])} points, p = {_p(r['p_adjusted'])})"
            for r in failing
        )
    else:
        worst = rows[0] if rows else None
        summary = (
            f"no old intent dropped by more than {cfg.per_intent_max_drop:g} points significantly"
        )
        if worst is not None and worst["drop_points"] > 0:
            summary += (
                f" (largest drop: {worst['intent']} {_num(worst['drop_points'])} points, "
                f"p = {_p(worst['p_adjusted'])})"
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


# ---- the check --------------------------------------------------------------------------------------
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


# ---- reports --------------------------------------------------------------------------------------
def write_report(report: dict[str, Any], out_dir: Path) -> list[str]:
    """Write report.json, report.md and (with matplotlib) report.png; return the written paths."""
    written = []
    png = out_dir / "report.png"
    reason = plot_report(report, png)
    report["png"] = str(png) if reason is None else None
    if reason is not None:
        report["png_skipped"] = reason
        logger.warning("report.png skipped: %s", reason)
    else:
        written.append(str(png))
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return [str(out_dir / "report.json"), str(out_dir / "report.md"), *written]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_TITLES = {
    "old_accuracy": "Old-intent accuracy",
    "per_intent": "Per-intent drops",
    "golden": "Golden utterances",
    "new_intents": "New-intent accuracy",
    "confusions": "New confusions",
}
_MARKS = {"pass": "✅ pass", "fail": "❌ fail", "info": "ℹ️ info", "skipped": "➖ skipped"}


def render_markdown(report: dict[str, Any]) -> str:
    """The report for a pull request or ``$GITHUB_STEP_SUMMARY``: verdict, failing rules, tables."""
    cfg = report["config"]
    failed = [r for r in report["rules"] if r["status"] == "fail"]
    verdict = "✅ PASS" if report["verdict"] == "pass" else "❌ FAIL"
    lines = [
        f"## intent-ci gate: {verdict} — `{report['candidate']}` vs `{report['baseline']}`",
        "",
        f"Test data `{report['data']}`"
        + (f", golden `{report['golden']}`" if report.get("golden") else "")
        + f", registry `{report['registry']}`.",
        "",
    ]
    if failed:
        lines += ["**Failing rules**", ""]
        lines += [f"- **{_TITLES[r['name']]}**: {_md(r['summary'])}" for r in failed]
        lines.append("")
    lines += ["| rule | result | details |", "|---|---|---|"]
    lines += [
        f"| {_TITLES[r['name']]} | {_MARKS[r['status']]} | {_md(r['summary'])} |"
        for r in report["rules"]
    ]
    lines += [
        "",
        f"Rules: old-intent accuracy fails when the drop exceeds {cfg['max_drop']:g} points and an "
        f"exact one-sided McNemar test is significant at {cfg['alpha']:g}; an intent fails when its "
        f"drop exceeds {cfg['per_intent_max_drop']:g} points and its "
        + ("Holm-adjusted " if cfg["per_intent_correction"] == "holm" else "")
        + f"p-value is at most {cfg['alpha']:g}; new intents need {100 * cfg['min_new_accuracy']:g}% "
        f"accuracy. Intervals: {report['statistics']['interval']}.",
        "",
    ]

    golden = report.get("golden_results")
    flagged = [g for g in golden or [] if g["status"] in ("broken", "still_wrong", "new_wrong")]
    if flagged:
        lines += [
            "### Golden utterances wrong in the candidate",
            "",
            "| line | utterance | expected | baseline | candidate | counts |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {g['line']} | {_md(g['text'])} | {g['intent']} | {g['baseline']} | {g['candidate']} "
            f"| {'❌ broken' if g['status'] == 'broken' else 'no (baseline wrong too)'} |"
            for g in flagged
        ]
        lines.append("")

    if report["confusions"]:
        lines += [
            "### Newly confused pairs",
            "",
            "Old-intent utterances the baseline got right and the candidate gets wrong, by where they went.",
            "",
            "| true intent | candidate predicts | utterances |",
            "|---|---|---|",
        ]
        lines += [
            f"| {c['true']} | {c['predicted']}{' (new)' if c['to_new_intent'] else ''} | {c['count']} |"
            for c in report["confusions"]
        ]
        lines.append("")

    rows = report["per_intent"]
    failing = sum(r["fails"] for r in rows)
    head = [
        "| intent | n | baseline | candidate | drop (points) | broken / fixed | p (adj.) | |",
        "|---|---|---|---|---|---|---|---|",
    ]
    table = [
        f"| {r['intent']} | {r['n']} | {_pct(r['baseline_accuracy'])} | {_pct(r['candidate_accuracy'])} "
        f"| {_num(r['drop_points'])} | {r['broken']} / {r['fixed']} | {_p(r['p_adjusted'])} "
        f"| {'❌' if r['fails'] else ''} |"
        for r in rows
    ]
    title = f"Old intents ({len(rows)}, worst first; {failing} failing)"
    if len(rows) > 20:
        lines += ["<details>", f"<summary>{title}</summary>", "", *head, *table, "", "</details>"]
    else:
        lines += [f"### {title}", "", *head, *table]
    without = report["old_intents"]["without_test_data"]
    if without:
        lines += ["", f"Old intents without test utterances (not checked): {', '.join(without)}."]
    new = report["new_intents"]
    if new["per_intent"]:
        lines += [
            "",
            f"### New intents ({len(new['per_intent'])}): {_pct(new['accuracy'])} pooled",
            "",
            "| intent | n | candidate |",
            "|---|---|---|",
        ]
        lines += [
            f"| {i} | {row['n']} | {_pct(row['accuracy'])} |"
            for i, row in sorted(new["per_intent"].items(), key=lambda kv: kv[1]["accuracy"])
        ]
    if report.get("png_skipped"):
        lines += ["", f"_report.png not written: {report['png_skipped']}._"]
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: Path, rows_per_panel: int = 50) -> str | None:
    """Per-intent accuracy before and after, worst drop first, failing intents in red.

    Old intents show the baseline (hollow) and the candidate (filled) joined by a line; new
    intents only the candidate. More than `rows_per_panel` intents are split into side-by-side
    panels so that 150 intents stay readable.

    Returns:
        None when the PNG was written, else why it was skipped (matplotlib missing).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError:
        return "matplotlib is not installed (pip install 'intent-ci[plot]')"

    red, orange, blue, green, grey = "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#7f7f7f"
    items = []
    for r in report["per_intent"]:
        color = red if r["fails"] else (orange if r["drop_points"] > 0 else blue)
        items.append((r["intent"], r["baseline_accuracy"], r["candidate_accuracy"], color, r))
    for intent, row in sorted(report["new_intents"]["per_intent"].items()):
        items.append((intent + " (new)", None, row["accuracy"], green, None))
    if not items:
        return "nothing to plot"
    panels = max(1, math.ceil(len(items) / rows_per_panel))
    per_panel = math.ceil(len(items) / panels)
    longest = max(len(name) for name, *_ in items)
    label_in = min(2.6, 0.3 + 0.062 * min(longest, 34))
    width = max(7.5, panels * (3.4 + label_in))
    fig = Figure(figsize=(width, 0.19 * per_panel + 2.1), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for p, ax in enumerate(axes):
        chunk = items[p * per_panel : (p + 1) * per_panel]
        ys = list(range(len(chunk)))[::-1]
        for y, (_, before, after, color, row) in zip(ys, chunk, strict=True):
            if before is not None:
                ax.plot([100 * before, 100 * after], [y, y], color=color, lw=1.6, alpha=0.7)
                ax.scatter(100 * before, y, s=22, facecolors="white", edgecolors=grey, zorder=3)
            ax.scatter(100 * after, y, s=22, color=color, zorder=4)
            if row is not None and row["fails"]:
                ax.annotate(
                    f"−{row['drop_points']:.0f}",
                    (50 * (before + after), y),
                    xytext=(0, 1.5),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=6.5,
                    color=red,
                )
        names = [n if len(n) <= 34 else n[:33] + "…" for n, *_ in chunk]
        ax.set_yticks(ys, names, fontsize=7.5)
        for tick, (*_, row) in zip(ax.get_yticklabels(), chunk, strict=True):
            if row is not None and row["fails"]:
                tick.set_color(red)
                tick.set_fontweight("bold")
        ax.set_ylim(-0.7, per_panel - 0.3)
        ax.set_xlim(-3, 103)
        ax.set_xlabel("accuracy (%)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7.5)
        ax.grid(axis="x", color="#dddddd", lw=0.6)
        ax.set_axisbelow(True)
    legend = [
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            mfc="white",
            mec=grey,
            label=f"{report['baseline']} (baseline)",
        ),
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            color=red,
            label=f"{report['candidate']}: fails (large, significant)",
        ),
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            color=orange,
            label=f"{report['candidate']}: dropped, within the rules",
        ),
        Line2D(
            [], [], marker="o", ls="", color=blue, label=f"{report['candidate']}: same or better"
        ),
        Line2D([], [], marker="o", ls="", color=green, label=f"{report['candidate']}: new intent"),
    ]
    ncol = 5 if width >= 12 else 3
    legend_rows = math.ceil(len(legend) / ncol)
    height = fig.get_figheight()
    old = report["old_intents"]
    fig.suptitle(
        f"{report['candidate']} vs {report['baseline']}: {report['verdict'].upper()}  ·  old intents "
        f"{_pct(old['baseline_accuracy'])} → {_pct(old['candidate_accuracy'])} "
        f"(drop {_num(old['drop_points'])} points)",
        fontsize=10,
        y=1 - 0.12 / height,
        va="top",
        color=red if report["verdict"] == "fail" else "black",
    )
    fig.legend(
        handles=legend,
        loc="upper center",
        ncol=ncol,
        fontsize=7.5,
        frameon=False,
        bbox_to_anchor=(0.5, 1 - 0.42 / height),
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.45 + 0.16 * legend_rows) / height))
    fig.savefig(path)
    return None


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: verdict, then one line per rule."""
    lines = [
        f"{report['candidate']} vs {report['baseline']} on {report['data']}: {report['verdict'].upper()}"
    ]
    for rule in report["rules"]:
        lines.append(f"  {rule['status']:<7} {rule['name']:<13} {rule['summary']}")
    return lines
