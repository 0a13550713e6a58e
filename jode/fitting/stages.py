"""Optimizer stages: optax Adam, then L-BFGS with a zoom line search.

A stage is a small immutable description (optimizer hyperparameters and a step budget).
Its state is an explicit `StageState`; `stage_step(loss, stage, state, aux)` advances one
iteration and freezes the state once the stage has converged or met a non-finite loss, so
runs of many iterations (`run_chunk`, a `lax.scan`) and batches of starts (`vmap`) compose.

The recipe (a first-order warm-up, then a quasi-Newton polish) is the one of the DiffEqFlux
parameter-estimation tutorials (Rackauckas et al. 2019, "DiffEqFlux.jl"); Adam is Kingma &
Ba (2015), L-BFGS Liu & Nocedal (1989) with the strong-Wolfe zoom line search of Nocedal &
Wright (2006), *Numerical Optimization*, Alg. 3.5-3.6.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from .._results import RESULTS

#: Why a stage stopped: the shared `jode.RESULTS` (RUNNING while it iterates, then
#: CONVERGED, MAX_STEPS or NONFINITE); the name is kept for code written against it.
FitStatus = RESULTS


class Adam(eqx.Module):
    """Adam (Kingma & Ba 2015, Alg. 1) for `steps` iterations.

    A stage is a pytree whose numbers are leaves, so stages that differ only in their
    step budget, learning rate or tolerances share one compiled program.

    Args:
        steps: iterations.
        learning_rate: the step size α.
        gtol: stop when the gradient's norm falls below this.
    """

    steps: int = 500
    learning_rate: float = 1e-2
    gtol: float = 0.0

    def __check_init__(self):
        _check_positive_int("steps", self.steps)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0; got {self.learning_rate}")

    def optimizer(self):
        return optax.adam(self.learning_rate)

    @property
    def uses_line_search(self) -> bool:
        return False


class LBFGS(eqx.Module):
    """L-BFGS (Liu & Nocedal 1989) with optax's zoom line search (strong Wolfe).

    Args:
        steps: iterations (each a line search of a few loss evaluations).
        memory: the number of curvature pairs kept.
        gtol: stop when the gradient's norm falls below this.
        ftol: stop when the loss changes by less than ftol·(|L| + ftol) in one step.
        linesearch: "zoom" (strong Wolfe, Nocedal & Wright Alg. 3.5-3.6; the default) or
            "backtracking" (Armijo decrease only, Alg. 3.1: about a third less to compile,
            for fits whose cost is mostly compilation).
    """

    steps: int = 500
    memory: int = eqx.field(default=10, static=True)
    gtol: float = 1e-12
    ftol: float = 1e-15
    linesearch: str = eqx.field(default="zoom", static=True)

    def __check_init__(self):
        _check_positive_int("steps", self.steps)
        _check_positive_int("memory", self.memory)
        if self.linesearch not in ("zoom", "backtracking"):
            raise ValueError(
                f'linesearch must be "zoom" or "backtracking"; got linesearch={self.linesearch!r}'
            )

    def optimizer(self):
        if self.linesearch == "backtracking":
            search = optax.scale_by_backtracking_linesearch(
                max_backtracking_steps=20, store_grad=True)
            return optax.lbfgs(memory_size=self.memory, linesearch=search)
        return optax.lbfgs(memory_size=self.memory)

    @property
    def uses_line_search(self) -> bool:
        return True


def _check_positive_int(name, value):
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {name}={value!r}")


class StageState(NamedTuple):
    """Everything a stage carries between iterations (a pytree: checkpointable)."""

    params: object
    opt_state: object
    value: jax.Array  # the loss at `params` (L-BFGS) or at the previous iterate (Adam)
    grad_norm: jax.Array
    step: jax.Array
    status: jax.Array


def _tree_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(tree)))


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _init_opt(stage, params):
    with jax.numpy_dtype_promotion("standard"):
        return stage.optimizer().init(params)


def init_state(loss, stage, params, aux) -> StageState:
    """The state before the first iteration: evaluates the loss once (with its gradient for
    a line-search stage, stored in the optimizer's state for its first step)."""
    dtype = jax.tree.leaves(params)[0].dtype
    opt_state = _init_opt(stage, params)
    if stage.uses_line_search:
        # The first step's value and gradient: evaluated here, where the loss is evaluated
        # anyway, so that the step (`stage_step`) holds no evaluation of its own besides the
        # line search's. The program of a step compiles one solve-and-gradient fewer.
        with jax.numpy_dtype_promotion("standard"):
            value, grad = jax.value_and_grad(objective(loss, params, aux))(params)
            stored = optax.tree.set(opt_state, value=value, grad=grad)
            opt_state = optax.tree.cast_like(stored, other_tree=opt_state)
    else:
        value = loss(params, aux)
    return StageState(
        params=params,
        opt_state=opt_state,
        value=jnp.asarray(value, dtype),
        grad_norm=jnp.asarray(jnp.inf, dtype),
        step=jnp.zeros((), jnp.int32),
        status=jnp.asarray(FitStatus.RUNNING, jnp.int32),
    )


def _forward_gradient(fn):
    """`fn` (params -> scalar) whose reverse-mode derivative (`jax.grad`, the line
    searches' `jax.value_and_grad`) is computed in forward mode: one `jvp` per parameter,
    `vmap`ped, so the solve inside is one loop carrying the tangents."""

    @jax.custom_vjp
    def value(params):
        return fn(params)

    def value_fwd(params):
        flat, unravel = ravel_pytree(params)

        def flat_fn(v):
            return fn(unravel(v))

        basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
        values, slopes = jax.vmap(lambda e: jax.jvp(flat_fn, (flat,), (e,)))(basis)
        return values[0], unravel(slopes.astype(flat.dtype))

    def value_bwd(grad, cotangent):
        return (jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grad),)

    value.defvjp(value_fwd, value_bwd)
    return value


