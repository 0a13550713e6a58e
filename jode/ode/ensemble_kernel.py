"""An ensemble of adaptive explicit Runge-Kutta solves in one Pallas kernel.

This is the design of DiffEqGPU's `EnsembleGPUKernel` (Utkarsh, Churavy, Ma, Edelman,
Rackauckas 2024, "Automated translation and accelerated solving of differential equations on
multiple GPU platforms", CMAME 419, 116591, §4): the whole solve of every trajectory --
stages, error norm, step-size controller, dense-output saves -- runs inside one kernel, each
trajectory with its own adaptive loop, so the ensemble costs one launch and the state never
leaves the chip between steps. Here it is one `jax.experimental.pallas.pallas_call` whose
grid has one program per block of lanes; a program steps all its lanes at once under
per-lane masks until every lane is done.

Inside a program every value is a row of `block` lanes: component i of the state of all
the block's lanes is one (block,) array, as each GPU thread of EnsembleGPUKernel holds its
trajectory in scalars. The per-lane code -- the user's f, the solver's step, the controller
-- is traced once for one lane (a jaxpr) and run on rows equation by equation
(`_eval_rows`): elementwise primitives entry by entry, shape primitives (indexing by Python
ints, stacks, broadcasts, reshapes) on the grid of rows, reductions and small matrix
products as sums in index order. So every operation the kernel issues has the block's
shape, whatever the state's size: Pallas's Triton backend needs power-of-two shapes, which
an (n, block) state with n = 3, or Tsit5's five dense-output rows, would break. Vector
fields that index by traced values (gathers), loop or sort are refused by name.

Each lane takes the steps `jode.solve` takes for it alone: the step is `solver.step` (the
tableau's stages, explicit.py), the error norm `control.scaled_error`, the controller
`control.pid_update` and the initial step `control.initial_step`, with the same masking and
failure rules as the step loop of `jode.solve`. The arithmetic is the same; XLA may fuse it
differently (contracting a multiply-add here and not there), and an ulp of the state moves the error
estimate's leading digits, so step sizes and values agree with the solve's to rounding
(measured in float64: identical step counts, values ~1e-14 relative after hundreds of
steps; in float32 at rtol = 1e-6, within 8 eps, a lane in five takes a step or two more or
fewer, as accept decisions at an error norm within rounding of 1 go either way).
Saves on a grid of times `ts` never shorten a step: the kernel loops over the save times,
advancing each lane until its time reaches the next save time, and then evaluates every
lane's last dense-output polynomial there (`interpolation.horner`), as the solve does after
each step.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
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

    The vector field is `f(t, y, args)` for one lane, as for `jode.solve`. It is traced for
    one lane and run on component rows (component i of every lane of a block is one
    (block,) array; see the module docstring). What f closes over (arrays, tracers) is
    passed to the kernel as inputs. f may index with Python ints, stack, reshape, branch
    with `jnp.where`/`lax.cond` and multiply small matrices; indexing by traced values,
    loops and sorts inside f raise a ValueError (use the vmap path).

    Meant, like EnsembleGPUKernel, for small systems (up to tens of components): the
    kernel is unrolled over components, so a vector field with large arrays (a neural
    network's weight matrices) makes a very large kernel; use the vmap path for those.

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
        block: lanes per kernel program (default: min(128, B rounded up to a power of 2));
            a power of two on a GPU.
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
            `SaveAt(steps=True)` or dense output, leaves without a common batch axis, or a
            vector field the kernel cannot run on rows (see above).
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
    if not interpret and block & (block - 1):
        raise ValueError(
            f"block must be a power of two on a GPU (Pallas's Triton backend); got "
            f"block={block}. Use e.g. block={1 << (block.bit_length() - 1)}"
        )

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
    times = jnp.stack([t0a, t1a, jnp.asarray(0 if dt0 is None else dt0, dtype), t0a])

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
        compiler_params=_compiler_params(spec),
        name="jode_ensemble_rk",
    )(*inputs)
    return ys[..., :n_lanes], ints[:, :n_lanes], t_last[:n_lanes]


def _compiler_params(spec: _Spec):
    """On a GPU, Pallas's Triton backend (Mosaic GPU, the default, has no float64 and wants
    warpgroup-shaped arrays): one thread per lane, `block` lanes per program."""
    if spec.interpret or jax.default_backend() == "tpu":
        return None
    from jax.experimental.pallas import triton as pl_triton

    return pl_triton.CompilerParams(num_warps=max(1, min(8, spec.block // 32)), num_stages=1)


def _lane_functions(spec: _Spec):
    """One lane's start, step attempt and save, as plain functions of per-lane arrays.

    The kernel traces each to a jaxpr and runs it on rows of lanes (`_eval_rows`); under
    `jax.vmap` they are what the step loop of `jode.solve` computes for a lane (see the
    module docstring).
    """
    solver, controller = spec.solver, spec.controller

    def f_lane(consts, t, y, a_cols):  # a_cols: the lane's columns of args' array leaves
        leaves = [jnp.reshape(x, s) for x, s in zip(a_cols, spec.a_shapes, strict=True)]
        (out,) = jax.core.eval_jaxpr(spec.jaxpr, consts, t, y, *leaves)
        return out

    def start(consts, scal, y, a_cols):  # f(t0, y0) and the initial step, as jode.solve
        t0, _, dt0, direction, rtol, atol = scal
        f = lambda t, y: f_lane(consts, t, y, a_cols)  # noqa: E731
        fy = f(t0, y)
        if spec.has_dt0:
            return fy, dt0
        return fy, initial_step(f, t0, y, fy, direction, solver.error_order, rtol, atol)

    def attempt(consts, scal, target, c, a_cols):  # jode.solve's loop body without jumps and events
        t0, t1, _, d, rtol, atol = scal
        t, y, fy, h, prev_inv, steps, accepted, rejected, status, live, last = c
        f = lambda t, y: f_lane(consts, t, y, a_cols)  # noqa: E731
        can_step = live & (d * t < d * target)
        t_end = t + h
        t_end = jnp.where(d * t_end >= d * t1, t1, t_end)
        h_try = t_end - t
        res = solver.step(f, t, y, fy, h_try)
        broken = ~all_finite(fy) | ~jnp.isfinite(h_try)
        finite = all_finite(res.y1)
        err = scaled_error(res.error, y, res.y1, rtol, atol)
        err = jnp.where(finite & res.ok, err, jnp.inf)
        accept, h_next, prev_next = pid_update(
            controller, solver.error_order, err, h_try, prev_inv
        )
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
        new_t = jnp.where(take, t_end, t)
        new_steps = steps + can_step.astype(jnp.int32)
        new_status = jnp.where(can_step, failure.astype(status.dtype), status)
        new_live = (
            live & (d * new_t < d * t1) & (new_steps < spec.max_steps)
            & (new_status == Status.SUCCESS)
        )
        last_t, last_h, last_coeffs = last
        return (
            new_t,
            jnp.where(take, res.y1, y),
            jnp.where(take, res.f1, fy),
            jnp.where(can_step, h_next, h),
            jnp.where(can_step, prev_next, prev_inv),
            new_steps,
            accepted + take.astype(jnp.int32),
            rejected + (can_step & ~accept).astype(jnp.int32),
            new_status,
            new_live,
            (
                jnp.where(take, t, last_t),
                jnp.where(take, h_try, last_h),
                jnp.where(take, res.coeffs, last_coeffs),
            ),
        )

    def save(scal, target, t, last, y0):  # the state at `target` from the last step
        t0, _, _, d, _, _ = scal
        last_t, last_h, coeffs = last
        safe_h = jnp.where(last_h == 0, 1, last_h)
        values = horner(coeffs, (target - last_t) / safe_h)
        values = jnp.where(d * t >= d * target, values, jnp.nan)
        return jnp.where(target == t0, y0, values)

    return start, attempt, save


def _kernel(*refs, spec: _Spec, n_args, n_consts, has_ts):
    """One program: the adaptive loops of `block` lanes.

    Every array the kernel holds is a row of `block` lanes (one component of one per-lane
    value): the per-lane functions run on rows through `_eval_rows`, so the kernel's
    operations all have the block's shape (a power of two for GPU lowering) whatever the
    state's size, as each GPU thread of EnsembleGPUKernel holds its trajectory in scalars.
    """
    refs = list(refs)
    y_ref = refs.pop(0)
    a_refs = [refs.pop(0) for _ in range(n_args)]
    c_refs = [refs.pop(0) for _ in range(n_consts)]
    times_ref, rtol_ref, atol_ref = refs.pop(0), refs.pop(0), refs.pop(0)
    ts_ref = refs.pop(0) if has_ts else None
    ys_ref, ints_ref, tlast_ref = refs
    block, n, dtype = spec.block, spec.n, spec.dtype

    def row(x):
        return jnp.broadcast_to(x, (block,))

    def rows_of(ref, shape):  # a small whole-array input as rows (every lane the same)
        out = np.empty(shape, object)
        for idx in np.ndindex(*shape):
            out[idx] = row(ref[idx])
        return out

    def lanes_of(ref, rows):  # a lane-blocked input: row i is ref[i, :]
        out = np.empty((rows,), object)
        for i in range(rows):
            out[i] = ref[i, :]
        return out

    consts = [
        rows_of(r, s if s else (1,)).reshape(s)
        for r, s in zip(c_refs, spec.const_shapes, strict=True)
    ]
    t0, t1, dt0 = (row(times_ref[k]) for k in range(3))
    direction = jnp.where(t1 >= t0, 1, -1).astype(dtype)
    tol = [rows_of(r, (m,)) for r, m in ((rtol_ref, rtol_ref.shape[0]),
                                          (atol_ref, atol_ref.shape[0]))]
    tol = [x.reshape(()) if scalar else x for x, scalar in zip(tol, spec.scalar_tol, strict=True)]
    scal = tuple(_obj(x) for x in (t0, t1, dt0, direction)) + tuple(tol)
    y0 = lanes_of(y_ref, n)
    a_cols = [lanes_of(r, r.shape[0]) for r in a_refs]

    start, attempt, save = _lane_functions(spec)
    avals = _avals((consts, scal, y0, a_cols))
    fy0, h0 = _call_rows(start, avals, (consts, scal, y0, a_cols), block)

    degree = jax.eval_shape(
        lambda y: solver_coeffs(spec.solver, y), jax.ShapeDtypeStruct((n,), dtype)
    ).shape[0]

    def zeros(shape, dt, value=0):
        out = np.empty(shape, object)
        for idx in np.ndindex(*shape):
            out[idx] = jnp.full((block,), value, dt)
        return out

    live0 = (direction * t0 < direction * t1) & (spec.max_steps > 0)
    init = (
        _obj(t0), y0, fy0, h0, zeros((2,), dtype, 1), zeros((), jnp.int32),
        zeros((), jnp.int32), zeros((), jnp.int32), zeros((), jnp.int32, int(Status.SUCCESS)),
        _obj(live0), (_obj(t0), zeros((), dtype), zeros((degree, n), dtype)),
    )
    step_avals = _avals((consts, scal, _obj(t0), init, a_cols))
    step_jaxpr, step_tree = _trace(attempt, step_avals)
    flat_init, carry_tree = jax.tree.flatten(init)
    shapes = [x.shape for x in flat_init]

    def advance(carry_rows, target):  # step every lane until it reaches `target` (or stops)
        def going(rows):
            c = jax.tree.unflatten(carry_tree, _unrows(rows, shapes))
            t, live = c[0][()], c[9][()]
            # max over int32, not jnp.any: Pallas's Triton backend has no reduce_or.
            return jnp.max((live & (direction * t < direction * target)).astype(jnp.int32)) > 0

        def body(rows):
            c = jax.tree.unflatten(carry_tree, _unrows(rows, shapes))
            ins = jax.tree.leaves((consts, scal, _obj(target), c, a_cols))
            out = _eval_rows(step_jaxpr.jaxpr, _lift_consts(step_jaxpr.consts, block), ins, block)
            return _rows(jax.tree.leaves(jax.tree.unflatten(step_tree, out)))

        return jax.lax.while_loop(going, body, carry_rows)

    carry = _rows(flat_init)
    if has_ts:
        save_avals = _avals((scal, _obj(t0), _obj(t0), init[10], y0))
        save_jaxpr, _ = _trace(save, save_avals)

        def one_save(j, carry):
            target = row(ts_ref[j])
            carry = advance(carry, target)
            c = jax.tree.unflatten(carry_tree, _unrows(carry, shapes))
            ins = jax.tree.leaves((scal, _obj(target), c[0], c[10], y0))
            (values,) = _eval_rows(
                save_jaxpr.jaxpr, _lift_consts(save_jaxpr.consts, block), ins, block
            )
            for i in range(n):
                ys_ref[j, i, :] = values[i].astype(dtype)
            return carry

        carry = jax.lax.fori_loop(0, ts_ref.shape[0], one_save, carry)
    else:
        carry = advance(carry, t1)
        c = jax.tree.unflatten(carry_tree, _unrows(carry, shapes))
        for i in range(n):
            ys_ref[0, i, :] = c[1][i]
    c = jax.tree.unflatten(carry_tree, _unrows(carry, shapes))
    t, status = c[0][()], c[8][()]
    status = jnp.where((status == Status.SUCCESS) & (t != t1), Status.MAX_STEPS, status)
    for k, x in enumerate((status.astype(jnp.int32), c[5][()], c[6][()], c[7][()])):
        ints_ref[k, :] = x
    tlast_ref[:] = t


def solver_coeffs(solver, y):
    """The dense-output coefficients of one step (for their shape)."""
    zero = jnp.zeros((), y.dtype)
    return solver.step(lambda t, y: y, zero, y, y, jnp.ones((), y.dtype)).coeffs


# ---------------------------------------------------------------------------------------
# Per-lane functions on rows of lanes. A per-lane value of shape s is a NumPy object array
# of shape s whose entries are (block,) arrays, one lane each; a jaxpr traced for one lane
# runs on such values equation by equation: elementwise primitives entry by entry, shape
# primitives (slices, stacks, broadcasts, reshapes) on the object arrays, reductions and
# small products as sums in index order (the order of the unrolled sums of `control`).


def _obj(x):
    """A (block,) row as a per-lane scalar (a 0-d object array)."""
    out = np.empty((), object)
    out[()] = x
    return out


def _rows(objs):
    return [x for o in objs for x in o.reshape(-1)]


def _unrows(rows, shapes):
    out, k = [], 0
    for s in shapes:
        size = math.prod(s)
        o = np.empty((size,), object)
        for i in range(size):
            o[i] = rows[k + i]
        out.append(o.reshape(s))
        k += size
    return out


def _avals(tree):
    """Per-lane shapes and dtypes of a tree of object arrays of rows."""
    def aval(o):
        first = o.reshape(-1)[0] if o.size else None
        dt = jnp.float32 if first is None else first.dtype
        return jax.ShapeDtypeStruct(o.shape, dt)

    return jax.tree.map(aval, tree)


def _trace(fn, avals):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*avals)
    return closed, jax.tree.structure(out_shape)


def _call_rows(fn, avals, args, block):
    closed, tree = _trace(fn, avals)
    out = _eval_rows(closed.jaxpr, _lift_consts(closed.consts, block), jax.tree.leaves(args),
                     block)
    return jax.tree.unflatten(tree, out)


def _lift(x, block):
    x = jnp.asarray(x)
    out = np.empty(x.shape, object)
    for idx in np.ndindex(*x.shape):
        out[idx] = jnp.broadcast_to(x[idx], (block,))
    return out


def _lift_consts(consts, block):
    return [_lift(c, block) for c in consts]


_CALLS = ("jaxpr", "call_jaxpr", "call")
_REDUCE = {
    "reduce_sum": jax.lax.add,
    "reduce_max": jax.lax.max,
    "reduce_min": jax.lax.min,
    "reduce_prod": jax.lax.mul,
    "reduce_and": jax.lax.bitwise_and,
    "reduce_or": jax.lax.bitwise_or,
}


def _eval_rows(jaxpr, consts, args, block):
    from jax.extend.core import Literal

    env = {}

    def read(v):
        if isinstance(v, Literal):
            return _lift(np.asarray(v.val, v.aval.dtype), block)
        return env[v]

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    for eqn in jaxpr.eqns:
        outs = _apply(eqn, [read(v) for v in eqn.invars], block)
        for v, o in zip(eqn.outvars, outs, strict=True):
            env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _sub_jaxpr(params):
    for key in _CALLS:
        sub = params.get(key)
        if sub is not None and hasattr(sub, "jaxpr") and hasattr(sub, "consts"):
            return sub.jaxpr, list(sub.consts)
        if sub is not None and hasattr(sub, "eqns"):
            return sub, []
    return None


def _apply(eqn, ins, block):
    """One equation of a per-lane jaxpr on object arrays of rows."""
    name, p = eqn.primitive.name, eqn.params
    if name in ("stop_gradient", "copy", "copy_p", "optimization_barrier"):
        return ins
    if name == "broadcast_in_dim":
        (a,) = ins
        shape, dims = p["shape"], p["broadcast_dimensions"]
        expanded = a.reshape([a.shape[dims.index(d)] if d in dims else 1
                              for d in range(len(shape))])
        return [np.broadcast_to(expanded, shape).copy()]
    if name == "reshape":
        return [ins[0].reshape(p["new_sizes"])]
    if name == "squeeze":
        return [np.squeeze(ins[0], axis=tuple(p["dimensions"]))]
    if name == "expand_dims":
        return [np.expand_dims(ins[0], tuple(p["dimensions"]))]
    if name == "concatenate":
        return [np.concatenate(ins, axis=p["dimension"])]
    if name == "stack":
        return [np.stack(ins, axis=p["axis"])]
    if name == "split":
        cuts = np.cumsum(p["sizes"])[:-1]
        return list(np.split(ins[0], cuts, axis=p["axis"]))
    if name == "slice":
        strides = p["strides"] or (1,) * len(p["start_indices"])
        index = tuple(slice(a, b, c) for a, b, c in
                      zip(p["start_indices"], p["limit_indices"], strides, strict=True))
        return [ins[0][index]]
    if name == "rev":
        return [np.flip(ins[0], axis=tuple(p["dimensions"])).copy()]
    if name == "transpose":
        return [ins[0].transpose(p["permutation"])]
    if name == "iota":
        shape, dim = p["shape"], p["dimension"]
        values = np.broadcast_to(
            np.arange(shape[dim]).reshape([-1 if d == dim else 1 for d in range(len(shape))]),
            shape,
        ).astype(p["dtype"])
        return [_lift(values, block)]
    if name in _REDUCE:
        (a,) = ins
        axes = tuple(p["axes"])
        keep = [d for d in range(a.ndim) if d not in axes]
        moved = np.transpose(a, keep + list(axes))
        out_shape = moved.shape[: len(keep)]
        flat = moved.reshape(out_shape + (-1,))
        out = np.empty(out_shape, object)
        for idx in np.ndindex(*out_shape):
            acc = flat[idx][0]
            for x in flat[idx][1:]:
                acc = _REDUCE[name](acc, x)
            out[idx] = acc
        return [out]
    if name == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        if lb or rb:
            raise _unsupported(name)
        out = np.tensordot(ins[0], ins[1], axes=(tuple(lc), tuple(rc)))
        out = np.asarray(out, object).reshape(eqn.outvars[0].aval.shape)
        dt = eqn.outvars[0].aval.dtype
        return [np.vectorize(lambda x: x.astype(dt), otypes=[object])(out)
                if out.size else out]
    if name == "cond":
        index, *ops = ins
        branches = [
            _eval_rows(b.jaxpr, _lift_consts(b.consts, block), ops, block)
            for b in p["branches"]
        ]
        outs = []
        for k in range(len(eqn.outvars)):
            shape = eqn.outvars[k].aval.shape
            out = np.empty(shape, object)
            for idx in np.ndindex(*shape):
                out[idx] = jax.lax.select_n(index[()], *[b[k][idx] for b in branches])
            outs.append(out)
        return outs
    sub = _sub_jaxpr(p)
    if sub is not None:
        jaxpr, consts = sub
        return _eval_rows(jaxpr, _lift_consts(consts, block), ins, block)
    if eqn.primitive.multiple_results or len(eqn.outvars) != 1:
        raise _unsupported(name)
    shape = eqn.outvars[0].aval.shape
    try:
        ops = [np.broadcast_to(a, shape) for a in ins]
    except ValueError:
        raise _unsupported(name) from None
    if name in ("gather", "dynamic_slice", "dynamic_update_slice", "scatter", "scatter-add",
                "scatter_add", "while", "scan", "sort", "argmax", "argmin", "cumsum"):
        raise _unsupported(name)
    out = np.empty(shape, object)
    for idx in np.ndindex(*shape):
        out[idx] = eqn.primitive.bind(*[a[idx] for a in ops], **p)
    return [out]


def _unsupported(name):
    return ValueError(
        f"the ensemble kernel runs the vector field lane by lane on rows of lanes and cannot "
        f"run its primitive {name!r} (indexing by a traced value, loops, sorts); index with "
        "Python ints and write loops out, or use kernel=False (the vmap path)"
    )
