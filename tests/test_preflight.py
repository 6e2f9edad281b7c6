"""Checks before the first training step: adapter schema, registry, lock, disk space.

Each failing check runs through the real `add-intent` / `init` and must stop the run before
`training.train` is ever called (a guard replaces it and fails the test if reached), with one
line on stderr, exit 2, and the registry byte for byte as it was.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from intent_ci import pipeline, release
from intent_ci.cli import main
from intent_ci.errors import IntentCIError
from intent_ci.preflight import disk_problems, estimate_release_bytes, preflight
from intent_ci.registry import Registry
from intent_ci.release import adapter_config_of, load_release
from tests.conftest import snapshot


@pytest.fixture
def no_training(monkeypatch):
    def guard(*args, **kwargs):
        raise AssertionError("training started although a preflight check should have failed")

    monkeypatch.setattr(pipeline, "train", guard)


@pytest.fixture
def reg(tmp_path, trained_registry) -> Path:
    return Path(shutil.copytree(trained_registry, tmp_path / "adapters"))


def add_intent(capsys, data_dir, registry) -> tuple[int, str]:
    argv = ["add-intent", "--data", str(data_dir / "new" / "report_damage.txt")]
    code = main([*argv, "--registry", str(registry)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("intent-ci: error:")]
    return code, lines[-1] if lines else err


def test_adapter_schema_is_checked_before_training(
    tmp_path, data_dir, capsys, monkeypatch, tiny_backbone, no_training
):
    """A peft that writes a key the strict schema does not know fails before training.

    (A new peft key is what an upgrade brings; here the schema forgets one peft writes.)
    """
    monkeypatch.setattr(release, "_ADAPTER_KEYS", release._ADAPTER_KEYS - {"use_dora"})
    config = tmp_path / "tiny.yaml"
    config.write_text(f"model:\n  backbone: {tiny_backbone}\n", encoding="utf-8")
    target = tmp_path / "adapters"
    argv = ["init", "--data", str(data_dir / "base"), "--config", str(config)]
    assert main([*argv, "--registry", str(target)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(
        "intent-ci: error: checked before training, nothing was trained or written: peft "
    ), err
    assert "unknown key 'use_dora'" in err and "strict adapter schema refuses" in err
    assert not target.exists()


def test_the_preflight_schema_check_is_the_one_loading_applies(trained_registry, tiny_config):
    loaded = load_release(Registry(trained_registry), "v2")
    cfg = adapter_config_of(loaded.model.encoder)
    # The config peft would write for this model is exactly what the release holds on disk.
    on_disk = (trained_registry / "v2" / "adapter_config.json").read_text(encoding="utf-8")
    assert release.json.loads(on_disk) == release.json.loads(release.json.dumps(cfg))
    kwargs = dict(model_config=loaded.config.model, model_type="roberta", release_bytes=0)
    preflight(Registry(trained_registry), adapter_config=cfg, **kwargs)  # passes
    for key, value, message in [
        ("use_dora", True, r"'use_dora' must be null, false or empty, got true"),
        ("r", 99, r"'r' is 99 but the manifest requires 4"),
        ("trust_remote_code", True, r"remote-code flag 'trust_remote_code' is not allowed"),
    ]:
        with pytest.raises(IntentCIError, match=message):
            preflight(Registry(trained_registry), adapter_config={**cfg, key: value}, **kwargs)


def test_the_preflight_lists_a_schema_problem_and_missing_space_together(
    trained_registry, tiny_config
):
    """Every problem at once: a bad adapter config did not also report the disk (the disk check
    ran only when nothing else failed, so the user met the second problem on the next run)."""
    loaded = load_release(Registry(trained_registry), "v2")
    cfg = {**adapter_config_of(loaded.model.encoder), "use_dora": True}
    with pytest.raises(IntentCIError) as err:
        preflight(
            Registry(trained_registry),
            adapter_config=cfg,
            model_config=loaded.config.model,
            model_type="roberta",
            release_bytes=10**18,
        )
    assert "'use_dora' must be null" in str(err.value)
    assert "MB free on its filesystem, but the release needs about" in str(err.value)


def test_registry_that_is_a_file(tmp_path, data_dir, capsys, tiny_backbone, no_training):
    target = tmp_path / "adapters"
    target.write_text("not a registry\n", encoding="utf-8")
    config = tmp_path / "tiny.yaml"
    config.write_text(f"model:\n  backbone: {tiny_backbone}\n", encoding="utf-8")
    argv = ["init", "--data", str(data_dir / "base"), "--config", str(config)]
    assert main([*argv, "--registry", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "intent-ci: error: checked before training, nothing was trained or written: "
        f"{target}: is not a folder; choose another --registry"
    ), err
    assert target.read_text(encoding="utf-8") == "not a registry\n"


def test_lock_that_cannot_be_opened(reg, data_dir, capsys, no_training):
    (reg / ".lock").unlink(missing_ok=True)
    (reg / ".lock").mkdir()  # e.g. a broken copy; open() fails even for root
    before = snapshot(reg)
    code, err = add_intent(capsys, data_dir, reg)
    assert code == 2
    assert f"{reg / '.lock'}: cannot open the registry lock (Is a directory)" in err, err
    assert snapshot(reg) == before


def _read_only(folder: Path) -> bool:
    """Make `folder` read-only for this process: a read-only bind mount as root, chmod otherwise."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return True
    done = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True
    )
    if done.returncode != 0:
        return False
    # Some kernels ignore `ro` on the first bind; remount to apply it.
    subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
    return True


def _undo_read_only(folder: Path) -> None:
    if os.geteuid() != 0:
        folder.chmod(0o755)
    else:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_registry_that_is_not_writable(reg, data_dir, capsys, no_training):
    if not _read_only(reg):
        pytest.skip("cannot make a folder read-only here (no mount permission)")
    try:
        before = snapshot(reg)
        code, err = add_intent(capsys, data_dir, reg)
        assert code == 2
        assert re.search(
            rf"{re.escape(str(reg))}: the registry is not writable \((Read-only file system|"
            r"Permission denied)\)",
            err,
        ), err
        assert snapshot(reg) == before
    finally:
        _undo_read_only(reg)


def test_disk_space_is_compared_with_the_real_free_space(reg):
    free = shutil.disk_usage(reg).free
    assert disk_problems(Registry(reg), needed=1000) == []
    (problem,) = disk_problems(Registry(reg), needed=free)  # the margin no longer fits
    assert re.match(
        rf"{re.escape(str(reg))}: [0-9.]+ MB free on its filesystem, but the release needs about "
        r"[0-9.]+ MB \([0-9.]+ MB estimated, x1.25 margin\); free some space",
        problem,
    ), problem


def test_release_size_estimate_covers_the_written_release(trained_registry):
    """The estimate is an upper bound of what a real add-intent wrote, and not a wild one."""
    registry = Registry(trained_registry)
    parent, child = load_release(registry, "v1"), registry.manifest("v2")
    replay = [t for ts in parent.replay.values() for t in ts]
    new_memory = release.read_memory(trained_registry / "v2" / "replay.json")["refund_status"]
    estimate = estimate_release_bytes(
        parent.model,
        rows_to_add=1,
        replay_texts=replay + new_memory,
        labels=child["intents"],
    )
    written = sum(meta["bytes"] for meta in child["files"].values())
    written += (trained_registry / "v2" / "manifest.json").stat().st_size
    assert written <= estimate <= written + 2 * (1 << 20), (written, estimate)
