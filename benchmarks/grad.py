"""Gradients through solves: jode vs diffrax (vs torchdiffeq when installed).

Neural ODE of issue 4: vector field MLP 2→64→64→2 tanh (equinox), t ∈ [0, 1], batch 256,
MSE loss against a fixed target, float32, rtol=1e-3, atol=1e-6. Times one loss+gradient
(after compilation) for

- jode Tsit5 with DirectAdjoint (checkpointed) and BacksolveAdjoint (± seminorm),
- diffrax Tsit5 with RecursiveCheckpointAdjoint and BacksolveAdjoint,
- torchdiffeq dopri5 (it has no Tsit5) with `odeint` and `odeint_adjoint`, CPU torch,

interleaving the cases round-robin so that a noisy machine slows them alike, and reports
median times, compile times, ratios and the backward pass's vector-field evaluations
(counted with a host callback in the vector field; seminorm vs full norm).

    python benchmarks/grad.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import diffrax as dfx
import equinox as eqx
import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation
import jax.numpy as jnp
import numpy as np

RTOL, ATOL = 1e-3, 1e-6
BATCH = 256


def make_problem(seed=0):
    mlp = eqx.nn.MLP(2, 2, 64, 2, activation=jnp.tanh, key=jax.random.PRNGKey(seed))
    y0 = jax.random.normal(jax.random.PRNGKey(seed + 1), (BATCH, 2), jnp.float32)
    target = jnp.stack([y0[:, 1], -y0[:, 0]], axis=1)  # a quarter turn
    return mlp, y0, target


def vector_field(t, y, net):
    return jax.vmap(net)(y)


def jode_loss(params, static, y0, target, adjoint, f=vector_field, t1=1.0):
    net = eqx.combine(params, static)
    sol = jode.solve(f, y0, 0.0, t1, net, rtol=RTOL, atol=ATOL, adjoint=adjoint)
    return jnp.mean((sol.ys[-1] - target) ** 2)


def diffrax_loss(params, static, y0, target, adjoint, f=vector_field, t1=1.0):
    net = eqx.combine(params, static)
    sol = dfx.diffeqsolve(
        dfx.ODETerm(f), dfx.Tsit5(), 0.0, t1, None, y0, args=net,
        stepsize_controller=dfx.PIDController(rtol=RTOL, atol=ATOL), adjoint=adjoint,
        max_steps=4096,
    )
    return jnp.mean((sol.ys[-1] - target) ** 2)


def jax_cases():
    mlp, y0, target = make_problem()
    params, static = eqx.partition(mlp, eqx.is_array)
    cases = {
        "jode Direct": (jode_loss, jode.DirectAdjoint()),
        "diffrax RecursiveCheckpoint": (diffrax_loss, dfx.RecursiveCheckpointAdjoint()),
        "diffrax Backsolve": (diffrax_loss, dfx.BacksolveAdjoint()),
    }
    if hasattr(jode, "BacksolveAdjoint"):
        cases["jode Backsolve"] = (jode_loss, jode.BacksolveAdjoint())
        cases["jode Backsolve seminorm"] = (jode_loss, jode.BacksolveAdjoint(seminorm=True))
    out = {}
    for name, (loss, adj) in cases.items():
        fn = jax.jit(jax.value_and_grad(
            lambda p, loss=loss, adj=adj: loss(p, static, y0, target, adj)))
        t = time.perf_counter()
        jax.block_until_ready(fn(params))
        out[name] = dict(fn=lambda fn=fn: fn(params), compile_s=time.perf_counter() - t)
    return out, (mlp, y0, target)


def torch_cases(problem):
    try:
        import torch
        import torchdiffeq
    except ImportError:
        return {}
    torch.set_num_threads(2)
    mlp, y0, target = problem
    layers = [torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
              torch.nn.Linear(64, 2)]
    lin = [m for m in layers if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():  # the same weights as the equinox MLP
        for m, layer in zip(lin, mlp.layers, strict=True):
            m.weight.copy_(torch.from_numpy(np.asarray(layer.weight)))
            m.bias.copy_(torch.from_numpy(np.asarray(layer.bias)))

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(*layers)

        def forward(self, t, y):
            return self.net(y)

    field = Field()
    y0_t = torch.from_numpy(np.asarray(y0))
    target_t = torch.from_numpy(np.asarray(target))
    ts = torch.tensor([0.0, 1.0])

    def make(odeint):
        def run():
            field.zero_grad()
            ys = odeint(field, y0_t, ts, rtol=RTOL, atol=ATOL, method="dopri5")
            loss = torch.mean((ys[-1] - target_t) ** 2)
            loss.backward()
            return loss

        return run

    out = {}
    for name, fn in [("torchdiffeq odeint", make(torchdiffeq.odeint)),
                     ("torchdiffeq odeint_adjoint", make(torchdiffeq.odeint_adjoint))]:
        fn()
        out[name] = dict(fn=fn, compile_s=0.0, max_rounds=5)  # seconds per call here
    return out


def time_round_robin(cases, rounds):
    times = {name: [] for name in cases}
    for r in range(rounds):
        for name, case in cases.items():
            if r >= case.get("max_rounds", rounds):
                continue
            t = time.perf_counter()
            out = case["fn"]()
            jax.block_until_ready(out) if not hasattr(out, "backward") else None
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def backward_fevals(problem, scale=1.0, t1=1.0):
    """Vector-field evaluations of one loss+gradient, minus those of the loss alone.

    `scale` multiplies every network parameter and `t1` sets the horizon: (3, 10) is the
    longer "w3_T10" variant of the peer baselines (~25 steps instead of ~4), where the
    seminorm has more backward steps to save.
    """
    mlp, y0, target = problem
    params, static = eqx.partition(mlp, eqx.is_array)
    params = jax.tree.map(lambda x: scale * x, params)
    count = [0]

    def bump():
        count[0] += 1

    def counted(t, y, net):
        jax.debug.callback(bump)
        return vector_field(t, y, net)

    rows = {}
    semi = dfx.PIDController(rtol=RTOL, atol=ATOL, norm=dfx.adjoint_rms_seminorm)
    cases = {
        "diffrax Backsolve": (diffrax_loss, dfx.BacksolveAdjoint()),
        "diffrax Backsolve seminorm": (
            diffrax_loss, dfx.BacksolveAdjoint(stepsize_controller=semi)),
    }
    if hasattr(jode, "BacksolveAdjoint"):
        cases["jode Backsolve"] = (jode_loss, jode.BacksolveAdjoint())
        cases["jode Backsolve seminorm"] = (jode_loss, jode.BacksolveAdjoint(seminorm=True))
    for name, (loss, adj) in cases.items():
        def run(p, loss=loss, adj=adj):
            return loss(p, static, y0, target, adj, counted, t1)

        fwd, both = jax.jit(run), jax.jit(jax.grad(run))
        jax.block_until_ready(fwd(params))
        jax.block_until_ready(both(params))
        count[0] = 0
        jax.block_until_ready(fwd(params))
        jax.effects_barrier()
        n_fwd = count[0]
        count[0] = 0
        jax.block_until_ready(both(params))
        jax.effects_barrier()
        rows[name] = dict(forward=n_fwd, backward=count[0] - n_fwd)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    rounds = 10 if ns.quick else 40
    cases, problem = jax_cases()
    cases.update(torch_cases(problem))
    med = time_round_robin(cases, rounds)
    print(f"neural ODE loss+gradient, batch {BATCH}, float32, rtol={RTOL}, atol={ATOL}, "
          f"{rounds} rounds, median")
    print(f"{'case':32s} {'ms':>9s} {'compile s':>10s}")
    for name in cases:
        print(f"{name:32s} {1e3 * med[name]:9.3f} {cases[name]['compile_s']:10.2f}")
    ratio = lambda a, b: med[a] / med[b]  # noqa: E731
    direct = ratio("jode Direct", "diffrax RecursiveCheckpoint")
    print(f"jode Direct / diffrax RecursiveCheckpoint = {direct:.2f}")
    if "jode Backsolve" in med:
        back = ratio("jode Backsolve", "diffrax Backsolve")
        print(f"jode Backsolve / diffrax Backsolve = {back:.2f}")
    torch_names = [n for n in med if n.startswith("torchdiffeq")]
    if torch_names:
        fastest = min(torch_names, key=med.get)
        jode_best = min((n for n in med if n.startswith("jode")), key=med.get)
        speedup = med[fastest] / med[jode_best]
        print(f"fastest torchdiffeq ({fastest}) / {jode_best} = {speedup:.1f}x")
    print("\nvector-field evaluations (one call each of loss, loss+grad; backward = difference)")
    setups = (("spec: t in [0, 1]", 1.0, 1.0), ("w3_T10: 3x weights, t in [0, 10]", 3.0, 10.0))
    for label, scale, t1 in setups:
        print(label)
        rows = backward_fevals(problem, scale, t1)
        for name, row in rows.items():
            print(f"  {name:30s} forward {row['forward']:5d}  backward {row['backward']:5d}")
        if "jode Backsolve seminorm" in rows:
            full = rows["jode Backsolve"]["backward"]
            semi = rows["jode Backsolve seminorm"]["backward"]
            print(f"  seminorm: {100 * (1 - semi / full):.0f}% fewer backward evaluations")


if __name__ == "__main__":
    main()
