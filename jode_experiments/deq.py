"""Equilibria: cos z = z by every fixed-point solver, a DEQ learning y = 2x, a DEQ on digits.

Reproduces the deep-equilibrium demonstrations (Bai, Kolter & Koltun 2019; the DiffEqFlux
deep equilibrium article): the Dottie number from z0 = -1 with a cobweb plot; a DEQ
regressing y = 2x; flatten -> dense -> DEQ -> dense on scikit-learn's digits (MNIST too when
its IDX files are found), against an explicit network with the same parameter count, with
Anderson and the steady-state ODE route; and the peak memory of a training step as the
forward iteration budget grows.
"""

from __future__ import annotations

import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from tqdm.auto import tqdm

from jode import RESULTS
from jode._training import Progress, run_chunks
from jode_experiments.progress import Stages

NAME = "deq"
#: Acceptance flags the quick configuration cannot meet, and why.
QUICK_CANNOT_MEET = {
    "digits_target_met": "quick trains the DEQ for 3 epochs (full: 20); accuracy >= 0.97 "
    "is not expected",
}

DOTTIE = 0.739085133215160641655312087673873404


def _solvers():
    from jode.fixed_point import Anderson, Broyden, FixedPointIteration, Newton, SteadyState

    return {
        "iteration": FixedPointIteration(),
        "damped (0.7)": FixedPointIteration(damping=0.7),
        "anderson": Anderson(),
        "broyden": Broyden(),
        "newton-gmres": Newton(),
        "steady-state ODE": SteadyState(),
    }


def cos_table() -> dict:
    """cos z = z from z0 = -1 to 1e-13 with every solver: steps, f evaluations, error."""
    from jode.fixed_point import fixed_point

    rows = {}
    for name, solver in _solvers().items():
        sol = fixed_point(
            lambda z, a: jnp.cos(z), jnp.asarray(-1.0, jnp.float64), None, solver=solver,
            rtol=0.0, atol=1e-13, max_steps=1000, throw=False,
        )
        steps = int(sol.steps)
        rows[name] = dict(
            status=int(sol.status), steps=steps, nfev=int(sol.nfev),
            error=abs(float(sol.value) - DOTTIE),
            residuals=np.asarray(sol.residuals[: steps + 1]).tolist(),
        )
    return rows


def _cobweb(ax, n=12):
    zs = [-1.0]
    for _ in range(n):
        zs.append(float(np.cos(zs[-1])))
    grid = np.linspace(-1.1, 1.1, 200)
    ax.plot(grid, np.cos(grid), label="cos z")
    ax.plot(grid, grid, "k--", lw=0.8, label="z")
    path_x, path_y = [zs[0]], [0.0]
    for a, b in zip(zs[:-1], zs[1:]):
        path_x += [a, b]
        path_y += [b, b]
    ax.plot(path_x, path_y, color="C3", lw=1, label="iterates from z0 = -1")
    ax.plot([DOTTIE], [DOTTIE], "ko")
    ax.set(xlabel="z", ylabel="f(z)", title="cobweb of z <- cos z")
    ax.legend(fontsize=8)


# --- training helpers (shared with the benchmark and the notebook) ---------------------


