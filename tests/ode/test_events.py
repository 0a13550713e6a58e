"""Events: root-located terminating conditions, against scipy, closed forms and finite
differences, under vmap, grad and both backends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import jode
from jode.ode.events import Event

G = 9.81


def ball(t, y, g):
    """A ball in free fall: y = [height, velocity]."""
    return jnp.stack([y[1], -g * jnp.ones_like(y[1])])


GROUND = Event(lambda t, y, g: y[0], direction=-1)


def pendulum(t, y, args):
    """Damped pendulum θ'' = -sin θ - 0.1 θ'."""
    return jnp.stack([y[1], -jnp.sin(y[0]) - 0.1 * y[1]])


def _scipy_pendulum_crossing():
    def cond(t, y):
        return y[0]

    cond.terminal = True
    out = solve_ivp(
        lambda t, y: [y[1], -np.sin(y[0]) - 0.1 * y[1]],
        (0.0, 10.0),
        [1.0, 0.0],
        method="DOP853",
        rtol=1e-12,
        atol=1e-12,
        events=cond,
    )
    return out.t_events[0][0], out.y_events[0][0]


def drop(h, tol=1e-10, **kwargs):
    y0 = jnp.stack([jnp.asarray(h, jnp.float64), jnp.zeros((), jnp.float64)])
    return jode.solve(ball, y0, 0.0, 10.0, args=G, event=GROUND, rtol=tol, atol=tol, **kwargs)


# --- accuracy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "solver, tol, bound",
    [
        (jode.Tsit5(), 1e-10, 1e-9),
        (jode.Dopri5(), 1e-10, 1e-9),
        # Cubic Hermite dense output (no interpolant of the method's own), 1e-7 to 5e-9
        # off on its own here: the polishing step brings the time to the solver's accuracy.
        (jode.Dopri8(), 1e-10, 1e-9),
        (jode.Kvaerno5(), 1e-10, 1e-9),
        (jode.Rodas5(), 1e-10, 1e-9),
    ],
    ids=["Tsit5", "Dopri5", "Dopri8", "Kvaerno5", "Rodas5"],
)
def test_pendulum_first_zero_crossing_matches_scipy(solver, tol, bound):
    t_ref, y_ref = _scipy_pendulum_crossing()
    sol = jode.solve(
        pendulum,
        jnp.array([1.0, 0.0]),
        0.0,
        10.0,
        solver=solver,
        rtol=tol,
        atol=tol,
        event=Event(lambda t, y, a: y[0]),
    )
    assert int(sol.status) == jode.Status.EVENT and bool(sol.succeeded)
    assert int(sol.event_index) == 0
    assert abs(float(sol.event_t) - t_ref) <= bound
    assert float(sol.t1) == float(sol.event_t)
    np.testing.assert_allclose(np.asarray(sol.event_y), y_ref, atol=2 * bound)
    assert abs(float(sol.event_y[0])) <= 1e-12


def test_ball_bounce_and_second_bounce_after_restart():
    h, e = 2.0, 0.8
    sol = drop(h)
    t_hit = np.sqrt(2 * h / G)
    assert abs(float(sol.event_t) - t_hit) <= 1e-10
    v_hit = float(sol.event_y[1])
    assert abs(v_hit + np.sqrt(2 * G * h)) <= 1e-9
    # Restart from the ground with the reflected velocity times the restitution e: the
    # ball flies for 2 e v / g (starting on the ground is no crossing: g(t0) = 0).
    y_up = jnp.stack([jnp.zeros((), jnp.float64), -e * sol.event_y[1]])
    sol2 = jode.solve(
        ball, y_up, sol.event_t, 10.0, args=G, event=GROUND, rtol=1e-10, atol=1e-10
    )
    t_second = t_hit + 2 * e * np.sqrt(2 * h / G)
    assert int(sol2.status) == jode.Status.EVENT
    assert abs(float(sol2.event_t) - t_second) <= 1e-10
    assert abs(float(sol2.event_y[1]) + e * np.sqrt(2 * G * h)) <= 1e-9


