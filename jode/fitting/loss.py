"""Trajectory losses: a model's solution at the data's times against the data.

For a parameter vector θ = [y0 entries…, rates…] (or any pytree with a `split`), the
prediction ŷ(t_i; θ) solves dy/dt = f(t, y, args) from y(t0) = y0, and the loss is the
weighted mean square of the residuals

    r_ij(θ) = sqrt(w_ij) (ŷ_j(t_i; θ) − d_ij)            (or log ŷ − log d in log space),
    L(θ; T) = Σ_{i: t_i ≤ T} Σ_j r_ij² / #{(i, j): t_i ≤ T},

the ordinary (weighted) least-squares objective (Bard 1974, *Nonlinear Parameter
Estimation*, §2-4). The window end T (default: all data) lets a fit grow its time window
without recompiling: the solve always covers the whole span and later residuals are masked.

`MultipleShootingLoss` splits the span into segments, each solved from its own fitted initial
state, with a continuity penalty between segments (Bock & Plitt 1984; van Domselaar &
Hemker 1975), which keeps a fit of a chaotic or oscillating system from being trapped by the
local minima of the single-shooting objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from ..ode.adjoint import DirectAdjoint, ForwardMode
from ..ode.solve import solve

_LOG_FLOOR = 1e-12
#: Fits differentiate a loss of at most this many parameters in forward mode (see
#: `TrajectoryLoss.gradient_mode`).
FORWARD_GRADIENT_MAX_PARAMS = 16


def _forward_differentiable(options: dict) -> bool:
    """Whether a solve with these options can be differentiated in forward mode (jode's
    backend with the direct adjoint or forward mode: both run the plain loop under jvp)."""
    adjoint = options.get("adjoint")
    return options.get("backend", "jode") == "jode" and (
        adjoint is None or isinstance(adjoint, DirectAdjoint | ForwardMode))


def _gradient_mode(options: dict, params) -> str:
    size = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
    if _forward_differentiable(options) and size <= FORWARD_GRADIENT_MAX_PARAMS:
        return "forward"
    return "reverse"


def _as_float_array(name, x, ndim=None):
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {arr.shape}")
    return arr


def check_data(ts, data, weights=None, log_space=False):
    """Validate data before tracing: (n,) increasing finite times, (n, d) finite data.

    Raises:
        ValueError: naming the argument and the fix.
    """
    ts_np = _as_float_array("ts", ts, ndim=1)
    data_np = _as_float_array("data", data)
    if data_np.ndim == 1:
        raise ValueError(
            f"data must be 2-D (n_times, n_observed); got shape {data_np.shape}. "
            "For one observed component pass data[:, None]"
        )
    if data_np.ndim != 2:
        raise ValueError(f"data must be 2-D (n_times, n_observed); got shape {data_np.shape}")
    if data_np.shape[0] != ts_np.shape[0]:
        raise ValueError(
            f"ts and data must have the same number of times; got ts of length "
            f"{ts_np.shape[0]} and data of shape {data_np.shape}. Row i of data is the "
            "observation at ts[i]"
        )
    if ts_np.shape[0] < 2:
        raise ValueError(f"need at least two observation times; got {ts_np.shape[0]}")
    if not np.all(np.isfinite(ts_np)):
        raise ValueError("ts contains NaN or infinite values; drop those observations")
    if np.any(np.diff(ts_np) <= 0):
        bad = int(np.argmax(np.diff(ts_np) <= 0))
        raise ValueError(
            f"ts must be strictly increasing; ts[{bad}]={ts_np[bad]} >= ts[{bad + 1}]="
            f"{ts_np[bad + 1]}. Sort the observations by time (np.argsort(ts)) and merge "
            "repeated times"
        )
    if not np.all(np.isfinite(data_np)):
        rows = np.unique(np.nonzero(~np.isfinite(data_np))[0])
        raise ValueError(
            f"data contains NaN or infinite values (rows {rows[:5].tolist()}"
            f"{'…' if rows.size > 5 else ''}); drop those rows, or give them zero weight "
            "after replacing the value by any finite number"
        )
    if weights is not None:
        w = np.asarray(weights)
        try:
            w = np.broadcast_to(w, data_np.shape)
        except ValueError as exc:
            raise ValueError(
                f"weights must broadcast to data's shape {data_np.shape}; got {w.shape}"
            ) from exc
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and >= 0")
    if log_space and np.any(data_np <= 0):
        raise ValueError(
            "log_space=True needs positive data; got entries <= 0. Shift the data, or fit "
            "with log_space=False"
        )
    return ts_np, data_np


class TrajectoryLoss(eqx.Module):
    """Weighted least squares between a model's solution and observed data.

    L(θ; T) = mean over t_i ≤ T of w_ij (ŷ_j(t_i; θ) − d_ij)² (see the module docstring).

    Args:
        vector_field: f(t, y, args), the model (e.g. `jode.models.lotka_volterra`).
        ts: observation times, shape (n,), strictly increasing.
        data: observations, shape (n, d): the full state at each time.
        n_state: how many leading entries of θ are the initial state (the rest are
            args). 0 means the initial state is known: pass it as `y0`.
        y0: the known initial state when n_state=0.
        t0: start of the solve (default ts[0]).
        weights: broadcastable to data's shape (e.g. 1/σ_j² per component).
        log_space: compare log ŷ with log d (positive data, multiplicative noise).
        n_params: the expected length of θ (checked when a fit starts).
        split: θ -> (y0, args) for pytree parameters (overrides n_state); e.g. a
            universal differential equation whose args hold a network.
        names: parameter names for reports.
        solve_options: keyword arguments of `jode.solve` (solver, rtol, atol, backend,
            adjoint, max_steps, n_steps, dt0); default rtol = atol = 1e-8 (1e-6 in
            float32), max_steps=16384.

    Example:
        >>> loss = TrajectoryLoss(jode.models.lotka_volterra, ts, data, n_state=2, n_params=6)
        >>> loss(jnp.array([1.0, 1.0, 1.5, 1.0, 3.0, 1.0]))
    """

    vector_field: Callable = eqx.field(static=True)
    ts: jax.Array
    data: jax.Array
    weights: jax.Array
    t0: jax.Array
    y0: jax.Array | None
    n_state: int = eqx.field(static=True)
    log_space: bool = eqx.field(static=True)
    n_params: int | None = eqx.field(static=True)
    split_fn: Callable | None = eqx.field(static=True)
    names: tuple | None = eqx.field(static=True)
    solve_options: tuple = eqx.field(static=True)

    def __init__(self, vector_field, ts, data, *, n_state=None, y0=None, t0=None,
                 weights=None, log_space=False, n_params=None, split=None, names=None,
                 **solve_options):
        ts_np, data_np = check_data(ts, data, weights, log_space)
        if n_state is None:
            n_state = 0 if (y0 is not None or split is not None) else data_np.shape[1]
        if not isinstance(n_state, int) or n_state < 0:
            raise ValueError(f"n_state must be a non-negative int; got n_state={n_state!r}")
        if split is None and n_state == 0 and y0 is None:
            raise ValueError("with n_state=0 the initial state is known: pass y0=")
        if split is None and n_state not in (0, data_np.shape[1]):
            raise ValueError(
                f"n_state={n_state} but data has {data_np.shape[1]} components: the first "
                "n_state entries of θ are the full initial state (n_state=d), or pass y0= "
                "and n_state=0, or a split= function"
            )
        if split is None and y0 is not None and np.shape(y0) != (data_np.shape[1],):
            raise ValueError(
                f"data has {data_np.shape[1]} columns but y0 has shape {np.shape(y0)}: data "
                "must hold the full state, one column per component of y0 (shape "
                "(n_times, len(y0)))"
            )
        if t0 is not None and float(t0) > float(ts_np[0]):
            raise ValueError(f"t0={t0} must be <= ts[0]={ts_np[0]}")
        dtype = jnp.result_type(float)
        self.vector_field = vector_field
        self.ts = jnp.asarray(ts_np, dtype)
        self.data = jnp.asarray(data_np, dtype)
        w = 1.0 if weights is None else weights
        self.weights = jnp.asarray(np.broadcast_to(np.asarray(w, float), data_np.shape), dtype)
        self.t0 = jnp.asarray(ts_np[0] if t0 is None else t0, dtype)
        self.y0 = None if y0 is None else jnp.asarray(y0, dtype)
        self.n_state = n_state
        self.log_space = bool(log_space)
        self.n_params = n_params
        self.split_fn = split
        self.names = None if names is None else tuple(names)
        # 1e-8 in float64; float32 cannot deliver below ~1e-7, so its default is 1e-6.
        tol = 1e-8 if dtype == jnp.float64 else 1e-6
        opts = dict(rtol=tol, atol=tol, max_steps=16384)
        opts.update(solve_options)
        self.solve_options = tuple(sorted(opts.items()))

    # --- predictions ---------------------------------------------------------------
    def split(self, theta):
        """θ -> (y0, args): the first `n_state` entries are the initial state, the rest args
        (or the user's `split`)."""
        if self.split_fn is not None:
            return self.split_fn(theta)
        if self.n_state == 0:
            return self.y0, theta
        return theta[: self.n_state], theta[self.n_state :]

    def options(self, **overrides) -> dict:
        opts = dict(self.solve_options)
        opts.update(overrides)
        return opts

    def predict(self, theta, ts=None, *, t0=None, t_freeze=None, **overrides):
        """The model's solution at `ts` (default: the data's times), shape (len(ts), d).

        Non-finite θ (an optimizer's trial point gone wrong) or a failed solve give NaN
        predictions, never a raised error: the optimizer then rejects the point.
        With `t_freeze`, the vector field is zero from that time on (the state stays put):
        a window's loss then does not depend on, nor overflow in, the span it masks.
        """
        ok = _all_finite(theta)
        theta = jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), theta)
        y0, args = self.split(theta)
        ts = self.ts if ts is None else ts
        t0 = self.t0 if t0 is None else t0
        opts = self.options(**overrides)
        opts.setdefault("throw", False)
        if t_freeze is None:
            sol = solve(self.vector_field, y0, t0, ts[-1], args, saveat=ts, **opts)
        else:
            field = _Frozen(self.vector_field)
            sol = solve(field, y0, t0, ts[-1], (args, t_freeze), saveat=ts, **opts)
        good = ok & (sol.status == 0) & jnp.all(jnp.isfinite(sol.ys))
        return jnp.where(good, sol.ys, jnp.nan)

    def residuals(self, theta, **overrides):
        """r = sqrt(w) (ŷ − d) (or of the logs), flattened: shape (n d,)."""
        pred = self.predict(theta, **overrides)
        return self._residual_matrix(pred).reshape(-1)

    def _residual_matrix(self, pred):
        if self.log_space:
            diff = jnp.log(jnp.maximum(pred, _LOG_FLOOR)) - jnp.log(self.data)
        else:
            diff = pred - self.data
        return jnp.sqrt(self.weights) * diff

    def masked_mean(self, res, t_end):
        mask = (self.ts <= t_end)[:, None] & (self.weights > 0)
        count = jnp.maximum(jnp.sum(mask), 1).astype(res.dtype)
        sq = jnp.where(mask, res**2, 0.0)
        return jnp.sum(sq) / count

    def freeze_time(self, t_end):
        """The first observation time after the window end T (inf if none): the solve of a
        window's loss stops changing the state there, so a trial model that diverges past
        the window (a network outside the states it was fitted on, or a chaotic system)
        gives neither overflow nor NaN gradients from data the window does not use."""
        return jnp.min(jnp.where(self.ts > t_end, self.ts, jnp.inf))

    def __call__(self, theta, t_end=None):
        """L(θ; T): the mean square residual over observations up to T (default all)."""
        if t_end is None:
            return self.masked_mean(self._residual_matrix(self.predict(theta)), jnp.inf)
        pred = self.predict(theta, t_freeze=self.freeze_time(t_end))
        return self.masked_mean(self._residual_matrix(pred), t_end)

    def gradient_mode(self, params) -> str:
        """How a fit's optimizer differentiates this loss at parameters shaped like
        `params`: "forward" (one tangent per parameter carried through the solve, `jvp`)
        for at most `FORWARD_GRADIENT_MAX_PARAMS` parameters and a solve that forward mode
        runs through (jode's backend, the direct adjoint or `ForwardMode`), else "reverse".

        Both give the gradient of the same discretized solve (to rounding). For a few
        parameters forward mode runs as fast (Lotka-Volterra, 6 parameters: 0.23 vs 0.24 ms
        for value and gradient) and compiles in half the time: one loop where reverse mode
        compiles the primal loop, the checkpointed one and its backward pass (XLA 1.2 vs
        2.5 CPU-s), and an L-BFGS step compiles it twice (the zoom line search's two
        evaluation sites).
        """
        return _gradient_mode(self.options(), params)

    # --- the interface every fit phase uses: params <-> θ ---------------------------
    def init(self, theta):
        return theta

    def extract(self, params):
        return params

    def check_theta(self, theta, batched=False):
        """ValueError if θ has the wrong length or rank (or is not finite)."""
        leaves = jax.tree.leaves(theta)
        if not leaves:
            raise ValueError("theta0 is empty; pass the initial guess of the parameters")
        for leaf in leaves:
            if not np.all(np.isfinite(np.asarray(leaf))):
                raise ValueError("theta0 contains NaN or infinite values")
        arr = np.asarray(leaves[0])
        sliced = self.split_fn is None and self.n_state > 0  # θ[:n_state], θ[n_state:]
        if sliced and (len(leaves) != 1 or arr.ndim != 1 + bool(batched)):
            raise ValueError(
                f"theta0 must be {'a 2-D batch (B, p) of vectors' if batched else 'a vector'}"
                f" [initial state ({self.n_state} entries), then args]; got shapes "
                f"{[np.shape(x) for x in leaves]}"
                + (". For one guess pass batched=False" if batched and arr.ndim == 1 else "")
            )
        if self.n_params is None:
            return
        shape = arr.shape[1:] if batched else arr.shape
        if len(leaves) != 1 or shape != (self.n_params,):
            what = self.names if self.names else f"{self.n_params} entries"
            raise ValueError(
                f"theta0 must be a vector of length n_params={self.n_params} ({what})"
                f"{' per row of the batch' if batched else ''}; got shape {arr.shape}"
            )

    def check_model(self, theta):
        """Evaluate the vector field once at (t0, y0(θ), args(θ)) with index checks and
        raise a ValueError for what would otherwise fit silently: indexing past the end of θ
        (JAX clamps out-of-range indices), entries of a vector θ that the vector field does
        not use, a vector field whose output is not the state's shape, or data whose columns
        are not the state's components. The probe is compiled once per model and shapes.
        """
        err, dy, unused = _probe(self, theta)
        n = theta.shape[0] if unused is not None else None
        message = err.get()
        if message is not None:
            if n is None:
                raise ValueError(
                    f"the vector field indexes past the end of an array at the initial state:"
                    f" {message.strip()}; check theta0 (and split=, if given)"
                )
            raise ValueError(
                f"theta0 has {n} entries but the vector field indexes past the end of args "
                f"({message.strip()}): the first n_state={self.n_state} entries of theta0 "
                f"are the initial state and the other {n - self.n_state} the args. Pass a "
                "theta0 of the model's length (n_params= on the loss checks it up front)"
            )
        if unused is not None:
            idx = np.flatnonzero(np.asarray(unused)) + self.n_state  # entries of θ
            if idx.size:
                raise ValueError(
                    f"theta0 has {n} entries but the vector field does not use entries "
                    f"{idx.tolist()} (their derivative is exactly zero at theta0, so the fit "
                    f"cannot move them and their standard errors are undefined): theta0 is "
                    f"probably too long, or the model ignores those args. With n_state="
                    f"{self.n_state} the entries after the initial state are the args"
                )
        y0, _ = jax.eval_shape(self.split, theta)
        for leaf_y, leaf_dy in zip(jax.tree.leaves(y0), jax.tree.leaves(dy), strict=False):
            if tuple(leaf_y.shape) != tuple(np.shape(leaf_dy)):
                raise ValueError(
                    f"the vector field returns shape {np.shape(leaf_dy)} for a state of shape "
                    f"{tuple(leaf_y.shape)}: dy/dt must have the state's shape. Here data has "
                    f"{self.data.shape[1]} columns, one per state component"
                )
        shapes = [tuple(x.shape) for x in jax.tree.leaves(y0)]
        if shapes != [(self.data.shape[1],)]:
            raise ValueError(
                f"data has {self.data.shape[1]} columns but the state has shape "
                f"{shapes[0] if len(shapes) == 1 else shapes}: data must be (n_times, d), "
                "one column per state component"
            )

    def multiple_shooting(self, segments: int, penalty: float = 10.0):
        """The multiple-shooting version of this loss (see `MultipleShootingLoss`)."""
        return MultipleShootingLoss(self, segments, penalty)


