"""FT-Ops on Airflow's CeleryExecutor, with machines that share no folder: `make e2e-distributed`.

Each "machine" is a folder of its own (its FTOPS_HOME, AIRFLOW_HOME and HOME) and the processes started with
it; they meet only over the network, as they would on separate hosts:

  services    PostgreSQL (Airflow metadata, warehouse, MLflow store; already running), Redis (Celery broker;
              already running), `mlflow server` (PostgreSQL store, artifacts served through it), `git daemon`
              (the dataset registry's git remote, git://) and WsgiDAV (the DVC remote, webdav://)
  control     airflow api-server, scheduler, dag-processor, triggerer
  worker-a    `airflow celery worker` on the default queue: curation, governance
  worker-b    `airflow celery worker` on the training queue (`training.queue`): every ftops_finetune task
  gateway     `ftops serve`: the champion, loaded from the MLflow server

The run: simulated logs → ftops_curate → (Asset event) ftops_governor → ftops_finetune → champion, then five
questions to the gateway. It checks which worker ran which task (the REST API's task instances and each
worker's own task logs), the champion's lineage (the git remote's URL and tag), that the artifacts are on the
MLflow server only, and that the deployed model answers; `--report FILE` writes what it found as JSON.
The code (this checkout and its .venv) plays the image every machine runs; the built base model is copied
into each machine that loads a model, as an image layer would hold it.

    python scripts/e2e_distributed.py [--rows N] [--root DIR] [--keep] [--report FILE] [--base-model DIR] [--target-size N] [--threads N]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's: airflow, mlflow, wsgidav, ftops
TASK_TYPE = "city_extraction"
CURATION_DAGS = ("ftops_curate", "ftops_governor")
WORKERS = {"worker-a": "default", "worker-b": "training"}  # name -> the queue it listens on (suffixed per run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; log {log}:\n{log.read_text()[-3000:]}")


class Cluster:
    """The machines' folders, environments and processes; stopped (and its databases dropped) on exit."""

    def __init__(self, root: Path, postgres: str, redis: str, keep: bool, overrides: dict[str, Any] | None = None) -> None:
        self.root, self.postgres, self.keep, self.overrides = root, postgres.rstrip("/"), keep, overrides or {}
        self.run_id = secrets.token_hex(4)
        self.dbs = {k: f"ftops_dist_{self.run_id}_{k}" for k in ("airflow", "warehouse", "mlflow")}
        self.queues = {name: f"ftops-{self.run_id}-{q}" for name, q in WORKERS.items()}
        self.ports = {k: free_port() for k in ("api", "mlflow", "git", "dav", "gateway", *WORKERS)}
        self.redis = redis
        self.procs: list[tuple[str, subprocess.Popen]] = []
        # Every component signs or checks the same tokens (the Execution API's) and decrypts the same secrets.
        self.jwt_secret = secrets.token_hex(32)
        self.fernet_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()

    # -- machines ---------------------------------------------------------------------------------------
    def home(self, machine: str) -> Path:
        path = self.root / machine
        (path / "home").mkdir(parents=True, exist_ok=True)
        return path

    def db_url(self, key: str, driver: str = "postgresql") -> str:
        return f"{self.postgres.replace('postgresql', driver, 1)}/{self.dbs[key]}"

    def env(self, machine: str) -> dict[str, str]:
        """One machine's environment: its own folders, and the cluster's settings (addresses, secrets)."""
        home = self.home(machine)
        airflow_db = self.db_url("airflow", "postgresql+psycopg2")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FTOPS_", "MLFLOW_"))}
        env.update({
            "HOME": str(home / "home"), "FTOPS_HOME": str(home), "AIRFLOW_HOME": str(home / "airflow"),
            "FTOPS_CONFIG": str(home / "ftops.yaml"), "FTOPS_WORKER_NAME": machine,
            "PATH": f"{BIN}:{env.get('PATH', '')}",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "ftops_airflow.common.worker_hostname",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True", "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.ports["api"]),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.ports['api']}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": self.jwt_secret, "AIRFLOW__CORE__FERNET_KEY": self.fernet_key,
            "AIRFLOW__CELERY__BROKER_URL": self.redis,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{airflow_db}",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queues["worker-a"],
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports.get(machine, self.ports["worker-a"])),
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW_CONN_FTOPS_WAREHOUSE": self.db_url("warehouse"),
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.ports['mlflow']}",
            "GX_ANALYTICS_ENABLED": "False", "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "1",
        })  # fmt: skip
        if machine == "control":  # workers reach the metadata database only through the API server
            env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = airflow_db
        return env

    def write_config(self, machine: str) -> None:
        """The shipped config with the cluster's remotes and queue, one copy per machine (no shared file)."""
        import yaml

        from ftops.core.config import apply_overrides, load_config

        cfg = apply_overrides(load_config(ROOT / "include" / "config" / "ftops.yaml"), {
            "task_types": [TASK_TYPE],
            "storage.dataset_remote": f"git://127.0.0.1:{self.ports['git']}/datasets.git",
            "storage.dvc_remote": f"webdav://127.0.0.1:{self.ports['dav']}/dvc",
            "training.queue": self.queues["worker-b"],
            **self.overrides,
        })  # fmt: skip
        (self.home(machine) / "ftops.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    def start(self, machine: str, name: str, *cmd: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.home(machine) / f"{name}.log"
        proc = subprocess.Popen(cmd, env=env or self.env(machine), stdout=log.open("w"), stderr=subprocess.STDOUT,
                                cwd=self.home(machine), start_new_session=True)  # fmt: skip
        self.procs.append((f"{machine}/{name}", proc))
        return proc

    def run(self, machine: str, *cmd: str, timeout: float = 600) -> str:
        out = subprocess.run(cmd, env=self.env(machine), cwd=self.home(machine), capture_output=True, text=True,
                             timeout=timeout, check=False)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} on {machine} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        return out.stdout

    # -- databases --------------------------------------------------------------------------------------
    def _admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(f"{self.postgres}/postgres", autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql)

    def create_databases(self) -> None:
        """The run's three databases; first, a clear error when PostgreSQL or Redis cannot be reached."""
        import redis

        try:
            redis.Redis.from_url(self.redis, socket_connect_timeout=5).ping()
        except redis.RedisError as exc:
            raise RuntimeError(f"Redis (the Celery broker) does not answer at {self.redis}: {exc}. Start one or "
                               "point FTOPS_DIST_REDIS (or --redis) at it.") from None  # fmt: skip
        try:
            self._admin(*(f'CREATE DATABASE "{db}"' for db in self.dbs.values()))
        except Exception as exc:  # noqa: BLE001 - psycopg's errors are many; the message says which
            raise RuntimeError(f"PostgreSQL at {self.postgres} (a role that may create databases) is needed: {exc}. "
                               "Point FTOPS_DIST_POSTGRES (or --postgres) at one.") from None  # fmt: skip

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.time() + 30
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if not self.keep:
            try:
                self._admin(*(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)' for db in self.dbs.values()))
            except Exception as exc:  # noqa: BLE001 - cleanup: say so, keep the run's own error
                print(f"could not drop the databases {', '.join(self.dbs.values())}: {exc}", file=sys.stderr)


def step(started: float, text: str) -> None:
    print(f"\n== [{time.time() - started:5.0f}s] {text}", flush=True)


def start_services(c: Cluster, started: float) -> None:
    step(started, f"services: PostgreSQL databases {', '.join(c.dbs.values())}; mlflow server, git daemon, WsgiDAV")
    c.create_databases()
    svc = c.home("services")
    (svc / "git").mkdir(exist_ok=True)
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(svc / "git" / "datasets.git")], check=True)
    (svc / "dvc" / "dvc").mkdir(parents=True, exist_ok=True)
    mlflow = c.start("services", "mlflow", "mlflow", "server", "--backend-store-uri", c.db_url("mlflow"),
                     "--artifacts-destination", str(svc / "mlflow-artifacts"), "--serve-artifacts",
                     "--host", "127.0.0.1", "--port", str(c.ports["mlflow"]), "--workers", "1")  # fmt: skip
    c.start("services", "git-daemon", "git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
            f"--base-path={svc / 'git'}", "--listen=127.0.0.1", f"--port={c.ports['git']}")  # fmt: skip
    dav = c.start("services", "webdav", "wsgidav", "--host", "127.0.0.1", "--port", str(c.ports["dav"]),
                  "--root", str(svc / "dvc"), "--auth", "anonymous")  # fmt: skip
    wait_http(f"http://127.0.0.1:{c.ports['dav']}/", dav, svc / "webdav.log")
    wait_http(f"http://127.0.0.1:{c.ports['mlflow']}/health", mlflow, svc / "mlflow.log")


