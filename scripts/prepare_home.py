"""Prepare ``make run``'s metadata DB in one process: its pools and Connections.

    python scripts/prepare_home.py

scripts/run_local.sh runs this after ``airflow db migrate``.  One process
instead of one ``airflow`` command per pool and Connection (each pays Airflow's
import, about 2-3 s on 2 cores) saves about 20 s of every ``make run``.

- Pools are set, created or updated: ``model_deploy`` (1 slot: one deploy at a
  time) and ``mlops_tuning`` (``$MLOPS_TUNING_POOL_SLOTS``, default 2: tuning
  trials training at once).
- Connections are added when missing and otherwise kept as they are (a user
  may have pointed one elsewhere in the UI): ``model_server_default``,
  ``prometheus_default`` and ``pushgateway_default``, on localhost at
  ``$MLOPS_SERVER_PORT``, ``$MLOPS_PROMETHEUS_PORT`` and ``$MLOPS_PUSHGATEWAY_PORT``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

# name -> (slots, or the variable holding them and its default; description)
POOLS: dict[str, tuple[int | tuple[str, int], str]] = {
    "model_deploy": (1, "One model deploy at a time"),
    "mlops_tuning": (("MLOPS_TUNING_POOL_SLOTS", 2), "Tuning trials training at once"),
}
# conn_id -> (the variable holding its localhost port, description)
CONNECTIONS: dict[str, tuple[str, str]] = {
    "model_server_default": ("MLOPS_SERVER_PORT", "Model server (TF Serving REST API)"),
    "prometheus_default": ("MLOPS_PROMETHEUS_PORT", "Prometheus (SLO figures)"),
    "pushgateway_default": ("MLOPS_PUSHGATEWAY_PORT", "Prometheus Pushgateway (drift scores)"),
}


def _integer(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise SystemExit(f"set {name} before preparing the Airflow home")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a whole number") from None
    if value < 1:
        raise SystemExit(f"{name}={raw!r} must be at least 1")
    return value


def pool_slots(env: Mapping[str, str]) -> dict[str, tuple[int, str]]:
    """Each pool's slots (read from the environment where the slots are a variable) and description."""
    slots = {}
    for name, (count, description) in POOLS.items():
        slots[name] = (count if isinstance(count, int) else _integer(env, *count), description)
    return slots


def connection_ports(env: Mapping[str, str]) -> dict[str, tuple[int, str]]:
    """Each Connection's localhost port and description."""
    return {conn_id: (_integer(env, variable), text) for conn_id, (variable, text) in CONNECTIONS.items()}


def main() -> int:
    pools, connections = pool_slots(os.environ), connection_ports(os.environ)
    from airflow.models.connection import Connection
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session
    from sqlalchemy import select

    for name, (slots, description) in pools.items():
        Pool.create_or_update_pool(name, slots, description, include_deferred=False)
    with create_session() as session:
        for conn_id, (port, description) in connections.items():
            if session.scalar(select(Connection).where(Connection.conn_id == conn_id).limit(1)) is None:
                session.add(
                    Connection(conn_id=conn_id, conn_type="http", host="localhost", port=port, description=description)
                )
                print(f"added Connection {conn_id} (localhost:{port})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
