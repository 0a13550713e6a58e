"""Training loops for the latent ODE (spirals, Chen et al. 2018 §5) and the continuous
normalizing flows on 2-D densities (§4, FFJORD), with their baselines."""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

from jode._training import run_chunks
from jode.nn.cnf import CNF, gaussian_baseline
from jode.nn.latent import LatentODE, RNNBaseline
from jode.nn.neural_ode import MLPField
from jode.ode.explicit import RK4, Tsit5
from jode_experiments.data.toy import sample_density, spirals


def _fit(model, loss_fn, n_iter, lr, key, desc, progress=True, cosine=False):
    """Adam on loss_fn(model, key) (learning rate constant, or cosine-decayed to 0 over
    n_iter); returns (model, losses, seconds)."""
    opt = optax.adam(optax.cosine_decay_schedule(lr, n_iter) if cosine else lr)
    state = opt.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, state, key):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, key)
        updates, state = opt.update(grads, state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, loss

    def advance(run):  # one Adam step of (model, state, key, loss at the step's start)
        model, state, key, _ = run
        key, sub = jr.split(key)
        model, state, loss = step(model, state, sub)
        return model, state, key, loss

    start = time.perf_counter()
    out = run_chunks(advance, (model, state, key, None), total=n_iter, chunk=1,
                     loss_of=lambda run: run[3], progress=progress, desc=desc)
    return out.state[0], out.losses, time.perf_counter() - start


# ----------------------------------------------------------------------------- latent ODE


def spiral_split(key, n_train, n_test, n_obs, n_total):
    data = spirals(key, n=n_train + n_test, n_obs=n_obs, n_total=n_total)
    half = n_obs // 2
    take = lambda a, s: a[s]  # noqa: E731
    train, test = slice(0, n_train), slice(n_train, n_train + n_test)
    return data, half, train, test, take


def train_latent(key, *, n_train, n_test, n_obs, n_total, n_iter, lr=1e-2, progress=True):
    """Train a latent ODE and a time-gap RNN to read the first half of each spiral and
    predict all of it; report test MSE (against the noise-free spiral) of the
    interpolation (first half) and extrapolation (second half)."""
    k_data, k_lat, k_rnn, k_fit = jr.split(key, 4)
    data, half, train, test, _ = spiral_split(k_data, n_train, n_test, n_obs, n_total)
    t_max = float(jnp.max(data.ts)) + 1e-3
    latent = LatentODE(key=k_lat, t_max=t_max, n_steps=max(20, int(4 * t_max)))
    rnn = RNNBaseline(key=k_rnn)
    ts_tr, ys_tr = data.ts[train], data.ys[train]

    def latent_loss(model, key):
        keys = jr.split(key, ts_tr.shape[0])
        elbo, _ = jax.vmap(lambda t, y, k: model.elbo(t[:half], y[:half], t, y, k))(
            ts_tr, ys_tr, keys
        )
        return -jnp.mean(elbo) / n_obs

    def rnn_loss(model, key):
        del key
        return jnp.mean(
            jax.vmap(lambda t, y: model.loss(t[:half], y[:half], t[half:], y[half:]))(ts_tr, ys_tr)
        )

    latent, lat_losses, lat_time = _fit(
        latent, latent_loss, n_iter, lr, k_fit, "latent ODE", progress
    )
    rnn, rnn_losses, rnn_time = _fit(rnn, rnn_loss, n_iter, lr, k_fit, "RNN baseline", progress)

    ts_te, ys_te, clean_te = data.ts[test], data.ys[test], data.clean[test]
    lat_pred = jax.vmap(lambda t, y: latent.predict(t[:half], y[:half], t))(ts_te, ys_te)
    rnn_pred = jax.vmap(lambda t, y: rnn.predict(t[:half], y[:half], t[half:]))(ts_te, ys_te)

    def mse(a, b):
        return float(jnp.mean((a.astype(b.dtype) - b) ** 2))

    metrics = {
        "latent_interp_mse": mse(lat_pred[:, :half], clean_te[:, :half]),
        "latent_extrap_mse": mse(lat_pred[:, half:], clean_te[:, half:]),
        "rnn_extrap_mse": mse(rnn_pred, clean_te[:, half:]),
        "latent_loss_first": lat_losses[0],
        "latent_loss_last": lat_losses[-1],
        "rnn_loss_first": rnn_losses[0],
        "rnn_loss_last": rnn_losses[-1],
        "latent_train_time_s": lat_time,
        "rnn_train_time_s": rnn_time,
    }
    # A dense prediction for the figure: the first two test spirals on a fine grid.
    fine = jnp.linspace(0.0, t_max - 1e-3, 200, dtype=ts_te.dtype)
    curves = [latent.predict(ts_te[i, :half], ys_te[i, :half], fine) for i in range(2)]
    plot = {
        "ts": ts_te[:2],
        "ys": ys_te[:2],
        "clean": clean_te[:2],
        "fine": fine,
        "latent": jnp.stack(curves),
        "rnn": rnn_pred[:2],
        "half": half,
    }
    return metrics, plot


# ----------------------------------------------------------------------------------- CNF


def train_cnf(
    key,
    name,
    *,
    n_iter,
    batch,
    n_steps,
    width=64,
    depth=3,
    lr=3e-3,
    n_test=2000,
    eval_tol=1e-5,
    kinetic=0.0,
    jacobian=0.0,
    progress=True,
):
    """A CNF (exact trace, RK4 with n_steps) by maximum likelihood on fresh samples of the
    density `name` (Adam, cosine-decayed learning rate); returns metrics (held-out
    log-likelihood, evaluated by Tsit5 at rtol = atol = eval_tol, vs the Gaussian baseline
    fitted to 20,000 training samples) and the trained model. `kinetic` and `jacobian`
    weight RNODE's regularizers (`CNF.log_prob_regularized`)."""
    k_model, k_fit, k_test, k_train = jr.split(key, 4)
    field = MLPField(2, width, depth, key=k_model, final_scale=0.1)
    cnf = CNF(field, solver=RK4(), n_steps=n_steps, trace="exact")

    def loss(model, key):
        x = sample_density(name, key, batch)
        if not (kinetic or jacobian):
            return -jnp.mean(model.log_prob(x))
        logp, ke, jf = model.log_prob_regularized(x)
        return -jnp.mean(logp) + kinetic * jnp.mean(ke) + jacobian * jnp.mean(jf)

    x_test = sample_density(name, k_test, n_test)
    # One jitted function: the untrained and the trained flow share its compiled program.
    held_out = eqx.filter_jit(lambda m, x: jnp.mean(m.log_prob(x)))
    ll_init = float(held_out(cnf, x_test))
    cnf, losses, seconds = _fit(cnf, loss, n_iter, lr, k_fit, f"CNF {name}", progress, cosine=True)
    ll_train_solver = float(held_out(cnf, x_test))
    # The held-out figure is computed with a tight adaptive solve of the trained field, so
    # that the fixed-step discretization used in training cannot inflate the likelihood.
    tight = CNF(cnf.func, solver=Tsit5(), rtol=eval_tol, atol=eval_tol, trace="exact")
    ll = float(held_out(tight, x_test))
    x_train = sample_density(name, k_train, 20000)
    ll_gauss = float(gaussian_baseline(x_train, x_test))
    return {
        "cnf_test_ll": ll,
        "cnf_test_ll_training_solver": ll_train_solver,
        "eval_tol": eval_tol,
        "n_iter": n_iter,
        "batch": batch,
        "n_steps": n_steps,
        "kinetic": kinetic,
        "jacobian": jacobian,
        "cnf_init_test_ll": ll_init,
        "gaussian_test_ll": ll_gauss,
        "margin_nats": ll - ll_gauss,
        "train_time_s": seconds,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }, cnf


def density_grid(cnf, lim=4.5, n=80):
    """log p on an n x n grid over [-lim, lim]^2 (for heat maps)."""
    axis = jnp.linspace(-lim, lim, n, dtype=jnp.float32)
    xx, yy = jnp.meshgrid(axis, axis)
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
    logp = eqx.filter_jit(lambda m, p: m.log_prob(p))(cnf, pts)
    return axis, jnp.reshape(logp, (n, n))
