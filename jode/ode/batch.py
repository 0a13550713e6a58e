"""Many solves of one vector field at once: per-lane steps (vmap) or one shared step."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._jit import cached, check_solve
from .explicit import Tsit5
from .solution import Status, status_messages
from .solve import solve


def solve_batch(
    f, y0, t0, t1, args=None, *, shared_step: bool = False, kernel: bool = False, **kwargs
):
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
    - `kernel=True`: the whole batch in one Pallas kernel
      (`jode.ode.ensemble_kernel.solve_ensemble_kernel`, the design of DiffEqGPU's
      EnsembleGPUKernel): per-lane steps identical to the default path, for adaptive
      explicit solvers saving at t1 or on a grid of times. Meant for GPUs; on CPU it runs in
      Pallas interpret mode (slow: the default path is the CPU one). Forward only: under
      `jax.grad`/`jax.jvp` it raises (use the default path for gradients). Extra options
      `block=` (lanes per program) and `interpret=`; events, `stop=`, `jump_ts=`, dense
      output, constant steps, implicit solvers, adjoints other than the default and the
      diffrax backend raise a ValueError.

    Args:
        f, t0, t1, **kwargs: as for `jode.solve` (tolerances, solver, saveat, adjoint ...).
        y0: initial states, leaves of shape (B, ...).
        args: per-lane parameters, leaves of shape (B, ...).
        shared_step: one step size for the whole batch (see above).
        kernel: solve in one Pallas kernel (see above).

    Returns:
        A `jode.Solution` with `ys` leaves of shape (B, n_save, ...).

    Raises:
        ValueError: if the leaves of `y0` and `args` do not share a leading batch size.
        RuntimeError: (`throw=True`, called eagerly) if a lane failed, naming how many
            failed, the first failing lanes, and the first failure with its time. Under
            `jax.jit` the statuses are traced: the error (`eqx.branched_error_if`) names
            the first failed lane's failure only; use `throw=False` and
            `Solution.summary()` there.
    """
    throw = kwargs.pop("throw", True)
    if kernel:
        sol = _kernel_batch(f, y0, t0, t1, args, shared_step, kwargs)
    else:
        sol = _solve_batch(f, y0, t0, t1, args, shared_step=shared_step, **kwargs)
    if throw:
        sol = _raise_on_failure(sol, shared_step, kwargs)
    return sol


#: Options of `jode.solve` the ensemble kernel carries out; the others are refused by name.
_KERNEL_OPTIONS = ("solver", "rtol", "atol", "saveat", "dt0", "controller", "max_steps",
                   "block", "interpret")


def _kernel_batch(f, y0, t0, t1, args, shared_step, kwargs):
    """`solve_batch(..., kernel=True)`: check the options, then the ensemble kernel."""
    from .adjoint import DirectAdjoint
    from .ensemble_kernel import solve_ensemble_kernel

    if shared_step:
        raise ValueError("kernel=True steps every lane alone; drop shared_step=True")
    adjoint = kwargs.get("adjoint")
    if adjoint is not None and not isinstance(adjoint, DirectAdjoint):
        raise ValueError(
            f"kernel=True is forward-only; adjoint={adjoint!r} needs kernel=False (the "
            "vmap path)"
        )
    if kwargs.get("backend", "jode") != "jode":
        raise ValueError(f"kernel=True is jode's own kernel; drop backend={kwargs['backend']!r}")
    if kwargs.get("dense"):
        raise ValueError("kernel=True saves at t1 or on a grid of times; dense=True needs "
                         "kernel=False")
    for name in ("event", "stop", "jump_ts", "n_steps"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"kernel=True does not support {name}=; use kernel=False (the vmap path)"
            )
    handled = {"adjoint", "backend", "dense", "event", "stop", "jump_ts", "n_steps"}
    unknown = sorted(set(kwargs) - set(_KERNEL_OPTIONS) - handled)
    if unknown:
        raise ValueError(
            f"kernel=True takes the options {', '.join(_KERNEL_OPTIONS)}; got unknown "
            f"{', '.join(unknown)}"
        )
    options = {k: v for k, v in kwargs.items() if k in _KERNEL_OPTIONS}
    return solve_ensemble_kernel(f, y0, t0, t1, args, **options)


# Cached (compiled once per function and shapes) without the error check, which must see
# the statuses concrete to name the failed lanes.
@cached(check=check_solve, arrays=("y0", "args"), static=("t0", "t1", "dt0"), barrier=("y0",))
def _solve_batch(f, y0, t0, t1, args=None, *, shared_step: bool = False, **kwargs):
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves((y0, args))}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "solve_batch needs every leaf of y0 and args to carry the batch on its leading "
            f"axis (one common size); got leading sizes {sorted(map(str, sizes))}. Broadcast "
            "shared values with jnp.broadcast_to((B, ...))"
        )
    if not shared_step:
        sol = jax.vmap(lambda y, a: solve(f, y, t0, t1, a, throw=False, **kwargs))(y0, args)
    else:

        def stacked(t, y, a):
            return jax.vmap(lambda y, a: f(t, y, a))(y, a)

        sol = solve(stacked, y0, t0, t1, args, throw=False, **kwargs)
        sol = eqx.tree_at(
            lambda s: s.ys, sol, jax.tree.map(lambda y: jnp.swapaxes(y, 0, 1), sol.ys)
        )
    return sol


def _raise_on_failure(sol, shared_step, kwargs):
    """Raise naming the failed lanes: their count, the first few and the first one's failure.

    Eagerly (concrete statuses) this is a Python `RuntimeError` built from the statuses.
    Under `jax.jit` the statuses are traced and `eqx.branched_error_if` can only carry
    fixed messages: the first failed lane's status, and how to get the count and lanes.
    """
    solver = kwargs.get("solver") or Tsit5()
    messages = status_messages(kwargs.get("max_steps", 4096), solver)
    ok = (sol.status == Status.SUCCESS) | (sol.status == Status.EVENT)
    what = "the batch solved as one system (shared_step=True)" if shared_step else "a batch"
    if isinstance(sol.status, jax.core.Tracer):
        first = jnp.argmin(jnp.reshape(ok, (-1,)))
        status = jnp.reshape(sol.status, (-1,))[first]
        hint = (
            " Inside jax.jit the number and indices of the failed lanes cannot be named: "
            "pass throw=False and call sol.summary() on the result, or call "
            "jode.solve_batch outside jax.jit."
        )
        lane_messages = [m.replace("jode.solve failed", f"jode.solve_batch: {what} failed")
                         + hint for m in messages]
        return eqx.branched_error_if(sol, ~jnp.all(ok), status, lane_messages)
    ok = np.asarray(ok)
    if ok.all():
        return sol
    status = np.asarray(sol.status).reshape(-1)
    failed = np.flatnonzero(~ok.reshape(-1))
    first = int(failed[0])
    if shared_step:
        head = f"jode.solve_batch failed: {what} of {jax.tree.leaves(sol.ys)[0].shape[0]} lanes"
    else:
        head = f"jode.solve_batch failed in {failed.size} of {status.size} lanes"
    t_last = np.asarray(sol.stats["t_last"]).reshape(-1)[first]
    detail = messages[int(status[first])].replace("jode.solve failed: ", "")
    lane = "" if shared_step else f" (lane {first})"
    raise RuntimeError(
        f"{head} ({sol.summary()}). First failure{lane}, at t={t_last:.6g}: {detail} "
        "Call sol.summary() on the result of throw=False for the counts per status."
    )
