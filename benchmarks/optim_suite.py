"""Optimizer suite: the gradient-flow configurations beside optax Adam and L-BFGS.

For each problem and each configuration, every start runs until f - f* < 1e-8 (f* the
known global minimum) or until a budget of gradient evaluations is spent. Reported: the
fraction of starts that reach the target (the global minimum) and the median gradient
evaluations of those that do (for Ros2: gradients + Hessian-vector products).

Problems (float64):
- Rosenbrock from (-1.2, 1) (Rosenbrock 1960); f* = 0 at (1, 1).
- Himmelblau, 21 x 21 grid on [-5, 5]^2; four global minima, f* = 0.
- six-hump camel, 21 x 21 grid on [-2, 2] x [-1, 1]; f* = -1.031628453489877.
- Goldstein-Price, 21 x 21 grid on [-2, 2]^2; f* = 3 at (0, -1).
- Beale, 21 x 21 grid on [-4.5, 4.5]^2; f* = 0 at (3, 0.5).
  (Molga & Smutnicki 2005, "Test functions for optimization needs", for the last four.)
- L2-regularised logistic regression on sklearn's breast-cancer data (standardised, with
  intercept, λ = 1e-3): strictly convex, f* from Newton's method to machine precision;
  the zero start and 7 standard-normal starts.
- a 64-16-10 tanh MLP on 500 sklearn digits (cross-entropy), 4 starts: no known f*
  (the infimum 0 is not attained), so its target is a training loss below 1e-3.

Configurations: `jode.optim.gradient_flow(solver, rtol, atol=1e-8, error_scale=scale)`
for solver in {Tsit5, Bosh3, EulerHeun, Ros2}, scale in {"params", "step"}, rtol in
{1e-1, 1e-2, 1e-3}; optax Adam at the best of learning rates {1e-3, 1e-2, 1e-1} per
problem (most starts reaching the target, then fewest evaluations); optax L-BFGS
(`optax.lbfgs()`, zoom line search, each line-search trial counted as one gradient).

    python benchmarks/optim_suite.py            # budget 20000 gradient evaluations
    python benchmarks/optim_suite.py --quick    # budget 4000, 11 x 11 grids
"""

from __future__ import annotations

import argparse
import os
import time

import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU loops: before any JAX computation

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jode import optim  # noqa: E402
from jode_experiments import optim_compare as compare  # noqa: E402
from jode_experiments import testfunctions as tf  # noqa: E402

TARGET = 1e-8


def himmelblau(p):
    x, y = p[0], p[1]
    return (x**2 + y - 11.0) ** 2 + (x + y**2 - 7.0) ** 2


def beale(p):
    x, y = p[0], p[1]
    return (
        (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2
    )


def grid(box, n):
    (x0, x1), (y0, y1) = box
    gx, gy = np.meshgrid(np.linspace(x0, x1, n), np.linspace(y0, y1, n))
    return jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1))


