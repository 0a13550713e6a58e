"""The solver core against exact solutions, scipy DOP853 and diffrax."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import jode
from jode.models import harmonic_oscillator, linear, lorenz, lotka_volterra, van_der_pol
from tests.helpers import dop853_reference

LV_P = jnp.array([1.5, 1.0, 3.0, 1.0])
LINEAR_A = jnp.array([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -1.0]])

ADAPTIVE = [jode.Bosh3, jode.Dopri5, jode.Tsit5, jode.Dopri8]
ALL = [jode.Euler, jode.Midpoint, jode.Heun, jode.Ralston, jode.RK4, *ADAPTIVE]


# --- empirical order on an exact solution ---------------------------------------------


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.__name__)
def test_empirical_convergence_order(method):
    solver = method()
    y0 = jnp.array([1.0, 0.5, -0.2])
    t1 = 2.0
    exact = scipy.linalg.expm(np.asarray(LINEAR_A) * t1) @ np.asarray(y0)
    order = solver.order
    # Step counts in the asymptotic range, above round-off, for each order.
    base = {1: 400, 2: 100, 3: 40, 4: 20, 5: 20, 8: 8}[order]
    ns = [base, 2 * base, 4 * base]

    @jax.jit
    def err(dt):  # dt traced: one compilation for all step sizes (the while-loop path)
        sol = jode.solve(
            linear, y0, 0.0, t1, LINEAR_A, solver=solver, dt0=dt, controller=jode.ConstantStep()
        )
        return jnp.max(jnp.abs(sol.ys[-1] - exact))

    errors = [float(err(t1 / n)) for n in ns]
    slope = -np.polyfit(np.log(ns), np.log(errors), 1)[0]
    assert abs(slope - order) <= 0.3, (errors, slope)


# --- adaptive accuracy vs tight references and vs diffrax ----------------------------

PROBLEMS = {
    "lotka_volterra": (lotka_volterra, jnp.array([1.0, 1.0]), LV_P, 10.0, True),
    "van_der_pol": (van_der_pol, jnp.array([2.0, 0.0]), jnp.array([1.0]), 10.0, True),
    "linear": (linear, jnp.array([1.0, 0.5, -0.2]), LINEAR_A, 5.0, True),
    "lorenz": (lorenz, jnp.array([1.0, 0.0, 0.0]), jnp.array([10.0, 28.0, 8 / 3]), 10.0, False),
}


@pytest.fixture(scope="module")
def references():
    out = {}
    for name, (f, y0, p, t1, _) in PROBLEMS.items():
        ts = np.linspace(0.0, t1, 51)
        if name == "linear":
            ref = np.stack(
                [scipy.linalg.expm(np.asarray(LINEAR_A) * t) @ np.asarray(y0) for t in ts]
            )
        else:
            ref = dop853_reference(lambda t, y, a, f=f: f(t, jnp.asarray(y), a), y0, ts, p)
        out[name] = (ts, ref)
    return out


@pytest.mark.parametrize("method", [jode.Tsit5, jode.Dopri5, jode.Bosh3], ids=lambda m: m.__name__)
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_adaptive_accuracy_vs_reference_and_diffrax(method, name, references):
    f, y0, p, t1, well_conditioned = PROBLEMS[name]
    ts, ref = references[name]
    tol = 1e-7
    errors = {}
    for backend in ("jode", "diffrax"):
        sol = jode.solve(
            f,
            y0,
            0.0,
            t1,
            p,
            solver=method(),
            saveat=jnp.asarray(ts),
            rtol=tol,
            atol=tol,
            backend=backend,
        )
        assert int(sol.status) == 0
        errors[backend] = float(np.max(np.abs(np.asarray(sol.ys) - ref)))
    assert errors["jode"] <= 1.5 * errors["diffrax"], errors
    # Global error within 10x the tolerance for the default method on well-conditioned
    # problems (lower-order pairs accumulate more over several periods, as diffrax's do).
    if well_conditioned and method is jode.Tsit5:
        assert errors["jode"] <= 10 * tol * max(1.0, float(np.max(np.abs(ref)))), errors


@pytest.mark.parametrize("name", ["lotka_volterra", "linear", "van_der_pol"])
def test_dopri8_accuracy_at_t1(name, references):
    f, y0, p, t1, _ = PROBLEMS[name]
    _, ref = references[name]
    sol = jode.solve(f, y0, 0.0, t1, p, solver=jode.Dopri8(), rtol=1e-9, atol=1e-9)
    assert float(np.max(np.abs(np.asarray(sol.ys[-1]) - ref[-1]))) < 1e-8


def test_steps_match_diffrax_within_five_percent_for_tsit5():
    ts = jnp.linspace(0, 10, 101)
    counts = {}
    for backend in ("jode", "diffrax"):
        sol = jode.solve(
            lotka_volterra, jnp.array([1.0, 1.0]), 0.0, 10.0, LV_P, saveat=ts, backend=backend
        )
        counts[backend] = (int(sol.stats["steps"]), int(sol.stats["nfev"]))
    assert abs(counts["jode"][0] - counts["diffrax"][0]) <= 0.05 * counts["diffrax"][0], counts
    assert abs(counts["jode"][1] - counts["diffrax"][1]) <= 0.05 * counts["diffrax"][1], counts


# --- saving, dense output, direction, pytrees ----------------------------------------


def test_dense_output_between_steps_matches_reference(references):
    ts, ref = references["lotka_volterra"]
    sol = jode.solve(
        lotka_volterra, jnp.array([1.0, 1.0]), 0.0, 10.0, LV_P, dense=True, rtol=1e-8, atol=1e-8
    )
    mid = jnp.asarray(ts)
    err = np.max(np.abs(np.asarray(sol.evaluate(mid)) - ref))
    assert err < 1e-6
    # a scalar query gives the state's shape
    assert sol.evaluate(2.5).shape == (2,)


def test_saving_never_changes_the_steps():
    base = jode.solve(lotka_volterra, jnp.array([1.0, 1.0]), 0.0, 10.0, LV_P)
    many = jode.solve(
        lotka_volterra, jnp.array([1.0, 1.0]), 0.0, 10.0, LV_P, saveat=jnp.linspace(0.0, 10.0, 1001)
    )
    assert int(base.stats["steps"]) == int(many.stats["steps"])
    np.testing.assert_allclose(np.asarray(many.ys[-1]), np.asarray(base.ys[-1]), rtol=0, atol=1e-14)
    np.testing.assert_array_equal(np.asarray(many.ts)[[0, -1]], [0.0, 10.0])


def test_save_steps_returns_every_accepted_step():
    sol = jode.solve(
        lotka_volterra,
        jnp.array([1.0, 1.0]),
        0.0,
        10.0,
        LV_P,
        saveat=jode.SaveAt(steps=True),
        max_steps=256,
    )
    n = int(sol.stats["accepted"])
    ts = np.asarray(sol.ts)
    assert ts[0] == 0.0 and ts[n] == 10.0 and np.all(np.isinf(ts[n + 1 :]))
    assert np.all(np.diff(ts[: n + 1]) > 0)


def test_backward_in_time_returns_to_the_start():
    y0 = jnp.array([1.0, 1.0])
    fwd = jode.solve(lotka_volterra, y0, 0.0, 5.0, LV_P, rtol=1e-10, atol=1e-10)
    ts = jnp.array([5.0, 2.5, 0.0])
    back = jode.solve(lotka_volterra, fwd.ys[-1], 5.0, 0.0, LV_P, rtol=1e-10, atol=1e-10, saveat=ts)
    np.testing.assert_allclose(np.asarray(back.ys[-1]), np.asarray(y0), atol=1e-8)
    mid = jode.solve(lotka_volterra, y0, 0.0, 2.5, LV_P, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(back.ys[1]), np.asarray(mid.ys[-1]), atol=1e-8)


def test_pytree_state_and_per_component_tolerance():
    def f(t, y, args):
        return {"x": y["v"], "v": -y["x"]}

    y0 = {"x": jnp.array(1.0), "v": jnp.array(0.0)}
    ts = jnp.linspace(0.0, 3.0, 7)
    sol = jode.solve(f, y0, 0.0, 3.0, saveat=ts, rtol=1e-9, atol={"x": 1e-9, "v": 1e-10})
    np.testing.assert_allclose(np.asarray(sol.ys["x"]), np.cos(np.asarray(ts)), atol=1e-8)
    np.testing.assert_allclose(np.asarray(sol.ys["v"]), -np.sin(np.asarray(ts)), atol=1e-8)


def test_float32_solves_stay_float32():
    y0 = jnp.array([1.0, 0.0], dtype=jnp.float32)
    omega = jnp.array([2.0], dtype=jnp.float32)
    ts = jnp.linspace(0.0, 3.0, 11, dtype=jnp.float32)
    sol = jode.solve(harmonic_oscillator, y0, 0.0, 3.0, omega, saveat=ts, rtol=1e-5, atol=1e-5)
    assert sol.ys.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(sol.ys[:, 0]), np.cos(2 * np.asarray(ts)), atol=2e-4)


def test_jump_ts_land_on_a_discontinuity():
    # dy/dt = 1 for t < 1, -1 after: y(2) = 0 exactly (piecewise linear, any RK is exact).
    f = lambda t, y, a: jnp.where(t < 1.0, 1.0, -1.0) * jnp.ones_like(y)  # noqa: E731
    sol = jode.solve(
        f, jnp.array([0.0]), 0.0, 2.0, jump_ts=jnp.array([1.0]), saveat=jnp.array([1.0, 2.0])
    )
    np.testing.assert_allclose(np.asarray(sol.ys[:, 0]), [1.0, 0.0], atol=1e-13)


def test_stop_condition_finds_the_steady_state():
    f = lambda t, y, a: jnp.cos(y) - y  # noqa: E731
    sol = jode.solve(
        f,
        jnp.array([-1.0]),
        0.0,
        1000.0,
        rtol=1e-10,
        atol=1e-12,
        stop=lambda t, y, a: jnp.abs(jnp.cos(y[0]) - y[0]) < 1e-9,
    )
    assert int(sol.status) == jode.Status.EVENT and bool(sol.succeeded)
    # |f(y)| < 1e-9 and f'(y*) = -(1 + sin y*) ~ -1.67 bound the distance to the Dottie number
    assert abs(float(sol.ys[-1, 0]) - 0.7390851332151607) < 1e-9
    assert float(sol.ts[-1]) < 1000.0


# --- transformations -------------------------------------------------------------------


def test_vmap_over_parameters_with_per_sample_status():
    ps = jnp.stack([LV_P, LV_P * 1.1, LV_P * 0.9])

    def run(p):
        return jode.solve(
            lotka_volterra, jnp.array([1.0, 1.0]), 0.0, 10.0, p, max_steps=60, throw=False
        )

    sols = jax.jit(jax.vmap(run))(ps)
    singles = [run(p) for p in ps]
    for i, single in enumerate(singles):
        assert int(sols.status[i]) == int(single.status)
        assert int(sols.stats["steps"][i]) == int(single.stats["steps"])
        # identical up to rounding: vectorized arithmetic may round differently
        np.testing.assert_allclose(np.asarray(sols.ys[i]), np.asarray(single.ys), rtol=1e-8)
    ok = jax.vmap(
        lambda p: jode.solve(lotka_volterra, jnp.array([1.0, 1.0]), 0.0, 10.0, p, throw=False)
    )(ps)
    assert np.all(np.asarray(ok.status) == 0)
    # 60 steps are too few for at least one lane at the default tolerance
    assert np.any(np.asarray(sols.status) == jode.Status.MAX_STEPS)


def _fd(fun, x, eps=1e-6):
    x = np.asarray(x, dtype=np.float64)
    out = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = eps
        out.append((fun(jnp.asarray(x + e)) - fun(jnp.asarray(x - e))) / (2 * eps))
    return np.stack(out, axis=-1)


def test_forward_mode_through_adaptive_solve_matches_finite_differences():
    def final(p):
        return jode.solve(
            lotka_volterra,
            jnp.array([1.0, 1.0]),
            0.0,
            5.0,
            p,
            rtol=1e-10,
            atol=1e-10,
            adjoint=jode.ForwardMode(),
        ).ys[-1]

    jac = np.asarray(jax.jacfwd(final)(LV_P))
    fd = _fd(lambda p: np.asarray(final(p)), LV_P)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-6)


def test_reverse_and_forward_mode_through_fixed_steps():
    def loss(p):
        sol = jode.solve(
            lotka_volterra,
            jnp.array([1.0, 1.0]),
            0.0,
            2.0,
            p,
            solver=jode.RK4(),
            n_steps=200,
            saveat=jnp.linspace(0, 2, 11),
        )
        return jnp.sum(sol.ys**2)

    g = np.asarray(jax.grad(loss)(LV_P))
    fd = _fd(lambda p: float(loss(p)), LV_P)
    np.testing.assert_allclose(g, fd, rtol=1e-6)
    jvp = jax.jvp(loss, (LV_P,), (jnp.ones(4),))[1]
    np.testing.assert_allclose(float(jvp), g.sum(), rtol=1e-10)
    hess = np.asarray(jax.hessian(loss)(LV_P))
    fd_h = _fd(lambda p: np.asarray(jax.grad(loss)(p)), LV_P)
    np.testing.assert_allclose(hess, fd_h, rtol=1e-5, atol=1e-6)


def test_jode_and_diffrax_agree_on_the_same_call():
    ts = jnp.linspace(0, 10, 21)
    a = jode.solve(
        van_der_pol,
        jnp.array([2.0, 0.0]),
        0.0,
        10.0,
        jnp.array([1.0]),
        saveat=ts,
        rtol=1e-9,
        atol=1e-9,
    )
    b = jode.solve(
        van_der_pol,
        jnp.array([2.0, 0.0]),
        0.0,
        10.0,
        jnp.array([1.0]),
        saveat=ts,
        rtol=1e-9,
        atol=1e-9,
        backend="diffrax",
    )
    np.testing.assert_allclose(np.asarray(a.ys), np.asarray(b.ys), atol=1e-7)
    assert isinstance(b, jode.Solution) and int(b.status) == 0


def test_failures_raise_clear_errors_or_return_status():
    with pytest.raises(Exception, match="max_steps=20 was reached"):
        jode.solve(lotka_volterra, jnp.array([1.0, 1.0]), 0.0, 10.0, LV_P, max_steps=20)
    sol = jode.solve(
        lotka_volterra, jnp.array([1.0, 1.0]), 0.0, 10.0, LV_P, max_steps=20, throw=False
    )
    assert int(sol.status) == jode.Status.MAX_STEPS
    assert "max_steps" in sol.message
    # finite-time blow-up: y' = y², y(0) = 1 explodes at t = 1
    blow = jode.solve(lambda t, y, a: y**2, jnp.array([1.0]), 0.0, 2.0, throw=False)
    assert int(blow.status) in (
        jode.Status.DT_UNDERFLOW,
        jode.Status.NONFINITE,
        jode.Status.MAX_STEPS,
    )
    nan = jode.solve(
        lambda t, y, a: y * jnp.nan,
        jnp.array([1.0]),
        0.0,
        1.0,
        solver=jode.RK4(),
        n_steps=10,
        throw=False,
    )
    assert int(nan.status) == jode.Status.NONFINITE
    with pytest.raises(Exception, match="NaN or infinite"):
        jode.solve(
            lambda t, y, a: y * jnp.nan, jnp.array([1.0]), 0.0, 1.0, solver=jode.RK4(), n_steps=10
        )


def test_diffrax_is_the_yardstick_for_the_adaptive_defaults():
    # jode's default controller mirrors diffrax's PIDController defaults.
    c = jode.PIDController()
    d = diffrax.PIDController(rtol=1e-6, atol=1e-6)
    assert (c.safety, c.factormin, c.factormax) == (d.safety, d.factormin, d.factormax)
