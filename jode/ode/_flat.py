"""The raveled problem both step loops solve, and one solver step of it.

`solve` ravels the state pytree once into a flat vector (`jax.flatten_util.ravel_pytree`),
so the loops (`_adaptive.while_solve`, `_constant.scan_constant`) carry a handful of arrays
whatever the user's structure. A step is the solver's Runge-Kutta step (Hairer, Nørsett &
Wanner 1993, *Solving ODEs I*, eq. II.1.8) with its dense-output rows `coeffs` (the
step's interpolating polynomial, §II.6 there, evaluated by `interpolation.horner`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class FlatProblem(NamedTuple):
    """dy/dt = f(t, y, args) on the raveled state, as `solve` hands it to the loops."""

    f: object  # flat vector field (t, y, args) -> dy, y and dy of shape (n,)
    args: object
    t0: jax.Array
    t1: jax.Array
    y0: jax.Array  # (n,)
    fy0: jax.Array  # f(t0, y0, args)
    direction: jax.Array  # +1 forwards in time, -1 backwards
    ts: jax.Array | None  # save times, or None
    rtol: jax.Array  # scalar or (n,)
    atol: jax.Array  # scalar or (n,)


def coeff_degree(solver, y):
    """Rows of the solver's dense-output polynomial for a state like `y`."""
    probe = jax.eval_shape(
        lambda y: (
            solver.step(lambda t, y: y, jnp.zeros((), y.dtype), y, y, jnp.ones((), y.dtype)).coeffs
        ),
        y,
    )
    return probe.shape[0]


def init_solver_state(solver, f_flat, args, t0, y0, fy0, rtol, atol):
    """Implicit solvers carry a state (Jacobian, counters) between steps; explicit ones none."""
    if not getattr(solver, "implicit", False):
        return None
    return solver.init_state(lambda t, y: f_flat(t, y, args), t0, y0, fy0, rtol, atol)


def step(solver, f, t, y, fy, h, state):
    """One step of `solver` from (t, y) of size h (with the solver's state, if any)."""
    if state is None:
        return solver.step(f, t, y, fy, h)
    return solver.step(f, t, y, fy, h, state=state)


def write(buf, idx, value, do):
    """buf[idx : idx + len(value)] = value where `do` (else unchanged), in place.

    A dynamic-update-slice, not a scatter: XLA updates it in place at the cost of the block
    (a scatter costs several times more per call on CPU). `idx` must leave room for the
    block; where `do` is false the block's old rows are written back.
    """
    old = jax.lax.dynamic_slice_in_dim(buf, idx, value.shape[0])
    return jax.lax.dynamic_update_slice_in_dim(buf, jnp.where(do, value, old), idx, 0)
