import numpy as np
import pytest

from jode.ode import tableaus as tb

ALL = [
    tb.EULER, tb.MIDPOINT, tb.HEUN, tb.EULER_HEUN, tb.RALSTON, tb.RK4, tb.BOSH3, tb.DOPRI5,
    tb.TSIT5, tb.DOPRI8,
]


def test_rooted_tree_counts_match_oeis_a000081():
    assert [len(tb.rooted_trees(p)) for p in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


@pytest.mark.parametrize("tableau", ALL, ids=lambda t: t.name)
def test_order_conditions_hold_exactly_to_the_claimed_order(tableau):
    residuals = tableau and tb.order_residuals(tableau.a, tableau.b, tableau.order + 1)
    assert max(residuals[p] for p in range(1, tableau.order + 1)) < 1e-12
    # ... and the order is not higher: some condition of order p + 1 fails.
    assert residuals[tableau.order + 1] > 1e-6


@pytest.mark.parametrize("tableau", [t for t in ALL if t.adaptive], ids=lambda t: t.name)
def test_embedded_method_has_its_order(tableau):
    b_hat = tableau.b - tableau.b_err
    res = tb.order_residuals(tableau.a, b_hat, tableau.embedded_order + 1)
    assert max(res[p] for p in range(1, tableau.embedded_order + 1)) < 1e-12
    assert abs(tableau.b_err.sum()) < 1e-14


def _extended(tableau):
    """(A, c) over the stages and, for a tableau with extra dense-output stages, f(t + h, y_1)
    (whose A row is b) and the extra stages."""
    if tableau.interp_a is None:
        return tableau.a, tableau.c
    s, rows = tableau.stages, tableau.interp.shape[0]
    a = np.zeros((rows, rows))
    a[:s, :s] = tableau.a
    a[s, :s] = tableau.b
    a[s + 1 :] = tableau.interp_a
    return a, np.concatenate([tableau.c, [1.0], tableau.interp_c])


#: The order of each continuous extension (Hairer, Nørsett & Wanner 1993, §II.6).
DENSE_ORDER = {"Bosh3": 3, "Dopri5": 4, "Tsit5": 4, "Dopri8": 7}


@pytest.mark.parametrize("tableau", [t for t in ALL if t.interp is not None], ids=lambda t: t.name)
def test_interpolant_satisfies_the_continuous_order_conditions(tableau):
    # At θ = 1 the interpolant reproduces b; its weights b_i(θ) satisfy the continuous order
    # conditions Σ b_i(θ) Φ_i(τ) = θ^|τ| / γ(τ) for every rooted tree τ up to its order
    # (HNW I, Thm. II.6.1), and miss one of the next order.
    a, c = _extended(tableau)
    assert np.allclose(a.sum(axis=1), c, atol=1e-12)
    order = DENSE_ORDER[tableau.name]
    for theta in (0.3, 0.7):
        w = tableau.interp @ theta ** np.arange(1, tableau.interp.shape[1] + 1)
        worst = {
            p: max(abs(w @ tb._elementary_weight(a, t) - theta**p / tb._density(t))
                   for t in tb.rooted_trees(p))
            for p in range(1, order + 2)
        }
        assert max(worst[p] for p in range(1, order + 1)) < 1e-12, worst
        assert worst[order + 1] > 1e-6, worst


def test_fsal_detection():
    assert tb.TSIT5.fsal and tb.DOPRI5.fsal and tb.BOSH3.fsal
    assert not tb.RK4.fsal and not tb.DOPRI8.fsal
    assert tb.TSIT5.f_evals_per_step == 6 and tb.RK4.f_evals_per_step == 4


def test_inconsistent_tableaux_are_rejected():
    with pytest.raises(ValueError, match="rows of a must sum to c"):
        tb.ButcherTableau("bad", a=[[0, 0], [0.5, 0]], b=[0, 1], c=[0, 0.6], order=2)
    with pytest.raises(ValueError, match="order conditions fail"):
        tb.ButcherTableau("bad", a=[[0, 0], [0.5, 0]], b=[0.5, 0.5], c=[0, 0.5], order=2)
    with pytest.raises(ValueError, match="b_err"):
        tb.ButcherTableau(
            "bad",
            a=[[0, 0], [1, 0]],
            b=[0.5, 0.5],
            c=[0, 1],
            order=2,
            b_err=[0.5, 0.4],
            embedded_order=1,
        )
    with pytest.raises(ValueError, match="strictly lower"):
        tb.ButcherTableau("bad", a=[[0.5, 0], [0.5, 0]], b=[0, 1], c=[0.5, 0.5], order=1)


def test_tableau_is_immutable():
    with pytest.raises(ValueError):
        tb.RK4.a[0, 0] = 1.0


def test_euler_heun_pair_is_fsal_with_heun_error_estimate():
    # Euler propagated, error estimated against Heun (b̂ = (1/2, 1/2), order 2): one new
    # evaluation per step, and the estimate is Euler's true local error to O(h³).
    import jax.numpy as jnp

    from jode.ode.explicit import EulerHeun, rk_step

    t = tb.EULER_HEUN
    assert t.fsal and t.f_evals_per_step == 1 and t.error_order == 2
    assert tb.order_residuals(t.a, t.b, 1)[1] < 1e-15
    assert tb.order_residuals(t.a, t.b, 2)[2] > 0.1  # Euler: order exactly 1
    assert max(tb.order_residuals(t.a, t.b - t.b_err, 2).values()) < 1e-15  # Heun: order 2
    assert EulerHeun().f_evals_per_step == 1 and EulerHeun().adaptive

    # y' = y², y(0) = 1: y(h) = 1/(1 - h). e = h/2 (f(y0) - f(y1)), y1 = y0 + h f(y0).
    f = lambda s, y: y**2  # noqa: E731
    ratios = []
    for h in (1e-2, 1e-3):
        y0 = jnp.asarray([1.0])
        res = rk_step(t, f, 0.0, y0, f(0.0, y0), h)
        np.testing.assert_allclose(np.asarray(res.y1), 1.0 + h, rtol=1e-15)
        np.testing.assert_allclose(np.asarray(res.f1), (1.0 + h) ** 2, rtol=1e-15)  # = f(y1)
        np.testing.assert_allclose(
            np.asarray(res.error), 0.5 * h * (1.0 - (1.0 + h) ** 2), rtol=1e-12
        )
        true = float(res.y1[0]) - 1.0 / (1.0 - h)
        ratios.append(float(res.error[0]) / true)
    # error/true = 1 + O(h): the deviation shrinks tenfold with h.
    assert abs(ratios[0] - 1) < 0.05 and abs(ratios[1] - 1) < 0.1 * abs(ratios[0] - 1) * 1.2


# --- solvers are types carrying their tableau; the diffrax backend maps by type -----------

import diffrax as dfx  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jode  # noqa: E402
from jode.ode.diffrax_backend import to_diffrax_solver  # noqa: E402

EXPLICIT_TYPES = [jode.Euler, jode.Midpoint, jode.Heun, jode.EulerHeun, jode.Ralston, jode.RK4,
                  jode.Bosh3, jode.Dopri5, jode.Tsit5, jode.Dopri8]
IMPLICIT_TYPES = [jode.ImplicitEuler, jode.Kvaerno3, jode.Kvaerno5, jode.Rodas5]

#: diffrax's class of the same method; None: diffrax lacks it (or its Dopri8 is another
#: method, Prince & Dormand's 13-stage pair), so jode's tableau runs as a diffrax ERK.
DIFFRAX_SAME_METHOD = {
    jode.Euler: dfx.Euler, jode.Midpoint: dfx.Midpoint, jode.Heun: dfx.Heun,
    jode.Ralston: dfx.Ralston, jode.Bosh3: dfx.Bosh3, jode.Dopri5: dfx.Dopri5,
    jode.Tsit5: dfx.Tsit5, jode.ImplicitEuler: dfx.ImplicitEuler,
    jode.Kvaerno3: dfx.Kvaerno3, jode.Kvaerno5: dfx.Kvaerno5,
    jode.RK4: None, jode.EulerHeun: None, jode.Dopri8: None,
}


def _full_a(dfx_tableau):
    s = len(dfx_tableau.b_sol)
    a = np.zeros((s, s))
    for i, row in enumerate(dfx_tableau.a_lower, start=1):
        a[i, :i] = row
    if dfx_tableau.a_diagonal is not None:
        a[np.diag_indices(s)] = dfx_tableau.a_diagonal
    return a


@pytest.mark.parametrize("cls", EXPLICIT_TYPES + IMPLICIT_TYPES, ids=lambda c: c.__name__)
def test_every_builtin_is_a_final_type_carrying_its_tableau(cls):
    solver = cls()
    assert isinstance(cls, type) and isinstance(solver, cls)
    assert isinstance(solver, jode.AbstractSolver)
    assert solver == cls() and hash(solver) == hash(cls())
    assert repr(solver) == f"jode.{cls.__name__}()"
    assert solver.tableau is cls.tableau and solver.order == cls.tableau.order
    assert solver.implicit == (cls in IMPLICIT_TYPES)
    assert solver.adaptive == (cls.tableau.b_err is not None)


@pytest.mark.parametrize("cls", EXPLICIT_TYPES + IMPLICIT_TYPES[:3], ids=lambda c: c.__name__)
def test_every_builtin_maps_to_the_same_method_in_diffrax(cls):
    mapped = to_diffrax_solver(cls())
    expected = DIFFRAX_SAME_METHOD[cls]
    if expected is not None:
        assert type(mapped) is expected
    else:
        assert isinstance(mapped, dfx.AbstractERK)
    # Same coefficients, wherever diffrax states them as a tableau.
    dfx_tab = getattr(type(mapped), "tableau", None)
    if dfx_tab is not None:
        np.testing.assert_allclose(_full_a(dfx_tab), cls.tableau.a, atol=1e-12)
        np.testing.assert_allclose(dfx_tab.b_sol, cls.tableau.b, atol=1e-12)
        np.testing.assert_allclose(dfx_tab.c, cls.tableau.c[1:], atol=1e-12)


def test_user_tableaux_run_their_own_method_on_both_backends():
    # Heun's coefficients under the name "Tsit5": a method is its type and data, never its
    # name, so both backends run Heun. y' = -y, y(1) = e^-1.
    heun = tb.ButcherTableau("Tsit5", a=tb.HEUN.a, b=tb.HEUN.b, c=tb.HEUN.c, order=2,
                             b_err=tb.HEUN.b_err, embedded_order=1)
    solver = jode.ExplicitRK(heun)
    assert not isinstance(solver, jode.Tsit5)
    f = lambda t, y, a: -y  # noqa: E731
    ys = {}
    for backend in ("jode", "diffrax"):
        sol = jode.solve(f, jnp.asarray(1.0), 0.0, 1.0, solver=solver, backend=backend,
                         rtol=1e-3, atol=1e-6)
        ys[backend] = float(sol.ys[-1])
        assert int(sol.stats["steps"]) > 15  # a second-order method's step count, not Tsit5's
    assert abs(ys["jode"] - np.exp(-1.0)) < 5e-4  # global error ~ rtol for a 2(1) pair
    assert abs(ys["jode"] - ys["diffrax"]) < 1e-5
    # The same call with the real Tsit5 takes far fewer steps.
    tsit = jode.solve(f, jnp.asarray(1.0), 0.0, 1.0, solver=jode.Tsit5(), rtol=1e-3, atol=1e-6)
    assert int(tsit.stats["steps"]) < 10


def test_solvers_compare_and_hash_by_value():
    copy = tb.ButcherTableau("Heun", a=tb.HEUN.a.copy(), b=tb.HEUN.b.copy(), c=tb.HEUN.c.copy(),
                             order=2, b_err=tb.HEUN.b_err.copy(), embedded_order=1)
    assert copy == tb.HEUN and hash(copy) == hash(tb.HEUN)
    assert jode.ExplicitRK(copy) == jode.ExplicitRK(tb.HEUN)
    assert jode.ExplicitRK(tb.HEUN) != jode.Heun()  # another type: another solver
    assert jode.Kvaerno5(kappa=0.05) == jode.Kvaerno5(kappa=0.05) != jode.Kvaerno5()
    assert jode.ESDIRK(tb.KVAERNO3).order == 3
    # An ExplicitRK of a built-in's exact coefficients is that method in diffrax too.
    assert type(to_diffrax_solver(jode.ExplicitRK(copy))) is dfx.Heun


def test_what_diffrax_cannot_express_is_a_clear_error():
    with pytest.raises(ValueError, match="diffrax has no counterpart"):
        to_diffrax_solver(jode.Rodas5())
    with pytest.raises(ValueError, match="must be a jode.ButcherTableau"):
        jode.ExplicitRK(tb.KVAERNO3)
    with pytest.raises(ValueError, match="unknown solver"):
        jode.solve(lambda t, y, a: -y, jnp.asarray(1.0), 0.0, 1.0, solver=object())

    class DuckTyped:  # has the methods, but is no jode solver: no duck typing
        f_evals_per_step = 1

        def step(self, *a):
            raise AssertionError("never called")

    with pytest.raises(ValueError, match="AbstractSolver"):
        jode.solve(lambda t, y, a: -y, jnp.asarray(1.0), 0.0, 1.0, solver=DuckTyped())


# --- the dense-output order of every method, from one step ---------------------------------

#: Expected log-log slope of the interpolant's local error: (dense order) + 1, the dense
#: order being min(3, p) for cubic Hermite and the extension's order otherwise.
DENSE_SLOPE = {
    jode.Euler: 2, jode.Midpoint: 3, jode.Heun: 3, jode.EulerHeun: 2, jode.Ralston: 3,
    jode.RK4: 4, jode.Bosh3: 4, jode.Dopri5: 5, jode.Tsit5: 5, jode.Dopri8: 8,
    jode.ImplicitEuler: 2, jode.Kvaerno3: 4, jode.Kvaerno5: 4, jode.Rodas5: 4,
}


@pytest.fixture(scope="module")
def logistic_reference():
    """y' = y(1 - y) + sin(t) y, y(0) = 0.2, by scipy's DOP853 at rtol 1e-13."""
    from scipy.integrate import solve_ivp

    def at(t):
        sol = solve_ivp(lambda s, y: y * (1 - y) + np.sin(s) * y, (0.0, t), [0.2],
                        rtol=1e-13, atol=1e-16, method="DOP853")
        return float(sol.y[0, -1])

    return at


@pytest.mark.parametrize("cls", list(DENSE_SLOPE), ids=lambda c: c.__name__)
def test_dense_output_order_by_log_log_slope(cls, logistic_reference):
    from jode.ode.interpolation import horner

    f = lambda t, y: y * (1 - y) + jnp.sin(t) * y  # noqa: E731
    solver = cls()
    # Step sizes in the asymptotic range, above round-off (Dopri8's errors fall fastest).
    hs = np.array([0.4, 0.3, 0.2, 0.14]) if cls is jode.Dopri8 else np.array([0.2, 0.1, 0.05,
                                                                               0.025])
    t0, y0 = jnp.asarray(0.0), jnp.asarray([0.2])
    errors = []
    for h in hs:
        state = solver.init_state(f, t0, y0, f(t0, y0), 1e-10, 1e-10)
        res = solver.step(f, t0, y0, f(t0, y0), jnp.asarray(h), state)
        errors.append(max(abs(float(horner(res.coeffs, th)[0]) - logistic_reference(th * h))
                          for th in (0.3, 0.7)))
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    expected = DENSE_SLOPE[cls]
    assert expected - 0.3 < slope < expected + 0.7, (slope, errors)


def test_dopri8_saves_between_steps_to_the_solve_accuracy():
    # Saving between steps interpolates with DOP853's 7th-order dense output: the saved
    # values are as accurate as the steps themselves (a cubic interpolant would be ~1e-5 off
    # at these step sizes). Pendulum against scipy's DOP853 at rtol 1e-13.
    from scipy.integrate import solve_ivp

    ts = np.linspace(0.0, 10.0, 101)[1:-1]
    ref = solve_ivp(lambda t, y: [y[1], -np.sin(y[0])], (0.0, 10.0), [1.0, 0.0], t_eval=ts,
                    rtol=1e-13, atol=1e-13, method="DOP853").y.T
    sol = jode.solve(lambda t, y, a: jnp.stack([y[1], -jnp.sin(y[0])]), jnp.asarray([1.0, 0.0]),
                     0.0, 10.0, solver=jode.Dopri8(), rtol=1e-8, atol=1e-8,
                     saveat=jode.SaveAt(ts=jnp.asarray(ts)))
    assert np.max(np.abs(np.asarray(sol.ys) - ref)) < 3e-9
