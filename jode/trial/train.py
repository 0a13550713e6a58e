"""Training a trial solution: collocation points, Adam, then L-BFGS and Levenberg-Marquardt.

The loss is the mean squared residual over collocation points (Lagaris et al. 1998, eq. 2).
Training runs in three stages, each optional:

1. optax Adam (on fixed or resampled points), to leave the random start;
2. optax L-BFGS with a zoom (Wolfe) line search, the quasi-Newton step the paper used (BFGS);
3. Levenberg-Marquardt on the residual vector r(θ): θ ← θ + δ with
   δ = argmin ‖J δ + r‖² + λ ‖D δ‖²  (D² = diag JᵀJ; Marquardt 1963, Nielsen's λ update),
   solved as a least-squares problem (SVD) so J's conditioning is not squared.

Why stage 3: the residual's Jacobian of a sigmoid network is badly conditioned (its columns
are nearly collinear), so the Hessian of the loss that BFGS approximates has the condition
number squared; in float64 BFGS and L-BFGS stall near loss 1e-10, which leaves ~1e-5 errors
in ψ, while the Gauss-Newton model of Levenberg-Marquardt keeps converging to 1e-20 and below.

Each stage runs in jit-compiled chunks (one compilation per stage) with a tqdm bar.
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .._results import RESULTS
from .._training import nonfinite, reached, run_chunks, stalled
from .problem import Problem, TrialSolution, sigmoid_mlp


def grid_points(problem: Problem, n: int, dtype=None):
    """n equidistant points per coordinate, ends included: (n,) in 1-D, (n², 2) in 2-D."""
    if n < 2:
        raise ValueError(f"points must be >= 2; got points={n}")
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    axes = [jnp.linspace(lo, hi, n, dtype=dtype) for lo, hi in zip(problem.lower, problem.upper)]
    if problem.dim == 1:
        return axes[0]
    xx, yy = jnp.meshgrid(*axes, indexing="ij")
    return jnp.stack([xx.ravel(), yy.ravel()], axis=-1)


def random_points(problem: Problem, key, n: int, dtype=None):
    """n uniform random points in the domain: (n,) in 1-D, (n, 2) in 2-D."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got n={n}")
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    lo = jnp.asarray(problem.lower, dtype)
    hi = jnp.asarray(problem.upper, dtype)
    u = jr.uniform(key, (n, problem.dim), dtype)
    pts = lo + (hi - lo) * u
    return pts[:, 0] if problem.dim == 1 else pts


def _check_points(problem: Problem, xs):
    """Collocation points given as an array: at least one, finite, inside the domain."""
    if xs.shape[0] == 0:
        raise ValueError(
            "points is empty: pass at least one collocation point, or an int n for a grid of "
            "n points per coordinate"
        )
    pts = np.asarray(xs).reshape(xs.shape[0], -1)
    lower, upper = np.asarray(problem.lower), np.asarray(problem.upper)
    # Points are compared in their own precision, so a domain end rounded to float32 counts.
    tol = 4 * np.finfo(pts.dtype).eps * np.maximum(np.abs(lower), np.abs(upper))
    bad = ~np.all(np.isfinite(pts) & (pts >= lower - tol) & (pts <= upper + tol), axis=1)
    if np.any(bad):
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"points must be finite and inside the domain {_domain_text(problem)}; got "
            f"{rows.size} bad point(s), e.g. points[{rows[0]}]={pts[rows[0]].tolist()}. The "
            "trial solution meets the conditions only on the domain"
        )


def _domain_text(problem: Problem) -> str:
    return " x ".join(f"[{lo}, {hi}]" for lo, hi in zip(problem.lower, problem.upper,
                                                         strict=True))


#: Starting damping λ of the Levenberg-Marquardt stage.
LM_DAMPING = 1e-3
#: The Levenberg-Marquardt stage stops once the loss has fallen by less than this fraction
#: over the last `LM_PATIENCE` chunks (a stall: a local minimum or the rounding floor).
LM_RTOL = 1e-3
LM_PATIENCE = 3
#: Warn of a plateau when the training residual (RMS) is still above this fraction of the
#: starting network's: a converged fit reaches 1e-6 of it and far below (see `train`).
PLATEAU_RATIO = 1e-3
#: Warn of over-fitting when the residual between the collocation points (RMS over the
#: validation points) exceeds the one on them by this factor, and is above
#: `OVERFIT_FLOOR` of the starting residual.
OVERFIT_RATIO = 100.0
OVERFIT_FLOOR = 1e-8
#: Random validation points by default (not on the training grid; the same for every
#: restart, so restarts are compared on one set).
VALIDATION_POINTS = 256


