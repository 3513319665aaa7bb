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
Z80 = 0.8416212335729143  # one-sided 80% quantile: the power a minimum detectable effect is stated at
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


def tango_score(a_only: int, b_only: int, n: int, delta: float) -> float:
    """Tango's score statistic for a paired difference of proportions delta = P(a only) - P(b only): the
    observed difference over its standard error with P(b only) at its maximum likelihood under delta."""
    big_a, big_b = 2 * n, -a_only - b_only + (2 * n - a_only + b_only) * delta
    big_c = -b_only * delta * (1 - delta)
    q = (math.sqrt(max(0.0, big_b * big_b - 4 * big_a * big_c)) - big_b) / (2 * big_a)
    var = n * (2 * q + delta * (1 - delta))
    diff = a_only - b_only - n * delta
    return diff / math.sqrt(var) if var > 0 else math.copysign(math.inf, diff) if diff else 0.0


def paired_interval(a: torch.Tensor, b: torch.Tensor, z: float = Z95) -> tuple[float, float]:
    """95% interval of mean(a) - mean(b) for two models' correctness on the same images: Tango's score
    interval (1998), the differences where the score test does not reject. It stays inside [-1, 1] and
    keeps a width when the models agree on every image (where Wald and Newcombe's intervals collapse)."""
    a, b = a.bool().flatten(), b.bool().flatten()
    n = a.numel()
    if n == 0:
        return -1.0, 1.0
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    observed = (a_only - b_only) / n

    def solve(target: float, lo: float, hi: float) -> float:  # the score falls as delta rises
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if tango_score(a_only, b_only, n, mid) > target else (lo, mid)
        return (lo + hi) / 2

    return solve(z, -1.0, observed), solve(-z, observed, 1.0)


def sign_flip_p(diff: torch.Tensor, resamples: int = 2000, seed: int = 0) -> float:
    """Two-sided p of a paired permutation test: under the null each image's difference is as likely
    with either sign, so the observed mean is compared with the means of randomly sign-flipped copies
    (seeded; the +1 counts the observed arrangement, so p is never 0)."""
    diff = diff.double().flatten()
    if not diff.numel() or not bool(diff.abs().gt(0).any()):
        return 1.0
    gen = torch.Generator().manual_seed(seed)
    observed, extreme = float(diff.mean().abs()), 0
    for start in range(0, resamples, 200):  # 200 copies at a time: bounded memory on large sets
        signs = torch.randint(0, 2, (min(200, resamples - start), diff.numel()), generator=gen, dtype=torch.float64)
        extreme += int(((signs * 2 - 1) * diff).mean(1).abs().ge(observed - 1e-12).sum())
    return (1 + extreme) / (1 + resamples)


def min_detectable(diff: torch.Tensor, binary: bool) -> float:
    """The smallest true mean difference a paired comparison of this many images detects with 80% power at
    the 0.05 level (normal approximation: (z_0.975 + z_0.8) x the standard error of the mean difference).
    For correctness the null's per-image variance is the share of discordant images, taken as at least one
    image: two models that agree everywhere still leave the effect one disagreement would have shown."""
    diff = diff.double().flatten()
    n = diff.numel()
    if n == 0:
        return math.nan
    if binary:
        var = max(float(diff.ne(0).double().mean()), 1 / n)
    else:
        var = float(diff.var()) if n > 1 else math.nan
    return (Z95 + Z80) * math.sqrt(var / n)


def paired_comparison(a: torch.Tensor, b: torch.Tensor, resamples: int = 1000, seed: int = 0) -> dict:
    """Model a minus model b on the same images, per image either correctness (bool) or a score (float):
    the difference of the means, its 95% interval (Tango's score interval for correctness, a bootstrap over images for
    scores), a two-sided p (McNemar's exact test, or a paired sign-flip test) and the minimum detectable
    effect (80% power, 0.05 level)."""
    a, b = a.flatten(), b.flatten()
    if a.shape != b.shape:
        raise ValueError(f"a paired comparison needs the same images: got {a.numel()} and {b.numel()} results")
    binary = a.dtype == torch.bool and b.dtype == torch.bool
    diff = a.double() - b.double()
    out = {"difference": float(diff.mean()) if diff.numel() else math.nan, "n": int(diff.numel())}
    if binary:
        test = mcnemar(a, b)
        lo, hi = paired_interval(a, b)
        out.update(ci95=[round(lo, 6), round(hi, 6)], p=test["p"], test="mcnemar", a_only=test["a_only"],
                   b_only=test["b_only"])
    else:
        ci = bootstrap(lambda idx: float(diff[idx].mean()), diff.numel(), resamples, seed)
        out.update(ci95=ci, p=sign_flip_p(diff, seed=seed), test="sign-flip")
    out["mde"] = round(min_detectable(diff, binary), 6)
    out["significant"] = out["p"] < ALPHA
    return out


def t_interval(values: list[float], level: float = 0.95) -> list[float]:
    """Student-t interval of the mean of a few values (effects over seeds); [nan, nan] with fewer than two."""
    vals = [float(v) for v in values]
    if len(vals) < 2 or not all(math.isfinite(v) for v in vals):
        return [math.nan, math.nan]
    from scipy.stats import t  # heavy: only when seeds are summarised

    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    half = float(t.ppf(0.5 + level / 2, len(vals) - 1)) * sd / math.sqrt(len(vals))
    return [round(mean - half, 6), round(mean + half, 6)]


__all__ = ["ALPHA", "Z80", "Z95", "bootstrap", "interval", "mcnemar", "min_detectable", "paired_comparison", "percentile_interval",
           "paired_interval", "sign_flip_p", "t_interval", "tango_score", "wilson"]
