"""Classic vector fields as pure functions f(t, y, args) -> dy/dt (jnp arrays in and out).

Each takes the state as a 1-D array and the parameters as a 1-D array (or tuple), so the
parameters can be fitted, vmapped and differentiated.
"""

from __future__ import annotations

import jax.numpy as jnp


def lotka_volterra(t, y, args):
    """Predator-prey dynamics (Lotka 1925; Volterra 1926).

    dx/dt = αx − βxy,   dy/dt = −δy + γxy,   with y = (x, y) = (prey, predator) and
    args = (α, β, δ, γ). The classic example uses (1.5, 1, 3, 1) from (1, 1).
    """
    del t
    alpha, beta, delta, gamma = args[0], args[1], args[2], args[3]
    prey, predator = y[0], y[1]
    return jnp.stack(
        [alpha * prey - beta * prey * predator, -delta * predator + gamma * prey * predator]
    )


def lorenz(t, y, args):
    """The Lorenz (1963) system: dx = σ(y − x), dy = x(ρ − z) − y, dz = xy − βz.

    args = (σ, ρ, β); chaotic at (10, 28, 8/3).
    """
    del t
    sigma, rho, beta = args[0], args[1], args[2]
    x, yy, z = y[0], y[1], y[2]
    return jnp.stack([sigma * (yy - x), x * (rho - z) - yy, x * yy - beta * z])


def van_der_pol(t, y, args):
    """Van der Pol's oscillator (1926) as a first-order system.

    dx/dt = v,   dv/dt = μ(1 − x²)v − x;   args = μ (stiff for large μ).
    """
    del t
    mu = args[0] if jnp.ndim(args) else args
    x, v = y[0], y[1]
    return jnp.stack([v, mu * (1 - x**2) * v - x])


def harmonic_oscillator(t, y, args):
    """dx/dt = v, dv/dt = −ω²x; args = ω. Exact: x = x0 cos ωt + (v0/ω) sin ωt."""
    del t
    omega = args[0] if jnp.ndim(args) else args
    return jnp.stack([y[1], -(omega**2) * y[0]])


def stuart_landau(t, y, args):
    """Mean-field Stuart-Landau (Kuramoto-type) oscillator in polar form.

    State (ψ, R): phase and order parameter; args = (γ, ω₀, β, K):

        dψ/dt = ω₀ + (K/2) sin β (1 + R²),
        dR/dt = −γR + (K/2) cos β R(1 − R²).

    The low-dimensional reduction of globally coupled Stuart-Landau/Kuramoto oscillators
    with Lorentzian frequencies (Ott & Antonsen 2008, eq. 12, with phase lag β), as used in
    parameter-recovery demonstrations; R → sqrt(1 − 2γ/(K cos β)) when K cos β > 2γ.
    """
    del t
    gamma, omega0, beta, coupling = args[0], args[1], args[2], args[3]
    r = y[1]
    dpsi = omega0 + 0.5 * coupling * jnp.sin(beta) * (1 + r**2)
    dr = -gamma * r + 0.5 * coupling * jnp.cos(beta) * r * (1 - r**2)
    return jnp.stack([dpsi, dr])


def linear(t, y, args):
    """dy/dt = A y with A = args (n x n); exact solution y(t) = expm(A t) y0."""
    del t
    return args @ y
