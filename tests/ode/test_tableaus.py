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


@pytest.mark.parametrize("tableau", [t for t in ALL if t.interp is not None], ids=lambda t: t.name)
def test_interpolant_is_consistent_and_third_order(tableau):
    # At θ = 1 the interpolant reproduces b; its weights b_i(θ) satisfy the order conditions
    # Σ b_i(θ) = θ and Σ b_i(θ) c_i = θ²/2, Σ b_i(θ) c_i² = θ³/3 for every θ.
    for theta in (0.3, 0.7):
        w = tableau.interp @ theta ** np.arange(1, tableau.interp.shape[1] + 1)
        assert np.isclose(w.sum(), theta, atol=1e-12)
        assert np.isclose(w @ tableau.c, theta**2 / 2, atol=1e-12)
        assert np.isclose(w @ tableau.c**2, theta**3 / 3, atol=1e-12)


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
