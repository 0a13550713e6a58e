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

`checkpointed_loop` is the same loop made reverse-differentiable with two-level
checkpointing (Griewank & Walther 2008, *Evaluating Derivatives*, §12.3; Chen et al. 2016,
"Training deep nets with sublinear memory cost"): a loop bounded by `N` iterations runs
forward once, storing every `k`-th carry in a buffer of ⌈N/k⌉ rows (k = ⌈√N⌉ by default).
The backward pass walks the segments last to first: it re-runs one segment from its
checkpoint storing its ≤ k carries, then applies the vector-Jacobian product of the loop
body to each in reverse. Memory is O(√N) carries, work ≈ 3 forward passes, and only the
iterations actually taken are ever recomputed, so a solve of 4 steps pays for 4 steps, not
for `max_steps`.

Save buffers (the `ys` written at save times, per-step outputs, dense coefficients: the
fields a NamedTuple carry names in its `WRITE_ONLY` attribute) only flow into themselves:
the loop body writes blocks of rows in place, reading a block back only to keep its old
rows where a lane writes nothing. They are not checkpointed: their cotangent is carried
through the backward pass, and the transpose of each write hands the rows' cotangent to the
step that wrote them last (a row first written with a placeholder and later overwritten
gets its cotangent from the later write only). The values read back carry no derivative
elsewhere, so the backward pass may use the final buffers as primals.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


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


def lax_loop(cond, body, init, args, max_iter):
    """The plain loop (`masked_while_loop`: select-free under `jax.vmap`)."""
    del max_iter
    return masked_while_loop(lambda c, _: cond(c), body, init, args)


def _is_float(x):
    return eqx.is_inexact_array(x)


def _float0_like(x):
    return np.zeros(np.shape(x), jax.dtypes.float0)


def _split(tree):
    """tree -> (inexact arrays, other arrays, static rest)."""
    diff, rest = eqx.partition(tree, _is_float)
    arrays, static = eqx.partition(rest, eqx.is_array)
    return diff, arrays, static


def as_arrays(tree):
    """Python scalars carrying a dtype (how JAX hands a custom derivative's rule the concrete
    value of a weakly typed input, e.g. a Python float being differentiated) as arrays, so
    that array filters and closure-converted functions see the structure they were built
    for."""

    def convert(x):
        if isinstance(x, int | float | complex) and hasattr(x, "dtype"):
            return jnp.asarray(x)
        return x

    return jax.tree.map(convert, tree)


def _set_row(buf, idx, value):
    """buf[idx] = value as a dynamic-update-slice (XLA:CPU runs a loop holding no scatter
    as one compiled kernel when it is small; `.at[idx].set` would be a scatter)."""
    return jax.lax.dynamic_update_index_in_dim(buf, value, idx, 0)


def _write_row(buf, idx, value, do):
    """buf[idx] = value where `do`, else unchanged (`idx` must be in range)."""
    old = jax.lax.dynamic_index_in_dim(buf, idx, 0, keepdims=False)
    return _set_row(buf, idx, jnp.where(do, value, old))


class _Hoisted(eqx.Module):
    """A function with its closed-over arrays as fields (so they can be differentiated)."""

    fn: object = eqx.field(static=True)
    consts: list

    def __call__(self, *args):
        return self.fn(eqx.filter(args, eqx.is_array), *self.consts)


def hoist_closure(fn, *example):
    """`fn` with the arrays it closes over made explicit, like `eqx.filter_closure_convert`
    but without its check that later calls see the same sharding annotations (a loop body
    under `shard_map` sees carries annotated differently from the example)."""
    dynamic, static = eqx.partition(example, eqx.is_array)
    converted, consts = jax.closure_convert(lambda d: fn(*eqx.combine(d, static)), dynamic)
    return _Hoisted(converted, consts)


def _segment_length(max_iter, checkpoints):
    if checkpoints is None:
        checkpoints = max(1, math.ceil(math.sqrt(max_iter)))
    k = max(1, math.ceil(max_iter / checkpoints))
    return k, max(1, math.ceil(max_iter / k))


