"""Single solves: jode vs diffrax vs scipy, side by side in one process.

    python benchmarks/solve.py            # single solves, compile times, jit(grad(solve))
    python benchmarks/solve.py --quick    # fewer repeats

Batched (vmap) solves are in benchmarks/batch.py.

Reports steady-state time per solve (minimum over repeats, after compilation), compile time
(first call minus a steady call), steps, f-evaluations, max abs error against scipy DOP853
at rtol=atol=1e-13, and ratios jode/diffrax. Float64 throughout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
from _timing import interleaved, timed  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

from jode.models import lorenz, lotka_volterra  # noqa: E402

PROBLEMS = {
    "lotka_volterra": (lotka_volterra, np.array([1.0, 1.0]), np.array([1.5, 1.0, 3.0, 1.0])),
    "lorenz": (lorenz, np.array([1.0, 0.0, 0.0]), np.array([10.0, 28.0, 8.0 / 3.0])),
}
TS = np.linspace(0.0, 10.0, 101)


def reference(f, y0, p):
    fj = jax.jit(f)
    sol = solve_ivp(
        lambda t, y: np.asarray(fj(t, y, p)),
        (0.0, 10.0),
        y0,
        method="DOP853",
        t_eval=TS,
        rtol=1e-13,
        atol=1e-13,
    )
    return sol.y.T


def jode_solver(name):
    return {"Tsit5": jode.Tsit5(), "Dopri5": jode.Dopri5()}[name]


def diffrax_solver(name):
    return {"Tsit5": diffrax.Tsit5(), "Dopri5": diffrax.Dopri5()}[name]


def make_jode(f, method, tol):
    ts = jnp.asarray(TS)
    return jax.jit(
        lambda y0, p: jode.solve(
            f, y0, 0.0, 10.0, p, solver=jode_solver(method), rtol=tol, atol=tol, saveat=ts
        )
    )


def make_diffrax(f, method, tol, save_ts=True):
    saveat = diffrax.SaveAt(ts=jnp.asarray(TS)) if save_ts else diffrax.SaveAt(t1=True)
    return jax.jit(
        lambda y0, p: diffrax.diffeqsolve(
            diffrax.ODETerm(f),
            diffrax_solver(method),
            0.0,
            10.0,
            None,
            y0,
            p,
            saveat=saveat,
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
            max_steps=4096,
        )
    )


def single(repeats):
    rows = []
    for name, (f, y0, p) in PROBLEMS.items():
        ref = reference(f, y0, p)
        y0j, pj = jnp.asarray(y0), jnp.asarray(p)
        for tol in (1e-6, 1e-9):
            for method in ("Tsit5", "Dopri5"):
                c_j, t_j, s_j = timed(make_jode(f, method, tol), y0j, pj, repeats=repeats)
                c_d, t_d, s_d = timed(make_diffrax(f, method, tol), y0j, pj, repeats=repeats)
                rows.append(
                    dict(
                        problem=name,
                        tol=tol,
                        method=method,
                        jode_us=t_j * 1e6,
                        diffrax_us=t_d * 1e6,
                        ratio=t_j / t_d,
                        jode_compile_s=c_j,
                        diffrax_compile_s=c_d,
                        compile_ratio=c_j / c_d,
                        jode_steps=int(s_j.stats["steps"]),
                        diffrax_steps=int(s_d.stats["num_steps"]),
                        jode_nfev=int(s_j.stats["nfev"]),
                        jode_err=float(np.max(np.abs(np.asarray(s_j.ys) - ref))),
                        diffrax_err=float(np.max(np.abs(np.asarray(s_d.ys) - ref))),
                    )
                )
            for method, scipy_name in (("RK45", "RK45"), ("DOP853", "DOP853")):
                fj = jax.jit(f)

                def fn(fj=fj, p=p, y0=y0, scipy_name=scipy_name, tol=tol):
                    return solve_ivp(
                        lambda t, y: np.asarray(fj(t, y, p)), (0.0, 10.0), y0,
                        method=scipy_name, t_eval=TS, rtol=tol, atol=tol,
                    )

                fn()
                times = []
                for _ in range(max(3, repeats // 5)):
                    start = time.perf_counter()
                    out = fn()
                    times.append(time.perf_counter() - start)
                rows.append(
                    dict(
                        problem=name,
                        tol=tol,
                        method="scipy " + method,
                        scipy_us=statistics.median(times) * 1e6,
                        nfev=out.nfev,
                        err=float(np.max(np.abs(out.y.T - ref))),
                    )
                )
    return rows


def ys_only(repeats):
    """jode/diffrax with only `ys` returned, called in turn (min of `repeats`).

    Returning the whole solution object adds ~50 us of output handling per call in both
    libraries (XLA:CPU copies each scalar output: stats, t0, t1); inside a larger jitted
    function (a loss, a training step) only the values used are paid for.
    """
    rows = []
    for name, (f, y0, p) in PROBLEMS.items():
        y0j, pj = jnp.asarray(y0), jnp.asarray(p)
        for tol in (1e-6, 1e-9):
            fns = []
            for make in (make_jode, make_diffrax):
                solve = make(f, "Tsit5", tol)
                fns.append(jax.jit(lambda y0, p, solve=solve: solve(y0, p).ys))
            (t_j, t_d), _ = interleaved(fns, (y0j, pj), repeats=repeats)
            rows.append(dict(problem=name, tol=tol, jode_us=t_j * 1e6, diffrax_us=t_d * 1e6))
    return rows


def grad_compile():
    f, y0, p = PROBLEMS["lotka_volterra"]
    y0j, pj = jnp.asarray(y0), jnp.asarray(p)

    def loss_jode(p):
        return jnp.sum(jode.solve(f, y0j, 0.0, 10.0, p, saveat=jnp.asarray(TS)).ys ** 2)

    def loss_dfx(p):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(f),
            diffrax.Tsit5(),
            0.0,
            10.0,
            None,
            y0j,
            p,
            saveat=diffrax.SaveAt(ts=jnp.asarray(TS)),
            stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-6),
        )
        return jnp.sum(sol.ys**2)

    c_j, t_j, g_j = timed(jax.jit(jax.grad(loss_jode)), pj, repeats=5)
    c_d, t_d, g_d = timed(jax.jit(jax.grad(loss_dfx)), pj, repeats=5)
    return dict(
        jode_compile_s=c_j,
        diffrax_compile_s=c_d,
        compile_ratio=c_j / c_d,
        jode_ms=t_j * 1e3,
        diffrax_ms=t_d * 1e3,
        ratio=t_j / t_d,
        grad_rel_diff=float(jnp.linalg.norm(g_j - g_d) / jnp.linalg.norm(g_d)),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    repeats = 5 if ns.quick else 30
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}, devices {jax.devices()}")
    print("\n## Single solves (float64, 101 save points)\n")
    print(
        "| problem | tol | method | jode | diffrax | jode/diffrax | compile jode/diffrax (s) "
        "| steps jode/diffrax | nfev | err jode/diffrax |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in single(repeats):
        if "jode_us" in r:
            print(
                f"| {r['problem']} | {r['tol']:.0e} | {r['method']} | {r['jode_us']:.1f} us | "
                f"{r['diffrax_us']:.1f} us | {r['ratio']:.2f} | {r['jode_compile_s']:.2f}/"
                f"{r['diffrax_compile_s']:.2f} ({r['compile_ratio']:.2f}) | {r['jode_steps']}/"
                f"{r['diffrax_steps']} | {r['jode_nfev']} | "
                f"{r['jode_err']:.1e}/{r['diffrax_err']:.1e} |"
            )
        else:
            print(
                f"| {r['problem']} | {r['tol']:.0e} | {r['method']} | - | - | "
                f"scipy {r['scipy_us'] / 1e3:.2f} ms | - | - | {r['nfev']} | {r['err']:.1e} |"
            )
    print("\n## Single solves returning ys only (Tsit5, 101 saves, interleaved, min)\n")
    print("| problem | tol | jode | diffrax | jode/diffrax |\n|---|---|---|---|---|")
    for r in ys_only(20 * repeats):
        print(
            f"| {r['problem']} | {r['tol']:.0e} | {r['jode_us']:.1f} us | {r['diffrax_us']:.1f} us "
            f"| {r['jode_us'] / r['diffrax_us']:.2f} |"
        )
    g = grad_compile()
    print("\n## jit(grad(solve)), Lotka-Volterra, 101 saves\n")
    print(
        f"compile jode {g['jode_compile_s']:.2f} s vs diffrax {g['diffrax_compile_s']:.2f} s "
        f"(ratio {g['compile_ratio']:.2f}); run jode {g['jode_ms']:.2f} ms vs diffrax "
        f"{g['diffrax_ms']:.2f} ms (ratio {g['ratio']:.2f}); "
        f"gradient rel. diff {g['grad_rel_diff']:.1e}"
    )


if __name__ == "__main__":
    main()
