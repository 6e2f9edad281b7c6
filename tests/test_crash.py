"""Fault and load tests: SIGKILL at every step of real release writes, and concurrent writers.

The registry has no crash hook: `tests.crashing`, installed in a child process only, wraps the
system calls through which a registry write changes the disk or takes its lock (mkdir, open for
writing and close, write, sendfile, fsync, rename, replace, flock) and SIGKILLs the child just
before its Nth such call on a path inside the registry. A first run of each write counts its
steps (and must see the steps that make it atomic, or the kills would prove nothing); then the
write is killed before every one of them, in a seeded shuffled order. To keep this fast, one
add-intent is trained once (1 epoch on the tiny RoBERTa) and the arguments of its release write
are recorded; each kill point then runs only the real write (`pipeline._write_release`: stage,
`save_model_files`, `Registry.commit`) in a forked child. A second series kills after seeded
random delays (the parent sends SIGKILL), which lands inside library calls such as safetensors'
own writes, out of the interceptor's reach. One more kill runs the CLI's add-intent in a fresh
interpreter (`crashing.LAUNCHER`), end to end.

After every kill: `intent-ci verify --all` exits 0, at most one new release exists and it is
complete, LATEST is the previous latest or that new release, the previous latest loads and
predicts bit-identically, and the next run removes the leftovers of the killed one.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock

from intent_ci import pipeline
from intent_ci.cli import main
from intent_ci.config import ReleaseConfig
from intent_ci.lifecycle import retire_intents, rollback
from intent_ci.modeling import load_backbone
from intent_ci.pipeline import add_intents
from intent_ci.registry import STAGING_PREFIX, Registry
from intent_ci.release import IntentClassifier, load_release
from tests import crashing, procs
from tests.conftest import BASE_INTENTS, make_utterances

REPO = Path(__file__).resolve().parents[1]
PROBE = ["card lost now", "refund credited please", "weekend hours", "smashed broken box", "hi"]
SEED = 20240607
TIMED_KILLS = 10

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Recorded(Exception):
    """Raised by the recorder in place of the release write, once its arguments are kept."""


@pytest.fixture(scope="module")
def pending_add(tmp_path_factory, trained_registry, data_dir):
    """A registry and the recorded arguments of one real add-intent's release write.

    The registry holds v1, v2 and v3 = v2 with card_lost retired; the add-intent trains
    report_damage on top of v3 (1 epoch), so every replayed write is an add after a retire.
    """
    registry = Path(shutil.copytree(trained_registry, tmp_path_factory.mktemp("crash") / "reg"))
    assert retire_intents(["card_lost"], registry, "v2") == "v3"
    recorded: dict = {}

    def record(registry_arg, accelerator, **kwargs):
        recorded.update(kwargs, accelerator=accelerator)
        raise _Recorded

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "_write_release", record)
        with pytest.raises(_Recorded):
            add_intents(
                data_dir / "new" / "report_damage.txt",
                registry,
                "v3",
                overrides={"train": {"add_intent_epochs": 1}},
            )
    torch.set_num_threads(threads)
    assert recorded["parent"] == "v3"
    assert recorded["labels"] == [*BASE_INTENTS[1:], "refund_status", "report_damage"]
    assert "card_lost" not in recorded["replay"]
    return registry, recorded


class Watch:
    """The invariants that must hold after every kill."""

    def __init__(self, root: Path, capsys) -> None:
        self.root, self.capsys = root, capsys
        self.registry = Registry(root)
        # Each load re-reads and re-checks every file of the release; only the frozen backbone
        # is reused (a fresh copy per load), as `load_release(backbone=...)` allows, to save time.
        model = ReleaseConfig.from_dict(self.registry.manifest("v1")["config"]).model
        self.backbone = load_backbone(model)
        self.releases = self.registry.releases()
        self.latest = self.registry.latest()
        self.reference: dict[tuple, torch.Tensor] = {}
        self.leftovers: list[Path] = []
        self.loads = 0

    def logits(self, release: str) -> torch.Tensor:
        backbone = dataclasses.replace(self.backbone, encoder=copy.deepcopy(self.backbone.encoder))
        self.loads += 1
        return IntentClassifier(load_release(self.registry, release, backbone=backbone)).logits(
            PROBE
        )

    def same_as_reference(self, release: str) -> bool:
        """Releases with identical files (replays of one write) must predict identically."""
        files = self.registry.manifest(release)["files"]
        key = tuple(sorted((n, m["sha256"]) for n, m in files.items()))
        logits = self.logits(release)
        return torch.equal(logits, self.reference.setdefault(key, logits))

    def check(self, child: procs.Child, *, targets: set[str], cleaned: bool) -> None:
        """Check the registry after `child` ended (killed, or finished normally).

        Args:
            targets: releases LATEST may point to besides the previous latest (rollback).
            cleaned: whether this run must have removed the previous run's leftovers.
        """
        assert child.killed or child.exit_code == 0, child.output
        assert main(["verify", "--all", "--registry", str(self.root)]) == 0, (
            self.capsys.readouterr().out
        )
        report = self.capsys.readouterr().out
        assert re.search(r"release\(s\) checked: \d+ ok, 0 failed$", report, re.M), report
        now = self.registry.releases()
        new = [r for r in now if r not in self.releases]
        assert set(self.releases) <= set(now) and len(new) <= 1, (self.releases, now)
        assert not self.registry.registry_problems()
        latest = self.registry.latest()
        assert latest in {self.latest, *new, *targets}, (latest, self.latest, new)
        # The previous latest still loads and predicts bit-identically.
        assert self.same_as_reference(self.latest)
        if cleaned:
            assert not [p for p in self.leftovers if os.path.lexists(p)], self.leftovers
        self.leftovers = self.registry.stale_staging()
        self.releases, self.latest = now, latest


REQUIRED_STEPS = {
    "add-intent": [
        r"os\.mkdir\(\.staging-[^/]+\)",
        r"close\(\.staging-[^/]+/manifest\.json\)",
        r"os\.fsync\(\.staging-[^/]+/manifest\.json\)",
        r"os\.rename\(\.staging-[^/]+ -> v\d+\)",
        r"os\.replace\(\.tmp-\d+-LATEST -> LATEST\)",
        r"flock\(\.lock, lock\)",
        r"os\.write\(HISTORY\.jsonl\)",
        r"flock\(\.lock, unlock\)",
    ],
    "rollback": [
        r"flock\(\.lock, lock\)",
        r"close\(\.tmp-\d+-LATEST\)",
        r"os\.replace\(\.tmp-\d+-LATEST -> LATEST\)",
        r"os\.write\(HISTORY\.jsonl\)",
        r"flock\(\.lock, unlock\)",
    ],
}
"""Steps the counting run of each write must see: the ones that make it atomic and serialised."""
REQUIRED_STEPS["retire"] = REQUIRED_STEPS["add-intent"]


def _count_steps(root: Path, target) -> list[str]:
    """Run `target` to the end in a child whose registry steps are recorded, never killed."""

    def counted():
        steps = crashing.install(root)
        target()
        print("".join(f"\nstep: {step}" for step in steps.taken))

    child = procs.run(counted)
    assert child.exit_code == 0, child.output
    return re.findall(r"^step: (.*)$", child.output, re.M)


def test_sigkill_at_every_write_step_never_leaves_a_partial_release(pending_add, capsys):
    root, recorded = pending_add
    registry = Registry(root)
    rng = random.Random(SEED)
    watch = Watch(root, capsys)

    def add():
        # A replayed write starts from the LATEST the previous replays left (no lost update).
        pipeline._write_release(registry, **{**recorded, "expect_latest": registry.latest()})

    def retire():
        retire_intents(["card_lost"], registry, "v2")

    def roll_back():
        current = registry.latest()
        rollback(registry, "v1" if current != "v1" else "v2")

    survived: dict[str, int] = {}
    for name, target in (("add-intent", add), ("retire", retire), ("rollback", roll_back)):
        steps = _count_steps(root, target)  # this run finishes normally and commits
        for required in REQUIRED_STEPS[name]:
            assert any(re.fullmatch(required, step) for step in steps), (name, required, steps)
        watch.check(procs.Child(0, ""), targets={"v1", "v2"}, cleaned=False)
        points = list(range(1, len(steps) + 1))
        rng.shuffle(points)  # seeded order: each kill meets the state the earlier ones left
        for point in points:
            child = procs.run(target, before=lambda p=point: crashing.install(root, kill_at=p))
            assert child.killed, (
                f"{name}: step {point} of {len(steps)} ({steps[point - 1]}) did not kill: "
                f"{child.output}"
            )
            watch.check(child, targets={"v1", "v2"}, cleaned=True)
        survived[name] = len(steps)

    # Kills at seeded random times (the parent sends SIGKILL), over the span of a write.
    started = time.perf_counter()
    child = procs.run(add)
    span = time.perf_counter() - started
    watch.check(child, targets=set(), cleaned=False)
    timed = 0
    for _ in range(TIMED_KILLS):
        child = procs.run(add, kill_after_s=rng.uniform(0.0, span))
        watch.check(child, targets=set(), cleaned=False)
        timed += child.killed

    # The next normal run cleans every leftover and takes an id never handed out before.
    highest = max(int(r[1:]) for r in registry.releases())
    final = procs.run(add)
    assert final.exit_code == 0, final.output
    assert not registry.stale_staging()
    assert int(registry.latest()[1:]) > highest
    total = sum(survived.values())
    assert total >= 80, survived  # 34 + 40 + 9 when written
    print(f"\nkill points survived: {survived} = {total} step kills + {timed} timed kills")


def test_sigkill_of_a_cli_add_intent_in_a_fresh_interpreter(tmp_path, trained_registry, data_dir):
    """Through the real entry point: the CLI's add-intent in a fresh interpreter, killed.

    `crashing.LAUNCHER` installs the interceptor before anything of intent_ci is imported, then
    runs `intent_ci.cli.main`. Steps are counted from the staging folder's creation, so the
    kill lands in the release write, not in the preflight's probe of the registry.
    """
    root = Path(shutil.copytree(trained_registry, tmp_path / "adapters"))
    config = tmp_path / "one-epoch.yaml"
    config.write_text(yaml.safe_dump({"train": {"add_intent_epochs": 1}}), encoding="utf-8")
    registry = Registry(root)
    before = {name: IntentClassifier.load(root, name).logits(PROBE) for name in ("v1", "v2")}
    # An add-intent's release write has 34 steps (the test above counts them): all kill.
    point = random.Random(SEED).randint(1, 30)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", crashing.LAUNCHER, str(root), str(point), STAGING_PREFIX]
    argv = ["add-intent", "--registry", str(root)]
    argv += ["--data", str(data_dir / "new" / "report_damage.txt"), "--config", str(config)]
    killed = subprocess.run(
        [*command, *argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert f"crashing: SIGKILL before step {point}: " in killed.stderr, killed.stderr[-2000:]

    assert main(["verify", "--all", "--registry", str(root)]) == 0
    assert registry.releases() in (["v1", "v2"], ["v1", "v2", "v3"])
    for name, logits in before.items():
        assert torch.equal(IntentClassifier.load(root, name).logits(PROBE), logits)
    assert registry.latest() in ("v2", "v3")

    # The next run (same CLI, forked from this process to save an interpreter start) cleans up.
    rerun = procs.run(lambda: main(argv))
    assert rerun.exit_code == 0, rerun.output
    assert not registry.stale_staging()
    assert registry.latest() == registry.releases()[-1]


def test_four_writers_at_once_get_distinct_ids_and_no_update_is_lost(tmp_path, trained_registry):
    """Policy: concurrent add-intent runs all train, then commit one at a time under the lock.

    All four start from v2 while LATEST is v2. The first to commit moves LATEST; the other three
    find LATEST moved: their releases are written, LATEST stays, and they exit 1 naming the
    release that holds the other run's intents. So no run exits 0 while LATEST lacks its
    intents. The test holds the registry lock until all four have trained and staged their
    files, so the four commits really contend for it.
    """
    root = Path(shutil.copytree(trained_registry, tmp_path / "adapters"))
    config = tmp_path / "one-epoch.yaml"
    config.write_text(yaml.safe_dump({"train": {"add_intent_epochs": 1}}), encoding="utf-8")
    intents = [f"damage_{i}" for i in range(4)]
    files = []
    for i, intent in enumerate(intents):
        path = tmp_path / f"{intent}.txt"
        path.write_text("\n".join(make_utterances("report_damage", 12, seed=i)) + "\n", "utf-8")
        files.append(path)

    def writer(path: Path, parent: str = "v2"):
        argv = ["add-intent", "--data", str(path), "--from", parent, "--config", str(config)]
        return lambda: main([*argv, "--registry", str(root)])

    # A staged release holds the parent's files but its manifest, which the commit writes last.
    staged_files = len([p for p in (root / "v2").iterdir() if p.name != "manifest.json"])
    lock = FileLock(str(root / ".lock"))
    lock.acquire()
    children = [procs.start(writer(path)) for path in files]
    try:
        deadline = time.monotonic() + 240
        while True:
            staged = [p for p in root.iterdir() if p.name.startswith(".staging-")]
            if len(staged) == 4 and all(len(list(p.iterdir())) == staged_files for p in staged):
                break
            for pid, _ in children:
                assert os.waitpid(pid, os.WNOHANG) == (0, 0), "a writer ended before committing"
            assert time.monotonic() < deadline, "writers did not all stage in time"
            time.sleep(0.05)
        time.sleep(0.3)  # let them reach the lock
    finally:
        lock.release()
    results = [procs.finish(pid, fd) for pid, fd in children]

    registry = Registry(root)
    assert registry.releases() == ["v1", "v2", "v3", "v4", "v5", "v6"]
    winners = [r for r in results if r.exit_code == 0]
    refused = [r for r in results if r.exit_code == 1]
    assert len(winners) == 1 and len(refused) == 3, [(r.exit_code, r.output) for r in results]
    latest = registry.latest()
    assert re.search(rf"^{latest}: 6 intents \(\+1\)", winners[0].output, re.M)
    written = [re.search(r"error: (v\d+) was written \(parent v2\)", r.output) for r in refused]
    assert sorted([latest] + [m.group(1) for m in written]) == ["v3", "v4", "v5", "v6"]
    added = set()
    for name in ("v3", "v4", "v5", "v6"):
        manifest = registry.manifest(name)
        assert manifest["parent"] == "v2"
        assert manifest["intents"][:5] == [*BASE_INTENTS, "refund_status"]
        added.add(manifest["intents"][5])
    assert added == set(intents)
    winner_intent = registry.manifest(latest)["intents"][5]
    for result in refused:
        assert (
            f"another run has since moved it to {latest} and lacks {winner_intent}."
            in result.output
        )
        assert f"LATEST stays at {latest}" in result.output
        assert f"intent-ci add-intent --from {latest}" in result.output
        assert "Traceback" not in result.output
    assert main(["verify", "--all", "--registry", str(root)]) == 0
    assert not [p for p in root.iterdir() if p.name.startswith((".staging-", ".tmp-"))]
    events = [e for e in registry.history() if e["event"].startswith("release")][-4:]
    assert [e["event"] for e in events] == ["release"] + ["release_not_latest"] * 3
    assert events[0]["release"] == latest and all(e["latest"] == latest for e in events)

    # The refused run adds its intent on top of LATEST as its message says; then LATEST holds both.
    loser = next(i for i in intents if i != winner_intent)
    child = procs.run(writer(files[intents.index(loser)], parent="latest"))
    assert child.exit_code == 0, child.output
    assert registry.latest() == "v7"
    assert {winner_intent, loser} <= set(registry.manifest("v7")["intents"])
    print(f"\nconcurrent writers: 4, LATEST {latest}, refused {len(refused)}")
