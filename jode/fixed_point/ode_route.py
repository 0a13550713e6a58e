"""The ODE route to a fixed point: integrate dz/dt = f(z) - z until it stops moving.

Fixed points of f are the equilibria of dz/dt = f(z) - z; when the eigenvalues of ∂f/∂z
lie inside the unit disc they are stable, and the flow reaches them from any nearby start.
`jode.solve` integrates with a terminating condition (`stop=`) that ends the solve as soon
as the residual meets the fixed-point tolerance, so no horizon has to be guessed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._results import RESULTS
from ..ode.adjoint import ForwardMode
from ..ode.explicit import Tsit5
from ..ode.solve import SaveAt, solve
from .loop import RawResult
from .result import max_norm, ran_away, within_tolerance
from .solvers import AbstractFixedPointSolver


class SteadyState(AbstractFixedPointSolver):
    """Find z = f(z) as the steady state of dz/dt = f(z) - z, integrated by `jode.solve`.

    The solve stops after the first accepted step where max|f(z) - z| <= atol + rtol
    max|f(z_0) - z_0| (the fixed-point tolerance), or when the residual exceeds
    `divergence_ratio` times its initial value or the state has moved further than
    `divergence_ratio` initial residuals (a run-away flow: DIVERGED). A failed ODE solve
    reports its own status (e.g. DT_UNDERFLOW, NEWTON_FAILED). `steps` counts accepted ODE
    steps; with `trace=True` the residual is evaluated at every accepted step after the
    solve (one more f evaluation per step).

    When an explicit solver stops short (MAX_STEPS or DT_UNDERFLOW), the run is checked
    for stiffness (`detect_stiffness`: the mean step h times the spectral radius ρ of
    ∂f/∂z - I at the last iterate, by 8 JVPs of power iteration, at the method's stability
    limit while the residual has barely decayed). The status stays; the result's `stiff`
    and `stiffness` (h·ρ) say so, and its message and the `throw=True` error name the fix,
    an implicit ODE solver (`SteadyState(jode.Kvaerno5())`) or `Newton()`.

    Args:
        solver: the ODE solver (an adaptive `jode` solver; default `jode.Tsit5()`).
        ode_rtol, ode_atol: tolerances of the ODE step-size controller; default: a tenth
            of the fixed-point threshold atol + rtol max|f(z_0) - z_0| (absolute), and that
            divided by max(|z_0|, |f(z_0)|) (relative). Near the steady state an explicit
            solver runs at its stability limit, where the local error it admits (about
            ode_rtol |z| + ode_atol) stays in the state; ODE tolerances equal to or looser
            than the fixed-point threshold stall above it (the residual hovers at the
            threshold until max_steps).
        t1: a safety horizon; the terminating condition normally ends the solve first.

    References:
        Bai, Kolter & Koltun (2019), "Deep Equilibrium Models", §3.1; Rackauckas et al.,
        "DiffEqFlux" deep equilibrium blog (2020); Kidger (2021), "On Neural Differential
        Equations", §6.3.2 (steady states).
    """

    solver: object = Tsit5()
    ode_rtol: float | None = None
    ode_atol: float | None = None
    t1: float = 1e8

    def run(self, fn, z0, *, rtol, atol, max_steps, divergence_ratio, trace) -> RawResult:
        dtype = z0.dtype
        rtol = jnp.asarray(rtol, dtype)
        atol = jnp.asarray(atol, dtype)
        fz0 = fn(z0)
        r0 = max_norm(fz0 - z0)

        def field(t, z, args):
            return fn(z) - z

        def diverged(z, fz):
            return (max_norm(fz - z) > divergence_ratio * r0) | ran_away(
                z, z0, r0, divergence_ratio, atol
            )

        def stop(t, z, args):
            fz = fn(z)
            return within_tolerance(max_norm(fz - z), r0, rtol, atol, fz) | diverged(z, fz)

        # The ODE solver leaves an error of about its tolerance in the state; a tenth of the
        # fixed-point threshold (absolute, and relative to the starting scale) keeps that
        # below the stopping test wherever |z| stays near that scale.
        threshold = atol + rtol * r0 + 4 * jnp.finfo(dtype).eps * max_norm(fz0)
        scale = jnp.maximum(max_norm(z0), max_norm(fz0))
        rel = threshold / jnp.where(scale > 0, scale, 1)
        ode_rtol = 0.1 * rel if self.ode_rtol is None else self.ode_rtol
        ode_atol = 0.1 * threshold if self.ode_atol is None else self.ode_atol
        sol = solve(
            field, z0, 0.0, self.t1, None, solver=self.solver, rtol=ode_rtol,
            atol=ode_atol, stop=stop, max_steps=max_steps, throw=False,
            saveat=SaveAt(steps=True) if trace else None, adjoint=ForwardMode(),
        )
        accepted = sol.stats["accepted"]
        if trace:
            zs = sol.ys
            z = zs[accepted]
            reached = jnp.arange(zs.shape[0], dtype=jnp.int32) <= accepted
            safe = jnp.where(reached[:, None], zs, z0)
            residuals = jax.vmap(lambda y: max_norm(fn(y) - y))(safe)
            residuals = jnp.where(reached, residuals, jnp.nan)
        else:
            z = sol.ys[0]
            residuals = None
        already = within_tolerance(r0, r0, rtol, atol, fz0)
        z = jnp.where(already, z0, z)
        fz = fn(z)
        residual = max_norm(fz - z)
        finite = jnp.all(jnp.isfinite(fz))
        # The solve's own failures pass through unchanged (one vocabulary: RESULTS).
        solve_failed = (sol.status != RESULTS.SUCCESS) & (sol.status != RESULTS.EVENT)
        status = jnp.where(
            within_tolerance(residual, r0, rtol, atol, fz),
            RESULTS.CONVERGED,
            jnp.where(
                ~finite,
                RESULTS.NONFINITE,
                jnp.where(
                    diverged(z, fz),
                    RESULTS.DIVERGED,
                    jnp.where(solve_failed, sol.status, RESULTS.MAX_STEPS),
                ),
            ),
        ).astype(jnp.int32)
        steps = jnp.where(already, 0, accepted).astype(jnp.int32)
        nfev = (sol.stats["nfev"] + accepted + 2).astype(jnp.int32)
        stiff, stiffness = jnp.zeros((), bool), jnp.full((), jnp.nan, dtype)
        if getattr(self.solver, "implicit", True) is False:
            short = (status == RESULTS.MAX_STEPS) | (status == RESULTS.DT_UNDERFLOW)
            stiff, stiffness = detect_stiffness(
                lambda y: fn(y) - y, z, short, sol.stats["t_last"], accepted, r0, residual
            )
        return RawResult(
            z=z, status=status, steps=steps, nfev=nfev, residual=residual,
            residuals=residuals, stiff=stiff, stiffness=stiffness,
        )


def spectral_radius(field, z, iterations: int = 8) -> jax.Array:
    """Estimate the spectral radius of ∂field/∂z at z by power iteration (JVPs only).

    `iterations` Jacobian-vector products from a fixed pseudo-random start; the estimate
    is ‖J v‖ for the last unit vector v, which converges to the largest |λ| at the rate
    |λ_2 / λ_1| per product (for a complex pair, to their common modulus when J is normal).
    """
    _, jvp = jax.linearize(field, z)
    v = jax.random.normal(jax.random.PRNGKey(0), z.shape, z.dtype)

    def body(_, carry):
        v, _ = carry
        v = v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(z.dtype).tiny)
        jv = jvp(v)
        return jv, jnp.linalg.norm(jv)

    return jax.lax.fori_loop(0, iterations, body, (v, jnp.zeros((), z.dtype)))[1]


#: h·ρ from which an explicit solver's step counts as stability-limited. Runge-Kutta
#: methods of order 4-5 are stable on the negative real axis up to h|λ| = 2.8-3.5 (Tsit5
#: 3.51, Dopri5 3.31; a stiff run averages 3.1-3.5), while accuracy alone keeps h·ρ far
#: below 1 (0.003-0.2 measured on non-stiff flows, a lightly damped oscillation included).
STIFF_H_RHO = 1.0
#: The residual decayed at less than this fraction of the rate ρ: the slow modes are far
#: from done (a flow whose only time scale is 1/ρ decays at the rate ρ: fraction 1).
SLOW_DECAY = 0.25


def detect_stiffness(field, z, short, t_last, steps, r0, residual):
    """Whether an explicit solve of dz/dt = field(z) stopped short because it is stiff.

    Stiff when both: (1) h·ρ >= `STIFF_H_RHO`, with h the mean accepted step
    (t_last / steps) and ρ the spectral radius of ∂field/∂z at the last iterate (power
    iteration, `spectral_radius`): the step sits at the explicit method's stability limit,
    not at what accuracy asks for; and (2) ln(r_0 / r) <= `SLOW_DECAY` ρ t_last: the
    residual decayed far slower than the fastest mode allows, so slow modes remain, which
    the stability-limited step crawls through (steps ~ ρ / |λ_slow|). This is the test of
    Hairer & Wanner for explicit Runge-Kutta codes (h·ρ against the stability boundary,
    ρ estimated from the solution; DOPRI5 uses the last stages), with ρ from a nonlinear
    power method as in RKC (Sommeijer, Shampine & Verwer 1998).

    The power iteration (`spectral_radius`: one linearisation and 8 JVPs) runs inside
    `lax.cond` only when `short` (the solve stopped at MAX_STEPS or DT_UNDERFLOW); under
    `vmap` the cond becomes a select and every lane pays it, still a handful of JVPs.

    Returns:
        (stiff, h·ρ): a bool array and the estimate (NaN where not `short`).

    References:
        Hairer & Wanner (1996), *Solving Ordinary Differential Equations II*, 2nd ed.,
        §IV.2 ("Automatic stiffness detection"); Shampine (1977), ACM TOMS 3(1), 44-53;
        Sommeijer, Shampine & Verwer (1998), J. Comput. Appl. Math. 88, 315-326.
    """
    dtype = z.dtype
    h = t_last.astype(dtype) / jnp.maximum(steps, 1).astype(dtype)

    def estimate():
        return h * spectral_radius(field, z)

    h_rho = jax.lax.cond(short, estimate, lambda: jnp.full((), jnp.nan, dtype))
    tiny = jnp.finfo(dtype).tiny
    decay = jnp.log(jnp.maximum(r0, tiny) / jnp.maximum(residual, tiny))
    slow = decay <= SLOW_DECAY * h_rho * steps.astype(dtype)  # ρ t_last = h ρ steps
    stiff = short & (h_rho >= STIFF_H_RHO) & slow
    return stiff, h_rho
