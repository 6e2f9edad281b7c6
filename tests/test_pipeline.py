"""init -> add-intent -> eval -> predict, end to end through the CLI, on the tiny RoBERTa."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from intent_ci.cli import main
from intent_ci.config import ModelConfig
from intent_ci.modeling import load_backbone
from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier, load_release
from tests.conftest import BASE_INTENTS, tiny_overrides


@pytest.fixture
def config_file(tmp_path, tiny_backbone):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_overrides(tiny_backbone)))
    return path


def test_cli_init_add_intent_eval_predict(tmp_path, data_dir, config_file, capsys):
    registry = tmp_path / "adapters"
    assert (
        main(
            [
                "init",
                "--data",
                str(data_dir / "base"),
                "--config",
                str(config_file),
                "--registry",
                str(registry),
            ]
        )
        == 0
    )
    assert Registry(registry).releases() == ["v1"]
    assert (
        main(
            [
                "add-intent",
                "--data",
                str(data_dir / "new" / "refund_status.txt"),
                "--registry",
                str(registry),
                "--eval-data",
                str(data_dir / "test"),
            ]
        )
        != 0
    ), "eval data with an intent neither release knows (report_damage) must be refused"
    err = capsys.readouterr().err
    assert "report_damage" in err and "not in release" in err

    only_known = tmp_path / "test_known"
    only_known.mkdir()
    for intent in [*BASE_INTENTS, "refund_status"]:
        (only_known / f"{intent}.txt").write_bytes(
            (data_dir / "test" / f"{intent}.txt").read_bytes()
        )
    assert (
        main(
            [
                "add-intent",
                "--data",
                str(data_dir / "new" / "refund_status.txt"),
                "--registry",
                str(registry),
                "--eval-data",
                str(only_known),
            ]
        )
        == 0
    )
    reg = Registry(registry)
    assert reg.releases() == ["v1", "v2"] and reg.latest() == "v2"
    manifest = reg.manifest("v2")
    assert manifest["parent"] == "v1"
    assert manifest["intents"] == [*BASE_INTENTS, "refund_status"]
    assert manifest["new_intents"] == ["refund_status"]
    # Plumbing, not quality: far above chance (1/5) on held-out utterances for a 2-layer random
    # model trained in seconds. Forgetting is measured on CLINC150 by scripts/bench_clinc.py.
    assert manifest["metrics"]["eval"]["new_intents_accuracy"] >= 0.7
    assert manifest["metrics"]["eval"]["old_intents_accuracy"] >= 0.5
    # The report names the old intents the parent took the new utterances for (four old
    # intents: the most-predicted one holds at least 25%, above the default share of 10%).
    neighbours = manifest["metrics"]["neighbours"]["refund_status"]
    assert neighbours and set(neighbours) <= set(BASE_INTENTS)
    top, share = next(iter(neighbours.items()))
    assert f"parent took refund_status looks like {top} ({share:.0%})" in capsys.readouterr().out

    out_json = tmp_path / "out.json"
    assert (
        main(
            [
                "eval",
                "--release",
                "v2",
                "--data",
                str(only_known),
                "--against",
                "v1",
                "--json",
                str(out_json),
                "--registry",
                str(registry),
            ]
        )
        == 0
    )
    result = json.loads(out_json.read_text())
    for key in ("accuracy", "old_intents_accuracy", "new_intents_accuracy", "per_intent"):
        assert key in result
    assert set(result["per_intent"]) == {*BASE_INTENTS, "refund_status"}
    assert result["per_intent"]["refund_status"]["n"] == 10
    assert result["new_intents"] == ["refund_status"]
    assert result["against"]["release"] == "v1"
    assert set(result["against"]["per_intent_delta"]) == set(BASE_INTENTS)
    # The manifest's eval (in-memory model right after training) equals the loaded release's.
    for intent, row in result["per_intent"].items():
        assert manifest["metrics"]["eval"]["per_intent"][intent]["correct"] == row["correct"]
    capsys.readouterr()

    assert (
        main(
            [
                "predict",
                "--release",
                "latest",
                "--registry",
                str(registry),
                "--json",
                "refund credited please",
            ]
        )
        == 0
    )
    line = json.loads(capsys.readouterr().out.strip())
    assert line["intent"] == "refund_status" and 0 < line["confidence"] <= 1

    batch = tmp_path / "batch.txt"
    batch.write_text("card stolen help\nopen weekend hours please\n")
    assert main(["predict", "--input", str(batch), "--registry", str(registry), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    api = IntentClassifier.load(registry, "latest").predict(
        ["card stolen help", "open weekend hours please"]
    )
    assert [r["intent"] for r in rows] == [p.label for p in api]
    assert [r["confidence"] for r in rows] == [round(p.confidence, 4) for p in api]

    assert main(["releases", "--registry", str(registry), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [r["release"] for r in listing] == ["v1", "v2"] and listing[1]["latest"]
    assert main(["show", "v2", "--registry", str(registry)]) == 0
    shown = capsys.readouterr().out
    assert "refund_status" in shown
    assert f"neighbour refund_status looks like {top} ({share:.0%})" in shown


def test_add_intent_from_an_older_release(trained_registry, data_dir, tmp_path):
    import shutil

    registry = tmp_path / "adapters"
    shutil.copytree(trained_registry, registry)
    from intent_ci.pipeline import add_intents

    release = add_intents(data_dir / "new" / "report_damage.txt", registry, "v1")
    manifest = Registry(registry).manifest(release)
    assert release == "v3" and manifest["parent"] == "v1"
    assert manifest["intents"] == [*BASE_INTENTS, "report_damage"]


def test_add_intent_replays_without_a_teacher_unless_weighted(trained_registry, tmp_path):
    """By default add-intent learns from its replay memory alone: no teacher pass over the
    replayed rows and no row distilled. `distill.weight` > 0 brings the teacher back on every
    training row (add-intent has no corrected or updated rows to silence it on)."""
    import shutil

    from intent_ci.pipeline import add_intents

    registry = tmp_path / "adapters"
    shutil.copytree(trained_registry, registry)
    new = tmp_path / "new.txt"
    new.write_text("".join(f"report damage to my parcel number {i}\n" for i in range(8)))
    metrics = {}
    for weight in (None, 3.0):
        overrides = {"train": {"add_intent_epochs": 1}}
        if weight is not None:
            overrides["distill"] = {"weight": weight}
        release = add_intents(new, registry, "v1", overrides=overrides)
        metrics[weight] = Registry(registry).manifest(release)["metrics"]
    plain, taught = metrics[None], metrics[3.0]
    assert plain["replay_examples"] > 0 and plain["train_examples"] == taught["train_examples"]
    assert plain["distilled_examples"] == 0
    assert taught["distilled_examples"] == taught["train_examples"]
    teacher_pass = taught["forward_only_examples"] - plain["forward_only_examples"]
    assert teacher_pass == taught["replay_examples"]


def test_release_records_the_lora_targets_it_trained(trained_registry):
    """`lora_target_modules: null` resolves at init, and the manifest keeps the resolved list."""
    attention = ["query", "key", "value", "attention.output.dense"]
    for release in ("v1", "v2"):
        manifest = Registry(trained_registry).manifest(release)
        assert manifest["config"]["model"]["lora_target_modules"] == attention
    loaded = load_release(Registry(trained_registry), "v2")
    adapted = {
        n.split(".lora_A")[0].split("layer.0.")[-1]
        for n, _ in loaded.model.encoder.named_parameters()
        if "lora_A" in n and "layer.0." in n
    }
    assert adapted == {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
    }


def test_backbone_weights_unchanged_by_training(trained_registry, tiny_backbone):
    fresh = load_backbone(ModelConfig(backbone=str(tiny_backbone)))
    loaded = load_release(Registry(trained_registry), "v2")
    base_weights = {
        name.replace("base_model.model.", "").replace(".base_layer", ""): p
        for name, p in loaded.model.encoder.named_parameters()
        if "lora_" not in name
    }
    fresh_weights = dict(fresh.encoder.named_parameters())
    assert set(base_weights) == set(fresh_weights)
    for name, p in fresh_weights.items():
        assert torch.equal(base_weights[name], p), name
    assert loaded.manifest["backbone"]["fingerprint"] == fresh.fingerprint
    # LoRA did move: the release is not the bare backbone.
    lora_b = [p for n, p in loaded.model.encoder.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)


def test_save_load_round_trip_gives_identical_predictions(trained_registry):
    texts = [
        "refund credited please",
        "card lost now",
        "open weekend",
        "send wire to payee",
        "hello",
    ]
    first = IntentClassifier.load(trained_registry, "v2")
    second = IntentClassifier.load(trained_registry, "latest")
    assert first.name == second.name == "v2"
    assert torch.equal(first.logits(texts), second.logits(texts))
    assert [p.label for p in first.predict(texts, batch_size=2)] == [
        p.label for p in second.predict(texts)
    ]


def test_batched_logits_come_back_in_input_order(trained_registry):
    """Batches are formed by length to save padding; rows must still match the input order."""
    clf = IntentClassifier.load(trained_registry, "v2")
    texts = ["send wire to payee today please now", "hello", "card lost now", "refund", "open"]
    one_by_one = torch.cat([clf.logits([t]) for t in texts])
    torch.testing.assert_close(clf.logits(texts, batch_size=2), one_by_one, rtol=1e-5, atol=1e-5)
    assert clf.logits([]).shape == (0, len(clf.intents))


def test_release_records_everything_needed_to_rebuild_it(trained_registry):
    manifest = Registry(trained_registry).manifest("v2")
    for key in (
        "parent",
        "intents",
        "backbone",
        "config",
        "metrics",
        "files",
        "versions",
        "created_at",
        "replay",
        "oos",
    ):
        assert key in manifest, key
    assert set(manifest["files"]) == {
        "adapter_model.safetensors",
        "adapter_config.json",
        "head.safetensors",
        "labels.json",
        "replay.json",
        "calibration.json",
        "oos_bank.safetensors",
    }
    assert manifest["backbone"]["fingerprint"].startswith("sha256:")
    assert manifest["config"]["model"]["lora_r"] == 4
    # replay memory: parent's exemplars plus the new intent's, bounded per intent
    replay = json.loads((trained_registry / "v2" / "replay.json").read_text())["exemplars"]
    assert set(replay) == {*BASE_INTENTS, "refund_status"}
    assert all(1 <= len(v) <= 8 for v in replay.values())
    assert manifest["versions"]["peft"] and manifest["versions"]["torch"]


def test_python_api_mirrors_cli(trained_registry):
    import intent_ci

    clf = intent_ci.IntentClassifier.load(trained_registry, "v1")
    preds = clf.predict(["card stolen", "weekend hours"])
    assert [p.label for p in preds] == ["card_lost", "opening_hours"]
    assert all(0 < p.confidence <= 1 for p in preds)
    assert clf.intents == BASE_INTENTS


def test_frozen_old_rows_and_feature_term_in_add_intent(trained_registry, data_dir, tmp_path):
    """freeze_old_rows without neighbour_rows keeps every old head row bit-identical; the feature term is scaled by
    sqrt(old / new intents), recorded, and its loss is reported per epoch."""
    import shutil

    from intent_ci.pipeline import add_intents

    registry = tmp_path / "adapters"
    shutil.copytree(trained_registry, registry)
    overrides = {
        "train": {"freeze_old_rows": True, "neighbour_rows": False},
        "distill": {"feature_weight": 2.0},
    }
    release = add_intents(
        data_dir / "new" / "report_damage.txt", registry, "v1", overrides=overrides
    )
    parent_head = load_release(Registry(registry), "v1").model.head
    child_head = load_release(Registry(registry), release).model.head
    parent, child = parent_head.out_proj.weight, child_head.out_proj.weight
    assert torch.equal(child[: len(BASE_INTENTS)], parent)
    assert not torch.equal(child[len(BASE_INTENTS) :], torch.zeros_like(child[-1:]))
    # The tiny RoBERTa pools the first token, so the head has a dense layer; it is frozen
    # (train.freeze_dense) and stays bit-identical, as in the default v2 of the fixture.
    v2_head = load_release(Registry(registry), "v2").model.head
    for head in (child_head, v2_head):
        assert torch.equal(head.dense.weight, parent_head.dense.weight)
        assert torch.equal(head.dense.bias, parent_head.dense.bias)
    metrics = Registry(registry).manifest(release)["metrics"]
    assert metrics["feature_weight"] == pytest.approx(2.0 * (len(BASE_INTENTS) / 1) ** 0.5)
    epochs = metrics["train"]["loss_per_epoch"]
    assert all(e["feature"] >= 0 for e in epochs) and any(e["feature"] > 0 for e in epochs)
    # Without the freezes the same run moves the old rows and the dense layer.
    release = add_intents(
        data_dir / "new" / "report_damage.txt",
        registry,
        "v1",
        overrides={"train": {"freeze_old_rows": False, "freeze_dense": False}},
    )
    moved = load_release(Registry(registry), release).model.head
    assert not torch.equal(moved.out_proj.weight[: len(BASE_INTENTS)], parent)
    assert not torch.equal(moved.dense.weight, parent_head.dense.weight)


def test_l2_and_ewc_to_the_parent_hold_the_lora_weights(trained_registry, data_dir, tmp_path):
    """`distill.l2_weight` and `distill.ewc_weight` pull the child's LoRA weights back to the
    parent's: they move less than without, the term is logged per epoch, EWC's Fisher pass is
    counted, and EWC without a replay memory is refused before anything is written."""
    import shutil

    from intent_ci.errors import IntentCIError
    from intent_ci.pipeline import add_intents

    registry = tmp_path / "adapters"
    shutil.copytree(trained_registry, registry)

    def lora(release: str) -> dict[str, torch.Tensor]:
        model = load_release(Registry(registry), release).model
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    parent = lora("v1")

    def moved(release: str) -> float:
        child = lora(release)
        return sum(float((child[n] - v).square().sum()) for n, v in parent.items())

    new = data_dir / "new" / "report_damage.txt"
    free = add_intents(new, registry, "v1")
    held = {
        term: add_intents(new, registry, "v1", overrides={"distill": {f"{term}_weight": 50.0}})
        for term in ("l2", "ewc")
    }
    for term, release in held.items():
        assert moved(release) < 0.5 * moved(free), term
        metrics = Registry(registry).manifest(release)["metrics"]
        assert all(e["anchor"] > 0 for e in metrics["train"]["loss_per_epoch"])
        fisher = metrics["fisher_examples"]
        assert fisher == (metrics["replay_examples"] if term == "ewc" else 0)
    assert Registry(registry).manifest(held["ewc"])["metrics"]["replay_examples"] > 0

    before = Registry(registry).releases()
    with pytest.raises(IntentCIError, match=r"`distill.ewc_weight` needs replayed memory rows"):
        add_intents(
            new,
            registry,
            "v1",
            overrides={"distill": {"ewc_weight": 1.0}, "replay": {"enabled": False}},
        )
    assert Registry(registry).releases() == before


def test_add_intent_without_replay_or_teacher_warns_that_nothing_holds_the_old_intents(
    trained_registry, data_dir, tmp_path, caplog
):
    """Replay off and distillation at add-intent's default weight (0): the release learns the new
    rows alone (naive fine-tuning, a benchmark baseline), so it is trained, with a warning."""
    from intent_ci.pipeline import add_intents

    registry = shutil.copytree(trained_registry, tmp_path / "adapters")
    new = data_dir / "new" / "report_damage.txt"
    with caplog.at_level("WARNING", logger="intent_ci.pipeline"):
        add_intents(new, registry, "v1", overrides={"replay": {"enabled": False}})
    assert "replay is off and so is distillation (distill.weight 0)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="intent_ci.pipeline"):
        add_intents(
            new, registry, "v1", overrides={"replay": {"enabled": False}, "distill": {"weight": 3}}
        )
    assert "nothing in training holds" not in caplog.text


def test_neighbours_replay_their_whole_memory_and_only_their_rows_train(
    trained_registry, data_dir, tmp_path
):
    """With neighbour_share, the old intents the parent takes the new utterances for are recorded,
    replay their whole memory and (neighbour_rows) train their head rows; every other old row
    stays bit-identical."""
    import shutil

    from intent_ci.pipeline import add_intents

    registry = tmp_path / "adapters"
    shutil.copytree(trained_registry, registry)
    # Four old intents: the most-predicted one always holds at least a quarter of the utterances.
    overrides = {
        "replay": {"neighbour_share": 0.25, "train_per_intent": 1, "new_ratio": 0.0},
        "train": {"neighbour_rows": True},
    }
    release = add_intents(
        data_dir / "new" / "report_damage.txt", registry, "v1", overrides=overrides
    )
    reg = Registry(registry)
    metrics = reg.manifest(release)["metrics"]
    neighbours = metrics["neighbours"]["report_damage"]
    assert neighbours and set(neighbours) <= set(BASE_INTENTS)
    assert all(share >= 0.25 for share in neighbours.values())
    assert list(neighbours.values()) == sorted(neighbours.values(), reverse=True)
    memory = load_release(reg, "v1").replay
    expected = sum(len(memory[i]) if i in neighbours else 1 for i in BASE_INTENTS)
    assert metrics["replay_examples"] == expected

    parent = load_release(reg, "v1").model.head.out_proj.weight
    child = load_release(reg, release).model.head.out_proj.weight
    for row, intent in enumerate(BASE_INTENTS):
        same = torch.equal(child[row], parent[row])
        assert same == (intent not in neighbours), intent


def _pooled_of(model, texts, backbone, batch_size):
    """Pooled embeddings of `texts` through `model`, batched as the pipeline's feature pass."""
    from intent_ci.config import ReleaseConfig
    from intent_ci.pipeline import make_accelerator
    from intent_ci.training import compute_features, make_loader, tokenize

    accelerator = make_accelerator(ReleaseConfig())
    data = tokenize(backbone.tokenizer, texts, [0] * len(texts), 16, accelerator)
    loader = accelerator.prepare(make_loader(data, backbone.tokenizer, batch_size, shuffle=False))
    return compute_features(model, loader, accelerator).pooled


