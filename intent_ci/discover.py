"""Intent discovery: turn what users ask and a release cannot answer into candidate intents.

The stages, in the order data flows:

    read_traffic     .txt / CSV / JSONL / Parquet / the serve traffic log -> distinct utterances
                     with counts (exact duplicates folded: case, spacing and punctuation ignored)
    select           the release rejects them as out-of-scope, would reject them at a lower
                     in-scope recall (DiscoverConfig.target_recall), or accepts them with a low
                     margin or a low score (DiscoverConfig.max_margin, .min_score)
    embed            the frozen backbone's or the release's own pooled features
    cluster          no K: community detection, HDBSCAN or agglomerative clustering; noise stays
                     unclustered; pieces with similar centres merge (DiscoverConfig.merge_similarity);
                     at most DiscoverConfig.max_candidates
    describe         c-TF-IDF keywords and a valid intent name, representatives, near duplicates
                     folded and counted, cohesion, the nearest existing intent
    write_candidates <name>.txt per candidate (what `add-intent --data` reads), candidates.json,
                     report.md, report.png, and existing_intent_examples.csv for candidates that
                     probably belong to an existing intent
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from intent_ci.calibration import calibration_rows, threshold_for_recall
from intent_ci.config import NAME_PATTERN, DiscoverConfig
from intent_ci.data import _read_utf8, _table_rows, normalise
from intent_ci.errors import IntentCIError
from intent_ci.registry import owner_alive
from intent_ci.update import memory_index

logger = logging.getLogger(__name__)

TRAFFIC_SUFFIXES = (".txt", ".csv", ".jsonl", ".json", ".parquet")
OOS = "oos"
LOG_FIELDS = ("timestamp", "release", "in_scope", "score", "confidence")
"""Fields of a row of the serve traffic log; such a row without `text` was redacted."""
CANDIDATES_JSON = "candidates.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
EXISTING_EXAMPLES = "existing_intent_examples.csv"
"""Utterances of candidates that probably belong to an existing intent: text,intent columns."""


# ---- reading traffic -----------------------------------------------------------------------------
@dataclass
class Traffic:
    """Distinct traffic utterances (first spelling seen) with how often each occurred."""

    texts: list[str]
    counts: list[int]
    files: list[str]
    rows: int = 0
    redacted: int = 0
    too_long: int = 0

    @property
    def total(self) -> int:
        return int(sum(self.counts))


def dedup_key(text: str) -> str:
    """Exact-duplicate key: case, spacing and punctuation ignored (apostrophes kept)."""
    key = re.sub(r"[^\w']+", " ", text.casefold()).strip()
    return key or normalise(text)


def traffic_files(paths: list[str | Path]) -> list[Path]:
    """Expand folders into the traffic files under them (sorted), check files exist.

    Raises:
        IntentCIError: for a missing path, a file of an unknown kind, or a folder without traffic.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in TRAFFIC_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise IntentCIError(
                    f"{path}: no traffic files in this folder; expected {', '.join(TRAFFIC_SUFFIXES)}"
                )
            out += found
        elif path.is_file():
            if path.suffix.lower() not in TRAFFIC_SUFFIXES:
                raise IntentCIError(
                    f"{path}: unknown traffic file type {path.suffix or '(none)'!r}; expected "
                    f"{', '.join(TRAFFIC_SUFFIXES)}"
                )
            out.append(path)
        else:
            raise IntentCIError(f"{path}: no such file or folder")
    return out


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _texts_from_records(
    path: Path, columns: list[str], records: list[tuple[str, dict]]
) -> tuple[list[str], int]:
    """The `text` values of table rows; redacted serve-log rows (no text) are counted, not read."""
    is_log = any(c in columns for c in LOG_FIELDS)
    if "text" not in columns and not is_log:
        raise IntentCIError(
            f"{path}: missing column `text`; found {', '.join(map(str, columns)) or 'none'}; "
            "expected a `text` column (or the serve traffic log)"
        )
    texts, redacted = [], 0
    for where, record in records:
        value = record.get("text")
        if isinstance(value, str):
            texts.append(value)
        elif value is None and is_log:
            redacted += 1
        elif value is None:
            continue  # an empty CSV cell
        else:
            raise IntentCIError(f"{where}: `text` must be a string, got {value!r}")
    return texts, redacted


def _drop_partial_last_line(path: Path, content: str) -> str:
    """A serve log still being written may end in half a row: skip it, with a warning."""
    head, _, last = content.rpartition("\n")
    try:
        json.loads(last)
    except json.JSONDecodeError:
        logger.warning("%s: skipped an incomplete last line (file still being written?)", path)
        return head + "\n" if head else ""
    return content


def _unfinished_serve_log(path: Path) -> bool:
    """A `serve` traffic-log file (``traffic-*.jsonl``) without one complete row: empty, or
    half of its first row. The server opens a file before its first row reaches the disk, so
    a log folder read while a server runs, or after one was killed, can hold such a file."""
    from fnmatch import fnmatch

    from intent_ci.traffic import TRAFFIC_GLOB

    if not fnmatch(path.name, TRAFFIC_GLOB):
        return False
    content = path.read_bytes()
    if b"\n" in content:
        return False
    try:
        json.loads(content)
    except ValueError:  # also UnicodeDecodeError: a row cut inside a character
        return True
    return False


