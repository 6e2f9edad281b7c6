"""The jobs: train a base release, and add intents to or update an existing release.

Both run the same way on one CPU, one GPU, several GPUs or several machines: the process layout
comes from Accelerate (``accelerate launch`` / ``torchrun``), every rank computes, and only the
main process writes the registry. The release id is decided there and broadcast to every rank.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list, set_seed

from intent_ci.calibration import (
    bank_rows,
    calibrate_release_scores,
    calibration_rows,
    exemplar_texts,
    holdout_split,
    make_bank,
)
from intent_ci.config import DistillConfig, ReleaseConfig, apply_overrides
from intent_ci.data import (
    INTENT,
    OOS_LABEL,
    SOURCE,
    TEXT,
    IntentData,
    check_has_intents,
    check_known_intents,
    check_new_intents,
    normalise,
    read_examples,
)
from intent_ci.errors import IntentCIError, LatestMovedError
from intent_ci.evaluation import group_accuracy, score
from intent_ci.fallback import fall_back_if_better, lora_state
from intent_ci.modeling import (
    Backbone,
    IntentModel,
    attach_lora,
    build_head,
    check_max_length,
    class_prototypes,
    default_lora_targets,
    load_backbone,
    widen_head,
)
from intent_ci.preflight import estimate_release_bytes, preflight
from intent_ci.registry import Registry
from intent_ci.release import (
    LoadedRelease,
    adapter_config_of,
    full_state_dict,
    library_versions,
    load_release,
    save_model_files,
)
from intent_ci.replay import (
    REPLAY_FILE,
    draw_replay,
    find_neighbours,
    memory_bytes_per_intent,
    replay_per_intent,
    select_exemplars,
)
from intent_ci.training import (
    OUTLIER_LABEL,
    Features,
    ParameterAnchor,
    compute_features,
    diagonal_fisher,
    fit_head,
    hold_parent_weights,
    make_loader,
    predict_logits,
    predict_logits_and_pooled,
    tokenize,
    train,
)
from intent_ci.update import (
    FROM_MEMORY,
    check_not_emptied,
    check_relabels,
    confirmations,
    find_corrections,
    known_embeddings,
    memory_changes,
    memory_index,
    without_moved,
)

logger = logging.getLogger(__name__)

DataSource = str | Path | datasets.Dataset | datasets.DatasetDict | IntentData


def check_mixed_precision(mixed_precision: str) -> None:
    """Refuse a mixed-precision mode this machine cannot run, before any work starts.

    Without this, Accelerate would silently train fp16 in fp32 on a CPU.

    Raises:
        IntentCIError: for fp16 without a GPU, or bf16 on a GPU without bf16 support.
    """
    where = "config field `train.mixed_precision`"
    if mixed_precision == "fp16" and not torch.accelerator.is_available():
        raise IntentCIError(
            f"{where}: fp16 needs a GPU (or another accelerator) and this machine has none; "
            "use bf16 (CPU autocast) or no"
        )
    if (
        mixed_precision == "bf16"
        and torch.cuda.is_available()
        and not torch.cuda.is_bf16_supported()
    ):
        raise IntentCIError(
            f"{where}: bf16 is not supported by {torch.cuda.get_device_name()}; use fp16 or no"
        )


def make_accelerator(config: ReleaseConfig) -> Accelerator:
    """One Accelerator per job; mixed precision and accumulation come from the config.

    Accelerate only picks multi-process CPU training (gloo) when told to use the CPU, so on a
    machine without an accelerator we say so: `torchrun --nproc_per_node N` then runs N ranks.
    `train.mixed_precision` is the one source of truth: a launcher's ``--mixed_precision`` (or
    an accelerate config file's ``mixed_precision``) that disagrees is ignored with a warning.

    Raises:
        IntentCIError: if the machine cannot run `train.mixed_precision`, or the launcher asks
            for FSDP (not supported: see the message).
    """
    wanted = config.train.mixed_precision
    check_mixed_precision(wanted)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        # Checked on the environment, not on Accelerate's state: on CPUs Accelerate ignores
        # the flag and would run DDP without a word.
        raise IntentCIError(
            "FSDP is not supported (the launcher set ACCELERATE_USE_FSDP=true): the feature and "
            "teacher passes run the whole model on every process before `prepare`, and the "
            "frozen head rows are restored from unsharded copies, so FSDP would neither save "
            "memory nor keep old rows exact. Launch with DDP instead "
            "(scripts/accelerate/multi_gpu.yaml), which keeps one copy of the frozen backbone "
            "per GPU"
        )
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher not in ("no", wanted):
        logger.warning(
            "the launcher asks for mixed precision %s; intent-ci uses train.mixed_precision=%s "
            "from its config (set it there)",
            launcher,
            wanted,
        )
    # Accelerate keeps one process-wide state and refuses a second job in the same process (a
    # notebook, the test suite) that asks for another precision; each job starts its own.
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != wanted:
        AcceleratorState._reset_state()
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),
        mixed_precision=wanted,
        gradient_accumulation_steps=config.train.gradient_accumulation_steps,
    )
    return accelerator


def _as_data(source: DataSource, config: ReleaseConfig) -> IntentData:
    return source if isinstance(source, IntentData) else read_examples(source, config.data)


def _registry(registry: str | Path | Registry) -> Registry:
    return registry if isinstance(registry, Registry) else Registry(registry)


def _feature_pass(
    model: IntentModel,
    tokenized: datasets.Dataset,
    backbone: Backbone,
    accelerator: Accelerator,
    config: ReleaseConfig,
) -> Features:
    loader = accelerator.prepare(
        make_loader(tokenized, backbone.tokenizer, config.train.eval_batch_size, shuffle=False)
    )
    model.to(accelerator.device)
    return compute_features(model, loader, accelerator)


def _teacher_targets(
    model: IntentModel,
    scored: tuple[torch.Tensor, torch.Tensor],
    tokenized: datasets.Dataset,
    backbone: Backbone,
    accelerator: Accelerator,
    config: ReleaseConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The parent's logits and pooled embeddings of every training row, in row order.

    `scored` holds them for the first rows (the file's, from the parent's feature pass: the
    head on those features gives the same logits as the model); the rest (the replay rows) get
    a teacher pass, sharded over processes and gathered in row order.
    """
    logits, pooled = scored
    if len(logits) == len(tokenized):
        return logits, pooled
    rest = tokenized.select(range(len(logits), len(tokenized)))
    rest = rest.remove_columns("index").add_column("index", list(range(len(rest))))
    loader = accelerator.prepare(
        make_loader(rest, backbone.tokenizer, config.train.eval_batch_size, shuffle=False)
    )
    more_logits, more_pooled = predict_logits_and_pooled(model, loader, accelerator)
    return torch.cat([logits, more_logits]), torch.cat([pooled.float(), more_pooled])


