"""Eager calls of the entry points hit a compile cache (jode/_jit.py).

A repeat call with the same function object, shapes, dtypes and options must not trace the
user's function again: each test counts the Python calls of its function (they happen only
while tracing) instead of timing anything.
"""

import math
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import erfcx

import jode
from jode.ode.explicit import EXPLICIT_SOLVERS
from jode.ode.implicit import IMPLICIT_SOLVERS


def counted(fn):
    """fn with a counter of its Python calls (one per trace, none when compiled code runs)."""
    calls = [0]

    def wrapped(*args):
        calls[0] += 1
        return fn(*args)

    return wrapped, calls


def decay(t, y, a):
    return -a * y


def test_solve_repeat_call_does_not_retrace_and_is_exact():
    f, calls = counted(decay)
    ts = jnp.linspace(0.0, 2.0, 5)
    y0, a = jnp.array([1.0, 2.0]), jnp.asarray(1.5)
    sol = jode.solve(f, y0, 0.0, 2.0, a, saveat=ts, rtol=1e-10, atol=1e-10)
    traced = calls[0]
    assert traced > 0
    again = jode.solve(f, y0, 0.0, 2.0, a, saveat=ts, rtol=1e-10, atol=1e-10)
    assert calls[0] == traced
    exact = y0[None] * np.exp(-1.5 * np.asarray(ts))[:, None]
    np.testing.assert_allclose(again.ys, exact, rtol=1e-8)
    np.testing.assert_array_equal(again.ys, sol.ys)
    # the uncached function gives the same solve (XLA may fuse sums differently: ~ulp)
    plain = jode.solve.__wrapped__(f, y0, 0.0, 2.0, a, saveat=ts, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(again.ys, plain.ys, rtol=1e-12)
    assert int(again.stats["steps"]) == int(plain.stats["steps"])


def test_new_argument_values_reuse_the_compiled_solve():
    f, calls = counted(decay)
    jode.solve(f, jnp.array([1.0]), 0.0, 1.0, jnp.asarray(1.0))
    traced = calls[0]
    sol = jode.solve(f, jnp.array([3.0]), 0.0, 1.0, jnp.asarray(2.0))
    assert calls[0] == traced
    np.testing.assert_allclose(sol.ys[-1], 3.0 * math.exp(-2.0), rtol=1e-5)


def test_python_floats_hit_the_cache():
    """Python floats for y0, t0, t1 and args (and a tuple of them) are cached; floats in
    y0 and args are traced, so a new value runs the same executable."""
    f, calls = counted(lambda t, y, a: -a[0] * y + a[1])
    jode.solve(f, 1.0, 0.0, 1.0, (2.0, 0.5))
    traced = calls[0]
    jode.solve(f, 1.0, 0.0, 1.0, (2.0, 0.5))
    assert calls[0] == traced
    sol = jode.solve(f, 2.0, 0.0, 1.0, (3.0, 0.25))
    assert calls[0] == traced
    # y' = -k y + c: y(t) = c/k + (y0 - c/k) e^{-k t}
    exact = 0.25 / 3.0 + (2.0 - 0.25 / 3.0) * math.exp(-3.0)
    np.testing.assert_allclose(sol.ys[-1], exact, rtol=1e-5)
    # a concrete 0-d array time is the same compile-time constant as the Python float
    jode.solve(f, 1.0, jnp.asarray(0.0), jnp.asarray(1.0), (2.0, 0.5))
    assert calls[0] == traced


def test_constant_steps_with_python_times_are_cached():
    f, calls = counted(decay)
    y0 = jnp.array([1.0])
    jode.solve(f, y0, 0.0, 1.0, 1.0, solver=jode.RK4(), dt0=0.1)
    traced = calls[0]
    sol = jode.solve(f, y0, 0.0, 1.0, 1.0, solver=jode.RK4(), dt0=0.1)
    assert calls[0] == traced
    assert int(sol.stats["steps"]) == 10
    # RK4 with h = 0.1 on y' = -y: error ~ h^4/120 e^{-1}
    np.testing.assert_allclose(sol.ys[-1], math.exp(-1.0), rtol=1e-6)


def test_float32_is_cached():
    f, calls = counted(decay)
    y0 = jnp.array([1.0, 2.0], jnp.float32)
    jode.solve(f, y0, 0.0, 1.0, jnp.asarray(1.0, jnp.float32))
    traced = calls[0]
    sol = jode.solve(f, y0, 0.0, 1.0, jnp.asarray(1.0, jnp.float32))
    assert calls[0] == traced
    assert sol.ys.dtype == jnp.float32
    np.testing.assert_allclose(sol.ys[-1], np.array([1.0, 2.0]) * math.exp(-1.0), rtol=1e-4)


def test_solve_batch_repeat_call_does_not_retrace():
    f, calls = counted(decay)
    a = jnp.array([0.5, 1.0, 2.0])
    y0 = jnp.ones((3, 1))
    jode.solve_batch(f, y0, 0.0, 1.0, a, rtol=1e-9, atol=1e-9)
    traced = calls[0]
    sol = jode.solve_batch(f, y0, 0.0, 1.0, a, rtol=1e-9, atol=1e-9)
    assert calls[0] == traced
    np.testing.assert_allclose(sol.ys[:, -1, 0], np.exp(-np.asarray(a)), rtol=1e-7)


def test_fixed_point_repeat_call_does_not_retrace():
    g, calls = counted(lambda z, a: jnp.cos(z))
    z0 = jnp.asarray(-1.0)
    jode.fixed_point(g, z0, rtol=0.0, atol=1e-13)
    traced = calls[0]
    sol = jode.fixed_point(g, z0, rtol=0.0, atol=1e-13)
    assert calls[0] == traced
    plain = jode.fixed_point.__wrapped__(g, z0, rtol=0.0, atol=1e-13)
    np.testing.assert_allclose(sol.value, plain.value, rtol=1e-14)
    assert int(sol.steps) == int(plain.steps)
    dottie = brentq(lambda z: math.cos(z) - z, 0.0, 1.0, xtol=1e-15)
    np.testing.assert_allclose(sol.value, dottie, atol=1e-12)
    # a Python float start is traced too: a new value reuses the compiled solve
    jode.fixed_point(g, 0.5, rtol=0.0, atol=1e-13)
    traced = calls[0]
    sol = jode.fixed_point(g, 0.3, rtol=0.0, atol=1e-13)
    assert calls[0] == traced
    np.testing.assert_allclose(sol.value, dottie, atol=1e-12)


def test_steady_state_repeat_call_does_not_retrace():
    F, calls = counted(lambda t, y, k: k * (1.0 - y))  # steady state y* = 1
    jode.steady_state(F, jnp.zeros(3), 2.0, atol=1e-10, rtol=1e-10)
    traced = calls[0]
    sol = jode.steady_state(F, jnp.zeros(3), 3.0, atol=1e-10, rtol=1e-10)
    assert calls[0] == traced
    np.testing.assert_allclose(sol.value, np.ones(3), atol=1e-8)


def test_solve_fractional_repeat_call_does_not_retrace():
    """D^(1/2) y = -y, y(0) = 1 has y(t) = E_{1/2}(-√t) = erfcx(√t) (Podlubny 1999, §1.2)."""
    f, calls = counted(decay)
    ts = jnp.linspace(0.0, 1.0, 5)
    kw = dict(alpha=0.5, n_steps=512, saveat=ts)
    jode.solve_fractional(f, 1.0, 0.0, 1.0, 1.0, **kw)
    traced = calls[0]
    sol = jode.solve_fractional(f, 1.0, 0.0, 1.0, 1.0, **kw)
    assert calls[0] == traced
    np.testing.assert_allclose(sol.ys[1:], erfcx(np.sqrt(np.asarray(ts[1:]))), atol=2e-3)
    # a new parameter value and a new order run the same executable
    sol = jode.solve_fractional(f, 1.0, 0.0, 1.0, 2.0, **kw)
    assert calls[0] == traced
    np.testing.assert_allclose(sol.ys[-1], erfcx(2.0), atol=2e-3)
    sol = jode.solve_fractional(f, 1.0, 0.0, 1.0, 2.0, **{**kw, "alpha": 1.0})
    assert calls[0] == traced
    np.testing.assert_allclose(sol.ys[-1], math.exp(-2.0), atol=1e-4)  # α = 1: y' = -2y


def test_solve_fractional_refinement_repeat_call_does_not_retrace():
    f, calls = counted(decay)
    jode.solve_fractional(f, 1.0, 0.0, 1.0, 1.0, alpha=0.5, rtol=1e-4, atol=1e-5)
    traced = calls[0]
    sol = jode.solve_fractional(f, 1.0, 0.0, 1.0, 1.0, alpha=0.5, rtol=1e-4, atol=1e-5)
    assert calls[0] == traced
    np.testing.assert_allclose(sol.ys[-1], erfcx(1.0), atol=1e-4)


def test_mittag_leffler_compiles_once_for_every_order():
    """E_{1/2}(-z) = erfcx(z) and E_1(z) = e^z, from one compiled kernel per shape."""
    from jode.ode.mittag_leffler import _evaluate

    z = jnp.linspace(0.0, 3.0, 7)
    jode.mittag_leffler(-z, 0.5)
    size = _evaluate._cache_size()
    np.testing.assert_allclose(jode.mittag_leffler(-z, 0.5), erfcx(np.asarray(z)), rtol=1e-10)
    np.testing.assert_allclose(jode.mittag_leffler(-z, 1.0), np.exp(-np.asarray(z)), rtol=1e-10)
    assert _evaluate._cache_size() == size


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(saveat=jnp.array([0.5, 2.0])), "must lie in \\[t0, t1\\]"),
        (dict(saveat=np.array([0.5, 0.2])), "strictly increasing"),
        (dict(saveat=jode.SaveAt(ts=jnp.array([-1.0, 0.5]))), "must lie in \\[t0, t1\\]"),
        (dict(rtol=jnp.asarray(-1e-6)), "rtol must be > 0"),
        (dict(atol=np.float64(0.0)), "atol must be > 0"),
        (dict(t1=jnp.asarray(float("nan"))), "t1 must be a finite scalar"),
        (dict(y0=jnp.array([1, 1])), "floating point"),
    ],
)
def test_bad_input_raises_after_a_cached_call(kwargs, match):
    """Array values are checked before every cached call, not only when tracing."""
    f, _ = counted(decay)
    base = dict(y0=jnp.array([1.0, 1.0]), t0=0.0, t1=1.0, saveat=jnp.array([0.2, 0.5]))
    jode.solve(f, base["y0"], 0.0, 1.0, jnp.asarray(1.0), saveat=base["saveat"])
    call = {**base, **kwargs}
    y0, t0, t1 = call.pop("y0"), call.pop("t0"), call.pop("t1")
    for _ in range(2):
        with pytest.raises(ValueError, match=match):
            jode.solve(f, y0, t0, t1, jnp.asarray(1.0), **call)


