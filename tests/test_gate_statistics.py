"""The gate's statistics and rules on paired predictions built here (no models).

Binomial tails, McNemar, Holm, the Bonett-Price and Wilson intervals are checked against
sums and formulas worked out by hand (and against scipy where it is installed); the rules are
checked on constructed predictions, because "one flip in 30 does not fail" and "nine one-way
flips in 30 among 14 intents do" are statistical properties of the rules, not of a model.
"""

from __future__ import annotations

import math
import random
import re
from fractions import Fraction

import evaluate
import pytest

from intent_ci.config import GateConfig, gate_config_from_dict, load_gate_config
from intent_ci.data import read_golden
from intent_ci.errors import IntentCIError
from intent_ci.gate import judge, paired_statistics
from intent_ci.metrics import INTENT_REGRESSION
from intent_ci.metrics.intent_regression.intent_regression import (
    binom_cdf,
    binom_sf,
    compare,
    holm_adjust,
    mcnemar_one_sided,
    paired_drop_interval,
    wilson_interval,
)


# ---- exact binomial tails ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "n", "p", "expected"),
    [
        (5, 5, 0.5, 1 / 32),  # all five discordant pairs one way
        (8, 10, 0.5, (45 + 10 + 1) / 1024),  # C(10,8) + C(10,9) + C(10,10)
        (10, 12, 0.5, (66 + 12 + 1) / 4096),
        (1, 1, 0.5, 0.5),
        (0, 10, 0.5, 1.0),
        (11, 10, 0.5, 0.0),
        (2, 4, 0.3, 1 - 0.7**4 - 4 * 0.3 * 0.7**3),  # 0.3483
        # 20 * .2^3 * .8^3 + 15 * .2^4 * .8^2 + 6 * .2^5 * .8 + .2^6
        (3, 6, 0.2, 0.08192 + 0.01536 + 0.001536 + 0.000064),
        (1, 3, 0.0, 0.0),
        (3, 3, 1.0, 1.0),
    ],
)
def test_binom_sf_hand_computed(k, n, p, expected):
    assert binom_sf(k, n, p) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_binom_cdf_is_the_complement():
    assert binom_cdf(1, 4, 0.3) == pytest.approx(0.7**4 + 4 * 0.3 * 0.7**3, rel=1e-12)
    for n in (1, 7, 30):
        for k in range(n + 1):
            assert binom_cdf(k - 1, n, 0.37) + binom_sf(k, n, 0.37) == pytest.approx(1.0)


def test_binom_sf_large_n_is_exact_and_the_log_path_agrees():
    n = 3000
    exact = Fraction(sum(math.comb(n, i) for i in range(1600, n + 1)), 2**n)
    assert binom_sf(1600, n) == float(exact)
    # Symmetry of Binomial(n, 1/2): P(X >= k) + P(X >= n - k + 1) = 1.
    assert binom_sf(1600, n) + binom_sf(n - 1600 + 1, n) == pytest.approx(1.0, abs=1e-15)
    # The log-space path (any p other than 1/2) agrees with the exact one next to 1/2.
    assert binom_sf(1600, n, 0.5 + 1e-13) == pytest.approx(float(exact), rel=1e-8)
    # A tail below the smallest float underflows to 0 instead of raising.
    assert binom_sf(2990, n) == 0.0


