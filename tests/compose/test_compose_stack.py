"""docker-compose.yaml for real: the whole stack up, one lifecycle run deployed through it.

As the README's compose section goes: a ``.env`` with real secrets and a real Fernet key,
``docker-compose up -d``, every service healthy, a login through ``/auth/token``, lifecycle__diabetes
unpaused and triggered over REST, and its model served by the ``model-server`` service.  The images
are the ones built on this machine (``include/docker/ci/build.sh``: stand-ins for the official images,
which cannot be pulled here).  One stack for the module; ``down -v`` at the end.  On failure every
service's last log lines are printed.  3 to 4.5 minutes on two cores (measured: 60-111 s to healthy,
110-135 s the run).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from compose_stack import BUILD_HINT, DIABETES_ROW, ComposeStack, compose_stack, local_images
from tooling import require_executable, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.compose]

DAG_ID = "lifecycle__diabetes"


def _require_engine_and_images() -> None:
    require_executable("docker-compose", "install it with `apt-get install -y docker-compose` (.ci/run does).")
    docker = require_executable("docker", "install Docker (.ci/run does).")
    if subprocess.run([docker, "info"], capture_output=True, check=False).returncode != 0:
        unavailable("no Docker engine reachable (`docker info` failed)")
    images = sorted(set(local_images().values()))
    found = subprocess.run([docker, "image", "inspect", *images], capture_output=True, text=True, check=False)
    present = {tag for entry in json.loads(found.stdout or "[]") for tag in entry.get("RepoTags", [])}
    missing = [image for image in images if image not in present]
    if missing:
        unavailable(f"compose images not built: {', '.join(missing)}; {BUILD_HINT}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    _require_engine_and_images()
    with compose_stack(tmp_path_factory.mktemp("compose")) as running:
        seconds = running.up()
        print(f"compose stack healthy in {seconds:.0f}s")
        yield running


def test_every_service_comes_up_healthy(stack: ComposeStack) -> None:
    containers = stack.containers()
    assert set(containers) == set(stack.services()), "a service did not start"
    assert "grafana" not in containers
    for name, container in containers.items():
        state = container["State"]
        if name == "airflow-init":
            assert (state["Status"], state["ExitCode"]) == ("exited", 0)
        else:
            assert state["Health"]["Status"] == "healthy", name
    # The model server has no login: it is published on loopback only, unless a user says otherwise.
    bindings = containers["model-server"]["HostConfig"]["PortBindings"]["8501/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"], bindings
    # The admin password of .env is the only way in.
    denied = httpx.post(f"{stack.api_url}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=30)
    assert denied.status_code == 401, denied.text


def test_a_lifecycle_run_deploys_version_1_and_the_model_server_serves_it(stack: ComposeStack) -> None:
    start = time.monotonic()
    run = stack.run_dag(DAG_ID)
    print(f"{DAG_ID} run {run['dag_run_id']}: {run['state']} in {time.monotonic() - start:.0f}s")
    assert run["state"] == "success", run["task_states"]
    assert run["task_states"]["deploy"] == "success", run["task_states"]
    # Unpausing added no scheduled run beside the triggered one (a run of a later date is the
    # scheduler's next nightly, when the run crossed midnight UTC).
    beside = [(run_id, date) for run_id, date in run["all_runs"] if date <= run["logical_date"]]
    assert beside == [(run["dag_run_id"], run["logical_date"])], run["all_runs"]

    status = httpx.get(f"{stack.server_url}/v1/models/diabetes/labels/stable", timeout=10)
    assert status.status_code == 200, status.text
    assert [(s["version"], s["state"]) for s in status.json()["model_version_status"]] == [("1", "AVAILABLE")]
    predicted = httpx.post(
        f"{stack.server_url}/v1/models/diabetes/labels/stable:predict",
        json={"instances": [DIABETES_ROW, DIABETES_ROW]},
        timeout=10,
    )
    assert predicted.status_code == 200, predicted.text
    predictions = predicted.json()["predictions"]
    # Disease progression a year on: the diabetes target lies between 25 and 346.
    assert len(predictions) == 2 and 25 < predictions[0][0] < 350, predictions
    # The registry the DAG wrote is the one the service serves: the host's artifact folder.
    assert (stack.artifacts / "models" / "diabetes" / "1" / "saved_model.pb").is_file()


def test_prometheus_scrapes_the_model_server_and_the_pushgateway(stack: ComposeStack) -> None:
    wanted = {"model-server", "pushgateway", "prometheus"}
    deadline = time.monotonic() + 60
    while True:
        response = httpx.get(f"{stack.prometheus_url}/api/v1/targets", timeout=10)
        response.raise_for_status()
        health = {t["labels"]["job"]: t["health"] for t in response.json()["data"]["activeTargets"]}
        if all(health.get(job) == "up" for job in wanted) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert {job: health.get(job) for job in wanted} == dict.fromkeys(wanted, "up"), health
