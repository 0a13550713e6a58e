"""jode.nn.DEQ: the equilibrium it returns, its implicit gradient vs finite differences, the
spectral bound, the Jacobian penalty's estimate, inputs of the wrong size (the digits accuracy
is tested in tests/experiments/test_neural_ode_experiments.py)."""

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


def test_inputs_of_the_wrong_size_are_clear_errors():
    from jode.nn import DEQClassifier

    deq = DEQ(TanhCell(6, 3, key=jr.key(0)))
    with pytest.raises(ValueError, match=r"TanhCell\(in_size=3\) .*got shape \(4,\)"):
        deq(jnp.ones(4))
    with pytest.raises(ValueError, match=r"got shape \(2, 3\). Map a batch with jax.vmap"):
        deq(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"z0 must have the equilibrium's shape \(6,\)"):
        deq(jnp.ones(3), z0=jnp.zeros(5))
    clf = DEQClassifier(64, 8, 10, key=jr.key(1))
    with pytest.raises(ValueError, match=r"DEQClassifier\(in_size=64\) .*\(63 values\)"):
        clf(jnp.ones(63))
    assert clf(jnp.ones((8, 8)))[0].shape == (10,)  # an 8x8 image flattens to 64
