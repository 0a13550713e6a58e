"""Shared test helpers: tolerances by dtype and tight reference solutions."""

from __future__ import annotations

import numpy as np


def tol(dtype, f64: float, f32: float) -> float:
    return f64 if np.dtype(dtype) == np.float64 else f32


def dop853_reference(f, y0, ts, args, rtol=1e-13, atol=1e-13):
    """scipy's DOP853 at tight tolerances, evaluated at `ts` (the accuracy yardstick)."""
    import jax
    from scipy.integrate import solve_ivp

    ts = np.asarray(ts, dtype=np.float64)
    f_jit = jax.jit(f)
    out = solve_ivp(
        lambda t, y: np.asarray(f_jit(t, y, args), dtype=np.float64),
        (float(ts[0]), float(ts[-1])),
        np.asarray(y0, dtype=np.float64),
        method="DOP853",
        t_eval=ts,
        rtol=rtol,
        atol=atol,
    )
    assert out.success, out.message
    return out.y.T
