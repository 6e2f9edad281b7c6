"""scripts/bench_discover.py's floors: each one's verdict and its margin, the worst seed's
distance from the bar (a floor met with no margin must say so)."""

from __future__ import annotations

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
