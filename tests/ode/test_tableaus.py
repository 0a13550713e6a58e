import numpy as np
import pytest

from jode.ode import tableaus as tb

ALL = [tb.EULER, tb.MIDPOINT, tb.HEUN, tb.RALSTON, tb.RK4, tb.BOSH3, tb.DOPRI5, tb.TSIT5, tb.DOPRI8]


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
