"""scripts/bench_update.py's report on its committed result: the retrain costs it compares an
update against, and the val table that update defaults are chosen on."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "scripts" / "results" / "bench_update.json"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "scripts"))
    return load_script("bench_update")


@pytest.fixture
def result() -> dict:
    return copy.deepcopy(json.loads(RESULT.read_text(encoding="utf-8")))


def test_the_retrain_after_the_last_update_costs_what_the_measured_retrain_did(bench, result):
    """The per-update retrain estimates count the rows `init` trains on (each intent less its
    calibration hold-out): the last one is the measured full retrain on the same data, exactly."""
    bench.refresh_retrain_costs(result)
    for seed in result["seeds"]:
        last = seed["retrain_per_update"][-1]
        assert last["examples_processed"] == seed["full_retrain"]["cost"]["examples_processed"]
        assert last["rows"] == 150 * 50 and last["trained_rows"] < last["rows"]
        sizes = [r["examples_processed"] for r in seed["retrain_per_update"]]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_val_table_only_for_results_that_scored_val(bench, result, tmp_path):
    out = tmp_path / "report"
    bench.write_outputs(copy.deepcopy(result), out)
    assert "## Val split" not in out.with_suffix(".md").read_text(encoding="utf-8")
    seed = result["seeds"][0]
    steps = seed["methods"]["intent-ci"]["updates"]
    for k, step in enumerate(steps):
        step["val"] = {
            "accuracy": 0.9 + k / 100,
            "updated_change_points": 1.0,
            "untouched_change_points": -0.1 * k,
        }
    seed["full_retrain"]["accuracy_val"] = 0.95
    bench.write_outputs(result, out)
    text = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "## Val split" in text
    row = f"| intent-ci | {seed['seed']} | 92.00% | -3.00 | -0.20 |"
    assert row in text, text