def _parent_embeddings(
    model: IntentModel,
    parent: LoadedRelease,
    computed_rows: list[tuple[str, str]],
    computed_pooled: torch.Tensor,
    memory: dict[str, list[str]],
    backbone: Backbone,
    accelerator: Accelerator,
    config: ReleaseConfig,
) -> tuple[dict[tuple[str, str], torch.Tensor], int]:
    """The parent's pooled embeddings, by ``(intent, text)``, of the `computed_rows` (``(text,
    intent)`` in the order of `computed_pooled`: the feature pass's) and of every exemplar of
    `memory`, for ``train.update_mode: head``.

    Memory exemplars come from the parent's exemplar bank where the head reads unit-length
    embeddings as it reads the raw ones (a cosine head without a dense layer); the rest from
    one forward pass of `model` (the parent).

    Returns:
        The embeddings and the number of rows passed forward for them.
    """
    computed = {(i, t): computed_pooled[k] for k, (t, i) in enumerate(computed_rows)}
    head = model.head
    bank = parent.bank if head.kind == "cosine" and head.dense is None else None
    found = known_embeddings(parent.replay, parent.labels, bank, computed)
    missing = [(i, t) for i in parent.labels for t in memory.get(i, []) if (i, t) not in found]
    if missing:
        index = {label: k for k, label in enumerate(parent.labels)}
        tokenized = tokenize(
            backbone.tokenizer,
            [t for _, t in missing],
            [index[i] for i, _ in missing],
            config.model.max_length,
            accelerator,
        )
        pooled = _feature_pass(model, tokenized, backbone, accelerator, config).pooled
        found.update(zip(missing, pooled, strict=True))
    return found, len(missing)


EWC_NEEDS_REPLAY = (
    "`distill.ewc_weight` needs replayed memory rows to estimate the Fisher information on; set "
    "`replay.enabled: true` or `distill.ewc_weight: 0`"
)


