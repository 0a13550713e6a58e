"""Multi-start fits: one batched sweep with retiring lanes vs a Python loop of single fits.

Problem: Lotka-Volterra (`jode_experiments.recovery_systems`), noisy data (seed 0), θ = (x0,
y0, α, β, δ, γ), starts uniform in 0.5-1.5× the truth (NumPy seed 0), float64, L-BFGS for
`--steps` iterations from every start. Both sides fit the same starts to the same data:

- batched: `jode.sweeping.fit_sweep(loss, starts, stages)` (a pool of lanes that retire as
  their fit ends, inner solves capped at 4× the starts' solve steps);
- looped: `jode.fit(loss, start, stages=..., progress=False, uncertainty=False)` for each
  start in a Python loop (compiled once, at the first start);
- jitted loop: `jax.jit` of `jode.fitting.run_stages(loss, stages, θ0)` (one start, no
  checks, no progress) called for each start in a Python loop: the least a loop can cost.

Reported per batch size: the first call (compilation included: at the first size; later
sizes reuse the programs) and the repeat (minimum of
`--repeats` calls, the two sides interleaved), the fraction of starts reaching the optimum
(final loss within 1e-6 relative of the least loss any start found on either side), the
largest relative difference between the two sides' estimates on starts both bring to the
optimum, and the batched run's lock-step iterations per lane. Usage:

    python benchmarks/sweep.py [--quick] [--sizes 8 64 1000] [--steps 50] [--json out.json]

`--quick`: 8 and 64 starts, one repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from jode import fitting as F  # noqa: E402
from jode import sweeping as S  # noqa: E402
from jode_experiments import recovery_systems as R  # noqa: E402


def problem(n_starts):
    system = R.SYSTEMS["lotka_volterra"]
    data = R.make_data(system, 0)
    truth = np.asarray(system.truth)
    starts = truth * np.random.default_rng(0).uniform(0.5, 1.5, (n_starts, truth.size))
    return R.make_loss(system, data), starts


def batched(loss, starts, stages):
    t = time.perf_counter()
    out = S.fit_sweep(loss, starts, stages)
    return time.perf_counter() - t, out


def looped(loss, starts, stages):
    t = time.perf_counter()
    params, losses = [], []
    for s in starts:
        r = F.fit(loss, s, stages=stages, progress=False, uncertainty=False)
        params.append(np.asarray(r.params))
        losses.append(r.loss)
    return time.perf_counter() - t, (np.array(params), np.array(losses))


_JITTED = {}


def jitted_loop(loss, starts, stages):
    key = stages
    if key not in _JITTED:
        _JITTED[key] = jax.jit(lambda th, lo: F.run_stages(lo, stages, th))
    one = _JITTED[key]
    t = time.perf_counter()
    out = [one(s, loss) for s in starts]
    jax.block_until_ready(out)
    return time.perf_counter() - t, (np.array([np.asarray(o[0]) for o in out]),
                                     np.array([float(o[1]) for o in out]))


def bench(n_starts, steps, repeats):
    loss, starts = problem(n_starts)
    stages = (F.LBFGS(steps=steps),)
    first_b, out_b = batched(loss, starts, stages)
    first_l, _ = looped(loss, starts[:1], stages)  # the compile, then the loop below
    first_j, _ = jitted_loop(loss, starts[:1], stages)
    rep_b, rep_l, rep_j = [], [], []
    for _ in range(repeats):
        t, out_b = batched(loss, starts, stages)
        rep_b.append(t)
        t, out_l = looped(loss, starts, stages)
        rep_l.append(t)
        t, _ = jitted_loop(loss, starts, stages)
        rep_j.append(t)
    (pb, lb), (pl, ll) = tuple(out_b), out_l
    best = min(np.nanmin(lb), np.nanmin(ll))
    reach_b = lb <= best * (1 + 1e-6)
    reach_l = ll <= best * (1 + 1e-6)
    both = reach_b & reach_l
    rel = np.abs(pb - pl) / np.abs(pl)
    return dict(
        starts=n_starts, steps=steps,
        batched_first_s=first_b, batched_repeat_s=min(rep_b),
        looped_first_s=first_l, looped_repeat_s=min(rep_l),
        jitted_loop_first_s=first_j, jitted_loop_repeat_s=min(rep_j),
        batched_reached=float(reach_b.mean()), looped_reached=float(reach_l.mean()),
        max_rel_diff_both_reached=float(rel[both].max()) if both.any() else None,
        lockstep_iterations_per_lane=out_b.stats["lockstep_iterations_per_lane"],
        mean_iterations=float(out_b.iterations.mean()),
        width=out_b.stats["width"], step_budget=out_b.stats["step_budget"],
        calls=out_b.stats["calls"],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 and 64 starts, one repeat")
    parser.add_argument("--sizes", nargs="*", type=int, default=None)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sizes = args.sizes or ([8, 64] if args.quick else [8, 64, 1000])
    repeats = args.repeats or (1 if args.quick else 2)
    rows = []
    print(f"load {os.getloadavg()}, {os.cpu_count()} cores, {platform.processor()}")
    for n in sizes:
        row = bench(n, args.steps, repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| starts | batched first | batched repeat | jode.fit loop first | jode.fit loop "
          "repeat | jitted loop first | jitted loop repeat | reached batched / looped "
          "| lock-step it./lane | mean it. |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['starts']} | {r['batched_first_s']:.1f} s | {r['batched_repeat_s']:.2f} s"
              f" | {r['looped_first_s']:.1f} s | {r['looped_repeat_s']:.2f} s"
              f" | {r['jitted_loop_first_s']:.1f} s | {r['jitted_loop_repeat_s']:.2f} s"
              f" | {r['batched_reached']:.3f} / {r['looped_reached']:.3f}"
              f" | {r['lockstep_iterations_per_lane']:.1f} | {r['mean_iterations']:.1f} |")
    print(f"load after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
