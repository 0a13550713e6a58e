"""Events: stop a solve where a continuous condition crosses zero, located by root finding.

After each accepted step the condition g(t, y, args) is evaluated at the step's end and its
sign compared with its value at the step's start. On a crossing the loop stops, and the
crossing is located inside that step on the step's dense-output polynomial
y(t_n + θh) = Σ_j C_j θ^j with the Illinois method, a safeguarded regula falsi (Dowell &
Jarratt 1971). That root is then polished on the solution itself: one step of the solver
from the step's start lands on it, and one Newton step on the condition along the landed
state removes the interpolant's error (which matters for solvers whose dense output is a
cubic Hermite polynomial only). The located time carries the derivative of the implicit
function theorem (Chen, Amos & Nickel 2021), not the derivative of the root finder's
iterations.

A crossing is the condition leaving one strict sign for the other side of zero: upwards
g(t_n) < 0 <= g(t_{n+1}), downwards g(t_n) > 0 >= g(t_{n+1}). A condition that is exactly
zero at t0 is not an event, so restarting a solve from an event's state does not fire the
same event again at once.

References:
    M. Dowell and P. Jarratt (1971), "A modified regula falsi method for computing the root
    of an equation", BIT 11, 168-174.
    R. T. Q. Chen, B. Amos and M. Nickel (2021), "Learning neural event functions for
    ordinary differential equations", ICLR, §3 (eq. 5: dt*/dθ = -(∂g/∂θ) / (dg/dt)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .interpolation import horner

#: Iteration cap of the root finder (it converges in ~10-30 iterations; bisection fallback).
MAX_ROOT_ITERATIONS = 100
#: The polishing Newton step is taken when shorter than this fraction of the step.
POLISH_LIMIT = 1e-2


class Event(eqx.Module):
    """A terminating event: the solve stops where `cond_fn(t, y, args)` crosses zero.

    The crossing is detected at step ends, located inside the step by root finding on the
    step's dense output and polished on the solution by one Newton step (see
    `jode.ode.events`), so the event time is as accurate as the solve. Pass it as
    `jode.solve(..., event=Event(...))`, or several as a tuple/list: the first crossing in
    time ends the solve and `sol.event_index` says which one it was. The event time
    `sol.event_t` is differentiable (reverse and forward mode): its derivative is the
    implicit one, dt*/dθ = -(∂g/∂θ) / (dg/dt) (Chen, Amos & Nickel 2021, eq. 5).

    Args:
        cond_fn: g(t, y, args) -> real scalar (y is the state's pytree, as in f).
        direction: None (either sign change), +1 (only upward crossings, g going from
            negative to non-negative) or -1 (only downward crossings).
        terminal: must be True: the solve ends at the event. (Events that only record
            their time and go on are not supported.)

    Example:
        A ball dropped from height 1 (y = [height, velocity]) hits the ground at sqrt(2/g):

        >>> ground = jode.Event(lambda t, y, args: y[0], direction=-1)
        >>> sol = jode.solve(lambda t, y, g: jnp.stack([y[1], -g]), jnp.array([1.0, 0.0]),
        ...                  0.0, 10.0, args=9.81, event=ground)
        >>> sol.event_t, sol.event_y, sol.event_index
    """

    cond_fn: Callable = eqx.field(static=True)
    direction: int | None = eqx.field(static=True, default=None)
    terminal: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not callable(self.cond_fn):
            raise ValueError(
                f"cond_fn must be callable (t, y, args) -> scalar; got {self.cond_fn!r}"
            )
        if self.direction not in (None, 1, -1):
            raise ValueError(
                f"direction must be None, +1 (upward) or -1 (downward); got "
                f"direction={self.direction!r}"
            )
        if not self.terminal:
            raise ValueError(
                "terminal=False is not supported: an Event ends the solve. To record where a "
                "condition crosses zero and go on, restart jode.solve from sol.event_t and "
                "sol.event_y"
            )


def as_events(event) -> tuple[Event, ...]:
    """`event` as a tuple of Events (a single Event, or a tuple/list of them)."""
    events = (event,) if isinstance(event, Event) else event
    if not isinstance(events, Sequence) or len(events) == 0:
        raise ValueError(
            f"event must be a jode.Event or a non-empty tuple/list of them; got event={event!r}"
        )
    for ev in events:
        if not isinstance(ev, Event):
            raise ValueError(f"event must hold jode.Event instances; got {ev!r}")
    return tuple(events)


def check_conditions(events, t0, y0, args):
    """ValueError unless every cond_fn returns a real scalar (checked by shape, untraced)."""
    for i, ev in enumerate(events):
        out = eqx.filter_eval_shape(ev.cond_fn, t0, y0, args)
        dtype = getattr(out, "dtype", None)
        if getattr(out, "shape", None) != () or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"event {i}: cond_fn must return a real scalar (the condition crosses zero "
                f"at the event); got {out}. For a boolean condition use jode.solve(stop=...)"
            )


def flat_condition(events, unravel, dtype):
    """One function (t, y_flat, args) -> (n_events,) of every event's condition."""

    def cond(t, y, args):
        tree = unravel(y)
        return jnp.stack([jnp.asarray(ev.cond_fn(t, tree, args)).astype(dtype) for ev in events])

    return cond


def directions(events) -> np.ndarray:
    """The events' directions as numbers: +1, -1, or 0 for either."""
    return np.array([0 if ev.direction is None else ev.direction for ev in events], np.int32)


class EventState(NamedTuple):
    """What the step loop carries for events: the condition now, and the step it crossed in."""

    g: jax.Array  # (n_events,) the condition at the carried time
    g_start: jax.Array  # (n_events,) the condition at the start of the crossing step
    t_start: jax.Array  # the crossing step's start time
    h: jax.Array  # the crossing step's size
    coeffs: jax.Array  # the crossing step's dense-output coefficients (d + 1, n)


def init_state(cond, t0, y0, args, degree) -> EventState:
    g0 = cond(t0, y0, args)
    zero = jnp.zeros((), y0.dtype)
    # Until a crossing, the placeholder step is the constant y0 (a state f and the
    # conditions accept, where zeros might not be).
    coeffs = jnp.zeros((degree, y0.shape[0]), y0.dtype).at[0].set(y0)
    return EventState(g0, g0, t0, zero, coeffs)


def crossed(g_start, g_end, dirs):
    """Which conditions crossed zero in the requested direction (module docstring)."""
    up = (g_start < 0) & (g_end >= 0)
    down = (g_start > 0) & (g_end <= 0)
    return jnp.where(dirs > 0, up, jnp.where(dirs < 0, down, up | down))


def step_update(cond, dirs, state: EventState, take, t_start, h, y1, coeffs, args):
    """After a step attempt: (whether an event fired in it, the updated EventState)."""
    g1 = cond(t_start + h, y1, args)
    fired = take & jnp.any(crossed(state.g, g1, dirs))
    new = EventState(
        g=jnp.where(take, g1, state.g),
        g_start=jnp.where(fired, state.g, state.g_start),
        t_start=jnp.where(fired, t_start, state.t_start),
        h=jnp.where(fired, h, state.h),
        coeffs=jnp.where(fired, coeffs, state.coeffs),
    )
    return fired, new


def _illinois(fn, lo, hi, f_lo, f_hi, active):
    """Roots of the components of `fn` (θ (k,) -> (k,)) bracketed in [lo, hi], elementwise.

    The Illinois method (Dowell & Jarratt 1971): regula falsi, halving the stored value of
    the endpoint that was kept twice in a row, which makes it converge superlinearly
    (order ≈ 1.442) where plain regula falsi stalls at one end. A secant point that rounding
    puts outside the open bracket is replaced by the midpoint. Components with `active`
    false are left alone.

    Returns:
        The last iterate b, with |b - root| <= |b - a| at exit.
    """
    eps = jnp.finfo(lo.dtype).eps
    tol = 4 * eps

    def keep_going(s):
        a, b, fa, fb, live, it = s
        return jnp.any(live) & (it < MAX_ROOT_ITERATIONS)

    def body(s):
        a, b, fa, fb, live, it = s
        denom = jnp.where(fb == fa, 1, fb - fa)
        c = b - fb * (b - a) / denom
        left, right = jnp.minimum(a, b), jnp.maximum(a, b)
        c = jnp.where((c > left) & (c < right), c, 0.5 * (a + b))
        fc = fn(c)
        other_side = jnp.sign(fc) * jnp.sign(fb) < 0
        a_new = jnp.where(other_side, b, a)
        fa_new = jnp.where(other_side, fb, 0.5 * fa)
        upd = lambda new, old: jnp.where(live, new, old)  # noqa: E731
        a, fa, b, fb = upd(a_new, a), upd(fa_new, fa), upd(c, b), upd(fc, fb)
        live = live & (fb != 0) & (jnp.abs(b - a) > tol)
        return a, b, fa, fb, live, it + 1

    live = active & (f_hi != 0)
    state = (lo, hi, f_lo, f_hi, live, jnp.zeros((), jnp.int32))
    return jax.lax.while_loop(keep_going, body, state)[1]


def locate(cond, dirs, state: EventState, status_event, args, land=None):
    """The event that fired first inside the crossing step, its time and state.

    The time is t* = t_n + θ*h where G(θ*) = g(t_n + θ*h, Σ_j C_j θ*^j, args) = 0. The root
    finder runs on values with no derivative; the derivative is attached by the implicit
    function theorem (Chen, Amos & Nickel 2021, eq. 5) as a zero-valued Newton correction
    θ* <- θ* - (G(θ*) - sg(G(θ*))) / sg(G'(θ*)) (sg: stop-gradient), whose derivative
    with respect to the step's coefficients, times and `args` is dθ* = -dG / G'(θ*). Here
    G' is the condition's derivative along the interpolant, dg/dt + ∂g/∂y · dy/dt, i.e.
    dg/dy · f up to the interpolation error: the derivative of the located root itself.

    Args:
        cond: (t, y_flat, args) -> (n_events,) conditions.
        dirs: (n_events,) +1, -1 or 0 (either direction).
        state: the loop's final EventState.
        status_event: whether the loop stopped on an event (per lane).
        args: the solve's args.
        land: (t_n, y_n, dt) -> (y, f): one solver step from the crossing step's start,
            and f there. With it, the root found on the interpolant is polished by one
            Newton step on the solution itself (below); without it, the interpolant's root
            is the answer (its accuracy then that of the dense output: cubic Hermite for
            solvers without an interpolant of their own, e.g. Dopri8, Kvaerno5).

    Returns:
        (fired, index, t_star, y_star): whether an event fired, which (-1 if none), where
        and the state there (placeholders, finite, where none fired).
    """
    sg = jax.lax.stop_gradient
    t_n, h, coeffs = state.t_start, state.h, state.coeffs
    mask = status_event & crossed(state.g_start, state.g, dirs)
    n_ev = mask.shape[0]

    def values(theta, t_n, h, coeffs, args):  # (k,) θ -> (k,) G_i(θ_i)
        def one(th):
            return cond(t_n + th * h, horner(coeffs, th), args)

        return jnp.diagonal(jax.vmap(one)(theta)) if n_ev > 1 else one(theta[0])

    # args may hold non-arrays (an equinox module's activation): stop only its arrays.
    args_arr, args_static = eqx.partition(args, eqx.is_array)
    fixed = (*sg((t_n, h, coeffs)), eqx.combine(sg(args_arr), args_static))
    dtype = t_n.dtype
    theta = _illinois(
        lambda th: values(th, *fixed),
        jnp.zeros((n_ev,), dtype),
        jnp.ones((n_ev,), dtype),
        sg(state.g_start),
        sg(state.g),
        mask,
    )
    theta = jnp.where(mask, theta, jnp.inf)
    index = jnp.argmin(theta).astype(jnp.int32)
    fired = jnp.any(mask)
    th = sg(jnp.where(fired, theta[index], 1))

    def chosen(th, t_n, h, coeffs, args):
        return cond(t_n + th * h, horner(coeffs, th), args)[index]

    index_out = jnp.where(fired, index, -1)
    if land is None:
        g_star = chosen(th, t_n, h, coeffs, args)
        slope = jax.jvp(lambda s: chosen(s, *fixed), (th,), (jnp.ones_like(th),))[1]
        ok = fired & (slope != 0) & jnp.isfinite(slope)
        correction = (g_star - sg(g_star)) / jnp.where(ok, sg(slope), 1)
        th = th - jnp.where(ok, correction, 0)
        return fired, index_out, t_n + th * h, horner(coeffs, th)

    # Polish on the solution itself: a step of the solver from the step's start lands on
    # t_a (its error is the solver's, not the interpolant's), then one Newton step on the
    # condition along y_a + (t - t_a) f_a moves t_a by the interpolant's error δ, leaving
    # O(δ²). The derivative is the implicit one at the polished root (as above).
    t_a = t_n + th * h
    y_a, f_a = land(t_n, coeffs[0], th * h)

    def along(t, t_a, y_a, f_a, args):
        return cond(t, y_a + (t - t_a) * f_a, args)[index]

    fixed_a = (*sg((t_a, y_a, f_a)), fixed[-1])
    g_a = along(fixed_a[0], *fixed_a)
    slope = jax.jvp(lambda s: along(s, *fixed_a), (fixed_a[0],), (jnp.ones_like(t_a),))[1]
    ok = fired & (slope != 0) & jnp.isfinite(slope) & jnp.isfinite(g_a)
    delta = -g_a / jnp.where(ok, slope, 1)
    # A Newton step longer than the interpolant's error can be is a tangential crossing:
    # keep the interpolant's root there.
    ok = ok & (jnp.abs(delta) <= POLISH_LIMIT * jnp.abs(h))
    t_sg = fixed_a[0] + jnp.where(ok, delta, 0)
    g_star = along(t_sg, t_a, y_a, f_a, args)
    slope = jax.jvp(lambda s: along(s, *fixed_a), (t_sg,), (jnp.ones_like(t_sg),))[1]
    ok = fired & (slope != 0) & jnp.isfinite(slope)
    t_star = t_sg - jnp.where(ok, (g_star - sg(g_star)) / jnp.where(ok, sg(slope), 1), 0)
    return fired, index_out, t_star, y_a + (t_star - t_a) * f_a


def clip_saves(ts, ys, fired, t_n, h, coeffs, t_star, direction):
    """Saved rows after an event: interpolated inside the crossing step up to t*, NaN after.

    The loop stops right after the crossing step, possibly with save times of that step
    still pending; rows at times inside (t_n, t*] are (re)filled from the step's polynomial
    and rows after t* are set to NaN, as rows never reached are.
    """
    inside = fired & (direction * ts > direction * t_n) & (direction * ts <= direction * t_star)
    after = fired & (direction * ts > direction * t_star)
    safe_h = jnp.where(h == 0, 1, h)
    theta = jnp.where(inside, (ts - t_n) / safe_h, 0)
    values = horner(coeffs, theta[:, None])
    ys = jnp.where(inside[:, None], values, ys)
    return jnp.where(after[:, None], jnp.asarray(jnp.nan, ys.dtype), ys)
