"""Priors and MAP estimation: a trajectory loss turned into a negative log posterior.

`Posterior(loss, priors=...)` wraps a `TrajectoryLoss` as the negative log posterior of its
parameters under independent Gaussian measurement noise,

    −log p(u | d) = Σ_{ij: w_ij > 0} [ log σ_j + ½ log 2π + r_ij(θ)² / (2 σ_j²) ]
                    − Σ_k log p_k(θ_k) − log p(σ) − log |∂(θ, σ)/∂u|  + const,

with r_ij = sqrt(w_ij) (ŷ_j(t_i; θ) − d_ij) the loss's residuals (log ŷ − log d with
`log_space=True`: log-normal measurement error, as in Carpenter 2018), σ_j the noise scale of
observed component j (fixed, or fitted with its own prior), and u the coordinates the
optimizer moves: θ_k = exp(u_k) for parameters declared positive (their log), θ_k = u_k for
the others, and σ_j = exp(u) when σ is fitted. Minimizing it with the existing stages
(`jode.fit(posterior, u0)`) is maximum a posteriori (MAP) estimation; `jode.fitting.laplace`
gives the Laplace covariance at the optimum (Bishop 2006, *Pattern Recognition and Machine
Learning*, §4.4; MacKay 1992, "A practical Bayesian framework for backpropagation networks").

The log-Jacobian term (default `jacobian=True`) makes the objective the density of u itself,
so the MAP and the Laplace approximation live in the same coordinates: a normal in log θ is
a log-normal in θ, whose intervals `exp(û ± z se)` are positive by construction (MacKay 1998,
"Choice of basis for Laplace approximation"). With `jacobian=False` the optimum is the mode
of the density of θ in natural units (what Stan's `optimizing` reports), log coordinates then
only help the optimizer.

Example (the model of Carpenter 2018, "Predator-Prey Population Dynamics: the Lotka-Volterra
model in Stan"):

    >>> base = jode.fitting.TrajectoryLoss(jode.models.lotka_volterra, ts, pelts, n_state=2,
    ...                                    log_space=True)
    >>> post = jode.fitting.Posterior(
    ...     base, priors=[LogNormal(log(10), 1)] * 2 + [Normal(1, .5), Normal(.05, .05)] * 2,
    ...     positive=True, sigma_prior=LogNormal(-1, 1))
    >>> result = jode.fit(post, post.to_unconstrained(theta0, sigma0))
    >>> post.natural(result.params), jode.fitting.laplace(post, result.params)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Normal", "LogNormal", "Flat", "Posterior"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _check_scale(name, scale):
    s = np.asarray(scale, float)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"{name} must be finite and > 0; got {scale!r}")


class Normal(eqx.Module):
    """The normal prior N(loc, scale²): log p(x) = −½((x − loc)/scale)² − log scale − ½ log 2π.

    On a parameter declared positive it is the normal truncated to x > 0 (as Stan's
    `real<lower=0>` with a normal prior): the truncation only adds a constant.
    """

    loc: float
    scale: float

    def __check_init__(self):
        _check_scale("Normal's scale", self.scale)

    def log_prob(self, x):
        z = (x - self.loc) / self.scale
        return -0.5 * z**2 - jnp.log(self.scale) - _HALF_LOG_2PI


class LogNormal(eqx.Module):
    """The log-normal prior: log x ~ N(loc, scale²), for x > 0;
    log p(x) = −½((log x − loc)/scale)² − log x − log scale − ½ log 2π."""

    loc: float
    scale: float

    def __check_init__(self):
        _check_scale("LogNormal's scale", self.scale)

    def log_prob(self, x):
        lx = jnp.log(x)
        z = (lx - self.loc) / self.scale
        return -0.5 * z**2 - lx - jnp.log(self.scale) - _HALF_LOG_2PI


class Flat(eqx.Module):
    """The improper flat prior (log p = 0): maximum likelihood in that parameter."""

    def log_prob(self, x):
        return jnp.zeros_like(x)


_PRIOR_TYPES = (Normal, LogNormal, Flat)


def _per_entry(name, value, n, kinds, what):
    """A value, or one per entry (sequence of length n), as a tuple of n."""
    if isinstance(value, kinds) or value is None:
        return (value,) * n
    if not isinstance(value, Sequence) or len(value) != n:
        raise ValueError(
            f"{name} must be one {what} or a sequence of {n} (one per entry of θ); got "
            f"{value!r}"
        )
    for v in value:
        if not (isinstance(v, kinds) or v is None):
            raise ValueError(f"every entry of {name} must be a {what} or None; got {v!r}")
    return tuple(value)


class Posterior(eqx.Module):
    """The negative log posterior of a trajectory loss's parameters (see the module docstring).

    Args:
        loss: a `TrajectoryLoss` over a vector θ of length `n_params` (the likelihood's
            residuals; its weights multiply the residuals as in the loss).
        priors: one prior per entry of θ (`Normal`, `LogNormal`, `Flat` or None for flat),
            or one prior for all.
        positive: which entries of θ are positive and fitted as log θ: True (all), False
            (none), or one bool per entry. Default: the entries with a `LogNormal` prior.
        sigma: the noise scale of each observed component (a number, or one per column of
            the data): fixed and known. None (default) fits σ_j, one per column, as log σ_j.
        sigma_prior: the prior of each fitted σ_j (default flat in log σ: p(σ) ∝ 1/σ).
        jacobian: include log|∂(θ, σ)/∂u| so the objective is the density of the fitted
            coordinates u (default; the Laplace approximation is then a normal in u).
        prior_fn: an extra log-prior term, a function θ -> log p(θ) (natural units, up to a
            constant) added to the per-entry priors: any prior that is not a product of
            independent ones (e.g. a correlated normal), or a penalty.

    The fitted vector is u = [θ in its coordinates…, log σ_1…log σ_d (when fitted)]; use
    `to_unconstrained(θ, σ)` to build a start and `natural(u)` to read an estimate back.
    """

    likelihood: object
    priors: tuple
    positive: tuple = eqx.field(static=True)
    sigma: jax.Array | None
    sigma_prior: object
    jacobian: bool = eqx.field(static=True)
    n_theta: int = eqx.field(static=True)
    prior_fn: object = eqx.field(static=True)

    def __init__(self, loss, priors=None, *, positive=None, sigma=None, sigma_prior=None,
                 jacobian=True, prior_fn=None):
        if not all(hasattr(loss, a) for a in ("predict", "data", "weights", "ts")):
            raise ValueError(
                "loss must be a jode.fitting.TrajectoryLoss (predictions at the data's times "
                f"and their residuals); got {type(loss).__name__}"
            )
        n = loss.n_params
        if n is None:
            raise ValueError(
                "the loss needs n_params= (the length of θ) so that priors can be matched to "
                "its entries: TrajectoryLoss(..., n_params=len(theta0))"
            )
        self.likelihood = loss
        self.n_theta = int(n)
        self.priors = _per_entry("priors", priors, self.n_theta, _PRIOR_TYPES,
                                 "prior (jode.fitting.Normal, LogNormal or Flat)")
        if positive is None:
            positive = tuple(isinstance(p, LogNormal) for p in self.priors)
        elif isinstance(positive, (bool, np.bool_)):
            positive = (bool(positive),) * self.n_theta
        else:
            if len(positive) != self.n_theta:
                raise ValueError(
                    f"positive must be a bool or {self.n_theta} bools (one per entry of θ); "
                    f"got {len(positive)}"
                )
            positive = tuple(bool(p) for p in positive)
        for k, (p, pos) in enumerate(zip(self.priors, positive, strict=True)):
            if isinstance(p, LogNormal) and not pos:
                raise ValueError(
                    f"θ[{k}] has a LogNormal prior (positive values only) but positive[{k}] is "
                    "False: declare it positive (it is then fitted as log θ)"
                )
        self.positive = positive
        d = int(loss.data.shape[1])
        dtype = loss.data.dtype
        if sigma is None:
            self.sigma = None
        else:
            s = np.broadcast_to(np.asarray(sigma, float), (d,)) if np.ndim(sigma) <= 1 and \
                np.size(sigma) in (1, d) else None
            if s is None:
                raise ValueError(
                    f"sigma must be a number or one per data column ({d}); got shape "
                    f"{np.shape(sigma)}"
                )
            _check_scale("sigma", s)
            self.sigma = jnp.asarray(s, dtype)
        if sigma_prior is not None and self.sigma is not None:
            raise ValueError("sigma_prior is for a fitted σ: pass sigma=None to fit it")
        if sigma_prior is not None and not isinstance(sigma_prior, _PRIOR_TYPES):
            raise ValueError(
                f"sigma_prior must be a jode.fitting.LogNormal, Normal or Flat; got "
                f"{sigma_prior!r}"
            )
        self.sigma_prior = sigma_prior
        self.jacobian = bool(jacobian)
        if prior_fn is not None and not callable(prior_fn):
            raise ValueError(f"prior_fn must be a function θ -> log p(θ); got {prior_fn!r}")
        self.prior_fn = prior_fn

    # --- coordinates -------------------------------------------------------------------
    @property
    def n_sigma(self) -> int:
        return 0 if self.sigma is not None else int(self.likelihood.data.shape[1])

    @property
    def n_params(self) -> int:
        return self.n_theta + self.n_sigma

    @property
    def names(self):
        base = getattr(self.likelihood, "names", None) or tuple(
            f"θ[{k}]" for k in range(self.n_theta))
        base = tuple(f"log {n}" if pos else n for n, pos in zip(base, self.positive,
                                                                 strict=True))
        return base + tuple(f"log σ[{j}]" for j in range(self.n_sigma))

    def _log_mask(self):
        return np.asarray(self.positive + (True,) * self.n_sigma)

    def to_unconstrained(self, theta, sigma=None):
        """u from θ (natural units) and, when σ is fitted, σ (a number or one per column)."""
        theta = np.asarray(theta, float).reshape(-1)
        if theta.shape != (self.n_theta,):
            raise ValueError(f"theta must have {self.n_theta} entries; got {theta.shape}")
        pos = np.asarray(self.positive)
        if np.any(theta[pos] <= 0):
            bad = np.flatnonzero(pos & (theta <= 0)).tolist()
            raise ValueError(f"θ entries {bad} are declared positive but are <= 0")
        parts = [np.where(pos, np.log(np.where(pos, theta, 1.0)), theta)]
        if self.n_sigma:
            if sigma is None:
                raise ValueError("σ is fitted: pass a starting sigma (e.g. 0.5)")
            s = np.broadcast_to(np.asarray(sigma, float), (self.n_sigma,))
            _check_scale("sigma", s)
            parts.append(np.log(s))
        elif sigma is not None:
            raise ValueError("σ is fixed on this posterior; do not pass sigma")
        return jnp.asarray(np.concatenate(parts), self.likelihood.data.dtype)

    def split_u(self, u):
        """u -> (θ in natural units, σ per column)."""
        pos = jnp.asarray(self.positive)
        theta = jnp.where(pos, jnp.exp(jnp.where(pos, u[: self.n_theta], 0.0)),
                          u[: self.n_theta])
        sigma = self.sigma if self.sigma is not None else jnp.exp(u[self.n_theta:])
        return theta, sigma

    def natural(self, u):
        """(θ, σ) as NumPy arrays in natural units."""
        theta, sigma = self.split_u(jnp.asarray(u))
        return np.asarray(theta), np.asarray(sigma)

    # --- the objective -----------------------------------------------------------------
    def log_prior(self, u):
        """log p(θ) + log p(σ) + log|∂(θ, σ)/∂u| (the last with `jacobian=True`), with
        `prior_fn(θ)` added when given."""
        theta, sigma = self.split_u(u)
        total = jnp.zeros((), u.dtype)
        for k, prior in enumerate(self.priors):
            if prior is not None:
                total = total + prior.log_prob(theta[k])
        if self.prior_fn is not None:
            total = total + jnp.asarray(self.prior_fn(theta), u.dtype)
        if self.n_sigma and self.sigma_prior is not None:
            total = total + jnp.sum(self.sigma_prior.log_prob(sigma))
        if self.jacobian:
            total = total + jnp.sum(jnp.where(jnp.asarray(self._log_mask()), u, 0.0))
        return total

    def _mask(self, t_end):
        lik = self.likelihood
        return (lik.ts <= t_end)[:, None] & (lik.weights > 0)

    def whitened_residuals(self, u, **overrides):
        """r_ij / σ_j, shape (n, d) (zero where the weight is zero)."""
        theta, sigma = self.split_u(u)
        lik = self.likelihood
        res = lik._residual_matrix(lik.predict(theta, **overrides))
        return jnp.where(lik.weights > 0, res / sigma, 0.0)

    def negative_log_likelihood(self, u, t_end=None, **overrides):
        """Σ over observations up to T of log σ_j + ½ log 2π + r_ij² / (2σ_j²)."""
        lik = self.likelihood
        theta, sigma = self.split_u(u)
        if t_end is None:
            pred = lik.predict(theta, **overrides)
            t_end = jnp.inf
        else:
            pred = lik.predict(theta, t_freeze=lik.freeze_time(t_end), **overrides)
        z = lik._residual_matrix(pred) / sigma
        mask = self._mask(t_end)
        per_obs = jnp.log(sigma) + _HALF_LOG_2PI + 0.5 * z**2
        return jnp.sum(jnp.where(mask, per_obs, 0.0))

    def __call__(self, u, t_end=None):
        """−log p(u | d) + const: the MAP objective (`jode.fit` minimizes it)."""
        ok = jnp.all(jnp.isfinite(u))
        u_safe = jnp.where(jnp.isfinite(u), u, 0.0)
        value = self.negative_log_likelihood(u_safe, t_end) - self.log_prior(u_safe)
        return jnp.where(ok, value, jnp.nan)

    def residuals(self, u, **overrides):
        """The whitened residuals r_ij / σ_j, flattened (the likelihood's least-squares
        part; `jode.fitting.gauss_newton` on a posterior gives its Laplace covariance)."""
        return self.whitened_residuals(u, **overrides).reshape(-1)

    # --- the interface of the fit phases -------------------------------------------------
    def init(self, u):
        return u

    def extract(self, params):
        return params

    def check_theta(self, u, batched=False):
        arr = np.asarray(u)
        shape = arr.shape[1:] if batched else arr.shape
        if shape != (self.n_params,):
            what = f"{self.n_theta} entries of θ" + (
                f" then {self.n_sigma} of log σ" if self.n_sigma else "")
            raise ValueError(
                f"the start must be a vector of length {self.n_params} ({what}) in the fitted "
                f"coordinates{' per row of the batch' if batched else ''}; got shape "
                f"{arr.shape}. Build it with posterior.to_unconstrained(theta, sigma)"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError("the start contains NaN or infinite values")

    def check_model(self, u):
        theta, _ = self.split_u(jnp.asarray(u))
        if hasattr(self.likelihood, "check_model"):
            self.likelihood.check_model(theta)
