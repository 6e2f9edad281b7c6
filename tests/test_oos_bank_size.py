"""scripts/oos_bank_size.py on a tiny trained release: a real pass, a real bank."""

from __future__ import annotations

import json
import sys

import pytest

from intent_ci.registry import Registry
from tests.conftest import BASE_INTENTS, NEW_INTENTS, load_script, make_utterances


def test_prefix_bank_keeps_the_first_k_rows_of_each_intent():
    script = load_script("oos_bank_size")
    memory = {"a": ["1", "2", "3"], "b": ["4"], "c": ["5", "6"]}
    assert script.prefix_bank(memory, ["a", "b", "c"], 2) == [0, 1, 3, 4, 5]
    assert script.prefix_bank(memory, ["c", "a", "b"], 1) == [0, 2, 5]
    assert script.prefix_bank(memory, ["a", "b", "c"], None) == list(range(6))


def test_the_whole_memory_bank_reproduces_the_release_calibration(
    trained_registry, tmp_path, monkeypatch
):
    script = load_script("oos_bank_size")
    intents = BASE_INTENTS + NEW_INTENTS[:1]
    data = {
        "train": [],
        "val": [(u, i) for i in intents for u in make_utterances(i, 70, seed=3)[-6:]],
        "test": [(u, i) for i in intents for u in make_utterances(i, 70, seed=4)[-6:]],
        "oos_train": [["what is the capital of peru", "oos"]],
        "oos_val": [["play some jazz please", "oos"], ["how tall is a giraffe", "oos"]],
        "oos_test": [["book a table for two", "oos"], ["tell me a joke", "oos"]],
    }
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "bank"
    argv = ["oos_bank_size.py", "--data", str(path), "--release", f"{trained_registry}:v2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--prefix", "3", "--prefix", "8", "--out", str(out)])
    script.main()
    result = json.loads(out.with_suffix(".json").read_text())
    (release,) = result["releases"]
    manifest = Registry(trained_registry).manifest("v2")
    banks = release["banks"]
    # The whole-memory bank is the release's own: same rows, same calibrated threshold.
    assert banks["whole memory"]["rows"] == manifest["oos"]["bank"]["rows"]
    assert banks["whole memory"]["threshold"] == pytest.approx(
        manifest["oos"]["threshold"], abs=1e-4
    )
    assert banks["first 3"]["rows"] == 3 * len(intents)
    # A prefix as large as the memory (8 per intent in the tiny config) is the whole bank.
    assert banks["first 8"]["rows"] == banks["whole memory"]["rows"]
    assert banks["first 8"]["val"] == banks["whole memory"]["val"]
    assert "| first 3 |" in out.with_suffix(".md").read_text()
