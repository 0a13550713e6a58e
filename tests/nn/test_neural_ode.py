"""NeuralODE / ODEBlock: the solve against the matrix exponential, gradients against finite
differences, NFE counters against the solver's own count, tolerance vs NFE, and fields given
states of the wrong size. ODE-Nets on the digits are tested in
tests/experiments/test_neural_ode_experiments.py."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg

import jode
from jode.nn.neural_ode import (
    ConvField,
    MLPField,
    NeuralODE,
    conv3x3,
    nfe_counts,
    reset_nfe,
)

A = np.array([[-0.1, 2.0], [-2.0, -0.1]])


class Linear(eqx.Module):
    a: jax.Array

    def __call__(self, t, y, args=None):
        return y @ self.a.T


def test_state_and_trajectory_match_matrix_exponential():
    y0 = jnp.array([[2.0, 0.0], [0.5, -1.0]])
    node = NeuralODE(Linear(jnp.asarray(A)), t1=1.5, rtol=1e-10, atol=1e-10)
    ts = jnp.linspace(0.0, 1.5, 4)
    ys = node(y0, ts)
    ref = np.stack([y0 @ scipy.linalg.expm(A * float(t)).T for t in ts])
    np.testing.assert_allclose(ys, ref, rtol=0, atol=1e-8)
    np.testing.assert_allclose(node(y0), ref[-1], rtol=0, atol=1e-8)


def test_fixed_step_gradient_matches_finite_differences_and_counts_nfe():
    a0 = jnp.asarray(A)
    y0 = jnp.array([[2.0, 0.0]])

    def loss(a):
        node = NeuralODE(Linear(a), solver=jode.RK4(), n_steps=8, count_nfe=True)
        return jnp.sum(node(y0) ** 2)

    reset_nfe()
    grad = jax.jit(jax.grad(loss))(a0)
    counts = nfe_counts()
    # RK4 here: f(t0, y0), then 3 stages and f(t + h, y1) per step. All are differentiated
    # except the last step's f(t1, y1), which nothing uses.
    assert counts == {"forward": 8 * 4 + 1, "backward": 8 * 4}
    eps = 1e-6
    fd = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            e = jnp.zeros((2, 2)).at[i, j].set(eps)
            fd[i, j] = (loss(a0 + e) - loss(a0 - e)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6)


def test_nfe_falls_as_tolerance_loosens_and_matches_counter():
    field = MLPField(2, 16, 2, key=jr.key(0))
    node = NeuralODE(field, t1=2.0, count_nfe=True)
    y0 = jr.normal(jr.key(1), (8, 2))
    nfes = []
    for tol in (1e-2, 1e-5, 1e-8):
        reset_nfe()
        sol = node.solve(y0, rtol=tol, atol=tol)
        nfes.append(int(sol.stats["nfev"]))
        assert nfe_counts()["forward"] == nfes[-1]
    assert nfes[0] < nfes[1] < nfes[2]


def test_conv3x3_matches_lax_conv_and_conv_field_shapes():
    x = jr.normal(jr.key(0), (2, 8, 8, 3))
    w = jr.normal(jr.key(1), (3, 3, 3, 5))  # (kh, kw, C_in, C_out)
    b = jnp.arange(5.0)
    ref = (
        jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + b
    )
    np.testing.assert_allclose(conv3x3(x, w.reshape(27, 5), b), ref, atol=1e-12)
    ref2 = (
        jax.lax.conv_general_dilated(
            x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + b
    )
    np.testing.assert_allclose(conv3x3(x, w.reshape(27, 5), b, stride=2), ref2, atol=1e-12)
    assert ConvField(8, key=jr.key(2))(0.3, jnp.ones((2, 4, 4, 8))).shape == (2, 4, 4, 8)


def test_bad_arguments_raise():
    field = MLPField(2, 4, 1, key=jr.key(0))
    with pytest.raises(ValueError, match="n_steps"):
        NeuralODE(field, solver=jode.Euler())
    with pytest.raises(ValueError, match="t1 must differ"):
        NeuralODE(field, t0=1.0, t1=1.0)
    with pytest.raises(ValueError, match="dim, width and depth"):
        MLPField(2, 0, 1, key=jr.key(0))


def test_states_of_the_wrong_size_are_clear_errors():
    """A field built for d = 2 given a 3-vector (or maps with the wrong channel count) says
    so, instead of XLA's dot_general contracting-dimension message."""
    node = NeuralODE(MLPField(2, 4, 1, key=jr.key(0)))
    with pytest.raises(ValueError, match=r"MLPField\(dim=2\) .*got y of shape \(3,\)"):
        node(jnp.ones(3))
    with pytest.raises(ValueError, match=r"got y of shape \(5, 3\)"):
        node(jnp.ones((5, 3)))
    assert node(jnp.ones((5, 2))).shape == (5, 2)  # a batch of the right size still works
    with pytest.raises(ValueError, match=r"ConvField\(channels=4\) .*\(6, 6, 3\)"):
        ConvField(4, key=jr.key(0))(0.0, jnp.ones((6, 6, 3)))
