"""scripts/bench_incremental.py's report (Markdown table and plot) on a committed result, with
its methods and with none (a run that only trains the base, the full retrain and the probe)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "scripts" / "results" / "bench_incremental.json"


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_incremental")


@pytest.fixture(scope="module")
def result() -> dict:
    return json.loads(RESULT.read_text(encoding="utf-8"))


def test_release_sizes_follow_the_protocol(bench, result):
    p1 = result["protocols"]["P1"]
    assert bench.release_sizes(p1) == [(f"v{k + 1}", 75 + 15 * k) for k in range(6)]
    p2 = result["protocols"]["P2"]
    assert bench.release_sizes(p2)[-1] == ("v11", 150)


def test_report_without_methods_lists_the_probe_per_release(bench, result, tmp_path):
    bare = copy.deepcopy(result)
    bare["protocols"] = {"P1": bare["protocols"]["P1"]}
    bare["protocols"]["P1"]["methods"] = {}
    bare["summary"] = {s: bench.summarise(bare, s) for s in bench.SPLITS}
    bare["targets"] = bench.targets(bare)
    text = bench.markdown(bare, tmp_path / "bare")
    probe = bare["protocols"]["P1"]["linear_probe"]
    rows = [line for line in text.splitlines() if line.startswith("| v")]
    assert len(rows) == 6
    assert rows[-1] == f"| v6 | 150 | {100 * probe[-1]['test']['accuracy']:.2f}% |"
    bench.plot(bare, tmp_path / "bare.png")
    assert (tmp_path / "bare.png").stat().st_size > 0


def test_report_with_methods_has_one_column_per_method(bench, result, tmp_path):
    one = copy.deepcopy(result)
    one["protocols"] = {"P1": one["protocols"]["P1"]}
    text = bench.markdown(one, tmp_path / "one")
    header = next(line for line in text.splitlines() if line.startswith("| release |"))
    assert header.count("|") == 2 + len(one["protocols"]["P1"]["methods"]) + 2
    bench.plot(one, tmp_path / "one.png")


@pytest.mark.parametrize(("fewer", "met"), [(45, True), (46, False)])
def test_a_gap_of_exactly_one_point_is_on_the_bar(bench, result, fewer, met):
    """Accuracies are counts over the same 4,500 test utterances: 45 fewer right answers than the
    retrain is -1.0 points and meets ">= -1.0" (in floats it is -1.0000000000000009); 46 is not."""
    tie = copy.deepcopy(result)
    tie["protocols"] = {"P1": tie["protocols"]["P1"]}
    p1 = tie["protocols"]["P1"]
    right = 4339
    p1["full_retrain"]["scores"]["test"]["accuracy"] = right / 4500
    p1["methods"]["intent-ci"]["releases"][-1]["scores"]["test"]["accuracy"] = (
        right - fewer
    ) / 4500
    tie["summary"] = {s: bench.summarise(tie, s) for s in bench.SPLITS}
    check = next(
        c for c in bench.targets(tie) if c["target"] == "P1 final accuracy vs full retrain (points)"
    )
    assert check["value"] == pytest.approx(-fewer / 45) and check["met"] is met


def test_fields_added_later_at_their_old_behaviour_keep_the_cache_key(bench):
    """A cached base stays found when a config field is added at the value that trains what the
    cache holds (fallback off, LoRA on), and any other value makes a new key."""
    from intent_ci.config import ReleaseConfig, apply_overrides

    recipe = bench.init_recipe(ReleaseConfig())
    assert "fallback" not in recipe
    assert "lora" not in recipe["train"]
    # Off, the check's other fields train nothing; on, the paired test (added later) changes
    # which release ships, so a cache made with the plain comparison is not reused.
    quiet = apply_overrides(ReleaseConfig(), {"fallback": {"significance": 0.5}}, source="test")
    assert "fallback" not in bench.init_recipe(quiet)
    on = apply_overrides(ReleaseConfig(), {"fallback": {"enabled": True}}, source="test")
    assert bench.init_recipe(on)["fallback"] == {"enabled": True, "significance": 0.05}
    head_alone = apply_overrides(ReleaseConfig(), {"train": {"lora": False}}, source="test")
    assert bench.init_recipe(head_alone)["train"]["lora"] is False
    # Fields only add-intent and update read never reach an init release's key.
    rows = apply_overrides(
        ReleaseConfig(), {"train": {"update_head_rows": "changed"}}, source="test"
    )
    assert bench.init_recipe(rows) == recipe
    assert "update_head_rows" not in recipe["train"]
    per_pass = apply_overrides(
        ReleaseConfig(), {"distill": {"anchor_per_pass": True}}, source="test"
    )
    assert bench.init_recipe(per_pass) == recipe


def test_a_method_is_the_current_add_intent_recipe_plus_its_overrides(bench):
    """A reused base records the add-intent fields of the code that made it; every method's
    add-intent gets today's values of all of them, with the method's own overrides on top."""
    from intent_ci.config import ReleaseConfig, apply_overrides

    config = apply_overrides(ReleaseConfig(), {"distill": {"l2_weight": 0.5}}, source="test")
    recipe = bench.add_intent_recipe(config, {"distill": {"weight": 3.0}, "replay": {}})
    assert {s: set(v) for s, v in recipe.items()} == {
        s: set(keys) for s, keys in bench.ADD_INTENT_ONLY.items()
    }
    assert recipe["distill"]["weight"] == 3.0 and recipe["distill"]["l2_weight"] == 0.5
    assert recipe["train"]["add_intent_epochs"] == config.train.add_intent_epochs
    # A base made when distillation was on by default: the recipe overrides what it recorded.
    old_base = apply_overrides(ReleaseConfig(), {"distill": {"weight": 3.0}}, source="test")
    child = apply_overrides(old_base, bench.add_intent_recipe(ReleaseConfig(), {}), source="t")
    assert child.distill.weight == ReleaseConfig().distill.weight == 0.0
