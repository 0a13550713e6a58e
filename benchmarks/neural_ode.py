"""Neural-ODE training step on the spiral task: jode vs diffrax vs torchdiffeq (CPU).

The task is the demo of Chen et al. (2018) (torchdiffeq's `ode_demo.py`): the true spiral
dy/dt = (y³) A, A = [[-0.1, 2], [-2, -0.1]], y0 = (2, 0) on t ∈ [0, 25] (1000 points); a
training step takes 20 windows of 10 consecutive points, solves the network
f(y) = W2 tanh(W1 y³ + b1) + b2 (50 hidden units) from the 20 window starts as one batched
state with Dopri5 (rtol=1e-6, atol=1e-8), and applies Adam to the mean absolute error.
Each library is timed with its direct (discretize-then-optimize) and its backsolve
(continuous adjoint) gradient; the same batches in every library. jode is also timed through
its neural-ODE layer (`jode.nn.NeuralODE`, with and without NFE counting) to show what the
layer adds to `jode.solve`.

    python benchmarks/neural_ode.py [--quick]

Reports compile time (first step) and the median steady-state step time; ratios against
jode's fastest option.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

A = np.array([[-0.1, 2.0], [-2.0, -0.1]])
RTOL, ATOL = 1e-6, 1e-8
BATCH_TIME, BATCH_SIZE, N_POINTS, T_END, HIDDEN = 10, 20, 1000, 25.0, 50


def true_spiral():
    from scipy.integrate import solve_ivp

    ts = np.linspace(0.0, T_END, N_POINTS)
    sol = solve_ivp(
        lambda t, y: (y**3) @ A, (0, T_END), [2.0, 0.0], t_eval=ts, rtol=1e-10, atol=1e-12
    )
    return ts.astype(np.float32), sol.y.T.astype(np.float32)


def batches(n, ys, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = rng.choice(N_POINTS - BATCH_TIME, BATCH_SIZE, replace=False)
        out.append((ys[s], np.stack([ys[s + i] for i in range(BATCH_TIME)])))
    return out


def init_params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.normal(size=(2, HIDDEN)) * 0.1).astype(np.float32),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": (rng.normal(size=(HIDDEN, 2)) * 0.1).astype(np.float32),
        "b2": np.zeros(2, np.float32),
    }


def time_steps(step, data, reps):
    """compile (first call) and median of `reps` steady-state calls, in seconds."""
    t = time.perf_counter()
    step(*data[0])
    compile_s = time.perf_counter() - t
    times = []
    for i in range(reps):
        t = time.perf_counter()
        step(*data[1 + i % (len(data) - 1)])
        times.append(time.perf_counter() - t)
    return compile_s, statistics.median(times)


def jax_steps(ts_batch):
    import diffrax as dfx
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import jode

    def field(t, y, p):
        return jnp.tanh((y**3) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    ts = jnp.asarray(ts_batch)
    opt = optax.adam(1e-3)

    def make(solve_fn):
        @jax.jit
        def step(p, s, y0, target):
            def loss(p):
                return jnp.mean(jnp.abs(solve_fn(p, y0) - target))

            loss_val, g = jax.value_and_grad(loss)(p)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s, loss_val

        params = jax.tree.map(jnp.asarray, init_params())
        state = opt.init(params)
        holder = {"p": params, "s": state}

        def run(y0, target):
            holder["p"], holder["s"], loss_val = step(holder["p"], holder["s"], y0, target)
            jax.block_until_ready(loss_val)

        return run

    def jode_solve(adjoint):
        def solve(p, y0):
            return jode.solve(
                field,
                y0,
                0.0,
                ts[-1],
                p,
                solver=jode.Dopri5(),
                rtol=RTOL,
                atol=ATOL,
                saveat=ts,
                adjoint=adjoint,
            ).ys

        return solve

    def diffrax_solve(adjoint):
        term = dfx.ODETerm(field)

        def solve(p, y0):
            return dfx.diffeqsolve(
                term,
                dfx.Dopri5(),
                0.0,
                ts[-1],
                None,
                y0,
                p,
                saveat=dfx.SaveAt(ts=ts),
                adjoint=adjoint,
                stepsize_controller=dfx.PIDController(rtol=RTOL, atol=ATOL),
                max_steps=4096,
            ).ys

        return solve

    def layer_solve(adjoint, count_nfe=False):
        # The same solve through the neural-ODE layer (jode.nn.NeuralODE), to show what the
        # layer adds on top of jode.solve (with count_nfe: a host callback per evaluation).
        from jode.nn import NeuralODE

        def solve(p, y0):
            node = NeuralODE(
                field,
                t1=t_end,
                solver=jode.Dopri5(),
                rtol=RTOL,
                atol=ATOL,
                adjoint=adjoint,
                count_nfe=count_nfe,
            )
            return node.solve(y0, ts, args=p).ys

        return solve

    t_end = float(ts_batch[-1])
    del eqx
    return {
        "jode DirectAdjoint": make(jode_solve(jode.DirectAdjoint())),
        "jode.nn NeuralODE DirectAdjoint": make(layer_solve(jode.DirectAdjoint())),
        "jode.nn NeuralODE count_nfe=True": make(layer_solve(jode.DirectAdjoint(), True)),
        "jode BacksolveAdjoint": make(jode_solve(jode.BacksolveAdjoint())),
        "diffrax RecursiveCheckpointAdjoint": make(diffrax_solve(dfx.RecursiveCheckpointAdjoint())),
        "diffrax BacksolveAdjoint": make(diffrax_solve(dfx.BacksolveAdjoint())),
    }


def torch_steps(ts_batch):
    try:
        import torch
        from torchdiffeq import odeint, odeint_adjoint
    except ImportError:
        return {}
    torch.set_num_threads(1)

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            p = init_params()
            self.w1 = torch.nn.Parameter(torch.tensor(p["w1"]))
            self.b1 = torch.nn.Parameter(torch.tensor(p["b1"]))
            self.w2 = torch.nn.Parameter(torch.tensor(p["w2"]))
            self.b2 = torch.nn.Parameter(torch.tensor(p["b2"]))

        def forward(self, t, y):
            return torch.tanh((y**3) @ self.w1 + self.b1) @ self.w2 + self.b2

    ts = torch.tensor(ts_batch)

    def make(integrate):
        func = Field()
        opt = torch.optim.Adam(func.parameters(), lr=1e-3)

        def run(y0, target):
            opt.zero_grad()
            pred = integrate(func, torch.tensor(y0), ts, rtol=RTOL, atol=ATOL, method="dopri5")
            loss = torch.mean(torch.abs(pred - torch.tensor(target)))
            loss.backward()
            opt.step()

        return run

    return {"torchdiffeq odeint": make(odeint), "torchdiffeq odeint_adjoint": make(odeint_adjoint)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    reps = 5 if ns.quick else 40
    ts, ys = true_spiral()
    data = batches(reps + 1, ys)
    ts_batch = ts[:BATCH_TIME]
    rows = {}
    for name, run in {**jax_steps(ts_batch), **torch_steps(ts_batch)}.items():
        try:
            rows[name] = time_steps(run, data, reps)
        except Exception as exc:  # report and go on with the other options
            print(f"{name:38s} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        print(
            f"{name:38s} compile {rows[name][0]:7.2f} s   step {1e3 * rows[name][1]:8.2f} ms",
            flush=True,
        )
    # The NFE-counting row measures a diagnostic's cost; it does not compete.
    jode_best = min(v[1] for k, v in rows.items() if k.startswith("jode") and "count" not in k)
    print("\nratios (library's fastest option / jode's fastest):")
    for lib in ("diffrax", "torchdiffeq"):
        opts = [v[1] for k, v in rows.items() if k.startswith(lib)]
        if opts:
            print(f"  {lib:12s} {min(opts) / jode_best:6.2f}x")


if __name__ == "__main__":
    main()
