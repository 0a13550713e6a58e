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

With priors (`jode.fitting.Posterior`, a negative log posterior −log p(u | d) over the fitted
coordinates u), `laplace` gives the Laplace approximation at the MAP û: the posterior is
approximated by the normal N(û, H⁻¹) with H = ∇²(−log p)(û) the Hessian of the negative log
posterior (MacKay 1992, "A practical Bayesian framework for backpropagation networks",
Neural Computation 4(3); Bishop 2006, *Pattern Recognition and Machine Learning*, §4.4).
H is exact (forward-over-forward differentiation of the solve, p² tangent directions: for a
handful of parameters) or Gauss-Newton: JᵀJ of the whitened residuals r/σ, plus the exact
Hessian of the log prior, plus the expected (Fisher) information 2 N_j of each fitted log σ_j
(Seber & Wild 1989, §2.2.6). For a model linear in its parameters with Gaussian priors and
fixed noise both equal the exact posterior covariance (Bishop 2006, eq. 3.50-3.51).
Marginal level-q intervals are û ± z_{(1+q)/2} se in u, mapped through exp for the entries
fitted as logarithms (a log-normal interval for a positive parameter).
"""

from __future__ import annotations

import functools
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
def residuals_and_jacobian(loss, theta):
    """(r, J): the loss's residual vector at θ and J = ∂r/∂θ (forward mode), shapes (N,) and
    (N, p), from one compiled program."""
    flat, unravel = ravel_pytree(theta)

    def res(v):
        return loss.residuals(unravel(v), adjoint=ForwardMode())

    # One tangent solve per parameter, in sequence (lax.map of jvp rather than jacfwd's vmap:
    # p solves of a few states each, and no batching rules needed inside the solver). Every
    # column's primal is r; the first is kept.
    basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
    primals, columns = jax.lax.map(lambda e: jax.jvp(res, (flat,), (e,)), basis)
    return primals[0], columns.T


def jacobian(loss, theta):
    """J = ∂r/∂θ of the loss's residual vector at θ (forward mode), shape (N, p)."""
    return residuals_and_jacobian(loss, theta)[1]


def gauss_newton(loss, theta) -> Uncertainty:
    """The Gauss-Newton covariance s² (JᵀJ)⁻¹ of the estimate θ for `loss`.

    Args:
        loss: a `TrajectoryLoss` (anything with `residuals(theta, adjoint=...)`).
        theta: the estimate (a least-squares optimum: elsewhere the formula is meaningless).

    Returns:
        An `Uncertainty` (covariance, stderr, s², N, N − p, condition number); for a
        `Posterior` (a loss with priors), its `laplace` covariance instead.
    """
    if hasattr(loss, "log_prior"):
        return laplace(loss, theta)
    r, J = (np.asarray(x) for x in residuals_and_jacobian(loss, theta))
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


class Laplace(NamedTuple):
    """The Laplace approximation N(û, H⁻¹) of a posterior at its MAP û (in the fitted
    coordinates u; `log_coordinates` marks the entries that are logarithms)."""

    covariance: np.ndarray  # (p, p): H⁻¹
    stderr: np.ndarray  # (p,)
    hessian: np.ndarray  # (p, p): H, the Hessian of −log p(u | d) at û
    log_coordinates: np.ndarray  # (p,) bool
    method: str  # "hessian" or "gauss-newton"
    n_obs: int  # observations with positive weight
    condition: float  # condition number of H

    def interval(self, u, level: float = 0.95):
        """(lower, upper) of the marginal level-q interval û ± z se, in the fitted
        coordinates."""
        if not 0 < level < 1:
            raise ValueError(f"level must be in (0, 1); got level={level}")
        z = float(ndtri(0.5 + level / 2))
        u = np.asarray(u)
        return u - z * self.stderr, u + z * self.stderr

    def natural_interval(self, u, level: float = 0.95):
        """The same interval in natural units: exp of the ends for log coordinates."""
        lo, hi = self.interval(u, level)
        m = self.log_coordinates
        return np.where(m, np.exp(lo), lo), np.where(m, np.exp(hi), hi)

    def summary(self, u, names=None, levels=(0.8, 0.95)) -> str:
        """A table: estimate (natural units), its 80% and 95% intervals."""
        u = np.asarray(u)
        est = np.where(self.log_coordinates, np.exp(u), u)
        names = names or tuple(f"u[{i}]" for i in range(u.size))
        head = f"{'':10s} {'estimate':>11s} " + " ".join(
            f"{f'{int(round(q * 100))}% interval':>22s}" for q in levels)
        lines = [head]
        bounds = [self.natural_interval(u, q) for q in levels]
        for i, n in enumerate(names):
            cells = " ".join(f"[{b[0][i]:9.4g}, {b[1][i]:9.4g}]" for b in bounds)
            lines.append(f"{str(n)[:10]:10s} {est[i]:11.5g} {cells}")
        return "\n".join(lines)


