"""One explicit Runge-Kutta step for any tableau.

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

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp

from . import tableaus as tb
from .interpolation import hermite_coeffs, tableau_coeffs


class StepResult(NamedTuple):
    """What one step returns; `coeffs` are the dense-output polynomial in θ ∈ [0, 1]."""

    y1: jnp.ndarray
    f1: jnp.ndarray
    error: jnp.ndarray | None
    coeffs: jnp.ndarray
    ok: jnp.ndarray | bool


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
        coeffs = tableau_coeffs(tableau.interp, y, ks, h)
    return StepResult(y1, f1, error, coeffs, True)


class ExplicitRK(eqx.Module):
    """An explicit Runge-Kutta solver: nothing but its tableau.

    Build one from your own `ButcherTableau` to add a method: `ExplicitRK(my_tableau)`.
    """

    tableau: tb.ButcherTableau = eqx.field(static=True)

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

    def step(self, f, t, y, fy, h, jac=None) -> StepResult:
        del jac
        return rk_step(self.tableau, f, t, y, fy, h)

    def __repr__(self) -> str:
        return f"jode.{self.tableau.name}()"


def _named(tableau: tb.ButcherTableau, doc: str):
    def make() -> ExplicitRK:
        return ExplicitRK(tableau)

    make.__name__ = make.__qualname__ = tableau.name
    make.__doc__ = doc
    return make


Euler = _named(tb.EULER, "Forward Euler, order 1, constant steps only.")
Midpoint = _named(tb.MIDPOINT, "Explicit midpoint rule, order 2, constant steps only.")
Heun = _named(tb.HEUN, "Heun's method, order 2 with embedded Euler (adaptive 2(1)).")
EulerHeun = _named(
    tb.EULER_HEUN,
    "Forward Euler with Heun's error estimate, adaptive 1(2), FSAL: one evaluation per step.",
)
Ralston = _named(tb.RALSTON, "Ralston's method, order 2, constant steps only.")
RK4 = _named(tb.RK4, "The classic fourth-order Runge-Kutta method, constant steps only.")
Bosh3 = _named(tb.BOSH3, "Bogacki-Shampine 3(2), FSAL, cubic dense output.")
Dopri5 = _named(tb.DOPRI5, "Dormand-Prince 5(4), FSAL, 4th-order dense output.")
Tsit5 = _named(tb.TSIT5, "Tsitouras 5(4), FSAL, 4th-order dense output; the default.")
Dopri8 = _named(tb.DOPRI8, "Dormand-Prince DOP853: order 8, 5th-order error estimate.")

#: Named constructors, for error messages and test registries.
EXPLICIT_SOLVERS = {
    m.__name__: m
    for m in (Euler, Midpoint, Heun, EulerHeun, Ralston, RK4, Bosh3, Dopri5, Tsit5, Dopri8)
}
