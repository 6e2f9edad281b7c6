"""A release on disk <-> a model in memory, and the `IntentClassifier` users load.

Files of a release (all hashed in ``manifest.json``):

* ``adapter_model.safetensors`` + ``adapter_config.json``: the LoRA adapter, in peft's format;
* ``head.safetensors``: the classification head (``out_proj`` and, if used, ``dense``);
* ``labels.json``: intents in head-row order;
* ``replay.json``: the replay memory (exemplar utterances per intent);
* ``calibration.json``: held-out utterances the out-of-scope threshold was calibrated on
  (releases made before out-of-scope detection have none, and accept every utterance);
* ``oos_bank.safetensors``: pooled features of the replay exemplars, for an out-of-scope score
  that reads features (``energy_knn``; see `intent_ci.calibration`).

Loading rebuilds the head at the recorded size, re-hashes every file, and refuses a backbone
whose weights differ from the one the release was trained on. Only safetensors and JSON are read.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor

from intent_ci.calibration import (
    BANK_FILE,
    CALIBRATION_FILE,
    FALLBACK_SCORE,
    needs_bank,
    read_calibration,
    score_rows,
    write_calibration,
)
from intent_ci.config import NAME_PATTERN, OOS_SCORES, ModelConfig, ReleaseConfig
from intent_ci.errors import IntentCIError, ReleaseVerificationError
from intent_ci.modeling import (
    Backbone,
    IntentModel,
    attach_lora,
    build_head,
    load_backbone,
    lora_config,
    merge_lora,
)
from intent_ci.registry import MANIFEST, Registry, describe_os_error
from intent_ci.replay import REPLAY_FILE, read_memory, write_memory

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HEAD_WEIGHTS = "head.safetensors"
LABELS = "labels.json"
RELEASE_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, HEAD_WEIGHTS, LABELS, REPLAY_FILE)
"""The files every intent-ci release holds besides its manifest."""


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


def write_staged(path: Path, write: Callable[[], None]) -> None:
    """Run one file write into a staging folder; a failed write becomes an `IntentCIError`.

    safetensors reports a full disk as its own error type, so both it and `OSError` are caught.
    """
    try:
        write()
    except (OSError, SafetensorError) as err:
        raise IntentCIError(
            f"{path.parent.parent}: could not write {path.name} of the new release "
            f"({describe_os_error(err)}); nothing was committed and the registry is unchanged"
        ) from None


def write_staged_json(path: Path, payload: Any, **dump: Any) -> None:
    write_staged(
        path, lambda: path.write_text(json.dumps(payload, **dump) + "\n", encoding="utf-8")
    )


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
    *,
    model_config: ModelConfig | None = None,
    model_type: str | None = None,
    calibration: tuple[dict[str, list[str]], list[str]] | None = None,
    bank: torch.Tensor | None = None,
) -> None:
    """Write the adapter, head, labels, replay memory and calibration set of `model` into `folder`.

    Args:
        state: the model's full state dict when its parameters are sharded (see
            :func:`full_state_dict`); None to read the weights from `model` itself.
        model_config: the release's resolved model config; given, the adapter config is
            checked against the strict schema loading applies, before anything is written.
        model_type: the backbone's ``model_type`` (with `model_config`).
        calibration: ``(in_scope, oos)`` calibration utterances; None writes no calibration file.
        bank: the out-of-scope exemplar bank (`intent_ci.calibration.make_bank`); None writes
            no bank file.

    Raises:
        IntentCIError: if a write fails (full disk, file size limit), or if peft produced an
            adapter config the strict schema of :func:`adapter_config_problems` would refuse.
    """
    encoder_state = _submodule_state(state, "encoder.") if state is not None else None
    adapter_state = {
        k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(model.encoder, state_dict=encoder_state).items()
    }
    adapter_cfg = adapter_config_of(model.encoder)
    if model_config is not None:
        check_adapter_schema(adapter_cfg, model_config, model_type)
    path = folder / ADAPTER_WEIGHTS
    write_staged(path, lambda: save_file(adapter_state, str(path)))
    write_staged_json(folder / ADAPTER_CONFIG, adapter_cfg, indent=2, sort_keys=True)
    head_source = _submodule_state(state, "head.") if state is not None else model.head.state_dict()
    head_state = {k: v.detach().cpu().contiguous() for k, v in head_source.items()}
    path = folder / HEAD_WEIGHTS
    write_staged(path, lambda: save_file(head_state, str(path)))
    write_staged_json(folder / LABELS, {"intents": labels}, indent=1)
    path = folder / REPLAY_FILE
    write_staged(path, lambda: write_memory(replay, path))
    if calibration is not None:
        cal = folder / CALIBRATION_FILE
        write_staged(cal, lambda: write_calibration(calibration[0], calibration[1], cal))
    if bank is not None:
        write_bank(bank, folder / BANK_FILE)


def write_bank(bank: torch.Tensor, path: Path) -> None:
    """Write an exemplar bank (float16, as `make_bank` rounded it) to `path`, staged."""
    tensors = {"features": bank.half().contiguous()}
    write_staged(path, lambda: save_file(tensors, str(path)))


def read_bank(path: Path) -> torch.Tensor:
    """An exemplar bank as float32 ``(rows, hidden)``.

    Raises:
        ReleaseVerificationError: if the file is not a safetensors file with a 2-D `features`.
    """
    features = _load_safetensors(path).get("features")
    if features is None or features.ndim != 2:
        raise ReleaseVerificationError(f"{path}: expected a 2-D `features` tensor")
    return features.float()


def check_adapter_schema(cfg: dict[str, Any], model: ModelConfig, model_type: Any) -> None:
    """Refuse an adapter config that loading would refuse (see `adapter_schema_problems`).

    Raises:
        IntentCIError: naming every problem, the peft version, and what to do.
    """
    problems = adapter_schema_problems(cfg, ADAPTER_CONFIG, model, model_type)
    if problems:
        raise IntentCIError(
            f"peft {cfg.get('peft_version')} would write an {ADAPTER_CONFIG} that intent-ci's strict "
            f"adapter schema refuses: {'; '.join(p.removeprefix(ADAPTER_CONFIG + ': ') for p in problems)}. "
            "Install the peft version this intent-ci release supports, or extend the schema in "
            "intent_ci/release.py (_ADAPTER_OFF or _ADAPTER_INFO) after checking what the keys do"
        )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ReleaseVerificationError(f"{path}: not a readable safetensors file ({err})") from None


def read_labels(path: Path) -> list[str]:
    """The intents of ``labels.json``, in head-row order.

    Raises:
        ReleaseVerificationError: if it is not JSON, not the expected shape, or holds invalid
            or repeated intent names.
    """
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
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


# ---- strict checks of a release's files, before torch or peft read them ---------------------
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Parse and check a safetensors header without loading any tensor.

    The file is 8 bytes of little-endian header length, a JSON header mapping tensor names to
    ``dtype``, ``shape`` and ``data_offsets``, then the data. Every tensor must fit its byte
    range and the ranges must cover the data exactly, so a truncated file is caught here.

    Returns:
        The tensor entries (without ``__metadata__``).

    Raises:
        ReleaseVerificationError: naming the file and what is wrong with it.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ReleaseVerificationError(
                    f"{path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)"
                )
            length = int.from_bytes(prefix, "little")
            if length > min(size - 8, _MAX_HEADER_BYTES):
                raise ReleaseVerificationError(
                    f"{path}: not a safetensors file (header length {length} exceeds the file's {size} bytes)"
                )
            raw = handle.read(length)
    except OSError as err:
        raise ReleaseVerificationError(f"{path}: unreadable ({describe_os_error(err)})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ReleaseVerificationError(
            f"{path}: not a safetensors file (header is not JSON)"
        ) from None
    if not isinstance(header, dict):
        raise ReleaseVerificationError(f"{path}: not a safetensors file (header is not an object)")
    data_bytes = size - 8 - length
    tensors: dict[str, dict[str, Any]] = {}
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            dtype not in _DTYPE_BYTES
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
            or offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES[dtype]
        ):
            raise ReleaseVerificationError(
                f"{path}: tensor {name!r} has a malformed entry or lies outside the file's "
                f"{data_bytes} data bytes (truncated?)"
            )
        tensors[name] = entry
        ranges.append(tuple(offsets))
    covered = 0
    for start, end in sorted(ranges):
        if start != covered:
            break
        covered = end
    if covered != data_bytes:
        raise ReleaseVerificationError(
            f"{path}: tensors cover {covered} of the file's {data_bytes} data bytes; the file is "
            "truncated, padded or overlapping"
        )
    return tensors


_ADAPTER_MATCHED = {
    "peft_type": "LoRA adapters only",
    "r": "config.model.lora_r",
    "lora_alpha": "config.model.lora_alpha",
    "lora_dropout": "config.model.lora_dropout",
    "target_modules": "config.model.lora_target_modules, resolved for the backbone",
    "bias": "no trained biases",
}
_ADAPTER_OFF = {
    # Each of these changes what peft builds or loads; intent-ci never sets them, so they must
    # be null, false or empty. auto_mapping names classes for peft to import (remote code).
    "auto_mapping", "task_type", "modules_to_save", "layers_to_transform", "layers_pattern",
    "rank_pattern", "alpha_pattern", "layer_replication", "megatron_config", "loftq_config",
    "eva_config", "corda_config", "use_dora", "use_rslora", "fan_in_fan_out", "exclude_modules",
    "lora_bias", "trainable_token_indices", "target_parameters", "arrow_config",
    "alora_invocation_tokens", "use_qalora", "lora_ga_config", "kasa_config",
    "monteclora_config", "velora_config", "use_bdlora", "ensure_weight_tying",
}  # fmt: skip
_ADAPTER_INFO: dict[str, tuple[type | None, ...]] = {
    # Descriptive keys that do not change the adapter's weights or code paths.
    "base_model_name_or_path": (str, None),
    "revision": (str, None),
    "inference_mode": (bool,),
    "peft_version": (str, None),
    "init_lora_weights": (bool, str),
    "qalora_group_size": (int,),
    "megatron_core": (str, None),
}
_ADAPTER_KEYS = set(_ADAPTER_MATCHED) | _ADAPTER_OFF | set(_ADAPTER_INFO)


def _is_off(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def adapter_config_problems(path: Path, model: ModelConfig, model_type: Any) -> list[str]:
    """Check ``adapter_config.json`` against intent-ci's strict schema and the manifest.

    Unknown keys, remote-code flags (``auto_mapping``, ``trust_remote_code``, ...), switches that
    would change what peft builds, and LoRA settings or ``target_modules`` that differ from the
    manifest's resolved ``model`` config are all refused, before peft could ever read the file.

    Args:
        path: the adapter config file.
        model: the release's model config (from its manifest).
        model_type: the backbone's ``model_type`` (from its manifest), to resolve default targets.
    """
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        return [f"{path}: not valid JSON ({err})"]
    return adapter_schema_problems(cfg, str(path), model, model_type)


def adapter_config_of(encoder: Any) -> dict[str, Any]:
    """The ``adapter_config.json`` content peft's config of `encoder` (a peft model) gives."""
    return _jsonable(encoder.peft_config["default"].to_dict())


