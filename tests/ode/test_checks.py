"""Bad input gets a named ValueError before tracing."""

import jax.numpy as jnp
import pytest

import jode
from jode.models import lotka_volterra

P = jnp.array([1.5, 1.0, 3.0, 1.0])
Y0 = jnp.array([1.0, 1.0])


def solve(**kw):
    args = dict(f=lotka_volterra, y0=Y0, t0=0.0, t1=1.0, args=P)
    args.update(kw)
    return jode.solve(
        args.pop("f"), args.pop("y0"), args.pop("t0"), args.pop("t1"), args.pop("args"), **args
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(f=lambda t, y, a: y[:1]), "shaped like y0"),
        (dict(f=lambda t, y, a: (y, y)), "same pytree structure"),
        (dict(f=lambda t, y: y), "jode calls f\\(t, y, args\\)"),
        (dict(saveat=jnp.array([0.5, 0.2])), "strictly increasing"),
        (dict(saveat=jnp.array([0.5, 0.5])), "strictly increasing"),
        (dict(saveat=jnp.array([0.5, 2.0])), "must lie in \\[t0, t1\\]"),
        (dict(saveat=jnp.zeros((2, 2))), "1-D"),
        (dict(rtol=-1e-6), "rtol must be > 0"),
        (dict(atol=0.0), "atol must be > 0"),
        (dict(dt0=-0.1, solver=jode.RK4()), "dt0 must point from t0 to t1"),
        (dict(solver=jode.Tsit5), "call it: solver=jode.Tsit5\\(\\)"),
        (dict(solver="tsit5"), "unknown solver"),
        (dict(backend="torch"), "backend must be"),
        (dict(y0=jnp.array([1, 1])), "floating point"),
        (dict(solver=jode.RK4()), "no error estimate"),
        (dict(max_steps=0), "max_steps must be a positive int"),
        (dict(t1=float("nan")), "t1 must be a finite scalar"),
        (dict(adjoint="backsolve"), "adjoint must be"),
    ],
)
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        solve(**kwargs)


def test_backward_save_times_must_decrease():
    with pytest.raises(ValueError, match="decreasing"):
        solve(t0=1.0, t1=0.0, saveat=jnp.array([0.2, 0.5]))


def test_nan_initial_state_is_caught_at_run_time():
    with pytest.raises(Exception, match="y0 contains NaN"):
        solve(y0=jnp.array([jnp.nan, 1.0]))


def test_evaluate_without_dense_says_how():
    sol = solve()
    with pytest.raises(ValueError, match="dense=True"):
        sol.evaluate(0.5)
