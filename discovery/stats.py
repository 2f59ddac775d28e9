"""Small statistics helpers: confidence intervals over seeds and rank correlation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with a two-sided confidence interval (Student t)."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:.4f} (n={self.n})"
        return f"{self.mean:.4f} ± {self.half_width:.4f} (n={self.n})"

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean and t-interval of ``values``; with one value the interval is that value."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(mean, mean, mean, 1)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * math.sqrt(var / n)
    return Estimate(mean, mean - half, mean + half, n)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two equally long sequences."""
    from scipy import stats

    if len(a) < 3:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)
