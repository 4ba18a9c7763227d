"""The docker-compose topology, the Airflow image's Dockerfile and the CI workflow, checked offline.

Images cannot be pulled here, so the compose file is validated and resolved by the real
``docker-compose config`` (v1.29, Debian's ``docker-compose`` package) and the resolved topology is
asserted: the services of Airflow 3's official compose file on the LocalExecutor, one built image,
the project mounts, health checks and start order, and secrets that only ever come from ``.env``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfiles import final_stage
from dotenv import dotenv_values
from tooling import require_executable

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "include" / "docker" / "airflow" / "Dockerfile"
DOCKERFILE_REL = "include/docker/airflow/Dockerfile"
DEFAULT_BASE_IMAGE = "apache/airflow:3.3.2-python3.11"

AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-init",
)
LONG_RUNNING_AIRFLOW = tuple(s for s in AIRFLOW_SERVICES if s != "airflow-init")
REQUIRED_SERVICES = ("postgres", *AIRFLOW_SERVICES)

# Environment keys that hold a secret; *_FILE keys hold a path to one, not the secret itself.
SECRET_KEY = re.compile(r"PASSWORD|PASSWD|FERNET|SECRET|TOKEN|_KEY$", re.IGNORECASE)
# A secret value must be a bare reference (${VAR} or ${VAR:?message}): a ${VAR:-default} would commit
# the default as a literal secret.
ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?\?[^}]*)?\}")
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://(?P<user>[^:/@\s]+):(?P<password>[^@\s]+)@", re.IGNORECASE)
REQUIRED_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?")

INSTALL_HINT = (
    "the compose tests need it to validate docker-compose.yaml. Install it with "
    "`apt-get install -y --no-install-recommends docker-compose` (Debian/Ubuntu; .ci/run does this)."
)


def _compose(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    executable = require_executable("docker-compose", INSTALL_HINT)
    # Only PATH and HOME, so neither the caller's shell variables nor a developer's own .env (replaced by
    # --env-file) leak into what the test sees.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [executable, "--env-file", str(env_file), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """``docker-compose config`` of the file with .env.example's values: what `up` would run."""
    result = _compose("config", env_file=ENV_EXAMPLE)
    assert result.returncode == 0, f"docker-compose config rejected docker-compose.yaml:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(resolved: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return resolved["services"]


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else "\n".join(command)


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host source of each mount ("src:dst[:mode]" as v1's config prints them)."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in _strings(key) + _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def test_services_follow_the_official_topology_on_the_local_executor(services: dict[str, dict[str, Any]]) -> None:
    missing = [name for name in REQUIRED_SERVICES if name not in services]
    assert not missing, f"services missing from docker-compose.yaml: {missing}"
    # LocalExecutor: the official file's Celery pieces have no place here.
    assert not {"redis", "airflow-worker", "flower"} & services.keys()
    for name in AIRFLOW_SERVICES:
        assert services[name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
    assert services["airflow-apiserver"]["command"] == "api-server"
    assert services["airflow-scheduler"]["command"] == "scheduler"
    assert services["airflow-dag-processor"]["command"] == "dag-processor"
    assert services["airflow-triggerer"]["command"] == "triggerer"


def test_every_airflow_service_runs_the_one_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    airflow_services = [name for name in services if name.startswith("airflow-")]
    tags = {services[name]["image"] for name in airflow_services}
    assert len(tags) == 1, f"Airflow services should share one image tag, got {tags}"
    for name in airflow_services:
        build = services[name].get("build")
        assert build, f"{name} does not build the project image"
        assert Path(build["context"]) == ROOT, name
        assert build["dockerfile"] == DOCKERFILE_REL, name
        assert build["args"]["AIRFLOW_IMAGE"] == DEFAULT_BASE_IMAGE, name
    assert not services["postgres"].get("build"), "postgres should run its upstream image, not ours"


def test_project_folders_are_mounted_over_the_image_project(services: dict[str, dict[str, Any]]) -> None:
    # The image carries the project and says where (its ENV); compose mounts the checkout over those
    # paths, so the services import the code being edited, and sets none of the three itself.
    image_env = final_stage(DOCKERFILE).env
    import_roots = image_env["PYTHONPATH"].split(":")
    for name in AIRFLOW_SERVICES:
        mounts = _mounts(services[name])
        for folder, target in (("dags", "AIRFLOW__CORE__DAGS_FOLDER"), ("plugins", "AIRFLOW__CORE__PLUGINS_FOLDER")):
            assert Path(mounts.get(image_env[target], "")) == ROOT / folder, (
                f"{name}: {folder}/ is not mounted at the image's {target}={image_env[target]}"
            )
        # `include` is imported as a top-level package from an import root of the image.
        assert any(Path(mounts.get(f"{root}/include", "")) == ROOT / "include" for root in import_roots), (
            f"{name}: include/ is not mounted under an entry of the image's PYTHONPATH {import_roots}"
        )
        env = services[name]["environment"]
        for key in ("PYTHONPATH", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER"):
            assert env.get(key, image_env[key]) == image_env[key], f"{name}: {key} differs from the image's"
        assert "/opt/airflow/artifacts" in mounts, f"{name}: no artifact root mount"
        assert env["MLOPS_ARTIFACT_ROOT"] == "/opt/airflow/artifacts"
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
        assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "false"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"


def test_components_share_every_secret_they_must_agree_on(services: dict[str, dict[str, Any]]) -> None:
    # A JWT secret or Fernet key that differs between components breaks tasks or connections at run time.
    shared = (
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    )
    for key in shared:
        values = {services[name]["environment"].get(key) for name in AIRFLOW_SERVICES}
        assert len(values) == 1 and None not in values, f"{key} differs between Airflow services: {values}"


def _published(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Each published port; v1's config prints ports bound to a host IP as "IP:PUBLISHED:TARGET/PROTO"."""
    ports: list[dict[str, Any]] = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            host_ip, published, target = port.split("/")[0].rsplit(":", 2)
            ports.append({"host_ip": host_ip, "published": int(published), "target": int(target)})
        else:
            ports.append({"published": int(port["published"]), "target": int(port["target"])})
    return ports


MONITORING_SERVICES = {"prometheus": 9090, "pushgateway": 9091, "grafana": 3000}


def test_only_the_api_server_publishes_a_port_on_every_interface(services: dict[str, dict[str, Any]]) -> None:
    assert {"published": 8080, "target": 8080} in _published(services["airflow-apiserver"])
    everywhere = sorted(
        name for name, service in services.items() if any("host_ip" not in p for p in _published(service))
    )
    assert everywhere == ["airflow-apiserver"], f"unexpected published ports: {everywhere}"
    # No login of their own (the model server, Prometheus, the Pushgateway; Grafana's admin aside):
    # loopback only.
    for name, port in {"model-server": 8501, **MONITORING_SERVICES}.items():
        assert _published(services[name]) == [{"host_ip": "127.0.0.1", "published": port, "target": port}], name


def test_the_model_server_is_exposed_to_other_hosts_only_on_purpose(tmp_path: Path) -> None:
    # docs/compose.md: MODEL_SERVER_BIND_ADDRESS=0.0.0.0 in .env, behind something that authenticates.
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "\nMODEL_SERVER_BIND_ADDRESS=0.0.0.0\nMODEL_SERVER_PORT=18501\n")
    result = _compose("config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    server = yaml.safe_load(result.stdout)["services"]["model-server"]
    assert _published(server) == [{"host_ip": "0.0.0.0", "published": 18501, "target": 8501}]


def test_monitoring_services_mount_the_project_configs_read_only(services: dict[str, dict[str, Any]]) -> None:
    def mounts(name: str) -> dict[str, tuple[str, str]]:
        found = {}
        for volume in services[name]["volumes"]:
            source, target, *mode = str(volume).split(":")
            found[target] = (source, mode[0] if mode else "rw")
        return found

    expected = {
        "prometheus": {
            "/etc/prometheus/prometheus.yml": "include/monitoring/prometheus.yml",
            "/etc/prometheus/rules": "include/monitoring/rules",
        },
        "grafana": {
            "/etc/grafana/provisioning": "include/monitoring/grafana/provisioning",
            "/etc/grafana/dashboards": "include/monitoring/grafana/dashboards",
        },
    }
    for name, wanted in expected.items():
        found = mounts(name)
        for target, source in wanted.items():
            assert target in found, f"{name} does not mount {target}"
            assert found[target][0] == str(ROOT / source) and found[target][1] == "ro", (name, found[target])
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    # The prometheus.yml that compose mounts scrapes the compose services and loads the mounted rules.
    config = yaml.safe_load((ROOT / "include" / "monitoring" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["model-server"] == ["model-server:8501"] and targets["pushgateway"] == ["pushgateway:9091"]
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    datasources = yaml.safe_load(
        (ROOT / "include/monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert [d["url"] for d in datasources] == ["http://prometheus:9090"]
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        assert environment["AIRFLOW_CONN_PROMETHEUS_DEFAULT"] == "http://prometheus:9090", name
        assert environment["AIRFLOW_CONN_PUSHGATEWAY_DEFAULT"] == "http://pushgateway:9091", name


def test_monitoring_images_can_be_overridden(raw_compose: dict[str, Any]) -> None:
    # Images cannot be pulled everywhere (offline CI builds its own); each one is a variable with a default.
    for name in MONITORING_SERVICES:
        assert re.fullmatch(r"\$\{[A-Z_]+_IMAGE:-[^}]+\}", raw_compose["services"][name]["image"]), name


def test_model_server_serves_the_registry_the_dags_write(services: dict[str, dict[str, Any]]) -> None:
    server = services["model-server"]
    assert server["build"]["dockerfile"] == "include/docker/server/Dockerfile"
    # docker-compose v1 renders bind mounts as "SOURCE:TARGET[:MODE]".
    mounts = [str(v).split(":")[:2] for v in server["volumes"]]
    assert any(src.endswith("/artifacts") and dst == "/opt/mlops/artifacts" for src, dst in mounts), mounts
    assert server["command"] == ["--registry", "/opt/mlops/artifacts/models"]
    assert server.get("healthcheck")
    # It writes its prediction log under the artifact root, which airflow-init hands to AIRFLOW_UID.
    assert server["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    for name in AIRFLOW_SERVICES:
        assert services[name]["environment"]["AIRFLOW_CONN_MODEL_SERVER_DEFAULT"] == "http://model-server:8501"


def test_init_migrates_the_db_sets_up_the_admin_and_creates_the_deploy_pool(
    services: dict[str, dict[str, Any]],
) -> None:
    init = services["airflow-init"]
    script = _command_text(init)
    assert "airflow db migrate" in script
    assert 'airflow pools set model_deploy 1 "one deploy at a time"' in script
    # Rendered by compose: MLOPS_TUNING_POOL_SLOTS is unset in .env.example, so the default of 2 slots.
    assert 'airflow pools set mlops_tuning "2" "tuning trials training at once"' in script
    # The admin's password comes from .env and lands in the file SimpleAuthManager reads.
    env_example = dotenv_values(ENV_EXAMPLE)
    env = init["environment"]
    assert env["_MLOPS_ADMIN_PASSWORD"] == env_example["AIRFLOW_ADMIN_PASSWORD"]
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == f"{env_example['AIRFLOW_ADMIN_USERNAME']}:admin"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] in script
    assert "_MLOPS_ADMIN_PASSWORD" in script
    # Only init needs the plain password; long-running services read the file.
    for name in LONG_RUNNING_AIRFLOW:
        assert "_MLOPS_ADMIN_PASSWORD" not in services[name]["environment"], name
    assert str(init.get("restart", "no")) == "no", "a one-shot init must not be restarted"


def test_health_checks_and_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", *LONG_RUNNING_AIRFLOW, *MONITORING_SERVICES):
        check = services[name].get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
    assert "http://localhost:8080/api/v2/version" in services["airflow-apiserver"]["healthcheck"]["test"]
    assert "http://localhost:8974/health" in services["airflow-scheduler"]["healthcheck"]["test"]
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"

    for name in AIRFLOW_SERVICES:
        depends_on = services[name]["depends_on"]
        assert depends_on["postgres"]["condition"] == "service_healthy", name
        if name != "airflow-init":
            assert depends_on["airflow-init"]["condition"] == "service_completed_successfully", name
    # A service_healthy condition on a service without a health check would block `up` forever.
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if spec.get("condition") == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{name} waits on {dependency}, which has no check"


def test_no_secret_literals_in_the_compose_file(raw_compose: dict[str, Any]) -> None:
    offenders: list[str] = []
    environments = [raw_compose.get("x-airflow-common", {}).get("environment", {})]
    environments += [service.get("environment", {}) for service in raw_compose["services"].values()]
    for environment in environments:
        for key, value in environment.items():
            if SECRET_KEY.search(key) and not key.endswith("_FILE"):
                if not ENV_REFERENCE.fullmatch(str(value)):
                    offenders.append(f"{key}={value!r}")
    for text in _strings(raw_compose):
        for match in URL_CREDENTIALS.finditer(text):
            if not ENV_REFERENCE.fullmatch(match["password"]):
                offenders.append(f"credentials in URL {match[0]!r}")
    assert not offenders, f"secrets must come from .env as ${{VAR:?...}} references: {offenders}"


def test_missing_secrets_stop_compose_with_a_pointer_to_env(tmp_path: Path) -> None:
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    result = _compose("config", env_file=empty_env)
    assert result.returncode != 0, "docker-compose accepted the file without any secrets set"
    assert "in .env" in result.stderr, result.stderr


def test_env_example_declares_every_required_variable_with_placeholders_only(raw_compose: dict[str, Any]) -> None:
    required = {name for text in _strings(raw_compose) for name in REQUIRED_VARIABLE.findall(text)}
    assert required, "expected the secrets to be required (${VAR:?...}) variables"
    example = dotenv_values(ENV_EXAMPLE)
    assert not required - example.keys(), f".env.example lacks {sorted(required - example.keys())}"
    secrets = {name: value for name, value in example.items() if SECRET_KEY.search(name)}
    assert secrets, ".env.example declares no secrets"
    for name, value in secrets.items():
        assert value in ("", "change-me"), f".env.example must hold placeholders, not real secrets: {name}"
    assert ".env" in ROOT.joinpath(".gitignore").read_text().splitlines(), ".env must be gitignored"


def test_the_airflow_image_base_is_the_pinned_airflow() -> None:
    # The base image's Airflow must be the version requirements.txt pins, or pip swaps Airflow out.
    pins = dict(line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    assert f"ARG AIRFLOW_IMAGE={DEFAULT_BASE_IMAGE}" in DOCKERFILE.read_text()
    assert DEFAULT_BASE_IMAGE.split(":")[1].startswith(pins["apache-airflow"] + "-")


def test_docker_build_context_excludes_venv_runs_and_secrets() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (".git", ".venv", ".env", "artifacts", "logs"):
        assert entry in ignored, f".dockerignore should exclude {entry}"
    assert "requirements.txt" not in ignored and "*" not in ignored


def test_ci_workflow_runs_the_project_entry_point() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    (job,) = workflow["jobs"].values()
    # The workflow runs what the project's CI runs, so the two cannot drift apart.
    assert job["steps"][-1]["run"].strip().endswith("bash .ci/run")


CI_DIR = ROOT / "include" / "docker" / "ci"


def test_ci_images_replace_every_official_image_but_grafanas(tmp_path: Path) -> None:
    # What CI runs (include/docker/ci/images.env over .env.example): only images built on the machine,
    # except Grafana's, which nothing here can build (its service is checked by `config` only).
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text() + "\n" + (CI_DIR / "images.env").read_text())
    result = _compose("config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    local = set(dotenv_values(CI_DIR / "images.env").values())
    official = {name: s["image"] for name, s in services.items() if s["image"] not in local}
    assert official == {"grafana": "grafana/grafana:10.4.2"}, official
    assert services["airflow-apiserver"]["build"]["args"]["AIRFLOW_IMAGE"] in local
    assert services["model-server"]["build"]["args"]["BASE_IMAGE"] in local


def test_the_airflow_stand_in_keeps_the_official_images_contract() -> None:
    # The project image (include/docker/airflow/Dockerfile) and docker-compose.yaml rely on these.
    pins = dict(line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    env = final_stage(CI_DIR / "airflow" / "Dockerfile").env
    assert env["AIRFLOW_VERSION"] == pins["apache-airflow"], "the stand-in must install the pinned Airflow"
    assert (env["AIRFLOW_UID"], env["AIRFLOW_HOME"], env["AIRFLOW_USER_HOME_DIR"]) == (
        "50000",
        "/opt/airflow",
        "/home/airflow",
    )


CHECK_SECRETS = ROOT / "include" / "docker" / "airflow" / "check-secrets.sh"


def _check_secrets(*arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    bash = require_executable("bash", "runs airflow-init's secret check")
    return subprocess.run(
        [bash, str(CHECK_SECRETS), *arguments],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_init_refuses_every_placeholder_secret_by_its_env_name(services: dict[str, dict[str, Any]]) -> None:
    """The API server listens on every interface: change-me (or admin, airflow...) must not get that far."""
    init = services["airflow-init"]
    script = _command_text(init)
    call = re.search(r"check-secrets\.sh((?:[^\n]*\\\n)*[^\n]*)", script)
    assert call, "airflow-init does not run include/docker/airflow/check-secrets.sh"
    arguments = call[1].replace("\\\n", " ").split()
    assert script.index("check-secrets.sh") < script.index("airflow db migrate"), "check before setting anything up"
    checked = dict(argument.partition("=")[::2] for argument in arguments)
    # Every secret of .env.example is checked, under a variable airflow-init really has, fed from that .env name.
    secrets = {name for name in dotenv_values(ENV_EXAMPLE) if SECRET_KEY.search(name)}
    assert set(checked) == secrets
    # The raw file (anchors merged by YAML), so that each variable's source is the .env reference itself.
    raw_env = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["airflow-init"]["environment"]
    for name, variable in checked.items():
        assert re.search(rf"\$\{{{name}[:}}]", str(raw_env.get(variable, ""))), f"{variable} is not fed from {name}"

    real = dict.fromkeys(checked.values(), "k9Fq2vX7pL3mZ8wR")
    assert _check_secrets(*arguments, **real).returncode == 0
    for name, variable in checked.items():
        for placeholder in ("change-me", "", "CHANGEME", "admin"):
            result = _check_secrets(*arguments, **{**real, variable: placeholder})
            assert result.returncode != 0, f"{name}={placeholder!r} was accepted"
            assert f"ERROR: {name} in .env" in result.stderr, result.stderr
