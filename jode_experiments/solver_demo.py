"""Solver demo: Lorenz and Lotka-Volterra with jode and diffrax side by side."""

from __future__ import annotations

import time
from pathlib import Path

NAME = "solver"


def _reference(f, y0, ts, args):
    """scipy DOP853 at rtol=atol=1e-13, the yardstick for accuracy."""
    import numpy as np
    from scipy.integrate import solve_ivp

    sol = solve_ivp(
        lambda t, y: np.asarray(f(t, y, args)),
        (ts[0], ts[-1]),
        np.asarray(y0),
        method="DOP853",
        t_eval=np.asarray(ts),
        rtol=1e-13,
        atol=1e-13,
    )
    return sol.y.T


def run(out_dir: Path, quick: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import jode
    from jode.models import lorenz, lotka_volterra
    from jode_experiments.plot import pyplot, savefig

    problems = {
        "lotka_volterra": (lotka_volterra, [1.0, 1.0], [1.5, 1.0, 3.0, 1.0]),
        "lorenz": (lorenz, [1.0, 0.0, 0.0], [10.0, 28.0, 8.0 / 3.0]),
    }
    ts = jnp.linspace(0.0, 10.0, 1001 if not quick else 401)
    metrics, curves = {}, {}
    for name, (f, y0, p) in problems.items():
        y0, p = jnp.asarray(y0), jnp.asarray(p)
        ref = _reference(lambda t, y, a: f(t, jnp.asarray(y), a), y0, np.asarray(ts), p)
        for backend in ("jode", "diffrax"):
            run_solve = jax.jit(
                lambda y0, p, backend=backend, f=f: jode.solve(
                    f, y0, 0.0, 10.0, p, saveat=ts, rtol=1e-8, atol=1e-8, backend=backend
                )
            )
            start = time.perf_counter()
            sol = jax.block_until_ready(run_solve(y0, p))
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
            sol = jax.block_until_ready(run_solve(y0, p))
            run_s = time.perf_counter() - start
            err = float(np.max(np.abs(np.asarray(sol.ys) - ref)))
            metrics[f"{name}/{backend}"] = dict(
                steps=int(sol.stats["steps"]),
                nfev=int(sol.stats["nfev"]),
                max_abs_error_vs_dop853=err,
                first_call_s=compile_s,
                run_s=run_s,
                status=int(sol.status),
            )
            if backend == "jode":
                curves[name] = np.asarray(sol.ys)
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    lv = curves["lotka_volterra"]
    axes[0].plot(lv[:, 0], lv[:, 1], lw=1.2)
    axes[0].set(xlabel="prey x", ylabel="predator y", title="Lotka-Volterra phase portrait")
    lz = curves["lorenz"]
    axes[1].plot(lz[:, 0], lz[:, 2], lw=0.6)
    axes[1].set(xlabel="x", ylabel="z", title="Lorenz attractor (x-z)")
    savefig(fig, out_dir / "phase_portraits.png")
    return metrics
