"""Caputo fractional ODEs and the Mittag-Leffler function against closed forms.

Compilations are shared: every solve of one vector field with one `capacity` reuses one
compiled program (N, α and the parameters are traced).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import gammaln
from scipy import special

import jode

CAP = 256  # the capacity shared by the convergence tests (one compilation per field/method)


def relaxation(t, y, lam):
    return -lam * y


def forced(t, y, a):
    """D^α y = Γ(β+1)/Γ(β+1-α) t^(β-α) + (t^β - y): the solution is y = t^β."""
    alpha, beta = a[0], a[1]
    return jnp.exp(gammaln(beta + 1) - gammaln(beta + 1 - alpha)) * t ** (beta - alpha) + (
        t**beta - y
    )


def _ml(z, alpha, beta=1.0):
    # One padded length so that every call reuses one compilation.
    z = np.asarray(z, float)
    pad = np.zeros(128)
    pad[: z.size] = z
    return np.asarray(jode.mittag_leffler(jnp.asarray(pad), alpha, beta))[: z.size]


# --------------------------------------------------------------------------- Mittag-Leffler
def test_mittag_leffler_special_cases():
    z = np.linspace(-10.0, 5.0, 64)
    np.testing.assert_allclose(_ml(z, 1.0), np.exp(z), rtol=1e-12, atol=1e-15)
    x = np.linspace(0.0, 25.0, 64)
    np.testing.assert_allclose(_ml(-(x**2), 2.0), np.cos(x), rtol=0, atol=1e-12)
    x = np.linspace(-10.0, 30.0, 64)  # E_{1/2}(-x) = e^{x²} erfc(x) = erfcx(x)
    np.testing.assert_allclose(_ml(-x, 0.5), special.erfcx(x), rtol=1e-12)
    z = np.linspace(-8.0, 4.0, 63)  # E_{1,2}(z) = (e^z - 1)/z, z ≠ 0
    np.testing.assert_allclose(_ml(z, 1.0, 2.0), np.expm1(z) / z, rtol=1e-12)


@pytest.mark.slow
def test_mittag_leffler_against_series_in_high_precision():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    for alpha, beta in [(0.3, 1.0), (0.75, 1.4), (1.5, 1.0), (1.8, 0.7)]:
        z = np.array([-40.0, -6.0, -1.2, -0.2, 0.3, 2.5])
        ref = [
            float(mpmath.nsum(lambda k: mpmath.mpf(v) ** k / mpmath.gamma(alpha * k + beta),
                              [0, mpmath.inf]))
            for v in z
        ]
        np.testing.assert_allclose(_ml(z, alpha, beta), ref, rtol=1e-11)


def test_mittag_leffler_gradient_in_alpha():
    def e(alpha):
        return jode.mittag_leffler(jnp.full((128,), -2.0), alpha)[0]

    grad = jax.grad(e)(0.6)
    eps = 1e-5
    fd = (e(0.6 + eps) - e(0.6 - eps)) / (2 * eps)
    assert abs(grad - fd) <= 1e-6 * abs(fd)


def test_mittag_leffler_rejects_bad_order():
    with pytest.raises(ValueError, match="alpha"):
        jode.mittag_leffler(jnp.zeros(3), 2.5)
    with pytest.raises(ValueError, match="beta"):
        jode.mittag_leffler(jnp.zeros(3), 0.5, -1.0)


# --------------------------------------------------------------------------- solver accuracy
@pytest.mark.parametrize("method", ["abm", "l1"])
def test_relaxation_matches_mittag_leffler(method):
    alpha, lam, n = 0.6, 1.5, CAP
    sol = jode.solve_fractional(
        relaxation, 1.0, 0.0, 2.0, jnp.asarray(lam), alpha=alpha, n_steps=n, method=method,
        capacity=CAP,
    )
    exact = _ml(-lam * np.asarray(sol.ts)[::4] ** alpha, alpha)  # t1 included
    err = np.abs(np.asarray(sol.ys)[::4] - exact)
    assert sol.status == jode.Status.SUCCESS
    assert int(sol.stats["steps"]) == n
    # ABM: ~1.6e-5 at t1 (order 1+α); L1: O(h) at t1 for this non-smooth solution.
    assert err[-1] < (3e-5 if method == "abm" else 5e-4)
    assert err.max() < (1.5e-3 if method == "abm" else 3e-2)


def _orders(method, alpha, beta, derivatives=(), corrector_iters=1):
    errs = []
    ns = (64, 128, 256)
    for n in ns:
        sol = jode.solve_fractional(
            forced, 0.0, 0.0, 1.0, jnp.asarray([alpha, beta]), alpha=alpha, n_steps=n,
            method=method, capacity=CAP, derivatives=derivatives,
            corrector_iters=corrector_iters,
        )
        ts = np.asarray(sol.ts[: n + 1])
        errs.append(np.max(np.abs(np.asarray(sol.ys[: n + 1]) - ts**beta)))
    errs = np.asarray(errs)
    return np.log2(errs[:-1] / errs[1:])


@pytest.mark.parametrize(
    "method, alpha, beta, derivatives, corrector_iters, theory",
    [
        # D^α y = c t² is smooth but f depends on y: PECE has order 1 + α for α < 1
        # (Diethelm, Ford & Freed 2004, Thm. 3.4) ...
        ("abm", 0.5, 2.5, (), 1, 1.5),
        # ... a second corrector restores order min(2, 1 + 2α) = 2 (Garrappa 2010) ...
        ("abm", 0.5, 2.5, (), 2, 2.0),
        # ... and for 1 < α ≤ 2 (two initial conditions) PECE has order 2.
        ("abm", 1.5, 3.5, (0.0,), 1, 2.0),
        # L1 on a smooth solution: order 2 - α (Lin & Xu 2007).
        ("l1", 0.5, 2.0, (), 1, 1.5),
        ("l1", 0.3, 2.0, (), 1, 1.7),
    ],
)
def test_convergence_order(method, alpha, beta, derivatives, corrector_iters, theory):
    orders = _orders(method, alpha, beta, derivatives, corrector_iters)
    assert abs(orders[-1] - theory) < 0.1, orders


def test_convergence_order_nonsmooth_relaxation():
    """y = E_α(-t^α) ~ 1 - t^α/Γ(1+α) is not smooth: ABM's order at t1 is 1 + α."""
    alpha, errs = 0.6, []
    exact = _ml([-(2.0**alpha)], alpha)[0]
    for n in (64, 128, 256):
        sol = jode.solve_fractional(
            relaxation, 1.0, 0.0, 2.0, jnp.asarray(1.0), alpha=alpha, n_steps=n, capacity=CAP
        )
        errs.append(abs(float(sol.ys[n]) - exact))
    order = math.log2(errs[-2] / errs[-1])
    assert abs(order - (1 + alpha)) < 0.15, errs


