"""The ensemble kernel (one Pallas kernel per batch), in interpret mode on CPU: every lane
takes the steps `jode.solve` takes for it alone, and fails alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jode
from jode.models import lotka_volterra
from jode.ode.ensemble_kernel import default_interpret, solve_ensemble_kernel

B = 12
BLOCK = 8  # two programs, the second padded with four copies of the last lane
TS = jnp.linspace(0.0, 10.0, 21)
KW = dict(rtol=1e-8, atol=1e-8, max_steps=400)
NAN_LANE, SLOW_LANE = 5, 9


def _lv_batch():
    """Per-lane parameters within ±20% of the classic (1.5, 1, 3, 1); one lane's α is NaN
    (-> NONFINITE at once) and one lane runs 20x faster (-> MAX_STEPS at 400 steps, which
    the others need 230-290 of)."""
    u = jax.random.uniform(jax.random.PRNGKey(0), (B, 4))
    p = jnp.array([1.5, 1.0, 3.0, 1.0]) * (0.8 + 0.4 * u)
    p = p.at[NAN_LANE, 0].set(jnp.nan).at[SLOW_LANE].multiply(20.0)
    y0 = jnp.stack([jnp.linspace(0.8, 1.6, B), jnp.linspace(1.2, 0.7, B)], axis=1)
    return y0, p


@pytest.fixture(scope="module")
def lv():
    y0, p = _lv_batch()
    grid = solve_ensemble_kernel(lotka_volterra, y0, 0.0, 10.0, p, saveat=TS, block=BLOCK, **KW)
    end = solve_ensemble_kernel(lotka_volterra, y0, 0.0, 10.0, p, block=BLOCK, **KW)
    return y0, p, grid, end


def _same_lane(sol, i, alone, rtol, atol=0.0, step_slack=0):
    """Lane i of a kernel solution equals the solve alone: statuses, step counts, times,
    values (NaN where the solve alone has NaN)."""
    assert int(sol.status[i]) == int(alone.status), i
    for key in ("steps", "accepted", "rejected", "nfev"):
        slack = step_slack * (6 if key == "nfev" else 1)  # Tsit5: 6 evaluations a step
        assert abs(int(sol.stats[key][i]) - int(alone.stats[key])) <= slack, (i, key)
    # The same steps, to rounding: XLA fuses the kernel's row-wise arithmetic differently
    # from the solve's, and an ulp of the state changes the error estimate (a difference
    # of nearby numbers) in its leading digits, hence the next step in its last ones; over
    # 400 steps t drifts by ~1e-12 relative (float64).
    t_tol = 10 * rtol
    np.testing.assert_allclose(float(sol.stats["t_last"][i]), float(alone.stats["t_last"]),
                               rtol=t_tol)
    np.testing.assert_allclose(np.asarray(sol.ts[i]), np.asarray(alone.ts), rtol=t_tol)
    for got, want in zip(jax.tree.leaves(sol.ys), jax.tree.leaves(alone.ys), strict=True):
        np.testing.assert_allclose(
            np.asarray(got[i]), np.asarray(want), rtol=rtol, atol=atol, equal_nan=True
        )


@pytest.mark.parametrize("save", ["grid", "t1"])
def test_lanes_equal_solves_alone_float64(lv, save):
    y0, p, grid, end = lv
    sol = grid if save == "grid" else end
    saveat = TS if save == "grid" else None
    assert sol.ys.shape == ((B, 21, 2) if save == "grid" else (B, 1, 2))
    for i in range(B):
        alone = jode.solve(lotka_volterra, y0[i], 0.0, 10.0, p[i], saveat=saveat, throw=False,
                           **KW)
        # A lane stopped by max_steps saves its state at t_last, which differs from the
        # solve's by rounding (~1e-12 relative); its fast oscillation (|dy/dt| ~ 20|y|)
        # turns that into ~1e-10 in y.
        _same_lane(sol, i, alone, rtol=1e-12 if i != SLOW_LANE else 1e-9)
    status = np.asarray(sol.status)
    assert status[NAN_LANE] == jode.RESULTS.NONFINITE
    assert status[SLOW_LANE] == jode.RESULTS.MAX_STEPS
    assert int(sol.stats["steps"][SLOW_LANE]) == KW["max_steps"]
    others = np.delete(np.arange(B), [NAN_LANE, SLOW_LANE])
    assert (status[others] == jode.RESULTS.SUCCESS).all()
    assert (np.asarray(sol.stats["steps"])[others] < KW["max_steps"]).all()


def test_lotka_volterra_invariant_is_conserved(lv):
    """V = γx − δ ln x + βy − α ln y is constant along exact solutions (Hairer, Lubich &
    Wanner 2006, §I.1.1): the saves' drift is bounded by the tolerance, not the kernel."""
    _, p, grid, _ = lv
    ok = np.asarray(grid.status) == jode.RESULTS.SUCCESS
    ys, p = np.asarray(grid.ys)[ok], np.asarray(p)[ok]
    x, y = ys[..., 0], ys[..., 1]
    a, b, d, g = (p[:, k : k + 1] for k in range(4))
    v = g * x - d * np.log(x) + b * y - a * np.log(y)
    assert np.max(np.abs(v - v[:, :1]) / np.abs(v[:, :1])) < 1e-6


