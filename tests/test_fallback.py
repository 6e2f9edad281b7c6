"""`init`'s fallback to the head alone when fine-tuning does not beat it on held-out rows.

The head fit is tested alone on fixed embeddings, and the decision on per-row outcomes (a
difference of a few rows is not enough to fall back). End to end on the tiny RoBERTa, the rule
is checked in both directions (forced by `fallback.min_gain` with the significance test off,
and found on its own when a broken fine-tune loses), and a fallen-back release must be exactly
the head-alone candidate it scored: LoRA weights as initialised, the recorded accuracy
reproduced from the written release, and a line whose children train the head alone.
"""

from __future__ import annotations

import pytest
import torch

from intent_ci.cli import main
from intent_ci.config import FallbackConfig, ReleaseConfig, apply_overrides
from intent_ci.errors import IntentCIError
from intent_ci.fallback import FINE_TUNED, HEAD_ONLY, decide
from intent_ci.pipeline import add_intents, init_release
from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier, load_release
from tests.conftest import tiny_overrides


def _rows(both: int, neither: int, only_tuned: int, only_head: int):
    """Per-row correctness of the two candidates with the given counts of each outcome."""
    tuned = [True] * both + [False] * neither + [True] * only_tuned + [False] * only_head
    alone = [True] * both + [False] * neither + [False] * only_tuned + [True] * only_head
    return torch.tensor(tuned), torch.tensor(alone)


def test_a_one_row_difference_does_not_decide_the_release():
    # bench_fallback's 50-per-intent case: 750 held-out rows, the head alone right on one more.
    tuned, alone = _rows(both=720, neither=7, only_tuned=11, only_head=12)
    record = decide(tuned, alone, FallbackConfig(enabled=True))
    assert record["head_only_accuracy"] > record["fine_tuned_accuracy"]
    assert record["p_value"] > 0.4
    assert record["chosen"] == FINE_TUNED
    # Without the test (significance 1) the plain comparison falls back on that one row.
    assert decide(tuned, alone, FallbackConfig(significance=1.0))["chosen"] == HEAD_ONLY


def test_a_clear_loss_falls_back_and_the_record_counts_the_rows():
    tuned, alone = _rows(both=100, neither=10, only_tuned=5, only_head=25)
    record = decide(tuned, alone, FallbackConfig(enabled=True))
    assert (record["only_head_right"], record["only_fine_tuned_right"]) == (25, 5)
    assert record["held_back_examples"] == 140
    assert record["fine_tuned_accuracy"] == pytest.approx(100 * 105 / 140, abs=0.01)
    assert record["p_value"] == pytest.approx(0.000162, abs=1e-6)  # P(X >= 25), X ~ Bin(30, 1/2)
    assert record["chosen"] == HEAD_ONLY
    # A negative min_gain tolerates a loss of that many points, significant or not.
    kept = decide(tuned, alone, FallbackConfig(min_gain=-20.0))
    assert kept["chosen"] == FINE_TUNED


def _config(tiny_backbone, **fallback) -> ReleaseConfig:
    overrides = tiny_overrides(tiny_backbone, fallback={"enabled": True, **fallback})
    return apply_overrides(ReleaseConfig(), overrides, source="test")


def _lora(registry, release):
    model = load_release(registry, release).model
    return {n: p.detach().clone() for n, p in model.encoder.named_parameters() if "lora_" in n}


def _calibration_accuracy(registry, release) -> float:
    """Accuracy of the written release on its own calibration utterances (no threshold)."""
    loaded = load_release(registry, release)
    in_scope, _ = loaded.calibration
    texts = [t for ts in in_scope.values() for t in ts]
    truth = [i for i, ts in in_scope.items() for _ in ts]
    preds = IntentClassifier.load(registry, release).predict(texts, reject=False)
    return 100.0 * sum(p.intent == t for p, t in zip(preds, truth, strict=True)) / len(truth)


