"""The kubernetes backend on a real cluster: runs only where a kubeconfig is present.

With kind (see docs/backends.md):
    kind create cluster && kind load docker-image mlops-trainer:local
    kubectl apply -k include/k8s/overlays/kind
    .venv/bin/python -m pytest -m k8s tests/containers/test_k8s_live.py
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.sdk import DAG

pytestmark = [pytest.mark.k8s]


def kubeconfig() -> Path | None:
    path = Path(os.environ.get("KUBECONFIG", Path.home() / ".kube" / "config"))
    return path if path.is_file() else None


@pytest.mark.skipif(kubeconfig() is None, reason="no kubeconfig (KUBECONFIG or ~/.kube/config): no cluster to run on")
def test_snapshot_step_runs_as_a_pod_and_returns_its_result() -> None:
    from mlops_airflow.container_operators import KubernetesStepOperator

    with DAG(dag_id="k8s_live_test", schedule=None):
        task = KubernetesStepOperator(
            task_id="snapshot",
            step="snapshot",
            model="diabetes",
            step_arguments={"interval_start": "2026-11-19T00:00:00+00:00", "interval_end": "2026-11-20T00:00:00+00:00"},
            deferrable=False,
            startup_timeout_seconds=300,
            schedule_timeout_seconds=300,
        )
    pushed: dict[str, object] = {}
    ti = SimpleNamespace(
        xcom_push=lambda key, value: pushed.__setitem__(key, value),
        dag_id="k8s_live_test",
        task_id="snapshot",
        map_index=-1,
        try_number=1,
        run_id="manual__k8s",
    )
    context = {"ti": ti, "task_instance": ti, "dag_run": SimpleNamespace(run_id="manual__k8s"), "run_id": "manual__k8s"}
    result = task.execute(context)
    assert result["rows"] > 0 and len(result["sha256"]) == 64
    assert result["data_uri"].startswith(str(task.volume_mounts[0].mount_path))
    assert pushed["pod_namespace"] == "mlops-steps"
