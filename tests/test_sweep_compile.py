"""What keeps the programs of fits and multi-start sweeps small: the optimizer's gradient of
a solve with few parameters taken in forward mode, and an L-BFGS step that evaluates the
loss only inside its line search (the first step's value and gradient come from the
stage's initial state)."""

import jax
import jax.numpy as jnp
import numpy as np

import jode
import jode.models
from jode import fitting as F
from jode.fitting import stages as St
from jode.fitting.loss import FORWARD_GRADIENT_MAX_PARAMS

TS = np.linspace(0.0, 5.0, 26)
TRUTH = np.array([1.0, 1.0, 1.5, 1.0, 3.0, 1.0])
GUESS = TRUTH * np.array([0.9, 1.1, 0.9, 1.1, 1.05, 0.95])


def lv_loss(**kw):
    sol = jode.solve(jode.models.lotka_volterra, jnp.asarray(TRUTH[:2]), 0.0, 5.0,
                     jnp.asarray(TRUTH[2:]), saveat=jnp.asarray(TS), rtol=1e-10, atol=1e-10)
    noise = 0.05 * np.random.default_rng(1).standard_normal((TS.size, 2))
    return F.TrajectoryLoss(jode.models.lotka_volterra, TS, np.asarray(sol.ys) + noise,
                            n_state=2, **kw)


def test_gradient_mode_is_forward_for_a_few_parameters_of_a_jode_solve():
    loss = lv_loss()
    assert loss.gradient_mode(jnp.zeros(6)) == "forward"
    assert loss.gradient_mode(jnp.zeros(FORWARD_GRADIENT_MAX_PARAMS + 1)) == "reverse"
    assert lv_loss(adjoint=jode.BacksolveAdjoint()).gradient_mode(jnp.zeros(6)) == "reverse"
    assert lv_loss(backend="diffrax").gradient_mode(jnp.zeros(6)) == "reverse"
    assert lv_loss(adjoint=jode.ForwardMode()).gradient_mode(jnp.zeros(6)) == "forward"
    shooting = loss.multiple_shooting(3)
    params = shooting.init(jnp.zeros(6))  # θ and two segment states: 10 numbers
    assert shooting.gradient_mode(params) == "forward"


def test_forward_gradient_equals_the_reverse_mode_gradient():
    loss = lv_loss()
    theta = jnp.asarray(GUESS)
    for aux in (jnp.inf, 3.0):  # the whole span and a window
        fn = St.objective(loss, theta, jnp.asarray(aux))
        value, grad = jax.jit(jax.value_and_grad(fn))(theta)
        ref_value, ref_grad = jax.jit(jax.value_and_grad(lambda t, a=aux: loss(t, a)))(theta)
        np.testing.assert_allclose(value, ref_value, rtol=1e-13)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-12)
    # A pytree of parameters (multiple shooting) gets a pytree gradient.
    shooting = loss.multiple_shooting(2)
    params = shooting.init(theta)
    fn = St.objective(shooting, params, jnp.asarray(jnp.inf))
    grad = jax.grad(fn)(params)
    ref = jax.grad(lambda p: shooting(p, jnp.inf))(params)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_lbfgs_initial_state_holds_the_first_steps_value_and_gradient():
    import optax

    loss = lv_loss()
    theta = jnp.asarray(GUESS)
    state = St.init_state(loss, F.LBFGS(), theta, jnp.inf)
    np.testing.assert_allclose(state.value, loss(theta), rtol=1e-13)
    np.testing.assert_allclose(optax.tree.get(state.opt_state, "value"), state.value)
    np.testing.assert_allclose(optax.tree.get(state.opt_state, "grad"),
                               jax.grad(lambda t: loss(t, jnp.inf))(theta), rtol=1e-9)
    # Steps that take the stored value and gradient decrease the loss.
    run = jax.jit(lambda th: St.run_stage(loss, F.LBFGS(steps=20), th).params)
    params = run(theta)
    assert float(loss(params)) < float(loss(theta))


def test_a_start_where_the_loss_is_nan_ends_nonfinite_at_once():
    """As when the first step evaluated the loss itself: NONFINITE, no step counted, the
    start's parameters kept."""
    loss = lv_loss(max_steps=64)
    bad = jnp.asarray([1.0, 1.0, 1e4, 1e4, 1e4, 1e3])  # the solve runs out of steps
    state = jax.jit(lambda th: St.run_stage(loss, F.LBFGS(steps=10), th))(bad)
    assert int(state.status) == F.FitStatus.NONFINITE
    assert int(state.step) == 0
    np.testing.assert_array_equal(state.params, bad)
