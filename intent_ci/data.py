"""Labelled utterances in, validated `datasets.Dataset` out.

Accepted sources:

* a CSV file or a JSONL file with ``text`` and ``intent`` columns;
* the ``serve`` traffic log (JSONL, or a CSV export of it, or any table with ``text`` and a
  reviewed ``label`` column): a log's ``intent`` column is the release's own prediction, never a
  label, so only rows a person labelled are read;
* a single ``<intent>.txt`` file, or a folder of them, one utterance per line;
* a `datasets.Dataset` or `datasets.DatasetDict` with ``text`` and ``intent`` columns.

Golden utterances for the regression gate (``utterance: intent`` YAML) are read by
`read_golden`.

Every source is checked before any training starts, and every problem is reported as an
:class:`~intent_ci.errors.IntentCIError` that names the file and line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import datasets
import yaml

from intent_ci.config import NAME_PATTERN, DataConfig, yaml_error
from intent_ci.errors import IntentCIError

logger = logging.getLogger(__name__)

TEXT, INTENT, SOURCE = "text", "intent", "source"
REVIEWED = "label"
"""The column a reviewer adds to ``serve`` traffic-log rows: the intent the utterance should get."""
SERVE_LOG_COLUMNS = ("release", "confidence", "in_scope")
"""Columns every ``serve`` traffic-log row has (`intent_ci.traffic`), which labelled files lack."""
OOS_LABEL = "oos"
"""Rows labelled ``oos`` (CLINC150's convention) are out-of-scope examples, never an intent."""
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class IntentData:
    """Validated examples: a `datasets.Dataset` with ``text``, ``intent`` and ``source`` columns.

    ``source`` is ``"file:line"`` for every row, so later checks can still point at the input.
    ``reviewed`` marks rows a person labelled in traffic (a ``label`` column, see
    `_from_reviewed`): there a row that confirms what a release already stores is expected, not
    a mistake.
    """

    dataset: datasets.Dataset
    origin: str
    reviewed: bool = False

    @property
    def intents(self) -> list[str]:
        """Intents in order of first appearance; ``oos`` (out of scope) is not an intent."""
        return [i for i in dict.fromkeys(self.dataset[INTENT]) if i != OOS_LABEL]

    @property
    def oos_count(self) -> int:
        """Rows labelled ``oos``: out-of-scope examples."""
        return sum(1 for i in self.dataset[INTENT] if i == OOS_LABEL)

    def in_scope(self) -> IntentData:
        """The rows of real intents, without the ``oos`` rows."""
        if not self.oos_count:
            return self
        keep = [i for i, intent in enumerate(self.dataset[INTENT]) if intent != OOS_LABEL]
        return IntentData(self.dataset.select(keep), self.origin, self.reviewed)

    def oos_texts(self) -> list[str]:
        """The utterances labelled ``oos``."""
        return [
            t
            for t, i in zip(self.dataset[TEXT], self.dataset[INTENT], strict=True)
            if i == OOS_LABEL
        ]

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.dataset[INTENT]))

    def __len__(self) -> int:
        return len(self.dataset)


def normalise(text: str) -> str:
    """The key used to spot the same utterance under two intents: case- and space-insensitive."""
    return re.sub(r"\s+", " ", text).strip().casefold()


