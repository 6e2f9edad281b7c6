"""One training loop on Accelerate, with composable loss terms.

``loss = cross_entropy(logits, labels)
+ distill.weight * distillation(logits[:, :n_old], teacher_logits)
+ feature_weight * feature_distillation(pooled, teacher_pooled)
+ outlier_weight * outlier_exposure(logits[oos rows])
+ anchor(parameters, parent's parameters)``

`init` uses the first term (and the outlier term when it is given `oos` rows and
`train.outlier_weight` > 0); `add-intent` and `update` add the others against the parent
release's soft labels, pooled embeddings and LoRA weights (L2 or EWC, :class:`ParameterAnchor`;
`update` distils on the rows the teacher speaks for only). The parent (the teacher) is frozen
and deterministic in eval mode, so its outputs are computed once, before training, by
:func:`predict_logits_and_pooled` over the training set: every process scores its own shard,
``gather_for_metrics`` collects them, and the teacher is never passed to
``accelerator.prepare``. One teacher pass instead of one per epoch, and the teacher can be
freed before the student trains.

:func:`fit_head` is the loop over fixed pooled embeddings, with the same cross-entropy and
distillation terms, for what trains the head alone: `init`'s head-alone candidate
(`intent_ci.fallback`) and `update` with ``train.update_mode: head``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import datasets
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, get_scheduler

from intent_ci.config import DistillConfig, TrainConfig
from intent_ci.errors import IntentCIError
from intent_ci.modeling import IntentHead, IntentModel

logger = logging.getLogger(__name__)

# The label of an out-of-scope (``oos``) training row: no intent's cross-entropy, only the
# outlier-exposure term.
OUTLIER_LABEL = -1


def cross_entropy_term(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy over all intents, optionally weighted per class."""
    return F.cross_entropy(logits.float(), labels, weight=class_weights)


