"""The demo's driver of a running Airflow (``airflow standalone``, login off), through its REST API.

    python scripts/demo_wait.py cycle TIMEOUT_S       trigger ftops_curate; wait for curate -> governor -> fine-tune
    python scripts/demo_wait.py canary TIMEOUT_S [FILE]
                                                      trigger ftops_canary every few seconds until no canary is left;
                                                      FILE gets the task types under review (the demo's users call
                                                      those)

The REST API costs no CPU to poll, unlike the ``airflow`` CLI (a few seconds of imports per call, on the two
cores the fine-tunes need).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import httpx

URL = f"http://127.0.0.1:{os.environ.get('AIRFLOW__API__PORT', '8080')}"
CYCLE = ("ftops_curate", "ftops_governor", "ftops_finetune")


class Airflow:
    def __init__(self) -> None:
        token = httpx.get(f"{URL}/auth/token", timeout=30).json()["access_token"]  # login off: an admin token
        self.http = httpx.Client(base_url=f"{URL}/api/v2", headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def runs(self, dag_id: str) -> dict[str, str]:
        r = self.http.get(f"/dags/{dag_id}/dagRuns", params={"limit": 100, "order_by": "-run_after"})
        if r.status_code == 404:
            return {}
        r.raise_for_status()
        return {d["dag_run_id"]: d["state"] for d in r.json()["dag_runs"]}

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        r = self.http.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        r.raise_for_status()
        return str(r.json()["dag_run_id"])

    def unpause(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.http.patch(f"/dags/{dag_id}", json={"is_paused": False})
            if r.status_code == 200:
                return
            time.sleep(2)
        sys.exit(f"{dag_id} did not appear in Airflow within {timeout:.0f} s")


def cycle(af: Airflow, timeout: float) -> int:
    """Trigger curation; the governor and fine-tunes follow through the Asset event. Wait until they settle."""
    before = {d: set(af.runs(d)) for d in CYCLE}
    for dag_id in CYCLE:
        af.unpause(dag_id)
    time.sleep(10)  # unpausing a nightly DAG the first time starts its latest run (catchup is off)
    if not set(af.runs("ftops_curate")) - before["ftops_curate"]:
        af.trigger("ftops_curate")
    deadline, last, settled = time.time() + timeout, None, 0
    done = lambda s: bool(s) and all(x in ("success", "failed") for x in s)  # noqa: E731
    while time.time() < deadline:
        state = {d: [s for rid, s in af.runs(d).items() if rid not in before[d]] for d in CYCLE}
        line = "  ".join(f"{d}: {','.join(s) or '-'}" for d, s in state.items())
        if line != last:
            print(time.strftime("%H:%M:%S"), line, flush=True)
            last = line
        if "failed" in state["ftops_curate"] or "failed" in state["ftops_governor"]:
            print("curation or governance failed: see the task logs in the UI or under $AIRFLOW_HOME/logs")
            return 1
        curated = done(state["ftops_curate"])
        quiet = curated and done(state["ftops_governor"])
        if quiet and done(state["ftops_finetune"]):
            return 1 if "failed" in state["ftops_finetune"] else 0
        # Nothing more will come: the governor finished and triggered no fine-tune, or curation published no
        # new dataset version (no Asset event, so the governor is not woken until its hourly run).
        idle = (quiet and not state["ftops_finetune"]) or (curated and not state["ftops_governor"])
        settled = settled + 1 if idle else 0
        if settled >= 6:  # 30 s of that
            print("Nothing new to train: no new dataset version, or the governor decided to wait.")
            return 0
        time.sleep(5)
    print(f"timed out after {timeout:.0f} s")
    return 1


def canaries() -> dict[str, tuple[str, str]]:
    """``task_type -> (canary version, traffic_percent)`` from the registry."""
    from ftops.registry import models as registry

    out = {}
    for task_type in registry.registered_task_types():
        mv = registry.alias_version(task_type, registry.CANARY)
        if mv is not None:
            out[task_type] = (str(mv.version), str(mv.tags.get("traffic_percent", "?")))
    return out


def canary(af: Airflow, timeout: float, every_s: float = 1, reviewed: str | None = None) -> int:
    """Review canaries until none is left: each review holds, ramps, promotes or rolls back (see its logs).
    ``reviewed``: a file rewritten with the task types that have a canary whenever they change."""
    deadline = time.time() + timeout
    af.unpause("ftops_canary")
    last: dict[str, tuple[str, str]] | None = None
    while time.time() < deadline:
        now = canaries()
        if now != last:
            print(time.strftime("%H:%M:%S"), "canaries:", ", ".join(f"{t} v{v} at {p}%" for t, (v, p) in now.items())
                  or "none left", flush=True)  # fmt: skip
            last = now
            if reviewed is not None:
                with open(f"{reviewed}.new", "w") as f:
                    f.write(" ".join(sorted(now)))
                os.replace(f"{reviewed}.new", reviewed)  # the users' loop never reads half a file
        if not now:
            return 0
        run_id = af.trigger("ftops_canary")
        while af.runs("ftops_canary").get(run_id) not in ("success", "failed") and time.time() < deadline:
            time.sleep(3)
        time.sleep(every_s)
    print(f"canaries still under review after {timeout:.0f} s: {last}")
    return 1


def main(argv: list[str]) -> int:
    command, *rest = argv
    af = Airflow()
    if command == "cycle":
        return cycle(af, float(rest[0]))
    if command == "canary":
        return canary(af, float(rest[0]), reviewed=rest[1] if len(rest) > 1 else None)
    sys.exit(f"unknown command {command!r}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
