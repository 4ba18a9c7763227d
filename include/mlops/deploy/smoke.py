"""Deploy's smoke check: held-out rows sent through a label, compared with the served artifact's own answers."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops import artifacts
from include.mlops.config import ModelConfig
from include.mlops.data.sources import SPLIT_COLUMN, TEST, snapshot_path
from include.mlops.deploy.errors import DeployError, DeployVerificationError
from include.mlops.deploy.server_client import ModelServerClient, ServerNotReadyError
from include.mlops.evaluation.evaluate import PREDICTIONS_FILE
from include.mlops.registry.serving_artifact import load_served_fn, served_artifact

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmokeCheck:
    """Held-out rows and the answers the served artifact gives offline, computed before the label moves."""

    rows: np.ndarray
    expected: np.ndarray
    served_format: str
    features: tuple[str, ...] = ()  # the rows' column names: the tf.Example features of :classify/:regress


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
        path = next((p for p in (snapshot_path(path), path / PREDICTIONS_FILE) if p.is_file()), path)
    if not path.is_file():
        raise DeployError(f"no held-out rows at {source}: pass a snapshot folder or a parquet file with the features")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DeployError(
            f"cannot read the held-out rows in {path} ({exc}); pass a readable snapshot or predictions.parquet"
        ) from None
    missing = [c for c in config.features if c not in frame.columns]
    if missing:
        raise DeployError(f"{path} lacks feature columns {missing[:5]} of model {config.name!r}")
    if SPLIT_COLUMN in frame.columns and (frame[SPLIT_COLUMN] == TEST).any():
        frame = frame[frame[SPLIT_COLUMN] == TEST]
    rows = frame[list(config.features)].head(max_rows).to_numpy(dtype="float32")
    if len(rows) == 0 or not np.isfinite(rows).all():
        raise DeployError(f"{path} has no usable (finite) held-out rows for the smoke request")
    return rows


def prepare_smoke_check(
    config: ModelConfig, version_dir: Path, data_uri: str | os.PathLike[str] | None, max_rows: int
) -> SmokeCheck:
    """The smoke rows and the answers of the artifact the server will load for ``version_dir``."""
    rows = smoke_rows(config, version_dir, data_uri, max_rows)
    artifact = served_artifact(version_dir)
    expected = load_served_fn(version_dir, len(config.features))(rows)
    log.info("Expected answers for %d smoke rows come from %s (%s)", len(rows), artifact.path, artifact.format)
    return SmokeCheck(rows=rows, expected=expected, served_format=artifact.format, features=tuple(config.features))


def verify_deployment(
    name: str,
    version: int,
    label: str,
    server: ModelServerClient,
    check: SmokeCheck,
    *,
    tolerance: float = 1e-4,
    server_poll_seconds: float = 1.0,
    steady_s: float = 0.0,
) -> dict[str, Any]:
    """Wait until ``label`` serves ``version``, then compare its answers on the smoke rows with ``check.expected``.

    The wait reads the label's metadata (``model_spec.version``) until the
    server's poll has moved the label: TF Serving's status through a label
    lists every version, so an AVAILABLE candidate says nothing about the label.
    With ``steady_s`` (one config poll), the label must answer with the
    version for that long in a row first, so that every replica behind the
    URL has applied the move before the smoke rows are sent.

    Raises :class:`DeployVerificationError`; returns ``{"rows", "max_abs_diff", "seconds", "served_format"}``.
    """
    rows = check.rows
    start = time.monotonic()
    try:
        server.wait_label(name, label, version, server_poll_seconds=server_poll_seconds, steady_s=steady_s)
    except ServerNotReadyError as exc:
        raise DeployVerificationError(str(exc)) from None
    max_diff = compare_answers(
        server, f"/v1/models/{name}/labels/{label}", check, tolerance, what=f"label {label!r}", version=version
    )
    examples = _smoke_examples(name, label, server, check)
    log.info(
        "%s: label %r serves version %d correctly (%d rows, max abs diff %.3g)",
        name,
        label,
        version,
        len(rows),
        max_diff,
    )
    return {
        "rows": len(rows),
        "max_abs_diff": max_diff,
        "seconds": round(time.monotonic() - start, 3),
        "served_format": check.served_format,
        "example_signatures": examples,
    }


def compare_answers(
    server: ModelServerClient, model_path: str, check: SmokeCheck, tolerance: float, *, what: str, version: int
) -> float:
    """POST the smoke rows to ``<model_path>:predict``; the max abs difference from ``check.expected``.

    Raises :class:`DeployVerificationError` naming ``what`` (a label, a
    sandbox) when the request fails or the answers differ beyond ``tolerance``.
    """
    import numpy as np

    rows, expected = check.rows, check.expected
    try:
        code, body = server.request("POST", f"{model_path}:predict", {"instances": rows.tolist()})
    except OSError as exc:
        raise DeployVerificationError(f"the smoke request could not reach the server ({exc})") from None
    if code != 200 or not isinstance(body, Mapping) or "predictions" not in body:
        error = body.get("error") if isinstance(body, Mapping) else body
        raise DeployVerificationError(f"the smoke request through {what} got HTTP {code}: {error}")
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
            f"{what} answered differently from version {version}'s {check.served_format} artifact on "
            f"{len(rows)} held-out rows (max abs difference {max_diff:.6g} > tolerance {tolerance:g}; row {worst}: "
            f"served {served[worst].tolist()}, expected {expected[worst].tolist()}). The server may be serving "
            "another version, another artifact of it, or a different model under this name"
        )
    return max_diff


def _smoke_examples(name: str, label: str, server: ModelServerClient, check: SmokeCheck) -> dict[str, str]:
    """Send the smoke rows as tf.Examples to every classify/regress signature the label serves.

    Their answers have no offline reference here, so the check is that each
    signature answers every example; returns ``{signature: method}``.
    """
    try:
        signatures = server.example_signatures(name, label)
    except (OSError, ServerNotReadyError) as exc:
        raise DeployVerificationError(f"the smoke check could not read {name}'s signatures ({exc})") from None
    if signatures and len(check.features) != check.rows.shape[1]:
        raise DeployVerificationError(
            f"{name} has classify/regress signatures {sorted(signatures)}, but the smoke rows have no feature "
            "names to build tf.Examples from"
        )
    examples = [dict(zip(check.features, map(float, row), strict=True)) for row in check.rows]
    for signature, method in signatures.items():
        payload = {"signature_name": signature, "examples": examples}
        try:
            code, body = server.request("POST", f"/v1/models/{name}/labels/{label}:{method}", payload)
        except OSError as exc:
            raise DeployVerificationError(f"the {method} smoke request could not reach the server ({exc})") from None
        results = body.get("results") if isinstance(body, Mapping) else None
        if code != 200 or not isinstance(results, list) or len(results) != len(examples):
            error = body.get("error") if isinstance(body, Mapping) else body
            raise DeployVerificationError(
                f"label {label!r} of {name} failed the {method} smoke request on signature {signature!r} "
                f"({len(examples)} examples with features {list(check.features)}): HTTP {code}: {error}"
            )
    return signatures