def _read_utf8(path: Path, max_chars: int, expected: str = "labelled utterances") -> str:
    """Read `path` as UTF-8, naming the line of the first bad byte or over-long line; an empty
    file is an error that says it `expected` something else."""
    raw = path.read_bytes()
    if not raw.strip():
        raise IntentCIError(f"{path}: file is empty; expected {expected}")
    if raw.startswith(_GZIP_MAGIC) or raw.startswith(_ZIP_MAGIC):
        kind = "gzip" if raw.startswith(_GZIP_MAGIC) else "zip"
        raise IntentCIError(
            f"{path}: looks like a {kind} archive, expected plain UTF-8 text; decompress it first"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise IntentCIError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); "
            "expected UTF-8 text, re-encode the file"
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise IntentCIError(f"{path}:{line}: contains a NUL byte; expected plain UTF-8 text")
    # JSON Lines escapes (a control character takes 6) and holds other fields (the serve log's):
    # its utterances are checked one by one, after parsing
    json_lines = path.suffix.lower() in (".jsonl", ".json")
    for number, line in enumerate([] if json_lines else text.split("\n"), start=1):
        if len(line) > max_chars * 4 + 1024:
            # A line this long cannot be a single utterance (CSV quoting included).
            raise IntentCIError(
                f"{path}:{number}: line is {len(line)} characters long; utterances may have at most "
                f"{max_chars} (config field `data.max_chars`)"
            )
    return text.lstrip("\ufeff")


def _from_txt(path: Path, intent: str, cfg: DataConfig) -> datasets.Dataset:
    if not NAME_PATTERN.match(intent):
        raise IntentCIError(
            f"{path}: invalid intent name {intent!r} (from the file name); expected lowercase letters, "
            "digits, '_' or '-', starting with a letter or digit, at most 64 characters, "
            "e.g. refund_status.txt"
        )
    _read_utf8(path, cfg.max_chars)
    loaded = datasets.Dataset.from_text(str(path), keep_in_memory=True)
    texts, sources = [], []
    for number, line in enumerate(loaded[TEXT], start=1):
        if line.strip():
            texts.append(line.strip())
            sources.append(f"{path}:{number}")
    if not texts:
        raise IntentCIError(
            f"{path}: intent {intent!r} has no utterances; expected one utterance per line"
        )
    return datasets.Dataset.from_dict({TEXT: texts, INTENT: [intent] * len(texts), SOURCE: sources})


def _table_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """Columns and ``(line, record)`` rows of a CSV or JSONL file, with real line numbers."""
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            columns = list(reader.fieldnames or [])
            twice = next((c for c in columns if columns.count(c) > 1), None)
            if twice is not None:
                raise IntentCIError(
                    f"{path}:{reader.line_num}: column {twice!r} appears {columns.count(twice)} "
                    "times in the header; expected each column once"
                )
            rows = []
            for record in reader:
                extra = record.pop(None, None)  # DictReader's key for fields past the header's
                if extra is not None and any(field.strip() for field in extra):
                    raise IntentCIError(
                        f"{path}:{reader.line_num}: {len(columns) + len(extra)} fields, the header "
                        f"has {len(columns)}; quote a field that holds a comma "
                        '(e.g. "where is it, please",track_package)'
                    )
                rows.append((reader.line_num, record))
        except csv.Error as err:
            raise IntentCIError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
        return columns, rows
    columns: list[str] = []
    rows = []
    # JSON Lines ends a line at "\n" only: str.splitlines would also break at U+2028, U+2029
    # and U+0085, which json.dumps(ensure_ascii=False) leaves unescaped inside strings
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise IntentCIError(
                f"{path}:{number}: not valid JSON ({err.msg}); expected one object per line"
            ) from None
        if not isinstance(record, dict):
            raise IntentCIError(f"{path}:{number}: expected a JSON object with `text` and `intent`")
        columns.extend(k for k in record if k not in columns)
        rows.append((number, record))
    return columns, rows


