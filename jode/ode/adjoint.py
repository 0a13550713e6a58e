"""How gradients flow through a solve.

- `DirectAdjoint` (default): discretize-then-optimize. Reverse mode through the adaptive
  step loop with two-level checkpointing (Griewank & Walther 2008, *Evaluating
  Derivatives*, §12.3; Chen et al. 2016, "Training deep nets with sublinear memory cost"),
  carried out by `loop.checkpointed_loop`; forward mode through the plain loop.
- `BacksolveAdjoint`: optimize-then-discretize, the continuous adjoint of Chen et al. (2018),
  integrating [y, a, ∂L/∂θ] backwards in time with memory flat in the number of steps.
- `ForwardMode`: a plain `lax.while_loop`, for `jax.jvp` / `jax.jacfwd`.

Constant-step solves with a step count known before tracing run as a `lax.scan`, which
every transformation differentiates whatever the adjoint.

The diffrax adjoint doing the same for `backend="diffrax"` is
`diffrax_backend.to_diffrax`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from .._results import RESULTS
from .loop import as_arrays, checkpointed_loop, lax_loop

#: Fields of the solve loop's carry that only flow into themselves (see the module docstring).

class AbstractAdjoint(eqx.Module):
    """Chooses the step loop a solve runs in; subclasses are final."""

    def loop(self, cond, body, init, args, max_iter):
        """Run `body(carry, args)` while `cond(carry)`, at most `max_iter` times."""
        raise NotImplementedError

    def solve(self, solve_fn, f, y0, t0, t1, args, opts):
        """Run `solve_fn(f, y0, t0, t1, args, opts, loop)` (`opts`: `solve.Options`)."""
        return solve_fn(f, y0, t0, t1, args, opts, self.loop)



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
    checkpointing (`loop.checkpointed_loop`): O(√max_steps) stored carries, about three forward
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

    def loop(self, cond, body, init, args, max_iter):
        return checkpointed_loop(cond, body, init, args, max_iter, checkpoints=self.checkpoints)


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

    def solve(self, solve_fn, f, y0, t0, t1, args, opts):
        saveat = opts.saveat
        if saveat.steps or saveat.dense:
            raise ValueError(
                "BacksolveAdjoint supports saving at times (saveat=ts) and at t1; for "
                "SaveAt(steps=True) or dense output use adjoint=jode.DirectAdjoint()"
            )
        if opts.stop is not None:
            raise ValueError("BacksolveAdjoint does not support stop=; use jode.DirectAdjoint()")
        for name in ("rtol", "atol"):
            own = getattr(self, name)
            if own is None and jax.tree.structure(getattr(opts, name)).num_leaves != 1:
                raise ValueError(
                    f"per-component {name} needs scalar backward tolerances: pass "
                    f"jode.BacksolveAdjoint({name}=...)"
                )
        dtype = ravel_pytree(y0)[0].dtype
        t0 = jnp.asarray(t0, dtype)
        t1 = jnp.asarray(t1, dtype)
        ts = None if saveat.ts is None else jnp.asarray(saveat.ts, dtype)
        f_cc = eqx.filter_closure_convert(f, t0, y0, args)
        return _backsolve((y0, t0, t1, ts, args, f_cc), self, solve_fn, opts)


@eqx.filter_custom_vjp
def _backsolve(diff, adjoint, solve_fn, opts):
    y0, t0, t1, ts, args, f_cc = as_arrays(diff)
    if ts is not None:
        opts = eqx.tree_at(lambda o: o.saveat.ts, opts, ts)
    return solve_fn(f_cc, y0, t0, t1, args, opts, lax_loop)


@_backsolve.def_fwd
def _backsolve_fwd(perturbed, diff, adjoint, solve_fn, opts):
    del perturbed
    sol = _backsolve.fn(diff, adjoint, solve_fn, opts)
    return sol, (sol.ts, sol.ys)


@_backsolve.def_bwd
def _backsolve_bwd(residuals, grad_sol, perturbed, diff, adjoint, solve_fn, opts):
    del perturbed
    from .solve import solve  # solve.py imports this module

    save_ts, ys = residuals
    y0, t0, t1, ts, args, f_cc = as_arrays(diff)
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
    theta, theta_rest = eqx.partition((args, f_cc), eqx.is_inexact_array)

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

    solver = opts.solver if adjoint.solver is None else adjoint.solver
    rtol = opts.rtol if adjoint.rtol is None else adjoint.rtol
    atol = opts.atol if adjoint.atol is None else adjoint.atol
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
    controller = opts.controller
    dt0, n_steps = opts.dt0, opts.n_steps
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
            controller=controller, jump_ts=opts.jump_ts, adjoint=ForwardMode(),
            # Constant steps: the backward times t_from + j dt drift from the forward grid by
            # rounding, which can leave a last step of a few ulps after n_steps steps.
            max_steps=opts.max_steps + (1 if constant else 0), throw=False,
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
    if opts.throw:
        a = eqx.branched_error_if(a, failed, status, _backward_messages(solver, opts))
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


def _backward_messages(solver, opts):
    """Error messages of a failed backward solve, indexed by RESULTS value."""
    implicit = getattr(solver, "implicit", False)
    return [
        f"BacksolveAdjoint: the backward adjoint solve (of y, a = dL/dy and the parameter "
        f"gradient, integrated from the last save time back to t0 with {solver!r}) failed: "
        f"{r.message}. The forward solve succeeded; its gradient was not computed. The "
        "augmented system is "
        + ("stiff as well, and its Newton iterations" if implicit else "often stiffer than y")
        + " may need tighter control: use adjoint=jode.DirectAdjoint() (the exact gradient of "
        f"the forward solve, no backward solve), or raise max_steps={opts.max_steps}, or "
        "set jode.BacksolveAdjoint(rtol=..., atol=...)"
        for r in RESULTS
    ]
