"""jode/_cpu.py: the XLA:CPU small-while-loop option, set only when asked; import is free."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jode
from jode import _cpu
from jode.models import lotka_volterra

KEY = _cpu.THRESHOLD_OPTION


def test_with_threshold_adds_merges_and_respects_the_user():
    assert _cpu.with_threshold("", 5) == f"--xla_backend_extra_options={KEY}=5"
    assert _cpu.with_threshold("--xla_cpu_enable_fast_math=false", 5) == (
        f"--xla_cpu_enable_fast_math=false --xla_backend_extra_options={KEY}=5"
    )
    # An existing extra-options entry is extended, not duplicated.
    assert _cpu.with_threshold("--xla_backend_extra_options=a=1", 5) == (
        f"--xla_backend_extra_options=a=1,{KEY}=5"
    )
    assert _cpu.with_threshold(f"--xla_backend_extra_options={KEY}=77", 5) is None


def test_configure_cpu_edits_the_given_environment_once():
    env = {}
    assert jode.configure_cpu(environ=env)
    assert env["XLA_FLAGS"].endswith(f"{KEY}={_cpu.THRESHOLD_BYTES}")
    assert _cpu.cpu_configured(env)
    assert not jode.configure_cpu(environ=env)  # already set: left alone
    assert env["XLA_FLAGS"].count(KEY) == 1


def test_configure_cpu_too_late_warns_and_changes_nothing(monkeypatch):
    jnp.zeros(1).block_until_ready()  # the backends exist now
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.warns(RuntimeWarning, match="before the first JAX computation"):
        assert not jode.configure_cpu()
    assert os.environ["XLA_FLAGS"] == ""


_PROBE = """
import json, os, sys
before = dict(os.environ)
import jode
import jax.numpy as jnp
jode.solve(lambda t, y, a: -y, jnp.ones(1), 0.0, 1.0)
mods = sorted(m for m in sys.modules if m.split('.')[0] in ('jode', 'jode_experiments'))
heavy = [m for m in ('matplotlib', 'sklearn', 'optax', 'diffrax') if m in sys.modules]
print(json.dumps(dict(same=before == dict(os.environ), mods=mods, heavy=heavy)))
"""


def test_import_has_no_side_effects_and_loads_only_the_library():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, check=True
    )
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["same"], "import jode (or a solve) changed os.environ"
    assert probe["mods"] and all(m.split(".")[0] == "jode" for m in probe["mods"])
    assert not any(m.startswith(("jode.fit", "jode.nn", "jode.trial", "jode.optim")) for m in
                   probe["mods"])
    assert probe["heavy"] == [], f"import jode loaded {probe['heavy']}"


@pytest.mark.skipif(
    KEY not in os.environ.get("XLA_FLAGS", "") or jax.default_backend() != "cpu",
    reason="needs XLA:CPU with the small-while-loop option (jode.configure_cpu())",
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
