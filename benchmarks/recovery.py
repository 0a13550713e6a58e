"""Parameter-recovery benchmark: wall time of each fit, jode backend vs diffrax backend.

The same pipeline (`jode.fit` with each system's recipe, from the article's guess, on
noise-free data) runs once with `backend="jode"` and once with `backend="diffrax"` in this
process. Reported per system and backend:

- the first fit's wall time (compilation included) and the compile estimate (first − second),
- the steady-state fit time (a second fit of new data of the same shape: compiled code reused),
- one loss-and-gradient evaluation (jitted, after compilation, median of repeats),
- the iterations the fit took and its largest relative parameter error,

and the ratios jode/diffrax. Usage:

    python benchmarks/recovery.py [--quick] [--systems lotka_volterra stuart_landau lorenz]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jode import fitting as F  # noqa: E402
from jode_experiments import recovery_systems as R  # noqa: E402


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_system(name, backend, repeats):
    system = R.SYSTEMS[name]
    data = R.make_data(system, None)
    data2 = R.make_data(system, None) * (1 + 1e-9)  # new arrays, same shapes
    loss = R.make_loss(system, data, backend=backend)
    stages, strategy = R.recipe(system)
    guess = jnp.asarray(system.guess)

    t = time.perf_counter()
    res = F.fit(loss, guess, stages=stages, strategy=strategy, progress=False)
    first = time.perf_counter() - t
    loss2 = R.make_loss(system, data2, backend=backend)
    t = time.perf_counter()
    F.fit(loss2, guess, stages=stages, strategy=strategy, progress=False)
    steady = time.perf_counter() - t

    vg = jax.jit(jax.value_and_grad(lambda th, lo: lo(th)))
    t = time.perf_counter()
    jax.block_until_ready(vg(guess, loss))
    vg_compile = time.perf_counter() - t
    vg_time = _median_time(lambda: vg(guess, loss), repeats)
    return dict(
        system=name, backend=backend, fit_first_s=first, fit_steady_s=steady,
        compile_estimate_s=first - steady, iterations=int(len(res.history)),
        max_rel_error=float(np.max(R.relative_errors(system, res.params))),
        loss_grad_s=vg_time, loss_grad_compile_s=vg_compile, status=res.status.name.lower(),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Lotka-Volterra only")
    parser.add_argument("--systems", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=20)
    ns = parser.parse_args()
    systems = ns.systems or (["lotka_volterra"] if ns.quick else list(R.SYSTEMS))
    rows = []
    for name in systems:
        for backend in ("jode", "diffrax"):
            row = bench_system(name, backend, 5 if ns.quick else ns.repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, jax {jax.__version__}, "
          f"{jax.device_count()} CPU device(s)")
    header = ("system", "backend", "fit steady (s)", "fit first (s)", "compile≈ (s)",
              "loss+grad (ms)", "iters", "max rel err")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['system']} | {r['backend']} | {r['fit_steady_s']:.2f} "
              f"| {r['fit_first_s']:.1f} "
              f"| {r['compile_estimate_s']:.1f} | {1e3 * r['loss_grad_s']:.2f} | {r['iterations']} "
              f"| {r['max_rel_error']:.1e} |")
    print("\nratios jode/diffrax (lower is faster for jode):")
    for name in systems:
        j = next(r for r in rows if r["system"] == name and r["backend"] == "jode")
        d = next(r for r in rows if r["system"] == name and r["backend"] == "diffrax")
        print(f"- {name}: fit steady {j['fit_steady_s'] / d['fit_steady_s']:.2f}, "
              f"loss+grad {j['loss_grad_s'] / d['loss_grad_s']:.2f}, "
              f"compile {j['compile_estimate_s'] / max(d['compile_estimate_s'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
