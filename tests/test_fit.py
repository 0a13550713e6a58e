"""Parameter recovery: losses, stages, strategies, multi-start, uncertainty, checkpoints,
bad input and compilation reuse.

References: Lotka-Volterra with known truth (data from scipy's DOP853 at 1e-12), scipy's
`curve_fit` on the closed-form logistic curve (optimum and covariance), the uninterrupted
fit (for resume), and central finite differences (for the Jacobian). The reproductions'
recipes (all systems, the universal ODE, lynx-hare) are tested in
tests/experiments/test_recovery.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.optimize import curve_fit

import jode
import jode.models
from jode import fitting as F
from jode.fitting import checkpoint as ckpt
from jode.fitting.uncertainty import residuals_and_jacobian


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
    res = jax.jit(lambda loss, theta: loss.residuals(theta))
    r, J_too = residuals_and_jacobian(loss, theta)
    np.testing.assert_allclose(np.asarray(r), np.asarray(res(loss, theta)), rtol=1e-14, atol=1e-14)
    np.testing.assert_array_equal(np.asarray(J_too), J)
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
    with pytest.raises(ValueError, match="belongs to another fit: its stages differs"):
        F.fit(loss, guess, stages=(F.LBFGS(steps=20),), progress=False, checkpoint=path)


def other_logistic(t, y, args):
    return args[0] * y * (1 - y / args[1]) - 0.01 * y  # the same signature, another model


@pytest.fixture(scope="module")
def written_checkpoint(tmp_path_factory):
    """A finished checkpoint of a short fit and the fit's arguments."""
    path = tmp_path_factory.mktemp("ckpt") / "fit.npz"
    kwargs = dict(stages=(F.Adam(steps=20, learning_rate=5e-2),), progress=False,
                  uncertainty=False)
    guess = jnp.array([1.0, 0.5, 8.0])
    result = F.fit(logistic_loss(), guess, checkpoint=path, **kwargs)
    return path, guess, kwargs, result


@pytest.mark.parametrize(
    "change, what",
    [
        (dict(loss=lambda: logistic_loss(NOISY * 1.01)), "data"),
        (dict(loss=lambda: F.TrajectoryLoss(logistic, TS * 1.5, NOISY[:, None], n_state=1,
                                            **CONST)), "times"),
        (dict(loss=lambda: logistic_loss(weights=np.linspace(1.0, 2.0, TS.size)[:, None])),
         "weights"),
        (dict(loss=lambda: F.TrajectoryLoss(other_logistic, TS, NOISY[:, None], n_state=1,
                                            n_params=3, **CONST)), "model"),
        (dict(guess=jnp.array([1.0, 0.6, 8.0])), "theta0"),
        (dict(stages=(F.Adam(steps=20, learning_rate=1e-2),)), "stages"),
        (dict(strategy=F.GrowingWindows((0.5, 1.0))), "strategy"),
    ],
    ids=["data", "times", "weights", "model", "theta0", "learning-rate", "strategy"],
)
def test_checkpoint_of_another_fit_is_refused_naming_what_differs(written_checkpoint, change,
                                                                    what):
    path, guess, kwargs, _ = written_checkpoint
    loss = change.get("loss", logistic_loss)()
    kwargs = {**kwargs, **{k: v for k, v in change.items() if k in ("stages", "strategy")}}
    with pytest.raises(ValueError, match=rf"{path}.* belongs to another fit: its .*{what}"):
        F.fit(loss, change.get("guess", guess), checkpoint=path, **kwargs)


def test_resume_fresh_overwrites_a_checkpoint_of_another_fit(written_checkpoint, tmp_path):
    path, guess, kwargs, _ = written_checkpoint
    copy = tmp_path / "fit.npz"
    copy.write_bytes(path.read_bytes())
    other = guess * 1.1
    fresh = F.fit(logistic_loss(), other, checkpoint=copy, resume="fresh", **kwargs)
    plain = F.fit(logistic_loss(), other, **kwargs)
    np.testing.assert_allclose(fresh.params, plain.params, rtol=1e-12)
    # The file now belongs to the new fit: resuming it returns that fit.
    again = F.fit(logistic_loss(), other, checkpoint=copy, **kwargs)
    np.testing.assert_allclose(again.params, plain.params, rtol=1e-12)
    with pytest.raises(ValueError, match="resume must be"):
        F.fit(logistic_loss(), other, checkpoint=copy, resume="yes", **kwargs)


def _rewrite(src, dst, **replace):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(replace)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)


@pytest.mark.parametrize("damage", ["truncated", "random-bytes", "nan-leaf", "int-leaf",
                                    "phase-out-of-range", "status-out-of-range", "empty"])