def test_binom_sf_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for n, p in [(12, 0.5), (30, 0.5), (57, 0.13), (200, 0.71)]:
        for k in range(0, n + 2, max(1, n // 9)):
            assert binom_sf(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9)


def test_binom_sf_rejects_bad_arguments():
    with pytest.raises(ValueError, match="p must be in"):
        binom_sf(1, 3, 1.5)
    with pytest.raises(ValueError, match="n must be"):
        binom_sf(1, -1)


def test_mcnemar_one_sided():
    assert mcnemar_one_sided(0, 0) == 1.0  # no discordant pair: no evidence
    assert mcnemar_one_sided(1, 0) == 0.5  # one flip: a coin toss
    assert mcnemar_one_sided(10, 2) == pytest.approx(79 / 4096)
    assert mcnemar_one_sided(2, 10) == pytest.approx(1 - 13 / 4096)  # P(X >= 2 | 12)
    assert mcnemar_one_sided(9, 0) == 0.5**9


def test_holm_hand_computed():
    adjusted = holm_adjust({"a": 0.01, "b": 0.04, "c": 0.03})
    # sorted: a (x3) = 0.03, c (x2) = 0.06, b (x1) = 0.04 -> monotone 0.06
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm_adjust({"a": 0.5, "b": 0.9}) == {"a": 1.0, "b": 1.0}
    assert holm_adjust({}) == {}


def test_bonett_price_interval_hand_computed():
    # broken 10, fixed 2, n 100: p12 = 11/102, p21 = 3/102, centre 8/102,
    # se = sqrt((14/102 - (8/102)^2) / 102) = 0.035852, z(0.95) = 1.644854.
    low, high = paired_drop_interval(10, 2, 100, 0.90)
    assert low == pytest.approx(0.019459, abs=2e-5)
    assert high == pytest.approx(0.137403, abs=2e-5)
    # No discordant pair at all still gives an interval around 0, not a point.
    low, high = paired_drop_interval(0, 0, 30, 0.90)
    assert low < 0 < high and low == pytest.approx(-high)
    assert paired_drop_interval(0, 0, 0, 0.9) == (None, None)


def test_bonett_price_interval_covers_at_its_level():
    """Simulated paired tables: the 90% interval holds the true drop about 90% of the time."""
    rng = random.Random(0)
    p_broken, p_fixed, n, sims = 0.05, 0.02, 200, 2000
    hits = 0
    for _ in range(sims):
        cells = rng.choices(["broken", "fixed", "same"], [p_broken, p_fixed, 0.93], k=n)
        low, high = paired_drop_interval(cells.count("broken"), cells.count("fixed"), n, 0.90)
        hits += low <= p_broken - p_fixed <= high
    assert 0.87 <= hits / sims <= 0.94


def test_wilson_interval_hand_computed():
    low, high = wilson_interval(8, 10, 0.95)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 0, 0.9) == (None, None)


# ---- the metric --------------------------------------------------------------------------------
def test_metric_loads_with_evaluate_and_pairs_examples():
    metric = evaluate.load(INTENT_REGRESSION)
    refs = ["a", "a", "a", "b", "b", "new"]
    base = ["a", "a", "b", "b", "b", "a"]
    cand = ["a", "new", "a", "new", "b", "new"]
    out = metric.compute(
        predictions=cand, baseline_predictions=base, references=refs, old_intents=["a", "b"]
    )
    assert out == compare(cand, refs, base, old_intents=["a", "b"])
    old = out["old"]
    assert (old["n"], old["baseline_correct"], old["candidate_correct"]) == (5, 4, 3)
    assert (old["broken"], old["fixed"]) == (2, 1)
    assert old["drop"] == pytest.approx(1 / 5)
    assert old["p_value"] == pytest.approx(binom_sf(2, 3))
    assert out["per_intent"]["a"]["broken"] == 1 and out["per_intent"]["a"]["fixed"] == 1
    assert out["new"]["per_intent"] == {"new": {"n": 1, "correct": 1, "accuracy": 1.0}}
    assert out["confusions"] == [
        {"true": "a", "predicted": "new", "count": 1, "to_new_intent": True, "rejected": False},
        {"true": "b", "predicted": "new", "count": 1, "to_new_intent": True, "rejected": False},
    ]
    assert out["broken_to_new_intents"] == 2 and out["broken_rejected"] == 0
    assert out["confidence"] == pytest.approx(0.9)


def test_metric_refuses_unpaired_input():
    with pytest.raises(ValueError, match="paired one to one"):
        compare(["a"], ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="correction"):
        compare(["a"], ["a"], ["a"], correction="bonferroni")


# ---- the rules on constructed predictions ------------------------------------------------------
def _world(intents: int = 14, per_intent: int = 30, new: int = 2):
    """References, and a baseline that gets everything right; intents i00.., new ones n0.."""
    old = [f"i{k:02d}" for k in range(intents)]
    refs = [i for i in old for _ in range(per_intent)]
    refs += [f"n{k}" for k in range(new) for _ in range(per_intent)]
    return old, refs, list(refs)


def _flip(preds: list[str], refs: list[str], intent: str, count: int, to: str = "n0") -> list[str]:
    out, left = list(preds), count
    for i, ref in enumerate(refs):
        if ref == intent and left:
            out[i], left = to, left - 1
    return out


def _verdict(cand, base, refs, old, cfg=None):
    cfg = cfg or GateConfig()
    stats = paired_statistics(cand, base, refs, old, cfg)
    return judge(stats, cfg)


def test_one_flipped_utterance_in_a_30_example_intent_passes_under_defaults():
    old, refs, base = _world()
    for intent in old:
        for to in ("n0", old[0] if intent != old[0] else old[1]):
            verdict, rules, rows = _verdict(_flip(base, refs, intent, 1, to), base, refs, old)
            assert verdict == "pass", [r.summary for r in rules]
            row = next(r for r in rows if r["intent"] == intent)
            assert row["drop_points"] == pytest.approx(100 / 30) and row["p_value"] == 0.5


def test_one_flip_when_the_old_intents_are_a_single_30_example_intent():
    """3.3 points is more than max_drop (2), but one discordant pair is no evidence: pass."""
    old, refs, base = _world(intents=1, new=1)
    verdict, rules, _ = _verdict(_flip(base, refs, "i00", 1), base, refs, old)
    assert verdict == "pass"
    assert rules[0].details["drop_larger_than_max"] and not rules[0].details["significant"]


def test_per_intent_rule_needs_nine_one_way_flips_of_30_among_14_intents():
    """Holm over 14 intents: 0.5^9 * 14 = 0.027 <= 0.05 fails, 0.5^8 * 14 = 0.055 does not."""
    old, refs, base = _world()
    cfg = GateConfig(max_drop=100)  # isolate the per-intent rule
    verdict, rules, _ = _verdict(_flip(base, refs, "i05", 8), base, refs, old, cfg)
    assert verdict == "pass" and rules[1].status == "pass"
    verdict, rules, rows = _verdict(_flip(base, refs, "i05", 9), base, refs, old, cfg)
    assert verdict == "fail" and rules[1].status == "fail" and rules[1].intents == ["i05"]
    assert rows[0]["intent"] == "i05" and rows[0]["p_adjusted"] == pytest.approx(14 * 0.5**9)
    # Without the correction 5 one-way flips (16.7 points, p = 0.031) already fail.
    loose = GateConfig(max_drop=100, per_intent_correction="none")
    assert _verdict(_flip(base, refs, "i05", 5), base, refs, old, loose)[0] == "fail"
    assert _verdict(_flip(base, refs, "i05", 4), base, refs, old, loose)[0] == "pass"


def test_per_intent_rule_needs_the_drop_to_be_large_too():
    """Many utterances make a 5-point drop significant; it stays below per_intent_max_drop."""
    old, refs, base = _world(intents=2, per_intent=2000)
    cand = _flip(base, refs, "i00", 100)  # 5 points, p = 0.5^100
    verdict, rules, rows = _verdict(cand, base, refs, old, GateConfig(max_drop=100))
    assert rows[0]["p_adjusted"] < 1e-20 and verdict == "pass"


def test_old_accuracy_rule_combines_size_and_significance():
    old, refs, base = _world(intents=10, per_intent=1000)  # 10,000 old utterances
    # 1 point, hugely significant: within max_drop, passes.
    cand = base
    for intent in old:
        cand = _flip(cand, refs, intent, 10)
    verdict, rules, _ = _verdict(cand, base, refs, old)
    assert rules[0].details["significant"] and rules[0].status == "pass"
    # 3 points and significant: fails, and the report says why.
    cand = base
    for intent in old:
        cand = _flip(cand, refs, intent, 30)
    verdict, rules, _ = _verdict(cand, base, refs, old)
    assert verdict == "fail" and rules[0].status == "fail"
    assert "larger than 2 points and significant at 0.05" in rules[0].summary
    low, high = rules[0].details["ci_points"]
    assert low > 2 and low < 3 < high


def test_fixed_utterances_offset_broken_ones():
    """Paired: 6 broken and 6 fixed in one intent is no drop at all."""
    old, refs, base = _world()
    base = _flip(base, refs, "i03", 6, to="i04")  # the baseline gets 6 wrong
    cand = list(refs)
    start = refs.index("i03")
    for i in range(start + 6, start + 12):  # the candidate gets 6 others wrong instead
        cand[i] = "n1"
    verdict, rules, rows = _verdict(cand, base, refs, old, GateConfig(per_intent_correction="none"))
    row = next(r for r in rows if r["intent"] == "i03")
    assert (row["broken"], row["fixed"], row["drop_points"]) == (6, 6, 0)
    assert verdict == "pass"


def test_new_intent_rule():
    old, refs, base = _world(intents=2, new=2)
    cand = _flip(_flip(base, refs, "n0", 7, "i00"), refs, "n1", 6, "i01")  # 47/60 = 78.3%
    verdict, rules, _ = _verdict(cand, base, refs, old)
    assert rules[3].name == "new_intents" and rules[3].status == "fail"
    assert rules[3].intents == ["n0"]  # below 80% on its own; n1 is exactly 80%
    cand = _flip(base, refs, "n0", 6, "i00")
    assert _verdict(cand, base, refs, old)[1][3].status == "pass"


def test_one_new_intent_at_zero_fails_although_the_pooled_figure_passes():
    """Ten new intents, one of them entirely wrong: 90% pooled passes min_new_accuracy, the
    per-intent floor fails it, and the pooled figure stays in the rule's details."""
    old, refs, base = _world(intents=2, new=10)
    cand = _flip(base, refs, "n3", 30, "i00")
    verdict, rules, _ = _verdict(cand, base, refs, old)
    new_rule = rules[3]
    assert verdict == "fail" and new_rule.status == "fail" and new_rule.intents == ["n3"]
    assert new_rule.details["accuracy"] == pytest.approx(0.9)
    assert new_rule.details["below_floor"] == ["n3"]
    assert "n3 (0.0% of 30)" in new_rule.summary and "90.0% pooled" in new_rule.summary
    # The floor is a config field: at 0 the same release passes.
    assert _verdict(cand, base, refs, old, GateConfig(min_new_intent_accuracy=0.0))[0] == "pass"


def test_a_new_intent_with_too_few_utterances_is_named_not_judged():
    old, refs, base = _world(intents=2, new=2)
    refs = [r for i, r in enumerate(refs) if r != "n1" or i % 10 == 0]  # n1: 3 utterances left
    base = list(refs)
    cand = [("i00" if r == "n1" else r) for r in refs]  # n1 entirely wrong, but only 3 of them
    verdict, rules, _ = _verdict(cand, base, refs, old)
    new_rule = rules[3]
    assert verdict == "pass" and new_rule.status == "pass"
    assert new_rule.details["too_few"] == ["n1"] and new_rule.details["below_floor"] == []
    assert "not judged on their own, fewer than 10 test utterances: n1 (3)" in new_rule.summary
    # With a lower minimum it is judged, and fails.
    cfg = GateConfig(min_new_intent_utterances=3)
    verdict, rules, _ = _verdict(cand, base, refs, old, cfg)
    assert verdict == "fail" and rules[3].intents == ["n1"]


def test_non_inferiority_needs_the_upper_bound_below_max_drop():
    """A 1-point drop on 300 utterances: the default rule passes it (within max_drop);
    non_inferiority cannot show it is below 2 points on so few. On 30,000 it can."""
    small_old, small_refs, small_base = _world(intents=10, per_intent=30, new=0)
    cand = _flip(small_base, small_refs, "i00", 3)
    strict = GateConfig(decision="non_inferiority")
    verdict, rules, _ = _verdict(cand, small_base, small_refs, small_old)
    assert verdict == "pass" and rules[0].details["decision"] == "significant"
    verdict, rules, _ = _verdict(cand, small_base, small_refs, small_old, strict)
    low, high = rules[0].details["ci_points"]
    assert high > 2 and verdict == "fail" and rules[0].status == "fail"
    assert "upper bound" in rules[0].summary and "not below 2 points" in rules[0].summary
    old, refs, base = _world(intents=10, per_intent=3000, new=0)
    cand = base
    for intent in old:
        cand = _flip(cand, refs, intent, 30)  # 1 point
    verdict, rules, _ = _verdict(cand, base, refs, old, strict)
    assert rules[0].details["ci_points"][1] < 2 and verdict == "pass"


def test_drop_decision_is_the_same_function_for_both_rules():
    from intent_ci.gate import drop_decision

    cfg = GateConfig()
    assert drop_decision(2.5, 3.0, 0.01, 2.0, cfg)[0] is True
    assert drop_decision(2.5, 3.0, 0.2, 2.0, cfg)[0] is False  # large, not significant
    assert drop_decision(1.5, 2.5, 1e-9, 2.0, cfg)[0] is False  # significant, within budget
    ni = GateConfig(decision="non_inferiority")
    assert drop_decision(0.0, 2.0, 1.0, 2.0, ni)[0] is True  # bound must be strictly below
    assert drop_decision(1.9, 1.99, 0.0, 2.0, ni)[0] is False
    # upper_bound: significant AND the bound not below the budget, whatever the point estimate.
    ub = GateConfig(decision="upper_bound")
    assert drop_decision(1.5, 2.5, 1e-9, 2.0, ub)[0] is True
    assert drop_decision(1.5, 2.5, 0.2, 2.0, ub)[0] is False  # bound high, not significant
    assert drop_decision(1.5, 1.9, 1e-9, 2.0, ub)[0] is False  # significant, bound below
    assert drop_decision(1.5, 2.0, 0.05, 2.0, ub)[0] is True  # both at their edges
    # The drift rule passes its own decision, whatever cfg.decision says.
    assert drop_decision(1.5, 2.5, 1e-9, 2.0, cfg, "non_inferiority")[0] is True
    assert drop_decision(1.5, 2.5, 1e-9, 2.0, cfg, "upper_bound")[0] is True
    assert drop_decision(1.5, 2.5, 1e-9, 2.0, ni, "significant")[0] is False


def test_confusions_list_where_broken_utterances_went():
    old, refs, base = _world(intents=3)
    cand = _flip(_flip(base, refs, "i00", 4, "n1"), refs, "i02", 2, "i01")
    _, rules, _ = _verdict(cand, base, refs, old)
    assert rules[4].status == "info"
    assert rules[4].summary.startswith("4 of 6 newly broken old-intent utterances went to new")
    assert "i00 -> n1 (new) x4" in rules[4].summary


def test_a_rejected_utterance_is_not_one_that_went_to_a_new_intent():
    """The gate predicts `oos` for an utterance the candidate rejects; that is not a new intent
    (it was reported as 'i00 -> oos (new)' and counted among those that went to new intents)."""
    old, refs, base = _world(intents=3)
    cand = _flip(_flip(base, refs, "i00", 3, "oos"), refs, "i01", 2, "n1")
    _, rules, _ = _verdict(cand, base, refs, old)
    summary = rules[4].summary
    assert summary.startswith(
        "2 of 5 newly broken old-intent utterances went to new intents, 3 rejected as out of "
        "scope; top: i00 -> oos x3, i01 -> n1 (new) x2"
    ), summary
    assert rules[4].details == {"broken": 5, "to_new_intents": 2, "rejected": 3}


# ---- gate config ---------------------------------------------------------------------------------
def test_gate_config_defaults_and_overrides(tmp_path):
    assert GateConfig() == load_gate_config(None)
    path = tmp_path / "gate.yaml"
    path.write_text("gate:\n  max_drop: 1\n  per_intent_correction: none\n", encoding="utf-8")
    cfg = load_gate_config(path)
    assert cfg.max_drop == 1.0 and cfg.per_intent_correction == "none" and cfg.alpha == 0.05


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gate": {"max_dorp": 1}}, r"unknown key `gate.max_dorp`. Did you mean `max_drop`\?"),
        ({"max_drop": 1}, r"unknown section `max_drop`. Put `max_drop` under a `gate:` section"),
        ({"gaet": {}}, r"unknown section `gaet`. Did you mean `gate`\?"),
        ({"gate": {"alpha": 0.7}}, r"config field `gate.alpha`: must be in \(0, 0.5\), got 0.7"),
        ({"gate": {"alpha": "low"}}, r"`gate.alpha`: expected a number, got 'low'"),
        (
            {"gate": {"min_new_accuracy": 80}},
            r"config field `gate.min_new_accuracy`: must be a fraction in \[0, 1\] \(0.8 = 80%\), got 80",
        ),
        (
            {"gate": {"per_intent_correction": "bh"}},
            r"config field `gate.per_intent_correction`: expected one of holm, none; got 'bh'",
        ),
        (
            {"gate": {"decision": "strict"}},
            r"config field `gate.decision`: expected one of significant, non_inferiority, upper_bound; got 'strict'",
        ),
        (
            {"gate": {"drift_decision": "always"}},
            r"config field `gate.drift_decision`: expected one of significant, non_inferiority, upper_bound; got 'always'",
        ),
        (
            {"gate": {"max_drift": -1}},
            r"config field `gate.max_drift`: must be in \[0, 100\] \(percentage points\), got -1",
        ),
        (
            {"gate": {"min_new_intent_utterances": 0}},
            r"config field `gate.min_new_intent_utterances`: must be >= 1, got 0",
        ),
        ({"gate": [1]}, r"section `gate` must be a mapping"),
        # an empty list or false is no mapping either (they used to mean "no overrides")
        ({"gate": []}, r"section `gate` must be a mapping"),
        ({"gate": False}, r"section `gate` must be a mapping"),
        ({"gate": {"max_drop": float("inf")}}, r"config field `gate.max_drop`: must be a finite"),
    ],
)
def test_gate_config_errors(values, message):
    with pytest.raises(IntentCIError, match=r"^gate.yaml: " + message):
        gate_config_from_dict(values, source="gate.yaml")