def _parameter_anchor(
    model: IntentModel,
    tokenized: datasets.Dataset,
    replayed: range,
    backbone: Backbone,
    accelerator: Accelerator,
    config: ReleaseConfig,
    adaptive: float,
) -> ParameterAnchor | None:
    """The parent's LoRA values and their weighted importance (`distill.l2_weight`, and
    `distill.ewc_weight` times the diagonal Fisher on the `replayed` rows of `tokenized`, the
    memory rows this release replays); None when both weights are 0. With
    `distill.anchor_per_pass` the weights are per pass over `tokenized`: each optimizer update
    gets its share of them. With `distill.anchor_adaptive` they are times `adaptive`, the
    release's sqrt(old intents / changed intents). Call after `hold_parent_weights`, before
    training.

    Raises:
        IntentCIError: for EWC without replayed rows to estimate the Fisher information on.
    """
    l2, ewc = config.distill.l2_weight, config.distill.ewc_weight
    if l2 == 0 and ewc == 0:
        return None
    if config.distill.anchor_per_pass:
        # The term is in every optimizer update (averaged over accumulated steps): per pass it
        # counts updates-per-pass times, so each update gets its share, rows in an update over
        # rows in the release.
        rows = (
            config.train.batch_size
            * accelerator.num_processes
            * config.train.gradient_accumulation_steps
        )
        share = min(1.0, rows / len(tokenized))
        l2, ewc = l2 * share, ewc * share
    if config.distill.anchor_adaptive:
        l2, ewc = l2 * adaptive, ewc * adaptive
    names = [f"encoder.{n}" for n, p in model.encoder.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    values = {n: params[n].detach().float().clone() for n in names}
    importance = {n: torch.full_like(v, l2) for n, v in values.items()}
    if ewc > 0:
        if len(replayed) == 0:
            raise IntentCIError(EWC_NEEDS_REPLAY)
        rows = tokenized.select(replayed)
        loader = accelerator.prepare(
            make_loader(rows, backbone.tokenizer, config.train.batch_size, shuffle=False)
        )
        model.to(accelerator.device)
        fisher = diagonal_fisher(model, loader, accelerator, names)
        for n in names:
            importance[n] = importance[n] + ewc * fisher[n].cpu()
    return ParameterAnchor(values, importance)


def _preflight(
    registry: Registry,
    accelerator: Accelerator,
    model: IntentModel,
    config: ReleaseConfig,
    backbone: Backbone,
    **estimate: Any,
) -> None:
    """`intent_ci.preflight.preflight` on the main process; its verdict reaches every rank.

    Raises:
        IntentCIError: on every rank, if a check fails (nothing trained or written).
    """
    problem: list[str | None] = [None]
    if accelerator.is_main_process:
        try:
            preflight(
                registry,
                adapter_config=adapter_config_of(model.encoder),
                model_config=config.model,
                model_type=backbone.encoder.config.model_type,
                release_bytes=estimate_release_bytes(model, **estimate),
            )
        except IntentCIError as err:
            problem[0] = str(err)
    if accelerator.num_processes > 1:
        broadcast_object_list(problem, from_process=0)
    if problem[0] is not None:
        raise IntentCIError(problem[0])


def _evaluate(
    model: IntentModel,
    labels: list[str],
    eval_data: IntentData | None,
    old_intents: list[str],
    backbone: Backbone,
    accelerator: Accelerator,
    config: ReleaseConfig,
    updated_intents: list[str] | None = None,
) -> dict[str, Any] | None:
    if eval_data is None:
        return None
    eval_data = eval_data.in_scope()  # accuracy is over the intents; `oos` rows have none
    index = {label: i for i, label in enumerate(labels)}
    refs = eval_data.dataset[INTENT]
    tokenized = tokenize(
        backbone.tokenizer,
        eval_data.dataset[TEXT],
        [index[r] for r in refs],
        config.model.max_length,
        accelerator,
    )
    loader = accelerator.prepare(
        make_loader(tokenized, backbone.tokenizer, config.train.eval_batch_size, shuffle=False)
    )
    logits = predict_logits(model, loader, accelerator)
    preds = [labels[i] for i in logits.argmax(-1).tolist()]
    result = score(preds, refs, old_intents)
    if updated_intents:
        result.update(group_accuracy(result, updated_intents, "updated"))
    result["data"] = eval_data.origin
    return result


def _calibrate(
    model: IntentModel,
    labels: list[str],
    calibration: dict[str, list[str]],
    oos: list[str],
    replay: dict[str, list[str]],
    backbone: Backbone,
    accelerator: Accelerator,
    config: ReleaseConfig,
    bank_pooled: torch.Tensor | None = None,
) -> tuple[dict[str, Any] | None, torch.Tensor | None]:
    """Score the calibration utterances with the trained `model`.

    Args:
        bank_pooled: `model`'s pooled embeddings of the exemplar bank's utterances (the
            `replay` memory in head-row order), when already known: those utterances then skip
            the forward pass.

    Returns:
        The manifest's ``oos`` record, and the exemplar bank to store with the release (the
        pooled features of the `replay` memory, see `intent_ci.calibration.make_bank`) when
        the score reads features; ``(None, None)`` with out-of-scope detection off.
    """
    if not config.oos.enabled:
        return None, None
    rows = calibration_rows(calibration, labels)
    bank_texts, without = exemplar_texts(config.oos.score, replay, labels)
    bank = None
    if bank_texts and bank_pooled is not None:
        if len(bank_pooled) != len(bank_texts):
            raise IntentCIError(
                f"internal: {len(bank_pooled)} bank embeddings for {len(bank_texts)} exemplars"
            )
        bank, bank_texts = make_bank(bank_pooled), []
    texts = [t for t, _ in rows] + list(oos)
    logits, features = torch.empty(0, len(labels)), None
    if texts or bank_texts:
        index = {label: i for i, label in enumerate(labels)}
        targets = [index[i] for _, i in rows] + [0] * (len(oos) + len(bank_texts))
        tokenized = tokenize(
            backbone.tokenizer, texts + bank_texts, targets, config.model.max_length, accelerator
        )
        loader = accelerator.prepare(
            make_loader(tokenized, backbone.tokenizer, config.train.eval_batch_size, shuffle=False)
        )
        if bank_texts or bank is not None:
            logits, features = predict_logits_and_pooled(
                model, loader, accelerator, desc="calibration", leave=True
            )
            if bank_texts:
                bank = make_bank(features[len(texts) :])
                logits, features = logits[: len(texts)], features[: len(texts)]
        else:
            logits = predict_logits(model, loader, accelerator, desc="calibration", leave=True)
    if bank is not None and features is None:
        features = torch.empty(0, bank.shape[-1])
    record = calibrate_release_scores(
        logits,
        features,
        len(rows),
        bank,
        config.oos,
        intents=sum(1 for i in labels if calibration.get(i)),
        without_exemplars=without,
    )
    return record, (bank if "bank" in record else None)


def _write_release(
    registry: Registry,
    accelerator: Accelerator,
    *,
    model: IntentModel,
    labels: list[str],
    new_intents: list[str],
    parent: str | None,
    parent_intents: list[str],
    replay: dict[str, list[str]],
    config: ReleaseConfig,
    backbone: Backbone,
    metrics: dict[str, Any],
    expect_latest: str | None,
    calibration: tuple[dict[str, list[str]], list[str]] | None = None,
    oos: dict[str, Any] | None = None,
    bank: torch.Tensor | None = None,
    changes: dict[str, Any] | None = None,
) -> str:
    """Main process stages and commits the release; every rank gets its id back.

    Args:
        expect_latest: ``LATEST`` when the job started; see `Registry.commit`.
        changes: what a release made from a parent changed beyond new intents
            (``updated_intents``, ``corrections``, ``memory_changes``), stored in the manifest.

    Raises:
        LatestMovedError: on every rank, when another run moved ``LATEST`` meanwhile (the
            release is written, ``LATEST`` stays).
    """
    # [release id, LATEST (when it did not move), why it did not move]
    release: list[str | None] = [None, None, None]
    accelerator.wait_for_everyone()
    # None for DDP and single-process runs (FSDP is refused): the model is whole on every rank.
    # Were its weights sharded (DTensors), every rank would gather them here for the main process.
    state = full_state_dict(model)
    if accelerator.is_main_process:
        manifest = {
            "parent": parent,
            "intents": labels,
            "new_intents": new_intents,
            "parent_intents": parent_intents,
            **(changes or {}),
            "backbone": {
                "name": backbone.name,
                "revision": backbone.revision,
                "fingerprint": backbone.fingerprint,
                "pooling": backbone.pooling,
                "model_type": backbone.encoder.config.model_type,
                "hidden_size": backbone.encoder.config.hidden_size,
            },
            "config": config.to_dict(),
            "metrics": metrics,
            "replay": {
                "intents": len(replay),
                "exemplars": sum(len(v) for v in replay.values()),
                "bytes_per_intent": round(memory_bytes_per_intent(replay), 1),
            },
            "training": {
                "processes": accelerator.num_processes,
                "device": str(accelerator.device.type),
                "mixed_precision": str(accelerator.mixed_precision),
            },
            "versions": library_versions(),
        }
        if oos is not None:
            manifest["oos"] = oos
        try:
            with registry.stage() as staging:
                save_model_files(
                    model,
                    labels,
                    replay,
                    staging,
                    state,
                    model_config=config.model,
                    model_type=backbone.encoder.config.model_type,
                    calibration=calibration,
                    bank=bank,
                )
                release[0] = registry.commit(staging, manifest, expect_latest=expect_latest)
            logger.info("wrote release %s to %s", release[0], registry.root)
        except LatestMovedError as err:
            release[:] = [err.release, err.latest, str(err)]
    if accelerator.num_processes > 1:
        broadcast_object_list(release, from_process=0)
    if release[0] is None:
        raise IntentCIError("the main process did not report a release id")
    if release[2] is not None:
        raise LatestMovedError(release[0], release[1], release[2])
    return release[0]


def init_release(
    data: DataSource,
    registry: str | Path | Registry = "adapters",
    config: ReleaseConfig | None = None,
    *,
    eval_data: DataSource | None = None,
) -> str:
    """Train the first release of a registry with cross-entropy; return its id (``v1``).

    Raises:
        IntentCIError: for bad data or config (before any training), or a non-empty registry.
    """
    config = config or ReleaseConfig()
    registry = _registry(registry)
    expect_latest = registry.latest_or_none()
    if registry.releases():
        raise IntentCIError(
            f"registry {registry.root} already has releases ({', '.join(registry.releases())}); "
            "use `intent-ci add-intent` to extend it, or --registry for a new one"
        )
    all_data = _as_data(data, config)
    oos_texts = all_data.oos_texts()
    train_data = all_data.in_scope()
    evaluation = _as_data(eval_data, config) if eval_data is not None else None
    labels = train_data.intents
    if not labels:
        raise IntentCIError(
            f"{all_data.origin}: every row is labelled 'oos' (out of scope); a release needs "
            "at least one intent"
        )
    if evaluation is not None:
        check_known_intents(evaluation, labels, "being trained")
    started = time.perf_counter()
    accelerator = make_accelerator(config)
    set_seed(config.train.seed)
    if accelerator.is_main_process:
        registry.clean_stale_staging()

    backbone = load_backbone(config.model)
    check_max_length(backbone, config.model)
    if config.model.lora_target_modules is None:
        # Record the resolved targets, so the release says what it trained and later changes to
        # the defaults cannot change what its manifest means.
        targets = default_lora_targets(backbone.encoder.config.model_type)
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, lora_target_modules=targets)
        )
    encoder = attach_lora(backbone.encoder, config.model)
    head = build_head(
        config.model, backbone.encoder.config.hidden_size, len(labels), backbone.pooling
    )
    model = IntentModel(encoder, head, backbone.pooling)
    # Calibration utterances are held out of training (and of the replay memory, which is
    # trained on by every later release); the threshold is set on them after training.
    all_texts, all_intents = train_data.dataset[TEXT], train_data.dataset[INTENT]
    train_rows, held_rows = holdout_split(
        all_texts, all_intents, config.oos, seed=str(config.train.seed)
    )
    texts = [all_texts[r] for r in train_rows]
    intents = [all_intents[r] for r in train_rows]
    calibration: dict[str, list[str]] = {}
    for r in held_rows:
        calibration.setdefault(all_intents[r], []).append(all_texts[r])
    # Outlier exposure trains on most `oos` rows; the held-back rest measures the recall.
    outliers: list[str] = []
    if config.train.outlier_weight > 0 and oos_texts:
        oos_train, oos_held = holdout_split(
            oos_texts, [OOS_LABEL] * len(oos_texts), config.oos, seed=str(config.train.seed)
        )
        outliers = [oos_texts[r] for r in oos_train]
        oos_texts = [oos_texts[r] for r in oos_held]
    _preflight(
        registry,
        accelerator,
        model,
        config,
        backbone,
        rows_to_add=0,
        # Replay memory and calibration set together hold at most every utterance given.
        replay_texts=list(all_texts) + oos_texts,
        labels=labels,
    )

    index = {label: i for i, label in enumerate(labels)}
    targets = [index[i] for i in intents]
    tokenized = tokenize(backbone.tokenizer, texts, targets, config.model.max_length, accelerator)
    train_set = tokenized
    if outliers:
        train_set = tokenize(
            backbone.tokenizer,
            texts + outliers,
            targets + [OUTLIER_LABEL] * len(outliers),
            config.model.max_length,
            accelerator,
        )

    # One forward pass before training gives both the cosine head's starting rows and the
    # replay exemplars (LoRA's B matrices are zero, so this is the frozen encoder's view). The
    # rows are prototypes of the head's features (through the dense layer, which starts as the
    # identity: `model.head_dense_init`); exemplars are herded on the pooled embeddings, which
    # do not depend on how the head was initialised. Without a dense layer the two are equal.
    compute_started = time.perf_counter()
    start = _feature_pass(model, tokenized, backbone, accelerator, config)
    if config.model.head == "cosine":
        with torch.no_grad():
            model.head.out_proj.weight.copy_(
                class_prototypes(start.features, torch.tensor(targets), len(labels))
            )
    trained_exemplars = config.replay.exemplar_features == "trained"
    if not trained_exemplars:
        replay = select_exemplars(
            texts,
            intents,
            start.pooled,
            config.replay.per_intent,
            config.replay.selection,
            config.train.seed,
        )

    if not config.train.lora:
        model.encoder.requires_grad_(False)
    judging = config.fallback.enabled and config.train.lora and bool(held_rows)
    if config.fallback.enabled and not judging:
        logger.warning(
            "fallback.enabled is set but nothing will be compared: %s",
            "train.lora is false, so the release is the head alone already"
            if not config.train.lora
            else "there are no calibration utterances to judge on (they need oos.enabled and "
            "oos.holdout_share and oos.holdout_max_per_intent above 0)",
        )
    if judging:
        start_lora, start_head = lora_state(model), copy.deepcopy(model.head)
    model, stats = train(model, train_set, backbone.tokenizer, accelerator, config.train)
    fallback_record, fallback_examples = None, 0
    if judging:
        fallback_record, fallback_examples, config = fall_back_if_better(
            model,
            start_lora,
            start_head,
            start.pooled,
            targets,
            [(all_texts[r], index[all_intents[r]]) for r in held_rows],
            backbone.tokenizer,
            accelerator,
            config,
        )
    if trained_exemplars:
        replay = select_exemplars(
            texts,
            intents,
            _feature_pass(model, tokenized, backbone, accelerator, config).pooled,
            config.replay.per_intent,
            config.replay.selection,
            config.train.seed,
        )
    oos, bank = _calibrate(
        model, labels, calibration, oos_texts, replay, backbone, accelerator, config
    )
    metrics: dict[str, Any] = {
        "train": dataclasses.asdict(stats),
        "train_examples": len(texts),
        "outlier_examples": len(outliers),
        "calibration_examples": len(held_rows),
        # The feature pass before training, with `replay.exemplar_features: trained` the one
        # after it, and the fallback's two passes over the calibration utterances.
        "forward_only_examples": len(texts) * (2 if trained_exemplars else 1) + fallback_examples,
        # Fine-tuned against the head alone on the calibration utterances (intent_ci.fallback).
        "fallback": fallback_record,
        # Feature pass, exemplar choice and training (loading and writing excluded).
        "compute_s": round(time.perf_counter() - compute_started, 2),
        "eval": _evaluate(model, labels, evaluation, labels, backbone, accelerator, config),
    }
    metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    return _write_release(
        registry,
        accelerator,
        model=model,
        labels=labels,
        new_intents=labels,
        parent=None,
        parent_intents=[],
        replay=replay,
        config=config,
        backbone=backbone,
        metrics=metrics,
        expect_latest=expect_latest,
        calibration=(calibration, oos_texts) if oos is not None else None,
        oos=oos,
        bank=bank,
    )


