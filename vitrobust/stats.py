"""Uncertainty of the numbers a benchmark reports: Wilson intervals for accuracies, McNemar's exact test
for two models on the same images, percentile bootstrap over images for everything else (mCE).

A leaf module (docs/architecture.md): evaluation annotates results with these, reports compare runs
with them, the zoo compares published numbers against them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal
ALPHA = 0.05  # significance level of the report's comparisons


def wilson(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion correct/n, as fractions ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if correct <= 0 else lo), (1.0 if correct >= n else hi)  # exact at the ends, not 1 - 1e-16


def interval(flags: torch.Tensor) -> list[float]:
    """The Wilson 95% interval of a per-image correctness vector, rounded for results.json."""
    lo, hi = wilson(float(flags.sum()), int(flags.numel()))
    return [round(lo, 6), round(hi, 6)]


def mcnemar(a: torch.Tensor, b: torch.Tensor) -> dict:
    """McNemar's exact test of two models' per-image correctness on the same images.

    Only the discordant images count: `a_only` (a right, b wrong) and `b_only`. Under the null hypothesis
    both are equally likely, so min(a_only, b_only) is Binomial(a_only + b_only, 1/2); the two-sided
    p-value doubles its tail (capped at 1)."""
    a, b = a.bool().flatten(), b.bool().flatten()
    if a.shape != b.shape:
        raise ValueError(f"McNemar's test pairs images: got {a.numel()} and {b.numel()} results")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    m, k = a_only + b_only, min(a_only, b_only)
    p = 1.0 if m == 0 else min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m)
    return {"a_only": a_only, "b_only": b_only, "p": p, "significant": p < ALPHA}


def percentile_interval(values: list[float], level: float = 0.95) -> list[float]:
    """The central `level` interval of the values; [nan, nan] (no interval) if any is undefined
    (non-finite): the defined ones alone would leave out exactly the resamples where the statistic
    breaks down, and give an interval narrower than the truth."""
    values = torch.tensor(values, dtype=torch.float64)
    if not len(values) or not bool(torch.isfinite(values).all()):
        return [math.nan, math.nan]
    tail = (1 - level) / 2
    lo, hi = torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return [round(lo, 6), round(hi, 6)]


def bootstrap(statistic: Callable[[torch.Tensor], float | dict[str, float]], n: int, resamples: int = 1000,
              seed: int = 0, level: float = 0.95) -> list[float] | dict[str, list[float]]:
    """Percentile bootstrap interval of `statistic(index)` over n images: `index` is a resample (n image
    positions drawn with replacement); seeded, so the same call gives the same interval. A statistic that
    returns a dict of numbers gets one interval per key, all from the same resamples."""
    gen = torch.Generator().manual_seed(seed)
    draws = [statistic(torch.randint(0, n, (n,), generator=gen)) for _ in range(resamples)]
    if draws and isinstance(draws[0], dict):
        return {key: percentile_interval([d[key] for d in draws], level) for key in draws[0]}
    return percentile_interval(draws, level)


__all__ = ["ALPHA", "Z95", "bootstrap", "interval", "mcnemar", "wilson"]
