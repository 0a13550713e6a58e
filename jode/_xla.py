"""The one XLA option jode sets at import: compile small CPU while loops into one kernel.

XLA:CPU runs a `while` loop as a sequence of separately dispatched kernels, one per fused
operation, unless the loop is small enough for its small-while-loop pass, which compiles
the whole loop into a single kernel. An ODE solve is exactly such a loop: a few vectors
of state and dozens of tiny operations a step. The pass's default limit (1 kB of loop
state) is exceeded as soon as a solve saves a few dozen time points or is differentiated,
and the per-kernel dispatch then costs several times the arithmetic (a Lotka-Volterra
solve with 101 save times: 175 us with the default limit, 24 us with a raised one; its
gradient 1.2 ms vs 0.11 ms). jode raises the limit through `XLA_FLAGS` when it is
imported, before JAX has created its CPU client, unless

- the environment already sets `xla_cpu_small_while_loop_byte_threshold` (yours wins),
- `JODE_XLA_FLAGS=0` is set (opt out), or
- JAX's backends were already initialized (run any JAX computation after importing jode,
  or set the flag yourself: the option is read once, when the CPU client is created).

The option only affects XLA's CPU backend. `jode.xla_flags_applied()` says whether it was
set by jode in this process.
"""

from __future__ import annotations

import os

#: XLA:CPU backend option (an entry of `--xla_backend_extra_options`).
THRESHOLD_OPTION = "xla_cpu_small_while_loop_byte_threshold"
#: Bytes a loop's body may access for the loop to become one kernel (XLA's default: 1 kB).
#: 16 MiB takes in the step loops of single and differentiated solves (a Lotka-Volterra
#: solve with 101 saves and its gradient need under 1 MB) and of vmapped batches up to a
#: few thousand lanes, and leaves larger loops as they are: with 10,000 lanes the kernels
#: dispatched one by one run faster than one kernel (t1 only: 41 vs 52 ms on 2 cores).
THRESHOLD_BYTES = 16 << 20
_EXTRA = "--xla_backend_extra_options="

_applied = False


def with_threshold(flags: str, threshold: int = THRESHOLD_BYTES) -> str | None:
    """`flags` (an XLA_FLAGS string) with the small-loop threshold added, or None when the
    flags already set it."""
    if THRESHOLD_OPTION in flags:
        return None
    entry = f"{THRESHOLD_OPTION}={threshold}"
    parts = flags.split()
    for i, part in enumerate(parts):
        if part.startswith(_EXTRA):
            value = part[len(_EXTRA):]
            parts[i] = f"{_EXTRA}{value},{entry}" if value else f"{_EXTRA}{entry}"
            return " ".join(parts)
    return " ".join([*parts, f"{_EXTRA}{entry}"])


def _backends_initialized() -> bool:
    try:
        from jax._src import xla_bridge

        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API moved: setting the flag is harmless
        return False


def configure(environ=os.environ, initialized: bool | None = None) -> bool:
    """Add the option to `environ["XLA_FLAGS"]` when allowed (module docstring); True if
    it was added. `initialized` overrides the check for JAX's backends."""
    global _applied
    if environ.get("JODE_XLA_FLAGS", "1") == "0":
        return False
    if _backends_initialized() if initialized is None else initialized:
        return False
    flags = with_threshold(environ.get("XLA_FLAGS", ""))
    if flags is None:
        return False
    environ["XLA_FLAGS"] = flags
    _applied = True
    return True


def xla_flags_applied() -> bool:
    """Whether jode raised XLA:CPU's small-while-loop threshold in this process."""
    return _applied
