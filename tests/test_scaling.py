"""Scaling knobs that run on one CPU: mixed precision, gradient accumulation, the accelerate
config files under scripts/accelerate/, and LoRA merged into the encoder for serving."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_multi_gpu_env

from intent_ci.calibration import calibration_rows, score_parts, standardisation
from intent_ci.cli import main
from intent_ci.config import ReleaseConfig, apply_overrides
from intent_ci.errors import ReleaseVerificationError
from intent_ci.pipeline import init_release
from intent_ci.registry import Registry
from intent_ci.release import IntentClassifier, load_release
from tests.conftest import BASE_INTENTS, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = REPO / "scripts" / "accelerate"


def _config(backbone: Path, **train) -> ReleaseConfig:
    return apply_overrides(ReleaseConfig(), tiny_overrides(backbone, train=train), source="test")


# ---- mixed precision and accumulation -------------------------------------------------------------
def test_bf16_trains_under_cpu_autocast(tmp_path, tiny_backbone, data_dir):
    fp32 = init_release(data_dir / "base", tmp_path / "fp32", _config(tiny_backbone))
    bf16 = init_release(
        data_dir / "base", tmp_path / "bf16", _config(tiny_backbone, mixed_precision="bf16")
    )
    m32 = Registry(tmp_path / "fp32").verify(fp32)
    m16 = Registry(tmp_path / "bf16").verify(bf16)
    assert m16["training"]["mixed_precision"] == "bf16"
    assert m16["config"]["train"]["mixed_precision"] == "bf16"
    assert m32["training"]["mixed_precision"] == "no"
    # The same data, seed and steps: only bf16 rounding in the forward pass differs, so the
    # first epoch's loss is close but not equal (equal would mean autocast was silently off);
    # later epochs drift apart as rounding differences compound.
    loss32 = [e["loss"] for e in m32["metrics"]["train"]["loss_per_epoch"]]
    loss16 = [e["loss"] for e in m16["metrics"]["train"]["loss_per_epoch"]]
    assert loss16[0] != loss32[0]
    assert loss16[0] == pytest.approx(loss32[0], rel=0.05)
    # Weights are kept in fp32; the release loads and predicts like any other.
    clf = IntentClassifier.load(tmp_path / "bf16", bf16)
    assert all(p.dtype == torch.float32 for p in clf.model.parameters())
    # ... and scores as it was calibrated: the calibration passes after training run in full
    # precision, as the loaded release does (they once ran under the training's autocast).
    held = [t for t, _ in calibration_rows(clf.release.calibration[0], clf.intents)]
    logits, features = clf.logits_and_features(held)
    again = standardisation(score_parts(logits, features, clf.release.bank))
    for part, stats in m16["oos"]["standardise"].items():
        assert again[part]["mean"] == pytest.approx(stats["mean"], rel=1e-5, abs=1e-6), part
        assert again[part]["std"] == pytest.approx(stats["std"], rel=1e-5, abs=1e-6), part
    texts = [
        line
        for intent in BASE_INTENTS
        for line in (data_dir / "test" / f"{intent}.txt").read_text().splitlines()
    ]
    reference = IntentClassifier.load(tmp_path / "fp32", fp32).predict(texts)
    same = sum(a.label == b.label for a, b in zip(clf.predict(texts), reference, strict=True))
    assert same / len(texts) >= 0.8


@pytest.mark.skipif(torch.accelerator.is_available(), reason="fp16 runs where there is a GPU")
def test_fp16_without_a_gpu_is_a_clear_error(tmp_path, tiny_backbone, data_dir, capsys):
    config = tmp_path / "fp16.yaml"
    config.write_text(
        yaml.safe_dump(tiny_overrides(tiny_backbone, train={"mixed_precision": "fp16"}))
    )
    registry = tmp_path / "adapters"
    argv = ["init", "--data", str(data_dir / "base"), "--config", str(config)]
    assert main([*argv, "--registry", str(registry)]) == 2
    err = capsys.readouterr().err
    assert "`train.mixed_precision`: fp16 needs a GPU" in err and "use bf16" in err
    assert "Traceback" not in err and not Registry(registry).releases()


@pytest.mark.parametrize("accumulate", [1, 3])
def test_batch_size_and_gradient_accumulation_come_from_the_config(
    tmp_path, tiny_backbone, data_dir, accumulate
):
    config = _config(tiny_backbone, epochs=2, batch_size=16, gradient_accumulation_steps=accumulate)
    release = init_release(data_dir / "base", tmp_path / "adapters", config)
    manifest = Registry(tmp_path / "adapters").manifest(release)
    train = manifest["metrics"]["train"]
    # The calibration utterances held out for out-of-scope rejection are never trained on.
    rows = 160 - manifest["oos"]["calibration"]["in_scope"]
    batches = math.ceil(rows / 16)  # per epoch
    assert train["steps"] == batches * 2
    # Accelerate also updates at the end of each epoch: 9 batches, 3 per update -> 3 updates.
    assert train["optimizer_steps"] == math.ceil(batches / accumulate) * 2
    assert train["examples_trained"] == rows * 2


def test_the_schedule_spans_every_step_with_gradient_accumulation(tiny_backbone, monkeypatch):
    """3 batches an epoch at 2 per step: Accelerate steps twice an epoch (once at the epoch's
    end), and the linear schedule must reach its last step with a learning rate above 0 (it
    planned 1.5 steps an epoch, so the last quarter of the steps ran at 0)."""
    from intent_ci.modeling import IntentModel, attach_lora, build_head, load_backbone
    from intent_ci.pipeline import make_accelerator
    from intent_ci.training import tokenize, train
    from tests.conftest import make_utterances

    config = _config(
        tiny_backbone, epochs=4, batch_size=16, gradient_accumulation_steps=2, warmup_ratio=0.0
    )
    accelerator = make_accelerator(config)
    backbone = load_backbone(config.model)
    hidden = backbone.encoder.config.hidden_size
    head = build_head(config.model, hidden, 2, backbone.pooling)
    model = IntentModel(attach_lora(backbone.encoder, config.model), head, backbone.pooling)
    texts = make_utterances("card_lost", 24, seed=0) + make_utterances("check_balance", 24, seed=0)
    rows = tokenize(backbone.tokenizer, texts, [0] * 24 + [1] * 24, 16, accelerator)  # 3 batches
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    _, stats = train(model, rows, backbone.tokenizer, accelerator, config.train)
    assert stats.optimizer_steps == len(seen) == 8
    peak = config.train.lr
    assert seen == pytest.approx([peak * (8 - k) / 8 for k in range(8)])  # linear, none at 0


# ---- accelerate config files ----------------------------------------------------------------------
EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1, 1),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8, 1),
    "multi_node.yaml": (DistributedType.MULTI_GPU, 16, 2),
}


def test_every_accelerate_config_file_is_covered():
    assert sorted(p.name for p in ACCELERATE_CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_is_accepted_by_accelerate_launch(name):
    """Each file goes through accelerate's own loader, `accelerate launch` argument handling
    and the environment it hands to torchrun; no GPU is needed for that."""
    path = ACCELERATE_CONFIGS / name
    kind, processes, machines = EXPECTED[name]
    loaded = load_config_from_file(str(path))
    assert (loaded.distributed_type, loaded.num_processes, loaded.num_machines) == EXPECTED[name]
    parser = launch_command_parser()
    known = {action.dest for action in parser._actions}
    for key in loaded.fsdp_config:
        # accelerate launch copies unknown keys silently; a typo would be ignored.
        assert key in known, f"{name}: fsdp_config.{key} is not an accelerate launch option"
    extra = ["--machine_rank", "1"] if machines > 1 else []  # the second machine's command
    args = parser.parse_args(
        ["--config_file", str(path), *extra, str(REPO / "scripts" / "add_intent.py")]
    )
    _validate_launch_command(args)
    assert args.num_processes == processes and args.num_machines == machines
    assert args.mixed_precision == "no", "intent-ci takes mixed precision from its own config"
    if kind == DistributedType.NO:
        assert not args.multi_gpu and not args.use_fsdp
        return
    env = prepare_multi_gpu_env(args)
    assert int(args.nproc_per_node) == processes // machines
    if machines > 1:
        assert args.nnodes == str(machines) and args.node_rank == 1
        assert args.rdzv_endpoint == f"{loaded.main_process_ip}:{loaded.main_process_port}"
    assert env.get("ACCELERATE_USE_FSDP", "false") == "false"


def test_a_launch_with_fsdp_stops_with_a_clear_error(
    tmp_path, monkeypatch, trained_registry, data_dir, capsys
):
    """FSDP is not supported; `accelerate launch` with an FSDP config must not run DDP quietly."""
    config = tmp_path / "fsdp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "compute_environment": "LOCAL_MACHINE",
                "distributed_type": "FSDP",
                "num_processes": 2,
                "num_machines": 1,
                "mixed_precision": "no",
                "fsdp_config": {"fsdp_version": 2},
            }
        ),
        encoding="utf-8",
    )
    args = launch_command_parser().parse_args(
        ["--config_file", str(config), str(REPO / "scripts" / "add_intent.py")]
    )
    _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    before = {p.name for p in trained_registry.iterdir()}
    argv = ["add-intent", "--data", str(data_dir / "new" / "report_damage.txt")]
    assert main([*argv, "--registry", str(trained_registry)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(
        "intent-ci: error: FSDP is not supported (the launcher set ACCELERATE_USE_FSDP=true): "
    ), err
    assert "scripts/accelerate/multi_gpu.yaml" in err
    assert {p.name for p in trained_registry.iterdir()} == before


# ---- LoRA merged for serving ----------------------------------------------------------------------
def test_merged_lora_predicts_like_the_adapter(trained_registry, data_dir):
    texts = [
        line
        for f in sorted((data_dir / "test").glob("*.txt"))
        for line in f.read_text().splitlines()
    ]
    plain = IntentClassifier.load(trained_registry, "v2", device="cpu")
    merged = IntentClassifier.load(trained_registry, "v2", device="cpu", merge_lora=True)
    assert any("lora_" in n for n, _ in plain.model.named_parameters())
    assert not any("lora_" in n for n, _ in merged.model.named_parameters())
    # The LoRA update is not negligible: merged weights differ from the bare backbone's.
    bare = load_release(Registry(trained_registry), "v2").backbone.encoder
    merged_q = merged.model.encoder.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(merged_q, bare.encoder.layer[0].attention.self.query.weight)
    a, b = plain.logits(texts), merged.logits(texts)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()
    assert [p.label for p in plain.predict(texts)] == [p.label for p in merged.predict(texts)]


def test_a_merged_backbone_cannot_load_another_release(trained_registry):
    merged = IntentClassifier.load(trained_registry, "v2", merge_lora=True)
    with pytest.raises(ReleaseVerificationError, match="merged-lora"):
        load_release(Registry(trained_registry), "v1", backbone=merged.release.backbone)


def test_merge_lora_leaves_other_loads_untouched(trained_registry):
    before = IntentClassifier.load(trained_registry, "v1").logits(["card lost"])
    IntentClassifier.load(trained_registry, "v2", merge_lora=True)
    after = IntentClassifier.load(trained_registry, "v1").logits(["card lost"])
    assert torch.equal(before, after)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_batched_logits_are_in_input_order_and_match_one_at_a_time(trained_registry, data_dir):
    """logits() batches utterances by length; the results come back in the caller's order."""
    texts = [
        line
        for f in sorted((data_dir / "test").glob("*.txt"))
        for line in f.read_text().splitlines()
    ][:23]
    texts[3] = texts[3] + " please please please now today"  # uneven lengths
    clf = IntentClassifier.load(trained_registry, "v2", device="cpu")
    batched = clf.logits(texts, batch_size=4)
    single = torch.cat([clf.logits([t]) for t in texts])
    assert batched.shape == (23, len(clf.intents))
    assert torch.allclose(batched, single, atol=1e-5, rtol=1e-5)
    assert clf.logits([]).shape == (0, len(clf.intents))
