"""The problem (residual + conditions + domain), the network and the trial solution.

The user writes the equation as a residual G(x, ψ, ψ', ψ'', ...) = 0 (Lagaris et al. 1998,
eq. 1); jode supplies ψ_t and its derivatives by automatic differentiation (`jax.jvp` in
one dimension, `jax.jacfwd`/`jax.hessian` in two), never by finite differences.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .conditions import Boundary, InitialValue


class Problem(eqx.Module):
    """A differential equation G(x, ψ, Dψ, D²ψ, ...) = 0 on a domain, with conditions.

    Args:
        residual: G(x, psi, d1, ..., d_order) -> residual. In one dimension x, psi and the
            derivatives are scalars (arrays of shape (m,) for a system of m equations, and
            the residual must then have shape (m,)); in two dimensions x has shape (2,),
            psi is a scalar, d1 the gradient (2,) and d2 the Hessian (2, 2) (∇²ψ is
            `jnp.trace(d2)`). Nonlinear residuals are fine.
        conditions: `InitialValue(...)` or `Boundary(...)`.
        domain: (a, b) for ODEs; ((a, b), (c, d)) for rectangles [a, b] x [c, d].
        order: highest derivative the residual takes; by default 1 for first-order initial
            value problems and 2 otherwise.

    Raises:
        ValueError: for b <= a; conditions that do not fit the domain; an order the
            conditions cannot serve: in one dimension a trial function fixes as many
            conditions as the equation's order needs, so a second-order residual with one
            initial condition (`InitialValue(x0, value)` without `slope`) is
            under-determined and a first-order one with two boundary conditions
            over-determined; or a residual whose signature does not take
            `(x, psi, d1, ..., d_order)` (checked with `inspect.signature`, before tracing).

    Example (the paper's Problem 2):
        >>> Problem(lambda x, p, dp: dp + p / 5 - jnp.exp(-x / 5) * jnp.cos(x),
        ...         InitialValue(0.0, 0.0), (0.0, 2.0))
    """

    residual: Callable = eqx.field(static=True)
    conditions: InitialValue | Boundary
    lower: tuple = eqx.field(static=True)
    upper: tuple = eqx.field(static=True)
    order: int = eqx.field(static=True)

    def __init__(self, residual, conditions, domain, order=None):
        if not callable(residual):
            raise ValueError(f"residual must be a function G(x, psi, dpsi, ...); got {residual!r}")
        if not isinstance(conditions, InitialValue | Boundary):
            raise ValueError(
                "conditions must be jode.trial.InitialValue(...) or jode.trial.Boundary(...); "
                f"got {conditions!r}"
            )
        lower, upper = _parse_domain(domain)
        conditions.check(lower, upper)
        explicit = order is not None
        order = conditions.order if order is None else int(order)
        if order < 1:
            raise ValueError(f"order must be >= 1; got order={order}")
        if len(lower) == 2 and order > 2:
            raise ValueError(f"order must be <= 2 on rectangles; got order={order}")
        _check_order(residual, conditions, len(lower), order, explicit)
        self.residual = residual
        self.conditions = conditions
        self.lower = lower
        self.upper = upper
        self.order = order

    @property
    def dim(self) -> int:
        return len(self.lower)


def _signature_text(order: int) -> str:
    return "(x, psi, " + ", ".join(f"d{k}" for k in range(1, order + 1)) + ")"


def _takes(residual, n: int):
    """Whether `residual` accepts n positional arguments; None when it has no signature."""
    try:
        sig = inspect.signature(residual)
    except (TypeError, ValueError):  # builtins and some C callables
        return None
    try:
        sig.bind(*range(n))
    except TypeError:
        return False
    return True


def _check_order(residual, conditions, dim, order, explicit):
    """The equation's order against the conditions (1-D) and the residual's arity.

    A 1-D trial function (Lagaris et al. 1998, eqs. 11, 13, 15) builds in exactly
    `conditions.order` conditions; an equation of another order is under- or over-determined.
    """
    cond_name = type(conditions).__name__
    fits = _takes(residual, order + 2)
    # The order the residual's own arity suggests, when it does not take order + 2 arguments.
    wants = None
    if fits is False:
        wants = next((k for k in range(1, 5) if _takes(residual, k + 2)), None)
    if dim == 1:
        need = order if explicit or wants is None else wants
        if isinstance(conditions, InitialValue) and need > conditions.order:
            raise ValueError(
                f"under-determined problem: the equation is of order {need} (residual "
                f"{_signature_text(need)}) but InitialValue gives {conditions.order} "
                "condition(s); a second-order equation needs psi(x0) and psi'(x0): pass "
                "InitialValue(x0, value, slope=...), or Boundary(left=..., right=...) for a "
                "boundary value problem"
            )
        if explicit and order != conditions.order:
            kind = "under" if order > conditions.order else "over"
            fix = ("drop slope: a first-order equation takes psi(x0) only"
                   if isinstance(conditions, InitialValue)
                   else "use InitialValue(x0, value) for a first-order equation")
            raise ValueError(
                f"{kind}-determined problem: order={order} but {cond_name} gives "
                f"{conditions.order} condition(s), which fix an equation of order "
                f"{conditions.order}; {fix}"
            )
    if fits is False:
        hint = ""
        if wants is not None and (dim == 2 or wants == conditions.order):
            hint = (f"; it takes {wants + 2} arguments, as an order-{wants} residual does: "
                    f"pass order={wants} to Problem if that is meant")
        raise ValueError(
            f"residual must take {order + 2} arguments {_signature_text(order)} for this "
            f"order-{order} problem with {cond_name} conditions (d1 = psi', d2 = psi'' in "
            f"1-D; the gradient and the Hessian on rectangles){hint}"
        )


def _parse_domain(domain):
    arr = np.asarray(domain, dtype=float)
    if arr.shape == (2,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] not in (1, 2):
        raise ValueError(
            "domain must be (a, b) or ((a, b), (c, d)); got " + repr(domain)
        )
    for k, (lo, hi) in enumerate(arr):
        if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
            name = "(a, b)" if k == 0 else "(c, d)"
            raise ValueError(
                f"domain {name} must satisfy b > a (finite); got {tuple(arr[k])}; "
                "swap or widen the interval"
            )
    return tuple(arr[:, 0].tolist()), tuple(arr[:, 1].tolist())


@eqx.filter_jit
def sigmoid_mlp(key, in_size: int, out_shape: tuple, hidden: int = 10, depth: int = 1,
                init_scale: float = 2.0, dtype=None) -> eqx.nn.MLP:
    """The paper's network: `depth` hidden layers of `hidden` sigmoid units, linear output.

    N(z) = Σ_i v_i σ(w_i·z + u_i) (Lagaris et al. 1998, eq. 6) for depth 1, applied to the
    input mapped onto [−1, 1]. The first layer's slopes are drawn with standard deviation
    `init_scale` and its biases put each unit's transition at a uniform point of [−1, 1],
    so the units start spread over the domain; output weights start small.
    """
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    k_net, k_w, k_c, k_v = jr.split(key, 4)
    out = "scalar" if out_shape == () else int(np.prod(out_shape))
    net = eqx.nn.MLP(in_size, out, hidden, depth, activation=jax.nn.sigmoid,
                     use_final_bias=False, dtype=dtype, key=k_net)
    first = net.layers[0]
    w = init_scale * jr.normal(k_w, first.weight.shape, dtype) / np.sqrt(in_size)
    centres = jr.uniform(k_c, (first.weight.shape[0], in_size), dtype, -1.0, 1.0)
    b = -jnp.sum(w * centres, axis=1)
    last = net.layers[-1]
    v = jr.normal(k_v, last.weight.shape, dtype) / hidden
    net = eqx.tree_at(lambda n: (n.layers[0].weight, n.layers[0].bias, n.layers[-1].weight),
                      net, (w, b, v))
    return net


class TrialSolution(eqx.Module):
    """ψ_t(x) = A(x) + F(x, N(x)): call it on one point (a scalar in 1-D, shape (2,) in 2-D).

    `evaluate(xs)` maps it over a batch (leading axis); `derivatives(x)` returns
    (ψ, ψ', ..., ψ^(order)) as the residual sees them.
    """

    network: eqx.nn.MLP
    problem: Problem

    def _psi(self):
        lower = jnp.asarray(self.problem.lower)
        upper = jnp.asarray(self.problem.upper)

        def net(x):
            z = (2 * x - (lower + upper).astype(x.dtype)) / (upper - lower).astype(x.dtype)
            return self.network(z)

        return self.problem.conditions.trial(net, self.problem.lower, self.problem.upper)

    def __call__(self, x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.zeros(()).dtype)
        if self.problem.dim == 1:
            if x.shape != ():
                raise ValueError(
                    f"a 1-D trial solution takes a scalar x; got shape {x.shape} "
                    "(use .evaluate(xs) for a batch)"
                )
            return self._psi()(x[None])
        if x.shape != (2,):
            raise ValueError(
                f"a 2-D trial solution takes x of shape (2,); got {x.shape} "
                "(use .evaluate(xs) for a batch)"
            )
        return self._psi()(x)

    def evaluate(self, xs):
        """ψ_t over a batch: xs of shape (n,) in 1-D or (n, 2) in 2-D (jit-compiled)."""
        return _evaluate(self, jnp.asarray(xs))

    def derivatives(self, x):
        """(ψ, D¹ψ, ..., D^order ψ) at one point, by forward-mode differentiation."""
        order = self.problem.order
        if self.problem.dim == 1:
            fns = [self]
            for _ in range(order):
                fns.append(_directional(fns[-1]))
            return tuple(f(x) for f in fns)
        psi = self(x)
        grad = jax.jacfwd(self)(x)
        if order == 1:
            return psi, grad
        return psi, grad, jax.hessian(self)(x)

    def residual(self, x):
        """G at one point; checked to have ψ's shape."""
        derivs = self.derivatives(x)
        out = jnp.asarray(self.problem.residual(x, *derivs))
        expected = self.problem.conditions.out_shape
        if out.shape != expected:
            raise ValueError(
                f"residual must return an array of shape {expected} (the shape of psi); "
                f"got shape {out.shape}. Return one equation per component of psi"
            )
        return out


@eqx.filter_jit
def _evaluate(solution, xs):
    return jax.vmap(solution)(xs)


def _directional(f):
    # d/dx of a scalar-input function by one forward-mode pass; nesting gives any order.
    return lambda x: jax.jvp(f, (x,), (jnp.ones_like(x),))[1]