def read_traffic_file(path: Path, max_chars: int = 500) -> tuple[list[str], int]:
    """Utterances of one traffic file and the number of redacted rows skipped.

    Args:
        path: ``.txt`` (one utterance per line), ``.csv`` / ``.jsonl`` / ``.json`` (JSON Lines)
            with a ``text`` column, the serve traffic log (JSONL), or ``.parquet``.
        max_chars: lines much longer than this are an error (not an utterance).

    Raises:
        IntentCIError: naming the file for an empty file, a missing ``text`` column, non-UTF-8
            bytes, malformed CSV/JSON or an unreadable Parquet file.
    """
    import datasets

    suffix = path.suffix.lower()
    if _unfinished_serve_log(path):
        logger.warning(
            "%s: no complete row yet (a serve log file just opened, or its server was killed "
            "before the first row was written out); skipped",
            path,
        )
        return [], 0
    if path.stat().st_size == 0 or (suffix != ".parquet" and not path.read_bytes().strip()):
        raise IntentCIError(f"{path}: traffic file is empty; expected utterances")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:  # pyarrow itself: datasets' reader logs each failure before raising it
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for a damaged file
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise IntentCIError(f"{path}: unreadable Parquet file ({first})") from None
        columns = table.column_names
        if not table.num_rows:
            raise IntentCIError(f"{path}: Parquet file has no rows; expected utterances")
        records = (
            [
                (f"{path} row {i + 1}", {"text": v})
                for i, v in enumerate(table.column("text").to_pylist())
            ]
            if "text" in columns
            else [(f"{path} row {i + 1}", {}) for i in range(table.num_rows)]
        )
        texts, redacted = _texts_from_records(path, columns, records)
    else:
        content = _read_utf8(path, max_chars)
        if not content.strip():
            raise IntentCIError(f"{path}: traffic file is empty; expected utterances")
        if suffix == ".txt":
            texts = datasets.Dataset.from_text(str(path), keep_in_memory=True)["text"]
            redacted = 0
        else:
            if suffix != ".csv" and not content.endswith("\n"):
                content = _drop_partial_last_line(path, content)
            columns, rows = _table_rows(path, content)
            records = [(f"{path}:{line}", record) for line, record in rows]
            texts, redacted = _texts_from_records(path, columns, records)
    texts = [t for t in (_clean(t) for t in texts) if t]
    if not texts and not redacted:
        raise IntentCIError(f"{path}: traffic file has no utterances")
    return texts, redacted


def read_traffic(
    paths: list[str | Path] | str | Path, max_chars: int = 500, progress: bool = True
) -> Traffic:
    """Read every traffic file and fold exact duplicates, counting them.

    Args:
        paths: files and folders (folders are searched for traffic files).
        max_chars: utterances longer than this are skipped and counted (add-intent would refuse
            them).
        progress: show a tqdm bar over files.

    Raises:
        IntentCIError: see `read_traffic_file`; also when no file holds a readable utterance.
    """
    files = traffic_files([paths] if isinstance(paths, (str, Path)) else list(paths))
    index: dict[str, int] = {}
    texts: list[str] = []
    counts: list[int] = []
    rows = redacted = too_long = 0
    for path in tqdm(files, desc="reading traffic", unit="file", disable=not progress):
        file_texts, file_redacted = read_traffic_file(path, max_chars)
        rows += len(file_texts) + file_redacted
        redacted += file_redacted
        for text in file_texts:
            if len(text) > max_chars:
                too_long += 1
                continue
            key = dedup_key(text)
            at = index.get(key)
            if at is None:
                index[key] = len(texts)
                texts.append(text)
                counts.append(1)
            else:
                counts[at] += 1
    if redacted:
        logger.warning(
            "skipped %d redacted traffic-log row(s) without text (served with --log-redact)",
            redacted,
        )
    if too_long:
        logger.warning(
            "skipped %d utterance(s) longer than %d characters (discover.max_chars)",
            too_long,
            max_chars,
        )
    if not texts:
        raise IntentCIError(
            f"no utterances to read in {', '.join(map(str, files))}: {rows} row(s), {redacted} "
            f"redacted, {too_long} too long"
        )
    return Traffic(texts, counts, [str(f) for f in files], rows, redacted, too_long)


# ---- scoring and embedding -----------------------------------------------------------------------
@dataclass
class Scored:
    """What the release says about each distinct utterance."""

    intent: list[str]
    confidence: np.ndarray
    in_scope: np.ndarray
    score: np.ndarray
    margin: np.ndarray
    features: np.ndarray | None = None
    """Unit-length release features of every utterance (``features: release``), else None."""
    discovery_threshold: float | None = None
    """Scores below it are candidates (`discovery_threshold`); None: only what is rejected."""


def discovery_threshold(classifier: Any, cfg: DiscoverConfig) -> float | None:
    """The score below which an utterance is a candidate: the release's threshold for
    `cfg.target_recall`, set with its own score on its calibration utterances, and never
    below its serving threshold. The serving threshold when `cfg.target_recall` is None or the
    release has no calibration utterances (pulled with ``--no-replay``)."""
    threshold = classifier.threshold
    calibration = classifier.release.calibration
    if threshold is None or cfg.target_recall is None or calibration is None:
        return threshold
    texts = [t for t, _ in calibration_rows(calibration[0], classifier.intents)]
    if not texts:
        return threshold
    logits, features = classifier.logits_and_features(texts, cfg.batch_size)
    wider = threshold_for_recall(classifier.scores(logits, features), cfg.target_recall)
    return max(threshold, wider)


def score_traffic(classifier: Any, texts: list[str], cfg: DiscoverConfig) -> Scored:
    """One forward pass: the release's out-of-scope decision, best intent and top-2 margin, and
    (with ``features: release``) the embeddings clustering needs, from the same pass.

    The decision is `IntentClassifier.predict`'s with ``reject=True``: the release's own score
    (`IntentClassifier.scores`) against its calibrated threshold; a release without calibration
    accepts everything.
    """
    x, logits = encode(
        classifier, texts, "release", cfg.batch_size, desc="scoring traffic", with_logits=True
    )
    probs = logits.softmax(-1)
    scores = classifier.scores(logits, torch.from_numpy(x))
    threshold = classifier.threshold
    in_scope = (
        np.ones(len(texts), dtype=bool)
        if threshold is None
        else (scores >= threshold).numpy().astype(bool)
    )
    top = probs.topk(min(2, probs.shape[-1]), dim=-1)
    margin = (
        (top.values[:, 0] - top.values[:, 1]).numpy()
        if probs.shape[-1] > 1
        else np.ones(len(texts), dtype=np.float32)
    )
    return Scored(
        intent=[classifier.intents[i] for i in top.indices[:, 0].tolist()],
        confidence=top.values[:, 0].numpy().astype(np.float32),
        in_scope=in_scope,
        score=scores.numpy().astype(np.float32),
        margin=margin.astype(np.float32),
        features=x if cfg.features == "release" else None,
        discovery_threshold=discovery_threshold(classifier, cfg),
    )