def test_a_damaged_checkpoint_is_a_clear_error_naming_the_file(written_checkpoint, tmp_path,
                                                                damage):
    path, guess, kwargs, _ = written_checkpoint
    bad = tmp_path / f"{damage}.npz"
    raw = path.read_bytes()
    with np.load(path, allow_pickle=False) as z:
        leaf0 = z["leaf_00000"]
        status_key = sorted(k for k in z.files if k.startswith("leaf_"))[-1]
    if damage == "truncated":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "random-bytes":
        bad.write_bytes(np.random.default_rng(0).bytes(len(raw)))
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "nan-leaf":
        _rewrite(path, bad, leaf_00000=np.full_like(leaf0, np.nan))
    elif damage == "int-leaf":
        _rewrite(path, bad, leaf_00000=leaf0.astype(np.int64))
    elif damage == "phase-out-of-range":
        _rewrite(path, bad, phase=np.asarray(7))
    else:  # the last leaf of a StageState is its status
        _rewrite(path, bad, **{status_key: np.asarray(9, np.int32)})
    with pytest.raises(ValueError, match=rf"the checkpoint {bad} is damaged") as info:
        F.fit(logistic_loss(), guess, checkpoint=bad, **kwargs)
    assert "allow_pickle" not in str(info.value)


def test_checkpoint_fingerprint_is_stable_and_content_based():
    """The same fit described twice (new objects) hashes alike; one changed number does not."""
    a = ckpt.fit_fingerprint(logistic_loss(), jnp.array([1.0, 0.5, 8.0]), (F.LBFGS(),), None,
                             False)
    b = ckpt.fit_fingerprint(logistic_loss(), jnp.array([1.0, 0.5, 8.0]), (F.LBFGS(),), None,
                             False)
    assert a == b
    noisy = NOISY.copy()
    noisy[17] += 1e-12
    c = ckpt.fit_fingerprint(logistic_loss(noisy), jnp.array([1.0, 0.5, 8.0]), (F.LBFGS(),),
                             None, False)
    assert {k for k in a if a[k] != c[k]} == {"data"}


# --- compiled once: a second fit of the same model traces nothing ---------------------
TRACES = []


def counted_logistic(t, y, args):
    TRACES.append(1)  # runs only while JAX traces the function
    return logistic(t, y, args)


def test_a_second_fit_of_the_same_model_reuses_every_compiled_program():
    """A Python side effect in the vector field counts its traces: a repeated fit, and a fit
    of new data of the same shapes, trace it no more (the stages, the start-up checks and
    the uncertainty are compiled once per model, options and shapes)."""
    stages = (F.Adam(steps=30, learning_rate=5e-2), F.LBFGS(steps=30))
    guess = jnp.array([1.0, 0.5, 8.0])

    def loss_of(data):
        return F.TrajectoryLoss(counted_logistic, TS, np.asarray(data)[:, None], n_state=1,
                                **CONST)

    first = jode.fit(loss_of(NOISY), guess, stages=stages, progress=False)
    traced = len(TRACES)
    assert traced > 0
    second = jode.fit(loss_of(NOISY), guess, stages=stages, progress=False)
    third = jode.fit(loss_of(NOISY * 1.05), guess, stages=stages, progress=False)
    assert len(TRACES) == traced
    np.testing.assert_array_equal(second.params, first.params)
    # K scales with the data: the new data's fit is a different one, from the same programs.
    assert float(third.params[2]) == pytest.approx(1.05 * float(first.params[2]), rel=1e-3)


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


# --- Lotka-Volterra with known truth -----------------------------------------------
LV_TS = np.round(np.arange(0.0, 10.05, 0.1), 12)
LV_TRUTH = np.array([1.0, 1.0, 1.5, 1.0, 3.0, 1.0])  # x0, y0, α, β, δ, γ
LV_GUESS = np.array([0.8, 1.2, 1.2, 1.0, 2.9, 1.1])
LV_SIGMA = 0.1


def lv_data(seed):
    """Data from scipy's DOP853 at 1e-12 (a solver independent of the one being fitted),
    with |· + N(0, 0.1²)| noise for a seed."""
    sol = solve_ivp(lambda t, y: np.asarray(jode.models.lotka_volterra(t, y, LV_TRUTH[2:])),
                    (0.0, 10.0), LV_TRUTH[:2], method="DOP853", t_eval=LV_TS, rtol=1e-12,
                    atol=1e-12)
    clean = sol.y.T
    if seed is None:
        return clean
    return np.abs(clean + LV_SIGMA * np.random.default_rng(seed).standard_normal(clean.shape))


def lv_loss(data, **kw):
    return F.TrajectoryLoss(jode.models.lotka_volterra, LV_TS, data, n_state=2,
                            **{**CONST, **kw})


def lv_rel_errors(theta):
    return np.abs(np.asarray(theta) - LV_TRUTH) / LV_TRUTH


