"""What a fixed-point solve returns: the fixed point, a status, iterations, residual trace."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp

from .._results import RESULTS
from .._results import status_messages as _status_messages

#: The fixed-point statuses are the shared `jode.RESULTS` (CONVERGED, MAX_STEPS, DIVERGED,
#: NONFINITE, and the solve's own when `SteadyState` integrates); the name is kept for code
#: written against it.
FixedPointStatus = RESULTS

#: The loop is still iterating (never returned to users).
RUNNING = RESULTS.RUNNING

_HINTS = {
    RESULTS.MAX_STEPS: "max_steps was reached before the residual met the tolerance; the "
    "map may be barely contractive: raise max_steps, or use an accelerated solver "
    "(jode.fixed_point.Anderson(), Broyden(), Newton())",
    # No damping here: damping keeps an expansive map expansive (z = 2z + 1 stays so for
    # every damping), so it is no fix for a run-away iteration.
    RESULTS.DIVERGED: "the iteration ran away (the residual |f(z) - z| grew by more than "
    "divergence_ratio over the best seen, or the iterates moved further than "
    "divergence_ratio times the first residual): the map may have no fixed point near z0, "
    "or a repelling one (|∂f/∂z| > 1 there), which plain and accelerated iterations cannot "
    "reach; start closer, or use Newton(), which needs no contraction",
    RESULTS.NONFINITE: "f(z) or the solver's next iterate was NaN or inf (for Newton(): "
    "also a singular I - ∂f/∂z, as for a map without a fixed point); the last finite "
    "iterate is returned. Check f and its parameters",
}


def stiff_hint(status, h_rho: str) -> str:
    """Why an explicit `SteadyState` stopped short on a stiff flow, and the fix.

    `h_rho` is the estimate as text with its relation, e.g. "≈ 3.5" or "≥ 10".
    """
    stop = (
        "the step size underflowed" if status == RESULTS.DT_UNDERFLOW
        else "max_steps ran out; more steps would only crawl on"
    )
    return (
        "the steady-state flow is stiff: the explicit ODE solver's mean step h times the "
        f"spectral radius ρ of the Jacobian at the last iterate is h·ρ {h_rho}, near the "
        "method's stability limit, while the slow modes have barely decayed, so "
        f"{stop}. Use an implicit solver: solver=jode.SteadyState(jode.Kvaerno5()), "
        "or jode.Newton()"
    )


def _format_h_rho(h_rho: float) -> str:
    return f"≈ {h_rho:.1f}" if h_rho < 10 else f"≈ {h_rho:.3g}"


#: The h·ρ a raised error can name: 1.0, 1.1, ..., 9.9 and "≥ 10" (the messages of
#: `eqx.branched_error_if` are fixed strings, so the estimate is rounded to a bucket).
_BUCKETS = [f"≈ {k / 10:.1f}" for k in range(10, 100)] + ["≥ 10"]
_STIFF_STATUSES = (RESULTS.MAX_STEPS, RESULTS.DT_UNDERFLOW)


@functools.cache
def status_messages() -> tuple[str, ...]:
    """Messages for `eqx.branched_error_if`, indexed by `error_index`.

    The first `len(RESULTS)` are indexed by `RESULTS` value; after them come the stiff
    messages, per stopping status and h·ρ bucket.
    """
    messages = _status_messages("jode.fixed_point", _HINTS)
    for status in _STIFF_STATUSES:
        messages += [
            f"jode.fixed_point failed: {stiff_hint(status, b)}. Pass throw=False to get the "
            "result (its `stiffness` holds h·ρ)"
            for b in _BUCKETS
        ]
    return tuple(messages)


def error_index(status, stiff, stiffness) -> jax.Array:
    """The index into `status_messages()`: the status, or its stiff message when stiff."""
    bucket = jnp.clip(jnp.round(jnp.nan_to_num(stiffness) * 10), 10, 100).astype(jnp.int32)
    offset = len(RESULTS) + jnp.where(status == RESULTS.DT_UNDERFLOW, len(_BUCKETS), 0)
    return jnp.where(stiff, offset + bucket - 10, status).astype(jnp.int32)


class FixedPointSolution(eqx.Module):
    """A fixed-point solve's result (a pytree: it passes through jit, vmap and grad).

    Attributes:
        value: the fixed point z* (the structure of z0). Differentiable: gradients come
            from the implicit function theorem, not from the iterations.
        status: int array, a `jode.RESULTS` value: CONVERGED, MAX_STEPS, DIVERGED,
            NONFINITE (or, for `SteadyState`, the ODE solve's own failure, e.g.
            DT_UNDERFLOW).
        steps: iterations taken (for `SteadyState`: accepted ODE steps).
        nfev: evaluations of f (Jacobian-vector products inside Newton's GMRES are not
            counted).
        residual: the final residual max|f(z*) - z*|.
        residuals: the residual max|f(z_k) - z_k| for k = 0 .. max_steps (NaN beyond
            `steps`: never reached), or None with `trace=False`.
        stiff: bool array: an explicit `SteadyState` stopped short (MAX_STEPS or
            DT_UNDERFLOW; the status stays) because the flow is stiff, so that an
            implicit ODE solver is the fix (`ode_route.detect_stiffness`); False for every
            other outcome and solver.
        stiffness: the estimate h·ρ behind `stiff` (mean accepted step times the spectral
            radius of the flow's Jacobian at `value`), computed only where an explicit
            `SteadyState` stopped short; NaN elsewhere.
    """

    value: object
    status: jax.Array
    steps: jax.Array
    nfev: jax.Array
    residual: jax.Array
    residuals: jax.Array | None = None
    stiff: jax.Array | None = None
    stiffness: jax.Array | None = None

    @property
    def converged(self) -> jax.Array:
        return self.status == RESULTS.CONVERGED

    @property
    def message(self) -> str:
        """The status message (for an unbatched, concrete result); a stiff stop says so."""
        status = RESULTS(int(self.status))
        if self.stiff is not None and bool(self.stiff):
            return stiff_hint(status, _format_h_rho(float(self.stiffness)))
        return status.message


def max_norm(x: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), x.dtype)


def within_tolerance(residual, first_residual, rtol, atol, fz) -> jax.Array:
    """max|f(z) - z| <= atol + rtol max|f(z_0) - z_0| + 4 eps max|f(z)|.

    The residual reduced from the start (Kelley 1995, *Iterative Methods for Linear and
    Nonlinear Equations*, eq. (5.1): ‖F(z)‖ <= τ_r ‖F(z_0)‖ + τ_a), down to the rounding of
    f(z) (4 ulps), below which no iteration can resolve it. Apart from that floor the bound
    is independent of |z|, so an iteration that runs away with a constant residual
    (z = z + 1) cannot meet it before the run-away check (`ran_away`) stops it; a test
    relative to |f(z)| is met once |z| > 1/rtol.
    """
    floor = 4 * jnp.finfo(fz.dtype).eps * max_norm(fz)
    return residual <= atol + rtol * first_residual + floor


def ran_away(z, z0, first_residual, divergence_ratio, atol) -> jax.Array:
    """max|z - z_0| > divergence_ratio * max(max|f(z_0) - z_0|, atol).

    For a contraction with constant q < 1, |z* - z_0| <= |f(z_0) - z_0| / (1 - q) (Banach's
    a-priori estimate), so iterates that move further than `divergence_ratio` first
    residuals belong to a map that is not contractive on their path (q > 1 - 1/ratio).
    """
    return max_norm(z - z0) > divergence_ratio * jnp.maximum(first_residual, atol)
