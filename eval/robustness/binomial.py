"""Binomial statistics of pass counts: exact Clopper-Pearson bounds, in / out / undecided, images needed;
mean intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from eval.robustness.rows import RangeCriterion

STATUSES = ("in", "out", "undecided")
_MAX_IMAGES = 100_000


# ------------------------------------------------------------------------------------- binomial statistics


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval of a binomial proportion, k successes out of n."""
    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n:
        raise ValueError(f"k and n must be integers, got k={k!r}, n={n!r}")
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"expected 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1.0 - tail, k + 1, n - k))
    return low, high


def _cp_arrays(k: np.ndarray, n: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    tail = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, stats.beta.ppf(tail, np.maximum(k, 1), n - k + 1), 0.0)
        high = np.where(k < n, stats.beta.ppf(1.0 - tail, k + 1, np.maximum(n - k, 1)), 1.0)
    return low, high


def decide(low: float, high: float, criterion: RangeCriterion) -> str:
    """'in' when low >= 1 - alpha, 'out' when high < 1 - alpha, else 'undecided'."""
    if low >= criterion.target:
        return "in"
    if high < criterion.target:
        return "out"
    return "undecided"


def images_needed(k: int, n: int, criterion: RangeCriterion) -> int | None:
    """Roughly how many more images, at the same pass rate k/n, would decide an undecided level.

    Searches total counts N on a 2 % geometric grid, then every N in the last step; the passes at N are
    round(N k / n). None when k/n equals 1 - alpha (never decided) or more than 100,000 images would be needed.
    """
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"expected 0 <= k <= n and n >= 1, got k={k!r}, n={n!r}")
    p = k / n
    if p == criterion.target:
        return None
    low, high = clopper_pearson(k, n, criterion.confidence)
    if decide(low, high, criterion) != "undecided":
        return 0

    def decided(total: np.ndarray) -> np.ndarray:
        k_total = np.round(p * total)
        lo, hi = _cp_arrays(k_total, total, criterion.confidence)
        return lo >= criterion.target if p > criterion.target else hi < criterion.target

    grid = np.unique(np.round(n * 1.02 ** np.arange(1, 700)).astype(np.int64))
    grid = grid[(grid > n) & (grid <= _MAX_IMAGES)]
    ok = decided(grid.astype(float))
    if not ok.any():
        return None
    j = int(np.argmax(ok))
    start = n + 1 if j == 0 else int(grid[j - 1]) + 1
    fine = np.arange(start, int(grid[j]) + 1)
    first = int(fine[np.argmax(decided(fine.astype(float)))])
    return first - n


@dataclass(frozen=True, slots=True)
class PassCount:
    """Pass statistics of one group of images (a tested level, a bin or a map cell)."""

    n: int
    k: int
    p_hat: float | None  # None when n == 0
    low: float | None  # Clopper-Pearson interval of P(pass)
    high: float | None
    status: str  # in | out | undecided | empty
    images_more: int | None  # undecided: roughly how many more images would decide it


def pass_count(k: int, n: int, criterion: RangeCriterion) -> PassCount:
    """Pass probability, Clopper-Pearson interval and status of k passes out of n images."""
    if n == 0:
        return PassCount(0, 0, None, None, None, "empty", None)
    low, high = clopper_pearson(k, n, criterion.confidence)
    status = decide(low, high, criterion)
    more = images_needed(k, n, criterion) if status == "undecided" else None
    return PassCount(n, k, k / n, low, high, status, more)


def mean_interval(values: np.ndarray, *, method: str = "t", confidence: float = 0.95,
                  rng: np.random.Generator | None = None, n_boot: int = 2000) -> tuple[float, float, float]:
    """(mean, low, high) of finite values: Student-t or percentile-bootstrap interval of the mean."""
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    values = np.asarray(values, dtype=float)
    n = values.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan
    if method == "t":
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
        return mean, mean - half, mean + half
    if rng is None:
        raise ValueError("method='bootstrap' needs rng (a numpy.random.Generator)")
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100, got {n_boot!r}")
    means = values[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return mean, float(low), float(high)
