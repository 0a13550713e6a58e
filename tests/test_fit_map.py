"""MAP fits with priors (`jode.fitting.Posterior`) and the Laplace covariance (`laplace`).

References: the closed-form posterior of a linear-Gaussian model (Bishop 2006, *Pattern
Recognition and Machine Learning*, eq. 3.50-3.51), and the posterior of the Lotka-Volterra
model of the Hudson's Bay pelts in B. Carpenter (2018), "Predator-Prey Population Dynamics:
the Lotka-Volterra model in Stan" (mc-stan.org case study), whose summary table lists each
parameter's posterior mean with the 10% and 90% posterior quantiles.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jode.models
from jode import fitting as F

# --- a linear-Gaussian model: y(t) = a t + b t²/2 from dy/dt = a + b t, y(0) = 0 ----------
TS = np.linspace(0.0, 2.0, 9)
SIGMA = 0.3
PRIOR_MEAN = np.array([0.5, -1.0])
PRIOR_STD = np.array([2.0, 0.7])


def ramp(t, y, args):
    return jnp.stack([args[0] + args[1] * t])


def linear_data():
    rng = np.random.default_rng(0)  # any noise: the closed form is exact for every draw
    X = np.stack([TS, TS**2 / 2], axis=1)
    d = X @ np.array([1.3, -0.4]) + SIGMA * rng.standard_normal(TS.size)
    return X, d


def linear_posterior(priors=None, **kw):
    X, d = linear_data()
    base = F.TrajectoryLoss(ramp, TS, d[:, None], n_state=0, y0=jnp.zeros(1), n_params=2,
                            solver=jode.Tsit5())
    if priors is None:
        priors = [F.Normal(float(m), float(s))
                  for m, s in zip(PRIOR_MEAN, PRIOR_STD, strict=True)]
    return F.Posterior(base, priors, sigma=SIGMA, **kw), X, d


def closed_form(X, d):
    """Bishop (2006) eq. 3.50-3.51 with prior N(m0, S0) and noise σ²: S_N⁻¹ = S0⁻¹ + XᵀX/σ²,
    m_N = S_N (S0⁻¹ m0 + Xᵀd/σ²)."""
    precision = np.diag(1 / PRIOR_STD**2) + X.T @ X / SIGMA**2
    cov = np.linalg.inv(precision)
    mean = cov @ (PRIOR_MEAN / PRIOR_STD**2 + X.T @ d / SIGMA**2)
    return mean, cov


@pytest.mark.parametrize("method", ["hessian", "gauss-newton"])
def test_laplace_covariance_of_a_linear_gaussian_model_is_the_exact_posterior(method):
    post, X, d = linear_posterior()
    mean, cov = closed_form(X, d)
    lap = F.laplace(post, mean, method=method)
    np.testing.assert_allclose(lap.covariance, cov, rtol=1e-8, atol=0)
    np.testing.assert_allclose(lap.stderr, np.sqrt(np.diag(cov)), rtol=1e-8)
    lo, hi = lap.interval(mean, 0.8)
    np.testing.assert_allclose(hi - mean, 1.2815515655446004 * np.sqrt(np.diag(cov)), rtol=1e-8)
    np.testing.assert_allclose(lo, 2 * mean - hi, rtol=1e-12)


def test_objective_of_a_linear_gaussian_model_is_stationary_at_the_posterior_mean():
    post, X, d = linear_posterior()
    mean, _ = closed_form(X, d)
    def objective(u):  # forward-mode derivatives through the solve (cheap to compile)
        return post.negative_log_likelihood(u, adjoint=jode.ForwardMode()) - post.log_prior(u)

    value = post(jnp.asarray(mean))
    grad = jax.jacfwd(objective)(jnp.asarray(mean))
    # the gradient of −log p vanishes at the closed-form mean: the MAP
    scale = np.abs(X.T @ (X @ mean - d)).max() / SIGMA**2
    np.testing.assert_array_less(np.abs(np.asarray(grad)), 1e-9 * scale)
    # the objective is −log p(y, θ) with every normalizing constant
    r = X @ mean - d
    z = (mean - PRIOR_MEAN) / PRIOR_STD
    exact = (np.sum(0.5 * (r / SIGMA) ** 2 + math.log(SIGMA)) + np.sum(0.5 * z**2)
             + np.sum(np.log(PRIOR_STD)) + (TS.size + 2) * 0.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(float(value), exact, rtol=1e-10)


# --- the Hudson's Bay lynx and hares (Carpenter 2018) ----------------------------------------
# Posterior mean and (10%, 90%) quantiles of (z_init[1], z_init[2], θ[1], θ[2], θ[3], θ[4]) =
# (initial hares, initial lynx, α, β, γ, δ), in thousands of pelts and per year, as tabulated
# from the case study's fit summary (print(fit, probs = c(0.1, 0.5, 0.9))).
CARPENTER_MEAN = np.array([33.956, 5.933, 0.545, 0.028, 0.803, 0.024])
CARPENTER_P10 = np.array([30.415, 5.273, 0.465, 0.022, 0.692, 0.020])
CARPENTER_P90 = np.array([37.630, 6.614, 0.630, 0.033, 0.926, 0.029])
NAMES = ("hare0", "lynx0", "alpha", "beta", "gamma", "delta")


def hudson_bay_posterior(**kw):
    from jode_experiments.data import load_lynx_hare

    raw = load_lynx_hare()
    ts = (raw["year"] - raw["year"][0]).astype(np.float64)  # years since 1900
    data = np.stack([raw["hare"], raw["lynx"]], axis=1)  # thousands; hare = prey
    # jode's lotka_volterra: dx = αx − βxy, dy = −δ'y + γ'xy, so args = (α, β, γ, δ) of Stan's
    # du = (α − βv)u, dv = (−γ + δu)v, in Stan's order θ[1..4].
    base = F.TrajectoryLoss(jode.models.lotka_volterra, ts, data, n_state=2, log_space=True,
                            n_params=6, names=NAMES)
    priors = ([F.LogNormal(math.log(10.0), 1.0)] * 2
              + [F.Normal(1.0, 0.5), F.Normal(0.05, 0.05)] * 2)
    return F.Posterior(base, priors, positive=True, sigma_prior=F.LogNormal(-1.0, 1.0), **kw)


@pytest.fixture(scope="module")
def hudson_bay_map():
    post = hudson_bay_posterior()
    u0 = post.to_unconstrained([30.0, 4.0, 0.5, 0.025, 0.8, 0.025], 0.5)
    result = F.fit(post, u0, stages=(F.LBFGS(steps=300),), progress=False)
    return post, result


def test_hudson_bay_map_lies_in_the_case_studys_80_percent_intervals(hudson_bay_map):
    post, result = hudson_bay_map
    assert result.status == F.FitStatus.CONVERGED
    theta, sigma = post.natural(result.params)
    for name, value, lo, hi in zip(NAMES, theta, CARPENTER_P10, CARPENTER_P90, strict=True):
        assert lo <= value <= hi, f"{name} = {value:.4g} outside [{lo}, {hi}]"
    np.testing.assert_array_less(np.abs(theta / CARPENTER_MEAN - 1), 0.05)
    assert np.all((sigma > 0.15) & (sigma < 0.35)), sigma  # log-scale noise, about 0.25


def test_hudson_bay_laplace_intervals(hudson_bay_map):
    """The Laplace covariance in log coordinates: both methods agree, intervals are
    positive and contain the MAP, and the 80% interval of each rate overlaps the case
    study's (the posterior is nearly log-normal)."""
    post, result = hudson_bay_map
    lap = result.uncertainty
    assert isinstance(lap, F.Laplace) and lap.method == "hessian"
    gn = F.laplace(post, result.params, method="gauss-newton")
    np.testing.assert_allclose(gn.stderr, lap.stderr, rtol=0.1)
    theta, _ = post.natural(result.params)
    lo80, hi80 = (x[:6] for x in lap.natural_interval(result.params, 0.8))
    lo95, hi95 = (x[:6] for x in lap.natural_interval(result.params, 0.95))
    assert np.all((0 < lo95) & (lo95 < lo80) & (lo80 < theta) & (theta < hi80) & (hi80 < hi95))
    assert np.all((lo80 < CARPENTER_P90) & (hi80 > CARPENTER_P10))
    assert "80% interval" in lap.summary(result.params, post.names)


