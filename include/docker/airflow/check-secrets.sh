#!/usr/bin/env bash
# Refuses placeholder secrets before docker-compose's airflow-init sets anything up: each variable must hold a
# real secret, not .env.example's change-me or another well-known default, because the API server is published
# on every interface.  Arguments are .env names, or NAME=VARIABLE where the container holds NAME's value under
# another variable.  Exit 1 with one line per offending .env name; values are never printed.
#   check-secrets.sh AIRFLOW_FERNET_KEY=AIRFLOW__CORE__FERNET_KEY POSTGRES_PASSWORD ...
set -uo pipefail

is_placeholder() {
  local value="${1,,}"
  value="${value//[-_ .]/}"
  case "$value" in
    "" | changeme* | replaceme* | setme* | secret | password | admin | airflow | default | example | todo | xxxx*)
      return 0 ;;
  esac
  return 1
}

failed=0
for argument in "$@"; do
  name="${argument%%=*}"
  variable="${argument#*=}"
  if is_placeholder "${!variable-}"; then
    echo "ERROR: $name in .env is empty or a placeholder; set a real secret (e.g. \`openssl rand -hex 32\`; .env.example says how for each), then rerun airflow-init." >&2
    failed=1
  fi
done
exit "$failed"
