"""Gradients through solves: DirectAdjoint (checkpointed), BacksolveAdjoint, ForwardMode.

References: central finite differences, the closed-form gradient of a linear system
(matrix exponential and its Fréchet derivative), and diffrax at tight tolerances.
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import jode
from jode.models import linear, lotka_volterra
from jode.ode.diffrax_backend import to_diffrax

P_LV = jnp.array([1.5, 1.0, 3.0, 1.0])
Y0_LV = jnp.array([1.0, 1.0])
T1 = 2.0
TS = jnp.linspace(0.1, T1, 50)
TOL = 1e-8


def central_diff(fn, x, eps=1e-6):
    """∂fn/∂x by central differences, one component at a time (x is a flat array)."""
    out = []
    for i in range(x.size):
        e = jnp.zeros_like(x).at[i].set(eps)
        out.append((fn(x + e) - fn(x - e)) / (2 * eps))
    return jnp.stack(out)


def rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def lv_loss(theta, adjoint, saveat):
    """theta = (4 parameters, 2 initial values); squared state summed over the save times.

    Adaptive steps (PID) from a given first step, so that finite differences see the same
    sequence of accepted/rejected steps.
    """
    sol = jode.solve(
        lotka_volterra,
        theta[4:],
        0.0,
        T1,
        theta[:4],
        rtol=TOL,
        atol=TOL,
        dt0=0.01,
        controller=jode.PIDController(),
        saveat=saveat,
        adjoint=adjoint,
    )
    return jnp.sum(sol.ys**2)


GRAD_TS = jax.jit(jax.grad(lambda th: lv_loss(th, None, TS)))


@pytest.fixture(scope="module")
def lv_grads():
    theta = jnp.concatenate([P_LV, Y0_LV])
    out = {}
    # Final state: DirectAdjoint with segments of 5 steps (k = ⌈max_iter/1000⌉), so the
    # backward pass recomputes several segments; save times: the default ⌈√max_iter⌉ rows,
    # a single segment kept from the forward pass.
    cases = {
        "final": (
            None,
            {"direct": jode.DirectAdjoint(checkpoints=1000), "backsolve": jode.BacksolveAdjoint()},
        ),
        "ts": (
            TS,
            {
                "backsolve": jode.BacksolveAdjoint(),
                "seminorm": jode.BacksolveAdjoint(seminorm=True),
            },
        ),
    }
    for label, (saveat, adjoints) in cases.items():
        loss = jax.jit(lambda th, saveat=saveat: lv_loss(th, None, saveat))
        grads = {
            name: jax.jit(jax.grad(lambda th, a=adj, s=saveat: lv_loss(th, a, s)))(theta)
            for name, adj in adjoints.items()
        }
        if label == "ts":
            grads["direct"] = GRAD_TS(theta)
        grads["fd"] = central_diff(loss, theta)
        out[label] = grads
    return out


@pytest.mark.parametrize("label", ["final", "ts"])
def test_direct_matches_finite_differences(lv_grads, label):
    g = lv_grads[label]
    assert rel(g["direct"], g["fd"]) < 1e-6


@pytest.mark.parametrize(
    ("label", "kind"), [("final", "backsolve"), ("ts", "backsolve"), ("ts", "seminorm")]
)
def test_backsolve_matches_direct(lv_grads, label, kind):
    g = lv_grads[label]
    assert rel(g[kind], g["direct"]) < 10 * TOL


def test_linear_closed_form_gradient():
    """L = cᵀ expm(A T) y0: ∂L/∂y0 = expm(A T)ᵀ c, ∂L/∂A = T · Fréchet(expm)(Aᵀ T, c y0ᵀ)."""
    a = jnp.array([[-0.5, 1.0, 0.0], [-1.0, -0.3, 0.2], [0.1, 0.0, -0.8]])
    y0 = jnp.array([1.0, -0.5, 2.0])
    c = jnp.array([0.3, -1.2, 0.7])
    t_end = 2.0
    expm = scipy.linalg.expm(np.asarray(a) * t_end)
    g_y0 = expm.T @ np.asarray(c)
    _, frechet = scipy.linalg.expm_frechet(
        np.asarray(a).T * t_end, np.outer(np.asarray(c), np.asarray(y0))
    )
    g_a = t_end * frechet

    def loss(a, y0, adjoint):
        sol = jode.solve(linear, y0, 0.0, t_end, a, rtol=1e-10, atol=1e-10, adjoint=adjoint)
        return jnp.dot(c, sol.ys[-1])

    for adjoint in (jode.DirectAdjoint(), jode.BacksolveAdjoint(seminorm=True)):
        ga, gy = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, y0, adjoint)
        assert rel(gy, jnp.asarray(g_y0)) < 1e-8
        assert rel(ga, jnp.asarray(g_a)) < 1e-8


@pytest.fixture(scope="module")
def mlp_problem():
    net = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.PRNGKey(0))
    net = jax.tree.map(lambda x: x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, net)
    y0 = jnp.array([0.5, -1.0])
    return net, y0


def mlp_field(t, y, net):
    return net(y) - 0.1 * y


def mlp_loss(net, y0, adjoint, backend="jode", rtol=TOL):
    sol = jode.solve(
        mlp_field,
        y0,
        0.0,
        2.0,
        net,
        rtol=rtol,
        atol=rtol,
        saveat=TS / 2.5,
        adjoint=adjoint,
        backend=backend,
    )
    return jnp.sum(sol.ys**2)


@pytest.mark.slow
def test_mlp_vector_field_gradients(mlp_problem):
    """A network in args: Direct vs directional finite differences, Backsolve, diffrax."""
    net, y0 = mlp_problem
    grad = eqx.filter_jit(eqx.filter_grad(lambda ny, adj: mlp_loss(ny[0], ny[1], adj)))
    g_direct = grad((net, y0), jode.DirectAdjoint())
    g_back = grad((net, y0), jode.BacksolveAdjoint())
    flat = lambda g: jax.flatten_util.ravel_pytree(eqx.filter(g, eqx.is_inexact_array))[0]  # noqa: E731

    # Finite differences along a random direction in parameter space.
    params, static = eqx.partition(net, eqx.is_inexact_array)
    p_flat, unravel = jax.flatten_util.ravel_pytree(params)
    v = jax.random.normal(jax.random.PRNGKey(1), p_flat.shape, jnp.float64)
    loss_p = jax.jit(lambda p: mlp_loss(eqx.combine(unravel(p), static), y0, None))
    eps = 1e-6
    fd = (loss_p(p_flat + eps * v) - loss_p(p_flat - eps * v)) / (2 * eps)
    assert abs(float(jnp.dot(flat(g_direct[0]), v) - fd)) < 1e-6 * abs(float(fd))

    assert rel(flat(g_back), flat(g_direct)) < 10 * TOL

    # diffrax's checkpointed adjoint on the same (Tsit5, PID) discretization: the exact
    # gradient of almost the same discrete solve.
    def dfx_loss(net, y0):
        sol = dfx.diffeqsolve(
            dfx.ODETerm(mlp_field),
            dfx.Tsit5(),
            0.0,
            2.0,
            None,
            y0,
            args=net,
            saveat=dfx.SaveAt(ts=TS / 2.5),
            stepsize_controller=dfx.PIDController(rtol=1e-12, atol=1e-12),
            max_steps=100_000,
        )
        return jnp.sum(sol.ys**2)

    g_ref = eqx.filter_jit(eqx.filter_grad(lambda ny: dfx_loss(*ny)))((net, y0))
    assert rel(flat(g_direct), flat(g_ref)) < 10 * TOL


def hessian_loss(p):
    args = jnp.concatenate([p, jnp.array([1.0])])
    sol = jode.solve(
        lotka_volterra,
        jnp.array([1.0, 1.0]),
        0.0,
        1.0,
        args,
        rtol=1e-10,
        atol=1e-10,
        dt0=0.01,
        controller=jode.PIDController(),
        saveat=TS[:5],
    )
    return jnp.sum(sol.ys**2)


P3 = jnp.array([1.5, 1.0, 3.0])


@pytest.fixture(scope="module")
def hessian_reference():
    """Central differences of the (checkpointed reverse-mode) gradient."""
    return central_diff(jax.jit(jax.grad(hessian_loss)), P3, eps=1e-5)


def test_hessian_forward_over_forward(hessian_reference):
    """jacfwd(jacfwd) of an adaptive solve (DirectAdjoint runs forward mode in the loop)."""
    hess = jax.jit(jax.jacfwd(jax.jacfwd(hessian_loss)))(P3)
    assert rel(hess, hessian_reference) < 1e-6


@pytest.mark.slow
def test_hessian_forward_over_reverse(hessian_reference):
    """jax.hessian = jacfwd(jacrev): forward mode through the checkpointed backward pass."""
    hess = jax.jit(jax.hessian(hessian_loss))(P3)
    assert rel(hess, hessian_reference) < 1e-6
    assert float(jnp.max(jnp.abs(hess - hess.T))) < 1e-8 * float(jnp.max(jnp.abs(hess)))


def test_jvp_and_vmap_of_grad():
    """Forward mode through DirectAdjoint equals ⟨grad, v⟩; per-sample gradients by vmap."""
    theta = jnp.concatenate([P_LV, Y0_LV])
    v = jnp.linspace(-1.0, 1.0, 6)
    _, tangent = jax.jit(lambda th: jax.jvp(lambda x: lv_loss(x, None, TS), (th,), (v,)))(theta)
    assert abs(float(tangent - jnp.dot(GRAD_TS(theta), v))) < 1e-10 * abs(float(tangent))

    batch = jnp.stack([theta, theta * 1.05, theta * 0.95])
    per_sample = jax.jit(jax.vmap(GRAD_TS))(batch)
    for i in range(3):
        assert rel(per_sample[i], GRAD_TS(batch[i])) < 1e-12


def test_direct_gradient_through_step_outputs_and_t1():
    """Write-only buffers (SaveAt(steps=True)) get cotangents; so does t1.

    Reference: forward mode (jacfwd through the plain loop), the exact derivative of the
    same discrete solve. (Finite differences do not apply: a perturbation may add a step.)
    """
    y0 = jnp.array([1.0, 1.0])

    def outputs(p, t1, adjoint):
        sol = jode.solve(
            lotka_volterra,
            y0,
            0.0,
            t1,
            p,
            rtol=TOL,
            atol=TOL,
            dt0=0.01,
            controller=jode.PIDController(),
            saveat=jode.SaveAt(steps=True),
            max_steps=128,
            adjoint=adjoint,
        )
        ys = jnp.where(jnp.isfinite(sol.ys), sol.ys, 0.0)
        ts = jnp.where(jnp.isfinite(sol.ts), sol.ts, 0.0)
        return ys, ts

    t1 = jnp.asarray(2.0)
    rev = jax.jit(jax.jacrev(outputs, argnums=(0, 1)), static_argnums=2)(P_LV, t1, None)
    fwd = jax.jit(jax.jacfwd(outputs, argnums=(0, 1)), static_argnums=2)(
        P_LV, t1, jode.ForwardMode()
    )
    for r, f in zip(jax.tree.leaves(rev), jax.tree.leaves(fwd), strict=True):
        scale = max(float(jnp.max(jnp.abs(f))), 1.0)
        assert float(jnp.max(jnp.abs(r - f))) <= 1e-12 * scale
    assert float(jnp.max(jnp.abs(rev[0][0]))) > 1.0  # the state outputs do depend on p


def test_backsolve_time_gradients():
    """BacksolveAdjoint: ∂L/∂t0 and ∂L/∂t1 against finite differences of the solve."""

    def loss(t0, t1, adjoint):
        sol = jode.solve(
            lotka_volterra, Y0_LV, t0, t1, P_LV, rtol=1e-10, atol=1e-10, adjoint=adjoint
        )
        return jnp.sum(sol.ys**2)

    t0, t1 = jnp.asarray(0.2), jnp.asarray(2.5)
    g0, g1 = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(
        t0, t1, jode.BacksolveAdjoint()
    )
    f = jax.jit(loss, static_argnums=2)
    fm = jode.ForwardMode()
    fd0 = (f(t0 + 1e-5, t1, fm) - f(t0 - 1e-5, t1, fm)) / 2e-5
    fd1 = (f(t0, t1 + 1e-5, fm) - f(t0, t1 - 1e-5, fm)) / 2e-5
    assert abs(float(g0 - fd0)) < 1e-5 * abs(float(fd0))
    assert abs(float(g1 - fd1)) < 1e-5 * abs(float(fd1))


def test_errors_and_diffrax_mapping():
    with pytest.raises(ValueError, match="checkpoints"):
        jode.DirectAdjoint(checkpoints=0)
    with pytest.raises(ValueError, match="DirectAdjoint"):
        jode.solve(
            lotka_volterra,
            Y0_LV,
            0.0,
            1.0,
            P_LV,
            saveat=jode.SaveAt(steps=True),
            adjoint=jode.BacksolveAdjoint(),
        )
    assert isinstance(to_diffrax(jode.DirectAdjoint()), dfx.RecursiveCheckpointAdjoint)
    assert isinstance(to_diffrax(jode.ForwardMode()), dfx.ForwardMode)
    semi = to_diffrax(jode.BacksolveAdjoint(rtol=1e-6, atol=1e-7, seminorm=True))
    assert isinstance(semi, dfx.BacksolveAdjoint)
    assert semi.kwargs["stepsize_controller"].norm is dfx.adjoint_rms_seminorm
    with pytest.raises(ValueError, match="rtol"):
        to_diffrax(jode.BacksolveAdjoint(seminorm=True))


def test_backsolve_with_float32_state_and_float64_constants():
    # x64 on, a float32 state and a float64 constant closed over by f: the augmented state
    # is promoted, and the backward solve must still call f with the state's dtype.
    import equinox as eqx
    import jax.random as jr

    mlp = eqx.nn.MLP(2, 2, 16, 1, key=jr.key(0))
    scale = jnp.asarray(0.5)

    def f(t, y, m):
        return scale * jax.vmap(m)(y)

    y0 = jnp.ones((4, 2), jnp.float32)

    def loss(m, adjoint):
        sol = jode.solve(f, y0, 0.0, 1.0, m, adjoint=adjoint, rtol=1e-4, atol=1e-6)
        return jnp.sum(sol.ys**2)

    with jax.numpy_dtype_promotion("standard"):  # the user's f mixes precisions on purpose
        g_back = eqx.filter_grad(lambda m: loss(m, jode.BacksolveAdjoint()))(mlp)
        g_direct = eqx.filter_grad(lambda m: loss(m, jode.DirectAdjoint()))(mlp)
    w_back, w_direct = g_back.layers[0].weight, g_direct.layers[0].weight
    assert float(jnp.max(jnp.abs(w_back - w_direct))) <= 1e-3 * float(jnp.max(jnp.abs(w_direct)))
