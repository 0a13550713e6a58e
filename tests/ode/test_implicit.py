"""Stiff solvers: tableau checks, published reference solutions, convergence order, gradients.

Reference values are those of the Bari IVP test set (Mazzia & Magherini, "Test Set for
IVP Solvers", release 2.4, 2008; problems ROBER, VDPOL, OREGO, also in Hairer & Wanner
1996, *Solving ODEs II*, §IV.10). The accuracy metric is the error in units of the requested
tolerance, max_i |y_i - ref_i| / (atol + rtol |ref_i|), which must be <= 10.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import jode
from jode.ode import tableaus as tb
from jode.ode.implicit import IMPLICIT_SOLVERS, stage_predictor

# ---------------------------------------------------------------------------------------
# Problems (Bari test set) and their published reference solutions
# ---------------------------------------------------------------------------------------


def rober(t, y, k):
    """Robertson's chemical kinetics (ROBER); k = (0.04, 3e7, 1e4)."""
    del t
    return jnp.stack([
        -k[0] * y[0] + k[2] * y[1] * y[2],
        k[0] * y[0] - k[1] * y[1] ** 2 - k[2] * y[1] * y[2],
        k[1] * y[1] ** 2,
    ])


def vdp(t, y, mu):
    """Van der Pol, y'' = μ(1 - y²)y' - y, unscaled (VDPOL is its scaled form, ε = 1/μ²)."""
    del t
    return jnp.stack([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])


def rober_np(t, y, k=(0.04, 3e7, 1e4)):
    """ROBER in NumPy, for scipy references."""
    return np.array([
        -k[0] * y[0] + k[2] * y[1] * y[2],
        k[0] * y[0] - k[1] * y[1] ** 2 - k[2] * y[1] * y[2],
        k[1] * y[1] ** 2,
    ])


def orego(t, y, p):
    """The Oregonator (OREGO); p = (77.27, 8.375e-6, 0.161)."""
    del t
    return jnp.stack([
        p[0] * (y[1] + y[0] * (1.0 - p[1] * y[0] - y[1])),
        (y[2] - (1.0 + y[0]) * y[1]) / p[0],
        p[2] * (y[0] - y[2]),
    ])


# name: (f, y0, args, t1, atol, reference at t1)
PROBLEMS = {
    # ROBER at t = 1e11 (Bari test set, ROBER reference solution).
    "rober": (rober, [1.0, 0.0, 0.0], [0.04, 3e7, 1e4], 1e11, 1e-14,
              [0.2083340149701255e-07, 0.8333360770334713e-13, 0.9999999791665050]),
    # VDPOL (ε = 1e-6) at s = 2: y1 = 0.1706167732170483e+01, y2 = -0.8928097010247975e+00;
    # with t = μ s and μ = 1000 that is y(2000) and y'(2000) = y2 / μ.
    "vdp": (vdp, [2.0, 0.0], 1000.0, 2000.0, 1e-8,
            [0.1706167732170483e01, -0.8928097010247975e00 / 1000.0]),
    # OREGO at t = 360 (Bari test set, OREGO reference solution).
    "orego": (orego, [1.0, 2.0, 3.0], [77.27, 8.375e-6, 0.161], 360.0, 1e-8,
              [0.1000814870318523e01, 0.1228178521549917e04, 0.1320554942846706e03]),
}


def tolerance_units(y, ref, rtol, atol):
    y, ref = np.asarray(y), np.asarray(ref)
    return float(np.max(np.abs(y - ref) / (atol + rtol * np.abs(ref))))


@functools.cache
def compiled_solve(problem, solver_name):
    """One compilation per (problem, solver); tolerances are traced arguments."""
    f, _, _, t1, _, _ = PROBLEMS[problem]
    solver = IMPLICIT_SOLVERS[solver_name]()

    @jax.jit
    def run(y0, args, rtol, atol):
        sol = jode.solve(f, y0, 0.0, t1, args, solver=solver, rtol=rtol, atol=atol,
                         max_steps=20000)
        return sol.ys[-1], sol.stats, sol.status

    return run


