"""A while loop that `jax.vmap` batches without blending the carry.

Under `vmap`, `lax.while_loop` with a per-lane condition runs until every lane is done and,
on each iteration, selects between the new and the old value of every carried array (a lane
that has finished must not move). A solve carries its save buffer (n_save x n per lane), so
those selects touch the whole buffer on every step, and they dominate batched solves.

`masked_while_loop` requires what the solve's step body already guarantees: the body is a
no-op for a carry whose condition is false (every update is masked by the lane's own
`active` flag, and buffer blocks are written back unchanged for a masked lane). Then the
batched loop needs no select at all: its rule (a `jax.custom_batching.custom_vmap`) runs
`vmap(body)` while any lane is active. Each lane takes the iterations it would take alone.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


def masked_while_loop(cond, body, init, args):
    """`while cond(c, args): c = body(c, args)`, batched select-free under `jax.vmap`.

    Everything traced that `cond` and `body` read must come through `init` and `args` (a
    closed-over batched array would be outside the batching rule's reach).

    Args:
        cond: (carry, args) -> bool scalar.
        body: (carry, args) -> carry; must return its carry unchanged when `cond` is false.
        init: the initial carry (a pytree).
        args: operands of `body` (any pytree; its non-array leaves are static).

    Returns:
        The final carry.
    """
    if forward_mode((init, args)):
        # custom_vmap has no forward-mode rule; JAX batches the plain loop correctly.
        return jax.lax.while_loop(lambda c: cond(c, args), lambda c: body(c, args), init)
    args_arr, args_static = eqx.partition(args, eqx.is_array)
    init_arr, init_static = eqx.partition(init, eqx.is_array)

    def step(c, a):
        full = body(eqx.combine(c, init_static), eqx.combine(a, args_static))
        return eqx.filter(full, eqx.is_array)

    def keep_going(c, a):
        return cond(eqx.combine(c, init_static), eqx.combine(a, args_static))

    def plain(c, a):
        return jax.lax.while_loop(lambda c: keep_going(c, a), lambda c: step(c, a), c)

    run = jax.custom_batching.custom_vmap(plain)

    @run.def_vmap
    def _batched(axis_size, in_batched, c, a):
        # Scalars and vectors carry their lanes on the last axis (a structure of arrays):
        # component y_i of every lane is one contiguous row, so vector fields that index
        # and stack components, and norms over components, are plain elementwise work.
        # Buffers (save rows, Jacobians) keep lanes first, where batched scatters and
        # linear solves want them.
        def axis(x, batched):  # where a leaf keeps its lanes, from its per-lane rank
            return -1 if jnp.ndim(x) - batched <= 1 else 0

        def lanes(x, batched):
            if not batched:
                x = jnp.broadcast_to(x, (axis_size,) + jnp.shape(x))
            return jnp.moveaxis(x, 0, axis(x, True))

        c_batched, a_batched = in_batched
        if axis_size == 1:  # one lane: the plain loop, without batched bookkeeping
            c, a = jax.tree.map(lambda x, b: x[0] if b else x, (c, a), (c_batched, a_batched))
            out = plain(c, a)
            return jax.tree.map(lambda x: x[None], out), jax.tree.map(lambda _: True, out)
        c_axes = jax.tree.map(axis, c, c_batched)
        a_axes = jax.tree.map(lambda x, b: axis(x, b) if b else None, a, a_batched)
        c = jax.tree.map(lanes, c, c_batched)
        a = jax.tree.map(lambda x, b: lanes(x, b) if b else x, a, a_batched)
        step_v = jax.vmap(step, in_axes=(c_axes, a_axes), out_axes=c_axes)
        keep_going_v = jax.vmap(keep_going, in_axes=(c_axes, a_axes))
        out = jax.lax.while_loop(lambda c: jnp.any(keep_going_v(c, a)), lambda c: step_v(c, a), c)
        out = jax.tree.map(lambda x, ax: jnp.moveaxis(x, ax, 0), out, c_axes)
        return out, jax.tree.map(lambda _: True, out)

    return eqx.combine(run(init_arr, args_arr), init_static)


def forward_mode(tree):
    """Whether the innermost transformation acting on `tree` is forward mode (jvp).

    Reverse mode linearizes with its own tracer type (JAX's direct linearization), so a
    JVP tracer on the outside means jax.jvp / jax.jacfwd; forward-over-reverse (Hessians,
    Hessian-vector products) sees the linearization first and takes the checkpointed path.
    """
    if not getattr(jax.config, "jax_use_direct_linearize", False):
        return False
    try:
        from jax._src.interpreters.ad import JVPTracer
    except ImportError:  # pragma: no cover - a JAX without this class
        return False
    return any(isinstance(x, JVPTracer) for x in jax.tree.leaves(tree))


def batched(tree):
    """Whether some array of `tree` is being batched by `jax.vmap` right now.

    Used only to choose a data layout that is faster under vmap; a wrong answer costs
    speed, never correctness.
    """
    try:
        from jax._src.interpreters.batching import BatchTracer
    except ImportError:  # pragma: no cover - a JAX without this class
        return False
    return any(isinstance(x, BatchTracer) for x in jax.tree.leaves(tree))
