"""Classical baselines for the comparison tables: Euler and RK4 (through `jode.solve`, fixed
steps) for the initial value problems, and the second-order five-point finite-difference
solve of the Dirichlet Poisson problem.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from jode.ode.explicit import RK4, Euler
from jode.ode.solve import solve
from jode.trial.conditions import DIRICHLET, Boundary, _edge_value


def ivp_solve(paper_problem, solver, n: int):
    """ψ on n equidistant points of the domain (ends included) with n − 1 constant steps.

    Returns (xs, psi): psi has shape (n,) or (n, m) for systems.
    """
    pp = paper_problem
    if pp.vector_field is None:
        raise ValueError(f"{pp.name} is not an initial value problem; no ODE baseline")
    if n < 2:
        raise ValueError(f"n must be >= 2; got n={n}")
    a, b = pp.problem.lower[0], pp.problem.upper[0]
    dtype = jnp.zeros(()).dtype
    xs = jnp.linspace(a, b, n, dtype=dtype)
    y0 = jnp.asarray(pp.y0 if len(pp.y0) > 1 else pp.y0[0], dtype)
    sol = solve(pp.vector_field, y0, a, b, solver=solver, n_steps=n - 1, saveat=xs)
    ys = sol.ys
    if pp.state_component is not None:
        ys = ys[:, pp.state_component]
    return xs, ys


def euler_rk4_errors(paper_problem, n: int) -> dict:
    """Max |ψ − ψ_exact| on the n grid points for Euler and RK4 with n − 1 steps."""
    out = {}
    for name, solver in (("euler", Euler()), ("rk4", RK4())):
        xs, ys = ivp_solve(paper_problem, solver, n)
        out[name] = float(jnp.max(jnp.abs(ys - paper_problem.exact(xs))))
    return out


def poisson_fd(source, boundary: Boundary, lower, upper, n: int):
    """Second-order finite differences for ∇²ψ = source(x) with Dirichlet data on all edges.

    The five-point stencil on an n x n grid (ends included), solved exactly by diagonalizing
    the 1-D second-difference matrix (its eigenvectors are discrete sines), so the cost is a
    few small matrix products. Truncation error O(h²) (e.g. LeVeque, "Finite Difference
    Methods for Ordinary and Partial Differential Equations", 2007, §3.2).

    Args:
        source: f(x) with x of shape (2,).
        boundary: a `jode.trial.Boundary` whose four edges are Dirichlet.
        lower, upper: (a, c) and (b, d).
        n: grid points per coordinate (>= 3).

    Returns:
        (xs, psi): points (n, n, 2) (indexing "ij") and the solution (n, n).
    """
    if n < 3:
        raise ValueError(f"n must be >= 3; got n={n}")
    edges = (boundary.left, boundary.right, boundary.bottom, boundary.top)
    if boundary.dim != 2 or any(e is None or e.kind != DIRICHLET for e in edges):
        raise ValueError("poisson_fd needs Dirichlet data on the four edges of a rectangle")
    return _poisson_fd(source, boundary, tuple(map(float, lower)), tuple(map(float, upper)),
                       int(n))


@eqx.filter_jit
def _poisson_fd(source, boundary, lower, upper, n):
    dtype = jnp.zeros(()).dtype
    (a, c), (b, d) = lower, upper
    gx = jnp.linspace(a, b, n, dtype=dtype)
    gy = jnp.linspace(c, d, n, dtype=dtype)
    hx, hy = (b - a) / (n - 1), (d - c) / (n - 1)
    xx, yy = jnp.meshgrid(gx, gy, indexing="ij")
    xs = jnp.stack([xx, yy], axis=-1)
    u = jnp.zeros((n, n), dtype)
    edge = jax.vmap(lambda cond, s: _edge_value(cond, s), in_axes=(None, 0))
    u = u.at[0, :].set(edge(boundary.left, gy)).at[-1, :].set(edge(boundary.right, gy))
    u = u.at[:, 0].set(edge(boundary.bottom, gx)).at[:, -1].set(edge(boundary.top, gx))
    f = jax.vmap(jax.vmap(source))(xs)[1:-1, 1:-1]
    # Move the known boundary values to the right-hand side.
    rhs = f
    rhs = rhs.at[0, :].add(-u[0, 1:-1] / hx**2).at[-1, :].add(-u[-1, 1:-1] / hx**2)
    rhs = rhs.at[:, 0].add(-u[1:-1, 0] / hy**2).at[:, -1].add(-u[1:-1, -1] / hy**2)
    m = n - 2
    k = jnp.arange(1, m + 1, dtype=dtype)
    q = jnp.sqrt(2.0 / (m + 1)) * jnp.sin(jnp.pi * jnp.outer(k, k) / (m + 1))  # orthonormal
    lam = -4 * jnp.sin(jnp.pi * k / (2 * (m + 1))) ** 2
    denom = lam[:, None] / hx**2 + lam[None, :] / hy**2
    interior = q @ ((q @ rhs @ q) / denom) @ q
    return xs, u.at[1:-1, 1:-1].set(interior)
