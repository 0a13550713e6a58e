"""`fixed_point` and `steady_state`: check -> closure-convert -> solve -> implicit gradient."""

from __future__ import annotations

import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._jit import cached, check_fixed_point
from .._results import RESULTS
from ..ode.checks import _concrete, check_y0
from .implicit import ImplicitAdjoint, floats_to_arrays, solve_implicit
from .result import FixedPointSolution, error_index, status_messages
from .solvers import AbstractFixedPointSolver, Anderson


def _check_solver(solver):
    if inspect.isclass(solver):
        raise ValueError(
            f"solver={solver.__name__} is a constructor, not a solver; call it: "
            f"solver={solver.__name__}()"
        )
    if not isinstance(solver, AbstractFixedPointSolver):
        raise ValueError(
            f"unknown fixed-point solver {solver!r}; use FixedPointIteration(), Anderson(), "
            "Broyden(), Newton() or SteadyState() from jode.fixed_point"
        )


def _check_z0(z0):
    check_y0(z0, name="z0")


def _check_map(f, z0, args):
    """f(z0, args) must return the pytree structure and shapes of z0."""
    try:
        out = jax.eval_shape(f, z0, args)
    except Exception as exc:  # the user's function failed: say where
        raise ValueError(
            f"calling f(z0, args) failed with {type(exc).__name__}: {exc}. "
            "jode.fixed_point calls f(z, args)"
        ) from exc
    z_struct, out_struct = jax.tree.structure(z0), jax.tree.structure(out)
    if z_struct != out_struct:
        raise ValueError(
            "f must return the same pytree structure as z0 (a fixed point z = f(z) needs "
            f"matching structures); got f(z0, args) -> {out_struct} but z0 is {z_struct}"
        )
    for leaf_z, leaf_out in zip(jax.tree.leaves(z0), jax.tree.leaves(out), strict=True):
        if jnp.shape(leaf_z) != leaf_out.shape:
            raise ValueError(
                "f must return arrays shaped like z0; got shape "
                f"{leaf_out.shape} for a leaf of z0 with shape {jnp.shape(leaf_z)}"
            )


def _check_numbers(rtol, atol, max_steps, divergence_ratio):
    for name, value in (("rtol", rtol), ("atol", atol)):
        c = _concrete(value)
        if c is not None and (c.shape != () or not np.isfinite(c) or c < 0):
            raise ValueError(f"{name} must be a finite scalar >= 0; got {name}={value!r}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int; got max_steps={max_steps!r}")
    if not divergence_ratio > 1:
        raise ValueError(
            f"divergence_ratio must be > 1; got divergence_ratio={divergence_ratio!r}"
        )


