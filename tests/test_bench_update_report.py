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
RESULT = REPO / "scripts" / "results" / "update_lora" / "bench_update.json"


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


def test_a_method_of_one_part_can_be_renamed_when_parts_are_merged(bench, result, tmp_path):
    """`--rename FILE:OLD=NEW`: a line run as `intent-ci` under an earlier default is merged
    beside the current one under its own name; the merging command is in the report."""
    lora = bench.renamed(result, "old.json:intent-ci=lora")
    for seed in lora["seeds"]:
        assert "intent-ci" not in seed["methods"] and "lora" in seed["methods"]
    assert result["seeds"][0]["methods"]["intent-ci"]  # the part read is left as it was
    current = copy.deepcopy(result)
    for seed in current["seeds"]:
        seed["methods"] = {"intent-ci": seed["methods"]["intent-ci"]}
    merged = bench.merge([current, lora])
    merged["report_command"] = "python scripts/bench_update.py --report-from a b --rename b:x=y"
    bench.write_outputs(merged, tmp_path / "merged")
    report = (tmp_path / "merged.md").read_text(encoding="utf-8")
    assert "reported by `python scripts/bench_update.py --report-from a b --rename b:x=y`" in report
    assert "| lora | 1 (v2) |" in report and "| intent-ci | 1 (v2) |" in report
    with pytest.raises(SystemExit, match="has no method 'head'"):
        bench.renamed(result, "old.json:head=lora")
    with pytest.raises(SystemExit, match="expected FILE:OLD=NEW"):
        bench.renamed(result, "old.json:intent-ci")


def test_a_head_only_update_counts_no_encoder_training_rows():
    """Examples processed are rows through the encoder: an update that trains the head alone
    on fixed embeddings counts its forward passes only; its head rows are reported apart."""
    from bench_incremental import release_costs

    class Manifests:
        def __init__(self, metrics: dict) -> None:
            self.metrics = metrics

        def manifest(self, release: str) -> dict:
            return {"metrics": self.metrics}

    metrics = {
        "compute_s": 3.0,
        "wall_time_s": 4.0,
        "train": {"examples_trained": 900, "wall_time_s": 1.0},
        "forward_only_examples": 100,
        "update_mode": "lora",
    }
    lora = release_costs(Manifests(metrics), "v2")
    assert lora["examples_processed"] == 1000 and lora["head_examples_trained"] == 0
    head = release_costs(Manifests({**metrics, "update_mode": "head"}), "v2")
    assert head["examples_processed"] == 100 and head["examples_trained"] == 0
    assert head["head_examples_trained"] == 900
