#!/usr/bin/env bash
# The whole FT-Ops loop, twice, on embedded defaults, through a real Airflow (scheduler, dag-processor,
# api-server, triggerer: `airflow standalone`) and the FT-Ops gateway, started and stopped by this script:
#   cycle 1: simulated logs → ftops_curate → Asset event → ftops_governor → ftops_finetune (train → evaluate
#            → register → champion | archive);
#   serving: `ftops serve` answers simulated users (`ftops simulate-traffic`), every call logged and rated; a
#            share of them asks about things the champion never saw (drift: new cities, a new phrasing, larger
#            numbers), and some users type the right answer when it is wrong (corrections);
#   cycle 2: curate that traffic (corrections, and the stand-in teacher's answers to the other failures, become
#            targets) → govern → fine-tune a candidate → the shipped gate on the eval set → canary | archive;
#            ftops_canary ramps the canary while users keep calling, then promotes or rolls it back; a summary.
# With FTOPS_DEMO_DISTILL=1 (`make demo-distill`) the story is distillation instead (issue 22):
#   cycle 0: a stand-in "large" upstream model (95 % right, 0.3 s an answer, priced like a hosted one) is every task
#            type's champion and trusted teacher; simulated users reach it through the gateway (30 % of the calls
#            with a system prompt and an earlier exchange), so the first logs are gateway logs;
#   cycle 1: curate its answers (unrated ones too) → govern → fine-tune the local model → the replacement gate
#            (not worse on the eval set, ≥ 50 % cheaper, fast enough) → canary → promoted | archived; the figures
#            (the student's accuracy and cost as shares of the teacher's);
#   cycle 2: new entities appear (labelled rows about them join the eval sets as v2) and the learning cycle of
#            `make demo` follows: drifted traffic, corrections, the teacher, the gate, the canary.
# Everything lives under FTOPS_HOME (default .ftops/). Re-running is safe: same data, same dataset versions.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
# Task types with exact answers (the simulator's); add unit_conversion to see a candidate archived: the tiny model
# does not learn its arithmetic (0.000 on the eval set, every run), and it costs the demo ~1.5 min.
TASK_TYPES="${FTOPS_DEMO_TASK_TYPES:-sentiment city_extraction}"
ROWS="${FTOPS_DEMO_ROWS:-1350}"                   # of those task types, spread evenly
TIMEOUT_S="${FTOPS_DEMO_TIMEOUT_S:-1200}"         # per cycle
CANARY_TIMEOUT_S="${FTOPS_DEMO_CANARY_TIMEOUT_S:-600}"
DISTILL="${FTOPS_DEMO_DISTILL:-0}"                # 1: the distillation story (above)
# share of the eval sets' rows about new entities: none when distilling (the teacher's traffic has none either)
EVAL_DRIFT="${FTOPS_DEMO_EVAL_DRIFT:-$( [[ $DISTILL == 1 ]] && echo 0 || echo 0.3 )}"
DRIFT="${FTOPS_DEMO_DRIFT:-$( [[ $DISTILL == 1 ]] && echo 0 || echo 0.5 )}"  # share of the users' calls about them
# share of the users' calls with a system prompt and an earlier exchange (the distillation story's users)
CONVERSATIONS="${FTOPS_DEMO_CONVERSATIONS:-$( [[ $DISTILL == 1 ]] && echo 0.3 || echo 0 )}"
UP_TRAFFIC="${FTOPS_DEMO_UPSTREAM_TRAFFIC:-2000}" # distillation: calls the upstream champion answers in cycle 0
UP_PORT="${FTOPS_DEMO_UPSTREAM_PORT:-8091}"
CORRECTIONS="${FTOPS_DEMO_CORRECTIONS:-0.15}"      # share of wrong answers a user corrects
# Rows of the free-text task type support_reply, judged by the stand-in LLM judge: 0 (the default) leaves it out.
# 700 adds it, and ~4-5 min: a third curation, fine-tune and canary per cycle on two cores (2026-12-07 runs).
FREE_ROWS="${FTOPS_DEMO_FREE_ROWS:-0}"
FREE=""; if (( FREE_ROWS > 0 )); then FREE="support_reply"; fi
TRAFFIC="${FTOPS_DEMO_TRAFFIC:-$(( FREE_ROWS > 0 ? 900 : 600 ))}"  # calls between the cycles: ~300 per task type
JUDGE_PORT="${FTOPS_DEMO_JUDGE_PORT:-8090}"
PORT="${FTOPS_DEMO_PORT:-8080}"
GW_PORT="${FTOPS_DEMO_GATEWAY_PORT:-8000}"
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"  # login off: 127.0.0.1 only (env.sh)
export AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL=5 AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
(umask 077 && mkdir -p "$FTOPS_HOME")  # 0700 when made here: it holds prompts and stores
LOG="$FTOPS_HOME/standalone.log"
GW_LOG="$FTOPS_HOME/gateway.log"
started=$(date +%s)
step() { printf '\n== [%4ds] %s\n' "$(( $(date +%s) - started ))" "$*"; }