def start_airflow(c: Cluster, started: float, base_model: Path) -> None:
    step(started, f"control: airflow db migrate, pools; api-server on {c.ports['api']}, scheduler, dag-processor, triggerer")
    for machine in ("control", *WORKERS, "gateway"):
        c.write_config(machine)
        if machine != "control":  # the image's layer with the built base model
            shutil.copytree(base_model, c.home(machine) / "models" / base_model.name, dirs_exist_ok=True)
    c.run("control", "airflow", "db", "migrate")
    c.run("control", "airflow", "pools", "set", "ftops_training", "1", "one training at a time")
    c.run("control", "airflow", "pools", "set", "ftops_versioning", "1", "one DVC writer at a time")
    c.run("control", "airflow", "pools", "set", "ftops_aliases", "1", "one registry alias move at a time")
    api = c.start("control", "api-server", "airflow", "api-server", "--port", str(c.ports["api"]))
    for component in ("scheduler", "dag-processor", "triggerer"):
        c.start("control", component, "airflow", component)
    for name in WORKERS:
        step(started, f"{name}: airflow celery worker on queue {c.queues[name]} (FTOPS_HOME {c.home(name)})")
        c.start(name, "celery-worker", "airflow", "celery", "worker", "--queues", c.queues[name],
                "--concurrency", "1", "--celery-hostname", f"{name}-{c.run_id}@%h")  # fmt: skip
    wait_http(f"http://127.0.0.1:{c.ports['api']}/api/v2/monitor/health", api, c.home("control") / "api-server.log")


