"""A while loop whose `vmap` needs no per-iteration selects.

`jax.vmap` of `lax.while_loop` with a per-lane predicate runs until every lane is done and,
each iteration, blends every carried array with `select(pred, new, old)` — for a solve that
carries its save buffer that is a full copy of the buffer per step, which dominates batched
solves. The step loop of `solve` is written so that its body is a no-op for a lane whose
condition is false (every update is masked by the lane's own `active` flag and buffer
writes go to an out-of-range, dropped index). Under `vmap` the loop below therefore runs
`vmap(body)` while *any* lane is active and skips the selects: per-lane results are
identical to the unbatched loop, and buffers are updated in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def while_loop(cond, body, init, args):
    """`lax.while_loop(cond, lambda c: body(c, args), init)` with a select-free vmap rule.

    Requirements: `cond` and `body` close over no traced values (pass them in `args`), and
    `body(c, args)` returns `c` unchanged whenever `cond(c)` is false.
    """

    # custom_vmap sees flat lists of arrays: no None leaves, which its jvp rule mishandles.
    init_leaves, init_def = jax.tree.flatten(init)
    args_leaves, args_def = jax.tree.flatten(args)
    flat_cond = lambda c: cond(jax.tree.unflatten(init_def, c))  # noqa: E731

    def flat_body(c, a):
        out = body(jax.tree.unflatten(init_def, c), jax.tree.unflatten(args_def, a))
        return jax.tree.leaves(out)

    @jax.custom_batching.custom_vmap
    def run(init, args):
        return jax.lax.while_loop(flat_cond, lambda c: flat_body(c, args), init)

    @run.def_vmap
    def _rule(axis_size, in_batched, init, args):
        init_batched, args_batched = in_batched
        init = jax.tree.map(
            lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x))),
            init, init_batched,
        )
        args_axes = jax.tree.map(lambda b: 0 if b else None, args_batched)
        lane_cond = jax.vmap(flat_cond)
        lane_body = jax.vmap(flat_body, in_axes=(0, args_axes))
        out = jax.lax.while_loop(
            lambda c: jnp.any(lane_cond(c)), lambda c: lane_body(c, args), init
        )
        return out, [True] * len(out)

    return jax.tree.unflatten(init_def, run(init_leaves, args_leaves))