step "Airflow metadata database ($AIRFLOW_HOME)"
# Two fine-tunes at once, torch on one thread each (training.backend.threads below): on 2 cores that finishes
# a cycle's fine-tunes sooner than one at a time on both threads (benchmarks/bench_parallel.py)
FTOPS_TRAINING_SLOTS="${FTOPS_TRAINING_SLOTS:-2}" bash scripts/setup_airflow.sh

step "Local base model (built once, reused)"
ftops build-base-model

if [[ $DISTILL != 1 ]]; then
  step "Simulated production logs ($ROWS rows of $TASK_TYPES, seed 0${FREE:+; $FREE_ROWS of the free-text task $FREE, seed 5})"
  # shellcheck disable=SC2086  # a list of task types
  ftops simulate --rows "$ROWS" --seed 0 --task-types $TASK_TYPES
  if [[ -n "$FREE" ]]; then ftops simulate --rows "$FREE_ROWS" --seed 5 --task-types "$FREE"; fi
fi

step "Eval sets: the simulator's labelled rows (its known answers; $EVAL_DRIFT of them about new entities), imported"
# 800 rows a task type when distilling: the student must be shown not worse than a teacher right ~95 % of the time
# within 2 points (gate.replace_margin). At 180 rows the gain's 95 % CI is ±0.04 wide; at 400 ±0.025, and a city
# student as good as its teacher (0.965 vs 0.963) was archived for a lower bound of -0.022 (2026-12-08 00:23 run)
ftops simulate-evalset --out "$FTOPS_HOME/evalsets" --drift-share "$EVAL_DRIFT" --rows "$( [[ $DISTILL == 1 ]] && echo 800 || echo 180 )" \
  --task-types $TASK_TYPES $FREE
for t in $TASK_TYPES $FREE; do
  ftops evalset import "$FTOPS_HOME/evalsets/$t.jsonl" --task-type "$t" > /dev/null
done
ftops evalset list

step "Stand-in teacher (failed calls) and LLM judge (support_reply) on port $JUDGE_PORT, from the simulator's truth"
setsid ftops simulate-judge --port "$JUDGE_PORT" > "$FTOPS_HOME/judge.log" 2>&1 &
JUDGE_PID=$!
UP_PID=""
trap 'kill -- "-$JUDGE_PID" 2>/dev/null || true' EXIT  # replaced by cleanup (which stops it too) once Airflow runs
export AIRFLOW_CONN_FTOPS_JUDGE="{\"conn_type\": \"openai\", \"host\": \"http://127.0.0.1:$JUDGE_PORT/v1\", \"password\": \"demo-judge\"}"
export AIRFLOW_CONN_FTOPS_TEACHER="{\"conn_type\": \"openai\", \"host\": \"http://127.0.0.1:$JUDGE_PORT/v1\", \"password\": \"demo-teacher\"}"
for _ in $(seq 1 30); do curl -s "http://127.0.0.1:$JUDGE_PORT/" > /dev/null 2>&1 && break; sleep 1; done
if [[ $DISTILL == 1 ]]; then
  step "Stand-in upstream model on port $UP_PORT: the 'large' hosted model (95 % right, 0.3 s an answer)"
  setsid ftops simulate-judge --port "$UP_PORT" --accuracy 0.95 --latency-s 0.3 > "$FTOPS_HOME/upstream.log" 2>&1 &
  UP_PID=$!
  trap 'kill -- "-$JUDGE_PID" "-$UP_PID" 2>/dev/null || true' EXIT
  export AIRFLOW_CONN_UPSTREAM_LARGE="{\"conn_type\": \"openai\", \"host\": \"http://127.0.0.1:$UP_PORT/v1\", \"password\": \"demo-upstream\"}"
  for _ in $(seq 1 30); do curl -s "http://127.0.0.1:$UP_PORT/" > /dev/null 2>&1 && break; sleep 1; done