class TrialWarning(UserWarning):
    """A trained trial solution that is probably not the solution: see the message."""


@dataclasses.dataclass(frozen=True)
class TrainReport:
    """What training did: losses after each stage, iterations, times (seconds), and the
    check of the result away from the collocation points.

    Residuals are root-mean-square values of G (times `weight`, if one was given):
    `start_residual` the scale (the larger of the starting network's and that of ψ_t with all
    weights zero, the conditions' function A alone) and `train_residual` of the trained one
    on the collocation points, `validation_residual` on `n_validation` points not used in training
    (uniform random ones by default), `residual_ratio` = validation / train (≫ 1: the network
    fits the points but not the equation between them). `validation_error` is
    max |ψ_t − ψ_exact| over the validation points when `exact` was given (NaN otherwise).
    `status` is `jode.RESULTS.CONVERGED` (the loss met `tol`, or the last stage stalled),
    `MAX_STEPS` (the step budget ran out while the loss still fell) or `NONFINITE`.
    `warnings` repeats the `TrialWarning`s issued (plateau, over-fitting). With `restarts`,
    `restart_residuals` holds each start's validation residual and `best_restart` the one
    kept (start i uses `jr.fold_in(key, i)`, start 0 the key itself).
    """

    loss: float
    max_residual: float
    loss_after_adam: float
    loss_after_lbfgs: float
    adam_steps: int
    lbfgs_steps: int
    lm_steps: int
    n_params: int
    n_points: int
    time_s: float
    lm_damping: float = float("nan")  # λ at the end of the Levenberg-Marquardt stage
    start_residual: float = float("nan")
    train_residual: float = float("nan")
    validation_residual: float = float("nan")
    residual_ratio: float = float("nan")
    validation_error: float = float("nan")
    n_validation: int = 0
    status: int = int(RESULTS.RUNNING)
    warnings: tuple = ()
    restarts: int = 1
    best_restart: int = 0
    restart_residuals: tuple = ()

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _strong(tree):
    # Drop weak types from a freshly initialized optimizer state, so that the compiled
    # chunk sees the same types on its first call as on later ones (one compilation).
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype) if eqx.is_array(x) else x, tree)


def _residuals(theta, xs, template, static, problem, weight=None):
    unravel = ravel_pytree(template)[1]
    sol = TrialSolution(eqx.combine(unravel(theta), static), problem)
    r = jax.vmap(sol.residual)(xs)
    if weight is not None:
        w = jax.vmap(weight)(xs)
        r = r * w.reshape(w.shape + (1,) * (r.ndim - w.ndim))
    return r.reshape(-1)


def _loss(theta, xs, template, static, problem, weight=None):
    return jnp.mean(_residuals(theta, xs, template, static, problem, weight) ** 2)


_loss_jit = eqx.filter_jit(_loss)
_residuals_jit = eqx.filter_jit(_residuals)

# The chunks below are module-level `filter_jit` functions whose static arguments (problem,
# network structure, hyperparameters) hash by value or identity: training the same problem
# again (other seeds, a benchmark's repeat) reuses the compiled code.


def _adam(lr, steps):
    del steps  # a constant rate: the later stages do the fine convergence
    return optax.adam(lr)


@eqx.filter_jit
def _adam_chunk(theta, state, key, xs, template, static, problem, weight, lr, steps, resample,
                chunk):
    opt = _adam(lr, steps)
    n = xs.shape[0]

    def body(carry, _):
        theta, state, key, xs = carry
        if resample:
            key, sub = jr.split(key)
            xs = random_points(problem, sub, n, xs.dtype)
        g = jax.grad(_loss)(theta, xs, template, static, problem, weight)
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts and floats
            upd, state = opt.update(g, state, theta)
        return (optax.apply_updates(theta, upd), state, key, xs), None

    return jax.lax.scan(body, (theta, state, key, xs), None, length=chunk)[0]