def test_solve_batch_kernel_dispatch_and_failed_lanes(lv):
    y0, p, grid, _ = lv
    sol = jode.solve_batch(lotka_volterra, y0, 0.0, 10.0, p, saveat=TS, kernel=True,
                           block=BLOCK, throw=False, **KW)
    np.testing.assert_array_equal(np.asarray(sol.ys), np.asarray(grid.ys))
    np.testing.assert_array_equal(np.asarray(sol.status), np.asarray(grid.status))
    with pytest.raises(RuntimeError, match=r"failed in 2 of 12 lanes.*\(lane 5\)"):
        jode.solve_batch(lotka_volterra, y0, 0.0, 10.0, p, saveat=TS, kernel=True,
                         block=BLOCK, **KW)


def _lorenz(t, u, a):
    """Lorenz (1963) with a pytree state {"x": (), "yz": (2,)} and per-lane (ρ, β)."""
    del t
    x, y, z = u["x"], u["yz"][0], u["yz"][1]
    rho, beta = a["rho"], a["beta"]
    return {"x": 10.0 * (y - x), "yz": jnp.stack([x * (rho - z) - y, x * y - beta * z])}


def test_lorenz_pytree_state_and_closure_under_jit():
    """A pytree state, a dict of per-lane args and an array f closes over (a traced
    scale, under jax.jit): each lane equals its solve alone."""
    n = 5
    u0 = {"x": jnp.linspace(1.0, 2.0, n), "yz": jnp.ones((n, 2))}
    args = {"rho": jnp.linspace(20.0, 30.0, n), "beta": jnp.full((n,), 8.0 / 3.0)}
    ts = jnp.linspace(0.0, 2.0, 5)
    kw = dict(saveat=ts, rtol=1e-10, atol=1e-10)

    @jax.jit
    def run(u0, args, scale):
        def f(t, u, a):  # scale is a tracer of the outer jit, closed over
            out = _lorenz(t, u, a)
            return {"x": out["x"] * scale, "yz": out["yz"]}

        return solve_ensemble_kernel(f, u0, 0.0, 2.0, args, block=2, **kw)

    sol = run(u0, args, jnp.array(1.0))
    assert sol.ys["yz"].shape == (n, 5, 2)
    for i in range(n):
        lane = jax.tree.map(lambda x, i=i: x[i], (u0, args))
        alone = jode.solve(_lorenz, *lane[:1], 0.0, 2.0, lane[1], **kw)
        _same_lane(sol, i, alone, rtol=1e-12, atol=1e-12 * 50)


def test_float32_backwards_lanes_match_solves_alone():
    y0, p = _lv_batch()
    keep = np.delete(np.arange(B), [NAN_LANE, SLOW_LANE])[:8]
    y0, p = y0[keep].astype(jnp.float32), p[keep].astype(jnp.float32)
    ts = jnp.linspace(5.0, 0.0, 6)
    kw = dict(saveat=ts, rtol=1e-5, atol=1e-5)
    sol = solve_ensemble_kernel(lotka_volterra, y0, 5.0, 0.0, p, block=4, **kw)
    assert sol.ys.dtype == jnp.float32
    for i in range(len(keep)):
        alone = jode.solve(lotka_volterra, y0[i], 5.0, 0.0, p[i], **kw)
        # In float32 an accept/reject decision with the error norm within rounding of 1 can
        # go either way (measured at rtol 1e-6 over 64 lanes: 14 kernel lanes, and 6 lanes
        # of the vmap path, differ from the solve alone by a step or two); then the values
        # differ at the tolerance's level.
        _same_lane(sol, i, alone, rtol=1e-5, atol=1e-4 * float(jnp.max(jnp.abs(alone.ys))),
                   step_slack=2)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(solver=jode.Kvaerno5()), "explicit Runge-Kutta solvers only"),
        (dict(solver=jode.RK4(), controller=jode.PIDController()), "no error estimate"),
        (dict(dt0=0.1), "controller=jode.PIDController"),
        (dict(controller=jode.ConstantStep(), dt0=0.1), "controller=jode.PIDController"),
        (dict(saveat=jode.SaveAt(steps=True)), "t1 or on a grid"),
        (dict(block=0), "block must be a positive int"),
    ],
)
def test_unsupported_options_raise_named_errors(options, match):
    y0, p = _lv_batch()
    with pytest.raises(ValueError, match=match):
        solve_ensemble_kernel(lotka_volterra, y0, 0.0, 1.0, p, **options)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(dense=True), "dense=True"),
        (dict(adjoint=jode.BacksolveAdjoint()), "forward-only"),
        (dict(stop=lambda t, y, a: y[0] > 2.0), "stop="),
        (dict(event=jode.Event(lambda t, y, a: y[0] - 2.0)), "event="),
        (dict(shared_step=True), "shared_step"),
        (dict(backend="diffrax"), "backend"),
        (dict(blocks=8), "unknown blocks"),
    ],
)
def test_solve_batch_kernel_refuses_options_by_name(options, match):
    y0, p = _lv_batch()
    with pytest.raises(ValueError, match=match):
        jode.solve_batch(lotka_volterra, y0, 0.0, 1.0, p, kernel=True, **options)


