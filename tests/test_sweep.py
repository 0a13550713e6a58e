"""Sweeps: chunked vmap, sharding over 8 (forced host) devices, and two processes with
jax.distributed on localhost; the reference is the closed-form harmonic oscillator
x(t) = x0 cos ωt (and scipy's curve_fit for the sharded multi-start fit)."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import jode
import jode.models
from jode import sweeping as S

T1 = 2.0
OMEGAS = np.linspace(0.5, 3.0, 13)


def final_x(omega):
    sol = jode.solve(jode.models.harmonic_oscillator, jnp.array([1.0, 0.0]), 0.0, T1,
                     jnp.reshape(omega, (1,)), rtol=1e-10, atol=1e-10)
    return sol.ys[-1, 0]


def test_grid_is_the_cartesian_product():
    g = np.asarray(S.grid(a=jnp.array([1.0, 2.0]), b=jnp.array([10.0, 20.0, 30.0])))
    expected = np.array([[a, b] for a in (1.0, 2.0) for b in (10.0, 20.0, 30.0)])
    np.testing.assert_array_equal(g, expected)


def test_sweep_chunked_matches_closed_form():
    out = S.sweep(final_x, jnp.asarray(OMEGAS), chunk_size=4)
    assert out.shape == (13,)
    np.testing.assert_allclose(out, np.cos(OMEGAS * T1), atol=1e-8)


def test_sweep_bad_input():
    with pytest.raises(ValueError, match="leading"):
        S.sweep(lambda p: p["a"], {"a": jnp.ones(3), "b": jnp.ones(4)})
    with pytest.raises(ValueError, match="chunk_size"):
        S.sweep(final_x, jnp.asarray(OMEGAS), chunk_size=0)
    with pytest.raises(ValueError, match="1-D"):
        S.grid(a=jnp.ones((2, 2)))
    with pytest.raises(ValueError, match="0 rows"):
        S.sweep(final_x, jnp.zeros((0,)))
    with pytest.raises(ValueError, match="0 rows"):
        jode.sweep(lambda p: p["a"], {"a": jnp.zeros((0, 2)), "b": jnp.zeros((0,))})


TRACES = []


def counted_final_x(omega):
    TRACES.append(1)  # runs only while JAX traces the function
    return final_x(omega)


def test_a_second_identical_sweep_traces_nothing():
    """`jode.sweep` is the function; its sharded program is cached per function object,
    shapes and options, so an identical second call (or new values of the same shapes)
    does not trace the function again."""
    first = jode.sweep(counted_final_x, jnp.asarray(OMEGAS), chunk_size=4)
    traced = len(TRACES)
    assert traced > 0
    second = jode.sweep(counted_final_x, jnp.asarray(OMEGAS), chunk_size=4)
    shifted = jode.sweep(counted_final_x, jnp.asarray(OMEGAS) + 0.1, chunk_size=4)
    assert len(TRACES) == traced
    np.testing.assert_array_equal(second, first)
    np.testing.assert_allclose(shifted, np.cos((OMEGAS + 0.1) * T1), atol=1e-8)
    jode.sweep(counted_final_x, jnp.asarray(OMEGAS), chunk_size=2)  # another option: a trace
    assert len(TRACES) > traced


def test_a_second_fit_sweep_traces_nothing():
    """The multi-start fit is one cached program too (the loss's arrays are its inputs), so
    a second call, even on new data of the same shapes, traces the model no more."""
    from jode import fitting as F

    calls = []

    def decay(t, y, a):
        calls.append(1)
        return -a[0] * y

    ts = np.linspace(0.0, 2.0, 11)

    def loss_of(rate):
        return F.TrajectoryLoss(decay, ts, np.exp(-rate * ts)[:, None], n_state=1,
                                solver=jode.RK4(), n_steps=40)

    guesses = jnp.array([[1.2, 0.5], [0.8, 2.0]])
    stages = (F.LBFGS(steps=40),)
    S.fit_sweep(loss_of(1.0), guesses, stages)
    traced = len(calls)
    thetas, _ = S.fit_sweep(loss_of(1.5), guesses, stages)
    assert len(calls) == traced
    # y = exp(-1.5 t) from y0 = 1: RK4 with h = 0.05 is within 1e-6 of the exact rate.
    np.testing.assert_allclose(thetas, [[1.0, 1.5]] * 2, rtol=1e-5)


_COMMON = """
import json, os, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import jode, jode.models
from jode import sweeping as S
def final_x(omega):
    sol = jode.solve(jode.models.harmonic_oscillator, jnp.array([1.0, 0.0]), 0.0, 2.0,
                     jnp.reshape(omega, (1,)), rtol=1e-10, atol=1e-10)
    return sol.ys[-1, 0]
omegas = jnp.linspace(0.5, 3.0, 13)
"""

_EIGHT = _COMMON + """
out = S.sweep(final_x, omegas, chunk_size=1)
sharded = S.sweep(final_x, omegas, chunk_size=1, gather=False)
single = S.sweep(final_x, omegas, devices=jax.devices()[:1])
print(json.dumps(dict(devices=jax.device_count(), shards=len(sharded.sharding.device_set),
                      out=np.asarray(out).tolist(), single=np.asarray(single).tolist())))
"""

_DIST = """
import sys
import jax
pid, port = int(sys.argv[1]), int(sys.argv[2])
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                           initialization_timeout=90)
""" + _COMMON + """
out = S.sweep(final_x, omegas, chunk_size=2)
print(json.dumps(dict(pid=pid, devices=jax.device_count(), local=jax.local_device_count(),
                      processes=jax.process_count(), out=np.asarray(out).tolist())))