def test_saves_stop_at_the_event_and_evaluate_is_nan_past_it():
    h = 1.0
    t_hit = np.sqrt(2 * h / G)
    ts = jnp.linspace(0.0, 1.0, 21)
    sol = drop(h, saveat=jode.SaveAt(ts=ts, dense=True))
    before = np.asarray(ts) <= t_hit
    heights = np.asarray(sol.ys[:, 0])
    np.testing.assert_allclose(heights[before], h - 0.5 * G * np.asarray(ts)[before] ** 2,
                               atol=1e-12)
    assert np.all(np.isnan(heights[~before]))
    dense = np.asarray(sol.evaluate(jnp.array([0.3, t_hit - 1e-3, 0.5]))[:, 0])
    np.testing.assert_allclose(dense[:2], h - 0.5 * G * np.array([0.3, t_hit - 1e-3]) ** 2,
                               atol=1e-12)
    assert np.isnan(dense[2])


def test_saving_t1_and_steps_end_at_the_event():
    h = 1.0
    t_hit = np.sqrt(2 * h / G)
    sol = drop(h)
    assert abs(float(sol.ts[-1]) - t_hit) <= 1e-10 and abs(float(sol.ys[-1, 0])) <= 1e-12
    sol = drop(h, saveat=jode.SaveAt(steps=True))
    n = int(sol.stats["accepted"])
    assert abs(float(sol.ts[n]) - t_hit) <= 1e-10
    assert abs(float(sol.ys[n, 0])) <= 1e-12
    assert np.all(np.isinf(np.asarray(sol.ts[n + 1 :])))


def test_direction_filters_crossings():
    # x'' = -x from x = 1: x falls through 0 at pi/2 and rises through 0 at 3 pi/2.
    def osc(t, y, a):
        return jnp.stack([y[1], -y[0]])

    def first(direction):
        sol = jode.solve(
            osc, jnp.array([1.0, 0.0]), 0.0, 10.0, rtol=1e-10, atol=1e-10,
            event=Event(lambda t, y, a: y[0], direction=direction),
        )
        return float(sol.event_t)

    assert abs(first(-1) - np.pi / 2) <= 1e-9
    assert abs(first(None) - np.pi / 2) <= 1e-9
    assert abs(first(+1) - 3 * np.pi / 2) <= 1e-9


def test_several_events_the_first_in_time_fires():
    def osc(t, y, a):
        return jnp.stack([y[1], -y[0]])

    events = (
        Event(lambda t, y, a: y[0], direction=-1),  # x = 0 at pi/2
        Event(lambda t, y, a: y[0] - 0.5, direction=-1),  # x = 1/2 at pi/3: first
        Event(lambda t, y, a: y[1] + 2.0),  # v = -2: never
    )
    sol = jode.solve(osc, jnp.array([1.0, 0.0]), 0.0, 10.0, rtol=1e-10, atol=1e-10,
                     event=events)
    assert int(sol.event_index) == 1
    assert abs(float(sol.event_t) - np.pi / 3) <= 1e-9


def test_no_crossing_reaches_t1():
    sol = jode.solve(
        ball, jnp.array([100.0, 0.0]), 0.0, 1.0, args=G, event=GROUND, saveat=jnp.array([1.0])
    )
    assert int(sol.status) == jode.Status.SUCCESS
    assert int(sol.event_index) == -1
    assert np.isnan(float(sol.event_t)) and np.all(np.isnan(np.asarray(sol.event_y)))
    assert abs(float(sol.ys[0, 0]) - (100.0 - 0.5 * G)) <= 1e-9


