"""The Models view's FastAPI app: JSON under ``/api`` and server-rendered pages, all GET, all behind Airflow's auth.

Mounted by the Airflow API server under ``/mlops`` (``plugins/mlops_plugin.py``).
Each request reads the catalog (small files, cached on their mtimes) and, for
run states and links, Airflow's metadata DB.  The user's access to the model's
DAG is checked first (so a user without it cannot tell a hidden model from an
unknown name); then names, versions and run folders in URLs are looked up in
the catalog before any path is built from them.  Reports that pipeline steps
wrote are served with ``Content-Security-Policy: sandbox``: they are documents
from run folders, so they run no script and share no origin with the UI.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import jinja2
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import GetUserDep
from airflow.configuration import conf
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.mlops.registry.catalog import Catalog, RunRecord, UnknownError
from include.mlops.registry.compare import CompareInputError, compare_versions, requested_versions
from include.mlops.registry.label_log import move_details
from include.mlops.registry.quality_history import HistoryPoint, history_key, history_png
from mlops_airflow.models_view import access, runs

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
URL_PREFIX = "/mlops"
# Rejected candidates listed on the page (newest first); the JSON has them all.
PAGE_REJECTED = 50
# Pipeline-written HTML (reports from run folders and versions): no script, an opaque origin, no sniffing.
REPORT_HEADERS = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}


@functools.cache
def ui_root() -> str:
    """The path the Airflow UI is served under ('' at the root), from ``[api] base_url``."""
    return urlparse(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


@functools.cache
def catalog() -> Catalog:
    return Catalog()


@functools.cache
def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v: f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"
    env.filters["cell"] = _cell
    return env


@functools.cache
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    # Raw HTML in a card is shown as text, never run: cards quote user-set descriptions and trigger params.
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def _cell(value: Any) -> str:
    """A value of the compare table as text: numbers to 4 significant digits, lists one item per line."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "\n".join(map(str, value)) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _page(template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
    html = _templates().get_template(template).render(ui=ui_root(), prefix=ui_root() + URL_PREFIX, **context)
    return HTMLResponse(html, status_code=http_status)


def _login_url(request: Request) -> str:
    """The configured auth manager's login page, coming back to this page."""
    from airflow.api_fastapi.app import get_auth_manager

    try:
        return get_auth_manager().get_url_login(next_url=str(request.url))
    except Exception:  # an auth manager without a login page of its own: Airflow's default path
        log.exception("Models view: the auth manager gave no login URL")
        return f"{ui_root()}/auth/login"


def _links(dag_id: str, run_id: str | None, task_id: str | None = None) -> dict[str, str | None]:
    if not run_id:
        return {"run": None, "task_log": None}
    run = f"{ui_root()}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"
    return {"run": run, "task_log": f"{run}/tasks/{quote(task_id, safe='')}" if task_id else None}


def _visible_model(name: str, user: BaseUser) -> str:
    """The model's DAG id, once the user may read the DAG (403) and then the name is found in the catalog (404).

    In this order: a user without access gets the same 403 for a model that
    exists and for one that does not.
    """
    access.require_dag_read(user, catalog().claimed_dag_id(name))
    return catalog().dag_id(name)


def _summary(name: str, last_run: runs.AirflowRun | None, run_records: list[RunRecord] | None = None) -> dict[str, Any]:
    record = catalog().model(name, run_records)
    data = record.to_dict()
    data["headline_metrics"] = {m: record.stable_metrics.get(m) for m in record.gate_metrics}
    data["last_run"] = (
        {
            "run_id": last_run.run_id,
            "run_type": last_run.run_type,
            "state": last_run.state,
            "when": last_run.when,
            "links": _links(record.dag_id, last_run.run_id),
        }
        if last_run is not None
        else None
    )
    deployed = data["deployed"]
    if deployed is not None:
        if deployed["run_id"] is None:
            run = runs.runs_of(record.dag_id).get(deployed["run_folder"])
            deployed["run_id"] = run.run_id if run else None
        deployed["links"] = _links(record.dag_id, deployed["run_id"], "deploy")
    return data


def _history(name: str, dag_id: str, run_records: list[RunRecord] | None = None) -> list[dict[str, Any]]:
    """Every run, oldest first: the run folders joined with the DB's runs (either may lack the other)."""
    known = runs.runs_of(dag_id)
    rows: list[dict[str, Any]] = []
    folders: set[str] = set()
    for record in catalog().runs(name) if run_records is None else run_records:
        folders.add(record.folder)
        rows.append(_history_row(dag_id, record, known.get(record.folder)))
    for folder, run in known.items():
        if folder not in folders:  # a run that wrote nothing yet (queued, or failed before its first step)
            rows.append(_history_row(dag_id, None, run))
    return sorted(rows, key=lambda r: (r["when"] or "", r["folder"]))


