"""Gradient-flow optimizer: optax contract, accuracy against the exact flow of a quadratic,
EulerHeun's one-gradient steps, the stiff Ros2 variant, the heavy-ball flow against the exact
damped oscillator, minimize_by_flow on the camel and Goldstein-Price minima, XOR."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jode
from jode import optim
from jode_experiments import optim_compare as compare
from jode_experiments import testfunctions

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
    opt = optax.chain(optim.gradient_flow(rtol=1e-8, atol=1e-10), optax.clip_by_global_norm(0.25))
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
    fn, x0 = testfunctions.six_hump_camel, jnp.asarray([0.5, -0.3])
    out = {}
    for scale, atol in (("params", 1e-4), ("step", 1e-10)):
        opt = optim.gradient_flow(jode.Tsit5(), rtol=1e-2, atol=atol, error_scale=scale)
        (p, _), _ = _run(opt, fn, x0, 60)
        out[scale] = p
    f_star = -1.031628453489877  # six_hump_camel at its global minimizers (to 1e-15)
    assert float(fn(out["params"])) - f_star > 1e-6
    assert abs(float(fn(out["step"])) - f_star) < 1e-10
    camel_min = testfunctions.CAMEL.minimizers[0]
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
    fn, x0 = testfunctions.six_hump_camel, jnp.asarray([-1.0, 0.5])

    def final(rtol):
        opt = optim.gradient_flow(jode.Bosh3(), rtol=rtol, atol=1e-8, error_scale="step")
        (p, state), _ = _run(opt, fn, x0, 15)
        return p, state.t

    swept, t = jax.vmap(final)(jnp.asarray([1e-2, 1e-1]))
    p, t_1 = final(1e-1)
    np.testing.assert_allclose(np.asarray(swept[1]), np.asarray(p), rtol=1e-9, atol=1e-12)
    assert float(t[1]) == pytest.approx(float(t_1), rel=1e-9)
    assert float(t[0]) < float(t[1])  # the tighter tolerance takes shorter steps


@pytest.mark.parametrize("solver", [jode.Bosh3, optim.EulerHeun], ids=lambda s: s.__name__)
@pytest.mark.parametrize(
    "test_fn, start",
    [(testfunctions.CAMEL, (-0.6, 0.2)), (testfunctions.GOLDSTEIN_PRICE, (0.5, -0.5))],
)
def test_flow_optimizer_reaches_global_minimum(test_fn, start, solver):
    # The setting of the grid comparison (error relative to the step, rtol 0.1).
    from jode_experiments.testfunctions import local_minima_table

    minima, values, is_global = local_minima_table(test_fn)
    res = jax.jit(
        lambda x: compare.run_to_target(
            "flow",
            test_fn.fn,
            x,
            minima,
            values,
            max_iters=500,
            rtol=0.1,
            atol=1e-8,
            solver=solver(),
            error_scale="step",
        )
    )(jnp.asarray(start))
    assert int(res.hit_iters) > 0
    assert bool(is_global[int(res.nearest)])
    assert abs(float(res.value) - test_fn.minimum) < 1e-6  # the published minimum value
    dist = min(float(jnp.linalg.norm(res.params - jnp.asarray(m))) for m in test_fn.minimizers)
    assert dist < 1e-3


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
    "test_fn, start, solver, rtol, gtol",
    [
        (testfunctions.CAMEL, (0.5, -0.3), None, 1e-8, 1e-5),
        (testfunctions.GOLDSTEIN_PRICE, (0.4, -0.6), optim.Ros2(), 1e-4, 1e-8),
    ],
)
def test_minimize_by_flow_reaches_global_minima(test_fn, start, solver, rtol, gtol):
    res = optim.minimize_by_flow(
        lambda p, _: test_fn.fn(p),
        jnp.asarray(start),
        solver=solver,
        rtol=rtol,
        atol=rtol * 1e-2,
        gtol=gtol,
        max_steps=5000,
    )
    assert bool(res.converged)
    assert abs(float(res.value) - test_fn.minimum) < 1e-6  # published minimum value
    dist = min(float(jnp.linalg.norm(res.params - jnp.asarray(m))) for m in test_fn.minimizers)
    assert dist < 1e-4
    assert int(res.nfev) > int(res.steps)


def test_test_functions_minima():
    for test_fn in (testfunctions.CAMEL, testfunctions.GOLDSTEIN_PRICE, testfunctions.ROSENBROCK):
        for m in test_fn.local_minimizers:
            g = jax.grad(test_fn.fn)(jnp.asarray(m))
            # Minimizers stored to 12 digits: the gradient vanishes to that level.
            assert float(jnp.max(jnp.abs(g))) < 1e-9
        for m in test_fn.minimizers:
            assert abs(float(test_fn.fn(jnp.asarray(m))) - test_fn.minimum) < 1e-9


def test_xor_fit():
    x = jnp.asarray([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float64)
    y = jnp.asarray([0, 1, 1, 0], jnp.float64)

    def loss(p):
        (w1, b1), (w2, b2) = p
        return jnp.mean((jax.nn.sigmoid(jnp.tanh(x @ w1 + b1) @ w2 + b2)[:, 0] - y) ** 2)

    from jode_experiments.ode_optimizer import init_mlp

    p0 = init_mlp(jax.random.PRNGKey(1), (2, 4, 1), jnp.float64)
    (p, state), _ = _run(optim.gradient_flow(rtol=1e-6, atol=1e-8), loss, p0, 300)
    (w1, b1), (w2, b2) = p
    pred = jax.nn.sigmoid(jnp.tanh(x @ w1 + b1) @ w2 + b2)[:, 0]
    assert np.array_equal(np.asarray(pred > 0.5), np.asarray(y > 0.5))
    assert float(loss(p)) < 1e-2
    assert float(state.value) == pytest.approx(float(loss(p)), rel=1e-10)


def test_run_to_target_counts_match_adam_reference():
    # Adam's iterates from run_to_target equal a plain optax loop's; the hit is where f
    # first falls within 1e-6 of the nearest local minimum.
    from jode_experiments.testfunctions import local_minima_table

    fn = testfunctions.CAMEL.fn
    minima, values, _ = local_minima_table(testfunctions.CAMEL)
    promotion = jax.numpy_dtype_promotion("standard")  # optax.adam mixes int32 counts and floats
    promotion.__enter__()
    x0 = jnp.asarray([0.6, -0.2])
    res = jax.jit(
        lambda x: compare.run_to_target(
            "adam", fn, x, minima, values, learning_rate=0.05, max_iters=3000
        )
    )(x0)
    opt = optax.adam(0.05)
    step = jax.jit(lambda p, s: opt.update(jax.grad(fn)(p), s, p))
    p, s, k = x0, opt.init(x0), 0
    near = lambda p: int(jnp.argmin(jnp.sum((minima - p) ** 2, axis=-1)))  # noqa: E731
    while float(fn(p) - values[near(p)]) >= 1e-6:
        u, s = step(p, s)
        p, k = p + u, k + 1
    promotion.__exit__(None, None, None)
    assert 10 < k < 3000
    assert int(res.hit_iters) == k
    assert int(res.hit_nfev) == k + 1
    assert int(res.hit_nhvp) == 0
    np.testing.assert_allclose(np.asarray(res.params), np.asarray(p), rtol=1e-12)


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
