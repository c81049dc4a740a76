#!/usr/bin/env bash
# The test suite: lint, type-check, then pytest (unit → DAG integrity → integration end to end).
# Runs on embedded defaults in a throw-away FTOPS_HOME; the PostgreSQL tests use 127.0.0.1:5432 when it is
# reachable and are required to run when CI=true. So are the distributed run (PostgreSQL and Redis: the
# CeleryExecutor with two workers) and the browser tests (the FT-Ops page in the Airflow UI, driven by
# Playwright in the system's Chromium): with CI=true, Chromium is installed here when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export FTOPS_HOME="${FTOPS_TEST_HOME:-$(mktemp -d /tmp/ftops-test.XXXXXX)}"
export AIRFLOW_HOME="$FTOPS_HOME/airflow"
. scripts/env.sh
if [[ "${CI:-}" == "true" ]]; then export FTOPS_REQUIRE_POSTGRES=1 FTOPS_REQUIRE_BROWSER=1 FTOPS_REQUIRE_DISTRIBUTED=1; fi
if [[ "${FTOPS_REQUIRE_BROWSER:-}" == "1" ]] && ! command -v chromium > /dev/null && [[ ! -x /usr/bin/chromium ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get > /dev/null; then
    echo "== installing chromium for the browser tests (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium > /dev/null || { apt-get update -q > /dev/null && apt-get install -y -q chromium > /dev/null; }
  else
    echo "The browser tests need Chromium and CI=true requires them: install it (apt-get install -y chromium, as" \
         "root) or put a chromium on PATH. They will fail until then." >&2
  fi
fi

echo "== ruff"; ruff check dags include plugins tests benchmarks
# Slow work that needs no test runs beside the tests, so CI waits for it less: mypy (~2 min on a fresh clone, one
# core; its verdict is printed, and counts, after pytest) and, for the whole suite with CI=true, the distributed run
# (~4 min of services starting and one-core work; test_distributed.py collects its report).
(umask 077 && mkdir -p "$FTOPS_HOME")
background=()
trap 'for pid in "${background[@]}"; do kill -- "-$pid" 2>/dev/null || true; done' EXIT
setsid mypy > "$FTOPS_HOME/mypy.log" 2>&1 &
MYPY_PID=$!
background+=("$MYPY_PID")
echo "== base model for the end-to-end tests (~100 s; $FTOPS_HOME/base-model.log)"
ftops build-base-model > "$FTOPS_HOME/base-model.log" 2>&1 \
  || { tail -30 "$FTOPS_HOME/base-model.log"; echo "building the base model failed" >&2; exit 1; }
if [[ "${FTOPS_REQUIRE_DISTRIBUTED:-}" == "1" && $# -eq 0 ]]; then
  export FTOPS_DISTRIBUTED_RUN="$FTOPS_HOME/distributed"
  mkdir -p "$FTOPS_DISTRIBUTED_RUN"
  echo "== the distributed run, in the background ($FTOPS_DISTRIBUTED_RUN/e2e.log)"
  # the arguments test_distributed.py passes when it runs it itself (its ARGS)
  setsid bash -c 'python scripts/e2e_distributed.py --root "$0/machines" --base-model "$1" --report "$0/report.json" \
      --target-size 250 --threads 1 > "$0/e2e.log" 2>&1; echo $? > "$0/rc"' \
    "$FTOPS_DISTRIBUTED_RUN" "$FTOPS_HOME/models/tiny-gpt2" &
  background+=("$!")
fi
echo "== pytest (FTOPS_HOME=$FTOPS_HOME)"
set +e
python -m pytest --durations=25 "$@"  # the 25 slowest: what each end-to-end test costs
rc=$?
echo "== mypy (ran beside the tests)"
wait "$MYPY_PID"
mypy_rc=$?
set -e
cat "$FTOPS_HOME/mypy.log"
if [[ $rc -eq 5 ]]; then echo "pytest collected no tests: failing loudly" >&2; exit 1; fi
if [[ $mypy_rc -ne 0 ]]; then echo "mypy failed (exit $mypy_rc)" >&2; exit 1; fi
exit $rc
