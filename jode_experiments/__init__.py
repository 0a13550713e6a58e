"""The reproductions: one module per workflow, run by the `jode` command.

Each target module defines `NAME` (the `jode reproduce NAME` target) and
`run(out_dir: pathlib.Path, quick: bool) -> dict` that writes figures into `out_dir` and
returns the metrics (JSON-serializable) that the CLI saves as `metrics.json`. The library
`jode` never imports this package.
"""

import importlib

#: target name -> (module, one-line description), in run order. Listed here, not found by
#: importing, so that `jode list` answers without importing JAX.
TARGETS = {
    "solver": ("solver_demo", "Lorenz and Lotka-Volterra with jode and diffrax side by side"),
    "recovery": (
        "recovery",
        "parameter recovery: Lotka-Volterra, Stuart-Landau, Lorenz, lynx-hare data, a UDE",
    ),
    "trial": ("trial", "trial-solution networks (Lagaris et al. 1998) on the paper's problems"),
    "neural-ode": (
        "neural_ode",
        "neural ODEs: ODE-Net, adaptive computation, memory, latent ODE, CNF",
    ),
    "ode-optimizer": ("ode_optimizer", "optimizing by integrating the gradient flow"),
    "deq": ("deq", "equilibria: fixed-point solvers, deep equilibrium models"),
}


def load(name: str):
    """The module of target `name`."""
    return importlib.import_module(f"{__name__}.{TARGETS[name][0]}")


def available(errors: dict | None = None) -> dict:
    """NAME -> module for every target, in run order.

    A module that fails to import is left out and its exception recorded in `errors`
    (target name -> exception) when a dict is given, so one broken workflow does not hide
    the others; with `errors=None` the exception propagates.
    """
    found = {}
    for name in TARGETS:
        try:
            found[name] = load(name)
        except Exception as exc:
            if errors is None:
                raise
            errors[name] = exc
    return found
