"""Trial-solution networks: time to train each of the paper's problems to the accuracy target,
jode (JAX, Adam -> L-BFGS -> Levenberg-Marquardt) beside a plain PyTorch implementation of the
same method (the well-known blog reproduction: the trial function x N(x), autograd for ψ',
Adam then torch.optim.LBFGS), both float64 on CPU, in one process.

    python benchmarks/trial.py [--quick]

jode's first call includes compilation; the second call with the same problem reuses the
compiled chunks (module-level `filter_jit`), which is the steady-state training time.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

from jode import trial  # noqa: E402
from jode.experiments import trial as exp  # noqa: E402


def bench_jode(name, steps, config):
    pp = trial.paper.all_problems()[name]
    out = {}
    for label in ("first", "second"):
        start = time.perf_counter()
        sol, report = trial.train(pp.problem, jr.key(0), points=config["points"],
                                  hidden=config["hidden"], progress=False, **steps)
        out[label] = time.perf_counter() - start
    m = trial.paper.assess(pp, sol, config["points"])
    target = 1e-6 if name.startswith("ode") else 1e-5
    return dict(first_s=out["first"], steady_s=out["second"],
                compile_s=out["first"] - out["second"], fine_error=m["fine_grid"],
                target=target, reached=m["fine_grid"] <= target, loss=report.loss,
                iterations=(report.adam_steps, report.lbfgs_steps, report.lm_steps))


def bench_torch(adam_steps, lbfgs_steps, n_points=20, b=2.0, hidden=10, seed=0):
    """Problem 2 on [0, b]: ψ' + ψ/5 = e^(-x/5) cos x, ψ_t = x N(x) (Lagaris eq. 11)."""
    import torch

    torch.manual_seed(seed)
    torch.set_default_dtype(torch.float64)
    net = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.Sigmoid(),
                              torch.nn.Linear(hidden, 1, bias=False))
    x = torch.linspace(0.0, b, n_points).reshape(-1, 1).requires_grad_(True)
    z = 2 * x / b - 1

    def loss_fn():
        psi = x * net(2 * x / b - 1)
        dpsi = torch.autograd.grad(psi.sum(), x, create_graph=True)[0]
        r = dpsi + psi / 5 - torch.exp(-x / 5) * torch.cos(x)
        return (r**2).mean()

    del z
    start = time.perf_counter()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(adam_steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    lbfgs = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=lbfgs_steps,
                              history_size=50, tolerance_grad=0.0, tolerance_change=0.0,
                              line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    lbfgs.step(closure)
    elapsed = time.perf_counter() - start
    xf = torch.linspace(0.0, b, 10 * (n_points - 1) + 1).reshape(-1, 1)
    with torch.no_grad():
        err = (xf * net(2 * xf / b - 1) - torch.exp(-xf / 5) * torch.sin(xf)).abs().max()
    return dict(time_s=elapsed, fine_error=float(err), loss=float(loss_fn()),
                iterations=(adam_steps, lbfgs_steps))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    names = ["ode2"] if ns.quick else ["ode1", "ode2", "ode3_ivp", "ode3_bvp", "pde5", "pde7"]
    steps = exp.STEPS_QUICK if ns.quick else exp.STEPS_FULL
    print(f"jax {jax.__version__}, devices {jax.devices()}, steps {steps}")
    print("| problem | points | hidden | first call (s) | steady (s) | compile (s) | max err "
          "10x grid | target | reached |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        cfg = exp.FULL[name]
        r = bench_jode(name, steps, cfg)
        print(f"| {name} | {cfg['points']} | {cfg['hidden']} | {r['first_s']:.1f} "
              f"| {r['steady_s']:.1f} | {r['compile_s']:.1f} | {r['fine_error']:.1e} "
              f"| {r['target']:.0e} | {r['reached']} |", flush=True)
    try:
        import torch
    except ImportError:
        print("torch not installed: PyTorch comparison skipped")
        return
    torch.set_num_threads(2)
    adam, lbfgs = steps["adam_steps"], steps["lbfgs_steps"] + steps["lm_steps"]
    print(f"\nPyTorch {torch.__version__} (CPU, float64), Problem 2 on [0, 2], 20 points, "
          f"10 units, Adam {adam} + LBFGS(strong Wolfe) {lbfgs} iterations:")
    t = bench_torch(adam, lbfgs)
    print(f"torch: {t['time_s']:.1f} s, max err 10x grid {t['fine_error']:.1e}, "
          f"loss {t['loss']:.1e}")
    print(np.array2string(np.asarray([t["time_s"]])))


if __name__ == "__main__":
    main()
