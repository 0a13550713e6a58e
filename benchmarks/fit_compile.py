"""Compile of a Lotka-Volterra fit, split into tracing, lowering and XLA compilation.

The fit a user writes (README, notebooks/02_parameter_recovery.ipynb): `TrajectoryLoss` on
noisy Lotka-Volterra data (`jode_experiments.recovery_systems`, seed 0, default adaptive
solve), float64, and either

- `--what fit`: `jode.fit(loss, guess)` with the default stages (Adam, then L-BFGS with the
  zoom line search): every program the first call compiles (each stage's init and chunk,
  the uncertainty's Jacobian), each split as `jax.jit(f).trace(...)`, `.lower()`,
  `.compile()` (CPU seconds of this process: `time.process_time`, all threads, so roughly
  what an idle core would take);
- `--what sweep`: `jode.sweeping.fit_sweep(loss, starts, (LBFGS(steps=50),))`'s one-lane
  program (64 starts per call, inner solves capped as `fit_sweep` caps them).

Then, in the same process, the first real call (wall and CPU seconds: after the split it
reuses the programs compiled there, so `--no-split` measures the first call's own
compilation), `--repeats` repeat calls, and the result (final loss, parameters, standard
errors: for comparing before/after a change). Run each configuration in a fresh process:

    python benchmarks/fit_compile.py --what fit [--no-configure-cpu] [--json out.json]
    python benchmarks/fit_compile.py --what fit --no-split --repeats 20
    python benchmarks/fit_compile.py --what sweep [--no-configure-cpu] [--linesearch backtracking]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

_ARGS = None
if __name__ == "__main__":
    _p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _p.add_argument("--what", choices=("fit", "sweep"), default="fit")
    _p.add_argument("--no-configure-cpu", action="store_true")
    _p.add_argument("--no-split", action="store_true", help="only the first/repeat calls")
    _p.add_argument("--linesearch", default="zoom")
    _p.add_argument("--repeats", type=int, default=5, help="repeat calls timed (min, median)")
    _p.add_argument("--json", default=None)
    _ARGS = _p.parse_args()

import jax  # noqa: E402

import jode  # noqa: E402

if _ARGS is None or not _ARGS.no_configure_cpu:
    jode.configure_cpu()
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jode import fitting as F  # noqa: E402
from jode import sweeping as S  # noqa: E402
from jode_experiments import recovery_systems as R  # noqa: E402


def _cpu():
    return time.process_time()


def split(name, fn, *args):
    """(trace, lower, compile) CPU seconds of `fn` (a jitted function) at `args`."""
    t0 = _cpu()
    traced = fn.trace(*args)
    t1 = _cpu()
    lowered = traced.lower()
    t2 = _cpu()
    compiled = lowered.compile()
    t3 = _cpu()
    hlo = lowered.as_text()
    row = dict(program=name, trace=t1 - t0, lower=t2 - t1, xla=t3 - t2, total=t3 - t0,
               stablehlo_lines=hlo.count("\n"), while_loops=hlo.count("stablehlo.while"))
    print(f"  {name:28s} trace {row['trace']:6.2f}  lower {row['lower']:6.2f}  "
          f"xla {row['xla']:6.2f}  total {row['total']:6.2f} CPU-s  "
          f"({row['stablehlo_lines']} StableHLO lines, {row['while_loops']} whiles)",
          flush=True)
    return row, compiled


def problem():
    system = R.SYSTEMS["lotka_volterra"]
    data = R.make_data(system, 0)
    loss = R.make_loss(system, data)
    return system, loss


def fit_programs(loss, guess, stages, chunk=50):
    """Every program a first `jode.fit(loss, guess)` compiles, split."""
    from jode.fitting import uncertainty as U
    from jode.fitting._fit import _compiled

    aux = jnp.asarray(jnp.inf, jnp.float64)
    rows = []
    params = loss.init(guess)
    for stage in stages:
        init_fn, chunk_fn = _compiled(stage, chunk, False)
        row, init_c = split(f"{type(stage).__name__} init", init_fn, stage, loss, params, aux)
        rows.append(row)
        state = init_c(stage, loss, params, aux)
        row, _ = split(f"{type(stage).__name__} chunk", chunk_fn, stage, loss, state, aux)
        rows.append(row)
    for name, fn in (("residuals", U._residuals), ("Jacobian (uncertainty)", U.jacobian)):
        row, _ = split(name, fn, loss, guess)
        rows.append(row)
    return rows


def sweep_programs(loss, starts, stages):
    capped, budget = S.with_step_budget(loss, jnp.asarray(starts))
    stage = stages[0]
    program = S._sequential_program(type(stage), jax.tree.structure(stage))
    block = S._BLOCK
    part = S._pad(np.asarray(starts)[:block], block)
    live = np.arange(block) < min(block, len(starts))
    params = jax.vmap(capped.init)(jnp.asarray(part))
    aux = jnp.asarray(jnp.inf, jnp.float64)
    row, _ = split(f"one-lane {type(stage).__name__} (budget {budget})", program, stage,
                   capped, params, live, aux)
    return [row]


def main():
    args = _ARGS
    configured = jode.cpu_configured()
    print(f"{args.what}: configure_cpu {'on' if configured else 'off'}; load "
          f"{os.getloadavg()}; {os.cpu_count()} cores; jax {jax.__version__}", flush=True)
    system, loss = problem()
    guess = jnp.asarray(system.guess)
    out = dict(what=args.what, configure_cpu=configured, load_before=os.getloadavg())
    if args.what == "fit":
        stages = F.default_stages()
        if args.linesearch != "zoom":
            stages = (stages[0], F.LBFGS(steps=500, linesearch=args.linesearch))
        if not args.no_split:
            out["programs"] = fit_programs(loss, guess, stages)

        def call():
            r = F.fit(loss, guess, stages=stages, progress=False)
            return r.loss, np.asarray(r.params), np.asarray(r.stderr)
    else:
        truth = np.asarray(system.truth)
        starts = truth * np.random.default_rng(0).uniform(0.5, 1.5, (8, truth.size))
        stages = (F.LBFGS(steps=50, linesearch=args.linesearch),)
        if not args.no_split:
            out["programs"] = sweep_programs(loss, starts, stages)

        def call():
            p, losses = S.fit_sweep(loss, starts, stages)
            return np.asarray(losses), np.asarray(p), None

    if "programs" in out:
        tot = {k: sum(r[k] for r in out["programs"]) for k in ("trace", "lower", "xla", "total")}
        out["split_total"] = tot
        print(f"  {'all programs':28s} trace {tot['trace']:6.2f}  lower {tot['lower']:6.2f}  "
              f"xla {tot['xla']:6.2f}  total {tot['total']:6.2f} CPU-s", flush=True)
    w, c = time.perf_counter(), _cpu()
    value, params, stderr = call()
    out["first_call_wall"], out["first_call_cpu"] = time.perf_counter() - w, _cpu() - c
    reps = []
    for _ in range(args.repeats):
        w = time.perf_counter()
        call()
        reps.append(time.perf_counter() - w)
    out["repeat_wall"] = min(reps)
    out["repeat_wall_median"] = float(np.median(reps))
    np.set_printoptions(precision=17)
    out["loss"] = np.asarray(value).tolist()
    out["params"] = params.tolist()
    out["stderr"] = None if stderr is None else stderr.tolist()
    out["load_after"] = os.getloadavg()
    print(f"  first call {out['first_call_wall']:.2f} s wall, {out['first_call_cpu']:.2f} "
          f"CPU-s; repeat {out['repeat_wall']:.3f} s (min of {args.repeats}, "
          f"median {out['repeat_wall_median']:.3f} s)")
    print(f"  loss {out['loss']!r}\n  params {out['params']!r}")
    print(f"  load after {out['load_after']}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