def logistic_problem():
    """Breast-cancer logistic regression: (loss, f*, starts)."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    lam = 1e-3
    xj, yj = jnp.asarray(x), jnp.asarray(y, jnp.float64)

    def loss(w):
        z = xj @ w
        return jnp.mean(jnp.logaddexp(0.0, z) - yj * z) + 0.5 * lam * jnp.sum(w[:-1] ** 2)

    # Newton's method in float64 (the loss is strictly convex): f* to machine precision.
    w = np.zeros(x.shape[1])
    reg = lam * np.eye(x.shape[1])
    reg[-1, -1] = 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        g = x.T @ (p - y) / len(y) + reg @ w
        h = (x.T * (p * (1 - p))) @ x / len(y) + reg
        w = w - np.linalg.solve(h, g)
        if np.linalg.norm(g) < 1e-14:
            break
    f_star = float(loss(jnp.asarray(w)))
    rng = np.random.default_rng(0)
    starts = np.concatenate([np.zeros((1, x.shape[1])), rng.normal(size=(7, x.shape[1]))])
    return loss, f_star, jnp.asarray(starts)


def mlp_problem():
    """A 64-16-10 tanh MLP on 500 sklearn digits (cross-entropy): (loss, 0, starts).

    No known minimum: the training loss decreases towards 0 on separable data, so the
    target is the loss itself below MLP_TARGET; 4 starts (normal weights / sqrt(fan-in)).
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = jnp.asarray(x[:500] / 16.0), jnp.asarray(y[:500])
    sizes = ((64, 16), (16,), (16, 10), (10,))
    cuts = np.cumsum([int(np.prod(s)) for s in sizes])[:-1]

    def loss(w):
        w1, b1, w2, b2 = (a.reshape(s) for a, s in zip(jnp.split(w, cuts), sizes, strict=True))
        logits = jnp.tanh(x @ w1 + b1) @ w2 + b2
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, y[:, None], -1)[:, 0])

    rng = np.random.default_rng(0)
    starts = []
    for _ in range(4):
        parts = [rng.normal(size=s) / np.sqrt(s[0]) if len(s) == 2 else np.zeros(s)
                 for s in sizes]
        starts.append(np.concatenate([a.ravel() for a in parts]))
    return loss, 0.0, jnp.asarray(np.stack(starts))


#: The MLP's target: training loss below this (its infimum 0 is not attained).
MLP_TARGET = 1e-3


def problems(quick):
    n = 11 if quick else 21
    out = {
        "Rosenbrock": (tf.rosenbrock, 0.0, jnp.asarray([[-1.2, 1.0]])),
        "Himmelblau": (himmelblau, 0.0, grid(((-5.0, 5.0), (-5.0, 5.0)), n)),
        "camel": (tf.six_hump_camel, -1.031628453489877, grid(tf.CAMEL.box, n)),
        "Goldstein-Price": (tf.goldstein_price, 3.0, grid(tf.GOLDSTEIN_PRICE.box, n)),
        "Beale": (beale, 0.0, grid(((-4.5, 4.5), (-4.5, 4.5)), n)),
    }
    out["logistic"] = logistic_problem()
    out["digits MLP"] = mlp_problem()
    return out


SOLVERS = {
    "Tsit5": jode.Tsit5,
    "Bosh3": jode.Bosh3,
    "EulerHeun": optim.EulerHeun,
    "Ros2": optim.Ros2,
}
SCALES = ("params", "step")
RTOLS = (1e-1, 1e-2, 1e-3)
LRS = (1e-3, 1e-2, 1e-1)


def make_runner(kind, loss, f_star, budget, solver=None, scale="params", target=TARGET):
    """jit(vmap over starts) of one optimizer to f - f* < target or `budget` evaluations.

    Returns (hit, evaluations at the hit (grads + HVPs), final f - f*) per start; the knob
    (rtol for the flows, the learning rate for Adam) is a traced argument (one compile).
    """

    def one(x0, knob):
        if kind == "flow":
            opt = optim.gradient_flow(solver, knob, 1e-8, error_scale=scale)
        else:
            opt = compare.make_optimizer(kind, knob)
        kind_c = "flow" if kind == "flow" else kind

        def cost(s):
            nf = compare._grad_evals(kind_c, s.opt_state, s.k, s.ls_total)
            return nf + compare._hvps(kind_c, s.opt_state)

        def cond(c):
            s, hit, _ = c
            # The iteration cap guards against a line search that stops counting (a NaN).
            return ~hit & (cost(s) < budget) & (s.k < budget)

        def body(c):
            s, _, _ = c
            spent = cost(s)
            value, _, s_next = compare.take_step(kind_c, opt, loss, s)
            hit = jnp.isfinite(value) & (value - f_star < target)
            s_out = jax.tree.map(lambda a, b: jnp.where(hit, a, b), s, s_next)
            return s_out, hit, spent

        init = (compare.init_step(opt, x0), jnp.zeros((), bool), jnp.zeros((), jnp.int32))
        s, hit, spent = jax.lax.while_loop(cond, body, init)
        return hit, spent, loss(s.params) - f_star

    if kind == "lbfgs":
        # One start after another (lax.map): batched by vmap, the Goldstein-Price grid's
        # 441 zoom line searches did not finish in 10 minutes, while each alone takes ms.
        return jax.jit(lambda xs, knob: jax.lax.map(lambda x: one(x, knob), xs))
    return jax.jit(jax.vmap(one, in_axes=(0, None)))


