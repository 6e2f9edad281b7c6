"""`intent-ci`: the command line. User mistakes print one clear line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from intent_ci.config import OOS_SCORES
from intent_ci.errors import IntentCIError, LatestMovedError

_STDOUT = "-"
"""`eval --json` without a file: print the JSON."""
RELEASE_HELP = "release id (v3), alias (production) or latest (default: latest)"
EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
"""0: done; 1: a release failed `verify`, or a release was written but LATEST did not move to it
(another run moved it first); 2: a user mistake (bad input, usage, unknown release)."""
logger = logging.getLogger("intent_ci")


def echo(text: str = "") -> None:
    """The CLI's output layer: results go to stdout, logs and progress to stderr. In a job
    launched on several processes only the main one prints results (errors print everywhere)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _quiet_libraries() -> None:
    import datasets
    import huggingface_hub.utils.logging as hub_logging
    import transformers

    # huggingface_hub's logger has its own stderr handler; propagating to the root handler that
    # _setup_logging installs printed each of its warnings (e.g. Hub retries) twice.
    hub_logging.disable_propagation()

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*")


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING))


@contextlib.contextmanager
def _manifest_shape(path: Path) -> Iterator[None]:
    """Turn a field of a hand-edited manifest that `show` / `releases` cannot print (a missing
    key, a list where an object belongs, text where a number belongs) into one error line."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:
        raise IntentCIError(
            f"{path}: a field does not have the shape intent-ci writes "
            f"({type(err).__name__}: {err}); was it edited by hand? Restore it, then check with "
            "`intent-ci verify --all`"
        ) from None


def _fmt(value: Any, pct: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if pct else str(value)


# ---- commands ----------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from intent_ci.config import load_config
    from intent_ci.pipeline import init_release

    config = load_config(args.config)
    if args.backbone:
        from intent_ci.config import apply_overrides

        config = apply_overrides(
            config, {"model": {"backbone": args.backbone}}, source="--backbone"
        )
    release = init_release(args.data, _writable_registry(args), config, eval_data=args.eval_data)
    _report_release(args.registry, release)
    return EXIT_OK


def _read_overrides(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    from intent_ci.config import read_yaml

    file = Path(path)
    values = read_yaml(file)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise IntentCIError(
            f"{file}: expected a mapping of sections (data, model, train, distill, replay, oos, "
            "fallback)"
        )
    return values


def _child_job(args: argparse.Namespace, job: Any) -> int:
    """Run `add_intents` or `update_release` from the parsed flags and report the release."""
    release = job(
        args.data,
        _writable_registry(args),
        args.from_release,
        overrides=_read_overrides(args.config),
        overrides_source=args.config or "overrides",
        eval_data=args.eval_data,
    )
    _report_release(args.registry, release)
    return EXIT_OK


def cmd_add_intent(args: argparse.Namespace) -> int:
    from intent_ci.pipeline import add_intents

    return _child_job(args, add_intents)


def cmd_update(args: argparse.Namespace) -> int:
    from intent_ci.pipeline import update_release

    return _child_job(args, update_release)


def _update_lines(manifest: dict) -> list[str]:
    """An update release's changes: updated intents, corrections, replay memory changes."""
    from intent_ci.registry import update_training

    lines = []
    trained = update_training(manifest)
    if trained in ("head", "head-changed-rows"):
        lines.append(
            "trained   the head alone, on the parent's embeddings (train.update_mode: head); "
            "the encoder is the parent's"
        )
        if trained == "head-changed-rows":
            lines.append(
                "          only the changed intents' rows trained (train.update_head_rows: "
                "changed); every other intent scores as in the parent"
            )
    elif trained == "lora":
        lines.append("trained   LoRA and head (train.update_mode: lora)")
    if manifest.get("updated_intents"):
        lines.append(f"updated   {', '.join(manifest['updated_intents'])}")
    for c in manifest.get("corrections") or []:
        lines.append(
            f"corrected {c['text']!r}: {c['previous']} -> {c['intent']} "
            f"({'replay memory' if c['evidence'] == 'replay_memory' else 'parent predicted'}"
            f" {c['previous']}; {c['source']})"
        )
    for intent, change in (manifest.get("memory_changes") or {}).items():
        lines.append(
            f"memory    {intent}: +{len(change['added'])} -{len(change['removed'])} exemplars"
        )
    return lines


def _neighbour_lines(metrics: dict) -> list[str]:
    """``new_intent looks like old (share), ...``: the parent's likeliest confusions, to review."""
    return [
        f"{new} looks like " + ", ".join(f"{old} ({share:.0%})" for old, share in olds.items())
        for new, olds in (metrics.get("neighbours") or {}).items()
        if olds
    ]


def _fallback_line(manifest: dict) -> str | None:
    """What `init`'s comparison with the head alone found, or that the line trains the head alone."""
    record = (manifest.get("metrics") or {}).get("fallback")
    if record:
        verdict = (
            "kept fine-tuning"
            if record["chosen"] == "fine-tuned"
            else "shipped the head alone on the frozen encoder (the line trains the head alone)"
        )
        test = f", McNemar p = {record['p_value']:.3g}" if "p_value" in record else ""
        return (
            f"fine-tuned {record['fine_tuned_accuracy']:.2f}% vs head alone "
            f"{record['head_only_accuracy']:.2f}% on {record['held_back_examples']} held-out "
            f"utterances{test}: {verdict}"
        )
    if ((manifest.get("config") or {}).get("train") or {}).get("lora") is False:
        return "head alone on the frozen encoder (train.lora: false)"
    return None


def _report_release(registry: str, release: str) -> None:
    from intent_ci.registry import Registry

    manifest = Registry(registry).manifest(release)
    metrics = manifest.get("metrics", {})
    echo(
        f"{release}: {len(manifest['intents'])} intents (+{len(manifest['new_intents'])}), parent {manifest['parent'] or '-'}"
    )
    echo(f"  trained on {metrics.get('train_examples')} examples in {metrics.get('wall_time_s')} s")
    for line in _update_lines(manifest):
        echo(f"  {line}")
    for line in _neighbour_lines(metrics):
        echo(f"  parent took {line}")
    if (fallback := _fallback_line(manifest)) is not None:
        echo(f"  fallback: {fallback}")
    echo(f"  out of scope: {_oos_line(manifest)}")
    ev = metrics.get("eval")
    if ev:
        echo(
            f"  eval {ev['data']}: accuracy {_fmt(ev['accuracy'])}, old intents {_fmt(ev.get('old_intents_accuracy'))}"
            f", new intents {_fmt(ev.get('new_intents_accuracy'))}"
            + (
                f", updated intents {_fmt(ev.get('updated_intents_accuracy'))}"
                if "updated_intents_accuracy" in ev
                else ""
            )
        )
    echo(f"  written to {Path(registry) / release}")


