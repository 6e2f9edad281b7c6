"""scripts/regulariser_report.py's rules, on hand-made bench_incremental results."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import load_script


def write_run(path, seed, lines):
    """A results file of one P1 intent order: {method: (final val accuracy, worst val drop)}."""

    def run(final, drop):
        scores = {"val": {"accuracy": final}}
        cost = {"examples_processed": 100}
        return {
            "overrides": {},
            "releases": [
                {"scores": {"val": {"accuracy": 0.97}}},
                {"scores": scores, "old_intent_drop_points": {"val": drop}, "cost": cost},
            ],
        }

    methods = {name: run(*values) for name, values in lines.items()}
    path.write_text(
        json.dumps({"command": "test", "seed": seed, "protocols": {"P1": {"methods": methods}}})
    )
    return path


@pytest.mark.parametrize(
    ("finals", "drops", "improves", "matches"),
    [
        # higher on every order, worst drop a little larger: matches, does not improve
        ([0.9630, 0.9650, 0.9620], [0.66, 0.78, 0.67], False, True),
        # higher everywhere and a smaller worst drop: both
        ([0.9630, 0.9650, 0.9620], [0.50, 0.60, 0.50], True, True),
        # 0.2 point lower on the mean: neither
        ([0.9590, 0.9530, 0.9570], [0.58, 0.71, 0.54], False, False),
        # level, worst drop larger by 0.3 on every order: the interval excludes zero
        ([0.9617, 0.9547, 0.9593], [0.88, 1.01, 0.84], False, False),
    ],
)
def test_improves_and_matches(tmp_path, monkeypatch, finals, drops, improves, matches):
    report = load_script("regulariser_report")
    base = {0: (0.9617, 0.58), 1: (0.9547, 0.71), 2: (0.9593, 0.54)}
    runs = [
        write_run(
            tmp_path / f"s{s}.json", s, {"intent-ci": base[s], "variant": (finals[s], drops[s])}
        )
        for s in range(3)
    ]
    for rule, expected in (("improves", improves), ("matches", matches)):
        out = tmp_path / rule
        argv = ["regulariser_report.py", "--protocol", "P1", "--out", str(out), "--rule", rule]
        for r in runs:
            argv += ["--run", str(r)]
        monkeypatch.setattr(sys, "argv", argv)
        report.main()
        verdict = json.loads(out.with_suffix(".json").read_text())["verdicts"]["variant"]
        assert verdict["replaces_default"] is expected, (rule, verdict)
        shown = out.with_suffix(".md").read_text()
        assert ("matches intent-ci" if expected else "does not") in shown or rule == "improves"


@pytest.mark.parametrize(
    ("finals", "drops", "raises"),
    [
        # +0.1 or more on the mean, no order more than 0.1 lower, worst drop level: replaces
        ([0.9640, 0.9547, 0.9610], [0.58, 0.71, 0.54], True),
        # +0.07 on the mean: not enough
        ([0.9627, 0.9557, 0.9593], [0.58, 0.71, 0.54], False),
        # +0.2 on the mean but one order 0.2 lower
        ([0.9697, 0.9527, 0.9633], [0.58, 0.71, 0.54], False),
        # +0.3 on the mean, worst drop 0.3 larger on every order
        ([0.9647, 0.9577, 0.9623], [0.88, 1.01, 0.84], False),
    ],
)
def test_raises_against_a_named_baseline(tmp_path, monkeypatch, finals, drops, raises):
    report = load_script("regulariser_report")
    base = {0: (0.9617, 0.58), 1: (0.9547, 0.71), 2: (0.9593, 0.54)}
    argv = ["regulariser_report.py", "--protocol", "P1", "--out", str(tmp_path / "r")]
    argv += ["--rule", "raises", "--baseline", "replay-only"]
    for s in range(3):
        lines = {"replay-only": base[s], "ratio2": (finals[s], drops[s])}
        argv += ["--run", str(write_run(tmp_path / f"s{s}.json", s, lines))]
    monkeypatch.setattr(sys, "argv", argv)
    report.main()
    verdict = json.loads((tmp_path / "r.json").read_text())["verdicts"]["ratio2"]
    assert verdict["replaces_default"] is raises, verdict
    shown = (tmp_path / "r.md").read_text()
    assert ("replaces replay-only" if raises else "does not replace replay-only") in shown
    assert "`--rule raises` (fixed before" in shown and "--baseline" not in shown.split("|")[-1]
