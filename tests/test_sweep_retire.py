"""Multi-start fits with retiring lanes (`jode.sweeping.fit_sweep`): starts whose model
overflows or turns too fast to solve fail at once and leave the batch; the others land where
the same fit from that start alone lands, and on scipy's least-squares optimum (solve_ivp at
rtol 1e-11 inside `scipy.optimize.least_squares`)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jode
import jode.models
from jode import fitting as F
from jode import sweeping as S

TS = np.linspace(0.0, 5.0, 26)
TRUTH = np.array([1.0, 1.0, 1.5, 1.0, 3.0, 1.0])  # x0, y0, α, β, δ, γ
GOOD = TRUTH * np.array([
    [0.9, 1.1, 0.9, 1.1, 1.05, 0.95],
    [1.1, 0.9, 1.1, 0.95, 0.9, 1.05],
    [1.05, 1.05, 0.95, 0.9, 1.1, 1.1],
    [0.95, 0.95, 1.05, 1.05, 0.95, 0.9],
])
BAD = np.array([
    [1.0, 1.0, 600.0, 1e-6, 3.0, 1e-6],  # dx/dt = 600 x: overflows near t = 1.2
    [1.0, 1.0, 1e4, 1e4, 1e4, 1e3],  # turns ~8000 times in [0, 5]: beyond the step budget
    [1.0, 1.0, 1.5, -1e3, 3.0, 1.0],  # prey feeds on predators: blows up at t ~ 1e-3
    [1.0, 1.0, 900.0, 1e-6, 3.0, 1e-6],
])
CHUNK = 5


def lv_np(t, y, p):
    a, b, d, g = p
    return [a * y[0] - b * y[0] * y[1], -d * y[1] + g * y[0] * y[1]]


def data():
    from scipy.integrate import solve_ivp

    sol = solve_ivp(lv_np, (0.0, 5.0), TRUTH[:2], t_eval=TS, args=(TRUTH[2:],),
                    method="DOP853", rtol=1e-12, atol=1e-12)
    noise = np.random.default_rng(1).standard_normal((TS.size, 2))
    return sol.y.T + 0.05 * noise


def scipy_optimum(d):
    from scipy.integrate import solve_ivp
    from scipy.optimize import least_squares

    def res(th):
        sol = solve_ivp(lv_np, (0.0, 5.0), th[:2], t_eval=TS, args=(th[2:],),
                        method="DOP853", rtol=1e-11, atol=1e-11)
        return (sol.y.T - d).reshape(-1)

    return least_squares(res, TRUTH, xtol=1e-14, ftol=1e-14, gtol=1e-14).x


def fit_both(chunk_size):
    """The batch (good and blown-up starts interleaved) and each good start fitted alone,
    through the same capped loss and compiled program."""
    d = data()
    loss = F.TrajectoryLoss(jode.models.lotka_volterra, TS, d, n_state=2)
    starts = np.concatenate([GOOD, BAD])[np.array([0, 4, 1, 5, 2, 6, 3, 7])]
    stages = (F.LBFGS(steps=40, linesearch="backtracking"),)
    capped, budget = S.with_step_budget(loss, jnp.asarray(starts))
    opts = dict(chunk_size=chunk_size, chunk_iterations=CHUNK, step_budget=None)
    out = S.fit_sweep(capped, starts, stages, **opts)
    alone = [S.fit_sweep(capped, s[None], stages, **opts) for s in starts[::2]]
    return d, budget, out, alone


BAD_LANES = np.isin(np.arange(8), [1, 3, 5, 7])


def check_answers(d, budget, out, alone):
    theta, losses = out
    # The budget comes from the solves that succeed (LV on [0, 5] at 1e-8: ~100 steps).
    assert budget is not None and 64 <= budget <= 2048
    assert np.all(np.isnan(losses[BAD_LANES]))
    assert np.all(out.status[BAD_LANES] == jode.RESULTS.NONFINITE)
    assert np.all(out.iterations[BAD_LANES] <= 1)  # rejected at their first iteration
    good = out.status[~BAD_LANES]
    assert np.all((good == jode.RESULTS.CONVERGED) | (good == jode.RESULTS.MAX_STEPS))
    ref = scipy_optimum(d)
    for k, single in zip(range(0, 8, 2), alone, strict=True):
        np.testing.assert_allclose(theta[k], single[0][0], rtol=1e-7)
        np.testing.assert_allclose(theta[k], ref, rtol=1e-6)
    assert np.ptp(losses[::2]) <= 1e-9 * losses[0]


def test_one_lane_sweep_retires_blown_up_starts_at_once():
    """The default on CPU: starts one after another in one program, none waiting for
    another, so the work per start is the iterations that start took."""
    d, budget, out, alone = fit_both(1)
    check_answers(d, budget, out, alone)
    assert out.stats["lockstep_iterations_per_lane"] == np.mean(out.iterations)
    # Good lanes at most 40 iterations, bad lanes at most 1.
    assert out.stats["lockstep_iterations_per_lane"] <= (4 * 40 + 4 * 1) / 8


@pytest.mark.slow
def test_lane_pool_refills_freed_lanes():
    """Four vmapped lanes for eight starts: lanes freed by the blown-up starts take the
    waiting ones, so the work is within one chunk per start of what the starts needed."""
    d, budget, out, alone = fit_both(4)
    check_answers(d, budget, out, alone)
    need = sum(CHUNK * math.ceil(k / CHUNK) for k in out.iterations)
    assert out.stats["lockstep_iterations_per_lane"] * 8 <= need + 4 * CHUNK * 4
    assert out.stats["lockstep_iterations_per_lane"] < 40  # lock step without retiring


def test_bad_options_name_the_argument():
    loss = F.TrajectoryLoss(jode.models.lotka_volterra, TS, np.ones((TS.size, 2)), n_state=2)
    with pytest.raises(ValueError, match="chunk_iterations"):
        S.fit_sweep(loss, GOOD, (F.LBFGS(steps=5),), chunk_iterations=0)
    with pytest.raises(ValueError, match="step_budget"):
        S.fit_sweep(loss, GOOD, (F.LBFGS(steps=5),), step_budget=0.5)
    with pytest.raises(ValueError, match="retire=True"):
        S.fit_sweep(loss, GOOD, (F.LBFGS(steps=5),), retire=True,
                    devices=jax.devices()[:1] * 2)
