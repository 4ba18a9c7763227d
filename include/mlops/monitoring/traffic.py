"""A traffic generator for a served model: paced, bounded ``:predict`` requests of fresh rows.

``python -m include.mlops.traffic --model diabetes --label stable --rate 20 --duration 60``

Each request sends one new row drawn from the population of the model's data
(:class:`include.mlops.monitoring.population.Population`, a Gaussian copula
fitted to every row, seeded by ``--seed``), as production traffic would be:
the data is ``--rows-from`` (a snapshot folder or parquet file), else the
newest snapshot of the model's lifecycle runs under the artifact root, else
the bundled dataset.  Resampling the few dozen held-out rows instead would send
the same rows over and over, and the drift check's two-sample tests rightly
tell such a window from the training population.  ``--drift FEATURE=SHIFT``
adds SHIFT standard deviations of that feature (over the data) to every row
sent, so the monitoring can be shown input drift; ``--errors SHARE`` sends that share of malformed requests (wrong width,
non-numeric values, broken JSON), which the server answers 400, so it can be
shown an error-ratio breach.

Requests are sent one after the other at ``--rate`` per second; a request that
comes back late delays the next one rather than causing a burst to catch up.
The run stops after ``--duration`` seconds or ``--requests`` requests,
whichever comes first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from include.mlops.config import ConfigError, ModelConfig, find_model_config
from include.mlops.monitoring.traffic_rows import (
    TrafficError,
    TrafficInputError,
    data_rows,
    fresh_rows,
    held_out_rows,
    latest_snapshot,
)

# The rows' helpers and the errors live in traffic_rows; callers import them from here too.
__all__ = [
    "TrafficError",
    "TrafficInputError",
    "TrafficSummary",
    "data_rows",
    "held_out_rows",
    "latest_snapshot",
    "main",
    "send_traffic",
]

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_SERVER = "http://localhost:8501"
MALFORMED_KINDS = ("wrong_width", "non_numeric", "bad_json")
# Consecutive requests without any HTTP answer after which the server is taken to be gone.
MAX_CONSECUTIVE_TRANSPORT_ERRORS = 5
EXIT_UNREACHABLE = 1
EXIT_BAD_INPUT = 3


@dataclasses.dataclass
class TrafficSummary:
    """What a run sent and how the server answered."""

    sent: int = 0
    ok: int = 0
    errors: int = 0  # HTTP answers other than 200
    malformed_sent: int = 0
    unexpected: int = 0  # a well-formed request that failed, or a malformed one that succeeded
    transport_errors: int = 0
    by_status: Counter[int] = dataclasses.field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        statuses = ", ".join(f"HTTP {code}: {n}" for code, n in sorted(self.by_status.items()))
        return (
            f"sent={self.sent} ok={self.ok} errors={self.errors} transport_errors={self.transport_errors} "
            f"({statuses or 'no answers'}) in {self.elapsed_s:.1f}s"
        )

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["by_status"] = {str(k): v for k, v in sorted(self.by_status.items())}
        data["rate"] = round(self.rate, 3)
        return data


# --------------------------------------------------------------------------- rows


def _row_source(
    config: ModelConfig,
    data: np.ndarray,
    drift: Mapping[str, float],
    seed: int | None,
    rng: random.Random,
    *,
    fresh: bool,
) -> Callable[[], np.ndarray]:
    """Each request's row: a new draw from ``data``'s population (``fresh``), else one of ``data`` at random."""
    shifted = apply_drift(data, config.features, drift)  # an unknown feature fails here, before any request
    if not fresh:
        return lambda: shifted[rng.randrange(len(shifted))]
    drawn, std = fresh_rows(data, seed), data.std(axis=0)
    return lambda: apply_drift(next(drawn)[None, :], config.features, drift, std)[0]


def apply_drift(
    rows: np.ndarray, features: Sequence[str], drift: Mapping[str, float], std: np.ndarray | None = None
) -> np.ndarray:
    """``rows`` with each named feature moved by SHIFT of its standard deviation (``std``, else over ``rows``)."""
    shifted = rows.copy()
    for feature, shift in drift.items():
        if feature not in features:
            raise TrafficInputError(f"--drift {feature}={shift:g}: unknown feature (features: {', '.join(features)})")
        column = list(features).index(feature)
        sigma = float(std[column]) if std is not None else float(rows[:, column].std())
        shifted[:, column] += shift * sigma
    return shifted


# --------------------------------------------------------------------------- requests


def malformed_body(kind: str, row: np.ndarray) -> bytes:
    """A request body the server must refuse with 400 (``kind`` one of :data:`MALFORMED_KINDS`)."""
    values = [float(v) for v in row]
    if kind == "wrong_width":
        return json.dumps({"instances": [[*values, 0.0]]}).encode()
    if kind == "non_numeric":
        return json.dumps({"instances": [["not-a-number"] * len(values)]}).encode()
    if kind == "bad_json":
        return json.dumps({"instances": [values]}).encode()[:-2]
    raise ValueError(f"unknown malformed request kind {kind!r}")


def _model_path(config: ModelConfig, label: str) -> str:
    return f"/v1/models/{config.serving_name}/labels/{label}"


def check_served(client: httpx.Client, config: ModelConfig, label: str) -> None:
    """Raise :class:`TrafficError` unless the server answers and reports the model's label AVAILABLE."""
    path = _model_path(config, label)
    what = f"model {config.serving_name!r} label {label!r}"
    try:
        response = client.get(path)
    except httpx.TransportError as exc:
        raise TrafficError(
            f"cannot reach the model server at {client.base_url} ({type(exc).__name__}: {exc}); "
            "start it (make run) or pass --server URL"
        ) from exc
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:200]}
    if response.status_code != 200:
        raise TrafficError(
            f"{client.base_url} does not serve {what}: HTTP {response.status_code} {body.get('error', body)}; "
            "deploy it first or pick a served --label"
        )
    states = [entry.get("state") for entry in body.get("model_version_status", [])]
    if "AVAILABLE" not in states:
        raise TrafficError(f"{client.base_url} knows {what} but no version is AVAILABLE (states: {states})")


