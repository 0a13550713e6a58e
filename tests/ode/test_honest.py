"""A solve never gives a silent wrong answer: right values, or a non-success status, or a
named error. References are closed forms (y' = -k y) and scipy's solve_ivp at rtol 1e-12."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

import jode
from jode import Status


def decay(t, y, k):
    return -k * y


E1 = math.exp(-1.0)


# 1. Python numbers work wherever arrays do ------------------------------------------------


@pytest.mark.parametrize(
    "adjoint", [jode.DirectAdjoint(), jode.BacksolveAdjoint()], ids=["direct", "backsolve"]
)
def test_grad_of_python_float_args_closure_and_tuple(adjoint):
    def by_args(a):
        return jode.solve(decay, jnp.ones(1), 0.0, 1.0, a, adjoint=adjoint).ys[-1, 0]

    def by_closure(a):
        return jode.solve(lambda t, y, _: -a * y, jnp.ones(1), 0.0, 1.0, adjoint=adjoint).ys[-1, 0]

    def by_tuple(a):
        f = lambda t, y, p: -p[0] * p[1] * y  # noqa: E731
        return jode.solve(f, jnp.ones(1), 0.0, 1.0, (a, 1), adjoint=adjoint).ys[-1, 0]

    for loss in (by_args, by_closure, by_tuple):
        assert float(jax.grad(loss)(1.0)) == pytest.approx(-E1, rel=1e-4)  # d/da e^{-a}
    assert float(jax.jit(jax.grad(by_args))(1.0)) == pytest.approx(-E1, rel=1e-4)


def test_python_float_y0_and_times_under_grad_and_jvp():
    sol = jode.solve(lambda t, y, a: -y, 1.0, 0.0, 1.0)
    assert float(sol.ys[-1]) == pytest.approx(E1, rel=1e-5)
    # d/dy0 y0 e^{-1}, d/dt1 e^{-t1}
    assert float(jax.grad(lambda y: jode.solve(lambda t, y, a: -y, y, 0.0, 1.0).ys[-1])(1.0)) \
        == pytest.approx(E1, rel=1e-5)
    g = jax.grad(lambda t1: jode.solve(lambda t, y, a: -y, jnp.ones(()), 0, t1).ys[-1])(1.0)
    assert float(g) == pytest.approx(-E1, rel=1e-4)
    fwd = lambda a: jode.solve(decay, jnp.ones(1), 0.0, 1.0, a, adjoint=jode.ForwardMode())  # noqa: E731
    _, tangent = jax.jvp(lambda a: fwd(a).ys[-1, 0], (1.0,), (1.0,))
    assert float(tangent) == pytest.approx(-E1, rel=1e-4)


def test_python_float_args_with_an_implicit_solver():
    loss = lambda a: jode.solve(decay, jnp.ones(1), 0.0, 1.0, a, solver=jode.Kvaerno5()).ys[-1, 0]  # noqa: E731
    assert float(jax.grad(loss)(1.0)) == pytest.approx(-E1, rel=1e-3)


# 2. Save times are validated when traced ---------------------------------------------------


@pytest.mark.parametrize("ts", [[-1.0, 0.5], [0.5, 1.5]])
def test_traced_save_times_outside_the_interval_raise(ts):
    run = jax.jit(lambda ts: jode.solve(decay, jnp.ones(1), 0.0, 1.0, 1.0, saveat=ts).ys)
    with pytest.raises(Exception, match=r"saveat times must lie in \[t0, t1\]"):
        jax.block_until_ready(run(jnp.asarray(ts)))
    inside = run(jnp.asarray([0.25, 0.75]))
    np.testing.assert_allclose(inside[:, 0], np.exp(-np.array([0.25, 0.75])), rtol=1e-5)


# 3. Non-finite values are reported where they appear ---------------------------------------


def test_nan_parameter_fails_at_once_as_nonfinite():
    sol = jode.solve(decay, jnp.ones(1), 0.0, 1.0, jnp.nan, throw=False)
    assert int(sol.status) == Status.NONFINITE
    assert int(sol.stats["steps"]) <= 2  # not max_steps
    assert float(sol.stats["t_last"]) == 0.0
    assert "NaN" in sol.message
    with pytest.raises(Exception, match="NaN or infinite"):
        jode.solve(decay, jnp.ones(1), 0.0, 1.0, jnp.nan)


def nan_after_half(t, y, a):
    return jnp.where(t > 0.5, jnp.nan, -y)


@pytest.mark.parametrize("backend", ["jode", "diffrax"])
def test_nan_midway_is_nonfinite_at_the_time_it_appears(backend):
    sol = jode.solve(nan_after_half, jnp.ones(1), 0.0, 1.0, backend=backend, throw=False)
    assert int(sol.status) == Status.NONFINITE
    assert float(sol.stats["t_last"]) == pytest.approx(0.5, abs=1e-6)
    assert float(sol.ys[-1, 0]) == pytest.approx(math.exp(-0.5), rel=1e-5)  # the last state


def test_nan_parameter_in_diffrax_backend_and_constant_steps():
    sol = jode.solve(decay, jnp.ones(1), 0.0, 1.0, jnp.nan, backend="diffrax", throw=False)
    assert int(sol.status) == Status.NONFINITE
    sol = jode.solve(decay, jnp.ones(1), 0.0, 1.0, jnp.nan, solver=jode.RK4(), n_steps=10,
                     throw=False)
    assert int(sol.status) == Status.NONFINITE


def test_shared_step_batch_with_one_nan_lane_is_nonfinite():
    k = jnp.asarray([1.0, jnp.nan, 2.0])
    sol = jode.solve_batch(decay, jnp.ones((3, 1)), 0.0, 1.0, k, shared_step=True, throw=False)
    assert int(sol.status) == Status.NONFINITE


# 4. Constant steps: memory follows the saves; gradients checkpointed -----------------------


def test_constant_steps_save_times_and_gradient_match_the_closed_form():
    ts = jnp.linspace(0.0, 1.0, 11)

    def run(k, n):
        return jode.solve(decay, jnp.ones(2), 0.0, 1.0, k, solver=jode.RK4(), n_steps=n,
                          saveat=ts).ys[:, 0]

    # One scan, and checkpointed segments; RK4's global error is about h^4/120 here.
    for n, rtol in ((7, 1e-5), (100, 1e-9)):
        np.testing.assert_allclose(run(1.0, n), np.exp(-np.asarray(ts)), rtol=rtol)
    g = jax.grad(lambda k: jnp.sum(run(k, 1000)))(1.0)  # d/dk sum_i e^{-k t_i}
    assert float(g) == pytest.approx(-float(jnp.sum(ts * jnp.exp(-ts))), rel=1e-9)
    back = jode.solve(decay, jnp.ones(1), 1.0, 0.0, 1.0, solver=jode.RK4(), n_steps=100,
                      saveat=ts[::-1]).ys[:, 0]
    np.testing.assert_allclose(back, np.exp(1.0 - np.asarray(ts[::-1])), rtol=1e-8)


def test_constant_step_gradient_memory_grows_sublinearly():
    def temp_bytes(n):
        def loss(k):
            return jnp.sum(jode.solve(decay, jnp.ones(200), 0.0, 1.0, k, solver=jode.RK4(),
                                      n_steps=n, max_steps=n).ys)

        compiled = jax.jit(jax.grad(loss)).lower(1.0).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    small, large = temp_bytes(400), temp_bytes(6400)  # 16x the steps
    assert large < 6 * small  # O(sqrt N): about 4x; storing every step would be 16x


@pytest.mark.parametrize("n", [100, 1000])
def test_backsolve_with_n_steps_equal_to_max_steps(n):
    def loss(k):
        return jode.solve(decay, jnp.ones(1), 0.0, 1.0, k, solver=jode.RK4(), n_steps=n,
                          max_steps=n, adjoint=jode.BacksolveAdjoint()).ys[-1, 0]

    assert float(jax.grad(loss)(1.0)) == pytest.approx(-E1, rel=1e-7)


# 5. Failures in batches --------------------------------------------------------------------


def blow_up(t, y, a):
    return a * y * y  # y(t) = 1 / (1 - a t): infinite at t = 1/a


def test_solve_batch_names_the_failed_lanes():
    a = jnp.asarray([0.1, 2.0, 0.2, 3.0, 4.0])  # lanes 1, 3, 4 blow up before t1 = 1
    with pytest.raises(RuntimeError, match=r"failed in 3 of 5 lanes.*\[1, 3, 4\]"):
        jode.solve_batch(blow_up, jnp.ones((5, 1)), 0.0, 1.0, a, max_steps=100)
    sol = jode.solve_batch(blow_up, jnp.ones((5, 1)), 0.0, 1.0, a, max_steps=100,
                           saveat=jnp.asarray([0.05, 0.9]), throw=False)
    messages = sol.message
    assert len(messages) == 5 and messages[0] == Status.SUCCESS.message
    assert messages[1] != Status.SUCCESS.message
    assert "2 SUCCESS" in sol.summary() and "[1, 3, 4]" in sol.summary()
    # Saves the failed lanes never reached are NaN; reached ones are right.
    assert np.all(np.isnan(np.asarray(sol.ys)[[1, 3, 4], 1]))
    np.testing.assert_allclose(sol.ys[:, 0, 0], 1 / (1 - a * 0.05), rtol=1e-5)
    np.testing.assert_allclose(sol.ys[0, 1, 0], 1 / (1 - 0.1 * 0.9), rtol=1e-5)


def test_vmapped_solve_error_says_it_is_batched():
    a = jnp.asarray([0.1, 2.0])
    with pytest.raises(Exception, match="Batched with jax.vmap"):
        jax.vmap(lambda y, a: jode.solve(blow_up, y, 0.0, 1.0, a, max_steps=100))(
            jnp.ones((2, 1)), a
        )


# 6. A failed backward solve is named ------------------------------------------------------


def test_backsolve_names_a_failed_backward_solve():
    # The forward solve at loose tolerances fits in max_steps; the backward one at 1e-13
    # does not.
    adjoint = jode.BacksolveAdjoint(rtol=1e-13, atol=1e-13)

    def loss(k, throw=True):
        return jode.solve(decay, jnp.ones(1), 0.0, 10.0, k, rtol=1e-3, atol=1e-3, max_steps=40,
                          adjoint=adjoint, throw=throw).ys[-1, 0]

    with pytest.raises(Exception, match="BacksolveAdjoint: the backward adjoint solve.*"
                       "DirectAdjoint"):
        jax.block_until_ready(jax.grad(loss)(1.0))
    assert math.isnan(float(jax.grad(lambda k: loss(k, throw=False))(1.0)))


# 7. float32 at tolerances it cannot deliver -------------------------------------------------


def test_float32_tolerance_below_eps_warns_and_default_does_not():
    y0 = jnp.ones(1, jnp.float32)
    k = jnp.asarray(1.0, jnp.float32)
    with pytest.warns(UserWarning, match="jax_enable_x64"):
        jode.solve(decay, y0, 0.0, 1.0, k, rtol=1e-8, atol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jode.solve(decay, y0, 0.0, 1.0, k)  # rtol 1e-6: float32 delivers it
        jode.solve(decay, jnp.ones(1), 0.0, 1.0, 1.0, rtol=1e-12, atol=1e-12)


# 8. Randomized: right within tolerance, or an honest failure --------------------------------


def _scipy_reference(k, y0, t0, ts):
    ode = solve_ivp(lambda t, y: -k * y, (t0, ts[-1]), y0, t_eval=ts, rtol=1e-12, atol=1e-14)
    return ode.y.T


def decay_breaking(t, y, p):
    """-k y, or `bad` (NaN or inf) once |t| passes `after`."""
    k, bad, after = p
    return jnp.where(jnp.abs(t) > after, bad, -k * y)


# One compilation per vector field and dtype: times, tolerances and values are traced.
@jax.jit
def _run(y0, p, t1, ts, rtol):
    return jode.solve(decay_breaking, y0, 0.0, t1, p, rtol=rtol, atol=rtol, saveat=ts,
                      throw=False, max_steps=2000)


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rtol=st.sampled_from([1e-3, 1e-6, 1e-9]),
    backward=st.booleans(),
    span=st.sampled_from([0.5, 2.0]),
    dtype=st.sampled_from(["float32", "float64"]),
    inject=st.sampled_from(["none", "none", "y0", "args", "f"]),
    bad=st.sampled_from([math.nan, math.inf]),
    k=st.floats(0.1, 3.0),
    fractions=st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3, unique=True),
)
def test_randomized_solves_are_right_or_fail_honestly(
    rtol, backward, span, dtype, inject, bad, k, fractions
):
    dt = jnp.dtype(dtype)
    if dt == jnp.float32:
        rtol = max(rtol, 1e-6)  # float32 cannot deliver less (see the warning test)
    t1 = -span if backward else span
    ts = np.sort(np.asarray(fractions)) * t1  # monotone towards t1; always 3 saves
    y0 = np.asarray([1.0, -0.5])
    y0_in, k_in = jnp.asarray(y0, dt), jnp.asarray(k, dt)
    if inject == "y0":
        y0_in = y0_in.at[0].set(bad)
    elif inject == "args":
        k_in = jnp.asarray(bad, dt)
    after = jnp.asarray(0.5 * span if inject == "f" else np.inf, dt)
    p = (k_in, jnp.asarray(bad, dt), after)
    try:
        sol = _run(y0_in, p, jnp.asarray(t1, dt), jnp.asarray(ts, dt), jnp.asarray(rtol, dt))
        status = int(sol.status)
    except Exception as exc:  # a named error on bad input
        assert inject == "y0" and "y0 contains NaN" in str(exc)
        return
    assert inject != "y0"
    if inject != "none":
        assert status == Status.NONFINITE
        return
    assert status == Status.SUCCESS
    ref = y0[None] * np.exp(-k * ts)[:, None]  # closed form
    np.testing.assert_allclose(_scipy_reference(k, y0, 0.0, ts), ref, rtol=1e-8, atol=1e-12)
    # Backwards in time the solution grows (up to e^6): the error bound scales with it.
    err = np.max(np.abs(np.asarray(sol.ys, np.float64) - ref) / np.maximum(np.abs(ref), 1.0))
    eps = float(jnp.finfo(dt).eps)
    assert err <= 100 * rtol + 100 * eps, (err, rtol)
