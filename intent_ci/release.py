"""A release on disk <-> a model in memory, and the `IntentClassifier` users load.

Files of a release (all hashed in ``manifest.json``):

* ``adapter_model.safetensors`` + ``adapter_config.json``: the LoRA adapter, in peft's format;
* ``head.safetensors``: the classification head (``out_proj`` and, if used, ``dense``);
* ``labels.json``: intents in head-row order;
* ``replay.json``: the replay memory (exemplar utterances per intent).

Loading rebuilds the head at the recorded size, re-hashes every file, and refuses a backbone
whose weights differ from the one the release was trained on. Only safetensors and JSON are read.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from intent_ci.config import NAME_PATTERN, ReleaseConfig
from intent_ci.errors import IntentCIError, ReleaseVerificationError
from intent_ci.modeling import Backbone, IntentModel, attach_lora, build_head, load_backbone
from intent_ci.registry import Registry
from intent_ci.replay import REPLAY_FILE, read_memory, write_memory

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HEAD_WEIGHTS = "head.safetensors"
LABELS = "labels.json"


def library_versions() -> dict[str, str]:
    import accelerate
    import datasets
    import peft
    import safetensors
    import transformers

    from intent_ci import __version__

    return {
        "intent_ci": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "safetensors": safetensors.__version__,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
        return value.value  # enums such as peft's TaskType
    return value


def save_model_files(
    model: IntentModel, labels: list[str], replay: dict[str, list[str]], folder: Path
) -> None:
    """Write the adapter, head, labels and replay memory of `model` into `folder`."""
    adapter_state = {
        k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(model.encoder).items()
    }
    save_file(adapter_state, str(folder / ADAPTER_WEIGHTS))
    adapter_cfg = _jsonable(model.encoder.peft_config["default"].to_dict())
    (folder / ADAPTER_CONFIG).write_text(
        json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    head_state = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head_state, str(folder / HEAD_WEIGHTS))
    (folder / LABELS).write_text(json.dumps({"intents": labels}, indent=1) + "\n", encoding="utf-8")
    write_memory(replay, folder / REPLAY_FILE)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ReleaseVerificationError(f"{path}: not a readable safetensors file ({err})") from None


def _read_labels(path: Path) -> list[str]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ReleaseVerificationError(f"{path}: not valid JSON ({err})") from None
    intents = payload.get("intents") if isinstance(payload, dict) else None
    if not isinstance(intents, list) or not intents:
        raise ReleaseVerificationError(
            f"{path}: expected an object with a non-empty `intents` list"
        )
    for intent in intents:
        if not isinstance(intent, str) or not NAME_PATTERN.match(intent):
            raise ReleaseVerificationError(f"{path}: invalid intent name {intent!r}")
    if len(set(intents)) != len(intents):
        raise ReleaseVerificationError(f"{path}: intents are not unique")
    return intents


@dataclass
class LoadedRelease:
    """A release's manifest, resolved config, labels, replay memory and rebuilt model."""

    name: str
    manifest: dict[str, Any]
    config: ReleaseConfig
    labels: list[str]
    replay: dict[str, list[str]]
    model: IntentModel
    backbone: Backbone