def _from_reviewed(path: Path, rows: list[tuple[int, dict]]) -> datasets.Dataset:
    """The reviewed rows of a ``serve`` traffic log or an export of it: ``text`` labelled with
    ``label``.

    Rows without a label (not reviewed) or without text (``serve --redact``) are skipped and
    counted; a repeated (utterance, label) pair is read once. An ``intent`` column, the
    release's prediction, is never read.
    """
    texts, intents, sources = [], [], []
    unreviewed = redacted = repeated = 0
    seen: set[tuple[str, str]] = set()
    for number, record in rows:
        where = f"{path}:{number}"
        label = record.get(REVIEWED)
        if label is None or (isinstance(label, str) and not label.strip()):
            unreviewed += 1
            continue
        if not isinstance(label, str):
            raise IntentCIError(f"{where}: `{REVIEWED}` must be an intent name, got {label!r}")
        value = record.get(TEXT)
        if value is None:
            redacted += 1
            continue
        if not isinstance(value, str) or not value.strip():
            raise IntentCIError(f"{where}: empty `text`; expected an utterance")
        key = (normalise(value), label.strip())
        if key in seen:
            repeated += 1
            continue
        seen.add(key)
        texts.append(value.strip())
        intents.append(label.strip())
        sources.append(where)
    if not texts:
        raise IntentCIError(
            f"{path}: a reviewed traffic file with no reviewed rows ({unreviewed} without a "
            f"`{REVIEWED}`, {redacted} redacted); its `{INTENT}` column is the release's own "
            f"prediction, not a label: add a `{REVIEWED}` column with the right intent (or "
            f"`{OOS_LABEL}`) to the rows to learn from"
        )
    if unreviewed or redacted or repeated:
        logger.warning(
            "%s: reviewed traffic: read %d reviewed row(s); skipped %d without a `%s` "
            "(not reviewed), %d redacted (no text) and %d repeats of a reviewed utterance",
            path,
            len(texts),
            unreviewed,
            REVIEWED,
            redacted,
            repeated,
        )
    return datasets.Dataset.from_dict({TEXT: texts, INTENT: intents, SOURCE: sources})


def _from_table(path: Path, cfg: DataConfig) -> tuple[datasets.Dataset, bool]:
    """The rows of a CSV or JSONL file, and whether they are reviewed traffic.

    A table is reviewed traffic when it is a ``serve`` log (its columns) or has ``text`` and
    ``label`` but no ``intent``. With ``intent`` and ``label`` but not the log's columns it is
    refused: in an export of a log ``intent`` is the release's prediction (reading it would
    teach the release its own mistakes), in other files (e.g. a dataset export with numeric
    class ids in ``label``) it is the label, and the file cannot say which.
    """
    text = _read_utf8(path, cfg.max_chars)
    columns, rows = _table_rows(path, text)
    serve_log = all(c in columns for c in SERVE_LOG_COLUMNS)
    if rows and not serve_log and REVIEWED in columns and INTENT in columns:
        raise IntentCIError(
            f"{path}: has both an `{INTENT}` and a `{REVIEWED}` column, so which one labels the "
            f"rows is ambiguous; a reviewed traffic export keeps the log's columns "
            f"({', '.join(SERVE_LOG_COLUMNS)}: then `{REVIEWED}` labels and `{INTENT}`, the "
            f"release's prediction, is ignored) or drops `{INTENT}`; a labelled file keeps one "
            f"label column, `{INTENT}`"
        )
    if rows and (serve_log or (REVIEWED in columns and TEXT in columns)):
        return _from_reviewed(path, rows), True
    missing = [c for c in (TEXT, INTENT) if c not in columns]
    if missing:
        raise IntentCIError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(columns) or 'none'}; "
            "expected columns `text` and `intent`"
        )
    if not rows:
        raise IntentCIError(f"{path}: has a header but no rows; expected labelled utterances")
    texts, intents, sources = [], [], []
    for number, record in rows:
        where = f"{path}:{number}"
        value, intent = record.get(TEXT), record.get(INTENT)
        if not isinstance(value, str):
            raise IntentCIError(f"{where}: `text` must be a string, got {value!r}")
        if not value.strip():
            raise IntentCIError(f"{where}: empty `text`; expected an utterance")
        if intent is not None and not isinstance(intent, str):
            raise IntentCIError(f"{where}: `intent` must be a string, got {intent!r}")
        if intent is None or not intent.strip():
            raise IntentCIError(f"{where}: empty `intent`; expected an intent name")
        texts.append(value.strip())
        intents.append(intent.strip())
        sources.append(where)
    return datasets.Dataset.from_dict({TEXT: texts, INTENT: intents, SOURCE: sources}), False