def _solve_problem(problem, solver_name, rtol):
    _, y0, args, _, atol, _ = PROBLEMS[problem]
    run = compiled_solve(problem, solver_name)
    return run(jnp.asarray(y0, jnp.float64), jnp.asarray(args, jnp.float64),
               jnp.asarray(rtol, jnp.float64), jnp.asarray(atol, jnp.float64))


# ---------------------------------------------------------------------------------------
# Tableaux
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tableau", [tb.IMPLICIT_EULER, tb.KVAERNO3, tb.KVAERNO5])
def test_dirk_order_conditions(tableau):
    res = tb.order_residuals(tableau.a, tableau.b, tableau.order)
    assert max(res.values()) < 1e-12
    res_hat = tb.order_residuals(tableau.a, tableau.b - tableau.b_err, tableau.embedded_order)
    assert max(res_hat.values()) < 1e-12
    assert tableau.stiffly_accurate
    # The embedded method misses the next order (it is a genuine lower-order estimate).
    if tableau.embedded_order < tableau.order:
        miss = tb.order_residuals(tableau.a, tableau.b - tableau.b_err, tableau.order)
        assert miss[tableau.embedded_order + 1] > 1e-4


def test_dirk_stability_at_infinity():
    """L-stability: R(z) = 1 + z bᵀ(I - zA)⁻¹1 decays like 1/|z| as z → -∞ (R(∞) = 0)."""
    for tableau in (tb.IMPLICIT_EULER, tb.KVAERNO3, tb.KVAERNO5):
        a, b = tableau.a, tableau.b

        def r(z, a=a, b=b):
            return 1 + z * b @ np.linalg.solve(np.eye(len(b)) - z * a, np.ones(len(b)))

        assert abs(r(-1e6)) < 1e-5
        assert abs(r(-1e6) * 1e6 / (r(-1e4) * 1e4) - 1) < 0.05  # ~ C/z: the limit is 0
        # A-stability along the imaginary axis and the left half-plane samples.
        for z in (-1.0, -10.0, 1j, 10j, -1 + 5j):
            assert abs(r(z)) <= 1 + 1e-12


def test_rodas5_order_conditions_and_bad_digit():
    res = tb.rosenbrock_order_residuals(
        (tb.RODAS5.alpha, tb.RODAS5.alpha + tb.RODAS5.gamma_matrix), tb.RODAS5.b, 5
    )
    assert max(res.values()) < 1e-13
    # The other published digit of α_64 misses order 3 by ~5e-12: caught at tol 1e-13.
    alpha = np.array(tb.RODAS5.alpha)
    alpha[5, 3] = -0.2076823627400282
    with pytest.raises(ValueError, match="order conditions fail"):
        tb.RosenbrockTableau("bad", alpha, tb.RODAS5.gamma_matrix - (alpha - tb.RODAS5.alpha),
                             tb.RODAS5.b, order=5, tol=1e-13)


def test_rodas5_transformed_coefficients():
    """A = αΓ⁻¹ reproduces the published a_21 = 2, a_31 = 3.040894194418781 (HW IV.7.25)."""
    a, c, m, _ = tb.RODAS5.transformed
    assert a[1, 0] == pytest.approx(2.0, abs=1e-12)
    assert a[2, 0] == pytest.approx(3.040894194418781, abs=1e-12)
    assert c[1, 0] == pytest.approx(-10.31323885133993, abs=1e-10)


def test_tableau_validation_messages():
    with pytest.raises(ValueError, match="singly diagonally implicit"):
        tb.DIRKTableau("x", [[0.5, 0.0], [0.0, 0.25]], [0.5, 0.5], [0.5, 0.25], order=1)
    with pytest.raises(ValueError, match="lower triangular"):
        tb.DIRKTableau("x", [[0.5, 0.5], [0.0, 0.5]], [0.5, 0.5], [1.0, 0.5], order=1)
    with pytest.raises(ValueError, match="explicit first stage"):
        jode.ESDIRK(tb.DIRKTableau("x", [[1.0]], [1.0], [1.0], order=1))


