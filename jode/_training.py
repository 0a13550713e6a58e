"""One chunked training loop for fits, trial solutions and network trainings.

A training advances a state one compiled chunk of steps at a time (a `lax.scan` of `chunk`
optimizer steps, jitted once) and, between chunks, in Python: reads the loss, moves a
progress bar, writes a checkpoint, and asks its stopping rules whether to go on.

    out = run_chunks(step, state, total=1000, chunk=100, loss_of=loss,
                     stop=(nonfinite, reached(1e-12), stalled(1e-3, 3)))
    out.state, out.steps, out.status        # status: a `jode.RESULTS` member

A stopping rule is a function of the losses after each chunk so far (a list of floats) that
returns a `RESULTS` member to stop with, or None to go on: `nonfinite`, `reached(tol)`,
`stalled(rtol, chunks)`, or the caller's own.

The progress bar (`Progress`) leaves each run's first chunk out of its rate and ETA: that
chunk compiles the step (seconds to minutes) and the later ones reuse it, so a rate that
counts it underestimates the speed by the whole compilation time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._results import RESULTS

__all__ = ["Outcome", "Progress", "nonfinite", "reached", "run_chunks", "stalled"]

Rule = Callable[[Sequence[float]], "RESULTS | None"]


# --- stopping rules --------------------------------------------------------------------
def nonfinite(losses: Sequence[float]) -> RESULTS | None:
    """NONFINITE once the last loss is NaN or infinite."""
    return None if np.isfinite(losses[-1]) else RESULTS.NONFINITE


def reached(tol: float) -> Rule:
    """A rule: CONVERGED once the last loss is <= `tol`."""

    def rule(losses):
        return RESULTS.CONVERGED if losses[-1] <= tol else None

    return rule


def stalled(rtol: float, chunks: int) -> Rule:
    """A rule: CONVERGED once the best loss of the last `chunks` chunks is not `rtol`
    (relatively) below the best before them.

    One flat chunk (e.g. Levenberg-Marquardt growing its damping after rejected steps) does
    not stop the run; `chunks` flat ones in a row do — a patience rule, as in Keras'
    `EarlyStopping(min_delta, patience)` with a relative `min_delta`.
    """
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1; got chunks={chunks}")

    def rule(losses):
        if len(losses) <= chunks:
            return None
        before = min(losses[:-chunks])
        if min(losses[-chunks:]) > (1 - rtol) * before:
            return RESULTS.CONVERGED
        return None

    return rule


# --- progress --------------------------------------------------------------------------
_clock = time.time  # tqdm's clock (its `start_t` is a `time.time()`)


class Progress:
    """A tqdm bar whose rate and ETA leave out the first chunk after each `begin`.

    tqdm with `smoothing=0` computes the rate as (n − initial) / (now − start_t); moving
    `start_t` past the compiling chunk and adding its steps to `initial` leaves that chunk
    out. Steps that were not run (resumed from a checkpoint, the unused budget of a stage
    that stopped early) are `skip`ped: counted on the bar, left out of the rate.

    Args:
        total: steps of the whole bar.
        desc: its label.
        enabled: False makes every method a no-op (no tqdm import).
        compiled: the step was compiled ahead (e.g. `jit(...).lower(...).compile()`): no
            chunk is left out of the rate.
    """

    def __init__(self, total: int, desc: str = "", enabled: bool = True,
                 compiled: bool = False):
        self.compiled = compiled
        self.bar = None
        if enabled and total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                            smoothing=0)
        self.begin()

    def begin(self, desc: str | None = None) -> None:
        """Start a run (optionally relabelled): its first `advance` is left out of the rate."""
        self._compiling = not self.compiled
        self._since = _clock()
        if self.bar is not None and desc is not None:
            self.bar.set_description(desc)

    def advance(self, steps: int, loss: float | None = None, step: int | None = None) -> None:
        """Count `steps` steps just run, and show the loss (and step) reached."""
        if self.bar is None:
            return
        if loss is not None:  # set first, so that the update's refresh shows it
            post = {"loss": f"{loss:.4g}"}
            if step is not None:
                post["step"] = step
            self.bar.set_postfix(post, refresh=False)
        if self._compiling:
            self.bar.start_t += _clock() - self._since
            self.bar.initial += steps
        self._compiling = False
        self.bar.update(steps)

    def skip(self, steps: int) -> None:
        """Count `steps` steps that were not run (left out of the rate)."""
        if self.bar is not None and steps > 0:
            self.bar.initial += steps
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- the loop --------------------------------------------------------------------------
class Outcome(NamedTuple):
    """What `run_chunks` returns: the last state, the steps done (a resumed run's included),
    why it stopped, and the loss after each chunk."""

    state: Any
    steps: int
    status: RESULTS
    losses: list


def run_chunks(
    step: Callable[[Any], Any],
    state,
    *,
    total: int,
    chunk: int,
    loss_of: Callable[[Any], float],
    stop: Sequence[Rule] = (),
    progress: bool | Progress = False,
    desc: str = "",
    on_chunk: Callable[[Any, int, int], None] | None = None,
    steps_of: Callable[[Any], int] | None = None,
    reported: Callable[[Any], RESULTS | None] | None = None,
    done: int = 0,
) -> Outcome:
    """Run `state = step(state)` chunk by chunk until `total` steps are done or a rule stops it.

    After each chunk, in order: the loss is read (`loss_of`), the bar advances, `on_chunk`
    runs (a checkpoint), then `reported` and the rules in `stop` are asked, in order; the
    first to return a `RESULTS` member ends the run with it. A run that uses up its budget
    ends with MAX_STEPS (also a run of `total=0`, which does nothing).

    Args:
        step: state -> state, advancing `chunk` steps (a jitted function).
        state: the state to start from.
        total: the step budget (a run may overshoot it by less than one chunk: chunks are
            whole compiled calls).
        chunk: steps per call of `step`.
        loss_of: state -> float, the loss the bar shows and the rules read.
        stop: stopping rules (`nonfinite`, `reached(tol)`, `stalled(rtol, chunks)`, ...).
        progress: True for a bar of this run alone (labelled `desc`), or a `Progress`
            shared by several runs (the caller `begin`s and closes it).
        on_chunk: called as `on_chunk(state, done, taken)` after each chunk, e.g. to write a
            checkpoint.
        steps_of: state -> the steps done so far, for a step that can stop inside its chunk
            (default: `chunk` more per call).
        reported: state -> a `RESULTS` member once the step has stopped by itself (a
            compiled stage with its own tests), None while it runs; asked before the first
            chunk too, so a finished state (a resumed one) runs no chunk.
        done: steps already done (a resumed run).

    Returns:
        An `Outcome(state, steps, status, losses)`.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got chunk={chunk}")
    own_bar = not isinstance(progress, Progress)
    bar = Progress(total, desc, bool(progress)) if own_bar else progress
    if own_bar:
        bar.skip(min(done, total))
    losses: list[float] = []
    status = reported(state) if reported is not None else None
    try:
        while status is None and done < total:
            state = step(state)
            before, done = done, (steps_of(state) if steps_of is not None else done + chunk)
            loss = float(loss_of(state))
            losses.append(loss)
            bar.advance(min(done, total) - min(before, total), loss, done)
            if on_chunk is not None:
                on_chunk(state, done, done - before)
            status = reported(state) if reported is not None else None
            if status is None:  # the first rule (in order) that stops
                status = next((s for s in (rule(losses) for rule in stop) if s is not None),
                              None)
    finally:
        if own_bar:
            bar.close()
    return Outcome(state, done, RESULTS.MAX_STEPS if status is None else status, losses)
