"""``ftops``: the command line for things that happen outside the DAGs.

    ftops simulate --rows 3000 --seed 0      write realistic interaction logs into the warehouse
    ftops build-base-model                   build the small local base model under FTOPS_HOME/models
    ftops summary                            datasets, model versions, metrics and decisions so far
    ftops status [--json]                    the dashboard: fine-tunes, champions and canaries, decisions
    ftops mcp                                a Model Context Protocol server (stdio) for an assistant
    ftops serve [--host H --port P]          the OpenAI-compatible gateway over the registry's champions/canaries
    ftops simulate-traffic --requests 300    simulated users calling the gateway and rating its answers
    ftops import-logs FILE.jsonl             load interaction rows logged by an application itself
    ftops spool [--json]                     the gateway's log spool: rows waiting, rejected rows and why
    ftops hash-api-key < key.txt             the SHA-256 digest of a key, for FTOPS_API_KEY_HASHES
    ftops erase --user-id-file - [--purge]   remove a user's data (the id on stdin) from everything FT-Ops made
    ftops judge calibrate --task-type T      the LLM judge's agreement with the latest eval set (kappa), recorded
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ftops.core.config import LOCAL_BASE_MODEL, ftops_home, load_config, resolve_base_model
from ftops.core.names import check_task_type
from ftops.core.text import printable

log = logging.getLogger("ftops")


def warehouse_url(explicit: str | None = None) -> str:
    """The warehouse as a SQLAlchemy URL.

    Order: ``--warehouse-url``, ``$FTOPS_WAREHOUSE_URL``, the Airflow connection URI in
    ``$AIRFLOW_CONN_FTOPS_WAREHOUSE`` (so the CLI and the DAGs see the same warehouse), else the embedded
    SQLite file under ``FTOPS_HOME``, exactly as the DAGs default.
    """
    url = explicit or os.environ.get("FTOPS_WAREHOUSE_URL") or os.environ.get("AIRFLOW_CONN_FTOPS_WAREHOUSE")
    if not url:
        from ftops.core.files import private_file

        return f"sqlite:///{private_file(ftops_home() / 'warehouse.db')}"  # 0600 in a 0700 FTOPS_HOME: it holds prompts
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    return url


def _simulate(args: argparse.Namespace) -> int:
    from ftops_dev.simulate import generate_interactions

    from ftops.warehouse.engines import create_engine
    from ftops.warehouse.schema import ensure_schema, insert_interactions

    cfg = load_config()
    engine = create_engine(warehouse_url(args.warehouse_url))
    ensure_schema(engine, cfg.interactions_table)
    extra = {"task_types": args.task_types} if args.task_types else {}
    rows = generate_interactions(args.rows, seed=args.seed, **extra)
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
    from ftops.pipeline.common import dataset_registry
    from ftops.registry import models as registry

    cfg = load_config()
    datasets = dataset_registry(cfg)
    lines = ["", "FT-Ops summary", "=============="]
    for task_type in datasets.task_types():
        versions = datasets.versions(task_type)
        latest = versions[-1]
        meta = datasets.read_metadata(latest)
        lines.append(f"\n[{task_type}] dataset {latest.tag}: {meta['train_rows']} train / {meta['test_rows']} test "
                     f"(content {latest.content_hash[:12]}, {len(versions)} version(s))")  # fmt: skip
        accounting = meta.get("accounting") or {}  # a version published by hand may carry no curation record
        lines.append("  accounting of its run: " + (", ".join(f"{k}={v}" for k, v in accounting.items()) or "none"))
        lines.append(f"  logs up to {meta.get('window', {}).get('until', '?')}; diversity "
                     f"{meta.get('diversity_score', 0):.3f}; scrubbed {meta.get('scrubbed') or 'nothing'}")  # fmt: skip
        client = registry.client()
        for listed in sorted(registry.versions(task_type), key=lambda m: int(m.version)):
            mv = client.get_model_version(listed.name, listed.version)  # search results carry no aliases
            t = mv.tags
            aliases = ",".join(mv.aliases or []) or "no alias"
            lines.append(f"  model {registry.model_name(task_type)} v{mv.version} [{aliases}] "
                         f"on {t.get('dataset_version')}: decision {t.get('decision', '?').upper()}")  # fmt: skip
            for metric in ("accuracy", "perplexity", "bleu", "rouge_l", "latency_p50_ms"):
                if f"metric.{metric}" in t:
                    lines.append(f"    {metric:15s} {float(t[f'metric.{metric}']):10.3f}  vs baseline "
                                 f"{float(t.get(f'baseline.{metric}', 'nan')):10.3f}  ({t.get('baseline')})")  # fmt: skip
            if "trivial.accuracy" in t:
                lines.append(f"    {'trivial':15s} {float(t['trivial.accuracy']):10.3f}  ({t.get('trivial_baseline')})")
            lines.append("    why: " + t.get("reason", "").replace("; ", "\n         "))
            if t.get("deployment") and t.get("decision", "").lower() != "archive":
                live = [f"{k.removesuffix('_reason')}: {t[k]}" for k in ("ramp_reason", "promote_reason", "rollback_reason")
                        if t.get(k)]  # fmt: skip
                lines.append(f"    in service: {t['deployment']} (traffic {t.get('traffic_percent', '?')} %)"
                             + "".join(f"\n      last {x}" for x in live))  # fmt: skip
            lines += _answers(str(mv.run_id))
        lines += _live_lines(cfg.interactions_table, task_type)
    sys.stdout.write(printable("\n".join(lines) + "\n"))  # tags and answers are untrusted text
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


def _engine(url: str):  # noqa: ANN202 - sqlalchemy.Engine, imported lazily
    from ftops.warehouse.engines import create_engine

    return create_engine(url, pool_pre_ping=True)  # hides parameters; a 5 s PostgreSQL connect timeout


def _live_lines(table: str, task_type: str) -> list[str]:
    """What users saw of each served version of a task type (rows the gateway logged), oldest version first."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from ftops.registry import models as registry
    from ftops.warehouse.schema import log_tables
    from ftops.warehouse.state import live_metrics

    engine = _engine(warehouse_url())
    _, t, _, _ = log_tables(table)
    prefix = f"{registry.model_name(task_type)}/"
    with engine.connect() as conn:
        served = sorted(conn.scalars(sa.select(t.c.model_version).distinct().where(
            t.c.task_type == task_type, t.c.model_version.startswith(prefix, autoescape=True))),
            key=lambda v: int(v.rsplit("/", 1)[1]) if v.rsplit("/", 1)[1].isdigit() else 0)  # fmt: skip
    if not served:
        return ["  live traffic: none served through the gateway yet"]
    lines = ["  live traffic through the gateway:"]
    for name in served:
        m = live_metrics(engine, task_type, name, datetime(1970, 1, 1, tzinfo=UTC), table)
        rating = f"{m['mean_rating']:.2f} ({m['rated']} rated)" if m.get("mean_rating") is not None else "no ratings"
        lines.append(f"    {name}: {m['requests']} calls, error rate {m['error_rate']:.3f}, p95 "
                     f"{m['latency_p95_ms']:.0f} ms, mean rating {rating}, task success "
                     f"{m.get('task_success_rate', float('nan')):.3f}")  # fmt: skip
    return lines


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
    gateway = build_gateway(s, engine, cfg.interactions_table, api_client=api_client, key_hashes=hashes)
    log.info("FT-Ops gateway on http://%s:%s/v1 (%s API keys configured)", host, port, len(hashes))
    uvicorn.run(create_app(gateway), host=host, port=port, log_level="info", access_log=args.access_log)
    return 0


