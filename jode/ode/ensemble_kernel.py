"""An ensemble of adaptive explicit Runge-Kutta solves in one Pallas kernel.

This is the design of DiffEqGPU's `EnsembleGPUKernel` (Utkarsh, Churavy, Ma, Edelman,
Rackauckas 2024, "Automated translation and accelerated solving of differential equations on
multiple GPU platforms", CMAME 419, 116591, §4): the whole solve of every trajectory --
stages, error norm, step-size controller, dense-output saves -- runs inside one kernel, each
trajectory with its own adaptive loop, so the ensemble costs one launch and the state never
leaves the chip between steps. Here it is one `jax.experimental.pallas.pallas_call` whose
grid has one program per block of lanes; a program keeps its block's states as
(n_components, block) arrays (lanes last) and steps all its lanes at once under per-lane
masks until every lane is done.

Each lane takes exactly the steps `jode.solve` takes for it alone: the step is
`solver.step` (the tableau's stages, explicit.py), the error norm `control.scaled_error`,
the controller `control.pid_update` and the initial step `control.initial_step`, all
vmapped over the block's lanes, with the same masking and failure rules as
`solve._body`. Saves on a grid of times `ts` never shorten a step: the kernel loops over
the save times, advancing each lane until its time reaches the next save time, and then
evaluates every lane's last dense-output polynomial there (`interpolation.horner`), as the
solve does after each step.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._jit import cached, check_solve
from . import checks
from .control import PIDController, all_finite, initial_step, pid_update, scaled_error
from .explicit import EXPLICIT_SOLVERS, AbstractExplicitRK, Tsit5
from .interpolation import horner
from .solution import Solution, Status

#: Lanes per program when `block` is not given (fewer for a smaller batch).
DEFAULT_BLOCK = 128


def default_interpret() -> bool:
    """Interpret mode unless JAX's default backend is a GPU or TPU."""
    return jax.default_backend() not in ("gpu", "cuda", "rocm", "tpu")