def _history_row(dag_id: str, record: RunRecord | None, run: runs.AirflowRun | None) -> dict[str, Any]:
    decision = record.decision if record is not None else None
    run_id = run.run_id if run is not None else None
    when = run.when.isoformat() if run is not None and run.when is not None else (record.date if record else None)
    return {
        "folder": record.folder if record is not None else run.folder,  # type: ignore[union-attr]
        "run_id": run_id,
        "run_type": run.run_type if run is not None else record.run_type,  # type: ignore[union-attr]
        "state": run.state if run is not None else None,
        "when": when,
        "decision": decision.to_dict() if decision else None,
        "outcome": decision.outcome if decision else None,
        "registered_version": record.registered_version if record else None,
        "deployed": record.deployed if record else None,
        "reports": record.reports if record else [],
        "links": _links(dag_id, run_id, decision.task_id if decision else None),
    }


def _health(name: str) -> dict[str, Any]:
    """The newest decided monitor run's outcome, with links to its report and to the run in Airflow."""
    health = catalog().health(name).to_dict()
    run = health["run"] or {}
    report = None
    if health["has_report"]:
        report = (
            f"{ui_root()}{URL_PREFIX}/models/{quote(name, safe='')}/monitor/{quote(run['folder'], safe='')}/report.html"
        )
    health["links"] = {**_links(health["monitor_dag_id"], run.get("run_id"), "decide"), "report": report}
    return health


def _detail(name: str, dag_id: str, run_records: list[RunRecord] | None = None) -> dict[str, Any]:
    history = _history(name, dag_id, run_records)
    versions = []
    for record in catalog().version_records(name):
        data = record.to_dict()
        data["gate_outcome"] = record.gate.outcome if record.gate else "no gate record"
        data["override"] = bool(record.gate and record.gate.override)
        data["links"] = _links(record.lineage.get("dag_id") or dag_id, record.lineage.get("run_id"), "register")
        versions.append(data)
    rejected = [h for h in reversed(history) if h["decision"] and not h["decision"]["passed"]]
    return {"versions": versions, "rejected": rejected, "history": history}


def _points(history: list[dict[str, Any]]) -> list[HistoryPoint]:
    points = []
    for row in history:
        if row["decision"] is None or row["when"] is None:
            continue
        deployed = row["deployed"]
        points.append(
            HistoryPoint(
                when=dt.datetime.fromisoformat(row["when"]),
                run_type=row["run_type"],
                metrics=row["decision"]["metrics"],
                passed=row["decision"]["passed"],
                deployed_version=deployed.get("version") if deployed and deployed.get("label") == "stable" else None,
            )
        )
    return points


