"""The simulator's own commands, mounted under ``ftops`` by :mod:`ftops.cli` (they open no FT-Ops store):

ftops simulate-traffic --requests 300    simulated users calling the gateway and rating its answers
ftops simulate-evalset --out DIR         the simulator's labelled eval-set files, one JSONL per task type
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ftops.core.text import printable
from ftops_dev.evalsets import DEFAULT_ROWS, DEFAULT_SEED


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], *, task_type: Callable[[str], str]) -> None:
    """Add the simulator's commands to the ``ftops`` parser.

    Args:
        sub: The ``ftops`` subcommand parsers.
        task_type: The argument type that checks a task type name (as the other commands do).
    """
    traffic = sub.add_parser("simulate-traffic", help="simulated users calling the gateway and rating answers")
    traffic.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    traffic.add_argument("--requests", type=int, default=300)
    traffic.add_argument("--concurrency", type=int, default=4)
    traffic.add_argument("--seed", type=int, default=0)
    traffic.add_argument("--task-types", nargs="*", default=None, type=task_type)
    traffic.add_argument("--drift-share", type=float, default=0.0,
                         help="share of the calls about entities the first champion never saw (default 0)")
    traffic.add_argument("--correction-share", type=float, default=0.0,
                         help="share of the rated wrong answers whose feedback types the right answer (default 0)")
    traffic.add_argument("--conversation-share", type=float, default=0.0,
                         help="share of the calls sent with a system prompt and an earlier exchange (default 0)")
    traffic.set_defaults(func=_simulate_traffic)
    evalset = sub.add_parser("simulate-evalset", help="the simulator's labelled rows (prompts and known right "
                             "answers) covering every entity and template, one <task type>.jsonl each, for "
                             "`ftops evalset import FILE --task-type T`")  # fmt: skip
    evalset.add_argument("--out", required=True, help="folder for the files (created; same-named files replaced)")
    evalset.add_argument("--task-types", nargs="*", default=None, type=task_type,
                         help="default: every simulated task type")  # fmt: skip
    evalset.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"rows per task type (default {DEFAULT_ROWS})")
    evalset.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"(default {DEFAULT_SEED})")
    evalset.add_argument("--drift-share", type=float, default=0.0,
                         help="share of the rows that ask about drifted entities (new cities, a new sentiment "
                         "phrasing, larger numbers), after the rows of the set without drift (default 0)")  # fmt: skip
    evalset.set_defaults(func=_simulate_evalset)
    judge = sub.add_parser("simulate-judge", help="a stand-in LLM judge (OpenAI-compatible, answers from the "
                           "simulator's known truth) for the demo's evaluation.judge connection")  # fmt: skip
    judge.add_argument("--host", default="127.0.0.1")
    judge.add_argument("--port", type=int, default=8090)
    judge.add_argument("--accuracy", type=float, default=0.95, help="share of the simulator's prompts answered right")
    judge.add_argument("--latency-s", type=float, default=0.0, help="seconds each answer takes (a large model's)")
    judge.set_defaults(func=_simulate_judge)


def _simulate_traffic(args: argparse.Namespace) -> int:
    from ftops_dev.traffic import simulate_traffic

    extra = {"task_types": args.task_types} if args.task_types else {}
    report = simulate_traffic(args.base_url, api_key=os.environ.get("FTOPS_API_KEY", "ftops-local"),
                              requests=args.requests, concurrency=args.concurrency, seed=args.seed,
                              drift_share=args.drift_share, correction_share=args.correction_share,
                              conversation_share=args.conversation_share, **extra)  # fmt: skip
    print(f"{sum(v.requests for v in report.versions.values())} calls in {report.seconds:.1f} s")
    print(printable("\n".join(report.lines())))
    return 1 if any(name.startswith("error:") for name in report.versions) else 0


def _simulate_evalset(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ftops_dev.evalsets import write_labelled

    extra = {"task_types": args.task_types} if args.task_types else {}
    try:
        written = write_labelled(Path(args.out), n=args.rows, seed=args.seed, drift_share=args.drift_share, **extra)
    except ValueError as exc:  # an unknown task type, too few rows to cover every value, a share out of [0, 1]
        print(f"ftops simulate-evalset: {exc}", file=sys.stderr)
        return 2
    for task_type, path in written.items():
        with path.open(encoding="utf-8") as f:
            rows = sum(1 for _ in f)
        print(f"{path}: {rows} rows ({task_type}; import with `ftops evalset import {path} --task-type {task_type}`)")
    return 0


def _simulate_judge(args: argparse.Namespace) -> int:
    from ftops_dev.teacher_standin import TeacherStandin

    # one stand-in answers judge requests as the judge, any other chat request as the teacher
    print(f"Stand-in judge (and teacher) on http://{args.host}:{args.port}/v1 (POST /v1/chat/completions)", flush=True)
    TeacherStandin(accuracy=args.accuracy, latency_s=args.latency_s, host=args.host, port=args.port).serve_forever()
    return 0