def resolve_add_config(
    parent_config: ReleaseConfig, overrides: dict[str, Any] | None, source: str
) -> ReleaseConfig:
    """The parent's config with `overrides` applied; the model section is fixed by the base
    release, and the fallback section is `init`'s alone.

    Raises:
        IntentCIError: if the overrides change any `model.*` or `fallback.*` field.
    """
    config = apply_overrides(parent_config, overrides or {}, source=source)
    fixed = {
        "model": "cannot change in a child release (add-intent, update); the backbone, pooling, "
        "head and LoRA shape are fixed by the base release (train a new base release to change "
        "them)",
        "fallback": "has no effect in a child release (add-intent, update): the comparison with "
        "the head alone is `init`'s; remove the `fallback` section",
    }
    for section, why in fixed.items():
        mine, parents = getattr(config, section), getattr(parent_config, section)
        changed = [
            f.name
            for f in dataclasses.fields(mine)
            if getattr(mine, f.name) != getattr(parents, f.name)
        ]
        if changed:
            raise IntentCIError(f"{source}: `{section}.{changed[0]}` {why}")
    return config


def add_intents(
    data: DataSource,
    registry: str | Path | Registry = "adapters",
    parent: str = "latest",
    *,
    overrides: dict[str, Any] | None = None,
    overrides_source: str = "overrides",
    eval_data: DataSource | None = None,
) -> str:
    """Train a release that adds the intents in `data` to `parent`; return the new release id.

    The student starts as the parent (its LoRA weights and head), the head is widened with
    the old rows copied exactly, and training mixes the new examples with the parent's replay
    memory under cross-entropy plus distillation from the frozen parent.

    ``LATEST`` moves to the new release only if it still points where it did when the run
    started; otherwise the release is written and `LatestMovedError` says which run moved it.

    Raises:
        IntentCIError: for bad data, an intent the parent already has, or a bad config,
            all before any training.
        LatestMovedError: when another run moved ``LATEST`` while this one trained.
    """
    return _child_release(
        data,
        registry,
        parent,
        overrides=overrides,
        overrides_source=overrides_source,
        eval_data=eval_data,
        updates=False,
    )


