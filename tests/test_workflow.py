"""The shipped GitHub workflow parses, and every `intent-ci` command it runs is one the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from intent_ci.cli import build_parser

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "intent-regression.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def steps(workflow) -> dict:
    return {step["name"]: step for step in workflow["jobs"]["check"]["steps"] if "name" in step}


def _commands(script: str) -> list[list[str]]:
    """`intent-ci ...` invocations of a run script, variables replaced by a placeholder."""
    script = script.replace("\\\n", " ")
    found = []
    for line in script.splitlines():
        match = re.search(r"(?:^\s*|\$\()intent-ci (.*)", line)
        if not match:
            continue
        command = match.group(1).split("|")[0].split(">")[0].rstrip(") ")
        tokens = shlex.split(re.sub(r"\$\{\{[^}]*\}\}|\$\w+", "X", command))
        found.append(tokens)
    return found


def test_workflow_triggers_and_permissions(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers and "workflow_dispatch" in triggers
    assert workflow["permissions"]["contents"] == "read"


def test_every_intent_ci_command_parses(steps):
    parser = build_parser()
    seen = set()
    for step in steps.values():
        for tokens in _commands(step.get("run", "")):
            if tokens == ["--help"]:
                continue
            if tokens == ["check", "${args[@]}"]:
                seen.add("check")  # the flags are built in an array: see the next test
                continue
            parser.parse_args(tokens)  # SystemExit(2) on an unknown command or flag
            seen.add(tokens[0])
    assert {"quickstart", "add-intent", "releases", "pull", "check"} <= seen


def test_check_step_passes_every_flag_the_cli_knows(steps):
    script = steps["Check the candidate release"]["run"]
    flags = re.findall(r"(--[a-z][a-z-]+)", script)
    assert set(flags) == {
        "--candidate",
        "--data",
        "--registry",
        "--report-dir",
        "--baseline",
        "--also-against",
        "--drift-against",
        "--golden",
        "--config",
    }
    argv = ["check"] + [part for flag in dict.fromkeys(flags) for part in (flag, "X")]
    args = build_parser().parse_args(argv)
    assert args.func.__name__ == "cmd_check"
    assert 'echo "exit_code=$?" >> "$GITHUB_OUTPUT"' in script and "set +e" in script


def test_report_is_posted_uploaded_and_a_regression_fails_the_job(steps):
    summary = steps["Post the report to the job summary"]
    assert "always()" in summary["if"] and '>> "$GITHUB_STEP_SUMMARY"' in summary["run"]
    upload = steps["Upload the report"]
    assert upload["uses"].startswith("actions/upload-artifact@") and "always()" in upload["if"]
    fail = steps["Fail on a regression or bad input"]
    assert fail["if"] == "steps.check.outputs.exit_code != '0'"
    assert fail["run"].rstrip().endswith("exit 1")


def test_torch_is_the_cpu_build(steps):
    install = steps["Install intent-ci with the CPU build of torch"]["run"]
    assert '"torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu' in install, (
        "a plain torch install pulls the CUDA wheels"
    )
