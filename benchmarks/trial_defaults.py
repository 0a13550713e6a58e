"""Trial-solution defaults by measurement: success over seeds of network sizes and grids.

For each problem and configuration (hidden units, points per coordinate; `None` is
`jode.trial.train`'s default grid, twice as many points as weights), trains seeds 0..S-1
with `train`'s default steps and counts the seeds whose max |ψ_t − ψ_exact| on a fine grid
(1,001 points, or 101 x 101 on the square) meets the project's targets (1e-6 for ODEs, 1e-5
for the PDE), beside how often `train` warned (plateau / over-fitting), so that the warnings
can be checked against the real error. "warned and failed" counts the failed seeds that a
`TrialWarning` flagged; times are wall seconds per seed (the first seed of a configuration
includes compilation), on whatever load the machine has (printed).

Problems: ∇²ψ = 0 on the unit square, ψ(x, 1) = sin πx and 0 on the other edges (exact
ψ = sin πx sinh πy / sinh π), and the ODEs of Lagaris et al. (1998): Problems 1, 2 and 3
(initial value form), from `jode_experiments.trial_problems`.

    python benchmarks/trial_defaults.py [--seeds 8] [--problems laplace ode1 ...]
        [--configs 10:10 20:None] [--restarts 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import jax

import jode  # noqa: E402

jode.configure_cpu()
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402

from jode import trial  # noqa: E402
from jode_experiments import trial_problems  # noqa: E402

PI = jnp.pi


def laplace():
    edges = trial.Boundary(left=trial.Dirichlet(0.0), right=trial.Dirichlet(0.0),
                           bottom=trial.Dirichlet(0.0),
                           top=trial.Dirichlet(lambda x: jnp.sin(PI * x)))
    problem = trial.Problem(lambda x, p, d1, d2: jnp.trace(d2), edges, ((0.0, 1.0), (0.0, 1.0)))

    def exact(x):
        return jnp.sin(PI * x[..., 0]) * jnp.sinh(PI * x[..., 1]) / jnp.sinh(PI)

    return problem, exact


def problems():
    out = {"laplace": laplace()}
    for name, pp in trial_problems.all_problems().items():
        if name in ("ode1", "ode2", "ode3_ivp"):
            out[name] = (pp.problem, pp.exact)
    return out


def fine_grid(problem):
    if problem.dim == 1:
        return jnp.linspace(problem.lower[0], problem.upper[0], 1001)
    g = jnp.linspace(0.0, 1.0, 101)
    xx, yy = jnp.meshgrid(g, g, indexing="ij")
    return jnp.stack([xx.ravel(), yy.ravel()], -1)


def run_one(problem, exact, hidden, points, seed, restarts):
    clock = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", trial.TrialWarning)
        sol, rep = trial.train(problem, jr.key(seed), hidden=hidden, points=points,
                               restarts=restarts, exact=exact, progress=False)
    xs = fine_grid(problem)
    err = float(jnp.max(jnp.abs(sol.evaluate(xs) - exact(xs))))
    kinds = [("plateau" if "training residual" in str(w.message) else "overfit")
             for w in caught if issubclass(w.category, trial.TrialWarning)]
    return dict(seed=seed, hidden=hidden, points=points, restarts=restarts, fine_error=err,
                validation_error=rep.validation_error, loss=rep.loss,
                train_residual=rep.train_residual, validation_residual=rep.validation_residual,
                start_residual=rep.start_residual, status=int(rep.status), lm_steps=rep.lm_steps,
                n_points=rep.n_points, n_params=rep.n_params, warnings=kinds,
                wall_s=time.perf_counter() - clock)


def target(name):
    return 1e-5 if name == "laplace" else 1e-6


def table(rows):
    lines = ["| problem | hidden | points | restarts | success | warned | warned and failed "
             "| median error | median loss | median time (s) |", "|" + "---|" * 10]
    keys = []
    for r in rows:
        k = (r["problem"], r["hidden"], r["points"], r["restarts"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in rows if (r["problem"], r["hidden"], r["points"], r["restarts"]) == k]
        ok = [r["fine_error"] <= target(k[0]) for r in rs]
        warned = [bool(r["warnings"]) for r in rs]
        both = sum(w and not o for w, o in zip(warned, ok))
        errs = sorted(r["fine_error"] for r in rs)
        losses = sorted(r["loss"] for r in rs)
        times = sorted(r["wall_s"] for r in rs)
        pts = f"{k[2]}" if k[2] is not None else f"None ({rs[0]['n_points']})"
        lines.append(
            f"| {k[0]} | {k[1]} | {pts} | {k[3]} | {sum(ok)}/{len(rs)} | {sum(warned)} "
            f"| {both}/{len(rs) - sum(ok)} | {errs[len(errs) // 2]:.1e} "
            f"| {losses[len(losses) // 2]:.1e} | {times[len(times) // 2]:.1f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--problems", nargs="+", default=["laplace", "ode1", "ode2", "ode3_ivp"])
    ap.add_argument("--configs", nargs="+", default=["10:10", "10:None", "20:None"],
                    help="hidden:points pairs (points None = train's default grid)")
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--out", default=None, help="append rows to this JSON-lines file")
    args = ap.parse_args()
    probs = problems()
    print(f"load average {os.getloadavg()}", flush=True)
    rows = []
    for name in args.problems:
        problem, exact = probs[name]
        for cfg in args.configs:
            h, p = cfg.split(":")
            points = None if p == "None" else int(p)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                row = dict(problem=name, **run_one(problem, exact, int(h), points, seed,
                                                   args.restarts))
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
    print(table(rows))
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
