"""The kubernetes backend's result path, offline: no XCom sidecar, the result comes from the artifact share.

The operator's real ``trigger_reentry`` (where a deferred step task resumes
once its pod finished) runs against a stub Kubernetes API server on loopback
that serves one finished pod object and records every request; that stands in
for the cluster only.  The step's result file is a real file in a real artifact
root, at the path the operator itself put into the pod's ``--result-file``.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG
from stub_kube_api import stub_kubeconfig

from include.mlops.artifacts import atomic_write_json
from include.mlops.cli import build_parser
from mlops_airflow.container_operators import KubernetesStepOperator
from mlops_airflow.step_pods import StepResultError
from mlops_airflow.steps import StepBadInputError

RUN_ID = "manual__2026-11-20T00:00:00+00:00"
POD_NAME = "diabetes-snapshot-abc123"
NAMESPACE = "mlops-steps"


def finished_pod(exit_code: int) -> dict[str, Any]:
    """A pod object as the API server returns it once the step container terminated."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD_NAME, "namespace": NAMESPACE, "labels": {"mlops/step": "snapshot", "try_number": "1"}},
        "spec": {"containers": [{"name": "base", "image": "mlops-trainer:local"}]},
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": "base",
                    "image": "mlops-trainer:local",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}
                    },
                }
            ],
        },
    }


class StubApi(http.server.BaseHTTPRequestHandler):
    """Serves ``pod`` (or 404 when None), its log and a list holding it; records each request as 'METHOD path'."""

    pod: dict[str, Any] | None = None
    requests: list[str] = []

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        pod = type(self).pod
        if pod is None:
            not_found = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
            self._send(404, json.dumps(not_found).encode())
        elif self.path.split("?")[0].endswith("/log"):
            self._send(200, b"snapshot: 442 rows\n", "text/plain")
        elif self.command == "GET" and self.path.split("?")[0].endswith("/pods"):
            self._send(
                200, json.dumps({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod]}).encode()
            )
        else:
            self._send(200, json.dumps(pod).encode())

    do_GET = do_PATCH = do_DELETE = do_POST = _handle

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[Path]:
    StubApi.pod, StubApi.requests = None, []
    with stub_kubeconfig(StubApi, tmp_path) as path:
        yield path


