"""jode.fixed_point: every solver on cos z = z, implicit gradients vs finite differences and
unrolled differentiation, steady states vs closed forms, vmap statuses, bad input, memory."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jode
from jode.fixed_point import (
    Anderson,
    Broyden,
    FixedPointIteration,
    FixedPointStatus,
    ImplicitAdjoint,
    Newton,
    SteadyState,
    fixed_point,
    steady_state,
)

# The Dottie number: the unique real solution of cos x = x.
DOTTIE = 0.739085133215160641655312087673873404

SOLVERS = {
    "iteration": FixedPointIteration(),
    "anderson": Anderson(),
    "broyden": Broyden(),
    "newton": Newton(),
    "steady_state": SteadyState(),
}


@pytest.fixture(scope="module")
def cos_results():
    out = {}
    for name, solver in SOLVERS.items():
        out[name] = fixed_point(
            lambda z, a: jnp.cos(z), jnp.asarray(-1.0), None, solver=solver,
            rtol=0.0, atol=1e-13, max_steps=1000,
        )
    return out


@pytest.mark.parametrize("name", list(SOLVERS))
def test_cos_every_solver(cos_results, name):
    sol = cos_results[name]
    assert int(sol.status) == FixedPointStatus.CONVERGED
    assert abs(float(sol.value) - DOTTIE) <= 1e-12
    assert float(sol.residual) <= 1e-13
    # The trace starts at |cos(-1) + 1| and ends at the final residual.
    assert float(sol.residuals[0]) == pytest.approx(np.cos(-1.0) + 1.0, rel=1e-14)
    assert float(sol.residuals[int(sol.steps)]) == pytest.approx(float(sol.residual), rel=1e-6)


def test_accelerated_solvers_need_far_fewer_iterations(cos_results):
    plain = int(cos_results["iteration"].steps)
    # Plain iteration contracts by |sin(z*)| = 0.674 per step: ~75 steps to 1e-13.
    assert plain > 60
    for name in ("anderson", "broyden", "newton"):
        assert int(cos_results[name].steps) <= plain // 5, name


# A small nonlinear equilibrium z = tanh(W z + U x + b) with ‖W‖₂ = 0.6.
def _problem():
    k1, k2, k3 = jr.split(jr.PRNGKey(0), 3)
    w = jr.normal(k1, (4, 4))
    w = 0.6 * w / np.linalg.norm(np.asarray(w), 2)
    theta = {"w": w, "u": jr.normal(k2, (4, 3)), "b": jnp.asarray([0.1, -0.2, 0.3, 0.0])}
    x = jr.normal(k3, (3,))
    return theta, x


def _cell(z, args):
    theta, x = args
    return jnp.tanh(theta["w"] @ z + theta["u"] @ x + theta["b"])


@eqx.filter_jit
def _loss(theta, x, solver, adjoint):
    sol = fixed_point(
        _cell, jnp.zeros(4), (theta, x), solver=solver, rtol=1e-13, atol=1e-13,
        max_steps=400, adjoint=adjoint,
    )
    return jnp.sum(jnp.sin(sol.value)) + sol.value[0] ** 2


_grad = eqx.filter_jit(jax.grad(_loss))


@pytest.mark.parametrize(
    "solver, adjoint",
    [
        (Anderson(), ImplicitAdjoint()),  # backward by Anderson on the adjoint system
        (Broyden(), ImplicitAdjoint(solver=FixedPointIteration())),  # Neumann series
    ],
)
def test_implicit_gradient_vs_finite_differences(solver, adjoint):
    theta, x = _problem()
    grad = _grad(theta, x, solver, adjoint)
    direction = jax.tree.map(lambda t: jr.normal(jr.PRNGKey(7), t.shape), theta)
    eps = 1e-5
    shift = lambda s: jax.tree.map(lambda t, d: t + s * d, theta, direction)  # noqa: E731
    fd = (_loss(shift(eps), x, solver, adjoint) - _loss(shift(-eps), x, solver, adjoint)) / (
        2 * eps
    )
    ad = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
    assert abs(float(ad - fd)) <= 1e-6 * abs(float(fd))


def test_implicit_gradient_matches_unrolled_iteration():
    theta, x = _problem()

    def unrolled(theta):
        # 200 plain iterations at rate 0.6: converged to ~1e-44, differentiated step by step.
        z = jax.lax.scan(lambda z, _: (_cell(z, (theta, x)), None), jnp.zeros(4), None, 200)[0]
        return jnp.sum(jnp.sin(z)) + z[0] ** 2

    g_unrolled = jax.jit(jax.grad(unrolled))(theta)
    g_implicit = _grad(theta, x, Anderson(), ImplicitAdjoint())
    for a, b in zip(jax.tree.leaves(g_implicit), jax.tree.leaves(g_unrolled)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def test_steady_state_of_logistic_growth_and_its_gradient():
    # dy/dt = r y (1 - y/K) has the stable steady state y* = K for y0 > 0; dy*/dK = 1,
    # dy*/dr = 0. Pytree args, vector state.
    field = lambda t, y, p: p["r"] * y * (1 - y / p["K"])  # noqa: E731
    p = {"r": jnp.asarray(1.5), "K": jnp.asarray(3.0)}

    def final(p, solver):
        return steady_state(field, jnp.asarray([0.5, 5.0]), p, solver=solver, rtol=1e-10,
                            atol=1e-10, max_steps=1000)

    def loss(p):
        value = final(p, SteadyState()).value
        return jnp.sum(value), value

    grad, value = jax.jit(jax.grad(loss, has_aux=True))(p)
    np.testing.assert_allclose(value, [3.0, 3.0], rtol=1e-9)
    np.testing.assert_allclose(grad["K"], 2.0, rtol=1e-7)
    np.testing.assert_allclose(grad["r"], 0.0, atol=1e-7)


def test_jit_and_vmap_give_per_element_status():
    @jax.jit
    @jax.vmap
    def solve(a):
        # z = a z + 1: converges to 1/(1 - a) when |a| < 1, diverges for a = 2.
        return fixed_point(lambda z, a: a * z + 1.0, jnp.zeros(2), a,
                           solver=FixedPointIteration(), rtol=1e-12, atol=1e-12,
                           max_steps=200, throw=False)

    sol = solve(jnp.asarray([0.5, -0.5, 2.0]))
    assert sol.status.tolist() == [FixedPointStatus.CONVERGED] * 2 + [FixedPointStatus.DIVERGED]
    np.testing.assert_allclose(sol.value[:2, 0], [2.0, 1 / 1.5], rtol=1e-11)
    # Each element stops on its own: |a| = 0.5 needs ~40 steps, divergence ~20.
    assert 35 <= int(sol.steps[0]) <= 45 and int(sol.steps[2]) < 30


def test_pytree_state_and_closure_gradients():
    w = jnp.asarray([[0.3, 0.1], [0.0, 0.2]])

    @jax.jit
    def loss(w):
        f = lambda z, a: {"x": jnp.tanh(w @ z["x"] + a), "y": 0.5 * z["y"] + a[0]}  # noqa: E731
        z0 = {"x": jnp.zeros(2), "y": jnp.zeros(())}
        z = fixed_point(f, z0, jnp.ones(2), solver=Anderson(), rtol=1e-13, atol=1e-13).value
        return jnp.sum(z["x"]) + z["y"]

    grad = jax.jit(jax.grad(loss))(w)  # w is closed over: reached through closure conversion
    e = jnp.zeros((2, 2)).at[0, 1].set(1e-6)
    fd = (loss(w + e) - loss(w - e)) / 2e-6
    assert abs(float(grad[0, 1] - fd)) <= 1e-6 * abs(float(fd))
    assert float(loss(w)) == pytest.approx(float(jnp.sum(_tanh_fixed(w)) + 2.0), rel=1e-12)


def _tanh_fixed(w):
    w, z = np.asarray(w), np.zeros(2)
    for _ in range(200):
        z = np.tanh(w @ z + 1.0)
    return z


def test_bad_input_is_rejected_before_tracing():
    f = lambda z, a: jnp.cos(z)  # noqa: E731
    with pytest.raises(ValueError, match="same pytree structure"):
        fixed_point(lambda z, a: (z, z), jnp.zeros(2))
    with pytest.raises(ValueError, match="shaped like z0"):
        fixed_point(lambda z, a: jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(ValueError, match="floating point"):
        fixed_point(f, jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="constructor"):
        fixed_point(f, jnp.zeros(2), solver=Anderson)
    with pytest.raises(ValueError, match="rtol"):
        fixed_point(f, jnp.zeros(2), rtol=-1.0)
    with pytest.raises(ValueError, match="damping"):
        FixedPointIteration(damping=1.5)


def test_nonfinite_and_noncontractive_maps_get_clear_statuses():
    # log(z) from 0.5 gives log(0.5) < 0, whose image is NaN: that step is rejected, and
    # the last iterate with a finite image (0.5) is returned.
    sol = fixed_point(lambda z, a: jnp.log(z), jnp.full(3, 0.5), solver=FixedPointIteration(),
                      throw=False)
    assert int(sol.status) == FixedPointStatus.NONFINITE
    np.testing.assert_allclose(sol.value, 0.5)
    assert float(sol.residual) == pytest.approx(0.5 - np.log(0.5))
    # z -> 2z + 1 is expanding: iteration diverges (residual doubles each step).
    sol = fixed_point(lambda z, a: 2 * z + 1, jnp.zeros(3), solver=FixedPointIteration(),
                      throw=False)
    assert int(sol.status) == FixedPointStatus.DIVERGED
    assert float(sol.residual) == pytest.approx(2.0 ** int(sol.steps))
    # z -> -z only oscillates: the budget runs out, and throw=True raises.
    with pytest.raises(Exception, match="max_steps"):
        fixed_point(lambda z, a: -z, jnp.ones(2), solver=FixedPointIteration(), max_steps=20)
    # Damping makes the same map converge (to 0).
    sol = fixed_point(lambda z, a: -z, jnp.ones(2), solver=FixedPointIteration(damping=0.5))
    np.testing.assert_allclose(sol.value, 0.0, atol=1e-12)


@pytest.mark.parametrize("name", list(SOLVERS))
def test_a_map_without_fixed_point_never_converges(name):
    # z -> z + 1 has no fixed point: its residual is 1 wherever z runs. A tolerance relative
    # to |z| would be met once |z| > 1/rtol; the residual bound may not depend on |z|.
    sol = fixed_point(lambda z, a: z + 1.0, jnp.zeros(()), solver=SOLVERS[name], throw=False,
                      max_steps=256)
    assert int(sol.status) != FixedPointStatus.CONVERGED
    assert not bool(sol.converged)
    if name == "steady_state":
        # The flow z' = 1 runs away: stopped once it is 1e6 first residuals from z0.
        assert int(sol.status) == FixedPointStatus.DIVERGED
        assert 1e6 <= float(sol.value) <= 2e6
        assert float(sol.residual) == pytest.approx(1.0, rel=1e-9)


def test_repelling_fixed_point_diverges_without_suggesting_damping():
    # z* = -1 of z -> 2z + 1 repels (slope 2): damping keeps the map expansive, so the
    # message must point elsewhere; Newton, which needs no contraction, finds z* exactly.
    with pytest.raises(Exception, match="ran away") as info:
        fixed_point(lambda z, a: 2 * z + 1.0, jnp.zeros(()), solver=FixedPointIteration())
    assert "damping" not in str(info.value)
    assert "Newton" in str(info.value)
    for solver in (SteadyState(), FixedPointIteration()):
        sol = fixed_point(lambda z, a: 2 * z + 1.0, jnp.zeros(()), solver=solver, throw=False)
        assert int(sol.status) == FixedPointStatus.DIVERGED
    sol = fixed_point(lambda z, a: 2 * z + 1.0, jnp.zeros(()), solver=Newton(), atol=1e-12)
    assert float(sol.value) == pytest.approx(-1.0, abs=1e-12)


def test_statuses_are_the_shared_results():
    import jode

    assert FixedPointStatus is jode.RESULTS
    values = [int(r) for r in jode.RESULTS]
    assert len(set(values)) == len(values) == len(jode.RESULTS.__members__)
    # A failed solve inside SteadyState keeps its own meaning: an explicit solver on the
    # stiff flow z' = -1e9 (z - 1) with max_steps=3 runs out of steps (not "non-finite").
    sol = fixed_point(lambda z, a: z - 1e9 * (z - 1.0), jnp.zeros(()),
                      solver=SteadyState(), max_steps=3, throw=False)
    assert int(sol.status) == jode.RESULTS.MAX_STEPS


def test_backward_memory_does_not_grow_with_forward_budget():
    w = jr.normal(jr.PRNGKey(1), (32, 32)) * 0.05
    f = lambda z, a: jnp.tanh(a @ z + 1.0)  # noqa: E731

    def implicit(w, n):
        sol = fixed_point(f, jnp.zeros(32), w, solver=FixedPointIteration(), rtol=0.0,
                          atol=0.0, max_steps=n, throw=False, trace=False)
        return jnp.sum(sol.value**2)

    def unrolled(w, n):
        return jnp.sum(jax.lax.scan(lambda z, _: (f(z, w), None), jnp.zeros(32), None, n)[0] ** 2)

    def temp_bytes(loss, n):
        compiled = jax.jit(jax.grad(lambda w: loss(w, n))).lower(w).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(implicit, 100) <= 1.2 * temp_bytes(implicit, 10)
    # The check can fail: differentiating through the iterations grows with them.
    assert temp_bytes(unrolled, 100) > 5 * temp_bytes(unrolled, 10)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_warm_start_near_a_large_fixed_point_converges(dtype):
    # From 99.99 (first residual 5e-3) to z* = 100: the bound atol + rtol r(z0) is far below
    # |z*|, down to the rounding floor of f(z) in float32; every solver meets it, and the
    # steady state of y' = 2 (100 - y) from the same start too.
    eps = float(jnp.finfo(dtype).eps)
    for name, solver in SOLVERS.items():
        sol = fixed_point(lambda z, a: 0.5 * z + 50.0, jnp.full(3, 99.99, dtype),
                          solver=solver, throw=False)
        assert int(sol.status) == FixedPointStatus.CONVERGED, name
        assert sol.value.dtype == dtype
        assert float(sol.residual) <= 1e-6 + 1e-6 * 5e-3 + 4 * eps * 100.0 * 1.01
        np.testing.assert_allclose(np.asarray(sol.value), 100.0, atol=2e-6 + 1e3 * eps)
    sol = steady_state(lambda t, y, k: k * (100.0 - y), jnp.full(3, 99.99, dtype),
                       jnp.asarray(2.0, dtype), throw=False)
    assert int(sol.status) == FixedPointStatus.CONVERGED
    np.testing.assert_allclose(np.asarray(sol.value), 100.0, atol=2e-6 + 1e3 * eps)


# A stiff linear steady state: y' = λ (y - 1) with λ from -1 to -1e4, steady state y* = 1.
STIFF_RATES = jnp.logspace(0, 4, 6)


def _stiff_field(t, y, rates):
    return -rates * (y - 1.0)


def test_explicit_steady_state_on_a_stiff_flow_says_so_and_names_kvaerno5():
    sol = steady_state(_stiff_field, jnp.zeros(6), STIFF_RATES, throw=False)
    assert int(sol.status) == FixedPointStatus.MAX_STEPS  # the status vocabulary stays
    assert bool(sol.stiff)
    # Tsit5's step sits at its stability limit on the negative real axis (h|λ| = 3.51).
    assert 2.5 <= float(sol.stiffness) <= 3.6
    message = sol.message
    assert "stiff" in message and "jode.SteadyState(jode.Kvaerno5())" in message
    assert f"h·ρ ≈ {float(sol.stiffness):.1f}" in message
    with pytest.raises(Exception, match=r"stiff.*h·ρ ≈ 3\.\d.*SteadyState\(jode\.Kvaerno5\(\)\)"):
        steady_state(_stiff_field, jnp.zeros(6), STIFF_RATES)


def test_kvaerno5_route_reaches_the_stiff_steady_state():
    import jode

    sol = steady_state(_stiff_field, jnp.zeros(6), STIFF_RATES,
                       solver=SteadyState(jode.Kvaerno5()))  # throw=True: must converge
    assert int(sol.status) == FixedPointStatus.CONVERGED
    assert not bool(sol.stiff) and np.isnan(float(sol.stiffness))
    # |F| = λ |y - 1| <= atol + rtol r(y0), r(y0) = 1e4: so |y - 1| <= 1.001e-2 / λ.
    threshold = 1e-6 + 1e-6 * 1e4
    assert float(sol.residual) <= threshold
    np.testing.assert_array_less(np.abs(np.asarray(sol.value) - 1.0),
                                 threshold / np.asarray(STIFF_RATES))


def test_barely_contractive_steady_state_keeps_its_max_steps_message():
    # z = 0.9999 z + 1 (z* = 1e4): the flow z' = 1 - 1e-4 z is slow, not stiff.
    f = lambda z, a: 0.9999 * z + 1.0  # noqa: E731
    sol = fixed_point(f, jnp.zeros(3), solver=SteadyState(), max_steps=10, throw=False)
    assert int(sol.status) == FixedPointStatus.MAX_STEPS
    assert not bool(sol.stiff)
    assert float(sol.stiffness) < 0.5  # estimated (it stopped short), far below the limit
    assert "stiff" not in sol.message and "raise it" in sol.message
    with pytest.raises(Exception, match="barely contractive") as info:
        fixed_point(f, jnp.zeros(3), solver=SteadyState(), max_steps=10)
    assert "stiff" not in str(info.value)


def test_stiffness_flags_are_per_lane_under_vmap_and_jit():
    @jax.jit
    @jax.vmap
    def solve(rates):
        return steady_state(_stiff_field, jnp.zeros(6), rates, max_steps=10, throw=False)

    sol = solve(jnp.stack([STIFF_RATES, jnp.ones(6)]))
    # Both lanes run out of steps; only the stiff one is at the stability limit.
    assert sol.status.tolist() == [FixedPointStatus.MAX_STEPS] * 2
    assert sol.stiff.tolist() == [True, False]
    assert float(sol.stiffness[0]) >= 1.0 > 0.5 > float(sol.stiffness[1])


def test_implicit_steady_state_at_a_tight_absolute_tolerance():
    # rtol = 0: the ODE route's relative tolerance comes out at ~1e-15; Kvaerno5's tolerance
    # calibration must not push it below rounding (it stalled at max_steps with error 0.84).
    lam = -jnp.logspace(0, 4, 6)
    sol = jode.steady_state(
        lambda t, y, a: lam * (y - 1.0),
        jnp.zeros(6),
        solver=jode.SteadyState(jode.Kvaerno5()),
        rtol=0.0,
        atol=1e-10,
        max_steps=2000,
    )
    assert int(sol.status) == jode.RESULTS.CONVERGED
    assert float(jnp.max(jnp.abs(sol.value - 1.0))) <= 1e-10
