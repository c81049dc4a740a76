"""``ftops``: the command line for things that happen outside the DAGs.

    ftops simulate --rows 3000 --seed 0      write realistic interaction logs into the warehouse
    ftops build-base-model                   build the small local base model under FTOPS_HOME/models
    ftops summary                            datasets, model versions, metrics and decisions so far
    ftops status [--json]                    the dashboard: fine-tunes, champions and canaries, decisions
    ftops mcp                                a Model Context Protocol server (stdio) for an assistant
    ftops serve [--host H --port P]          the OpenAI-compatible gateway over the registry's champions/canaries
    ftops simulate-traffic --requests 300    simulated users calling the gateway and rating its answers
    ftops simulate-evalset --out DIR         the simulator's labelled eval-set files (its known right answers)
    ftops import-logs FILE.jsonl             load interaction rows logged by an application itself
    ftops spool [--json]                     the gateway's log spool: rows waiting, rejected rows and why
    ftops hash-api-key < key.txt             the SHA-256 digest of a key, for FTOPS_API_KEY_HASHES
    ftops erase --user-id-file - [--purge]   remove a user's data (the id on stdin) from everything FT-Ops made
    ftops evalset import FILE --task-type T  a labelled file as the task type's next frozen eval-set version
    ftops evalset list                       eval-set versions and their rows by source
    ftops judge calibrate --task-type T      the LLM judge's agreement with the latest eval set (kappa), recorded
    ftops register-upstream --task-type T --connection C --model M --price-input P --price-output Q [--deploy]
                                             an OpenAI-compatible model as a version the gateway serves, priced
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ftops.cli.common import engine_of as _engine
from ftops.cli.common import task_type_arg as _task_type
from ftops.cli.common import warehouse_url
from ftops.core.config import LOCAL_BASE_MODEL, load_config, resolve_base_model
from ftops.core.text import printable

log = logging.getLogger("ftops")


def _simulate(args: argparse.Namespace) -> int:
    from ftops_dev.simulate import generate_interactions

    from ftops.warehouse.engines import create_engine
    from ftops.warehouse.schema import ensure_schema, insert_interactions

    cfg = load_config()
    engine = create_engine(warehouse_url(args.warehouse_url))
    ensure_schema(engine, cfg.interactions_table)
    extra: dict[str, Any] = {"task_types": args.task_types} if args.task_types else {}
    if args.correction_share is not None:
        extra["correction_share"] = args.correction_share
    rows = generate_interactions(args.rows, seed=args.seed, drift_share=args.drift_share,
                                 drift_from_day=args.drift_from_day, **extra)
    new = insert_interactions(engine, rows, cfg.interactions_table)
    log.info("Wrote %d new interaction rows (%d generated, seed %d) to %s", new, len(rows), args.seed,
             engine.url.render_as_string(hide_password=True))  # fmt: skip
    return 0


def _build_base_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ftops.training.basemodel import build_base_model

    out = Path(resolve_base_model(LOCAL_BASE_MODEL))
    build_base_model(out, force=args.force)
    log.info("Base model ready at %s", out)
    return 0


def _summary(args: argparse.Namespace) -> int:
    from ftops.pipeline.summary import summary_text

    sys.stdout.write(summary_text(load_config(), _engine(warehouse_url())))
    return 0


def _status(args: argparse.Namespace) -> int:
    import json

    from ftops.core.airflow_api import AirflowAPI
    from ftops.pipeline.status import collect_status
    from ftops.pipeline.status_text import render_status

    _fail_fast()
    logging.getLogger().setLevel(logging.WARNING)  # the dashboard on stdout; stores' chatter only when it matters
    engine = _engine(warehouse_url(args.warehouse_url))
    status = collect_status(load_config(), engine, AirflowAPI(), days=args.days, decisions=args.decisions)
    sys.stdout.write(json.dumps(status, indent=2) + "\n" if args.json else render_status(status))
    return 0 if status["complete"] else 1  # 1: a source was unreachable, so what is shown is partial


def _mcp(args: argparse.Namespace) -> int:
    from ftops.mcp_server import build_server

    _fail_fast()
    build_server(load_config(), warehouse_url(args.warehouse_url)).run()  # stdio until the client hangs up
    return 0


def _fail_fast(timeout_s: float = 10) -> None:
    """An unreachable MLflow server answers in seconds, not after MLflow's minutes of retries (unless set)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", f"{timeout_s:g}")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ftops.serving.gateway import LOOPBACK, build_gateway, create_app, parse_key_hashes

    cfg = load_config()
    s = cfg.serving
    hashes = parse_key_hashes(os.environ.get(s.api_key_hashes_env))
    host, port = args.host or s.host, args.port or s.port
    if host not in LOOPBACK and not hashes:
        if not args.insecure_no_auth:
            log.error("Refusing to serve on %s without API keys: anyone who reaches this port could call the "
                      "models and steer the canary. Set %s (`ftops hash-api-key` makes an entry), bind 127.0.0.1, "
                      "or pass --insecure-no-auth to serve the network without keys anyway", host,
                      s.api_key_hashes_env)  # fmt: skip
            return 2
        log.warning("Serving on %s without API keys (--insecure-no-auth): anyone who reaches this port can call "
                    "the models", host)  # fmt: skip
    _fail_fast(s.registry_timeout_s)  # a slow registry delays one background read by seconds, not minutes
    api_client = None
    if key := os.environ.get("FTOPS_OPENAI_API_KEY"):
        from functools import partial

        from ftops.core.openai_api import make_client

        base_url = args.openai_base_url or os.environ.get("FTOPS_OPENAI_BASE_URL")
        api_client = partial(make_client, key, base_url, key_source="FTOPS_OPENAI_API_KEY")
    engine = _engine(warehouse_url(args.warehouse_url))  # pre-ping: survives warehouse restarts
    gateway = build_gateway(s, engine, cfg.interactions_table, api_client=api_client, key_hashes=hashes,
                            cost_per_hour=cfg.gate.compute_cost_per_hour)  # fmt: skip
    log.info("FT-Ops gateway on http://%s:%s/v1 (%s API keys configured)", host, port, len(hashes))
    uvicorn.run(create_app(gateway), host=host, port=port, log_level="info", access_log=args.access_log)
    return 0


