#!/usr/bin/env bash
# First start: initdb with POSTGRES_USER as the superuser and POSTGRES_PASSWORD as its password, then
# create POSTGRES_DB. Every start: run the command (postgres) as the postgres user, as PID 1.
set -euo pipefail

if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
  echo "error: POSTGRES_PASSWORD is not set; the database would accept no network login" >&2
  exit 1
fi
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [[ "$(id -u)" == 0 ]]; then
  # A fresh named volume is owned by root: hand it (and the socket folder) to postgres, then drop root.
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  pwfile=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"
  # Inside the container (socket) logins are trusted, as in the official image; over the network every
  # login needs the password.
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  if [[ "$POSTGRES_DB" != postgres ]]; then
    # A private start on the socket only, so nobody connects before the database exists.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    # On stdin, since psql quotes :"db" (the name as an identifier) there but not in -c.
    echo 'CREATE DATABASE :"db";' |
      psql -v ON_ERROR_STOP=1 -v db="$POSTGRES_DB" --username "$POSTGRES_USER" --dbname postgres >/dev/null
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "database $POSTGRES_DB initialised for $POSTGRES_USER"
fi

exec "$@"
