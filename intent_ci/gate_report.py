"""The regression gate's report: ``report.json``, ``report.md`` and ``report.png``.

``report.md`` is written for a pull request or ``$GITHUB_STEP_SUMMARY``: the verdict, the
failing rules, then tables. ``report.png`` (needs matplotlib, the ``plot`` extra) shows
per-intent accuracy before and after. `summary_lines` is what ``intent-ci check`` prints.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from intent_ci.gate import DECISION_RULES, format_p, format_pct, format_points

logger = logging.getLogger(__name__)

REPORT_FILES = ("report.json", "report.md", "report.png")


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
    "drift": "Drift from the line's base",
    "also_against": "Old intents vs another release",
    "retired": "Retired intents",
    "out_of_scope": "Out-of-scope acceptance",
}
_MARKS = {"pass": "✅ pass", "fail": "❌ fail", "info": "ℹ️ info", "skipped": "➖ skipped"}


def _title(rule: dict[str, Any]) -> str:
    title = _TITLES[rule["name"]]
    if rule["name"] in ("drift", "also_against") and rule.get("against"):
        title += f" (`{rule['against']}`)"
    return title


def _decided(decision: str, budget: float, alpha: float) -> str:
    return (
        DECISION_RULES[decision]
        .format(f"{budget:g}")
        .replace("1 - alpha", f"{100 * (1 - alpha):g}%")
        .replace("alpha", f"{alpha:g}")
    )


def _rule_text(cfg: dict[str, Any], report: dict[str, Any]) -> str:
    """The decision rules in one paragraph, with the thresholds of this run."""
    drop = (
        f"old-intent accuracy: {_decided(cfg['decision'], cfg['max_drop'], cfg['alpha'])}; the "
        "drift from the line's base: "
        + _decided(cfg.get("drift_decision", cfg["decision"]), cfg["max_drift"], cfg["alpha"])
    )
    return (
        f"Rules: {drop}; an intent fails when its drop exceeds {cfg['per_intent_max_drop']:g} "
        "points and its "
        + ("Holm-adjusted " if cfg["per_intent_correction"] == "holm" else "")
        + f"p-value is at most {cfg['alpha']:g}; each new intent with at least "
        f"{cfg['min_new_intent_utterances']} test utterances needs "
        f"{100 * cfg['min_new_intent_accuracy']:g}% accuracy, all new intents pooled "
        f"{100 * cfg['min_new_accuracy']:g}%; the candidate may accept at most "
        f"{cfg['max_oos_accept_increase']:g} points more of the out-of-scope rows, decided "
        "the same way. "
        + (
            "A rejected in-scope utterance counts as an error. "
            if cfg["reject"]
            else "Out-of-scope rejection is off (gate.reject: false). "
        )
        + f"Intervals: {report['statistics']['interval']}."
    )


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
        lines += [f"- **{_title(r)}**: {_md(r['summary'])}" for r in failed]
        lines.append("")
    lines += ["| rule | result | details |", "|---|---|---|"]
    lines += [
        f"| {_title(r)} | {_MARKS[r['status']]} | {_md(r['summary'])} |" for r in report["rules"]
    ]
    lines += [
        "",
        f"Baseline `{report['baseline']}` ({report['baseline_source']}); drift measured "
        f"against `{report['drift']['against']}` (line: {' → '.join(report['drift']['line'][::-1])}).",
        "",
        _rule_text(cfg, report),
        "",
        "Rejected as out of scope: "
        + "; ".join(
            f"`{name}` {r['in_scope_rejected']} of {r['in_scope_n']} in-scope rows"
            + (
                f", accepted {r['oos_accepted']} of {r['oos_n']} out-of-scope rows"
                if r["oos_n"]
                else ""
            )
            for name, r in report["rejection"].items()
        )
        + ".",
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
        f"| {r['intent']} | {r['n']} | {format_pct(r['baseline_accuracy'])} | {format_pct(r['candidate_accuracy'])} "
        f"| {format_points(r['drop_points'])} | {r['broken']} / {r['fixed']} | {format_p(r['p_adjusted'])} "
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
        marks = {"pass": "", "fail": "❌ below floor", "too_few": "⚠️ too few to judge"}
        lines += [
            "",
            f"### New intents ({len(new['rows'])}): {format_pct(new['accuracy'])} pooled",
            "",
            "| intent | n | candidate | |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['intent']} | {r['n']} | {format_pct(r['accuracy'])} | {marks[r['status']]} |"
            for r in new["rows"]
            if r["status"] != "untested"
        ]
        untested = [r["intent"] for r in new["rows"] if r["status"] == "untested"]
        if untested:
            lines += ["", f"New intents without test utterances: {', '.join(untested)}."]
    if report["also_against"]:
        lines += [
            "",
            "### Old intents against other releases",
            "",
            "| release | n | release acc. | candidate | drop (points) | broken / fixed | p | failing intents |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {a['baseline']} | {a['n']} | {format_pct(a['baseline_accuracy'])} "
            f"| {format_pct(a['candidate_accuracy'])} | {format_points(a['drop_points'])} "
            f"| {a['broken']} / {a['fixed']} | {format_p(a['p_value'])} "
            f"| {', '.join(a['failing_intents']) or '-'} |"
            for a in report["also_against"]
        ]
    moved = report["retired"]["moved"]
    if moved:
        lines += [
            "",
            f"### Retired intents ({', '.join(report['retired']['intents'])})",
            "",
            "Test utterances labelled with a retired intent are left out of every rule; this is "
            "where the candidate sends them now.",
            "",
            "| retired intent | n | baseline right | candidate predicts |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {m['intent']} | {m['n']} | {m['baseline_correct']} "
            f"| {', '.join(f'{to} ×{k}' for to, k in m['to'].items())} |"
            for m in moved
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
        f"{format_pct(old['baseline_accuracy'])} → {format_pct(old['candidate_accuracy'])} "
        f"(drop {format_points(old['drop_points'])} points)",
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
