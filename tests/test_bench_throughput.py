"""scripts/bench_throughput.py: its FLOPs formula against torch's own count, and a tiny run of
the training and inference timers (the code the GPU suite runs, here on the CPU)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_throughput")


def test_model_flops_formula_matches_torch_flop_counter(bench):
    torch.manual_seed(0)
    enc = bench.build_encoder("tiny-random")
    model, adapted = bench.build_intent_model(enc, 150)
    assert [a.split(".")[-1] for a in adapted] == ["dense", "key", "query", "value"]
    model.train()  # attention runs as plain matmuls (with dropout), which the counter sees
    tokens, batch = 64, 4
    inputs = {
        "input_ids": torch.randint(3, enc.vocab, (batch, tokens)),
        "attention_mask": torch.ones(batch, tokens, dtype=torch.long),
    }
    with FlopCounterMode(display=False) as forward:
        model(**inputs)
    with FlopCounterMode(display=False) as step:
        model(**inputs).float().sum().backward()
    formula = bench.flops_per_example(enc, tokens, 8, adapted, 150, distill=False)
    assert formula["forward"] == pytest.approx(forward.get_total_flops() / batch, rel=0.01)
    assert formula["train_step"] == pytest.approx(step.get_total_flops() / batch, rel=0.01)
    with_teacher = bench.flops_per_example(enc, tokens, 8, adapted, 150, distill=True)
    assert with_teacher["train_step"] == pytest.approx(formula["train_step"] + formula["forward"])


def test_training_and_inference_timers_run_on_a_tiny_encoder(bench, tmp_path):
    train_out, infer_out = tmp_path / "train.json", tmp_path / "infer.json"
    train = bench.cmd_train(
        argparse.Namespace(
            backbone="tiny-random",
            batch_size=4,
            seq_len=16,
            steps=2,
            warmup=1,
            labels=5,
            mixed_precision="bf16",
            distill=True,
            peak_tflops=1.0,
            json_out=str(train_out),
        )
    )
    assert json.loads(train_out.read_text()) == train
    assert train["processes"] == 1 and train["examples_per_s"] > 0
    assert train["padding_share"] == 0  # random ids of one length
    assert train["mfu"] == pytest.approx(train["achieved_tflops"] / 1.0)
    infer = bench.cmd_infer(
        argparse.Namespace(
            backbone="tiny-random",
            batch_size=4,
            examples=8,
            seq_len=16,
            rounds=1,
            labels=5,
            mixed_precision="no",
            random_release=True,
            json_out=str(infer_out),
        )
    )
    assert set(infer["orders"]) == {"random", "sorted"}
    for order in infer["orders"].values():
        assert set(order["variants"]) == {"bare_backbone", "release_lora", "release_merged"}
        assert order["merged_vs_bare"] > 0
