"""Does fine-tuning earn its place? `init`'s comparison with the head alone on held-out rows.

A LoRA adapter is worth its cost only where it beats what the frozen encoder already gives. On
some data it does not: with few utterances per intent, or an encoder whose embeddings already
separate the intents, a probe on frozen embeddings scores as well or better. With
``fallback.enabled`` (off by default; docs/benchmarks.md says why), `init` fits a second
candidate, the head alone on the frozen encoder's embeddings of the same training rows
(computed once, in the feature pass `init` makes anyway), and scores both on the calibration
utterances, which neither trained on (`intent_ci.calibration.holdout_split`).
The release falls back to the frozen encoder (LoRA weights as initialised: B = 0) with the
head alone only when the head alone is better by more than chance: fine-tuning scores below the
head alone plus ``fallback.min_gain`` points, and the one-sided exact McNemar test on the rows
where exactly one candidate is right gives p at most ``fallback.significance``. A few hundred
held-out rows cannot tell a one-utterance difference from noise, and the test keeps such a tie
from deciding the release.

The head-alone fit is a probe in the release's own head: same kind (cosine or linear, with the
dense layer where there is one), same class-balanced cross-entropy, started from the same
class-mean prototypes, so a fallen-back release is an ordinary release that every command
reads. It is fitted by `intent_ci.training.fit_head`, the loop over fixed embeddings (the one
`update` uses with ``train.update_mode: head``), which shares its loss terms with
`intent_ci.training.train`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from intent_ci.config import FallbackConfig, ReleaseConfig, TrainConfig
from intent_ci.metrics.intent_regression.intent_regression import mcnemar_one_sided
from intent_ci.modeling import IntentHead, IntentModel
from intent_ci.training import fit_head, make_loader, predict_logits, tokenize

logger = logging.getLogger(__name__)

FINE_TUNED = "fine-tuned"
HEAD_ONLY = "head-only"


def lora_state(model: IntentModel) -> dict[str, torch.Tensor]:
    """A copy of the encoder's LoRA weights (what :func:`head_alone` puts back)."""
    return {
        name: p.detach().clone() for name, p in model.encoder.named_parameters() if "lora_" in name
    }


def decide(tuned_right: torch.Tensor, alone_right: torch.Tensor, cfg: FallbackConfig) -> dict:
    """The fallback's verdict from per-row correctness (bool tensors, one entry per held-back row).

    Returns:
        Both accuracies (%), the discordant row counts, the McNemar p-value and ``chosen``:
        ``HEAD_ONLY`` when fine-tuning's accuracy is below the head alone's plus `cfg.min_gain`
        points and p is at most `cfg.significance`, else ``FINE_TUNED``.
    """
    n = len(tuned_right)
    tuned = 100.0 * tuned_right.sum().item() / n
    alone = 100.0 * alone_right.sum().item() / n
    head_wins = int((alone_right & ~tuned_right).sum().item())
    tuned_wins = int((tuned_right & ~alone_right).sum().item())
    # The gate's test: rows the head alone gets right that fine-tuning breaks, against the reverse.
    p_value = mcnemar_one_sided(head_wins, tuned_wins)
    worse = tuned < alone + cfg.min_gain and p_value <= cfg.significance
    return {
        "held_back_examples": n,
        "fine_tuned_accuracy": round(tuned, 2),
        "head_only_accuracy": round(alone, 2),
        "only_head_right": head_wins,
        "only_fine_tuned_right": tuned_wins,
        "p_value": round(p_value, 6),
        "min_gain": cfg.min_gain,
        "significance": cfg.significance,
        "chosen": HEAD_ONLY if worse else FINE_TUNED,
    }


def judge(
    model: IntentModel,
    head_only: IntentHead,
    held_back: list[tuple[str, int]],
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    train_cfg: TrainConfig,
    cfg: FallbackConfig,
    max_length: int,
) -> dict[str, Any]:
    """Score the fine-tuned `model` and the frozen encoder with `head_only` on `held_back`.

    Args:
        held_back: ``(text, target row)`` of utterances neither candidate trained on.

    Returns:
        The manifest's ``metrics.fallback`` record (:func:`decide`). Judging passes every
        held-back row forward twice.
    """
    texts = [t for t, _ in held_back]
    targets = torch.tensor([y for _, y in held_back])
    tokenized = tokenize(tokenizer, texts, targets.tolist(), max_length, accelerator)
    loader = accelerator.prepare(
        make_loader(tokenized, tokenizer, train_cfg.eval_batch_size, shuffle=False)
    )
    tuned = predict_logits(model, loader, accelerator, desc="fallback").argmax(-1).cpu()
    frozen_model = IntentModel(
        model.encoder, head_only.to(model.head.out_proj.weight.device), model.pooling
    )
    with model.encoder.disable_adapter():
        alone = predict_logits(frozen_model, loader, accelerator, desc="fallback").argmax(-1).cpu()
    return decide(tuned == targets, alone == targets, cfg)


def fall_back_if_better(
    model: IntentModel,
    start_lora: dict[str, torch.Tensor],
    start_head: IntentHead,
    start_pooled: torch.Tensor,
    targets: list[int],
    held_back: list[tuple[str, int]],
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    config: ReleaseConfig,
) -> tuple[dict[str, Any], int, ReleaseConfig]:
    """Fit the head alone (`intent_ci.training.fit_head` from `start_head` on the frozen encoder's
    `start_pooled` embeddings of the training rows, labelled `targets`), :func:`judge` it
    against the fine-tuned `model`, and if it wins, make `model` the head alone (in place).

    Returns:
        The manifest's ``metrics.fallback`` record (with the seconds the fit and the judging
        took), the rows passed forward to judge, and the config to record: `config`, or with
        the head alone ``train.lora: false``, so that the line's children train the head alone.
    """
    started = time.perf_counter()
    head_only, _ = fit_head(
        start_head,
        start_pooled,
        targets,
        config.train,
        config.fallback.head_epochs,
        main_process=accelerator.is_main_process,
    )
    record = judge(
        model,
        head_only,
        held_back,
        tokenizer,
        accelerator,
        config.train,
        config.fallback,
        config.model.max_length,
    )
    record["seconds"] = round(time.perf_counter() - started, 2)
    if record["chosen"] == HEAD_ONLY:
        head_alone(model, start_lora, head_only)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, lora=False))
        if accelerator.is_main_process:
            logger.warning(
                "fine-tuning scored %.2f%% on %d held-out utterances against %.2f%% for the "
                "head alone on the frozen encoder (McNemar p = %.3g): the release is the head "
                "alone, and its line trains the head alone (train.lora: false)",
                record["fine_tuned_accuracy"],
                len(held_back),
                record["head_only_accuracy"],
                record["p_value"],
            )
    return record, 2 * len(held_back), config


def head_alone(model: IntentModel, start_lora: dict[str, torch.Tensor], head: IntentHead) -> None:
    """Turn `model` into the head-alone candidate, in place: LoRA weights back to `start_lora`
    (the adapter as initialised, whose output is the frozen encoder's) and `head` as its head."""
    params = dict(model.encoder.named_parameters())
    with torch.no_grad():
        for name, value in start_lora.items():
            params[name].copy_(value)
    model.head = head.to(model.head.out_proj.weight.device)
