"""Neural ODEs: a network as the vector field of an ODE, solved by jode.

A neural ODE (Chen et al. 2018, eq. 1) replaces a stack of residual layers
h_{k+1} = h_k + f(h_k, θ_k) by the continuous limit

    dh/dt = f(t, h(t), θ),     h(t1) = h(t0) + ∫_{t0}^{t1} f(t, h, θ) dt,

computed by an ODE solver. The solver's step count (its number of function evaluations,
NFE) adapts to each input and tolerance, and gradients flow either through the solver's
operations (`jode.DirectAdjoint`) or through a second ODE solved backwards in time
(`jode.BacksolveAdjoint`, Chen et al. §2, constant memory in the number of steps).

`NeuralODE` solves a batch as one state (the steps are shared by the whole mini-batch, as in
the paper's implementation), so the NFE is one number per batch. `count_nfe=True` also
counts the evaluations of the vector field's vector-Jacobian product in the backward pass;
read them with `nfe_counts()`.

References:
    Chen, Rubanova, Bettencourt, Duvenaud (2018), Neural Ordinary Differential Equations,
    NeurIPS; §2 (adjoint), §3 (ODE-Net), Fig. 3 (NFE and tolerance).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

from ..ode.adjoint import AbstractAdjoint, DirectAdjoint
from ..ode.explicit import Tsit5
from ..ode.solve import solve

# --------------------------------------------------------------------------------------
# NFE counting (a diagnostic: host-side counters fed by callbacks)
# --------------------------------------------------------------------------------------

_COUNTS = {"forward": 0, "backward": 0}
_LOCK = threading.Lock()


def _bump(kind: str):
    def callback(x):
        del x
        with _LOCK:
            _COUNTS[kind] += 1

    return callback


_bump_forward = _bump("forward")
_bump_backward = _bump("backward")


@jax.custom_vjp
def _tap(x):
    jax.debug.callback(_bump_forward, x[..., :1])
    return x


def _tap_fwd(x):
    jax.debug.callback(_bump_forward, x[..., :1])
    return x, None


def _tap_bwd(_, g):
    # One backward evaluation of the vector field = one pass of its cotangent through here.
    jax.debug.callback(_bump_backward, g[..., :1])
    return (g,)


_tap.defvjp(_tap_fwd, _tap_bwd)


def reset_nfe() -> None:
    """Set the forward/backward NFE counters (fed by `NeuralODE(count_nfe=True)`) to 0."""
    jax.effects_barrier()
    with _LOCK:
        _COUNTS["forward"] = 0
        _COUNTS["backward"] = 0


def nfe_counts() -> dict:
    """Vector-field evaluations counted since `reset_nfe()`: {"forward": n, "backward": m}.

    "forward" counts evaluations of f (including any recomputation during the backward
    pass), "backward" counts evaluations of its vector-Jacobian product. Counting is per
    solve of a whole batch; under `jax.vmap` every batch element is counted.
    """
    jax.effects_barrier()
    with _LOCK:
        return dict(_COUNTS)


# --------------------------------------------------------------------------------------
# Vector-field networks
# --------------------------------------------------------------------------------------


class MLPField(eqx.Module):
    """An MLP vector field f(t, y) = W_L σ(… σ(W_1 [y, t] + b_1) …) + b_L.

    Time enters as an extra input feature (the "concat" time dependence of Chen et al.'s
    code). `y` may be (d,) or batched (…, d).

    Args:
        dim: state dimension d.
        width: hidden width.
        depth: number of hidden layers.
        key: PRNG key.
        activation: the nonlinearity σ (default tanh).
        time_dependent: whether t is an input.
        final_scale: multiplies the last layer's initial weights (a small value starts the
            flow near the identity, which keeps the first NFEs low).
    """

    layers: list
    activation: Callable = eqx.field(static=True)
    time_dependent: bool = eqx.field(static=True)

    def __init__(
        self,
        dim,
        width,
        depth,
        *,
        key,
        activation=jnp.tanh,
        time_dependent=True,
        final_scale: float = 1.0,
    ):
        if dim < 1 or width < 1 or depth < 1:
            raise ValueError(
                f"dim, width and depth must be >= 1; got dim={dim}, width={width}, depth={depth}"
            )
        keys = jr.split(key, depth + 1)
        sizes = [dim + int(time_dependent)] + [width] * depth + [dim]
        layers = [
            eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        ]
        last = layers[-1]
        layers[-1] = eqx.tree_at(
            lambda m: (m.weight, m.bias), last, (last.weight * final_scale, last.bias * final_scale)
        )
        self.layers = layers
        self.activation = activation
        self.time_dependent = time_dependent

    def _single(self, t, y):
        h = jnp.concatenate([y, jnp.reshape(t, (1,)).astype(y.dtype)]) if self.time_dependent else y
        for layer in self.layers[:-1]:
            h = self.activation(layer(h))
        return self.layers[-1](h)

    def __call__(self, t, y, args=None):
        del args
        dim = self.layers[-1].out_features
        if jnp.ndim(y) == 0 or y.shape[-1] != dim:
            raise ValueError(
                f"MLPField(dim={dim}) takes states of shape ({dim},) or (..., {dim}); got y of "
                f"shape {jnp.shape(y)}. Build the field with dim equal to the state's last "
                "axis, or pass states of its size"
            )
        fn = self._single
        for _ in range(y.ndim - 1):
            fn = jax.vmap(fn, in_axes=(None, 0))
        return fn(t, y)


def conv3x3(x, weight, bias, stride: int = 1):
    """A 3x3 "same" convolution of channels-last maps x (…, H, W, C_in) as one matrix
    product of the nine shifted copies (im2col): weight (9 C_in, C_out), bias (C_out,).

    Why not `lax.conv`: XLA:CPU differentiates convolutions inside loops (scan/while) far
    more slowly than matrix products, and a neural ODE evaluates its field inside a loop.
    """
    h, w = x.shape[-3], x.shape[-2]
    pad = [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    xp = jnp.pad(x, pad)
    patches = jnp.concatenate(
        [xp[..., i : i + h : stride, j : j + w : stride, :] for i in range(3) for j in range(3)],
        axis=-1,
    )
    return patches @ weight + bias


def group_norm(x, groups: int, eps: float = 1e-5):
    """Group normalization of channels-last maps (…, H, W, C) without affine parameters
    (Wu & He 2018): each group of C/groups channels is standardized over H, W and itself."""
    s = x.shape
    xg = x.reshape(s[:-3] + (s[-3] * s[-2], groups, s[-1] // groups))
    mean = jnp.mean(xg, axis=(-3, -1), keepdims=True)
    var = jnp.var(xg, axis=(-3, -1), keepdims=True)
    return ((xg - mean) * jax.lax.rsqrt(var + eps)).reshape(s)


def _conv_init(key, c_in, c_out, dtype=None):
    bound = 1.0 / (9 * c_in) ** 0.5
    k1, k2 = jr.split(key)
    dtype = jnp.zeros(()).dtype if dtype is None else dtype
    return (
        jr.uniform(k1, (9 * c_in, c_out), dtype, -bound, bound),
        jr.uniform(k2, (c_out,), dtype, -bound, bound),
    )


class ConvField(eqx.Module):
    """A convolutional vector field on channels-last maps h (…, H, W, C):

        f(t, h) = GN(conv([GN(σ(conv([σ(GN(h)), t]))), t])),

    3x3 "same" convolutions with the time appended as a constant channel and group
    normalization (Chen et al. 2018, §3, the ODE-Net's block; Wu & He 2018).

    Args:
        channels: C.
        key: PRNG key.
        groups: groups of the normalization (default min(8, C)).
    """

    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    b2: jax.Array
    groups: int = eqx.field(static=True)

    def __init__(self, channels: int, *, key, groups: int | None = None):
        if channels < 1:
            raise ValueError(f"channels must be >= 1; got channels={channels}")
        groups = min(8, channels) if groups is None else groups
        if channels % groups:
            raise ValueError(
                f"groups must divide channels; got groups={groups}, channels={channels}"
            )
        k1, k2 = jr.split(key)
        self.w1, self.b1 = _conv_init(k1, channels + 1, channels)
        self.w2, self.b2 = _conv_init(k2, channels + 1, channels)
        self.groups = groups

    def __call__(self, t, y, args=None):
        del args
        channels = self.b1.shape[0]
        if jnp.ndim(y) < 3 or y.shape[-1] != channels:
            raise ValueError(
                f"ConvField(channels={channels}) takes channels-last maps (..., H, W, "
                f"{channels}); got y of shape {jnp.shape(y)}"
            )
        tt = jnp.full(y.shape[:-1] + (1,), t, y.dtype)
        h = jax.nn.relu(group_norm(y, self.groups))
        h = jax.nn.relu(
            group_norm(conv3x3(jnp.concatenate([h, tt], -1), self.w1, self.b1), self.groups)
        )
        return group_norm(conv3x3(jnp.concatenate([h, tt], -1), self.w2, self.b2), self.groups)


# --------------------------------------------------------------------------------------
# NeuralODE and ODEBlock
# --------------------------------------------------------------------------------------


class NeuralODE(eqx.Module):
    """h(t1) = h(t0) + ∫ f(t, h) dt with a network f, solved by jode (Chen et al. 2018, eq. 1).

    Args:
        func: the vector field, called as func(t, y, args) (e.g. `MLPField`).
        t0, t1: the time span.
        solver: a jode solver; adaptive ones (default Tsit5) adapt their NFE.
        rtol, atol: tolerances of adaptive solves (override per call at evaluation time).
        n_steps: constant steps instead of adaptive ones (needed by Euler/RK4).
        adjoint: `jode.DirectAdjoint()` (default) or `jode.BacksolveAdjoint()`.
        max_steps: bound on adaptive steps.
        backend: "jode" or "diffrax".
        count_nfe: count forward and backward vector-field evaluations (see `nfe_counts`).

    Example:
        >>> node = NeuralODE(MLPField(2, 32, 2, key=jr.key(0)), rtol=1e-3, atol=1e-3)
        >>> y1 = node(y0)                       # state at t1
        >>> ys = node(y0, ts=jnp.linspace(0, 1, 10))   # trajectory
        >>> sol = node.solve(y0, rtol=1e-6)     # a jode.Solution; sol.stats["nfev"]
    """

    func: Callable
    t0: float = eqx.field(static=True, default=0.0)
    t1: float = eqx.field(static=True, default=1.0)
    solver: object = eqx.field(default_factory=Tsit5)
    rtol: float = eqx.field(static=True, default=1e-3)
    atol: float = eqx.field(static=True, default=1e-3)
    n_steps: int | None = eqx.field(static=True, default=None)
    adjoint: AbstractAdjoint = eqx.field(default_factory=DirectAdjoint)
    max_steps: int = eqx.field(static=True, default=4096)
    backend: str = eqx.field(static=True, default="jode")
    count_nfe: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.n_steps is None and not self.solver.adaptive:
            raise ValueError(
                f"{self.solver!r} has no error estimate: give n_steps= for constant steps, or "
                "use an adaptive solver such as jode.Tsit5()"
            )
        if self.n_steps is not None and self.n_steps < 1:
            raise ValueError(f"n_steps must be >= 1; got n_steps={self.n_steps}")
        if self.t1 == self.t0:
            raise ValueError(f"t1 must differ from t0; got t0=t1={self.t0}")

    def _field(self, t, y, args):
        if self.count_nfe:
            y = jax.tree.map(_tap, y)
        return self.func(t, y, args)

    def solve(
        self,
        y0,
        ts=None,
        *,
        args=None,
        rtol=None,
        atol=None,
        n_steps=None,
        t0=None,
        t1=None,
        throw=True,
    ):
        """Solve from y0 and return the `jode.Solution` (with `stats["nfev"]`).

        Args:
            y0: initial state, any pytree (a batch is one state).
            ts: save times (default: t1 only).
            args: passed to func.
            rtol, atol, n_steps, t0, t1: override the fields for this call (e.g. a looser
                evaluation tolerance than the training one).
            throw: raise on a failed solve.
        """
        n_steps = self.n_steps if n_steps is None else n_steps
        solver = self.solver
        return solve(
            self._field,
            y0,
            self.t0 if t0 is None else t0,
            self.t1 if t1 is None else t1,
            args,
            solver=solver,
            rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol,
            n_steps=n_steps,
            saveat=ts,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            backend=self.backend,
            throw=throw,
        )

    def __call__(self, y0, ts=None, *, args=None, key=None):
        """The state at t1 (ts None) or the trajectory at `ts` (leading time axis)."""
        del key
        sol = self.solve(y0, ts, args=args)
        if ts is None:
            return jax.tree.map(lambda y: y[-1], sol.ys)
        return sol.ys


class ODEBlock(eqx.Module):
    """A continuous-depth layer for classifiers: x -> h(1) with h(0) = x and
    dh/dt = f(t, h) (Chen et al. 2018, §3, "ODE-Net"). Replaces a stack of residual blocks.

    Args:
        ode: the `NeuralODE` to run (its time span is the block's depth).
    """

    ode: NeuralODE

    def __call__(self, x, *, key=None):
        del key
        return self.ode(x)

    def nfe(self, x, **overrides) -> jax.Array:
        """Forward NFE of the block on input x (with optional rtol=/atol= overrides)."""
        return self.ode.solve(x, **overrides).stats["nfev"]