def test_gate_config_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "gate.yaml"
    path.write_text("gate:\n  max_drop: 1\n  alpha: [0.05\n", encoding="utf-8")
    with pytest.raises(IntentCIError, match=rf"^{re.escape(str(path))}:4: not valid YAML"):
        load_gate_config(path)


# ---- golden YAML -----------------------------------------------------------------------------------
def test_read_golden(tmp_path):
    path = tmp_path / "golden.yaml"
    path.write_text(
        '# must stay right\n"where is my refund": refund_status\n\ni lost my card: card_lost\n',
        encoding="utf-8",
    )
    golden = read_golden(path)
    assert [(g.text, g.intent, g.line) for g in golden] == [
        ("where is my refund", "refund_status", 2),
        ("i lost my card", "card_lost", 4),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '"a": card_lost\n"b: card_lost\n',
            r":3: not valid YAML: found unexpected end of stream \(while scanning a quoted scalar "
            r"at line 2\)$",
        ),
        ("- a: card_lost\n", r":1: expected a mapping of `\"utterance\": intent` lines"),
        ('"a": card_lost\n"b": [card_lost, refund]\n', r":2: the intent of 'b' must be a single"),
        ('"a": card_lost\n"b": Card Lost\n', r":2: invalid intent name 'Card Lost'"),
        ('"a": card_lost\n"b": 12\n', r":2: the intent of 'b' must be a single intent name"),
        ('"x y": card_lost\n"b": card_lost\n" X  Y ": card_lost\n', r":3: utterance 'X  Y' is "),
        ("# nothing\n", r": no golden utterances"),
        ('"": card_lost\n', r":1: empty utterance"),
        ("1: card_lost\n", r":1: the utterance must be a string"),
    ],
)
def test_golden_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "golden.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(IntentCIError, match="^" + re.escape(str(path)) + message):
        read_golden(path)


