"""Benchmark of the drift decision's quality: false alarms on clean windows, detection of small shifts.

For each demo model (``include/models/{diabetes,digits}.yaml``) a population
is fitted to its whole bundled dataset, a Gaussian copula: each feature's
normal scores (ranks through the normal quantile function) and their
correlation, with each feature's own marginal.  Categorical features
(binary, low-cardinality, small integers: digits' pixels, diabetes' ``sex``)
keep their training values exactly; numeric ones are smoothed (the empirical
quantile function interpolated between training values).  The reference (as
many rows as the model trains on: the dataset less its ``test_fraction``) and
each window are independent draws from that population, seeded.

Per model and window size (``SIZES``): ``CLEAN_WINDOWS`` clean windows, each
against a fresh reference, and ``SHIFTED_WINDOWS`` windows with one feature
(``SHIFTED``) moved by +0.25, +0.5 and +1 population standard deviations
(integer features: the shifted value rounded up or down at random, keeping
the shift in the mean and the values integers).  Judged on the same windows:

* ``project``: the drift check's decision (:func:`include.mlops.monitoring.stattests.window_drifted`:
  KS or chi-square per feature, Holm over features, at the config's ``false_alarm_rate``);
* ``evidently_defaults``: Evidently's default column drift, computed with scipy: with at most 1,000
  reference rows, KS p < 0.05 for numeric columns (more than 5 values) and chi-square p < 0.05
  (a z-test for binary ones) for the others; with more, normed Wasserstein distance > 0.1 and
  Jensen-Shannon distance > 0.1.  A window counts as flagged when any column drifts (Evidently's
  dataset-level default, half of the columns, would flag a one-feature shift never);
* ``evidently_by_window_rows``: the same rules switched on the window's rows instead of the reference's;
* ``ks_bonferroni``: KS on every feature, p < ``false_alarm_rate`` / features.

Targets: at most 1 false alarm per 100 clean windows and at least 95 % detection of a 0.5 sigma
shift, both at 1,000 rows.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from include.mlops.monitoring.population import Population  # noqa: E402 - after the path set-up

MODELS = ("diabetes", "digits")
SHIFTED = {"diabetes": "bmi", "digits": "pixel_4_3"}
SIZES = (200, 1000, 5000)
SHIFTS = (0.25, 0.5, 1.0)
CLEAN_WINDOWS = 200
SHIFTED_WINDOWS = 50
SEED = 20261128
EVIDENTLY_SMALL_ROWS = 1000
EVIDENTLY_P = 0.05
EVIDENTLY_DISTANCE = 0.1
TARGET_FALSE_ALARMS_AT_1000 = 0.01
TARGET_DETECTION_HALF_SIGMA_AT_1000 = 0.95
METHODS = ("project", "evidently_defaults", "evidently_by_window_rows", "ks_bonferroni")


@cache
def population_of(model: str) -> tuple[Any, Population, int]:
    """The model's config, its population, and how many rows its reference has (the training split's size)."""
    from include.mlops.config import find_model_config
    from include.mlops.data.sources import load_bundled

    config = find_model_config(model)
    data = load_bundled(config.source.dataset, config.label)[list(config.features)].to_numpy(np.float64)
    return config, Population(data), round(len(data) * (1 - config.test_fraction))


def reference_of(sample: np.ndarray, features: list[str]) -> dict[str, Any]:
    """What the decision reads of a stored reference (kinds and sample) for a drawn reference ``sample``."""
    from include.mlops.monitoring.reference import feature_kind

    return {
        "features": {f: {"kind": feature_kind(sample[:, j]), "sample": sample[:, j]} for j, f in enumerate(features)}
    }


def baselines(reference: np.ndarray, window: np.ndarray, false_alarm_rate: float) -> dict[str, bool]:
    """Whether each baseline flags ``window`` against ``reference`` (both float32 [rows, features])."""
    from scipy import stats
    from scipy.spatial import distance

    features = reference.shape[1]
    small_tests, large_distances, ks_p = [], [], []
    for j in range(features):
        ref, cur = reference[:, j], window[:, j]
        values = np.unique(ref)
        p_ks = float(stats.ks_2samp(ref, cur).pvalue)
        ks_p.append(p_ks)
        if len(values) > 5:
            small_tests.append(p_ks < EVIDENTLY_P)
            norm = max(float(np.std(ref)), 0.001)
            large_distances.append(stats.wasserstein_distance(ref, cur) / norm > EVIDENTLY_DISTANCE)
            continue
        both = np.union1d(values, np.unique(cur))
        table = np.array([[np.count_nonzero(ref == v) for v in both], [np.count_nonzero(cur == v) for v in both]])
        p_chi = 1.0 if table.shape[1] < 2 else float(stats.chi2_contingency(table, correction=False)[1])
        small_tests.append(p_chi < EVIDENTLY_P)
        shares = table / table.sum(axis=1, keepdims=True)
        large_distances.append(float(distance.jensenshannon(shares[0], shares[1])) > EVIDENTLY_DISTANCE)
    small_reference = len(reference) <= EVIDENTLY_SMALL_ROWS
    small_window = len(window) <= EVIDENTLY_SMALL_ROWS
    return {
        "evidently_defaults": any(small_tests) if small_reference else any(large_distances),
        "evidently_by_window_rows": any(small_tests) if small_window else any(large_distances),
        "ks_bonferroni": min(ks_p) < false_alarm_rate / features,
    }


def judge_windows(
    model: str, windows: int, rows: int, seed: int, change: Callable[[np.ndarray, np.random.Generator], np.ndarray]
) -> dict[str, Any]:
    """Rates of each method over ``windows`` windows of ``rows`` rows, each against a fresh reference."""
    from include.mlops.monitoring.stattests import window_drifted

    config, population, reference_rows = population_of(model)
    features, alpha = list(config.features), config.monitor.drift.false_alarm_rate
    rng = np.random.default_rng(seed)
    flagged = dict.fromkeys(METHODS, 0)
    min_p, seconds = [], []
    for _ in range(windows):
        reference = population.draw(reference_rows, rng).astype(np.float32)
        window = change(population.draw(rows, rng), rng).astype(np.float32)
        start = time.perf_counter()
        drifted, judged = window_drifted(reference_of(reference, features), window, features, alpha)
        seconds.append(time.perf_counter() - start)
        flagged["project"] += drifted
        min_p.append(min((e["p_adjusted"] for e in judged.values() if e["p_adjusted"] is not None), default=1.0))
        for method, flag in baselines(reference, window, alpha).items():
            flagged[method] += flag
    return {
        "windows": windows,
        "rates": {method: count / windows for method, count in flagged.items()},
        "project_median_min_adjusted_p": statistics.median(min_p),
        "project_median_decision_ms": statistics.median(seconds) * 1000,
    }


def measure(model: str) -> dict[str, Any]:
    config, population, reference_rows = population_of(model)
    shifted = list(config.features).index(SHIFTED[model])
    out: dict[str, Any] = {
        "reference_rows": reference_rows,
        "shifted_feature": SHIFTED[model],
        "categorical_features": int(sum(population.categorical)),
        "features": len(config.features),
        "false_alarm_rate": config.monitor.drift.false_alarm_rate,
        "clean": {},
        "shifted": {},
    }
    for size in SIZES:
        out["clean"][str(size)] = judge_windows(model, CLEAN_WINDOWS, size, SEED + size, lambda rows, _: rows)
        for sigmas in SHIFTS:

            def change(rows: np.ndarray, rng: np.random.Generator, sigmas: float = sigmas) -> np.ndarray:
                return population.shift(rows, shifted, sigmas, rng)

            key = f"{sigmas:g}_sigma"
            cell = judge_windows(model, SHIFTED_WINDOWS, size, SEED + size + int(sigmas * 1000), change)
            out["shifted"].setdefault(key, {})[str(size)] = cell
        print(f"{model} {size} rows: clean {out['clean'][str(size)]['rates']}", flush=True)
    clean = out["clean"]["1000"]["rates"]["project"]
    detected = out["shifted"]["0.5_sigma"]["1000"]["rates"]["project"]
    out["targets_met"] = {
        "false_alarms_at_1000": clean <= TARGET_FALSE_ALARMS_AT_1000,
        "detection_half_sigma_at_1000": detected >= TARGET_DETECTION_HALF_SIGMA_AT_1000,
    }
    return out


def run(results_dir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    result: dict[str, Any] = {
        "description": __doc__.split("\n\n")[0],
        "sizes": list(SIZES),
        "shifts_sigma": list(SHIFTS),
        "clean_windows": CLEAN_WINDOWS,
        "shifted_windows": SHIFTED_WINDOWS,
        "seed": SEED,
        "targets": {
            "false_alarms_per_clean_window_at_1000_rows_at_most": TARGET_FALSE_ALARMS_AT_1000,
            "detection_of_half_sigma_shift_at_1000_rows_at_least": TARGET_DETECTION_HALF_SIGMA_AT_1000,
        },
        "models": {model: measure(model) for model in MODELS},
    }
    result["wall_s"] = time.perf_counter() - start
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "drift_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    run(PROJECT_ROOT / "benchmarks" / "results")