def _from_dataset(data: datasets.Dataset | datasets.DatasetDict, split: str) -> datasets.Dataset:
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise IntentCIError(f"DatasetDict has no split {split!r}; it has {', '.join(data)}")
        data = data[split]
    missing = [c for c in (TEXT, INTENT) if c not in data.column_names]
    if missing:
        raise IntentCIError(
            f"dataset: missing column(s) {', '.join(missing)}; found {', '.join(data.column_names)}; "
            "expected `text` and `intent`"
        )
    sources = [f"dataset row {i}" for i in range(len(data))]
    texts = [t.strip() if isinstance(t, str) else t for t in data[TEXT]]
    intents = [i.strip() if isinstance(i, str) else i for i in data[INTENT]]
    for text, intent, where in zip(texts, intents, sources, strict=True):
        if not isinstance(text, str) or not text:
            raise IntentCIError(f"{where}: empty `text`; expected an utterance")
        if not isinstance(intent, str) or not intent:
            raise IntentCIError(f"{where}: empty `intent`; expected an intent name")
    return datasets.Dataset.from_dict({TEXT: texts, INTENT: intents, SOURCE: sources})


def read_examples(
    source: str | Path | datasets.Dataset | datasets.DatasetDict,
    cfg: DataConfig | None = None,
    *,
    split: str = "train",
    known_intents: Collection[str] = (),
) -> IntentData:
    """Load labelled utterances from any supported source and validate them.

    Args:
        source: CSV/JSONL file, ``<intent>.txt`` file, folder of ``.txt`` files, or a dataset.
        cfg: limits on names, lengths and counts.
        split: which split to take from a `DatasetDict`.
        known_intents: intents a release already has; `cfg.min_examples_per_intent` does not
            apply to them (an update may add one more example, or correct one utterance).

    Raises:
        IntentCIError: naming the file and line for every kind of bad input.
    """
    cfg = cfg or DataConfig()
    reviewed = False
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        origin = "dataset"
        dataset = _from_dataset(source, split)
    else:
        path = Path(source)
        origin = str(path)
        if not path.exists():
            raise IntentCIError(
                f"{path}: no such file or folder; expected a CSV, JSONL, .txt file or a folder of .txt files"
            )
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            txt = [p for p in files if p.suffix == ".txt"]
            others = [
                p.name
                for p in files
                if p.suffix != ".txt" and p.name.lower() not in ("readme.md", "license")
            ]
            if not txt:
                raise IntentCIError(
                    f"{path}: folder has no <intent>.txt files; expected one file per intent"
                )
            if others:
                raise IntentCIError(
                    f"{path}: unexpected file(s) {', '.join(others)}; a data folder holds only <intent>.txt files"
                )
            dataset = datasets.concatenate_datasets([_from_txt(p, p.stem, cfg) for p in txt])
        elif path.suffix == ".txt":
            dataset = _from_txt(path, path.stem, cfg)
        elif path.suffix.lower() in (".csv", ".jsonl"):
            dataset, reviewed = _from_table(path, cfg)
        else:
            raise IntentCIError(
                f"{path}: unsupported file type {path.suffix!r}; expected .csv, .jsonl, .txt or a folder"
            )
    _validate(dataset, cfg, set(known_intents))
    return IntentData(dataset=dataset, origin=origin, reviewed=reviewed)