def _lbfgs_parts(xs, template, static, problem, weight):
    opt = optax.lbfgs()
    value_fn = lambda t: _loss(t, xs, template, static, problem, weight)  # noqa: E731
    return opt, value_fn, optax.value_and_grad_from_state(value_fn)


@eqx.filter_jit
def _lbfgs_chunk(theta, state, xs, template, static, problem, weight, chunk):
    opt, value_fn, value_and_grad = _lbfgs_parts(xs, template, static, problem, weight)

    def body(carry, _):
        theta, state = carry
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int counts and floats
            value, grad = value_and_grad(theta, state=state)
            upd, state = opt.update(grad, state, theta, value=value, grad=grad,
                                    value_fn=value_fn)
        return (optax.apply_updates(theta, upd), state), None

    return jax.lax.scan(body, (theta, state), None, length=chunk)[0]


@eqx.filter_jit
def _lm_chunk(theta, lam, nu, xs, template, static, problem, weight, chunk):
    """`chunk` Levenberg-Marquardt steps with Marquardt's scaling and Nielsen's damping
    update (Madsen, Nielsen & Tingleff 2004, *Methods for Non-Linear Least Squares
    Problems*, §3.2), carrying the damping λ and its growth factor ν.

    This is jode's own rather than `optimistix.LevenbergMarquardt`: a stage here is a fixed
    number of steps in scanned chunks whose (θ, λ, ν) carry over between chunks and between
    calls (`train(..., lm_damping=)` continues a stage where it stopped), while optimistix's
    solver runs one while loop to its own convergence test and does not expose its damping.
    """

    def residuals(t):
        return _residuals(t, xs, template, static, problem, weight)

    def sq(r):
        return jnp.sum(r**2)

    def body(carry, _):
        theta, lam, nu = carry
        r = residuals(theta)
        jac = jax.jacfwd(residuals)(theta)
        # Marquardt's scaling D = diag(JᵀJ)^½ (floored): invariant to rescaled weights.
        d = jnp.sqrt(jnp.maximum(jnp.sum(jac**2, axis=0), 1e-12 * jnp.max(jac**2)))
        a = jnp.concatenate([jac, jnp.sqrt(lam) * jnp.diag(d)])
        rhs = jnp.concatenate([-r, jnp.zeros_like(theta)])
        delta = jnp.linalg.lstsq(a, rhs)[0]
        new = theta + delta
        predicted = sq(r) - sq(r + jac @ delta)
        actual = sq(r) - sq(residuals(new))
        rho = actual / jnp.maximum(predicted, jnp.finfo(r.dtype).tiny)
        ok = (actual > 0) & jnp.isfinite(actual)
        theta = jnp.where(ok, new, theta)
        # Nielsen's update: shrink λ after a good step, grow it geometrically after bad ones.
        shrink = jnp.maximum(1 / 3, 1 - (2 * rho - 1) ** 3)
        lam = jnp.clip(jnp.where(ok, lam * shrink, lam * nu), 1e-15, 1e15)
        nu = jnp.where(ok, 2.0, 2 * nu)
        return (theta, lam, nu), None

    return jax.lax.scan(body, (theta, lam, nu), None, length=chunk)[0]


def _rules(tol, stall=False):
    """A stage's stopping rules: a non-finite loss, the loss at `tol`, and (the
    Levenberg-Marquardt stage) a stall: less than `LM_RTOL` relative progress over
    `LM_PATIENCE` chunks, so one flat chunk (λ growing after rejected steps) does not end it."""
    rules = (nonfinite, reached(tol))
    return rules + (stalled(LM_RTOL, LM_PATIENCE),) if stall else rules


def default_points(problem: Problem, n_params: int) -> int:
    """Points per coordinate of the default grid: the smallest n whose grid holds at least
    twice as many points as the network has weights (at least 10, the paper's number), so
    the fit cannot interpolate the points (see `train`)."""
    n = 10
    while n**problem.dim < 2 * n_params:
        n += 1
    return n