def test_stage_predictor_is_lagrange_extrapolation():
    c = tb.KVAERNO5.c
    pred = stage_predictor(c)
    # Exact for quadratics in c: Σ_j P_ij c_j^q = c_i^q, q = 0, 1, 2 (stages with 3 nodes).
    for i in range(3, len(c) - 1):
        for q in range(3):
            assert pred[i] @ c**q == pytest.approx(c[i] ** q, abs=1e-12)


# ---------------------------------------------------------------------------------------
# Published reference solutions
# ---------------------------------------------------------------------------------------


# Kvaerno3 (no tolerance calibration) ends OREGO at t = 360 about 13x rtol at every rtol
# in 1e-4..1e-8 (local errors at tolerance, accumulated over six relaxation oscillations).
_OREGO_KV3 = pytest.mark.xfail(reason="Kvaerno3 global error on OREGO is ~13x rtol",
                               strict=True)


@pytest.mark.parametrize("problem", ["rober", "vdp", "orego"])
@pytest.mark.parametrize("solver_name", ["Kvaerno5", "Rodas5"])
def test_reference_solutions(problem, solver_name):
    """The error at t1 against the Bari test set's reference is at most 3 tolerance units."""
    rtol = 1e-6
    y1, stats, status = _solve_problem(problem, solver_name, rtol)
    assert int(status) == 0
    err = tolerance_units(y1, PROBLEMS[problem][5], rtol, PROBLEMS[problem][4])
    assert err <= 3.0, f"{solver_name} on {problem}: error {err:.2f} tolerance units"
    assert int(stats["njev"]) >= 1 and int(stats["nlinsolve"]) >= int(stats["accepted"])


@pytest.mark.slow
@pytest.mark.parametrize("rtol", [1e-4, 1e-8])
@pytest.mark.parametrize("problem", ["rober", "vdp", "orego"])
@pytest.mark.parametrize("solver_name", ["Kvaerno3", "Kvaerno5", "Rodas5"])
def test_reference_solutions_tight(problem, solver_name, rtol, request):
    if (solver_name, problem) == ("Kvaerno3", "orego"):
        request.applymarker(_OREGO_KV3)
    y1, _, status = _solve_problem(problem, solver_name, rtol)
    assert int(status) == 0
    err = tolerance_units(y1, PROBLEMS[problem][5], rtol, PROBLEMS[problem][4])
    # Rodas5 (no calibration) measured 9.5 units on VDP at rtol 1e-8 with atol 1e-8.
    bound = 3.0 if solver_name == "Kvaerno5" else 10.0
    assert err <= bound, f"{solver_name} on {problem}: error {err:.2f} tolerance units"


@functools.cache
def _radau_reference(problem, t1):
    """scipy Radau at rtol 1e-12, atol 1e-14 with the exact Jacobian (jax.jacfwd)."""
    f, y0, args, _, _, _ = PROBLEMS[problem]
    args = jnp.asarray(args, jnp.float64)
    field = jax.jit(lambda y: f(0.0, y, args))
    jac = jax.jit(jax.jacfwd(lambda y: f(0.0, y, args)))
    sol = solve_ivp(lambda t, y: np.asarray(field(y)), (0.0, t1), y0, method="Radau",
                    rtol=1e-12, atol=1e-14, jac=lambda t, y: np.asarray(jac(y)))
    assert sol.success
    return sol.y[:, -1]


