"""`solve`: check -> init -> step loop -> save.

`solve` validates its arguments once and gathers them into one options record (`Options`),
which the backend and the loops read. The state pytree is raveled once into a flat vector
(`_flat.FlatProblem`), so the loop carries a handful of arrays whatever the user's
structure. Adaptive solves run a `lax.while_loop` (or the adjoint's reverse-differentiable
loop, `loop.checkpointed_loop`: two-level checkpointing, Griewank & Walther 2008,
*Evaluating Derivatives*, §12.3) in `_adaptive.py`; constant steps with a step count known
before tracing run a `lax.scan` (`_constant.py`), which every JAX transformation
differentiates.

Saving at requested times never shortens a step: the save times inside an accepted step
are interpolated from its dense-output polynomial (`_adaptive.py`). Under `jax.vmap` the
step loop runs select-free (`loop.masked_while_loop`): each lane takes the steps it would
take alone. `jode.solve_batch(..., shared_step=True)` instead takes one step for the whole
batch.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._jit import cached, check_solve
from . import checks
from . import events as ev
from ._adaptive import while_solve
from ._constant import scan_constant
from ._flat import FlatProblem
from .adjoint import AbstractAdjoint, DirectAdjoint, ForwardMode
from .control import ConstantStep, PIDController, initial_step
from .explicit import EXPLICIT_SOLVERS, AbstractSolver, Tsit5
from .implicit import IMPLICIT_SOLVERS
from .solution import Solution, raise_on_failure


class SaveAt(eqx.Module):
    """What to save.

    Args:
        ts: times at which to save (strictly monotone in the direction of integration,
            inside [t0, t1]); interpolated from the step's dense output.
        t1: save the final state (the default when nothing else is asked for).
        steps: save every accepted step (arrays of length max_steps + 1, padded with inf).
        dense: keep every step's interpolant for `Solution.evaluate`.
    """

    ts: jax.Array | None = None
    t1: bool = False
    steps: bool = False
    dense: bool = False


class Options(eqx.Module):
    """The validated options of one solve, built once by `solve` (see its arguments).

    The backend (`_solve_jode` or `diffrax_backend.solve_diffrax`), the adjoint and the
    loops read their options from this record. Python integers and flags are static fields
    (they fix the traced program); the rest are pytree children as in the call (tolerances
    and times may be traced arrays).
    """

    solver: AbstractSolver
    rtol: object
    atol: object
    dt0: object
    saveat: SaveAt
    controller: object
    jump_ts: object
    stop: object
    event: tuple | None
    adjoint: AbstractAdjoint
    n_steps: int | None = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    throw: bool = eqx.field(static=True)
    progress: bool = eqx.field(static=True)


def _weak(x):
    """Whether x is a weakly typed array or tracer (from a Python scalar)."""
    return isinstance(x, jax.Array) and jax.typeof(x).weak_type


def _strong_state(x):
    """A leaf of y0 as a strongly typed array: Python numbers become the default float.

    A weak type would reach the loops' custom derivatives as a Python literal (JAX passes
    concrete weakly typed primals that way), which is not an array there.
    """
    if isinstance(x, bool):
        return x
    if isinstance(x, int | float):
        return jnp.asarray(x, jnp.result_type(float))
    if _weak(x):
        return jax.lax.convert_element_type(x, jnp.result_type(x))
    return x


def _strong_args(args, y0):
    """Weakly typed floating arrays of args (Python floats being differentiated, or passed
    through `jax.jit`) take the state's floating dtype, as they would in arithmetic with it.

    Python numbers that are not traced stay constants of the vector field.
    """
    leaves = jax.tree.leaves(y0)
    dtype = jnp.finfo(jnp.result_type(*leaves) if leaves else float).dtype  # complex: real

    def convert(x):
        if _weak(x) and jnp.issubdtype(x.dtype, jnp.floating):
            return jax.lax.convert_element_type(x, dtype)
        return x

    return jax.tree.map(convert, args)


def _flatten_tol(tol, y0, dtype):
    leaves = jax.tree.leaves(tol)
    if len(leaves) == 1 and jnp.ndim(leaves[0]) == 0:
        return jnp.asarray(leaves[0], dtype)
    try:
        full = jax.tree.map(
            lambda t, y: jnp.broadcast_to(jnp.asarray(t, dtype), jnp.shape(y)), tol, y0
        )
    except ValueError as exc:
        raise ValueError(
            "rtol/atol must be scalars or pytrees shaped like y0 (per-component tolerances)"
        ) from exc
    return ravel_pytree(full)[0]


def _static_step_count(t0, t1, dt0, n_steps):
    if n_steps is not None:
        return n_steps
    t0c, t1c, dtc = checks._concrete(t0), checks._concrete(t1), checks._concrete(dt0)
    if t0c is None or t1c is None or dtc is None:
        return None
    return max(1, math.ceil(float((t1c - t0c) / dtc) - 1e-9))


@cached(check=check_solve, arrays=("y0", "args"), static=("t0", "t1", "dt0"), barrier=("y0",))
def solve(
    f,
    y0,
    t0,
    t1,
    args=None,
    *,
    solver=None,
    rtol=1e-6,
    atol=1e-6,
    dt0=None,
    n_steps: int | None = None,
    saveat=None,
    dense: bool = False,
    controller=None,
    jump_ts=None,
    stop=None,
    event=None,
    adjoint: AbstractAdjoint | None = None,
    max_steps: int = 4096,
    backend: str = "jode",
    throw: bool = True,
    progress: bool = False,
) -> Solution:
    """Solve dy/dt = f(t, y, args) from y(t0) = y0 to t1.

    Args:
        f: the vector field f(t, y, args) (diffrax's convention); y any pytree of arrays.
        y0: initial state, a pytree of floating arrays.
        t0, t1: the interval; t1 < t0 integrates backwards in time.
        args: anything f needs (parameters, networks); differentiable.
        solver: a jode solver instance, default `jode.Tsit5()`.
        rtol, atol: tolerances of the adaptive controller (scalars or pytrees like y0).
        dt0: the step size. Alone it means constant steps of dt0 (the last one clipped to
            t1); with `controller=jode.PIDController()` it is the initial adaptive step.
            Adaptive solves without dt0 choose it automatically (Hairer-Nørsett-Wanner).
        n_steps: constant steps of size (t1 - t0)/n_steps (instead of dt0).
        saveat: an array of save times, or a `jode.SaveAt`; default: t1 only.
        dense: keep dense output for `Solution.evaluate`.
        controller: `jode.PIDController(...)` (default for solvers with an error estimate)
            or `jode.ConstantStep()`.
        jump_ts: times where f is discontinuous; steps land on them exactly.
        stop: a terminating condition stop(t, y, args) -> bool, checked after every
            accepted step; when true the solve ends there with status `Status.EVENT`
            (a success). E.g. a steady state: `lambda t, y, a: norm(f(t, y, a)) < 1e-8`.
            It is the special case of an event without root finding: the solve ends at
            the end of the first step where the condition holds (no `sol.event_t`).
        event: a `jode.Event`, or a tuple/list of them: the solve ends where a condition
            g(t, y, args) crosses zero, located inside the step by root finding on the
            dense output. Then `sol.status` is `Status.EVENT` (a success), `sol.event_t`
            (also `sol.t1`) the event time, `sol.event_y` the state there,
            `sol.event_index` which event fired (-1 if none did: event_t/event_y are NaN);
            saves after the event are NaN, as unreached saves are, and `sol.evaluate` is
            NaN past it. The event
            time is differentiable (implicit function theorem); see `jode.Event`. Not
            with `stop=` nor with `BacksolveAdjoint`.
        adjoint: how gradients flow: `jode.DirectAdjoint()` (default),
            `jode.BacksolveAdjoint()`, `jode.ForwardMode()`.
        max_steps: bound on the number of steps.
        backend: "jode" or "diffrax" (the same call carried out by diffrax).
        throw: raise on failure (default); with False, inspect `sol.status`.
        progress: show a tqdm bar of (t - t0)/(t1 - t0) while the solve runs, updated at
            most every 1% (from inside the compiled loop, eagerly and under `jax.jit`;
            under `jax.vmap` one bar showing the least progressed lane). It ends at 100%
            when the solve reaches t1. Off by default: a solve without it is unchanged.

    Returns:
        A `jode.Solution`.

    Raises:
        ValueError: on bad input, before tracing; and, with `throw=True`, a runtime error
            naming the failure and a fix.

    Compile cache: an eager call compiles once per vector-field object, shapes, dtypes and
    options (solver, tolerances, Python-number times, ...); a repeat call runs the compiled
    solve. Define f once: a lambda written inside a loop is a new function each time and
    recompiles. Values f reads from globals or closures are fixed at the first call; pass
    what changes through `args` (traced, any value). Concrete t0, t1, dt0 (numbers or 0-d
    arrays) are compile-time constants, as in an uncached call (a constant-step solve needs
    its step count): one compilation per value; to vary them without recompiling, call
    `solve` inside your own `jax.jit` with traced times.

    Example:
        >>> sol = jode.solve(lambda t, y, a: -a * y, 1.0, 0.0, 1.0, args=2.0, saveat=ts)
    """
    solver = Tsit5() if solver is None else solver
    adjoint = DirectAdjoint() if adjoint is None else adjoint
    checks.check_solver(solver, {**EXPLICIT_SOLVERS, **IMPLICIT_SOLVERS})
    if not isinstance(solver, AbstractSolver):
        raise ValueError(
            f"solver must be a jode solver (a jode.AbstractSolver, e.g. jode.Tsit5() or "
            f"jode.ExplicitRK(your_tableau)); got solver={solver!r}"
        )
    if backend not in ("jode", "diffrax"):
        raise ValueError(f"backend must be 'jode' or 'diffrax'; got backend={backend!r}")
    if not isinstance(adjoint, AbstractAdjoint):
        raise ValueError(
            f"adjoint must be jode.DirectAdjoint(), jode.BacksolveAdjoint() or "
            f"jode.ForwardMode(); got {adjoint!r}"
        )
    if not isinstance(saveat, SaveAt):
        saveat = SaveAt(t1=True) if saveat is None else SaveAt(ts=saveat)
    if dense and not saveat.dense:
        saveat = SaveAt(ts=saveat.ts, t1=saveat.t1, steps=saveat.steps, dense=True)
    if saveat.ts is None and not saveat.steps:
        saveat = SaveAt(t1=True, dense=saveat.dense)
    y0 = jax.tree.map(_strong_state, y0)
    checks.check_y0(y0)
    args = _strong_args(args, y0)
    checks.check_interval(t0, t1, dt0, n_steps, max_steps)
    checks.check_tolerances(rtol, atol)
    checks.warn_tolerances_below_precision(rtol, atol, y0)
    checks.check_vector_field(f, t0, y0, args)
    if saveat.ts is not None:
        checks.check_save_times(saveat.ts, t0, t1)
    if controller is None:
        controller = (
            PIDController()
            if solver.adaptive and dt0 is None and n_steps is None
            else ConstantStep()
        )
    if isinstance(controller, PIDController) and not solver.adaptive:
        raise ValueError(
            f"{solver!r} has no error estimate, so it cannot adapt its step: pass dt0= or "
            "n_steps= for constant steps, or use an adaptive solver such as jode.Tsit5()"
        )
    if isinstance(controller, ConstantStep) and dt0 is None and n_steps is None:
        why = "" if solver.adaptive else " (it has no error estimate, so it cannot adapt)"
        raise ValueError(f"constant steps with {solver!r}{why} need dt0= or n_steps=")
    if event is not None:
        event = ev.as_events(event)
        if stop is not None:
            raise ValueError(
                "pass either stop= (a boolean condition) or event= (conditions crossing zero), "
                "not both: express the stop condition as an Event"
            )
        if not isinstance(adjoint, DirectAdjoint | ForwardMode):
            raise ValueError(
                f"events need adjoint=jode.DirectAdjoint() or jode.ForwardMode(); got {adjoint!r}"
            )
        ev.check_conditions(event, t0, y0, args)
    opts = Options(
        solver=solver, rtol=rtol, atol=atol, dt0=dt0, saveat=saveat, controller=controller,
        jump_ts=jump_ts, stop=stop, event=event, adjoint=adjoint, n_steps=n_steps,
        max_steps=max_steps, throw=throw, progress=progress,
    )
    if backend == "diffrax":
        from .diffrax_backend import solve_diffrax

        return solve_diffrax(f, y0, t0, t1, args, opts)
    return adjoint.solve(_solve_jode, f, y0, t0, t1, args, opts)


def _solve_jode(f, y0, t0, t1, args, opts: Options, loop):
    """The jode backend; `loop` is the adjoint's while loop (cond, body, init, args, max_iter)."""
    y0_flat, unravel = ravel_pytree(y0)
    dtype = y0_flat.dtype

    def f_flat(t, y, args):
        return ravel_pytree(f(t, unravel(y), args))[0].astype(dtype)

    # Concrete times fix the number of constant steps: keep them before jnp.asarray, which
    # makes them tracers under jit (the compile cache's, or the caller's).
    concrete = [checks._concrete(x) for x in (t0, t1)]
    t_static = [x if c is None else c.astype(dtype) for x, c in zip((t0, t1), concrete)]
    t0 = jnp.asarray(t0, dtype)
    t1 = jnp.asarray(t1, dtype)
    ts = None if opts.saveat.ts is None else jnp.asarray(opts.saveat.ts, dtype)
    y0_flat, ts = checks.traced_checks(y0_flat, ts, t0, t1)
    direction = jnp.where(t1 >= t0, 1, -1).astype(dtype)
    adaptive = isinstance(opts.controller, PIDController)
    fy0 = f_flat(t0, y0_flat, args)
    nfev = jnp.asarray(1, jnp.int32)
    flat = FlatProblem(
        f=f_flat,
        args=args,
        t0=t0,
        t1=t1,
        y0=y0_flat,
        fy0=fy0,
        direction=direction,
        ts=ts,
        rtol=_flatten_tol(opts.rtol, y0, dtype),
        atol=_flatten_tol(opts.atol, y0, dtype),
    )

    dt0, n_steps, stop, event = opts.dt0, opts.n_steps, opts.stop, opts.event
    n_static = None if adaptive else _static_step_count(*t_static, dt0, n_steps)
    if n_static is not None and opts.jump_ts is None and stop is None and event is None:
        sol_parts = scan_constant(opts, flat, n_static)
    else:
        if adaptive:
            if dt0 is None:
                h0 = initial_step(
                    lambda t, y: f_flat(t, y, args),
                    t0,
                    y0_flat,
                    fy0,
                    direction,
                    opts.solver.error_order,
                    flat.rtol,
                    flat.atol,
                )
                nfev = nfev + 1
            else:
                h0 = jnp.asarray(dt0, dtype)
        else:
            h0 = (t1 - t0) / n_steps if n_steps is not None else jnp.asarray(dt0, dtype)
        h0 = jax.lax.stop_gradient(h0)
        sol_parts = while_solve(
            opts,
            flat,
            h0,
            adaptive,
            loop,
            None if stop is None else (lambda t, y, a: jnp.asarray(stop(t, unravel(y), a), bool)),
            None if event is None else (ev.flat_condition(event, unravel, dtype), event),
        )
    ts_out, ys_flat, stats, status, dense_ts, dense_coeffs, *event_parts = sol_parts
    stats["nfev"] = stats["nfev"] + nfev
    ys = jax.vmap(unravel)(ys_flat)
    event_fields = {}
    if event is not None:
        fired, index, t_star, y_star = event_parts[0]
        nan = jnp.asarray(jnp.nan, dtype)
        event_fields = dict(
            event_t=jnp.where(fired, t_star, nan),
            event_y=unravel(jnp.where(fired, y_star, nan)),
            event_index=index,
        )
        t1 = jnp.where(fired, t_star, t1)
    sol = Solution(
        ts=ts_out,
        ys=ys,
        stats=stats,
        status=status,
        t0=t0,
        t1=t1,
        dense_ts=dense_ts,
        dense_coeffs=dense_coeffs,
        unravel=unravel,
        **event_fields,
    )
    if opts.throw:
        sol = raise_on_failure(sol, opts.max_steps, opts.solver)
    return sol
