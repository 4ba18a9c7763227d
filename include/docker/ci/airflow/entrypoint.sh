#!/usr/bin/env bash
# The stand-in's entrypoint: the part of apache/airflow's /entrypoint that docker-compose.yaml relies on.
#   /entrypoint bash ...    -> bash ...       /entrypoint python ...  -> python ...
#   /entrypoint airflow X   -> airflow X      /entrypoint X ...       -> airflow X ...
# Before any of them it waits for the metadata DB's port (CONNECTION_CHECK_MAX_COUNT tries, 0 skips,
# CONNECTION_CHECK_SLEEP_TIME seconds apart), as upstream does.
set -euo pipefail
umask 0002

# An arbitrary UID (AIRFLOW_UID=$(id -u) in .env) has no passwd entry: add one with the airflow home.
if ! whoami >/dev/null 2>&1; then
  if [[ -w /etc/passwd ]]; then
    echo "default:x:$(id -u):0:default user:${AIRFLOW_USER_HOME_DIR}:/sbin/nologin" >>/etc/passwd
  fi
  export HOME="${AIRFLOW_USER_HOME_DIR}"
fi

if [[ "${CONNECTION_CHECK_MAX_COUNT:-20}" -gt 0 && -n "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-}" ]]; then
  python - <<'PY'
import os
import socket
import sys
import time
from urllib.parse import urlsplit

url = urlsplit(os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
backend = url.scheme.split("+")[0]
ports = {"postgresql": 5432, "postgres": 5432, "mysql": 3306}
if backend in ports and url.hostname:
    port = url.port or ports[backend]
    tries = int(os.environ.get("CONNECTION_CHECK_MAX_COUNT", "20"))
    pause = float(os.environ.get("CONNECTION_CHECK_SLEEP_TIME", "3"))
    for attempt in range(1, tries + 1):
        try:
            socket.create_connection((url.hostname, port), timeout=5).close()
            break
        except OSError as exc:
            if attempt == tries:
                sys.exit(f"the metadata DB at {url.hostname}:{port} did not answer after {tries} tries: {exc}")
            time.sleep(pause)
PY
fi

case "${1:-}" in
  bash) shift; exec /bin/bash "$@" ;;
  python) shift; exec python "$@" ;;
  airflow) shift ;;
esac
exec airflow "$@"
