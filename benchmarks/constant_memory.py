"""Peak memory of constant-step solves and their gradients, by step count.

RK4 with `n_steps` known while tracing (the `lax.scan` path), a linear vector field on a
1,000-dimensional float64 state (dy/dt = -a * y, so every step does the same work), saving
only y(t1). Two cases per step count:

- solve: `jax.jit(solve)`; memory should not grow with the step count;
- eager: the same solve called without `jax.jit` (where a scan that stacks every step's
  state cannot have that output removed by XLA);
- grad: `jax.jit(jax.grad(loss))` with `DirectAdjoint`, loss = sum of y(t1); memory should
  grow like √N (checkpointed segments), not like N.

Each point runs in a fresh subprocess, which reports its own peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) after compiling and running once, and
the value it computed (checked against the closed form exp(-a t1) per component).
To compare with another checkout, run it with that checkout first on PYTHONPATH.

    python benchmarks/constant_memory.py [--quick] [--cases solve,eager,grad]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys

DIM = 1000


def child(case: str, n: int) -> dict:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import jode

    y0 = jnp.ones(DIM)

    def solve(a):
        return jode.solve(
            lambda t, y, a: -a * y, y0, 0.0, 1.0, a, solver=jode.RK4(), n_steps=n,
            max_steps=max(n, 4096),
        ).ys[-1]

    a = jnp.asarray(0.5)
    if case == "solve":
        value = float(jax.jit(solve)(a)[0])
        want = math.exp(-0.5)
    elif case == "eager":
        value = float(solve(a)[0])
        want = math.exp(-0.5)
    else:
        value = float(jax.jit(jax.grad(lambda a: jnp.sum(solve(a))))(a))
        want = -DIM * math.exp(-0.5)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    return dict(case=case, n=n, peak_rss_mb=rss, rel_error=abs(value - want) / abs(want))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="solve only up to 1e4 steps")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "N"))
    parser.add_argument("--cases", default="solve,eager,grad")
    ns = parser.parse_args()
    if ns.child:
        print(json.dumps(child(ns.child[0], int(ns.child[1]))))
        return
    sizes = [1_000, 10_000] if ns.quick else [1_000, 10_000, 100_000]
    print(f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}")
    print("| case | n_steps | peak RSS (MB) | rel. error |")
    print("|---|---|---|---|")
    for case in ns.cases.split(","):
        for n in sizes:
            out = subprocess.run(
                [sys.executable, __file__, "--child", case, str(n)],
                capture_output=True, text=True,
            )
            if out.returncode != 0:
                print(f"| {case} | {n:,} | failed ({out.stderr.strip().splitlines()[-1]}) | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {case} | {n:,} | {r['peak_rss_mb']:.0f} | {r['rel_error']:.1e} |")


if __name__ == "__main__":
    main()