def _validation_points(problem, validation, key, dtype):
    if validation is None:
        return None
    if isinstance(validation, int | np.integer):
        if validation < 0:
            raise ValueError(
                f"validation must be >= 0 (a number of random points), an array of points, or "
                f"None; got validation={validation}"
            )
        if validation == 0:
            return None
        return random_points(problem, key, int(validation), dtype)
    xv = jnp.asarray(validation, dtype)
    want = (xv.shape[0],) if problem.dim == 1 else (xv.shape[0], 2)
    if xv.ndim == 0 or xv.shape != want:
        raise ValueError(
            "validation points must have shape (n,) for 1-D problems or (n, 2) on rectangles; "
            f"got {xv.shape}"
        )
    _check_points(problem, xv)
    return xv


def _rms(r):
    return float(jnp.sqrt(jnp.mean(r**2)))


def _fit(problem, network, xs, k_pts, weight, *, adam_steps, learning_rate, resample,
         lbfgs_steps, lm_steps, tol, chunk, progress, lm_damping):
    """One training run (Adam, L-BFGS, Levenberg-Marquardt) from `network`."""
    params, static = eqx.partition(network, eqx.is_inexact_array)
    theta, unravel = ravel_pytree(params)
    args = (xs, params, static, problem, weight)

    def loss_at(theta):
        return float(_loss_jit(theta, *args))

    # The residual's scale: of the starting network, or of ψ_t with N ≡ 0 (all weights zero:
    # the conditions' function A alone) when larger, as when continuing from a trained one.
    scales = [_rms(_residuals_jit(t, *args)) for t in (theta, jnp.zeros_like(theta))]
    start_residual = max([v for v in scales if np.isfinite(v)], default=float("nan"))
    start = time.perf_counter()

    def stage(name, steps, step, state, rules):
        c = min(chunk, max(steps, 1))
        # A stage's state is a tuple whose first entry is θ.
        return run_chunks(lambda s: step(s, c), state, total=steps, chunk=c,
                          loss_of=lambda s: loss_at(s[0]), stop=rules, progress=progress,
                          desc=name)

    # Stage 1: Adam, on (θ, optimizer state, key).
    def adam_step(s, c):
        return _adam_chunk(*s, *args, learning_rate, adam_steps, resample, c)[:3]

    adam_state = _strong(_adam(learning_rate, adam_steps).init(theta))
    run = stage("adam", adam_steps, adam_step, (theta, adam_state, k_pts), _rules(-1.0))
    theta, n_adam, status = run.state[0], run.steps, run.status
    loss_adam = loss_at(theta)

    # Stage 2: L-BFGS, on (θ, optimizer state).
    n_lbfgs = 0
    if np.isfinite(loss_adam):
        run = stage("l-bfgs", lbfgs_steps, lambda s, c: _lbfgs_chunk(*s, *args, c),
                    (theta, _strong(optax.lbfgs().init(theta))), _rules(tol))
        theta, n_lbfgs = run.state[0], run.steps
        status = run.status if lbfgs_steps > 0 else status
    loss_lbfgs = loss_at(theta)
    if loss_lbfgs <= tol:
        status = RESULTS.CONVERGED

    # Stage 3: Levenberg-Marquardt, on (θ, damping λ, its growth factor ν).
    n_lm, lam = 0, float("nan")
    if lm_steps > 0 and loss_lbfgs > tol and np.isfinite(loss_lbfgs):
        start_lm = (theta, jnp.asarray(lm_damping, theta.dtype), jnp.asarray(2.0, theta.dtype))
        run = stage("levenberg-marquardt", lm_steps, lambda s, c: _lm_chunk(*s, *args, c),
                    start_lm, _rules(tol, stall=True))
        (theta, lam, _), n_lm, status = run.state, run.steps, run.status
        lam = float(lam)
    if not np.isfinite(loss_adam) or not np.isfinite(loss_lbfgs):
        status = RESULTS.NONFINITE
    r = _residuals_jit(theta, *args)
    out = dict(
        loss=float(jnp.mean(r**2)),
        max_residual=float(jnp.max(jnp.abs(r))),
        loss_after_adam=loss_adam,
        loss_after_lbfgs=loss_lbfgs,
        adam_steps=n_adam,
        lbfgs_steps=n_lbfgs,
        lm_steps=n_lm,
        n_params=int(theta.size),
        n_points=int(xs.shape[0]),
        time_s=time.perf_counter() - start,
        lm_damping=lam,
        start_residual=start_residual,
        train_residual=_rms(r),
        status=RESULTS(int(status)),
    )
    return TrialSolution(eqx.combine(unravel(theta), static), problem), theta, out


