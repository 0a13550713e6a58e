"""The parameter-recovery recipes: three systems, their data, fits and checks.

The recipes follow the DiffEqFlux parameter-estimation article this experiment reproduces
(Lotka-Volterra, a Stuart-Landau mean-field oscillator, Lorenz; the truth, noise, spans and
initial guesses below are the article's). θ = [initial state…, rates…].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jode import fitting as F
from jode import models
from jode.ode.explicit import Dopri8
from jode.ode.solve import solve


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    vector_field: object
    names: tuple
    truth: tuple
    guess: tuple
    t1: float
    dt: float
    sigma: float
    article: tuple  # the article's recovered values
    validation_y0: tuple | None = None
    validation_t1: float | None = None
    absolute: bool = True  # the article takes |data + noise| (not for Lorenz, whose x, y < 0)

    @property
    def _dim(self) -> int:
        return 3 if self.name == "lorenz" else 2

    @property
    def ts(self) -> np.ndarray:
        return np.round(np.arange(0.0, self.t1 + self.dt / 2, self.dt), 12)


SYSTEMS = {
    "lotka_volterra": System(
        "lotka_volterra", models.lotka_volterra, ("x0", "y0", "α", "β", "δ", "γ"),
        (1.0, 1.0, 1.5, 1.0, 3.0, 1.0), (0.8, 1.2, 1.2, 1.0, 2.9, 1.1), 10.0, 0.1, 0.1,
        (0.9988, 0.9810, 1.5075, 1.0095, 2.9749, 0.9935),
        validation_y0=(2.0, 0.5), validation_t1=10.0,
    ),
    "stuart_landau": System(
        "stuart_landau", models.stuart_landau, ("ψ0", "R0", "γ", "ω0", "β", "K"),
        (0.0, 0.08, 0.1, 6.28, 0.1, 1.0), (0.1, 0.1, 0.15, 6.0, 0.2, 0.8), 15.0, 0.1, 0.05,
        (0.0229, 0.0892, 0.0830, 6.2752, 0.1159, 0.9019),
        validation_y0=(float(np.pi), 0.6), validation_t1=15.0,
    ),
    "lorenz": System(
        "lorenz", models.lorenz, ("x0", "y0", "z0", "σ", "ρ", "β"),
        (1.0, 0.0, 0.0, 10.0, 28.0, 8.0 / 3.0), (1.1, 0.05, -0.05, 10.2, 28.2, 3.0),
        10.0, 0.05, 0.05, (float("nan"),) * 3 + (10.0, 28.0, 8.0 / 3.0), absolute=False,
    ),
}
ARTICLE_LORENZ_HORIZON = 22.0
HORIZON_THRESHOLD = 1.0


def reference_solve(system, y0, args, ts):
    """A tight independent solve (diffrax running DOP853 at 1e-12) for data and truth."""
    ts = jnp.asarray(ts)
    sol = solve(system.vector_field, jnp.asarray(y0), ts[0], ts[-1], jnp.asarray(args),
                solver=Dopri8(), rtol=1e-12, atol=1e-12, saveat=ts, backend="diffrax",
                max_steps=200_000)
    return np.asarray(sol.ys)


def make_data(system, seed: int | None):
    """The article's recipe: the true trajectory, plus N(0, σ²) noise, then |·| for
    Lotka-Volterra and Stuart-Landau (seed None: noise-free)."""
    truth = np.asarray(system.truth)
    d = system._dim
    clean = reference_solve(system, truth[:d], truth[d:], system.ts)
    if seed is None:
        return clean
    noise = np.asarray(jax.random.normal(jax.random.key(seed), clean.shape, jnp.float64))
    noisy = clean + system.sigma * noise
    return np.abs(noisy) if system.absolute else noisy


def make_loss(system, data, **solve_options):
    return F.TrajectoryLoss(system.vector_field, system.ts, data, n_state=system._dim,
                            n_params=len(system.truth), names=system.names, **solve_options)


def recipe(system, quick: bool = False):
    """(stages, strategy) for a system: a short Adam warm-up then L-BFGS; for chaotic
    Lorenz, L-BFGS over growing windows (a least-squares fit over the whole span from the
    guess meets local minima). Quick mode: L-BFGS alone (one compiled stage fewer; from the
    article's guesses it reaches the same optimum)."""
    if system.name == "lorenz":
        return (F.LBFGS(steps=300),), F.GrowingWindows(fractions=(0.2, 0.4, 0.6, 0.8, 1.0))
    if quick:
        return (F.LBFGS(steps=500),), None
    return (F.Adam(steps=100, learning_rate=1e-2), F.LBFGS(steps=500)), None


def fit_system(system, data, *, quick=False, progress=True, **solve_options):
    loss = make_loss(system, data, **solve_options)
    stages, strategy = recipe(system, quick)
    result = F.fit(loss, jnp.asarray(system.guess), stages=stages, strategy=strategy,
                   progress=progress)
    return loss, result


def relative_errors(system, theta):
    """|θ̂ − θ| / |θ| (absolute error where the truth is 0)."""
    truth = np.asarray(system.truth)
    scale = np.where(truth == 0, 1.0, np.abs(truth))
    return np.abs(np.asarray(theta) - truth) / scale


def seed_report(system, loss, result):
    truth = np.asarray(system.truth)
    lo, hi = result.interval(0.95)
    return dict(
        params=np.asarray(result.params).tolist(),
        stderr=np.asarray(result.stderr).tolist(),
        rel_error=relative_errors(system, result.params).tolist(),
        loss=result.loss,
        loss_at_truth=float(loss(jnp.asarray(truth))),
        covered=((truth >= lo) & (truth <= hi)).tolist(),
        status=result.status.name.lower(),
        iterations=int(len(result.history)),
        wall_time_s=result.wall_time,
    )


def prediction_horizon(system, theta, t1=25.0, dt=0.01, threshold=HORIZON_THRESHOLD):
    """First t where the fitted trajectory is farther than `threshold` (max-norm) from the
    truth, both solved from their own initial states to t1; (t, ts, truth, fitted)."""
    d = system._dim
    ts = np.round(np.arange(0.0, t1 + dt / 2, dt), 12)
    truth = np.asarray(system.truth)
    theta = np.asarray(theta)
    y_true = reference_solve(system, truth[:d], truth[d:], ts)
    y_fit = reference_solve(system, theta[:d], theta[d:], ts)
    off = np.max(np.abs(y_fit - y_true), axis=1) > threshold
    horizon = float(ts[np.argmax(off)]) if off.any() else float(ts[-1])
    return horizon, ts, y_true, y_fit


# --- lynx and hares ---------------------------------------------------------------------
LYNX_NAMES = ("H0", "L0", "α", "β", "δ", "γ")
LYNX_GUESS = (30.0, 4.0, 0.5, 0.025, 0.8, 0.025)
# Carpenter (2018), posterior means (his θ1..θ4 = α, β, δ(his γ), γ(his δ); z_init).
CARPENTER = (33.9, 5.9, 0.55, 0.028, 0.80, 0.024)


def _exp_split(theta):
    p = jnp.exp(theta)
    return p[:2], p[2:]


def fit_lynx_hare(progress=True, stages=None, **solve_options):
    """Lotka-Volterra on the Hudson's Bay pelts (hare = prey), in log space.

    Multiplicative (lognormal) noise as in Carpenter (2018): residuals log ŷ − log d, and
    positive parameters through θ = log p. Returns (loss, result, report); standard errors of
    p by the delta method se(p) = p se(log p), intervals exp(log p̂ ± 1.96 se).
    """
    from jode_experiments.data import load_lynx_hare

    raw = load_lynx_hare()
    ts = (raw["year"] - raw["year"][0]).astype(np.float64)
    data = np.stack([raw["hare"], raw["lynx"]], axis=1)
    loss = F.TrajectoryLoss(models.lotka_volterra, ts, data, log_space=True, split=_exp_split,
                            n_params=6, names=LYNX_NAMES, **solve_options)
    if stages is None:
        stages = (F.Adam(steps=300, learning_rate=2e-2), F.LBFGS(steps=500))
    result = F.fit(loss, jnp.log(jnp.asarray(LYNX_GUESS)), stages=stages, progress=progress)
    log_p, se_log = np.asarray(result.params), np.asarray(result.stderr)
    p = np.exp(log_p)
    lo, hi = result.interval(0.95)
    report = dict(
        names=list(LYNX_NAMES), params=p.tolist(), stderr=(p * se_log).tolist(),
        ci95_low=np.exp(lo).tolist(), ci95_high=np.exp(hi).tolist(), loss=result.loss,
        sigma_log=float(np.sqrt(result.uncertainty.sigma2)),
        carpenter_2018=list(CARPENTER), status=result.status.name.lower(),
        years=raw["year"].tolist(),
    )
    return loss, result, report
