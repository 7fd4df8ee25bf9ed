"""Confidence intervals for differences between training strategies (numpy only).

- :func:`t_interval`: the mean of paired differences (one per seed) with a Student-t interval;
  the t quantile is computed here (:func:`student_t_ppf`: the regularized incomplete beta
  function by its continued fraction, inverted by bisection), so no scipy is needed.
- :func:`paired_bootstrap`: the mean over seeds of ``metric(strategy run) - metric(baseline
  run)`` with a percentile interval from resampling the validation images (with
  replacement; one resample for every run), AP recomputed from per-image match records
  (:mod:`.weighted_ap`) rather than by COCOeval.

The two answer different questions: the t interval is about seed-to-seed (training)
variation with the validation set fixed, the bootstrap about the validation set's sampling
with the trained models fixed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detmine.evaluation.image_matches import ImageMatches
from detmine.evaluation.weighted_ap import STAT_NAMES, coco_metric_batch

__all__ = [
    "Interval",
    "paired_bootstrap",
    "regularized_incomplete_beta",
    "student_t_cdf",
    "student_t_ppf",
    "t_interval",
]


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided confidence interval ``[low, high]``.

    Attributes:
        mean: the point estimate.
        low, high: the interval's ends (may be -inf / inf).
        confidence: the nominal coverage, e.g. 0.95.
    """

    mean: float
    low: float
    high: float
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        """Whether 0 lies outside ``[low, high]``: the difference is "real" at this level."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.4f} [{self.low:+.4f}, {self.high:+.4f}] ({self.confidence:.0%})"


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (modified Lentz; converges fast for
    ``x < (a + 1) / (a + b + 2)``)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) <= 4.5e-16:  # 2 ulp: the step no longer moves h
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b) = B(x; a, b) / B(a, b)`` for ``a, b > 0``, ``0 <= x <= 1``.

    The continued fraction for ``x < (a + 1) / (a + b + 2)``, else ``1 - I_{1-x}(b, a)``.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"a and b must be > 0, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _t_upper_tail(t: float, df: float) -> float:
    """``P(T > t)`` for ``t >= 0``: ``I_{df / (df + t^2)}(df / 2, 1 / 2) / 2``."""
    return 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def student_t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df > 0`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = _t_upper_tail(abs(t), df)
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=1024)
def student_t_ppf(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df > 0`` degrees of freedom.

    Bisection on ``t >= 0`` of the upper tail ``P(T > t) = 1 - p`` (decreasing in ``t``;
    computed directly, not as ``1 - cdf``, so extreme ``p`` keep their precision), to
    floating-point resolution; ``p < 1/2`` by symmetry. E.g. ``student_t_ppf(0.975, 10)
    = 2.228``. Memoised (a t interval per strategy and metric asks for the same few).
    """
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_ppf(1.0 - p, df)
    target = 1.0 - p
    if target >= 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > target:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if _t_upper_tail(mid, df) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """The mean of paired differences (one per seed) with a Student-t interval.

    ``mean +- t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)``, ``s`` the sample standard
    deviation (``ddof=1``). With ``n = 1`` the spread is unknown and the interval is
    ``(-inf, inf)`` (never excludes zero); with ``s = 0`` it is the point ``[mean, mean]``.

    Args:
        values: ``[n]`` finite paired differences (strategy - baseline, seed by seed).
        confidence: the nominal two-sided coverage.

    Raises:
        ValueError: no values, a non-finite value, or ``confidence`` outside (0, 1).
    """
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64).ravel()
    if len(x) == 0:
        raise ValueError("t_interval needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("t_interval values must be finite")
    mean = float(x.mean())
    if len(x) == 1:
        return Interval(mean, -math.inf, math.inf, confidence)
    half = student_t_ppf(0.5 + confidence / 2.0, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half, confidence)


def paired_bootstrap(
    strategy: Sequence[ImageMatches],
    baseline: Sequence[ImageMatches],
    metric: str = "AP",
    num_samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """The mean over seeds of ``metric(strategy) - metric(baseline)``, with a percentile
    interval from an image bootstrap.

    Each bootstrap sample draws the ``I`` validation images with replacement (multinomial
    counts ``w [I]``, summing to ``I``) and scores every run on that same resample
    (:func:`~detmine.evaluation.weighted_ap.coco_metric_batch`: COCO AP with image weights
    ``w``); its statistic is ``mean_s (metric(strategy[s], w) - metric(baseline[s], w))``.
    The interval is the ``(1 -+ confidence) / 2`` quantiles of the ``num_samples``
    statistics (``np.quantile``, linear interpolation); ``mean`` is the statistic with all
    weights 1 (the actual validation set).

    Args:
        strategy, baseline: the runs, aligned by seed (``strategy[s]`` and ``baseline[s]``
            trained with seed ``s``), all scored on the same images.
        metric: "AP", "AP50", "AP75", "APs", "APm" or "APl".
        num_samples: bootstrap samples.
        seed: seeds the ``numpy.random.Generator``: the same arguments give the same interval.
        confidence: the nominal two-sided coverage.

    Raises:
        ValueError: no runs, different numbers of strategy and baseline runs, runs on different
            image ids or categories, an unknown metric, ``num_samples < 1``.
    """
    _check_confidence(confidence)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if len(strategy) == 0 or len(strategy) != len(baseline):
        raise ValueError(
            f"paired_bootstrap needs as many strategy runs as baseline runs (>= 1), got "
            f"{len(strategy)} and {len(baseline)}"
        )
    runs = [*strategy, *baseline]
    first = runs[0]
    for n, run in enumerate(runs):
        if not np.array_equal(run.image_ids, first.image_ids):
            raise ValueError(
                f"run {n} was evaluated on other images than run 0 ({run.num_images} vs "
                f"{first.num_images} images, or different ids): a paired bootstrap needs the same images"
            )
        if not np.array_equal(run.category_ids, first.category_ids):
            raise ValueError(f"run {n} has other categories than run 0")
    if metric not in STAT_NAMES:
        raise ValueError(f"metric '{metric}' is unknown; valid: {', '.join(STAT_NAMES)}")
    weights: list[np.ndarray] = []  # drawn on first need: every run may have its values cached

    def values(run: ImageMatches) -> np.ndarray:
        """``[num_samples + 1]``: the metric of ``run`` on the original data, then under each
        resample; cached on the run, so a baseline compared with several strategies (same
        metric, seed and sample count) is scored once."""
        key = ("paired_bootstrap", metric, num_samples, seed)
        if key not in run._cache:
            if not weights:
                n = first.num_images
                rng = np.random.default_rng(seed)
                counts = rng.multinomial(n, np.full(n, 1.0 / n), size=num_samples)
                weights.append(np.concatenate([np.ones((1, n)), counts]).astype(np.float64))
            run._cache[key] = coco_metric_batch(run, weights[0], metric)
        return run._cache[key]

    diff = np.zeros(num_samples + 1)
    for s_run, b_run in zip(strategy, baseline, strict=True):
        diff += values(s_run) - values(b_run)
    diff /= len(strategy)
    alpha = 1.0 - confidence
    low, high = np.quantile(diff[1:], [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(float(diff[0]), float(low), float(high), confidence)