def select(scored: Scored, cfg: DiscoverConfig) -> np.ndarray:
    """Indices of candidates: rejected, below the discovery threshold, or accepted with a low
    margin or low score."""
    mask = ~scored.in_scope | (scored.margin < cfg.max_margin)
    if scored.discovery_threshold is not None:
        mask |= scored.score < scored.discovery_threshold
    if cfg.min_score is not None:
        mask |= scored.score < cfg.min_score
    return np.flatnonzero(mask)


def embed(
    classifier: Any, texts: list[str], features: str, batch_size: int = 64, desc: str = "embedding"
) -> np.ndarray:
    """Unit-length pooled embeddings, shape ``(len(texts), hidden)``, float32.

    Args:
        features: ``backbone`` runs the encoder with the release's LoRA switched off (the frozen
            backbone); ``release`` runs it as the release does.

    Raises:
        IntentCIError: for backbone features of a release whose LoRA was merged.
    """
    return encode(classifier, texts, features, batch_size, desc=desc)[0]


@torch.inference_mode()
def encode(
    classifier: Any,
    texts: list[str],
    features: str,
    batch_size: int = 64,
    *,
    desc: str = "embedding",
    with_logits: bool = False,
) -> tuple[np.ndarray, torch.Tensor | None]:
    """Unit-length pooled embeddings and, with `with_logits` (release features only), the
    release's logits from the same pass. Batches are sorted by length, as in
    `IntentClassifier.logits`; a tqdm bar on the main process.

    Raises:
        IntentCIError: for backbone features of a release whose LoRA was merged.
    """
    model = classifier.model
    hidden = classifier.release.backbone.encoder.config.hidden_size
    if not texts:
        empty = torch.empty(0, len(classifier.intents)) if with_logits else None
        return np.zeros((0, hidden), dtype=np.float32), empty
    if features == "backbone" and not hasattr(model.encoder, "disable_adapter"):
        raise IntentCIError(
            "config field `discover.features`: backbone features need the release's LoRA as a "
            "separate adapter; load the release without merge_lora"
        )
    tokenizer = classifier.tokenizer
    encoded = tokenizer(
        list(texts), truncation=True, max_length=classifier.release.config.model.max_length
    )
    order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
    # Under torchrun / accelerate launch each process encodes every N-th utterance of the
    # length order (shards of equal cost) and every process gets the whole result back.
    rank, processes = _process_share()
    mine = order[rank::processes]
    out = torch.empty(len(texts), hidden)
    logits = torch.empty(len(texts), len(classifier.intents)) if with_logits else None
    off = model.encoder.disable_adapter() if features == "backbone" else _NullContext()
    with off:
        for start in tqdm(
            range(0, len(mine), batch_size),
            desc=desc,
            unit="batch",
            disable=rank != 0,
        ):
            rows = mine[start : start + batch_size]
            batch = tokenizer.pad(
                {key: [encoded[key][i] for i in rows] for key in encoded}, return_tensors="pt"
            ).to(classifier.device)
            pooled = model.pooled(**batch)
            if logits is not None:
                logits[rows] = model.head(pooled).float().cpu()
            out[rows] = F.normalize(pooled.float(), dim=-1).cpu()
    if processes > 1:
        gather_rows([out] if logits is None else [out, logits], order, classifier.device)
    return out.numpy(), logits


def gather_rows(
    tensors: list[torch.Tensor],
    order: list[int],
    device: torch.device | str = "cpu",
    chunk_rows: int = 4096,
) -> None:
    """Fill every process's `tensors` with the rows the other processes computed, in place.

    Process ``r`` of ``N`` computed rows ``order[r::N]`` of each tensor (as :func:`encode`
    shards them); every process knows every share, so only the values travel. They travel
    as tensor all-gathers of `chunk_rows` rows per process at a time, on `device` (NCCL needs
    CUDA tensors, gloo takes CPU ones), so a process holds its tensors plus ``N x chunk_rows``
    rows in flight, not a pickled copy of the whole result per process.
    """
    dist = torch.distributed
    rank, processes = dist.get_rank(), dist.get_world_size()
    shares = [order[r::processes] for r in range(processes)]
    longest = len(shares[0])
    for start in range(0, longest, chunk_rows):
        rows = [share[start : start + chunk_rows] for share in shares]
        width = min(chunk_rows, longest - start)
        for tensor in tensors:
            send = torch.zeros(width, tensor.shape[1], dtype=tensor.dtype, device=device)
            send[: len(rows[rank])] = tensor[rows[rank]].to(device)
            received = [torch.empty_like(send) for _ in range(processes)]
            dist.all_gather(received, send)
            for r, part in enumerate(received):
                if r != rank and rows[r]:
                    tensor[rows[r]] = part[: len(rows[r])].to(tensor.device)


