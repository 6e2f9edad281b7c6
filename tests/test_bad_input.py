"""Every bad-input check, through the real CLI: exit 2, one clear line, no traceback, registry untouched.

Each test builds a small broken input, runs `intent_ci.cli.main`, and checks that stderr holds an
``intent-ci: error:`` line naming the file (and line, where there is one) and what was expected.
Mutating commands run on a copy of the session's trained registry (v1, v2) or on a registry
folder that does not exist yet (`init`); either way the registry must be byte-for-byte unchanged.
All checks happen before training, so nothing here trains a model.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from intent_ci.cli import main
from intent_ci.data import read_examples
from intent_ci.errors import IntentCIError
from tests.conftest import BASE_INTENTS, make_utterances, snapshot, tiny_overrides, write_intents

REPO = Path(__file__).resolve().parents[1]


# ---- helpers ---------------------------------------------------------------------------------
def refused(capsys, argv: list, registry: Path, pattern: str) -> str:
    """Run the CLI and check the refusal contract; return stderr.

    `pattern` is a regex for the text after ``intent-ci: error: ``; it must match at the start
    of a stderr line (or after a carriage return: a progress bar clears its line with one, and
    a terminal shows the error from column 0). The registry folder (or its absence) must be
    exactly as before.
    """
    before, existed = snapshot(registry), registry.exists()
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert re.search(r"(?:^|\r)intent-ci: error: " + pattern, err, re.MULTILINE), (
        f"stderr does not match {pattern!r}:\n{err}"
    )
    assert registry.exists() == existed
    assert snapshot(registry) == before, "the registry changed"
    return err


def esc(path: Path) -> str:
    return re.escape(str(path))


@pytest.fixture
def config_file(tmp_path, tiny_backbone) -> Path:
    """The tiny, offline config for `init` (a real backbone would try the network)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_overrides(tiny_backbone)), encoding="utf-8")
    return path


@pytest.fixture
def fresh(tmp_path) -> Path:
    """A registry folder that does not exist yet; a refused `init` must not create it."""
    return tmp_path / "fresh-registry"


@pytest.fixture
def registry(tmp_path, trained_registry) -> Path:
    """A private copy of the trained registry (v1: 4 base intents, v2: + refund_status)."""
    return Path(shutil.copytree(trained_registry, tmp_path / "adapters"))


@pytest.fixture
def base_folder(tmp_path) -> Path:
    """A valid data folder (4 intents x 5 utterances) that tests add one bad file to."""
    return write_intents(tmp_path / "data", BASE_INTENTS, 5, seed=0)


def init(data: Path, registry: Path, config: Path) -> list:
    return ["init", "--data", data, "--registry", registry, "--config", config]


# ---- empty input ---------------------------------------------------------------------------
def test_empty_file(capsys, base_folder, fresh, config_file):
    bad = base_folder / "refund_status.txt"
    bad.write_bytes(b"")
    refused(
        capsys,
        init(base_folder, fresh, config_file),
        fresh,
        rf"{esc(bad)}: file is empty; expected labelled utterances$",
    )


def test_file_with_only_blank_lines(capsys, base_folder, fresh, config_file):
    bad = base_folder / "refund_status.txt"
    bad.write_text("\n\n   \n\t\n", encoding="utf-8")
    refused(capsys, init(bad, fresh, config_file), fresh, rf"{esc(bad)}: file is empty")


def test_file_with_only_unicode_whitespace_has_no_utterances(capsys, fresh, config_file, tmp_path):
    """Lines of non-ASCII spaces pass the byte-level emptiness check but hold no utterance."""
    bad = tmp_path / "refund_status.txt"
    bad.write_text("\u00a0\n\u3000\n", encoding="utf-8")
    refused(
        capsys,
        init(bad, fresh, config_file),
        fresh,
        rf"{esc(bad)}: intent 'refund_status' has no utterances; expected one utterance per line$",
    )


# ---- intent names --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Refund Status", "refund!", "_refund", "x" * 65])
def test_invalid_intent_name_from_file_name(capsys, base_folder, fresh, config_file, name):
    bad = base_folder / f"{name}.txt"
    bad.write_text("\n".join(make_utterances("refund_status", 5, 0)) + "\n", encoding="utf-8")
    refused(
        capsys,
        init(base_folder, fresh, config_file),
        fresh,
        rf"{esc(bad)}: invalid intent name {re.escape(repr(name))} \(from the file name\); "
        r"expected lowercase letters, digits, '_' or '-'.*e\.g\. refund_status\.txt$",
    )


def test_invalid_intent_in_csv_row(capsys, fresh, config_file, tmp_path):
    bad = tmp_path / "train.csv"
    rows = [f"{u},card_lost" for u in make_utterances("card_lost", 3, 0)]
    rows.insert(2, "where is my refund,Refund Status")  # file line 4 (line 1 is the header)
    bad.write_text("text,intent\n" + "\n".join(rows) + "\n", encoding="utf-8")
    refused(
        capsys,
        init(bad, fresh, config_file),
        fresh,
        rf"{esc(bad)}:4: invalid intent name 'Refund Status'; expected lowercase letters",
    )


def test_invalid_intent_in_jsonl_row_names_the_real_line(capsys, fresh, config_file, tmp_path):
    """Blank lines are skipped by the reader; the error must still name the file's own line."""
    bad = tmp_path / "train.jsonl"
    lines = [
        json.dumps({"text": u, "intent": "card_lost"}) for u in make_utterances("card_lost", 3, 0)
    ]
    bad.write_text(
        "\n"
        + "\n\n".join(lines)
        + "\n\n"
        + json.dumps({"text": "hi", "intent": "Card Lost"})
        + "\n",
        encoding="utf-8",
    )  # lines 2, 4, 6 are valid, line 8 is the bad one
    refused(
        capsys,
        init(bad, fresh, config_file),
        fresh,
        rf"{esc(bad)}:8: invalid intent name 'Card Lost'; expected lowercase letters",
    )


# ---- conflicting labels ----------------------------------------------------------------------
def test_same_utterance_under_two_intents(capsys, base_folder, fresh, config_file):
    """Case and whitespace do not make two utterances different; both places are named."""
    first, second = base_folder / "card_lost.txt", base_folder / "check_balance.txt"
    first.write_text("lost card now\nWhere is my Card\nstolen card today\n", encoding="utf-8")
    second.write_text("balance please\ntotal funds\n  where  IS my card \n", encoding="utf-8")
    refused(
        capsys,
        init(base_folder, fresh, config_file),
        fresh,
        rf"{esc(second)}:3: utterance 'where  IS my card' is labelled 'check_balance' here but "
        rf"'card_lost' at {esc(first)}:2; each utterance must have exactly one intent$",
    )


def test_add_intent_that_parent_already_has(capsys, registry, tmp_path):
    data = write_intents(tmp_path / "new", ["card_lost", "report_damage"], 5, seed=3)
    refused(
        capsys,
        ["add-intent", "--data", data, "--registry", registry],
        registry,
        rf"{esc(data / 'card_lost.txt')}:1: intent 'card_lost' already exists in release v2; "
        r"add-intent adds new intents only",
    )