def standardize(x_train, x_test):
    """Per-feature standardization with training statistics (+0.1 keeps blank pixels finite)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 0.1
    return (x_train - mu) / sd, (x_test - mu) / sd


def make_deq(in_size, width, n_out, key, solver=None, rtol=1e-3, atol=1e-3, max_steps=40,
             adjoint=None):
    from jode.fixed_point import Anderson, ImplicitAdjoint
    from jode.nn import DEQClassifier

    return DEQClassifier(
        in_size, width, n_out, key=key, dtype=jnp.float32,
        solver=Anderson() if solver is None else solver,
        adjoint=ImplicitAdjoint() if adjoint is None else adjoint,
        rtol=rtol, atol=atol, max_steps=max_steps,
    )


class ExplicitMLP(eqx.Module):
    """dense -> tanh dense -> dense: the explicit baseline."""

    layers: list

    def __init__(self, in_size, width, n_out, key):
        k1, k2, k3 = jr.split(key, 3)
        self.layers = [
            eqx.nn.Linear(in_size, width, key=k1, dtype=jnp.float32),
            eqx.nn.Linear(width, width, key=k2, dtype=jnp.float32),
            eqx.nn.Linear(width, n_out, key=k3, dtype=jnp.float32),
        ]

    def __call__(self, x):
        h = jax.nn.relu(self.layers[0](x))
        h = jnp.tanh(self.layers[1](h))
        return self.layers[2](h), None


def n_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


def matching_width(deq_params: int, in_size: int, n_out: int) -> int:
    """Width H of ExplicitMLP with H² + (in + n_out + 2) H + n_out ≈ deq_params."""
    b = in_size + n_out + 2
    return int(round((-b + np.sqrt(b * b + 4 * (deq_params - n_out))) / 2))


def make_step(static, opt):
    def loss_fn(params, x, y):
        logits, stats = jax.vmap(eqx.combine(params, static))(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, stats

    @jax.jit
    def step(params, state, x, y):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        updates, state = opt.update(grads, state, params)
        steps = jnp.mean(stats.steps.astype(jnp.float32)) if stats is not None else jnp.zeros(())
        return optax.apply_updates(params, updates), state, loss, steps

    return step


@eqx.filter_jit
def _predict(model, x):
    return jax.vmap(model)(x)


def evaluate(model, x, y):
    logits, stats = _predict(model, x)
    acc = float(jnp.mean(jnp.argmax(logits, -1) == y))
    steps = float(np.mean(np.asarray(stats.steps))) if stats is not None else 0.0
    converged = (
        float(np.mean(np.asarray(stats.status) == RESULTS.CONVERGED)) if stats is not None else 1.0
    )
    return acc, steps, converged


def train_classifier(model, data, *, epochs, batch=64, lr=3e-3, seed=0, desc="train"):
    """Adam(W) with cosine decay on cross-entropy; returns the model and a log."""
    x_train, y_train, x_test, y_test = data
    n_batches = len(x_train) // batch
    opt = optax.adamw(optax.cosine_decay_schedule(lr, max(1, epochs * n_batches)), 1e-4)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = opt.init(params)
    step = make_step(static, opt)
    rng = np.random.default_rng(seed)
    log = dict(loss=[], forward_steps=[], epoch_time=[])
    compile_start = time.perf_counter()
    step(params, state, x_train[:batch], y_train[:batch])[2].block_until_ready()
    log["compile_time"] = time.perf_counter() - compile_start

    def epoch(run):  # one epoch: (params, state, last loss, last forward steps, seconds)
        params, state = run[:2]
        perm = rng.permutation(len(x_train))
        start = time.perf_counter()
        for i in range(n_batches):
            idx = perm[i * batch : (i + 1) * batch]
            params, state, loss, fsteps = step(params, state, x_train[idx], y_train[idx])
        loss.block_until_ready()
        return params, state, float(loss), float(fsteps), time.perf_counter() - start

    def record(run, done, taken):
        log["epoch_time"].append(run[4])
        log["loss"].append(run[2])
        log["forward_steps"].append(run[3])

    # Compiled above: no epoch is left out of the bar's rate.
    bar = Progress(epochs * n_batches, desc, compiled=True)
    params = run_chunks(epoch, (params, state), total=epochs * n_batches, chunk=n_batches,
                        loss_of=lambda run: run[2], progress=bar, on_chunk=record).state[0]
    bar.close()
    model = eqx.combine(params, static)
    log["test_accuracy"], log["test_forward_steps"], log["test_converged"] = evaluate(
        model, x_test, y_test
    )
    return model, log


def step_memory(model, x, y, budgets) -> dict:
    """Compiled temporary memory (bytes) of one training step per forward budget."""
    out = {}
    for n in budgets:
        m = eqx.tree_at(lambda m: m.deq, model, replace_fn=lambda d: _with_budget(d, n))
        params, static = eqx.partition(m, eqx.is_inexact_array)
        step = make_step(static, optax.adam(1e-3))
        state = optax.adam(1e-3).init(params)
        compiled = step.lower(params, state, x, y).compile()
        out[n] = int(compiled.memory_analysis().temp_size_in_bytes)
    return out


def _with_budget(deq, n):
    # tolerance 0: every budget is spent in full, the worst case for memory.
    return type(deq)(deq.cell, deq.solver, deq.adjoint, 0.0, 0.0, n)


# --- the experiment ---------------------------------------------------------------------


def _load_mnist():
    from jode_experiments.data import load_mnist

    try:
        xtr, ytr = load_mnist("train")
        xte, yte = load_mnist("test")
    except FileNotFoundError:
        return None
    flat = lambda x: (np.asarray(x, np.float32).reshape(len(x), -1) / 255.0)  # noqa: E731
    return flat(xtr), np.asarray(ytr, np.int32), flat(xte), np.asarray(yte, np.int32)


def cos_figure(rows, out_dir: Path, quick: bool = False):
    """The cobweb of z <- cos z, and each solver's residual per iteration."""
    from jode_experiments.plot import integer_ticks, pyplot, savefig

    fig, (a1, a2) = pyplot().subplots(1, 2, figsize=(11, 4))
    _cobweb(a1)
    for name, r in rows.items():
        a2.semilogy(np.maximum(r["residuals"], 1e-17), label=f"{name} ({r['steps']} steps)")
    a2.set(xlabel="iteration (solver step)", ylabel="residual |cos z − z|",
           title="residual from z0 = −1")
    integer_ticks(a2, "x")
    a2.legend(fontsize=8)
    savefig(fig, out_dir / "cos_fixed_point.png", quick)