def load_release(
    registry: Registry, ref: str = "latest", *, backbone: Backbone | None = None
) -> LoadedRelease:
    """Verify a release and rebuild its model on the CPU, in eval mode.

    Args:
        registry: where the release lives.
        ref: release name or ``latest``.
        backbone: an already loaded backbone to reuse; it must match the manifest.

    Raises:
        IntentCIError: for an unknown release.
        ReleaseVerificationError: for hash, label-map, head-size or backbone mismatches.
    """
    name = registry.resolve(ref)
    manifest = registry.verify(name)
    folder = registry.path(name)
    config = ReleaseConfig.from_dict(
        manifest["config"], source=f"{folder / 'manifest.json'} field `config`"
    )
    labels = _read_labels(folder / LABELS)
    if labels != manifest["intents"]:
        raise ReleaseVerificationError(
            f"{folder / LABELS}: intents differ from the manifest's `intents`"
        )
    if backbone is None:
        backbone = load_backbone(config.model)
    recorded = manifest["backbone"].get("fingerprint")
    if backbone.fingerprint != recorded:
        raise ReleaseVerificationError(
            f"release {name} was trained on backbone {manifest['backbone'].get('name')!r} with weights "
            f"{str(recorded)[:19]}…, but {backbone.name!r} loaded here has weights {backbone.fingerprint[:19]}…; "
            "load the same backbone (and revision) the release was trained on"
        )
    pooling = manifest["backbone"].get("pooling")
    if pooling not in ("cls", "mean"):
        raise ReleaseVerificationError(
            f"{folder / 'manifest.json'}: backbone.pooling must be cls or mean, got {pooling!r}"
        )

    encoder = attach_lora(backbone.encoder, config.model)
    adapter_state = _load_safetensors(folder / ADAPTER_WEIGHTS)
    expected = set(get_peft_model_state_dict(encoder))
    if set(adapter_state) != expected:
        missing = sorted(expected - set(adapter_state))[:3]
        extra = sorted(set(adapter_state) - expected)[:3]
        raise ReleaseVerificationError(
            f"{folder / ADAPTER_WEIGHTS}: adapter tensors do not match the configured LoRA "
            f"(missing {missing}, unexpected {extra})"
        )
    try:
        set_peft_model_state_dict(encoder, adapter_state)
    except RuntimeError as err:
        raise ReleaseVerificationError(
            f"{folder / ADAPTER_WEIGHTS}: {str(err).splitlines()[0]}"
        ) from None

    head = build_head(config.model, backbone.encoder.config.hidden_size, len(labels), pooling)
    head_state = _load_safetensors(folder / HEAD_WEIGHTS)
    out_rows = head_state.get("out_proj.weight")
    if out_rows is None or out_rows.ndim != 2 or out_rows.shape[0] != len(labels):
        rows = None if out_rows is None else tuple(out_rows.shape)
        raise ReleaseVerificationError(
            f"{folder / HEAD_WEIGHTS}: head's out_proj has shape {rows} but {LABELS} lists {len(labels)} intents"
        )
    try:
        head.load_state_dict(head_state, strict=True)
    except RuntimeError as err:
        raise ReleaseVerificationError(
            f"{folder / HEAD_WEIGHTS}: {str(err).splitlines()[0]}"
        ) from None
    model = IntentModel(encoder, head, pooling).eval()
    # A release pulled from a repo pushed with --no-replay has no replay memory; it still loads
    # and predicts, and add-intent from it needs replay.enabled: false.
    replay = read_memory(folder / REPLAY_FILE) if REPLAY_FILE in manifest["files"] else {}
    return LoadedRelease(name, manifest, config, labels, replay, model, backbone)


@dataclass(frozen=True)
class Prediction:
    """One utterance's predicted intent and its softmax probability."""

    label: str
    confidence: float


class IntentClassifier:
    """A loaded release, ready to classify utterances.

    Example::

        clf = IntentClassifier.load("adapters", "latest")
        clf.predict(["where is my refund"])  # [Prediction(label='refund_status', confidence=0.97)]
    """

    def __init__(self, release: LoadedRelease, device: str | torch.device | None = None) -> None:
        self.release = release
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = release.model.to(self.device).eval()
        self.tokenizer = release.backbone.tokenizer

    @classmethod
    def load(
        cls,
        registry: str | Path | Registry = "adapters",
        release: str = "latest",
        device: str | None = None,
    ) -> IntentClassifier:
        """Load and verify a release from a registry folder.

        Raises:
            IntentCIError: for an unknown release or one that fails verification.
        """
        reg = registry if isinstance(registry, Registry) else Registry(registry)
        return cls(load_release(reg, release), device=device)

    @property
    def name(self) -> str:
        return self.release.name

    @property
    def intents(self) -> list[str]:
        return list(self.release.labels)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.release.manifest

    @torch.inference_mode()
    def logits(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Raw logits, shape ``(len(texts), len(intents))``, computed in batches."""
        if isinstance(texts, str):
            raise IntentCIError("predict() takes a list of utterances, not a single string")
        max_length = self.release.config.model.max_length
        texts = list(texts)
        if not texts:
            return torch.empty(0, len(self.intents))
        # Batch utterances of similar length together so little compute goes to padding,
        # then put the rows back in input order.
        lengths = [
            len(ids)
            for ids in self.tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        ]
        order = sorted(range(len(texts)), key=lengths.__getitem__)
        out = torch.empty(len(texts), len(self.intents))
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(self.device)
            out[rows] = self.model(**batch).float().cpu()
        return out

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        return self.logits(texts, batch_size).softmax(-1)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[Prediction]:
        """Most likely intent and its probability for every utterance."""
        probs = self.predict_proba(texts, batch_size)
        conf, idx = (
            probs.max(-1) if len(probs) else (torch.empty(0), torch.empty(0, dtype=torch.long))
        )
        return [
            Prediction(self.intents[i], float(c))
            for c, i in zip(conf.tolist(), idx.tolist(), strict=True)
        ]
