"""Gradient-flow optimizer: optax contract, accuracy against the exact flow of a quadratic,
EulerHeun's one-gradient steps, the stiff Ros2 variant, the heavy-ball flow against the exact
damped oscillator, minimize_by_flow on the camel and Goldstein-Price minima. The comparisons
with the reproductions' test-function suite live in tests/experiments."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jode
from jode import optim

# Two classic test functions (Molga & Smutnicki 2005, "Test functions for optimization
# needs"; Goldstein & Price 1971), with their published minimizers and minimum values.


def six_hump_camel(p):
    """(4 - 2.1x² + x⁴/3)x² + xy + (-4 + 4y²)y²: global minima -1.031628 at ±(0.0898, -0.7127)."""
    x, y = p[0], p[1]
    return (4.0 - 2.1 * x**2 + x**4 / 3.0) * x**2 + x * y + (-4.0 + 4.0 * y**2) * y**2


def goldstein_price(p):
    """Goldstein-Price: global minimum 3 at (0, -1)."""
    x, y = p[0], p[1]
    a = 1.0 + (x + y + 1.0) ** 2 * (
        19.0 - 14.0 * x + 3.0 * x**2 - 14.0 * y + 6.0 * x * y + 3.0 * y**2
    )
    b = 30.0 + (2.0 * x - 3.0 * y) ** 2 * (
        18.0 - 32.0 * x + 12.0 * x**2 + 48.0 * y - 36.0 * x * y + 27.0 * y**2
    )
    return a * b


CAMEL_MINIMIZERS = ((0.0898420131, -0.712656403021), (-0.0898420131, 0.712656403021))
CAMEL_MINIMUM = -1.031628453489877
GOLDSTEIN_PRICE_MINIMIZERS = ((0.0, -1.0),)

# A quadratic L(θ) = ½ Σ a_i (θ_i - c_i)² in a pytree: its gradient flow is known exactly,
# θ_i(t) = c_i + exp(-a_i t)(θ_i(0) - c_i).
A = {"w": jnp.asarray([[1.0, 3.0], [0.5, 8.0]]), "b": jnp.asarray([2.0])}
CENTER = {"w": jnp.asarray([[1.0, -2.0], [0.5, 0.0]]), "b": jnp.asarray([-1.0])}
P0 = {"w": jnp.zeros((2, 2)), "b": jnp.asarray([1.0])}


def quadratic(p):
    terms = jax.tree.map(lambda a, x, c: jnp.sum(a * (x - c) ** 2), A, p, CENTER)
    return 0.5 * sum(jax.tree.leaves(terms))


def exact_flow(t):
    return jax.tree.map(lambda a, c, x0: c + jnp.exp(-a * t) * (x0 - c), A, CENTER, P0)


def _max_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _run(opt, loss, params, n, from_state=True):
    """n optax steps in one jitted scan (one compilation per optimizer)."""

    def body(carry, _):
        p, s = carry
        if from_state:
            v, g = optax.value_and_grad_from_state(loss)(p, state=s)
        else:
            v, g = jax.value_and_grad(loss)(p)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=loss)
        return (optax.apply_updates(p, u), s), jnp.sqrt(
            sum(jnp.sum(x**2) for x in jax.tree.leaves(u))
        )

    @jax.jit
    def run(p):
        return jax.lax.scan(body, (p, opt.init(p)), None, length=n)

    return run(params)


def _flow_state(state):
    return [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optim.FlowState))
        if isinstance(s, optim.FlowState)
    ][0]


def test_flow_follows_exact_gradient_flow_on_pytree_quadratic():
    opt = optim.gradient_flow(jode.Tsit5(), rtol=1e-7, atol=1e-9)
    (p, state), _ = _run(opt, quadratic, P0, 12)
    # After 12 accepted steps the parameters are the exact flow at the reached time.
    assert int(state.count) == 12
    assert float(state.t) > 0.5
    assert _max_diff(p, exact_flow(state.t)) < 1e-6
    # The state's value and gradient (recycled by value_and_grad_from_state) are L, ∇L at p.
    assert abs(float(state.value) - float(quadratic(p))) < 1e-12
    assert _max_diff(state.grad, jax.grad(quadratic)(p)) < 1e-12
    # Gradient evaluations inside the optimizer: the initial-step probe, then 6 per Tsit5
    # attempt (7 stages, the first one reused: FSAL).
    assert jode.Tsit5().f_evals_per_step == 6
    assert int(state.nfev) == 1 + 6 * (int(state.count) + int(state.rejected))


def test_flow_converges_and_works_in_chain():
    # Clipping after the flow bounds every step; the iteration still ends at the minimizer.
    # (An explicit flow settles within about the tolerance of the minimizer: rtol is tight.)
    opt = optax.chain(
        optim.gradient_flow(jode.Tsit5(), rtol=1e-8, atol=1e-10), optax.clip_by_global_norm(0.25)
    )
    (p, state), norms = _run(opt, quadratic, P0, 150, from_state=False)
    assert float(jnp.max(norms)) <= 0.25 + 1e-12
    assert _max_diff(p, CENTER) < 1e-5
    assert int(_flow_state(state).status) == 0


def test_step_relative_error_converges_to_known_minimizer():
    # error_scale="step" with a loose rtol: the iteration still ends at the exact minimizer
    # of the quadratic (the center), not within a tolerance-sized ball around it.
    opt = optim.gradient_flow(jode.Bosh3(), rtol=0.1, atol=1e-12, error_scale="step")
    (p, state), _ = _run(opt, quadratic, P0, 80)
    assert _max_diff(p, CENTER) < 1e-9
    assert int(state.status) == 0


def test_step_relative_error_vs_classic_scale_near_a_minimum():
    # Tsit5, rtol 1e-2 on the six-hump camel from (0.5, -0.3). With the classic scale
    # atol + rtol|θ| the step sits on the stability boundary near the minimizer and the stiff
    # component keeps an amplitude of about the tolerance: f stays > 1e-6 above the minimum.
    # Scaled by the step taken, the allowed error shrinks with the motion: f converges.
    fn, x0 = six_hump_camel, jnp.asarray([0.5, -0.3])
    out = {}
    for scale, atol in (("params", 1e-4), ("step", 1e-10)):
        opt = optim.gradient_flow(jode.Tsit5(), rtol=1e-2, atol=atol, error_scale=scale)
        (p, _), _ = _run(opt, fn, x0, 60)
        out[scale] = p
    f_star = -1.031628453489877  # six_hump_camel at its global minimizers (to 1e-15)
    assert float(fn(out["params"])) - f_star > 1e-6
    assert abs(float(fn(out["step"])) - f_star) < 1e-10
    camel_min = CAMEL_MINIMIZERS[0]
    np.testing.assert_allclose(np.asarray(out["step"]), camel_min, atol=1e-6)


def test_euler_heun_flow_is_gradient_descent_at_one_gradient_per_step():
    # EulerHeun: each accepted step is θ_{n+1} = θ_n - h_n ∇L(θ_n) with h_n from the error
    # control, and the gradient at θ_{n+1} (the Heun stage) is the next step's: one new
    # gradient per attempt. With the step-scaled error it converges to the exact minimizer.
    opt = optim.gradient_flow(optim.EulerHeun(), rtol=0.3, atol=1e-12, error_scale="step")
    loss = quadratic

    def body(carry, _):
        p, s = carry
        v, g = optax.value_and_grad_from_state(loss)(p, state=s)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=loss)
        p = optax.apply_updates(p, u)
        return (p, s), (p, s.t)

    @jax.jit
    def run(p):
        return jax.lax.scan(body, (p, opt.init(p)), None, length=80)

    (p, state), (ps, ts) = run(P0)
    assert int(state.count) == 80 and int(state.rejected) > 0
    assert int(state.nfev) == 1 + int(state.count) + int(state.rejected)  # + the h0 probe
    assert _max_diff(p, CENTER) < 1e-9
    prev = jax.tree.map(lambda x0, x: jnp.concatenate([x0[None], x[:-1]]), P0, ps)
    hs = jnp.diff(jnp.concatenate([jnp.zeros(1), ts]))
    grads = jax.vmap(jax.grad(loss))(prev)
    gd = jax.tree.map(lambda x, g: x - hs.reshape((-1,) + (1,) * (x.ndim - 1)) * g, prev, grads)
    assert _max_diff(gd, ps) < 1e-13
    assert float(jnp.min(hs)) > 0


def test_heavy_ball_flow_follows_damped_oscillator_and_converges():
    # θ'' + γθ' + a(θ - c) = 0, θ'(0) = 0, every mode underdamped (γ = 1 < 2√a):
    # θ(t) = c + e^{-γt/2} (x0 cos ωt + γ/(2ω) x0 sin ωt), x0 = θ(0) - c, ω = √(a - γ²/4).
    gamma = 1.0

    def exact(t):
        def one(a, c, p0):
            w = jnp.sqrt(a - gamma**2 / 4)
            x0 = p0 - c
            return c + jnp.exp(-gamma * t / 2) * (
                x0 * jnp.cos(w * t) + gamma / (2 * w) * x0 * jnp.sin(w * t)
            )

        return jax.tree.map(one, A, CENTER, P0)

    opt = optim.heavy_ball_flow(jode.Tsit5(), damping=gamma, rtol=1e-8, atol=1e-10)
    (p, state), _ = _run(opt, quadratic, P0, 40)
    st = state.flow
    assert float(st.t) > 2.0  # past the first overshoot of the stiffest mode (a = 8)
    assert _max_diff(p, exact(st.t)) < 1e-7
    assert abs(float(st.value) - float(quadratic(p))) < 1e-12
    assert _max_diff(st.grad, jax.grad(quadratic)(p)) < 1e-12
    assert int(st.nfev) == 1 + 6 * (int(st.count) + int(st.rejected))  # FSAL: 6 per try
    # The velocity in the state is θ' of the exact solution (finite difference of it).
    eps = 1e-6
    fd = jax.tree.map(lambda a, b: (a - b) / (2 * eps), exact(st.t + eps), exact(st.t - eps))
    assert _max_diff(state.velocity, fd) < 1e-6
    # With a loose tolerance it comes to rest at the minimizer.
    opt = optim.heavy_ball_flow(
        jode.Tsit5(), damping=gamma, rtol=1e-3, atol=1e-12, error_scale="step"
    )
    (p, _), _ = _run(opt, quadratic, P0, 150)
    assert _max_diff(p, CENTER) < 1e-9


def test_tolerances_may_be_traced():
    # rtol as a traced scalar (a vmapped sweep) gives the iterates of a concrete rtol (to
    # rounding: the batched controller arithmetic may differ in the last bits).
    fn, x0 = six_hump_camel, jnp.asarray([-1.0, 0.5])

    def final(rtol):
        opt = optim.gradient_flow(jode.Bosh3(), rtol=rtol, atol=1e-8, error_scale="step")
        (p, state), _ = _run(opt, fn, x0, 15)
        return p, state.t

    swept, t = jax.vmap(final)(jnp.asarray([1e-2, 1e-1]))
    p, t_1 = final(1e-1)
    np.testing.assert_allclose(np.asarray(swept[1]), np.asarray(p), rtol=1e-9, atol=1e-12)
    assert float(t[1]) == pytest.approx(float(t_1), rel=1e-9)
    assert float(t[0]) < float(t[1])  # the tighter tolerance takes shorter steps


def test_ros2_on_stiff_quadratic():
    # λ = 1 and 1e4: explicit steps are held to h < 3.5e-4 by stability; Ros2 is L-stable.
    a = jnp.asarray([1.0, 1e4])
    loss = lambda p: 0.5 * jnp.sum(a * (p - 1.0) ** 2)  # noqa: E731
    res_ros = optim.minimize_by_flow(
        lambda p, _: loss(p),
        jnp.zeros(2),
        solver=optim.Ros2(),
        rtol=1e-3,
        atol=1e-6,
        gtol=1e-8,
        max_steps=400,
    )
    assert bool(res_ros.converged)
    assert float(jnp.max(jnp.abs(res_ros.params - 1.0))) < 1e-8
    assert int(res_ros.steps) < 300  # an explicit method needs > 1e4 steps here
    # Ros2's order 2 against the exact flow exp(-a t) on the first steps.
    opt = optim.gradient_flow(optim.Ros2(), rtol=1e-6, atol=1e-9)
    (p, state), _ = _run(opt, loss, jnp.zeros(2), 20)
    exact = 1.0 - jnp.exp(-a * state.t)
    assert float(jnp.max(jnp.abs(p - exact))) < 1e-5
    assert int(state.nhvp) > 0


def test_chebyshev_stability_polynomial_and_interval():
    # On y' = λy one step multiplies by R_s(z) = T_s(w0 + w1 z)/T_s(w0), z = hλ.
    from numpy.polynomial import chebyshev as npcheb

    from jode.optim.chebyshev import chebyshev_stages

    solver = optim.Chebyshev(stages=7, damping=0.05)
    s, w0 = 7, 1.0 + 0.05 / 49
    ts = npcheb.Chebyshev.basis(s)
    w1 = ts(w0) / ts.deriv()(w0)
    lam = jnp.asarray([-0.3, -20.0, -60.0, -94.0])
    h = 1.0
    y1 = chebyshev_stages(solver, lambda y: lam * y, jnp.ones(4), lam, h)
    expected = ts(w0 + w1 * np.asarray(lam) * h) / ts(w0)
    np.testing.assert_allclose(np.asarray(y1), expected, rtol=1e-10, atol=1e-13)
    assert np.all(np.abs(expected) <= 1.0)
    # β_s = (1 + w0)/w1 ≈ (2 - 4ε/3) s² (Hundsdorfer & Verwer 2003, §V.1).
    assert solver.stability_interval() == pytest.approx((1 + w0) / w1, rel=1e-12)
    assert solver.stability_interval() == pytest.approx((2 - 4 * 0.05 / 3) * s**2, rel=0.02)


def test_chebyshev_flow_converges_on_stiff_quadratic():
    a = jnp.asarray([1.0, 300.0])
    loss = lambda p: 0.5 * jnp.sum(a * (p - 1.0) ** 2)  # noqa: E731
    opt = optim.gradient_flow(optim.Chebyshev(stages=10), rtol=1e-2, atol=1e-4)
    (p, state), _ = _run(opt, loss, jnp.zeros(2), 60)
    exact = 1.0 - jnp.exp(-a * state.t)
    assert float(jnp.max(jnp.abs(p - exact))) < 5e-3  # first order, tolerance-level error
    # 60 steps reach t > 5 (Tsit5 is held to h < 3.5/300 by stability: > 400 steps).
    assert float(state.t) > 5.0
    assert float(jnp.max(jnp.abs(p - 1.0))) < 1e-2


def test_truncated_cg_matches_dense_solve():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 6))
    mat = jnp.asarray(m @ m.T + 6 * np.eye(6))
    b = jnp.asarray(rng.normal(size=6))
    x, steps = optim.truncated_cg(lambda v: mat @ v, b, 20, 1e-12)
    np.testing.assert_allclose(
        np.asarray(x), np.linalg.solve(np.asarray(mat), np.asarray(b)), rtol=1e-9
    )
    assert int(steps) <= 7
    # Negative curvature at once: the right-hand side comes back (the explicit direction).
    x_neg, _ = optim.truncated_cg(lambda v: -v, b, 20, 1e-12)
    np.testing.assert_allclose(np.asarray(x_neg), np.asarray(b))


@pytest.mark.parametrize(
    "fn, minimizers, minimum, start, solver, rtol, gtol",
    [
        (six_hump_camel, CAMEL_MINIMIZERS, CAMEL_MINIMUM, (0.5, -0.3), jode.Tsit5(), 1e-8,
         1e-5),
        (goldstein_price, GOLDSTEIN_PRICE_MINIMIZERS, 3.0, (0.4, -0.6), optim.Ros2(), 1e-4,
         1e-8),
    ],
    ids=["camel-Tsit5", "goldstein_price-Ros2"],
)
def test_minimize_by_flow_reaches_global_minima(fn, minimizers, minimum, start, solver, rtol,
                                                gtol):
    res = optim.minimize_by_flow(
        lambda p, _: fn(p),
        jnp.asarray(start),
        solver=solver,
        rtol=rtol,
        atol=rtol * 1e-2,
        gtol=gtol,
        max_steps=5000,
    )
    assert bool(res.converged)
    assert abs(float(res.value) - minimum) < 1e-6  # published minimum value
    dist = min(float(jnp.linalg.norm(res.params - jnp.asarray(m))) for m in minimizers)
    assert dist < 1e-4
    assert int(res.nfev) > int(res.steps)


def test_bad_arguments():
    with pytest.raises(ValueError, match="error estimate"):
        optim.gradient_flow(jode.RK4())
    with pytest.raises(ValueError, match="rtol"):
        optim.gradient_flow(rtol=-1.0)
    with pytest.raises(ValueError, match="gtol"):
        optim.minimize_by_flow(lambda p, _: jnp.sum(p**2), jnp.ones(2), gtol=0.0)
    with pytest.raises(ValueError, match="error_scale"):
        optim.gradient_flow(error_scale="relative")
    with pytest.raises(ValueError, match="damping"):
        optim.heavy_ball_flow(damping=0.0)
    with pytest.raises(ValueError, match="explicit"):
        optim.heavy_ball_flow(optim.Ros2())
    with pytest.raises(ValueError, match="krylov_steps"):
        optim.Ros2(krylov_steps=0)


@pytest.mark.parametrize(
    "solver, rtol, bound",
    [(optim.Ros2(), 1e-6, 2e-6), (optim.Chebyshev(stages=10), 1e-4, 5e-3)],
    ids=["Ros2", "Chebyshev"],
)
def test_flow_steppers_are_solvers_of_the_one_protocol(solver, rtol, bound):
    # The optimizer's steppers are jode.AbstractSolvers: jode.solve runs them as it runs
    # Tsit5. The stiff gradient flow θ' = -diag(1, 100) θ, θ(0) = (1, 1): θ(1) = (e^-1, e^-100).
    assert isinstance(solver, jode.AbstractSolver) and solver.adaptive
    lam = jnp.asarray([1.0, 100.0])
    sol = jode.solve(lambda t, y, a: -lam * y, jnp.ones(2), 0.0, 1.0, solver=solver,
                     rtol=rtol, atol=rtol * 1e-2, max_steps=20000)
    np.testing.assert_allclose(np.asarray(sol.ys[-1]), np.exp(-np.asarray(lam)), atol=bound)
    assert int(sol.stats["nfev"]) == solver.f_evals_per_step * int(sol.stats["steps"]) + 2
    # One step through the protocol is the step the optimizer takes (same h, same θ_n).
    h = 0.002
    field = lambda t, y: -lam * y  # noqa: E731
    y0 = jnp.asarray([1.0, 1.0])
    res = solver.step(field, 0.0, y0, field(0.0, y0), h, solver.init_state(field, 0.0, y0,
                                                                          field(0.0, y0)))
    opt = optim.gradient_flow(solver, rtol=1.0, atol=1.0, dt0=h)  # loose: h is accepted
    loss = lambda p: 0.5 * jnp.sum(lam * p**2)  # noqa: E731
    (p, state), _ = _run(opt, loss, y0, 1)
    assert int(state.rejected) == 0 and int(state.count) == 1
    np.testing.assert_allclose(np.asarray(p), np.asarray(res.y1), rtol=1e-12)


# The defaults (Ros2, rtol 0.1, error scaled to the parameters; benchmarks/optim_suite.py).


def rosenbrock(p):
    """(1 - x)² + 100(y - x²)²: minimum 0 at (1, 1) (Rosenbrock 1960)."""
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def himmelblau(p):
    """(x² + y - 11)² + (x + y² - 7)²: four global minima, f = 0 (Himmelblau 1972)."""
    return (p[0] ** 2 + p[1] - 11.0) ** 2 + (p[0] + p[1] ** 2 - 7.0) ** 2


# (3, 2) exactly; the other three to the 6 decimals published by Himmelblau (1972).
HIMMELBLAU_MINIMIZERS = np.asarray(
    [[3.0, 2.0], [-2.805118, 3.131312], [-3.779310, -3.283186], [3.584428, -1.848126]]
)


def test_defaults_rosenbrock_within_budget():
    res = optim.minimize_by_flow(lambda p, _: rosenbrock(p), jnp.asarray([-1.2, 1.0]))
    assert int(res.status) == int(jode.RESULTS.CONVERGED) and bool(res.converged)
    assert float(res.value) < 1e-8
    np.testing.assert_allclose(np.asarray(res.params), [1.0, 1.0], atol=1e-5)
    # Budget: 1000 gradient evaluations plus Hessian-vector products (the explicit
    # defaults before, Tsit5 at rtol 1e-3, had f = 5.5e-4 after 806k gradients).
    assert int(res.nfev) + int(res.nhvp) < 1000


def test_defaults_himmelblau_grid_reaches_the_four_minima():
    g = np.linspace(-5.0, 5.0, 7)
    starts = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2))
    run = jax.jit(jax.vmap(lambda x: optim.minimize_by_flow(lambda p, _: himmelblau(p), x,
                                                            gtol=1e-9)))
    res = run(starts)
    assert np.all(np.asarray(res.status) == int(jode.RESULTS.CONVERGED))
    assert float(jnp.max(res.value)) < 1e-12  # the minimum value is exactly 0
    dist = np.min(np.linalg.norm(np.asarray(res.params)[:, None] - HIMMELBLAU_MINIMIZERS,
                                 axis=-1), axis=1)
    # The published minimizers are rounded to 6 decimals (up to 7.1e-7 off in distance).
    assert np.max(dist) < 1e-6 + 7.1e-7
    found = np.argmin(np.linalg.norm(np.asarray(res.params)[:, None] - HIMMELBLAU_MINIMIZERS,
                                     axis=-1), axis=1)
    assert set(found.tolist()) == {0, 1, 2, 3}


def test_defaults_pytree_quadratic_known_minimizer():
    res = optim.minimize_by_flow(lambda p, _: quadratic(p), P0, gtol=1e-10)
    assert bool(res.converged)
    assert _max_diff(res.params, CENTER) < 1e-10
    assert float(res.value) < 1e-20
    # The optax optimizer with its defaults converges to the same point.
    (p, state), _ = _run(optim.gradient_flow(), quadratic, P0, 40)
    assert _max_diff(p, CENTER) < 1e-10
    assert int(state.status) == 0


def test_stop_short_is_visible():
    loss = lambda p, _: rosenbrock(p)  # noqa: E731
    x0 = jnp.asarray([-1.2, 1.0])
    with pytest.warns(RuntimeWarning, match=r"MAX_STEPS.*‖∇L‖ = .*raise max_steps"):
        res = optim.minimize_by_flow(loss, x0, max_steps=5)
    assert int(res.status) == int(jode.RESULTS.MAX_STEPS) and not bool(res.converged)
    assert int(res.steps) + 0 <= 5 and float(res.grad_norm) > 1e-6
    with pytest.raises(RuntimeError, match="max_steps"):
        optim.minimize_by_flow(loss, x0, max_steps=5, throw=True)
    # Under jit no Python warning can fire: the status tells, and throw=True still raises.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = jax.jit(lambda x: optim.minimize_by_flow(loss, x, max_steps=5))(x0)
        assert int(res.status) == int(jode.RESULTS.MAX_STEPS)
        with pytest.raises(RuntimeError, match="max_steps"):
            jax.block_until_ready(
                jax.jit(lambda x: optim.minimize_by_flow(loss, x, max_steps=5, throw=True))(x0)
            )
    # A loss that is NaN at the start: NONFINITE, no step taken.
    with pytest.warns(RuntimeWarning, match="NONFINITE"):
        res = optim.minimize_by_flow(lambda p, _: jnp.sum(jnp.log(p)), jnp.asarray([-1.0]))
    assert int(res.status) == int(jode.RESULTS.NONFINITE) and int(res.steps) == 0