def adapter_schema_problems(cfg: Any, where: str, model: ModelConfig, model_type: Any) -> list[str]:
    """The checks of `adapter_config_problems` on an adapter config already parsed.

    The one schema check: loading runs it on the file, writing runs it on the config about to
    be written, and the preflight runs it on the same config before training starts.

    Args:
        cfg: the parsed adapter config.
        where: the file (or description) named in every problem.
        model: the release's resolved model config.
        model_type: the backbone's ``model_type``.
    """
    path = where
    if not isinstance(cfg, dict):
        return [f"{path}: expected a JSON object"]
    problems = []
    for key in sorted(cfg, key=str):
        if key in _ADAPTER_KEYS:
            continue
        if "remote" in str(key).lower() or "auto_map" in str(key).lower():
            problems.append(f"{path}: remote-code flag {key!r} is not allowed in a release")
        else:
            close = difflib.get_close_matches(str(key), sorted(_ADAPTER_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"{path}: unknown key {key!r}{hint}; the adapter config may hold only the LoRA keys "
                "intent-ci writes"
            )
    for key in sorted(_ADAPTER_OFF & set(cfg)):
        if not _is_off(cfg[key]):
            why = (
                " (it names classes for peft to import: remote code)"
                if key == "auto_mapping"
                else ""
            )
            shown = json.dumps(cfg[key])
            shown = shown if len(shown) <= 80 else shown[:79] + "…"
            problems.append(f"{path}: {key!r} must be null, false or empty, got {shown}{why}")
    for key, kinds in _ADAPTER_INFO.items():
        if key in cfg and not any(
            (cfg[key] is None)
            if k is None
            else (isinstance(cfg[key], k) and not (k is int and isinstance(cfg[key], bool)))
            for k in kinds
        ):
            problems.append(f"{path}: {key!r} has the wrong type ({type(cfg[key]).__name__})")
    if cfg.get("megatron_core") not in (None, "megatron.core"):
        problems.append(
            f"{path}: 'megatron_core' must be 'megatron.core' or null (it is a module peft imports)"
        )
    try:
        expected_targets = sorted(lora_config(model, str(model_type)).target_modules)
    except IntentCIError as err:
        return [*problems, f"{path}: cannot resolve the manifest's LoRA target modules: {err}"]
    expected = {
        "peft_type": "LORA",
        "r": model.lora_r,
        "lora_alpha": model.lora_alpha,
        "lora_dropout": model.lora_dropout,
        "bias": "none",
    }
    for key, value in expected.items():
        found = cfg.get(key)
        same = (
            isinstance(found, (int, float))
            and not isinstance(found, bool)
            and math.isclose(found, value)
            if isinstance(value, (int, float))
            else found == value
        )
        if not same:
            problems.append(
                f"{path}: {key!r} is {found!r} but the manifest requires {value!r} ({_ADAPTER_MATCHED[key]})"
            )
    targets = cfg.get("target_modules")
    if (
        not (isinstance(targets, list) and all(isinstance(t, str) for t in targets))
        or sorted(set(targets)) != expected_targets
    ):
        problems.append(
            f"{path}: 'target_modules' is {str(targets)[:80]} but the manifest's model config "
            f"resolves to {expected_targets}"
        )
    return problems


def content_problems(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Checks of a release's files that need no model: label map, head rows, adapter config.

    Reads only JSON and safetensors headers. Run after the hashes matched.
    """
    # A release pushed to the Hub with --no-replay records its replay memory under
    # `omitted_files` instead: it loads and predicts without it.
    omitted = manifest.get("omitted_files") or {}
    has_replay = REPLAY_FILE in manifest["files"]
    missing = [
        name
        for name in RELEASE_FILES
        if name not in manifest["files"] and not (name == REPLAY_FILE and name in omitted)
    ]
    if missing:
        return [
            f"{folder / MANIFEST}: lists no {', '.join(missing)}; an intent-ci release holds "
            f"{', '.join(RELEASE_FILES)}"
        ]
    problems = []
    intents = manifest["intents"]
    try:
        labels = read_labels(folder / LABELS)
    except IntentCIError as err:
        problems.append(str(err))
        labels = intents
    else:
        if labels != intents:
            problems.append(f"{folder / LABELS}: intents differ from the manifest's `intents`")
    head = folder / HEAD_WEIGHTS
    try:
        tensors = read_safetensors_header(head)
    except IntentCIError as err:
        problems.append(str(err))
    else:
        shape = tensors.get("out_proj.weight", {}).get("shape")
        if not isinstance(shape, list) or len(shape) != 2 or shape[0] != len(labels):
            rows = None if shape is None else tuple(shape)
            problems.append(
                f"{head}: head's out_proj has shape {rows} but {LABELS} lists {len(labels)} intents"
            )
        bias = tensors.get("out_proj.bias", {}).get("shape")
        if bias is not None and bias != [len(labels)]:
            problems.append(
                f"{head}: head's out_proj bias has shape {tuple(bias)}, expected ({len(labels)},)"
            )
    try:
        read_safetensors_header(folder / ADAPTER_WEIGHTS)
    except IntentCIError as err:
        problems.append(str(err))
    try:
        config = ReleaseConfig.from_dict(
            manifest["config"], source=f"{folder / MANIFEST} field `config`"
        )
    except IntentCIError as err:
        problems.append(str(err))
    else:
        problems.extend(
            adapter_config_problems(
                folder / ADAPTER_CONFIG, config.model, manifest["backbone"].get("model_type")
            )
        )
    try:
        replay = read_memory(folder / REPLAY_FILE) if has_replay else {}
    except IntentCIError as err:
        problems.append(str(err))
    else:
        strays = [i for i in replay if i not in intents]
        if strays:
            problems.append(
                f"{folder / REPLAY_FILE}: exemplars for {', '.join(map(repr, strays))}, which the "
                "release does not predict"
            )
    problems.extend(_oos_problems(folder, manifest))
    return problems


def _oos_problems(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """The manifest's ``oos`` record against the release's calibration file."""
    oos = manifest.get("oos")
    listed = CALIBRATION_FILE in manifest["files"]
    omitted = CALIBRATION_FILE in (manifest.get("omitted_files") or {})
    where = f"{folder / MANIFEST}: field `oos`"
    if oos is None:
        if listed:
            return [f"{where} is missing but the release holds {CALIBRATION_FILE}"]
        return []
    if not isinstance(oos, dict):
        return [f"{where}: expected an object"]
    problems = []
    threshold = oos.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not math.isfinite(threshold)
    ):
        problems.append(f"{where}.threshold: expected a finite number or null, got {threshold!r}")
    if oos.get("score") not in OOS_SCORES:
        problems.append(f"{where}.score: unknown score {oos.get('score')!r}")
    elif needs_bank(oos["score"]) and threshold is not None:
        problems.extend(_bank_problems(folder, manifest, oos, where))
    if not listed and not omitted:
        problems.append(f"{where} is set but the manifest lists no {CALIBRATION_FILE}")
    if listed:
        try:
            in_scope, oos_texts = read_calibration(folder / CALIBRATION_FILE)
        except IntentCIError as err:
            problems.append(str(err))
        else:
            strays = [i for i in in_scope if i not in manifest["intents"]]
            if strays:
                problems.append(
                    f"{folder / CALIBRATION_FILE}: utterances for {', '.join(map(repr, strays))}, "
                    "which the release does not predict"
                )
            size = (oos.get("calibration") or {}).get("in_scope")
            if size != sum(len(v) for v in in_scope.values()):
                problems.append(
                    f"{where}.calibration.in_scope is {size!r} but {CALIBRATION_FILE} holds "
                    f"{sum(len(v) for v in in_scope.values())} in-scope utterances"
                )
    return problems


def _bank_problems(
    folder: Path, manifest: dict[str, Any], oos: dict[str, Any], where: str
) -> list[str]:
    """A feature score's record (``standardise``, ``bank``) against the bank file."""
    problems = []
    stats = oos.get("standardise")
    if (
        not isinstance(stats, dict)
        or set(stats) != {"energy", "knn"}
        or not all(
            isinstance(v, dict)
            and all(
                isinstance(v.get(k), (int, float)) and math.isfinite(v[k]) for k in ("mean", "std")
            )
            and v["std"] > 0
            for v in stats.values()
        )
    ):
        problems.append(
            f"{where}.standardise: expected a finite mean and a positive std for `energy` and "
            f"`knn`, got {stats!r}"
        )
    record = oos.get("bank") or {}
    if BANK_FILE not in manifest["files"]:
        return [*problems, f"{where}: score {oos['score']} needs {BANK_FILE}, which is not listed"]
    try:
        shape = read_safetensors_header(folder / BANK_FILE).get("features", {}).get("shape")
    except IntentCIError as err:
        return [*problems, str(err)]
    hidden = manifest["backbone"].get("hidden_size")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or shape[0] != record.get("rows")
        or (hidden is not None and shape[1] != hidden)
    ):
        problems.append(
            f"{folder / BANK_FILE}: `features` has shape {shape}; expected "
            f"[{record.get('rows')}, {hidden}] (`oos.bank.rows`, the backbone's hidden size)"
        )
    return problems


def release_problems(registry: Registry, name: str, *, whole_chain: bool = True) -> list[str]:
    """Everything wrong with a release, without loading a model: files, content, lineage.

    Args:
        registry: where the release lives.
        name: a complete release's name.
        whole_chain: check every edge of the lineage (see `Registry.lineage_problems`).
    """
    problems = registry.integrity_problems(name)
    if problems:
        return problems  # hashes first: content checks on altered files would only add noise
    manifest = registry.manifest(name)
    return content_problems(registry.path(name), manifest) + registry.lineage_problems(
        name, whole_chain=whole_chain
    )


def verify_release(registry: Registry, name: str) -> dict[str, Any]:
    """The cheap checks every load runs: hashes, label map, head rows, adapter schema, lineage.

    Raises:
        ReleaseVerificationError: with the first problem found.
    """
    problems = release_problems(registry, name)
    if problems:
        raise ReleaseVerificationError(problems[0])
    return registry.manifest(name)


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
    calibration: tuple[dict[str, list[str]], list[str]] | None = None
    """``(in_scope, oos)`` calibration utterances; None for a release without them."""
    bank: torch.Tensor | None = None
    """The out-of-scope exemplar bank (``oos_bank.safetensors``); None without one."""


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
    manifest = verify_release(registry, name)
    folder = registry.path(name)
    config = ReleaseConfig.from_dict(
        manifest["config"], source=f"{folder / 'manifest.json'} field `config`"
    )
    labels = read_labels(folder / LABELS)
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
    calibration = (
        read_calibration(folder / CALIBRATION_FILE)
        if CALIBRATION_FILE in manifest["files"]
        else None
    )
    bank = read_bank(folder / BANK_FILE) if BANK_FILE in manifest["files"] else None
    return LoadedRelease(name, manifest, config, labels, replay, model, backbone, calibration, bank)


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
    """One utterance's best in-scope intent, its probability, and the out-of-scope decision.

    Attributes:
        intent: the most likely of the release's intents (even when rejected), or ``""`` for an
            empty or whitespace-only utterance.
        confidence: its softmax probability (0.0 for an empty utterance).
        in_scope: False when the release rejects the utterance as out of scope (its `score` is
            below the release's calibrated threshold), and always False for an empty or
            whitespace-only utterance; True for every other utterance when the release has no
            calibration or `reject=False` was asked.
        score: the release's out-of-scope score (``oos.score`` of its manifest; higher is more
            in scope), or None for an empty utterance (nothing was scored).
    """

    intent: str
    confidence: float
    in_scope: bool = True
    score: float | None = None

    @property
    def label(self) -> str:
        """The predicted intent: an alias of `intent`, kept for existing code."""
        return self.intent


class IntentClassifier:
    """A loaded release, ready to classify utterances.

    Example::

        clf = IntentClassifier.load("adapters", "latest")
        clf.predict(["where is my refund"])
        # [Prediction(intent='refund_status', confidence=0.97, in_scope=True, score=24.1)]
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
        self.truncated = 0
        """Utterances cut to ``model.max_length`` so far (a server's calls add up)."""

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

    @property
    def oos(self) -> dict[str, Any] | None:
        """The manifest's out-of-scope record (score, threshold, calibration), or None for a
        release made before out-of-scope detection."""
        return self.release.manifest.get("oos")

    @property
    def threshold(self) -> float | None:
        """The calibrated out-of-scope threshold; None when the release accepts everything."""
        return (self.oos or {}).get("threshold")

    @property
    def score_method(self) -> str:
        """The out-of-scope score this release is calibrated for (its config's `oos.score` if
        none, or ``energy`` when that score needs an exemplar bank the release lacks)."""
        method = (self.oos or {}).get("score") or self.release.config.oos.score
        if needs_bank(method) and (
            self.release.bank is None or "standardise" not in (self.oos or {})
        ):
            return FALLBACK_SCORE
        return method

    def _encode(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """Token ids of `texts`, cut to ``model.max_length``; a warning counts the rows cut.

        The first call that cuts warns; later ones log at debug level, so a server answering
        long texts batch after batch logs it once (`truncated` keeps the count).
        """
        max_length = self.release.config.model.max_length
        encoded = dict(self.tokenizer(list(texts), truncation=False))
        cut = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) > max_length]
        if cut:
            logger.log(
                logging.WARNING if self.truncated == 0 else logging.DEBUG,
                "%d of %d utterances are longer than %d tokens (model.max_length) and were "
                "truncated to it%s",
                len(cut),
                len(texts),
                max_length,
                "" if self.truncated else " (later truncations are logged at debug level)",
            )
            self.truncated += len(cut)
            # Only the long rows are encoded again, with the tokenizer's own truncation (which
            # keeps the end-of-sequence token).
            short = self.tokenizer([texts[i] for i in cut], truncation=True, max_length=max_length)
            for key in encoded:
                column = list(encoded[key])
                for row, value in zip(cut, short[key], strict=True):
                    column[row] = value
                encoded[key] = column
        return encoded

    @torch.inference_mode()
    def _forward(
        self, texts: list[str], batch_size: int, pooled: bool, logits: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(logits, pooled features)`` of `texts` from one encoder pass; each None unless asked."""
        if isinstance(texts, str):
            raise IntentCIError("predict() takes a list of utterances, not a single string")
        if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
            raise IntentCIError(f"batch_size: must be a whole number >= 1, got {batch_size!r}")
        hidden = self.release.backbone.encoder.config.hidden_size
        out_logits = torch.empty(len(texts), len(self.intents)) if logits else None
        out_pooled = torch.empty(len(texts), hidden) if pooled else None
        if not texts:
            return out_logits, out_pooled
        encoded = self._encode(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad(
                {key: [encoded[key][i] for i in rows] for key in encoded},
                return_tensors="pt",
            ).to(self.device)
            if logits and pooled:
                result, features = self.model(**batch, return_pooled=True)
                out_logits[rows] = result.float().cpu()
                out_pooled[rows] = features.float().cpu()
            elif logits:
                out_logits[rows] = self.model(**batch).float().cpu()
            else:
                out_pooled[rows] = self.model.pooled(**batch).float().cpu()
        return out_logits, out_pooled

    def logits(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Raw logits, shape ``(len(texts), len(intents))``, in the order of `texts`.

        Utterances are batched by token count (longest first), so each batch is padded to
        nearly its own length: with random batches of short, uneven utterances around 40% of
        the computed tokens are padding (scripts/results/bench_throughput.md). Utterances
        longer than ``model.max_length`` tokens are truncated, with a warning that counts them.
        """
        return self._forward(texts, batch_size, pooled=False)[0]

    def features(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Pooled encoder features (LoRA applied, before the head), ``(len(texts), hidden)``."""
        return self._forward(texts, batch_size, pooled=True, logits=False)[1]

    @property
    def scores_need_features(self) -> bool:
        """Whether the release's out-of-scope score reads pooled features as well as logits."""
        return needs_bank(self.score_method)

    def logits_and_features(
        self, texts: list[str], batch_size: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and pooled features of `texts` from one encoder pass."""
        return self._forward(texts, batch_size, pooled=True)

    def scores(self, logits: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """The release's out-of-scope score of each row (higher: more in scope).

        Args:
            logits: ``(n, intents)`` logits.
            features: ``(n, hidden)`` pooled features of the same rows; needed when the
                release's score reads them (`scores_need_features`).
        """
        return score_rows(
            self.score_method,
            logits,
            features,
            bank=self.release.bank,
            standardise=(self.oos or {}).get("standardise"),
        )

    def predict_proba(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        return self.logits(texts, batch_size).softmax(-1)

    def predict(
        self, texts: list[str], batch_size: int = 64, *, reject: bool = True
    ) -> list[Prediction]:
        """Best in-scope intent, its probability, and the out-of-scope decision per utterance.

        Args:
            texts: utterances. An empty or whitespace-only one is not classified: it gets
                ``Prediction(intent="", confidence=0.0, in_scope=False, score=None)``.
            batch_size: utterances per forward pass.
            reject: apply the release's calibrated threshold (``in_scope`` False below it).
                False: no threshold, ``in_scope`` True for every non-empty utterance; the
                score is still given. A release without calibration accepts everything.

        Raises:
            IntentCIError: if `texts` is a single string or holds something else than strings.
        """
        if isinstance(texts, str):
            raise IntentCIError("predict() takes a list of utterances, not a single string")
        texts = list(texts)
        for number, text in enumerate(texts, 1):
            if not isinstance(text, str):
                raise IntentCIError(
                    f"utterance {number}: expected a string, got {type(text).__name__}"
                )
        filled = [i for i, t in enumerate(texts) if t.strip()]
        logits, features = self._forward(
            [texts[i] for i in filled], batch_size, pooled=self.scores_need_features
        )
        probs = logits.softmax(-1)
        scores = self.scores(logits, features)
        threshold = self.threshold if reject else None
        out = [Prediction("", 0.0, False, None) for _ in texts]
        if len(filled):
            conf, idx = probs.max(-1)
            for row, c, i, s in zip(
                filled, conf.tolist(), idx.tolist(), scores.tolist(), strict=True
            ):
                accepted = threshold is None or s >= threshold
                out[row] = Prediction(self.intents[i], float(c), bool(accepted), float(s))
        return out