class MultipleShootingLoss(eqx.Module):
    """Multiple shooting (Bock & Plitt 1984): segments solved from their own states.

    The span is cut at data indices k(L−1), k = 0..S−1; segment k starts from a fitted state
    s_k (s_0 is the initial state in θ) and predicts its L data points. The loss is

        L(θ, s) = mean_i r_i² + λ Σ_k |ŷ_k(end) − s_{k+1}|² / (S − 1),

    whose continuity term ties the segments into one trajectory as it goes to zero. The
    segments are solved together with `vmap`. Intermediate states start at the data (the
    observed state at each segment start), so they need data of the full state.
    """

    base: TrajectoryLoss
    segments: int = eqx.field(static=True)
    penalty: float = eqx.field(static=True)

    def __init__(self, base, segments, penalty=10.0):
        if not isinstance(segments, int) or segments < 1:
            raise ValueError(f"segments must be an int >= 1; got segments={segments!r}")
        if not (np.isfinite(penalty) and penalty >= 0):
            raise ValueError(
                f"penalty must be a finite number >= 0 (the continuity weight); got "
                f"penalty={penalty!r}"
            )
        n = base.ts.shape[0]
        if segments > (n - 1) // 2:
            raise ValueError(
                f"segments={segments} is too many for {n} observations: each segment needs "
                f"at least 3 points; use segments <= {(n - 1) // 2}"
            )
        if base.n_state == 0:
            raise ValueError(
                "multiple shooting fits the state at each segment start: use a loss with "
                "n_state = the state dimension (the initial state in θ)"
            )
        self.base = base
        self.segments = segments
        self.penalty = float(penalty)

    @property
    def seg_len(self) -> int:
        n = self.base.ts.shape[0]
        return math.ceil((n - 1) / self.segments) + 1

    def _segment_times(self):
        """(S, L) times; past the last observation they extend with the last spacing."""
        ts = self.base.ts
        n, L, S = ts.shape[0], self.seg_len, self.segments
        idx = np.arange(S)[:, None] * (L - 1) + np.arange(L)[None, :]
        dt = ts[-1] - ts[-2]
        extra = jnp.asarray(np.maximum(idx - (n - 1), 0), ts.dtype)
        times = ts[np.minimum(idx, n - 1)] + extra * dt
        return idx, times

    def init(self, theta):
        idx, _ = self._segment_times()
        starts = self.base.data[idx[1:, 0]]
        return dict(theta=theta, starts=starts)

    def extract(self, params):
        return params["theta"]

    def gradient_mode(self, params) -> str:
        """As `TrajectoryLoss.gradient_mode`, counting the segments' start states."""
        return _gradient_mode(self.base.options(), params)

    def __call__(self, params, t_end=None):
        base = self.base
        t_end = jnp.inf if t_end is None else t_end
        ok = _all_finite(params)
        params = jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), params)
        y0, args = base.split(params["theta"])
        y0 = jnp.asarray(y0)
        states = jnp.concatenate([y0[None], params["starts"]], axis=0)
        idx, times = self._segment_times()
        opts = base.options()
        opts.setdefault("throw", False)

        def one(s, tk):
            sol = solve(base.vector_field, s, tk[0], tk[-1], args, saveat=tk, **opts)
            return jnp.where(sol.status == 0, sol.ys, jnp.nan)

        pred = jax.vmap(one)(states, times)  # (S, L, d)
        pred = jnp.where(ok, pred, jnp.nan)
        n = base.ts.shape[0]
        # Each data point once: drop every segment's last point except the final one.
        first = np.zeros(idx.shape, bool)
        first[:, :-1] = True
        first[-1, -1] = True
        valid = (idx < n) & first
        rows = np.minimum(idx, n - 1)
        data_res = _segment_residuals(base, pred, rows)
        mask = (
            jnp.asarray(valid)[..., None]
            & (base.ts[rows] <= t_end)[..., None]
            & (base.weights[rows] > 0)
        )
        count = jnp.maximum(jnp.sum(mask), 1).astype(data_res.dtype)
        fit_term = jnp.sum(jnp.where(mask, data_res**2, 0.0)) / count
        if self.segments == 1:
            return fit_term
        gaps = pred[:-1, -1] - params["starts"]
        active = (base.ts[rows[1:, 0]] <= t_end)[:, None]
        cont = jnp.sum(jnp.where(active, gaps**2, 0.0)) / (self.segments - 1)
        return fit_term + self.penalty * cont


