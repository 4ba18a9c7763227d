"""Generate a model's Great Expectations suite (``include/gx/<model>.json``) from reference data.

The suites are data, committed beside the configs and reviewed like code; this
generator only writes their first version, so that the bounds come from the
data rather than from guesses::

    python -m include.mlops.data.suites diabetes digits        # from the bundled datasets
    python -m include.mlops.data.suites mymodel --data ref.parquet

What a suite checks, and how the bounds are derived:

* schema: the exact column set (features, label, ``split`` and the
  ``_row_hash`` column that validation adds), the dtypes, and no nulls;
* each feature's range: the reference min/max widened by ``RANGE_MARGIN`` of
  the span on both sides, or a known physical domain (digit pixels are 0..16);
* row count: at least ``max(MIN_ROWS, MIN_ROWS_FRACTION x reference rows)`` so
  an empty or truncated partition fails, at most ``MAX_ROWS_FACTOR x``;
* the label: regression, its range (with the margin), its mean within
  ``MEAN_MARGIN_STDEVS`` reference standard deviations and its standard
  deviation within ``STDEV_RATIO`` of the reference; classification, the
  values in the class set and the class shares within ``MAX_CLASS_KL`` (KL
  divergence) of the reference shares;
* the split: only ``train``/``test`` and both present;
* duplicated data: at least ``MIN_UNIQUE_ROWS`` of the row hashes are unique,
  so a partition loaded twice (50 % unique) fails while a handful of genuinely
  identical rows (digits has a few identical images) does not.

Rerunning the generator on the same data yields the same file byte for byte.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.config import ConfigError, ModelConfig, find_model_config
from include.mlops.data.sources import ROW_HASH_COLUMN, SPLIT_COLUMN, TEST, TRAIN, load_bundled
from include.mlops.exit_codes import EXIT_BAD_INPUT

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

RANGE_MARGIN = 0.10
MIN_ROWS = 50
MIN_ROWS_FRACTION = 0.10
MAX_ROWS_FACTOR = 10
MEAN_MARGIN_STDEVS = 0.25
STDEV_RATIO = (0.75, 1.25)
MAX_CLASS_KL = 0.05
MIN_UNIQUE_ROWS = 0.9
# Physical domains that are wider than what the reference data happens to show
# (a pixel that is always blank in load_digits may be inked tomorrow).
KNOWN_FEATURE_DOMAINS: dict[str, tuple[float, float]] = {"digits": (0.0, 16.0)}
_DIGITS = 6


def _down(value: float) -> float:
    return math.floor(value * 10**_DIGITS) / 10**_DIGITS


def _up(value: float) -> float:
    return math.ceil(value * 10**_DIGITS) / 10**_DIGITS


def _widened(low: float, high: float) -> tuple[float, float]:
    margin = RANGE_MARGIN * (high - low)
    return _down(low - margin), _up(high + margin)


def _expectation(kind: str, why: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"why": why}}


class ReferenceDataError(ValueError):
    """The reference data cannot give a suite for the model (no data, or columns missing)."""


def require_columns(config: ModelConfig, frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """The config's features and label out of ``frame``, or an error naming the expected and available columns."""
    expected = [*config.features, config.label]
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise ReferenceDataError(
            f"{what} lacks {len(missing)} of the {len(expected)} columns model {config.name!r} needs "
            f"(features and label in {config.path.name}): missing {missing}; "
            f"expected {expected}; available {[str(c) for c in frame.columns]}. "
            "Fix the column names in the config (bundled datasets use identifier names, e.g. 'mean_radius') "
            "or pass --data with reference data that has them"
        )
    return frame[expected]


def reference_frame(config: ModelConfig) -> pd.DataFrame:
    """The whole bundled dataset of ``config`` (features and label), the default reference."""
    if config.source.kind != "bundled" or config.source.dataset is None:
        raise ReferenceDataError(
            f"model {config.name!r} has no bundled dataset to derive its suite from; pass --data with reference data"
        )
    frame = load_bundled(config.source.dataset, config.label)
    return require_columns(config, frame, f"the bundled dataset {config.source.dataset!r}")