def checkpointed_loop(cond, body, init, args, max_iter, *, checkpoints=None):
    """`while cond(c): c = body(c, args)`, reverse-differentiable by checkpointing.

    Args:
        cond, body: the loop; `body(carry, args) -> carry`. Closed-over arrays are hoisted
            and differentiated like `args`.
        init: the initial carry (a NamedTuple or any pytree). A NamedTuple may name the
            fields the body only writes into (save buffers) in a `WRITE_ONLY` class
            attribute: they are not checkpointed (module docstring).
        args: differentiable inputs of `body` (any pytree; non-float leaves get no
            cotangent).
        max_iter: bound on the number of iterations (sets the checkpoint spacing).
        checkpoints: rows of the checkpoint buffer (default ⌈√max_iter⌉).

    Returns:
        The final carry.
    """
    fields = getattr(init, "_fields", ())
    write_only = getattr(init, "WRITE_ONLY", ())
    write_only = tuple(n for n in write_only if n in fields and getattr(init, n) is not None)

    def split_carry(c):
        if not write_only:
            return c, None
        return c._replace(**{n: None for n in write_only}), tuple(getattr(c, n) for n in write_only)

    def join_carry(core, bufs):
        if not write_only:
            return core
        return core._replace(**dict(zip(write_only, bufs, strict=True)))

    # The condition reads the carry only (it must not close over traced values): no
    # closure conversion, whose strict signature check trips on carries whose types
    # differ only in their sharding annotations (under shard_map).
    cond_cc = cond
    body_cc = hoist_closure(body, init, args)
    core0, bufs0 = split_carry(init)
    core_f, core_a, core_s = _split(core0)
    args_f, args_a, args_s = _split(args)
    body_f, body_a, body_s = _split(body_cc)
    cond_f, cond_a, cond_s = _split(cond_cc)
    k, n_ck = _segment_length(max_iter, checkpoints)

    def core_of(cf, ca):
        return eqx.combine(cf, ca, core_s)

    def step(core, bufs, a_f, a_a, b_f, b_a):
        fn = eqx.combine(b_f, b_a, body_s)
        out = fn(join_carry(core, bufs), eqx.combine(a_f, a_a, args_s))
        return split_carry(out)

    def keep_going(core, bufs, c_f, c_a):
        return eqx.combine(c_f, c_a, cond_s)(join_carry(core, bufs))

    def primal(diff, nondiff):
        diff, nondiff = as_arrays((diff, nondiff))
        cf, bufs, a_f, b_f, c_f = diff
        ca, a_a, b_a, c_a = nondiff

        def body_fn(state, ops):
            core, bufs = state
            return step(core, bufs, *ops[:4])

        # Every traced input travels in the operands: the batched loop's rule sees them.
        ops = (a_f, a_a, b_f, b_a, c_f, c_a)
        return masked_while_loop(
            lambda s, ops: keep_going(*s, *ops[4:]), body_fn, (core_of(cf, ca), bufs), ops
        )

    run = jax.custom_vjp(primal)

    def fwd(diff, nondiff):
        diff, nondiff = as_arrays((diff, nondiff))
        cf, bufs, a_f, b_f, c_f = diff
        ca, a_a, b_a, c_a = nondiff
        core = core_of(cf, ca)
        ck = jax.tree.map(lambda x: jnp.zeros((n_ck,) + jnp.shape(x), x.dtype), core)
        # The carries of the current segment, so the last segment needs no recomputation
        # (for a solve of fewer than k steps, nothing is recomputed).
        roll = jax.tree.map(lambda x: jnp.zeros((k,) + jnp.shape(x), x.dtype), core)

        def body_fn(state):
            i, core, bufs, ck, roll = state
            ck = jax.tree.map(lambda b, x: _write_row(b, i // k, x, i % k == 0), ck, core)
            roll = jax.tree.map(lambda b, x: _set_row(b, i % k, x), roll, core)
            core, bufs = step(core, bufs, a_f, a_a, b_f, b_a)
            return i + 1, core, bufs, ck, roll

        i0 = jnp.zeros((), jnp.int32)
        n, core, bufs, ck, roll = jax.lax.while_loop(
            lambda s: keep_going(s[1], s[2], c_f, c_a), body_fn, (i0, core, bufs, ck, roll)
        )
        return (core, bufs), (n, ck, roll, bufs, a_f, b_f, c_f, nondiff)

    def bwd(res, ct):
        n, ck, roll, bufs_final, a_f, b_f, c_f, nondiff = res
        ca, a_a, b_a, c_a = nondiff
        ct_core, ct_bufs = ct
        ct_cf = jax.tree.map(lambda c: None if c.dtype == jax.dtypes.float0 else c, ct_core)
        zeros = lambda t: jax.tree.map(jnp.zeros_like, t)  # noqa: E731

        def vjp_step(core, ct_cf, ct_bufs):
            cf_j, ca_j = eqx.partition(core, _is_float)

            def g(cf, bufs, a_f, b_f):
                out_core, out_bufs = step(eqx.combine(cf, ca_j), bufs, a_f, a_a, b_f, b_a)
                return eqx.filter(out_core, _is_float), out_bufs

            _, pull = jax.vjp(g, cf_j, bufs_final, a_f, b_f)
            return pull((ct_cf, ct_bufs))

        def segment(state):
            s, ct_cf, ct_bufs, ct_a, ct_b, store = state
            length = jnp.minimum(k, n - s * k)
            start = jax.tree.map(lambda b: b[s], ck)

            def recompute(j, st):
                core, store = st
                store = jax.tree.map(lambda b, x: _set_row(b, j, x), store, core)
                core, _ = step(core, bufs_final, a_f, a_a, b_f, b_a)
                return core, store

            # The last segment's carries are still in `store` from the forward pass.
            redo = s < s_last
            n_redo = jnp.where(redo, length - 1, 0)
            last, store = jax.lax.fori_loop(0, n_redo, recompute, (start, store))
            store = jax.tree.map(lambda b, x: _write_row(b, length - 1, x, redo), store, last)

            def reverse(jj, st):
                ct_cf, ct_bufs, ct_a, ct_b = st
                core = jax.tree.map(lambda b: b[length - 1 - jj], store)
                d_cf, d_bufs, d_a, d_b = vjp_step(core, ct_cf, ct_bufs)
                ct_a = jax.tree.map(jnp.add, ct_a, d_a)
                ct_b = jax.tree.map(jnp.add, ct_b, d_b)
                return d_cf, d_bufs, ct_a, ct_b

            ct_cf, ct_bufs, ct_a, ct_b = jax.lax.fori_loop(
                0, length, reverse, (ct_cf, ct_bufs, ct_a, ct_b)
            )
            return s - 1, ct_cf, ct_bufs, ct_a, ct_b, store

        s_last = (n - 1) // k  # -1 when the loop never ran
        state = (s_last, ct_cf, ct_bufs, zeros(a_f), zeros(b_f), roll)
        _, ct_cf, ct_bufs, ct_a, ct_b, _ = jax.lax.while_loop(
            lambda st: st[0] >= 0, segment, state
        )
        ct_nondiff = jax.tree.map(_float0_like, nondiff)
        ct_c = jax.tree.map(jnp.zeros_like, c_f)
        return (ct_cf, ct_bufs, ct_a, ct_b, ct_c), ct_nondiff

    run.defvjp(fwd, bwd)
    diff = (core_f, bufs0, args_f, body_f, cond_f)
    nondiff = (core_a, args_a, body_a, cond_a)
    if forward_mode((init, args, body_cc, cond_cc)):
        # Forward mode (jax.jvp / jax.jacfwd) cannot enter a custom_vjp: run the plain
        # loop, which JAX differentiates forwards exactly.
        return lax_loop(cond, body, init, args, max_iter)
    core, bufs = run(diff, nondiff)
    return join_carry(core, bufs)
