"""jode.nn.DEQ: the equilibrium it returns, its implicit gradient vs finite differences, the
spectral bound, the Jacobian penalty's estimate; the digits accuracy (slow)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from jode.fixed_point import Anderson, FixedPointStatus, ImplicitAdjoint, Newton
from jode.nn import DEQ, TanhCell


@pytest.fixture(scope="module")
def layer():
    cell = TanhCell(6, 3, key=jr.PRNGKey(0), bound=0.8, dtype=jnp.float64)
    # A raw weight with σ_max well above the bound, so the rescaling is active.
    cell = eqx.tree_at(lambda c: c.weight, cell, cell.weight * 4.0)
    return DEQ(cell, solver=Anderson(), adjoint=ImplicitAdjoint(solver=Newton()),
               rtol=1e-12, atol=1e-12, max_steps=200)


def test_spectral_bound_and_equilibrium(layer):
    w = np.asarray(layer.cell.spectral_weight())
    assert np.linalg.norm(w, 2) == pytest.approx(0.8, rel=1e-8)
    x = jnp.asarray([0.3, -1.0, 2.0])
    z, stats = eqx.filter_jit(lambda m, x: m(x))(layer, x)
    u, b = np.asarray(layer.cell.inject), np.asarray(layer.cell.bias)
    np.testing.assert_allclose(z, np.tanh(w @ np.asarray(z) + u @ np.asarray(x) + b), atol=1e-11)
    assert int(stats.status) == FixedPointStatus.CONVERGED
    assert 1 <= int(stats.steps) < 40 and float(stats.residual) <= 1e-11


def test_deq_gradient_vs_finite_differences(layer):
    xs = jr.normal(jr.PRNGKey(1), (5, 3))
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    @jax.jit
    def loss(params):
        z, _ = jax.vmap(eqx.combine(params, static))(xs)
        return jnp.sum(jnp.cos(z) * jnp.arange(1.0, 7.0))

    grads = jax.jit(jax.grad(loss))(params)
    direction = jax.tree.map(lambda p: jr.normal(jr.PRNGKey(2), p.shape, p.dtype), params)
    eps = 1e-5
    shift = lambda s: jax.tree.map(lambda p, d: p + s * d, params, direction)  # noqa: E731
    fd = (loss(shift(eps)) - loss(shift(-eps))) / (2 * eps)
    ad = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    assert abs(float(ad - fd)) <= 1e-6 * abs(float(fd))


def test_jacobian_penalty_is_unbiased(layer):
    x = jnp.asarray([0.3, -1.0, 2.0])
    z, _ = layer(x)
    context = layer.cell.context(x)
    jac = jax.jacfwd(lambda z: layer.cell.step(z, context))(z)
    exact = float(jnp.sum(jac**2) / z.size)
    keys = jr.split(jr.PRNGKey(3), 20000)
    samples = jax.jit(jax.vmap(lambda k: layer.jacobian_penalty(z, x, k)))(keys)
    # Hutchinson: mean of 20000 draws within 4 standard errors of the exact value.
    assert abs(float(jnp.mean(samples)) - exact) <= 4 * float(jnp.std(samples)) / np.sqrt(20000)


@pytest.mark.slow
def test_digits_deq_reaches_97_percent():
    from jode_experiments.data import load_digits
    from jode_experiments.deq import make_deq, standardize, train_classifier

    x_train, y_train, x_test, y_test = load_digits()
    x_train, x_test = standardize(x_train, x_test)
    model = make_deq(64, 100, 10, jr.PRNGKey(1))
    with jax.numpy_dtype_promotion("standard"):  # optax mixes Python floats and int counts
        _, log = train_classifier(model, (x_train, y_train, x_test, y_test), epochs=20)
    assert log["test_accuracy"] >= 0.97
    assert log["test_converged"] == 1.0
