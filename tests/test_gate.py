"""`intent-ci check` on real releases trained once per module on the tiny RoBERTa.

v1 has the four base intents; v2 adds refund_status with the recipe; v3 adds it to v1 again
with distillation and replay switched off and a high learning rate, through the normal config
overrides. The gate must pass v2, fail v3 naming the forgotten intents, fail a release that
keeps what its parent v3 had for the drift of its line from v1, fail on a flipped golden
utterance, follow the `production` alias, gate a `retire` release, and refuse bad input with
exit 2.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from intent_ci.cli import main
from intent_ci.config import ReleaseConfig, apply_overrides
from intent_ci.data import INTENT, TEXT, read_examples
from intent_ci.release import IntentClassifier
from tests.conftest import BASE_INTENTS, make_utterances, tiny_overrides, write_intents

N_TRAIN, N_TEST = 100, 30
NEW = "refund_status"
DAMAGE = {
    "distill": {"enabled": False},
    "replay": {"enabled": False},
    "train": {"lr": 0.05, "head_lr": 0.5},
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads make the tiny
    model 50-100x slower (measured: 69 s of CPU for a 160-utterance init instead of 0.7 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gate_data(tmp_path_factory) -> Path:
    """base/ (4 x 100), new/refund_status.txt (100), test/ (5 intents x 30, held out)."""
    root = tmp_path_factory.mktemp("gate-data")
    write_intents(root / "base", BASE_INTENTS, N_TRAIN, seed=0)
    write_intents(root / "new", [NEW], N_TRAIN, seed=0)
    (root / "test").mkdir()
    for intent in [*BASE_INTENTS, NEW]:
        train = set(make_utterances(intent, N_TRAIN, seed=0))
        held_out = [u for u in make_utterances(intent, 300, seed=1) if u not in train][:N_TEST]
        (root / "test" / f"{intent}.txt").write_text("\n".join(held_out) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def gate_registry(tmp_path_factory, tiny_backbone, gate_data) -> Path:
    """v1 (base), v2 = v1 + refund_status (the recipe), v3 = v1 + refund_status (damaged).

    Mean pooling and a replay of every base utterance: on this 2-layer random encoder,
    cls pooling with 8 exemplars per intent loses 15-20 points of old-intent accuracy when an
    intent is added (the new intent's prototype row captures old utterances), and the gate
    rightly fails that. With these settings the recipe's release is a genuinely good one.
    """
    from intent_ci.pipeline import add_intents, init_release

    registry = tmp_path_factory.mktemp("gate-registry") / "adapters"
    config = apply_overrides(
        ReleaseConfig(),
        tiny_overrides(
            tiny_backbone,
            model={"pooling": "mean"},
            replay={"per_intent": N_TRAIN, "train_per_intent": N_TRAIN},
            # Every utterance trains (no held-out calibration rows): the golden-flip test needs
            # a base utterance that v1 gets right and v2 gets wrong, which these releases have.
            oos={"enabled": False},
        ),
        source="test",
    )
    init_release(gate_data / "base", registry, config)
    add_intents(gate_data / "new" / f"{NEW}.txt", registry, "v1")
    add_intents(gate_data / "new" / f"{NEW}.txt", registry, "v1", overrides=DAMAGE)
    return registry


@pytest.fixture()
def registry_copy(gate_registry, tmp_path) -> Path:
    """A copy of the module's registry for tests that add releases or aliases to it."""
    return Path(shutil.copytree(gate_registry, tmp_path / "adapters"))


def check(registry: Path, candidate: str, data: Path, out: Path, *extra) -> int:
    argv = ["check", "--candidate", candidate, "--data", data, "--registry", registry]
    return main([str(a) for a in [*argv, "--report-dir", out, *extra]])


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text(encoding="utf-8"))