def run_cycle(c: Cluster, started: float, rows: int, timeout: float) -> dict[str, Any]:
    step(started, f"warehouse: {rows} simulated interactions of {TASK_TYPE} (PostgreSQL {c.dbs['warehouse']})")
    print(c.run("control", "ftops", "simulate", "--rows", str(rows), "--seed", "7", "--task-types", TASK_TYPE).strip())
    step(started, "ftops_curate on worker-a → ftops_governor on worker-a → ftops_finetune on worker-b")
    os.environ["AIRFLOW__API__PORT"] = str(c.ports["api"])
    sys.path.insert(0, str(ROOT / "scripts"))
    import demo_wait  # noqa: PLC0415 - its URL is read at import, from the port set above

    af = demo_wait.Airflow()
    if demo_wait.cycle(af, timeout) != 0:
        raise RuntimeError("the cycle did not succeed: see the task logs under each worker's airflow/logs")
    placed: dict[str, Any] = {}
    for dag_id in (*CURATION_DAGS, "ftops_finetune"):
        for run_id, state in af.runs(dag_id).items():
            tis = af.http.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
            placed[f"{dag_id}/{run_id}"] = {
                "state": state,
                "tasks": {t["task_id"]: {"hostname": t["hostname"], "queue": t["queue"], "state": t["state"]}
                          for t in tis if t["state"] not in ("skipped", "removed")},
            }  # fmt: skip
    return placed


