"""Step-wise fixed-point solvers for z = f(z): damped iteration, Anderson, Broyden, Newton.

Each solver is a small immutable object with hyperparameters as fields and two pure
functions on flat vectors: `init(fn, z, fz) -> state` and
`step(fn, z, fz, state) -> (z_next, f(z_next), state, f_evaluations)`. The shared loop in
`loop.py` decides when to stop. `SteadyState` (the ODE route, `ode_route.py`) overrides
`run` instead.

Newton's linear systems are solved by lineax's GMRES. The loop itself is jode's, not
`optimistix.fixed_point`/`root_find`: it records the residual trace, counts evaluations,
and tells divergence from a spent budget (`jode.RESULTS`), which optimistix's solvers do
not report; Anderson acceleration has no optimistix counterpart.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

from .loop import RawResult, iterate


class AbstractFixedPointSolver(eqx.Module):
    """A solver for z = f(z). Subclasses are final; they define `init`/`step` or `run`."""

    def init(self, fn, z, fz):
        return None

    def step(self, fn, z, fz, state):
        raise NotImplementedError

    def run(self, fn, z0, *, rtol, atol, max_steps, divergence_ratio, trace) -> RawResult:
        """Solve z = fn(z) from z0 on flat vectors."""
        return iterate(
            self, fn, z0, rtol=rtol, atol=atol, max_steps=max_steps,
            divergence_ratio=divergence_ratio, trace=trace,
        )


class FixedPointIteration(AbstractFixedPointSolver):
    """Damped (Krasnosel'skii-Mann) iteration z_{k+1} = (1 - β) z_k + β f(z_k).

    Converges linearly for a contraction (rate ‖∂f/∂z‖ with β = 1, Banach's theorem);
    β < 1 also converges for non-expansive maps (Krasnosel'skii 1955; Mann 1953).

    Args:
        damping: β in (0, 1]; 1 is plain Picard iteration.
    """

    damping: float = 1.0

    def __check_init__(self):
        if not 0.0 < self.damping <= 1.0:
            raise ValueError(f"damping must be in (0, 1]; got damping={self.damping}")

    def step(self, fn, z, fz, state):
        z1 = z + self.damping * (fz - z)
        return z1, fn(z1), state, 1


class Anderson(AbstractFixedPointSolver):
    """Anderson acceleration (type II): mix the last m iterates to minimise the residual.

    With residuals G_i = f(z_i) - z_i of the last m iterates, solve
        α = argmin ‖Σ α_i G_i‖² + λ ‖α‖²  subject to  Σ α_i = 1,
    i.e. α ∝ (G Gᵀ + λ I)⁻¹ 1, and set z_{k+1} = β Σ α_i f(z_i) + (1 - β) Σ α_i z_i.
    The Gram matrix G Gᵀ is scaled to unit diagonal before λ is added, so λ penalises each
    weight by its own residual's size and the regularization does not stall convergence
    at small residuals.

    Args:
        memory: m, the number of past iterates mixed (Bai et al. use 5).
        mixing: β in (0, 1].
        regularization: λ (relative, see above); default √eps of the dtype (1.5e-8 in
            float64, 3.5e-4 in float32).

    References:
        Anderson (1965), J. ACM 12(4); Walker & Ni (2011), SIAM J. Numer. Anal. 49(4),
        eq. (1.2)-(1.3); Bai, Kolter & Koltun (2019), "Deep Equilibrium Models", §3.3.
    """

    memory: int = 5
    mixing: float = 1.0
    regularization: float | None = None

    def __check_init__(self):
        if not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(f"memory must be a positive int; got memory={self.memory!r}")
        if not 0.0 < self.mixing <= 1.0:
            raise ValueError(f"mixing must be in (0, 1]; got mixing={self.mixing}")
        if self.regularization is not None and not self.regularization >= 0.0:
            raise ValueError(f"regularization must be >= 0; got {self.regularization}")

    def init(self, fn, z, fz):
        hist = jnp.zeros((self.memory,) + z.shape, z.dtype)
        return hist.at[0].set(z), hist.at[0].set(fz), jnp.ones((), jnp.int32)

    def step(self, fn, z, fz, state):
        xs, fs, count = state
        m = self.memory
        dtype = z.dtype
        valid = jnp.arange(m, dtype=jnp.int32) < count
        g = jnp.where(valid[:, None], fs - xs, 0)
        gram = g @ g.T
        # Scale the Gram matrix to unit diagonal: the regularization then penalises each
        # weight by its own residual's size, and the condition number stays <= ~m/λ.
        diag = jnp.diagonal(gram)
        d = jnp.where(valid & (diag > 0), jax.lax.rsqrt(jnp.where(diag > 0, diag, 1)), 0)
        lam = self.regularization
        lam = jnp.sqrt(jnp.finfo(dtype).eps) if lam is None else lam
        both = valid[:, None] & valid[None, :]
        eye = jnp.eye(m, dtype=dtype)
        scaled = jnp.where(both, d[:, None] * gram * d[None, :] + lam * eye, eye)
        y = d * jnp.linalg.solve(scaled, d)
        total = jnp.sum(y)
        # Fall back to a plain (mixed) iteration if the small solve breaks down.
        newest = jax.nn.one_hot((count - 1) % m, m, dtype=dtype)
        good = jnp.isfinite(total) & (jnp.abs(total) > 0) & jnp.all(jnp.isfinite(y))
        alpha = jnp.where(good, y / jnp.where(good, total, 1), newest)
        z1 = self.mixing * (alpha @ fs) + (1 - self.mixing) * (alpha @ xs)
        fz1 = fn(z1)
        slot = count % m
        return z1, fz1, (xs.at[slot].set(z1), fs.at[slot].set(fz1), count + 1), 1


class Broyden(AbstractFixedPointSolver):
    """Limited-memory ("good") Broyden's method on g(z) = f(z) - z = 0.

    The inverse Jacobian of g is approximated as B⁻¹ = -I + Σ u_i v_iᵀ (starting from
    -I, so the first step is a plain iteration) and updated by Sherman-Morrison with
    s = Δz, y = Δg:  B⁻¹ ← B⁻¹ + (s - B⁻¹y) sᵀB⁻¹ / (sᵀB⁻¹y). The step is z ← z - B⁻¹g.
    The newest `memory` rank-one terms are kept (the oldest is overwritten).

    Args:
        memory: number of rank-one updates kept.

    References:
        Broyden (1965), Math. Comp. 19(92), "good" update eq. (4.12); Bai, Kolter & Koltun
        (2019), "Deep Equilibrium Models", §3.3.
    """

    memory: int = 20

    def __check_init__(self):
        if not isinstance(self.memory, int) or self.memory < 1:
            raise ValueError(f"memory must be a positive int; got memory={self.memory!r}")

    def init(self, fn, z, fz):
        low = jnp.zeros((self.memory,) + z.shape, z.dtype)
        return low, low, jnp.zeros((), jnp.int32)

    def step(self, fn, z, fz, state):
        us, vs, count = state
        inv = lambda x: -x + us.T @ (vs @ x)  # noqa: E731  B⁻¹ x
        inv_t = lambda x: -x + vs.T @ (us @ x)  # noqa: E731  B⁻ᵀ x
        g = fz - z
        dz = -inv(g)
        z1 = z + dz
        fz1 = fn(z1)
        dg = (fz1 - z1) - g
        w = inv(dg)
        denom = jnp.dot(dz, w)
        # Skip the update when sᵀB⁻¹y vanishes (no information, or already converged).
        tiny = 1e3 * jnp.finfo(z.dtype).eps * jnp.linalg.norm(dz) * jnp.linalg.norm(w)
        ok = jnp.abs(denom) > tiny
        safe = jnp.where(ok, denom, 1)
        u = jnp.where(ok, (dz - w) / safe, 0)
        v = jnp.where(ok, inv_t(dz), 0)
        slot = count % self.memory
        count = count + ok.astype(jnp.int32)
        return z1, fz1, (us.at[slot].set(u), vs.at[slot].set(v), count), 1


class Newton(AbstractFixedPointSolver):
    """Jacobian-free Newton-Krylov on g(z) = f(z) - z = 0, with a backtracking line search.

    Each step solves (∂f/∂z - I) δ = -(f(z) - z) by restarted GMRES (lineax) using only
    Jacobian-vector products (`jax.linearize`), then halves the step until
    ‖g(z + αδ)‖ ≤ (1 - 10⁻⁴ α)‖g(z)‖ (Armijo), at most `max_backtracks` times.
    Quadratic convergence near a fixed point where I - ∂f/∂z is invertible; needs no
    contraction.

    Args:
        krylov_rtol: GMRES relative tolerance ‖Aδ + g‖ ≤ rtol ‖g‖.
        restart: GMRES Krylov subspace size before a restart.
        krylov_maxiter: GMRES restarts.
        max_backtracks: line-search halvings (0: pure Newton steps).

    References:
        Knoll & Keyes (2004), J. Comput. Phys. 193, "Jacobian-free Newton-Krylov
        methods", §2; Saad & Schultz (1986), SIAM J. Sci. Stat. Comput. 7(3) (GMRES);
        Dennis & Schnabel (1996), Alg. 6.3.5 (backtracking).
    """

    krylov_rtol: float = 1e-10
    restart: int = 20
    krylov_maxiter: int = 10
    max_backtracks: int = 8

    def step(self, fn, z, fz, state):
        g = fz - z
        delta = newton_direction(fn, z, g, self)
        norm0 = jnp.linalg.norm(g)

        def trial(alpha):
            z1 = z + alpha * delta
            fz1 = fn(z1)
            r = jnp.linalg.norm(fz1 - z1)
            return z1, fz1, jnp.where(jnp.isfinite(r), r, jnp.inf)

        z1, fz1, r1 = trial(jnp.ones((), z.dtype))

        def cond(c):
            alpha, _, _, r, tries = c
            return (r > (1 - 1e-4 * alpha) * norm0) & (tries < self.max_backtracks)

        def body(c):
            alpha, _, _, _, tries = c
            alpha = alpha / 2
            return (alpha, *trial(alpha), tries + 1)

        init = (jnp.ones((), z.dtype), z1, fz1, r1, jnp.zeros((), jnp.int32))
        _, z1, fz1, _, tries = jax.lax.while_loop(cond, body, init)
        # linearize evaluates fn once; the trials once each.
        return z1, fz1, state, 2 + tries


def _two_norm(x):
    return jnp.sqrt(sum(jnp.vdot(leaf, leaf).real for leaf in jax.tree.leaves(x)))


def gmres_solver(newton: Newton, n: int) -> lx.GMRES:
    """lineax's restarted GMRES with Newton's settings: ‖Aδ - b‖₂ <= krylov_rtol ‖b‖₂."""
    restart = max(1, min(newton.restart, n))
    return lx.GMRES(
        rtol=newton.krylov_rtol, atol=0.0, norm=_two_norm, restart=restart,
        max_steps=restart * newton.krylov_maxiter,
    )


def newton_direction(fn, z, g, newton: Newton):
    """δ solving (∂f/∂z - I) δ = -g by GMRES on Jacobian-vector products.

    An inexact direction (GMRES stopped by its budget) is still a descent candidate: the
    line search decides, so the linear solve's status is not an error here.
    """
    _, jvp = jax.linearize(fn, z)
    operator = lx.FunctionLinearOperator(
        lambda v: jvp(v) - v, jax.ShapeDtypeStruct(z.shape, z.dtype)
    )
    return lx.linear_solve(operator, -g, gmres_solver(newton, z.size), throw=False).value