def _process_share() -> tuple[int, int]:
    """``(rank, processes)`` of a started process group; ``(0, 1)`` without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# ---- clustering ------------------------------------------------------------------------------------
def cluster(embeddings: np.ndarray, cfg: DiscoverConfig) -> np.ndarray:
    """Cluster labels (0, 1, ...; -1 = noise) for unit-length `embeddings`, no K given.

    Raises:
        IntentCIError: for agglomerative clustering of more than 20,000 utterances.
    """
    n = len(embeddings)
    labels = np.full(n, -1, dtype=np.int64)
    if n < cfg.min_cluster_size:
        return labels
    if cfg.method == "community":
        try:
            from sentence_transformers.util import community_detection
        except ImportError:
            raise IntentCIError(
                "config field `discover.method`: community needs sentence-transformers; "
                "pip install 'intent-ci[discover]' or choose hdbscan"
            ) from None

        groups = community_detection(
            torch.from_numpy(embeddings),
            threshold=cfg.similarity,
            min_community_size=cfg.min_cluster_size,
            batch_size=1024,
        )
        for k, members in enumerate(groups):
            labels[members] = k
        return labels
    if cfg.method == "hdbscan":
        from sklearn.cluster import HDBSCAN
        from sklearn.decomposition import PCA

        x = embeddings
        if x.shape[1] > cfg.hdbscan_dims and n > cfg.hdbscan_dims:
            x = PCA(n_components=cfg.hdbscan_dims, random_state=0).fit_transform(x)
        return HDBSCAN(min_cluster_size=cfg.min_cluster_size, copy=True).fit_predict(x)
    from sklearn.cluster import AgglomerativeClustering

    if n > 20_000:
        raise IntentCIError(
            f"config field `discover.method`: agglomerative clustering of {n} candidate utterances "
            "needs memory for all their pairwise distances; use community or hdbscan beyond 20,000"
        )
    found = AgglomerativeClustering(
        n_clusters=None,
        metric="cosine",
        linkage="average",
        distance_threshold=1 - cfg.similarity,
    ).fit_predict(embeddings)
    sizes = np.bincount(found)
    keep = {
        c: k
        for k, c in enumerate(c for c in np.argsort(-sizes) if sizes[c] >= cfg.min_cluster_size)
    }
    for i, c in enumerate(found):
        labels[i] = keep.get(int(c), -1)
    return labels


# ---- describing candidates -------------------------------------------------------------------------
def ctfidf_keywords(
    docs: list[list[str]], top: int, weights: list[list[int]] | None = None
) -> list[list[str]]:
    """BERTopic's class-based TF-IDF: the words that set each class (a list of utterances) apart.

    ``W[t, c] = tf[t, c] / |c| * log(1 + A / f[t])``: term frequency within the class, times the
    log of the average words per class over the term's frequency in all classes. Only the first
    ``len(docs) - background`` classes need keywords; all of them shape the weights.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    joined = []
    for k, doc in enumerate(docs):
        reps = weights[k] if weights is not None else [1] * len(doc)
        joined.append(" ".join(" ".join([t] * min(r, 3)) for t, r in zip(doc, reps, strict=True)))
    try:
        vectorizer = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-z][a-z0-9]+\b")
        counts = vectorizer.fit_transform(joined).toarray().astype(np.float64)
    except ValueError:  # every word is a stop word
        return [[] for _ in docs]
    vocab = np.array(vectorizer.get_feature_names_out())
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    avg = counts.sum() / len(docs)
    idf = np.log(1 + avg / np.maximum(counts.sum(axis=0), 1))
    weight = tf * idf
    out = []
    for row in weight:
        best = [int(i) for i in np.argsort(-row, kind="stable") if row[i] > 0][:top]
        out.append([str(vocab[i]) for i in best])
    return out


def make_name(keywords: list[str], taken: set[str], how_many: int) -> str:
    """A valid, unused intent name from keywords: ``refund_card``, else with a number."""
    words = [re.sub(r"[^a-z0-9]+", "_", w.lower()).strip("_") for w in keywords]
    words = [w for w in words if w]
    for n in range(how_many, len(words) + 1):
        name = "_".join(words[:n])[:64].strip("_-")
        if name and NAME_PATTERN.match(name) and name not in taken:
            return name
    stem = ("_".join(words[:how_many]) or "candidate")[:58].strip("_-") or "candidate"
    k = 2
    while f"{stem}_{k}" in taken:
        k += 1
    return f"{stem}_{k}"


@dataclass
class Candidate:
    """One candidate intent, as written to candidates.json."""

    name: str
    size: int
    distinct: int
    joined: int
    """Distinct utterances that joined after clustering (`DiscoverConfig.join_similarity`)."""
    cohesion: float
    keywords: list[str]
    representatives: list[str]
    utterances: list[dict[str, Any]]
    nearest_intent: str | None
    nearest_similarity: float | None
    release_predicts: dict[str, float]
    belongs_to: str | None
    file: str | None = None


@dataclass
class Discovery:
    """The outcome of one discover run."""

    release: str
    traffic: dict[str, Any]
    considered: dict[str, int]
    config: dict[str, Any]
    candidates: list[Candidate] = field(default_factory=list)
    noise: int = 0
    over_cap: int = 0
    message: str = ""
    # for the map (not in the JSON): the rows' embeddings (`x`), each row's position in
    # `candidates` (`labels`, -1: left unclustered), their utterances (`texts`) and the
    # existing intents' centres (`prototypes`)
    plot: dict[str, Any] | None = None
    # what the release said about every distinct utterance, and which were considered (not in
    # the JSON)
    scored: Scored | None = None
    chosen: np.ndarray | None = None
    # the release's replay memory as `update.memory_index` (normalised utterance -> intent):
    # an existing intent's examples file leaves out what the release already stores under
    # that intent, which `update` would refuse (not in the JSON)
    stored: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("plot", "scored", "chosen", "stored"):
                continue
            value = getattr(self, f.name)
            out[f.name] = [asdict(c) for c in value] if f.name == "candidates" else value
        return out


def _near_duplicate_groups(x: np.ndarray, counts: np.ndarray, threshold: float) -> list[list[int]]:
    """Greedy groups (most frequent first) of rows whose cosine similarity is >= threshold."""
    sims = x @ x.T
    order = np.lexsort((np.arange(len(x)), -counts))
    assigned = np.zeros(len(x), dtype=bool)
    groups = []
    for i in order:
        if assigned[i]:
            continue
        members = [j for j in order if not assigned[j] and sims[i, j] >= threshold]
        assigned[members] = True
        groups.append(members)
    return groups


