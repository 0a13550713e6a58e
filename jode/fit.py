"""Parameter recovery: fit a differential equation's parameters and initial state to data.

A fit minimizes a trajectory loss (`TrajectoryLoss`: weighted least squares between the
solution at the data's times and the data) with stages of optax optimizers — by default
Adam, then L-BFGS with a line search, the DiffEqFlux recipe (Rackauckas et al. 2019) — and,
for hard problems, a strategy:

- `GrowingWindows`: fit the first part of the data, then more, to the whole span, each
  stage starting from the last (Kidger 2021, *On Neural Differential Equations*, §2.2.4,
  on fitting long or chaotic trajectories); the window is a masked loss, so it compiles once,
  and its solve leaves the state unchanged past the window (`TrajectoryLoss.freeze_time`),
  so a trial model that diverges there cannot spoil the window's loss.
- `MultipleShooting`: segments with their own fitted initial states and a continuity
  penalty (Bock & Plitt 1984), then a single-shooting polish.

A batch of initial guesses (`batched=True`) is fitted at once with `vmap` (multi-start); the
best fit is returned with all the others. The result carries the loss history, a status,
and the Gauss-Newton covariance of the estimate (standard errors, 95% intervals).
Long fits show a progress bar and can be checkpointed and resumed (`checkpoint=path.npz`).

Example:
    >>> loss = jode.fit.TrajectoryLoss(jode.models.lotka_volterra, ts, data, n_state=2)
    >>> result = jode.fit.fit(loss, jnp.array([0.8, 1.2, 1.2, 1.0, 2.9, 1.1]))
    >>> result.params, result.stderr, result.interval(0.95)
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .fitting import checkpoint as ckpt
from .fitting.loss import MultipleShootingLoss, TrajectoryLoss, check_data
from .fitting.stages import (
    LBFGS,
    Adam,
    FitStatus,
    StageState,
    init_state,
    run_chunk,
    run_stage,
    run_stages,
    stage_step,
)
from .fitting.uncertainty import Uncertainty, gauss_newton, jacobian

__all__ = [
    "Adam", "LBFGS", "FitStatus", "StageState", "TrajectoryLoss", "MultipleShootingLoss",
    "GrowingWindows", "MultipleShooting", "FitResult", "Uncertainty", "fit", "gauss_newton",
    "jacobian", "run_stage", "run_stages", "stage_step", "check_data", "default_stages",
]


def default_stages(adam_steps: int = 300, lbfgs_steps: int = 500):
    """Adam (lr 1e-2) then L-BFGS: the article's recipe with fewer Adam steps, since the
    L-BFGS polish does the fine work."""
    return (Adam(steps=adam_steps, learning_rate=1e-2), LBFGS(steps=lbfgs_steps))


class GrowingWindows(eqx.Module):
    """Fit on [t0, T_1], then [t0, T_2], …, the whole span, running the stages in each.

    Args:
        fractions: the window ends as fractions of the data's span (the last should be 1).
        ends: absolute window end times instead of fractions.
        stages: stages per window (default: the fit's stages).
    """

    fractions: tuple = (0.2, 0.4, 0.6, 0.8, 1.0)
    ends: tuple | None = None
    stages: tuple | None = None

    def __check_init__(self):
        vals = self.ends if self.ends is not None else self.fractions
        if len(vals) == 0 or any(b <= a for a, b in zip(vals, vals[1:], strict=False)):
            raise ValueError(f"window ends must be increasing and non-empty; got {vals}")

    def phases(self, loss, stages):
        t0, t1 = float(loss.ts[0]), float(loss.ts[-1])
        ends = self.ends or tuple(t0 + f * (t1 - t0) for f in self.fractions)
        ends = tuple(float(e) for e in ends)
        stages = self.stages or stages
        out = []
        for end in ends:
            label_end = end if end < t1 else float("inf")
            out += [_Phase(loss, s, label_end, f"window t<={end:.3g}") for s in stages]
        if ends[-1] < t1:
            out += [_Phase(loss, s, float("inf"), "full span") for s in stages]
        return out


class MultipleShooting(eqx.Module):
    """Multiple shooting over `segments` pieces, then single-shooting polish stages.

    Args:
        segments: the number of segments S (each needs >= 3 observations).
        penalty: the weight λ of the continuity term.
        polish: stages of the final single-shooting fit (default: one L-BFGS).
    """

    segments: int = 10
    penalty: float = 10.0
    polish: tuple | None = None

    def phases(self, loss, stages):
        ms = loss.multiple_shooting(self.segments, self.penalty)
        polish = self.polish or (LBFGS(),)
        return [_Phase(ms, s, float("inf"), f"multiple shooting S={self.segments}")
                for s in stages] + [_Phase(loss, s, float("inf"), "polish") for s in polish]


class _Phase(NamedTuple):
    loss: object
    stage: object
    t_end: float
    label: str


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


def _fingerprint(phases, theta0, batched):
    shapes = [tuple(np.shape(x)) for x in jax.tree.leaves(theta0)]
    labels = "|".join(f"{p.label}:{type(p.stage).__name__}{p.stage.steps}" for p in phases)
    return f"phases={len(phases)};batched={batched};shapes={shapes};{labels}"


def _progress(total, enabled, desc):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


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
        checkpoint: a path (.npz); written after every chunk, and resumed from if it exists.
        chunk: iterations per compiled call (between progress updates and checkpoints).

    Returns:
        A `FitResult`.

    Raises:
        ValueError: for a guess of the wrong length or non-finite values, a bad stage or
            strategy, or a checkpoint from another fit.
    """
    start_time = time.perf_counter()
    stages = tuple(default_stages() if stages is None else stages)
    if not stages:
        raise ValueError("stages must contain at least one stage, e.g. (jode.fit.LBFGS(),)")
    for s in stages:
        if not isinstance(s, (Adam, LBFGS)):
            raise ValueError(f"unknown stage {s!r}: use jode.fit.Adam(...) or jode.fit.LBFGS(...)")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int; got chunk={chunk!r}")
    if hasattr(loss, "check_theta"):
        loss.check_theta(theta0, batched=batched)
    theta0 = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)), theta0)
    if strategy is None:
        phases = [_Phase(loss, s, float("inf"), "full span") for s in stages]
    elif isinstance(strategy, (GrowingWindows, MultipleShooting)):
        phases = strategy.phases(loss, stages)
    else:
        raise ValueError(
            f"strategy must be None, jode.fit.GrowingWindows(...) or "
            f"jode.fit.MultipleShooting(...); got {strategy!r}"
        )

    def compiled(phase):
        return _compiled(phase.stage, chunk, batched)

    def params_for(k, theta):
        init = phases[k].loss.init
        return jax.vmap(init)(theta) if batched else init(theta)

    fingerprint = _fingerprint(phases, theta0, batched)
    history: list = []
    first_phase, resumed_state = 0, None
    if checkpoint is not None and Path(checkpoint).exists():
        def template(k):
            p = jax.eval_shape(lambda t: params_for(k, t), theta0)
            init = compiled(phases[k])[0]
            return jax.eval_shape(init, phases[k].stage, phases[k].loss, p, jnp.inf)

        first_phase, resumed_state, history = ckpt.load(checkpoint, template, fingerprint)
        history = list(history)

    total = sum(p.stage.steps for p in phases)
    done_before = sum(p.stage.steps for p in phases[:first_phase])
    bar = _progress(total, progress, "fit")
    if bar is not None:
        bar.update(done_before)
    theta = theta0
    phase_ends, statuses = [], []
    if first_phase:
        phase_ends = list(np.cumsum([len(h) for h in history[:first_phase]]))
    for k in range(first_phase, len(phases)):
        phase = phases[k]
        init_fn, chunk_fn = compiled(phase)
        aux = jnp.asarray(phase.t_end, jnp.result_type(float))
        if k == first_phase and resumed_state is not None:
            state = resumed_state
            hist = list(history.pop()) if len(history) > k else []
        else:
            state = init_fn(phase.stage, phase.loss, params_for(k, theta), aux)
            hist = []
        if bar is not None:
            bar.set_description(f"fit [{phase.label}, {type(phase.stage).__name__}]")
        while True:
            steps_before = int(np.max(np.asarray(state.step)))
            if np.all(np.asarray(state.status) != FitStatus.RUNNING):
                break
            state, values = chunk_fn(phase.stage, phase.loss, state, aux)
            values = np.asarray(values)
            steps_now = int(np.max(np.asarray(state.step)))
            taken = steps_now - steps_before
            hist.extend(list(values.T[:taken] if batched else values[:taken]))
            if bar is not None:
                bar.update(taken)
                best = float(np.nanmin(np.asarray(state.value)))
                bar.set_postfix(loss=f"{best:.4g}", step=steps_now)
            if checkpoint is not None:
                ckpt.save(checkpoint, k, state, history + [np.asarray(hist)], fingerprint)
        if bar is not None:
            bar.update(phase.stage.steps - int(np.max(np.asarray(state.step))))
        history.append(np.asarray(hist))
        phase_ends.append(int(sum(len(h) for h in history)))
        statuses.append(np.asarray(state.status))
        theta = jax.vmap(phase.loss.extract)(state.params) if batched else \
            phase.loss.extract(state.params)
    if bar is not None:
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
