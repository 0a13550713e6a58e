"""Fit strategies for hard problems: growing time windows and multiple shooting.

A strategy turns (loss, stages) into a list of phases, each one stage run on one loss:

- `GrowingWindows`: fit the first part of the data, then more, to the whole span, each
  phase starting from the last (Kidger 2021, *On Neural Differential Equations*, §2.2.4, on
  fitting long or chaotic trajectories). The window is a masked loss, so it compiles once,
  and its solve leaves the state unchanged past the window (`TrajectoryLoss.freeze_time`).
- `MultipleShooting`: segments with their own fitted initial states and a continuity
  penalty (Bock & Plitt 1984), then a single-shooting polish.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import equinox as eqx

from .stages import LBFGS

__all__ = ["GrowingWindows", "MultipleShooting", "Phase"]


class Phase(NamedTuple):
    """One stage run on one loss; `t_end` is the window end (inf: the whole span)."""

    loss: object
    stage: object
    t_end: float
    label: str


class GrowingWindows(eqx.Module):
    """Fit on [t0, T_1], then [t0, T_2], …, the whole span, running the stages in each.

    Args:
        fractions: the window ends as fractions of the data's span, increasing, in (0, 1]
            (a last fraction below 1 adds a final phase on the whole span).
        ends: absolute window end times instead of fractions.
        stages: stages per window (default: the fit's stages).

    Raises:
        ValueError: for empty, non-increasing or non-finite ends, or fractions outside (0, 1].
    """

    fractions: tuple = (0.2, 0.4, 0.6, 0.8, 1.0)
    ends: tuple | None = None
    stages: tuple | None = None

    def __check_init__(self):
        vals = self.ends if self.ends is not None else self.fractions
        name = "ends" if self.ends is not None else "fractions"
        try:
            vals = tuple(float(v) for v in vals)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a sequence of numbers; got {name}={vals!r}") from exc
        if len(vals) == 0 or any(b <= a for a, b in zip(vals, vals[1:], strict=False)):
            raise ValueError(f"window {name} must be increasing and non-empty; got {name}={vals}")
        if not all(math.isfinite(v) for v in vals):
            raise ValueError(f"window {name} must be finite; got {name}={vals}")
        if self.ends is None and not (vals[0] > 0 and vals[-1] <= 1):
            raise ValueError(
                f"fractions must lie in (0, 1] (a fraction of the data's span); got "
                f"fractions={vals}. For absolute times pass ends=(...)"
            )

    def phases(self, loss, stages):
        t0, t1 = float(loss.ts[0]), float(loss.ts[-1])
        ends = self.ends or tuple(t0 + f * (t1 - t0) for f in self.fractions)
        ends = tuple(float(e) for e in ends)
        stages = self.stages or stages
        out = []
        for end in ends:
            label_end = end if end < t1 else float("inf")
            out += [Phase(loss, s, label_end, f"window t<={end:.3g}") for s in stages]
        if ends[-1] < t1:
            out += [Phase(loss, s, float("inf"), "full span") for s in stages]
        return out


class MultipleShooting(eqx.Module):
    """Multiple shooting over `segments` pieces, then single-shooting polish stages.

    Args:
        segments: the number of segments S (each needs >= 3 observations).
        penalty: the weight λ >= 0 of the continuity term.
        polish: stages of the final single-shooting fit (default: one L-BFGS).

    Raises:
        ValueError: for segments < 1 or a negative or non-finite penalty.
    """

    segments: int = 10
    penalty: float = 10.0
    polish: tuple | None = None

    def __check_init__(self):
        if isinstance(self.segments, bool) or not isinstance(self.segments, int) \
                or self.segments < 1:
            raise ValueError(f"segments must be an int >= 1; got segments={self.segments!r}")
        if not (isinstance(self.penalty, numbers.Real) and math.isfinite(self.penalty)
                and self.penalty >= 0):
            raise ValueError(
                f"penalty must be a finite number >= 0 (the continuity weight λ); got "
                f"penalty={self.penalty!r}"
            )

    def phases(self, loss, stages):
        ms = loss.multiple_shooting(self.segments, self.penalty)
        polish = self.polish or (LBFGS(),)
        return [Phase(ms, s, float("inf"), f"multiple shooting S={self.segments}")
                for s in stages] + [Phase(loss, s, float("inf"), "polish") for s in polish]
