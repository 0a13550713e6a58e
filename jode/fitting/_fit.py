"""`fit(loss, theta0)`: phases of optimizer stages with progress, checkpoints, multi-start.

A fit minimizes a trajectory loss (`TrajectoryLoss`: weighted least squares between the
solution at the data's times and the data) with stages of optax optimizers — by default
Adam, then L-BFGS with a line search, the DiffEqFlux recipe (Rackauckas et al. 2019) — and,
for hard problems, a strategy (`GrowingWindows`, `MultipleShooting`; see `strategies`).

A batch of initial guesses (`batched=True`) is fitted at once with `vmap` (multi-start); the
best fit is returned with all the others. The result carries the loss history, a status,
and the Gauss-Newton covariance of the estimate (standard errors, 95% intervals).
Long fits show a progress bar and can be checkpointed and resumed (`checkpoint=path.npz`).
The compiled stages are cached by the stage's type, the loss's static structure (its model
function and solver options) and the shapes, so a second fit of the same model reuses them.

Example:
    >>> loss = jode.fitting.TrajectoryLoss(jode.models.lotka_volterra, ts, data, n_state=2)
    >>> result = jode.fit(loss, jnp.array([0.8, 1.2, 1.2, 1.0, 2.9, 1.1]))
    >>> result.params, result.stderr, result.interval(0.95)
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._training import Progress, run_chunks
from . import checkpoint as ckpt
from .stages import LBFGS, Adam, FitStatus, init_state, run_chunk
from .strategies import GrowingWindows, MultipleShooting, Phase
from .uncertainty import Uncertainty, gauss_newton

__all__ = ["FitResult", "default_stages", "fit"]

_RESUME = ("auto", "fresh")


def default_stages(adam_steps: int = 300, lbfgs_steps: int = 500):
    """Adam (lr 1e-2) then L-BFGS: the article's recipe with fewer Adam steps, since the
    L-BFGS polish does the fine work."""
    return (Adam(steps=adam_steps, learning_rate=1e-2), LBFGS(steps=lbfgs_steps))


@dataclass
class FitResult:
    """What a fit returns.

    Attributes:
        params: the best estimate θ̂.
        loss: its loss.
        history: the loss at every iteration, all phases concatenated (batched: (iters, B)).
        phase_ends: the iteration where each phase ended; `phase_labels` say what it was.
        status: the last phase's `FitStatus` (of the best start).
        uncertainty: the Gauss-Newton covariance (None when not computed).
        all_params, all_losses: every start's estimate and loss (multi-start).
        best_index: which start is `params`.
        wall_time: seconds.
    """

    params: object
    loss: float
    history: np.ndarray
    phase_ends: list
    phase_labels: list
    status: FitStatus
    uncertainty: Uncertainty | None = None
    names: tuple | None = None
    all_params: object = None
    all_losses: np.ndarray | None = None
    best_index: int = 0
    wall_time: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def stderr(self):
        return None if self.uncertainty is None else self.uncertainty.stderr

    @property
    def covariance(self):
        return None if self.uncertainty is None else self.uncertainty.covariance

    def interval(self, level: float = 0.95):
        """(lower, upper): θ̂ ± z se at the given level."""
        if self.uncertainty is None:
            raise ValueError("this fit has no uncertainty: call fit(..., uncertainty=True)")
        return self.uncertainty.interval(self.params, level)

    def summary(self) -> str:
        """A table: name, estimate, standard error, 95% interval."""
        theta = np.asarray(self.params).reshape(-1)
        names = self.names or tuple(f"θ[{i}]" for i in range(theta.size))
        lines = [f"loss {self.loss:.6g}   status: {self.status.name.lower()}"]
        if self.uncertainty is not None:
            lo, hi = self.interval()
            lines.append(f"{'':8s} {'estimate':>12s} {'std err':>10s}   95% interval")
            for n, v, s, a, b in zip(names, theta, self.stderr, lo, hi, strict=True):
                lines.append(f"{n:8s} {v:12.6g} {s:10.3g}   [{a:.6g}, {b:.6g}]")
        else:
            lines += [f"{n:8s} {v:12.6g}" for n, v in zip(names, theta, strict=True)]
        return "\n".join(lines)


def _check_batch(theta0):
    leaves = jax.tree.leaves(theta0)
    if not leaves or any(np.ndim(x) == 0 for x in leaves):
        raise ValueError(
            "batched=True needs a batch of guesses with a leading axis (B, ...); got theta0 "
            f"with shapes {[np.shape(x) for x in leaves]}. Stack the guesses, e.g. "
            "jnp.stack([theta_a, theta_b]), or pass batched=False for one guess"
        )
    sizes = {np.shape(x)[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(
            "batched=True needs one leading (batch) axis shared by every leaf of theta0; "
            f"got leading sizes {sorted(sizes)}"
        )


def _check_resumed(path, state, stage):
    """Values a damaged file could hold that have the right shape and dtype."""
    status, step = np.asarray(state.status), np.asarray(state.step)
    if np.any((status < min(FitStatus)) | (status > max(FitStatus))):
        raise ValueError(
            f"the checkpoint {path} is damaged (a status outside {[int(s) for s in FitStatus]}"
            "); delete it, or pass resume='fresh' to start the fit over"
        )
    if np.any((step < 0) | (step > stage.steps)):
        raise ValueError(
            f"the checkpoint {path} is damaged (step {step} outside 0..{stage.steps}); delete "
            "it, or pass resume='fresh' to start the fit over"
        )
    if not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params)):
        raise ValueError(
            f"the checkpoint {path} is damaged (non-finite parameters); delete it, or pass "
            "resume='fresh' to start the fit over"
        )


def _steps(state) -> int:
    """Iterations a stage state has done (a batch's: the most of any start)."""
    return int(np.max(np.asarray(state.step)))


def _stopped(state) -> FitStatus | None:
    """None while any start runs; then the stage's status (a batch's first start's: `fit`
    reads every start's from the state)."""
    status = np.asarray(state.status)
    if np.any(status == FitStatus.RUNNING):
        return None
    return FitStatus(int(status.reshape(-1)[0]))


def _compiled(stage, chunk: int, batched: bool):
    """(init, chunk) functions of (stage, loss, ...), jitted once per stage type and
    static options: the stage's numbers and the loss's arrays are arguments (traced), the
    model and solver options static, so new data, step budgets or learning rates reuse the
    compiled code."""
    return _compiled_for(type(stage), jax.tree.structure(stage), chunk, batched)


@functools.cache
def _compiled_for(kind, structure, chunk: int, batched: bool):
    del kind, structure  # the cache key

    def init_fn(st, lo, p, a):
        return init_state(lo, st, p, a)

    def chunk_fn(st, lo, s, a):
        return run_chunk(lo, st, s, a, chunk)

    if batched:
        init_fn = jax.vmap(init_fn, in_axes=(None, None, 0, None))
        chunk_fn = jax.vmap(chunk_fn, in_axes=(None, None, 0, None))
    return jax.jit(init_fn), jax.jit(chunk_fn)


def fit(
    loss,
    theta0,
    *,
    stages=None,
    strategy=None,
    batched: bool = False,
    uncertainty: bool | None = None,
    progress: bool = True,
    checkpoint=None,
    resume: str = "auto",
    chunk: int = 50,
) -> FitResult:
    """Fit θ to minimize `loss`, in phases (strategy × stages), with progress and checkpoints.

    Args:
        loss: a `TrajectoryLoss` (or anything with `__call__(θ, t_end)`, `init`, `extract`).
        theta0: the initial guess; with `batched=True` a batch (leading axis) of guesses
            fitted together with `vmap`, and the best returned.
        stages: optimizer stages, default `default_stages()` (Adam, then L-BFGS).
        strategy: None (the whole span at once), `GrowingWindows(...)` or
            `MultipleShooting(...)`.
        uncertainty: compute the Gauss-Newton covariance (default: when θ is a vector and
            the loss has residuals).
        progress: show a tqdm bar (loss, step).
        checkpoint: a path (.npz); written after every chunk, and resumed from if it exists
            and was written by this same fit (same data, times, weights, model, solver
            options, θ0, stages and strategy).
        resume: "auto" (resume from `checkpoint` when it exists; a checkpoint of another
            fit is an error naming what differs) or "fresh" (start over, overwriting it).
        chunk: iterations per compiled call (between progress updates and checkpoints).

    Returns:
        A `FitResult`.

    Raises:
        ValueError: for a guess of the wrong length (one the model indexes past, or with
            entries the model never uses) or non-finite values, a batch that is not one
            (`batched=True` with a single vector), a bad stage, strategy or option, or a
            checkpoint from another fit or a damaged one (naming the file).
    """
    start_time = time.perf_counter()
    stages = tuple(default_stages() if stages is None else stages)
    if not stages:
        raise ValueError(
            "stages must contain at least one stage, e.g. (jode.fitting.LBFGS(),)")
    for s in stages:
        if not isinstance(s, (Adam, LBFGS)):
            raise ValueError(
                f"unknown stage {s!r}: use jode.fitting.Adam(...) or jode.fitting.LBFGS(...)")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int; got chunk={chunk!r}")
    if resume not in _RESUME:
        raise ValueError(f'resume must be "auto" or "fresh"; got resume={resume!r}')
    if batched:
        _check_batch(theta0)
    if hasattr(loss, "check_theta"):
        loss.check_theta(theta0, batched=batched)
    theta0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), theta0)
    if hasattr(loss, "check_model"):
        loss.check_model(jax.tree.map(lambda x: x[0], theta0) if batched else theta0)
    if strategy is None:
        phases = [Phase(loss, s, float("inf"), "full span") for s in stages]
    elif isinstance(strategy, (GrowingWindows, MultipleShooting)):
        phases = strategy.phases(loss, stages)
    else:
        raise ValueError(
            f"strategy must be None, jode.fitting.GrowingWindows(...) or "
            f"jode.fitting.MultipleShooting(...); got {strategy!r}"
        )

    def compiled(phase):
        return _compiled(phase.stage, chunk, batched)

    def params_for(k, theta):
        init = phases[k].loss.init
        return jax.vmap(init)(theta) if batched else init(theta)

    history: list = []
    first_phase, resumed_state = 0, None
    if checkpoint is not None:
        fingerprint = ckpt.fit_fingerprint(loss, theta0, stages, strategy, batched)
    if checkpoint is not None and resume == "auto" and Path(checkpoint).exists():
        def template(k):
            p = jax.eval_shape(lambda t: params_for(k, t), theta0)
            init = compiled(phases[k])[0]
            return jax.eval_shape(init, phases[k].stage, phases[k].loss, p, jnp.inf)

        first_phase, resumed_state, history = ckpt.load(checkpoint, template, fingerprint,
                                                        len(phases))
        _check_resumed(checkpoint, resumed_state, phases[first_phase].stage)
        history = list(history)

    done_before = sum(p.stage.steps for p in phases[:first_phase])
    bar = Progress(sum(p.stage.steps for p in phases), "fit", progress)
    bar.skip(done_before)
    theta = theta0
    phase_ends, statuses = [], []
    if first_phase:
        phase_ends = list(np.cumsum([len(h) for h in history[:first_phase]]))
    for k in range(first_phase, len(phases)):
        phase = phases[k]
        # The phase's first chunk (and init_fn) compile: `begin` leaves them out of the rate.
        bar.begin(f"fit [{phase.label}, {type(phase.stage).__name__}]")
        init_fn, chunk_fn = compiled(phase)
        aux = jnp.asarray(phase.t_end, jnp.result_type(float))
        if k == first_phase and resumed_state is not None:
            state = resumed_state
            hist = list(history.pop()) if len(history) > k else []
        else:
            state = init_fn(phase.stage, phase.loss, params_for(k, theta), aux)
            hist = []

        def step(run, phase=phase, chunk_fn=chunk_fn, aux=aux):
            return chunk_fn(phase.stage, phase.loss, run[0], aux)  # (state, values)

        def record(run, done, taken, k=k, hist=hist):
            values = np.asarray(run[1])
            hist.extend(list(values.T[:taken] if batched else values[:taken]))
            if checkpoint is not None:
                ckpt.save(checkpoint, k, run[0], history + [np.asarray(hist)], fingerprint)

        bar.skip(_steps(state))  # resumed within this phase
        run = run_chunks(
            step, (state, None), total=phase.stage.steps, chunk=chunk, progress=bar,
            loss_of=lambda run: np.fmin.reduce(np.asarray(run[0].value).reshape(-1)),  # best
            steps_of=lambda run: _steps(run[0]), reported=lambda run: _stopped(run[0]),
            on_chunk=record, done=_steps(state),
        )
        state = run.state[0]
        bar.skip(phase.stage.steps - _steps(state))  # the budget a converged stage left
        history.append(np.asarray(hist))
        phase_ends.append(int(sum(len(h) for h in history)))
        statuses.append(np.asarray(state.status))
        theta = jax.vmap(phase.loss.extract)(state.params) if batched else \
            phase.loss.extract(state.params)
    bar.close()

    # The final loss of every start, on the whole span: the last phase's (already compiled)
    # init evaluates it, so no separate program of the loss is compiled.
    final_phase = phases[-1]
    losses = np.asarray(compiled(final_phase)[0](
        final_phase.stage, final_phase.loss, params_for(len(phases) - 1, theta),
        jnp.asarray(jnp.inf, jnp.result_type(float)),
    ).value)
    best = int(np.nanargmin(losses)) if batched else 0
    best_theta = jax.tree.map(lambda x: x[best], theta) if batched else theta
    last_status = statuses[-1][best] if batched else statuses[-1]
    hist_all = np.concatenate([np.asarray(h) for h in history if len(h)]) if any(
        len(h) for h in history) else np.zeros((0,))
    base = getattr(final_phase.loss, "base", final_phase.loss)
    if uncertainty is None:
        uncertainty = hasattr(base, "residuals") and np.ndim(jax.tree.leaves(best_theta)[0]) == 1 \
            and len(jax.tree.leaves(best_theta)) == 1
    unc = gauss_newton(base, best_theta) if uncertainty else None
    if checkpoint is not None:
        ckpt.save(checkpoint, len(phases) - 1, state, history, fingerprint)
    return FitResult(
        params=best_theta,
        loss=float(losses[best]) if batched else float(losses),
        history=hist_all,
        phase_ends=phase_ends,
        phase_labels=[f"{p.label}: {type(p.stage).__name__}" for p in phases],
        status=FitStatus(int(last_status)),
        uncertainty=unc,
        names=getattr(base, "names", None),
        all_params=theta if batched else None,
        all_losses=losses if batched else None,
        best_index=best,
        wall_time=time.perf_counter() - start_time,
    )
