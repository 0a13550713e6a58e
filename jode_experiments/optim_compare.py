"""Side-by-side runs of optax optimizers and the gradient flow, counting gradient evaluations.

Everything here is a pure function run under `jax.jit`/`jax.vmap`: a whole optimization
(or a whole training with early stopping) is one `lax.while_loop`, so wall times compare
the optimizers and not Python overhead.

Gradient evaluations are counted the same way for all: SGD, momentum and Adam use one per
iteration; L-BFGS (optax's zoom line search) one per line-search trial; the gradient flow
the stages of every attempted step (rejected ones included) plus its start-up evaluation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from jode.ode.explicit import Tsit5
from jode.optim.flow import FlowState, gradient_flow
from jode.optim.heavy_ball import heavy_ball_flow
from jode.optim.minimize import minimize_by_flow
from jode.optim.ros2 import Ros2

#: Optimizer kinds understood by `make_optimizer`.
KINDS = ("flow", "flow-ros2", "heavy-ball", "sgd", "momentum", "adam", "lbfgs")
_FLOWS = ("flow", "flow-ros2", "heavy-ball")
_FROM_STATE = (*_FLOWS, "lbfgs")


def make_optimizer(
    kind: str,
    learning_rate=None,
    *,
    rtol=1e-6,
    atol=1e-8,
    solver=None,
    controller=None,
    error_scale="params",
    damping=1.0,
):
    """An optax optimizer by name; `learning_rate` may be a traced scalar.

    "flow" is `gradient_flow(solver or Tsit5, rtol, atol)`, "flow-ros2" the same with
    `Ros2()`; "heavy-ball" is `heavy_ball_flow(solver or Tsit5, damping, rtol, atol)`;
    "momentum" is SGD with Polyak momentum 0.9; "lbfgs" is `optax.lbfgs()` with its zoom
    line search (no learning rate).
    """
    if kind == "flow":
        solver = Tsit5() if solver is None else solver
        return gradient_flow(solver, rtol, atol, controller=controller, error_scale=error_scale)
    if kind == "flow-ros2":
        solver = Ros2() if solver is None else solver
        return gradient_flow(solver, rtol, atol, controller=controller, error_scale=error_scale)
    if kind == "heavy-ball":
        return heavy_ball_flow(
            solver, damping, rtol, atol, controller=controller, error_scale=error_scale
        )
    if kind == "lbfgs":
        return optax.lbfgs()
    if learning_rate is None:
        raise ValueError(f"optimizer {kind!r} needs learning_rate=")
    if kind == "sgd":
        return optax.sgd(learning_rate)
    if kind == "momentum":
        return optax.sgd(learning_rate, momentum=0.9)
    if kind == "adam":
        return optax.adam(learning_rate)
    raise ValueError(f"kind must be one of {KINDS}; got kind={kind!r}")


def _flow_state(opt_state) -> FlowState:
    return [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, FlowState))
        if isinstance(s, FlowState)
    ][0]


def _hvps(kind, opt_state):
    """Hessian-vector products spent so far (the Ros2 flow's linear solves; 0 for others)."""
    if kind in _FLOWS:
        return _flow_state(opt_state).nhvp
    return jnp.zeros((), jnp.int32)


def _grad_evals(kind, opt_state, k, ls_total):
    """Gradient evaluations spent so far, the current point's included."""
    if kind in _FLOWS:
        return _flow_state(opt_state).nfev + 1
    if kind == "lbfgs":
        return ls_total + 1
    return k + 1


def _linesearch_steps(kind, opt_state):
    if kind != "lbfgs":
        return jnp.zeros((), jnp.int32)
    return jnp.asarray(optax.tree.get(opt_state, "num_linesearch_steps"), jnp.int32)


class Step(NamedTuple):
    params: object
    opt_state: object
    k: jax.Array
    ls_total: jax.Array


def init_step(opt, params) -> Step:
    zero = jnp.zeros((), jnp.int32)
    return Step(params, opt.init(params), zero, zero)


def take_step(kind, opt, loss, s: Step):
    """One optimizer iteration; returns (value at s.params, grad evals so far, next Step)."""
    if kind in _FROM_STATE:
        value, grad = optax.value_and_grad_from_state(loss)(s.params, state=s.opt_state)
    else:
        value, grad = jax.value_and_grad(loss)(s.params)
    nfev = _grad_evals(kind, s.opt_state, s.k, s.ls_total)
    updates, opt_state = opt.update(
        grad, s.opt_state, s.params, value=value, grad=grad, value_fn=loss
    )
    params = optax.apply_updates(s.params, updates)
    ls_total = s.ls_total + _linesearch_steps(kind, opt_state)
    return value, nfev, Step(params, opt_state, s.k + 1, ls_total)


class RunResult(NamedTuple):
    """Iterations and gradient evaluations at the first hit of the target (-1: never)."""

    hit_iters: jax.Array
    hit_nfev: jax.Array
    hit_nhvp: jax.Array  # Hessian-vector products by then (Ros2 flow only)
    params: jax.Array
    value: jax.Array
    nearest: jax.Array  # index of the minimum nearest to the final point


def run_to_target(
    kind,
    loss,
    x0,
    minima,
    f_minima,
    *,
    learning_rate=None,
    max_iters=2000,
    target=1e-6,
    rtol=1e-6,
    atol=1e-8,
    solver=None,
    controller=None,
    error_scale="params",
    damping=1.0,
):
    """Optimize `loss` from x0 until f(x) - f(nearest minimum) < target, or max_iters.

    Args:
        minima: (m, d) array of the local minimizers; f_minima: (m,) their values.

    Returns:
        A `RunResult`.
    """
    opt = make_optimizer(
        kind,
        learning_rate,
        rtol=rtol,
        atol=atol,
        solver=solver,
        controller=controller,
        error_scale=error_scale,
        damping=damping,
    )

    def nearest(x):
        return jnp.argmin(jnp.sum((minima - x) ** 2, axis=-1))

    def cond(c):
        s, hit_k, _, _ = c
        return (s.k < max_iters) & (hit_k < 0)

    def body(c):
        s, hit_k, hit_nfev, hit_nhvp = c
        nhvp = _hvps(kind, s.opt_state)
        value, nfev, s_next = take_step(kind, opt, loss, s)
        hit = jnp.isfinite(value) & (value - f_minima[nearest(s.params)] < target)
        # On target: keep the point that hit it (its iteration count is the answer).
        s_out = jax.tree.map(lambda a, b: jnp.where(hit, a, b), s, s_next)
        return (
            s_out,
            jnp.where(hit, s.k, hit_k),
            jnp.where(hit, nfev, hit_nfev),
            jnp.where(hit, nhvp, hit_nhvp),
        )

    minus = jnp.asarray(-1, jnp.int32)
    init = (init_step(opt, x0), minus, minus, minus)
    s, hit_k, hit_nfev, hit_nhvp = jax.lax.while_loop(cond, body, init)
    return RunResult(hit_k, hit_nfev, hit_nhvp, s.params, loss(s.params), nearest(s.params))


def trajectory(kind, loss, x0, n_iters, *, learning_rate=None, **flow_kwargs):
    """The iterates x_0..x_n of `n_iters` iterations (for path plots), as an (n+1, d) array.

    `flow_kwargs` (rtol, atol, solver, controller, error_scale, damping) go to
    `make_optimizer`.
    """
    opt = make_optimizer(kind, learning_rate, **flow_kwargs)

    def body(s, _):
        _, _, s_next = take_step(kind, opt, loss, s)
        return s_next, s_next.params

    _, xs = jax.lax.scan(body, init_step(opt, x0), None, length=n_iters)
    return jnp.concatenate([x0[None], xs])


def local_minima(fn, box, n: int = 25, gtol: float = 1e-9, margin: float = 0.5):
    """All local minimizers found by integrating the flow from an n x n grid over `box`.

    The grid is widened by `margin` times the box on each side; each start runs
    `minimize_by_flow` with the stiff `Ros2` solver to ‖∇f‖ ≤ gtol; converged end points
    with a positive definite Hessian are deduplicated (to 1e-5).

    Returns:
        (minimizers (m, 2) sorted by value, values (m,)) as NumPy arrays.
    """
    import numpy as np

    (x0, x1), (y0, y1) = box
    wx, wy = margin * (x1 - x0), margin * (y1 - y0)
    gx, gy = np.meshgrid(np.linspace(x0 - wx, x1 + wx, n), np.linspace(y0 - wy, y1 + wy, n))
    starts = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], axis=1), jnp.float64)
    solve = jax.jit(
        jax.vmap(
            lambda p: minimize_by_flow(
                lambda q, a: fn(q),
                p,
                solver=Ros2(),
                rtol=1e-4,
                atol=1e-9,
                gtol=gtol,
                max_steps=3000,
            )
        )
    )
    res = solve(starts)
    found = []
    for p, ok in zip(np.asarray(res.params), np.asarray(res.converged), strict=True):
        if not ok or any(np.linalg.norm(p - q) < 1e-5 for q in found):
            continue
        if np.all(np.linalg.eigvalsh(np.asarray(jax.hessian(fn)(jnp.asarray(p)))) > 0):
            found.append(p)
    pts = np.array(found)
    vals = np.array([float(fn(jnp.asarray(p))) for p in pts])
    order = np.argsort(vals)
    return pts[order], vals[order]


