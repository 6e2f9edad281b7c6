"""The registry (ids, `LATEST`, staging, verification) and loading releases back, with damage.

Registry mechanics are tested on small hand-made releases committed through the real
`Registry.stage()` / `Registry.commit()`. Loading is tested on private copies of the session's
trained registry (v1: 4 intents, v2: + refund_status), damaged in one precise way each time.
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
from safetensors.torch import load_file, save_file

from intent_ci.cli import main
from intent_ci.errors import IntentCIError, LatestMovedError, ReleaseVerificationError
from intent_ci.registry import Registry
from intent_ci.release import load_release
from tests.conftest import BASE_INTENTS, snapshot


# ---- helpers ---------------------------------------------------------------------------------
def commit_release(registry: Registry, payload: bytes = b"weights") -> str:
    """Stage one file and commit it with the smallest manifest `Registry.manifest` accepts."""
    with registry.stage() as staging:
        (staging / "weights.bin").write_bytes(payload)
        return registry.commit(
            staging, {"parent": None, "intents": ["card_lost"], "backbone": {}, "config": {}}
        )


def rehash(folder: Path, name: str) -> None:
    """Record `name`'s current sha256 and size in the manifest, so only later checks can fire."""
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "adapters")


@pytest.fixture
def trained(tmp_path, trained_registry) -> Path:
    """A private copy of the trained registry, safe to damage."""
    return Path(shutil.copytree(trained_registry, tmp_path / "trained"))


# ---- ids and LATEST --------------------------------------------------------------------------
def test_ids_are_allocated_in_order(registry):
    assert [commit_release(registry, bytes([i])) for i in range(3)] == ["v1", "v2", "v3"]
    assert registry.releases() == ["v1", "v2", "v3"]
    assert registry.manifest("v2")["release"] == "v2"
    assert registry.latest() == "v3"


def test_ids_sort_numerically(registry):
    """v10 comes after v9, not after v1."""
    for _ in range(9):
        commit_release(registry)
    assert commit_release(registry) == "v10"
    assert registry.releases()[-2:] == ["v9", "v10"]


def test_id_of_a_deleted_middle_release_is_not_reused(registry):
    for _ in range(3):
        commit_release(registry)
    shutil.rmtree(registry.root / "v2")
    assert commit_release(registry) == "v4"
    assert registry.releases() == ["v1", "v3", "v4"]


def test_incomplete_release_folder_is_skipped_not_reused(registry):
    commit_release(registry)
    (registry.root / "v2").mkdir()  # e.g. a half-copied folder: no manifest
    assert registry.releases() == ["v1"]
    assert commit_release(registry) == "v3"
    assert not (registry.root / "v2" / "manifest.json").exists()


def test_id_of_the_newest_release_is_not_reused_after_deletion(registry):
    commit_release(registry)
    commit_release(registry)
    shutil.rmtree(registry.root / "v2")
    assert commit_release(registry) == "v3"


def test_latest_moves_by_atomic_replace(registry):
    commit_release(registry)
    pointer = registry.root / "LATEST"
    assert pointer.read_text(encoding="utf-8") == "v1\n"
    inode = pointer.stat().st_ino
    commit_release(registry)
    assert pointer.read_text(encoding="utf-8") == "v2\n"
    # A new inode: the pointer was replaced by a renamed temp file, not rewritten in place.
    assert pointer.stat().st_ino != inode
    assert not [p.name for p in registry.root.iterdir() if p.name.startswith(".LATEST")]
    assert registry.latest() == "v2"
    assert registry.resolve("latest") == "v2"
    assert registry.resolve("v1") == "v1"


def test_resolve_latest_without_releases(registry):
    registry.root.mkdir()
    with pytest.raises(IntentCIError, match=r"has no releases yet; run `intent-ci init` first$"):
        registry.resolve("latest")


def test_latest_pointing_to_a_missing_release_is_reported(registry):
    commit_release(registry)
    (registry.root / "LATEST").write_text("v7\n", encoding="utf-8")
    with pytest.raises(
        ReleaseVerificationError, match=r"LATEST: points to 'v7', which is not a complete release"
    ):
        registry.resolve("latest")


