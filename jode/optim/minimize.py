"""Minimize a loss by integrating its gradient flow to a steady state.

    dθ/dt = -∇L(θ, args),   θ(0) = θ_0,   stopped at the first accepted step with
    ‖∇L(θ)‖₂ ≤ gtol                                                          (1)

The `gradient_flow` optimizer (any of its solvers and error scales) runs in a
`lax.while_loop` until (1) holds, the step budget is spent, or a step fails; the result is a
pure, jit/vmap-compatible function of θ_0 and args, and carries a `jode.RESULTS` status.

A stop short of the goal is visible three ways: `status` (MAX_STEPS: the budget ran out;
NONFINITE: the loss was NaN or inf; DT_UNDERFLOW: every retry of a step was rejected;
CONVERGED otherwise); outside `jax.jit`, a `RuntimeWarning` naming the status, the gradient
norm reached and what to try (`warn=False` silences it); and with `throw=True` an error
(`eqx.branched_error_if`, so it also fires under `jax.jit`, where Python warnings cannot).

The defaults (`jode.optim.Ros2()`, rtol 0.1, error scaled to the parameters) are those of
`gradient_flow`, chosen on the optimizer suite of `benchmarks/optim_suite.py` (see
`jode.optim.flow` and benchmarks/RESULTS.md, "Optimizer suite").
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._results import RESULTS, status_messages
from .flow import ALL_REJECTED, DEFAULT_ATOL, DEFAULT_ERROR_SCALE, DEFAULT_RTOL, gradient_flow

#: What to try, per way of stopping short (the warning's and the error's text).
_HINTS = {
    RESULTS.MAX_STEPS: "max_steps ran out before ‖∇L‖ <= gtol: raise max_steps, loosen gtol, "
    "or, for an ill-conditioned loss with an explicit solver, use solver=jode.optim.Ros2() "
    "(the default); with error_scale='params' an explicit solver can hover at a "
    "tolerance-sized distance from the minimizer: use error_scale='step'",
    RESULTS.NONFINITE: "the loss or its gradient was NaN or inf: check the loss and its "
    "arguments at params0",
    RESULTS.DT_UNDERFLOW: "every retry of a step was rejected (the step size kept shrinking): "
    "the gradient may be discontinuous or non-finite near the current point; loosen "
    "rtol/atol or check the loss",
}


class FlowResult(NamedTuple):
    """What `minimize_by_flow` returns.

    Attributes:
        params: θ at the end (a pytree like θ_0).
        value: L there.
        grad_norm: ‖∇L‖₂ there.
        status: a `jode.RESULTS` value: CONVERGED when ‖∇L‖ ≤ gtol was reached, otherwise
            MAX_STEPS, NONFINITE or DT_UNDERFLOW.
        t: the flow time reached.
        steps: accepted steps.
        nfev: gradient evaluations (each also gives L), rejected attempts included.
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
        return self.status == RESULTS.CONVERGED


def _norm(tree):
    flat = ravel_pytree(tree)[0]
    return jnp.sqrt(jnp.vdot(flat, flat))


def minimize_by_flow(
    loss,
    params0,
    args=None,
    *,
    solver=None,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    gtol: float = 1e-6,
    error_scale: str = DEFAULT_ERROR_SCALE,
    max_steps: int = 10_000,
    throw: bool = False,
    warn: bool = True,
) -> FlowResult:
    """Integrate the gradient flow (1) until ‖∇L‖ ≤ gtol; see the module docstring.

    Args:
        loss: L(params, args) -> scalar.
        params0: starting parameters, any pytree of floating arrays.
        args: passed to `loss`; differentiable.
        solver, rtol, atol, error_scale: the integrator of `jode.optim.gradient_flow`
            (default `jode.optim.Ros2()`, rtol 0.1, atol 1e-8, error_scale "params": the
            measured best of the optimizer suite; an explicit solver wants
            error_scale="step").
        gtol: stop when the gradient's 2-norm is at most this.
        max_steps: bound on the accepted-plus-rejected steps.
        throw: raise when the run stops short of gtol (also under `jax.jit`).
        warn: outside `jax.jit`, emit a `RuntimeWarning` when it stops short.

    Returns:
        A `FlowResult` whose `status` says whether gtol was met.

    Raises:
        ValueError: for gtol <= 0, max_steps < 1, or a solver or tolerances that
            `gradient_flow` rejects.

    Example:
        >>> res = minimize_by_flow(lambda p, a: jnp.sum((p - a) ** 2), jnp.zeros(3), jnp.ones(3))
        >>> res.params, res.converged
    """
    if not gtol > 0:
        raise ValueError(f"gtol must be > 0; got gtol={gtol}")
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1; got max_steps={max_steps}")
    opt = gradient_flow(solver, rtol, atol, error_scale=error_scale)
    value_fn = lambda p: loss(p, args)  # noqa: E731
    v0, g0 = jax.value_and_grad(value_fn)(params0)
    state = opt.init(params0)
    state = state._replace(value=jnp.asarray(v0, state.value.dtype), grad=g0, nfev=state.nfev + 1)

    def cond(c):
        params, st = c
        going = (_norm(st.grad) > gtol) & (st.status != ALL_REJECTED) & jnp.isfinite(st.value)
        return going & (st.count + st.rejected < max_steps)

    def body(c):
        params, st = c
        updates, st = opt.update(st.grad, st, params, value=st.value, value_fn=value_fn)
        return jax.tree.map(jnp.add, params, updates), st

    params, st = jax.lax.while_loop(cond, body, (params0, state))
    gnorm = _norm(st.grad)
    status = jnp.where(
        gnorm <= gtol,
        RESULTS.CONVERGED,
        jnp.where(
            ~(jnp.isfinite(st.value) & jnp.isfinite(gnorm)),
            RESULTS.NONFINITE,
            jnp.where(st.status == ALL_REJECTED, RESULTS.DT_UNDERFLOW, RESULTS.MAX_STEPS),
        ),
    ).astype(jnp.int32)
    if throw:
        messages = status_messages("jode.optim.minimize_by_flow", _HINTS)
        params = eqx.branched_error_if(params, status != RESULTS.CONVERGED, status, messages)
    elif warn:
        _warn_if_short(status, gnorm, gtol, max_steps)
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


def _warn_if_short(status, gnorm, gtol, max_steps):
    """A RuntimeWarning for runs that stopped short, when the status is concrete."""
    if isinstance(status, jax.core.Tracer) or isinstance(gnorm, jax.core.Tracer):
        return  # under jit/vmap tracing: only the status (and throw=True) can tell
    import numpy as np

    status, gnorm = np.asarray(status), np.asarray(gnorm)
    short = status != int(RESULTS.CONVERGED)
    if not short.any():
        return
    first = int(np.flatnonzero(short.ravel())[0])
    code = RESULTS(int(status.ravel()[first]))
    lanes = "" if status.ndim == 0 else f" ({int(short.sum())} of {status.size} runs)"
    warnings.warn(
        f"minimize_by_flow stopped short{lanes}: status {code.name}, ‖∇L‖ = "
        f"{float(gnorm.ravel()[first]):.3g} > gtol = {gtol:g} (max_steps={max_steps}). "
        f"{_HINTS.get(code, code.message)}. The status is in the result's `status`; "
        "warn=False silences this, throw=True raises instead.",
        RuntimeWarning,
        stacklevel=3,
    )