# ---- update -----------------------------------------------------------------------------------
def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    lines = ["text,intent"] + [f"{text},{intent}" for text, intent in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_update_with_the_same_utterance_under_two_intents(capsys, registry, tmp_path):
    fixes = write_rows(
        tmp_path / "fixes.csv",
        [
            ("lost card now", "card_lost"),
            ("total funds", "check_balance"),
            ("Lost  card now", "check_balance"),
        ],
    )
    refused(
        capsys,
        ["update", "--data", fixes, "--registry", registry],
        registry,
        rf"{esc(fixes)}:4: utterance 'Lost  card now' is labelled 'check_balance' here but "
        rf"'card_lost' at {esc(fixes)}:2; each utterance must have exactly one intent$",
    )


def test_update_correcting_an_utterance_to_the_intent_it_already_has(capsys, registry, tmp_path):
    from intent_ci.registry import Registry
    from intent_ci.replay import read_memory

    stored = read_memory(Registry(registry).root / "v2" / "replay.json")["card_lost"][0]
    fixes = write_rows(
        tmp_path / "fixes.csv", [("total funds", "check_balance"), (stored, "card_lost")]
    )
    refused(
        capsys,
        ["update", "--data", fixes, "--registry", registry],
        registry,
        rf"{esc(fixes)}:3: utterance {re.escape(repr(stored))} already has intent 'card_lost' in "
        r"release v2 \(its replay memory stores it under that intent\), so there is nothing to "
        r"correct; remove the line, or give the intent it should have$",
    )


def test_update_moving_every_exemplar_of_an_intent_away(capsys, registry, tmp_path):
    """A bulk relabel of all of an intent's replay exemplars would leave it with nothing to
    learn from (it stayed in the label map with an empty memory); refused, naming the lines."""
    from intent_ci.registry import Registry
    from intent_ci.replay import read_memory

    stored = read_memory(Registry(registry).root / "v2" / "replay.json")["card_lost"]
    assert len(stored) > 3
    fixes = write_rows(tmp_path / "fixes.csv", [(t, "check_balance") for t in stored])
    refused(
        capsys,
        ["update", "--data", fixes, "--registry", registry],
        registry,
        rf"{esc(fixes)}:2, {esc(fixes)}:3, {esc(fixes)}:4 and {len(stored) - 3} more: these "
        rf"corrections move all {len(stored)} replay exemplars of intent 'card_lost' in release "
        r"v2 to other intents, which would leave 'card_lost' with nothing to learn from; add "
        r"utterances of 'card_lost' to the file, or retire it first \(`intent-ci retire "
        r"card_lost`\)$",
    )
    # Moving all but one is a valid update.
    assert (
        main(
            [
                "update",
                "--data",
                str(write_rows(tmp_path / "most.csv", [(t, "check_balance") for t in stored[1:]])),
                "--registry",
                str(registry),
            ]
        )
        == 0
    )
    capsys.readouterr()


def test_update_with_nothing_to_train(capsys, registry, tmp_path):
    """`train.head_lr: 0` with the default head-alone update trained nothing and exited 0."""
    fixes = write_rows(tmp_path / "fixes.csv", [("total funds", "check_balance")])
    config = write_yaml(tmp_path, {"train": {"head_lr": 0}})
    refused(
        capsys,
        ["update", "--data", fixes, "--registry", registry, "--config", config],
        registry,
        rf"{esc(config)}: `train.head_lr` is 0, but with `train.update_mode: head` the head is "
        r"all an update trains; give it a learning rate > 0 \(default 0.01\)$",
    )


def test_update_from_an_unknown_release(capsys, registry, tmp_path):
    fixes = write_rows(tmp_path / "fixes.csv", [("total funds", "check_balance")])
    refused(
        capsys,
        ["update", "--data", fixes, "--from", "v7", "--registry", registry],
        registry,
        rf"unknown release 'v7' in {esc(registry)}; releases: v1, v2$",
    )


@pytest.mark.parametrize("content", [b"", b"text,intent\n"])
def test_update_with_an_empty_file(capsys, registry, tmp_path, content):
    fixes = tmp_path / "fixes.csv"
    fixes.write_bytes(content)
    refused(
        capsys,
        ["update", "--data", fixes, "--registry", registry],
        registry,
        rf"{esc(fixes)}: (file is empty|has a header but no rows); expected labelled utterances$",
    )


@pytest.mark.parametrize("name", ["fixes.csv", "oos.txt"])
def test_update_with_only_out_of_scope_rows(capsys, registry, tmp_path, name):
    fixes = tmp_path / name
    if name.endswith(".csv"):
        write_rows(fixes, [("what is the weather", "oos"), ("tell me a joke", "oos")])
    else:
        fixes.write_text("what is the weather\ntell me a joke\n", encoding="utf-8")
    refused(
        capsys,
        ["update", "--data", fixes, "--registry", registry],
        registry,
        rf"{esc(fixes)}: every row is labelled 'oos'; `oos` is reserved for out-of-scope "
        r"examples, not an intent to train; give the intents' \(existing or new\) utterances",
    )


def test_update_new_intent_still_needs_the_minimum(capsys, registry, tmp_path):
    """More examples of an existing intent may be one line; a new intent needs the minimum."""
    fixes = write_rows(
        tmp_path / "fixes.csv", [("total funds", "check_balance"), ("fix screen", "screen")]
    )
    refused(
        capsys,
        ["update", "--data", fixes, "--registry", registry],
        registry,
        rf"{esc(fixes)}: intent 'screen' has 1 utterance\(s\); at least 3 are needed",
    )


# ---- encoding, size and format ---------------------------------------------------------------
def test_non_utf8_bytes_name_the_line(capsys, base_folder, fresh, config_file):
    bad = base_folder / "refund_status.txt"
    raw = b"where is my refund\nrefund please\ncaf\xe9 refund\n"
    bad.write_bytes(raw)
    offset = raw.index(b"\xe9")
    refused(
        capsys,
        init(base_folder, fresh, config_file),
        fresh,
        rf"{esc(bad)}:3: not valid UTF-8 \(byte 0xe9 at offset {offset}\); "
        r"expected UTF-8 text, re-encode the file$",
    )


def test_line_over_max_chars(capsys, base_folder, fresh, config_file):
    bad = base_folder / "refund_status.txt"
    long = ("refund " * 100)[:501]
    bad.write_text(f"where is my refund\n{long}\nrefund please\n", encoding="utf-8")
    refused(
        capsys,
        init(base_folder, fresh, config_file),
        fresh,
        rf"{esc(bad)}:2: utterance is 501 characters long; at most 500 allowed "
        r"\(config field `data.max_chars`\)$",
    )


def test_100k_character_line(capsys, base_folder, fresh, config_file):
    bad = base_folder / "refund_status.txt"
    bad.write_text("where is my refund\n" + "x" * 100_000 + "\n", encoding="utf-8")
    refused(
        capsys,
        init(base_folder, fresh, config_file),
        fresh,
        rf"{esc(bad)}:2: line is 100000 characters long; utterances may have at most 500 "
        r"\(config field `data.max_chars`\)$",
    )


def test_gzip_file_named_csv(capsys, fresh, config_file, tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_bytes(gzip.compress(b"text,intent\nlost my card,card_lost\n"))
    refused(
        capsys,
        init(bad, fresh, config_file),
        fresh,
        rf"{esc(bad)}: looks like a gzip archive, expected plain UTF-8 text; decompress it first$",
    )


def test_csv_with_header_only(capsys, fresh, config_file, tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text("text,intent\n", encoding="utf-8")
    refused(
        capsys,
        init(bad, fresh, config_file),
        fresh,
        rf"{esc(bad)}: has a header but no rows; expected labelled utterances$",
    )


def test_csv_with_wrong_columns(capsys, fresh, config_file, tmp_path):
    bad = tmp_path / "train.csv"
    bad.write_text("utterance,label\nlost my card,card_lost\n", encoding="utf-8")
    refused(
        capsys,
        init(bad, fresh, config_file),
        fresh,
        rf"{esc(bad)}: missing column\(s\) text, intent; found utterance, label; "
        r"expected columns `text` and `intent`$",
    )


def _jsonl_with_bad_line(tmp_path: Path) -> Path:
    bad = tmp_path / "train.jsonl"
    good = [
        json.dumps({"text": u, "intent": "card_lost"}) for u in make_utterances("card_lost", 3, 0)
    ]
    bad.write_text(f"{good[0]}\n\nnot json at all\n{good[1]}\n{good[2]}\n", encoding="utf-8")
    return bad  # the bad line is line 3


def test_jsonl_with_non_json_line(capsys, fresh, config_file, tmp_path):
    bad = _jsonl_with_bad_line(tmp_path)
    refused(capsys, init(bad, fresh, config_file), fresh, rf"{esc(bad)}(:\d+)?: .*JSON")


def test_jsonl_with_non_json_line_names_the_line(capsys, fresh, config_file, tmp_path):
    bad = _jsonl_with_bad_line(tmp_path)
    refused(capsys, init(bad, fresh, config_file), fresh, rf"{esc(bad)}:3: .*JSON")


def test_data_folder_with_a_non_txt_file(capsys, base_folder, fresh, config_file):
    (base_folder / "notes.csv").write_text("text,intent\n", encoding="utf-8")
    refused(
        capsys,
        init(base_folder, fresh, config_file),
        fresh,
        rf"{esc(base_folder)}: unexpected file\(s\) notes.csv; "
        r"a data folder holds only <intent>.txt files$",
    )


def test_unsupported_file_type(capsys, fresh, config_file, tmp_path):
    bad = tmp_path / "train.xlsx"
    bad.write_bytes(b"text,intent\n")
    refused(
        capsys,
        init(bad, fresh, config_file),
        fresh,
        rf"{esc(bad)}: unsupported file type '.xlsx'; expected .csv, .jsonl, .txt or a folder$",
    )


def test_data_path_that_does_not_exist(capsys, fresh, config_file, tmp_path):
    missing = tmp_path / "no-such-data"
    refused(
        capsys,
        init(missing, fresh, config_file),
        fresh,
        rf"{esc(missing)}: no such file or folder; expected a CSV, JSONL, .txt file or a folder",
    )


def _too_few(base_folder: Path) -> Path:
    few = base_folder / "refund_status.txt"
    few.write_text("where is my refund\nrefund please\n", encoding="utf-8")
    return few


def test_too_few_utterances_for_an_intent(capsys, base_folder, fresh, config_file):
    _too_few(base_folder)
    refused(
        capsys,
        init(base_folder, fresh, config_file),
        fresh,
        r".*intent 'refund_status' has 2 utterance\(s\); at least 3 are needed "
        r"\(config field `data.min_examples_per_intent`\)$",
    )


def test_too_few_utterances_names_the_file(capsys, base_folder, fresh, config_file):
    few = _too_few(base_folder)
    refused(capsys, init(base_folder, fresh, config_file), fresh, rf".*{esc(few)}.*has 2 utterance")


def test_init_on_a_registry_that_has_releases(capsys, registry, data_dir, config_file):
    refused(
        capsys,
        init(data_dir / "base", registry, config_file),
        registry,
        rf"registry {esc(registry)} already has releases \(v1, v2\); use `intent-ci add-intent`",
    )


# ---- YAML config -----------------------------------------------------------------------------
def write_yaml(tmp_path: Path, values) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        (
            {"train": {"epoch": 3}},
            r"unknown key `train.epoch`. Did you mean `epochs`\? Valid keys: ",
        ),
        ({"trian": {"epochs": 3}}, r"unknown section `trian`. Did you mean `train`\? Valid keys: "),
        ({"train": {"epochs": "three"}}, r"`train.epochs`: expected an integer, got 'three'$"),
        ({"train": {"lr": True}}, r"`train.lr`: expected a number, got True$"),
        (
            {"train": {"update_epochs": 1.5}},
            r"`train.update_epochs`: expected an integer, got 1.5$",
        ),
        (
            {"train": {"update_epochs": 0}},
            r"config field `train.update_epochs`: must be >= 1 or null, got 0$",
        ),
        (
            {"train": {"update_mode": "encoder"}},
            r"config field `train.update_mode`: expected one of lora, head; got 'encoder'$",
        ),
        (
            {"train": {"update_head_epochs": 0}},
            r"config field `train.update_head_epochs`: must be >= 1, got 0$",
        ),
        (
            {"train": {"update_head_rows": "untouched"}},
            r"config field `train.update_head_rows`: expected one of all, changed; "
            r"got 'untouched'$",
        ),
        ({"model": {"backbone": None}}, r"`model.backbone`: expected a string, got None$"),
        ({"train": [1, 2]}, r"section `train` must be a mapping of key: value$"),
        ({"train": {"freeze_dense": "maybe"}}, r"`train.freeze_dense`: expected true or false"),
        (
            {"model": {"head_dense_init": "eye"}},
            r"config field `model.head_dense_init`: expected identity or random; got 'eye'$",
        ),
        (
            {"replay": {"exemplar_features": "student"}},
            r"config field `replay.exemplar_features`: expected start or trained; got 'student'$",
        ),
        # Infinity passed every bound check and wrote a release with NaN weights and threshold.
        ({"train": {"lr": float("inf")}}, r"config field `train.lr`: must be a finite number"),
        (
            {"model": {"cosine_scale": float("inf")}},
            r"config field `model.cosine_scale`: must be a finite number, got inf$",
        ),
        (
            {"distill": {"weight": float("-inf")}},
            r"config field `distill.weight`: must be a finite number, got -inf$",
        ),
        (
            {"train": {"seed": -1}},
            r"config field `train.seed`: must be an integer in \[0, 2\*\*32 - 1\], got -1$",
        ),
        (
            {"train": {"lora": False, "head_lr": 0}},
            r"config field `train.head_lr`: must be > 0 with `train.lora: false`",
        ),
        # PyYAML reads 1e-3 as text: the message says how to write it.
        (
            {"train": {"lr": "1e-3"}},
            r"`train.lr`: expected a number, got '1e-3' \(YAML reads 1e-3 as text; write "
            r"0.001 or 1.0e-3\)$",
        ),
    ],
)
def test_bad_init_config(capsys, fresh, config_file, tmp_path, tiny_backbone, override, pattern):
    values = tiny_overrides(tiny_backbone)
    for section, fields in override.items():
        if isinstance(fields, dict):
            values.setdefault(section, {}).update(fields)
        else:
            values[section] = fields
    bad = write_yaml(tmp_path, values)
    refused(
        capsys,
        init(tmp_path / "unused", fresh, bad),
        fresh,
        rf"{esc(bad)}: {pattern}",
    )


def test_max_length_beyond_the_backbones_positions(
    capsys, base_folder, fresh, tmp_path, tiny_backbone
):
    """A max_length the backbone has no position embeddings for crashed the first long
    utterance with an index error (a traceback); refused before training, naming the limit."""
    from intent_ci.config import ModelConfig
    from intent_ci.modeling import load_backbone

    limit = load_backbone(ModelConfig(backbone=str(tiny_backbone))).encoder.config
    limit = limit.max_position_embeddings - limit.pad_token_id - 1
    bad = write_yaml(tmp_path, tiny_overrides(tiny_backbone, model={"max_length": limit + 1}))
    refused(
        capsys,
        init(base_folder, fresh, bad),
        fresh,
        rf"config field `model.max_length`: {limit + 1} tokens, but backbone .* has position "
        rf"embeddings for {limit}; expected at most {limit}$",
    )


def test_invalid_config_value(capsys, fresh, tmp_path, tiny_backbone):
    bad = write_yaml(tmp_path, tiny_overrides(tiny_backbone, train={"epochs": 0}))
    refused(
        capsys,
        init(tmp_path / "unused", fresh, bad),
        fresh,
        r".*config field `train.epochs`: must be >= 1, got 0$",
    )


def test_invalid_config_value_names_the_file(capsys, fresh, tmp_path, tiny_backbone):
    bad = write_yaml(tmp_path, tiny_overrides(tiny_backbone, train={"epochs": 0}))
    refused(capsys, init(tmp_path / "unused", fresh, bad), fresh, rf".*{esc(bad)}.*train.epochs")


def test_config_that_is_not_yaml(capsys, fresh, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [3\n", encoding="utf-8")
    refused(
        capsys,
        init(tmp_path / "unused", fresh, bad),
        fresh,
        rf"{esc(bad)}: line \d+ is not valid YAML",
    )


def test_config_file_that_does_not_exist(capsys, fresh, tmp_path):
    missing = tmp_path / "missing.yaml"
    refused(
        capsys,
        init(tmp_path / "unused", fresh, missing),
        fresh,
        rf"{esc(missing)}: config file not found$",
    )
    folder = tmp_path / "configs"
    folder.mkdir()
    refused(
        capsys,
        init(tmp_path / "unused", fresh, folder),
        fresh,
        rf"{esc(folder)}: is a folder; expected a YAML file$",
    )


def test_add_intent_config_cannot_change_the_backbone(
    capsys, registry, data_dir, tmp_path, tiny_backbone_other
):
    bad = write_yaml(tmp_path, {"model": {"backbone": str(tiny_backbone_other)}})
    refused(
        capsys,
        ["add-intent", "--data", data_dir / "new" / "report_damage.txt"]
        + ["--registry", registry, "--config", bad],
        registry,
        rf"{esc(bad)}: `model.backbone` cannot change in a child release \(add-intent, update\); "
        r"the backbone, pooling, head and LoRA shape are fixed by the base release",
    )


def test_add_intent_config_with_unknown_key(capsys, registry, data_dir, tmp_path):
    bad = write_yaml(tmp_path, {"distill": {"temprature": 3.0}})
    refused(
        capsys,
        ["add-intent", "--data", data_dir / "new" / "report_damage.txt"]
        + ["--registry", registry, "--config", bad],
        registry,
        rf"{esc(bad)}: unknown key `distill.temprature`. Did you mean `temperature`\?",
    )


# ---- releases ----------------------------------------------------------------------------------
RELEASE_COMMANDS = {
    "predict": lambda ref, data: ["predict", "lost my card", "--release", ref],
    "eval": lambda ref, data: ["eval", "--release", ref, "--data", data / "test"],
    "eval-against": lambda ref, data: ["eval", "--against", ref, "--data", data / "test"],
    "add-intent": lambda ref, data: ["add-intent", "--from", ref, "--data", data / "new"],
    "update": lambda ref, data: ["update", "--from", ref, "--data", data / "new"],
    "show": lambda ref, data: ["show", ref],
    "verify": lambda ref, data: ["verify", ref],
    "rollback": lambda ref, data: ["rollback", ref],
    "diff": lambda ref, data: ["diff", "v1", ref],
    "retire": lambda ref, data: ["retire", "card_lost", "--from", ref],
}


@pytest.mark.parametrize("command", list(RELEASE_COMMANDS))
def test_unknown_release(capsys, registry, data_dir, command):
    refused(
        capsys,
        RELEASE_COMMANDS[command]("v9", data_dir) + ["--registry", registry],
        registry,
        rf"unknown release 'v9' in {esc(registry)}; releases: v1, v2$",
    )


@pytest.mark.parametrize("ref", ["../v1", "v1/", "V1", "staging", "/etc/passwd", "nul"])
@pytest.mark.parametrize("command", list(RELEASE_COMMANDS))
def test_invalid_release_name(capsys, registry, data_dir, command, ref):
    refused(
        capsys,
        RELEASE_COMMANDS[command](ref, data_dir) + ["--registry", registry],
        registry,
        rf"invalid release name {re.escape(repr(ref))}; expected e\.g\. v3",
    )


def test_release_in_a_registry_that_does_not_exist(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    refused(
        capsys,
        ["predict", "hello", "--registry", missing],
        missing,
        rf"no registry at {esc(missing)}; create one with `intent-ci init",
    )


def test_eval_with_intents_the_release_does_not_know(capsys, registry, data_dir):
    """data/test holds report_damage, which neither v1 nor v2 was trained on."""
    refused(
        capsys,
        ["eval", "--release", "v2", "--data", data_dir / "test", "--registry", registry],
        registry,
        rf"{esc(data_dir / 'test' / 'report_damage.txt')}:1: intent\(s\) 'report_damage' are not "
        r"in release v2 \(it knows 5 intents: card_lost, check_balance, ",
    )


def test_predict_input_with_a_non_json_line(capsys, registry, tmp_path):
    bad = tmp_path / "input.jsonl"
    bad.write_text('{"text": "lost my card"}\n\n{"text": oops}\n', encoding="utf-8")
    refused(
        capsys,
        ["predict", "--input", bad, "--registry", registry],
        registry,
        rf"{esc(bad)}:3: not valid JSON \(",
    )


def test_predict_with_nothing_to_classify(capsys, registry):
    refused(
        capsys,
        ["predict", "--registry", registry],
        registry,
        r"nothing to classify: give utterances as arguments or --input FILE$",
    )


@pytest.mark.parametrize("size", ["0", "-3"])
def test_predict_batch_size_below_one(capsys, registry, size):
    refused(
        capsys,
        ["predict", "lost my card", "--batch-size", size, "--registry", registry],
        registry,
        rf"--batch-size: must be >= 1, got {size}$",
    )


def test_classifier_batch_size_below_one(registry):
    from intent_ci.release import IntentClassifier

    clf = IntentClassifier.load(registry, "v1")
    for size in (0, -3, 2.5):
        with pytest.raises(
            IntentCIError, match=rf"batch_size: must be a whole number >= 1, got {size}"
        ):
            clf.predict(["lost my card"], batch_size=size)


def test_predict_input_that_is_a_folder_or_empty(capsys, registry, tmp_path):
    refused(
        capsys,
        ["predict", "--input", tmp_path, "--registry", registry],
        registry,
        rf"{esc(tmp_path)}: a folder; expected a file with one utterance per line$",
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    refused(
        capsys,
        ["predict", "--input", empty, "--registry", registry],
        registry,
        rf"{esc(empty)}: file is empty; expected utterances to classify$",
    )


def test_eval_output_that_cannot_be_a_file(capsys, registry, data_dir, tmp_path):
    """Refused before the release is loaded: a folder, a path under a file, both spellings."""
    test = data_dir / "test"
    a_file = tmp_path / "a_file"
    a_file.write_text("x", encoding="utf-8")
    for argv, pattern in (
        (["--output", tmp_path], rf"--output {esc(tmp_path)}: is a folder; expected a file path"),
        (
            ["--json", a_file / "out.json"],
            rf"--json {esc(a_file / 'out.json')}: {esc(a_file)} is a file, not a folder",
        ),
        (
            ["--json", tmp_path / "a.json", "--output", tmp_path / "b.json"],
            rf"--json {esc(tmp_path / 'a.json')} and --output {esc(tmp_path / 'b.json')}: both "
            r"name the file the result goes to",
        ),
    ):
        refused(
            capsys,
            ["eval", "--release", "v1", "--data", test, "--registry", registry, *argv],
            registry,
            pattern,
        )
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()


def test_csv_with_a_column_twice_or_a_row_with_extra_fields(capsys, fresh, config_file, tmp_path):
    twice = tmp_path / "twice.csv"
    twice.write_text("text,intent,text\nlost my card,card_lost,x\n", encoding="utf-8")
    refused(
        capsys,
        init(twice, fresh, config_file),
        fresh,
        rf"{esc(twice)}:1: column 'text' appears 2 times in the header; expected each column once$",
    )
    # an unquoted comma: "where is it" labelled " please" without the check
    extra = tmp_path / "extra.csv"
    extra.write_text(
        "text,intent\nlost my card,card_lost\nwhere is it, please,card_lost\n", encoding="utf-8"
    )
    refused(
        capsys,
        init(extra, fresh, config_file),
        fresh,
        rf"{esc(extra)}:3: 3 fields, the header has 2; quote a field that holds a comma",
    )


def test_jsonl_intent_that_is_not_a_string(capsys, fresh, config_file, tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"text": "lost my card", "intent": 5}\n', encoding="utf-8")
    refused(
        capsys,
        init(bad, fresh, config_file),
        fresh,
        rf"{esc(bad)}:1: `intent` must be a string, got 5$",
    )


def test_config_yaml_merge_keys_still_override(tmp_path):
    """A key given twice is refused; a key that overrides a `<<:` merge is not."""
    from intent_ci.config import read_yaml

    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {epochs: 1, lr: 0.1}\ntrain:\n  <<: *b\n  epochs: 3\n")
    assert read_yaml(path)["train"] == {"epochs": 3, "lr": 0.1}


def test_config_with_a_key_twice(capsys, base_folder, fresh, config_file, tmp_path):
    bad = tmp_path / "twice.yaml"
    bad.write_text(
        config_file.read_text(encoding="utf-8") + "train:\n  epochs: 1\n  epochs: 9\n",
        encoding="utf-8",
    )
    refused(
        capsys,
        init(base_folder, fresh, bad),
        fresh,
        rf"{esc(bad)}: line \d+ is not valid YAML: found key '(train|epochs)' twice",
    )


# ---- read_examples, directly ---------------------------------------------------------------------
def test_read_examples_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        'text,intent\nlost my card,card_lost\n"hi, my card is gone",card_lost\n'
        "card stolen,card_lost\n123,check_balance\nNA,check_balance\nnull,check_balance\n",
        encoding="utf-8",
    )
    data = read_examples(path)
    assert data.dataset["text"] == [
        "lost my card",
        "hi, my card is gone",
        "card stolen",
        "123",  # read as text, not as a number or a missing value
        "NA",
        "null",
    ]
    assert data.intents == ["card_lost", "check_balance"]
    assert data.dataset["source"][0] == f"{path}:2"  # line 1 is the header
    assert data.dataset["source"][-1] == f"{path}:7"


def test_read_examples_jsonl_line_numbers_skip_blank_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [
        {"text": " lost my card ", "intent": "card_lost", "extra": 1},
        {"text": "card stolen", "intent": "card_lost"},
        {"text": "missing card", "intent": "card_lost"},
    ]
    path.write_text(
        "\n" + "\n\n".join(json.dumps(r) for r in rows) + "\n\n\n", encoding="utf-8"
    )  # rows on lines 2, 4, 6
    data = read_examples(path)
    assert data.dataset["text"] == ["lost my card", "card stolen", "missing card"]
    assert data.dataset["intent"] == ["card_lost"] * 3
    assert data.dataset["source"] == [f"{path}:2", f"{path}:4", f"{path}:6"]
    assert data.origin == str(path)


def test_read_examples_jsonl_empty_text_names_the_real_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"text": "lost card", "intent": "card_lost"}\n\n\n{"text": "  ", "intent": "card_lost"}\n',
        encoding="utf-8",
    )
    with pytest.raises(
        IntentCIError, match=rf"^{esc(path)}:4: empty `text`; expected an utterance$"
    ):
        read_examples(path)


def test_read_examples_dataset():
    ds = datasets.Dataset.from_dict(
        {
            "text": [" lost my card", "card stolen", "missing card", "balance", "funds", "total"],
            "intent": ["card_lost"] * 3 + ["check_balance"] * 3,
        }
    )
    data = read_examples(ds)
    assert data.origin == "dataset"
    assert data.dataset["text"][0] == "lost my card"
    assert data.counts() == {"card_lost": 3, "check_balance": 3}
    assert data.dataset["source"][4] == "dataset row 4"


def test_read_examples_dataset_dict_takes_the_split():
    def split(intent: str) -> datasets.Dataset:
        texts = make_utterances(intent, 3, 0)
        return datasets.Dataset.from_dict({"text": texts, "intent": [intent] * 3})

    dd = datasets.DatasetDict({"train": split("card_lost"), "test": split("check_balance")})
    assert read_examples(dd).intents == ["card_lost"]
    assert read_examples(dd, split="test").intents == ["check_balance"]
    with pytest.raises(
        IntentCIError, match=r"^DatasetDict has no split 'validation'; it has train, test$"
    ):
        read_examples(dd, split="validation")


def test_read_examples_dataset_errors_name_the_row():
    missing = datasets.Dataset.from_dict({"text": ["a b"], "label": ["x"]})
    with pytest.raises(
        IntentCIError, match=r"^dataset: missing column\(s\) intent; found text, label"
    ):
        read_examples(missing)
    bad = datasets.Dataset.from_dict(
        {"text": ["a a", "b b", "c c"], "intent": ["card_lost", "card_lost", "Card Lost"]}
    )
    with pytest.raises(IntentCIError, match=r"^dataset row 2: invalid intent name 'Card Lost'"):
        read_examples(bad)


# ---- damaged and hostile registries ------------------------------------------------------------
# Each test damages a private copy of the trained registry in one precise way, as a person, a
# broken copy or an attacker would, then runs the CLI: one clear line, exit 2 (or `verify` exit
# 1), and the registry exactly as it was.
def rehash(folder: Path, name: str) -> None:
    """Record `name`'s current sha256 and size in the manifest, so only deeper checks can fire."""
    import hashlib

    path = folder / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def predict(registry: Path, release: str = "latest") -> list:
    return ["predict", "lost my card", "--release", release, "--registry", registry]


def verify_fails(capsys, registry: Path, line: str) -> str:
    """`verify --all` exits 1 and prints `line` (a regex) as one of its problem lines."""
    before = snapshot(registry)
    code = main(["verify", "--all", "--registry", str(registry)])
    out = capsys.readouterr().out
    assert code == 1, out
    assert re.search(rf"^(  - |registry  FAILED  ){line}", out, re.M), out
    assert snapshot(registry) == before
    return out


def test_corrupt_safetensors(capsys, registry):
    head = registry / "v2" / "head.safetensors"
    head.write_bytes(b"\xde\xad\xbe\xef" * 64)
    rehash(registry / "v2", "head.safetensors")
    refused(
        capsys,
        predict(registry),
        registry,
        rf"{esc(head)}: not a safetensors file \(header length \d+ exceeds the file's 256 bytes\)$",
    )


def test_truncated_safetensors(capsys, registry):
    adapter = registry / "v2" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    rehash(registry / "v2", "adapter_model.safetensors")
    refused(
        capsys,
        predict(registry),
        registry,
        rf"{esc(adapter)}: tensor '[^']+' has a malformed entry or lies outside the file's \d+ "
        r"data bytes \(truncated\?\)$",
    )


def test_label_map_size_differs_from_the_head(capsys, registry):
    folder = registry / "v2"
    (folder / "labels.json").write_text(json.dumps({"intents": BASE_INTENTS}), encoding="utf-8")
    rehash(folder, "labels.json")
    edit_manifest(folder, lambda m: m.update(intents=BASE_INTENTS))
    refused(
        capsys,
        predict(registry),
        registry,
        rf"{esc(folder / 'head.safetensors')}: head's out_proj has shape \(5, 32\) but labels.json "
        r"lists 4 intents$",
    )


def test_wrong_backbone(capsys, registry, tiny_backbone_other):
    edit_manifest(
        registry / "v1",
        lambda m: m["config"]["model"].update(backbone=str(tiny_backbone_other)),
    )
    refused(
        capsys,
        predict(registry, "v1"),
        registry,
        rf"release v1 was trained on backbone '[^']+' with weights sha256:[0-9a-f]{{12}}…, but "
        rf"{esc(repr(str(tiny_backbone_other)))} loaded here has weights sha256:[0-9a-f]{{12}}…; "
        r"load the same backbone \(and revision\) the release was trained on$",
    )


def test_missing_parent(capsys, registry, data_dir):
    shutil.rmtree(registry / "v1")
    pattern = (
        rf"{esc(registry / 'v2' / 'manifest.json')}: field `parent`: parent 'v1' is not a complete "
        rf"release in {esc(registry)}; releases: v2$"
    )
    refused(capsys, predict(registry), registry, pattern)
    add = ["add-intent", "--data", data_dir / "new" / "report_damage.txt", "--registry", registry]
    refused(capsys, add, registry, pattern)
    verify_fails(capsys, registry, pattern)


def test_cyclic_lineage(capsys, registry):
    edit_manifest(registry / "v1", lambda m: m.update(parent="v2"))
    refused(
        capsys,
        predict(registry),
        registry,
        rf"{esc(registry / 'v1' / 'manifest.json')}: lineage has a cycle: v2 -> v1 -> v2$",
    )


def test_release_file_symlinked_outside_the_registry(capsys, registry, tmp_path):
    labels = registry / "v2" / "labels.json"
    outside = tmp_path / "outside-labels.json"
    shutil.copy(labels, outside)  # same bytes: only the link itself is wrong
    labels.unlink()
    labels.symlink_to(outside)
    refused(
        capsys,
        predict(registry),
        registry,
        rf"{esc(labels)}: must be a regular file, not a link or folder$",
    )


def test_release_folder_symlinked_outside_the_registry(capsys, registry, tmp_path):
    outside = Path(shutil.copytree(registry / "v2", tmp_path / "elsewhere" / "v3"))
    edit_manifest(outside, lambda m: m.update(release="v3"))
    (registry / "v3").symlink_to(outside, target_is_directory=True)
    refused(
        capsys,
        predict(registry, "v3"),
        registry,
        rf"unknown release 'v3' in {esc(registry)}; releases: v1, v2$",
    )
    verify_fails(
        capsys,
        registry,
        rf"{esc(registry / 'v3')}: is a symbolic link to {esc(outside)}; releases must be real "
        r"folders inside the registry \(never loaded\)$",
    )


def test_latest_symlinked_outside_the_registry(capsys, registry, tmp_path):
    outside = tmp_path / "LATEST"
    outside.write_text("v1\n", encoding="utf-8")
    (registry / "LATEST").unlink()
    (registry / "LATEST").symlink_to(outside)
    refused(
        capsys,
        predict(registry),
        registry,
        rf"{esc(registry / 'LATEST')}: is a symbolic link; LATEST must be a regular file inside "
        r"the registry$",
    )


def test_latest_holding_a_path(capsys, registry):
    (registry / "LATEST").write_text("../../etc/passwd\n", encoding="utf-8")
    refused(
        capsys,
        predict(registry),
        registry,
        rf"{esc(registry / 'LATEST')}: invalid release name '../../etc/passwd'; expected e\.g\. v3",
    )


def test_manifest_parent_holding_a_path(capsys, registry):
    edit_manifest(registry / "v2", lambda m: m.update(parent="../../outside"))
    refused(
        capsys,
        predict(registry),
        registry,
        rf"{esc(registry / 'v2' / 'manifest.json')}: field `parent`: invalid release name "
        r"'../../outside'; expected e\.g\. v3",
    )


def test_manifest_listing_a_file_outside_the_release(capsys, registry):
    def point_outside(manifest):
        manifest["files"]["../v1/head.safetensors"] = manifest["files"].pop("head.safetensors")

    edit_manifest(registry / "v2", point_outside)
    refused(
        capsys,
        predict(registry),
        registry,
        rf"{esc(registry / 'v2' / 'manifest.json')}: field `files` lists '../v1/head.safetensors'; "
        r"expected plain file names inside the release$",
    )


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            {"custom_kernel_path": "/tmp/k.so"},
            r"unknown key 'custom_kernel_path'; the adapter config may hold only the LoRA keys "
            r"intent-ci writes$",
        ),
        (
            {"trust_remote_code": True},
            r"remote-code flag 'trust_remote_code' is not allowed in a release$",
        ),
        (
            {"auto_mapping": {"base_model_class": "Evil", "parent_library": "evil.models"}},
            r"'auto_mapping' must be null, false or empty, got \{\"base_model_class\": \"Evil\", "
            r"\"parent_library\": \"evil.models\"\} \(it names classes for peft to import: remote "
            r"code\)$",
        ),
        (
            {"target_modules": ["query", "key"]},
            r"'target_modules' is \['query', 'key'\] but the manifest's model config resolves to "
            r"\['attention.output.dense', 'key', 'query', 'value'\]$",
        ),
        ({"r": 64}, r"'r' is 64 but the manifest requires 4 \(config.model.lora_r\)$"),
        ({"modules_to_save": ["classifier"]}, r"'modules_to_save' must be null, false or empty"),
    ],
    ids=[
        "unknown-key",
        "trust-remote-code",
        "auto-mapping",
        "target-modules",
        "rank",
        "modules-to-save",
    ],
)
def test_adapter_config_outside_the_strict_schema(capsys, registry, edit, pattern):
    path = registry / "v2" / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(edit)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    rehash(registry / "v2", "adapter_config.json")  # a consistent release, built to attack
    refused(capsys, predict(registry), registry, rf"{esc(path)}: {pattern}")


