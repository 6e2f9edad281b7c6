"""Head surgery, pooling, LoRA attachment and the distillation term, on the tiny RoBERTa."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from intent_ci.config import ModelConfig
from intent_ci.errors import IntentCIError
from intent_ci.modeling import (
    IntentHead,
    IntentModel,
    attach_lora,
    build_head,
    class_prototypes,
    detect_pooling,
    load_backbone,
    widen_head,
)
from intent_ci.training import distillation_term, feature_distillation_term


def _batch(backbone, texts):
    return backbone.tokenizer(texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("kind", ["cosine", "linear"])
@pytest.mark.parametrize("dense", [True, False])
def test_widen_head_keeps_old_logits_bit_identical(kind, dense):
    torch.manual_seed(0)
    head = IntentHead(32, 5, kind=kind, dense=dense, scale=16.0).eval()
    with torch.no_grad():
        if head.out_proj.bias is not None:
            head.out_proj.bias.normal_()
    before_state = {k: v.clone() for k, v in head.state_dict().items()}
    features = torch.randn(7, 32)
    new_rows = torch.randn(3, 32)
    old_logits = head(features)

    wide = widen_head(head, 3, new_rows).eval()

    assert wide.num_labels == 8
    assert torch.equal(wide(features)[:, :5], old_logits)
    assert torch.equal(wide.out_proj.weight[:5], head.out_proj.weight)
    assert torch.equal(wide.out_proj.weight[5:], new_rows)
    if kind == "linear":
        assert torch.equal(wide.out_proj.bias[:5], head.out_proj.bias)
        assert torch.equal(wide.out_proj.bias[5:], torch.zeros(3))
    # the parent's head is untouched
    for key, value in head.state_dict().items():
        assert torch.equal(value, before_state[key])


def test_widen_head_on_full_model_keeps_old_intent_logits(tiny_backbone):
    backbone = load_backbone(ModelConfig(backbone=str(tiny_backbone), lora_r=4))
    encoder = attach_lora(backbone.encoder, ModelConfig(backbone=str(tiny_backbone), lora_r=4))
    model = IntentModel(
        encoder, build_head(ModelConfig(), 32, 4, backbone.pooling), backbone.pooling
    ).eval()
    batch = _batch(backbone, ["card lost please", "open weekend hours", "send wire now"])
    before = model(**batch)
    model.head = widen_head(model.head, 2, torch.randn(2, 32))
    model.eval()
    after = model(**batch)
    assert after.shape == (3, 6)
    assert torch.equal(after[:, :4], before)


def test_widen_head_rejects_bad_input():
    head = IntentHead(32, 2)
    with pytest.raises(IntentCIError, match="at least one new intent"):
        widen_head(head, 0)
    with pytest.raises(IntentCIError, match=r"shape \(2, 32\)"):
        widen_head(head, 2, torch.zeros(3, 32))


def test_pooling_is_detected_from_the_checkpoint(tiny_backbone, tiny_mean_backbone):
    assert detect_pooling(str(tiny_backbone)) == "cls"
    assert detect_pooling(str(tiny_mean_backbone)) == "mean"
    assert load_backbone(ModelConfig(backbone=str(tiny_mean_backbone))).pooling == "mean"
    assert (
        load_backbone(ModelConfig(backbone=str(tiny_mean_backbone), pooling="cls")).pooling == "cls"
    )


def test_mean_pooling_ignores_padding(tiny_backbone):
    from intent_ci.modeling import pool

    hidden = torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = pool(hidden, mask, "mean")
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0))
    assert torch.allclose(pooled[1], hidden[1].mean(0))
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])


def test_backbone_is_frozen_and_only_lora_and_head_train(tiny_backbone):
    cfg = ModelConfig(backbone=str(tiny_backbone), lora_r=4)
    backbone = load_backbone(cfg)
    encoder = attach_lora(backbone.encoder, cfg)
    model = IntentModel(encoder, build_head(cfg, 32, 3, backbone.pooling), backbone.pooling)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    assert all("lora_" in n or n.startswith("head.") for n in trainable), trainable
    assert any("lora_" in n for n in trainable)


def test_unknown_architecture_needs_explicit_lora_targets():
    from intent_ci.modeling import lora_config

    with pytest.raises(IntentCIError, match="model.lora_target_modules"):
        lora_config(ModelConfig(), "some-new-encoder")
    attention = {"query", "key", "value", "attention.output.dense"}
    assert set(lora_config(ModelConfig(), "roberta").target_modules) == attention
    assert set(lora_config(ModelConfig(), "bert").target_modules) == attention
    assert set(lora_config(ModelConfig(), "mpnet").target_modules) == {"q", "k", "v", "o"}
    assert set(lora_config(ModelConfig(), "t5").target_modules) == {"q", "v"}  # peft's default


def test_missing_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(IntentCIError, match="could not load"):
        load_backbone(ModelConfig(backbone=str(tmp_path / "nope")))


def test_class_prototypes_are_unit_class_means():
    feats = torch.tensor([[2.0, 0.0], [0.0, 3.0], [4.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    protos = class_prototypes(feats, labels, 2)
    assert torch.allclose(protos, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(IntentCIError, match="no examples"):
        class_prototypes(feats, labels, 3)


def test_distillation_is_zero_for_identical_student_and_positive_otherwise():
    teacher = torch.randn(6, 4)
    student = torch.cat([teacher, torch.randn(6, 2)], dim=1)  # same old logits, extra new columns
    assert distillation_term(student, teacher, 2.0).abs().item() < 1e-6
    shifted = student.clone()
    shifted[:, 0] += 3.0
    assert distillation_term(shifted, teacher, 2.0).item() > 1e-3


def _model_with_live_lora(tiny_backbone) -> tuple[IntentModel, object]:
    """Tiny RoBERTa + LoRA + head. LoRA starts with B = 0, which blocks gradients to A; B is
    nudged so both factors get signal."""
    cfg = ModelConfig(backbone=str(tiny_backbone), lora_r=4)
    backbone = load_backbone(cfg)
    model = IntentModel(
        attach_lora(backbone.encoder, cfg), build_head(cfg, 32, 3, backbone.pooling), "cls"
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    return model, backbone


def test_distillation_gradients_reach_lora_weights(tiny_backbone):
    model, backbone = _model_with_live_lora(tiny_backbone)
    batch = _batch(backbone, ["card lost please", "open weekend hours"])
    teacher_logits = torch.randn(2, 2)
    loss = distillation_term(model(**batch), teacher_logits, 2.0)
    assert loss.item() > 0
    loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert all(
        p.grad is None
        for n, p in model.named_parameters()
        if "lora_" not in n and not n.startswith("head.")
    )


def test_feature_distillation_is_zero_for_same_direction_and_reaches_lora(tiny_backbone):
    teacher = torch.randn(5, 8)
    # Cosine ignores length: a rescaled embedding has not turned.
    assert feature_distillation_term(3.0 * teacher, teacher).abs().item() < 1e-6
    assert feature_distillation_term(-teacher, teacher).item() == pytest.approx(2.0)
    model, backbone = _model_with_live_lora(tiny_backbone)
    batch = _batch(backbone, ["card lost please", "open weekend hours"])
    model.eval()  # no dropout: the two forwards must agree exactly
    logits, pooled = model(**batch, return_pooled=True)
    assert torch.equal(logits, model(**batch))
    assert torch.equal(pooled, model.pooled(**batch))
    loss = feature_distillation_term(pooled, torch.randn_like(pooled))
    assert loss.item() > 0
    loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    # The term reads the pooled embedding, before the head: the head gets no gradient from it.
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("head."))


def test_soft_labels_are_the_teachers_logits_in_row_order(tiny_backbone):
    """add-intent scores the training set once with the parent; row i's target must be row i's."""
    from accelerate import Accelerator

    from intent_ci.training import make_loader, predict_logits, tokenize

    cfg = ModelConfig(backbone=str(tiny_backbone), lora_r=4)
    backbone = load_backbone(cfg)
    model = IntentModel(
        attach_lora(backbone.encoder, cfg), build_head(cfg, 32, 3, backbone.pooling), "cls"
    ).eval()
    # Different lengths, so that any reordering by batch would show up.
    texts = ["card lost", "open weekend hours please now", "balance", "send wire to payee today"]
    accelerator = Accelerator(cpu=True)
    data = tokenize(backbone.tokenizer, texts, [0, 1, 2, 0], 64, accelerator)
    loader = accelerator.prepare(make_loader(data, backbone.tokenizer, 3, shuffle=False))
    soft = predict_logits(model, loader, accelerator)
    with torch.no_grad():
        one_by_one = torch.cat([model(**_batch(backbone, [t])) for t in texts])
    assert soft.shape == (4, 3)
    torch.testing.assert_close(soft, one_by_one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("config_class", "kwargs", "expected"),
    [
        (
            "RobertaConfig",
            {},
            {
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
            },
        ),
        (
            "BertConfig",
            {},
            {
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
            },
        ),
        (
            "MPNetConfig",
            {},
            {"attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o"},
        ),
        (
            "DistilBertConfig",
            {"dim": 32, "n_heads": 2, "hidden_dim": 37, "n_layers": 1},
            {"attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"},
        ),
    ],
)
def test_default_lora_targets_hit_every_attention_projection(config_class, kwargs, expected):
    """The default targets exist in each architecture and adapt q, k, v and the output, nothing else."""
    import transformers

    from intent_ci.modeling import attach_lora

    if not kwargs:
        kwargs = {
            "hidden_size": 32,
            "num_attention_heads": 2,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
        }
    config = getattr(transformers, config_class)(vocab_size=100, **kwargs)
    encoder = transformers.AutoModel.from_config(config)
    adapted = attach_lora(encoder, ModelConfig(backbone="tiny"))
    layer0 = {
        n.split(".lora_A")[0].split(".0.", 1)[1]
        for n, _ in adapted.named_parameters()
        if "lora_A" in n and ".0." in n
    }
    assert layer0 == expected


def test_dense_layer_starts_as_identity_so_first_features_are_tanh_pooled(tiny_backbone):
    """The cls head's dense layer starts at I, 0: the cosine head's starting prototypes are then
    class means of tanh(pooled), not of a random projection; `random` keeps torch's init."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=str(tiny_backbone))
    head = build_head(cfg, 32, 3, "cls").eval()
    assert torch.equal(head.dense.weight, torch.eye(32))
    assert torch.equal(head.dense.bias, torch.zeros(32))
    pooled = torch.randn(5, 32) * 3
    assert torch.equal(head.project(pooled), torch.tanh(pooled))
    random_head = build_head(ModelConfig(head_dense_init="random"), 32, 3, "cls").eval()
    assert not torch.equal(random_head.dense.weight, torch.eye(32))
    # Mean pooling has no dense layer: the features are the pooled embeddings themselves.
    mean_head = build_head(cfg, 32, 3, "mean").eval()
    assert mean_head.dense is None and torch.equal(mean_head.project(pooled), pooled)
    with pytest.raises(
        IntentCIError, match=r"`model\.head_dense_init`: expected identity or random"
    ):
        ModelConfig(head_dense_init="eye")