def _import_logs(args: argparse.Namespace) -> int:
    from ftops.serving.log_import import import_jsonl
    from ftops.warehouse.schema import ensure_schema

    cfg = load_config()
    engine = _engine(warehouse_url(args.warehouse_url))
    ensure_schema(engine, cfg.interactions_table)
    result = import_jsonl(args.file, engine, cfg.interactions_table)
    print(f"{args.file}: {result.lines} lines, {result.inserted} inserted, {result.duplicates} duplicates, "
          f"{len(result.rejected)} rejected")  # fmt: skip
    for line, reason in result.rejected[:20]:
        print(f"  line {line}: {printable(reason, keep_breaks=False)}")
    return 1 if result.rejected else 0


def _erase(args: argparse.Namespace) -> int:
    import contextlib
    import json

    from ftops.core.userkey import read_user_id
    from ftops.pipeline.erase import erase_user

    cfg = load_config()
    engine = _engine(warehouse_url(args.warehouse_url))
    if args.user_id is not None:
        print("ftops erase: --user-id shows the id in `ps` and the shell's history; it is deprecated: use "
              "--user-id-file - and give the id on standard input", file=sys.stderr)  # fmt: skip
    try:
        user_id = str(args.user_id) if args.user_id is not None else read_user_id(args.user_id_file)
        with contextlib.redirect_stdout(sys.stderr):  # DVC's gc prints progress: stdout carries only the summary
            summary = erase_user(engine, cfg, user_id, request_key=args.request_key, purge=args.purge)
    except (LookupError, ValueError, OSError) as exc:
        print(f"ftops erase: {printable(str(exc))}", file=sys.stderr)
        return 2
    print(printable(json.dumps(summary, indent=2, sort_keys=True)))
    if summary["log_rows"]:
        print(f"Note: the {summary['log_rows']} rows of {summary['user_key']} in the log table "
              f"{cfg.interactions_table!r} are marked, not deleted: FT-Ops never reads them again, but deleting "
              "them from the application's own log is its owner's job.", file=sys.stderr)  # fmt: skip
    return 0


def _spool(args: argparse.Namespace) -> int:
    import json

    from ftops.serving.interaction_log import default_spool_dir
    from ftops.serving.spool_rows import read_spool

    state = read_spool(args.spool_dir or default_spool_dir(load_config().interactions_table))
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"{state['spool_dir']}: {state['spooled_rows']} rows spooled ({state['spool_bytes']} bytes, "
          f"{state['segments']} segments); {len(state['rejected'])} rejected in {state['rejected_file']}")  # fmt: skip
    for r in state["rejected"]:
        print(f"  {r['id'] or '(unreadable line)'}  {r['rejected_at'] or '?'}  {r['reason']}")
    return 0


