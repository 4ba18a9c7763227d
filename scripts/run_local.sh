#!/usr/bin/env bash
# Start the embedded default: `airflow standalone` (SQLite, LocalExecutor) with the
# project's DAGs, after preparing the metadata DB and the deploy pool.
# Called by `make run`, which sets AIRFLOW_HOME, AIRFLOW_CONFIG, PYTHONPATH and PATH.
set -euo pipefail
MLOPS_SERVER_PORT="${MLOPS_SERVER_PORT:-8501}"
mkdir -p "$AIRFLOW_HOME" "$MLOPS_ARTIFACT_ROOT"
# SQLite allows one writer at a time: wait up to 30 s for the lock instead of failing after 5 s.
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite:///$AIRFLOW_HOME/airflow.db?timeout=30}"
# Every Airflow component must sign and check task tokens with the same secret;
# keep one per home, outside the repository.
secret_file="$AIRFLOW_HOME/jwt_secret"
[ -s "$secret_file" ] || python -c "import secrets; print(secrets.token_urlsafe(64))" >"$secret_file"
export AIRFLOW__API_AUTH__JWT_SECRET="$(cat "$secret_file")"
echo "==> Preparing the metadata database in $AIRFLOW_HOME"
airflow db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
airflow pools set model_deploy 1 "One model deploy at a time" >/dev/null
echo "==> Checking the DAG files"
airflow dags list-import-errors --output plain 2>/dev/null | grep -v "^No data found" || true
# The deploy task finds the model server through this Connection (edit it in the UI to point elsewhere).
airflow connections get model_server_default >/dev/null 2>&1 ||
  airflow connections add model_server_default --conn-type http --conn-host localhost \
    --conn-port "$MLOPS_SERVER_PORT" --conn-description "Model server (TF Serving REST API)" >/dev/null

echo "==> Starting the model server on http://localhost:$MLOPS_SERVER_PORT (registry: $MLOPS_ARTIFACT_ROOT/models)"
python -m include.mlops.serving --registry "$MLOPS_ARTIFACT_ROOT/models" --port "$MLOPS_SERVER_PORT" \
  >"$AIRFLOW_HOME/model-server.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  curl -sf "http://localhost:$MLOPS_SERVER_PORT/monitoring/prometheus/metrics" >/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { echo "model server failed to start:"; tail -20 "$AIRFLOW_HOME/model-server.log"; exit 1; }
  sleep 1
done

passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<MSG
==> Starting Airflow standalone (Ctrl-C stops it)
    UI:        http://localhost:8080
    Login:     user 'admin', password in $passwords (written at first start)
    Models:    http://localhost:$MLOPS_SERVER_PORT/v1/models/diabetes  (after the first deploy)
    Artifacts: $MLOPS_ARTIFACT_ROOT
MSG
airflow standalone