def _simulate_traffic(args: argparse.Namespace) -> int:
    from ftops_dev.traffic import simulate_traffic

    extra = {"task_types": args.task_types} if args.task_types else {}
    report = simulate_traffic(args.base_url, api_key=os.environ.get("FTOPS_API_KEY", "ftops-local"),
                              requests=args.requests, concurrency=args.concurrency, seed=args.seed, **extra)  # fmt: skip
    print(f"{sum(v.requests for v in report.versions.values())} calls in {report.seconds:.1f} s")
    print(printable("\n".join(report.lines())))
    return 1 if any(name.startswith("error:") for name in report.versions) else 0


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


def _judge_calibrate(args: argparse.Namespace) -> int:
    from ftops.pipeline.judge import calibrate_from_env

    code, text = calibrate_from_env(load_config(), args.task_type)
    print(printable(text), file=sys.stderr if code == 2 else sys.stdout)
    return code


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


def _task_type(value: str) -> str:
    try:
        return check_task_type(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


SHOWN_ANSWERS = 3


def _answers(run_id: str) -> list[str]:
    """What the model said: its first test answers and how many distinct answers it gave (a model that says
    the same thing to every prompt shows here, whatever its score)."""
    import json

    import mlflow

    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/evaluation/outputs.jsonl")
    except Exception as exc:  # noqa: BLE001 - a summary line, not a failure: say what is missing
        return [f"    answers: not available ({type(exc).__name__})"]
    outputs = [json.loads(line) for line in text.splitlines() if line.strip()]
    distinct = len({o["candidate"] for o in outputs})
    references = len({o["reference"] for o in outputs})
    lines = [f"    answers: {distinct} distinct to {len(outputs)} test prompts (the references: {references} distinct); "
             f"the first {SHOWN_ANSWERS}:"]  # fmt: skip
    for o in outputs[:SHOWN_ANSWERS]:
        mark = "right" if o["candidate_correct"] else "wrong"
        lines.append(f"      {o['prompt'][:70]!r}\n        -> {o['candidate'][:90]!r} ({mark})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="ftops", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="write simulated interaction logs into the warehouse")
    sim.add_argument("--rows", type=int, default=3000)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--task-types", nargs="*", default=None, type=_task_type,
                     help="default: sentiment city_extraction unit_conversion; also support_reply (free text)")
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
    traffic = sub.add_parser("simulate-traffic", help="simulated users calling the gateway and rating answers")
    traffic.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    traffic.add_argument("--requests", type=int, default=300)
    traffic.add_argument("--concurrency", type=int, default=4)
    traffic.add_argument("--seed", type=int, default=0)
    traffic.add_argument("--task-types", nargs="*", default=None, type=_task_type)
    traffic.set_defaults(func=_simulate_traffic)
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
    judge = sub.add_parser("judge", help="the LLM judge of free-text task types").add_subparsers(
        dest="judge", required=True)  # fmt: skip
    calibrate = judge.add_parser("calibrate", help="measure the judge's agreement (Cohen's kappa) with the latest eval "
                                 "set's labels and record it on ftops-<task type> (exit 1: below min_kappa)")  # fmt: skip
    calibrate.add_argument("--task-type", required=True, type=_task_type)
    calibrate.set_defaults(func=_judge_calibrate)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
