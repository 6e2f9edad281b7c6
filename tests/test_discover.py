"""intent-ci discover: reading traffic, clustering, naming, output files, the whole command."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from intent_ci.config import NAME_PATTERN, DiscoverConfig, load_discover_config
from intent_ci.discover import (
    CANDIDATES_JSON,
    Discovery,
    cluster,
    ctfidf_keywords,
    dedup_key,
    describe,
    make_name,
    read_traffic,
    write_candidates,
)
from intent_ci.errors import IntentCIError


# ---- reading traffic -----------------------------------------------------------------------------
def test_reads_every_format_and_folds_exact_duplicates(tmp_path):
    import datasets

    folder = tmp_path / "traffic"
    folder.mkdir()
    (folder / "a.txt").write_text("Where is my refund?\nwhere is my  refund\n\nhi there\n")
    (folder / "b.csv").write_text('text,other\n"refund, where is it",1\nhi there!,2\n')
    (folder / "c.jsonl").write_text(
        json.dumps({"text": "card lost"}) + "\n" + json.dumps({"text": "CARD LOST."}) + "\n"
    )
    datasets.Dataset.from_dict({"text": ["parquet row", "card lost"]}).to_parquet(
        str(folder / "d.parquet")
    )
    (folder / "notes.md").write_text("not traffic")
    traffic = read_traffic(folder, progress=False)
    assert traffic.total == 9
    got = dict(zip(traffic.texts, traffic.counts, strict=True))
    assert got == {
        "Where is my refund?": 2,
        "hi there": 2,
        "refund, where is it": 1,
        "card lost": 3,
        "parquet row": 1,
    }
    assert len(traffic.files) == 4


def test_serve_log_rows_without_text_are_skipped_and_counted(tmp_path, caplog):
    log = tmp_path / "traffic-0001.jsonl"
    row = {"timestamp": "2026-01-01T00:00:00Z", "release": "v2", "intent": "card_lost"}
    rows = [
        {**row, "text": "i lost my card", "confidence": 0.9, "in_scope": True, "score": 9.0},
        {**row, "text_sha256": "ab" * 32, "confidence": 0.2, "in_scope": False, "score": 1.0},
        {**row, "text": None, "confidence": 0.2, "in_scope": False, "score": 1.0},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING"):
        traffic = read_traffic([log], progress=False)
    assert traffic.texts == ["i lost my card"]
    assert traffic.redacted == 2
    assert "skipped 2 redacted" in caplog.text


def test_a_log_still_being_written_loses_only_its_half_row(tmp_path, caplog):
    log = tmp_path / "traffic-1.jsonl"
    log.write_text(json.dumps({"text": "hello there", "release": "v1"}) + '\n{"text": "hal')
    with caplog.at_level("WARNING"):
        traffic = read_traffic([log], progress=False)
    assert traffic.texts == ["hello there"] and "incomplete last line" in caplog.text


def test_over_long_utterances_are_skipped_and_counted(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("short one\n" + "x" * 60 + "\n")
    traffic = read_traffic(path, max_chars=50, progress=False)
    assert traffic.texts == ["short one"] and traffic.too_long == 1


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"", r"empty\.txt: traffic file is empty"),
        ("blank.txt", b"\n  \n", r"blank\.txt: traffic file is empty"),
        ("bad.txt", b"fine\n\xff\xfe broken\n", r"bad\.txt:2: not valid UTF-8"),
        (
            "wrong.csv",
            b"utterance,x\nhello,1\n",
            r"wrong\.csv: missing column `text`; found utterance, x",
        ),
        (
            "wrong.jsonl",
            b'{"query": "hello"}\n',
            r"wrong\.jsonl: missing column `text`; found query",
        ),
        ("bad.parquet", b"PAR1 this is not parquet", r"bad\.parquet: unreadable Parquet file"),
        ("number.jsonl", b'{"text": 5}\n', r"number\.jsonl:1: `text` must be a string"),
        ("broken.jsonl", b'{"text": "a"\n', r"broken\.jsonl:1: not valid JSON"),
    ],
)
def test_bad_traffic_names_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(IntentCIError, match=message):
        read_traffic([path], progress=False)


def test_parquet_traffic_without_rows_or_damaged_says_so_in_one_line(tmp_path, capfd):
    import pyarrow as pa
    import pyarrow.parquet as pq

    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    with pytest.raises(IntentCIError, match=r"empty\.parquet: Parquet file has no rows; expected"):
        read_traffic([empty], progress=False)
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(b"PAR1 not really")
    with pytest.raises(IntentCIError, match=r"damaged\.parquet: unreadable Parquet file"):
        read_traffic([damaged], progress=False)
    # nothing logged beside the error (datasets' reader logged each failure first)
    assert capfd.readouterr().err == ""


def test_bad_traffic_paths(tmp_path):
    with pytest.raises(IntentCIError, match="no such file or folder"):
        read_traffic([tmp_path / "missing.txt"], progress=False)
    (tmp_path / "x.docx").write_text("a")
    with pytest.raises(IntentCIError, match=r"x\.docx: unknown traffic file type"):
        read_traffic([tmp_path / "x.docx"], progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IntentCIError, match="no traffic files in this folder"):
        read_traffic([tmp_path / "empty"], progress=False)


def test_dedup_key_ignores_case_spacing_and_punctuation():
    assert dedup_key("Where's my  REFUND?!") == dedup_key("where's my refund")
    assert dedup_key("where is my refund") != dedup_key("wheres my refund")
    assert dedup_key("???") == "???"  # nothing but punctuation keeps its own key


# ---- config ----------------------------------------------------------------------------------------
def test_config_rejects_bad_values_and_unknown_keys(tmp_path):
    with pytest.raises(IntentCIError, match=r"`discover.min_cluster_size`: must be >= 3"):
        DiscoverConfig(min_cluster_size=2)
    with pytest.raises(IntentCIError, match=r"`discover.method`: expected community"):
        DiscoverConfig(method="kmeans")
    path = tmp_path / "d.yaml"
    path.write_text("discover:\n  similarty: 0.6\n")
    with pytest.raises(
        IntentCIError, match=r"unknown key `discover.similarty`. Did you mean `similarity`"
    ):
        load_discover_config(path)
    path.write_text("discover:\n  min_score: fast\n")
    with pytest.raises(IntentCIError, match=r"`discover.min_score`: expected a number"):
        load_discover_config(path)
    with pytest.raises(IntentCIError, match=r"`discover.merge_similarity`: must be a cosine"):
        DiscoverConfig(merge_similarity=1.5)
    path.write_text("discover:\n  join_neighbours: 0\n")
    with pytest.raises(IntentCIError, match=r"`discover.join_neighbours`: must be a number of"):
        load_discover_config(path)
    path.write_text("discover:\n  join_neighbours: 2.5\n")
    with pytest.raises(IntentCIError, match=r"`discover.join_neighbours`"):
        load_discover_config(path)
    path.write_text("discover:\n  join_rounds: 0\n")
    with pytest.raises(IntentCIError, match=r"`discover.join_rounds`: must be a number of"):
        load_discover_config(path)
    path.write_text("discover:\n  refine_passes: 0\n")
    with pytest.raises(IntentCIError, match=r"`discover.refine_passes`: must be a number of"):
        load_discover_config(path)
    path.write_text("discover:\n  similarity: 0.6\n  min_score: 3\n  merge_similarity: null\n")
    cfg = load_discover_config(path)
    assert cfg.similarity == 0.6 and cfg.min_score == 3.0 and cfg.merge_similarity is None


# ---- clustering and naming ------------------------------------------------------------------------
def blobs(
    sizes: list[int], dim: int = 16, spread: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around orthogonal centres, plus labels; size 1 entries are isolated noise."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, n in enumerate(sizes):
        centre = np.zeros(dim)
        centre[k] = 1.0
        xs.append(centre + spread * rng.standard_normal((n, dim)))
        ys += [k] * n
    x = np.concatenate(xs).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.array(ys)


@pytest.mark.parametrize("method", ["community", "hdbscan", "agglomerative"])
def test_each_method_finds_the_groups_and_leaves_noise_out(method):
    x, y = blobs([12, 9, 7, 1, 1, 1])
    labels = cluster(x, DiscoverConfig(method=method, min_cluster_size=5, hdbscan_dims=8))
    for k in range(3):
        found = set(labels[y == k].tolist())
        assert len(found) == 1 and found != {-1}, (method, k, labels)
    assert (labels[y >= 3] == -1).all()
    assert len(set(labels[labels >= 0].tolist())) == 3


def test_agglomerative_refuses_what_it_cannot_hold():
    x = np.zeros((20_001, 2), dtype=np.float32)
    with pytest.raises(IntentCIError, match="agglomerative clustering of 20001"):
        cluster(x, DiscoverConfig(method="agglomerative"))


def test_ctfidf_keywords_prefer_words_that_set_a_class_apart():
    docs = [
        ["my card was stolen", "stolen card please block", "card stolen yesterday"],
        ["where is my card refund", "refund for my card", "card refund status"],
    ]
    words = ctfidf_keywords(docs, 2)
    assert words[0][0] == "stolen" and words[1][0] == "refund"


@pytest.mark.parametrize(
    "keywords, taken, expected",
    [
        (["refund", "card", "late"], set(), "refund_card"),
        (["refund", "card", "late"], {"refund_card"}, "refund_card_late"),
        (["refund", "card"], {"refund_card"}, "refund_card_2"),
        (["Oos"], set(), "oos_2"),  # oos is always taken: make_name gets it from describe()
        ([], set(), "candidate_2"),
        (["café", "ünïcode"], set(), "caf_n_code"),
    ],
)
def test_make_name(keywords, taken, expected):
    taken = set(taken) | {"oos"}
    name = make_name(keywords, taken, 2)
    assert name == expected and NAME_PATTERN.match(name)


def test_describe_orders_by_size_folds_near_duplicates_and_flags_existing_intents():
    x, y = blobs([6, 8], spread=0.02)
    texts = [f"stolen card {i}" for i in range(6)] + [f"weather today {i}" for i in range(8)]
    counts = np.array([5] + [1] * 5 + [1] * 8)
    labels = y.copy()
    protos = {"card_lost": x[:6].mean(axis=0) / np.linalg.norm(x[:6].mean(axis=0))}
    cfg = DiscoverConfig(near_duplicate=0.999, belongs_similarity=0.8)
    cands = describe(texts, counts, x, labels, ["card_lost"] * 14, protos, [], ["card_lost"], cfg)
    assert [c.size for c in cands] == [10, 8]  # by traffic occurrences, not distinct utterances
    stolen, weather = cands
    assert stolen.belongs_to == "card_lost" and stolen.nearest_similarity > 0.99
    assert weather.belongs_to is None and weather.nearest_similarity < 0.5
    assert stolen.utterances[0] == {
        "text": "stolen card 0",
        "count": 5,
        "near_duplicate_of": None,
        "joined": False,
    }
    assert 3 <= len(weather.representatives) <= 5
    assert set(weather.name.split("_")) == {"today", "weather"}
    assert stolen.name not in ("card_lost", "oos") and NAME_PATTERN.match(stolen.name)


def test_join_candidates_needs_the_threshold_and_to_beat_every_existing_intent():
    from intent_ci.discover import join_candidates

    e = np.eye(4, dtype=np.float32)
    centres = e[:2]  # two candidates
    known = e[2:3]  # one existing intent
    x = np.stack(
        [
            e[0],  # on candidate 0
            0.8 * e[1] + 0.6 * e[3],  # 0.8 to candidate 1
            0.6 * e[0] + 0.8 * e[2],  # 0.6 to candidate 0 but 0.8 to the existing intent
            e[3],  # near nothing
        ]
    ).astype(np.float32)
    assert join_candidates(x, centres, known, 0.7).tolist() == [0, 1, -1, -1]
    assert join_candidates(x, centres, known, 0.9).tolist() == [0, -1, -1, -1]
    assert join_candidates(x, centres, None, 0.5).tolist() == [0, 1, 0, -1]
    assert join_candidates(x[:0], centres, known, 0.5).tolist() == []


def test_join_by_neighbours_follows_the_majority_of_the_nearest_points():
    from intent_ci.discover import join_by_neighbours

    e = np.eye(4, dtype=np.float32)

    def unit(v):
        return (v / np.linalg.norm(v)).astype(np.float32)

    # candidate 0's members sit around e0, candidate 1's around e1; an existing intent's
    # exemplars sit around e2, close to candidate 0's side
    members = np.stack([unit(e[0] + d * e[3]) for d in (0.0, 0.1, 0.2)] + [e[1], e[1]])
    member_labels = np.array([0, 0, 0, 1, 1])
    known = np.stack([unit(e[2] + d * e[3]) for d in (0.0, 0.1, 0.2)])
    centres = np.stack([e[0], e[1]])
    x = np.stack(
        [
            unit(e[0] + 0.15 * e[3]),  # among candidate 0's members
            unit(0.4 * e[0] + e[2]),  # nearer the exemplars: they hold the majority
            unit(e[0] + 0.9 * e[2]),  # nearest candidate 0, but 0.74 to its centre
            e[3],  # far from every centre: the threshold keeps it out
        ]
    )
    assert join_by_neighbours(x, members, member_labels, known, centres, 0.5, 3).tolist() == [
        0,
        -1,
        0,
        -1,
    ]
    # the centre threshold still applies
    assert join_by_neighbours(x, members, member_labels, known, centres, 0.8, 3).tolist() == [
        0,
        -1,
        -1,
        -1,
    ]
    # a tie is no majority: one of two neighbours from each side joins nothing
    tie = unit(e[0] + e[2])[None]
    assert join_by_neighbours(tie, members, member_labels, known, centres, 0.0, 2).tolist() == [-1]
    # no exemplars: only the members vote, so the second row joins too; chunking changes nothing
    assert join_by_neighbours(x, members, member_labels, known, centres, 0.3, 3).tolist()[1] == -1
    assert join_by_neighbours(
        x, members, member_labels, None, centres, 0.3, 3, chunk=1
    ).tolist() == [0, 0, 0, -1]
    assert join_by_neighbours(x[:0], members, member_labels, known, centres, 0.5, 3).tolist() == []


def test_merge_candidates_joins_the_pieces_of_one_group_and_does_not_chain():
    from intent_ci.discover import merge_candidates

    e = np.eye(4, dtype=np.float32)
    a = e[0]
    b = 0.9 * e[0] + np.sqrt(1 - 0.81) * e[1]  # cos(a, b) = 0.9
    c = 0.87 * b + np.sqrt(1 - 0.87**2) * e[2]  # cos(b, c) = 0.87, cos(a, c) = 0.78
    x = np.stack([a, a, b, b, c, c, e[3], e[3], e[3]]).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, -1])
    # complete linkage: a+b merge at 0.85; c is 0.87 from b but 0.78 from a, so it stays apart
    # (single linkage would chain it in); noise stays noise
    assert merge_candidates(x, labels, 0.85).tolist() == [0, 0, 0, 0, 1, 1, 2, 2, -1]
    assert merge_candidates(x, labels, 0.75).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, -1]
    assert merge_candidates(x, labels, 0.95).tolist() == labels.tolist()
    assert merge_candidates(x[:2], np.array([0, -1]), 0.5).tolist() == [0, -1]


def test_refine_candidates_moves_members_to_the_nearest_centre_and_drops_small_ones():
    from intent_ci.discover import refine_candidates

    e = np.eye(4, dtype=np.float32)
    rng = np.random.default_rng(0)

    def near(v: np.ndarray, n: int) -> np.ndarray:
        x = v + 0.01 * rng.standard_normal((n, 4)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # A (e0) holds one utterance of B (e1), grabbed first; the third group holds two e2
    # utterances and one of A's, so after refinement it is too small; the last row is noise
    x = np.concatenate([near(e[0], 5), near(e[1], 1), near(e[1], 5), near(e[2], 2), near(e[0], 1)])
    x = np.concatenate([x, near(e[3], 1)])
    labels = np.array([0] * 6 + [1] * 5 + [2] * 3 + [-1])
    refined = refine_candidates(x, labels, passes=3, min_size=3)
    assert refined.tolist() == [0] * 5 + [1] * 6 + [-1, -1, 0, -1]
    # with a smaller min size the third candidate survives on its own two rows
    assert refine_candidates(x, labels, passes=3, min_size=2).tolist() == (
        [0] * 5 + [1] * 6 + [2, 2, 0, -1]
    )
    # one candidate or none: nothing to move
    assert refine_candidates(x[:6], np.array([0] * 6), 3, 3).tolist() == [0] * 6
    assert refine_candidates(x[:2], np.array([-1, -1]), 3, 3).tolist() == [-1, -1]


def test_join_in_rounds_reaches_further_each_round():
    from intent_ci.discover import join_candidates, join_in_rounds

    def at(degrees: float) -> np.ndarray:
        r = np.radians(degrees)
        return np.array([np.cos(r), np.sin(r), 0.0], dtype=np.float32)

    # a candidate at 0 degrees, an existing intent at 90; cosine 0.7 is about 45.6 degrees
    known = at(90)[None]
    x = np.stack([at(0)] * 5 + [at(40), at(47), at(80), at(-2)])
    labels = np.array([0] * 5 + [-1, -1, -1, -1])

    def join(y, centres):
        return join_candidates(y, centres, known, 0.7)

    # round 1: 40 and -2 degrees join; 47 is 0.68 from the centre as clustered
    assert join_in_rounds(x, labels, 1, 1, join).tolist() == [0] * 6 + [-1, -1, 0]
    # round 2: the centre moved towards 40 degrees, so 47 joins; 80 sits nearer the existing
    # intent whatever the rounds
    assert join_in_rounds(x, labels, 1, 2, join).tolist() == [0] * 7 + [-1, 0]
    assert join_in_rounds(x, labels, 1, 5, join).tolist() == [0] * 7 + [-1, 0]
    assert join_in_rounds(x, labels, 1, 2, join).tolist() != labels.tolist()
    assert labels.tolist() == [0] * 5 + [-1] * 4  # the caller's labels are left alone


def test_joined_utterances_count_but_do_not_name_or_represent_a_candidate():
    x, y = blobs([6, 6], spread=0.02)
    texts = [f"stolen card {i}" for i in range(6)] + [f"weather today {i}" for i in range(6)]
    texts[5] = "blah blah blah"  # joined after clustering: not a keyword, not a representative
    joined = np.zeros(12, dtype=bool)
    joined[5] = True
    cfg = DiscoverConfig(near_duplicate=0.999, representatives=5)
    cands = describe(texts, np.ones(12), x, y, ["a"] * 12, {}, [], ["a"], cfg, joined)
    stolen = next(c for c in cands if "stolen" in c.name)
    assert stolen.distinct == 6 and stolen.joined == 1 and stolen.size == 6
    assert "blah" not in stolen.keywords and "blah blah blah" not in stolen.representatives
    assert [u["joined"] for u in stolen.utterances if u["text"] == "blah blah blah"] == [True]
    assert sum(u["joined"] for c in cands for u in c.utterances) == 1


# ---- writing ---------------------------------------------------------------------------------------
def empty_discovery() -> Discovery:
    """A discovery that found nothing: writes candidates.json and report.md only."""
    return Discovery(
        "v1",
        {
            "files": [],
            "rows": 0,
            "utterances": 0,
            "distinct": 0,
            "redacted_skipped": 0,
            "too_long_skipped": 0,
        },
        {
            "distinct": 0,
            "rejected_distinct": 0,
            "rejected": 0,
            "low_margin_or_score_distinct": 0,
            "candidates_distinct": 0,
            "candidates": 0,
        },
        {},
        message="nothing rejected",
    )


def test_out_folder_is_not_overwritten_without_force(tmp_path):
    out = tmp_path / "candidates"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    empty = empty_discovery()
    with pytest.raises(IntentCIError, match="folder exists and is not empty; pass --force"):
        write_candidates(empty, out)
    with pytest.raises(IntentCIError, match="not a discover output"):
        write_candidates(empty, out, force=True)
    assert (out / "mine.txt").read_text() == "keep me"
    fresh = tmp_path / "fresh"
    assert write_candidates(empty, fresh) == [CANDIDATES_JSON, "report.md"]
    assert not list(fresh.glob("*.txt"))
    assert write_candidates(empty, fresh, force=True) == [CANDIDATES_JSON, "report.md"]
    assert re.search("nothing rejected", (fresh / "report.md").read_text())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_leftovers_of_a_killed_write_are_removed_and_a_moved_output_put_back(tmp_path):
    """A run killed inside `write_candidates` leaves `.<out>.tmp-<pid>-*` (and, between its two
    renames, the earlier output inside `.<out>.old-<pid>-*`): the next write cleans up after a
    dead process, puts the earlier output back, and leaves a live run's folders alone."""
    import subprocess
    import sys

    empty = empty_discovery()
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    out = tmp_path / "cands"
    staged = tmp_path / f".cands.tmp-{dead}-abc"
    staged.mkdir()
    (staged / "half.txt").write_text("half written")
    aside = tmp_path / f".cands.old-{dead}-def"
    (aside / "cands").mkdir(parents=True)
    (aside / "cands" / CANDIDATES_JSON).write_text("{}")
    (aside / "cands" / "reviewed.txt").write_text("a reviewer's edit\n")
    live = tmp_path / f".cands.tmp-{os.getpid()}-ghi"  # this process: alive
    live.mkdir()
    with pytest.raises(IntentCIError, match="folder exists and is not empty; pass --force"):
        write_candidates(empty, out)  # the earlier output is back, so --force is needed
    assert (out / "reviewed.txt").read_text() == "a reviewer's edit\n"
    assert not staged.exists() and not aside.exists() and live.is_dir()