def outlier_exposure_term(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy from the uniform distribution over the intents, averaged over rows.

    Outlier exposure (Hendrycks et al., 2019) on out-of-scope rows: it pushes their logits
    flat, so their energy and maximum logit fall below those of in-scope utterances.
    """
    return -F.log_softmax(logits.float(), dim=-1).mean(dim=-1).mean()


def balanced_class_weights(labels: list[int], num_labels: int) -> torch.Tensor:
    """Weights that give every class present the same total weight (inverse frequency).

    In add-intent the new intents have all their examples while each old intent has only its
    few replay exemplars; unweighted cross-entropy then pulls old utterances toward the new
    intents. Balancing removes that bias toward new intents. Outlier rows
    (:data:`OUTLIER_LABEL`) are not a class and are left out.
    """
    labels = [y for y in labels if y != OUTLIER_LABEL]
    counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=num_labels).float()
    present = counts > 0
    weights = torch.zeros(num_labels)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def distillation_term(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) at `temperature` over the teacher's intents, scaled by T².

    Only the first ``teacher_logits.shape[-1]`` student columns (the old intents) take part,
    so the new intents are free while the old intents' relative scores are held (LwF).
    The T² factor keeps gradient size independent of the temperature (Hinton et al., 2015).
    """
    n_old = teacher_logits.shape[-1]
    student = F.log_softmax(student_logits[:, :n_old].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def feature_distillation_term(
    student_pooled: torch.Tensor, teacher_pooled: torch.Tensor
) -> torch.Tensor:
    """Mean of ``1 - cos(student, teacher)`` over rows: how far the embeddings have turned.

    LUCIR's less-forget constraint (Hou et al., 2019) on the pooled embeddings. Logit
    distillation holds only the old intents' relative scores on the training rows; this holds
    the embedding the old head rows are compared with, which is what LoRA moves.
    """
    return (
        1.0 - F.cosine_similarity(student_pooled.float(), teacher_pooled.float(), dim=-1)
    ).mean()


class ParameterAnchor(NamedTuple):
    """Where a child release's LoRA parameters are pulled back to, and how hard.

    ``importance[name]`` already holds the weights: ``distill.l2_weight`` (L2 to the parent)
    plus ``distill.ewc_weight`` times the diagonal Fisher information scaled to mean 1 (EWC).
    """

    values: dict[str, torch.Tensor]  # the parent's value of each anchored parameter
    importance: dict[str, torch.Tensor]


def anchor_term(model: torch.nn.Module, anchor: ParameterAnchor) -> torch.Tensor:
    """``1/2 sum importance * (theta - theta_parent)^2`` over the anchored parameters of `model`
    (unwrapped: the names are those of :class:`ParameterAnchor`)."""
    params = dict(model.named_parameters())
    total = torch.zeros((), device=next(iter(params.values())).device)
    for name, value in anchor.values.items():
        p = params[name]
        total = total + (anchor.importance[name] * (p.float() - value).square()).sum()
    return 0.5 * total


@torch.enable_grad()
def diagonal_fisher(
    model: IntentModel, loader: DataLoader, accelerator: Accelerator, names: list[str]
) -> dict[str, torch.Tensor]:
    """Diagonal (empirical) Fisher information of the parameters `names`, scaled to mean 1.

    The mean over batches of the squared gradient of the cross-entropy at the rows' labels, in
    eval mode (no dropout), as EWC implementations estimate it; each process takes its shard of
    `loader` (prepared) and the sums are reduced. `model` is unwrapped; its gradients are
    cleared afterwards.
    """
    model.eval()
    params = dict(model.named_parameters())
    sums = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in names}
    batches = torch.zeros((), device=accelerator.device)
    for batch in tqdm(loader, desc="fisher", disable=not accelerator.is_main_process, leave=False):
        model.zero_grad(set_to_none=True)
        keep = real_rows(len(batch["labels"]), accelerator)
        if not keep.any():
            continue
        logits = model(**_model_inputs(batch))
        F.cross_entropy(logits[keep].float(), batch["labels"][keep]).backward()
        for n in names:
            if params[n].grad is not None:
                sums[n] += params[n].grad.detach().float().square()
        batches += 1
    model.zero_grad(set_to_none=True)
    if accelerator.num_processes > 1:
        sums = {n: accelerator.reduce(v, reduction="sum") for n, v in sums.items()}
        batches = accelerator.reduce(batches, reduction="sum")
    fisher = {n: v / batches.clamp(min=1) for n, v in sums.items()}
    mean = torch.cat([v.flatten() for v in fisher.values()]).mean().clamp(min=1e-30)
    return {n: v / mean for n, v in fisher.items()}


def real_rows(rows: int, accelerator: Accelerator) -> torch.Tensor:
    """Mask of this process's batch rows that are real examples, not Accelerate's repeats.

    With several processes Accelerate evens out the last batch of an epoch by repeating
    examples from the start of the epoch (``even_batches``), so that every rank runs the same
    number of steps, which DDP needs. In gathered order (rank 0's rows, then rank 1's, ...) the
    first ``gradient_state.remainder`` rows of that last global batch are real: the rule
    `gather_for_metrics` applies. Training drops the repeats from the loss so every example
    counts exactly once per epoch, as in a single-process run.
    """
    keep = torch.ones(rows, dtype=torch.bool)
    state = accelerator.gradient_state
    if accelerator.num_processes > 1 and state.end_of_dataloader and state.remainder > 0:
        first = accelerator.process_index * rows
        keep = torch.arange(first, first + rows) < state.remainder
    return keep.to(accelerator.device)


class BatchLoss(NamedTuple):
    """What :func:`global_batch_loss` returns; summing a share over ranks gives the global term."""

    loss: torch.Tensor  # to backpropagate on this rank
    ce: torch.Tensor  # this rank's share of the cross-entropy term
    kd: torch.Tensor  # ... of the distillation term
    feature: torch.Tensor  # ... of the feature-distillation term
    outlier: torch.Tensor  # ... of the outlier-exposure term
    anchor: torch.Tensor  # ... of the anchor term (L2 or EWC to the parent)
    rows: int  # real rows in the global batch
    outlier_rows: int  # ... of them labelled OUTLIER_LABEL


def global_batch_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor,
    accelerator: Accelerator,
    *,
    class_weights: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    distill: DistillConfig | None = None,
    pooled: torch.Tensor | None = None,
    teacher_pooled: torch.Tensor | None = None,
    feature_weight: float = 0.0,
    teacher_rows: torch.Tensor | None = None,
    outlier_weight: float = 0.0,
    anchor: torch.Tensor | None = None,
) -> BatchLoss:
    """This process's share of the loss over the *global* batch (every rank's real rows).

    Both terms are means: cross-entropy weighted by ``class_weights[label]``, distillation per
    row (``batchmean``). Each is turned into a sum over this rank's real rows (mean x local
    denominator) and divided by the denominator summed over all ranks (one all-reduce of two
    numbers). DDP averages gradients over the N ranks, so the loss to backpropagate is N times
    that share: the averaged gradient is then exactly the gradient of the loss of the global
    batch, whatever the split, and a run on N processes with per-device batch B computes the
    same steps as one process with batch N x B. On one process this equals
    ``cross_entropy_term + distill.weight * distillation_term
    + feature_weight * feature_distillation_term
    + outlier_weight * outlier_exposure_term + anchor`` of the batch.

    Args:
        teacher_rows: boolean mask of the rows the teacher speaks for (default: all). The two
            distillation terms are means over these rows only; on the others (an ``update``'s
            corrected utterances and the new examples of the intents it updates) the parent's
            answer is the one being corrected, so it must not pull the student back.
        outlier_weight: weight of :func:`outlier_exposure_term`, a mean over the rows labelled
            :data:`OUTLIER_LABEL`; those rows take no part in the cross-entropy.
        anchor: :func:`anchor_term` of the model (already weighted). Every rank computes the
            same value; each adds 1/N of it, so that summed over ranks it counts once.

    Returns:
        a :class:`BatchLoss`: the loss to backpropagate, this rank's shares of the five terms
        (summing them over ranks gives the global batch's terms) and the global batch's real rows.
    """
    use_kd = teacher_logits is not None and distill is not None
    use_feat = feature_weight > 0 and pooled is not None and teacher_pooled is not None
    outliers = keep & (labels == OUTLIER_LABEL)
    inside = keep & ~outliers
    row_weights = inside.float()
    if class_weights is not None:
        row_weights = row_weights * class_weights[labels.clamp(min=0)]
    zero = logits.sum() * 0.0  # keeps every rank's graph connected when it has no real rows
    ce_sum, kd_sum, feat_sum, oe_sum = zero, zero, zero, zero
    taught = keep if teacher_rows is None else keep & teacher_rows
    if inside.any():
        ce_sum = (
            cross_entropy_term(logits[inside], labels[inside], class_weights) * row_weights.sum()
        )
    if outlier_weight > 0 and outliers.any():
        oe_sum = outlier_exposure_term(logits[outliers]) * outliers.sum()
    if taught.any():
        if use_kd:
            kd_sum = (
                distillation_term(logits[taught], teacher_logits[taught], distill.temperature)
                * taught.sum()
            )
        if use_feat:
            feat_sum = (
                feature_distillation_term(pooled[taught], teacher_pooled[taught]) * taught.sum()
            )
    totals = torch.stack(
        [row_weights.sum(), keep.sum().float(), taught.sum().float(), outliers.sum().float()]
    ).detach()
    if accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    ce = ce_sum / totals[0].clamp(min=1e-12)
    kd = kd_sum / totals[2].clamp(min=1e-12)
    feat = feat_sum / totals[2].clamp(min=1e-12)
    oe = oe_sum / totals[3].clamp(min=1e-12)
    share = ce
    if use_kd:
        share = share + distill.weight * kd
    if use_feat:
        share = share + feature_weight * feat
    if outlier_weight > 0:
        share = share + outlier_weight * oe
    held = zero
    if anchor is not None:
        # Every rank holds the whole term; each adds 1/N of it, so that after DDP averages the
        # N ranks' gradients of N x share, the term counts once (as the per-row terms do).
        held = anchor / accelerator.num_processes
        share = share + held
    return BatchLoss(
        share * accelerator.num_processes,
        ce,
        kd,
        feat,
        oe,
        held.detach(),
        int(totals[1].item()),
        int(totals[3].item()),
    )