# ---- staging -----------------------------------------------------------------------------------
def test_failed_write_leaves_no_staging_and_no_release(registry):
    commit_release(registry)
    before = snapshot(registry.root)
    with pytest.raises(RuntimeError, match="disk full"):
        with registry.stage() as staging:
            (staging / "weights.bin").write_bytes(b"partial")
            (staging / "labels.json").write_text("{}", encoding="utf-8")
            raise RuntimeError("disk full")
    assert not staging.exists()
    assert snapshot(registry.root) == before
    assert registry.releases() == ["v1"] and registry.latest() == "v1"
    assert commit_release(registry) == "v2"


def test_stale_staging_is_ignored_and_cleaned(registry):
    commit_release(registry)
    stale = registry.root / f".staging-{dead_pid()}-0123456789ab"
    stale.mkdir()
    (stale / "manifest.json").write_text('{"release": "v2"}', encoding="utf-8")
    live = registry.root / f".staging-{os.getpid()}-ba9876543210"  # ours: still running
    live.mkdir()

    assert registry.releases() == ["v1"]
    assert registry.stale_staging() == [stale]
    assert registry.clean_stale_staging() == [stale.name]
    assert not stale.exists() and live.exists()
    assert registry.releases() == ["v1"]
    assert commit_release(registry) == "v2"


# ---- verify ------------------------------------------------------------------------------------
def test_verify_accepts_an_untouched_release(trained):
    manifest = Registry(trained).verify("v2")
    assert manifest["intents"] == [*BASE_INTENTS, "refund_status"]


def test_verify_detects_a_tampered_file(trained):
    head = trained / "v1" / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(
        ReleaseVerificationError,
        match=rf"^{re.escape(str(head))}: sha256 [0-9a-f]{{12}}… does not match the manifest's "
        r"[0-9a-f]{12}…; the release was altered or damaged$",
    ):
        Registry(trained).verify("v1")


def test_verify_detects_an_extra_file(trained):
    extra = trained / "v1" / "notes.txt"
    extra.write_text("hello", encoding="utf-8")
    with pytest.raises(
        ReleaseVerificationError,
        match=rf"^{re.escape(str(extra))}: not listed in the manifest; releases never change$",
    ):
        Registry(trained).verify("v1")


def test_verify_detects_a_missing_file(trained):
    missing = trained / "v1" / "replay.json"
    missing.unlink()
    with pytest.raises(
        ReleaseVerificationError,
        match=rf"^{re.escape(str(missing))}: listed in the manifest but missing$",
    ):
        Registry(trained).verify("v1")


