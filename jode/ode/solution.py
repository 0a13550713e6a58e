"""The result of a solve: a pytree with times, states, statistics and a status."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._results import RESULTS, STIFF_HINT
from .._results import status_messages as _status_messages
from .interpolation import evaluate_steps

#: The status vocabulary shared by every jode result (`jode.RESULTS`); `jode.Status` is kept
#: as its name for code written before the fixed-point and fit statuses joined it.
Status = RESULTS


def status_messages(max_steps: int, solver, backend: str = "jode") -> list[str]:
    """Messages for `eqx.branched_error_if`, indexed by `RESULTS` value.

    What a failure suggests depends on the solver's kind (its `implicit` attribute): a
    non-stiff solver is pointed to the stiff ones, a stiff solver to tolerances, scaling
    and the Jacobian.
    """
    implicit = bool(getattr(solver, "implicit", False))
    where = f"solver {solver!r}" + ("" if backend == "jode" else f" ({backend} backend)")
    fix = "loosen rtol/atol, or check the Jacobian and scaling" if implicit else STIFF_HINT
    hints = {
        RESULTS.MAX_STEPS: f"max_steps={max_steps} was reached before t1 with {where}; "
        f"raise max_steps, or {fix}",
        RESULTS.DT_UNDERFLOW: f"the step size fell below dtmin (or to float resolution) "
        f"before t1 with {where}; {fix}",
    }
    return _status_messages("jode.solve", hints)


class Solution(eqx.Module):
    """A solve's result (a pytree: it passes through jit, vmap and grad).

    Attributes:
        ts: save times, shape (n_save,). With `SaveAt(steps=True)`, every accepted step's
            time, padded with inf after the last.
        ys: the state at `ts`: the pytree structure of y0 with a leading time axis.
            Save times never reached (a failed solve) hold NaN; with the default save at
            t1, a failed solve saves the last state it reached, at that time in `ts`.
        stats: dict of int arrays: `steps` (attempted), `accepted`, `rejected`, `nfev`
            (vector-field evaluations), and for implicit solvers `njev`, `nlinsolve`;
            and `t_last` (float): the last time reached, t1 on success, else where the
            solve stopped (e.g. where the state or f became non-finite).
        status: int array, a `jode.Status` value; 0 is success.
        t0, t1: the integration interval (t1 is the event time when an event fired).
        event_t: with `solve(..., event=...)`: the time where the event fired (NaN if none
            did); saves after it are NaN and `evaluate` is NaN past it.
        event_y: the state at `event_t` (NaN if no event fired), the pytree of y0.
        event_index: which event fired (its position in the tuple of events), -1 if none.
    """

    ts: jax.Array
    ys: object
    stats: dict
    status: jax.Array
    t0: jax.Array
    t1: jax.Array
    dense_ts: jax.Array | None = None
    dense_coeffs: jax.Array | None = None
    interpolation: object = None  # the diffrax backend's dense interpolation
    unravel: object = eqx.field(static=True, default=None)
    event_t: jax.Array | None = None
    event_y: object = None
    event_index: jax.Array | None = None

    @property
    def succeeded(self) -> jax.Array:
        return (self.status == Status.SUCCESS) | (self.status == Status.EVENT)

    @property
    def message(self) -> str | list:
        """The status message; for a batch of solutions (`solve_batch`, `jax.vmap`), a
        list of messages per lane (nested lists for several batch axes)."""
        status = np.asarray(self.status)
        if status.ndim == 0:
            return Status(int(status)).message
        return np.vectorize(lambda s: Status(int(s)).message, otypes=[object])(status).tolist()

    def summary(self, max_lanes: int = 10) -> str:
        """Counts per status and the first failing lanes, for a batch or a single solve.

        E.g. "1000 solves: 445 SUCCESS, 555 MAX_STEPS; failing lanes (first 10 of 555):
        [3, 5, ...]; lane 3: MAX_STEPS at t=0.72".

        Args:
            max_lanes: how many failing lanes to list.
        """
        status = np.asarray(self.status).reshape(-1)
        values, counts = np.unique(status, return_counts=True)
        parts = ", ".join(f"{c} {Status(int(v)).name}" for v, c in zip(values, counts))
        text = f"{status.size} solve{'s' if status.size != 1 else ''}: {parts}"
        failed = np.flatnonzero((status != Status.SUCCESS) & (status != Status.EVENT))
        if failed.size:
            shape = np.shape(self.status)
            lanes = [np.unravel_index(i, shape) if len(shape) > 1 else int(i) for i in failed]
            lanes = [tuple(int(j) for j in x) if isinstance(x, tuple) else x for x in lanes]
            text += (
                f"; failing lanes (first {min(max_lanes, failed.size)} of {failed.size}): "
                f"{lanes[:max_lanes]}"
            )
            t_last = self.stats.get("t_last") if isinstance(self.stats, dict) else None
            first = int(failed[0])
            where = ""
            if t_last is not None:
                where = f" at t={float(np.asarray(t_last).reshape(-1)[first]):.6g}"
            text += f"; lane {lanes[0]}: {Status(int(status[first])).name}{where}"
        return text

    def evaluate(self, t):
        """Dense output at time(s) `t` inside [t0, t1]; needs `solve(..., dense=True)`.

        Returns the state's pytree with the shape of `t` leading each leaf.
        """
        if self.interpolation is not None:
            t = jnp.asarray(t)
            flat_t = jnp.reshape(t, (-1,))
            out = jax.vmap(self.interpolation.evaluate)(flat_t)
            out = jax.tree.map(lambda x: jnp.reshape(x, t.shape + x.shape[1:]), out)
            return self._nan_after_event(t, out)
        if self.dense_coeffs is None:
            raise ValueError(
                "Solution.evaluate needs dense output: call jode.solve(..., dense=True)"
            )
        t = jnp.asarray(t, dtype=self.dense_ts.dtype)
        flat_t = jnp.reshape(t, (-1,))
        direction = jnp.where(self.t1 >= self.t0, 1, -1).astype(flat_t.dtype)
        flat = evaluate_steps(
            self.dense_ts, self.dense_coeffs, self.stats["accepted"], flat_t, direction
        )
        out = jax.vmap(self.unravel)(flat)
        out = jax.tree.map(lambda x: jnp.reshape(x, t.shape + x.shape[1:]), out)
        return self._nan_after_event(t, out)

    def _nan_after_event(self, t, out):
        """NaN at times past the event (the solution is not defined there)."""
        if self.event_t is None:
            return out
        d = jnp.where(self.t1 >= self.t0, 1, -1).astype(self.event_t.dtype)
        past = d * t.astype(self.event_t.dtype) > d * self.event_t

        def mask(x):
            p = jnp.reshape(past, past.shape + (1,) * (x.ndim - past.ndim))
            return jnp.where(p, jnp.asarray(jnp.nan, x.dtype), x)

        return jax.tree.map(mask, out)


def raise_on_failure(sol: Solution, max_steps: int, solver, backend: str = "jode") -> Solution:
    """`sol`, with a run-time error naming the failure and a fix unless it succeeded."""
    failed = (sol.status != Status.SUCCESS) & (sol.status != Status.EVENT)
    messages = status_messages(max_steps, solver, backend)
    from .loop import batched

    if batched(sol.status):
        # Under jax.vmap the error fires if any lane failed, with a fixed message: it can
        # name the failure but not how many lanes failed nor which.
        messages = [
            m + " (Batched with jax.vmap: at least one lane failed this way; for the count and "
            "the failing lanes use jode.solve_batch, or pass throw=False and call "
            "sol.summary().)"
            for m in messages
        ]
    return eqx.branched_error_if(sol, failed, sol.status, messages)
