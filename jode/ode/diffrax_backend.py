"""`solve(..., backend="diffrax")`: the same call carried out by diffrax (Kidger 2021).

Solvers map by type to diffrax's own class when it is the same method (Euler, Midpoint,
Heun, Ralston, Bosh3, Dopri5, Tsit5 and the implicit ones), and otherwise to a diffrax
explicit RK built from jode's tableau (RK4, EulerHeun, Dopri8 = DOP853, user tableaux), so
both backends run the same method. Tolerances, controller coefficients, save times, jump
times, terminating conditions and adjoints are translated; the result is a `jode.Solution`
with the same statuses and statistics (diffrax does not count f-evaluations: `nfev` is
derived from the step counts exactly as jode counts them).
"""

from __future__ import annotations

import functools

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

from . import explicit, implicit
from . import tableaus as tb
from .adjoint import BacksolveAdjoint, DirectAdjoint, ForwardMode
from .control import ConstantStep, PIDController
from .solution import Solution, Status, raise_on_failure

# The same method on both backends, matched by type (never by name). diffrax's Dopri8 is
# Prince & Dormand's 13-stage 8(7) pair, not DOP853, so jode.Dopri8 runs its own tableau.
_NATIVE = {
    explicit.Euler: dfx.Euler,
    explicit.Midpoint: dfx.Midpoint,
    explicit.Heun: dfx.Heun,
    explicit.Ralston: dfx.Ralston,
    explicit.Bosh3: dfx.Bosh3,
    explicit.Dopri5: dfx.Dopri5,
    explicit.Tsit5: dfx.Tsit5,
    implicit.ImplicitEuler: dfx.ImplicitEuler,
    implicit.Kvaerno3: dfx.Kvaerno3,
    implicit.Kvaerno5: dfx.Kvaerno5,
}


@functools.cache
def _erk_from_tableau(tableau: tb.ButcherTableau):
    """A diffrax explicit RK class running jode's tableau (cubic Hermite dense output).

    diffrax's `AbstractERK` takes a `diffrax.ButcherTableau` of the same (a, b, c, b_err)
    data, so every explicit jode tableau runs unchanged; `functools.cache` (tableaux hash
    by value) returns one class per method, so diffrax's compile caches hit.
    """
    a_lower = tuple(tableau.a[i, :i] for i in range(1, tableau.stages))
    # diffrax requires error weights; zeros for a method without an estimate (constant steps).
    b_error = tableau.b_err if tableau.b_err is not None else np.zeros(tableau.stages)
    dfx_tableau = dfx.ButcherTableau(
        c=tableau.c[1:], b_sol=tableau.b, b_error=b_error, a_lower=a_lower
    )
    order, error_order = tableau.order, tableau.error_order

    class TableauERK(dfx.AbstractERK):
        tableau = dfx_tableau
        interpolation_cls = dfx.ThirdOrderHermitePolynomialInterpolation.from_k

        def order(self, terms):
            return order

        def error_order(self, terms):
            return error_order

    TableauERK.__name__ = TableauERK.__qualname__ = f"jode_{tableau.name}"
    return TableauERK


def to_diffrax_solver(solver):
    """The diffrax solver running the same method as a jode solver.

    Built-in methods map by type to diffrax's class of the same method (RK4 and EulerHeun,
    which diffrax lacks, run their tableau); `jode.ExplicitRK(tableau)` runs its tableau
    as a diffrax `AbstractERK`.

    Raises:
        ValueError: for a solver diffrax cannot express (a user ESDIRK or Rosenbrock
            tableau, the gradient-flow steppers of `jode.optim`).
    """
    native = _NATIVE.get(type(solver))
    if native is not None:
        return native()
    if isinstance(solver, explicit.ExplicitRK):
        # A user tableau equal (by value) to a built-in one is that method.
        for cls, dfx_cls in _NATIVE.items():
            if getattr(cls, "tableau", None) == solver.tableau:
                return dfx_cls()
    if isinstance(solver, explicit.AbstractExplicitRK):
        return _erk_from_tableau(solver.tableau)()
    raise ValueError(
        f"backend='diffrax' cannot run solver {solver!r}: diffrax has no counterpart for it. "
        "Use backend='jode', or one of the built-in methods (jode.Tsit5(), jode.Kvaerno5(), "
        "...) or an explicit jode.ExplicitRK(tableau), which run on both backends"
    )


