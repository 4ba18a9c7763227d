#!/usr/bin/env bash
# Start the embedded default: `airflow standalone` (SQLite, LocalExecutor) with the
# project's DAGs, after preparing the metadata DB and the deploy pool.
# Called by `make run`, which sets AIRFLOW_HOME, AIRFLOW_CONFIG, PYTHONPATH and PATH.
set -euo pipefail
mkdir -p "$AIRFLOW_HOME" "$MLOPS_ARTIFACT_ROOT"
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
passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
cat <<MSG
==> Starting Airflow standalone (Ctrl-C stops it)
    UI:        http://localhost:8080
    Login:     user 'admin', password in $passwords (written at first start)
    Artifacts: $MLOPS_ARTIFACT_ROOT
MSG
exec airflow standalone
