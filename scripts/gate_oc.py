#!/usr/bin/env python
"""The gate's decision rule as numbers: pass probability against the true old-intent drop.

`intent-ci check` decides old_accuracy (and drift) from paired predictions: of n old-intent
test utterances, `broken` ones the baseline got right and the candidate gets wrong, `fixed` ones
the other way round. This script computes, for every value of `GateConfig.decision` (and of
`drift_decision`, which takes the same values), the
probability that a candidate passes as a function of its true drop, from 0 to 3 x max_drop, at
the test-set sizes the gate meets:

    data/test   the old intents of the shipped workflow's demo check (v3 vs v2): 15 x 15 = 225
    CLINC150    the P1 base release's intents, 75 x 30 = 2,250 (scripts/gate_incremental.py),
                and all 150 intents, 150 x 30 = 4,500 (the full test split)

Model: each old-intent utterance is independently `fixed` with probability c (the churn of a
release that improves some utterances while it breaks others) and `broken` with probability
c + d, so that d is the true drop. c is measured: the pooled fixed rate of the intent-ci
releases checked in scripts/results/gate_incremental.json and gate_clinc.json; a higher churn
(2%, as after a backbone change) shows how the rules depend on it.

Each pass probability is computed twice: exactly, by summing the multinomial probabilities of
every (broken, fixed) outcome the rule passes, and by Monte Carlo (--draws per point, seeded),
both through the gate's own decision function (`intent_ci.gate.drop_decision`) on the
intent_regression metric's McNemar p-value and Bonett-Price interval. The new-intent floor's
false-fail probability is a binomial tail, computed exactly.

    python scripts/gate_oc.py              # about 10 minutes on 2 CPU cores

Writes scripts/results/gate_oc.{json,md,png}.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from intent_ci.config import DECISIONS, GateConfig
from intent_ci.gate import drop_decision
from intent_ci.metrics.intent_regression.intent_regression import (
    mcnemar_one_sided,
    paired_drop_interval,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "scripts" / "results"
SIZES = {
    "data/test (15 old intents x 15)": 225,
    "CLINC150 P1 base (75 x 30)": 2250,
    "CLINC150 all intents (150 x 30)": 4500,
}
HIGH_CHURN = 0.02
TAIL = 1e-12  # outcomes less likely than this are left out of the exact sums


def measured_churn() -> dict:
    """Pooled fixed rate (fixed / n) of the intent-ci releases in the committed gate results."""
    fixed = n = 0
    sources = []
    # The results hold broken and fixed counts; n is old intents x 30 test utterances each.
    incremental = json.loads((RESULTS / "gate_incremental.json").read_text(encoding="utf-8"))
    for c in incremental["checks"]:
        if c["method"] == "intent-ci":
            fixed += c["fixed"]
            n += 30 * c["old_intents"]
            sources.append(f"gate_incremental {c['protocol']} {c['candidate']} vs {c['baseline']}")
    clinc = json.loads((RESULTS / "gate_clinc.json").read_text(encoding="utf-8"))
    recommended = clinc["releases"]["recommended"]
    fixed += recommended["fixed"]
    n += 30 * clinc["base_intents"]
    sources.append(f"gate_clinc recommended {recommended['release']} vs v1")
    return {"fixed": fixed, "n": n, "rate": fixed / n, "sources": sources}


def decide(broken: int, fixed: int, n: int, cfg: GateConfig) -> bool:
    """True when the gate passes (broken, fixed) of n under cfg.decision and cfg.max_drop."""
    drop = 100.0 * (broken - fixed) / n
    _, high = paired_drop_interval(broken, fixed, n, 1 - 2 * cfg.alpha)
    failed, _ = drop_decision(
        drop, 100.0 * high, mcnemar_one_sided(broken, fixed), cfg.max_drop, cfg
    )
    return not failed


def exact_pass(n: int, churn: float, drop: float, passes) -> float:
    """P(pass) summed over (broken, fixed): broken ~ Bin(n, pb), fixed | broken ~ Bin(n - b, .)."""
    pb, pf = churn + drop, churn
    total = 0.0
    b_lo, b_hi = int(stats.binom.ppf(TAIL, n, pb)), int(stats.binom.isf(TAIL, n, pb)) + 1
    for b in range(max(0, b_lo), min(n, b_hi) + 1):
        w = stats.binom.pmf(b, n, pb)
        if w < TAIL:
            continue
        q = pf / (1 - pb)
        m = n - b
        f_lo, f_hi = int(stats.binom.ppf(TAIL, m, q)), int(stats.binom.isf(TAIL, m, q)) + 1
        fs = np.arange(max(0, f_lo), min(m, f_hi) + 1)
        pf_mass = stats.binom.pmf(fs, m, q)
        total += w * sum(p for f, p in zip(fs.tolist(), pf_mass, strict=True) if passes(b, f))
    return total


def monte_carlo_pass(n: int, churn: float, drop: float, passes, rng, draws: int) -> float:
    pb, pf = churn + drop, churn
    outcomes = rng.multinomial(n, [pb, pf, 1 - pb - pf], size=draws)
    return float(np.mean([passes(int(b), int(f)) for b, f, _ in outcomes]))


def crossing(drops: list[float], probs: list[float], level: float) -> float | None:
    """The smallest true drop (points, linear interpolation) where P(pass) falls to `level`."""
    for i in range(len(drops) - 1):
        (d0, p0), (d1, p1) = (drops[i], probs[i]), (drops[i + 1], probs[i + 1])
        if p0 >= level >= p1 and p0 != p1:
            return d0 + (p0 - level) * (d1 - d0) / (p0 - p1)
    return None


def new_intent_floor(cfg: GateConfig) -> list[dict]:
    """P(an intent of true accuracy p scores below the floor on n utterances), exactly."""
    rows = []
    for n in (cfg.min_new_intent_utterances, 15, 30):
        # fails when correct / n < floor, i.e. correct <= ceil(floor * n) - 1
        k = math.ceil(cfg.min_new_intent_accuracy * n - 1e-12) - 1
        for p in (0.3, 0.4, 0.5, 0.7, 0.8, 0.9, 0.95):
            rows.append(
                {"n": n, "true_accuracy": p, "fail_probability": float(stats.binom.cdf(k, n, p))}
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--draws", type=int, default=4000, help="Monte Carlo draws per point")
    parser.add_argument(
        "--step", type=float, default=0.1, help="grid step of the true drop, points"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "gate_oc"))
    args = parser.parse_args()
    started = time.perf_counter()
    base = GateConfig()
    churn = measured_churn()
    churns = {"measured": churn["rate"], "high": HIGH_CHURN}
    steps = round(3 * base.max_drop / args.step)
    drops = [round(i * args.step, 6) for i in range(steps + 1)]
    rng = np.random.default_rng(args.seed)
    curves = []
    for decision in DECISIONS:
        cfg = GateConfig(decision=decision)
        for size_name, n in SIZES.items():
            passes = functools.lru_cache(maxsize=None)(
                lambda b, f, n=n, cfg=cfg: decide(b, f, n, cfg)
            )
            for churn_name, c in churns.items():
                exact, mc = [], []
                for d in drops:
                    exact.append(exact_pass(n, c, d / 100, passes))
                    mc.append(monte_carlo_pass(n, c, d / 100, passes, rng, args.draws))
                curves.append(
                    {
                        "decision": decision,
                        "test_set": size_name,
                        "n": n,
                        "churn": churn_name,
                        "fixed_rate": c,
                        "pass_exact": exact,
                        "pass_monte_carlo": mc,
                        "max_abs_mc_minus_exact": max(
                            abs(a - b) for a, b in zip(mc, exact, strict=True)
                        ),
                        "pass_at_zero_drop": exact[0],
                        "pass_at_max_drop": exact[drops.index(base.max_drop)],
                        "pass_at_half_max_drop": exact[drops.index(round(base.max_drop / 2, 6))],
                        "pass_at_3x_max_drop": exact[-1],
                        "drop_at_50pct_pass": crossing(drops, exact, 0.5),
                        "drop_at_5pct_pass": crossing(drops, exact, 0.05),
                    }
                )
                print(
                    f"{decision:<16} {size_name:<34} churn {c:.4f}: pass at 0 {exact[0]:.3f}, "
                    f"at max_drop {curves[-1]['pass_at_max_drop']:.3f}, at 3x {exact[-1]:.4f}",
                    flush=True,
                )
    result = {
        "command": shlex.join(["python", "scripts/gate_oc.py", *sys.argv[1:]]),
        "gate_config": {
            k: getattr(base, k)
            for k in ("max_drop", "alpha", "decision", "max_drift", "drift_decision")
        },
        "model": "each old-intent utterance independently fixed with probability c and broken "
        "with probability c + d (true drop d); c measured or 2%",
        "measured_churn": churn,
        "drops_points": drops,
        "draws_per_point": args.draws,
        "seed": args.seed,
        "curves": curves,
        "new_intent_floor": {
            "min_new_intent_accuracy": base.min_new_intent_accuracy,
            "min_new_intent_utterances": base.min_new_intent_utterances,
            "rows": new_intent_floor(base),
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result, out), encoding="utf-8")
    plot(result, out.with_suffix(".png"))
    print(markdown(result, out))


def markdown(r: dict, out: Path) -> str:
    cfg = r["gate_config"]
    c = r["measured_churn"]
    show = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0]
    idx = [r["drops_points"].index(d) for d in show]
    lines = [
        "# The gate's decision rule as numbers",
        "",
        f"Probability that `intent-ci check` passes old_accuracy (and, with `max_drift` in place "
        f"of `max_drop`, drift) against the candidate's true old-intent drop, for max_drop = "
        f"{cfg['max_drop']:g} points and alpha = {cfg['alpha']:g}. Produced by `{r['command']}` "
        f"in {r['wall_s']:.0f} s.",
        "",
        f"Model: {r['model']}. Measured churn c = {100 * c['rate']:.2f}% ({c['fixed']} fixed of "
        f"{c['n']} old-intent utterances over {len(c['sources'])} intent-ci checks in "
        "gate_incremental.json and gate_clinc.json). Exact sums; Monte Carlo "
        f"({r['draws_per_point']} draws per point, seed {r['seed']}) agrees within "
        f"{100 * max(x['max_abs_mc_minus_exact'] for x in r['curves']):.1f} points of probability.",
        "",
        "| decision | test set | churn | "
        + " | ".join(f"{d:g}" for d in show)
        + " | 50% pass at | 5% pass at |",
        "|---|---|---|" + "---|" * len(show) + "---|---|",
    ]
    fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for x in r["curves"]:
        lines.append(
            f"| {x['decision']} | {x['test_set']} | {100 * x['fixed_rate']:.2f}% | "
            + " | ".join(f"{100 * x['pass_exact'][i]:.1f}%" for i in idx)
            + f" | {fmt(x['drop_at_50pct_pass'])} | {fmt(x['drop_at_5pct_pass'])} |"
        )
    lines += [
        "",
        "Columns: the true drop in points; cells: probability that the candidate passes. "
        "`50% pass at` / `5% pass at`: the true drop (points) where the pass probability falls to "
        "50% / 5%.",
        "",
        "## New-intent floor",
        "",
        f"Probability that a new intent of true accuracy p scores below "
        f"min_new_intent_accuracy = {r['new_intent_floor']['min_new_intent_accuracy']:g} on n test "
        "utterances (binomial, exact):",
        "",
    ]
    rows = r["new_intent_floor"]["rows"]
    ps = sorted({x["true_accuracy"] for x in rows})
    lines += ["| n | " + " | ".join(f"p = {p:g}" for p in ps) + " |", "|---|" + "---|" * len(ps)]
    for n in sorted({x["n"] for x in rows}):
        cells = {x["true_accuracy"]: x["fail_probability"] for x in rows if x["n"] == n}
        lines.append(f"| {n} | " + " | ".join(f"{100 * cells[p]:.2g}%" for p in ps) + " |")
    lines += ["", f"![operating characteristic]({out.with_suffix('.png').name})", ""]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg = r["gate_config"]
    fig = Figure(figsize=(4.6 * len(DECISIONS), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(DECISIONS), sharey=True)
    colors = dict(zip(SIZES, ("#d62728", "#1f77b4", "#2ca02c"), strict=True))
    for ax, decision in zip(axes, DECISIONS, strict=True):
        for x in r["curves"]:
            if x["decision"] != decision:
                continue
            ax.plot(
                r["drops_points"],
                [100 * p for p in x["pass_exact"]],
                color=colors[x["test_set"]],
                ls="-" if x["churn"] == "measured" else "--",
                lw=1.6,
                label=f"{x['test_set']}, churn {100 * x['fixed_rate']:.1f}%",
            )
        ax.axvline(cfg["max_drop"], color="#7f7f7f", lw=0.8, ls=":")
        ax.axhline(100 * cfg["alpha"], color="#7f7f7f", lw=0.8, ls=":")
        ax.set_title(f"decision: {decision}", fontsize=10)
        ax.set_xlabel("true old-intent drop (points)", fontsize=9)
        ax.grid(color="#eeeeee", lw=0.6)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel("P(pass) (%)", fontsize=9)
    axes[-1].legend(fontsize=7, loc="upper right", frameon=False)
    fig.suptitle(
        f"Pass probability of old_accuracy (and drift) vs the true drop (budget = "
        f"{cfg['max_drop']:g}, alpha = {cfg['alpha']:g})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
