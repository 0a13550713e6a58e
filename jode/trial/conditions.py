"""Initial and boundary conditions that build trial functions satisfying them exactly.

A trial solution (Lagaris, Likas & Fotiadis 1998, eq. 4) is

    ψ_t(x) = A(x) + F(x, N(x; θ)),

where A meets the conditions and F vanishes on them (or, on a Neumann edge, has a vanishing
derivative), so the conditions hold for every θ. The constructions here are the paper's:

- first-order initial value problem ψ(a) = A:                 ψ_t = A + (x − a) N      (eq. 11)
- second-order initial value problem ψ(a) = A, ψ'(a) = A':     ψ_t = A + A'(x − a) + (x − a)² N
                                                                                        (eq. 13)
- two-point Dirichlet problem ψ(a) = A, ψ(b) = B:
      ψ_t = [A(b − x) + B(x − a)]/(b − a) + (x − a)(b − x) N                          (eq. 15)
- Dirichlet data on the four edges of a rectangle: A(x, y) of eq. 19 (a Boolean sum of the
  linear interpolations across x and across y) and F = (x − a)(b − x)(y − c)(d − y) N;
- a Neumann edge (∂ψ/∂y(x, d) = g(x)):  F = (x − a)(b − x)(y − c)[N − N(x, d) − (d − c) ∂_y N(x, d)]
  (eq. 22 on the unit square).

Mixed edges are handled one coordinate at a time: across each coordinate a 1-D operator
interpolates the data (`_interpolate`) and another removes what the network would add on
the boundary (`_correct`); the 2-D A is the Boolean sum P_x + P_y − P_x P_y, which reduces
to the paper's eq. 19 and its Neumann variant.

References:
    I. E. Lagaris, A. Likas, D. I. Fotiadis, "Artificial neural networks for solving ordinary
    and partial differential equations", IEEE Trans. Neural Networks 9(5):987-1000, 1998.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

DIRICHLET = "dirichlet"
NEUMANN = "neumann"


class Dirichlet(eqx.Module):
    """ψ = g on a boundary point or edge.

    Args:
        g: a number (1-D problems or a constant edge), or a function of the coordinate that
            runs along the edge (x on the bottom/top edges, y on the left/right edges).
    """

    g: Callable | float | jax.Array = eqx.field(static=True)
    kind: str = eqx.field(static=True, default=DIRICHLET)


class Neumann(eqx.Module):
    """∂ψ/∂x_k = g on a boundary point or edge, with x_k the coordinate normal to it.

    The derivative is taken along the coordinate axis (∂ψ/∂y on the bottom and top edges,
    ∂ψ/∂x on the left and right ones), not along the outward normal, as in the paper's
    Problem 7, ∂ψ/∂y(x, 1) = 2 sin πx.
    """

    g: Callable | float | jax.Array = eqx.field(static=True)
    kind: str = eqx.field(static=True, default=NEUMANN)


def _edge_value(cond, s):
    g = cond.g
    out = g(s) if callable(g) else jnp.asarray(g, dtype=jnp.result_type(s))
    return jnp.asarray(out, dtype=jnp.result_type(s))


def _interpolate(kinds, lo, hi, d_lo, d_hi, t):
    """The 1-D operator P: a function of t on [lo, hi] meeting the two end conditions.

    d_lo, d_hi are the data (values for Dirichlet, derivatives for Neumann) at the ends.
    """
    k_lo, k_hi = kinds
    if k_lo == DIRICHLET and k_hi == DIRICHLET:
        return ((hi - t) * d_lo + (t - lo) * d_hi) / (hi - lo)
    if k_lo == DIRICHLET:  # value at lo, slope at hi
        return d_lo + (t - lo) * d_hi
    if k_hi == DIRICHLET:  # slope at lo, value at hi
        return d_hi + (t - hi) * d_lo
    raise AssertionError("Neumann at both ends is rejected by the checks")


def _axis_derivative(h, x, axis):
    e = jnp.zeros_like(x).at[axis].set(1)
    return jax.jvp(h, (x,), (e,))[1]


def _at(x, axis, value):
    return x.at[axis].set(jnp.asarray(value, dtype=x.dtype))


def _correct(kinds, lo, hi, h, x, axis):
    """The 1-D operator F along `axis` applied to the function h: zero (Dirichlet) or zero
    slope (Neumann) at both ends, whatever h is (eqs. 15 and 22 of the paper)."""
    t = x[axis]
    k_lo, k_hi = kinds
    if k_lo == DIRICHLET and k_hi == DIRICHLET:
        return (t - lo) * (hi - t) * h(x)
    if k_lo == DIRICHLET:
        x_hi = _at(x, axis, hi)
        return (t - lo) * (h(x) - h(x_hi) - (hi - lo) * _axis_derivative(h, x_hi, axis))
    x_lo = _at(x, axis, lo)
    return (hi - t) * (h(x) - h(x_lo) + (hi - lo) * _axis_derivative(h, x_lo, axis))


def _corner_quantity(cond, s, differentiate):
    s = jnp.asarray(s, dtype=float)
    if differentiate:
        return float(jax.grad(lambda t: _edge_value(cond, t))(s))
    return float(_edge_value(cond, s))


def _check_corner(name_x, cond_x, x, name_y, cond_y, y):
    """Data meeting at a corner must come from one smooth ψ: equal values (Dirichlet and
    Dirichlet), ∂_y of the x-edge value = the y-edge slope (Dirichlet and Neumann), and so on
    (Neumann and Neumann: both give ψ_xy)."""
    v_x = _corner_quantity(cond_x, y, differentiate=cond_y.kind == NEUMANN)
    v_y = _corner_quantity(cond_y, x, differentiate=cond_x.kind == NEUMANN)
    if not np.isclose(v_x, v_y, rtol=1e-8, atol=1e-10):
        raise ValueError(
            f"Boundary: the {name_x} ({cond_x.kind}) and {name_y} ({cond_y.kind}) data are "
            f"incompatible at the corner ({x}, {y}): {v_x} vs {v_y}; the conditions are "
            "inconsistent with this domain (they must come from one smooth solution)"
        )


class InitialValue(eqx.Module):
    """ψ(x0) = value and, for second-order equations, ψ'(x0) = slope.

    `value` may be a vector: a system of first-order ODEs, one network output per component
    (the paper's Problem 4). The trial functions are eqs. 11 and 13 of the paper:
    ψ_t = A + (x − x0) N and ψ_t = A + A'(x − x0) + (x − x0)² N.

    Args:
        x0: where the conditions hold; must lie in the problem's domain (usually its start).
        value: ψ(x0), a number or a 1-D array for a system.
        slope: ψ'(x0), same shape as `value`, or None for a first-order problem.
    """

    x0: float = eqx.field(static=True)
    value: np.ndarray = eqx.field(converter=np.asarray)
    slope: np.ndarray | None = eqx.field(default=None)

    def __check_init__(self):
        if self.value.ndim > 1:
            raise ValueError(
                f"InitialValue: value must be a number or a 1-D array; got shape "
                f"{self.value.shape}"
            )
        if self.slope is not None and np.shape(self.slope) != self.value.shape:
            raise ValueError(
                f"InitialValue: slope must have the shape of value {self.value.shape}; got "
                f"{np.shape(self.slope)}"
            )

    @property
    def order(self) -> int:
        return 1 if self.slope is None else 2

    @property
    def out_shape(self) -> tuple:
        return self.value.shape

    def check(self, lower, upper):
        if np.size(lower) != 1:
            raise ValueError(
                "InitialValue conditions need a 1-D domain (a, b); got a "
                f"{np.size(lower)}-D domain"
            )
        if not lower[0] <= self.x0 <= upper[0]:
            raise ValueError(
                f"InitialValue: x0={self.x0} lies outside the domain [{lower[0]}, {upper[0]}]; "
                "set the domain to start at x0"
            )

    def trial(self, net, lower, upper):
        del lower, upper

        def psi(x):
            s = x[0] - self.x0
            a = jnp.asarray(self.value, dtype=x.dtype)
            if self.slope is None:
                return a + s * net(x)
            return a + jnp.asarray(self.slope, dtype=x.dtype) * s + s**2 * net(x)

        return psi


class Boundary(eqx.Module):
    """Conditions on the ends of an interval or the four edges of a rectangle.

    One-dimensional problems give `left` (x = a) and `right` (x = b) with numbers as data.
    Rectangles [a, b] x [c, d] give all four: `left`/`right` carry functions of y,
    `bottom` (y = c) / `top` (y = d) functions of x. Each is `Dirichlet(g)` or `Neumann(g)`;
    the two ends across one coordinate cannot both be Neumann (the solution would not be
    unique for the paper's equations). Dirichlet data must agree at shared corners.

    Example (the paper's Problem 7):
        >>> Boundary(left=Dirichlet(0.0), right=Dirichlet(0.0), bottom=Dirichlet(0.0),
        ...          top=Neumann(lambda x: 2 * jnp.sin(jnp.pi * x)))
    """

    left: Dirichlet | Neumann
    right: Dirichlet | Neumann
    bottom: Dirichlet | Neumann | None = None
    top: Dirichlet | Neumann | None = None

    def __check_init__(self):
        for name in ("left", "right", "bottom", "top"):
            c = getattr(self, name)
            if c is not None and not isinstance(c, Dirichlet | Neumann):
                raise ValueError(
                    f"Boundary: {name} must be jode.trial.Dirichlet(g) or Neumann(g); got {c!r}"
                )
        if (self.bottom is None) != (self.top is None):
            raise ValueError("Boundary: give both bottom and top (a rectangle) or neither")
        pairs = [("left", "right")] + ([("bottom", "top")] if self.bottom is not None else [])
        for lo, hi in pairs:
            if getattr(self, lo).kind == NEUMANN and getattr(self, hi).kind == NEUMANN:
                raise ValueError(
                    f"Boundary: {lo} and {hi} are both Neumann, which leaves the solution "
                    "undetermined; make one of them Dirichlet"
                )

    @property
    def dim(self) -> int:
        return 1 if self.bottom is None else 2

    @property
    def order(self) -> int:
        return 2

    @property
    def out_shape(self) -> tuple:
        return ()

    def _pairs(self):
        pairs = [(self.left, self.right)]
        if self.dim == 2:
            pairs.append((self.bottom, self.top))
        return pairs

    def check(self, lower, upper):
        if np.size(lower) != self.dim:
            raise ValueError(
                f"Boundary with {'2 edges' if self.dim == 1 else '4 edges'} needs a "
                f"{self.dim}-D domain; got a {np.size(lower)}-D domain"
            )
        if self.dim == 1:
            for name in ("left", "right"):
                g = getattr(self, name).g
                if callable(g) or np.ndim(g) != 0:
                    raise ValueError(
                        f"Boundary: {name} data of a 1-D problem must be a number; got {g!r}"
                    )
            return
        (a, c), (b, d) = lower, upper
        for ex, x in (("left", a), ("right", b)):
            for ey, y in (("bottom", c), ("top", d)):
                _check_corner(ex, getattr(self, ex), x, ey, getattr(self, ey), y)

    def _boundary_function(self, lower, upper):
        """A(x): meets every condition (the Boolean sum P_x + P_y − P_x P_y, eq. 19)."""
        kx = (self.left.kind, self.right.kind)
        a, b = lower[0], upper[0]
        if self.dim == 1:

            def boundary_1d(x):
                d_lo = _edge_value(self.left, jnp.asarray(a, dtype=x.dtype))
                d_hi = _edge_value(self.right, jnp.asarray(b, dtype=x.dtype))
                return _interpolate(kx, a, b, d_lo, d_hi, x[0])

            return boundary_1d
        ky = (self.bottom.kind, self.top.kind)
        c, d = lower[1], upper[1]

        def p_y(x):
            return _interpolate(
                ky, c, d, _edge_value(self.bottom, x[0]), _edge_value(self.top, x[0]), x[1]
            )

        def p_x_of(h_lo, h_hi, x):
            return _interpolate(kx, a, b, h_lo, h_hi, x[0])

        def x_data(h, cond, x, at):
            # The data P_x needs from h on the edge x = at: its value or its x-derivative.
            xe = _at(x, 0, at)
            return h(xe) if cond.kind == DIRICHLET else _axis_derivative(h, xe, 0)

        def boundary(x):
            p_x = p_x_of(_edge_value(self.left, x[1]), _edge_value(self.right, x[1]), x)
            p_xy = p_x_of(x_data(p_y, self.left, x, a), x_data(p_y, self.right, x, b), x)
            return p_x + p_y(x) - p_xy

        return boundary

    def trial(self, net, lower, upper):
        lower = tuple(float(v) for v in lower)
        upper = tuple(float(v) for v in upper)
        boundary = self._boundary_function(lower, upper)
        kinds = [(lo.kind, hi.kind) for lo, hi in self._pairs()]

        def psi(x):
            h = net
            for axis, k in enumerate(kinds):
                h = (lambda g, ax, kk: lambda z: _correct(kk, lower[ax], upper[ax], g, z, ax))(
                    h, axis, k
                )
            return boundary(x) + h(x)

        return psi