@cached(check=check_solve, arrays=("y0", "args"), static=("t0", "t1", "dt0"), barrier=("y0",))
def solve_ensemble_kernel(
    f,
    y0,
    t0,
    t1,
    args=None,
    *,
    solver=None,
    rtol=1e-6,
    atol=1e-6,
    saveat=None,
    dt0=None,
    controller=None,
    max_steps: int = 4096,
    block: int | None = None,
    interpret: bool | None = None,
) -> Solution:
    """Solve dy/dt = f(t, y, args) for a batch of lanes in one Pallas kernel.

    Every leaf of `y0` and of `args` carries the batch on its leading axis, as for
    `jode.solve_batch`. Each lane steps alone (its own step sizes, status and statistics),
    taking the same steps as `jode.solve` on that lane (see the module docstring).

    The vector field is `f(t, y, args)` for one lane, as for `jode.solve`. Inside the kernel
    it is vmapped over the lane axis of the block: the state is held as an
    (n_components, block) array and `f` runs on (n_components,) vectors under `jax.vmap`
    with the lanes on the last axis, so component i of every lane is one row. What f
    closes over (arrays, tracers) is passed to the kernel as inputs.

    Forward only: differentiating through the kernel (jax.grad, jax.jvp) raises a
    ValueError; use `jode.solve_batch(..., kernel=False)` (the vmap path) for gradients.

    Args:
        f: vector field f(t, y, args) of one lane; y any pytree of floating arrays.
        y0: initial states, leaves of shape (B, ...).
        t0, t1: the interval (shared by every lane).
        args: per-lane parameters, leaves of shape (B, ...) (or None).
        solver: an adaptive explicit Runge-Kutta solver (default `jode.Tsit5()`).
        rtol, atol: tolerances (scalars or pytrees shaped like one lane's state).
        saveat: None or `SaveAt(t1=True)` (the final state), an array of save times, or
            `SaveAt(ts=...)`.
        dt0: the initial adaptive step, with `controller=jode.PIDController()` as in
            `jode.solve` (default: chosen as `jode.solve` does, Hairer-Norsett-Wanner).
        controller: a `jode.PIDController` (default `jode.PIDController()`).
        max_steps: bound on the number of steps of each lane.
        block: lanes per kernel program (default: min(128, B rounded up to a power of 2)).
        interpret: run the kernel in Pallas interpret mode (default: unless JAX's default
            backend is a GPU or TPU).

    Returns:
        A `jode.Solution` as `jode.solve_batch` returns it: `ts` of shape (B, n_save),
        `ys` leaves of shape (B, n_save, ...), `status` (B,), `stats` of (B,) arrays
        (`steps`, `accepted`, `rejected`, `nfev`, `t_last`). No error is raised on failed
        lanes: read `sol.status` (or call through `jode.solve_batch(..., kernel=True)`,
        which raises naming them).

    Raises:
        ValueError: for an implicit or non-adaptive solver, a constant-step controller,
            `SaveAt(steps=True)` or dense output, or leaves without a common batch axis.
    """
    from .solve import SaveAt, _flatten_tol, _strong_args, _strong_state

    solver = Tsit5() if solver is None else solver
    checks.check_solver(solver, EXPLICIT_SOLVERS)
    if not isinstance(solver, AbstractExplicitRK):
        raise ValueError(
            f"the ensemble kernel runs explicit Runge-Kutta solvers only; got solver={solver!r}. "
            "Use an explicit solver such as jode.Tsit5(), or kernel=False for implicit ones"
        )
    if not solver.adaptive:
        raise ValueError(
            f"the ensemble kernel runs adaptive solves; {solver!r} has no error estimate. Use "
            "an adaptive solver such as jode.Tsit5(), or kernel=False for constant steps"
        )
    if dt0 is not None and controller is None:
        raise ValueError(
            "dt0 alone means constant steps (as in jode.solve), which the ensemble kernel does "
            "not run: pass controller=jode.PIDController() to make dt0 the initial adaptive "
            "step, or kernel=False for constant steps"
        )
    controller = PIDController() if controller is None else controller
    if not isinstance(controller, PIDController):
        raise ValueError(
            f"the ensemble kernel needs controller=jode.PIDController(...); got {controller!r}. "
            "For constant steps use kernel=False"
        )
    if saveat is None:
        saveat = SaveAt(t1=True)
    elif not isinstance(saveat, SaveAt):
        saveat = SaveAt(ts=saveat)
    if saveat.steps or saveat.dense:
        raise ValueError(
            "the ensemble kernel saves at t1 or on a grid of times only; got "
            f"saveat={saveat!r}. Pass saveat=ts (an array of times), or kernel=False for "
            "SaveAt(steps=True) and dense output"
        )
    if block is not None and (not isinstance(block, int) or block < 1):
        raise ValueError(f"block must be a positive int (lanes per program); got block={block!r}")
    checks.check_interval(t0, t1, dt0, None, max_steps)
    checks.check_tolerances(rtol, atol)
    if saveat.ts is not None:
        checks.check_save_times(saveat.ts, t0, t1)
    y0 = jax.tree.map(_strong_state, y0)
    checks.check_y0(y0)
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves((y0, args))
             if eqx.is_array(x)}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "solve_ensemble_kernel needs every leaf of y0 and args to carry the batch on its "
            f"leading axis (one common size); got leading sizes {sorted(map(str, sizes))}. "
            "Broadcast shared values with jnp.broadcast_to((B, ...))"
        )
    (n_lanes,) = sizes
    y0_lane = jax.tree.map(lambda x: x[0], y0)
    args = _strong_args(args, y0_lane)
    args_arr, args_static = eqx.partition(args, eqx.is_array)
    a_lane = jax.tree.map(lambda x: x[0], args_arr)
    checks.check_vector_field(f, t0, y0_lane, eqx.combine(a_lane, args_static))
    checks.warn_tolerances_below_precision(rtol, atol, y0)
    if block is None:
        block = min(DEFAULT_BLOCK, 1 << max(0, math.ceil(math.log2(n_lanes))))
    if interpret is None:
        interpret = default_interpret()

    y0_flat_lane, unravel = ravel_pytree(y0_lane)
    dtype = y0_flat_lane.dtype
    n = y0_flat_lane.shape[0]

    def f_flat(t, y, a_arr):
        out = f(t, unravel(y), eqx.combine(a_arr, args_static))
        return ravel_pytree(out)[0].astype(dtype)

    # f on one lane as a jaxpr; its constants (closed-over arrays and tracers) become
    # kernel inputs, since a Pallas kernel cannot capture arrays.
    lane_avals = (
        jax.ShapeDtypeStruct((), dtype),
        jax.ShapeDtypeStruct((n,), dtype),
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), a_lane),
    )
    closed = jax.make_jaxpr(f_flat)(*lane_avals)
    consts = [jnp.asarray(c) for c in closed.consts]

    y_lanes = _lanes_last(y0, n_lanes).astype(dtype)
    a_leaves, a_def = jax.tree.flatten(args_arr)
    a_lanes = [jnp.reshape(x, (n_lanes, -1)).T for x in a_leaves]
    a_shapes = [x.shape[1:] for x in a_leaves]

    t0a = jnp.asarray(t0, dtype)
    t1a = jnp.asarray(t1, dtype)
    ts = None if saveat.ts is None else jnp.asarray(saveat.ts, dtype)
    y_lanes, ts = _traced_checks(y_lanes, ts, t0a, t1a)
    rtol_v = jnp.atleast_1d(_flatten_tol(rtol, y0_lane, dtype))
    atol_v = jnp.atleast_1d(_flatten_tol(atol, y0_lane, dtype))
    times = jnp.stack([t0a, t1a, jnp.asarray(0 if dt0 is None else dt0, dtype)])

    run = functools.partial(
        _run,
        spec=_Spec(
            solver=solver,
            controller=controller,
            n=n,
            dtype=jnp.dtype(dtype),
            max_steps=max_steps,
            block=block,
            interpret=bool(interpret),
            has_dt0=dt0 is not None,
            scalar_tol=(rtol_v.shape[0] == 1, atol_v.shape[0] == 1),
            a_def=a_def,
            a_shapes=tuple(a_shapes),
            const_shapes=tuple(c.shape for c in consts),
            jaxpr=closed.jaxpr,
        ),
    )
    ys, ints, t_last = _forward_only(run, y_lanes, a_lanes, consts, times, rtol_v, atol_v, ts)
    status, steps, accepted, rejected = ints
    nfev = steps * solver.f_evals_per_step + (1 if dt0 is not None else 2)
    stats = dict(steps=steps, accepted=accepted, rejected=rejected, nfev=nfev, t_last=t_last)
    if ts is None:
        ts_out = t_last[:, None]
    else:
        ts_out = jnp.broadcast_to(ts, (n_lanes, ts.shape[0]))
    ys = jnp.moveaxis(ys, -1, 0)  # (B, n_save, n)
    ys = jax.vmap(jax.vmap(unravel))(ys)
    return Solution(
        ts=ts_out,
        ys=ys,
        stats=stats,
        status=status,
        t0=jnp.broadcast_to(t0a, (n_lanes,)),
        t1=jnp.broadcast_to(t1a, (n_lanes,)),
        unravel=unravel,
    )


