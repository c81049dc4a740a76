"""``ftops evalset`` and ``ftops judge``: the commands about the yardstick models are compared on."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ftops.cli.common import engine_of, task_type_arg, warehouse_url
from ftops.core.config import load_config
from ftops.core.text import printable


def add_commands(sub: Any) -> None:
    """Add ``evalset`` and ``judge`` to the ``ftops`` sub-command parsers."""
    evalset = sub.add_parser("evalset", help="frozen eval sets: import a labelled file as a new version; list them")
    evalset.add_argument("action", choices=("import", "list"))
    evalset.add_argument("file", nargs="?", help='JSON lines {"prompt"|"messages", "reference"}; - reads stdin')
    evalset.add_argument("--task-type", type=task_type_arg, default=None)
    evalset.add_argument("--warehouse-url", default=None, help="SQLAlchemy URL (default: see warehouse_url())")
    evalset.set_defaults(func=_evalset)
    judge = sub.add_parser("judge", help="the LLM judge of free-text task types").add_subparsers(
        dest="judge", required=True)  # fmt: skip
    calibrate = judge.add_parser("calibrate", help="measure the judge's agreement (Cohen's kappa) with the latest eval "
                                 "set's labels and record it on ftops-<task type> (exit 1: below min_kappa)")  # fmt: skip
    calibrate.add_argument("--task-type", required=True, type=task_type_arg)
    calibrate.set_defaults(func=_judge_calibrate)


def _evalset(args: argparse.Namespace) -> int:
    import json

    cfg = load_config()
    if args.action == "import":
        from ftops.pipeline.evalsets import import_evalset, read_lines

        if not args.file or not args.task_type:
            print("ftops evalset import: give FILE and --task-type", file=sys.stderr)
            return 2
        try:
            lines = read_lines(args.file)
            summary = import_evalset(cfg, engine_of(warehouse_url(args.warehouse_url)), args.task_type, lines,
                                     source_name=args.file)  # fmt: skip
        except (OSError, ValueError, RuntimeError) as exc:
            print(f"ftops evalset import: {printable(str(exc))}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=2))
        for line, reason in ((r["line"], r["reason"]) for r in summary["rejected"]):
            print(f"  line {line}: rejected: {printable(reason)}", file=sys.stderr)
        return 0
    from collections import Counter

    from ftops.datasets.evalsets import EvalSets
    from ftops.pipeline.common import dataset_registry

    datasets = dataset_registry(cfg)
    evalsets = EvalSets(datasets)
    for task_type in [args.task_type] if args.task_type else datasets.task_types():
        versions = evalsets.versions(task_type)
        if not versions:
            print(f"{task_type}: no eval set (ftops evalset import FILE --task-type {task_type})")
        for v in versions:
            sources = Counter(r.get("source", "?") for r in evalsets.read(v))
            print(f"{v.tag}: {sum(sources.values())} rows ({', '.join(f'{k} {n}' for k, n in sorted(sources.items()))})")
    return 0


def _judge_calibrate(args: argparse.Namespace) -> int:
    from ftops.pipeline.judge import calibrate_from_env

    code, text = calibrate_from_env(load_config(), args.task_type)
    print(printable(text), file=sys.stderr if code == 2 else sys.stdout)
    return code
