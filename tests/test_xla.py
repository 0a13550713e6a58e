"""jode/_xla.py: the XLA:CPU small-while-loop option set at import."""

import os
import re

import jax
import jax.numpy as jnp
import pytest

import jode
from jode import _xla
from jode.models import lotka_volterra

KEY = _xla.THRESHOLD_OPTION


def test_with_threshold_adds_merges_and_respects_the_user():
    assert _xla.with_threshold("", 5) == f"--xla_backend_extra_options={KEY}=5"
    assert _xla.with_threshold("--xla_cpu_enable_fast_math=false", 5) == (
        f"--xla_cpu_enable_fast_math=false --xla_backend_extra_options={KEY}=5"
    )
    # An existing extra-options entry is extended, not duplicated.
    assert _xla.with_threshold("--xla_backend_extra_options=a=1", 5) == (
        f"--xla_backend_extra_options=a=1,{KEY}=5"
    )
    assert _xla.with_threshold(f"--xla_backend_extra_options={KEY}=77", 5) is None


def test_configure_obeys_opt_out_and_initialized_backends():
    env = {}
    assert _xla.configure(env, initialized=False)
    assert env["XLA_FLAGS"].endswith(f"{KEY}={_xla.THRESHOLD_BYTES}")
    assert not _xla.configure(env, initialized=False)  # already set: left alone
    assert not _xla.configure({"JODE_XLA_FLAGS": "0"}, initialized=False)
    assert not _xla.configure({}, initialized=True)


@pytest.mark.skipif(
    KEY not in os.environ.get("XLA_FLAGS", "") or jax.default_backend() != "cpu",
    reason="needs XLA:CPU with the small-while-loop option (JODE_XLA_FLAGS=0 turns it off)",
)
def test_differentiated_solve_with_saves_compiles_to_kernels_without_while():
    """A scatter in the loop (e.g. from `.at[i].set` or the transpose of a gather) keeps
    XLA:CPU from compiling a loop into one kernel, which makes a solve 4-10x slower."""
    ts = jnp.linspace(0.0, 10.0, 101)
    y0 = jnp.array([1.0, 1.0])

    def loss(p):
        return jnp.sum(jode.solve(lotka_volterra, y0, 0.0, 10.0, p, saveat=ts).ys ** 2)

    p = jnp.array([1.5, 1.0, 3.0, 1.0])
    for fn in (jax.jit(loss), jax.jit(jax.grad(loss))):
        hlo = fn.lower(p).compile().as_text()
        entry = hlo[hlo.index("\nENTRY"):]
        entry = entry[: entry.index("\n}")]
        assert not re.search(r"\bwhile\(", entry), "a step loop was not compiled into one kernel"
