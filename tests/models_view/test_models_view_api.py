"""The Models view through a real Airflow API server (FAB auth manager), with tokens from POST /auth/token.

One server for the module: synthetic histories of two models (diabetes, digits)
in the real layout (benchmarks/ui.py), an admin, and a reader whose FAB role
may read lifecycle__diabetes only.  One run is triggered through the REST API,
so the page joins a run the metadata DB knows with its run folder.
"""

from __future__ import annotations

import datetime as dt
import html.parser
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from models_view.monitor_runs import write_monitor_run
from models_view.server import ApiServer, api_server

from benchmarks.ui import write_history
from include.mlops import artifacts
from include.mlops.config import load_model_config
from include.mlops.registry.label_log import LOG_NAME

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"username": "admin", "password": "admin-pass", "role": "Admin"}
READER = {"username": "reader", "password": "reader-pass", "role": "DiabetesReader", "dags": ["lifecycle__diabetes"]}
TRIGGERED = "manual__2026-11-20T10:00:00+00:00"
MOVE = {"at": "2027-01-02T03:04:05.000+00:00", "label": "stable", "from": 3, "to": 2, "pid": 4242, "host": "worker-1",
        "run": "manual__2027-01-02", "task": "deploy", "reason": "rolled back: canary errors"}  # fmt: skip
# Train and tune records in the run folders of the versions compared (v1 trained, v3 tuned).
TRAINED = {"learning_rate": 0.01, "batch_size": 32, "epochs": 20}
TUNED = {"learning_rate": 0.003, "batch_size": 64, "epochs": 20}


def write_training_records(root: Path, written: dict[str, Any]) -> None:
    registry = artifacts.registry_root(root) / "diabetes"
    for version in (1, 3):
        run_id = json.loads((registry / str(version) / "assets.extra" / "lineage.json").read_text())["run_id"]
        artifacts.atomic_write_json(
            artifacts.run_dir("lifecycle__diabetes", run_id, "train", root=root) / "history.json",
            {"hparams": TRAINED, "val_loss": 0.5},
        )
        if version == 3:
            trials = [
                {"trial": 0, "hparams": TRAINED, "val_loss": 0.4},
                {"trial": 2, "hparams": TUNED, "val_loss": 0.3},
            ]
            artifacts.atomic_write_json(
                artifacts.run_dir("lifecycle__diabetes", run_id, "tune_select", root=root) / "trials.json",
                {"trials": trials, "best": 2},
            )


