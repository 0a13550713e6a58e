"""Optimizing by integrating: the gradient flow as an optax optimizer.

The gradient flow of a loss L,

    dθ/dt = -∇L(θ),                                                          (1)

decreases L along every trajectory (dL/dt = -‖∇L‖²) and ends in a stationary point. Owens &
Filkin (1989) trained networks by integrating (1) with a stiff ODE solver instead of taking
gradient-descent steps: the solver's error control chooses the step, so there is no
learning rate, only tolerances. `gradient_flow` makes each optax update one *accepted*
step of an error-controlled integrator of (1):

- explicit: any adaptive `jode` Runge-Kutta method (Tsit5, Bosh3, Dopri5 …), the step
  from the solver's own `step` (the `jode.AbstractSolver` protocol) and the next step size
  from the core's PID controller (`jode.ode.control.pid_update`) on the scaled embedded error
  ‖e / (atol + rtol·max(|θ_n|, |θ_{n+1}|))‖_RMS (Hairer, Nørsett & Wanner 1993, §II.4),
  or, with `error_scale="step"`, on ‖e‖_RMS / (atol + rtol·‖θ_{n+1} - θ_n‖_RMS);
- explicit Euler with Heun's error estimate (`jode.optim.EulerHeun`, FSAL, one gradient
  per attempted step): each accepted step is gradient descent θ_{n+1} = θ_n - h_n∇L(θ_n) with
  h_n chosen by error control on e = h_n/2 (∇L(θ_{n+1}) - ∇L(θ_n)) (Hairer, Nørsett & Wanner
  1993, §II.4, the 1(2) pair without local extrapolation); with `error_scale="step"` the
  test reads ‖∇L(θ_{n+1}) - ∇L(θ_n)‖ ≤ 2·rtol‖∇L(θ_n)‖ (plus atol/h), so rtol < 1 keeps every
  stiff mode λ at h_n λ < 2·rtol, inside Euler's stability interval;
- linearly implicit: `jode.optim.Ros2`, a Rosenbrock W-method whose linear systems
  (I + γhH)k = r are solved by truncated conjugate gradients with Hessian-vector products
  (see `jode.optim.ros2`), for stiff flows.

Every solver is a `jode.AbstractSolver` and is stepped through that one protocol
(`init_state`, `step`), exactly as `jode.solve` steps it.

Defaults, by measurement. `gradient_flow()` and `minimize_by_flow()` default to
`Ros2()`, rtol 0.1, atol 1e-8, error_scale "params". On the suite of
benchmarks/optim_suite.py (budget 20000 gradient evaluations; starts reaching f - f* < 1e-8,
f* the global minimum, and their median gradient evaluations, Hessian-vector products
added for Ros2):

    configuration          Rosenbrock  Himmelblau    camel         Goldstein-P.  Beale
    Ros2, params, 0.1      1/1, 416    441/441, 72   254/441, 150  144/441, 226  246/441, 212
    Bosh3, step, 0.1       0/1         441/441, 59   250/441, 44   147/441, 98   247/441, 1682
    EulerHeun, step, 0.1   1/1, 13577  441/441, 76   250/441, 61   144/441, 120  243/441, 887
    Tsit5, params, 1e-3    0/1         1/441         4/441, 59     146/441, 188  0/441
    (the former default)

and on the breast-cancer logistic regression (8 starts) 8/8 in 916, 1352, 686 and 0/8.
Starts that miss end in another minimum (camel, Goldstein-Price) or run off to infinity
along Beale's flat valleys, for the converging configurations alike (the basins decide:
135-173 of 441 on Goldstein-Price, 250-254 on the camel, 243-247 on Beale). The rule: among
the configurations that reach the target on every problem (Ros2 "params" at each rtol, Ros2
"step" at 0.1 and 0.01, EulerHeun "step" at each rtol), the lowest geometric mean of the
median evaluations over the seven problems: Ros2 "params" 0.1 (317, worst 1635), then
EulerHeun "step" 0.1 (427, worst 13577 on Rosenbrock). Ros2's L-stability removes both
failures of the explicit methods, the hovering of the classic scale (Himmelblau, Beale,
logistic) and the stability-bound crawl along Rosenbrock's valley. The count takes a
Hessian-vector product as one evaluation, though it costs more than a gradient. Without
Rosenbrock the explicit "step" settings are cheaper (EulerHeun 0.1: 240), on the well-
conditioned camel and Goldstein-Price by 2-3x (`gradient_flow(jode.Bosh3(), 0.1,
error_scale="step")`), and so is training a network: on the suite's digits MLP (training
loss < 1e-3, 4 starts) EulerHeun at rtol 0.1 takes a median 456 ("params") or 560 ("step")
evaluations, Ros2 1635.
The full table, with optax Adam and L-BFGS beside them, is in benchmarks/RESULTS.md
("Optimizer suite").

Why the second scale. Near a minimizer the flow's motion goes to 0 but |θ| does not, so the
classic scale keeps allowing an error of about rtol·|θ| per step. There an explicit method
is held by stability, not accuracy (h ≈ β/λ_max, β its real stability interval), and with
a loose rtol the controller lets the stiff component oscillate with an amplitude of about
the tolerance: the iterate hovers at that distance from the minimizer instead of
converging (measured on the six-hump camel from a 21 x 21 grid, Tsit5, rtol 1e-2: 66 of
441 starts get within 1e-6 of a minimum in f). Measured against the step taken, the error
allowed shrinks with the motion, so loose tolerances still converge (the same runs: 440 of
441). This is a relative-accuracy requirement on each step's direction, a choice of
`jode.optim` for optimization, not a classical ODE norm; it makes the path depart further
from the exact flow when the steps are long.

A rejected step is retried inside the same `update` with the smaller step the controller
proposes, so every update moves the parameters (unless `max_rejects` retries all fail,
which the state's `status` reports). The step size, the controller's memory, the flow time
and the loss value and gradient at the new parameters live in `FlowState`. Because the
state holds fields named `value` and `grad`, `optax.value_and_grad_from_state` recycles them:
with an FSAL tableau the gradient at the new parameters is the step's last stage, so a
training step costs exactly the stages of one accepted RK step.

References:
    A. J. Owens and D. L. Filkin (1989), "Efficient training of the back propagation network
    by solving a system of stiff ordinary differential equations", Proc. IJCNN, II:381-386.
    "Neural network back-propagation revisited with ordinary differential equations",
    Towards Data Science (June 2020): the camel / Goldstein-Price / MNIST 0-4 comparison.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .._results import RESULTS
from ..ode.control import PIDController, initial_step, pid_update, rms_norm, scaled_error
from ..ode.explicit import AbstractExplicitRK, AbstractSolver
from .chebyshev import Chebyshev
from .ros2 import Ros2

# Status codes kept in FlowState.status (int32), from the shared `jode.RESULTS`.
OK = int(RESULTS.SUCCESS)
#: max_rejects retries were all rejected (the step kept shrinking without an acceptance):
#: parameters unchanged this update. The step-size failure of `jode.solve`.
ALL_REJECTED = int(RESULTS.DT_UNDERFLOW)

#: How the local error estimate is scaled before the controller compares it with 1.
ERROR_SCALES = ("params", "step")

#: The defaults of `gradient_flow` and `minimize_by_flow`: `Ros2()` with rtol 0.1, atol
#: 1e-8 and the error scaled to the parameters, the configuration that reached the target
#: f - f* < 1e-8 from the most starts with the fewest gradient evaluations (plus
#: Hessian-vector products) over the optimizer suite of benchmarks/optim_suite.py (see the
#: table in `gradient_flow`'s docstring and benchmarks/RESULTS.md, "Optimizer suite").
DEFAULT_RTOL = 0.1
DEFAULT_ATOL = 1e-8
DEFAULT_ERROR_SCALE = "params"


class FlowState(NamedTuple):
    """Optimizer state of `gradient_flow`.

    Attributes:
        h: the next step size in flow time (0 before the first update: chosen then by the
            Hairer-Nørsett-Wanner starting-step algorithm).
        prev_inv: the controller's memory, inverse scaled errors of the last two steps.
        t: flow time reached, Σ accepted h.
        value: L at the parameters after the last update (inf before the first).
        grad: ∇L there (a pytree like the parameters).
        count: accepted steps (= updates that moved the parameters).
        rejected: rejected attempts in total.
        nfev: gradient evaluations in total (each also gives L), rejected attempts included.
        nhvp: Hessian-vector products in total (implicit solver only).
        status: OK (`RESULTS.SUCCESS`) or ALL_REJECTED (`RESULTS.DT_UNDERFLOW`) for the
            last update.
    """

    h: jax.Array
    prev_inv: jax.Array
    t: jax.Array
    value: jax.Array
    grad: Any
    count: jax.Array
    rejected: jax.Array
    nfev: jax.Array
    nhvp: jax.Array
    status: jax.Array


def _concrete(x) -> bool:
    return isinstance(x, int | float | np.integer | np.floating)


def _check(solver, rtol, atol, max_rejects, controller, error_scale):
    if not isinstance(solver, AbstractExplicitRK | Ros2 | Chebyshev):
        raise ValueError(
            "solver must be an adaptive jode Runge-Kutta solver (jode.Tsit5(), jode.Bosh3(), "
            "jode.Dopri5(), jode.optim.EulerHeun(), …), jode.optim.Chebyshev() or "
            f"jode.optim.Ros2(); got solver={solver!r}"
        )
    if not solver.adaptive:
        raise ValueError(
            f"{solver!r} has no embedded error estimate, so it cannot control the flow's "
            "step: use jode.Tsit5(), jode.Bosh3(), jode.optim.EulerHeun() or jode.Dopri5()"
        )
    # Traced tolerances (a sweep under jit/vmap) cannot be checked before tracing.
    if _concrete(rtol) and _concrete(atol) and not (rtol >= 0 and atol >= 0 and rtol + atol > 0):
        raise ValueError(f"rtol and atol must be >= 0, not both 0; got rtol={rtol}, atol={atol}")
    if error_scale not in ERROR_SCALES:
        raise ValueError(
            f"error_scale must be one of {ERROR_SCALES}; got error_scale={error_scale!r}"
        )
    if int(max_rejects) < 0:
        raise ValueError(f"max_rejects must be >= 0; got max_rejects={max_rejects}")
    if not isinstance(controller, PIDController):
        raise ValueError(f"controller must be a jode.PIDController; got {controller!r}")


def gradient_flow(
    solver=None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    *,
    dt0: float | None = None,
    controller: PIDController | None = None,
    max_rejects: int = 20,
    error_scale: str = DEFAULT_ERROR_SCALE,
) -> optax.GradientTransformationExtraArgs:
    """An optax optimizer whose every update is one accepted step of dθ/dt = -∇L(θ).

    No learning rate: the step length in flow time is chosen by the integrator's error
    control from the tolerances (see the module docstring for the equations). Like
    `optax.lbfgs`, the update needs the loss through extra arguments:

        opt = jode.optim.gradient_flow()          # Ros2, rtol 0.1
        state = opt.init(params)
        value_and_grad = optax.value_and_grad_from_state(loss)
        for _ in range(100):
            value, grad = value_and_grad(params, state=state)   # free after the first step
            updates, state = opt.update(grad, state, params, value=value, grad=grad,
                                        value_fn=loss)
            params = optax.apply_updates(params, updates)

    Args:
        solver: `jode.optim.Ros2()` (default: linearly implicit, Hessian-vector products
            by CG; see "Defaults, by measurement" in the module docstring), `jode.Tsit5()`,
            `jode.Bosh3()`, `jode.Dopri5()`, `jode.Heun()`, `jode.optim.EulerHeun()`
            (adaptive gradient descent, one gradient per attempt) or any adaptive
            `jode.ExplicitRK` (with these, prefer error_scale="step");
            `jode.optim.Chebyshev(stages)` (stabilized explicit, for the real spectra of
            gradient flows).
        rtol, atol: tolerances of the local error per step (default 0.1 and 1e-8).
        dt0: first step size in flow time; chosen automatically when omitted.
        controller: a `jode.PIDController` (default: the I-controller, factormax=10).
        max_rejects: retries inside one update before giving up on it (the state's status
            is then `RESULTS.DT_UNDERFLOW`).
        error_scale: "params" (default; the classic ODE scale, atol + rtol·|θ|) or "step" (atol +
            rtol·‖θ_{n+1} - θ_n‖, better suited to optimization with loose tolerances; see
            the module docstring). rtol and atol may be traced scalars (a jitted sweep).

    Returns:
        An `optax.GradientTransformationExtraArgs`. `update(updates, state, params, *,
        value_fn, value=None, grad=None)` takes `updates` = ∇value_fn(params) (the step's
        first stage, so no evaluation is repeated) and returns the step θ_{n+1} - θ_n. If a
        transformation after this one in an `optax.chain` rescales the updates, compute the
        gradient afresh instead of reading it from the state.

    Raises:
        ValueError: for a solver without error estimate, bad tolerances or an unknown
            error_scale.

    References:
        Owens & Filkin (1989); Hairer, Nørsett & Wanner (1993), *Solving ODEs I*, §II.4.
    """
    solver = Ros2() if solver is None else solver
    controller = PIDController() if controller is None else controller
    _check(solver, rtol, atol, max_rejects, controller, error_scale)

    def init_fn(params) -> FlowState:
        return fresh_state(params, dt0)

    def update_fn(
        updates, state: FlowState, params=None, *, value_fn, value=None, grad=None, **extra_args
    ):
        del grad, extra_args
        y, unravel, g0, v0, value_and_grad = flat_problem(
            "gradient_flow", updates, params, value_fn, value, state.value
        )
        dtype = y.dtype

        if solver.implicit:
            attempt, error_order, nfev0, extra = _implicit_attempt(solver, value_and_grad, y, g0)
        else:
            attempt, error_order, nfev0, extra = _explicit_attempt(
                solver, value_and_grad, y, g0, v0
            )

        def first_step(_):
            f = lambda t, z: -value_and_grad(z)[1]  # noqa: E731
            return initial_step(f, jnp.zeros((), dtype), y, -g0, 1.0, error_order, rtol, atol)

        need_h = state.h <= 0
        h = jax.lax.cond(need_h, first_step, lambda _: state.h, None)
        nfev = state.nfev + nfev0 + need_h.astype(jnp.int32)

        def try_once(h):
            y1, v1, g1, err_vec, ok, hvps = attempt(h)
            return y1, err_vec, ok, (y1, v1, g1), hvps

        out = retry(
            try_once, y, h, state.prev_inv, (y, jnp.asarray(v0, dtype), g0),
            error_order=error_order, error_scale=error_scale, rtol=rtol, atol=atol,
            controller=controller, max_rejects=max_rejects,
        )
        out_y1, out_v1, out_g1 = out["payload"]
        accept, tries = out["accept"], out["tries"]
        if solver.implicit:
            # Rosenbrock stages do not end at θ_{n+1}: one more evaluation gives L and ∇L there.
            v1, g1 = jax.lax.cond(
                accept, lambda z: value_and_grad(z), lambda z: (out_v1, g0), out_y1
            )
            nfev = nfev + tries * extra["nfev_per_try"] + accept.astype(jnp.int32)
        else:
            v1, g1 = out_v1, out_g1
            nfev = nfev + tries * extra["nfev_per_try"]
        step = jnp.where(accept, out_y1 - y, jnp.zeros_like(y))
        new_state = advance(state, out, v0, g0, v1, g1, nfev, state.nhvp + out["count"], unravel)
        return unravel(step), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def flat_problem(name, updates, params, value_fn, value, last_value):
    """(θ flat, unravel, ∇L(θ) flat, L(θ), value_and_grad on flat θ) for one update."""
    if params is None:
        raise ValueError(f"{name} needs params: opt.update(grad, state, params, value_fn=loss)")
    y, unravel = ravel_pytree(params)
    dtype = y.dtype
    g0 = ravel_pytree(updates)[0].astype(dtype)
    v0 = last_value if value is None else jnp.asarray(value, dtype)

    def value_and_grad(y_flat):
        v, g = jax.value_and_grad(value_fn)(unravel(y_flat))
        return jnp.asarray(v, dtype), ravel_pytree(g)[0].astype(dtype)

    return y, unravel, g0, v0, value_and_grad


def fresh_state(params, dt0=None) -> FlowState:
    """The state before the first update (h = 0: chosen by the starting-step algorithm)."""
    dtype = ravel_pytree(params)[0].dtype
    zero = jnp.zeros((), jnp.int32)
    return FlowState(
        h=jnp.asarray(0.0 if dt0 is None else float(dt0), dtype),
        prev_inv=jnp.ones((2,), dtype),
        t=jnp.zeros((), dtype),
        value=jnp.asarray(jnp.inf, dtype),
        grad=jax.tree.map(jnp.zeros_like, params),
        count=zero,
        rejected=zero,
        nfev=zero,
        nhvp=zero,
        status=zero,
    )


def retry(attempt, y, h, prev_inv, payload0, *, error_order, error_scale, rtol, atol,
          controller, max_rejects):
    """Attempt steps from y until one is accepted or max_rejects retries fail.

    `attempt(h) -> (y1, err_vec, ok, payload, count)`: the new point of the error-controlled
    components, their local error estimate, whether all is finite, what the caller keeps
    from the last attempt, and a count to add up (e.g. Hessian-vector products). The error
    is scaled by `error_scale` and the next step comes from the PID controller
    (Hairer, Nørsett & Wanner 1993, §II.4). Returns a dict: accept, tries, h (next step),
    h_taken, prev_inv, payload (of the last attempt) and count (summed).
    """

    def body(c):
        y1, err_vec, ok, payload, count = attempt(c["h"])
        if error_scale == "step":
            err = _step_relative_error(err_vec, y1 - y, rtol, atol)
        else:
            err = scaled_error(err_vec, y, y1, rtol, atol)
        accept, h_next, p_inv = pid_update(
            controller, error_order, jnp.where(ok, err, jnp.inf), c["h"], c["prev_inv"]
        )
        return dict(accept=accept, tries=c["tries"] + 1, h=h_next, h_taken=c["h"],
                    prev_inv=p_inv, payload=payload, count=c["count"] + count)

    init = dict(
        accept=jnp.zeros((), bool), tries=jnp.zeros((), jnp.int32), h=h,
        h_taken=jnp.zeros((), y.dtype), prev_inv=prev_inv, payload=payload0,
        count=jnp.zeros((), jnp.int32),
    )
    return jax.lax.while_loop(
        lambda c: ~c["accept"] & (c["tries"] <= max_rejects), body, init
    )


def advance(state: FlowState, out, v0, g0, v1, g1, nfev, nhvp, unravel) -> FlowState:
    """The state after an update whose retry loop ended with `out` (see `retry`)."""
    accept, tries = out["accept"], out["tries"]
    return FlowState(
        h=out["h"],
        prev_inv=out["prev_inv"],
        t=state.t + jnp.where(accept, out["h_taken"], 0.0),
        value=jnp.where(accept, v1, v0),
        grad=unravel(jnp.where(accept, g1, g0)),
        count=state.count + accept.astype(jnp.int32),
        rejected=state.rejected + tries - accept.astype(jnp.int32),
        nfev=nfev,
        nhvp=nhvp,
        status=jnp.where(accept, OK, ALL_REJECTED).astype(jnp.int32),
    )


def _step_relative_error(err_vec, dy, rtol, atol):
    """‖e‖_RMS / (atol + rtol ‖θ_{n+1} - θ_n‖_RMS): the error relative to the step taken."""
    e = rms_norm(jax.lax.stop_gradient(err_vec))
    d = rms_norm(jax.lax.stop_gradient(dy))
    norm = e / (atol + rtol * d)
    return jnp.where(jnp.isfinite(norm), norm, jnp.inf)


def _explicit_attempt(solver: AbstractSolver, value_and_grad, y, g0, v0):
    """One explicit attempt from θ_n with step h (a closure over θ_n and its gradient).

    The loss value rides along as an extra, passive component of the state: the vector
    field returns [-∇L(θ), L(θ)], so the step's F(θ_{n+1}) (an FSAL tableau's last stage,
    or the evaluation every other explicit step ends with) hands over L and ∇L at θ_{n+1}
    with no further evaluation (the error norm uses the first n components only).
    """
    n = y.shape[0]

    def field(t, z):
        del t
        v, g = value_and_grad(z[:n])
        return jnp.concatenate([-g, v[None]])

    z0 = jnp.concatenate([y, jnp.zeros((1,), y.dtype)])
    fz0 = jnp.concatenate([-g0, jnp.asarray(v0, y.dtype)[None]])
    zero = jnp.zeros((), y.dtype)

    def attempt(h):
        res = solver.step(field, zero, z0, fz0, h)
        y1 = res.y1[:n]
        ok = jnp.all(jnp.isfinite(y1)) & jnp.all(jnp.isfinite(res.f1))
        return y1, res.f1[n], -res.f1[:n], res.error[:n], ok, jnp.zeros((), jnp.int32)

    return attempt, solver.error_order, 0, {"nfev_per_try": solver.f_evals_per_step}


def _implicit_attempt(solver: AbstractSolver, value_and_grad, y, g0):
    """One attempt of a stiff solver (Ros2) on the plain flow F = -∇L, whose Jacobian -H is
    symmetric (what Ros2's conjugate gradients need). The state counts the Hessian-vector
    products; F(θ_{n+1}) is evaluated by the caller only for an accepted step (the step's
    own evaluation of it, unused here, is removed by XLA as dead code)."""
    field = lambda t, z: -value_and_grad(z)[1]  # noqa: E731
    zero = jnp.zeros((), y.dtype)
    state0 = solver.init_state(field, zero, y, -g0)

    def attempt(h):
        res = solver.step(field, zero, y, -g0, h, state0)
        hvps = res.state.nhvp - state0.nhvp
        return res.y1, jnp.zeros((), y.dtype), g0, res.error, res.ok, hvps

    # Each try: the linearization at θ_n and the second stage (F(θ_{n+1}) is not used).
    return attempt, solver.error_order, 0, {"nfev_per_try": solver.f_evals_per_step - 1}