def _noisy_candidate(rng, refs, p_broken, p_fixed):
    """A baseline right on 90% of `refs`, and a candidate that breaks / fixes at given rates."""
    base, cand = [], []
    for ref in refs:
        b = ref if rng.random() < 0.9 else "other"
        u = rng.random()
        if b == ref:
            c = "other" if u < p_broken / 0.9 else ref
        else:
            c = ref if u < p_fixed / 0.1 else b
        base.append(b)
        cand.append(c)
    return base, cand


def test_tests_hold_their_level_on_noise_and_catch_a_real_drop():
    """Simulated releases: symmetric flips (no real change) are flagged at most alpha of the time,
    overall and for any of 14 intents (Holm); a real 5-point drop is flagged almost always."""
    rng = random.Random(1)
    old, refs, _ = _world(intents=14, per_intent=30, new=0)
    trials, overall, any_intent, caught = 400, 0, 0, 0
    for _ in range(trials):
        base, cand = _noisy_candidate(rng, refs, p_broken=0.03, p_fixed=0.03)
        out = compare(cand, refs, base, old_intents=old)
        overall += out["old"]["p_value"] <= 0.05
        any_intent += min(r["p_adjusted"] for r in out["per_intent"].values()) <= 0.05
        base, cand = _noisy_candidate(rng, refs, p_broken=0.06, p_fixed=0.01)
        caught += compare(cand, refs, base, old_intents=old)["old"]["p_value"] <= 0.05
    assert overall / trials <= 0.06  # exact McNemar is conservative: below 0.05 up to MC noise
    assert any_intent / trials <= 0.06
    assert caught / trials >= 0.9


