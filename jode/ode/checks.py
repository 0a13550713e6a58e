"""Argument validation for `solve`: ValueErrors before tracing, named and with the fix.

What is concrete (Python numbers, NumPy arrays, shapes, structures) is checked here; what
is traced is checked inside the solve with `eqx.error_if` (see `traced_checks`).
"""

from __future__ import annotations

import inspect
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def _concrete(x):
    """x as a NumPy array if it is known before tracing, else None."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    except TypeError:
        return None


def check_solver(solver, known: dict):
    """The solver must be an instance of a jode solver (not the constructor itself)."""
    if solver is None:
        raise ValueError("solver must be given, e.g. solver=jode.Tsit5()")
    if inspect.isclass(solver) or (callable(solver) and getattr(solver, "__name__", None) in known):
        name = getattr(solver, "__name__", repr(solver))
        raise ValueError(
            f"solver={name} is a constructor, not a solver; call it: solver=jode.{name}()"
        )
    if not hasattr(solver, "step") or not hasattr(solver, "f_evals_per_step"):
        raise ValueError(
            f"unknown solver {solver!r}; use one of "
            + ", ".join(f"jode.{n}()" for n in known)
            + " or jode.ExplicitRK(your_tableau)"
        )


def check_y0(y0, name: str = "y0"):
    """A non-empty pytree of floating-point arrays (`name` is the argument's name)."""
    leaves = jax.tree.leaves(y0)
    if not leaves:
        raise ValueError(f"{name} must contain at least one array; got an empty pytree")
    for leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise ValueError(
                f"{name} must be floating point; got dtype {dtype}. Pass e.g. "
                f"jnp.asarray({name}, dtype=float)"
            )


def check_vector_field(f, t0, y0, args):
    """f(t0, y0, args) must return the structure, shapes and dtypes of y0."""
    try:
        out = eqx.filter_eval_shape(f, t0, y0, args)  # args may hold functions (equinox)
    except Exception as exc:  # the user's function failed: say where
        raise ValueError(
            f"calling the vector field f(t0, y0, args) failed with {type(exc).__name__}: "
            f"{exc}. jode calls f(t, y, args) (the diffrax convention)"
        ) from exc
    y_struct = jax.tree.structure(y0)
    out_struct = jax.tree.structure(out)
    if y_struct != out_struct:
        raise ValueError(
            "the vector field must return the same pytree structure as y0; got "
            f"f(t0, y0, args) -> {out_struct} but y0 is {y_struct}"
        )
    for path_y, leaf_out in zip(jax.tree.leaves(y0), jax.tree.leaves(out), strict=True):
        if jnp.shape(path_y) != leaf_out.shape:
            raise ValueError(
                "the vector field must return arrays shaped like y0; got shape "
                f"{leaf_out.shape} for a leaf of y0 with shape {jnp.shape(path_y)}"
            )


def check_tolerances(rtol, atol):
    for name, tol in (("rtol", rtol), ("atol", atol)):
        for leaf in jax.tree.leaves(tol):
            value = _concrete(leaf)
            if value is not None and (np.any(~np.isfinite(value)) or np.any(value <= 0)):
                raise ValueError(
                    f"{name} must be > 0 and finite; got {name}={value.tolist()}. "
                    "Tolerances are relative/absolute error bounds, e.g. 1e-6"
                )


#: An rtol below this many machine epsilons of the state's dtype asks for more accuracy than
#: the dtype holds. Measured (Tsit5, Lotka-Volterra on [0, 10], error against scipy at
#: rtol 1e-13): float32 matches float64 down to rtol = atol = 1e-7 (0.8 eps) and is 16x worse
#: at 1e-8 (0.08 eps), so the floor is one eps: a larger one would warn on the default
#: tolerances (1e-6), which float32 delivers.
PRECISION_EPS = 1.0


def warn_tolerances_below_precision(rtol, atol, y0):
    """Warn (before tracing) when rtol is below `PRECISION_EPS` eps of y0's dtype.

    Below it the rounding errors of the stages, of the error estimate and of the running
    sum exceed the requested relative error, while the error estimate (itself rounded)
    keeps reporting success: Tsit5 on Lotka-Volterra at rtol = atol = 1e-8 is 16x less
    accurate in float32 than in float64. atol is an absolute bound, which floating point
    meets near zero at any size, so it is not compared.
    """
    del atol
    leaves = jax.tree.leaves(y0)
    if not leaves:
        return
    dtype = jnp.result_type(*leaves)
    if not jnp.issubdtype(dtype, jnp.inexact):
        return
    floor = PRECISION_EPS * float(jnp.finfo(dtype).eps)
    values = [_concrete(leaf) for leaf in jax.tree.leaves(rtol)]
    values = [v for v in values if v is not None and v.size]
    if not values:
        return
    low = min(float(np.min(v)) for v in values)
    if low < floor:
        warnings.warn(
            f"rtol={low:g} is below what {jnp.dtype(dtype).name} can deliver (eps = "
            f"{floor:.2g}): rounding errors will exceed the tolerance while the solve reports "
            'success. Use float64: jax.config.update("jax_enable_x64", True) at startup and '
            f"float64 arrays for y0, or rtol >= {floor:.2g}",
            stacklevel=3,
        )


def check_interval(t0, t1, dt0, n_steps, max_steps):
    t0c, t1c, dtc = _concrete(t0), _concrete(t1), _concrete(dt0) if dt0 is not None else None
    for name, value in (("t0", t0c), ("t1", t1c)):
        if value is not None and (value.shape != () or not np.isfinite(value)):
            raise ValueError(f"{name} must be a finite scalar; got {name}={value}")
    if dtc is not None:
        if dtc.shape != () or not np.isfinite(dtc) or dtc == 0:
            raise ValueError(f"dt0 must be a finite non-zero scalar; got dt0={dtc}")
        if (
            t0c is not None
            and t1c is not None
            and t1c != t0c
            and np.sign(dtc) != np.sign(t1c - t0c)
        ):
            raise ValueError(
                f"dt0 must point from t0 to t1: got dt0={dtc} for t0={t0c}, t1={t1c}; "
                f"use dt0={-dtc}"
            )
    if n_steps is not None and (not isinstance(n_steps, int) or n_steps < 1):
        raise ValueError(f"n_steps must be a positive int; got n_steps={n_steps!r}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int; got max_steps={max_steps!r}")


def check_save_times(ts, t0, t1):
    """Save times must be 1-D, strictly monotone in the direction of integration, in [t0, t1]."""
    ts_c, t0c, t1c = _concrete(ts), _concrete(t0), _concrete(t1)
    if ts_c is None:
        if jnp.ndim(ts) != 1:
            raise ValueError(f"saveat times must be 1-D; got shape {jnp.shape(ts)}")
        return
    if ts_c.ndim != 1 or ts_c.size == 0:
        raise ValueError(f"saveat times must be a non-empty 1-D array; got shape {ts_c.shape}")
    if not np.all(np.isfinite(ts_c)):
        raise ValueError("saveat times must be finite")
    direction = 1.0
    if t0c is not None and t1c is not None and t1c < t0c:
        direction = -1.0
    if ts_c.size > 1 and np.any(direction * np.diff(ts_c) <= 0):
        order = "increasing" if direction > 0 else "decreasing (t1 < t0)"
        raise ValueError(
            f"saveat times must be strictly {order}; got {ts_c.tolist()[:8]}"
            + ("..." if ts_c.size > 8 else "")
            + ". Sort them and drop duplicates, e.g. jnp.unique(ts)"
        )
    if t0c is not None and t1c is not None:
        lo, hi = min(t0c, t1c), max(t0c, t1c)
        span = max(abs(hi - lo), 1.0)
        if ts_c.min() < lo - 1e-12 * span or ts_c.max() > hi + 1e-12 * span:
            raise ValueError(
                f"saveat times must lie in [t0, t1] = [{t0c}, {t1c}]; got times from "
                f"{ts_c.min()} to {ts_c.max()}"
            )


def traced_checks(y0_flat, ts, t0, t1):
    """Checks on traced values, kept in the graph (eqx.error_if returns its input)."""
    y0_flat = eqx.error_if(
        y0_flat, ~jnp.all(jnp.isfinite(y0_flat)), "y0 contains NaN or inf values"
    )
    if ts is not None and ts.shape[0] > 1:
        direction = jnp.where(t1 >= t0, 1, -1).astype(ts.dtype)
        ts = eqx.error_if(
            ts,
            jnp.any(direction * jnp.diff(ts) <= 0),
            "saveat times must be strictly increasing (decreasing when t1 < t0)",
        )
    if ts is not None:
        # As check_save_times does eagerly: a time outside the interval would be
        # extrapolated from the first or last step's polynomial.
        lo, hi = jnp.minimum(t0, t1), jnp.maximum(t0, t1)
        slack = 1e-12 * jnp.maximum(hi - lo, 1).astype(ts.dtype)
        ts = eqx.error_if(
            ts,
            jnp.any((ts < lo - slack) | (ts > hi + slack)),
            "saveat times must lie in [t0, t1] (or [t1, t0] when integrating backwards)",
        )
    return y0_flat, ts
