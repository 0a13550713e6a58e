"""Eager calls of the public entry points hit a compile cache.

`cached` puts an entry point (`jode.solve`, `jode.fixed_point`, ...) behind
`equinox.filter_jit`, as diffrax does with `diffeqsolve`: arrays are traced, everything else
(the user's function, solver, controller, adjoint, SaveAt's flags, Python numbers, strings)
is part of the cache key, compared by value (solvers and tableaux hash by value; a function
by identity). A repeat eager call with the same function object and the same shapes, dtypes
and options runs the compiled executable without tracing anything.

What the wrapper adds to `eqx.filter_jit`:

- Under an outer transformation (`jax.jit`, `jax.vmap`, `jax.grad`, ...) it calls the entry
  point directly: the outer trace already compiles once, and a nested jit boundary would
  only add a call to the outer program.
- Python floats in the arguments named by `arrays` (initial states, parameters) become
  weakly typed arrays before the jit, so one executable serves every value (a weak type
  promotes exactly as the Python float did).
- Concrete 0-d arrays in the arguments named by `static` (times and step sizes) become
  Python numbers: the entry point sees them concrete, as in an uncached call, so a
  constant-step solve knows its step count and its checks see the values. Python numbers
  there stay static (one executable per value, as for diffrax's Python-float times).
- `check(arguments)` runs before the cached call, on the caller's concrete values: the
  `ValueError`s an entry point raises on array values (save times outside [t0, t1], a
  negative tolerance given as an array) are raised on every call, not only when tracing.
- A cache of at most `maxsize` functions per entry point (least recently used dropped), so
  a loop that passes a new closure each time does not keep every compiled executable.
- Arguments that cannot be hashed (a static leaf without `__hash__`) fall back to the
  uncached call.
"""

from __future__ import annotations

import collections
import functools
import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

try:  # whether any JAX transformation is being traced
    from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:  # pragma: no cover - an older or newer JAX without it
    _trace_state_clean = None


def _tracing(leaves) -> bool:
    if _trace_state_clean is not None:
        return not _trace_state_clean()
    return any(isinstance(x, jax.core.Tracer) for x in leaves)


def _float_to_array(x):
    # bool is an int, not a float; ints stay static (they may be shapes or counts).
    return jnp.asarray(x) if isinstance(x, float | complex) else x


def _to_static(x):
    """A concrete 0-d array as its Python number; anything else unchanged."""
    if isinstance(x, jax.Array | np.ndarray | np.generic) and not isinstance(x, jax.core.Tracer):
        if np.ndim(x) == 0:
            return np.asarray(x).item()
    return x


class _Key:
    """The hashable static part of the entry point's first argument (the user's function).

    A plain function is compared by identity; an equinox Module (a network as vector field)
    by its structure and static fields, its arrays being traced inputs.
    """

    __slots__ = ("static", "_hash")

    def __init__(self, fn):
        dynamic, static = eqx.partition(fn, eqx.is_array)
        self.static = (jax.tree.structure(dynamic), static)
        self._hash = hash(self.static)

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return isinstance(other, _Key) and self.static == other.static


def cached(fn=None, *, check=None, arrays=(), static=(), maxsize: int = 32):
    """Put the entry point `fn` behind a compile cache (see the module docstring).

    Args:
        fn: the entry point; its first parameter is the user's function.
        check: `check(arguments)`, arguments a dict of every parameter by name (defaults
            applied): raises `ValueError` on bad concrete values before the cached call.
        arrays: names of parameters whose Python float leaves become arrays.
        static: names of parameters whose concrete 0-d arrays become Python numbers.
        maxsize: user functions kept per entry point.

    Returns:
        The wrapped entry point; the original is its `__wrapped__`.
    """
    if fn is None:
        return functools.partial(cached, check=check, arrays=arrays, static=static, maxsize=maxsize)
    signature = inspect.signature(fn)
    var_keyword = [
        p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD
    ]
    compiled: collections.OrderedDict = collections.OrderedDict()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _tracing(()):
            return fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        if check is not None:
            check(values)
        # Options forwarded as **kwargs (solve_batch -> solve) are converted alike.
        scopes = [values] + [values[n] for n in var_keyword if n in values]
        for scope in scopes:
            for name in arrays:
                if name in scope:
                    scope[name] = jax.tree.map(_float_to_array, scope[name])
            for name in static:
                if name in scope:
                    scope[name] = _to_static(scope[name])
        args, kwargs = bound.args, bound.kwargs
        try:
            key = _Key(args[0]) if args else None
            leaves, treedef = jax.tree.flatten(
                eqx.filter((args[1:], kwargs), eqx.is_array, inverse=True)
            )
            hash((tuple(leaves), treedef))
        except TypeError:  # an unhashable static argument: no cache for this call
            return fn(*args, **kwargs)
        jitted = compiled.get(key)
        if jitted is None:
            jitted = compiled[key] = eqx.filter_jit(fn)
            if len(compiled) > maxsize:
                compiled.popitem(last=False)
        else:
            compiled.move_to_end(key)
        return jitted(*args, **kwargs)

    wrapper.cache_clear = compiled.clear
    return wrapper


# ---------------------------------------------------------------------------------------
# What each entry point checks on concrete array values before the cached call (the checks
# on Python numbers, shapes and structures run when the entry point is traced).


def check_solve(a: dict) -> None:
    """`jode.solve`'s value checks (interval, tolerances, save times); `a` by name."""
    from .ode import checks
    from .ode.solve import SaveAt

    a = {**a, **a.get("kwargs", {})}  # solve_batch forwards solve's options as **kwargs
    checks.check_interval(a["t0"], a["t1"], a.get("dt0"), a.get("n_steps"), a.get("max_steps", 1))
    checks.check_tolerances(a.get("rtol", 1e-6), a.get("atol", 1e-6))
    saveat = a.get("saveat")
    ts = saveat.ts if isinstance(saveat, SaveAt) else saveat
    if ts is not None:
        checks.check_save_times(ts, a["t0"], a["t1"])


def check_fixed_point(a: dict) -> None:
    """`jode.fixed_point`'s and `jode.steady_state`'s value checks (tolerances, budgets)."""
    from .fixed_point.solve import _check_numbers

    a = {**a, **a.get("kwargs", {})}  # steady_state forwards fixed_point's options
    _check_numbers(
        a.get("rtol", 1e-6),
        a.get("atol", 1e-6),
        a.get("max_steps", 1),
        a.get("divergence_ratio", 2),
    )
