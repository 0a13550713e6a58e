"""Many solves of one vector field at once: per-lane steps (vmap) or one shared step."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._jit import cached, check_solve
from .solve import solve


@cached(check=check_solve, arrays=("y0", "args"), static=("t0", "t1", "dt0"))
def solve_batch(f, y0, t0, t1, args=None, *, shared_step: bool = False, **kwargs):
    """Solve dy/dt = f(t, y, args) for a batch of initial states and/or parameters.

    Every leaf of `y0` and of `args` carries the batch on its leading axis (use
    `jnp.broadcast_to` for what the lanes share). The result is what
    `jax.vmap(jode.solve)` returns: `ys` with a leading batch axis, then time.

    - `shared_step=False` (default): `jax.vmap` of `jode.solve`. Each lane takes its own
      steps and gets its own statistics and status, exactly as if solved alone; the batched
      loop runs every lane's step at once while any lane is still going (see
      `jode.ode.loop.masked_while_loop`).
    - `shared_step=True`: one solve of the stacked state, as torchdiffeq does for a batch:
      one step size for all lanes, chosen from the RMS error over the whole batch. Fewer
      loop iterations when the lanes need similar steps, but the lanes' answers depend on
      each other (a stiff lane shrinks everyone's step) and the statistics and status are
      the batch's.

    Args:
        f, t0, t1, **kwargs: as for `jode.solve` (tolerances, solver, saveat, adjoint ...).
        y0: initial states, leaves of shape (B, ...).
        args: per-lane parameters, leaves of shape (B, ...).
        shared_step: one step size for the whole batch (see above).

    Returns:
        A `jode.Solution` with `ys` leaves of shape (B, n_save, ...).

    Raises:
        ValueError: if the leaves of `y0` and `args` do not share a leading batch size.
    """
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves((y0, args))}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "solve_batch needs every leaf of y0 and args to carry the batch on its leading "
            f"axis (one common size); got leading sizes {sorted(map(str, sizes))}. Broadcast "
            "shared values with jnp.broadcast_to((B, ...))"
        )
    if not shared_step:
        return jax.vmap(lambda y, a: solve(f, y, t0, t1, a, **kwargs))(y0, args)

    def stacked(t, y, a):
        return jax.vmap(lambda y, a: f(t, y, a))(y, a)

    sol = solve(stacked, y0, t0, t1, args, **kwargs)
    return eqx.tree_at(lambda s: s.ys, sol, jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), sol.ys))