@dataclass
class TrainStats:
    """What a training run did, for the manifest and the benchmarks."""

    # batches, per process
    steps: int = 0
    # updates: steps / gradient_accumulation_steps, rounded up per epoch
    optimizer_steps: int = 0
    # rows that entered the loss, over all processes, Accelerate's repeats excluded
    examples_trained: int = 0
    wall_time_s: float = 0.0
    loss_per_epoch: list[dict[str, float]] = field(default_factory=list)


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    labels: list[int],
    max_length: int,
    accelerator: Accelerator,
) -> datasets.Dataset:
    """A tokenized `datasets.Dataset` with ``labels`` and ``index`` columns (index = row number)."""
    raw = datasets.Dataset.from_dict(
        {"text": texts, "labels": labels, "index": list(range(len(texts)))}
    )
    with accelerator.main_process_first():
        encoded = raw.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
            batched=True,
            remove_columns=["text"],
            keep_in_memory=True,
        )
    encoded.set_format("torch")
    return encoded


def make_loader(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
) -> DataLoader:
    """Dynamic padding to the longest utterance in each batch (utterances are short)."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=DataCollatorWithPadding(tokenizer),
    )


def _model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k not in ("labels", "index")}


class Features(NamedTuple):
    """What :func:`compute_features` returns, every tensor in dataset row order."""

    features: torch.Tensor  # the head's input features (after the optional dense layer)
    pooled: torch.Tensor  # the pooled encoder embeddings (before the head)
    order: torch.Tensor  # the row numbers, sorted


@torch.no_grad()
def compute_features(
    model: IntentModel, loader: DataLoader, accelerator: Accelerator, *, desc: str = "features"
) -> Features:
    """Head-input features and pooled embeddings of every example, from one forward pass.

    Sharded over processes, then gathered on all ranks. Without a dense layer the two are the
    same values (the head's dropout is off in eval mode). `loader` must already be prepared;
    `model` is used as is (not wrapped).
    """
    model.eval()
    feats, pooled, indices = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_main_process, leave=False):
        emb = model.pooled(**_model_inputs(batch))
        out = model.head.project(emb)
        out, emb, idx = accelerator.gather_for_metrics((out.float(), emb.float(), batch["index"]))
        feats.append(out.cpu())
        pooled.append(emb.cpu())
        indices.append(idx.cpu())
    order = torch.cat(indices)
    # Rows back in dataset order so callers can index by row number.
    return Features(
        _in_row_order(feats, order), _in_row_order(pooled, order), torch.sort(order).values
    )


def _in_row_order(chunks: list[torch.Tensor], order: torch.Tensor) -> torch.Tensor:
    """Gathered batches put back in dataset order (`order` holds each gathered row's index)."""
    stacked = torch.cat(chunks)
    result = torch.empty_like(stacked)
    result[order] = stacked
    return result


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    *,
    desc: str = "eval",
    leave: bool = False,
) -> torch.Tensor:
    """Logits for every example in dataset order; padding duplicates dropped by gather_for_metrics.

    Args:
        desc: the progress bar's label.
        leave: keep the finished progress bar on its own line (the last pass of a job).
    """
    model.eval()
    logits, indices = [], []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_main_process, leave=leave):
        out = model(**_model_inputs(batch))
        out, idx = accelerator.gather_for_metrics((out.float(), batch["index"]))
        logits.append(out.cpu())
        indices.append(idx.cpu())
    return _in_row_order(logits, torch.cat(indices))


