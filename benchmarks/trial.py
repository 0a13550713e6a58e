"""Trial-solution networks: time to train each of the paper's problems to its accuracy target
(max |ψ_t − ψ_exact| on a 10x finer interior grid ≤ 1e-6 for ODEs, ≤ 1e-5 for PDEs), jode
(JAX, Adam -> L-BFGS -> Levenberg-Marquardt) beside a plain PyTorch implementation of the same
method (the well-known blog reproduction: the trial function x N(x), autograd for ψ', Adam then
torch.optim.LBFGS), both float64 on CPU, in one process.

    python benchmarks/trial.py [--quick] [--problems ode1 pde7 ...]

Time to target: Adam and L-BFGS run as configured (`jode_experiments.trial.STEPS_*`), then
Levenberg-Marquardt runs in chunks of `--chunk` steps and the error is checked after each chunk
(the checks are not timed); the clock stops at the first chunk that meets the target. Each
problem is trained twice: the first ("cold") includes compilation, the second ("warm") reuses
the compiled chunks (module-level `filter_jit`) and is the steady-state training time.
"""

from __future__ import annotations

import argparse
import time

import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation

jax.config.update("jax_enable_x64", True)
import jax.random as jr  # noqa: E402

from jode import trial  # noqa: E402
from jode.trial.train import LM_DAMPING  # noqa: E402
from jode_experiments import trial as exp  # noqa: E402
from jode_experiments import trial_problems  # noqa: E402


def target_of(name: str) -> float:
    return 1e-6 if name.startswith("ode") else 1e-5


def time_to_target(name, config, steps, chunk=250, seed=0):
    """Train `name` until the fine-grid error meets its target; returns timings and counts."""
    pp = trial_problems.all_problems()[name]
    target = target_of(name)
    seed = config.get("seed", seed)
    steps = {**steps, **config.get("steps", {})}  # per-problem steps (Problem 4)
    kw = dict(points=config["points"], weight=config.get("weight"), progress=False)
    clock = time.perf_counter()
    sol, rep = trial.train(pp.problem, jr.key(seed), hidden=config["hidden"],
                           adam_steps=steps["adam_steps"], lbfgs_steps=steps["lbfgs_steps"],
                           lm_steps=0, **kw)
    elapsed = time.perf_counter() - clock
    err = trial_problems.assess(pp, sol, config["points"])["fine_grid"]
    lm, damping = 0, LM_DAMPING
    while err > target and lm < steps["lm_steps"]:
        clock = time.perf_counter()
        # Each chunk continues the stage where the last stopped (network and damping λ).
        sol, rep = trial.train(pp.problem, jr.key(seed), network=sol.network, adam_steps=0,
                               lbfgs_steps=0, lm_steps=chunk, tol=0.0, lm_damping=damping,
                               **kw)
        damping = rep.lm_damping
        elapsed += time.perf_counter() - clock
        lm += rep.lm_steps
        if rep.lm_steps < chunk:  # stalled: no progress in a whole chunk
            err = trial_problems.assess(pp, sol, config["points"])["fine_grid"]
            break
        err = trial_problems.assess(pp, sol, config["points"])["fine_grid"]
    return dict(time_s=elapsed, fine_error=err, target=target, reached=err <= target,
                lm_steps=lm, adam_steps=steps["adam_steps"], lbfgs_steps=steps["lbfgs_steps"])


def bench_jode(name, config, steps, chunk):
    cold = time_to_target(name, config, steps, chunk)
    warm = time_to_target(name, config, steps, chunk)
    return dict(warm, cold_s=cold["time_s"], warm_s=warm["time_s"])


def bench_torch(adam_steps, lbfgs_steps, n_points=20, b=2.0, hidden=10, seed=0, chunk=50,
                target=1e-6, threads=2):
    """Problem 2 on [0, b]: ψ' + ψ/5 = e^(-x/5) cos x, ψ_t = x N(x) (Lagaris eq. 11), the
    blog's PyTorch method: Adam, then LBFGS (strong Wolfe) in chunks of `chunk` iterations
    until the fine-grid error meets `target` (checks not timed)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dtype = torch.float64
    net = torch.nn.Sequential(torch.nn.Linear(1, hidden, dtype=dtype), torch.nn.Sigmoid(),
                              torch.nn.Linear(hidden, 1, bias=False, dtype=dtype))
    x = torch.linspace(0.0, b, n_points, dtype=dtype).reshape(-1, 1).requires_grad_(True)

    def loss_fn():
        psi = x * net(2 * x / b - 1)
        dpsi = torch.autograd.grad(psi.sum(), x, create_graph=True)[0]
        r = dpsi + psi / 5 - torch.exp(-x / 5) * torch.cos(x)
        return (r**2).mean()

    xf = torch.linspace(0.0, b, 10 * (n_points - 1) + 1, dtype=dtype).reshape(-1, 1)

    def error():
        with torch.no_grad():
            psi = xf * net(2 * xf / b - 1)
            return float((psi - torch.exp(-xf / 5) * torch.sin(xf)).abs().max())

    clock = time.perf_counter()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(adam_steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - clock
    lbfgs = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=chunk, history_size=50,
                              tolerance_grad=0.0, tolerance_change=0.0,
                              line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    done, err = 0, error()
    while err > target and done < lbfgs_steps:
        clock = time.perf_counter()
        lbfgs.step(closure)
        elapsed += time.perf_counter() - clock
        done += chunk
        err = error()
    return dict(time_s=elapsed, fine_error=err, reached=err <= target,
                loss=float(loss_fn().detach()), adam_steps=adam_steps, lbfgs_iterations=done)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--problems", nargs="*", default=None)
    parser.add_argument("--chunk", type=int, default=250, help="LM steps between checks")
    ns = parser.parse_args()
    names = ns.problems or (["ode2"] if ns.quick else list(exp.FULL))
    steps = exp.STEPS_QUICK if ns.quick else exp.STEPS_FULL
    print(f"jax {jax.__version__}, devices {jax.devices()}, steps {steps}")
    print("| problem | points | hidden | Adam | L-BFGS | LM to target | cold (s) | warm (s) "
          "| max err 10x grid | target | reached |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        cfg = exp.FULL[name]
        r = bench_jode(name, cfg, steps, ns.chunk)
        print(f"| {name} | {cfg['points']} | {cfg['hidden']} | {r['adam_steps']} "
              f"| {r['lbfgs_steps']} | {r['lm_steps']} | {r['cold_s']:.1f} | {r['warm_s']:.1f} "
              f"| {r['fine_error']:.1e} | {r['target']:.0e} | {r['reached']} |", flush=True)
    try:
        import torch
    except ImportError:
        print("torch not installed (pip install torch==2.13.0): PyTorch comparison skipped")
        return
    adam = steps["adam_steps"]
    cap = 5000 if ns.quick else 20000
    print(f"\nPyTorch {torch.__version__} (CPU, 2 threads, float64), Problem 2 on [0, 2], "
          f"20 points, 10 units, Adam {adam} then LBFGS (strong Wolfe) up to {cap} iterations:")
    t = bench_torch(adam, cap)
    print(f"torch: {t['time_s']:.1f} s, LBFGS iterations {t['lbfgs_iterations']}, max err 10x "
          f"grid {t['fine_error']:.1e}, reached 1e-6: {t['reached']}, loss {t['loss']:.1e}")


if __name__ == "__main__":
    main()
