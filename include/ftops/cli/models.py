"""``ftops register-upstream``: an existing OpenAI-compatible model as a version the gateway serves;
``ftops trust-teacher``: a version whose unrated answers curation takes as targets."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ftops.cli.common import task_type_arg
from ftops.core.text import printable


def add_commands(sub: Any) -> None:
    """Add ``register-upstream`` and ``trust-teacher`` to the ``ftops`` sub-command parsers."""
    up = sub.add_parser("register-upstream", help="register a model behind an OpenAI-compatible connection (a hosted "
                        "API, vLLM, Ollama) as a version of a task type, with its prices; --deploy serves it")  # fmt: skip
    up.add_argument("--task-type", required=True, type=task_type_arg)
    up.add_argument("--connection", required=True, help="Airflow connection id holding the base URL (host) and the "
                    "key (password); outside Airflow the gateway reads AIRFLOW_CONN_<ID> as JSON")  # fmt: skip
    up.add_argument("--model", required=True, help="the model's name at that endpoint")
    up.add_argument("--price-input", required=True, type=float, help="price per million input tokens")
    up.add_argument("--price-output", required=True, type=float, help="price per million output tokens")
    up.add_argument("--deploy", action="store_true", help="put it into service: champion when the task type has "
                    "none, else canary at --traffic-percent (what a candidate that passed the gate gets)")  # fmt: skip
    up.add_argument("--traffic-percent", type=int, default=None, help="canary share (default canary.traffic_percent)")
    up.add_argument("--trusted-teacher", action="store_true", help="curation takes its answers as training targets "
                    "without a user's rating (distillation; low-rated answers are still dropped)")  # fmt: skip
    up.set_defaults(func=_register_upstream)
    trust = sub.add_parser("trust-teacher", help="mark a registered version as a trusted teacher (its unrated "
                           "answers become training targets), or --off to unmark it")  # fmt: skip
    trust.add_argument("--task-type", required=True, type=task_type_arg)
    trust.add_argument("--version", required=True)
    trust.add_argument("--off", action="store_true")
    trust.set_defaults(func=_trust_teacher)


def _register_upstream(args: argparse.Namespace) -> int:
    from ftops.core.config import load_config
    from ftops.deployment import rollout
    from ftops.registry.models import RegistryUnavailableError
    from ftops.registry.upstream import register_upstream, set_trusted

    try:
        version = register_upstream(args.task_type, args.connection, args.model, args.price_input, args.price_output)
        out: dict[str, Any] = {"task_type": args.task_type, "version": version, "model": args.model,
                               "connection": args.connection}  # fmt: skip
        if args.trusted_teacher:
            set_trusted(args.task_type, version)
            out["trusted_teacher"] = True
        if args.deploy:
            percent = load_config().canary.traffic_percent if args.traffic_percent is None else args.traffic_percent
            if not 1 <= percent <= 100:
                raise ValueError(f"--traffic-percent must be 1-100, got {percent}")
            out["deployed_as"] = rollout.deploy(args.task_type, version, percent)
    except (ValueError, RegistryUnavailableError) as exc:
        print(f"ftops register-upstream: {printable(str(exc))}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


def _trust_teacher(args: argparse.Namespace) -> int:
    from ftops.registry.models import RegistryUnavailableError
    from ftops.registry.upstream import set_trusted

    try:
        set_trusted(args.task_type, args.version, not args.off)
    except (ValueError, RegistryUnavailableError) as exc:
        print(f"ftops trust-teacher: {printable(str(exc))}", file=sys.stderr)
        return 2
    print(json.dumps({"task_type": args.task_type, "version": args.version, "trusted_teacher": not args.off}))
    return 0
