"""`solve(..., progress=True)`: a tqdm bar of (t - t0)/(t1 - t0), fed by the step loop.

The compiled loop reports to the host through `jax.debug.callback` (unordered), as
diffrax's `TqdmProgressMeter` does, but only when the progress has passed another whole
percent: a solve makes at most about a hundred callbacks whatever its step count, and a
solve without `progress=True` contains none. The bar is opened by a `jax.pure_callback`
that returns its number (the loop's callbacks read that number, so they cannot run before
it) and closed after the loop with the progress reached: 100% for a solve that reached t1,
less for one that failed or ended at an event.

Under `jax.vmap` there is one bar for the batch, showing the least progress over the lanes
(`equinox.internal.unvmap_max` of minus the progress). In reverse mode the backward pass
recomputes steps; their reports reach a bar already closed and are ignored, and a bar only
ever moves forwards.
"""

from __future__ import annotations

import itertools
import threading

import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np

_BARS: dict = {}
_LOCK = threading.Lock()
_NEXT_BAR = itertools.count(1)
_NEXT_TOKEN = itertools.count(1)

_FORMAT = "{percentage:.0f}%|{bar}| [{elapsed}<{remaining}]"


def _make_bar():
    import tqdm  # imported when a bar is first shown: `import jode` does not load it

    return tqdm.tqdm(total=100, unit="%", bar_format=_FORMAT)


def _open(token):
    del token  # distinct per traced solve, so that two bars are never merged into one call
    with _LOCK:
        number = next(_NEXT_BAR)
        _BARS[number] = _make_bar()
    return np.asarray(number, np.int32)


def _show(bar, fraction):
    percent = round(100 * float(np.clip(fraction, 0.0, 1.0)), 2)
    if bar.n == 0:
        bar.reset()  # the clock starts with the first step (not while compiling)
    if percent > bar.n:
        bar.n = percent
        bar.refresh()


def _update(number, fraction):
    with _LOCK:
        bar = _BARS.get(int(np.asarray(number).reshape(-1)[0]))
        if bar is not None:  # None: closed (the backward pass recomputing steps)
            _show(bar, np.asarray(fraction).reshape(-1)[0])


def _close(number, fraction):
    with _LOCK:
        bar = _BARS.pop(int(np.asarray(number).reshape(-1)[0]), None)
        if bar is not None:
            _show(bar, np.asarray(fraction).reshape(-1)[0])
            bar.close()


def open_bar():
    """A new bar's number (an int32 scalar), opened when the solve runs."""
    token = np.asarray(next(_NEXT_TOKEN) % 2**31, np.int32)
    return jax.pure_callback(
        _open, jax.ShapeDtypeStruct((), jnp.int32), token, vmap_method="broadcast_all"
    )


def least(fraction):
    """The least progress over the lanes of a `jax.vmap` (the value itself outside one)."""
    return -eqxi.unvmap_max(-jax.lax.stop_gradient(fraction))


def fraction(t, t0, t1):
    """(t - t0)/(t1 - t0), 1 for an empty interval."""
    span = t1 - t0
    return jnp.where(span == 0, 1.0, (t - t0) / jnp.where(span == 0, 1.0, span))


def report(number, before, after):
    """Show `after` (progress over the lanes) if it passed another whole percent since
    `before`."""
    before, after = least(before), least(after)
    passed = jnp.floor(100 * after) > jnp.floor(100 * before)
    jax.lax.cond(
        passed,
        lambda n, p: jax.debug.callback(_update, n, p, ordered=False),
        lambda n, p: None,
        number,
        after,
    )


def close_bar(number, final):
    """Show the progress reached (least over the lanes) and close the bar."""
    jax.debug.callback(_close, number, least(final), ordered=False)