class Elements(html.parser.HTMLParser):
    """Every start tag of a page with its attributes (the contract names ids and classes)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str, cls: str | None = None, id_: str | None = None) -> list[dict[str, str]]:
        return [
            attrs
            for name, attrs in self.tags
            if name == tag
            and (cls is None or cls in attrs.get("class", "").split())
            and (id_ is None or attrs.get("id") == id_)
        ]


@pytest.fixture(scope="module")
def view(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("models-view")
    root = workdir / "artifacts"
    written = {}
    for name, versions, runs in (("diabetes", 3, 12), ("digits", 2, 8)):
        config = load_model_config(PROJECT_ROOT / "include" / "models" / f"{name}.yaml")
        written[name] = write_history(root, config, versions=versions, runs=runs)
    # A file slipped into a version after registering: its checksum status must say so.
    (artifacts.registry_root(root) / "digits" / "1" / "extra.bin").write_bytes(b"not registered")
    write_training_records(root, written["diabetes"])
    # A line a later writer enriched with keys of its own; and digits' log predates the audit log.
    moves = artifacts.registry_root(root) / "diabetes" / LOG_NAME
    with open(moves, "a", encoding="utf-8") as log:
        log.write(json.dumps({**MOVE, "ticket": "OPS-7"}) + "\n")
    (artifacts.registry_root(root) / "digits" / LOG_NAME).unlink()
    with api_server(workdir, root, [ADMIN, READER]) as server:
        # The DAGs in the DB (as the DAG processor would put them), then one run triggered over REST.
        server.airflow("dags", "reserialize")
        admin = server.token(ADMIN["username"], ADMIN["password"])
        with server.client(admin) as client:
            response = client.post(
                "/api/v2/dags/lifecycle__diabetes/dagRuns",
                json={"dag_run_id": TRIGGERED, "logical_date": "2026-11-20T10:00:00+00:00"},
            )
            assert response.status_code == 200, response.text
        gate = artifacts.run_dir("lifecycle__diabetes", TRIGGERED, "gate", root=root)
        decision = {"passed": False, "override": False, "checks": [], "reasons": ["r2 = 0.1 violates the threshold"]}
        artifacts.atomic_write_json(gate / "decision.json", {"decision": decision, "route": "optimize"})
        yield {
            "server": server,
            "root": root,
            "written": written,
            "admin": admin,
            "reader": server.token(READER["username"], READER["password"]),
        }


def get(view: dict[str, Any], path: str, user: str | None = "admin", **kwargs: Any) -> httpx.Response:
    server: ApiServer = view["server"]
    with server.client(view[user] if user else None) as client:
        return client.get(path, **kwargs)


ENDPOINTS = (
    "/mlops/api/models",
    "/mlops/api/models/diabetes",
    "/mlops/api/models/diabetes/versions/1",
    "/mlops/models",
    "/mlops/models/diabetes",
    "/mlops/models/diabetes/quality-history.png",
    "/mlops/models/diabetes/versions/1/report.html",
    "/mlops/models/by-dag/lifecycle__diabetes",
)


def test_every_endpoint_answers_401_without_credentials(view: dict[str, Any]) -> None:
    for path in ENDPOINTS:
        response = get(view, path, user=None, follow_redirects=False)
        assert response.status_code == 401, path
    page = get(view, "/mlops/models", user=None)
    assert "/auth/login/" in page.text, "the page without a login offers Airflow's login"


def test_models_lists_each_model_with_its_stable_version_metrics_and_deployment(view: dict[str, Any]) -> None:
    response = get(view, "/mlops/api/models")
    assert response.status_code == 200
    models = {m["name"]: m for m in response.json()["models"]}
    assert sorted(models) == ["diabetes", "digits"]
    diabetes = models["diabetes"]
    stable = view["written"]["diabetes"]["versions"][-1]
    assert diabetes["stable_version"] == stable and diabetes["labels"] == {"stable": stable}
    registered = json.loads(
        (artifacts.registry_root(view["root"]) / "diabetes" / str(stable) / "assets.extra" / "metrics.json").read_text()
    )
    assert diabetes["headline_metrics"] == {m: registered[m] for m in ("r2", "mae", "size_mb", "latency_ms")}
    deployed_by = next(
        run
        for run in view["written"]["diabetes"]["runs"]
        if artifacts.safe_segment(run) == diabetes["deployed"]["run_folder"]
    )
    assert diabetes["deployed"]["run_id"] == deployed_by, "the exact run id, not the sanitised folder name"
    assert diabetes["deployed"]["links"]["run"] == f"/dags/lifecycle__diabetes/runs/{quote(deployed_by, safe='')}"
    assert diabetes["last_run"]["run_id"] == TRIGGERED and diabetes["last_run"]["state"] == "queued"
    assert models["digits"]["last_run"] is None


def test_model_detail_has_versions_gate_decisions_rejections_and_history(view: dict[str, Any]) -> None:
    body = get(view, "/mlops/api/models/diabetes").json()
    written = view["written"]["diabetes"]
    assert [v["version"] for v in body["versions"]] == sorted(written["versions"], reverse=True)
    for version in body["versions"]:
        assert version["override"] == (version["version"] in written["overrides"])
        assert version["gate_outcome"] in ("passed", "passed by override")
        assert version["lineage"]["run_id"] in written["runs"]
        assert version["links"]["task_log"].endswith("/tasks/register")
        assert version["checksum_problems"] == []
    rejected = {r["folder"]: r for r in body["rejected"]}
    for run in written["rejected"]:
        row = rejected[artifacts.safe_segment(run)]
        assert row["decision"]["task_id"] == "gate_optimized" and row["decision"]["reasons"]
    triggered = rejected[artifacts.safe_segment(TRIGGERED)]
    assert triggered["run_id"] == TRIGGERED and triggered["state"] == "queued"
    assert triggered["links"]["task_log"].endswith("/tasks/gate")
    assert {h["run_type"] for h in body["history"]} == {"backfill", "manual", "scheduled"}
    assert len(body["history"]) == len(written["runs"]) + 1


def test_version_endpoint_verifies_checksums_and_returns_the_model_card(view: dict[str, Any]) -> None:
    good = get(view, "/mlops/api/models/diabetes/versions/1").json()
    assert good["checksums"]["verified"] is True and good["checksums"]["problems"] == []
    assert good["model_card"].startswith("# diabetes version 1")
    tampered = get(view, "/mlops/api/models/digits/versions/1").json()
    assert tampered["checksums"]["verified"] is False
    assert tampered["checksums"]["problems"] == ["extra.bin is not listed in checksums.json"]
    table = get(view, "/mlops/api/models/digits").json()["versions"]
    assert [v["checksum_problems"] for v in table if v["version"] == 1] == [
        ["extra.bin is not listed in checksums.json"]
    ]


def test_pages_have_the_tables_plot_and_links_the_contract_names(view: dict[str, Any]) -> None:
    models = Elements(get(view, "/mlops/models").text)
    assert models.find("table", id_="models")
    assert [a["href"] for a in models.find("a", "model-link")] == ["/mlops/models/diabetes", "/mlops/models/digits"]
    response = get(view, "/mlops/models/diabetes")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = Elements(response.text)
    assert page.find("table", id_="versions")
    assert len(page.find("tr", "version")) == len(view["written"]["diabetes"]["versions"])
    plot = page.find("img", id_="quality-history")
    assert plot, "the quality history plot"
    image = get(view, plot[0]["src"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG\r\n\x1a\n")
    run_links = [a["href"] for a in page.find("a", "run-link")]
    assert run_links and all(h.startswith("/dags/lifecycle__diabetes/runs/") for h in run_links)
    assert any(h.endswith("/tasks/register") for h in (a["href"] for a in page.find("a", "log-link")))
    reports = [a["href"] for a in page.find("a", "report-link")]
    assert all(get(view, href).status_code == 200 for href in reports[:3]) and reports
    assert page.find("div", id_="model-card")


def test_the_page_works_with_the_ui_login_cookie(view: dict[str, Any]) -> None:
    server: ApiServer = view["server"]
    with httpx.Client(base_url=server.base_url, cookies={"_token": view["admin"]}) as browser:
        assert browser.get("/mlops/models/diabetes").status_code == 200


def test_a_user_sees_only_the_models_whose_dag_they_may_read(view: dict[str, Any]) -> None:
    listed = get(view, "/mlops/api/models", user="reader").json()["models"]
    assert [m["name"] for m in listed] == ["diabetes"]
    assert get(view, "/mlops/api/models/diabetes", user="reader").status_code == 200
    for path in [p.replace("diabetes", "digits") for p in ENDPOINTS if "diabetes" in p]:
        response = get(view, path, user="reader", follow_redirects=False)
        assert response.status_code == 403, path
    assert "digits" not in get(view, "/mlops/models", user="reader").text


def test_unknown_models_versions_and_runs_are_404(view: dict[str, Any]) -> None:
    for path in (
        "/mlops/api/models/nope",
        "/mlops/models/nope",
        "/mlops/api/models/diabetes/versions/99",
        "/mlops/api/models/diabetes/versions/0",
        "/mlops/api/models/diabetes/versions/one",
        "/mlops/models/diabetes/versions/99/report.html",
        "/mlops/models/diabetes/runs/manual__1999-01-01/evaluate/report.html",
        "/mlops/models/diabetes/runs/backfill__2023-01-01T00_00_00_00_00/train/report.html",
        "/mlops/models/by-dag/some_other_dag",
    ):
        assert get(view, path).status_code == 404, path
    assert "no model named 'nope'" in get(view, "/mlops/api/models/nope").json()["detail"]


def test_path_traversal_is_refused(view: dict[str, Any]) -> None:
    run = artifacts.safe_segment(view["written"]["diabetes"]["runs"][1])
    attempts = (
        "/mlops/api/models/..%2F..%2F..%2Fetc%2Fpasswd",
        "/mlops/api/models/%2Fetc%2Fpasswd",
        "/mlops/api/models/..",
        "/mlops/api/models/.stub-model",
        "/mlops/api/models/diabetes%2F..%2Fdigits",
        "/mlops/api/models/diabetes/versions/..%2F..%2Fdigits%2F1",
        "/mlops/api/models/diabetes/versions/%2Fetc%2Fpasswd",
        "/mlops/models/diabetes/versions/1%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd/report.html",
        "/mlops/models/diabetes/runs/..%2F..%2Fmodels%2Fdiabetes%2F1/evaluate/report.html",
        f"/mlops/models/diabetes/runs/{run}/..%2F..%2F..%2Fmodels/report.html",
        "/mlops/models/diabetes/runs/%2Fetc/evaluate/report.html",
        "/mlops/models/diabetes/monitor/..%2F..%2Fmodels%2Fdiabetes%2F1/report.html",
        "/mlops/models/diabetes/monitor/..%2F..%2F..%2Fetc%2Fpasswd",
        "/mlops/models/runs/quality-history.png",
        "/mlops/models/models.config",
    )
    for path in attempts:
        response = get(view, path, follow_redirects=False)
        assert response.status_code == 404, (path, response.status_code, response.text[:200])
        assert "root:" not in response.text


def test_the_view_is_read_only(view: dict[str, Any]) -> None:
    server: ApiServer = view["server"]
    with server.client(view["admin"]) as client:
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert client.request(method, "/mlops/api/models/diabetes").status_code == 405, method


def test_the_ui_gets_a_models_entry_and_a_model_tab_on_dag_pages(view: dict[str, Any]) -> None:
    plugins = get(view, "/api/v2/plugins").json()["plugins"]
    views = {v["name"]: v for p in plugins for v in p["external_views"]}
    assert views["Models"]["href"] == "/mlops/models" and views["Models"]["destination"] == "nav"
    assert views["Model"]["destination"] == "dag" and "{DAG_ID}" in views["Model"]["href"]
    for dag_id in ("lifecycle__diabetes", "monitor__diabetes"):
        tab = get(view, views["Model"]["href"].replace("{DAG_ID}", dag_id), follow_redirects=False)
        assert tab.status_code == 307 and tab.headers["location"] == "/mlops/models/diabetes"
    assert get(view, "/api/v2/plugins/importErrors").json()["import_errors"] == []


def test_a_user_without_access_gets_the_same_answer_for_a_hidden_and_an_unknown_model(view: dict[str, Any]) -> None:
    named = [p for p in ENDPOINTS if "diabetes" in p] + [
        "/mlops/models/diabetes/compare?a=1&b=2",
        "/mlops/api/models/diabetes/compare?a=1&b=2",
        "/mlops/models/diabetes/runs/some_run/evaluate/report.html",
        "/mlops/models/diabetes/monitor/some_run/report.html",
    ]
    for path in named:
        hidden = get(view, path.replace("diabetes", "digits"), user="reader", follow_redirects=False)
        unknown = get(view, path.replace("diabetes", "nope"), user="reader", follow_redirects=False)
        assert (hidden.status_code, unknown.status_code) == (403, 403), path
        assert hidden.text.replace("digits", "X") == unknown.text.replace("nope", "X"), path
    assert get(view, "/mlops/api/models/nope").status_code == 404, "who may read every DAG still learns it is unknown"


def test_every_report_route_serves_a_sandboxed_document(view: dict[str, Any]) -> None:
    page = Elements(get(view, "/mlops/models/diabetes").text)
    reports = {a["href"] for a in page.find("a", "report-link")}
    assert any("/versions/" in r for r in reports) and any("/evaluate_optimized/" in r for r in reports)
    for href in reports:
        response = get(view, href)
        assert response.status_code == 200, href
        assert response.headers["content-security-policy"] == "sandbox", href
        assert response.headers["x-content-type-options"] == "nosniff", href


def test_compare_shows_two_versions_side_by_side_with_the_differences_marked(view: dict[str, Any]) -> None:
    body = get(view, "/mlops/api/models/diabetes/compare?a=1&b=3").json()
    assert (body["a"]["version"], body["b"]["version"]) == (1, 3) and body["b"]["labels"] == ["stable"]
    sections = {s["id"]: {r["key"]: r for r in s["rows"]} for s in body["sections"]}
    assert sections["metrics"]["r2"]["differs"] and sections["metrics"]["size_mb"]["differs"] is False
    assert sections["hyperparameters"]["learning_rate"] == {
        "key": "learning_rate",
        "a": 0.01,
        "b": 0.003,
        "differs": True,
    }
    assert sections["hyperparameters"]["epochs"]["differs"] is False
    assert sections["training"]["trial"]["b"] == 2 and sections["training"]["source"]["a"].startswith("the train step")
    assert sections["data"]["data_interval_start"]["differs"] and sections["data"]["code_version"]["differs"] is False
    assert sections["gate"]["outcome"]["a"] in ("passed", "passed by override")
    assert body["model_cards"]["a"].startswith("# diabetes version 1")
    page = get(view, "/mlops/models/diabetes/compare?a=1&b=3")
    assert page.status_code == 200
    elements = Elements(page.text)
    differing = {row["data-key"] for row in elements.find("tr", "differs")}
    assert {"r2", "learning_rate", "batch_size", "data_interval_start", "run_id"} <= differing
    assert "epochs" not in differing and "code_version" not in differing
    assert len(elements.find("td", "model-card")) == 2
    form = Elements(get(view, "/mlops/models/diabetes").text).find("form", id_="compare")
    assert form and form[0]["action"] == "/mlops/models/diabetes/compare"


def test_compare_refuses_bad_input_with_a_clear_answer(view: dict[str, Any]) -> None:
    for query, status, says in (
        ("a=1&b=1", 400, "both version 1"),
        ("a=1&b=one", 400, "not a version number"),
        ("a=1&b=-2", 400, "not a version number"),
        ("a=1", 400, "parameter b is missing"),
        ("", 400, "parameter a is missing"),
        ("a=1&b=99", 404, "has no version"),
    ):
        api = get(view, f"/mlops/api/models/diabetes/compare?{query}")
        assert (api.status_code, says in api.json()["detail"]) == (status, True), query
        page = get(view, f"/mlops/models/diabetes/compare?{query}")
        assert page.status_code == status and says in page.text and "text/html" in page.headers["content-type"], query
    assert get(view, "/mlops/models/nope/compare?a=1&b=2").status_code == 404
    assert get(view, "/mlops/models/digits/compare?a=1&b=2", user="reader").status_code == 403


def test_the_model_page_shows_the_label_history_newest_first_with_any_extra_keys(view: dict[str, Any]) -> None:
    page = get(view, "/mlops/models/diabetes").text
    elements = Elements(page)
    rows = elements.find("tr", "label-move")
    assert len(rows) == len(view["written"]["diabetes"]["versions"]) + 1
    first = page.index('class="label-move"')
    newest = page[first : page.index("</tr>", first)]
    assert "2027-01-02T03:04:05.000+00:00" in newest and "v3 &rarr; v2" in newest and "pid 4242 on worker-1" in newest
    for detail in ("reason: rolled back: canary errors", "run: manual__2027-01-02", "task: deploy", "ticket: OPS-7"):
        assert detail in newest
    assert "none &rarr; v1" in page, "the first move set stable from no version"
    empty = get(view, "/mlops/models/digits").text
    assert Elements(empty).find("table", id_="label-history") and 'class="label-move"' not in empty
    assert "No label move is recorded" in empty


# --------------------------------------------------------------------------- health: the newest monitor run

DIABETES = load_model_config(PROJECT_ROOT / "include" / "models" / "diabetes.yaml")
WINDOW_END = dt.datetime(2026, 11, 27, 10, tzinfo=dt.UTC)
MONITOR_RUN = "scheduled__2026-11-27T09:00:00+00:00"


@pytest.fixture
def monitor_root(view: dict[str, Any]) -> Iterator[Path]:
    """The server's artifact root with no monitor run of diabetes, before and after the test."""
    folder = view["root"] / "runs" / DIABETES.monitor_dag_id
    shutil.rmtree(folder, ignore_errors=True)
    yield view["root"]
    shutil.rmtree(folder, ignore_errors=True)