def test_second_order_alpha_with_two_initial_conditions():
    """D^1.5 y = -y, y(0) = 1, y'(0) = 0: y = E_1.5(-t^1.5)."""
    sol = jode.solve_fractional(
        relaxation, 1.0, 0.0, 3.0, jnp.asarray(1.0), alpha=1.5, derivatives=(0.0,),
        n_steps=CAP, capacity=CAP,
    )
    exact = _ml(-np.asarray(sol.ts)[::4] ** 1.5, 1.5)
    np.testing.assert_allclose(np.asarray(sol.ys)[::4], exact, atol=2e-5)


def test_alpha_one_is_the_ordinary_solve():
    """With α = 1 the problem is the ODE y' = f and the ABM corrector is the trapezoidal
    rule (order 2); a pytree state: the damped oscillator x'' + 0.3 x' + 2 x = 0."""

    def oscillator(t, y, k):
        return {"x": y["v"], "v": -k * y["x"] - 0.3 * y["v"]}

    y0 = {"x": jnp.asarray(1.0), "v": jnp.asarray(0.0)}
    ts = jnp.linspace(0.0, 5.0, 11)
    gamma, omega = 0.15, math.sqrt(2.0 - 0.15**2)
    decay = np.exp(-gamma * np.asarray(ts))
    ref = jode.Solution(
        ts=ts,
        ys={"x": decay * (np.cos(omega * ts) + gamma / omega * np.sin(omega * ts)),
            "v": -2.0 / omega * decay * np.sin(omega * ts)},
        stats={}, status=jnp.asarray(0), t0=ts[0], t1=ts[-1],
    )
    errs = []
    for n in (120, 240):
        sol = jode.solve_fractional(oscillator, y0, 0.0, 5.0, 2.0, alpha=1.0, n_steps=n,
                                    capacity=CAP, saveat=ts)
        errs.append(max(float(jnp.max(jnp.abs(sol.ys[k] - ref.ys[k]))) for k in ("x", "v")))
    assert errs[1] < 1e-3
    assert abs(math.log2(errs[0] / errs[1]) - 2.0) < 0.1


