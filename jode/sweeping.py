"""Batched and device-sharded sweeps: evaluate (or fit) over a grid or batch of parameters.

`sweep(fn, batch)` computes `[fn(x) for x in batch]` as one SPMD program: the batch (a pytree
with a leading axis) is padded to a multiple of the device count, split over a 1-D
`jax.sharding.Mesh` of the devices with `jax.shard_map`, and each device runs `fn` with
`vmap` over chunks of `chunk_size` elements at a time (`lax.map(..., batch_size=...)`), so the
memory in use is bounded by the chunk, not by the batch. Across hosts (after
`jax.distributed.initialize`), the mesh spans every process's devices, each process
computes its share, and the results are gathered on every process.

The sharded program is compiled once per function object, batch shapes and options
(`eqx.filter_jit` over the function, the batch and the mesh): calling `sweep` again with the
same function reuses it. Pass the same function object (a named function, or a lambda kept
in a variable), not a new lambda per call.

Example:
    >>> thetas = jode.sweeping.grid(alpha=jnp.linspace(1, 2, 32), beta=jnp.linspace(0.5, 1.5, 32))
    >>> def final(p):
    ...     return jode.solve(f, y0, 0.0, 10.0, p).ys[-1]
    >>> out = jode.sweep(final, thetas)
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["grid", "sweep", "fit_sweep", "batch_size"]

_AXIS = "batch"


def grid(**axes) -> jax.Array:
    """The Cartesian product of 1-D value arrays as a batch, shape (Π n_k, len(axes)).

    The first named axis varies slowest (`indexing="ij"`), so the result reshapes to
    `(n_1, n_2, …, len(axes))`.
    """
    if not axes:
        raise ValueError(
            "grid needs at least one named axis, e.g. grid(alpha=jnp.linspace(1, 2, 8))"
        )
    arrays = []
    for name, values in axes.items():
        arr = jnp.asarray(values)
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise ValueError(
                f"grid axis {name!r} must be a non-empty 1-D array; got shape {arr.shape}"
            )
        arrays.append(arr)
    dtype = jnp.result_type(*arrays)
    mesh = jnp.meshgrid(*[a.astype(dtype) for a in arrays], indexing="ij")
    return jnp.stack([m.reshape(-1) for m in mesh], axis=-1)


def batch_size(batch) -> int:
    """The common leading dimension of a batch pytree (ValueError if none or mixed)."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("the batch is empty: pass arrays with a leading batch axis")
    if any(np.ndim(x) and np.shape(x)[0] == 0 for x in leaves):
        raise ValueError(
            "the batch has 0 rows (a leading axis of size 0); pass at least one element"
        )
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            "every leaf of the batch needs the same leading (batch) axis; got leading sizes "
            f"{sorted(str(s) for s in sizes)}"
        )
    return sizes.pop()


def _pad(batch, total):
    """Pad the leading axis to `total` by repeating the last element (a valid input)."""

    def pad(x):
        x = np.asarray(x)
        extra = total - x.shape[0]
        if extra == 0:
            return x
        return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)], axis=0)

    return jax.tree.map(pad, batch)


class _PerDevice(eqx.Module):
    """One device's block: `fn` vmapped over it, in chunks of `chunk_size` if given."""

    fn: object
    chunk_size: int | None = eqx.field(static=True)

    def __call__(self, block):
        if self.chunk_size is None:
            return jax.vmap(self.fn)(block)
        return jax.lax.map(self.fn, block, batch_size=self.chunk_size)


@eqx.filter_jit
def _program(fn, global_batch, chunk_size, mesh):
    # One cached program per (fn, shapes, chunk_size, mesh): `fn` is static when it holds no
    # arrays (hashed by identity), and its arrays are traced arguments when it does (e.g.
    # a loss in a `_FitOne`), so new data never recompiles.
    return jax.shard_map(
        _PerDevice(fn, chunk_size), mesh=mesh, in_specs=P(_AXIS), out_specs=P(_AXIS),
        check_vma=False,
    )(global_batch)


def sweep(fn, batch, *, chunk_size: int | None = None, devices=None, gather: bool = True):
    """`fn` over every element of `batch`, vmapped in chunks and sharded over devices.

    Args:
        fn: a pure function of one element (one row of every leaf), returning a pytree.
        batch: a pytree of arrays with a common leading axis B (e.g. from `grid`).
        chunk_size: elements vmapped at once on each device (bounds memory); default all.
        devices: the devices to shard over; default every device (all processes' devices
            after `jax.distributed.initialize`, else `jax.local_devices()`).
        gather: return host NumPy arrays gathered from every process (default), or the
            global sharded `jax.Array`s (padded to a multiple of the device count).

    Returns:
        fn's output pytree with a leading axis of size B.

    Raises:
        ValueError: for an empty batch (no leaves, or 0 rows), mismatched leading axes or a
            bad chunk_size.
    """
    n = batch_size(batch)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")
    devices = list(jax.devices() if devices is None else devices)
    n_dev = len(devices)
    per_dev = math.ceil(n / n_dev)
    if chunk_size is not None:
        per_dev = math.ceil(per_dev / chunk_size) * chunk_size
    total = per_dev * n_dev
    padded = _pad(batch, total)
    mesh = Mesh(np.asarray(devices), (_AXIS,))
    sharding = NamedSharding(mesh, P(_AXIS))

    # Every process holds the (small) batch on the host; each device takes its own block.
    def place(x):
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    global_batch = jax.tree.map(place, padded)
    chunk = chunk_size if chunk_size is None else min(chunk_size, per_dev)
    out = _program(fn, global_batch, chunk, mesh)
    if not gather:
        return out
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        out = multihost_utils.process_allgather(out, tiled=True)
    return jax.tree.map(lambda x: np.asarray(x)[:n], out)


class _FitOne(eqx.Module):
    """θ0 -> (θ̂, final loss) of `run_stages`: a module rather than a closure, so the
    compiled sweep is found again for the same loss structure and stages."""

    loss: object
    stages: tuple

    def __call__(self, theta):
        from .fitting.stages import run_stages

        return run_stages(self.loss, self.stages, theta)


def fit_sweep(loss, thetas, stages, *, chunk_size: int | None = None, devices=None):
    """Fit from every initial guess in `thetas` (multi-start) as one sharded sweep.

    Each guess runs `jode.fitting.run_stages(loss, stages, θ0)` (no progress bar: one
    compiled program, reused by later calls with the same model, stages and shapes);
    returns (θ̂ for every guess, their final losses).
    """
    return sweep(_FitOne(loss, tuple(stages)), thetas, chunk_size=chunk_size, devices=devices)
