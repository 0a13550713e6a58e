"""What a fixed-point solve returns: the fixed point, a status, iterations, residual trace."""

from __future__ import annotations

import enum

import equinox as eqx
import jax
import jax.numpy as jnp


class FixedPointStatus(enum.IntEnum):
    """Why a fixed-point solve stopped; `FixedPointStatus(int(s)).message` suggests a fix."""

    CONVERGED = 0
    MAX_STEPS = 1
    DIVERGED = 2
    NONFINITE = 3

    @property
    def message(self) -> str:
        return _MESSAGES[self]


# Internal: the loop is still iterating (never returned to users).
RUNNING = -1

_MESSAGES = {
    FixedPointStatus.CONVERGED: "the residual |f(z) - z| met the tolerance",
    FixedPointStatus.MAX_STEPS: "max_steps was reached before the residual met the "
    "tolerance; the map may be barely contractive: raise max_steps, or use an accelerated "
    "solver (jode.fixed_point.Anderson(), Broyden(), Newton())",
    FixedPointStatus.DIVERGED: "the residual |f(z) - z| grew by more than divergence_ratio "
    "over the best seen: the map is not contractive near the iterates; damp the iteration "
    "(FixedPointIteration(damping=0.5)), start closer, or use Newton()",
    FixedPointStatus.NONFINITE: "f(z) returned NaN or inf; the last finite iterate is "
    "returned. Check f and its parameters, or damp the iteration",
}


def status_messages() -> list[str]:
    """Messages for `eqx.branched_error_if`, indexed by status value."""
    return [
        f"jode.fixed_point failed: {s.message}. Pass throw=False to inspect the result."
        for s in FixedPointStatus
    ]


class FixedPointSolution(eqx.Module):
    """A fixed-point solve's result (a pytree: it passes through jit, vmap and grad).

    Attributes:
        value: the fixed point z* (the structure of z0). Differentiable: gradients come
            from the implicit function theorem, not from the iterations.
        status: int array, a `FixedPointStatus` value; 0 is converged.
        steps: iterations taken (for `SteadyState`: accepted ODE steps).
        nfev: evaluations of f (Jacobian-vector products inside Newton's GMRES are not
            counted).
        residual: the final residual max|f(z*) - z*|.
        residuals: the residual max|f(z_k) - z_k| for k = 0 .. max_steps (NaN beyond
            `steps`: never reached), or None with `trace=False`.
    """

    value: object
    status: jax.Array
    steps: jax.Array
    nfev: jax.Array
    residual: jax.Array
    residuals: jax.Array | None = None

    @property
    def converged(self) -> jax.Array:
        return self.status == FixedPointStatus.CONVERGED

    @property
    def message(self) -> str:
        """The status message (for an unbatched, concrete result)."""
        return FixedPointStatus(int(self.status)).message


def max_norm(x: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), x.dtype)


def within_tolerance(z: jax.Array, fz: jax.Array, rtol, atol) -> jax.Array:
    """|f(z) - z| <= atol + rtol |f(z)| componentwise (optimistix's criterion)."""
    return jnp.all(jnp.abs(fz - z) <= atol + rtol * jnp.abs(fz))
