"""scripts/bench_baselines.py and bench_incremental's data conditions, on hand-made data."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    return load_script("bench_incremental"), load_script("bench_baselines")


def test_the_small_condition_is_the_sample_train_rows_draws(scripts):
    bi, _ = scripts
    train = [(f"{intent} utterance {k}", intent) for intent in ("a", "b") for k in range(9)]
    small = bi.condition_rows(train, 4, seed=3)
    assert len(small) == 8 and small == [r for r in train if r in set(small)]  # order kept
    raw = {"train": train}
    drawn = bi.train_rows(raw, ["a", "b"], 4, seed=3)
    assert set(zip(drawn["text"], drawn["intent"], strict=True)) == set(small)
    assert bi.condition_rows(train, None, seed=3) is train
    assert bi.condition_rows(train, 4, seed=4) != small


def test_t_interval(scripts):
    _, bb = scripts
    mean, lo, hi = bb.t_interval([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.303; sd 1; half width 4.303 / sqrt(3)
    assert mean == 2.0 and hi - mean == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert mean - lo == pytest.approx(hi - mean)
    one = bb.t_interval([5.0])
    assert one[0] == 5.0 and math.isnan(one[1])


def test_memory_probe_refits_on_exemplars_and_new_rows(scripts):
    bi, bb = scripts
    rng = np.random.default_rng(0)
    intents = [f"i{k}" for k in range(6)]
    centres = rng.normal(size=(6, 8)) * 3

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(intents, n)
        return centres[np.repeat(np.arange(6), n)] + rng.normal(size=(6 * n, 8)), y

    emb = bb.Embedded.__new__(bb.Embedded)
    emb.x, emb.y = {}, {}
    for s, n in (("train", 30), ("val", 10), ("test", 10)):
        emb.x[s], emb.y[s] = split(n)
    emb.rows = {i: np.flatnonzero(emb.y["train"] == i) for i in intents}
    protocol = bi.Protocol("T", 2, 2, 2, None)
    line = bb.run_line(emb, protocol, intents, None, seed=0, per_intent=5)
    memory = line["methods"]["probe, memory"]
    # The last refit saw 5 exemplars of each of the 4 old intents plus 30 rows of each new one.
    assert memory["rows_last_fit"] == 4 * 5 + 2 * 30
    assert line["methods"]["probe, all data"]["rows_last_fit"] == 6 * 30
    assert memory["per_release"][1] is not None and len(memory["per_release"]) == 3
    assert line["methods"]["probe, all data"]["per_release"][1] is None  # only the final refit
    assert memory["final"]["test"]["accuracy"] > 0.9  # well-separated blobs


def test_the_retrain_of_each_seed_comes_from_bench_oos(scripts, tmp_path):
    _, bb = scripts
    path = tmp_path / "bench_oos.json"
    per_seed = [
        {"seed": s, "release": {"accuracy": {"val": 0.97 + s / 1000, "test": 0.96 + s / 1000}}}
        for s in (0, 1)
    ]
    path.write_text(json.dumps({"per_seed": per_seed}), encoding="utf-8")
    got = bb.retrains_from_bench_oos(str(path), ["P1", "P2"])
    assert sorted(got) == ["full/P1/0", "full/P1/1", "full/P2/0", "full/P2/1"]
    assert got["full/P2/1"]["test"] == pytest.approx(0.961) and got["full/P1/0"]["val"] == 0.97


def test_intent_ci_lines_are_read_by_method(scripts, tmp_path):
    """`NAME=FILE` reads the file's intent-ci line, `NAME=FILE:METHOD` its METHOD line; a
    method the file lacks is an error naming the file."""
    _, bb = scripts

    def line(val, test, drop):
        scores = {"val": {"accuracy": val}, "test": {"accuracy": test}}
        return {
            "releases": [
                {"scores": scores},
                {"scores": scores, "old_intent_drop_points": {"val": drop, "test": drop}},
            ]
        }

    path = tmp_path / "run.json"
    methods = {"intent-ci": line(0.95, 0.94, 0.5), "replay-only": line(0.96, 0.955, 0.25)}
    path.write_text(json.dumps({"seed": 2, "protocols": {"P2": {"methods": methods}}}))
    got = bb.intent_ci_finals([f"a={path}", f"b={path}:replay-only"])
    assert got["a"]["full/P2/2"]["test"] == 0.94
    assert got["b"]["full/P2/2"]["test"] == 0.955
    assert got["b"]["full/P2/2"]["worst_old_intent_drop_points"]["val"] == 0.25
    assert got["b"]["full/P2/2"]["file"] == f"{path}:replay-only"
    with pytest.raises(SystemExit, match=r"run\.json: no 'distill' line"):
        bb.intent_ci_finals([f"c={path}:distill"])


def test_a_report_from_probes_of_another_memory_size_is_refused(scripts, tmp_path, monkeypatch):
    """--report-from reuses fitted probes: their memory must be the --per-intent asked for."""
    _, bb = scripts
    data = tmp_path / "clinc.json"
    data.write_text(json.dumps({"train": [], "val": [], "test": []}))
    previous = tmp_path / "bench_baselines.json"
    previous.write_text(json.dumps({"per_intent": 20, "embed_s": 1.0, "lines": {}}))
    argv = ["bench_baselines.py", "--data", str(data), "--report-from", str(previous)]
    monkeypatch.setattr(sys, "argv", [*argv, "--per-intent", "50"])
    with pytest.raises(SystemExit, match="kept 20 exemplars per intent, not --per-intent 50"):
        bb.main()
