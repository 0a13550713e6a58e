"""Trial-solution networks (Lagaris, Likas & Fotiadis 1998): conditions satisfied by
construction for any network, the paper's trial forms, training against closed-form
solutions, and bad input. The paper's problems and baselines (the reproduction) are tested in
tests/experiments/test_trial_problems.py.
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import jode
from jode import trial
from jode.trial import Boundary, Dirichlet, InitialValue, Neumann, Problem
from jode.trial.conditions import DIRICHLET
from jode.trial.train import PLATEAU_RATIO, _check_points

PI = np.pi


# --- problems with closed-form solutions ------------------------------------------------
def ode2_problem():
    """ψ' + ψ/5 = e^(−x/5) cos x, ψ(0) = 0 on [0, 2]; ψ = e^(−x/5) sin x (the paper's
    Problem 2)."""
    return Problem(lambda x, p, dp: dp + p / 5 - jnp.exp(-x / 5) * jnp.cos(x),
                   InitialValue(0.0, 0.0), (0.0, 2.0))


def ode2_exact(x):
    return jnp.exp(-x / 5) * jnp.sin(x)


# Dirichlet data of ψ = e^(−x)(x + y³) on the unit square (the paper's Problem 5).
DIRICHLET_SQUARE = Boundary(
    left=Dirichlet(lambda y: y**3),
    right=Dirichlet(lambda y: (1 + y**3) * jnp.exp(-1.0)),
    bottom=Dirichlet(lambda x: x * jnp.exp(-x)),
    top=Dirichlet(lambda x: (x + 1) * jnp.exp(-x)),
)


def _oscillatory(x, y):
    return jnp.exp(-(3 * x + y) / 5) * jnp.sin(9 * x**2 + y)


# Dirichlet data of an oscillatory ψ (the paper's Problem 6).
OSCILLATORY_SQUARE = Boundary(
    left=Dirichlet(lambda y: _oscillatory(0.0, y)),
    right=Dirichlet(lambda y: _oscillatory(1.0, y)),
    bottom=Dirichlet(lambda x: _oscillatory(x, 0.0)),
    top=Dirichlet(lambda x: _oscillatory(x, 1.0)),
)

# ψ = y² sin πx: zero on three edges, ∂ψ/∂y(x, 1) = 2 sin πx (the paper's Problem 7).
NEUMANN_TOP_SQUARE = Boundary(left=Dirichlet(0.0), right=Dirichlet(0.0), bottom=Dirichlet(0.0),
                              top=Neumann(lambda x: 2 * jnp.sin(PI * x)))


def _edge_value(cond, s):
    return jnp.asarray(cond.g(s) if callable(cond.g) else cond.g, s.dtype)


def condition_error(solution, n=101):
    """Max violation of the initial/boundary conditions, evaluated directly: ψ (Dirichlet)
    or the derivative along the coordinate (Neumann) against the data."""
    prob, cond = solution.problem, solution.problem.conditions
    dtype = jnp.zeros(()).dtype
    d1 = lambda f, x, e: jax.jvp(f, (x,), (e,))[1]  # noqa: E731
    if isinstance(cond, InitialValue):
        x0 = jnp.asarray(cond.x0, dtype)
        err = jnp.max(jnp.abs(solution(x0) - jnp.asarray(cond.value, dtype)))
        if cond.slope is not None:
            slope = d1(solution, x0, jnp.ones_like(x0))
            err = jnp.maximum(err, jnp.max(jnp.abs(slope - jnp.asarray(cond.slope, dtype))))
        return float(err)
    if prob.dim == 1:
        errs = []
        for name, at in (("left", prob.lower[0]), ("right", prob.upper[0])):
            c, x = getattr(cond, name), jnp.asarray(at, dtype)
            got = solution(x) if c.kind == DIRICHLET else d1(solution, x, jnp.ones_like(x))
            errs.append(float(jnp.abs(got - _edge_value(c, x))))
        return max(errs)
    (a, c0), (b, d) = prob.lower, prob.upper
    sx, sy = jnp.linspace(a, b, n, dtype=dtype), jnp.linspace(c0, d, n, dtype=dtype)
    edges = {"left": (jnp.stack([jnp.full_like(sy, a), sy], -1), sy, 0),
             "right": (jnp.stack([jnp.full_like(sy, b), sy], -1), sy, 0),
             "bottom": (jnp.stack([sx, jnp.full_like(sx, c0)], -1), sx, 1),
             "top": (jnp.stack([sx, jnp.full_like(sx, d)], -1), sx, 1)}
    errs = []
    for name, (pts, s, axis) in edges.items():
        c = getattr(cond, name)
        e = jnp.zeros(2, dtype).at[axis].set(1)
        got = (jax.vmap(solution)(pts) if c.kind == DIRICHLET
               else jax.vmap(lambda p: d1(solution, p, e))(pts))
        errs.append(float(jnp.max(jnp.abs(got - jax.vmap(lambda v: _edge_value(c, v))(s)))))
    return max(errs)


def fine_grid_error(solution, exact, n=200):
    xs = jnp.linspace(solution.problem.lower[0], solution.problem.upper[0], n)
    return float(jnp.max(jnp.abs(solution.evaluate(xs) - exact(xs))))


def _random_solution(problem, key=0, hidden=6):
    net = trial.sigmoid_mlp(jr.key(key), problem.dim, problem.conditions.out_shape, hidden,
                            init_scale=3.0)
    # Large random output weights: the network is far from any solution.
    net = eqx.tree_at(lambda m: m.layers[-1].weight, net, 5 * net.layers[-1].weight)
    return trial.TrialSolution(net, problem)


def _zero(x, *derivs):
    return jnp.zeros_like(derivs[0])


CONDITIONS = {
    "ivp1": (InitialValue(0.3, 1.7), (0.3, 2.0)),
    "ivp1_inside": (InitialValue(0.5, -2.0), (0.0, 2.0)),
    "ivp2": (InitialValue(0.0, 0.5, slope=-1.5), (0.0, 2.0)),
    "system": (InitialValue(0.0, jnp.array([0.0, 1.0, 2.0])), (0.0, 3.0)),
    "bvp_dd": (Boundary(Dirichlet(0.2), Dirichlet(-1.0)), (-1.0, 2.0)),
    "bvp_dn": (Boundary(Dirichlet(0.2), Neumann(3.0)), (-1.0, 2.0)),
    "bvp_nd": (Boundary(Neumann(-0.5), Dirichlet(1.0)), (0.5, 2.0)),
    "rect_dirichlet": (DIRICHLET_SQUARE, ((0.0, 1.0), (0.0, 1.0))),
    "rect_paper6": (OSCILLATORY_SQUARE, ((0.0, 1.0), (0.0, 1.0))),
    "rect_neumann_top": (NEUMANN_TOP_SQUARE, ((0.0, 1.0), (0.0, 1.0))),
    # Data of u = sin x + x y² + cos y on [-1, 2] x [-0.5, 0.5]: Neumann left and bottom.
    "rect_shifted_mixed": (
        Boundary(left=Neumann(lambda y: jnp.cos(-1.0) + y**2),
                 right=Dirichlet(lambda y: jnp.sin(2.0) + 2 * y**2 + jnp.cos(y)),
                 bottom=Neumann(lambda x: -x + jnp.sin(0.5)),
                 top=Dirichlet(lambda x: jnp.sin(x) + 0.25 * x + jnp.cos(0.5))),
        ((-1.0, 2.0), (-0.5, 0.5)),
    ),
}


# A representative few run by default (each compiles once); all of them with -m slow.
QUICK_CONDITIONS = {"ivp2", "system", "bvp_dn", "rect_neumann_top", "rect_shifted_mixed"}


@pytest.mark.parametrize(
    "name",
    [n if n in QUICK_CONDITIONS else pytest.param(n, marks=pytest.mark.slow)
     for n in sorted(CONDITIONS)],
)
def test_conditions_hold_to_machine_precision_for_any_network(name):
    cond, domain = CONDITIONS[name]
    problem = Problem(_zero, cond, domain)
    sol = _random_solution(problem)
    # The network is not small: the trial function is far from the boundary data inside.
    assert condition_error(sol) < 1e-13


def test_trial_forms_match_the_paper():
    """ψ_t = A + (x − a)N (eq. 11), A + A'(x − a) + (x − a)²N (eq. 13), and the unit-square
    Neumann form B + x(1 − x)y[N − N(x, 1) − ∂N/∂y(x, 1)] (Problem 7)."""
    for cond, domain in (CONDITIONS["ivp1"], CONDITIONS["ivp2"]):
        problem = Problem(_zero, cond, domain)
        sol = _random_solution(problem)
        a, x = domain[0], jnp.asarray(1.1)
        z = (2 * x - (domain[0] + domain[1])) / (domain[1] - domain[0])
        n = sol.network(z[None])
        want = (cond.value + (x - a) * n if cond.slope is None
                else cond.value + cond.slope * (x - a) + (x - a) ** 2 * n)
        assert abs(float(sol(x) - want)) < 1e-14
    sol = _random_solution(Problem(_zero, NEUMANN_TOP_SQUARE, ((0.0, 1.0), (0.0, 1.0))))
    net = lambda p: sol.network(2 * p - 1)  # noqa: E731
    x = jnp.array([0.3, 0.6])
    top = jnp.array([0.3, 1.0])
    n_y = jax.jvp(net, (top,), (jnp.array([0.0, 1.0]),))[1]
    want = 2 * x[1] * jnp.sin(jnp.pi * x[0]) + x[0] * (1 - x[0]) * x[1] * (
        net(x) - net(top) - n_y)
    assert abs(float(sol(x) - want)) < 1e-14


def test_ode2_trains_to_1e6():
    """Problem 2 on 20 points, 10 sigmoid units, reduced iterations: within 1e-6 of the
    closed form on a 10x finer grid, the condition exact."""
    problem = ode2_problem()
    sol, report = trial.train(problem, jr.key(0), points=20, hidden=10, adam_steps=300,
                              lbfgs_steps=50, lm_steps=1000, progress=False)
    assert fine_grid_error(sol, ode2_exact) <= 1e-6
    assert condition_error(sol) < 1e-15
    assert report.loss < 1e-12
    assert report.adam_steps == 300 and report.n_params == 30 and report.n_points == 20


def test_weighted_residual_loss_and_training():
    """`weight`: the reported loss is mean((w(x) G(x))²) over the points (recomputed here from
    the trained solution), and Problem 2 still trains to 1e-6 with w(x) = e^(−x)."""
    problem = ode2_problem()
    w = lambda x: jnp.exp(-x)  # noqa: E731
    sol, report = trial.train(problem, jr.key(0), points=20, hidden=10, adam_steps=300,
                              lbfgs_steps=0, lm_steps=1000, progress=False, weight=w)
    xs = jnp.linspace(0.0, 2.0, 20)
    r = jax.vmap(sol.residual)(xs)
    weighted = float(jnp.mean((w(xs) * r) ** 2))
    assert abs(report.loss - weighted) <= 1e-9 * weighted
    assert abs(float(jnp.mean(r**2)) - weighted) > 1e-2 * weighted  # the weight counts
    assert fine_grid_error(sol, ode2_exact) <= 1e-6


def test_lm_stage_continues_from_a_report():
    """Two Levenberg-Marquardt calls of 100 steps, the second started from the first's
    network and `lm_damping`, take the steps of one 200-step stage: the same parameters."""
    problem = ode2_problem()
    kw = dict(points=12, hidden=6, adam_steps=0, lbfgs_steps=0, tol=0.0, progress=False)
    whole, rep_whole = trial.train(problem, jr.key(3), lm_steps=200, **kw)
    half, rep = trial.train(problem, jr.key(3), lm_steps=100, **kw)
    assert rep.lm_damping > 0 and rep.lm_damping != 1e-3
    again, rep2 = trial.train(problem, jr.key(3), lm_steps=100, network=half.network,
                              lm_damping=rep.lm_damping, **kw)
    assert rep_whole.lm_steps == 200 and rep2.lm_steps == 100
    flat = lambda sol: ravel_pytree(  # noqa: E731
        eqx.filter(sol.network, eqx.is_inexact_array))[0]
    np.testing.assert_allclose(flat(again), flat(whole), rtol=1e-9, atol=1e-12)
    assert rep2.loss == pytest.approx(rep_whole.loss, rel=1e-6)
    with pytest.raises(ValueError, match="lm_damping must be > 0"):
        trial.train(problem, lm_steps=1, lm_damping=0.0, **kw)


def test_weight_bad_input():
    problem = ode2_problem()
    with pytest.raises(ValueError, match="weight must return a scalar"):
        trial.train(problem, points=5, adam_steps=0, lbfgs_steps=0, lm_steps=0,
                    progress=False, weight=lambda x: jnp.stack([x, x]))
    with pytest.raises(ValueError, match="weight must be a function"):
        trial.train(problem, points=5, adam_steps=0, lbfgs_steps=0, lm_steps=0,
                    progress=False, weight=2.0)


def test_bad_input():
    ode = lambda x, p, dp: dp + p  # noqa: E731
    with pytest.raises(ValueError, match="b > a"):
        Problem(ode, InitialValue(0.0, 1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="b > a"):
        Problem(ode, InitialValue(0.0, 1.0), (2.0, 0.0))
    with pytest.raises(ValueError, match="outside the domain"):
        Problem(ode, InitialValue(-1.0, 1.0), (0.0, 1.0))
    with pytest.raises(ValueError, match="1-D domain"):
        Problem(ode, InitialValue(0.0, 1.0), ((0.0, 1.0), (0.0, 1.0)))
    with pytest.raises(ValueError, match="both Neumann"):
        Boundary(Neumann(0.0), Neumann(1.0))
    with pytest.raises(ValueError, match="incompatible"):
        Problem(_zero, Boundary(Dirichlet(lambda y: y + 1.0), Dirichlet(0.0),
                                Dirichlet(0.0), Dirichlet(0.0)), ((0.0, 1.0), (0.0, 1.0)))
    with pytest.raises(ValueError, match="incompatible"):
        Problem(_zero, Boundary(Dirichlet(0.0), Dirichlet(0.0), Dirichlet(0.0),
                                Neumann(lambda x: 1.0 + x)), ((0.0, 1.0), (0.0, 1.0)))
    with pytest.raises(ValueError, match="2-D domain"):
        Problem(_zero, DIRICHLET_SQUARE, (0.0, 1.0))
    with pytest.raises(ValueError, match="slope"):
        InitialValue(0.0, jnp.array([0.0, 1.0]), slope=1.0)
    # A residual of the wrong shape: one equation for a system of two.
    wrong = Problem(lambda x, p, dp: jnp.sum(dp - p), InitialValue(0.0, jnp.array([0.0, 1.0])),
                    (0.0, 1.0))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        trial.train(wrong, adam_steps=1, lbfgs_steps=0, lm_steps=0, progress=False)
    with pytest.raises(ValueError, match="points"):
        trial.train(ode2_problem(), points=jnp.zeros((5, 2)), progress=False)
    # A 2-D residual returning a vector instead of a scalar.
    pde_wrong = Problem(lambda x, p, dp, d2p: jnp.diag(d2p),
                        DIRICHLET_SQUARE, ((0.0, 1.0), (0.0, 1.0)))
    with pytest.raises(ValueError, match=r"shape \(\)"):
        trial.train(pde_wrong, adam_steps=1, lbfgs_steps=0, lm_steps=0, progress=False)
    # Conditions inconsistent with the domain: rectangle data on an interval, 1-D data given
    # as a function, an initial point past the end, a second domain axis with d <= c.
    with pytest.raises(ValueError, match="must be a number"):
        Problem(_zero, Boundary(Dirichlet(lambda y: y), Dirichlet(0.0)), (0.0, 1.0))
    with pytest.raises(ValueError, match="outside the domain"):
        Problem(ode, InitialValue(1.5, 1.0), (0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(c, d\) must satisfy"):
        Problem(_zero, DIRICHLET_SQUARE, ((0.0, 1.0), (1.0, 0.0)))
    with pytest.raises(ValueError, match="order"):
        Problem(_zero, DIRICHLET_SQUARE, ((0.0, 1.0), (0.0, 1.0)), order=3)


@pytest.mark.parametrize(
    "points, match",
    [
        (np.zeros((0,)), "points is empty"),
        (np.array([0.1, np.nan, 0.5]), r"finite and inside the domain \[0.0, 2.0\].*points\[1\]"),
        (np.array([0.1, 0.5, 2.5]), r"1 bad point\(s\), e.g. points\[2\]=\[2.5\]"),
        (np.array([-0.5, 0.5]), r"points\[0\]=\[-0.5\]"),
    ],
    ids=["empty", "nan", "past-the-end", "before-the-start"],
)
def test_bad_points_are_clear_errors(points, match):
    with pytest.raises(ValueError, match=match):
        trial.train(ode2_problem(), points=points, adam_steps=1, lbfgs_steps=0, lm_steps=0,
                    progress=False)


def test_bad_points_on_a_rectangle():
    problem = Problem(_zero, DIRICHLET_SQUARE, ((0.0, 1.0), (0.0, 1.0)))
    with pytest.raises(ValueError, match=r"inside the domain \[0.0, 1.0\] x \[0.0, 1.0\]"):
        trial.train(problem, points=np.array([[0.5, 0.5], [0.5, 1.2]]), progress=False)
    with pytest.raises(ValueError, match="points is empty"):
        trial.train(problem, points=np.zeros((0, 2)), progress=False)
    # The domain's own corners and edges are valid points (checked without training).
    assert _check_points(problem, jnp.array([[0.0, 0.0], [1.0, 1.0], [0.5, 1.0]])) is None


# --- the off-grid check, warnings, restarts, and checks of the problem's order ------------
def laplace_problem():
    """∇²ψ = 0 on the unit square, ψ(x, 1) = sin πx, 0 on the other edges; exact
    ψ = sin πx sinh πy / sinh π."""
    edges = Boundary(left=Dirichlet(0.0), right=Dirichlet(0.0), bottom=Dirichlet(0.0),
                     top=Dirichlet(lambda x: jnp.sin(PI * x)))
    return Problem(lambda x, p, d1, d2: jnp.trace(d2), edges, ((0.0, 1.0), (0.0, 1.0)))


def laplace_exact(x):
    return jnp.sin(PI * x[..., 0]) * jnp.sinh(PI * x[..., 1]) / np.sinh(PI)


# A small network and few steps (a plateau).
LAPLACE_KW = dict(hidden=2, points=6, adam_steps=100, lbfgs_steps=0, lm_steps=200,
                  progress=False)


def test_off_grid_check_against_the_exact_laplace_solution():
    """`validation_error` is max |ψ_t − ψ_exact| over the validation points against the
    closed form, `validation_residual` the RMS of ∇²ψ_t there; with 2 hidden units the fit
    plateaus far above zero and the plateau warning fires."""
    rng = np.random.default_rng(0)
    xv = rng.uniform(0.0, 1.0, (50, 2))
    with pytest.warns(trial.TrialWarning, match="local minimum|step budget"):
        sol, rep = trial.train(laplace_problem(), jr.key(0), validation=xv, exact=laplace_exact,
                               **LAPLACE_KW)
    err = np.max(np.abs(np.asarray(sol.evaluate(xv)) - np.asarray(laplace_exact(xv))))
    lap = jax.vmap(lambda x: jnp.trace(jax.hessian(sol)(x)))(jnp.asarray(xv))
    assert rep.validation_error == pytest.approx(err, rel=1e-12)
    assert rep.validation_residual == pytest.approx(float(jnp.sqrt(jnp.mean(lap**2))), rel=1e-9)
    assert rep.n_validation == 50 and rep.n_params == 8
    # Plateaued: the residual stays a sizeable fraction of the start, the error is visible.
    assert rep.train_residual > PLATEAU_RATIO * rep.start_residual
    assert rep.warnings and err > 1e-3
    assert rep.status in (jode.RESULTS.CONVERGED, jode.RESULTS.MAX_STEPS)


# Problem 2 with 10 units (30 weights) on 10 points, reduced steps: shared by the tests below.
OVERFIT_KW = dict(hidden=10, points=10, adam_steps=300, lbfgs_steps=50, lm_steps=2000,
                  progress=False, exact=ode2_exact)


def _caught(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in caught if issubclass(w.category, trial.TrialWarning)]


def test_overfitting_the_points_is_seen_off_grid():
    """Problem 2 on 10 points with 30 weights: the network interpolates the points (loss at
    rounding level) while its error against the closed form stays ~1e-6; the residual
    between the points shows it and the over-fitting warning fires on each seed that
    interpolated. The default grid (twice as many points as weights) is 10x more accurate
    than any of them."""
    problem = ode2_problem()
    fired, interpolated, errors = 0, 0, []
    for seed in range(3):
        (sol, rep), msgs = _caught(lambda s=seed: trial.train(problem, jr.key(s), **OVERFIT_KW))
        errors.append(fine_grid_error(sol, ode2_exact, n=2001))
        # The off-grid error is the error on 256 random points, below the dense-grid maximum.
        assert 0.3 * errors[-1] < rep.validation_error <= errors[-1] * (1 + 1e-9)
        if rep.loss < 1e-20:
            interpolated += 1
            fired += any("between the collocation points" in m for m in msgs)
            assert rep.residual_ratio > 1e3
    assert interpolated >= 2, f"{interpolated} of 3 seeds interpolated the points"
    assert fired == interpolated, f"the warning fired on {fired} of {interpolated} seeds"
    assert trial.default_points(problem, 30) == 60
    kw = dict(OVERFIT_KW, points=None)
    (sol, rep), msgs = _caught(lambda: trial.train(problem, jr.key(0), **kw))
    assert rep.n_points == 60 and not any("between the collocation points" in m for m in msgs)
    assert rep.residual_ratio < 10
    err = fine_grid_error(sol, ode2_exact, n=2001)
    assert err < 1e-6 and 10 * err < min(errors), (err, errors)


def test_restarts_keep_the_best_start():
    """restarts=3: the kept solution is the start with the smallest validation residual
    (recomputed from the returned solution), and start i is reproducible alone from
    jr.fold_in(key, i)."""
    problem, key = ode2_problem(), jr.key(5)
    xv = np.random.default_rng(1).uniform(0.0, 2.0, 256)
    (sol, rep), _ = _caught(lambda: trial.train(problem, key, restarts=3, validation=xv,
                                                **OVERFIT_KW))
    assert rep.restarts == 3 and len(rep.restart_residuals) == 3
    assert len(set(rep.restart_residuals)) == 3  # three different starts
    assert rep.validation_residual == min(rep.restart_residuals)
    assert rep.best_restart == int(np.argmin(rep.restart_residuals))
    r = jax.vmap(sol.residual)(jnp.asarray(xv))
    assert float(jnp.sqrt(jnp.mean(r**2))) == pytest.approx(rep.validation_residual, rel=1e-6)
    i = rep.best_restart
    alone_key = key if i == 0 else jr.fold_in(key, i)
    (_, alone), _ = _caught(lambda: trial.train(problem, alone_key, validation=xv,
                                                **OVERFIT_KW))
    assert alone.validation_residual == pytest.approx(rep.validation_residual, rel=1e-9)
    with pytest.raises(ValueError, match="restarts must be an int >= 1"):
        trial.train(problem, restarts=0, progress=False)
    with pytest.raises(ValueError, match="leave network=None"):
        trial.train(problem, restarts=2, network=sol.network, progress=False)


def test_underdetermined_and_wrong_arity_are_named_errors():
    ode2nd = lambda x, p, dp, d2p: d2p + p  # noqa: E731
    with pytest.raises(ValueError, match="under-determined.*slope="):
        Problem(ode2nd, InitialValue(0.0, 1.0), (0.0, 1.0))
    with pytest.raises(ValueError, match="under-determined"):
        Problem(lambda x, *d: d[-1], InitialValue(0.0, 1.0), (0.0, 1.0), order=2)
    with pytest.raises(ValueError, match="over-determined"):
        Problem(lambda x, p, dp: dp, Boundary(Dirichlet(0.0), Dirichlet(1.0)), (0.0, 1.0),
                order=1)
    # A Laplace residual without the gradient argument: the expected signature is named.
    with pytest.raises(ValueError, match=r"\(x, psi, d1, d2\)"):
        Problem(lambda x, p, d2p: jnp.trace(d2p), DIRICHLET_SQUARE, ((0.0, 1.0), (0.0, 1.0)))
    with pytest.raises(ValueError, match=r"\(x, psi, d1\)"):
        Problem(lambda x, p: p, InitialValue(0.0, 1.0), (0.0, 1.0))
    with pytest.raises(ValueError, match=r"\(x, psi, d1, d2\)"):
        Problem(lambda x, p, dp: dp, Boundary(Dirichlet(0.0), Dirichlet(1.0)), (0.0, 1.0))
    # Signatures that fit: defaults, *args, and a well-posed second-order problem.
    Problem(lambda x, p, dp, d2p=None: dp, InitialValue(0.0, 1.0), (0.0, 1.0))
    Problem(ode2nd, InitialValue(0.0, 1.0, slope=0.0), (0.0, 1.0))
    Problem(lambda x, *d: d[0], DIRICHLET_SQUARE, ((0.0, 1.0), (0.0, 1.0)))


def test_levenberg_marquardt_stall_rule():
    """One flat chunk (λ growing after rejected steps) does not end the stage; LM_PATIENCE
    chunks that together improve the loss by less than LM_RTOL do."""
    from jode._training import run_chunks
    from jode.trial.train import LM_PATIENCE, _rules

    def run(values):
        out = run_chunks(lambda i: i + 1, -1, total=100 * len(values), chunk=100,
                         loss_of=lambda i: values[i], stop=_rules(0.0, stall=True))
        return out.steps // 100, out.status

    # Flat, then progress again: runs to the budget.
    assert run([1.0, 1.0, 0.5, 0.5, 0.2, 0.1]) == (6, jode.RESULTS.MAX_STEPS)
    flat = [1.0, 0.5] + [0.5 * (1 - 1e-5) ** k for k in range(1, 10)]
    assert run(flat) == (2 + LM_PATIENCE, jode.RESULTS.CONVERGED)
    assert run([1.0, float("nan"), 0.1]) == (2, jode.RESULTS.NONFINITE)
