"""The replay memory: a few exemplar utterances per intent, stored in every release.

A release's memory is its parent's memory plus exemplars of the intents it adds, so
``add-intent`` never needs the original full training set. Exemplars are chosen by herding
(iCaRL): greedily, so that the running mean of the chosen features stays closest to the class mean.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from intent_ci.config import NAME_PATTERN, ReplayConfig
from intent_ci.errors import IntentCIError

REPLAY_FILE = "replay.json"


def herding(features: torch.Tensor, k: int, forced: list[int] | None = None) -> list[int]:
    """Indices of `k` rows whose running mean best tracks the mean of all rows (iCaRL herding).

    Args:
        forced: rows chosen first whatever their features (at most `k` of them); herding then
            continues from their running mean.
    """
    feats = F.normalize(features.float(), dim=-1)
    k = min(k, feats.shape[0])
    target = feats.mean(0)
    chosen: list[int] = list(dict.fromkeys(forced or []))[:k]
    running = feats[chosen].sum(0) if chosen else torch.zeros_like(target)
    available = torch.ones(feats.shape[0], dtype=torch.bool)
    available[chosen] = False
    for step in range(len(chosen) + 1, k + 1):
        candidate_means = (running.unsqueeze(0) + feats) / step
        distance = (candidate_means - target).norm(dim=-1)
        distance[~available] = float("inf")
        best = int(distance.argmin())
        chosen.append(best)
        available[best] = False
        running += feats[best]
    return chosen


def select_exemplars(
    texts: list[str],
    intents: list[str],
    features: torch.Tensor | None,
    per_intent: int,
    method: str,
    seed: int,
    forced: frozenset[int] | set[int] = frozenset(),
) -> dict[str, list[str]]:
    """Choose up to `per_intent` exemplars per intent, by herding on `features` or at random.

    Args:
        forced: row indices kept first in their intent's memory (an update's corrected
            utterances), up to `per_intent` of them; the rest is chosen by `method`.

    Raises:
        IntentCIError: if herding is asked for without features, or lengths disagree.
    """
    if len(texts) != len(intents) or (features is not None and features.shape[0] != len(texts)):
        raise IntentCIError("replay selection got texts, intents and features of different lengths")
    by_intent: dict[str, list[int]] = {}
    for i, intent in enumerate(intents):
        by_intent.setdefault(intent, []).append(i)
    generator = torch.Generator().manual_seed(seed)
    memory: dict[str, list[str]] = {}
    for intent, rows in by_intent.items():
        first = [j for j, row in enumerate(rows) if row in forced]
        if method == "herding":
            if features is None:
                raise IntentCIError("replay.selection=herding needs features")
            picked = [rows[j] for j in herding(features[rows], per_intent, first)]
        elif method == "random":
            rest = [
                j for j in torch.randperm(len(rows), generator=generator).tolist() if j not in first
            ]
            picked = [rows[j] for j in (first + rest)[:per_intent]]
        else:
            raise IntentCIError(
                f"config field `replay.selection`: expected herding or random, got {method!r}"
            )
        memory[intent] = [texts[j] for j in picked]
    return memory


def replay_per_intent(cfg: ReplayConfig, new_examples: int, old_intents: int) -> int:
    """Exemplars of each old intent to replay in one add-intent release.

    At least ``cfg.train_per_intent``; enough that old exemplars number ``cfg.new_ratio`` times
    the new examples; never more than the memory keeps (``cfg.per_intent``).
    """
    if old_intents < 1:
        return 0
    wanted = math.ceil(cfg.new_ratio * new_examples / old_intents)
    return min(cfg.per_intent, max(cfg.train_per_intent, wanted))


def find_neighbours(
    predicted: list[str], intents: list[str], share: float
) -> dict[str, dict[str, float]]:
    """Each new intent's neighbours: the old intents the parent predicts for its utterances.

    Args:
        predicted: the parent's prediction (an old intent) for each new utterance.
        intents: the new intent of each utterance.
        share: an old intent is a neighbour of a new one when at least this share of the new
            intent's utterances are predicted as it; ``share <= 0`` finds none.

    Returns:
        ``{new intent: {old intent: share of its utterances}}``, most-predicted first, for every
        new intent (an empty mapping when none reaches `share`).
    """
    if len(predicted) != len(intents):
        raise IntentCIError("neighbour search got predictions and intents of different lengths")
    counts: dict[str, Counter[str]] = {}
    for old, new in zip(predicted, intents, strict=True):
        counts.setdefault(new, Counter())[old] += 1
    result: dict[str, dict[str, float]] = {}
    for new, per_old in counts.items():
        total = per_old.total()
        ranked = sorted(per_old.items(), key=lambda item: (-item[1], item[0]))
        result[new] = {old: round(n / total, 4) for old, n in ranked if n / total >= share > 0}
    return result


def draw_replay(
    memory: dict[str, list[str]],
    intents: list[str],
    k: int,
    seed: str,
    whole: frozenset[str] | set[str] = frozenset(),
) -> dict[str, list[str]]:
    """Up to `k` exemplars of each intent in `intents`, drawn without replacement from `memory`.

    Intents in `whole` (the new intents' neighbours) replay their whole memory instead. The
    draw is seeded by `seed` (the parent release and the training seed), so a release is
    reproducible while successive releases replay different exemplars of the same memory.
    """
    rng = random.Random(seed)
    drawn = {}
    for intent in intents:
        pool = memory.get(intent, [])
        drawn[intent] = rng.sample(pool, len(pool) if intent in whole else min(k, len(pool)))
    return drawn


def write_memory(memory: dict[str, list[str]], path: Path) -> None:
    path.write_text(
        json.dumps({"format": 1, "exemplars": memory}, ensure_ascii=False, indent=1),
        encoding="utf-8",
    )


def read_memory(path: Path) -> dict[str, list[str]]:
    """Read and check a release's replay memory.

    Raises:
        IntentCIError: if the file is not the expected JSON shape.
    """
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise IntentCIError(f"{path}: replay memory is not readable JSON ({err})") from None
    exemplars = payload.get("exemplars") if isinstance(payload, dict) else None
    if not isinstance(exemplars, dict):
        raise IntentCIError(f"{path}: replay memory must be an object with an `exemplars` mapping")
    for intent, texts in exemplars.items():
        if (
            not NAME_PATTERN.match(str(intent))
            or not isinstance(texts, list)
            or not all(isinstance(t, str) for t in texts)
        ):
            raise IntentCIError(
                f"{path}: replay entry {intent!r} must map a valid intent name to a list of strings"
            )
    return exemplars


def memory_bytes_per_intent(memory: dict[str, list[str]]) -> float:
    """Mean UTF-8 bytes of exemplar text stored per intent."""
    if not memory:
        return 0.0
    return sum(len(t.encode("utf-8")) for texts in memory.values() for t in texts) / len(memory)
