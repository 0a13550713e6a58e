"""The iteration loop shared by every step-wise solver: convergence, divergence, trace.

A solver works on a flat vector z and a map `fn(z) -> f(z)`; it supplies `init` and `step`
and this loop decides when to stop. With r(z) = max|f(z) - z|, checked after every step:
- converged: r(z) <= atol + rtol r(z_0) (a bound independent of |z|: see
  `result.within_tolerance`);
- non-finite: f(z) or z is NaN/inf (the step is rejected: the last finite iterate stays);
- diverged: r(z) > divergence_ratio * (smallest residual seen so far), or the iterates
  moved further than divergence_ratio first residuals from z_0 (`result.ran_away`);
- otherwise iterate until max_steps.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._results import RESULTS
from .result import RUNNING, max_norm, ran_away, within_tolerance


class RawResult(NamedTuple):
    """The loop's outcome on flat vectors (the public result unravels `z`)."""

    z: jax.Array
    status: jax.Array
    steps: jax.Array
    nfev: jax.Array
    residual: jax.Array
    residuals: jax.Array | None
    stiff: jax.Array  # an explicit SteadyState stopped short on a stiff flow
    stiffness: jax.Array  # its h·ρ estimate (NaN where not estimated)


class _Carry(NamedTuple):
    z: jax.Array
    fz: jax.Array
    state: object
    steps: jax.Array
    nfev: jax.Array
    status: jax.Array
    residual: jax.Array
    best: jax.Array
    residuals: jax.Array | None


def _classify(z, fz, residual, best, z0, r0, rtol, atol, divergence_ratio):
    finite = jnp.all(jnp.isfinite(z)) & jnp.all(jnp.isfinite(fz))
    diverged = (residual > divergence_ratio * best) | ran_away(
        z, z0, r0, divergence_ratio, atol
    )
    status = jnp.where(
        ~finite,
        RESULTS.NONFINITE,
        jnp.where(
            within_tolerance(residual, r0, rtol, atol, fz),
            RESULTS.CONVERGED,
            jnp.where(diverged, RESULTS.DIVERGED, RUNNING),
        ),
    )
    return finite, status.astype(jnp.int32)


def iterate(solver, fn, z0, *, rtol, atol, max_steps, divergence_ratio, trace) -> RawResult:
    """Run `solver` on the flat map `fn` from `z0` until one of the stopping rules holds."""
    dtype = z0.dtype
    rtol = jnp.asarray(rtol, dtype)
    atol = jnp.asarray(atol, dtype)
    fz0 = fn(z0)
    r0 = max_norm(fz0 - z0)
    _, status0 = _classify(
        z0, fz0, r0, jnp.asarray(jnp.inf, dtype), z0, r0, rtol, atol, divergence_ratio
    )
    residuals = None
    if trace:
        residuals = jnp.full((max_steps + 1,), jnp.nan, dtype).at[0].set(r0)
    init = _Carry(
        z=z0, fz=fz0, state=solver.init(fn, z0, fz0), steps=jnp.zeros((), jnp.int32),
        nfev=jnp.ones((), jnp.int32), status=status0, residual=r0, best=r0, residuals=residuals,
    )

    def cond(c):
        return (c.status == RUNNING) & (c.steps < max_steps)

    def body(c):
        z1, fz1, state, nfev = solver.step(fn, c.z, c.fz, c.state)
        residual = max_norm(fz1 - z1)
        finite, status = _classify(
            z1, fz1, residual, c.best, z0, r0, rtol, atol, divergence_ratio
        )
        keep = lambda new, old: jax.tree.map(  # noqa: E731
            lambda a, b: jnp.where(finite, a, b), new, old
        )
        steps = c.steps + 1
        new_residuals = c.residuals
        if c.residuals is not None:
            new_residuals = c.residuals.at[steps].set(jnp.where(finite, residual, jnp.inf))
        return _Carry(
            z=keep(z1, c.z), fz=keep(fz1, c.fz), state=keep(state, c.state), steps=steps,
            nfev=c.nfev + nfev, status=status, residual=jnp.where(finite, residual, c.residual),
            best=jnp.where(finite, jnp.minimum(c.best, residual), c.best),
            residuals=new_residuals,
        )

    final = jax.lax.while_loop(cond, body, init)
    status = jnp.where(final.status == RUNNING, RESULTS.MAX_STEPS, final.status)
    return RawResult(
        z=final.z, status=status.astype(jnp.int32), steps=final.steps, nfev=final.nfev,
        residual=final.residual, residuals=final.residuals, stiff=jnp.zeros((), bool),
        stiffness=jnp.full((), jnp.nan, dtype),
    )