def test_a_fallen_back_release_is_the_head_alone_and_its_line_keeps_to_it(
    tmp_path, tiny_backbone, data_dir, capsys
):
    registry = Registry(tmp_path / "adapters")
    # A gain no fine-tune can reach forces the fallback, whatever the two scores are, once the
    # significance test is off.
    init_release(
        data_dir / "base", registry, _config(tiny_backbone, min_gain=100.0, significance=1.0)
    )
    manifest = registry.manifest("v1")
    record = manifest["metrics"]["fallback"]
    assert record["chosen"] == HEAD_ONLY
    assert record["held_back_examples"] == manifest["metrics"]["calibration_examples"] > 0
    assert manifest["config"]["train"]["lora"] is False
    lora = _lora(registry, "v1")
    b_weights = [v for n, v in lora.items() if "lora_B" in n]
    assert b_weights and all(torch.count_nonzero(v) == 0 for v in b_weights)
    # The shipped model is the candidate that was scored: same accuracy on the same rows.
    assert _calibration_accuracy(registry, "v1") == pytest.approx(record["head_only_accuracy"])

    add_intents(data_dir / "new" / "refund_status.txt", registry, "v1")
    child = load_release(registry, "v2")
    assert child.config.train.lora is False
    # The child trained its head (the new row) and left the encoder as the frozen backbone.
    assert all(torch.equal(v, _lora(registry, "v2")[n]) for n, v in lora.items())
    assert child.manifest["metrics"]["train"]["optimizer_steps"] > 0

    # `show` says what happened, on the release that fell back and on its child.
    capsys.readouterr()
    assert main(["show", "--registry", str(registry.root), "v1"]) == 0
    shown = capsys.readouterr().out
    assert "held-out utterances, McNemar p = " in shown
    assert "shipped the head alone on the frozen encoder" in shown
    assert main(["show", "--registry", str(registry.root), "v2"]) == 0
    assert (
        "fallback  head alone on the frozen encoder (train.lora: false)" in capsys.readouterr().out
    )


def test_a_broken_fine_tune_is_caught_on_held_out_rows(tmp_path, tiny_backbone, data_dir):
    registry = Registry(tmp_path / "adapters")
    config = _config(tiny_backbone)
    # A LoRA learning rate this large wrecks the encoder; the head alone (its own rate) does not.
    config = apply_overrides(config, {"train": {"lr": 50.0, "max_grad_norm": 0.0}}, source="test")
    init_release(data_dir / "base", registry, config)
    record = registry.manifest("v1")["metrics"]["fallback"]
    assert record["fine_tuned_accuracy"] < record["head_only_accuracy"]
    assert record["chosen"] == HEAD_ONLY
    assert _calibration_accuracy(registry, "v1") == pytest.approx(record["head_only_accuracy"])


def test_fine_tuning_is_kept_when_it_is_good_enough(tmp_path, tiny_backbone, data_dir):
    registry = Registry(tmp_path / "adapters")
    init_release(data_dir / "base", registry, _config(tiny_backbone, min_gain=-100.0))
    manifest = registry.manifest("v1")
    record = manifest["metrics"]["fallback"]
    assert record["chosen"] == FINE_TUNED
    assert manifest["config"]["train"]["lora"] is True
    assert any(
        torch.count_nonzero(v) > 0 for n, v in _lora(registry, "v1").items() if "lora_B" in n
    )
    assert _calibration_accuracy(registry, "v1") == pytest.approx(record["fine_tuned_accuracy"])


def test_without_calibration_utterances_nothing_is_compared(
    tmp_path, tiny_backbone, data_dir, caplog
):
    registry = Registry(tmp_path / "adapters")
    config = apply_overrides(
        _config(tiny_backbone, min_gain=100.0), {"oos": {"enabled": False}}, source="test"
    )
    with caplog.at_level("WARNING"):
        init_release(data_dir / "base", registry, config)
    manifest = registry.manifest("v1")
    assert manifest["metrics"]["fallback"] is None
    assert manifest["config"]["train"]["lora"] is True
    # The user asked for the check, so the skip is said, not silent.
    assert "fallback.enabled is set but nothing will be compared" in caplog.text
    assert "no calibration utterances" in caplog.text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"head_epochs": 0}, "`fallback.head_epochs`: must be >= 1, got 0"),
        ({"min_gain": 150}, r"`fallback.min_gain`: must be in \[-100, 100\]"),
        ({"significance": 0}, r"`fallback.significance`: must be in \(0, 1\]"),
        ({"nope": 1}, "unknown"),
    ],
)
def test_bad_fallback_config_names_the_field(values, message):
    with pytest.raises(IntentCIError, match=message):
        apply_overrides(ReleaseConfig(), {"fallback": values}, source="test")


def test_init_with_lora_off_trains_the_head_alone(tmp_path, tiny_backbone, data_dir, caplog):
    registry = Registry(tmp_path / "adapters")
    config = apply_overrides(
        ReleaseConfig(), tiny_overrides(tiny_backbone, train={"lora": False}), source="test"
    )
    with caplog.at_level("WARNING"):
        init_release(data_dir / "base", registry, config)
    manifest = registry.manifest("v1")
    assert manifest["config"]["train"]["lora"] is False
    assert manifest["metrics"]["fallback"] is None  # nothing to compare: no fine-tuning ran
    assert "fallback.enabled" not in caplog.text  # not asked for, so not mentioned
    b_weights = [v for n, v in _lora(registry, "v1").items() if "lora_B" in n]
    assert b_weights and all(torch.count_nonzero(v) == 0 for v in b_weights)
    assert manifest["metrics"]["train"]["optimizer_steps"] > 0
