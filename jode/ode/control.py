"""Step-size control: pure functions of (state, error) -> (accept, next step).

The PID controller follows Söderlind (2002, 2003) in the form used by Hairer & Wanner:
with δ_n = 1 / ‖e_n / (atol + rtol max(|y_n|, |y_{n+1}|))‖_RMS and error order q,

    h_{n+1} = h_n · clip(safety · δ_n^{β1} · δ_{n-1}^{β2} · δ_{n-2}^{β3}, fmin, fmax),
    β1 = (I + P + D)/q,   β2 = -(P + 2D)/q,   β3 = D/q,

and a step is accepted when ‖·‖ ≤ 1. The defaults (P=0, I=1, D=0) are the classic
I-controller h·(safety/err)^(1/q) (Hairer, Nørsett & Wanner 1993, eq. II.4.13). After a
rejection the factor is capped at `safety`, so the retried step is strictly smaller.

The initial step is the Hairer-Nørsett-Wanner algorithm (1993, §II.4, "Starting step size").
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


class PIDController(eqx.Module):
    """Adaptive steps from an embedded error estimate (see the module docstring).

    Args:
        pcoeff, icoeff, dcoeff: the P, I and D coefficients (Söderlind 2003).
        safety: multiplies every proposed factor.
        factormin, factormax: bounds on h_{n+1}/h_n.
        dtmin: smallest step; reaching it is reported as step-size underflow.
        dtmax: largest step.
    """

    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0
    dtmin: float | None = None
    dtmax: float | None = None

    def __check_init__(self):
        if not 0 < self.safety <= 1:
            raise ValueError(f"safety must be in (0, 1]; got safety={self.safety}")
        if not 0 < self.factormin < 1 < self.factormax:
            raise ValueError(
                "need 0 < factormin < 1 < factormax; got "
                f"factormin={self.factormin}, factormax={self.factormax}"
            )


class ConstantStep(eqx.Module):
    """Constant steps of size `dt0` (or (t1 - t0)/n_steps), every step accepted."""


#: Under `jax.vmap`, sums over vectors up to this length are unrolled into elementwise adds:
#: XLA's CPU reduction over a short axis costs several vector-field evaluations per step of
#: a batched solve, while the unrolled sum fuses with the elementwise work around it.
#: Unbatched, the single reduction is the cheaper one.
SMALL = 16


def _unrolled(combine, x):
    acc = x[..., 0]
    for i in range(1, x.shape[-1]):
        acc = combine(acc, x[..., i])
    return acc


@jax.custom_batching.custom_vmap
def _sum(x):
    return jnp.sum(x, dtype=x.dtype)


@_sum.def_vmap
def _sum_batched(axis_size, in_batched, x):
    if not in_batched[0] or x.shape[-1] > SMALL:
        return jnp.sum(x, axis=-1, dtype=x.dtype), in_batched[0]
    return _unrolled(jnp.add, x), True


@jax.custom_batching.custom_vmap
def _all(x):
    return jnp.all(x)


@_all.def_vmap
def _all_batched(axis_size, in_batched, x):
    if not in_batched[0] or x.shape[-1] > SMALL:
        return jnp.all(x, axis=-1), in_batched[0]
    return _unrolled(jnp.logical_and, x), True


def small_sum(x):
    """Σ_i x_i of a 1-D array that carries no derivative (step control, counters)."""
    return _sum(jax.lax.stop_gradient(x))


def all_finite(x):
    """Whether every entry of a 1-D array is finite."""
    return _all(jnp.isfinite(jax.lax.stop_gradient(x)))


def rms_norm(x):
    """‖x‖_RMS = sqrt(Σ x_i² / n)."""
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def scaled_error(error, y0, y1, rtol, atol):
    """‖e / (atol + rtol max(|y0|, |y1|))‖_RMS; a non-finite candidate counts as inf."""
    scale = atol + rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1))
    # Step-size choices are not differentiated (as in diffrax): the gradient of the
    # controller's power law at a zero error estimate is 0 * inf = NaN.
    scaled = jax.lax.stop_gradient(error / scale)
    norm = jnp.sqrt(small_sum(jnp.square(scaled)) / scaled.shape[0])
    return jnp.where(jnp.isfinite(norm), norm, jnp.inf)


def pid_update(controller: PIDController, error_order, err_norm, h, prev_inv):
    """One controller decision.

    Args:
        err_norm: the scaled error norm of the attempted step.
        h: the attempted step (signed).
        prev_inv: array (2,) of the last two accepted steps' inverse errors.

    Returns:
        (accept, h_next, prev_inv_next).
    """
    accept = err_norm <= 1.0
    inv = 1.0 / jnp.maximum(err_norm, 1e-300 if err_norm.dtype == jnp.float64 else 1e-37)
    q = float(error_order)
    c1 = (controller.icoeff + controller.pcoeff + controller.dcoeff) / q
    c2 = -(controller.pcoeff + 2 * controller.dcoeff) / q
    c3 = controller.dcoeff / q
    # x**c as exp(c log x): XLA's CPU `pow` is a scalar library call per element, exp and
    # log are vectorized (the difference is a quarter of a batched step's time).
    log_factor = c1 * jnp.log(inv)
    if c2 != 0:
        log_factor = log_factor + c2 * jnp.log(prev_inv[0])
    if c3 != 0:
        log_factor = log_factor + c3 * jnp.log(prev_inv[1])
    factor = controller.safety * jnp.exp(log_factor)
    fmin = jnp.where(accept, 1.0, controller.factormin)
    fmax = jnp.where(accept, controller.factormax, controller.safety)
    factor = jnp.clip(factor, fmin, fmax)
    factor = jnp.where(jnp.isfinite(err_norm), factor, controller.factormin)
    h_next = h * factor
    if controller.dtmax is not None:
        h_next = jnp.sign(h) * jnp.minimum(jnp.abs(h_next), controller.dtmax)
    inv = jnp.where(jnp.isfinite(err_norm) & (err_norm > 0), inv, 1.0)
    prev_next = jnp.where(accept, jnp.stack([inv, prev_inv[0]]), prev_inv)
    return accept, h_next, prev_next


def initial_step(f, t0, y0, f0, direction, error_order, rtol, atol):
    """Starting step size (Hairer, Nørsett & Wanner 1993, §II.4, steps (a)-(f)).

    d0 = ‖y0/sc‖, d1 = ‖f0/sc‖, h0 = 0.01 d0/d1 (1e-6 if either is tiny), one Euler step to
    estimate d2 = ‖(f(t0 + h0, y0 + h0 f0) - f0)/sc‖ / h0, then
    h1 = (0.01 / max(d1, d2))^(1/q) and h = min(100 h0, h1). Costs one evaluation of f.
    """
    scale = atol + jnp.abs(y0) * rtol
    d0 = rms_norm(y0 / scale)
    d1 = rms_norm(f0 / scale)
    tiny = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(tiny, 1e-6, 0.01 * d0 / jnp.where(tiny, 1.0, d1))
    f_probe = f(t0 + direction * h0, y0 + direction * h0 * f0)
    d2 = rms_norm((f_probe - f0) / scale) / h0
    max_d = jnp.maximum(d1, d2)
    h1 = jnp.where(
        max_d <= 1e-15,
        jnp.maximum(1e-6, h0 * 1e-3),
        (0.01 / jnp.where(max_d <= 1e-15, 1.0, max_d)) ** (1.0 / float(error_order)),
    )
    return direction * jnp.minimum(100 * h0, h1)
