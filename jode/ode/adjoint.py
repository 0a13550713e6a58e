"""How gradients flow through a solve.

- `DirectAdjoint` (default): discretize-then-optimize, reverse mode through the step loop.
- `ForwardMode`: a plain `lax.while_loop`, for `jax.jvp` / `jax.jacfwd` (and Hessians by
  forward-over-forward).

Constant-step solves with a step count known before tracing run as a `lax.scan`, which
every transformation differentiates whatever the adjoint.
"""

from __future__ import annotations

import equinox as eqx
import jax


class AbstractAdjoint(eqx.Module):
    """Chooses the step loop a solve runs in; subclasses are final."""

    def loop(self, cond, body, init, args, max_iter):
        """Run `body(carry, args)` while `cond(carry)`, at most `max_iter` times."""
        raise NotImplementedError

    def solve(self, solve_fn, f, y0, t0, t1, args, **kwargs):
        return solve_fn(f, y0, t0, t1, args, loop=self.loop, **kwargs)


def lax_loop(cond, body, init, args, max_iter):
    del max_iter
    return jax.lax.while_loop(cond, lambda c: body(c, args), init)


class ForwardMode(AbstractAdjoint):
    """Forward-mode differentiation (`jax.jvp`, `jax.jacfwd`) through the step loop."""

    def loop(self, cond, body, init, args, max_iter):
        return lax_loop(cond, body, init, args, max_iter)


class DirectAdjoint(AbstractAdjoint):
    """Discretize-then-optimize: the exact gradient of the discretized solve."""

    def loop(self, cond, body, init, args, max_iter):
        return lax_loop(cond, body, init, args, max_iter)
