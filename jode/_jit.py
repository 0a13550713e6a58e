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
- Under an outer trace, concrete arrays in the arguments named by `barrier` (an initial
  state captured by the caller's jitted function rather than passed to it) go through
  `jax.lax.optimization_barrier`. As a constant, XLA folds the state into the step loop's
  initial carry and save buffers, and that loop ran 1.5-2.4x slower on CPU (Lotka-Volterra,
  Tsit5, 101 saves: 63-143 us against 42-60 us with y0 an argument); behind the barrier it
  is a run-time value and runs as fast as an argument. Captured parameters (args) fold
  profitably and are left alone.
- A cache of at most `maxsize` functions per entry point (least recently used dropped), so
  a loop that passes a new closure each time does not keep every compiled executable.
- Arguments that cannot be hashed (a static leaf without `__hash__`) fall back to the
  uncached call.
"""

from __future__ import annotations

import collections
import functools
import inspect
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

try:  # whether any JAX transformation is being traced
    from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:  # pragma: no cover - an older or newer JAX without it
    _trace_state_clean = None


def _tracing() -> bool:
    if _trace_state_clean is not None:
        return not _trace_state_clean()
    return False  # pragma: no cover  (then a nested jit, which JAX inlines)


def _float_to_array(x):
    # bool is an int, not a float; ints stay static (they may be shapes or counts).
    return jnp.asarray(x) if isinstance(x, float | complex) else x


def _to_static(x):
    """A concrete 0-d array as its Python number; anything else unchanged."""
    if isinstance(x, jax.Array | np.ndarray | np.generic) and not isinstance(x, jax.core.Tracer):
        if np.ndim(x) == 0:
            return np.asarray(x).item()
    return x


def _unfolded(tree):
    """Concrete arrays of `tree` as values XLA cannot constant-fold."""

    def leaf(x):
        if isinstance(x, np.ndarray | np.generic) or (
            isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
        ):
            return jax.lax.optimization_barrier(jnp.asarray(x))
        return x

    return jax.tree.map(leaf, tree)


def _key(fn):
    """The cache key of the user's function: a plain function by identity; an equinox
    Module (a network as vector field) by its structure and static fields, its arrays being
    traced inputs."""
    if isinstance(fn, types.FunctionType):
        return fn
    dynamic, static = eqx.partition(fn, eqx.is_array)
    return (jax.tree.structure(dynamic), static)


def _convert(args, kwargs, index, names, convert):
    """Apply `convert` to the arguments named `names`, given positionally or by keyword."""
    for name in names:
        if name in kwargs:
            kwargs[name] = convert(kwargs[name])
        elif index.get(name, len(args)) < len(args):
            args[index[name]] = convert(args[index[name]])


def cached(fn=None, *, check=None, arrays=(), static=(), barrier=(), maxsize: int = 32):
    """Put the entry point `fn` behind a compile cache (see the module docstring).

    Args:
        fn: the entry point; its first parameter is the user's function.
        check: `check(arguments)`, arguments a dict of every parameter by name (defaults
            applied, a `**kwargs` parameter as a dict): raises `ValueError` on bad concrete
            values before the cached call.
        arrays: names of parameters whose Python float leaves become arrays.
        static: names of parameters whose concrete 0-d arrays become Python numbers.
        barrier: names of parameters whose concrete arrays, under an outer trace, pass
            through `jax.lax.optimization_barrier` (see the module docstring).
        maxsize: user functions kept per entry point.

    Returns:
        The wrapped entry point; the original is its `__wrapped__`.
    """
    if fn is None:
        return functools.partial(
            cached, check=check, arrays=arrays, static=static, barrier=barrier, maxsize=maxsize
        )
    params = inspect.signature(fn).parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    index = {name: i for i, name in enumerate(positional)}
    defaults = {p.name: p.default for p in params if p.default is not p.empty}
    var_keyword = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)
    compiled: collections.OrderedDict = collections.OrderedDict()

    def floats(tree):
        return jax.tree.map(_float_to_array, tree)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _tracing():
            if barrier:
                args = list(args)
                _convert(args, kwargs, index, barrier, _unfolded)
            return fn(*args, **kwargs)
        if check is not None:
            named = {**defaults, **dict(zip(positional, args, strict=False)), **kwargs}
            if var_keyword is not None:
                named[var_keyword] = {k: v for k, v in kwargs.items() if k not in defaults}
            check(named)
        args = list(args)
        _convert(args, kwargs, index, arrays, floats)
        _convert(args, kwargs, index, static, _to_static)
        try:
            key = _key(args[0]) if args else None
            jitted = compiled.get(key)
        except TypeError:  # an unhashable function: no cache for this call
            return fn(*args, **kwargs)
        if jitted is None:
            jitted = compiled[key] = eqx.filter_jit(fn)
            if len(compiled) > maxsize:
                compiled.popitem(last=False)
        else:
            compiled.move_to_end(key)
        try:
            return jitted(*args, **kwargs)
        except ValueError as exc:
            if "Non-hashable static arguments" not in str(exc):
                raise
        return fn(*args, **kwargs)  # an unhashable option: no cache for this call

    wrapper.cache_clear = compiled.clear
    return wrapper


# ---------------------------------------------------------------------------------------
# What each entry point checks on concrete array values before the cached call (the checks
# on Python numbers, shapes and structures run when the entry point is traced).


@functools.cache
def _imports():
    # Imported on first use: jode.ode and jode.fixed_point import this module.
    from .fixed_point.solve import _check_numbers
    from .ode import checks
    from .ode.solve import SaveAt

    return checks, SaveAt, _check_numbers


def check_solve(a: dict) -> None:
    """`jode.solve`'s value checks (interval, tolerances, save times); `a` by name."""
    checks, SaveAt, _ = _imports()
    a = {**a, **a.get("kwargs", {})}  # solve_batch forwards solve's options as **kwargs
    checks.check_interval(a["t0"], a["t1"], a.get("dt0"), a.get("n_steps"), a.get("max_steps", 1))
    checks.check_tolerances(a.get("rtol", 1e-6), a.get("atol", 1e-6))
    saveat = a.get("saveat")
    ts = saveat.ts if isinstance(saveat, SaveAt) else saveat
    if ts is not None:
        checks.check_save_times(ts, a["t0"], a["t1"])


def check_fixed_point(a: dict) -> None:
    """`jode.fixed_point`'s and `jode.steady_state`'s value checks (tolerances, budgets)."""
    _check_numbers = _imports()[2]
    a = {**a, **a.get("kwargs", {})}  # steady_state forwards fixed_point's options
    _check_numbers(
        a.get("rtol", 1e-6),
        a.get("atol", 1e-6),
        a.get("max_steps", 1),
        a.get("divergence_ratio", 2),
    )
