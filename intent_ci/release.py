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
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from intent_ci.config import NAME_PATTERN, ReleaseConfig
from intent_ci.errors import IntentCIError, ReleaseVerificationError
from intent_ci.modeling import (
    Backbone,
    IntentModel,
    attach_lora,
    build_head,
    load_backbone,
    merge_lora,
)
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


def full_state_dict(model: IntentModel) -> dict[str, torch.Tensor] | None:
    """The unsharded weights of a model whose parameters FSDP2 sharded, or None if it is whole.

    Under FSDP (``fully_shard``) every process holds a shard (a DTensor) of each parameter,
    so the release cannot be written from one process's parameters. This all-gathers the full
    state dict to the CPU of the main process (other processes get an empty dict); every
    process must call it. DDP and single-process models are whole and return None.
    """
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def _submodule_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def save_model_files(
    model: IntentModel,
    labels: list[str],
    replay: dict[str, list[str]],
    folder: Path,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the adapter, head, labels and replay memory of `model` into `folder`.

    Args:
        state: the model's full state dict when its parameters are sharded (see
            :func:`full_state_dict`); None to read the weights from `model` itself.
    """
    encoder_state = _submodule_state(state, "encoder.") if state is not None else None
    adapter_state = {
        k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(model.encoder, state_dict=encoder_state).items()
    }
    save_file(adapter_state, str(folder / ADAPTER_WEIGHTS))
    adapter_cfg = _jsonable(model.encoder.peft_config["default"].to_dict())
    (folder / ADAPTER_CONFIG).write_text(
        json.dumps(adapter_cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    head_source = _submodule_state(state, "head.") if state is not None else model.head.state_dict()
    head_state = {k: v.detach().cpu().contiguous() for k, v in head_source.items()}
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
    replay = read_memory(folder / REPLAY_FILE)
    return LoadedRelease(name, manifest, config, labels, replay, model, backbone)


MERGED_FINGERPRINT = "merged-lora:"


def merge_lora_for_serving(release: LoadedRelease) -> None:
    """Fold the release's LoRA weights into its encoder, in place, for inference.

    ``W <- W + (alpha / r) B A`` for every adapted projection (peft's ``merge_and_unload``), so
    the encoder has exactly the bare backbone's shape and cost. The backbone's fingerprint is
    prefixed so that loading another release with this (now changed) backbone is refused.
    """
    if release.backbone.fingerprint.startswith(MERGED_FINGERPRINT):
        return
    merge_lora(release.model)
    release.backbone.encoder = release.model.encoder
    release.backbone.fingerprint = MERGED_FINGERPRINT + release.backbone.fingerprint


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

    def __init__(
        self,
        release: LoadedRelease,
        device: str | torch.device | None = None,
        *,
        merge_lora: bool = False,
    ) -> None:
        """Wrap a loaded release for inference.

        Args:
            device: where to run; default the GPU if there is one.
            merge_lora: fold the LoRA weights into the encoder's weights (peft's
                ``merge_and_unload``) for serving: the encoder then runs at the bare backbone's
                speed. This changes the loaded backbone's weights in place, so the release's
                `Backbone` is marked as merged and cannot be reused to load another release.
        """
        self.release = release
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if merge_lora:
            merge_lora_for_serving(release)
        self.model = release.model.to(self.device).eval()
        self.tokenizer = release.backbone.tokenizer

    @classmethod
    def load(
        cls,
        registry: str | Path | Registry = "adapters",
        release: str = "latest",
        device: str | None = None,
        *,
        merge_lora: bool = False,
    ) -> IntentClassifier:
        """Load and verify a release from a registry folder (``merge_lora``: see ``__init__``).

        Raises:
            IntentCIError: for an unknown release or one that fails verification.
        """
        reg = registry if isinstance(registry, Registry) else Registry(registry)
        return cls(load_release(reg, release), device=device, merge_lora=merge_lora)

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
        """Raw logits, shape ``(len(texts), len(intents))``, in the order of `texts`.

        Utterances are batched by token count (longest first), so each batch is padded to
        nearly its own length: with random batches of short, uneven utterances around 40% of
        the computed tokens are padding (scripts/results/bench_throughput.md).
        """
        if isinstance(texts, str):
            raise IntentCIError("predict() takes a list of utterances, not a single string")
        if not texts:
            return torch.empty(0, len(self.intents))
        max_length = self.release.config.model.max_length
        encoded = self.tokenizer(list(texts), truncation=True, max_length=max_length)
        order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
        out = torch.empty(len(texts), len(self.intents))
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad(
                {key: [encoded[key][i] for i in rows] for key in encoded},
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
