"""Continuous normalizing flows: log-density of a linear flow against its closed form
(exact trace), Hutchinson's estimator unbiased, sampling inverts the flow, the Gaussian
baseline against scipy, and inputs of the wrong size. Learning the reproductions' densities
is tested in tests/experiments/test_neural_ode_experiments.py."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import jode
from jode.nn.cnf import CNF, gaussian_baseline, standard_normal_logpdf
from jode.nn.neural_ode import MLPField

A = np.array([[0.3, -0.5], [0.2, -0.4]])


class Linear(eqx.Module):
    a: jax.Array

    def __call__(self, t, z, args=None):
        return z @ self.a.T


def test_linear_flow_log_prob_matches_closed_form():
    # z(1) = e^A x and ∫ tr(A) dt = tr(A): log p(x) = log N(e^A x) + tr(A).
    x = jr.normal(jr.key(0), (6, 2))
    cnf = CNF(Linear(jnp.asarray(A)), rtol=1e-10, atol=1e-10)
    ref = standard_normal_logpdf(x @ scipy.linalg.expm(A).T) + np.trace(A)
    np.testing.assert_allclose(cnf.log_prob(x), ref, atol=1e-8)
    # Sampling runs the flow backwards: mapping samples to the base recovers the noise.
    z = jr.normal(jr.key(3), (4, 2))
    xs = cnf.sample(jr.key(3), 4, 2, jnp.float64)
    np.testing.assert_allclose(xs, z @ scipy.linalg.expm(-A).T, atol=1e-8)


def test_rnode_regularizers_of_a_linear_flow():
    """For f = A z: ∫_0^1 ||∂f/∂z||_F² dt = ||A||_F² exactly, and the kinetic energy
    ∫_0^1 ||A e^{At} x||² dt against scipy's quadrature; log p as in log_prob. With
    Hutchinson's noise ε the Jacobian term is ||εᵀA||² (unbiased for ||A||_F²)."""
    import scipy.integrate

    x = jr.normal(jr.key(0), (3, 2))
    cnf = CNF(Linear(jnp.asarray(A)), rtol=1e-10, atol=1e-10)
    logp, ke, jf = cnf.log_prob_regularized(x)
    np.testing.assert_allclose(logp, cnf.log_prob(x), atol=1e-10)
    np.testing.assert_allclose(jf, np.full(3, np.sum(A**2)), rtol=1e-10)
    ref = [
        scipy.integrate.quad(
            lambda t, xi=xi: float(np.sum((A @ scipy.linalg.expm(A * t) @ xi) ** 2)),
            0.0,
            1.0,
            epsabs=1e-13,
            epsrel=1e-12,
        )[0]
        for xi in np.asarray(x)
    ]
    np.testing.assert_allclose(ke, ref, rtol=1e-8)
    hutch = CNF(Linear(jnp.asarray(A)), trace="hutchinson", solver=jode.RK4(), n_steps=2)
    # ε = (1, 1): ||εᵀA||² = (a11 + a21)² + (a12 + a22)², the same at every time.
    jf_h = hutch.log_prob_regularized(x[:1], jr.key(1))[2]
    eps = np.asarray(jr.rademacher(jr.key(1), (1, 2), dtype=x.dtype))
    np.testing.assert_allclose(jf_h, np.sum((eps @ A) ** 2), rtol=1e-10)
    with pytest.raises(ValueError, match="needs key"):
        hutch.log_prob_regularized(x)


def test_hutchinson_is_unbiased():
    x = jr.normal(jr.key(0), (3, 2))
    cnf = CNF(Linear(jnp.asarray(A)), trace="hutchinson", solver=jode.RK4(), n_steps=4)
    exact = CNF(Linear(jnp.asarray(A)), trace="exact", solver=jode.RK4(), n_steps=4).log_prob(x)
    draws = jax.vmap(lambda k: cnf.log_prob(x, k))(jr.split(jr.key(1), 1000))
    # Rademacher noise: εᵀAε = tr A + (a12 + a21) ε1 ε2, mean tr A, std |a12 + a21| = 0.3.
    np.testing.assert_allclose(jnp.mean(draws, 0), exact, atol=4 * 0.3 / np.sqrt(1000))
    assert float(jnp.std(draws[:, 0])) > 0.1


def test_gaussian_baseline_matches_scipy():
    x_tr = jr.normal(jr.key(0), (500, 2)) @ jnp.array([[1.0, 0.5], [0.0, 2.0]]) + 1.0
    x_te = jr.normal(jr.key(1), (50, 2))
    mean = np.mean(np.asarray(x_tr), 0)
    cov = np.cov(np.asarray(x_tr).T, bias=True)
    ref = scipy.stats.multivariate_normal(mean, cov).logpdf(np.asarray(x_te)).mean()
    np.testing.assert_allclose(gaussian_baseline(x_tr, x_te), ref, rtol=1e-10)


def test_samples_of_the_wrong_size_are_clear_errors():
    cnf = CNF(MLPField(2, 8, 1, key=jr.key(0)), solver=jode.RK4(), n_steps=2)
    with pytest.raises(ValueError, match=r"MLPField\(dim=2\) .*got y of shape \(5, 3\)"):
        cnf.log_prob(jnp.ones((5, 3)))
    with pytest.raises(ValueError, match=r"x must be a batch \(B, d\)"):
        cnf.log_prob(jnp.ones(2))
