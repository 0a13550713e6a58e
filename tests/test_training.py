"""The chunked training runner (`jode._training`): stopping rules on gradient descent on a
quadratic (whose losses have a closed form), the order of rules, budgets, checkpoints and
resumes, and a progress bar whose rate and ETA leave out the compiling first chunk."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jode import RESULTS
from jode import _training as training
from jode._training import Progress, nonfinite, reached, run_chunks, stalled

LR, CHUNK, X0 = 0.05, 10, 3.0


@jax.jit
def descend(x):
    """CHUNK steps of gradient descent on L(x) = x²: x <- (1 - 2 LR) x."""
    return jax.lax.scan(lambda x, _: (x - LR * 2 * x, None), x, None, length=CHUNK)[0]


def quadratic_loss(x):
    return float(x**2)


def test_stops_at_the_chunk_where_the_tolerance_is_reached():
    # L after n steps is X0² (1 - 2 LR)^(2n): the first whole chunk at or below tol.
    tol = 1e-6
    n = math.log(tol / X0**2) / (2 * math.log(1 - 2 * LR))
    chunks = math.ceil(n / CHUNK)
    out = run_chunks(descend, jnp.asarray(X0), total=10_000, chunk=CHUNK,
                     loss_of=quadratic_loss, stop=(nonfinite, reached(tol)))
    assert out.status == RESULTS.CONVERGED
    assert out.steps == chunks * CHUNK and len(out.losses) == chunks
    assert out.losses[-1] <= tol < out.losses[-2]
    np.testing.assert_allclose(out.losses[-1], X0**2 * (1 - 2 * LR) ** (2 * out.steps),
                               rtol=1e-12)
    np.testing.assert_allclose(float(out.state), X0 * (1 - 2 * LR) ** out.steps, rtol=1e-12)


def test_nonfinite_stops_at_the_chunk_where_the_nan_appears():
    calls = []

    def step(x):
        calls.append(1)
        x = descend(x)
        return x * jnp.nan if len(calls) == 3 else x

    out = run_chunks(step, jnp.asarray(X0), total=1000, chunk=CHUNK, loss_of=quadratic_loss,
                     stop=(nonfinite, reached(0.0)))
    assert out.status == RESULTS.NONFINITE
    assert out.steps == 3 * CHUNK and len(calls) == 3
    assert np.isfinite(out.losses[1]) and np.isnan(out.losses[2])


def test_the_budget_ends_a_run_with_max_steps_and_overshoots_by_less_than_a_chunk():
    bar = Progress(250, enabled=True)
    out = run_chunks(lambda i: i + 1, 0, total=250, chunk=100, loss_of=lambda i: 1.0 / i,
                     stop=(nonfinite, reached(0.0)), progress=bar)
    # Chunks are whole compiled calls: 3 of 100 steps for a budget of 250.
    assert out.status == RESULTS.MAX_STEPS and (out.state, out.steps) == (3, 300)
    assert out.losses == [1.0, 0.5, 1 / 3]
    assert bar.bar.n == 250  # the bar stops at its total
    bar.close()
    nothing = run_chunks(lambda x: pytest.fail("a zero budget runs no chunk"), 1.0, total=0,
                         chunk=5, loss_of=float, progress=True)
    assert nothing == (1.0, 0, RESULTS.MAX_STEPS, [])


def stall_run(values, rtol=1e-3, chunks=3):
    out = run_chunks(lambda i: i + 1, -1, total=len(values), chunk=1,
                     loss_of=lambda i: values[i], stop=(stalled(rtol, chunks),))
    return out.steps, out.status


def test_stall_rule_needs_k_flat_chunks_in_a_row():
    # Flat for two chunks, then progress again: never `chunks`=3 flat ones.
    assert stall_run([1.0, 1.0, 1.0, 0.5, 0.5, 0.5 * (1 - 2e-3), 0.1]) == (7, RESULTS.MAX_STEPS)
    # 0.5 then three chunks within 1e-3 of it: stops at the third.
    flat = [1.0, 0.5, 0.4999, 0.49995, 0.4996, 0.1]
    assert stall_run(flat) == (5, RESULTS.CONVERGED)
    # The same losses with a tighter rtol: 0.4996 is 8e-4 below 0.5, progress enough.
    assert stall_run(flat, rtol=1e-4) == (6, RESULTS.MAX_STEPS)
    # A rise is no progress either.
    assert stall_run([1.0, 2.0, 3.0, 4.0, 0.0]) == (4, RESULTS.CONVERGED)
    with pytest.raises(ValueError, match="chunks must be >= 1"):
        stalled(1e-3, 0)


def test_the_first_rule_that_fires_gives_the_status():
    def diverged(losses):
        return RESULTS.DIVERGED if len(losses) >= 2 else None

    out = run_chunks(lambda i: i + 1, 0, total=10, chunk=1, loss_of=float,
                     stop=(diverged, reached(np.inf)))
    assert (out.steps, out.status) == (1, RESULTS.CONVERGED)
    out = run_chunks(lambda i: i + 1, 0, total=10, chunk=1, loss_of=float,
                     stop=(diverged, lambda losses: RESULTS.CONVERGED if len(losses) >= 2
                           else None))
    assert (out.steps, out.status) == (2, RESULTS.DIVERGED)


def test_a_step_that_stops_itself_resumes_and_checkpoints():
    """`steps_of`/`reported`: a stage whose compiled chunk stops at step 130 of 1000; every
    chunk reaches `on_chunk` (also the last, before the stop); a resumed state continues
    from its step, and a finished one runs no chunk."""
    stop_at = 130

    def step(s):
        return min(s + 50, stop_at)

    def reported(s):
        return RESULTS.CONVERGED if s >= stop_at else None

    seen = []
    out = run_chunks(step, 0, total=1000, chunk=50, loss_of=float, steps_of=lambda s: s,
                     reported=reported, on_chunk=lambda *a: seen.append(a))
    assert (out.state, out.steps, out.status) == (130, 130, RESULTS.CONVERGED)
    assert seen == [(50, 50, 50), (100, 100, 50), (130, 130, 30)]
    seen.clear()
    out = run_chunks(step, 100, total=1000, chunk=50, loss_of=float, steps_of=lambda s: s,
                     reported=reported, on_chunk=lambda *a: seen.append(a), done=100)
    assert out.steps == 130 and seen == [(130, 130, 30)]
    out = run_chunks(lambda s: pytest.fail("a finished state runs no chunk"), 130,
                     total=1000, chunk=50, loss_of=float, reported=reported, done=130)
    assert (out.steps, out.status, out.losses) == (130, RESULTS.CONVERGED, [])


def test_rate_and_eta_leave_out_the_compiling_first_chunk(monkeypatch):
    """30 s to compile and run the first 10 steps, then 1 s per 10 steps: the bar shows
    10 steps/s and 5 s left for the last 50 steps (counting the first chunk: 1.5/s, 34 s)."""
    import tqdm.std

    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    monkeypatch.setattr(training, "_clock", lambda: now[0])
    bar = Progress(120, "test")
    bar.skip(20)  # resumed: counted, not in the rate
    now[0] += 30.0
    bar.advance(10, loss=1.0, step=30)
    for _ in range(4):
        now[0] += 1.0
        bar.advance(10, loss=0.5, step=70)
    d = bar.bar.format_dict
    assert (d["n"], d["elapsed"]) == (70, 4.0)
    assert (d["n"] - d["initial"]) / d["elapsed"] == 10.0
    meter = bar.bar.format_meter(**d)
    assert "70/120 [00:04<00:05, 10.00it/s, loss=0.5, step=70]" in meter
    # A new run (the next stage) compiles again: its first chunk is left out too.
    bar.begin("next")
    now[0] += 60.0
    bar.advance(10)
    now[0] += 1.0
    bar.advance(10)
    d = bar.bar.format_dict
    assert (d["n"] - d["initial"]) / d["elapsed"] == 10.0
    bar.close()


def test_a_step_compiled_ahead_keeps_its_first_chunk_in_the_rate(monkeypatch):
    import tqdm.std

    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    monkeypatch.setattr(training, "_clock", lambda: now[0])
    bar = Progress(100, "test", compiled=True)
    for _ in range(4):
        now[0] += 2.0
        bar.advance(10)
    d = bar.bar.format_dict
    assert (d["n"] - d["initial"]) / d["elapsed"] == 5.0
    bar.close()