fi

step "Demo config: the shipped config with demo durations (minutes, not a day) in $FTOPS_HOME/ftops-demo.yaml"
FTOPS_DEMO_DISTILL="$DISTILL" python - "$FTOPS_HOME/ftops-demo.yaml" <<'PY'
import os, sys, yaml
from ftops.core.config import apply_overrides, load_config
demo = {
    # One step at 50 % (shipped: 10 -> 50 -> 100 % over 24 h), then promote: at 10 % a canary gets a few calls a
    # minute from the demo's users, and showing "not worse" took it 5 minutes (2026-12-07 12:53 run); at 50 %, 1-3
    # minutes. A second step at 100 % cost the demo another ~1 min (2026-12-07 runs).
    "canary.ramp_percent": [50],
    "canary.traffic_percent": 50,
    # 18 s at least: a review (one ftops_canary run) takes ~30 s on 2 busy cores, so the step lasts until its calls
    # show "not worse" (~1-2 min) anyway
    "canary.duration_hours": 0.005,
    "canary.min_requests": 20,
    # The gateway shares 2 cores with Airflow's fine-tunes and reviews: every version's p95 is 1.2-1.9 s there,
    # and a canary at 2 052 ms was rolled back against a champion at 1 892 ms (the machine, not the model). The
    # relative limits (x1.5 and +200 ms against the champion's p95) still apply.
    "canary.max_latency_p95_ms": 5000,
    # A few hundred calls per step can show "not worse" only for large effects (shipped: 2 points of task
    # success and 0.2 stars, which take ~3 500 calls): the demo asks the canary to rule out 10 points and 0.5.
    "canary.min_effect": 0.1,
    "canary.min_rating_drop": 0.5,
    # The gate is the shipped one (+0.05 on the eval set, the gain's 95 % CI above 0): cycle 2 must learn
    # something its champion does not know (the drifted entities, from corrections and the teacher's answers).
    "teacher.enabled": True,               # the stand-in teacher answers failed and low-rated calls
    "teacher.model": "ftops-standin-teacher",
    "teacher.max_rows": 3000,              # both cycles fall on one UTC day (shipped: 200 a day)
    "teacher.max_cost": 10.0,
    # Two cycles minutes apart bring a few hundred calls, not a night's traffic: the dataset may grow past the
    # shipped 500 examples, and 40 new examples (shipped: 100) are enough to train again.
    "curation.target_size": 1000,
    "governor.min_new_examples": 40,
    # Validation loss was lowest at epoch 3-6 of 10 in every fine-tune of a 2026-12-07 run: stop 2 epochs after
    # the best (~1 min a cycle). Not free: the loss is noisy, and in one run of two sentiment v2 stopped at epoch 4
    # with its best at 2 (0.639 on the eval set, archived; 0.828 and promoted in the other run).
    "training.backend.early_stopping_patience": 2,
    "training.backend.threads": 1,         # two trainings or evaluations at once (the pool's 2 slots), one core each
    "governor.cooldown_hours": 0,          # cycle 2 comes minutes after cycle 1 (shipped: 24 h between trainings)
    # The packaged embedding model (all-MiniLM-L6-v2) puts prompts about different new cities in the same templates
    # at cosine 0.4-0.7 (median 0.38): at the shipped 0.8 only near-duplicates group, and no 10 of cycle 1's failures
    # form a pattern. At 0.65 the new entities' failures cluster (in a simulated sample, 35 of 45 members drifted),
    # so cycle 2 is started by error_pattern and reports the cluster's fix rate for candidate and champion.
    "governor.error_pattern_similarity": 0.65,
    # support_reply is free text: right in many wordings, so the stand-in judge decides its gate, not exact match
    "evaluation.metrics": {"support_reply": "judge"},
    "evaluation.judge.model": "ftops-standin-judge",
    # What the machine that serves the local model costs an hour (a small cloud VM without an accelerator, priced
    # high): each local call's decode time is priced with it, and the replacement gate needs it (0: unpriced, the
    # saving cannot be shown)
    "gate.compute_cost_per_hour": 0.5,
}
if os.environ.get("FTOPS_DEMO_DISTILL") == "1":
    # The student must learn every entity of the teacher's answers: stopped 2 epochs after the best validation loss
    # (dominated by the answers' fixed wording), city_extraction's student kept epoch 2 and scored 0.040 on the
    # eval set (2026-12-07 23:04 run). All 10 epochs: ~30 s a task type more.
    del demo["training.backend.early_stopping_patience"]
    # The student decodes on the 2 cores that also run Airflow's reviews and the users (p95 ~1.2 s while they
    # run); the upstream stand-in is another process answering in 0.3 s (p95 ~0.4 s through the gateway). With
    # the shipped +200 ms of slack the canary was rolled back for p95 1 240 ms > 605 ms (2026-12-08 00:13 run):
    # the machine, not the model. The replacement gate's absolute limit (2 000 ms, on the eval set) still applies.
    demo["canary.latency_margin_ms"] = 1500