@pytest.mark.parametrize("exemplar_features", ["start", "trained"])
def test_init_herds_exemplars_on_pooled_embeddings(
    tiny_backbone, data_dir, tmp_path, exemplar_features, one_torch_thread
):
    """`init` herds its replay memory on pooled encoder embeddings, not through the head's
    dense layer (here randomly initialised, as before the identity start): of the frozen
    encoder (`start`, LoRA's B = 0) or of the trained release (`trained`, one more pass)."""
    from intent_ci.config import ReleaseConfig, apply_overrides
    from intent_ci.data import INTENT, TEXT, read_examples
    from intent_ci.modeling import IntentModel, build_head
    from intent_ci.pipeline import init_release
    from intent_ci.replay import select_exemplars

    overrides = tiny_overrides(
        tiny_backbone,
        model={"head_dense_init": "random"},
        train={"epochs": 2},
        replay={"exemplar_features": exemplar_features},
    )
    config = apply_overrides(ReleaseConfig(), overrides, source="test")
    registry = tmp_path / "adapters"
    init_release(data_dir / "base", registry, config)
    release = load_release(Registry(registry), "v1")
    held = {t for ts in release.calibration[0].values() for t in ts}
    data = read_examples(data_dir / "base").dataset
    rows = [(t, i) for t, i in zip(data[TEXT], data[INTENT], strict=True) if t not in held]
    texts, intents = [t for t, _ in rows], [i for _, i in rows]
    if exemplar_features == "trained":
        model = release.model
    else:
        backbone = load_backbone(config.model)
        model = IntentModel(backbone.encoder, build_head(config.model, 32, 4, "cls"), "cls")
    pooled = _pooled_of(model, texts, release.backbone, config.train.eval_batch_size)
    expected = select_exemplars(
        texts, intents, pooled, config.replay.per_intent, "herding", config.train.seed
    )
    assert release.replay == expected
    metrics = release.manifest["metrics"]
    passes = 2 if exemplar_features == "trained" else 1
    assert (
        metrics["forward_only_examples"]
        == passes * metrics["train_examples"]
        == passes * len(texts)
    )