def build_suite(config: ModelConfig, reference: pd.DataFrame | None = None) -> dict[str, Any]:
    """The GX 1.x suite for ``config`` as a JSON-able dict, with bounds derived from ``reference``."""
    if reference is None:
        frame = reference_frame(config)
    else:
        frame = require_columns(config, reference, f"the reference data for {config.name!r}")
    rows = len(frame)
    label_dtype = "int64" if config.task == "classification" else "float64"
    columns = [*config.features, config.label, SPLIT_COLUMN, ROW_HASH_COLUMN]

    expectations: list[dict[str, Any]] = [
        _expectation(
            "expect_table_columns_to_match_set",
            "schema: exactly the features, the label, the split and the row hash that validation adds",
            column_set=columns,
            exact_match=True,
        ),
        _expectation(
            "expect_table_row_count_to_be_between",
            f"an empty or truncated partition fails (reference: {rows} rows)",
            min_value=max(MIN_ROWS, math.ceil(MIN_ROWS_FRACTION * rows)),
            max_value=MAX_ROWS_FACTOR * rows,
        ),
    ]
    domain = KNOWN_FEATURE_DOMAINS.get(config.source.dataset or "")
    for feature in config.features:
        low, high = domain or _widened(float(frame[feature].min()), float(frame[feature].max()))
        expectations += [
            _expectation("expect_column_values_to_be_of_type", "features are float64", column=feature, type_="float64"),
            _expectation("expect_column_values_to_not_be_null", "no missing feature values", column=feature),
            _expectation(
                "expect_column_values_to_be_between",
                "known physical domain" if domain else f"reference range widened by {RANGE_MARGIN:.0%} of its span",
                column=feature,
                min_value=low,
                max_value=high,
            ),
        ]

    label = config.label
    expectations += [
        _expectation(
            "expect_column_values_to_be_of_type", f"the label is {label_dtype}", column=label, type_=label_dtype
        ),
        _expectation("expect_column_values_to_not_be_null", "every row is labelled", column=label),
    ]
    if config.task == "classification":
        classes = list(range(config.num_classes or 0))
        counts = frame[label].value_counts(normalize=True)
        weights = [round(float(counts.get(c, 0.0)), _DIGITS) for c in classes]
        total = sum(weights)
        weights = [w / total for w in weights]
        expectations += [
            _expectation(
                "expect_column_values_to_be_in_set", "labels are class indices", column=label, value_set=classes
            ),
            _expectation(
                "expect_column_kl_divergence_to_be_less_than",
                "class shares stay close to the reference shares",
                column=label,
                partition_object={"values": classes, "weights": weights},
                threshold=MAX_CLASS_KL,
            ),
        ]
    else:
        low, high = _widened(float(frame[label].min()), float(frame[label].max()))
        mean, stdev = float(frame[label].mean()), float(frame[label].std())
        expectations += [
            _expectation(
                "expect_column_values_to_be_between",
                f"reference label range widened by {RANGE_MARGIN:.0%} of its span",
                column=label,
                min_value=low,
                max_value=high,
            ),
            _expectation(
                "expect_column_mean_to_be_between",
                f"reference mean {mean:.4g} +/- {MEAN_MARGIN_STDEVS} reference stdev",
                column=label,
                min_value=_down(mean - MEAN_MARGIN_STDEVS * stdev),
                max_value=_up(mean + MEAN_MARGIN_STDEVS * stdev),
            ),
            _expectation(
                "expect_column_stdev_to_be_between",
                f"reference stdev {stdev:.4g} x {STDEV_RATIO[0]}..{STDEV_RATIO[1]}",
                column=label,
                min_value=_down(STDEV_RATIO[0] * stdev),
                max_value=_up(STDEV_RATIO[1] * stdev),
            ),
        ]

    expectations += [
        _expectation(
            "expect_column_values_to_be_in_set",
            "rows are split into train and test",
            column=SPLIT_COLUMN,
            value_set=[TEST, TRAIN],
        ),
        _expectation(
            "expect_column_distinct_values_to_equal_set",
            "both splits hold rows",
            column=SPLIT_COLUMN,
            value_set=[TEST, TRAIN],
        ),
        _expectation(
            "expect_column_proportion_of_unique_values_to_be_between",
            "duplicated data (a partition loaded twice) fails; a few identical rows do not",
            column=ROW_HASH_COLUMN,
            min_value=MIN_UNIQUE_ROWS,
            max_value=1.0,
        ),
    ]
    return {
        "name": config.name,
        "meta": {
            "generated_by": "python -m include.mlops.data.suites",
            "reference_rows": rows,
            "model": config.name,
            "task": config.task,
        },
        "expectations": expectations,
    }


def write_suite(config: ModelConfig, reference: pd.DataFrame | None = None, path: str | Path | None = None) -> Path:
    """Build the suite and write it (insertion-ordered keys, stable bytes) to ``path`` or ``config.suite_path``."""
    from include.mlops.artifacts import atomic_write_text

    target = Path(path) if path is not None else config.suite_path
    suite = build_suite(config, reference)
    atomic_write_text(target, json.dumps(suite, indent=2) + "\n")
    log.info("wrote %d expectations for %s to %s", len(suite["expectations"]), config.name, target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.mlops.data.suites", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model config names (include/models/<name>.yaml)")
    parser.add_argument("--data", help="reference data (parquet or csv) instead of the bundled dataset")
    parser.add_argument("--out", help="write here instead of include/gx/<name>.json (one model only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.out and len(args.models) > 1:
        parser.error("--out takes one model")
    reference = None
    if args.data:
        import pandas as pd

        reference = pd.read_parquet(args.data) if args.data.endswith(".parquet") else pd.read_csv(args.data)
    for name in args.models:
        try:
            write_suite(find_model_config(name), reference, args.out)
        except (ConfigError, ReferenceDataError) as exc:
            log.error("no suite written for %s: %s", name, exc)
            return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
