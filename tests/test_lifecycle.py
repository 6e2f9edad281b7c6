"""verify, rollback, diff and retire, through the CLI, on copies of the session's trained registry.

v1 holds the 4 base intents, v2 adds refund_status. Damage is done by hand, one precise kind
at a time, the way a person or a broken copy would do it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from intent_ci.cli import main
from intent_ci.data import INTENT, IntentData, read_examples
from intent_ci.evaluation import evaluate_release
from intent_ci.pipeline import add_intents
from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier
from tests.conftest import BASE_INTENTS, snapshot

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def reg(tmp_path, trained_registry) -> Path:
    return Path(shutil.copytree(trained_registry, tmp_path / "adapters"))


def edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- verify ------------------------------------------------------------------------------------
def test_verify_passes_on_an_intact_registry(reg, capsys):
    before = snapshot(reg)
    code, out, _ = run(capsys, "verify", "--all", "--registry", reg)
    assert code == 0, out
    assert re.search(r"^v1\s+ok\s+4 intents, parent -$", out, re.M), out
    assert re.search(r"^v2\s+ok\s+5 intents, parent v1$", out, re.M), out
    assert out.rstrip().endswith("2 release(s) checked: 2 ok, 0 failed")
    code, out, _ = run(capsys, "verify", "--registry", reg)  # default: latest, whole lineage
    assert code == 0 and out.rstrip().splitlines()[0].startswith("v2 ")
    code, out, _ = run(capsys, "verify", "v1", "--json", "--registry", reg)
    assert code == 0 and json.loads(out)["releases"] == [
        {"release": "v1", "ok": True, "intents": 4, "parent": None, "problems": []}
    ]
    assert snapshot(reg) == before


def test_verify_lists_every_problem_and_exits_1(reg, capsys):
    head = reg / "v1" / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    extra = reg / "v2" / "notes.txt"
    extra.write_text("hello", encoding="utf-8")
    missing = reg / "v2" / "replay.json"
    missing.unlink()
    before = snapshot(reg)

    code, out, _ = run(capsys, "verify", "--all", "--registry", reg)
    assert code == 1, out
    assert re.search(r"^v1\s+FAILED$", out, re.M) and re.search(r"^v2\s+FAILED$", out, re.M)
    assert f"  - {head}: sha256 " in out and "the release was altered or damaged" in out
    assert f"  - {missing}: listed in the manifest but missing" in out
    assert f"  - {extra}: not listed in the manifest; releases never change" in out
    assert out.rstrip().endswith("2 release(s) checked: 0 ok, 2 failed")

    code, out, _ = run(capsys, "verify", "--all", "--json", "--registry", reg)
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert [len(r["problems"]) for r in report["releases"]] == [1, 2]
    assert snapshot(reg) == before


def test_verify_checks_the_lineage(reg, capsys):
    """Label maps only grow and a lineage shares one backbone; the manifests say so or fail."""
    edit_manifest(reg / "v1", lambda m: m.update(intents=list(reversed(m["intents"]))))
    edit_manifest(reg / "v2", lambda m: m["backbone"].update(fingerprint="sha256:" + "0" * 64))
    code, out, _ = run(capsys, "verify", "--all", "--registry", reg)
    assert code == 1
    v1, v2 = reg / "v1", reg / "v2" / "manifest.json"
    assert f"  - {v1 / 'labels.json'}: intents differ from the manifest's `intents`" in out
    assert (
        f"  - {v2}: label map shrank or was reordered: the intents must start with parent v1's "
        "4 intents in order, but position 0 holds 'card_lost' where v1 has 'transfer_money' "
        "(only releases made by retire, which list `retired_intents`, may drop intents)"
    ) in out
    assert f"  - {v2}: field `parent_intents` differs from parent v1's intents" in out
    assert re.search(
        rf"  - {re.escape(str(v2))}: field `backbone.fingerprint` is 'sha256:0+' but parent v1 has "
        r"'sha256:[0-9a-f]+'; a lineage shares one backbone",
        out,
    ), out


def test_verify_refuses_a_retire_that_keeps_the_intent(reg, capsys):
    edit_manifest(reg / "v2", lambda m: m.update(retired_intents=["card_lost"]))
    code, out, _ = run(capsys, "verify", "v2", "--registry", reg)
    assert code == 1
    assert (
        f"{reg / 'v2' / 'manifest.json'}: a release made by retire must hold its parent v1's intents "
        "minus card_lost, in order; it holds 5 intents that differ"
    ) in out


def test_verify_backbone_compares_real_weights(reg, capsys, tiny_backbone_other):
    code, out, _ = run(capsys, "verify", "--all", "--backbone", "--registry", reg)
    assert code == 0, out
    for release in ("v1", "v2"):
        edit_manifest(
            reg / release, lambda m: m["config"]["model"].update(backbone=str(tiny_backbone_other))
        )
    code, out, _ = run(capsys, "verify", "--all", "--backbone", "--registry", reg)
    assert code == 1
    assert re.search(
        r"  - release v1 was trained on backbone '[^']+' with weights sha256:[0-9a-f]{12}…, but the "
        r"weights loaded here are sha256:[0-9a-f]{12}…$",
        out,
        re.M,
    ), out


def test_verify_notes_leftovers_of_killed_runs_without_failing(reg, capsys):
    stale = reg / f".staging-{dead_pid()}-0123456789ab"
    stale.mkdir()
    (stale / "head.safetensors").write_bytes(b"half a file")
    tmp = reg / f".tmp-{dead_pid()}-LATEST"
    tmp.write_text("v9", encoding="utf-8")
    code, out, _ = run(capsys, "verify", "--all", "--registry", reg)
    assert code == 0, out
    assert (
        f"note: {stale}: left by a run that was killed; never loaded, removed by the next write"
        in out
    )
    assert f"note: {tmp}: left by a run that was killed" in out
    assert Registry(reg).latest() == "v2"


def test_verify_usage_errors_exit_2(reg, capsys, tmp_path):
    code, _, err = run(capsys, "verify", "v1", "--all", "--registry", reg)
    assert (code, err) == (2, "intent-ci: error: verify takes a release name or --all, not both\n")
    code, _, err = run(capsys, "verify", "v9", "--registry", reg)
    assert code == 2 and "unknown release 'v9'" in err
    code, _, err = run(capsys, "verify", "--all", "--registry", tmp_path / "none")
    assert (
        code == 2
        and err == f"intent-ci: error: no registry at {tmp_path / 'none'}; nothing to verify\n"
    )


# ---- rollback ----------------------------------------------------------------------------------
def release_files(reg: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(reg).items() if k.startswith("v")}


def test_rollback_moves_latest_back_and_never_deletes(reg, capsys):
    files = release_files(reg)
    history = Registry(reg).history()
    code, out, _ = run(capsys, "rollback", "v1", "--registry", reg)
    assert (code, out) == (0, "latest: v2 -> v1 (no release deleted; logged in HISTORY.jsonl)\n")
    assert (reg / "LATEST").read_text(encoding="utf-8") == "v1\n"
    assert IntentClassifier.load(reg).name == "v1"
    assert release_files(reg) == files
    entries = Registry(reg).history()
    assert entries[: len(history)] == history  # append-only
    assert {k: entries[-1][k] for k in ("event", "latest", "previous_latest")} == {
        "event": "rollback",
        "latest": "v1",
        "previous_latest": "v2",
    }
    code, out, _ = run(capsys, "rollback", "v1", "--registry", reg)
    assert (code, out) == (0, "v1 is already latest; nothing changed\n")
    assert len(Registry(reg).history()) == len(entries)
    assert run(capsys, "rollback", "v2", "--registry", reg)[0] == 0
    assert Registry(reg).latest() == "v2" and release_files(reg) == files


def test_rollback_repairs_a_damaged_latest(reg, capsys):
    (reg / "LATEST").write_text("v7\n", encoding="utf-8")
    code, out, _ = run(capsys, "rollback", "v1", "--registry", reg)
    assert (code, out) == (0, "latest: - -> v1 (no release deleted; logged in HISTORY.jsonl)\n")
    assert Registry(reg).latest() == "v1"


# ---- retire ------------------------------------------------------------------------------------
def all_utterances(data_dir: Path) -> list[str]:
    texts = []
    for folder in ("base", "new", "test"):
        for path in sorted((data_dir / folder).glob("*.txt")):
            texts += [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    return texts


def test_retire_changes_only_what_the_retired_intent_predicted(reg, data_dir, capsys):
    parent_files = {k: v for k, v in snapshot(reg).items() if k.startswith("v2/")}
    code, out, _ = run(capsys, "retire", "card_lost", "--registry", reg)
    assert code == 0
    assert out.splitlines()[0] == "v3: 4 intents, parent v2, retired card_lost"

    parent, child = IntentClassifier.load(reg, "v2"), IntentClassifier.load(reg, "v3")
    assert child.intents == ["check_balance", "opening_hours", "transfer_money", "refund_status"]
    texts = all_utterances(data_dir)
    keep = [i for i, name in enumerate(parent.intents) if name != "card_lost"]
    parent_logits, child_logits = parent.logits(texts), child.logits(texts)
    # Every other intent's logit is bit-identical: the head rows were copied, not recomputed.
    assert torch.equal(child_logits, parent_logits[:, keep])
    before = [p.label for p in parent.predict(texts)]
    after = [p.label for p in child.predict(texts)]
    moved = 0
    for row, (text, old, new) in enumerate(zip(texts, before, after, strict=True)):
        if old == "card_lost":
            # It goes to the parent's runner-up among the intents that remain.
            moved += 1
            runner_up = parent.intents[keep[int(parent_logits[row, keep].argmax())]]
            assert new == runner_up, text
        else:
            assert new == old, text
    assert moved >= 10, moved  # the test would prove nothing if no utterance went to card_lost

    manifest = Registry(reg).manifest("v3")
    assert manifest["retired_intents"] == ["card_lost"] and manifest["new_intents"] == []
    assert manifest["parent"] == "v2" and manifest["parent_intents"] == parent.intents
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (reg / "v3" / name).read_bytes() == (reg / "v2" / name).read_bytes()
    replay = json.loads((reg / "v3" / "replay.json").read_text(encoding="utf-8"))["exemplars"]
    assert set(replay) == set(child.intents)
    # The parent is untouched and still loads; rollback brings it back.
    assert {k: v for k, v in snapshot(reg).items() if k.startswith("v2/")} == parent_files
    assert run(capsys, "verify", "--all", "--registry", reg)[0] == 0
    assert run(capsys, "rollback", "v2", "--registry", reg)[0] == 0
    assert IntentClassifier.load(reg).intents == parent.intents


# ---- diff --------------------------------------------------------------------------------------
def test_diff_shows_intents_metrics_and_config(reg, data_dir, tmp_path, capsys):
    """v3 is a real add-intent with --eval-data and two config overrides. v2 was trained without
    --eval-data, so the test scores it the same way and stores the result in its manifest."""
    test = IntentData(
        read_examples(data_dir / "test").dataset.filter(lambda r: r[INTENT] != "report_damage"),
        str(data_dir / "test"),
    )
    scored = evaluate_release(IntentClassifier.load(reg, "v2"), test)
    scored["data"] = str(data_dir / "test")
    edit_manifest(reg / "v2", lambda m: m["metrics"].update(eval=scored))
    evaluation = tmp_path / "eval"
    shutil.copytree(data_dir / "test", evaluation)
    v3 = add_intents(
        data_dir / "new" / "report_damage.txt",
        reg,
        "v2",
        overrides={"train": {"add_intent_epochs": 1}, "distill": {"weight": 1.0}},
        eval_data=evaluation,
    )
    assert v3 == "v3"
    before = snapshot(reg)

    code, out, _ = run(capsys, "diff", "v2", "latest", "--json", "--registry", reg)
    assert code == 0
    result = json.loads(out)
    assert result["relation"] == "v3 descends from v2"
    assert (result["intents_added"], result["intents_removed"]) == (["report_damage"], [])
    assert result["config_changes"] == [
        {"field": "distill.weight", "a": 0.0, "b": 1.0},
        {"field": "train.add_intent_epochs", "a": 10, "b": 1},
    ]
    assert result["backbone_changes"] == []
    eval_a = scored
    eval_b = Registry(reg).manifest("v3")["metrics"]["eval"]
    per_intent = result["metrics"]["per_intent"]
    assert sorted(per_intent) == sorted([*BASE_INTENTS, "refund_status"])
    for intent, row in per_intent.items():
        a, b = eval_a["per_intent"][intent]["accuracy"], eval_b["per_intent"][intent]["accuracy"]
        assert row == {"a": a, "b": b, "delta": b - a}
    assert result["metrics"]["accuracy"]["delta"] == eval_b["accuracy"] - eval_a["accuracy"]
    assert result["metrics"]["data"] == {"a": str(data_dir / "test"), "b": str(evaluation)}

    code, out, _ = run(capsys, "diff", "v2", "v3", "--registry", reg)
    assert code == 0
    assert out.splitlines()[:3] == [
        "v2 -> v3: v3 descends from v2",
        "intents added    report_damage",
        "intents removed  -",
    ]
    assert (
        f"metrics          measured on different data: {data_dir / 'test'} vs {evaluation}" in out
    )
    assert re.search(r"^  card_lost\s+\d+\.\d% -> \d+\.\d% \([+-]\d+\.\d points\)$", out, re.M)
    assert re.search(r"^  distill\.weight\s+0\.0 -> 1\.0$", out, re.M), out
    assert re.search(r"^  train\.add_intent_epochs\s+10 -> 1$", out, re.M), out

    code, out, _ = run(capsys, "diff", "v3", "v1", "--registry", reg)
    assert code == 0 and "intents removed  refund_status, report_damage" in out
    assert "metrics          - (both releases need eval results: --eval-data)" in out
    assert snapshot(reg) == before


def test_concurrency_policy_lock_timeout_is_configurable(reg, capsys):
    """A run that cannot get the lock in time stops cleanly; nothing is committed."""
    from filelock import FileLock

    with FileLock(str(reg / ".lock")):
        before = snapshot(reg)
        code, _, err = run(
            capsys, "retire", "card_lost", "--lock-timeout", "0.2", "--registry", reg
        )
        assert code == 2
        assert err == (
            f"intent-ci: error: {reg}: another intent-ci run has held the registry lock "
            f"({reg / '.lock'}) for over 0.2 s; nothing was committed. Try again when it has "
            "finished, or raise --lock-timeout\n"
        )
        assert snapshot(reg) == before
    assert run(capsys, "retire", "card_lost", "--lock-timeout", "5", "--registry", reg)[0] == 0


def test_history_survives_a_torn_line(reg):
    registry = Registry(reg)
    entries = registry.history()
    with (reg / "HISTORY.jsonl").open("ab") as handle:
        handle.write(b'{"event": "rel')  # what a power cut in the middle of an append leaves
    registry.move_latest("v1", "rollback")
    assert registry.history() == [*entries, registry.history()[-1]]
    assert registry.history()[-1]["latest"] == "v1"
    lines = (reg / "HISTORY.jsonl").read_bytes().splitlines()
    assert lines[-2] == b'{"event": "rel' and json.loads(lines[-1])["latest"] == "v1"


def test_ids_stay_unique_across_retire_and_rollback(reg, capsys):
    hashes = {}
    for step in ("retire", "rollback", "retire"):
        if step == "retire":
            assert run(capsys, "retire", "opening_hours", "--from", "v2", "--registry", reg)[0] == 0
        else:
            assert run(capsys, "rollback", "v1", "--registry", reg)[0] == 0
        for name in Registry(reg).releases():
            digest = hashlib.sha256((reg / name / "manifest.json").read_bytes()).hexdigest()
            assert hashes.setdefault(name, digest) == digest  # a release never changes
    assert Registry(reg).releases() == ["v1", "v2", "v3", "v4"]
    assert Registry(reg).latest() == "v4"
    assert os.listdir(reg).count("v3") == 1


def test_the_package_never_unpickles_or_runs_remote_code():
    """Safe loading, checked on the source: no torch.load, no pickle, no trust_remote_code,
    no ignore_mismatched_sizes anywhere in intent_ci/ (registry files are safetensors and JSON)."""
    import ast

    package = Path(__file__).resolve().parents[1] / "intent_ci"
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "load":
                if isinstance(node.value, ast.Name) and node.value.id in ("torch", "pickle"):
                    found.append(f"{path.name}:{node.lineno} {node.value.id}.load")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(
                    m.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") for m in modules
                ):
                    found.append(f"{path.name}:{node.lineno} imports {modules}")
            if isinstance(node, ast.keyword) and node.arg in (
                "trust_remote_code",
                "ignore_mismatched_sizes",
                "weights_only",
            ):
                found.append(f"{path.name}:{node.lineno} {node.arg}=")
    assert found == []
