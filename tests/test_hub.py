"""Push and pull through the real `huggingface_hub` client against a local stand-in Hub.

The stand-in (`tests/hub_server.py`) serves the Hub's HTTP API on 127.0.0.1 at a free port.
huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, when it is imported, into
``huggingface_hub.constants`` (and conftest sets ``HF_HUB_OFFLINE=1`` for the whole session). So:

* the CLI tests in subprocesses set the real environment variables (``HF_ENDPOINT`` = the
  stand-in, ``HF_HUB_OFFLINE`` unset, a fake ``HF_TOKEN``), exactly as a user or CI would;
* the in-process tests give ``huggingface_hub.constants`` the values that environment would have
  produced at import (``ENDPOINT`` and ``HUGGINGFACE_CO_URL_TEMPLATE`` on the stand-in,
  ``HF_HUB_OFFLINE`` False). intent-ci passes ``constants.ENDPOINT`` on as ``endpoint=`` to every
  client call; one test also sets ``HubConfig.endpoint`` explicitly.

Releases are the session's trained tiny-RoBERTa registry (v1: 4 intents, v2: + refund_status).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from intent_ci.cli import main
from intent_ci.errors import IntentCIError, ReleaseVerificationError
from intent_ci.hub import HubConfig, pull_release, push_release, read_gate_report, render_card
from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier
from tests.conftest import snapshot
from tests.hub_server import StandInHub

TOKEN = "hf_FAKEtokenWRITE0123456789abcdefXYZ"
REPO = "acme/support-intents"
UTTERANCES = [
    "where is my refund",
    "my card was stolen",
    "what is my balance",
    "send money to a payee",
    "are you open on the weekend",
    "hello thanks",
]


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as constants

    server = StandInHub(write_token=TOKEN).start()
    # What `HF_ENDPOINT=<server.url>` and an unset HF_HUB_OFFLINE give at import (constants.py).
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # With hf_xet installed (a default dependency on x86-64 and arm64), huggingface_hub uploads
    # through Xet storage, which the stand-in does not implement; the LFS path is tested here.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    yield server
    server.stop()


@pytest.fixture
def config() -> HubConfig:
    return HubConfig(repo_id=REPO)


def hub_calls(server: StandInHub) -> list[tuple[str, str]]:
    """Requests the stand-in did not implement, minus huggingface_hub's best-effort agent lookup."""
    return [r for r in server.unhandled if r[1] != "/api/agent-harnesses"]


def release_files(registry: Path, release: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((registry / release).iterdir())}


def logits(registry: Path, release: str) -> torch.Tensor:
    return IntentClassifier.load(registry, release, device="cpu").logits(UTTERANCES)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "intent_ci.cli", "-v", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )


def cli_env(server: StandInHub, token: str, home: Path) -> dict[str, str]:
    """The caller's environment without any Hub setting (offline switches included), then ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_")) and k != "TRANSFORMERS_OFFLINE"
    }
    env.update(
        HF_ENDPOINT=server.url,
        HF_HUB_DISABLE_XET="1",  # see the `hub` fixture
        HF_TOKEN=token,
        HF_HOME=str(home),
        HF_DEBUG="1",  # huggingface_hub's own debug logging: the token must not show up there either
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    return env


# ---- round trip --------------------------------------------------------------------------------
def test_push_v2_pushes_v1_first_and_pull_into_empty_registry_predicts_identically(
    hub, config, trained_registry, tmp_path
):
    result = push_release(trained_registry, "v2", config)
    assert list(result.pushed) == ["v1", "v2"] and not result.present

    repo = hub.repos[REPO]
    assert set(repo.tags) == {"v1", "v2"}
    assert repo.tags["v2"] == repo.branches["main"] and repo.tags["v1"] != repo.tags["v2"]
    on_v1 = hub.files(REPO, "v1")
    assert "releases/v2/manifest.json" not in on_v1  # each tag pins the commit that added it
    files = hub.files(REPO, "v2")
    for release in ("v1", "v2"):
        local = release_files(trained_registry, release)
        remote = {
            p.split("/")[-1]: data
            for p, data in files.items()
            if p.startswith(f"releases/{release}/")
        }
        assert remote == local  # only the release's own files, byte for byte
    assert set(files) == {".gitattributes", "README.md"} | {
        p for p in files if p.startswith(("releases/v1/", "releases/v2/"))
    }
    # The weights took the Hub's LFS path (batch, upload to storage, verify); JSON went regular.
    weights = {
        f"releases/{r}/{f}"
        for r in ("v1", "v2")
        for f in ("adapter_model.safetensors", "head.safetensors", "oos_bank.safetensors")
    }
    assert hub.lfs_files(REPO, "v2") == weights
    assert hub.lfs_calls == {"batch": 2, "upload": 6, "verify": 6}

    dest = tmp_path / "serving" / "adapters"
    pulled = pull_release(config, "v2", dest)
    assert pulled.pulled == ["v1", "v2"] and pulled.latest == "v2"
    assert pulled.commit == repo.tags["v2"]
    for release in ("v1", "v2"):
        assert release_files(dest, release) == release_files(trained_registry, release)
    assert torch.equal(logits(dest, "v2"), logits(trained_registry, "v2"))
    assert [p.name for p in dest.iterdir() if p.name.startswith(".staging")] == []
    assert hub.lfs_calls["download"] == 6  # through the storage redirect

    # Every download was pinned to a tag's commit id, never to a branch or tag name.
    resolved = [path for method, path in hub.requests if "/resolve/" in path]
    pulled_paths = [p for p in resolved if "/releases/" in p]
    assert pulled_paths and all(re.search(r"/resolve/[0-9a-f]{40}/", p) for p in pulled_paths), (
        pulled_paths
    )
    assert hub_calls(hub) == []


def test_model_card_metadata_and_sections(hub, config, trained_registry, tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"verdict": "pass", "candidate": "v1", "baseline": None}))
    push_release(trained_registry, "v1", config, gate_report=report)
    report.write_text(
        json.dumps({"verdict": "pass", "candidate": "v2", "baseline": "v1", "other": [1]})
    )
    push_release(trained_registry, "v2", config, gate_report=report)

    card = hub.files(REPO)["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "intent-ci"
    assert meta["pipeline_tag"] == "text-classification"
    assert "intent-ci" in meta["tags"]
    assert "base_model" not in meta  # the tests' backbone is a local folder, not a Hub id
    assert "Latest release: **v2**" in card
    v1_section = card[card.index("### v1") :]
    v2_section = card[card.index("### v2") : card.index("### v1")]
    assert "gate: pass (candidate v2 vs baseline v1)" in v2_section
    assert "- gate: pass" in v1_section  # kept from the first push
    assert "added: refund_status" in v2_section and "parent: v1" in v2_section
    assert "training data" in card and "--no-replay" in card
    assert "intent-ci pull --repo-id acme/support-intents --release v2" in card
    # base_model is filled in for Hub backbones, and the packaged encoder maps to its Hub id.
    manifest = Registry(trained_registry).manifest("v2")
    for name, expected in [
        ("FacebookAI/roberta-base", "FacebookAI/roberta-base"),
        ("packaged:all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ]:
        hub_manifest = dict(manifest, backbone=dict(manifest["backbone"], name=name))
        text = render_card(REPO, hub_manifest, {"v2": "x"})
        assert yaml.safe_load(text.split("---\n")[1])["base_model"] == expected


# ---- idempotence and conflicts -----------------------------------------------------------------
def test_pushing_the_same_release_twice_is_a_noop(hub, config, trained_registry, capsys):
    push_release(trained_registry, "v2", config)
    commits = len(hub.repos[REPO].commits)
    again = push_release(trained_registry, "v2", config)
    assert again.pushed == {} and list(again.present) == ["v2"]
    assert push_release(trained_registry, "v1", config).pushed == {}
    assert len(hub.repos[REPO].commits) == commits

    capsys.readouterr()
    assert main(["push", "latest", "--repo-id", REPO, "--registry", str(trained_registry)]) == 0
    assert "v2: already on acme/support-intents (tag v2" in capsys.readouterr().out


def test_a_different_release_under_an_existing_tag_is_an_error(
    hub, config, trained_registry, tmp_path, capsys
):
    push_release(trained_registry, "v1", config)
    # Same files, another manifest (as a release line re-created elsewhere would have).
    other = Path(shutil.copytree(trained_registry, tmp_path / "other"))
    path = other / "v1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["created_at"] = "2030-01-01T00:00:00Z"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    tags = dict(hub.repos[REPO].tags)

    with pytest.raises(IntentCIError, match=r"tag v1 in acme/support-intents holds a different"):
        push_release(other, "v1", config)
    # v2's parent on the Hub is that other v1, so v2 cannot go on top of it either.
    with pytest.raises(IntentCIError, match=r"tag v1 .* different release"):
        push_release(other, "v2", config)
    assert hub.repos[REPO].tags == tags

    capsys.readouterr()
    assert main(["push", "v1", "--repo-id", REPO, "--registry", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("intent-ci: error: tag v1") and err.count("\n") == 1


def test_an_interrupted_push_is_completed_and_a_foreign_untagged_folder_refused(
    hub, config, trained_registry, tmp_path
):
    push_release(trained_registry, "v1", config)
    repo = hub.repos[REPO]
    commit = repo.tags.pop("v1")  # as if the push died between the commit and the tag
    commits = len(repo.commits)
    result = push_release(trained_registry, "v1", config)
    assert result.pushed == {"v1": commit} and "without its tag" in result.notes[0]
    assert repo.tags["v1"] == commit and len(repo.commits) == commits

    other = Path(shutil.copytree(trained_registry, tmp_path / "other"))
    path = other / "v1" / "manifest.json"
    path.write_text(path.read_text().replace('"created_at": "', '"created_at": "X'))
    repo.tags.pop("v1")
    with pytest.raises(
        IntentCIError, match=r"releases/v1/manifest.json exists on main without a tag"
    ):
        push_release(other, "v1", config)
    assert "v1" not in repo.tags and len(repo.commits) == commits


def test_parent_missing_everywhere_is_explained(hub, config, trained_registry, tmp_path):
    only_v2 = Path(shutil.copytree(trained_registry, tmp_path / "only-v2"))
    shutil.rmtree(only_v2 / "v1")
    with pytest.raises(IntentCIError, match=r"v2's parent v1 is neither tagged in acme/support"):
        push_release(only_v2, "v2", config)
    assert hub.repos[REPO].tags == {}


# ---- pull: lineage, LATEST, damage -------------------------------------------------------------
def test_pull_latest_fetches_only_missing_ancestors_and_moves_latest_forward(
    hub, config, trained_registry, tmp_path
):
    dest = tmp_path / "adapters"
    push_release(trained_registry, "v1", config)
    assert pull_release(config, "latest", dest).pulled == ["v1"]
    push_release(trained_registry, "v2", config)
    second = pull_release(config, "latest", dest)
    assert second.release == "v2" and second.pulled == ["v2"] and second.present == ["v1"]
    assert Registry(dest).latest() == "v2"
    third = pull_release(config, "v1", dest)  # an older release: a no-op that keeps LATEST
    assert third.pulled == [] and third.present == ["v1"] and third.latest == "v2"

    with pytest.raises(IntentCIError, match=r"has no release v7; releases there: v1, v2"):
        pull_release(config, "v7", dest)
    # A registry whose own v1 differs is another release line: refused, untouched.
    other = Path(shutil.copytree(trained_registry, tmp_path / "other"))
    shutil.rmtree(other / "v2")
    path = other / "v1" / "manifest.json"
    path.write_text(path.read_text().replace('"created_at": "', '"created_at": "X'))
    before = snapshot(other)
    with pytest.raises(IntentCIError, match=r"differs from v1 in acme/support-intents"):
        pull_release(config, "v2", other)
    assert snapshot(other) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        ("tamper", r"releases/v2/head.safetensors at [0-9a-f]{12} has \d+ bytes, sha256"),
        ("truncate", r"releases/v2/adapter_model.safetensors at .* altered or cut short"),
        ("remove", r"download releases/v2/labels.json .* file missing on the Hub"),
    ],
)
def test_damaged_files_on_the_hub_are_rejected_and_nothing_is_left(
    hub, config, trained_registry, tmp_path, damage, message
):
    push_release(trained_registry, "v2", config)
    if damage == "tamper":
        data = bytearray(hub.files(REPO)["releases/v2/head.safetensors"])
        data[-1] ^= 0x01
        hub.tamper(REPO, "releases/v2/head.safetensors", bytes(data))
    elif damage == "truncate":
        data = hub.files(REPO)["releases/v2/adapter_model.safetensors"]
        hub.tamper(REPO, "releases/v2/adapter_model.safetensors", data[: len(data) // 2])
    else:
        hub.remove(REPO, "releases/v2/labels.json")

    empty = tmp_path / "fresh" / "adapters"
    with pytest.raises(IntentCIError, match=message):
        pull_release(config, "v2", empty)
    assert not empty.exists()

    # Into a registry that already holds v1: v1 stays, v2 never appears, no staging left.
    holding_v1 = tmp_path / "holding"
    pull_release(config, "v1", holding_v1)
    before = snapshot(holding_v1)
    with pytest.raises(IntentCIError, match=message):
        pull_release(config, "v2", holding_v1)
    assert snapshot(holding_v1) == before
    assert sorted(p.name for p in holding_v1.iterdir()) == sorted(
        p.name for p in holding_v1.iterdir() if not p.name.startswith(".staging")
    )


def test_pull_refuses_a_manifest_listing_files_it_would_not_load(
    hub, config, trained_registry, tmp_path
):
    push_release(trained_registry, "v1", config)
    manifest = json.loads(hub.files(REPO)["releases/v1/manifest.json"])
    manifest["files"]["payload.pkl"] = {"sha256": "0" * 64, "bytes": 1}
    hub.tamper(REPO, "releases/v1/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(ReleaseVerificationError, match=r"lists file 'payload.pkl'.*\.safetensors"):
        pull_release(config, "v1", tmp_path / "adapters")
    assert not (tmp_path / "adapters").exists()


def test_pull_refusing_a_bad_manifest_names_the_hubs_file(hub, config, trained_registry, tmp_path):
    push_release(trained_registry, "v1", config)
    manifest = json.loads(hub.files(REPO)["releases/v1/manifest.json"])
    del manifest["format"]
    hub.tamper(REPO, "releases/v1/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(ReleaseVerificationError) as caught:
        pull_release(config, "v1", tmp_path / "adapters")
    assert str(caught.value) == (
        f"{REPO}: releases/v1/manifest.json at tag v1: field `format` missing or not an integer; "
        "nothing was written to the registry"
    )
    assert not (tmp_path / "adapters").exists()


# ---- --no-replay -------------------------------------------------------------------------------
def test_no_replay_release_loads_predicts_and_add_intent_explains(
    hub, trained_registry, tmp_path, data_dir, caplog
):
    from intent_ci.lifecycle import retire_intents
    from intent_ci.pipeline import add_intents

    config = HubConfig(repo_id=REPO, include_replay=False)
    push_release(trained_registry, "v2", config)
    files = hub.files(REPO)
    assert not any(p.endswith("replay.json") for p in files)
    # The calibration utterances are training utterances too: left out with the replay memory.
    assert not any(p.endswith("calibration.json") for p in files)
    manifest = json.loads(files["releases/v2/manifest.json"])
    local = Registry(trained_registry).manifest("v2")
    assert "replay.json" not in manifest["files"]
    for name in ("replay.json", "calibration.json"):
        assert manifest["omitted_files"][name]["sha256"] == local["files"][name]["sha256"]
    assert manifest["oos"] == local["oos"]
    assert "`replay.json` not uploaded" in files["README.md"].decode()
    assert "`calibration.json` not uploaded" in files["README.md"].decode()

    dest = tmp_path / "adapters"
    pull_release(HubConfig(repo_id=REPO), "v2", dest)
    assert not (dest / "v2" / "replay.json").exists()
    assert not (dest / "v2" / "calibration.json").exists()
    Registry(dest).verify("v2")
    assert torch.equal(logits(dest, "v2"), logits(trained_registry, "v2"))
    # It still rejects out-of-scope utterances: the threshold is in the manifest.
    texts = ["card lost now", "hello thanks", "refund", "weekend hours open"]
    pulled = IntentClassifier.load(dest, "v2").predict(texts)
    assert pulled == IntentClassifier.load(trained_registry, "v2").predict(texts)
    assert IntentClassifier.load(dest, "v2").threshold == local["oos"]["threshold"]
    # Retiring an intent changes every score and the utterances to set the threshold again are
    # not here: the child has none, and says so (it once did so silently, and gained an empty
    # replay.json its parent did not have).
    retire_reg = Path(shutil.copytree(dest, tmp_path / "retire"))
    with caplog.at_level("WARNING", logger="intent_ci.lifecycle"):
        retired = retire_intents(["opening_hours"], retire_reg, "v2")
    assert "has an out-of-scope threshold but not the calibration utterances" in caplog.text
    assert IntentClassifier.load(retire_reg, retired).threshold is None
    assert not (retire_reg / retired / "replay.json").exists()
    Registry(retire_reg).verify(retired)
    with pytest.raises(IntentCIError, match=rf"{retired} has no replay memory"):
        add_intents(data_dir / "new" / "report_damage.txt", retire_reg, retired)
    # ... and `intent-ci calibrate`, as the warning advises, gives it a threshold again (its
    # release once failed verify: it did not carry the omitted replay.json over).
    from intent_ci.lifecycle import calibrate_release

    held = tmp_path / "held"
    held.mkdir()
    for intent in Registry(retire_reg).manifest(retired)["intents"]:
        shutil.copy(data_dir / "test" / f"{intent}.txt", held / f"{intent}.txt")
    calibrated = calibrate_release(held, retire_reg, retired)
    Registry(retire_reg).verify(calibrated)
    assert IntentClassifier.load(retire_reg, calibrated).threshold is not None
    with pytest.raises(
        IntentCIError,
        match=r"v2 has no replay memory .* `replay.enabled: false` and a distillation",
    ):
        add_intents(data_dir / "new" / "report_damage.txt", dest, "v2")
    assert Registry(dest).releases() == ["v1", "v2"]
    # Without replay (and with a teacher, as the message advises) it adds the intent; with
    # exemplars of the new intent only, the child's out-of-scope score falls back from
    # energy_knn to energy, and says so.
    child = add_intents(
        data_dir / "new" / "report_damage.txt",
        dest,
        "v2",
        overrides={"replay": {"enabled": False}, "distill": {"weight": 3.0}},
    )
    record = Registry(dest).manifest(child)["oos"]
    assert local["oos"]["score"] == "energy_knn" and record["score"] == "energy"
    assert "intents have no replay exemplars" in record["note"]
    assert not (dest / child / "oos_bank.safetensors").exists()
    assert IntentClassifier.load(dest, child).predict(["card lost now"])[0].score is not None

    # The same release cannot gain its replay memory under the existing tag.
    with pytest.raises(
        IntentCIError, match=r"already on acme/support-intents .* without its replay"
    ):
        push_release(trained_registry, "v2", HubConfig(repo_id=REPO))


# ---- Hub errors --------------------------------------------------------------------------------
def test_hub_errors_are_one_line_and_write_nothing(
    hub, trained_registry, tmp_path, capsys, monkeypatch
):
    dest = tmp_path / "adapters"
    source_before = snapshot(trained_registry)

    def cli(*args: str) -> str:
        capsys.readouterr()
        code = main(list(args))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    push = ("push", "v2", "--repo-id", REPO, "--registry", str(trained_registry))
    pull = ("pull", "--repo-id", REPO, "--release", "v2", "--registry", str(dest))

    monkeypatch.setenv("HF_TOKEN", "hf_wrongTOKEN000000000000000000000")
    err = cli(*push)
    assert re.search(r"acme/support-intents on http://127.0.0.1:\d+\): the Hub answered 401", err)
    assert "HF_TOKEN" in err and "hf_wrongTOKEN" not in err
    assert "answered 401" in cli(*pull)
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    assert "repo not found" in cli(*pull)  # nothing pushed yet: 404 from the refs endpoint

    hub.fail_status = 500
    assert "answered 500" in cli(*push) and "try again later" in cli(*push)
    assert "answered 500" in cli(*pull)
    holding = Path(shutil.copytree(trained_registry, tmp_path / "holding"))
    before = snapshot(holding)
    cli("pull", "--repo-id", REPO, "--registry", str(holding))
    assert snapshot(holding) == before
    hub.fail_status = None
    assert REPO not in hub.repos

    closed = StandInHub()
    url = closed.url
    closed._server.server_close()  # the port is free again: connection refused
    refused = HubConfig(repo_id=REPO, endpoint=url)
    with pytest.raises(IntentCIError, match=r"cannot reach the Hub \(ConnectError"):
        pull_release(refused, "v2", dest)
    with pytest.raises(IntentCIError, match=r"cannot reach the Hub"):
        push_release(trained_registry, "v2", refused)

    assert not dest.exists()
    assert snapshot(trained_registry) == source_before


@pytest.mark.parametrize(
    "args, message",
    [
        (["push", "v2", "--repo-id", "https://huggingface.co/acme/x"], r"invalid --repo-id"),
        (["push", "v2", "--repo-id", "acme/../etc"], r"invalid --repo-id"),
        (["push", "v2", "--repo-id", "no-namespace"], r"invalid --repo-id"),
        (["push", "../v2", "--repo-id", REPO], r"invalid release name '../v2'"),
        (
            ["pull", "--repo-id", REPO, "--release", "v2/../../x"],
            r"invalid release name 'v2/../../x'",
        ),
        (
            ["pull", "--repo-id", REPO, "--token-env", "hf_abc-123"],
            r"--token-env: expected the name of an environment variable",
        ),
        # A token pasted in place of the variable's name is refused and never echoed.
        (
            ["pull", "--repo-id", REPO, "--token-env", "hf_" + "AbCdEf0123456789" * 2],
            r"--token-env: the value looks like a Hugging Face token .*\(the value is not shown\)$",
        ),
        (
            ["pull", "--repo-id", REPO, "--token-env", "UNSET_TOKEN_VAR"],
            r"UNSET_TOKEN_VAR .* not set",
        ),
    ],
)
def test_names_are_validated_before_any_request(hub, trained_registry, capsys, args, message):
    capsys.readouterr()
    assert main([*args, "--registry", str(trained_registry)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err, re.M), err
    assert "hf_AbCd" not in err and "hf_abc-123" not in err  # a token is never echoed
    assert hub.requests == []


def test_hub_module_stays_light_and_agrees_with_replay():
    from intent_ci import hub, replay

    assert hub.REPLAY_FILE == replay.REPLAY_FILE
    from intent_ci import calibration

    assert hub.CALIBRATION_FILE == calibration.CALIBRATION_FILE
    code = "import sys, intent_ci.hub; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_gate_report_fields(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"verdict": "pass", "candidate": {"release": "v3"}}))
    assert read_gate_report(path, "v3") == {"verdict": "pass", "candidate": "v3", "baseline": None}
    path.write_text("{}")
    assert read_gate_report(path, "v3")["verdict"] is None
    for report, message in [
        ({"verdict": "fail", "candidate": "v3"}, r"verdict is fail for v3"),
        ({"verdict": "maybe"}, r"`verdict` must be pass or fail"),
        (
            {"verdict": "pass", "candidate": "v2"},
            r"candidate v2, but the release being pushed is v3",
        ),
        ([1, 2], r"must be a JSON object"),
    ]:
        path.write_text(json.dumps(report))
        with pytest.raises(IntentCIError, match=message):
            read_gate_report(path, "v3")
    with pytest.raises(IntentCIError, match=r"gate report not found"):
        read_gate_report(tmp_path / "missing.json", "v3")


def test_failing_gate_report_stops_the_push(hub, config, trained_registry, tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"verdict": "fail", "candidate": "v2", "baseline": "v1"}))
    with pytest.raises(IntentCIError, match=r"gate verdict is fail"):
        push_release(trained_registry, "v2", config, gate_report=report)
    assert hub.requests == []


# ---- Registry.adopt ----------------------------------------------------------------------------
def test_adopt_moves_in_verified_releases_only(trained_registry, tmp_path):
    registry = Registry(tmp_path / "adapters")
    staging = tmp_path / "adapters" / ".staging-1-test"
    staging.mkdir(parents=True)
    v2 = Path(shutil.copytree(trained_registry / "v2", staging / "v2"))
    with pytest.raises(IntentCIError, match=r"parent v1 of v2 is not in"):
        registry.adopt(v2)
    shutil.copytree(trained_registry / "v1", staging / "v1")
    assert registry.adopt(staging / "v1") is True
    assert registry.latest() is None  # LATEST moves only when asked
    assert registry.adopt(v2, latest=True) is True
    assert registry.latest() == "v2" and registry.releases() == ["v1", "v2"]

    again = Path(shutil.copytree(trained_registry / "v1", staging / "v1"))
    assert registry.adopt(again, latest=True) is False and again.exists()
    assert registry.latest() == "v2"  # never moves back

    different = staging / "v1"
    path = different / "manifest.json"
    path.write_text(path.read_text().replace('"created_at": "', '"created_at": "X'))
    with pytest.raises(IntentCIError, match=r"already holds a different release v1"):
        registry.adopt(different)
    (different / "labels.json").write_text("{}")
    with pytest.raises(ReleaseVerificationError, match=r"labels.json: sha256"):
        registry.adopt(different)
    # The next local release id continues after the adopted ones.
    assert registry._high_water() == 2


# ---- the CLI in a fresh process, configured only through the environment -----------------------
def test_cli_push_pull_through_env_and_the_token_never_shows(hub, trained_registry, tmp_path):
    env = cli_env(hub, TOKEN, tmp_path / "hf-home")
    dest = tmp_path / "adapters"
    outputs = []

    pushed = run_cli(
        "push", "v2", "--repo-id", REPO, "--private", "--registry", str(trained_registry), env=env
    )
    outputs.append(pushed.stdout + pushed.stderr)
    assert pushed.returncode == 0, pushed.stderr
    assert "v1: pushed to acme/support-intents" in pushed.stdout
    assert "v2: pushed to acme/support-intents" in pushed.stdout
    assert hub.repos[REPO].private

    assert hub.lfs_calls["verify"] == 6 and len(hub.lfs_files(REPO)) == 6

    pulled = run_cli("pull", "--repo-id", REPO, "--registry", str(dest), env=env)
    outputs.append(pulled.stdout + pulled.stderr)
    assert pulled.returncode == 0, pulled.stderr
    assert (
        "v2: pulled from acme/support-intents" in pulled.stdout and "LATEST is v2" in pulled.stdout
    )

    # A wrong token, and a server that repeats the Authorization header in its error text.
    hub.echo_auth = True
    wrong = "hf_FAKEtokenWRONG9876543210zyxwvuTS"
    bad = run_cli(
        "pull",
        "--repo-id",
        REPO,
        "--registry",
        str(tmp_path / "x"),
        env=cli_env(hub, wrong, tmp_path / "hf-home"),
    )
    outputs.append(bad.stdout + bad.stderr)
    assert bad.returncode == 2 and "answered 401" in bad.stderr
    assert not (tmp_path / "x").exists()

    everything = "\n".join(outputs)
    assert "Request" in everything  # HF_DEBUG logging was on: the requests were logged
    for token in (TOKEN, wrong):
        assert token not in everything
        assert token[8:] not in everything
        for data in hub.files(REPO).values():
            assert token.encode() not in data
        for path in dest.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes()


# ---- aliases as tags ------------------------------------------------------------------------------
def test_push_writes_aliases_as_tags_and_moves_them(
    hub, config, trained_registry, tmp_path, capsys
):
    local = Path(shutil.copytree(trained_registry, tmp_path / "adapters"))
    registry = Registry(local)
    registry.set_alias("production", "v1")
    registry.set_alias("canary", "v1")

    first = push_release(local, "production", config)  # an alias is accepted as the release
    repo = hub.repos[REPO]
    assert list(first.pushed) == ["v1"] and first.release == "v1"
    assert first.aliases == {"canary": None, "production": None}
    assert repo.tags["production"] == repo.tags["canary"] == repo.tags["v1"]

    registry.set_alias("production", "v2")
    capsys.readouterr()
    assert main(["push", "v2", "--repo-id", REPO, "--registry", str(local)]) == 0
    out = capsys.readouterr().out
    assert "production: tag on acme/support-intents now names v2 (was v1)" in out, out
    assert repo.tags["production"] == repo.tags["v2"] != repo.tags["v1"]
    assert repo.tags["canary"] == repo.tags["v1"]  # an alias of another release is left alone

    # A release already on the Hub: only its alias tags move, no commit is made.
    commits = len(repo.commits)
    registry.set_alias("canary", "v2")
    again = push_release(local, "v2", config)
    assert again.pushed == {} and again.aliases == {"canary": "v1"}
    assert repo.tags["canary"] == repo.tags["v2"] and len(repo.commits) == commits
    assert push_release(local, "v2", config).aliases == {}  # nothing left to move
    # latest is still the highest vN tag; an alias tag pulls its release and sets the alias.
    pulled = pull_release(config, "latest", tmp_path / "pulled")
    assert (pulled.release, Registry(tmp_path / "pulled").aliases()) == ("v2", {})
    registry.set_alias("production", "v1")
    assert push_release(local, "v1", config).aliases == {"production": "v2"}
    serving = tmp_path / "serving"
    capsys.readouterr()
    argv = ["pull", "--repo-id", REPO, "--release", "production", "--registry", str(serving)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "production: v1 (alias set in" in out and "LATEST is v1" in out, out
    assert Registry(serving).releases() == ["v1"]
    assert Registry(serving).aliases() == {"production": "v1"}
    assert Registry(serving).history()[-1]["event"] == "alias_set"
    with pytest.raises(
        IntentCIError,
        match=r"no alias tag 'beta' on a release; alias tags there: canary, production",
    ):
        pull_release(config, "beta", tmp_path / "none")
    assert not (tmp_path / "none").exists()
    assert hub_calls(hub) == []


def test_an_lfs_upload_that_fails_verification_commits_nothing(
    hub, config, trained_registry, capsys
):
    """Bytes that reach storage damaged fail the LFS verify call: one line, no commit, no tag."""
    hub.corrupt_uploads = True
    before = dict(hub.repos[REPO].commits) if REPO in hub.repos else {}
    with pytest.raises(IntentCIError, match=r"push v1 \(acme/support-intents on .*\): "):
        push_release(trained_registry, "v1", config)
    repo = hub.repos[REPO]
    assert hub.lfs_calls["verify"] >= 1 and repo.tags == {}
    assert len(repo.commits) == max(len(before), 1)  # only the repo's initial commit
    hub.corrupt_uploads = False
    assert list(push_release(trained_registry, "v1", config).pushed) == ["v1"]


@pytest.mark.parametrize(
    ("offline", "named"),
    [
        (
            {"TRANSFORMERS_OFFLINE": "1"},
            "because TRANSFORMERS_OFFLINE=1 is set; unset TRANSFORMERS_OFFLINE",
        ),
        ({"HF_HUB_OFFLINE": "1"}, "because HF_HUB_OFFLINE=1 is set; unset HF_HUB_OFFLINE to"),
        (
            {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            "HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1 is set; unset HF_HUB_OFFLINE and "
            "TRANSFORMERS_OFFLINE",
        ),
    ],
    ids=["transformers", "hub", "both"],
)
def test_offline_mode_names_the_variable_that_set_it(
    hub, trained_registry, tmp_path, offline, named
):
    """huggingface_hub goes offline on either variable; the error names the one that is set."""
    env = {**cli_env(hub, TOKEN, tmp_path / "hf-home"), **offline}
    pushed = run_cli("push", "v1", "--repo-id", REPO, "--registry", str(trained_registry), env=env)
    assert pushed.returncode == 2, pushed.stderr
    last = pushed.stderr.strip().splitlines()[-1]
    assert last.startswith("intent-ci: error: create or open the repo (acme/support-intents"), last
    assert named in last and "Traceback" not in pushed.stderr
    assert REPO not in hub.repos and hub.requests == []