def _bounds(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The bounds the latest decision applied (trigger-form overrides can change them per run)."""
    latest = next((h["decision"] for h in reversed(history) if h["decision"]), None)
    return latest["bounds"] if latest else {}


def create_app() -> FastAPI:
    app = FastAPI(title="Models view", description=__doc__, docs_url=None, redoc_url=None, openapi_url=None)

    def _error(request: Request, status_code: int, detail: str) -> Response:
        if request.url.path.startswith(f"{request.scope.get('root_path', '')}/api/"):
            return JSONResponse({"detail": detail}, status_code=status_code)
        return _page("error.html", status_code, status_code=status_code, detail=detail, login=_login_url(request))

    @app.exception_handler(UnknownError)
    async def unknown(request: Request, exc: UnknownError) -> Response:
        return _error(request, 404, str(exc))

    @app.exception_handler(CompareInputError)
    async def bad_input(request: Request, exc: CompareInputError) -> Response:
        return _error(request, 400, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        return _error(request, 404, "not found")

    # ------------------------------------------------------------------ JSON

    @app.get("/api/models")
    def api_models(user: GetUserDep) -> JSONResponse:
        return _JSON({"models": _visible_summaries(user)})

    @app.get("/api/models/{name}")
    def api_model(name: str, user: GetUserDep) -> JSONResponse:
        dag_id = _visible_model(name, user)
        last = runs.last_runs([dag_id]).get(dag_id)
        run_records = catalog().runs(name)
        return _JSON(
            {**_summary(name, last, run_records), **_detail(name, dag_id, run_records), "health": _health(name)}
        )

    @app.get("/api/models/{name}/versions/{version}")
    def api_version(name: str, version: str, user: GetUserDep) -> JSONResponse:
        dag_id = _visible_model(name, user)
        record = catalog().version_record(name, version)
        data = record.to_dict()
        data["model_card"] = catalog().model_card(name, record.version)
        # One version: worth hashing every file (once per change of its files), which the table cannot afford.
        data["checksums"] = catalog().verification(name, record.version)
        data["links"] = _links(record.lineage.get("dag_id") or dag_id, record.lineage.get("run_id"), "register")
        return _JSON(data)

    @app.get("/api/models/{name}/compare")
    def api_compare(name: str, user: GetUserDep, a: str | None = None, b: str | None = None) -> JSONResponse:
        _visible_model(name, user)
        return _JSON(compare_versions(catalog(), name, *requested_versions(a, b)))

    # ------------------------------------------------------------------ pages

    @app.get("/models", response_class=HTMLResponse)
    def models_page(user: GetUserDep) -> HTMLResponse:
        return _page("models.html", models=_visible_summaries(user), user=user.get_name())

    @app.get("/models/by-dag/{dag_id}")
    def model_of_dag(dag_id: str, user: GetUserDep) -> Response:
        """The target of the DAG page's Model tab, which the UI shows on every DAG."""
        for name in catalog().model_names():
            if catalog().dag_id(name) == dag_id or dag_id == f"monitor__{name}":
                access.require_dag_read(user, catalog().dag_id(name))
                return RedirectResponse(f"{ui_root()}{URL_PREFIX}/models/{quote(name, safe='')}", status_code=307)
        access.require_dag_read(user, dag_id)  # only who may read the DAG learns that it has no model
        raise UnknownError(f"{dag_id} is not a model's lifecycle or monitor DAG, so it has no model page")

    @app.get("/models/{name}", response_class=HTMLResponse)
    def model_page(name: str, user: GetUserDep) -> HTMLResponse:
        dag_id = _visible_model(name, user)
        run_records = catalog().runs(name)
        summary = _summary(name, runs.last_runs([dag_id]).get(dag_id), run_records)
        detail = _detail(name, dag_id, run_records)
        card_version = summary["stable_version"] or (detail["versions"][0]["version"] if detail["versions"] else None)
        card = catalog().model_card(name, card_version) if card_version else None
        points = _points(detail["history"])
        return _page(
            "model.html",
            model=summary,
            versions=detail["versions"],
            rejected=detail["rejected"][:PAGE_REJECTED],
            rejected_total=len(detail["rejected"]),
            runs_total=len(detail["history"]),
            plotted=len(points),
            plot_key=history_key(points, summary["gate_metrics"], _bounds(detail["history"])),
            card_version=card_version,
            card_html=_markdown().render(card) if card else None,
            label_moves=[{**move, "details": move_details(move)} for move in catalog().label_moves(name)],
            health=_health(name),
        )

    @app.get("/models/{name}/compare", response_class=HTMLResponse)
    def compare_page(name: str, user: GetUserDep, a: str | None = None, b: str | None = None) -> HTMLResponse:
        _visible_model(name, user)
        comparison = compare_versions(catalog(), name, *requested_versions(a, b))
        cards = {side: _markdown().render(text) if text else None for side, text in comparison["model_cards"].items()}
        return _page("compare.html", comparison=comparison, cards=cards, versions=catalog().versions(name))

    @app.get("/models/{name}/quality-history.png")
    def quality_history(name: str, user: GetUserDep) -> Response:
        dag_id = _visible_model(name, user)
        history = _history(name, dag_id)
        image = history_png(_points(history), catalog().model(name).gate_metrics, _bounds(history))
        if image is None:
            raise UnknownError(f"model {name!r} has no run with gate metrics to plot yet")
        # The page asks for it with ?k=<content key>, so a new run changes the URL and the cache may keep it.
        return Response(image, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/models/{name}/versions/{version}/report.html")
    def version_report(name: str, version: str, user: GetUserDep) -> FileResponse:
        _visible_model(name, user)
        return FileResponse(catalog().version_report(name, version), media_type="text/html", headers=REPORT_HEADERS)

    @app.get("/models/{name}/runs/{run}/{step}/report.html")
    def run_report(name: str, run: str, step: str, user: GetUserDep) -> FileResponse:
        _visible_model(name, user)
        return FileResponse(catalog().run_report(name, run, step), media_type="text/html", headers=REPORT_HEADERS)

    @app.get("/models/{name}/monitor/{run}/report.html")
    def monitor_report(name: str, run: str, user: GetUserDep) -> FileResponse:
        _visible_model(name, user)
        return FileResponse(catalog().monitor_report(name, run), media_type="text/html", headers=REPORT_HEADERS)

    return app


def _visible_summaries(user: BaseUser) -> list[dict[str, Any]]:
    names = [n for n in catalog().model_names() if access.may_read_dag(user, catalog().dag_id(n))]
    last = runs.last_runs(catalog().dag_id(n) for n in names)
    return [_summary(name, last.get(catalog().dag_id(name))) for name in names]


class _JSON(JSONResponse):
    """JSON with dates as ISO 8601 text, encoded in one pass (walking 1,000 runs to convert them first was slower)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), default=_encode).encode("utf-8")


def _encode(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