@torch.no_grad()
def predict_logits_and_pooled(
    model: IntentModel,
    loader: DataLoader,
    accelerator: Accelerator,
    *,
    desc: str = "teacher",
    leave: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and pooled embeddings of every example in dataset order (the teacher's pass, and
    the calibration pass of a score that reads features)."""
    model.eval()
    logits, pooled, indices = [], [], []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_main_process, leave=leave):
        out, emb = model(**_model_inputs(batch), return_pooled=True)
        out, emb, idx = accelerator.gather_for_metrics((out.float(), emb.float(), batch["index"]))
        logits.append(out.cpu())
        pooled.append(emb.cpu())
        indices.append(idx.cpu())
    order = torch.cat(indices)
    return _in_row_order(logits, order), _in_row_order(pooled, order)


def hold_parent_weights(model: IntentModel, cfg: TrainConfig) -> None:
    """Mark what a child release (add-intent, update) trains: LoRA and the head, not the rest.

    The encoder trains its LoRA weights only, and none with ``cfg.lora`` off (a line that
    `init` put on the head alone, see `intent_ci.fallback`). With `cfg.freeze_dense` the head's
    dense layer (cls pooling) is frozen as well: it feeds every intent's logit, so with it
    training the old intents' logits would move even with their rows frozen
    (:class:`_RowFreezer`). Frozen parameters stay out of the optimizer, so AdamW's weight
    decay cannot move them either.
    Call after the head is widened and before :func:`train` builds the optimizer.
    """
    for name, p in model.encoder.named_parameters():
        p.requires_grad_(cfg.lora and "lora_" in name)
    if model.head.dense is not None:
        model.head.dense.requires_grad_(not cfg.freeze_dense)


class _RowFreezer:
    """Put the given output rows (and biases) of a head back after every optimizer step.

    Restoring after the step, instead of zeroing gradients, also undoes AdamW's decoupled
    weight decay, so the frozen rows stay bit-identical to the parent's.
    """

    def __init__(self, head: torch.nn.Module, rows: list[int]) -> None:
        self.tensors = [t for t in (head.out_proj.weight, head.out_proj.bias) if t is not None]
        self.index = torch.tensor(sorted(set(rows)), dtype=torch.long)
        self.saved = [t.detach()[self.index.to(t.device)].clone() for t in self.tensors]

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in zip(self.tensors, self.saved, strict=True):
            tensor.index_copy_(0, self.index.to(tensor.device), saved.to(tensor.device))


def train(
    model: IntentModel,
    train_set: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    accelerator: Accelerator,
    cfg: TrainConfig,
    *,
    soft_labels: torch.Tensor | None = None,
    distill: DistillConfig | None = None,
    teacher_pooled: torch.Tensor | None = None,
    feature_weight: float = 0.0,
    frozen_rows: list[int] | None = None,
    teacher_rows: torch.Tensor | None = None,
    anchor: ParameterAnchor | None = None,
) -> tuple[IntentModel, TrainStats]:
    """Train LoRA and head with cross-entropy, plus distillation when soft labels are given.

    Args:
        model: the student, not yet prepared; its encoder is frozen apart from LoRA.
        train_set: tokenized examples with ``labels`` and ``index`` (row number); a row
            labelled :data:`OUTLIER_LABEL` is an out-of-scope example (see `cfg.outlier_weight`).
        soft_labels: the parent release's logits for every row of `train_set`, in row order
            (see :func:`predict_logits`); the distillation target of row ``i`` is
            ``soft_labels[i]``.
        distill: temperature and weight of the distillation term; required with soft labels.
        teacher_pooled: the parent's pooled embeddings of every row, in row order; with
            `feature_weight` > 0 they are the target of the feature term.
        feature_weight: weight of :func:`feature_distillation_term` (already scaled).
        frozen_rows: indices of head rows (old intents) that get no updates.
        teacher_rows: boolean mask over the rows of `train_set`, in row order: the rows both
            distillation terms apply to (default: all); see :func:`global_batch_loss`.
        anchor: the parent's LoRA values and their weighted importance: adds
            :func:`anchor_term` (L2 to the parent, EWC) to every step's loss.

    Returns:
        The trained, unwrapped model and statistics of the run.
    """
    use_kd = (
        soft_labels is not None and distill is not None and distill.enabled and distill.weight > 0
    )
    if use_kd and soft_labels.shape[0] != len(train_set):
        raise IntentCIError(
            f"soft labels cover {soft_labels.shape[0]} rows but the training set has {len(train_set)}"
        )
    use_feat = feature_weight > 0 and teacher_pooled is not None
    if use_feat and teacher_pooled.shape[0] != len(train_set):
        raise IntentCIError(
            f"teacher embeddings cover {teacher_pooled.shape[0]} rows but the training set has "
            f"{len(train_set)}"
        )
    if teacher_rows is not None and teacher_rows.shape != (len(train_set),):
        raise IntentCIError(
            f"teacher row mask has shape {tuple(teacher_rows.shape)} but the training set has "
            f"{len(train_set)} rows"
        )
    freezer = _RowFreezer(model.head, frozen_rows) if frozen_rows else None
    class_weights = None
    if cfg.class_balanced:
        num_labels = model.head.num_labels
        class_weights = balanced_class_weights(
            [int(y) for y in train_set["labels"]], num_labels
        ).to(accelerator.device)
    loader = make_loader(train_set, tokenizer, cfg.batch_size, shuffle=True, seed=cfg.seed)
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head_params}
    lora_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [
            {"params": lora_params, "lr": cfg.lr},
            {"params": head_params, "lr": cfg.head_lr},
        ],
        weight_decay=cfg.weight_decay,
    )
    # The schedule spans the optimizer steps this run really makes: with N processes each takes
    # every N-th batch (Accelerate rounds up), so the global batch is N x batch_size and the
    # peak learning rate is unchanged; N processes at batch B follow the schedule of one process
    # at batch N x B. The prepared scheduler ticks N times per optimizer step, hence the factor.
    # Accelerate also steps at the end of every epoch (it syncs with the dataloader), so with
    # gradient accumulation an epoch of 3 batches at 2 per step makes 2 steps, not 1.5.
    ticks = accelerator.num_processes
    steps_per_epoch = math.ceil(len(loader) / ticks)
    total_steps = cfg.epochs * math.ceil(steps_per_epoch / cfg.gradient_accumulation_steps)
    scheduler = get_scheduler(
        "linear",
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps) * ticks,
        num_training_steps=total_steps * ticks,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if use_kd:
        soft_labels = soft_labels.to(accelerator.device)
    if use_feat:
        teacher_pooled = teacher_pooled.to(accelerator.device)
    if teacher_rows is not None:
        teacher_rows = teacher_rows.to(device=accelerator.device, dtype=torch.bool)
    if anchor is not None:
        anchor = ParameterAnchor(
            {n: v.to(accelerator.device) for n, v in anchor.values.items()},
            {n: v.to(accelerator.device) for n, v in anchor.importance.items()},
        )
    unwrapped = accelerator.unwrap_model(model)

    stats = TrainStats()
    start = time.perf_counter()
    progress = tqdm(
        total=len(loader) * cfg.epochs, desc="train", disable=not accelerator.is_main_process
    )
    for epoch in range(cfg.epochs):
        model.train()
        # This rank's shares of ce, kd, feature, the outlier term x its rows, and the anchor.
        sums = torch.zeros(5, dtype=torch.float64)
        batches = outlier_rows = 0
        for batch in loader:
            with accelerator.accumulate(model):
                inputs = _model_inputs(batch)
                # Rows Accelerate repeated to even out the epoch's last batch count zero.
                keep = real_rows(len(batch["labels"]), accelerator)
                pooled = teacher = None
                if use_feat:
                    logits, pooled = model(**inputs, return_pooled=True)
                    teacher = teacher_pooled[batch["index"]]
                else:
                    logits = model(**inputs)
                soft = None
                if use_kd:
                    soft = soft_labels[batch["index"]]
                terms = global_batch_loss(
                    logits,
                    batch["labels"],
                    keep,
                    accelerator,
                    class_weights=class_weights,
                    teacher_logits=soft,
                    distill=distill if use_kd else None,
                    pooled=pooled,
                    teacher_pooled=teacher,
                    feature_weight=feature_weight if use_feat else 0.0,
                    teacher_rows=None if teacher_rows is None else teacher_rows[batch["index"]],
                    outlier_weight=cfg.outlier_weight,
                    anchor=None if anchor is None else anchor_term(unwrapped, anchor),
                )
                accelerator.backward(terms.loss)
                if accelerator.sync_gradients:
                    stats.optimizer_steps += 1
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                if freezer is not None:
                    freezer.restore()
                scheduler.step()
                optimizer.zero_grad()
            sums += torch.tensor(
                [
                    terms.ce.item(),
                    terms.kd.item(),
                    terms.feature.item(),
                    terms.outlier.item() * terms.outlier_rows,
                    terms.anchor.item(),
                ],
                dtype=torch.float64,
            )
            stats.examples_trained += terms.rows
            outlier_rows += terms.outlier_rows
            batches += 1
            stats.steps += 1
            progress.update(1)
            progress.set_postfix(epoch=epoch + 1, loss=f"{terms.loss.item():.3f}")
        if accelerator.num_processes > 1:  # NCCL reduces device tensors only
            sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
        ce_mean, kd_mean, feat_mean = (sums[:3] / max(batches, 1)).tolist()
        # Most batches hold no outlier row: the term's mean is over the epoch's outlier rows.
        oe_mean = float(sums[3]) / max(outlier_rows, 1)
        anchor_mean = float(sums[4]) / max(batches, 1)
        kd_weight = distill.weight if use_kd else 0.0
        feat_weight = feature_weight if use_feat else 0.0
        epoch_means = {
            "loss": ce_mean
            + kd_weight * kd_mean
            + feat_weight * feat_mean
            + cfg.outlier_weight * oe_mean
            + anchor_mean,
            "ce": ce_mean,
            "kd": kd_mean,
            "feature": feat_mean,
        }
        if cfg.outlier_weight > 0:
            epoch_means["outlier"] = oe_mean
        if anchor is not None:
            epoch_means["anchor"] = anchor_mean  # already weighted
        stats.loss_per_epoch.append({"epoch": epoch + 1, **epoch_means})
        if accelerator.is_main_process:
            logger.info("epoch %d: %s", epoch + 1, epoch_means)
    progress.close()
    stats.wall_time_s = time.perf_counter() - start
    # Without Accelerate's autocast wrapper: what follows (calibration, the exemplar bank) must
    # score as the saved release will, in full precision, whatever `mixed_precision` trained.
    return accelerator.unwrap_model(model, keep_fp32_wrapper=False), stats


def fit_head(
    head: IntentHead,
    pooled: torch.Tensor,
    labels: list[int],
    cfg: TrainConfig,
    epochs: int,
    *,
    lr: float | None = None,
    teacher_logits: torch.Tensor | None = None,
    distill: DistillConfig | None = None,
    teacher_rows: torch.Tensor | None = None,
    train_dense: bool = True,
    frozen_rows: list[int] | None = None,
    main_process: bool = True,
) -> tuple[IntentHead, TrainStats]:
    """A copy of `head` trained alone on fixed pooled embeddings; `head` is left as it is.

    The loop for what needs no encoder pass: `init`'s head-alone candidate
    (`intent_ci.fallback`) and `update` with ``train.update_mode: head``. The loss is the
    same terms as :func:`train`'s: class-balanced cross-entropy (as `cfg.class_balanced`), plus
    ``distill.weight * distillation_term`` against `teacher_logits` on the rows `teacher_rows`
    marks (default: all) when both are given. AdamW at `lr` (default `cfg.head_lr`) with the
    linear warm-up schedule of :func:`train`, `cfg.batch_size` rows a step, shuffled with
    `cfg.seed`; the head's dropout is on while it trains. Every process fits the same head from
    the same gathered embeddings, so no gradients are exchanged.

    Args:
        train_dense: whether the head's dense layer (where it has one) trains.
        frozen_rows: output rows kept bit-identical to `head`'s (put back after every step).
        main_process: shows the progress bar.
    """
    fitted = copy.deepcopy(head).to(pooled.device)
    fitted.requires_grad_(True)
    if fitted.dense is not None and not train_dense:
        fitted.dense.requires_grad_(False)
    fitted.train()
    targets = torch.tensor(labels, dtype=torch.long, device=pooled.device)
    weights = (
        balanced_class_weights(labels, fitted.num_labels).to(pooled.device)
        if cfg.class_balanced
        else None
    )
    use_kd = teacher_logits is not None and distill is not None and distill.weight > 0
    if use_kd:
        teacher_logits = teacher_logits.to(pooled.device)
        taught_rows = (
            torch.ones(len(labels), dtype=torch.bool)
            if teacher_rows is None
            else teacher_rows.bool()
        ).to(pooled.device)
    trainable = [p for p in fitted.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.head_lr if lr is None else lr, weight_decay=cfg.weight_decay
    )
    freezer = _RowFreezer(fitted, frozen_rows) if frozen_rows else None
    steps_per_epoch = math.ceil(len(labels) / cfg.batch_size)
    total = steps_per_epoch * epochs
    scheduler = get_scheduler(
        "linear",
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total),
        num_training_steps=total,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    stats = TrainStats()
    started = time.perf_counter()
    for epoch in tqdm(range(epochs), desc="head", disable=not main_process, leave=False):
        order = torch.randperm(len(labels), generator=generator).to(pooled.device)
        ce_sum = kd_sum = 0.0
        for start in range(0, len(labels), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            logits = fitted(pooled[rows])
            ce = cross_entropy_term(logits, targets[rows], weights)
            loss = ce
            if use_kd:
                taught = taught_rows[rows]
                if taught.any():
                    kd = distillation_term(
                        logits[taught], teacher_logits[rows][taught], distill.temperature
                    )
                    loss = loss + distill.weight * kd
                    kd_sum += kd.item()
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            if freezer is not None:
                freezer.restore()
            scheduler.step()
            optimizer.zero_grad()
            ce_sum += ce.item()
            stats.steps += 1
            stats.optimizer_steps += 1
            stats.examples_trained += len(rows)
        means = {"ce": ce_sum / steps_per_epoch, "kd": kd_sum / steps_per_epoch}
        kd_weight = distill.weight if use_kd else 0.0
        stats.loss_per_epoch.append(
            {"epoch": epoch + 1, "loss": means["ce"] + kd_weight * means["kd"], **means}
        )
    stats.wall_time_s = time.perf_counter() - started
    return fitted.eval().requires_grad_(False), stats
