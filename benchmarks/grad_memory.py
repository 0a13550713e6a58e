"""Peak memory of a gradient through 100, 1,000 and 10,000 fixed RK4 steps.

The neural ODE of `benchmarks/grad.py` (MLP 2→64→64→2 tanh, batch 256, float32), integrated
with constant RK4 steps over [0, 1] with the end time traced (so the step count is not
known while tracing and the solve runs its bounded while loop), loss = MSE at t1. Each
configuration runs in its own subprocess; reported: the process's max RSS after compiling
and after running the gradient, and XLA's temporary buffer size for the compiled gradient.

- jode DirectAdjoint: checkpointed reverse mode, O(√N) stored carries;
- jode BacksolveAdjoint: continuous adjoint, nothing stored between save times;
- jode scan (n_steps known while tracing: lax.scan stores every step) for reference.

    python benchmarks/grad_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def child(method: str, n: int) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import jode

    mlp = eqx.nn.MLP(2, 2, 64, 2, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    y0 = jax.random.normal(jax.random.PRNGKey(1), (256, 2), jnp.float32)
    target = jnp.stack([y0[:, 1], -y0[:, 0]], axis=1)
    params, static = eqx.partition(mlp, eqx.is_array)

    def f(t, y, net):
        return jax.vmap(net)(y)

    def loss(params, t1):
        net = eqx.combine(params, static)
        if method == "scan":
            sol = jode.solve(f, y0, 0.0, 1.0, net, solver=jode.RK4(), n_steps=n)
        else:
            adjoint = jode.DirectAdjoint() if method == "direct" else jode.BacksolveAdjoint()
            sol = jode.solve(f, y0, 0.0, t1, net, solver=jode.RK4(), dt0=1.0 / n,
                             controller=jode.ConstantStep(), adjoint=adjoint, max_steps=n + 8)
        return jnp.mean((sol.ys[-1] - target) ** 2), sol.stats["steps"]

    grad = jax.jit(jax.grad(loss, has_aux=True))
    t1 = jnp.asarray(1.0, jnp.float32)
    compiled = grad.lower(params, t1).compile()
    mem = compiled.memory_analysis()
    rss_compiled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    g, steps = jax.block_until_ready(compiled(params, t1))
    rss_run = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(
        method=method, n=n, steps=int(steps), rss_compiled_mb=rss_compiled, rss_run_mb=rss_run,
        xla_temp_mb=getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20,
        grad_norm=float(jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "N"))
    ns = parser.parse_args()
    if ns.child:
        print(json.dumps(child(ns.child[0], int(ns.child[1]))))
        return
    sizes = [100, 1000] if ns.quick else [100, 1000, 10000]
    rows = []
    for method in ("direct", "backsolve", "scan"):
        for n in sizes:
            if method == "scan" and n > 1000:
                continue  # stores every step's stages: ~0.5 MB per step
            out = subprocess.run([sys.executable, __file__, "--child", method, str(n)],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{method:10s} N={n:6d} steps={r['steps']:6d} max RSS compiled "
                  f"{r['rss_compiled_mb']:7.1f} MB, after gradient {r['rss_run_mb']:7.1f} MB, "
                  f"XLA temp {r['xla_temp_mb']:8.2f} MB, |grad|={r['grad_norm']:.4g}", flush=True)
    for method in ("direct", "backsolve"):
        mine = [r for r in rows if r["method"] == method]
        print(f"{method}: max RSS ratio N={mine[-1]['n']} / N={mine[0]['n']} = "
              f"{mine[-1]['rss_run_mb'] / mine[0]['rss_run_mb']:.2f}; XLA temp ratio "
              f"{mine[-1]['xla_temp_mb'] / max(mine[0]['xla_temp_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
