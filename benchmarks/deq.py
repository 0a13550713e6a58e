"""Forward + backward of the digits DEQ layer: jode.fixed_point vs optimistix and diffrax.

    python benchmarks/deq.py            # batch 256, 30 repeats
    python benchmarks/deq.py --quick    # batch 64, 10 repeats

One jitted `jax.grad` of a loss through z* = tanh(W z* + U x + b) (width 100, ‖W‖₂ = 0.9,
x = the dense embedding of standardized digits, one fixed point per example via vmap),
at equal tolerance rtol = atol (componentwise |f(z) - z| <= atol + rtol |f(z)| for jode
and optimistix; diffrax's steady_state_event uses ‖f(z) - z‖ <= atol + rtol ‖z‖):
- fixed-point iteration: jode `FixedPointIteration` (+ implicit adjoint by iteration) vs
  `optx.fixed_point(optx.FixedPointIteration, adjoint=optx.ImplicitAdjoint())` (its default
  linear solver, and GMRES);
- the ODE route: jode `SteadyState(Tsit5)` (+ implicit adjoint by Anderson) vs
  `diffrax.diffeqsolve(Tsit5, Event(steady_state_event), ImplicitAdjoint())`;
- and jode `Anderson` for reference.
Reports steady-state time per forward+backward (median and min over repeats, after
compilation; ratios use the min, the figure least disturbed by other load), compile time,
mean forward iterations, the gradient's relative difference to jode Newton at 1e-10, and
the ratio jode/peer. Float32, as in training.
"""

from __future__ import annotations

import argparse

import diffrax
import jax

import jode  # noqa: E402

jode.configure_cpu()  # one-kernel XLA:CPU solve loops: before any JAX computation
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import optimistix as optx
from _timing import timed_stats

from jode.fixed_point import (
    Anderson,
    FixedPointIteration,
    ImplicitAdjoint,
    Newton,
    SteadyState,
    fixed_point,
)
from jode.nn.deq import top_singular_value
from jode_experiments.data import load_digits
from jode_experiments.deq import make_deq, standardize

WIDTH = 100


def cell(z, args):
    w, injected = args
    return jnp.tanh(w @ z + injected)


def setup(batch):
    x_train, _, x_test, _ = load_digits()
    x_train, _ = standardize(x_train, x_test)
    model = make_deq(64, WIDTH, 10, jr.PRNGKey(0))
    emb = jax.vmap(lambda x: jax.nn.relu(model.embed(x)))(jnp.asarray(x_train[:batch]))
    c = model.deq.cell
    theta = dict(w=c.weight, u=c.inject, b=c.bias)
    weights = jr.normal(jr.PRNGKey(1), (WIDTH,), jnp.float32)
    return theta, emb, weights, c.bound


def make_loss(solve_one, bound):
    """loss(θ) = mean over the batch of w · z*(x); solve_one(args) -> (z*, steps)."""

    def loss(theta, emb, weights):
        sigma = top_singular_value(theta["w"])
        w = theta["w"] * jnp.minimum(1.0, bound / sigma)
        injected = emb @ theta["u"].T + theta["b"]
        z, steps = jax.vmap(lambda inj: solve_one((w, inj)))(injected)
        return jnp.mean(z @ weights), jnp.mean(steps.astype(jnp.float32))

    return jax.jit(jax.grad(loss, has_aux=True))


def jode_solve(solver, tol, adjoint_solver=None, max_steps=500):
    def solve_one(args):
        sol = fixed_point(cell, jnp.zeros(WIDTH, jnp.float32), args, solver=solver, rtol=tol,
                          atol=tol, max_steps=max_steps, trace=False, throw=False,
                          adjoint=ImplicitAdjoint(solver=adjoint_solver))
        return sol.value, sol.steps

    return solve_one


def optx_solve(tol, linear_solver=None, max_steps=500):
    adjoint = optx.ImplicitAdjoint() if linear_solver is None else optx.ImplicitAdjoint(
        linear_solver=linear_solver
    )

    def solve_one(args):
        sol = optx.fixed_point(cell, optx.FixedPointIteration(rtol=tol, atol=tol),
                               jnp.zeros(WIDTH, jnp.float32), args, max_steps=max_steps,
                               adjoint=adjoint, throw=False)
        return sol.value, sol.stats["num_steps"]

    return solve_one


def diffrax_solve(tol, max_steps=500):
    def solve_one(args):
        term = diffrax.ODETerm(lambda t, z, a: cell(z, a) - z)
        sol = diffrax.diffeqsolve(
            term, diffrax.Tsit5(), 0.0, jnp.inf, None, jnp.zeros(WIDTH, jnp.float32), args,
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
            event=diffrax.Event(diffrax.steady_state_event(rtol=tol, atol=tol)),
            adjoint=diffrax.ImplicitAdjoint(), max_steps=max_steps, throw=False,
        )
        return sol.ys[-1], sol.stats["num_accepted_steps"]

    return solve_one


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    ns = parser.parse_args()
    batch, repeats = (64, 10) if ns.quick else (256, 30)
    theta, emb, weights, bound = setup(batch)
    reference, _ = make_loss(jode_solve(Newton(), 1e-6), bound)(theta, emb, weights)
    ref_flat = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(reference)])
    print(f"DEQ layer forward+backward, width {WIDTH}, batch {batch}, float32, "
          f"backend {jax.default_backend()}")
    print(f"{'tol':>6} {'method':46s} {'median ms':>9} {'min ms':>8} {'compile s':>10} "
          f"{'iters':>6} {'grad rel.diff':>13} {'ratio':>6}")
    for tol in (1e-3, 1e-4):
        cases = {
            "jode FixedPointIteration": jode_solve(FixedPointIteration(), tol),
            "optx FixedPointIteration (default adjoint)": optx_solve(tol),
            "optx FixedPointIteration (GMRES adjoint)": optx_solve(
                tol, lx.GMRES(rtol=tol, atol=tol)
            ),
            "jode SteadyState (Tsit5)": jode_solve(SteadyState(), tol, Anderson()),
            "diffrax Tsit5 + steady_state_event": diffrax_solve(tol),
            "jode Anderson": jode_solve(Anderson(), tol),
        }
        # peer -> the jode row it is compared with
        peers = {"optx FixedPointIteration (default adjoint)": "jode FixedPointIteration",
                 "optx FixedPointIteration (GMRES adjoint)": "jode FixedPointIteration",
                 "diffrax Tsit5 + steady_state_event": "jode SteadyState (Tsit5)"}
        results = {}
        for name, solve_one in cases.items():
            fn = make_loss(solve_one, bound)
            compile_s, steady, best, (grads, iters) = timed_stats(fn, theta, emb, weights,
                                                            repeats=repeats)
            flat = jnp.concatenate([jnp.ravel(v) for v in jax.tree.leaves(grads)])
            rel = float(jnp.linalg.norm(flat - ref_flat) / jnp.linalg.norm(ref_flat))
            results[name] = best
            ratio = f"{results[peers[name]] / best:6.2f}" if name in peers else ""
            print(f"{tol:6.0e} {name:46s} {steady * 1e3:9.2f} {best * 1e3:8.2f} {compile_s:10.2f} "
                  f"{float(iters):6.1f} {rel:13.2e} {ratio:>6}", flush=True)
    print("ratio = jode min time / peer min time (<= 1.0: jode as fast or faster); min over "
          "repeats is the least noise-sensitive figure on a shared machine")


if __name__ == "__main__":
    main()