def test_float32_bounce():
    y0 = jnp.array([2.0, 0.0], jnp.float32)
    sol = jode.solve(ball, y0, 0.0, 10.0, args=jnp.float32(G), event=GROUND, rtol=1e-6,
                     atol=1e-6)
    assert sol.event_t.dtype == jnp.float32 and sol.event_y.dtype == jnp.float32
    assert abs(float(sol.event_t) - np.sqrt(4 / G)) <= 1e-5


# --- transformations -------------------------------------------------------------------


def test_bounce_time_gradient_matches_closed_form_and_finite_differences():
    h = 2.0

    def bounce(h):
        return drop(h).event_t

    grad = float(jax.grad(bounce)(h))
    closed = 1 / np.sqrt(2 * G * h)
    eps = 1e-5
    fd = (float(bounce(h + eps)) - float(bounce(h - eps))) / (2 * eps)
    assert abs(grad - closed) <= 1e-6 * closed
    assert abs(grad - fd) <= 1e-6 * closed
    fwd = float(jax.jacfwd(bounce)(h))
    assert abs(fwd - closed) <= 1e-6 * closed


def test_event_time_gradient_through_args_and_condition():
    # Reaching the level L from height h under gravity g: t = sqrt(2 (h - L) / g);
    # dt/dL = -1 / sqrt(2 g (h - L)) (L only enters the condition), dt/dg = -t / (2 g).
    h = 3.0

    def ball_args(t, y, a):
        return ball(t, y, a[0])

    def t_level(args):
        return jode.solve(
            ball_args, jnp.array([h, 0.0]), 0.0, 10.0, args=args, rtol=1e-10, atol=1e-10,
            event=Event(lambda t, y, a: y[0] - a[1], direction=-1),
        ).event_t

    g, level = G, 1.0
    args = (jnp.asarray(g), jnp.asarray(level))
    t = np.sqrt(2 * (h - level) / g)
    dg, dlevel = jax.grad(t_level)(args)
    assert abs(float(t_level(args)) - t) <= 1e-10
    assert abs(float(dlevel) + 1 / np.sqrt(2 * g * (h - level))) <= 1e-6 / np.sqrt(2 * g)
    assert abs(float(dg) + t / (2 * g)) <= 1e-6 * t / (2 * g)


def test_vmap_gives_per_lane_event_times():
    hs = jnp.array([0.5, 2.0, 8.0, 30.0])
    ts = jnp.linspace(0.0, 3.0, 13)
    sols = jax.vmap(lambda h: drop(h, saveat=ts))(hs)
    t_hit = np.sqrt(2 * np.asarray(hs) / G)
    np.testing.assert_allclose(np.asarray(sols.event_t), t_hit, atol=1e-10)
    # Each lane's saves stop at its own event.
    heights = np.asarray(sols.ys[:, :, 0])
    reached = np.asarray(ts)[None, :] <= t_hit[:, None]
    exact = np.asarray(hs)[:, None] - 0.5 * G * np.asarray(ts)[None, :] ** 2
    np.testing.assert_allclose(heights[reached], exact[reached], atol=1e-10)
    assert np.all(np.isnan(heights[~reached]))


def test_pytree_state_backwards_in_time_and_constant_steps():
    def fall(t, y, g):
        return {"x": y["v"], "v": -g * jnp.ones_like(y["v"])}

    ground = Event(lambda t, y, g: y["x"], direction=-1)
    y0 = {"x": jnp.array(2.0), "v": jnp.array(0.0)}
    sol = jode.solve(fall, y0, 0.0, 10.0, G, event=ground, rtol=1e-10, atol=1e-10)
    assert abs(float(sol.event_t) - np.sqrt(4 / G)) <= 1e-10
    assert abs(float(sol.event_y["v"]) + np.sqrt(4 * G)) <= 1e-9
    # Constant RK4 steps integrate the parabola exactly; the event lies inside a step.
    sol = jode.solve(fall, y0, 0.0, 10.0, G, event=ground, solver=jode.RK4(), dt0=0.1)
    assert abs(float(sol.event_t) - np.sqrt(4 / G)) <= 1e-12
    # Backwards from the ground at t = 1 with the impact velocity: the top is at 1 - v/g,
    # where v crosses zero.
    v = np.sqrt(4 * G)
    top = Event(lambda t, y, g: y["v"])
    sol = jode.solve(fall, {"x": jnp.array(0.0), "v": jnp.array(-v)}, 1.0, -10.0, G,
                     event=top, rtol=1e-10, atol=1e-10)
    assert abs(float(sol.event_t) - (1.0 - v / G)) <= 1e-10
    assert abs(float(sol.event_y["x"]) - 2.0) <= 1e-10


