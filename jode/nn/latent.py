"""Latent ODEs for irregularly sampled time series, and an RNN baseline with time gaps.

The generative model (Chen et al. 2018, §5, eq. 11; Rubanova et al. 2019, §3):

    z(t0) ~ N(0, I),   z(t_i) = ODESolve(f_θ, z(t0), t0, t_i),   x_i ~ N(dec(z(t_i)), σ² I),

and the recognition network q(z(t0) | x_{1..N}) = N(μ, diag σ_q²) is a GRU that reads the
observations *backwards in time*, each with the gap to its neighbour as an extra input.
Training maximizes the evidence lower bound

    ELBO = E_q[Σ_i log N(x_i; dec(z(t_i)), σ²)] - KL(q(z0 | x) || N(0, I))

with the reparameterization z0 = μ + σ_q ε. Because the latent state is defined at every
time, the model interpolates and extrapolates at arbitrary times.

`RNNBaseline` is the comparison of Chen et al. Fig. 8: a GRU fed the observations and the
time gaps (Δt as an input feature), rolled out on its own predictions to extrapolate.

References:
    Chen, Rubanova, Bettencourt, Duvenaud (2018), Neural ODEs, NeurIPS, §5, Fig. 8.
    Rubanova, Chen, Duvenaud (2019), Latent ODEs for Irregularly-Sampled Time Series, NeurIPS.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from ..ode.adjoint import AbstractAdjoint, DirectAdjoint
from ..ode.explicit import RK4
from ..ode.solve import solve
from .neural_ode import MLPField


def _check_series(ts, xs, obs_dim):
    if jnp.ndim(ts) != 1 or jnp.shape(xs) != (jnp.shape(ts)[0], obs_dim):
        raise ValueError(
            f"a series is ts of shape (n,) and xs of shape (n, {obs_dim}) (obs_dim={obs_dim});"
            f" got ts {jnp.shape(ts)} and xs {jnp.shape(xs)}"
        )


def _gaps(ts):
    """Δt_i = t_i - t_{i-1} with Δt_0 = 0."""
    return jnp.concatenate([jnp.zeros((1,), ts.dtype), jnp.diff(ts)])


class GRUEncoder(eqx.Module):
    """q(z0 | x): a GRU over (x_i, Δt_i) from the last observation back to the first,
    then a linear map to (μ, log σ_q²)."""

    cell: eqx.nn.GRUCell
    out: eqx.nn.Linear
    latent_dim: int = eqx.field(static=True)

    def __init__(self, obs_dim, hidden, latent_dim, *, key):
        k1, k2 = jr.split(key)
        self.cell = eqx.nn.GRUCell(obs_dim + 1, hidden, key=k1)
        self.out = eqx.nn.Linear(hidden, 2 * latent_dim, key=k2)
        self.latent_dim = latent_dim

    def __call__(self, ts, xs, mask=None):
        """ts (n,), xs (n, obs_dim), mask (n,) bool of observed points -> (μ, log σ_q²)."""
        obs_dim = self.cell.input_size - 1
        if jnp.ndim(ts) != 1 or jnp.shape(xs) != (jnp.shape(ts)[0], obs_dim):
            raise ValueError(
                f"the encoder takes ts of shape (n,) and xs of shape (n, {obs_dim}) (obs_dim="
                f"{obs_dim}); got ts {jnp.shape(ts)} and xs {jnp.shape(xs)}"
            )
        if mask is not None and jnp.shape(mask) != jnp.shape(ts):
            raise ValueError(f"mask must have ts's shape {jnp.shape(ts)}; got {jnp.shape(mask)}")
        mask = jnp.ones(ts.shape, bool) if mask is None else mask
        dtype = self.out.weight.dtype
        ts, xs = ts.astype(dtype), xs.astype(dtype)

        # Going backwards, the gap fed with x_i is the time to the next (later) observed
        # point (0 for the last one); masked points neither update h nor count as next.
        def step(carry, inp):
            h, t_next, seen = carry
            x, t, keep = inp
            gap = jnp.where(seen, t_next - t, jnp.zeros((), dtype))
            h_new = self.cell(jnp.concatenate([x, gap[None]]), h)
            h = jnp.where(keep, h_new, h)
            return (h, jnp.where(keep, t, t_next), seen | keep), None

        h0 = jnp.zeros((self.cell.hidden_size,), dtype)
        init = (h0, jnp.zeros((), dtype), jnp.zeros((), bool))
        (h, _, _), _ = jax.lax.scan(step, init, (xs[::-1], ts[::-1], mask[::-1]))
        stats = self.out(h)
        return stats[: self.latent_dim], stats[self.latent_dim :]


class LatentODE(eqx.Module):
    """Encoder GRU -> z0 -> latent neural ODE -> decoder (Chen et al. 2018, §5).

    Args:
        obs_dim, latent_dim: data and latent dimensions.
        hidden: width of the latent vector field and decoder.
        rnn_hidden: GRU width.
        key: PRNG key.
        solver, n_steps, rtol, atol, adjoint: how the latent ODE is solved (defaults: RK4
            with `n_steps` constant steps over [0, t_max]).
        t_max: end of the latent solve; all query times must lie in [0, t_max].
        obs_std: σ of the Gaussian likelihood.
    """

    encoder: GRUEncoder
    func: MLPField
    decoder: eqx.nn.MLP
    solver: object
    adjoint: AbstractAdjoint
    n_steps: int | None = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)
    obs_std: float = eqx.field(static=True)

    def __init__(
        self,
        obs_dim=2,
        latent_dim=4,
        hidden=20,
        rnn_hidden=25,
        *,
        key,
        t_max,
        solver=None,
        n_steps=40,
        rtol=1e-3,
        atol=1e-4,
        adjoint=None,
        obs_std=0.3,
    ):
        if t_max <= 0:
            raise ValueError(f"t_max must be positive; got t_max={t_max}")
        if obs_std <= 0:
            raise ValueError(f"obs_std must be positive; got obs_std={obs_std}")
        k1, k2, k3 = jr.split(key, 3)
        self.encoder = GRUEncoder(obs_dim, rnn_hidden, latent_dim, key=k1)
        self.func = MLPField(
            latent_dim, hidden, 2, key=k2, activation=jax.nn.elu, time_dependent=False
        )
        self.decoder = eqx.nn.MLP(latent_dim, obs_dim, hidden, 1, activation=jax.nn.relu, key=k3)
        self.solver = RK4() if solver is None else solver
        self.adjoint = DirectAdjoint() if adjoint is None else adjoint
        self.n_steps = n_steps
        self.rtol, self.atol, self.t_max, self.obs_std = rtol, atol, float(t_max), obs_std

    def latent_path(self, z0, ts):
        """z(t) at the times ts (n,) (inside [0, t_max]) from z(0) = z0: (n, latent_dim)."""
        sol = solve(
            self.func,
            z0,
            0.0,
            self.t_max,
            None,
            solver=self.solver,
            n_steps=self.n_steps,
            rtol=self.rtol,
            atol=self.atol,
            saveat=ts,
            adjoint=self.adjoint,
        )
        return sol.ys

    def decode(self, z0, ts):
        """Predicted observations at ts: (n, obs_dim)."""
        return jax.vmap(self.decoder)(self.latent_path(z0, ts))

    def elbo(self, ts_obs, xs_obs, ts_target, xs_target, key, mask=None):
        """ELBO of one series: encode (ts_obs, xs_obs), reconstruct xs_target at ts_target.

        Returns (elbo, mean squared error of the reconstruction).
        """
        mu, logvar = self.encoder(ts_obs, xs_obs, mask)
        z0 = mu + jnp.exp(0.5 * logvar) * jr.normal(key, mu.shape, mu.dtype)
        pred = self.decode(z0, ts_target)
        var = self.obs_std**2
        loglik = -0.5 * jnp.sum((xs_target - pred) ** 2) / var - 0.5 * xs_target.size * math.log(
            2 * math.pi * var
        )
        kl = 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar)
        return loglik - kl, jnp.mean((xs_target - pred) ** 2)

    def predict(self, ts_obs, xs_obs, ts_query, mask=None):
        """Posterior-mean prediction at ts_query from the observations (z0 = μ)."""
        mu, _ = self.encoder(ts_obs, xs_obs, mask)
        return self.decode(mu, ts_query)


class RNNBaseline(eqx.Module):
    """A GRU with time-gap inputs (Chen et al. 2018, Fig. 8's "RNN"): it reads
    (x_i, Δt_i) forward in time and predicts the next observation from its state and the
    gap to it; beyond the observations it is fed its own predictions.
    """

    cell: eqx.nn.GRUCell
    out: eqx.nn.Linear
    obs_dim: int = eqx.field(static=True)

    def __init__(self, obs_dim=2, hidden=25, *, key):
        k1, k2 = jr.split(key)
        self.cell = eqx.nn.GRUCell(obs_dim + 1, hidden, key=k1)
        self.out = eqx.nn.Linear(hidden + 1, obs_dim, key=k2)
        self.obs_dim = obs_dim

    def predict(self, ts_obs, xs_obs, ts_query):
        """Predictions at ts_query (n_q,), after the n_obs observations. The first query
        time is predicted from the last observation; later ones from the previous
        prediction (a rollout). Returns (n_q, obs_dim)."""
        _check_series(ts_obs, xs_obs, self.obs_dim)
        dtype = self.out.weight.dtype
        ts_obs, xs_obs, ts_query = (
            ts_obs.astype(dtype),
            xs_obs.astype(dtype),
            ts_query.astype(dtype),
        )
        gaps = _gaps(ts_obs)

        def read(h, inp):
            return self.cell(inp, h), None

        h0 = jnp.zeros((self.cell.hidden_size,), xs_obs.dtype)
        h, _ = jax.lax.scan(read, h0, jnp.concatenate([xs_obs, gaps[:, None]], -1))
        t_prev = jnp.concatenate([ts_obs[-1:], ts_query[:-1]])
        q_gaps = ts_query - t_prev

        def roll(carry, gap):
            h = carry
            x = self.out(jnp.concatenate([h, gap[None]]))
            h = self.cell(jnp.concatenate([x, gap[None]]), h)
            return h, x

        _, preds = jax.lax.scan(roll, h, q_gaps)
        return preds

    def one_step(self, ts, xs):
        """Teacher-forced one-step-ahead predictions of xs[1:] from xs[:-1]: (n-1, obs_dim)."""
        _check_series(ts, xs, self.obs_dim)
        dtype = self.out.weight.dtype
        ts, xs = ts.astype(dtype), xs.astype(dtype)
        gaps = _gaps(ts)

        def step(h, inp):
            x, gap_in, gap_next = inp
            h = self.cell(jnp.concatenate([x, gap_in[None]]), h)
            return h, self.out(jnp.concatenate([h, gap_next[None]]))

        h0 = jnp.zeros((self.cell.hidden_size,), xs.dtype)
        _, preds = jax.lax.scan(step, h0, (xs[:-1], gaps[:-1], gaps[1:]))
        return preds

    def loss(self, ts_obs, xs_obs, ts_target, xs_target):
        """Mean squared error of one-step predictions on the observed part plus the
        rollout over the target part (the same task the latent ODE is trained on)."""
        one = self.one_step(ts_obs, xs_obs)
        roll = self.predict(ts_obs, xs_obs, ts_target)
        err = jnp.sum((one - xs_obs[1:]) ** 2) + jnp.sum((roll - xs_target) ** 2)
        return err / (one.size + roll.size)
