"""The gradient-flow optimizer on the reproductions' test functions (jode_experiments):
global minima from the grid comparison's settings, the stored minimizers, XOR, and the
Adam reference of `run_to_target`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jode
from jode import optim
from jode_experiments import optim_compare as compare
from jode_experiments import testfunctions


def _run(opt, loss, params, n):
    """n optax steps in one jitted scan, the gradient recycled from the state."""

    def body(carry, _):
        p, s = carry
        v, g = optax.value_and_grad_from_state(loss)(p, state=s)
        u, s = opt.update(g, s, p, value=v, grad=g, value_fn=loss)
        return (optax.apply_updates(p, u), s), None

    @jax.jit
    def run(p):
        return jax.lax.scan(body, (p, opt.init(p)), None, length=n)

    return run(params)


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
    (p, state), _ = _run(optim.gradient_flow(jode.Tsit5(), rtol=1e-6, atol=1e-8), loss, p0, 300)
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
