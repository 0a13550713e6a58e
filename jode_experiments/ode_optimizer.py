"""Optimizing by integrating the gradient flow vs SGD, momentum, Adam and L-BFGS.

Reproduces the comparison of "Neural network back-propagation revisited with ordinary
differential equations" (Towards Data Science, 2020) after Owens & Filkin (1989):

1. six-hump camel, Goldstein-Price and Rosenbrock from a grid of starting points: how often
   each optimizer reaches the global minimum, and the iterations, gradient evaluations and
   wall time it needs to get within 1e-6 (in f) of the nearest local minimum; every knob
   (learning rate, or the flow's rtol) tuned on the same 6-point grid by the same rule;
   contour plots of the paths and an animated GIF;
2. an MLP on scikit-learn's digits 0-4 with the article's protocol scaled to that data set
   (100 images per digit for training, 40 per digit for validation, early stopping when 50
   iterations bring no 5 % improvement of the validation loss, accuracy on all remaining
   0-4 images), gradient flow (Euler-Heun, Runge-Kutta-Chebyshev, Bosh3, Ros2) vs Adam vs SGD, each
   with its knob tuned on the validation loss; the Chebyshev flow also with the patience
   counted in gradient evaluations, and every flow records when it first reaches Adam's
   best validation loss;
3. the XOR truth table as a smoke case, and real MNIST 0-4 when $JODE_MNIST_DIR is set.

On the test functions the damped second-order flow θ'' + γθ' + ∇f = 0
(`jode.optim.heavy_ball_flow`) runs beside them, as its own optimizer: its inertia can leave
the basin the gradient flow is confined to.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jode.ode.control import PIDController
from jode.ode.explicit import Bosh3, EulerHeun, Tsit5
from jode.optim.chebyshev import Chebyshev
from jode.optim.ros2 import Ros2
from jode_experiments import optim_compare as C
from jode_experiments.testfunctions import TEST_FUNCTIONS, local_minima_table

#: Small sequential steps, launch-bound on a GPU: `jode reproduce --device auto` runs
#: this target on the host CPU.
DEVICE = "cpu"

NAME = "ode-optimizer"

#: Optimizers on the test functions: name -> (kind, fixed settings, the value used without
#: tuning). The hyperparameter is the learning rate for SGD, momentum and Adam and rtol for
#: the flows; L-BFGS has none. The flows' errors are measured against the step taken
#: (error_scale="step", see `jode.optim.gradient_flow`): one setting, rtol 0.1, serves all
#: three functions (Ros2 keeps the classic scale).
OPTIMIZERS_2D = {
    "flow (EulerHeun)": ("flow", dict(solver=EulerHeun(), atol=1e-8, error_scale="step"), 0.1),
    "flow (Bosh3)": ("flow", dict(solver=Bosh3(), atol=1e-8, error_scale="step"), 0.1),
    "flow (Tsit5)": ("flow", dict(solver=Tsit5(), atol=1e-8, error_scale="step"), 0.1),
    "flow (Chebyshev)": (
        "flow",
        dict(solver=Chebyshev(stages=10), atol=1e-8, error_scale="step"),
        0.1,
    ),
    "flow (Ros2)": ("flow-ros2", dict(solver=Ros2(), atol=1e-5), 1e-3),
    # Not the gradient flow: θ'' + γθ' + ∇f = 0 (see `jode.optim.heavy_ball_flow`); γ = 10 is
    # the middle of the sweep in benchmarks/optim.py §5 and is not tuned per function.
    "heavy-ball flow (Bosh3)": (
        "heavy-ball",
        dict(solver=Bosh3(), atol=1e-8, damping=10.0),
        0.1,
    ),
    "SGD": ("sgd", {}, None),
    "momentum": ("momentum", {}, None),
    "Adam": ("adam", {}, None),
    "L-BFGS": ("lbfgs", {}, None),
}
#: The tuning grids: the same number of values (6) for every optimizer that has a knob.
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
RTOL_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
#: Learning rates used in quick mode (untuned).
QUICK_LR = {"camel": 3e-2, "goldstein_price": 3e-2, "rosenbrock": 3e-2}
TARGET = 1e-6


# --------------------------------------------------------------------------------------
# 1. Test functions
# --------------------------------------------------------------------------------------


def _is_flow(kind: str) -> bool:
    """Optimizers whose knob is rtol (the ODE integrators), not a learning rate."""
    return kind.startswith("flow") or kind == "heavy-ball"


def grid_starts(test, n: int) -> jax.Array:
    """An n x n grid of starting points over the function's box (edges excluded)."""
    (x0, x1), (y0, y1) = test.box
    xs = np.linspace(x0, x1, n + 2)[1:-1]
    ys = np.linspace(y0, y1, n + 2)[1:-1]
    gx, gy = np.meshgrid(xs, ys)
    return jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1), jnp.float64)