@pytest.mark.parametrize("problem, t1", [("rober", 40.0), ("vdp", 850.0)])
@pytest.mark.parametrize("solver_name", ["Kvaerno5", "Rodas5"])
def test_global_error_follows_rtol(problem, t1, solver_name):
    """At rtol 1e-6, atol 1e-10 the global error is at most 3 (atol + rtol |y|) against scipy
    Radau at 1e-12. Van der Pol (μ = 1000) to t = 850 crosses its first relaxation jump
    (near t = 807). A short-span check (uncalibrated Kvaerno5 also passes it, at 1.4 units);
    the full spans of `test_reference_solutions` are where it failed (OREGO: 30 units)."""
    f, y0, args, _, _, _ = PROBLEMS[problem]
    rtol, atol = 1e-6, 1e-10
    sol = jode.solve(f, jnp.asarray(y0, jnp.float64), 0.0, t1, jnp.asarray(args, jnp.float64),
                     solver=IMPLICIT_SOLVERS[solver_name](), rtol=rtol, atol=atol,
                     max_steps=20000)
    err = tolerance_units(sol.ys[-1], _radau_reference(problem, t1), rtol, atol)
    assert err <= 3.0, f"{solver_name} on {problem} to t = {t1}: {err:.2f} tolerance units"


def test_tolerance_calibration_options():
    """Kvaerno5 controls at rtol/F, F = rtol^(-1/4); 0 switches it off; bad values are named."""
    assert jode.Kvaerno5().calibration == 0.25 and jode.Kvaerno3().calibration == 0.0
    np.testing.assert_allclose(jode.Kvaerno5().tolerance_boost(jnp.asarray(1e-8)), 100.0)
    assert float(jode.Kvaerno5(tolerance_exponent=0).tolerance_boost(jnp.asarray(1e-8))) == 1
    assert float(jode.Kvaerno5().tolerance_boost(jnp.asarray(0.0))) == 1.0  # atol only
    with pytest.raises(ValueError, match="tolerance_exponent"):
        jode.Kvaerno5(tolerance_exponent=-1.0)
    custom = jode.ESDIRK(tb.KVAERNO5, tolerance_exponent=0.25)
    assert custom.calibration == 0.25


@pytest.mark.slow
def test_kvaerno3_on_robertson():
    y1, _, status = _solve_problem("rober", "Kvaerno3", 1e-6)
    assert int(status) == 0
    err = tolerance_units(y1, PROBLEMS["rober"][5], 1e-6, PROBLEMS["rober"][4])
    assert err <= 10.0, f"Kvaerno3 on rober: error {err:.2f} tolerance units"


# ---------------------------------------------------------------------------------------
# Empirical convergence order (constant steps)
# ---------------------------------------------------------------------------------------


def smooth(t, y, args):
    """A smooth non-autonomous test problem (exercises ∂f/∂t in the Rosenbrock stages)."""
    del args
    return jnp.stack([-y[0] + y[1] ** 2, -2.0 * y[1] + jnp.sin(3.0 * t)])


@pytest.mark.parametrize(
    "solver_name, steps",
    [("ImplicitEuler", (64, 128, 256)), ("Kvaerno3", (8, 16, 32)), ("Kvaerno5", (4, 8, 16)),
     ("Rodas5", (4, 8, 16))],
)
def test_empirical_order(solver_name, steps):
    solver = IMPLICIT_SOLVERS[solver_name]()
    y0 = jnp.asarray([1.0, 0.5])
    ref = solve_ivp(
        lambda t, y: np.array([-y[0] + y[1] ** 2, -2.0 * y[1] + np.sin(3.0 * t)]),
        (0.0, 2.0), [1.0, 0.5], method="DOP853", rtol=1e-13, atol=1e-13,
    ).y[:, -1]

    @jax.jit
    def run(dt):  # dt traced: one compilation for every step size
        sol = jode.solve(smooth, y0, 0.0, 2.0, solver=solver, dt0=dt, rtol=1e-13,
                         atol=1e-13, controller=jode.ConstantStep(), max_steps=512)
        return sol.ys[-1]

    hs = np.array([2.0 / n for n in steps])
    errs = np.array([np.max(np.abs(np.asarray(run(jnp.asarray(h))) - ref)) for h in hs])
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert abs(slope - solver.order) < 0.35, f"{solver_name}: slope {slope:.2f}, errors {errs}"


