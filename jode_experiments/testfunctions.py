"""Classic two-dimensional test functions for optimizers, with their known minima.

Each takes an array of shape (2,) and returns a scalar. The values of the minima are the
standard ones (Dixon & Szegő 1978, *Towards Global Optimisation 2*; Molga & Smutnicki 2005,
"Test functions for optimization needs").
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp


class TestFunction(NamedTuple):
    """A test function with its usual search box and global minima.

    Attributes:
        fn: θ (shape (2,)) -> f(θ).
        name: display name.
        box: ((x_lo, x_hi), (y_lo, y_hi)), the usual domain.
        minimizers: global minimizers, shape (m, 2).
        minimum: the global minimum value.
        local_minimizers: all local minimizers in (and near) the box, the global ones first;
            `jode.optim.compare.local_minima` recomputes them.
    """

    fn: object
    name: str
    box: tuple
    minimizers: tuple
    minimum: float
    local_minimizers: tuple = ()


def six_hump_camel(p):
    """f(x, y) = (4 - 2.1x² + x⁴/3)x² + xy + (-4 + 4y²)y².

    Six local minima; the two global ones f = -1.031628 at ±(0.089842, -0.712656).
    """
    x, y = p[0], p[1]
    return (4.0 - 2.1 * x**2 + x**4 / 3.0) * x**2 + x * y + (-4.0 + 4.0 * y**2) * y**2


def goldstein_price(p):
    """f(x, y) = [1 + (x+y+1)²(19 - 14x + 3x² - 14y + 6xy + 3y²)]
    · [30 + (2x-3y)²(18 - 32x + 12x² + 48y - 36xy + 27y²)].

    Global minimum f = 3 at (0, -1); several local minima (f = 30, 84, 840, …).
    """
    x, y = p[0], p[1]
    a = 1.0 + (x + y + 1.0) ** 2 * (
        19.0 - 14.0 * x + 3.0 * x**2 - 14.0 * y + 6.0 * x * y + 3.0 * y**2
    )
    b = 30.0 + (2.0 * x - 3.0 * y) ** 2 * (
        18.0 - 32.0 * x + 12.0 * x**2 + 48.0 * y - 36.0 * x * y + 27.0 * y**2
    )
    return a * b


def rosenbrock(p):
    """f(x, y) = (1 - x)² + 100 (y - x²)²; global minimum 0 at (1, 1) in a curved valley."""
    x, y = p[0], p[1]
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


CAMEL = TestFunction(
    six_hump_camel,
    "six-hump camel",
    ((-2.0, 2.0), (-1.0, 1.0)),
    ((0.0898420131, -0.712656403021), (-0.0898420131, 0.712656403021)),
    -1.0316284535,
    (
        (0.0898420131, -0.712656403021),
        (-0.0898420131, 0.712656403021),
        (-1.70360671497, 0.796083568673),
        (1.70360671497, -0.796083568673),
        (-1.60710475292, -0.568651454884),
        (1.60710475292, 0.568651454884),
    ),
)
GOLDSTEIN_PRICE = TestFunction(
    goldstein_price,
    "Goldstein-Price",
    ((-2.0, 2.0), (-2.0, 2.0)),
    ((0.0, -1.0),),
    3.0,
    ((0.0, -1.0), (-0.6, -0.4), (1.8, 0.2), (1.2, 0.8)),
)
ROSENBROCK = TestFunction(
    rosenbrock, "Rosenbrock", ((-2.0, 2.0), (-1.0, 3.0)), ((1.0, 1.0),), 0.0, ((1.0, 1.0),)
)

TEST_FUNCTIONS = {"camel": CAMEL, "goldstein_price": GOLDSTEIN_PRICE, "rosenbrock": ROSENBROCK}


def local_minima_table(test: TestFunction, dtype=jnp.float64):
    """(minimizers (m, 2), values (m,), is_global (m,)) of the known local minima."""
    pts = jnp.asarray(test.local_minimizers, dtype)
    vals = jnp.stack([test.fn(p) for p in pts])
    is_global = jnp.abs(vals - test.minimum) < 1e-6
    return pts, vals, is_global