def test_solve_batch_checks_save_times_before_the_cached_call():
    f, _ = counted(decay)
    y0, a = jnp.ones((2, 1)), jnp.array([1.0, 2.0])
    jode.solve_batch(f, y0, 0.0, 1.0, a, saveat=jnp.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="must lie in \\[t0, t1\\]"):
        jode.solve_batch(f, y0, 0.0, 1.0, a, saveat=jnp.array([0.5, 3.0]))


def test_fixed_point_checks_array_tolerances_before_the_cached_call():
    g, _ = counted(lambda z, a: jnp.cos(z))
    jode.fixed_point(g, jnp.asarray(0.0), rtol=jnp.asarray(1e-8))
    with pytest.raises(ValueError, match="rtol must be a finite scalar >= 0"):
        jode.fixed_point(g, jnp.asarray(0.0), rtol=jnp.asarray(-1e-8))


def test_solve_fractional_checks_save_times_before_the_cached_call():
    f, _ = counted(decay)
    kw = dict(alpha=0.5, n_steps=64)
    jode.solve_fractional(f, 1.0, 0.0, 1.0, 1.0, saveat=jnp.array([0.5, 1.0]), **kw)
    with pytest.raises(ValueError, match="must lie in \\[t0, t1\\]"):
        jode.solve_fractional(f, 1.0, 0.0, 1.0, 1.0, saveat=jnp.array([0.5, 2.0]), **kw)


