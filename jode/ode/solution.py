"""The result of a solve: a pytree with times, states, statistics and a status."""

from __future__ import annotations

import enum

import equinox as eqx
import jax
import jax.numpy as jnp

from .interpolation import evaluate_steps


class Status(enum.IntEnum):
    """Why a solve stopped. `Status(int(sol.status)).message` explains and suggests a fix."""

    SUCCESS = 0
    MAX_STEPS = 1
    DT_UNDERFLOW = 2
    NONFINITE = 3
    NEWTON_FAILED = 4
    EVENT = 5

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_STIFF_HINT = "the problem may be stiff: try jode.Kvaerno5() or jode.Rodas5(), or loosen rtol/atol"
_MESSAGES = {
    Status.SUCCESS: "the solve reached t1",
    Status.MAX_STEPS: "max_steps was reached before t1; raise max_steps, or " + _STIFF_HINT,
    Status.DT_UNDERFLOW: "the step size fell below dtmin (or to float resolution) before t1; "
    + _STIFF_HINT,
    Status.NONFINITE: "the state became NaN or infinite; check the vector field and its "
    "parameters (a blow-up in finite time, a division by zero, a log of a negative number)",
    Status.NEWTON_FAILED: "Newton's method failed to converge even at the smallest step; "
    "check the Jacobian, or loosen the tolerances",
    Status.EVENT: "a terminating event stopped the solve before t1",
}


def status_messages(max_steps: int, solver_name: str) -> list[str]:
    """Messages for `eqx.branched_error_if`, indexed by Status value."""
    implicit = any(
        name in solver_name
        for name in ("Kvaerno", "Rodas", "ImplicitEuler", "ESDIRK", "Rosenbrock")
    )
    out = []
    for status in Status:
        msg = status.message
        if implicit:  # already a stiff solver: suggest what is left to change
            msg = msg.replace(_STIFF_HINT, "loosen rtol/atol, or check the Jacobian and scaling")
        if status is Status.MAX_STEPS:
            msg = (
                f"max_steps={max_steps} was reached before t1 with solver {solver_name}; "
                f"raise max_steps, or " + ("loosen rtol/atol" if implicit else _STIFF_HINT)
            )
        out.append(f"jode.solve failed: {msg}. Pass throw=False to get the partial Solution.")
    return out


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
        t0, t1: the integration interval.
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
            return jax.tree.map(lambda x: jnp.reshape(x, t.shape + x.shape[1:]), out)
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
        return jax.tree.map(lambda x: jnp.reshape(x, t.shape + x.shape[1:]), out)


def raise_on_failure(sol: Solution, max_steps: int, solver_name: str) -> Solution:
    """`sol`, with a run-time error naming the failure and a fix unless it succeeded."""
    failed = (sol.status != Status.SUCCESS) & (sol.status != Status.EVENT)
    return eqx.branched_error_if(sol, failed, sol.status, status_messages(max_steps, solver_name))
