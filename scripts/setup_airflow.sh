#!/usr/bin/env bash
# Prepare the local Airflow metadata DB under $AIRFLOW_HOME: migrate, and create the one-slot pools the DAGs use
# (airflow_settings.yaml does the same for `astro dev start`). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
(umask 077 && mkdir -p "$AIRFLOW_HOME")  # 0700 (and FTOPS_HOME above it) when made here
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { tail -20 "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
# FTOPS_TRAINING_SLOTS > 1 runs that many trainings or evaluations at once (the demo: 2, torch on one thread each)
airflow pools set ftops_training "${FTOPS_TRAINING_SLOTS:-1}" "trainings or evaluations at once" > /dev/null
airflow pools set ftops_versioning 1 "one DVC writer at a time" > /dev/null
airflow pools set ftops_aliases 1 "one registry alias move at a time" > /dev/null
