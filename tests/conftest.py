"""Shared fixtures: a tiny random RoBERTa with a word-level tokenizer, tiny intent data, tiny configs.

Everything is built inside the tests (no downloads): the backbone is a real `RobertaModel`
from `RobertaConfig`, saved to a folder and loaded back through `AutoModel`, so the code under
test takes exactly the path it takes with `FacebookAI/roberta-base`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# The tiny models gain nothing from threads, and on a shared machine OpenMP threads that wait
# for busy cores slow every step tenfold. Subprocesses get OMP_NUM_THREADS=1 for the same reason.
torch.set_num_threads(1)
from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: E402
from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel  # noqa: E402

from intent_ci.config import ReleaseConfig, apply_overrides  # noqa: E402

FILLER = (
    "please i my the a can you help me with now today hi hello thanks need want to is it".split()
)
KEYWORDS = {
    "check_balance": "balance account funds total".split(),
    "card_lost": "card lost stolen missing".split(),
    "opening_hours": "hours open close weekend".split(),
    "transfer_money": "transfer send wire payee".split(),
    "refund_status": "refund reimbursement returned credited".split(),
    "report_damage": "broken damaged cracked smashed".split(),
}
BASE_INTENTS = ["card_lost", "check_balance", "opening_hours", "transfer_money"]  # file-name order
NEW_INTENTS = ["refund_status", "report_damage"]


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module (the benchmark scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def make_utterances(intent: str, n: int, seed: int) -> list[str]:
    """`n` distinct utterances: a few filler words around two or three of the intent's keywords."""
    rng = random.Random(f"{intent}-{seed}")
    out: set[str] = set()
    while len(out) < n:
        words = rng.sample(FILLER, rng.randint(1, 3)) + rng.sample(
            KEYWORDS[intent], rng.randint(2, 3)
        )
        rng.shuffle(words)
        out.add(" ".join(words))
    return sorted(out)


def write_intents(folder: Path, intents: list[str], n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for intent in intents:
        (folder / f"{intent}.txt").write_text(
            "\n".join(make_utterances(intent, n, seed)) + "\n", encoding="utf-8"
        )
    return folder


def _build_tokenizer() -> PreTrainedTokenizerFast:
    words = sorted(set(FILLER) | {w for ws in KEYWORDS.values() for w in ws})
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for word in words:
        vocab[word] = len(vocab)
    if len(vocab) > 99:
        raise RuntimeError("test vocabulary must fit vocab_size=99")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def build_tiny_roberta(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random RoBERTa and its tokenizer to `folder` (loadable with AutoModel)."""
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=80,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.2,  # livelier random features than 0.02, so a few steps can separate intents
    )
    RobertaModel(config).save_pretrained(folder)
    _build_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    return build_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def tiny_backbone_other(tmp_path_factory) -> Path:
    """Same architecture, different random weights: a 'wrong backbone'."""
    return build_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta-other"), seed=1)


@pytest.fixture(scope="session")
def tiny_mean_backbone(tmp_path_factory, tiny_backbone) -> Path:
    """The tiny RoBERTa dressed as a sentence-transformers checkpoint that declares mean pooling."""
    folder = tmp_path_factory.mktemp("tiny-st") / "model"
    shutil.copytree(tiny_backbone, folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_cls_token": False,
            }
        )
    )
    return folder


def tiny_overrides(backbone: Path, **sections) -> dict:
    values = {
        "model": {
            "backbone": str(backbone),
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_dropout": 0.0,
            "dropout": 0.0,
            "max_length": 16,
        },
        "train": {
            "epochs": 10,
            "add_intent_epochs": 10,
            "batch_size": 16,
            "lr": 1e-2,
            "head_lr": 5e-2,
            "eval_batch_size": 32,
        },
        "replay": {"per_intent": 8, "train_per_intent": 8},
    }
    for section, fields in sections.items():
        values.setdefault(section, {}).update(fields)
    return values


@pytest.fixture
def tiny_config(tiny_backbone) -> ReleaseConfig:
    return apply_overrides(ReleaseConfig(), tiny_overrides(tiny_backbone), source="test")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """base/ (4 intents x 40), new/<intent>.txt (2 intents x 40), test/ (all 6 intents x 10, held out)."""
    root = tmp_path_factory.mktemp("data")
    write_intents(root / "base", BASE_INTENTS, 40, seed=0)
    write_intents(root / "new", NEW_INTENTS, 40, seed=0)
    test_dir = root / "test"
    test_dir.mkdir()
    for intent in BASE_INTENTS + NEW_INTENTS:
        train = set(make_utterances(intent, 40, seed=0))
        held_out = [u for u in make_utterances(intent, 60, seed=1) if u not in train][:10]
        (test_dir / f"{intent}.txt").write_text("\n".join(held_out) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory, tiny_backbone, data_dir) -> Path:
    """A registry with v1 (4 base intents) and v2 (+ refund_status), trained once per session."""
    from intent_ci.pipeline import add_intents, init_release

    registry = tmp_path_factory.mktemp("registry") / "adapters"
    config = apply_overrides(ReleaseConfig(), tiny_overrides(tiny_backbone), source="test")
    init_release(data_dir / "base", registry, config, eval_data=None)
    add_intents(data_dir / "new" / "refund_status.txt", registry, "v1")
    return registry


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: to assert that nothing changed."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread: tiny models only lose time to thread start-up and,
    on a shared 2-core machine, to contention (a tiny forward pass went from 0.05 s to 0.7 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