def linear_figure(x, pred, out_dir: Path, quick: bool = False):
    """A DEQ's prediction of y = 2x on test points."""
    from jode_experiments.plot import pyplot, savefig

    fig, ax = pyplot().subplots(figsize=(5, 4))
    ax.plot(x, 2 * x, "k-", label="target y = 2x")
    ax.plot(x, pred, "o", ms=4, label="DEQ prediction")
    ax.set(xlabel="x (dimensionless)", ylabel="y (dimensionless)", title="a DEQ learning y = 2x")
    ax.legend()
    savefig(fig, out_dir / "deq_linear.png", quick)


def digits_figure(losses: dict, out_dir: Path, quick: bool = False):
    """`losses`: model name -> the last batch's loss after each epoch."""
    from jode_experiments.plot import integer_ticks, pyplot, savefig

    fig, ax = pyplot().subplots(figsize=(6, 4))
    for name, loss in losses.items():
        ax.plot(np.arange(1, len(loss) + 1), loss, "o-", label=name)
    ax.set(xlabel="epoch", ylabel="last batch loss (cross-entropy, nats)", yscale="log",
           title="digits training")
    integer_ticks(ax, "x")
    ax.legend()
    savefig(fig, out_dir / "digits_training.png", quick)


def memory_figure(budgets, temp_bytes, out_dir: Path, quick: bool = False):
    """Compiled scratch memory of a training step against the forward iteration budget."""
    from jode_experiments.plot import pyplot, savefig

    fig, ax = pyplot().subplots(figsize=(5, 4))
    ax.plot(budgets, [b / 1e6 for b in temp_bytes], "o-", label="DEQ, implicit gradients")
    ax.set(xlabel="forward iteration budget (iterations)", ylabel="compiled temp memory (MB)",
           xscale="log", title="training-step memory", ylim=(0, None))
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.legend()
    savefig(fig, out_dir / "deq_memory.png", quick)