def worker_logs(c: Cluster) -> dict[str, dict[str, list[str]]]:
    """Per worker: the DAG ids and task ids whose task logs are in that worker's own log folder, with the
    worker each log's first FT-Ops line names."""
    found: dict[str, dict[str, list[str]]] = {}
    for name in WORKERS:
        for path in sorted((c.home(name) / "airflow" / "logs").rglob("attempt=*.log")):
            parts = {p.split("=", 1)[0]: p.split("=", 1)[1] for p in path.parts if "=" in p}
            text = path.read_text(errors="replace")
            says = "on worker " + name if f"runs on worker {name} " in text else "?"
            found.setdefault(name, {}).setdefault(parts["dag_id"], []).append(f"{parts['task_id']} ({says})")
    return found


def deploy_check(c: Cluster, started: float) -> dict[str, Any]:
    """The champion, from the MLflow server, served by a gateway on a machine of its own; five questions."""
    import sqlalchemy as sa
    from ftops_dev.simulate import TASKS
    from mlflow import MlflowClient
    from openai import OpenAI

    server = f"http://127.0.0.1:{c.ports['mlflow']}"
    client = MlflowClient(server, registry_uri=server)
    champion = client.get_model_version_by_alias(f"ftops-{TASK_TYPE}", "champion")
    run = client.get_run(champion.run_id)
    step(started, f"gateway: ftops serve on {c.ports['gateway']}, champion ftops-{TASK_TYPE}/{champion.version}")
    gw = c.start("gateway", "serve", "ftops", "serve", "--port", str(c.ports["gateway"]))
    wait_http(f"http://127.0.0.1:{c.ports['gateway']}/healthz", gw, c.home("gateway") / "serve.log")
    import random

    rng, answers = random.Random(3), []
    openai = OpenAI(base_url=f"http://127.0.0.1:{c.ports['gateway']}/v1", api_key="unused", timeout=120)
    questions: dict[str, str] = {}  # expected answer -> prompt: five different cities, so five different answers
    while len(questions) < 5:
        prompt, expected, _ = TASKS[TASK_TYPE][0](rng)
        questions.setdefault(expected, prompt)
    for expected, prompt in questions.items():
        done = openai.chat.completions.create(model=f"ftops/{TASK_TYPE}", messages=[{"role": "user", "content": prompt}])
        answers.append({"prompt": prompt, "expected": expected, "answer": done.choices[0].message.content,
                        "model": done.model})  # fmt: skip
        print(f"  Q: {prompt}\n  A: {answers[-1]['answer']!r}   (expected {expected!r}; {done.model})")
    logged, deadline = 0, time.time() + 60  # the gateway's spool reaches the warehouse every flush_every_s
    engine = sa.create_engine(c.db_url("warehouse", "postgresql+psycopg"))
    while logged < len(answers) and time.time() < deadline:
        time.sleep(2)
        with engine.connect() as conn:
            logged = conn.execute(sa.text("SELECT count(*) FROM interactions WHERE model_version = :v"),
                                  {"v": f"ftops-{TASK_TYPE}/{champion.version}"}).scalar_one()  # fmt: skip
    engine.dispose()
    print(f"  {logged} of the {len(answers)} calls are in the warehouse as ftops-{TASK_TYPE}/{champion.version}")
    svc = c.home("services") / "mlflow-artifacts"
    return {
        "gateway_logged": logged,
        "champion": {"version": champion.version, "tags": dict(champion.tags), "artifact_uri": run.info.artifact_uri,
                     "dataset_repo": run.data.tags.get("dataset_repo"), "dataset_version": run.data.tags.get("dataset_version")},
        "answers": answers,
        "artifacts_on_server": sum(1 for p in svc.rglob("*") if p.is_file()),
        "artifacts_elsewhere": [str(p) for m in (*WORKERS, "control", "gateway") for p in [c.home(m) / "mlartifacts"] if p.exists()],
    }  # fmt: skip


