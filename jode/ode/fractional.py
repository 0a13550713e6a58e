"""Caputo fractional differential equations D^α y(t) = f(t, y, args).

For m - 1 < α ≤ m (m = ⌈α⌉) with y^(k)(t0) = y0_k, k < m, the problem is equivalent to the
Volterra integral equation (Diethelm 2010, *The Analysis of Fractional Differential
Equations*, Lemma 6.2)

    y(t) = T(t) + 1/Γ(α) ∫_{t0}^t (t - s)^{α-1} f(s, y(s)) ds,   T(t) = Σ_{k<m} y0_k (t-t0)^k / k!.

Two methods on the uniform grid t_n = t0 + nh:

* ``"abm"``: the fractional Adams-Bashforth-Moulton predictor-corrector (Diethelm, Ford &
  Freed 2002, Nonlinear Dyn. 29:3-22, eqs. 3.3-3.4 here with t0 shifted to 0):

      y^P_{n} = T(t_n) + h^α/Γ(α+1) Σ_{j<n} b_{n-j} f_j,      b_i = i^α - (i-1)^α,
      y_{n}   = T(t_n) + h^α/Γ(α+2) [ f(t_n, y^P_n) + a_{0,n} f_0 + Σ_{0<j<n} w_{n-j} f_j ],
      w_i = (i+1)^{α+1} - 2 i^{α+1} + (i-1)^{α+1},   a_{0,n} = (n-1)^{α+1} - (n-1-α) n^α.

  Error O(h^2) when D^α y is smooth and α ≥ 1, O(h^{1+α}) for α < 1 (Diethelm, Ford & Freed
  2004, Numer. Algorithms 36:31-52, Thm. 3.4); lower where y itself has a t^α
  singularity at t0 (Thm. 3.5). ``corrector_iters`` > 1 repeats the corrector (P(EC)^μE,
  Garrappa 2010, Int. J. Comput. Math. 87:2281).
* ``"l1"`` (0 < α ≤ 1): the L1 discretization of the Caputo derivative (Oldham & Spanier
  1974, §8.2; Lin & Xu 2007, J. Comput. Phys. 225:1533, eq. 3.3), implicit, solved by Newton:

      h^{-α}/Γ(2-α) [ (y_n - y_{n-1}) + Σ_{0<k<n} c_{n-k} (y_k - y_{k-1}) ] = f(t_n, y_n),
      c_i = (i+1)^{1-α} - i^{1-α};   error O(h^{2-α}) for smooth y.

The history sums Σ_j K_{n-j} g_j are causal convolutions, but each term needs y_n first, so
one FFT over the whole grid is impossible. They are computed with the divide-and-conquer
splitting of Hairer, Lubich & Schlichte (1985, SIAM J. Sci. Stat. Comput. 6:532-541, §3):
blocks of ``block`` steps are stepped directly; when a block that closes a left half of size
s = 2^ℓ·block finishes, its contribution to the next s targets is added with one FFT of
length 2s. Arithmetic O(N log² N) instead of O(N²) (O(N log N) per level, log N levels),
memory O(N) (plus a buffer copy per block, O(N²/r) memory traffic: see `block`); the solve
is a `lax.scan` over blocks (a `lax.switch` picks the level), so it compiles once,
differentiates with every JAX transformation, including with respect to α.

Error estimate (Richardson): with ``error_estimate=True`` the solve is repeated on the grids
N/2 and N/4; at t1 the observed order p = log2(|y_{N/2} - y_{N/4}| / |y_N - y_{N/2}|) and the
estimate |y_N - y_{N/2}| / (2^p - 1) of the error of y_N(t1) go into ``sol.stats``. The
estimate is taken at t1, not as a maximum over the grid: near t0, where y ~ t^α, the error
of the first steps shrinks only like h^{2α} and erratically, so grid-maximum ratios give no
usable order. With ``n_steps=None`` the grid is refined (N doubled) until the estimate
meets atol + rtol·|y(t1)|: a global refinement, the sound form of adaptivity here, since a
local step-size controller would break the convolution structure the fast history sums
rely on (variable-step product integration costs O(N²); Garrappa 2018, Mathematics 6:16).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._jit import cached
from .._results import RESULTS
from . import checks
from .solution import Solution

METHODS = ("abm", "l1")
_ALPHA_RANGE = {"abm": (0.0, 2.0), "l1": (0.0, 1.0)}


# --------------------------------------------------------------------------- weights
def _pow(lags, p):
    """lags^p with 0^p = 0, differentiable in p (no log 0 in the graph)."""
    safe = jnp.where(lags > 0, lags, 1.0)
    return jnp.where(lags > 0, safe**p, 0.0)


def _abm_weights(alpha, n_lags, dtype):
    """Predictor b_i, corrector w_i (lags 0..n_lags; lag 0 unused) and the f_0 correction."""
    i = jnp.arange(n_lags + 1, dtype=dtype)
    b = _pow(i, alpha) - _pow(i - 1, alpha)
    w = _pow(i + 1, alpha + 1) - 2 * _pow(i, alpha + 1) + _pow(i - 1, alpha + 1)
    a0 = _pow(i - 1, alpha + 1) - (i - 1 - alpha) * _pow(i, alpha)
    zero = i == 0
    kernels = jnp.stack([jnp.where(zero, 0.0, b), jnp.where(zero, 0.0, w)])
    return kernels, jnp.where(zero, 0.0, a0 - w)


def _l1_weights(alpha, n_lags, dtype):
    i = jnp.arange(n_lags + 1, dtype=dtype)
    c = _pow(i + 1, 1 - alpha) - _pow(i, 1 - alpha)
    return jnp.where(i == 0, 0.0, c)[None]


# --------------------------------------------------------------------------- history engine
def _ctz(k):
    """Number of trailing zero bits of a positive int32."""
    lowest = k & (-k)
    return jax.lax.population_count(lowest - 1)


def _history_scan(n, capacity, block, kernels, source, update, state0, dim, dtype):
    """Step targets 1..n with S_m = Σ_{j ≤ m} K(m + 1 - j) g_j computed block-recursively.

    Args:
        n: number of live steps (may be traced), n <= capacity; later steps are no-ops.
        capacity: number of steps the arrays hold (static).
        block: leaf block size r (static).
        kernels: (n_k, P + 1) kernel values at lags 0..P, P = r·2^L >= n.
        source: (m, state) -> g_m, shape (dim,): the history term made available at step m.
        update: (m, state, S (n_k, dim)) -> (state, y_{m+1}).
        state0: the initial carry of `update`.

    Returns:
        ys (capacity, dim): y_1..y_capacity (frozen at y_n after step n), the final state.
    """
    n_blocks = -(-capacity // block)
    levels = max(0, math.ceil(math.log2(n_blocks))) if n_blocks > 1 else 0
    padded = block * 2**levels
    n_k = kernels.shape[0]
    # Leaf Toeplitz matrices: lag i + 1 - q between local target i and local source q <= i.
    ii, qq = np.meshgrid(np.arange(block), np.arange(block), indexing="ij")
    lag = np.where(qq <= ii, ii + 1 - qq, 0)
    toeplitz = jnp.where(jnp.asarray(qq <= ii), kernels[:, lag], 0.0)  # (n_k, r, r)
    # Level ℓ: sources [A, A+s) onto targets [A+s, A+2s) use lags 2..2s (circular FFT 2s).
    kffts = []
    for level in range(levels):
        s = block * 2**level
        seg = kernels[:, 2 : 2 * s + 1]
        kffts.append(jnp.fft.rfft(seg, n=2 * s, axis=1))

    def push(level, sources, hist, b):
        s = block * 2**level
        start = (b + 1) * block - s
        src = jax.lax.dynamic_slice_in_dim(sources, start, s, axis=0)
        spec = jnp.fft.rfft(src, n=2 * s, axis=0)  # (s + 1, dim)
        conv = jnp.fft.irfft(kffts[level][:, :, None] * spec[None], n=2 * s, axis=1)
        contrib = jnp.moveaxis(conv[:, s - 1 : 2 * s - 1], 0, 1).astype(dtype)  # (s, n_k, dim)
        target = (b + 1) * block
        old = jax.lax.dynamic_slice_in_dim(hist, target, s, axis=0)
        return jax.lax.dynamic_update_slice_in_dim(hist, old + contrib, target, axis=0)

    branches = [lambda src, hist, b, lv=lv: push(lv, src, hist, b) for lv in range(levels)]
    branches.append(lambda src, hist, b: hist)

    def block_body(carry, b):
        state, sources, hist = carry
        hist_block = jax.lax.dynamic_slice_in_dim(hist, b * block, block, axis=0)

        def leaf(c, i):
            state, local = c
            m = b * block + i
            live = m < n
            g = jnp.where(live, source(m, state), 0.0)
            local = local.at[i].set(g)
            s_m = hist_block[i] + jnp.einsum("kq,qd->kd", toeplitz[:, i], local)
            new_state, y_next = update(m, state, s_m)
            state = jax.tree.map(lambda a, o: jnp.where(live, a, o), new_state, state)
            return (state, local), y_next

        local0 = jnp.zeros((block, dim), dtype)
        (state, local), ys = jax.lax.scan(
            leaf, (state, local0), jnp.arange(block, dtype=jnp.int32)
        )
        sources = jax.lax.dynamic_update_slice_in_dim(sources, local, b * block, axis=0)
        if levels > 0:
            level = jnp.minimum(_ctz(b + 1), levels)
            hist = jax.lax.switch(level, branches, sources, hist, b)
        return (state, sources, hist), ys

    sources0 = jnp.zeros((padded, dim), dtype)
    hist0 = jnp.zeros((padded, n_k, dim), dtype)
    (state, _, _), ys = jax.lax.scan(
        block_body, (state0, sources0, hist0), jnp.arange(n_blocks, dtype=jnp.int32)
    )
    return ys.reshape(n_blocks * block, dim)[:capacity], state, padded


# --------------------------------------------------------------------------- methods
def _taylor(y0s, dt):
    """T(t) = Σ_k y0_k dt^k / k! for the m initial conditions (rows of y0s)."""
    out = y0s[0]
    for k in range(1, y0s.shape[0]):
        out = out + y0s[k] * dt**k / math.factorial(k)
    return out


def _grid_solve(
    method, f, args, alpha, t0, t1, y0s, n, capacity, block, corrector_iters, newton_iters
):
    """y on the grid t_k = t0 + k (t1 - t0)/n: an array (capacity + 1, dim), y_n after n."""
    dtype = y0s.dtype
    dim = y0s.shape[1]
    h = (t1 - t0) / jnp.asarray(n, dtype)
    block = min(block, capacity)
    n_blocks = -(-capacity // block)
    padded = block * 2 ** (math.ceil(math.log2(n_blocks)) if n_blocks > 1 else 0)

    def time(k):  # clamp: padded steps past t1 evaluate f at t1 (their results are dropped)
        return jnp.minimum(t0 + k.astype(dtype) * h, t1)

    y0 = y0s[0]
    if method == "abm":
        kernels, f0_corr = _abm_weights(alpha, padded, dtype)
        f0 = f(t0, y0, args)
        c_pred = h**alpha / jnp.exp(jax.scipy.special.gammaln(alpha + 1))
        c_corr = h**alpha / jnp.exp(jax.scipy.special.gammaln(alpha + 2))

        def source(m, y):
            return f(time(m), y, args)

        def update(m, y, s):
            t_n = time(m + 1)
            base = _taylor(y0s, t_n - t0)
            y_new = base + c_pred * s[0]
            corr = s[1] + f0_corr[m + 1] * f0
            for _ in range(corrector_iters):
                y_new = base + c_corr * (f(t_n, y_new, args) + corr)
            return y_new, y_new

        ys, _, _ = _history_scan(n, capacity, block, kernels, source, update, y0, dim, dtype)
    else:
        kernels = _l1_weights(alpha, padded, dtype)
        scale = 1 / (h**alpha * jnp.exp(jax.scipy.special.gammaln(2 - alpha)))

        def source(m, state):
            y, y_prev = state
            return y - y_prev  # Δ_m; zero at m = 0 since y_prev = y0

        def update(m, state, s):
            y, _ = state
            t_n = time(m + 1)

            def residual(z):
                return scale * (z - y + s[0]) - f(t_n, z, args)

            z = y
            for _ in range(newton_iters):
                jac = jax.jacfwd(residual)(z)
                z = z - jnp.linalg.solve(jac, residual(z))
            return (z, y), z

        ys, _, _ = _history_scan(n, capacity, block, kernels, source, update, (y0, y0), dim, dtype)
    return jnp.concatenate([y0[None], ys])


# --------------------------------------------------------------------------- public API
def _concrete_float(x):
    value = checks._concrete(x)
    if value is None or value.shape != ():
        return None
    return float(value)


def _check(method, alpha, n_conditions, t0, t1, n_steps, block, corrector_iters, newton_iters):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got method={method!r}")
    lo, hi = _ALPHA_RANGE[method]
    a = _concrete_float(alpha)
    if a is not None:
        if not (lo < a <= hi):
            hint = " (use method='abm' for 1 < alpha <= 2)" if method == "l1" and a > 1 else ""
            raise ValueError(
                f"method={method!r} supports {lo:g} < alpha <= {hi:g}; got alpha={a}{hint}"
            )
        need = math.ceil(a)
        if need != n_conditions:
            raise ValueError(
                f"alpha={a} needs ceil(alpha)={need} initial conditions: y0 and "
                f"derivatives=(y'(t0), ...) with {need - 1} entries; got {n_conditions} "
                f"(y0 and {n_conditions - 1} derivatives)"
            )
    elif n_conditions > 2:
        raise ValueError(f"at most 2 initial conditions (alpha <= 2); got {n_conditions}")
    t0c, t1c = _concrete_float(t0), _concrete_float(t1)
    if t0c is not None and t1c is not None and not t1c > t0c:
        raise ValueError(
            f"t1 must be > t0 (the Caputo derivative looks back from t0); got t0={t0c}, t1={t1c}"
        )
    if n_steps is not None and (not isinstance(n_steps, int) or n_steps < 1):
        raise ValueError(f"n_steps must be a positive int (or None to refine); got {n_steps!r}")
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int; got block={block!r}")
    for name, v in (("corrector_iters", corrector_iters), ("newton_iters", newton_iters)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int; got {name}={v!r}")


def _richardson(fine, half, quarter, n):
    """Richardson estimate of the error of y_N at t1, its observed order, and the largest
    difference |y_N - y_{N/2}| over the common grid (from the grids N, N/2, N/4)."""
    e1 = jnp.max(jnp.abs(fine[n] - half[n // 2]))
    e2 = jnp.max(jnp.abs(half[n // 2] - quarter[n // 4]))
    tiny = jnp.finfo(fine.dtype).tiny
    order = jnp.log2(jnp.maximum(e2, tiny) / jnp.maximum(e1, tiny))
    # Bounded so that a pre-asymptotic ratio never makes the estimate optimistic.
    estimate = e1 / (2 ** jnp.clip(order, 0.25, 2.5) - 1)
    k = jnp.arange(fine.shape[0] // 2 + 1, dtype=jnp.int32)[:, None]
    m = k.shape[0]
    spread = jnp.max(jnp.where(k <= n // 2, jnp.abs(fine[::2][:m] - half[:m]), 0.0))
    return estimate, order, spread


def solve_fractional(
    f,
    y0,
    t0,
    t1,
    args=None,
    *,
    alpha,
    n_steps=None,
    method: str = "abm",
    derivatives=(),
    saveat=None,
    error_estimate: bool = False,
    rtol=1e-6,
    atol=1e-8,
    capacity: int | None = None,
    max_steps: int = 2**17,
    corrector_iters: int = 1,
    newton_iters: int = 3,
    block: int | None = None,
    throw: bool = True,
) -> Solution:
    """Solve the Caputo fractional ODE D^α y = f(t, y, args) on [t0, t1].

    The initial conditions are y(t0) = y0 and, for 1 < α ≤ 2, y'(t0) = derivatives[0]
    (⌈α⌉ conditions in all). See the module docstring for the methods and their orders.

    Args:
        f: vector field f(t, y, args) (diffrax's convention); y any pytree of arrays.
        y0: y(t0), a pytree of floating arrays.
        t0, t1: the interval, t1 > t0.
        args: parameters of f; differentiable.
        alpha: the order α (0 < α ≤ 2 for "abm", 0 < α ≤ 1 for "l1"); may be traced, so
            jax.grad differentiates with respect to it.
        n_steps: number N of uniform steps, h = (t1 - t0)/N. An int; or, with `capacity`,
            an int array <= capacity (one compilation serves every N). None: start at
            N = 64 and double N until the Richardson estimate at t1 is below
            atol + rtol·|y(t1)| (a Python loop: not under jit).
        method: "abm" (predictor-corrector, explicit) or "l1" (implicit, Newton).
        derivatives: tuple of the ⌈α⌉ - 1 further initial conditions (y'(t0),).
        saveat: None (every grid point), an array of times in [t0, t1] (linear
            interpolation between grid points), or `jode.SaveAt(t1=True)`.
        error_estimate: also solve on the grids N/2 and N/4 (N divisible by 4) and put in
            stats the Richardson estimate of the error of y_N(t1) (``"error_estimate"``,
            max over components), the observed order (``"order_estimate"``) and the
            largest |y_N - y_{N/2}| over the grid (``"max_difference"``, dominated by the
            initial layer where y ~ t^α converges slowly).
        rtol, atol: tolerances of the refinement (n_steps=None), on the error at t1.
        capacity: static number of steps the arrays hold; N may then vary without
            recompiling. Saved grid points past N are inf (as `SaveAt(steps=True)`).
        max_steps: largest N the refinement may use.
        corrector_iters: corrector evaluations per step ("abm"); 1 is PECE.
        newton_iters: Newton iterations per step ("l1"; exact for linear f after 1).
        block: leaf block size r of the fast history sums (static). Default: the power
            of two nearest √N, within [32, 256]: a step's leaf sum costs O(r), and each
            block's level update moves the O(N) history buffer (XLA copies it through
            the `lax.switch`), O(N²/r) in all, so r ~ √N balances the two.
        throw: raise if the solution is not finite (default), else inspect `sol.status`.

    Returns:
        A `jode.Solution` with ts, ys (leading time axis), stats (`steps`, `accepted`,
        `rejected`, `nfev`, and the estimates) and status.

    Raises:
        ValueError: α outside the method's range, a number of initial conditions other
            than ⌈α⌉, t1 <= t0, bad n_steps or saveat, refinement under jit.

    Example:
        >>> sol = jode.solve_fractional(lambda t, y, lam: -lam * y, 1.0, 0.0, 5.0, 2.0,
        ...                             alpha=0.7, n_steps=1000)
        >>> # sol.ys ≈ jode.mittag_leffler(-2.0 * sol.ts**0.7, 0.7)

    References:
        Diethelm, Ford & Freed (2002), Nonlinear Dyn. 29:3-22; Diethelm, Ford & Freed
        (2004), Numer. Algorithms 36:31-52; Hairer, Lubich & Schlichte (1985), SIAM J. Sci.
        Stat. Comput. 6:532-541; Garrappa (2018), Mathematics 6(2):16.
    """
    if not isinstance(derivatives, (tuple, list)):
        raise ValueError(
            "derivatives must be a tuple of initial derivatives (y'(t0), ...); got "
            f"{type(derivatives).__name__}. For one derivative write derivatives=(dy0,)"
        )
    n_conditions = 1 + len(derivatives)
    n_static = n_steps if capacity is None else None
    if block is None:
        size = capacity or (n_steps if isinstance(n_steps, int) else 64)
        block = int(min(256, max(32, 2 ** round(math.log2(math.sqrt(max(size, 1)))))))
    _check(method, alpha, n_conditions, t0, t1, n_static, block, corrector_iters, newton_iters)
    n_steps = _check_capacity(n_steps, capacity, error_estimate)
    y0 = jax.tree.map(jnp.asarray, y0)
    checks.check_y0(y0)
    y0_flat = ravel_pytree(y0)[0]
    dtype = y0_flat.dtype
    for k, d in enumerate(derivatives):
        if jax.tree.structure(d) != jax.tree.structure(y0):
            raise ValueError(f"derivatives[{k}] must have the pytree structure of y0")
        if ravel_pytree(d)[0].shape != y0_flat.shape:
            raise ValueError(f"derivatives[{k}] must have the shapes of y0")
    from .solve import SaveAt

    save_ts = saveat.ts if isinstance(saveat, SaveAt) else saveat
    if save_ts is not None:  # on the concrete values, before they are traced
        checks.check_save_times(save_ts, t0, t1)
    # Arrays from here on: one compilation serves every value of t0, t1, alpha and of
    # floats in args (f itself is checked when the grid solve is traced).
    as_array = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    derivs = tuple(jax.tree.map(jnp.asarray, d) for d in derivatives)
    alpha, t0, t1 = as_array(alpha), as_array(t0), as_array(t1)
    args = jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, float) else x, args)
    static = dict(method=method, block=block, corrector_iters=corrector_iters,
                  newton_iters=newton_iters)
    if n_steps is not None:
        return _solve_steps(
            f, y0, derivs, args, alpha, t0, t1, jnp.asarray(n_steps, jnp.int32), saveat,
            capacity=capacity or n_steps, error_estimate=error_estimate, max_steps=max_steps,
            throw=throw, **static,
        )

    # Refinement: N = 64, 128, ... (a Python loop on concrete values; each grid is cached).
    n, grids, status = 64, {}, RESULTS.SUCCESS
    while True:
        for k in (n, n // 2, n // 4):
            if k not in grids:
                grids[k] = _grid_jit(f, y0, derivs, args, alpha, t0, t1,
                                     jnp.asarray(k, jnp.int32), capacity=capacity or k,
                                     **static)
        estimates = _richardson_jit(grids[n], grids[n // 2], grids[n // 4],
                                    jnp.asarray(n, jnp.int32))
        try:
            est = float(estimates[0])
            scale = float(jnp.max(jnp.abs(grids[n][n])))
        except jax.errors.ConcretizationTypeError as exc:
            raise ValueError(
                "n_steps=None refines the grid from the error estimate, a Python "
                "decision that cannot happen under jit/grad/vmap; pass n_steps=N (and "
                "error_estimate=True to monitor the error)"
            ) from exc
        limit = max_steps if capacity is None else min(max_steps, capacity)
        if est <= float(atol) + float(rtol) * scale:
            break
        if 2 * n > limit:
            status = RESULTS.MAX_STEPS
            break
        n *= 2
    dim = y0_flat.shape[0]
    nfev = sum(_nfev(method, k, dim, corrector_iters, newton_iters) for k in grids)
    return _finish(
        y0, grids[n], jnp.asarray(n, jnp.int32), estimates, jnp.asarray(int(status)),
        jnp.asarray(nfev, jnp.int32), saveat, t0, t1, max_steps=max_steps, throw=throw,
    )


@cached(arrays=("args",))
def _solve_steps(f, y0, derivs, args, alpha, t0, t1, n, saveat, *, capacity, error_estimate,
                 max_steps, throw, method, block, corrector_iters, newton_iters):
    """`solve_fractional` with a given number of steps n <= capacity: one compiled call."""
    static = dict(method=method, block=block, corrector_iters=corrector_iters,
                  newton_iters=newton_iters)
    solves = (n, n // 2, n // 4) if error_estimate else (n,)
    grids = [_grid_jit(f, y0, derivs, args, alpha, t0, t1, k, capacity=capacity, **static)
             for k in solves]
    estimates = _richardson(*grids, n) if error_estimate else None
    dim = ravel_pytree(y0)[0].shape[0]
    nfev = sum(_nfev(method, k, dim, corrector_iters, newton_iters) for k in solves)
    return _finish(
        y0, grids[0], n, estimates, jnp.asarray(int(RESULTS.SUCCESS)), nfev, saveat, t0, t1,
        max_steps=max_steps, throw=throw,
    )


@eqx.filter_jit
def _finish(y0, ys_grid, n, estimates, status, nfev, saveat, t0, t1, *, max_steps, throw):
    """The Solution from the grid solution y_0..y_capacity (y_n the last live one)."""
    y0_flat, unravel = ravel_pytree(y0)
    dtype = y0_flat.dtype
    cap = ys_grid.shape[0] - 1
    k = jnp.arange(cap + 1, dtype=jnp.int32)
    h = (t1 - t0) / n.astype(dtype)
    ts_unclamped = t0 + k.astype(dtype) * h  # increasing, for interpolation
    grid_ts = jnp.where(k == n, t1, jnp.where(k > n, jnp.inf, ts_unclamped))
    ts_out, ys_out = _save(saveat, grid_ts, ts_unclamped, ys_grid, k <= n, t0, t1, dtype)
    finite = jnp.all(jnp.isfinite(ys_grid))
    status = jnp.where(finite, status, int(RESULTS.NONFINITE)).astype(jnp.int32)
    stats = dict(steps=n, accepted=n, rejected=jnp.zeros((), jnp.int32),
                 nfev=jnp.asarray(nfev, jnp.int32))
    if estimates is not None:
        stats["error_estimate"], stats["order_estimate"], stats["max_difference"] = estimates
    sol = Solution(
        ts=ts_out, ys=jax.vmap(unravel)(ys_out), stats=stats, status=status, t0=t0, t1=t1,
        unravel=unravel,
    )
    if throw:
        messages = [""] * len(RESULTS)
        messages[RESULTS.MAX_STEPS] = (
            f"solve_fractional: the refinement reached max_steps={max_steps} (or capacity) "
            "before the error estimate met rtol/atol; raise it or loosen the tolerances. "
            "Pass throw=False to get the Solution"
        )
        messages[RESULTS.NONFINITE] = (
            "solve_fractional: the solution became NaN or infinite; check f and its "
            "parameters (a blow-up in finite time?), or take more steps. Pass throw=False "
            "to get the Solution"
        )
        sol = eqx.branched_error_if(sol, status != RESULTS.SUCCESS, status, messages)
    return sol


_richardson_jit = jax.jit(_richardson)


def _check_capacity(n_steps, capacity, error_estimate):
    """Validate (n_steps, capacity); returns n_steps (an int, an int array, or None)."""
    if capacity is None:
        if error_estimate and n_steps is not None and (n_steps % 4 or n_steps < 8):
            raise ValueError(
                "error_estimate=True compares the grids N, N/2, N/4: n_steps must be a "
                f"multiple of 4 and >= 8; got n_steps={n_steps}"
            )
        return n_steps
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive int; got capacity={capacity!r}")
    if n_steps is None:
        return None
    value = checks._concrete(n_steps)
    if value is not None:
        if value.shape != () or not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"n_steps must be an integer scalar; got n_steps={n_steps!r}")
        if not 1 <= int(value) <= capacity:
            raise ValueError(
                f"n_steps must lie in [1, capacity={capacity}]; got n_steps={int(value)}"
            )
        if error_estimate and (int(value) % 4 or int(value) < 8):
            raise ValueError(
                "error_estimate=True compares the grids N, N/2, N/4: n_steps must be a "
                f"multiple of 4 and >= 8; got n_steps={int(value)}"
            )
        return int(value)
    n = jnp.asarray(n_steps, jnp.int32)
    return eqx.error_if(n, (n < 1) | (n > capacity), f"n_steps must lie in [1, {capacity}]")


def _nfev(method, n, dim, corrector_iters, newton_iters):
    if method == "abm":
        return 1 + n * (1 + corrector_iters)
    return n * newton_iters * (1 + dim)  # f and its Jacobian (counted as dim evaluations)


@eqx.filter_jit
def _grid_jit(f, y0, derivs, args, alpha, t0, t1, n, *, capacity, method, block,
              corrector_iters, newton_iters):
    """The grid solution (capacity + 1, dim), compiled once per (f, shapes, capacity)."""
    checks.check_vector_field(f, t0, y0, args)
    y0_flat, unravel = ravel_pytree(y0)
    dtype = y0_flat.dtype
    y0s = jnp.stack([y0_flat] + [ravel_pytree(d)[0].astype(dtype) for d in derivs])
    m = y0s.shape[0]
    lo, hi = (0.0, 1.0) if method == "l1" else (float(m - 1), float(m))
    y0s = eqx.error_if(
        y0s,
        (alpha <= lo) | (alpha > hi),
        f"alpha must lie in ({lo:g}, {hi:g}] for method={method!r} with {m} initial "
        "condition(s)",
    )

    def f_flat(t, y, args):
        return ravel_pytree(f(t, unravel(y), args))[0].astype(dtype)

    return _grid_solve(
        method, f_flat, args, alpha, t0, t1, y0s, n, capacity, block, corrector_iters,
        newton_iters,
    )


def _save(saveat, grid_ts, ts_unclamped, ys, live, t0, t1, dtype):
    from .solve import SaveAt

    if isinstance(saveat, SaveAt):
        if saveat.dense:
            raise ValueError("solve_fractional has no dense output; pass saveat=ts instead")
        if saveat.ts is not None:
            saveat = saveat.ts
        elif saveat.steps:
            saveat = None
        else:
            n = jnp.sum(live) - 1
            return t1[None], ys[n][None]
    if saveat is None:
        return grid_ts, jnp.where(live[:, None], ys, jnp.inf)
    checks.check_save_times(saveat, t0, t1)
    ts = jnp.asarray(saveat, dtype)
    # Linear interpolation between grid points (second order where y is smooth); past
    # step N the grid holds y_N, so the unclamped times keep the abscissae increasing.
    interp = jax.vmap(jnp.interp, in_axes=(None, None, 1), out_axes=1)
    return ts, interp(ts, ts_unclamped, ys)