def test_add_intent_can_herd_new_exemplars_on_the_trained_student(
    trained_registry, data_dir, tmp_path, one_torch_thread
):
    """With `replay.exemplar_features: trained` the new intent's memory is herded on the
    child's own pooled embeddings, after training (one more pass, counted in the metrics)."""
    import shutil

    from intent_ci.data import TEXT, read_examples
    from intent_ci.pipeline import add_intents
    from intent_ci.replay import select_exemplars

    registry = tmp_path / "adapters"
    shutil.copytree(trained_registry, registry)
    source = data_dir / "new" / "report_damage.txt"
    release = add_intents(
        source, registry, "v1", overrides={"replay": {"exemplar_features": "trained"}}
    )
    child = load_release(Registry(registry), release)
    held = set(child.calibration[0].get("report_damage", []))
    texts = [t for t in read_examples(source).dataset[TEXT] if t not in held]
    pooled = _pooled_of(child.model, texts, child.backbone, child.config.train.eval_batch_size)
    expected = select_exemplars(
        texts, ["report_damage"] * len(texts), pooled, child.config.replay.per_intent, "herding", 0
    )
    assert child.replay["report_damage"] == expected["report_damage"]
    assert child.replay["card_lost"] == load_release(Registry(registry), "v1").replay["card_lost"]
    metrics = child.manifest["metrics"]
    # Two feature passes over the new utterances, and no teacher pass (no distillation).
    assert metrics["distilled_examples"] == 0
    assert metrics["forward_only_examples"] == 2 * len(texts)


