"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time

import jax


def timed_stats(fn, *args, repeats=20):
    """(compile seconds, median steady seconds, minimum steady seconds, output) of `fn`.

    Compile time is the first call minus the median steady call.
    """
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return max(first - median, 0.0), median, min(times), out


def timed(fn, *args, repeats=20):
    """(compile seconds, steady seconds, output) of a jitted `fn`.

    The steady time is the minimum over `repeats` calls: on a shared machine the minimum is
    the figure least disturbed by other processes.
    """
    compile_s, _, best, out = timed_stats(fn, *args, repeats=repeats)
    return compile_s, best, out


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