def test_gradients_raise_and_interpret_default():
    y0, p = _lv_batch()

    def loss(p):
        sol = jode.solve_batch(lotka_volterra, y0, 0.0, 1.0, p, kernel=True, throw=False)
        return jnp.sum(sol.ys)

    with pytest.raises(ValueError, match="forward-only"):
        jax.grad(loss)(p)
    assert default_interpret() == (jax.default_backend() not in ("gpu", "tpu"))


def test_linear_system_with_matrix_product_and_branch_against_expm():
    """y' = A y with a per-lane 2x2 A (a matrix product in f, and a jnp.where on the sign
    of t) against the closed form y(t) = expm(A t) y0."""
    from scipy.linalg import expm

    n = 6
    decay = np.linspace(0.1, 1.0, n)
    freq = np.linspace(1.0, 3.0, n)
    a = np.stack([np.array([[-d, w], [-w, -d]]) for d, w in zip(decay, freq, strict=True)])
    y0 = np.stack([np.ones(n), np.linspace(-1.0, 1.0, n)], axis=1)
    ts = jnp.linspace(0.0, 3.0, 7)

    def f(t, y, a):
        return jnp.where(t >= 0, a @ y, -(a @ y))  # the branch is always the first one

    sol = solve_ensemble_kernel(f, jnp.asarray(y0), 0.0, 3.0, jnp.asarray(a), saveat=ts,
                                rtol=1e-10, atol=1e-10, block=4)
    assert (np.asarray(sol.status) == jode.RESULTS.SUCCESS).all()
    for i in range(n):
        exact = np.stack([expm(a[i] * t) @ y0[i] for t in np.asarray(ts)])
        np.testing.assert_allclose(np.asarray(sol.ys[i]), exact, rtol=0, atol=1e-8)


def test_vector_field_indexing_by_traced_value_is_refused():
    y0, p = _lv_batch()

    def f(t, y, p):  # y[argmax(y)]: an index that depends on the lane's state
        return -p[:2] * y[jnp.argmax(y)]

    with pytest.raises(ValueError, match="kernel=False"):
        solve_ensemble_kernel(f, y0, 0.0, 1.0, p)


@pytest.mark.parametrize("name", ["lotka_volterra", "lorenz"])
def test_kernel_lowers_to_triton_for_cuda(monkeypatch, name):
    """Lowering for a GPU without one (jax.export to CUDA): the kernel passes Pallas's
    Triton lowering (power-of-two shapes for every operation, its primitives), for a state
    of 2 and of 3 components with 101 saves. Compiling and running it needs a GPU
    (benchmarks/gpu.py)."""
    from jode import models
    from jode.ode import ensemble_kernel as ek

    # eqx.error_if's host callback cannot be lowered for another platform than this one.
    monkeypatch.setattr(ek, "_traced_checks", lambda y, ts, t0, t1: (y, ts))
    f, n, k = {"lotka_volterra": (models.lotka_volterra, 2, 4), "lorenz": (models.lorenz, 3, 3)}[
        name
    ]
    ts = jnp.linspace(0.0, 1.0, 101)

    def run(y0, p):
        sol = ek.solve_ensemble_kernel.__wrapped__(f, y0, 0.0, 1.0, p, saveat=ts,
                                                   interpret=False)
        return sol.ys, sol.status

    exported = jax.export.export(
        jax.jit(run),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(jax.ShapeDtypeStruct((256, n), jnp.float64), jax.ShapeDtypeStruct((256, k), jnp.float64))
    text = exported.mlir_module()
    assert "__gpu$xla.gpu.triton" in text and "grid_x = 2" in text
