"""Latent ODE and RNN baseline: the encoder ignores masked points, the ELBO's KL term
against its closed form, the latent path against a tight solve, and learning on spirals
(in tests/experiments/test_neural_ode_experiments.py), and series of the wrong size."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jode
from jode.nn.latent import LatentODE, RNNBaseline


class _Series(NamedTuple):
    ts: jax.Array  # (n, n_obs)
    ys: jax.Array  # (n, n_obs, 2)


def _data(n=2, n_obs=20):
    """Noisy points of Archimedean spirals r = 0.5 + 0.3 t at sorted random times."""
    k1, k2 = jr.split(jr.key(0))
    ts = jnp.sort(jr.uniform(k1, (n, n_obs), jnp.float64, 0.0, 6.0), axis=1)
    r = 0.5 + 0.3 * ts
    ys = jnp.stack([r * jnp.cos(ts), r * jnp.sin(ts)], -1)
    return _Series(ts, ys + 0.05 * jr.normal(k2, ys.shape, jnp.float64))


def test_encoder_masking_and_elbo_terms():
    s = _data(2)
    m = LatentODE(key=jr.key(1), t_max=float(s.ts.max()) + 0.01, n_steps=20)
    ts, ys = s.ts[0], s.ys[0]
    mask = jnp.arange(20) < 12
    # Masked points change nothing: the same as encoding the first 12 alone, padded.
    mu_m, lv_m = m.encoder(ts, ys, mask)
    mu_12, lv_12 = m.encoder(ts[:12], ys[:12])
    np.testing.assert_allclose(mu_m, mu_12, atol=1e-12)
    np.testing.assert_allclose(lv_m, lv_12, atol=1e-12)
    # ELBO = log-likelihood - KL; with the decoder's mean prediction fixed by the key.
    key = jr.key(5)
    elbo, mse = m.elbo(ts, ys, ts, ys, key)
    mu, lv = m.encoder(ts, ys)
    z0 = mu + jnp.exp(0.5 * lv) * jr.normal(key, mu.shape, mu.dtype)
    pred = m.decode(z0, ts)
    var = 0.3**2
    ll = -0.5 * float(jnp.sum((ys - pred) ** 2)) / var - 0.5 * ys.size * math.log(2 * math.pi * var)
    kl = 0.5 * float(jnp.sum(jnp.exp(lv) + mu**2 - 1 - lv))
    np.testing.assert_allclose(float(elbo), ll - kl, rtol=1e-12)
    np.testing.assert_allclose(float(mse), float(jnp.mean((ys - pred) ** 2)), rtol=1e-12)
    # The latent path is the solve of the latent field (RK4 with 200 steps vs Tsit5 tight;
    # between RK4 steps the saved values come from cubic Hermite interpolation).
    fine = LatentODE(key=jr.key(1), t_max=float(s.ts.max()) + 0.01, n_steps=200)
    ref = jode.solve(fine.func, z0, 0.0, fine.t_max, saveat=ts, rtol=1e-10, atol=1e-10).ys
    np.testing.assert_allclose(fine.latent_path(z0, ts), ref, atol=1e-3)


def test_series_of_the_wrong_size_are_clear_errors():
    s = _data(1)
    m = LatentODE(key=jr.key(1), t_max=float(s.ts.max()) + 0.01, n_steps=4)
    ts, ys3 = s.ts[0], jnp.ones((20, 3))
    with pytest.raises(ValueError, match=r"\(n, 2\) .*got ts \(20,\) and xs \(20, 3\)"):
        m.predict(ts, ys3, ts)
    with pytest.raises(ValueError, match=r"xs of shape \(n, 2\)"):
        m.encoder(ts, s.ys[0][:15])
    with pytest.raises(ValueError, match="mask must have ts's shape"):
        m.encoder(ts, s.ys[0], jnp.ones(19, bool))
    rnn = RNNBaseline(key=jr.key(2))
    with pytest.raises(ValueError, match=r"a series is ts of shape \(n,\) and xs of shape"):
        rnn.predict(ts, ys3, ts)