def merge_candidates(x: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Cluster labels after merging candidates whose centres are at least `threshold` similar.

    Complete-linkage agglomerative clustering of the candidates' centres (scikit-learn), cut at
    cosine distance ``1 - threshold``: every pair of pieces that merge is that similar, so merging
    does not chain. Noise (-1) stays noise; the merged candidates are numbered 0, 1, ... in the
    order of their first piece.

    Args:
        x: unit-length embeddings, one row per label.
        labels: cluster labels (0, 1, ...; -1 = noise).
    """
    k = int(labels.max()) + 1 if len(labels) else 0
    if k < 2:
        return labels
    from sklearn.cluster import AgglomerativeClustering

    groups = AgglomerativeClustering(
        n_clusters=None, metric="cosine", linkage="complete", distance_threshold=1 - threshold
    ).fit_predict(_centres(x, labels, k))
    renumber = {int(g): r for r, g in enumerate(dict.fromkeys(groups.tolist()))}
    merged = labels.copy()
    keep = labels >= 0
    merged[keep] = [renumber[int(groups[c])] for c in labels[keep]]
    return merged


def refine_candidates(x: np.ndarray, labels: np.ndarray, passes: int, min_size: int) -> np.ndarray:
    """Cluster labels after `passes` k-means passes over the clustered rows of `x`.

    scikit-learn's KMeans, started at the candidates' centres (n_init 1), so the number of
    candidates is the one clustering found: each clustered row ends in the candidate whose
    centre is nearest. Noise (-1) stays noise; a candidate left with fewer than `min_size` rows
    becomes noise, and the rest are renumbered 0, 1, ... in their old order.

    Args:
        x: unit-length embeddings, one row per label.
        labels: cluster labels (0, 1, ...; -1 = noise).
    """
    k = int(labels.max()) + 1 if len(labels) else 0
    if k < 2:
        return labels
    from sklearn.cluster import KMeans

    inside = np.flatnonzero(labels >= 0)
    centres = np.stack([x[labels == c].mean(axis=0) for c in range(k)])
    moved = (
        KMeans(n_clusters=k, init=centres, n_init=1, max_iter=passes, random_state=0)
        .fit(x[inside])
        .labels_
    )
    sizes = np.bincount(moved, minlength=k)
    renumber = {c: r for r, c in enumerate(c for c in range(k) if sizes[c] >= min_size)}
    refined = np.full(len(labels), -1, dtype=np.int64)
    refined[inside] = [renumber.get(int(c), -1) for c in moved]
    return refined


def join_candidates(
    x: np.ndarray, centres: np.ndarray, known: np.ndarray | None, threshold: float
) -> np.ndarray:
    """The candidate each row of `x` joins, or -1.

    A row joins the candidate whose centre is most similar to it when that cosine similarity is
    at least `threshold` and higher than its similarity to every existing intent's centre.

    Args:
        x: unit-length embeddings of the utterances outside every candidate.
        centres: unit-length centres of the candidates, one row each.
        known: unit-length centres of the existing intents, or None.
    """
    if not len(x) or not len(centres):
        return np.full(len(x), -1, dtype=np.int64)
    sims = x @ centres.T
    best = sims.argmax(axis=1)
    top = sims[np.arange(len(x)), best]
    ok = top >= threshold
    if known is not None and len(known):
        ok &= top > (x @ known.T).max(axis=1)
    return np.where(ok, best, -1).astype(np.int64)


def join_in_rounds(
    x: np.ndarray,
    labels: np.ndarray,
    k: int,
    rounds: int,
    join: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Labels after `rounds` rounds of joining.

    Each round, every row of `x` still outside a candidate (-1) gets ``join(rows, centres)``,
    with the centres of the `k` candidates as they stand: from the second round on, their
    joined rows included, so a candidate reaches further each round.

    Args:
        x: unit-length embeddings, one row per label.
        labels: cluster labels (0 .. k-1; -1 = outside every candidate).
        join: the candidate each row joins against the given centres, or -1
            (`join_candidates` or `join_by_neighbours`).
    """
    labels = labels.copy()
    for _ in range(rounds):
        todo = np.flatnonzero(labels < 0)
        if not len(todo):
            break
        labels[todo] = join(x[todo], _centres(x, labels, k))
    return labels


def join_by_neighbours(
    x: np.ndarray,
    members: np.ndarray,
    member_labels: np.ndarray,
    known: np.ndarray | None,
    centres: np.ndarray,
    threshold: float,
    k: int,
    chunk: int = 1024,
) -> np.ndarray:
    """The candidate each row of `x` joins, or -1, by its `k` nearest neighbours.

    The neighbours are looked up among the candidates' members and the existing intents' replay
    exemplars. A row joins the candidate that holds more than half of them, when its cosine
    similarity to that candidate's centre is at least `threshold`.

    Args:
        x: unit-length embeddings of the utterances outside every candidate.
        members: unit-length embeddings of the candidates' members; member_labels their
            candidates (0, 1, ...).
        known: unit-length embeddings of the existing intents' exemplars, or None.
        centres: unit-length centres of the candidates, one row each.
        chunk: rows of `x` per matrix product (bounds memory).
    """
    out = np.full(len(x), -1, dtype=np.int64)
    if not len(x) or not len(members):
        return out
    pool = members if known is None or not len(known) else np.concatenate([members, known])
    pool_labels = np.concatenate(
        [member_labels.astype(np.int64), np.full(len(pool) - len(members), -1, dtype=np.int64)]
    )
    k = min(k, len(pool))
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk]
        sims = block @ pool.T
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        votes = pool_labels[nearest]
        for row, v in enumerate(votes):
            v = v[v >= 0]
            if not len(v):
                continue
            counts = np.bincount(v)
            best = int(counts.argmax())
            if counts[best] * 2 > k and float(block[row] @ centres[best]) >= threshold:
                out[start + row] = best
    return out


def _centres(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    centres = np.stack([x[labels == c].mean(axis=0) for c in range(k)])
    return centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)


