"""LU factorization with partial pivoting for the implicit solvers' Newton matrices.

Gaussian elimination with row pivoting (Golub & Van Loan 2013, *Matrix Computations*, 4th
ed., Algorithm 3.4.1): P A = L U with unit lower-triangular L, the multipliers stored
below U's diagonal. For n ≤ `SMALL` it is written out with elementwise operations,
gathers and row selections (no LAPACK call and no scatter), so that XLA:CPU can compile a
stiff solve's step loop into one kernel (see `jode/_cpu.py`); larger systems use
`jax.scipy.linalg` (LAPACK getrf/getrs).

This is why the ODE loop does not go through lineax (`lineax.LU`), which the fixed-point
solvers use for their Krylov solves: lineax's LU is a LAPACK custom call, which would split
the stiff step loop into separately dispatched kernels; the written-out LU keeps the whole
loop in one XLA:CPU kernel.
"""

from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.linalg as jsl

#: Largest dimension factorized without LAPACK (the unrolled code grows like n²).
SMALL = 8


def lu_factor(a):
    """(lu, pivots) of a square matrix; pass the pair to `lu_solve`."""
    n = a.shape[0]
    if n > SMALL:
        return jsl.lu_factor(a)
    rows = jnp.arange(n)
    perm = rows
    for k in range(n - 1):
        below = rows >= k
        p = jnp.argmax(jnp.where(below, jnp.abs(a[:, k]), -1.0))
        swap = jnp.where(rows == k, p, jnp.where(rows == p, k, rows))
        a, perm = a[swap], perm[swap]
        mult = jnp.where(rows > k, a[:, k] / a[k, k], 0.0)
        pivot_row = jnp.where(rows > k, a[k], 0.0)  # columns right of the pivot
        a = a - mult[:, None] * pivot_row[None, :]
        a = jnp.where((rows[:, None] > k) & (rows[None, :] == k), mult[:, None], a)
    return a, perm


def lu_solve(lu_and_pivots, b):
    """x with A x = b, from `lu_factor(A)`; b of shape (n,) or (n, m)."""
    lu, pivots = lu_and_pivots
    n = lu.shape[0]
    if n > SMALL:
        return jsl.lu_solve(lu_and_pivots, b)
    rows = jnp.arange(n).reshape((n,) + (1,) * (b.ndim - 1))
    x = b[pivots]
    for k in range(n - 1):  # L y = P b, unit diagonal
        x = x - jnp.where(rows > k, lu[:, k].reshape(rows.shape), 0.0) * x[k]
    for k in range(n - 1, -1, -1):  # U x = y
        xk = x[k] / lu[k, k]
        above = jnp.where(rows < k, lu[:, k].reshape(rows.shape), 0.0)
        x = jnp.where(rows == k, xk, x - above * xk)
    return x