_METHODS = ("hessian", "gauss-newton")


def _exact_hessian(fn, u):
    """∇²fn(u) by forward-over-forward differentiation: one second-order tangent solve per
    pair of basis directions, in sequence (`lax.map`), so the solver needs no batching."""
    basis = jnp.eye(u.shape[0], dtype=u.dtype)

    def second(e, f):  # eᵀ ∇²fn(u) f
        return jax.jvp(lambda v: jax.jvp(fn, (v,), (f,))[1], (u,), (e,))[1]

    return jax.lax.map(lambda e: jax.lax.map(lambda f: second(e, f), basis), basis)


@jax.jit
def _posterior_hessian(post, u):
    def fn(v):
        return post.negative_log_likelihood(v, adjoint=ForwardMode()) - post.log_prior(v)

    return _exact_hessian(fn, u)


@jax.jit
def _posterior_gauss_newton(post, u):
    def res(v):
        return post.residuals(v, adjoint=ForwardMode())

    basis = jnp.eye(u.shape[0], dtype=u.dtype)
    J = jax.lax.map(lambda e: jax.jvp(res, (u,), (e,))[1], basis).T  # (N, p)
    H = J.T @ J
    if post.n_sigma:
        # The log σ_j columns of J are −r/σ; JᵀJ would give Σ r²/σ² there and miss the
        # curvature of N_j log σ_j: use the Fisher information of a Gaussian scale instead,
        # 2 N_j on the diagonal and no coupling to θ.
        counts = jnp.sum(post.likelihood.weights > 0, axis=0).astype(u.dtype)
        k = post.n_theta
        H = H.at[k:, :].set(0.0).at[:, k:].set(0.0)
        H = H.at[k:, k:].set(jnp.diag(2.0 * counts))
    return H - jax.hessian(post.log_prior)(u)


@functools.partial(jax.jit, static_argnums=0)
def _callable_hessian(fn, u):
    return _exact_hessian(fn, u)


def laplace(loss, params, *, method: str = "hessian") -> Laplace:
    """The Laplace covariance H⁻¹ of a posterior at its MAP (see the module docstring).

    Args:
        loss: a `jode.fitting.Posterior` (a trajectory loss with priors), or any function
            u -> −log p(u | d) of a vector (then only method="hessian").
        params: the MAP û in the fitted coordinates (`jode.fit(posterior, ...).params`).
        method: "hessian" (exact; default) or "gauss-newton" (JᵀJ of the whitened
            residuals plus the prior's exact Hessian; a Posterior only).

    Returns:
        A `Laplace` (covariance, stderr, H, which entries are logs, intervals).

    Raises:
        ValueError: for an unknown method, params that are not a vector, or a point where
            H is not positive definite (not a local minimum of −log p: not a MAP).
    """
    if method not in _METHODS:
        raise ValueError(f'method must be "hessian" or "gauss-newton"; got method={method!r}')
    u = jnp.asarray(params, jnp.result_type(float))
    if u.ndim != 1:
        raise ValueError(f"params must be a vector (the fitted coordinates); got {u.shape}")
    is_posterior = hasattr(loss, "log_prior")
    if is_posterior:
        H = _posterior_hessian(loss, u) if method == "hessian" else \
            _posterior_gauss_newton(loss, u)
        log_mask = loss._log_mask()
        n_obs = int(np.sum(np.asarray(loss.likelihood.weights) > 0))
    else:
        if method != "hessian":
            raise ValueError(
                'method="gauss-newton" needs a jode.fitting.Posterior (its residuals); for a '
                'plain function use method="hessian"')
        H = _callable_hessian(loss, u)
        log_mask = np.zeros(u.shape[0], bool)
        n_obs = 0
    H = np.asarray(H)
    H = 0.5 * (H + H.T)
    if not np.all(np.isfinite(H)):
        raise ValueError(
            "the Hessian of the negative log posterior is not finite at params: the model "
            "fails to solve there; pass the MAP of a converged fit")
    w, v = np.linalg.eigh(H)
    if w[0] <= w[-1] * u.shape[0] * np.finfo(H.dtype).eps:
        raise ValueError(
            f"the Hessian of the negative log posterior is not positive definite at params "
            f"(smallest eigenvalue {w[0]:.3g}): params is not a local minimum (not a MAP), or a "
            "parameter is not identified; fit to convergence, or add a prior on it")
    cov = (v / w) @ v.T
    cov = 0.5 * (cov + cov.T)
    return Laplace(cov, np.sqrt(np.diag(cov)), H, np.asarray(log_mask, bool), method, n_obs,
                   float(w[-1] / w[0]))
