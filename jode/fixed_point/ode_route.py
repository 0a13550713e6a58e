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
        return RawResult(
            z=z, status=status, steps=steps, nfev=nfev, residual=residual, residuals=residuals
        )