def test_manifest_that_is_not_json(trained, capsys):
    manifest = trained / "v1" / "manifest.json"
    manifest.write_text('{"release": "v1", ', encoding="utf-8")
    with pytest.raises(
        ReleaseVerificationError, match=rf"^{re.escape(str(manifest))}: not valid JSON \("
    ):
        Registry(trained).verify("v1")
    # Through the CLI: one line, exit 2, no traceback.
    before = snapshot(trained)
    assert main(["show", "v1", "--registry", str(trained)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"^intent-ci: error: {re.escape(str(manifest))}: not valid JSON", err, re.M)
    assert "Traceback" not in err
    assert snapshot(trained) == before


def test_tampered_release_is_refused_by_predict(trained, capsys):
    labels = trained / "v2" / "labels.json"
    labels.write_text(labels.read_text(encoding="utf-8").replace("refund", "refunds"), "utf-8")
    before = snapshot(trained)
    assert main(["predict", "where is my refund", "--registry", str(trained)]) == 2
    err = capsys.readouterr().err
    assert re.search(rf"^intent-ci: error: {re.escape(str(labels))}: sha256 ", err, re.M), err
    assert "Traceback" not in err
    assert snapshot(trained) == before


# ---- load_release -----------------------------------------------------------------------------
def test_load_release_refuses_a_different_backbone(trained, tiny_backbone_other):
    """The manifest is not hashed itself, so this re-points v1 at a backbone with other weights."""

    def point_elsewhere(manifest):
        manifest["config"]["model"]["backbone"] = str(tiny_backbone_other)

    edit_manifest(trained / "v1", point_elsewhere)
    with pytest.raises(
        ReleaseVerificationError,
        match=rf"^release v1 was trained on backbone '[^']+' with weights sha256:[0-9a-f]+…, but "
        rf"{re.escape(repr(str(tiny_backbone_other)))} loaded here has weights sha256:[0-9a-f]+…; "
        r"load the same backbone",
    ):
        load_release(Registry(trained), "v1")


def test_labels_that_differ_from_the_manifest_intents(trained):
    folder = trained / "v2"
    (folder / "labels.json").write_text(json.dumps({"intents": BASE_INTENTS}), encoding="utf-8")
    rehash(folder, "labels.json")  # passes the hash check; manifest["intents"] still lists 5
    with pytest.raises(
        ReleaseVerificationError,
        match=rf"^{re.escape(str(folder / 'labels.json'))}: intents differ from the manifest's",
    ):
        load_release(Registry(trained), "v2")


@pytest.mark.parametrize("intents", [BASE_INTENTS, [*BASE_INTENTS, "refund_status", "extra"]])
def test_label_map_size_differs_from_the_head(trained, intents):
    """labels.json, its hash and manifest["intents"] agree; only the 5-row head disagrees."""
    folder = trained / "v2"
    (folder / "labels.json").write_text(json.dumps({"intents": intents}), encoding="utf-8")
    rehash(folder, "labels.json")
    edit_manifest(folder, lambda m: m.update(intents=intents))
    with pytest.raises(
        ReleaseVerificationError,
        match=rf"^{re.escape(str(folder / 'head.safetensors'))}: head's out_proj has shape \(5, 32\) but "
        rf"labels.json lists {len(intents)} intents$",
    ):
        load_release(Registry(trained), "v2")


def _head_variants(good: bytes, tmp: Path) -> dict[str, bytes]:
    """Damaged head files: broken containers, and valid safetensors with the wrong tensors."""
    state = load_file(str(tmp.parent / "good.safetensors"))

    def saved(tensors: dict[str, torch.Tensor]) -> bytes:
        save_file(tensors, str(tmp))
        return tmp.read_bytes()

    return {
        "empty": b"",
        "truncated-half": good[: len(good) // 2],
        "truncated-tail": good[:-10],
        "header-only": good[:5],
        "garbage": b"\xde\xad\xbe\xef" * 64,
        "huge-header-length": (10**12).to_bytes(8, "little") + b"{}",
        "no-out_proj": saved({k: v for k, v in state.items() if k != "out_proj.weight"}),
        "wrong-width": saved({**state, "out_proj.weight": torch.zeros(5, 7)}),
        "unexpected-tensor": saved({**state, "extra": torch.zeros(2)}),
    }


@pytest.mark.parametrize(
    "variant",
    [
        "empty",
        "truncated-half",
        "truncated-tail",
        "header-only",
        "garbage",
        "huge-header-length",
        "no-out_proj",
        "wrong-width",
        "unexpected-tensor",
    ],
)
def test_damaged_head_is_a_verification_error(trained, tmp_path, variant):
    folder = trained / "v2"
    head = folder / "head.safetensors"
    shutil.copy(head, tmp_path / "good.safetensors")
    head.write_bytes(_head_variants(head.read_bytes(), tmp_path / "variant.safetensors")[variant])
    rehash(folder, "head.safetensors")  # so the hash check passes and the loader itself must cope
    with pytest.raises(ReleaseVerificationError, match=rf"^{re.escape(str(head))}: "):
        load_release(Registry(trained), "v2")


def test_head_with_a_scalar_out_proj_is_a_verification_error(trained):
    folder = trained / "v2"
    head = folder / "head.safetensors"
    state = load_file(str(head))
    save_file({**state, "out_proj.weight": torch.tensor(1.0)}, str(head))
    rehash(folder, "head.safetensors")
    with pytest.raises(ReleaseVerificationError, match=rf"^{re.escape(str(head))}: "):
        load_release(Registry(trained), "v2")


# ---- CLI lineage ------------------------------------------------------------------------------
def test_cli_releases_and_show_print_lineage(trained_registry, capsys):
    before = snapshot(trained_registry)
    reg = ["--registry", str(trained_registry)]

    assert main(["releases", *reg]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^v1\s+-\s+4\s", out, re.M), out
    assert re.search(r"^v2\*\s+v1\s+5\s.*refund_status$", out, re.M), out

    assert main(["releases", "--json", *reg]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["release"], r["parent"], r["latest"]) for r in rows] == [
        ("v1", None, False),
        ("v2", "v1", True),
    ]
    assert rows[1]["new_intents"] == ["refund_status"]

    assert main(["show", "latest", *reg]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^release\s+v2  \(latest\)$", out, re.M), out
    assert re.search(r"^parent\s+v1$", out, re.M), out
    assert re.search(r"^added\s+refund_status$", out, re.M), out

    assert main(["show", "v1", *reg]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^parent\s+-$", out, re.M), out
    assert re.search(
        r"^intents\s+4: card_lost, check_balance, opening_hours, transfer_money$", out, re.M
    )

    assert snapshot(trained_registry) == before


# ---- no lost updates -------------------------------------------------------------------------
def test_commit_moves_latest_only_if_no_other_run_moved_it(registry):
    assert commit_release(registry, b"a") == "v1"
    started_at = registry.latest()  # two runs start from v1
    with registry.stage() as staging:
        (staging / "weights.bin").write_bytes(b"b")
        first = registry.commit(
            staging,
            {"parent": "v1", "intents": ["card_lost", "refund"], "backbone": {}, "config": {}},
            expect_latest=started_at,
        )
    assert (first, registry.latest()) == ("v2", "v2")
    with pytest.raises(LatestMovedError) as caught, registry.stage() as staging:
        (staging / "weights.bin").write_bytes(b"c")
        registry.commit(
            staging,
            {"parent": "v1", "intents": ["card_lost", "damage"], "backbone": {}, "config": {}},
            expect_latest=started_at,
        )
    err = caught.value
    assert (err.release, err.latest) == ("v3", "v2")
    assert str(err).startswith(
        "v3 was written (parent v1), but LATEST did not move to it: LATEST was v1 when this run "
        "started, and another run has since moved it to v2 and lacks refund. LATEST stays at v2"
    )
    assert registry.releases() == ["v1", "v2", "v3"] and registry.latest() == "v2"
    assert registry.history()[-1] == {
        **registry.history()[-1],
        "event": "release_not_latest",
        "release": "v3",
        "latest": "v2",
    }
    # Without expect_latest (adopting, tests), LATEST moves as before.
    assert commit_release(registry, b"d") == "v4" and registry.latest() == "v4"


def test_cli_exit_1_when_latest_moved_during_add_intent(trained, data_dir, capsys, monkeypatch):
    """A run that finds LATEST moved exits 1 (the release is written), not 2 and not 0."""
    from intent_ci import pipeline

    write = pipeline._write_release

    def another_run_commits_first(registry, accelerator, **kwargs):
        Registry(registry.root).move_latest("v1", "rollback")  # a real move by "another run"
        return write(registry, accelerator, **kwargs)

    monkeypatch.setattr(pipeline, "_write_release", another_run_commits_first)
    code = main(
        ["add-intent", "--data", str(data_dir / "new" / "report_damage.txt"),
         "--registry", str(trained)]
    )  # fmt: skip
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bars
    assert code == 1, err
    assert err.startswith("intent-ci: error: v3 was written (parent v2), but LATEST did not move")
    assert "moved it to v1" in err
    assert Registry(trained).latest() == "v1" and "v3" in Registry(trained).releases()
