"""Trial-solution networks: one problem's full configuration over several seeds.

Runs `jode_experiments.trial.FULL[PROBLEM]` (the configuration of `jode reproduce trial`,
through the same `train_one` call) once per seed, changing only the seed, and prints per seed
the max |ψ_t − ψ_exact| at the training points, on the 10x finer interior grid (the
acceptance figure) and just outside the domain, the final loss and the times; then the median
and spread (min..max) of the fine-grid error and the count of seeds meeting the target.

    python benchmarks/trial_seeds.py --problem ode4 --seeds 0 1 2 3 4 [--json out.json]

Seeds run one after another in one process: the first seed's time includes compilation, the
others reuse the compiled stages ("train" is `TrainReport.time_s`, "wall" includes the
assessment). Results are printed as each seed finishes, so a cut run keeps what it did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax

import jode  # noqa: E402

jode.configure_cpu()  # as `jode reproduce`: before the first JAX computation

jax.config.update("jax_enable_x64", True)

from jode_experiments import trial as exp  # noqa: E402
from jode_experiments import trial_problems  # noqa: E402


def target_of(name: str) -> float:
    return 1e-6 if name.startswith("ode") else 1e-5


def run_seed(name: str, seed: int) -> dict:
    pp = trial_problems.all_problems()[name]
    config = {**exp.FULL[name], "seed": seed}  # only the seed differs from `jode reproduce`
    clock = time.perf_counter()
    _, report, metrics = exp.train_one(pp, config, exp.STEPS_FULL, progress=False)
    wall = time.perf_counter() - clock
    return dict(seed=seed, **metrics, loss=float(report.loss), train_s=float(report.time_s),
                wall_s=wall)


def summarize(name: str, rows: list[dict]) -> dict:
    errors = [r["fine_grid"] for r in rows]
    target = target_of(name)
    return dict(problem=name, target=target, seeds=[r["seed"] for r in rows],
                median=statistics.median(errors), min=min(errors), max=max(errors),
                met=sum(e <= target for e in errors), runs=rows)


def format_table(rows: list[dict]) -> str:
    lines = ["| seed | train pts | 10x finer | outside | loss | train (s) | wall (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['train_grid']:.1e} | {r['fine_grid']:.1e} "
                     f"| {r['outside']:.1e} | {r['loss']:.1e} | {r['train_s']:.0f} "
                     f"| {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="ode4", choices=sorted(exp.FULL))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--json", help="also write the per-seed results and summary here")
    ns = parser.parse_args(argv)
    cfg = {k: (v.__name__ if callable(v) else v) for k, v in exp.FULL[ns.problem].items()}
    print(f"{ns.problem}: FULL config {cfg}, STEPS_FULL {exp.STEPS_FULL}, "
          f"seeds {ns.seeds}; load {os.getloadavg()}", flush=True)
    rows = []
    for seed in ns.seeds:
        r = run_seed(ns.problem, seed)
        rows.append(r)
        print(f"seed {seed}: fine grid {r['fine_grid']:.2e}, training points "
              f"{r['train_grid']:.2e}, outside {r['outside']:.2e}, loss {r['loss']:.1e}, "
              f"train {r['train_s']:.1f} s, wall {r['wall_s']:.1f} s; "
              f"load {os.getloadavg()}", flush=True)
        if ns.json:  # rewritten after each seed: a cut run keeps the finished seeds
            with open(ns.json, "w") as f:
                json.dump(summarize(ns.problem, rows), f, indent=2)
    s = summarize(ns.problem, rows)
    print(format_table(rows))
    print(f"median {s['median']:.2e}, spread {s['min']:.2e}..{s['max']:.2e}, "
          f"{s['met']}/{len(rows)} seeds meet {s['target']:.0e}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