# ---------------------------------------------------------------------------------------
# Failures, statistics, dense output
# ---------------------------------------------------------------------------------------


def test_newton_failure_is_a_status():
    """One Newton iteration at a demanding κ fails on stiff Van der Pol for every step above
    dtmin: each failure rejects and shrinks the step (nothing raises inside the loop), and
    reaching dtmin that way ends the solve with NEWTON_FAILED, not DT_UNDERFLOW."""
    solver = jode.Kvaerno3(max_iters=1, kappa=1e-12)
    kwargs = dict(rtol=1e-6, atol=1e-8, max_steps=200, controller=jode.PIDController(dtmin=1e-4))
    sol = jode.solve(vdp, jnp.asarray([2.0, 0.0]), 0.0, 1.0, 1000.0, solver=solver,
                     throw=False, **kwargs)
    assert int(sol.status) == int(jode.Status.NEWTON_FAILED)
    assert int(sol.stats["accepted"]) == 0 and int(sol.stats["rejected"]) >= 1
    assert "Newton" in jode.Status(int(sol.status)).message


def test_constructor_without_call_is_a_clear_error():
    with pytest.raises(ValueError, match=r"solver=jode.Kvaerno5\(\)"):
        jode.solve(vdp, jnp.asarray([2.0, 0.0]), 0.0, 1.0, 1000.0, solver=jode.Kvaerno5)


@pytest.mark.slow
def test_dense_output_and_saveat_against_reference():
    """Hermite dense output of Rodas5 on ROBER between steps vs scipy Radau at rtol 1e-12."""
    k = np.array([0.04, 3e7, 1e4])
    ts = np.array([0.3, 4.0, 40.0, 400.0])
    ref = solve_ivp(rober_np, (0.0, 400.0), [1.0, 0.0, 0.0], method="Radau", rtol=1e-11,
                    atol=1e-18, t_eval=ts).y.T
    sol = jode.solve(rober, jnp.asarray([1.0, 0.0, 0.0]), 0.0, 400.0, jnp.asarray(k),
                     solver=jode.Rodas5(), rtol=1e-8, atol=1e-12, saveat=jnp.asarray(ts),
                     dense=True)
    assert tolerance_units(sol.ys, ref, 1e-6, 1e-10) <= 10.0
    mid = np.asarray(sol.evaluate(jnp.asarray(ts)))
    np.testing.assert_allclose(mid, np.asarray(sol.ys), rtol=1e-12, atol=1e-16)


# ---------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------


def _rober_loss(solver, adjoint):
    ts = jnp.asarray([1.0, 10.0, 100.0])
    y0 = jnp.asarray([1.0, 0.0, 0.0])

    def loss(log_k):
        sol = jode.solve(rober, y0, 0.0, 100.0, jnp.exp(log_k), solver=solver, rtol=1e-10,
                         atol=1e-14, saveat=ts, adjoint=adjoint, max_steps=4000)
        return jnp.sum(sol.ys[:, 0]) + 1e4 * jnp.sum(sol.ys[:, 1])

    return loss


def _central_differences(value_fn, x, eps):
    return np.array([
        (value_fn(x.at[i].add(eps)) - value_fn(x.at[i].add(-eps))) / (2 * eps)
        for i in range(x.shape[0])
    ])


@pytest.mark.parametrize(
    "solver_name", ["Kvaerno5", pytest.param("Rodas5", marks=pytest.mark.slow)]
)
def test_robertson_gradient_vs_finite_differences(solver_name):
    """Reverse mode (DirectAdjoint) through an adaptive stiff solve w.r.t. log rate constants."""
    loss = _rober_loss(IMPLICIT_SOLVERS[solver_name](), jode.DirectAdjoint())
    value_and_grad = jax.jit(jax.value_and_grad(loss))  # one compilation serves both
    log_k = jnp.log(jnp.asarray([0.04, 3e7, 1e4]))
    _, grad = value_and_grad(log_k)
    fd = _central_differences(lambda x: float(value_and_grad(x)[0]), log_k, 1e-5)
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4, atol=1e-7)
    assert np.min(np.abs(fd)) > 1e-2  # every rate constant matters: a real check


