"""A linearly implicit (Rosenbrock W-) step for stiff gradient flows, matrix-free.

For dθ/dt = F(θ) = -∇L(θ) the Jacobian is J = -H (H the Hessian of L), and the two-stage
method ROS2 of Verwer, Spee, Blom & Hundsdorfer (1999, eq. 2.3) reads, with γ = 1 + 1/√2,

    W k_1 = F(θ_n),                     W = I - γhJ = I + γhH,
    W k_2 = F(θ_n + h k_1) - 2 k_1,
    θ_{n+1} = θ_n + (3/2) h k_1 + (1/2) h k_2,

order 2 and L-stable; it is a W-method (order 2 whatever matrix stands in for J), which is
what makes inexact Hessians and inexact linear solves safe. The embedded first-order
solution θ_n + h k_1 gives the error estimate e = (h/2)(k_1 + k_2) (their eq. 2.6).

It is a `jode.AbstractSolver` for any autonomous field F with a symmetric Jacobian (a
gradient flow). No dense matrix is formed: W v = v - γh·J v with Jacobian-vector products
from `jax.linearize` of F at θ_n (for F = -∇L, Hessian-vector products: Pearlmutter 1994),
and each system is solved by conjugate gradients truncated at `krylov_steps` iterations or
when the residual falls below `krylov_rtol`·‖r‖. W is symmetric but indefinite where L has
negative curvature and h is large; CG then stops at the first direction of non-positive
curvature and returns its iterate so far, or the right-hand side itself (the explicit
direction) if that happens at once (the truncated Newton-CG rule, Nocedal & Wright 2006,
Alg. 7.1).

References:
    J. G. Verwer, E. J. Spee, J. G. Blom, W. Hundsdorfer (1999), "A second-order Rosenbrock
    method applied to photochemical dispersion problems", SIAM J. Sci. Comput. 20(4).
    B. A. Pearlmutter (1994), "Fast exact multiplication by the Hessian", Neural Comput. 6.
    J. Nocedal, S. J. Wright (2006), *Numerical Optimization*, 2nd ed., §7.1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from ..ode.explicit import AbstractSolver, StepResult
from ..ode.interpolation import hermite_coeffs

GAMMA = 1.0 + 1.0 / math.sqrt(2.0)


class Ros2State(NamedTuple):
    """Counts carried between steps: Jacobian-vector products (CG iterations) in total."""

    nhvp: jax.Array


class Ros2(AbstractSolver):
    """ROS2 Rosenbrock W-method with Krylov (CG) linear solves; see the module docstring.

    A `jode.AbstractSolver`: `gradient_flow(Ros2())` and `jode.solve(..., solver=Ros2())`
    step the same way. The field must be autonomous with a symmetric Jacobian (CG), as a
    gradient flow's -∇L is.

    Args:
        krylov_steps: most CG iterations (Hessian-vector products) per linear solve.
        krylov_rtol: CG stops when ‖residual‖ ≤ krylov_rtol·‖right-hand side‖.
    """

    krylov_steps: int = eqx.field(static=True, default=20)
    krylov_rtol: float = eqx.field(static=True, default=1e-6)

    def __check_init__(self):
        if int(self.krylov_steps) < 1:
            raise ValueError(f"krylov_steps must be >= 1; got krylov_steps={self.krylov_steps}")
        if not self.krylov_rtol > 0:
            raise ValueError(f"krylov_rtol must be > 0; got krylov_rtol={self.krylov_rtol}")

    @property
    def order(self) -> int:
        return 2

    @property
    def error_order(self) -> int:
        return 2

    @property
    def f_evals_per_step(self) -> int:
        """The linearization at θ_n, the second stage, and F(θ_{n+1}) for the next step."""
        return 3

    @property
    def implicit(self) -> bool:
        return True

    def init_state(self, f, t, y, fy, rtol=1e-6, atol=1e-6) -> Ros2State:
        del f, t, y, fy, rtol, atol
        return Ros2State(nhvp=jnp.zeros((), jnp.int32))

    def step(self, f, t, y, fy, h, state: Ros2State | None = None) -> StepResult:
        """One ROS2 step of θ' = F(θ) from θ_n = y with fy = F(θ_n) (equations above)."""
        if state is None:
            state = self.init_state(f, t, y, fy)
        _, jvp = jax.linearize(lambda z: f(t, z), y)

        def w(v):
            return v - (GAMMA * h) * jvp(v)

        k1, n1 = truncated_cg(w, fy, self.krylov_steps, self.krylov_rtol)
        f2 = f(t + h, y + h * k1)
        k2, n2 = truncated_cg(w, f2 - 2.0 * k1, self.krylov_steps, self.krylov_rtol)
        y1 = y + h * (1.5 * k1 + 0.5 * k2)
        err = (0.5 * h) * (k1 + k2)
        f1 = f(t + h, y1)
        ok = jnp.all(jnp.isfinite(y1)) & jnp.all(jnp.isfinite(err))
        new_state = Ros2State(nhvp=state.nhvp + n1 + n2)
        return StepResult(y1, f1, err, hermite_coeffs(y, y1, fy, f1, h), ok, new_state)

    def stats(self, state: Ros2State) -> dict:
        return dict(nhvp=state.nhvp)

    def __repr__(self) -> str:
        return f"jode.optim.Ros2(krylov_steps={self.krylov_steps}, krylov_rtol={self.krylov_rtol})"


def truncated_cg(matvec, b, max_steps: int, rtol: float):
    """Solve A x = b for symmetric A by CG, stopping early on non-positive curvature.

    Returns:
        (x, steps): the iterate and the number of matrix-vector products used.
    """
    dtype = b.dtype
    b_norm = jnp.sqrt(jnp.vdot(b, b))
    tol2 = (rtol * b_norm) ** 2

    def cond(c):
        x, r, p, rs, i, stop = c
        return (i < max_steps) & ~stop & (rs > tol2)

    def body(c):
        x, r, p, rs, i, _ = c
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        negative = ~(pap > 0)  # also catches NaN
        alpha = rs / jnp.where(negative, 1.0, pap)
        x_new = x + alpha * p
        r_new = r - alpha * ap
        rs_new = jnp.vdot(r_new, r_new)
        p_new = r_new + (rs_new / jnp.where(rs > 0, rs, 1.0)) * p
        # Non-positive curvature: keep the iterate so far (b itself when nothing was done).
        x_keep = jnp.where(i == 0, b, x)
        return (
            jnp.where(negative, x_keep, x_new),
            jnp.where(negative, r, r_new),
            jnp.where(negative, p, p_new),
            jnp.where(negative, rs, rs_new),
            i + 1,
            negative,
        )

    zero = jnp.zeros_like(b)
    init = (zero, b, b, jnp.vdot(b, b), jnp.zeros((), jnp.int32), jnp.zeros((), bool))
    x, _, _, _, steps, _ = jax.lax.while_loop(cond, body, init)
    return x.astype(dtype), steps
