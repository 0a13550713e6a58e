"""Parameter recovery: losses, stages, strategies, multi-start, uncertainty, checkpoints.

References: the article's Lotka-Volterra recipe (truth known, data from a tight independent
solve), scipy's `curve_fit` on the closed-form logistic curve (optimum and covariance), the
uninterrupted fit (for resume), and central finite differences (for the Jacobian).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import curve_fit

import jode
import jode.models
from jode import fit as F
from jode.fitting import checkpoint as ckpt
from jode.fitting.uncertainty import _residuals as residuals_jit
from jode_experiments import recovery_systems as R


# --- a problem with a closed form: logistic growth dy/dt = r y (1 − y/K) ------------------
def logistic(t, y, args):
    return args[0] * y * (1 - y / args[1])


def logistic_exact(t, y0, r, K):
    e = np.exp(r * t)
    return K * y0 * e / (K + y0 * (e - 1))


TS = np.linspace(0.0, 10.0, 41)
TRUTH = np.array([0.5, 0.9, 10.0])
RNG = np.random.default_rng(3)
NOISY = logistic_exact(TS, *TRUTH) + 0.2 * RNG.standard_normal(TS.shape)
CONST = dict(solver=jode.RK4(), n_steps=400)  # constant steps: a cheap compile


def logistic_loss(data=NOISY, **kw):
    return F.TrajectoryLoss(logistic, TS, np.asarray(data)[:, None], n_state=1, n_params=3,
                            **{**CONST, **kw})


@pytest.fixture(scope="module")
def scipy_fit():
    popt, pcov = curve_fit(lambda t, *p: logistic_exact(t, *p), TS, NOISY, p0=TRUTH,
                           xtol=1e-14, ftol=1e-14)
    return popt, np.sqrt(np.diag(pcov))


@pytest.fixture(scope="module")
def logistic_result():
    return F.fit(logistic_loss(), jnp.array([1.0, 0.5, 8.0]), stages=(F.LBFGS(steps=300),),
                 progress=False)


def test_logistic_optimum_and_stderr_match_scipy(logistic_result, scipy_fit):
    popt, perr = scipy_fit
    res = logistic_result
    assert res.status == F.FitStatus.CONVERGED
    np.testing.assert_allclose(res.params, popt, rtol=2e-5)
    # The Gauss-Newton standard errors are scipy's (same s² (JᵀJ)⁻¹ with N − p dof).
    np.testing.assert_allclose(res.stderr, perr, rtol=2e-3)
    lo, hi = res.interval(0.95)
    np.testing.assert_allclose(hi - lo, 2 * 1.959963984540054 * perr, rtol=2e-3)


def test_jacobian_matches_finite_differences(logistic_result):
    loss = logistic_loss()
    theta = jnp.asarray(logistic_result.params)
    J = np.asarray(F.jacobian(loss, theta))
    res = residuals_jit
    fd = np.empty_like(J)
    for k in range(3):
        h = 1e-6 * max(1.0, abs(float(theta[k])))
        e = jnp.zeros(3).at[k].set(h)
        fd[:, k] = (np.asarray(res(loss, theta + e)) - np.asarray(res(loss, theta - e))) / (2 * h)
    np.testing.assert_allclose(J, fd, rtol=1e-6, atol=1e-8)


def test_multistart_picks_the_global_optimum(scipy_fit):
    guesses = jnp.array([[1.0, 0.5, 8.0], [0.2, 2.0, 15.0], [2.0, 0.3, 5.0]])
    res = F.fit(logistic_loss(), guesses, stages=(F.LBFGS(steps=300),), batched=True,
                progress=False)
    assert res.all_losses.shape == (3,)
    assert res.loss == pytest.approx(np.min(res.all_losses))
    np.testing.assert_allclose(res.params, scipy_fit[0], rtol=2e-5)
    # Every start's own estimate agrees with an unbatched fit from it.
    single = F.fit(logistic_loss(), guesses[1], stages=(F.LBFGS(steps=300),), progress=False,
                   uncertainty=False)
    np.testing.assert_allclose(res.all_params[1], single.params, rtol=1e-6)


@pytest.mark.slow
def test_strategies_recover_noise_free_logistic():
    clean = logistic_exact(TS, *TRUTH)
    loss = logistic_loss(clean)
    guess = jnp.array([1.0, 0.5, 8.0])
    stages = (F.LBFGS(steps=200),)
    windows = F.fit(loss, guess, stages=stages, strategy=F.GrowingWindows((0.3, 1.0)),
                    progress=False, uncertainty=False)
    shooting = F.fit(loss, guess, stages=stages, strategy=F.MultipleShooting(4, polish=stages),
                     progress=False, uncertainty=False)
    for res in (windows, shooting):
        np.testing.assert_allclose(res.params, TRUTH, rtol=1e-5)
    assert len(windows.phase_ends) == 2 and len(shooting.phase_ends) == 2


def test_checkpoint_resume_gives_the_uninterrupted_fit(tmp_path, monkeypatch):
    loss = logistic_loss()
    guess = jnp.array([1.0, 0.5, 8.0])
    stages = (F.Adam(steps=120, learning_rate=5e-2), F.LBFGS(steps=20))
    full = F.fit(loss, guess, stages=stages, progress=False, uncertainty=False)
    path = tmp_path / "fit.npz"
    real_save, calls = ckpt.save, []

    def crash_after_two(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        F.fit(loss, guess, stages=stages, progress=False, checkpoint=path)
    monkeypatch.setattr(ckpt, "save", real_save)
    with np.load(path, allow_pickle=False) as z:  # plain arrays, no pickle
        assert int(z["phase"]) == 0
    resumed = F.fit(loss, guess, stages=stages, progress=False, checkpoint=path,
                    uncertainty=False)
    np.testing.assert_allclose(resumed.params, full.params, rtol=1e-12)
    np.testing.assert_allclose(resumed.history, full.history, rtol=1e-12)
    with pytest.raises(ValueError, match="belongs to another fit"):
        F.fit(loss, guess, stages=(F.LBFGS(steps=20),), progress=False, checkpoint=path)


# --- growing windows: a window's loss ignores (and survives) the span it masks ---------
def blowup(t, y, args):
    return args[0] * y**2  # y(t) = y0 / (1 − a y0 t): infinite at t = 1/(a y0)


def test_window_loss_is_the_truncated_loss_even_past_a_blow_up():
    """dy/dt = a y² from y0 = 1 with a = 1 blows up at t = 1; data run to t = 2. The loss of
    the window t ≤ 0.5 and its gradient are those of the closed form on t ≤ 0.5 (finite),
    while the whole-span loss is NaN (the optimizer rejects such a point)."""
    ts = np.linspace(0.0, 2.0, 21)
    data = (1.0 / (1.0 - 0.4 * ts))[:, None]  # a = 0.4: finite on [0, 2]
    loss = F.TrajectoryLoss(blowup, ts, data, n_state=1, n_params=2, solver=jode.RK4(),
                            dt0=0.005)
    theta = jnp.array([1.0, 1.0])
    window = ts <= 0.5

    def exact(th):
        y = th[0] / (1.0 - th[1] * th[0] * ts[window])
        return jnp.mean((y - data[window, 0]) ** 2)

    value, grad = jax.jit(jax.value_and_grad(lambda th, lo: lo(th, 0.5)))(theta, loss)
    np.testing.assert_allclose(value, exact(theta), rtol=1e-8)
    np.testing.assert_allclose(grad, jax.grad(exact)(theta), rtol=1e-7)
    assert np.isnan(float(jax.jit(lambda th, lo: lo(th))(theta, loss)))


# --- a universal differential equation (Rackauckas et al. 2020) -------------------------
def _ude_errors(config):
    from jode_experiments import recovery_ude as U

    system = R.SYSTEMS["lotka_volterra"]
    clean = lv_data(None)  # scipy DOP853: independent of the solver being trained
    field, _, res = U.train_ude(system.ts, clean, system.truth[:2], config, progress=False)
    train = system.ts <= config.t1 + 1e-9
    return U.term_errors(field, res.params, clean[train])


def test_ude_learns_the_interaction_terms_on_a_short_window():
    """The network U(x, y) replacing the interaction terms of Lotka-Volterra, trained on the
    noise-free trajectory for t ≤ 1.5 (L-BFGS with a backtracking line search: less to
    compile), matches (−βxy, γxy) on the states visited there to 5% (relative L2) and 10%
    (max error relative to the largest term); measured 3.8% and 7.1% (worst term)."""
    from jode_experiments.recovery_ude import UDEConfig

    config = UDEConfig(t1=1.5, windows=(0.5, 1.0), lbfgs_steps=500, linesearch="backtracking")
    err = _ude_errors(config)
    assert max(err["rel_l2"]) < 0.05, err
    assert max(err["rel_max"]) < 0.10, err


@pytest.mark.slow
def test_ude_quick_recipe_learns_the_interaction_terms():
    """`jode reproduce recovery --quick`'s UDE (t ≤ 3, three windows of L-BFGS): the learned
    terms within 2% (relative L2) and 3% (relative max) of −βxy, γxy; measured 0.81% and
    0.63% (worst term)."""
    from jode_experiments.recovery_ude import QUICK

    err = _ude_errors(QUICK)
    assert max(err["rel_l2"]) < 0.02, err
    assert max(err["rel_max"]) < 0.03, err


# --- the article's Lotka-Volterra recipe ---------------------------------------------
def lv_data(seed):
    """The recipe's data from scipy's DOP853 at 1e-12 (an independent solver)."""
    from scipy.integrate import solve_ivp

    system = R.SYSTEMS["lotka_volterra"]
    truth = np.asarray(system.truth)
    sol = solve_ivp(lambda t, y: np.asarray(jode.models.lotka_volterra(t, y, truth[2:])),
                    (0.0, 10.0), truth[:2], method="DOP853", t_eval=system.ts, rtol=1e-12,
                    atol=1e-12)
    clean = sol.y.T
    if seed is None:
        return clean
    return np.abs(clean + system.sigma * np.random.default_rng(seed).standard_normal(clean.shape))


def test_lotka_volterra_recovery_from_article_guess():
    """Noise-free: within 1e-4 of the truth; noisy: at least as good as the truth, with the
    truth inside the 95% intervals (the same compiled fit serves both). Constant RK4 steps
    (h = 0.025) keep the compile short; `-m slow` runs the adaptive recipe on all systems."""
    system = R.SYSTEMS["lotka_volterra"]
    stages = (F.LBFGS(steps=300),)
    res = F.fit(R.make_loss(system, lv_data(None), **CONST), jnp.asarray(system.guess),
                stages=stages, progress=False)
    assert np.max(R.relative_errors(system, res.params)) < 1e-4
    loss = R.make_loss(system, lv_data(0), **CONST)
    res = F.fit(loss, jnp.asarray(system.guess), stages=stages, progress=False)
    assert res.loss <= float(loss(jnp.asarray(system.truth)))
    lo, hi = res.interval(0.95)
    covered = (np.asarray(system.truth) >= lo) & (np.asarray(system.truth) <= hi)
    assert covered.sum() >= 5
    # Errors are set by the noise: ~1% with ~1% standard errors (the reference).
    assert np.max(R.relative_errors(system, res.params)) < 0.05
    assert np.all(res.stderr / np.abs(res.params) < 0.03)


# --- bad input: a ValueError naming the argument and the fix -------------------------
@pytest.mark.parametrize(
    "ts, data, match",
    [
        (TS, np.where(TS == TS[3], np.nan, NOISY)[:, None], r"data contains NaN .*rows \[3\]"),
        (TS, np.where(TS == TS[5], np.inf, NOISY)[:, None], r"data contains NaN or infinite"),
        (TS[:-1], NOISY[:, None], r"ts and data must have the same number of times"),
        (TS, NOISY[:-2, None], r"ts and data must have the same number of times"),
        (TS[::-1], NOISY[:, None], r"ts must be strictly increasing.*Sort the observations"),
        (np.where(TS == TS[4], TS[2], TS), NOISY[:, None], r"ts must be strictly increasing"),
        (np.where(TS == TS[4], np.nan, TS), NOISY[:, None], r"ts contains NaN"),
        (TS, NOISY, r"data must be 2-D .*data\[:, None\]"),
        (TS, NOISY[:, None, None], r"data must be 2-D"),
    ],
    ids=["nan-data", "inf-data", "short-ts", "short-data", "reversed-ts", "repeated-ts",
         "nan-ts", "1d-data", "3d-data"],
)
def test_bad_data_is_a_clear_error(ts, data, match):
    with pytest.raises(ValueError, match=match):
        F.TrajectoryLoss(logistic, ts, data, n_state=1)


def test_bad_guess_and_options_are_clear_errors():
    loss = logistic_loss()
    with pytest.raises(ValueError, match=r"theta0 must be a vector of length n_params=3"):
        F.fit(loss, jnp.array([1.0, 0.5]), progress=False)
    with pytest.raises(ValueError, match=r"theta0 must be a vector of length n_params=3"):
        F.fit(loss, jnp.array([1.0, 0.5, 8.0, 1.0]), progress=False)
    with pytest.raises(ValueError, match=r"n_params=3 .*per row of the batch; got shape \(2, 2\)"):
        F.fit(loss, jnp.ones((2, 2)), batched=True, progress=False)
    with pytest.raises(ValueError, match="theta0 contains NaN"):
        F.fit(loss, jnp.array([1.0, jnp.nan, 8.0]), progress=False)
    with pytest.raises(ValueError, match="weights must broadcast"):
        F.TrajectoryLoss(logistic, TS, NOISY[:, None], n_state=1, weights=np.ones(3))
    with pytest.raises(ValueError, match="n_state"):
        F.TrajectoryLoss(logistic, TS, NOISY[:, None], n_state=2)
    with pytest.raises(ValueError, match="positive data"):
        F.TrajectoryLoss(logistic, TS, NOISY[:, None] - 100.0, n_state=1, log_space=True)
    with pytest.raises(ValueError, match="strategy"):
        F.fit(loss, jnp.array([1.0, 0.5, 8.0]), strategy="windows", progress=False)
    with pytest.raises(ValueError, match="steps"):
        F.LBFGS(steps=0)
    with pytest.raises(ValueError, match="linesearch must be"):
        F.LBFGS(linesearch="wolfe")
    with pytest.raises(ValueError, match="too many"):
        loss.multiple_shooting(30)


# --- the full recipes (slow): the acceptance on all three systems ---------------
@pytest.mark.slow
def test_recipes_meet_the_acceptance_on_all_systems():
    """Noise-free within 1e-4 from the article's guesses; 5 noise seeds per system at the
    least-squares optimum (loss ≤ loss at the truth); the truth inside the 95% intervals in
    ≥ 90% of (seed, parameter) cases; Lorenz σ, ρ, β within 0.1%."""
    covered = []
    for name, system in R.SYSTEMS.items():
        _, res = R.fit_system(system, R.make_data(system, None), progress=False)
        assert np.max(R.relative_errors(system, res.params)) <= 1e-4, name
        for seed in range(5):
            loss, res = R.fit_system(system, R.make_data(system, seed), progress=False)
            assert res.loss <= float(loss(jnp.asarray(system.truth))), (name, seed)
            lo, hi = res.interval(0.95)
            truth = np.asarray(system.truth)
            covered += list((truth >= lo) & (truth <= hi))
            if name == "lorenz":
                assert np.max(R.relative_errors(system, res.params)[3:]) <= 1e-3, seed
    assert np.mean(covered) >= 0.9


@pytest.mark.slow
def test_lynx_hare_fit_agrees_with_the_published_estimates():
    """Log-space least squares on the Hudson's Bay pelts lands near Carpenter's (2018)
    posterior means (a different estimator: within 25%), with finite standard errors."""
    _, res, report = R.fit_lynx_hare(progress=False)
    assert res.status == F.FitStatus.CONVERGED
    np.testing.assert_allclose(report["params"], R.CARPENTER, rtol=0.25)
    assert np.all(np.isfinite(report["stderr"])) and np.all(np.asarray(report["stderr"]) > 0)
