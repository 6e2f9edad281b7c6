"""`intent-ci`: the command line. User mistakes print one clear line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from intent_ci.errors import IntentCIError

EXIT_OK, EXIT_ERROR = 0, 2
logger = logging.getLogger("intent_ci")


def echo(text: str = "") -> None:
    """The CLI's output layer: results go to stdout, logs and progress to stderr."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _quiet_libraries() -> None:
    import datasets
    import transformers

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
    release = init_release(args.data, args.registry, config, eval_data=args.eval_data)
    _report_release(args.registry, release)
    return EXIT_OK


def _read_overrides(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    file = Path(path)
    if not file.is_file():
        raise IntentCIError(f"{file}: config file not found")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise IntentCIError(f"{file}: not valid YAML ({err})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise IntentCIError(
            f"{file}: expected a mapping of sections (data, model, train, distill, replay)"
        )
    return values


def cmd_add_intent(args: argparse.Namespace) -> int:
    from intent_ci.pipeline import add_intents

    release = add_intents(
        args.data,
        args.registry,
        args.from_release,
        overrides=_read_overrides(args.config),
        overrides_source=args.config or "overrides",
        eval_data=args.eval_data,
    )
    _report_release(args.registry, release)
    return EXIT_OK


def _report_release(registry: str, release: str) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from intent_ci.registry import Registry

    manifest = Registry(registry).manifest(release)
    metrics = manifest.get("metrics", {})
    echo(
        f"{release}: {len(manifest['intents'])} intents (+{len(manifest['new_intents'])}), parent {manifest['parent'] or '-'}"
    )
    echo(f"  trained on {metrics.get('train_examples')} examples in {metrics.get('wall_time_s')} s")
    ev = metrics.get("eval")
    if ev:
        echo(
            f"  eval {ev['data']}: accuracy {_fmt(ev['accuracy'])}, old intents {_fmt(ev.get('old_intents_accuracy'))}"
            f", new intents {_fmt(ev.get('new_intents_accuracy'))}"
        )
    echo(f"  written to {Path(registry) / release}")


def cmd_releases(args: argparse.Namespace) -> int:
    from intent_ci.registry import Registry

    registry = Registry(args.registry)
    if not registry.exists():
        raise IntentCIError(f"no registry at {args.registry}; create one with `intent-ci init`")
    names = registry.releases()
    latest = registry.latest()
    rows = []
    for name in names:
        m = registry.manifest(name)
        ev = (m.get("metrics") or {}).get("eval") or {}
        rows.append(
            {
                "release": name,
                "parent": m.get("parent"),
                "intents": len(m["intents"]),
                "new_intents": m.get("new_intents", []),
                "accuracy": ev.get("accuracy"),
                "old_intents_accuracy": ev.get("old_intents_accuracy"),
                "new_intents_accuracy": ev.get("new_intents_accuracy"),
                "created_at": m.get("created_at"),
                "latest": name == latest,
            }
        )
    if args.json:
        echo(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        echo(f"{args.registry}: no releases")
        return EXIT_OK
    echo(f"{'release':<9} {'parent':<7} {'intents':>7}  {'acc':>6} {'old':>6} {'new':>6}  added")
    for r in rows:
        added = ", ".join(r["new_intents"][:4]) + (" …" if len(r["new_intents"]) > 4 else "")
        mark = "*" if r["latest"] else " "
        echo(
            f"{r['release'] + mark:<9} {r['parent'] or '-':<7} {r['intents']:>7}  {_fmt(r['accuracy']):>6} "
            f"{_fmt(r['old_intents_accuracy']):>6} {_fmt(r['new_intents_accuracy']):>6}  {added}"
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
    b = manifest["backbone"]
    echo(f"release   {name}{'  (latest)' if registry.latest() == name else ''}")
    echo(f"parent    {manifest.get('parent') or '-'}")
    echo(f"created   {manifest.get('created_at')}")
    echo(
        f"backbone  {b['name']} ({b['model_type']}, {b['pooling']} pooling) {b['fingerprint'][:23]}…"
    )
    echo(f"intents   {len(manifest['intents'])}: {', '.join(manifest['intents'])}")
    echo(f"added     {', '.join(manifest.get('new_intents', []))}")
    m = manifest.get("metrics") or {}
    echo(
        f"training  {m.get('train_examples')} examples, {m.get('wall_time_s')} s, {m.get('train', {}).get('steps')} steps"
    )
    ev = m.get("eval")
    if ev:
        echo(
            f"eval      {ev['data']}: accuracy {_fmt(ev['accuracy'])}, old {_fmt(ev.get('old_intents_accuracy'))}, "
            f"new {_fmt(ev.get('new_intents_accuracy'))}"
        )
    r = manifest.get("replay", {})
    echo(
        f"replay    {r.get('exemplars')} exemplars for {r.get('intents')} intents, {r.get('bytes_per_intent')} B/intent"
    )
    echo("files     " + ", ".join(f"{k} ({v['bytes']} B)" for k, v in manifest["files"].items()))
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from intent_ci.data import read_examples
    from intent_ci.evaluation import evaluate_release
    from intent_ci.registry import Registry
    from intent_ci.release import IntentClassifier, load_release

    registry = Registry(args.registry)
    release = load_release(registry, args.release)
    classifier = IntentClassifier(release)
    against = None
    if args.against:
        against = IntentClassifier(load_release(registry, args.against, backbone=None))
    data = read_examples(args.data, release.config.data)
    old = against.intents if against is not None else None
    result = evaluate_release(classifier, data, old_intents=old, against=against)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    echo(f"{result['release']} on {args.data} ({result['n']} utterances)")
    echo(f"  accuracy       {_fmt(result['accuracy'])}")
    echo(f"  old intents    {_fmt(result.get('old_intents_accuracy'))} (n={result.get('old_n')})")
    echo(f"  new intents    {_fmt(result.get('new_intents_accuracy'))} (n={result.get('new_n')})")
    if "against" in result:
        a = result["against"]
        echo(
            f"  vs {a['release']} on its {len(a['per_intent_delta'])} intents: {_fmt(a['this_release_accuracy'])} "
            f"vs {_fmt(a['accuracy'])} ({100 * a['delta']:+.1f} points"
            + (f", McNemar p = {a['paired']['p_value']:.2g})" if a.get("paired") else ")")
        )
        worst = sorted(a["per_intent_delta"].items(), key=lambda kv: kv[1])[:3]
        drops = [f"{k} {100 * v:+.1f}" for k, v in worst if v < 0]
        if drops:
            echo("  largest drops  " + ", ".join(drops))
    echo(f"{'intent':<28} {'acc':>6} {'n':>4}")
    for intent, row in result["per_intent"].items():
        echo(f"{intent:<28} {_fmt(row['accuracy']):>6} {row['n']:>4}")
    if args.json:
        echo(f"wrote {args.json}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """The regression gate: 0 pass, 1 regression (see the report), 2 bad input."""
    from intent_ci.gate import (
        EXIT_PASS,
        EXIT_REGRESSION,
        load_gate_config,
        run_check,
        summary_lines,
    )

    report = run_check(
        args.registry,
        args.candidate,
        args.data,
        baseline=args.baseline,
        golden=args.golden,
        config=load_gate_config(args.config),
        report_dir=args.report_dir,
    )
    for line in summary_lines(report):
        echo(line)
    echo(f"wrote {', '.join(report['files'])}")
    return EXIT_PASS if report["verdict"] == "pass" else EXIT_REGRESSION


def cmd_predict(args: argparse.Namespace) -> int:
    from intent_ci.data import read_texts
    from intent_ci.release import IntentClassifier

    classifier = IntentClassifier.load(args.registry, args.release)
    texts = list(args.text)
    if args.input:
        texts += read_texts(args.input, classifier.release.config.data.max_chars)
    if not texts:
        raise IntentCIError("nothing to classify: give utterances as arguments or --input FILE")
    predictions = classifier.predict(texts, batch_size=args.batch_size)
    if args.json:
        for text, p in zip(texts, predictions, strict=True):
            echo(
                json.dumps({"text": text, "intent": p.label, "confidence": round(p.confidence, 4)})
            )
        return EXIT_OK
    for text, p in zip(texts, predictions, strict=True):
        echo(f"{p.label:<24} {p.confidence:.3f}  {text}")
    return EXIT_OK


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Base release on data/base, add data/new/refund_status.txt, print old/new accuracy."""
    from intent_ci.config import PACKAGED_MINILM, apply_overrides, load_config
    from intent_ci.data import INTENT, IntentData, read_examples
    from intent_ci.evaluation import evaluate_release
    from intent_ci.pipeline import add_intents, init_release
    from intent_ci.registry import Registry
    from intent_ci.release import IntentClassifier

    data_dir = Path(args.data_dir)
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
    echo(f"[1/3] base release from {base} on {PACKAGED_MINILM} (offline)")
    v1 = init_release(base, registry, config, eval_data=None)
    echo(f"[2/3] add intent {args.intent!r} from {new}")
    v2 = add_intents(new, registry, v1)
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


# ---- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="intent-ci",
        description="Add intents to a deployed intent classifier as cheap, reviewable, reversible releases.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def registry_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--registry", default="adapters", help="registry folder (default: adapters)")

    p = sub.add_parser("init", help="train the first release (v1) from labelled utterances")
    p.add_argument(
        "--data",
        required=True,
        help="CSV/JSONL with text,intent columns, or a folder of <intent>.txt",
    )
    p.add_argument(
        "--config", help="YAML overriding config fields (model/train/distill/replay/data)"
    )
    p.add_argument(
        "--backbone",
        help="shortcut for model.backbone: Hub id, local folder or packaged:all-MiniLM-L6-v2",
    )
    p.add_argument(
        "--eval-data", help="held-out utterances scored after training and stored in the manifest"
    )
    registry_arg(p)
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
    p.add_argument("--config", help="YAML overriding train/distill/replay/data fields")
    p.add_argument(
        "--eval-data", help="held-out utterances of old and new intents, scored after training"
    )
    registry_arg(p)
    p.set_defaults(func=cmd_add_intent)

    p = sub.add_parser("releases", help="list releases: lineage, intents and key metrics")
    p.add_argument("--json", action="store_true", help="print JSON")
    registry_arg(p)
    p.set_defaults(func=cmd_releases)

    p = sub.add_parser("show", help="show one release's manifest")
    p.add_argument("release", help="release name or latest")
    p.add_argument("--json", action="store_true", help="print the raw manifest")
    registry_arg(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "eval", help="per-intent accuracy, old vs new intents, deltas against another release"
    )
    p.add_argument("--release", default="latest")
    p.add_argument("--data", required=True, help="labelled test utterances")
    p.add_argument("--against", help="release to compare with (usually the parent)")
    p.add_argument("--json", help="write the full result to this JSON file")
    registry_arg(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "check",
        help="regression gate: candidate vs baseline on the same utterances; exit 0 pass, 1 regression, 2 bad input",
    )
    p.add_argument("--candidate", required=True, help="release to check (name or latest)")
    p.add_argument("--baseline", help="release to compare with (default: the candidate's parent)")
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
    p.add_argument("--release", default="latest")
    p.add_argument("--input", help="file with one utterance per line (or JSONL with a text field)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    registry_arg(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "quickstart", help="offline demo: base release from data/, add an intent, print accuracies"
    )
    p.add_argument(
        "--data-dir", default="data", help="folder with base/, new/ and test/ (default: data)"
    )
    p.add_argument("--intent", default="refund_status", help="which data/new/<intent>.txt to add")
    registry_arg(p)
    p.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    _quiet_libraries()
    try:
        return args.func(args)
    except IntentCIError as err:
        sys.stderr.write(f"intent-ci: error: {err}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("intent-ci: interrupted; the registry is unchanged\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
