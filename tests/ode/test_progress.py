"""`solve(..., progress=True)`: the bar reaches 100%, updates at most every percent, and
the solution is that of progress=False, bit for bit (its gradient to rounding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jode
from jode.models import lotka_volterra
from jode.ode import _progress

LV_P = jnp.array([1.5, 1.0, 3.0, 1.0])
Y0 = jnp.array([1.0, 1.0])
TS = jnp.linspace(0.0, 10.0, 21)


class RecordingBar:
    """Stands in for a tqdm bar: records every value shown."""

    def __init__(self, log):
        self.n, self.shown, self.closed = 0, [], False
        log.append(self)

    def reset(self):
        self.n = 0

    def refresh(self):
        self.shown.append(self.n)

    def close(self):
        self.closed = True


@pytest.fixture
def bars(monkeypatch):
    log = []
    monkeypatch.setattr(_progress, "_make_bar", lambda: RecordingBar(log))
    return log


def _check_bar(bar):
    assert bar.closed
    assert bar.shown[-1] == 100.0
    assert all(a <= b for a, b in zip(bar.shown, bar.shown[1:], strict=False))
    # At most one update per whole percent passed, plus the closing one.
    assert len(bar.shown) <= 102


@pytest.mark.parametrize(
    "options",
    [dict(saveat=TS), dict(solver=jode.RK4(), n_steps=500)],
    ids=["adaptive", "constant-scan"],
)
def test_bar_reaches_100_and_results_unchanged(bars, options):
    plain = jode.solve(lotka_volterra, Y0, 0.0, 10.0, LV_P, **options)
    shown = jode.solve(lotka_volterra, Y0, 0.0, 10.0, LV_P, progress=True, **options)
    jitted = jax.jit(
        lambda p: jode.solve(lotka_volterra, Y0, 0.0, 10.0, p, progress=True, **options).ys
    )(LV_P)
    jax.effects_barrier()
    np.testing.assert_array_equal(shown.ys, plain.ys)
    np.testing.assert_array_equal(jitted, plain.ys)
    assert shown.stats["steps"] == plain.stats["steps"]
    assert len(bars) == 2
    for bar in bars:
        _check_bar(bar)
    # The steps are spread over the interval: the bar passes through intermediate values.
    assert len(bars[0].shown) >= 20


def test_one_bar_under_vmap_showing_the_slowest_lane(bars):
    ps = jnp.stack([LV_P, 1.3 * LV_P, 0.8 * LV_P])
    run = lambda p, progress: jode.solve(  # noqa: E731
        lotka_volterra, Y0, 0.0, 10.0, p, saveat=TS, progress=progress
    ).ys
    plain = jax.vmap(lambda p: run(p, False))(ps)
    shown = jax.vmap(lambda p: run(p, True))(ps)
    batch = [
        jode.solve_batch(
            lotka_volterra, jnp.stack([Y0] * 3), 0.0, 10.0, ps, saveat=TS, progress=progress
        ).ys
        for progress in (False, True)
    ]
    jax.effects_barrier()
    np.testing.assert_array_equal(shown, plain)
    np.testing.assert_array_equal(batch[1], batch[0])
    assert len(bars) == 2
    for bar in bars:
        _check_bar(bar)


def test_gradient_unchanged_and_failed_solve_stops_short(bars):
    loss = lambda p, progress: jnp.sum(  # noqa: E731
        jode.solve(lotka_volterra, Y0, 0.0, 10.0, p, saveat=TS, progress=progress).ys ** 2
    )
    # The reports split XLA's fusions of the differentiated loop: equal to rounding.
    np.testing.assert_allclose(
        jax.grad(loss)(LV_P, True), jax.grad(loss)(LV_P, False), rtol=1e-13, atol=0
    )
    # A solve out of steps ends where it stopped, short of 100%.
    sol = jode.solve(lotka_volterra, Y0, 0.0, 10.0, LV_P, max_steps=20, throw=False,
                     progress=True)
    jax.effects_barrier()
    assert sol.status == jode.Status.MAX_STEPS
    last = bars[-1]
    assert last.closed
    expected = 100 * float(sol.stats["t_last"]) / 10.0
    assert last.shown[-1] == pytest.approx(expected, abs=0.01) and last.shown[-1] < 100


def test_real_tqdm_bar_prints_100_percent(capsys):
    jode.solve(lambda t, y, a: -y, jnp.ones(2), 0.0, 1.0, progress=True)
    jax.effects_barrier()
    err = capsys.readouterr().err
    assert "100%" in err
