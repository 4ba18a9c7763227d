"""A Great Expectations suite derived from a training reference, run on a sample of the window's rows.

Per feature: its values within the training range widened by the suites'
``RANGE_MARGIN`` (``mostly`` 99 %, so a stray request does not fail it), its
mean within ``mean_tolerance`` reference standard deviations of the training
mean, and its KL divergence from the reference bins below the PSI threshold
(KL is one of PSI's two halves; it is the GX record of it).  Numeric features
also get a few quantiles within the mean's tolerance; categorical ones (binary,
low-cardinality: see :mod:`.reference`) never do, since a quantile of a
two-valued feature jumps from one value to the other on a clean window.

The suite is a record beside the decision, not part of it: its fixed
tolerances have no known false-alarm rate, so its failures are listed in the
drift result and do not mark features as drifted (:mod:`.stattests` does).

GX costs seconds per million rows, so it validates at most
``max_validation_rows`` rows, a seeded uniform sample; the PSI scores use
every row.  The project's one GX runner (:func:`include.mlops.data.validate.run_suite`)
runs the suite.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from include.mlops.config import DriftConfig
from include.mlops.data.suites import RANGE_MARGIN
from include.mlops.monitoring.reference import CATEGORICAL

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

SAMPLE_SEED = 20261127
VALUES_MOSTLY = 0.99
# The quartiles: a window of a few hundred rows pins them down to a fraction of a standard deviation,
# where its 5 % and 95 % quantiles wander by about half of one (the PSI covers the tails).
CHECKED_QUANTILES = (0.25, 0.5, 0.75)
# Share of the expected distribution GX sets aside for values outside the training range,
# so that one out-of-range request gives a finite KL divergence (the range check reports it).
KL_TAIL_WEIGHT_HOLDOUT = 0.01


def _expectation(kind: str, why: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"why": why}}


def reference_suite(reference: dict[str, Any], features: Sequence[str], drift: DriftConfig) -> dict[str, Any]:
    """The drift suite of ``features`` (see the module docstring) from one version's reference."""
    import numpy as np

    expectations: list[dict[str, Any]] = []
    for feature in features:
        stats = reference["features"][feature]
        low, high, std = stats["min"], stats["max"], stats["std"]
        margin = RANGE_MARGIN * (high - low)
        tolerance = drift.mean_tolerance * std
        expectations.append(
            _expectation(
                "expect_column_values_to_be_between", "within the training range, widened",
                column=feature, min_value=low - margin, max_value=high + margin, mostly=VALUES_MOSTLY,
            )
        )  # fmt: skip
        expectations.append(
            _expectation(
                "expect_column_mean_to_be_between", f"training mean +/- {drift.mean_tolerance} std",
                column=feature, min_value=stats["mean"] - tolerance, max_value=stats["mean"] + tolerance,
            )
        )  # fmt: skip
        quantiles = stats["quantiles"]
        if stats.get("kind") != CATEGORICAL:
            expectations.append(
                _expectation(
                    "expect_column_quantile_values_to_be_between", f"training quantiles +/- {drift.mean_tolerance} std",
                    column=feature,
                    quantile_ranges={
                        "quantiles": list(CHECKED_QUANTILES),
                        "value_ranges": [[quantiles[str(q)] - tolerance, quantiles[str(q)] + tolerance] for q in CHECKED_QUANTILES],
                    },
                )
            )  # fmt: skip
        # Closed at the training min and just above its max for GX, where the reference bins hold all their weight.
        above_max = float(np.nextafter(np.float32(high), np.float32(np.inf)))
        expectations.append(
            _expectation(
                "expect_column_kl_divergence_to_be_less_than", "distribution over the training reference bins",
                column=feature,
                partition_object={"bins": [low, *stats["bin_edges"], above_max], "weights": stats["bin_weights"]},
                threshold=drift.psi_threshold, tail_weight_holdout=KL_TAIL_WEIGHT_HOLDOUT,
            )
        )  # fmt: skip
    return {"name": "drift", "meta": {"reference_rows": reference.get("rows")}, "expectations": expectations}


def sample_rows(rows: np.ndarray, limit: int) -> tuple[np.ndarray, bool]:
    """At most ``limit`` of ``rows``, a seeded uniform sample (in log order); whether it is a sample."""
    import numpy as np

    if len(rows) <= limit:
        return rows, False
    picked = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(rows), size=limit, replace=False))
    return rows[picked], True


def validate_sample(
    rows: np.ndarray,
    features: Sequence[str],
    checked: Sequence[str],
    reference: dict[str, Any],
    drift: DriftConfig,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """GX's result on a sample of ``rows`` for the ``checked`` features, and ``(feature, line)`` per failure."""
    import pandas as pd

    from include.mlops.data.validate import describe_failure, run_suite

    sample, sampled = sample_rows(rows, drift.max_validation_rows)
    frame = pd.DataFrame(sample.astype("float64"), columns=list(features))[list(checked)]
    suite = reference_suite(reference, checked, drift)
    log.info(
        "validating %d of %d rows (%s) against %d drift expectations",
        len(frame), len(rows), "seeded sample" if sampled else "all", len(suite["expectations"]),
    )  # fmt: skip
    result = run_suite(frame, suite)
    failures = [
        (str((r.get("expectation_config") or {}).get("kwargs", {}).get("column")), describe_failure(r, frame.columns))
        for r in result["results"]
        if not r.get("success")
    ]
    result.setdefault("meta", {}).update(
        {"validated_rows": len(frame), "window_rows": len(rows), "sampled": sampled, "sample_seed": SAMPLE_SEED}
    )
    return result, failures
