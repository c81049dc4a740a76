#!/usr/bin/env bash
# The whole FT-Ops loop on embedded defaults, through a real Airflow (scheduler, dag-processor, api-server,
# triggerer: `airflow standalone`), started and stopped by this script:
#   simulate logs → ftops_curate → Asset event → ftops_governor → ftops_finetune (train → evaluate → register
#   → deploy_canary | archive), then a summary.
# Everything lives under FTOPS_HOME (default .ftops/). Re-running is safe: same data, same dataset versions.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
ROWS="${FTOPS_DEMO_ROWS:-3000}"
TIMEOUT_S="${FTOPS_DEMO_TIMEOUT_S:-2400}"
PORT="${FTOPS_DEMO_PORT:-8080}"
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"  # login off: 127.0.0.1 only (env.sh)
export AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL=5 AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
mkdir -p "$FTOPS_HOME"
LOG="$FTOPS_HOME/standalone.log"
started=$(date +%s)
step() { printf '\n== [%4ds] %s\n' "$(( $(date +%s) - started ))" "$*"; }

step "Airflow metadata database ($AIRFLOW_HOME)"
bash scripts/setup_airflow.sh

step "Local base model (built once, reused)"
ftops build-base-model

step "Simulated production logs ($ROWS rows, seed 0)"
ftops simulate --rows "$ROWS" --seed 0

step "Starting airflow standalone on port $PORT (log: $LOG)"
if curl -fs "http://127.0.0.1:$PORT" > /dev/null 2>&1; then
  echo "Port $PORT is in use: stop what listens there or set FTOPS_DEMO_PORT" >&2; exit 1
fi
setsid airflow standalone > "$LOG" 2>&1 &  # its own process group, so cleanup stops every component
AF_PID=$!
cleanup() {
  kill -TERM -- "-$AF_PID" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 -- "-$AF_PID" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$AF_PID" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 180); do
  curl -fs "http://127.0.0.1:$PORT/api/v2/monitor/health" > /dev/null 2>&1 && break
  kill -0 "$AF_PID" 2>/dev/null || { tail -40 "$LOG"; echo "airflow standalone exited" >&2; exit 1; }
  sleep 2
done
for dag in ftops_curate ftops_governor ftops_finetune; do
  for _ in $(seq 1 60); do airflow dags unpause "$dag" > /dev/null 2>&1 && break; sleep 2; done
done

step "Running ftops_curate; the governor and fine-tuning follow on their own"
python - "$TIMEOUT_S" <<'PY'
import json, subprocess, sys, time

DAGS = ("ftops_curate", "ftops_governor", "ftops_finetune")
deadline = time.time() + float(sys.argv[1])
def runs(dag_id):
    out = subprocess.run(["airflow", "dags", "list-runs", dag_id, "-o", "json"], capture_output=True, text=True)
    payload = next((line for line in out.stdout.splitlines() if line.startswith("[")), "[]")
    return {r["run_id"]: r["state"] for r in json.loads(payload)}

# Runs from an earlier demo on the same FTOPS_HOME are not this demo's.
before = {d: set(runs(d)) for d in DAGS}
def new_states(dag_id):
    return [s for rid, s in runs(dag_id).items() if rid not in before[dag_id]]

# Unpausing a nightly DAG for the first time starts its latest run (catchup is off); otherwise trigger one.
time.sleep(15)
if not new_states("ftops_curate"):
    subprocess.run(["airflow", "dags", "trigger", "ftops_curate"], capture_output=True, check=True)
done = lambda s: bool(s) and all(x in ("success", "failed") for x in s)
last, settled = None, 0
while time.time() < deadline:
    state = {d: new_states(d) for d in DAGS}
    line = "  ".join(f"{d}: {','.join(s) or '-'}" for d, s in state.items())
    if line != last:
        print(time.strftime("%H:%M:%S"), line, flush=True)
        last = line
    if "failed" in state["ftops_curate"] or "failed" in state["ftops_governor"]:
        sys.exit("curation or governance failed: see the task logs in the UI or under $AIRFLOW_HOME/logs")
    curated = done(state["ftops_curate"])
    quiet = curated and done(state["ftops_governor"])
    if quiet and done(state["ftops_finetune"]):
        sys.exit(1 if "failed" in state["ftops_finetune"] else 0)
    # Nothing more will come: the governor finished and triggered no fine-tune, or curation published no new
    # dataset version (no Asset event, so the governor is not woken until its hourly run).
    idle = (quiet and not state["ftops_finetune"]) or (curated and not state["ftops_governor"])
    settled = settled + 1 if idle else 0
    if settled >= 3:  # 30 s of that
        print("Nothing new to train: no new dataset version, or the governor decided to wait "
              "(see `ftops summary` and the ftops_decisions table).")
        sys.exit(0)
    time.sleep(10)
sys.exit(f"timed out after {sys.argv[1]} s")
PY

step "Summary"
ftops summary
printf '\nTotal %d s. Explore it all in the UI: make ui, then http://127.0.0.1:8080\n' "$(( $(date +%s) - started ))"
