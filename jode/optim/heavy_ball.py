"""The damped second-order ("heavy ball with friction") flow as an optax optimizer.

    θ'' + γ θ' + ∇L(θ) = 0,   θ(0) = θ_0,   θ'(0) = 0,                        (1)

written as the first-order system for z = (θ, v):  θ' = v,  v' = -γ v - ∇L(θ). Along (1)
the energy E = L(θ) + ½‖v‖² decreases, dE/dt = -γ‖v‖², so bounded trajectories come to
rest at stationary points of L (Attouch, Goudou & Redont 2000). Polyak's heavy-ball
iteration θ_{k+1} = θ_k - α∇L(θ_k) + β(θ_k - θ_{k-1}) is a fixed-step discretization of (1)
(Polyak 1964); Su, Boyd & Candès (2016) derived Nesterov's method as (1) with γ = 3/t.
Unlike the gradient flow dθ/dt = -∇L(θ), whose trajectories stay in the basin of attraction
of their start, the inertia of (1) can carry θ over a ridge into another basin: this
optimizer is a *different ODE*, not a better integrator of the gradient flow.

`heavy_ball_flow` makes each optax update one accepted step of an error-controlled explicit
Runge-Kutta integrator of (1), with the step from the solver's own `step`, the error
norm over (θ, v) and the step size from the core's PID controller, as `gradient_flow` does
for the gradient flow (same error scales, same retry loop). The velocity, step size and
controller memory live in the state; its `value` and `grad` fields (L and ∇L at the new
parameters, the FSAL stage's) let `optax.value_and_grad_from_state` recycle them.

References:
    B. T. Polyak (1964), "Some methods of speeding up the convergence of iteration methods",
    USSR Comput. Math. Math. Phys. 4(5):1-17.
    H. Attouch, X. Goudou and P. Redont (2000), "The heavy ball with friction method, I. The
    continuous dynamical system", Commun. Contemp. Math. 2(1):1-34.
    W. Su, S. Boyd and E. J. Candès (2016), "A differential equation for modeling Nesterov's
    accelerated gradient method: theory and insights", JMLR 17(153):1-43.
    E. Hairer, S. P. Nørsett and G. Wanner (1993), *Solving ODEs I*, §II.4 (step control).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ..ode.control import PIDController, initial_step
from ..ode.explicit import AbstractExplicitRK, Tsit5
from .flow import FlowState, _check, _concrete, advance, flat_problem, fresh_state, retry


class HeavyBallState(NamedTuple):
    """Optimizer state of `heavy_ball_flow`.

    Attributes:
        flow: step size, controller memory, flow time, L and ∇L at the current parameters and
            the counters, as in `gradient_flow`'s `FlowState` (nhvp stays 0).
        velocity: v = θ' (a pytree like the parameters; 0 at the start).
    """

    flow: FlowState
    velocity: Any


def heavy_ball_flow(
    solver=None,
    damping: float = 1.0,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    *,
    dt0: float | None = None,
    controller: PIDController | None = None,
    max_rejects: int = 20,
    error_scale: str = "params",
) -> optax.GradientTransformationExtraArgs:
    """An optax optimizer whose every update is one accepted step of θ'' + γθ' + ∇L(θ) = 0.

    Used like `gradient_flow` (the loss goes in through `value_fn`); see the module
    docstring for the equations.

    Args:
        solver: an adaptive explicit `jode` Runge-Kutta solver: `jode.Tsit5()` (default),
            `jode.Bosh3()`, `jode.Dopri5()` …; every step ends with f at the new point, which
            hands over L and ∇L there (for free with an FSAL tableau).
        damping: the friction coefficient γ > 0 (per unit flow time). Small γ: more inertia,
            longer oscillations; γ² ≥ 4λ_max: every mode of a quadratic is overdamped.
            May be a traced scalar.
        rtol, atol: tolerances of the local error per step, on (θ, v).
        dt0: first step size in flow time; chosen automatically when omitted.
        controller: a `jode.PIDController` (default: the I-controller).
        max_rejects: retries inside one update before giving up on it (status 1).
        error_scale: "params" (atol + rtol·|z|) or "step" (atol + rtol·‖z_{n+1} - z_n‖),
            as in `gradient_flow`.

    Returns:
        An `optax.GradientTransformationExtraArgs` with state `HeavyBallState`.

    Raises:
        ValueError: for a solver that is not an adaptive explicit Runge-Kutta method, bad
            tolerances, a damping ≤ 0 or an unknown error_scale.

    References:
        Polyak (1964); Attouch, Goudou & Redont (2000); Su, Boyd & Candès (2016).
    """
    solver = Tsit5() if solver is None else solver
    controller = PIDController() if controller is None else controller
    if not isinstance(solver, AbstractExplicitRK):
        raise ValueError(
            "solver must be an adaptive explicit jode Runge-Kutta solver (jode.Tsit5(), "
            f"jode.Bosh3(), jode.Dopri5()); got solver={solver!r}"
        )
    _check(solver, rtol, atol, max_rejects, controller, error_scale)
    if _concrete(damping) and not damping > 0:
        raise ValueError(f"damping must be > 0 (the friction γ); got damping={damping}")
    per_try = solver.f_evals_per_step

    def init_fn(params) -> HeavyBallState:
        return HeavyBallState(fresh_state(params, dt0), jax.tree.map(jnp.zeros_like, params))

    def update_fn(
        updates, state: HeavyBallState, params=None, *, value_fn, value=None, grad=None, **extra
    ):
        del grad, extra
        st = state.flow
        y, unravel, g0, v0, value_and_grad = flat_problem(
            "heavy_ball_flow", updates, params, value_fn, value, st.value
        )
        dtype, n = y.dtype, y.shape[0]
        gamma = jnp.asarray(damping, dtype)
        v_vel = ravel_pytree(state.velocity)[0].astype(dtype)

        # z = (θ, v, L, ∇L): the last two are passive components (never in the error norm)
        # so that the step's f(z_1) hands over L and ∇L at θ_{n+1}.
        def field(t, z):
            del t
            val, g = value_and_grad(z[:n])
            vel = z[n : 2 * n]
            return jnp.concatenate([vel, -gamma * vel - g, val[None], g])

        z0 = jnp.concatenate([y, v_vel, jnp.zeros((1 + n,), dtype)])
        fz0 = jnp.concatenate([v_vel, -gamma * v_vel - g0, v0[None], g0])
        zero_t = jnp.zeros((), dtype)

        def first_step(_):
            f = lambda t, x: field(t, jnp.concatenate([x, z0[2 * n :]]))[: 2 * n]  # noqa: E731
            return initial_step(
                f, zero_t, z0[: 2 * n], fz0[: 2 * n], 1.0, solver.error_order, rtol, atol
            )

        need_h = st.h <= 0
        h = jax.lax.cond(need_h, first_step, lambda _: st.h, None)
        nfev = st.nfev + need_h.astype(jnp.int32)

        def attempt(h):
            res = solver.step(field, zero_t, z0, fz0, h)
            ok = jnp.all(jnp.isfinite(res.y1)) & jnp.all(jnp.isfinite(res.f1))
            zero = jnp.zeros((), jnp.int32)
            return res.y1[: 2 * n], res.error[: 2 * n], ok, (res.y1, res.f1), zero

        out = retry(
            attempt, z0[: 2 * n], h, st.prev_inv, (z0, fz0),
            error_order=solver.error_order, error_scale=error_scale, rtol=rtol, atol=atol,
            controller=controller, max_rejects=max_rejects,
        )
        accept, tries = out["accept"], out["tries"]
        # f(z_1) ends every explicit step (an FSAL tableau's last stage, or the evaluation
        # after the stages): its passive components are L and ∇L at θ_{n+1}.
        z1, f1 = out["payload"]
        nfev = nfev + tries * per_try
        v1, g1 = f1[2 * n], f1[2 * n + 1 :]
        step = jnp.where(accept, z1[:n] - y, jnp.zeros_like(y))
        new_flow = advance(st, out, v0, g0, v1, g1, nfev, st.nhvp, unravel)
        velocity = unravel(jnp.where(accept, z1[n : 2 * n], v_vel))
        return unravel(step), HeavyBallState(new_flow, velocity)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