def _validate(dataset: datasets.Dataset, cfg: DataConfig, known: set[str]) -> None:
    seen: dict[str, tuple[str, str]] = {}
    for text, intent, where in zip(dataset[TEXT], dataset[INTENT], dataset[SOURCE], strict=True):
        if not NAME_PATTERN.match(intent):
            raise IntentCIError(
                f"{where}: invalid intent name {intent!r}; expected lowercase letters, digits, '_' or '-', "
                "starting with a letter or digit, at most 64 characters"
            )
        if len(text) > cfg.max_chars:
            raise IntentCIError(
                f"{where}: utterance is {len(text)} characters long; at most {cfg.max_chars} allowed "
                "(config field `data.max_chars`)"
            )
        key = normalise(text)
        if key in seen and seen[key][0] != intent:
            first_intent, first_where = seen[key]
            raise IntentCIError(
                f"{where}: utterance {text!r} is labelled {intent!r} here but {first_intent!r} at "
                f"{first_where}; each utterance must have exactly one intent"
            )
        seen.setdefault(key, (intent, where))
    counts = Counter(dataset[INTENT])
    for intent, n in counts.items():
        if intent != OOS_LABEL and intent not in known and n < cfg.min_examples_per_intent:
            first = dataset[SOURCE][dataset[INTENT].index(intent)].rsplit(":", 1)[0]
            raise IntentCIError(
                f"{first}: intent {intent!r} has {n} utterance(s); at least {cfg.min_examples_per_intent} "
                "are needed (config field `data.min_examples_per_intent`)"
            )


def check_has_intents(data: IntentData, what: str) -> None:
    """Refuse data whose every row is labelled ``oos``: nothing to train.

    Args:
        what: whose utterances the data should give, for the message ("the new intents'").

    Raises:
        IntentCIError: naming the data.
    """
    if not data.intents:
        raise IntentCIError(
            f"{data.origin}: every row is labelled {OOS_LABEL!r}; `{OOS_LABEL}` is reserved for "
            f"out-of-scope examples, not an intent to train; give {what} utterances (rows "
            f"labelled {OOS_LABEL!r} may come with them, for calibration)"
        )


def check_new_intents(data: IntentData, existing: list[str], release: str) -> None:
    """Refuse to 'add' an intent the parent release already predicts, or only ``oos`` rows.

    Raises:
        IntentCIError: naming the first file and line of the clashing intent, or the data when
            every row is labelled ``oos``.
    """
    check_has_intents(data, "the new intents'")
    known = set(existing)
    for intent, where in zip(data.dataset[INTENT], data.dataset[SOURCE], strict=True):
        if intent in known:
            raise IntentCIError(
                f"{where}: intent {intent!r} already exists in release {release}; add-intent adds new "
                "intents only (rename it, or use `intent-ci update` to add examples to or correct "
                "an existing intent)"
            )


def check_known_intents(data: IntentData, known: list[str], release: str) -> None:
    """Refuse evaluation data with intents the release cannot predict.

    Raises:
        IntentCIError: naming the unknown intents and where the first one occurs.
    """
    known_set = set(known)
    unknown = [i for i in data.intents if i not in known_set]
    if unknown:
        first = data.dataset[SOURCE][data.dataset[INTENT].index(unknown[0])]
        raise IntentCIError(
            f"{first}: intent(s) {', '.join(map(repr, unknown))} are not in release {release} "
            f"(it knows {len(known)} intents: {', '.join(known[:8])}{', …' if len(known) > 8 else ''})"
        )


def read_texts(path: str | Path, max_chars: int) -> list[str]:
    """Read utterances to classify: one per line of a text file, or the `text` field of JSONL/CSV.

    Utterances longer than `max_chars` are kept: the classifier truncates them to the model's
    token limit and warns with a count (see `IntentClassifier.logits`).

    Raises:
        IntentCIError: for a missing, empty or non-UTF-8 file, or an empty or whitespace-only
            utterance (naming the file and line).
    """
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise IntentCIError(f"{path}: {what}; expected a file with one utterance per line")
    text = _read_utf8(path, max_chars, "utterances to classify")
    if path.suffix.lower() == ".csv":
        return _csv_texts(path, text)
    # "\n" ends a line (not U+2028 and the other breaks str.splitlines knows, which JSON Lines
    # may hold inside a string); blank lines at the very end are not utterances
    lines = [line.rstrip("\r") for line in text.rstrip().split("\n")]
    texts = []
    for number, line in enumerate(lines, 1):
        if path.suffix.lower() in (".jsonl", ".json"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise IntentCIError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(TEXT), str):
                raise IntentCIError(f"{path}:{number}: expected an object with a `text` string")
            value = record[TEXT]
        else:
            value = line
        if not value.strip():
            raise IntentCIError(
                f"{path}:{number}: empty utterance; expected one utterance per line "
                "(remove blank lines)"
            )
        texts.append(value.strip())
    if not texts:
        raise IntentCIError(f"{path}: no utterances found")
    return texts


