"""Run under `torchrun --nproc_per_node 2` by tests/test_distributed.py (not collected by pytest).

Each rank exercises the data-parallel pieces of `intent_ci.training` with the real tiny RoBERTa
and writes what it saw to ``<out>/rank<k>.json``; the test compares ranks and checks the sums:

* training batches: which ``index`` values each rank trains on in each epoch, before and after
  dropping Accelerate's repeats (`real_rows`);
* the loss of the epoch's last global batch (which holds repeats), with an L2/EWC anchor term:
  the DDP-averaged gradient of `global_batch_loss` against the gradient of the plain loss over
  the global batch's real rows plus the anchor counted once;
* feature and evaluation passes over a dataset whose size is not a multiple of
  ``processes x batch``: the gathered count and that rows come back in dataset order;
* FSDP2 (``fully_shard`` over gloo, as Accelerate applies it on GPUs): the sharded model's
  logits, and the release files written from `full_state_dict` (into ``<out>/sharded`` and, from
  the unsharded model, ``<out>/whole``).

usage: dist_worker.py BACKBONE_DIR OUT_DIR
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from intent_ci.config import ModelConfig, ReleaseConfig
from intent_ci.modeling import IntentModel, attach_lora, build_head, load_backbone
from intent_ci.pipeline import make_accelerator
from intent_ci.release import full_state_dict, save_model_files
from intent_ci.training import (
    ParameterAnchor,
    anchor_term,
    balanced_class_weights,
    compute_features,
    cross_entropy_term,
    global_batch_loss,
    make_loader,
    predict_logits,
    real_rows,
    tokenize,
)

TRAIN_ROWS, TRAIN_BATCH = 37, 4  # 10 batches of 4 (last one 1 row) -> 5 global steps, 3 repeats
EVAL_ROWS, EVAL_BATCH = 37, 8  # 5 batches of 8 -> 3 per rank, 11 padded rows to drop


def texts(n: int) -> list[str]:
    words = "card lost balance transfer hours refund broken open send".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(1 + i % 5)) for i in range(n)]


def main() -> None:
    backbone_dir, out = sys.argv[1], Path(sys.argv[2])
    accelerator = make_accelerator(ReleaseConfig())
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone_dir, lora_dropout=0.0, dropout=0.0, max_length=16)
    backbone = load_backbone(cfg)
    model = IntentModel(attach_lora(backbone.encoder, cfg), build_head(cfg, 32, 3, "cls"), "cls")
    # LoRA's B starts at zero; make it non-zero so LoRA gradients depend on the inputs fully.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    reference = copy.deepcopy(model)  # identical on every rank (same seed)
    # An L2/EWC anchor away from the current LoRA weights (same values on every rank), so its
    # gradient is not zero: the DDP step must count it once, not once per rank.
    generator = torch.Generator().manual_seed(1)
    anchor = ParameterAnchor(
        {
            n: p.detach() + 0.1 * torch.randn(p.shape, generator=generator)
            for n, p in model.named_parameters()
            if "lora_" in n
        },
        {
            n: torch.rand(p.shape, generator=generator)
            for n, p in model.named_parameters()
            if "lora_" in n
        },
    )

    labels = [i % 3 for i in range(TRAIN_ROWS)]
    train_set = tokenize(backbone.tokenizer, texts(TRAIN_ROWS), labels, 16, accelerator)
    weights = balanced_class_weights(labels, 3)
    loader = make_loader(train_set, backbone.tokenizer, TRAIN_BATCH, shuffle=True, seed=0)
    model, loader = accelerator.prepare(model, loader)

    report: dict = {"rank": accelerator.process_index, "epochs": []}
    for _ in range(2):
        epoch = {"all": [], "kept": [], "steps": 0}
        for batch in loader:
            keep = real_rows(len(batch["labels"]), accelerator)
            epoch["all"] += batch["index"].tolist()
            epoch["kept"] += batch["index"][keep.cpu()].tolist()
            epoch["steps"] += 1
            last = (batch, keep)
        report["epochs"].append(epoch)

    # One backward pass on the epoch's last global batch, as the training loop does it.
    batch, keep = last
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "index")}
    model.zero_grad()
    terms = global_batch_loss(
        model(**inputs),
        batch["labels"],
        keep,
        accelerator,
        class_weights=weights,
        anchor=anchor_term(accelerator.unwrap_model(model), anchor),
    )
    accelerator.backward(terms.loss)
    ddp_grads = {
        n: p.grad.detach().clone()
        for n, p in accelerator.unwrap_model(model).named_parameters()
        if p.requires_grad
    }
    # The same loss, computed plainly over the global batch's real rows on one process.
    padded = {k: accelerator.pad_across_processes(v, dim=1, pad_index=1) for k, v in inputs.items()}
    padded["attention_mask"] = accelerator.pad_across_processes(
        inputs["attention_mask"], dim=1, pad_index=0
    )
    everything = accelerator.gather({**padded, "labels": batch["labels"], "keep": keep.long()})
    real = everything.pop("keep").bool()
    glabels = everything.pop("labels")[real]
    ginputs = {k: v[real] for k, v in everything.items()}
    reference.zero_grad()
    plain = cross_entropy_term(reference(**ginputs), glabels, weights)
    (plain + anchor_term(reference, anchor)).backward()
    report["global_rows"] = terms.rows
    report["global_ce"] = float(accelerator.reduce(terms.ce.detach(), reduction="sum"))
    report["plain_ce"] = float(plain)
    report["max_grad_diff"] = max(
        float((ddp_grads[n] - p.grad).abs().max())
        for n, p in reference.named_parameters()
        if p.requires_grad
    )
    report["max_grad"] = max(float(g.abs().max()) for g in ddp_grads.values())

    # Feature and eval passes: 37 rows, batch 8, 2 ranks -> gather_for_metrics drops 11 repeats.
    plain_model = accelerator.unwrap_model(model)
    eval_set = tokenize(backbone.tokenizer, texts(EVAL_ROWS), [0] * EVAL_ROWS, 16, accelerator)
    eval_loader = accelerator.prepare(
        make_loader(eval_set, backbone.tokenizer, EVAL_BATCH, shuffle=False)
    )
    features, _, order = compute_features(plain_model, eval_loader, accelerator)
    logits = predict_logits(plain_model, eval_loader, accelerator)
    local = make_loader(eval_set, backbone.tokenizer, EVAL_BATCH, shuffle=False)
    with torch.no_grad():
        expected = torch.cat(
            [
                plain_model(**{k: v for k, v in b.items() if k not in ("labels", "index")})
                for b in local
            ]
        )
    report["feature_rows"] = features.shape[0]
    report["feature_order"] = order.tolist()
    report["logit_rows"] = logits.shape[0]
    report["max_logit_diff"] = float((logits - expected).abs().max())
    report["eval_batches_per_rank"] = len(eval_loader)

    # FSDP2: shard the reference model the way Accelerate's TRANSFORMER_BASED_WRAP does (each
    # RobertaLayer, then the root), evaluate it, and write its release files from the gathered
    # weights; they must equal the files written from the whole model.
    sharded = copy.deepcopy(reference)
    mesh = init_device_mesh("cpu", (accelerator.num_processes,))
    for layer in sharded.encoder.base_model.model.encoder.layer:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    report["fsdp_sharded"] = any(isinstance(p, DTensor) for p in sharded.parameters())
    report["fsdp_max_logit_diff"] = float(
        (predict_logits(sharded, eval_loader, accelerator) - expected).abs().max()
    )
    state = full_state_dict(sharded)
    report["whole_state_is_none"] = full_state_dict(reference) is None
    if accelerator.is_main_process:
        for name, source, full in (("sharded", sharded, state), ("whole", reference, None)):
            (out / name).mkdir()
            save_model_files(source, ["a", "b", "c"], {}, out / name, full)
    torch.distributed.destroy_process_group()  # Gloo may abort at exit otherwise
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
