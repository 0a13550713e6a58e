"""Trial-solution networks (Lagaris, Likas & Fotiadis 1998) on the paper's ODEs and PDEs.

Trains every problem of `trial_problems` (one hidden layer of sigmoid units, float64, Adam
then L-BFGS then Levenberg-Marquardt), then writes a table of max |ψ_t − ψ_exact| on the
training points, on a 10x finer interior grid and just outside the domain, next to Euler and
RK4 (`jode.solve`, fixed steps, the same number of points) for the initial value problems
and the five-point finite-difference solve for the Dirichlet Poisson problems; deviation
plots ψ_t − ψ_exact vs x (the paper's Figs. 1-4 style) and PDE error heat maps.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from jode_experiments import trial_baselines, trial_problems

#: Small sequential steps, launch-bound on a GPU: `jode reproduce --device auto` runs
#: this target on the host CPU.
DEVICE = "cpu"

NAME = "trial"
#: Acceptance flags the quick configuration cannot meet, and why.
QUICK_CANNOT_MEET = {
    "beats_euler_rk4_on_ivps": "quick trains 300 Adam and 1,000 Levenberg-Marquardt steps and "
    "no L-BFGS (full: 2,000, 500 L-BFGS and 5,000), too few to beat RK4 on the same points",
}

# Per problem: collocation points per coordinate and hidden units (one hidden layer of sigmoid
# units, one output per component). The paper used 10 points (10x10 on the square) and 10
# units; with 10 points a 10-unit network (30 weights) is under-determined and its error
# between the points is ~1e-6..1e-4, so the ODEs train on 20 points (40 on [0, 5], where
# 20,000 Levenberg-Marquardt steps bring the error 10x below RK4's on the same points).
# Problem 4 is ill-conditioned: the linearized system amplifies a residual r(s) into an error
# at x = 3 of up to ||Φ(3, s)|| r(s), with ||Φ(3, 0)|| ≈ 9e3 (the fundamental matrix of
# J = [[2 sin x, 1], [1 + x², sin x]]), so 1e-6 needs residuals ≲ 4e-10 over [0, 3]; measured
# with 10-20 units, the residual stalls at 1e-6..1e-5 (errors 1e-4..4e-2). It needs many more
# points than weights (with points ≈ weights/2 the fit interpolates and errors reach 0.7).
# Weighting its residual by e^(−3x) (≈ the decay of ||Φ(3, x)||, `decay3`) balances the
# amplified errors; with 30 units, 150 points and a long Levenberg-Marquardt stage it meets
# 1e-6. Its seed (1) was fixed before it was run over seeds; over seeds 0-4 of this
# configuration (`python benchmarks/trial_seeds.py --problem ode4`) the errors are
# 5.1e-7, 5.6e-7, 2.6e-7, 1.9e-6, 4.4e-7: median 5.1e-7 (the target is met for the median),
# spread 2.6e-7..1.9e-6, seed 3 misses 1e-6 by 1.9x (`ODE4_OVER_SEEDS`). A config may set
# "seed", "weight" (w(x), see `jode.trial.train`) and "steps" (overriding STEPS_FULL /
# STEPS_QUICK). Measured figures: benchmarks/results/trial.md.


def decay3(x):
    """Residual weight e^(−3x) for Problem 4 on [0, 3]: ||Φ(3, x)||, the norm of the
    fundamental matrix of its linearized system from x to 3, decays roughly like e^(−3x)
    (benchmarks/results/trial.md), so each weighted residual w G moves the error at x = 3
    by a comparable amount wherever it lies in [0, 3]."""
    return jnp.exp(-3.0 * x)


FULL = {
    "ode1": dict(points=20, hidden=10),
    "ode2": dict(points=20, hidden=10),
    "ode2_0_5": dict(points=40, hidden=10, steps=dict(lm_steps=20000)),
    "ode3_ivp": dict(points=20, hidden=10),
    "ode3_bvp": dict(points=20, hidden=10),
    "ode4": dict(points=150, hidden=30, seed=1, weight=decay3,
                 steps=dict(adam_steps=1000, lbfgs_steps=300, lm_steps=10000)),
    "pde5": dict(points=10, hidden=10),
    # Problem 6 oscillates up to 18 rad per unit in x: 24x24 points and 50 units. The
    # Levenberg-Marquardt stage does the fitting (started after 10 Adam and 10 L-BFGS steps
    # it is at 2.8e-5 after 300 steps, 6.2e-6 after 5,000).
    "pde6": dict(points=24, hidden=50, steps=dict(adam_steps=10, lbfgs_steps=10, lm_steps=5000)),
    "pde7": dict(points=12, hidden=20),
    "pde8": dict(points=12, hidden=20),
}
#: FULL["ode4"] with only the seed changed, run by benchmarks/trial_seeds.py (5 Dec 2026, the
#: 2-core box, load 1.4-6); recorded, not recomputed by `jode reproduce trial`, which
#: reports it beside its own seed's result. Max |ψ_t − ψ_exact| on the 10x finer grid.
ODE4_OVER_SEEDS = dict(
    seeds=[0, 1, 2, 3, 4],
    fine_grid=[5.09e-7, 5.62e-7, 2.57e-7, 1.88e-6, 4.45e-7],
    median_fine_grid=5.09e-7,
    min_fine_grid=2.57e-7,
    max_fine_grid=1.88e-6,
    seeds_le_1e_6=4,
    source="benchmarks/results/trial.md, 'Problem 4 over seeds' "
    "(python benchmarks/trial_seeds.py --problem ode4 --seeds 0 1 2 3 4)",
)
QUICK = {"ode2": dict(points=20, hidden=10), "pde7": dict(points=10, hidden=10)}
STEPS_FULL = dict(adam_steps=2000, lbfgs_steps=500, lm_steps=5000)
#: Quick mode leaves L-BFGS out: its compilation (a line search around the network's
#: residuals) costs more than the rest of a quick problem, and Levenberg-Marquardt after
#: Adam does the fitting.
STEPS_QUICK = dict(adam_steps=300, lbfgs_steps=0, lm_steps=1000)


def baseline_errors(pp, n: int) -> dict:
    """Euler/RK4 (initial value problems) or finite differences (Dirichlet Poisson) on the
    same n points per coordinate; empty for the others."""

    if pp.vector_field is not None:
        return trial_baselines.euler_rk4_errors(pp, n)
    if pp.name in ("pde5", "pde6"):
        source = _poisson_source(pp)
        xs, psi = trial_baselines.poisson_fd(source, pp.problem.conditions, pp.problem.lower,
                                             pp.problem.upper, n)
        return {"fd5": float(jnp.max(jnp.abs(psi - pp.exact(xs))))}
    return {}


def _poisson_source(pp):
    # ∇²ψ = f: the residual is trace(H) − f, so f = −G(x, 0, 0, 0).
    res = pp.problem.residual

    def source(x):
        z = jnp.zeros((), x.dtype)
        return -res(x, z, jnp.zeros(2, x.dtype), jnp.zeros((2, 2), x.dtype))

    return source


def train_one(pp, config: dict, steps: dict, seed: int = 0, progress: bool = True):
    """Train one problem with `config` (points, hidden; optional seed, weight and steps,
    which override the arguments); returns (solution, report, metrics of `paper.assess`)."""
    from jode import trial

    seed = config.get("seed", seed)
    steps = {**steps, **config.get("steps", {})}
    sol, report = trial.train(pp.problem, jr.key(seed), points=config["points"],
                              hidden=config["hidden"], weight=config.get("weight"),
                              progress=progress, **steps)
    metrics = trial_problems.assess(pp, sol, config["points"])
    return sol, report, metrics


def _plot_odes(results, out_dir: Path, quick: bool = False):
    from jode_experiments.plot import pyplot, savefig

    plt = pyplot()
    names = [n for n, r in results.items() if r["problem"].problem.dim == 1]
    if not names:
        return None
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.4 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        r = results[name]
        pp, sol, n = r["problem"], r["solution"], r["config"]["points"]
        a, b = pp.problem.lower[0], pp.problem.upper[0]
        xf = jnp.linspace(a, b + 0.1 * (b - a), 12 * n)
        dev = np.asarray(sol.evaluate(xf) - pp.exact(xf))
        xt = jnp.linspace(a, b, n)
        dt = np.asarray(sol.evaluate(xt) - pp.exact(xt))
        if dev.ndim == 2:
            for k in range(dev.shape[1]):
                ax.plot(xf, dev[:, k], label=f"ψ{k + 1}: trial − exact")
        else:
            ax.plot(xf, dev, lw=1, label="trial − exact")
            ax.plot(xt, dt, "o", ms=3, label="at the training points")
        ax.axvline(b, color="k", lw=0.5, ls=":", label="end of the training domain")
        ax.legend(fontsize=6)
        ax.set_title(pp.title, fontsize=8)
        ax.set_ylabel("ψ_t − ψ_exact", fontsize=8)
        ax.set_xlabel("x (dimensionless)", fontsize=8)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.tight_layout()
    return savefig(fig, out_dir / "ode_deviation.png", quick)


def _plot_pdes(results, out_dir: Path, quick: bool = False):
    from jode_experiments.plot import pyplot, savefig

    plt = pyplot()
    names = [n for n, r in results.items() if r["problem"].problem.dim == 2]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    g = jnp.linspace(0.0, 1.0, 101)
    xx, yy = jnp.meshgrid(g, g, indexing="ij")
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
    for ax, name in zip(axes[0], names):
        r = results[name]
        err = np.asarray(r["solution"].evaluate(pts) - r["problem"].exact(pts)).reshape(101, 101)
        im = ax.imshow(err.T, origin="lower", extent=(0, 1, 0, 1), cmap="RdBu_r")
        fig.colorbar(im, ax=ax, format="%.0e", shrink=0.8, label="ψ_t − ψ_exact")
        ax.set_title(f"{r['problem'].title}\nψ_t − ψ_exact", fontsize=7)
        ax.set_xlabel("x (dimensionless)")
        ax.set_ylabel("y (dimensionless)")
    fig.tight_layout()
    return savefig(fig, out_dir / "pde_error.png", quick)


def format_table(rows: dict) -> str:
    head = ("| problem | points | hidden | train pts | 10x finer | outside | conditions "
            "| Euler | RK4 | FD | loss | time (s) |")
    lines = [head, "|" + "---|" * 12]
    for name, m in rows.items():
        b = m["baseline"]

        def f(v):
            return "–" if v is None else f"{v:.1e}"

        lines.append(
            f"| {name} | {m['points']} | {m['hidden']} | {f(m['train_grid'])} "
            f"| {f(m['fine_grid'])} | {f(m['outside'])} | {f(m['conditions'])} "
            f"| {f(b.get('euler'))} | {f(b.get('rk4'))} | {f(b.get('fd5'))} "
            f"| {m['loss']:.1e} | {m['time_s']:.1f} |"
        )
    return "\n".join(lines)


def run(out_dir: Path, quick: bool) -> dict:
    from tqdm.auto import tqdm


    jax.config.update("jax_enable_x64", True)
    out_dir = Path(out_dir)
    configs = QUICK if quick else FULL
    steps = STEPS_QUICK if quick else STEPS_FULL
    problems = trial_problems.all_problems()
    results, rows = {}, {}
    for name in tqdm(list(configs), desc="problems"):
        pp, cfg = problems[name], configs[name]
        sol, report, metrics = train_one(pp, cfg, steps)
        base = baseline_errors(pp, cfg["points"])
        results[name] = dict(problem=pp, solution=sol, config=cfg)
        rows[name] = dict(metrics, baseline=base, points=cfg["points"], hidden=cfg["hidden"],
                          seed=cfg.get("seed", 0), loss=report.loss, time_s=report.time_s,
                          report=report.as_dict())
    _plot_odes(results, out_dir, quick)
    _plot_pdes(results, out_dir, quick)
    table = format_table(rows)
    (out_dir / "table.md").write_text(table + "\n")
    print(table)
    ode_ok = all(r["fine_grid"] <= 1e-6 for n, r in rows.items() if n.startswith("ode"))
    pde_ok = all(r["fine_grid"] <= 1e-5 for n, r in rows.items() if n.startswith("pde"))
    beats = all(r["fine_grid"] < min(r["baseline"]["euler"], r["baseline"]["rk4"])
                for r in rows.values() if "rk4" in r["baseline"])
    acceptance = {"odes_fine_le_1e-6": ode_ok, "pdes_fine_le_1e-5": pde_ok,
                  "beats_euler_rk4_on_ivps": beats}
    if "ode4" in rows and configs["ode4"] == FULL["ode4"]:
        # This run is one seed; the acceptance of Problem 4 is the median over 5 seeds of the
        # same configuration, recorded (not recomputed here) beside it.
        rows["ode4"]["over_seeds"] = dict(
            ODE4_OVER_SEEDS, note=f"this run is seed {rows['ode4']['seed']}; over_seeds is "
            "a recorded run of the same configuration with seeds 0-4")
        acceptance["ode4_median_over_seeds_le_1e-6"] = (
            ODE4_OVER_SEEDS["median_fine_grid"] <= 1e-6)
    return {"problems": rows, "acceptance": acceptance, "steps": steps}
