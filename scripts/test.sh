#!/usr/bin/env bash
# The test suite: lint, type-check, then pytest (unit → DAG integrity → integration end to end).
# Runs on embedded defaults in a throw-away FTOPS_HOME; the PostgreSQL tests use 127.0.0.1:5432 when it is
# reachable and are required to run when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
export FTOPS_HOME="${FTOPS_TEST_HOME:-$(mktemp -d /tmp/ftops-test.XXXXXX)}"
export AIRFLOW_HOME="$FTOPS_HOME/airflow"
. scripts/env.sh
if [[ "${CI:-}" == "true" ]]; then export FTOPS_REQUIRE_POSTGRES=1; fi

echo "== ruff"; ruff check dags include plugins tests benchmarks
echo "== mypy"; mypy
echo "== pytest (FTOPS_HOME=$FTOPS_HOME)"
set +e
python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then echo "pytest collected no tests: failing loudly" >&2; exit 1; fi
exit $rc