jax.distributed.shutdown()
"""


def _env(n_devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _last_json(text):
    return json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])


def test_sweep_sharded_over_eight_devices_matches_single_device():
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_EIGHT)], env=_env(8),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = _last_json(proc.stdout)
    assert res["devices"] == 8 and res["shards"] == 8
    np.testing.assert_allclose(res["out"], np.cos(OMEGAS * T1), atol=1e-8)
    np.testing.assert_allclose(res["out"], res["single"], rtol=1e-10, atol=1e-12)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sweep_across_two_processes_matches_single_process():
    port = _free_port()
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(_DIST), str(i), str(port)],
                         env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]
            results.append(_last_json(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    single = S.sweep(final_x, jnp.asarray(OMEGAS))
    for res in results:
        assert res["processes"] == 2 and res["devices"] == 4 and res["local"] == 2
        np.testing.assert_allclose(res["out"], single, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(res["out"], np.cos(OMEGAS * T1), atol=1e-8)


@pytest.mark.slow
def test_fit_sweep_multistart_lands_on_the_scipy_optimum():
    """Multi-start fits as one sweep: from every guess, scipy's least-squares optimum."""
    from scipy.optimize import curve_fit

    from jode import fitting as F

    def logistic(t, y, a):
        return a[0] * y * (1 - y / a[1])

    def exact(t, y0, r, K):
        return K * y0 * np.exp(r * t) / (K + y0 * (np.exp(r * t) - 1))

    ts = np.linspace(0.0, 10.0, 41)
    data = exact(ts, 0.5, 0.9, 10.0) + 0.2 * np.random.default_rng(3).standard_normal(41)
    loss = F.TrajectoryLoss(logistic, ts, data[:, None], n_state=1, solver=jode.RK4(),
                            n_steps=400)
    guesses = jnp.array([[1.0, 0.5, 8.0], [0.2, 2.0, 15.0], [2.0, 0.3, 5.0], [0.6, 1.0, 11.0]])
    thetas, losses = S.fit_sweep(loss, guesses, (F.LBFGS(steps=300),), chunk_size=2)
    popt, _ = curve_fit(exact, ts, data, p0=[0.5, 0.9, 10.0], xtol=1e-14, ftol=1e-14)
    for theta in thetas:
        np.testing.assert_allclose(theta, popt, rtol=1e-4)
    assert np.ptp(losses) < 1e-10
