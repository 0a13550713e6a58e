"""Peak memory (max RSS) of one neural-ODE training step, measured in a fresh process.

    python -m jode.experiments._neural_ode_memory ADJOINT N_STEPS [BATCH WIDTH]

prints one JSON line {"adjoint", "n_steps", "max_rss_mb", "baseline_rss_mb"}. The step is
the gradient of a squared-norm loss through a `NeuralODE` (MLP field, RK4, N constant
steps); `baseline_rss_mb` is the RSS after compiling the forward solve only, so the
difference is what the backward pass holds (Chen et al. 2018, §2: the adjoint method's
memory is constant in the number of steps).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(adjoint_name: str, n_steps: int, batch: int = 256, width: int = 256) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import jode
    from jode.nn.neural_ode import MLPField, NeuralODE

    adjoint = {"direct": jode.DirectAdjoint(), "backsolve": jode.BacksolveAdjoint()}[adjoint_name]
    node = NeuralODE(
        MLPField(width, width, 2, key=jr.key(0)),
        solver=jode.RK4(),
        n_steps=n_steps,
        adjoint=adjoint,
        t1=1.0,
    )
    y0 = jr.normal(jr.key(1), (batch, width), jnp.float32)

    def loss(model):
        return jnp.sum(model(y0) ** 2)

    jax.block_until_ready(eqx.filter_jit(loss)(node))
    baseline = _max_rss_mb()
    grads = eqx.filter_jit(eqx.filter_grad(loss))(node)
    jax.block_until_ready(grads)
    return {
        "adjoint": adjoint_name,
        "n_steps": n_steps,
        "max_rss_mb": _max_rss_mb(),
        "baseline_rss_mb": baseline,
    }


def measure_in_subprocess(
    adjoint_name: str, n_steps: int, batch: int = 256, width: int = 256, timeout: float = 1200
) -> dict:
    """Run `measure` in a new Python process (so that max RSS is this step's alone)."""
    out = subprocess.run(
        [sys.executable, "-m", __name__, adjoint_name, str(n_steps), str(batch), str(width)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    argv = sys.argv[1:]
    ints = [int(a) for a in argv[1:]]
    print(json.dumps(measure(argv[0], *ints)))