def _hash_api_key(args: argparse.Namespace) -> int:
    from ftops.serving.gateway import hash_api_key

    key = sys.stdin.readline().strip()
    if not key:
        print("no key on standard input", file=sys.stderr)
        return 2
    print(hash_api_key(key))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="ftops", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="write simulated interaction logs into the warehouse")
    sim.add_argument("--rows", type=int, default=3000)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--task-types", nargs="*", default=None, type=_task_type,
                     help="default: sentiment city_extraction unit_conversion; also support_reply (free text)")
    sim.add_argument("--drift-share", type=float, default=0.0,
                     help="from --drift-from-day on, this share of the calls asks about entities the base model "
                     "never saw (new cities, a new sentiment phrasing, larger numbers); default 0: no drift")
    sim.add_argument("--drift-from-day", type=int, default=2,
                     help="first day with drift, counted from the first of the 30 simulated days (default 2)")
    sim.add_argument("--correction-share", type=float, default=None,
                     help="share of the wrong answers that get a user's correction (default: the simulator's, 0.15)")
    sim.add_argument("--warehouse-url", default=None, help="SQLAlchemy URL (default: see warehouse_url())")
    sim.set_defaults(func=_simulate)
    base = sub.add_parser("build-base-model", help="build the small local base model (once)")
    base.add_argument("--force", action="store_true", help="rebuild even if it exists")
    base.set_defaults(func=_build_base_model)
    sub.add_parser("summary", help="print datasets, models, metrics and decisions").set_defaults(func=_summary)
    status = sub.add_parser("status", help="the dashboard; exit code 1 when Airflow, MLflow or the warehouse "
                            "could not be reached (the rest is still shown)")  # fmt: skip
    status.add_argument("--json", action="store_true", help="print the data as JSON (what the MCP status tool returns)")
    status.add_argument("--days", type=int, default=7, help="how far back recent fine-tunes go (default 7)")
    status.add_argument("--decisions", type=int, default=10, help="how many of the latest decisions (default 10)")
    status.add_argument("--warehouse-url", default=None, help="SQLAlchemy URL (default: see warehouse_url())")
    status.set_defaults(func=_status)
    mcp = sub.add_parser("mcp", help="Model Context Protocol server over stdio (status, explain_model, "
                         "list_decisions, request_training, request_rollback, erase_user)")  # fmt: skip
    mcp.add_argument("--warehouse-url", default=None, help="SQLAlchemy URL (default: see warehouse_url())")
    mcp.set_defaults(func=_mcp)
    serve = sub.add_parser("serve", help="the OpenAI-compatible gateway (champion + canary, every call logged)")
    serve.add_argument("--host", default=None, help="bind address (default serving.host: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default serving.port: 8000)")
    serve.add_argument("--warehouse-url", default=None, help="SQLAlchemy URL (default: see warehouse_url())")
    serve.add_argument("--openai-base-url", default=None,
                       help="OpenAI-compatible endpoint for API-trained versions (key in FTOPS_OPENAI_API_KEY)")
    serve.add_argument("--access-log", action="store_true", help="log one line per request (never headers)")
    serve.add_argument("--insecure-no-auth", action="store_true",
                       help="allow a non-loopback --host without API keys (FTOPS_API_KEY_HASHES unset)")  # fmt: skip
    serve.set_defaults(func=_serve)
    from ftops_dev.commands import add_commands  # simulate-traffic, simulate-evalset: the simulator's own

    add_commands(sub, task_type=_task_type)
    imp = sub.add_parser("import-logs", help="load a JSONL file of interaction rows into the warehouse")
    imp.add_argument("file")
    imp.add_argument("--warehouse-url", default=None, help="SQLAlchemy URL (default: see warehouse_url())")
    imp.set_defaults(func=_import_logs)
    spool = sub.add_parser("spool", help="the gateway's log spool: rows waiting, and each rejected row's id, time "
                           "and reason (never its text)")  # fmt: skip
    spool.add_argument("--spool-dir", default=None, help="default FTOPS_HOME/spool/<interactions table>")
    spool.add_argument("--json", action="store_true")
    spool.set_defaults(func=_spool)
    sub.add_parser("hash-api-key", help="SHA-256 digest of the key on standard input").set_defaults(func=_hash_api_key)
    erase = sub.add_parser("erase", help="remove a user's data from FT-Ops' tables and latest datasets (re-runnable)")
    who = erase.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id-file", default=None, help="file holding the user id as the log holds it, one "
                     "line; - reads standard input (the id never shows in ps or the shell history)")  # fmt: skip
    who.add_argument("--user-id", default=None, help=argparse.SUPPRESS)  # deprecated: visible in ps
    erase.add_argument("--purge", action="store_true", help="also delete the superseded dataset versions that "
                       "held the user's examples, from the registry and its remote, and their DVC content")  # fmt: skip
    erase.add_argument("--request-key", default=None, help="names the request, e.g. a ticket id "
                       "(default erasure-<user key>)")  # fmt: skip
    erase.add_argument("--warehouse-url", default=None, help="SQLAlchemy URL (default: see warehouse_url())")
    erase.set_defaults(func=_erase)
    from ftops.cli import models, yardstick

    yardstick.add_commands(sub)  # evalset, judge
    models.add_commands(sub)  # register-upstream
    args = parser.parse_args(argv)
    return int(args.func(args))

