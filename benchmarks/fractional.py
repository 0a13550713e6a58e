"""Benchmark: Caputo fractional relaxation D^α y = -λ y with jode.solve_fractional.

No JAX peer solves fractional ODEs, so jode's ABM (block-recursive FFT history sums,
O(N log² N)) is measured beside the same Diethelm-Ford-Freed method with direct O(N²)
history sums, written two ways: a jitted lax.scan (one dot product per step) and a NumPy
loop. All three give the same numbers (checked); accuracy is measured against the
Mittag-Leffler closed form E_α(-λ t^α).

    python benchmarks/fractional.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ALPHA, LAM, T1 = 0.6, 1.5, 5.0


def relaxation(t, y, lam):
    return -lam * y


def jode_solver(n):
    @jax.jit
    def run(alpha, lam):
        sol = jode.solve_fractional(relaxation, jnp.ones(()), 0.0, T1, lam, alpha=alpha,
                                    n_steps=n)
        return sol.ys

    return run


def direct_jax(n):
    """DFF PECE with O(N²) direct sums: step k dots the full history with the weights."""

    @jax.jit
    def run(alpha, lam):
        h = T1 / n
        lags = jnp.arange(n + 2, dtype=jnp.float64)
        pw = lambda x, p: jnp.where(x > 0, jnp.where(x > 0, x, 1.0) ** p, 0.0)  # noqa: E731
        b = pw(lags, alpha) - pw(lags - 1, alpha)
        w = pw(lags + 1, alpha + 1) - 2 * pw(lags, alpha + 1) + pw(lags - 1, alpha + 1)
        cp = h**alpha / jnp.exp(jax.scipy.special.gammaln(alpha + 1))
        cc = h**alpha / jnp.exp(jax.scipy.special.gammaln(alpha + 2))
        j = jnp.arange(n + 1)

        def step(carry, k):  # computes y_{k+1}
            fs = carry
            lag = k + 1 - j
            live = j <= k
            pred = 1.0 + cp * jnp.sum(jnp.where(live, b[jnp.clip(lag, 0)] * fs, 0.0))
            a = jnp.where(j == 0, pw(k, alpha + 1) - (k - alpha) * pw(k + 1.0, alpha),
                          w[jnp.clip(lag, 0)])
            y = 1.0 + cc * (-lam * pred + jnp.sum(jnp.where(live, a * fs, 0.0)))
            return fs.at[k + 1].set(-lam * y), y

        fs0 = jnp.zeros(n + 1).at[0].set(-lam)
        _, ys = jax.lax.scan(step, fs0, jnp.arange(n))
        return jnp.concatenate([jnp.ones(1), ys])

    return run


def direct_numpy(n, alpha=ALPHA, lam=LAM):
    h = T1 / n
    y, fs = np.ones(n + 1), np.zeros(n + 1)
    fs[0] = -lam
    cp, cc = h**alpha / math.gamma(alpha + 1), h**alpha / math.gamma(alpha + 2)
    for k in range(n):
        j = np.arange(k + 1)
        b = (k + 1 - j) ** alpha - (k - j) ** alpha
        a = (k - j + 2.0) ** (alpha + 1) + np.abs(k - j + 0.0) ** (alpha + 1) - 2 * (
            k - j + 1.0
        ) ** (alpha + 1)
        a[0] = k ** (alpha + 1) - (k - alpha) * (k + 1) ** alpha
        pred = 1.0 + cp * b @ fs[: k + 1]
        y[k + 1] = 1.0 + cc * (-lam * pred + a @ fs[: k + 1])
        fs[k + 1] = -lam * y[k + 1]
    return y


def timed(fn, *args, repeats=5):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return out, first - best, best


def main(quick: bool):
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    alpha, lam = jnp.asarray(ALPHA), jnp.asarray(LAM)
    rows = []
    for n in sizes:
        ts = np.linspace(0.0, T1, n + 1)
        exact = np.asarray(jode.mittag_leffler(jnp.asarray(-LAM * ts**ALPHA), ALPHA))
        ys, compile_s, run_s = timed(jode_solver(n), alpha, lam)
        err = float(np.max(np.abs(np.asarray(ys)[n // 10 :] - exact[n // 10 :])))
        row = dict(n=n, jode_run=run_s, jode_compile=compile_s, err_t_ge_0p5=err,
                   err_t1=abs(float(ys[-1]) - exact[-1]))
        if n <= 10_000:
            yd, c2, r2 = timed(direct_jax(n), alpha, lam, repeats=2)
            row.update(direct_jax_run=r2, direct_jax_compile=c2,
                       same=float(np.max(np.abs(np.asarray(yd) - np.asarray(ys)))))
        if n <= (2_000 if quick else 10_000):
            t = time.perf_counter()
            yn = direct_numpy(n)
            row.update(numpy_run=time.perf_counter() - t,
                       same_numpy=float(np.max(np.abs(yn - np.asarray(ys)))))
        rows.append(row)
        print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()},
              flush=True)
    # Gradient with respect to α and λ (reverse mode through the whole solve).
    n = 10_000
    loss = jax.jit(jax.grad(lambda a, lam: jnp.sum(
        jode.solve_fractional(relaxation, jnp.ones(()), 0.0, T1, lam, alpha=a,
                              n_steps=n).ys) / n, argnums=(0, 1)))
    _, gc, gr = timed(loss, alpha, lam, repeats=3)
    print(f"grad (alpha, lambda) at N={n}: run {gr:.3g} s, compile {gc:.3g} s")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
