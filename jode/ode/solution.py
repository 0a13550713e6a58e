"""The result of a solve: a pytree with times, states, statistics and a status."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

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
            Entries never reached (a failed solve) are inf.
        stats: dict of int arrays: `steps` (attempted), `accepted`, `rejected`, `nfev`
            (vector-field evaluations), and for implicit solvers `njev`, `nlinsolve`.
        status: int array, a `jode.Status` value; 0 is success.
        t0, t1: the integration interval (t1 is the event time when an event fired).
        event_t: with `solve(..., event=...)`: the time where the event fired (NaN if none
            did); saves after it are inf and `evaluate` is NaN past it.
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
    def message(self) -> str:
        """The status message (for an unbatched, concrete solution)."""
        return Status(int(self.status)).message

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
    return eqx.branched_error_if(sol, failed, sol.status, messages)