def to_diffrax(adjoint, rtol=None, atol=None):
    """The diffrax adjoint doing what a jode adjoint does (for `backend="diffrax"`).

    `DirectAdjoint` → `diffrax.RecursiveCheckpointAdjoint` (binomial checkpointing, the
    exact gradient of the discretized solve), `BacksolveAdjoint` → `diffrax.BacksolveAdjoint`
    (its own solver/tolerances, and `diffrax.adjoint_rms_seminorm` for `seminorm=True`),
    `ForwardMode` → `diffrax.ForwardMode`.

    Args:
        adjoint: a jode adjoint.
        rtol, atol: the forward solve's tolerances, used by the backward solve when the
            `BacksolveAdjoint` sets none of its own and asks for the seminorm.
    """
    if isinstance(adjoint, ForwardMode):
        return dfx.ForwardMode()
    if isinstance(adjoint, DirectAdjoint):
        return dfx.RecursiveCheckpointAdjoint(checkpoints=adjoint.checkpoints)
    if isinstance(adjoint, BacksolveAdjoint):
        kwargs = {}
        if adjoint.solver is not None:
            kwargs["solver"] = to_diffrax_solver(adjoint.solver)
        rtol = adjoint.rtol if adjoint.rtol is not None else rtol
        atol = adjoint.atol if adjoint.atol is not None else atol
        if adjoint.seminorm or adjoint.rtol is not None or adjoint.atol is not None:
            if rtol is None or atol is None:
                raise ValueError(
                    "BacksolveAdjoint(seminorm=True) with backend='diffrax' needs the backward "
                    "tolerances: pass jode.BacksolveAdjoint(rtol=..., atol=..., seminorm=True)"
                )
            norm = dfx.adjoint_rms_seminorm if adjoint.seminorm else dfx.rms_norm
            kwargs["stepsize_controller"] = dfx.PIDController(rtol=rtol, atol=atol, norm=norm)
        return dfx.BacksolveAdjoint(**kwargs)
    raise ValueError(f"no diffrax counterpart for adjoint {adjoint!r}")


def _status(result):
    r = dfx.RESULTS
    conditions = [
        result == r.successful,
        result == r.max_steps_reached,
        result == r.dt_min_reached,
        result == r.event_occurred,
        (result == r.nonlinear_max_steps_reached) | (result == r.nonlinear_divergence),
        (result == r.nonfinite) | (result == r.nonfinite_input),
    ]
    values = [
        Status.SUCCESS,
        Status.MAX_STEPS,
        Status.DT_UNDERFLOW,
        Status.EVENT,
        Status.NEWTON_FAILED,
        Status.NONFINITE,
    ]
    return jnp.select(conditions, [jnp.int32(v) for v in values], jnp.int32(Status.NONFINITE))


def _nonfinite_near(f, t, y, args, t1):
    """Whether f is non-finite at (t, y) or a few hundred ulps past t towards t1 (Euler)."""
    fy = f(t, y, args)
    d = jnp.where(t1 >= t, 1, -1).astype(t.dtype)
    h = d * 256 * jnp.finfo(t.dtype).eps * jnp.maximum(jnp.abs(t), 1)
    y_h = jax.tree.map(lambda y, v: y + h.astype(y.dtype) * v, y, fy)
    f_h = f(t + h, y_h, args)
    leaves = jax.tree.leaves((fy, f_h))
    return ~jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def solve_diffrax(f, y0, t0, t1, args, opts):
    """Carry out `jode.solve` with diffrax; `opts` is its options record (`solve.Options`).

    Events (a tuple of `jode.Event`) become one `diffrax.Event` with a condition per event
    and its direction (+1: upward, diffrax's True), located by `optimistix.Newton` on
    diffrax's dense output; the event time and state are saved by a second `SubSaveAt`.
    """
    solver, rtol, atol, dt0, saveat = opts.solver, opts.rtol, opts.atol, opts.dt0, opts.saveat
    controller, jump_ts, stop, event = opts.controller, opts.jump_ts, opts.stop, opts.event
    max_steps = opts.max_steps
    dfx_solver = to_diffrax_solver(solver)
    if isinstance(controller, PIDController):
        stepsize = dfx.PIDController(
            rtol=rtol,
            atol=atol,
            pcoeff=controller.pcoeff,
            icoeff=controller.icoeff,
            dcoeff=controller.dcoeff,
            safety=controller.safety,
            factormin=controller.factormin,
            factormax=controller.factormax,
            dtmin=controller.dtmin,
            dtmax=controller.dtmax,
            jump_ts=jump_ts,
        )
    elif isinstance(controller, ConstantStep):
        stepsize = dfx.ConstantStepSize()
        if jump_ts is not None:
            stepsize = dfx.ClipStepSizeController(stepsize, jump_ts=jump_ts)
        if dt0 is None:
            dt0 = (jnp.asarray(t1) - jnp.asarray(t0)) / opts.n_steps
    else:
        raise ValueError(f"unknown controller {controller!r}")
    dfx_saveat = dfx.SaveAt(
        ts=saveat.ts,
        t1=saveat.t1 and saveat.ts is None and not saveat.steps,
        steps=saveat.steps,
        dense=saveat.dense,
    )
    dfx_event = None
    if stop is not None:
        dfx_event = dfx.Event(cond_fn=lambda t, y, args, **kw: stop(t, y, args))
    if event is not None:
        dfx_event, dfx_saveat = _to_diffrax_event(event, saveat, y0)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(f),
        dfx_solver,
        t0,
        t1,
        dt0,
        y0,
        args,
        saveat=dfx_saveat,
        stepsize_controller=stepsize,
        adjoint=to_diffrax(opts.adjoint),
        max_steps=max_steps,
        throw=False,
        event=dfx_event,
        progress_meter=dfx.TqdmProgressMeter() if opts.progress else dfx.NoProgressMeter(),
    )
    ts_out, ys_out, event_fields = sol.ts, sol.ys, {}
    if event is not None:
        ts_out, ys_out, event_fields = _event_fields(sol, saveat, t1, y0)
    status = _status(sol.result)
    # diffrax rejects a step whose state is non-finite and retries smaller until max_steps:
    # a vector field that is non-finite at the last state reached, or just past it, is
    # reported as NONFINITE. The last state is known with the default save at t1 (diffrax
    # saves where it stopped); otherwise the probe is at (t0, y0) (a NaN parameter).
    dtype = jnp.result_type(*jax.tree.leaves(y0))
    t_last, y_last, t_known = jnp.asarray(t0, dtype), y0, False
    if event is None and (
        saveat.t1 and saveat.ts is None and not saveat.steps
    ):
        t_last, y_last, t_known = sol.ts[-1], jax.tree.map(lambda y: y[-1], sol.ys), True
    stuck = (status == Status.MAX_STEPS) | (status == Status.DT_UNDERFLOW)
    broken = _nonfinite_near(f, t_last, y_last, args, jnp.asarray(t1, dtype))
    status = jnp.where(stuck & broken, Status.NONFINITE, status).astype(jnp.int32)
    steps = jnp.asarray(sol.stats["num_steps"], jnp.int32)
    nfev = steps * solver.f_evals_per_step + 1
    if isinstance(controller, PIDController) and dt0 is None:
        nfev = nfev + 1
    stats = dict(
        steps=steps,
        accepted=jnp.asarray(sol.stats["num_accepted_steps"], jnp.int32),
        rejected=jnp.asarray(sol.stats["num_rejected_steps"], jnp.int32),
        nfev=nfev,
        # The last time reached: t1 on success; unknown (NaN) for a failure unless saved.
        t_last=jnp.where(
            status == Status.SUCCESS,
            jnp.asarray(t1, dtype),
            t_last if t_known else jnp.asarray(jnp.nan, dtype),
        ),
    )
    out = Solution(
        ts=ts_out,
        ys=ys_out,
        stats=stats,
        status=status,
        t0=jnp.asarray(t0, dtype),
        t1=event_fields.pop("t1", jnp.asarray(t1, dtype)),
        interpolation=sol.interpolation if saveat.dense else None,
        **event_fields,
    )
    if opts.throw:
        out = raise_on_failure(out, max_steps, solver, backend="diffrax")
    return out


