"""Dense output: each step's solution as a polynomial in θ = (t - t_n) / h.

Every step hands back coefficients C (shape (d + 1, n)) with y(t_n + θh) = Σ_j C_j θ^j, so
saving at requested times, `Solution.evaluate` and the adjoints share one evaluator.

- Tableau interpolants (Dopri5: Shampine 1986; Tsit5: Tsitouras 2011 §4; Bosh3):
  C_0 = y_n, C_j = h Σ_i P_{i,j-1} k_i.
- Otherwise cubic Hermite interpolation through (y_n, f_n) and (y_{n+1}, f_{n+1})
  (Hairer, Nørsett & Wanner 1993, eq. II.6.7), of order 3 between steps.
"""

from __future__ import annotations

import jax.numpy as jnp


def tableau_coeffs(interp, y0, ks, h):
    """Polynomial coefficients of a tableau's continuous extension."""
    coeffs = [y0]
    for j in range(interp.shape[1]):
        terms = [float(w) * k for w, k in zip(interp[:, j], ks, strict=True) if w != 0.0]
        acc = terms[0]
        for term in terms[1:]:
            acc = acc + term
        coeffs.append(h * acc)
    return jnp.stack(coeffs)


def hermite_coeffs(y0, y1, f0, f1, h):
    """Cubic Hermite: y0 + θ h f0 + θ²(3Δ - h(2f0 + f1)) + θ³(h(f0 + f1) - 2Δ), Δ = y1 - y0."""
    delta = y1 - y0
    return jnp.stack([y0, h * f0, 3 * delta - h * (2 * f0 + f1), h * (f0 + f1) - 2 * delta])


def horner(coeffs, theta):
    """Σ_j C_j θ^j for C of shape (d + 1, ...) and θ broadcasting against C[0]."""
    out = coeffs[-1]
    for c in coeffs[-2::-1]:
        out = out * theta + c
    return out


def evaluate_steps(step_ts, coeffs, n_steps, t, direction):
    """Dense output at times `t` (shape (m,)) from per-step polynomials.

    Args:
        step_ts: step start times, shape (N + 1,), the first `n_steps + 1` valid.
        coeffs: per-step coefficients, shape (N, d + 1, n).
        n_steps: number of valid steps (traced).
        t: query times, shape (m,).
        direction: +1 or -1, the direction of integration.
    """
    s = direction * step_ts
    valid = jnp.arange(s.shape[0], dtype=jnp.asarray(n_steps).dtype) <= n_steps
    s = jnp.where(valid, s, jnp.inf)
    idx = jnp.searchsorted(s, direction * t, side="left") - 1
    idx = jnp.clip(idx, 0, jnp.maximum(n_steps - 1, 0))
    t_start = step_ts[idx]
    h = step_ts[idx + 1] - t_start
    theta = jnp.where(h == 0, 0, (t - t_start) / jnp.where(h == 0, 1, h))
    c = coeffs[idx]  # (m, d + 1, n)
    return horner(jnp.moveaxis(c, 1, 0), theta[:, None])