def _check_of(solution, theta, xv, exact, weight):
    """(validation residual, validation error) of a trained solution."""
    if xv is None:
        return float("nan"), float("nan")
    params, static = eqx.partition(solution.network, eqx.is_inexact_array)
    r = _residuals_jit(theta, xv, params, static, solution.problem, weight)
    err = float("nan")
    if exact is not None:
        got = solution.evaluate(xv)
        want = jax.vmap(exact)(xv)
        err = float(jnp.max(jnp.abs(got - want)))
    return _rms(r), err


def _warnings_of(out, n_points_arg):
    msgs = []
    start, tr, val = out["start_residual"], out["train_residual"], out["validation_residual"]
    if np.isfinite(tr) and tr > PLATEAU_RATIO * start:
        how = ("the last stage stalled: a local minimum" if out["status"] == RESULTS.CONVERGED
               else "the step budget ran out first")
        msgs.append(
            f"the training residual (RMS {tr:.1e}) is still {tr / start:.1e} of the starting "
            f"network's ({start:.1e}); {how}. A trial solution's error follows its residual: "
            "use more hidden units (hidden=20 or more), restarts=k (keeps the best of k "
            "starts), or more steps"
        )
    if np.isfinite(val) and val > OVERFIT_RATIO * tr and val > OVERFIT_FLOOR * start:
        pts = ("pass more points (points=None picks a grid with twice as many points as "
               "weights)" if n_points_arg is not None else "pass more points")
        msgs.append(
            f"the residual between the collocation points (RMS {val:.1e} on "
            f"{out['n_validation']} validation points) is {val / max(tr, 1e-300):.1e} times "
            f"the one on them ({tr:.1e}): the network fits the {out['n_points']} points, not "
            f"the equation between them ({out['n_params']} weights). {pts}, or fewer hidden "
            "units"
        )
    return tuple(msgs)


