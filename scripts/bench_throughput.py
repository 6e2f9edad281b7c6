#!/usr/bin/env python
"""Training and inference throughput of intent-ci's model, with peak memory and MFU.

Three suites, each writing ``<out>.json`` and ``<out>.md`` that name the hardware and the command:

    python scripts/bench_throughput.py cpu          # MiniLM on CPU: 1 vs 2 processes, merged vs bare
    python scripts/bench_throughput.py gpu          # roberta-base size, bf16, seq 64: examples/s, MFU
    python scripts/bench_throughput.py gpu --tiny   # the same code on a tiny encoder: a CPU smoke run

and two building blocks the suites run in fresh subprocesses (so each gets its own peak memory):

    python scripts/bench_throughput.py train --backbone packaged:all-MiniLM-L6-v2 --batch-size 32
    torchrun --nproc_per_node 2 scripts/bench_throughput.py train ...   # data parallel, gloo/NCCL
    python scripts/bench_throughput.py infer --backbone packaged:all-MiniLM-L6-v2 --batch-size 64

What is timed. *Training*: the step of intent-ci's loop (`intent_ci.training`): student forward
through the frozen encoder with LoRA and the head, `global_batch_loss`, backward, AdamW step,
on batches collated beforehand (collation is timed separately and reported, to show whether
data loading would limit). ``--distill`` adds the frozen teacher's forward pass, as add-intent
does. *Inference*: forward passes of (a) the bare backbone (encoder + pooling), (b) a release
with its LoRA adapter as trained, (c) the same release merged for serving
(``IntentClassifier(merge_lora=True)``: LoRA folded into the weights). Every batch runs through
a, b and c back to back in a rotating order, so that load changes on a shared machine hit all
three alike; each variant's time is summed per round and the median round is kept.

Tokens: *real* tokens are non-padding tokens; *padded* tokens are what the model computes on
(batch x longest utterance in the batch). Inference is timed on random batches and on batches
of utterances of similar length ("sorted", what `IntentClassifier.logits` does); training keeps
random batches, as the recipe does.

Model FLOPs per example (the MFU numerator), for L tokens, hidden h, FFN width f, n layers,
LoRA rank r on m projections per layer, and C intents:

* forward, per layer and token: ``2 (4 h^2 + 2 h f)`` for the Q, K, V, output and FFN matmuls,
  ``4 L h`` for attention scores and the weighted sum, ``4 h r m`` for the LoRA branches;
* head, per example: ``2 h^2`` (dense, with cls pooling) + ``2 h C``;
* backward: the backbone is frozen, so its linear layers need only activation gradients
  (``dX = dY W^T``: 1x their forward FLOPs, no weight gradients), except the first layer's
  Q, K, V projections whose input (the embeddings) needs none; attention's two matmuls have
  activations on both sides, so 2x (less the first layer's key gradient: its keys come from
  frozen weights and embeddings); LoRA and head weights get both gradients, so 2x;
* a training step is forward + backward (about 2x the frozen matmuls, 3x attention, LoRA and
  head); ``--distill`` adds one more forward. Embedding lookups, layer norms, softmax and
  the optimizer are not counted (the usual MFU convention). tests/test_bench_throughput.py
  checks the formula against torch's FlopCounterMode on the real model. MFU = model FLOPs per second
  divided by the GPU's dense bf16 peak (``--peak-tflops`` overrides the table below).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

RESULTS = REPO / "scripts" / "results"
CLINC = REPO.parent / "shared" / "datasets" / "clinc150" / "data_full.json"
MINILM = "packaged:all-MiniLM-L6-v2"
# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets, in TFLOP/s.
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
}


# ---- model and data ---------------------------------------------------------------------------------
@dataclass
class Encoder:
    model: torch.nn.Module
    pooling: str
    hidden: int
    layers: int
    ffn: int
    vocab: int
    tokenizer: object | None


def build_encoder(backbone: str) -> Encoder:
    """`roberta-base-random` / `tiny-random`: RobertaConfig() (or a tiny one) with random
    weights; anything else is loaded through intent-ci (`load_backbone`)."""
    from transformers import RobertaConfig, RobertaModel

    from intent_ci.config import ModelConfig
    from intent_ci.modeling import load_backbone

    if backbone in ("roberta-base-random", "tiny-random"):
        config = (
            RobertaConfig()
            if backbone == "roberta-base-random"
            else RobertaConfig(
                vocab_size=99,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=37,
            )
        )
        model = RobertaModel(config, add_pooling_layer=False).requires_grad_(False).eval()
        tokenizer, pooling = None, "cls"
    else:
        loaded = load_backbone(ModelConfig(backbone=backbone))
        model, tokenizer, pooling = loaded.encoder, loaded.tokenizer, loaded.pooling
    c = model.config
    return Encoder(
        model,
        pooling,
        c.hidden_size,
        c.num_hidden_layers,
        c.intermediate_size,
        c.vocab_size,
        tokenizer,
    )


def build_intent_model(encoder: Encoder, num_labels: int, lora_r: int = 8):
    """Encoder + LoRA (intent-ci's default targets) + head, as a release has them; returns the
    model and the names of the adapted projections in one layer (e.g. query, key, value and
    attention.output.dense)."""
    from peft.tuners.lora import LoraLayer

    from intent_ci.config import ModelConfig
    from intent_ci.modeling import IntentModel, attach_lora, build_head

    cfg = ModelConfig(backbone="bench", lora_r=lora_r, lora_alpha=2 * lora_r)
    lora = attach_lora(encoder.model, cfg)
    head = build_head(cfg, encoder.hidden, num_labels, encoder.pooling)
    first = [
        name.split(".0.", 1)[1]
        for name, m in lora.named_modules()
        if isinstance(m, LoraLayer) and ".0." in name
    ]
    return IntentModel(lora, head, encoder.pooling), sorted(first)


def utterances(n: int, seed: int = 0) -> list[str]:
    """Real utterances: CLINC150 train if present, else the repository's data/ folder."""
    import random

    if CLINC.is_file():
        texts = [t for t, _ in json.loads(CLINC.read_text())["train"]]
    else:
        texts = [
            line
            for f in sorted((REPO / "data" / "base").glob("*.txt"))
            for line in f.read_text().splitlines()
        ]
    rng = random.Random(seed)
    rng.shuffle(texts)
    return (texts * (n // len(texts) + 1))[:n]


def make_batches(
    encoder: Encoder, n: int, batch_size: int, seq_len: int | None, sort: bool, seed: int = 0
) -> tuple[list[dict[str, torch.Tensor]], float]:
    """Batches of real utterances (dynamic padding) or of `seq_len` random token ids (no
    padding); returns them and the seconds collation took per batch."""
    generator = torch.Generator().manual_seed(seed)
    if seq_len is not None or encoder.tokenizer is None:
        length = seq_len or 64
        batches = [
            {
                "input_ids": torch.randint(
                    3, encoder.vocab, (batch_size, length), generator=generator
                ),
                "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
            }
            for _ in range(n // batch_size)
        ]
        return batches, 0.0
    texts = utterances(n, seed)
    encoded = encoder.tokenizer(texts, truncation=True, max_length=64)
    rows = list(range(n))
    if sort:
        rows.sort(key=lambda i: len(encoded["input_ids"][i]))
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(encoder.tokenizer)
    started = time.perf_counter()
    batches = []
    for start in range(0, n - batch_size + 1, batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate(
            [{k: encoded[k][i] for k in ("input_ids", "attention_mask")} for i in chunk]
        )
        batches.append({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    return batches, (time.perf_counter() - started) / max(len(batches), 1)


def token_counts(batches: list[dict[str, torch.Tensor]]) -> tuple[int, int]:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["attention_mask"].numel() for b in batches)
    return real, padded


QKV = ("query", "key", "value", "q", "k", "v", "q_lin", "k_lin", "v_lin")


def flops_per_example(
    enc: Encoder, tokens: float, lora_r: int, adapted: list[str], labels: int, distill: bool
) -> dict[str, float]:
    """Model FLOPs of one example of `tokens` tokens (see the module docstring); `adapted` names
    the projections of one layer that carry LoRA."""
    h, f, n = enc.hidden, enc.ffn, enc.layers
    frozen = n * tokens * 2 * (4 * h * h + 2 * h * f)
    attention = n * tokens * 4 * tokens * h
    lora = n * tokens * 4 * h * lora_r * len(adapted)
    head = 2 * h * h + 2 * h * labels
    forward = frozen + attention + lora + head
    # The first layer's Q, K, V projections and their LoRA down-projections read the embeddings,
    # which need no gradient, so their activation gradients are skipped. Without LoRA on K the
    # first layer's keys need no gradient either: one of attention's four backward matmuls.
    on_embeddings = sum(name.split(".")[-1] in QKV for name in adapted)
    keys_frozen = not any(name.split(".")[-1] in ("key", "k", "k_lin") for name in adapted)
    first_layer = tokens * 2 * (3 * h * h + h * lora_r * on_embeddings)
    first_layer += tokens * 2 * tokens * h if keys_frozen else 0.0
    backward = frozen + 2 * attention + 2 * lora + 2 * head - first_layer
    train = forward + backward + (forward if distill else 0.0)
    return {"forward": forward, "train_step": train}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, torch {torch.__version__}"
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.machine()}, torch {torch.__version__}"


def gpu_peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


# ---- building blocks ----------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> dict:
    """Time the training step; under torchrun every rank trains its own batches."""
    from intent_ci.config import ReleaseConfig, apply_overrides
    from intent_ci.pipeline import make_accelerator
    from intent_ci.training import global_batch_loss, real_rows

    config = apply_overrides(
        ReleaseConfig(), {"train": {"mixed_precision": args.mixed_precision}}, source="bench"
    )
    accelerator = make_accelerator(config)
    torch.manual_seed(0)
    enc = build_encoder(args.backbone)
    model, adapted = build_intent_model(enc, args.labels)
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if args.distill else None
    steps = args.warmup + args.steps
    n = steps * args.batch_size
    batches, collate_s = make_batches(
        enc, n, args.batch_size, args.seq_len, sort=False, seed=accelerator.process_index
    )
    labels = torch.Generator().manual_seed(accelerator.process_index)
    targets = [torch.randint(0, args.labels, (args.batch_size,), generator=labels) for _ in batches]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model, optimizer = accelerator.prepare(model, optimizer)
    if teacher is not None:
        teacher.to(accelerator.device)
    device = accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    from intent_ci.config import DistillConfig

    distill = DistillConfig()

    def step(batch: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        y = y.to(device, non_blocking=True)
        keep = real_rows(len(y), accelerator)
        logits = model(**batch)
        soft = None
        if teacher is not None:
            with torch.no_grad(), accelerator.autocast():
                soft = teacher(**batch)
        loss = global_batch_loss(
            logits,
            y,
            keep,
            accelerator,
            teacher_logits=soft,
            distill=distill if soft is not None else None,
        ).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    for batch, y in zip(batches[: args.warmup], targets[: args.warmup], strict=True):
        step(batch, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    accelerator.wait_for_everyone()
    started = time.perf_counter()
    for batch, y in zip(batches[args.warmup :], targets[args.warmup :], strict=True):
        step(batch, y)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    timed = batches[args.warmup :]
    real, padded = token_counts(timed)
    local = torch.tensor(
        [elapsed, len(timed) * args.batch_size, real, padded, peak_memory_mb(device)],
        dtype=torch.float64,
    )
    gathered = accelerator.gather(local.to(device)).cpu().view(accelerator.num_processes, -1)
    wall = float(gathered[:, 0].max())
    examples, real_t, padded_t = (float(gathered[:, i].sum()) for i in (1, 2, 3))
    per_example = flops_per_example(enc, padded_t / examples, 8, adapted, args.labels, args.distill)
    peak = gpu_peak_tflops(device, args.peak_tflops)
    achieved = per_example["train_step"] * examples / wall
    result = {
        "backbone": args.backbone,
        "processes": accelerator.num_processes,
        "threads_per_process": torch.get_num_threads(),
        "device": hardware(device),
        "mixed_precision": args.mixed_precision,
        "batch_size_per_process": args.batch_size,
        "seq_len": args.seq_len,
        "distill_teacher_forward": args.distill,
        "timed_steps_per_process": args.steps,
        "examples_per_s": examples / wall,
        "real_tokens_per_s": real_t / wall,
        "padded_tokens_per_s": padded_t / wall,
        "padding_share": 1 - real_t / padded_t,
        "collate_ms_per_batch": 1000 * collate_s,
        "step_ms": 1000 * wall / args.steps,
        "model_tflops_per_example_step": per_example["train_step"] / 1e12,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "peak_memory_mb_per_process": [round(float(m), 1) for m in gathered[:, 4]],
        "peak_memory_kind": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "peak RSS",
    }
    if accelerator.is_main_process and args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result


def _merged_release_model(enc: Encoder, args: argparse.Namespace, tmp: Path):
    """A real release on this backbone (trained one short epoch), loaded twice: with its LoRA
    adapter as trained, and merged for serving."""
    from intent_ci.config import ReleaseConfig, apply_overrides
    from intent_ci.pipeline import init_release
    from intent_ci.release import IntentClassifier

    config = apply_overrides(
        ReleaseConfig(),
        {"model": {"backbone": args.backbone}, "train": {"epochs": 1}, "replay": {"per_intent": 2}},
        source="bench",
    )
    data = REPO / "data" / "base"
    release = init_release(data, tmp / "adapters", config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plain = IntentClassifier.load(tmp / "adapters", release, device=device)
    merged = IntentClassifier.load(tmp / "adapters", release, device=device, merge_lora=True)
    return plain, merged, len(plain.intents)


def _time_paired(
    models: dict, batches: list[dict[str, torch.Tensor]], rounds: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per round for each model. Every batch goes through all models back to back, in
    an order that rotates from batch to batch, so load changes on a shared machine hit all
    alike; round 0 warms up and is dropped."""
    names = list(models)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for round_ in range(rounds + 1):
            spent = dict.fromkeys(names, 0.0)
            for i, b in enumerate(batches):
                for k in range(len(names)):
                    name = names[(i + k) % len(names)]
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    started = time.perf_counter()
                    models[name](b)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    spent[name] += time.perf_counter() - started
            if round_ > 0:
                for name in names:
                    times[name].append(spent[name])
    return times


def cmd_infer(args: argparse.Namespace) -> dict:
    """Bare backbone vs release (LoRA as trained) vs release merged for serving, on random
    and on length-sorted batches; weights cast to the inference dtype (bf16 with
    ``--mixed-precision bf16``), as a server would hold them."""
    from intent_ci.modeling import pool

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        enc = build_encoder(args.backbone)
        if enc.tokenizer is not None and not args.random_release:
            plain, merged, labels = _merged_release_model(enc, args, Path(tmp))
            lora_model, merged_model = plain.model, merged.model
        else:  # no tokenizer (random encoder): a release-shaped model with non-zero LoRA weights
            from intent_ci.modeling import merge_lora

            labels = args.labels
            lora_model, _ = build_intent_model(build_encoder(args.backbone), labels)
            with torch.no_grad():
                for name, p in lora_model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.02)
            merged_model = merge_lora(copy.deepcopy(lora_model))  # what merge_lora=True runs
    bare = enc.model.to(device=device, dtype=dtype).eval()
    lora_model = lora_model.to(device=device, dtype=dtype).eval()
    merged_model = merged_model.to(device=device, dtype=dtype).eval()
    models = {
        "bare_backbone": lambda b: pool(
            bare(**b).last_hidden_state, b["attention_mask"], enc.pooling
        ),
        "release_lora": lambda b: lora_model(**b),
        "release_merged": lambda b: merged_model(**b),
    }
    result = {
        "backbone": args.backbone,
        "device": hardware(device),
        "threads": torch.get_num_threads(),
        "dtype": str(dtype).replace("torch.", ""),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "orders": {},
    }
    for order in ("random", "sorted"):
        batches, _ = make_batches(
            enc, args.examples, args.batch_size, args.seq_len, sort=order == "sorted"
        )
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        real, padded = token_counts(batches)
        examples = len(batches) * args.batch_size
        times = _time_paired(models, batches, args.rounds, device)
        median = {name: statistics.median(t) for name, t in times.items()}
        per_example = flops_per_example(enc, padded / examples, 8, [], labels, False)["forward"]
        result["orders"][order] = {
            "examples": examples,
            "padding_share": 1 - real / padded,
            "variants": {
                name: {
                    "examples_per_s": examples / median[name],
                    "real_tokens_per_s": real / median[name],
                    "padded_tokens_per_s": padded / median[name],
                    "round_s": [round(t, 4) for t in times[name]],
                }
                for name in models
            },
            "merged_vs_bare": median["bare_backbone"] / median["release_merged"],
            "lora_vs_bare": median["bare_backbone"] / median["release_lora"],
            "forward_tflops_per_s_merged": per_example * examples / median["release_merged"] / 1e12,
        }
    result["peak_memory_mb"] = round(peak_memory_mb(device), 1)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


# ---- suites -------------------------------------------------------------------------------------------
def _run(
    argv: list[str], procs: int, threads: int, extra_env: dict[str, str] | None = None
) -> dict:
    """Run a building block in a fresh process group and return its JSON result."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        HF_HUB_OFFLINE="1",
        **(extra_env or {}),
    )
    launcher = [sys.executable]
    if procs > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(procs)]
    cmd = [*launcher, str(Path(__file__).resolve()), *argv, "--json-out", out]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-4000:]}")
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    return result


def _write(stem: Path, result: dict, lines: list[str]) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _train_row(label: str, r: dict) -> str:
    mem = ", ".join(f"{m:.0f}" for m in r["peak_memory_mb_per_process"])
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    return (
        f"| {label} | {r['processes']} x {r['threads_per_process']} | {r['examples_per_s']:.1f} | "
        f"{r['real_tokens_per_s']:.0f} | {r['padded_tokens_per_s']:.0f} | {100 * r['padding_share']:.0f}% | "
        f"{r['step_ms']:.0f} | {r['collate_ms_per_batch']:.1f} | {mfu} | {mem} |"
    )


TRAIN_HEADER = [
    "| run | processes x threads | examples/s | real tokens/s | padded tokens/s | padding | step ms | collate ms/batch | MFU | peak memory MB (per process) |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def _infer_rows(r: dict) -> list[str]:
    rows = []
    for order, o in r["orders"].items():
        for name, v in o["variants"].items():
            rows.append(
                f"| {name} | {order} | {100 * o['padding_share']:.0f}% | {v['examples_per_s']:.0f} | "
                f"{v['real_tokens_per_s']:.0f} | {v['padded_tokens_per_s']:.0f} |"
            )
    return rows


def _merge_summary(r: dict) -> str:
    parts = [
        f"{order}: merged {100 * o['merged_vs_bare']:.1f}%, unmerged LoRA {100 * o['lora_vs_bare']:.1f}%"
        for order, o in r["orders"].items()
    ]
    return (
        "Throughput relative to the bare backbone (target for merged >= 95%): "
        + "; ".join(parts)
        + "."
    )


INFER_HEADER = [
    "| model | batches | padding | examples/s | real tokens/s | padded tokens/s |",
    "|---|---|---|---|---|---|",
]


def cmd_cpu(args: argparse.Namespace) -> None:
    """MiniLM on CPU: training on 1 process (1 and 2 threads) and 2 processes; inference."""
    load_before = os.getloadavg()
    train = ["train", "--backbone", MINILM, "--batch-size", str(args.batch_size)]
    train += ["--steps", str(args.steps), "--warmup", "3", "--labels", "150"]
    runs = {
        "1 process, 1 thread": _run(train, 1, 1),
        "1 process, 2 threads": _run(train, 1, 2),
        "2 processes (torchrun, gloo), 1 thread each": _run(train, 2, 1),
    }
    infer = ["infer", "--backbone", MINILM, "--batch-size", "64", "--examples", str(args.examples)]
    inference = _run([*infer, "--rounds", str(args.rounds)], 1, 1)
    load_after = os.getloadavg()
    command = shlex.join(["python", "scripts/bench_throughput.py", *sys.argv[1:]])
    device = runs["1 process, 1 thread"]["device"]
    result = {
        "command": command,
        "hardware": device,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "train": runs,
        "inference": inference,
    }
    one = runs["1 process, 1 thread"]
    two = runs["2 processes (torchrun, gloo), 1 thread each"]
    lines = [
        "# Throughput: all-MiniLM-L6-v2 on CPU",
        "",
        f"`{command}` on {device}. The machine is shared: 1-minute load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after the run (2 cores), so "
        "absolute figures are noisy; each variant ran in its own fresh process.",
        "",
        f"## Training step (LoRA + head, batch {args.batch_size} per process, CLINC150 utterances, fp32)",
        "",
        *TRAIN_HEADER,
        *[_train_row(k, v) for k, v in runs.items()],
        "",
        f"Two processes against one (one thread each): {two['examples_per_s'] / one['examples_per_s']:.2f}x "
        "examples/s; each process takes its own batch, so the global batch doubles. One process "
        "with two threads shows what OpenMP threads do on cores that other jobs keep busy (they "
        "wait for each other); the data-parallel run and the tests use one thread per process.",
        "",
        "## Inference: bare backbone vs release (LoRA) vs release merged for serving (batch 64)",
        "",
        *INFER_HEADER,
        *_infer_rows(inference),
        "",
        _merge_summary(inference),
        "",
        "GPU figures (roberta-base size, bf16, MFU) come from `python scripts/bench_throughput.py gpu` "
        "and are written to bench_throughput_gpu.{json,md}; they were not measured on this machine.",
    ]
    _write(Path(args.out or RESULTS / "bench_throughput"), result, lines)


def cmd_gpu(args: argparse.Namespace) -> None:
    """roberta-base size (RobertaConfig(), random weights), bf16, LoRA step at seq 64 + MFU."""
    backbone = "tiny-random" if args.tiny else "roberta-base-random"
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit(
            "gpu: no CUDA device here; use --tiny for a CPU smoke run of the same code"
        )
    common = ["--backbone", backbone, "--seq-len", "64", "--mixed-precision", args.mixed_precision]
    train = ["train", *common, "--batch-size", str(args.batch_size), "--labels", "150"]
    train += ["--steps", str(args.steps), "--warmup", "10"]
    peak = ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    runs = {
        "LoRA step": _run([*train, *peak], 1, args.threads),
        "add-intent step (+ teacher forward)": _run([*train, *peak, "--distill"], 1, args.threads),
    }
    infer = ["infer", *common, "--batch-size", str(args.batch_size), "--labels", "150"]
    infer += [
        "--examples",
        str(args.batch_size * 20),
        "--rounds",
        str(args.rounds),
        "--random-release",
    ]
    inference = _run(infer, 1, args.threads)
    command = shlex.join(["python", "scripts/bench_throughput.py", *sys.argv[1:]])
    device = runs["LoRA step"]["device"]
    result = {
        "command": command,
        "hardware": device,
        "smoke": args.tiny,
        "train": runs,
        "inference": inference,
    }
    r = runs["LoRA step"]
    lines = [
        f"# Throughput: {'TINY SMOKE RUN (not a measurement)' if args.tiny else 'roberta-base size'} , "
        f"{args.mixed_precision}, sequence length 64",
        "",
        f"`{command}` on {device}.",
        "",
        f"## Training step (batch {args.batch_size}, random token ids, no padding)",
        "",
        *TRAIN_HEADER,
        *[_train_row(k, v) for k, v in runs.items()],
        "",
        f"Model FLOPs per example and step: {1e3 * r['model_tflops_per_example_step']:.3f} GFLOP; "
        f"achieved {r['achieved_tflops']:.2f} TFLOP/s; peak {r['peak_tflops'] or 'unknown'} TFLOP/s.",
        "",
        "## Inference: bare backbone vs release (LoRA) vs merged",
        "",
        *INFER_HEADER,
        *_infer_rows(inference),
        "",
        _merge_summary(inference),
    ]
    default = RESULTS / ("bench_throughput_gpu_smoke" if args.tiny else "bench_throughput_gpu")
    _write(Path(args.out or default), result, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="time the training step (run under torchrun for N processes)")
    p.add_argument("--backbone", default=MINILM)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="random ids of this length (default: real utterances)",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--labels", type=int, default=150)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no")
    p.add_argument("--distill", action="store_true", help="add the teacher's forward (add-intent)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json-out")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("infer", help="bare backbone vs release vs merged release")
    p.add_argument("--backbone", default=MINILM)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--examples", type=int, default=1024)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--labels", type=int, default=150)
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    p.add_argument("--random-release", action="store_true", help="random LoRA weights, no training")
    p.add_argument("--json-out")
    p.set_defaults(func=cmd_infer)
    p = sub.add_parser("cpu", help="the CPU suite (MiniLM)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--examples", type=int, default=512, help="utterances per inference round")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out")
    p.set_defaults(func=cmd_cpu)
    p = sub.add_parser("gpu", help="the GPU suite (roberta-base size, bf16, seq 64)")
    p.add_argument(
        "--tiny", action="store_true", help="tiny encoder on CPU: a smoke run of the code"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="bf16")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--out")
    p.set_defaults(func=cmd_gpu)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