# --------------------------------------------------------------------------- fast history
def _direct_abm(f, y0, t1, alpha, n):
    """The DFF predictor-corrector with O(N²) sums, written from the paper."""
    h = t1 / n
    t = np.arange(n + 1) * h
    y, fs = np.zeros(n + 1), np.zeros(n + 1)
    y[0], fs[0] = y0, f(0.0, y0)
    for k in range(n):
        j = np.arange(k + 1)
        b = (k + 1 - j) ** alpha - (k - j) ** alpha
        yp = y0 + h**alpha / math.gamma(alpha + 1) * np.sum(b * fs[: k + 1])
        a = np.empty(k + 1)
        a[0] = k ** (alpha + 1) - (k - alpha) * (k + 1) ** alpha
        jj = j[1:]
        a[1:] = (k - jj + 2) ** (alpha + 1) + (k - jj) ** (alpha + 1) - 2 * (k - jj + 1) ** (
            alpha + 1
        )
        y[k + 1] = y0 + h**alpha / math.gamma(alpha + 2) * (f(t[k + 1], yp) + a @ fs[: k + 1])
        fs[k + 1] = f(t[k + 1], y[k + 1])
    return y


def _direct_l1(lam, y0, t1, alpha, n):
    h = t1 / n
    c = 1 / (h**alpha * math.gamma(2 - alpha))
    y = np.zeros(n + 1)
    y[0] = y0
    for m in range(1, n + 1):
        k = np.arange(1, m)
        w = (m - k + 1) ** (1 - alpha) - (m - k) ** (1 - alpha)
        hist = w @ (y[1:m] - y[: m - 1])
        y[m] = c * (y[m - 1] - hist) / (c + lam)  # c (y_m - y_{m-1} + hist) = -λ y_m
    return y


def test_fast_history_equals_direct_sums():
    """Block-recursive FFT sums reproduce the O(N²) sums (N = 50: 13 blocks, 4 levels)."""
    alpha, lam, n = 0.7, 1.3, 50
    sol = jode.solve_fractional(
        relaxation, 1.0, 0.0, 1.0, jnp.asarray(lam), alpha=alpha, n_steps=n, block=4
    )
    direct = _direct_abm(lambda t, y: -lam * y, 1.0, 1.0, alpha, n)
    np.testing.assert_allclose(np.asarray(sol.ys), direct, rtol=0, atol=1e-13)
    sol = jode.solve_fractional(
        relaxation, 1.0, 0.0, 1.0, jnp.asarray(lam), alpha=alpha, n_steps=n, block=4,
        method="l1",
    )
    np.testing.assert_allclose(np.asarray(sol.ys), _direct_l1(lam, 1.0, 1.0, alpha, n),
                               rtol=0, atol=1e-13)


# --------------------------------------------------------------------------- transformations
def test_gradients_match_finite_differences():
    # A small grid (two leaf blocks, one FFT level) keeps the reverse-mode compile short.
    def loss(alpha, lam):
        sol = jode.solve_fractional(relaxation, 1.0, 0.0, 2.0, lam, alpha=alpha, n_steps=64,
                                    block=16)
        return jnp.sum(sol.ys**2) / 64

    grad = jax.grad(loss, argnums=(0, 1))(0.6, 1.5)
    jloss = loss  # the forward solve is compiled once, inside solve_fractional
    eps = 1e-5
    fd_alpha = (jloss(0.6 + eps, 1.5) - jloss(0.6 - eps, 1.5)) / (2 * eps)
    fd_lam = (jloss(0.6, 1.5 + eps) - jloss(0.6, 1.5 - eps)) / (2 * eps)
    assert abs(grad[0] - fd_alpha) <= 1e-6 * abs(fd_alpha)
    assert abs(grad[1] - fd_lam) <= 1e-6 * abs(fd_lam)


def test_vmap_over_order_and_parameter_matches_mittag_leffler():
    alphas = jnp.asarray([0.4, 0.7, 0.9])
    lams = jnp.asarray([0.5, 1.0, 2.0])

    def end(alpha, lam):
        return jode.solve_fractional(relaxation, 1.0, 0.0, 2.0, lam, alpha=alpha,
                                     n_steps=CAP, capacity=CAP).ys[-1]

    out = jax.vmap(end)(alphas, lams)
    for a, lam, y in zip(alphas, lams, out, strict=True):
        exact = _ml([-float(lam) * 2.0 ** float(a)], float(a))[0]
        assert abs(float(y) - exact) < 2e-4


