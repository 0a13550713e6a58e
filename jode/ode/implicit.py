"""Stiff steps: ESDIRK with simplified Newton, and Rosenbrock methods.

ESDIRK (Hairer & Wanner 1996, *Solving ODEs II*, §IV.6): an explicit first stage k_0 =
f(t, y) (carried in), then for i = 1..s-1

    k_i = f(t + c_i h, z_i + hγ k_i),     z_i = y + h Σ_{j<i} a_ij k_j,

solved by simplified Newton with one LU factorization of I - hγJ per step (`newton.py`),
and y_1 = y + h Σ b_i k_i, e = h Σ b_err_i k_i. The methods here are stiffly accurate, so
y_1 is the last stage and f(t + h, y_1) = k_{s-1} comes free for the next step.

Rosenbrock (HW 1996, eq. IV.7.25): no iterations, one LU of I/(hγ) - J per step and s
linear solves,

    (I/(hγ) - J) u_i = f(t + α_i h, y + Σ_{j<i} A_ij u_j) + Σ_{j<i} (C_ij / h) u_j + γ_i h ∂f/∂t,

y_1 = y + Σ m_j u_j. J must be the exact Jacobian at (t, y).

The Jacobian comes from `jax.jacfwd` (n Jacobian-vector products) and travels in the
solver state between steps: a step retried after a rejection reuses it (same (t, y)); an
ESDIRK reuses it across accepted steps while Newton converges fast (θ < `reuse_theta`),
recomputing it after any slow or failed iteration (HW 1996, §IV.8, "Jacobian reuse"). A
Newton failure returns ok=False: the controller rejects the step and shrinks it. Dense
output is cubic Hermite through (y, f(t, y)) and (y_1, f(t + h, y_1)).

Tolerance calibration (ESDIRK). The controller keeps the *estimated* local error per step
at the tolerance ("error per step"); the global error is then about the number of steps
times the local error, and the number of steps grows like tol^(-1/q) for an estimate of
local order q, so the global error scales like tol^((q-1)/q), not tol (Hairer, Nørsett &
Wanner 1993, §II.4; Shampine 1994, *Numerical Solution of ODEs*, §5.1 on tolerance
proportionality). A method that advances with its higher-order solution usually hides
this: its true local error sits well below the estimate (Rodas5: 0.1x the estimate,
median over the steps of OREGO at rtol 1e-6). Kvaerno5 does not: with stage order 2 its
fifth-order solution suffers order reduction on stiff problems, and step by step its true
local error was 0.7x the estimate (median, 90th percentile 1.6x) on OREGO. At rtol
1e-4..1e-8 its global error was 4-12x rtol on VDPOL (μ = 1000) and 11-39x rtol on OREGO,
growing as rtol shrank (diffrax's Kvaerno5, the same tableau, happens to stay near rtol
because its stage iterations stop on the stage *derivative* at the step tolerance and fail
often, which shrinks its steps: 2-10x more steps, half of them rejected). The fix here is
the tolerance transformation that Hairer & Wanner's RADAU5 code applies in the opposite
direction (radau5.f: rtol' = 0.1 rtol^(2/3)): an ESDIRK with calibration exponent c
controls its steps at rtol/F and atol/F with F = rtol^(-c) (the error estimate is
multiplied by F); c = 1/(q-1) makes the global error proportional to rtol. Kvaerno5 uses
c = 1/4 (q = 5). Newton's stopping test uses the same internal tolerance, so that the
stage iteration error stays below the controlled local error. F is capped so that rtol/F
stays at or above 100 ε (RADAU5 likewise refuses rtol <= 10 ε): below that the controlled
error is rounding, steps shrink without gaining accuracy and Newton's test cannot be met
(a steady state sought with rtol 1e-15, atol 1e-11 stalled at max_steps with F = 5.6e3).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import tableaus as tb
from .explicit import AbstractSolver, StepResult
from .interpolation import hermite_coeffs
from .linalg import lu_factor, lu_solve
from .newton import newton_solve

__all__ = [
    "ImplicitState",
    "ImplicitStepResult",
    "AbstractESDIRK",
    "AbstractRosenbrock",
    "ESDIRK",
    "Rosenbrock",
    "ImplicitEuler",
    "Kvaerno3",
    "Kvaerno5",
    "Rodas5",
    "IMPLICIT_SOLVERS",
]


#: Systems at least this large reuse Jacobians across accepted steps by default.
REUSE_MIN_SIZE = 32


class ImplicitState(NamedTuple):
    """What an implicit solver carries from step to step.

    Attributes:
        jac: ∂f/∂y at (jac_t, the state then), shape (n, n).
        f_t: ∂f/∂t there (Rosenbrock methods), shape (n,).
        jac_t: the time the Jacobian was evaluated at (NaN: none yet).
        reuse: whether the next step may keep `jac` (fast Newton convergence).
        eta: the last Newton η = θ/(1-θ).
        rtol, atol: the tolerances that scale Newton's stopping test.
        nfev, njev, nlinsolve: counts of f evaluations, Jacobians (jacfwd) and LU solves.
    """

    jac: jax.Array
    f_t: jax.Array
    jac_t: jax.Array
    reuse: jax.Array
    eta: jax.Array
    rtol: jax.Array
    atol: jax.Array
    nfev: jax.Array
    njev: jax.Array
    nlinsolve: jax.Array


#: One step's result: `StepResult` whose `state` is the `ImplicitState` for the next step.
ImplicitStepResult = StepResult


def stage_predictor(c, points: int = 3) -> np.ndarray:
    """Starting guesses for the stage derivatives: k_i ≈ Σ_j P_ij k_j, j < i.

    Lagrange extrapolation in c through the (up to `points`) latest earlier stages with
    distinct nodes; a stage whose node repeats an earlier one starts from that stage.
    """
    s = len(c)
    pred = np.zeros((s, s))
    for i in range(1, s):
        nodes = []
        for j in range(i - 1, -1, -1):
            if all(abs(c[j] - c[m]) > 1e-12 for m in nodes) and len(nodes) < points:
                nodes.append(j)
        for j in nodes:
            others = [m for m in nodes if m != j]
            pred[i, j] = np.prod([(c[i] - c[m]) / (c[j] - c[m]) for m in others])
    return pred


def _jacobian(f, t, y):
    return jax.jacfwd(lambda y: f(t, y))(y)


def _time_derivative(f, t, y):
    return jax.jvp(lambda t: f(t, y), (t,), (jnp.ones_like(t),))[1]


class _ImplicitBase(AbstractSolver):
    """What the stiff solvers share: the Jacobian-carrying state, statistics, properties."""

    @property
    def implicit(self) -> bool:
        return True

    @property
    def adaptive(self) -> bool:
        return self.tableau.adaptive

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def error_order(self) -> int | None:
        return self.tableau.error_order

    @property
    def name(self) -> str:
        return self.tableau.name

    def init_state(self, f, t, y, fy, rtol=1e-6, atol=1e-6) -> ImplicitState:
        """Fresh solver state; `f(t, y)` is the flat vector field (nothing is evaluated)."""
        del f, fy
        n, dtype = y.shape[0], y.dtype
        i32 = jnp.zeros((), jnp.int32)
        return ImplicitState(
            jac=jnp.zeros((n, n), dtype), f_t=jnp.zeros((n,), dtype),
            jac_t=jnp.full((), jnp.nan, dtype), reuse=jnp.zeros((), bool),
            eta=jnp.ones((), dtype), rtol=jnp.asarray(rtol, dtype),
            atol=jnp.asarray(atol, dtype), nfev=i32, njev=i32, nlinsolve=i32,
        )

    def stats(self, state: ImplicitState) -> dict:
        """Counts for `Solution.stats` (f evaluations inside steps, Jacobians, LU solves)."""
        return dict(nfev=state.nfev, njev=state.njev, nlinsolve=state.nlinsolve)

    def __repr__(self) -> str:
        return f"jode.{type(self).__name__}()"


class AbstractESDIRK(_ImplicitBase):
    """An ESDIRK method (explicit first stage, then implicit stages) and its Newton options.

    Args:
        kappa: Newton's stopping tolerance κ on the tolerance-scaled norm (HW 1996 §IV.8
            suggest 0.01-0.1).
        max_iters: Newton iterations per stage before the step is rejected.
        reuse_theta: keep the Jacobian for the next step when every stage's contraction
            rate θ stayed below this; 0 recomputes it every accepted step. None (default)
            picks 0.1 for systems of `REUSE_MIN_SIZE` or more unknowns, where a Jacobian
            (n Jacobian-vector products) costs more than the extra Newton iterations a stale
            one causes, and 0 for smaller ones.
        predictor_points: how many earlier stages extrapolate each stage's starting guess
            (`stage_predictor`; 1 starts from the previous stage).
        tolerance_exponent: c of the tolerance calibration F = rtol^(-c) (see the module
            docstring): the step is controlled, and Newton stopped, at rtol/F and atol/F.
            None (default) takes the method's `default_tolerance_exponent` (1/4 for
            Kvaerno5, 0 — no calibration — otherwise); 0 controls at the tolerances as
            given.
    """

    tableau: eqx.AbstractVar[tb.DIRKTableau]
    kappa: float = eqx.field(static=True, default=0.01)
    max_iters: int = eqx.field(static=True, default=10)
    reuse_theta: float | None = eqx.field(static=True, default=None)
    predictor_points: int = eqx.field(static=True, default=3)
    tolerance_exponent: float | None = eqx.field(static=True, default=None)

    #: The calibration exponent c used when `tolerance_exponent` is None.
    default_tolerance_exponent: ClassVar[float] = 0.0

    def __check_init__(self):
        a = self.tableau.a
        if a[0, 0] != 0 or np.any(np.diag(a)[1:] == 0) or self.tableau.c[0] != 0:
            raise ValueError(
                f"ESDIRK needs an explicit first stage at c_0 = 0 and implicit stages after "
                f"it; {self.tableau.name} is not of that form"
            )
        if not self.tableau.stiffly_accurate:
            raise ValueError(f"ESDIRK needs a stiffly accurate tableau; {self.tableau.name} is not")
        if self.tolerance_exponent is not None and not 0 <= self.tolerance_exponent <= 1:
            raise ValueError(
                f"tolerance_exponent must be in [0, 1] (0: no calibration); got "
                f"tolerance_exponent={self.tolerance_exponent}"
            )
        if self.kappa <= 0 or self.max_iters < 1:
            raise ValueError(
                f"kappa must be > 0 and max_iters >= 1; got kappa={self.kappa}, "
                f"max_iters={self.max_iters}"
            )

    @property
    def calibration(self) -> float:
        """c in the tolerance calibration F = rtol^(-c) (see the module docstring)."""
        if self.tolerance_exponent is not None:
            return float(self.tolerance_exponent)
        return float(self.default_tolerance_exponent)

    def tolerance_boost(self, rtol):
        """F = min(rtol^(-c), max(1, rtol / 100ε)) (1 where rtol is 0): the factor the error
        estimate is scaled by, capped so that rtol/F >= 100 ε."""
        c = self.calibration
        if c == 0:
            return jnp.ones_like(rtol)
        safe = jnp.where(rtol > 0, jnp.minimum(rtol, 1.0), 1.0)
        eps = jnp.finfo(jnp.result_type(safe, float)).eps
        return jnp.minimum(safe ** (-c), jnp.maximum(1.0, safe / (100 * eps)))

    @property
    def f_evals_per_step(self) -> int:
        """At least one evaluation per implicit stage (Newton may take more)."""
        return self.tableau.stages - 1

    def step(self, f, t, y, fy, h, state: ImplicitState | None = None) -> ImplicitStepResult:
        tab = self.tableau
        if state is None:
            state = self.init_state(f, t, y, fy)
        n, dtype = y.shape[0], y.dtype
        s, gamma = tab.stages, tab.gamma

        # The Jacobian is only Newton's iteration matrix: no derivatives flow through it.
        reuse_theta = self.reuse_theta
        if reuse_theta is None:
            reuse_theta = 0.1 if n >= REUSE_MIN_SIZE else 0.0
        fresh = (t != state.jac_t) & ~state.reuse
        jac = jax.lax.cond(
            fresh, lambda: jax.lax.stop_gradient(_jacobian(f, t, y)), lambda: state.jac
        )
        lu = lu_factor(jnp.eye(n, dtype=dtype) - (gamma * h) * jac)
        # Newton stops well inside the calibrated (internal) tolerance, not the user's.
        boost = self.tolerance_boost(state.rtol)
        scale = (state.atol + state.rtol * jnp.abs(y)) / boost
        weight = jnp.abs(gamma * h) / scale
        # Round-off in the stage values, in the same scaled norm (4 ulps of y).
        floor = 4 * jnp.finfo(dtype).eps * jnp.sqrt(jnp.mean(jnp.square(y / scale)))

        a_low = jnp.asarray(np.tril(tab.a, -1), dtype)
        c = jnp.asarray(tab.c, dtype)
        pred = jnp.asarray(stage_predictor(tab.c, self.predictor_points), dtype)
        ks = jnp.concatenate([fy[None], jnp.zeros((s - 1, n), dtype)])

        def stage(carry, i):
            ks, eta, iters, ok, theta_ok = carry
            z = y + h * (a_low[i] @ ks)
            ti = t + c[i] * h
            k, info = newton_solve(
                lambda k: k - f(ti, z + (gamma * h) * k), pred[i] @ ks, lu, weight,
                self.kappa, self.max_iters, eta, floor,
            )
            fast = info.eta <= reuse_theta / (1.0 - reuse_theta)
            ks = jax.lax.dynamic_update_index_in_dim(ks, k, i, 0)
            return (ks, info.eta, iters + info.iterations, ok & info.converged,
                    theta_ok & fast), None

        init = (ks, state.eta, jnp.zeros((), jnp.int32), jnp.ones((), bool), jnp.ones((), bool))
        (ks, eta, iters, ok, fast), _ = jax.lax.scan(stage, init, jnp.arange(1, s))

        y1 = y + h * (jnp.asarray(tab.b, dtype) @ ks)
        f1 = ks[-1]
        error = None
        if tab.b_err is not None:
            error = boost * (h * (jnp.asarray(tab.b_err, dtype) @ ks))
        ok = ok & jnp.all(jnp.isfinite(y1))
        new_state = state._replace(
            jac=jac,
            jac_t=jnp.where(fresh, t, state.jac_t),
            reuse=ok & fast & (reuse_theta > 0),
            eta=jnp.where(ok, eta, 1.0).astype(dtype),
            nfev=state.nfev + iters,
            njev=state.njev + fresh.astype(jnp.int32),
            nlinsolve=state.nlinsolve + iters,
        )
        return ImplicitStepResult(y1, f1, error, hermite_coeffs(y, y1, fy, f1, h), ok, new_state)


class AbstractRosenbrock(_ImplicitBase):
    """A Rosenbrock method: its data is a `RosenbrockTableau` (exact Jacobian, no iterations)."""

    tableau: eqx.AbstractVar[tb.RosenbrockTableau]

    @property
    def f_evals_per_step(self) -> int:
        """s - 1 stages and f(t + h, y_1) (the next step's first stage, and Hermite's)."""
        return self.tableau.stages

    def step(self, f, t, y, fy, h, state: ImplicitState | None = None) -> ImplicitStepResult:
        tab = self.tableau
        if state is None:
            state = self.init_state(f, t, y, fy)
        n, dtype = y.shape[0], y.dtype
        s, gamma = tab.stages, tab.gamma
        a, cmat, m, m_err = (None if x is None else jnp.asarray(x, dtype) for x in tab.transformed)
        c = jnp.asarray(tab.c, dtype)
        d = jnp.asarray(tab.d, dtype)

        # The method needs J at (t, y): reuse it only when retrying a rejected step.
        fresh = t != state.jac_t
        jac, f_t = jax.lax.cond(
            fresh,
            lambda: (_jacobian(f, t, y), _time_derivative(f, t, y)),
            lambda: (state.jac, state.f_t),
        )
        lu = lu_factor(jnp.eye(n, dtype=dtype) / (gamma * h) - jac)
        u0 = lu_solve(lu, fy + (d[0] * h) * f_t)
        us = jnp.concatenate([u0[None], jnp.zeros((s - 1, n), dtype)])

        def stage(us, i):
            fi = f(t + c[i] * h, y + a[i] @ us)
            rhs = fi + (cmat[i] @ us) / h + (d[i] * h) * f_t
            return jax.lax.dynamic_update_index_in_dim(us, lu_solve(lu, rhs), i, 0), None

        us, _ = jax.lax.scan(stage, us, jnp.arange(1, s))
        y1 = y + m @ us
        error = None if m_err is None else m_err @ us
        f1 = f(t + h, y1)
        ok = jnp.all(jnp.isfinite(y1))
        new_state = state._replace(
            jac=jac, f_t=f_t, jac_t=jnp.where(fresh, t, state.jac_t),
            nfev=state.nfev + s, njev=state.njev + fresh.astype(jnp.int32),
            nlinsolve=state.nlinsolve + s,
        )
        return ImplicitStepResult(y1, f1, error, hermite_coeffs(y, y1, fy, f1, h), ok, new_state)


class ESDIRK(AbstractESDIRK):
    """An ESDIRK solver from your own `DIRKTableau`: `ESDIRK(my_tableau, kappa=0.05)`.

    Args:
        tableau: the method's data (explicit first stage, stiffly accurate).
        kappa, max_iters, reuse_theta, predictor_points, tolerance_exponent: as in
            `AbstractESDIRK` (no tolerance calibration by default).
    """

    tableau: tb.DIRKTableau = eqx.field(static=True)

    def __init__(
        self,
        tableau: tb.DIRKTableau,
        kappa: float = 0.01,
        max_iters: int = 10,
        reuse_theta: float | None = None,
        predictor_points: int = 3,
        tolerance_exponent: float | None = None,
    ):
        if not isinstance(tableau, tb.DIRKTableau):
            raise ValueError(f"tableau must be a jode.DIRKTableau; got {type(tableau).__name__}")
        self.tableau = tableau
        self.kappa = kappa
        self.max_iters = max_iters
        self.reuse_theta = reuse_theta
        self.predictor_points = predictor_points
        self.tolerance_exponent = tolerance_exponent

    def __repr__(self) -> str:
        return f"jode.ESDIRK({self.tableau!r})"


class Rosenbrock(AbstractRosenbrock):
    """A Rosenbrock solver from your own `RosenbrockTableau`: `Rosenbrock(my_tableau)`."""

    tableau: tb.RosenbrockTableau = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.tableau, tb.RosenbrockTableau):
            raise ValueError(
                f"tableau must be a jode.RosenbrockTableau; got {type(self.tableau).__name__}"
            )

    def __repr__(self) -> str:
        return f"jode.Rosenbrock({self.tableau!r})"


class ImplicitEuler(AbstractESDIRK):
    """Implicit (backward) Euler, order 1, L-stable; adaptive through the trapezoidal rule.

    y_1 = y + h f(t + h, y_1); error estimate h (f(t + h, y_1) - f(t, y)) / 2.
    Keyword arguments (kappa, max_iters, reuse_theta, predictor_points) as in
    `AbstractESDIRK`.
    """

    tableau: ClassVar[tb.DIRKTableau] = tb.IMPLICIT_EULER


class Kvaerno3(AbstractESDIRK):
    """Kværnø (2004) ESDIRK 3(2): 4 stages, L-stable, stiffly accurate.

    Keyword arguments (kappa, max_iters, reuse_theta, predictor_points) as in
    `AbstractESDIRK`.
    """

    tableau: ClassVar[tb.DIRKTableau] = tb.KVAERNO3


class Kvaerno5(AbstractESDIRK):
    """Kværnø (2004) ESDIRK 5(4): 7 stages, L-stable, stiffly accurate.

    Its steps are controlled at the calibrated tolerance rtol/F, F = rtol^(-1/4) (31.6 at
    rtol 1e-6; see the module docstring), so that the global error is about the rtol asked
    for: on ROBER (t = 1e11), VDPOL (μ = 1000, t = 2000) and OREGO (t = 360) at rtol
    1e-4..1e-8, atol 1e-10, it measured 0.007-1.2x rtol in tolerance units (uncalibrated:
    0.12-39x), at 1.1-2.9x the steps on VDPOL and OREGO (ROBER: 0.6-1.4x, fewer Newton
    rejections).
    `tolerance_exponent=0` controls at the tolerances as given (fewer steps).

    Keyword arguments (kappa, max_iters, reuse_theta, predictor_points,
    tolerance_exponent) as in `AbstractESDIRK`.

    Example:
        >>> sol = jode.solve(robertson, y0, 0.0, 1e5, solver=jode.Kvaerno5(), rtol=1e-6)
    """

    tableau: ClassVar[tb.DIRKTableau] = tb.KVAERNO5
    default_tolerance_exponent: ClassVar[float] = 0.25


class Rodas5(AbstractRosenbrock):
    """Rodas5 (Di Marzo 1993): Rosenbrock 5(4), 8 stages, L-stable, stiffly accurate."""

    tableau: ClassVar[tb.RosenbrockTableau] = tb.RODAS5


#: The built-in stiff methods by name, for error messages and test registries.
IMPLICIT_SOLVERS = {m.__name__: m for m in (ImplicitEuler, Kvaerno3, Kvaerno5, Rodas5)}