def test_interrupted_download_of_a_release(capsys, registry):
    """A release copied in by hand or a sync tool that stopped part-way: one file is short."""
    pulled = Path(shutil.copytree(registry / "v2", registry / "v3"))
    edit_manifest(
        pulled,
        lambda m: m.update(release="v3", parent="v2", parent_intents=m["intents"], new_intents=[]),
    )
    adapter = pulled / "adapter_model.safetensors"
    full = adapter.stat().st_size
    adapter.write_bytes(adapter.read_bytes()[: full // 2])
    refused(
        capsys,
        predict(registry, "v3"),
        registry,
        rf"{esc(adapter)}: sha256 [0-9a-f]{{12}}… does not match the manifest's [0-9a-f]{{12}}…; "
        rf"{full // 2} bytes where the manifest records {full}: the file is truncated or was altered "
        r"\(an interrupted download or copy\?\)$",
    )


def test_interrupted_download_left_in_staging_is_never_loaded(capsys, registry):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    staged = Path(shutil.copytree(registry / "v2", registry / f".staging-{child.pid}-download01"))
    (staged / "head.safetensors").write_bytes(b"\x00" * 10)
    before = snapshot(registry)
    assert main([str(a) for a in predict(registry)]) == 0
    assert main(["verify", "--all", "--registry", str(registry)]) == 0
    out = capsys.readouterr().out
    assert f"note: {staged}: left by a run that was killed; never loaded" in out
    assert snapshot(registry) == before
    assert main(["retire", "card_lost", "--registry", str(registry)]) == 0  # the next write
    assert not staged.exists()


def _limit_file_size(limit: int):
    """For a child process: writes past `limit` bytes fail with EFBIG (SIGXFSZ ignored)."""
    import resource
    import signal

    def before() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(
            resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
        )

    return before


def refused_in_child(argv: list, registry: Path, pattern: str, limit: int) -> None:
    """Like `refused`, in a forked child whose file size is limited by RLIMIT_FSIZE."""
    from tests import procs

    before = snapshot(registry)
    child = procs.run(lambda: main([str(a) for a in argv]), before=_limit_file_size(limit))
    assert child.exit_code == 2, child.output
    assert "Traceback" not in child.output, child.output
    assert re.search(r"^intent-ci: error: " + pattern, child.output, re.M), child.output
    assert snapshot(registry) == before, "the registry changed"


def test_write_beyond_the_file_size_limit(registry):
    refused_in_child(
        ["retire", "card_lost", "--registry", registry],
        registry,
        rf"{esc(registry)}: could not write adapter_model.safetensors of the new release "
        r"\(File too large\); nothing was committed and the registry is unchanged$",
        limit=1024,
    )


def _mount_tmpfs(folder: Path, size: str) -> bool:
    import subprocess

    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_full_disk(capsys, trained_registry, data_dir, tmp_path, one_torch_thread):
    """A real full filesystem (a small tmpfs; mounting needs root). Without root the same
    failing write comes from RLIMIT_FSIZE instead, as in the test above."""
    import os
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    add = ["add-intent", "--data", data_dir / "new" / "report_damage.txt"]
    add += ["--config", write_yaml(tmp_path, {"train": {"add_intent_epochs": 1}})]
    files = r"(adapter_model\.safetensors|adapter_config\.json|head\.safetensors|labels\.json|replay\.json)"
    if not _mount_tmpfs(disk, "1m"):
        registry = Path(shutil.copytree(trained_registry, disk / "adapters"))
        refused_in_child(
            [*add, "--registry", registry],
            registry,
            rf"{esc(registry)}: could not write {files} of the new release \(File too large\); "
            "nothing was committed and the registry is unchanged$",
            limit=2048,
        )
        return
    try:
        registry = Path(shutil.copytree(trained_registry, disk / "adapters"))
        stats = os.statvfs(disk)
        free = stats.f_bavail * stats.f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 8192))  # 8 KiB left
        # The preflight sees that the release cannot fit, before training starts.
        refused(
            capsys,
            [*add, "--registry", registry],
            registry,
            r"checked before training, nothing was trained or written: "
            rf"{esc(registry)}: 0.0 MB free on its filesystem, but the release needs about "
            r"[0-9.]+ MB \([0-9.]+ MB estimated, x1.25 margin\); free some space or choose another "
            r"--registry$",
        )
        # Space that runs out during the write itself (another process filling the disk after
        # the check) still fails cleanly: retire has no training and writes at once.
        refused(
            capsys,
            ["retire", "card_lost", "--registry", registry],
            registry,
            rf"{esc(registry)}: could not write {files} of the new release \(No space left on "
            r"device\); nothing was committed and the registry is unchanged$",
        )
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