@pytest.fixture
def share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One artifact root, mounted at the same path in the pods and on the worker (the contract)."""
    root = tmp_path / "mnt" / "mlops-artifacts"
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", str(root))
    monkeypatch.setenv("MLOPS_K8S_ARTIFACT_ROOT", str(root))
    return root


def make_task(kubeconfig: Path) -> KubernetesStepOperator:
    with DAG(dag_id="lifecycle__diabetes", schedule=None):
        task = KubernetesStepOperator(
            task_id="snapshot",
            step="snapshot",
            model="diabetes",
            step_arguments={"interval_start": "2026-11-19T00:00:00+00:00", "interval_end": "2026-11-20T00:00:00+00:00"},
            in_cluster=False,
            config_file=str(kubeconfig),
        )
    task.result_file_wait_s = 0
    return task


def task_context(task: KubernetesStepOperator, try_number: int = 1) -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id=task.dag_id,
        task_id=task.task_id,
        map_index=-1,
        try_number=try_number,
        run_id=RUN_ID,
        xcom_push=lambda key, value: None,
        xcom_pull=lambda *args, **kwargs: None,
    )
    dag_run = SimpleNamespace(run_id=RUN_ID, dag_id=task.dag_id, run_type="manual", conf={})
    return {"ti": ti, "task_instance": ti, "dag_run": dag_run, "run_id": RUN_ID, "params": {}, "dag": task.dag}


def result_file_of_pod(task: KubernetesStepOperator, context: dict[str, Any]) -> Path:
    """The ``--result-file`` the operator puts into the pod it would submit."""
    pod = task.build_pod_request_obj(context, dry_run=True)
    (container,) = pod.spec.containers
    return Path(build_parser().parse_args(container.args[2:]).result_file)


def event(status: str = "success") -> dict[str, Any]:
    return {"status": status, "name": POD_NAME, "namespace": NAMESPACE, "message": f"pod {status}"}


def test_result_is_read_from_the_share_after_the_pod_succeeded(kubeconfig: Path, share: Path) -> None:
    task = make_task(kubeconfig)
    context = task_context(task)
    result_file = result_file_of_pod(task, context)
    # In the run folder on the share, beside (not inside) the --out folder the step replaces as a whole.
    out = share / "runs" / "lifecycle__diabetes" / "manual__2026-11-20T00_00_00_00_00" / "snapshot"
    assert result_file == out.parent / ".snapshot.result-try1.json"
    expected = {"data_uri": str(out / "data.parquet"), "rows": 442, "sha256": "a" * 64}
    atomic_write_json(result_file, expected)  # what the step CLI does with --result-file
    StubApi.pod = finished_pod(0)

    assert task.trigger_reentry(context, event()) == expected
    # Read once, then tidied away; the pod was deleted (delete_succeeded_pod); nothing needed exec or attach.
    assert not result_file.exists()
    assert f"DELETE /api/v1/namespaces/{NAMESPACE}/pods/{POD_NAME}" in StubApi.requests
    assert not [r for r in StubApi.requests if "/exec" in r or "/attach" in r], StubApi.requests


def test_each_try_has_its_own_result_file(kubeconfig: Path, share: Path) -> None:
    task = make_task(kubeconfig)
    first, second = (result_file_of_pod(task, task_context(task, n)) for n in (1, 2))
    assert first != second and first.parent == second.parent
    atomic_write_json(first, {"rows": 1})
    StubApi.pod = finished_pod(0)
    # A second try never returns the first try's result.
    with pytest.raises(StepResultError, match="does not exist"):
        task.trigger_reentry(task_context(task, 2), event())


def test_result_of_a_pod_the_cluster_already_deleted_is_still_read(kubeconfig: Path, share: Path) -> None:
    task = make_task(kubeconfig)
    context = task_context(task)
    atomic_write_json(result_file_of_pod(task, context), {"rows": 442})
    StubApi.pod = None  # garbage-collected between the trigger firing and the task resuming
    assert task.trigger_reentry(context, event()) == {"rows": 442}


def test_missing_result_file_names_the_path_and_the_pod(kubeconfig: Path, share: Path) -> None:
    task = make_task(kubeconfig)
    context = task_context(task)
    result_file = result_file_of_pod(task, context)
    StubApi.pod = finished_pod(0)
    with pytest.raises(StepResultError) as raised:
        task.trigger_reentry(context, event())
    message = str(raised.value)
    assert str(result_file) in message and POD_NAME in message
    assert "MLOPS_K8S_ARTIFACT_ROOT" in message and "MLOPS_ARTIFACT_ROOT" in message


@pytest.mark.parametrize(("content", "problem"), [("{'rows': 4", "is not valid JSON"), ("[1, 2]", "not a JSON object")])
def test_garbled_result_file_names_the_path_and_the_pod(
    kubeconfig: Path, share: Path, content: str, problem: str
) -> None:
    task = make_task(kubeconfig)
    context = task_context(task)
    result_file = result_file_of_pod(task, context)
    result_file.parent.mkdir(parents=True)
    result_file.write_text(content)
    StubApi.pod = finished_pod(0)
    with pytest.raises(StepResultError, match=problem) as raised:
        task.trigger_reentry(context, event())
    assert str(result_file) in str(raised.value) and POD_NAME in str(raised.value)


def test_missing_result_file_is_waited_for_while_the_share_catches_up(kubeconfig: Path, share: Path) -> None:
    task = make_task(kubeconfig)
    task.result_file_wait_s = 10
    context = task_context(task)
    result_file = result_file_of_pod(task, context)
    StubApi.pod = finished_pod(0)
    # The file shows up on the worker's side a moment after the pod finished (NFS attribute caching).
    timer = threading.Timer(0.5, atomic_write_json, args=(result_file, {"rows": 7}))
    timer.start()
    try:
        assert task.trigger_reentry(context, event()) == {"rows": 7}
    finally:
        timer.cancel()


def test_failed_pod_keeps_its_exit_code_rule_and_reads_no_result(kubeconfig: Path, share: Path) -> None:
    task = make_task(kubeconfig)
    context = task_context(task)
    result_file = result_file_of_pod(task, context)
    atomic_write_json(result_file, {"stale": True})
    StubApi.pod = finished_pod(3)
    with pytest.raises(StepBadInputError, match=f"step 'snapshot' of model 'diabetes' failed in pod {POD_NAME}"):
        task.trigger_reentry(context, event("failed"))
    assert result_file.exists()


def test_sync_execution_reads_the_result_from_the_share_too(kubeconfig: Path, share: Path) -> None:
    task = make_task(kubeconfig)
    task.deferrable = False
    context = task_context(task)
    atomic_write_json(result_file_of_pod(task, context), {"rows": 442})
    # The stub lists the finished pod for the task's labels, so the operator attaches to it instead of creating one.
    StubApi.pod = finished_pod(0)
    assert task.execute(context) == {"rows": 442}
    assert not [r for r in StubApi.requests if "/exec" in r or "/attach" in r], StubApi.requests


def test_on_s3_the_pod_gets_uris_and_the_worker_reads_the_result_from_the_bucket(
    kubeconfig: Path, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3_stand_in import BUCKET

    from include.mlops import artifact_store

    root = f"s3://{BUCKET}/pod-results-{tmp_path.name}"
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", root)
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "worker"))
    task = make_task(kubeconfig)
    context = task_context(task)
    pod = task.build_pod_request_obj(context, dry_run=True)
    (container,) = pod.spec.containers
    args = build_parser().parse_args(container.args[2:])
    # The pod has a mirror of its own (/scratch), so it is told where things are as URIs.
    run = f"{root}/runs/lifecycle__diabetes/manual__2026-11-20T00_00_00_00_00"
    assert args.out == f"{run}/snapshot"
    assert args.result_file == f"{run}/.snapshot.result-try1.json"

    # What the step CLI in the pod does: write in its mirror, then publish.
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "pod"))
    pod_store = artifact_store.current()
    written = Path(pod_store.localize(args.result_file))
    expected = {"data_uri": f"{run}/snapshot/data.parquet", "rows": 442, "sha256": "a" * 64}
    atomic_write_json(written, expected)
    pod_store.push(written)
    monkeypatch.setenv("MLOPS_STAGING_DIR", str(tmp_path / "worker"))
    StubApi.pod = finished_pod(0)

    assert task.trigger_reentry(context, event()) == expected