def cluster_order(labels: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Each cluster's rows (labels >= 0), largest first by traffic occurrences: the order
    `describe` gives the candidates (ties: more distinct utterances, then first row)."""
    clusters = (
        [np.flatnonzero(labels == k) for k in range(int(labels.max()) + 1)] if len(labels) else []
    )
    clusters = [c for c in clusters if len(c)]
    clusters.sort(key=lambda c: (-int(counts[c].sum()), -len(c), int(c[0])))
    return clusters


def describe(
    texts: list[str],
    counts: np.ndarray,
    x: np.ndarray,
    labels: np.ndarray,
    predicted: list[str],
    prototypes: dict[str, np.ndarray],
    background: list[list[str]],
    existing: list[str],
    cfg: DiscoverConfig,
    joined: np.ndarray | None = None,
) -> list[Candidate]:
    """Name and describe each cluster; ordered by size (traffic occurrences), largest first.

    Args:
        joined: per row, whether it joined its candidate after clustering (`join_candidates`);
            keywords, representatives and the centre come from the clustered rows only.
    """
    joined = np.zeros(len(texts), dtype=bool) if joined is None else joined
    clusters = cluster_order(labels, counts)
    cores = [c[~joined[c]] for c in clusters]
    keywords = ctfidf_keywords(
        [[texts[i] for i in c] for c in cores] + background,
        cfg.keywords,
        [[int(counts[i]) for i in c] for c in cores] + [[1] * len(b) for b in background],
    )[: len(clusters)]
    proto_names = list(prototypes)
    proto = np.stack([prototypes[n] for n in proto_names]) if proto_names else None
    taken = set(existing) | {OOS}
    out = []
    for members, words in zip(clusters, keywords, strict=True):
        xm, cm, jm = x[members], counts[members], joined[members]
        centre = xm[~jm].mean(axis=0)
        centre /= max(np.linalg.norm(centre), 1e-12)
        to_centre = xm @ centre
        cohesion = float(np.average(to_centre, weights=cm))
        groups = _near_duplicate_groups(xm, cm, cfg.near_duplicate)
        # representatives: the spelling most often seen in each near-duplicate group, closest to
        # the centre first; from the clustered utterances
        heads = sorted((g for g in groups if not jm[g[0]]), key=lambda g: -float(to_centre[g[0]]))
        picked = [g[0] for g in heads[: cfg.representatives]]
        if len(picked) < 3:  # near duplicates throughout: fill up with the closest others
            rest = [j for j in np.argsort(-to_centre, kind="stable") if j not in picked]
            picked += [int(j) for j in rest[: 3 - len(picked)]]
        reps = [texts[members[j]] for j in picked]
        group_of = {j: g[0] for g in groups for j in g}
        utterances = [
            {
                "text": texts[members[j]],
                "count": int(cm[j]),
                "near_duplicate_of": None if group_of[j] == j else texts[members[group_of[j]]],
                "joined": bool(jm[j]),
            }
            for j in sorted(range(len(members)), key=lambda j: (-int(cm[j]), -float(to_centre[j])))
        ]
        votes = Counter()
        for j, i in enumerate(members):
            votes[predicted[i]] += int(cm[j])
        total = int(cm.sum())
        release_predicts = {k: round(v / total, 4) for k, v in votes.most_common(3)}
        nearest, similarity = None, None
        if proto is not None:
            sims = proto @ centre
            best = int(np.argmax(sims))
            nearest, similarity = proto_names[best], round(float(sims[best]), 4)
        belongs = (
            nearest if similarity is not None and similarity >= cfg.belongs_similarity else None
        )
        name = make_name(words, taken, cfg.name_keywords)
        taken.add(name)
        out.append(
            Candidate(
                name=name,
                size=total,
                distinct=len(members),
                joined=int(jm.sum()),
                cohesion=round(cohesion, 4),
                keywords=words,
                representatives=reps,
                utterances=utterances,
                nearest_intent=nearest,
                nearest_similarity=similarity,
                release_predicts=release_predicts,
                belongs_to=belongs,
            )
        )
    return out


def intent_prototypes(
    classifier: Any, features: str, batch_size: int
) -> tuple[dict[str, np.ndarray], list[list[str]], np.ndarray | None]:
    """Unit-length mean embedding of each existing intent's replay exemplars, the exemplars, and
    their unit-length embeddings (None when there are none)."""
    memory = classifier.release.replay
    intents = [i for i in classifier.intents if memory.get(i)]
    if not intents:
        return {}, [], None
    texts = [t for i in intents for t in memory[i]]
    x = embed(classifier, texts, features, batch_size, desc="embedding existing intents")
    out, at = {}, 0
    for intent in intents:
        n = len(memory[intent])
        centre = x[at : at + n].mean(axis=0)
        out[intent] = centre / max(np.linalg.norm(centre), 1e-12)
        at += n
    return out, [memory[i] for i in intents], x


def discover(classifier: Any, traffic: Traffic, cfg: DiscoverConfig | None = None) -> Discovery:
    """Candidate intents from the traffic that `classifier`'s release rejects or hesitates on.

    Args:
        classifier: a loaded `IntentClassifier` whose release has an out-of-scope rule.
        traffic: distinct utterances with counts (`read_traffic`).
        cfg: defaults when None.
    """
    cfg = cfg or DiscoverConfig()
    texts = traffic.texts
    if classifier.threshold is None:
        logger.warning(
            "release %s has no out-of-scope calibration, so it rejects nothing: only utterances "
            "it accepts with a low margin or score are considered (`intent-ci calibrate` adds one)",
            classifier.name,
        )
    counts = np.asarray(traffic.counts, dtype=np.int64)
    scored = score_traffic(classifier, texts, cfg)
    chosen = select(scored, cfg)
    rejected = int((~scored.in_scope).sum())
    considered = {
        "distinct": len(texts),
        "rejected_distinct": rejected,
        "rejected": int(counts[~scored.in_scope].sum()),
        "low_margin_or_score_distinct": int(len(chosen) - rejected),
        "discovery_threshold": scored.discovery_threshold,
        "candidates_distinct": int(len(chosen)),
        "candidates": int(counts[chosen].sum()),
    }
    result = Discovery(
        release=classifier.name,
        traffic={
            "files": traffic.files,
            "rows": traffic.rows,
            "utterances": traffic.total,
            "distinct": len(texts),
            "redacted_skipped": traffic.redacted,
            "too_long_skipped": traffic.too_long,
        },
        considered=considered,
        config=asdict(cfg),
        scored=scored,
        chosen=chosen,
        stored=memory_index(classifier.release.replay),
    )
    if not len(chosen):
        result.message = (
            f"nothing rejected: release {classifier.name} accepts all {len(texts)} distinct "
            "utterances with a clear margin; no candidates written"
        )
        return result
    cand_texts = [texts[i] for i in chosen]
    cand_counts = counts[chosen]
    x = (
        scored.features[chosen]
        if scored.features is not None
        else embed(
            classifier, cand_texts, cfg.features, cfg.batch_size, desc="embedding candidates"
        )
    )
    labels = cluster(x, cfg)
    if cfg.merge_similarity is not None:
        labels = merge_candidates(x, labels, cfg.merge_similarity)
    if cfg.refine_passes is not None:
        labels = refine_candidates(x, labels, cfg.refine_passes, cfg.min_cluster_size)
    n_clusters = int(labels.max()) + 1 if len(labels) else 0
    if n_clusters > cfg.max_candidates:
        sizes = np.array([cand_counts[labels == k].sum() for k in range(n_clusters)])
        keep = np.argsort(-sizes, kind="stable")[: cfg.max_candidates]
        remap = {int(k): r for r, k in enumerate(keep)}
        result.over_cap = int(
            sum(len(np.flatnonzero(labels == k)) for k in range(n_clusters) if k not in remap)
        )
        labels = np.array([remap.get(int(c), -1) for c in labels])
    prototypes, exemplars, exemplar_x = intent_prototypes(classifier, cfg.features, cfg.batch_size)
    rows, joined = chosen, np.zeros(len(chosen), dtype=bool)
    n_kept = int(labels.max()) + 1 if len(labels) and labels.max() >= 0 else 0
    if cfg.join_similarity is not None and n_kept:
        known = np.stack(list(prototypes.values())) if prototypes else None
        # the members as clustered, before anything joins (neighbour joining only)
        members = (x[labels >= 0], labels[labels >= 0]) if cfg.join_neighbours else None

        def join(y: np.ndarray, centres: np.ndarray) -> np.ndarray:
            if members is None:
                return join_candidates(y, centres, known, cfg.join_similarity)
            return join_by_neighbours(
                y, *members, exemplar_x, centres, cfg.join_similarity, cfg.join_neighbours
            )

        # release features: accepted utterances may join too
        outside = (
            np.setdiff1d(np.arange(len(texts)), chosen)
            if scored.features is not None
            else np.zeros(0, dtype=np.int64)
        )
        y = np.concatenate([x, scored.features[outside]]) if len(outside) else x
        before = np.concatenate([labels, np.full(len(outside), -1, dtype=np.int64)])
        after = join_in_rounds(y, before, n_kept, cfg.join_rounds, join)
        took = np.flatnonzero(after[len(chosen) :] >= 0)
        keep = np.concatenate([np.arange(len(chosen)), len(chosen) + took])
        rows = np.concatenate([chosen, outside[took]])
        joined = (before[keep] < 0) & (after[keep] >= 0)
        labels, x = after[keep], y[keep]
        considered["joined_distinct"] = int(joined.sum())
        considered["joined"] = int(counts[rows[joined]].sum())
    noise_texts = [texts[rows[i]] for i in np.flatnonzero(labels < 0)]
    result.candidates = describe(
        [texts[i] for i in rows],
        counts[rows],
        x,
        labels,
        [scored.intent[i] for i in rows],
        prototypes,
        exemplars + ([noise_texts] if noise_texts else []),
        classifier.intents,
        cfg,
        joined,
    )
    result.noise = int((labels < 0).sum())
    # The map labels each row with its candidate's position (describe orders by size).
    by_candidate = np.full(len(labels), -1, dtype=np.int64)
    for k, members in enumerate(cluster_order(labels, counts[rows])):
        by_candidate[members] = k
    result.plot = {
        "x": x,
        "labels": by_candidate,
        "prototypes": prototypes,
        "texts": [texts[i] for i in rows],
    }
    new = sum(c.belongs_to is None for c in result.candidates)
    result.message = (
        f"{considered['candidates_distinct']} distinct utterances considered "
        f"({rejected} rejected): {new} candidate intent(s), "
        f"{len(result.candidates) - new} probably more examples for existing intents, "
        f"{result.noise} left unclustered"
        + (
            f"; {considered['joined_distinct']} more joined a candidate after clustering"
            if considered.get("joined_distinct")
            else ""
        )
    )
    return result


# ---- writing ---------------------------------------------------------------------------------------
def _check_out(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise IntentCIError(f"--out {out}: exists and is not a folder")
    if any(out.iterdir()) and not force:
        raise IntentCIError(
            f"--out {out}: folder exists and is not empty; pass --force to replace it, or choose "
            "another folder"
        )
    if force and any(out.iterdir()) and not (out / CANDIDATES_JSON).is_file():
        raise IntentCIError(
            f"--out {out}: not a discover output (no {CANDIDATES_JSON}); refusing to replace it "
            "even with --force"
        )


def _clean_leftovers(out: Path) -> None:
    """Remove what a killed `write_candidates` left beside `out`: its staging folder
    (``.<out>.tmp-<pid>-*``) and, if it died between its two renames, put the earlier output
    it had moved aside (``.<out>.old-<pid>-*/<out>``) back in place. Folders of a live run are
    left alone."""
    if not out.parent.is_dir():
        return
    for kind in ("old-", "tmp-"):
        prefix = f".{out.name}.{kind}"
        for entry in sorted(out.parent.iterdir()):
            if (
                not entry.name.startswith(prefix)
                or not entry.is_dir()
                or entry.is_symlink()
                or owner_alive(entry.name, prefix)
            ):
                continue
            moved = entry / out.name
            if kind == "old-" and moved.is_dir() and not out.exists():
                moved.rename(out)
                logger.warning("%s: put back the earlier output a killed run had moved aside", out)
            shutil.rmtree(entry, ignore_errors=True)


def write_candidates(result: Discovery, out: str | Path, *, force: bool = False) -> list[str]:
    """Write the candidates into `out` (staged next to it, then moved into place).

    Returns the written file names. Only candidate files end in ``.txt``.

    Raises:
        IntentCIError: if `out` exists and is not empty without `force`, or is not an earlier
            discover output.
    """
    out = Path(out)
    _clean_leftovers(out)
    _check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        written = []
        belongs_rows, already = [], 0
        for c in result.candidates:
            if c.belongs_to is not None:
                # an utterance the release already stores under that intent is no new example
                # (and `update` refuses it); stored under another intent it is a correction
                rows = [(u["text"], c.belongs_to) for u in c.utterances]
                kept = [r for r in rows if result.stored.get(normalise(r[0])) != r[1]]
                belongs_rows += kept
                already += len(rows) - len(kept)
                continue
            c.file = f"{c.name}.txt"
            (staging / c.file).write_text(
                "\n".join(u["text"] for u in c.utterances) + "\n", encoding="utf-8"
            )
            written.append(c.file)
        if belongs_rows:
            import csv

            with open(staging / EXISTING_EXAMPLES, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["text", "intent"])
                writer.writerows(belongs_rows)
            written.append(EXISTING_EXAMPLES)
        payload = result.to_dict()
        payload["files"] = {
            "candidates": [c.file for c in result.candidates if c.file],
            "existing_intent_examples": EXISTING_EXAMPLES if belongs_rows else None,
            "existing_intent_examples_already_stored": already,
        }
        (staging / CANDIDATES_JSON).write_text(
            json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        written.append(CANDIDATES_JSON)
        (staging / REPORT_MD).write_text(report_markdown(result), encoding="utf-8")
        written.append(REPORT_MD)
        if result.candidates and plot_map(result, staging / REPORT_PNG):
            written.append(REPORT_PNG)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            out.rename(old / out.name)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return written


def report_markdown(result: Discovery) -> str:
    """report.md: the counts first, then one section per candidate, largest first."""
    t, c = result.traffic, result.considered
    lines = [
        f"# Intent discovery on release {result.release}",
        "",
        f"Traffic: {t['utterances']} utterances ({t['distinct']} distinct) from "
        f"{len(t['files'])} file(s)"
        + (f"; {t['redacted_skipped']} redacted rows skipped" if t["redacted_skipped"] else "")
        + (f"; {t['too_long_skipped']} over-long skipped" if t["too_long_skipped"] else "")
        + ".",
        f"Considered: {c['candidates_distinct']} distinct utterances ({c['candidates']} in traffic): "
        f"{c['rejected_distinct']} rejected as out-of-scope, {c['low_margin_or_score_distinct']} "
        "accepted with a low margin or score"
        + (
            f" (candidates score below {c['discovery_threshold']:.3f}, the release's threshold "
            f"for in-scope recall {result.config.get('target_recall')}, or its own if higher)"
            if c.get("discovery_threshold") is not None
            else ""
        )
        + ".",
        "",
        result.message + ".",
        "",
    ]
    if not result.candidates:
        return "\n".join(lines) + "\n"
    lines += [
        "Review each file, rename or delete it, then `intent-ci add-intent --data <file>`. "
        f"Candidates flagged as belonging to an existing intent are in `{EXISTING_EXAMPLES}` "
        "(text,intent), not in a `.txt` file.",
        "",
        "| candidate | size | distinct | cohesion | keywords | nearest intent (similarity) | verdict |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for cand in result.candidates:
        near = (
            f"{cand.nearest_intent} ({cand.nearest_similarity:.2f})" if cand.nearest_intent else "-"
        )
        verdict = (
            f"probably belongs to {cand.belongs_to}: more examples, not a new intent"
            if cand.belongs_to
            else f"new intent: `{cand.file or cand.name + '.txt'}`"
        )
        lines.append(
            f"| {cand.name} | {cand.size} | {cand.distinct} | {cand.cohesion:.2f} | "
            f"{', '.join(cand.keywords)} | {near} | {verdict} |"
        )
    for cand in result.candidates:
        lines += ["", f"## {cand.name}", ""]
        preds = ", ".join(f"{k} {v:.0%}" for k, v in cand.release_predicts.items())
        lines.append(f"Release's best guesses: {preds}.")
        lines += ["", "Representative utterances:", ""]
        lines += [f"- {r}" for r in cand.representatives]
    return "\n".join(lines) + "\n"


def plot_map(result: Discovery, path: Path) -> bool:
    """report.png: PCA map of candidate utterances (by cluster) and existing intents' centres."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning(
            "matplotlib is not installed: report.png skipped (pip install 'intent-ci[discover]')"
        )
        return False
    from sklearn.decomposition import PCA

    data = result.plot or {}
    x, labels, protos = data.get("x"), data.get("labels"), data.get("prototypes") or {}
    if x is None or len(x) < 2:
        return False
    rng = np.random.default_rng(0)
    keep = np.flatnonzero(labels >= 0)
    noise = np.flatnonzero(labels < 0)
    noise = rng.choice(noise, size=min(len(noise), 2000), replace=False) if len(noise) else noise
    keep = rng.choice(keep, size=min(len(keep), 8000), replace=False) if len(keep) else keep
    proto = np.stack(list(protos.values())) if protos else np.zeros((0, x.shape[1]))
    fit_on = np.concatenate([x[keep], x[noise], proto])
    if len(fit_on) < 3:
        return False
    pca = PCA(n_components=2, random_state=0).fit(fit_on)
    fig, ax = plt.subplots(figsize=(11, 8))
    if len(noise):
        p = pca.transform(x[noise])
        ax.scatter(p[:, 0], p[:, 1], s=4, c="#cccccc", label="unclustered")
    if len(proto):
        p = pca.transform(proto)
        ax.scatter(p[:, 0], p[:, 1], s=18, marker="x", c="black", label="existing intents")
        for (px, py), name in zip(p, protos, strict=True):
            ax.annotate(name, (px, py), fontsize=5, color="#555555")
    cmap = plt.get_cmap("tab20")
    for k, cand in enumerate(result.candidates):
        members = keep[labels[keep] == k]
        if not len(members):
            continue
        p = pca.transform(x[members])
        ax.scatter(p[:, 0], p[:, 1], s=8, color=cmap(k % 20))
        cx, cy = p.mean(axis=0)
        ax.annotate(
            cand.name + (f" (-> {cand.belongs_to})" if cand.belongs_to else ""),
            (cx, cy),
            fontsize=8,
            weight="bold",
            color=cmap(k % 20),
        )
    ax.set_title(
        f"Candidates from traffic on release {result.release}: {len(result.candidates)} clusters, "
        "existing intents as x (PCA of the embeddings)"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