def _lanes_last(y0, n_lanes):
    """The batch of states as an (n, B) array: component rows, lanes last."""
    leaves = [jnp.reshape(x, (n_lanes, -1)) for x in jax.tree.leaves(y0)]
    flat = jnp.concatenate(leaves, axis=1) if len(leaves) > 1 else leaves[0]
    return flat.T


def _traced_checks(y_lanes, ts, t0, t1):
    y_lanes = eqx.error_if(
        y_lanes, ~jnp.all(jnp.isfinite(y_lanes)), "y0 contains NaN or inf values"
    )
    _, ts = checks.traced_checks(y_lanes[:, 0], ts, t0, t1)
    return y_lanes, ts


class _Spec(eqx.Module):
    """What the kernel is built from (static)."""

    solver: object = eqx.field(static=True)
    controller: object = eqx.field(static=True)
    n: int = eqx.field(static=True)
    dtype: object = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    block: int = eqx.field(static=True)
    interpret: bool = eqx.field(static=True)
    has_dt0: bool = eqx.field(static=True)
    scalar_tol: tuple = eqx.field(static=True)
    a_def: object = eqx.field(static=True)
    a_shapes: tuple = eqx.field(static=True)
    const_shapes: tuple = eqx.field(static=True)
    jaxpr: object = eqx.field(static=True)


def _forward_only(run, *operands):
    """`run(*operands)`, refusing to be differentiated (the kernel has no derivative)."""

    @jax.custom_jvp
    def call(*ops):
        return run(*ops)

    @call.defjvp
    def _no_derivative(primals, tangents):
        raise ValueError(
            "the ensemble kernel (jode.solve_batch(..., kernel=True)) is forward-only and "
            "cannot be differentiated; use kernel=False (the vmap path, differentiable with "
            "every adjoint) under jax.grad / jax.jvp"
        )

    return call(*operands)


