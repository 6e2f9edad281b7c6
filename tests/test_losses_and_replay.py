"""The small pure pieces of training: class balancing, exemplar selection, the metric module."""

from __future__ import annotations

import math

import evaluate
import pytest
import torch
from accelerate import Accelerator

from intent_ci.config import DistillConfig, ReplayConfig, TrainConfig
from intent_ci.errors import IntentCIError
from intent_ci.metrics import INTENT_ACCURACY
from intent_ci.modeling import IntentHead
from intent_ci.replay import (
    draw_replay,
    find_neighbours,
    herding,
    memory_bytes_per_intent,
    replay_per_intent,
    select_exemplars,
)
from intent_ci.training import (
    OUTLIER_LABEL,
    ParameterAnchor,
    anchor_term,
    balanced_class_weights,
    cross_entropy_term,
    fit_head,
    global_batch_loss,
    outlier_exposure_term,
)


def test_balanced_weights_give_each_present_class_equal_total_weight():
    labels = (
        [0] * 2 + [1] * 2 + [2] * 8
    )  # two old intents with replay, one new intent with all its data
    weights = balanced_class_weights(labels, 4)
    totals = [weights[c] * labels.count(c) for c in range(3)]
    assert torch.allclose(torch.stack(totals), totals[0].expand(3))
    assert weights[3] == 0  # absent class
    assert weights[0] > weights[2]


def test_weighted_cross_entropy_differs_from_plain_on_imbalanced_batches():
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 2, 2, 2, 2, 1])
    plain = cross_entropy_term(logits, labels)
    weighted = cross_entropy_term(logits, labels, balanced_class_weights(labels.tolist(), 3))
    assert not torch.isclose(plain, weighted)


def test_outlier_rows_take_only_the_outlier_exposure_term():
    """Rows labelled OUTLIER_LABEL leave the cross-entropy (and the class weights) alone and are
    pushed towards the uniform distribution; at weight 0 they do not count at all."""
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 1, OUTLIER_LABEL, 2, OUTLIER_LABEL, 3])
    keep = torch.ones(6, dtype=torch.bool)
    inside = labels != OUTLIER_LABEL
    weights = balanced_class_weights(labels.tolist(), 4)
    assert weights.tolist() == [1.0, 1.0, 1.0, 1.0]  # outliers are not a class

    terms = global_batch_loss(
        logits, labels, keep, accelerator, class_weights=weights, outlier_weight=0.5
    )
    ce = cross_entropy_term(logits[inside], labels[inside], weights)
    uniform = torch.full((2, 4), 0.25)
    oe = torch.nn.functional.cross_entropy(logits[~inside], uniform)
    assert terms.ce.item() == pytest.approx(ce.item())
    assert terms.outlier.item() == pytest.approx(oe.item())
    assert outlier_exposure_term(logits[~inside]).item() == pytest.approx(oe.item())
    assert terms.loss.item() == pytest.approx(ce.item() + 0.5 * oe.item())
    assert terms.rows == 6

    off = global_batch_loss(logits, labels, keep, accelerator, class_weights=weights)
    assert off.loss.item() == pytest.approx(ce.item())
    (grad,) = torch.autograd.grad(off.loss, logits)
    assert grad[~inside].abs().sum() == 0
    # Flat logits are the outlier term's minimum: log(number of intents).
    assert outlier_exposure_term(torch.zeros(3, 4)).item() == pytest.approx(math.log(4))


def test_anchor_term_is_the_weighted_squared_distance_to_the_parent_and_adds_once():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    parent = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model.weight.add_(0.5)
        model.bias.sub_(1.0)
    importance = {"weight": torch.full((2, 3), 2.0), "bias": torch.tensor([0.0, 4.0])}
    anchor = ParameterAnchor(parent, importance)
    # 1/2 (6 x 2 x 0.25 + 4 x 1) = 3.5: the first bias has no importance.
    term = anchor_term(model, anchor)
    assert term.item() == pytest.approx(3.5)
    (grad,) = torch.autograd.grad(term, model.weight)
    assert torch.allclose(grad, torch.full((2, 3), 1.0))  # importance x distance

    accelerator = Accelerator(cpu=True)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    keep = torch.ones(4, dtype=torch.bool)
    plain = global_batch_loss(logits, labels, keep, accelerator)
    held = global_batch_loss(logits, labels, keep, accelerator, anchor=term.detach())
    assert held.loss.item() == pytest.approx(plain.loss.item() + 3.5)
    assert held.anchor.item() == pytest.approx(3.5) and plain.anchor.item() == 0