def _summary(res, is_global, setting):
    hit = np.asarray(res.hit_iters) >= 0
    glob = hit & np.asarray(is_global)[np.asarray(res.nearest)]
    med = lambda a: float(np.median(np.asarray(a)[hit])) if hit.any() else None  # noqa: E731
    return dict(
        setting=setting,  # the learning rate, or the flow's rtol
        starts=int(hit.size),
        reached=int(hit.sum()),
        reached_global=int(glob.sum()),
        fraction_global=float(glob.mean()),
        median_iterations=med(res.hit_iters),
        median_grad_evals=med(res.hit_nfev),
        median_hvps=med(res.hit_nhvp),
    )


def compare_function(key: str, n_grid: int, names, max_iters: int, tune: bool, n_timed: int):
    """Optimizers on one test function from an n_grid² grid; returns a metrics dict.

    With `tune`, each optimizer with a knob (learning rate, or the flows' rtol) is run at
    every value of its 6-point grid and the value that reaches the global minimum from the
    most starts is kept (ties: more starts reaching any minimum, then fewer median gradient
    evaluations), the same rule and budget for all; every value's summary is kept under
    "sweep". The flows are also reported at their untuned default ("default").
    """
    test = TEST_FUNCTIONS[key]
    minima, values, is_global = local_minima_table(test)
    starts = grid_starts(test, n_grid)
    from tqdm.auto import tqdm

    out = {}
    # Each optimizer compiles its own batched run: items of similar cost, so a plain bar.
    for name in tqdm(names, desc=f"{key}: optimizers", leave=False):
        kind, fixed, default = OPTIMIZERS_2D[name]
        is_flow = _is_flow(kind)

        def one(x, knob, kind=kind, fixed=fixed, is_flow=is_flow):
            knobs = dict(rtol=knob) if is_flow else dict(learning_rate=knob)
            return C.run_to_target(
                kind,
                test.fn,
                x,
                minima,
                values,
                max_iters=max_iters,
                target=TARGET,
                **fixed,
                **knobs,
            )

        batch = jax.jit(jax.vmap(one, in_axes=(0, None)))
        if kind == "lbfgs":
            grid = (1.0,)  # unused
        elif tune:
            grid = RTOL_GRID if is_flow else LR_GRID
        else:
            grid = (default,) if is_flow else (QUICK_LR[key],)
        best, sweep = None, []
        for knob in grid:
            t = time.perf_counter()
            res = jax.block_until_ready(batch(starts, jnp.asarray(knob, jnp.float64)))
            s = _summary(res, is_global, None if kind == "lbfgs" else knob)
            s["batch_wall_s"] = time.perf_counter() - t
            sweep.append(s)
            rank = (s["reached_global"], s["reached"], -(s["median_grad_evals"] or np.inf))
            if best is None or rank > best[0]:
                best = (rank, s, res, knob)
        _, s, res, knob = best
        s = dict(s, sweep=sweep)
        if is_flow:
            s["default"] = next((d for d in sweep if d["setting"] == default), None)
        # Wall time per start, single runs (jit once, then time n_timed starts).
        s["median_wall_ms"] = None
        if n_timed > 0:  # quick mode times nothing: skip the extra compilation
            s["median_wall_ms"] = _median_wall_ms(one, starts, res, knob, n_timed)
        out[name] = s
    return out


