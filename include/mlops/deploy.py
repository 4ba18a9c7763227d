"""The register and deploy steps: add a gated candidate to the registry, move serving labels.

``register_model`` checks that the candidate honours the SavedModel contract
(a ``serving_default`` signature with one float32 input ``inputs`` of shape
``[None, n_features]`` and one float32 output ``outputs``), then adds it to the
registry with its metrics, lineage, gate decision and a model card.

``deploy`` and ``rollback`` move a label (``stable``, ``canary``) in TF
Serving's model config file after verifying the version's checksums, so a
corrupted version is never put into service.  Both are retry-safe: moving a
label to the version it already names changes nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.mlops import artifacts
from include.mlops.config import BUDGET_METRICS, METRICS, PROJECT_ROOT, ModelConfig
from include.mlops.gate import GateDecision
from include.mlops.registry import Registry

log = logging.getLogger(__name__)

CODE_VERSION_ENV = "MLOPS_CODE_VERSION"


class DeployError(RuntimeError):
    """Registering or deploying cannot go ahead; the message says why and what to do."""


class CandidateModelError(DeployError):
    """The candidate SavedModel breaks the serving contract."""


class DeployVerificationError(DeployError):
    """The model server did not serve the deployed version correctly; the label was moved back."""


def code_version() -> str:
    """``$MLOPS_CODE_VERSION`` (set in images built without .git), else ``git rev-parse HEAD``, else "unknown"."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and sha else "unknown"