def train(
    problem: Problem,
    key=None,
    *,
    hidden: int = 10,
    depth: int = 1,
    init_scale: float = 2.0,
    points=None,
    adam_steps: int = 1000,
    learning_rate: float = 1e-2,
    resample: bool = False,
    lbfgs_steps: int = 500,
    lm_steps: int = 2000,
    tol: float = 1e-28,
    chunk: int = 100,
    progress: bool = True,
    network=None,
    weight=None,
    lm_damping: float = LM_DAMPING,
    restarts: int = 1,
    validation=VALIDATION_POINTS,
    exact=None,
):
    """Train the network of a trial solution on the residual at collocation points.

    Args:
        problem: a `jode.trial.Problem`.
        key: PRNG key for the network's start (and random points); default `jr.key(0)`.
        hidden, depth: hidden units per layer and layers (the paper: 10 and 1).
        init_scale: spread of the first layer's slopes at the start (inputs lie in [−1, 1]).
        points: an int n (an equidistant grid of n points per coordinate, ends included),
            an array of points ((n,) in 1-D, (n, 2) in 2-D), or None (default): the
            smallest grid, of at least 10 per coordinate, with at least twice as many points
            as the network has weights (`default_points`).
        adam_steps, learning_rate: the Adam stage.
        resample: draw fresh uniform random points at every Adam step (as many as given);
            the L-BFGS and Levenberg-Marquardt stages always use the fixed `points`.
        lbfgs_steps: the L-BFGS stage.
        lm_steps: the Levenberg-Marquardt stage (0 leaves it out). It stops early once the
            loss has fallen by less than a fraction `LM_RTOL` over `LM_PATIENCE` chunks.
        tol: stop a stage once the mean squared residual falls below it.
        chunk: steps per compiled chunk (progress and stopping are checked between chunks).
        progress: show tqdm bars.
        network: an equinox model to start from instead of a new `sigmoid_mlp`.
        weight: optional w(x) -> scalar (positive) multiplying the residual at each point, so
            the loss is mean((w(x) G(x))²) (Lagaris et al. 1998, eq. 2, weighted). The exact
            solution still zeroes it; the weight only moves the fit to where residuals
            matter most: in a system that amplifies a residual at x by ~‖Φ(b, x)‖ (Φ the
            fundamental matrix of the linearized equation), w ≈ ‖Φ(b, x)‖ balances the
            error at b (`lambda x: jnp.exp(-3 * x)` on the paper's Problem 4). Called on one
            point (a scalar in 1-D, shape (2,) in 2-D); `report` losses are weighted.
        lm_damping: the Levenberg-Marquardt stage's starting damping λ; pass a previous
            report's `lm_damping` with its `network` to continue a stage where it stopped.
        restarts: train from this many random starts (`jr.fold_in(key, i)`, start 0 from
            `key` itself) and keep the one with the smallest validation residual.
        validation: the off-grid check: a number of uniform random points (default 256),
            an array of points, or None/0 to skip it.
        exact: optional exact solution ψ(x) of one point (ψ's shape); the report then gives
            `validation_error` = max |ψ_t − ψ| over the validation points.

    Returns:
        (solution, report): the trained `TrialSolution` (callable) and a `TrainReport`.

    Warns:
        TrialWarning: when the training residual stays above `PLATEAU_RATIO` of the
            starting network's (a local minimum, or too few steps), or when the residual on
            the validation points exceeds `OVERFIT_RATIO` times the one on the collocation
            points (the network interpolates the points: too few points for its weights).

    Raises:
        ValueError: for bad points (empty, NaN, outside the domain, wrong shape), a residual
            returning the wrong shape, an `exact` of the wrong shape, or restarts < 1.

    Choosing the network and the points (Lagaris et al. 1998 used 10 sigmoid units and 10
    points, 10x10 on the square). The training loss alone can mislead in both directions:

    - a network with more weights than points interpolates them: the loss falls to 1e-30
      while the error between the points stays 1e-6..1e-4. Keep at least ~2 points per
      weight (the default grid does); `report.residual_ratio` ≫ 1 shows it.
    - a small network can stall in a local minimum far above zero (∇²ψ = 0 on the unit
      square with ψ(x, 1) = sin πx: loss ≈ 2e-2 for most seeds with 10 units). More units
      and `restarts` escape it; `report.train_residual / report.start_residual` shows it.

    Measured over seeds 0-7 with the default steps (`python benchmarks/trial_defaults.py`;
    success: max |ψ_t − ψ_exact| on a fine grid ≤ 1e-6 for the ODEs, ≤ 1e-5 for ∇²ψ = 0 on
    the unit square with ψ(x, 1) = sin πx; "flagged": failed seeds a `TrialWarning` named):

        problem (Lagaris et al.)    hidden  points            success  flagged  median error
        Problem 1 (first order)     10      10                0/8      7 of 8   5.7e-6
        Problem 1                   10      None (60)         8/8      –        1.9e-8
        Problem 2 (first order)     10      10                2/8      5 of 6   1.9e-6
        Problem 2                   10      None (60)         8/8      –        3.6e-9
        Problem 3 (IVP, 2nd order)  10      10                5/8      3 of 3   8.4e-7
        Problem 3 (IVP)             10      None (60)         8/8      –        1.5e-9
        ∇²ψ = 0                     10      10x10 (= None)    1/8      6 of 7   1.9e-3
        ∇²ψ = 0, restarts=3         10      10x10             6/8      1 of 2   6.3e-6
        ∇²ψ = 0                     20      10x10             0/8      7 of 8   1.3e-4
        ∇²ψ = 0                     20      None (13x13)      6/8      1 of 2   1.5e-6

    Hence `points=None` (the grid with two points per weight) and the paper's 10 units (20
    units help the Laplace problem only with the larger grid, at ~2.5x the time); `restarts`
    stays 1 because it multiplies the cost, and the plateau warning says when to raise it
    (restarts=3 took the Laplace problem from 1/8 to 6/8).
    """
    key = jr.key(0) if key is None else key
    if isinstance(restarts, bool) or not isinstance(restarts, int | np.integer) or restarts < 1:
        raise ValueError(f"restarts must be an int >= 1; got restarts={restarts!r}")
    if restarts > 1 and network is not None:
        raise ValueError(
            "restarts > 1 trains from fresh random networks; leave network=None (or pass "
            "restarts=1 to continue from a network)"
        )
    dtype = jnp.zeros(()).dtype
    for name, v in (("adam_steps", adam_steps), ("lbfgs_steps", lbfgs_steps),
                    ("lm_steps", lm_steps)):
        if v < 0:
            raise ValueError(f"{name} must be >= 0; got {name}={v}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got chunk={chunk}")
    if not lm_damping > 0:
        raise ValueError(f"lm_damping must be > 0; got lm_damping={lm_damping}")
    if weight is not None and not callable(weight):
        raise ValueError(f"weight must be a function w(x) -> scalar or None; got {weight!r}")
    if exact is not None and not callable(exact):
        raise ValueError(f"exact must be a function psi(x) of one point or None; got {exact!r}")

    def make_network(k):
        return sigmoid_mlp(k, problem.dim, problem.conditions.out_shape, hidden, depth,
                           init_scale, dtype)

    keys = [key] + [jr.fold_in(key, i) for i in range(1, restarts)]
    first = network if network is not None else make_network(jr.split(keys[0])[0])
    if points is None:
        n_params = ravel_pytree(eqx.filter(first, eqx.is_inexact_array))[0].size
        xs = grid_points(problem, default_points(problem, int(n_params)), dtype)
    elif isinstance(points, int | np.integer):
        xs = grid_points(problem, int(points), dtype)
    else:
        xs = jnp.asarray(points, dtype)
        want = (xs.shape[0],) if problem.dim == 1 else (xs.shape[0], 2)
        if xs.ndim == 0 or xs.shape != want:
            raise ValueError(
                f"points must have shape (n,) for 1-D problems or (n, 2) on rectangles; "
                f"got {xs.shape}"
            )
        _check_points(problem, xs)
    # Shape checks of the user's functions before any compilation of the training loops.
    jax.eval_shape(TrialSolution(first, problem).residual, xs[0])
    if weight is not None:
        w_shape = jax.eval_shape(weight, xs[0]).shape
        if w_shape != ():
            raise ValueError(
                f"weight must return a scalar for one point x; got shape {w_shape}"
            )
    if exact is not None:
        e_shape = jax.eval_shape(exact, xs[0]).shape
        if e_shape != problem.conditions.out_shape:
            raise ValueError(
                f"exact must return psi's shape {problem.conditions.out_shape} for one point x; "
                f"got shape {e_shape}"
            )
    # One validation set for every restart, drawn apart from the training keys.
    xv = _validation_points(problem, validation, jr.fold_in(key, 2**31 - 1), dtype)

    kw = dict(adam_steps=adam_steps, learning_rate=learning_rate, resample=resample,
              lbfgs_steps=lbfgs_steps, lm_steps=lm_steps, tol=tol, chunk=chunk,
              progress=progress, lm_damping=lm_damping)
    best, checks, total = None, [], 0.0
    for i, k in enumerate(keys):
        k_net, k_pts = jr.split(k)
        net = first if i == 0 else make_network(k_net)
        sol, theta, out = _fit(problem, net, xs, k_pts, weight, **kw)
        total += out["time_s"]
        val, err = _check_of(sol, theta, xv, exact, weight)
        checks.append(val)
        # Rank by the validation residual (the training one without validation points).
        rank = val if xv is not None else out["train_residual"]
        rank = rank if np.isfinite(rank) else np.inf
        if best is None or rank < best[0]:
            best = (rank, i, sol, out, val, err)
    _, i_best, solution, out, val, err = best
    out = dict(out, time_s=total, validation_residual=val, validation_error=err,
               residual_ratio=val / out["train_residual"] if out["train_residual"] > 0
               else float("inf"),
               n_validation=0 if xv is None else int(xv.shape[0]))
    msgs = _warnings_of(out, points)
    for m in msgs:
        warnings.warn(m, TrialWarning, stacklevel=2)
    report = TrainReport(**out, warnings=msgs, restarts=restarts, best_restart=i_best,
                         restart_residuals=tuple(checks))
    return solution, report
