"""A population to draw fresh rows from: a Gaussian copula fitted to a dataset, keeping each feature's type.

Each feature's normal scores (ranks through the normal quantile function) and
their correlation are kept, with each feature's own marginal: categorical
features (binary, low-cardinality, small integers:
:func:`include.mlops.monitoring.reference.feature_kind`) draw their data
values exactly, in their shares; numeric ones are smoothed (the empirical
quantile function interpolated between data values).

Used where rows must look like new traffic from the population the model was
trained on: the traffic generator's requests and the drift quality benchmark's
windows.  Resampling a few hundred rows instead sends the same rows again and
again, which no two-sample test takes for the population (rightly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


class Population:
    """A Gaussian copula fitted to ``data`` ([rows, features]), drawing rows that keep each feature's type."""

    def __init__(self, data: np.ndarray) -> None:
        import numpy as np
        from scipy import stats

        from include.mlops.monitoring.reference import CATEGORICAL, feature_kind

        self.sorted = np.sort(data, axis=0)
        self.categorical = [feature_kind(data[:, j].astype(np.float32)) == CATEGORICAL for j in range(data.shape[1])]
        self.integer = np.all(data == np.round(data), axis=0)
        scores = stats.norm.ppf(stats.rankdata(data, axis=0) / (len(data) + 1))
        with np.errstate(invalid="ignore", divide="ignore"):  # constant features have no correlation
            correlation = np.corrcoef(scores, rowvar=False)
        correlation = np.nan_to_num(correlation) + np.eye(data.shape[1]) * 1e-9  # constant features
        np.fill_diagonal(correlation, 1.0)
        values, vectors = np.linalg.eigh(correlation)
        self.factor = vectors * np.sqrt(np.clip(values, 0.0, None))
        self.std = data.std(axis=0)

    def draw(self, rows: int, rng: np.random.Generator) -> np.ndarray:
        """``rows`` new rows ([rows, features], float64)."""
        import numpy as np
        from scipy import stats

        n = len(self.sorted)
        uniform = stats.norm.cdf(rng.standard_normal((rows, self.factor.shape[0])) @ self.factor.T)
        out = np.empty((rows, self.factor.shape[0]))
        positions = np.arange(n)
        for j in range(out.shape[1]):
            if self.categorical[j]:  # the training values themselves, in their shares
                out[:, j] = self.sorted[np.minimum((uniform[:, j] * n).astype(np.int64), n - 1), j]
            else:  # smoothed between neighbouring training values
                out[:, j] = np.interp(uniform[:, j] * (n - 1), positions, self.sorted[:, j])
        return out

    def shift(self, rows: np.ndarray, feature: int, sigmas: float, rng: np.random.Generator) -> np.ndarray:
        """``rows`` with column ``feature`` moved by ``sigmas`` population standard deviations (integers stay integers)."""
        import numpy as np

        shifted = rows.copy()
        moved = shifted[:, feature] + sigmas * self.std[feature]
        if self.integer[feature]:
            floor = np.floor(moved)
            moved = floor + (rng.random(len(moved)) < moved - floor)
        shifted[:, feature] = moved
        return shifted
