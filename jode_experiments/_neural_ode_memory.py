"""Peak memory of one neural-ODE training step, measured in a fresh Python process.

`measure_in_subprocess(adjoint, n_steps, batch, width)` starts a clean interpreter
(`sys.executable -c ...`) that builds a `NeuralODE` (MLP field, RK4, `n_steps` constant
steps), compiles and runs the gradient of a squared-norm loss, and prints one JSON line:

- `temp_mb`: the scratch memory XLA allocates for the compiled gradient
  (`Compiled.memory_analysis().temp_size_in_bytes`): what the backward pass holds, exactly
  and independently of the allocator;
- `peak_rss_mb`: the child's own peak resident set size (Linux `VmHWM` of its address
  space, which starts afresh at `exec`), and `baseline_rss_mb`, the same after compiling the
  forward solve only.

Why a child reads `VmHWM` and not `getrusage(RUSAGE_SELF).ru_maxrss`: on Linux the latter
survives `fork`/`exec`, so a child started by a large parent reports the parent's peak.

Chen et al. (2018), "Neural Ordinary Differential Equations", NeurIPS, §2: the adjoint
method's memory is constant in the number of steps, while differentiating through the
solver's operations (DirectAdjoint) stores the steps (jode keeps checkpointed segments of
constant-step solves, so it grows like the square root of the step count).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def _own_peak_rss_mb() -> float:
    """This address space's peak RSS in MB (VmHWM); ru_maxrss where /proc is absent."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def measure(adjoint_name: str, n_steps: int, batch: int = 256, width: int = 256) -> dict:
    """Compile and run one gradient step in this process; the memory it took."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import jode
    from jode.nn.neural_ode import MLPField, NeuralODE

    adjoints = {"direct": jode.DirectAdjoint(), "backsolve": jode.BacksolveAdjoint()}
    if adjoint_name not in adjoints:
        raise ValueError(f"adjoint_name must be one of {list(adjoints)}; got {adjoint_name!r}")
    node = NeuralODE(
        MLPField(width, width, 2, key=jr.key(0)),
        solver=jode.RK4(),
        n_steps=n_steps,
        adjoint=adjoints[adjoint_name],
        t1=1.0,
    )
    # The default float: float32, or float64 where x64 is enabled (as under the tests).
    y0 = jr.normal(jr.key(1), (batch, width), jnp.result_type(float))
    params, static = eqx.partition(node, eqx.is_array)

    def loss(params):
        return jnp.sum(eqx.combine(params, static)(y0) ** 2)

    jax.block_until_ready(jax.jit(loss)(params))
    baseline = _own_peak_rss_mb()
    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    analysis = compiled.memory_analysis()
    temp = getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None
    jax.block_until_ready(compiled(params))
    return {
        "adjoint": adjoint_name,
        "n_steps": n_steps,
        "batch": batch,
        "width": width,
        "temp_mb": None if temp is None else temp / 2**20,
        "peak_rss_mb": _own_peak_rss_mb(),
        "baseline_rss_mb": baseline,
    }


def measure_in_subprocess(
    adjoint_name: str, n_steps: int, batch: int = 256, width: int = 256, timeout: float = 1200
) -> dict:
    """Run `measure` in a new, clean Python interpreter, so that its peak is its own."""
    code = (
        "import json, sys; from jode_experiments._neural_ode_memory import measure; "
        f"print(json.dumps(measure({adjoint_name!r}, {int(n_steps)}, {int(batch)}, "
        f"{int(width)})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
