# Environment for running FT-Ops locally on embedded defaults. Source it: `. scripts/env.sh`.
# Every value can be overridden by setting it before sourcing.
FTOPS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FTOPS_ROOT
export FTOPS_HOME="${FTOPS_HOME:-$FTOPS_ROOT/.ftops}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$FTOPS_HOME/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$FTOPS_ROOT/dags}"
export AIRFLOW__CORE__PLUGINS_FOLDER="${AIRFLOW__CORE__PLUGINS_FOLDER:-$FTOPS_ROOT/plugins}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS:-True}"
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"
export GX_ANALYTICS_ENABLED=False DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false MLFLOW_ENABLE_TELEMETRY=false DO_NOT_TRACK=1
export PATH="$FTOPS_ROOT/.venv/bin:$PATH"
# Login off makes every visitor an admin, so the API server (and the UI) then listens on this machine only.
# To serve the network, turn login on: AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=False (users in
# AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS, passwords generated under $AIRFLOW_HOME).
if [[ "${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS,,}" == "true" ]]; then
  export AIRFLOW__API__HOST=127.0.0.1
fi