def objective(loss, params, aux):
    """params -> loss(params, aux), the function a stage minimizes: differentiated in the
    mode the loss asks for (`gradient_mode`: forward for a few parameters of a solve, which
    halves what the optimizer's step compiles; reverse otherwise)."""
    fn = lambda p: loss(p, aux)  # noqa: E731
    mode = getattr(loss, "gradient_mode", None)
    if mode is not None and mode(params) == "forward":
        return _forward_gradient(fn)
    return fn


def stage_step(loss, stage, state: StageState, aux) -> StageState:
    """One iteration; a finished state (status != RUNNING) is returned unchanged."""
    opt = stage.optimizer()
    fn = objective(loss, state.params, aux)
    # optax's L-BFGS mixes int32 and int64 counters: let it promote as numpy does.
    with jax.numpy_dtype_promotion("standard"):
        if stage.uses_line_search:
            # The value and gradient at the current parameters, stored by `init_state` or by
            # the previous step's line search (which evaluated them there). A non-finite
            # stored value ends the stage as NONFINITE below, as the re-evaluation that
            # optax's `value_and_grad_from_state` would make at the same point does.
            value = optax.tree.get(state.opt_state, "value")
            grad = optax.tree.get(state.opt_state, "grad")
            updates, opt_state = opt.update(
                grad, state.opt_state, state.params, value=value, grad=grad, value_fn=fn
            )
        else:
            value, grad = jax.value_and_grad(fn)(state.params)
            updates, opt_state = opt.update(grad, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    gnorm = _tree_norm(grad)
    finite = jnp.isfinite(value) & _all_finite(grad) & _all_finite(params)
    step = state.step + 1
    converged = gnorm <= stage.gtol
    if stage.uses_line_search:
        new_value = optax.tree.get(opt_state, "value")
        change = jnp.abs(value - new_value)
        converged = converged | (change <= stage.ftol * (jnp.abs(value) + stage.ftol))
    status = jnp.where(
        ~finite,
        FitStatus.NONFINITE,
        jnp.where(
            converged,
            FitStatus.CONVERGED,
            jnp.where(step >= stage.steps, FitStatus.MAX_STEPS, FitStatus.RUNNING),
        ),
    ).astype(jnp.int32)
    if stage.uses_line_search:
        value = new_value  # the line search evaluated the loss at the new parameters
    new = StageState(
        params=params, opt_state=opt_state, value=jnp.asarray(value, state.value.dtype),
        grad_norm=gnorm.astype(state.value.dtype), step=step, status=status,
    )
    # A non-finite step keeps the last good parameters.
    new = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, state._replace(status=status))
    running = state.status == FitStatus.RUNNING
    return jax.tree.map(lambda a, b: jnp.where(running, a, b), new, state)


def run_chunk(loss, stage, state: StageState, aux, length: int):
    """`length` iterations as a `lax.scan`; returns (state, the loss at each iteration)."""

    def body(s, _):
        s = jax.lax.cond(
            s.status == FitStatus.RUNNING,
            lambda s: stage_step(loss, stage, s, aux),
            lambda s: s,
            s,
        )
        return s, s.value

    return jax.lax.scan(body, state, None, length=length)


def run_stage(loss, stage, params, aux=None):
    """A whole stage as one pure function of `params` (jit/vmap/shard friendly)."""
    aux = jnp.inf if aux is None else aux
    state = init_state(loss, stage, params, aux)
    state, _ = run_chunk(loss, stage, state, aux, stage.steps)
    return state


def run_stages(loss, stages, theta, aux=None):
    """Stages in sequence as one pure function θ -> (θ*, final loss); composes with vmap
    and `jode.sweep` (no progress bar, no checkpoints: see `jode.fit` for those)."""
    params = loss.init(theta)
    value = None
    for stage in stages:
        state = run_stage(loss, stage, params, aux)
        params, value = state.params, state.value
    return loss.extract(params), value
