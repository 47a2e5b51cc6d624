"""The rank test compare used before it judged processes (kept to measure the old rule in
benchmarks/verdicts.py, "before"): two-sided Mann-Whitney U with the Hodges-Lehmann interval
of the ratio NEW/BASE, exact for small samples without ties.

The test: Mann-Whitney U with a Hodges-Lehmann interval
--------------------------------------------------------
Significance is the two-sided Mann-Whitney U (Wilcoxon rank-sum) test of the two independent
samples. The interval inverts that same test (Hodges-Lehmann): on the log scale, where a code
change that makes a metric r times larger is a shift by log r, the 95% interval of the ratio is
exp of the (c+1)-th smallest and (c+1)-th largest of the m x n pairwise differences
log(new_j) - log(base_i), c being the largest U whose null probability P(U <= c) is below
alpha / 2. So "the interval excludes 1" and "p < alpha" are one statement and always agree.
Without ties and with at most 50 runs a side, the null distribution of U is exact (the
coefficients of the Gaussian binomial [m+n choose m]_q, counted with integers); otherwise it is
the normal approximation with tie and continuity corrections (as scipy.stats.mannwhitneyu's
"asymptotic" method; the tests pin p-values computed with scipy 1.17.1).

Why this rather than a bootstrap of the ratio of medians:

- Small samples are the rule (10 runs by default, 3 in quick configs). A percentile bootstrap
  of a median from 10 values takes a handful of distinct values and its interval is too narrow
  (more false alarms than alpha promises); from 3 values it still prints an "interval". The
  rank test's false-alarm rate on two samples of one distribution is at most alpha whatever the
  distribution's shape, and it tells when n is too small to ever be significant (3 runs against
  3: the smallest two-sided p is 0.1), which is reported as "insufficient data".
- Timing samples are skewed and carry outliers (a page fault, a late recompilation): ranks do
  not care how far out an outlier lies.
- Deterministic without resampling: the same two runs give the same report on every machine,
  no seed to carry. `seed` is accepted by `compare_runs` and ignored.
- Cheap: O(m n) per metric, so a matrix of thousands of cells compares in seconds, where 9,999
  bootstrap resamples per cell and metric take minutes.
- Ranks do not change under a monotone transformation: a latency and the throughput that is a
  constant over it get the same p-value and mirror-image intervals.
- No dependency beyond numpy: scipy (1.18 needs Python >= 3.12, the project supports 3.10) has
  the test but no Hodges-Lehmann interval, and the exact distribution is twenty lines.

The point estimate shown is the ratio of the medians (what the two runs' stats.p50 give); the
interval is the Hodges-Lehmann one, for the shift that moves one distribution onto the other.
With skewed, lopsided samples the two can disagree slightly; a verdict needs the interval on the
same side of 1 as the ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

DEFAULT_ALPHA = 0.05
EXACT_MAX = 50  # runs per side up to which the exact null distribution of U is used (when no ties)


@lru_cache(maxsize=128)
def exact_cdf(m: int, n: int) -> tuple[float, ...]:
    """P(U <= u) for u = 0..m*n under the null hypothesis, samples of sizes m and n, no ties.

    The number of arrangements with U = u is the coefficient of q^u in the Gaussian binomial
    [m+n choose m]_q = prod_{i=1..m} (1 - q^(n+i)) / (1 - q^i); exact integers throughout.
    """
    size = m * n + 1
    c = [0] * size
    c[0] = 1
    for i in range(1, m + 1):
        shift = n + i
        for k in range(size - 1, shift - 1, -1):  # times (1 - q^shift); terms past m*n never feed back
            c[k] -= c[k - shift]
        for k in range(i, size):  # divided by (1 - q^i)
            c[k] += c[k - i]
    total = math.comb(m + n, m)
    out, acc = [], 0
    for count in c:
        acc += count
        out.append(acc / total)
    return tuple(out)


@dataclass(frozen=True)
class RankTest:
    p_value: float
    ci_low: float | None  # of the ratio NEW/BASE; None when n is too small to ever reach p < alpha
    ci_high: float | None
    hodges_lehmann: float  # exp(median of the pairwise log differences)
    u: float  # pairs (base_i, new_j) with new_j > base_i, ties counted half
    exact: bool


def rank_test(base: list[float], new: list[float], alpha: float = DEFAULT_ALPHA) -> RankTest:
    """Two-sided Mann-Whitney U of NEW against BASE and the Hodges-Lehmann interval of the ratio.

    Values must be positive (times, rates); the test works on logarithms, which changes no rank.
    """
    x = np.log(np.asarray(base, dtype=np.float64))
    y = np.log(np.asarray(new, dtype=np.float64))
    m, n = x.size, y.size
    pairs = m * n
    diffs = np.sort((y[None, :] - x[:, None]).ravel())
    u = float(np.count_nonzero(diffs > 0) + 0.5 * np.count_nonzero(diffs == 0))
    _, counts = np.unique(np.concatenate([x, y]), return_counts=True)
    ties = counts[counts > 1].astype(np.float64)
    exact = ties.size == 0 and max(m, n) <= EXACT_MAX
    if exact:
        cdf = exact_cdf(min(m, n), max(m, n))

        def lower(v: float) -> float:  # P(U <= v)
            return 0.0 if v < 0 else cdf[min(int(math.floor(v)), pairs)]
    else:
        total = m + n
        tie_term = float((ties**3 - ties).sum()) / (total * (total - 1))
        sigma = math.sqrt(max(pairs / 12.0 * ((total + 1) - tie_term), 0.0))
        mu = pairs / 2.0
        normal = NormalDist()

        def lower(v: float) -> float:
            if sigma == 0.0:
                return 1.0 if v >= mu else 0.0
            return normal.cdf((v + 0.5 - mu) / sigma)

    # P(U >= u) = P(U <= mn - u): the null distribution is symmetric.
    p_value = min(1.0, 2.0 * min(lower(u), lower(pairs - u)))
    # c: the largest U with P(U <= c) < alpha / 2 (a binary search: lower() is monotone).
    lo, hi = -1, pairs
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if lower(mid) < alpha / 2:
            lo = mid
        else:
            hi = mid - 1
    c = lo
    hl = float(np.exp(np.median(diffs)))
    if c < 0:
        return RankTest(p_value, None, None, hl, u, exact)
    return RankTest(p_value, float(np.exp(diffs[c])), float(np.exp(diffs[pairs - 1 - c])), hl, u, exact)
