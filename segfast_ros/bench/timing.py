"""The one way the benchmarks (and the demo model's evaluation) time things.

Wall-clock time of a call (:func:`time_ms`), repeated after a warm-up (:func:`sample_ms`), and
read as a median and a 95th percentile (:func:`p50_p95`). Medians, because these machines are
noisy: a run that another process interrupts moves the mean, not the median.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def time_ms(fn: Callable[[], T]) -> tuple[T, float]:
    """Call ``fn`` once: its value and its wall time in milliseconds."""
    start = time.perf_counter()
    value = fn()
    return value, (time.perf_counter() - start) * 1e3


def sample_ms(fn: Callable[[], object], runs: int, *, warmup: int = 0) -> list[float]:
    """``warmup`` untimed calls of ``fn``, then the wall times of ``runs`` calls, in ms."""
    for _ in range(warmup):
        fn()
    return [time_ms(fn)[1] for _ in range(runs)]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (linear interpolation, as numpy)."""
    return float(np.percentile(values, q))


def p50_p95(values: Sequence[float]) -> tuple[float, float]:
    """Median and 95th percentile of ``values``."""
    return percentile(values, 50), percentile(values, 95)


def median_ms(fn: Callable[[], object], runs: int, *, warmup: int = 0) -> float:
    """Median wall time of ``runs`` calls of ``fn`` (after ``warmup`` untimed ones), in ms."""
    return percentile(sample_ms(fn, runs, warmup=warmup), 50)