def test_invalid_lock_timeout(capsys, registry):
    refused(
        capsys,
        ["retire", "card_lost", "--lock-timeout", "-1", "--registry", registry],
        registry,
        r"config field `registry.lock_timeout_s`: must be a number of seconds in \[0, 86400\], "
        r"got -1.0$",
    )


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (
            ["retire", "nope"],
            r"intent\(s\) 'nope' are not in release v2 \(it has 5 intents: card_lost, check_balance, "
            r"opening_hours, transfer_money, refund_status\); nothing to retire$",
        ),
        (["retire", "../card_lost"], r"invalid intent name '../card_lost'; expected lowercase"),
        (["retire", "card_lost", "card_lost"], r"intent\(s\) listed twice: card_lost, card_lost$"),
        (
            ["retire", *BASE_INTENTS, "refund_status"],
            r"cannot retire every intent of release v2; a release predicts at least one intent$",
        ),
        (["rollback", "latest"], r"rollback needs a release name such as v2, not `latest`$"),
        (["diff", "v1", "v9"], r"unknown release 'v9' in .*; releases: v1, v2$"),
    ],
    ids=[
        "retire-unknown",
        "retire-path",
        "retire-twice",
        "retire-all",
        "rollback-latest",
        "diff-unknown",
    ],
)
def test_bad_lifecycle_request(capsys, registry, argv, pattern):
    refused(capsys, [*argv, "--registry", registry], registry, pattern)