def send_traffic(
    config: ModelConfig,
    server: str = DEFAULT_SERVER,
    *,
    label: str = "stable",
    rate: float = 20.0,
    duration: float | None = 60.0,
    requests: int | None = None,
    drift: Mapping[str, float] | None = None,
    errors: float = 0.0,
    seed: int | None = None,
    rows: np.ndarray | None = None,
    rows_from: str | Path | None = None,
    progress_seconds: float = 5.0,
    report: Callable[[str], None] = print,
) -> TrafficSummary:
    """Send paced ``:predict`` requests through ``label`` for ``duration`` seconds and/or ``requests`` requests.

    Always through a label: TF Serving answers a request without one with the
    highest loaded version, which during a deploy is the unverified candidate.
    """
    if not label:
        raise TrafficInputError(
            "traffic goes through a version label (e.g. stable): without one, TF Serving answers with the highest "
            "loaded version, which during a deploy is a candidate nobody verified yet"
        )
    if rate <= 0:
        raise TrafficInputError(f"rate must be positive, got {rate}")
    if duration is None and requests is None:
        raise TrafficInputError("give a duration and/or a number of requests, or the traffic never ends")
    if not 0.0 <= errors <= 1.0:
        raise TrafficInputError(f"errors is a share of requests within [0, 1], got {errors}")
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    with httpx.Client(base_url=server.rstrip("/"), timeout=10.0, limits=limits) as client:
        # Before the rows: an unreachable server should fail fast, not after loading a dataset.
        check_served(client, config, label)
        data = rows if rows is not None else data_rows(config, rows_from)
        if data.ndim != 2 or data.shape[1] != len(config.features):
            raise TrafficInputError(
                f"rows must be [n, {len(config.features)}] for {config.name}, got {list(data.shape)}"
            )
        rng = random.Random(seed)
        next_row = _row_source(config, data, drift or {}, seed, rng, fresh=rows is None)
        summary = TrafficSummary()
        url = _model_path(config, label) + ":predict"
        headers = {"Content-Type": "application/json"}
        start = time.monotonic()
        next_send, next_report = start, start + progress_seconds
        consecutive_failures = 0
        while requests is None or summary.sent < requests:
            now = time.monotonic()
            if duration is not None and now - start >= duration:
                break
            if next_send > now:
                time.sleep(next_send - now)
            # Late (a slow answer): start the schedule again from now instead of bursting to catch up.
            next_send = max(next_send, time.monotonic()) + 1.0 / rate
            row = next_row()
            malformed = errors > 0 and rng.random() < errors
            if malformed:
                body = malformed_body(rng.choice(MALFORMED_KINDS), row)
            else:
                body = json.dumps({"instances": [[float(v) for v in row]]}).encode()
            summary.sent += 1
            summary.malformed_sent += malformed
            try:
                response = client.post(url, content=body, headers=headers)
            except httpx.TransportError as exc:
                summary.transport_errors += 1
                consecutive_failures += 1
                if consecutive_failures >= MAX_CONSECUTIVE_TRANSPORT_ERRORS:
                    summary.elapsed_s = time.monotonic() - start
                    raise TrafficError(
                        f"the model server at {server} stopped answering ({type(exc).__name__}: {exc}) "
                        f"after {summary.line()}"
                    ) from exc
                continue
            consecutive_failures = 0
            summary.by_status[response.status_code] += 1
            if response.status_code == 200:
                summary.ok += 1
            else:
                summary.errors += 1
            summary.unexpected += (response.status_code == 200) == malformed
            if time.monotonic() >= next_report:
                summary.elapsed_s = time.monotonic() - start
                report(f"[{summary.elapsed_s:5.1f}s] {summary.line()}")
                next_report += progress_seconds
        summary.elapsed_s = time.monotonic() - start
    return summary


