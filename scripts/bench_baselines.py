#!/usr/bin/env python
"""The cheap alternatives to intent-ci on class-incremental CLINC150, over intent orders.

Every baseline here is a logistic-regression probe on frozen mean-pooled embeddings (the
backbone intent-ci fine-tunes with LoRA), so the whole script needs one embedding pass and then
seconds per fit:

    probe, all data      refit at every release on every training utterance of every known
                         intent (needs the old data forever)
    probe, memory        refit at every release on what intent-ci keeps instead of the old
                         data: `--per-intent` (default `replay.per_intent`) exemplars of
                         every old intent, chosen by herding on the frozen embeddings, plus
                         every utterance of the new intents; the new intents' exemplars are
                         then chosen the same way
    probe, memory, balanced   the same with class-balanced weights (the new intents have 5x
                         the rows of an old intent's memory)

Protocols are bench_incremental's P1 (75 intents, then 5 releases of 15) and P2 (140, then 10
of 1), for each of `--seeds` (the intent order and the seeded samples), in two data
conditions: `full` (CLINC150's 100 training utterances per intent) and `small` (a seeded 50
per intent, the size of Larson et al. 2019's "small" condition). The probe's C is chosen on
the val utterances of the known intents at every refit, from 1, 10 and 100 (a refit costs
seconds, so every baseline gets its best C every time).

`--intent-ci NAME=FILE` (repeatable) reads bench_incremental results files (any protocol, any
seed, any condition named in the file's `data_condition`, default `full`) and puts their
`intent-ci` line's final accuracy beside the probes (`NAME=FILE:METHOD` reads its METHOD
line), so every gap is paired by protocol, seed and condition. Mean and a 95% t-interval over
seeds are reported for every method and every paired gap.

    python scripts/bench_baselines.py --seeds 0 1 2
    python scripts/bench_baselines.py --smoke        # 12 intents: checks the script runs

Writes scripts/results/bench_baselines.{json,md}. CLINC150 (CC BY 3.0) is read from
../shared/datasets/clinc150/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_incremental as bi  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from intent_ci.cli import _quiet_libraries  # noqa: E402
from intent_ci.config import PACKAGED_MINILM, ModelConfig, ReplayConfig  # noqa: E402
from intent_ci.modeling import load_backbone  # noqa: E402
from intent_ci.replay import herding  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONDITIONS = bi.CONDITIONS
METHODS = ("probe, all data", "probe, memory", "probe, memory, balanced")
C_GRID = (1.0, 10.0, 100.0)


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and a two-sided 95% Student-t interval (the mean alone for one value)."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(
        stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
    )
    return mean, mean - half, mean + half


class Embedded:
    """CLINC150 embedded once with the frozen backbone (cached as .npz under --workdir)."""

    def __init__(self, raw: dict, backbone: str, cache: Path) -> None:
        if cache.is_file():
            stored = np.load(cache)
            self.x = {s: stored[s] for s in ("train", *bi.SPLITS)}
            self.embed_s = float(stored["embed_s"])
        else:
            started = time.perf_counter()
            model = load_backbone(ModelConfig(backbone=backbone))
            self.x = {s: bi.embed(model, [t for t, _ in raw[s]]) for s in ("train", *bi.SPLITS)}
            self.embed_s = time.perf_counter() - started
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, embed_s=self.embed_s, **self.x)
        self.y = {s: np.array([i for _, i in raw[s]]) for s in ("train", *bi.SPLITS)}
        self.rows: dict[str, np.ndarray] = {}
        for intent in sorted(set(self.y["train"])):
            self.rows[intent] = np.flatnonzero(self.y["train"] == intent)


def fit(x: np.ndarray, y: np.ndarray, c: float, balanced: bool):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(
        C=c, max_iter=3000, class_weight="balanced" if balanced else None
    ).fit(x, y)


def fit_c_on_val(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray):
    """(C, model): the probe on `x`, `y` whose C in `C_GRID` scores best on `x_val`, `y_val`."""
    best = None
    for c in C_GRID:
        model = fit(x, y, c, balanced=False)
        acc = float((model.predict(x_val) == y_val).mean())
        if best is None or acc > best[0]:
            best = (acc, c, model)
    return best[1], best[2]


def score(model, emb: Embedded, known: set[str], old: set[str]) -> dict:
    out = {}
    for split in bi.SPLITS:
        m = np.isin(emb.y[split], list(known))
        pred, truth = model.predict(emb.x[split][m]), emb.y[split][m]
        old_m = np.isin(truth, list(old))
        out[split] = {
            "accuracy": float((pred == truth).mean()),
            "old_intents_accuracy": float((pred[old_m] == truth[old_m]).mean())
            if old_m.any()
            else None,
        }
    return out


def run_line(
    emb: Embedded,
    protocol: bi.Protocol,
    order: list[str],
    shots: int | None,
    seed: int,
    per_intent: int,
) -> dict:
    """Every method along one line; the probe's C chosen on val at every refit."""

    def rows(intent: str) -> np.ndarray:
        all_rows = emb.rows[intent]
        if shots is None:
            return all_rows
        return np.array(sorted(bi.seeded_sample(list(all_rows), shots, intent, seed)))

    base = order[: protocol.base]
    steps = protocol.steps(order)

    def fit_on_val(train: np.ndarray, known: set[str], balanced: bool):
        """C chosen on the val utterances of the known intents at every refit (a refit costs
        seconds, so the baseline gets its best C every time)."""
        best = None
        for c in C_GRID:
            model = fit(emb.x["train"][train], emb.y["train"][train], c, balanced)
            acc = score(model, emb, known, set())["val"]["accuracy"]
            if best is None or acc > best[0]:
                best = (acc, c, model)
        return best[1], best[2]

    base_rows = np.concatenate([rows(i) for i in base])
    c, base_model = fit_on_val(base_rows, set(base), False)
    base_scores = score(base_model, emb, set(base), set())

    def memory_of(intents: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for intent in intents:
            r = rows(intent)
            picked = herding(torch.from_numpy(emb.x["train"][r]), per_intent)
            out[intent] = r[picked]
        return out

    result: dict = {"base_C": c, "base": base_scores, "methods": {}}
    base_memory = memory_of(base)
    for method in METHODS:
        balanced = method.endswith("balanced")
        known = list(base)
        memory = dict(base_memory)
        history = [base_scores]
        started = time.perf_counter()
        for new in steps:
            old = set(known)
            known = known + new
            if method == "probe, all data":
                if new is not steps[-1]:
                    history.append(None)  # only the final refit is needed
                    continue
                train = np.concatenate([rows(i) for i in known])
            else:
                train = np.concatenate([*(memory[i] for i in old), *(rows(i) for i in new)])
                memory.update(memory_of(new))
            c, model = fit_on_val(train, set(known), balanced)
            history.append({**score(model, emb, set(known), old), "C": c})
        fits_s = time.perf_counter() - started
        drops = {
            split: max(
                (
                    100 * (prev[split]["accuracy"] - cur[split]["old_intents_accuracy"])
                    for prev, cur in zip(history, history[1:], strict=False)
                    if prev is not None and cur is not None
                ),
                default=None,
            )
            for split in bi.SPLITS
        }
        result["methods"][method] = {
            "final": history[-1],
            "per_release": history,
            "worst_old_intent_drop_points": drops,
            "fits_s": round(fits_s, 1),
            "rows_last_fit": int(len(train)),
        }
    return result


def intent_ci_finals(specs: list[str]) -> dict:
    """{name: {(condition, protocol, seed): {split: accuracy}}} from bench_incremental files:
    each spec is NAME=FILE (the file's `intent-ci` line) or NAME=FILE:METHOD (its METHOD line)."""
    out: dict = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--intent-ci expects NAME=FILE or NAME=FILE:METHOD, got {spec!r}")
        path, _, wanted = path.partition(":")
        wanted = wanted or "intent-ci"
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        condition = data.get("data_condition", "full")
        if not any(wanted in p["methods"] for p in data["protocols"].values()):
            raise SystemExit(f"{path}: no {wanted!r} line (--intent-ci {spec})")
        for pname, p in data["protocols"].items():
            for method, m in p["methods"].items():
                if method != wanted:
                    continue
                final = m["releases"][-1]["scores"]
                key = f"{condition}/{pname}/{data['seed']}"
                out.setdefault(name, {})[key] = {
                    "val": final["val"]["accuracy"],
                    "test": final["test"]["accuracy"],
                    "file": spec.partition("=")[2],
                    "worst_old_intent_drop_points": {
                        s: max(
                            (r.get("old_intent_drop_points", {}) or {}).get(s) or 0.0
                            for r in m["releases"][1:]
                        )
                        for s in bi.SPLITS
                    },
                }
                if "full_retrain" in p:
                    out.setdefault("full retrain", {})[key] = {
                        s: p["full_retrain"]["scores"][s]["accuracy"] for s in bi.SPLITS
                    } | {"file": path}
    return out


def retrains_from_bench_oos(path: str, protocols: list[str]) -> dict:
    """{(full, protocol, seed): accuracy} from bench_oos.json: its per-seed 150-intent releases
    are the shipped `init` recipe on every training utterance of CLINC150's 150 intents, which
    is the full retrain of P1 and P2 (the same rows, in another order)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    mains = data.get("per_seed") or [data["main"]]
    out = {}
    for m in mains:
        for pname in protocols:
            out[f"full/{pname}/{m['seed']}"] = {
                **{s: m["release"]["accuracy"][s] for s in bi.SPLITS},
                "file": path,
            }
    return out


def setfit_finals(paths: list[str], protocols: list[str]) -> dict:
    """{head: {(condition, protocol, seed): {split: accuracy}}} from bench_setfit results: SetFit
    trains on every intent's data at once, so its one run per condition and seed is the final
    point of every protocol (P1 and P2 end on the same rows)."""
    out: dict = {}
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for key, run in data["runs"].items():
            condition, seed = key.split("/")
            for head, scores in run["heads"].items():
                for pname in protocols:
                    out.setdefault(head, {})[f"{condition}/{pname}/{seed}"] = {
                        **{s: scores[s] for s in bi.SPLITS},
                        "file": path,
                    }
    return out


def summarise(result: dict) -> list[dict]:
    """Mean and 95% interval over seeds, per condition, protocol and method (test and val)."""
    rows = []
    external = result["intent_ci"]
    for condition in result["conditions"]:
        for pname in result["protocols"]:
            cells: dict[str, dict[int, dict]] = {}
            for seed in result["seeds"]:
                line = result["lines"][f"{condition}/{pname}/{seed}"]
                for method, m in line["methods"].items():
                    cells.setdefault(method, {})[seed] = {
                        s: m["final"][s]["accuracy"] for s in bi.SPLITS
                    }
                for name, finals in external.items():
                    got = finals.get(f"{condition}/{pname}/{seed}")
                    if got is not None:
                        cells.setdefault(name, {})[seed] = got
            for method, by_seed in cells.items():
                row = {"condition": condition, "protocol": pname, "method": method}
                for split in bi.SPLITS:
                    values = [100 * v[split] for v in by_seed.values()]
                    row[split] = {
                        "seeds": sorted(by_seed),
                        "values": values,
                        "mean_ci": t_interval(values),
                    }
                rows.append(row)
    return rows


def gaps(result: dict, a: str, b: str) -> list[dict]:
    """Paired gap a - b (points) over the seeds where both ran, per condition and protocol."""
    out = []
    for condition in result["conditions"]:
        for pname in result["protocols"]:
            paired = {}
            for seed in result["seeds"]:
                key = f"{condition}/{pname}/{seed}"

                def final(name: str, key=key):
                    if name in result["intent_ci"]:
                        return result["intent_ci"][name].get(key)
                    m = result["lines"][key]["methods"].get(name)
                    return None if m is None else {s: m["final"][s]["accuracy"] for s in bi.SPLITS}

                fa, fb = final(a), final(b)
                if fa is not None and fb is not None:
                    paired[seed] = {s: 100 * (fa[s] - fb[s]) for s in bi.SPLITS}
            if paired:
                out.append(
                    {
                        "condition": condition,
                        "protocol": pname,
                        "a": a,
                        "b": b,
                        "seeds": sorted(paired),
                        **{s: t_interval([v[s] for v in paired.values()]) for s in bi.SPLITS},
                        "values": {str(k): v for k, v in paired.items()},
                    }
                )
    return out


def fmt(mean_ci: tuple[float, float, float], digits: int = 2) -> str:
    mean, lo, hi = mean_ci
    if math.isnan(lo):
        return f"{mean:.{digits}f} (one seed)"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown(result: dict) -> str:
    lines = [
        "# The cheap alternatives: frozen-embedding probes on class-incremental CLINC150",
        "",
        f"Backbone `{result['backbone']}`, intent-order seeds {', '.join(map(str, result['seeds']))}; "
        f"{result['machine']}, {result['date']}. Produced by `{result['command']}`; "
        "bench_baselines.json has every number. Means over seeds with a 95% t-interval in "
        "brackets; accuracy in %, on **test** (val in the JSON).",
        "",
        "`probe, memory` is refit at every release on the memory intent-ci keeps "
        f"({result['per_intent']} herded exemplars per old intent) plus the new intents' "
        "utterances: the cheap alternative that, like intent-ci, needs no old data.",
        "",
    ]
    for condition in result["conditions"]:
        shots = CONDITIONS[condition]
        lines += [
            f"## {condition}: {shots or 100} training utterances per intent",
            "",
            "| protocol | method | final accuracy, test | seeds | worst old-intent drop in one release (test, mean) |",
            "|---|---|---|---|---|",
        ]
        for row in result["summary"]:
            if row["condition"] != condition:
                continue
            drop = "n/a"
            drops = []
            for seed in row["test"]["seeds"]:
                key = f"{condition}/{row['protocol']}/{seed}"
                src = result["lines"][key]["methods"].get(row["method"]) or result["intent_ci"].get(
                    row["method"], {}
                ).get(key)
                if src and src.get("worst_old_intent_drop_points", {}).get("test") is not None:
                    drops.append(src["worst_old_intent_drop_points"]["test"])
            if drops:
                drop = f"{np.mean(drops):.2f}"
            lines.append(
                f"| {row['protocol']} | {row['method']} | {fmt(row['test']['mean_ci'])} "
                f"| {', '.join(map(str, row['test']['seeds']))} | {drop} |"
            )
        lines.append("")
    if result["gaps"]:
        lines += [
            "## Paired gaps (points; a - b, same seed, protocol and condition)",
            "",
            "| condition | protocol | a | b | test | val | seeds |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in result["gaps"]:
            lines.append(
                f"| {g['condition']} | {g['protocol']} | {g['a']} | {g['b']} | {fmt(g['test'])} "
                f"| {fmt(g['val'])} | {', '.join(map(str, g['seeds']))} |"
            )
        lines.append("")
    if result["intent_ci"]:
        lines += ["Files read for the non-probe rows:", ""]
        files = sorted({v["file"] for f in result["intent_ci"].values() for v in f.values()})
        lines += [f"- `{f}`" for f in files]
        lines.append("")
    lines += [
        f"Embedding CLINC150 once took {result['embed_s']:.0f} s; every probe fit is in the JSON "
        "(`fits_s`).",
        "",
    ]
    return "\n".join(lines)


def write_report(result: dict, out: Path, render) -> None:
    """`out`.json (every number) and `out`.md (`render(result)`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    out.with_suffix(".md").write_text(render(result), encoding="utf-8")
    print(f"wrote {out.with_suffix('.md')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(bi.DEFAULT_DATA), help="CLINC150 data_full.json")
    parser.add_argument("--backbone", default=PACKAGED_MINILM)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--protocols", nargs="+", default=["P1", "P2"], choices=["P1", "P2"])
    parser.add_argument(
        "--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS)
    )
    parser.add_argument(
        "--intent-ci",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a bench_incremental results JSON whose intent-ci line goes beside the probes",
    )
    parser.add_argument(
        "--retrain-from",
        metavar="BENCH_OOS_JSON",
        help="the full retrain per seed: bench_oos.json's per-seed 150-intent releases",
    )
    parser.add_argument(
        "--setfit",
        action="append",
        default=[],
        metavar="JSON",
        help="a bench_setfit results file: SetFit on all data, beside the probe on all data",
    )
    parser.add_argument(
        "--per-intent",
        type=int,
        default=ReplayConfig().per_intent,
        help="exemplars per old intent the memory probes keep (default: replay.per_intent)",
    )
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_baselines"))
    parser.add_argument("--out", default=str(REPO / "scripts" / "results" / "bench_baselines"))
    parser.add_argument("--smoke", action="store_true", help="12 intents: checks the script runs")
    parser.add_argument(
        "--report-from",
        metavar="JSON",
        help="fit nothing: take the probes' lines from this results JSON and rebuild the "
        "comparison with the --intent-ci and --retrain-from files given now",
    )
    args = parser.parse_args()
    _quiet_libraries()
    torch.manual_seed(0)

    raw = bi.load_clinc(Path(args.data), smoke=args.smoke)
    protocols = bi.SMOKE_PROTOCOLS if args.smoke else bi.PROTOCOLS
    workdir = Path(args.workdir)
    previous = json.loads(Path(args.report_from).read_text()) if args.report_from else None
    emb = (
        None
        if previous
        else Embedded(
            raw,
            args.backbone,
            workdir / ("embeddings-smoke.npz" if args.smoke else "embeddings.npz"),
        )
    )
    per_intent = args.per_intent
    if per_intent < 1:
        raise SystemExit(f"--per-intent: expected at least 1, got {per_intent}")
    if previous and previous.get("per_intent", per_intent) != per_intent:
        raise SystemExit(
            f"--report-from {args.report_from}: its memory probes kept {previous['per_intent']} "
            f"exemplars per intent, not --per-intent {per_intent}"
        )
    conditions = {
        c: (10 if args.smoke and CONDITIONS[c] else CONDITIONS[c]) for c in args.conditions
    }
    result: dict = {
        "command": shlex.join(["python", "scripts/bench_baselines.py", *sys.argv[1:]]),
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})",
        "backbone": args.backbone.split("/")[-1],
        "seeds": args.seeds,
        "protocols": args.protocols,
        "conditions": list(conditions),
        "per_intent": per_intent,
        "embed_s": previous["embed_s"] if previous else emb.embed_s,
        "lines": {},
    }
    jobs = [(c, p, s) for c in conditions for p in args.protocols for s in args.seeds]
    if previous:
        result["lines"] = previous["lines"]
        missing = [f"{c}/{p}/{s}" for c, p, s in jobs if f"{c}/{p}/{s}" not in result["lines"]]
        if missing:
            raise SystemExit(f"--report-from {args.report_from}: no line for {', '.join(missing)}")
        jobs = []
    for condition, pname, seed in tqdm(jobs, desc="lines"):
        order = bi.intent_order(raw, seed)
        line = run_line(emb, protocols[pname], order, conditions[condition], seed, per_intent)
        result["lines"][f"{condition}/{pname}/{seed}"] = line
        final = {
            m: round(100 * v["final"]["test"]["accuracy"], 2) for m, v in line["methods"].items()
        }
        tqdm.write(f"{condition} {pname} seed {seed}: {final}")
    result["intent_ci"] = intent_ci_finals(args.intent_ci)
    if args.retrain_from:
        result["intent_ci"].setdefault("full retrain", {}).update(
            retrains_from_bench_oos(args.retrain_from, args.protocols)
        )
    setfit = setfit_finals(args.setfit, args.protocols)
    methods = [name for name in result["intent_ci"] if name != "full retrain"]
    result["intent_ci"].update(setfit)
    result["summary"] = summarise(result)
    result["gaps"] = []
    for i, name in enumerate(methods):
        # each --intent-ci name against the probes, the retrain, SetFit and the names after it
        for b in (*METHODS, "full retrain", *setfit, *methods[i + 1 :]):
            result["gaps"] += gaps(result, name, b)
    if "full retrain" in result["intent_ci"]:
        for b in ("probe, all data", *setfit):
            result["gaps"] += gaps(result, "full retrain", b)
    write_report(result, Path(args.out), markdown)


if __name__ == "__main__":
    main()