class TrainResult(NamedTuple):
    """What `train_early_stopping` returns."""

    params: object  # the parameters with the lowest validation loss
    iterations: jax.Array
    grad_evals: jax.Array
    best_val_loss: jax.Array
    target_iterations: jax.Array  # first iteration with validation loss <= val_target (-1: never)
    target_grad_evals: jax.Array


def train_early_stopping(
    kind,
    loss,
    params0,
    train,
    val,
    *,
    learning_rate=None,
    val_target=None,
    max_iters=5000,
    patience: int = 50,
    min_improvement: float = 0.05,
    patience_unit: str = "iterations",
    **flow_kwargs,
):
    """Full-batch training with the article's early stopping rule.

    Stops when `patience` iterations bring no relative improvement of the validation loss
    by more than `min_improvement` (the reference value is reset at each such improvement);
    returns the parameters with the lowest validation loss seen, and when the validation
    loss first fell to `val_target` (a traced scalar; None: never).

    Args:
        loss: loss(params, x, y) -> scalar.
        train, val: (x, y) pairs.
        patience_unit: "iterations" (the article's rule) or "grad_evals" (patience counted
            in gradient evaluations, which is the same for SGD/Adam and charges an optimizer
            whose iteration costs several gradients for them).
    """
    if patience_unit not in ("iterations", "grad_evals"):
        raise ValueError(
            f"patience_unit must be 'iterations' or 'grad_evals'; got {patience_unit!r}"
        )
    opt = make_optimizer(kind, learning_rate, **flow_kwargs)
    value_fn = lambda p: loss(p, *train)  # noqa: E731
    v0 = loss(params0, *val)
    target = jnp.asarray(-jnp.inf if val_target is None else val_target, v0.dtype)

    def cond(c):
        s, since, now = c[0], c[4], c[7]
        return (s.k < max_iters) & (now - since < patience)

    def body(c):
        s, best, best_p, mark, since, hit_k, hit_nfev, _ = c
        _, _, s = take_step(kind, opt, value_fn, s)
        v = loss(s.params, *val)
        better = v < best
        best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), s.params, best_p)
        big = v < mark * (1.0 - min_improvement)
        first = (hit_k < 0) & (v <= target)
        nfev = _grad_evals(kind, s.opt_state, s.k, s.ls_total) - (0 if kind in _FROM_STATE else 1)
        now = s.k if patience_unit == "iterations" else nfev
        return (
            s,
            jnp.where(better, v, best),
            best_p,
            jnp.where(big, v, mark),
            jnp.where(big, now, since),
            jnp.where(first, s.k, hit_k),
            jnp.where(first, nfev, hit_nfev),
            now,
        )

    minus, zero = jnp.asarray(-1, jnp.int32), jnp.zeros((), jnp.int32)
    init = (init_step(opt, params0), v0, params0, v0, zero, minus, minus, zero)
    s, best, best_p, _, _, hit_k, hit_nfev, _ = jax.lax.while_loop(cond, body, init)
    # Evaluations spent: the count before a step includes the next point's gradient, which
    # SGD/Adam never computed for the final point.
    nfev = _grad_evals(kind, s.opt_state, s.k, s.ls_total) - (0 if kind in _FROM_STATE else 1)
    return TrainResult(best_p, s.k, nfev, best, hit_k, hit_nfev)


def flat_size(params) -> int:
    return int(ravel_pytree(params)[0].shape[0])


__all__ = [
    "KINDS",
    "RunResult",
    "TrainResult",
    "train_early_stopping",
    "local_minima",
    "make_optimizer",
    "run_to_target",
    "take_step",
    "trajectory",
    "init_step",
    "flat_size",
]