def _to_diffrax_event(events, saveat, y0):
    """(diffrax.Event, diffrax.SaveAt) for a tuple of `jode.Event`s and jode's SaveAt.

    The user's saves are the first `SubSaveAt`, the final (event) time and state the second.
    """
    import optimistix as optx

    dtype = jnp.result_type(*jax.tree.leaves(y0))
    # Newton on the event time converges quadratically: stop a few ulps from the root.
    tol = 100 * float(jnp.finfo(dtype).eps)
    conds = tuple(
        (lambda t, y, args, _fn=ev.cond_fn, **kw: _fn(t, y, args)) for ev in events
    )
    dfx_event = dfx.Event(
        cond_fn=conds,
        root_finder=optx.Newton(rtol=tol, atol=tol),
        direction=tuple(None if ev.direction is None else ev.direction > 0 for ev in events),
    )
    user = dfx.SubSaveAt(
        ts=saveat.ts,
        t1=saveat.t1 and saveat.ts is None and not saveat.steps,
        steps=saveat.steps,
    )
    return dfx_event, dfx.SaveAt(subs=[user, dfx.SubSaveAt(t1=True)], dense=saveat.dense)


def _event_fields(sol, saveat, t1, y0):
    """(ts, ys, the Solution's event fields) from a diffrax solve with `_to_diffrax_event`."""
    dtype = jnp.result_type(*jax.tree.leaves(y0))
    ts, ys = sol.ts[0], sol.ys[0]
    if saveat.ts is not None:
        # jode keeps the requested times; rows after the event (inf in diffrax) are NaN, as
        # jode reports saves never reached.
        after = jnp.isinf(ts)
        ts = jnp.asarray(saveat.ts, dtype)
        ys = jax.tree.map(
            lambda y: jnp.where(after.reshape((-1,) + (1,) * (y.ndim - 1)), jnp.nan, y), ys
        )
    mask = jnp.stack(sol.event_mask)
    fired = jnp.any(mask)
    t_end = sol.ts[1][-1]
    nan = jnp.asarray(jnp.nan, dtype)
    fields = dict(
        event_t=jnp.where(fired, t_end, nan),
        event_y=jax.tree.map(lambda y: jnp.where(fired, y[-1], nan), sol.ys[1]),
        event_index=jnp.where(fired, jnp.argmax(mask), -1).astype(jnp.int32),
        t1=jnp.where(fired, t_end, jnp.asarray(t1, dtype)),
    )
    return ts, ys, fields