cfg = apply_overrides(load_config(), demo)
open(sys.argv[1], "w").write(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
print("\n".join(f"  {k}: {v}" for k, v in demo.items()))
PY
export FTOPS_CONFIG="$FTOPS_HOME/ftops-demo.yaml"
if [[ -n "$FREE" ]]; then  # kappa against the eval set's labels; the gate needs >= min_kappa
  ftops judge calibrate --task-type "$FREE"
fi

step "Starting airflow standalone on port $PORT (log: $LOG)"
if curl -fs "http://127.0.0.1:$PORT" > /dev/null 2>&1; then
  echo "Port $PORT is in use: stop what listens there or set FTOPS_DEMO_PORT" >&2; exit 1
fi
setsid airflow standalone > "$LOG" 2>&1 &  # its own process group, so cleanup stops every component
AF_PID=$!
GW_PID="" TRAFFIC_PID=""
cleanup() {
  kill -- "-$JUDGE_PID" 2>/dev/null || true
  if [[ -n "$UP_PID" ]]; then kill -- "-$UP_PID" 2>/dev/null || true; fi
  if [[ -n "$TRAFFIC_PID" ]]; then kill -- "-$TRAFFIC_PID" 2>/dev/null || true; fi
  if [[ -n "$GW_PID" ]]; then kill -TERM -- "-$GW_PID" 2>/dev/null || true; fi
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

start_gateway() {
  step "Starting the gateway: ftops serve on port $GW_PORT (log: $GW_LOG)"
  setsid ftops serve --port "$GW_PORT" > "$GW_LOG" 2>&1 &
  GW_PID=$!
  for _ in $(seq 1 120); do
    curl -fs "http://127.0.0.1:$GW_PORT/healthz" > /dev/null 2>&1 && break
    kill -0 "$GW_PID" 2>/dev/null || { tail -40 "$GW_LOG"; echo "ftops serve exited" >&2; exit 1; }
    sleep 1
  done
  GW_URL="http://127.0.0.1:$GW_PORT/v1"
}

review_canaries() {
  step "Canary review: users keep calling while ftops_canary ramps, promotes or rolls back"
  # "Not worse" takes ~50-200 canary calls a task type (README, "Canary"): the users' call rate sets how long the
  # review lasts (3 at once: ~4 min; 6: about half). Not 8 as between the cycles: the two cores also run the
  # reviews, and a saturated machine pushes p95 towards the hard limit (a rollback for the wrong reason).
  # The users call the task types under review ($REVIEWED, rewritten by demo_wait.py as canaries come and go): with
  # every task type called, a lone canary got a sixth of the calls and its review took 6 min (2026-12-07 19:54 run).
  REVIEWED="$FTOPS_HOME/canary-task-types"
  : > "$REVIEWED"
  setsid bash -c 'seed=100; while :; do read -r -a types < "$2" || true; if [[ ${#types[@]} -eq 0 ]]; then sleep 1; continue; fi
      ftops simulate-traffic --base-url "$0" --requests 120 --concurrency 6 --seed $seed --drift-share "$1" \
        --conversation-share "$3" --task-types "${types[@]}" > /dev/null 2>&1 || sleep 2; seed=$((seed + 1)); done' \
    "$GW_URL" "$DRIFT" "$REVIEWED" "$CONVERSATIONS" &
  TRAFFIC_PID=$!
  python scripts/demo_wait.py canary "$CANARY_TIMEOUT_S" "$REVIEWED" || true
  kill -- "-$TRAFFIC_PID" 2>/dev/null || true
  TRAFFIC_PID=""
}

if [[ $DISTILL == 1 ]]; then
  step "Cycle 0: the upstream model is the champion (and a trusted teacher) of $TASK_TYPES"
  for t in $TASK_TYPES; do
    ftops register-upstream --task-type "$t" --connection upstream_large --model large-standin \
      --price-input 2.5 --price-output 10 --trusted-teacher --deploy > /dev/null
  done
  start_gateway
  step "Simulated users: $UP_TRAFFIC calls to the upstream champion through the gateway ($CONVERSATIONS conversations)"
  ftops simulate-traffic --base-url "$GW_URL" --requests "$UP_TRAFFIC" --concurrency 16 --seed 0 \
    --conversation-share "$CONVERSATIONS" || true
  step "Cycle 1: curate the upstream's answers, train a student, the replacement gate against the upstream"
  python scripts/demo_wait.py cycle "$TIMEOUT_S"
  review_canaries
  step "Distillation: the student against its teacher"
  python scripts/demo_distill_figures.py $TASK_TYPES
  # Then the learning cycle: new entities appear, as in `make demo`; a team adds labelled rows to its eval sets
  # (v2 = v1 + 300 rows a task type, half of them about the new entities: the simulator's eval rows cover every old
  # value too), and users ask about the new ones half the time
  DRIFT="${FTOPS_DEMO_LEARN_DRIFT:-0.5}"
  step "New entities: 300 labelled rows, 150 about them, join each eval set (v2)"
  ftops simulate-evalset --out "$FTOPS_HOME/evalsets-drift" --drift-share 0.5 --rows 300 --seed 7 --task-types $TASK_TYPES
  for t in $TASK_TYPES; do
    ftops evalset import "$FTOPS_HOME/evalsets-drift/$t.jsonl" --task-type "$t" > /dev/null
  done
  ftops evalset list
else
  step "Cycle 1: ftops_curate, then the governor and fine-tunes on their own"
  python scripts/demo_wait.py cycle "$TIMEOUT_S"
  start_gateway
fi

step "Simulated users: $TRAFFIC calls through the gateway, answers rated"
ftops simulate-traffic --base-url "$GW_URL" --requests "$TRAFFIC" --concurrency 8 --seed 1 \
  --drift-share "$DRIFT" --correction-share "$CORRECTIONS" --conversation-share "$CONVERSATIONS" || true

step "Cycle 2: curate the served traffic, train a candidate against the champion"
python scripts/demo_wait.py cycle "$TIMEOUT_S"

review_canaries

step "Summary"
ftops summary

step "ftops status: the dashboard, while Airflow still runs (exit code 1 would mean a source was unreachable)"
ftops status --decisions 8 || true
printf '\nTotal %d s. Explore it all in the UI: make ui, then http://127.0.0.1:8080\n' "$(( $(date +%s) - started ))"