def test_herding_picks_points_whose_mean_tracks_the_class_mean():
    torch.manual_seed(0)
    feats = torch.randn(200, 16)
    chosen = herding(feats, 10)
    assert len(set(chosen)) == 10
    unit = torch.nn.functional.normalize(feats, dim=-1)
    target = unit.mean(0)
    herded_error = (unit[chosen].mean(0) - target).norm()
    random_errors = [(unit[torch.randperm(200)[:10]].mean(0) - target).norm() for _ in range(50)]
    assert herded_error < torch.stack(random_errors).median()


def test_select_exemplars_bounds_memory_per_intent():
    texts = [f"t{i}" for i in range(30)]
    intents = ["a"] * 20 + ["b"] * 10
    for method in ("herding", "random"):
        memory = select_exemplars(texts, intents, torch.randn(30, 4), 8, method, seed=0)
        assert {k: len(v) for k, v in memory.items()} == {"a": 8, "b": 8}
        assert set(memory["a"]) <= set(texts[:20]) and set(memory["b"]) <= set(texts[20:])
    assert memory_bytes_per_intent({"a": ["xy", "z"], "b": ["é"]}) == (3 + 2) / 2
    with pytest.raises(IntentCIError, match="different lengths"):
        select_exemplars(texts, intents[:5], None, 8, "random", seed=0)


def test_metric_module_loads_offline_and_splits_old_and_new():
    metric = evaluate.load(INTENT_ACCURACY)
    result = metric.compute(
        predictions=["a", "b", "c", "c", "a"],
        references=["a", "a", "c", "c", "b"],
        old_intents=["a", "b"],
    )
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["old_intents_accuracy"] == pytest.approx(1 / 3) and result["old_n"] == 3
    assert result["new_intents_accuracy"] == 1.0 and result["new_n"] == 2
    assert result["per_intent"]["a"] == {"accuracy": 0.5, "n": 2, "correct": 1}
    assert {"true": "a", "predicted": "b", "count": 1} in result["confusions"]


def test_draw_replay_is_bounded_seeded_and_varies_between_releases():
    memory = {"a": [f"a{i}" for i in range(20)], "b": ["b0", "b1"]}
    first = draw_replay(memory, ["a", "b"], 5, seed="0-v1")
    assert {k: len(v) for k, v in first.items()} == {"a": 5, "b": 2}
    assert len(set(first["a"])) == 5 and set(first["a"]) <= set(memory["a"])
    assert draw_replay(memory, ["a", "b"], 5, seed="0-v1") == first
    assert draw_replay(memory, ["a", "b"], 5, seed="0-v2")["a"] != first["a"]
    assert draw_replay(memory, ["c"], 5, seed="0-v1") == {"c": []}


def test_replay_per_intent_has_a_floor_matches_new_data_and_is_capped_by_memory():
    cfg = ReplayConfig(per_intent=20, train_per_intent=5, new_ratio=1.0)
    assert replay_per_intent(cfg, new_examples=100, old_intents=140) == 5  # floor
    assert replay_per_intent(cfg, new_examples=1500, old_intents=100) == 15  # 1500 old for 1500 new
    assert replay_per_intent(cfg, new_examples=5000, old_intents=100) == 20  # memory holds 20
    assert replay_per_intent(ReplayConfig(new_ratio=0.0), 5000, 100) == 5
    with pytest.raises(IntentCIError, match="replay.new_ratio"):
        ReplayConfig(new_ratio=-1.0)


def test_find_neighbours_keeps_old_intents_above_the_share_most_predicted_first():
    intents = ["new_a"] * 10 + ["new_b"] * 4
    predicted = ["x"] * 6 + ["y"] * 3 + ["z"] + ["y"] * 2 + ["x", "z"]
    assert find_neighbours(predicted, intents, 0.25) == {
        "new_a": {"x": 0.6, "y": 0.3},
        "new_b": {"y": 0.5, "x": 0.25, "z": 0.25},
    }
    assert find_neighbours(predicted, intents, 0.5) == {"new_a": {"x": 0.6}, "new_b": {"y": 0.5}}
    # A share of 0 (the switch is off) finds none; a new intent with none still appears.
    assert find_neighbours(predicted, intents, 0.0) == {"new_a": {}, "new_b": {}}
    with pytest.raises(IntentCIError, match="different lengths"):
        find_neighbours(predicted[:-1], intents, 0.25)
    with pytest.raises(IntentCIError, match="replay.neighbour_share"):
        ReplayConfig(neighbour_share=1.5)


