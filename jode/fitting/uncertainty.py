"""How sure a least-squares estimate is: the Gauss-Newton (Laplace) covariance.

Near the optimum θ̂ of S(θ) = Σ r_i(θ)², with J = ∂r/∂θ at θ̂, N residuals and p parameters,

    Cov(θ̂) ≈ s² (JᵀJ)⁻¹,      s² = S(θ̂) / (N − p),

the asymptotic covariance of nonlinear least squares (Bates & Watts 1988, *Nonlinear
Regression Analysis and Its Applications*, eq. 2.12 and §2.3.1; Seber & Wild 1989, §2.1), which is
also the Laplace approximation of the posterior under a flat prior and Gaussian noise of
unknown variance. Standard errors are the square roots of its diagonal and the level-q
intervals θ̂ ± z_{(1+q)/2} se (normal quantile: N − p is large for trajectory data).

J is computed in forward mode (`jax.jvp`: p tangent solves, cheap for a handful of
parameters) through a solve with `jode.ForwardMode()`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.special import ndtri

from ..ode.adjoint import ForwardMode


class Uncertainty(NamedTuple):
    """The Gauss-Newton covariance of an estimate and what it is made of."""

    covariance: np.ndarray  # (p, p)
    stderr: np.ndarray  # (p,)
    sigma2: float  # residual variance s²
    n_obs: int  # N, residuals with positive weight
    dof: int  # N − p
    condition: float  # condition number of J (large: poorly identified parameters)

    def interval(self, theta, level: float = 0.95):
        """(lower, upper) of the level-q interval θ̂ ± z se."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1); got level={level}")
        z = float(ndtri(0.5 + level / 2))
        theta = np.asarray(theta)
        return theta - z * self.stderr, theta + z * self.stderr


@jax.jit
def jacobian(loss, theta):
    """J = ∂r/∂θ of the loss's residual vector at θ (forward mode), shape (N, p)."""
    flat, unravel = ravel_pytree(theta)

    def res(v):
        return loss.residuals(unravel(v), adjoint=ForwardMode())

    # One tangent solve per parameter, in sequence (lax.map of jvp rather than jacfwd's vmap:
    # p solves of a few states each, and no batching rules needed inside the solver).
    basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
    columns = jax.lax.map(lambda e: jax.jvp(res, (flat,), (e,))[1], basis)
    return columns.T


@jax.jit
def _residuals(loss, theta):
    return loss.residuals(theta)


def gauss_newton(loss, theta) -> Uncertainty:
    """The Gauss-Newton covariance s² (JᵀJ)⁻¹ of the estimate θ for `loss`.

    Args:
        loss: a `TrajectoryLoss` (anything with `residuals(theta, adjoint=...)`).
        theta: the estimate (a least-squares optimum: elsewhere the formula is meaningless).

    Returns:
        An `Uncertainty` (covariance, stderr, s², N, N − p, condition number).
    """
    r = np.asarray(_residuals(loss, theta))
    J = np.asarray(jacobian(loss, theta))
    keep = np.asarray(loss.weights).reshape(-1) > 0
    r, J = r[keep], J[keep]
    n, p = J.shape
    dof = n - p
    if dof <= 0:
        raise ValueError(
            f"{n} weighted observations cannot give the uncertainty of {p} parameters: "
            "need more observations than parameters"
        )
    sigma2 = float(np.sum(r**2) / dof)
    _, s, vt = np.linalg.svd(J, full_matrices=False)
    cutoff = s[0] * max(n, p) * np.finfo(J.dtype).eps
    inv_s2 = np.where(s > cutoff, 1.0 / np.where(s > 0, s, 1.0) ** 2, np.inf)
    cov = sigma2 * (vt.T * inv_s2) @ vt
    cond = float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
    stderr = np.sqrt(np.abs(np.diag(cov)))
    return Uncertainty(cov, stderr, sigma2, int(n), int(dof), cond)