def test_good_release_passes(gate_registry, gate_data, tmp_path, capsys):
    out = tmp_path / "reports"
    assert check(gate_registry, "v2", gate_data / "test", out) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("v2 vs v1 on ") and ": PASS" in stdout.splitlines()[0]
    report = read_report(out)
    assert (report["verdict"], report["candidate"], report["baseline"]) == ("pass", "v2", "v1")
    assert report["failed_rules"] == []
    assert [r["name"] for r in report["rules"]] == [
        "old_accuracy",
        "per_intent",
        "golden",
        "new_intents",
        "confusions",
        "drift",
    ]
    assert sorted(r["intent"] for r in report["per_intent"]) == BASE_INTENTS
    assert report["new_intents"]["intents"] == [NEW]
    assert report["config"]["max_drop"] == 2.0
    # One release from the line's base, which is the baseline: old_accuracy judges its cost.
    drift = _rule(report, "drift")
    assert drift["status"] == "skipped" and "v2 is one release from v1" in drift["summary"]

    # The report's paired numbers are the releases' own predictions, example by example.
    test = read_examples(gate_data / "test")
    texts, refs = test.dataset[TEXT], test.dataset[INTENT]
    v1 = [p.label for p in IntentClassifier.load(gate_registry, "v1").predict(texts)]
    v2 = [p.label for p in IntentClassifier.load(gate_registry, "v2").predict(texts)]
    old = [i for i, ref in enumerate(refs) if ref in BASE_INTENTS]
    broken = sum(v1[i] == refs[i] != v2[i] for i in old)
    fixed = sum(v2[i] == refs[i] != v1[i] for i in old)
    rule = report["rules"][0]["details"]
    assert (rule["n"], rule["broken"], rule["fixed"]) == (len(old), broken, fixed)
    assert rule["baseline_accuracy"] == pytest.approx(sum(v1[i] == refs[i] for i in old) / len(old))

    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("## intent-ci gate: ✅ PASS — `v2` vs `v1`")
    assert "Failing rules" not in markdown and "| card_lost | 30 |" in markdown
    png = out / "report.png"
    if report.get("png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib" in report["png_skipped"]


def test_damaged_release_fails_and_names_the_forgotten_intents(
    gate_registry, gate_data, tmp_path, capsys
):
    out = tmp_path / "reports"
    assert check(gate_registry, "v3", gate_data / "test", out) == 1
    stdout = capsys.readouterr().out
    assert "v3 vs v1" in stdout and ": FAIL" in stdout
    report = read_report(out)
    assert report["baseline"] == "v1", "the baseline defaults to the candidate's parent"
    assert report["verdict"] == "fail"
    assert {"old_accuracy", "per_intent"} <= set(report["failed_rules"])
    per_intent = next(r for r in report["rules"] if r["name"] == "per_intent")
    assert sorted(per_intent["intents"]) == BASE_INTENTS
    for row in report["per_intent"]:
        assert row["fails"] and row["drop_points"] > 50 and row["p_adjusted"] <= 0.05
    assert report["old_intents"]["drop_points"] > 50
    assert all(c["to_new_intent"] and c["predicted"] == NEW for c in report["confusions"])

    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown.startswith("## intent-ci gate: ❌ FAIL — `v3` vs `v1`")
    failing = markdown.split("**Failing rules**", 1)[1].split("| rule |", 1)[0]
    assert "**Old-intent accuracy**" in failing and "**Per-intent drops**" in failing
    for intent in BASE_INTENTS:
        assert intent in failing


def _flip_candidates(registry: Path, data: Path) -> tuple[list[tuple[str, str]], list]:
    """Utterances v1 gets right and v2 gets wrong, and ones both get right (real predictions)."""
    pool = read_examples(data / "test")
    texts, refs = pool.dataset[TEXT], pool.dataset[INTENT]
    v1 = IntentClassifier.load(registry, "v1").predict(texts)
    v2 = IntentClassifier.load(registry, "v2").predict(texts)
    flipped, kept = [], []
    for text, ref, a, b in zip(texts, refs, v1, v2, strict=True):
        if ref in BASE_INTENTS and a.label == ref != b.label:
            flipped.append((text, ref))
        elif a.label == ref == b.label:
            kept.append((text, ref))
    return flipped, kept


def test_a_golden_flip_fails_a_release_that_otherwise_passes(
    gate_registry, gate_data, tmp_path, capsys
):
    flipped, kept = _flip_candidates(gate_registry, gate_data)
    if not flipped:
        pytest.fail("v2 keeps every test utterance v1 gets right; pick another golden source")
    golden = tmp_path / "golden.yaml"
    lines = [f"{json.dumps(t)}: {i}" for t, i in kept[:3]] + [
        f"{json.dumps(flipped[0][0])}: {flipped[0][1]}"
    ]
    golden.write_text("# must stay right\n" + "\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "reports"

    assert check(gate_registry, "v2", gate_data / "test", out, "--golden", golden) == 1
    report = read_report(out)
    assert report["failed_rules"] == ["golden"]
    [failure] = report["golden_failures"]
    assert (failure["text"], failure["intent"], failure["line"]) == (*flipped[0], 5)
    assert failure["baseline"] == flipped[0][1] != failure["candidate"]
    assert flipped[0][0] in (out / "report.md").read_text(encoding="utf-8")
    capsys.readouterr()

    golden.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    assert check(gate_registry, "v2", gate_data / "test", out, "--golden", golden) == 0
    assert read_report(out)["rules"][2]["status"] == "pass"


def test_gate_config_file_changes_the_thresholds(gate_registry, gate_data, tmp_path):
    """A stricter min_new_accuracy than v2 reaches fails the new-intent rule alone. The test
    data gets one refund_status row that is a base intent's training utterance, so v2 cannot
    reach 1.0 on the new intent whatever else it gets right."""
    out = tmp_path / "reports"
    data = tmp_path / "test"
    shutil.copytree(gate_data / "test", data)
    trained = make_utterances(BASE_INTENTS[0], N_TRAIN, seed=0)[0]
    with (data / f"{NEW}.txt").open("a", encoding="utf-8") as f:
        f.write(trained + "\n")
    config = tmp_path / "gate.yaml"
    config.write_text(yaml.safe_dump({"gate": {"min_new_accuracy": 1.0}}), encoding="utf-8")
    code = check(gate_registry, "v2", data, out, "--config", config)
    report = read_report(out)
    assert report["config"]["min_new_accuracy"] == 1.0
    assert report["new_intents"]["accuracy"] < 1.0, "precondition: v2 misses a refund utterance"
    assert code == 1 and report["failed_rules"] == ["new_intents"]


def _rule(report: dict, name: str) -> dict:
    return next(r for r in report["rules"] if r["name"] == name)


@pytest.fixture()
def drifted(registry_copy) -> tuple[Path, str]:
    """v3 (damaged) without card_lost: `retire` copies v3's other head rows exactly, so the new
    release holds everything its parent had, while v3 has forgotten v1's intents."""
    from intent_ci.lifecycle import retire_intents

    return registry_copy, retire_intents(["card_lost"], registry_copy, parent="v3")


def test_drift_fails_a_release_that_passes_against_its_parent(drifted, gate_data, tmp_path, capsys):
    """The default drift rule, against the line's base v1, fails the release although it passes
    against its parent; a looser max_drift and --drift-against say otherwise."""
    registry, release = drifted
    out, data = tmp_path / "reports", gate_data / "test"
    assert check(registry, release, data, out) == 1
    report = read_report(out)
    assert (report["baseline"], report["baseline_source"]) == ("v3", "parent")
    assert report["failed_rules"] == ["drift"], [r["summary"] for r in report["rules"]]
    assert report["old_intents"]["broken"] == 0
    drift = _rule(report, "drift")
    assert drift["against"] == "v1" and report["drift"]["line"] == [release, "v3", "v1"]
    # v1's intents less the retired card_lost: 3 x 30 utterances.
    assert drift["details"]["n"] == 3 * N_TEST and drift["details"]["drop_points"] > 50
    assert drift["details"]["decision"] == "upper_bound"
    assert "v1's intents" in drift["summary"] and "not below 2 points" in drift["summary"]
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "**Drift from the line's base (`v1`)**" in markdown.split("| rule |")[0]
    assert f"line: v1 → v3 → {release}" in markdown
    capsys.readouterr()

    # Its own budget: a drift within max_drift passes (here all of v1's intents are lost, so
    # only a significant-decision budget of 100 points lets it through).
    config = tmp_path / "gate.yaml"
    config.write_text(
        yaml.safe_dump({"gate": {"max_drift": 100.0, "drift_decision": "significant"}}),
        encoding="utf-8",
    )
    assert check(registry, release, data, out, "--config", config) == 0
    assert _rule(read_report(out), "drift")["status"] == "pass"
    # Against a given release: the parent, from which nothing drifted.
    assert check(registry, release, data, out, "--drift-against", "v3") == 0
    assert _rule(read_report(out), "drift")["against"] == "v3"
    # drift_decision: significant decides the same here (a drop of over 50 points is both), and
    # decision: non_inferiority leaves the parent check passing (the bound of a 0-broken drop is
    # below 2 points).
    config.write_text(
        yaml.safe_dump({"gate": {"drift_decision": "significant", "decision": "non_inferiority"}}),
        encoding="utf-8",
    )
    assert check(registry, release, data, out, "--config", config) == 1
    report = read_report(out)
    assert report["failed_rules"] == ["drift"]
    assert "larger than 2 points" in _rule(report, "drift")["summary"]
    assert _rule(report, "old_accuracy")["details"]["decision"] == "non_inferiority"


def test_also_against_adds_baselines(drifted, gate_data, tmp_path):
    registry, release = drifted
    out = tmp_path / "reports"
    config = tmp_path / "gate.yaml"
    config.write_text(
        yaml.safe_dump({"gate": {"max_drift": 100.0, "drift_decision": "significant"}}),
        encoding="utf-8",
    )
    code = check(
        registry,
        release,
        gate_data / "test",
        out,
        "--config",
        config,
        "--also-against",
        "v1",
        "--also-against",
        "v2",
    )
    report = read_report(out)
    assert code == 1 and report["failed_rules"] == ["also_against", "also_against"]
    also = {a["baseline"]: a for a in report["also_against"]}
    # card_lost is retired in the candidate's line: left out against both.
    assert also["v1"]["n"] == 3 * N_TEST and also["v2"]["n"] == 4 * N_TEST
    assert sorted(also["v1"]["failing_intents"]) == sorted(set(BASE_INTENTS) - {"card_lost"})
    assert "### Old intents against other releases" in (out / "report.md").read_text()


def test_production_alias_is_the_default_baseline(registry_copy, gate_data, tmp_path, capsys):
    out = tmp_path / "reports"
    assert main(["alias", "set", "production", "v2", "--registry", str(registry_copy)]) == 0
    assert check(registry_copy, "v3", gate_data / "test", out) == 1
    report = read_report(out)
    assert (report["baseline"], report["baseline_source"]) == ("v2", "production alias")
    assert "old_accuracy" in report["failed_rules"]
    # --baseline still wins; a candidate that is production itself is checked against its parent.
    assert check(registry_copy, "v2", gate_data / "test", out) == 0
    assert (read_report(out)["baseline"], read_report(out)["baseline_source"]) == ("v1", "parent")
    assert check(registry_copy, "v3", gate_data / "test", out, "--baseline", "v1") == 1
    assert read_report(out)["baseline_source"] == "--baseline"
    capsys.readouterr()
    refused(
        capsys,
        args(registry_copy, gate_data / "test", tmp_path / "none", "v1"),
        tmp_path / "none",
        r"candidate v1 does not predict 1 intent\(s\) of baseline \(the production alias\) v2 "
        r"\(refund_status\)",
    )


def test_a_retire_release_is_gateable(registry_copy, gate_data, tmp_path):
    """v2 without refund_status: retired intents are not old intents; their utterances are
    reported with where the candidate sends them now."""
    from intent_ci.lifecycle import retire_intents

    retired = retire_intents([NEW], registry_copy, parent="v2")
    out = tmp_path / "reports"
    assert check(registry_copy, retired, gate_data / "test", out) == 0
    report = read_report(out)
    assert report["baseline"] == "v2" and report["verdict"] == "pass"
    assert sorted(report["old_intents"]["intents"]) == BASE_INTENTS
    assert report["old_intents"]["n"] == 4 * N_TEST
    # The head rows of the other intents are copied exactly: nothing else moves.
    assert report["old_intents"]["broken"] == 0
    [moved] = report["retired"]["moved"]
    assert moved["intent"] == NEW and moved["n"] == N_TEST
    assert sum(moved["to"].values()) == N_TEST and set(moved["to"]) <= set(BASE_INTENTS)
    assert _rule(report, "retired")["status"] == "info"
    assert _rule(report, "drift")["against"] == "v1"
    assert "### Retired intents (refund_status)" in (out / "report.md").read_text()


@pytest.fixture()
def calibrated(registry_copy, gate_data, tmp_path) -> tuple[Path, str, str, Path]:
    """Two recalibrations of v2 (trains nothing): `loose` accepts 99% of in-scope calibration
    utterances, `strict` 60%; and test data with 40 out-of-scope rows (report_damage
    utterances, an intent no release knows), labelled `oos`."""
    from intent_ci.lifecycle import calibrate_release

    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for intent in [*BASE_INTENTS, NEW]:
        seen = set(make_utterances(intent, N_TRAIN, seed=0)) | set(
            (gate_data / "test" / f"{intent}.txt").read_text(encoding="utf-8").split("\n")
        )
        held = [u for u in make_utterances(intent, 400, seed=2) if u not in seen][:N_TEST]
        (calibration / f"{intent}.txt").write_text("\n".join(held) + "\n", encoding="utf-8")
    loose = calibrate_release(calibration, registry_copy, "v2", target_recall=0.99)
    strict = calibrate_release(calibration, registry_copy, "v2", target_recall=0.6)
    data = tmp_path / "test"
    shutil.copytree(gate_data / "test", data)
    oos = make_utterances("report_damage", 40, seed=3)
    (data / "oos.txt").write_text("\n".join(oos) + "\n", encoding="utf-8")
    return registry_copy, loose, strict, data


def test_out_of_scope_rule_and_false_rejections(calibrated, tmp_path):
    registry, loose, strict, data = calibrated
    out = tmp_path / "reports"
    # The loose release answers out-of-scope rows the strict one rejects: the out-of-scope
    # rule fails it, while its in-scope answers are better than the strict one's.
    assert check(registry, loose, data, out, "--baseline", strict) == 1
    report = read_report(out)
    assert "out_of_scope" in report["failed_rules"], [r["summary"] for r in report["rules"]]
    oos = _rule(report, "out_of_scope")
    assert oos["details"]["n"] == 40 and oos["details"]["newly_accepted"] > 2
    assert oos["details"]["candidate_accept_rate"] > oos["details"]["baseline_accept_rate"]
    assert _rule(report, "old_accuracy")["status"] == "pass"
    assert report["old_intents"]["n"] == 5 * N_TEST  # the oos rows are in no accuracy rule
    rejected = report["rejection"]
    assert rejected[strict]["in_scope_rejected"] > rejected[loose]["in_scope_rejected"]
    assert "Out-of-scope acceptance" in (out / "report.md").read_text(encoding="utf-8")

    # The other way round: rejected in-scope utterances are errors in the old-intent rule.
    assert check(registry, strict, data, out, "--baseline", loose) == 1
    report = read_report(out)
    assert _rule(report, "out_of_scope")["status"] == "pass"
    assert "old_accuracy" in report["failed_rules"]
    # Same model, a higher threshold: it only adds rejections, so it fixes nothing, and every
    # broken utterance is one it rejects and the loose one answers right.
    old = report["old_intents"]
    assert old["fixed"] == 0 and old["drop_points"] > 2
    rejected = report["rejection"]
    assert (
        0
        < old["broken"]
        <= (rejected[strict]["in_scope_rejected"] - rejected[loose]["in_scope_rejected"])
    )
    # gate.reject: false scores the best intent only: the two are then the same model.
    config = tmp_path / "gate.yaml"
    config.write_text(yaml.safe_dump({"gate": {"reject": False}}), encoding="utf-8")
    assert check(registry, strict, data, out, "--baseline", loose, "--config", config) == 0
    report = read_report(out)
    assert report["old_intents"]["broken"] == report["old_intents"]["fixed"] == 0
    assert _rule(report, "out_of_scope")["details"]["newly_accepted"] == 0


# ---- bad input: exit 2, one line, no report ------------------------------------------------------
def refused(capsys, argv: list, out: Path, pattern: str) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err
    assert re.search(r"^intent-ci: error: " + pattern, err, re.MULTILINE), err
    assert not (out / "report.json").exists()
    return err


def args(registry, data, out, candidate="v2", *extra) -> list:
    return [
        "check",
        "--candidate",
        candidate,
        "--data",
        data,
        "--registry",
        registry,
        "--report-dir",
        out,
        *extra,
    ]


def test_unknown_candidate_and_baseline(capsys, gate_registry, gate_data, tmp_path):
    out, data = tmp_path / "reports", gate_data / "test"
    refused(
        capsys, args(gate_registry, data, out, "v9"), out, r"unknown release 'v9' in .*v1, v2, v3"
    )
    refused(
        capsys,
        args(gate_registry, data, out, "v2", "--baseline", "v7"),
        out,
        r"unknown release 'v7'",
    )


def test_bad_also_against(capsys, gate_registry, gate_data, tmp_path):
    out, data = tmp_path / "reports", gate_data / "test"
    refused(
        capsys,
        args(gate_registry, data, out, "v2", "--also-against", "v1"),
        out,
        r"--also-against v1: v1 is the baseline already; name another release$",
    )
    refused(
        capsys,
        args(gate_registry, data, out, "v2", "--also-against", "v8"),
        out,
        r"unknown release 'v8'",
    )
    refused(
        capsys,
        args(gate_registry, data, out, "v1", "--baseline", "v3", "--also-against", "v2"),
        out,
        r"candidate v1 does not predict 1 intent\(s\) of baseline v3 \(refund_status\)",
    )
    refused(
        capsys,
        args(gate_registry, data, out, "v2", "--drift-against", "v9"),
        out,
        r"unknown release 'v9'",
    )
    refused(
        capsys,
        args(gate_registry, data, out, "v2", "--drift-against", "v2"),
        out,
        r"--drift-against v2: v2 is the candidate already; name an earlier release of its line$",
    )


def test_a_damaged_release_is_refused_in_one_line_before_scoring(
    gate_registry, gate_data, tmp_path
):
    """Through the real command line (its logging goes to the process's stderr): one line."""
    import subprocess

    registry = Path(shutil.copytree(gate_registry, tmp_path / "adapters"))
    head = registry / "v1" / "head.safetensors"
    content = bytearray(head.read_bytes())
    content[-1] ^= 0xFF
    head.write_bytes(bytes(content))
    out = tmp_path / "reports"
    argv = [str(a) for a in args(registry, gate_data / "test", out, "v2", "--baseline", "v1")]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from intent_ci.cli import main; sys.exit(main())",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no "scoring ..." line before the error
    assert re.match(
        rf"intent-ci: error: {re.escape(str(head))}: sha256 .* does not match the manifest's",
        lines[0],
    )
    assert not (out / "report.json").exists()


def test_releases_of_another_line_are_refused(capsys, gate_registry, gate_data, tmp_path):
    """A base release of another line that happens to hold only intents the candidate has (a
    copy of v1 under another name, its own base): never a baseline, --also-against or drift
    release, whatever the intents say."""
    registry = Path(shutil.copytree(gate_registry, tmp_path / "adapters"))
    shutil.copytree(registry / "v1", registry / "v9")
    manifest = json.loads((registry / "v9" / "manifest.json").read_text())
    manifest["release"] = "v9"
    (registry / "v9" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    out, data = tmp_path / "reports", gate_data / "test"
    for flag, role in (
        ("--baseline", "baseline"),
        ("--also-against", "--also-against release"),
        ("--drift-against", "drift release"),
    ):
        refused(
            capsys,
            args(registry, data, out, "v2", flag, "v9"),
            out,
            rf"{re.escape(role)} v9 is not on candidate v2's line \(their base releases are v9 "
            r"and v1\); the .* must be an earlier release of the same lineage$",
        )


def test_base_release_needs_a_baseline(capsys, gate_registry, gate_data, tmp_path):
    out = tmp_path / "reports"
    refused(
        capsys,
        args(gate_registry, gate_data / "test", out, "v1"),
        out,
        r"release v1 is a base release \(no parent\); pass --baseline",
    )


def test_baseline_with_intents_the_candidate_lacks(capsys, gate_registry, gate_data, tmp_path):
    out = tmp_path / "reports"
    refused(
        capsys,
        args(gate_registry, gate_data / "test", out, "v1", "--baseline", "v2"),
        out,
        r"candidate v1 does not predict 1 intent\(s\) of baseline v2 \(refund_status\)",
    )


def test_data_with_intents_the_releases_do_not_know(capsys, gate_registry, gate_data, tmp_path):
    data = tmp_path / "test"
    data.mkdir()
    for f in (gate_data / "test").iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    write_intents(data, ["report_damage"], 5, seed=4)
    out = tmp_path / "reports"
    refused(
        capsys,
        args(gate_registry, data, out),
        out,
        rf"{re.escape(str(data / 'report_damage.txt'))}:1: intent\(s\) 'report_damage' are not in "
        r"release v2",
    )


def test_empty_data(capsys, gate_registry, tmp_path):
    out = tmp_path / "reports"
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    refused(
        capsys,
        args(gate_registry, empty_dir, out),
        out,
        rf"{re.escape(str(empty_dir))}: folder has no <intent>.txt files",
    )
    empty_file = tmp_path / "card_lost.txt"
    empty_file.write_text("", encoding="utf-8")
    refused(
        capsys,
        args(gate_registry, empty_file, out),
        out,
        rf"{re.escape(str(empty_file))}: file is empty",
    )


def test_data_without_old_intent_utterances(capsys, gate_registry, gate_data, tmp_path):
    out = tmp_path / "reports"
    only_new = gate_data / "test" / f"{NEW}.txt"
    refused(
        capsys,
        args(gate_registry, only_new, out),
        out,
        rf"{re.escape(str(only_new))}: none of its 30 utterances belongs to an intent of baseline v1",
    )


def test_malformed_golden(capsys, gate_registry, gate_data, tmp_path):
    out, data = tmp_path / "reports", gate_data / "test"
    golden = tmp_path / "golden.yaml"
    golden.write_text('"lost card please": card_lost\n"where: refund_status\n', encoding="utf-8")
    refused(
        capsys,
        args(gate_registry, data, out, "v2", "--golden", golden),
        out,
        rf"{re.escape(str(golden))}:3: not valid YAML: .*quoted scalar at line 2\)$",
    )
    golden.write_text('"lost card please": card_lost\n"my parcel": report_damage\n')
    refused(
        capsys,
        args(gate_registry, data, out, "v2", "--golden", golden),
        out,
        rf"{re.escape(str(golden))}:2: intent 'report_damage' is not in release v2",
    )
    refused(
        capsys,
        args(gate_registry, data, out, "v2", "--golden", tmp_path / "missing.yaml"),
        out,
        r".*missing\.yaml: golden file not found",
    )
    refused(
        capsys,
        args(gate_registry, data, out, "v2", "--golden", tmp_path),
        out,
        rf"{re.escape(str(tmp_path))}: is a folder; expected a golden YAML file",
    )


def test_bad_gate_config(capsys, gate_registry, gate_data, tmp_path):
    out = tmp_path / "reports"
    config = tmp_path / "gate.yaml"
    config.write_text("gate:\n  max_dorp: 5\n", encoding="utf-8")
    refused(
        capsys,
        args(gate_registry, gate_data / "test", out, "v2", "--config", config),
        out,
        rf"{re.escape(str(config))}: unknown key `gate.max_dorp`. Did you mean `max_drop`\?",
    )


def test_missing_required_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["check", "--candidate", "v2"])
    assert exc.value.code == 2
    assert "--data" in capsys.readouterr().err


def test_eval_against_reports_the_same_paired_numbers(gate_registry, gate_data, tmp_path):
    """`intent-ci eval --against` and the gate use the same shipped intent_regression metric."""
    out = tmp_path / "reports"
    assert check(gate_registry, "v2", gate_data / "test", out) == 0
    gate = read_report(out)["old_intents"]
    result_file = tmp_path / "eval.json"
    argv = ["eval", "--release", "v2", "--against", "v1", "--data", gate_data / "test"]
    assert main([str(a) for a in [*argv, "--registry", gate_registry, "--json", result_file]]) == 0
    paired = json.loads(result_file.read_text(encoding="utf-8"))["against"]["paired"]
    assert (paired["broken"], paired["fixed"], paired["n"]) == (
        gate["broken"],
        gate["fixed"],
        gate["n"],
    )
    assert paired["p_value"] == pytest.approx(gate["p_value"])
    assert 100 * paired["drop"] == pytest.approx(gate["drop_points"])


def test_without_matplotlib_the_png_is_skipped_with_a_clear_message(
    gate_registry, gate_data, tmp_path, monkeypatch, caplog
):
    """matplotlib is a dev/bench/plot extra; without it the gate still writes JSON and Markdown."""
    from intent_ci.check import run_check

    for name in ("matplotlib.figure", "matplotlib.backends.backend_agg", "matplotlib.lines"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` raises ImportError
    out = tmp_path / "reports"
    report = run_check(gate_registry, "v2", gate_data / "test", report_dir=out)
    assert report["png"] is None and not (out / "report.png").exists()
    assert report["png_skipped"] == "matplotlib is not installed (pip install 'intent-ci[plot]')"
    assert "report.png not written: matplotlib is not installed" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["verdict"] == "pass"
    assert "report.png skipped: matplotlib is not installed" in caplog.text