def machine_folders(c: Cluster) -> dict[str, list[str]]:
    """What each machine holds at its top level (each has its own dataset clone, caches and logs)."""
    return {m: sorted(p.name for p in c.home(m).iterdir()) for m in ("control", *WORKERS, "gateway")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1500, help="simulated interactions (default 1500)")
    ap.add_argument("--root", type=Path, help="folder of the machines (default: a new temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the databases (and the folder) afterwards")
    ap.add_argument("--report", type=Path, help="write what was found as JSON here")
    ap.add_argument("--base-model", type=Path, help="a built tiny-gpt2 (default: build one under --root/image)")
    ap.add_argument("--target-size", type=int, help="curation.target_size (default: the shipped config's)")
    ap.add_argument("--threads", type=int, help="training.backend.threads on the training worker (default: every core)")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds for curate → govern → fine-tune")
    ap.add_argument("--postgres", default=os.environ.get("FTOPS_DIST_POSTGRES", "postgresql://postgres@127.0.0.1:5432"))
    ap.add_argument("--redis", default=os.environ.get("FTOPS_DIST_REDIS", "redis://127.0.0.1:6379/0"))
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still stops every machine (finally below)
    for key in [k for k in os.environ if k.startswith(("AIRFLOW", "FTOPS_", "MLFLOW_"))]:
        del os.environ[key]  # this process reads the cluster only through the addresses it set up (a caller's
        # MLFLOW_TRACKING_URI would otherwise be the registry of MlflowClient(tracking_uri) below)
    started = time.time()
    root = (args.root or Path(tempfile.mkdtemp(prefix="ftops-dist-"))).resolve()
    overrides = {"curation.target_size": args.target_size, "training.backend.threads": args.threads}
    cluster = Cluster(root, args.postgres, args.redis, args.keep, {k: v for k, v in overrides.items() if v})
    print(f"FT-Ops distributed run {cluster.run_id} under {root}")
    report: dict[str, Any] = {"run_id": cluster.run_id, "root": str(root), "queues": cluster.queues}
    try:
        base_model = args.base_model
        if base_model is None:
            step(started, "image: the tiny local base model (built once)")
            env = {**os.environ, "FTOPS_HOME": str(root / "image")}
            subprocess.run([str(BIN / "ftops"), "build-base-model"], env=env, check=True)
            base_model = root / "image" / "models" / "tiny-gpt2"
        start_services(cluster, started)
        start_airflow(cluster, started, base_model)
        report["runs"] = run_cycle(cluster, started, args.rows, args.timeout)
        report["worker_logs"] = worker_logs(cluster)
        report["deploy"] = deploy_check(cluster, started)
        report["machines"] = machine_folders(cluster)
        step(started, "who ran what (task instance hostname, from the REST API)")
        for key, run in report["runs"].items():
            hosts = sorted({f"{t['hostname']} ({t['queue']})" for t in run["tasks"].values()})
            print(f"  {key}: {run['state']} on {', '.join(hosts)}")
        for name, dags in report["worker_logs"].items():
            print(f"  {name}'s task logs: " + "; ".join(f"{d}: {len(t)}" for d, t in dags.items()))
        report["ok"] = True
        return 0
    except Exception as exc:
        report["ok"], report["error"] = False, f"{type(exc).__name__}: {exc}"
        print(f"FAILED: {report['error']}", file=sys.stderr)
        return 1
    finally:
        report["seconds"] = round(time.time() - started, 1)
        if args.report:
            args.report.write_text(json.dumps(report, indent=2, default=str))
        cluster.stop()
        if not args.keep and args.root is None and report.get("ok"):
            shutil.rmtree(root, ignore_errors=True)
        print(f"\nTotal {report['seconds']:.0f} s" + ("" if report.get("ok") else f"; the machines' logs are under {root}"))


if __name__ == "__main__":
    raise SystemExit(main())
