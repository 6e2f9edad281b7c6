"""What a plain `pip install` gets: the wheel built from this tree holds the package, its
`evaluate` metric modules and the quickstart's example data, and the quickstart finds that data
when run from a folder without `data/`. Built offline, without build isolation, from a copy of
the tree (a build writes build/ and *.egg-info next to pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_metrics_and_the_quickstart_data(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("intent_ci", "data"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("intent_ci-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        n.removeprefix("intent_ci/_data/") for n in names if n.startswith("intent_ci/_data/")
    }
    in_repo = {str(p.relative_to(REPO / "data")) for p in (REPO / "data").rglob("*") if p.is_file()}
    assert shipped == in_repo, sorted(shipped ^ in_repo)
    for metric in ("intent_accuracy", "intent_regression", "oos_detection"):
        assert f"intent_ci/metrics/{metric}/{metric}.py" in names
    assert not [n for n in names if n.startswith(("tests/", "scripts/"))]

    # Installed where the repository is not, the quickstart reads the packaged copy.
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site)]
        + [str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    found = subprocess.run(
        [sys.executable, "-c", "from intent_ci.cli import _quickstart_data_dir as d; print(d())"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert found.returncode == 0, found.stderr[-3000:]
    assert Path(found.stdout.strip()) == site / "intent_ci" / "_data"