def _oos_line(manifest: dict) -> str:
    """The release's out-of-scope rule in one line, for `show`, `releases` and reports."""
    oos = manifest.get("oos")
    if oos is None:
        return (
            "not calibrated (made before out-of-scope detection, or without the calibration "
            "utterances to set a threshold on): every utterance is in scope; `intent-ci "
            "calibrate` sets one"
        )
    cal = oos.get("calibration") or {}
    if oos.get("threshold") is None:
        return f"no threshold: {oos.get('note', 'nothing to calibrate on')}"
    line = (
        f"{oos['score']} >= {oos['threshold']:.4f} ({oos.get('method')}, target in-scope recall "
        f"{_fmt(oos.get('target_recall'))}); calibrated on {cal.get('in_scope')} held-out "
        f"utterances of {cal.get('intents')} intents ({cal.get('file')}): in-scope recall "
        f"{_fmt(oos.get('in_scope_recall'))}"
    )
    if cal.get("oos"):
        line += f"; {cal['oos']} oos utterances, oos recall {_fmt(oos.get('oos_recall'))}"
    if oos.get("bank"):
        line += (
            f"; nearest of {oos['bank'].get('rows')} replay exemplars ({oos['bank'].get('file')})"
        )
    if oos.get("note"):
        line += f" ({oos['note']})"
    return line


def _oos_summary(oos: dict | None) -> dict | None:
    """The manifest's out-of-scope record without its free text: what `releases --json` lists."""
    if oos is None:
        return None
    cal = oos.get("calibration") or {}
    return {
        "method": oos.get("method"),
        "score": oos.get("score"),
        "threshold": oos.get("threshold"),
        "target_recall": oos.get("target_recall"),
        "calibration_file": cal.get("file"),
        "calibration_size": cal.get("in_scope"),
        "calibration_oos": cal.get("oos"),
        "in_scope_recall": oos.get("in_scope_recall"),
        "oos_recall": oos.get("oos_recall"),
    }