def run(out_dir: Path, quick: bool) -> dict:
    jax.config.update("jax_enable_x64", True)
    from jode.fixed_point import SteadyState
    from jode_experiments.data import load_digits
    metrics = {}
    stage = Stages(NAME)
    metrics["stage_seconds"] = stage.seconds

    # 1. cos z = z.
    stage.begin("cos z = z: fixed-point solvers")
    rows = cos_table()
    metrics["cos"] = {
        k: {kk: v for kk, v in r.items() if kk != "residuals"} for k, r in rows.items()
    }
    cos_figure(rows, out_dir, quick)

    # 2. y = 2x by a DEQ.
    stage.begin("a DEQ learning y = 2x")
    key = jr.PRNGKey(0)
    x = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]
    reg = make_deq(1, 16, 1, key, rtol=1e-4, atol=1e-4)
    params, static = eqx.partition(reg, eqx.is_inexact_array)
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def reg_step(params, state):
        def loss(p):
            pred, _ = jax.vmap(eqx.combine(p, static))(x)
            return jnp.mean((pred - 2 * x) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, value

    for _ in tqdm(range(150 if quick else 600), desc="y = 2x", leave=False):
        params, state, mse = reg_step(params, state)
    reg = eqx.combine(params, static)
    x_test = np.linspace(-1, 1, 41, dtype=np.float32)[:, None]
    pred = np.asarray(eqx.filter_jit(lambda m, x: jax.vmap(m)(x)[0])(reg, x_test))
    metrics["linear"] = dict(
        train_mse=float(mse), test_max_error=float(np.max(np.abs(pred - 2 * x_test)))
    )
    linear_figure(x_test[:, 0], pred[:, 0], out_dir, quick)

    # 3. digits: DEQ (Anderson), DEQ (steady-state ODE), explicit network.
    stage.begin("digits: DEQ and explicit MLP")
    x_train, y_train, x_test, y_test = load_digits()
    x_train, x_test = standardize(x_train, x_test)
    data = (x_train, y_train, x_test, y_test)
    width, epochs = 100, (3 if quick else 20)
    k1, k2 = jr.split(jr.PRNGKey(1))
    deq = make_deq(64, width, 10, k1)
    mlp = ExplicitMLP(64, matching_width(n_params(deq), 64, 10), 10, k2)
    runs = {}
    _, runs["DEQ (Anderson)"] = train_classifier(deq, data, epochs=epochs, desc="DEQ anderson")
    if not quick:  # the ODE route costs one more compilation; full mode only
        ss = make_deq(64, width, 10, k1, solver=SteadyState())
        _, runs["DEQ (steady-state ODE)"] = train_classifier(
            ss, data, epochs=epochs, desc="DEQ steady state"
        )
    _, runs["explicit MLP"] = train_classifier(mlp, data, epochs=epochs, desc="explicit")
    table = {}
    for name, log in runs.items():
        model_params = n_params(deq) if name.startswith("DEQ") else n_params(mlp)
        table[name] = dict(
            test_accuracy=log["test_accuracy"], params=model_params,
            forward_steps=log["test_forward_steps"], converged=log["test_converged"],
            epochs=len(log["epoch_time"]), seconds_per_epoch=float(np.median(log["epoch_time"])),
            compile_time=log["compile_time"],
        )
    metrics["digits"] = table
    metrics["digits_deq_accuracy"] = table["DEQ (Anderson)"]["test_accuracy"]
    metrics["digits_target_met"] = bool(metrics["digits_deq_accuracy"] >= 0.97)
    digits_figure({name: log["loss"] for name, log in runs.items()}, out_dir, quick)

    mnist = None if quick else _load_mnist()
    metrics["mnist"] = "IDX files not found (set JODE_MNIST_DIR)" if mnist is None else None
    if mnist is not None:
        xtr, ytr, xte, yte = mnist
        xtr, xte = standardize(xtr, xte)
        model = make_deq(784, width, 10, jr.PRNGKey(2))
        _, log = train_classifier(model, (xtr, ytr, xte, yte), epochs=2, batch=128,
                                  desc="DEQ mnist")
        metrics["mnist"] = dict(test_accuracy=log["test_accuracy"], epochs=2)

    # 4. memory of a training step vs the forward iteration budget.
    stage.begin("training-step memory vs forward budget")
    budgets = [10, 100] if quick else [10, 30, 100]
    mem = step_memory(deq, x_train[:64], y_train[:64], budgets)
    metrics["memory_temp_bytes"] = mem
    metrics["memory_ratio_10x_budget"] = mem[100] / mem[10]
    metrics["memory_target_met"] = bool(metrics["memory_ratio_10x_budget"] <= 1.2)
    memory_figure(budgets, [mem[b] for b in budgets], out_dir, quick)
    stage.end()
    metrics["cos_target_met"] = bool(
        all(r["error"] <= 1e-12 and r["status"] == RESULTS.CONVERGED for r in rows.values())
    )
    return metrics