def health_of(view: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The ``health`` of diabetes's JSON, and its model page (both must answer 200)."""
    api, page = get(view, "/mlops/api/models/diabetes"), get(view, "/mlops/models/diabetes")
    assert (api.status_code, page.status_code) == (200, 200), page.text[-2000:]
    return api.json()["health"], page.text


def test_health_says_when_no_monitor_run_decided_yet(view: dict[str, Any], monitor_root: Path) -> None:
    health, page = health_of(view)
    assert health["state"] == "no_run" and health["outcomes"] == [] and health["links"]["report"] is None
    assert Elements(page).find("div", id_="health")[0]["data-state"] == "no_run"
    assert "No monitor run yet: <code>monitor__diabetes</code>" in page


def test_health_of_a_healthy_run_has_the_slos_their_objectives_and_a_sandboxed_report(
    view: dict[str, Any], monitor_root: Path
) -> None:
    write_monitor_run(monitor_root, DIABETES, MONITOR_RUN, WINDOW_END)
    health, page = health_of(view)
    assert health["state"] == "measured" and health["outcomes"] == ["healthy"]
    assert health["window"] == {"start": "2026-11-27T09:00:00+00:00", "end": "2026-11-27T10:00:00+00:00", "minutes": 60}
    folder = artifacts.safe_segment(MONITOR_RUN)
    assert health["links"] == {
        "run": f"/dags/monitor__diabetes/runs/{quote(MONITOR_RUN, safe='')}",
        "task_log": f"/dags/monitor__diabetes/runs/{quote(MONITOR_RUN, safe='')}/tasks/decide",
        "report": f"/mlops/models/diabetes/monitor/{folder}/report.html",
    }
    elements = Elements(page)
    assert [s["data-outcome"] for s in elements.find("span", "outcome")] == ["healthy"]
    assert [r["data-figure"] for r in elements.find("tr", "slo-figure")] == [
        "requests", "request_rate", "error_ratio", "p95_ms", "p99_ms",
    ]  # fmt: skip
    assert "<td>p95_ms</td><td>42</td>" in page and "at most 100" in page and "pass" in page
    assert [a["href"] for a in elements.find("a", "monitor-run-link")] == [health["links"]["run"]]
    report = elements.find("a", "monitor-report")[0]["href"]
    assert "report-link" in elements.find("a", "monitor-report")[0]["class"].split()
    response = get(view, report)
    assert response.status_code == 200 and "diabetes" in response.text
    assert response.headers["content-security-policy"] == "sandbox"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert get(view, report.replace("diabetes", "digits"), user="reader").status_code == 403
    assert get(view, report, user="reader").status_code == 200


def test_health_of_a_drifted_run_lists_each_feature_with_its_test_and_p_values(
    view: dict[str, Any], monitor_root: Path
) -> None:
    write_monitor_run(monitor_root, DIABETES, MONITOR_RUN, WINDOW_END, drifted={"bmi": 1e-6}, retrain_requests=2)
    health, page = health_of(view)
    assert health["outcomes"] == ["drift", "drift_persists"] and health["drift"]["drifted"] is True
    bmi = health["drift"]["features"][0]
    assert (bmi["name"], bmi["test"], bmi["p_adjusted"], bmi["psi"], bmi["out_of_range"]) == (
        "bmi",
        "ks",
        1e-6,
        0.41,
        0.125,
    )
    elements = Elements(page)
    assert [s["data-outcome"] for s in elements.find("span", "outcome")] == ["drift", "drift_persists"]
    rows = elements.find("tr", "drift-feature")
    assert [r["data-feature"] for r in rows][:1] == ["bmi"] and len(rows) == len(DIABETES.features)
    first = page.index('data-feature="bmi"')
    row = page[first : page.index("</tr>", first)]
    for cell in ("<td>ks</td>", "<td>0.31</td>", "<td>1e-06</td>", "<td>0.41</td>", "<td>0.125</td>", ">yes</td>"):
        assert cell in row, cell
    assert "Holm-adjusted p 1e-06 &lt;= false_alarm_rate 0.01" in row
    assert 'id="health-retrain"' in page and "drift persists after 2 retraining request(s)" in page


def test_health_without_prometheus_shows_no_data_with_the_reason(view: dict[str, Any], monitor_root: Path) -> None:
    write_monitor_run(monitor_root, DIABETES, MONITOR_RUN, WINDOW_END, figures=None)
    health, page = health_of(view)
    assert health["outcomes"] == ["insufficient_data"] and health["slo"]["status"] == "insufficient_data"
    assert all(r["value"] is None for r in health["slo"]["rows"])
    assert page.count("no data: SLOs not measured: Prometheus at http://prometheus.invalid:9090 cannot be reached") == 5
    assert [s["data-outcome"] for s in Elements(page).find("span", "outcome")] == ["insufficient_data"]


def test_health_shows_the_newest_run_and_a_corrupt_outcome_as_unreadable(
    view: dict[str, Any], monitor_root: Path
) -> None:
    write_monitor_run(monitor_root, DIABETES, MONITOR_RUN, WINDOW_END, drifted={"bmi": 1e-6})
    newer = "scheduled__2026-11-27T10:00:00+00:00"
    run = write_monitor_run(monitor_root, DIABETES, newer, WINDOW_END + dt.timedelta(hours=1))
    health, _ = health_of(view)
    assert health["run"]["run_id"] == newer and health["outcomes"] == ["healthy"]
    (run / "decide" / "outcome.json").write_text('{"outcomes": ')
    health, page = health_of(view)
    path = run / "decide" / "outcome.json"
    assert health["state"] == "unreadable" and health["problems"] == [
        f"{path} is unreadable: not JSON with a list of outcomes, as the decide task writes"
    ]
    assert Elements(page).find("div", id_="health")[0]["data-state"] == "unreadable" and str(path) in page