def summarize(hit, spent):
    hit, spent = np.asarray(hit), np.asarray(spent)
    frac = hit.mean()
    med = float(np.median(spent[hit])) if hit.any() else np.nan
    return frac, med


def fmt(frac, med, n):
    if frac == 0:
        return f"0/{n}"
    return f"{round(frac * n)}/{n}, {med:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="budget 4000, 11 x 11 grids")
    ap.add_argument("--only", default=None, help="comma-separated problem names")
    ap.add_argument("--solvers", default=",".join(SOLVERS), help="comma-separated solvers")
    args = ap.parse_args()
    budget = 4000 if args.quick else 20000
    probs = problems(args.quick)
    if args.only:
        probs = {k: v for k, v in probs.items() if k in args.only.split(",")}
    print(f"load (1, 5, 15 min): {os.getloadavg()}; budget {budget} gradient evaluations; "
          f"target f - f* < {TARGET:g}")
    rows = {}  # config name -> {problem: (frac, median)}
    t_start = time.perf_counter()
    jax.config.update("jax_numpy_dtype_promotion", "standard")  # optax mixes int32 and floats
    for pname, (loss, f_star, starts) in probs.items():
        n = starts.shape[0]
        target = MLP_TARGET if pname == "digits MLP" else TARGET
        for sname in args.solvers.split(","):
            for scale in SCALES:
                run = make_runner("flow", loss, f_star, budget, SOLVERS[sname](), scale, target)
                for rtol in RTOLS:
                    t = time.perf_counter()
                    hit, spent, gap = run(starts, rtol)
                    frac, med = summarize(hit, spent)
                    name = f"{sname} {scale} {rtol:g}"
                    rows.setdefault(name, {})[pname] = (frac, med)
                    print(f"{pname:16s} {name:24s} {fmt(frac, med, n):>14s}  "
                          f"({time.perf_counter() - t:.1f} s)", flush=True)
        best = None
        run = make_runner("adam", loss, f_star, budget, target=target)
        for lr in LRS:
            hit, spent, _ = run(starts, lr)
            frac, med = summarize(hit, spent)
            rows.setdefault(f"Adam lr {lr:g}", {})[pname] = (frac, med)
            key = (-frac, med if np.isfinite(med) else np.inf)
            if best is None or key < best[0]:
                best = (key, lr, frac, med)
        rows.setdefault("Adam (best lr)", {})[pname] = (best[2], best[3])
        print(f"{pname:16s} {'Adam lr ' + format(best[1], 'g'):24s} "
              f"{fmt(best[2], best[3], n):>14s}", flush=True)
        run = make_runner("lbfgs", loss, f_star, budget, target=target)
        hit, spent, _ = run(starts, 0.0)
        frac, med = summarize(hit, spent)
        rows.setdefault("L-BFGS", {})[pname] = (frac, med)
        print(f"{pname:16s} {'L-BFGS':24s} {fmt(frac, med, n):>14s}", flush=True)

    names = list(probs)
    sizes = {k: v[2].shape[0] for k, v in probs.items()}
    print(f"\nTotal {time.perf_counter() - t_start:.0f} s; load {os.getloadavg()}\n")
    print("Starts reaching f - f* < 1e-8 (digits MLP: loss < 1e-3) / starts, median gradient "
          "evaluations of those (Ros2: + Hessian-vector products):\n")
    print("| configuration | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for name, per in rows.items():
        cells = [fmt(*per[p], sizes[p]) if p in per else "" for p in names]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