def test_draw_replay_gives_neighbours_their_whole_memory():
    memory = {"a": [f"a{i}" for i in range(20)], "b": [f"b{i}" for i in range(20)], "c": ["c0"]}
    drawn = draw_replay(memory, ["a", "b", "c"], 5, seed="0-v1", whole={"b", "c"})
    assert {k: len(v) for k, v in drawn.items()} == {"a": 5, "b": 20, "c": 1}
    assert sorted(drawn["b"]) == sorted(memory["b"])


def _clusters(seed: int = 0):
    torch.manual_seed(seed)
    centres = torch.randn(3, 8) * 3
    labels = [c for c in range(3) for _ in range(20)]
    return centres[labels] + 0.3 * torch.randn(60, 8), labels


def test_fit_head_learns_fixed_embeddings_and_leaves_the_given_head_alone():
    pooled, labels = _clusters()
    head = IntentHead(8, 3, kind="cosine", scale=20.0, dropout=0.0)
    before = head.out_proj.weight.detach().clone()
    fitted, stats = fit_head(head, pooled, labels, TrainConfig(batch_size=8), epochs=10)
    assert torch.equal(head.out_proj.weight, before)  # the given head is a starting point only
    assert not any(p.requires_grad for p in fitted.parameters())
    right = (fitted(pooled).argmax(-1) == torch.tensor(labels)).float().mean().item()
    assert right == 1.0
    assert stats.examples_trained == 10 * 60 and stats.steps == 10 * math.ceil(60 / 8)
    assert len(stats.loss_per_epoch) == 10


def test_fit_head_distils_only_on_the_rows_the_teacher_speaks_for():
    """Relabel class 2 as class 1: where the teacher (trained on the old labels) speaks, a heavy
    distillation weight keeps its answer; where it is silent, the new label wins."""
    pooled, labels = _clusters()
    cfg = TrainConfig(batch_size=8, seed=0)
    teacher, _ = fit_head(
        IntentHead(8, 3, kind="cosine", scale=20.0, dropout=0.0), pooled, labels, cfg, epochs=10
    )
    with torch.no_grad():
        teacher_logits = teacher(pooled)
    moved = torch.tensor([y == 2 for y in labels])
    relabelled = [1 if y == 2 else y for y in labels]
    distill = DistillConfig(weight=20.0, temperature=2.0)

    def fitted_predictions(teacher_rows):
        child, _ = fit_head(
            teacher,
            pooled,
            relabelled,
            cfg,
            epochs=10,
            teacher_logits=teacher_logits,
            distill=distill,
            teacher_rows=teacher_rows,
        )
        return child(pooled[moved]).argmax(-1)

    assert (fitted_predictions(None) == 2).float().mean().item() >= 0.9
    assert (fitted_predictions(~moved) == 1).float().mean().item() == 1.0


def test_fit_head_can_hold_the_dense_layer():
    pooled, labels = _clusters()
    head = IntentHead(8, 3, kind="cosine", dense=True, dropout=0.0)
    cfg = TrainConfig(batch_size=8)
    held, _ = fit_head(head, pooled, labels, cfg, epochs=2, train_dense=False)
    trained, _ = fit_head(head, pooled, labels, cfg, epochs=2)
    assert torch.equal(held.dense.weight, head.dense.weight)
    assert not torch.equal(trained.dense.weight, head.dense.weight)
    assert not torch.equal(held.out_proj.weight, head.out_proj.weight)


def test_fit_head_keeps_frozen_rows_bit_identical_and_trains_the_rest():
    pooled, labels = _clusters()
    head = IntentHead(8, 3, kind="linear", dropout=0.0)  # a bias too, and weight decay acts
    fitted, _ = fit_head(
        head, pooled, labels, TrainConfig(batch_size=8, weight_decay=0.1), 5, frozen_rows=[0, 2]
    )
    for rows in (fitted.out_proj.weight, fitted.out_proj.bias):
        original = head.out_proj.weight if rows.dim() == 2 else head.out_proj.bias
        assert torch.equal(rows[[0, 2]], original[[0, 2]])
        assert not torch.equal(rows[1], original[1])