@pytest.mark.slow
def test_robertson_gradient_forward_equals_reverse():
    loss_fwd = _rober_loss(jode.Kvaerno5(), jode.ForwardMode())
    loss_rev = _rober_loss(jode.Kvaerno5(), jode.DirectAdjoint())
    log_k = jnp.log(jnp.asarray([0.04, 3e7, 1e4]))
    np.testing.assert_allclose(
        np.asarray(jax.jacfwd(loss_fwd)(log_k)), np.asarray(jax.grad(loss_rev)(log_k)),
        rtol=1e-9,
    )


@pytest.mark.slow
@pytest.mark.parametrize("solver_name", ["Kvaerno5", "Rodas5"])
def test_backsolve_adjoint_with_implicit_solver(solver_name):
    """BacksolveAdjoint solves the augmented adjoint system with the same implicit solver;
    its gradient (of the exact solution, up to tolerances) matches central differences of
    the DirectAdjoint loss on Van der Pol with μ = 10."""
    y0, ts = jnp.asarray([2.0, 0.0]), jnp.asarray([0.5, 1.0])
    solver = IMPLICIT_SOLVERS[solver_name]()

    def loss(mu, adjoint):
        sol = jode.solve(vdp, y0, 0.0, 1.0, mu, solver=solver, rtol=1e-9, atol=1e-9,
                         saveat=ts, adjoint=adjoint, max_steps=20000)
        return jnp.sum(sol.ys[:, 0] ** 2) + jnp.sum(sol.ys[:, 1])

    grad = jax.grad(lambda m: loss(m, jode.BacksolveAdjoint()))(jnp.asarray(10.0))
    value = jax.jit(lambda m: loss(m, jode.DirectAdjoint()))
    fd = (value(10.0 + 1e-5) - value(10.0 - 1e-5)) / 2e-5
    np.testing.assert_allclose(float(grad), float(fd), rtol=3e-3)


def test_explicit_solver_on_stiff_problem_suggests_stiff_solvers():
    with pytest.raises(Exception, match=r"jode.Kvaerno5\(\) or jode.Rodas5\(\)"):
        jode.solve(vdp, jnp.asarray([2.0, 0.0]), 0.0, 2000.0, 1000.0, solver=jode.Tsit5(),
                   max_steps=64)


def test_failure_hints_follow_the_solver_type_not_its_name():
    # A user ESDIRK with an arbitrary name is stiff: no "try jode.Kvaerno5()" hint for it;
    # an explicit tableau that calls itself "Kvaerno5" is not, and gets the hint.
    mine = jode.ESDIRK(tb.DIRKTableau("MyMethod", tb.KVAERNO3.a, tb.KVAERNO3.b,
                                      tb.KVAERNO3.c, order=3, b_err=tb.KVAERNO3.b_err,
                                      embedded_order=2, tol=1e-9))
    assert mine.implicit and isinstance(mine, jode.AbstractESDIRK)
    with pytest.raises(Exception, match="max_steps=8") as info:
        jode.solve(vdp, jnp.asarray([2.0, 0.0]), 0.0, 2000.0, 1000.0, solver=mine, max_steps=8)
    assert "Kvaerno5" not in str(info.value) and "Jacobian" in str(info.value)

    impostor = jode.ExplicitRK(tb.ButcherTableau("Kvaerno5", tb.DOPRI5.a, tb.DOPRI5.b,
                                                 tb.DOPRI5.c, order=5, b_err=tb.DOPRI5.b_err,
                                                 embedded_order=4))
    with pytest.raises(Exception, match=r"try jode.Kvaerno5\(\) or jode.Rodas5\(\)"):
        jode.solve(vdp, jnp.asarray([2.0, 0.0]), 0.0, 2000.0, 1000.0, solver=impostor,
                   max_steps=64)
