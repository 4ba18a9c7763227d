"""The deploy step: move a serving label to a registered version, verified through the model server.

``deploy`` moves a label (``stable``, ``canary``) in TF Serving's model
config file after verifying the version's checksums, so a corrupted version
is never put into service.  It is retry-safe: moving a label to the version
it already names changes nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from include.mlops import artifacts
from include.mlops.config import ModelConfig
from include.mlops.registry import Registry
from include.mlops.server_client import ModelServerClient, ServerNotReadyError

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """Deploying cannot go ahead; the message says why and what to do."""


class DeployVerificationError(DeployError):
    """The model server did not serve the deployed version correctly; the label was moved back."""


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
            except ServerNotReadyError as exc:
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


def _earlier_result(out: Path, label: str, version: int) -> dict[str, Any] | None:
    path = out / "result.json"
    try:
        earlier = artifacts.read_json(path)
    except (OSError, ValueError):
        return None
    if isinstance(earlier, Mapping) and earlier.get("label") == label and earlier.get("version") == version:
        return dict(earlier)
    return None


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
    try:
        server.wait_available(name, version=version, label=label)
    except ServerNotReadyError as exc:
        raise DeployVerificationError(str(exc)) from None
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
