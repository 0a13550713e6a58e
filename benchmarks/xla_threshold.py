"""XLA:CPU's small-while-loop limit vs solve speed: which step loops compile to one kernel,
and how fast they run, for a few limits (`jode/_xla.py` sets 16 MiB).

    python benchmarks/xla_threshold.py [LIMIT_BYTES ...]   # default: 1 4Mi 16Mi 64Mi

Each limit runs in its own process (XLA reads the option once). Lotka-Volterra, Tsit5,
rtol = atol = 1e-6, float64: a single solve with 101 saves, its gradient, and vmapped batches
of 1,000 and 10,000 lanes (t1 only and 101 saves); min of 5 calls. "1" = the loop compiled
to one kernel, "0" = its kernels dispatched one by one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

CASES = ("single_ts", "grad_ts", "b1000_t1", "b1000_ts", "b10k_t1", "b10k_ts")


def measure():
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import jode
    from jode.models import lotka_volterra

    ts = jnp.linspace(0.0, 10.0, 101)
    y0 = jnp.array([1.0, 1.0])
    base = jnp.array([1.5, 1.0, 3.0, 1.0])

    def ps(b):
        rng = np.random.default_rng(0)
        return jnp.asarray(np.asarray(base) * rng.uniform(0.8, 1.2, size=(b, 4)))

    def ys(p, saveat=ts):
        return jode.solve(lotka_volterra, y0, 0.0, 10.0, p, rtol=1e-6, atol=1e-6,
                          saveat=saveat).ys

    def t1(p):
        return ys(p, None)

    cases = {
        "single_ts": (jax.jit(ys), base),
        "grad_ts": (jax.jit(jax.grad(lambda p: jnp.sum(ys(p) ** 2))), base),
        "b1000_t1": (jax.jit(jax.vmap(t1)), ps(1000)),
        "b1000_ts": (jax.jit(jax.vmap(ys)), ps(1000)),
        "b10k_t1": (jax.jit(jax.vmap(t1)), ps(10000)),
        "b10k_ts": (jax.jit(jax.vmap(ys)), ps(10000)),
    }
    out = []
    for name in CASES:
        fn, x = cases[name]
        one_kernel = fn.lower(x).compile().as_text().count("xla_cpu_small_call") > 0
        jax.block_until_ready(fn(x))
        best = float("inf")
        for _ in range(5):
            clock = time.perf_counter()
            jax.block_until_ready(fn(x))
            best = min(best, time.perf_counter() - clock)
        out.append(f"{int(one_kernel)}: {best * 1e3:.3g} ms")
    return out


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print("|".join(measure()))
        return
    limits = sys.argv[1:] or ["1", str(4 << 20), str(16 << 20), str(64 << 20)]
    print("| limit (bytes) | " + " | ".join(CASES) + " |")
    print("|---" * (len(CASES) + 1) + "|")
    for limit in limits:
        env = dict(os.environ, XLA_FLAGS="--xla_backend_extra_options="
                   f"xla_cpu_small_while_loop_byte_threshold={limit}")
        res = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                             capture_output=True, text=True)
        cells = res.stdout.strip().splitlines()[-1].split("|")
        print(f"| {limit} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
