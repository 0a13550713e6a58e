"""Toy data for neural ODEs: noisy 2-D spirals and 2-D densities.

- `spirals`: clockwise and counter-clockwise Archimedean spirals r = a + bθ observed with
  Gaussian noise at irregular times, the latent-ODE task of Chen et al. (2018, §5, Fig. 8).
- `two_moons`, `eight_gaussians`, `checkerboard`: the 2-D densities on which continuous
  normalizing flows are shown (Grathwohl et al. 2019, FFJORD, Fig. 2; the same samplers are
  standard in the flow literature).

All randomness comes from an explicit `jax.random` key; samplers are jit/vmap-friendly.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.random as jr


class Spirals(NamedTuple):
    """Irregularly observed spirals.

    Attributes:
        ts: (n, n_obs) observation times, increasing per row, starting at 0.
        ys: (n, n_obs, 2) noisy observations.
        clean: (n, n_obs, 2) noise-free positions at `ts`.
        t_full: (n_total,) the fine grid the spirals are drawn on.
        y_full: (n, n_total, 2) noise-free spirals on `t_full`.
        clockwise: (n,) bool, the spiral's direction.
    """

    ts: jax.Array
    ys: jax.Array
    clean: jax.Array
    t_full: jax.Array
    y_full: jax.Array
    clockwise: jax.Array


def _check_positive(**kwargs):
    for name, value in kwargs.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive; got {name}={value}")


def spirals(
    key,
    n: int = 1000,
    n_obs: int = 100,
    n_total: int = 500,
    start: float = 0.0,
    stop: float = 6 * math.pi,
    noise_std: float = 0.3,
    a: float = 0.0,
    b: float = 0.3,
    dtype=jnp.float32,
) -> Spirals:
    """Noisy, irregularly sampled 2-D spirals (Chen et al. 2018, §5).

    Each spiral follows r = a + bθ. Counter-clockwise spirals run outwards from the centre,
    x(θ) = r cos θ + 5, y(θ) = r sin θ; clockwise spirals run inwards,
    x(θ) = -r cos θ - 5 (θ reversed), y(θ) = r sin θ. Each trajectory starts at a random
    point of the first half of the fine grid and keeps `n_obs` points chosen at random
    (sorted) from the next `2 n_obs` grid points, so the sampling times are irregular and
    differ between series. Times are shifted to start at 0.

    Args:
        key: a `jax.random` key.
        n: number of spirals (half clockwise, half counter-clockwise, interleaved).
        n_obs: observations per spiral.
        n_total: points of the fine grid on [start, stop].
        start, stop: the angle range θ.
        noise_std: standard deviation of the Gaussian observation noise.
        a, b: the spiral r = a + bθ.
        dtype: floating dtype of the arrays.

    Returns:
        A `Spirals` tuple.

    References:
        Chen, Rubanova, Bettencourt, Duvenaud (2018), Neural Ordinary Differential
        Equations, NeurIPS, §5 and Fig. 8.
    """
    _check_positive(n=n, n_obs=n_obs, n_total=n_total)
    if 3 * n_obs > n_total:
        raise ValueError(
            f"n_total must be >= 3 * n_obs so that irregular windows fit; got "
            f"n_total={n_total}, n_obs={n_obs}"
        )
    if not stop > start:
        raise ValueError(f"stop must exceed start; got start={start}, stop={stop}")
    theta = jnp.linspace(start, stop, n_total, dtype=dtype)
    r_out = a + b * theta
    ccw = jnp.stack([r_out * jnp.cos(theta) + 5.0, r_out * jnp.sin(theta)], axis=-1)
    theta_rev = theta[::-1]
    r_in = a + b * theta_rev
    cw = jnp.stack([-r_in * jnp.cos(theta_rev) - 5.0, r_in * jnp.sin(theta_rev)], axis=-1)
    clockwise = jnp.arange(n) % 2 == 1
    y_full = jnp.where(clockwise[:, None, None], cw[None], ccw[None]).astype(dtype)

    k_start, k_pick, k_noise = jr.split(key, 3)
    first = jr.randint(k_start, (n,), 0, n_total - 2 * n_obs)
    window = 2 * n_obs

    def pick(k):
        return jnp.sort(jr.choice(k, window, (n_obs,), replace=False))

    offsets = jax.vmap(pick)(jr.split(k_pick, n))
    idx = first[:, None] + offsets
    clean = jnp.take_along_axis(y_full, idx[:, :, None], axis=1)
    t_abs = theta[idx]
    ts = t_abs - t_abs[:, :1]
    ys = clean + noise_std * jr.normal(k_noise, clean.shape, dtype)
    return Spirals(ts=ts, ys=ys, clean=clean, t_full=theta, y_full=y_full, clockwise=clockwise)


def two_moons(key, n: int, noise: float = 0.1, dtype=jnp.float32) -> jax.Array:
    """Samples of two interleaving half circles (as scikit-learn's make_moons), centred
    and scaled by 2 so that they span about [-4, 4]: (n, 2)."""
    _check_positive(n=n)
    k_side, k_angle, k_noise = jr.split(key, 3)
    upper = jr.bernoulli(k_side, 0.5, (n,))
    angle = jr.uniform(k_angle, (n,), dtype, 0.0, math.pi)
    x = jnp.where(upper, jnp.cos(angle), 1.0 - jnp.cos(angle))
    y = jnp.where(upper, jnp.sin(angle), 0.5 - jnp.sin(angle))
    pts = jnp.stack([x - 0.5, y - 0.25], axis=-1) * 2.0
    return (pts + noise * 2.0 * jr.normal(k_noise, pts.shape, dtype)).astype(dtype)


def eight_gaussians(key, n: int, scale: float = 4.0, std: float = 0.5, dtype=jnp.float32):
    """A mixture of eight equal Gaussians (std `std`) centred on a circle of radius `scale`
    at angles kπ/4, divided by 1.414 as in FFJORD's sampler: (n, 2)."""
    _check_positive(n=n)
    k_comp, k_noise = jr.split(key)
    comp = jr.randint(k_comp, (n,), 0, 8)
    angle = comp.astype(dtype) * (math.pi / 4)
    centres = scale * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    pts = centres + std * jr.normal(k_noise, (n, 2), dtype)
    return (pts / 1.414).astype(dtype)


def checkerboard(key, n: int, dtype=jnp.float32) -> jax.Array:
    """Uniform samples on the 8 black squares of a 4x4 checkerboard over [-4, 4]^2:
    (n, 2). The density is 1/32 on its support (log-likelihood -log 32 ≈ -3.466)."""
    _check_positive(n=n)
    k_x, k_y, k_row = jr.split(key, 3)
    x1 = jr.uniform(k_x, (n,), dtype, -2.0, 2.0)
    x2_ = jr.uniform(k_y, (n,), dtype, 0.0, 1.0) - jr.randint(k_row, (n,), 0, 2).astype(dtype) * 2.0
    x2 = x2_ + jnp.floor(x1) % 2.0
    return (jnp.stack([x1, x2], axis=-1) * 2.0).astype(dtype)


#: name -> sampler(key, n) for the 2-D densities.
DENSITIES = {
    "two_moons": two_moons,
    "eight_gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}


def sample_density(name: str, key, n: int, dtype=jnp.float32) -> jax.Array:
    """Samples from one of `DENSITIES` by name."""
    if name not in DENSITIES:
        raise ValueError(f"name must be one of {sorted(DENSITIES)}; got name={name!r}")
    return DENSITIES[name](key, n, dtype=dtype)