def _old_logits_after_child_training(tiny_backbone, *, freeze_dense: bool):
    """Parent logits and the child's old-intent logits, after child training with LoRA held
    still (its parameters frozen) and the old rows frozen: only the dense layer could move them."""
    from intent_ci.config import ReleaseConfig, TrainConfig
    from intent_ci.pipeline import make_accelerator
    from intent_ci.training import hold_parent_weights, tokenize, train

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=str(tiny_backbone), lora_r=4, dropout=0.0, lora_dropout=0.0)
    backbone = load_backbone(cfg)
    model = IntentModel(
        attach_lora(backbone.encoder, cfg), build_head(cfg, 32, 3, backbone.pooling), "cls"
    )
    texts = ["card lost", "card stolen now", "balance total", "funds account", "open weekend"]
    texts += ["hours close", "refund please", "refund credited today"]
    batch = _batch(backbone, texts)
    model.eval()
    with torch.no_grad():
        parent = model(**batch)
        parent_dense = [t.clone() for t in (model.head.dense.weight, model.head.dense.bias)]
    model.head = widen_head(model.head, 1)
    train_cfg = TrainConfig(epochs=2, batch_size=4, head_lr=0.05, weight_decay=0.1)
    hold_parent_weights(model, dataclasses.replace(train_cfg, freeze_dense=freeze_dense))
    assert all(p.requires_grad == ("lora_" in n) for n, p in model.encoder.named_parameters())
    model.encoder.requires_grad_(False)  # LoRA held still: what distillation would do at best
    accelerator = make_accelerator(ReleaseConfig())
    data = tokenize(backbone.tokenizer, texts, [0, 0, 1, 1, 2, 2, 3, 3], 16, accelerator)
    model, _ = train(model, data, backbone.tokenizer, accelerator, train_cfg, frozen_rows=[0, 1, 2])
    model.eval()
    with torch.no_grad():
        child = model(**batch)
    dense = (model.head.dense.weight, model.head.dense.bias)
    return parent, child, parent_dense, dense


def test_frozen_dense_and_rows_keep_old_logits_bit_identical(tiny_backbone, one_torch_thread):
    """With the dense layer and the old rows frozen (and AdamW decaying the rest), old-intent
    logits can move only through LoRA; with LoRA held too they are the parent's, to the bit."""
    parent, child, parent_dense, dense = _old_logits_after_child_training(
        tiny_backbone, freeze_dense=True
    )
    assert all(torch.equal(a, b) for a, b in zip(dense, parent_dense, strict=True))
    assert torch.equal(child[:, :3], parent)
    assert child.shape == (8, 4)
    # Training the dense layer moves the old intents' logits though their rows are frozen.
    parent, child, parent_dense, dense = _old_logits_after_child_training(
        tiny_backbone, freeze_dense=False
    )
    assert not torch.equal(dense[0], parent_dense[0])
    assert not torch.equal(child[:, :3], parent)
