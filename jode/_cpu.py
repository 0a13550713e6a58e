"""`jode.configure_cpu()`: compile small XLA:CPU while loops into one kernel (opt-in).

XLA:CPU runs a `while` loop as a sequence of separately dispatched kernels, one per fused
operation, unless the loop is small enough for its small-while-loop pass, which compiles
the whole loop into a single kernel. An ODE solve is exactly such a loop: a few vectors of
state and dozens of tiny operations a step. The pass's default limit (1 kB of loop state)
is exceeded as soon as a solve saves a few dozen time points or is differentiated, and the
per-kernel dispatch then costs several times the arithmetic (a Lotka-Volterra solve with
101 save times: 175 us with the default limit, 24 us with a raised one; its gradient
1.2 ms vs 0.11 ms; `benchmarks/xla_threshold.py`).

The option is read once, when JAX creates its CPU client, and applies to the whole
process (and to child processes, which inherit `XLA_FLAGS`). `import jode` therefore does
not set it: call `jode.configure_cpu()` first thing, before any JAX computation. Called
too late it warns and changes nothing. Your own setting of the option in `XLA_FLAGS` wins.
"""

from __future__ import annotations

import os
import warnings

#: XLA:CPU backend option (an entry of `--xla_backend_extra_options`).
THRESHOLD_OPTION = "xla_cpu_small_while_loop_byte_threshold"
#: Bytes a loop's body may access for the loop to become one kernel (XLA's default: 1 kB).
#: 16 MiB takes in the step loops of single and differentiated solves (a Lotka-Volterra
#: solve with 101 saves and its gradient need under 1 MB) and of vmapped batches up to a
#: few thousand lanes, and leaves larger loops as they are: with 10,000 lanes the kernels
#: dispatched one by one run faster than one kernel (t1 only: 41 vs 52 ms on 2 cores).
THRESHOLD_BYTES = 16 << 20
_EXTRA = "--xla_backend_extra_options="


def with_threshold(flags: str, threshold: int = THRESHOLD_BYTES) -> str | None:
    """`flags` (an XLA_FLAGS string) with the small-loop threshold added, or None when the
    flags already set it."""
    if THRESHOLD_OPTION in flags:
        return None
    entry = f"{THRESHOLD_OPTION}={threshold}"
    parts = flags.split()
    for i, part in enumerate(parts):
        if part.startswith(_EXTRA):
            value = part[len(_EXTRA) :]
            parts[i] = f"{_EXTRA}{value},{entry}" if value else f"{_EXTRA}{entry}"
            return " ".join(parts)
    return " ".join([*parts, f"{_EXTRA}{entry}"])


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # the private API moved: assume not yet
        return False


def configure_cpu(threshold: int = THRESHOLD_BYTES, *, environ=None) -> bool:
    """Raise XLA:CPU's small-while-loop threshold so that solves compile into one kernel.

    Call it once, before the first JAX computation (e.g. at the top of a script or
    notebook, right after the imports). It edits `XLA_FLAGS` in `environ` (default
    `os.environ`) and so affects every XLA:CPU computation of this process and of the
    processes it starts.

    Args:
        threshold: bytes a loop body may access to become one kernel.
        environ: the environment to edit (for tests); default `os.environ`.

    Returns:
        True if the option was added; False if `XLA_FLAGS` already sets it (yours wins).

    Warns:
        RuntimeWarning when JAX's backends already exist: the option can no longer take
        effect in this process, and nothing is changed.
    """
    environ = os.environ if environ is None else environ
    if environ is os.environ and _backends_initialized():
        warnings.warn(
            "jode.configure_cpu() was called after JAX created its backends, so the "
            "XLA:CPU loop option cannot take effect in this process; call it before the "
            "first JAX computation (or set XLA_FLAGS before starting Python)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    flags = with_threshold(environ.get("XLA_FLAGS", ""), threshold)
    if flags is None:
        return False
    environ["XLA_FLAGS"] = flags
    return True


def cpu_configured(environ=None) -> bool:
    """Whether `XLA_FLAGS` carries the small-while-loop option (set by jode or by you)."""
    environ = os.environ if environ is None else environ
    return THRESHOLD_OPTION in environ.get("XLA_FLAGS", "")
