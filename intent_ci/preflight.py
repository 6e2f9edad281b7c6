"""Checks that run before the first training step, so a run never trains only to fail at the write.

Everything a release write can trip over, and that can be known before training, is checked
here, and every problem is reported at once:

* **the adapter schema**: the ``adapter_config.json`` peft will write for this model, checked by
  the same strict schema loading applies (`intent_ci.release.adapter_schema_problems`). A peft
  upgrade that adds or changes a key fails here, not after training;
* **the registry**: its folder is a folder and writable (a probe file is written and removed), or
  can be created; its lock file can be opened and locked (``flock`` works on this filesystem);
* **disk space**: the free space on the registry's filesystem covers an estimate of the
  release's size (`estimate_release_bytes`) with a margin.

The config itself is checked when it is built (`intent_ci.config`), and the data, the
mixed-precision mode and the parent's replay memory by the pipeline, all before this runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from intent_ci.config import ModelConfig
from intent_ci.errors import IntentCIError
from intent_ci.registry import LOCK, TMP_PREFIX, Registry, describe_os_error
from intent_ci.release import adapter_schema_problems

SPACE_MARGIN = 1.25
"""Free space must cover the estimated release size times this (the estimate is approximate)."""
FIXED_BYTES = 1 << 20
"""Added to every estimate: manifest, JSON files, safetensors headers, filesystem blocks."""


def estimate_release_bytes(
    model: torch.nn.Module,
    *,
    rows_to_add: int,
    replay_texts: list[str],
    labels: list[str],
) -> int:
    """An upper estimate of the bytes a release of `model` takes on disk.

    Args:
        model: the model whose LoRA weights and head will be written.
        rows_to_add: head rows that widening will add before the write (0 for ``init``).
        replay_texts: every utterance that can end up in the replay memory (an upper bound:
            the parent's memory plus all new utterances).
        labels: the release's intents.
    """
    lora = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)
    head = sum(p.numel() * p.element_size() for p in model.head.parameters())
    out = model.head.out_proj.weight
    head += rows_to_add * (out.shape[1] + 1) * out.element_size()
    # JSON escapes and quoting: at most ~6 bytes per character for non-ASCII text; 16 per item.
    replay = sum(len(t.encode("utf-8")) * 2 + 16 for t in replay_texts)
    return lora + head + replay + sum(len(label) + 8 for label in labels) + FIXED_BYTES


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def registry_problems(registry: Registry) -> list[str]:
    """Whether the registry can take a release: a writable folder and a working lock."""
    root = registry.root
    if root.exists() and not root.is_dir():
        return [f"{root}: is not a folder; choose another --registry"]
    if not root.exists():
        parent = _existing(root)
        if not parent.is_dir():
            return [
                f"{root}: cannot be created, {parent} is not a folder; choose another --registry"
            ]
        if not os.access(parent, os.W_OK | os.X_OK):
            return [
                f"{root}: cannot be created, {parent} is not writable; choose another --registry"
            ]
        return []
    problems = []
    probe = root / f"{TMP_PREFIX}{os.getpid()}-preflight"
    try:
        probe.write_bytes(b"intent-ci preflight\n")
    except OSError as err:
        problems.append(
            f"{root}: the registry is not writable ({describe_os_error(err)}); fix its "
            "permissions or choose another --registry"
        )
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    lock = root / LOCK
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        return [
            *problems,
            f"{lock}: cannot open the registry lock ({describe_os_error(err)}); every commit "
            "takes it, so remove or repair it",
        ]
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            problems.append(
                f"{lock}: cannot lock the registry ({describe_os_error(err)}); intent-ci needs "
                "flock, which this filesystem does not provide: use a local folder"
            )
        # EAGAIN: another run holds it right now, committing; this run will wait its turn.
    finally:
        os.close(fd)
    return problems


def disk_problems(registry: Registry, needed: int) -> list[str]:
    """Whether the registry's filesystem has room for a release of `needed` bytes (with margin)."""
    where = _existing(registry.root)
    free = shutil.disk_usage(where).free
    want = int(needed * SPACE_MARGIN)
    if free >= want:
        return []
    return [
        f"{registry.root}: {free / 1e6:.1f} MB free on its filesystem, but the release needs about "
        f"{want / 1e6:.1f} MB ({needed / 1e6:.1f} MB estimated, x{SPACE_MARGIN} margin); free some "
        "space or choose another --registry"
    ]


def preflight(
    registry: Registry,
    *,
    adapter_config: dict[str, Any],
    model_config: ModelConfig,
    model_type: str,
    release_bytes: int,
) -> None:
    """Run every check; raise once, listing every problem.

    Args:
        registry: where the release will be written.
        adapter_config: the adapter config peft will write (`intent_ci.release.adapter_config_of`).
        model_config: the release's resolved model config.
        model_type: the backbone's ``model_type``.
        release_bytes: `estimate_release_bytes` of the release.

    Raises:
        IntentCIError: naming every problem; nothing has been trained or written.
    """
    problems = [
        p.replace("adapter_config.json (as peft will write it): ", "")
        for p in adapter_schema_problems(
            adapter_config, "adapter_config.json (as peft will write it)", model_config, model_type
        )
    ]
    if problems:
        import peft

        problems = [
            f"peft {peft.__version__} would write an adapter_config.json that intent-ci's strict "
            f"adapter schema refuses ({'; '.join(problems)}); install a peft version this "
            "intent-ci supports, or extend the schema in intent_ci/release.py after checking "
            "what the keys do"
        ]
    unwritable = registry_problems(registry)
    problems += unwritable
    if not unwritable:  # free space counts only where the release can be written at all
        problems += disk_problems(registry, release_bytes)
    if problems:
        raise IntentCIError(
            "checked before training, nothing was trained or written: " + " | ".join(problems)
        )