@cached(check=check_fixed_point, arrays=("z0", "args"))
def fixed_point(
    f,
    z0,
    args=None,
    *,
    solver: AbstractFixedPointSolver | None = None,
    rtol=1e-6,
    atol=1e-6,
    max_steps: int = 256,
    adjoint: ImplicitAdjoint | None = None,
    divergence_ratio: float = 1e6,
    trace: bool = True,
    throw: bool = True,
) -> FixedPointSolution:
    """Solve z* = f(z*, args), differentiable in `args` by the implicit function theorem.

    With r(z) = max|f(z) - z|, stops when r(z) <= atol + rtol r(z0) (converged: a bound
    that no run-away iteration can meet, unlike one relative to |z|), when an iterate is
    NaN/inf (non-finite: the last finite iterate is returned), when r(z) exceeds
    `divergence_ratio` times the best seen or the iterates move further than
    `divergence_ratio` times r(z0) from z0 (diverged), or after `max_steps` iterations.
    The status is a `jode.RESULTS` member.

    Gradients (`jax.grad`, `jax.vjp`) with respect to `args` and to arrays closed over by
    `f` solve the adjoint system (I - ∂f/∂z)ᵀ u = g at z* (see `ImplicitAdjoint`), so memory
    does not grow with the iterations; the gradient with respect to z0 is zero. Forward
    mode (`jax.jvp`) is not supported. Works under `jax.jit` and `jax.vmap` (each batch
    element gets its own status and iteration count).

    Args:
        f: the map f(z, args) -> z (same pytree structure and shapes as z0).
        z0: the starting point, a pytree of floating arrays.
        args: anything f needs (parameters, inputs); differentiable.
        solver: `FixedPointIteration(damping)`, `Anderson(memory, mixing,
            regularization)` (default), `Broyden(memory)`, `Newton()` (Jacobian-free,
            GMRES) or `SteadyState(ode solver)` (integrates dz/dt = f(z) - z).
        rtol, atol: convergence tolerances on the residual.
        max_steps: iteration budget (ODE steps for `SteadyState`).
        adjoint: `ImplicitAdjoint(solver=..., ...)`: how the backward system is solved.
        divergence_ratio: residual growth over the best seen that counts as divergence.
        trace: record the residual at every iteration in `residuals`.
        throw: raise when not converged; with False, inspect `status` (needed under
            `vmap` to get per-element statuses without an error).

    Returns:
        A `FixedPointSolution` (value, status, steps, nfev, residual, residuals, and
        stiff / stiffness: whether an explicit `SteadyState` stopped short on a stiff flow,
        with its h·ρ estimate; then its message and the raised error name an implicit
        solver).

    Raises:
        ValueError: on bad input, before tracing: f returning another structure than z0,
            non-floating z0, bad tolerances, a solver class instead of an instance.

    Example:
        >>> sol = jode.fixed_point(lambda z, a: jnp.cos(z), jnp.asarray(-1.0), rtol=0, atol=1e-13)
        >>> sol.value  # 0.7390851332151607, the Dottie number
    """
    solver = Anderson() if solver is None else solver
    adjoint = ImplicitAdjoint() if adjoint is None else adjoint
    _check_solver(solver)
    if not isinstance(adjoint, ImplicitAdjoint):
        raise ValueError(
            f"adjoint must be jode.fixed_point.ImplicitAdjoint(...); got {adjoint!r}"
        )
    _check_z0(z0)
    _check_map(f, z0, args)
    _check_numbers(rtol, atol, max_steps, divergence_ratio)
    z_flat, unravel = ravel_pytree(z0)
    args = floats_to_arrays(args)
    # Arrays that f closes over become explicit inputs, so the custom VJP reaches them.
    closed = eqx.filter_closure_convert(f, z0, args)
    cfg = dict(
        rtol=rtol, atol=atol, max_steps=max_steps, divergence_ratio=divergence_ratio,
        trace=trace,
    )
    raw = solve_implicit((closed, args), z_flat, solver, adjoint, unravel, cfg)
    sol = FixedPointSolution(
        value=unravel(raw.z), status=raw.status, steps=raw.steps, nfev=raw.nfev,
        residual=raw.residual, residuals=raw.residuals, stiff=raw.stiff,
        stiffness=raw.stiffness,
    )
    if throw:
        status = jax.lax.stop_gradient(raw.status)
        index = error_index(status, raw.stiff, jax.lax.stop_gradient(raw.stiffness))
        sol = eqx.branched_error_if(sol, status != RESULTS.CONVERGED, index, status_messages())
    return sol


@cached(check=check_fixed_point, arrays=("y0", "args"), static=("t",))
def steady_state(
    vector_field,
    y0,
    args=None,
    *,
    t=0.0,
    solver: AbstractFixedPointSolver | None = None,
    **kwargs,
) -> FixedPointSolution:
    """Steady state y* of dy/dt = F(t, y, args) (F(t, y*, args) = 0), with implicit gradients.

    The steady state is the fixed point of φ(y) = y + F(t, y, args), so this is
    `fixed_point(φ, y0, args, ...)`: with `solver=SteadyState()` (the default) it integrates
    dy/dt = φ(y) - y = F(t, y, args) with `jode.solve` until |F| meets the tolerance;
    `Newton()` solves F = 0 directly. Gradients with respect to `args` solve
    (∂F/∂y)ᵀ u = -g: memory is independent of the integration length.

    Args:
        vector_field: F(t, y, args), autonomous in practice (evaluated at the fixed `t`).
        y0: starting state (a pytree of floating arrays).
        args: parameters of F; differentiable.
        t: the time passed to F.
        solver: a `jode.fixed_point` solver; default `SteadyState()`.
        **kwargs: as for `fixed_point` (rtol, atol, max_steps, adjoint, trace, throw).

    Returns:
        A `FixedPointSolution` whose `value` is y*.

    Example:
        >>> decay = lambda t, y, k: k * (1.0 - y)  # steady state y* = 1
        >>> jode.fixed_point.steady_state(decay, jnp.zeros(3), 2.0).value
    """
    from .ode_route import SteadyState

    solver = SteadyState() if solver is None else solver
    dtype_t = t

    def phi(y, a):
        return jax.tree.map(lambda yi, fi: yi + fi, y, vector_field(dtype_t, y, a))

    try:
        jax.eval_shape(vector_field, t, y0, args)
    except Exception as exc:
        raise ValueError(
            f"calling the vector field F(t, y0, args) failed with {type(exc).__name__}: "
            f"{exc}. steady_state calls F(t, y, args) (the jode.solve convention)"
        ) from exc
    return fixed_point(phi, y0, args, solver=solver, **kwargs)
