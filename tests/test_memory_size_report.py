"""scripts/memory_size_report.py on hand-made bench_incremental results."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import load_script


def write_run(path, seed, per_intent, methods, protocol="P1", drop=0.5):
    """A results file of one protocol: {method: final val accuracy}; every line has two
    releases."""

    def line(final):
        scores = {"val": {"accuracy": final}, "test": {"accuracy": final - 0.01}}
        return {
            "releases": [
                {"scores": {"val": {"accuracy": 0.97}, "test": {"accuracy": 0.96}}},
                {
                    "scores": scores,
                    "old_intent_drop_points": {"val": drop},
                    "cost": {"examples_processed": 100 * per_intent},
                    "replay_bytes_per_intent": 40 * per_intent,
                },
            ]
        }

    path.write_text(
        json.dumps(
            {
                "command": "test",
                "seed": seed,
                "init_config": {"replay": {"per_intent": per_intent}},
                "protocols": {protocol: {"methods": {m: line(v) for m, v in methods.items()}}},
            }
        )
    )
    return str(path)


def test_sizes_read_the_shipped_line_whatever_its_name(tmp_path, monkeypatch):
    report = load_script("memory_size_report")
    argv = ["memory_size_report.py", "--out", str(tmp_path / "r")]
    for s in (0, 1):
        # the 20 line ran as `replay-only`, the 50 line as `intent-ci` beside an ablation
        argv += [
            "--run",
            write_run(tmp_path / f"a{s}.json", s, 20, {"replay-only": 0.960 + s / 100}),
        ]
        lines = {"intent-ci": 0.964 + s / 100, "naive": 0.5}
        argv += ["--run", write_run(tmp_path / f"b{s}.json", s, 50, lines)]
    monkeypatch.setattr(sys, "argv", argv)
    report.main()
    rows = {r["per_intent"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rows[20]["final_val_accuracy"] == pytest.approx(0.965)
    assert rows[50]["final_val_accuracy"] == pytest.approx(0.969)
    assert rows[50]["bank_bytes_per_intent"] == 50 * 384 * 2
    shown = (tmp_path / "r.md").read_text()
    assert "order 0 (`replay-only`)" in shown and f"--out {tmp_path / 'r'}" in shown


def test_a_file_without_the_shipped_line_and_several_others_is_refused(tmp_path, monkeypatch):
    report = load_script("memory_size_report")
    run = write_run(tmp_path / "a.json", 0, 20, {"naive": 0.5, "replay-floor": 0.9})
    monkeypatch.setattr(sys, "argv", ["memory_size_report.py", "--run", run])
    with pytest.raises(SystemExit, match="no intent-ci line, and 2 others"):
        report.main()


def test_a_named_line_of_another_protocol_is_paired_with_the_reference_size(tmp_path, monkeypatch):
    report = load_script("memory_size_report")
    argv = ["memory_size_report.py", "--protocol", "P2", "--out", str(tmp_path / "r")]
    for s in (0, 1):
        # the 20 files hold the distilled intent-ci line beside replay-only, the shipped one
        lines = {"intent-ci": 0.5, "replay-only": 0.960 + s / 100}
        path = write_run(tmp_path / f"a{s}.json", s, 20, lines, protocol="P2", drop=0.3)
        argv += ["--run", f"{path}:replay-only"]
        b = write_run(tmp_path / f"b{s}.json", s, 50, {"intent-ci": 0.962}, "P2", drop=0.2 + s)
        argv += ["--run", b]
    monkeypatch.setattr(sys, "argv", argv)
    report.main()
    result = json.loads((tmp_path / "r.json").read_text())
    paired = result["paired"]["50"]
    assert paired["val_gain_points"] == pytest.approx([0.2, -0.8])
    assert paired["mean_val_gain_points"] == pytest.approx(-0.3)
    assert paired["worst_drop_change_points"] == pytest.approx([-0.1, 0.9])
    shown = (tmp_path / "r.md").read_text()
    assert "on P2" in shown and "final val +0.20, -0.80 points (mean -0.30)" in shown


def test_a_missing_line_or_protocol_names_the_file(tmp_path, monkeypatch):
    report = load_script("memory_size_report")
    run = write_run(tmp_path / "a.json", 0, 20, {"intent-ci": 0.9})
    for extra, message in (
        ([f"{run}:replay-only"], "no 'replay-only' line in P1"),
        ([run, "--protocol", "P2"], "no P2 run"),
    ):
        monkeypatch.setattr(sys, "argv", ["memory_size_report.py", "--run", *extra])
        with pytest.raises(SystemExit, match=message):
            report.main()
