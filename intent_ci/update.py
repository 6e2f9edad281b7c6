"""What an update file asks of its parent release: new intents, more examples, corrections.

An ``update`` file mixes three kinds of rows, told apart against the parent release:

* a row of an intent the parent does not have adds that intent (what ``add-intent`` does);
* a row of an intent the parent has adds an example of it (the intent is *updated*);
* a row is a **correction** when the parent's replay memory holds the utterance under another
  intent, or when the parent predicts another (existing) intent for it.

The functions here are pure: they take the rows, the parent's memory and its predictions, and
return the plan, so the pipeline can list the corrections before any training starts.

With ``train.update_mode: head`` an update trains the head alone on the parent's pooled
embeddings; :func:`known_embeddings` collects the ones the release already has, so that only
the rest need an encoder pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from intent_ci.calibration import bank_rows
from intent_ci.data import normalise
from intent_ci.errors import IntentCIError

FROM_MEMORY, FROM_PREDICTION = "replay_memory", "prediction"


@dataclass(frozen=True)
class Correction:
    """One utterance whose label in the update file differs from the parent's answer."""

    text: str
    intent: str  # the label the update file gives
    previous: str  # the parent's intent for it (its memory's label, else its prediction)
    evidence: str  # FROM_MEMORY or FROM_PREDICTION
    source: str  # file:line of the row
    row: int  # row number in the update file (0-based)

    def to_dict(self) -> dict[str, str]:
        """The manifest's record (without the row number)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "row"}


def memory_index(memory: dict[str, list[str]]) -> dict[str, str]:
    """Normalised utterance -> the intent the replay memory files it under (first one wins)."""
    index: dict[str, str] = {}
    for intent, texts in memory.items():
        for text in texts:
            index.setdefault(normalise(text), intent)
    return index


def confirmations(texts: list[str], intents: list[str], memory: dict[str, list[str]]) -> list[int]:
    """Rows whose utterance the parent's replay memory already stores under the row's intent."""
    index = memory_index(memory)
    return [
        row
        for row, (text, intent) in enumerate(zip(texts, intents, strict=True))
        if index.get(normalise(text)) == intent
    ]


def check_relabels(
    texts: list[str],
    intents: list[str],
    sources: list[str],
    memory: dict[str, list[str]],
    release: str,
) -> None:
    """Refuse rows that 'correct' an utterance to the intent the parent's memory already gives it.

    Such a row teaches nothing (the release already stores that label for it), and in a file of
    corrections it almost always means the wrong column was copied. (Reviewed traffic is read
    differently: there a reviewer confirming the release's answer is expected, and the pipeline
    skips such rows instead.)

    Raises:
        IntentCIError: naming the file and line of the first such row.
    """
    for row in confirmations(texts, intents, memory)[:1]:
        raise IntentCIError(
            f"{sources[row]}: utterance {texts[row]!r} already has intent {intents[row]!r} in "
            f"release {release} (its replay memory stores it under that intent), so there is "
            "nothing to correct; remove the line, or give the intent it should have"
        )


def check_not_emptied(
    parent: dict[str, list[str]],
    after: dict[str, list[str]],
    updated: list[str],
    corrections: list[Correction],
    release: str,
) -> None:
    """Refuse corrections that move every replay exemplar of an intent away from it.

    The intent would stay in the label map with nothing to replay, calibrate or learn from in
    the next release: almost always a bulk relabel that went too far.

    Args:
        parent: the parent's replay memory; `after`, the same less the moved utterances.
        updated: intents the file gives rows of (their memory is re-chosen over those rows).

    Raises:
        IntentCIError: naming the intent and the file lines of the first corrections.
    """
    for intent, texts in parent.items():
        if texts and not after.get(intent) and intent not in set(updated):
            lines = [c.source for c in corrections if c.previous == intent]
            shown = ", ".join(lines[:3]) + (f" and {len(lines) - 3} more" if len(lines) > 3 else "")
            raise IntentCIError(
                f"{shown}: these corrections move all {len(texts)} replay exemplars of intent "
                f"{intent!r} in release {release} to other intents, which would leave "
                f"{intent!r} with nothing to learn from; add utterances of {intent!r} to the "
                f"file, or retire it first (`intent-ci retire {intent}`)"
            )


def find_corrections(
    texts: list[str],
    intents: list[str],
    sources: list[str],
    memory: dict[str, list[str]],
    predicted: list[str],
    old_intents: list[str],
) -> list[Correction]:
    """The rows of an update file that correct the parent release.

    Args:
        texts, intents, sources: the update file's rows.
        memory: the parent's replay memory (``{intent: utterances}``).
        predicted: the parent's prediction for every row.
        old_intents: the parent's intents. A row of a new intent is a correction only through
            the memory (the parent cannot predict an intent it does not have).

    Returns:
        The corrections in file order; the memory's label wins over the prediction.
    """
    if not len(texts) == len(intents) == len(sources) == len(predicted):
        raise IntentCIError("correction search got rows and predictions of different lengths")
    index = memory_index(memory)
    old = set(old_intents)
    found = []
    for row, (text, intent, where, guess) in enumerate(
        zip(texts, intents, sources, predicted, strict=True)
    ):
        stored = index.get(normalise(text))
        if stored is not None and stored != intent:
            found.append(Correction(text, intent, stored, FROM_MEMORY, where, row))
        elif stored is None and intent in old and guess != intent:
            found.append(Correction(text, intent, guess, FROM_PREDICTION, where, row))
    return found


def without_moved(
    memory: dict[str, list[str]], corrections: list[Correction]
) -> dict[str, list[str]]:
    """`memory` without the utterances corrected away from the intent it stores them under."""
    moved = {(c.previous, normalise(c.text)) for c in corrections if c.evidence == FROM_MEMORY}
    return {
        intent: [t for t in texts if (intent, normalise(t)) not in moved]
        for intent, texts in memory.items()
    }


def memory_changes(
    before: dict[str, list[str]], after: dict[str, list[str]]
) -> dict[str, dict[str, list[str]]]:
    """Per intent the parent had: the exemplars added to and removed from its memory."""
    changes = {}
    for intent, old in before.items():
        new = after.get(intent, [])
        added = [t for t in new if t not in set(old)]
        removed = [t for t in old if t not in set(new)]
        if added or removed:
            changes[intent] = {"added": added, "removed": removed}
    return changes


def known_embeddings(
    memory: dict[str, list[str]],
    intents: list[str],
    bank: torch.Tensor | None,
    computed: dict[tuple[str, str], torch.Tensor],
) -> dict[tuple[str, str], torch.Tensor]:
    """The parent's pooled embeddings at hand without an encoder pass: `computed` plus the
    exemplars of `memory` that the parent's `bank` holds.

    Args:
        memory: the parent's replay memory, as its exemplar bank was made from it.
        intents: the parent's intents in head-row order (the bank's row order).
        bank: the parent's exemplar bank (unit-length pooled embeddings of `memory`, rows in
            `intent_ci.calibration.bank_rows` order), or None where the head cannot use it:
            unit length is the same embedding only for a cosine head without a dense layer. A
            bank whose row count does not match `memory` is not used.
        computed: embeddings already at hand, by ``(intent, text)`` (the feature pass's).

    Returns:
        ``(intent, text) -> embedding``; `computed` wins where both have one.
    """
    found = dict(computed)
    keys = bank_rows(memory, intents)
    if bank is not None and len(bank) == len(keys):
        for key, row in zip(keys, bank, strict=True):
            found.setdefault(key, row)
    return found