# ---- the whole command on a tiny release ------------------------------------------------------------
def _traffic_folder(root, data_dir):
    """New-intent utterances (some repeated), known-intent ones, and a redacted serve-log row."""
    folder = root / "traffic"
    folder.mkdir()
    new = (data_dir / "new" / "report_damage.txt").read_text().splitlines()
    known = (data_dir / "test" / "card_lost.txt").read_text().splitlines()
    (folder / "a.txt").write_text("\n".join(new + new[:5] + known) + "\n")
    row = {
        "timestamp": "t",
        "release": "v2",
        "intent": "card_lost",
        "confidence": 0.3,
        "in_scope": False,
        "score": 1.0,
        "text_sha256": "00" * 32,
    }
    (folder / "log.jsonl").write_text(
        json.dumps(row) + "\n" + json.dumps({**row, "text": new[0]}) + "\n"
    )
    return folder, new


def test_the_map_labels_each_candidates_own_utterances(trained_registry, data_dir, tmp_path):
    """report.png draws candidate k's name over the rows labelled k: those must be candidate k's
    utterances (candidates are ordered by size, the clustering's labels are not; the map once
    put one candidate's name on another's cluster)."""
    from intent_ci.discover import discover
    from intent_ci.release import IntentClassifier
    from tests.conftest import make_utterances

    # Two intents v1 does not know; the second, repeated, becomes the largest candidate.
    traffic = tmp_path / "traffic.txt"
    damage = (data_dir / "new" / "report_damage.txt").read_text().splitlines()
    refunds = make_utterances("refund_status", 30, seed=4) * 5
    traffic.write_text("\n".join(damage + refunds) + "\n")
    # settings under which the tiny random model's features split the traffic in several
    cfg = DiscoverConfig(
        max_margin=1.0,
        similarity=0.9,
        features="backbone",
        method="agglomerative",
        belongs_similarity=1.0,
        merge_similarity=None,
        join_similarity=None,
        refine_passes=None,
    )
    result = discover(
        IntentClassifier.load(trained_registry, "v1"), read_traffic([traffic], progress=False), cfg
    )
    assert len(result.candidates) >= 3
    sizes = [c.size for c in result.candidates]
    assert sizes == sorted(sizes, reverse=True)
    labels, texts = result.plot["labels"], result.plot["texts"]
    for k, cand in enumerate(result.candidates):
        drawn = {t for t, label in zip(texts, labels, strict=True) if label == k}
        assert drawn == {u["text"] for u in cand.utterances}, (k, cand.name)
    assert len(texts) == len(labels) == len(result.plot["x"])