# --------------------------------------------------------------------------- estimates
def test_richardson_estimate_tracks_the_true_error():
    alpha, lam, n = 0.6, 1.5, 128
    sol = jode.solve_fractional(relaxation, 1.0, 0.0, 2.0, jnp.asarray(lam), alpha=alpha,
                                n_steps=n, capacity=CAP, error_estimate=True)
    true = abs(float(sol.ys[n]) - _ml([-lam * 2.0**alpha], alpha)[0])
    est = float(sol.stats["error_estimate"])
    assert 0.5 * true < est < 2.0 * true
    assert abs(float(sol.stats["order_estimate"]) - (1 + alpha)) < 0.3


def test_refinement_meets_the_tolerance():
    alpha, lam = 0.6, 1.5
    sol = jode.solve_fractional(relaxation, 1.0, 0.0, 2.0, jnp.asarray(lam), alpha=alpha,
                                rtol=1e-4, atol=1e-7, capacity=CAP)
    n = int(sol.stats["steps"])
    true = abs(float(sol.ys[n]) - _ml([-lam * 2.0**alpha], alpha)[0])
    assert n in (128, 256)
    assert true < 2 * (1e-7 + 1e-4 * abs(float(sol.ys[n])))
    assert int(sol.stats["nfev"]) > 2 * n  # the coarser grids are counted too


def test_saveat_interpolates_and_blow_up_is_reported():
    ts = jnp.asarray([0.5, 1.0, 1.7])
    sol = jode.solve_fractional(relaxation, 1.0, 0.0, 2.0, jnp.asarray(1.0), alpha=0.8,
                                n_steps=CAP, capacity=CAP, saveat=ts)
    np.testing.assert_allclose(np.asarray(sol.ys), _ml(-np.asarray(ts) ** 0.8, 0.8), atol=1e-4)
    # D^α y = 1000 y grows like E_α(1000 t^α) ~ exp(1000^1.25 t): inf in float64.
    sol = jode.solve_fractional(relaxation, 1.0, 0.0, 2.0, jnp.asarray(-1000.0), alpha=0.8,
                                n_steps=CAP, capacity=CAP, throw=False)
    assert int(sol.status) == jode.Status.NONFINITE
    with pytest.raises(Exception, match="NaN or infinite"):
        jode.solve_fractional(relaxation, 1.0, 0.0, 2.0, jnp.asarray(-1000.0), alpha=0.8,
                              n_steps=CAP, capacity=CAP)


# --------------------------------------------------------------------------- input checks
def test_clear_errors():
    kw = dict(n_steps=8)
    with pytest.raises(ValueError, match="alpha <= 2"):
        jode.solve_fractional(relaxation, 1.0, 0.0, 1.0, 1.0, alpha=2.5, **kw)
    with pytest.raises(ValueError, match="0 < alpha"):
        jode.solve_fractional(relaxation, 1.0, 0.0, 1.0, 1.0, alpha=0.0, **kw)
    with pytest.raises(ValueError, match="method='abm'"):
        jode.solve_fractional(relaxation, 1.0, 0.0, 1.0, 1.0, alpha=1.5, method="l1", **kw)
    with pytest.raises(ValueError, match="ceil\\(alpha\\)=2 initial conditions"):
        jode.solve_fractional(relaxation, 1.0, 0.0, 1.0, 1.0, alpha=1.5, **kw)
    with pytest.raises(ValueError, match="ceil\\(alpha\\)=1 initial conditions"):
        jode.solve_fractional(relaxation, 1.0, 0.0, 1.0, 1.0, alpha=0.5, derivatives=(0.0,),
                              **kw)
    with pytest.raises(ValueError, match="t1 must be > t0"):
        jode.solve_fractional(relaxation, 1.0, 1.0, 0.0, 1.0, alpha=0.5, **kw)
    with pytest.raises(ValueError, match="multiple of 4"):
        jode.solve_fractional(relaxation, 1.0, 0.0, 1.0, 1.0, alpha=0.5, n_steps=10,
                              error_estimate=True)
    with pytest.raises(ValueError, match="under jit"):
        jax.jit(lambda lam: jode.solve_fractional(relaxation, 1.0, 0.0, 1.0, lam,
                                                  alpha=0.5, capacity=64).ys)(1.0)
