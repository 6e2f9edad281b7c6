"""scripts/bench_oos.py's choices and report, on hand-made results (no model is trained)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_oos")


def method(auroc: float, grid: dict[str, tuple[float, float]]) -> dict:
    at = {
        t: {"threshold": 1.0, "in_scope_accuracy": acc, "in_scope_recall": 0.95, "oos_recall": rec}
        for t, (acc, rec) in grid.items()
    }
    split = {"auroc": auroc, "fpr_at_95": 0.05, "at_target": at}
    return {"val": split, "test": split}


def test_choose_takes_the_best_val_auroc_a_release_can_compute_and_the_safest_target(bench):
    grid = {"0.9": (0.90, 0.99), "0.95": (0.95, 0.90), "0.97": (0.97, 0.86)}
    main = {
        "methods": {
            "max_logit": method(0.97, grid),
            "energy": method(0.98, grid),
            "msp": method(0.96, grid),
            "mahalanobis": method(0.999, grid),  # not a score a release ships: never chosen
            "energy+knn@1": method(0.999, grid),  # needs every training row: never chosen
        }
    }
    chosen = bench.choose(main)
    assert chosen["score"] == "energy"
    main["methods"]["energy_knn"] = method(0.985, grid)  # the feature score a release ships
    assert bench.choose(main)["score"] == "energy_knn"
    # margins: 0.9 -> -0.04, 0.95 -> min(0.01, 0.05) = 0.01, 0.97 -> min(0.03, 0.01) = 0.01
    assert chosen["target_recall"] == 0.95 and chosen["val_margin"] == pytest.approx(0.01)


def test_metrics_match_their_definitions(bench):
    ins, oos = np.array([3.0, 0.5, 4.0, 2.5]), np.array([1.0, 2.0])
    assert bench.auroc(ins, oos) == pytest.approx(6 / 8)
    # 95% of 4 in-scope rows is all 4: the threshold is 0.5 and both oos rows are accepted.
    assert bench.fpr_at(ins, oos) == 1.0
    row = bench.at_threshold(2.0, ins, np.array([True, True, False, True]), oos)
    assert row == {"in_scope_accuracy": 0.5, "in_scope_recall": 0.75, "oos_recall": 0.5}


def test_a_missing_stage_is_reported_as_a_miss(bench):
    result = {
        "command": "python scripts/bench_oos.py --stage report",
        "date": "d",
        "machine": "m",
        "main": None,
        "probe": None,
        "line": None,
        "missing": ["main", "probe", "line"],
        "floors": [{"what": "every floor", "value": None, "bar": "b", "ok": False}],
    }
    text = bench.markdown(result)
    assert "**Missing stages: main, probe, line.**" in text and "**MISS**" in text


def seed_main(seed: int, test_acc: float, test_rec: float, val_grid: dict) -> dict:
    test = method(0.985, {"0.95": (test_acc, test_rec)})["test"]
    val = method(0.99, val_grid)["val"]
    return {
        "seed": seed,
        "release": {"oos": {"score": "energy", "target_recall": 0.95}},
        "methods": {name: {"val": val, "test": test} for name in ("max_logit", "energy", "msp")},
    }


def test_several_seeds_choose_on_the_mean_and_a_floor_needs_every_seed(bench):
    a = seed_main(0, 0.95, 0.90, {"0.95": (0.95, 0.90), "0.97": (0.96, 0.90)})
    b = seed_main(1, 0.93, 0.90, {"0.95": (0.95, 0.90), "0.97": (0.93, 0.86)})
    folded = bench.mean_tree([a, b])
    assert folded["methods"]["energy"]["val"]["at_target"]["0.97"]["in_scope_accuracy"] == (
        pytest.approx(0.945)
    )
    # Seed 0 alone would take 0.97 (margin 0.02 against 0.01); on the mean over both seeds
    # 0.97's margin is min(0.005, 0.03) and 0.95's is min(0.01, 0.05).
    assert bench.choose(a)["target_recall"] == 0.97
    chosen = bench.choose(folded)
    assert chosen["target_recall"] == 0.95
    probe = {"test": {"auroc": 0.97, "fpr_at_95": 0.10}}
    rows = {r["what"]: r for r in bench.floors_over_seeds([a, b], probe, chosen, None)}
    accuracy = rows["in-scope accuracy at the calibrated threshold"]
    assert accuracy["value"] == pytest.approx(0.94) and accuracy["per_seed"] == [0.95, 0.93]
    assert accuracy["ok"] is False  # the mean meets 0.94; seed 1 does not
    assert rows["oos recall at the calibrated threshold"]["ok"] is True
    # The shipped default (OOSConfig) is energy_knn at 0.985, not this choice: a miss.
    (shipped,) = [r for w, r in rows.items() if w.startswith("shipped default")]
    assert shipped["bar"] == f"{chosen['score']} @ 0.95" and shipped["ok"] is False