def test_lotka_volterra_recovery_from_article_guess():
    """Noise-free: within 1e-4 of the truth; noisy: at least as good as the truth, with the
    truth inside the 95% intervals (the same compiled fit serves both). Constant RK4 steps
    (h = 0.025) keep the compile short."""
    stages = (F.LBFGS(steps=300),)
    res = jode.fit(lv_loss(lv_data(None), n_params=6), jnp.asarray(LV_GUESS), stages=stages,
                   progress=False)
    assert np.max(lv_rel_errors(res.params)) < 1e-4
    loss = lv_loss(lv_data(0), n_params=6)
    res = jode.fit(loss, jnp.asarray(LV_GUESS), stages=stages, progress=False)
    assert res.loss <= float(loss(jnp.asarray(LV_TRUTH)))
    lo, hi = res.interval(0.95)
    assert ((LV_TRUTH >= lo) & (LV_TRUTH <= hi)).sum() >= 5
    # Errors are set by the noise: ~1% with ~1% standard errors.
    assert np.max(lv_rel_errors(res.params)) < 0.05
    assert np.all(res.stderr / np.abs(res.params) < 0.03)


def test_theta_of_the_wrong_length_is_refused_when_the_fit_starts():
    """Without n_params the loss cannot know θ's length: a 5-entry θ would make
    Lotka-Volterra read args[3] past the end of a 3-entry args (JAX clamps the index), a
    7-entry θ would carry an entry that nothing reads."""
    loss = lv_loss(lv_data(None))
    with pytest.raises(ValueError, match=r"theta0 has 5 entries .*indexes past the end of args"
                       r".*index 3 is out of bounds"):
        jode.fit(loss, jnp.asarray(LV_GUESS[:5]), progress=False)
    with pytest.raises(ValueError, match=r"theta0 has 7 entries .*does not use entries \[6\]"):
        jode.fit(loss, jnp.asarray([*LV_GUESS, 0.5]), progress=False)
    with pytest.raises(ValueError, match=r"theta0 has 5 entries"):
        jode.fit(loss, jnp.asarray([LV_GUESS[:5]] * 2), batched=True, progress=False)


def test_data_must_hold_the_state():
    data3 = np.concatenate([lv_data(None), np.ones((LV_TS.size, 1))], axis=1)
    with pytest.raises(ValueError, match=r"data has 3 columns but y0 has shape \(2,\)"):
        F.TrajectoryLoss(jode.models.lotka_volterra, LV_TS, data3, y0=[1.0, 1.0])
    loss = F.TrajectoryLoss(jode.models.lotka_volterra, LV_TS, data3, n_state=3, **CONST)
    with pytest.raises(ValueError, match=r"returns shape \(2,\) for a state of shape \(3,\)"):
        jode.fit(loss, jnp.asarray([1.0, 1.0, 1.0, *LV_GUESS[2:]]), progress=False)


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


def test_bad_batches_and_strategies_are_clear_errors():
    loss = logistic_loss()
    with pytest.raises(ValueError, match=r"batched=True needs a batch of guesses"):
        F.fit(loss, jnp.array(1.0), batched=True, progress=False)
    with pytest.raises(ValueError, match=r"a 2-D batch .*For one guess pass batched=False"):
        F.fit(loss, jnp.array([1.0, 0.5, 8.0]), batched=True, progress=False)
    for fractions in [(0.0, 1.0), (0.5, 1.5), (-0.2, 1.0)]:
        with pytest.raises(ValueError, match=r"fractions must lie in \(0, 1\]"):
            F.GrowingWindows(fractions)
    with pytest.raises(ValueError, match="increasing"):
        F.GrowingWindows((0.6, 0.3))
    with pytest.raises(ValueError, match=r"penalty must be a finite number >= 0"):
        F.MultipleShooting(4, penalty=-1.0)
    with pytest.raises(ValueError, match=r"penalty must be a finite number >= 0"):
        loss.multiple_shooting(4, penalty=-0.5)
    with pytest.raises(ValueError, match=r"segments must be an int >= 1"):
        F.MultipleShooting(0)


def test_entry_points_are_the_functions_and_load_lazily():
    """`jode.fit` and `jode.sweep` are the functions (not modules), loaded on first use:
    `import jode` imports no optax, and importing the packages does not replace them."""
    import subprocess
    import sys

    probe = (
        "import sys, jode\n"
        "assert 'optax' not in sys.modules and 'jode.fitting' not in sys.modules\n"
        "fit, sweep = jode.fit, jode.sweep\n"
        "import jode.fitting, jode.sweeping\n"
        "assert fit is jode.fit is jode.fitting.fit\n"
        "assert sweep is jode.sweep is jode.sweeping.sweep\n"
        "assert callable(jode.fit) and callable(jode.sweep)\n"
        "assert jode.sweeping.fit_sweep and jode.fitting.TrajectoryLoss and jode.sweeping.grid\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
