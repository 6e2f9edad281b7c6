"""scripts/bench_discover.py's floors: each one's verdict and its margin, the worst seed's
distance from the bar (a floor met with no margin must say so)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "scripts"))
    return load_script("bench_discover")


def seed(recovered: float, ari: float, kmeans_ari: float, gap: float) -> dict:
    return {
        "discovery": {"recovered_share": recovered, "ari": ari},
        "kmeans_true_k": {"ari": kmeans_ari},
        "end_to_end": {"gap_points": gap},
    }


def test_floors_report_the_worst_seeds_margin(bench):
    result = {
        "seeds": [seed(0.867, 0.895, 0.885, 3.46), seed(0.9, 0.88, 0.9, 5.0)],
        "scale": {
            "wall_s": 200.0,
            "peak_rss_mb": 1500.0,
            "within_10_min": True,
            "within_4_gb": True,
        },
    }
    recovered, ari, e2e, scale = bench.floors(result)
    assert recovered["met"] and recovered["margin"] == "+0.067"
    assert not ari["met"] and ari["margin"] == "-0.020"
    # 5.0 points is within 5: met, on the bar
    assert e2e["met"] and e2e["margin"] == "+0.00 points"
    assert scale["met"] and scale["margin"] == "400 s, 2596 MB"
    result["seeds"][1]["end_to_end"]["gap_points"] = 5.2
    assert not bench.floors(result)[2]["met"]
    assert bench.floors(result)[2]["margin"] == "-0.20 points"
    assert bench.floors({"seeds": []})[0] == {
        "floor": ">= 80% of held-out intents recovered (defaults, no K)",
        "values": [],
        "met": False,
        "margin": None,
    }


def test_seed_split_dev_rows_train_nothing(bench):
    """`--choose-e2e` scores on the held-out intents' rows that neither the base release nor
    the benchmark's traffic holds."""
    raw = {
        "train": [(f"{i} {n}", f"intent{i}") for i in range(40) for n in range(100)],
        "oos_train": [("oos a", "oos")],
        "oos_val": [("oos b", "oos")],
    }
    split = bench.seed_split(raw, 0)
    dev = set(split["dev"])
    assert {i for _, i in dev} == set(split["held_out"])
    assert len(dev) == bench.BASE_SHOTS * bench.HELD_OUT
    assert not dev & set(split["base"]) and not dev & set(split["traffic"])
    # the traffic holds TRAFFIC_SHOTS of every intent, the dev rows are the rest of a held-out one
    held = split["held_out"][0]
    assert len([r for r in split["traffic"] if r[1] == held]) == bench.TRAFFIC_SHOTS
    assert {t for t, i in raw["train"] if i == held} == {
        t for t, i in dev | set(split["traffic"]) if i == held
    }


def e2e_row(seed: int, setting: dict, dev: float, old: float = 0.95, noise: float = 0.04):
    return {
        "seed": seed,
        "setting": setting,
        "recovered_share": 0.85,
        "held_out_covered_share": 0.8,
        "ari": 0.9,
        "noise_share": noise,
        "dev_accuracy": dev,
        "dev_recovered_accuracy": 0.9,
        "old_accuracy": old,
        "reference_dev_accuracy": 0.93,
    }


def test_choose_e2e_rule(bench):
    shipped, reach, join, both = bench.E2E_GRID

    def choose(rows):
        args = argparse.Namespace(base_epochs=4)
        return bench.choose_e2e(args, {}, [0, 1, 2], {"rows": rows})["chosen"]

    def rows(**devs):
        out = []
        for name, setting in (("shipped", shipped), ("reach", reach), ("join", join)):
            for seed, dev in enumerate(devs.get(name, (0.80, 0.80, 0.80))):
                out.append(e2e_row(seed, setting, dev))
        return out + [e2e_row(s, both, 0.5) for s in range(3)]

    # 0.6 points higher on the mean and higher on every seed: it replaces the shipped settings
    assert choose(rows(reach=(0.806, 0.806, 0.806))) == reach
    # 0.4 points: not enough
    assert choose(rows(reach=(0.804, 0.804, 0.804))) == shipped
    # higher on the mean, lower on one seed
    assert choose(rows(reach=(0.83, 0.83, 0.799))) == shipped
    # the best is the one judged: join beats reach, and join is lower on a seed
    assert choose(rows(reach=(0.81, 0.81, 0.81), join=(0.85, 0.85, 0.79))) == shipped
    # too noisy to be eligible, however accurate
    noisy = [
        {**r, "noise_share": 0.11} if r["setting"] == reach else r
        for r in rows(reach=(0.9, 0.9, 0.9), join=(0.81, 0.81, 0.81))
    ]
    assert choose(noisy) == join
    # costs the old intents 0.4 points
    worse_old = [
        {**r, "old_accuracy": 0.946} if r["setting"] == reach else r
        for r in rows(reach=(0.81, 0.81, 0.81))
    ]
    assert choose(worse_old) == shipped