def test_the_teacher_pass_reuses_the_parent_feature_pass(trained_registry, one_torch_thread):
    """A child release scores only its replay rows with the teacher: the file's rows take the
    parent's head on the feature pass it made anyway, and the result equals a teacher pass
    over every training row (logits and pooled embeddings, row order kept)."""
    from accelerate import Accelerator

    from intent_ci.pipeline import _feature_pass, _teacher_targets
    from intent_ci.training import make_loader, predict_logits_and_pooled, tokenize
    from tests.conftest import make_utterances

    release = load_release(Registry(trained_registry), "v1")
    model, backbone, config = release.model.eval(), release.backbone, release.config
    accelerator = Accelerator(cpu=True)
    texts = make_utterances("card_lost", 9, seed=4) + make_utterances("opening_hours", 14, seed=6)
    rows = tokenize(backbone.tokenizer, texts, [0] * len(texts), 64, accelerator)
    first = _feature_pass(model, rows.select(range(9)), backbone, accelerator, config)
    with torch.no_grad():
        scored = (model.head.classify(first.features), first.pooled)
    logits, pooled = _teacher_targets(model, scored, rows, backbone, accelerator, config)
    loader = accelerator.prepare(make_loader(rows, backbone.tokenizer, 5, shuffle=False))
    want_logits, want_pooled = predict_logits_and_pooled(model, loader, accelerator)
    torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, want_pooled, atol=1e-5, rtol=1e-5)
    # Every row already scored: no pass, the given tensors back.
    full = (want_logits, want_pooled)
    same = _teacher_targets(model, full, rows, backbone, accelerator, config)
    assert same[0] is want_logits and same[1] is want_pooled


