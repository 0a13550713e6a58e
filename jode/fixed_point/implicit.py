"""Implicit differentiation of a fixed point z* = f(z*, θ) (a custom VJP).

Differentiating z* = f(z*, θ) gives dz*/dθ = (I - ∂f/∂z)⁻¹ ∂f/∂θ, so for a cotangent g
the vector-Jacobian product is

    gᵀ dz*/dθ = uᵀ ∂f/∂θ   where   u = g + (∂f/∂z)ᵀ u,        (1)

the adjoint linear system (I - ∂f/∂z)ᵀ u = g written as a fixed point. Any fixed-point
solver solves (1) using only vector-Jacobian products of f at z*: plain iteration is the
Neumann series, Anderson accelerates it, Newton solves (I - ∂f/∂z)ᵀ u = g directly by one
GMRES solve (`lineax.linear_solve`), SteadyState
integrates du/dt = g + (∂f/∂z)ᵀ u - u. The backward pass keeps only z* and θ, so its memory
does not depend on the number of forward iterations.

References:
    Krantz & Parks (2002), "The Implicit Function Theorem", Thm 3.3.1; Bai, Kolter &
    Koltun (2019), "Deep Equilibrium Models", Theorem 1 and eq. (8); Blondel et al.
    (2022), "Efficient and Modular Implicit Differentiation", eq. (3).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jax.flatten_util import ravel_pytree

from .._results import RESULTS
from .result import max_norm
from .solvers import AbstractFixedPointSolver, Newton, gmres_solver


class ImplicitAdjoint(eqx.Module):
    """Gradients of a fixed point by the implicit function theorem (reverse mode).

    Args:
        solver: the solver of the adjoint system u = g + (∂f/∂z)ᵀ u; default: the forward
            solver. Any `jode.fixed_point` solver works (the system is linear).
        rtol: relative tolerance of the adjoint solve (default: the forward rtol).
        atol: absolute tolerance, relative to max|g| (default: the forward atol).
        max_steps: iteration budget of the adjoint solve (default: the forward one).
        throw: raise if the adjoint solve does not converge.
    """

    solver: AbstractFixedPointSolver | None = None
    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None
    throw: bool = False

    def __check_init__(self):
        if self.solver is not None and not isinstance(self.solver, AbstractFixedPointSolver):
            raise ValueError(
                "ImplicitAdjoint(solver=...) must be a fixed-point solver such as "
                f"jode.fixed_point.Anderson(); got {self.solver!r}"
            )


def floats_to_arrays(tree):
    """Python floats -> arrays, so that the closure-converted f always sees arrays there.

    (Under `jax.grad` the primal of a float argument can reach the custom VJP as a Python
    float subclass; converting on both sides keeps the call signature fixed.)
    """
    return jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, float | complex) else x, tree)


def _flat_call(params, z, unravel, dtype):
    f, args = floats_to_arrays(params)
    return ravel_pytree(f(unravel(z), args))[0].astype(dtype)


@eqx.filter_custom_vjp
def solve_implicit(params, z0, solver, adjoint, unravel, cfg):
    """Forward: solver.run on the flat map; `params` = (closure-converted f, args)."""
    return solver.run(lambda z: _flat_call(params, z, unravel, z0.dtype), z0, **cfg)


@solve_implicit.def_fwd
def _fwd(perturbed, params, z0, solver, adjoint, unravel, cfg):
    out = solve_implicit.fn(params, z0, solver, adjoint, unravel, cfg)
    return out, out.z


@solve_implicit.def_bwd
def _bwd(z_star, grad_obj, perturbed, params, z0, solver, adjoint, unravel, cfg):
    dtype = z0.dtype
    params = floats_to_arrays(params)
    leaves, treedef = jax.tree.flatten(perturbed)
    g = grad_obj.z
    if g is None:
        return jax.tree.unflatten(treedef, [None] * len(leaves))
    z_star = jax.lax.stop_gradient(z_star)
    _, vjp_z = jax.vjp(lambda z: _flat_call(params, z, unravel, dtype), z_star)
    solver_b = solver if adjoint.solver is None else adjoint.solver
    scale = max_norm(g)
    cfg_b = dict(
        rtol=cfg["rtol"] if adjoint.rtol is None else adjoint.rtol,
        atol=(cfg["atol"] if adjoint.atol is None else adjoint.atol) * scale,
        max_steps=cfg["max_steps"] if adjoint.max_steps is None else adjoint.max_steps,
        divergence_ratio=cfg["divergence_ratio"],
        trace=False,
    )
    if isinstance(solver_b, Newton):
        # The adjoint system is linear: one Krylov solve, no Newton iterations around it.
        operator = lx.FunctionLinearOperator(
            lambda u: u - vjp_z(u)[0], jax.ShapeDtypeStruct(g.shape, g.dtype)
        )
        linear = lx.linear_solve(operator, g, gmres_solver(solver_b, g.size), throw=False)
        u = linear.value
        failed = linear.result != lx.RESULTS.successful
    else:
        res = solver_b.run(lambda u: g + vjp_z(u)[0], g, **cfg_b)
        u = res.z
        failed = res.status != RESULTS.CONVERGED
    if adjoint.throw:
        u = eqx.error_if(
            u, failed,
            "the adjoint solve of jode.fixed_point's implicit gradient did not converge; "
            "raise ImplicitAdjoint(max_steps=...) or use ImplicitAdjoint(solver=Newton())",
        )
    _, vjp_p = eqx.filter_vjp(lambda p: _flat_call(p, z_star, unravel, dtype), params)
    (grads,) = vjp_p(u)
    grad_leaves = jax.tree.leaves(grads, is_leaf=lambda x: x is None)
    out = [gl if p else None for p, gl in zip(leaves, grad_leaves, strict=True)]
    return jax.tree.unflatten(treedef, out)
