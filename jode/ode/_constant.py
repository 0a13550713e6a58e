"""Constant steps with a step count known before tracing, as a `lax.scan`.

A scan is differentiated by every JAX transformation (forward and reverse mode, any
nesting), whatever the adjoint. Steps run in segments of k = ⌈√N⌉ under `jax.checkpoint`:
reverse mode stores O(√N) carries (two-level checkpointing, Griewank & Walther 2008,
*Evaluating Derivatives*, §12.3). Save times are interpolated from the dense output of the
step holding them (the step's polynomial, Hairer, Nørsett & Wanner 1993, §II.6).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from . import _progress
from ._flat import FlatProblem, coeff_degree, init_solver_state, step, write
from .control import all_finite
from .interpolation import evaluate_steps, horner
from .solution import Status


def scan_constant(opts, prob: FlatProblem, n: int):
    """`n` constant steps as a lax.scan: differentiable by every JAX transformation.

    `opts` is the solve's options record (`solve.Options`): its solver, step (dt0 or
    n_steps) and saveat are read here.

    The scan carries only what is saved: the state, and with save times the dense-output
    rows of the steps that hold one (at most one row per save time, written in place), so
    memory follows the saves, not the step count. Only `SaveAt(steps=True)` and dense
    output keep a row per step.

    Steps run in ⌈N/k⌉ segments of k = ⌈√N⌉ steps, each under `jax.checkpoint`: reverse
    mode stores the carry at segment starts and recomputes one segment at a time, O(√N)
    carries (two-level checkpointing, Griewank & Walther 2008, *Evaluating Derivatives*,
    §12.3), the promise `DirectAdjoint` makes for adaptive loops.
    """
    solver, saveat = opts.solver, opts.saveat
    f_flat, args, t0, t1, y0, fy0 = prob.f, prob.args, prob.t0, prob.t1, prob.y0, prob.fy0
    ts, direction = prob.ts, prob.direction
    dtype = y0.dtype
    dt = (t1 - t0) / n if opts.n_steps is not None else jnp.asarray(opts.dt0, dtype)
    idx = jnp.arange(n + 1, dtype=dtype)
    grid = jnp.where(jnp.arange(n + 1) == n, t1, t0 + idx * dt)
    keep_steps = saveat.steps
    keep_dense = saveat.dense

    state0 = init_solver_state(solver, f_flat, args, t0, y0, fy0, prob.rtol, prob.atol)
    saves0 = None
    if ts is not None and not keep_dense:
        # The step holding each save time (grid points belong to the earlier step; a
        # rounding slip of one step only evaluates a polynomial an ulp outside [0, 1]).
        raw = jnp.floor(jax.lax.stop_gradient((ts - t0) / dt))
        save_step = jnp.clip(jnp.nan_to_num(raw, nan=0.0), 0, n - 1).astype(jnp.int32)
        save_step = jnp.where(
            (save_step > 0) & (grid[jnp.clip(save_step, 0, n)] == ts), save_step - 1, save_step
        )
        # Distinct steps in order (ts is monotone, so is save_step), padded with n.
        first = jnp.concatenate([jnp.ones((1,), bool), save_step[1:] != save_step[:-1]])
        rank = jnp.cumsum(first.astype(jnp.int32)) - 1
        distinct = jnp.full(ts.shape, n, jnp.int32).at[rank].set(save_step)
        degree = coeff_degree(solver, y0)
        rows0 = jnp.zeros((ts.shape[0], degree, y0.shape[0]), dtype)
        saves0 = (rows0, jnp.zeros((), jnp.int32))

    bar = _progress.open_bar() if opts.progress else None

    def body(carry, i):
        y, fy, state, ok, t_last, saves = carry
        t, t_next = grid[i], grid[i + 1]
        if bar is not None:
            _progress.report(bar, i / n, (i + 1) / n)
        res = step(solver, lambda t, y: f_flat(t, y, args), t, y, fy, t_next - t, state)
        fine = ok & all_finite(res.y1)
        t_last = jnp.where(fine, t_next, t_last)
        if saves is not None:
            rows, p = saves
            hit = distinct[jnp.minimum(p, distinct.shape[0] - 1)] == i
            rows = write(rows, p, res.coeffs[None], hit)
            saves = (rows, p + hit.astype(jnp.int32))
        out = (res.y1 if keep_steps else None, res.coeffs if keep_dense else None)
        new = (res.y1, res.f1, getattr(res, "state", None), ok & res.ok, t_last, saves)
        return new, out

    init = (y0, fy0, state0, jnp.ones((), bool), t0, saves0)
    carry, (y_steps, coeffs) = checkpointed_scan(body, init, n)
    y_end, _, state, ok, t_last, saves = carry
    if bar is not None:
        _progress.close_bar(bar, _progress.fraction(t_last, t0, t1))
    finite = jnp.all(jnp.isfinite(y_end))
    status = jnp.where(finite, Status.SUCCESS, Status.NONFINITE)
    status = jnp.where(finite & ~ok, Status.NEWTON_FAILED, status).astype(jnp.int32)
    count = jnp.asarray(n, jnp.int32)
    stats = dict(
        steps=count,
        accepted=count,
        rejected=jnp.zeros((), jnp.int32),
        nfev=count * solver.f_evals_per_step,
        t_last=t_last,
    )
    if state is not None:
        stats.update(solver.stats(state))
    if ts is not None and saves is not None:
        t_start = grid[save_step]
        h = grid[save_step + 1] - t_start
        theta = (ts - t_start) / jnp.where(h == 0, 1, h)
        c = saves[0][rank]  # (n_save, degree, n)
        ys = horner(jnp.moveaxis(c, 1, 0), theta[:, None])
        ts_out = ts
    elif ts is not None:
        ys = evaluate_steps(grid, coeffs, count, ts, direction)
        ts_out = ts
    elif saveat.steps:
        ys = jnp.concatenate([y0[None], y_steps])
        ts_out = grid
    else:
        ys, ts_out = y_end[None], t1[None]
    dense_ts, dense_coeffs = (grid, coeffs) if saveat.dense else (None, None)
    return ts_out, ys, stats, status, dense_ts, dense_coeffs


#: Constant-step scans shorter than this run as one scan (nothing to gain from segments).
CHECKPOINT_MIN_STEPS = 64


def checkpointed_scan(body, init, n):
    """`lax.scan(body, init, arange(n))` as segments of k = ⌈√n⌉ steps under
    `jax.checkpoint` (see `scan_constant`); the stacked outputs are those of the plain scan.
    """
    if n < CHECKPOINT_MIN_STEPS:
        return jax.lax.scan(body, init, jnp.arange(n, dtype=jnp.int32))
    k = math.isqrt(n - 1) + 1
    n_seg, rem = divmod(n, k)

    @jax.checkpoint
    def segment(carry, start):
        return jax.lax.scan(body, carry, start + jnp.arange(k, dtype=jnp.int32))

    carry, outs = jax.lax.scan(segment, init, k * jnp.arange(n_seg, dtype=jnp.int32))
    outs = jax.tree.map(lambda x: x.reshape((n_seg * k,) + x.shape[2:]), outs)
    if rem:
        carry, tail = jax.lax.scan(body, carry, n_seg * k + jnp.arange(rem, dtype=jnp.int32))
        outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outs, tail)
    return carry, outs