def update_release(
    data: DataSource,
    registry: str | Path | Registry = "adapters",
    parent: str = "latest",
    *,
    overrides: dict[str, Any] | None = None,
    overrides_source: str = "overrides",
    eval_data: DataSource | None = None,
) -> str:
    """Train a release that teaches `parent` the rows of `data`; return the new release id.

    `data` may mix new intents (added as by :func:`add_intents`), more examples of intents the
    parent has, and corrections: utterances the parent's replay memory files under another
    intent, or that the parent predicts as another intent. With ``train.update_mode: head``
    (the default) the head alone trains, on the parent's pooled embeddings of the file's rows
    and of its whole replay memory, and the encoder stays the parent's; with ``lora`` it is the
    same job as :func:`add_intents`. Either way distillation skips the corrected rows and the
    rows of updated intents (the parent's answer there is what is being changed); the head rows
    of updated intents train; and updated intents re-choose their replay memory over their old
    exemplars plus the new rows, with corrected utterances moved to their new intent. The
    manifest lists ``updated_intents``, ``new_intents``, ``corrections`` and ``memory_changes``,
    and ``metrics.update_mode``.

    Raises:
        IntentCIError: for bad data (the same utterance under two intents, a correction to the
            intent an utterance already has, an empty file), an unknown parent, or a bad config,
            all before any training.
    """
    return _child_release(
        data,
        registry,
        parent,
        overrides=overrides,
        overrides_source=overrides_source,
        eval_data=eval_data,
        updates=True,
    )


def _child_distill(config: ReleaseConfig, updates: bool) -> DistillConfig:
    """The distillation settings a child release trains with: `add-intent` distils at
    `distill.weight`; an `update` at its own weights (`distill.update_head_weight` with the head
    alone, `distill.update_weight` with LoRA), where they are set."""
    distill = config.distill
    head_mode = updates and config.train.update_mode == "head"
    if head_mode and distill.update_head_weight is not None:
        return dataclasses.replace(distill, weight=distill.update_head_weight)
    if updates and not head_mode and distill.update_weight is not None:
        return dataclasses.replace(distill, weight=distill.update_weight)
    return distill


