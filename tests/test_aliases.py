"""Aliases: named pointers (production -> v2) beside LATEST, through the real CLI and registry.

Every test works on a private copy of the session's trained registry (v1: 4 intents, v2: +
refund_status) and checks the files on disk: ``ALIASES.json``, ``LATEST`` and ``HISTORY.jsonl``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from filelock import FileLock

from intent_ci.cli import main
from intent_ci.errors import IntentCIError
from intent_ci.registry import Registry
from tests.conftest import snapshot


@pytest.fixture
def reg(tmp_path, trained_registry) -> Path:
    return Path(shutil.copytree(trained_registry, tmp_path / "adapters"))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_alias_set_list_delete_are_stored_atomically_and_logged(reg, capsys):
    history = Registry(reg).history()
    code, out, _ = run(capsys, "alias", "set", "production", "v1", "--registry", reg)
    assert (code, out) == (0, "production: - -> v1 (logged in HISTORY.jsonl)\n")
    assert json.loads((reg / "ALIASES.json").read_text(encoding="utf-8")) == {"production": "v1"}
    # `latest` and other aliases resolve when the alias is set: the release id is stored.
    assert run(capsys, "alias", "set", "staging-eu", "latest", "--registry", reg)[0] == 0
    assert run(capsys, "alias", "set", "canary", "production", "--registry", reg)[0] == 0
    code, out, _ = run(capsys, "alias", "set", "production", "v2", "--registry", reg)
    assert (code, out) == (0, "production: v1 -> v2 (logged in HISTORY.jsonl)\n")
    code, out, _ = run(capsys, "alias", "set", "production", "v2", "--registry", reg)
    assert (code, out) == (0, "production already points to v2; nothing changed\n")

    code, out, _ = run(capsys, "alias", "list", "--json", "--registry", reg)
    assert code == 0
    assert json.loads(out) == {"canary": "v1", "production": "v2", "staging-eu": "v2"}
    code, out, _ = run(capsys, "alias", "list", "--registry", reg)
    assert out.split("\n")[:3] == [
        f"{a:<24} {r}" for a, r in (("canary", "v1"), ("production", "v2"), ("staging-eu", "v2"))
    ]

    code, out, _ = run(capsys, "alias", "delete", "canary", "--registry", reg)
    assert (code, out) == (0, "canary: deleted (pointed to v1; no release deleted)\n")
    assert Registry(reg).aliases() == {"production": "v2", "staging-eu": "v2"}
    assert Registry(reg).releases() == ["v1", "v2"]
    assert not [p for p in reg.iterdir() if p.name.startswith(".tmp-")]

    moves = [
        (e["event"], e["alias"], e["release"], e["previous"])
        for e in Registry(reg).history()[len(history) :]
    ]
    assert moves == [
        ("alias_set", "production", "v1", None),
        ("alias_set", "staging-eu", "v2", None),
        ("alias_set", "canary", "v1", None),
        ("alias_set", "production", "v2", "v1"),  # the no-op set is not logged
        ("alias_delete", "canary", None, "v1"),
    ]


def test_releases_and_show_name_the_aliases(reg, capsys):
    run(capsys, "alias", "set", "production", "v1", "--registry", reg)
    code, out, _ = run(capsys, "releases", "--registry", reg)
    assert code == 0 and out.split("\n")[1].endswith("  [production]"), out
    code, out, _ = run(capsys, "releases", "--json", "--registry", reg)
    assert [r["aliases"] for r in json.loads(out)] == [["production"], []]
    code, out, _ = run(capsys, "show", "production", "--registry", reg)
    assert out.startswith("release   v1  aliases: production\n"), out


def test_rollback_moves_latest_and_leaves_aliases_alone(reg, capsys):
    run(capsys, "alias", "set", "production", "v2", "--registry", reg)
    code, out, _ = run(capsys, "rollback", "v1", "--registry", reg)
    assert code == 0 and Registry(reg).latest() == "v1"
    assert Registry(reg).aliases() == {"production": "v2"}
    # An alias is accepted by rollback too: LATEST -> the release it names.
    code, out, _ = run(capsys, "rollback", "production", "--registry", reg)
    assert (code, out) == (0, "latest: v1 -> v2 (no release deleted; logged in HISTORY.jsonl)\n")


def test_predict_eval_and_check_accept_an_alias(reg, data_dir, tmp_path, capsys):
    test_data = tmp_path / "test"  # the intents v2 knows
    shutil.copytree(data_dir / "test", test_data)
    (test_data / "report_damage.txt").unlink()
    run(capsys, "alias", "set", "production", "v1", "--registry", reg)
    text = "my card is lost"
    by_id = run(capsys, "predict", "--release", "v1", "--json", text, "--registry", reg)
    by_alias = run(capsys, "predict", "--release", "production", "--json", text, "--registry", reg)
    assert by_id[0] == by_alias[0] == 0 and by_alias[1] == by_id[1]

    out_file = tmp_path / "eval.json"
    code, _, err = run(
        capsys, "eval", "--release", "latest", "--against", "production",
        "--data", test_data, "--json", out_file, "--registry", reg,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out_file.read_text(encoding="utf-8"))
    assert (result["release"], result["against"]["release"]) == ("v2", "v1")

    code, out, _ = run(
        capsys, "check", "--candidate", "latest", "--baseline", "production",
        "--data", test_data, "--report-dir", tmp_path / "reports", "--registry", reg,
    )  # fmt: skip
    assert code in (0, 1), out
    report = json.loads((tmp_path / "reports" / "report.json").read_text(encoding="utf-8"))
    baseline = report["baseline"]
    assert (baseline["release"] if isinstance(baseline, dict) else baseline) == "v1"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("latest", "invalid alias 'latest'"),
        ("history", "invalid alias 'history'"),
        ("v7", "alias 'v7' looks like a release id"),
        ("v02", "alias 'v02' looks like a release id"),
        ("../prod", "invalid alias '../prod'"),
        ("Prod", "invalid alias 'Prod'"),
    ],
)
def test_bad_alias_names_are_refused_before_anything_is_written(reg, capsys, name, message):
    before = snapshot(reg)
    code, out, err = run(capsys, "alias", "set", name, "v1", "--registry", reg)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1, err
    assert snapshot(reg) == before


def test_alias_to_an_unknown_release_and_unknown_alias(reg, capsys):
    before = snapshot(reg)
    code, _, err = run(capsys, "alias", "set", "production", "v9", "--registry", reg)
    assert code == 2 and "unknown release 'v9'" in err and "releases: v1, v2" in err
    code, _, err = run(capsys, "alias", "delete", "production", "--registry", reg)
    assert code == 2 and "unknown alias 'production'" in err and "aliases: none" in err
    code, _, err = run(capsys, "predict", "--release", "prod", "hi", "--registry", reg)
    assert code == 2 and "unknown release or alias 'prod'" in err
    assert snapshot(reg) == before


def test_alias_set_refuses_a_release_that_fails_verification(reg, capsys):
    """A folder copied from v1 as v3 (its manifest still says v1's lineage and content): serving
    would refuse it, so `alias set` does, and nothing is written."""
    shutil.copytree(reg / "v1", reg / "v3")
    before = snapshot(reg)
    code, _, err = run(capsys, "alias", "set", "production", "v3", "--registry", reg)
    assert code == 2 and err.startswith("intent-ci: error: ") and "v3" in err, err
    assert "Traceback" not in err and snapshot(reg) == before
    # a sound release is still accepted
    assert run(capsys, "alias", "set", "production", "v2", "--registry", reg)[0] == 0


def test_verify_reports_an_alias_to_a_missing_release(reg, capsys):
    run(capsys, "alias", "set", "production", "v2", "--registry", reg)
    assert run(capsys, "verify", "--all", "--registry", reg)[0] == 0
    (reg / "ALIASES.json").write_text('{"production": "v9"}\n', encoding="utf-8")
    code, out, _ = run(capsys, "verify", "--all", "--registry", reg)
    assert code == 1
    assert "alias 'production' points to 'v9', which is not a complete release" in out
    code, _, err = run(capsys, "predict", "--release", "production", "hi", "--registry", reg)
    assert code == 2 and "alias 'production' points to 'v9'" in err
    # A release id still resolves, and `alias set` repairs the file.
    assert run(capsys, "alias", "set", "production", "v1", "--registry", reg)[0] == 0
    assert run(capsys, "verify", "--all", "--registry", reg)[0] == 0


@pytest.mark.parametrize(
    "content", [b"not json", b'["production"]', b'{"production": "../v1"}', b'{"latest": "v1"}']
)
def test_a_damaged_aliases_file_is_reported_not_trusted(reg, capsys, content):
    (reg / "ALIASES.json").write_bytes(content)
    code, out, _ = run(capsys, "verify", "--all", "--registry", reg)
    assert code == 1 and "ALIASES.json" in out, out
    with pytest.raises(IntentCIError, match="ALIASES.json"):
        Registry(reg).resolve("production")
    assert Registry(reg).resolve("v1") == "v1"  # release ids never read the file
    # Never overwritten blindly: the other aliases in it would be lost.
    code, _, err = run(capsys, "alias", "set", "production", "v1", "--registry", reg)
    assert code == 2 and f"{reg / 'ALIASES.json'}: " in err and err.count("\n") == 1, err
    assert (reg / "ALIASES.json").read_bytes() == content


def test_alias_set_waits_for_the_registry_lock(reg, capsys):
    before = snapshot(reg)
    lock = FileLock(str(reg / ".lock"))
    with lock:
        code, _, err = run(
            capsys, "alias", "set", "production", "v1", "--lock-timeout", "0.2", "--registry", reg
        )
    assert code == 2 and "registry lock" in err
    assert snapshot(reg) == before
