"""The paper's problems (`jode_experiments.trial_problems`): their exact solutions, training
to the acceptance targets, and the finite-difference and Runge-Kutta baselines."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jode
from jode import trial
from jode_experiments import trial_baselines
from jode_experiments import trial_problems as paper

PROBLEMS = paper.all_problems()


def _exact_derivatives(pp, x):
    """(ψ, Dψ, D²ψ) of the exact solution by automatic differentiation."""
    f = pp.exact
    if pp.problem.dim == 1:
        d1 = lambda z: jax.jvp(f, (z,), (jnp.ones_like(z),))[1]  # noqa: E731
        d2 = lambda z: jax.jvp(d1, (z,), (jnp.ones_like(z),))[1]  # noqa: E731
        return (f(x), d1(x), d2(x))[: pp.problem.order + 1]
    return f(x), jax.grad(f)(x), jax.hessian(f)(x)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_paper_exact_solutions_solve_the_equations(name):
    """Each stated exact solution makes the residual vanish (checks the transcription)."""
    pp = PROBLEMS[name]
    key = jr.key(1)
    pts = trial.random_points(pp.problem, key, 7)
    res = jax.jit(jax.vmap(lambda x: pp.problem.residual(x, *_exact_derivatives(pp, x))))(pts)
    assert float(jnp.max(jnp.abs(res))) < 1e-11


def test_ode2_trains_to_1e6_and_beats_euler():
    """Problem 2 on 20 points, 10 sigmoid units, reduced iterations (RK4 on the same 20
    points, 2.6e-8, is beaten only with the full iterations: see test_acceptance_full)."""
    pp = PROBLEMS["ode2"]
    sol, report = trial.train(pp.problem, jr.key(0), points=20, hidden=10, adam_steps=300,
                              lbfgs_steps=50, lm_steps=1000, progress=False)
    m = paper.assess(pp, sol, 20)
    base = trial_baselines.euler_rk4_errors(pp, 20)
    assert m["fine_grid"] <= 1e-6
    assert m["fine_grid"] < base["euler"]
    assert base["rk4"] < 1e-7
    assert m["conditions"] < 1e-15
    assert report.loss < 1e-12
    assert report.adam_steps == 300 and report.n_params == 30 and report.n_points == 20


@pytest.mark.parametrize(
    "name",
    ["ode3_bvp", pytest.param("ode1", marks=pytest.mark.slow),
     pytest.param("ode3_ivp", marks=pytest.mark.slow)],
)
def test_ode_quick_acceptance(name):
    """Problems 1, 3 (IVP) and 3 (BVP) on 20 points with the paper's 10 units: max error on a
    10x finer grid <= 1e-6, below Euler and RK4 on the same 20 points (initial value
    problems), conditions exact."""
    pp = PROBLEMS[name]
    sol, report = trial.train(pp.problem, jr.key(0), points=20, hidden=10, adam_steps=1000,
                              lbfgs_steps=500, lm_steps=3000, progress=False)
    m = paper.assess(pp, sol, 20)
    assert m["fine_grid"] <= 1e-6
    assert m["conditions"] < 1e-14
    if pp.vector_field is not None:
        base = trial_baselines.euler_rk4_errors(pp, 20)
        assert m["fine_grid"] < min(base["euler"], base["rk4"])
    assert report.n_params == 30


@pytest.mark.slow  # compiling the PDE training chunks alone takes ~30 s on an idle 2-core CPU
def test_pde7_mixed_conditions_trains():
    """Problem 7 (Dirichlet + Neumann edge) on the paper's 10x10 grid, reduced iterations."""
    pp = PROBLEMS["pde7"]
    sol, report = trial.train(pp.problem, jr.key(0), points=10, hidden=10, adam_steps=200,
                              lbfgs_steps=0, lm_steps=300, progress=False)
    m = paper.assess(pp, sol, 10)
    assert m["fine_grid"] <= 1e-4
    assert m["conditions"] < 1e-13


def test_poisson_fd_is_second_order():
    pp = PROBLEMS["pde5"]
    source = lambda x: jnp.exp(-x[0]) * (x[0] - 2 + x[1] ** 3 + 6 * x[1])  # noqa: E731
    errs = []
    for n in (9, 17):
        xs, psi = trial_baselines.poisson_fd(
            source, pp.problem.conditions, (0.0, 0.0), (1.0, 1.0), n
        )
        errs.append(float(jnp.max(jnp.abs(psi - pp.exact(xs)))))
    order = np.log2(errs[0] / errs[1])
    assert abs(order - 2) < 0.15, order


@pytest.mark.slow
def test_euler_and_rk4_baselines():
    """The baselines integrate the paper's IVPs as first-order systems (ψ, ψ') correctly."""
    pp = PROBLEMS["ode3_ivp"]
    xs, ys = trial_baselines.ivp_solve(pp, jode.RK4(), 41)
    assert float(jnp.max(jnp.abs(ys - pp.exact(xs)))) < 1e-7
    e = trial_baselines.euler_rk4_errors(pp, 41)
    # Euler's global error is O(h): between h/10 and h for this smooth problem (h = 0.05).
    assert 0.005 < e["euler"] < 0.05 and e["rk4"] < 1e-7


# Every problem strict. ode4 (30 units, 150 points, residual weight e^(−3x), 10,000 LM steps)
# takes 12-16 min on the 2-core box, pde6 (24x24 points, 50 units) ~12 min, ode2_0_5 ~20 s.
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_acceptance_full(name):
    """The acceptance configuration of `jode reproduce trial`: max error on a 10x finer grid
    <= 1e-6 (ODEs) / 1e-5 (PDEs), better than Euler and RK4 on the same points."""
    from jode_experiments import trial as exp

    pp, cfg = PROBLEMS[name], exp.FULL[name]
    _, _, m = exp.train_one(pp, cfg, exp.STEPS_FULL, progress=False)
    assert m["fine_grid"] <= (1e-6 if name.startswith("ode") else 1e-5)
    assert m["conditions"] < 1e-12
    base = exp.baseline_errors(pp, cfg["points"])
    if "rk4" in base:
        assert m["fine_grid"] < min(base["rk4"], base["euler"])
