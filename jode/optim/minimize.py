"""Minimize a loss by integrating its gradient flow to a steady state.

    dθ/dt = -∇L(θ, args),   θ(0) = θ_0,   stopped at the first accepted step with
    ‖∇L(θ)‖₂ ≤ gtol                                                          (1)

An explicit solver runs through `jode.solve` with the terminating condition `stop=` (the
solve ends with `Status.EVENT`); the linearly implicit `jode.optim.Ros2` runs the
`gradient_flow` optimizer in a `lax.while_loop` with the same stopping rule. Either way
the result is a pure, jit/vmap-compatible function of θ_0 and args.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ..ode.explicit import AbstractExplicitRK, Tsit5
from ..ode.solution import Status
from ..ode.solve import solve
from .chebyshev import Chebyshev
from .flow import ALL_REJECTED, gradient_flow
from .ros2 import Ros2


class FlowResult(NamedTuple):
    """What `minimize_by_flow` returns.

    Attributes:
        params: θ at the end (a pytree like θ_0).
        value: L there.
        grad_norm: ‖∇L‖₂ there.
        status: a `jode.Status` code: EVENT (5) when ‖∇L‖ ≤ gtol was reached, MAX_STEPS,
            DT_UNDERFLOW or NONFINITE otherwise.
        t: the flow time reached.
        steps: accepted steps.
        nfev: gradient evaluations (rejected steps and the stopping test included).
        nhvp: Hessian-vector products (Ros2 only).
    """

    params: Any
    value: jax.Array
    grad_norm: jax.Array
    status: jax.Array
    t: jax.Array
    steps: jax.Array
    nfev: jax.Array
    nhvp: jax.Array

    @property
    def converged(self):
        return self.status == Status.EVENT


def _norm(tree):
    flat = ravel_pytree(tree)[0]
    return jnp.sqrt(jnp.vdot(flat, flat))


def minimize_by_flow(
    loss,
    params0,
    args=None,
    *,
    solver=None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    gtol: float = 1e-6,
    t1: float = 1e12,
    max_steps: int = 10_000,
    throw: bool = False,
) -> FlowResult:
    """Integrate the gradient flow (1) until ‖∇L‖ ≤ gtol; see the module docstring.

    Args:
        loss: L(params, args) -> scalar.
        params0: starting parameters, any pytree of floating arrays.
        args: passed to `loss`; differentiable.
        solver: an adaptive jode solver (default `jode.Tsit5()`), `jode.optim.Chebyshev()` or
            `jode.optim.Ros2()` (these two run the `gradient_flow` optimizer in a loop).
        rtol, atol: local error tolerances of the integration.
        gtol: stop when the gradient's 2-norm is at most this.
        t1: the flow time at which to give up (the steady state is reached as t → ∞).
        max_steps: bound on the accepted-plus-rejected steps.
        throw: raise on failure (max_steps, underflow, non-finite) instead of reporting it.

    Returns:
        A `FlowResult`.

    Raises:
        ValueError: for gtol <= 0 or a solver that cannot adapt its step.

    Example:
        >>> res = minimize_by_flow(lambda p, a: jnp.sum((p - a) ** 2), jnp.zeros(3), jnp.ones(3))
        >>> res.params, res.converged
    """
    if not gtol > 0:
        raise ValueError(f"gtol must be > 0; got gtol={gtol}")
    solver = Tsit5() if solver is None else solver
    grad = jax.grad(loss)
    if isinstance(solver, Ros2 | Chebyshev):
        return _minimize_loop(loss, params0, args, solver, rtol, atol, gtol, max_steps, throw)
    if not isinstance(solver, AbstractExplicitRK) or not solver.adaptive:
        raise ValueError(
            f"solver must be an adaptive jode solver (jode.Tsit5(), jode.Bosh3(), …) or "
            f"jode.optim.Ros2(); got solver={solver!r}"
        )

    def field(t, p, a):
        return jax.tree.map(jnp.negative, grad(p, a))

    def stop(t, p, a):
        return _norm(grad(p, a)) <= gtol

    sol = solve(
        field,
        params0,
        0.0,
        t1,
        args,
        solver=solver,
        rtol=rtol,
        atol=atol,
        stop=stop,
        max_steps=max_steps,
        throw=throw,
    )
    params = jax.tree.map(lambda x: x[-1], sol.ys)
    value, g = jax.value_and_grad(loss)(params, args)
    steps = sol.stats["accepted"]
    return FlowResult(
        params=params,
        value=value,
        grad_norm=_norm(g),
        status=sol.status,
        t=sol.ts[-1],
        steps=steps,
        nfev=sol.stats["nfev"] + steps,
        nhvp=jnp.zeros((), jnp.int32),
    )


def _minimize_loop(loss, params0, args, solver, rtol, atol, gtol, max_steps, throw):
    value_fn = lambda p: loss(p, args)  # noqa: E731
    opt = gradient_flow(solver, rtol, atol)
    v0, g0 = jax.value_and_grad(value_fn)(params0)
    state = opt.init(params0)
    state = state._replace(value=jnp.asarray(v0, state.value.dtype), grad=g0, nfev=state.nfev + 1)

    def cond(c):
        params, st = c
        going = (_norm(st.grad) > gtol) & (st.status != ALL_REJECTED)
        return going & (st.count + st.rejected < max_steps)

    def body(c):
        params, st = c
        updates, st = opt.update(st.grad, st, params, value=st.value, value_fn=value_fn)
        return jax.tree.map(jnp.add, params, updates), st

    params, st = jax.lax.while_loop(cond, body, (params0, state))
    gnorm = _norm(st.grad)
    status = jnp.where(
        gnorm <= gtol,
        Status.EVENT,
        jnp.where(
            ~jnp.isfinite(st.value),
            Status.NONFINITE,
            jnp.where(st.status == ALL_REJECTED, Status.DT_UNDERFLOW, Status.MAX_STEPS),
        ),
    ).astype(jnp.int32)
    if throw:
        import equinox as eqx

        params = eqx.error_if(
            params,
            status != Status.EVENT,
            "minimize_by_flow did not reach ‖∇L‖ <= gtol: raise max_steps, loosen gtol or "
            "check the loss for non-finite values",
        )
    return FlowResult(
        params=params,
        value=st.value,
        grad_norm=gnorm,
        status=status,
        t=st.t,
        steps=st.count,
        nfev=st.nfev,
        nhvp=st.nhvp,
    )