def cmd_releases(args: argparse.Namespace) -> int:
    from intent_ci.registry import Registry, no_registry

    registry = Registry(args.registry)
    if not registry.exists():
        raise no_registry(registry.root, "create one with `intent-ci init`")
    names = registry.releases()
    latest = registry.latest()
    aliases = registry.aliases()
    rows = []
    for name in names:
        m = registry.manifest(name)
        with _manifest_shape(registry.path(name) / "manifest.json"):
            ev = (m.get("metrics") or {}).get("eval") or {}
            rows.append(
                {
                    "release": name,
                    "parent": m.get("parent"),
                    "intents": len(m["intents"]),
                    "new_intents": m.get("new_intents", []),
                    "retired_intents": m.get("retired_intents", []),
                    "updated_intents": m.get("updated_intents", []),
                    "corrections": len(m.get("corrections") or []),
                    "accuracy": ev.get("accuracy"),
                    "old_intents_accuracy": ev.get("old_intents_accuracy"),
                    "new_intents_accuracy": ev.get("new_intents_accuracy"),
                    "oos": _oos_summary(m.get("oos")),
                    "created_at": m.get("created_at"),
                    "latest": name == latest,
                    "aliases": [a for a, r in aliases.items() if r == name],
                }
            )
    if args.json:
        echo(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        echo(f"{args.registry}: no releases")
        return EXIT_OK
    echo(
        f"{'release':<9} {'parent':<7} {'intents':>7}  {'acc':>6} {'old':>6} {'new':>6}  "
        f"{'oos rule (score >= threshold, n, in-scope recall)':<44}  added"
    )
    for r in rows:
        with _manifest_shape(registry.path(r["release"]) / "manifest.json"):
            added = ", ".join(r["new_intents"][:4]) + (" …" if len(r["new_intents"]) > 4 else "")
            if r["retired_intents"]:
                added = "retired " + ", ".join(r["retired_intents"])
            if r["updated_intents"]:
                added = (added + "; " if r["new_intents"] else "") + (
                    f"updated {len(r['updated_intents'])}, corrected {r['corrections']}"
                )
            mark = "*" if r["latest"] else " "
            named = f"  [{', '.join(r['aliases'])}]" if r["aliases"] else ""
            o = r["oos"]
            if o is None:
                rule = "none (accepts all)"
            elif o["threshold"] is None:
                rule = "no threshold (accepts all)"
            else:
                rule = (
                    f"{o['score']} >= {o['threshold']:.3f}, n={o['calibration_size']}, "
                    f"{_fmt(o['in_scope_recall'])}"
                )
            echo(
                f"{r['release'] + mark:<9} {r['parent'] or '-':<7} {r['intents']:>7}  {_fmt(r['accuracy']):>6} "
                f"{_fmt(r['old_intents_accuracy']):>6} {_fmt(r['new_intents_accuracy']):>6}  {rule:<44}  {added}{named}"
            )
    echo("* latest")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from intent_ci.registry import Registry

    registry = Registry(args.registry)
    name = registry.resolve(args.release)
    manifest = registry.manifest(name)
    if args.json:
        echo(json.dumps(manifest, indent=2))
        return EXIT_OK
    with _manifest_shape(registry.path(name) / "manifest.json"):
        b = manifest["backbone"]
        named = [a for a, r in registry.aliases().items() if r == name]
        echo(
            f"release   {name}{'  (latest)' if registry.latest() == name else ''}"
            + (f"  aliases: {', '.join(named)}" if named else "")
        )
        echo(f"parent    {manifest.get('parent') or '-'}")
        echo(f"created   {manifest.get('created_at')}")
        echo(
            f"backbone  {b['name']} ({b['model_type']}, {b['pooling']} pooling) {b['fingerprint'][:23]}…"
        )
        echo(f"intents   {len(manifest['intents'])}: {', '.join(manifest['intents'])}")
        echo(f"added     {', '.join(manifest.get('new_intents', []))}")
        if manifest.get("retired_intents"):
            echo(f"retired   {', '.join(manifest['retired_intents'])}")
        for line in _update_lines(manifest):
            echo(line)
        m = manifest.get("metrics") or {}
        if m.get("train") is not None:
            echo(
                f"training  {m.get('train_examples')} examples, {m.get('wall_time_s')} s, {m.get('train', {}).get('steps')} steps"
            )
        for line in _neighbour_lines(m):
            echo(f"neighbour {line}")
        if (fallback := _fallback_line(manifest)) is not None:
            echo(f"fallback  {fallback}")
        ev = m.get("eval")
        if ev:
            echo(
                f"eval      {ev['data']}: accuracy {_fmt(ev['accuracy'])}, old {_fmt(ev.get('old_intents_accuracy'))}, "
                f"new {_fmt(ev.get('new_intents_accuracy'))}"
                + (
                    f", updated {_fmt(ev.get('updated_intents_accuracy'))}"
                    if "updated_intents_accuracy" in ev
                    else ""
                )
            )
        echo(f"oos       {_oos_line(manifest)}")
        r = manifest.get("replay", {})
        echo(
            f"replay    {r.get('exemplars')} exemplars for {r.get('intents')} intents, {r.get('bytes_per_intent')} B/intent"
        )
        echo(
            "files     " + ", ".join(f"{k} ({v['bytes']} B)" for k, v in manifest["files"].items())
        )
    return EXIT_OK


def _check_output_file(path: Path, flag: str) -> None:
    """Refuse an output path that cannot become a file, before any work is done."""
    if path.is_dir():
        raise IntentCIError(f"{flag} {path}: is a folder; expected a file path (e.g. result.json)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise IntentCIError(
                    f"{flag} {path}: {parent} is a file, not a folder; expected a file path "
                    "whose parent is (or can be made) a folder"
                )
            break


def _check_output_place(path: Path, flag: str, registry: str, inputs: Sequence[str | None]) -> None:
    """Refuse an output path inside a release folder (releases never change: an extra file
    makes the release fail verification) or one that is an input file of the same command."""
    from intent_ci.registry import RELEASE_ID, STAGING_PREFIX

    target, root = path.resolve(), Path(registry).resolve()
    if root in target.parents:
        first = target.relative_to(root).parts[0]
        if RELEASE_ID.match(first) or first.startswith(STAGING_PREFIX):
            raise IntentCIError(
                f"{flag} {path}: inside release folder {root / first}; releases never change (an "
                "extra file makes it fail verification), so write outside the registry"
            )
    for given in inputs:
        if given and Path(given).resolve() == target:
            raise IntentCIError(
                f"{flag} {path}: is also the input {given}; it would be overwritten, so choose "
                "another path"
            )


def cmd_eval(args: argparse.Namespace) -> int:
    from intent_ci.data import read_examples
    from intent_ci.evaluation import evaluate_release
    from intent_ci.registry import Registry
    from intent_ci.release import IntentClassifier, load_release

    # `--json FILE` is the older spelling of `--output FILE`; a bare `--json` prints JSON.
    json_file = args.json if args.json not in (None, _STDOUT) else None
    if json_file and args.output:
        raise IntentCIError(
            f"--json {json_file} and --output {args.output}: both name the file the result goes "
            "to (--json FILE is the older spelling of --output FILE); pass one"
        )
    out_file = args.output or json_file
    flag = "--output" if args.output else "--json"
    if out_file:
        _check_output_file(Path(out_file), flag)
        _check_output_place(Path(out_file), flag, args.registry, [args.data])
    registry = Registry(args.registry)
    release = load_release(registry, args.release)
    classifier = IntentClassifier(release)
    against = None
    if args.against:
        against = IntentClassifier(load_release(registry, args.against, backbone=None))
    data = read_examples(args.data, release.config.data)
    old = against.intents if against is not None else None
    result = evaluate_release(classifier, data, old_intents=old, against=against)
    if out_file:
        try:
            Path(out_file).parent.mkdir(parents=True, exist_ok=True)
            Path(out_file).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise IntentCIError(f"{flag} {out_file}: cannot write there ({err.strerror})") from None
    if args.json == _STDOUT:
        echo(json.dumps(result, indent=2))
        return EXIT_OK
    echo(f"{result['release']} on {args.data} ({result['n']} utterances)")
    echo(f"  accuracy       {_fmt(result['accuracy'])}")
    echo(f"  old intents    {_fmt(result.get('old_intents_accuracy'))} (n={result.get('old_n')})")
    echo(f"  new intents    {_fmt(result.get('new_intents_accuracy'))} (n={result.get('new_n')})")
    rule = (
        "no threshold (accepts all)"
        if result.get("oos_threshold") is None
        else f"{result['oos_score']} >= {result['oos_threshold']:.3f}"
    )
    echo(
        f"  out of scope   {rule}: in-scope accuracy {_fmt(result['in_scope_accuracy'])}, "
        f"in-scope recall {_fmt(result['in_scope_recall'])} (n={result['in_scope_n']})"
    )
    if result.get("oos_n"):
        auroc = "" if result.get("auroc") is None else f"; AUROC {result['auroc']:.4f}"
        echo(
            f"                 oos recall {_fmt(result['oos_recall'])}, precision "
            f"{_fmt(result['oos_precision'])}, F1 {_fmt(result['oos_f1'])} "
            f"(n={result['oos_n']}){auroc}"
        )
        if result.get("fpr_at_95") is not None:
            echo(f"                 FPR@95 {_fmt(result['fpr_at_95'])}")
    if "updated_intents_accuracy" in result:
        echo(
            f"  updated intents {_fmt(result['updated_intents_accuracy'])} (n={result['updated_n']}; "
            "counted as old intents too)"
        )
    if "against" in result:
        a = result["against"]
        echo(
            f"  vs {a['release']} on its {len(a['per_intent_delta'])} intents: {_fmt(a['this_release_accuracy'])} "
            f"vs {_fmt(a['accuracy'])} ({100 * a['delta']:+.1f} points"
            + (f", McNemar p = {a['paired']['p_value']:.2g})" if a.get("paired") else ")")
        )
        o = a.get("oos") or {}
        if o.get("oos_recall", {}).get("delta") is not None:
            echo(
                f"  vs {a['release']} out of scope: oos recall {100 * o['oos_recall']['delta']:+.1f} "
                f"points, in-scope recall {100 * o['in_scope_recall']['delta']:+.1f}, AUROC "
                f"{o['auroc']['delta']:+.4f}"
            )
        worst = sorted(a["per_intent_delta"].items(), key=lambda kv: kv[1])[:3]
        drops = [f"{k} {100 * v:+.1f}" for k, v in worst if v < 0]
        if drops:
            echo("  largest drops  " + ", ".join(drops))
    echo(f"{'intent':<28} {'acc':>6} {'n':>4}")
    for intent, row in result["per_intent"].items():
        echo(f"{intent:<28} {_fmt(row['accuracy']):>6} {row['n']:>4}")
    if out_file:
        echo(f"wrote {out_file}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """The regression gate: 0 pass, 1 regression (see the report), 2 bad input."""
    from intent_ci.check import EXIT_PASS, EXIT_REGRESSION, run_check
    from intent_ci.config import load_gate_config
    from intent_ci.gate_report import summary_lines

    _check_output_place(
        Path(args.report_dir), "--report-dir", args.registry, [args.data, args.golden, args.config]
    )
    report = run_check(
        args.registry,
        args.candidate,
        args.data,
        baseline=args.baseline,
        also_against=args.also_against,
        drift_against=args.drift_against,
        golden=args.golden,
        config=load_gate_config(args.config),
        report_dir=args.report_dir,
    )
    for line in summary_lines(report):
        echo(line)
    echo(f"wrote {', '.join(report['files'])}")
    return EXIT_PASS if report["verdict"] == "pass" else EXIT_REGRESSION


FALLBACK = "(out of scope)"
"""What `predict` prints for an utterance the release rejects as out of scope."""


def cmd_predict(args: argparse.Namespace) -> int:
    from intent_ci.data import read_texts
    from intent_ci.release import IntentClassifier

    for number, text in enumerate(args.text, 1):
        if not text.strip():
            raise IntentCIError(
                f"utterance {number} on the command line is empty; expected an utterance to classify"
            )
    if args.batch_size < 1:
        raise IntentCIError(f"--batch-size: must be >= 1, got {args.batch_size}")
    classifier = IntentClassifier.load(args.registry, args.release)
    texts = list(args.text)
    if args.input:
        texts += read_texts(args.input, classifier.release.config.data.max_chars)
    if not texts:
        raise IntentCIError("nothing to classify: give utterances as arguments or --input FILE")
    predictions = classifier.predict(texts, batch_size=args.batch_size)
    if classifier.oos is None:
        logger.warning(
            "release %s has no out-of-scope calibration (made before out-of-scope detection): "
            "every utterance is in scope",
            classifier.name,
        )
    if args.json:
        for text, p in zip(texts, predictions, strict=True):
            echo(
                json.dumps(
                    {
                        "text": text,
                        "intent": p.intent,
                        "confidence": round(p.confidence, 4),
                        "in_scope": p.in_scope,
                        "score": None if p.score is None else round(p.score, 4),
                    }
                )
            )
        return EXIT_OK
    for text, p in zip(texts, predictions, strict=True):
        if p.in_scope:
            echo(f"{p.intent:<24} {p.confidence:.3f}  {text}")
        else:
            echo(
                f"{FALLBACK:<24} score {p.score:.3f} < {classifier.threshold:.3f} "
                f"(best {p.intent} {p.confidence:.3f})  {text}"
            )
    return EXIT_OK


def _quickstart_data_dir() -> Path:
    """./data if it holds base/, else the copy of data/ in the wheel, else the checkout's data/."""
    here = Path(__file__).resolve().parent
    for candidate in (Path("data"), here / "_data", here.parent / "data"):
        if (candidate / "base").is_dir():
            return candidate
    return Path("data")


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Base release on data/base, add data/new/refund_status.txt, print old/new accuracy."""
    from intent_ci.config import PACKAGED_MINILM, apply_overrides, load_config
    from intent_ci.data import INTENT, IntentData, read_examples
    from intent_ci.evaluation import evaluate_release
    from intent_ci.pipeline import add_intents, init_release
    from intent_ci.registry import Registry
    from intent_ci.release import IntentClassifier

    data_dir = Path(args.data_dir) if args.data_dir else _quickstart_data_dir()
    base, new, test = data_dir / "base", data_dir / "new" / f"{args.intent}.txt", data_dir / "test"
    for path in (base, new, test):
        if not path.exists():
            raise IntentCIError(
                f"{path}: not found; run the quickstart from the repository root or pass --data-dir"
            )
    registry = Registry(args.registry)
    if registry.releases():
        raise IntentCIError(
            f"registry {args.registry} already has releases ({', '.join(registry.releases())}); "
            "pass --registry DIR for a fresh one"
        )
    config = apply_overrides(
        load_config(None), {"model": {"backbone": PACKAGED_MINILM}}, source="quickstart"
    )
    # Every input is read before v1 is trained: a bad new/ or test/ file found only after v1 is
    # committed would leave the registry holding v1, and the next quickstart refuses it.
    base_intents = read_examples(base, config.data).intents
    clash = [i for i in read_examples(new, config.data).intents if i in base_intents]
    if clash:
        raise IntentCIError(
            f"{new}: intent {clash[0]!r} is already in {base}; --intent names a file of "
            f"{data_dir / 'new'} holding a new intent"
        )
    read_examples(test, config.data)
    echo(f"[1/3] base release from {base} on {PACKAGED_MINILM} (offline)")
    v1 = init_release(base, registry, config, eval_data=None)
    echo(f"[2/3] add intent {args.intent!r} from {new}")
    v2 = add_intents(new, registry, v1)
    for line in _neighbour_lines(registry.manifest(v2).get("metrics", {})):
        echo(f"      {v1} took {line}")
    echo(f"[3/3] evaluate on {test}")
    old_clf = IntentClassifier.load(registry, v1)
    new_clf = IntentClassifier.load(registry, v2)
    data = read_examples(test, config.data)
    # data/test also holds intents that are not added here (the other files in data/new).
    known = set(new_clf.intents)
    subset = IntentData(data.dataset.filter(lambda row: row[INTENT] in known), str(test))
    result = evaluate_release(new_clf, subset, old_intents=old_clf.intents, against=old_clf)
    a = result["against"]
    echo("")
    echo(f"registry {args.registry}: {v1} -> {v2}")
    echo(
        f"  {v1} old intents  {_fmt(a['accuracy'])}   ({len(old_clf.intents)} intents, {a['n']} test utterances)"
    )
    echo(
        f"  {v2} old intents  {_fmt(result['old_intents_accuracy'])}   ({100 * a['delta']:+.1f} points)"
    )
    echo(
        f"  {v2} new intent   {_fmt(result['new_intents_accuracy'])}   ({args.intent}, {result['new_n']} test utterances)"
    )
    echo("")
    sample = "where is my refund? it's been ten days"
    p = new_clf.predict([sample])[0]
    echo(f"  predict {sample!r} -> {p.label} ({p.confidence:.2f})")
    echo(
        f"next: intent-ci releases --registry {args.registry}; intent-ci show {v2} --registry {args.registry}"
    )
    return EXIT_OK


def cmd_discover(args: argparse.Namespace) -> int:
    """Candidate intents from traffic the release rejects or hesitates on."""
    from intent_ci.config import load_discover_config
    from intent_ci.discover import _check_out, discover, read_traffic, write_candidates
    from intent_ci.release import IntentClassifier

    config = load_discover_config(args.config)
    out = Path(args.out)
    _check_out(out, args.force)  # before the model loads: a refused --out costs nothing
    # Launched on several processes (torchrun, accelerate launch), each scores and embeds a
    # shard of the traffic (`discover.encode`); every process then clusters the same gathered
    # embeddings, and the main one reports and writes.
    device, main_process = None, True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        # Accelerate starts a CPU process group (gloo) only when told to use the CPU.
        state = PartialState(cpu=not torch.accelerator.is_available())
        device, main_process = state.device, state.is_main_process
    traffic = read_traffic(args.traffic, config.max_chars, progress=main_process)
    echo(
        f"traffic: {traffic.total} utterances ({len(traffic.texts)} distinct) from "
        f"{len(traffic.files)} file(s)"
        + (f"; {traffic.redacted} redacted rows skipped" if traffic.redacted else "")
        + (f"; {traffic.too_long} over-long skipped" if traffic.too_long else "")
    )
    classifier = IntentClassifier.load(args.registry, args.release, device=device)
    result = discover(classifier, traffic, config)
    if not main_process:
        return EXIT_OK
    echo(result.message)
    written = write_candidates(result, out, force=args.force)
    for cand in result.candidates:
        near = (
            f"nearest {cand.nearest_intent} {cand.nearest_similarity:.2f}"
            if cand.nearest_intent
            else "no existing intent to compare"
        )
        where = (
            f"probably belongs to {cand.belongs_to}: more examples, not a new intent"
            if cand.belongs_to
            else str(out / (cand.file or ""))
        )
        echo(
            f"  {cand.name:<32} {cand.size:>6} utterances ({cand.distinct} distinct), "
            f"cohesion {cand.cohesion:.2f}, {near}; {where}"
        )
    echo(f"wrote {', '.join(written)} to {out}")
    if any(c.file for c in result.candidates):
        echo(f"next: review {out}, rename or delete files, then intent-ci add-intent --data FILE")
    return EXIT_OK


def _hub_quiet(verbose: bool) -> None:
    if not verbose:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def cmd_push(args: argparse.Namespace) -> int:
    from intent_ci.hub import HubConfig, push_release

    _hub_quiet(args.verbose)
    config = HubConfig(
        repo_id=args.repo_id,
        token_env=args.token_env,
        private=args.private,
        include_replay=not args.no_replay,
    )
    result = push_release(args.registry, args.release, config, gate_report=args.gate_report)
    for release, commit in result.present.items():
        echo(
            f"{release}: already on {result.repo_id} (tag {release}, commit {commit[:12]}); nothing to do"
        )
    for release, commit in result.pushed.items():
        echo(f"{release}: pushed to {result.repo_id} (commit {commit[:12]}, tag {release})")
    for alias, before in result.aliases.items():
        echo(f"{alias}: tag on {result.repo_id} now names {result.release} (was {before or '-'})")
    for note in result.notes:
        echo(f"note: {note}")
    return EXIT_OK


def cmd_pull(args: argparse.Namespace) -> int:
    from intent_ci.hub import HubConfig, pull_release

    _hub_quiet(args.verbose)
    config = HubConfig(repo_id=args.repo_id, token_env=args.token_env)
    result = pull_release(config, args.release, args.registry)
    for release in result.present:
        echo(f"{release}: already in {args.registry}, identical to {result.repo_id}")
    for release in result.pulled:
        echo(f"{release}: pulled from {result.repo_id} into {Path(args.registry) / release}")
    if not result.pulled:
        echo(f"{result.release}: nothing to pull")
    if result.alias:
        echo(f"{result.alias}: {result.release} (alias set in {args.registry} from the Hub tag)")
    echo(f"{result.release} is at commit {result.commit[:12]}; LATEST is {result.latest or '-'}")
    return EXIT_OK


def _writable_registry(args: argparse.Namespace) -> Any:
    """The registry of a command that writes, with its `--lock-timeout`."""
    from intent_ci.config import RegistryConfig
    from intent_ci.registry import Registry

    return Registry(args.registry, RegistryConfig(lock_timeout_s=args.lock_timeout))


def cmd_verify(args: argparse.Namespace) -> int:
    from intent_ci.lifecycle import verify_registry

    if args.all and args.release:
        raise IntentCIError("verify takes a release name or --all, not both")
    report = verify_registry(
        args.registry, None if args.all else (args.release or "latest"), backbone=args.backbone
    )
    if args.json:
        echo(json.dumps(report.to_dict(), indent=2))
        return EXIT_OK if report.ok else EXIT_FAILED
    for problem in report.registry_problems:
        echo(f"registry  FAILED  {problem}")
    for check in report.releases:
        if check.ok:
            echo(
                f"{check.release:<9} ok      {check.intents} intents, parent {check.parent or '-'}"
            )
        else:
            echo(f"{check.release:<9} FAILED")
            for problem in check.problems:
                echo(f"  - {problem}")
    for note in report.notes:
        echo(f"note: {note}")
    failed = sum(not c.ok for c in report.releases)
    echo(
        f"{len(report.releases)} release(s) checked: {len(report.releases) - failed} ok, {failed} failed"
        + (
            f"; {len(report.registry_problems)} registry problem(s)"
            if report.registry_problems
            else ""
        )
    )
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_rollback(args: argparse.Namespace) -> int:
    from intent_ci.lifecycle import rollback

    previous, current = rollback(_writable_registry(args), args.release)
    if previous == current:
        echo(f"{current} is already latest; nothing changed")
    else:
        echo(
            f"latest: {previous or '-'} -> {current} (no release deleted; logged in HISTORY.jsonl)"
        )
    return EXIT_OK


def _pct_delta(row: dict[str, Any]) -> str:
    return f"{_fmt(row['a'])} -> {_fmt(row['b'])} ({100 * row['delta']:+.1f} points)"


def cmd_diff(args: argparse.Namespace) -> int:
    from intent_ci.lifecycle import diff_releases

    result = diff_releases(args.registry, args.a, args.b)
    if args.json:
        echo(json.dumps(result, indent=2))
        return EXIT_OK
    echo(f"{result['a']} -> {result['b']}: {result['relation']}")
    echo(f"intents added    {', '.join(result['intents_added']) or '-'}")
    removed = ", ".join(result["intents_removed"]) or "-"
    if result["retired_intents"]:
        removed += f" (retired by {result['b']})"
    echo(f"intents removed  {removed}")
    echo(f"intents updated  {', '.join(result['intents_updated']) or '-'}")
    if result["corrections"]:
        echo(f"corrections      {len(result['corrections'])}")
        for c in result["corrections"]:
            echo(f"  {c['text']!r}: {c['previous']} -> {c['intent']} ({c['release']})")
    metrics = result["metrics"]
    if not metrics:
        echo("metrics          - (both releases need eval results: --eval-data)")
    else:
        data = metrics["data"]
        if data["a"] != data["b"]:
            echo(f"metrics          measured on different data: {data['a']} vs {data['b']}")
        for key in ("accuracy", "old_intents_accuracy", "new_intents_accuracy"):
            if key in metrics:
                echo(f"  {key:<22} {_pct_delta(metrics[key])}")
        updated = set(result["intents_updated"])
        if updated & set(metrics["per_intent"]):
            echo("  updated intents")
            for intent, row in metrics["per_intent"].items():
                if intent in updated:
                    echo(f"    {intent:<20} {_pct_delta(row)}")
            echo("  other intents")
        for intent, row in metrics["per_intent"].items():
            if intent not in updated:
                echo(f"  {intent:<22} {_pct_delta(row)}")
    changes = result["config_changes"] + result["backbone_changes"]
    echo(
        f"config changes   {len(result['config_changes'])}" + ("" if changes else " (same config)")
    )
    for change in result["config_changes"]:
        echo(f"  {change['field']:<30} {change['a']!r} -> {change['b']!r}")
    for change in result["backbone_changes"]:
        echo(f"  backbone.{change['field']:<21} {change['a']!r} -> {change['b']!r}")
    return EXIT_OK


def cmd_retire(args: argparse.Namespace) -> int:
    from intent_ci.lifecycle import retire_intents
    from intent_ci.registry import Registry

    release = retire_intents(args.intents, _writable_registry(args), args.from_release)
    manifest = Registry(args.registry).manifest(release)
    echo(
        f"{release}: {len(manifest['intents'])} intents, parent {manifest['parent']}, retired "
        f"{', '.join(manifest['retired_intents'])}"
    )
    echo(f"  written to {Path(args.registry) / release}; {manifest['parent']} is unchanged")
    return EXIT_OK


def cmd_alias(args: argparse.Namespace) -> int:
    from intent_ci.registry import Registry, no_registry

    if args.alias_command == "list":
        registry = Registry(args.registry)
        if not registry.exists():
            raise no_registry(registry.root, "create one with `intent-ci init`")
        aliases = registry.aliases()
        if args.json:
            echo(json.dumps(aliases, indent=2))
        elif not aliases:
            echo(f"{args.registry}: no aliases (LATEST is {registry.latest() or '-'})")
        else:
            for alias, release in aliases.items():
                echo(f"{alias:<24} {release}")
        return EXIT_OK
    registry = _writable_registry(args)
    if args.alias_command == "set":
        from intent_ci.release import verify_release

        # `serve` follows aliases: never point one at a release it would refuse to load
        verify_release(registry, registry.resolve(args.release))
        previous = registry.set_alias(args.name, args.release)
        release = registry.aliases()[args.name]
        if previous == release:
            echo(f"{args.name} already points to {release}; nothing changed")
        else:
            echo(f"{args.name}: {previous or '-'} -> {release} (logged in HISTORY.jsonl)")
    else:
        previous = registry.delete_alias(args.name)
        echo(f"{args.name}: deleted (pointed to {previous}; no release deleted)")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from intent_ci.lifecycle import calibrate_release
    from intent_ci.registry import Registry

    release = calibrate_release(
        args.data,
        _writable_registry(args),
        args.release,
        target_recall=args.target_recall,
        score=args.score,
    )
    manifest = Registry(args.registry).manifest(release)
    echo(
        f"{release}: {len(manifest['intents'])} intents, parent {manifest['parent']}, "
        "recalibrated (nothing trained)"
    )
    echo(f"  out of scope: {_oos_line(manifest)}")
    echo(f"  written to {Path(args.registry) / release}; {manifest['parent']} is unchanged")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from intent_ci.config import ServeConfig
    from intent_ci.serve import serve

    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(ServeConfig)
        if getattr(args, f.name) is not None
    }
    serve(args.registry, ServeConfig(**values))
    return EXIT_OK


def _serve_flags(p: argparse.ArgumentParser) -> None:
    """One flag per `ServeConfig` field (``max_wait_ms`` -> ``--max-wait-ms``), help from the field."""
    from typing import get_type_hints

    from intent_ci.config import ServeConfig

    hints = get_type_hints(ServeConfig)
    for f in dataclasses.fields(ServeConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"].replace("%", "%%")
        if hints[f.name] is bool:
            p.add_argument(flag, action="store_true", default=None, help=help_text)
            continue
        kind = {int: int, float: float, int | None: int}.get(hints[f.name], str)
        default = "" if f.default is None else f" (default: {f.default})"
        p.add_argument(
            flag,
            type=kind,
            default=None,
            metavar=f.metadata.get("metavar", kind.__name__.upper()),
            help=help_text + default,
        )


# ---- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intent-ci",
        description="Add intents to a deployed intent classifier as cheap, reviewable, reversible releases.",
    )
    from intent_ci import __version__

    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__}",
        help="print the version of intent-ci and exit",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="run `intent-ci COMMAND -h`"
    )
    from intent_ci.config import RegistryConfig

    def registry_arg(p: argparse.ArgumentParser, writes: bool = False) -> None:
        p.add_argument("--registry", default="adapters", help="registry folder (default: adapters)")
        if writes:
            p.add_argument(
                "--lock-timeout",
                type=float,
                default=RegistryConfig.lock_timeout_s,
                metavar="SECONDS",
                help="how long to wait for another run's registry lock (default: %(default)g)",
            )

    p = sub.add_parser("init", help="train the first release (v1) from labelled utterances")
    p.add_argument(
        "--data",
        required=True,
        help="CSV/JSONL with text,intent columns, or a folder of <intent>.txt",
    )
    p.add_argument(
        "--config",
        help="YAML overriding config fields (model/train/distill/replay/data/oos/fallback)",
    )
    p.add_argument(
        "--backbone",
        help="shortcut for model.backbone: Hub id, local folder or packaged:all-MiniLM-L6-v2",
    )
    p.add_argument(
        "--eval-data", help="held-out utterances scored after training and stored in the manifest"
    )
    registry_arg(p, writes=True)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "add-intent", help="train a release that adds new intents to an existing one"
    )
    p.add_argument(
        "--data",
        required=True,
        help="the new intents' utterances (<intent>.txt, folder, CSV or JSONL)",
    )
    p.add_argument(
        "--from", dest="from_release", default="latest", help="parent release (default: latest)"
    )
    p.add_argument("--config", help="YAML overriding train/distill/replay/data/oos fields")
    p.add_argument(
        "--eval-data", help="held-out utterances of old and new intents, scored after training"
    )
    registry_arg(p, writes=True)
    p.set_defaults(func=cmd_add_intent)

    p = sub.add_parser(
        "update",
        help="train a release from a file of new intents, more examples and corrected labels",
    )
    p.add_argument(
        "--data",
        required=True,
        help="utterances of new intents, more utterances of existing intents, and corrections "
        "(CSV/JSONL with text,intent columns, <intent>.txt or a folder of them)",
    )
    p.add_argument(
        "--from", dest="from_release", default="latest", help="parent release (default: latest)"
    )
    p.add_argument("--config", help="YAML overriding train/distill/replay/data/oos fields")
    p.add_argument(
        "--eval-data", help="held-out utterances of the release's intents, scored after training"
    )
    registry_arg(p, writes=True)
    p.set_defaults(func=cmd_update)

    p = sub.add_parser("releases", help="list releases: lineage, intents and key metrics")
    p.add_argument("--json", action="store_true", help="print JSON")
    registry_arg(p)
    p.set_defaults(func=cmd_releases)

    p = sub.add_parser("show", help="show one release's manifest")
    p.add_argument("release", help="release id, alias or latest")
    p.add_argument("--json", action="store_true", help="print the raw manifest")
    registry_arg(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "eval", help="per-intent accuracy, old vs new intents, deltas against another release"
    )
    p.add_argument("--release", default="latest", help=RELEASE_HELP)
    p.add_argument("--data", required=True, help="labelled test utterances")
    p.add_argument("--against", help="release or alias to compare with (usually the parent)")
    p.add_argument(
        "--json",
        nargs="?",
        const=_STDOUT,
        metavar="FILE",
        help="print the full result as JSON instead of the table; `--json FILE`, the older "
        "spelling of --output FILE, writes it to FILE and prints the table",
    )
    p.add_argument("--output", metavar="FILE", help="write the full result as JSON to FILE")
    registry_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "check",
        help="regression gate: candidate vs baseline on the same utterances; exit 0 pass, 1 regression, 2 bad input",
    )
    p.add_argument("--candidate", required=True, help="release to check (name or latest)")
    p.add_argument(
        "--baseline",
        help="release to compare with (default: the `production` alias when set, else the "
        "candidate's parent)",
    )
    p.add_argument(
        "--also-against",
        action="append",
        default=[],
        metavar="RELEASE",
        help="also compare with this release (old-intent and per-intent rules); repeatable",
    )
    p.add_argument(
        "--drift-against",
        metavar="RELEASE",
        help="release the drift rule (budget gate.max_drift) compares with (default: the base "
        "release of the candidate's line)",
    )
    p.add_argument("--data", required=True, help="labelled test utterances")
    p.add_argument("--golden", help="YAML of `utterance: intent` pairs that must stay right")
    p.add_argument(
        "--report-dir", default="reports", help="where report.json/.md/.png go (default: reports)"
    )
    p.add_argument("--config", help="YAML with a `gate:` section overriding GateConfig fields")
    registry_arg(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("predict", help="classify utterances with a release")
    p.add_argument("text", nargs="*", help="utterances to classify")
    p.add_argument("--release", default="latest", help=RELEASE_HELP)
    p.add_argument("--input", help="file with one utterance per line (or JSONL with a text field)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="utterances per forward pass (default: %(default)s); memory, not results",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    registry_arg(p)
    p.set_defaults(func=cmd_predict)

    def hub_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--repo-id",
            required=True,
            help="Hub model repo of the release line, e.g. acme/support-intents",
        )
        p.add_argument(
            "--token-env",
            default="HF_TOKEN",
            help="environment variable holding the Hub token (default HF_TOKEN; if unset, "
            "huggingface_hub's own login). The Hub URL comes from HF_ENDPOINT.",
        )

    p = sub.add_parser(
        "push", help="upload a release (and parents missing there) to a Hugging Face Hub repo"
    )
    p.add_argument("release", help="release id, alias or latest")
    hub_args(p)
    p.add_argument(
        "--private", action="store_true", help="create the repo private (if push creates it)"
    )
    p.add_argument(
        "--no-replay",
        action="store_true",
        help="leave out replay.json and calibration.json (training and held-out utterances); "
        "the release still loads and predicts",
    )
    p.add_argument(
        "--gate-report",
        help="report.json of `intent-ci check`: its verdict goes on the model card; fail stops the push",
    )
    registry_arg(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser(
        "pull", help="download a release and its missing parents from a Hub repo, verified"
    )
    hub_args(p)
    p.add_argument(
        "--release",
        default="latest",
        help="release id, alias tag (sets the alias locally too), or latest (the highest vN "
        "tag; default)",
    )
    registry_arg(p)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser(
        "verify",
        help="re-hash files and check label maps, adapter configs and lineage (exit 1 on failure)",
    )
    p.add_argument("release", nargs="?", help="release id, alias or latest (default: latest)")
    p.add_argument("--all", action="store_true", help="every release, and LATEST itself")
    p.add_argument(
        "--backbone",
        action="store_true",
        help="also load each backbone and compare its weights with the recorded fingerprint",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    registry_arg(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("rollback", help="point latest back at an existing release (never deletes)")
    p.add_argument("release", help="the release latest should point to, e.g. v2")
    registry_arg(p, writes=True)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser(
        "diff", help="intents added/removed, per-intent metric deltas, config changes"
    )
    p.add_argument("a", help="release id, alias or latest")
    p.add_argument("b", help="release id, alias or latest")
    p.add_argument("--json", action="store_true", help="print JSON")
    registry_arg(p)
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser(
        "retire", help="new release in which the given intents are no longer predicted"
    )
    p.add_argument("intents", nargs="+", metavar="INTENT", help="intent(s) to stop predicting")
    p.add_argument(
        "--from", dest="from_release", default="latest", help="parent release (default: latest)"
    )
    registry_arg(p, writes=True)
    p.set_defaults(func=cmd_retire)

    p = sub.add_parser(
        "alias",
        help="named pointers to releases (e.g. production): set, list, delete",
        description="Aliases name releases (production -> v3). Only `alias set` and `alias delete` "
        "move them; releases and `rollback` move LATEST. Every move is logged in HISTORY.jsonl.",
    )
    alias_sub = p.add_subparsers(
        dest="alias_command", required=True, metavar="ACTION", help="set, list or delete"
    )
    q = alias_sub.add_parser("set", help="point an alias at a release (creates or moves it)")
    q.add_argument("name", help="alias, e.g. production (not latest, not a release id like v3)")
    q.add_argument("release", help="release id, latest or another alias; its release id is stored")
    registry_arg(q, writes=True)
    q = alias_sub.add_parser("list", help="print every alias and its release")
    q.add_argument("--json", action="store_true", help="print JSON (alias -> release)")
    registry_arg(q)
    q = alias_sub.add_parser("delete", help="remove an alias (the release is kept)")
    q.add_argument("name", help="the alias to remove")
    registry_arg(q, writes=True)
    p.set_defaults(func=cmd_alias)

    p = sub.add_parser(
        "calibrate",
        help="new release of an existing one with its out-of-scope threshold set on your data "
        "(trains nothing)",
    )
    p.add_argument("--release", default="latest", help="release to recalibrate (default: latest)")
    p.add_argument(
        "--data",
        required=True,
        help="utterances of the release's intents it never trained on (rows labelled oos: "
        "out-of-scope examples, to measure oos recall)",
    )
    p.add_argument(
        "--target-recall",
        type=float,
        help="share of in-scope utterances to accept (default: the release's oos.target_recall)",
    )
    p.add_argument(
        "--score",
        choices=OOS_SCORES,
        help="out-of-scope score to calibrate (default: the release's oos.score)",
    )
    registry_arg(p, writes=True)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser(
        "serve",
        help="HTTP server for a release: /predict with dynamic batching, follows the registry, "
        "traffic log, Prometheus /metrics",
        description="Serve a release over HTTP until SIGINT/SIGTERM. Endpoints: POST /predict "
        '{"texts": [...]}, GET /healthz, /readyz, /release, /metrics.',
    )
    registry_arg(p)
    _serve_flags(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "discover",
        help="cluster traffic the release rejects or hesitates on into candidate intents",
    )
    p.add_argument("--release", default="latest", help="release that judges the traffic")
    p.add_argument(
        "--traffic",
        required=True,
        nargs="+",
        metavar="PATH",
        help="files or folders: .txt (one utterance per line), CSV/JSONL with a `text` column, "
        "Parquet, or the serve traffic log",
    )
    p.add_argument("--out", required=True, help="folder for <name>.txt candidates and reports")
    p.add_argument("--force", action="store_true", help="replace an earlier discover output")
    p.add_argument("--config", help="YAML with a `discover:` section overriding DiscoverConfig")
    registry_arg(p)
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser(
        "quickstart", help="offline demo: base release from data/, add an intent, print accuracies"
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with base/, new/ and test/ (default: ./data, else the copy in the package)",
    )
    p.add_argument("--intent", default="refund_status", help="which data/new/<intent>.txt to add")
    registry_arg(p)
    p.set_defaults(func=cmd_quickstart)
    return parser


def _check_release_args(args: argparse.Namespace) -> None:
    """Reject path-like or reserved release names before any command touches a file."""
    from intent_ci.registry import check_release_name

    for attr in ("release", "against", "from_release", "a", "b"):
        value = getattr(args, attr, None)
        if isinstance(value, str) and value != "latest":
            check_release_name(value)


def _end_distributed() -> None:
    """Tear down the process group of a `torchrun` / `accelerate launch` run before exiting.

    Left to interpreter shutdown, Gloo's worker threads now and then abort the process
    (SIGABRT, "terminate called without an active exception") after the job has succeeded,
    and the launcher then reports the run as failed.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


DATA_PARALLEL_COMMANDS = frozenset({"init", "add-intent", "update", "quickstart", "discover"})
"""Commands that share their work between the processes of a `torchrun` / `accelerate launch`
job (training under Accelerate; discover's scoring and embedding passes). Every other command
works in one process: launched on several, it runs on the main one and the others exit at once
(two processes each writing a `retire` or `calibrate` release, or each printing an
`eval --json` document, help nobody)."""


def _which_process(rank: int, processes: int) -> str:
    """Empty on the main process; `` (process 2 of 4)`` on the others of a launch, whose error
    (often the main process's again, as every process reads the same input) says whose it is.
    None is silenced: a problem only one process meets (a file missing on one node) must show."""
    return "" if rank == 0 or processes == 1 else f" (process {rank + 1} of {processes})"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    _quiet_libraries()
    rank = int(os.environ.get("RANK", "0"))
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and args.command not in DATA_PARALLEL_COMMANDS:
        if rank != 0:
            return EXIT_OK
        logger.info(
            "%s works in one process: the other %d process(es) of this launch do nothing",
            args.command,
            processes - 1,
        )
    try:
        _check_release_args(args)
        return args.func(args)
    except LatestMovedError as err:
        sys.stderr.write(f"intent-ci: error{_which_process(rank, processes)}: {err}\n")
        return EXIT_FAILED
    except IntentCIError as err:
        sys.stderr.write(f"intent-ci: error{_which_process(rank, processes)}: {err}\n")
        return EXIT_ERROR
    except OSError as err:
        # A file or folder the command could not read or write (permissions, a folder where a
        # file belongs): the user's environment, not a bug, so one line naming it, not a
        # traceback. An OSError that names no file (a network error, say) is not that.
        if err.filename is None:
            raise
        from intent_ci.registry import describe_os_error

        sys.stderr.write(
            f"intent-ci: error{_which_process(rank, processes)}: {err.filename}: "
            f"{describe_os_error(err)}; check that it exists and that you may read (or write) it\n"
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("intent-ci: interrupted; the registry is unchanged\n")
        return 130
    finally:
        _end_distributed()


if __name__ == "__main__":
    sys.exit(main())