def test_rollback_to_a_damaged_release(capsys, registry):
    head = registry / "v1" / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-1] ^= 0xFF
    head.write_bytes(bytes(data))
    refused(
        capsys,
        ["rollback", "v1", "--registry", registry],
        registry,
        rf"cannot roll back to v1, it fails verification: {esc(head)}: sha256 [0-9a-f]{{12}}… "
        r"does not match",
    )


# ---- registry states, permissions, outputs ---------------------------------------------------
def unprivileged(argv: list) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that file permissions bind. Tests often run as root, which reads
    and writes past them; `setpriv` drops the capabilities that let it, so a chmod is real."""
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root ignores file permissions, and setpriv (util-linux) is missing")
        caps = "-dac_override,-dac_read_search"
        prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run(
        [*prefix, sys.executable, "-m", "intent_ci.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("what", ["eval --data", "predict --input", "a release's manifest"])
def test_an_unreadable_file_is_one_line_naming_it(registry, tmp_path, what):
    if what == "eval --data":
        target = tmp_path / "test.csv"
        target.write_text("text,intent\ncard lost,card_lost\n", encoding="utf-8")
        argv = ["eval", "--data", target]
    elif what == "predict --input":
        target = tmp_path / "in.txt"
        target.write_text("card lost\n", encoding="utf-8")
        argv = ["predict", "--input", target]
    else:
        target = registry / "v2" / "manifest.json"
        argv = ["predict", "card lost"]
    target.chmod(0)
    try:
        run = unprivileged([*argv, "--registry", registry])
    finally:
        target.chmod(0o644)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert f"intent-ci: error: {target}: Permission denied" in run.stderr, run.stderr[-3000:]


@pytest.mark.parametrize(
    "argv",
    [["rollback", "v1"], ["alias", "set", "production", "v1"], ["retire", "card_lost"]],
    ids=["rollback", "alias-set", "retire"],
)
def test_a_read_only_registry_refuses_writes_in_one_line(registry, argv):
    before = snapshot(registry)
    folders = [registry, *(p for p in registry.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        run = unprivileged([*argv, "--registry", registry])
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert f"intent-ci: error: {registry}" in run.stderr and "Permission denied" in run.stderr
    assert re.search(r"nothing was|unchanged|still points to", run.stderr), run.stderr[-3000:]
    assert snapshot(registry) == before


@pytest.mark.parametrize("kind", ["missing", "folder"])
@pytest.mark.parametrize("argv", [["predict", "card lost"], ["show", "latest"], ["verify"]])
def test_a_missing_latest_is_named_not_taken_for_an_empty_registry(capsys, registry, kind, argv):
    (registry / "LATEST").unlink()
    if kind == "folder":
        (registry / "LATEST").mkdir()
    err = refused(capsys, [*argv, "--registry", registry], registry, esc(registry / "LATEST"))
    assert "no releases yet" not in err


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_verify_all_reports_a_missing_latest_and_rollback_repairs_it(capsys, registry, kind):
    (registry / "LATEST").unlink()
    if kind == "folder":
        (registry / "LATEST").mkdir()
    assert main(["verify", "--all", "--registry", str(registry)]) == 1
    assert f"registry  FAILED  {registry / 'LATEST'}" in capsys.readouterr().out
    if kind == "missing":
        assert main(["rollback", "v2", "--registry", str(registry)]) == 0
        assert (registry / "LATEST").read_text(encoding="utf-8").strip() == "v2"


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "card lost"],
        ["releases"],
        ["rollback", "v1"],
        ["alias", "list"],
        ["alias", "set", "production", "v1"],
        ["verify", "--all"],
        ["show", "v1"],
    ],
)
def test_a_registry_path_that_is_a_file_is_named_as_one(capsys, tmp_path, argv):
    path = tmp_path / "adapters"
    path.write_text("not a registry\n", encoding="utf-8")
    refused(capsys, [*argv, "--registry", path], path, rf"{esc(path)}: is a file, not a registry")
    assert path.read_text(encoding="utf-8") == "not a registry\n"


MANIFEST_EDITS = {
    "oos_list": lambda m: m.__setitem__("oos", [1]),
    "replay_list": lambda m: m.__setitem__("replay", [1]),
    "metrics_list": lambda m: m.__setitem__("metrics", [1]),
    "threshold_text": lambda m: m["oos"].__setitem__("threshold", "abc"),
    "fingerprint_missing": lambda m: m["backbone"].pop("fingerprint"),
    "eval_without_accuracy": lambda m: m["metrics"].__setitem__("eval", {"data": "x"}),
    "eval_list": lambda m: m["metrics"].__setitem__("eval", [1]),
    "correction_without_previous": lambda m: m.__setitem__("corrections", [{"text": "a"}]),
    "memory_change_number": lambda m: m.__setitem__("memory_changes", {"card_lost": 1}),
}


@pytest.mark.parametrize("command", ["show", "releases", "diff"])
@pytest.mark.parametrize("edit", sorted(MANIFEST_EDITS))
def test_a_hand_edited_manifest_is_never_a_traceback(capsys, registry, edit, command):
    path = registry / "v2" / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    MANIFEST_EDITS[edit](manifest)
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    argv = {"show": ["show", "v2"], "releases": ["releases"], "diff": ["diff", "v1", "v2"]}[command]
    code = main([*argv, "--registry", str(registry)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in (0, 2), err  # 0 where the command does not read the edited field
    if code == 2:
        assert f"intent-ci: error: {path}" in err, err


def test_eval_output_inside_a_release_folder(capsys, registry, data_dir):
    out = registry / "v2" / "out.json"
    argv = ["eval", "--data", data_dir / "test", "--registry", registry, "--output", out]
    refused(capsys, argv, registry, r"--output .*inside release folder")


def test_check_report_dir_inside_a_release_folder(capsys, registry, data_dir):
    argv = ["check", "--candidate", "v2", "--data", data_dir / "test", "--registry", registry]
    argv += ["--report-dir", registry / "v2"]
    refused(capsys, argv, registry, r"--report-dir .*inside release folder")


def test_eval_output_that_is_its_own_input(capsys, registry, tmp_path):
    data = tmp_path / "test.csv"
    data.write_text("text,intent\ncard lost,card_lost\n", encoding="utf-8")
    argv = ["eval", "--data", data, "--output", data, "--registry", registry]
    refused(capsys, argv, registry, r"--output .*is also the input")
    assert data.read_text(encoding="utf-8").startswith("text,intent")


def test_check_with_a_dangling_production_alias_names_the_alias(
    capsys, registry, data_dir, tmp_path
):
    (registry / "ALIASES.json").write_text(json.dumps({"production": "v7"}), encoding="utf-8")
    argv = ["check", "--candidate", "v2", "--data", data_dir / "test", "--registry", registry]
    argv += ["--report-dir", tmp_path / "reports"]
    pattern = rf"{esc(registry / 'ALIASES.json')}: alias 'production' points to 'v7'"
    refused(capsys, argv, registry, pattern)


def test_a_child_config_changing_fallback_is_refused(capsys, registry, data_dir, tmp_path):
    config = tmp_path / "child.yaml"
    config.write_text("fallback:\n  enabled: true\n", encoding="utf-8")
    argv = ["add-intent", "--data", data_dir / "new" / "report_damage.txt", "--config", config]
    pattern = rf"{esc(config)}: `fallback.enabled` has no effect in a child release"
    refused(capsys, [*argv, "--registry", registry], registry, pattern)


def test_predict_input_csv_classifies_the_text_column(capsys, registry, tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('text,intent\ncard lost,card_lost\n"balance, please",x\n', encoding="utf-8")
    assert main(["predict", "--input", str(path), "--json", "--registry", str(registry)]) == 0
    out = capsys.readouterr().out
    assert [json.loads(line)["text"] for line in out.splitlines()] == [
        "card lost",
        "balance, please",
    ]
    path.write_text("utterance,intent\ncard lost,card_lost\n", encoding="utf-8")
    pattern = rf"{esc(path)}:1: no `text` column \(found utterance, intent\)"
    refused(capsys, ["predict", "--input", path, "--registry", registry], registry, pattern)


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("non_utf8_new", r".*refund_status\.txt:2: not valid UTF-8"),
        ("intent_in_base", r".*'track_package' is already in"),
        ("bad_test_file", r".*test.*not valid UTF-8"),
    ],
)
def test_quickstart_reads_every_input_before_it_trains(
    capsys, monkeypatch, tmp_path, case, pattern
):
    import intent_ci.pipeline

    def no_training(*args, **kwargs):
        raise AssertionError("quickstart trained before it had read every input")

    monkeypatch.setattr(intent_ci.pipeline, "init_release", no_training)
    data = tmp_path / "data"
    shutil.copytree(REPO / "data" / "base", data / "base")
    shutil.copytree(REPO / "data" / "test", data / "test")
    (data / "new").mkdir()
    shipped = (REPO / "data" / "new" / "refund_status.txt").read_bytes()
    bad = b"where is my refund\n\xe9t\xe9 refund\n"
    (data / "new" / "refund_status.txt").write_bytes(bad if case == "non_utf8_new" else shipped)
    intent = "refund_status"
    if case == "intent_in_base":
        shutil.copy(REPO / "data" / "base" / "track_package.txt", data / "new")
        intent = "track_package"
    if case == "bad_test_file":
        (data / "test" / "order_status.txt").write_bytes(b"where is \xff my order\n")
    registry = tmp_path / "adapters"
    argv = ["quickstart", "--data-dir", data, "--intent", intent, "--registry", registry]
    refused(capsys, argv, registry, pattern)
