"""A universal differential equation (Rackauckas et al. 2020, "Universal Differential
Equations for Scientific Machine Learning", §2.1): Lotka-Volterra with known growth and
death rates whose interaction terms are an unknown small network,

    dx/dt = α x + U₁(x, y),    dy/dt = −δ y + U₂(x, y),

trained on the synthetic Lotka-Volterra data; the learned U should match (−βxy, γxy) on the
range of states the data visits.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import fit as F

ALPHA, DELTA = 1.5, 3.0  # known (the truth of the Lotka-Volterra recipe)
BETA, GAMMA = 1.0, 1.0  # what the network must learn


class UDEField(eqx.Module):
    """f(t, y, params) with the network's arrays as `params` and its structure static."""

    structure: eqx.nn.MLP = eqx.field(static=True)

    def __call__(self, t, y, params):
        del t
        u = self.network(params)(y)
        return jnp.stack([ALPHA * y[0] + u[0], -DELTA * y[1] + u[1]])

    def network(self, params):
        return eqx.combine(params, self.structure)


def make_network(width=16, depth=2, seed=0):
    """(arrays, UDEField): a tanh MLP 2 -> width^depth -> 2 with a small last layer, so
    the first model is near the known linear part."""
    mlp = eqx.nn.MLP(2, 2, width, depth, activation=jnp.tanh, key=jax.random.key(seed),
                     dtype=jnp.float64)
    mlp = eqx.tree_at(lambda m: m.layers[-1].weight, mlp, mlp.layers[-1].weight * 0.1)
    params, structure = eqx.partition(mlp, eqx.is_inexact_array)
    return params, UDEField(structure)


def train_ude(ts, data, y0, *, quick=False, progress=True):
    """Fit the network on the data (y0 known); returns (field, params, result)."""
    params, field = make_network()
    loss = F.TrajectoryLoss(field, ts, data, y0=jnp.asarray(y0), n_state=0)
    t1 = float(ts[-1])
    if quick:
        stages = (F.Adam(steps=150, learning_rate=1e-2),)
        strategy = F.GrowingWindows(fractions=(0.3, 1.0))
    else:
        stages = (F.Adam(steps=800, learning_rate=5e-3), F.LBFGS(steps=1000, gtol=1e-9))
        strategy = F.GrowingWindows(ends=(0.3 * t1, 0.6 * t1, t1))
    result = F.fit(loss, params, stages=stages, strategy=strategy, progress=progress,
                   uncertainty=False)
    return field, result


def interaction_error(field, params, states):
    """Relative L2 error of the learned (U₁, U₂) against (−βxy, γxy) at `states` (n, 2)."""
    states = jnp.asarray(states)
    learned = np.asarray(jax.vmap(field.network(params))(states))
    xy = np.asarray(states[:, 0] * states[:, 1])
    true = np.stack([-BETA * xy, GAMMA * xy], axis=1)
    err = np.linalg.norm(learned - true, axis=0) / np.linalg.norm(true, axis=0)
    return err, learned, true
