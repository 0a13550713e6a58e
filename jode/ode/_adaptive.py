"""The step loop of adaptive solves (and of constant steps not known before tracing).

A `lax.while_loop` (or the adjoint's reverse-differentiable `loop.checkpointed_loop`) whose
body takes one step, accepts or rejects it with the PID controller (`control.pid_update`:
Söderlind 2002, 2003, in the form used by Hairer & Wanner), and writes what is saved.

Saving at requested times never shortens a step: after each accepted step the save times
inside it are filled from that step's dense-output polynomial, up to `SAVE_WINDOW` at a time
with one vectorized evaluation and an in-place block write; a step spanning more save times
is drained over further loop iterations that take no step.

Under `jax.vmap` the step loop runs select-free (`loop.masked_while_loop`): the body is a
no-op for a finished lane, so the batched loop applies the vmapped body to every lane while
any is active, with state vectors stored lanes-last. Each lane takes the steps it would take
alone.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _progress
from . import events as ev
from ._flat import FlatProblem, coeff_degree, init_solver_state, step, write
from .control import all_finite, pid_update, scaled_error, small_sum
from .interpolation import horner
from .loop import batched
from .solution import Status

SAVE_WINDOW = 4


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
    t0: jax.Array | None = None  # with a progress bar: the start, and the bar's number
    bar: jax.Array | None = None


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

    res = step(prob.solver, f_step, c.t, c.y, c.fy, h, c.solver_state)
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
        new["step_ts"] = write(c.step_ts, c.accepted + 1, t_end[None], take)
    if c.step_ys is not None:
        new["step_ys"] = write(c.step_ys, c.accepted + 1, res.y1[None], take)
    if c.dense_coeffs is not None:
        new["dense_coeffs"] = write(c.dense_coeffs, c.accepted, res.coeffs[None], take)
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
    t_before = c.t
    c = c._replace(**new)
    if prob.bar is not None:
        _progress.report(
            prob.bar,
            _progress.fraction(t_before, prob.t0, t1),
            _progress.fraction(c.t, prob.t0, t1),
        )
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
    ys = write(ys, save_idx, values, live)
    save_idx = save_idx + small_sum(inside.astype(save_idx.dtype))
    return ys, save_idx, _save_due(prob, save_idx, t_stop)


def _cond(prob: _Problem, c: _Carry):
    """Keep looping while saves are pending or steps remain, and nothing failed."""
    stepping = (prob.direction * c.t < prob.direction * prob.t1) & (c.steps < prob.max_steps)
    return (c.pending | stepping) & (c.status == Status.SUCCESS)


def while_solve(opts, flat: FlatProblem, h0, adaptive, loop, stop=None, event=None):
    """The step loop from h0, adaptive (`opts.controller` a PIDController) or constant.

    Args:
        opts: the solve's options record (`solve.Options`): solver, controller, saveat,
            jump_ts and max_steps are read here.
        flat: the raveled problem.
        h0: the first step size.
        adaptive: whether the controller adapts the step.
        loop: the adjoint's loop, `loop(cond, body, init, operands, max_iter)`.
        stop: the flat terminating condition (t, y, args) -> bool, or None.
        event: (flat conditions (t, y, args) -> (n_events,), the `jode.Event`s), or None.

    Returns:
        (ts, ys, stats, status, dense_ts, dense_coeffs), and with events the located
        crossing (fired, index, t, y) as a seventh item.
    """
    solver, controller, saveat = opts.solver, opts.controller, opts.saveat
    jump_ts, max_steps = opts.jump_ts, opts.max_steps
    f_flat, args, t0, t1, y0, fy0 = flat.f, flat.args, flat.t0, flat.t1, flat.y0, flat.fy0
    ts, direction = flat.ts, flat.direction
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
        rtol=flat.rtol,
        atol=flat.atol,
        ts=None if ts is None else jnp.concatenate([ts, jnp.repeat(ts[-1:], SAVE_WINDOW)]),
        jump_ts=None if jump_ts is None else jnp.asarray(jump_ts, dtype),
        max_steps=max_steps,
        stop=stop,
        event=None if event is None else event[0],
        event_dirs=None if event is None else jnp.asarray(ev.directions(event[1])),
        t0=t0 if opts.progress else None,
        bar=_progress.open_bar() if opts.progress else None,
    )
    degree = coeff_degree(solver, y0)
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
        solver_state=init_solver_state(solver, f_flat, args, t0, y0, fy0, prob.rtol, prob.atol),
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
        t0=prob.t0,
        bar=prob.bar,
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
            t0=ops["t0"],
            bar=ops["bar"],
        )
        return _body(p, ops["args"], c)

    final = loop(lambda c: c.active, body, init, operands, max_iter)
    if prob.bar is not None:
        _progress.close_bar(prob.bar, _progress.fraction(final.t, t0, t1))
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
        state = init_solver_state(solver, f_flat, args, t_n, y_n, fy, prob.rtol, prob.atol)
        res = step(solver, lambda t, y: f_flat(t, y, args), t_n, y_n, fy, dt, state)
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
