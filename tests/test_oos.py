"""Out-of-scope detection: held-out calibration, the threshold, predict/reject, and bad input."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from intent_ci import pipeline
from intent_ci.calibration import (
    calibrate_release_scores,
    holdout_count,
    holdout_split,
    make_bank,
    read_calibration,
    score_logits,
    score_parts,
    score_rows,
    threshold_for_recall,
)
from intent_ci.cli import main
from intent_ci.config import OOSConfig, ReleaseConfig, apply_overrides
from intent_ci.errors import IntentCIError
from intent_ci.lifecycle import retire_intents
from intent_ci.pipeline import add_intents, init_release
from intent_ci.registry import Registry, sha256_file
from intent_ci.release import IntentClassifier, Prediction, read_bank, write_bank
from intent_ci.replay import read_memory
from tests.conftest import BASE_INTENTS, tiny_overrides

DEFAULT = OOSConfig()
"""The shipped out-of-scope defaults; tests that follow them read them here."""

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OUT_OF_SCOPE = ["hello thanks", "i need it today", "hi can you help me", "the a is it"]


def calibration_texts(registry: Path, release: str) -> list[str]:
    """The release's held-out utterances: at a target below 1 - 1/n, some of them score below
    the threshold by construction, which the tiny random model cannot promise for any other
    text."""
    in_scope, _ = read_calibration(registry / release / "calibration.json")
    return [t for texts in in_scope.values() for t in texts]


@pytest.fixture(scope="module")
def rejecting(tmp_path_factory, trained_registry) -> tuple[Path, str]:
    """v2 recalibrated (trains nothing) at target 0.8 on its own held-out utterances. The tiny
    fixture holds out a few utterances per intent; at the shipped target the threshold is
    their lowest score and none of them is rejected, and these tests need both answers."""
    from intent_ci.lifecycle import calibrate_release

    root = tmp_path_factory.mktemp("rejecting")
    registry = Path(shutil.copytree(trained_registry, root / "adapters"))
    data = root / "calibration"
    data.mkdir()
    in_scope, _ = read_calibration(registry / "v2" / "calibration.json")
    for intent, texts in in_scope.items():
        (data / f"{intent}.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return registry, calibrate_release(data, registry, "v2", target_recall=0.8)


@pytest.fixture
def reg(tmp_path, trained_registry) -> Path:
    return Path(shutil.copytree(trained_registry, tmp_path / "adapters"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


def lines_of(folder: Path) -> dict[str, list[str]]:
    return {
        p.stem: [t.strip() for t in p.read_text(encoding="utf-8").splitlines() if t.strip()]
        for p in sorted(folder.glob("*.txt"))
    }


# ---- the rule itself -----------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("n", [1, 7, 40, 1000])
def test_threshold_is_the_largest_that_reaches_the_target_recall(target, n):
    scores = torch.randn(n, generator=torch.Generator().manual_seed(n))
    threshold = threshold_for_recall(scores, target)
    recall = int((scores >= threshold).sum()) / n
    assert recall >= target
    # Any higher threshold (the next observed score up) accepts fewer than the target.
    higher = scores[scores > threshold]
    if len(higher):
        assert int((scores >= higher.min()).sum()) / n < target


def test_scores_rank_like_their_definitions():
    logits = torch.tensor([[5.0, 0.0, 0.0], [1.0, 0.9, 0.8], [9.0, 8.9, 0.0]])
    assert score_logits(logits, "max_logit").tolist() == [5.0, 1.0, 9.0]
    msp = score_logits(logits, "msp")
    assert msp[0] > msp[2] > msp[1]  # a confident row beats a row split between two intents
    torch.testing.assert_close(score_logits(logits, "energy"), torch.logsumexp(logits, -1))
    with pytest.raises(IntentCIError, match="unknown out-of-scope score 'nope'"):
        score_logits(logits, "nope")


def test_energy_knn_is_the_mean_of_the_standardised_energy_and_nearest_exemplar_cosine():
    # The bank is unit length (and float16-rounded, exact for these values).
    bank = make_bank(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    assert bank.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    logits = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    features = torch.tensor([[3.0, 4.0], [-1.0, 0.0]])  # nearest cosines 0.8 and 0.0
    stats = {"energy": {"mean": math.log(2), "std": 1.0}, "knn": {"mean": 0.6, "std": 0.1}}
    scores = score_rows("energy_knn", logits, features, bank=bank, standardise=stats)
    # Row 1: energy z 0, knn z 2; row 2: energy z 1, knn z -6.
    torch.testing.assert_close(scores, torch.tensor([1.0, -2.5]))
    with pytest.raises(IntentCIError, match="needs pooled features, the exemplar bank"):
        score_rows("energy_knn", logits)
    with pytest.raises(IntentCIError, match="needs pooled features and a bank"):
        score_logits(logits, "energy_knn")


def test_energy_knn_is_standardised_on_in_scope_calibration_rows_only():
    gen = torch.Generator().manual_seed(0)
    logits, features = torch.randn(30, 4, generator=gen), torch.randn(30, 8, generator=gen)
    bank = make_bank(torch.randn(12, 8, generator=gen))
    cfg = OOSConfig(score="energy_knn", target_recall=0.9)
    record = calibrate_release_scores(logits, features, 20, bank, cfg, intents=4)
    parts = score_parts(logits[:20], features[:20], bank)  # rows 20-29 are `oos` rows
    for name, values in parts.items():
        assert record["standardise"][name]["mean"] == pytest.approx(float(values.mean()))
        assert record["standardise"][name]["std"] == pytest.approx(float(values.std()))
    scores = score_rows(
        "energy_knn", logits, features, bank=bank, standardise=record["standardise"]
    )
    assert record["threshold"] == threshold_for_recall(scores[:20], 0.9)
    rejected = (scores[20:] < record["threshold"]).float().mean()
    assert record["oos_recall"] == pytest.approx(float(rejected))
    assert record["bank"] == {"file": "oos_bank.safetensors", "rows": 12}
    # No exemplars (replay memory off): energy, and the record says why.
    fallback = calibrate_release_scores(logits, features, 20, None, cfg, intents=4)
    assert fallback["score"] == "energy" and "no replay exemplars" in fallback["note"]
    assert "standardise" not in fallback and "bank" not in fallback
    assert fallback["threshold"] == threshold_for_recall(score_logits(logits[:20], "energy"), 0.9)
    # A bank that lacks some intents would make their own utterances look out of scope.
    partial = calibrate_release_scores(
        logits, features, 20, bank, cfg, intents=4, without_exemplars=["a", "b"]
    )
    assert partial["score"] == "energy" and "2 intents have no replay exemplars" in partial["note"]


def test_holdout_is_seeded_per_intent_disjoint_and_leaves_enough_to_train():
    texts = [
        f"{intent} utterance {i}" for intent in "abc" for i in range(40 if intent != "c" else 3)
    ]
    intents = [t.split()[0] for t in texts]
    cfg = OOSConfig(holdout_share=0.1, holdout_max_per_intent=3, holdout_min_train=3)
    train, held = holdout_split(texts, intents, cfg, seed="0")
    assert sorted(train + held) == list(range(len(texts))) and not set(train) & set(held)
    held_by = {i: sum(1 for r in held if intents[r] == i) for i in "abc"}
    assert held_by == {"a": 3, "b": 3, "c": 0}  # 10% of 40 = 4, capped at 3; c keeps its 3
    # The choice does not depend on row order, and does depend on the seed.
    order = list(reversed(range(len(texts))))
    _, held_rev = holdout_split([texts[i] for i in order], [intents[i] for i in order], cfg, "0")
    assert sorted(texts[order[r]] for r in held_rev) == sorted(texts[r] for r in held)
    assert holdout_split(texts, intents, cfg, seed="1")[1] != held
    assert holdout_split(texts, intents, OOSConfig(enabled=False), "0")[1] == []
    # holdout_count is the same rule, for a count without the rows (benchmarks' cost arithmetic)
    assert [holdout_count(n, cfg) for n in (40, 3)] == [held_by["a"], held_by["c"]]
    assert holdout_count(40, OOSConfig(enabled=False)) == 0


def test_oos_config_fields_are_checked():
    for values, message in [
        ({"target_recall": 1.0}, r"`oos.target_recall`: must be in \[0.5, 1\)"),
        ({"score": "softmax"}, r"`oos.score`: expected one of max_logit, msp, energy, energy_knn"),
        ({"holdout_share": -0.1}, r"`oos.holdout_share`"),
    ]:
        with pytest.raises(IntentCIError, match=message):
            apply_overrides(ReleaseConfig(), {"oos": values}, source="test")
    # The defaults scripts/bench_oos.py chose on CLINC150 val (its floors check the same pair).
    assert ReleaseConfig().to_dict()["oos"]["target_recall"] == 0.985
    assert ReleaseConfig().to_dict()["oos"]["score"] == "energy_knn"


# ---- calibration in init and add-intent -------------------------------------------------------
def test_calibration_rows_are_held_out_of_training_and_the_threshold_meets_the_target(
    tmp_path, tiny_config, data_dir, monkeypatch
):
    # Record every utterance the training loop is given (the real function runs).
    trained: list[list[str]] = []
    real_tokenize = pipeline.tokenize

    def recording_tokenize(tokenizer, texts, *args, **kwargs):
        trained.append(list(texts))
        return real_tokenize(tokenizer, texts, *args, **kwargs)

    real_train = pipeline.train
    seen_by_train: list[list[str]] = []

    def recording_train(model, tokenized, *args, **kwargs):
        seen_by_train.append(trained[-1])
        return real_train(model, tokenized, *args, **kwargs)

    monkeypatch.setattr(pipeline, "tokenize", recording_tokenize)
    monkeypatch.setattr(pipeline, "train", recording_train)
    registry = tmp_path / "adapters"
    init_release(data_dir / "base", registry, tiny_config)
    add_intents(data_dir / "new" / "refund_status.txt", registry, "v1")

    for release, trained_rows in zip(["v1", "v2"], seen_by_train, strict=True):
        manifest = Registry(registry).manifest(release)
        in_scope, oos = read_calibration(registry / release / "calibration.json")
        held = [t for texts in in_scope.values() for t in texts]
        assert held and oos == []
        assert not set(held) & set(trained_rows), release  # never trained on
        replay = json.loads((registry / release / "replay.json").read_text())["exemplars"]
        assert not set(held) & {t for ts in replay.values() for t in ts}
        record = manifest["oos"]
        assert record["calibration"] == {
            "file": "calibration.json",
            "in_scope": len(held),
            "intents": len(in_scope),
            "oos": 0,
        }
        assert record["score"] == DEFAULT.score and record["target_recall"] == DEFAULT.target_recall
        # The threshold reaches the target recall on the calibration set, as recorded.
        clf = IntentClassifier.load(registry, release)
        scores = clf.scores(*clf.logits_and_features(held))
        recall = int((scores >= record["threshold"]).sum()) / len(scores)
        assert recall >= DEFAULT.target_recall
        assert recall == pytest.approx(record["in_scope_recall"])
        assert manifest["metrics"]["calibration_examples"] == (
            len(held) if release == "v1" else len(in_scope["refund_status"])
        )
    v1_set, _ = read_calibration(registry / "v1" / "calibration.json")
    v2_set, _ = read_calibration(registry / "v2" / "calibration.json")
    # 10% of 40 held out per intent; the child keeps the parent's and adds its new intent's.
    assert {i: len(v) for i, v in v1_set.items()} == dict.fromkeys(BASE_INTENTS, 4)
    assert {i: v2_set[i] for i in v1_set} == v1_set and len(v2_set["refund_status"]) == 4
    source = {t for ts in lines_of(data_dir / "base").values() for t in ts}
    assert set(seen_by_train[0]) == source - {t for ts in v1_set.values() for t in ts}


def test_oos_rows_calibrate_and_never_train(tmp_path, tiny_backbone, data_dir, capsys):
    data = Path(shutil.copytree(data_dir / "base", tmp_path / "data"))
    (data / "oos.txt").write_text("\n".join(OUT_OF_SCOPE) + "\n", encoding="utf-8")
    config = apply_overrides(ReleaseConfig(), tiny_overrides(tiny_backbone), source="test")
    registry = tmp_path / "adapters"
    init_release(data, registry, config)
    manifest = Registry(registry).manifest("v1")
    assert manifest["intents"] == BASE_INTENTS  # `oos` is not an intent
    assert manifest["metrics"]["train_examples"] == 4 * 36
    _, oos = read_calibration(registry / "v1" / "calibration.json")
    assert oos == OUT_OF_SCOPE
    record = manifest["oos"]
    assert record["calibration"]["oos"] == 4
    clf = IntentClassifier.load(registry, "v1")
    rejected = sum(not p.in_scope for p in clf.predict(OUT_OF_SCOPE))
    assert record["oos_recall"] == pytest.approx(rejected / 4)
    code, out, _ = run(capsys, "show", "v1", "--registry", registry)
    assert code == 0 and "4 oos utterances, oos recall" in out


def test_outlier_exposure_trains_on_most_oos_rows_and_measures_on_the_rest(
    tmp_path, tiny_backbone, data_dir
):
    """`train.outlier_weight` > 0: 90% of the `oos` rows train (towards flat logits), the held-back
    rest is the calibration set's out-of-scope part, and the trained rows end flatter than in a
    release that only calibrates on them (the cross-entropy to uniform, over all 20 rows)."""
    data = Path(shutil.copytree(data_dir / "base", tmp_path / "data"))
    oos_rows = [f"{w} {x} please" for w in ("weather", "music", "jokes", "sport") for x in "abcde"]
    (data / "oos.txt").write_text("\n".join(oos_rows) + "\n", encoding="utf-8")
    flatness = {}
    for weight in (0.0, 2.0):
        config = apply_overrides(
            ReleaseConfig(),
            tiny_overrides(tiny_backbone, train={"outlier_weight": weight}),
            source="test",
        )
        registry = tmp_path / f"adapters-{weight:g}"
        init_release(data, registry, config)
        manifest = Registry(registry).manifest("v1")
        _, held = read_calibration(registry / "v1" / "calibration.json")
        assert manifest["metrics"]["train_examples"] == 4 * 36  # in-scope rows only
        if weight:
            assert len(held) == 2 and set(held) < set(oos_rows)  # 10% of 20 held back
            assert manifest["metrics"]["outlier_examples"] == 18
            epochs = manifest["metrics"]["train"]["loss_per_epoch"]
            assert epochs[-1]["outlier"] < epochs[0]["outlier"]
        else:
            assert held == oos_rows and manifest["metrics"]["outlier_examples"] == 0
        assert manifest["oos"]["calibration"]["oos"] == len(held)
        clf = IntentClassifier.load(registry, "v1")
        logits = clf.logits(oos_rows)
        flatness[weight] = float((logits.logsumexp(-1) - logits.mean(-1)).mean())
    assert flatness[2.0] < flatness[0.0]


def test_add_intent_refuses_oos_as_the_intent_to_add(reg, tmp_path, capsys):
    bad = tmp_path / "oos.txt"
    bad.write_text("\n".join(OUT_OF_SCOPE) + "\n", encoding="utf-8")
    before = sorted(p.name for p in reg.iterdir())
    code, _, err = run(capsys, "add-intent", "--data", bad, "--registry", reg)
    assert code == 2
    assert re.fullmatch(
        rf"intent-ci: error: {re.escape(str(bad))}: every row is labelled 'oos'; `oos` is "
        r"reserved for out-of-scope examples, not an intent to train; .*\n",
        err,
    )
    assert sorted(p.name for p in reg.iterdir()) == before


# ---- predict ---------------------------------------------------------------------------------------
def test_predict_rejects_below_the_threshold_and_reject_false_keeps_scores(rejecting):
    registry, release = rejecting
    clf = IntentClassifier.load(registry, release)
    texts = [*calibration_texts(registry, release), *OUT_OF_SCOPE, "", "   "]
    with_rule = clf.predict(texts)
    without = clf.predict(texts, reject=False)
    scores = clf.scores(*clf.logits_and_features(texts[:-2])).tolist()
    for p, q, s in zip(with_rule, without, scores, strict=False):
        assert p.intent == q.intent and p.label == p.intent
        assert p.score == q.score == pytest.approx(s)
        assert p.in_scope == (s >= clf.threshold) and q.in_scope
    # Empty and whitespace-only utterances: out of scope, not scored, whatever `reject` says.
    for p in (*with_rule[-2:], *without[-2:]):
        assert p == Prediction(intent="", confidence=0.0, in_scope=False, score=None)
    assert any(not p.in_scope for p in with_rule[:-2]) and any(p.in_scope for p in with_rule)
    features = clf.features(texts[:3])
    assert features.shape == (3, 32)
    with pytest.raises(IntentCIError, match="utterance 2: expected a string, got int"):
        clf.predict(["fine", 3])


def test_prediction_label_is_a_read_only_alias():
    p = Prediction("card_lost", 0.9, True, 12.0)
    assert p.label == "card_lost"
    with pytest.raises(AttributeError):
        p.label = "other"


def test_predict_cli_prints_the_fallback_and_json_fields(rejecting, capsys):
    registry, release = rejecting
    clf = IntentClassifier.load(registry, release)
    texts = calibration_texts(registry, release)
    expected = clf.predict(texts)
    assert any(not p.in_scope for p in expected) and any(p.in_scope for p in expected)
    code, out, _ = run(capsys, "predict", *texts, "--release", release, "--registry", registry)
    assert code == 0
    for line, p in zip(out.splitlines(), expected, strict=True):
        if p.in_scope:
            assert line.startswith(p.intent)
        else:
            assert line.startswith(f"(out of scope)           score {p.score:.3f} <")
            assert f"(best {p.intent} {p.confidence:.3f})" in line
    code, out, _ = run(
        capsys, "predict", *texts, "--json", "--release", release, "--registry", registry
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert [set(r) for r in rows] == [{"text", "intent", "confidence", "in_scope", "score"}] * len(
        texts
    )
    assert [r["in_scope"] for r in rows] == [p.in_scope for p in expected]
    assert [r["score"] for r in rows] == [round(p.score, 4) for p in expected]


def test_predict_bad_input_names_the_utterance_or_the_line(trained_registry, tmp_path, capsys):
    code, _, err = run(capsys, "predict", "fine", "  ", "--registry", trained_registry)
    assert code == 2
    assert err == (
        "intent-ci: error: utterance 2 on the command line is empty; expected an utterance "
        "to classify\n"
    )
    batch = tmp_path / "batch.txt"
    batch.write_text("card lost\n\nrefund\n", encoding="utf-8")
    code, _, err = run(capsys, "predict", "--input", batch, "--registry", trained_registry)
    assert code == 2
    assert err == (
        f"intent-ci: error: {batch}:2: empty utterance; expected one utterance per line "
        "(remove blank lines)\n"
    )
    jsonl = tmp_path / "batch.jsonl"
    jsonl.write_text('{"text": "card lost"}\n{"text": " "}\n', encoding="utf-8")
    code, _, err = run(capsys, "predict", "--input", jsonl, "--registry", trained_registry)
    assert code == 2 and f"{jsonl}:2: empty utterance" in err


def test_over_long_utterances_are_truncated_with_a_counted_warning(
    trained_registry, tmp_path, capsys, caplog
):
    caplog.set_level(logging.WARNING, logger="intent_ci")
    clf = IntentClassifier.load(trained_registry, "v2")
    long = " ".join(["card lost"] * 40)  # 80 words, max_length is 16 tokens
    clf.predict([long, "card lost", long])
    assert "2 of 3 utterances are longer than 16 tokens (model.max_length) and were truncated" in (
        caplog.text
    )
    # A server calls one classifier batch after batch: it warns once, then counts.
    caplog.clear()
    clf.predict([long])
    assert "longer than" not in caplog.text and clf.truncated == 3
    batch = tmp_path / "long.txt"
    batch.write_text(" ".join(["card lost"] * 300) + "\nrefund\n", encoding="utf-8")  # > max_chars
    caplog.clear()
    code, out, _ = run(capsys, "predict", "--input", batch, "--registry", trained_registry)
    assert code == 0 and len(out.splitlines()) == 2
    assert "1 of 2 utterances are longer than 16 tokens" in caplog.text


# ---- releases made before out-of-scope detection ------------------------------------------------
def strip_calibration(folder: Path) -> None:
    """Make `folder` look like a release written before out-of-scope detection existed."""
    (folder / "calibration.json").unlink()
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.pop("oos")
    manifest["config"].pop("oos")
    manifest["files"].pop("calibration.json")
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def test_a_release_without_calibration_loads_predicts_in_scope_and_says_so(
    reg, data_dir, capsys, caplog
):
    caplog.set_level(logging.WARNING, logger="intent_ci")
    held = calibration_texts(reg, "v2")
    for release in ("v1", "v2"):
        strip_calibration(reg / release)
    assert run(capsys, "verify", "--all", "--registry", reg)[0] == 0
    clf = IntentClassifier.load(reg, "v2")
    assert clf.oos is None and clf.threshold is None
    predictions = clf.predict(held)
    assert all(p.in_scope and p.score is not None for p in predictions)
    code, out, _ = run(capsys, "predict", *held, "--registry", reg)
    assert code == 0 and "(out of scope)" not in out
    assert "v2 has no out-of-scope calibration" in caplog.text
    assert "every utterance is in scope" in caplog.text
    code, out, _ = run(capsys, "show", "v2", "--registry", reg)
    assert "oos       not calibrated (made before out-of-scope detection, or without" in out
    code, out, _ = run(capsys, "releases", "--registry", reg)
    assert out.count("none (accepts all)") == 2
    # add-intent from it calibrates on the new intent's held-out utterances, and says so.
    add_intents(data_dir / "new" / "report_damage.txt", reg, "v2")
    record = Registry(reg).manifest("v3")["oos"]
    assert record["calibration"]["intents"] == 1 and record["threshold"] is not None
    assert "parent v2 has no calibration utterances" in record["note"]


# ---- show, releases, verify, retire -----------------------------------------------------------
def test_show_and_releases_print_the_rule(trained_registry, capsys):
    record = Registry(trained_registry).manifest("v2")["oos"]
    code, out, _ = run(capsys, "show", "v2", "--registry", trained_registry)
    assert code == 0
    assert (
        f"oos       {DEFAULT.score} >= {record['threshold']:.4f} (in-scope quantile, target "
        f"in-scope recall {100 * DEFAULT.target_recall:.1f}%); calibrated on {record['calibration']['in_scope']} held-out utterances "
        "of 5 intents (calibration.json): in-scope recall" in out
    )
    rows = record["bank"]["rows"]
    assert f"; nearest of {rows} replay exemplars (oos_bank.safetensors)" in out
    code, out, _ = run(capsys, "releases", "--json", "--registry", trained_registry)
    rows = json.loads(out)
    assert rows[1]["oos"]["threshold"] == record["threshold"]
    assert rows[1]["oos"]["calibration_size"] == record["calibration"]["in_scope"]
    assert rows[1]["oos"]["in_scope_recall"] == record["in_scope_recall"]
    code, out, _ = run(capsys, "releases", "--registry", trained_registry)
    assert (
        f"{DEFAULT.score} >= {record['threshold']:.3f}, n={record['calibration']['in_scope']}"
        in out
    )


def test_verify_catches_a_calibration_file_that_disagrees_with_the_manifest(reg, capsys):
    path = reg / "v2" / "calibration.json"
    payload = json.loads(path.read_text(encoding="utf-8"))
    payload["in_scope"]["card_lost"].append("one more")
    path.write_text(json.dumps(payload), encoding="utf-8")
    manifest_path = reg / "v2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["files"]["calibration.json"] = {
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    code, out, _ = run(capsys, "verify", "v2", "--registry", reg)
    assert code == 1 and "field `oos`.calibration.in_scope is" in out


def test_a_release_stores_the_exemplar_bank_its_score_reads(reg, capsys):
    manifest = Registry(reg).manifest("v2")
    assert manifest["oos"]["score"] == "energy_knn"
    memory = read_memory(reg / "v2" / "replay.json")
    texts = [t for intent in manifest["intents"] for t in memory.get(intent, [])]
    bank = read_bank(reg / "v2" / "oos_bank.safetensors")
    assert manifest["oos"]["bank"]["rows"] == len(texts) == len(bank)
    # The bank is the release's own pooled features of its replay exemplars, unit length.
    clf = IntentClassifier.load(reg, "v2")
    torch.testing.assert_close(bank, make_bank(clf.features(texts)), atol=2e-3, rtol=0)
    # A bank that disagrees with the manifest is caught, even with its hash updated.
    path = reg / "v2" / "oos_bank.safetensors"
    write_bank(bank[:-1], path)
    manifest_path = reg / "v2" / "manifest.json"
    manifest["files"]["oos_bank.safetensors"] = {
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    code, out, _ = run(capsys, "verify", "v2", "--registry", reg)
    assert code == 1 and f"`features` has shape [{len(texts) - 1}, 32]" in out


def test_retire_drops_the_retired_calibration_rows_and_rethresholds(reg):
    parent_in, _ = read_calibration(reg / "v2" / "calibration.json")
    retire_intents(["card_lost"], reg, "v2")
    child_in, _ = read_calibration(reg / "v3" / "calibration.json")
    assert child_in == {k: v for k, v in parent_in.items() if k != "card_lost"}
    record = Registry(reg).manifest("v3")["oos"]
    clf = IntentClassifier.load(reg, "v3")
    held = [t for ts in child_in.values() for t in ts]
    scores = clf.scores(*clf.logits_and_features(held))
    assert record["calibration"]["in_scope"] == len(held)
    assert int((scores >= record["threshold"]).sum()) / len(scores) == pytest.approx(
        record["in_scope_recall"]
    )
    assert record["in_scope_recall"] >= DEFAULT.target_recall
    assert threshold_for_recall(scores, DEFAULT.target_recall) == record["threshold"]
    # The bank loses the retired intent's exemplars.
    memory = read_memory(reg / "v3" / "replay.json")
    assert "card_lost" not in memory
    assert len(read_bank(reg / "v3" / "oos_bank.safetensors")) == sum(map(len, memory.values()))


# ---- eval ------------------------------------------------------------------------------------------
def eval_data_with_oos(tmp_path: Path, data_dir: Path, registry: Path) -> Path:
    """data/test plus `oos` rows: the held-out calibration rows of v2 that it rejects are not
    out of scope, so the oos rows are utterances of no intent."""
    folder = Path(shutil.copytree(data_dir / "test", tmp_path / "eval"))
    (folder / "report_damage.txt").unlink()  # not an intent of v1/v2
    (folder / "oos.txt").write_text("\n".join(OUT_OF_SCOPE) + "\n", encoding="utf-8")
    return folder


def test_eval_reports_out_of_scope_figures_and_paired_deltas(
    trained_registry, data_dir, tmp_path, capsys
):
    import evaluate

    from intent_ci.metrics import OOS_DETECTION

    folder = eval_data_with_oos(tmp_path, data_dir, trained_registry)
    out = tmp_path / "eval.json"
    code, text, _ = run(
        capsys,
        *("eval", "--release", "v2", "--data", folder, "--against", "v1"),
        *("--json", out, "--registry", trained_registry),
    )
    assert code == 0
    result = json.loads(out.read_text())
    # Recompute every figure from the release's own predictions.
    clf = IntentClassifier.load(trained_registry, "v2")
    rows = [(t, p.stem) for p in sorted(folder.glob("*.txt")) for t in lines_of(folder)[p.stem]]
    preds = clf.predict([t for t, _ in rows])
    in_rows = [(p, ref) for p, (_, ref) in zip(preds, rows, strict=True) if ref != "oos"]
    oos_rows = [p for p, (_, ref) in zip(preds, rows, strict=True) if ref == "oos"]
    assert result["n"] == len(in_rows) and result["oos_n"] == 4
    assert result["accuracy"] == pytest.approx(
        sum(p.intent == ref for p, ref in in_rows) / len(in_rows)
    )
    assert "oos" not in result["per_intent"]
    assert result["in_scope_accuracy"] == pytest.approx(
        sum(p.in_scope and p.intent == ref for p, ref in in_rows) / len(in_rows)
    )
    assert result["in_scope_recall"] == pytest.approx(
        sum(p.in_scope for p, _ in in_rows) / len(in_rows)
    )
    assert result["oos_recall"] == pytest.approx(sum(not p.in_scope for p in oos_rows) / 4)
    assert result["oos_threshold"] == clf.threshold and result["oos_score"] == DEFAULT.score
    # AUROC: the share of (in-scope, oos) pairs the score orders right (ties count half).
    pairs = [(a.score > b.score) + 0.5 * (a.score == b.score) for a, _ in in_rows for b in oos_rows]
    assert result["auroc"] == pytest.approx(sum(pairs) / len(pairs))
    threshold = threshold_for_recall(torch.tensor([p.score for p, _ in in_rows]), 0.95)
    assert result["fpr_at_95"] == pytest.approx(
        sum(p.score >= threshold for p in oos_rows) / len(oos_rows)
    )
    for key in ("in_scope_accuracy", "oos_recall", "oos_precision", "oos_f1", "auroc"):
        assert key in result
    paired = result["against"]["oos"]
    for key in ("in_scope_accuracy", "in_scope_recall", "oos_recall", "auroc", "fpr_at_95"):
        row = paired[key]
        assert row["delta"] == pytest.approx(row["this"] - row["against"])
    assert set(paired["paired"]) == {
        "oos_accepted_by_this_only",
        "oos_accepted_by_against_only",
        "in_scope_rejected_by_this_only",
        "in_scope_rejected_by_against_only",
    }
    assert "out of scope" in text and "oos recall" in text
    # The shipped evaluate module works on its own.
    metric = evaluate.load(OOS_DETECTION)
    none = metric.compute(predictions=["a"], references=["a"], scores=[1.0])
    assert none["oos_recall"] is None and none["auroc"] is None and none["in_scope_recall"] == 1


# ---- calibrate ------------------------------------------------------------------------------------
def test_calibrate_makes_a_release_that_trains_nothing(reg, data_dir, tmp_path, capsys):
    folder = eval_data_with_oos(tmp_path, data_dir, reg)
    code, out, _ = run(
        capsys,
        "calibrate",
        "--release",
        "v2",
        "--data",
        folder,
        "--target-recall",
        "0.9",
        "--registry",
        reg,
    )
    assert code == 0, out
    assert out.splitlines()[0] == "v3: 5 intents, parent v2, recalibrated (nothing trained)"
    manifest = Registry(reg).manifest("v3")
    assert manifest["calibrated_from"] == "v2" and manifest["new_intents"] == []
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "head.safetensors",
        "labels.json",
        "replay.json",
    ):
        assert (reg / "v3" / name).read_bytes() == (reg / "v2" / name).read_bytes(), name
    in_scope, oos = read_calibration(reg / "v3" / "calibration.json")
    assert oos == OUT_OF_SCOPE and set(in_scope) == set(lines_of(folder)) - {"oos"}
    record = manifest["oos"]
    assert record["target_recall"] == 0.9 and manifest["config"]["oos"]["target_recall"] == 0.9
    clf = IntentClassifier.load(reg, "v3")
    held = [t for ts in in_scope.values() for t in ts]
    scores = clf.scores(*clf.logits_and_features(held))
    assert record["threshold"] == threshold_for_recall(scores, 0.9)
    assert record["in_scope_recall"] >= 0.9
    assert torch.equal(clf.logits(held), IntentClassifier.load(reg, "v2").logits(held))
    # The bank is the same encoder's features of the same memory: the parent's, byte for byte.
    assert (reg / "v3" / "oos_bank.safetensors").read_bytes() == (
        reg / "v2" / "oos_bank.safetensors"
    ).read_bytes()
    # --score switches the score: energy needs no bank, so v4 stores none.
    code, out, _ = run(
        capsys,
        "calibrate",
        "--release",
        "v3",
        "--data",
        folder,
        "--score",
        "energy",
        "--registry",
        reg,
    )
    assert code == 0, out
    manifest = Registry(reg).manifest("v4")
    assert manifest["oos"]["score"] == manifest["config"]["oos"]["score"] == "energy"
    assert "oos_bank.safetensors" not in manifest["files"]
    energy = score_logits(clf.logits(held), "energy")
    assert manifest["oos"]["threshold"] == threshold_for_recall(energy, 0.9)
    code, out, _ = run(capsys, "verify", "--all", "--registry", reg)
    assert code == 0, out


def test_calibrate_bad_input(reg, data_dir, tmp_path, capsys):
    before = sorted(p.name for p in reg.iterdir())

    def refused(pattern: str, *argv) -> None:
        code, _, err = run(capsys, "calibrate", *argv, "--registry", reg)
        assert code == 2 and re.fullmatch(rf"intent-ci: error: {pattern}\n", err), err
        assert sorted(p.name for p in reg.iterdir()) == before

    test = data_dir / "test"
    refused(
        r".*report_damage\.txt:1: intent\(s\) 'report_damage' are not in release v2 .*",
        "--data",
        test,
    )
    only_oos = tmp_path / "only"
    only_oos.mkdir()
    (only_oos / "oos.txt").write_text("\n".join(OUT_OF_SCOPE) + "\n", encoding="utf-8")
    refused(r".*only: no in-scope utterances \(only rows labelled 'oos'\);.*", "--data", only_oos)
    trained = tmp_path / "trained"
    trained.mkdir()
    replay = json.loads((reg / "v2" / "replay.json").read_text())["exemplars"]
    (trained / "card_lost.txt").write_text("\n".join(replay["card_lost"][:3]) + "\n")
    refused(
        r".*card_lost\.txt:1: release v2 trained on this utterance \(it is in its replay "
        r"memory\); calibrate on utterances the release never trained on",
        "--data",
        trained,
    )
    # one utterance three times: no spread to standardise by (its threshold came out at 0)
    repeated = tmp_path / "repeated"
    repeated.mkdir()
    (repeated / "card_lost.txt").write_text("my card is gone\n" * 3, encoding="utf-8")
    refused(
        r".*repeated: 1 distinct in-scope utterance\(s\); calibrating needs at least 10 .*",
        "--data",
        repeated,
    )
    good = Path(shutil.copytree(test, tmp_path / "good"))
    (good / "report_damage.txt").unlink()
    refused(
        r"--target-recall: must be in \[0.5, 1\) .*got 1.0", "--data", good, "--target-recall", "1"
    )
    refused(r"release 'v9' does not exist.*|.*v9.*", "--release", "v9", "--data", good)


def test_lineage_refuses_a_calibrated_release_whose_head_changed(reg, data_dir, tmp_path, capsys):
    good = Path(shutil.copytree(data_dir / "test", tmp_path / "good"))
    (good / "report_damage.txt").unlink()
    assert run(capsys, "calibrate", "--data", good, "--registry", reg)[0] == 0
    head = reg / "v1" / "head.safetensors"
    manifest_path = reg / "v3" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    # Point v3 at v1's (different) head file: hashes match its own copy, lineage must refuse.
    shutil.copyfile(head, reg / "v3" / "head.safetensors")
    manifest["files"]["head.safetensors"] = {
        "sha256": sha256_file(head),
        "bytes": head.stat().st_size,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2))
    code, out, _ = run(capsys, "verify", "v3", "--registry", reg)
    assert code == 1
    assert "a release made by calibrate trains nothing, but its head.safetensors differs" in out


def test_no_calibration_utterances_says_whether_the_data_or_the_setting_held_none_out():
    """With `oos.holdout_share: 0` the note blamed the data ('every intent has too few
    utterances'); it names the setting now."""
    from intent_ci.calibration import calibrate

    empty = torch.empty(0)
    by_setting = calibrate(empty, empty, OOSConfig(holdout_share=0.0), intents=4)
    assert by_setting["threshold"] is None
    assert "`oos.holdout_share` or `oos.holdout_max_per_intent` is 0" in by_setting["note"]
    by_data = calibrate(empty, empty, OOSConfig(), intents=4)
    assert "every intent has too few utterances to hold any out" in by_data["note"]
