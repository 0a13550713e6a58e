"""jode/ode/linalg.py: LU with partial pivoting against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jode.ode import linalg


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 12])
def test_lu_solve_matches_numpy(n):
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, n))
    a[0, 0] = 1e-12  # forces a row swap at the first column
    b = rng.normal(size=(n,))
    bm = rng.normal(size=(n, 3))
    lu = jax.jit(linalg.lu_factor)(jnp.asarray(a))
    x = linalg.lu_solve(lu, jnp.asarray(b))
    xm = linalg.lu_solve(lu, jnp.asarray(bm))
    cond = np.linalg.cond(a)
    tol = 1e-13 * cond
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=tol, atol=tol)
    np.testing.assert_allclose(xm, np.linalg.solve(a, bm), rtol=tol, atol=tol)


def test_small_factorization_is_plu():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    lu, perm = linalg.lu_factor(jnp.asarray(a))
    lower = np.tril(np.asarray(lu), -1) + np.eye(6)
    upper = np.triu(np.asarray(lu))
    np.testing.assert_allclose(lower @ upper, a[np.asarray(perm)], atol=1e-13)
    assert np.all(np.abs(np.tril(np.asarray(lu), -1)) <= 1 + 1e-15)  # partial pivoting


def test_small_lu_differentiates_like_the_solve():
    a = jnp.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.3, 0.1, 2.0]])
    b = jnp.array([1.0, 2.0, 3.0])
    g = jax.grad(lambda a: jnp.sum(linalg.lu_solve(linalg.lu_factor(a), b)))(a)
    g_ref = jax.grad(lambda a: jnp.sum(jnp.linalg.solve(a, b)))(a)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12)