def _csv_texts(path: Path, text: str) -> list[str]:
    """The `text` column of a CSV file, as `read_texts` promises (not its raw lines: the header
    and any label column would be classified as utterances)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or TEXT not in reader.fieldnames:
        found = ", ".join(reader.fieldnames or []) or "nothing"
        raise IntentCIError(
            f"{path}:1: no `{TEXT}` column (found {found}); expected a CSV header with a "
            f"`{TEXT}` column, or a .txt file with one utterance per line"
        )
    texts = []
    for row in reader:
        value = row.get(TEXT)
        if not isinstance(value, str) or not value.strip():
            raise IntentCIError(
                f"{path}:{reader.line_num}: empty `{TEXT}`; expected an utterance to classify"
            )
        texts.append(value.strip())
    if not texts:
        raise IntentCIError(f"{path}: no utterances found")
    return texts


# ---- golden utterances (intent-ci check --golden) ---------------------------------------------
@dataclass(frozen=True)
class GoldenExample:
    """One utterance that must stay right, and where it was written."""

    text: str
    intent: str
    line: int


def read_golden(path: str | Path) -> list[GoldenExample]:
    """Read a golden-utterance YAML file: a mapping of ``utterance: intent``, one per line.

    ::

        "where is my refund": refund_status
        "i lost my card": card_lost

    Raises:
        IntentCIError: naming the file and line of a YAML error, a non-string utterance or
            intent, an invalid intent name, an utterance listed twice, or an empty file.
    """
    path = Path(path)
    if not path.is_file():
        what = (
            "is a folder; expected a golden YAML file" if path.is_dir() else "golden file not found"
        )
        raise IntentCIError(f"{path}: {what}")
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError as err:
        raise IntentCIError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise IntentCIError(yaml_error(path, err)) from None
    expected = 'expected a mapping of `"utterance": intent` lines'
    if node is None:
        raise IntentCIError(f"{path}: no golden utterances; {expected}")
    if not isinstance(node, yaml.MappingNode):
        raise IntentCIError(f"{path}:{node.start_mark.line + 1}: {expected}")
    examples: list[GoldenExample] = []
    seen: dict[str, int] = {}
    for key, value in node.value:
        line = key.start_mark.line + 1
        where = f"{path}:{line}"
        if not isinstance(key, yaml.ScalarNode) or key.tag != "tag:yaml.org,2002:str":
            raise IntentCIError(f"{where}: the utterance must be a string; {expected}")
        text = key.value.strip()
        if not text:
            raise IntentCIError(f"{where}: empty utterance; {expected}")
        if not isinstance(value, yaml.ScalarNode) or value.tag != "tag:yaml.org,2002:str":
            raise IntentCIError(
                f"{where}: the intent of {text!r} must be a single intent name; {expected}"
            )
        intent = value.value.strip()
        if not NAME_PATTERN.match(intent):
            raise IntentCIError(
                f"{where}: invalid intent name {intent!r}; expected lowercase letters, digits, '_' "
                "or '-', starting with a letter or digit, at most 64 characters"
            )
        norm = normalise(text)
        if norm in seen:
            raise IntentCIError(
                f"{where}: utterance {text!r} is already listed at line {seen[norm]}; "
                "list each golden utterance once"
            )
        seen[norm] = line
        examples.append(GoldenExample(text, intent, line))
    if not examples:
        raise IntentCIError(f"{path}: no golden utterances; {expected}")
    return examples
