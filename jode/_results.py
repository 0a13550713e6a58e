"""One vocabulary of outcomes for solves, fixed points, fits and fractional solves.

Every jode result carries an int32 `status` whose value is a `RESULTS` member: a value means
the same thing wherever it appears, so a steady state found by `jode.solve` passes the
solve's outcome through unchanged (a step-size underflow stays `DT_UNDERFLOW`), and a fit
that calls a solve can report what the solve said. Each member carries a message; the
entry points add what depends on the call (the solver, max_steps) when they raise.

    sol = jode.solve(f, y0, 0.0, 1.0, throw=False)
    if sol.status != jode.RESULTS.SUCCESS:
        print(jode.RESULTS(int(sol.status)).message)

This is the pattern of optimistix's and diffrax's `RESULTS` (one extensible enumeration
carrying messages), as a plain `enum.IntEnum` so that values are jit- and vmap-friendly
int32 arrays.
"""

from __future__ import annotations

import enum

__all__ = ["RESULTS", "STIFF_HINT", "status_messages"]


class RESULTS(enum.IntEnum):
    """Why a solve, fixed-point solve, fit stage or fractional solve stopped.

    `RESULTS(int(status)).message` explains the outcome and suggests a fix.
    """

    #: An ODE solve reached t1.
    SUCCESS = 0
    #: The step budget (max_steps, or a fit stage's steps) ran out first.
    MAX_STEPS = 1
    #: An ODE step size fell below dtmin or to float resolution.
    DT_UNDERFLOW = 2
    #: A value became NaN or infinite.
    NONFINITE = 3
    #: Newton's method failed even at the smallest step (stiff ODE solvers).
    NEWTON_FAILED = 4
    #: A terminating event (`stop=`) ended an ODE solve before t1 (a success).
    EVENT = 5
    #: A fixed-point residual or a fit's gradient norm / loss change met its tolerance.
    CONVERGED = 6
    #: A fixed-point iteration ran away: its residual grew, or the iterates did.
    DIVERGED = 7
    #: A loop (fit stage, fixed-point iteration) that is still going; never a final status.
    RUNNING = 8

    @property
    def message(self) -> str:
        return _MESSAGES[self]


#: What a non-stiff solver's failure suggests.
STIFF_HINT = "the problem may be stiff: try jode.Kvaerno5() or jode.Rodas5(), or loosen rtol/atol"

_MESSAGES = {
    RESULTS.SUCCESS: "the solve reached t1",
    RESULTS.MAX_STEPS: "the step budget (max_steps) ran out before the goal was met; raise it",
    RESULTS.DT_UNDERFLOW: "the step size fell below dtmin (or to float resolution) before t1",
    RESULTS.NONFINITE: "a value became NaN or infinite; check the function and its parameters "
    "(a blow-up in finite time, a division by zero, a log of a negative number)",
    RESULTS.NEWTON_FAILED: "Newton's method failed to converge even at the smallest step; "
    "check the Jacobian, or loosen the tolerances",
    RESULTS.EVENT: "a terminating event stopped the solve before t1",
    RESULTS.CONVERGED: "the residual (or the gradient norm or loss change) met its tolerance",
    RESULTS.DIVERGED: "the iteration ran away: the residual or the iterates grew without bound",
    RESULTS.RUNNING: "still running",
}


def status_messages(context: str, hints: dict | None = None) -> list[str]:
    """Error messages for `eqx.branched_error_if`, indexed by `RESULTS` value.

    Args:
        context: what failed, e.g. "jode.solve".
        hints: {member: text} replacing a member's generic message for this call.
    """
    hints = {} if hints is None else hints
    return [
        f"{context} failed: {hints.get(r, r.message)}. Pass throw=False to get the result."
        for r in RESULTS
    ]