def test_throw_still_raises_from_the_cached_solve():
    f, calls = counted(lambda t, y, a: a * y**2)  # y = 1/(1 - a t): blows up at t = 1/a
    for _ in range(2):
        with pytest.raises(Exception, match="max_steps=20 was reached"):
            jode.solve(f, jnp.array([1.0]), 0.0, 0.9, 1.0, max_steps=20)
    traced = calls[0]
    sol = jode.solve(f, jnp.array([1.0]), 0.0, 0.9, 1.0, max_steps=20, throw=False)
    assert int(sol.status) == int(jode.Status.MAX_STEPS)
    assert calls[0] > traced  # throw is an option: its own executable
    g = lambda z, a: z + 1.0  # noqa: E731  (no fixed point)
    for _ in range(2):
        with pytest.raises(Exception, match="jode.fixed_point"):
            jode.fixed_point(g, jnp.asarray(0.5), max_steps=5)


def test_transparent_under_outer_transformations():
    """Under jit, vmap and grad the entry point is called directly (no nested cache)."""
    f, _ = counted(decay)

    def loss(a):
        return jode.solve(f, jnp.array([1.0]), 0.0, 2.0, a, rtol=1e-10, atol=1e-10).ys[-1, 0]

    # d/da e^{-2a} = -2 e^{-2a}
    g = jax.jit(jax.grad(loss))(jnp.asarray(0.7))
    np.testing.assert_allclose(g, -2.0 * math.exp(-1.4), rtol=1e-7)
    values = jax.vmap(loss)(jnp.array([0.5, 1.0]))
    np.testing.assert_allclose(values, np.exp([-1.0, -2.0]), rtol=1e-8)
    np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(0.7)), g, rtol=1e-10)


def test_options_hash_and_compare_by_value():
    """The cache key holds the static options: equal options must be equal keys."""
    makers = [*EXPLICIT_SOLVERS.values(), *IMPLICIT_SOLVERS.values()]
    makers += [jode.PIDController, jode.ConstantStep, jode.DirectAdjoint, jode.ForwardMode]
    makers += [jode.BacksolveAdjoint, jode.Anderson, jode.Newton, jode.Broyden]
    makers += [jode.FixedPointIteration, jode.SteadyState, jode.ImplicitAdjoint]
    for make in makers:
        a, b = make(), make()
        assert a == b and hash(a) == hash(b), make
    saveat = jode.SaveAt(ts=jnp.linspace(0.0, 1.0, 3))
    dynamic, static = eqx.partition(saveat, eqx.is_array)
    assert isinstance(dynamic.ts, jax.Array)  # save times are traced, not a key
    assert hash(static) == hash(eqx.partition(jode.SaveAt(ts=jnp.zeros(3)), eqx.is_array)[1])


def test_cli_answers_without_importing_jax():
    code = (
        "import sys; from jode_experiments.cli import main; main(['list']); "
        "assert 'jax' not in sys.modules, 'jode list imported jax'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "recovery" in out.stdout