def test_diffrax_backend_agrees():
    pytest.importorskip("diffrax")
    h = 2.0
    ts = jnp.linspace(0.0, 1.0, 11)
    sols = [drop(h, saveat=ts, backend=b) for b in ("jode", "diffrax")]
    for sol in sols:
        assert int(sol.status) == jode.Status.EVENT and int(sol.event_index) == 0
        assert abs(float(sol.event_t) - np.sqrt(2 * h / G)) <= 1e-10
        assert abs(float(sol.t1) - np.sqrt(2 * h / G)) <= 1e-10
    np.testing.assert_allclose(np.asarray(sols[0].event_y), np.asarray(sols[1].event_y),
                               atol=1e-9)
    np.testing.assert_allclose(np.asarray(sols[0].ys), np.asarray(sols[1].ys), atol=1e-9)
    grad = jax.grad(lambda h: drop(h, backend="diffrax").event_t)(h)
    assert abs(float(grad) - 1 / np.sqrt(2 * G * h)) <= 1e-6 / np.sqrt(2 * G * h)


def test_diffrax_backend_several_events_and_no_event():
    pytest.importorskip("diffrax")

    def osc(t, y, a):
        return jnp.stack([y[1], -y[0]])

    events = (Event(lambda t, y, a: y[0], direction=-1), Event(lambda t, y, a: y[0] - 0.5))
    sol = jode.solve(osc, jnp.array([1.0, 0.0]), 0.0, 10.0, rtol=1e-10, atol=1e-10,
                     event=events, backend="diffrax")
    assert int(sol.event_index) == 1 and abs(float(sol.event_t) - np.pi / 3) <= 1e-9
    sol = jode.solve(osc, jnp.array([1.0, 0.0]), 0.0, 1.0, event=events, backend="diffrax")
    assert int(sol.status) == jode.Status.SUCCESS and int(sol.event_index) == -1
    assert np.isnan(float(sol.event_t))


# --- input checks ----------------------------------------------------------------------


def test_bad_events_are_rejected_before_tracing():
    y0 = jnp.array([1.0, 0.0])
    with pytest.raises(ValueError, match="terminal=False"):
        Event(lambda t, y, a: y[0], terminal=False)
    with pytest.raises(ValueError, match="direction"):
        Event(lambda t, y, a: y[0], direction=2)
    with pytest.raises(ValueError, match="real scalar"):
        jode.solve(ball, y0, 0.0, 1.0, args=G, event=Event(lambda t, y, a: y))
    with pytest.raises(ValueError, match="real scalar"):
        jode.solve(ball, y0, 0.0, 1.0, args=G, event=Event(lambda t, y, a: y[0] > 0))
    with pytest.raises(ValueError, match="not both"):
        jode.solve(ball, y0, 0.0, 1.0, args=G, event=GROUND, stop=lambda t, y, a: y[0] < 0)
    with pytest.raises(ValueError, match="DirectAdjoint"):
        jode.solve(ball, y0, 0.0, 1.0, args=G, event=GROUND, adjoint=jode.BacksolveAdjoint())
    with pytest.raises(ValueError, match="jode.Event"):
        jode.solve(ball, y0, 0.0, 1.0, args=G, event=[lambda t, y, a: y[0]])
