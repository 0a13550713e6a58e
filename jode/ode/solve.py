"""`solve`: check -> init -> step loop -> save.

The state pytree is raveled once into a flat vector, so the loop carries a handful of
arrays whatever the user's structure. Adaptive solves run a `lax.while_loop` (or the
adjoint's reverse-differentiable loop); constant steps with a step count known before
tracing run a `lax.scan`, which every JAX transformation differentiates.

Saving at requested times never shortens a step: after each accepted step the save times
inside it are filled from that step's dense-output polynomial, up to `SAVE_WINDOW` at a time
with one vectorized evaluation and an in-place scatter; a step spanning more save times
is drained over further loop iterations that take no step.

Under `jax.vmap` the step loop runs select-free (`loop.masked_while_loop`): the body is a
no-op for a finished lane, so the batched loop applies the vmapped body to every lane while
any is active, with state vectors stored lanes-last. Each lane takes the steps it would take
alone. `jode.solve_batch(..., shared_step=True)` instead takes one step for the whole batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._jit import cached, check_solve
from . import checks
from . import events as ev
from .adjoint import AbstractAdjoint, DirectAdjoint, ForwardMode
from .control import (
    ConstantStep,
    PIDController,
    all_finite,
    initial_step,
    pid_update,
    scaled_error,
    small_sum,
)
from .explicit import EXPLICIT_SOLVERS, AbstractSolver, Tsit5
from .implicit import IMPLICIT_SOLVERS
from .interpolation import evaluate_steps, horner
from .loop import batched
from .solution import Solution, Status, raise_on_failure

SAVE_WINDOW = 4


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


class _Carry(NamedTuple):
    # The save buffers: the body only writes into them (see loop.checkpointed_loop).
    WRITE_ONLY = ("ys", "step_ts", "step_ys", "dense_coeffs")

    t: jax.Array
    y: jax.Array
    fy: jax.Array
    h: jax.Array
    prev_inv: jax.Array
    steps: jax.Array
    accepted: jax.Array
    rejected: jax.Array
    status: jax.Array
    last_t: jax.Array
    last_h: jax.Array
    last_coeffs: jax.Array | tuple | None  # the last step's dense-output rows
    pending: jax.Array
    save_idx: jax.Array
    ys: jax.Array | None
    step_ts: jax.Array | None
    step_ys: jax.Array | None
    dense_coeffs: jax.Array | None
    solver_state: object = None  # implicit solvers: Jacobian, counters (see implicit.py)
    active: jax.Array | bool = True  # the loop condition, kept current by the body
    event: object = None  # events.EventState: conditions now and the step they crossed in


class _Problem(NamedTuple):
    """Everything static or traced that the loop body needs, besides the carry."""

    f: object  # flat vector field (t, y, args) -> dy
    solver: object
    controller: object
    adaptive: bool
    t1: jax.Array
    direction: jax.Array
    rtol: jax.Array
    atol: jax.Array
    ts: jax.Array | None
    jump_ts: jax.Array | None
    max_steps: int
    stop: object = None  # flat terminating condition (t, y, args) -> bool, or None
    event: object = None  # flat event conditions (t, y, args) -> (n_events,), or None
    event_dirs: object = None  # (n_events,) +1, -1 or 0 (either direction)


def _coeff_degree(solver, y):
    probe = jax.eval_shape(
        lambda y: (
            solver.step(lambda t, y: y, jnp.zeros((), y.dtype), y, y, jnp.ones((), y.dtype)).coeffs
        ),
        y,
    )
    return probe.shape[0]


def _init_solver_state(solver, f_flat, args, t0, y0, fy0, rtol, atol):
    """Implicit solvers carry a state (Jacobian, counters) between steps; explicit ones none."""
    if not getattr(solver, "implicit", False):
        return None
    return solver.init_state(lambda t, y: f_flat(t, y, args), t0, y0, fy0, rtol, atol)


def _step(solver, f, t, y, fy, h, state):
    if state is None:
        return solver.step(f, t, y, fy, h)
    return solver.step(f, t, y, fy, h, state=state)


def _write(buf, idx, value, do):
    """buf[idx : idx + len(value)] = value where `do` (else unchanged), in place.

    A dynamic-update-slice, not a scatter: XLA updates it in place at the cost of the block
    (a scatter costs several times more per call on CPU). `idx` must leave room for the
    block; where `do` is false the block's old rows are written back.
    """
    old = jax.lax.dynamic_slice_in_dim(buf, idx, value.shape[0])
    return jax.lax.dynamic_update_slice_in_dim(buf, jnp.where(do, value, old), idx, 0)


def _body(prob: _Problem, args, c: _Carry) -> _Carry:
    # Every update below is masked by the lane's own `active` flag, so the body is a no-op
    # once the loop condition is false: `loop.while_loop` relies on it under vmap.
    d, t1 = prob.direction, prob.t1
    f = lambda t, y: prob.f(t, y, args)  # noqa: E731
    can_step = c.active & ~c.pending & (d * c.t < d * t1) & (c.steps < prob.max_steps)

    # Step to t1 exactly at the end, and to the next jump time if there is one.
    h = c.h
    t_end = c.t + h
    hit_t1 = d * t_end >= d * t1
    t_end = jnp.where(hit_t1, t1, t_end)
    at_jump = jnp.zeros((), bool)
    if prob.jump_ts is not None:
        later = jnp.where(d * prob.jump_ts > d * c.t, d * prob.jump_ts, jnp.inf)
        next_jump = d * jnp.min(later)
        at_jump = d * t_end >= d * next_jump
        t_end = jnp.where(at_jump, next_jump, t_end)
    h = t_end - c.t
    f_step = f
    if prob.jump_ts is not None:
        # Inside a step that ends on a jump, f is its left limit: stage times are clipped to
        # the float just before the jump (the right limit is taken after landing, below).
        t_left = jnp.nextafter(t_end, t_end - d)
        f_step = lambda t, y: f(jnp.where(at_jump & (d * t > d * t_left), t_left, t), y)  # noqa: E731

    res = _step(prob.solver, f_step, c.t, c.y, c.fy, h, c.solver_state)
    # A non-finite derivative at the current state (a NaN parameter, f undefined there) or
    # step size fails at once: no smaller step can help. A non-finite candidate state (or
    # error estimate, which scaled_error makes inf) is rejected like a too large step, and
    # a non-finite state fails as non-finite once the step cannot shrink further.
    broken = ~all_finite(c.fy) | ~jnp.isfinite(h)
    if prob.adaptive:
        finite = all_finite(res.y1)
        err = scaled_error(res.error, c.y, res.y1, prob.rtol, prob.atol)
        err = jnp.where(finite & res.ok, err, jnp.inf)
        accept, h_next, prev_inv = pid_update(
            prob.controller, prob.solver.error_order, err, h, c.prev_inv
        )
        dtmin = prob.controller.dtmin
        tiny = jnp.abs(h_next) <= (0.0 if dtmin is None else dtmin)
        tiny = tiny | (c.t + h_next == c.t)
        failure = jnp.where(
            ~accept & tiny,
            jnp.where(
                finite,
                jnp.where(res.ok, Status.DT_UNDERFLOW, Status.NEWTON_FAILED),
                Status.NONFINITE,
            ),
            Status.SUCCESS,
        )
    else:
        finite = all_finite(res.y1)
        accept, h_next, prev_inv = finite, c.h, c.prev_inv
        failure = jnp.where(finite, Status.SUCCESS, Status.NONFINITE)
    accept = accept & ~broken
    failure = jnp.where(broken, Status.NONFINITE, failure)

    take = can_step & accept
    f1 = res.f1
    if prob.jump_ts is not None:
        # The vector field may jump at a jump time: the carried f must be the right limit.
        f1 = jnp.where(at_jump, f(t_end, res.y1), f1)
    new = dict(
        t=jnp.where(take, t_end, c.t),
        y=jnp.where(take, res.y1, c.y),
        fy=jnp.where(take, f1, c.fy),
        h=jnp.where(can_step, h_next, c.h),
        prev_inv=jnp.where(can_step, prev_inv, c.prev_inv),
        steps=c.steps + can_step.astype(jnp.int32),
        accepted=c.accepted + take.astype(jnp.int32),
        rejected=c.rejected + (can_step & ~accept).astype(jnp.int32),
        status=jnp.where(can_step, failure.astype(c.status.dtype), c.status),
    )
    if prob.stop is not None:
        stopped = take & prob.stop(t_end, res.y1, args)
        new["status"] = jnp.where(stopped, Status.EVENT, new["status"]).astype(c.status.dtype)
    if prob.event is not None:
        # A crossing ends the loop; the root inside the step is located after it (events.py).
        fired, new["event"] = ev.step_update(
            prob.event, prob.event_dirs, c.event, take, c.t, h, res.y1, res.coeffs, args
        )
        new["status"] = jnp.where(fired, Status.EVENT, new["status"]).astype(c.status.dtype)
    if c.solver_state is not None:
        new["solver_state"] = jax.tree.map(
            lambda a, b: jnp.where(can_step, a, b), res.state, c.solver_state
        )
    if c.step_ts is not None:
        new["step_ts"] = _write(c.step_ts, c.accepted + 1, t_end[None], take)
    if c.step_ys is not None:
        new["step_ys"] = _write(c.step_ys, c.accepted + 1, res.y1[None], take)
    if c.dense_coeffs is not None:
        new["dense_coeffs"] = _write(c.dense_coeffs, c.accepted, res.coeffs[None], take)
    if c.ys is not None:
        last_t = jnp.where(take, c.t, c.last_t)
        last_h = jnp.where(take, h, c.last_h)
        # One stacked array, or one vector a row when batched (stored lanes last).
        rows = tuple(res.coeffs) if isinstance(c.last_coeffs, tuple) else res.coeffs
        last_coeffs = jax.tree.map(lambda a, b: jnp.where(take, a, b), rows, c.last_coeffs)
        drain = (prob, c.ys, c.save_idx, last_t, last_h, last_coeffs, c.active)
        if isinstance(c.last_coeffs, tuple):  # batched: a branch would run both sides
            ys, save_idx, pending = _drain_saves(*drain)
        else:
            # Most steps of a tight solve hold no save time: skip the interpolation then.
            ys, save_idx, pending = jax.lax.cond(
                _save_due(prob, c.save_idx, last_t + last_h),
                lambda: _drain_saves(*drain),
                lambda: (c.ys, c.save_idx, jnp.zeros((), bool)),
            )
        new.update(
            last_t=last_t,
            last_h=last_h,
            last_coeffs=last_coeffs,
            ys=ys,
            save_idx=save_idx,
            pending=pending,
        )
    c = c._replace(**new)
    return c._replace(active=c.active & _cond(prob, c))


def _save_due(prob, save_idx, t_stop):
    """Whether the next save time lies at or before t_stop."""
    d, ts = prob.direction, prob.ts
    n_save = ts.shape[0] - SAVE_WINDOW
    return (save_idx < n_save) & (d * ts[jnp.minimum(save_idx, n_save - 1)] <= d * t_stop)


def _drain_saves(prob, ys, save_idx, last_t, last_h, coeffs, live):
    """Fill up to SAVE_WINDOW save times inside the last accepted step (if `live`).

    The whole window of rows save_idx .. save_idx + SAVE_WINDOW - 1 is written as one block
    (`ys` has SAVE_WINDOW rows of padding): rows past the step's last save time get the
    step's initial state as a placeholder, which a later step overwrites (saves fill in
    order) and which rows never reached are replaced by inf after the loop.
    """
    d, ts = prob.direction, prob.ts
    # ts carries SAVE_WINDOW copies of its last time, so the window is a dynamic slice
    # (a gather's transpose would be a scatter, which keeps XLA:CPU from compiling the
    # differentiated loop into one kernel).
    n_save = ts.shape[0] - SAVE_WINDOW
    window = save_idx + jnp.arange(SAVE_WINDOW, dtype=save_idx.dtype)
    t_win = jax.lax.dynamic_slice_in_dim(ts, save_idx, SAVE_WINDOW)
    t_stop = last_t + last_h
    inside = live & (window < n_save) & (d * t_win <= d * t_stop)
    safe_h = jnp.where(last_h == 0, 1, last_h)
    theta = jnp.where(inside, (t_win - last_t) / safe_h, 0)
    values = horner(coeffs, theta[:, None])
    ys = _write(ys, save_idx, values, live)
    save_idx = save_idx + small_sum(inside.astype(save_idx.dtype))
    return ys, save_idx, _save_due(prob, save_idx, t_stop)


def _cond(prob: _Problem, c: _Carry):
    """Keep looping while saves are pending or steps remain, and nothing failed."""
    stepping = (prob.direction * c.t < prob.direction * prob.t1) & (c.steps < prob.max_steps)
    return (c.pending | stepping) & (c.status == Status.SUCCESS)


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
    options = dict(
        solver=solver, rtol=rtol, atol=atol, dt0=dt0, n_steps=n_steps, saveat=saveat,
        controller=controller, jump_ts=jump_ts, stop=stop, max_steps=max_steps, throw=throw,
    )
    if event is not None:
        options["event"] = event
    if backend == "diffrax":
        from .diffrax_backend import solve_diffrax

        return solve_diffrax(f, y0, t0, t1, args, adjoint=adjoint, **options)
    return adjoint.solve(_solve_jode, f, y0, t0, t1, args, **options)


def _solve_jode(
    f,
    y0,
    t0,
    t1,
    args,
    *,
    solver,
    rtol,
    atol,
    dt0,
    n_steps,
    saveat,
    controller,
    jump_ts,
    stop,
    max_steps,
    throw,
    loop,
    event=None,
):
    """The jode backend; `loop` is the adjoint's while loop (cond, body, init, max_iter)."""
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
    ts = None if saveat.ts is None else jnp.asarray(saveat.ts, dtype)
    y0_flat, ts = checks.traced_checks(y0_flat, ts, t0, t1)
    direction = jnp.where(t1 >= t0, 1, -1).astype(dtype)
    adaptive = isinstance(controller, PIDController)
    fy0 = f_flat(t0, y0_flat, args)
    nfev = jnp.asarray(1, jnp.int32)

    n_static = None if adaptive else _static_step_count(*t_static, dt0, n_steps)
    if n_static is not None and jump_ts is None and stop is None and event is None:
        tols = (_flatten_tol(rtol, y0, dtype), _flatten_tol(atol, y0, dtype))
        sol_parts = _scan_constant(
            solver,
            f_flat,
            args,
            t0,
            t1,
            y0_flat,
            fy0,
            dt0,
            n_steps,
            n_static,
            saveat,
            ts,
            direction,
            tols,
        )
    else:
        if adaptive:
            if dt0 is None:
                h0 = initial_step(
                    lambda t, y: f_flat(t, y, args),
                    t0,
                    y0_flat,
                    fy0,
                    direction,
                    solver.error_order,
                    _flatten_tol(rtol, y0, dtype),
                    _flatten_tol(atol, y0, dtype),
                )
                nfev = nfev + 1
            else:
                h0 = jnp.asarray(dt0, dtype)
        else:
            h0 = (t1 - t0) / n_steps if n_steps is not None else jnp.asarray(dt0, dtype)
        h0 = jax.lax.stop_gradient(h0)
        sol_parts = _while_solve(
            solver,
            f_flat,
            args,
            controller,
            adaptive,
            t0,
            t1,
            y0_flat,
            fy0,
            h0,
            rtol,
            atol,
            y0,
            ts,
            saveat,
            jump_ts,
            max_steps,
            direction,
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
    if throw:
        sol = raise_on_failure(sol, max_steps, solver)
    return sol


def _scan_constant(
    solver, f_flat, args, t0, t1, y0, fy0, dt0, n_steps, n, saveat, ts, direction, tols=(1e-6, 1e-6)
):
    """Constant steps as a lax.scan: differentiable by every JAX transformation.

    The scan carries only what is saved: the state, and with save times the dense-output
    rows of the steps that hold one (at most one row per save time, written in place), so
    memory follows the saves, not the step count. Only `SaveAt(steps=True)` and dense
    output keep a row per step.

    Steps run in ⌈N/k⌉ segments of k = ⌈√N⌉ steps, each under `jax.checkpoint`: reverse
    mode stores the carry at segment starts and recomputes one segment at a time, O(√N)
    carries (two-level checkpointing, Griewank & Walther 2008, *Evaluating Derivatives*,
    §12.3), the promise `DirectAdjoint` makes for adaptive loops.
    """
    dtype = y0.dtype
    dt = (t1 - t0) / n if n_steps is not None else jnp.asarray(dt0, dtype)
    idx = jnp.arange(n + 1, dtype=dtype)
    grid = jnp.where(jnp.arange(n + 1) == n, t1, t0 + idx * dt)
    keep_steps = saveat.steps
    keep_dense = saveat.dense

    state0 = _init_solver_state(solver, f_flat, args, t0, y0, fy0, *tols)
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
        degree = _coeff_degree(solver, y0)
        rows0 = jnp.zeros((ts.shape[0], degree, y0.shape[0]), dtype)
        saves0 = (rows0, jnp.zeros((), jnp.int32))

    def body(carry, i):
        y, fy, state, ok, t_last, saves = carry
        t, t_next = grid[i], grid[i + 1]
        res = _step(solver, lambda t, y: f_flat(t, y, args), t, y, fy, t_next - t, state)
        fine = ok & all_finite(res.y1)
        t_last = jnp.where(fine, t_next, t_last)
        if saves is not None:
            rows, p = saves
            hit = distinct[jnp.minimum(p, distinct.shape[0] - 1)] == i
            rows = _write(rows, p, res.coeffs[None], hit)
            saves = (rows, p + hit.astype(jnp.int32))
        out = (res.y1 if keep_steps else None, res.coeffs if keep_dense else None)
        new = (res.y1, res.f1, getattr(res, "state", None), ok & res.ok, t_last, saves)
        return new, out

    init = (y0, fy0, state0, jnp.ones((), bool), t0, saves0)
    carry, (y_steps, coeffs) = _checkpointed_scan(body, init, n)
    y_end, _, state, ok, t_last, saves = carry
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


def _checkpointed_scan(body, init, n):
    """`lax.scan(body, init, arange(n))` as segments of k = ⌈√n⌉ steps under
    `jax.checkpoint` (see `_scan_constant`); the stacked outputs are those of the plain scan.
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


def _while_solve(
    solver,
    f_flat,
    args,
    controller,
    adaptive,
    t0,
    t1,
    y0,
    fy0,
    h0,
    rtol,
    atol,
    y0_tree,
    ts,
    saveat,
    jump_ts,
    max_steps,
    direction,
    loop,
    stop=None,
    event=None,
):
    dtype = y0.dtype
    n = y0.shape[0]
    i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
    prob = _Problem(
        f=f_flat,
        solver=solver,
        controller=controller,
        adaptive=adaptive,
        t1=t1,
        direction=direction,
        rtol=_flatten_tol(rtol, y0_tree, dtype),
        atol=_flatten_tol(atol, y0_tree, dtype),
        ts=None if ts is None else jnp.concatenate([ts, jnp.repeat(ts[-1:], SAVE_WINDOW)]),
        jump_ts=None if jump_ts is None else jnp.asarray(jump_ts, dtype),
        max_steps=max_steps,
        stop=stop,
        event=None if event is None else event[0],
        event_dirs=None if event is None else jnp.asarray(ev.directions(event[1])),
    )
    degree = _coeff_degree(solver, y0)
    ys = last_coeffs = step_ts = step_ys = dense_coeffs = None
    save_idx = i32(0)
    if ts is not None:
        at_t0 = ts == t0
        ys = jnp.where(at_t0[:, None], y0[None], jnp.inf).astype(dtype)
        ys = jnp.concatenate([ys, jnp.full((SAVE_WINDOW, n), jnp.inf, dtype)])  # padding
        save_idx = jnp.sum(at_t0, dtype=jnp.int32)
        last_coeffs = jnp.zeros((degree, n), dtype)
        if batched((y0, args)):
            # Under vmap, separate row vectors are stored with their lanes last (see
            # loop.masked_while_loop), which makes interpolation elementwise work; alone,
            # one stacked array is fewer operations.
            last_coeffs = tuple(last_coeffs)
    if saveat.steps or saveat.dense:
        step_ts = jnp.full((max_steps + 1,), jnp.inf, dtype).at[0].set(t0)
    if saveat.steps:
        step_ys = jnp.full((max_steps + 1, n), jnp.inf, dtype).at[0].set(y0)
    if saveat.dense:
        dense_coeffs = jnp.zeros((max_steps, degree, n), dtype)
    init = _Carry(
        t=t0,
        y=y0,
        fy=fy0,
        h=h0,
        prev_inv=jnp.ones((2,), dtype),
        steps=i32(0),
        accepted=i32(0),
        rejected=i32(0),
        status=i32(Status.SUCCESS),
        last_t=t0,
        last_h=jnp.zeros((), dtype),
        last_coeffs=last_coeffs,
        pending=jnp.zeros((), bool),
        save_idx=save_idx,
        ys=ys,
        step_ts=step_ts,
        step_ys=step_ys,
        dense_coeffs=dense_coeffs,
        solver_state=_init_solver_state(solver, f_flat, args, t0, y0, fy0, prob.rtol, prob.atol),
        event=None if event is None else ev.init_state(event[0], t0, y0, args, degree),
    )
    init = init._replace(active=_cond(prob, init))
    max_iter = max_steps + (0 if ts is None else -(-ts.shape[0] // SAVE_WINDOW)) + 1
    # Everything traced that the body reads travels in the loop's operands (closed-over
    # arrays of f and stop included), so the loop can be batched and differentiated as a
    # function of its inputs alone.
    # args may hold non-arrays (an equinox module's activation function): convert over
    # its arrays only, the rest is static.
    args_arr, args_static = eqx.partition(args, eqx.is_array)

    def _convert(fn):
        return jax.closure_convert(
            lambda t, y, a: fn(t, y, eqx.combine(a, args_static)), t0, y0, args_arr
        )

    f_conv, f_consts = _convert(f_flat)
    stop_conv, stop_consts = (None, ()) if stop is None else _convert(stop)
    event_conv, event_consts = (None, ()) if event is None else _convert(event[0])
    operands = dict(
        args=args,
        f_consts=f_consts,
        stop_consts=stop_consts,
        event_consts=event_consts,
        t1=t1,
        direction=direction,
        rtol=prob.rtol,
        atol=prob.atol,
        ts=prob.ts,
        jump_ts=prob.jump_ts,
    )

    def body(c, ops):
        f_c, s_c = ops["f_consts"], ops["stop_consts"]
        p = prob._replace(
            f=lambda t, y, a: f_conv(t, y, eqx.filter(a, eqx.is_array), *f_c),
            stop=None
            if stop is None
            else (lambda t, y, a: stop_conv(t, y, eqx.filter(a, eqx.is_array), *s_c)),
            event=None
            if event is None
            else (
                lambda t, y, a: event_conv(t, y, eqx.filter(a, eqx.is_array), *ops["event_consts"])
            ),
            t1=ops["t1"],
            direction=ops["direction"],
            rtol=ops["rtol"],
            atol=ops["atol"],
            ts=ops["ts"],
            jump_ts=ops["jump_ts"],
        )
        return _body(p, ops["args"], c)

    final = loop(lambda c: c.active, body, init, operands, max_iter)
    status = jnp.where(
        (final.status == Status.SUCCESS) & (final.t != t1), Status.MAX_STEPS, final.status
    ).astype(jnp.int32)
    extra = final.steps if jump_ts is not None else 0
    stats = dict(
        steps=final.steps,
        accepted=final.accepted,
        rejected=final.rejected,
        nfev=final.steps * solver.f_evals_per_step + extra,
        t_last=final.t,
    )
    if final.solver_state is not None:
        stats.update(solver.stats(final.solver_state))
        stats["nfev"] = stats["nfev"] + extra
    if ts is not None:
        # Rows never reached (a failed solve) hold placeholders: report them as NaN.
        reached = jnp.arange(ts.shape[0], dtype=final.save_idx.dtype) < final.save_idx
        ts_out, ys_out = ts, jnp.where(reached[:, None], final.ys[: ts.shape[0]], jnp.nan)
    elif saveat.steps:
        ts_out, ys_out = final.step_ts, final.step_ys
    else:
        ts_out, ys_out = final.t[None], final.y[None]
    dense_ts = final.step_ts if saveat.dense else None
    if event is None:
        return ts_out, ys_out, stats, status, dense_ts, final.dense_coeffs
    # Locate the crossing inside the last step; saves stop at it.
    def land(t_n, y_n, dt):  # one step of the solver from the crossing step's start
        fy = f_flat(t_n, y_n, args)
        state = _init_solver_state(solver, f_flat, args, t_n, y_n, fy, prob.rtol, prob.atol)
        res = _step(solver, lambda t, y: f_flat(t, y, args), t_n, y_n, fy, dt, state)
        return res.y1, res.f1

    located = ev.locate(
        event[0], prob.event_dirs, final.event, status == Status.EVENT, args, land
    )
    fired, _, t_star, y_star = located
    # The landing step: f at its start and the solver's evaluations.
    stats["nfev"] = stats["nfev"] + jnp.where(fired, solver.f_evals_per_step + 1, 0).astype(
        stats["nfev"].dtype
    )
    e = final.event
    if ts is not None:
        ys_out = ev.clip_saves(ts, ys_out, fired, e.t_start, e.h, e.coeffs, t_star, direction)
    elif saveat.steps:
        last = fired & (jnp.arange(ts_out.shape[0], dtype=final.accepted.dtype) == final.accepted)
        ts_out = jnp.where(last, t_star, ts_out)
        ys_out = jnp.where(last[:, None], y_star, ys_out)
    else:
        ts_out = jnp.where(fired, t_star, ts_out)
        ys_out = jnp.where(fired, y_star[None], ys_out)
    return ts_out, ys_out, stats, status, dense_ts, final.dense_coeffs, located