class _Frozen(eqx.Module):
    """f(t, y, (args, t_freeze)) = f(t, y, args) before t_freeze, 0 from then on."""

    vector_field: Callable = eqx.field(static=True)

    def __call__(self, t, y, args):
        args, t_freeze = args
        dy = self.vector_field(t, y, args)
        return jax.tree.map(lambda v: jnp.where(t < t_freeze, v, jnp.zeros_like(v)), dy)


@eqx.filter_jit
def _probe(loss, theta):
    """(index-check error, f(t0, y0, args), unused-args mask or None) for `check_model`.

    An entry of args is unused when a NaN tangent in it leaves the vector field's tangent
    finite: every arithmetic path from an entry propagates NaN, so only entries that no
    operation reads (or that a select discards at θ) stay finite.
    """

    def field(th):
        y0, args = loss.split(th)
        return loss.vector_field(loss.t0, y0, args)

    err, dy = checkify.checkify(field, errors=checkify.index_checks)(theta)
    unused = None
    if loss.split_fn is None and isinstance(theta, jax.Array) and theta.ndim == 1:
        n = theta.shape[0]
        first = loss.n_state

        def finite_with_nan_in(k):
            tangent = jnp.where(jnp.arange(n) == k, jnp.nan, 0.0).astype(theta.dtype)
            out = jax.jvp(field, (theta,), (tangent,))[1]
            return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(out)]))

        unused = jax.vmap(finite_with_nan_in)(jnp.arange(first, n))
    return err, dy, unused


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _segment_residuals(base, pred, rows):
    data = base.data[rows]
    w = base.weights[rows]
    if base.log_space:
        diff = jnp.log(jnp.maximum(pred, _LOG_FLOOR)) - jnp.log(data)
    else:
        diff = pred - data
    return jnp.sqrt(w) * diff
