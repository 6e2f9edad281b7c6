"""`update`: new intents, more examples and corrected labels in one release.

Pure parts (the loss mask, corrections, herding with forced exemplars, the lineage rule) are
tested alone; one end-to-end update on the tiny RoBERTa checks that a corrected utterance flips,
that only the rows that may move do, and that eval, check, diff, show and verify understand it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from intent_ci.cli import main
from intent_ci.config import DistillConfig, ReleaseConfig, apply_overrides
from intent_ci.errors import IntentCIError
from intent_ci.registry import Registry, edge_problems
from intent_ci.release import IntentClassifier, load_release
from intent_ci.replay import herding, select_exemplars
from intent_ci.training import distillation_term, global_batch_loss
from intent_ci.update import (
    FROM_MEMORY,
    FROM_PREDICTION,
    check_relabels,
    find_corrections,
    known_embeddings,
    memory_changes,
    without_moved,
)
from tests.conftest import BASE_INTENTS, make_utterances, tiny_overrides
from tests.test_hub import REPO, hub  # noqa: F401  (the stand-in Hub fixture)


# ---- the distillation mask -------------------------------------------------------------------
def test_kd_term_ignores_rows_the_teacher_does_not_speak_for():
    """Masked rows: their teacher logits do not change the loss, and their logits get only the
    cross-entropy gradient; the unmasked rows' KD is the plain distillation term over them."""
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    logits = torch.randn(6, 5, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    keep = torch.ones(6, dtype=torch.bool)
    teacher = torch.randn(6, 4)
    rows = torch.tensor([True, False, True, True, False, True])
    distill = DistillConfig(temperature=2.0, weight=3.0)

    masked = global_batch_loss(
        logits,
        labels,
        keep,
        accelerator,
        teacher_logits=teacher,
        distill=distill,
        teacher_rows=rows,
    )
    assert masked.kd.item() == pytest.approx(
        distillation_term(logits[rows], teacher[rows], 2.0).item()
    )
    # Whatever the teacher says on the masked rows, the loss is the same.
    other = teacher.clone()
    other[~rows] = 50 * torch.randn(2, 4)
    again = global_batch_loss(
        logits, labels, keep, accelerator, teacher_logits=other, distill=distill, teacher_rows=rows
    )
    assert again.loss.item() == masked.loss.item()
    # Without the mask the masked rows' teacher does count.
    unmasked = global_batch_loss(
        logits, labels, keep, accelerator, teacher_logits=other, distill=distill
    )
    assert unmasked.kd.item() != pytest.approx(masked.kd.item())

    # Gradient on the masked rows' logits is the cross-entropy's alone.
    (grad,) = torch.autograd.grad(masked.loss, logits)
    ce_only = global_batch_loss(logits, labels, keep, accelerator)
    (ce_grad,) = torch.autograd.grad(ce_only.loss, logits)
    assert torch.allclose(grad[~rows], ce_grad[~rows])
    assert not torch.allclose(grad[rows], ce_grad[rows])


def test_all_true_mask_equals_no_mask():
    torch.manual_seed(1)
    accelerator = Accelerator(cpu=True)
    logits, teacher = torch.randn(5, 4), torch.randn(5, 3)
    labels, keep = torch.tensor([0, 1, 2, 3, 0]), torch.ones(5, dtype=torch.bool)
    distill = DistillConfig()
    a = global_batch_loss(
        logits, labels, keep, accelerator, teacher_logits=teacher, distill=distill
    )
    b = global_batch_loss(
        logits,
        labels,
        keep,
        accelerator,
        teacher_logits=teacher,
        distill=distill,
        teacher_rows=torch.ones(5, dtype=torch.bool),
    )
    assert a.loss.item() == b.loss.item() and a.kd.item() == b.kd.item()


# ---- corrections and memory ------------------------------------------------------------------
MEMORY = {"card_lost": ["lost my card", "card stolen"], "check_balance": ["my balance"]}


def test_corrections_from_memory_and_from_predictions():
    texts = ["Lost my  CARD", "total funds", "wire money", "card gone", "fresh thing"]
    intents = ["check_balance", "check_balance", "transfer_money", "card_lost", "new_one"]
    sources = [f"f.csv:{i + 2}" for i in range(5)]
    predicted = ["card_lost", "check_balance", "card_lost", "card_lost", "card_lost"]
    old = ["card_lost", "check_balance", "transfer_money"]
    found = find_corrections(texts, intents, sources, MEMORY, predicted, old)
    assert [(c.text, c.previous, c.intent, c.evidence, c.row) for c in found] == [
        ("Lost my  CARD", "card_lost", "check_balance", FROM_MEMORY, 0),
        ("wire money", "card_lost", "transfer_money", FROM_PREDICTION, 2),
    ]
    # A new intent's row is not a correction of a prediction (the parent cannot predict it).
    assert found[1].source == "f.csv:4"
    moved = without_moved(MEMORY, found)
    assert moved == {"card_lost": ["card stolen"], "check_balance": ["my balance"]}
    assert memory_changes(MEMORY, {**moved, "check_balance": ["my balance", "lost my card"]}) == {
        "card_lost": {"added": [], "removed": ["lost my card"]},
        "check_balance": {"added": ["lost my card"], "removed": []},
    }


def test_relabel_to_the_intent_it_already_has_is_refused():
    with pytest.raises(
        IntentCIError,
        match=r"^f.csv:3: utterance 'card stolen' already has intent 'card_lost' in release v4",
    ):
        check_relabels(
            ["my balance please", "card stolen"],
            ["check_balance", "card_lost"],
            ["f.csv:2", "f.csv:3"],
            MEMORY,
            "v4",
        )


def test_known_embeddings_read_the_bank_in_head_row_order():
    """Bank row k is the k-th exemplar of the memory taken intent by intent in head-row order;
    an embedding the feature pass computed wins, and a bank of the wrong size is not read."""
    memory = {"b": ["b1"], "a": ["a1", "a2"]}
    bank = torch.arange(6.0).view(3, 2)  # rows: a1, a2, b1 (intents ["a", "b"])
    computed = {("a", "a2"): torch.tensor([9.0, 9.0]), ("c", "new"): torch.tensor([7.0, 7.0])}
    found = known_embeddings(memory, ["a", "b"], bank, computed)
    assert torch.equal(found[("a", "a1")], bank[0]) and torch.equal(found[("b", "b1")], bank[2])
    assert torch.equal(found[("a", "a2")], computed[("a", "a2")])
    assert set(found) == {("a", "a1"), ("a", "a2"), ("b", "b1"), ("c", "new")}
    assert set(known_embeddings(memory, ["a", "b"], bank[:2], computed)) == set(computed)
    assert set(known_embeddings(memory, ["a", "b"], None, computed)) == set(computed)


def test_herding_keeps_forced_rows_first():
    feats = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    assert herding(feats, 4, forced=[7, 2])[:2] == [7, 2]
    assert len(set(herding(feats, 4, forced=[7, 2]))) == 4
    assert herding(feats, 4) == herding(feats, 4, forced=[])
    memory = select_exemplars(
        [f"t{i}" for i in range(10)], ["a"] * 5 + ["b"] * 5, feats, 2, "herding", 0, forced={9}
    )
    assert memory["b"][0] == "t9" and len(memory["b"]) == 2


def test_lineage_updated_intents_must_be_the_parents():
    parent = {
        "release": "v1",
        "intents": ["a", "b"],
        "backbone": {"fingerprint": "x"},
        "config": {"model": {}},
    }
    child = {
        **parent,
        "release": "v2",
        "intents": ["a", "b"],
        "new_intents": [],
        "updated_intents": ["b"],
    }
    assert edge_problems(Path("m.json"), child, parent) == []
    bad = {**child, "intents": ["a", "b", "c"], "new_intents": ["c"], "updated_intents": ["c"]}
    (problem,) = edge_problems(Path("m.json"), bad, parent)
    assert "field `updated_intents` names 'c', which parent v1 does not have" in problem


# ---- end to end -------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "intent"])
        writer.writerows(rows)
    return path


LORA = {"train": {"update_mode": "lora"}}


@pytest.fixture(scope="module")
def updated(tmp_path_factory, tiny_backbone, data_dir):
    """v1 learns six check_balance utterances under card_lost (a labelling mistake; the memory
    keeps every utterance, so they are in it). v2 = update of v1 with `update_mode: lora` (what
    the LoRA path guarantees; the head alone is tested below): those six corrected to
    check_balance, 8 more opening_hours examples, and a new intent report_damage."""
    from intent_ci.pipeline import init_release, update_release

    root = tmp_path_factory.mktemp("update")
    registry = root / "adapters"
    base = root / "base"
    shutil.copytree(data_dir / "base", base)
    mistakes = make_utterances("check_balance", 80, seed=3)[-6:]
    with (base / "card_lost.txt").open("a", encoding="utf-8") as f:
        f.write("\n".join(mistakes) + "\n")
    # The test needs a parent that learned the mistake (most of the six under card_lost). With
    # the dense layer's identity start the tiny parent generalises past it (3 of 6 under
    # card_lost) and the update then flips 5 of 6, one to the new intent; the random start
    # memorises it (5 of 6), so this fixture pins it.
    config = apply_overrides(
        ReleaseConfig(),
        tiny_overrides(
            tiny_backbone, model={"head_dense_init": "random"}, replay={"per_intent": 50}
        ),
        source="test",
    )
    base_test = root / "base_test"
    shutil.copytree(data_dir / "test", base_test)
    for intent in ("refund_status", "report_damage"):
        (base_test / f"{intent}.txt").unlink()
    test = root / "test"
    shutil.copytree(base_test, test)
    (test / "report_damage.txt").write_text(
        "\n".join(make_utterances("report_damage", 10, seed=9)) + "\n", encoding="utf-8"
    )
    init_release(base, registry, config, eval_data=base_test)
    rows = [(t, "check_balance") for t in mistakes]
    rows += [(t, "opening_hours") for t in make_utterances("opening_hours", 60, seed=7)[-8:]]
    rows += [(t, "report_damage") for t in make_utterances("report_damage", 20, seed=5)]
    fixes = write_csv(root / "fixes.csv", rows)
    release = update_release(fixes, registry, "v1", eval_data=test, overrides=LORA)
    return registry, release, mistakes, fixes


def test_update_release_records_and_applies_its_changes(updated):
    registry, release, moved, fixes = updated
    reg = Registry(registry)
    manifest = reg.manifest(release)
    assert manifest["parent"] == "v1"
    ev = manifest["metrics"]["eval"]
    assert ev["updated_n"] == 20 and ev["updated_intents_accuracy"] is not None
    assert manifest["intents"] == BASE_INTENTS + ["report_damage"]
    assert manifest["new_intents"] == ["report_damage"]
    assert manifest["updated_intents"] == ["check_balance", "opening_hours"]
    corrected = [c for c in manifest["corrections"] if c["evidence"] == FROM_MEMORY]
    assert [(c["text"], c["previous"], c["intent"]) for c in corrected] == [
        (t, "card_lost", "check_balance") for t in moved
    ]
    assert len(manifest["corrections"]) == len(moved)
    assert corrected[0]["source"] == f"{fixes}:2"

    # Corrected utterances left card_lost's memory and joined check_balance's.
    child, parent = load_release(reg, release), load_release(reg, "v1")
    assert not set(moved) & set(child.replay["card_lost"])
    assert set(moved) <= set(child.replay["check_balance"])
    changes = manifest["memory_changes"]
    assert set(changes["card_lost"]["removed"]) == set(moved)
    assert set(moved) <= set(changes["check_balance"]["added"])
    assert "opening_hours" in changes  # re-chosen over old exemplars + new rows
    # per_intent (50) is above its old exemplars plus 8 new utterances: all are kept.
    assert len(child.replay["opening_hours"]) == len(parent.replay["opening_hours"]) + 8 <= 50

    # The corrected utterances flip; the parent put them under card_lost.
    before = [p.label for p in IntentClassifier(parent).predict(moved)]
    after = [p.label for p in IntentClassifier(child).predict(moved)]
    assert before.count("card_lost") >= 4, before
    assert after == ["check_balance"] * len(moved)

    # Updated and neighbour rows train; untouched old rows stay bit-identical.
    labels = parent.labels
    w_parent = parent.model.head.out_proj.weight
    w_child = child.model.head.out_proj.weight
    neighbours = {o for olds in manifest["metrics"]["neighbours"].values() for o in olds}
    movable = {"check_balance", "opening_hours", "card_lost"} | neighbours
    for row, intent in enumerate(labels):
        assert torch.equal(w_child[row], w_parent[row]) == (intent not in movable), intent

    assert reg.lineage_problems(release) == []

    # Calibrated like add-intent: held out of the new intent's rows only; the updated intents
    # keep the parent's calibration utterances and train on all their rows.
    assert manifest["oos"]["threshold"] is not None
    metrics = manifest["metrics"]
    held = metrics["calibration_examples"]
    assert held >= 1 and metrics["new_examples"] == 6 + 8 + 20 - held
    calibration, _ = child.calibration
    parent_calibration, _ = parent.calibration
    assert len(calibration["report_damage"]) == held
    assert calibration["opening_hours"] == parent_calibration["opening_hours"]
    assert not set(moved) & {t for ts in calibration.values() for t in ts}
    # The out-of-scope bank follows the re-chosen memory (corrections moved, new rows added).
    assert child.bank is not None and len(child.bank) == sum(map(len, child.replay.values()))
    assert manifest["oos"]["bank"]["rows"] == len(child.bank)


def test_cli_understands_an_update_release(updated, tmp_path, capsys):
    registry, release, moved, _ = updated
    assert main(["show", release, "--registry", str(registry)]) == 0
    out = capsys.readouterr().out
    assert "updated   check_balance, opening_hours" in out
    assert f"corrected {moved[0]!r}: card_lost -> check_balance (replay memory" in out
    assert "memory    card_lost: +0 -6 exemplars" in out

    assert main(["diff", "v1", release, "--registry", str(registry), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["intents_updated"] == ["check_balance", "opening_hours"]
    assert len(diff["corrections"]) == 6 and diff["corrections"][0]["release"] == release
    assert main(["diff", "v1", release, "--registry", str(registry)]) == 0
    out = capsys.readouterr().out
    assert "intents updated  check_balance, opening_hours" in out
    assert "corrections      6" in out

    assert "  updated intents\n    check_balance" in out
    test = registry.parent / "test"
    out_json = tmp_path / "eval.json"
    assert (
        main(
            ["eval", "--release", release, "--data", str(test), "--against", "v1"]
            + ["--registry", str(registry), "--json", str(out_json)]
        )
        == 0
    )
    result = json.loads(out_json.read_text())
    assert result["updated_intents"] == ["check_balance", "opening_hours"]
    assert result["updated_n"] == 20
    assert "check_balance" in result["old_intents"]  # updated intents still count as old
    assert "updated intents" in capsys.readouterr().out

    # The gate judges updated intents as old intents (they must not get worse).
    code = main(
        ["check", "--candidate", release, "--data", str(test), "--registry", str(registry)]
        + ["--report-dir", str(tmp_path / "report")]
    )
    assert code in (0, 1)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["baseline"] == "v1"
    assert {"check_balance", "opening_hours"} <= set(report["old_intents"]["intents"])
    assert report["new_intents"]["intents"] == ["report_damage"]

    assert main(["verify", "--all", "--registry", str(registry)]) == 0
    assert main(["releases", "--registry", str(registry)]) == 0
    assert "updated 2, corrected" in capsys.readouterr().out


def test_update_with_only_more_examples_keeps_the_label_map(trained_registry, tmp_path):
    """No new intent: the head keeps its size; two more examples of an intent are enough
    (the minimum per intent applies to new intents only)."""
    from intent_ci.pipeline import update_release

    registry = Path(shutil.copytree(trained_registry, tmp_path / "adapters"))
    rows = [(t, "transfer_money") for t in make_utterances("transfer_money", 70, seed=11)[-2:]]
    release = update_release(write_csv(tmp_path / "more.csv", rows), registry, "v1")
    manifest = Registry(registry).manifest(release)
    assert manifest["intents"] == BASE_INTENTS and manifest["new_intents"] == []
    assert manifest["updated_intents"] == ["transfer_money"]
    assert load_release(Registry(registry), release).model.head.num_labels == len(BASE_INTENTS)


def test_update_epochs_sets_the_passes_of_update_and_not_of_add_intent(trained_registry, tmp_path):
    """`train.update_epochs` trains an update (`update_mode: lora`) that many passes;
    `add-intent` keeps `add_intent_epochs`; null, an update trains `add_intent_epochs` passes."""
    from intent_ci.pipeline import add_intents, update_release

    registry = Registry(shutil.copytree(trained_registry, tmp_path / "adapters"))
    add_epochs = registry.manifest("v1")["config"]["train"]["add_intent_epochs"]
    rows = [(t, "transfer_money") for t in make_utterances("transfer_money", 70, seed=11)[-4:]]
    more = write_csv(tmp_path / "more.csv", rows)
    new = write_csv(
        tmp_path / "new.csv",
        [(t, "report_damage") for t in make_utterances("report_damage", 20, seed=5)],
    )
    one = {"train": {"update_epochs": 1, "update_mode": "lora"}}
    null = {"train": {"update_epochs": None, "add_intent_epochs": 2, "update_mode": "lora"}}
    runs = [
        update_release(more, registry, "v1", overrides=one),
        update_release(more, registry, "v1", overrides=null),
        add_intents(new, registry, "v1", overrides=one),
    ]

    def passes(release: str) -> float:
        metrics = registry.manifest(release)["metrics"]
        return metrics["train"]["examples_trained"] / metrics["train_examples"]

    assert [passes(r) for r in runs] == [1, 2, add_epochs]
    assert add_epochs not in (1, 2)


def test_updated_exemplars_decides_whether_the_teacher_holds_the_updated_intents(
    trained_registry, tmp_path
):
    """With `update_mode: lora` the teacher is never heard on the file's rows of an updated
    intent; on that intent's replayed exemplars it is by default, and
    `distill.updated_exemplars: false` silences it there too. Every other training row keeps
    its teacher either way."""
    from intent_ci.pipeline import update_release

    registry = Registry(shutil.copytree(trained_registry, tmp_path / "adapters"))
    rows = [(t, "transfer_money") for t in make_utterances("transfer_money", 70, seed=11)[-4:]]
    more = write_csv(tmp_path / "more.csv", rows)
    heard = update_release(more, registry, "v1", overrides=LORA)
    silent = update_release(
        more, registry, "v1", overrides={**LORA, "distill": {"updated_exemplars": False}}
    )
    exemplars = len(load_release(registry, "v1").replay["transfer_money"])
    a, b = registry.manifest(heard)["metrics"], registry.manifest(silent)["metrics"]
    assert a["train_examples"] == b["train_examples"] == a["new_examples"] + a["replay_examples"]
    # The default: every row but the file's four.
    assert a["distilled_examples"] == a["train_examples"] - a["new_examples"]
    # Silenced: the updated intent's replayed exemplars (its whole memory) too.
    assert exemplars > 0
    assert b["distilled_examples"] == a["distilled_examples"] - exemplars
    assert registry.manifest(silent)["config"]["distill"]["updated_exemplars"] is False


def test_the_lora_update_distils_at_update_weight(trained_registry, tmp_path):
    """A LoRA update of existing intents distils at `distill.update_weight` (3.0), not at
    add-intent's `distill.weight` (0); `update_weight: 0` switches its teacher off."""
    from intent_ci.pipeline import update_release

    registry = Registry(shutil.copytree(trained_registry, tmp_path / "adapters"))
    rows = [(t, "transfer_money") for t in make_utterances("transfer_money", 70, seed=11)[-4:]]
    more = write_csv(tmp_path / "more.csv", rows)
    taught = update_release(more, registry, "v1", overrides=LORA)
    plain = update_release(
        more, registry, "v1", overrides={**LORA, "distill": {"update_weight": 0}}
    )
    a, b = registry.manifest(taught)["metrics"], registry.manifest(plain)["metrics"]
    assert registry.manifest(taught)["config"]["distill"]["weight"] == 0.0
    assert a["distilled_examples"] > 0
    assert b["distilled_examples"] == 0 and b["train_examples"] == a["train_examples"]
    # The term is in the loss, at 3.0 (counting the rows is not enough: the loop once got
    # add-intent's weight, 0, and trained without it while the rows were still counted).
    for epoch in a["train"]["loss_per_epoch"]:
        assert epoch["kd"] > 0
        assert epoch["loss"] == pytest.approx(epoch["ce"] + 3.0 * epoch["kd"], rel=1e-6)
    assert all(e["kd"] == 0 for e in b["train"]["loss_per_epoch"])


# ---- train.update_mode: head -------------------------------------------------------------------
HEAD_ONLY = {"train": {"update_mode": "head"}}


def test_a_head_only_update_moves_the_head_alone(updated, tmp_path, capsys, caplog):
    """`update_mode: head` on the correction fixture (first-token pooling and a dense layer):
    the LoRA weights and the dense layer stay the parent's bit for bit, corrections move,
    every memory exemplar replays, and, since the bank cannot stand in for embeddings through
    a dense layer, the memory exemplars the feature pass did not cover pass forward once."""
    from intent_ci.pipeline import update_release

    source, _, moved, fixes = updated
    registry = Registry(shutil.copytree(source, tmp_path / "adapters"))
    with caplog.at_level("WARNING", logger="intent_ci.pipeline"):
        release = update_release(fixes, registry, "v1", overrides=HEAD_ONLY)
    assert "new intents (report_damage) are learned by the head alone" in caplog.text
    manifest = registry.manifest(release)
    metrics = manifest["metrics"]
    assert metrics["update_mode"] == "head"
    assert manifest["updated_intents"] == ["check_balance", "opening_hours"]
    assert manifest["new_intents"] == ["report_damage"]
    adapter = "adapter_model.safetensors"
    assert (registry.path(release) / adapter).read_bytes() == (
        registry.path("v1") / adapter
    ).read_bytes()
    parent, child = load_release(registry, "v1"), load_release(registry, release)
    assert torch.equal(child.model.head.dense.weight, parent.model.head.dense.weight)
    assert not torch.equal(
        child.model.head.out_proj.weight[: len(parent.labels)], parent.model.head.out_proj.weight
    )
    # The head alone moves the corrections only as far as the parent's embeddings allow (this
    # parent's LoRA learned them as card_lost); it still moves them.
    before = [p.label for p in IntentClassifier(parent).predict(moved)]
    after = [p.label for p in IntentClassifier(child).predict(moved)]
    assert after.count("check_balance") > before.count("check_balance"), (before, after)

    updated_intents = manifest["updated_intents"]
    memory = {i: [t for t in ts if t not in moved] for i, ts in parent.replay.items()}
    stored = sum(len(parent.replay[i]) for i in updated_intents)
    untouched = sum(len(ts) for i, ts in memory.items() if i not in updated_intents)
    assert metrics["replay_examples"] == sum(map(len, memory.values()))
    assert metrics["train_examples"] == metrics["new_examples"] + metrics["replay_examples"]
    epochs = manifest["config"]["train"]["update_head_epochs"]
    assert metrics["train"]["examples_trained"] == epochs * metrics["train_examples"]
    assert metrics["forward_only_examples"] == metrics["new_examples"] + stored + untouched
    # The teacher is silent on every row of the updated intents (the file's 6 corrections and
    # 8 opening_hours rows, and their memory): it holds the other intents' rows.
    updated_memory = sum(len(memory[i]) for i in updated_intents)
    assert metrics["distilled_examples"] == (
        metrics["replay_examples"] - updated_memory + metrics["new_examples"] - 14
    )
    assert child.bank is not None and len(child.bank) == sum(map(len, child.replay.values()))
    capsys.readouterr()
    assert main(["show", release, "--registry", str(registry.root)]) == 0
    assert "trained   the head alone, on the parent's embeddings" in capsys.readouterr().out
    assert main(["show", "v2", "--registry", str(registry.root)]) == 0
    assert "trained   LoRA and head (train.update_mode: lora)" in capsys.readouterr().out
    from intent_ci.hub import render_section

    assert "corrected utterances; the head alone trained)" in render_section(
        {**manifest, "release": release}, "0" * 64, None
    )


@pytest.fixture(scope="module")
def mean_pooled(tmp_path_factory, tiny_backbone, data_dir):
    """v1: the four base intents on the tiny RoBERTa with mean pooling (a cosine head without a
    dense layer, so its exemplar bank holds the embeddings the head reads)."""
    from intent_ci.pipeline import init_release

    registry = tmp_path_factory.mktemp("mean") / "adapters"
    config = apply_overrides(
        ReleaseConfig(), tiny_overrides(tiny_backbone, model={"pooling": "mean"}), source="test"
    )
    init_release(data_dir / "base", registry, config, eval_data=None)
    return registry


def test_a_head_only_update_reads_the_memory_from_the_bank(mean_pooled, tmp_path):
    """With a cosine head on mean pooling the parent's bank gives every memory embedding: the
    only encoder pass is the feature pass over the file's rows and the updated intent's old
    exemplars, and the child's bank still equals what its encoder gives its memory."""
    from intent_ci.discover import encode
    from intent_ci.pipeline import update_release

    registry = Registry(shutil.copytree(mean_pooled, tmp_path / "adapters"))
    rows = [(t, "transfer_money") for t in make_utterances("transfer_money", 70, seed=11)[-6:]]
    release = update_release(
        write_csv(tmp_path / "more.csv", rows), registry, "v1", overrides=HEAD_ONLY
    )
    metrics = registry.manifest(release)["metrics"]
    parent, child = load_release(registry, "v1"), load_release(registry, release)
    stored = len(parent.replay["transfer_money"])
    assert metrics["forward_only_examples"] == len(rows) + stored
    assert child.replay["opening_hours"] == parent.replay["opening_hours"]
    texts = [t for i in child.labels for t in child.replay[i]]
    fresh, _ = encode(IntentClassifier(child), texts, "release")
    assert torch.allclose(child.bank, torch.from_numpy(fresh), atol=2e-3)
    # The teacher holds the other intents' exemplars, at `distill.update_head_weight` when set.
    others = sum(len(ts) for i, ts in parent.replay.items() if i != "transfer_money")
    assert metrics["distilled_examples"] == others
    assert metrics["train"]["loss_per_epoch"][-1]["kd"] > 0
    unheld = update_release(
        write_csv(tmp_path / "more.csv", rows),
        registry,
        "v1",
        overrides={**HEAD_ONLY, "distill": {"update_head_weight": 0.0}},
    )
    assert registry.manifest(unheld)["metrics"]["distilled_examples"] == 0
    # The head moved; the encoder did not.
    assert not torch.equal(child.model.head.out_proj.weight, parent.model.head.out_proj.weight)
    lora = {n: p for n, p in child.model.encoder.named_parameters() if "lora_" in n}
    for name, value in parent.model.encoder.named_parameters():
        if "lora_" in name:
            assert torch.equal(lora[name], value), name


def test_a_head_only_update_can_keep_the_untouched_rows_and_logits(mean_pooled, tmp_path, capsys):
    """With `train.update_head_rows: changed` a head-alone update trains the rows of the
    updated intent and its neighbours only: every other intent's row, and so (same encoder, no
    dense layer) its logit on any utterance, is the parent's bit for bit. The default, all,
    trains every row."""
    from intent_ci.pipeline import update_release

    registry = Registry(shutil.copytree(mean_pooled, tmp_path / "adapters"))
    rows = [(t, "transfer_money") for t in make_utterances("transfer_money", 70, seed=11)[-6:]]
    changed = {"train": {"update_mode": "head", "update_head_rows": "changed"}}
    release = update_release(
        write_csv(tmp_path / "more.csv", rows), registry, "v1", overrides=changed
    )
    neighbours = registry.manifest(release)["metrics"]["neighbours"]
    parent, child = load_release(registry, "v1"), load_release(registry, release)
    moving = {"transfer_money", *neighbours["transfer_money"]}
    untouched = [k for k, label in enumerate(parent.labels) if label not in moving]
    assert untouched, neighbours  # something must be held for the test to mean anything
    before, after = parent.model.head.out_proj.weight, child.model.head.out_proj.weight
    assert torch.equal(after[untouched], before[untouched])
    moved = parent.labels.index("transfer_money")
    assert not torch.equal(after[moved], before[moved])
    texts = make_utterances("opening_hours", 5, seed=2) + [t for t, _ in rows]
    old = IntentClassifier(parent).logits(texts)
    new = IntentClassifier(child).logits(texts)
    assert torch.equal(new[:, untouched], old[:, untouched])
    loose = update_release(
        write_csv(tmp_path / "more.csv", rows), registry, "v1", overrides=HEAD_ONLY
    )
    free = load_release(registry, loose).model.head.out_proj.weight
    assert not torch.equal(free[untouched], before[untouched])
    capsys.readouterr()
    assert main(["show", release, "--registry", str(registry.root)]) == 0
    assert "only the changed intents' rows trained" in capsys.readouterr().out
    assert main(["show", loose, "--registry", str(registry.root)]) == 0
    assert "only the changed intents' rows trained" not in capsys.readouterr().out
    from intent_ci.hub import render_section

    cards = {
        name: render_section({**registry.manifest(name), "release": name}, "0" * 64, None)
        for name in (release, loose)
    }
    assert "the head alone trained, only the changed intents' rows)" in cards[release]
    assert "the head alone trained)" in cards[loose]


def test_push_and_pull_an_update_release(updated, hub, tmp_path):  # noqa: F811
    """An update release and its parent go to a (stand-in) Hub and come back verified, with
    the same predictions; the model card says what the update changed."""
    from intent_ci.hub import HubConfig, pull_release, push_release

    registry, release, moved, _ = updated
    config = HubConfig(repo_id=REPO)
    assert list(push_release(registry, release, config).pushed) == ["v1", release]
    card = hub.files(REPO, release)["README.md"].decode()
    assert (
        "- updated: check_balance, opening_hours (6 corrected utterances; LoRA and head trained)"
        in card
    )
    dest = tmp_path / "pulled"
    assert pull_release(config, release, dest).pulled == ["v1", release]
    ours = IntentClassifier.load(registry, release, device="cpu").logits(moved)
    theirs = IntentClassifier.load(dest, release, device="cpu").logits(moved)
    assert torch.equal(ours, theirs)
    assert (
        Registry(dest).manifest(release)["corrections"]
        == Registry(registry).manifest(release)["corrections"]
    )


# ---- from the serve traffic log ------------------------------------------------------------------
def _reviewed_log(folder: Path, texts: list[str], labels: list[str | None]) -> Path:
    """A real `serve` traffic log of `texts` (every row predicted `card_lost`), then reviewed:
    each row gets `label` (None: not reviewed, no key)."""
    from intent_ci.traffic import TrafficLog

    log = TrafficLog(folder, max_bytes=1 << 20)
    predictions = [
        {"intent": "card_lost", "confidence": 0.4, "in_scope": False, "score": 1.0} for _ in texts
    ]
    log.record("v1", texts, predictions)
    log.close()
    (path,) = folder.glob("traffic-*.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row, label in zip(rows, labels, strict=True):
        if label is not None:
            row["label"] = label
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_serve_log_is_read_by_its_reviewed_label_never_its_prediction(tmp_path, caplog):
    from intent_ci.data import read_examples

    texts = make_utterances("transfer_money", 6, seed=12)
    labels = ["transfer_money", "transfer_money", None, "oos", "", "transfer_money"]
    texts[5] = texts[0]  # a repeat of a reviewed utterance, same label
    path = _reviewed_log(tmp_path / "log", texts, labels)
    with caplog.at_level("WARNING", logger="intent_ci.data"):
        data = read_examples(path, known_intents=["transfer_money"])
    assert list(data.dataset["intent"]) == ["transfer_money", "transfer_money", "oos"]
    assert list(data.dataset["text"]) == [texts[0], texts[1], texts[3]]
    assert "card_lost" not in data.dataset["intent"]  # the prediction is never a label
    assert "skipped 2 without a `label`" in caplog.text and "1 repeats" in caplog.text
    # Not reviewed at all: an error that says why.
    bare = _reviewed_log(tmp_path / "bare", texts[:3], [None] * 3)
    with pytest.raises(
        IntentCIError, match=r"no reviewed rows .*`intent` column is the release's own prediction"
    ):
        read_examples(bare, known_intents=["transfer_money"])
    # The same utterance reviewed two ways: the file and both lines.
    clash = _reviewed_log(tmp_path / "clash", [texts[0], texts[0]], ["transfer_money", "card_lost"])
    with pytest.raises(
        IntentCIError, match=r"traffic-.*\.jsonl:2: utterance .* labelled 'card_lost'"
    ):
        read_examples(clash, known_intents=["transfer_money", "card_lost"])


def test_update_learns_from_a_reviewed_serve_log(trained_registry, tmp_path, capsys):
    registry = Path(shutil.copytree(trained_registry, tmp_path / "adapters"))
    texts = make_utterances("transfer_money", 70, seed=11)[-3:] + ["what is the capital of france"]
    path = _reviewed_log(tmp_path / "log", texts, ["transfer_money", None, "transfer_money", "oos"])
    assert main(["update", "--data", str(path), "--registry", str(registry)]) == 0
    reg = Registry(registry)
    manifest = reg.manifest(reg.resolve("latest"))
    assert manifest["updated_intents"] == ["transfer_money"] and manifest["new_intents"] == []
    assert "card_lost" not in manifest["updated_intents"]
    capsys.readouterr()


def test_a_table_with_intent_and_label_columns_is_refused_as_ambiguous(tmp_path):
    """`text,intent,label` without the log's other columns: in a reviewed export `intent` is
    the release's prediction (it was read as the label: the update learned the release's own
    mistakes), in a dataset export `label` may be a class id (reading it would name intents
    0, 1, 2). The file cannot say which, so it is refused; `text,label` is reviewed traffic."""
    from intent_ci.data import read_examples

    texts = make_utterances("transfer_money", 3, seed=13)
    path = tmp_path / "reviewed.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "intent", "label"])
        writer.writerows([[texts[0], "card_lost", "transfer_money"], [texts[1], "card_lost", ""]])
    with pytest.raises(IntentCIError, match=r"reviewed.csv: has both an `intent` and a `label`"):
        read_examples(path, known_intents=["transfer_money", "card_lost"])
    bare = tmp_path / "bare.csv"
    bare.write_text(f"text,label\n{texts[0]},transfer_money\n{texts[1]},\n", encoding="utf-8")
    data = read_examples(bare, known_intents=["transfer_money"])
    assert list(data.dataset["intent"]) == ["transfer_money"] and data.reviewed


def test_update_skips_reviewed_rows_that_confirm_what_the_release_stores(
    trained_registry, tmp_path, capsys, caplog
):
    """A reviewer confirming the release's answer on an utterance in its replay memory teaches
    nothing: in reviewed traffic the row is skipped (in a fixes file it is refused, see
    test_bad_input); a log of nothing but such rows is refused."""
    registry = Path(shutil.copytree(trained_registry, tmp_path / "adapters"))
    reg = Registry(registry)
    stored = load_release(reg, "v2").replay["card_lost"][:2]
    texts = [stored[0], *make_utterances("transfer_money", 70, seed=11)[-2:]]
    path = _reviewed_log(tmp_path / "log", texts, ["card_lost", "transfer_money", "transfer_money"])
    with caplog.at_level("WARNING", logger="intent_ci.pipeline"):
        assert main(["update", "--data", str(path), "--registry", str(registry)]) == 0
    assert "skipped 1 reviewed row(s) whose utterance release v2 already stores" in caplog.text
    manifest = reg.manifest(reg.resolve("latest"))
    assert manifest["updated_intents"] == ["transfer_money"] and manifest["corrections"] == []
    only = _reviewed_log(tmp_path / "only", stored, ["card_lost", "card_lost"])
    latest = reg.resolve("latest")
    assert main(["update", "--data", str(only), "--registry", str(registry)]) == 2
    assert "every reviewed row labels an utterance release" in capsys.readouterr().err
    assert reg.resolve("latest") == latest


def test_a_head_only_update_reports_no_fisher_examples(trained_registry, tmp_path):
    """EWC's Fisher is estimated only where LoRA trains; a head-alone update (the default) with
    `distill.ewc_weight` set makes no such pass, so it must not count one in its cost."""
    from intent_ci.pipeline import update_release

    registry = Registry(shutil.copytree(trained_registry, tmp_path / "adapters"))
    rows = [(t, "transfer_money") for t in make_utterances("transfer_money", 70, seed=11)[-4:]]
    more = write_csv(tmp_path / "more.csv", rows)
    release = update_release(more, registry, "v1", overrides={"distill": {"ewc_weight": 1.0}})
    metrics = registry.manifest(release)["metrics"]
    assert metrics["update_mode"] == "head" and metrics["fisher_examples"] == 0
