"""A universal differential equation (Rackauckas et al. 2020, "Universal Differential
Equations for Scientific Machine Learning", arXiv:2001.04385, §2.1): the
Lotka-Volterra model with its growth and death rates known and its interaction terms
replaced by an unknown small network,

    dx/dt = α x + U₁(x, y),    dy/dt = −δ y + U₂(x, y),

trained on the synthetic Lotka-Volterra data (the trajectory from y(0) = (1, 1)); the learned
U must match (−βxy, γxy) on the range of states the data visits.

The network sees the state divided by a data scale s (the largest observed value) and its
output is multiplied by s², so its weights stay of order one while the terms reach ~20
(plain feature scaling, derived from the data, not from the truth). Training is L-BFGS over
growing time windows (Kidger 2021, §2.2.4): a network that fits [0, T] is a good start
for [0, T + ΔT], while a fit of the whole span from a random network is trapped by the
single-shooting loss's local minima. The first window must hold enough data: on noisy data
a first window of t ≤ 1 (22 observations for 354 weights) lets the network fit the noise,
and the next windows then started from it diverged (1 of 2 runs); with windows of 30% of
the span, 3 of 3 network initializations reached 1.4-2.3% term errors.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jode import fitting as F
from jode.ode.explicit import RK4

ALPHA, DELTA = 1.5, 3.0  # known (the truth of the Lotka-Volterra recipe)
BETA, GAMMA = 1.0, 1.0  # what the network must learn


@dataclasses.dataclass(frozen=True)
class UDEConfig:
    """One training recipe.

    Attributes:
        t1: train on the data with t ≤ t1.
        windows: the growing windows' ends, as fractions of [0, t1].
        lbfgs_steps: L-BFGS iterations per window.
        width, depth: the network (tanh MLP 2 → width^depth → 2).
        dt: the constant RK4 step of the solves (at h = 0.025 the true model's trajectory is
            within 1.1e-5 of a 1e-12 DOP853 solve on [0, 10]; constant steps keep the
            compiled program small).
        seed: the network's initial weights.
        linesearch: of the L-BFGS stages ("zoom" or "backtracking", see `jode.fitting.LBFGS`).
    """

    t1: float = 10.0
    windows: tuple = (0.3, 0.6, 1.0)
    lbfgs_steps: int = 800
    width: int = 16
    depth: int = 2
    dt: float = 0.025
    seed: int = 0
    linesearch: str = "zoom"


FULL = UDEConfig()
QUICK = UDEConfig(t1=3.0, windows=(0.5, 1.0), lbfgs_steps=300)


class UDEField(eqx.Module):
    """f(t, y, params) = (α x + U₁, −δ y + U₂) with U = s² MLP(y / s).

    The network's arrays are the fitted `params`; its structure and the scale are static.
    """

    structure: eqx.nn.MLP = eqx.field(static=True)
    scale: float = eqx.field(static=True)

    def __call__(self, t, y, params):
        del t
        u = self.terms(params, y)
        return jnp.stack([ALPHA * y[0] + u[0], -DELTA * y[1] + u[1]])

    def terms(self, params, y):
        """The learned interaction terms (U₁, U₂) at one state y = (x, y)."""
        mlp = eqx.combine(params, self.structure)
        return self.scale**2 * mlp(y / self.scale)


def make_network(scale: float, width: int = 16, depth: int = 2, seed: int = 0):
    """(arrays, UDEField): a tanh MLP whose last layer starts at zero, so training starts
    from the known linear part (U = 0)."""
    mlp = eqx.nn.MLP(2, 2, width, depth, activation=jnp.tanh, key=jax.random.key(seed),
                     dtype=jnp.float64)
    last = mlp.layers[-1]
    mlp = eqx.tree_at(lambda m: (m.layers[-1].weight, m.layers[-1].bias), mlp,
                      (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
    params, structure = eqx.partition(mlp, eqx.is_inexact_array)
    return params, UDEField(structure, float(scale))


def train_ude(ts, data, y0, config: UDEConfig = FULL, *, progress=True, checkpoint=None):
    """Fit the network to the data (y0 known): (field, loss, result)."""
    ts = np.asarray(ts)
    keep = ts <= config.t1 + 1e-9
    ts, data = ts[keep], np.asarray(data)[keep]
    params, field = make_network(np.max(np.abs(data)), config.width, config.depth, config.seed)
    loss = F.TrajectoryLoss(field, ts, data, y0=jnp.asarray(y0), n_state=0, solver=RK4(),
                            dt0=config.dt)
    window = F.GrowingWindows(fractions=config.windows)
    stages = (F.LBFGS(steps=config.lbfgs_steps, linesearch=config.linesearch),)
    result = F.fit(loss, params, stages=stages, strategy=window, progress=progress,
                   uncertainty=False, checkpoint=checkpoint)
    return field, loss, result


def true_terms(states):
    """(−βxy, γxy) at states of shape (n, 2)."""
    states = np.asarray(states)
    xy = states[:, 0] * states[:, 1]
    return np.stack([-BETA * xy, GAMMA * xy], axis=1)


def learned_terms(field, params, states):
    """The network's (U₁, U₂) at states of shape (n, 2)."""
    return np.asarray(jax.vmap(lambda y: field.terms(params, y))(jnp.asarray(states)))


def term_errors(field, params, states) -> dict:
    """How well the learned terms match the true ones at `states` (n, 2), per term:
    relative L2 error ‖U − T‖/‖T‖ and max error max|U − T| / max|T|."""
    learned, true = learned_terms(field, params, states), true_terms(states)
    diff = learned - true
    return dict(
        rel_l2=(np.linalg.norm(diff, axis=0) / np.linalg.norm(true, axis=0)).tolist(),
        rel_max=(np.max(np.abs(diff), axis=0) / np.max(np.abs(true), axis=0)).tolist(),
        max_abs=np.max(np.abs(diff), axis=0).tolist(),
        max_true=np.max(np.abs(true), axis=0).tolist(),
    )
