"""How gradients flow through a solve.

- `DirectAdjoint` (default): discretize-then-optimize. Reverse mode through the adaptive
  step loop with two-level checkpointing (below); forward mode through the plain loop.
- `BacksolveAdjoint`: optimize-then-discretize, the continuous adjoint of Chen et al. (2018),
  integrating [y, a, ∂L/∂θ] backwards in time with memory flat in the number of steps.
- `ForwardMode`: a plain `lax.while_loop`, for `jax.jvp` / `jax.jacfwd`.

Constant-step solves with a step count known before tracing run as a `lax.scan`, which
every transformation differentiates whatever the adjoint.

Two-level checkpointing (Griewank & Walther 2008, *Evaluating Derivatives*, §12.3; Chen et
al. 2016, "Training deep nets with sublinear memory cost"): a loop bounded by `N` iterations
runs forward once, storing every `k`-th carry in a buffer of ⌈N/k⌉ rows (k = ⌈√N⌉ by
default). The backward pass walks the segments last to first: it re-runs one segment from
its checkpoint storing its ≤ k carries, then applies the vector-Jacobian product of the
loop body to each in reverse. Memory is O(√N) carries, work ≈ 3 forward passes, and only
the iterations actually taken are ever recomputed, so a solve of 4 steps pays for 4 steps,
not for `max_steps`.

Save buffers (the `ys` written at save times, per-step outputs, dense coefficients) only
flow into themselves: the loop body writes blocks of rows in place, reading a block back
only to keep its old rows where a lane writes nothing. They are not checkpointed: their
cotangent is carried through the backward pass, and the transpose of each write hands the
rows' cotangent to the step that wrote them last (a row first written with a placeholder
and later overwritten gets its cotangent from the later write only). The values read back
carry no derivative elsewhere, so the backward pass may use the final buffers as primals.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._results import RESULTS
from .loop import forward_mode, masked_while_loop

#: Fields of the solve loop's carry that only flow into themselves (see the module docstring).
WRITE_ONLY_FIELDS = ("ys", "step_ts", "step_ys", "dense_coeffs")


class AbstractAdjoint(eqx.Module):
    """Chooses the step loop a solve runs in; subclasses are final."""

    def loop(self, cond, body, init, args, max_iter):
        """Run `body(carry, args)` while `cond(carry)`, at most `max_iter` times."""
        raise NotImplementedError

    def solve(self, solve_fn, f, y0, t0, t1, args, **kwargs):
        return solve_fn(f, y0, t0, t1, args, loop=self.loop, **kwargs)


def lax_loop(cond, body, init, args, max_iter):
    """The plain loop (`masked_while_loop`: select-free under `jax.vmap`)."""
    del max_iter
    return masked_while_loop(lambda c, _: cond(c), body, init, args)


class ForwardMode(AbstractAdjoint):
    """Forward-mode differentiation (`jax.jvp`, `jax.jacfwd`) through the step loop.

    A plain `lax.while_loop`: every forward-mode transformation, including Hessians by
    forward-over-forward (`jax.jacfwd(jax.jacfwd(loss))`), but no reverse mode.
    """

    def loop(self, cond, body, init, args, max_iter):
        return lax_loop(cond, body, init, args, max_iter)


class DirectAdjoint(AbstractAdjoint):
    """Discretize-then-optimize: the exact gradient of the discretized solve.

    Reverse mode (`jax.grad`, `jax.vjp`) runs through the step loop with two-level
    checkpointing (module docstring): O(√max_steps) stored carries, about three forward
    passes of work, and only the steps actually taken are recomputed. The primal solve is
    the plain `lax.while_loop`.

    What works:
        - `jax.grad` / `jax.vjp` / `jax.jacrev`, under `jax.jit` and `jax.vmap`;
        - `jax.jvp` / `jax.jacfwd`: forward mode is detected and runs the plain loop;
        - second derivatives: `jax.hessian(loss)` (= `jacfwd(jacrev(loss))`) and
          Hessian-vector products `jax.jvp(jax.grad(loss), (p,), (v,))` run forward mode
          through the checkpointed backward pass; `jacfwd(jacfwd(loss))` runs forward mode
          twice through the plain loop (cheapest to compile for a few parameters).
        - Not: reverse-over-reverse (`jax.grad(jax.grad(...))`, `jacrev(jacrev(...))`) nor
          reverse-over-forward (`jax.grad` of a `jax.jvp`): the backward pass and the
          forward-mode loop are while loops, which JAX cannot reverse.

    Args:
        checkpoints: rows of the checkpoint buffer; default ⌈√max_iter⌉. More checkpoints
            mean shorter recomputed segments (memory k ≈ max_iter/checkpoints carries for
            one segment during the backward pass).
    """

    checkpoints: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if self.checkpoints is not None and self.checkpoints < 1:
            raise ValueError(
                f"checkpoints must be >= 1 or None; got checkpoints={self.checkpoints}"
            )

    def loop(self, cond, body, init, args, max_iter, write_only=None):
        return checkpointed_loop(
            cond, body, init, args, max_iter, checkpoints=self.checkpoints, write_only=write_only
        )


# --------------------------------------------------------------------------------------
# The checkpointed loop.


def _is_float(x):
    return eqx.is_inexact_array(x)


def _float0_like(x):
    return np.zeros(np.shape(x), jax.dtypes.float0)


def _split(tree):
    """tree -> (inexact arrays, other arrays, static rest)."""
    diff, rest = eqx.partition(tree, _is_float)
    arrays, static = eqx.partition(rest, eqx.is_array)
    return diff, arrays, static


def _as_arrays(tree):
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


def checkpointed_loop(cond, body, init, args, max_iter, *, checkpoints=None, write_only=None):
    """`while cond(c): c = body(c, args)`, reverse-differentiable by checkpointing.

    Args:
        cond, body: the loop; `body(carry, args) -> carry`. Closed-over arrays are hoisted
            and differentiated like `args`.
        init: the initial carry (a NamedTuple or any pytree).
        args: differentiable inputs of `body` (any pytree; non-float leaves get no
            cotangent).
        max_iter: bound on the number of iterations (sets the checkpoint spacing).
        checkpoints: rows of the checkpoint buffer (default ⌈√max_iter⌉).
        write_only: names of NamedTuple carry fields the body only scatters into (default
            `WRITE_ONLY_FIELDS` when `init` has them).

    Returns:
        The final carry.
    """
    if write_only is None:
        write_only = tuple(n for n in WRITE_ONLY_FIELDS if n in getattr(init, "_fields", ()))
    fields = getattr(init, "_fields", ())
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
        diff, nondiff = _as_arrays((diff, nondiff))
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
        diff, nondiff = _as_arrays((diff, nondiff))
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


# --------------------------------------------------------------------------------------
# The continuous adjoint.


class BacksolveAdjoint(AbstractAdjoint):
    """Optimize-then-discretize: the continuous adjoint, solved backwards in time.

    With a(t) = ∂L/∂y(t), the forward solve y' = f(t, y, θ) is followed by the backward
    solve of the augmented system (Chen, Rubanova, Bettencourt & Duvenaud 2018, "Neural
    ordinary differential equations", Appendix B, eqs. (50)-(52)):

        dy/dt = f(t, y, θ),   da/dt = -aᵀ ∂f/∂y,   dg/dt = -aᵀ ∂f/∂θ,

    from the last save time down to t0, with a jumping by ∂L/∂y(tᵢ) at each save time tᵢ
    (where y is also reset to the forward pass's saved value) and g = 0 at the start; then
    ∂L/∂y0 = a(t0), ∂L/∂θ = g(t0), ∂L/∂t0 = -a(t0)ᵀ f(t0, y0), ∂L/∂tᵢ = ∂L/∂y(tᵢ)ᵀ f(tᵢ, y(tᵢ))
    (the latter is ∂L/∂t1 when only t1 is saved). θ is every floating array of `args` (any
    pytree, equinox modules included) and every array the vector field closes over.

    Memory does not grow with the number of steps: nothing is stored between save times.
    The gradient is that of the exact solution, up to the backward solve's tolerance, not
    the exact gradient of the discretized forward solve (use `DirectAdjoint` for that).

    Args:
        rtol, atol: tolerances of the backward solve (default: the forward solve's).
        solver: solver of the backward solve (default: the forward solve's).
        seminorm: measure the backward step's error on y and a only, not on the
            parameter channel g, whose error does not feed back into the dynamics (Kidger,
            Chen & Lyons 2021, "'Hey, that's not an ODE': faster ODE adjoints via
            seminorms", ICML, §3). Fewer backward steps, usually the same accuracy.

    Raises:
        ValueError: for `SaveAt(steps=True)`, dense output or `stop=` (whose solution does
            not have a continuous adjoint of this form); use `DirectAdjoint`.
    """

    rtol: float | None = None
    atol: float | None = None
    solver: object = None
    seminorm: bool = eqx.field(static=True, default=False)

    def loop(self, cond, body, init, args, max_iter):
        return lax_loop(cond, body, init, args, max_iter)

    def solve(self, solve_fn, f, y0, t0, t1, args, **kwargs):
        saveat = kwargs["saveat"]
        if saveat.steps or saveat.dense:
            raise ValueError(
                "BacksolveAdjoint supports saving at times (saveat=ts) and at t1; for "
                "SaveAt(steps=True) or dense output use adjoint=jode.DirectAdjoint()"
            )
        if kwargs.get("stop") is not None:
            raise ValueError("BacksolveAdjoint does not support stop=; use jode.DirectAdjoint()")
        for name in ("rtol", "atol"):
            own = getattr(self, name)
            if own is None and jax.tree.structure(kwargs[name]).num_leaves != 1:
                raise ValueError(
                    f"per-component {name} needs scalar backward tolerances: pass "
                    f"jode.BacksolveAdjoint({name}=...)"
                )
        dtype = ravel_pytree(y0)[0].dtype
        t0 = jnp.asarray(t0, dtype)
        t1 = jnp.asarray(t1, dtype)
        ts = None if saveat.ts is None else jnp.asarray(saveat.ts, dtype)
        f_cc = eqx.filter_closure_convert(f, t0, y0, args)
        return _backsolve((y0, t0, t1, ts, args, f_cc), self, solve_fn, kwargs)


@eqx.filter_custom_vjp
def _backsolve(diff, adjoint, solve_fn, kwargs):
    y0, t0, t1, ts, args, f_cc = _as_arrays(diff)
    kwargs = dict(kwargs)
    if ts is not None:
        kwargs["saveat"] = eqx.tree_at(lambda s: s.ts, kwargs["saveat"], ts)
    return solve_fn(f_cc, y0, t0, t1, args, loop=lax_loop, **kwargs)


@_backsolve.def_fwd
def _backsolve_fwd(perturbed, diff, adjoint, solve_fn, kwargs):
    del perturbed
    sol = _backsolve.fn(diff, adjoint, solve_fn, kwargs)
    return sol, (sol.ts, sol.ys)


@_backsolve.def_bwd
def _backsolve_bwd(residuals, grad_sol, perturbed, diff, adjoint, solve_fn, kwargs):
    del perturbed
    from .solve import solve  # solve.py imports this module

    save_ts, ys = residuals
    y0, t0, t1, ts, args, f_cc = _as_arrays(diff)
    y0_flat, unravel = ravel_pytree(y0)
    dtype = y0_flat.dtype
    ys_flat = jax.vmap(lambda y: ravel_pytree(y)[0])(ys)
    ct_ys = grad_sol.ys
    if ct_ys is None:
        ct_flat = jnp.zeros_like(ys_flat)
    else:
        ct_ys = jax.tree.map(lambda c, y: jnp.zeros_like(y) if c is None else c, ct_ys, ys,
                             is_leaf=lambda x: x is None)
        ct_flat = jax.vmap(lambda y: ravel_pytree(y)[0])(ct_ys)
    theta, theta_rest = eqx.partition((args, f_cc), _is_float)

    def f_flat(t, y, theta):
        a, fn = eqx.combine(theta, theta_rest)
        # The augmented state may be promoted (e.g. float64 constants beside a float32
        # state); f was closure-converted for times of the state's dtype.
        return ravel_pytree(fn(jnp.asarray(t, dtype), unravel(y.astype(dtype)), a))[0].astype(dtype)

    def aug(t, state, theta):
        y, a, _ = state
        fy, pull = jax.vjp(lambda y, th: f_flat(t, y, th), y, theta)
        da, dth = pull(a)
        return fy, -da, jax.tree.map(jnp.negative, dth)

    solver = kwargs["solver"] if adjoint.solver is None else adjoint.solver
    rtol = kwargs["rtol"] if adjoint.rtol is None else adjoint.rtol
    atol = kwargs["atol"] if adjoint.atol is None else adjoint.atol
    rtol, atol = (jnp.asarray(jax.tree.leaves(x)[0], dtype) for x in (rtol, atol))
    if adjoint.seminorm:
        # Error on (y, a) only: the g channel gets a tolerance so loose its scaled error
        # vanishes, and (y, a) tolerances shrink by sqrt(n_ya / n) so that the RMS over all
        # components equals the RMS over (y, a) alone.
        n_ya = 2 * y0_flat.size
        n_all = n_ya + sum(x.size for x in jax.tree.leaves(theta))
        c = (n_ya / n_all) ** 0.5
        huge = 1e30 if dtype == jnp.float32 else 1e200
        big = jax.tree.map(lambda x: jnp.asarray(huge, dtype), theta)
        ones = jax.tree.map(lambda x: jnp.ones((), dtype), theta)
        rtol = (c * rtol, c * rtol, ones)
        atol = (c * atol, c * atol, big)
    controller = kwargs["controller"]
    dt0, n_steps = kwargs["dt0"], kwargs["n_steps"]
    constant = dt0 is not None or n_steps is not None
    if constant:
        step = jnp.abs((t1 - t0) / n_steps if n_steps is not None else jnp.asarray(dt0, dtype))

    def leg(state, t_from, t_to):
        """Integrate the augmented system from t_from back to t_to."""
        dt = None
        if constant:
            dt = jnp.where(t_to >= t_from, step, -step)
        sol = solve(
            aug, state, t_from, t_to, theta, solver=solver, rtol=rtol, atol=atol, dt0=dt,
            controller=controller, jump_ts=kwargs["jump_ts"], adjoint=ForwardMode(),
            # Constant steps: the backward times t_from + j dt drift from the forward grid by
            # rounding, which can leave a last step of a few ulps after n_steps steps.
            max_steps=kwargs["max_steps"] + (1 if constant else 0), throw=False,
        )
        return jax.tree.map(lambda x: x[-1], sol.ys), sol.status

    g0 = jax.tree.map(jnp.zeros_like, theta)
    a0 = jnp.zeros_like(y0_flat)
    prev_ts = jnp.concatenate([t0[None], save_ts[:-1]])

    def body(carry, i):
        a, g, status = carry
        a = a + ct_flat[i]
        (_, a, g), leg_status = leg((ys_flat[i], a, g), save_ts[i], prev_ts[i])
        ok = (leg_status == RESULTS.SUCCESS) | (leg_status == RESULTS.EVENT)
        status = jnp.where((status == RESULTS.SUCCESS) & ~ok, leg_status, status)
        return (a, g, status.astype(jnp.int32)), None

    idx = jnp.arange(save_ts.shape[0] - 1, -1, -1)
    status0 = jnp.asarray(RESULTS.SUCCESS, jnp.int32)
    (a, g, status), _ = jax.lax.scan(body, (a0, g0, status0), idx)
    # A failed backward solve leaves a wrong gradient: raise, or (throw=False) make it NaN.
    failed = status != RESULTS.SUCCESS
    if kwargs["throw"]:
        a = eqx.branched_error_if(a, failed, status, _backward_messages(solver, kwargs))
    a = jnp.where(failed, jnp.nan, a)
    g = jax.tree.map(lambda x: jnp.where(failed, jnp.nan, x), g)
    ct_t = jnp.sum(ct_flat * jax.vmap(lambda t, y: f_flat(t, y, theta))(save_ts, ys_flat), axis=1)
    g_t0 = -jnp.dot(a, f_flat(t0, y0_flat, theta))
    if grad_sol.t0 is not None:
        g_t0 = g_t0 + grad_sol.t0
    g_t1 = jnp.zeros((), dtype) if ts is not None else ct_t[0]
    if grad_sol.t1 is not None:
        g_t1 = g_t1 + grad_sol.t1
    g_ts = None if ts is None else ct_t
    g_args, g_fcc = eqx.combine(g, jax.tree.map(lambda _: None, theta_rest))
    return unravel(a), g_t0, g_t1, g_ts, g_args, g_fcc


def _backward_messages(solver, kwargs):
    """Error messages of a failed backward solve, indexed by RESULTS value."""
    implicit = getattr(solver, "implicit", False)
    return [
        f"BacksolveAdjoint: the backward adjoint solve (of y, a = dL/dy and the parameter "
        f"gradient, integrated from the last save time back to t0 with {solver!r}) failed: "
        f"{r.message}. The forward solve succeeded; its gradient was not computed. The "
        "augmented system is "
        + ("stiff as well, and its Newton iterations" if implicit else "often stiffer than y")
        + " may need tighter control: use adjoint=jode.DirectAdjoint() (the exact gradient of "
        f"the forward solve, no backward solve), or raise max_steps={kwargs['max_steps']}, or "
        "set jode.BacksolveAdjoint(rtol=..., atol=...)"
        for r in RESULTS
    ]


def to_diffrax(adjoint, rtol=None, atol=None):
    """The diffrax adjoint doing what a jode adjoint does (for `backend="diffrax"`).

    `DirectAdjoint` → `diffrax.RecursiveCheckpointAdjoint` (binomial checkpointing, the
    exact gradient of the discretized solve), `BacksolveAdjoint` → `diffrax.BacksolveAdjoint`
    (its own solver/tolerances, and `diffrax.adjoint_rms_seminorm` for `seminorm=True`),
    `ForwardMode` → `diffrax.ForwardMode`.

    Args:
        adjoint: a jode adjoint.
        rtol, atol: the forward solve's tolerances, used by the backward solve when the
            `BacksolveAdjoint` sets none of its own and asks for the seminorm.
    """
    import diffrax as dfx

    if isinstance(adjoint, ForwardMode):
        return dfx.ForwardMode()
    if isinstance(adjoint, DirectAdjoint):
        return dfx.RecursiveCheckpointAdjoint(checkpoints=adjoint.checkpoints)
    if isinstance(adjoint, BacksolveAdjoint):
        kwargs = {}
        if adjoint.solver is not None:
            from .diffrax_backend import to_diffrax_solver

            kwargs["solver"] = to_diffrax_solver(adjoint.solver)
        rtol = adjoint.rtol if adjoint.rtol is not None else rtol
        atol = adjoint.atol if adjoint.atol is not None else atol
        if adjoint.seminorm or adjoint.rtol is not None or adjoint.atol is not None:
            if rtol is None or atol is None:
                raise ValueError(
                    "BacksolveAdjoint(seminorm=True) with backend='diffrax' needs the backward "
                    "tolerances: pass jode.BacksolveAdjoint(rtol=..., atol=..., seminorm=True)"
                )
            norm = dfx.adjoint_rms_seminorm if adjoint.seminorm else dfx.rms_norm
            kwargs["stepsize_controller"] = dfx.PIDController(rtol=rtol, atol=atol, norm=norm)
        return dfx.BacksolveAdjoint(**kwargs)
    raise ValueError(f"no diffrax counterpart for adjoint {adjoint!r}")
