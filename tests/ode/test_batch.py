"""Batched solves: the select-free vmap loop keeps per-lane semantics; shared steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import dop853_reference

import jode
from jode.models import lotka_volterra
from jode.ode.loop import masked_while_loop

LV_P = jnp.array([1.5, 1.0, 3.0, 1.0])
TS = jnp.linspace(0.0, 6.0, 31)


def test_masked_loop_under_vmap_matches_each_lane_alone():
    """Collatz stopping times: lanes finish after very different iteration counts."""

    def cond(c, _):
        return c[0] != 1

    def body(c, step):
        n, count, trace = c
        live = n != 1
        nxt = jnp.where(n % 2 == 0, n // 2, 3 * n + 1)
        trace = trace.at[jnp.where(live, count, trace.shape[0])].set(nxt, mode="drop")
        return jnp.where(live, nxt, n), count + step * live.astype(jnp.int32), trace

    def run(n):
        init = (n, jnp.int32(0), jnp.zeros(200, jnp.int32))
        return masked_while_loop(cond, body, init, jnp.int32(1))

    starts = jnp.array([1, 6, 7, 27, 97], jnp.int32)
    batched = jax.jit(jax.vmap(run))(starts)
    for i, n in enumerate(starts):
        alone = run(n)
        for got, want in zip(batched, alone, strict=True):
            np.testing.assert_array_equal(np.asarray(got[i]), np.asarray(want))
    assert [int(c) for c in batched[1]] == [0, 8, 16, 111, 118]  # known stopping times
    one = jax.jit(jax.vmap(run))(starts[3:4])  # a single lane takes the plain loop
    assert int(one[1][0]) == 111 and one[2].shape == (1, 200)


@pytest.mark.parametrize(
    "solver, saveat",
    [
        (jode.Tsit5(), jode.SaveAt(ts=TS, dense=True)),
        (jode.Dopri5(), jode.SaveAt(steps=True)),
        (jode.Kvaerno3(), TS),
    ],
    ids=["tsit5-ts-dense", "dopri5-steps", "kvaerno3-ts"],
)
def test_vmap_lanes_equal_solves_alone(solver, saveat):
    y0s = jnp.array([[1.0, 1.0], [2.0, 0.5], [0.5, 3.0]])

    def run(y0):
        return jode.solve(lotka_volterra, y0, 0.0, 6.0, LV_P, solver=solver, saveat=saveat,
                          rtol=1e-7, atol=1e-7)

    batched = jax.jit(jax.vmap(run))(y0s)
    for i, y0 in enumerate(y0s):
        alone = run(y0)
        assert int(batched.stats["steps"][i]) == int(alone.stats["steps"])
        assert int(batched.stats["rejected"][i]) == int(alone.stats["rejected"])
        # Equal up to rounding, which step-size selection amplifies: the same solve jitted
        # and not jitted already differ by ~1e-9 here (different fusion, same arithmetic).
        np.testing.assert_allclose(batched.ys[i], alone.ys, rtol=1e-7, atol=1e-8)
        np.testing.assert_allclose(batched.ts[i], alone.ts, rtol=1e-7)
        if isinstance(saveat, jode.SaveAt) and saveat.dense:
            t = jnp.array([0.37, 2.9, 5.55])
            np.testing.assert_allclose(
                jax.tree.map(lambda x: x[i], batched).evaluate(t), alone.evaluate(t), rtol=1e-7
            )


def test_nested_vmap_and_pytree_state():
    def f(t, y, p):
        return {"x": p * y["v"], "v": -p * y["x"]}

    def run(x0, p):
        return jode.solve(f, {"x": x0, "v": jnp.zeros(())}, 0.0, 2.0, p, saveat=TS[:11],
                          rtol=1e-10, atol=1e-10).ys["x"]

    x0s, ps = jnp.array([1.0, 2.0]), jnp.array([0.5, 1.0, 2.0])
    out = jax.jit(jax.vmap(jax.vmap(run, (None, 0)), (0, None)))(x0s, ps)
    exact = x0s[:, None, None] * jnp.cos(ps[None, :, None] * TS[:11])
    np.testing.assert_allclose(out, exact, atol=1e-8)


def test_solve_batch_per_lane_and_shared_step():
    ps = LV_P * jnp.array([[1.0], [1.1], [0.9], [1.2]])
    y0s = jnp.broadcast_to(jnp.array([1.0, 1.0]), (4, 2))
    kw = dict(saveat=TS, rtol=1e-8, atol=1e-8)
    lanes = jode.solve_batch(lotka_volterra, y0s, 0.0, 6.0, ps, **kw)
    shared = jode.solve_batch(lotka_volterra, y0s, 0.0, 6.0, ps, shared_step=True, **kw)
    assert lanes.ys.shape == shared.ys.shape == (4, 31, 2)
    assert lanes.stats["steps"].shape == (4,) and shared.stats["steps"].shape == ()
    # one step sequence for the batch: at least as many steps as its hardest lane
    assert int(shared.stats["steps"]) >= int(jnp.max(lanes.stats["steps"]))
    for i in range(4):
        ref = dop853_reference(lotka_volterra, y0s[i], TS, ps[i])
        np.testing.assert_allclose(lanes.ys[i], ref, atol=1e-6)
        np.testing.assert_allclose(shared.ys[i], ref, atol=1e-6)
    with pytest.raises(ValueError, match="leading"):
        jode.solve_batch(lotka_volterra, y0s, 0.0, 6.0, ps[:3])
