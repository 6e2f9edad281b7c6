"""Push releases to a Hugging Face Hub model repo and pull them back, through `huggingface_hub`.

One Hub model repo holds a whole release line::

    README.md                               model card: YAML metadata + one section per release
    releases/v1/manifest.json               the release's own files, byte for byte as in the
    releases/v1/adapter_model.safetensors   registry: adapter weights and config, head, labels,
    releases/v1/adapter_config.json         replay memory (unless pushed with --no-replay) and
    releases/v1/head.safetensors            the manifest that hashes all of them
    releases/v1/labels.json
    releases/v1/replay.json
    releases/v1/calibration.json            held-out utterances of the out-of-scope threshold
    releases/v1/oos_bank.safetensors        pooled features of the replay exemplars (oos score)
    releases/v2/...
    tags  v1 -> the commit that added releases/v1/, v2 -> ...   (created once, never moved)
          production -> the commit of the release the local alias names (moved by push)

**A folder per release on `main`, plus a tag per release.** Each push adds one folder in one
commit and tags that commit with the release id. The repo page then shows the whole line and one
model card covers every release, `main`'s history reads as the release log, and a tag pins
exactly the commit that added its release. (A branch per release would copy the card into every
branch and rely on refs that can move.) Pull resolves the tag to its commit id once and
downloads every file *at that commit*, so a later commit to `main` cannot change what ``v3``
means.

**Push** (`push_release`) uploads a verified local release. A tag that already exists is never
moved: the same release pushed again is a no-op that says so (the manifest about to be uploaded
is compared, by sha256, with the one at the tag); a different release under an existing tag is an
error. A release whose parent is not on the Hub gets its missing ancestors pushed first, oldest
first, one commit and tag each; an ancestor that is neither on the Hub nor in the local registry
is an error that says where to find it. ``--no-replay`` leaves out ``replay.json`` and
``calibration.json`` (both hold training utterances) and uploads a manifest that records the
omission under ``omitted_files``, with each omitted file's sha256. Such a release still rejects
out-of-scope utterances: its threshold is in the manifest, and ``oos_bank.safetensors`` (pooled
features of the replay exemplars, no text) is pushed, since the ``energy_knn`` score reads it. A
team that must not publish even features pushes a release made by ``intent-ci calibrate --score
energy``, which has no bank. A ``--gate-report`` (the ``report.json`` of ``intent-ci check``)
contributes only its ``verdict``, ``candidate`` and ``baseline`` fields to the card; a report
whose verdict is ``fail`` stops the push, because the newest tag is what ``latest`` pulls.

**Aliases** (``intent-ci alias set production v3``) travel as tags too: push of a release
writes every local alias that names it as a tag on the release's commit, moving a tag of that
name that named another release (delete, then create: Hub tags cannot be moved in place). Only
aliases that name the pushed release are written, so a push never moves an alias the Hub
holds for a release this push is not about. ``pull --release production`` pulls the release
that tag names and sets the alias locally too (``latest`` stays the highest ``vN`` tag).

**Pull** (`pull_release`) resolves ``latest`` to the highest ``vN`` tag (no pointer file to
keep in step with the tags), walks the parents until it reaches a release the local registry
already holds (identical) or the root, downloads each missing release into a staging folder
inside the registry, checks every file's size and sha256 against its manifest, and only then
moves the releases into place, oldest first, under their original ids (`Registry.adopt`). A
tampered, truncated or missing file, or any Hub error, leaves the registry as it was (a registry
folder that did not exist is not created). The local ``LATEST`` only moves forward: to the
pulled release when the registry has none yet or an older one; ancestors pulled along never move
it. A release pulled without its replay memory loads and predicts; ``add-intent`` from it asks
for ``replay.enabled: false`` (see `intent_ci.pipeline.add_intents`).

**Endpoint.** `HubConfig.endpoint` defaults to ``huggingface_hub.constants.ENDPOINT``, which
huggingface_hub reads from ``HF_ENDPOINT`` once, when it is imported; the value is passed as
``endpoint=`` to `HfApi` and `hf_hub_download`. So ``HF_ENDPOINT=... intent-ci pull ...`` works
(each command is a fresh process), and a long-lived Python process that needs another Hub sets
`HubConfig.endpoint`.

**Security.** The token comes from the environment variable named by ``token_env`` (default
``HF_TOKEN``) or, when that is unset, from huggingface_hub's own login (``hf auth login``). It is
handed to huggingface_hub and nothing else: it never enters a log line, an error, a report, the
manifest or the card, and any server text repeated in an error is first scrubbed of it. Repo ids
and release names are validated before any request. Pull accepts only manifests whose files are
plain names ending in ``.safetensors``, ``.json``, ``.yaml`` or ``.yml``; nothing else is
downloaded, and loading reads only safetensors and JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from intent_ci.errors import IntentCIError, ReleaseVerificationError
from intent_ci.registry import (
    MANIFEST,
    RELEASE_ID,
    Registry,
    check_alias_name,
    sha256_file,
    update_training,
)

logger = logging.getLogger(__name__)

REPLAY_FILE = "replay.json"
"""`intent_ci.replay.REPLAY_FILE` (a test holds them equal); not imported, so push and pull
need no torch."""
CALIBRATION_FILE = "calibration.json"
"""`intent_ci.calibration.CALIBRATION_FILE` (a test holds them equal)."""
PRIVATE_FILES = (REPLAY_FILE, CALIBRATION_FILE)
"""Files holding training utterances, left out by ``--no-replay``."""
RELEASES_DIR = "releases"
CARD = "README.md"
UPDATE_TRAINING_PHRASE = {
    "lora": "; LoRA and head trained",
    "head": "; the head alone trained",
    "head-changed-rows": "; the head alone trained, only the changed intents' rows",
}
"""The card's words for `registry.update_training` (`intent-ci show` says the same)."""
DEFAULT_TOKEN_ENV = "HF_TOKEN"
LOADABLE_SUFFIXES = (".safetensors", ".json", ".yaml", ".yml")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SECTION = re.compile(
    r"<!-- intent-ci:release (v[0-9]+) -->\n.*?<!-- /intent-ci:release \1 -->\n", re.S
)
PACKAGED_BASE_MODELS = {"packaged:all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
NO_REPLAY_REASON = "left out by `intent-ci push --no-replay`: it holds training utterances"


def check_repo_id(repo_id: str) -> str:
    """A Hub repo id: ``namespace/name``, letters, digits, ``.``, ``_`` and ``-``.

    Raises:
        IntentCIError: for anything else (URLs, paths, ``..``, ``--``, a missing namespace).
    """
    if (
        not isinstance(repo_id, str)
        or not REPO_ID.match(repo_id)
        or ".." in repo_id
        or "--" in repo_id
        or repo_id.endswith((".git", "."))
    ):
        raise IntentCIError(
            f"invalid --repo-id {repo_id!r}; expected namespace/name, e.g. acme/support-intents "
            "(letters, digits, '.', '_' or '-'; no '..' or '--')"
        )
    return repo_id


def check_release_id(release: str) -> str:
    """A release id as the registry allocates it (``v1``, ``v2``, ...), which is also its tag.

    Raises:
        IntentCIError: for anything else.
    """
    if not isinstance(release, str) or not RELEASE_ID.match(release):
        raise IntentCIError(
            f"invalid release {release!r}; expected a release id such as v3, or latest"
        )
    return release


def offline_reason() -> str:
    """Which environment variable put huggingface_hub in offline mode, and what to do.

    huggingface_hub reads ``HF_HUB_OFFLINE``, or ``TRANSFORMERS_OFFLINE`` when the first is
    unset or empty, once, when it is imported (``huggingface_hub.constants.HF_HUB_OFFLINE``).
    """
    hub, transformers = os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE")
    if hub:
        set_vars = [f"HF_HUB_OFFLINE={hub}"]
        if transformers and transformers.upper() in ("1", "ON", "YES", "TRUE"):
            set_vars.append(f"TRANSFORMERS_OFFLINE={transformers}")
    elif transformers:
        set_vars = [f"TRANSFORMERS_OFFLINE={transformers}"]
    else:
        return (
            "huggingface_hub is in offline mode (huggingface_hub.constants.HF_HUB_OFFLINE is "
            "true in this process); reach the Hub from a process started without HF_HUB_OFFLINE "
            "and TRANSFORMERS_OFFLINE"
        )
    names = " and ".join(v.split("=")[0] for v in set_vars)
    return (
        f"huggingface_hub is in offline mode because {' and '.join(set_vars)} is set; unset "
        f"{names} to reach the Hub"
    )


@dataclass
class HubConfig:
    """Where and how releases are pushed and pulled."""

    repo_id: str = field(
        metadata={"help": "Hub model repo that holds the release line, `namespace/name`."}
    )
    endpoint: str | None = field(
        default=None,
        metadata={
            "help": "Hub URL. None: huggingface_hub's endpoint, read from HF_ENDPOINT when "
            "huggingface_hub is imported (https://huggingface.co if unset)."
        },
    )
    token_env: str = field(
        default=DEFAULT_TOKEN_ENV,
        metadata={
            "help": "Environment variable holding the access token. If HF_TOKEN is unset, "
            "huggingface_hub's own login is used; any other name must be set."
        },
    )
    private: bool = field(
        default=False,
        metadata={"help": "Create the repo private. Applies only when push creates the repo."},
    )
    include_replay: bool = field(
        default=True,
        metadata={
            "help": "Upload replay.json and calibration.json. They hold training and held-out "
            "utterances; False leaves them out and records the omission in the uploaded "
            "manifest."
        },
    )

    def __post_init__(self) -> None:
        check_repo_id(self.repo_id)
        if self.endpoint is not None and not re.match(r"^https?://[^\s/]+", self.endpoint):
            raise IntentCIError(
                f"hub endpoint {self.endpoint!r}: expected an http(s) URL such as https://huggingface.co"
            )
        # The value is never echoed when refused: it may be the token itself, pasted by mistake,
        # and error lines end up in CI logs.
        if re.fullmatch(r"hf_[A-Za-z0-9]{20,}", self.token_env):
            raise IntentCIError(
                "--token-env: the value looks like a Hugging Face token (hf_...), not the name of "
                "an environment variable; export the token as e.g. HF_TOKEN and pass that name "
                "(the value is not shown)"
            )
        if not ENV_NAME.match(self.token_env):
            raise IntentCIError(
                "--token-env: expected the name of an environment variable, e.g. HF_TOKEN (never "
                "the token itself; the value is not shown)"
            )

    def resolved_endpoint(self) -> str:
        from huggingface_hub import constants

        return (self.endpoint or constants.ENDPOINT).rstrip("/")

    def token(self) -> str | None:
        """The token from `token_env`; None lets huggingface_hub use its own login.

        Raises:
            IntentCIError: if a variable other than HF_TOKEN was named and is unset.
        """
        value = os.environ.get(self.token_env, "").strip()
        if value:
            return value
        if self.token_env != DEFAULT_TOKEN_ENV:
            raise IntentCIError(
                f"environment variable {self.token_env} (named by --token-env) is not set; export "
                "the token there, or leave --token-env out to use HF_TOKEN or `hf auth login`"
            )
        return None


# ---- talking to the Hub ------------------------------------------------------------------------
class _Hub:
    """huggingface_hub calls for one repo, with its errors turned into one-line IntentCIErrors."""

    def __init__(self, config: HubConfig) -> None:
        from huggingface_hub import HfApi

        from intent_ci import __version__

        self.config = config
        self.repo_id = config.repo_id
        self.endpoint = config.resolved_endpoint()
        self._token = config.token()
        self.api = HfApi(
            endpoint=self.endpoint,
            token=self._token,
            library_name="intent-ci",
            library_version=__version__,
        )

    def scrub(self, text: str) -> str:
        """One line of server or library text, without the token in it."""
        line = " ".join(str(text).split())
        if self._token:
            line = line.replace(self._token, "***")
        return line[:300]

    @contextlib.contextmanager
    def remote(self, action: str) -> Iterator[None]:
        """Run Hub calls; turn whatever they raise into an IntentCIError that names the repo."""
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        where = f"{action} ({self.repo_id} on {self.endpoint})"
        env = self.config.token_env
        try:
            yield
        except IntentCIError:
            raise
        except OfflineModeIsEnabled:
            raise IntentCIError(f"{where}: {offline_reason()}") from None
        except RepositoryNotFoundError:
            raise IntentCIError(
                f"{where}: repo not found, or not visible with these credentials; check --repo-id, "
                f"and for a private repo set {env} to a token that can read it"
            ) from None
        except RevisionNotFoundError:
            raise IntentCIError(
                f"{where}: the Hub has no such revision; list the repo's tags and pick one"
            ) from None
        except RemoteEntryNotFoundError:
            raise IntentCIError(
                f"{where}: file missing on the Hub; the release there is incomplete or not an "
                "intent-ci release"
            ) from None
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            hint = {
                401: f"set {env} to a valid token (with write access to push), or run "
                "`hf auth login`",
                403: f"the token in {env} may not do this; use a token with write access to the repo",
                409: "conflict with the repo's current state; run the command again to re-check",
                412: "the repo changed while pushing; run the push again",
                429: "rate limited by the Hub; wait and run the command again",
            }.get(status)
            if hint is None and status is not None and status >= 500:
                hint = "the Hub failed; try again later"
            server = err.server_message if getattr(err, "server_message", None) else ""
            detail = f" ({self.scrub(server)})" if server else ""
            raise IntentCIError(
                f"{where}: the Hub answered {status}{detail}; {hint or 'see the status code'}"
            ) from None
        except LocalEntryNotFoundError as err:
            # hf_hub_download raises this when the HEAD request could not reach the Hub.
            cause = err.__cause__ or err
            raise IntentCIError(
                f"{where}: cannot reach the Hub ({type(cause).__name__}: {self.scrub(cause)}); "
                "check the network and HF_ENDPOINT"
            ) from None
        except (OSError, ValueError) as err:
            # httpx2 transport errors (connection refused, timeouts) and huggingface_hub's size
            # consistency check on a short download; a ValueError is a malformed Hub answer.
            raise IntentCIError(
                f"{where}: {type(err).__name__}: {self.scrub(err)}; check the network and HF_ENDPOINT"
            ) from None
        except (KeyError, TypeError) as err:
            raise IntentCIError(
                f"{where}: unexpected answer from {self.endpoint} ({type(err).__name__}: "
                f"{self.scrub(err)}); check that HF_ENDPOINT points to a Hugging Face Hub"
            ) from None
        except RuntimeError as err:
            # huggingface_hub wraps a failed LFS upload (storage PUT or verify) in a RuntimeError
            # ("Error while uploading ... to the Hub") whose cause is the real error.
            cause = err.__cause__
            if cause is None or isinstance(cause, RuntimeError):
                raise
            with self.remote(action):
                raise cause from None
        except Exception as err:
            if type(err).__module__.split(".")[0] in ("httpx", "httpx2"):
                raise IntentCIError(
                    f"{where}: cannot reach the Hub ({type(err).__name__}: {self.scrub(err)}); "
                    "check the network and HF_ENDPOINT"
                ) from None
            raise

    def tags(self) -> tuple[dict[str, str], str | None]:
        """Release tags (``vN`` -> commit id) and the head commit of ``main``."""
        tags, head = self.all_tags()
        return {t: c for t, c in tags.items() if RELEASE_ID.match(t)}, head

    def all_tags(self) -> tuple[dict[str, str], str | None]:
        """Every tag (release ids and aliases -> commit id) and the head commit of ``main``."""
        with self.remote("list tags"):
            refs = self.api.list_repo_refs(self.repo_id)
        tags = {t.name: t.target_commit for t in refs.tags}
        head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
        return tags, head

    def download(
        self, path: str, revision: str, folder: Path, *, missing_ok: bool = False
    ) -> Path | None:
        """Download `path` at `revision` into `folder` (its own copy, no shared cache).

        Returns:
            The local file, or None if `missing_ok` and the file is not at that revision.
        """
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RemoteEntryNotFoundError

        with self.remote(f"download {path} at {revision[:12]}"):
            try:
                local = hf_hub_download(
                    self.repo_id,
                    path,
                    revision=revision,
                    local_dir=folder / "files",
                    cache_dir=folder / "cache",
                    endpoint=self.endpoint,
                    token=self._token,
                    library_name="intent-ci",
                )
            except RemoteEntryNotFoundError:
                if missing_ok:
                    return None
                raise
        return Path(local)


# ---- manifests as uploaded -----------------------------------------------------------------------
def _dump(manifest: dict[str, Any]) -> bytes:
    # Same serialisation as Registry.commit, so a re-serialised manifest is byte-stable.
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")


def without_replay(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as pushed with ``--no-replay``: replay.json and calibration.json (training
    utterances both) moved to ``omitted_files``."""
    files = dict(manifest["files"])
    omitted = dict(manifest.get("omitted_files") or {})
    for name in PRIVATE_FILES:
        meta = files.pop(name, None)
        if meta is not None:
            omitted[name] = {**meta, "reason": NO_REPLAY_REASON}
    if files == manifest["files"]:
        return manifest
    return {**manifest, "files": files, "omitted_files": omitted}


def _upload_manifest(local: bytes, include_replay: bool) -> bytes:
    manifest = json.loads(local)
    if include_replay or not any(name in manifest["files"] for name in PRIVATE_FILES):
        return local
    return _dump(without_replay(manifest))


def _same_release(a: bytes, b: bytes) -> bool:
    """Byte-identical manifests, or the same release with and without its replay memory."""
    if a == b:
        return True
    try:
        return _dump(without_replay(json.loads(a))) == _dump(without_replay(json.loads(b)))
    except (ValueError, KeyError, TypeError):
        return False


def _has_replay(manifest_bytes: bytes) -> bool:
    return REPLAY_FILE in json.loads(manifest_bytes).get("files", {})


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- gate report and model card ------------------------------------------------------------------
def read_gate_report(path: str | Path, release: str) -> dict[str, Any]:
    """The fields push uses from ``intent-ci check``'s report.json: verdict, candidate, baseline.

    Missing fields are tolerated (reported as unknown).

    Raises:
        IntentCIError: if the file is missing or not a JSON object, the verdict is not pass or
            fail, the candidate is another release, or the verdict is fail.
    """
    file = Path(path)
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IntentCIError(f"{file}: gate report not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise IntentCIError(f"{file}: gate report is not readable JSON ({err})") from None
    if not isinstance(report, dict):
        raise IntentCIError(f"{file}: gate report must be a JSON object")

    def release_field(key: str) -> str | None:
        value = report.get(key)
        if isinstance(value, dict):
            value = value.get("release")
        if value is not None and not isinstance(value, str):
            raise IntentCIError(f"{file}: field `{key}` must be a release name, got {value!r}")
        return value

    verdict = report.get("verdict")
    if verdict is not None and verdict not in ("pass", "fail"):
        raise IntentCIError(f"{file}: field `verdict` must be pass or fail, got {verdict!r}")
    candidate, baseline = release_field("candidate"), release_field("baseline")
    if candidate is not None and candidate != release:
        raise IntentCIError(
            f"{file}: gate report is for candidate {candidate}, but the release being pushed is {release}"
        )
    if verdict == "fail":
        raise IntentCIError(
            f"{file}: gate verdict is fail for {release}; push only releases that passed `intent-ci check`"
        )
    return {"verdict": verdict, "candidate": candidate, "baseline": baseline}


def _base_model(backbone_name: str) -> str | None:
    """The card's `base_model`: the backbone's Hub id, or None for a local folder."""
    if backbone_name in PACKAGED_BASE_MODELS:
        return PACKAGED_BASE_MODELS[backbone_name]
    if REPO_ID.match(backbone_name) and not Path(backbone_name).exists():
        return backbone_name
    return None


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "n/a"


def _oos_card_line(manifest: dict[str, Any]) -> str:
    oos = manifest.get("oos")
    if oos is None:
        return "not calibrated (every utterance is accepted)"
    if oos.get("threshold") is None:
        return "no threshold (every utterance is accepted)"
    cal = oos.get("calibration") or {}
    where = (
        f"`{CALIBRATION_FILE}` included"
        if CALIBRATION_FILE in manifest["files"]
        else f"`{CALIBRATION_FILE}` not uploaded (pushed with `--no-replay`)"
    )
    return (
        f"{oos.get('score')} >= {oos['threshold']:.4f}, calibrated for in-scope recall "
        f"{_pct(oos.get('target_recall'))} on {cal.get('in_scope')} held-out utterances "
        f"(achieved {_pct(oos.get('in_scope_recall'))}); {where}"
    )


def render_section(manifest: dict[str, Any], manifest_sha: str, gate: dict[str, Any] | None) -> str:
    """The card's section for one release, between markers so later pushes keep it."""
    name = manifest["release"]
    b = manifest["backbone"]
    intents = manifest["intents"]
    new = manifest.get("new_intents") or []
    ev = (manifest.get("metrics") or {}).get("eval") or {}
    if REPLAY_FILE in manifest["files"]:
        replay = (
            f"`{REPLAY_FILE}` included: {manifest.get('replay', {}).get('exemplars', '?')} exemplar "
            "utterances taken from the training data"
        )
    else:
        replay = f"`{REPLAY_FILE}` not uploaded (pushed with `--no-replay`)"
    if gate is None:
        gate_line = "no gate report given at push"
    else:
        gate_line = f"{gate['verdict'] or 'unknown'}" + (
            f" (candidate {gate['candidate'] or name} vs baseline {gate['baseline']})"
            if gate.get("baseline")
            else ""
        )
    metrics = (
        f"accuracy {_pct(ev.get('accuracy'))}, old intents {_pct(ev.get('old_intents_accuracy'))}, "
        f"new intents {_pct(ev.get('new_intents_accuracy'))} on `{ev.get('data')}`"
        if ev
        else "not evaluated at training time"
    )
    lines = [
        f"<!-- intent-ci:release {name} -->",
        f"### {name}",
        "",
        f"- parent: {manifest.get('parent') or 'none (base release)'}",
        f"- backbone: `{b.get('name')}` ({b.get('model_type')}, {b.get('pooling')} pooling, "
        f"weights `{str(b.get('fingerprint'))[:23]}…`)",
        f"- intents ({len(intents)}): {', '.join(intents)}",
        f"- added: {', '.join(new) or '-'}",
        *(
            [
                f"- updated: {', '.join(manifest['updated_intents'])} "
                f"({len(manifest.get('corrections') or [])} corrected utterances"
                + UPDATE_TRAINING_PHRASE.get(update_training(manifest), "")
                + ")"
            ]
            if manifest.get("updated_intents")
            else []
        ),
        f"- metrics: {metrics}",
        f"- gate: {gate_line}",
        f"- replay memory: {replay}",
        f"- out of scope: {_oos_card_line(manifest)}",
        f"- files: `{RELEASES_DIR}/{name}/` (manifest sha256 `{manifest_sha}`)",
        f"<!-- /intent-ci:release {name} -->",
        "",
    ]
    return "\n".join(lines)


def render_card(repo_id: str, newest: dict[str, Any], sections: dict[str, str]) -> str:
    """README.md for the repo: metadata, how to load, and every release's section, newest first."""
    import yaml

    meta: dict[str, Any] = {
        "library_name": "intent-ci",
        "pipeline_tag": "text-classification",
        "tags": ["intent-ci", "intent-classification", "peft", "lora", "text-classification"],
    }
    base = _base_model(newest["backbone"].get("name", ""))
    if base is not None:
        meta["base_model"] = base
    order = sorted(sections, key=lambda r: int(r[1:]), reverse=True)
    latest = order[0]
    header = f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {repo_id}

Intent classifier releases made with intent-ci: a frozen `{newest["backbone"].get("name")}`
encoder, a LoRA adapter (peft format) and a classification head per release. Each release sits in `{RELEASES_DIR}/<release>/` with a `manifest.json` that records
its parent, intents, backbone fingerprint, config, metrics and the sha256 of every file, and is
tagged with its id; tags are never moved. Latest release: **{latest}**.

## Load a release

With intent-ci installed:

```bash
intent-ci pull --repo-id {repo_id} --release {latest} --registry adapters
intent-ci predict --registry adapters --release {latest} "where is my refund"
```

```python
from intent_ci import IntentClassifier
from intent_ci.hub import HubConfig, pull_release

pull_release(HubConfig("{repo_id}"), "{latest}", "adapters")
IntentClassifier.load("adapters", "{latest}").predict(["where is my refund"])
```

`intent-ci pull` checks every file against the manifest's sha256 before the release appears in
the local registry, and fetches missing parent releases too. Only safetensors and JSON are loaded.

**Replay memory.** `replay.json` holds a few exemplar utterances per intent, copied from the
training data, so that later releases can add intents without the original training set. Review
it before publishing; releases pushed with `--no-replay` leave it out (they load and predict,
and adding intents on top of them needs `replay.enabled: false`).

## Releases

"""
    return header + "\n".join(sections[r] for r in order)


def _card_sections(card: str | None) -> dict[str, str]:
    if not card:
        return {}
    return {m.group(1): m.group(0) for m in SECTION.finditer(card)}


# ---- push ----------------------------------------------------------------------------------------
@dataclass
class PushResult:
    """What a push did: releases uploaded (ancestors first) and releases already there."""

    repo_id: str
    release: str
    pushed: dict[str, str] = field(default_factory=dict)
    """release -> commit id of the commit that added it (and that its tag points to)."""
    present: dict[str, str] = field(default_factory=dict)
    """release -> commit id of the existing tag, for releases already on the Hub."""
    aliases: dict[str, str | None] = field(default_factory=dict)
    """alias -> the release its tag named before (None if new), for alias tags written."""
    notes: list[str] = field(default_factory=list)


def push_release(
    registry: str | Path | Registry,
    release: str,
    config: HubConfig,
    *,
    gate_report: str | Path | None = None,
) -> PushResult:
    """Upload `release` (and any ancestors the Hub lacks) to ``config.repo_id``.

    Every local alias that names the release is written as a tag on the release's commit
    (moved if it named another commit), also when the release itself was already there.

    Args:
        registry: the local registry holding the release.
        release: release id, alias or ``latest``.
        config: repo, endpoint, token variable, visibility, replay choice.
        gate_report: ``intent-ci check``'s report.json, shown on the card.

    Raises:
        IntentCIError: for a bad name or gate report, a release that fails verification, a
            different release under an existing tag, an ancestor that is nowhere to be found,
            and every Hub error (one line naming the repo).
    """
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    name = registry.resolve(release)
    gate = read_gate_report(gate_report, name) if gate_report is not None else None
    hub = _Hub(config)
    result = PushResult(config.repo_id, name)
    with hub.remote("create or open the repo"):
        # private=None (not False) leaves a new repo to the namespace's default visibility.
        hub.api.create_repo(config.repo_id, private=config.private or None, exist_ok=True)
    tags, head = hub.tags()
    local = set(registry.releases())

    with tempfile.TemporaryDirectory(prefix="intent-ci-push-") as tmp:
        scratch = Path(tmp)
        todo: list[tuple[str, bytes]] = []  # newest first
        tag_only: set[str] = set()
        current: str | None = name
        child: dict[str, Any] | None = None
        while current is not None:
            if current in tags:
                _check_remote(
                    hub, registry, current, tags[current], child, name, config, result, scratch
                )
                break
            if current not in local:
                raise IntentCIError(
                    f"{child['release'] if child else name}'s parent {current} is neither tagged in "
                    f"{config.repo_id} nor in {registry.root}; push from the registry that has "
                    f"{current}, or pull it into {registry.root} first"
                )
            manifest = registry.verify(current)
            upload = _upload_manifest(
                (registry.path(current) / MANIFEST).read_bytes(), config.include_replay
            )
            if head is not None and _untagged_on_main(hub, current, head, upload, scratch):
                tag_only.add(current)
            todo.append((current, upload))
            child, current = manifest, manifest.get("parent")

        if not todo:
            _write_alias_tags(hub, registry, name, result.present[name], result)
            return result
        card = None
        if head is not None:
            found = hub.download(CARD, head, scratch / "card", missing_ok=True)
            card = found.read_text(encoding="utf-8") if found is not None else None
        sections = _card_sections(card)
        for current, upload in reversed(todo):
            if current in tag_only:
                # An interrupted push committed this very release but did not tag it.
                _tag(hub, current, head, upload)
                result.notes.append(f"{current} was on main without its tag; tagged it")
            else:
                head = _push_one(
                    hub,
                    registry,
                    current,
                    upload,
                    head,
                    sections,
                    gate if current == name else None,
                )
            result.pushed[current] = head
    _write_alias_tags(hub, registry, name, result.pushed[name], result)
    return result


def _write_alias_tags(
    hub: _Hub, registry: Registry, release: str, commit: str, result: PushResult
) -> None:
    """Tag `commit` with every local alias that names `release`; move tags that named another."""
    aliases = [alias for alias, target in registry.aliases().items() if target == release]
    if not aliases:
        return
    with hub.remote("list tags"):
        refs = hub.api.list_repo_refs(hub.repo_id)
    current = {t.name: t.target_commit for t in refs.tags}
    by_commit = {c: t for t, c in current.items() if RELEASE_ID.match(t)}
    for alias in aliases:
        if current.get(alias) == commit:
            continue
        if alias in current:
            with hub.remote(f"move tag {alias}"):
                hub.api.delete_tag(hub.repo_id, tag=alias)
        with hub.remote(f"tag {alias}"):
            hub.api.create_tag(
                hub.repo_id,
                tag=alias,
                revision=commit,
                tag_message=f"intent-ci alias {alias} -> {release}",
            )
        result.aliases[alias] = by_commit.get(current[alias]) if alias in current else None


def _check_remote(
    hub: _Hub,
    registry: Registry,
    release: str,
    commit: str,
    child: dict[str, Any] | None,
    target: str,
    config: HubConfig,
    result: PushResult,
    scratch: Path,
) -> None:
    """`release` is tagged on the Hub: make sure it is the release we mean."""
    found = hub.download(
        f"{RELEASES_DIR}/{release}/{MANIFEST}", commit, scratch / release, missing_ok=True
    )
    if found is None:
        raise IntentCIError(
            f"{config.repo_id}: tag {release} has no {RELEASES_DIR}/{release}/{MANIFEST}; the repo is not "
            "an intent-ci release line, push to another --repo-id"
        )
    remote = found.read_bytes()
    if release in registry.releases():
        local_bytes = (registry.path(release) / MANIFEST).read_bytes()
        upload = _upload_manifest(local_bytes, config.include_replay)
        if remote == upload:
            result.present[release] = commit
            return
        if _same_release(remote, local_bytes):
            if release == target:
                state = "with" if _has_replay(remote) else "without"
                raise IntentCIError(
                    f"{release} is already on {config.repo_id} (tag {release}) {state} its replay memory; "
                    f"a tag is never overwritten, so {'--no-replay cannot remove it' if state == 'with' else 'it cannot be added now'}"
                )
            result.present[release] = commit
            result.notes.append(
                f"{release} is on the Hub {'with' if _has_replay(remote) else 'without'} its replay memory"
            )
            return
        raise IntentCIError(
            f"tag {release} in {config.repo_id} holds a different release (manifest sha256 "
            f"{_sha(remote)[:12]}…, local {_sha(upload)[:12]}…); tags are never overwritten: push this "
            "release line to another --repo-id"
        )
    # Not local: it can only be an ancestor. It must be the parent the child was trained from.
    try:
        theirs = json.loads(remote)
    except ValueError:
        raise IntentCIError(
            f"{config.repo_id}: {RELEASES_DIR}/{release}/{MANIFEST} is not JSON"
        ) from None
    if child is not None and (
        theirs.get("intents") != child.get("parent_intents")
        or theirs.get("backbone", {}).get("fingerprint") != child["backbone"].get("fingerprint")
    ):
        raise IntentCIError(
            f"tag {release} in {config.repo_id} is not the parent {child['release']} was trained from "
            "(different intents or backbone); push this release line to another --repo-id"
        )
    result.present[release] = commit


def _untagged_on_main(hub: _Hub, release: str, head: str, upload: bytes, scratch: Path) -> bool:
    """Whether main already holds this exact release without its tag (an interrupted push).

    Raises:
        IntentCIError: if main holds a different, untagged release under that id.
    """
    path = f"{RELEASES_DIR}/{release}/{MANIFEST}"
    found = hub.download(path, head, scratch / f"untagged-{release}", missing_ok=True)
    if found is None:
        return False
    if found.read_bytes() != upload:
        raise IntentCIError(
            f"{hub.repo_id}: {path} exists on main without a tag and holds a different release; "
            "it was left by an interrupted push of another release: push to another --repo-id"
        )
    return True


def _tag(hub: _Hub, release: str, commit: str, upload: bytes) -> None:
    with hub.remote(f"tag {release}"):
        hub.api.create_tag(
            hub.repo_id,
            tag=release,
            revision=commit,
            tag_message=f"intent-ci release {release}, manifest sha256 {_sha(upload)}",
        )


def _push_one(
    hub: _Hub,
    registry: Registry,
    release: str,
    upload: bytes,
    head: str | None,
    sections: dict[str, str],
    gate: dict[str, Any] | None,
) -> str:
    """One commit (the release's folder + the card) and one tag; returns the commit id."""
    from huggingface_hub import CommitOperationAdd

    manifest = json.loads(upload)
    folder = registry.path(release)
    for file_name in manifest["files"]:
        _check_file_name(file_name, f"{folder / MANIFEST}")
    sections[release] = render_section(manifest, _sha(upload), gate)
    card = render_card(hub.repo_id, manifest, sections)
    prefix = f"{RELEASES_DIR}/{release}"
    operations = [
        CommitOperationAdd(f"{prefix}/{file_name}", str(folder / file_name))
        for file_name in sorted(manifest["files"])
    ]
    operations += [
        CommitOperationAdd(f"{prefix}/{MANIFEST}", upload),
        CommitOperationAdd(CARD, card.encode("utf-8")),
    ]
    added = ", ".join(manifest.get("new_intents") or []) or "base release"
    if manifest.get("updated_intents"):
        added = "updated " + ", ".join(manifest["updated_intents"])
    logger.info("pushing %s to %s (%d files)", release, hub.repo_id, len(operations) - 1)
    with hub.remote(f"push {release}"):
        info = hub.api.create_commit(
            hub.repo_id,
            operations,
            commit_message=f"intent-ci release {release}: {added}"[:200],
            commit_description=f"manifest sha256 {_sha(upload)}, parent {manifest.get('parent') or '-'}",
            parent_commit=head,
        )
    _tag(hub, release, info.oid, upload)
    return info.oid


def _check_file_name(name: str, where: str) -> None:
    if not FILE_NAME.match(name) or ".." in name or not name.endswith(LOADABLE_SUFFIXES):
        raise ReleaseVerificationError(
            f"{where}: lists file {name!r}; a release holds only plain file names ending in "
            f"{', '.join(LOADABLE_SUFFIXES)}"
        )


# ---- pull ----------------------------------------------------------------------------------------
@dataclass
class PullResult:
    """What a pull did."""

    repo_id: str
    release: str
    commit: str
    pulled: list[str] = field(default_factory=list)
    """Releases moved into the registry, oldest first."""
    present: list[str] = field(default_factory=list)
    """Releases of the lineage the registry already held (identical)."""
    latest: str | None = None
    """The registry's LATEST after the pull."""
    alias: str | None = None
    """The alias pulled by name (its tag), now set in the local registry too."""


def pull_release(
    config: HubConfig,
    release: str = "latest",
    registry: str | Path | Registry = "adapters",
) -> PullResult:
    """Download `release` (``vN``, an alias tag, or ``latest`` = the highest ``vN`` tag) and its
    missing ancestors. An alias (``production``) pulls the release its tag names and sets the
    same alias in the local registry.

    Args:
        config: repo, endpoint and token variable.
        release: release id or ``latest``.
        registry: the local registry to pull into (created if needed).

    Raises:
        IntentCIError: for a bad name, an unknown release, a local release of the same id that
            differs, every Hub error; ReleaseVerificationError for a file whose size or sha256
            does not match its manifest. The registry is unchanged in every case.
    """
    alias = None
    if release != "latest" and not RELEASE_ID.match(release):
        alias = check_alias_name(release)
    registry = registry if isinstance(registry, Registry) else Registry(registry)
    hub = _Hub(config)
    every_tag, _ = hub.all_tags()
    tags = {t: c for t, c in every_tag.items() if RELEASE_ID.match(t)}
    if not tags:
        raise IntentCIError(
            f"{config.repo_id} has no release tags (v1, v2, …); push a release first"
        )
    if alias is not None:
        named = [t for t, c in tags.items() if c == every_tag.get(alias)]
        if len(named) != 1:
            aliases = sorted(t for t in every_tag if not RELEASE_ID.match(t))
            raise IntentCIError(
                f"{config.repo_id} has no alias tag {alias!r} on a release"
                f"; alias tags there: {', '.join(aliases) or 'none'}"
            )
        release = named[0]
    target = max(tags, key=lambda t: int(t[1:])) if release == "latest" else release
    if target not in tags:
        raise IntentCIError(
            f"{config.repo_id} has no release {target}; releases there: "
            f"{', '.join(sorted(tags, key=lambda t: int(t[1:])))}"
        )
    result = PullResult(config.repo_id, target, tags[target])
    existed = registry.root.exists()
    if existed:
        registry.clean_stale_staging()
    try:
        with registry.stage() as staging:
            chain = _remote_lineage(hub, registry, tags, target, staging, result)
            for name, commit in reversed(chain):
                _download_release(hub, name, commit, staging)
            for name, _ in reversed(chain):
                registry.adopt(staging / name, latest=name == target)
                result.pulled.append(name)
    except BaseException:
        if not existed:
            _remove_if_empty(registry.root)
        raise
    if alias is not None:
        registry.set_alias(alias, target)
        result.alias = alias
    result.latest = registry.latest()
    return result


def _remote_lineage(
    hub: _Hub,
    registry: Registry,
    tags: dict[str, str],
    target: str,
    staging: Path,
    result: PullResult,
) -> list[tuple[str, str]]:
    """Releases to download, newest first, each with its tag's commit; manifests staged."""
    chain: list[tuple[str, str]] = []
    current: str | None = target
    while current is not None:
        if current not in tags:
            raise IntentCIError(
                f"{hub.repo_id}: {chain[-1][0]}'s parent {current} is not tagged there; the release "
                "line on the Hub is incomplete"
            )
        commit = tags[current]
        found = hub.download(
            f"{RELEASES_DIR}/{current}/{MANIFEST}", commit, staging / ".meta", missing_ok=True
        )
        if found is None:
            raise IntentCIError(
                f"{hub.repo_id}: tag {current} has no {RELEASES_DIR}/{current}/{MANIFEST}; not an "
                "intent-ci release"
            )
        remote = found.read_bytes()
        if current in registry.releases():
            if _same_release((registry.path(current) / MANIFEST).read_bytes(), remote):
                result.present.append(current)
                break
            raise IntentCIError(
                f"{registry.path(current)} differs from {current} in {hub.repo_id}; the registry holds "
                "another release line: pull into another --registry"
            )
        folder = staging / current
        folder.mkdir()
        (folder / MANIFEST).write_bytes(remote)
        try:  # shape, format and release id checks
            manifest = Registry(staging).manifest(current)
        except ReleaseVerificationError as err:  # name the Hub's file, not the staged copy
            where = f"{hub.repo_id}: {RELEASES_DIR}/{current}/{MANIFEST} at tag {current}"
            raise ReleaseVerificationError(
                str(err).replace(str(folder / MANIFEST), where)
                + "; nothing was written to the registry"
            ) from None
        for file_name in manifest["files"]:
            _check_file_name(file_name, f"{RELEASES_DIR}/{current}/{MANIFEST} in {hub.repo_id}")
        chain.append((current, commit))
        parent = manifest.get("parent")
        if parent is not None:
            check_release_id(parent)
        current = parent
    return chain


def _download_release(hub: _Hub, name: str, commit: str, staging: Path) -> None:
    """Download every file the staged manifest lists, at `commit`, and check size and sha256."""
    folder = staging / name
    manifest = Registry(staging).manifest(name)
    for file_name, meta in sorted(manifest["files"].items()):
        path = f"{RELEASES_DIR}/{name}/{file_name}"
        local = hub.download(path, commit, staging / ".download")
        size, digest = local.stat().st_size, sha256_file(local)
        if size != meta.get("bytes") or digest != meta.get("sha256"):
            raise ReleaseVerificationError(
                f"{hub.repo_id}: {path} at {commit[:12]} has {size} bytes, sha256 {digest[:12]}…, but "
                f"the manifest records {meta.get('bytes')} bytes, sha256 {str(meta.get('sha256'))[:12]}…; "
                "the file was altered or cut short: nothing was written to the registry"
            )
        os.replace(local, folder / file_name)
    Registry(staging).verify(name)


def _remove_if_empty(folder: Path) -> None:
    """Undo the registry folder a failed pull created, if it holds nothing but a lock file."""
    with contextlib.suppress(OSError):
        if {p.name for p in folder.iterdir()} <= {".lock"}:
            (folder / ".lock").unlink(missing_ok=True)
            folder.rmdir()


__all__ = [
    "HubConfig",
    "PullResult",
    "PushResult",
    "check_release_id",
    "check_repo_id",
    "pull_release",
    "push_release",
    "read_gate_report",
    "render_card",
    "without_replay",
]
