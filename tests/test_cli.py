"""The command line itself: help on every flag, --version, one meaning for --json."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from intent_ci import __version__
from intent_ci.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def _walk(parser: argparse.ArgumentParser, path: str):
    """Every (command path, action) of `parser` and its subcommands, recursively."""
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def test_every_flag_and_argument_has_help_text():
    actions = list(_walk(build_parser(), "intent-ci"))
    assert len(actions) > 80  # the walk reached the subcommands
    missing = [
        f"{path}: {'/'.join(a.option_strings) or a.dest}"
        for path, a in actions
        if not a.help or a.help == argparse.SUPPRESS
    ]
    assert missing == [], "no help text: " + "; ".join(missing)


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"intent-ci {__version__}\n"
    installed = subprocess.run(
        [sys.executable, "-m", "intent_ci.cli", "--version"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert (installed.returncode, installed.stdout) == (0, f"intent-ci {__version__}\n")


@pytest.fixture
def known_test_data(tmp_path, data_dir) -> Path:
    """data_dir/test without report_damage, which the trained registry does not know."""
    folder = Path(shutil.copytree(data_dir / "test", tmp_path / "test"))
    (folder / "report_damage.txt").unlink()
    return folder


def test_eval_json_is_a_flag_and_json_file_still_writes(
    trained_registry, known_test_data, tmp_path, capsys
):
    base = ["eval", "--release", "v2", "--against", "v1", "--data", str(known_test_data)]
    base += ["--registry", str(trained_registry)]

    # --json alone prints the result as JSON, like predict/releases/show/verify/diff --json.
    assert main([*base, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["release"] == "v2" and printed["against"]["release"] == "v1"

    # --output FILE writes it and prints the table.
    out = tmp_path / "a" / "out.json"
    assert main([*base, "--output", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("v2 on ") and table.endswith(f"wrote {out}\n")
    assert json.loads(out.read_text(encoding="utf-8")) == printed

    # The older spelling --json FILE keeps working exactly as before.
    old = tmp_path / "b" / "old.json"
    assert main([*base, "--json", str(old)]) == 0
    assert capsys.readouterr().out == table.replace(str(out), str(old))
    assert json.loads(old.read_text(encoding="utf-8")) == printed

    # Both: JSON on stdout and in the file.
    both = tmp_path / "both.json"
    assert main([*base, "--json", "--output", str(both)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(both.read_text(encoding="utf-8"))


def test_only_the_main_process_of_a_launch_prints_results(capsys, monkeypatch):
    """Under torchrun every process runs the command; `quickstart` (a data-parallel command)
    printed each of its lines once per process. Results print on the main process only."""
    from intent_ci.cli import echo

    monkeypatch.setenv("RANK", "1")
    echo("from the second process")
    monkeypatch.setenv("RANK", "0")
    echo("from the main process")
    assert capsys.readouterr().out == "from the main process\n"
