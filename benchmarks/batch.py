"""Batched (vmap) adaptive solves: jode vs diffrax, and both against the f-evaluation floor.

    python benchmarks/batch.py            # B = 1, 100, 1,000, 10,000
    python benchmarks/batch.py --quick    # B = 1, 100, 1,000

Lotka-Volterra with parameters base * U(0.8, 1.2) (seed 0), y0 = (1, 1), t in [0, 10],
Tsit5, rtol = atol = 1e-6, float64. For each batch size: `jax.jit(jax.vmap(solve))` over the
parameters for jode and diffrax (101 save times, and t1 only), called in turn in one process
(minimum over repeats), and the ratio. The floor is the cost of one vmapped evaluation of
the vector field inside a compiled loop (amortised over 1,000 iterations) times the
lock-step evaluation count of the solve (every lane pays the slowest lane's steps under
vmap): no adaptive solver can beat it. Also: per-lane results vs the same solve run alone
(they must agree to rounding, with the same step counts), and the shared-step option
(one solve of the stacked (B, 2) state, one step size for the batch, as torchdiffeq does).
"""

from __future__ import annotations

import argparse

import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
from _timing import interleaved, timed  # noqa: E402

from jode.models import lotka_volterra  # noqa: E402

TS = jnp.linspace(0.0, 10.0, 101)
Y0 = jnp.array([1.0, 1.0])
BASE = np.array([1.5, 1.0, 3.0, 1.0])
TOL = 1e-6


def params(b):
    return jnp.asarray(BASE * np.random.default_rng(0).uniform(0.8, 1.2, size=(b, 4)))


def jode_solve(p, saveat=TS):
    return jode.solve(lotka_volterra, Y0, 0.0, 10.0, p, rtol=TOL, atol=TOL, saveat=saveat)


def diffrax_solve(p, save_ts=True):
    saveat = diffrax.SaveAt(ts=TS) if save_ts else diffrax.SaveAt(t1=True)
    return diffrax.diffeqsolve(
        diffrax.ODETerm(lotka_volterra), diffrax.Tsit5(), 0.0, 10.0, None, Y0, p,
        saveat=saveat, stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL),
        max_steps=4096,
    )


def shared_step(ps):
    """One solve of the stacked state: a shared step size for the whole batch."""
    stacked = lambda t, y, p: jax.vmap(lambda y, p: lotka_volterra(t, y, p))(y, p)  # noqa: E731
    y0 = jnp.broadcast_to(Y0, (ps.shape[0], 2))
    return jode.solve(stacked, y0, 0.0, 10.0, ps, rtol=TOL, atol=TOL, saveat=TS)


def floor_per_eval(ps):
    """Seconds of one vmapped f-evaluation inside a compiled loop."""
    fv = jax.vmap(lambda y, p: lotka_volterra(0.0, y, p))
    ys = jnp.broadcast_to(Y0, (ps.shape[0], 2))
    loop = jax.jit(lambda ys: jax.lax.fori_loop(0, 1000, lambda i, y: y + 1e-6 * fv(y, ps), ys))
    _, t, _ = timed(loop, ys, repeats=5)
    return t / 1000


def run_batch(b, repeats):
    ps = params(b)
    fns = {
        "jode": jax.jit(jax.vmap(lambda p: jode_solve(p).ys)),
        "diffrax": jax.jit(jax.vmap(lambda p: diffrax_solve(p).ys)),
        "jode_t1": jax.jit(jax.vmap(lambda p: jode_solve(p, None).ys)),
        "diffrax_t1": jax.jit(jax.vmap(lambda p: diffrax_solve(p, False).ys)),
        "jode_shared": jax.jit(lambda ps: shared_step(ps).ys),
    }
    compile_s = {k: timed(fn, ps, repeats=1)[0] for k, fn in fns.items()}
    best, outs = interleaved(list(fns.values()), (ps,), repeats=repeats)
    t = dict(zip(fns, best, strict=True))
    out = dict(zip(fns, outs, strict=True))
    stats = jax.jit(jax.vmap(lambda p: jode_solve(p).stats))(ps)
    steps = np.asarray(stats["steps"])
    # Per-lane semantics: a lane of the batch is the solve run alone (values and steps).
    alone = jax.jit(jode_solve)
    lanes = np.linspace(0, b - 1, min(b, 20)).astype(int)
    diffs, same_steps = [], True
    for i in lanes:
        sol = alone(ps[i])
        diffs.append(float(jnp.max(jnp.abs(sol.ys - out["jode"][i]))))
        same_steps &= int(sol.stats["steps"]) == int(steps[i])
    lockstep_nfev = 6 * int(steps.max()) + 2
    floor = floor_per_eval(ps) * lockstep_nfev
    shared_err = float(jnp.max(jnp.abs(jnp.swapaxes(out["jode_shared"], 0, 1) - out["diffrax"])))
    return dict(
        B=b, t=t, compile=compile_s, floor=floor, steps_max=int(steps.max()),
        steps_mean=float(steps.mean()), lane_diff=max(diffs), same_steps=same_steps,
        shared_vs_diffrax=shared_err,
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    sizes = [1, 100, 1000] if ns.quick else [1, 100, 1000, 10000]
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}, devices {jax.devices()}")
    print("\n| B | jode | diffrax | jode/diffrax | t1 only: jode / diffrax (ratio) | shared step "
          "(jode) | floor | jode / floor | diffrax / floor | compile jode/diffrax (s) | "
          "steps max/mean | lane vs alone |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for b in sizes:
        r = run_batch(b, repeats=5 if b >= 10000 else 10)
        t, c = r["t"], r["compile"]
        ms = lambda s: f"{s * 1e3:.2f} ms"  # noqa: E731
        print(
            f"| {b} | {ms(t['jode'])} | {ms(t['diffrax'])} | {t['jode'] / t['diffrax']:.2f} | "
            f"{ms(t['jode_t1'])} / {ms(t['diffrax_t1'])} ({t['jode_t1'] / t['diffrax_t1']:.2f}) | "
            f"{ms(t['jode_shared'])} | {ms(r['floor'])} | {t['jode'] / r['floor']:.1f} | "
            f"{t['diffrax'] / r['floor']:.1f} | {c['jode']:.2f}/{c['diffrax']:.2f} | "
            f"{r['steps_max']}/{r['steps_mean']:.1f} | {r['lane_diff']:.1e}"
            f"{'' if r['same_steps'] else ' (steps differ!)'} |",
            flush=True,
        )
    print("\nShared step: max |jode shared - diffrax per-lane| over the last batch "
          f"{r['shared_vs_diffrax']:.1e} (one step size for all lanes, like torchdiffeq).")


if __name__ == "__main__":
    main()
