"""Deep equilibrium layers: the output is the fixed point z* = f_θ(z*, x) of one cell.

A DEQ replaces a stack of identical weight-tied layers z_{k+1} = f_θ(z_k, x) by their
limit, found by any `jode.fixed_point` solver; gradients come from the implicit function
theorem (`ImplicitAdjoint`), so training memory does not grow with the iterations.

References:
    Bai, Kolter & Koltun (2019), "Deep Equilibrium Models", NeurIPS, eq. (2) and Thm 1;
    Bai, Koltun & Kolter (2021), "Stabilizing Equilibrium Models by Jacobian
    Regularization", ICML, eq. (6); Miyato et al. (2018), "Spectral Normalization".
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from ..fixed_point import Anderson, ImplicitAdjoint, fixed_point
from ..fixed_point.solvers import AbstractFixedPointSolver


def top_singular_value(v: jax.Array, squarings: int = 7) -> jax.Array:
    """σ_max(V) = ‖V x‖ with x the top eigenvector of VᵀV, found by repeated squaring.

    (VᵀV)^(2^k) x₀ (normalised after each squaring) is power iteration with 2^k steps in
    k matrix products; x is held constant for differentiation (as in spectral
    normalization, Miyato et al. 2018), so dσ/dV = u xᵀ exactly at convergence. Much
    faster than an SVD on CPU; the estimate approaches σ_max from below at the rate
    (σ₂/σ₁)^(2^(k+1)).
    """
    gram = jax.lax.stop_gradient(v.T @ v)
    for _ in range(squarings):
        gram = gram @ gram
        gram = gram / jnp.max(jnp.abs(gram))
    start = jnp.cos(jnp.arange(v.shape[1], dtype=v.dtype))  # fixed, generic start vector
    x = gram @ (gram @ start)
    x = jax.lax.stop_gradient(x / jnp.linalg.norm(x))
    return jnp.linalg.norm(v @ x)


class TanhCell(eqx.Module):
    """The contraction-friendly cell f(z, x) = tanh(W z + U x + b) with ‖W‖₂ ≤ bound.

    tanh is 1-Lipschitz, so ‖∂f/∂z‖₂ ≤ ‖W‖₂ ≤ bound < 1 makes f a contraction in z for
    every x and θ: the fixed point exists, is unique (Banach), and plain iteration
    converges at rate `bound`. W is the raw weight V rescaled by min(1, bound/σ_max(V))
    (a spectral bound in the manner of Miyato et al. 2018; σ_max by 128-step power
    iteration done as 7 matrix squarings, see `top_singular_value`).

    Args:
        width: size of z.
        in_size: size of x.
        key: PRNG key.
        bound: the spectral bound on W (use < 1 for a guaranteed contraction).
        dtype: parameter dtype (default: JAX's default float).
    """

    weight: jax.Array
    inject: jax.Array
    bias: jax.Array
    bound: float = eqx.field(static=True, default=0.9)

    def __init__(self, width: int, in_size: int, *, key, bound: float = 0.9, dtype=None):
        if not bound > 0:
            raise ValueError(f"bound must be > 0; got bound={bound}")
        dtype = jnp.zeros(()).dtype if dtype is None else dtype
        kw, ku = jr.split(key)
        self.weight = jr.normal(kw, (width, width), dtype) / jnp.sqrt(width)
        self.inject = jr.normal(ku, (width, in_size), dtype) / jnp.sqrt(in_size)
        self.bias = jnp.zeros((width,), dtype)
        self.bound = bound

    def spectral_weight(self) -> jax.Array:
        """W = V min(1, bound / σ_max(V)); σ_max = ‖V v‖ at V's top right singular vector v."""
        sigma = top_singular_value(self.weight)
        return self.weight * jnp.minimum(1.0, self.bound / sigma).astype(self.weight.dtype)

    def context(self, x):
        """Everything that does not depend on z, computed once per solve: (W, U x + b)."""
        in_size = self.inject.shape[1]
        if jnp.shape(x) != (in_size,):
            raise ValueError(
                f"TanhCell(in_size={in_size}) takes one input x of shape ({in_size},); got "
                f"shape {jnp.shape(x)}. Map a batch with jax.vmap"
            )
        return self.spectral_weight(), self.inject @ x + self.bias

    @staticmethod
    def step(z, context):
        weight, injected = context
        return jnp.tanh(weight @ z + injected)

    def __call__(self, z, x):
        return self.step(z, self.context(x))


class DEQStats(NamedTuple):
    """Diagnostics of one equilibrium solve (arrays; batched under vmap)."""

    steps: jax.Array
    residual: jax.Array
    status: jax.Array


class DEQ(eqx.Module):
    """A deep equilibrium layer: x -> z* with z* = cell(z*, x).

    The cell supplies `context(x)` (what does not depend on z) and `step(z, context)`;
    `TanhCell` is the default kind. Forward solver and backward (adjoint) solver are
    chosen independently. Acts on one example (vmap over a batch); each example gets its
    own iteration count and status.

    Args:
        cell: e.g. `TanhCell(width, in_size, key=key)`.
        solver: forward fixed-point solver (default `Anderson()`).
        adjoint: `ImplicitAdjoint(solver=...)` for the backward solve.
        rtol, atol: fixed-point tolerances of both solves.
        max_steps: forward iteration budget (also the backward one unless the adjoint
            says otherwise).

    Returns (from `__call__`):
        (z*, DEQStats(steps, residual, status)).
    """

    cell: TanhCell
    solver: AbstractFixedPointSolver = Anderson()
    adjoint: ImplicitAdjoint = ImplicitAdjoint()
    rtol: float = eqx.field(static=True, default=1e-4)
    atol: float = eqx.field(static=True, default=1e-4)
    max_steps: int = eqx.field(static=True, default=50)

    def __call__(self, x, z0=None):
        context = self.cell.context(x)
        if z0 is None:
            z0 = jnp.zeros_like(context[1])
        elif jnp.shape(z0) != context[1].shape:
            raise ValueError(
                f"z0 must have the equilibrium's shape {context[1].shape} (the cell's width); "
                f"got shape {jnp.shape(z0)}"
            )
        sol = fixed_point(
            self.cell.step, z0, context, solver=self.solver, rtol=self.rtol, atol=self.atol,
            max_steps=self.max_steps, adjoint=self.adjoint, trace=False, throw=False,
        )
        stats = DEQStats(sol.steps, jax.lax.stop_gradient(sol.residual), sol.status)
        return sol.value, stats

    def jacobian_penalty(self, z, x, key) -> jax.Array:
        """Hutchinson estimate of ‖∂f/∂z‖_F² / width at z (Bai et al. 2021, eq. (6)).

        E_ε ‖εᵀ ∂f/∂z‖² = ‖∂f/∂z‖_F² for ε ~ N(0, I); one vector-Jacobian product.
        Adding γ · penalty to the loss keeps the equilibrium well conditioned.
        """
        context = self.cell.context(x)
        _, vjp = jax.vjp(lambda z: self.cell.step(z, context), z)
        eps = jr.normal(key, z.shape, z.dtype)
        (row,) = vjp(eps)
        return jnp.sum(row**2) / z.size


class DEQClassifier(eqx.Module):
    """flatten -> dense -> DEQ layer -> dense logits (Bai et al. 2019's shape, small).

    Args:
        in_size: input features (64 for the 8x8 digits).
        width: the equilibrium state's size.
        n_classes: output logits.
        key: PRNG key.
        **deq_kwargs: passed to `DEQ` (solver, adjoint, rtol, atol, max_steps).
    """

    embed: eqx.nn.Linear
    deq: DEQ
    head: eqx.nn.Linear

    def __init__(self, in_size: int, width: int, n_classes: int, *, key, dtype=None,
                 bound: float = 0.9, **deq_kwargs):
        k1, k2, k3 = jr.split(key, 3)
        self.embed = eqx.nn.Linear(in_size, width, key=k1, dtype=dtype)
        self.deq = DEQ(TanhCell(width, width, key=k2, bound=bound, dtype=dtype), **deq_kwargs)
        self.head = eqx.nn.Linear(width, n_classes, key=k3, dtype=dtype)

    def __call__(self, x):
        """Logits and the DEQ diagnostics for one example x (flattened)."""
        if jnp.size(x) != self.embed.in_features:
            raise ValueError(
                f"DEQClassifier(in_size={self.embed.in_features}) takes one example of "
                f"{self.embed.in_features} features; got x of shape {jnp.shape(x)} "
                f"({jnp.size(x)} values). Map a batch with jax.vmap"
            )
        z, stats = self.deq(jax.nn.relu(self.embed(jnp.ravel(x))))
        return self.head(z), stats