# --------------------------------------------------------------------------- CLI


def _drift_item(value: str) -> tuple[str, float]:
    feature, sep, shift = value.partition("=")
    try:
        if not sep or not feature:
            raise ValueError
        return feature, float(shift)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FEATURE=SHIFT (e.g. bmi=1.5), got {value!r}") from None


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {value!r}") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1, got {value!r}")
    return share


def _positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = 0
        if number <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
        return number

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m include.mlops.traffic",
        description="Send paced :predict requests built from a model's held-out rows to a model server.",
    )
    parser.add_argument("--model", required=True, help="model config name (include/models/<model>.yaml)")
    parser.add_argument("--label", default="stable", help="version label to address (default: stable)")
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"model server base URL (default: {DEFAULT_SERVER})")
    parser.add_argument("--rate", type=_positive(float), default=20.0, help="requests per second (default: 20)")
    parser.add_argument("--duration", type=_positive(float), default=60.0, help="seconds to run (default: 60)")
    parser.add_argument("--requests", type=_positive(int), help="stop after this many requests")
    parser.add_argument(
        "--drift",
        type=_drift_item,
        action="append",
        default=[],
        metavar="FEATURE=SHIFT",
        help="add SHIFT standard deviations of FEATURE (its std over the held-out rows) to every row; repeatable",
    )
    parser.add_argument(
        "--errors",
        type=_share,
        default=0.0,
        help="share of malformed requests (wrong width, non-numeric, bad JSON), answered 400 (default: 0)",
    )
    parser.add_argument("--seed", type=int, help="seed for the row choice and the malformed share")
    parser.add_argument("--rows-from", help="snapshot folder or parquet/CSV file to take the rows from")
    parser.add_argument("--progress-seconds", type=_positive(float), default=5.0, help="progress line interval")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # httpx logs every request at INFO: thousands of lines that drown the progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        config = find_model_config(args.model)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        summary = send_traffic(
            config,
            args.server,
            label=args.label,
            rate=args.rate,
            duration=args.duration,
            requests=args.requests,
            drift=dict(args.drift),
            errors=args.errors,
            seed=args.seed,
            rows_from=args.rows_from,
            progress_seconds=args.progress_seconds,
            report=lambda line: print(line, flush=True),
        )
    except TrafficInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrafficError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"done: {summary.line()} ({summary.rate:.1f} requests/s)", flush=True)
    print(json.dumps(summary.as_dict()), flush=True)
    return 0