def _child_release(
    data: DataSource,
    registry: str | Path | Registry,
    parent: str,
    *,
    overrides: dict[str, Any] | None,
    overrides_source: str,
    eval_data: DataSource | None,
    updates: bool,
) -> str:
    """The one job behind `add-intent` and `update`; `updates` allows intents the parent has."""
    registry = _registry(registry)
    # LATEST as this run found it: the commit moves LATEST only if no other run moved it since
    # (no lost updates). `latest` is read once, so the parent and this check agree.
    if parent == "latest":
        parent = expect_latest = registry.resolve("latest")
    else:
        expect_latest = registry.latest_or_none()
    parent_release = load_release(registry, parent)
    config = resolve_add_config(parent_release.config, overrides, overrides_source)
    if config.replay.enabled and REPLAY_FILE not in parent_release.manifest["files"]:
        raise IntentCIError(
            f"release {parent_release.name} has no replay memory (it was pushed to the Hub with "
            "--no-replay), so its old intents have no exemplars to train on; set `replay.enabled: "
            "false` and a distillation weight (`distill.weight: 3.0`, the recipe measured with "
            "distillation) in --config to rely on distillation alone, or train from a release "
            "that has its replay.json"
        )
    if config.distill.ewc_weight > 0 and not config.replay.enabled:
        raise IntentCIError(EWC_NEEDS_REPLAY)
    if updates and config.train.update_mode == "head" and config.train.head_lr == 0:
        raise IntentCIError(
            f"{overrides_source}: `train.head_lr` is 0, but with `train.update_mode: head` the "
            "head is all an update trains; give it a learning rate > 0 (default 0.01)"
        )
    distill = _child_distill(config, updates)
    holds = distill.enabled and (
        distill.weight > 0 or distill.feature_weight > 0 or distill.l2_weight > 0
    )
    if not config.replay.enabled and not holds:
        logger.warning(
            "replay is off and so is distillation (distill.weight %g): nothing in training holds "
            "the old intents, so the release learns the file's rows alone and will forget the "
            "rest; set `distill.weight` (3.0) or keep `replay.enabled: true`",
            distill.weight,
        )
    old_labels = list(parent_release.labels)
    if updates:
        all_new = (
            data
            if isinstance(data, IntentData)
            else read_examples(data, config.data, known_intents=old_labels)
        )
        check_has_intents(all_new, "the intents' (existing or new)")
        new_data = all_new.in_scope()
        confirmed = confirmations(
            new_data.dataset[TEXT], new_data.dataset[INTENT], parent_release.replay
        )
        if confirmed and all_new.reviewed:
            # A reviewer confirming the release's answer on an utterance it already stores
            # teaches nothing; in reviewed traffic that is expected, so the row is skipped.
            logger.warning(
                "%s: skipped %d reviewed row(s) whose utterance release %s already stores "
                "under that intent (nothing to learn)",
                all_new.origin,
                len(confirmed),
                parent_release.name,
            )
            drop = set(confirmed)
            keep = [r for r in range(len(new_data)) if r not in drop]
            new_data = IntentData(new_data.dataset.select(keep), new_data.origin, True)
            if not len(new_data):
                raise IntentCIError(
                    f"{all_new.origin}: every reviewed row labels an utterance release "
                    f"{parent_release.name} already stores under that intent; nothing to update"
                )
        elif confirmed:
            check_relabels(
                new_data.dataset[TEXT],
                new_data.dataset[INTENT],
                new_data.dataset[SOURCE],
                parent_release.replay,
                parent_release.name,
            )
    else:
        all_new = _as_data(data, config)
        check_new_intents(all_new, old_labels, parent_release.name)
        new_data = all_new.in_scope()
    old_set = set(old_labels)
    new_labels = [i for i in new_data.intents if i not in old_set]
    updated = [i for i in old_labels if i in set(new_data.intents)]
    labels = old_labels + new_labels
    evaluation = _as_data(eval_data, config) if eval_data is not None else None
    if evaluation is not None:
        check_known_intents(evaluation, labels, "being trained")

    started = time.perf_counter()
    accelerator = make_accelerator(config)
    set_seed(config.train.seed)
    if accelerator.is_main_process:
        registry.clean_stale_staging()
    backbone = parent_release.backbone
    # The parent's model is the frozen teacher until its soft labels are computed, then the
    # student, trained in place.
    model = parent_release.model.eval()
    all_texts, all_intents = new_data.dataset[TEXT], new_data.dataset[INTENT]
    all_sources = new_data.dataset[SOURCE]
    # Calibration utterances are held out of the new intents' rows only: an updated intent keeps
    # the parent's calibration set and trains on every row it is given, and a correction is
    # always trained on.
    stored_keys = set(memory_index(parent_release.replay))
    eligible = [
        r
        for r, (text, intent) in enumerate(zip(all_texts, all_intents, strict=True))
        if intent not in old_set and normalise(text) not in stored_keys
    ]
    _, held = holdout_split(
        [all_texts[r] for r in eligible],
        [all_intents[r] for r in eligible],
        config.oos,
        seed=f"{config.train.seed}-{parent_release.name}",
    )
    held_rows = [eligible[j] for j in held]
    train_rows = [r for r in range(len(all_texts)) if r not in set(held_rows)]
    new_texts = [all_texts[r] for r in train_rows]
    new_intents = [all_intents[r] for r in train_rows]
    new_sources = [all_sources[r] for r in train_rows]
    # The parent's calibration utterances were never trained on by the parent, and the child
    # trains only on its new rows and the parent's replay memory (drawn from training rows), so
    # they stay valid: the child's calibration set extends the parent's, less any utterance the
    # child now trains on.
    parent_calibration, parent_oos = parent_release.calibration or ({}, [])
    given = {normalise(t) for t in all_texts}
    calibration = {
        i: [t for t in parent_calibration[i] if normalise(t) not in given]
        for i in old_labels
        if i in parent_calibration
    }
    for r in held_rows:
        calibration.setdefault(all_intents[r], []).append(all_texts[r])
    oos_texts = list(dict.fromkeys([*parent_oos, *all_new.oos_texts()]))
    if config.oos.enabled and parent_release.calibration is None:
        logger.warning(
            "release %s has no calibration utterances (made before out-of-scope detection, or "
            "pulled with --no-replay); %s is calibrated on the new intents' utterances only",
            parent_release.name,
            "the new release",
        )
    _preflight(
        registry,
        accelerator,
        model,
        config,
        backbone,
        rows_to_add=len(new_labels),
        # Replay memory and calibration set together hold at most all of these.
        replay_texts=[t for ts in parent_release.replay.values() for t in ts]
        + list(all_texts)
        + [t for ts in calibration.values() for t in ts]
        + oos_texts,
        labels=labels,
    )

    index = {label: i for i, label in enumerate(labels)}
    new_targets = [index[i] for i in new_intents]
    # Updated intents re-choose their memory over their old exemplars plus the new rows, so
    # their old exemplars go through the feature pass too, after the file's rows.
    stored = [(t, i) for i in updated for t in parent_release.replay.get(i, [])]
    compute_started = time.perf_counter()
    tokenized_new = tokenize(
        backbone.tokenizer,
        list(new_texts) + [t for t, _ in stored],
        new_targets + [index[i] for _, i in stored],
        config.model.max_length,
        accelerator,
    )

    # The teacher's features of the new utterances start the new head rows (prototypes),
    # give the parent's answers (neighbours, corrections) and choose the replay exemplars.
    parent_pass = _feature_pass(model, tokenized_new, backbone, accelerator, config)
    features = parent_pass.features[: len(new_texts)]
    rows = None
    if config.model.head == "cosine" and new_labels:
        fresh = [j for j, t in enumerate(new_targets) if t >= len(old_labels)]
        local = torch.tensor([new_targets[j] - len(old_labels) for j in fresh])
        rows = class_prototypes(features[fresh], local, len(new_labels))

    with torch.no_grad():
        head_device = model.head.out_proj.weight.device
        parent_logits = model.head.classify(features.to(head_device)).float().cpu()
    parent_says = [old_labels[i] for i in parent_logits.argmax(-1).tolist()]
    corrections = (
        find_corrections(
            list(new_texts),
            list(new_intents),
            new_sources,
            parent_release.replay,
            parent_says,
            old_labels,
        )
        if updates
        else []
    )
    for c in corrections:
        logger.info(
            "correction %s: %r %s -> %s (parent's %s)",
            c.source,
            c.text,
            c.previous,
            c.intent,
            "memory" if c.evidence == FROM_MEMORY else "prediction",
        )
    memory = without_moved(parent_release.replay, corrections)
    check_not_emptied(parent_release.replay, memory, updated, corrections, parent_release.name)

    # Neighbours: the old intents the parent takes each new or updated intent's utterances
    # for. They are the old intents the release most risks confusing with the ones it
    # changes, so they replay their whole memory (and, with `train.neighbour_rows`, their
    # head rows train). An intent that gives up a corrected utterance is one too.
    neighbours = {
        intent: {old: share for old, share in olds.items() if old != intent}
        for intent, olds in find_neighbours(
            parent_says, list(new_intents), config.replay.neighbour_share
        ).items()
    }
    neighbour_set = {old for per_new in neighbours.values() for old in per_new}
    neighbour_set |= {c.previous for c in corrections}
    # Updated intents replay their whole (old) memory beside their new rows and train their
    # head rows: they are meant to move.
    whole = neighbour_set | set(updated)
    # `update_mode: head`: the head alone trains, on embeddings the encoder gives whatever the
    # head does, so every exemplar replays (its embedding costs no training pass).
    head_mode = updates and config.train.update_mode == "head"
    if head_mode and new_labels and accelerator.is_main_process:
        logger.warning(
            "the update's new intents (%s) are learned by the head alone (train.update_mode: "
            "head), on the parent's embeddings; `add-intent`, or `update` with "
            "train.update_mode: lora, also adapts the encoder to them",
            ", ".join(new_labels[:3])
            + (f" and {len(new_labels) - 3} more" if len(new_labels) > 3 else ""),
        )

    if not config.replay.enabled:
        replayed = {}
    elif head_mode:
        replayed = memory
    else:
        replayed = draw_replay(
            memory,
            old_labels,
            replay_per_intent(config.replay, len(new_texts), len(old_labels)),
            seed=f"{config.train.seed}-{parent_release.name}",
            whole=whole,
        )
    replay_texts = [t for intent in old_labels for t in replayed.get(intent, [])]
    replay_targets = [index[intent] for intent in old_labels for _ in replayed.get(intent, [])]
    texts = list(new_texts) + replay_texts
    targets = new_targets + replay_targets

    use_kd = distill.enabled and distill.weight > 0
    # LUCIR's adaptive weight: adding fewer intents to more holds the parent harder (the
    # feature term always, the L2/EWC anchor with `distill.anchor_adaptive`).
    adaptive = math.sqrt(len(old_labels) / (len(new_labels) + len(updated)))
    soft_labels = teacher_pooled = tokenized = None
    feature_weight = 0.0
    memory_forward = 0
    if head_mode:
        embeddings, memory_forward = _parent_embeddings(
            model,
            parent_release,
            list(zip(new_texts, new_intents, strict=True)) + stored,
            parent_pass.pooled,
            memory,
            backbone,
            accelerator,
            config,
        )
        train_pooled = torch.stack(
            [embeddings[(i, t)] for t, i in zip(new_texts, new_intents, strict=True)]
            + [embeddings[(i, t)] for i in old_labels for t in replayed.get(i, [])]
        ).to(model.head.out_proj.weight.device, torch.float32)
        if use_kd:
            with torch.no_grad():
                soft_labels = model.head.eval()(train_pooled).float()
    else:
        tokenized = tokenize(
            backbone.tokenizer, texts, targets, config.model.max_length, accelerator
        )
        # The parent's soft labels for every training row, computed once: the teacher is
        # frozen and deterministic (eval mode), so this equals scoring each batch on the fly,
        # epochs times cheaper. The file's rows (the first ones) were scored by the parent's
        # feature pass already; only the replay rows get a teacher pass.
        feature_weight = config.distill.feature_weight * adaptive if config.distill.enabled else 0.0
        if use_kd or feature_weight > 0:
            soft_labels, teacher_pooled = _teacher_targets(
                model,
                (parent_logits, parent_pass.pooled[: len(new_texts)]),
                tokenized,
                backbone,
                accelerator,
                config,
            )
    # The teacher speaks for the replay rows and the new intents' rows, not for corrected
    # rows or rows of updated intents: there the parent's answer is what is being changed.
    # Without `distill.updated_exemplars` it is silent on the updated intents' replayed
    # exemplars too.
    changing = set(updated)
    silenced = {c.row for c in corrections}
    silenced |= {j for j, intent in enumerate(new_intents) if intent in changing}
    # With the head alone it is silent there always: it would hold the head rows that move.
    if not config.distill.updated_exemplars or head_mode:
        rows_of = {index[intent] for intent in changing}
        silenced |= {len(new_texts) + k for k, t in enumerate(replay_targets) if t in rows_of}
    teacher_rows = None
    if silenced:
        teacher_rows = torch.ones(len(texts), dtype=torch.bool)
        teacher_rows[sorted(silenced)] = False

    # The student: the parent's LoRA weights and its head, widened with the old rows copied
    # exactly. Surgery happens before the optimizer and `prepare` exist.
    if new_labels:
        model.head = widen_head(model.head, len(new_labels), rows)
    # The rows of the old intents the release does not change: neither updated nor (with
    # `train.neighbour_rows`) a neighbour of a changed intent.
    unchanged_rows = [
        i
        for i, label in enumerate(old_labels)
        if label not in updated and not (config.train.neighbour_rows and label in neighbour_set)
    ]
    if head_mode:
        # The encoder stays the parent's; every head row trains (each intent's exemplars are
        # in the batch), or with `train.update_head_rows: changed` only the changed intents'
        # rows, which leaves every other intent's logit the parent's. The dense layer trains
        # only without `train.freeze_dense`.
        model.head, stats = fit_head(
            model.head,
            train_pooled,
            targets,
            config.train,
            config.train.update_head_epochs,
            lr=config.train.head_lr,
            teacher_logits=soft_labels,
            distill=distill if use_kd else None,
            teacher_rows=teacher_rows,
            train_dense=not config.train.freeze_dense,
            frozen_rows=unchanged_rows if config.train.update_head_rows == "changed" else None,
            main_process=accelerator.is_main_process,
        )
    else:
        # LoRA trains; so do the head's rows (old ones restored by the row freezer) and,
        # unless `train.freeze_dense`, its dense layer.
        hold_parent_weights(model, config.train)
        anchor = _parameter_anchor(
            model,
            tokenized,
            range(len(new_texts), len(texts)),
            backbone,
            accelerator,
            config,
            adaptive,
        )
        scale = config.train.add_intent_lr_scale
        train_cfg = dataclasses.replace(
            config.train,
            lr=config.train.lr * scale,
            head_lr=config.train.head_lr * scale,
            epochs=config.train.update_epochs
            if updates and config.train.update_epochs is not None
            else config.train.add_intent_epochs,
        )
        model, stats = train(
            model,
            tokenized,
            backbone.tokenizer,
            accelerator,
            train_cfg,
            soft_labels=soft_labels if use_kd else None,
            distill=distill,
            teacher_pooled=teacher_pooled,
            feature_weight=feature_weight,
            frozen_rows=unchanged_rows if config.train.freeze_old_rows else None,
            teacher_rows=teacher_rows,
            anchor=anchor,
        )
    # Memory of every intent in the file, chosen over its rows plus, for an updated intent, the
    # old exemplars it keeps, by herding on pooled embeddings (the teacher's pass, or with
    # `replay.exemplar_features: trained` the trained student's); corrected utterances first.
    keeps = [j for j, (t, i) in enumerate(stored) if t in set(memory.get(i, []))]
    kept = [stored[j] for j in keeps]
    pool = list(range(len(new_texts))) + [len(new_texts) + j for j in keeps]
    # With the head alone the encoder is the parent's, so its embeddings are the trained ones.
    trained_exemplars = config.replay.exemplar_features == "trained" and not head_mode
    exemplar_pass = (
        _feature_pass(model, tokenized_new, backbone, accelerator, config)
        if trained_exemplars
        else parent_pass
    )
    new_memory = select_exemplars(
        list(new_texts) + [t for t, _ in kept],
        list(new_intents) + [i for _, i in kept],
        exemplar_pass.pooled[pool],
        config.replay.per_intent,
        config.replay.selection,
        config.train.seed,
        forced=frozenset(c.row for c in corrections),
    )
    replay = {**memory, **new_memory}
    bank_pooled = None
    if head_mode and exemplar_texts(config.oos.score, replay, labels)[0]:
        # Every exemplar's embedding is known and the encoder did not move: no bank pass.
        bank_pooled = torch.stack([embeddings[key] for key in bank_rows(replay, labels)])
    oos, bank = _calibrate(
        model, labels, calibration, oos_texts, replay, backbone, accelerator, config, bank_pooled
    )
    if oos is not None and parent_release.calibration is None:
        note = (
            f"parent {parent_release.name} has no calibration utterances; calibrated on the new "
            "intents' held-out utterances only"
        )
        oos["note"] = f"{note}; {oos['note']}" if oos.get("note") else note
    compute_s = time.perf_counter() - compute_started
    distilled = 0 if not use_kd else len(texts) if teacher_rows is None else int(teacher_rows.sum())
    metrics: dict[str, Any] = {
        "train": dataclasses.asdict(stats),
        "train_examples": len(texts),
        "new_examples": len(new_texts),
        "calibration_examples": len(held_rows),
        "replay_examples": len(replay_texts),
        # Training rows the teacher speaks for (distillation), after the rows it is silent on.
        "distilled_examples": distilled,
        # Forward passes without a backward: the feature pass over the new utterances
        # (prototypes, the parent's answers, the teacher on those rows and exemplar choice;
        # twice with `replay.exemplar_features: trained`) and the teacher's pass over the
        # replayed rows; with `update_mode: head` instead the pass over the memory exemplars
        # whose embedding the parent's bank does not give.
        "forward_only_examples": (len(new_texts) + len(stored)) * (2 if trained_exemplars else 1)
        + (len(replay_texts) if not head_mode and (use_kd or feature_weight > 0) else 0)
        + memory_forward,
        # Forward and backward passes over the replayed rows that estimate EWC's Fisher.
        "fisher_examples": len(replay_texts)
        if config.distill.ewc_weight > 0 and not head_mode
        else 0,
        "feature_weight": round(feature_weight, 4),
        # `update`: lora (training passes go through the encoder) or head (the head alone, on
        # fixed embeddings: `train.examples_trained` rows through the head, none through the
        # encoder).
        **({"update_mode": config.train.update_mode} if updates else {}),
        # Old intents the parent predicted for each new intent's utterances (share >=
        # replay.neighbour_share): the likeliest confusions to check before deploying.
        "neighbours": neighbours,
        # Feature pass, teacher pass, replay draw, training and exemplar choice: what adding
        # intents costs beyond loading the parent and writing the release.
        "compute_s": round(compute_s, 2),
        "eval": _evaluate(
            model, labels, evaluation, old_labels, backbone, accelerator, config, updated
        ),
    }
    metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    return _write_release(
        registry,
        accelerator,
        model=model,
        labels=labels,
        new_intents=new_labels,
        parent=parent_release.name,
        parent_intents=old_labels,
        replay=replay,
        config=config,
        backbone=backbone,
        metrics=metrics,
        expect_latest=expect_latest,
        calibration=(calibration, oos_texts) if oos is not None else None,
        oos=oos,
        bank=bank,
        changes={
            "updated_intents": updated,
            "corrections": [c.to_dict() for c in corrections],
            "memory_changes": memory_changes(parent_release.replay, replay),
        },
    )
