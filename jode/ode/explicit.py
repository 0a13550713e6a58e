"""The solver protocol, and one explicit Runge-Kutta step for any tableau.

Every jode method is a final class deriving from `AbstractSolver` (equinox's "abstract or
final" pattern): `jode.Tsit5` is a type whose validated tableau is a class variable, and
`jode.ExplicitRK(tableau)` runs a user's tableau with the same stepper. The loop in
`solve` sees only the protocol: `init_state`, `step`, `order`, `error_order`,
`f_evals_per_step`, `implicit`, `adaptive` and `stats`.

For a tableau (a, b, c, b_err) the step from (t, y) with size h is

    k_0 = f(t, y)   (carried in from the last step),
    k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j),     i = 1..s-1,
    y_1 = y + h Σ_i b_i k_i,      e = h Σ_i b_err_i k_i,

(Hairer, Nørsett & Wanner 1993, *Solving ODEs I*, eq. II.1.8 and §II.4). For an FSAL tableau
the last stage is f(t + h, y_1), so the next step's k_0 is free; for the others f(t + h, y_1)
is evaluated at the end of the step, which the next step would have paid anyway and which
Hermite dense output needs.

The state is a flat 1-D array: `solve` ravels pytrees once, so the stages are plain vector
sums that XLA fuses, and zero coefficients are skipped when the graph is built.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax.numpy as jnp

from . import tableaus as tb
from .interpolation import hermite_coeffs, tableau_coeffs


class StepResult(NamedTuple):
    """What one step returns.

    Attributes:
        y1: the state at t + h.
        f1: f(t + h, y1), the next step's first stage.
        error: the local error estimate (None for a method without one).
        coeffs: the dense-output polynomial in θ ∈ [0, 1].
        ok: False when the step failed (a Newton iteration that did not converge, a
            non-finite value): the controller rejects it and shrinks h.
        state: the solver state for the next step (None for stateless solvers).
    """

    y1: jnp.ndarray
    f1: jnp.ndarray
    error: jnp.ndarray | None
    coeffs: jnp.ndarray
    ok: jnp.ndarray | bool
    state: Any = None


class AbstractSolver(eqx.Module):
    """The interface every jode solver implements; subclass it to add a kind of method.

    A solver is an immutable equinox Module: it compares and hashes by value, so compile
    caches keyed on it hit for equal solvers. `f(t, y)` below is the flat vector field
    (`solve` ravels pytrees and closes over `args`).

    Methods:
        init_state(f, t, y, fy, rtol, atol): the state carried between steps (None if the
            method keeps none); nothing is evaluated.
        step(f, t, y, fy, h, state=None) -> StepResult: one step from (t, y), fy = f(t, y).
        stats(state): counts to add to `Solution.stats` (empty for stateless solvers).

    Properties:
        order, error_order (local order of the error estimate, None without one),
        f_evals_per_step, implicit (a stiff solver: sets failure messages and the diffrax
        mapping), adaptive (has an error estimate).
    """

    @property
    @abc.abstractmethod
    def order(self) -> int:
        """The classical order of the method."""

    @property
    @abc.abstractmethod
    def error_order(self) -> int | None:
        """The local order of the error estimate (sets the controller's exponent)."""

    @property
    @abc.abstractmethod
    def f_evals_per_step(self) -> int:
        """New vector-field evaluations per step (at least, for iterative methods)."""

    @property
    @abc.abstractmethod
    def implicit(self) -> bool:
        """Whether the method is for stiff problems (uses the Jacobian)."""

    @property
    def adaptive(self) -> bool:
        """Whether the method has an error estimate, so that it can adapt its step."""
        return self.error_order is not None

    def init_state(self, f, t, y, fy, rtol=1e-6, atol=1e-6):
        """The state carried from step to step; None for a stateless method."""
        del f, t, y, fy, rtol, atol
        return None

    @abc.abstractmethod
    def step(self, f, t, y, fy, h, state=None) -> StepResult:
        """One step of size h from (t, y), with fy = f(t, y)."""

    def stats(self, state) -> dict:
        """Counts for `Solution.stats` from the final state (none for stateless methods)."""
        del state
        return {}


def _combine(y, h, weights, ks):
    """y + h Σ_j w_j k_j, skipping zero weights (no work in the graph for them)."""
    terms = [float(w) * k for w, k in zip(weights, ks, strict=False) if w != 0.0]
    if not terms:
        return y
    acc = terms[0]
    for term in terms[1:]:
        acc = acc + term
    return acc if y is None else y + h * acc


def rk_stages(tableau: tb.ButcherTableau, f, t, y, fy, h):
    """The stages k_0..k_{s-1} of one explicit step (k_0 = fy is given)."""
    ks = [fy]
    for i in range(1, tableau.stages):
        yi = _combine(y, h, tableau.a[i, :i], ks)
        ks.append(f(t + float(tableau.c[i]) * h, yi))
    return ks


def rk_step(tableau: tb.ButcherTableau, f, t, y, fy, h) -> StepResult:
    """One explicit Runge-Kutta step; see the module docstring for the equations."""
    ks = rk_stages(tableau, f, t, y, fy, h)
    if tableau.fsal:
        # The last stage was evaluated at y + h Σ a_{s-1,j} k_j = y_1: reuse both.
        y1 = _combine(y, h, tableau.a[-1, :-1], ks[:-1])
        f1 = ks[-1]
    else:
        y1 = _combine(y, h, tableau.b, ks)
        f1 = f(t + h, y1)
    error = None if tableau.b_err is None else h * _combine(None, h, tableau.b_err, ks)
    if tableau.interp is None:
        coeffs = hermite_coeffs(y, y1, fy, f1, h)
    else:
        if tableau.interp_a is not None:
            # Extra dense-output stages (DOP853): after f(t + h, y_1), each from all the
            # stages before it. Only the dense output uses them, so when a solve does not
            # interpolate between steps XLA removes them as dead code.
            ks = ks + [f1]
            for row, c in zip(tableau.interp_a, tableau.interp_c, strict=True):
                ks.append(f(t + float(c) * h, _combine(y, h, row[: len(ks)], ks)))
        coeffs = tableau_coeffs(tableau.interp, y, ks, h)
    return StepResult(y1, f1, error, coeffs, True)


class AbstractExplicitRK(AbstractSolver):
    """An explicit Runge-Kutta method: its data is a validated `ButcherTableau`."""

    tableau: eqx.AbstractVar[tb.ButcherTableau]

    @property
    def name(self) -> str:
        return self.tableau.name

    @property
    def order(self) -> int:
        return self.tableau.order

    @property
    def error_order(self) -> int | None:
        return self.tableau.error_order

    @property
    def adaptive(self) -> bool:
        return self.tableau.adaptive

    @property
    def f_evals_per_step(self) -> int:
        return self.tableau.f_evals_per_step

    @property
    def implicit(self) -> bool:
        return False

    def step(self, f, t, y, fy, h, state=None) -> StepResult:
        del state
        return rk_step(self.tableau, f, t, y, fy, h)

    def __repr__(self) -> str:
        # What a user types to build it again; `ExplicitRK` shows its tableau instead.
        return f"jode.{type(self).__name__}()"


class ExplicitRK(AbstractExplicitRK):
    """An explicit Runge-Kutta solver from your own tableau: `ExplicitRK(my_tableau)`.

    Args:
        tableau: a `jode.ButcherTableau` (checked against the order conditions when built).
    """

    tableau: tb.ButcherTableau = eqx.field(static=True)

    def __check_init__(self):
        if not isinstance(self.tableau, tb.ButcherTableau):
            raise ValueError(
                f"tableau must be a jode.ButcherTableau; got {type(self.tableau).__name__}"
            )

    def __repr__(self) -> str:
        return f"jode.ExplicitRK({self.tableau!r})"


class Euler(AbstractExplicitRK):
    """Forward Euler, order 1, constant steps only."""

    tableau: ClassVar[tb.ButcherTableau] = tb.EULER


class Midpoint(AbstractExplicitRK):
    """Explicit midpoint rule, order 2, constant steps only."""

    tableau: ClassVar[tb.ButcherTableau] = tb.MIDPOINT


class Heun(AbstractExplicitRK):
    """Heun's method, order 2 with embedded Euler (adaptive 2(1))."""

    tableau: ClassVar[tb.ButcherTableau] = tb.HEUN


class EulerHeun(AbstractExplicitRK):
    """Forward Euler with Heun's error estimate, adaptive 1(2), FSAL: one evaluation per step."""

    tableau: ClassVar[tb.ButcherTableau] = tb.EULER_HEUN


class Ralston(AbstractExplicitRK):
    """Ralston's method, order 2, constant steps only."""

    tableau: ClassVar[tb.ButcherTableau] = tb.RALSTON


class RK4(AbstractExplicitRK):
    """The classic fourth-order Runge-Kutta method, constant steps only."""

    tableau: ClassVar[tb.ButcherTableau] = tb.RK4


class Bosh3(AbstractExplicitRK):
    """Bogacki-Shampine 3(2), FSAL, cubic dense output."""

    tableau: ClassVar[tb.ButcherTableau] = tb.BOSH3


class Dopri5(AbstractExplicitRK):
    """Dormand-Prince 5(4), FSAL, 4th-order dense output."""

    tableau: ClassVar[tb.ButcherTableau] = tb.DOPRI5


class Tsit5(AbstractExplicitRK):
    """Tsitouras 5(4), FSAL, 4th-order dense output; the default."""

    tableau: ClassVar[tb.ButcherTableau] = tb.TSIT5


class Dopri8(AbstractExplicitRK):
    """Dormand-Prince DOP853: order 8, 5th-order error estimate, 7th-order dense output.

    The dense output (saving between steps, `SaveAt(dense=True)`, events) evaluates three
    more stages per step (Hairer, Nørsett & Wanner 1993, §II.6); `Solution.stats["nfev"]`
    counts the 12 of the step only. A solve that saves only at steps or at t1 skips them.
    """

    tableau: ClassVar[tb.ButcherTableau] = tb.DOPRI8


_BUILTIN = (Euler, Midpoint, Heun, EulerHeun, Ralston, RK4, Bosh3, Dopri5, Tsit5, Dopri8)

#: The built-in explicit methods by name, for error messages and test registries.
EXPLICIT_SOLVERS = {m.__name__: m for m in _BUILTIN}
