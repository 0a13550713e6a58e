"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import jax


def timed(fn, *args, repeats=20):
    """(compile seconds, steady seconds, output) of a jitted `fn`.

    Compile time is the first call minus a steady call. The steady time is the minimum
    over `repeats` calls: on a shared machine the minimum is the figure least disturbed by
    other processes (the median is printed by callers that want it too).
    """
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    steady = min(times)
    return max(first - statistics.median(times), 0.0), steady, out


def interleaved(fns, args, repeats=20):
    """Steady minimum seconds of several jitted functions, called in turn (same load)."""
    outs = [jax.block_until_ready(fn(*args)) for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[i] = min(best[i], time.perf_counter() - start)
    return best, outs