def test_prior_fn_adds_a_joint_log_prior():
    """A correlated normal prior through prior_fn: the objective changes by exactly
    −log N(θ; m, C) (the constant included), and the Laplace covariance becomes
    (XᵀX/σ² + C⁻¹)⁻¹ (Bishop 2006, eq. 3.50-3.51)."""
    C = np.array([[1.0, 0.6], [0.6, 0.8]])
    Ci = np.linalg.inv(C)
    logdet = float(np.linalg.slogdet(C)[1])

    def log_normal(theta):
        z = theta - jnp.asarray(PRIOR_MEAN)
        return -0.5 * z @ jnp.asarray(Ci) @ z - 0.5 * logdet - math.log(2 * math.pi)

    flat, X, d = linear_posterior(priors=F.Flat())
    joint, _, _ = linear_posterior(priors=F.Flat(), prior_fn=log_normal)
    u = jnp.asarray([0.9, -0.2])
    z = np.asarray(u) - PRIOR_MEAN
    expected = 0.5 * z @ Ci @ z + 0.5 * logdet + math.log(2 * math.pi)
    np.testing.assert_allclose(float(joint(u)) - float(flat(u)), expected, rtol=1e-10)
    cov = np.linalg.inv(Ci + X.T @ X / SIGMA**2)
    np.testing.assert_allclose(F.laplace(joint, u).covariance, cov, rtol=1e-8)


def test_posterior_arguments_are_checked():
    base = hudson_bay_posterior().likelihood
    with pytest.raises(ValueError, match="a sequence of 6 \\(one per entry of θ\\)"):
        F.Posterior(base, [F.Normal(1.0, 1.0)] * 5)
    with pytest.raises(ValueError, match="positive"):
        F.Posterior(base, F.LogNormal(0.0, 1.0), positive=False)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        F.Normal(0.0, 0.0)
    with pytest.raises(ValueError, match="sigma_prior is for a fitted"):
        F.Posterior(base, F.Flat(), sigma=0.2, sigma_prior=F.LogNormal(0.0, 1.0))
    post = F.Posterior(base, F.Flat(), positive=True)
    with pytest.raises(ValueError, match="length 8"):
        post.check_theta(jnp.zeros(6))
    with pytest.raises(ValueError, match="starting sigma"):
        post.to_unconstrained([1.0] * 6)
    with pytest.raises(ValueError, match="prior_fn must be a function"):
        F.Posterior(base, F.Flat(), prior_fn=3.0)
    with pytest.raises(ValueError, match='method must be "hessian" or "gauss-newton"'):
        F.laplace(post, jnp.zeros(8), method="newton")
