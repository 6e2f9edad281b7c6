#!/usr/bin/env python
"""Pack the encoders and CLINC150 for a lent GPU machine that has no network.

The device tool moves at most 64 MiB per call, and files carried into the repository copy are
gone by the next call, so the payload travels as fp16 weights (half the size) in chunks of
63 MB, each copied to /tmp/chunks on the machine by its own call; ``unpack.py`` there joins
them, checks the SHA-256 and casts the weights back to fp32. Casting to fp16 rounds each weight
to 11 significant bits; ``--check`` measures what that does to the mean-pooled embeddings.

    python scripts/device/make_payload.py --mpnet models/all-mpnet-base-v2 --check
    # then, on the device: one call per chunk   cp .gpu/cN /tmp/chunks/   (carry .gpu/cN)
    # and the run itself                        bash scripts/device/run.sh (carry .gpu/whl ...)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from intent_ci.config import PACKAGED_MINILM  # noqa: E402
from intent_ci.modeling import resolve_backbone_path  # noqa: E402

CHUNK = 63_000_000
WHEELS = [  # what the device image lacks or holds in other versions (its torch stays)
    "transformers==5.24.0",
    "peft==0.21.2",
    "datasets==5.2.0",
    "evaluate==0.4.6",
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "tokenizers==0.23.3",
    "regex==2026.11.19",
]


def half_copy(src: Path, dst: Path) -> None:
    """The checkpoint folder with its weights stored as fp16 (integer buffers kept)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "desktop.ini"))
    weights = load_file(src / "model.safetensors")
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    save_file(half, dst / "model.fp16.safetensors")


@torch.no_grad()
def agreement(original: Path, texts: list[str]) -> dict:
    """Mean-pooled embeddings of `texts` with fp32 weights vs the same weights through fp16."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(original)
    model = AutoModel.from_pretrained(original, dtype=torch.float32).eval()
    rounded = AutoModel.from_pretrained(original, dtype=torch.float32).eval()
    for p in rounded.parameters():
        p.copy_(p.half().float())
    cos, rel = [], []
    for start in range(0, len(texts), 50):
        batch = tokenizer(texts[start : start + 50], padding=True, return_tensors="pt")
        mask = batch["attention_mask"].unsqueeze(-1).float()
        a, b = (
            (m(**batch).last_hidden_state * mask).sum(1) / mask.sum(1) for m in (model, rounded)
        )
        cos.append(torch.nn.functional.cosine_similarity(a, b))
        rel.append((a - b).norm(dim=1) / a.norm(dim=1))
    cos, rel = torch.cat(cos), torch.cat(rel)
    return {
        "utterances": len(texts),
        "min_cosine": cos.min().item(),
        "max_relative_l2": rel.max().item(),
        "mean_relative_l2": rel.mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpnet", default="models/all-mpnet-base-v2")
    parser.add_argument(
        "--data", default=str(REPO.parent / "shared/datasets/clinc150/data_full.json")
    )
    parser.add_argument("--out", default=str(REPO / ".gpu"))
    parser.add_argument("--check", action="store_true", help="measure the fp16 rounding's effect")
    parser.add_argument("--no-wheels", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {"mpnet": Path(args.mpnet), "minilm": Path(resolve_backbone_path(PACKAGED_MINILM))}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in models.items():
            half_copy(path, Path(tmp) / name)
        shutil.copy(args.data, Path(tmp) / "data_full.json")
        tar_path = Path(tmp) / "payload.tar"
        with tarfile.open(tar_path, "w") as tar:
            for name in (*models, "data_full.json"):
                tar.add(Path(tmp) / name, arcname=name)
        blob = tar_path.read_bytes()
    for old in out.glob("c[0-9]"):
        old.unlink()
    for k in range(0, len(blob), CHUNK):
        (out / f"c{k // CHUNK + 1}").write_bytes(blob[k : k + CHUNK])
    (out / "payload.sha256").write_text(hashlib.sha256(blob).hexdigest() + "\n")
    print(f"payload {len(blob):,} bytes in {len(range(0, len(blob), CHUNK))} chunks under {out}")
    if not args.no_wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", "3.12", "--implementation", "cp",
             "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
             "--platform", "manylinux2014_x86_64", "-d", str(out / "whl"), *WHEELS],
            check=True,
        )  # fmt: skip
    if args.check:
        val = [text for text, _ in json.loads(Path(args.data).read_text())["val"][::10]][:300]
        for name, path in models.items():
            print(name, json.dumps(agreement(path, val)))


if __name__ == "__main__":
    main()
