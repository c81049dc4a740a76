"""``ftops register-upstream``: an existing OpenAI-compatible model as a version the gateway serves."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ftops.cli.common import task_type_arg
from ftops.core.text import printable


def add_commands(sub: Any) -> None:
    """Add ``register-upstream`` to the ``ftops`` sub-command parsers."""
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
    up.set_defaults(func=_register_upstream)


def _register_upstream(args: argparse.Namespace) -> int:
    from ftops.core.config import load_config
    from ftops.deployment import rollout
    from ftops.registry.models import RegistryUnavailableError
    from ftops.registry.upstream import register_upstream

    try:
        version = register_upstream(args.task_type, args.connection, args.model, args.price_input, args.price_output)
        out: dict[str, Any] = {"task_type": args.task_type, "version": version, "model": args.model,
                               "connection": args.connection}  # fmt: skip
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