def check_serving_signature(config: ModelConfig, model_uri: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the SavedModel and check its ``serving_default`` signature against the contract.

    Runs one prediction on a row of zeros, so a model that loads but cannot
    serve is refused here rather than by TF Serving.  Returns the signature's
    input and output shapes.
    """
    import numpy as np
    import tensorflow as tf

    path = Path(model_uri)
    if not (path / "saved_model.pb").is_file():
        raise CandidateModelError(
            f"{path} is not a SavedModel folder (no saved_model.pb); pass the train step's model_uri"
        )
    loaded = tf.saved_model.load(str(path))
    if "serving_default" not in loaded.signatures:
        raise CandidateModelError(
            f"{path} has no 'serving_default' signature (has: {', '.join(loaded.signatures) or 'none'}); "
            "export the model with a serving signature"
        )
    fn = loaded.signatures["serving_default"]
    n_features = len(config.features)
    _, inputs = fn.structured_input_signature
    if set(inputs) != {"inputs"}:
        raise CandidateModelError(f"{path}: serving_default must take one input named 'inputs', takes {sorted(inputs)}")
    spec = inputs["inputs"]
    if spec.dtype != tf.float32 or spec.shape.rank != 2 or spec.shape[1] != n_features:
        raise CandidateModelError(
            f"{path}: input 'inputs' must be float32 [None, {n_features}] (the config's {n_features} features), "
            f"is {spec.dtype.name} {spec.shape}"
        )
    outputs = fn.structured_outputs
    if set(outputs) != {"outputs"}:
        raise CandidateModelError(
            f"{path}: serving_default must return one output named 'outputs', returns {sorted(outputs)}"
        )
    width = 1 if config.task == "regression" else config.num_classes
    out_spec = outputs["outputs"]
    if out_spec.dtype != tf.float32 or out_spec.shape.rank != 2 or out_spec.shape[1] not in (None, width):
        raise CandidateModelError(
            f"{path}: output 'outputs' must be float32 [None, {width}] for a {config.task} model, "
            f"is {out_spec.dtype.name} {out_spec.shape}"
        )
    prediction = fn(inputs=tf.zeros((1, n_features), tf.float32))["outputs"].numpy()
    if prediction.shape != (1, width) or not np.all(np.isfinite(prediction)):
        raise CandidateModelError(
            f"{path}: a prediction on one row of zeros gave shape {prediction.shape} "
            f"(expected (1, {width})) or non-finite values {prediction.tolist()}"
        )
    return {"input_shape": [None, n_features], "output_shape": [None, width]}


def read_evaluation(
    config: ModelConfig, evaluation_uri: str | os.PathLike[str]
) -> tuple[dict[str, float], dict[str, Any] | None]:
    """The candidate's metrics and the champion part (``{"version", "metrics"}`` or None) of evaluate's metrics.json.

    Accepts the evaluate step's folder or the file itself, and both
    ``{"metrics": {...}, "champion": {...}}`` and a flat ``{metric: value}`` file.
    """
    path = Path(evaluation_uri)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise DeployError(f"no evaluation metrics at {path}; pass the evaluate step's output folder as evaluation_uri")
    data = artifacts.read_json(path)
    if not isinstance(data, Mapping):
        raise DeployError(f"{path} must hold a JSON object of metrics, holds {type(data).__name__}")
    raw = data["metrics"] if isinstance(data.get("metrics"), Mapping) else data
    known = {**METRICS[config.task], **BUDGET_METRICS}
    metrics = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    missing = [m for m in config.metrics if m not in metrics]
    if missing:
        raise DeployError(
            f"{path} lacks the config's metric(s) {', '.join(missing)} (has: {', '.join(sorted(metrics))})"
        )
    unknown = sorted(set(metrics) - set(known))
    if unknown:
        log.info("Keeping extra metrics from %s: %s", path, ", ".join(unknown))
    champion = data.get("champion") if isinstance(data.get("champion"), Mapping) else None
    return metrics, dict(champion) if champion else None


def register_model(
    config: ModelConfig,
    model_uri: str | os.PathLike[str],
    evaluation_uri: str | os.PathLike[str],
    *,
    lineage: Mapping[str, Any],
    gate_decision: Mapping[str, Any] | None,
    tflite_uri: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str],
) -> dict[str, Any]:
    """Register a gated candidate as the next version of ``config.serving_name``.

    ``lineage`` needs ``dag_id`` and ``run_id`` and should carry
    ``data_interval_start``/``data_interval_end``, ``created_at`` (the run's
    logical time, never now()), ``data_uri`` and ``data_sha256``; a missing
    ``code_version`` is filled from git, and a missing ``data_sha256`` from
    ``<data_uri>/data.parquet``.  A candidate the gate rejected is refused
    unless the decision records an override.
    """
    decision = GateDecision.from_dict(gate_decision) if gate_decision is not None else None
    if decision is not None and not decision.passed:
        raise DeployError(
            f"the gate rejected this {config.name} candidate, so it is not registered: "
            + "; ".join(decision.reasons)
            + ". Trigger the run with force to override the gate."
        )
    full_lineage = _complete_lineage(lineage, model_uri, evaluation_uri, tflite_uri)
    metrics, champion = read_evaluation(config, evaluation_uri)
    signature = check_serving_signature(config, model_uri)

    registry = Registry()
    result = registry.register(
        config.serving_name,
        model_uri,
        metrics=metrics,
        lineage=full_lineage,
        model_card=lambda version: model_card(
            config,
            version,
            metrics=metrics,
            champion=champion,
            lineage=full_lineage,
            gate_decision=decision,
            signature=signature,
            has_tflite=tflite_uri is not None,
        ),
        gate_decision=decision.to_dict() if decision is not None else None,
        tflite_path=tflite_uri,
    )
    summary = {"version": result.version, "created": result.created, "version_dir": str(result.version_dir)}
    with artifacts.step_output(out) as staging:
        artifacts.atomic_write_json(staging / "result.json", {**summary, "model_name": config.serving_name})
    return summary


def deploy(
    config: ModelConfig,
    version: int,
    *,
    label: str = "stable",
    out: str | os.PathLike[str],
    server_url: str | None = None,
    timeout: float = 120.0,
    data_uri: str | os.PathLike[str] | None = None,
    tolerance: float = 1e-4,
    smoke_rows: int = 32,
) -> dict[str, Any]:
    """Verify ``version`` and point ``label`` at it; returns ``{"version", "previous", "label", "changed", "verified"}``.

    With ``server_url`` (the model server, TF Serving or the local one) the
    deploy is verified end to end: the version is first added to the loaded
    versions and awaited until the server reports it AVAILABLE (TF Serving
    only labels loaded versions), then the label moves, then held-out rows are
    sent THROUGH THE LABEL and the answers compared with the registered
    model's own predictions (``rtol = atol = tolerance``).  If any of that
    fails the label is moved back to the previous version (which keeps
    serving) and :class:`DeployVerificationError` says what went wrong.  The
    rows come from ``data_uri`` (a snapshot folder or parquet, or the evaluate
    step's ``predictions.parquet``; test-split rows when it has a ``split``
    column), else from the version's lineage ``data_uri``.

    Without ``server_url`` only the label moves and the result says
    ``"verified": false``.  A retry after the label already moved changes
    nothing and reports the ``previous`` version recorded by the first
    attempt in ``out/result.json``.
    """
    out = Path(out)
    registry = Registry()
    name = config.serving_name
    registry.verify(name, version)
    current = registry.label_version(name, label)
    server = ModelServerClient(server_url, timeout=timeout) if server_url else None
    if current == version:
        earlier = _earlier_result(out, label, version)
        previous = earlier["previous"] if earlier is not None else current
        changed = False
        log.info("%s: label %r already points at version %d; nothing to do", name, label, version)
    else:
        if server is not None:
            # TF Serving refuses a label on a version it has not loaded: load it first, then label it.
            registry.preload(name, version)
            try:
                server.wait_available(name, version=version)
            except DeployVerificationError as exc:
                _unload_unlabelled(registry, name)
                raise DeployVerificationError(
                    f"{name} version {version} did not become AVAILABLE on {server_url}, so label {label!r} "
                    f"was not moved and version {current} keeps serving: {exc}"
                ) from None
        previous = registry.set_label(name, label, version)
        changed = True
    result: dict[str, Any] = {"version": version, "previous": previous, "label": label, "changed": changed}
    if server is None:
        log.info("%s: no model server URL given, so the deploy of version %d is not verified", name, version)
        result["verified"] = False
    else:
        try:
            smoke = verify_deployment(
                config, version, label, server, data_uri=data_uri, tolerance=tolerance, max_rows=smoke_rows
            )
        except DeployVerificationError as exc:
            restored = _roll_back_after_failed_verify(registry, name, label, version, previous)
            raise DeployVerificationError(
                f"deploy of {name} version {version} failed verification on {server_url}: {exc}. {restored}"
            ) from None
        result.update(verified=True, server_url=server_url, smoke=smoke)
    with artifacts.step_output(out) as staging:
        artifacts.atomic_write_json(staging / "result.json", {**result, "model_name": name})
    return result


def rollback(
    config: ModelConfig, label: str, to_version: int, *, out: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Move ``label`` back to ``to_version`` (verified first); same result as :func:`deploy`."""
    registry = Registry()
    name = config.serving_name
    registry.verify(name, to_version)
    current = registry.label_version(name, label)
    if current is not None and to_version > current:
        log.warning("%s: 'rolling back' label %r forward from version %d to %d", name, label, current, to_version)
    previous = registry.set_label(name, label, to_version) if current != to_version else current
    result = {"version": to_version, "previous": previous, "label": label, "changed": current != to_version}
    log.info("%s: rolled label %r back to version %d (was %s)", name, label, to_version, previous)
    if out is not None:
        with artifacts.step_output(out) as staging:
            artifacts.atomic_write_json(staging / "result.json", {**result, "model_name": name})
    return result


# --------------------------------------------------------------------------- metadata


def _complete_lineage(
    lineage: Mapping[str, Any],
    model_uri: str | os.PathLike[str],
    evaluation_uri: str | os.PathLike[str],
    tflite_uri: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    missing = [key for key in ("dag_id", "run_id") if not lineage.get(key)]
    if missing:
        raise DeployError(f"lineage lacks {', '.join(missing)}: pass the Airflow run's dag_id and run_id")
    full: dict[str, Any] = {
        "data_interval_start": None,
        "data_interval_end": None,
        "created_at": None,
        "data_uri": None,
        "data_sha256": None,
        **artifacts.to_jsonable(dict(lineage)),
    }
    if not full.get("code_version"):
        full["code_version"] = code_version()
    if not full["data_sha256"] and full["data_uri"]:
        data_file = Path(full["data_uri"])
        data_file = data_file / "data.parquet" if data_file.is_dir() else data_file
        if data_file.is_file():
            full["data_sha256"] = artifacts.sha256_file(data_file)
    for key in ("created_at", "data_sha256"):
        if not full[key]:
            log.warning("lineage has no %s; the model card will show it as unknown", key)
    full.update(
        model_uri=str(model_uri), evaluation_uri=str(evaluation_uri), tflite_uri=str(tflite_uri) if tflite_uri else None
    )
    return full


def model_card(
    config: ModelConfig,
    version: int,
    *,
    metrics: Mapping[str, float],
    champion: Mapping[str, Any] | None,
    lineage: Mapping[str, Any],
    gate_decision: GateDecision | None,
    signature: Mapping[str, Any] | None = None,
    has_tflite: bool = False,
) -> str:
    """The human-readable card stored as ``assets.extra/model_card.md``."""
    champ_metrics = dict(champion.get("metrics") or {}) if champion else {}
    champ_version = champion.get("version") if champion else None
    champ_label = f"champion (v{champ_version})" if champ_version is not None else "champion"
    known = {**METRICS[config.task], **BUDGET_METRICS}

    def unknown(value: Any) -> str:
        return str(value) if value not in (None, "") else "unknown"

    lines = [
        f"# Model card: {config.serving_name} version {version}",
        "",
        "## Model",
        "",
        f"- **Name**: {config.name} (served as `{config.serving_name}`), version {version}",
        f"- **Task**: {config.task}" + (f", {config.num_classes} classes" if config.num_classes else ""),
        f"- **Builder**: `include/models/{config.builder}.py`; owner: {config.owner}",
        f"- **Registered for**: {unknown(lineage.get('created_at'))}",
        "- **Format**: TF SavedModel" + (" plus `model.tflite` (quantized)" if has_tflite else ""),
    ]
    if signature:
        lines.append(
            f"- **Serving signature**: `serving_default`, input `inputs` float32 {signature['input_shape']} "
            f"(raw feature values in config order), output `outputs` float32 {signature['output_shape']}"
        )
    lines += [
        "",
        "## Intended use",
        "",
        config.description or "No description in the model config.",
        "",
        f"Inputs are the {len(config.features)} features `{', '.join(config.features[:12])}"
        + (", ..." if len(config.features) > 12 else "")
        + f"`; the label is `{config.label}`. Use it only on data that passes the validation suite of this "
        "model; it was evaluated on a held-out split of the same source and has no guarantees outside it.",
        "",
        "## Data",
        "",
        f"- **Source**: {config.source.kind}"
        + (f" dataset `{config.source.dataset}`" if config.source.dataset else f" `{config.source.uri}`"),
        f"- **Data interval**: {unknown(lineage.get('data_interval_start'))} to {unknown(lineage.get('data_interval_end'))}",
        f"- **Snapshot**: `{unknown(lineage.get('data_uri'))}`, sha256 `{unknown(lineage.get('data_sha256'))}`",
        f"- **Test fraction**: {config.test_fraction}",
        "",
        "## Metrics (test split)",
        "",
        f"| metric | candidate | {champ_label} | change |",
        "|---|---|---|---|",
    ]
    ordered = [*config.metrics, *[m for m in sorted(metrics) if m not in config.metrics]]
    for metric in ordered:
        value = metrics.get(metric)
        champ = champ_metrics.get(metric)
        lines.append(f"| {metric} | {_num(value)} | {_num(champ)} | {_change(value, champ, known.get(metric))} |")
    if not champion:
        lines += ["", "No champion: this is the first version of this model that was compared."]
    lines += ["", "## Gate", ""]
    if gate_decision is None:
        lines.append("No gate decision was recorded for this version.")
    else:
        if gate_decision.override:
            lines += [
                "> **Override**: this version FAILED the gate and was registered because the run forced it.",
                "",
            ]
        lines.append(gate_decision.to_markdown().rstrip())
    lines += [
        "",
        "## Lineage",
        "",
        f"- **DAG**: `{lineage.get('dag_id')}`, run `{lineage.get('run_id')}`",
        f"- **Code version**: `{unknown(lineage.get('code_version'))}`",
        f"- **Candidate**: `{lineage.get('model_uri')}`; evaluation `{lineage.get('evaluation_uri')}`",
        "",
    ]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _change(value: Any, champion: Any, higher_is_better: bool | None) -> str:
    if not isinstance(value, (int, float)) or not isinstance(champion, (int, float)):
        return "-"
    if not (math.isfinite(value) and math.isfinite(champion)) or champion == 0:
        return f"{value - champion:+.4g}" if math.isfinite(value - champion) else "-"
    relative = (value - champion) / abs(champion)
    if higher_is_better is None or relative == 0:
        return f"{relative:+.2%}"
    better = (relative > 0) == higher_is_better
    return f"{relative:+.2%} ({'better' if better else 'worse'})"


def _earlier_result(out: Path, label: str, version: int) -> dict[str, Any] | None:
    path = out / "result.json"
    try:
        earlier = artifacts.read_json(path)
    except (OSError, ValueError):
        return None
    if isinstance(earlier, Mapping) and earlier.get("label") == label and earlier.get("version") == version:
        return dict(earlier)
    return None


# --------------------------------------------------------------------------- verification against a model server


class ModelServerClient:
    """The few TF Serving REST calls a deploy needs (works with TF Serving and the local server)."""

    def __init__(self, url: str, *, timeout: float = 120.0, poll_seconds: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.poll_seconds = poll_seconds

    def request(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        """``(http_status, parsed_json)``; a connection failure raises ``OSError``."""
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=min(30.0, self.timeout)) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body) if body else None
        except ValueError:
            return status, {"error": body[:500].decode(errors="replace")}

    def status(self, name: str, *, version: int | None = None, label: str | None = None) -> tuple[int, Any]:
        path = f"/v1/models/{name}" + (f"/versions/{version}" if version is not None else "")
        path += f"/labels/{label}" if label is not None else ""
        return self.request("GET", path)

    def wait_available(self, name: str, *, version: int, label: str | None = None) -> None:
        """Poll until the server reports ``version`` (through ``label`` if given) AVAILABLE, or fail.

        A version that the server tried and failed to load (state END with an
        error) fails at once with the server's error message.
        """
        deadline = time.monotonic() + self.timeout
        last = "no answer yet"
        while True:
            try:
                code, body = self.status(name, version=None if label else version, label=label)
                if code == 200 and isinstance(body, Mapping):
                    entries = body.get("model_version_status") or []
                    entry = next((e for e in entries if str(e.get("version")) == str(version)), None)
                    if entry is not None and entry.get("state") == "AVAILABLE":
                        return
                    if entry is not None:
                        status = entry.get("status") or {}
                        if entry.get("state") == "END" and status.get("error_code", "OK") != "OK":
                            raise DeployVerificationError(
                                f"the server could not load version {version}: {status.get('error_message')}"
                            )
                        last = f"version {version} is {entry.get('state')}"
                    else:
                        shown = [f"{e.get('version')}={e.get('state')}" for e in entries]
                        last = f"the server reports {', '.join(shown) or 'no versions'}"
                else:
                    last = f"HTTP {code}: {body.get('error') if isinstance(body, Mapping) else body}"
            except OSError as exc:
                last = f"cannot reach the server ({exc})"
            if time.monotonic() >= deadline:
                via = f" through label {label!r}" if label else ""
                raise DeployVerificationError(
                    f"{name} version {version} was not AVAILABLE{via} within {self.timeout:g} s ({last})"
                )
            time.sleep(self.poll_seconds)


def smoke_rows(config: ModelConfig, version_dir: Path, data_uri: str | os.PathLike[str] | None, max_rows: int) -> Any:
    """Held-out feature rows (float32 ``[n, n_features]``) for the smoke request."""
    import numpy as np
    import pandas as pd

    source: str | os.PathLike[str] | None = data_uri
    if source is None:
        lineage_file = version_dir / "assets.extra" / "lineage.json"
        lineage = artifacts.read_json(lineage_file) if lineage_file.is_file() else {}
        source = lineage.get("data_uri")
        if not source:
            raise DeployError(
                f"deploy verification needs held-out rows and {version_dir} records no data_uri in its lineage; "
                "pass --data (the snapshot folder or the evaluate step's predictions.parquet)"
            )
    path = Path(source)
    if path.is_dir():
        path = next((path / f for f in ("data.parquet", "predictions.parquet") if (path / f).is_file()), path)
    if not path.is_file():
        raise DeployError(f"no held-out rows at {source}: pass a snapshot folder or a parquet file with the features")
    frame = pd.read_parquet(path)
    missing = [c for c in config.features if c not in frame.columns]
    if missing:
        raise DeployError(f"{path} lacks feature columns {missing[:5]} of model {config.name!r}")
    if "split" in frame.columns and (frame["split"] == "test").any():
        frame = frame[frame["split"] == "test"]
    rows = frame[list(config.features)].head(max_rows).to_numpy(dtype="float32")
    if len(rows) == 0 or not np.isfinite(rows).all():
        raise DeployError(f"{path} has no usable (finite) held-out rows for the smoke request")
    return rows


def verify_deployment(
    config: ModelConfig,
    version: int,
    label: str,
    server: ModelServerClient,
    *,
    data_uri: str | os.PathLike[str] | None = None,
    tolerance: float = 1e-4,
    max_rows: int = 32,
) -> dict[str, Any]:
    """Wait until ``label`` serves ``version``, then compare its answers on held-out rows with the model's own.

    Raises :class:`DeployVerificationError`; returns ``{"rows", "max_abs_diff", "seconds"}``.
    """
    import numpy as np

    from include.mlops.modeling import load_serving_fn

    name = config.serving_name
    registry = Registry()
    version_dir = registry.require_version(name, version)
    rows = smoke_rows(config, version_dir, data_uri, max_rows)
    expected = load_serving_fn(version_dir, len(config.features))(rows)
    start = time.monotonic()
    server.wait_available(name, version=version, label=label)
    try:
        code, body = server.request("POST", f"/v1/models/{name}/labels/{label}:predict", {"instances": rows.tolist()})
    except OSError as exc:
        raise DeployVerificationError(f"the smoke request could not reach the server ({exc})") from None
    if code != 200 or not isinstance(body, Mapping) or "predictions" not in body:
        error = body.get("error") if isinstance(body, Mapping) else body
        raise DeployVerificationError(f"the smoke request through label {label!r} got HTTP {code}: {error}")
    try:
        served = np.asarray(body["predictions"], dtype="float64").reshape(expected.shape)
    except (ValueError, TypeError):
        raise DeployVerificationError(
            f"the server answered {len(body['predictions'])} predictions of an unexpected shape "
            f"(expected {list(expected.shape)})"
        ) from None
    diff = np.abs(served - expected.astype("float64"))
    max_diff = float(diff.max())
    if not np.allclose(served, expected, rtol=tolerance, atol=tolerance):
        worst = int(diff.max(axis=1).argmax())
        raise DeployVerificationError(
            f"label {label!r} answered differently from version {version} on {len(rows)} held-out rows "
            f"(max abs difference {max_diff:.6g} > tolerance {tolerance:g}; row {worst}: served "
            f"{served[worst].tolist()}, expected {expected[worst].tolist()}). The server may be serving another "
            "version or a different model under this name"
        )
    log.info(
        "%s: label %r serves version %d correctly (%d rows, max abs diff %.3g)",
        name,
        label,
        version,
        len(rows),
        max_diff,
    )
    return {"rows": len(rows), "max_abs_diff": max_diff, "seconds": round(time.monotonic() - start, 3)}


def _roll_back_after_failed_verify(
    registry: Registry, name: str, label: str, version: int, previous: int | None
) -> str:
    """Move ``label`` back after a failed verification; returns a sentence for the error message."""
    if previous is None:
        registry.remove_label(name, label)
        return f"Label {label!r} was removed (no version had it before)."
    if previous == version:
        return f"Label {label!r} already pointed at version {version} before this deploy; nothing to roll back to."
    registry.set_label(name, label, previous)
    log.error("%s: verification failed, label %r moved back to version %d", name, label, previous)
    return f"Label {label!r} was moved back to version {previous}, which keeps serving."


def _unload_unlabelled(registry: Registry, name: str) -> None:
    """Undo a :meth:`Registry.preload` whose version never became available (keep only labelled versions)."""
    labels = registry.labels(name)
    if labels:
        # Re-pointing one label at its own version rewrites the policy to exactly the labelled versions.
        first, target = next(iter(sorted(labels.items())))
        registry.set_label(name, first, target)