@pytest.mark.parametrize("per_pass", [False, True])
@pytest.mark.parametrize("adaptive", [False, True])
def test_the_anchor_weights_are_per_step_or_per_pass(trained_registry, per_pass, adaptive):
    """`distill.anchor_per_pass` divides the L2 weight among a pass's optimizer updates: each
    gets rows-per-update / rows-in-the-release of it; without it every update gets all of it.
    `distill.anchor_adaptive` then scales it by sqrt(old intents / changed intents)."""
    import datasets
    from accelerate import Accelerator

    from intent_ci.config import ReleaseConfig, apply_overrides
    from intent_ci.pipeline import _parameter_anchor

    model = load_release(Registry(trained_registry), "v1").model
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    rows = datasets.Dataset.from_dict({"row": list(range(100))})
    config = apply_overrides(
        ReleaseConfig(),
        {
            "distill": {
                "l2_weight": 8.0,
                "anchor_per_pass": per_pass,
                "anchor_adaptive": adaptive,
            },
            "train": {"batch_size": 4, "gradient_accumulation_steps": 2},
        },
        source="test",
    )
    accelerator = Accelerator(cpu=True)
    anchor = _parameter_anchor(model, rows, range(0), None, accelerator, config, 3.0)
    assert anchor.importance and all("lora_" in n for n in anchor.importance)
    expected = 8.0 * (4 * 2 / 100 if per_pass else 1.0) * (3.0 if adaptive else 1.0)
    for weight in anchor.importance.values():
        assert torch.allclose(weight, torch.full_like(weight, expected))