def _median_wall_ms(one, starts, res, knob, n_timed):
    """Median wall time (ms) of single runs from up to n_timed starts that hit a minimum."""
    knob = jnp.asarray(knob, jnp.float64)
    single = jax.jit(one)
    jax.block_until_ready(single(starts[0], knob))
    hit_idx = np.flatnonzero(np.asarray(res.hit_iters) >= 0)
    walls = []
    for i in hit_idx[:: max(1, len(hit_idx) // max(n_timed, 1))][:n_timed]:
        t = time.perf_counter()
        jax.block_until_ready(single(starts[i], knob))
        walls.append(time.perf_counter() - t)
    return float(np.median(walls) * 1e3) if walls else None


def _paths(key, names, knobs, x0, n_iters):
    test = TEST_FUNCTIONS[key]
    paths = {}
    for name in names:
        kind, fixed, _ = OPTIMIZERS_2D[name]
        knob = knobs.get(name)
        opts = dict(fixed, rtol=knob) if _is_flow(kind) else dict(learning_rate=knob)
        f = jax.jit(lambda x, kind=kind, opts=opts: C.trajectory(kind, test.fn, x, n_iters, **opts))
        paths[name] = np.asarray(f(jnp.asarray(x0, jnp.float64)))
    return paths


def _contour(ax, key):
    test = TEST_FUNCTIONS[key]
    (x0, x1), (y0, y1) = test.box
    gx, gy = np.meshgrid(np.linspace(x0, x1, 200), np.linspace(y0, y1, 200))
    z = np.asarray(jax.vmap(test.fn)(jnp.asarray(np.stack([gx.ravel(), gy.ravel()], 1))))
    z = z.reshape(gx.shape)
    levels = np.quantile(z, np.linspace(0, 1, 30) ** 2) if key != "camel" else 30
    if key in ("goldstein_price", "rosenbrock"):
        ax.contour(gx, gy, np.log10(z - z.min() + 1e-3), 30, cmap="viridis", linewidths=0.6)
    else:
        ax.contour(gx, gy, z, levels, cmap="viridis", linewidths=0.6)
    m = np.asarray(test.minimizers)
    ax.plot(m[:, 0], m[:, 1], "k*", ms=12, label="global minimum")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("θ₁ (dimensionless)")
    ax.set_ylabel("θ₂ (dimensionless)")
    ax.set_title(f"{test.name}: optimizer paths over the contours of f")


COLORS = {
    "flow (EulerHeun)": "C9",
    "flow (Bosh3)": "C3",
    "flow (Tsit5)": "C6",
    "flow (Chebyshev)": "C8",
    "flow (Ros2)": "C5",
    "heavy-ball flow (Bosh3)": "C7",
    "SGD": "C0",
    "momentum": "C1",
    "Adam": "C2",
    "L-BFGS": "C4",
}


def path_figure(out_dir: Path, all_paths: dict, quick: bool = False):
    from jode_experiments.plot import pyplot, savefig

    plt = pyplot()
    fig, axes = plt.subplots(1, len(all_paths), figsize=(5.2 * len(all_paths), 4.3))
    for ax, (key, paths) in zip(np.atleast_1d(axes), all_paths.items(), strict=True):
        _contour(ax, key)
        for kind, p in paths.items():
            ax.plot(p[:, 0], p[:, 1], ".-", color=COLORS[kind], lw=1.2, ms=3, label=kind)
        ax.plot(*next(iter(paths.values()))[0], "ko", ms=6, label="start")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return savefig(fig, out_dir / "paths.png", quick)


def path_gif(out_dir: Path, key: str, paths: dict, frames: int, quick: bool = False):
    """Animated paths (matplotlib.animation with the pillow writer), like the article's."""
    from matplotlib import animation

    from jode_experiments.plot import mark_quick, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    _contour(ax, key)
    lines = {k: ax.plot([], [], ".-", color=COLORS[k], lw=1.5, ms=4, label=k)[0] for k in paths}
    ax.legend(fontsize=7, loc="upper left")
    if quick:
        mark_quick(fig)

    def draw(i):
        for k, line in lines.items():
            line.set_data(paths[k][: i + 1, 0], paths[k][: i + 1, 1])
        return list(lines.values())

    anim = animation.FuncAnimation(fig, draw, frames=frames, interval=120, blit=True)
    path = out_dir / f"paths_{key}.gif"
    anim.save(path, writer=animation.PillowWriter(fps=8), dpi=70)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# 2. Networks: digits 0-4 (and MNIST 0-4 when present), XOR
# --------------------------------------------------------------------------------------

#: Training optimizers: (kind, grid of the tuned knob or None, fixed keyword arguments). The
#: knob is the learning rate for Adam and SGD and rtol for the flows (with atol = rtol/10);
#: each grid has 5 values and is searched by the same rule (best validation loss, seed 0).
#: "patience 50 evals" counts the early-stopping patience in gradient evaluations instead of
#: iterations: the same rule for Adam and SGD, whose iteration is one evaluation.
FLOW_RTOL_GRID = (1e-2, 3e-2, 1e-1, 3e-1, 1.0)
#: The PI step-size controller of Hairer & Wanner (1996, §IV.2, α = 0.7/k, β = 0.4/k): an
#: explicit flow on a network's loss runs at its stability boundary, where the I-controller
#: lets the step oscillate and rejects often (EulerHeun on digits: 654 evaluations per run on
#: average with it, 460 with PI, seeds 0-4 at rtol 0.1).
PI_CONTROLLER = PIDController(pcoeff=0.4, icoeff=0.3)
TRAIN_OPTIMIZERS = {
    "adam": ("adam", (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), {}),
    "flow (EulerHeun)": (
        "flow",
        FLOW_RTOL_GRID,
        dict(solver=EulerHeun(), controller=PI_CONTROLLER),
    ),
    "flow (Chebyshev)": ("flow", FLOW_RTOL_GRID, dict(solver=Chebyshev(stages=10))),
    "flow (Chebyshev), patience 50 evals": (
        "flow",
        FLOW_RTOL_GRID,
        dict(solver=Chebyshev(stages=10), patience_unit="grad_evals"),
    ),
    "flow (Bosh3)": ("flow", FLOW_RTOL_GRID, dict(solver=Bosh3())),
    "flow (Ros2)": (
        "flow-ros2",
        FLOW_RTOL_GRID,
        dict(solver=Ros2(krylov_steps=5, krylov_rtol=1e-2)),
    ),
    "sgd": ("sgd", (0.1, 0.3, 1.0, 3.0, 10.0), {}),
}
#: Quick mode: two optimizers, untuned (the values the full mode's tuning picked).
QUICK_TRAIN = {"adam": 1e-1, "flow (Chebyshev), patience 50 evals": 0.3}


def split_per_class(x, y, n_train: int, n_val: int, seed: int):
    """Per class: n_train for training, n_val for validation, all the rest for testing."""
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        for part, sel in zip(
            parts,
            (idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :]),
            strict=True,
        ):
            part.append(sel)
    return [(jnp.asarray(x[np.concatenate(p)]), jnp.asarray(y[np.concatenate(p)])) for p in parts]


def init_mlp(key, sizes, dtype=jnp.float32):
    """[(W, b), …] with W ~ N(0, 1/fan_in) (LeCun normal) and b = 0."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (fan_in, fan_out), dtype) * jnp.asarray(
            1.0 / np.sqrt(fan_in), dtype
        )
        params.append((w, jnp.zeros((fan_out,), dtype)))
    return params


def mlp(params, x):
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


def xent(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(mlp(params, x), y).mean()


def accuracy(params, x, y):
    return float(jnp.mean(jnp.argmax(mlp(params, x), axis=-1) == y))


def train_compare(data, sizes, seeds, optimizers, max_iters: int, progress=None):
    """Each optimizer on each seed (initialization).

    Its knob (learning rate, or the flow's rtol) is tuned on the validation loss of the
    first seed. Optimizers run in the given order; every one after "adam" also records when
    its validation loss first reached Adam's (mean) best validation loss. Returns
    per-optimizer means and per-seed records."""
    train, val, test = data
    out = {}
    target = None
    for name, (kind, lrs, kw) in optimizers.items():

        def one(p, knob, tgt, kind=kind, kw=kw):
            if _is_flow(kind):
                knobs = dict(rtol=knob, atol=0.1 * knob)
            else:
                knobs = dict(learning_rate=knob)
            return C.train_early_stopping(
                kind, xent, p, train, val, val_target=tgt, max_iters=max_iters, **knobs, **kw
            )

        run = jax.jit(one)
        p0 = init_mlp(jax.random.PRNGKey(seeds[0]), sizes)
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        tgt = f32(-np.inf if target is None else target)
        t = time.perf_counter()
        compiled = run.lower(p0, f32(1.0), tgt).compile()
        compile_s = time.perf_counter() - t
        lr = None
        if lrs is not None:
            scores = [float(compiled(p0, f32(c), tgt).best_val_loss) for c in lrs]
            lr = lrs[int(np.nanargmin(scores))]
        records = []
        for seed in seeds:
            p0 = init_mlp(jax.random.PRNGKey(seed), sizes)
            t = time.perf_counter()
            res = jax.block_until_ready(compiled(p0, f32(1.0 if lr is None else lr), tgt))
            wall = time.perf_counter() - t
            it, hit = int(res.iterations), int(res.target_iterations)
            records.append(
                dict(
                    seed=seed,
                    test_accuracy=accuracy(res.params, *test),
                    val_accuracy=accuracy(res.params, *val),
                    best_val_loss=float(res.best_val_loss),
                    iterations=it,
                    grad_evals=int(res.grad_evals),
                    wall_s=wall,
                    iterations_to_adam_val_loss=hit if target is not None else None,
                    grad_evals_to_adam_val_loss=int(res.target_grad_evals)
                    if target is not None
                    else None,
                    # Cost per iteration is steady, so the time to the target is the run's share.
                    wall_s_to_adam_val_loss=wall * (hit + 1) / max(it, 1)
                    if target is not None and hit >= 0
                    else None,
                )
            )
            if progress is not None:
                progress.update(1)
        mean = lambda k: float(np.mean([r[k] for r in records]))  # noqa: E731
        out[name] = dict(
            setting=lr,
            compile_s=compile_s,
            test_accuracy=mean("test_accuracy"),
            test_accuracy_std=float(np.std([r["test_accuracy"] for r in records])),
            best_val_loss=mean("best_val_loss"),
            iterations=mean("iterations"),
            grad_evals=mean("grad_evals"),
            wall_s=mean("wall_s"),
            runs=records,
        )
        hits = [r["wall_s_to_adam_val_loss"] for r in records]
        if target is not None:
            out[name]["reached_adam_val_loss"] = sum(h is not None for h in hits)
            done = [h for h in hits if h is not None]
            out[name]["wall_s_to_adam_val_loss"] = float(np.mean(done)) if done else None
        if kind == "adam":
            target = out[name]["best_val_loss"]
    return out


def digits_data(seed: int = 0):
    """Digits 0-4: 100 per class train, 40 per class validation, the rest (≈40) test."""
    from jode_experiments.data import load_digits

    x, y, _, _ = load_digits(test_fraction=0.0, classes=range(5))
    return split_per_class(x, y, 100, 40, seed)


def xor_fit(optimizers, max_iters: int = 2000):
    """A 2-4-1 tanh network on the XOR truth table (x64): final loss and whether all four
    outputs fall on the right side of 0.5."""
    x = jnp.asarray([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float64)
    y = jnp.asarray([0, 1, 1, 0], jnp.float64)

    def loss(p):
        (w1, b1), (w2, b2) = p
        out = jax.nn.sigmoid(jnp.tanh(x @ w1 + b1) @ w2 + b2)[:, 0]
        return jnp.mean((out - y) ** 2)

    p0 = init_mlp(jax.random.PRNGKey(1), (2, 4, 1), jnp.float64)
    out = {}
    for kind, lr in optimizers:
        opt = C.make_optimizer(kind, lr, rtol=1e-6, atol=1e-8)

        def run(p, kind=kind, opt=opt):
            def body(s, _):
                return C.take_step(kind, opt, loss, s)[2], None

            s, _ = jax.lax.scan(body, C.init_step(opt, p), None, length=max_iters)
            return s.params

        p = jax.jit(run)(p0)
        (w1, b1), (w2, b2) = p
        pred = jax.nn.sigmoid(jnp.tanh(x @ w1 + b1) @ w2 + b2)[:, 0]
        out[kind] = dict(loss=float(loss(p)), solved=bool(jnp.all((pred > 0.5) == (y > 0.5))))
    return out


def _table(rows: dict, cols) -> str:
    lines = ["| optimizer | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(out_dir: Path, quick: bool) -> dict:
    metrics = run_functions(out_dir, quick)
    metrics.update(run_networks(out_dir, quick))
    _write_report(out_dir, metrics)
    return metrics


def run_functions(out_dir: Path, quick: bool) -> dict:
    """Part 1: the grid comparison on the test functions, paths.png and the GIF."""
    from tqdm.auto import tqdm

    jax.config.update("jax_enable_x64", True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict = {
        "target": TARGET,
        "settings": {
            k: dict(kind=v[0], default=v[2], **{a: repr(b) for a, b in v[1].items()})
            for k, v in OPTIMIZERS_2D.items()
        },
    }

    keys = ("camel",) if quick else ("camel", "goldstein_price", "rosenbrock")
    names = ("flow (Bosh3)", "Adam") if quick else tuple(OPTIMIZERS_2D)
    n_grid, max_iters = (6, 500) if quick else (21, 3000)
    functions = {}
    for key in tqdm(keys, desc="test functions"):
        functions[key] = compare_function(
            key, n_grid, names, max_iters, tune=not quick, n_timed=0 if quick else 25
        )
    metrics["test_functions"] = functions
    starts = {"camel": (-1.5, -0.8), "goldstein_price": (-1.5, 1.5), "rosenbrock": (-1.5, 2.5)}
    all_paths = {}
    for key in keys:
        knobs = {k: v["setting"] for k, v in functions[key].items()}
        all_paths[key] = _paths(key, names, knobs, starts[key], 40 if quick else 80)
    path_figure(out_dir, all_paths, quick)
    path_gif(out_dir, "camel", all_paths["camel"], 8 if quick else 60, quick)
    return metrics


def run_networks(out_dir: Path, quick: bool) -> dict:
    """Parts 2 and 3: digits 0-4 (MNIST 0-4 when present) and XOR."""
    from tqdm.auto import tqdm

    jax.config.update("jax_enable_x64", True)
    metrics: dict = {}

    seeds = (0,) if quick else (0, 1, 2, 3, 4)
    if quick:  # untuned: the values the full mode's tuning picked
        optimizers = {
            k: (v[0], (QUICK_TRAIN[k],), v[2])
            for k, v in TRAIN_OPTIMIZERS.items()
            if k in QUICK_TRAIN
        }
    else:
        optimizers = TRAIN_OPTIMIZERS
    with tqdm(total=len(seeds) * len(optimizers), desc="digits 0-4") as bar:
        digits = train_compare(
            digits_data(0),
            (64, 32, 5),
            seeds,
            optimizers,
            max_iters=300 if quick else 5000,
            progress=bar,
        )
    metrics["digits"] = digits
    adam = digits["adam"]
    metrics["digits_flow_vs_adam"] = {}
    for name in ("flow (EulerHeun)", "flow (Chebyshev)", "flow (Chebyshev), patience 50 evals"):
        if name not in digits:
            continue
        flow = digits[name]
        to_target = flow.get("wall_s_to_adam_val_loss")
        metrics["digits_flow_vs_adam"][name] = dict(
            accuracy_difference_points=100 * (flow["test_accuracy"] - adam["test_accuracy"]),
            grad_eval_ratio=flow["grad_evals"] / adam["grad_evals"],
            wall_time_ratio=flow["wall_s"] / adam["wall_s"],
            wall_time_ratio_to_adam_val_loss=None
            if to_target is None
            else to_target / adam["wall_s"],
        )
    if os.environ.get("JODE_MNIST_DIR") and not quick:
        from jode_experiments.data import load_mnist

        x, y = load_mnist("train", classes=range(5))
        xt, yt = load_mnist("test", classes=range(5))
        data = split_per_class(np.concatenate([x, xt]), np.concatenate([y, yt]), 100, 100, 0)
        metrics["mnist"] = train_compare(data, (784, 32, 5), (0,), optimizers, max_iters=5000)

    # 3. XOR.
    metrics["xor"] = xor_fit((("flow", None), ("adam", 3e-2)), max_iters=200 if quick else 2000)
    return metrics


def _write_report(out_dir: Path, metrics: dict):
    parts = []
    for key, by_name in metrics["test_functions"].items():
        rows = {}
        for name, r in by_name.items():
            rows[name] = r
            if r.get("default") is not None and r["default"]["setting"] != r["setting"]:
                rows[f"{name}, untuned"] = dict(r["default"], median_wall_ms=None)
        parts.append(
            f"### {key}\n\n"
            + _table(
                rows,
                [
                    "setting",
                    "reached",
                    "reached_global",
                    "median_iterations",
                    "median_grad_evals",
                    "median_hvps",
                    "median_wall_ms",
                ],
            )
        )
    parts.append(
        "### digits 0-4\n\n"
        + _table(
            metrics["digits"],
            [
                "setting",
                "test_accuracy",
                "test_accuracy_std",
                "best_val_loss",
                "iterations",
                "grad_evals",
                "wall_s",
                "compile_s",
            ],
        )
    )
    (out_dir / "summary.md").write_text("\n\n".join(parts) + "\n")
