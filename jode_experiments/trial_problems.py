"""The test problems of Lagaris, Likas & Fotiadis (1998), Section IV, with exact solutions.

Every exact solution below was checked by substitution (tests/test_trial.py does it again
with automatic differentiation). Problem numbers follow the paper:

- Problem 1 (IV-A):  ψ' + (x + (1+3x²)/(1+x+x³)) ψ = x³ + 2x + x²(1+3x²)/(1+x+x³), ψ(0) = 1,
  x ∈ [0, 1];  ψ = e^(−x²/2)/(1+x+x³) + x².
- Problem 2 (IV-A):  ψ' + ψ/5 = e^(−x/5) cos x, ψ(0) = 0, x ∈ [0, 2];  ψ = e^(−x/5) sin x
  (also on [0, 5], the interval of a well-known PyTorch reproduction).
- Problem 3 (IV-B):  ψ'' + ψ'/5 + ψ = −(1/5) e^(−x/5) cos x;  ψ = e^(−x/5) sin x, as the
  initial value problem ψ(0) = 0, ψ'(0) = 1 on [0, 2] and as the boundary value problem
  ψ(0) = 0, ψ(1) = sin(1) e^(−1/5) on [0, 1].
- Problem 4 (IV-C):  ψ1' = cos x + ψ1² + ψ2 − (1 + x² + sin² x),
  ψ2' = 2x − (1 + x²) sin x + ψ1 ψ2, ψ1(0) = 0, ψ2(0) = 1, x ∈ [0, 3];  (sin x, 1 + x²).
- Problem 5 (IV-D):  ∇²ψ = e^(−x)(x − 2 + y³ + 6y) on [0, 1]², Dirichlet data from
  ψ = e^(−x)(x + y³).
- Problem 6 (IV-D):  ∇²ψ = e^(−(ax+y)/5){[−(4/5)a³x − 2/5 + 2a²] cos(a²x² + y)
  + [1/25 − 1 − 4a⁴x² + a²/25] sin(a²x² + y)}, a = 3, on [0, 1]², Dirichlet data from
  ψ = e^(−(ax+y)/5) sin(a²x² + y).
- Problem 7 (IV-D):  ∇²ψ = (2 − π²y²) sin πx, ψ = 0 on x = 0, x = 1, y = 0 and
  ∂ψ/∂y(x, 1) = 2 sin πx;  ψ = y² sin πx.
- Problem 8 (IV-D, nonlinear):  ∇²ψ + ψ ∂ψ/∂y = sin πx (2 − π²y² + 2y³ sin πx), with the
  conditions of Problem 7;  ψ = y² sin πx.

For the initial value problems, `vector_field`/`y0` give the same equation as a first-order
system f(t, y, args) for `jode.solve` (the Euler and RK4 baselines); `state_component` says
which component of that state is ψ.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp

from jode.trial.conditions import Boundary, Dirichlet, InitialValue, Neumann
from jode.trial.problem import Problem

PI = jnp.pi


@dataclasses.dataclass(frozen=True)
class PaperProblem:
    """A problem of the paper: the `Problem`, its exact solution, and an ODE form."""

    name: str
    title: str
    problem: Problem
    exact: Callable
    vector_field: Callable | None = None
    y0: tuple | None = None
    state_component: int | None = None


def _g(x):
    return 1 + x + x**3


def problem1() -> PaperProblem:
    def residual(x, p, dp):
        g, gp = _g(x), 1 + 3 * x**2
        return dp + (x + gp / g) * p - (x**3 + 2 * x + x**2 * gp / g)

    def f(t, y, args):
        g, gp = _g(t), 1 + 3 * t**2
        return (t**3 + 2 * t + t**2 * gp / g) - (t + gp / g) * y

    return PaperProblem(
        "ode1", "Problem 1: first-order linear ODE on [0, 1]",
        Problem(residual, InitialValue(0.0, 1.0), (0.0, 1.0)),
        lambda x: jnp.exp(-(x**2) / 2) / _g(x) + x**2,
        f, (1.0,), None,
    )


def problem2(b: float = 2.0) -> PaperProblem:
    def residual(x, p, dp):
        return dp + p / 5 - jnp.exp(-x / 5) * jnp.cos(x)

    def f(t, y, args):
        return jnp.exp(-t / 5) * jnp.cos(t) - y / 5

    name = "ode2" if b == 2.0 else f"ode2_0_{b:g}"
    return PaperProblem(
        name, f"Problem 2: ψ' + ψ/5 = e^(-x/5) cos x on [0, {b:g}]",
        Problem(residual, InitialValue(0.0, 0.0), (0.0, b)),
        lambda x: jnp.exp(-x / 5) * jnp.sin(x),
        f, (0.0,), None,
    )


def _residual3(x, p, dp, d2p):
    return d2p + dp / 5 + p + jnp.exp(-x / 5) * jnp.cos(x) / 5


def _exact3(x):
    return jnp.exp(-x / 5) * jnp.sin(x)


def problem3_ivp() -> PaperProblem:
    def f(t, y, args):
        return jnp.stack([y[1], -jnp.exp(-t / 5) * jnp.cos(t) / 5 - y[1] / 5 - y[0]])

    return PaperProblem(
        "ode3_ivp", "Problem 3 (IVP): ψ'' + ψ'/5 + ψ = -(1/5)e^(-x/5) cos x on [0, 2]",
        Problem(_residual3, InitialValue(0.0, 0.0, slope=1.0), (0.0, 2.0)),
        _exact3, f, (0.0, 1.0), 0,
    )


def problem3_bvp() -> PaperProblem:
    right = float(jnp.sin(1.0) * jnp.exp(-0.2))
    return PaperProblem(
        "ode3_bvp", "Problem 3 (BVP): ψ(0) = 0, ψ(1) = sin(1)e^(-1/5) on [0, 1]",
        Problem(_residual3, Boundary(left=Dirichlet(0.0), right=Dirichlet(right)), (0.0, 1.0)),
        _exact3,
    )


def problem4() -> PaperProblem:
    def rhs(x, p):
        p1, p2 = p[0], p[1]
        return jnp.stack([
            jnp.cos(x) + p1**2 + p2 - (1 + x**2 + jnp.sin(x) ** 2),
            2 * x - (1 + x**2) * jnp.sin(x) + p1 * p2,
        ])

    return PaperProblem(
        "ode4", "Problem 4: coupled nonlinear system on [0, 3]",
        Problem(lambda x, p, dp: dp - rhs(x, p), InitialValue(0.0, jnp.array([0.0, 1.0])),
                (0.0, 3.0)),
        lambda x: jnp.stack([jnp.sin(x), 1 + x**2], axis=-1),
        lambda t, y, args: rhs(t, y), (0.0, 1.0), None,
    )


def _exact5(x):
    return jnp.exp(-x[..., 0]) * (x[..., 0] + x[..., 1] ** 3)


def problem5() -> PaperProblem:
    def residual(x, p, dp, d2p):
        return jnp.trace(d2p) - jnp.exp(-x[0]) * (x[0] - 2 + x[1] ** 3 + 6 * x[1])

    edges = Boundary(
        left=Dirichlet(lambda y: y**3),
        right=Dirichlet(lambda y: (1 + y**3) * jnp.exp(-1.0)),
        bottom=Dirichlet(lambda x: x * jnp.exp(-x)),
        top=Dirichlet(lambda x: (x + 1) * jnp.exp(-x)),
    )
    return PaperProblem(
        "pde5", "Problem 5: Poisson, Dirichlet on the unit square",
        Problem(residual, edges, ((0.0, 1.0), (0.0, 1.0))), _exact5,
    )


A6 = 3.0


def _exact6(x):
    xx, yy = x[..., 0], x[..., 1]
    return jnp.exp(-(A6 * xx + yy) / 5) * jnp.sin(A6**2 * xx**2 + yy)


def problem6() -> PaperProblem:
    a = A6

    def residual(x, p, dp, d2p):
        xx, yy = x[0], x[1]
        arg = a**2 * xx**2 + yy
        f = jnp.exp(-(a * xx + yy) / 5) * (
            (-4 / 5 * a**3 * xx - 2 / 5 + 2 * a**2) * jnp.cos(arg)
            + (1 / 25 - 1 - 4 * a**4 * xx**2 + a**2 / 25) * jnp.sin(arg)
        )
        return jnp.trace(d2p) - f

    def edge(fixed_x=None, fixed_y=None):
        if fixed_x is not None:
            return Dirichlet(lambda y: _exact6(jnp.stack([jnp.full_like(y, fixed_x), y])))
        return Dirichlet(lambda x: _exact6(jnp.stack([x, jnp.full_like(x, fixed_y)])))

    edges = Boundary(left=edge(fixed_x=0.0), right=edge(fixed_x=1.0),
                     bottom=edge(fixed_y=0.0), top=edge(fixed_y=1.0))
    return PaperProblem(
        "pde6", "Problem 6: Poisson, Dirichlet, oscillatory (a = 3)",
        Problem(residual, edges, ((0.0, 1.0), (0.0, 1.0))), _exact6,
    )


def _mixed_edges():
    zero = Dirichlet(0.0)
    return Boundary(left=zero, right=zero, bottom=zero,
                    top=Neumann(lambda x: 2 * jnp.sin(PI * x)))


def _exact7(x):
    return x[..., 1] ** 2 * jnp.sin(PI * x[..., 0])


def problem7() -> PaperProblem:
    def residual(x, p, dp, d2p):
        return jnp.trace(d2p) - (2 - PI**2 * x[1] ** 2) * jnp.sin(PI * x[0])

    return PaperProblem(
        "pde7", "Problem 7: Poisson, Dirichlet + Neumann edge",
        Problem(residual, _mixed_edges(), ((0.0, 1.0), (0.0, 1.0))), _exact7,
    )


def problem8() -> PaperProblem:
    def residual(x, p, dp, d2p):
        s = jnp.sin(PI * x[0])
        return jnp.trace(d2p) + p * dp[1] - s * (2 - PI**2 * x[1] ** 2 + 2 * x[1] ** 3 * s)

    return PaperProblem(
        "pde8", "Problem 8: nonlinear ∇²ψ + ψ ψ_y, Dirichlet + Neumann edge",
        Problem(residual, _mixed_edges(), ((0.0, 1.0), (0.0, 1.0))), _exact7,
    )


def all_problems() -> dict[str, PaperProblem]:
    """Every problem by name: ode1, ode2, ode2_0_5, ode3_ivp, ode3_bvp, ode4, pde5…pde8."""
    probs = [problem1(), problem2(), problem2(5.0), problem3_ivp(), problem3_bvp(),
             problem4(), problem5(), problem6(), problem7(), problem8()]
    return {p.name: p for p in probs}


def _edge_points(lower, upper, n, dtype):
    (a, c), (b, d) = lower, upper
    sx = jnp.linspace(a, b, n, dtype=dtype)
    sy = jnp.linspace(c, d, n, dtype=dtype)
    return {
        "left": (jnp.stack([jnp.full_like(sy, a), sy], -1), sy, 0),
        "right": (jnp.stack([jnp.full_like(sy, b), sy], -1), sy, 0),
        "bottom": (jnp.stack([sx, jnp.full_like(sx, c)], -1), sx, 1),
        "top": (jnp.stack([sx, jnp.full_like(sx, d)], -1), sx, 1),
    }


def condition_error(solution) -> float:
    """Max violation of the initial/boundary conditions (should be ~machine precision)."""
    return float(_condition_error(solution))


def _condition_error_impl(solution):
    import jax

    from jode.trial.conditions import DIRICHLET, _edge_value

    prob = solution.problem
    cond = prob.conditions
    dtype = jnp.zeros(()).dtype
    if isinstance(cond, InitialValue):
        x0 = jnp.asarray(cond.x0, dtype)
        err = jnp.max(jnp.abs(solution(x0) - jnp.asarray(cond.value, dtype)))
        if cond.slope is not None:
            slope = jax.jvp(solution, (x0,), (jnp.ones_like(x0),))[1]
            err = jnp.maximum(err, jnp.max(jnp.abs(slope - jnp.asarray(cond.slope, dtype))))
        return err
    if prob.dim == 1:
        errs = []
        for name, at in (("left", prob.lower[0]), ("right", prob.upper[0])):
            c, x = getattr(cond, name), jnp.asarray(at, dtype)
            if c.kind == DIRICHLET:
                got = solution(x)
            else:
                got = jax.jvp(solution, (x,), (jnp.ones_like(x),))[1]
            errs.append(jnp.abs(got - _edge_value(c, x)))
        return jnp.maximum(*errs)
    errs = []
    for name, (pts, s, axis) in _edge_points(prob.lower, prob.upper, 101, dtype).items():
        c = getattr(cond, name)
        if c.kind == DIRICHLET:
            got = jax.vmap(solution)(pts)
        else:
            e = jnp.zeros(2, dtype).at[axis].set(1)
            got = jax.vmap(lambda p: jax.jvp(solution, (p,), (e,))[1])(pts)
        want = jax.vmap(lambda v: _edge_value(c, v))(s)
        errs.append(jnp.max(jnp.abs(got - want)))
    return jnp.max(jnp.stack(errs))


def _condition_error(solution):
    import equinox as eqx

    return eqx.filter_jit(_condition_error_impl)(solution)


def assess(paper_problem: PaperProblem, solution, n_train: int) -> dict:
    """Max |ψ_t − ψ_exact| on the training grid, a 10x finer interior grid, and just outside
    the domain (10% beyond its upper end(s)), plus the condition violation."""
    prob = paper_problem.problem
    exact = paper_problem.exact
    dtype = jnp.zeros(()).dtype

    def err(pts):
        return float(jnp.max(jnp.abs(solution.evaluate(pts) - exact(pts))))

    def grid(lo, hi, n):
        axes = [jnp.linspace(a, b, n, dtype=dtype) for a, b in zip(lo, hi)]
        if len(axes) == 1:
            return axes[0]
        xx, yy = jnp.meshgrid(*axes, indexing="ij")
        return jnp.stack([xx.ravel(), yy.ravel()], -1)

    lo, hi = prob.lower, prob.upper
    n_fine = 10 * (n_train - 1) + 1
    width = [b - a for a, b in zip(lo, hi)]
    if prob.dim == 1:
        outside = jnp.linspace(hi[0], hi[0] + 0.1 * width[0], 21, dtype=dtype)[1:]
    else:
        # The band beyond the right and top edges: x or y in (1, 1.1] of the side.
        band = grid(lo, [h + 0.1 * w for h, w in zip(hi, width)], 56)
        inside = jnp.all(band <= jnp.asarray(hi, dtype), axis=-1)
        outside = band[~inside]
    return {
        "train_grid": err(grid(lo, hi, n_train)),
        "fine_grid": err(grid(lo, hi, n_fine)),
        "outside": err(outside),
        "conditions": condition_error(solution),
    }