def test_discover_command_writes_candidates_add_intent_accepts(
    tmp_path, trained_registry, data_dir
):
    import shutil

    from intent_ci.cli import main
    from intent_ci.data import read_examples
    from intent_ci.registry import Registry
    from intent_ci.release import load_release

    registry = tmp_path / "adapters"
    shutil.copytree(trained_registry, registry)
    folder, new = _traffic_folder(tmp_path, data_dir)
    config = tmp_path / "discover.yaml"
    # every accepted utterance is a candidate (margin < 1): the tiny model's rejections are not
    # what this test is about; a loose similarity so that its random features form clusters
    config.write_text(
        "discover:\n  max_margin: 1.0\n  similarity: 0.3\n  features: release\n"
        "  belongs_similarity: 1.0\n  join_similarity: 0.3\n"
    )
    out = tmp_path / "candidates"
    args = [
        "discover",
        "--registry",
        str(registry),
        "--traffic",
        str(folder),
        "--out",
        str(out),
        "--config",
        str(config),
    ]
    assert main(args) == 0
    summary = json.loads((out / CANDIDATES_JSON).read_text())
    assert summary["traffic"]["redacted_skipped"] == 1
    assert summary["traffic"]["utterances"] == len(new) + 5 + 10 + 1
    cands = summary["candidates"]
    assert cands, "the tiny release's traffic should form at least one candidate"
    assert [c["size"] for c in cands] == sorted((c["size"] for c in cands), reverse=True)
    joined = sum(u["joined"] for c in cands for u in c["utterances"])
    assert summary["considered"]["joined_distinct"] == joined == sum(c["joined"] for c in cands)
    txt = sorted(p.name for p in out.glob("*.txt"))
    assert txt == sorted(c["file"] for c in cands if c["file"])
    assert txt == sorted(summary["files"]["candidates"])
    names = [c["name"] for c in cands]
    assert len(set(names)) == len(names)
    for c in cands:
        assert NAME_PATTERN.match(c["name"]) and c["name"] not in (
            "oos",
            *Registry(registry).manifest("v2")["intents"],
        )
        assert 3 <= len(c["representatives"]) <= 5
        assert c["distinct"] == len(c["utterances"]) >= 5
        assert c["nearest_intent"] in Registry(registry).manifest("v2")["intents"]
        assert -1 <= c["nearest_similarity"] <= 1
        lines = (out / c["file"]).read_text().splitlines()
        assert lines == [u["text"] for u in c["utterances"]]
    repeated = [u for c in cands for u in c["utterances"] if u["text"] == new[0]]
    assert not repeated or repeated[0]["count"] == 3  # twice in a.txt, once in the log
    assert (out / "report.md").read_text().startswith("# Intent discovery on release v2")
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    # exactly what add-intent reads
    first = out / txt[0]
    assert main(["add-intent", "--data", str(first), "--registry", str(registry)]) == 0
    assert Path(first).stem in Registry(registry).manifest("v3")["new_intents"]
    # an existing --out needs --force; with it, the folder is replaced
    assert main(args) == 2
    flagged = tmp_path / "flagged.yaml"
    flagged.write_text(
        config.read_text().replace("belongs_similarity: 1.0", "belongs_similarity: 0.01")
    )
    # Traffic that repeats what the release already stores: an utterance stored under the
    # intent its candidate is flagged for is no new example (and `update` would refuse it), so
    # the examples file leaves it out; stored under another intent it stays (a correction).
    # (half of each intent's memory: the other half keeps every intent something to learn from
    # after the corrections the examples file then holds)
    memory = load_release(Registry(registry), "v2").replay
    stored = {t: intent for intent, texts in memory.items() for t in texts[: len(texts) // 2]}
    (folder / "b.txt").write_text("\n".join(stored) + "\n")
    assert main([*args[:-1], str(flagged), "--release", "v2", "--force"]) == 0
    assert not list(out.glob("*.txt"))  # every candidate sits near an existing intent
    examples = read_examples(out / "existing_intent_examples.csv")
    assert set(examples.intents) <= set(Registry(registry).manifest("v2")["intents"])
    summary = json.loads((out / CANDIDATES_JSON).read_text())
    flagged_rows = [
        (u["text"], c["belongs_to"]) for c in summary["candidates"] for u in c["utterances"]
    ]
    same = [t for t, intent in flagged_rows if stored.get(t) == intent]
    assert same, "some stored utterances should be flagged for the intent that stores them"
    written = list(zip(examples.dataset["text"], examples.dataset["intent"], strict=True))
    assert written == [(t, i) for t, i in flagged_rows if stored.get(t) != i]
    assert summary["files"]["existing_intent_examples_already_stored"] == len(same)
    # ... so `update` reads the file as it is.
    examples_file = str(out / "existing_intent_examples.csv")
    update = ["update", "--data", examples_file, "--from", "v2", "--registry", str(registry)]
    assert main(update) == 0


def test_discovery_threshold_widens_the_net_to_its_target_recall(trained_registry, data_dir):
    from intent_ci.calibration import calibration_rows, threshold_for_recall
    from intent_ci.config import DiscoverConfig
    from intent_ci.discover import discovery_threshold, score_traffic, select
    from intent_ci.release import IntentClassifier

    clf = IntentClassifier.load(trained_registry, "v2")
    held = [t for t, _ in calibration_rows(clf.release.calibration[0], clf.intents)]
    scores = clf.scores(*clf.logits_and_features(held))
    # The release's own target accepts every calibration utterance here; 0.6 rejects 40%.
    wider = DiscoverConfig(target_recall=0.6, max_margin=0.0)
    expected = max(clf.threshold, threshold_for_recall(scores, 0.6))
    assert expected > clf.threshold
    assert discovery_threshold(clf, wider) == pytest.approx(expected)
    assert discovery_threshold(clf, DiscoverConfig(target_recall=None)) == clf.threshold
    # Never below serving: a target above the release's keeps the release's threshold.
    assert discovery_threshold(clf, DiscoverConfig(target_recall=0.999)) == clf.threshold
    texts = [
        line
        for f in sorted((data_dir / "test").glob("*.txt"))
        for line in f.read_text().splitlines()
    ]
    scored = score_traffic(clf, texts, wider)
    chosen = set(select(scored, wider).tolist())
    below = {i for i, s in enumerate(scored.score) if s < expected}
    rejected = {i for i, ok in enumerate(scored.in_scope) if not ok}
    assert chosen == below | rejected and below - rejected, "the wider net adds accepted rows"


def test_nothing_rejected_says_so(tmp_path, tiny_backbone, data_dir, capsys):
    from intent_ci.cli import main
    from intent_ci.config import ReleaseConfig, apply_overrides
    from intent_ci.pipeline import init_release
    from tests.conftest import tiny_overrides

    config = apply_overrides(
        ReleaseConfig(),
        tiny_overrides(tiny_backbone, oos={"enabled": False}, train={"epochs": 1}),
        source="test",
    )
    init_release(data_dir / "base", tmp_path / "adapters", config)
    settings = tmp_path / "d.yaml"
    settings.write_text("discover:\n  max_margin: 0.0\n")
    out = tmp_path / "out"
    code = main(
        [
            "discover",
            "--registry",
            str(tmp_path / "adapters"),
            "--traffic",
            str(data_dir / "test"),
            "--out",
            str(out),
            "--config",
            str(settings),
        ]
    )
    assert code == 0
    assert "nothing rejected" in capsys.readouterr().out
    assert not list(out.glob("*.txt")) and not (out / "report.png").exists()
    assert json.loads((out / CANDIDATES_JSON).read_text())["candidates"] == []


def test_cli_bad_traffic_exits_2_naming_the_file(tmp_path, capsys):
    from intent_ci.cli import main

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code = main(
        [
            "discover",
            "--registry",
            str(tmp_path / "none"),
            "--traffic",
            str(empty),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert f"{empty}: traffic file is empty" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
