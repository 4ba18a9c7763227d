#!/usr/bin/env bash
# Start the embedded default under supervisord (scripts/supervisord.conf): the API server
# and UI, scheduler (LocalExecutor), DAG processor, triggerer and the model server, on SQLite, with
# Prometheus and the Pushgateway when they are installed (docs/monitoring.md).
# A component that crashes is restarted; Ctrl-C stops all of them, leftovers included.
# Called by `make run`, which sets AIRFLOW_HOME, AIRFLOW_CONFIG, PYTHONPATH and PATH.
set -euo pipefail
export MLOPS_PROJECT_ROOT="${MLOPS_PROJECT_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}"
export MLOPS_SERVER_PORT="${MLOPS_SERVER_PORT:-8501}"
export MLOPS_PROMETHEUS_PORT="${MLOPS_PROMETHEUS_PORT:-9090}"
export MLOPS_PUSHGATEWAY_PORT="${MLOPS_PUSHGATEWAY_PORT:-9091}"
export MLOPS_API_HOST="${MLOPS_API_HOST:-0.0.0.0}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
api="http://localhost:$AIRFLOW__API__PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-$api/execution/}"
mkdir -p "$AIRFLOW_HOME" "$MLOPS_ARTIFACT_ROOT"
# SQLite allows one writer at a time: wait up to 30 s for the lock instead of failing after 5 s
# (airflow.cfg gives task supervisors' API calls longer than that).
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db?timeout=30}"
# Every Airflow component must sign and check task tokens with the same secret;
# keep one per home, outside the repository.
secret_file="$AIRFLOW_HOME/jwt_secret"
[ -s "$secret_file" ] || python -c "import secrets; print(secrets.token_urlsafe(64))" >"$secret_file"
export AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$secret_file")"
passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$passwords}"
# The user's login, made once per home (the API server would otherwise make a new one).
[ -s "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" ] ||
  python -c "import json, secrets; print(json.dumps({'admin': secrets.token_urlsafe(12)}))" \
    >"$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"

echo "==> Preparing the metadata database in $AIRFLOW_HOME"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
# The pools (model_deploy: one deploy at a time; mlops_tuning: tuning trials training at once,
# $MLOPS_TUNING_POOL_SLOTS) and the Connections the tasks use (model_server_default, prometheus_default,
# pushgateway_default; kept when they exist, so edits in the UI stay), in one process.
python "$MLOPS_PROJECT_ROOT/scripts/prepare_home.py"
if ! command -v prometheus >/dev/null 2>&1 || ! command -v prometheus-pushgateway >/dev/null 2>&1; then
  echo "==> Prometheus or the Pushgateway is not installed: monitoring stays off" \
    "(install with: apt-get install prometheus prometheus-pushgateway)"
fi

echo "==> Starting the API server, scheduler, DAG processor, triggerer, model server, Prometheus and Pushgateway (logs: $AIRFLOW_HOME/*.log)"
# In a session of its own: what a crashed component leaves behind stays in that session.
python "$MLOPS_PROJECT_ROOT/scripts/stack_processes.py" session -- supervisord -c "$MLOPS_PROJECT_ROOT/scripts/supervisord.conf" &
supervisor_pid=$!
stop() {
  trap - INT TERM EXIT
  echo "==> Stopping every component"
  kill -TERM "$supervisor_pid" 2>/dev/null || true
  wait "$supervisor_pid" 2>/dev/null || true
  # Whatever is left in supervisord's session (no process group supervisord knows) ends too.
  python "$MLOPS_PROJECT_ROOT/scripts/stack_processes.py" reap --session "$supervisor_pid"
}
trap stop INT TERM EXIT

# Print the login only once the UI answers (the API server takes a while to start on 2 cores).
until curl -sf -o /dev/null "$api/api/v2/monitor/health" && curl -sf -o /dev/null "$api/"; do
  kill -0 "$supervisor_pid" 2>/dev/null || { echo "supervisord exited; see $AIRFLOW_HOME/supervisord.log"; exit 1; }
  sleep 1
done
password=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['admin'])" \
  "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
cat <<MSG
==> Airflow is ready (Ctrl-C stops everything)
    UI:        $api   login: admin / $password
    Models:    http://localhost:$MLOPS_SERVER_PORT/v1/models/diabetes/labels/stable  (after the first deploy)
    Prometheus: http://localhost:$MLOPS_PROMETHEUS_PORT  (alerts: /alerts; Pushgateway: http://localhost:$MLOPS_PUSHGATEWAY_PORT)
    Artifacts: $MLOPS_ARTIFACT_ROOT
    Status:    AIRFLOW_HOME=$AIRFLOW_HOME .venv/bin/supervisorctl -c scripts/supervisord.conf status
MSG
wait "$supervisor_pid"