# ---- the recorded P1 chain under the default rules ------------------------------------------------
def _paired_from_counts(intents: int, baseline_accuracy: float, broken: int, fixed: int):
    """Predictions with these paired counts, 30 utterances per old intent, flips spread evenly."""
    old = [f"i{k:03d}" for k in range(intents)]
    refs = [i for i in old for _ in range(30)]
    n = len(refs)
    base_right = round(baseline_accuracy * n)
    # Interleave intents so that consecutive positions belong to different intents.
    order = sorted(range(n), key=lambda i: (i % 30, i // 30))
    base, cand = list(refs), list(refs)
    wrong_in_base = order[base_right:]
    right_in_base = order[:base_right]
    for i in wrong_in_base:
        base[i] = cand[i] = "x"
    for i in right_in_base[:broken]:
        cand[i] = "x"
    for i in wrong_in_base[:fixed]:
        cand[i] = refs[i]
    return cand, base, refs, old


def test_default_rules_fail_the_recorded_p1_chain_only_through_drift():
    """scripts/results/gate_incremental.json: every P1 intent-ci release passes against its
    parent, and v6 has lost 2.13 points on v1's intents. Under the default GateConfig (what the
    shipped workflow runs without a gate.yaml) each parent check passes and the drift rule,
    against the line's base v1, fails v6."""
    import json
    from pathlib import Path

    from intent_ci.gate import rule_drift, rule_old_accuracy

    results = Path(__file__).resolve().parents[1] / "scripts" / "results" / "gate_incremental.json"
    rows = [
        c
        for c in json.loads(results.read_text(encoding="utf-8"))["checks"]
        if c["protocol"] == "P1" and c["method"] == "intent-ci"
    ]
    cfg = GateConfig()
    for row in rows:
        cand, base, refs, old = _paired_from_counts(
            row["old_intents"], row["old_baseline_accuracy"], row["broken"], row["fixed"]
        )
        stats = paired_statistics(cand, base, refs, old, cfg)
        assert (stats["old"]["broken"], stats["old"]["fixed"]) == (row["broken"], row["fixed"])
        assert 100 * stats["old"]["drop"] == pytest.approx(row["old_drop_points"])
        if row["against"] == "parent":
            assert rule_old_accuracy(stats, cfg).status == "pass", row
        else:
            assert (row["candidate"], row["baseline"]) == ("v6", "v1")
            drift = rule_drift(stats, cfg, "v1")
            assert drift.status == "fail" and "not below 2 points" in drift.summary
            significant = rule_drift(stats, GateConfig(drift_decision="significant"), "v1")
            assert significant.status == "fail" and "larger than 2 points" in significant.summary
    assert sum(r["against"] == "parent" for r in rows) == 5


def test_default_drift_rule_fails_the_rerun_p1_line_that_significant_lets_through():
    """scripts/results/gate_p1_rerun/: the P1 line made with the current recipe. Every release
    passes against its parent; v6 has lost 1.82 points on v1's intents (69 broken, 28 fixed of
    2,250, 90% CI 1.10 to 2.54). That is under max_drift, so a `significant` drift rule passes
    it; the default `drift_decision: upper_bound` fails it: the loss is significant and the data
    cannot show it is below 2 points."""
    import json
    from pathlib import Path

    from intent_ci.gate import rule_drift, rule_old_accuracy

    results = (
        Path(__file__).resolve().parents[1]
        / "scripts"
        / "results"
        / "gate_p1_rerun"
        / "gate_incremental_p1.json"
    )
    rows = json.loads(results.read_text(encoding="utf-8"))["checks"]
    cfg = GateConfig()
    against_base = [r for r in rows if r["against"] != "parent"]
    assert [(r["candidate"], r["baseline"]) for r in against_base] == [("v6", "v1")]
    for row in rows:
        cand, base, refs, old = _paired_from_counts(
            row["old_intents"], row["old_baseline_accuracy"], row["broken"], row["fixed"]
        )
        stats = paired_statistics(cand, base, refs, old, cfg)
        assert (stats["old"]["broken"], stats["old"]["fixed"]) == (row["broken"], row["fixed"])
        if row["against"] == "parent":
            assert rule_old_accuracy(stats, cfg).status == "pass", row
            continue
        assert 100 * stats["old"]["drop"] == pytest.approx(1.82, abs=0.005)
        drift = rule_drift(stats, cfg, "v1")
        assert drift.status == "fail" and drift.details["decision"] == "upper_bound"
        assert drift.details["ci_points"][1] > 2 > drift.details["drop_points"]
        assert "significant at 0.05 and its one-sided 95% upper bound 2.5" in drift.summary
        assert rule_drift(stats, GateConfig(drift_decision="significant"), "v1").status == "pass"


# ---- out-of-scope rows ------------------------------------------------------------------------
def test_out_of_scope_rule_pairs_accept_decisions():
    from intent_ci.gate import rule_out_of_scope

    cfg = GateConfig()
    base = [False] * 100
    # 10 of 100 newly accepted: +10 points, p = 0.5^10: fails.
    cand = [True] * 10 + [False] * 90
    rule = rule_out_of_scope(cand, base, cfg, "v1")
    assert rule.status == "fail" and rule.against == "v1"
    assert (rule.details["newly_accepted"], rule.details["newly_rejected"]) == (10, 0)
    assert rule.details["increase_points"] == pytest.approx(10.0)
    assert rule.details["p_value"] == pytest.approx(0.5**10)
    assert "0.0% -> 10.0% of 100" in rule.summary and "larger than 2 points" in rule.summary
    # Paired: 10 newly accepted and 10 newly rejected is no increase.
    base = [False] * 10 + [True] * 10 + [False] * 80
    cand = [True] * 10 + [False] * 10 + [False] * 80
    assert rule_out_of_scope(cand, base, cfg).status == "pass"
    # 3 of 100: more than the margin, not significant (p = 0.125): passes by default, and fails
    # under non_inferiority (its upper bound is above 2 points); a wider margin passes both.
    cand = [True] * 3 + [False] * 97
    assert rule_out_of_scope(cand, [False] * 100, cfg).status == "pass"
    strict = GateConfig(decision="non_inferiority")
    assert rule_out_of_scope(cand, [False] * 100, strict).status == "fail"
    wide = GateConfig(decision="non_inferiority", max_oos_accept_increase=20)
    assert rule_out_of_scope(cand, [False] * 100, wide).status == "pass"
