"""A stabilized explicit (Runge-Kutta-Chebyshev) step for stiff gradient flows.

The Jacobian of dθ/dt = -∇L(θ) is -H, symmetric: its spectrum is real. For such problems
the damped first-order Chebyshev method with s stages has the stability polynomial

    R_s(z) = T_s(w_0 + w_1 z) / T_s(w_0),   w_0 = 1 + ε/s²,   w_1 = T_s(w_0) / T_s'(w_0),

stable on the real interval [-β_s, 0] with β_s = (1 + w_0)/w_1 ≈ (2 - 4ε/3) s², i.e. the
stable step grows like s² while the cost grows like s (T_s the Chebyshev polynomials; van
der Houwen & Sommeijer 1980; Hundsdorfer & Verwer 2003, *Numerical Solution of
Time-Dependent Advection-Diffusion-Reaction Equations*, §V.1, eq. 1.16). Its three-term
recursion, with b_j = 1/T_j(w_0),

    Y_0 = θ_n,   Y_1 = θ_n + (w_1 b_1) h F(Y_0),
    Y_j = μ_j Y_{j-1} + ν_j Y_{j-2} + μ̃_j h F(Y_{j-1}),   μ_j = 2 w_0 b_j / b_{j-1},
    ν_j = -b_j / b_{j-2},   μ̃_j = 2 w_1 b_j / b_{j-1},   j = 2..s,   θ_{n+1} = Y_s,

keeps the internal stages stable too. The local error is estimated against the trapezoidal
rule, e = θ_{n+1} - θ_n - (h/2)(F(θ_n) + F(θ_{n+1})), in the spirit of RKC's estimate
(Sommeijer, Shampine & Verwer 1998, eq. 2.9); F(θ_{n+1}) is the next step's first stage,
so a step costs s gradient evaluations.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..ode.explicit import AbstractSolver, StepResult
from ..ode.interpolation import hermite_coeffs


class Chebyshev(AbstractSolver):
    """Damped first-order Runge-Kutta-Chebyshev with a fixed number of stages.

    A `jode.AbstractSolver`: `gradient_flow(Chebyshev())` and
    `jode.solve(..., solver=Chebyshev())` step the same way. Meant for fields whose
    Jacobian has a real (or nearly real) spectrum, such as gradient flows.

    Args:
        stages: s >= 2; the real stability interval is about 1.93 s² for the default damping.
        damping: ε in w_0 = 1 + ε/s² (larger: more damping, shorter interval).
    """

    stages: int = eqx.field(static=True, default=10)
    damping: float = eqx.field(static=True, default=0.05)

    def __check_init__(self):
        if int(self.stages) < 2:
            raise ValueError(f"stages must be >= 2; got stages={self.stages}")
        if not self.damping >= 0:
            raise ValueError(f"damping must be >= 0; got damping={self.damping}")

    @property
    def order(self) -> int:
        return 1

    @property
    def error_order(self) -> int:
        return 2

    @property
    def f_evals_per_step(self) -> int:
        """s - 1 stages after the carried F(θ_n), and F(θ_{n+1}) for the error estimate."""
        return int(self.stages)

    @property
    def implicit(self) -> bool:
        return False

    def step(self, f, t, y, fy, h, state=None) -> StepResult:
        """θ_{n+1} = Y_s and e = θ_{n+1} - θ_n - (h/2)(F(θ_n) + F(θ_{n+1})) (f autonomous)."""
        y1 = chebyshev_stages(self, lambda z: f(t, z), y, fy, h)
        f1 = f(t + h, y1)
        error = y1 - y - (0.5 * h) * (fy + f1)
        ok = jnp.all(jnp.isfinite(y1)) & jnp.all(jnp.isfinite(f1))
        return StepResult(y1, f1, error, hermite_coeffs(y, y1, fy, f1, h), ok, state)

    def coefficients(self):
        """(w_1 b_1, μ_j, ν_j, μ̃_j for j = 2..s) as NumPy arrays."""
        s, eps = int(self.stages), float(self.damping)
        w0 = 1.0 + eps / s**2
        t = np.zeros(s + 1)  # T_j(w0)
        dt = np.zeros(s + 1)  # T_j'(w0)
        t[0], t[1], dt[1] = 1.0, w0, 1.0
        for j in range(2, s + 1):
            t[j] = 2 * w0 * t[j - 1] - t[j - 2]
            dt[j] = 2 * t[j - 1] + 2 * w0 * dt[j - 1] - dt[j - 2]
        w1 = t[s] / dt[s]
        b = 1.0 / t
        j = np.arange(2, s + 1)
        mu = 2 * w0 * b[j] / b[j - 1]
        nu = -b[j] / b[j - 2]
        mu_t = 2 * w1 * b[j] / b[j - 1]
        return w1 * b[1], mu, nu, mu_t

    def stability_interval(self) -> float:
        s, eps = int(self.stages), float(self.damping)
        w0 = 1.0 + eps / s**2
        a1, *_ = self.coefficients()
        w1 = a1 * w0  # b_1 = 1/w0
        return (1.0 + w0) / w1

    def __repr__(self) -> str:
        return f"jode.optim.Chebyshev(stages={self.stages}, damping={self.damping})"


def chebyshev_stages(solver: Chebyshev, field, y, fy, h):
    """θ_{n+1} = Y_s by the recursion above; `field` returns F at a point (flat arrays).

    The error estimate needs F(θ_{n+1}), which the caller evaluates (it is the next step's
    first stage): e = θ_{n+1} - θ_n - (h/2)(F(θ_n) + F(θ_{n+1})).
    """
    a1, mu, nu, mu_t = solver.coefficients()
    y1 = y + (float(a1) * h) * fy
    coeffs = jnp.asarray(np.stack([mu, nu, mu_t], axis=1), y.dtype)

    def stage(carry, c):
        prev2, prev = carry
        nxt = c[0] * prev + c[1] * prev2 + (c[2] * h) * field(prev)
        return (prev, nxt), None

    # Unrolled: the stages are a handful of fused vector updates around a gradient, and a
    # rolled loop's per-iteration overhead on CPU cost about 3x in wall time (measured).
    (_, ys), _ = jax.lax.scan(stage, (y, y1), coeffs, unroll=True)
    return ys