def _run(y_lanes, a_lanes, consts, times, rtol_v, atol_v, ts, *, spec: _Spec):
    from jax.experimental import pallas as pl

    n, block = spec.n, spec.block
    n_lanes = y_lanes.shape[1]
    padded = -(-n_lanes // block) * block

    def pad(x):  # copies of the last lane, which shares the last block: no extra iterations
        extra = padded - n_lanes
        if not extra:
            return x
        return jnp.concatenate([x, jnp.repeat(x[:, -1:], extra, axis=1)], axis=1)

    y_p = pad(y_lanes)
    a_p = [pad(x) for x in a_lanes]
    consts_1d = [jnp.reshape(c, (-1,)) if c.ndim == 0 else c for c in consts]
    n_save = 1 if ts is None else ts.shape[0]

    def lane_spec(rows):
        return pl.BlockSpec((rows, block), lambda i: (0, i))

    def whole(x):
        return pl.BlockSpec(x.shape, lambda i, nd=x.ndim: (0,) * nd)

    inputs = [y_p, *a_p, *consts_1d, times, rtol_v, atol_v] + ([] if ts is None else [ts])
    in_specs = (
        [lane_spec(n)]
        + [lane_spec(x.shape[0]) for x in a_p]
        + [whole(c) for c in consts_1d]
        + [whole(times), whole(rtol_v), whole(atol_v)]
        + ([] if ts is None else [whole(ts)])
    )
    out_shape = (
        jax.ShapeDtypeStruct((n_save, n, padded), spec.dtype),
        jax.ShapeDtypeStruct((4, padded), jnp.int32),
        jax.ShapeDtypeStruct((padded,), spec.dtype),
    )
    out_specs = (
        pl.BlockSpec((n_save, n, block), lambda i: (0, 0, i)),
        pl.BlockSpec((4, block), lambda i: (0, i)),
        pl.BlockSpec((block,), lambda i: (i,)),
    )
    kernel = functools.partial(
        _kernel, spec=spec, n_args=len(a_p), n_consts=len(consts_1d), has_ts=ts is not None
    )
    ys, ints, t_last = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(padded // block,),
        in_specs=in_specs,
        out_specs=out_specs,
        interpret=spec.interpret,
        name="jode_ensemble_rk",
    )(*inputs)
    return ys[..., :n_lanes], ints[:, :n_lanes], t_last[:n_lanes]


def _kernel(*refs, spec: _Spec, n_args, n_consts, has_ts):
    """One program: the adaptive loops of `block` lanes, state (n, block), lanes last."""
    refs = list(refs)
    y_ref = refs.pop(0)
    a_refs = [refs.pop(0) for _ in range(n_args)]
    c_refs = [refs.pop(0) for _ in range(n_consts)]
    times_ref, rtol_ref, atol_ref = refs.pop(0), refs.pop(0), refs.pop(0)
    ts_ref = refs.pop(0) if has_ts else None
    ys_ref, ints_ref, tlast_ref = refs

    solver, controller = spec.solver, spec.controller
    dtype = spec.dtype
    consts = [
        jnp.reshape(r[...], shape) for r, shape in zip(c_refs, spec.const_shapes, strict=True)
    ]
    times = times_ref[...]
    t0, t1, dt0 = times[0], times[1], times[2]
    rtol, atol = rtol_ref[...], atol_ref[...]
    rtol = rtol[0] if spec.scalar_tol[0] else rtol
    atol = atol[0] if spec.scalar_tol[1] else atol
    direction = jnp.where(t1 >= t0, 1, -1).astype(dtype)

    def f_lane(t, y, a_cols):  # one lane: a_cols are the lane's columns of args' leaves
        leaves = [jnp.reshape(x, s) for x, s in zip(a_cols, spec.a_shapes, strict=True)]
        a = jax.tree.unflatten(spec.a_def, leaves)
        flat_a = jax.tree.leaves(a)
        (out,) = jax.core.eval_jaxpr(spec.jaxpr, consts, t, y, *flat_a)
        return out

    a_cols = [r[...] for r in a_refs]
    y0 = y_ref[...]
    lanes = y0.shape[1]
    v = functools.partial(jax.vmap, in_axes=-1, out_axes=-1)

    def start(y, a):  # f(t0, y0) and the initial step, as jode.solve computes them
        f = lambda t, y: f_lane(t, y, a)  # noqa: E731
        fy = f(t0, y)
        if spec.has_dt0:
            h = dt0
        else:
            h = initial_step(f, t0, y, fy, direction, solver.error_order, rtol, atol)
        return fy, h

    fy0, h0 = v(start)(y0, a_cols)

    def attempt(c, a, target):  # one step of one lane: solve._body without the extras
        t, y, fy, h, prev_inv, steps, accepted, rejected, status, live, last = c
        d = direction
        f = lambda t, y: f_lane(t, y, a)  # noqa: E731
        can_step = live & (d * t < d * target)
        t_end = t + h
        hit_t1 = d * t_end >= d * t1
        t_end = jnp.where(hit_t1, t1, t_end)
        h = t_end - t
        res = solver.step(f, t, y, fy, h)
        broken = ~all_finite(fy) | ~jnp.isfinite(h)
        finite = all_finite(res.y1)
        err = scaled_error(res.error, y, res.y1, rtol, atol)
        err = jnp.where(finite & res.ok, err, jnp.inf)
        accept, h_next, prev_next = pid_update(controller, solver.error_order, err, h, prev_inv)
        dtmin = controller.dtmin
        tiny = jnp.abs(h_next) <= (0.0 if dtmin is None else dtmin)
        tiny = tiny | (t + h_next == t)
        failure = jnp.where(
            ~accept & tiny,
            jnp.where(finite, Status.DT_UNDERFLOW, Status.NONFINITE),
            Status.SUCCESS,
        )
        accept = accept & ~broken
        failure = jnp.where(broken, Status.NONFINITE, failure)
        take = can_step & accept
        last_t, last_h, last_coeffs = last
        new_t = jnp.where(take, t_end, t)
        new_steps = steps + can_step.astype(jnp.int32)
        new_status = jnp.where(can_step, failure.astype(status.dtype), status)
        new_live = (
            live
            & (d * new_t < d * t1)
            & (new_steps < spec.max_steps)
            & (new_status == Status.SUCCESS)
        )
        return (
            new_t,
            jnp.where(take, res.y1, y),
            jnp.where(take, res.f1, fy),
            jnp.where(can_step, h_next, c[3]),
            jnp.where(can_step, prev_next, prev_inv),
            new_steps,
            accepted + take.astype(jnp.int32),
            rejected + (can_step & ~accept).astype(jnp.int32),
            new_status,
            new_live,
            (
                jnp.where(take, t, last_t),
                jnp.where(take, h, last_h),
                jnp.where(take, res.coeffs, last_coeffs),
            ),
        )

    step_v = jax.vmap(attempt, in_axes=(-1, -1, None), out_axes=-1)

    def advance(c, target):  # step every lane until it reaches `target` (or stops)
        def going(c):
            return jnp.any(c[9] & (direction * c[0] < direction * target))

        return jax.lax.while_loop(going, lambda c: step_v(c, a_cols, target), c)

    i32 = lambda: jnp.zeros((lanes,), jnp.int32)  # noqa: E731
    degree = jax.eval_shape(
        lambda y: solver.step(lambda t, y: y, jnp.zeros((), dtype), y, y, jnp.ones((), dtype)),
        jax.ShapeDtypeStruct((spec.n,), dtype),
    ).coeffs.shape[0]
    t_lanes = jnp.full((lanes,), t0, dtype)
    init = (
        t_lanes,
        y0,
        fy0,
        h0,
        jnp.ones((2, lanes), dtype),
        i32(),
        i32(),
        i32(),
        i32() + int(Status.SUCCESS),
        (direction * t0 < direction * t1) & (spec.max_steps > 0) & jnp.ones((lanes,), bool),
        (t_lanes, jnp.zeros((lanes,), dtype), jnp.zeros((degree, spec.n, lanes), dtype)),
    )

    if has_ts:
        ts = ts_ref[...]

        def save(j, c):
            target = ts[j]
            c = advance(c, target)
            t, y0_rows = c[0], y0
            last_t, last_h, coeffs = c[10]
            safe_h = jnp.where(last_h == 0, 1, last_h)
            theta = (target - last_t) / safe_h
            values = horner(coeffs, theta)
            reached = direction * t >= direction * target
            values = jnp.where(reached, values, jnp.nan)
            values = jnp.where(target == t0, y0_rows, values)
            ys_ref[pl_ds(j)] = values[None].astype(dtype)
            return c

        final = jax.lax.fori_loop(0, ts.shape[0], save, init)
    else:
        final = advance(init, t1)
        ys_ref[...] = final[1][None]
    t, status = final[0], final[8]
    status = jnp.where((status == Status.SUCCESS) & (t != t1), Status.MAX_STEPS, status)
    ints_ref[...] = jnp.stack([status.astype(jnp.int32), final[5], final[6], final[7]])
    tlast_ref[...] = t


def pl_ds(j):
    from jax.experimental import pallas as pl

    return pl.ds(j, 1)
