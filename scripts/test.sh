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
echo "== mypy"; mypy
echo "== pytest (FTOPS_HOME=$FTOPS_HOME)"
set +e
python -m pytest --durations=25 "$@"  # the 25 slowest: what each end-to-end test costs
rc=$?
set -e
if [[ $rc -eq 5 ]]; then echo "pytest collected no tests: failing loudly" >&2; exit 1; fi
exit $rc
